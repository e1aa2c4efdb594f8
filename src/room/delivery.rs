//! A room's delivery order: every stored message is fanned out to this
//! process's sessions once, in seq order, whether this room stored it or
//! another process did (`cluster`). Messages wait until the seq before them
//! is delivered; a gap is read from the store.
//!
//! [`Delivery`] is that order as a plain state machine (no actor, no store:
//! unit-tested below, gap fills and purge skips included); the `RoomActor`
//! half at the end fans out what it releases and runs the reads it asks for.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::RoomActor;
use crate::cluster::RoomFeed;
use crate::metrics;
use crate::store::{NewEntry, StoredEntry};

/// How long a seq gap may wait for the notification that fills it before
/// the room reads the database.
const GAP_WAIT: Duration = Duration::from_millis(25);
/// Most messages one database read fills in.
const FILL_BATCH: usize = 256;

/// What a room's log holds: an entry (a commit or an MLS message, the same
/// bytes for everyone).
pub(super) type Logged = Arc<NewEntry>;

/// A stored entry released for fan-out.
#[derive(Debug, Clone)]
pub(super) struct Ready {
    pub seq: u64,
    pub ts: u64,
    pub item: Logged,
}

impl Ready {
    fn entry(room_id: &str, e: StoredEntry) -> Ready {
        Ready {
            seq: e.seq,
            ts: e.ts,
            item: Arc::new(NewEntry {
                room_id: room_id.to_owned(),
                entry: e.entry,
                commit: None,
            }),
        }
    }
}

/// A read of the store that [`Delivery`] asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fill {
    /// Read the messages after this seq.
    pub from: u64,
    /// The first message that was waiting when the read started (`None`
    /// for a catch-up with nothing waiting).
    gap_end: Option<u64>,
    /// After a (re)subscription: read everything there is, not just the gap.
    pub catch_up: bool,
}

/// What a fill's answer released.
#[derive(Debug, Default)]
pub(super) struct Filled {
    /// Messages now next in seq order, in order.
    pub deliver: Vec<Ready>,
    /// Seq ranges the store no longer has (purged), skipped: first and last.
    pub skipped: Vec<(u64, u64)>,
    /// A catch-up read a full batch: read on.
    pub more: bool,
}

/// The delivery order of one room on this process.
#[derive(Debug)]
pub(super) struct Delivery {
    /// The highest seq delivered: every message is fanned out once, in
    /// seq order, whichever process stored it.
    delivered: u64,
    /// Stored messages above `delivered + 1`, waiting for the ones before.
    waiting: BTreeMap<u64, Ready>,
    /// A gap fill is scheduled or running.
    filling: bool,
}

impl Delivery {
    /// Live delivery starting after `delivered` (what is stored now).
    pub(super) fn new(delivered: u64) -> Self {
        Delivery {
            delivered,
            waiting: BTreeMap::new(),
            filling: false,
        }
    }

    #[cfg(test)]
    fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Restarts after `seq` (the room was loaded again from the store).
    pub(super) fn restart_at(&mut self, seq: u64) {
        self.delivered = seq;
        self.waiting.retain(|&s, _| s > seq);
    }

    /// A stored message, from this room's own append or from another
    /// process: kept until every seq before it is delivered. Copies and
    /// what was delivered already are ignored.
    pub(super) fn offer(&mut self, ready: Ready) {
        if ready.seq > self.delivered {
            self.waiting.entry(ready.seq).or_insert(ready);
        }
    }

    /// Releases the messages that are next in seq order.
    pub(super) fn take_next(&mut self) -> Vec<Ready> {
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() != self.delivered + 1 {
                break;
            }
            let ready = entry.remove();
            self.delivered = ready.seq;
            out.push(ready);
        }
        out
    }

    /// True when messages wait behind a gap and no fill is planned yet; the
    /// fill then counts as planned (the caller runs it after `GAP_WAIT`).
    pub(super) fn plan_gap_fill(&mut self) -> bool {
        if self.waiting.is_empty() || self.filling {
            return false;
        }
        self.filling = true;
        true
    }

    /// Starts a store read: for a gap (`catch_up` false: `None` when the
    /// gap has filled meanwhile) or after a (re)subscription (`catch_up`:
    /// everything after `delivered`).
    pub(super) fn start_fill(&mut self, catch_up: bool) -> Option<Fill> {
        let gap_end = self.waiting.keys().next().copied();
        if !catch_up && gap_end.is_none_or(|first| first == self.delivered + 1) {
            self.filling = false;
            return None;
        }
        self.filling = true;
        Some(Fill {
            from: self.delivered,
            gap_end,
            catch_up,
        })
    }

    /// The read failed; it is retried, so the fill stays planned.
    pub(super) fn fill_failed(&mut self) {
        self.filling = true;
    }

    /// The read's answer (`stored` in seq order, at most `FILL_BATCH`).
    pub(super) fn filled(&mut self, fill: Fill, stored: Vec<Ready>) -> Filled {
        self.filling = false;
        let full = stored.len() == FILL_BATCH;
        for r in stored {
            self.offer(r);
        }
        let mut out = Filled {
            deliver: self.take_next(),
            skipped: Vec::new(),
            more: full && fill.catch_up,
        };
        // Committed seqs are gapless (the room row lock orders commits), so
        // what the read did not find below a message that was already waiting
        // when it started was purged: skip it, and deliver what the read did
        // find above it. (Not below one that arrived during the read: what
        // lies between may have been committed after the read's snapshot.)
        if let (false, Some(end)) = (full, fill.gap_end) {
            while let Some(&next) = self.waiting.keys().next().filter(|&&s| s <= end) {
                out.skipped.push((self.delivered + 1, next - 1));
                self.delivered = next - 1;
                out.deliver.extend(self.take_next());
            }
        }
        out
    }
}

impl RoomActor {
    /// Offers a stored message or entry to the delivery order (see
    /// [`Delivery::offer`]).
    pub(super) fn offer(&mut self, seq: u64, ts: u64, item: Logged) {
        self.delivery.offer(Ready { seq, ts, item });
    }

    /// Delivers the messages that are next in seq order; a gap waits
    /// `GAP_WAIT` for its notification, then is read from the database.
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        let next = self.delivery.take_next();
        self.deliver(next, ctx);
    }

    fn deliver(&mut self, released: Vec<Ready>, ctx: &mut Context<Self>) {
        if let Some(last) = released.last().map(|r| r.seq) {
            for r in released {
                self.fan_out(&r.item, r.seq, r.ts);
                self.follow_commit(&r.item, ctx);
            }
            self.record.last_seq = self.record.last_seq.max(last);
            // The directory reads this for listings; no message per send.
            self.directory.last_seq.fetch_max(last, Ordering::Relaxed);
        }
        if self.delivery.plan_gap_fill() {
            ctx.run_later(GAP_WAIT, |act, ctx| act.fill(ctx, false));
        }
    }

    /// Runs the store read [`Delivery::start_fill`] asks for.
    fn fill(&mut self, ctx: &mut Context<Self>, catch_up: bool) {
        let Some(fill) = self.delivery.start_fill(catch_up) else {
            self.drain(ctx);
            return;
        };
        metrics::inc(&metrics::CLUSTER_GAP_FILLS);
        let room_id = self.record.room_id.clone();
        let read = self.store.entries_after(&room_id, fill.from, FILL_BATCH);
        let read = async move {
            let entries = read.await?;
            Ok::<_, crate::store::StoreError>(
                entries
                    .into_iter()
                    .map(|e| Ready::entry(&room_id, e))
                    .collect::<Vec<_>>(),
            )
        };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            let messages = match res {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("room {}: gap fill failed: {e}", act.record.room_id);
                    act.delivery.fill_failed();
                    ctx.run_later(Duration::from_millis(500), move |act, ctx| {
                        act.fill(ctx, catch_up)
                    });
                    return;
                }
            };
            let filled = act.delivery.filled(fill, messages);
            for (first, last) in &filled.skipped {
                log::warn!(
                    "room {}: seqs {first}..{} are not stored (purged); skipped",
                    act.record.room_id,
                    last + 1
                );
            }
            act.deliver(filled.deliver, ctx);
            if filled.more {
                act.fill(ctx, true);
            }
        }));
    }

    /// An entry: one frame, encoded once, to every connection of every
    /// member (the sender's too).
    fn fan_out(&mut self, e: &NewEntry, seq: u64, ts: u64) {
        let frame = crate::protocol::Entry::new(&e.room_id, seq, ts, &e.entry).event();
        let online: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.sessions.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        let mut deliveries = 0u64;
        for name in online {
            deliveries += self.push_to(&name, &frame);
        }
        metrics::add(&metrics::MESSAGES_DELIVERED, deliveries);
        self.flush_offline();
    }
}

impl Handler<RoomFeed> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomFeed, ctx: &mut Self::Context) {
        match msg {
            RoomFeed::Entry(e) => {
                let ready = Ready::entry(&self.record.room_id, *e);
                self.delivery.offer(ready);
                self.drain(ctx);
            }
            RoomFeed::Subscribed => self.fill(ctx, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Logged {
        Arc::new(NewEntry {
            room_id: "r".into(),
            entry: crate::message::LogEntry {
                kind: crate::message::EntryKind::Message,
                sender: "alice".into(),
                device_id: vec![1; 16],
                epoch: 1,
                data: seq.to_be_bytes().to_vec(),
                msg_id: Some(seq.to_be_bytes().to_vec()),
                group_info: None,
            },
            commit: None,
        })
    }

    /// Offers `seq` as a stored message.
    fn offer(d: &mut Delivery, seq: u64) {
        d.offer(Ready {
            seq,
            ts: 0,
            item: msg(seq),
        });
    }

    fn stored(seqs: impl IntoIterator<Item = u64>) -> Vec<Ready> {
        seqs.into_iter()
            .map(|seq| Ready {
                seq,
                ts: seq * 10,
                item: msg(seq),
            })
            .collect()
    }

    fn seqs(released: &[Ready]) -> Vec<u64> {
        released.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn messages_go_out_once_in_seq_order() {
        let mut d = Delivery::new(10);
        offer(&mut d, 12);
        assert!(d.take_next().is_empty(), "12 waits for 11");
        offer(&mut d, 11);
        offer(&mut d, 11);
        offer(&mut d, 9);
        assert_eq!(seqs(&d.take_next()), [11, 12]);
        assert_eq!(d.delivered(), 12);
        offer(&mut d, 12);
        assert!(d.take_next().is_empty(), "a copy of a delivered seq");
        assert!(!d.plan_gap_fill(), "nothing waits");
    }

    #[test]
    fn a_gap_is_filled_from_the_store_once() {
        let mut d = Delivery::new(0);
        offer(&mut d, 4);
        assert!(d.take_next().is_empty());
        assert!(d.plan_gap_fill());
        assert!(!d.plan_gap_fill(), "one fill at a time");
        let fill = d.start_fill(false).expect("1..3 missing");
        assert_eq!(fill.from, 0);
        // 5 arrives while the read runs.
        offer(&mut d, 5);
        let filled = d.filled(fill, stored(1..=4));
        assert_eq!(seqs(&filled.deliver), [1, 2, 3, 4, 5]);
        assert_eq!((filled.skipped, filled.more), (vec![], false));
        assert_eq!(d.delivered(), 5);
    }

    #[test]
    fn a_gap_that_filled_meanwhile_needs_no_read() {
        let mut d = Delivery::new(0);
        offer(&mut d, 2);
        assert!(d.plan_gap_fill());
        offer(&mut d, 1);
        assert_eq!(d.start_fill(false), None);
        assert_eq!(seqs(&d.take_next()), [1, 2]);
        assert!(!d.plan_gap_fill());
    }

    #[test]
    fn purged_seqs_below_a_waiting_message_are_skipped() {
        let mut d = Delivery::new(0);
        offer(&mut d, 8);
        assert!(d.plan_gap_fill());
        let fill = d.start_fill(false).unwrap();
        // 1..=4 purged, 5..=6 still stored, 7 purged too: what is still
        // stored goes out (the first version of this skip dropped it).
        let filled = d.filled(fill, stored(5..=6));
        assert_eq!(seqs(&filled.deliver), [5, 6, 8]);
        assert_eq!(filled.skipped, [(1, 4), (7, 7)]);
        assert_eq!(d.delivered(), 8);
    }

    #[test]
    fn nothing_is_skipped_below_a_message_that_came_during_the_read() {
        let mut d = Delivery::new(0);
        let fill = d.start_fill(true).expect("a catch-up always reads");
        offer(&mut d, 3);
        let filled = d.filled(fill, stored(1..=1));
        assert_eq!(seqs(&filled.deliver), [1]);
        assert_eq!(filled.skipped, [], "2 may be committed after the read");
        assert!(d.plan_gap_fill(), "3 waits for 2: read again");
    }

    #[test]
    fn a_catch_up_of_a_full_batch_reads_on() {
        let mut d = Delivery::new(0);
        let fill = d.start_fill(true).unwrap();
        let filled = d.filled(fill, stored(1..=FILL_BATCH as u64));
        assert_eq!(filled.deliver.len(), FILL_BATCH);
        assert!(filled.more);
        let next = d.start_fill(true).unwrap();
        assert_eq!(next.from, FILL_BATCH as u64);
    }

    #[test]
    fn a_failed_read_stays_planned_and_a_reload_restarts_the_order() {
        let mut d = Delivery::new(0);
        offer(&mut d, 3);
        assert!(d.plan_gap_fill());
        d.start_fill(false).unwrap();
        d.fill_failed();
        assert!(!d.plan_gap_fill(), "the retry is scheduled already");
        d.restart_at(5);
        offer(&mut d, 6);
        assert_eq!(seqs(&d.take_next()), [6]);
    }
}
