//! What waits to be published to Redis, and its bounds. Messages are
//! bounded in bytes (a message can be 60 KB and more; receivers read a
//! dropped one from the database when they see the seq gap). Control
//! notifications (joins, kicks, owner changes, presence) are small and must
//! not be lost while Redis is away, or another process would keep a stale
//! view: they are kept and published again until Redis takes them, up to a
//! count bound that only an outage of many minutes under churn reaches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One publish: a channel and its payload.
pub struct Outgoing {
    pub channel: String,
    pub payload: Vec<u8>,
    /// A control notification (retried), else a message (dropped on failure).
    pub control: bool,
}

impl Outgoing {
    fn bytes(&self) -> usize {
        self.channel.len() + self.payload.len()
    }
}

/// Most bytes of messages waiting.
pub const MESSAGE_BYTES: usize = 16 << 20;
/// Most control notifications waiting.
pub const CONTROLS: usize = 65_536;

/// The queue's accounting, shared by the handle (which admits) and the
/// publisher (which releases once an item is published or given up).
#[derive(Default)]
pub struct Outbox {
    message_bytes: AtomicUsize,
    controls: AtomicUsize,
}

impl Outbox {
    pub fn new() -> Arc<Outbox> {
        Arc::default()
    }

    /// Takes room for `o`; false (drop it) when its bound is reached.
    pub fn admit(&self, o: &Outgoing) -> bool {
        let (counter, add, max) = self.account(o);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + add <= max).then_some(n + add)
            })
            .is_ok()
    }

    /// Gives back what `o` held.
    pub fn release(&self, o: &Outgoing) {
        let (counter, sub, _) = self.account(o);
        counter.fetch_sub(sub, Ordering::AcqRel);
    }

    fn account(&self, o: &Outgoing) -> (&AtomicUsize, usize, usize) {
        if o.control {
            (&self.controls, 1, CONTROLS)
        } else {
            (&self.message_bytes, o.bytes(), MESSAGE_BYTES)
        }
    }

    /// Bytes of messages waiting.
    pub fn message_bytes(&self) -> usize {
        self.message_bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kb: usize) -> Outgoing {
        Outgoing {
            channel: "chat:room:r".into(),
            payload: vec![0; kb * 1024],
            control: false,
        }
    }

    /// Issue 20 item 10: 1,500 messages of 60 KB queued while Redis was
    /// paused (65,536 were allowed by count) took 156 MiB.
    #[test]
    fn messages_are_bounded_in_bytes_and_controls_apart() {
        let outbox = Outbox::new();
        let admitted: Vec<Outgoing> = (0..1500)
            .map(|_| message(60))
            .filter(|m| outbox.admit(m))
            .collect();
        assert!(outbox.message_bytes() <= MESSAGE_BYTES);
        assert!(admitted.len() < 300, "{}", admitted.len());
        // Control notifications still get in while messages are full.
        let ctl = Outgoing {
            channel: "chat:ctl".into(),
            payload: vec![1; 100],
            control: true,
        };
        assert!(outbox.admit(&ctl));
        // Publishing gives the room back.
        for m in &admitted {
            outbox.release(m);
        }
        assert_eq!(outbox.message_bytes(), 0);
        assert!(outbox.admit(&message(60)));
    }
}
