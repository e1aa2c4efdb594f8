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
    /// Reads the committed state and adopts it (see `cluster::reloads`:
    /// the newest read counts, a local change makes reads in flight stale,
    /// and reads are coalesced).
    pub(super) fn reload(&mut self, change: RoomChange, ctx: &mut Context<Self>) {
        let Some(generation) = self.reloads.want(change.clone()) else {
            return;
        };
        let load = self.store.load_room(&self.record.room_id);
        ctx.spawn(load.into_actor(self).map(move |res, act, ctx| {
            let (apply, next) = act.reloads.finished(generation, res.is_ok());
            if let Some(next) = next {
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
            if !apply {
                return;
            }
            if state.record.is_none() {
                act.gone(ctx);
                return;
            }
            let removed = match &change {
                RoomChange::Removed { user, reason } => Some((user.as_str(), reason.as_str())),
                _ => None,
            };
            act.adopt(state, removed, true);
            act.reload_devices(ctx);
            for (username, handle) in std::mem::take(&mut act.waiting_attach) {
                act.attach(&username, handle);
            }
        }));
    }

    /// This room committed a membership change itself: reads that started
    /// before it are stale; read again.
    pub(super) fn local_change(&mut self, ctx: &mut Context<Self>) {
        if let Some(change) = self.reloads.superseded() {
            self.reload(change, ctx);
        }
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
