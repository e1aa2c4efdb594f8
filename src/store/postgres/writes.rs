//! PostgreSQL writes: one statement per write, the batch transaction that
//! pipelines them (with the room and user locks taken first), and the
//! writer task that drains the group-commit queue.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, Transaction};

use super::{err, pool_err};
use crate::metrics;
use crate::store::batch::Batches;
use crate::store::purge::{MessageKey, PurgeRows};
use crate::store::{
    Appended, DeviceAdded, DeviceRecord, GroupRow, NewEntry, PurgePolicy, Removed, RoomRecord,
    RoomUpdate, StoreError, UserRecord, DEVICE_RECORDS_PER_LIVE,
};
use crate::util::now_ms;
use crate::validate::{fold_room_name, room_name_key};

/// Creating a room: the room (not when the owner is in `$8` rooms already),
/// its owner as member, the owner's membership period, and `$extra` CTEs.
macro_rules! create_room_sql {
    ($extra:literal) => {
        concat!(
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
             )",
            $extra,
            "
             SELECT count(*) FROM r"
        )
    };
}

/// `$1`–`$8` of [`create_room_sql`].
fn create_room_params(r: &RoomRecord, max_rooms: i64) -> Vec<Param> {
    vec![
        Box::new(r.room_id.clone()),
        Box::new(r.name.clone()),
        Box::new(room_name_key(&r.name, r.hidden, &r.room_id)),
        Box::new(r.owner.clone()),
        Box::new(r.password_hash.clone()),
        Box::new(r.hidden),
        Box::new(r.created_at as i64),
        Box::new(max_rooms),
    ]
}

/// One write, run by the writer inside the batch transaction.
pub(super) enum WriteOp {
    CreateUser(UserRecord),
    UpdateRoom(String, RoomUpdate),
    DeleteRoom(String),
    /// room, user, joined_at, most members the room may have, most rooms
    /// the user may be in
    AddMember(String, String, u64, i64, i64),
    /// room, user, ban, by (the owner who kicks or bans)
    RemoveMember(String, String, bool, Option<String>),
    SetBan(String, String, bool),
    Purge(PurgePolicy),
    /// the device, the most live devices its user may have
    AddDevice(DeviceRecord, i64),
    /// the room, its group, the most rooms its owner may be in
    CreateGroupRoom(RoomRecord, GroupRow, i64),
    AppendEntry(Arc<NewEntry>),
    /// room, epoch, GroupInfo
    SetGroupInfo(String, u64, Vec<u8>),
    /// user, device id, removed at
    RemoveDevice(String, Vec<u8>, u64),
}

pub(super) enum Done {
    Unit,
    Appended(Appended),
    Count(u64),
    Removed(Removed),
    Device(DeviceAdded),
    Flag(bool),
}

pub(super) type Job = (WriteOp, oneshot::Sender<Result<Done, StoreError>>);

pub(super) async fn writer_loop(pool: Pool, mut batches: Batches<Job>) {
    while let Some(mut batch) = batches.next().await {
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
    batches.finish();
    log::info!("postgres writer stopped");
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
        WriteOp::CreateGroupRoom(r, g, max_rooms) => (
            create_room_sql!(
                ", g AS (
                INSERT INTO groups (room_id, group_id, epoch, state, group_info, removal_epoch)
                SELECT room_id, $9, $10, $11, $12, $13 FROM r
             )"
            ),
            {
                let mut params = create_room_params(r, *max_rooms);
                params.extend([
                    p(g.group_id.clone()),
                    ms(g.epoch),
                    p(g.state.clone()),
                    p(g.group_info.clone()),
                    ms(g.removal_epoch),
                ]);
                params
            },
        ),
        // A commit moves the group only from the epoch it was made for
        // (the room row is locked first, so commits of every process take
        // turns): the first commit for an epoch wins. The last column is
        // the group's epoch before this statement (the current one when the
        // commit lost).
        WriteOp::AppendEntry(n) => (
            "WITH dup AS (
                SELECT seq, ts FROM entries
                WHERE room_id = $1 AND device_id = $5 AND msg_id = $6
             ), g AS (
                UPDATE groups SET epoch = epoch + 1, state = $11, group_info = $9,
                    removal_epoch = CASE WHEN $12 THEN epoch + 1 ELSE removal_epoch END
                WHERE room_id = $1 AND $10::bigint IS NOT NULL AND epoch = $10
                  AND NOT EXISTS (SELECT 1 FROM dup)
                RETURNING epoch
             ), go AS (
                SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM dup)
                  AND ($10::bigint IS NULL OR EXISTS (SELECT 1 FROM g))
             ), bumped AS (
                UPDATE rooms SET last_seq = last_seq + 1
                WHERE room_id = $1 AND EXISTS (SELECT 1 FROM go)
                RETURNING last_seq
             ), ins AS (
                INSERT INTO entries (room_id, seq, ts, kind, sender, device_id, msg_id, epoch, data, group_info)
                SELECT $1, last_seq, $2, $3, $4, $5, $6, $7, $8, $9 FROM bumped
                RETURNING seq, ts
             )
             SELECT (SELECT seq FROM ins), (SELECT ts FROM ins), (SELECT seq FROM dup),
                    (SELECT ts FROM dup), (SELECT epoch FROM groups WHERE room_id = $1),
                    EXISTS (SELECT 1 FROM rooms WHERE room_id = $1)",
            {
                let e = &n.entry;
                let change = n.commit.as_ref();
                vec![
                    p(n.room_id.clone()),
                    ms(now_ms()),
                    p(e.kind.code() as i16),
                    p(e.sender.clone()),
                    p(e.device_id.clone()),
                    p(e.msg_id.clone()),
                    ms(e.epoch),
                    p(e.data.clone()),
                    p(e.group_info.clone()),
                    p(change.map(|c| c.from_epoch as i64)),
                    p(change.map(|c| c.state.clone())),
                    p(change.is_some_and(|c| c.removed)),
                ]
            },
        ),
        WriteOp::SetGroupInfo(room_id, epoch, info) => (
            "UPDATE groups SET group_info = $3 WHERE room_id = $1 AND epoch = $2 RETURNING 1",
            vec![p(room_id.clone()), ms(*epoch), p(info.clone())],
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
            "WITH e AS (DELETE FROM entries WHERE room_id = $1),
                  g AS (DELETE FROM groups WHERE room_id = $1),
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
             ), wipe_entries AS (
                DELETE FROM entries WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
             ), wipe_groups AS (
                DELETE FROM groups WHERE room_id = $1 AND EXISTS (SELECT 1 FROM emptied)
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
        // Decided on what is committed: the user's row is locked first, so
        // logins adding devices on several processes take turns.
        WriteOp::AddDevice(d, max) => (
            "WITH known AS (
                SELECT mls_key, removed_at IS NOT NULL AS removed FROM devices
                WHERE username = $1 AND device_id = $2
             ), counts AS (
                SELECT count(*) FILTER (WHERE removed_at IS NULL) AS live, count(*) AS total
                FROM devices WHERE username = $1
             ), ins AS (
                INSERT INTO devices (username, device_id, certificate, mls_key, added_at)
                SELECT $1, $2, $3, $4, $5
                WHERE NOT EXISTS (SELECT 1 FROM known)
                  AND (SELECT live FROM counts) < $6 AND (SELECT total FROM counts) < $6 * $7
                ON CONFLICT DO NOTHING
             )
             SELECT (SELECT mls_key FROM known), (SELECT removed FROM known),
                    (SELECT live FROM counts), (SELECT total FROM counts)",
            vec![
                p(d.username.clone()),
                p(d.device_id.clone()),
                p(d.certificate.clone()),
                p(d.mls_key.clone()),
                ms(d.added_at),
                p(*max),
                p(DEVICE_RECORDS_PER_LIVE as i64),
            ],
        ),
        WriteOp::RemoveDevice(username, device_id, at) => (
            "UPDATE devices SET removed_at = $3
             WHERE username = $1 AND device_id = $2 AND removed_at IS NULL RETURNING 1",
            vec![p(username.clone()), p(device_id.clone()), ms(*at)],
        ),
        WriteOp::Purge(_) => return None,
    })
}

type Param = Box<dyn ToSql + Sync + Send>;

fn param_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
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
        WriteOp::AppendEntry(n) => Some(&n.room_id),
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
        WriteOp::AddDevice(d, _) => Some(&d.username),
        WriteOp::CreateGroupRoom(r, ..) => Some(&r.owner),
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
        WriteOp::CreateGroupRoom(..) => {
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
        WriteOp::AddDevice(d, max) => {
            let row = rows.first().ok_or(StoreError::NotFound)?;
            let key: Option<Vec<u8>> = row.get(0);
            let removed: Option<bool> = row.get(1);
            Ok(Done::Device(DeviceAdded::decide(
                key.as_deref().map(|k| (k, removed.unwrap_or(false))),
                &d.mls_key,
                row.get::<_, i64>(2) as u64,
                row.get::<_, i64>(3) as u64,
                *max as u64,
            )))
        }
        WriteOp::RemoveDevice(..) | WriteOp::SetGroupInfo(..) => Ok(Done::Flag(!rows.is_empty())),
        WriteOp::AppendEntry(_) => {
            let row = rows.first().ok_or(StoreError::NotFound)?;
            if let (Some(seq), Some(ts)) =
                (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
            {
                return Ok(Done::Appended(Appended {
                    seq: seq as u64,
                    ts: ts as u64,
                    duplicate: false,
                }));
            }
            if let (Some(seq), Some(ts)) =
                (row.get::<_, Option<i64>>(2), row.get::<_, Option<i64>>(3))
            {
                return Ok(Done::Appended(Appended {
                    seq: seq as u64,
                    ts: ts as u64,
                    duplicate: true,
                }));
            }
            if !row.get::<_, bool>(5) {
                return Err(StoreError::NotFound);
            }
            match row.get::<_, Option<i64>>(4) {
                Some(epoch) => Err(StoreError::StaleEpoch(epoch as u64)),
                None => Err(StoreError::NotFound),
            }
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

/// Retention's questions (see [`crate::store::purge`]) inside the batch's
/// transaction.
struct Purge<'t, 'c> {
    tx: &'t Transaction<'c>,
}

impl PurgeRows for Purge<'_, '_> {
    async fn older_than(
        &mut self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT room_id, seq FROM entries WHERE ts < $1 ORDER BY ts LIMIT $2",
                &[&(before as i64), &(limit as i64)],
            )
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn rooms(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .tx
            .query("SELECT room_id FROM rooms", &[])
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn beyond_newest(
        &mut self,
        room: &str,
        keep: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT seq FROM entries WHERE room_id = $1 AND seq <=
                   (SELECT seq FROM entries WHERE room_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)
                 ORDER BY seq LIMIT $3",
                &[&room, &(keep as i64), &(limit as i64)],
            )
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| (room.to_owned(), r.get(0))).collect())
    }

    async fn delete(&mut self, doomed: &[MessageKey]) -> Result<u64, StoreError> {
        let rooms: Vec<&str> = doomed.iter().map(|(r, _)| r.as_str()).collect();
        let seqs: Vec<i64> = doomed.iter().map(|(_, s)| *s).collect();
        self.tx
            .execute(
                "DELETE FROM entries WHERE (room_id, seq) IN
                   (SELECT * FROM unnest($1::text[], $2::bigint[]))",
                &[&rooms, &seqs],
            )
            .await
            .map_err(err)
    }
}

async fn purge(tx: &Transaction<'_>, policy: PurgePolicy) -> Result<u64, StoreError> {
    crate::store::purge::purge(&mut Purge { tx }, policy).await
}
