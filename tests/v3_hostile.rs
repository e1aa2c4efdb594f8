//! Hostile clients against protocol v3's room log (as `tests/hostile.rs` on
//! version 2): a history page is capped in bytes whatever its entries hold
//! (messages up to 64 KiB, commits with their GroupInfo), and a member who
//! never reads is dropped once its queued bytes pass the budget, while the
//! room goes on. One encoded `entry` frame is shared by every recipient; the
//! budget still counts it for each.

mod common;

use std::time::Duration;

use common::phone3::Phone;
use common::TestServer;
use e2ee_chat::client::ClientError;
use e2ee_chat::protocol::v3::{Entry, Request3, ServerMsg3};
use e2ee_chat::protocol::Request;

fn v3_server_with(tweak: impl FnOnce(&mut e2ee_chat::config::Settings)) -> TestServer {
    TestServer::with(|s| {
        s.protocol.version = 3;
        tweak(s)
    })
}

async fn page(p: &mut Phone, after: Option<u64>, before: Option<u64>) -> (Vec<Entry>, bool) {
    let reply =
        p.c.request(&Request3::Shared(Request::History {
            room_id: p.room.clone(),
            after_seq: after,
            before_seq: before,
            limit: Some(50),
        }))
        .await
        .unwrap();
    let ServerMsg3::History {
        entries, has_more, ..
    } = reply
    else {
        panic!("not history: {reply:?}");
    };
    (entries, has_more)
}

#[tokio::test]
async fn history_pages_are_capped_in_bytes_and_page_on() {
    let t = v3_server_with(|s| s.limits.history_page_bytes = 100_000);
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
    let (entries, more) = page(&mut alice, None, None).await;
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
        let (entries, _) = page(&mut alice, None, Some(cursor)).await;
        assert!(!entries.is_empty() && entries.len() < 10);
        seen += entries.len();
        cursor = entries[0].seq;
    }
    assert_eq!(cursor, 1);
    // Catch-up forward is capped the same way.
    let (entries, more) = page(&mut alice, Some(0), None).await;
    assert!(more && entries[0].seq == 1 && entries.len() < 10);
    t.stop().await;
}

#[tokio::test]
async fn a_member_that_never_reads_is_dropped_at_its_byte_budget() {
    let t = v3_server_with(|s| {
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
            Ok(ServerMsg3::Entry(_)) => seen += 1,
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
