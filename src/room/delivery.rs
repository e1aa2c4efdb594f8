//! A room's delivery order: every stored message is fanned out to this
//! process's sessions once, in seq order, whether this room stored it or
//! another process did (`cluster`). Messages wait in `ready` until the seq
//! before them is delivered; a gap is read from the store.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use super::RoomActor;
use crate::cluster::RoomFeed;
use crate::metrics;
use crate::protocol::MessageFrame;
use crate::store::{NewMessage, RoomMessage};

/// How long a seq gap may wait for the notification that fills it before
/// the room reads the database.
const GAP_WAIT: Duration = Duration::from_millis(25);
/// Most messages one database read fills in.
const FILL_BATCH: usize = 256;

impl RoomActor {
    /// A stored message, from this room's own append or from another
    /// process: kept until every seq before it is delivered.
    pub(super) fn offer(&mut self, seq: u64, ts: u64, msg: Arc<NewMessage>) {
        if seq > self.delivered {
            self.ready.entry(seq).or_insert((msg, ts));
        }
    }

    /// Delivers the messages that are next in seq order; a gap waits
    /// `GAP_WAIT` for its notification, then is read from the database.
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        let before = self.delivered;
        while let Some(entry) = self.ready.first_entry() {
            if *entry.key() <= self.delivered {
                entry.remove();
                continue;
            }
            if *entry.key() != self.delivered + 1 {
                break;
            }
            let (seq, (msg, ts)) = entry.remove_entry();
            self.fan_out(&msg, seq, ts);
            self.delivered = seq;
        }
        if self.delivered > before {
            self.record.last_seq = self.record.last_seq.max(self.delivered);
            self.publish();
        }
        if !self.ready.is_empty() && !self.filling {
            self.filling = true;
            ctx.run_later(GAP_WAIT, |act, ctx| act.fill(ctx, false));
        }
    }

    /// Reads the messages after `delivered` from the database: for a seq gap
    /// (`catch_up` false: only up to the first waiting message) or after a
    /// (re)subscription (`catch_up`: everything there is).
    fn fill(&mut self, ctx: &mut Context<Self>, catch_up: bool) {
        let gap_end = self.ready.keys().next().copied();
        if !catch_up && gap_end.is_none_or(|first| first == self.delivered + 1) {
            self.filling = false;
            self.drain(ctx);
            return;
        }
        self.filling = true;
        metrics::inc(&metrics::CLUSTER_GAP_FILLS);
        let from = self.delivered;
        let read = self
            .store
            .messages_after(&self.record.room_id, from, FILL_BATCH);
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            act.filling = false;
            let messages: Vec<RoomMessage> = match res {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("room {}: gap fill failed: {e}", act.record.room_id);
                    act.filling = true;
                    ctx.run_later(Duration::from_millis(500), move |act, ctx| {
                        act.fill(ctx, catch_up)
                    });
                    return;
                }
            };
            let full = messages.len() == FILL_BATCH;
            for m in messages {
                act.offer(m.seq, m.ts, Arc::new(m.message));
            }
            act.drain(ctx);
            // Committed seqs are gapless (the room row lock orders commits),
            // so what the read did not find below a message that was already
            // waiting when it started was purged: skip it. (Not below one
            // that arrived during the read: what lies between may have been
            // committed after the read's snapshot.)
            if let (false, Some(end)) = (full, gap_end) {
                if end > act.delivered + 1 {
                    log::warn!(
                        "room {}: seqs {}..{} are not stored (purged); skipped",
                        act.record.room_id,
                        act.delivered + 1,
                        end - 1
                    );
                    act.delivered = end - 1;
                }
            }
            act.drain(ctx);
            if full && catch_up {
                act.fill(ctx, true);
            }
        }));
    }

    fn fan_out(&mut self, msg: &NewMessage, seq: u64, ts: u64) {
        let frame = MessageFrame::new(
            &msg.room_id,
            seq,
            ts,
            &msg.msg_id,
            &msg.sender,
            &msg.nonce,
            &msg.key_commitment,
            &msg.ciphertext,
            &msg.signature,
        );
        let mut deliveries = 0u64;
        for (name, key) in &msg.keys {
            if self.members.get(name).is_none_or(|m| m.sessions.is_empty()) {
                continue;
            }
            deliveries += self.push_to(name, &Bytes::from(frame.for_recipient(key)));
        }
        metrics::add(&metrics::MESSAGES_DELIVERED, deliveries);
        self.flush_offline();
    }
}

impl Handler<RoomFeed> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomFeed, ctx: &mut Self::Context) {
        match msg {
            RoomFeed::Message(m) => {
                let m = *m;
                self.offer(m.seq, m.ts, Arc::new(m.message));
                self.drain(ctx);
            }
            RoomFeed::Subscribed => self.fill(ctx, true),
        }
    }
}
