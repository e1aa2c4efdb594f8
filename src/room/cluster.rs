//! What other processes tell a room (`cluster`): changes they committed to
//! it (read back from the store, numbered so an older read never undoes a
//! newer change) and its members' presence there.

use std::collections::HashSet;

use actix::prelude::*;

use super::RoomActor;
use crate::cluster::RoomChange;
use crate::handle::SessionHandle;

/// Another process committed a change to this room: read the room again,
/// then attach this process's sessions of members who joined there.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload {
    pub change: RoomChange,
    pub attach: Vec<(String, SessionHandle)>,
    /// The members online on other processes now.
    pub elsewhere: HashSet<String>,
}

impl Handler<Reload> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Reload, ctx: &mut Self::Context) {
        self.elsewhere = msg.elsewhere;
        self.waiting_attach.extend(msg.attach);
        self.reload(msg.change, ctx);
    }
}

impl RoomActor {
    /// Reads the committed state and adopts it. Reads may finish out of
    /// order, and one that started before a change this room made itself
    /// would undo it: only the newest read counts, and a local change
    /// (`local_change`) makes the reads in flight stale.
    ///
    /// Coalesced: while a read is in flight, further requests become one
    /// read after it (a join/leave loop on a big room made every other
    /// process read the whole room twice per change).
    pub(super) fn reload(&mut self, change: RoomChange, ctx: &mut Context<Self>) {
        if self.loads_started > self.loads_finished {
            self.reload_queued = Some(merge_changes(self.reload_queued.take(), change));
            return;
        }
        self.loads_started += 1;
        let generation = self.loads_started;
        self.reload_change = Some(change.clone());
        let load = self.store.load_room(&self.record.room_id);
        ctx.spawn(load.into_actor(self).map(move |res, act, ctx| {
            act.loads_finished += 1;
            if let Some(next) = act.reload_queued.take() {
                // Changes came meanwhile: read once more, after this one.
                act.reload(next, ctx);
            }
            let state = match res {
                Ok(state) => state,
                Err(e) => {
                    log::warn!("room {}: reload failed: {e}", act.record.room_id);
                    return;
                }
            };
            if generation <= act.loads_applied {
                return;
            }
            act.loads_applied = generation;
            if state.record.is_none() {
                act.gone(ctx);
                return;
            }
            let removed = match &change {
                RoomChange::Removed { user, reason } => Some((user.as_str(), reason.as_str())),
                _ => None,
            };
            act.adopt(state, removed, true);
            for (username, handle) in std::mem::take(&mut act.waiting_attach) {
                act.attach(&username, handle);
            }
        }));
    }

    /// This room committed a membership change itself: reads that started
    /// before it are stale; read again.
    pub(super) fn local_change(&mut self, ctx: &mut Context<Self>) {
        if self.loads_started > self.loads_applied {
            self.loads_applied = self.loads_started;
            let change = self.reload_change.clone().unwrap_or(RoomChange::Updated);
            self.reload(change, ctx);
        }
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

/// A member went online or offline on the other processes (all of them).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Elsewhere {
    pub username: String,
    pub online: bool,
}

impl Handler<Elsewhere> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Elsewhere, _: &mut Self::Context) {
        let changed = if msg.online {
            self.elsewhere.insert(msg.username.clone())
        } else {
            self.elsewhere.remove(&msg.username)
        };
        let here = self
            .members
            .get(&msg.username)
            .is_some_and(|m| !m.sessions.is_empty());
        if changed && !here && self.members.contains_key(&msg.username) {
            self.presence(&msg.username, msg.online);
        }
    }
}
