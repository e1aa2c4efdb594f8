//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the only writing connection. It takes every write
//! that is waiting (up to `max_batch`), runs each inside its own SAVEPOINT
//! within one transaction, commits once (one fsync for the whole batch), and
//! only then completes each write's future: group commit. A failed write
//! rolls back to its savepoint and fails alone; a failed COMMIT fails the
//! whole batch and drops the writer's cached per-room seq counters, so seq is
//! reloaded from disk and never skips. Batches complete in submission order.
//!
//! Reads run on two reader threads with their own connections; WAL lets them
//! read committed data while the writer works. A third thread checkpoints
//! the WAL every 200 ms (PASSIVE), so commits never pay for a checkpoint.
//!
//! A message's wrapped keys are one blob in its row (see [`encode_keys`]):
//! one insert per message however large the room. History finds a user's
//! messages through `member_periods` (the seq ranges during which the user
//! was a member) and takes the user's key out of each row's blob, skipping
//! the rare row without one (a member who joined while it was in flight).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::keyblob::{decode_keys, encode_keys, find_key};
use super::{
    Appended, DirectoryEntry, HistoryPage, HistoryQuery, MemberRecord, NewMessage, PageBuilder,
    PurgePolicy, Removed, RoomMessage, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredMessage, UserRecord,
};
use crate::metrics;
use crate::util::now_ms;
use crate::validate::{fold_room_name, room_name_key, HIDDEN_KEY};

const READERS: usize = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    sign_key   BLOB NOT NULL,
    enc_key    BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    name_folded   TEXT NOT NULL UNIQUE,
    owner         TEXT NOT NULL,
    password_hash TEXT,
    hidden        INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    UNIQUE (room_id, username)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (username);
CREATE TABLE IF NOT EXISTS bans (
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, username)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    room_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    msg_id     BLOB NOT NULL,
    sender     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    key_commitment BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    signature  BLOB NOT NULL,
    keys       BLOB NOT NULL,
    PRIMARY KEY (room_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room_id, sender, msg_id);
CREATE INDEX IF NOT EXISTS messages_by_ts ON messages (ts);
CREATE TABLE IF NOT EXISTS member_periods (
    room_id  TEXT NOT NULL,
    username TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER,
    PRIMARY KEY (room_id, username, from_seq)
) WITHOUT ROWID;
";

/// State only the writer thread touches.
#[derive(Default)]
struct WriterState {
    /// Cached `rooms.last_seq`, dropped whenever a commit fails.
    last_seq: HashMap<String, u64>,
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type WriteJob = Box<dyn FnOnce(&Connection, &mut WriterState) -> Completion + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

enum WriteOp {
    Job(WriteJob),
    Close(oneshot::Sender<()>),
}

enum ReadOp {
    Job(ReadJob),
    Close,
}

pub struct SqliteStore {
    writes: Sender<WriteOp>,
    reads: Sender<ReadOp>,
    /// Dropping (or sending on) this stops the checkpoint thread.
    checkpoints: Sender<()>,
}

/// How often the checkpoint thread copies the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// The schema version this code writes (`PRAGMA user_version`).
///
/// 2: protocol v2 (messages carry `key_commitment`). A version-1 database
/// holds v1 messages that no v2 client can verify, so it is refused.
const SCHEMA_VERSION: i64 = 2;

/// Creates the schema in a new database; refuses one of another version
/// rather than guessing.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if version != SCHEMA_VERSION && (version != 0 || tables > 0) {
        return Err(StoreError::Unavailable(format!(
            "{} has schema version {version}; this server uses version {SCHEMA_VERSION}",
            path.display()
        )));
    }
    conn.execute_batch(SCHEMA).map_err(backend)?;
    // Hidden rooms stored before their names stopped being unique keys.
    conn.execute(
        "UPDATE rooms SET name_folded = ?1 || room_id WHERE hidden AND name_folded <> ?1 || room_id",
        params![HIDDEN_KEY],
    )
    .map_err(backend)?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .map_err(backend)
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(backend)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and starts the writer and
    /// reader threads. `max_batch = 1` turns group commit off.
    pub fn open(path: &Path, max_batch: usize) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let writer = open_connection(path)?;
        migrate(&writer, path)?;
        // Checkpoints run on their own thread (PASSIVE: they never block the
        // writer), so no commit waits while 4 MB of WAL is copied back.
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(backend)?;
        let (ctx, crx) = unbounded::<()>();
        let checkpointer = open_connection(path)?;
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    crx.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        log::warn!("sqlite checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (wtx, wrx) = unbounded();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, wrx, max_batch.max(1)))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (rtx, rrx) = unbounded::<ReadOp>();
        for i in 0..READERS {
            let conn = open_connection(path)?;
            let rx = rrx.clone();
            thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || {
                    while let Ok(ReadOp::Job(job)) = rx.recv() {
                        job(&conn);
                    }
                })
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        log::info!(
            "sqlite store open at {} (group commit batch {max_batch})",
            path.display()
        );
        Ok(SqliteStore {
            writes: wtx,
            reads: rtx,
            checkpoints: ctx,
        })
    }

    fn write<T, F>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn, state| {
            let result = in_savepoint(conn, |c| f(c, state));
            Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            })
        });
        let sent = self.writes.send(WriteOp::Job(job)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(closed());
            }
            rx.await.map_err(|_| closed())?
        })
    }

    fn read<T, F>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .reads
            .send(ReadOp::Job(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            })))
            .is_ok();
        Box::pin(async move {
            if !sent {
                return Err(closed());
            }
            rx.await.map_err(|_| closed())?
        })
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT op").map_err(backend)?;
    let result = f(conn);
    let end = if result.is_ok() {
        "RELEASE op"
    } else {
        "ROLLBACK TO op; RELEASE op"
    };
    conn.execute_batch(end).map_err(backend)?;
    result
}

fn writer_loop(conn: Connection, rx: Receiver<WriteOp>, max_batch: usize) {
    let mut state = WriterState::default();
    let mut closing = None;
    while closing.is_none() {
        let first = match rx.recv() {
            Ok(WriteOp::Job(job)) => job,
            Ok(WriteOp::Close(done)) => {
                closing = Some(done);
                break;
            }
            Err(_) => break,
        };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(WriteOp::Job(job)) => jobs.push(job),
                Ok(WriteOp::Close(done)) => {
                    closing = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let begin = conn.execute_batch("BEGIN IMMEDIATE").map_err(backend);
        let completions: Vec<Completion> = match &begin {
            Ok(()) => jobs.into_iter().map(|job| job(&conn, &mut state)).collect(),
            Err(_) => Vec::new(),
        };
        let commit = begin.and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
        if commit.is_ok() {
            metrics::observe_commit(completions.len(), started.elapsed());
        }
        if let Err(e) = &commit {
            log::error!("sqlite commit of {} writes failed: {e}", completions.len());
            let _ = conn.execute_batch("ROLLBACK");
            state.last_seq.clear();
        }
        for done in completions {
            done(commit.clone());
        }
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
    log::info!("sqlite writer stopped");
}

fn user_from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        username: row.get(offset)?,
        sign_key: row.get(offset + 1)?,
        enc_key: row.get(offset + 2)?,
        created_at: row.get::<_, i64>(offset + 3)? as u64,
    })
}

const ROOM_COLUMNS: &str =
    "SELECT room_id, name, owner, password_hash, hidden, created_at, last_seq FROM rooms";

fn room_from_row(r: &rusqlite::Row) -> rusqlite::Result<RoomRecord> {
    Ok(RoomRecord {
        room_id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        password_hash: r.get(3)?,
        hidden: r.get(4)?,
        created_at: r.get::<_, i64>(5)? as u64,
        last_seq: r.get::<_, i64>(6)? as u64,
    })
}

const MESSAGE_COLUMNS: &str =
    "SELECT seq, ts, msg_id, sender, nonce, ciphertext, signature, keys, key_commitment
     FROM messages WHERE room_id = ?1 AND seq BETWEEN ?2 AND ?3";

fn history_page(
    conn: &Connection,
    room_id: &str,
    username: &str,
    q: HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    const OPEN: i64 = i64::MAX;
    let lo = q
        .after_seq
        .map_or(1, |a| a.saturating_add(1).min(OPEN as u64) as i64);
    let hi = q
        .before_seq
        .map_or(OPEN, |b| b.saturating_sub(1).min(OPEN as u64) as i64);
    let ascending = q.ascending();
    let mut periods: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT from_seq, IFNULL(to_seq, 9223372036854775807) FROM member_periods
             WHERE room_id = ?1 AND username = ?2 ORDER BY from_seq",
        )
        .and_then(|mut s| {
            s.query_map(params![room_id, username], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(backend)?;
    if !ascending {
        periods.reverse();
    }
    let sql = format!(
        "{MESSAGE_COLUMNS} ORDER BY seq {}",
        if ascending { "ASC" } else { "DESC" }
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut page = PageBuilder::new(q);
    'periods: for (from, to) in periods {
        let (a, b) = (from.max(lo), to.min(hi));
        if a > b {
            continue;
        }
        let mut rows = stmt.query(params![room_id, a, b]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let blob: Vec<u8> = row.get(7).map_err(backend)?;
            let Some(key) = find_key(&blob, username) else {
                continue;
            };
            let more = page.push(StoredMessage {
                seq: row.get::<_, i64>(0).map_err(backend)? as u64,
                ts: row.get::<_, i64>(1).map_err(backend)? as u64,
                msg_id: row.get(2).map_err(backend)?,
                sender: row.get(3).map_err(backend)?,
                nonce: row.get(4).map_err(backend)?,
                ciphertext: row.get(5).map_err(backend)?,
                signature: row.get(6).map_err(backend)?,
                key_commitment: row.get(8).map_err(backend)?,
                key,
            });
            if !more {
                break 'periods;
            }
        }
    }
    Ok(page.finish())
}

/// Opens a membership period at the room's next seq. A period that starts
/// there already was closed before any message came (a leave and a rejoin
/// with nothing between): it is reopened, or the member would never read
/// what comes next.
fn open_period(c: &Connection, room_id: &str, username: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO member_periods (room_id, username, from_seq, to_seq)
         SELECT room_id, ?2, last_seq + 1, NULL FROM rooms WHERE room_id = ?1
         ON CONFLICT (room_id, username, from_seq) DO UPDATE SET to_seq = NULL",
    )
    .and_then(|mut s| s.execute(params![room_id, username]))
    .map(|_| ())
    .map_err(backend)
}

/// Closes a user's open membership period at the room's current seq.
fn close_period(c: &Connection, room_id: &str, username: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE member_periods SET to_seq = (SELECT last_seq FROM rooms WHERE room_id = ?1)
         WHERE room_id = ?1 AND username = ?2 AND to_seq IS NULL",
    )
    .and_then(|mut s| s.execute(params![room_id, username]))
    .map(|_| ())
    .map_err(backend)
}

fn append(
    conn: &Connection,
    state: &mut WriterState,
    msg: Arc<NewMessage>,
) -> Result<Appended, StoreError> {
    let existing = conn
        .prepare_cached(
            "SELECT seq, ts FROM messages WHERE room_id = ?1 AND sender = ?2 AND msg_id = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![msg.room_id, msg.sender, msg.msg_id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()
        })
        .map_err(backend)?;
    if let Some((seq, ts)) = existing {
        return Ok(Appended {
            seq,
            ts,
            duplicate: true,
        });
    }
    let last = match state.last_seq.get(&msg.room_id) {
        Some(&last) => last,
        None => conn
            .query_row(
                "SELECT last_seq FROM rooms WHERE room_id = ?1",
                params![msg.room_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(backend)?
            .ok_or(StoreError::NotFound)? as u64,
    };
    let seq = last + 1;
    let ts = now_ms();
    conn.prepare_cached(
        "INSERT INTO messages (room_id, seq, ts, msg_id, sender, nonce, ciphertext, signature, keys,
                               key_commitment)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            msg.room_id,
            seq as i64,
            ts as i64,
            msg.msg_id,
            msg.sender,
            msg.nonce,
            msg.ciphertext,
            msg.signature,
            encode_keys(&msg.keys),
            msg.key_commitment
        ])
    })
    .map_err(backend)?;
    conn.prepare_cached("UPDATE rooms SET last_seq = ?2 WHERE room_id = ?1")
        .and_then(|mut s| s.execute(params![msg.room_id, seq as i64]))
        .map_err(backend)?;
    state.last_seq.insert(msg.room_id.clone(), seq);
    Ok(Appended {
        seq,
        ts,
        duplicate: false,
    })
}

/// Deletes the given messages.
fn delete_messages(conn: &Connection, doomed: &[(String, i64)]) -> Result<u64, StoreError> {
    let mut del = conn
        .prepare_cached("DELETE FROM messages WHERE room_id = ?1 AND seq = ?2")
        .map_err(backend)?;
    for (room, seq) in doomed {
        del.execute(params![room, seq]).map_err(backend)?;
    }
    Ok(doomed.len() as u64)
}

fn purge_batch(conn: &Connection, policy: PurgePolicy) -> Result<u64, StoreError> {
    let batch = policy.batch.max(1) as i64;
    let mut doomed: Vec<(String, i64)> = Vec::new();
    if policy.older_than_ts > 0 {
        let mut stmt = conn
            .prepare_cached("SELECT room_id, seq FROM messages WHERE ts < ?1 ORDER BY ts LIMIT ?2")
            .map_err(backend)?;
        doomed = stmt
            .query_map(params![policy.older_than_ts as i64, batch], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
    }
    if policy.max_per_room > 0 && (doomed.len() as i64) < batch {
        let rooms: Vec<String> = conn
            .prepare_cached("SELECT room_id FROM rooms")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(backend)?;
        for room in rooms {
            let room_limit = batch - doomed.len() as i64;
            if room_limit <= 0 {
                break;
            }
            // The newest seq that falls outside the kept window, if any.
            let cutoff: Option<i64> = conn
                .prepare_cached(
                    "SELECT seq FROM messages WHERE room_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![room, policy.max_per_room as i64], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if let Some(cutoff) = cutoff {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq FROM messages WHERE room_id = ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(backend)?;
                let seqs: Vec<i64> = stmt
                    .query_map(params![room, cutoff, room_limit], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<_, _>>()
                    .map_err(backend)?;
                doomed.extend(seqs.into_iter().map(|s| (room.clone(), s)));
            }
        }
    }
    doomed.sort();
    doomed.dedup();
    delete_messages(conn, &doomed)
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreFuture<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    fn create_user(&self, user: UserRecord) -> StoreFuture<()> {
        self.write(move |c, _| {
            c.execute(
                "INSERT INTO users (username, sign_key, enc_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![user.username, user.sign_key, user.enc_key, user.created_at as i64],
            )
            .map(|_| ())
            .map_err(backend)
        })
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT username, sign_key, enc_key, created_at FROM users WHERE username = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![username], |r| user_from_row(r, 0))
                    .optional()
            })
            .map_err(backend)
        })
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.read(|c| {
            let mut rooms: Vec<DirectoryEntry> = c
                .prepare(&format!("{ROOM_COLUMNS} ORDER BY created_at, room_id"))
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok(DirectoryEntry {
                            room: room_from_row(r)?,
                            members: Vec::new(),
                        })
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let index: HashMap<String, usize> = rooms
                .iter()
                .enumerate()
                .map(|(i, e)| (e.room.room_id.clone(), i))
                .collect();
            let mut stmt = c
                .prepare("SELECT room_id, username FROM members ORDER BY rowid")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(backend)?;
            for row in rows {
                let (room_id, username) = row.map_err(backend)?;
                if let Some(&i) = index.get(&room_id) {
                    rooms[i].members.push(username);
                }
            }
            Ok(rooms)
        })
    }

    fn create_room(&self, room: RoomRecord) -> StoreFuture<()> {
        self.write(move |c, _| {
            c.execute(
                "INSERT INTO rooms (room_id, name, name_folded, owner, password_hash, hidden, created_at, last_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
                params![
                    room.room_id,
                    room.name,
                    room_name_key(&room.name, room.hidden, &room.room_id),
                    room.owner,
                    room.password_hash,
                    room.hidden,
                    room.created_at as i64
                ],
            )
            .map_err(backend)?;
            c.execute(
                "INSERT INTO members (room_id, username, joined_at) VALUES (?1, ?2, ?3)",
                params![room.room_id, room.owner, room.created_at as i64],
            )
            .map_err(backend)?;
            open_period(c, &room.room_id, &room.owner)?;
            Ok(())
        })
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.read(move |c| {
            let members = c
                .prepare_cached(
                    "SELECT u.username, u.sign_key, u.enc_key, u.created_at, m.joined_at
                     FROM members m JOIN users u ON u.username = m.username
                     WHERE m.room_id = ?1 ORDER BY m.rowid",
                )
                .and_then(|mut s| {
                    s.query_map(params![room_id], |r| {
                        Ok(MemberRecord {
                            user: user_from_row(r, 0)?,
                            joined_at: r.get::<_, i64>(4)? as u64,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            let bans = c
                .prepare_cached("SELECT username FROM bans WHERE room_id = ?1")
                .and_then(|mut s| s.query_map(params![room_id], |r| r.get(0))?.collect())
                .map_err(backend)?;
            let record = c
                .prepare_cached(&format!("{ROOM_COLUMNS} WHERE room_id = ?1"))
                .and_then(|mut s| s.query_row(params![room_id], room_from_row).optional())
                .map_err(backend)?;
            Ok(RoomState {
                record,
                members,
                bans,
            })
        })
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.write(move |c, _| {
            if let Some(by) = &update.by {
                check_owner(c, &room_id, by)?;
            }
            if let Some(name) = &update.name {
                // A hidden room's name key is its id (validate::room_name_key).
                c.execute(
                    "UPDATE rooms SET name = ?2,
                         name_folded = CASE WHEN hidden THEN name_folded ELSE ?3 END
                     WHERE room_id = ?1",
                    params![room_id, name, fold_room_name(name)],
                )
                .map_err(backend)?;
            }
            if let Some(owner) = &update.owner {
                c.execute(
                    "UPDATE rooms SET owner = ?2 WHERE room_id = ?1",
                    params![room_id, owner],
                )
                .map_err(backend)?;
            }
            if let Some(hash) = &update.password_hash {
                c.execute(
                    "UPDATE rooms SET password_hash = ?2 WHERE room_id = ?1",
                    params![room_id, hash],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.write(move |c, state| delete_room(c, state, &room_id))
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.write(move |c, _| {
            let banned = c
                .prepare_cached("SELECT 1 FROM bans WHERE room_id = ?1 AND username = ?2")
                .and_then(|mut s| s.exists(params![room_id, username]))
                .map_err(backend)?;
            if banned {
                return Err(StoreError::Banned);
            }
            let added = c
                .execute(
                    "INSERT OR IGNORE INTO members (room_id, username, joined_at) VALUES (?1, ?2, ?3)",
                    params![room_id, username, joined_at as i64],
                )
                .map_err(backend)?;
            if added > 0 {
                open_period(c, &room_id, &username)?;
            }
            Ok(())
        })
    }

    fn remove_member(
        &self,
        room_id: &str,
        username: &str,
        ban: bool,
        by: Option<&str>,
    ) -> StoreFuture<Removed> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        let by = by.map(str::to_owned);
        self.write(move |c, state| {
            if let Some(by) = &by {
                check_owner(c, &room_id, by)?;
            }
            let removed = c
                .execute(
                    "DELETE FROM members WHERE room_id = ?1 AND username = ?2",
                    params![room_id, username],
                )
                .map_err(backend)?;
            if removed > 0 {
                close_period(c, &room_id, &username)?;
            }
            if ban {
                set_ban(c, &room_id, &username, true)?;
            }
            let remaining: i64 = c
                .prepare_cached("SELECT count(*) FROM members WHERE room_id = ?1")
                .and_then(|mut s| s.query_row(params![room_id], |r| r.get(0)))
                .map_err(backend)?;
            if remaining == 0 {
                delete_room(c, state, &room_id)?;
                return Ok(Removed {
                    remaining: 0,
                    owner: None,
                });
            }
            // The owner left: the earliest-joined member takes over.
            c.prepare_cached(
                "UPDATE rooms SET owner = (SELECT username FROM members WHERE room_id = ?1
                                           ORDER BY joined_at, username LIMIT 1)
                 WHERE room_id = ?1 AND owner = ?2",
            )
            .and_then(|mut s| s.execute(params![room_id, username]))
            .map_err(backend)?;
            let owner: Option<String> = c
                .prepare_cached("SELECT owner FROM rooms WHERE room_id = ?1")
                .and_then(|mut s| s.query_row(params![room_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            Ok(Removed {
                remaining: remaining as u64,
                owner,
            })
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.write(move |c, _| set_ban(c, &room_id, &username, banned))
    }

    fn append_message(&self, msg: Arc<NewMessage>) -> StoreFuture<Appended> {
        self.write(move |c, state| append(c, state, msg))
    }

    fn messages_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<RoomMessage>> {
        let room_id = room_id.to_owned();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{MESSAGE_COLUMNS} ORDER BY seq LIMIT ?4"))
                .map_err(backend)?;
            let lo = after_seq.saturating_add(1).min(i64::MAX as u64) as i64;
            let rows = stmt
                .query_map(params![room_id, lo, i64::MAX, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        NewMessage {
                            room_id: room_id.clone(),
                            msg_id: r.get(2)?,
                            sender: r.get(3)?,
                            nonce: r.get(4)?,
                            ciphertext: r.get(5)?,
                            signature: r.get(6)?,
                            keys: Vec::new(),
                            key_commitment: r.get(8)?,
                            check_members: false,
                        },
                        r.get::<_, Vec<u8>>(7)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(backend)?;
            rows.into_iter()
                .map(|(seq, ts, mut message, blob)| {
                    message.keys = decode_keys(&blob)
                        .ok_or_else(|| StoreError::Backend(format!("bad key blob at seq {seq}")))?;
                    Ok(RoomMessage { seq, ts, message })
                })
                .collect()
        })
    }

    fn find_message(
        &self,
        room_id: &str,
        sender: &str,
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let (room_id, sender, msg_id) = (room_id.to_owned(), sender.to_owned(), msg_id.to_vec());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT seq, ts FROM messages WHERE room_id = ?1 AND sender = ?2 AND msg_id = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![room_id, sender, msg_id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()
            })
            .map_err(backend)
        })
    }

    fn history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<HistoryPage> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.read(move |c| history_page(c, &room_id, &username, query))
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.write(move |c, _| purge_batch(c, policy))
    }

    fn close(&self) -> StoreFuture<()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.send(WriteOp::Close(tx)).is_ok();
        for _ in 0..READERS {
            let _ = self.reads.send(ReadOp::Close);
        }
        let _ = self.checkpoints.send(());
        Box::pin(async move {
            if sent {
                let _ = rx.await;
            }
            Ok(())
        })
    }
}

/// `NotOwner` unless `by` is the room's recorded owner and a member.
fn check_owner(c: &Connection, room_id: &str, by: &str) -> Result<(), StoreError> {
    let owner = c
        .prepare_cached(
            "SELECT 1 FROM rooms r JOIN members m ON m.room_id = r.room_id AND m.username = r.owner
             WHERE r.room_id = ?1 AND r.owner = ?2",
        )
        .and_then(|mut s| s.exists(params![room_id, by]))
        .map_err(backend)?;
    if owner {
        Ok(())
    } else {
        Err(StoreError::NotOwner)
    }
}

/// Deletes a room and everything of it.
fn delete_room(c: &Connection, state: &mut WriterState, room_id: &str) -> Result<(), StoreError> {
    for table in ["messages", "member_periods", "members", "bans", "rooms"] {
        c.execute(
            &format!("DELETE FROM {table} WHERE room_id = ?1"),
            params![room_id],
        )
        .map_err(backend)?;
    }
    state.last_seq.remove(room_id);
    Ok(())
}

fn set_ban(c: &Connection, room_id: &str, username: &str, banned: bool) -> Result<(), StoreError> {
    let sql = if banned {
        "INSERT OR IGNORE INTO bans (room_id, username, banned_at) VALUES (?1, ?2, ?3)"
    } else {
        "DELETE FROM bans WHERE room_id = ?1 AND username = ?2 AND ?3 IS NOT NULL"
    };
    c.execute(sql, params![room_id, username, now_ms() as i64])
        .map(|_| ())
        .map_err(backend)
}
