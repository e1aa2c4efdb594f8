//! The bookkeeping of re-reading a room after other processes changed it,
//! shared by the Registry (its directory entry) and the room (its members):
//!
//! - reads may finish out of order: only one started after the last applied
//!   one counts (`generation`);
//! - a change committed here makes the reads in flight stale: they are not
//!   applied, and the room is read again (`superseded`);
//! - while a read is in flight, further requests become one read after it
//!   (a join/leave loop on a big room made every other process read the
//!   whole room twice per change), keeping the change that tells users the
//!   most ([`merge_changes`]).

use super::RoomChange;

#[derive(Debug, Default)]
pub struct Reloads {
    started: u64,
    applied: u64,
    finished: u64,
    /// The change the newest read is for.
    change: Option<RoomChange>,
    /// Asked for while a read was in flight: one more read after it.
    queued: Option<RoomChange>,
}

impl Reloads {
    /// A read is wanted for `change`: the generation to start it under, or
    /// `None` when one is in flight (it is queued behind that one).
    pub fn want(&mut self, change: RoomChange) -> Option<u64> {
        if self.started > self.finished {
            self.queued = Some(merge_changes(self.queued.take(), change));
            return None;
        }
        self.started += 1;
        self.change = Some(change);
        Some(self.started)
    }

    /// The read of `generation` finished: whether to apply what it read,
    /// and the change to read again for, if any was queued meanwhile.
    pub fn finished(&mut self, generation: u64, read_ok: bool) -> (bool, Option<RoomChange>) {
        self.finished += 1;
        let next = self.queued.take();
        let apply = read_ok && generation > self.applied;
        if apply {
            self.applied = generation;
        }
        (apply, next)
    }

    /// A change was committed here: reads in flight read the store before
    /// it and are not applied; the change to read again for, if any.
    pub fn superseded(&mut self) -> Option<RoomChange> {
        if self.started > self.applied {
            self.applied = self.started;
            return Some(self.change.clone().unwrap_or(RoomChange::Updated));
        }
        None
    }
}

/// One change for several coalesced ones: a removal (it tells the removed
/// member's sessions why) or a deletion wins over plain updates.
pub fn merge_changes(queued: Option<RoomChange>, new: RoomChange) -> RoomChange {
    let telling = |c: &RoomChange| matches!(c, RoomChange::Removed { .. } | RoomChange::Deleted);
    match queued {
        Some(q) if telling(&q) && !telling(&new) => q,
        _ => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kicked(user: &str) -> RoomChange {
        RoomChange::Removed {
            user: user.into(),
            reason: "kicked".into(),
        }
    }

    #[test]
    fn changes_during_a_read_make_one_more_read() {
        let mut r = Reloads::default();
        let first = r.want(RoomChange::Joined("bob".into())).unwrap();
        // Three changes while it reads: no read starts now.
        assert_eq!(r.want(kicked("carol")), None);
        assert_eq!(r.want(RoomChange::Updated), None);
        assert_eq!(r.want(RoomChange::Joined("dave".into())), None);
        // The first read applies; one more follows, for the kick (it tells
        // carol's sessions why).
        let (apply, next) = r.finished(first, true);
        assert!(apply);
        assert_eq!(next, Some(kicked("carol")));
        let second = r.want(next.unwrap()).unwrap();
        assert_eq!(second, first + 1);
        assert_eq!(r.finished(second, true), (true, None));
    }

    #[test]
    fn a_local_change_makes_reads_in_flight_stale() {
        let mut r = Reloads::default();
        let first = r.want(RoomChange::Updated).unwrap();
        // This process committed a change while the read was out.
        assert_eq!(r.superseded(), Some(RoomChange::Updated));
        let (apply, next) = r.finished(first, true);
        assert!(!apply, "a read from before the local change is not applied");
        assert_eq!(next, None);
        // Nothing in flight: nothing to supersede.
        assert_eq!(r.superseded(), None);
        // A failed read applies nothing and does not block the next one.
        let g = r.want(RoomChange::Updated).unwrap();
        assert_eq!(r.finished(g, false), (false, None));
        assert!(r.want(RoomChange::Updated).is_some());
    }
}
