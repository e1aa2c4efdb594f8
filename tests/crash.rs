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

use e2ee_chat::client::{seal_message, Client};
use e2ee_chat::protocol::{Request, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const USERS: [(&str, usize); 3] = [("alice", 0), ("bob", 1), ("carol", 2)];

/// Starts the server binary on `dir` (or the database at `store_url`);
/// returns it and its ws URL.
fn start(dir: &std::path::Path, store_url: &str) -> (Child, String) {
    let (child, addr) = common::spawn_listening(
        common::load_server_command(dir).env("CHAT__STORE__URL", store_url),
    );
    (child, format!("ws://{addr}/ws"))
}

#[derive(Debug, Clone, PartialEq)]
struct Acked {
    seq: u64,
    msg_id: Vec<u8>,
    ciphertext: Vec<u8>,
}

async fn login(url: &str, name: &str, n: usize) -> Client {
    let mut c = Client::connect(url).await.unwrap();
    c.login(&common::identity(name, n)).await.unwrap();
    c
}

/// Runs one round: load until `kill_at` acks, SIGKILL, then every ack read
/// before the connection died. Returns all acks.
async fn load_and_kill(url: &str, room_id: &str, kill_at: usize, mut child: Child) -> Vec<Acked> {
    let recipients = common::recipients(&USERS);
    let (tx, mut rx) = mpsc::unbounded_channel::<Acked>();
    let mut tasks = Vec::new();
    for (name, n) in USERS {
        let c = login(url, name, n).await;
        let keys = common::identity(name, n).keys;
        // Prepared before the load: real envelopes.
        let bodies: Vec<_> = (0..kill_at)
            .map(|i| seal_message(&keys, room_id, &format!("{name} {i}"), &recipients).unwrap())
            .collect();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = c.into_ws().split();
            let by_id: HashMap<Vec<u8>, Vec<u8>> = bodies
                .iter()
                .map(|b| (b.msg_id.to_vec(), b.ciphertext.to_vec()))
                .collect();
            let sender = tokio::spawn(async move {
                for (i, b) in bodies.into_iter().enumerate() {
                    let frame = Request::Send(b).encode(Some(i as u64));
                    if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
                sink
            });
            while let Some(Ok(WsMessage::Binary(f))) = stream.next().await {
                if let Ok(ServerMsg::Sent { seq, msg_id, .. }) = ServerMsg::decode(&f) {
                    let ciphertext = by_id[msg_id.as_slice()].clone();
                    let _ = tx.send(Acked {
                        seq,
                        msg_id: msg_id.to_vec(),
                        ciphertext,
                    });
                }
            }
            let _ = sender.await;
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    let mut killed = false;
    while let Some(a) = rx.recv().await {
        acked.push(a);
        if !killed && acked.len() >= kill_at {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    if !killed {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    acked
}

/// Every message in the room, by seq, as alice reads it.
async fn full_history(c: &mut Client, room_id: &str) -> Vec<Acked> {
    common::all_history(c, room_id, 500)
        .await
        .into_iter()
        .map(|m| Acked {
            seq: m.seq,
            msg_id: m.msg_id.to_vec(),
            ciphertext: m.ciphertext.to_vec(),
        })
        .collect()
}

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

async fn crash_rounds(store_url: &str) {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = start(dir.path(), store_url);
    let mut owner = Client::connect(&url).await.unwrap();
    for (name, n) in USERS {
        owner.register(&common::identity(name, n)).await.unwrap();
    }
    owner.login(&common::identity("alice", 0)).await.unwrap();
    let (room, _) = owner.create_room("Crash", None, false).await.unwrap();
    for (name, n) in &USERS[1..] {
        login(&url, name, *n)
            .await
            .join_room(&room.room_id, None)
            .await
            .unwrap();
    }
    drop(owner);
    let mut all_acked: Vec<Acked> = Vec::new();
    let mut child = child;
    let mut url = url;
    for round in 0..rounds {
        let kill_at = 40 + 37 * round;
        let acked = load_and_kill(&url, &room.room_id, kill_at, child).await;
        assert!(
            acked.len() >= kill_at,
            "round {round}: only {} acks",
            acked.len()
        );
        all_acked.extend(acked);
        let (c, u) = start(dir.path(), store_url);
        (child, url) = (c, u);
        let mut alice = login(&url, "alice", 0).await;
        let history = full_history(&mut alice, &room.room_id).await;
        // No gaps: seq runs 1..=len.
        for (i, m) in history.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1, "round {round}: gap or disorder at {i}");
        }
        let by_seq: HashMap<u64, &Acked> = history.iter().map(|m| (m.seq, m)).collect();
        for a in &all_acked {
            let stored = by_seq
                .get(&a.seq)
                .unwrap_or_else(|| panic!("round {round}: acked seq {} lost", a.seq));
            assert_eq!(*stored, a, "round {round}: seq {} changed", a.seq);
        }
        println!(
            "round {round}: killed after {} acks; {} acked in all, {} stored, lost 0",
            kill_at,
            all_acked.len(),
            history.len()
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
