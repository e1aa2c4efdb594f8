//! Retention's plan, one for every store: first the oldest messages past the
//! age limit, then, room by room, each room's oldest messages beyond its
//! newest `max_per_room`, never more than `policy.batch` in one call (the
//! caller repeats while a full batch goes). A store answers the questions in
//! its own dialect ([`PurgeRows`]) and deletes what the plan chose, inside
//! one write of its group commit. The plan runs on v2's messages, then on
//! v3's log entries (commits too: a device that needs a deleted commit
//! resyncs), within the one batch ([`purge_logs`]).

use super::{PurgePolicy, StoreError};

/// A message's address: (room, seq).
pub(crate) type MessageKey = (String, i64);

/// What the plan asks a store.
pub(crate) trait PurgeRows {
    /// Up to `limit` messages with `ts < before`, oldest first.
    async fn older_than(
        &mut self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError>;
    /// Every room's id.
    async fn rooms(&mut self) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` of the room's oldest messages outside its newest `keep`.
    async fn beyond_newest(
        &mut self,
        room: &str,
        keep: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError>;
    /// Deletes the messages (sorted, no repeats); answers how many went.
    async fn delete(&mut self, doomed: &[MessageKey]) -> Result<u64, StoreError>;
}

/// Runs one batch of the plan against `rows`.
pub(crate) async fn purge<R: PurgeRows>(
    rows: &mut R,
    policy: PurgePolicy,
) -> Result<u64, StoreError> {
    let batch = policy.batch.max(1);
    let mut doomed = Vec::new();
    if policy.older_than_ts > 0 {
        doomed = rows.older_than(policy.older_than_ts, batch).await?;
    }
    if policy.max_per_room > 0 && doomed.len() < batch {
        for room in rows.rooms().await? {
            let left = batch - doomed.len();
            if left == 0 {
                break;
            }
            doomed.extend(rows.beyond_newest(&room, policy.max_per_room, left).await?);
        }
    }
    doomed.sort();
    doomed.dedup();
    if doomed.is_empty() {
        return Ok(0);
    }
    rows.delete(&doomed).await
}

/// One batch of the plan over v2's messages, then over v3's entries with
/// what is left of the batch.
pub(crate) async fn purge_logs<M: PurgeRows, E: PurgeRows>(
    messages: &mut M,
    entries: &mut E,
    policy: PurgePolicy,
) -> Result<u64, StoreError> {
    let batch = policy.batch.max(1);
    let gone = purge(messages, policy).await?;
    let left = batch.saturating_sub(gone as usize);
    if left == 0 {
        return Ok(gone);
    }
    let more = purge(
        entries,
        PurgePolicy {
            batch: left,
            ..policy
        },
    )
    .await?;
    Ok(gone + more)
}
