//! Errors over real sockets: malformed frames, unknown types and unknown
//! keys, the per-connection rate limit closing a flood with 1008, an
//! oversized frame closing with 1009 (each while the connection, or the
//! others, go on being served); the login challenge's errors; room
//! creation, join and membership errors; a failing store answering
//! `internal` with nothing half done. Registration and device errors are in
//! `accounts.rs`, commits' and sends' in `rooms.rs`.

mod common;

use ciborium::Value;
use common::cbor::map;
use common::phone::{code, err_code, identity, read_until_closed, refusal, still_serves, Phone};
use common::TestServer;
use e2ee_chat::client::conn::Conn;
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};
use serde_bytes::ByteBuf;

async fn connect(t: &TestServer) -> Conn {
    Conn::connect(&t.url()).await.expect("connects")
}

#[tokio::test]
async fn malformed_frames_get_malformed_and_the_connection_stays() {
    let t = TestServer::with(|_| {});
    let mut c = connect(&t).await;
    let cases: Vec<Vec<u8>> = vec![
        b"\xff\xfe not cbor".to_vec(),
        map(vec![("id", Value::Integer(5.into()))]), // no type
        vec![0x82, 0x01, 0x02],                      // not a map
        map(vec![("type", Value::Integer(1.into()))]),
        map(vec![
            ("type", Value::Text("register".into())),
            ("username", Value::Text("alice".into())),
            ("identity_key", Value::Text("not bytes".into())),
            ("proof", Value::Bytes(vec![1; 256])),
        ]),
        map(vec![
            ("type", Value::Text("commit".into())),
            ("room_id", Value::Text("r-00".into())),
            ("commit", Value::Bytes(vec![1])),
        ]), // no group_info
        map(vec![
            ("type", Value::Text("send".into())),
            ("room_id", Value::Text("r-00".into())),
            ("msg_id", Value::Integer(16.into())),
            ("message", Value::Bytes(vec![1])),
        ]),
        map(vec![
            ("type", Value::Text("ping".into())),
            ("id", Value::Integer((-3).into())),
        ]),
        map(vec![("type", Value::Text("prove".into()))]), // missing fields
    ];
    for frame in cases {
        c.send_raw(frame.clone()).await.unwrap();
        let reply = c.read().await.unwrap();
        assert_eq!(
            refusal(reply).code,
            ErrorCode::Malformed,
            "frame {frame:x?}"
        );
    }
    // The id is echoed when it can be read.
    c.send_raw(map(vec![
        ("type", Value::Text("group_state".into())),
        ("id", Value::Integer(77.into())),
    ]))
    .await
    .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!(reply.reply_id(), Some(77));
    assert_eq!(refusal(reply).code, ErrorCode::Malformed);
    still_serves(&mut c).await;
    t.stop().await;
}

#[tokio::test]
async fn unknown_types_are_refused_and_unknown_keys_ignored() {
    let t = TestServer::with(|_| {});
    let mut c = connect(&t).await;
    c.send_raw(map(vec![
        ("type", Value::Text("frobnicate".into())),
        ("id", Value::Integer(4.into())),
    ]))
    .await
    .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!(reply.reply_id(), Some(4));
    assert_eq!(refusal(reply).code, ErrorCode::UnknownType);
    c.send_raw(map(vec![
        ("type", Value::Text("ping".into())),
        ("id", Value::Integer(9.into())),
        ("future_field", Value::Array(vec![])),
    ]))
    .await
    .unwrap();
    assert!(matches!(
        c.read().await.unwrap(),
        ServerMsg::Shared(PlainMsg::Pong { id: Some(9), .. })
    ));
    t.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_with_1008_while_others_are_served() {
    let t = TestServer::with(|s| {
        s.rate_limit.per_second = 1.0;
        s.rate_limit.burst = 5.0;
        s.rate_limit.close_after = 20;
    });
    let mut flooder = connect(&t).await;
    let mut polite = connect(&t).await;
    let ping = Request::Shared(PlainRequest::Ping);
    for i in 0..10 {
        flooder.send_raw(ping.encode(Some(i))).await.unwrap();
    }
    let mut limited = 0;
    for _ in 0..10 {
        match flooder.read().await.unwrap() {
            ServerMsg::Shared(PlainMsg::Pong { .. }) => {}
            other => {
                assert_eq!(refusal(other).code, ErrorCode::RateLimited);
                limited += 1;
            }
        }
    }
    assert_eq!(limited, 5);
    for i in 0..30 {
        if flooder.send_raw(ping.encode(Some(100 + i))).await.is_err() {
            break;
        }
    }
    let closed = read_until_closed(&mut flooder).await;
    assert!(closed.contains("1008"), "{closed}");
    still_serves(&mut polite).await;
    t.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_are_served() {
    let t = TestServer::with(|s| s.limits.max_frame_bytes = 4096);
    let mut big = connect(&t).await;
    let mut polite = connect(&t).await;
    big.send_raw(vec![0xa0; 10_000]).await.unwrap();
    let closed = read_until_closed(&mut big).await;
    assert!(closed.contains("1009"), "{closed}");
    still_serves(&mut polite).await;
    t.stop().await;
}

/// `login` for `username`: the challenge's nonce.
async fn challenge(c: &mut Conn, username: &str) -> Vec<u8> {
    match c
        .request(&Request::Shared(PlainRequest::Login {
            username: username.into(),
        }))
        .await
        .unwrap()
    {
        ServerMsg::Shared(PlainMsg::Challenge { nonce, .. }) => nonce.into_vec(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[tokio::test]
async fn challenge_errors() {
    use e2ee_chat::client::mls::Device;
    use e2ee_chat::identity::login_signature_input;
    let t = TestServer::with(|_| {});
    let (alice, bob) = (identity("alice", 0), identity("bob", 1));
    let mut setup = connect(&t).await;
    setup.register(&alice).await.unwrap();
    setup.register(&bob).await.unwrap();
    let device = Device::new("alice", |m| alice.sign(m)).certificate;
    let mut c = connect(&t).await;
    let prove = |sig: Vec<u8>| Request::Prove {
        signature: ByteBuf::from(sig),
        device: ByteBuf::from(device.clone()),
    };
    // no_challenge: prove with nothing pending.
    assert_eq!(
        code(c.request(&prove(vec![0; 256])).await),
        ErrorCode::NoChallenge
    );
    // auth_failed: a signature by bob's key over alice's challenge...
    let nonce = challenge(&mut c, "alice").await;
    let input = login_signature_input(c.host(), "alice", &nonce);
    assert_eq!(
        code(c.request(&prove(bob.sign(&input))).await),
        ErrorCode::AuthFailed
    );
    // ...spends the challenge: even the right signature now gets no_challenge.
    assert_eq!(
        code(c.request(&prove(alice.sign(&input))).await),
        ErrorCode::NoChallenge
    );
    // A signature for another username's input does not work either.
    let nonce = challenge(&mut c, "alice").await;
    let wrong_user = login_signature_input(c.host(), "bob", &nonce);
    assert_eq!(
        code(c.request(&prove(alice.sign(&wrong_user))).await),
        ErrorCode::AuthFailed
    );
    // A replayed (old) signature fails against a fresh challenge.
    challenge(&mut c, "alice").await;
    assert_eq!(
        code(c.request(&prove(alice.sign(&input))).await),
        ErrorCode::AuthFailed
    );
    // unknown_user
    assert_eq!(
        code(
            c.request(&Request::Shared(PlainRequest::Login {
                username: "nobody".into(),
            }))
            .await
        ),
        ErrorCode::UnknownUser
    );
    // Still not logged in after all that; then a proper login works.
    assert_eq!(
        code(
            c.request(&Request::Shared(PlainRequest::GetMembers {
                room_id: "r-x".into()
            }))
            .await
        ),
        ErrorCode::NotLoggedIn
    );
    c.login(&alice, &device).await.unwrap();
    t.stop().await;
}

#[tokio::test]
async fn an_expired_challenge_is_no_challenge() {
    let t = TestServer::with(|s| s.security.challenge_ttl_secs = 0);
    let alice = identity("alice", 0);
    let mut c = connect(&t).await;
    c.register(&alice).await.unwrap();
    let device = e2ee_chat::client::mls::Device::new("alice", |m| alice.sign(m));
    assert_eq!(
        code(c.login(&alice, &device.certificate).await),
        ErrorCode::NoChallenge
    );
    t.stop().await;
}

#[tokio::test]
async fn room_creation_errors() {
    let t = TestServer::with(|s| s.limits.max_rooms_per_user = 2);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    for bad in [
        "",
        " lead",
        "trail ",
        "semi;colon",
        "nul\0byte",
        &"x".repeat(65),
    ] {
        assert_eq!(
            err_code(alice.create_with(bad, None, false).await),
            ErrorCode::InvalidRoomName
        );
    }
    assert_eq!(
        err_code(alice.create_with("Pw", Some(""), false).await),
        ErrorCode::InvalidPassword
    );
    assert_eq!(
        err_code(alice.create_with("Pw", Some(&"p".repeat(129)), false).await),
        ErrorCode::InvalidPassword
    );
    alice.create_with("General", None, false).await.unwrap();
    for taken in ["general", "GENERAL"] {
        assert_eq!(
            err_code(alice.create_with(taken, None, false).await),
            ErrorCode::RoomExists
        );
    }
    alice
        .create_with("Second", Some(&"p".repeat(128)), false)
        .await
        .unwrap();
    // too_many_rooms on create and on join.
    assert_eq!(
        err_code(alice.create_with("Third", None, false).await),
        ErrorCode::TooManyRooms
    );
    let mut bob = Phone::register(&url, "bob", 1).await;
    let other = bob.create_with("Bobs", None, false).await.unwrap();
    assert_eq!(
        err_code(alice.join(&other.room_id, None).await),
        ErrorCode::TooManyRooms
    );
    // Exactly the rooms that succeeded exist.
    let (rooms, total, _) = alice.rooms(None, None).await;
    let mut names: Vec<_> = rooms.into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(
        (names, total),
        (vec!["Bobs".into(), "General".into(), "Second".into()], 3)
    );
    t.stop().await;
}

#[tokio::test]
async fn join_and_membership_errors() {
    let t = TestServer::with(|s| s.limits.max_members_per_room = 2);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    let mut carol = Phone::register(&url, "carol", 2).await;
    assert_eq!(
        err_code(bob.join("r-doesnotexist", None).await),
        ErrorCode::NoSuchRoom
    );
    let room = alice.create_with("Small", Some("pw"), false).await.unwrap();
    let rid = room.room_id;
    // Not a member yet: nothing of the room.
    for req in [
        PlainRequest::GetMembers {
            room_id: rid.clone(),
        },
        PlainRequest::History {
            room_id: rid.clone(),
            after_seq: None,
            before_seq: None,
            limit: None,
        },
        PlainRequest::LeaveRoom {
            room_id: rid.clone(),
        },
    ] {
        assert_eq!(err_code(bob.ask(req).await), ErrorCode::NotMember);
    }
    assert_eq!(
        code(
            bob.c
                .group_state(&rid)
                .await
                .map(|_| ServerMsg::Shared(PlainMsg::Ok { id: None }))
        ),
        ErrorCode::NotMember
    );
    assert_eq!(
        err_code(bob.join(&rid, Some("PW")).await),
        ErrorCode::WrongPassword
    );
    bob.join(&rid, Some("pw")).await.unwrap();
    assert_eq!(
        err_code(carol.join(&rid, Some("pw")).await),
        ErrorCode::RoomFull
    );
    assert_eq!(alice.online(&rid).await.len(), 2);
    assert_eq!(
        err_code(
            bob.ask(PlainRequest::LeaveRoom {
                room_id: "r-doesnotexist".into()
            })
            .await
        ),
        ErrorCode::NoSuchRoom
    );
    t.stop().await;
}

#[tokio::test]
async fn internal_when_the_store_fails_and_nothing_is_half_done() {
    let t = TestServer::with(|_| {});
    let mut alice = Phone::register(&t.url(), "alice", 0).await;
    let rid = alice.create("Doomed").await.room_id;
    // Break the store behind the server's back: the room's row disappears,
    // so appending an entry cannot find the room's seq counter.
    let db = rusqlite::Connection::open(t.dir.path().join("chat.db")).unwrap();
    db.execute("DELETE FROM rooms WHERE room_id = ?1", [&rid])
        .unwrap();
    drop(db);
    assert_eq!(
        refusal(alice.try_say("into the void").await).code,
        ErrorCode::Internal
    );
    let db = rusqlite::Connection::open(t.dir.path().join("chat.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    still_serves(&mut alice.c).await;
    t.stop().await;
}

#[tokio::test]
async fn the_server_refuses_to_start_on_an_unusable_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::settings(dir.path());
    s.store.path = dir.path().to_path_buf(); // a directory, not a file
    assert!(e2ee_chat::server::start(s, false).is_err());
}
