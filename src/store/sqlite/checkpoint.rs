//! The checkpoint thread: copies the WAL back into the database file off
//! the writer's path, and keeps the WAL's size bounded.
//!
//! A PASSIVE checkpoint never blocks the writer, but it cannot let the WAL
//! start over while commits keep coming: SQLite rewinds the WAL only when a
//! write begins after a checkpoint that copied every frame, and under
//! steady load a new commit always lands first. The WAL then grows without
//! end (319 MB in 3 s of back-to-back writes in this module's test; 62 MB
//! after a 5-second bench run), which is disk any client can fill, and every
//! commit extends the file, which its fdatasync must also persist. A RESTART
//! checkpoint from this thread does not help: it waits for a moment without
//! a writer, and a busy writer leaves none. So past [`RESTART_FRAMES`] this
//! thread asks the writer ([`WalLong`]) to run one PASSIVE checkpoint itself
//! after its next commit: with no writer in between, it copies the few
//! frames this thread's pass left and the writer's next transaction rewinds
//! the WAL; `journal_size_limit` then trims the file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::Connection;

/// How often the checkpoint thread copies the WAL back into the database.
pub(super) const EVERY: Duration = Duration::from_millis(200);

/// WAL frames (about 4 KiB each) past which the WAL is made to start over.
pub(super) const RESTART_FRAMES: i64 = 2048;

/// What the WAL file is trimmed to when it starts over (bytes).
pub(super) const WAL_SIZE_LIMIT: i64 = 16 << 20;

/// Set by the checkpoint thread when the WAL is long; the writer takes it
/// and checkpoints between two transactions ([`WalLong::after_commit`]).
#[derive(Clone, Default)]
pub(super) struct WalLong(Arc<AtomicBool>);

impl WalLong {
    /// On the writer, after a batch's writes were answered.
    pub(super) fn after_commit(&self, writer: &Connection) {
        if self.0.swap(false, Ordering::Relaxed) {
            if let Err(e) = writer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                log::warn!("sqlite checkpoint on the writer: {e}");
            }
        }
    }
}

/// Runs checkpoints on `conn` every [`EVERY`] until `stop` says so (or
/// its sender is dropped).
pub(super) fn spawn(conn: Connection, long: WalLong, stop: Receiver<()>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
                match checkpoint(&conn) {
                    Ok(frames) if frames > RESTART_FRAMES => long.0.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => log::warn!("sqlite checkpoint: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// One PASSIVE round: the WAL's length in frames.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::store::sqlite::SqliteStore;
    use crate::store::{EntryKind, GroupRow, LogEntry, NewEntry, RoomRecord, Store};

    fn message(n: u64) -> Arc<NewEntry> {
        Arc::new(NewEntry {
            room_id: "r-wal".into(),
            entry: LogEntry {
                kind: EntryKind::Message,
                sender: "alice".into(),
                device_id: vec![1; 16],
                epoch: 0,
                data: vec![7; 800],
                msg_id: Some(n.to_be_bytes().repeat(2)),
                group_info: None,
            },
            commit: None,
        })
    }

    /// Writes that never pause for 3 s: the WAL must still start over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path, 512).unwrap();
        let room = RoomRecord {
            room_id: "r-wal".into(),
            name: "wal".into(),
            owner: "alice".into(),
            password_hash: None,
            hidden: false,
            created_at: 1,
            last_seq: 0,
        };
        let group = GroupRow {
            group_id: vec![4; 16],
            epoch: 0,
            state: vec![5; 600],
            group_info: vec![6; 300],
            removal_epoch: 0,
        };
        store.create_group_room(room, group).await.unwrap();
        let store = Arc::new(store);
        let until = Instant::now() + std::time::Duration::from_secs(3);
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = w << 32;
                while Instant::now() < until {
                    store.append_entry(message(n)).await.unwrap();
                    n += 1;
                }
                n - (w << 32)
            }));
        }
        let mut written = 0;
        for t in tasks {
            written += t.await.unwrap();
        }
        let wal = std::fs::metadata(format!("{}-wal", path.display()))
            .unwrap()
            .len();
        // What frames may pile up between two rounds, beyond the limit.
        let bound = (super::WAL_SIZE_LIMIT + 2 * super::RESTART_FRAMES * 4120) as u64;
        eprintln!("{written} messages written; WAL {wal} bytes (bound {bound})");
        assert!(wal <= bound, "the WAL grew to {wal} bytes");
    }
}
