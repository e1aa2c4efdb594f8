//! The frame-level errors on protocol v3 (as `tests/errors.rs` on version
//! 2): malformed frames, unknown types and unknown keys, the per-connection
//! rate limit closing a flood with 1008, and an oversized frame closing with
//! 1009, each while the connection (or the others) goes on being served.
//! The v3 request errors are in `v3_accounts.rs` and `v3_rooms.rs`.

mod common;

use ciborium::Value;
use common::cbor::map;
use common::phone3::{refusal, v3_server_with};
use common::TestServer;
use e2ee_chat::client::v3::Client3;
use e2ee_chat::client::ClientError;
use e2ee_chat::protocol::v3::{Request3, ServerMsg3};
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};

async fn connect(t: &TestServer) -> Client3 {
    Client3::connect(&t.url()).await.expect("connects")
}

/// A ping gets its pong.
async fn still_serves(c: &mut Client3) {
    let pong = c.request(&Request3::Shared(Request::Ping)).await.unwrap();
    assert!(
        matches!(pong, ServerMsg3::Shared(ServerMsg::Pong { .. })),
        "{pong:?}"
    );
}

/// Reads until the server closes: the close frame's code and reason.
async fn read_until_closed(c: &mut Client3) -> String {
    loop {
        match c.read().await {
            Ok(_) => continue,
            Err(ClientError::Closed(reason)) => return reason.unwrap_or_default(),
            Err(e) => return e.to_string(),
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_malformed_and_the_connection_stays() {
    let t = v3_server_with(|_| {});
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
    let t = v3_server_with(|_| {});
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
        ServerMsg3::Shared(ServerMsg::Pong { id: Some(9), .. })
    ));
    t.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_with_1008_while_others_are_served() {
    let t = v3_server_with(|s| {
        s.rate_limit.per_second = 1.0;
        s.rate_limit.burst = 5.0;
        s.rate_limit.close_after = 20;
    });
    let mut flooder = connect(&t).await;
    let mut polite = connect(&t).await;
    let ping = Request3::Shared(Request::Ping);
    for i in 0..10 {
        flooder.send_raw(ping.encode(Some(i))).await.unwrap();
    }
    let mut limited = 0;
    for _ in 0..10 {
        match flooder.read().await.unwrap() {
            ServerMsg3::Shared(ServerMsg::Pong { .. }) => {}
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
    let t = v3_server_with(|s| s.limits.max_frame_bytes = 4096);
    let mut big = connect(&t).await;
    let mut polite = connect(&t).await;
    big.send_raw(vec![0xa0; 10_000]).await.unwrap();
    let closed = read_until_closed(&mut big).await;
    assert!(closed.contains("1009"), "{closed}");
    still_serves(&mut polite).await;
    t.stop().await;
}
