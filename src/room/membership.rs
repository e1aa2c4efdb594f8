//! Joining and leaving a room: seats held by joins in flight, password
//! attempts counted by the server's one `Hasher` (per user and address),
//! bans re-checked after every await, and leaves whose outcome (who is
//! left, who owns the room) the store decides when the write commits.

use std::sync::Arc;

use actix::prelude::*;

use super::{internal, MemberState, RoomActor, RoomResult};
use crate::handle::SessionHandle;
use crate::protocol::Member;
use crate::protocol::{DirectorySummary, ErrorCode, Failure, PlainMsg};
use crate::store::StoreError;
use crate::user::User;
use crate::util::now_ms;

pub struct Joined {
    pub room: DirectorySummary,
    pub members: Vec<Member>,
    /// The group's epoch and whether the joining device has a leaf.
    pub group: Option<(u64, bool)>,
    /// False when the user already was a member.
    pub added: bool,
}

#[derive(Message)]
#[rtype(result = "RoomResult<Joined>")]
pub struct Join {
    pub user: Arc<User>,
    pub sessions: Vec<SessionHandle>,
    pub room_count: usize,
    pub password: Option<String>,
    /// The client's address, for the password attempt budget.
    pub ip: std::net::IpAddr,
    /// The connection's device (for `in_group`).
    pub device: Vec<u8>,
}

impl RoomActor {
    fn joined(&self, username: &str, device: &[u8], added: bool) -> Joined {
        Joined {
            room: self.summary(),
            members: self.member_objects(),
            added,
            group: self
                .group
                .as_ref()
                .map(|g| (g.epoch(), g.in_group(username, device))),
        }
    }

    fn attach_all(&mut self, username: &str, sessions: Vec<SessionHandle>) {
        for handle in sessions {
            self.attach(username, handle);
        }
    }
}

impl Handler<Join> for RoomActor {
    type Result = ResponseActFuture<Self, RoomResult<Joined>>;

    /// Checks, then (for a password room) verifies the password off the
    /// actor, re-checks the ban, stores the membership and adds the member.
    /// A join in flight holds a seat (`joining`), so racing joins cannot
    /// overfill the room; a ban is recorded in `bans` before its write, so a
    /// join that finishes after it is refused.
    fn handle(&mut self, msg: Join, _: &mut Self::Context) -> Self::Result {
        let username = msg.user.username.clone();
        if self.members.contains_key(&username) {
            self.attach_all(&username, msg.sessions);
            return Box::pin(fut::ready(Ok(self.joined(&username, &msg.device, false))));
        }
        let refuse = |f: Failure| -> Self::Result { Box::pin(fut::ready(Err(f))) };
        if self.bans.contains(&username) {
            return refuse(ErrorCode::Banned.into());
        }
        let seats = self.members.len() + self.joining.keys()
            - usize::from(self.joining.count(&username) > 0);
        if seats >= self.settings.limits.max_members_per_room {
            return refuse(ErrorCode::RoomFull.into());
        }
        if msg.room_count >= self.settings.limits.max_rooms_per_user {
            return refuse(ErrorCode::TooManyRooms.into());
        }
        let hash = self.record.password_hash.clone();
        // Counted against the user's and the address's budgets before the
        // hash runs, so racing attempts cannot exceed them.
        let attempt = match hash
            .as_ref()
            .map(|_| self.hasher.attempt(&username, msg.ip))
        {
            Some(Err(f)) => return refuse(f),
            Some(Ok(a)) => Some(a),
            None => None,
        };
        self.joining.hold(&username);
        let given = msg.password.unwrap_or_default();
        let check = hash.map(|hash| self.hasher.verify(&username, hash, given));
        let verify = async move {
            match check {
                Some(check) => check.await,
                None => Ok(true),
            }
        };
        let joined_at = now_ms();
        let name = username.clone();
        let (user, sessions, device) = (msg.user, msg.sessions, msg.device);
        let stored = verify.into_actor(self).then(move |checked, act, _| {
            let admitted = match checked {
                Err(busy) => {
                    // Not checked at all (the hashing queue was full).
                    if let Some(a) = attempt {
                        a.refund();
                    }
                    Err(busy)
                }
                Ok(false) => Err(Failure::from(ErrorCode::WrongPassword)),
                Ok(true) => {
                    if let Some(a) = attempt {
                        a.refund();
                    }
                    act.admit(&name)
                }
            };
            // Submitted now, in this actor turn, so the store orders it
            // before any ban this room submits later.
            let write =
                admitted.map(|()| act.store.add_member(&act.record.room_id, &name, joined_at));
            // The member's devices may hold leaves from the moment the
            // join is answered, so they are read before it is.
            let devices = act.group.is_some().then(|| act.store.list_devices(&name));
            async move {
                match write?.await {
                    // Banned on another process, which this one has not heard of yet.
                    Err(StoreError::Banned) => Err(Failure::from(ErrorCode::Banned)),
                    // Filled by joins on other processes.
                    Err(StoreError::RoomFull) => Err(Failure::from(ErrorCode::RoomFull)),
                    // Rooms joined or created through other processes.
                    Err(StoreError::TooManyRooms) => Err(Failure::from(ErrorCode::TooManyRooms)),
                    other => other.map_err(internal),
                }?;
                match devices {
                    Some(read) => read.await.map(Some).map_err(internal),
                    None => Ok(None),
                }
            }
            .into_actor(act)
        });
        Box::pin(stored.map(move |res, act, ctx| {
            act.release_seat(&username);
            if matches!(&res, Err(f) if f.code == ErrorCode::Banned) {
                act.bans.insert(username.clone());
            }
            let devices = res?;
            if act.bans.contains(&username) {
                // Banned while the membership was being written: the ban's
                // own write, queued after ours, removes it again.
                return Err(ErrorCode::Banned.into());
            }
            if act.members.contains_key(&username) {
                act.attach_all(&username, sessions);
                return Ok(act.joined(&username, &device, false));
            }
            // The joiner's sessions are attached as it is added: `member_joined`
            // already says whether it is online, so no presence event follows.
            let member = user.member(
                !sessions.is_empty() || act.elsewhere.contains(&username),
                joined_at,
            );
            act.members.insert(
                username.clone(),
                MemberState {
                    user,
                    joined_at,
                    sessions: sessions.into_iter().map(|h| (h.id, h)).collect(),
                },
            );
            let frame = act.member_joined_frame(member);
            act.broadcast_frame(&frame, Some(&username));
            act.add_member_devices(devices.unwrap_or_default());
            act.local_change(ctx);
            Ok(act.joined(&username, &device, true))
        }))
    }
}

impl RoomActor {
    /// After a right (or no) password: refused if banned meanwhile.
    fn admit(&mut self, username: &str) -> RoomResult<()> {
        if self.bans.contains(username) {
            // Banned while the password was being checked.
            return Err(ErrorCode::Banned.into());
        }
        Ok(())
    }

    fn release_seat(&mut self, username: &str) {
        self.joining.release(&username.to_owned());
    }
}

pub struct Left {
    /// The room was deleted because its last member left.
    pub deleted: bool,
}

#[derive(Message)]
#[rtype(result = "RoomResult<Left>")]
pub struct Leave {
    pub username: String,
}

impl Handler<Leave> for RoomActor {
    type Result = ResponseActFuture<Self, RoomResult<Left>>;

    /// The store decides, in the removal's own transaction, who is left and
    /// who owns the room: two members leaving at once cannot both think the
    /// other stays, and the heir is a member when the write commits.
    fn handle(&mut self, msg: Leave, _: &mut Self::Context) -> Self::Result {
        if !self.members.contains_key(&msg.username) {
            return Box::pin(fut::ready(Err(ErrorCode::NotMember.into())));
        }
        let write = self
            .store
            .remove_member(&self.record.room_id, &msg.username, false, None);
        let username = msg.username;
        Box::pin(write.into_actor(self).map(move |res, act, ctx| {
            let removed = res.map_err(internal)?;
            if removed.remaining == 0 {
                // The last member left: the store deleted the room with it.
                act.members.clear();
                ctx.stop();
                return Ok(Left { deleted: true });
            }
            act.drop_member(&username, "left");
            act.local_change(ctx);
            act.set_owner(removed.owner);
            Ok(Left { deleted: false })
        }))
    }
}

impl RoomActor {
    /// Takes the owner a committed write reports; a change is announced.
    pub(super) fn set_owner(&mut self, owner: Option<String>) {
        let Some(owner) = owner.filter(|o| *o != self.record.owner) else {
            return;
        };
        self.record.owner = owner.clone();
        self.broadcast(
            &PlainMsg::OwnerChanged {
                room_id: self.record.room_id.clone(),
                owner,
            },
            None,
        );
        self.publish();
    }
}

#[derive(Message)]
#[rtype(result = "RoomResult<Vec<Member>>")]
pub struct GetMembers {
    pub username: String,
}

impl Handler<GetMembers> for RoomActor {
    type Result = RoomResult<Vec<Member>>;
    fn handle(&mut self, msg: GetMembers, _: &mut Self::Context) -> Self::Result {
        if !self.members.contains_key(&msg.username) {
            return Err(ErrorCode::NotMember.into());
        }
        Ok(self.member_objects())
    }
}
