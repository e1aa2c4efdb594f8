//! The room log as members read it, over real sockets with openmls devices: history paging
//! after, before and latest over commits and messages in one seq order; a
//! member's history holding only what was logged while they were a member;
//! pipelined sends keeping their order; and a restart keeping users, rooms,
//! membership, the group and the log.

mod common;

use common::phone::Phone;
use common::TestServer;
use e2ee_chat::protocol::PlainMsg;
use e2ee_chat::protocol::{Entry, EntryKind, Request, ServerMsg};
use serde_bytes::ByteBuf;

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn history_pages_after_before_and_latest_over_commits_and_messages() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("paging").await;
    // Seq 1 is Bob's external commit; 2..=12 are messages.
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&alice.room.clone()).await;
    bob.enter().await;
    alice.catch_up_to(1).await;
    for i in 1..=11 {
        assert_eq!(alice.say(&format!("m{i}")).await, i + 1);
    }
    let (entries, more) = alice.history_page(None, None, Some(5)).await;
    assert_eq!(seqs(&entries), [8, 9, 10, 11, 12]);
    assert!(more);
    let (entries, more) = alice.history_page(None, Some(8), Some(5)).await;
    assert_eq!(seqs(&entries), [3, 4, 5, 6, 7]);
    assert!(more);
    let (entries, more) = alice.history_page(None, Some(3), Some(5)).await;
    assert_eq!(seqs(&entries), [1, 2]);
    assert!(!more);
    assert_eq!(entries[0].kind, EntryKind::Commit);
    assert!(
        entries[0].group_info.is_some(),
        "a commit comes with its GroupInfo"
    );
    assert_eq!(entries[1].kind, EntryKind::Message);
    let (entries, more) = alice.history_page(Some(0), None, Some(5)).await;
    assert_eq!(seqs(&entries), [1, 2, 3, 4, 5]);
    assert!(more);
    let (entries, more) = alice.history_page(Some(10), None, Some(5)).await;
    assert_eq!(seqs(&entries), [11, 12]);
    assert!(!more);
    // Bob reads them from history, in order.
    let texts = bob.sync().await;
    assert_eq!(texts.len(), 11);
    assert_eq!(texts.last().unwrap(), "m11");
    // A huge limit is clamped, not refused.
    let (entries, _) = alice.history_page(None, None, Some(10_000)).await;
    assert_eq!(entries.len(), 12);
    t.stop().await;
}

#[tokio::test]
async fn history_holds_only_what_was_logged_while_a_member() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("late").await;
    alice.say("before bob").await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&alice.room.clone()).await;
    bob.enter().await;
    alice.catch_up_to(bob.entered_at).await;
    let after = alice.say("after bob").await;
    let (entries, _) = bob.history_page(None, None, None).await;
    assert_eq!(seqs(&entries), [bob.entered_at, after]);
    assert_eq!(bob.catch_up_to(after).await, ["after bob"]);
    t.stop().await;
}

#[tokio::test]
async fn pipelined_sends_keep_their_order() {
    let t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("burst").await;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&alice.room.clone()).await;
    bob.enter().await;
    alice.catch_up_to(bob.entered_at).await;
    let n = 40u64;
    let mut ids = Vec::new();
    for i in 0..n {
        let msg_id: [u8; 16] = rand::random();
        ids.push(msg_id.to_vec());
        let message = alice.encrypt(&format!("burst {i}"));
        alice
            .c
            .send_raw(
                Request::Send {
                    room_id: alice.room.clone(),
                    msg_id: ByteBuf::from(msg_id.to_vec()),
                    message: ByteBuf::from(message),
                }
                .encode(Some(1000 + i)),
            )
            .await
            .unwrap();
    }
    // A reply for every request, and seq follows the request order.
    let mut sent = Vec::new();
    while sent.len() < n as usize {
        if let ServerMsg::Shared(PlainMsg::Sent {
            id, seq, msg_id, ..
        }) = alice.c.read().await.unwrap()
        {
            sent.push((id.unwrap(), seq, msg_id.into_vec()));
        }
    }
    sent.sort();
    let first = bob.entered_at + 1;
    for (i, (id, seq, msg_id)) in sent.iter().enumerate() {
        assert_eq!(*id, 1000 + i as u64);
        assert_eq!(*seq, first + i as u64);
        assert_eq!(msg_id, &ids[i]);
    }
    let heard = bob.catch_up_to(first + n - 1).await;
    let want: Vec<String> = (0..n).map(|i| format!("burst {i}")).collect();
    assert_eq!(heard, want);
    t.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_users_rooms_membership_the_group_and_the_log() {
    let mut t = TestServer::new();
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("kept").await;
    let room = alice.room.clone();
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&room).await;
    bob.enter().await;
    alice.catch_up_to(bob.entered_at).await;
    let before = alice.say("before the restart").await;
    bob.catch_up_to(before).await;
    let epoch = alice.epoch();

    t.restart().await;
    let url = t.url();
    alice.reconnect(&url).await;
    bob.reconnect(&url).await;
    let (served, _, _) = alice.group_state().await;
    assert_eq!(served, epoch, "the group's epoch is kept");
    let seq = alice.say("after the restart").await;
    assert_eq!(seq, before + 1, "seq goes on");
    assert_eq!(bob.catch_up_to(seq).await, ["after the restart"]);
    // A commit after the restart: the stored group accepts it.
    assert_eq!(bob.commit(&[]).await, epoch + 1);
    assert!(alice.catch_up_to(seq + 1).await.is_empty());
    assert_eq!(alice.epoch(), epoch + 1);
    t.stop().await;
}
