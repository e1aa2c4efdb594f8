//! Accounts and connections: registration, the user lookup behind a login
//! challenge, and sessions coming online (attached to their rooms, counted
//! against `max_connections_per_user`) and going offline.

use std::sync::Arc;

use actix::prelude::*;

use super::{failed, internal, Registry, RegistryResult};
use crate::handle::{SessionHandle, SessionId};
use crate::identity::IdentityKey;
use crate::protocol::{DirectorySummary, ErrorCode, Failure};
use crate::room::{self, RoomActor};
use crate::store::{StoreError, UserRecord};
use crate::user::User;
use crate::util::now_ms;

#[derive(Message)]
#[rtype(result = "RegistryResult<()>")]
pub struct Register {
    pub username: String,
    pub identity: IdentityKey,
}

impl Handler<Register> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<()>>;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        if self.users.contains_key(&msg.username) {
            return failed(ErrorCode::UsernameTaken);
        }
        let record = UserRecord {
            username: msg.username.clone(),
            sign_key: msg.identity.der().to_vec(),
            enc_key: Vec::new(),
            created_at: now_ms(),
        };
        let user = Arc::new(User {
            username: msg.username,
            identity: msg.identity,
            created_at: record.created_at,
        });
        let create = self.store.create_user(record);
        Box::pin(create.into_actor(self).map(move |res, act, _| match res {
            Ok(()) => {
                log::info!("registered {}", user.username);
                act.cache_user(user);
                Ok(())
            }
            Err(StoreError::Conflict(_)) => Err(ErrorCode::UsernameTaken.into()),
            Err(e) => Err(internal(e)),
        }))
    }
}

/// Finds a user (cache, then store) for a login challenge.
#[derive(Message)]
#[rtype(result = "RegistryResult<Arc<User>>")]
pub struct LookupUser {
    pub username: String,
}

impl Handler<LookupUser> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<Arc<User>>>;

    fn handle(&mut self, msg: LookupUser, _: &mut Self::Context) -> Self::Result {
        if let Some(user) = self.users.get(&msg.username) {
            return Box::pin(fut::ready(Ok(user.clone())));
        }
        let get = self.store.get_user(&msg.username);
        Box::pin(get.into_actor(self).map(|res, act, _| {
            let record = res
                .map_err(internal)?
                .ok_or(Failure::from(ErrorCode::UnknownUser))?;
            let user = User::from_record(&record).map_err(internal)?;
            Ok(act.cache_user(user))
        }))
    }
}

/// A session proved its identity: record it, attach it to the user's rooms.
/// Refused (`rate_limited`) when the user already has
/// `limits.max_connections_per_user` sessions.
#[derive(Message)]
#[rtype(result = "RegistryResult<OnlineInfo>")]
pub struct Online {
    pub username: String,
    pub handle: SessionHandle,
}

pub struct OnlineInfo {
    pub rooms: Vec<DirectorySummary>,
    pub addrs: Vec<(String, Addr<RoomActor>)>,
}

impl Handler<Online> for Registry {
    type Result = RegistryResult<OnlineInfo>;

    fn handle(&mut self, msg: Online, ctx: &mut Self::Context) -> Self::Result {
        let elsewhere = self.sessions_elsewhere(&msg.username);
        let sessions = self.online.entry(msg.username.clone()).or_default();
        // Counted over every process (theirs as last told).
        if sessions.len() + elsewhere >= self.settings.limits.max_connections_per_user {
            log::warn!(
                "{} refused a connection: {} already open here, {elsewhere} elsewhere",
                msg.username,
                sessions.len()
            );
            return Err(Failure::new(
                ErrorCode::RateLimited,
                "too many connections for this user; close one first",
            ));
        }
        let first = sessions.is_empty();
        sessions.insert(msg.handle.id, msg.handle.clone());
        let open = sessions.len();
        self.local_presence(&msg.username, open, first);
        let room_ids: Vec<String> = self.dir.rooms_of(&msg.username).cloned().collect();
        let mut addrs = Vec::with_capacity(room_ids.len());
        for room_id in room_ids {
            if let Some(addr) = self.room_addr(&room_id, ctx.address()) {
                addr.do_send(room::Attach {
                    username: msg.username.clone(),
                    handle: msg.handle.clone(),
                });
                addrs.push((room_id, addr));
            }
        }
        let mut rooms: Vec<DirectorySummary> = addrs
            .iter()
            .filter_map(|(id, _)| self.dir.rooms.get(id).map(|e| self.summary(e)))
            .collect();
        rooms.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(OnlineInfo { rooms, addrs })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Offline {
    pub username: String,
    pub session: SessionId,
}

impl Handler<Offline> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Offline, _: &mut Self::Context) {
        if let Some(sessions) = self.online.get_mut(&msg.username) {
            let had = sessions.remove(&msg.session).is_some();
            let open = sessions.len();
            if open == 0 {
                self.online.remove(&msg.username);
            }
            if had {
                self.local_presence(&msg.username, open, open == 0);
            }
        }
        for room_id in self.dir.user_rooms.get(&msg.username).into_iter().flatten() {
            if let Some(addr) = self.dir.rooms.get(room_id).and_then(|e| e.addr.as_ref()) {
                addr.do_send(room::Detach {
                    username: msg.username.clone(),
                    session: msg.session,
                });
            }
        }
    }
}
