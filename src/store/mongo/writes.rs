//! MongoDB writes: accounts and devices, rooms with their groups, the log's
//! appends (each in its own transaction), membership, owner changes and
//! retention.

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection};

use super::docs::{
    bin, collect, err, get_str, get_u64, is_duplicate_key, transaction, Collections,
};
use crate::store::purge::{MessageKey, PurgeRows};
use crate::store::{
    Appended, DeviceAdded, DeviceRecord, GroupRow, NewEntry, PurgePolicy, Removed, RoomRecord,
    RoomUpdate, StoreError, UserRecord,
};
use crate::util::now_ms;
use crate::validate::room_name_key;

pub(super) async fn create_user(c: &Collections, user: &UserRecord) -> Result<(), StoreError> {
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
}

/// A room: the room, its owner as member and its group, in one
/// transaction.
pub(super) async fn create_group_room(
    client: &Client,
    c: &Collections,
    room: &RoomRecord,
    group: &GroupRow,
) -> Result<(), StoreError> {
    let group_doc = doc! {
        "_id": &room.room_id,
        "group_id": bin(&group.group_id),
        "epoch": group.epoch as i64,
        "state": bin(&group.state),
        "group_info": bin(&group.group_info),
        "removal_epoch": group.removal_epoch as i64,
    };
    create_room_with(client, c, room, Some(group_doc)).await
}

async fn create_room_with(
    client: &Client,
    c: &Collections,
    room: &RoomRecord,
    group: Option<Document>,
) -> Result<(), StoreError> {
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
        "from_seq": 1_i64,
    };
    transaction(client, |s| {
        let (c, room_doc, member, group) =
            (c.clone(), room_doc.clone(), member.clone(), group.clone());
        Box::pin(async move {
            c.rooms.insert_one(room_doc).session(&mut *s).await?;
            c.members.insert_one(member).session(&mut *s).await?;
            if let Some(group) = group {
                c.groups.insert_one(group).session(&mut *s).await?;
            }
            Ok(())
        })
    })
    .await
}

pub(super) async fn update_room(
    c: &Collections,
    room_id: &str,
    update: &RoomUpdate,
) -> Result<(), StoreError> {
    if let Some(by) = &update.by {
        check_owner(c, room_id, by).await?;
    }
    let mut set = Document::new();
    let mut unset = Document::new();
    if let Some(name) = &update.name {
        set.insert("name", name);
        // A hidden room's name key is its id (validate::room_name_key).
        let hidden = c
            .rooms
            .find_one(doc! {"_id": room_id})
            .await
            .map_err(err)?
            .is_some_and(|r| r.get_bool("hidden").unwrap_or(false));
        set.insert("name_folded", room_name_key(name, hidden, room_id));
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
        .update_one(doc! {"_id": room_id}, change)
        .await
        .map(|_| ())
        .map_err(err)
}

pub(super) async fn add_member(
    c: &Collections,
    room_id: &str,
    username: &str,
    joined_at: u64,
) -> Result<(), StoreError> {
    // Not atomic with a ban on another process (see ARCHITECTURE.md:
    // several processes run on PostgreSQL).
    if c.bans
        .find_one(doc! {"room_id": room_id, "username": username})
        .await
        .map_err(err)?
        .is_some()
    {
        return Err(StoreError::Banned);
    }
    // Where this membership's reading of the log begins (see
    // `reads::entry_history`); the room actor orders this join and appends.
    let from_seq = c
        .rooms
        .find_one(doc! {"_id": room_id})
        .await
        .map_err(err)?
        .and_then(|r| r.get_i64("last_seq").ok())
        .unwrap_or(0)
        + 1;
    let res = c
        .members
        .insert_one(doc! {
            "room_id": room_id,
            "username": username,
            "joined_at": joined_at as i64,
            "from_seq": from_seq,
        })
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

pub(super) async fn remove_member(
    client: &Client,
    c: &Collections,
    room_id: &str,
    username: &str,
    ban: bool,
    by: Option<&str>,
) -> Result<Removed, StoreError> {
    // Checked before the transaction: one process per MongoDB store
    // (ARCHITECTURE.md), whose room actor orders owner changes.
    if let Some(by) = by {
        check_owner(c, room_id, by).await?;
    }
    let removed = transaction(client, |s| {
        let (c, room_id, username) = (c.clone(), room_id.to_owned(), username.to_owned());
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
        delete_room_docs(c, room_id).await?;
    }
    Ok(removed)
}

pub(super) async fn set_ban(
    c: &Collections,
    room_id: &str,
    username: &str,
    banned: bool,
) -> Result<(), StoreError> {
    let key = doc! {"room_id": room_id, "username": username};
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
}

/// Retention's questions (see [`crate::store::purge`]) about the log.
struct Purge<'c> {
    c: &'c Collections,
    log: &'c Collection<Document>,
}

impl PurgeRows for Purge<'_> {
    async fn older_than(
        &mut self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        let docs = collect(
            self.log
                .find(doc! {"ts": {"$lt": before as i64}})
                .sort(doc! {"ts": 1})
                .limit(limit as i64)
                .projection(doc! {"room_id": 1, "seq": 1})
                .await
                .map_err(err)?,
        )
        .await?;
        docs.iter()
            .map(|d| Ok((get_str(d, "room_id")?, get_u64(d, "seq")? as i64)))
            .collect()
    }

    async fn rooms(&mut self) -> Result<Vec<String>, StoreError> {
        collect(
            self.c
                .rooms
                .find(doc! {})
                .projection(doc! {"_id": 1})
                .await
                .map_err(err)?,
        )
        .await?
        .iter()
        .map(|r| get_str(r, "_id"))
        .collect()
    }

    async fn beyond_newest(
        &mut self,
        room: &str,
        keep: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        let cutoff = self
            .log
            .find_one(doc! {"room_id": room})
            .sort(doc! {"seq": -1})
            .skip(keep)
            .projection(doc! {"seq": 1})
            .await
            .map_err(err)?;
        let Some(cutoff) = cutoff else {
            return Ok(Vec::new());
        };
        let cutoff = get_u64(&cutoff, "seq")? as i64;
        let docs = collect(
            self.log
                .find(doc! {"room_id": room, "seq": {"$lte": cutoff}})
                .sort(doc! {"seq": 1})
                .limit(limit as i64)
                .projection(doc! {"seq": 1})
                .await
                .map_err(err)?,
        )
        .await?;
        docs.iter()
            .map(|d| Ok((room.to_owned(), get_u64(d, "seq")? as i64)))
            .collect()
    }

    async fn delete(&mut self, doomed: &[MessageKey]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for room in doomed.chunk_by(|a, b| a.0 == b.0) {
            let seqs: Vec<i64> = room.iter().map(|(_, s)| *s).collect();
            deleted += self
                .log
                .delete_many(doc! {"room_id": &room[0].0, "seq": {"$in": seqs}})
                .await
                .map_err(err)?
                .deleted_count;
        }
        Ok(deleted)
    }
}

pub(super) async fn purge(c: &Collections, policy: PurgePolicy) -> Result<u64, StoreError> {
    crate::store::purge::purge(&mut Purge { c, log: &c.entries }, policy).await
}

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
pub(super) async fn delete_room_docs(c: &Collections, room_id: &str) -> Result<(), StoreError> {
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
    c.entries
        .delete_many(doc! {"room_id": room_id})
        .await
        .map_err(err)?;
    c.groups
        .delete_one(doc! {"_id": room_id})
        .await
        .map_err(err)?;
    Ok(())
}

/// In one transaction that also writes the user's document, so two logins
/// adding devices for one user at once conflict and one retries, seeing
/// the other's device.
pub(super) async fn add_device(
    client: &Client,
    c: &Collections,
    device: &DeviceRecord,
    max: u64,
) -> Result<DeviceAdded, StoreError> {
    transaction(client, |s| {
        let (c, device) = (c.clone(), device.clone());
        Box::pin(async move {
            let user = doc! {"username": &device.username};
            let known = c
                .devices
                .find_one(doc! {"username": &device.username, "device_id": bin(&device.device_id)})
                .session(&mut *s)
                .await?;
            let live = c
                .devices
                .count_documents(doc! {"username": &device.username, "removed_at": Bson::Null})
                .session(&mut *s)
                .await?;
            let total = c.devices.count_documents(user).session(&mut *s).await?;
            let known = known.map(|d| {
                let key = d.get_binary_generic("mls_key").cloned().unwrap_or_default();
                let removed = !matches!(d.get("removed_at"), None | Some(Bson::Null));
                (key, removed)
            });
            let added = DeviceAdded::decide(
                known.as_ref().map(|(k, r)| (k.as_slice(), *r)),
                &device.mls_key,
                live,
                total,
                max,
            );
            if added == DeviceAdded::Added {
                c.users
                    .update_one(
                        doc! {"_id": &device.username},
                        doc! {"$inc": {"device_writes": 1_i64}},
                    )
                    .session(&mut *s)
                    .await?;
                c.devices
                    .insert_one(doc! {
                        "username": &device.username,
                        "device_id": bin(&device.device_id),
                        "certificate": bin(&device.certificate),
                        "mls_key": bin(&device.mls_key),
                        "added_at": device.added_at as i64,
                        "removed_at": Bson::Null,
                    })
                    .session(&mut *s)
                    .await?;
            }
            Ok(added)
        })
    })
    .await
}

pub(super) async fn remove_device(
    c: &Collections,
    username: &str,
    device_id: &[u8],
    at: u64,
) -> Result<bool, StoreError> {
    c.devices
        .update_one(
            doc! {"username": username, "device_id": bin(device_id), "removed_at": Bson::Null},
            doc! {"$set": {"removed_at": at as i64}},
        )
        .await
        .map(|r| r.modified_count == 1)
        .map_err(err)
}

/// What an append found, inside its transaction.
enum EntryOutcome {
    Stored(Appended),
    Stale(u64),
    NoRoom,
}

/// An entry in one transaction: the duplicate check, the commit's move
/// of the group from its epoch (the first commit for an epoch wins), the
/// room's next seq, the entry.
pub(super) async fn append_entry(
    client: &Client,
    c: &Collections,
    new: &NewEntry,
) -> Result<Appended, StoreError> {
    let outcome = transaction(client, |s| {
        let (c, new) = (c.clone(), new.clone());
        Box::pin(async move {
            let e = &new.entry;
            if let Some(msg_id) = &e.msg_id {
                let dup = c
                    .entries
                    .find_one(doc! {
                        "room_id": &new.room_id,
                        "device_id": bin(&e.device_id),
                        "msg_id": bin(msg_id),
                    })
                    .session(&mut *s)
                    .await?;
                if let Some(d) = dup {
                    return Ok(EntryOutcome::Stored(Appended {
                        seq: d.get_i64("seq").unwrap_or_default() as u64,
                        ts: d.get_i64("ts").unwrap_or_default() as u64,
                        duplicate: true,
                    }));
                }
            }
            if let Some(change) = &new.commit {
                let mut set = doc! {
                    "state": bin(&change.state),
                    "group_info": bin(e.group_info.as_deref().unwrap_or_default()),
                };
                if change.removed {
                    set.insert("removal_epoch", change.from_epoch as i64 + 1);
                }
                let moved = c
                    .groups
                    .update_one(
                        doc! {"_id": &new.room_id, "epoch": change.from_epoch as i64},
                        doc! {"$set": set, "$inc": {"epoch": 1_i64}},
                    )
                    .session(&mut *s)
                    .await?;
                if moved.matched_count == 0 {
                    let group = c
                        .groups
                        .find_one(doc! {"_id": &new.room_id})
                        .session(&mut *s)
                        .await?;
                    return Ok(match group {
                        Some(g) => {
                            EntryOutcome::Stale(g.get_i64("epoch").unwrap_or_default() as u64)
                        }
                        None => EntryOutcome::NoRoom,
                    });
                }
            }
            let room = c
                .rooms
                .find_one_and_update(
                    doc! {"_id": &new.room_id},
                    doc! {"$inc": {"last_seq": 1_i64}},
                )
                .return_document(ReturnDocument::After)
                .session(&mut *s)
                .await?;
            let Some(room) = room else {
                return Ok(EntryOutcome::NoRoom);
            };
            let seq = room.get_i64("last_seq").unwrap_or_default();
            let ts = now_ms() as i64;
            let mut entry = doc! {
                "room_id": &new.room_id,
                "seq": seq,
                "ts": ts,
                "kind": e.kind.code(),
                "sender": &e.sender,
                "device_id": bin(&e.device_id),
                "epoch": e.epoch as i64,
                "data": bin(&e.data),
            };
            if let Some(msg_id) = &e.msg_id {
                entry.insert("msg_id", bin(msg_id));
            }
            if let Some(info) = &e.group_info {
                entry.insert("group_info", bin(info));
            }
            c.entries.insert_one(entry).session(&mut *s).await?;
            Ok(EntryOutcome::Stored(Appended {
                seq: seq as u64,
                ts: ts as u64,
                duplicate: false,
            }))
        })
    })
    .await?;
    match outcome {
        EntryOutcome::Stored(a) => Ok(a),
        EntryOutcome::Stale(epoch) => Err(StoreError::StaleEpoch(epoch)),
        EntryOutcome::NoRoom => Err(StoreError::NotFound),
    }
}

pub(super) async fn set_group_info(
    c: &Collections,
    room_id: &str,
    epoch: u64,
    group_info: &[u8],
) -> Result<bool, StoreError> {
    c.groups
        .update_one(
            doc! {"_id": room_id, "epoch": epoch as i64},
            doc! {"$set": {"group_info": bin(group_info)}},
        )
        .await
        .map(|r| r.matched_count == 1)
        .map_err(err)
}
