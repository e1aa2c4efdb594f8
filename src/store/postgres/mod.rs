//! The PostgreSQL store (`store.url = "postgres://…"` or `DATABASE_URL`), on
//! `tokio-postgres` with a `deadpool-postgres` pool: for deployments without
//! a lasting disk (Heroku) and for several server processes on one database.
//!
//! Same guarantees as SQLite. One writer task takes every write that is
//! waiting (up to `store.max_batch`), runs them in one transaction, COMMITs
//! once (synchronous commit on) and only then completes the writes: group
//! commit. Each write is one statement, and a batch's statements are
//! pipelined (sent together, in order), so a batch costs about one round
//! trip; if one fails, the batch is redone with a savepoint per write so the
//! failing write fails alone. A message's seq comes from
//! `UPDATE rooms SET last_seq = last_seq + 1 … RETURNING` inside that
//! transaction: the room row stays locked until COMMIT, so seq is gapless and
//! unique even when several processes append to one room; a stored copy
//! (same room, sender, msg_id) answers with its seq and takes none.
//!
//! Reads take a pooled connection each. A lost database makes writes and
//! reads fail fast (`Unavailable`, so sends answer `internal` and `/healthz`
//! 503); the pool replaces broken connections, so the server serves again
//! when the database returns, without a restart.
//!
//! Connections use TLS when the server offers it (`sslmode=prefer`, the
//! default) or must (`sslmode=require`, as Heroku Postgres does), through
//! rustls; like libpq's `require`, the server certificate is not verified.
//!
//! Wrapped keys are one blob per message, in the SQLite store's format
//! ([`encode_keys`]); history walks the user's membership periods.
//!
//! Files: `schema` (tables, creation and version check), `connect` (TLS
//! and pools), `writes` (statements, the batch transaction, the writer),
//! `reads`. Batching, the page walk and retention's plan are the shared
//! ones of [`crate::store`].

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;

use super::batch::WriteQueue;
use super::{
    Appended, DeviceAdded, DeviceRecord, DirectoryEntry, EntryHistory, GroupRow, HistoryQuery,
    NewEntry, PurgePolicy, Removed, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredEntry, UserRecord,
};
use connect::{pool_of, tls_for, READ_CONNECTIONS, READ_TIMEOUT_MS};
use writes::{Done, Job, WriteOp};

mod connect;
mod reads;
mod schema;
mod writes;

pub struct PostgresStore {
    pool: Pool,
    writes: WriteQueue<Job>,
    /// Checked inside the membership write, where other processes' joins
    /// are visible (`with_max_members`).
    max_members: i64,
    /// Likewise `max_rooms_per_user` for joins and creations
    /// (`with_max_rooms_per_user`).
    max_rooms: i64,
}

fn err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(e.to_string()),
        Some(_) => StoreError::Backend(e.to_string()),
        // No SQL state: the connection itself failed.
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

impl PostgresStore {
    /// Connects, creates or checks the schema, and starts the writer.
    pub async fn connect(url: &str, max_batch: usize) -> Result<PostgresStore, StoreError> {
        let (url, tls) = tls_for(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("store.url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // Reads get a pool of their own, with a statement timeout: a flood
        // of slow reads fills that pool, never the writer's connection, so
        // sends and membership changes keep committing.
        let mut reads = config.clone();
        let options = reads.get_options().unwrap_or_default().to_owned();
        reads.options(format!("{options} -c statement_timeout={READ_TIMEOUT_MS}").trim());
        let pool = pool_of(reads, tls.clone(), READ_CONNECTIONS)?;
        let write_pool = pool_of(config, tls, 1)?;
        schema::migrate(&write_pool).await?;
        let (writes, batches) = WriteQueue::new(max_batch);
        tokio::spawn(writes::writer_loop(write_pool, batches));
        log::info!("postgres store open (group commit batch {max_batch})");
        Ok(PostgresStore {
            pool,
            writes,
            max_members: i64::MAX,
            max_rooms: i64::MAX,
        })
    }

    /// Joins past `max` members are refused (`StoreError::RoomFull`) inside
    /// the membership write, so joins racing on several processes cannot
    /// overfill a room.
    pub fn with_max_members(mut self, max: usize) -> Self {
        self.max_members = i64::try_from(max).unwrap_or(i64::MAX);
        self
    }

    /// Joins and creations past `max` rooms for one user are refused
    /// (`StoreError::TooManyRooms`) inside the write, so several processes
    /// cannot together let a user exceed `max_rooms_per_user`.
    pub fn with_max_rooms_per_user(mut self, max: usize) -> Self {
        self.max_rooms = i64::try_from(max).unwrap_or(i64::MAX);
        self
    }

    fn write<T: Send + 'static>(
        &self,
        op: WriteOp,
        take: impl FnOnce(Done) -> T + Send + 'static,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.submit((op, tx));
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
            let done = rx
                .await
                .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))??;
            Ok(take(done))
        })
    }

    fn unit(&self, op: WriteOp) -> StoreFuture<()> {
        self.write(op, |_| ())
    }

    /// Runs `f` with a pooled connection.
    fn read<T, F, Fut>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            f(client).await
        })
    }
}

impl Store for PostgresStore {
    fn ping(&self) -> StoreFuture<()> {
        self.read(|c| async move { c.execute("SELECT 1", &[]).await.map(|_| ()).map_err(err) })
    }

    fn create_user(&self, user: UserRecord) -> StoreFuture<()> {
        self.unit(WriteOp::CreateUser(user))
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| async move { reads::get_user(&c, &username).await })
    }

    fn add_device(&self, device: DeviceRecord, max: u64) -> StoreFuture<DeviceAdded> {
        let max = i64::try_from(max).unwrap_or(i64::MAX / 8);
        self.write(WriteOp::AddDevice(device, max), |done| match done {
            Done::Device(added) => added,
            _ => unreachable!("an AddDevice answers Device"),
        })
    }

    fn list_devices(&self, username: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let username = username.to_owned();
        self.read(move |c| async move { reads::list_devices(&c, &username).await })
    }

    fn room_devices(&self, room_id: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let room_id = room_id.to_owned();
        self.read(move |c| async move { reads::room_devices(&c, &room_id).await })
    }

    fn remove_device(&self, username: &str, device_id: &[u8], at: u64) -> StoreFuture<bool> {
        let op = WriteOp::RemoveDevice(username.to_owned(), device_id.to_vec(), at);
        self.write(op, |done| matches!(done, Done::Flag(true)))
    }

    fn create_group_room(&self, room: RoomRecord, group: GroupRow) -> StoreFuture<()> {
        self.unit(WriteOp::CreateGroupRoom(room, group, self.max_rooms))
    }

    fn load_group(&self, room_id: &str) -> StoreFuture<Option<GroupRow>> {
        let room_id = room_id.to_owned();
        self.read(move |c| async move { reads::load_group(&c, &room_id).await })
    }

    fn append_entry(&self, entry: Arc<NewEntry>) -> StoreFuture<Appended> {
        self.write(WriteOp::AppendEntry(entry), |done| match done {
            Done::Appended(a) => a,
            _ => unreachable!("an AppendEntry answers Appended"),
        })
    }

    fn entries_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEntry>> {
        let room_id = room_id.to_owned();
        self.read(
            move |c| async move { reads::entries_after(&c, &room_id, after_seq, limit).await },
        )
    }

    fn entry_history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<EntryHistory> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.read(
            move |c| async move { reads::entry_history(&c, &room_id, &username, query).await },
        )
    }

    fn set_group_info(&self, room_id: &str, epoch: u64, group_info: Vec<u8>) -> StoreFuture<bool> {
        let op = WriteOp::SetGroupInfo(room_id.to_owned(), epoch, group_info);
        self.write(op, |done| matches!(done, Done::Flag(true)))
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.read(|c| async move { reads::load_directory(&c).await })
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.read(move |c| async move { reads::load_room(&c, &room_id).await })
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        self.unit(WriteOp::UpdateRoom(room_id.to_owned(), update))
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        self.unit(WriteOp::DeleteRoom(room_id.to_owned()))
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        self.unit(WriteOp::AddMember(
            room_id.to_owned(),
            username.to_owned(),
            joined_at,
            self.max_members,
            self.max_rooms,
        ))
    }

    fn remove_member(
        &self,
        room_id: &str,
        username: &str,
        ban: bool,
        by: Option<&str>,
    ) -> StoreFuture<Removed> {
        let op = WriteOp::RemoveMember(
            room_id.to_owned(),
            username.to_owned(),
            ban,
            by.map(str::to_owned),
        );
        self.write(op, |done| match done {
            Done::Removed(r) => r,
            _ => unreachable!("a removal answers Removed"),
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        self.unit(WriteOp::SetBan(
            room_id.to_owned(),
            username.to_owned(),
            banned,
        ))
    }

    fn find_entry(
        &self,
        room_id: &str,
        device_id: &[u8],
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let (room_id, device_id, msg_id) =
            (room_id.to_owned(), device_id.to_vec(), msg_id.to_vec());
        self.read(
            move |c| async move { reads::find_entry(&c, &room_id, &device_id, &msg_id).await },
        )
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.write(WriteOp::Purge(policy), |done| match done {
            Done::Count(n) => n,
            _ => unreachable!("a purge answers Count"),
        })
    }

    fn close(&self) -> StoreFuture<()> {
        let closed = self.writes.close();
        Box::pin(async move {
            closed.await;
            Ok(())
        })
    }
}
