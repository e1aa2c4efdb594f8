//! The MongoDB store, on the official `mongodb` driver.
//!
//! Collections: `users` (_id = username), `rooms` (_id = room_id, unique
//! `name_folded`, `last_seq`), `members` (unique room+user, by user), `bans`
//! (unique room+user), `devices` (unique user+device), `groups` (_id =
//! room_id, unique `group_id`), `entries` (the room log: unique room+seq,
//! by ts). Indexes are created at start-up.
//!
//! Durability: the database handle uses write concern `majority` with
//! journal and read concern `majority`, so an acknowledged write survives the
//! loss of the primary and history only shows majority-committed messages.
//!
//! Seq: each append is one multi-document transaction: dedupe by
//! (room, device, msg_id), check a commit's epoch, `$inc` the room's
//! `last_seq`, insert. Because the counter is incremented in the same
//! transaction as the insert, a crash or a conflict can never leave a gap,
//! and two server processes on one database still get unique, gapless seqs
//! (a write conflict aborts one transaction, which is retried). Appends are
//! not batched (`store.max_batch` does not apply). Transactions need a
//! replica set (Atlas always is; a single-node replica set is enough
//! locally).
//!
//! Multi-document changes: `create_group_room` (room + owner membership +
//! group) and
//! `remove_member` with ban are transactions. `delete_room` is ordered: the
//! room document goes first, so a crash part-way leaves only orphans that no
//! query can reach (members and messages are only read through a room).
//!
//! All driver work runs on a small tokio runtime owned by the store, so the
//! actix arbiters that call it never own the driver's connections.
//!
//! Files: `docs` (field access, collections, transactions), `writes`,
//! `reads`. Batching, the page walk and retention's plan are the shared
//! ones of [`crate::store`].

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{DatabaseOptions, ReadConcern};
use mongodb::{Client, Database};
use tokio::sync::oneshot;

use super::{
    Appended, DeviceAdded, DeviceRecord, DirectoryEntry, EntryHistory, GroupRow, HistoryQuery,
    NewEntry, PurgePolicy, Removed, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredEntry, UserRecord,
};
use crate::validate::room_name_key;
use docs::{collect, durable, err, Collections};

mod docs;
mod reads;
mod writes;

const DEFAULT_DATABASE: &str = "e2ee_chat";

pub struct MongoStore {
    client: Client,
    db: Database,
    runtime: tokio::runtime::Handle,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl MongoStore {
    /// Connects, checks the schema version and creates the indexes. The
    /// database is the URI's default database, else `database`, else
    /// `e2ee_chat`.
    pub async fn connect(uri: &str, database: Option<&str>) -> Result<MongoStore, StoreError> {
        let (handle_tx, handle_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("mongodb".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("mongodb-rt")
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        rt.shutdown_timeout(Duration::from_secs(5));
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let runtime = handle_rx
            .await
            .map_err(|_| StoreError::Unavailable("mongodb runtime died".into()))?
            .map_err(StoreError::Unavailable)?;
        let uri = uri.to_owned();
        let database = database.map(str::to_owned);
        let (client, db) = runtime
            .spawn(async move {
                let client = Client::with_uri_str(&uri).await.map_err(err)?;
                let name = client
                    .default_database()
                    .map(|d| d.name().to_owned())
                    .or(database)
                    .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
                let options = DatabaseOptions::builder()
                    .write_concern(durable())
                    .read_concern(ReadConcern::majority())
                    .build();
                let db = client.database_with_options(&name, options);
                db.run_command(doc! {"ping": 1})
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let colls = Collections::new(&db);
                check_schema(&db, &colls).await?;
                colls.create_indexes().await?;
                // Hidden rooms stored before their names stopped being
                // unique keys.
                let hidden =
                    collect(colls.rooms.find(doc! {"hidden": true}).await.map_err(err)?).await?;
                for r in hidden {
                    let id = r
                        .get_str("_id")
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    colls
                        .rooms
                        .update_one(
                            doc! {"_id": id},
                            doc! {"$set": {"name_folded": room_name_key("", true, id)}},
                        )
                        .await
                        .map_err(err)?;
                }
                log::info!("mongodb store connected (database {name})");
                Ok::<_, StoreError>((client, db))
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(MongoStore {
            client,
            db,
            runtime,
            shutdown: std::sync::Mutex::new(Some(stop_tx)),
        })
    }

    /// Runs `f` on the store's runtime and returns its result as a store future.
    fn run<T, F, Fut>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Client, Collections) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let task = self
            .runtime
            .spawn(f(self.client.clone(), Collections::new(&self.db)));
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        })
    }
}

impl Store for MongoStore {
    fn ping(&self) -> StoreFuture<()> {
        let db = self.db.clone();
        self.run(move |_, _| async move {
            db.run_command(doc! {"ping": 1})
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
    }

    fn create_user(&self, user: UserRecord) -> StoreFuture<()> {
        self.run(move |_, c| async move { writes::create_user(&c, &user).await })
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.run(move |_, c| async move { reads::get_user(&c, &username).await })
    }

    fn add_device(&self, device: DeviceRecord, max: u64) -> StoreFuture<DeviceAdded> {
        self.run(
            move |client, c| async move { writes::add_device(&client, &c, &device, max).await },
        )
    }

    fn list_devices(&self, username: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let username = username.to_owned();
        self.run(move |_, c| async move { reads::list_devices(&c, &username).await })
    }

    fn room_devices(&self, room_id: &str) -> StoreFuture<Vec<DeviceRecord>> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { reads::room_devices(&c, &room_id).await })
    }

    fn remove_device(&self, username: &str, device_id: &[u8], at: u64) -> StoreFuture<bool> {
        let (username, device_id) = (username.to_owned(), device_id.to_vec());
        self.run(
            move |_, c| async move { writes::remove_device(&c, &username, &device_id, at).await },
        )
    }

    fn create_group_room(&self, room: RoomRecord, group: GroupRow) -> StoreFuture<()> {
        self.run(move |client, c| async move {
            writes::create_group_room(&client, &c, &room, &group).await
        })
    }

    fn load_group(&self, room_id: &str) -> StoreFuture<Option<GroupRow>> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { reads::load_group(&c, &room_id).await })
    }

    fn append_entry(&self, entry: Arc<NewEntry>) -> StoreFuture<Appended> {
        self.run(move |client, c| async move { writes::append_entry(&client, &c, &entry).await })
    }

    fn entries_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEntry>> {
        let room_id = room_id.to_owned();
        self.run(
            move |_, c| async move { reads::entries_after(&c, &room_id, after_seq, limit).await },
        )
    }

    fn entry_history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<EntryHistory> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(
            move |_, c| async move { reads::entry_history(&c, &room_id, &username, query).await },
        )
    }

    fn set_group_info(&self, room_id: &str, epoch: u64, group_info: Vec<u8>) -> StoreFuture<bool> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move {
            writes::set_group_info(&c, &room_id, epoch, &group_info).await
        })
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.run(move |_, c| async move { reads::load_directory(&c).await })
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { reads::load_room(&c, &room_id).await })
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { writes::update_room(&c, &room_id, &update).await })
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { writes::delete_room_docs(&c, &room_id).await })
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(
            move |_, c| async move { writes::add_member(&c, &room_id, &username, joined_at).await },
        )
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
        self.run(move |client, c| async move {
            writes::remove_member(&client, &c, &room_id, &username, ban, by.as_deref()).await
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(move |_, c| async move { writes::set_ban(&c, &room_id, &username, banned).await })
    }

    fn find_entry(
        &self,
        room_id: &str,
        device_id: &[u8],
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let filter = reads::entry_key(room_id, device_id, msg_id);
        self.run(move |_, c| async move { reads::find_seq(&c.entries, filter).await })
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.run(move |_, c| async move { writes::purge(&c, policy).await })
    }

    /// Closes the driver (every write was awaited by its caller).
    fn close(&self) -> StoreFuture<()> {
        let stop = self.shutdown.lock().ok().and_then(|mut s| s.take());
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            client.shutdown().await;
        });
        Box::pin(async move {
            let _ = task.await;
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            Ok(())
        })
    }
}

/// The schema version is the `meta` collection's `schema` document: a new
/// database gets [`SCHEMA_VERSION`](super::SCHEMA_VERSION); one of an
/// older version (or from before the document, which holds protocol v2's
/// data) is taken over when it holds no users and no rooms, else refused
/// with what to do.
async fn check_schema(db: &Database, c: &Collections) -> Result<(), StoreError> {
    use mongodb::bson::Document;
    let wanted = super::SCHEMA_VERSION;
    let meta = db.collection::<Document>("meta");
    let recorded = meta
        .find_one(doc! {"_id": "schema"})
        .await
        .map_err(err)?
        .and_then(|d| d.get_i64("version").ok());
    if recorded == Some(wanted) {
        return Ok(());
    }
    let used = c.users.find_one(doc! {}).await.map_err(err)?.is_some()
        || c.rooms.find_one(doc! {}).await.map_err(err)?.is_some();
    if used {
        return Err(super::v2_refused("the database", recorded.unwrap_or(2)));
    }
    meta.update_one(doc! {"_id": "schema"}, doc! {"$set": {"version": wanted}})
        .upsert(true)
        .await
        .map(|_| ())
        .map_err(err)
}
