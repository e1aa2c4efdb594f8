//! SQLite reads: row mapping, the directory, a room's state and devices,
//! the group, history pages and gap fill. They run on the reader threads' own connections.

use rusqlite::{params, Connection, OptionalExtension};

use super::schema::backend;
use crate::store::page::{read_page, MessageRows};
use crate::store::{
    DeviceRecord, DirectoryEntry, EntryHistory, EntryKind, GroupRow, HistoryQuery, LogEntry,
    MemberRecord, RoomRecord, RoomState, StoreError, StoredEntry, UserRecord,
};

pub(super) fn user_from_row(
    row: &rusqlite::Row<'_>,
    offset: usize,
) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        username: row.get(offset)?,
        sign_key: row.get(offset + 1)?,
        enc_key: row.get(offset + 2)?,
        created_at: row.get::<_, i64>(offset + 3)? as u64,
    })
}

const ROOM_COLUMNS: &str =
    "SELECT room_id, name, owner, password_hash, hidden, created_at, last_seq FROM rooms";

fn room_from_row(r: &rusqlite::Row) -> rusqlite::Result<RoomRecord> {
    Ok(RoomRecord {
        room_id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        password_hash: r.get(3)?,
        hidden: r.get(4)?,
        created_at: r.get::<_, i64>(5)? as u64,
        last_seq: r.get::<_, i64>(6)? as u64,
    })
}

pub(super) fn find_entry(
    c: &Connection,
    room_id: &str,
    device_id: &[u8],
    msg_id: &[u8],
) -> Result<Option<(u64, u64)>, StoreError> {
    c.prepare_cached(
        "SELECT seq, ts FROM entries WHERE room_id = ?1 AND device_id = ?2 AND msg_id = ?3",
    )
    .and_then(|mut s| {
        s.query_row(params![room_id, device_id, msg_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()
    })
    .map_err(backend)
}

pub(super) fn load_group(c: &Connection, room_id: &str) -> Result<Option<GroupRow>, StoreError> {
    c.query_row(
        "SELECT group_id, epoch, state, group_info, removal_epoch FROM groups WHERE room_id = ?1",
        params![room_id],
        |r| {
            Ok(GroupRow {
                group_id: r.get(0)?,
                epoch: r.get::<_, i64>(1)? as u64,
                state: r.get(2)?,
                group_info: r.get(3)?,
                removal_epoch: r.get::<_, i64>(4)? as u64,
            })
        },
    )
    .optional()
    .map_err(backend)
}

pub(super) fn entries_after(
    c: &Connection,
    room_id: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let lo = after_seq.saturating_add(1).min(i64::MAX as u64) as i64;
    entry_rows(c, room_id, lo, i64::MAX, limit, true)
}

fn entry_rows(
    c: &Connection,
    room_id: &str,
    a: i64,
    b: i64,
    n: usize,
    ascending: bool,
) -> Result<Vec<StoredEntry>, StoreError> {
    let sql = format!(
        "SELECT seq, ts, kind, sender, device_id, msg_id, epoch, data, group_info FROM entries
         WHERE room_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq {} LIMIT ?4",
        if ascending { "ASC" } else { "DESC" }
    );
    c.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![room_id, a, b, n as i64], |r| {
                Ok(StoredEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    ts: r.get::<_, i64>(1)? as u64,
                    entry: LogEntry {
                        kind: EntryKind::from_code(r.get(2)?).unwrap_or(EntryKind::Message),
                        sender: r.get(3)?,
                        device_id: r.get(4)?,
                        msg_id: r.get(5)?,
                        epoch: r.get::<_, i64>(6)? as u64,
                        data: r.get(7)?,
                        group_info: r.get(8)?,
                    },
                })
            })?
            .collect()
        })
        .map_err(backend)
}

/// The page walk over `entries`.
struct EntryRows<'c> {
    conn: &'c Connection,
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
        entry_rows(self.conn, self.room_id, a, b, n, ascending)
    }
}

pub(super) fn entry_history(
    conn: &Connection,
    room_id: &str,
    username: &str,
    q: HistoryQuery,
) -> Result<EntryHistory, StoreError> {
    let periods = member_periods(conn, room_id, username)?;
    let mut rows = EntryRows { conn, room_id };
    let page = super::now(read_page(&mut rows, periods, q))?;
    let first_seq: Option<i64> = conn
        .query_row(
            "SELECT MIN(seq) FROM entries WHERE room_id = ?1",
            params![room_id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    Ok(EntryHistory {
        page,
        first_seq: first_seq.unwrap_or(0) as u64,
    })
}

fn member_periods(
    conn: &Connection,
    room_id: &str,
    username: &str,
) -> Result<Vec<(i64, i64)>, StoreError> {
    conn.prepare_cached(
        "SELECT from_seq, IFNULL(to_seq, 9223372036854775807) FROM member_periods
         WHERE room_id = ?1 AND username = ?2 ORDER BY from_seq",
    )
    .and_then(|mut s| {
        s.query_map(params![room_id, username], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    })
    .map_err(backend)
}

pub(super) fn get_user(c: &Connection, username: &str) -> Result<Option<UserRecord>, StoreError> {
    c.prepare_cached(
        "SELECT username, sign_key, enc_key, created_at FROM users WHERE username = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![username], |r| user_from_row(r, 0))
            .optional()
    })
    .map_err(backend)
}

pub(super) fn list_devices(
    c: &Connection,
    username: &str,
) -> Result<Vec<DeviceRecord>, StoreError> {
    devices_where(
        c,
        "SELECT username, device_id, certificate, mls_key, added_at FROM devices
         WHERE username = ?1 AND removed_at IS NULL ORDER BY added_at, device_id",
        username,
    )
}

pub(super) fn room_devices(c: &Connection, room_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
    devices_where(
        c,
        "SELECT d.username, d.device_id, d.certificate, d.mls_key, d.added_at
         FROM members m JOIN devices d ON d.username = m.username
         WHERE m.room_id = ?1 AND d.removed_at IS NULL ORDER BY d.username, d.added_at",
        room_id,
    )
}

fn devices_where(c: &Connection, sql: &str, key: &str) -> Result<Vec<DeviceRecord>, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(params![key], |r| {
                Ok(DeviceRecord {
                    username: r.get(0)?,
                    device_id: r.get(1)?,
                    certificate: r.get(2)?,
                    mls_key: r.get(3)?,
                    added_at: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect()
        })
        .map_err(backend)
}

pub(super) fn load_directory(c: &Connection) -> Result<Vec<DirectoryEntry>, StoreError> {
    let rooms: Vec<RoomRecord> = c
        .prepare(&format!("{ROOM_COLUMNS} ORDER BY created_at, room_id"))
        .and_then(|mut s| s.query_map([], room_from_row)?.collect())
        .map_err(backend)?;
    let members: Vec<(String, String)> = c
        .prepare("SELECT room_id, username FROM members ORDER BY rowid")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(backend)?;
    let epochs: Vec<(String, u64)> = c
        .prepare("SELECT room_id, epoch FROM groups")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .map_err(backend)?;
    Ok(DirectoryEntry::assemble(rooms, members, epochs))
}

pub(super) fn load_room(c: &Connection, room_id: &str) -> Result<RoomState, StoreError> {
    let members = c
        .prepare_cached(
            "SELECT u.username, u.sign_key, u.enc_key, u.created_at, m.joined_at
             FROM members m JOIN users u ON u.username = m.username
             WHERE m.room_id = ?1 ORDER BY m.rowid",
        )
        .and_then(|mut s| {
            s.query_map(params![room_id], |r| {
                Ok(MemberRecord {
                    user: user_from_row(r, 0)?,
                    joined_at: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    let bans = c
        .prepare_cached("SELECT username FROM bans WHERE room_id = ?1")
        .and_then(|mut s| s.query_map(params![room_id], |r| r.get(0))?.collect())
        .map_err(backend)?;
    let record = c
        .prepare_cached(&format!("{ROOM_COLUMNS} WHERE room_id = ?1"))
        .and_then(|mut s| s.query_row(params![room_id], room_from_row).optional())
        .map_err(backend)?;
    Ok(RoomState {
        record,
        members,
        bans,
    })
}
