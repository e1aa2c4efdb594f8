//! The MongoDB store, on the official `mongodb` driver.
//!
//! Collections: `users` (_id = username), `rooms` (_id = room_id, unique
//! `name_folded`, `last_seq`), `members` (unique room+user, by user), `bans`
//! (unique room+user), `messages` (unique room+seq, unique room+sender+msg_id,
//! by ts; each message embeds its wrapped keys as `keys.<username>`).
//! Indexes are created at start-up.
//!
//! Durability: the database handle uses write concern `majority` with
//! journal and read concern `majority`, so an acknowledged write survives the
//! loss of the primary and history only shows majority-committed messages.
//!
//! Seq: appends go through one writer task per store that takes every append
//! waiting and runs them in one multi-document transaction: dedupe by
//! (room, sender, msg_id), `$inc` the room's `last_seq`, insert. Because the
//! counter is incremented in the same transaction as the insert, a crash or a
//! conflict can never leave a gap, and two server processes on one database
//! still get unique, gapless seqs (a write conflict aborts one transaction,
//! which is retried). Transactions need a replica set (Atlas always is; a
//! single-node replica set is enough locally).
//!
//! Multi-document changes: `create_room` (room + owner membership) and
//! `remove_member` with ban are transactions. `delete_room` is ordered: the
//! room document goes first, so a crash part-way leaves only orphans that no
//! query can reach (members and messages are only read through a room).
//!
//! All driver work runs on a small tokio runtime owned by the store, so the
//! actix arbiters that call it never own the driver's connections.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{
    Acknowledgment, DatabaseOptions, IndexOptions, ReadConcern, ReturnDocument, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, DirectoryEntry, HistoryPage, HistoryQuery, MemberRecord, NewMessage, PageBuilder,
    PurgePolicy, Removed, RoomMessage, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredMessage, UserRecord,
};
use crate::util::now_ms;
use crate::validate::room_name_key;

const DEFAULT_DATABASE: &str = "e2ee_chat";
const MAX_APPEND_BATCH: usize = 256;

type AppendJob = (
    Arc<NewMessage>,
    oneshot::Sender<Result<Appended, StoreError>>,
);

pub struct MongoStore {
    client: Client,
    db: Database,
    runtime: tokio::runtime::Handle,
    appends: mpsc::UnboundedSender<AppendJob>,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

fn err(e: mongodb::error::Error) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::Conflict(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

fn bin(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

fn get_bin(d: &Document, key: &str) -> Result<Vec<u8>, StoreError> {
    d.get_binary_generic(key)
        .cloned()
        .map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

fn get_str(d: &Document, key: &str) -> Result<String, StoreError> {
    d.get_str(key)
        .map(str::to_owned)
        .map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

fn get_u64(d: &Document, key: &str) -> Result<u64, StoreError> {
    match d.get(key) {
        Some(Bson::Int64(v)) => Ok(*v as u64),
        Some(Bson::Int32(v)) => Ok(*v as u64),
        other => Err(StoreError::Backend(format!(
            "{key}: expected an integer, got {other:?}"
        ))),
    }
}

fn user_from(d: &Document) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        username: get_str(d, "_id")?,
        sign_key: get_bin(d, "sign_key")?,
        enc_key: get_bin(d, "enc_key")?,
        created_at: get_u64(d, "created_at")?,
    })
}

fn room_from(d: &Document) -> Result<RoomRecord, StoreError> {
    Ok(RoomRecord {
        room_id: get_str(d, "_id")?,
        name: get_str(d, "name")?,
        owner: get_str(d, "owner")?,
        password_hash: d.get_str("password_hash").ok().map(str::to_owned),
        hidden: d.get_bool("hidden").unwrap_or(false),
        created_at: get_u64(d, "created_at")?,
        last_seq: get_u64(d, "last_seq")?,
    })
}

fn durable() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

#[derive(Clone)]
struct Collections {
    users: Collection<Document>,
    rooms: Collection<Document>,
    members: Collection<Document>,
    bans: Collection<Document>,
    messages: Collection<Document>,
}

impl Collections {
    fn new(db: &Database) -> Self {
        Collections {
            users: db.collection("users"),
            rooms: db.collection("rooms"),
            members: db.collection("members"),
            bans: db.collection("bans"),
            messages: db.collection("messages"),
        }
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let indexes = [
            (&self.rooms, doc! {"name_folded": 1}, true),
            (&self.members, doc! {"room_id": 1, "username": 1}, true),
            (&self.members, doc! {"username": 1}, false),
            (&self.bans, doc! {"room_id": 1, "username": 1}, true),
            (&self.messages, doc! {"room_id": 1, "seq": 1}, true),
            (
                &self.messages,
                doc! {"room_id": 1, "sender": 1, "msg_id": 1},
                true,
            ),
            (&self.messages, doc! {"ts": 1}, false),
        ];
        for (collection, keys, unique) in indexes {
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(unique).build())
                .build();
            collection.create_index(model).await.map_err(err)?;
        }
        Ok(())
    }
}

impl MongoStore {
    /// Connects, creates the indexes and starts the append writer. The
    /// database is the URI's default database, else `database`, else `e2ee_chat`.
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
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(append_writer(client.clone(), Collections::new(&db), rx));
        Ok(MongoStore {
            client,
            db,
            runtime,
            appends: tx,
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

/// Runs `body` in a transaction, retrying on transient transaction errors.
/// `NotOwner` unless `by` is the room's recorded owner and a member.
async fn check_owner(c: &Collections, room_id: &str, by: &str) -> Result<(), StoreError> {
    let owns = c
        .rooms
        .find_one(doc! {"_id": room_id, "owner": by})
        .await
        .map_err(err)?
        .is_some();
    let member = c
        .members
        .find_one(doc! {"room_id": room_id, "username": by})
        .await
        .map_err(err)?
        .is_some();
    if owns && member {
        Ok(())
    } else {
        Err(StoreError::NotOwner)
    }
}

/// Deletes a room and everything of it. Ordered: once the room document is
/// gone nothing else is reachable.
async fn delete_room_docs(c: &Collections, room_id: &str) -> Result<(), StoreError> {
    c.rooms
        .delete_one(doc! {"_id": room_id})
        .await
        .map_err(err)?;
    c.members
        .delete_many(doc! {"room_id": room_id})
        .await
        .map_err(err)?;
    c.bans
        .delete_many(doc! {"room_id": room_id})
        .await
        .map_err(err)?;
    c.messages
        .delete_many(doc! {"room_id": room_id})
        .await
        .map_err(err)?;
    Ok(())
}

async fn transaction<T, F>(client: &Client, mut body: F) -> Result<T, StoreError>
where
    F: for<'s> FnMut(
        &'s mut ClientSession,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, mongodb::error::Error>> + Send + 's>,
    >,
{
    let mut session = client.start_session().await.map_err(err)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        session
            .start_transaction()
            .read_concern(ReadConcern::majority())
            .write_concern(durable())
            .await
            .map_err(err)?;
        let result = match body(&mut session).await {
            Ok(v) => session.commit_transaction().await.map(|()| v),
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempt < 5 => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// The append writer: batches waiting appends into one transaction.
async fn append_writer(client: Client, c: Collections, mut rx: mpsc::UnboundedReceiver<AppendJob>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_APPEND_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let messages: Vec<Arc<NewMessage>> = batch.iter().map(|(m, _)| m.clone()).collect();
        let c2 = c.clone();
        let result = transaction(&client, |s| {
            let (c, messages) = (c2.clone(), messages.clone());
            Box::pin(async move {
                let mut out = Vec::with_capacity(messages.len());
                for m in &messages {
                    out.push(append_one(&c, s, m).await?);
                }
                Ok(out)
            })
        })
        .await;
        match result {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                log::error!("mongodb append batch of {} failed: {e}", batch.len());
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn append_one(
    c: &Collections,
    s: &mut ClientSession,
    m: &NewMessage,
) -> Result<Result<Appended, StoreError>, mongodb::error::Error> {
    let existing = c
        .messages
        .find_one(doc! {"room_id": &m.room_id, "sender": &m.sender, "msg_id": bin(&m.msg_id)})
        .projection(doc! {"seq": 1, "ts": 1})
        .session(&mut *s)
        .await?;
    if let Some(d) = existing {
        return Ok(match (get_u64(&d, "seq"), get_u64(&d, "ts")) {
            (Ok(seq), Ok(ts)) => Ok(Appended {
                seq,
                ts,
                duplicate: true,
            }),
            (Err(e), _) | (_, Err(e)) => Err(e),
        });
    }
    let room = c
        .rooms
        .find_one_and_update(doc! {"_id": &m.room_id}, doc! {"$inc": {"last_seq": 1_i64}})
        .return_document(ReturnDocument::After)
        .projection(doc! {"last_seq": 1})
        .session(&mut *s)
        .await?;
    let Some(room) = room else {
        return Ok(Err(StoreError::NotFound));
    };
    let seq = match get_u64(&room, "last_seq") {
        Ok(seq) => seq,
        Err(e) => return Ok(Err(e)),
    };
    let ts = now_ms();
    let keys: Document = m.keys.iter().map(|(u, k)| (u.clone(), bin(k))).collect();
    c.messages
        .insert_one(doc! {
            "room_id": &m.room_id,
            "seq": seq as i64,
            "ts": ts as i64,
            "msg_id": bin(&m.msg_id),
            "sender": &m.sender,
            "nonce": bin(&m.nonce),
            "key_commitment": bin(&m.key_commitment),
            "ciphertext": bin(&m.ciphertext),
            "signature": bin(&m.signature),
            "keys": keys,
        })
        .session(&mut *s)
        .await?;
    Ok(Ok(Appended {
        seq,
        ts,
        duplicate: false,
    }))
}

async fn collect(cursor: mongodb::Cursor<Document>) -> Result<Vec<Document>, StoreError> {
    cursor.try_collect().await.map_err(err)
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
        self.run(move |_, c| async move {
            c.users
                .insert_one(doc! {
                    "_id": &user.username,
                    "sign_key": bin(&user.sign_key),
                    "enc_key": bin(&user.enc_key),
                    "created_at": user.created_at as i64,
                })
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.run(move |_, c| async move {
            match c
                .users
                .find_one(doc! {"_id": &username})
                .await
                .map_err(err)?
            {
                Some(d) => Ok(Some(user_from(&d)?)),
                None => Ok(None),
            }
        })
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.run(move |_, c| async move {
            let rooms = collect(
                c.rooms
                    .find(doc! {})
                    .sort(doc! {"created_at": 1, "_id": 1})
                    .await
                    .map_err(err)?,
            )
            .await?;
            let mut entries: Vec<DirectoryEntry> = rooms
                .iter()
                .map(|d| {
                    room_from(d).map(|room| DirectoryEntry {
                        room,
                        members: Vec::new(),
                    })
                })
                .collect::<Result<_, _>>()?;
            let index: std::collections::HashMap<String, usize> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.room.room_id.clone(), i))
                .collect();
            let members = collect(
                c.members
                    .find(doc! {})
                    .sort(doc! {"joined_at": 1, "_id": 1})
                    .await
                    .map_err(err)?,
            )
            .await?;
            for m in members {
                if let Some(&i) = index.get(&get_str(&m, "room_id")?) {
                    entries[i].members.push(get_str(&m, "username")?);
                }
            }
            Ok(entries)
        })
    }

    fn create_room(&self, room: RoomRecord) -> StoreFuture<()> {
        self.run(move |client, c| async move {
            let mut room_doc = doc! {
                "_id": &room.room_id,
                "name": &room.name,
                "name_folded": room_name_key(&room.name, room.hidden, &room.room_id),
                "owner": &room.owner,
                "hidden": room.hidden,
                "created_at": room.created_at as i64,
                "last_seq": 0_i64,
            };
            if let Some(h) = &room.password_hash {
                room_doc.insert("password_hash", h);
            }
            let member = doc! {
                "room_id": &room.room_id,
                "username": &room.owner,
                "joined_at": room.created_at as i64,
            };
            transaction(&client, |s| {
                let (c, room_doc, member) = (c.clone(), room_doc.clone(), member.clone());
                Box::pin(async move {
                    c.rooms.insert_one(room_doc).session(&mut *s).await?;
                    c.members.insert_one(member).session(&mut *s).await?;
                    Ok(())
                })
            })
            .await
        })
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move {
            let members = collect(
                c.members
                    .find(doc! {"room_id": &room_id})
                    .sort(doc! {"joined_at": 1, "_id": 1})
                    .await
                    .map_err(err)?,
            )
            .await?;
            let mut out = Vec::with_capacity(members.len());
            for m in members {
                let username = get_str(&m, "username")?;
                if let Some(u) = c
                    .users
                    .find_one(doc! {"_id": &username})
                    .await
                    .map_err(err)?
                {
                    out.push(MemberRecord {
                        user: user_from(&u)?,
                        joined_at: get_u64(&m, "joined_at")?,
                    });
                }
            }
            let bans = collect(c.bans.find(doc! {"room_id": &room_id}).await.map_err(err)?)
                .await?
                .iter()
                .map(|b| get_str(b, "username"))
                .collect::<Result<_, _>>()?;
            let record = match c
                .rooms
                .find_one(doc! {"_id": &room_id})
                .await
                .map_err(err)?
            {
                Some(d) => Some(room_from(&d)?),
                None => None,
            };
            Ok(RoomState {
                record,
                members: out,
                bans,
            })
        })
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move {
            if let Some(by) = &update.by {
                check_owner(&c, &room_id, by).await?;
            }
            let mut set = Document::new();
            let mut unset = Document::new();
            if let Some(name) = &update.name {
                set.insert("name", name);
                // A hidden room's name key is its id (validate::room_name_key).
                let hidden = c
                    .rooms
                    .find_one(doc! {"_id": &room_id})
                    .await
                    .map_err(err)?
                    .is_some_and(|r| r.get_bool("hidden").unwrap_or(false));
                set.insert("name_folded", room_name_key(name, hidden, &room_id));
            }
            if let Some(owner) = &update.owner {
                set.insert("owner", owner);
            }
            match &update.password_hash {
                Some(Some(h)) => {
                    set.insert("password_hash", h);
                }
                Some(None) => {
                    unset.insert("password_hash", "");
                }
                None => {}
            }
            let mut change = Document::new();
            if !set.is_empty() {
                change.insert("$set", set);
            }
            if !unset.is_empty() {
                change.insert("$unset", unset);
            }
            if change.is_empty() {
                return Ok(());
            }
            c.rooms
                .update_one(doc! {"_id": &room_id}, change)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move { delete_room_docs(&c, &room_id).await })
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(move |_, c| async move {
            // Not atomic with a ban on another process (see ARCHITECTURE.md:
            // several processes run on PostgreSQL).
            if c
                .bans
                .find_one(doc! {"room_id": &room_id, "username": &username})
                .await
                .map_err(err)?
                .is_some()
            {
                return Err(StoreError::Banned);
            }
            let res = c
                .members
                .insert_one(doc! {"room_id": &room_id, "username": &username, "joined_at": joined_at as i64})
                .await;
            match res {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Ok(()),
                Err(e) => Err(err(e)),
            }
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
        self.run(move |client, c| async move {
            // Checked before the transaction: one process per MongoDB store
            // (ARCHITECTURE.md), whose room actor orders owner changes.
            if let Some(by) = &by {
                check_owner(&c, &room_id, by).await?;
            }
            let removed = transaction(&client, |s| {
                let (c, room_id, username) = (c.clone(), room_id.clone(), username.clone());
                Box::pin(async move {
                    c.members
                        .delete_one(doc! {"room_id": &room_id, "username": &username})
                        .session(&mut *s)
                        .await?;
                    if ban {
                        c.bans
                            .update_one(
                                doc! {"room_id": &room_id, "username": &username},
                                doc! {"$setOnInsert": {"banned_at": now_ms() as i64}},
                            )
                            .upsert(true)
                            .session(&mut *s)
                            .await?;
                    }
                    let remaining = c
                        .members
                        .count_documents(doc! {"room_id": &room_id})
                        .session(&mut *s)
                        .await?;
                    if remaining == 0 {
                        return Ok(Removed {
                            remaining: 0,
                            owner: None,
                        });
                    }
                    let heir = c
                        .members
                        .find_one(doc! {"room_id": &room_id})
                        .sort(doc! {"joined_at": 1, "username": 1})
                        .session(&mut *s)
                        .await?
                        .and_then(|m| m.get_str("username").ok().map(str::to_owned));
                    if let Some(heir) = &heir {
                        c.rooms
                            .update_one(
                                doc! {"_id": &room_id, "owner": &username},
                                doc! {"$set": {"owner": heir}},
                            )
                            .session(&mut *s)
                            .await?;
                    }
                    let owner = c
                        .rooms
                        .find_one(doc! {"_id": &room_id})
                        .session(&mut *s)
                        .await?
                        .and_then(|r| r.get_str("owner").ok().map(str::to_owned));
                    Ok(Removed { remaining, owner })
                })
            })
            .await?;
            if removed.remaining == 0 {
                delete_room_docs(&c, &room_id).await?;
            }
            Ok(removed)
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(move |_, c| async move {
            let key = doc! {"room_id": &room_id, "username": &username};
            if banned {
                c.bans
                    .update_one(key, doc! {"$setOnInsert": {"banned_at": now_ms() as i64}})
                    .upsert(true)
                    .await
                    .map(|_| ())
                    .map_err(err)
            } else {
                c.bans.delete_one(key).await.map(|_| ()).map_err(err)
            }
        })
    }

    fn append_message(&self, msg: Arc<NewMessage>) -> StoreFuture<Appended> {
        let (tx, rx) = oneshot::channel();
        let sent = self.appends.send((msg, tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
            rx.await
                .map_err(|_| StoreError::Unavailable("the store is closed".into()))?
        })
    }

    fn messages_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<RoomMessage>> {
        let room_id = room_id.to_owned();
        self.run(move |_, c| async move {
            let after = after_seq.min(i64::MAX as u64) as i64;
            let docs = collect(
                c.messages
                    .find(doc! {"room_id": &room_id, "seq": {"$gt": after}})
                    .sort(doc! {"seq": 1})
                    .limit(limit as i64)
                    .await
                    .map_err(err)?,
            )
            .await?;
            let mut out = Vec::with_capacity(docs.len());
            for d in &docs {
                let keys_doc = d
                    .get_document("keys")
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let mut keys = Vec::with_capacity(keys_doc.len());
                for name in keys_doc.keys() {
                    keys.push((name.clone(), get_bin(keys_doc, name)?));
                }
                keys.sort();
                out.push(RoomMessage {
                    seq: get_u64(d, "seq")?,
                    ts: get_u64(d, "ts")?,
                    message: NewMessage {
                        room_id: room_id.clone(),
                        msg_id: get_bin(d, "msg_id")?,
                        sender: get_str(d, "sender")?,
                        nonce: get_bin(d, "nonce")?,
                        key_commitment: get_bin(d, "key_commitment")?,
                        ciphertext: get_bin(d, "ciphertext")?,
                        signature: get_bin(d, "signature")?,
                        keys,
                        check_members: false,
                    },
                });
            }
            Ok(out)
        })
    }

    fn find_message(
        &self,
        room_id: &str,
        sender: &str,
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let filter = doc! {"room_id": room_id, "sender": sender, "msg_id": bin(msg_id)};
        self.run(move |_, c| async move {
            match c
                .messages
                .find_one(filter)
                .projection(doc! {"seq": 1, "ts": 1})
                .await
                .map_err(err)?
            {
                Some(d) => Ok(Some((get_u64(&d, "seq")?, get_u64(&d, "ts")?))),
                None => Ok(None),
            }
        })
    }

    fn history(&self, room_id: &str, username: &str, q: HistoryQuery) -> StoreFuture<HistoryPage> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.run(move |_, c| async move {
            let key_field = format!("keys.{username}");
            let mut range = doc! {"$gt": q.after_seq.unwrap_or(0) as i64};
            if let Some(before) = q.before_seq {
                range.insert("$lt", before.min(i64::MAX as u64) as i64);
            }
            let filter = doc! {"room_id": &room_id, "seq": range, &key_field: {"$exists": true}};
            let ascending = q.ascending();
            let limit = q.limit.max(1);
            let docs = collect(
                c.messages
                    .find(filter)
                    .sort(doc! {"seq": if ascending { 1 } else { -1 }})
                    .limit(limit as i64 + 1)
                    .projection(doc! {
                        "seq": 1, "ts": 1, "msg_id": 1, "sender": 1, "nonce": 1, "key_commitment": 1,
                        "ciphertext": 1, "signature": 1, &key_field: 1,
                    })
                    .await
                    .map_err(err)?,
            )
            .await?;
            let mut page = PageBuilder::new(q);
            for d in &docs {
                let key = d
                    .get_document("keys")
                    .map_err(|e| StoreError::Backend(e.to_string()))
                    .and_then(|k| get_bin(k, &username))?;
                let more = page.push(StoredMessage {
                    seq: get_u64(d, "seq")?,
                    ts: get_u64(d, "ts")?,
                    msg_id: get_bin(d, "msg_id")?,
                    sender: get_str(d, "sender")?,
                    nonce: get_bin(d, "nonce")?,
                    key_commitment: get_bin(d, "key_commitment")?,
                    ciphertext: get_bin(d, "ciphertext")?,
                    signature: get_bin(d, "signature")?,
                    key,
                });
                if !more {
                    break;
                }
            }
            Ok(page.finish())
        })
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.run(move |_, c| async move {
            let batch = policy.batch.max(1) as i64;
            let mut ids: Vec<Bson> = Vec::new();
            if policy.older_than_ts > 0 {
                let docs = collect(
                    c.messages
                        .find(doc! {"ts": {"$lt": policy.older_than_ts as i64}})
                        .sort(doc! {"ts": 1})
                        .limit(batch)
                        .projection(doc! {"_id": 1})
                        .await
                        .map_err(err)?,
                )
                .await?;
                ids.extend(docs.into_iter().filter_map(|d| d.get("_id").cloned()));
            }
            if policy.max_per_room > 0 && (ids.len() as i64) < batch {
                let rooms = collect(
                    c.rooms
                        .find(doc! {})
                        .projection(doc! {"_id": 1})
                        .await
                        .map_err(err)?,
                )
                .await?;
                for room in rooms {
                    let room_id = get_str(&room, "_id")?;
                    let left = batch - ids.len() as i64;
                    if left <= 0 {
                        break;
                    }
                    let cutoff = c
                        .messages
                        .find_one(doc! {"room_id": &room_id})
                        .sort(doc! {"seq": -1})
                        .skip(policy.max_per_room)
                        .projection(doc! {"seq": 1})
                        .await
                        .map_err(err)?;
                    if let Some(cutoff) = cutoff {
                        let cutoff = get_u64(&cutoff, "seq")? as i64;
                        let docs = collect(
                            c.messages
                                .find(doc! {"room_id": &room_id, "seq": {"$lte": cutoff}})
                                .sort(doc! {"seq": 1})
                                .limit(left)
                                .projection(doc! {"_id": 1})
                                .await
                                .map_err(err)?,
                        )
                        .await?;
                        ids.extend(docs.into_iter().filter_map(|d| d.get("_id").cloned()));
                    }
                }
            }
            if ids.is_empty() {
                return Ok(0);
            }
            let res = c
                .messages
                .delete_many(doc! {"_id": {"$in": ids}})
                .await
                .map_err(err)?;
            Ok(res.deleted_count)
        })
    }

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
