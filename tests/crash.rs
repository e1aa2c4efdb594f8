//! Crash durability: senders pipeline messages into the server binary, which
//! is killed with SIGKILL mid-load; after a restart on the same store every
//! message whose `sent` reply arrived must be in history with the same seq
//! and bytes, and seq must have no gaps. Several kill points per run.
//!
//! Runs on SQLite, and on PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set
//! (a fresh database, dropped after; `SKIP postgres:` otherwise).
//!
//! `CRASH_ROUNDS` (default 3) sets the number of kill points; scripts/crash.sh
//! runs a larger count.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use e2ee_chat::protocol::PlainMsg;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Bob and Carol pipeline MLS messages while Alice commits
/// updates one after another; the server is SIGKILLed mid-load. After each
/// restart every acknowledged entry (`sent` or `committed`) is in history
/// with its seq and bytes, seqs have no gaps, the commits' epochs follow one
/// another, the served group (epoch, GroupInfo) is the last commit's, and
/// all three devices, applying the log from history, agree and talk again.
#[tokio::test]
async fn nothing_acknowledged_is_lost_across_kill_9() {
    crash_rounds("").await;
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_across_kill_9_on_postgres() {
    match common::PgDatabase::create().await {
        Err(why) => println!("SKIP postgres: {why}"),
        Ok(db) => {
            crash_rounds(&db.url).await;
            db.drop_now().await;
        }
    }
}

/// Starts the server binary on `dir` (or the database at `store_url`);
/// returns it and its ws URL.
fn start(dir: &std::path::Path, store_url: &str) -> (Child, String) {
    let (child, addr) = common::spawn_listening(
        common::load_server_command(dir).env("CHAT__STORE__URL", store_url),
    );
    (child, format!("ws://{addr}/ws"))
}

/// Pipelines `messages` from one device's connection; every `sent` is
/// acked as (seq, message bytes).
fn pipeline(
    ws: e2ee_chat::client::Ws,
    room_id: String,
    messages: Vec<Vec<u8>>,
    tx: mpsc::UnboundedSender<(u64, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    use e2ee_chat::protocol::{Request, ServerMsg};
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        // In the order they were encrypted: a receiver reads a sender's
        // messages in ratchet order (little reordering tolerated).
        let ordered: Vec<([u8; 16], Vec<u8>)> =
            messages.into_iter().map(|m| (rand::random(), m)).collect();
        let frames: Vec<Vec<u8>> = ordered
            .iter()
            .enumerate()
            .map(|(i, (id, m))| {
                Request::Send {
                    room_id: room_id.clone(),
                    msg_id: serde_bytes::ByteBuf::from(id.to_vec()),
                    message: serde_bytes::ByteBuf::from(m.clone()),
                }
                .encode(Some(i as u64))
            })
            .collect();
        let by_id: HashMap<[u8; 16], Vec<u8>> = ordered.into_iter().collect();
        let sender = tokio::spawn(async move {
            for frame in frames {
                if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        });
        while let Some(Ok(WsMessage::Binary(f))) = stream.next().await {
            match ServerMsg::decode(&f) {
                Ok(ServerMsg::Shared(PlainMsg::Sent { seq, msg_id, .. })) => {
                    let id: [u8; 16] = msg_id.as_slice().try_into().unwrap();
                    let _ = tx.send((seq, by_id[&id].clone()));
                }
                Ok(e @ ServerMsg::Error { .. }) => panic!("a send was refused: {e:?}"),
                _ => {}
            }
        }
        let _ = sender.await;
    })
}

async fn crash_rounds(store_url: &str) {
    use common::phone::Phone;
    use e2ee_chat::protocol::{EntryKind, Request, ServerMsg};

    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut url) = start(dir.path(), store_url);
    let mut alice = Phone::register(&url, "alice", 0).await;
    alice.create("Crash").await;
    let rid = alice.room.clone();
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join_room(&rid).await;
    bob.enter().await;
    let mut carol = Phone::register(&url, "carol", 2).await;
    carol.join_room(&rid).await;
    carol.enter().await;
    alice.catch_up_to(carol.applied).await;
    bob.catch_up_to(carol.applied).await;

    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    for round in 0..rounds {
        let kill_at = 40 + 37 * round;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Vec<u8>)>();
        // Messages for this epoch; Alice's two commits keep them in the window.
        let mut tasks = Vec::new();
        for p in [&mut bob, &mut carol] {
            let messages: Vec<Vec<u8>> = (0..kill_at)
                .map(|i| p.encrypt(&format!("{} {round} {i}", p.id.username)))
                .collect();
            let spare = p.second_connection(&url).await;
            let c = std::mem::replace(&mut p.c, spare);
            tasks.push(pipeline(c.into_ws(), rid.clone(), messages, tx.clone()));
        }
        let committer = {
            let tx = tx.clone();
            let rid = rid.clone();
            async move {
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    let objects = alice.build_commit(&[]);
                    let request = Request::Commit {
                        room_id: rid.clone(),
                        commit: serde_bytes::ByteBuf::from(objects.commit.clone()),
                        group_info: serde_bytes::ByteBuf::from(objects.group_info.clone()),
                    };
                    match alice.c.request_raw(&request).await {
                        Ok(ServerMsg::Committed { seq, .. }) => {
                            alice.merge_pending();
                            let _ = tx.send((seq, objects.commit));
                        }
                        // The server died: the commit stays pending, and the
                        // log says after the restart whether it was stored.
                        Err(_) => break,
                        Ok(other) => panic!("commit refused: {other:?}"),
                    }
                }
                alice
            }
        };
        drop(tx);
        let killer = async {
            let mut got = Vec::new();
            let mut killed = false;
            while let Some(a) = rx.recv().await {
                got.push(a);
                if !killed && got.len() >= kill_at {
                    child.kill().unwrap();
                    killed = true;
                }
            }
            if !killed {
                child.kill().unwrap();
            }
            child.wait().unwrap();
            got
        };
        let committer = tokio::spawn(committer);
        let got = killer.await;
        for t in tasks {
            t.await.unwrap();
        }
        alice = committer.await.unwrap();
        assert!(
            got.len() >= kill_at,
            "round {round}: only {} acks",
            got.len()
        );
        acked.extend(got);

        (child, url) = start(dir.path(), store_url);
        for p in [&mut alice, &mut bob, &mut carol] {
            p.reconnect(&url).await;
        }
        let history = alice.history_after(0).await;
        for (i, e) in history.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "round {round}: gap or disorder at {i}");
        }
        for (seq, data) in &acked {
            let stored = &history[*seq as usize - 1];
            assert_eq!(
                &stored.data.to_vec(),
                data,
                "round {round}: seq {seq} changed"
            );
        }
        let commits: Vec<_> = history
            .iter()
            .filter(|e| e.kind == EntryKind::Commit)
            .collect();
        for pair in commits.windows(2) {
            assert_eq!(pair[1].epoch, pair[0].epoch + 1, "round {round}: epochs");
        }
        let last = commits.last().unwrap();
        let (epoch, info, _) = alice.group_state().await;
        assert_eq!(epoch, last.epoch, "round {round}: the served epoch");
        assert_eq!(
            Some(info.as_slice()),
            last.group_info.as_deref().map(|g| g.as_slice()),
            "round {round}: the served GroupInfo"
        );
        for p in [&mut alice, &mut bob, &mut carol] {
            p.sync().await;
            assert_eq!(p.epoch(), epoch, "round {round}: {} agrees", p.id.username);
        }
        alice.say(&format!("after round {round}")).await;
        assert_eq!(bob.hear().await, format!("after round {round}"));
        assert_eq!(carol.hear().await, format!("after round {round}"));
        println!(
            "round {round}: killed after {kill_at} acks; {} acked in all, {} stored, \
             epoch {epoch}, lost 0",
            acked.len(),
            history.len()
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
