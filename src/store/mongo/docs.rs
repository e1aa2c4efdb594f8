//! MongoDB documents: field access, record mapping, the collections and
//! their indexes, and transactions with retries.

use futures_util::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{Acknowledgment, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

use crate::store::{RoomRecord, StoreError, UserRecord};

pub(super) fn err(e: mongodb::error::Error) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::Conflict(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

pub(super) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

pub(super) fn bin(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

pub(super) fn get_bin(d: &Document, key: &str) -> Result<Vec<u8>, StoreError> {
    d.get_binary_generic(key)
        .cloned()
        .map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

pub(super) fn get_str(d: &Document, key: &str) -> Result<String, StoreError> {
    d.get_str(key)
        .map(str::to_owned)
        .map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

pub(super) fn get_u64(d: &Document, key: &str) -> Result<u64, StoreError> {
    match d.get(key) {
        Some(Bson::Int64(v)) => Ok(*v as u64),
        Some(Bson::Int32(v)) => Ok(*v as u64),
        other => Err(StoreError::Backend(format!(
            "{key}: expected an integer, got {other:?}"
        ))),
    }
}

pub(super) fn user_from(d: &Document) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        username: get_str(d, "_id")?,
        sign_key: get_bin(d, "sign_key")?,
        enc_key: get_bin(d, "enc_key")?,
        created_at: get_u64(d, "created_at")?,
    })
}

pub(super) fn room_from(d: &Document) -> Result<RoomRecord, StoreError> {
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

pub(super) fn durable() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

#[derive(Clone)]
pub(super) struct Collections {
    pub(super) users: Collection<Document>,
    pub(super) rooms: Collection<Document>,
    pub(super) members: Collection<Document>,
    pub(super) bans: Collection<Document>,
    pub(super) devices: Collection<Document>,
    pub(super) groups: Collection<Document>,
    pub(super) entries: Collection<Document>,
}

impl Collections {
    pub(super) fn new(db: &Database) -> Self {
        Collections {
            users: db.collection("users"),
            rooms: db.collection("rooms"),
            members: db.collection("members"),
            bans: db.collection("bans"),
            devices: db.collection("devices"),
            groups: db.collection("groups"),
            entries: db.collection("entries"),
        }
    }

    pub(super) async fn create_indexes(&self) -> Result<(), StoreError> {
        let indexes = [
            (&self.rooms, doc! {"name_folded": 1}, true),
            (&self.members, doc! {"room_id": 1, "username": 1}, true),
            (&self.members, doc! {"username": 1}, false),
            (&self.bans, doc! {"room_id": 1, "username": 1}, true),
            (&self.devices, doc! {"username": 1, "device_id": 1}, true),
            (&self.groups, doc! {"group_id": 1}, true),
            (&self.entries, doc! {"room_id": 1, "seq": 1}, true),
            (&self.entries, doc! {"ts": 1}, false),
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

pub(super) async fn collect(
    cursor: mongodb::Cursor<Document>,
) -> Result<Vec<Document>, StoreError> {
    cursor.try_collect().await.map_err(err)
}

/// Runs `body` in a transaction, retrying on transient transaction errors.
pub(super) async fn transaction<T, F>(client: &Client, mut body: F) -> Result<T, StoreError>
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
