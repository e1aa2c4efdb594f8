//! The PostgreSQL schema and its creation or check at start, serialized
//! between processes starting at once.

use deadpool_postgres::Pool;

use super::{err, pool_err};
use crate::store::StoreError;
use crate::validate::HIDDEN_KEY;

/// The schema version a new database gets (table `schema_version`): 1
/// holds protocol v2's accounts and rooms, 3 protocol v3's (the same
/// tables; `claim_protocol` sets it).
const SCHEMA_VERSION: i32 = 1;

/// Any fixed number: the advisory lock that serializes schema creation
/// between processes starting at once.
const MIGRATION_LOCK: i64 = 0x0e2e_c4a7;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    sign_key   BYTEA NOT NULL,
    enc_key    BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    room_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    name_folded   TEXT NOT NULL UNIQUE,
    owner         TEXT NOT NULL,
    password_hash TEXT,
    hidden        BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    id        BIGSERIAL PRIMARY KEY,
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    UNIQUE (room_id, username)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (username);
CREATE TABLE IF NOT EXISTS bans (
    room_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    banned_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, username)
);
CREATE TABLE IF NOT EXISTS messages (
    room_id        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    ts             BIGINT NOT NULL,
    msg_id         BYTEA NOT NULL,
    sender         TEXT NOT NULL,
    nonce          BYTEA NOT NULL,
    key_commitment BYTEA NOT NULL,
    ciphertext     BYTEA NOT NULL,
    signature      BYTEA NOT NULL,
    keys           BYTEA NOT NULL,
    PRIMARY KEY (room_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (room_id, sender, msg_id);
CREATE INDEX IF NOT EXISTS messages_by_ts ON messages (ts);
CREATE TABLE IF NOT EXISTS member_periods (
    room_id  TEXT NOT NULL,
    username TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT,
    PRIMARY KEY (room_id, username, from_seq)
);
CREATE TABLE IF NOT EXISTS groups (
    room_id       TEXT PRIMARY KEY,
    group_id      BYTEA NOT NULL UNIQUE,
    epoch         BIGINT NOT NULL,
    state         BYTEA NOT NULL,
    group_info    BYTEA NOT NULL,
    removal_epoch BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    room_id    TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    ts         BIGINT NOT NULL,
    kind       SMALLINT NOT NULL,
    sender     TEXT NOT NULL,
    device_id  BYTEA NOT NULL,
    msg_id     BYTEA,
    epoch      BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    group_info BYTEA,
    PRIMARY KEY (room_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_idempotency ON entries (room_id, device_id, msg_id)
    WHERE msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_by_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS devices (
    username    TEXT NOT NULL,
    device_id   BYTEA NOT NULL,
    certificate BYTEA NOT NULL,
    mls_key     BYTEA NOT NULL,
    added_at    BIGINT NOT NULL,
    removed_at  BIGINT,
    PRIMARY KEY (username, device_id)
);
";

pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(err)?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(err)?
        .map(|r| r.get(0));
    match found {
        Some(v) if v != 1 && v != 3 => {
            return Err(StoreError::Unavailable(format!(
                "the database has schema version {v}; this server uses versions 1 and 3"
            )))
        }
        Some(_) => {}
        None => {
            tx.batch_execute(SCHEMA).await.map_err(err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(err)?;
        }
    }
    // Hidden rooms stored before their names stopped being unique keys.
    tx.execute(
        "UPDATE rooms SET name_folded = $1 || room_id WHERE hidden AND name_folded <> $1 || room_id",
        &[&HIDDEN_KEY],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// See `Store::claim_protocol`: version 1 for protocol v2, 3 for v3, under
/// the migration lock (processes starting at once).
pub(super) async fn claim_protocol(pool: &Pool, protocol: u8) -> Result<(), StoreError> {
    let wanted: i32 = if protocol >= 3 { 3 } else { 1 };
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    let found: i32 = tx
        .query_one("SELECT version FROM schema_version", &[])
        .await
        .map_err(err)?
        .get(0);
    if found == wanted {
        return Ok(());
    }
    let used: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM rooms)",
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    if used {
        let schema = if found == 3 { 3 } else { 2 };
        return Err(crate::store::protocol_refused(
            "the database",
            schema,
            protocol,
        ));
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&wanted])
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}
