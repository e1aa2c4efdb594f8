//! PostgreSQL reads, each on a pooled read connection: row mapping, the
//! directory, a room's state, history pages and gap fill.

use tokio_postgres::Row;

use super::err;
use crate::store::page::{read_page, MessageRows};
use crate::store::{
    DeviceRecord, DirectoryEntry, EntryHistory, EntryKind, GroupRow, HistoryQuery, LogEntry,
    MemberRecord, RoomRecord, RoomState, StoreError, StoredEntry, UserRecord,
};

type Client = deadpool_postgres::Object;

pub(super) fn user_from_row(r: &Row, at: usize) -> UserRecord {
    UserRecord {
        username: r.get(at),
        sign_key: r.get(at + 1),
        enc_key: r.get(at + 2),
        created_at: r.get::<_, i64>(at + 3) as u64,
    }
}

const ROOM_COLUMNS: &str =
    "SELECT room_id, name, owner, password_hash, hidden, created_at, last_seq FROM rooms";

fn room_from_row(r: &Row) -> RoomRecord {
    RoomRecord {
        room_id: r.get(0),
        name: r.get(1),
        owner: r.get(2),
        password_hash: r.get(3),
        hidden: r.get(4),
        created_at: r.get::<_, i64>(5) as u64,
        last_seq: r.get::<_, i64>(6) as u64,
    }
}

pub(super) async fn get_user(c: &Client, username: &str) -> Result<Option<UserRecord>, StoreError> {
    c.query_opt(
        "SELECT username, sign_key, enc_key, created_at FROM users WHERE username = $1",
        &[&username],
    )
    .await
    .map(|r| r.map(|r| user_from_row(&r, 0)))
    .map_err(err)
}

pub(super) async fn list_devices(
    c: &Client,
    username: &str,
) -> Result<Vec<DeviceRecord>, StoreError> {
    devices_where(
        c,
        "SELECT username, device_id, certificate, mls_key, added_at FROM devices
         WHERE username = $1 AND removed_at IS NULL ORDER BY added_at, device_id",
        username,
    )
    .await
}

pub(super) async fn room_devices(
    c: &Client,
    room_id: &str,
) -> Result<Vec<DeviceRecord>, StoreError> {
    devices_where(
        c,
        "SELECT d.username, d.device_id, d.certificate, d.mls_key, d.added_at
         FROM members m JOIN devices d ON d.username = m.username
         WHERE m.room_id = $1 AND d.removed_at IS NULL ORDER BY d.username, d.added_at",
        room_id,
    )
    .await
}

async fn devices_where(c: &Client, sql: &str, key: &str) -> Result<Vec<DeviceRecord>, StoreError> {
    Ok(c.query(sql, &[&key])
        .await
        .map_err(err)?
        .iter()
        .map(|r| DeviceRecord {
            username: r.get(0),
            device_id: r.get(1),
            certificate: r.get(2),
            mls_key: r.get(3),
            added_at: r.get::<_, i64>(4) as u64,
        })
        .collect())
}

pub(super) async fn load_group(c: &Client, room_id: &str) -> Result<Option<GroupRow>, StoreError> {
    Ok(c.query_opt(
        "SELECT group_id, epoch, state, group_info, removal_epoch FROM groups WHERE room_id = $1",
        &[&room_id],
    )
    .await
    .map_err(err)?
    .map(|r| GroupRow {
        group_id: r.get(0),
        epoch: r.get::<_, i64>(1) as u64,
        state: r.get(2),
        group_info: r.get(3),
        removal_epoch: r.get::<_, i64>(4) as u64,
    }))
}

pub(super) async fn entries_after(
    c: &Client,
    room_id: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let lo = after_seq.saturating_add(1).min(i64::MAX as u64) as i64;
    entry_rows(c, room_id, lo, i64::MAX, limit, true).await
}

async fn entry_rows(
    c: &Client,
    room_id: &str,
    a: i64,
    b: i64,
    n: usize,
    ascending: bool,
) -> Result<Vec<StoredEntry>, StoreError> {
    let sql = format!(
        "SELECT seq, ts, kind, sender, device_id, msg_id, epoch, data, group_info FROM entries
         WHERE room_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq {} LIMIT $4",
        if ascending { "ASC" } else { "DESC" }
    );
    let stmt = c.prepare_cached(&sql).await.map_err(err)?;
    Ok(c.query(
        &stmt,
        &[&room_id, &a, &b, &(n.min(i64::MAX as usize) as i64)],
    )
    .await
    .map_err(err)?
    .iter()
    .map(|r| StoredEntry {
        seq: r.get::<_, i64>(0) as u64,
        ts: r.get::<_, i64>(1) as u64,
        entry: LogEntry {
            kind: EntryKind::from_code(r.get::<_, i16>(2).into()).unwrap_or(EntryKind::Message),
            sender: r.get(3),
            device_id: r.get(4),
            msg_id: r.get(5),
            epoch: r.get::<_, i64>(6) as u64,
            data: r.get(7),
            group_info: r.get(8),
        },
    })
    .collect())
}

/// The page walk over `entries`.
struct EntryRows<'c> {
    client: &'c Client,
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
        entry_rows(self.client, self.room_id, a, b, n, ascending).await
    }
}

pub(super) async fn entry_history(
    client: &Client,
    room_id: &str,
    username: &str,
    q: HistoryQuery,
) -> Result<EntryHistory, StoreError> {
    let periods = member_periods(client, room_id, username).await?;
    let mut rows = EntryRows { client, room_id };
    let page = read_page(&mut rows, periods, q).await?;
    let first_seq: Option<i64> = client
        .query_one(
            "SELECT MIN(seq) FROM entries WHERE room_id = $1",
            &[&room_id],
        )
        .await
        .map_err(err)?
        .get(0);
    Ok(EntryHistory {
        page,
        first_seq: first_seq.unwrap_or(0) as u64,
    })
}

async fn member_periods(
    client: &Client,
    room_id: &str,
    username: &str,
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(client
        .query(
            "SELECT from_seq, COALESCE(to_seq, 9223372036854775807) FROM member_periods
             WHERE room_id = $1 AND username = $2 ORDER BY from_seq",
            &[&room_id, &username],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub(super) async fn load_directory(c: &Client) -> Result<Vec<DirectoryEntry>, StoreError> {
    let rooms = c
        .query(&format!("{ROOM_COLUMNS} ORDER BY created_at, room_id"), &[])
        .await
        .map_err(err)?
        .iter()
        .map(room_from_row)
        .collect();
    let members = c
        .query("SELECT room_id, username FROM members ORDER BY id", &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect::<Vec<_>>();
    let epochs = c
        .query("SELECT room_id, epoch FROM groups", &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect::<Vec<(String, u64)>>();
    Ok(DirectoryEntry::assemble(rooms, members, epochs))
}

pub(super) async fn load_room(c: &Client, room_id: &str) -> Result<RoomState, StoreError> {
    let members = c
        .query(
            "SELECT u.username, u.sign_key, u.enc_key, u.created_at, m.joined_at
             FROM members m JOIN users u ON u.username = m.username
             WHERE m.room_id = $1 ORDER BY m.id",
            &[&room_id],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| MemberRecord {
            user: user_from_row(r, 0),
            joined_at: r.get::<_, i64>(4) as u64,
        })
        .collect();
    let bans = c
        .query("SELECT username FROM bans WHERE room_id = $1", &[&room_id])
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let record = c
        .query_opt(&format!("{ROOM_COLUMNS} WHERE room_id = $1"), &[&room_id])
        .await
        .map_err(err)?
        .map(|r| room_from_row(&r));
    Ok(RoomState {
        record,
        members,
        bans,
    })
}

pub(super) async fn find_entry(
    c: &Client,
    room_id: &str,
    device_id: &[u8],
    msg_id: &[u8],
) -> Result<Option<(u64, u64)>, StoreError> {
    c.query_opt(
        "SELECT seq, ts FROM entries WHERE room_id = $1 AND device_id = $2 AND msg_id = $3",
        &[&room_id, &device_id, &msg_id],
    )
    .await
    .map(|r| r.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    .map_err(err)
}
