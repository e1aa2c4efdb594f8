//! The SQLite schema, its version check and the connection settings.

use std::path::Path;

use rusqlite::{params, Connection};

use crate::store::{v2_refused, StoreError, SCHEMA_VERSION};
use crate::validate::HIDDEN_KEY;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    sign_key   BLOB NOT NULL,
    enc_key    BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    name_folded   TEXT NOT NULL UNIQUE,
    owner         TEXT NOT NULL,
    password_hash TEXT,
    hidden        INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    UNIQUE (room_id, username)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (username);
CREATE TABLE IF NOT EXISTS bans (
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, username)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_periods (
    room_id  TEXT NOT NULL,
    username TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER,
    PRIMARY KEY (room_id, username, from_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    room_id       TEXT PRIMARY KEY,
    group_id      BLOB NOT NULL UNIQUE,
    epoch         INTEGER NOT NULL,
    state         BLOB NOT NULL,
    group_info    BLOB NOT NULL,
    removal_epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    room_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    device_id  BLOB NOT NULL,
    msg_id     BLOB,
    epoch      INTEGER NOT NULL,
    data       BLOB NOT NULL,
    group_info BLOB,
    PRIMARY KEY (room_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_idempotency ON entries (room_id, device_id, msg_id)
    WHERE msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_by_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS devices (
    username    TEXT NOT NULL,
    device_id   BLOB NOT NULL,
    certificate BLOB NOT NULL,
    mls_key     BLOB NOT NULL,
    added_at    INTEGER NOT NULL,
    removed_at  INTEGER,
    PRIMARY KEY (username, device_id)
) WITHOUT ROWID;
";

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Creates the schema in a new database, or checks an existing one's
/// version (`PRAGMA user_version`): [`SCHEMA_VERSION`] is served; an empty
/// database of an older version (no users, no rooms) is taken over; one
/// that holds protocol-v2 data is refused with what to do.
pub(super) fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "{} has schema version {version}, made by a newer server; this one uses {SCHEMA_VERSION}",
            path.display()
        )));
    }
    if version != SCHEMA_VERSION && holds_data(conn)? {
        return Err(v2_refused(&path.display().to_string(), version));
    }
    conn.execute_batch(SCHEMA).map_err(backend)?;
    // Hidden rooms stored before their names stopped being unique keys.
    conn.execute(
        "UPDATE rooms SET name_folded = ?1 || room_id WHERE hidden AND name_folded <> ?1 || room_id",
        params![HIDDEN_KEY],
    )
    .map_err(backend)?;
    if version != SCHEMA_VERSION {
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(backend)?;
    }
    Ok(())
}

/// Whether an older database holds users or rooms (any table of either).
fn holds_data(conn: &Connection) -> Result<bool, StoreError> {
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'rooms')",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if tables < 2 {
        return Ok(false);
    }
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM rooms)",
        [],
        |r| r.get(0),
    )
    .map_err(backend)
}

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(backend)?;
    Ok(conn)
}
