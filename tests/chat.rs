//! End-to-end chat flows over real websockets against a real server with a
//! real SQLite store: accounts, rooms, encrypted messages, history,
//! presence, restart.

mod common;

use common::{assert_code, no_event, TestServer};
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};

#[tokio::test]
async fn register_login_and_ping() {
    let t = TestServer::with(|s| s.server.metrics_token = "scrape-me".into());
    let mut alice = t.user("alice", 0).await;
    let pong = alice.request(&Request::Ping).await.unwrap();
    assert!(matches!(pong, ServerMsg::Pong { id: Some(_), server_time } if server_time > 0));
    // The subprotocol is accepted when offered, and /healthz answers.
    let body = common::http_get(&t.http("/healthz")).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // /metrics is not public (issue 20 item 15): 404 without the token or
    // with another one,
    for auth in [
        "",
        "Authorization: Bearer scrape-you\r\n",
        "Authorization: scrape-me\r\n",
    ] {
        let r = common::http_get_with(&t.http("/metrics"), auth).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{auth:?}: {r}");
    }
    // and Prometheus text with this server's gauges for the scraper.
    let metrics =
        common::http_get_with(&t.http("/metrics"), "Authorization: Bearer scrape-me\r\n").await;
    assert!(metrics.contains("chat_users_online 1\n"), "{metrics}");
    assert!(
        metrics.contains("chat_rooms 0\n") && metrics.contains("# TYPE chat_logins_total counter"),
        "{metrics}"
    );
    t.stop().await;
}

#[tokio::test]
async fn two_and_three_users_exchange_encrypted_messages() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;

    let (room, members) = alice.create_room("General", None, false).await.unwrap();
    assert_eq!(room.owner, "alice");
    assert_eq!(members.len(), 1);
    let rid = room.room_id.clone();

    let (_, members) = bob.join_room(&rid, None).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m.username.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    // Alice hears that bob joined, with his keys.
    let ev = alice
        .wait_for(|e| matches!(e, ServerMsg::MemberJoined { .. }))
        .await
        .unwrap();
    let ServerMsg::MemberJoined { room_id, member } = ev else {
        unreachable!()
    };
    assert_eq!(room_id, rid);
    assert_eq!(member.username, "bob");
    assert_eq!(
        member.enc_key.as_slice(),
        common::identity("bob", 1).keys.enc_der.as_slice()
    );

    // Two users.
    let (seq, _) = alice.send_text(&rid, "hello bob").await.unwrap();
    assert_eq!(seq, 1);
    let got = bob.next_message(&rid).await.unwrap();
    assert_eq!(
        (got.sender.as_str(), got.text.as_str(), got.seq),
        ("alice", "hello bob", 1)
    );
    // The sender gets its own message too.
    assert_eq!(alice.next_message(&rid).await.unwrap().text, "hello bob");

    // Three users.
    carol.join_room(&rid, None).await.unwrap();
    alice
        .wait_for(
            |e| matches!(e, ServerMsg::MemberJoined { member, .. } if member.username == "carol"),
        )
        .await
        .unwrap();
    bob.wait_for(
        |e| matches!(e, ServerMsg::MemberJoined { member, .. } if member.username == "carol"),
    )
    .await
    .unwrap();
    let (seq, _) = bob.send_text(&rid, "hi all").await.unwrap();
    assert_eq!(seq, 2);
    for c in [&mut alice, &mut carol, &mut bob] {
        let m = c.next_message(&rid).await.unwrap();
        assert_eq!(
            (m.sender.as_str(), m.text.as_str(), m.seq),
            ("bob", "hi all", 2)
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn stale_members_when_someone_joined_in_between() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice.create_room("Stale", None, false).await.unwrap();
    let rid = room.room_id;
    let alice_id = alice.identity().unwrap().clone();
    // A body wrapped for alice alone...
    let body = e2ee_chat::client::seal_message(
        &alice_id.keys,
        &rid,
        "for the old member set",
        &[("alice".into(), alice_id.keys.enc_der.clone())],
    )
    .unwrap();
    // ...then bob joins before it is sent.
    bob.join_room(&rid, None).await.unwrap();
    let err = alice.request_raw(&Request::Send(body)).await.unwrap();
    let ServerMsg::Error { code, members, .. } = err else {
        panic!("expected error")
    };
    assert_eq!(code, ErrorCode::StaleMembers);
    let names: Vec<_> = members.unwrap().into_iter().map(|m| m.username).collect();
    assert_eq!(names, ["alice", "bob"]);
    // Nothing was stored.
    let (msgs, _) = alice.history(&rid, None, None, None).await.unwrap();
    assert!(msgs.is_empty());
    // The client library re-wraps and succeeds.
    let (seq, _) = alice.send_text(&rid, "now for both").await.unwrap();
    assert_eq!(seq, 1);
    assert_eq!(bob.next_message(&rid).await.unwrap().text, "now for both");
    t.stop().await;
}

#[tokio::test]
async fn resending_a_msg_id_is_idempotent() {
    let t = TestServer::new();
    let (mut alice, mut bob, rid) = t.pair("Idem").await;
    let me = alice.identity().unwrap().clone();
    let recipients = common::recipients(&[("alice", 0), ("bob", 1)]);
    let body = e2ee_chat::client::seal_message(&me.keys, &rid, "once", &recipients).unwrap();
    let first = alice.request(&Request::Send(body.clone())).await.unwrap();
    let second = alice.request(&Request::Send(body.clone())).await.unwrap();
    let (
        ServerMsg::Sent {
            seq: s1, ts: t1, ..
        },
        ServerMsg::Sent {
            seq: s2, ts: t2, ..
        },
    ) = (&first, &second)
    else {
        panic!("{first:?} {second:?}")
    };
    assert_eq!((s1, t1), (s2, t2));
    // Still idempotent after the member set changed (dedupe comes before the key-set check).
    let mut carol = t.user("carol", 2).await;
    carol.join_room(&rid, None).await.unwrap();
    let third = alice.request(&Request::Send(body)).await.unwrap();
    assert!(matches!(third, ServerMsg::Sent { seq: 1, .. }), "{third:?}");
    // Bob received exactly one message.
    assert_eq!(bob.next_message(&rid).await.unwrap().seq, 1);
    no_event(&mut bob, 300, |e| matches!(e, ServerMsg::Message(_))).await;
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    assert_eq!(msgs.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn history_paging_after_before_latest() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Paging", None, false).await.unwrap();
    let rid = room.room_id;
    for i in 1..=12 {
        let (seq, _) = alice.send_text(&rid, &format!("m{i}")).await.unwrap();
        assert_eq!(seq, i);
    }
    let seqs =
        |v: &Vec<e2ee_chat::protocol::MessageData>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    // Latest.
    let (msgs, more) = alice.history(&rid, None, None, Some(5)).await.unwrap();
    assert_eq!(seqs(&msgs), [8, 9, 10, 11, 12]);
    assert!(more);
    // Before.
    let (msgs, more) = alice.history(&rid, None, Some(8), Some(5)).await.unwrap();
    assert_eq!(seqs(&msgs), [3, 4, 5, 6, 7]);
    assert!(more);
    let (msgs, more) = alice.history(&rid, None, Some(3), Some(5)).await.unwrap();
    assert_eq!(seqs(&msgs), [1, 2]);
    assert!(!more);
    // After.
    let (msgs, more) = alice.history(&rid, Some(0), None, Some(5)).await.unwrap();
    assert_eq!(seqs(&msgs), [1, 2, 3, 4, 5]);
    assert!(more);
    let (msgs, more) = alice.history(&rid, Some(10), None, Some(5)).await.unwrap();
    assert_eq!(seqs(&msgs), [11, 12]);
    assert!(!more);
    // Messages decrypt from history, in order.
    let texts: Vec<String> = msgs
        .iter()
        .map(|m| alice.decrypt(m).unwrap().text)
        .collect();
    assert_eq!(texts, ["m11", "m12"]);
    // Default limit is 50 and the maximum 500: a huge limit is clamped, not refused.
    let (msgs, _) = alice.history(&rid, None, None, Some(10_000)).await.unwrap();
    assert_eq!(msgs.len(), 12);
    t.stop().await;
}

#[tokio::test]
async fn history_only_holds_messages_sent_while_a_member() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Late", None, false).await.unwrap();
    let rid = room.room_id;
    alice.send_text(&rid, "before bob").await.unwrap();
    let mut bob = t.user("bob", 1).await;
    bob.join_room(&rid, None).await.unwrap();
    alice.send_text(&rid, "after bob").await.unwrap();
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(bob.decrypt(&msgs[0]).unwrap().text, "after bob");
    t.stop().await;
}

#[tokio::test]
async fn offline_user_catches_up_after_reconnect() {
    let t = TestServer::new();
    let (mut alice, mut bob, rid) = t.pair("Catchup").await;
    alice.send_text(&rid, "one").await.unwrap();
    let last_seen = bob.next_message(&rid).await.unwrap().seq;
    bob.close().await;
    alice.send_text(&rid, "two").await.unwrap();
    alice.send_text(&rid, "three").await.unwrap();
    let mut bob = t.login("bob", 1).await;
    let (msgs, more) = bob
        .history(&rid, Some(last_seen), None, None)
        .await
        .unwrap();
    assert!(!more);
    // Bob's client learns alice's keys from the member list.
    bob.get_members(&rid).await.unwrap();
    let texts: Vec<String> = msgs.iter().map(|m| bob.decrypt(m).unwrap().text).collect();
    assert_eq!(texts, ["two", "three"]);
    t.stop().await;
}

#[tokio::test]
async fn one_user_in_several_rooms_and_on_several_connections() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut alice2 = t.login("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (r1, _) = alice.create_room("Room one", None, false).await.unwrap();
    let (r2, _) = alice.create_room("Room two", None, false).await.unwrap();
    bob.join_room(&r1.room_id, None).await.unwrap();
    bob.join_room(&r2.room_id, None).await.unwrap();
    bob.send_text(&r1.room_id, "in one").await.unwrap();
    bob.send_text(&r2.room_id, "in two").await.unwrap();
    for c in [&mut alice, &mut alice2] {
        c.get_members(&r1.room_id).await.unwrap();
        assert_eq!(c.next_message(&r1.room_id).await.unwrap().text, "in one");
        assert_eq!(c.next_message(&r2.room_id).await.unwrap().text, "in two");
    }
    // logged_in lists both rooms.
    let mut again = t.client().await;
    let rooms = again.login(&common::identity("alice", 0)).await.unwrap();
    let mut names: Vec<_> = rooms.iter().map(|r| r.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["Room one", "Room two"]);
    t.stop().await;
}

#[tokio::test]
async fn list_rooms_order_hidden_and_paging() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    // Each room a later millisecond than the one before: rooms created in
    // the same one tie on created_at and are then ordered by name, which
    // this test does not expect (it failed so once in CI).
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(3));
    let (small, _) = alice.create_room("Small", None, false).await.unwrap();
    tick().await;
    let (big, _) = alice.create_room("Big", Some("pw"), false).await.unwrap();
    tick().await;
    let (_hidden, _) = alice.create_room("Secret", None, true).await.unwrap();
    tick().await;
    let (also_small, _) = carol.create_room("Also small", None, false).await.unwrap();
    bob.join_room(&big.room_id, Some("pw")).await.unwrap();
    carol.join_room(&big.room_id, Some("pw")).await.unwrap();

    let (rooms, total, connected) = bob.list_rooms(None, None).await.unwrap();
    let names: Vec<_> = rooms.iter().map(|r| r.name.as_str()).collect();
    // Big has 3 members; Small and Also small have 1 each, ordered by created_at.
    assert_eq!(names, ["Big", "Small", "Also small"]);
    assert_eq!(total, 3);
    assert_eq!(connected, 3);
    let b = &rooms[0];
    assert!(b.has_password && !b.hidden);
    assert_eq!((b.members, b.online, b.owner.as_str()), (3, 3, "alice"));
    assert_eq!(rooms[1].room_id, small.room_id);
    assert_eq!(rooms[2].room_id, also_small.room_id);
    // The hidden room is listed to its member only.
    let (rooms, total, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(total, 4);
    assert!(rooms.iter().any(|r| r.name == "Secret" && r.hidden));
    // Paging.
    let (rooms, total, _) = bob.list_rooms(Some(1), Some(1)).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].name, "Small");
    // A member's own hidden room takes its place in the same order.
    let names = |rooms: Vec<e2ee_chat::protocol::RoomSummary>| {
        rooms.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    let (rooms, _, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(names(rooms), ["Big", "Small", "Secret", "Also small"]);
    let (rooms, _, _) = alice.list_rooms(Some(2), Some(1)).await.unwrap();
    assert_eq!(names(rooms), ["Secret"]);
    // The order follows membership changes and renames as they happen.
    bob.leave_room(&big.room_id).await.unwrap();
    carol.leave_room(&big.room_id).await.unwrap();
    alice
        .request_ok(&e2ee_chat::protocol::Request::RenameRoom {
            room_id: small.room_id.clone(),
            name: "Tiny".into(),
        })
        .await
        .unwrap();
    let (rooms, _, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(names(rooms), ["Tiny", "Big", "Secret", "Also small"]);
    carol.join_room(&small.room_id, None).await.unwrap();
    let (rooms, _, _) = bob.list_rooms(None, None).await.unwrap();
    assert_eq!(names(rooms), ["Tiny", "Big", "Also small"]);
    let (rooms, total, _) = bob.list_rooms(Some(5), None).await.unwrap();
    assert!(rooms.is_empty() && total == 3);
    t.stop().await;
}

#[tokio::test]
async fn hidden_room_can_be_joined_by_id_and_password_checked() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice
        .create_room("Hideout", Some("s3cret"), true)
        .await
        .unwrap();
    assert_code(
        bob.join_room(&room.room_id, None).await,
        ErrorCode::WrongPassword,
    );
    assert_code(
        bob.join_room(&room.room_id, Some("nope")).await,
        ErrorCode::WrongPassword,
    );
    let (joined, members) = bob.join_room(&room.room_id, Some("s3cret")).await.unwrap();
    assert_eq!(joined.members, 2);
    assert_eq!(members.len(), 2);
    // Joining again is not an error, needs no password, and emits no event.
    bob.join_room(&room.room_id, None).await.unwrap();
    alice
        .wait_for(|e| matches!(e, ServerMsg::MemberJoined { .. }))
        .await
        .unwrap();
    no_event(&mut alice, 300, |e| {
        matches!(e, ServerMsg::MemberJoined { .. })
    })
    .await;
    t.stop().await;
}

#[tokio::test]
async fn presence_events() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let bob = t.user("bob", 1).await;
    let (room, _) = alice.create_room("Presence", None, false).await.unwrap();
    let rid = room.room_id;
    let mut bob = bob;
    bob.join_room(&rid, None).await.unwrap();
    bob.close().await;
    let ev = alice
        .wait_for(|e| matches!(e, ServerMsg::Presence { username, .. } if username == "bob"))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::Presence {
            room_id: rid.clone(),
            username: "bob".into(),
            online: false
        }
    );
    let bob = t.login("bob", 1).await;
    let ev = alice
        .wait_for(|e| matches!(e, ServerMsg::Presence { username, .. } if username == "bob"))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::Presence {
            room_id: rid.clone(),
            username: "bob".into(),
            online: true
        }
    );
    // A second connection of an online user is not news.
    let bob2 = t.login("bob", 1).await;
    bob2.close().await;
    no_event(&mut alice, 300, |e| matches!(e, ServerMsg::Presence { .. })).await;
    let members = alice.get_members(&rid).await.unwrap();
    assert!(members.iter().all(|m| m.online));
    drop(bob);
    t.stop().await;
}

#[tokio::test]
async fn leave_passes_ownership_and_last_leave_deletes() {
    let t = TestServer::new();
    let (mut alice, mut bob, mut carol, rid) = t.trio("Handover").await;
    bob.send_text(&rid, "hello").await.unwrap();
    alice.leave_room(&rid).await.unwrap();
    let ev = bob
        .wait_for(|e| matches!(e, ServerMsg::MemberLeft { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::MemberLeft {
            room_id: rid.clone(),
            username: "alice".into(),
            reason: "left".into()
        }
    );
    let ev = carol
        .wait_for(|e| matches!(e, ServerMsg::OwnerChanged { .. }))
        .await
        .unwrap();
    assert_eq!(
        ev,
        ServerMsg::OwnerChanged {
            room_id: rid.clone(),
            owner: "bob".into()
        }
    );
    // Alice is no longer a member.
    assert_code(alice.get_members(&rid).await, ErrorCode::NotMember);
    carol.leave_room(&rid).await.unwrap();
    bob.leave_room(&rid).await.unwrap();
    // Gone: not listed, not joinable.
    let (rooms, total, _) = alice.list_rooms(None, None).await.unwrap();
    assert!(rooms.is_empty() && total == 0);
    assert_code(alice.join_room(&rid, None).await, ErrorCode::NoSuchRoom);
    t.stop().await;
}

#[tokio::test]
async fn restart_keeps_users_rooms_membership_and_messages() {
    let mut t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice
        .create_room("Durable", Some("pw"), false)
        .await
        .unwrap();
    let rid = room.room_id;
    bob.join_room(&rid, Some("pw")).await.unwrap();
    for i in 0..5 {
        alice
            .send_text(&rid, &format!("before restart {i}"))
            .await
            .unwrap();
    }
    alice.close().await;
    bob.close().await;
    t.restart().await;

    let mut alice = t.login("alice", 0).await;
    let mut bob = t.login("bob", 1).await;
    let (rooms, _, _) = bob.list_rooms(None, None).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        (rooms[0].name.as_str(), rooms[0].members, rooms[0].last_seq),
        ("Durable", 2, 5)
    );
    assert!(rooms[0].has_password);
    let members = bob.get_members(&rid).await.unwrap();
    assert_eq!(members.len(), 2);
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    let texts: Vec<String> = msgs.iter().map(|m| bob.decrypt(m).unwrap().text).collect();
    assert_eq!(texts.len(), 5);
    assert_eq!(texts[4], "before restart 4");
    // Seq continues without a gap.
    let (seq, _) = alice.send_text(&rid, "after restart").await.unwrap();
    assert_eq!(seq, 6);
    assert_eq!(bob.next_message(&rid).await.unwrap().text, "after restart");
    // The password survived (hashed).
    let mut carol = t.user("carol", 2).await;
    assert_code(
        carol.join_room(&rid, Some("wrong")).await,
        ErrorCode::WrongPassword,
    );
    carol.join_room(&rid, Some("pw")).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn pipelined_sends_keep_their_order() {
    let t = TestServer::new();
    let (mut alice, mut bob, rid) = t.pair("Burst").await;
    let me = alice.identity().unwrap().clone();
    let recipients = common::recipients(&[("alice", 0), ("bob", 1)]);
    let n = 40;
    let mut ids = Vec::new();
    for i in 0..n {
        let body =
            e2ee_chat::client::seal_message(&me.keys, &rid, &format!("burst {i}"), &recipients)
                .unwrap();
        ids.push(body.msg_id.clone());
        alice
            .send_raw(Request::Send(body).encode(Some(1000 + i)))
            .await
            .unwrap();
    }
    // Replies come back for every request, and seq follows the request order.
    let mut sent = Vec::new();
    while sent.len() < n as usize {
        if let ServerMsg::Sent {
            id, seq, msg_id, ..
        } = alice.read().await.unwrap()
        {
            sent.push((id.unwrap(), seq, msg_id));
        }
    }
    sent.sort();
    for (i, (id, seq, msg_id)) in sent.iter().enumerate() {
        assert_eq!(*id, 1000 + i as u64);
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(msg_id, &ids[i]);
    }
    bob.get_members(&rid).await.unwrap();
    for i in 0..n {
        let m = bob.next_message(&rid).await.unwrap();
        assert_eq!((m.seq, m.text), (i + 1, format!("burst {i}")));
    }
    t.stop().await;
}
