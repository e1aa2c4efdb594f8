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

use common::phone::{no_event, refusal, wait_event, Phone};
use common::PgDatabase;
use e2ee_chat::client::conn::Conn;
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use e2ee_chat::protocol::{Request, ServerMsg};

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

fn in_order(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// Applies `p`'s entries until `upto`: the seqs of the messages others sent
/// (`Phone::apply` asserts that every entry comes in seq order).
async fn entries_until(p: &mut Phone, upto: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while p.applied < upto {
        let e = p.next_entry().await;
        p.apply(&e);
        seqs.push(e.seq);
    }
    seqs
}

/// Sends `n` messages: their seqs.
async fn say_n(p: &mut Phone, who: &str, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        seqs.push(p.say(&format!("{who} {i}")).await);
    }
    seqs
}

/// `who` (a new device) joins the room and enters its group by external
/// commit; everyone in `others` applies the log up to it.
async fn enter(who: &mut Phone, rid: &str, others: &mut [&mut Phone]) {
    eventually!("the room is known on the joiner's process", {
        who.join(rid, None).await.is_ok()
    });
    let last = others.iter().map(|p| p.applied).max().unwrap_or(0);
    who.applied = who.applied.max(last);
    who.enter().await;
    for p in others.iter_mut() {
        p.catch_up_to(who.applied).await;
    }
}

#[tokio::test]
async fn three_processes_behave_as_one_server() {
    let Some((db, mut redis, dir, prefix)) = cluster_setup().await else {
        return;
    };
    let a = process(dir.path(), &db.url, &redis.url(), &prefix);
    let b = process(dir.path(), &db.url, &redis.url(), &prefix);
    let c = process(dir.path(), &db.url, &redis.url(), &prefix);

    // One room, members on all three: alice on A, bob on B, carol and dave
    // on C, each in the room's group.
    let mut alice = Phone::register(&a.url, "alice", 0).await;
    let rid = alice.create("Spread").await.room_id;
    let mut bob = Phone::register(&b.url, "bob", 1).await;
    let mut carol = Phone::register(&c.url, "carol", 2).await;
    let mut dave = Phone::register(&c.url, "dave", 3).await;
    enter(&mut bob, &rid, &mut [&mut alice]).await;
    enter(&mut carol, &rid, &mut [&mut alice, &mut bob]).await;
    enter(&mut dave, &rid, &mut [&mut alice, &mut bob, &mut carol]).await;
    let base = dave.applied;

    // Presence and `connected` agree everywhere.
    let everyone: Vec<(String, bool)> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect();
    for p in [&mut alice, &mut bob, &mut carol] {
        eventually!(
            "every member is online on every process",
            p.online(&rid).await == everyone
        );
        eventually!(
            "connected counts every process",
            p.rooms(None, None).await.2 == 4
        );
    }

    // Messages from three processes at once arrive everywhere in seq order.
    let n = 15u64;
    tokio::join!(
        say_n(&mut alice, "alice", n),
        say_n(&mut bob, "bob", n),
        say_n(&mut carol, "carol", n)
    );
    let total = base + 3 * n;
    for p in [&mut alice, &mut bob, &mut carol, &mut dave] {
        entries_until(p, total).await;
        assert_eq!(p.applied, total);
    }

    // A kick on A stops delivery to dave on C: alice's next message waits
    // for the removal commit, which dave never gets, nor anything after.
    let dave_leaf = dave.group().own_leaf_index().u32();
    alice
        .ask(PlainRequest::Kick {
            room_id: rid.clone(),
            username: "dave".into(),
        })
        .await
        .unwrap();
    let removed = wait_event(&mut dave.c, |e| {
        matches!(e, ServerMsg::Shared(PlainMsg::Removed { .. }))
    })
    .await;
    assert!(
        matches!(removed, ServerMsg::Shared(PlainMsg::Removed { reason, .. }) if reason == "kicked")
    );
    alice.commit(&[dave_leaf]).await;
    let after_kick = alice.say("after the kick").await;
    assert_eq!(after_kick, total + 2);
    no_event(&mut dave.c, 500, |e| matches!(e, ServerMsg::Entry(_))).await;
    for p in [&mut bob, &mut carol] {
        assert_eq!(
            entries_until(p, after_kick).await,
            in_order(total + 1, after_kick)
        );
    }
    drop(dave);

    // SIGKILL of B while bob and carol send: nothing bob saw acknowledged is
    // lost, and he catches up on A.
    let mut b = b;
    let carol_sends = tokio::spawn(async move {
        for i in 0..40 {
            carol.say(&format!("carol load {i}")).await;
        }
        carol
    });
    let mut acked = Vec::new();
    for i in 0..1000 {
        if i == 10 {
            b.child.kill().unwrap();
        }
        let text = format!("bob load {i}");
        let message = bob.encrypt(&text);
        match bob
            .c
            .request_raw(&e2ee_chat::protocol::Request::Send {
                room_id: rid.clone(),
                msg_id: serde_bytes::ByteBuf::from(rand::random::<[u8; 16]>().to_vec()),
                message: serde_bytes::ByteBuf::from(message),
            })
            .await
        {
            Ok(ServerMsg::Shared(PlainMsg::Sent { seq, .. })) => acked.push(seq),
            _ => break,
        }
    }
    assert!(
        acked.len() >= 10,
        "bob's sends before the kill were acknowledged"
    );
    let mut carol = carol_sends.await.unwrap();
    // B is replaced by a new process (as an orchestrator would); bob's
    // device reconnects on A and reads what it missed from history.
    let b2 = process(dir.path(), &db.url, &redis.url(), &prefix);
    bob.reconnect(&a.url).await;
    bob.sync().await;
    let stored: Vec<u64> = bob.history_after(0).await.iter().map(|e| e.seq).collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} lost");
    }
    assert_eq!(stored, in_order(1, *stored.last().unwrap()), "no seq gaps");
    let last = *stored.last().unwrap();
    assert_eq!(bob.applied, last);
    // Everyone still connected got every entry, in order.
    entries_until(&mut alice, last).await;
    entries_until(&mut carol, last).await;
    // B's users count as offline elsewhere within the peer timeout, until
    // bob is back (he now is, on A).
    let three: Vec<(String, bool)> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect();
    eventually!(
        "presence agrees after the kill",
        carol.online(&rid).await == three
    );
    eventually!(
        "connected agrees after the kill",
        carol.rooms(None, None).await.2 == 3
    );

    // Redis restarted mid-load: carol (on C) keeps sending, alice and bob
    // (on A) still get every entry, in order: the gap is read from the
    // database.
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
        sent_last = carol.say(&format!("through the outage {i}")).await;
    }
    assert_eq!(sent_last, last + 60);
    assert_eq!(
        entries_until(&mut alice, sent_last).await,
        in_order(from, sent_last)
    );
    assert_eq!(
        entries_until(&mut bob, sent_last).await,
        in_order(from, sent_last)
    );

    // Subscriptions cut again and again while alice (on A) and carol (on C)
    // send: every gap is filled from the database, nothing is delivered
    // twice or skipped.
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let mut admin = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let alice_sends = tokio::spawn(async move {
        for i in 0..40 {
            alice.say(&format!("alice cut {i}")).await;
        }
        alice
    });
    for i in 0..40 {
        if i % 8 == 4 {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        carol.say(&format!("carol cut {i}")).await;
    }
    let mut alice = alice_sends.await.unwrap();
    let to = sent_last + 80;
    for p in [&mut alice, &mut bob, &mut carol] {
        entries_until(p, to).await;
        assert_eq!(p.applied, to);
    }

    // Room limits hold across processes: eight joins racing on B and C into
    // a room of at most 6 members (the owner and five more).
    let small = alice.create_with("Small", None, false).await.unwrap();
    let mut joiners = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 { &b2.url } else { &c.url };
        joiners.push(Phone::register(url, &format!("joiner{i}"), 4 + i).await);
    }
    let results =
        futures_util::future::join_all(joiners.iter_mut().map(|j| j.join(&small.room_id, None)))
            .await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(joined, 5, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Some(ErrorCode::RoomFull)));
    eventually!(
        "the owner's process sees the five who joined elsewhere",
        alice.online(&small.room_id).await.len() == 6
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
    let first = Phone::register(&a.url, "alice", 0).await;
    let login = |url: String| {
        let (id, cert) = (first.id.clone(), first.dev.certificate.clone());
        async move {
            let mut c = Conn::connect(&url).await.expect("connects");
            let r = c.login(&id, &cert).await;
            (c, r)
        }
    };
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
    drop(second);
    eventually!("A sees the session on B gone", {
        let (_, r) = login(a.url.clone()).await;
        r.is_ok()
    });
    drop(first);
    drop((a, b, redis));
    db.drop_now().await;
}

/// One MLS room whose members' devices are on different processes. Entries (commits and messages) reach every
/// process in seq order; a commit made on one process moves the group on the
/// others; two commits racing for one epoch from two processes: exactly one
/// wins and everyone converges; a kick on one process makes the others ask
/// for the removal commit.
#[tokio::test]
async fn three_processes_serve_one_mls_room() {
    let Some((db, redis, dir, prefix)) = cluster_setup().await else {
        return;
    };
    let procs: Vec<Process> = (0..3)
        .map(|_| process(dir.path(), &db.url, &redis.url(), &prefix))
        .collect();
    let mut alice = Phone::register(&procs[0].url, "alice", 0).await;
    alice.create("lobby").await;
    let rid = alice.room.clone();
    let mut bob = Phone::register(&procs[1].url, "bob", 1).await;
    eventually!("the room is known on process 1", {
        let r = bob
            .c
            .request(&Request::Shared(PlainRequest::JoinRoom {
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
            .request(&Request::Shared(PlainRequest::JoinRoom {
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
        (ServerMsg::Committed { .. }, _) => (&mut alice, &mut bob, rb),
        (_, ServerMsg::Committed { .. }) => (&mut bob, &mut alice, ra),
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
        .request(&Request::Shared(PlainRequest::Kick {
            room_id: rid.clone(),
            username: "bob".into(),
        }))
        .await
        .unwrap();
    eventually!("process 2 asks for the removal commit", {
        let r = carol.try_say("anyone?").await;
        match r {
            ServerMsg::Shared(PlainMsg::Sent { seq, .. }) => {
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
