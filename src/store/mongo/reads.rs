//! MongoDB reads: the directory, a room's state, history pages (the shared
//! walk over one range: a message holds the keys of exactly the members it
//! was sent to, so `keys.<user>` existing is the membership test) and gap
//! fill.

use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;

use super::docs::{collect, err, get_bin, get_str, get_u64, room_from, user_from, Collections};
use crate::store::page::{read_page, MessageRows};
use crate::store::{
    DeviceRecord, DirectoryEntry, EntryHistory, EntryKind, GroupRow, HistoryQuery, LogEntry,
    MemberRecord, RoomState, StoreError, StoredEntry, UserRecord,
};

pub(super) async fn get_user(
    c: &Collections,
    username: &str,
) -> Result<Option<UserRecord>, StoreError> {
    match c
        .users
        .find_one(doc! {"_id": username})
        .await
        .map_err(err)?
    {
        Some(d) => Ok(Some(user_from(&d)?)),
        None => Ok(None),
    }
}

pub(super) async fn load_directory(c: &Collections) -> Result<Vec<DirectoryEntry>, StoreError> {
    let rooms = collect(
        c.rooms
            .find(doc! {})
            .sort(doc! {"created_at": 1, "_id": 1})
            .await
            .map_err(err)?,
    )
    .await?
    .iter()
    .map(room_from)
    .collect::<Result<Vec<_>, _>>()?;
    let members = collect(
        c.members
            .find(doc! {})
            .sort(doc! {"joined_at": 1, "_id": 1})
            .await
            .map_err(err)?,
    )
    .await?
    .iter()
    .map(|m| Ok((get_str(m, "room_id")?, get_str(m, "username")?)))
    .collect::<Result<Vec<_>, StoreError>>()?;
    let epochs = collect(c.groups.find(doc! {}).await.map_err(err)?)
        .await?
        .iter()
        .map(|g| Ok((get_str(g, "_id")?, get_u64(g, "epoch")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(DirectoryEntry::assemble(rooms, members, epochs))
}

pub(super) async fn load_room(c: &Collections, room_id: &str) -> Result<RoomState, StoreError> {
    let members = collect(
        c.members
            .find(doc! {"room_id": room_id})
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
    let bans = collect(c.bans.find(doc! {"room_id": room_id}).await.map_err(err)?)
        .await?
        .iter()
        .map(|b| get_str(b, "username"))
        .collect::<Result<_, _>>()?;
    let record = match c.rooms.find_one(doc! {"_id": room_id}).await.map_err(err)? {
        Some(d) => Some(room_from(&d)?),
        None => None,
    };
    Ok(RoomState {
        record,
        members: out,
        bans,
    })
}

pub(super) fn entry_key(room_id: &str, device_id: &[u8], msg_id: &[u8]) -> Document {
    use super::docs::bin;
    doc! {"room_id": room_id, "device_id": bin(device_id), "msg_id": bin(msg_id)}
}

/// The (seq, ts) of the one stored message or entry `filter` finds (the
/// dedupe lookups).
pub(super) async fn find_seq(
    coll: &Collection<Document>,
    filter: Document,
) -> Result<Option<(u64, u64)>, StoreError> {
    match coll
        .find_one(filter)
        .projection(doc! {"seq": 1, "ts": 1})
        .await
        .map_err(err)?
    {
        Some(d) => Ok(Some((get_u64(&d, "seq")?, get_u64(&d, "ts")?))),
        None => Ok(None),
    }
}

pub(super) async fn list_devices(
    c: &Collections,
    username: &str,
) -> Result<Vec<DeviceRecord>, StoreError> {
    devices_where(c, doc! {"username": username, "removed_at": Bson::Null}).await
}

pub(super) async fn room_devices(
    c: &Collections,
    room_id: &str,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let members = collect(
        c.members
            .find(doc! {"room_id": room_id})
            .await
            .map_err(err)?,
    )
    .await?;
    let names: Vec<String> = members
        .iter()
        .map(|m| get_str(m, "username"))
        .collect::<Result<_, _>>()?;
    devices_where(
        c,
        doc! {"username": {"$in": names}, "removed_at": Bson::Null},
    )
    .await
}

async fn devices_where(c: &Collections, filter: Document) -> Result<Vec<DeviceRecord>, StoreError> {
    let cursor = c
        .devices
        .find(filter)
        .sort(doc! {"username": 1, "added_at": 1, "device_id": 1})
        .await
        .map_err(err)?;
    collect(cursor)
        .await?
        .iter()
        .map(|d| {
            Ok(DeviceRecord {
                username: get_str(d, "username")?,
                device_id: get_bin(d, "device_id")?,
                certificate: get_bin(d, "certificate")?,
                mls_key: get_bin(d, "mls_key")?,
                added_at: get_u64(d, "added_at")?,
            })
        })
        .collect()
}

pub(super) async fn load_group(
    c: &Collections,
    room_id: &str,
) -> Result<Option<GroupRow>, StoreError> {
    let Some(d) = c
        .groups
        .find_one(doc! {"_id": room_id})
        .await
        .map_err(err)?
    else {
        return Ok(None);
    };
    Ok(Some(GroupRow {
        group_id: get_bin(&d, "group_id")?,
        epoch: get_u64(&d, "epoch")?,
        state: get_bin(&d, "state")?,
        group_info: get_bin(&d, "group_info")?,
        removal_epoch: get_u64(&d, "removal_epoch")?,
    }))
}

pub(super) async fn entries_after(
    c: &Collections,
    room_id: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let lo = after_seq.saturating_add(1).min(i64::MAX as u64) as i64;
    entry_docs(c, room_id, lo, i64::MAX, limit, true).await
}

async fn entry_docs(
    c: &Collections,
    room_id: &str,
    a: i64,
    b: i64,
    n: usize,
    ascending: bool,
) -> Result<Vec<StoredEntry>, StoreError> {
    let cursor = c
        .entries
        .find(doc! {"room_id": room_id, "seq": {"$gte": a, "$lte": b}})
        .sort(doc! {"seq": if ascending { 1 } else { -1 }})
        .limit(n.min(i64::MAX as usize) as i64)
        .await
        .map_err(err)?;
    collect(cursor)
        .await?
        .iter()
        .map(|d| {
            Ok(StoredEntry {
                seq: get_u64(d, "seq")?,
                ts: get_u64(d, "ts")?,
                entry: LogEntry {
                    kind: EntryKind::from_code(get_u64(d, "kind")? as i64)
                        .unwrap_or(EntryKind::Message),
                    sender: get_str(d, "sender")?,
                    device_id: get_bin(d, "device_id")?,
                    msg_id: d.get_binary_generic("msg_id").ok().cloned(),
                    epoch: get_u64(d, "epoch")?,
                    data: get_bin(d, "data")?,
                    group_info: d.get_binary_generic("group_info").ok().cloned(),
                },
            })
        })
        .collect()
}

/// The page walk over `entries`.
struct EntryRows<'c> {
    c: &'c Collections,
    room_id: &'c str,
}

impl MessageRows<StoredEntry> for EntryRows<'_> {
    async fn chunk(
        &mut self,
        a: i64,
        b: i64,
        n: usize,
        ascending: bool,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        entry_docs(self.c, self.room_id, a, b, n, ascending).await
    }
}

/// MongoDB keeps no membership periods: a member reads the log from the
/// seq their current membership began at (recorded in the member's
/// document as `from_seq`), never what was sent before they joined. Past
/// periods are not kept (fewer entries than PostgreSQL and SQLite show a
/// member who left and came back; never more).
pub(super) async fn entry_history(
    c: &Collections,
    room_id: &str,
    username: &str,
    q: HistoryQuery,
) -> Result<EntryHistory, StoreError> {
    let member = c
        .members
        .find_one(doc! {"room_id": room_id, "username": username})
        .await
        .map_err(err)?;
    let periods = match member {
        Some(m) => vec![(m.get_i64("from_seq").unwrap_or(1).max(1), i64::MAX)],
        None => Vec::new(),
    };
    let mut rows = EntryRows { c, room_id };
    let page = read_page(&mut rows, periods, q).await?;
    let first = entry_docs(c, room_id, 1, i64::MAX, 1, true).await?;
    Ok(EntryHistory {
        page,
        first_seq: first.first().map_or(0, |e| e.seq),
    })
}
