//! Three server processes on one PostgreSQL database and one Redis, with the
//! members of one room spread over them: live delivery in seq order on every
//! process, a kick on one process stopping delivery on another, presence and
//! `connected` agreeing everywhere, a process SIGKILLed mid-load, and Redis
//! restarted mid-load. Prints `SKIP cluster:` and passes without PostgreSQL
//! (`CHAT_TEST_POSTGRES_URL`) or a `redis-server` binary (the test runs a
//! Redis of its own, so it can restart it).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{identity, PgDatabase};
use e2ee_chat::client::Client;
use e2ee_chat::protocol::{ErrorCode, Request, ServerMsg};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Result<Redis, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server not found ({e})"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process(dir: &std::path::Path, db: &str, redis: &str, prefix: &str) -> Process {
    process_with(dir, db, redis, prefix, &[])
}

fn process_with(
    dir: &std::path::Path,
    db: &str,
    redis: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> Process {
    let (child, addr) = common::spawn_listening(
        common::load_server_command(dir)
            .envs(env.iter().copied())
            .env("CHAT__STORE__URL", db)
            .env("CHAT__CLUSTER__REDIS_URL", redis)
            .env("CHAT__CLUSTER__CHANNEL_PREFIX", prefix)
            .env("CHAT__CLUSTER__HEARTBEAT_MS", "200")
            .env("CHAT__CLUSTER__PEER_TIMEOUT_MS", "1500")
            .env("CHAT__LIMITS__MAX_MEMBERS_PER_ROOM", "6"),
    );
    Process {
        child,
        url: format!("ws://{addr}/ws"),
    }
}

async fn user(url: &str, name: &str, n: usize) -> Client {
    let id = identity(name, n);
    let mut c = Client::connect(url).await.expect("connects");
    match c.register(&id).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::UsernameTaken) => {}
        Err(e) => panic!("register {name}: {e}"),
    }
    c.login(&id).await.expect("login");
    c
}

/// A fresh database, a Redis of the test's own, a directory and a channel
/// prefix; `None` (after a `SKIP cluster:` line) without PostgreSQL or
/// redis-server.
async fn cluster_setup() -> Option<(PgDatabase, Redis, tempfile::TempDir, String)> {
    let db = match PgDatabase::create().await {
        Ok(db) => db,
        Err(why) => {
            println!("SKIP cluster: {why}");
            return None;
        }
    };
    let redis = match Redis::start(common::free_port()) {
        Ok(r) => r,
        Err(why) => {
            println!("SKIP cluster: {why}");
            db.drop_now().await;
            return None;
        }
    };
    let prefix = format!(
        "test-{}",
        hex::encode(e2ee_chat::crypto::random_bytes::<4>())
    );
    Some((db, redis, tempfile::tempdir().unwrap(), prefix))
}

/// Polls `$cond` (an expression that may `.await`) until it holds: other
/// processes learn things a moment later.
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(10);
        while !$cond {
            assert!(Instant::now() < deadline, "never happened: {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

async fn online(c: &mut Client, rid: &str) -> Vec<(String, bool)> {
    c.get_members(rid)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.username, m.online))
        .collect()
}

async fn connected(c: &mut Client) -> u64 {
    c.list_rooms(None, None).await.unwrap().2
}

/// Reads `message` events of the room until seq `upto`; returns their seqs.
async fn messages_until(c: &mut Client, upto: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|s| *s < upto) {
        match c
            .wait_for(|e| matches!(e, ServerMsg::Message(_)))
            .await
            .expect("messages keep coming")
        {
            ServerMsg::Message(m) => {
                c.decrypt(&m).expect("verifies and decrypts");
                seqs.push(m.seq);
            }
            _ => unreachable!(),
        }
    }
    seqs
}

fn in_order(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[tokio::test]
async fn three_processes_behave_as_one_server() {
    let Some((db, mut redis, dir, prefix)) = cluster_setup().await else {
        return;
    };
    let a = process(dir.path(), &db.url, &redis.url(), &prefix);
    let b = process(dir.path(), &db.url, &redis.url(), &prefix);
    let c = process(dir.path(), &db.url, &redis.url(), &prefix);

    // One room, members on all three: alice on A, bob on B, carol and dave on C.
    let mut alice = user(&a.url, "alice", 0).await;
    let (room, _) = alice.create_room("Spread", None, false).await.unwrap();
    let rid = room.room_id.clone();
    let mut bob = user(&b.url, "bob", 1).await;
    let mut carol = user(&c.url, "carol", 2).await;
    let mut dave = user(&c.url, "dave", 3).await;
    // B and C learn of the room from the database when it is joined there.
    bob.join_room(&rid, None).await.unwrap();
    carol.join_room(&rid, None).await.unwrap();
    dave.join_room(&rid, None).await.unwrap();

    // Presence and `connected` agree everywhere.
    let everyone: Vec<(String, bool)> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect();
    for client in [&mut alice, &mut bob, &mut carol] {
        eventually!(
            "every member is online on every process",
            online(client, &rid).await == everyone
        );
        eventually!(
            "connected counts every process",
            connected(client).await == 4
        );
    }

    // Messages from three processes at once arrive everywhere in seq order.
    let n = 15u64;
    async fn send(c: &mut Client, rid: &str, who: &str, n: u64) {
        for i in 0..n {
            c.send_text(rid, &format!("{who} {i}")).await.unwrap();
        }
    }
    tokio::join!(
        send(&mut alice, &rid, "alice", n),
        send(&mut bob, &rid, "bob", n),
        send(&mut carol, &rid, "carol", n)
    );
    let total = 3 * n;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        assert_eq!(messages_until(client, total).await, in_order(1, total));
    }

    // A kick on A stops delivery to dave on C at once: the next message,
    // sent right after the kick returns, never reaches him.
    alice
        .request_ok(&Request::Kick {
            room_id: rid.clone(),
            username: "dave".into(),
        })
        .await
        .unwrap();
    let (after_kick, _) = alice.send_text(&rid, "after the kick").await.unwrap();
    assert_eq!(after_kick, total + 1);
    let removed = dave
        .wait_for(|e| matches!(e, ServerMsg::Removed { .. }))
        .await
        .unwrap();
    assert!(matches!(removed, ServerMsg::Removed { reason, .. } if reason == "kicked"));
    common::no_event(&mut dave, 500, |e| matches!(e, ServerMsg::Message(_))).await;
    assert_eq!(messages_until(&mut carol, total + 1).await, [total + 1]);
    assert_eq!(messages_until(&mut bob, total + 1).await, [total + 1]);
    assert_eq!(messages_until(&mut alice, total + 1).await, [total + 1]);
    dave.close().await;

    // SIGKILL of B while bob and carol send: nothing bob saw acknowledged is
    // lost, and he catches up on A.
    let mut b = b;
    let carol_sends = {
        let rid = rid.clone();
        let mut carol = carol;
        tokio::spawn(async move {
            for i in 0..40 {
                carol
                    .send_text(&rid, &format!("carol load {i}"))
                    .await
                    .unwrap();
            }
            carol
        })
    };
    let mut acked = Vec::new();
    for i in 0..1000 {
        if i == 10 {
            b.child.kill().unwrap();
        }
        match bob.send_text(&rid, &format!("bob load {i}")).await {
            Ok((seq, _)) => acked.push(seq),
            Err(_) => break,
        }
    }
    assert!(
        acked.len() >= 10,
        "bob's sends before the kill were acknowledged"
    );
    let mut carol = carol_sends.await.unwrap();
    // B is replaced by a new process (as an orchestrator would).
    let b2 = process(dir.path(), &db.url, &redis.url(), &prefix);
    let mut bob = user(&a.url, "bob", 1).await;
    bob.get_members(&rid).await.unwrap();
    let stored: Vec<u64> = common::all_history(&mut bob, &rid, 100)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} lost");
    }
    assert_eq!(stored, in_order(1, *stored.last().unwrap()), "no seq gaps");
    let last = *stored.last().unwrap();
    // Everyone still connected got every message, in order.
    let seen = messages_until(&mut alice, last).await;
    assert_eq!(seen, in_order(total + 2, last));
    // B's users count as offline elsewhere within the peer timeout, until
    // bob is back (he now is, on A).
    let three: Vec<(String, bool)> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect();
    eventually!(
        "presence agrees after the kill",
        online(&mut carol, &rid).await == three
    );
    eventually!(
        "connected agrees after the kill",
        connected(&mut carol).await == 3
    );

    // Redis restarted mid-load: carol (on C) keeps sending, alice (on A)
    // still gets every message, in order: the gap is read from the database.
    let port = redis.port;
    let from = last + 1;
    let mut sent_last = last;
    for i in 0..60 {
        if i == 20 {
            redis.kill();
        }
        if i == 40 {
            redis = Redis::start(port).unwrap();
        }
        sent_last = carol
            .send_text(&rid, &format!("through the outage {i}"))
            .await
            .unwrap()
            .0;
    }
    assert_eq!(sent_last, last + 60);
    assert_eq!(
        messages_until(&mut alice, sent_last).await,
        in_order(from, sent_last)
    );
    assert_eq!(
        messages_until(&mut bob, sent_last).await,
        in_order(from, sent_last)
    );

    // Subscriptions cut again and again while bob (on A) and carol (on C)
    // send: every gap is filled from the database, nothing is delivered
    // twice or skipped.
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let mut admin = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        messages_until(&mut carol, sent_last).await,
        in_order(total + 2, sent_last)
    );
    let from = sent_last + 1;
    let bob_sends = {
        let rid = rid.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                bob.send_text(&rid, &format!("bob cut {i}")).await.unwrap();
            }
            bob
        })
    };
    for i in 0..40 {
        if i % 8 == 4 {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        carol
            .send_text(&rid, &format!("carol cut {i}"))
            .await
            .unwrap();
    }
    let mut bob = bob_sends.await.unwrap();
    let to = from + 79;
    assert_eq!(messages_until(&mut alice, to).await, in_order(from, to));
    assert_eq!(messages_until(&mut bob, to).await, in_order(from, to));
    assert_eq!(messages_until(&mut carol, to).await, in_order(from, to));

    // Room limits hold across processes: eight joins racing on B and C into
    // a room of at most 6 members (the owner and five more).
    let (small, _) = alice.create_room("Small", None, false).await.unwrap();
    let mut joiners = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 { &b2.url } else { &c.url };
        joiners.push(user(url, &format!("joiner{i}"), 4 + i).await);
    }
    let results = futures_util::future::join_all(
        joiners
            .iter_mut()
            .map(|j| j.join_room(&small.room_id, None)),
    )
    .await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(joined, 5, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Some(ErrorCode::RoomFull)));
    eventually!(
        "the owner's process sees the five who joined elsewhere",
        alice.get_members(&small.room_id).await.unwrap().len() == 6
    );
    drop((a, b2, c));
    db.drop_now().await;
}

/// Issue 20 item 6: `max_connections_per_user` was counted per process
/// (one user held the limit on each). Each process now tells the others
/// its session count per user, and logins count all of them.
#[tokio::test]
async fn connections_per_user_are_counted_over_every_process() {
    let Some((db, redis, dir, prefix)) = cluster_setup().await else {
        return;
    };
    let limit = [("CHAT__LIMITS__MAX_CONNECTIONS_PER_USER", "2")];
    let a = process_with(dir.path(), &db.url, &redis.url(), &prefix, &limit);
    let b = process_with(dir.path(), &db.url, &redis.url(), &prefix, &limit);
    let login = |url: String| async move {
        let mut c = Client::connect(&url).await.expect("connects");
        let r = c.login(&identity("alice", 0)).await;
        (c, r)
    };
    let first = user(&a.url, "alice", 0).await;
    let (second, r) = login(b.url.clone()).await;
    r.expect("the second connection, on B");
    // A learns of B's session a heartbeat later at most; from then on a
    // third connection is refused on either process.
    eventually!("A counts alice's session on B", {
        let (_, r) = login(a.url.clone()).await;
        matches!(&r, Err(e) if e.code() == Some(ErrorCode::RateLimited))
    });
    let (_, r) = login(b.url.clone()).await;
    assert_eq!(r.err().and_then(|e| e.code()), Some(ErrorCode::RateLimited));
    // Closing the one on B gives its place back on A.
    second.close().await;
    eventually!("A sees the session on B gone", {
        let (_, r) = login(a.url.clone()).await;
        r.is_ok()
    });
    drop(first);
    drop((a, b, redis));
    db.drop_now().await;
}

/// Protocol v3 on three processes: one MLS room whose members' devices are
/// on different processes. Entries (commits and messages) reach every
/// process in seq order; a commit made on one process moves the group on the
/// others; two commits racing for one epoch from two processes: exactly one
/// wins and everyone converges; a kick on one process makes the others ask
/// for the removal commit.
#[tokio::test]
async fn three_processes_serve_one_mls_room() {
    use common::phone3::{refusal, Phone};
    use e2ee_chat::protocol::v3::{Request3, ServerMsg3};

    let Some((db, redis, dir, prefix)) = cluster_setup().await else {
        return;
    };
    let v3 = [("CHAT__PROTOCOL__VERSION", "3")];
    let procs: Vec<Process> = (0..3)
        .map(|_| process_with(dir.path(), &db.url, &redis.url(), &prefix, &v3))
        .collect();
    let mut alice = Phone::register(&procs[0].url, "alice", 0).await;
    alice.create("lobby").await;
    let rid = alice.room.clone();
    let mut bob = Phone::register(&procs[1].url, "bob", 1).await;
    eventually!("the room is known on process 1", {
        let r = bob
            .c
            .request(&Request3::Shared(Request::JoinRoom {
                room_id: rid.clone(),
                password: None,
            }))
            .await;
        r.is_ok()
    });
    bob.room = rid.clone();
    bob.enter().await;
    alice.catch_up_to(bob.applied).await;
    let mut carol = Phone::register(&procs[2].url, "carol", 2).await;
    eventually!("the room is known on process 2", {
        carol
            .c
            .request(&Request3::Shared(Request::JoinRoom {
                room_id: rid.clone(),
                password: None,
            }))
            .await
            .is_ok()
    });
    carol.room = rid.clone();
    carol.applied = bob.applied;
    carol.enter().await;
    alice.catch_up_to(carol.applied).await;
    bob.catch_up_to(carol.applied).await;
    assert_eq!((alice.epoch(), bob.epoch(), carol.epoch()), (2, 2, 2));

    // Talk across processes, right after the commits.
    alice.say("one").await;
    assert_eq!(bob.hear().await, "one");
    assert_eq!(carol.hear().await, "one");
    carol.say("two").await;
    assert_eq!(alice.hear().await, "two");
    assert_eq!(bob.hear().await, "two");

    // Two commits for epoch 2 from processes 0 and 1.
    let a = alice.build_commit(&[]);
    let b = bob.build_commit(&[]);
    let (ra, rb) = tokio::join!(alice.send_commit(&a), bob.send_commit(&b));
    let (winner, loser, lost) = match (&ra, &rb) {
        (ServerMsg3::Committed { .. }, _) => (&mut alice, &mut bob, rb),
        (_, ServerMsg3::Committed { .. }) => (&mut bob, &mut alice, ra),
        _ => panic!("one commit must win: {ra:?} {rb:?}"),
    };
    assert_eq!(refusal(lost).code, ErrorCode::StaleEpoch);
    winner.merge_pending();
    winner.catch_up_to(winner.applied + 1).await;
    loser.drop_pending();
    loser.catch_up_to(loser.applied + 1).await;
    carol.catch_up_to(winner.applied).await;
    assert_eq!((winner.epoch(), loser.epoch(), carol.epoch()), (3, 3, 3));
    loser.commit(&[]).await;
    winner.catch_up_to(loser.applied).await;
    carol.catch_up_to(loser.applied).await;
    winner.say("converged").await;
    assert_eq!(loser.hear().await, "converged");
    assert_eq!(carol.hear().await, "converged");

    // A kick on process 0: Carol, on process 2, must commit the removal.
    let bob_leaf = bob.group().own_leaf_index().u32();
    alice
        .c
        .request(&Request3::Shared(Request::Kick {
            room_id: rid.clone(),
            username: "bob".into(),
        }))
        .await
        .unwrap();
    eventually!("process 2 asks for the removal commit", {
        let r = carol.try_say("anyone?").await;
        match r {
            ServerMsg3::Shared(ServerMsg::Sent { seq, .. }) => {
                carol.catch_up_to(seq).await;
                alice.catch_up_to(seq).await;
                false
            }
            other => {
                let r = refusal(other);
                assert_eq!(r.code, ErrorCode::CommitRequired);
                assert_eq!(r.remove, Some(vec![bob_leaf]));
                true
            }
        }
    });
    carol.commit(&[bob_leaf]).await;
    alice.catch_up_to(carol.applied).await;
    alice.say("bob is gone").await;
    assert_eq!(carol.hear().await, "bob is gone");
    drop(procs);
    db.drop_now().await;
}
