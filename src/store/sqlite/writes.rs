//! SQLite writes. Each runs on the writer thread inside its own SAVEPOINT of
//! the batch's transaction (see the module above), with the writer's cached
//! per-room seq counters.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::reads::find_entry;
use super::schema::backend;
use crate::store::purge::{MessageKey, PurgeRows};
use crate::store::{
    Appended, DeviceAdded, DeviceRecord, GroupRow, NewEntry, PurgePolicy, Removed, RoomRecord,
    RoomUpdate, StoreError, UserRecord,
};
use crate::util::now_ms;
use crate::validate::{fold_room_name, room_name_key};

/// State only the writer thread touches.
#[derive(Default)]
pub(super) struct WriterState {
    /// Cached `rooms.last_seq`, dropped whenever a commit fails.
    pub(super) last_seq: HashMap<String, u64>,
}

pub(super) fn create_user(c: &Connection, user: &UserRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO users (username, sign_key, enc_key, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            user.username,
            user.sign_key,
            user.enc_key,
            user.created_at as i64
        ],
    )
    .map(|_| ())
    .map_err(backend)
}

/// One writer runs this, so the count and the insert cannot interleave
/// with another device's.
pub(super) fn add_device(
    c: &Connection,
    device: &DeviceRecord,
    max: u64,
) -> Result<DeviceAdded, StoreError> {
    let known: Option<(Vec<u8>, Option<i64>)> = c
        .query_row(
            "SELECT mls_key, removed_at FROM devices WHERE username = ?1 AND device_id = ?2",
            params![device.username, device.device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    let (live, total): (i64, i64) = c
        .query_row(
            "SELECT COUNT(*) FILTER (WHERE removed_at IS NULL), COUNT(*) FROM devices WHERE username = ?1",
            params![device.username],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(backend)?;
    let added = DeviceAdded::decide(
        known.as_ref().map(|(k, r)| (k.as_slice(), r.is_some())),
        &device.mls_key,
        live as u64,
        total as u64,
        max,
    );
    if added == DeviceAdded::Added {
        c.execute(
            "INSERT INTO devices (username, device_id, certificate, mls_key, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                device.username,
                device.device_id,
                device.certificate,
                device.mls_key,
                device.added_at as i64
            ],
        )
        .map_err(backend)?;
    }
    Ok(added)
}

pub(super) fn remove_device(
    c: &Connection,
    username: &str,
    device_id: &[u8],
    at: u64,
) -> Result<bool, StoreError> {
    c.execute(
        "UPDATE devices SET removed_at = ?3 WHERE username = ?1 AND device_id = ?2 AND removed_at IS NULL",
        params![username, device_id, at as i64],
    )
    .map(|n| n == 1)
    .map_err(backend)
}

pub(super) fn create_room(c: &Connection, room: &RoomRecord) -> Result<(), StoreError> {
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
    open_period(c, &room.room_id, &room.owner)
}

pub(super) fn create_group_room(
    c: &Connection,
    room: &RoomRecord,
    group: &GroupRow,
) -> Result<(), StoreError> {
    create_room(c, room)?;
    c.execute(
        "INSERT INTO groups (room_id, group_id, epoch, state, group_info, removal_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            room.room_id,
            group.group_id,
            group.epoch as i64,
            group.state,
            group.group_info,
            group.removal_epoch as i64
        ],
    )
    .map(|_| ())
    .map_err(backend)
}

/// The room's next seq from the writer's cache or the room's row.
fn last_seq(conn: &Connection, state: &WriterState, room_id: &str) -> Result<u64, StoreError> {
    match state.last_seq.get(room_id) {
        Some(&last) => Ok(last),
        None => Ok(conn
            .query_row(
                "SELECT last_seq FROM rooms WHERE room_id = ?1",
                params![room_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(backend)?
            .ok_or(StoreError::NotFound)? as u64),
    }
}

fn bump_seq(
    conn: &Connection,
    state: &mut WriterState,
    room_id: &str,
    seq: u64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE rooms SET last_seq = ?2 WHERE room_id = ?1")
        .and_then(|mut s| s.execute(params![room_id, seq as i64]))
        .map_err(backend)?;
    state.last_seq.insert(room_id.to_owned(), seq);
    Ok(())
}

pub(super) fn append_entry(
    conn: &Connection,
    state: &mut WriterState,
    new: &NewEntry,
) -> Result<Appended, StoreError> {
    let e = &new.entry;
    if let Some(msg_id) = &e.msg_id {
        if let Some((seq, ts)) = find_entry(conn, &new.room_id, &e.device_id, msg_id)? {
            return Ok(Appended {
                seq,
                ts,
                duplicate: true,
            });
        }
    }
    if let Some(change) = &new.commit {
        let moved = conn
            .prepare_cached(
                "UPDATE groups SET epoch = epoch + 1, state = ?3, group_info = ?4,
                     removal_epoch = CASE WHEN ?5 THEN epoch + 1 ELSE removal_epoch END
                 WHERE room_id = ?1 AND epoch = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    new.room_id,
                    change.from_epoch as i64,
                    change.state,
                    e.group_info.as_deref().unwrap_or_default(),
                    change.removed
                ])
            })
            .map_err(backend)?;
        if moved == 0 {
            let epoch: Option<i64> = conn
                .query_row(
                    "SELECT epoch FROM groups WHERE room_id = ?1",
                    params![new.room_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            return Err(epoch.map_or(StoreError::NotFound, |e| StoreError::StaleEpoch(e as u64)));
        }
    }
    let seq = last_seq(conn, state, &new.room_id)? + 1;
    let ts = now_ms();
    conn.prepare_cached(
        "INSERT INTO entries (room_id, seq, ts, kind, sender, device_id, msg_id, epoch, data, group_info)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            new.room_id,
            seq as i64,
            ts as i64,
            e.kind.code(),
            e.sender,
            e.device_id,
            e.msg_id,
            e.epoch as i64,
            e.data,
            e.group_info
        ])
    })
    .map_err(backend)?;
    bump_seq(conn, state, &new.room_id, seq)?;
    Ok(Appended {
        seq,
        ts,
        duplicate: false,
    })
}

pub(super) fn set_group_info(
    c: &Connection,
    room_id: &str,
    epoch: u64,
    group_info: &[u8],
) -> Result<bool, StoreError> {
    c.execute(
        "UPDATE groups SET group_info = ?3 WHERE room_id = ?1 AND epoch = ?2",
        params![room_id, epoch as i64, group_info],
    )
    .map(|n| n == 1)
    .map_err(backend)
}

pub(super) fn update_room(
    c: &Connection,
    room_id: &str,
    update: &RoomUpdate,
) -> Result<(), StoreError> {
    if let Some(by) = &update.by {
        check_owner(c, room_id, by)?;
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
}

pub(super) fn add_member(
    c: &Connection,
    room_id: &str,
    username: &str,
    joined_at: u64,
) -> Result<(), StoreError> {
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
        open_period(c, room_id, username)?;
    }
    Ok(())
}

pub(super) fn remove_member(
    c: &Connection,
    state: &mut WriterState,
    room_id: &str,
    username: &str,
    ban: bool,
    by: Option<&str>,
) -> Result<Removed, StoreError> {
    if let Some(by) = by {
        check_owner(c, room_id, by)?;
    }
    let removed = c
        .execute(
            "DELETE FROM members WHERE room_id = ?1 AND username = ?2",
            params![room_id, username],
        )
        .map_err(backend)?;
    if removed > 0 {
        close_period(c, room_id, username)?;
    }
    if ban {
        set_ban(c, room_id, username, true)?;
    }
    let remaining: i64 = c
        .prepare_cached("SELECT count(*) FROM members WHERE room_id = ?1")
        .and_then(|mut s| s.query_row(params![room_id], |r| r.get(0)))
        .map_err(backend)?;
    if remaining == 0 {
        delete_room(c, state, room_id)?;
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

/// Retention's questions (see [`crate::store::purge`]) on this connection.
struct Purge<'c> {
    conn: &'c Connection,
}

impl PurgeRows for Purge<'_> {
    async fn older_than(
        &mut self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        self.conn
            .prepare_cached("SELECT room_id, seq FROM entries WHERE ts < ?1 ORDER BY ts LIMIT ?2")
            .and_then(|mut s| {
                s.query_map(params![before as i64, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .map_err(backend)
    }

    async fn rooms(&mut self) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT room_id FROM rooms")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(backend)
    }

    async fn beyond_newest(
        &mut self,
        room: &str,
        keep: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT seq FROM entries WHERE room_id = ?1 AND seq <=
                   (SELECT seq FROM entries WHERE room_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)
                 ORDER BY seq LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![room, keep as i64, limit as i64], |r| {
                    Ok((room.to_owned(), r.get(0)?))
                })?
                .collect()
            })
            .map_err(backend)
    }

    async fn delete(&mut self, doomed: &[MessageKey]) -> Result<u64, StoreError> {
        let mut del = self
            .conn
            .prepare_cached("DELETE FROM entries WHERE room_id = ?1 AND seq = ?2")
            .map_err(backend)?;
        for (room, seq) in doomed {
            del.execute(params![room, seq]).map_err(backend)?;
        }
        Ok(doomed.len() as u64)
    }
}

pub(super) fn purge(conn: &Connection, policy: PurgePolicy) -> Result<u64, StoreError> {
    super::now(crate::store::purge::purge(&mut Purge { conn }, policy))
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
pub(super) fn delete_room(
    c: &Connection,
    state: &mut WriterState,
    room_id: &str,
) -> Result<(), StoreError> {
    for table in [
        "entries",
        "groups",
        "member_periods",
        "members",
        "bans",
        "rooms",
    ] {
        c.execute(
            &format!("DELETE FROM {table} WHERE room_id = ?1"),
            params![room_id],
        )
        .map_err(backend)?;
    }
    state.last_seq.remove(room_id);
    Ok(())
}

pub(super) fn set_ban(
    c: &Connection,
    room_id: &str,
    username: &str,
    banned: bool,
) -> Result<(), StoreError> {
    let sql = if banned {
        "INSERT OR IGNORE INTO bans (room_id, username, banned_at) VALUES (?1, ?2, ?3)"
    } else {
        "DELETE FROM bans WHERE room_id = ?1 AND username = ?2 AND ?3 IS NOT NULL"
    };
    c.execute(sql, params![room_id, username, now_ms() as i64])
        .map(|_| ())
        .map_err(backend)
}
