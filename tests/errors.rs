//! One test per error code of PROTOCOL.md section 6 (owner-operation codes
//! are in owner.rs): each provokes the code over a real socket and checks
//! that nothing changed.

mod common;

use ciborium::Value;
use common::cbor::map;
use common::{assert_code, code_of, identity, still_serves, TestServer};
use e2ee_chat::client::seal_message;
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn malformed_frames_get_malformed_and_the_connection_stays() {
    let t = TestServer::new();
    let mut c = t.client().await;
    let cases: Vec<Vec<u8>> = vec![
        b"\xff\xfe not cbor".to_vec(),
        map(vec![("id", Value::Integer(5.into()))]), // no type
        vec![0x82, 0x01, 0x02],                      // not a map
        map(vec![("type", Value::Integer(1.into()))]), // type not text
        map(vec![
            ("type", Value::Text("login".into())),
            ("username", Value::Bytes(b"alice".to_vec())),
        ]),
        map(vec![
            ("type", Value::Text("list_rooms".into())),
            ("limit", Value::Text("10".into())),
        ]),
        map(vec![
            ("type", Value::Text("ping".into())),
            ("id", Value::Integer((-3).into())),
        ]),
        map(vec![
            ("type", Value::Text("ping".into())),
            ("id", Value::Integer((1u64 << 53).into())),
        ]),
        map(vec![("type", Value::Text("prove".into()))]), // missing field
    ];
    for frame in cases {
        c.send_raw(frame.clone()).await.unwrap();
        let reply = c.read().await.unwrap();
        assert_eq!(code_of(&reply), ErrorCode::Malformed, "frame {frame:x?}");
    }
    // The id is echoed when it can be read.
    c.send_raw(map(vec![
        ("type", Value::Text("login".into())),
        ("id", Value::Integer(77.into())),
    ]))
    .await
    .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!(
        (code_of(&reply), reply.reply_id()),
        (ErrorCode::Malformed, Some(77))
    );
    // A text frame.
    c.send_ws(WsMessage::Text("{\"type\":\"ping\"}".into()))
        .await
        .unwrap();
    assert_eq!(code_of(&c.read().await.unwrap()), ErrorCode::Malformed);
    still_serves(&mut c).await;
    t.stop().await;
}

#[tokio::test]
async fn unknown_type() {
    let t = TestServer::new();
    let mut c = t.client().await;
    c.send_raw(map(vec![
        ("type", Value::Text("frobnicate".into())),
        ("id", Value::Integer(4.into())),
    ]))
    .await
    .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!(
        (code_of(&reply), reply.reply_id()),
        (ErrorCode::UnknownType, Some(4))
    );
    still_serves(&mut c).await;
    t.stop().await;
}

#[tokio::test]
async fn unknown_keys_are_ignored() {
    let t = TestServer::new();
    let mut c = t.client().await;
    c.send_raw(map(vec![
        ("type", Value::Text("ping".into())),
        ("id", Value::Integer(9.into())),
        ("future_field", Value::Array(vec![])),
    ]))
    .await
    .unwrap();
    assert!(matches!(
        c.read().await.unwrap(),
        ServerMsg::Pong { id: Some(9), .. }
    ));
    t.stop().await;
}

#[tokio::test]
async fn not_logged_in() {
    let t = TestServer::new();
    let mut c = t.client().await;
    assert_code(c.list_rooms(None, None).await, ErrorCode::NotLoggedIn);
    assert_code(
        c.create_room("Nope", None, false).await,
        ErrorCode::NotLoggedIn,
    );
    // Nothing was created.
    let mut alice = t.user("alice", 0).await;
    let (_, total, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(total, 0);
    t.stop().await;
}

#[tokio::test]
async fn account_errors() {
    let t = TestServer::new();
    let f = common::fixtures();
    let mut c = t.client().await;
    let alice = identity("alice", 0);
    let register = |name: &str, sign: Vec<u8>, enc: Vec<u8>| Request::Register {
        username: name.into(),
        sign_key: ByteBuf::from(sign),
        enc_key: ByteBuf::from(enc),
    };
    // invalid_username
    for bad in ["Al", "ALICE", "-alice", "al ice", "a\u{202e}bc"] {
        let req = register(bad, alice.keys.sign_der.clone(), alice.keys.enc_der.clone());
        assert_code(c.request(&req).await, ErrorCode::InvalidUsername);
    }
    assert_code(
        c.request(&Request::Login {
            username: "NO".into(),
        })
        .await,
        ErrorCode::InvalidUsername,
    );
    // invalid_key: garbage, 1024 bits, e = 3, and a valid key in one slot only.
    for (sign, enc) in [
        (b"garbage".to_vec(), alice.keys.enc_der.clone()),
        (f.rsa1024_public.clone(), alice.keys.enc_der.clone()),
        (alice.keys.sign_der.clone(), f.rsa_e3_public.clone()),
    ] {
        assert_code(
            c.request(&register("alice", sign, enc)).await,
            ErrorCode::InvalidKey,
        );
    }
    // None of those registered alice.
    assert_code(
        c.request(&Request::Login {
            username: "alice".into(),
        })
        .await,
        ErrorCode::UnknownUser,
    );
    // username_taken, and the first keys stay.
    c.register(&alice).await.unwrap();
    let other = identity("alice", 1);
    assert_code(c.register(&other).await, ErrorCode::UsernameTaken);
    assert_code(c.login(&other).await, ErrorCode::AuthFailed);
    c.login(&alice).await.unwrap();
    // already_logged_in
    assert_code(
        c.request(&Request::Login {
            username: "alice".into(),
        })
        .await,
        ErrorCode::AlreadyLoggedIn,
    );
    t.stop().await;
}

/// Asks for a login challenge and returns its nonce.
async fn challenge(c: &mut e2ee_chat::client::Client, username: &str) -> Vec<u8> {
    match c
        .request(&Request::Login {
            username: username.into(),
        })
        .await
        .unwrap()
    {
        ServerMsg::Challenge { nonce, .. } => nonce.into_vec(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[tokio::test]
async fn challenge_errors() {
    let t = TestServer::new();
    let alice = identity("alice", 0);
    let bob = identity("bob", 1);
    let mut setup = t.client().await;
    setup.register(&alice).await.unwrap();
    setup.register(&bob).await.unwrap();
    let mut c = t.client().await;
    // no_challenge: prove with nothing pending.
    let prove = |sig: Vec<u8>| Request::Prove {
        signature: ByteBuf::from(sig),
    };
    assert_code(
        c.request(&prove(vec![0; 256])).await,
        ErrorCode::NoChallenge,
    );
    // auth_failed: a signature by bob's key over alice's challenge...
    let nonce = challenge(&mut c, "alice").await;
    let input = e2ee_chat::crypto::login_signature_input(c.host(), "alice", &nonce);
    assert_code(
        c.request(&prove(bob.keys.sign(&input))).await,
        ErrorCode::AuthFailed,
    );
    // ...spends the challenge: even the right signature now gets no_challenge.
    assert_code(
        c.request(&prove(alice.keys.sign(&input))).await,
        ErrorCode::NoChallenge,
    );
    // A signature for another username's input does not work either.
    let nonce = challenge(&mut c, "alice").await;
    let wrong_user = e2ee_chat::crypto::login_signature_input(c.host(), "bob", &nonce);
    assert_code(
        c.request(&prove(alice.keys.sign(&wrong_user))).await,
        ErrorCode::AuthFailed,
    );
    // A replayed (old) signature fails against a fresh challenge.
    challenge(&mut c, "alice").await;
    assert_code(
        c.request(&prove(alice.keys.sign(&input))).await,
        ErrorCode::AuthFailed,
    );
    // unknown_user
    assert_code(
        c.request(&Request::Login {
            username: "nobody".into(),
        })
        .await,
        ErrorCode::UnknownUser,
    );
    // Still not logged in after all that.
    assert_code(c.list_rooms(None, None).await, ErrorCode::NotLoggedIn);
    c.login(&alice).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn expired_challenge_is_no_challenge() {
    let t = TestServer::with(|s| s.security.challenge_ttl_secs = 0);
    let alice = identity("alice", 0);
    let mut c = t.client().await;
    c.register(&alice).await.unwrap();
    assert_code(c.login(&alice).await, ErrorCode::NoChallenge);
    assert_code(c.list_rooms(None, None).await, ErrorCode::NotLoggedIn);
    t.stop().await;
}

#[tokio::test]
async fn room_creation_errors() {
    let t = TestServer::with(|s| s.limits.max_rooms_per_user = 2);
    let mut alice = t.user("alice", 0).await;
    for bad in [
        "",
        " lead",
        "trail ",
        "semi;colon",
        "nul\0byte",
        &"x".repeat(65),
    ] {
        assert_code(
            alice.create_room(bad, None, false).await,
            ErrorCode::InvalidRoomName,
        );
    }
    assert_code(
        alice.create_room("Pw", Some(""), false).await,
        ErrorCode::InvalidPassword,
    );
    assert_code(
        alice.create_room("Pw", Some(&"p".repeat(129)), false).await,
        ErrorCode::InvalidPassword,
    );
    alice.create_room("General", None, false).await.unwrap();
    assert_code(
        alice.create_room("general", None, false).await,
        ErrorCode::RoomExists,
    );
    assert_code(
        alice.create_room("GENERAL", None, false).await,
        ErrorCode::RoomExists,
    );
    alice
        .create_room("Second", Some(&"p".repeat(128)), false)
        .await
        .unwrap();
    // too_many_rooms on create and on join.
    assert_code(
        alice.create_room("Third", None, false).await,
        ErrorCode::TooManyRooms,
    );
    let mut bob = t.user("bob", 1).await;
    let (other, _) = bob.create_room("Bobs", None, false).await.unwrap();
    assert_code(
        alice.join_room(&other.room_id, None).await,
        ErrorCode::TooManyRooms,
    );
    // Exactly the rooms that succeeded exist.
    let (rooms, total, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(total, 3);
    let mut names: Vec<_> = rooms.into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(names, ["Bobs", "General", "Second"]);
    t.stop().await;
}

#[tokio::test]
async fn join_errors() {
    let t = TestServer::with(|s| s.limits.max_members_per_room = 2);
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut carol = t.user("carol", 2).await;
    assert_code(
        bob.join_room("r-doesnotexist", None).await,
        ErrorCode::NoSuchRoom,
    );
    let (room, _) = alice.create_room("Small", Some("pw"), false).await.unwrap();
    assert_code(
        bob.join_room(&room.room_id, Some("PW")).await,
        ErrorCode::WrongPassword,
    );
    bob.join_room(&room.room_id, Some("pw")).await.unwrap();
    assert_code(
        carol.join_room(&room.room_id, Some("pw")).await,
        ErrorCode::RoomFull,
    );
    assert_eq!(alice.get_members(&room.room_id).await.unwrap().len(), 2);
    assert_code(
        bob.leave_room("r-doesnotexist").await,
        ErrorCode::NoSuchRoom,
    );
    t.stop().await;
}

#[tokio::test]
async fn not_member_errors() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice.create_room("Private", None, false).await.unwrap();
    let rid = room.room_id;
    assert_code(bob.get_members(&rid).await, ErrorCode::NotMember);
    assert_code(
        bob.history(&rid, None, None, None).await,
        ErrorCode::NotMember,
    );
    assert_code(bob.leave_room(&rid).await, ErrorCode::NotMember);
    let bob_id = identity("bob", 1);
    let body = seal_message(
        &bob_id.keys,
        &rid,
        "let me in",
        &[("alice".into(), identity("alice", 0).keys.enc_der)],
    )
    .unwrap();
    assert_code(
        bob.request(&Request::Send(body)).await,
        ErrorCode::NotMember,
    );
    let (msgs, _) = alice.history(&rid, None, None, None).await.unwrap();
    assert!(msgs.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn message_errors_too_large_and_invalid_message() {
    let t = TestServer::with(|s| s.limits.max_ciphertext_bytes = 1024);
    let (mut alice, mut bob, rid) = t.pair("Checks").await;
    let me = identity("alice", 0);
    let recipients = common::recipients(&[("alice", 0), ("bob", 1)]);
    let good = seal_message(&me.keys, &rid, "fine", &recipients).unwrap();

    // too_large
    let big = seal_message(&me.keys, &rid, &"x".repeat(2000), &recipients).unwrap();
    assert_code(
        alice.request(&Request::Send(big)).await,
        ErrorCode::TooLarge,
    );
    // invalid_message: msg_id and nonce lengths
    let mut b = good.clone();
    b.msg_id = ByteBuf::from(vec![1; 15]);
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::InvalidMessage,
    );
    let mut b = good.clone();
    b.nonce = ByteBuf::from(vec![1; 16]);
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::InvalidMessage,
    );
    // invalid_message: a wrapped key of the wrong length
    let mut b = good.clone();
    b.keys.insert("bob".into(), ByteBuf::from(vec![0; 100]));
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::InvalidMessage,
    );
    // invalid_message: a bad signature
    let mut b = good.clone();
    let mut sig = b.signature.to_vec();
    sig[10] ^= 0xff;
    b.signature = ByteBuf::from(sig);
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::InvalidMessage,
    );
    // invalid_message: someone else's signature
    let mut b = good.clone();
    b.signature = ByteBuf::from(identity("bob", 1).keys.sign(&b.signature_input()));
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::InvalidMessage,
    );
    // stale_members: a key for a non-member
    let mut b = good.clone();
    b.keys.insert("carol".into(), b.keys["bob"].clone());
    assert_code(
        alice.request(&Request::Send(b)).await,
        ErrorCode::StaleMembers,
    );
    // Nothing was stored; then the good one goes through as seq 1.
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    assert!(msgs.is_empty());
    let sent = alice.request(&Request::Send(good)).await.unwrap();
    assert!(matches!(sent, ServerMsg::Sent { seq: 1, .. }), "{sent:?}");
    t.stop().await;
}

#[tokio::test]
async fn signatures_unchecked_when_configured_off() {
    let t = TestServer::with(|s| s.security.verify_signatures = false);
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Trusting", None, false).await.unwrap();
    let me = identity("alice", 0);
    let mut b = seal_message(
        &me.keys,
        &room.room_id,
        "x",
        &[("alice".into(), me.keys.enc_der.clone())],
    )
    .unwrap();
    b.signature = ByteBuf::from(vec![0; 256]);
    assert!(matches!(
        alice.request(&Request::Send(b)).await.unwrap(),
        ServerMsg::Sent { .. }
    ));
    t.stop().await;
}

#[tokio::test]
async fn rate_limited_then_closed_with_1008_while_others_are_served() {
    let t = TestServer::with(|s| {
        s.rate_limit.per_second = 1.0;
        s.rate_limit.burst = 5.0;
        s.rate_limit.close_after = 20;
    });
    let mut flooder = t.client().await;
    let mut polite = t.client().await;
    let ping = Request::Ping;
    let mut codes = Vec::new();
    for i in 0..10 {
        flooder.send_raw(ping.encode(Some(i))).await.unwrap();
    }
    for _ in 0..10 {
        let m = flooder.read().await.unwrap();
        codes.push(match m {
            ServerMsg::Pong { .. } => None,
            other => Some(code_of(&other)),
        });
    }
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 5, "{codes:?}");
    assert!(codes[5..]
        .iter()
        .all(|c| *c == Some(ErrorCode::RateLimited)));
    // Keep flooding: the connection is closed with 1008.
    for i in 0..30 {
        if flooder.send_raw(ping.encode(Some(100 + i))).await.is_err() {
            break;
        }
    }
    let (_, closed) = common::read_until_closed(&mut flooder).await;
    assert!(closed.contains("1008"), "{closed}");
    still_serves(&mut polite).await;
    t.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_are_served() {
    let t = TestServer::with(|s| s.limits.max_frame_bytes = 4096);
    let mut big = t.client().await;
    let mut polite = t.client().await;
    big.send_raw(vec![0xa0; 10_000]).await.unwrap();
    let (_, closed) = common::read_until_closed(&mut big).await;
    assert!(closed.contains("1009"), "{closed}");
    still_serves(&mut polite).await;
    t.stop().await;
}

#[tokio::test]
async fn internal_when_the_store_fails_and_nothing_is_half_done() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Doomed", None, false).await.unwrap();
    let rid = room.room_id;
    // Break the store behind the server's back: the room's row disappears,
    // so appending a message cannot find the room's seq counter.
    let db = rusqlite::Connection::open(t.dir.path().join("chat.db")).unwrap();
    db.execute("DELETE FROM rooms WHERE room_id = ?1", [&rid])
        .unwrap();
    drop(db);
    assert_code(
        alice.send_text(&rid, "into the void").await,
        ErrorCode::Internal,
    );
    let db = rusqlite::Connection::open(t.dir.path().join("chat.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn server_refuses_to_start_on_an_unusable_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::settings(dir.path());
    s.store.path = dir.path().to_path_buf(); // a directory, not a file
    assert!(e2ee_chat::server::start(s, false).is_err());
}
