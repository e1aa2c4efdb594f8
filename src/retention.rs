//! Retention: a background task that deletes old messages in small batches
//! (`retention.*` settings). Each batch is one short store transaction, so
//! sends keep flowing between batches; seq is never reused because rooms keep
//! their `last_seq` apart from the messages.

use std::time::Duration;

use crate::config::Retention;
use crate::store::{PurgePolicy, SharedStore};
use crate::util::now_ms;

const DAY_MS: f64 = 86_400_000.0;

/// Starts the purge loop on the current runtime; a no-op task when retention
/// is off.
pub fn spawn(store: SharedStore, settings: Retention) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        if settings.max_age_days == 0.0 && settings.max_messages_per_room == 0 {
            return;
        }
        let interval = Duration::from_secs_f64(settings.purge_interval_secs);
        loop {
            tokio::time::sleep(interval).await;
            let deleted = purge_once(&store, &settings).await;
            if deleted > 0 {
                log::info!("retention: deleted {deleted} messages");
            }
        }
    })
}

/// Runs one full purge pass; returns how many messages were deleted.
pub async fn purge_once(store: &SharedStore, settings: &Retention) -> u64 {
    let older_than_ts = if settings.max_age_days > 0.0 {
        now_ms().saturating_sub((settings.max_age_days * DAY_MS) as u64)
    } else {
        0
    };
    let policy = PurgePolicy {
        older_than_ts,
        max_per_room: settings.max_messages_per_room,
        batch: settings.purge_batch.max(1),
    };
    let mut total = 0;
    loop {
        match store.purge(policy).await {
            Ok(n) => {
                total += n;
                if (n as usize) < policy.batch {
                    return total;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                log::error!("retention purge failed: {e}");
                return total;
            }
        }
    }
}
