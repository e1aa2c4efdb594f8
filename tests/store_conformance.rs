//! One store conformance suite, written once, run against every store:
//! SQLite always, PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set (a fresh
//! database per run, dropped after), MongoDB when `CHAT_TEST_MONGODB_URI` is
//! set (otherwise a line starting `SKIP postgres:` / `SKIP mongodb:` says why,
//! and it is not counted as passed).
//! For each store it also runs the websocket scenario (register → login →
//! rooms → messages → history → restart) through the same code.
//!
//! A custom harness (`harness = false`) so a skipped store is reported as
//! skipped, not as a pass; it ends with `N passed, N failed, N skipped`.

mod common;

use std::future::Future;
use std::sync::Arc;

use e2ee_chat::config::Settings;
use e2ee_chat::store::mongo::MongoStore;
use e2ee_chat::store::postgres::PostgresStore;
use e2ee_chat::store::sqlite::SqliteStore;
use e2ee_chat::store::{
    HistoryQuery, NewMessage, PurgePolicy, RoomRecord, RoomUpdate, SharedStore, StoreError,
    UserRecord,
};
use e2ee_chat::util::now_ms;

fn user(name: &str, n: usize) -> UserRecord {
    let id = common::identity(name, n);
    UserRecord {
        username: name.into(),
        sign_key: id.keys.sign_der,
        enc_key: id.keys.enc_der,
        created_at: now_ms(),
    }
}

fn room(id: &str, name: &str, owner: &str) -> RoomRecord {
    RoomRecord {
        room_id: id.into(),
        name: name.into(),
        owner: owner.into(),
        password_hash: None,
        hidden: false,
        created_at: now_ms(),
        last_seq: 0,
    }
}

fn message(room_id: &str, sender: &str, id: u8, recipients: &[&str]) -> Arc<NewMessage> {
    Arc::new(NewMessage {
        room_id: room_id.into(),
        msg_id: vec![id; 16],
        sender: sender.into(),
        nonce: vec![1; 12],
        key_commitment: vec![3; 32],
        ciphertext: vec![id; 40],
        signature: vec![2; 256],
        keys: recipients
            .iter()
            .map(|r| (r.to_string(), vec![id; 256]))
            .collect(),
        // Key sets here differ from the members on purpose (history by key).
        check_members: false,
    })
}

fn q(after: Option<u64>, before: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery {
        after_seq: after,
        before_seq: before,
        limit,
        max_bytes: usize::MAX,
    }
}

/// The conformance checks; panics on the first difference.
async fn conformance(s: SharedStore) {
    s.ping().await.unwrap();

    // Users.
    s.create_user(user("alice", 0)).await.unwrap();
    s.create_user(user("bob", 1)).await.unwrap();
    s.create_user(user("carol", 2)).await.unwrap();
    assert!(matches!(
        s.create_user(user("alice", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let a = s.get_user("alice").await.unwrap().unwrap();
    assert_eq!(
        a.sign_key,
        user("alice", 0).sign_key,
        "the first registration wins"
    );
    assert!(s.get_user("nobody").await.unwrap().is_none());

    // Rooms: unique without regard to case; the owner is the first member.
    s.create_room(room("r-1", "General", "alice"))
        .await
        .unwrap();
    assert!(matches!(
        s.create_room(room("r-2", "GENERAL", "bob")).await,
        Err(StoreError::Conflict(_))
    ));
    s.create_room(room("r-2", "Other", "bob")).await.unwrap();
    s.add_member("r-1", "bob", now_ms()).await.unwrap();
    s.add_member("r-1", "bob", now_ms()).await.unwrap(); // idempotent
    s.add_member("r-1", "carol", now_ms() + 1).await.unwrap();
    let dir = s.load_directory().await.unwrap();
    let r1 = dir.iter().find(|e| e.room.room_id == "r-1").unwrap();
    assert_eq!(r1.members, ["alice", "bob", "carol"], "join order");
    assert_eq!(r1.room.name, "General");
    let state = s.load_room("r-1").await.unwrap();
    let names: Vec<_> = state
        .members
        .iter()
        .map(|m| m.user.username.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(state.members[1].user.enc_key, user("bob", 1).enc_key);
    let record = state
        .record
        .expect("the room's record comes with its state");
    assert_eq!((record.name.as_str(), record.last_seq), ("General", 0));
    assert!(s.load_room("r-none").await.unwrap().record.is_none());

    // Appends: seq from 1, gapless; idempotent by (room, sender, msg_id).
    let m1 = s
        .append_message(message("r-1", "alice", 1, &["alice", "bob", "carol"]))
        .await
        .unwrap();
    assert_eq!((m1.seq, m1.duplicate), (1, false));
    let again = s
        .append_message(message("r-1", "alice", 1, &["alice", "bob"]))
        .await
        .unwrap();
    assert_eq!((again.seq, again.ts, again.duplicate), (1, m1.ts, true));
    // The same msg_id from another sender or in another room is another message.
    assert_eq!(
        s.append_message(message("r-1", "bob", 1, &["alice", "bob", "carol"]))
            .await
            .unwrap()
            .seq,
        2
    );
    assert_eq!(
        s.append_message(message("r-2", "bob", 1, &["bob"]))
            .await
            .unwrap()
            .seq,
        1
    );
    // Many at once: unique, gapless, in submission order.
    let futs: Vec<_> = (10..60u8)
        .map(|i| s.append_message(message("r-1", "carol", i, &["alice", "carol"])))
        .collect();
    let mut seqs = Vec::new();
    for f in futs {
        seqs.push(f.await.unwrap().seq);
    }
    assert_eq!(seqs, (3..53).collect::<Vec<u64>>());
    assert!(matches!(
        s.append_message(message("r-none", "alice", 1, &["alice"]))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.find_message("r-1", "alice", &[1; 16]).await.unwrap(),
        Some((1, m1.ts))
    );
    assert_eq!(
        s.find_message("r-1", "alice", &[9; 16]).await.unwrap(),
        None
    );
    // Another process's gap fill: whole messages after a seq, every key.
    let after = s.messages_after("r-1", 1, 3).await.unwrap();
    let seqs: Vec<u64> = after.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    let sent = message("r-1", "bob", 1, &["alice", "bob", "carol"]);
    let got = &after[0].message;
    assert_eq!(
        (&got.sender, &got.msg_id, &got.ciphertext, &got.keys),
        (&sent.sender, &sent.msg_id, &sent.ciphertext, &sent.keys)
    );
    assert_eq!(
        (&got.nonce, &got.key_commitment, &got.signature),
        (&sent.nonce, &sent.key_commitment, &sent.signature)
    );
    assert!(after[0].ts > 0);
    assert!(s.messages_after("r-1", 52, 10).await.unwrap().is_empty());
    assert_eq!(
        s.load_room("r-1").await.unwrap().record.unwrap().last_seq,
        52
    );

    // History: only messages the requester holds a key for.
    let page = s.history("r-1", "bob", q(None, None, 50)).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(!page.has_more);
    assert!(page.messages.iter().all(|m| m.key_commitment == [3; 32]));
    // A byte cap ends the page early, next to the cursor, with has_more;
    // a page always holds at least one message.
    let one = page.messages[0].wire_len();
    let capped = |after, max_bytes| HistoryQuery {
        max_bytes,
        ..q(after, None, 50)
    };
    let page = s.history("r-1", "bob", capped(None, one)).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [2]);
    assert!(page.has_more);
    let page = s.history("r-1", "bob", capped(Some(0), 1)).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
    assert!(page.has_more);
    assert_eq!(page.messages[0].key, vec![1; 256]);
    assert_eq!(page.messages[0].ciphertext, vec![1; 40]);
    let page = s.history("r-1", "carol", q(None, None, 5)).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [48, 49, 50, 51, 52]
    );
    assert!(page.has_more);
    let page = s
        .history("r-1", "carol", q(Some(50), None, 5))
        .await
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [51, 52]
    );
    assert!(!page.has_more);
    let page = s
        .history("r-1", "carol", q(None, Some(4), 5))
        .await
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let page = s
        .history("r-1", "carol", q(Some(1), Some(5), 10))
        .await
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(s
        .history("r-1", "nobody", q(None, None, 5))
        .await
        .unwrap()
        .messages
        .is_empty());

    // Membership changes and bans.
    let left = s.remove_member("r-1", "carol", false, None).await.unwrap();
    assert_eq!((left.remaining, left.owner.as_deref()), (2, Some("alice")));
    s.remove_member("r-1", "bob", true, Some("alice"))
        .await
        .unwrap();
    let state = s.load_room("r-1").await.unwrap();
    assert_eq!(state.members.len(), 1);
    assert_eq!(state.bans, ["bob"]);
    assert!(
        matches!(
            s.add_member("r-1", "bob", now_ms()).await,
            Err(StoreError::Banned)
        ),
        "a banned user is not added (another process may not know the ban yet)"
    );
    s.set_ban("r-1", "carol", true).await.unwrap();
    s.set_ban("r-1", "bob", false).await.unwrap();
    assert_eq!(s.load_room("r-1").await.unwrap().bans, ["carol"]);

    // Room updates; a rename to a taken name conflicts and changes nothing.
    let update = |name: Option<&str>, owner: Option<&str>, pw: Option<Option<&str>>| RoomUpdate {
        name: name.map(Into::into),
        owner: owner.map(Into::into),
        password_hash: pw.map(|p| p.map(Into::into)),
        by: None,
    };
    assert!(matches!(
        s.update_room("r-1", update(Some("other"), None, None))
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.update_room(
        "r-1",
        update(Some("Renamed"), Some("bob"), Some(Some("$argon2id$x"))),
    )
    .await
    .unwrap();
    let dir = s.load_directory().await.unwrap();
    let r1 = &dir.iter().find(|e| e.room.room_id == "r-1").unwrap().room;
    assert_eq!(
        (
            r1.name.as_str(),
            r1.owner.as_str(),
            r1.password_hash.as_deref()
        ),
        ("Renamed", "bob", Some("$argon2id$x"))
    );
    assert_eq!(r1.last_seq, 52);
    s.update_room("r-1", update(None, None, Some(None)))
        .await
        .unwrap();
    let dir = s.load_directory().await.unwrap();
    assert_eq!(
        dir.iter()
            .find(|e| e.room.room_id == "r-1")
            .unwrap()
            .room
            .password_hash,
        None
    );
    // The old name is free again.
    s.create_room(room("r-3", "general", "carol"))
        .await
        .unwrap();

    // Retention by count keeps the newest; by age deletes old ones; seq never goes back.
    let policy = |older_than_ts, max_per_room| PurgePolicy {
        older_than_ts,
        max_per_room,
        batch: 7,
    };
    let mut total = 0;
    loop {
        let n = s.purge(policy(0, 10)).await.unwrap();
        total += n;
        if n < 7 {
            break;
        }
    }
    assert_eq!(total, 42, "52 messages in r-1, 10 kept");
    let page = s
        .history("r-1", "carol", q(Some(0), None, 100))
        .await
        .unwrap();
    assert_eq!(page.messages.first().map(|m| m.seq), Some(43));
    let next = s
        .append_message(message("r-1", "alice", 200, &["alice"]))
        .await
        .unwrap();
    assert_eq!(next.seq, 53);
    while s.purge(policy(now_ms() + 1000, 0)).await.unwrap() == 7 {}
    assert!(s
        .history("r-1", "alice", q(None, None, 100))
        .await
        .unwrap()
        .messages
        .is_empty());
    assert_eq!(
        s.append_message(message("r-1", "alice", 201, &["alice"]))
            .await
            .unwrap()
            .seq,
        54
    );

    // Deleting a room removes everything of it.
    s.delete_room("r-1").await.unwrap();
    let dir = s.load_directory().await.unwrap();
    assert!(dir.iter().all(|e| e.room.room_id != "r-1"));
    assert!(s
        .history("r-1", "alice", q(None, None, 100))
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(matches!(
        s.append_message(message("r-1", "alice", 202, &["alice"]))
            .await,
        Err(StoreError::NotFound)
    ));
    s.create_room(room("r-4", "Renamed", "alice"))
        .await
        .unwrap();

    rejoin_before_any_message_keeps_history(&s).await;
    leaving_and_owners_are_decided_at_commit(&s).await;
    s.close().await.unwrap();
}

/// Issue 20 item 4: who is left, who owns the room and whether an owner
/// may act are decided by the store when the write commits.
async fn leaving_and_owners_are_decided_at_commit(s: &SharedStore) {
    s.create_room(room("r-own", "Owned", "alice"))
        .await
        .unwrap();
    s.add_member("r-own", "bob", now_ms()).await.unwrap();
    s.add_member("r-own", "carol", now_ms() + 1).await.unwrap();
    s.append_message(message("r-own", "alice", 1, &["alice", "bob", "carol"]))
        .await
        .unwrap();
    // Only the owner, while a member, kicks, bans and renames.
    let by_bob = RoomUpdate {
        name: Some("Mine".into()),
        by: Some("bob".into()),
        ..RoomUpdate::default()
    };
    assert!(matches!(
        s.update_room("r-own", by_bob.clone()).await,
        Err(StoreError::NotOwner)
    ));
    assert!(matches!(
        s.remove_member("r-own", "carol", false, Some("bob")).await,
        Err(StoreError::NotOwner)
    ));
    assert_eq!(s.load_room("r-own").await.unwrap().members.len(), 3);
    // The owner leaves: the earliest-joined member takes over, and the
    // old owner's rights end with the write.
    let left = s
        .remove_member("r-own", "alice", false, None)
        .await
        .unwrap();
    assert_eq!((left.remaining, left.owner.as_deref()), (2, Some("bob")));
    assert!(matches!(
        s.remove_member("r-own", "carol", false, Some("alice"))
            .await,
        Err(StoreError::NotOwner)
    ));
    s.update_room("r-own", by_bob).await.unwrap();
    // The last two leave at once: the second removal finds no one left and
    // the room goes with its messages.
    let (a, b) = tokio::join!(
        s.remove_member("r-own", "bob", false, None),
        s.remove_member("r-own", "carol", false, None)
    );
    let mut remaining = [a.unwrap().remaining, b.unwrap().remaining];
    remaining.sort();
    assert_eq!(remaining, [0, 1]);
    let state = s.load_room("r-own").await.unwrap();
    assert!(state.record.is_none() && state.members.is_empty());
    assert!(s
        .history("r-own", "bob", q(None, None, 10))
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(s
        .load_directory()
        .await
        .unwrap()
        .iter()
        .all(|e| e.room.room_id != "r-own"));
}

/// Issue 20 item 5: a member who leaves and rejoins before anyone writes
/// must still read what is sent after the rejoin (the empty period is
/// reopened, not left closed).
async fn rejoin_before_any_message_keeps_history(s: &SharedStore) {
    s.create_room(room("r-rejoin", "Rejoin", "alice"))
        .await
        .unwrap();
    s.add_member("r-rejoin", "bob", now_ms()).await.unwrap();
    // Leave and rejoin with nothing in between, then alice writes: first
    // before any message, then again after one.
    let mut sent = Vec::new();
    for id in [1, 2] {
        s.remove_member("r-rejoin", "bob", false, None)
            .await
            .unwrap();
        s.add_member("r-rejoin", "bob", now_ms()).await.unwrap();
        let appended = s
            .append_message(message("r-rejoin", "alice", id, &["alice", "bob"]))
            .await
            .unwrap();
        sent.push(appended.seq);
        let page = s
            .history("r-rejoin", "bob", q(None, None, 10))
            .await
            .unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            sent,
            "bob rejoined: he reads what came after"
        );
    }
    s.delete_room("r-rejoin").await.unwrap();
}

/// The websocket scenario of the server core, on whatever store `tweak` selects.
async fn websocket_scenario(tweak: impl Fn(&mut Settings) + Copy) {
    let mut t = common::TestServer::with(tweak);
    let mut alice = t.user("alice", 0).await;
    let mut bob = t.user("bob", 1).await;
    let (room, _) = alice
        .create_room("Scenario", Some("pw"), false)
        .await
        .unwrap();
    let rid = room.room_id;
    bob.join_room(&rid, Some("pw")).await.unwrap();
    for i in 0..3 {
        alice
            .send_text(&rid, &format!("message {i}"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            bob.next_message(&rid).await.unwrap().text,
            format!("message {i}")
        );
    }
    drop((alice, bob));
    t.restart_with(tweak).await;
    let mut bob = t.login("bob", 1).await;
    let (rooms, _, _) = bob.list_rooms(None, None).await.unwrap();
    assert_eq!(
        (rooms.len(), rooms[0].members, rooms[0].last_seq),
        (1, 2, 3)
    );
    bob.get_members(&rid).await.unwrap();
    let (msgs, _) = bob.history(&rid, None, None, None).await.unwrap();
    let texts: Vec<_> = msgs.iter().map(|m| bob.decrypt(m).unwrap().text).collect();
    assert_eq!(texts, ["message 0", "message 1", "message 2"]);
    assert_eq!(bob.send_text(&rid, "after restart").await.unwrap().0, 4);
    t.stop().await;
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    async fn run<F: Future<Output = ()> + Send + 'static>(&mut self, name: &str, f: F) {
        match tokio::spawn(f).await {
            Ok(()) => {
                println!("test {name} ... ok");
                self.passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                self.failed += 1;
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tally = rt.block_on(async {
        let mut tally = Tally::default();
        let dir = tempfile::tempdir().unwrap();
        let sqlite: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("c.db"), 64).unwrap());
        tally.run("sqlite conformance", conformance(sqlite)).await;
        tally.run("sqlite websocket scenario", websocket_scenario(|_| {})).await;

        match common::PgDatabase::create().await {
            Err(why) => {
                println!("SKIP postgres: {why}");
                tally.skipped += 2;
            }
            Ok(db) => {
                match PostgresStore::connect(&db.url, 64).await {
                    Ok(store) => tally.run("postgres conformance", conformance(Arc::new(store))).await,
                    Err(e) => {
                        println!("test postgres conformance ... FAILED: cannot connect: {e}");
                        tally.failed += 1;
                    }
                }
                db.drop_now().await;
                match common::PgDatabase::create().await {
                    Ok(db) => {
                        let url: &'static str = Box::leak(db.url.clone().into_boxed_str());
                        tally
                            .run(
                                "postgres websocket scenario",
                                websocket_scenario(move |s: &mut Settings| s.store.url = url.into()),
                            )
                            .await;
                        db.drop_now().await;
                    }
                    Err(e) => {
                        println!("test postgres websocket scenario ... FAILED: {e}");
                        tally.failed += 1;
                    }
                }
            }
        }

        match std::env::var("CHAT_TEST_MONGODB_URI").ok().filter(|v| !v.is_empty()) {
            None => {
                println!("SKIP mongodb: CHAT_TEST_MONGODB_URI is not set (e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0)");
                tally.skipped += 2;
            }
            Some(uri) => {
                let db = format!("e2ee_chat_test_{}", hex::encode(e2ee_chat::crypto::random_bytes::<6>()));
                let store = MongoStore::connect(&uri, Some(&db), 64).await;
                match store {
                    Ok(store) => tally.run("mongodb conformance", conformance(Arc::new(store))).await,
                    Err(e) => {
                        println!("test mongodb conformance ... FAILED: cannot connect: {e}");
                        tally.failed += 1;
                    }
                }
                // `websocket_scenario` wants a Copy closure: leak the strings once.
                let uri_static: &'static str = Box::leak(uri.clone().into_boxed_str());
                let db_static: &'static str = Box::leak(format!("{db}_ws").into_boxed_str());
                tally
                    .run(
                        "mongodb websocket scenario",
                        websocket_scenario(move |s: &mut Settings| {
                            s.store.url = uri_static.into();
                            s.store.database = db_static.into();
                        }),
                    )
                    .await;
                for name in [db.as_str(), db_static] {
                    if let Ok(client) = mongodb::Client::with_uri_str(&uri).await {
                        let _ = client.database(name).drop().await;
                    }
                }
            }
        }
        tally
    });
    println!(
        "store conformance: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if tally.failed > 0 {
        std::process::exit(1);
    }
}
