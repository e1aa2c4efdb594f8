//! Retention's plan, one for every store: first the oldest log entries past
//! the age limit, then, room by room, each room's oldest entries beyond its
//! newest `max_per_room`, never more than `policy.batch` in one call (the
//! caller repeats while a full batch goes). A store answers the questions in
//! its own dialect ([`PurgeRows`]) and deletes what the plan chose, inside
//! one write of its group commit. Commits go too: a device that needs a
//! deleted commit resyncs by external commit.

use super::{PurgePolicy, StoreError};

/// An entry's address: (room, seq).
pub(crate) type MessageKey = (String, i64);

/// What the plan asks a store.
pub(crate) trait PurgeRows {
    /// Up to `limit` entries with `ts < before`, oldest first.
    async fn older_than(
        &mut self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError>;
    /// Every room's id.
    async fn rooms(&mut self) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` of the room's oldest entries outside its newest `keep`.
    async fn beyond_newest(
        &mut self,
        room: &str,
        keep: u64,
        limit: usize,
    ) -> Result<Vec<MessageKey>, StoreError>;
    /// Deletes the entries (sorted, no repeats); answers how many went.
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
