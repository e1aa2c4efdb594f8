//! Small helpers shared by every module: the clock, id generation, and
//! per-key counts in fixed windows (the budgets of registrations, password
//! attempts, and joins and leaves).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Work in flight per key (joins per user in a room, joins and creations
/// per user in the Registry): each holds a place against a limit until it
/// is released, so racing requests cannot exceed the limit together.
#[derive(Debug)]
pub struct InFlight<K> {
    held: HashMap<K, usize>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            held: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> InFlight<K> {
    pub fn hold(&mut self, key: &K) {
        *self.held.entry(key.clone()).or_default() += 1;
    }

    pub fn release(&mut self, key: &K) {
        if let Some(n) = self.held.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(key);
            }
        }
    }

    /// How many `key` holds.
    pub fn count(&self, key: &K) -> usize {
        self.held.get(key).copied().unwrap_or(0)
    }

    /// How many keys hold at least one.
    pub fn keys(&self) -> usize {
        self.held.len()
    }
}

/// Counts per key in fixed windows, each starting at its key's first count.
/// Past `prune_above` keys, windows that ended are dropped, so a stream of
/// new keys cannot grow it without end.
pub struct Windows<K> {
    window: Duration,
    prune_above: usize,
    counts: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq> Windows<K> {
    pub fn new(window: Duration, prune_above: usize) -> Self {
        Windows {
            window,
            prune_above,
            counts: HashMap::new(),
        }
    }

    /// Counts one for `key`; false (and nothing counted) when `limit` are
    /// counted in its current window already.
    pub fn take(&mut self, key: K, limit: u32) -> bool {
        let now = Instant::now();
        if self.counts.len() > self.prune_above {
            let window = self.window;
            self.counts
                .retain(|_, (since, _)| now.duration_since(*since) < window);
        }
        let (since, n) = self.counts.entry(key).or_insert((now, 0));
        if now.duration_since(*since) >= self.window {
            *since = now;
            *n = 0;
        }
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives one count back to `key`'s window.
    pub fn give_back(&mut self, key: &K) {
        if let Some((_, n)) = self.counts.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_every_hold_is_released() {
        let mut f = InFlight::default();
        f.hold(&"bob");
        f.hold(&"bob");
        f.hold(&"eve");
        assert_eq!((f.count(&"bob"), f.keys()), (2, 2));
        f.release(&"bob");
        f.release(&"eve");
        f.release(&"eve");
        assert_eq!((f.count(&"bob"), f.count(&"eve"), f.keys()), (1, 0, 1));
    }

    #[test]
    fn windows_count_per_key_and_give_back() {
        let mut w = Windows::new(Duration::from_secs(60), 10);
        assert!(w.take("a", 2) && w.take("a", 2));
        assert!(!w.take("a", 2));
        assert!(w.take("b", 2));
        w.give_back(&"a");
        assert!(w.take("a", 2));
        // An ended window starts again.
        let mut short = Windows::new(Duration::ZERO, 10);
        assert!(short.take("a", 1) && short.take("a", 1));
    }
}
