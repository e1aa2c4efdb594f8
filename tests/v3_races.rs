//! Limits and bans under racing requests on protocol v3 (as
//! `tests/races.rs` on version 2): many requests in flight at once over real
//! sockets, from devices with openmls groups. The room's member limit holds
//! when joins race, a ban racing a join keeps the user out, and members
//! leaving at once never leave an empty or ownerless room.

mod common;

use common::phone3::{code, v3_server_with, Phone};
use e2ee_chat::protocol::v3::{Request3, ServerMsg3};
use e2ee_chat::protocol::{ErrorCode, Request};
use futures_util::future::join_all;
use serde_bytes::ByteBuf;

const NAMES: [&str; 8] = [
    "user-a", "user-b", "user-c", "user-d", "user-e", "user-f", "user-g", "user-h",
];

fn shared(req: Request) -> Request3 {
    Request3::Shared(req)
}

fn join(room_id: &str, password: Option<&str>) -> Request3 {
    shared(Request::JoinRoom {
        room_id: room_id.into(),
        password: password.map(str::to_owned),
    })
}

fn leave(room_id: &str) -> Request3 {
    shared(Request::LeaveRoom {
        room_id: room_id.into(),
    })
}

/// A room with a password and its creator's group: its id.
async fn create_with_password(p: &mut Phone, name: &str, password: &str) -> String {
    let (group, objects) = p
        .dev
        .create_group(&p.provider, rand::random())
        .expect("a group");
    let reply =
        p.c.request(&Request3::CreateRoom {
            name: name.into(),
            password: Some(password.into()),
            hidden: None,
            group_info: ByteBuf::from(objects.group_info),
            ratchet_tree: ByteBuf::from(objects.ratchet_tree),
        })
        .await
        .expect("created");
    let ServerMsg3::Joined { room, .. } = reply else {
        panic!("not joined: {reply:?}");
    };
    p.group = Some(group);
    p.room = room.room_id.clone();
    room.room_id
}

#[tokio::test]
async fn concurrent_password_joins_never_overfill_a_room() {
    let t = v3_server_with(|s| s.limits.max_members_per_room = 3);
    let url = t.url();
    let mut owner = Phone::register(&url, "owner", 0).await;
    let room = create_with_password(&mut owner, "Small", "pw").await;
    let mut joiners = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        joiners.push(Phone::register(&url, name, i % 4).await);
    }
    let req = join(&room, Some("pw"));
    let results = join_all(joiners.iter_mut().map(|p| p.c.request(&req))).await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(joined, 2, "the owner plus two fill the room");
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_eq!(code(r), ErrorCode::RoomFull);
    }
    assert_eq!(owner.member_names(&room).await.len(), 3);
    t.stop().await;
}

#[tokio::test]
async fn a_ban_racing_a_password_join_keeps_the_user_out() {
    let mut t = v3_server_with(|_| {});
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let room = create_with_password(&mut alice, "Guarded", "pw").await;
    for round in 0..5 {
        let ban = shared(Request::Ban {
            room_id: room.clone(),
            username: "bob".into(),
        });
        let enter = join(&room, Some("pw"));
        let (joined, banned) = tokio::join!(bob.c.request(&enter), alice.c.request(&ban));
        banned.unwrap();
        if joined.is_err() {
            assert_eq!(code(joined), ErrorCode::Banned, "round {round}");
        }
        let members = alice.member_names(&room).await;
        assert!(
            !members.contains(&"bob".to_owned()),
            "round {round}: banned bob is a member"
        );
        let theirs = bob
            .c
            .request(&shared(Request::GetMembers {
                room_id: room.clone(),
            }))
            .await;
        assert_eq!(code(theirs), ErrorCode::NotMember);
        alice
            .c
            .request(&shared(Request::Unban {
                room_id: room.clone(),
                username: "bob".into(),
            }))
            .await
            .unwrap();
    }
    // After a restart the store agrees: bob is not a member.
    t.restart().await;
    let mut alice = Phone::login(&t.url(), alice.id.clone()).await;
    assert_eq!(alice.member_names(&room).await, ["alice"]);
    t.stop().await;
}

#[tokio::test]
async fn members_leaving_at_once_never_leave_an_empty_or_ownerless_room() {
    let t = v3_server_with(|_| {});
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let mut carol = Phone::register(&url, "carol", 2).await;
    for i in 0..5 {
        let room = alice.create(&format!("Pair {i}")).await.room_id;
        bob.c.request(&join(&room, None)).await.unwrap();
        let out = leave(&room);
        let (a, b) = tokio::join!(alice.c.request(&out), bob.c.request(&out));
        a.unwrap();
        b.unwrap();
        // Gone: nobody can join it, and it is not listed.
        assert_eq!(
            code(carol.c.request(&join(&room, None)).await),
            ErrorCode::NoSuchRoom
        );
        let (rooms, _) = carol.c.list_rooms(None).await.unwrap();
        assert!(rooms.iter().all(|r| r.room_id != room), "try {i}");
    }
    // Owner and heir leave at once: the owner is whoever is still a member.
    let mut dave = Phone::register(&url, "dave", 3).await;
    for i in 0..3 {
        let room = alice.create(&format!("Trio {i}")).await.room_id;
        for p in [&mut bob, &mut carol, &mut dave] {
            p.c.request(&join(&room, None)).await.unwrap();
        }
        let out = leave(&room);
        let (a, b) = tokio::join!(alice.c.request(&out), bob.c.request(&out));
        a.unwrap();
        b.unwrap();
        let (rooms, _) = carol.c.list_rooms(None).await.unwrap();
        let owner = rooms
            .iter()
            .find(|r| r.room_id == room)
            .map(|r| r.owner.clone())
            .unwrap();
        assert_eq!(owner, "carol", "try {i}: the earliest member left");
        assert_eq!(carol.member_names(&room).await.len(), 2);
        // The new owner acts; the old owner cannot.
        let kick = shared(Request::Kick {
            room_id: room.clone(),
            username: "dave".into(),
        });
        assert_eq!(code(alice.c.request(&kick).await), ErrorCode::NotOwner);
        carol.c.request(&kick).await.unwrap();
        carol.c.request(&leave(&room)).await.unwrap();
    }
    t.stop().await;
}
