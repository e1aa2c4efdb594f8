//! Persistence behind one trait, so the actors do not know which database
//! they talk to: [`sqlite`] (embedded, the default), [`postgres`] and
//! [`mongo`], chosen by `store.url` ([`StoreKind`], [`open`]).
//!
//! Each backend's folder holds only its dialect. What every store does the
//! same way is written once here: the group-commit queue ([`batch`]), the
//! history page walk and its limits ([`page`]), retention's plan
//! ([`purge`]), the directory's assembly ([`DirectoryEntry::assemble`]) and
//! the wrapped-key blob of the SQL stores ([`keyblob`]).
//!
//! Every method returns a `'static` future: the actors hand work to the store
//! and keep serving while it runs. A future that resolves `Ok` means the
//! change is durable (committed and fsynced for SQLite, journaled with
//! majority write concern for MongoDB).
//!
//! `append_entry` assigns the room's next `seq` inside the store's own
//! commit order and deduplicates by (room, device, msg_id) there, so seq stays
//! gapless even when a commit fails or two copies of one message race.

use std::future::Future;

pub use crate::message::{EntryKind, LogEntry};
use std::pin::Pin;
use std::sync::Arc;

pub(crate) mod batch;
pub mod mongo;
pub mod page;
pub mod postgres;
pub(crate) mod purge;
pub mod sqlite;

pub use page::{HistoryPage, HistoryQuery, PageBuilder, PageItem};

pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A commit for an epoch the group has left (the first commit for
    /// an epoch won); the group's current epoch.
    #[error("the group is at epoch {0}")]
    StaleEpoch(u64),
    /// A uniqueness rule was broken (username or room name taken).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
    /// A join of a user the room has banned (a store shared by several
    /// processes checks this inside the membership write).
    #[error("the user is banned from the room")]
    Banned,
    /// A join past the room's member limit (checked inside the membership
    /// write by a store shared by several processes).
    #[error("the room is full")]
    RoomFull,
    /// A join or creation past the user's `max_rooms_per_user` (checked
    /// inside the write by a store shared by several processes).
    #[error("the user is in too many rooms")]
    TooManyRooms,
    /// An owner's write (`by`) from someone who is not, at commit, the
    /// room's recorded owner and a member: another process (or a write
    /// committed just before) changed the owner.
    #[error("not the room's owner")]
    NotOwner,
}

/// What removing a member left, decided inside the removal's transaction
/// (so two members leaving at once cannot both think the other stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Members left. At 0 the room is gone: its record, bans, membership
    /// periods and messages were deleted with the last member.
    pub remaining: u64,
    /// The room's owner after the write: when the owner left, the
    /// earliest-joined remaining member (by `joined_at`, then name). `None`
    /// when the room is gone.
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub username: String,
    pub sign_key: Vec<u8>,
    pub enc_key: Vec<u8>,
    pub created_at: u64,
}

/// A user's device (PROTOCOL.md `prove`): the certificate
/// by which the user's identity key vouches for the device's MLS key, as
/// the server first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub username: String,
    pub device_id: Vec<u8>,
    pub certificate: Vec<u8>,
    pub mls_key: Vec<u8>,
    pub added_at: u64,
}

/// What [`Store::add_device`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAdded {
    /// A new device, now recorded.
    Added,
    /// Recorded before with the same MLS key (the stored certificate stays).
    Known,
    /// Recorded before with another MLS key (`invalid_device`).
    OtherKey,
    /// Removed: it may not log in again.
    Removed,
    /// The user has `max` devices, or has recorded [`DEVICE_RECORDS_PER_LIVE`]
    /// × `max` counting removed ones (`too_many_devices`).
    TooMany,
}

impl DeviceAdded {
    /// The one decision every store makes: from the device's record if any
    /// (its MLS key, whether removed), and the user's live and total counts.
    pub(crate) fn decide(
        known: Option<(&[u8], bool)>,
        mls_key: &[u8],
        live: u64,
        total: u64,
        max: u64,
    ) -> Self {
        match known {
            Some((_, true)) => DeviceAdded::Removed,
            Some((key, false)) if key == mls_key => DeviceAdded::Known,
            Some(_) => DeviceAdded::OtherKey,
            None if live >= max || total >= max.saturating_mul(DEVICE_RECORDS_PER_LIVE) => {
                DeviceAdded::TooMany
            }
            None => DeviceAdded::Added,
        }
    }
}

/// A room's MLS group as the store keeps it, one row written
/// with each commit (DESIGN.md, "Rooms as MLS groups").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    /// The public state (`mls::RoomGroup::state`).
    pub state: Vec<u8>,
    /// The GroupInfo of the current epoch.
    pub group_info: Vec<u8>,
    /// The epoch made by the latest commit that removed a leaf: messages of
    /// earlier epochs are refused from then on.
    pub removal_epoch: u64,
}

/// A commit's change to the room's group, written in the transaction that
/// stores the commit, and only if the group is still at `from_epoch`.
#[derive(Debug, Clone)]
pub struct GroupChange {
    pub from_epoch: u64,
    pub state: Vec<u8>,
    /// Whether the commit removed a leaf (it becomes the removal epoch).
    pub removed: bool,
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub room_id: String,
    pub entry: LogEntry,
    /// Commits only.
    pub commit: Option<GroupChange>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    pub ts: u64,
    pub entry: LogEntry,
}

/// A `history` answer: a page of entries from the requester's
/// membership periods, and the oldest seq the room still stores (0 when its
/// log is empty).
#[derive(Debug, Clone, Default)]
pub struct EntryHistory {
    pub page: HistoryPage<StoredEntry>,
    pub first_seq: u64,
}

/// Removed devices stay recorded, so they cannot come back; they count
/// toward a cap of this many times the per-user limit, so adding and
/// removing devices cannot grow the table without end.
pub const DEVICE_RECORDS_PER_LIVE: u64 = 4;

#[derive(Debug, Clone, Default)]
pub struct RoomRecord {
    pub room_id: String,
    pub name: String,
    pub owner: String,
    pub password_hash: Option<String>,
    pub hidden: bool,
    pub created_at: u64,
    pub last_seq: u64,
}

/// A room as the directory loads it at start-up: the record and its members'
/// names in join order.
#[derive(Debug, Clone)]
pub struct DirectoryEntry {
    pub room: RoomRecord,
    pub members: Vec<String>,
    /// The room's group epoch.
    pub epoch: u64,
}

impl DirectoryEntry {
    /// The directory from its rooms, in listing order, and (room, member)
    /// pairs in join order; a member of a room not listed is left out.
    /// `epochs`: (room, group epoch) of the rooms that have a group.
    pub(crate) fn assemble(
        rooms: Vec<RoomRecord>,
        members: impl IntoIterator<Item = (String, String)>,
        epochs: impl IntoIterator<Item = (String, u64)>,
    ) -> Vec<DirectoryEntry> {
        let index: std::collections::HashMap<String, usize> = rooms
            .iter()
            .enumerate()
            .map(|(i, r)| (r.room_id.clone(), i))
            .collect();
        let mut entries: Vec<DirectoryEntry> = rooms
            .into_iter()
            .map(|room| DirectoryEntry {
                room,
                members: Vec::new(),
                epoch: 0,
            })
            .collect();
        for (room_id, username) in members {
            if let Some(&i) = index.get(&room_id) {
                entries[i].members.push(username);
            }
        }
        for (room_id, epoch) in epochs {
            if let Some(&i) = index.get(&room_id) {
                entries[i].epoch = epoch;
            }
        }
        entries
    }
}

#[derive(Debug, Clone)]
pub struct MemberRecord {
    pub user: UserRecord,
    pub joined_at: u64,
}

/// What a RoomActor loads when it starts.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    /// The room's record as committed (`None`: the room is gone). Rooms
    /// take `last_seq` from here as the point their live delivery starts.
    pub record: Option<RoomRecord>,
    /// Members in join order (earliest first), with their keys.
    pub members: Vec<MemberRecord>,
    pub bans: Vec<String>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub ts: u64,
    /// True when (room, device, msg_id) was stored before: seq and ts are the
    /// original ones and nothing new was written.
    pub duplicate: bool,
}

/// Changes an owner makes to a room's record.
#[derive(Debug, Clone, Default)]
pub struct RoomUpdate {
    pub name: Option<String>,
    pub owner: Option<String>,
    /// `Some(None)` removes the password.
    pub password_hash: Option<Option<String>>,
    /// The owner making the change: applied only if, at commit, `by` is the
    /// room's recorded owner and a member (`NotOwner` otherwise).
    pub by: Option<String>,
}

/// What retention should delete.
#[derive(Debug, Clone, Copy)]
pub struct PurgePolicy {
    /// Delete entries with `ts` below this (0 = no age limit).
    pub older_than_ts: u64,
    /// Keep at most this many newest entries per room (0 = no limit).
    pub max_per_room: u64,
    /// Most entries deleted per transaction.
    pub batch: usize,
}

/// What a store checks inside its own writes differs, and says so here:
///
/// - **One process** (SQLite, MongoDB): the room actor's view is the truth,
///   so the member limit and `max_rooms_per_user` are checked by the
///   actors before the write and not again inside it.
/// - **Shared by processes** (PostgreSQL, [`StoreKind::shared`]): every
///   rule another process could break meanwhile is checked inside the
///   write that depends on it: bans (`Banned`), the member limit
///   (`RoomFull`), the user's rooms (`TooManyRooms`) and the owner
///   (`NotOwner`).
///
/// Every store checks the owner of an owner's write (`by`), decides who is
/// left and who inherits in the removal's own transaction, assigns gapless
/// seqs, deduplicates appends and lets the first commit for an epoch win.
pub trait Store: Send + Sync + 'static {
    /// Answers when the store can serve requests (for /healthz).
    fn ping(&self) -> StoreFuture<()>;

    /// Stores a new user. `Conflict` when the username is taken.
    fn create_user(&self, user: UserRecord) -> StoreFuture<()>;
    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>>;

    /// Records `device` unless its id is known for the user,
    /// keeping the user under `max` live devices (see [`DeviceAdded`]).
    /// Every store decides inside the write, so logins racing on several
    /// processes cannot pass the limit.
    fn add_device(&self, device: DeviceRecord, max: u64) -> StoreFuture<DeviceAdded>;
    /// The user's devices that are not removed, oldest first.
    fn list_devices(&self, username: &str) -> StoreFuture<Vec<DeviceRecord>>;
    /// Removes a device for good: no longer listed, and it cannot log in
    /// again. `false` when the user has no such live device.
    fn remove_device(&self, username: &str, device_id: &[u8], at: u64) -> StoreFuture<bool>;
    /// The live devices of a room's current members: who may hold a leaf in
    /// its group (`room::group::Devices`).
    fn room_devices(&self, room_id: &str) -> StoreFuture<Vec<DeviceRecord>>;

    /// Creates a room whose MLS group is `group` (epoch 0),
    /// with its owner as first member, in one transaction. `Conflict` when
    /// the name or the room id is taken.
    fn create_group_room(&self, room: RoomRecord, group: GroupRow) -> StoreFuture<()>;
    /// The room's group (`None` for a room without one).
    fn load_group(&self, room_id: &str) -> StoreFuture<Option<GroupRow>>;
    /// Stores an entry durably with the room's next seq. A commit moves the group from
    /// `from_epoch` to the next epoch in the same transaction, with its
    /// state and GroupInfo, and only if the group is still at `from_epoch`:
    /// otherwise nothing is written and the answer is `StaleEpoch(current)`.
    /// So the first commit for an epoch wins, on every store and across
    /// processes. A message resent as (room, device, msg_id) answers its
    /// stored seq (`duplicate`).
    fn append_entry(&self, entry: Arc<NewEntry>) -> StoreFuture<Appended>;
    /// Up to `limit` entries of the room after `after_seq`, in seq order.
    fn entries_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEntry>>;
    /// `history`: the room's entries from the periods when `username` was a
    /// member, paged by [`PageBuilder`].
    fn entry_history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<EntryHistory>;
    /// The dedupe lookup: the stored message `msg_id` of `device_id` in
    /// the room, as (seq, ts).
    fn find_entry(
        &self,
        room_id: &str,
        device_id: &[u8],
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>>;
    /// `publish_group_info`: replaces the GroupInfo if the group is at
    /// `epoch`; `false` when it is not.
    fn set_group_info(&self, room_id: &str, epoch: u64, group_info: Vec<u8>) -> StoreFuture<bool>;

    /// All rooms with their member names, for the directory at start-up.
    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>>;
    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState>;
    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()>;
    /// Deletes the room, its members, bans and messages.
    fn delete_room(&self, room_id: &str) -> StoreFuture<()>;

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()>;
    /// Removes a member; with `ban` also records the ban, in one
    /// transaction. With `by` (a kick or ban), only if `by` is then the
    /// room's owner and a member (`NotOwner` otherwise). The owner leaving
    /// passes the room to the earliest-joined remaining member; the last
    /// member leaving deletes the room (see [`Removed`]).
    fn remove_member(
        &self,
        room_id: &str,
        username: &str,
        ban: bool,
        by: Option<&str>,
    ) -> StoreFuture<Removed>;
    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()>;

    /// Deletes at most `policy.batch` old entries in one transaction and
    /// returns how many went; callers repeat while a full batch goes.
    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64>;

    /// Finishes pending writes and releases the database. Later calls fail.
    fn close(&self) -> StoreFuture<()>;
}

pub type SharedStore = Arc<dyn Store>;

/// Which store a `store.url` names: the one place the URL schemes are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// No URL: the embedded database at `store.path`.
    Sqlite,
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mongodb://` or `mongodb+srv://`.
    Mongo,
}

impl StoreKind {
    pub fn from_url(url: &str) -> Result<StoreKind, String> {
        if url.is_empty() {
            Ok(StoreKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreKind::Postgres)
        } else if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
            Ok(StoreKind::Mongo)
        } else {
            Err(
                "store.url must start with postgres://, postgresql://, mongodb:// or mongodb+srv:// \
                 (or be empty for the embedded SQLite store)"
                    .into(),
            )
        }
    }

    /// Whether several server processes may share the store: it checks
    /// membership, room capacity and per-user rooms inside its writes.
    pub fn shared(self) -> bool {
        self == StoreKind::Postgres
    }
}

/// The schema version of this server's databases: accounts
/// (identity keys), MLS rooms and their logs. 2 was protocol v2's; 1 its
/// predecessor's.
pub const SCHEMA_VERSION: i64 = 3;

/// A database of an older schema that holds data, refused with what to do.
pub(crate) fn v2_refused(what: &str, found: i64) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} has schema version {found}: it holds protocol-v2 accounts and rooms, which \
         this server (protocol v3 only) cannot serve; v2 messages cannot be read by v3 \
         clients. Start this server on a new database (store.path or store.url); keep the \
         old one with a server release that speaks version 2 for as long as its users need it"
    ))
}

/// Opens the store the settings name, with the limits it enforces inside
/// its writes.
pub async fn open(settings: &crate::config::Settings) -> Result<SharedStore, StoreError> {
    let store = &settings.store;
    let batch = if store.group_commit {
        store.max_batch
    } else {
        1
    };
    let kind = StoreKind::from_url(&store.url).map_err(StoreError::Unavailable)?;
    let opened: SharedStore = match kind {
        StoreKind::Postgres => Arc::new(
            postgres::PostgresStore::connect(&store.url, batch)
                .await?
                .with_max_members(settings.limits.max_members_per_room)
                .with_max_rooms_per_user(settings.limits.max_rooms_per_user),
        ),
        StoreKind::Mongo => {
            Arc::new(mongo::MongoStore::connect(&store.url, Some(&store.database)).await?)
        }
        StoreKind::Sqlite => Arc::new(sqlite::SqliteStore::open(&store.path, batch)?),
    };
    Ok(opened)
}
