//! Hostile clients over real sockets: each gets the specified error or close
//! code, and a well-behaved client is served throughout.

mod common;

use std::time::Duration;

use common::{assert_code, identity, recipients, still_serves, TestServer};
use e2ee_chat::client::{seal_message, Client};
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn half_open_handshakes_are_dropped_and_others_served() {
    let t = TestServer::with(|s| s.limits.handshake_timeout_secs = 1);
    let addr = t.server.as_ref().unwrap().addr;
    let mut polite = t.user("alice", 0).await;
    // 50 connections that never finish the HTTP upgrade.
    let mut half = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        half.push(s);
    }
    still_serves(&mut polite).await;
    // Each is closed by the server after the handshake timeout.
    for mut s in half {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a half-open connection");
    }
    still_serves(&mut polite).await;
    t.stop().await;
}

/// Reads frames from a raw websocket until `n` of `kind` arrived, publishing
/// the count in `progress` as it goes.
async fn count_frames(
    ws: e2ee_chat::client::Ws,
    kind: &'static str,
    n: usize,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> e2ee_chat::client::Ws {
    use futures_util::StreamExt;
    let mut ws = ws;
    let mut seen = 0;
    while seen < n {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("frames keep coming")
            .expect("open")
            .expect("readable");
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = frame {
            if e2ee_chat::protocol::peek_type(&b) == kind.as_bytes() {
                seen += 1;
                progress.store(seen, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    ws
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let t = TestServer::with(|s| {
        s.limits.send_queue = 512;
        // A group commit releases up to 512 messages at once; bob, who
        // reads, must have room for a whole batch in bytes too.
        s.limits.send_queue_bytes = 16 << 20;
        s.limits.tcp_user_timeout_secs = 2;
    });
    let alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let mut alice = alice;
    let (room, _) = alice.create_room("Firehose", None, false).await.unwrap();
    let rid = room.room_id;
    bob.join_room(&rid, None).await.unwrap();
    let mut sloth = t.user("carol", 2).await;
    sloth.join_room(&rid, None).await.unwrap();
    alice.get_members(&rid).await.unwrap();
    let me = identity("alice", 0);
    let recipients = recipients(&[("alice", 0), ("bob", 1), ("carol", 2)]);
    let body = seal_message(&me.keys, &rid, &"x".repeat(16 * 1024), &recipients).unwrap();
    // carol never reads. alice sends far more than carol's queue (512 frames)
    // and socket buffers (~10 MiB on loopback) hold: 2,500 × 16 KiB ≈ 40 MiB,
    // pipelined, while alice and bob read. alice keeps at most 256 messages
    // ahead of what bob has read, so bob stays under his queue of 512 however
    // loaded the machine is (CI once starved bob's reader and he was dropped
    // as slow too); carol, who reads nothing, still overflows.
    let n = 2500usize;
    let bob_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bob_reads = tokio::spawn(count_frames(bob.into_ws(), "message", n, bob_seen.clone()));
    use futures_util::{SinkExt, StreamExt};
    let (mut sink, stream) = alice.into_ws().split();
    let alice_reads = tokio::spawn(async move {
        let mut ws = stream;
        let mut acks = 0;
        while acks < n {
            let f = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = f {
                if e2ee_chat::protocol::peek_type(&b) == b"sent" {
                    acks += 1;
                }
            }
        }
        ws
    });
    for i in 0..n as u64 {
        while i as usize >= bob_seen.load(std::sync::atomic::Ordering::Relaxed) + 256 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut b = body.clone();
        let mut id = vec![0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        b.msg_id = ByteBuf::from(id);
        // Same ciphertext under a new msg_id: re-sign, as the signature covers msg_id.
        b.signature = ByteBuf::from(me.keys.sign(&b.signature_input()));
        let frame = Request::Send(b).encode(Some(i));
        sink.send(tokio_tungstenite::tungstenite::Message::Binary(
            frame.into(),
        ))
        .await
        .unwrap();
    }
    // bob got every message, alice every ack.
    let _bob = bob_reads.await.unwrap();
    let _alice = alice_reads.await.unwrap();
    // When carol finally reads, she finds fewer messages than were sent, then the end.
    sloth.timeout = Duration::from_secs(20);
    let (seen, end) = common::read_until_closed(&mut sloth).await;
    assert!(
        seen < n,
        "carol received {seen} of {n}: nothing was dropped"
    );
    assert!(
        end.contains("1008") || end.contains("reset") || end.contains("closed"),
        "{end}"
    );
    // She can reconnect and catch up from history.
    let mut carol = t.login("carol", 2).await;
    assert_eq!(common::all_history(&mut carol, &rid, 500).await.len(), n);
    let mut polite = t.user("dave", 3).await;
    still_serves(&mut polite).await;
    t.stop().await;
}

#[tokio::test]
async fn login_floods_without_prove_are_limited() {
    let t = TestServer::with(|s| s.limits.login_attempts_per_minute = 30);
    let mut setup = t.client().await;
    setup.register(&identity("alice", 0)).await.unwrap();
    let mut flood = t.client().await;
    let mut codes = Vec::new();
    for _ in 0..40 {
        match flood
            .request(&Request::Login {
                username: "alice".into(),
            })
            .await
        {
            Ok(ServerMsg::Challenge { .. }) => codes.push(None),
            Err(e) => codes.push(e.code()),
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 30);
    assert!(codes[30..]
        .iter()
        .all(|c| *c == Some(ErrorCode::RateLimited)));
    // Thousands of other connections doing the same do not stop a real login.
    let mut floods = Vec::new();
    for _ in 0..20 {
        let mut c = t.client().await;
        for i in 0..30 {
            c.send_raw(
                Request::Login {
                    username: "alice".into(),
                }
                .encode(Some(i)),
            )
            .await
            .unwrap();
        }
        floods.push(c);
    }
    let mut alice = t.login("alice", 0).await;
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn too_many_connections_for_one_user() {
    let t = TestServer::with(|s| s.limits.max_connections_per_user = 2);
    let _a1 = t.user("alice", 0).await;
    let _a2 = t.login("alice", 0).await;
    let mut a3 = t.client().await;
    assert_code(
        a3.login(&identity("alice", 0)).await,
        ErrorCode::RateLimited,
    );
    assert_code(a3.list_rooms(None, None).await, ErrorCode::NotLoggedIn);
    drop(_a2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a4 = t.login("alice", 0).await;
    still_serves(&mut a4).await;
    t.stop().await;
}

#[tokio::test]
async fn too_many_connections_in_all_get_503() {
    let t = TestServer::with(|s| s.limits.max_connections = 3);
    let _c: Vec<Client> = vec![t.client().await, t.client().await, t.client().await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = Client::connect(&t.url())
        .await
        .err()
        .expect("the fourth is refused");
    assert!(err.to_string().contains("503"), "{err}");
    t.stop().await;
}

#[tokio::test]
async fn huge_keys_map_is_stale_members_or_too_large() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Keys", None, false).await.unwrap();
    let me = identity("alice", 0);
    let mut body = seal_message(
        &me.keys,
        &room.room_id,
        "hi",
        &[("alice".into(), me.keys.enc_der.clone())],
    )
    .unwrap();
    for i in 0..500 {
        body.keys
            .insert(format!("u{i:05}"), ByteBuf::from(vec![0u8; 4]));
    }
    assert_code(
        alice.request(&Request::Send(body.clone())).await,
        ErrorCode::StaleMembers,
    );
    for i in 500..30_000 {
        body.keys
            .insert(format!("u{i:05}"), ByteBuf::from(vec![0u8; 4]));
    }
    // Far more keys than a room can have members: refused as too large
    // before it is decoded.
    assert_code(
        alice.request(&Request::Send(body.clone())).await,
        ErrorCode::TooLarge,
    );
    // Over the frame limit: closed with 1009.
    for i in 0..5_000 {
        body.keys
            .insert(format!("v{i:05}"), ByteBuf::from(vec![0u8; 256]));
    }
    let mut big = t.login("alice", 0).await;
    big.send_raw(Request::Send(body).encode(Some(1)))
        .await
        .unwrap();
    let (_, end) = common::read_until_closed(&mut big).await;
    assert!(end.contains("1009"), "{end}");
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn msg_id_collisions_across_rooms_and_senders_are_separate_messages() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (a, _) = alice.create_room("Room A", None, false).await.unwrap();
    let (b, _) = alice.create_room("Room B", None, false).await.unwrap();
    bob.join_room(&a.room_id, None).await.unwrap();
    let fixed = |mut body: e2ee_chat::protocol::SendBody, signer: &e2ee_chat::crypto::KeyPair| {
        body.msg_id = ByteBuf::from(vec![0x42; 16]);
        body.signature = ByteBuf::from(signer.sign(&body.signature_input()));
        body
    };
    let alice_k = identity("alice", 0).keys;
    let bob_k = identity("bob", 1).keys;
    let in_a = fixed(
        seal_message(
            &alice_k,
            &a.room_id,
            "a1",
            &recipients(&[("alice", 0), ("bob", 1)]),
        )
        .unwrap(),
        &alice_k,
    );
    let in_b = fixed(
        seal_message(&alice_k, &b.room_id, "b1", &recipients(&[("alice", 0)])).unwrap(),
        &alice_k,
    );
    let by_bob = fixed(
        seal_message(
            &bob_k,
            &a.room_id,
            "a2",
            &recipients(&[("alice", 0), ("bob", 1)]),
        )
        .unwrap(),
        &bob_k,
    );
    let seq = |m: ServerMsg| match m {
        ServerMsg::Sent { seq, .. } => seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        seq(alice.request(&Request::Send(in_a.clone())).await.unwrap()),
        1
    );
    assert_eq!(seq(alice.request(&Request::Send(in_b)).await.unwrap()), 1);
    assert_eq!(seq(bob.request(&Request::Send(by_bob)).await.unwrap()), 2);
    assert_eq!(
        seq(alice.request(&Request::Send(in_a)).await.unwrap()),
        1,
        "a resend is still the original"
    );
    let (msgs, _) = bob.history(&a.room_id, None, None, None).await.unwrap();
    assert_eq!(msgs.len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn unicode_tricks_in_names() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    // Case folding: É/é and the Kelvin sign (U+212A) fold onto plain letters.
    alice.create_room("Café", None, false).await.unwrap();
    assert_code(
        alice.create_room("CAFÉ", None, false).await,
        ErrorCode::RoomExists,
    );
    alice.create_room("kitchen", None, false).await.unwrap();
    assert_code(
        alice.create_room("\u{212A}itchen", None, false).await,
        ErrorCode::RoomExists,
    );
    // Direction marks, zero-width and control characters are not name characters.
    for bad in [
        "evil\u{202e}txt",
        "zero\u{200b}width",
        "nul\0",
        "tab\there",
        "new\nline",
    ] {
        assert_code(
            alice.create_room(bad, None, false).await,
            ErrorCode::InvalidRoomName,
        );
    }
    // Usernames: ASCII only; look-alikes (Cyrillic а) and NUL are refused.
    let mut c = t.client().await;
    for bad in ["\u{430}lice", "al\0ce", "ALICE", "alice\u{202e}"] {
        let mut id = identity("x", 1);
        id.username = bad.into();
        assert_code(c.register(&id).await, ErrorCode::InvalidUsername);
    }
    let (rooms, total, _) = alice.list_rooms(None, None).await.unwrap();
    assert_eq!(total, 2, "{rooms:?}");
    t.stop().await;
}

/// A ping padded with an unknown field to about `bytes` bytes.
fn padded_ping(bytes: usize) -> Vec<u8> {
    let value = ciborium::Value::Map(vec![
        ("type".into(), "ping".into()),
        ("id".into(), 77.into()),
        ("pad".into(), ciborium::Value::Bytes(vec![0; bytes])),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&value, &mut out).unwrap();
    out
}

#[tokio::test]
async fn anonymous_connections_get_small_frames_and_a_deadline() {
    let t = TestServer::with(|s| {
        s.limits.login_deadline_secs = 1;
        s.limits.login_frame_bytes = 4096;
    });
    // Never logs in: closed with 1008 after the deadline.
    let mut idle = t.client().await;
    let started = std::time::Instant::now();
    let (_, end) = common::read_until_closed(&mut idle).await;
    assert!(end.contains("1008"), "{end}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A 16 KiB frame before login: closed with 1009, without decoding it.
    let mut big = t.client().await;
    big.send_raw(padded_ping(16 * 1024)).await.unwrap();
    let (_, end) = common::read_until_closed(&mut big).await;
    assert!(end.contains("1009"), "{end}");
    // Logged in: the same frame is fine, and the deadline does not apply.
    let mut alice = t.user("alice", 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.send_raw(padded_ping(16 * 1024)).await.unwrap();
    let pong = alice
        .wait_for(|m| matches!(m, ServerMsg::Pong { id: Some(77), .. }))
        .await;
    assert!(pong.is_ok(), "{pong:?}");
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn password_hashing_is_bounded_and_a_full_queue_answers_rate_limited() {
    let t = TestServer::with(|s| {
        s.limits.password_hashes = 1;
        s.limits.password_queue = 1;
        s.limits.password_attempts_per_minute = 1000;
    });
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice
        .create_room("Vault", Some("right"), false)
        .await
        .unwrap();
    // Eight users guess at once: one hash runs, one waits, the rest are
    // refused at once.
    let mut guessers = Vec::new();
    for i in 0..8 {
        guessers.push(t.user(&format!("guesser-{i}"), 1 + i % 3).await);
    }
    for (i, g) in guessers.iter_mut().enumerate() {
        let req = Request::JoinRoom {
            room_id: room.room_id.clone(),
            password: Some(format!("guess-{i}")),
        };
        g.send_raw(req.encode(Some(100))).await.unwrap();
    }
    let (mut wrong, mut busy) = (0, 0);
    for g in guessers.iter_mut() {
        loop {
            if let ServerMsg::Error {
                id: Some(_), code, ..
            } = g.read().await.unwrap()
            {
                match code {
                    ErrorCode::WrongPassword => wrong += 1,
                    ErrorCode::RateLimited => busy += 1,
                    other => panic!("unexpected {other:?}"),
                }
                break;
            }
        }
    }
    assert!(busy > 0 && wrong >= 2, "wrong {wrong}, busy {busy}");
    // One user's pipelined guesses: one is checked at a time, the others
    // are refused without counting, so the right password still works.
    let mut bob = t.user("bob", 1).await;
    for i in 0..20u64 {
        let req = Request::JoinRoom {
            room_id: room.room_id.clone(),
            password: Some(format!("guess-{i}")),
        };
        bob.send_raw(req.encode(Some(100 + i))).await.unwrap();
    }
    let mut answered = 0;
    while answered < 20 {
        if let ServerMsg::Error { id: Some(_), .. } = bob.read().await.unwrap() {
            answered += 1;
        }
    }
    bob.join_room(&room.room_id, Some("right")).await.unwrap();
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn history_pages_are_capped_in_bytes_and_page_on() {
    let t = TestServer::with(|s| s.limits.history_page_bytes = 100_000);
    let (mut alice, _bob, rid) = t.pair("Big").await;
    let text = "y".repeat(30_000);
    for _ in 0..10 {
        alice.send_text(&rid, &text).await.unwrap();
    }
    // The latest page stops before the byte cap, next to the cursor...
    let (page, more) = alice.history(&rid, None, None, Some(50)).await.unwrap();
    assert!(
        more && (1..10).contains(&page.len()),
        "{} {more}",
        page.len()
    );
    assert_eq!(page.last().unwrap().seq, 10);
    // ...and paging backwards reaches everything, each page capped.
    let mut seen = page.len();
    let mut cursor = page[0].seq;
    while seen < 10 {
        let (page, _) = alice
            .history(&rid, None, Some(cursor), Some(50))
            .await
            .unwrap();
        assert!(!page.is_empty() && page.len() < 10);
        seen += page.len();
        cursor = page[0].seq;
    }
    assert_eq!(cursor, 1);
    // Catch-up forward is capped the same way.
    let (page, more) = alice.history(&rid, Some(0), None, Some(50)).await.unwrap();
    assert!(more && page[0].seq == 1 && page.len() < 10);
    t.stop().await;
}

#[tokio::test]
async fn a_frame_of_many_tiny_items_is_refused_before_decoding() {
    let t = TestServer::new();
    let mut mallory = t.user("mallory", 2).await;
    let mut alice = t.user("alice", 0).await;
    // ~1 MiB of one-byte integers: 250k items, scanned and refused.
    let items = ciborium::Value::Array(vec![ciborium::Value::Integer(0.into()); 250_000]);
    let frame = {
        let mut out = Vec::new();
        let value = ciborium::Value::Map(vec![
            ("type".into(), "ping".into()),
            ("id".into(), 9.into()),
            ("pad".into(), items),
        ]);
        ciborium::into_writer(&value, &mut out).unwrap();
        out
    };
    for _ in 0..20 {
        mallory.send_raw(frame.clone()).await.unwrap();
    }
    for _ in 0..20 {
        let msg = mallory.read().await.unwrap();
        assert_eq!(msg.reply_id(), Some(9));
        assert_eq!(common::code_of(&msg), ErrorCode::TooLarge);
    }
    still_serves(&mut alice).await;
    still_serves(&mut mallory).await;
    t.stop().await;
}

#[tokio::test]
async fn queued_bytes_are_capped_for_a_client_that_never_reads() {
    // 16 frames would fit the frame cap; 1 MiB of bytes does not.
    let t = TestServer::with(|s| {
        s.limits.send_queue_bytes = 1 << 20;
        // Neither the kernel nor the heartbeat may be what drops carol; the
        // heartbeat tick only lets the session notice its overflow.
        s.limits.tcp_user_timeout_secs = 0;
        s.heartbeat.interval_secs = 1;
        s.heartbeat.timeout_secs = 600;
    });
    let (mut alice, _bob, rid) = t.pair("Bytes").await;
    let mut sloth = t.user("carol", 2).await;
    sloth.join_room(&rid, None).await.unwrap();
    alice.get_members(&rid).await.unwrap();
    // Enough to fill carol's socket buffers and then her 1 MiB budget.
    let text = "z".repeat(60_000);
    for _ in 0..400 {
        alice.send_text(&rid, &text).await.unwrap();
    }
    sloth.timeout = Duration::from_secs(20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, end) = common::read_until_closed(&mut sloth).await;
    assert!(seen < 400, "carol received all {seen}");
    assert!(
        end.contains("1008") || end.contains("reset") || end.contains("closed"),
        "{end}"
    );
    still_serves(&mut alice).await;
    t.stop().await;
}

#[tokio::test]
async fn connections_and_registrations_are_limited_per_address() {
    let t = TestServer::with(|s| {
        s.limits.max_connections_per_ip = 3;
        s.limits.registrations_per_ip_per_hour = 2;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    });
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let url = t.url();
    // Three connections from 203.0.113.7 (as the trusted proxy says); the
    // fourth is refused with 429, while another address still gets in.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            Client::connect_with_headers(&url, &from("203.0.113.7"))
                .await
                .unwrap(),
        );
    }
    let err = Client::connect_with_headers(&url, &from("203.0.113.7"))
        .await
        .err()
        .expect("a fourth connection from one address is refused");
    assert!(err.to_string().contains("429"), "{err}");
    // A client's own claim to the left of the proxy's entry is ignored.
    let err = Client::connect_with_headers(&url, &from("198.51.100.1, 203.0.113.7"))
        .await
        .err()
        .expect("spoofed left entries do not help");
    assert!(err.to_string().contains("429"), "{err}");
    // ... also when it comes as a header line of its own before the line
    // the proxy added (issue 20 item 14), and with a port on the entry.
    for lines in [
        [
            ("X-Forwarded-For", "198.51.100.2"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
        [
            ("X-Forwarded-For", "198.51.100.2"),
            ("X-Forwarded-For", "203.0.113.7:4711"),
        ],
    ] {
        let err = Client::connect_with_headers(&url, &lines)
            .await
            .err()
            .expect("a first header line of the client's own does not help");
        assert!(err.to_string().contains("429"), "{err}");
    }
    let mut other = Client::connect_with_headers(&url, &from("198.51.100.1"))
        .await
        .unwrap();
    // Closing one gives its place back.
    held.pop().unwrap().close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Client::connect_with_headers(&url, &from("203.0.113.7"))
        .await
        .unwrap();
    // Two registrations per hour from one address, then rate_limited.
    again.register(&identity("reg-one", 0)).await.unwrap();
    again.register(&identity("reg-two", 1)).await.unwrap();
    assert_code(
        again.register(&identity("reg-three", 2)).await,
        ErrorCode::RateLimited,
    );
    other.register(&identity("reg-four", 3)).await.unwrap();
    still_serves(&mut other).await;
    t.stop().await;
}

/// Sends a message as `parts` fragments of `size` bytes each, then reads
/// until the server closes; answers the close frame's text.
async fn fragments(mut ws: e2ee_chat::client::Ws, parts: usize, size: usize) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    for i in 0..parts {
        let op = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
        let frame = Frame::message(vec![0xa0u8; size], op, i + 1 == parts);
        if ws.send(WsMessage::Frame(frame)).await.is_err() {
            break;
        }
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(WsMessage::Close(c)))) => return format!("closed {c:?}"),
            Ok(Some(Ok(other))) => {
                if let WsMessage::Binary(b) = &other {
                    if let Ok(ServerMsg::Error { code, .. }) = ServerMsg::decode(b) {
                        return format!("error {code:?}");
                    }
                }
            }
            Ok(Some(Err(e))) => return format!("broken {e}"),
            Ok(None) => return "ended".into(),
            Err(_) => return "nothing".into(),
        }
    }
}

/// Issue 20 item 11: fragments of a message passed the 8 KiB cap before
/// login (each fragment was checked alone), and their sum was never checked.
#[tokio::test]
async fn fragmented_messages_count_against_the_frame_limits() {
    let t = TestServer::with(|s| {
        s.limits.login_frame_bytes = 4096;
        s.limits.max_frame_bytes = 64 * 1024;
    });
    // Before login no fragments at all, however small.
    let end = fragments(t.client().await.into_ws(), 3, 1024).await;
    assert!(end.contains("Size"), "{end}");
    // Logged in: fragments that add up past max_frame_bytes close with 1009,
    let alice = t.user("alice", 0).await;
    let end = fragments(alice.into_ws(), 20, 16 * 1024).await;
    assert!(end.contains("Size"), "{end}");
    // and a small fragmented message is answered malformed, not served.
    let mut bob = t.user("bob", 1).await;
    let end = fragments(t.user("carol", 2).await.into_ws(), 3, 1024).await;
    assert!(end.contains("Malformed"), "{end}");
    still_serves(&mut bob).await;
    t.stop().await;
}

/// Issue 20 item 8: pipelined `history` requests of one connection filled
/// the store's read pool; now a connection has `history_in_flight` at most,
/// the rest answer `rate_limited` at once, and every request is answered.
#[tokio::test]
async fn history_reads_in_flight_are_bounded_per_connection() {
    let t = TestServer::with(|s| s.limits.history_in_flight = 2);
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Archive", None, false).await.unwrap();
    let rid = room.room_id;
    for i in 0..5 {
        alice.send_text(&rid, &format!("m{i}")).await.unwrap();
    }
    let n = 40u64;
    for i in 0..n {
        let req = Request::History {
            room_id: rid.clone(),
            after_seq: None,
            before_seq: None,
            limit: Some(500),
        };
        alice.send_raw(req.encode(Some(500 + i))).await.unwrap();
    }
    let (mut pages, mut limited) = (0, 0);
    while pages + limited < n {
        match alice.read().await.unwrap() {
            ServerMsg::History { id: Some(_), .. } => pages += 1,
            ServerMsg::Error {
                id: Some(_),
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            _ => {}
        }
    }
    assert!(
        pages >= 2 && limited >= 1,
        "{pages} pages, {limited} limited"
    );
    // The slots come back: a later request is served.
    let (msgs, _) = alice.history(&rid, None, None, None).await.unwrap();
    assert_eq!(msgs.len(), 5);
    still_serves(&mut alice).await;
    t.stop().await;
}

/// Issue 20 item 12: room actors never stopped, and any logged-in user could
/// start one per listed room. Rooms no member here uses stop after
/// `room_idle_secs`, and start again from the store on the next use.
#[tokio::test]
async fn idle_rooms_stop_and_start_again_on_use() {
    let t = TestServer::with(|s| {
        s.limits.room_idle_secs = 1;
        s.server.metrics_token = "m".into();
    });
    let running = || async {
        let m = common::http_get_with(&t.http("/metrics"), "Authorization: Bearer m\r\n").await;
        m.lines()
            .find_map(|l| l.strip_prefix("chat_rooms_running "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("the gauge")
    };
    let wait_for = |want: u64| async move {
        for _ in 0..100 {
            if running().await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("rooms running never became {want} (is {})", running().await);
    };
    let mut alice = t.user("alice", 0).await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let (room, _) = alice
            .create_room(&format!("Quiet {i}"), None, false)
            .await
            .unwrap();
        alice.send_text(&room.room_id, "before").await.unwrap();
        rooms.push(room.room_id);
    }
    // A member online keeps them running.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(running().await, 5);
    drop(alice);
    wait_for(0).await;
    // A stranger's requests (a join attempt, history) start a room, which
    // stops again.
    let mut bob = t.user("bob", 1).await;
    assert_code(
        bob.history(&rooms[0], None, None, None).await,
        ErrorCode::NotMember,
    );
    wait_for(0).await;
    // The member comes back: everything is there, and the room works.
    let mut alice = t.login("alice", 0).await;
    for rid in &rooms {
        let (msgs, _) = alice.history(rid, None, None, None).await.unwrap();
        assert_eq!(msgs.len(), 1);
    }
    bob.join_room(&rooms[0], None).await.unwrap();
    alice.send_text(&rooms[0], "after").await.unwrap();
    assert_eq!(bob.next_message(&rooms[0]).await.unwrap().text, "after");
    assert_eq!(running().await, 5);
    t.stop().await;
}

/// Issue 20 item 16: `create_room` with a hidden room's name answered
/// `room_exists`, so anyone could probe hidden rooms' names. Hidden rooms'
/// names are not unique keys any more; listed rooms' names still are.
#[tokio::test]
async fn hidden_room_names_cannot_be_probed() {
    let t = TestServer::new();
    let mut alice = t.user("alice", 0).await;
    let (secret, _) = alice.create_room("Merger Talks", None, true).await.unwrap();
    let (public, _) = alice.create_room("Lobby", None, false).await.unwrap();
    let mut mallory = t.user("mallory", 1).await;
    // Probing the hidden name tells nothing: the room is created.
    let (mine, _) = mallory
        .create_room("merger talks", None, false)
        .await
        .unwrap();
    assert_ne!(mine.room_id, secret.room_id);
    let (other_hidden, _) = mallory
        .create_room("MERGER TALKS", None, true)
        .await
        .unwrap();
    // A listed room's name is still taken, whatever the case, for rooms
    // listed or hidden...
    assert_code(
        mallory.create_room("merger TALKS", None, false).await,
        ErrorCode::RoomExists,
    );
    assert_code(
        mallory.create_room("lobby", None, false).await,
        ErrorCode::RoomExists,
    );
    // ...and a hidden room may be renamed to a hidden room's name.
    let rename = Request::RenameRoom {
        room_id: other_hidden.room_id.clone(),
        name: "Merger Talks".into(),
    };
    mallory.request_ok(&rename).await.unwrap();
    let rename = Request::RenameRoom {
        room_id: public.room_id.clone(),
        name: "Merger talks".into(),
    };
    assert_code(alice.request_ok(&rename).await, ErrorCode::RoomExists);
    // After a restart the same holds (the name keys are stored).
    drop((alice, mallory));
    let mut t = t;
    t.restart().await;
    let mut eve = t.user("eve", 2).await;
    assert_code(
        eve.create_room("Merger Talks", None, false).await,
        ErrorCode::RoomExists,
    );
    eve.create_room("Merger Talks", None, true).await.unwrap();
    t.stop().await;
}

/// Issue 20 item 7: every join or leave makes every other process re-read
/// the room (now coalesced while one read is in flight); a join/leave loop
/// is also limited per user.
#[tokio::test]
async fn join_leave_churn_is_limited_per_user() {
    let t = TestServer::with(|s| s.limits.membership_changes_per_minute = 10);
    let mut alice = t.user("alice", 0).await;
    let (room, _) = alice.create_room("Revolving", None, false).await.unwrap();
    let mut mallory = t.user("mallory", 1).await;
    let mut refused = None;
    for i in 0..20 {
        let r = if i % 2 == 0 {
            mallory.join_room(&room.room_id, None).await.map(|_| ())
        } else {
            mallory.leave_room(&room.room_id).await
        };
        if let Err(e) = r {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.expect("the loop was never refused");
    assert_eq!(at, 10, "{e}");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    // Others are not affected.
    let mut bob = t.user("bob", 2).await;
    bob.join_room(&room.room_id, None).await.unwrap();
    still_serves(&mut alice).await;
    t.stop().await;
}
