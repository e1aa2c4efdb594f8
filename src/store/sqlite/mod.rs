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
//! the WAL every 200 ms, so commits never pay for a checkpoint, and keeps
//! it from growing without end under steady writes (`checkpoint`).
//!
//! A room's log is the `entries` table (commits and MLS messages, one seq
//! order); its group's public state is one `groups` row. History finds a
//! user's entries through `member_periods` (the seq ranges during which the
//! user was a member).
//!
//! Files: `schema` (tables, version check, connection settings),
//! `checkpoint` (the checkpoint thread), `writes`
//! (what runs on the writer), `reads` (what runs on the readers). The
//! history walk and retention's plan are the shared ones of
//! [`crate::store::page`] and [`crate::store::purge`]; this store answers
//! their questions synchronously, so their futures complete on first poll
//! ([`now`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Sender};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::batch::{Batches, WriteQueue};
use super::{
    Appended, DeviceAdded, DeviceRecord, DirectoryEntry, EntryHistory, GroupRow, HistoryQuery,
    NewEntry, PurgePolicy, Removed, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredEntry, UserRecord,
};
use crate::metrics;
use schema::{backend, migrate, open_connection};
use writes::WriterState;

mod checkpoint;
mod reads;
mod schema;
mod writes;

const READERS: usize = 2;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type WriteJob = Box<dyn FnOnce(&Connection, &mut WriterState) -> Completion + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

enum ReadOp {
    Job(ReadJob),
    Close,
}

pub struct SqliteStore {
    writes: WriteQueue<WriteJob>,
    reads: Sender<ReadOp>,
    /// Dropping (or sending on) this stops the checkpoint thread.
    checkpoints: Sender<()>,
}

/// The result of a future that never waits: this store's answers to the
/// shared page walk and purge plan are synchronous.
fn now<T>(f: impl Future<Output = T>) -> T {
    use futures_util::FutureExt;
    f.now_or_never()
        .expect("SQLite's shared-algorithm futures complete at once")
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
        // Checkpoints run on their own thread, so no commit waits while the
        // WAL is copied back; a WAL that starts over is trimmed to the limit.
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
                checkpoint::WAL_SIZE_LIMIT
            ))
            .map_err(backend)?;
        let (ctx, crx) = unbounded::<()>();
        let long = checkpoint::WalLong::default();
        checkpoint::spawn(open_connection(path)?, long.clone(), crx)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (writes, batches) = WriteQueue::new(max_batch);
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, batches, long))
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
            writes,
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
        let sent = self.writes.submit(job);
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

fn writer_loop(conn: Connection, mut batches: Batches<WriteJob>, long: checkpoint::WalLong) {
    let mut state = WriterState::default();
    while let Some(jobs) = batches.blocking_next() {
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
        long.after_commit(&conn);
    }
    drop(conn);
    batches.finish();
    log::info!("sqlite writer stopped");
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreFuture<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    fn create_user(&self, user: UserRecord) -> StoreFuture<()> {
        self.write(move |c, _| writes::create_user(c, &user))
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| reads::get_user(c, &username))
    }

    fn add_device(&self, device: DeviceRecord, max: u64) -> StoreFuture<DeviceAdded> {
        self.write(move |c, _| writes::add_device(c, &device, max))
    }

    fn list_devices(&self, username: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let username = username.to_owned();
        self.read(move |c| reads::list_devices(c, &username))
    }

    fn room_devices(&self, room_id: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let room_id = room_id.to_owned();
        self.read(move |c| reads::room_devices(c, &room_id))
    }

    fn remove_device(&self, username: &str, device_id: &[u8], at: u64) -> StoreFuture<bool> {
        let (username, device_id) = (username.to_owned(), device_id.to_vec());
        self.write(move |c, _| writes::remove_device(c, &username, &device_id, at))
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.read(reads::load_directory)
    }

    fn create_group_room(&self, room: RoomRecord, group: GroupRow) -> StoreFuture<()> {
        self.write(move |c, _| writes::create_group_room(c, &room, &group))
    }

    fn load_group(&self, room_id: &str) -> StoreFuture<Option<GroupRow>> {
        let room_id = room_id.to_owned();
        self.read(move |c| reads::load_group(c, &room_id))
    }

    fn append_entry(&self, entry: Arc<NewEntry>) -> StoreFuture<Appended> {
        self.write(move |c, state| writes::append_entry(c, state, &entry))
    }

    fn entries_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEntry>> {
        let room_id = room_id.to_owned();
        self.read(move |c| reads::entries_after(c, &room_id, after_seq, limit))
    }

    fn entry_history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<EntryHistory> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.read(move |c| reads::entry_history(c, &room_id, &username, query))
    }

    fn set_group_info(&self, room_id: &str, epoch: u64, group_info: Vec<u8>) -> StoreFuture<bool> {
        let room_id = room_id.to_owned();
        self.write(move |c, _| writes::set_group_info(c, &room_id, epoch, &group_info))
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.read(move |c| reads::load_room(c, &room_id))
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.write(move |c, _| writes::update_room(c, &room_id, &update))
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.write(move |c, state| writes::delete_room(c, state, &room_id))
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.write(move |c, _| writes::add_member(c, &room_id, &username, joined_at))
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
            writes::remove_member(c, state, &room_id, &username, ban, by.as_deref())
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.write(move |c, _| writes::set_ban(c, &room_id, &username, banned))
    }

    fn find_entry(
        &self,
        room_id: &str,
        device_id: &[u8],
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let (room_id, device_id, msg_id) =
            (room_id.to_owned(), device_id.to_vec(), msg_id.to_vec());
        self.read(move |c| reads::find_entry(c, &room_id, &device_id, &msg_id))
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.write(move |c, _| writes::purge(c, policy))
    }

    fn close(&self) -> StoreFuture<()> {
        let closed = self.writes.close();
        for _ in 0..READERS {
            let _ = self.reads.send(ReadOp::Close);
        }
        let _ = self.checkpoints.send(());
        Box::pin(async move {
            closed.await;
            Ok(())
        })
    }
}
