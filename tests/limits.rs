//! The server's limits against hostile clients, over real sockets: each
//! gets the specified error or close code, and a well-behaved client is
//! served throughout. Per connection (handshakes, anonymous connections,
//! frame items, fragments, history reads), per user (connections, password
//! guesses, join/leave churn), per address (connections, registrations)
//! and in all (connections); names that look alike; hidden room names.

mod common;

use std::time::Duration;

use common::phone::{err_code, identity, read_until_closed, still_serves, Phone};
use common::TestServer;
use e2ee_chat::client::conn::Conn;
use e2ee_chat::client::Ws;
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn half_open_handshakes_are_dropped_and_others_served() {
    let t = TestServer::with(|s| s.limits.handshake_timeout_secs = 1);
    let addr = t.server.as_ref().unwrap().addr;
    let mut polite = Phone::register(&t.url(), "alice", 0).await;
    // 50 connections that never finish the HTTP upgrade.
    let mut half = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        half.push(s);
    }
    still_serves(&mut polite.c).await;
    // Each is closed by the server after the handshake timeout.
    for mut s in half {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a half-open connection");
    }
    still_serves(&mut polite.c).await;
    t.stop().await;
}

#[tokio::test]
async fn too_many_connections_for_one_user() {
    let t = TestServer::with(|s| s.limits.max_connections_per_user = 2);
    let url = t.url();
    let alice = Phone::register(&url, "alice", 0).await;
    let second = alice.second_connection(&url).await;
    let mut third = Conn::connect(&url).await.unwrap();
    assert_eq!(
        err_code(third.login(&alice.id, &alice.dev.certificate).await),
        ErrorCode::RateLimited
    );
    // Still logged out.
    assert_eq!(
        err_code(
            third
                .request(&Request::Shared(PlainRequest::ListRooms {
                    offset: None,
                    limit: None
                }))
                .await
        ),
        ErrorCode::NotLoggedIn
    );
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = alice.second_connection(&url).await;
    still_serves(&mut again).await;
    t.stop().await;
}

#[tokio::test]
async fn too_many_connections_in_all_get_503() {
    let t = TestServer::with(|s| s.limits.max_connections = 3);
    let url = t.url();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Conn::connect(&url).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = Conn::connect(&url)
        .await
        .err()
        .expect("the fourth is refused");
    assert!(err.to_string().contains("503"), "{err}");
    t.stop().await;
}

/// The same msg_id in two rooms, or from two devices, is another message;
/// from one device in one room, a resend.
#[tokio::test]
async fn msg_id_collisions_across_rooms_and_devices_are_separate_messages() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut other = Phone::login(&url, alice.id.clone()).await;
    other.create("Room B").await;
    alice.create("Room A").await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&alice.room.clone()).await;
    bob.enter().await;
    alice.catch_up_to(bob.applied).await;
    let fixed = [0x42; 16];
    let seq = |m: ServerMsg| match m {
        ServerMsg::Shared(PlainMsg::Sent { seq, .. }) => seq,
        other => panic!("{other:?}"),
    };
    let a1 = alice.encrypt("a1");
    assert_eq!(seq(alice.send_raw(fixed, a1.clone()).await), 2);
    let b1 = other.encrypt("b1");
    assert_eq!(seq(other.send_raw(fixed, b1).await), 1);
    let by_bob = bob.encrypt("a2");
    assert_eq!(seq(bob.send_raw(fixed, by_bob).await), 3);
    assert_eq!(
        seq(alice.send_raw(fixed, a1).await),
        2,
        "a resend is still the original"
    );
    bob.catch_up_to(3).await;
    let (entries, _) = bob.history_page(Some(0), None, None).await;
    assert_eq!(entries.len(), 3, "the external commit and two messages");
    t.stop().await;
}

#[tokio::test]
async fn unicode_tricks_in_names() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    // Case folding: É/é and the Kelvin sign (U+212A) fold onto plain letters.
    alice.create_with("Café", None, false).await.unwrap();
    assert_eq!(
        err_code(alice.create_with("CAFÉ", None, false).await),
        ErrorCode::RoomExists
    );
    alice.create_with("kitchen", None, false).await.unwrap();
    assert_eq!(
        err_code(alice.create_with("\u{212A}itchen", None, false).await),
        ErrorCode::RoomExists
    );
    // Direction marks, zero-width and control characters are not name characters.
    for bad in [
        "evil\u{202e}txt",
        "zero\u{200b}width",
        "nul\0",
        "tab\there",
        "new\nline",
    ] {
        assert_eq!(
            err_code(alice.create_with(bad, None, false).await),
            ErrorCode::InvalidRoomName
        );
    }
    // Usernames: ASCII only; look-alikes (Cyrillic а) and NUL are refused.
    let mut c = Conn::connect(&url).await.unwrap();
    for bad in ["\u{430}lice", "al\0ce", "ALICE", "alice\u{202e}"] {
        let id = identity(bad, 1);
        assert_eq!(err_code(c.register(&id).await), ErrorCode::InvalidUsername);
    }
    let (rooms, total, _) = alice.rooms(None, None).await;
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
    let url = t.url();
    // Never logs in: closed with 1008 after the deadline.
    let mut idle = Conn::connect(&url).await.unwrap();
    let started = std::time::Instant::now();
    let end = read_until_closed(&mut idle).await;
    assert!(end.contains("1008"), "{end}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A 16 KiB frame before login: closed with 1009, without decoding it.
    let mut big = Conn::connect(&url).await.unwrap();
    big.send_raw(padded_ping(16 * 1024)).await.unwrap();
    let end = read_until_closed(&mut big).await;
    assert!(end.contains("1009"), "{end}");
    // Logged in: the same frame is fine, and the deadline does not apply.
    let mut alice = Phone::register(&url, "alice", 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.c.send_raw(padded_ping(16 * 1024)).await.unwrap();
    loop {
        if let ServerMsg::Shared(PlainMsg::Pong { id: Some(77), .. }) =
            alice.c.read().await.unwrap()
        {
            break;
        }
    }
    still_serves(&mut alice.c).await;
    t.stop().await;
}

/// The id and code of the next `error` reply.
async fn next_error(c: &mut Conn) -> (u64, ErrorCode) {
    loop {
        if let ServerMsg::Error {
            id: Some(id), code, ..
        } = c.read().await.unwrap()
        {
            return (id, code);
        }
    }
}

#[tokio::test]
async fn password_hashing_is_bounded_and_a_full_queue_answers_rate_limited() {
    let t = TestServer::with(|s| {
        s.limits.password_hashes = 1;
        s.limits.password_queue = 1;
        s.limits.password_attempts_per_minute = 1000;
    });
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let room = alice
        .create_with("Vault", Some("right"), false)
        .await
        .unwrap();
    // Eight users guess at once: one hash runs, one waits, the rest are
    // refused at once.
    let mut guessers = Vec::new();
    for i in 0..8 {
        guessers.push(Phone::register(&url, &format!("guesser-{i}"), 1 + i % 3).await);
    }
    for (i, g) in guessers.iter_mut().enumerate() {
        let req = Request::Shared(PlainRequest::JoinRoom {
            room_id: room.room_id.clone(),
            password: Some(format!("guess-{i}")),
        });
        g.c.send_raw(req.encode(Some(100))).await.unwrap();
    }
    let (mut wrong, mut busy) = (0, 0);
    for g in guessers.iter_mut() {
        match next_error(&mut g.c).await.1 {
            ErrorCode::WrongPassword => wrong += 1,
            ErrorCode::RateLimited => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy > 0 && wrong >= 2, "wrong {wrong}, busy {busy}");
    // One user's pipelined guesses: one is checked at a time, the others
    // are refused without counting, so the right password still works.
    let mut bob = Phone::register(&url, "bob", 1).await;
    for i in 0..20u64 {
        let req = Request::Shared(PlainRequest::JoinRoom {
            room_id: room.room_id.clone(),
            password: Some(format!("guess-{i}")),
        });
        bob.c.send_raw(req.encode(Some(100 + i))).await.unwrap();
    }
    for _ in 0..20 {
        next_error(&mut bob.c).await;
    }
    bob.join(&room.room_id, Some("right")).await.unwrap();
    still_serves(&mut alice.c).await;
    t.stop().await;
}

#[tokio::test]
async fn a_frame_of_many_tiny_items_is_refused_before_decoding() {
    let t = TestServer::new();
    let url = t.url();
    let mut mallory = Phone::register(&url, "mallory", 2).await;
    let mut alice = Phone::register(&url, "alice", 0).await;
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
        mallory.c.send_raw(frame.clone()).await.unwrap();
    }
    for _ in 0..20 {
        assert_eq!(next_error(&mut mallory.c).await, (9, ErrorCode::TooLarge));
    }
    still_serves(&mut alice.c).await;
    still_serves(&mut mallory.c).await;
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
            Conn::connect_with_headers(&url, &from("203.0.113.7"))
                .await
                .unwrap(),
        );
    }
    let err = Conn::connect_with_headers(&url, &from("203.0.113.7"))
        .await
        .err()
        .expect("a fourth connection from one address is refused");
    assert!(err.to_string().contains("429"), "{err}");
    // A client's own claim to the left of the proxy's entry is ignored.
    let err = Conn::connect_with_headers(&url, &from("198.51.100.1, 203.0.113.7"))
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
        let err = Conn::connect_with_headers(&url, &lines)
            .await
            .err()
            .expect("a first header line of the client's own does not help");
        assert!(err.to_string().contains("429"), "{err}");
    }
    let mut other = Conn::connect_with_headers(&url, &from("198.51.100.1"))
        .await
        .unwrap();
    // Closing one gives its place back.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Conn::connect_with_headers(&url, &from("203.0.113.7"))
        .await
        .unwrap();
    // Two registrations per hour from one address, then rate_limited.
    again.register(&identity("reg-one", 0)).await.unwrap();
    again.register(&identity("reg-two", 1)).await.unwrap();
    assert_eq!(
        err_code(again.register(&identity("reg-three", 2)).await),
        ErrorCode::RateLimited
    );
    other.register(&identity("reg-four", 3)).await.unwrap();
    still_serves(&mut other).await;
    t.stop().await;
}

/// Sends a message as `parts` fragments of `size` bytes each, then reads
/// until the server closes; answers the close frame's text.
async fn fragments(mut ws: Ws, parts: usize, size: usize) -> String {
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
    let url = t.url();
    // Before login no fragments at all, however small.
    let end = fragments(Conn::connect(&url).await.unwrap().into_ws(), 3, 1024).await;
    assert!(end.contains("Size"), "{end}");
    // Logged in: fragments that add up past max_frame_bytes close with 1009,
    let alice = Phone::register(&url, "alice", 0).await;
    let end = fragments(alice.c.into_ws(), 20, 16 * 1024).await;
    assert!(end.contains("Size"), "{end}");
    // and a small fragmented message is answered malformed, not served.
    let mut bob = Phone::register(&url, "bob", 1).await;
    let carol = Phone::register(&url, "carol", 2).await;
    let end = fragments(carol.c.into_ws(), 3, 1024).await;
    assert!(end.contains("Malformed"), "{end}");
    still_serves(&mut bob.c).await;
    t.stop().await;
}

/// Issue 20 item 8: pipelined `history` requests of one connection filled
/// the store's read pool; now a connection has `history_in_flight` at most,
/// the rest answer `rate_limited` at once, and every request is answered.
#[tokio::test]
async fn history_reads_in_flight_are_bounded_per_connection() {
    let t = TestServer::with(|s| s.limits.history_in_flight = 2);
    let mut alice = Phone::register(&t.url(), "alice", 0).await;
    alice.create("Archive").await;
    for i in 0..5 {
        alice.say(&format!("m{i}")).await;
    }
    let n = 40u64;
    for i in 0..n {
        let req = Request::Shared(PlainRequest::History {
            room_id: alice.room.clone(),
            after_seq: None,
            before_seq: None,
            limit: Some(500),
        });
        alice.c.send_raw(req.encode(Some(500 + i))).await.unwrap();
    }
    let (mut pages, mut limited) = (0, 0);
    while pages + limited < n {
        match alice.c.read().await.unwrap() {
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
    let (entries, _) = alice.history_page(None, None, None).await;
    assert_eq!(entries.len(), 5);
    still_serves(&mut alice.c).await;
    t.stop().await;
}

/// Issue 20 item 16: `create_room` with a hidden room's name answered
/// `room_exists`, so anyone could probe hidden rooms' names. Hidden rooms'
/// names are not unique keys any more; listed rooms' names still are.
#[tokio::test]
async fn hidden_room_names_cannot_be_probed() {
    let mut t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let secret = alice.create_with("Merger Talks", None, true).await.unwrap();
    let public = alice.create_with("Lobby", None, false).await.unwrap();
    let mut mallory = Phone::register(&url, "mallory", 1).await;
    // Probing the hidden name tells nothing: the room is created.
    let mine = mallory
        .create_with("merger talks", None, false)
        .await
        .unwrap();
    assert_ne!(mine.room_id, secret.room_id);
    let other_hidden = mallory
        .create_with("MERGER TALKS", None, true)
        .await
        .unwrap();
    // A listed room's name is still taken, whatever the case, for rooms
    // listed or hidden...
    assert_eq!(
        err_code(mallory.create_with("merger TALKS", None, false).await),
        ErrorCode::RoomExists
    );
    assert_eq!(
        err_code(mallory.create_with("lobby", None, false).await),
        ErrorCode::RoomExists
    );
    // ...and a hidden room may be renamed to a hidden room's name.
    mallory
        .ask(PlainRequest::RenameRoom {
            room_id: other_hidden.room_id.clone(),
            name: "Merger Talks".into(),
        })
        .await
        .unwrap();
    let rename = PlainRequest::RenameRoom {
        room_id: public.room_id.clone(),
        name: "Merger talks".into(),
    };
    assert_eq!(err_code(alice.ask(rename).await), ErrorCode::RoomExists);
    // After a restart the same holds (the name keys are stored).
    drop((alice, mallory));
    t.restart().await;
    let mut eve = Phone::register(&t.url(), "eve", 2).await;
    assert_eq!(
        err_code(eve.create_with("Merger Talks", None, false).await),
        ErrorCode::RoomExists
    );
    eve.create_with("Merger Talks", None, true).await.unwrap();
    t.stop().await;
}

/// Issue 20 item 7: every join or leave makes every other process re-read
/// the room (now coalesced while one read is in flight); a join/leave loop
/// is also limited per user.
#[tokio::test]
async fn join_leave_churn_is_limited_per_user() {
    let t = TestServer::with(|s| s.limits.membership_changes_per_minute = 10);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let room = alice.create_with("Revolving", None, false).await.unwrap();
    let mut mallory = Phone::register(&url, "mallory", 1).await;
    let mut refused = None;
    for i in 0..20 {
        let r = if i % 2 == 0 {
            mallory.join(&room.room_id, None).await.map(|_| ())
        } else {
            mallory
                .ask(PlainRequest::LeaveRoom {
                    room_id: room.room_id.clone(),
                })
                .await
                .map(|_| ())
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
    let mut bob = Phone::register(&url, "bob", 2).await;
    bob.join(&room.room_id, None).await.unwrap();
    still_serves(&mut alice.c).await;
    t.stop().await;
}
