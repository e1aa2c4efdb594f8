//! The `Registry` actor (one per server): registration, user lookup for
//! login, who is online, and the room directory (names, listing order,
//! membership index). It starts `RoomActor`s on a pool of arbiters when a
//! room is first used and forwards membership changes to them.
//!
//! Membership itself is owned by each room; the directory keeps an index of
//! it (who is in which room) that it updates from the rooms' answers, because
//! every membership change passes through here. Rooms report other changes
//! (owner, name, password flag) with `RoomChanged` and their last seq through
//! a shared counter (`room::DirectoryLink`). The directory's indexes change
//! together in one place, `directory.rs`.
//!
//! The Registry waits on rooms; rooms never wait on the Registry.
//!
//! With several processes (`cluster`), the Registry also keeps the others'
//! presence and applies their room changes; that part is in `cluster.rs`.

mod accounts;
mod cluster;
mod devices;
mod directory;

pub use accounts::{LookupUser, Offline, Online, OnlineInfo, Register};
pub use devices::{AddDevice, FindDevice, ListDevices, RemoveDevice};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use indexmap::IndexSet;

use crate::cluster::{presence::Peers, Cluster, RoomChange};
use crate::config::Settings;
use crate::handle::{SessionHandle, SessionId};
use crate::password::Hasher;
use crate::protocol::Member;
use crate::protocol::{DirectorySummary, ErrorCode, Failure};
use crate::room::{
    self, DirectoryLink, OwnerAction, OwnerOp, OwnerOutcome, RoomActor, RoomChanged,
};
use crate::store::{GroupRow, RoomRecord, SharedStore, StoreError};
use crate::user::User;
use crate::util::now_ms;
use crate::validate::room_name_key;
use directory::{merge, Directory, ListKey, RoomEntry};

pub type RegistryResult<T> = Result<T, Failure>;

/// Most users whose parsed keys the Registry keeps (about 2 KiB each).
const USER_CACHE: usize = 50_000;

pub struct Registry {
    store: SharedStore,
    settings: Arc<Settings>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    users: HashMap<String, Arc<User>>,
    /// Rooms, listing, name index, user → rooms (`directory.rs`).
    dir: Directory,
    online: HashMap<String, HashMap<SessionId, SessionHandle>>,
    /// Joins and creations in flight per user: each counts against
    /// `max_rooms_per_user` until it is done, so racing requests cannot
    /// exceed the limit.
    pending_rooms: crate::util::InFlight<String>,
    /// Rooms whose actor was started here (checked by `stop_idle_rooms`).
    running: HashSet<String>,
    /// Joins, leaves and creations per user in the current minute
    /// (`limits.membership_changes_per_minute`).
    churn: crate::util::Windows<String>,
    /// The one gate for Argon2 work, shared with every room.
    hasher: Arc<Hasher>,
    /// Several processes: the Redis link, the others' presence, how many
    /// users are online on any process, this process's presence event
    /// count, and per room (loads started, newest load applied).
    cluster: Option<Cluster>,
    peers: Peers,
    anywhere: usize,
    presence_version: u64,
    room_loads: HashMap<String, crate::cluster::reloads::Reloads>,
    subscriptions: u64,
    /// Live devices recorded through this process, so a known device's
    /// login reads no store. One process only: with several, another
    /// process may remove a device, so the store is asked every time.
    devices: HashMap<(String, Vec<u8>), crate::store::DeviceRecord>,
}

fn internal(e: impl std::fmt::Display) -> Failure {
    log::error!("registry store error: {e}");
    Failure::from(ErrorCode::Internal)
}

fn failed<T: 'static>(f: impl Into<Failure>) -> ResponseActFuture<Registry, RegistryResult<T>> {
    Box::pin(fut::ready(Err(f.into())))
}

impl Registry {
    pub fn new(
        store: SharedStore,
        settings: Arc<Settings>,
        arbiters: Vec<ArbiterHandle>,
        cluster: Option<Cluster>,
    ) -> Self {
        Registry {
            cluster,
            peers: Peers::default(),
            anywhere: 0,
            presence_version: 0,
            room_loads: HashMap::new(),
            subscriptions: 0,
            hasher: Hasher::new(
                settings.limits.password_hashes,
                settings.limits.password_queue,
                settings.limits.password_attempts_per_minute,
                settings.limits.password_attempts_per_ip_per_minute,
            ),
            store,
            settings,
            arbiters,
            next_arbiter: 0,
            users: HashMap::new(),
            dir: Directory::default(),
            online: HashMap::new(),
            pending_rooms: Default::default(),
            running: HashSet::new(),
            churn: crate::util::Windows::new(std::time::Duration::from_secs(60), 100_000),
            devices: HashMap::new(),
        }
    }

    /// The room's actor, started on the next arbiter if it is not running.
    fn room_addr(&mut self, room_id: &str, me: Addr<Registry>) -> Option<Addr<RoomActor>> {
        let entry = self.dir.rooms.get_mut(room_id)?;
        entry.quiet_since = None;
        if let Some(addr) = entry.addr.as_ref().filter(|a| a.connected()) {
            return Some(addr.clone());
        }
        self.running.insert(room_id.to_owned());
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter += 1;
        let elsewhere: HashSet<String> = entry
            .members
            .iter()
            .filter(|m| self.peers.is_online(m))
            .cloned()
            .collect();
        let directory = DirectoryLink {
            changed: me.recipient(),
            last_seq: entry.last_seq.clone(),
            epoch: entry.epoch.clone(),
        };
        let (record, store, settings, hasher, cluster) = (
            entry.record.clone(),
            self.store.clone(),
            self.settings.clone(),
            self.hasher.clone(),
            self.cluster.clone(),
        );
        let addr = RoomActor::start_in_arbiter(arbiter, move |_| {
            RoomActor::new(
                record, store, directory, settings, hasher, cluster, elsewhere,
            )
        });
        entry.addr = Some(addr.clone());
        Some(addr)
    }

    /// Counts one join, leave or creation of `user`; `rate_limited` past
    /// `limits.membership_changes_per_minute` (a join/leave loop on a big
    /// room made every other process re-read it each time).
    fn take_churn(&mut self, user: &str) -> Result<(), Failure> {
        let limit = self.settings.limits.membership_changes_per_minute;
        if self.churn.take(user.to_owned(), limit) {
            Ok(())
        } else {
            Err(Failure::new(
                ErrorCode::RateLimited,
                "too many joins and leaves; wait a minute",
            ))
        }
    }

    /// Counts one request of the Registry's own to the running room in or
    /// out (an idle room is never stopped under one).
    fn busy(&mut self, room_id: &str, start: bool) {
        if let Some(entry) = self.dir.rooms.get_mut(room_id) {
            if start {
                entry.busy += 1;
            } else {
                entry.busy = entry.busy.saturating_sub(1);
            }
            entry.quiet_since = None;
        }
    }

    /// Stops the rooms that no member online here has used, and no request
    /// of the Registry's has waited on, for `limits.room_idle_secs`: each
    /// running room costs memory (and a Redis subscription in cluster mode),
    /// and any user could start one per listed room. The address is
    /// forgotten first, so every later use starts the room again from the
    /// store; sessions only hold addresses of rooms they are members of,
    /// and those members are online, so such rooms are never idle.
    fn stop_idle_rooms(&mut self) {
        let idle = std::time::Duration::from_secs(self.settings.limits.room_idle_secs);
        let now = std::time::Instant::now();
        let online = &self.online;
        let mut stopped = Vec::new();
        for room_id in &self.running {
            let Some(entry) = self.dir.rooms.get_mut(room_id) else {
                stopped.push(room_id.clone());
                continue;
            };
            if !entry.addr.as_ref().is_some_and(|a| a.connected()) {
                stopped.push(room_id.clone());
                continue;
            }
            let used = entry.busy > 0
                || entry
                    .members
                    .iter()
                    .any(|m| online.get(m).is_some_and(|s| !s.is_empty()));
            if used {
                entry.quiet_since = None;
                continue;
            }
            let since = *entry.quiet_since.get_or_insert(now);
            if now.duration_since(since) >= idle {
                if let Some(addr) = entry.addr.take() {
                    addr.do_send(room::StopIdle);
                }
                entry.quiet_since = None;
                stopped.push(room_id.clone());
            }
        }
        for room_id in stopped {
            self.running.remove(&room_id);
        }
    }

    fn is_online(&self, username: &str) -> bool {
        self.online.get(username).is_some_and(|s| !s.is_empty()) || self.peers.is_online(username)
    }

    /// Users online (on any process).
    fn connected(&self) -> u64 {
        match self.cluster {
            Some(_) => self.anywhere as u64,
            None => self.online.len() as u64,
        }
    }

    /// Tells the other processes about a committed change to a room (and
    /// makes any reload of it that started before the change read again).
    fn announce(&mut self, room_id: &str, change: RoomChange, ctx: &mut Context<Self>) {
        if let Some(cluster) = &self.cluster {
            cluster.room_changed(room_id, change);
            self.superseded(room_id, ctx);
        }
    }

    fn summary(&self, entry: &RoomEntry) -> DirectorySummary {
        let r = &entry.record;
        DirectorySummary {
            room_id: r.room_id.clone(),
            name: r.name.clone(),
            owner: r.owner.clone(),
            members: entry.members.len() as u64,
            online: entry.members.iter().filter(|m| self.is_online(m)).count() as u64,
            has_password: r.password_hash.is_some(),
            hidden: r.hidden,
            created_at: r.created_at,
            last_seq: entry.last_seq(),
        }
    }

    fn sessions_of(&self, username: &str) -> Vec<SessionHandle> {
        self.online
            .get(username)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    fn forget_room(&mut self, room_id: &str) {
        self.room_loads.remove(room_id);
        self.dir.forget(room_id);
    }

    /// Keeps a user's parsed keys for later logins. The cache is bounded:
    /// past [`USER_CACHE`] entries, users without a connection are dropped
    /// (they are read from the store again when they next log in).
    fn cache_user(&mut self, user: Arc<User>) -> Arc<User> {
        if self.users.len() >= USER_CACHE && !self.users.contains_key(&user.username) {
            let before = self.users.len();
            let online = &self.online;
            self.users
                .retain(|name, _| online.get(name).is_some_and(|s| !s.is_empty()));
            log::info!(
                "user cache full: dropped {} offline users",
                before - self.users.len()
            );
        }
        self.users
            .entry(user.username.clone())
            .or_insert(user)
            .clone()
    }

    /// Rooms the user belongs to, plus joins and creations in flight.
    fn room_count(&self, username: &str) -> usize {
        self.dir.user_rooms.get(username).map_or(0, |s| s.len())
            + self.pending_rooms.count(&username.to_owned())
    }

    fn reserve_room(&mut self, username: &str) {
        self.pending_rooms.hold(&username.to_owned());
    }

    fn release_room(&mut self, username: &str) {
        self.pending_rooms.release(&username.to_owned());
    }

    /// `unknown_user` unless `username` is registered (cache, then store).
    fn user_exists(&self, username: &str) -> impl std::future::Future<Output = RegistryResult<()>> {
        let lookup = (!self.users.contains_key(username)).then(|| self.store.get_user(username));
        async move {
            match lookup {
                None => Ok(()),
                Some(get) => match get.await.map_err(internal)? {
                    Some(_) => Ok(()),
                    None => Err(ErrorCode::UnknownUser.into()),
                },
            }
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::util::MAILBOX_CAPACITY);
        self.start_heartbeat(ctx);
        let idle = self.settings.limits.room_idle_secs;
        if idle > 0 {
            let every = std::time::Duration::from_millis((idle * 1000 / 4).clamp(250, 30_000));
            ctx.run_interval(every, |act, _| act.stop_idle_rooms());
        }
        let load = self.store.load_directory();
        ctx.wait(load.into_actor(self).map(|res, act, _| match res {
            Ok(entries) => {
                log::info!("directory loaded: {} rooms", entries.len());
                act.dir.load(entries);
            }
            Err(e) => log::error!("could not load the room directory: {e}"),
        }));
    }
}

// ---------------------------------------------------------------- rooms

#[derive(Message)]
#[rtype(result = "ListedRooms")]
pub struct ListRooms {
    pub username: String,
    pub offset: usize,
    pub limit: usize,
}

pub struct ListedRooms {
    pub rooms: Vec<DirectorySummary>,
    /// Each room's epoch (as its running room last reported it).
    pub epochs: Vec<u64>,
    pub total: u64,
    pub connected: u64,
}

impl Handler<ListRooms> for Registry {
    type Result = MessageResult<ListRooms>;

    /// Pages the public rooms from the kept order, merged with the
    /// requester's own hidden rooms (at most `max_rooms_per_user`): no
    /// sorting and no pass over every room per request.
    fn handle(&mut self, msg: ListRooms, _: &mut Self::Context) -> Self::Result {
        let mut mine: Vec<ListKey> = self
            .dir
            .rooms_of(&msg.username)
            .filter_map(|id| self.dir.rooms.get(id))
            .filter(|e| e.record.hidden)
            .map(RoomEntry::list_key)
            .collect();
        mine.sort();
        let total = (self.dir.listing.len() + mine.len()) as u64;
        let (rooms, epochs) = merge(self.dir.listing.iter(), mine.iter())
            .skip(msg.offset)
            .take(msg.limit)
            .filter_map(|k| self.dir.rooms.get(&k.room_id))
            .map(|e| (self.summary(e), e.epoch.load(Ordering::Relaxed)))
            .unzip();
        MessageResult(ListedRooms {
            rooms,
            epochs,
            total,
            connected: self.connected(),
        })
    }
}

/// Resolves a room id to its running actor (starting it if needed).
#[derive(Message)]
#[rtype(result = "Option<Addr<RoomActor>>")]
pub struct Resolve {
    pub room_id: String,
}

impl Handler<Resolve> for Registry {
    type Result = Option<Addr<RoomActor>>;

    fn handle(&mut self, msg: Resolve, ctx: &mut Self::Context) -> Self::Result {
        self.room_addr(&msg.room_id, ctx.address())
    }
}

/// A joined room as the session needs it: the reply and the room's address.
pub struct JoinedRoom {
    pub room: DirectorySummary,
    pub members: Vec<Member>,
    pub addr: Addr<RoomActor>,
    /// The group's epoch and whether this device has a leaf.
    pub group: Option<(u64, bool)>,
}

#[derive(Message)]
#[rtype(result = "RegistryResult<JoinedRoom>")]
pub struct CreateRoom {
    pub user: Arc<User>,
    pub name: String,
    pub password: Option<String>,
    pub hidden: bool,
    /// The creator's epoch-0 group, checked by the session; the room's id
    /// comes from its group id.
    pub group: GroupRow,
}

impl Handler<CreateRoom> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<JoinedRoom>>;

    fn handle(&mut self, msg: CreateRoom, _: &mut Self::Context) -> Self::Result {
        if let Err(f) = self.take_churn(&msg.user.username) {
            return failed(f);
        }
        let room_id = crate::identity::room_id_of_group_id(&msg.group.group_id);
        if self.dir.rooms.contains_key(&room_id) {
            return failed(ErrorCode::RoomExists);
        }
        let folded = room_name_key(&msg.name, msg.hidden, &room_id);
        if self.dir.names.contains_key(&folded) {
            return failed(ErrorCode::RoomExists);
        }
        if self.room_count(&msg.user.username) >= self.settings.limits.max_rooms_per_user {
            return failed(ErrorCode::TooManyRooms);
        }
        self.dir.names.insert(folded.clone(), room_id.clone());
        self.reserve_room(&msg.user.username);
        let record = RoomRecord {
            room_id,
            name: msg.name,
            owner: msg.user.username.clone(),
            password_hash: None,
            hidden: msg.hidden,
            created_at: now_ms(),
            last_seq: 0,
        };
        let store = self.store.clone();
        let hashed = msg
            .password
            .map(|pw| self.hasher.hash(&msg.user.username, pw));
        let group = msg.group;
        let work = async move {
            let mut record = record;
            if let Some(hashed) = hashed {
                record.password_hash = Some(hashed.await?);
            }
            match store.create_group_room(record.clone(), group).await {
                Ok(()) => Ok(record),
                Err(StoreError::Conflict(_)) => Err(ErrorCode::RoomExists.into()),
                // Rooms joined or created through other processes.
                Err(StoreError::TooManyRooms) => Err(ErrorCode::TooManyRooms.into()),
                Err(e) => Err(internal(e)),
            }
        };
        let user = msg.user;
        Box::pin(
            work.into_actor(self)
                .map(move |res: RegistryResult<RoomRecord>, act, ctx| {
                    act.release_room(&user.username);
                    let record = match res {
                        Ok(record) => record,
                        Err(f) => {
                            act.dir.names.remove(&folded);
                            return Err(f);
                        }
                    };
                    let room_id = record.room_id.clone();
                    let username = user.username.clone();
                    log::info!("{username} created room {room_id} ({:?})", record.name);
                    act.announce(&room_id, RoomChange::Created, ctx);
                    act.dir.insert(RoomEntry::new(record, IndexSet::new()));
                    act.dir.add_membership(&room_id, &username);
                    let addr = act
                        .room_addr(&room_id, ctx.address())
                        .expect("just inserted");
                    for handle in act.sessions_of(&username) {
                        addr.do_send(room::Attach {
                            username: username.clone(),
                            handle,
                        });
                    }
                    let entry = &act.dir.rooms[&room_id];
                    Ok(JoinedRoom {
                        room: act.summary(entry),
                        members: vec![
                            user.member(act.is_online(&username), entry.record.created_at)
                        ],
                        addr,
                        group: Some((0, true)),
                    })
                }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "RegistryResult<JoinedRoom>")]
pub struct JoinRoom {
    pub user: Arc<User>,
    pub room_id: String,
    pub password: Option<String>,
    /// The client's address (its password attempts are budgeted by it too).
    pub ip: std::net::IpAddr,
    /// The connection's device (for `in_group`).
    pub device: Vec<u8>,
}

impl Handler<JoinRoom> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<JoinedRoom>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) -> Self::Result {
        let Some(addr) = self.room_addr(&msg.room_id, ctx.address()) else {
            if self.cluster.is_some() {
                // Perhaps created on another process a moment ago.
                return self.join_unknown(msg);
            }
            return failed(ErrorCode::NoSuchRoom);
        };
        let username = msg.user.username.clone();
        if let Err(f) = self.take_churn(&username) {
            return failed(f);
        }
        self.busy(&msg.room_id, true);
        let join = addr.send(room::Join {
            sessions: self.sessions_of(&username),
            room_count: self.room_count(&username),
            user: msg.user,
            password: msg.password,
            ip: msg.ip,
            device: msg.device,
        });
        self.reserve_room(&username);
        let room_id = msg.room_id;
        Box::pin(join.into_actor(self).map(move |res, act, ctx| {
            act.busy(&room_id, false);
            act.release_room(&username);
            let joined = res.map_err(|_| Failure::from(ErrorCode::NoSuchRoom))??;
            if joined.added {
                log::info!("{username} joined {room_id}");
                act.dir.add_membership(&room_id, &username);
                act.announce(&room_id, RoomChange::Joined(username.clone()), ctx);
                // A session of this user that logged in while the join was in
                // flight was not in the list the room got.
                for handle in act.sessions_of(&username) {
                    addr.do_send(room::Attach {
                        username: username.clone(),
                        handle,
                    });
                }
            }
            Ok(JoinedRoom {
                room: joined.room,
                members: joined.members,
                addr,
                group: joined.group,
            })
        }))
    }
}

#[derive(Message)]
#[rtype(result = "RegistryResult<()>")]
pub struct LeaveRoom {
    pub username: String,
    pub room_id: String,
}

impl Handler<LeaveRoom> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<()>>;

    fn handle(&mut self, msg: LeaveRoom, ctx: &mut Self::Context) -> Self::Result {
        let Some(addr) = self.room_addr(&msg.room_id, ctx.address()) else {
            return failed(ErrorCode::NoSuchRoom);
        };
        if let Err(f) = self.take_churn(&msg.username) {
            return failed(f);
        }
        let leave = addr.send(room::Leave {
            username: msg.username.clone(),
        });
        self.busy(&msg.room_id, true);
        Box::pin(leave.into_actor(self).map(move |res, act, ctx| {
            act.busy(&msg.room_id, false);
            let left = res.map_err(|_| Failure::from(ErrorCode::NoSuchRoom))??;
            log::info!("{} left {}", msg.username, msg.room_id);
            if left.deleted {
                log::info!("room {} deleted: its last member left", msg.room_id);
                act.forget_room(&msg.room_id);
                act.announce(&msg.room_id, RoomChange::Deleted, ctx);
            } else {
                act.dir.remove_membership(&msg.room_id, &msg.username);
                act.announce(
                    &msg.room_id,
                    RoomChange::Removed {
                        user: msg.username.clone(),
                        reason: "left".into(),
                    },
                    ctx,
                );
            }
            Ok(())
        }))
    }
}

#[derive(Message)]
#[rtype(result = "RegistryResult<()>")]
pub struct OwnerRequest {
    pub username: String,
    pub room_id: String,
    pub action: OwnerAction,
}

impl Handler<OwnerRequest> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<()>>;

    fn handle(&mut self, msg: OwnerRequest, ctx: &mut Self::Context) -> Self::Result {
        let Some(addr) = self.room_addr(&msg.room_id, ctx.address()) else {
            return failed(ErrorCode::NoSuchRoom);
        };
        if let OwnerAction::Rename(name) = &msg.action {
            let hidden = self.dir.rooms[&msg.room_id].record.hidden;
            let taken = self
                .dir
                .names
                .get(&room_name_key(name, hidden, &msg.room_id))
                .is_some_and(|id| *id != msg.room_id);
            if taken && self.dir.rooms[&msg.room_id].record.owner == msg.username {
                return failed(ErrorCode::RoomExists);
            }
        }
        let target_known = match &msg.action {
            OwnerAction::Kick(target) | OwnerAction::Ban(target) | OwnerAction::Unban(target) => {
                Some(self.user_exists(target))
            }
            _ => None,
        };
        let change = match &msg.action {
            OwnerAction::Kick(target) => RoomChange::Removed {
                user: target.clone(),
                reason: "kicked".into(),
            },
            OwnerAction::Ban(target) => RoomChange::Removed {
                user: target.clone(),
                reason: "banned".into(),
            },
            OwnerAction::Delete => RoomChange::Deleted,
            _ => RoomChange::Updated,
        };
        let op = OwnerOp {
            by: msg.username.clone(),
            action: msg.action,
        };
        let work = async move {
            if let Some(known) = target_known {
                known.await?;
            }
            addr.send(op)
                .await
                .map_err(|_| Failure::from(ErrorCode::NoSuchRoom))?
        };
        let room_id = msg.room_id;
        self.busy(&room_id, true);
        Box::pin(work.into_actor(self).map(move |res, act, ctx| {
            act.busy(&room_id, false);
            let outcome: OwnerOutcome = res?;
            act.announce(&room_id, change, ctx);
            if outcome.deleted {
                log::info!("room {room_id} deleted by {}", msg.username);
                act.forget_room(&room_id);
                return Ok(());
            }
            if let Some(removed) = outcome.removed {
                act.dir.remove_membership(&room_id, &removed);
            }
            if let Some(name) = outcome.renamed {
                act.dir.rename(&room_id, &name);
            }
            Ok(())
        }))
    }
}

impl Handler<RoomChanged> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _: &mut Self::Context) {
        let room_id = msg.record.room_id.clone();
        self.dir.set_record(&room_id, msg.record);
    }
}

/// Counts for `/metrics` and the bench: users online, rooms, rooms running.
#[derive(Message)]
#[rtype(result = "(u64, u64, u64)")]
pub struct Stats;

impl Handler<Stats> for Registry {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Self::Context) -> Self::Result {
        let running = self
            .running
            .iter()
            .filter(|r| {
                self.dir
                    .rooms
                    .get(*r)
                    .and_then(|e| e.addr.as_ref())
                    .is_some_and(|a| a.connected())
            })
            .count() as u64;
        MessageResult((self.connected(), self.dir.rooms.len() as u64, running))
    }
}
