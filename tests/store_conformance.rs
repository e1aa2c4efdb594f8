//! One store conformance suite, written once, run against every store:
//! SQLite always, PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set (a fresh
//! database per case, dropped after), MongoDB when `CHAT_TEST_MONGODB_URI` is
//! set (otherwise a line starting `SKIP postgres:` / `SKIP mongodb:` says why,
//! and its cases are not counted as passed).
//!
//! Each case is a named function that gets a fresh, empty store ([`CASES`]);
//! for each store the websocket scenario (register → login → a room and its
//! group → messages → restart → history) also runs through the same code.
//!
//! A custom harness (`harness = false`) so a skipped store is reported as
//! skipped, not as a pass; it ends with `N passed, N failed, N skipped`.
//! `cargo test --test store_conformance -- NAME` runs the cases whose name
//! holds NAME.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use e2ee_chat::config::Settings;
use e2ee_chat::store::mongo::MongoStore;
use e2ee_chat::store::postgres::PostgresStore;
use e2ee_chat::store::sqlite::SqliteStore;
use e2ee_chat::store::{
    DeviceAdded, DeviceRecord, EntryKind, GroupChange, GroupRow, HistoryPage, HistoryQuery,
    LogEntry, NewEntry, PageItem, PurgePolicy, RoomRecord, RoomUpdate, SharedStore, StoreError,
    StoredEntry, UserRecord, DEVICE_RECORDS_PER_LIVE,
};
use e2ee_chat::util::now_ms;

fn user(name: &str, n: usize) -> UserRecord {
    UserRecord {
        username: name.into(),
        sign_key: common::phone::identity(name, n).der,
        enc_key: Vec::new(),
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

/// The device of a sender in these cases: one each.
fn device_of(sender: &str) -> u8 {
    match sender {
        "alice" => 1,
        "bob" => 2,
        _ => 3,
    }
}

/// A message entry from `sender`'s device with msg_id `[id; 16]`.
fn message(room_id: &str, sender: &str, id: u8) -> Arc<NewEntry> {
    entry_message(room_id, sender, device_of(sender), id, 0)
}

/// A group for room `room_id`, unique to it.
fn group_of(room_id: &str) -> GroupRow {
    let mut g = group(0);
    g.group_id = room_id
        .bytes()
        .chain(std::iter::repeat(0))
        .take(16)
        .collect();
    g
}

/// Creates a room of `owner` with its group.
async fn create(s: &SharedStore, room_id: &str, name: &str, owner: &str) -> Result<(), StoreError> {
    s.create_group_room(room(room_id, name, owner), group_of(room_id))
        .await
}

/// `username`'s history page of the room.
async fn history(s: &SharedStore, room_id: &str, username: &str, q: HistoryQuery) -> HistoryPage {
    s.entry_history(room_id, username, q).await.unwrap().page
}

fn q(after: Option<u64>, before: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery {
        after_seq: after,
        before_seq: before,
        limit,
        max_bytes: usize::MAX,
    }
}

fn seqs(page: &HistoryPage<StoredEntry>) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// alice, bob and carol registered.
async fn people(s: &SharedStore) {
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        s.create_user(user(name, i)).await.unwrap();
    }
}

/// People, room r-1 ("General", alice's, then bob and carol joined) and
/// room r-2 ("Other", bob's).
async fn rooms(s: &SharedStore) {
    people(s).await;
    create(s, "r-1", "General", "alice").await.unwrap();
    create(s, "r-2", "Other", "bob").await.unwrap();
    s.add_member("r-1", "bob", now_ms()).await.unwrap();
    s.add_member("r-1", "carol", now_ms() + 1).await.unwrap();
}

/// Rooms, and 52 messages in r-1: seq 1 from alice, 2 from bob, 3..=52
/// from carol; one in r-2.
async fn messages(s: &SharedStore) {
    rooms(s).await;
    s.append_entry(message("r-1", "alice", 1)).await.unwrap();
    s.append_entry(message("r-1", "bob", 1)).await.unwrap();
    s.append_entry(message("r-2", "bob", 1)).await.unwrap();
    for i in 10..60u8 {
        s.append_entry(message("r-1", "carol", i)).await.unwrap();
    }
}

async fn users_are_unique_and_the_first_registration_wins(s: SharedStore) {
    s.ping().await.unwrap();
    people(&s).await;
    assert!(matches!(
        s.create_user(user("alice", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let a = s.get_user("alice").await.unwrap().unwrap();
    assert_eq!(a.sign_key, user("alice", 0).sign_key);
    assert!(s.get_user("nobody").await.unwrap().is_none());
}

async fn rooms_are_unique_by_folded_name_and_list_members_in_join_order(s: SharedStore) {
    people(&s).await;
    create(&s, "r-1", "General", "alice").await.unwrap();
    assert!(matches!(
        create(&s, "r-2", "GENERAL", "bob").await,
        Err(StoreError::Conflict(_))
    ));
    s.add_member("r-1", "bob", now_ms()).await.unwrap();
    s.add_member("r-1", "bob", now_ms()).await.unwrap(); // idempotent
    s.add_member("r-1", "carol", now_ms() + 1).await.unwrap();
    let dir = s.load_directory().await.unwrap();
    assert_eq!(dir.len(), 1);
    assert_eq!(dir[0].members, ["alice", "bob", "carol"], "join order");
    assert_eq!(dir[0].room.name, "General");
    let state = s.load_room("r-1").await.unwrap();
    let names: Vec<_> = state
        .members
        .iter()
        .map(|m| m.user.username.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(state.members[1].user.sign_key, user("bob", 1).sign_key);
    let record = state
        .record
        .expect("the room's record comes with its state");
    assert_eq!((record.name.as_str(), record.last_seq), ("General", 0));
    assert!(s.load_room("r-none").await.unwrap().record.is_none());
}

async fn appends_take_gapless_seqs_and_are_deduplicated(s: SharedStore) {
    rooms(&s).await;
    let m1 = s.append_entry(message("r-1", "alice", 1)).await.unwrap();
    assert_eq!((m1.seq, m1.duplicate), (1, false));
    let again = s.append_entry(message("r-1", "alice", 1)).await.unwrap();
    assert_eq!((again.seq, again.ts, again.duplicate), (1, m1.ts, true));
    // The same msg_id from another sender or in another room is another message.
    assert_eq!(
        s.append_entry(message("r-1", "bob", 1)).await.unwrap().seq,
        2
    );
    assert_eq!(
        s.append_entry(message("r-2", "bob", 1)).await.unwrap().seq,
        1
    );
    assert!(matches!(
        s.append_entry(message("r-none", "alice", 1)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.find_entry("r-1", &[1; 16], &[1; 16]).await.unwrap(),
        Some((1, m1.ts))
    );
    assert_eq!(s.find_entry("r-1", &[1; 16], &[9; 16]).await.unwrap(), None);
}

async fn appends_at_once_are_unique_gapless_and_in_submission_order(s: SharedStore) {
    rooms(&s).await;
    let futs: Vec<_> = (10..60u8)
        .map(|i| s.append_entry(message("r-1", "carol", i)))
        .collect();
    let mut seqs = Vec::new();
    for f in futs {
        seqs.push(f.await.unwrap().seq);
    }
    assert_eq!(seqs, (1..51).collect::<Vec<u64>>());
    assert_eq!(
        s.load_room("r-1").await.unwrap().record.unwrap().last_seq,
        50
    );
}

async fn gap_fill_gives_whole_entries_after_a_seq(s: SharedStore) {
    messages(&s).await;
    let after = s.entries_after("r-1", 1, 3).await.unwrap();
    let seqs: Vec<u64> = after.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(after[0].entry, message("r-1", "bob", 1).entry);
    assert!(after[0].ts > 0);
    assert!(s.entries_after("r-1", 52, 10).await.unwrap().is_empty());
    assert_eq!(
        s.load_room("r-1").await.unwrap().record.unwrap().last_seq,
        52
    );
}

async fn a_byte_cap_ends_the_page_next_to_the_cursor(s: SharedStore) {
    messages(&s).await;
    let page = history(&s, "r-1", "bob", q(None, None, 50)).await;
    let one = page.messages[0].wire_len();
    let capped = |after, max_bytes| HistoryQuery {
        max_bytes,
        ..q(after, None, 50)
    };
    let page = history(&s, "r-1", "bob", capped(None, one)).await;
    assert_eq!(seqs(&page), [52]);
    assert!(page.has_more);
    // A page always holds at least one entry.
    let page = history(&s, "r-1", "bob", capped(Some(0), 1)).await;
    assert_eq!(seqs(&page), [1]);
    assert!(page.has_more);
    assert_eq!(page.messages[0].entry, message("r-1", "alice", 1).entry);
}

async fn removals_and_bans(s: SharedStore) {
    rooms(&s).await;
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
}

async fn room_updates_and_names(s: SharedStore) {
    messages(&s).await;
    let update = |name: Option<&str>, owner: Option<&str>, pw: Option<Option<&str>>| RoomUpdate {
        name: name.map(Into::into),
        owner: owner.map(Into::into),
        password_hash: pw.map(|p| p.map(Into::into)),
        by: None,
    };
    // A rename to a taken name conflicts and changes nothing.
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
    create(&s, "r-3", "general", "carol").await.unwrap();
}

async fn retention_keeps_the_newest_and_seq_never_goes_back(s: SharedStore) {
    messages(&s).await;
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
    assert_eq!(total, 42, "52 messages in r-1, 10 kept; r-2's one stays");
    let page = history(&s, "r-1", "carol", q(Some(0), None, 100)).await;
    assert_eq!(page.messages.first().map(|m| m.seq), Some(43));
    let next = s.append_entry(message("r-1", "alice", 200)).await.unwrap();
    assert_eq!(next.seq, 53);
    while s.purge(policy(now_ms() + 1000, 0)).await.unwrap() == 7 {}
    assert!(history(&s, "r-1", "alice", q(None, None, 100))
        .await
        .messages
        .is_empty());
    assert_eq!(
        s.append_entry(message("r-1", "alice", 201))
            .await
            .unwrap()
            .seq,
        54
    );
}

async fn deleting_a_room_removes_everything_of_it(s: SharedStore) {
    messages(&s).await;
    s.delete_room("r-1").await.unwrap();
    let dir = s.load_directory().await.unwrap();
    assert!(dir.iter().all(|e| e.room.room_id != "r-1"));
    assert!(history(&s, "r-1", "alice", q(None, None, 100))
        .await
        .messages
        .is_empty());
    assert!(matches!(
        s.append_entry(message("r-1", "alice", 202)).await,
        Err(StoreError::NotFound)
    ));
    // Its name is free, and a new room of that name starts at seq 1.
    create(&s, "r-4", "General", "alice").await.unwrap();
    assert_eq!(
        s.append_entry(message("r-4", "alice", 1))
            .await
            .unwrap()
            .seq,
        1
    );
}

/// Issue 20 item 4: who is left, who owns the room and whether an owner
/// may act are decided by the store when the write commits.
async fn leaving_and_owners_are_decided_at_commit(s: SharedStore) {
    people(&s).await;
    create(&s, "r-own", "Owned", "alice").await.unwrap();
    s.add_member("r-own", "bob", now_ms()).await.unwrap();
    s.add_member("r-own", "carol", now_ms() + 1).await.unwrap();
    s.append_entry(message("r-own", "alice", 1)).await.unwrap();
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
    assert!(history(&s, "r-own", "bob", q(None, None, 10))
        .await
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
async fn rejoin_before_any_message_keeps_history(s: SharedStore) {
    people(&s).await;
    create(&s, "r-rejoin", "Rejoin", "alice").await.unwrap();
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
            .append_entry(message("r-rejoin", "alice", id))
            .await
            .unwrap();
        sent.push(appended.seq);
        let page = history(&s, "r-rejoin", "bob", q(None, None, 10)).await;
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            sent,
            "bob rejoined: he reads what came after"
        );
    }
    s.delete_room("r-rejoin").await.unwrap();
}

fn device(user: &str, id: u8, key: u8) -> DeviceRecord {
    DeviceRecord {
        username: user.into(),
        device_id: vec![id; 16],
        certificate: vec![id, key, 0xce],
        mls_key: vec![key; 32],
        added_at: now_ms() + id as u64,
    }
}

async fn devices_are_recorded_once_and_keep_their_key(s: SharedStore) {
    people(&s).await;
    assert_eq!(
        s.add_device(device("alice", 1, 1), 3).await.unwrap(),
        DeviceAdded::Added
    );
    assert_eq!(
        s.add_device(device("alice", 2, 2), 3).await.unwrap(),
        DeviceAdded::Added
    );
    // The same device again: known; with another key: refused.
    let mut again = device("alice", 1, 1);
    again.certificate = vec![9, 9];
    assert_eq!(s.add_device(again, 3).await.unwrap(), DeviceAdded::Known);
    assert_eq!(
        s.add_device(device("alice", 1, 7), 3).await.unwrap(),
        DeviceAdded::OtherKey
    );
    // Another user's device of the same id is theirs.
    assert_eq!(
        s.add_device(device("bob", 1, 5), 3).await.unwrap(),
        DeviceAdded::Added
    );
    let listed: Vec<_> = s
        .list_devices("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.username, d.device_id, d.certificate, d.mls_key))
        .collect();
    let expected: Vec<_> = [device("alice", 1, 1), device("alice", 2, 2)]
        .into_iter()
        .map(|d| (d.username, d.device_id, d.certificate, d.mls_key))
        .collect();
    // Oldest first, and the first certificate stays.
    assert_eq!(listed, expected);
    assert!(s.list_devices("nobody").await.unwrap().is_empty());

    // A room's devices: its members' live ones only.
    create(&s, "r-d", "Devices", "alice").await.unwrap();
    s.add_member("r-d", "carol", now_ms()).await.unwrap();
    assert_eq!(
        s.add_device(device("carol", 3, 3), 3).await.unwrap(),
        DeviceAdded::Added
    );
    assert_eq!(
        s.add_device(device("carol", 4, 4), 3).await.unwrap(),
        DeviceAdded::Added
    );
    assert!(s.remove_device("carol", &[4; 16], now_ms()).await.unwrap());
    let mut in_room: Vec<_> = s
        .room_devices("r-d")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.username, d.device_id[0]))
        .collect();
    in_room.sort();
    let alice = "alice".to_owned();
    assert_eq!(
        in_room,
        vec![(alice.clone(), 1), (alice, 2), ("carol".to_owned(), 3)]
    );
    s.remove_member("r-d", "carol", false, None).await.unwrap();
    assert_eq!(s.room_devices("r-d").await.unwrap().len(), 2);
    assert!(s.room_devices("r-none").await.unwrap().is_empty());
}

async fn removed_devices_stay_out_and_count_toward_a_cap(s: SharedStore) {
    people(&s).await;
    let max = 2;
    assert_eq!(
        s.add_device(device("alice", 1, 1), max).await.unwrap(),
        DeviceAdded::Added
    );
    assert_eq!(
        s.add_device(device("alice", 2, 2), max).await.unwrap(),
        DeviceAdded::Added
    );
    assert_eq!(
        s.add_device(device("alice", 3, 3), max).await.unwrap(),
        DeviceAdded::TooMany
    );
    assert!(s.remove_device("alice", &[1; 16], now_ms()).await.unwrap());
    assert!(
        !s.remove_device("alice", &[1; 16], now_ms()).await.unwrap(),
        "removed once"
    );
    assert!(
        !s.remove_device("bob", &[2; 16], now_ms()).await.unwrap(),
        "not bob's"
    );
    assert_eq!(
        s.add_device(device("alice", 1, 1), max).await.unwrap(),
        DeviceAdded::Removed
    );
    let ids: Vec<_> = s
        .list_devices("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, vec![vec![2; 16]]);
    // Room for a new one now; but removed devices count toward the cap.
    let mut id = 3;
    loop {
        match s.add_device(device("alice", id, id), max).await.unwrap() {
            DeviceAdded::Added => {
                assert!(s.remove_device("alice", &[id; 16], now_ms()).await.unwrap());
                id += 1;
            }
            DeviceAdded::TooMany => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        u64::from(id) - 1,
        max * DEVICE_RECORDS_PER_LIVE,
        "records kept until the cap"
    );
}

async fn devices_added_at_once_stay_within_the_limit(s: SharedStore) {
    people(&s).await;
    let max = 4;
    let tries = (1..=12).map(|id| {
        let s = s.clone();
        tokio::spawn(async move { s.add_device(device("alice", id, id), max).await.unwrap() })
    });
    let results = futures_util::future::join_all(tries).await;
    let added = results
        .into_iter()
        .filter(|r| *r.as_ref().unwrap() == DeviceAdded::Added)
        .count();
    assert_eq!(added as u64, max);
    assert_eq!(s.list_devices("alice").await.unwrap().len() as u64, max);
}

fn group(id: u8) -> GroupRow {
    GroupRow {
        group_id: vec![id; 16],
        epoch: 0,
        state: vec![id, 0, 0],
        group_info: vec![id, 0xa1],
        removal_epoch: 0,
    }
}

/// A message from `sender`'s device `device` at `epoch`.
fn entry_message(room_id: &str, sender: &str, device: u8, msg: u8, epoch: u64) -> Arc<NewEntry> {
    Arc::new(NewEntry {
        room_id: room_id.into(),
        entry: LogEntry {
            kind: EntryKind::Message,
            sender: sender.into(),
            device_id: vec![device; 16],
            epoch,
            data: vec![msg; 40],
            msg_id: Some(vec![msg; 16]),
            group_info: None,
        },
        commit: None,
    })
}

/// A commit moving the group from `from` (with `removed` leaves).
fn entry_commit(room_id: &str, sender: &str, from: u64, removed: bool, tag: u8) -> Arc<NewEntry> {
    Arc::new(NewEntry {
        room_id: room_id.into(),
        entry: LogEntry {
            kind: EntryKind::Commit,
            sender: sender.into(),
            device_id: vec![1; 16],
            epoch: from + 1,
            data: vec![tag; 90],
            msg_id: None,
            group_info: Some(vec![tag, 0x61]),
        },
        commit: Some(GroupChange {
            from_epoch: from,
            state: vec![tag; 50],
            removed,
        }),
    })
}

async fn group_rooms_keep_their_group_and_are_unique(s: SharedStore) {
    people(&s).await;
    s.create_group_room(room("r-g1", "MLS", "alice"), group(1))
        .await
        .unwrap();
    assert_eq!(s.load_group("r-g1").await.unwrap(), Some(group(1)));
    assert_eq!(s.load_group("r-none").await.unwrap(), None);
    let state = s.load_room("r-g1").await.unwrap();
    assert_eq!(state.record.unwrap().owner, "alice");
    // The same name, or the same group under another room id: refused whole.
    for (id, name, g) in [("r-g2", "mls", group(2)), ("r-g3", "Other", group(1))] {
        assert!(matches!(
            s.create_group_room(room(id, name, "bob"), g).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.load_group(id).await.unwrap(), None);
    }
    let rooms: Vec<_> = s
        .load_directory()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.room.room_id)
        .collect();
    assert_eq!(rooms, vec!["r-g1".to_owned()]);
}

async fn the_log_orders_commits_and_messages_and_moves_the_group(s: SharedStore) {
    people(&s).await;
    s.create_group_room(room("r-g", "MLS", "alice"), group(1))
        .await
        .unwrap();
    let first = s
        .append_entry(entry_message("r-g", "alice", 1, 1, 0))
        .await
        .unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    let commit = s
        .append_entry(entry_commit("r-g", "alice", 0, false, 7))
        .await
        .unwrap();
    assert_eq!(commit.seq, 2);
    let g = s.load_group("r-g").await.unwrap().unwrap();
    assert_eq!(
        (
            g.epoch,
            g.state.clone(),
            g.group_info.clone(),
            g.removal_epoch
        ),
        (1, vec![7; 50], vec![7, 0x61], 0)
    );
    // A second commit for epoch 0 lost: nothing is written.
    assert!(matches!(
        s.append_entry(entry_commit("r-g", "bob", 0, false, 8))
            .await,
        Err(StoreError::StaleEpoch(1))
    ));
    assert_eq!(s.load_group("r-g").await.unwrap().unwrap(), g);
    // A resend answers the stored seq; the same msg_id from another device is new.
    let again = s
        .append_entry(entry_message("r-g", "alice", 1, 1, 0))
        .await
        .unwrap();
    assert_eq!((again.seq, again.ts, again.duplicate), (1, first.ts, true));
    let other = s
        .append_entry(entry_message("r-g", "alice", 2, 1, 1))
        .await
        .unwrap();
    assert_eq!((other.seq, other.duplicate), (3, false));
    // A removal commit sets the removal epoch; v2 messages share the counter.
    s.append_entry(entry_commit("r-g", "alice", 1, true, 9))
        .await
        .unwrap();
    let g = s.load_group("r-g").await.unwrap().unwrap();
    assert_eq!((g.epoch, g.removal_epoch), (2, 2));
    // publish_group_info: only at the current epoch.
    assert!(!s.set_group_info("r-g", 1, vec![1]).await.unwrap());
    assert!(s.set_group_info("r-g", 2, vec![2, 2]).await.unwrap());
    assert_eq!(
        s.load_group("r-g").await.unwrap().unwrap().group_info,
        vec![2, 2]
    );
    // The log, in seq order, whole.
    let log = s.entries_after("r-g", 0, 10).await.unwrap();
    let seqs: Vec<_> = log.iter().map(|e| (e.seq, e.entry.kind)).collect();
    assert_eq!(
        seqs,
        vec![
            (1, EntryKind::Message),
            (2, EntryKind::Commit),
            (3, EntryKind::Message),
            (4, EntryKind::Commit)
        ]
    );
    assert_eq!(log[0].entry, entry_message("r-g", "alice", 1, 1, 0).entry);
    assert_eq!(
        log[1].entry,
        entry_commit("r-g", "alice", 0, false, 7).entry
    );
    assert_eq!(s.entries_after("r-g", 2, 1).await.unwrap()[0].seq, 3);
    // Unknown rooms.
    assert!(matches!(
        s.append_entry(entry_message("r-none", "alice", 1, 1, 0))
            .await,
        Err(StoreError::NotFound)
    ));
    // Deleting the room takes its group and log.
    s.delete_room("r-g").await.unwrap();
    assert_eq!(s.load_group("r-g").await.unwrap(), None);
    assert!(s.entries_after("r-g", 0, 10).await.unwrap().is_empty());
}

async fn entry_history_holds_the_requesters_membership(s: SharedStore) {
    people(&s).await;
    s.create_group_room(room("r-g", "MLS", "alice"), group(1))
        .await
        .unwrap();
    s.append_entry(entry_message("r-g", "alice", 1, 1, 0))
        .await
        .unwrap();
    s.append_entry(entry_commit("r-g", "alice", 0, false, 2))
        .await
        .unwrap();
    s.add_member("r-g", "bob", now_ms()).await.unwrap();
    s.append_entry(entry_message("r-g", "alice", 1, 3, 1))
        .await
        .unwrap();
    s.append_entry(entry_message("r-g", "bob", 2, 4, 1))
        .await
        .unwrap();
    let q = |after: Option<u64>, before: Option<u64>, limit: usize| HistoryQuery {
        after_seq: after,
        before_seq: before,
        limit,
        max_bytes: usize::MAX,
    };
    let seqs = |h: &e2ee_chat::store::EntryHistory| -> Vec<u64> {
        h.page.messages.iter().map(|e| e.seq).collect()
    };
    let alice = s
        .entry_history("r-g", "alice", q(None, None, 10))
        .await
        .unwrap();
    assert_eq!(
        (seqs(&alice), alice.page.has_more, alice.first_seq),
        (vec![1, 2, 3, 4], false, 1)
    );
    assert_eq!(alice.page.messages[1].entry.kind, EntryKind::Commit);
    // Bob joined after seq 2: he reads from 3.
    let bob = s
        .entry_history("r-g", "bob", q(None, None, 10))
        .await
        .unwrap();
    assert_eq!((seqs(&bob), bob.first_seq), (vec![3, 4], 1));
    // Pages, newest first by default, oldest first after a seq.
    let newest = s
        .entry_history("r-g", "alice", q(None, None, 2))
        .await
        .unwrap();
    assert_eq!((seqs(&newest), newest.page.has_more), (vec![3, 4], true));
    let older = s
        .entry_history("r-g", "alice", q(None, Some(3), 2))
        .await
        .unwrap();
    assert_eq!(seqs(&older), vec![1, 2]);
    let after = s
        .entry_history("r-g", "alice", q(Some(2), None, 1))
        .await
        .unwrap();
    assert_eq!((seqs(&after), after.page.has_more), (vec![3], true));
    // Not a member: nothing.
    let carol = s
        .entry_history("r-g", "carol", q(None, None, 10))
        .await
        .unwrap();
    assert!(carol.page.messages.is_empty());
}

async fn retention_takes_old_entries_and_seq_goes_on(s: SharedStore) {
    people(&s).await;
    s.create_group_room(room("r-g", "MLS", "alice"), group(1))
        .await
        .unwrap();
    s.append_entry(entry_commit("r-g", "alice", 0, false, 1))
        .await
        .unwrap();
    for i in 2..=6 {
        s.append_entry(entry_message("r-g", "alice", 1, i, 1))
            .await
            .unwrap();
    }
    let policy = PurgePolicy {
        older_than_ts: 0,
        max_per_room: 2,
        batch: 3,
    };
    // Three a batch: the caller repeats while a full batch goes.
    assert_eq!(s.purge(policy).await.unwrap(), 3);
    assert_eq!(s.purge(policy).await.unwrap(), 1);
    assert_eq!(s.purge(policy).await.unwrap(), 0);
    let q = HistoryQuery {
        after_seq: None,
        before_seq: None,
        limit: 10,
        max_bytes: usize::MAX,
    };
    let h = s.entry_history("r-g", "alice", q).await.unwrap();
    let seqs: Vec<u64> = h.page.messages.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, h.first_seq), (vec![5, 6], 5));
    // The commit went too; the group stays where it is, and seq goes on.
    assert_eq!(s.load_group("r-g").await.unwrap().unwrap().epoch, 1);
    let next = s
        .append_entry(entry_message("r-g", "alice", 1, 7, 1))
        .await
        .unwrap();
    assert_eq!(next.seq, 7);
    // By age: everything older than now.
    let by_age = PurgePolicy {
        older_than_ts: now_ms() + 1,
        max_per_room: 0,
        batch: 100,
    };
    assert_eq!(s.purge(by_age).await.unwrap(), 3);
    assert!(s.entries_after("r-g", 0, 10).await.unwrap().is_empty());
}

async fn commits_racing_for_one_epoch_one_wins(s: SharedStore) {
    people(&s).await;
    s.create_group_room(room("r-g", "MLS", "alice"), group(1))
        .await
        .unwrap();
    let racers = (0..8u8).map(|tag| {
        let s = s.clone();
        tokio::spawn(async move {
            s.append_entry(entry_commit("r-g", "alice", 0, false, tag))
                .await
        })
    });
    let results = futures_util::future::join_all(racers).await;
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(|r| r.unwrap())
        .partition(|r| r.is_ok());
    assert_eq!(won.len(), 1, "exactly one commit for epoch 0");
    assert!(lost
        .iter()
        .all(|r| matches!(r, Err(StoreError::StaleEpoch(1)))));
    let log = s.entries_after("r-g", 0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    let g = s.load_group("r-g").await.unwrap().unwrap();
    assert_eq!(g.epoch, 1);
    // The group holds the winner's state.
    assert_eq!(g.state, vec![log[0].entry.data[0]; 50]);
}

type Case = fn(SharedStore) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |s| Box::pin($name(s)))),*]
    };
}

/// Every case, each run on a fresh store of every kind.
const CASES: &[(&str, Case)] = cases![
    users_are_unique_and_the_first_registration_wins,
    rooms_are_unique_by_folded_name_and_list_members_in_join_order,
    appends_take_gapless_seqs_and_are_deduplicated,
    appends_at_once_are_unique_gapless_and_in_submission_order,
    gap_fill_gives_whole_entries_after_a_seq,
    a_byte_cap_ends_the_page_next_to_the_cursor,
    removals_and_bans,
    room_updates_and_names,
    retention_keeps_the_newest_and_seq_never_goes_back,
    deleting_a_room_removes_everything_of_it,
    rejoin_before_any_message_keeps_history,
    leaving_and_owners_are_decided_at_commit,
    devices_are_recorded_once_and_keep_their_key,
    removed_devices_stay_out_and_count_toward_a_cap,
    devices_added_at_once_stay_within_the_limit,
    group_rooms_keep_their_group_and_are_unique,
    the_log_orders_commits_and_messages_and_moves_the_group,
    commits_racing_for_one_epoch_one_wins,
    entry_history_holds_the_requesters_membership,
    retention_takes_old_entries_and_seq_goes_on,
];

/// The websocket scenario of the server core, on whatever store `tweak`
/// selects: register, log in, a password room, a join by external commit,
/// messages both ways, then a restart, the directory, history and the
/// group as stored.
async fn websocket_scenario(tweak: impl Fn(&mut Settings) + Copy) {
    use common::phone::Phone;
    let mut t = common::TestServer::with(tweak);
    let url = t.url();
    let mut alice = Phone::register(&url, "alice", 0).await;
    let rid = alice
        .create_with("Scenario", Some("pw"), false)
        .await
        .unwrap()
        .room_id;
    let mut bob = Phone::register(&url, "bob", 1).await;
    bob.join(&rid, Some("pw")).await.unwrap();
    bob.enter().await;
    alice.catch_up_to(bob.applied).await;
    for i in 0..3 {
        alice.say(&format!("message {i}")).await;
    }
    let heard = bob.catch_up_to(alice.applied).await;
    assert_eq!(heard, ["message 0", "message 1", "message 2"]);
    t.restart_with(tweak).await;
    let url = t.url();
    bob.reconnect(&url).await;
    let (rooms, _, _) = bob.rooms(None, None).await;
    assert_eq!(
        (
            rooms.len(),
            rooms[0].members,
            rooms[0].last_seq,
            rooms[0].epoch
        ),
        (1, 2, 4, 1)
    );
    let log = bob.history_after(0).await;
    assert_eq!(log.len(), 4, "the external commit and three messages");
    alice.reconnect(&url).await;
    let seq = alice.say("after restart").await;
    assert_eq!(seq, 5);
    assert_eq!(bob.catch_up_to(seq).await, ["after restart"]);
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

    fn fail(&mut self, name: &str, why: impl std::fmt::Display) {
        println!("test {name} ... FAILED: {why}");
        self.failed += 1;
    }
}

/// The store kinds, each opened fresh per case.
#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
    Mongo,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mongo => "mongodb",
        }
    }

    /// Why this kind cannot run here, if it cannot.
    fn unavailable(self) -> Option<&'static str> {
        let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
        match self {
            Kind::Sqlite => None,
            Kind::Postgres => (!set("CHAT_TEST_POSTGRES_URL")).then_some(
                "CHAT_TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)",
            ),
            Kind::Mongo => (!set("CHAT_TEST_MONGODB_URI")).then_some(
                "CHAT_TEST_MONGODB_URI is not set (e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0)",
            ),
        }
    }

    /// Runs one case on a fresh store of this kind, then drops the store's data.
    async fn run_case(self, tally: &mut Tally, name: &str, case: Case) {
        let name = format!("{} {name}", self.label());
        match self {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                match SqliteStore::open(&dir.path().join("c.db"), 64) {
                    Ok(s) => tally.run(&name, closing(Arc::new(s), case)).await,
                    Err(e) => tally.fail(&name, e),
                }
            }
            Kind::Postgres => match common::PgDatabase::create().await {
                Err(e) => tally.fail(&name, e),
                Ok(db) => {
                    match PostgresStore::connect(&db.url, 64).await {
                        Ok(s) => tally.run(&name, closing(Arc::new(s), case)).await,
                        Err(e) => tally.fail(&name, format!("cannot connect: {e}")),
                    }
                    db.drop_now().await;
                }
            },
            Kind::Mongo => {
                let uri = std::env::var("CHAT_TEST_MONGODB_URI").unwrap();
                let db = mongo_database();
                match MongoStore::connect(&uri, Some(&db)).await {
                    Ok(s) => tally.run(&name, closing(Arc::new(s), case)).await,
                    Err(e) => tally.fail(&name, format!("cannot connect: {e}")),
                }
                drop_mongo(&uri, &db).await;
            }
        }
    }

    /// The websocket scenario on a server using this kind of store.
    async fn run_scenario(self, tally: &mut Tally) {
        let name = format!("{} websocket scenario", self.label());
        match self {
            Kind::Sqlite => tally.run(&name, websocket_scenario(|_| {})).await,
            Kind::Postgres => match common::PgDatabase::create().await {
                Err(e) => tally.fail(&name, e),
                Ok(db) => {
                    // `websocket_scenario` wants a Copy closure: leak the URL once.
                    let url: &'static str = Box::leak(db.url.clone().into_boxed_str());
                    tally
                        .run(
                            &name,
                            websocket_scenario(move |s: &mut Settings| s.store.url = url.into()),
                        )
                        .await;
                    db.drop_now().await;
                }
            },
            Kind::Mongo => {
                let uri: &'static str = Box::leak(
                    std::env::var("CHAT_TEST_MONGODB_URI")
                        .unwrap()
                        .into_boxed_str(),
                );
                let db: &'static str = Box::leak(mongo_database().into_boxed_str());
                tally
                    .run(
                        &name,
                        websocket_scenario(move |s: &mut Settings| {
                            s.store.url = uri.into();
                            s.store.database = db.into();
                        }),
                    )
                    .await;
                drop_mongo(uri, db).await;
            }
        }
    }
}

/// Runs the case, then closes the store.
async fn closing(s: SharedStore, case: Case) {
    case(s.clone()).await;
    s.close().await.unwrap();
}

fn mongo_database() -> String {
    format!(
        "e2ee_chat_test_{}",
        hex::encode(e2ee_chat::crypto::random_bytes::<6>())
    )
}

async fn drop_mongo(uri: &str, db: &str) {
    if let Ok(client) = mongodb::Client::with_uri_str(uri).await {
        let _ = client.database(db).drop().await;
    }
}

fn main() {
    // Like libtest: the first free argument filters by name.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tally = rt.block_on(async {
        let mut tally = Tally::default();
        for kind in [Kind::Sqlite, Kind::Postgres, Kind::Mongo] {
            let chosen: Vec<_> = CASES
                .iter()
                .filter(|(name, _)| format!("{} {name}", kind.label()).contains(&filter))
                .collect();
            let scenario = format!("{} websocket scenario", kind.label()).contains(&filter);
            if let Some(why) = kind.unavailable() {
                println!("SKIP {}: {why}", kind.label());
                tally.skipped += chosen.len() + usize::from(scenario);
                continue;
            }
            for (name, case) in chosen {
                kind.run_case(&mut tally, name, *case).await;
            }
            if scenario {
                kind.run_scenario(&mut tally).await;
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
