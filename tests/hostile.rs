//! Hostile clients (more in `limits.rs`): a history page is capped in bytes whatever its entries hold
//! (messages up to 64 KiB, commits with their GroupInfo); a member who never
//! reads is dropped once its queued bytes pass the budget, while the room
//! goes on (one encoded `entry` frame is shared by every recipient; the
//! budget still counts it for each); rooms nobody uses stop and start again
//! from the stored group; logins are limited per user and per minute.

mod common;

use std::time::Duration;

use common::phone::Phone;
use common::TestServer;
use e2ee_chat::client::ClientError;
use e2ee_chat::protocol::{ErrorCode, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};

#[tokio::test]
async fn history_pages_are_capped_in_bytes_and_page_on() {
    let t = TestServer::with(|s| s.limits.history_page_bytes = 100_000);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("big").await;
    let text = "y".repeat(30_000);
    let mut last = 0;
    for _ in 0..10 {
        last = alice.say(&text).await;
    }
    assert_eq!(last, 10);
    // The latest page stops before the byte cap, next to the cursor...
    let (entries, more) = alice.history_page(None, None, Some(50)).await;
    assert!(
        more && (1..10).contains(&entries.len()),
        "{} {more}",
        entries.len()
    );
    assert_eq!(entries.last().unwrap().seq, 10);
    // ...and paging backwards reaches everything, each page capped.
    let mut seen = entries.len();
    let mut cursor = entries[0].seq;
    while seen < 10 {
        let (entries, _) = alice.history_page(None, Some(cursor), Some(50)).await;
        assert!(!entries.is_empty() && entries.len() < 10);
        seen += entries.len();
        cursor = entries[0].seq;
    }
    assert_eq!(cursor, 1);
    // Catch-up forward is capped the same way.
    let (entries, more) = alice.history_page(Some(0), None, Some(50)).await;
    assert!(more && entries[0].seq == 1 && entries.len() < 10);
    t.stop().await;
}

#[tokio::test]
async fn a_member_that_never_reads_is_dropped_at_its_byte_budget() {
    let t = TestServer::with(|s| {
        s.limits.send_queue_bytes = 1 << 20;
        // Neither the kernel nor the heartbeat may be what drops the sloth;
        // the heartbeat tick only lets its session notice the overflow.
        s.limits.tcp_user_timeout_secs = 0;
        s.heartbeat.interval_secs = 1;
        s.heartbeat.timeout_secs = 600;
    });
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("bytes").await;
    let room = alice.room.clone();
    let mut sloth = Phone::register(&url, "carol", 2).await;
    sloth.join_room(&room).await;
    // Enough to fill the sloth's socket buffers and then its 1 MiB budget.
    let text = "z".repeat(60_000);
    for _ in 0..300 {
        alice.say(&text).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sloth.c.timeout = Duration::from_secs(20);
    let mut seen = 0;
    let end = loop {
        match sloth.c.read().await {
            Ok(ServerMsg::Entry(_)) => seen += 1,
            Ok(_) => {}
            Err(ClientError::Closed(reason)) => break reason.unwrap_or_default(),
            Err(e) => break e.to_string(),
        }
    };
    assert!(seen < 300, "the sloth received all {seen}");
    assert!(
        end.contains("1008") || end.contains("reset") || end.contains("closed"),
        "{end}"
    );
    // The room goes on.
    alice.say("still here").await;
    t.stop().await;
}

/// The server's `chat_rooms_running` gauge.
async fn running(t: &TestServer) -> u64 {
    let m = common::http_get_with(&t.http("/metrics"), "Authorization: Bearer m\r\n").await;
    m.lines()
        .find_map(|l| l.strip_prefix("chat_rooms_running "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the gauge")
}

async fn rooms_running_become(t: &TestServer, want: u64) {
    for _ in 0..100 {
        if running(t).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "rooms running never became {want} (is {})",
        running(t).await
    );
}

/// An idle room stops; its next use starts it again from the stored
/// group and log, and commits and messages go on from there.
#[tokio::test]
async fn idle_rooms_stop_and_start_again_from_the_stored_group() {
    let t = TestServer::with(|s| {
        s.limits.room_idle_secs = 1;
        s.server.metrics_token = "m".into();
    });
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    alice.create("quiet").await;
    let room = alice.room.clone();
    bob.join_room(&room).await;
    bob.enter().await;
    alice.catch_up_to(bob.entered_at).await;
    let before = alice.say("before").await;
    bob.catch_up_to(before).await;
    let epoch = alice.epoch();
    let (alice_id, bob_id) = (alice.id.clone(), bob.id.clone());
    // Both go offline (their devices keep their groups): the room stops.
    let (mut a_dev, mut b_dev) = (alice, bob);
    a_dev.c = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    b_dev.c = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    rooms_running_become(&t, 0).await;
    // They come back on the same devices: the room starts from its row.
    a_dev
        .c
        .login(&alice_id, &a_dev.dev.certificate)
        .await
        .unwrap();
    b_dev
        .c
        .login(&bob_id, &b_dev.dev.certificate)
        .await
        .unwrap();
    assert_eq!(a_dev.group_state().await.0, epoch);
    assert_eq!(b_dev.commit(&[]).await, epoch + 1);
    assert!(a_dev.catch_up_to(b_dev.applied).await.is_empty());
    assert_eq!(a_dev.epoch(), epoch + 1);
    let seq = a_dev.say("after").await;
    assert_eq!(b_dev.catch_up_to(seq).await, ["after"]);
    assert_eq!(running(&t).await, 1);
    t.stop().await;
}

#[tokio::test]
async fn logins_are_limited_per_user_and_per_minute() {
    let t = TestServer::with(|s| {
        s.limits.max_connections_per_user = 2;
        s.limits.login_attempts_per_minute = 30;
    });
    let url = t.url();
    let a1 = Phone::register(&url, "alice", 0).await;
    let _a2 = Phone::login(&url, a1.id.clone()).await;
    // A third connection of the user is refused, and stays logged out.
    let mut a3 = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    let third = a3.login(&a1.id, &a1.dev.certificate).await;
    assert_eq!(
        third.err().and_then(|e| e.code()),
        Some(ErrorCode::RateLimited)
    );
    let rooms = a3.list_rooms(None).await;
    assert_eq!(
        rooms.err().and_then(|e| e.code()),
        Some(ErrorCode::NotLoggedIn)
    );
    // Login requests without a prove are limited per minute.
    let mut flood = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    let mut refused = 0;
    for _ in 0..40 {
        if let Err(e) = flood
            .request(&Request::Shared(PlainRequest::Login {
                username: "alice".into(),
            }))
            .await
        {
            assert_eq!(e.code(), Some(ErrorCode::RateLimited));
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    t.stop().await;
}
