//! `RoomActor`: one per active room. It owns the room's members (with their
//! keys), the sessions of members that are online, the bans and the owner,
//! checks every `send` against them, hands messages to the store in order and
//! fans them out once they are durable. It also keeps its MLS group
//! (`entries.rs`); its commits and messages take one ordered path, the log.
//!
//! Ordering: sends (and commits) are submitted to the store in arrival
//! order (`submit`) and the store
//! assigns seq in that order. Their completions are collected in `pending`
//! and released strictly from the front, so `sent` replies and `message`
//! events leave the room in seq order even if completions were to arrive out
//! of order.
//!
//! The room never waits on the Registry (it only `do_send`s updates to it),
//! so the Registry may safely wait on rooms.

mod cluster;
mod delivery;
mod entries;
pub mod group;
mod membership;
mod owner;

pub use cluster::{Elsewhere, Reload};
pub use entries::{
    Commit, DeviceChange, FromDevice, GroupState, GroupView, History, PublishGroupInfo, SendMessage,
};
pub use membership::{GetMembers, Join, Joined, Leave, Left};
pub use owner::{OwnerAction, OwnerOp, OwnerOutcome};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::oneshot;

use crate::cluster::reloads::Reloads;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::handle::{SessionHandle, SessionId};
use crate::password::Hasher;
use crate::protocol::Member;
use crate::protocol::{DirectorySummary, ErrorCode, Failure, PlainMsg};
use crate::store::{Appended, RoomRecord, RoomState, SharedStore, StoreError};
use crate::user::User;
use delivery::{Delivery, Logged};
use group::GroupRoom;

/// What a room's handlers answer.
pub type RoomResult<T> = Result<T, Failure>;

struct MemberState {
    user: Arc<User>,
    joined_at: u64,
    sessions: HashMap<SessionId, SessionHandle>,
}

/// A send (or commit) that is in the store and waits for its turn to be
/// released.
struct Pending {
    ticket: u64,
    item: Logged,
    outcome: Option<Result<Appended, StoreError>>,
    reply: oneshot::Sender<RoomResult<Appended>>,
}

/// What a room tells the directory: its record changed (owner, name,
/// password). Declared here, with the room's other messages; the Registry
/// handles it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomChanged {
    pub record: RoomRecord,
}

/// The room's link to the directory that lists it: record changes go as
/// messages (rare), the last delivered seq as a shared counter (every send;
/// listings read it), so a busy room sends the directory nothing per message.
#[derive(Clone)]
pub struct DirectoryLink {
    pub changed: Recipient<RoomChanged>,
    pub last_seq: Arc<AtomicU64>,
    /// The group's epoch, for listings.
    pub epoch: Arc<AtomicU64>,
}

pub struct RoomActor {
    record: RoomRecord,
    members: IndexMap<String, MemberState>,
    bans: HashSet<String>,
    store: SharedStore,
    /// Where the room reports changes to its record and its last seq (the
    /// Registry's directory): a recipient, so rooms do not depend on the
    /// Registry.
    directory: DirectoryLink,
    settings: Arc<Settings>,
    next_ticket: u64,
    pending: VecDeque<Pending>,
    /// Members whose last session was just dropped (gone or too slow); their
    /// `presence` goes out from `flush_offline`.
    went_offline: Vec<String>,
    /// Joins in flight (password check or membership write), by user: each
    /// holds a seat against `max_members_per_room`.
    joining: crate::util::InFlight<String>,
    hasher: Arc<Hasher>,
    /// Set when several processes share the database (see `cluster`).
    cluster: Option<Cluster>,
    /// Fan-out in seq order, whichever process stored the message.
    delivery: Delivery,
    /// Members online on another process.
    elsewhere: HashSet<String>,
    /// Reloads after other processes' changes (`cluster::reloads`).
    reloads: Reloads,
    /// Sessions to attach once the next reload is applied.
    waiting_attach: Vec<(String, SessionHandle)>,
    /// The room's MLS group (`entries.rs`), loaded with the room.
    group: Option<GroupRoom>,
}

fn internal(e: impl std::fmt::Display) -> Failure {
    log::error!("room store error: {e}");
    Failure::from(ErrorCode::Internal)
}

/// A refused send that may be a resend: the stored copy's `sent` if the
/// dedupe `lookup` finds one, else the refusal.
async fn resend_or(
    lookup: crate::store::StoreFuture<Option<(u64, u64)>>,
    failure: Failure,
) -> RoomResult<Appended> {
    match lookup.await {
        Ok(Some((seq, ts))) => Ok(Appended {
            seq,
            ts,
            duplicate: true,
        }),
        Ok(None) => Err(failure),
        Err(e) => Err(internal(e)),
    }
}

impl RoomActor {
    pub fn new(
        record: RoomRecord,
        store: SharedStore,
        directory: DirectoryLink,
        settings: Arc<Settings>,
        hasher: Arc<Hasher>,
        cluster: Option<Cluster>,
        elsewhere: HashSet<String>,
    ) -> Self {
        RoomActor {
            cluster,
            delivery: Delivery::new(record.last_seq),
            elsewhere,
            reloads: Reloads::default(),
            waiting_attach: Vec::new(),
            group: None,
            hasher,
            record,
            members: IndexMap::new(),
            bans: HashSet::new(),
            store,
            directory,
            settings,
            next_ticket: 0,
            pending: VecDeque::new(),
            went_offline: Vec::new(),
            joining: Default::default(),
        }
    }

    fn online_count(&self) -> usize {
        self.members
            .iter()
            .filter(|(name, m)| !m.sessions.is_empty() || self.elsewhere.contains(*name))
            .count()
    }

    pub fn summary(&self) -> DirectorySummary {
        DirectorySummary {
            room_id: self.record.room_id.clone(),
            name: self.record.name.clone(),
            owner: self.record.owner.clone(),
            members: self.members.len() as u64,
            online: self.online_count() as u64,
            has_password: self.record.password_hash.is_some(),
            hidden: self.record.hidden,
            created_at: self.record.created_at,
            last_seq: self.record.last_seq,
        }
    }

    fn member_objects(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(name, m)| {
                let online = !m.sessions.is_empty() || self.elsewhere.contains(name);
                m.user.member(online, m.joined_at)
            })
            .collect()
    }

    fn publish(&self) {
        self.directory.changed.do_send(RoomChanged {
            record: self.record.clone(),
        });
    }

    /// Queues a frame for every session of `username`, dropping sessions
    /// that are gone or whose send queue is full. Returns how many got it.
    fn push_to(&mut self, username: &str, frame: &Bytes) -> u64 {
        let Some(m) = self.members.get_mut(username) else {
            return 0;
        };
        let had = m.sessions.len();
        m.sessions.retain(|_, s| s.deliver(frame.clone()));
        if had > 0 && m.sessions.is_empty() {
            self.went_offline.push(username.to_owned());
        }
        m.sessions.len() as u64
    }

    /// Announces members whose last session was dropped while delivering.
    fn flush_offline(&mut self) {
        while let Some(username) = self.went_offline.pop() {
            if self
                .members
                .get(&username)
                .is_some_and(|m| m.sessions.is_empty())
                && !self.elsewhere.contains(&username)
            {
                log::info!(
                    "room {}: {username} dropped (connection gone or too slow)",
                    self.record.room_id
                );
                self.presence(&username, false);
            }
        }
    }

    /// Sends one event to every online member except `except`.
    fn broadcast(&mut self, event: &PlainMsg, except: Option<&str>) {
        self.broadcast_frame(&Bytes::from(event.encode()), except);
    }

    fn broadcast_frame(&mut self, frame: &Bytes, except: Option<&str>) {
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|(n, m)| Some(n.as_str()) != except && !m.sessions.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.push_to(&name, frame);
        }
        self.flush_offline();
    }

    fn is_owner(&self, username: &str) -> RoomResult<()> {
        if self.record.owner == username {
            Ok(())
        } else {
            Err(ErrorCode::NotOwner.into())
        }
    }

    /// Queues a store write of the room log (an entry)
    /// behind the ones before it: its answer comes when it and everything
    /// before it are complete, in seq order.
    fn submit(
        &mut self,
        item: Logged,
        append: crate::store::StoreFuture<Appended>,
        ctx: &mut Context<Self>,
    ) -> impl std::future::Future<Output = RoomResult<Appended>> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.push_back(Pending {
            ticket,
            item,
            outcome: None,
            reply: tx,
        });
        ctx.spawn(
            append
                .into_actor(self)
                .map(move |res, act, ctx| act.complete(ticket, res, ctx)),
        );
        async move { rx.await.unwrap_or_else(|_| Err(ErrorCode::Internal.into())) }
    }

    /// Records a store completion and releases every send at the front of
    /// the queue that is complete, in order.
    fn complete(
        &mut self,
        ticket: u64,
        outcome: Result<Appended, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.ticket == ticket) {
            p.outcome = Some(outcome);
        }
        let mut reload_group = false;
        while self.pending.front().is_some_and(|p| p.outcome.is_some()) {
            let p = self.pending.pop_front().expect("front exists");
            let is_commit = p.item.commit.is_some();
            let result = match p.outcome.expect("checked") {
                Ok(appended) => {
                    if !appended.duplicate {
                        if let Some(cluster) = &self.cluster {
                            cluster.publish_entry(&p.item, appended);
                        }
                        self.offer(appended.seq, appended.ts, p.item);
                    }
                    Ok(appended)
                }
                // Another process's commit won this epoch: the group here
                // moved ahead with the loser, so it is read again.
                Err(StoreError::StaleEpoch(current)) => {
                    reload_group = true;
                    Err(Failure::stale_epoch(current))
                }
                Err(e) => {
                    reload_group |= is_commit;
                    Err(internal(e))
                }
            };
            let _ = p.reply.send(result);
        }
        self.drain(ctx);
        if reload_group {
            self.reload_group(ctx);
        }
    }

    /// Takes the committed state (changed by another process): members
    /// gone are dropped (`member_left`, with `removed`'s reason for that
    /// user, else "left"), new ones added (`member_joined`), the record's
    /// name and owner announced when they changed. Bans: `replace_bans`
    /// takes the stored set (an unban elsewhere); otherwise they are added.
    fn adopt(&mut self, state: RoomState, removed: Option<(&str, &str)>, replace_bans: bool) {
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|name| !state.members.iter().any(|m| &m.user.username == *name))
            .cloned()
            .collect();
        for name in gone {
            let reason = removed
                .filter(|(user, _)| *user == name)
                .map_or("left", |(_, reason)| reason);
            self.drop_member(&name, reason);
        }
        for m in state.members {
            if self.members.contains_key(&m.user.username) {
                continue;
            }
            let Ok(user) = User::from_record(&m.user) else {
                log::error!("bad stored key for {}", m.user.username);
                continue;
            };
            let member = user.member(self.elsewhere.contains(&user.username), m.joined_at);
            self.members.insert(
                m.user.username.clone(),
                MemberState {
                    user,
                    joined_at: m.joined_at,
                    sessions: HashMap::new(),
                },
            );
            if self.online_count() > 0 {
                let frame = self.member_joined_frame(member);
                self.broadcast_frame(&frame, Some(&m.user.username));
            }
        }
        if replace_bans {
            self.bans = state.bans.into_iter().collect();
        } else {
            self.bans.extend(state.bans);
        }
        if let Some(record) = state.record {
            self.take_record(record);
        }
    }

    /// The committed record: announces a new name or owner.
    fn take_record(&mut self, record: RoomRecord) {
        let room_id = self.record.room_id.clone();
        if record.name != self.record.name {
            self.record.name = record.name.clone();
            self.broadcast(
                &PlainMsg::RoomRenamed {
                    room_id: room_id.clone(),
                    name: record.name,
                },
                None,
            );
        }
        if record.owner != self.record.owner {
            self.record.owner = record.owner.clone();
            self.broadcast(
                &PlainMsg::OwnerChanged {
                    room_id,
                    owner: record.owner,
                },
                None,
            );
        }
        self.record.password_hash = record.password_hash;
        self.record.hidden = record.hidden;
    }

    fn attach(&mut self, username: &str, handle: SessionHandle) {
        let Some(m) = self.members.get_mut(username) else {
            return;
        };
        let was_online = !m.sessions.is_empty() || self.elsewhere.contains(username);
        m.sessions.insert(handle.id, handle);
        if !was_online {
            self.presence(username, true);
        }
    }

    fn presence(&mut self, username: &str, online: bool) {
        self.broadcast(
            &PlainMsg::Presence {
                room_id: self.record.room_id.clone(),
                username: username.to_owned(),
                online,
            },
            Some(username),
        );
    }

    /// The room was deleted (here or on another process): everyone online
    /// gets `room_deleted`, and the actor stops.
    fn gone(&mut self, ctx: &mut Context<Self>) {
        self.broadcast(
            &PlainMsg::RoomDeleted {
                room_id: self.record.room_id.clone(),
            },
            None,
        );
        self.members.clear();
        ctx.stop();
    }

    /// Drops a member from memory: a removed member's sessions get `removed`
    /// (unless they left on their own), everyone left gets `member_left`.
    fn drop_member(&mut self, username: &str, reason: &str) {
        let Some(removed) = self.members.shift_remove(username) else {
            return;
        };
        self.remove_member_devices(username);
        if reason != "left" {
            let frame = Bytes::from(
                PlainMsg::Removed {
                    room_id: self.record.room_id.clone(),
                    reason: reason.to_owned(),
                }
                .encode(),
            );
            for s in removed.sessions.values() {
                s.deliver(frame.clone());
            }
        }
        self.broadcast(
            &PlainMsg::MemberLeft {
                room_id: self.record.room_id.clone(),
                username: username.to_owned(),
                reason: reason.to_owned(),
            },
            None,
        );
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::util::MAILBOX_CAPACITY);
        let room = self.store.load_room(&self.record.room_id);
        // The group is read after the room, so it is at least as new as the
        // room's last seq (entries in between are delivered by seq).
        let group = entries::load_group(&self.store, &self.record.room_id);
        let load = async move {
            let state = room.await?;
            Ok::<_, StoreError>((state, group.await?))
        };
        ctx.wait(load.into_actor(self).map(
            |res: Result<(RoomState, entries::GroupLoad), StoreError>, act, ctx| match res {
                Ok((state, group)) => {
                    let Some(record) = state.record.clone() else {
                        log::info!("room {} is gone", act.record.room_id);
                        ctx.stop();
                        return;
                    };
                    if !act.take_group(group) {
                        ctx.stop();
                        return;
                    }
                    // Live delivery starts after what is stored now.
                    act.delivery.restart_at(record.last_seq);
                    act.record.last_seq = record.last_seq;
                    // Nobody is attached yet, so adopting announces nothing.
                    act.adopt(state, None, true);
                    // The directory's copy may be older (another process
                    // appended since it was read): listings take this one.
                    act.publish();
                    if let Some(cluster) = &act.cluster {
                        cluster.subscribe_room(&act.record.room_id, ctx.address().recipient());
                    }
                    log::debug!(
                        "room {} loaded: {} members, last seq {}",
                        act.record.room_id,
                        act.members.len(),
                        act.record.last_seq
                    );
                }
                Err(e) => {
                    log::error!("room {} failed to load: {e}", act.record.room_id);
                    ctx.stop();
                }
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(cluster) = &self.cluster {
            cluster.unsubscribe_room(&self.record.room_id);
        }
        log::debug!("room {} stopped", self.record.room_id);
    }
}

/// The Registry stops a room no member here has used for
/// `limits.room_idle_secs` (it has already forgotten this address, and has
/// no request of its own in flight to it). A later use starts it again from
/// the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIdle;

impl Handler<StopIdle> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: StopIdle, ctx: &mut Self::Context) {
        log::debug!("room {} idle: stopping", self.record.room_id);
        ctx.stop();
    }
}

// ---------------------------------------------------------------- sessions

#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub username: String,
    pub handle: SessionHandle,
}

impl Handler<Attach> for RoomActor {
    type Result = ();
    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        self.attach(&msg.username, msg.handle);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub username: String,
    pub session: SessionId,
}

impl Handler<Detach> for RoomActor {
    type Result = ();
    fn handle(&mut self, msg: Detach, _: &mut Self::Context) {
        let Some(m) = self.members.get_mut(&msg.username) else {
            return;
        };
        if m.sessions.remove(&msg.session).is_some()
            && m.sessions.is_empty()
            && !self.elsewhere.contains(&msg.username)
        {
            self.presence(&msg.username, false);
        }
    }
}
