//! The PostgreSQL store (`store.url = "postgres://…"` or `DATABASE_URL`), on
//! `tokio-postgres` with a `deadpool-postgres` pool: for deployments without
//! a lasting disk (Heroku) and for several server processes on one database.
//!
//! Same guarantees as SQLite. One writer task takes every write that is
//! waiting (up to `store.max_batch`), runs them in one transaction, COMMITs
//! once (synchronous commit on) and only then completes the writes: group
//! commit. Each write is one statement, and a batch's statements are
//! pipelined (sent together, in order), so a batch costs about one round
//! trip; if one fails, the batch is redone with a savepoint per write so the
//! failing write fails alone. A message's seq comes from
//! `UPDATE rooms SET last_seq = last_seq + 1 … RETURNING` inside that
//! transaction: the room row stays locked until COMMIT, so seq is gapless and
//! unique even when several processes append to one room; a stored copy
//! (same room, sender, msg_id) answers with its seq and takes none.
//!
//! Reads take a pooled connection each. A lost database makes writes and
//! reads fail fast (`Unavailable`, so sends answer `internal` and `/healthz`
//! 503); the pool replaces broken connections, so the server serves again
//! when the database returns, without a restart.
//!
//! Connections use TLS when the server offers it (`sslmode=prefer`, the
//! default) or must (`sslmode=require`, as Heroku Postgres does), through
//! rustls; like libpq's `require`, the server certificate is not verified.
//!
//! Wrapped keys are one blob per message, in the SQLite store's format
//! ([`encode_keys`]); history walks the user's membership periods.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_tokio_postgres::{config_no_verify, MakeRustlsConnect};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, Transaction};

use super::keyblob::{decode_keys, encode_keys, find_key};
use super::{
    Appended, DirectoryEntry, HistoryPage, HistoryQuery, MemberRecord, NewMessage, PageBuilder,
    PurgePolicy, Removed, RoomMessage, RoomRecord, RoomState, RoomUpdate, Store, StoreError,
    StoreFuture, StoredMessage, UserRecord,
};
use crate::metrics;
use crate::util::now_ms;
use crate::validate::{fold_room_name, room_name_key, HIDDEN_KEY};

/// The schema version this code writes (table `schema_version`).
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
";

/// One write, run by the writer inside the batch transaction.
enum WriteOp {
    CreateUser(UserRecord),
    /// the room, the most rooms its owner may be in
    CreateRoom(RoomRecord, i64),
    UpdateRoom(String, RoomUpdate),
    DeleteRoom(String),
    /// room, user, joined_at, most members the room may have, most rooms
    /// the user may be in
    AddMember(String, String, u64, i64, i64),
    /// room, user, ban, by (the owner who kicks or bans)
    RemoveMember(String, String, bool, Option<String>),
    SetBan(String, String, bool),
    Append(Arc<NewMessage>),
    Purge(PurgePolicy),
}

enum Done {
    Unit,
    Appended(Appended),
    Count(u64),
    Removed(Removed),
}

type Job = (WriteOp, oneshot::Sender<Result<Done, StoreError>>);

enum ToWriter {
    Job(Job),
    /// Finish everything queued before, then stop.
    Close(oneshot::Sender<()>),
}

pub struct PostgresStore {
    pool: Pool,
    writes: mpsc::UnboundedSender<ToWriter>,
    /// Checked inside the membership write, where other processes' joins
    /// are visible (`with_max_members`).
    max_members: i64,
    /// Likewise `max_rooms_per_user` for joins and creations
    /// (`with_max_rooms_per_user`).
    max_rooms: i64,
}

fn err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(e.to_string()),
        Some(_) => StoreError::Backend(e.to_string()),
        // No SQL state: the connection itself failed.
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

fn user_from_row(r: &Row, at: usize) -> UserRecord {
    UserRecord {
        username: r.get(at),
        sign_key: r.get(at + 1),
        enc_key: r.get(at + 2),
        created_at: r.get::<_, i64>(at + 3) as u64,
    }
}

impl PostgresStore {
    /// Connects, creates or checks the schema, and starts the writer.
    pub async fn connect(url: &str, max_batch: usize) -> Result<PostgresStore, StoreError> {
        let (url, tls) = tls_for(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("store.url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // Reads get a pool of their own, with a statement timeout: a flood
        // of slow reads fills that pool, never the writer's connection, so
        // sends and membership changes keep committing.
        let mut reads = config.clone();
        let options = reads.get_options().unwrap_or_default().to_owned();
        reads.options(format!("{options} -c statement_timeout={READ_TIMEOUT_MS}").trim());
        let pool = pool_of(reads, tls.clone(), READ_CONNECTIONS)?;
        let write_pool = pool_of(config, tls, 1)?;
        migrate(&write_pool).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(write_pool, rx, max_batch.max(1)));
        log::info!("postgres store open (group commit batch {max_batch})");
        Ok(PostgresStore {
            pool,
            writes: tx,
            max_members: i64::MAX,
            max_rooms: i64::MAX,
        })
    }

    /// Joins past `max` members are refused (`StoreError::RoomFull`) inside
    /// the membership write, so joins racing on several processes cannot
    /// overfill a room.
    pub fn with_max_members(mut self, max: usize) -> Self {
        self.max_members = i64::try_from(max).unwrap_or(i64::MAX);
        self
    }

    /// Joins and creations past `max` rooms for one user are refused
    /// (`StoreError::TooManyRooms`) inside the write, so several processes
    /// cannot together let a user exceed `max_rooms_per_user`.
    pub fn with_max_rooms_per_user(mut self, max: usize) -> Self {
        self.max_rooms = i64::try_from(max).unwrap_or(i64::MAX);
        self
    }

    fn write<T: Send + 'static>(
        &self,
        op: WriteOp,
        take: impl FnOnce(Done) -> T + Send + 'static,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.send(ToWriter::Job((op, tx))).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
            let done = rx
                .await
                .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))??;
            Ok(take(done))
        })
    }

    fn unit(&self, op: WriteOp) -> StoreFuture<()> {
        self.write(op, |_| ())
    }

    /// Runs `f` with a pooled connection.
    fn read<T, F, Fut>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            f(client).await
        })
    }
}

/// TLS as libpq's `sslmode` says: `prefer` (the default) uses it when the
/// server offers it, `require` (Heroku Postgres) insists on it, `disable`
/// never; like libpq's `require`, those do not verify the certificate
/// (managed databases present certificates of their own CA).
/// `verify-full` (and `verify-ca`, checked as strictly) insists on TLS and
/// verifies the certificate and the host name against the CA certificates
/// in the PEM file `sslrootcert` names. tokio-postgres parses neither, so
/// they are taken out of the URL here.
fn tls_for(url: &str) -> Result<(String, MakeRustlsConnect), StoreError> {
    let bad = |why: String| StoreError::Unavailable(format!("store.url: {why}"));
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok((url.to_owned(), MakeRustlsConnect::new(config_no_verify())));
    };
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let mode = pairs
        .iter()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.as_str());
    if !matches!(mode, Some("verify-full" | "verify-ca")) {
        return Ok((url.to_owned(), MakeRustlsConnect::new(config_no_verify())));
    }
    let root = pairs
        .iter()
        .find(|(k, _)| k == "sslrootcert")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| bad("sslmode=verify-full needs sslrootcert=/path/to/ca.pem".into()))?;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&root)
        .map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("sslrootcert {root}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("sslrootcert {root}: no certificate in it")));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let kept: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .chain([("sslmode".to_owned(), "require".to_owned())])
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    Ok((parsed.to_string(), MakeRustlsConnect::new(config)))
}

/// Connections for reads (history, room loads, logins' user lookups).
const READ_CONNECTIONS: usize = 8;
/// A read that runs longer than this is cancelled by the database.
const READ_TIMEOUT_MS: u64 = 5_000;

fn pool_of(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
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
        Some(v) if v != SCHEMA_VERSION => {
            return Err(StoreError::Unavailable(format!(
                "the database has schema version {v}; this server uses version {SCHEMA_VERSION}"
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

async fn writer_loop(pool: Pool, mut rx: mpsc::UnboundedReceiver<ToWriter>, max_batch: usize) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut closing = None;
    while closing.is_none() {
        match rx.recv().await {
            Some(ToWriter::Job(job)) => batch.push(job),
            Some(ToWriter::Close(done)) => closing = Some(done),
            None => break,
        }
        while batch.len() < max_batch && closing.is_none() {
            match rx.try_recv() {
                Ok(ToWriter::Job(job)) => batch.push(job),
                Ok(ToWriter::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let ops: Vec<&WriteOp> = batch.iter().map(|(op, _)| op).collect();
        match run_batch(&pool, &ops).await {
            Ok(results) => {
                metrics::observe_commit(batch.len(), started.elapsed());
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                log::error!("postgres commit of {} writes failed: {e}", batch.len());
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    pool.close();
    log::info!("postgres writer stopped");
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// One SQL statement per write (data-modifying CTEs where a write touches
/// several tables), so a batch can be pipelined: every statement is sent at
/// once, in order, on one connection, and the batch costs about one round
/// trip instead of one per statement. Purge is the exception (`None`).
fn statement(op: &WriteOp) -> Option<(&'static str, Vec<Param>)> {
    fn p<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
        Box::new(v)
    }
    let ms = |t: u64| p(t as i64);
    Some(match op {
        WriteOp::CreateUser(u) => (
            "INSERT INTO users (username, sign_key, enc_key, created_at) VALUES ($1, $2, $3, $4)",
            vec![
                p(u.username.clone()),
                p(u.sign_key.clone()),
                p(u.enc_key.clone()),
                ms(u.created_at),
            ],
        ),
        // Not created (no row counted) when the owner is in `$8` rooms
        // already, on whatever process they joined them (TooManyRooms).
        WriteOp::CreateRoom(r, max_rooms) => (
            "WITH r AS (
                INSERT INTO rooms (room_id, name, name_folded, owner, password_hash, hidden, created_at, last_seq)
                SELECT $1, $2, $3, $4, $5, $6, $7, 0
                WHERE (SELECT count(*) FROM members WHERE username = $4) < $8
                RETURNING room_id
             ), m AS (
                INSERT INTO members (room_id, username, joined_at) SELECT room_id, $4, $7 FROM r
             ), periods AS (
                INSERT INTO member_periods (room_id, username, from_seq, to_seq)
                SELECT room_id, $4, 1, NULL FROM r
             )
             SELECT count(*) FROM r",
            vec![
                p(r.room_id.clone()),
                p(r.name.clone()),
                p(room_name_key(&r.name, r.hidden, &r.room_id)),
                p(r.owner.clone()),
                p(r.password_hash.clone()),
                p(r.hidden),
                ms(r.created_at),
                p(*max_rooms),
            ],
        ),
        // With `by`, only while `by` is the owner and a member: no row
        // comes back otherwise (NotOwner).
        WriteOp::UpdateRoom(room_id, u) => (
            "UPDATE rooms SET name = COALESCE($2, name),
                 name_folded = CASE WHEN hidden THEN name_folded ELSE COALESCE($3, name_folded) END,
                 owner = COALESCE($4, owner),
                 password_hash = CASE WHEN $5 THEN $6 ELSE password_hash END
             WHERE room_id = $1 AND ($7::text IS NULL OR (owner = $7 AND EXISTS (
                 SELECT 1 FROM members WHERE room_id = $1 AND username = $7)))
             RETURNING 1",
            vec![
                p(room_id.clone()),
                p(u.name.clone()),
                p(u.name.as_deref().map(fold_room_name)),
                p(u.owner.clone()),
                p(u.password_hash.is_some()),
                p(u.password_hash.clone().flatten()),
                p(u.by.clone()),
            ],
        ),
        WriteOp::DeleteRoom(room_id) => (
            "WITH a AS (DELETE FROM messages WHERE room_id = $1),
                  b AS (DELETE FROM member_periods WHERE room_id = $1),
                  c AS (DELETE FROM members WHERE room_id = $1),
                  d AS (DELETE FROM bans WHERE room_id = $1)
             DELETE FROM rooms WHERE room_id = $1",
            vec![p(room_id.clone())],
        ),
        WriteOp::AddMember(room_id, username, joined_at, max_members, max_rooms) => (
            // The period starts after the room's last seq as of this point
            // in the batch (earlier statements' appends included); one that
            // starts there already (a leave and a rejoin with no message
            // between) is reopened, so the member reads what comes next. A user
            // banned by another process is not added (the room row lock,
            // taken first, orders this after any committed ban).
            "WITH banned AS (
                SELECT 1 FROM bans WHERE room_id = $1 AND username = $2
             ), full_room AS (
                SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND username = $2)
                  AND (SELECT count(*) FROM members WHERE room_id = $1) >= $4
             ), too_many AS (
                SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM members WHERE room_id = $1 AND username = $2)
                  AND (SELECT count(*) FROM members WHERE username = $2) >= $5
             ), ins AS (
                INSERT INTO members (room_id, username, joined_at)
                SELECT $1, $2, $3
                WHERE NOT EXISTS (SELECT 1 FROM banned) AND NOT EXISTS (SELECT 1 FROM full_room)
                  AND NOT EXISTS (SELECT 1 FROM too_many)
                ON CONFLICT (room_id, username) DO NOTHING RETURNING room_id
             ), period AS (
                INSERT INTO member_periods (room_id, username, from_seq, to_seq)
                SELECT r.room_id, $2, r.last_seq + 1, NULL FROM rooms r JOIN ins ON ins.room_id = r.room_id
                ON CONFLICT (room_id, username, from_seq) DO UPDATE SET to_seq = NULL
             )
             SELECT EXISTS (SELECT 1 FROM banned), EXISTS (SELECT 1 FROM full_room),
                    EXISTS (SELECT 1 FROM too_many)",
            vec![
                p(room_id.clone()),
                p(username.clone()),
                ms(*joined_at),
                p(*max_members),
                p(*max_rooms),
            ],
        ),
        // One statement decides, on what is committed (the room row is
        // locked first): whether `by` may do it, who is left, the heir when
        // the owner leaves, and, when no one is left, the room's deletion
        // with everything of it. CTEs share one snapshot, so `left_over`
        // names the leaver explicitly.
        WriteOp::RemoveMember(room_id, username, ban, by) => (
            "WITH auth AS (
                SELECT 1 WHERE $5::text IS NULL OR EXISTS (
                    SELECT 1 FROM rooms r JOIN members m ON m.room_id = r.room_id AND m.username = r.owner
                    WHERE r.room_id = $1 AND r.owner = $5)
             ), del AS (
                DELETE FROM members WHERE room_id = $1 AND username = $2 AND EXISTS (SELECT 1 FROM auth)
                RETURNING room_id
             ), left_over AS (
                SELECT username, joined_at FROM members
                WHERE room_id = $1 AND (username <> $2 OR NOT EXISTS (SELECT 1 FROM auth))
             ), heir AS (
                SELECT username FROM left_over ORDER BY joined_at, username LIMIT 1
             ), emptied AS (
                SELECT 1 WHERE EXISTS (SELECT 1 FROM auth) AND NOT EXISTS (SELECT 1 FROM left_over)
             ), closed AS (
                UPDATE member_periods SET to_seq = (SELECT last_seq FROM rooms WHERE room_id = $1)
                WHERE room_id = $1 AND username = $2 AND to_seq IS NULL AND EXISTS (SELECT 1 FROM del)
                  AND NOT EXISTS (SELECT 1 FROM emptied)
             ), banned AS (
                INSERT INTO bans (room_id, username, banned_at) SELECT $1, $2, $3
                WHERE $4 AND EXISTS (SELECT 1 FROM auth) AND NOT EXISTS (SELECT 1 FROM emptied)
                ON CONFLICT DO NOTHING
             ), moved AS (
                UPDATE rooms SET owner = (SELECT username FROM heir)
                WHERE room_id = $1 AND owner = $2 AND EXISTS (SELECT 1 FROM del)
                  AND EXISTS (SELECT 1 FROM heir)
                RETURNING owner
             ), wipe_messages AS (
                DELETE FROM messages WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
             ), wipe_periods AS (
                DELETE FROM member_periods WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
             ), wipe_bans AS (
                DELETE FROM bans WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
             ), wipe_room AS (
                DELETE FROM rooms WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
             )
             SELECT EXISTS (SELECT 1 FROM auth), (SELECT count(*) FROM left_over),
                    COALESCE((SELECT owner FROM moved), (SELECT owner FROM rooms WHERE room_id = $1))",
            vec![
                p(room_id.clone()),
                p(username.clone()),
                ms(now_ms()),
                p(*ban),
                p(by.clone()),
            ],
        ),
        WriteOp::SetBan(room_id, username, true) => (
            "INSERT INTO bans (room_id, username, banned_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            vec![p(room_id.clone()), p(username.clone()), ms(now_ms())],
        ),
        WriteOp::SetBan(room_id, username, false) => (
            "DELETE FROM bans WHERE room_id = $1 AND username = $2",
            vec![p(room_id.clone()), p(username.clone())],
        ),
        // A copy stored before (in this transaction or committed) answers
        // with its seq and takes no new one; otherwise the room row is
        // locked (until COMMIT) to take the next seq. Zero rows: no room.
        // The key set must be the committed member set (several processes
        // may change members): otherwise one row with `stale` set.
        WriteOp::Append(m) => (
            "WITH existing AS (
                SELECT seq, ts FROM messages WHERE room_id = $1 AND sender = $2 AND msg_id = $3
             ), committed AS (
                SELECT COALESCE(array_agg(username ORDER BY username COLLATE \"C\"), '{}') AS names
                FROM members WHERE room_id = $1
             ), stale AS (
                SELECT 1 FROM committed
                WHERE $11 AND names IS DISTINCT FROM $10::text[] AND NOT EXISTS (SELECT 1 FROM existing)
                  AND EXISTS (SELECT 1 FROM rooms WHERE room_id = $1)
             ), bumped AS (
                UPDATE rooms SET last_seq = last_seq + 1
                WHERE room_id = $1 AND NOT EXISTS (SELECT 1 FROM existing)
                  AND NOT EXISTS (SELECT 1 FROM stale)
                RETURNING last_seq
             ), inserted AS (
                INSERT INTO messages (room_id, seq, ts, msg_id, sender, nonce, key_commitment,
                                      ciphertext, signature, keys)
                SELECT $1, last_seq, $4, $3, $2, $5, $6, $7, $8, $9 FROM bumped
                RETURNING seq, ts
             )
             SELECT seq, ts, false, false FROM inserted
             UNION ALL
             SELECT seq, ts, true, false FROM existing
             UNION ALL
             SELECT 0, 0, false, true FROM stale",
            vec![
                p(m.room_id.clone()),
                p(m.sender.clone()),
                p(m.msg_id.clone()),
                ms(now_ms()),
                p(m.nonce.clone()),
                p(m.key_commitment.clone()),
                p(m.ciphertext.clone()),
                p(m.signature.clone()),
                p(encode_keys(&m.keys)),
                p(key_names(&m.keys)),
                p(m.check_members),
            ],
        ),
        WriteOp::Purge(_) => return None,
    })
}

type Param = Box<dyn ToSql + Sync + Send>;

fn param_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

/// The recipients' names in byte order (`COLLATE "C"` in the statement).
fn key_names(keys: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut names: Vec<String> = keys.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names
}

/// The room whose row a write locks (`FOR UPDATE`, in a statement of its
/// own at the start of the batch): membership changes and appends of one
/// room are then serialized across processes, and the write's own statement,
/// which takes a new snapshot under READ COMMITTED, sees every change
/// committed before it. Without it, an append waiting for the row would
/// still check the members as they were when it started, and a kick
/// committed meanwhile would be missed.
fn locks_room(op: &WriteOp) -> Option<&str> {
    match op {
        WriteOp::Append(m) => Some(&m.room_id),
        WriteOp::AddMember(room_id, ..)
        | WriteOp::RemoveMember(room_id, ..)
        | WriteOp::SetBan(room_id, ..)
        | WriteOp::UpdateRoom(room_id, ..)
        | WriteOp::DeleteRoom(room_id) => Some(room_id),
        _ => None,
    }
}

/// The user whose row a write locks: joins and creations count the user's
/// rooms against `max_rooms_per_user` (several processes may add rooms for
/// one user at once).
fn locks_user(op: &WriteOp) -> Option<&str> {
    match op {
        WriteOp::AddMember(_, username, ..) => Some(username),
        WriteOp::CreateRoom(r, _) => Some(&r.owner),
        _ => None,
    }
}

/// Locks every room of a batch, in room id order, then every user, in name
/// order, in one statement: two processes' batches that share rooms or
/// users take them in the same order, so they wait for each other instead
/// of deadlocking.
const LOCK_ROOMS: &str = "SELECT
    (SELECT count(*) FROM (SELECT 1 FROM rooms WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE) r),
    (SELECT count(*) FROM (SELECT 1 FROM users WHERE username = ANY($2) ORDER BY username FOR UPDATE) u)";

/// What a write's statement answered.
fn done(op: &WriteOp, rows: &[Row]) -> Result<Done, StoreError> {
    match op {
        WriteOp::AddMember(..) => {
            if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                return Err(StoreError::Banned);
            }
            if rows.first().is_some_and(|r| r.get::<_, bool>(1)) {
                return Err(StoreError::RoomFull);
            }
            if rows.first().is_some_and(|r| r.get::<_, bool>(2)) {
                return Err(StoreError::TooManyRooms);
            }
            Ok(Done::Unit)
        }
        WriteOp::CreateRoom(..) => {
            if rows.first().is_some_and(|r| r.get::<_, i64>(0) == 0) {
                return Err(StoreError::TooManyRooms);
            }
            Ok(Done::Unit)
        }
        WriteOp::UpdateRoom(_, u) if u.by.is_some() && rows.is_empty() => Err(StoreError::NotOwner),
        WriteOp::RemoveMember(..) => {
            let row = rows.first().ok_or(StoreError::NotFound)?;
            if !row.get::<_, bool>(0) {
                return Err(StoreError::NotOwner);
            }
            let remaining = row.get::<_, i64>(1) as u64;
            Ok(Done::Removed(Removed {
                remaining,
                owner: if remaining == 0 { None } else { row.get(2) },
            }))
        }
        WriteOp::Append(_) => {
            let row = rows.first().ok_or(StoreError::NotFound)?;
            if row.get::<_, bool>(3) {
                return Err(StoreError::StaleMembers);
            }
            Ok(Done::Appended(Appended {
                seq: row.get::<_, i64>(0) as u64,
                ts: row.get::<_, i64>(1) as u64,
                duplicate: row.get(2),
            }))
        }
        _ => Ok(Done::Unit),
    }
}

/// One transaction for the whole batch; results are sent only after COMMIT.
/// First every statement is pipelined; if one fails (a taken name, a rare
/// race), that transaction is rolled back and the batch runs again one
/// write at a time, each in its own savepoint, so the failing write fails
/// alone.
async fn run_batch(
    pool: &Pool,
    ops: &[&WriteOp],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    // The batch's rooms, locked first (the locks hold until COMMIT, and every
    // later statement takes a new snapshot).
    let mut rooms: Vec<String> = ops
        .iter()
        .filter_map(|op| locks_room(op))
        .map(str::to_owned)
        .collect();
    rooms.sort();
    rooms.dedup();
    let mut users: Vec<String> = ops
        .iter()
        .filter_map(|op| locks_user(op))
        .map(str::to_owned)
        .collect();
    users.sort();
    users.dedup();
    let lock = client.prepare_cached(LOCK_ROOMS).await.map_err(err)?;
    let prepared: Option<Vec<(Statement, Vec<Param>)>> = {
        let mut out = Vec::with_capacity(ops.len() + 1);
        out.push((
            lock.clone(),
            vec![Box::new(rooms.clone()) as Param, Box::new(users.clone())],
        ));
        let mut complete = true;
        for op in ops {
            let Some((sql, params)) = statement(op) else {
                complete = false;
                break;
            };
            out.push((client.prepare_cached(sql).await.map_err(err)?, params));
        }
        complete.then_some(out)
    };
    if let Some(prepared) = &prepared {
        let tx = client.transaction().await.map_err(err)?;
        let refs: Vec<_> = prepared
            .iter()
            .map(|(_, params)| param_refs(params))
            .collect();
        let mut answers = futures_util::future::join_all(
            prepared
                .iter()
                .zip(&refs)
                .map(|((stmt, _), params)| tx.query(stmt, params)),
        )
        .await
        .into_iter();
        // The lock's answer, then one per write.
        let locked = answers.next().expect("the lock's answer");
        let answers: Vec<_> = answers.collect();
        if let Err(e) = &locked {
            if e.code().is_none() {
                return Err(StoreError::Unavailable(e.to_string()));
            }
        }
        if locked.is_ok() && answers.iter().all(Result::is_ok) {
            let results = ops
                .iter()
                .zip(&answers)
                .map(|(op, rows)| done(op, rows.as_ref().expect("checked")))
                .collect();
            tx.commit().await.map_err(err)?;
            return Ok(results);
        }
        if let Some(Err(e)) = answers
            .iter()
            .find(|a| a.as_ref().is_err_and(|e| e.code().is_none()))
        {
            return Err(StoreError::Unavailable(e.to_string()));
        }
        tx.rollback().await.map_err(err)?;
    }
    let tx = client.transaction().await.map_err(err)?;
    // Outside the savepoints: a write rolled back keeps the locks.
    tx.query(&lock, &[&rooms, &users]).await.map_err(err)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        tx.batch_execute("SAVEPOINT w").await.map_err(err)?;
        let result = match (op, statement(op)) {
            (WriteOp::Purge(policy), _) => purge(&tx, *policy).await.map(Done::Count),
            (_, Some((sql, params))) => match tx.query(sql, &param_refs(&params)).await {
                Ok(rows) => done(op, &rows),
                Err(e) => Err(err(e)),
            },
            (_, None) => unreachable!("only purge has no single statement"),
        };
        if let Err(StoreError::Unavailable(_)) = &result {
            // The connection is gone: nothing in this batch can commit.
            return Err(result.err().expect("checked"));
        }
        let result = match (op, result) {
            // Another process stored this message between our lookup and
            // the lock: answer with its seq.
            (WriteOp::Append(m), Err(StoreError::Conflict(_))) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT w")
                    .await
                    .map_err(err)?;
                let row = tx
                    .query_one(
                        "SELECT seq, ts FROM messages WHERE room_id = $1 AND sender = $2 AND msg_id = $3",
                        &[&m.room_id, &m.sender, &m.msg_id],
                    )
                    .await
                    .map_err(err)?;
                Ok(Done::Appended(Appended {
                    seq: row.get::<_, i64>(0) as u64,
                    ts: row.get::<_, i64>(1) as u64,
                    duplicate: true,
                }))
            }
            (_, Err(e)) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT w")
                    .await
                    .map_err(err)?;
                Err(e)
            }
            (_, Ok(d)) => {
                tx.batch_execute("RELEASE SAVEPOINT w").await.map_err(err)?;
                Ok(d)
            }
        };
        results.push(result);
    }
    tx.commit().await.map_err(err)?;
    Ok(results)
}

async fn purge(tx: &Transaction<'_>, policy: PurgePolicy) -> Result<u64, StoreError> {
    let batch = policy.batch.max(1) as i64;
    let mut deleted = 0u64;
    if policy.older_than_ts > 0 {
        deleted += tx
            .execute(
                "DELETE FROM messages WHERE (room_id, seq) IN
                   (SELECT room_id, seq FROM messages WHERE ts < $1 ORDER BY ts LIMIT $2)",
                &[&(policy.older_than_ts as i64), &batch],
            )
            .await
            .map_err(err)?;
    }
    if policy.max_per_room > 0 && (deleted as i64) < batch {
        let rooms: Vec<String> = tx
            .query("SELECT room_id FROM rooms", &[])
            .await
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for room in rooms {
            let room_limit = batch - deleted as i64;
            if room_limit <= 0 {
                break;
            }
            deleted += tx
                .execute(
                    "DELETE FROM messages WHERE room_id = $1 AND seq IN
                       (SELECT seq FROM messages WHERE room_id = $1 AND seq <=
                          (SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)
                        ORDER BY seq LIMIT $3)",
                    &[&room, &(policy.max_per_room as i64), &room_limit],
                )
                .await
                .map_err(err)?;
        }
    }
    Ok(deleted)
}

const ROOM_COLUMNS: &str =
    "SELECT room_id, name, owner, password_hash, hidden, created_at, last_seq FROM rooms";

fn room_from_row(r: &tokio_postgres::Row) -> RoomRecord {
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

/// The requester's membership periods first (a few rows), then only the
/// message ranges inside them, newest or oldest first: a late joiner's
/// history never scans the messages sent before they joined. Each range is
/// read in chunks of the page size plus a few spare rows (messages in a
/// period without our key: a member who joined while one was in flight).
async fn history_page(
    client: &deadpool_postgres::Client,
    room_id: &str,
    username: &str,
    q: HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    const OPEN: i64 = i64::MAX;
    let lo = q
        .after_seq
        .map_or(1, |a| a.saturating_add(1))
        .min(OPEN as u64) as i64;
    let hi = q
        .before_seq
        .map_or(OPEN as u64, |b| b.saturating_sub(1))
        .min(OPEN as u64) as i64;
    let ascending = q.ascending();
    let mut periods: Vec<(i64, i64)> = client
        .query(
            "SELECT from_seq, COALESCE(to_seq, 9223372036854775807) FROM member_periods
             WHERE room_id = $1 AND username = $2 ORDER BY from_seq",
            &[&room_id, &username],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if !ascending {
        periods.reverse();
    }
    let fetch = (q.limit.max(1) + 16) as i64;
    let sql = format!(
        "SELECT seq, ts, msg_id, sender, nonce, ciphertext, signature, keys, key_commitment
         FROM messages WHERE room_id = $1 AND seq BETWEEN $2 AND $3
         ORDER BY seq {} LIMIT $4",
        if ascending { "ASC" } else { "DESC" }
    );
    let stmt = client.prepare_cached(&sql).await.map_err(err)?;
    let mut page = PageBuilder::new(q);
    for (from, to) in periods {
        let (mut a, mut b) = (from.max(lo), to.min(hi));
        while a <= b {
            let rows = client
                .query(&stmt, &[&room_id, &a, &b, &fetch])
                .await
                .map_err(err)?;
            for r in &rows {
                let seq: i64 = r.get(0);
                if ascending {
                    a = seq + 1;
                } else {
                    b = seq - 1;
                }
                let Some(key) = find_key(r.get::<_, &[u8]>(7), username) else {
                    continue;
                };
                let more = page.push(StoredMessage {
                    seq: seq as u64,
                    ts: r.get::<_, i64>(1) as u64,
                    msg_id: r.get(2),
                    sender: r.get(3),
                    nonce: r.get(4),
                    ciphertext: r.get(5),
                    signature: r.get(6),
                    key_commitment: r.get(8),
                    key,
                });
                if !more {
                    return Ok(page.finish());
                }
            }
            if (rows.len() as i64) < fetch {
                break;
            }
        }
    }
    Ok(page.finish())
}

impl Store for PostgresStore {
    fn ping(&self) -> StoreFuture<()> {
        self.read(|c| async move { c.execute("SELECT 1", &[]).await.map(|_| ()).map_err(err) })
    }

    fn create_user(&self, user: UserRecord) -> StoreFuture<()> {
        self.unit(WriteOp::CreateUser(user))
    }

    fn get_user(&self, username: &str) -> StoreFuture<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| async move {
            c.query_opt(
                "SELECT username, sign_key, enc_key, created_at FROM users WHERE username = $1",
                &[&username],
            )
            .await
            .map(|r| r.map(|r| user_from_row(&r, 0)))
            .map_err(err)
        })
    }

    fn load_directory(&self) -> StoreFuture<Vec<DirectoryEntry>> {
        self.read(|c| async move {
            let rooms = c
                .query(&format!("{ROOM_COLUMNS} ORDER BY created_at, room_id"), &[])
                .await
                .map_err(err)?;
            let mut entries: Vec<DirectoryEntry> = rooms
                .iter()
                .map(|r| DirectoryEntry {
                    room: room_from_row(r),
                    members: Vec::new(),
                })
                .collect();
            let index: std::collections::HashMap<String, usize> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.room.room_id.clone(), i))
                .collect();
            for r in c
                .query("SELECT room_id, username FROM members ORDER BY id", &[])
                .await
                .map_err(err)?
            {
                if let Some(&i) = index.get(r.get::<_, &str>(0)) {
                    entries[i].members.push(r.get(1));
                }
            }
            Ok(entries)
        })
    }

    fn create_room(&self, room: RoomRecord) -> StoreFuture<()> {
        self.unit(WriteOp::CreateRoom(room, self.max_rooms))
    }

    fn load_room(&self, room_id: &str) -> StoreFuture<RoomState> {
        let room_id = room_id.to_owned();
        self.read(move |c| async move {
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
        })
    }

    fn update_room(&self, room_id: &str, update: RoomUpdate) -> StoreFuture<()> {
        self.unit(WriteOp::UpdateRoom(room_id.to_owned(), update))
    }

    fn delete_room(&self, room_id: &str) -> StoreFuture<()> {
        self.unit(WriteOp::DeleteRoom(room_id.to_owned()))
    }

    fn add_member(&self, room_id: &str, username: &str, joined_at: u64) -> StoreFuture<()> {
        self.unit(WriteOp::AddMember(
            room_id.to_owned(),
            username.to_owned(),
            joined_at,
            self.max_members,
            self.max_rooms,
        ))
    }

    fn remove_member(
        &self,
        room_id: &str,
        username: &str,
        ban: bool,
        by: Option<&str>,
    ) -> StoreFuture<Removed> {
        let op = WriteOp::RemoveMember(
            room_id.to_owned(),
            username.to_owned(),
            ban,
            by.map(str::to_owned),
        );
        self.write(op, |done| match done {
            Done::Removed(r) => r,
            _ => unreachable!("a removal answers Removed"),
        })
    }

    fn set_ban(&self, room_id: &str, username: &str, banned: bool) -> StoreFuture<()> {
        self.unit(WriteOp::SetBan(
            room_id.to_owned(),
            username.to_owned(),
            banned,
        ))
    }

    fn append_message(&self, msg: Arc<NewMessage>) -> StoreFuture<Appended> {
        self.write(WriteOp::Append(msg), |done| match done {
            Done::Appended(a) => a,
            _ => unreachable!("an append answers Appended"),
        })
    }

    fn messages_after(
        &self,
        room_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreFuture<Vec<RoomMessage>> {
        let room_id = room_id.to_owned();
        let after = after_seq.min(i64::MAX as u64) as i64;
        self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT seq, ts, msg_id, sender, nonce, ciphertext, signature, keys,
                            key_commitment
                     FROM messages WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&room_id, &after, &(limit as i64)],
                )
                .await
                .map_err(err)?;
            rows.iter()
                .map(|r| {
                    let seq = r.get::<_, i64>(0) as u64;
                    let keys = decode_keys(r.get::<_, &[u8]>(7))
                        .ok_or_else(|| StoreError::Backend(format!("bad key blob at seq {seq}")))?;
                    Ok(RoomMessage {
                        seq,
                        ts: r.get::<_, i64>(1) as u64,
                        message: NewMessage {
                            room_id: room_id.clone(),
                            msg_id: r.get(2),
                            sender: r.get(3),
                            nonce: r.get(4),
                            ciphertext: r.get(5),
                            signature: r.get(6),
                            keys,
                            key_commitment: r.get(8),
                            check_members: false,
                        },
                    })
                })
                .collect()
        })
    }

    fn find_message(
        &self,
        room_id: &str,
        sender: &str,
        msg_id: &[u8],
    ) -> StoreFuture<Option<(u64, u64)>> {
        let (room_id, sender, msg_id) = (room_id.to_owned(), sender.to_owned(), msg_id.to_vec());
        self.read(move |c| async move {
            c.query_opt(
                "SELECT seq, ts FROM messages WHERE room_id = $1 AND sender = $2 AND msg_id = $3",
                &[&room_id, &sender, &msg_id],
            )
            .await
            .map(|r| r.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
            .map_err(err)
        })
    }

    fn history(
        &self,
        room_id: &str,
        username: &str,
        query: HistoryQuery,
    ) -> StoreFuture<HistoryPage> {
        let (room_id, username) = (room_id.to_owned(), username.to_owned());
        self.read(move |c| async move { history_page(&c, &room_id, &username, query).await })
    }

    fn purge(&self, policy: PurgePolicy) -> StoreFuture<u64> {
        self.write(WriteOp::Purge(policy), |done| match done {
            Done::Count(n) => n,
            _ => unreachable!("a purge answers Count"),
        })
    }

    fn close(&self) -> StoreFuture<()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.send(ToWriter::Close(tx)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = rx.await;
            }
            Ok(())
        })
    }
}
