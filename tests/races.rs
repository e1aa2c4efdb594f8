//! Limits and bans under racing requests (PROTOCOL.md section 3, Rooms:
//! "Limits ... and bans hold even when requests race"), and the wrong-password
//! limit. Each race is reproduced as an attacker would: many requests in
//! flight at once over real sockets.

mod common;

use common::{assert_code, code_of, TestServer};
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};
use futures_util::future::join_all;

const NAMES: [&str; 8] = [
    "user-a", "user-b", "user-c", "user-d", "user-e", "user-f", "user-g", "user-h",
];

#[tokio::test]
async fn concurrent_password_joins_never_overfill_a_room() {
    let t = TestServer::with(|s| s.limits.max_members_per_room = 3);
    let mut owner = t.user("owner", 0).await;
    let (room, _) = owner.create_room("Small", Some("pw"), false).await.unwrap();
    let mut joiners = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        joiners.push(t.user(name, i % 4).await);
    }
    let rid = room.room_id.clone();
    let results = join_all(joiners.iter_mut().map(|c| c.join_room(&rid, Some("pw")))).await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(joined, 2, "the owner plus two fill the room");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some(ErrorCode::RoomFull), "{r}");
    }
    assert_eq!(owner.get_members(&rid).await.unwrap().len(), 3);
    t.stop().await;
}

#[tokio::test]
async fn pipelined_create_room_stops_at_the_limit() {
    let t = TestServer::with(|s| s.limits.max_rooms_per_user = 5);
    let mut c = t.user("builder", 0).await;
    for i in 0..30u64 {
        let req = Request::CreateRoom {
            name: format!("Room {i}"),
            password: (i % 2 == 0).then(|| "pw".to_string()),
            hidden: None,
        };
        c.send_raw(req.encode(Some(1000 + i))).await.unwrap();
    }
    let mut created = 0;
    let mut replies = 0;
    while replies < 30 {
        let msg = c.read().await.unwrap();
        match msg {
            ServerMsg::Joined { id: Some(_), .. } => created += 1,
            ServerMsg::Error { id: Some(_), .. } => {
                // (A user's password hashes run one at a time: a second
                // one at once answers rate_limited.)
                let code = code_of(&msg);
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
        if c.create_room(&format!("Room {i}"), None, false)
            .await
            .is_ok()
        {
            created += 1;
        }
    }
    assert_eq!(created, 5);
    let (rooms, _, _) = c.list_rooms(None, None).await.unwrap();
    assert_eq!(rooms.len(), 5);
    t.stop().await;
}

#[tokio::test]
async fn a_ban_racing_a_password_join_keeps_the_user_out() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice
        .create_room("Guarded", Some("pw"), false)
        .await
        .unwrap();
    let rid = room.room_id;
    for round in 0..5 {
        let ban = Request::Ban {
            room_id: rid.clone(),
            username: "bob".into(),
        };
        let (joined, banned) =
            tokio::join!(bob.join_room(&rid, Some("pw")), alice.request_ok(&ban));
        banned.unwrap();
        if let Err(e) = &joined {
            assert_eq!(e.code(), Some(ErrorCode::Banned), "round {round}: {e}");
        }
        let members = alice.get_members(&rid).await.unwrap();
        assert!(
            members.iter().all(|m| m.username != "bob"),
            "round {round}: banned bob is a member"
        );
        assert_code(bob.get_members(&rid).await, ErrorCode::NotMember);
        alice
            .request_ok(&Request::Unban {
                room_id: rid.clone(),
                username: "bob".into(),
            })
            .await
            .unwrap();
    }
    // After a restart the store agrees: bob is not a member.
    let mut t = t;
    t.restart().await;
    let mut alice = t.login("alice", 0).await;
    let members = alice.get_members(&rid).await.unwrap();
    assert_eq!(members.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_limited_per_user_across_rooms() {
    let t = TestServer::with(|s| s.limits.password_attempts_per_minute = 4);
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    let (room, _) = alice
        .create_room("Vault", Some("right"), false)
        .await
        .unwrap();
    let (other, _) = alice
        .create_room("Other", Some("right"), false)
        .await
        .unwrap();
    // Fired at once: never more than the limit gets checked (one of bob's
    // checks runs at a time; the others are refused without hashing and do
    // not count).
    let rid = room.room_id.clone();
    let mut wrong = 0;
    let mut replies = Vec::new();
    for i in 0..10u64 {
        let req = Request::JoinRoom {
            room_id: if i % 2 == 0 {
                rid.clone()
            } else {
                other.room_id.clone()
            },
            password: Some(format!("guess-{i}")),
        };
        bob.send_raw(req.encode(Some(500 + i))).await.unwrap();
    }
    while replies.len() < 10 {
        let msg = bob.read().await.unwrap();
        if msg.reply_id().is_some() {
            replies.push(code_of(&msg));
        }
    }
    wrong += replies
        .iter()
        .filter(|c| **c == ErrorCode::WrongPassword)
        .count();
    assert!(wrong <= 4, "{replies:?}");
    // One at a time, in either room, until the budget says no: exactly 4
    // wrong passwords were checked in all.
    let mut i = 0;
    loop {
        let room = if i % 2 == 0 { &rid } else { &other.room_id };
        match code_of_result(bob.join_room(room, Some("wrong")).await) {
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
    for room in [&rid, &other.room_id] {
        assert_code(
            bob.join_room(room, Some("right")).await,
            ErrorCode::RateLimited,
        );
    }
    // ...but only for bob.
    carol.join_room(&rid, Some("right")).await.unwrap();
    t.stop().await;
}

fn code_of_result<T: std::fmt::Debug>(r: Result<T, e2ee_chat::client::ClientError>) -> ErrorCode {
    r.expect_err("refused").code().expect("an error reply")
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
    let mut puppet = t.user("puppet", 0).await;
    let mut targets = Vec::new();
    for i in 0..10 {
        let (room, _) = puppet
            .create_room(&format!("Bait {i}"), Some("secret"), false)
            .await
            .unwrap();
        targets.push(room.room_id);
    }
    let (open, _) = puppet
        .create_room("Open door", Some("right"), false)
        .await
        .unwrap();
    let mut mallory = t.user("mallory", 1).await;
    // Mallory keeps guessing, across ten rooms, for as long as the honest
    // users join (bounded: 600 requests, a few seconds).
    let flood = tokio::spawn(async move {
        for i in 0..600u64 {
            let req = Request::JoinRoom {
                room_id: targets[i as usize % targets.len()].clone(),
                password: Some(format!("guess-{i}")),
            };
            if mallory.send_raw(req.encode(Some(i + 1))).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        mallory
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut refused = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let mut c = t.user(name, 2 + i % 2).await;
        if let Err(e) = c.join_room(&open.room_id, Some("right")).await {
            refused.push(format!("{name}: {e}"));
        }
    }
    assert!(refused.is_empty(), "honest joins refused: {refused:?}");
    flood.abort();
    t.stop().await;
}

/// Issue 20 item 4: the last two members leaving at once left a room with
/// 0 members whose messages stayed stored; the owner leaving while the heir
/// left too left a non-member owner who could still kick. Both are decided
/// when the write commits now.
#[tokio::test]
async fn members_leaving_at_once_never_leave_an_empty_or_ownerless_room() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    for i in 0..5 {
        let (room, _) = alice
            .create_room(&format!("Pair {i}"), None, false)
            .await
            .unwrap();
        let rid = room.room_id;
        bob.join_room(&rid, None).await.unwrap();
        alice.send_text(&rid, "soon gone").await.unwrap();
        let (a, b) = tokio::join!(alice.leave_room(&rid), bob.leave_room(&rid));
        a.unwrap();
        b.unwrap();
        // Gone: nobody can join it, and it is not listed.
        assert_code(carol.join_room(&rid, None).await, ErrorCode::NoSuchRoom);
        let (rooms, _, _) = carol.list_rooms(None, None).await.unwrap();
        assert!(rooms.iter().all(|r| r.room_id != rid), "try {i}");
    }
    // Owner and heir leave at once: the owner is whoever is still a member.
    let mut dave = t.user("dave", 3).await;
    for i in 0..3 {
        let (room, _) = alice
            .create_room(&format!("Trio {i}"), None, false)
            .await
            .unwrap();
        let rid = room.room_id;
        bob.join_room(&rid, None).await.unwrap();
        carol.join_room(&rid, None).await.unwrap();
        dave.join_room(&rid, None).await.unwrap();
        let (a, b) = tokio::join!(alice.leave_room(&rid), bob.leave_room(&rid));
        a.unwrap();
        b.unwrap();
        let (rooms, _, _) = carol.list_rooms(None, None).await.unwrap();
        let owner = rooms
            .iter()
            .find(|r| r.room_id == rid)
            .map(|r| r.owner.clone())
            .unwrap();
        assert_eq!(owner, "carol", "try {i}: the earliest member left");
        assert_eq!(carol.get_members(&rid).await.unwrap().len(), 2);
        // The new owner acts; the old owner cannot.
        let kick = Request::Kick {
            room_id: rid.clone(),
            username: "dave".into(),
        };
        assert_code(alice.request_ok(&kick).await, ErrorCode::NotOwner);
        carol.request_ok(&kick).await.unwrap();
        carol.leave_room(&rid).await.unwrap();
    }
    t.stop().await;
}
