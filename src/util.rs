//! Small helpers shared by every module: the clock and id generation.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC), the protocol's timestamp unit.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh opaque room id: `r-` and 16 random hex digits.
pub fn new_room_id() -> String {
    format!("r-{}", hex::encode(crate::crypto::random_bytes::<8>()))
}

/// Mailbox size for the Registry and rooms. `Addr::send` enqueues at once
/// while there is room, which keeps one sender's requests in order; actix's
/// default of 16 would make bursts wait (and possibly reorder).
pub const MAILBOX_CAPACITY: usize = 1 << 20;
