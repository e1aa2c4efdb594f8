//! Limits and bans under racing requests: many requests in flight at once
//! over real sockets, from devices with openmls groups. The room's member
//! limit holds when joins race, a ban racing a join keeps the user out,
//! members leaving at once never leave an empty or ownerless room,
//! pipelined creations stop at the user's room limit, and wrong passwords
//! are limited per user across rooms without starving anyone else.

mod common;

use common::TestServer;

use common::phone::{code, Phone};
use e2ee_chat::protocol::{ErrorCode, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};
use futures_util::future::join_all;
use serde_bytes::ByteBuf;

const NAMES: [&str; 8] = [
    "user-a", "user-b", "user-c", "user-d", "user-e", "user-f", "user-g", "user-h",
];

fn shared(req: PlainRequest) -> Request {
    Request::Shared(req)
}

fn join(room_id: &str, password: Option<&str>) -> Request {
    shared(PlainRequest::JoinRoom {
        room_id: room_id.into(),
        password: password.map(str::to_owned),
    })
}

fn leave(room_id: &str) -> Request {
    shared(PlainRequest::LeaveRoom {
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
        p.c.request(&Request::CreateRoom {
            name: name.into(),
            password: Some(password.into()),
            hidden: None,
            group_info: ByteBuf::from(objects.group_info),
            ratchet_tree: ByteBuf::from(objects.ratchet_tree),
        })
        .await
        .expect("created");
    let ServerMsg::Joined { room, .. } = reply else {
        panic!("not joined: {reply:?}");
    };
    p.group = Some(group);
    p.room = room.room_id.clone();
    room.room_id
}

#[tokio::test]
async fn concurrent_password_joins_never_overfill_a_room() {
    let t = TestServer::with(|s| s.limits.max_members_per_room = 3);
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
    let mut t = TestServer::with(|_| {});
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let room = create_with_password(&mut alice, "Guarded", "pw").await;
    for round in 0..5 {
        let ban = shared(PlainRequest::Ban {
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
            .request(&shared(PlainRequest::GetMembers {
                room_id: room.clone(),
            }))
            .await;
        assert_eq!(code(theirs), ErrorCode::NotMember);
        alice
            .c
            .request(&shared(PlainRequest::Unban {
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
    let t = TestServer::with(|_| {});
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
        let kick = shared(PlainRequest::Kick {
            room_id: room.clone(),
            username: "dave".into(),
        });
        assert_eq!(code(alice.c.request(&kick).await), ErrorCode::NotOwner);
        carol.c.request(&kick).await.unwrap();
        carol.c.request(&leave(&room)).await.unwrap();
    }
    t.stop().await;
}

#[tokio::test]
async fn pipelined_create_room_stops_at_the_limit() {
    let t = TestServer::with(|s| s.limits.max_rooms_per_user = 5);
    let mut c = Phone::register(&t.url(), "builder", 0).await;
    for i in 0..30u64 {
        let (_, objects) = c
            .dev
            .create_group(&c.provider, rand::random())
            .expect("a group");
        let req = Request::CreateRoom {
            name: format!("Room {i}"),
            password: (i % 2 == 0).then(|| "pw".to_string()),
            hidden: None,
            group_info: ByteBuf::from(objects.group_info),
            ratchet_tree: ByteBuf::from(objects.ratchet_tree),
        };
        c.c.send_raw(req.encode(Some(1000 + i))).await.unwrap();
    }
    let (mut created, mut replies) = (0, 0);
    while replies < 30 {
        match c.c.read().await.unwrap() {
            ServerMsg::Joined { id: Some(_), .. } => created += 1,
            ServerMsg::Error {
                id: Some(_), code, ..
            } => {
                // (A user's password hashes run one at a time: a second
                // one at once answers rate_limited.)
                assert!(
                    matches!(code, ErrorCode::TooManyRooms | ErrorCode::RateLimited),
                    "{code:?}"
                );
            }
            _ => continue,
        }
        replies += 1;
    }
    assert!(created <= 5, "{created}");
    // One at a time from here: exactly up to the limit, never past it.
    for i in 30..40 {
        if c.create_with(&format!("Room {i}"), None, false)
            .await
            .is_ok()
        {
            created += 1;
        }
    }
    assert_eq!(created, 5);
    assert_eq!(c.rooms(None, None).await.0.len(), 5);
    t.stop().await;
}

/// The code of the reply to each of `n` pipelined requests.
async fn codes_of_replies(c: &mut e2ee_chat::client::conn::Conn, n: usize) -> Vec<ErrorCode> {
    let mut codes = Vec::new();
    while codes.len() < n {
        match c.read().await.unwrap() {
            ServerMsg::Error {
                id: Some(_), code, ..
            } => codes.push(code),
            ServerMsg::Joined { id: Some(_), .. } => panic!("a guess got in"),
            _ => {}
        }
    }
    codes
}

#[tokio::test]
async fn wrong_passwords_are_limited_per_user_across_rooms() {
    let t = TestServer::with(|s| s.limits.password_attempts_per_minute = 4);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let mut carol = Phone::register(&url, "carol", 2).await;
    let rid = create_with_password(&mut alice, "Vault", "right").await;
    let other = create_with_password(&mut alice, "Other", "right").await;
    // Fired at once: never more than the limit gets checked (one of bob's
    // checks runs at a time; the others are refused without hashing and do
    // not count).
    for i in 0..10u64 {
        let room = if i % 2 == 0 { &rid } else { &other };
        let req = join(room, Some(&format!("guess-{i}")));
        bob.c.send_raw(req.encode(Some(500 + i))).await.unwrap();
    }
    let replies = codes_of_replies(&mut bob.c, 10).await;
    let mut wrong = replies
        .iter()
        .filter(|c| **c == ErrorCode::WrongPassword)
        .count();
    assert!(wrong <= 4, "{replies:?}");
    // One at a time, in either room, until the budget says no: exactly 4
    // wrong passwords were checked in all.
    let mut i = 0;
    loop {
        let room = if i % 2 == 0 { &rid } else { &other };
        match code(bob.c.request(&join(room, Some("wrong"))).await) {
            ErrorCode::WrongPassword => wrong += 1,
            ErrorCode::RateLimited => break,
            other => panic!("unexpected {other:?}"),
        }
        i += 1;
        assert!(i < 10, "the budget never ran out");
    }
    assert_eq!(wrong, 4);
    // Past the limit even the right password is refused for a while, in
    // every room...
    for room in [&rid, &other] {
        assert_eq!(
            code(bob.c.request(&join(room, Some("right"))).await),
            ErrorCode::RateLimited
        );
    }
    // ...but only for bob.
    carol.c.request(&join(&rid, Some("right"))).await.unwrap();
    t.stop().await;
}

/// Issue 20 item 9: one account flooding wrong passwords into many rooms
/// kept the hashing queue full, and honest joins got `rate_limited`. Its
/// budget is now per user across rooms and it has one hash at a time.
#[tokio::test]
async fn one_account_flooding_password_joins_does_not_starve_others() {
    let t = TestServer::with(|s| {
        s.limits.password_hashes = 1;
        s.limits.password_queue = 3;
        s.limits.password_attempts_per_ip_per_minute = 100_000;
    });
    let url = t.url();
    let mut puppet = Phone::register(&url, "puppet", 0).await;
    let mut targets = Vec::new();
    for i in 0..10 {
        targets.push(create_with_password(&mut puppet, &format!("Bait {i}"), "secret").await);
    }
    let open = create_with_password(&mut puppet, "Open door", "right").await;
    let mut mallory = Phone::register(&url, "mallory", 1).await;
    // Mallory keeps guessing, across ten rooms, for as long as the honest
    // users join (bounded: 600 requests, a few seconds).
    let flood = tokio::spawn(async move {
        for i in 0..600u64 {
            let req = join(
                &targets[i as usize % targets.len()],
                Some(&format!("guess-{i}")),
            );
            if mallory.c.send_raw(req.encode(Some(i + 1))).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        mallory
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut refused = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let mut c = Phone::register(&url, name, 2 + i % 2).await;
        if let Err(e) = c.join(&open, Some("right")).await {
            refused.push(format!("{name}: {e}"));
        }
    }
    assert!(refused.is_empty(), "honest joins refused: {refused:?}");
    flood.abort();
    t.stop().await;
}
