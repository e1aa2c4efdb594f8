//! Owner operations on a room: kick, ban, unban, rename, set password,
//! delete. Each is written to the store first and applied after it commits.

use actix::prelude::*;

use super::{internal, RoomActor, RoomResult};
use crate::protocol::{ErrorCode, PlainMsg};
use crate::store::{RoomUpdate, StoreError};

/// An owner operation, already validated for form by the session.
#[derive(Debug, Clone)]
pub enum OwnerAction {
    Kick(String),
    Ban(String),
    Unban(String),
    Rename(String),
    SetPassword(Option<String>),
    Delete,
}

/// What an owner operation changed, for the Registry's directory.
#[derive(Debug, Clone, Default)]
pub struct OwnerOutcome {
    pub removed: Option<String>,
    pub deleted: bool,
    pub renamed: Option<String>,
}

#[derive(Message)]
#[rtype(result = "RoomResult<OwnerOutcome>")]
pub struct OwnerOp {
    pub by: String,
    pub action: OwnerAction,
}

impl RoomActor {
    /// An owner's write the store refused or failed. `NotOwner`: this
    /// process's view of the owner was stale (another process changed it
    /// and its notification was lost or is late), so the room reloads from
    /// the store and converges.
    fn owner_write_failed(
        &mut self,
        e: StoreError,
        ctx: &mut Context<Self>,
    ) -> crate::protocol::Failure {
        if let StoreError::NotOwner = e {
            log::info!(
                "room {}: the store says the owner changed; reloading",
                self.record.room_id
            );
            self.reload(crate::cluster::RoomChange::Updated, ctx);
            return ErrorCode::NotOwner.into();
        }
        internal(e)
    }
}

impl Handler<OwnerOp> for RoomActor {
    type Result = ResponseActFuture<Self, RoomResult<OwnerOutcome>>;

    fn handle(&mut self, msg: OwnerOp, _: &mut Self::Context) -> Self::Result {
        if let Err(f) = self.is_owner(&msg.by) {
            return Box::pin(fut::ready(Err(f)));
        }
        let store = self.store.clone();
        let room_id = self.record.room_id.clone();
        match msg.action {
            OwnerAction::Kick(target) | OwnerAction::Ban(target) if target == msg.by => {
                Box::pin(fut::ready(Err(ErrorCode::InvalidTarget.into())))
            }
            OwnerAction::Kick(target) => {
                if !self.members.contains_key(&target) {
                    return Box::pin(fut::ready(Err(ErrorCode::NoSuchMember.into())));
                }
                let work = store.remove_member(&room_id, &target, false, Some(&msg.by));
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    res.map_err(|e| act.owner_write_failed(e, ctx))?;
                    act.drop_member(&target, "kicked");
                    act.local_change(ctx);
                    Ok(OwnerOutcome {
                        removed: Some(target),
                        ..OwnerOutcome::default()
                    })
                }))
            }
            OwnerAction::Ban(target) => {
                // Recorded before the write, so a join that is in flight now
                // is refused when it finishes (see `Join`).
                let newly = self.bans.insert(target.clone());
                let work = store.remove_member(&room_id, &target, true, Some(&msg.by));
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    if let Err(e) = res {
                        if newly {
                            act.bans.remove(&target);
                        }
                        return Err(act.owner_write_failed(e, ctx));
                    }
                    let was_member = act.members.contains_key(&target);
                    act.drop_member(&target, "banned");
                    act.local_change(ctx);
                    Ok(OwnerOutcome {
                        removed: was_member.then_some(target),
                        ..OwnerOutcome::default()
                    })
                }))
            }
            OwnerAction::Unban(target) => {
                let name = target.clone();
                let work = async move { store.set_ban(&room_id, &name, false).await };
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    res.map_err(internal)?;
                    act.bans.remove(&target);
                    act.local_change(ctx);
                    Ok(OwnerOutcome::default())
                }))
            }
            OwnerAction::Rename(name) => {
                let update = RoomUpdate {
                    name: Some(name.clone()),
                    by: Some(msg.by.clone()),
                    ..RoomUpdate::default()
                };
                let work = async move { store.update_room(&room_id, update).await };
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    match res {
                        Err(StoreError::Conflict(_)) => return Err(ErrorCode::RoomExists.into()),
                        other => other.map_err(|e| act.owner_write_failed(e, ctx))?,
                    }
                    act.local_change(ctx);
                    act.record.name = name.clone();
                    act.broadcast(
                        &PlainMsg::RoomRenamed {
                            room_id: act.record.room_id.clone(),
                            name: name.clone(),
                        },
                        None,
                    );
                    act.publish();
                    Ok(OwnerOutcome {
                        renamed: Some(name),
                        ..OwnerOutcome::default()
                    })
                }))
            }
            OwnerAction::SetPassword(pw) => {
                let hashed = pw.map(|pw| self.hasher.hash(&msg.by, pw));
                let by = msg.by.clone();
                let work = async move {
                    let hash = match hashed {
                        Some(hashed) => Some(hashed.await?),
                        None => None,
                    };
                    let update = RoomUpdate {
                        password_hash: Some(hash.clone()),
                        by: Some(by),
                        ..RoomUpdate::default()
                    };
                    Ok(store.update_room(&room_id, update).await.map(|()| hash))
                };
                Box::pin(work.into_actor(self).map(
                    |res: RoomResult<Result<Option<String>, StoreError>>, act, ctx| {
                        act.record.password_hash =
                            res?.map_err(|e| act.owner_write_failed(e, ctx))?;
                        act.local_change(ctx);
                        act.publish();
                        Ok(OwnerOutcome::default())
                    },
                ))
            }
            OwnerAction::Delete => {
                let work = async move { store.delete_room(&room_id).await };
                Box::pin(work.into_actor(self).map(|res, act, ctx| {
                    res.map_err(internal)?;
                    act.gone(ctx);
                    Ok(OwnerOutcome {
                        deleted: true,
                        ..OwnerOutcome::default()
                    })
                }))
            }
        }
    }
}
