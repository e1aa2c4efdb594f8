//! The PostgreSQL schema and its creation or check at start, serialized
//! between processes starting at once.

use deadpool_postgres::Pool;

use super::{err, pool_err};
use crate::store::{v2_refused, StoreError, SCHEMA_VERSION};
use crate::validate::HIDDEN_KEY;

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

/// Creates the schema in a new database, or checks an existing one's
/// version (table `schema_version`), under an advisory lock so processes
/// starting at once do it once: [`SCHEMA_VERSION`] is served; an empty
/// database of protocol v2 (version 1) is taken over; one that holds v2's
/// users or rooms is refused with what to do.
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
    let wanted = SCHEMA_VERSION as i32;
    match found {
        Some(v) if v == wanted => {}
        Some(1) => {
            let used: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM rooms)",
                    &[],
                )
                .await
                .map_err(err)?
                .get(0);
            if used {
                return Err(v2_refused("the database", 1));
            }
            tx.batch_execute(SCHEMA).await.map_err(err)?;
            tx.execute("UPDATE schema_version SET version = $1", &[&wanted])
                .await
                .map_err(err)?;
        }
        Some(v) => {
            return Err(StoreError::Unavailable(format!(
                "the database has schema version {v}; this server uses {wanted}"
            )))
        }
        None => {
            tx.batch_execute(SCHEMA).await.map_err(err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&wanted],
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
