//! `RoomActor`: one per active room. It owns the room's members (with their
//! keys), the sessions of members that are online, the bans and the owner,
//! checks every `send` against them, hands messages to the store in order and
//! fans them out once they are durable.
//!
//! Ordering: sends are submitted to the store in arrival order and the store
//! assigns seq in that order. Their completions are collected in `pending`
//! and released strictly from the front, so `sent` replies and `message`
//! events leave the room in seq order even if completions were to arrive out
//! of order.
//!
//! The room never waits on the Registry (it only `do_send`s updates to it),
//! so the Registry may safely wait on rooms.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::cluster::{Cluster, RoomChange, RoomFeed};
use crate::config::Settings;
use crate::metrics;
use crate::password::Hasher;
use crate::protocol::{
    ErrorCode, Failure, Member, MessageData, MessageFrame, RoomSummary, SendBody, ServerMsg,
};
use crate::registry::{Registry, RoomChanged};
use crate::session::{SessionHandle, SessionId};
use crate::store::{
    Appended, HistoryPage, HistoryQuery, NewMessage, RoomMessage, RoomRecord, RoomState,
    RoomUpdate, SharedStore, StoreError,
};
use crate::user::User;
use crate::util::now_ms;

/// What a room's handlers answer.
pub type RoomResult<T> = Result<T, Failure>;

struct MemberState {
    user: Arc<User>,
    joined_at: u64,
    sessions: HashMap<SessionId, SessionHandle>,
}

/// A send that is in the store and waits for its turn to be released.
struct Pending {
    ticket: u64,
    message: Arc<NewMessage>,
    outcome: Option<Result<Appended, StoreError>>,
    reply: oneshot::Sender<RoomResult<Appended>>,
}

pub struct RoomActor {
    record: RoomRecord,
    members: IndexMap<String, MemberState>,
    bans: HashSet<String>,
    store: SharedStore,
    registry: Addr<Registry>,
    settings: Arc<Settings>,
    next_ticket: u64,
    pending: VecDeque<Pending>,
    /// Members whose last session was just dropped (gone or too slow); their
    /// `presence` goes out from `flush_offline`.
    went_offline: Vec<String>,
    /// Joins in flight (password check or membership write), by user: each
    /// holds a seat against `max_members_per_room`.
    joining: HashMap<String, usize>,
    /// Password attempts per user in the current window (see
    /// `take_password_attempt`).
    password_attempts: HashMap<String, (Instant, u32)>,
    hasher: Arc<Hasher>,
    /// Set when several processes share the database (see `cluster`).
    cluster: Option<Cluster>,
    /// The highest seq delivered to this process's sessions: every message
    /// is fanned out once, in seq order, whichever process stored it.
    delivered: u64,
    /// Stored messages above `delivered + 1`, waiting for the ones before.
    ready: BTreeMap<u64, (Arc<NewMessage>, u64)>,
    /// A gap fill is scheduled or running.
    filling: bool,
    /// Members online on another process.
    elsewhere: HashSet<String>,
    /// Reloads after other processes' changes: started, newest applied, the
    /// change the newest was for, and sessions to attach after it.
    loads_started: u64,
    loads_applied: u64,
    reload_change: Option<RoomChange>,
    waiting_attach: Vec<(String, SessionHandle)>,
}

/// How long a seq gap may wait for the notification that fills it before
/// the room reads the database.
const GAP_WAIT: Duration = Duration::from_millis(25);
/// Most messages one database read fills in.
const FILL_BATCH: usize = 256;

/// The window of `limits.password_attempts_per_minute`.
const PASSWORD_WINDOW: Duration = Duration::from_secs(60);

fn internal(e: impl std::fmt::Display) -> Failure {
    log::error!("room store error: {e}");
    Failure::from(ErrorCode::Internal)
}

impl RoomActor {
    pub fn new(
        record: RoomRecord,
        store: SharedStore,
        registry: Addr<Registry>,
        settings: Arc<Settings>,
        hasher: Arc<Hasher>,
        cluster: Option<Cluster>,
        elsewhere: HashSet<String>,
    ) -> Self {
        RoomActor {
            cluster,
            delivered: record.last_seq,
            ready: BTreeMap::new(),
            filling: false,
            elsewhere,
            loads_started: 0,
            loads_applied: 0,
            reload_change: None,
            waiting_attach: Vec::new(),
            hasher,
            record,
            members: IndexMap::new(),
            bans: HashSet::new(),
            store,
            registry,
            settings,
            next_ticket: 0,
            pending: VecDeque::new(),
            went_offline: Vec::new(),
            joining: HashMap::new(),
            password_attempts: HashMap::new(),
        }
    }

    fn online_count(&self) -> usize {
        self.members
            .iter()
            .filter(|(name, m)| !m.sessions.is_empty() || self.elsewhere.contains(*name))
            .count()
    }

    pub fn summary(&self) -> RoomSummary {
        RoomSummary {
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
        self.registry.do_send(RoomChanged {
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
    fn broadcast(&mut self, event: &ServerMsg, except: Option<&str>) {
        let frame = Bytes::from(event.encode());
        let names: Vec<String> = self
            .members
            .iter()
            .filter(|(n, m)| Some(n.as_str()) != except && !m.sessions.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.push_to(&name, &frame);
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

    /// The checks of PROTOCOL.md "Messages" that come after the idempotency
    /// point: key set, wrapped-key lengths, signature.
    fn check_keys(&self, body: &SendBody, sig_ok: bool) -> RoomResult<()> {
        let same_set = body.keys.len() == self.members.len()
            && body.keys.keys().all(|k| self.members.contains_key(k));
        if !same_set {
            let mut f = Failure::new(
                ErrorCode::StaleMembers,
                "the keys do not match the room's current members",
            );
            f.members = Some(self.member_objects());
            return Err(f);
        }
        for (name, wrapped) in &body.keys {
            if wrapped.len() != self.members[name.as_str()].user.keys.enc_len {
                return Err(Failure::new(
                    ErrorCode::InvalidMessage,
                    format!("the wrapped key for {name} has the wrong length"),
                ));
            }
        }
        if !sig_ok {
            return Err(Failure::new(
                ErrorCode::InvalidMessage,
                "the message signature does not verify",
            ));
        }
        Ok(())
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
        let mut stale = Vec::new();
        while self.pending.front().is_some_and(|p| p.outcome.is_some()) {
            let p = self.pending.pop_front().expect("front exists");
            let result = match p.outcome.expect("checked") {
                Ok(appended) => {
                    if !appended.duplicate {
                        if let Some(cluster) = &self.cluster {
                            cluster.publish_message(&p.message, appended);
                        }
                        self.offer(appended.seq, appended.ts, p.message);
                    }
                    Ok(appended)
                }
                Err(StoreError::StaleMembers) => {
                    stale.push(p.reply);
                    continue;
                }
                Err(e) => Err(internal(e)),
            };
            let _ = p.reply.send(result);
        }
        self.drain(ctx);
        if !stale.is_empty() {
            self.reload_members(ctx, stale);
        }
    }

    /// The store refused sends whose key sets were this room's members:
    /// another process changed them. Takes the committed members, then
    /// answers those sends `stale_members` with them, so the senders re-wrap.
    fn reload_members(
        &mut self,
        ctx: &mut Context<Self>,
        waiting: Vec<oneshot::Sender<RoomResult<Appended>>>,
    ) {
        let load = self.store.load_room(&self.record.room_id);
        ctx.spawn(load.into_actor(self).map(move |res, act, _| {
            let answer = match res {
                Ok(state) => {
                    act.adopt(state, None, false);
                    let mut f = Failure::new(
                        ErrorCode::StaleMembers,
                        "the room's members changed; re-wrap for these members",
                    );
                    f.members = Some(act.member_objects());
                    Err(f)
                }
                Err(e) => Err(internal(e)),
            };
            for reply in waiting {
                let _ = reply.send(answer.clone());
            }
        }));
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
                self.broadcast(
                    &ServerMsg::MemberJoined {
                        room_id: self.record.room_id.clone(),
                        member,
                    },
                    Some(&m.user.username),
                );
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
                &ServerMsg::RoomRenamed {
                    room_id: room_id.clone(),
                    name: record.name,
                },
                None,
            );
        }
        if record.owner != self.record.owner {
            self.record.owner = record.owner.clone();
            self.broadcast(
                &ServerMsg::OwnerChanged {
                    room_id,
                    owner: record.owner,
                },
                None,
            );
        }
        self.record.password_hash = record.password_hash;
        self.record.hidden = record.hidden;
    }

    // ------------------------------------------------------------ delivery order

    /// A stored message, from this room's own append or from another
    /// process: kept until every seq before it is delivered.
    fn offer(&mut self, seq: u64, ts: u64, msg: Arc<NewMessage>) {
        if seq > self.delivered {
            self.ready.entry(seq).or_insert((msg, ts));
        }
    }

    /// Delivers the messages that are next in seq order; a gap waits
    /// `GAP_WAIT` for its notification, then is read from the database.
    fn drain(&mut self, ctx: &mut Context<Self>) {
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
            &ServerMsg::Presence {
                room_id: self.record.room_id.clone(),
                username: username.to_owned(),
                online,
            },
            Some(username),
        );
    }

    /// Drops a member from memory: a removed member's sessions get `removed`
    /// (unless they left on their own), everyone left gets `member_left`.
    fn drop_member(&mut self, username: &str, reason: &str) {
        let Some(removed) = self.members.shift_remove(username) else {
            return;
        };
        if reason != "left" {
            let frame = Bytes::from(
                ServerMsg::Removed {
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
            &ServerMsg::MemberLeft {
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
        let load = self.store.load_room(&self.record.room_id);
        ctx.wait(load.into_actor(self).map(
            |res: Result<RoomState, StoreError>, act, ctx| match res {
                Ok(state) => {
                    let Some(record) = state.record.clone() else {
                        log::info!("room {} is gone", act.record.room_id);
                        ctx.stop();
                        return;
                    };
                    // Live delivery starts after what is stored now.
                    act.delivered = record.last_seq;
                    act.record.last_seq = record.last_seq;
                    // Nobody is attached yet, so adopting announces nothing.
                    act.adopt(state, None, true);
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

// ---------------------------------------------------------------- other processes

impl Handler<RoomFeed> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomFeed, ctx: &mut Self::Context) {
        match msg {
            RoomFeed::Message(m) => {
                self.offer(m.seq, m.ts, Arc::new(m.message));
                self.drain(ctx);
            }
            RoomFeed::Subscribed => self.fill(ctx, true),
        }
    }
}

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
    fn reload(&mut self, change: RoomChange, ctx: &mut Context<Self>) {
        self.loads_started += 1;
        let generation = self.loads_started;
        self.reload_change = Some(change.clone());
        let load = self.store.load_room(&self.record.room_id);
        ctx.spawn(load.into_actor(self).map(move |res, act, ctx| {
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
                act.broadcast(
                    &ServerMsg::RoomDeleted {
                        room_id: act.record.room_id.clone(),
                    },
                    None,
                );
                act.members.clear();
                ctx.stop();
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
    fn local_change(&mut self, ctx: &mut Context<Self>) {
        if self.loads_started > self.loads_applied {
            self.loads_applied = self.loads_started;
            let change = self.reload_change.clone().unwrap_or(RoomChange::Updated);
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

// ---------------------------------------------------------------- membership

pub struct Joined {
    pub room: RoomSummary,
    pub members: Vec<Member>,
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
}

impl RoomActor {
    fn joined(&self, added: bool) -> Joined {
        Joined {
            room: self.summary(),
            members: self.member_objects(),
            added,
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
            return Box::pin(fut::ready(Ok(self.joined(false))));
        }
        let refuse = |f: Failure| -> Self::Result { Box::pin(fut::ready(Err(f))) };
        if self.bans.contains(&username) {
            return refuse(ErrorCode::Banned.into());
        }
        let seats = self.members.len() + self.joining.len()
            - usize::from(self.joining.contains_key(&username));
        if seats >= self.settings.limits.max_members_per_room {
            return refuse(ErrorCode::RoomFull.into());
        }
        if msg.room_count >= self.settings.limits.max_rooms_per_user {
            return refuse(ErrorCode::TooManyRooms.into());
        }
        let hash = self.record.password_hash.clone();
        if hash.is_some() {
            if let Err(f) = self.take_password_attempt(&username) {
                return refuse(f);
            }
        }
        *self.joining.entry(username.clone()).or_default() += 1;
        let given = msg.password.unwrap_or_default();
        let checked_password = hash.is_some();
        let check = hash.map(|hash| self.hasher.verify(hash, given));
        let verify = async move {
            match check {
                Some(check) => check.await,
                None => Ok(true),
            }
        };
        let joined_at = now_ms();
        let name = username.clone();
        let (user, sessions) = (msg.user, msg.sessions);
        let stored = verify.into_actor(self).then(move |checked, act, _| {
            let admitted = match checked {
                Err(busy) => {
                    // Not checked at all (the hashing queue was full).
                    act.refund_password_attempt(&name);
                    Err(busy)
                }
                Ok(false) => Err(Failure::from(ErrorCode::WrongPassword)),
                Ok(true) => act.admit(&name, checked_password),
            };
            // Submitted now, in this actor turn, so the store orders it
            // before any ban this room submits later.
            let write =
                admitted.map(|()| act.store.add_member(&act.record.room_id, &name, joined_at));
            async move {
                match write?.await {
                    // Banned on another process, which this one has not heard of yet.
                    Err(StoreError::Banned) => Err(Failure::from(ErrorCode::Banned)),
                    other => other.map_err(internal),
                }
            }
            .into_actor(act)
        });
        Box::pin(stored.map(move |res, act, ctx| {
            act.release_seat(&username);
            if matches!(&res, Err(f) if f.code == ErrorCode::Banned) {
                act.bans.insert(username.clone());
            }
            res?;
            if act.bans.contains(&username) {
                // Banned while the membership was being written: the ban's
                // own write, queued after ours, removes it again.
                return Err(ErrorCode::Banned.into());
            }
            if act.members.contains_key(&username) {
                act.attach_all(&username, sessions);
                return Ok(act.joined(false));
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
            act.broadcast(
                &ServerMsg::MemberJoined {
                    room_id: act.record.room_id.clone(),
                    member,
                },
                Some(&username),
            );
            act.local_change(ctx);
            Ok(act.joined(true))
        }))
    }
}

impl RoomActor {
    /// Counts one password attempt of `username` against
    /// `limits.password_attempts_per_minute`; past it, `rate_limited`
    /// without hashing. Counted before the hash runs, so racing attempts
    /// cannot exceed the limit; a right password gives its attempt back.
    fn take_password_attempt(&mut self, username: &str) -> RoomResult<()> {
        let now = Instant::now();
        let limit = self.settings.limits.password_attempts_per_minute;
        self.password_attempts
            .retain(|_, (since, _)| now.duration_since(*since) < PASSWORD_WINDOW);
        let (_, count) = self
            .password_attempts
            .entry(username.to_owned())
            .or_insert((now, 0));
        if *count >= limit {
            return Err(Failure::new(
                ErrorCode::RateLimited,
                "too many password attempts for this room; wait a minute",
            ));
        }
        *count += 1;
        Ok(())
    }

    fn refund_password_attempt(&mut self, username: &str) {
        if let Some((_, count)) = self.password_attempts.get_mut(username) {
            *count = count.saturating_sub(1);
        }
    }

    /// After a right (or no) password: refused if banned meanwhile, else
    /// the attempt is given back.
    fn admit(&mut self, username: &str, checked_password: bool) -> RoomResult<()> {
        if self.bans.contains(username) {
            // Banned while the password was being checked.
            return Err(ErrorCode::Banned.into());
        }
        if checked_password {
            self.refund_password_attempt(username);
        }
        Ok(())
    }

    fn release_seat(&mut self, username: &str) {
        if let Some(n) = self.joining.get_mut(username) {
            *n -= 1;
            if *n == 0 {
                self.joining.remove(username);
            }
        }
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

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) -> Self::Result {
        if !self.members.contains_key(&msg.username) {
            return Box::pin(fut::ready(Err(ErrorCode::NotMember.into())));
        }
        let store = self.store.clone();
        let room_id = self.record.room_id.clone();
        let username = msg.username;
        let last = self.members.len() == 1;
        let next_owner = (self.record.owner == username)
            .then(|| self.members.keys().find(|k| **k != username).cloned())
            .flatten();
        let (name, heir) = (username.clone(), next_owner.clone());
        let work = async move {
            if last {
                return store.delete_room(&room_id).await.map_err(internal);
            }
            store
                .remove_member(&room_id, &name, false)
                .await
                .map_err(internal)?;
            if let Some(owner) = heir {
                let update = RoomUpdate {
                    owner: Some(owner),
                    ..RoomUpdate::default()
                };
                store
                    .update_room(&room_id, update)
                    .await
                    .map_err(internal)?;
            }
            Ok(())
        };
        Box::pin(work.into_actor(self).map(move |res, act, ctx| {
            res?;
            if last {
                act.members.clear();
                ctx.stop();
                return Ok(Left { deleted: true });
            }
            act.drop_member(&username, "left");
            act.local_change(ctx);
            if let Some(owner) = next_owner {
                act.record.owner = owner.clone();
                act.broadcast(
                    &ServerMsg::OwnerChanged {
                        room_id: act.record.room_id.clone(),
                        owner,
                    },
                    None,
                );
                act.publish();
            }
            Ok(Left { deleted: false })
        }))
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

// ---------------------------------------------------------------- messages

#[derive(Message)]
#[rtype(result = "RoomResult<Appended>")]
pub struct SendMessage {
    pub sender: String,
    pub body: SendBody,
    /// Whether the signature verified (checked by the session, off this thread).
    pub signature_ok: bool,
}

impl Handler<SendMessage> for RoomActor {
    type Result = ResponseFuture<RoomResult<Appended>>;

    fn handle(&mut self, msg: SendMessage, ctx: &mut Self::Context) -> Self::Result {
        let refuse = |f: Failure| -> Self::Result { Box::pin(async move { Err(f) }) };
        let body = &msg.body;
        if !self.members.contains_key(&msg.sender) {
            return refuse(ErrorCode::NotMember.into());
        }
        if body.ciphertext.len() > self.settings.limits.max_ciphertext_bytes {
            return refuse(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "ciphertext is {} bytes; the limit is {}",
                    body.ciphertext.len(),
                    self.settings.limits.max_ciphertext_bytes
                ),
            ));
        }
        if body.msg_id.len() != crate::crypto::MSG_ID_LEN
            || body.nonce.len() != crate::crypto::NONCE_LEN
            || body.key_commitment.len() != crate::crypto::KEY_COMMITMENT_LEN
        {
            return refuse(Failure::new(
                ErrorCode::InvalidMessage,
                "msg_id must be 16 bytes, nonce 12 and key_commitment 32",
            ));
        }
        if let Err(failure) = self.check_keys(body, msg.signature_ok) {
            // The idempotency point comes before these checks: a resend of a
            // stored message still answers its original `sent`.
            let lookup = self
                .store
                .find_message(&body.room_id, &msg.sender, &body.msg_id);
            return Box::pin(async move {
                match lookup.await {
                    Ok(Some((seq, ts))) => Ok(Appended {
                        seq,
                        ts,
                        duplicate: true,
                    }),
                    Ok(None) => Err(failure),
                    Err(e) => Err(internal(e)),
                }
            });
        }
        let SendMessage { sender, body, .. } = msg;
        let message = Arc::new(NewMessage {
            room_id: body.room_id,
            msg_id: body.msg_id.into_vec(),
            sender,
            nonce: body.nonce.into_vec(),
            key_commitment: body.key_commitment.into_vec(),
            ciphertext: body.ciphertext.into_vec(),
            signature: body.signature.into_vec(),
            keys: body
                .keys
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect(),
            check_members: true,
        });
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.push_back(Pending {
            ticket,
            message: message.clone(),
            outcome: None,
            reply: tx,
        });
        let append = self.store.append_message(message);
        ctx.spawn(
            append
                .into_actor(self)
                .map(move |res, act, ctx| act.complete(ticket, res, ctx)),
        );
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(ErrorCode::Internal.into())) })
    }
}

#[derive(Message)]
#[rtype(result = "RoomResult<(Vec<MessageData>, bool)>")]
pub struct History {
    pub username: String,
    pub query: HistoryQuery,
}

impl Handler<History> for RoomActor {
    type Result = ResponseFuture<RoomResult<(Vec<MessageData>, bool)>>;

    fn handle(&mut self, msg: History, _: &mut Self::Context) -> Self::Result {
        if !self.members.contains_key(&msg.username) {
            return Box::pin(async { Err(ErrorCode::NotMember.into()) });
        }
        let room_id = self.record.room_id.clone();
        let page = self.store.history(&room_id, &msg.username, msg.query);
        Box::pin(async move {
            let HistoryPage { messages, has_more } = page.await.map_err(internal)?;
            let messages = messages
                .into_iter()
                .map(|m| MessageData {
                    room_id: room_id.clone(),
                    seq: m.seq,
                    ts: m.ts,
                    msg_id: ByteBuf::from(m.msg_id),
                    sender: m.sender,
                    nonce: ByteBuf::from(m.nonce),
                    key_commitment: ByteBuf::from(m.key_commitment),
                    ciphertext: ByteBuf::from(m.ciphertext),
                    key: ByteBuf::from(m.key),
                    signature: ByteBuf::from(m.signature),
                })
                .collect();
            Ok((messages, has_more))
        })
    }
}

// ---------------------------------------------------------------- owner operations

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
                let name = target.clone();
                let work = async move { store.remove_member(&room_id, &name, false).await };
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    res.map_err(internal)?;
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
                let name = target.clone();
                let work = async move { store.remove_member(&room_id, &name, true).await };
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    if let Err(e) = res {
                        if newly {
                            act.bans.remove(&target);
                        }
                        return Err(internal(e));
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
                    ..RoomUpdate::default()
                };
                let work = async move { store.update_room(&room_id, update).await };
                Box::pin(work.into_actor(self).map(move |res, act, ctx| {
                    match res {
                        Err(StoreError::Conflict(_)) => return Err(ErrorCode::RoomExists.into()),
                        other => other.map_err(internal)?,
                    }
                    act.local_change(ctx);
                    act.record.name = name.clone();
                    act.broadcast(
                        &ServerMsg::RoomRenamed {
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
                let hashed = pw.map(|pw| self.hasher.hash(pw));
                let work = async move {
                    let hash = match hashed {
                        Some(hashed) => Some(hashed.await?),
                        None => None,
                    };
                    let update = RoomUpdate {
                        password_hash: Some(hash.clone()),
                        ..RoomUpdate::default()
                    };
                    store
                        .update_room(&room_id, update)
                        .await
                        .map_err(internal)?;
                    Ok(hash)
                };
                Box::pin(
                    work.into_actor(self)
                        .map(|res: RoomResult<Option<String>>, act, ctx| {
                            act.record.password_hash = res?;
                            act.local_change(ctx);
                            act.publish();
                            Ok(OwnerOutcome::default())
                        }),
                )
            }
            OwnerAction::Delete => {
                let work = async move { store.delete_room(&room_id).await };
                Box::pin(work.into_actor(self).map(|res, act, ctx| {
                    res.map_err(internal)?;
                    act.broadcast(
                        &ServerMsg::RoomDeleted {
                            room_id: act.record.room_id.clone(),
                        },
                        None,
                    );
                    act.members.clear();
                    ctx.stop();
                    Ok(OwnerOutcome {
                        deleted: true,
                        ..OwnerOutcome::default()
                    })
                }))
            }
        }
    }
}
