//! PostgreSQL beyond the conformance suite: two server processes on one
//! database (gapless seqs, the user's room limit, the device limit, the
//! first commit for an epoch winning), the database going away mid-load
//! (the connection cut by a proxy in this test) and coming back, and TLS
//! (`sslmode=require`, `verify-full`). Each test prints `SKIP postgres:` and
//! passes when `CHAT_TEST_POSTGRES_URL` is not set.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::phone::{refusal, Phone};
use common::{PgDatabase, TestServer};
use e2ee_chat::protocol::ServerMsg;
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use e2ee_chat::store::postgres::PostgresStore;
use e2ee_chat::store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

async fn database() -> Option<PgDatabase> {
    match PgDatabase::create().await {
        Ok(db) => Some(db),
        Err(why) => {
            println!("SKIP postgres: {why}");
            None
        }
    }
}

/// Sends `n` messages: their seqs from `sent`.
async fn say_n(p: &mut Phone, who: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let m = p.encrypt(&format!("{who}{i}"));
        match p.send_raw(rand::random(), m).await {
            ServerMsg::Shared(PlainMsg::Sent { seq, .. }) => seqs.push(seq),
            other => panic!("send refused: {other:?}"),
        }
    }
    seqs
}

#[tokio::test]
async fn two_processes_append_to_one_room_with_gapless_unique_seqs() {
    let Some(db) = database().await else { return };
    let url = db.url.clone();
    let a = TestServer::with(|s| s.store.url = url.clone());
    let mut alice = Phone::register(&a.url(), "alice", 0).await;
    let rid = alice.create("Shared").await.room_id;
    // A second process on the same database, started after the room exists.
    let b = TestServer::with(|s| s.store.url = url.clone());
    let mut bob = Phone::register(&b.url(), "bob", 1).await;
    bob.join(&rid, None).await.unwrap();
    bob.enter().await;
    let n = 60;
    let (on_a, on_b) = tokio::join!(say_n(&mut alice, "a", n), say_n(&mut bob, "b", n));
    let mut all: Vec<u64> = on_a.iter().chain(&on_b).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (2..=2 * n as u64 + 1).collect::<Vec<_>>(),
        "acks not gapless/unique (seq 1 is bob's external commit)"
    );
    // The stored log agrees, read through either process.
    let seen: Vec<u64> = alice.history_after(0).await.iter().map(|e| e.seq).collect();
    assert_eq!(seen, (1..=2 * n as u64 + 1).collect::<Vec<_>>());
    let seen: Vec<u64> = bob.history_after(0).await.iter().map(|e| e.seq).collect();
    assert_eq!(seen, (1..=2 * n as u64 + 1).collect::<Vec<_>>());
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

/// A TCP proxy to the database that the test can cut and restore.
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            target,
            tasks: Arc::default(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let (tasks, target) = (self.tasks.clone(), self.target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut db) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut db).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Drops every connection and stops listening: the database is "gone".
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

async fn healthz(t: &TestServer) -> String {
    common::http_get(&t.http("/healthz")).await
}

// Multi-threaded: the proxy's tasks must run while `TestServer::with`
// blocks this test's thread waiting for the server to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_fails_sends_and_health_then_recovers() {
    let Some(db) = database().await else { return };
    let mut via_proxy = url::Url::parse(&db.url).unwrap();
    let target = format!(
        "{}:{}",
        via_proxy.host_str().unwrap(),
        via_proxy.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(target).await;
    via_proxy.set_port(Some(proxy.port)).unwrap();
    let store_url = via_proxy.to_string();
    let t = TestServer::with(|s| s.store.url = store_url.clone());
    let mut alice = Phone::register(&t.url(), "alice", 0).await;
    alice.create("Outage").await;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(alice.say(&format!("before {i}")).await);
    }
    assert!(healthz(&t).await.starts_with("HTTP/1.1 200"));

    proxy.cut();
    // Sends fail with `internal` (promptly: no hang, no false `sent`).
    let started = Instant::now();
    for i in 0..3 {
        let refused = refusal(alice.try_say(&format!("during {i}")).await);
        assert_eq!(refused.code, ErrorCode::Internal);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // /healthz reuses a check for up to a second, then sees the outage; it
    // says so without the store's error text.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = healthz(&t).await;
        if health.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.ends_with("unavailable\n"), "{health}");

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthz(&t).await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Serving again without a restart; the failed sends left no gap.
    for i in 0..5 {
        acked.push(alice.say(&format!("after {i}")).await);
    }
    assert_eq!(acked, (1..=15).collect::<Vec<u64>>());
    let (entries, _) = alice.history_page(None, None, Some(50)).await;
    assert_eq!(entries.len(), 15);
    t.stop().await;
    proxy.cut();
    db.drop_now().await;
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let Some(db) = database().await else { return };
    let admin = common::pg_connect(&db.url).await.unwrap();
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        println!("SKIP postgres tls: this server has ssl = {ssl}");
        db.drop_now().await;
        return;
    }
    let url = format!("{}?sslmode=require", db.url);
    let t = TestServer::with(|s| s.store.url = url.clone());
    let mut alice = Phone::register(&t.url(), "alice", 0).await;
    alice.create("Tls").await;
    alice.say("over tls").await;
    let name = url::Url::parse(&db.url).unwrap().path()[1..].to_owned();
    let tls_backends: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND s.ssl AND a.pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls_backends > 0, "the server's connections are not TLS");
    t.stop().await;
    drop(admin);
    db.drop_now().await;
}

/// Issue 20 item 6: `max_rooms_per_user` was counted per process, so one
/// user got 10 rooms with a limit of 5 through two processes. The store
/// counts it inside the write.
#[tokio::test]
async fn rooms_per_user_hold_across_processes() {
    let Some(db) = database().await else { return };
    let url = db.url.clone();
    let limit = |s: &mut e2ee_chat::config::Settings| {
        s.store.url = url.clone();
        s.limits.max_rooms_per_user = 3;
    };
    let a = TestServer::with(limit);
    let mut owner = Phone::register(&a.url(), "owner", 1).await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(owner.create(&format!("Open {i}")).await.room_id);
    }
    let over = owner.create_with("Open 3", None, false).await;
    assert_eq!(
        over.err().and_then(|e| e.code()),
        Some(ErrorCode::TooManyRooms)
    );
    // A second process on the database (without Redis it learns of rooms
    // only at start). Mallory, connected to both: B has not seen her rooms
    // made through A, and A not those made through B.
    let b = TestServer::with(limit);
    let mut on_a = Phone::register(&a.url(), "mallory", 0).await;
    let mut on_b = Phone::login(&b.url(), on_a.id.clone()).await;
    let a1 = on_a.create_with("Mine A1", None, false).await.unwrap();
    on_a.create_with("Mine A2", None, false).await.unwrap();
    on_b.create_with("Mine B1", None, false).await.unwrap();
    let code = |r: Result<e2ee_chat::protocol::RoomSummary, e2ee_chat::client::ClientError>| {
        r.err().and_then(|e| e.code())
    };
    assert_eq!(
        code(on_b.create_with("Mine B2", None, false).await),
        Some(ErrorCode::TooManyRooms)
    );
    assert_eq!(
        code(on_b.join(&open[0], None).await),
        Some(ErrorCode::TooManyRooms)
    );
    assert_eq!(
        code(on_a.join(&open[1], None).await),
        Some(ErrorCode::TooManyRooms)
    );
    // Racing from both at once does not get past it either.
    on_a.ask(PlainRequest::LeaveRoom {
        room_id: a1.room_id.clone(),
    })
    .await
    .unwrap();
    let (x, y) = tokio::join!(on_a.join(&open[0], None), on_b.join(&open[1], None));
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} / {y:?}"
    );
    drop((on_a, on_b, owner));
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

/// Issue 20 item 18: `sslmode=verify-full` with a CA file verifies the
/// database's certificate and name (tokio-postgres parses neither, and the
/// store used to accept any certificate). Runs where the server speaks TLS
/// with Debian's snakeoil certificate (for `localhost`), as here.
#[tokio::test]
async fn verify_full_checks_the_certificate_and_the_host_name() {
    let Some(db) = database().await else { return };
    let admin = common::pg_connect(&db.url).await.unwrap();
    let setting = |name: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default()
        }
    };
    let cert = setting("ssl_cert_file").await;
    let readable = std::fs::read_to_string(&cert).is_ok_and(|c| c.contains("CERTIFICATE"));
    if setting("ssl").await != "on" || !readable {
        println!("SKIP postgres tls: the server does not speak TLS with a certificate file here");
        db.drop_now().await;
        return;
    }
    let mut url = url::Url::parse(&db.url).unwrap();
    let mut with = |host: &str, query: &str| {
        url.set_host(Some(host)).unwrap();
        url.set_query(Some(query));
        url.to_string()
    };
    // The certificate names localhost: verified by its own certificate.
    let good = with(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    let store = PostgresStore::connect(&good, 8).await.expect("verified");
    store.ping().await.unwrap();
    store.close().await.unwrap();
    // The same server by its address: not the name in the certificate.
    let by_ip = with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    assert!(PostgresStore::connect(&by_ip, 8).await.is_err());
    // Another CA (the public ones) does not vouch for it.
    let public = "/etc/ssl/certs/ca-certificates.crt";
    if std::path::Path::new(public).exists() {
        let other = with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={public}"),
        );
        assert!(PostgresStore::connect(&other, 8).await.is_err());
    }
    // verify-full without a CA file says what is missing.
    let missing = with("localhost", "sslmode=verify-full");
    let err = PostgresStore::connect(&missing, 8)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("sslrootcert"), "{err}");
    drop(admin);
    db.drop_now().await;
}

/// The first commit for an epoch wins, across processes: two stores on one
/// database (each with its own pool and writer, as two server processes
/// have) race commits for every epoch; exactly one wins each epoch and the
/// log, the epoch and the group's state agree. (The same race over the
/// wire is in `cluster.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_racing_commits_for_one_epoch_one_wins() {
    use e2ee_chat::store::{
        EntryKind, GroupChange, GroupRow, LogEntry, NewEntry, RoomRecord, StoreError, UserRecord,
    };
    let Some(db) = database().await else { return };
    let a: Arc<dyn Store> = Arc::new(PostgresStore::connect(&db.url, 64).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PostgresStore::connect(&db.url, 64).await.unwrap());
    a.create_user(UserRecord {
        username: "alice".into(),
        sign_key: common::phone::identity("alice", 0).der,
        enc_key: Vec::new(),
        created_at: 1,
    })
    .await
    .unwrap();
    let room = RoomRecord {
        room_id: "r-race".into(),
        name: "Race".into(),
        owner: "alice".into(),
        created_at: 1,
        ..Default::default()
    };
    let group = GroupRow {
        group_id: vec![5; 16],
        epoch: 0,
        state: vec![0],
        group_info: vec![0],
        removal_epoch: 0,
    };
    a.create_group_room(room, group).await.unwrap();
    let commit = |from: u64, tag: u8| {
        Arc::new(NewEntry {
            room_id: "r-race".into(),
            entry: LogEntry {
                kind: EntryKind::Commit,
                sender: "alice".into(),
                device_id: vec![tag; 16],
                epoch: from + 1,
                data: vec![tag; 64],
                msg_id: None,
                group_info: Some(vec![tag]),
            },
            commit: Some(GroupChange {
                from_epoch: from,
                state: vec![tag; 32],
                removed: false,
            }),
        })
    };
    let epochs = 20u64;
    for epoch in 0..epochs {
        let racers = (0..6u8).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let entry = commit(epoch, i);
            tokio::spawn(async move { store.append_entry(entry).await })
        });
        let results: Vec<_> = futures_util::future::join_all(racers)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "epoch {epoch}: {results:?}");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::StaleEpoch(e)) if *e == epoch + 1)));
    }
    let log = a.entries_after("r-race", 0, 100).await.unwrap();
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=epochs).collect::<Vec<_>>(),
        "one entry per epoch, no gaps"
    );
    let epochs_in_log: Vec<u64> = log.iter().map(|e| e.entry.epoch).collect();
    assert_eq!(epochs_in_log, (1..=epochs).collect::<Vec<_>>());
    let g = b.load_group("r-race").await.unwrap().unwrap();
    assert_eq!(g.epoch, epochs);
    let last = &log.last().unwrap().entry;
    assert_eq!(
        g.state,
        vec![last.data[0]; 32],
        "the state is the last winner's"
    );
    assert_eq!(Some(g.group_info), last.group_info.clone());
    a.close().await.unwrap();
    b.close().await.unwrap();
    db.drop_now().await;
}

/// The device limit across processes: logins of new devices for one user,
/// racing on two server processes over one database, never record more
/// than `limits.max_devices_per_user` (the store decides inside the write,
/// under the user's row lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_devices_racing_on_two_processes_stay_within_the_limit() {
    use e2ee_chat::client::conn::{Conn, IdentityPair};
    use e2ee_chat::client::mls::Device;
    use e2ee_chat::protocol::{Request, ServerMsg};
    let Some(db) = database().await else { return };
    let url = db.url.clone();
    let tweak = |s: &mut e2ee_chat::config::Settings| {
        s.store.url = url.clone();
        s.limits.max_devices_per_user = 4;
    };
    let a = TestServer::with(tweak);
    let b = TestServer::with(tweak);
    let alice: IdentityPair = common::phone::identity("alice", 0);
    let mut c = Conn::connect(&a.url()).await.unwrap();
    c.register(&alice).await.unwrap();
    let logins = (0..12).map(|i| {
        let server = if i % 2 == 0 { a.url() } else { b.url() };
        let alice = alice.clone();
        tokio::spawn(async move {
            let device = Device::new("alice", |m| alice.sign(m));
            let mut c = Conn::connect(&server).await.unwrap();
            let result = c.login(&alice, &device.certificate).await;
            (result.map(|_| ()).map_err(|e| e.code()), c)
        })
    });
    let results: Vec<_> = futures_util::future::join_all(logins)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    assert_eq!(
        ok,
        4,
        "{:?}",
        results.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    assert!(results
        .iter()
        .all(|(r, _)| r.is_ok() || *r == Err(Some(ErrorCode::TooManyDevices))));
    let (_, mut logged_in) = results.into_iter().find(|(r, _)| r.is_ok()).unwrap();
    let listed = logged_in
        .request(&Request::ListDevices {
            username: "alice".into(),
        })
        .await
        .unwrap();
    let ServerMsg::Devices { devices, .. } = listed else {
        panic!("not devices: {listed:?}");
    };
    assert_eq!(devices.len(), 4);
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}
