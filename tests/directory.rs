//! The room directory and membership over real sockets, as every client
//! sees them whatever the groups do: one user in several rooms and on
//! several connections, `list_rooms` order, hidden rooms and paging, joining
//! a hidden room by id with its password, presence, and leaving (ownership
//! passes on; the last one out deletes the room).

mod common;

use std::time::Duration;

use common::phone::{err_code, no_event, wait_event, Phone};
use common::TestServer;
use e2ee_chat::client::conn::Conn;
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use e2ee_chat::protocol::{RoomSummary, ServerMsg};

fn leave(room_id: &str) -> PlainRequest {
    PlainRequest::LeaveRoom {
        room_id: room_id.into(),
    }
}

fn names(rooms: Vec<RoomSummary>) -> Vec<String> {
    rooms.into_iter().map(|r| r.name).collect()
}

#[tokio::test]
async fn one_user_in_several_rooms_and_on_several_connections() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut alice2 = alice.second_connection(&url).await;
    let r1 = alice.create_with("Room one", None, false).await.unwrap();
    let mut in_two = Phone::login(&url, alice.id.clone()).await;
    let r2 = in_two.create_with("Room two", None, false).await.unwrap();
    let mut bob = Phone::register(&url, "bob", 1).await;
    let mut bob_two = Phone::login(&url, bob.id.clone()).await;
    bob.join(&r1.room_id, None).await.unwrap();
    bob.enter().await;
    bob_two.join(&r2.room_id, None).await.unwrap();
    bob_two.enter().await;
    // Every connection of the user gets every entry of each of its rooms.
    for room in [&r1.room_id, &r2.room_id] {
        let mut seen = 0;
        while seen < 1 {
            if let ServerMsg::Entry(e) = alice2.next_event().await.unwrap() {
                assert_eq!(&e.room_id, room);
                seen += 1;
            }
        }
    }
    alice.catch_up_to(bob.applied).await;
    in_two.catch_up_to(bob_two.applied).await;
    bob.say("in one").await;
    bob_two.say("in two").await;
    assert_eq!(alice.hear().await, "in one");
    assert_eq!(in_two.hear().await, "in two");
    // logged_in lists both rooms, and where this device has a leaf.
    let mut again = Conn::connect(&url).await.unwrap();
    let ServerMsg::LoggedIn { rooms, .. } = again
        .login(&alice.id, &alice.dev.certificate)
        .await
        .unwrap()
    else {
        panic!("not logged in");
    };
    let mut listed: Vec<_> = rooms.iter().map(|r| (r.name.clone(), r.in_group)).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("Room one".into(), Some(true)),
            ("Room two".into(), Some(false))
        ]
    );
    t.stop().await;
}

#[tokio::test]
async fn list_rooms_order_hidden_and_paging() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let mut carol = Phone::register(&url, "carol", 2).await;
    // Each room a later millisecond than the one before: rooms created in
    // the same one tie on created_at and are then ordered by name.
    let tick = || tokio::time::sleep(Duration::from_millis(3));
    let small = alice.create_with("Small", None, false).await.unwrap();
    tick().await;
    let big = alice.create_with("Big", Some("pw"), false).await.unwrap();
    tick().await;
    alice.create_with("Secret", None, true).await.unwrap();
    tick().await;
    let also_small = carol.create_with("Also small", None, false).await.unwrap();
    bob.join(&big.room_id, Some("pw")).await.unwrap();
    carol.join(&big.room_id, Some("pw")).await.unwrap();

    let (rooms, total, connected) = bob.rooms(None, None).await;
    // Big has 3 members; Small and Also small have 1 each, ordered by created_at.
    assert_eq!(names(rooms.clone()), ["Big", "Small", "Also small"]);
    assert_eq!((total, connected), (3, 3));
    let b = &rooms[0];
    assert!(b.has_password && !b.hidden);
    assert_eq!(
        (b.members, b.online, b.owner.as_str(), b.epoch),
        (3, 3, "alice", 0)
    );
    assert_eq!(rooms[1].room_id, small.room_id);
    assert_eq!(rooms[2].room_id, also_small.room_id);
    // The hidden room is listed to its member only, in the same order.
    let (rooms, total, _) = alice.rooms(None, None).await;
    assert_eq!(total, 4);
    assert_eq!(names(rooms), ["Big", "Small", "Secret", "Also small"]);
    let (rooms, _, _) = alice.rooms(Some(2), Some(1)).await;
    assert_eq!(names(rooms), ["Secret"]);
    // Paging.
    let (rooms, total, _) = bob.rooms(Some(1), Some(1)).await;
    assert_eq!((names(rooms), total), (vec!["Small".to_owned()], 3));
    // The order follows membership changes and renames as they happen.
    bob.ask(leave(&big.room_id)).await.unwrap();
    carol.ask(leave(&big.room_id)).await.unwrap();
    alice
        .ask(PlainRequest::RenameRoom {
            room_id: small.room_id.clone(),
            name: "Tiny".into(),
        })
        .await
        .unwrap();
    let (rooms, _, _) = alice.rooms(None, None).await;
    assert_eq!(names(rooms), ["Tiny", "Big", "Secret", "Also small"]);
    carol.join(&small.room_id, None).await.unwrap();
    let (rooms, _, _) = bob.rooms(None, None).await;
    assert_eq!(names(rooms), ["Tiny", "Big", "Also small"]);
    let (rooms, total, _) = bob.rooms(Some(5), None).await;
    assert!(rooms.is_empty() && total == 3);
    t.stop().await;
}

#[tokio::test]
async fn a_hidden_room_is_joined_by_id_with_its_password() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let room = alice
        .create_with("Hideout", Some("s3cret"), true)
        .await
        .unwrap();
    assert_eq!(
        err_code(bob.join(&room.room_id, None).await),
        ErrorCode::WrongPassword
    );
    assert_eq!(
        err_code(bob.join(&room.room_id, Some("nope")).await),
        ErrorCode::WrongPassword
    );
    let joined = bob.join(&room.room_id, Some("s3cret")).await.unwrap();
    assert_eq!((joined.members, joined.in_group), (2, Some(false)));
    // Joining again is not an error, needs no password, and emits no event.
    bob.join(&room.room_id, None).await.unwrap();
    wait_event(&mut alice.c, |e| {
        matches!(e, ServerMsg::MemberJoined { .. })
    })
    .await;
    no_event(&mut alice.c, 300, |e| {
        matches!(e, ServerMsg::MemberJoined { .. })
    })
    .await;
    t.stop().await;
}

#[tokio::test]
async fn presence_events() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let rid = alice.create("Presence").await.room_id;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join(&rid, None).await.unwrap();
    let presence = |online: bool| {
        ServerMsg::Shared(PlainMsg::Presence {
            room_id: rid.clone(),
            username: "bob".into(),
            online,
        })
    };
    let is_bob = |e: &ServerMsg| matches!(e, ServerMsg::Shared(PlainMsg::Presence { username, .. }) if username == "bob");
    let (bob_id, bob_cert) = (bob.id.clone(), bob.dev.certificate.clone());
    drop(bob);
    assert_eq!(wait_event(&mut alice.c, is_bob).await, presence(false));
    let mut bob = Conn::connect(&url).await.unwrap();
    bob.login(&bob_id, &bob_cert).await.unwrap();
    assert_eq!(wait_event(&mut alice.c, is_bob).await, presence(true));
    // A second connection of an online user is not news.
    let mut bob2 = Conn::connect(&url).await.unwrap();
    bob2.login(&bob_id, &bob_cert).await.unwrap();
    drop(bob2);
    no_event(&mut alice.c, 300, |e| {
        matches!(e, ServerMsg::Shared(PlainMsg::Presence { .. }))
    })
    .await;
    assert!(alice.online(&rid).await.iter().all(|(_, online)| *online));
    drop(bob);
    t.stop().await;
}

#[tokio::test]
async fn leave_passes_ownership_and_the_last_leave_deletes() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let rid = alice.create("Handover").await.room_id;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join(&rid, None).await.unwrap();
    let mut carol = Phone::register(&url, "carol", 2).await;
    carol.join(&rid, None).await.unwrap();
    alice.ask(leave(&rid)).await.unwrap();
    let left = wait_event(&mut bob.c, |e| {
        matches!(e, ServerMsg::Shared(PlainMsg::MemberLeft { .. }))
    })
    .await;
    assert_eq!(
        left,
        ServerMsg::Shared(PlainMsg::MemberLeft {
            room_id: rid.clone(),
            username: "alice".into(),
            reason: "left".into()
        })
    );
    let owner = wait_event(&mut carol.c, |e| {
        matches!(e, ServerMsg::Shared(PlainMsg::OwnerChanged { .. }))
    })
    .await;
    assert_eq!(
        owner,
        ServerMsg::Shared(PlainMsg::OwnerChanged {
            room_id: rid.clone(),
            owner: "bob".into()
        })
    );
    // Alice is no longer a member.
    assert_eq!(
        err_code(
            alice
                .ask(PlainRequest::GetMembers {
                    room_id: rid.clone()
                })
                .await
        ),
        ErrorCode::NotMember
    );
    carol.ask(leave(&rid)).await.unwrap();
    bob.ask(leave(&rid)).await.unwrap();
    // Gone: not listed, not joinable.
    let (rooms, total, _) = alice.rooms(None, None).await;
    assert!(rooms.is_empty() && total == 0);
    assert_eq!(
        err_code(alice.join(&rid, None).await),
        ErrorCode::NoSuchRoom
    );
    t.stop().await;
}
