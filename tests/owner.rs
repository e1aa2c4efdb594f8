//! Owner operations (kick, ban, unban, rename, set_password, delete_room)
//! and message retention, over real websockets.

mod common;

use std::time::Duration;

use common::{assert_code, no_event, TestServer};
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};

fn kick(room_id: &str, user: &str) -> Request {
    Request::Kick {
        room_id: room_id.into(),
        username: user.into(),
    }
}

fn ban(room_id: &str, user: &str) -> Request {
    Request::Ban {
        room_id: room_id.into(),
        username: user.into(),
    }
}

fn unban(room_id: &str, user: &str) -> Request {
    Request::Unban {
        room_id: room_id.into(),
        username: user.into(),
    }
}

#[tokio::test]
async fn kick_removes_at_once_and_they_may_rejoin() {
    let t = TestServer::new();
    let (mut alice, mut bob, mut carol, rid) = t.trio("Kicks").await;

    // Errors first: not_owner, invalid_target, no_such_member; nothing changes.
    assert_code(
        bob.request_ok(&kick(&rid, "carol")).await,
        ErrorCode::NotOwner,
    );
    assert_code(
        alice.request_ok(&kick(&rid, "alice")).await,
        ErrorCode::InvalidTarget,
    );
    assert_code(
        alice.request_ok(&ban(&rid, "alice")).await,
        ErrorCode::InvalidTarget,
    );
    // The target must be a valid username of a registered user.
    for req in [kick(&rid, "dave"), ban(&rid, "dave"), unban(&rid, "dave")] {
        assert_code(alice.request_ok(&req).await, ErrorCode::UnknownUser);
    }
    let junk = "x".repeat(100_000);
    for name in ["Dave!", junk.as_str(), ""] {
        for req in [kick(&rid, name), ban(&rid, name), unban(&rid, name)] {
            assert_code(alice.request_ok(&req).await, ErrorCode::InvalidUsername);
        }
    }
    t.user("dave", 3).await.close().await;
    assert_code(
        alice.request_ok(&kick(&rid, "dave")).await,
        ErrorCode::NoSuchMember,
    );
    assert_code(
        alice.request_ok(&kick("r-nothere", "bob")).await,
        ErrorCode::NoSuchRoom,
    );
    assert_eq!(alice.get_members(&rid).await.unwrap().len(), 3);

    alice.request_ok(&kick(&rid, "bob")).await.unwrap();
    let ev = bob
        .wait_for(|e| matches!(e, ServerMsg::Removed { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::Removed {
            room_id: rid.clone(),
            reason: "kicked".into()
        }
    );
    let ev = carol
        .wait_for(|e| matches!(e, ServerMsg::MemberLeft { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::MemberLeft {
            room_id: rid.clone(),
            username: "bob".into(),
            reason: "kicked".into()
        }
    );

    // The next send does not include bob, and bob does not get it.
    let (seq, _) = alice.send_text(&rid, "after the kick").await.unwrap();
    assert_eq!(
        carol.next_message(&rid).await.unwrap().text,
        "after the kick"
    );
    no_event(&mut bob, 300, |e| matches!(e, ServerMsg::Message(_))).await;
    assert_code(
        bob.history(&rid, None, None, None).await,
        ErrorCode::NotMember,
    );
    // A send still wrapped for bob is stale.
    let stale = e2ee_chat::client::seal_message(
        &common::identity("alice", 0).keys,
        &rid,
        "old set",
        &common::recipients(&[("alice", 0), ("bob", 1), ("carol", 2)]),
    )
    .unwrap();
    assert_code(
        alice.request(&Request::Send(stale)).await,
        ErrorCode::StaleMembers,
    );

    // Kicked users may rejoin.
    bob.join_room(&rid, None).await.unwrap();
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    assert!(
        msgs.iter().all(|m| m.seq != seq),
        "bob holds no key for the message sent while out"
    );
    t.stop().await;
}

#[tokio::test]
async fn ban_blocks_rejoin_even_with_password_until_unban() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    let (room, _) = alice.create_room("Bans", Some("pw"), false).await.unwrap();
    let rid = room.room_id;
    bob.join_room(&rid, Some("pw")).await.unwrap();
    assert_code(
        bob.request_ok(&ban(&rid, "alice")).await,
        ErrorCode::NotOwner,
    );
    alice.request_ok(&ban(&rid, "bob")).await.unwrap();
    let ev = bob
        .wait_for(|e| matches!(e, ServerMsg::Removed { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::Removed {
            room_id: rid.clone(),
            reason: "banned".into()
        }
    );
    let ev = alice
        .wait_for(|e| matches!(e, ServerMsg::MemberLeft { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::MemberLeft {
            room_id: rid.clone(),
            username: "bob".into(),
            reason: "banned".into()
        }
    );
    assert_code(bob.join_room(&rid, Some("pw")).await, ErrorCode::Banned);
    // Banning a non-member is allowed and blocks them too.
    alice.request_ok(&ban(&rid, "carol")).await.unwrap();
    assert_code(carol.join_room(&rid, Some("pw")).await, ErrorCode::Banned);
    assert_eq!(alice.get_members(&rid).await.unwrap().len(), 1);
    assert_code(
        bob.request_ok(&unban(&rid, "bob")).await,
        ErrorCode::NotOwner,
    );
    alice.request_ok(&unban(&rid, "bob")).await.unwrap();
    bob.join_room(&rid, Some("pw")).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn bans_survive_a_restart() {
    let mut t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice.create_room("Sticky", None, false).await.unwrap();
    bob.join_room(&room.room_id, None).await.unwrap();
    alice.request_ok(&ban(&room.room_id, "bob")).await.unwrap();
    drop((alice, bob));
    t.restart().await;
    let mut bob = t.login("bob", 1).await;
    assert_code(bob.join_room(&room.room_id, None).await, ErrorCode::Banned);
    t.stop().await;
}

#[tokio::test]
async fn rename_and_set_password() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    let (room, _) = alice.create_room("Old name", None, false).await.unwrap();
    let (_, _) = alice.create_room("Taken", None, false).await.unwrap();
    let rid = room.room_id;
    bob.join_room(&rid, None).await.unwrap();
    let rename = |name: &str| Request::RenameRoom {
        room_id: rid.clone(),
        name: name.into(),
    };
    assert_code(
        bob.request_ok(&rename("Bobs now")).await,
        ErrorCode::NotOwner,
    );
    assert_code(
        alice.request_ok(&rename("tAKEN")).await,
        ErrorCode::RoomExists,
    );
    assert_code(
        alice.request_ok(&rename(" bad")).await,
        ErrorCode::InvalidRoomName,
    );
    // Renaming to another case of its own name is fine.
    alice.request_ok(&rename("OLD NAME")).await.unwrap();
    alice.request_ok(&rename("New name")).await.unwrap();
    let ev = bob
        .wait_for(|e| matches!(e, ServerMsg::RoomRenamed { name, .. } if name == "New name"))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::RoomRenamed {
            room_id: rid.clone(),
            name: "New name".into()
        }
    );
    // The old name is free again, the new one is taken.
    carol.create_room("Old name", None, false).await.unwrap();
    assert_code(
        carol.create_room("new NAME", None, false).await,
        ErrorCode::RoomExists,
    );
    let (rooms, _, _) = carol.list_rooms(None, None).await.unwrap();
    assert!(rooms
        .iter()
        .any(|r| r.room_id == rid && r.name == "New name"));

    // set_password
    let set = |pw: Option<&str>| Request::SetPassword {
        room_id: rid.clone(),
        password: pw.map(Into::into),
    };
    assert_code(bob.request_ok(&set(Some("x"))).await, ErrorCode::NotOwner);
    assert_code(
        alice.request_ok(&set(Some(""))).await,
        ErrorCode::InvalidPassword,
    );
    alice.request_ok(&set(Some("door"))).await.unwrap();
    assert_code(carol.join_room(&rid, None).await, ErrorCode::WrongPassword);
    let (rooms, _, _) = carol.list_rooms(None, None).await.unwrap();
    assert!(rooms.iter().any(|r| r.room_id == rid && r.has_password));
    alice.request_ok(&set(None)).await.unwrap();
    carol.join_room(&rid, None).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn delete_room_removes_it_and_its_history() {
    let mut t = TestServer::new();
    let (mut alice, mut bob, rid) = t.pair("Short lived").await;
    alice.send_text(&rid, "soon gone").await.unwrap();
    let del = Request::DeleteRoom {
        room_id: rid.clone(),
    };
    assert_code(bob.request_ok(&del).await, ErrorCode::NotOwner);
    alice.request_ok(&del).await.unwrap();
    let ev = bob
        .wait_for(|e| matches!(e, ServerMsg::RoomDeleted { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::RoomDeleted {
            room_id: rid.clone()
        }
    );
    let (rooms, total, _) = bob.list_rooms(None, None).await.unwrap();
    assert!(rooms.is_empty() && total == 0);
    assert_code(
        bob.history(&rid, None, None, None).await,
        ErrorCode::NoSuchRoom,
    );
    assert_code(bob.join_room(&rid, None).await, ErrorCode::NoSuchRoom);
    // The name is free again, and after a restart the room stays gone.
    alice.create_room("Short lived", None, false).await.unwrap();
    drop((alice, bob));
    t.restart().await;
    let mut bob = t.login("bob", 1).await;
    assert_code(bob.join_room(&rid, None).await, ErrorCode::NoSuchRoom);
    let db = rusqlite::Connection::open(t.dir.path().join("chat.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE room_id = ?1",
            [&rid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    t.stop().await;
}

#[tokio::test]
async fn retention_purges_old_messages_keeps_new_and_seq_never_goes_back() {
    // Messages older than ~1.5 s go; the purge runs every 200 ms.
    let age_days = 1.5 / 86_400.0;
    let tweak = move |s: &mut e2ee_chat::config::Settings| {
        s.retention.max_age_days = age_days;
        s.retention.purge_interval_secs = 0.2;
        s.retention.purge_batch = 2;
    };
    let mut t = TestServer::with(tweak);
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Ephemeral", None, false).await.unwrap();
    let rid = room.room_id;
    for i in 0..5 {
        alice.send_text(&rid, &format!("old {i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (seq, _) = alice.send_text(&rid, "new").await.unwrap();
    assert_eq!(seq, 6);
    let (msgs, _) = alice.history(&rid, None, None, None).await.unwrap();
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [6], "old messages are purged, the new one stays");
    drop(alice);
    // After a restart seq continues from 6, not from what is left on disk.
    t.restart_with(tweak).await;
    let mut alice = t.login("alice", 0).await;
    let (seq, _) = alice.send_text(&rid, "newer").await.unwrap();
    assert_eq!(seq, 7);
    let (msgs, _) = alice.history(&rid, None, None, None).await.unwrap();
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
    t.stop().await;
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest() {
    let t = TestServer::with(|s| {
        s.retention.max_messages_per_room = 3;
        s.retention.purge_interval_secs = 0.1;
    });
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Capped", None, false).await.unwrap();
    for i in 0..8 {
        alice
            .send_text(&room.room_id, &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (msgs, _) = alice
            .history(&room.room_id, None, None, None)
            .await
            .unwrap();
        seqs = msgs.iter().map(|m| m.seq).collect();
        if seqs.len() == 3 {
            break;
        }
    }
    assert_eq!(seqs, [6, 7, 8]);
    t.stop().await;
}
