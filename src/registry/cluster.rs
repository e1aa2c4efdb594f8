//! The Registry's side of several processes: presence of the users of the
//! other processes (and this one's, told to them), and room changes made
//! elsewhere, read back from the database and handed to the running room.

use std::time::{Duration, Instant};

use actix::prelude::*;
use indexmap::IndexSet;

use super::{Registry, RoomEntry};
use crate::cluster::{presence::Change, Ctl, FromCluster, RoomChange};
use crate::room::{self, RoomActor};
use crate::store::RoomState;

impl Registry {
    /// A change to the room was just committed here: a reload in flight
    /// read the store before it and must not be applied; read again.
    pub(super) fn superseded(&mut self, room_id: &str, ctx: &mut Context<Self>) {
        let again = self
            .room_loads
            .get_mut(room_id)
            .and_then(|loads| loads.superseded());
        if let Some(change) = again {
            self.reload_room(room_id.to_owned(), change, ctx);
        }
    }

    /// Starts the heartbeat (and peer expiry) when in cluster mode.
    pub(super) fn start_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let every = Duration::from_millis(cluster.settings.heartbeat_ms);
        let timeout = Duration::from_millis(cluster.settings.peer_timeout_ms);
        ctx.run_interval(every, move |act, _| {
            let Some(cluster) = &act.cluster else {
                return;
            };
            cluster.publish_ctl(&Ctl::Alive {
                proc: cluster.proc,
                version: act.presence_version,
            });
            let mut changes = Vec::new();
            for dead in act.peers.expire(Instant::now(), timeout, &mut changes) {
                log::warn!("process {dead:016x} went silent: its users are offline");
            }
            act.remote_changes(changes);
        });
    }

    /// This process's sessions of `user` changed: `sessions` are open now;
    /// `first_or_last` when it was the first to open or the last to close.
    /// Told on every change, so the others can count `user`'s sessions
    /// against `max_connections_per_user`.
    pub(super) fn local_presence(&mut self, user: &str, sessions: usize, first_or_last: bool) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let online = sessions > 0;
        if first_or_last && !self.peers.is_online(user) {
            if online {
                self.anywhere += 1;
            } else {
                self.anywhere = self.anywhere.saturating_sub(1);
            }
        }
        self.presence_version += 1;
        cluster.publish_ctl(&Ctl::Presence {
            proc: cluster.proc,
            version: self.presence_version,
            user: user.to_owned(),
            online,
            sessions: sessions as u32,
        });
    }

    /// `user`'s sessions on the other processes.
    pub(super) fn sessions_elsewhere(&self, user: &str) -> usize {
        self.peers.sessions_elsewhere(user) as usize
    }

    /// Users who came online or went offline on the other processes: counts,
    /// and the rooms here they belong to.
    fn remote_changes(&mut self, changes: Vec<Change>) {
        for (user, online) in changes {
            if !self.online.contains_key(&user) {
                if online {
                    self.anywhere += 1;
                } else {
                    self.anywhere = self.anywhere.saturating_sub(1);
                }
            }
            for room_id in self.dir.user_rooms.get(&user).into_iter().flatten() {
                if let Some(addr) = self.running(room_id) {
                    addr.do_send(room::Elsewhere {
                        username: user.clone(),
                        online,
                    });
                }
            }
        }
    }

    fn running(&self, room_id: &str) -> Option<Addr<RoomActor>> {
        self.dir
            .rooms
            .get(room_id)
            .and_then(|e| e.addr.clone())
            .filter(|a| a.connected())
    }

    fn snapshot(&self) -> Ctl {
        let cluster = self.cluster.as_ref().expect("cluster mode");
        let (users, sessions) = self
            .online
            .iter()
            .map(|(u, s)| (u.clone(), s.len() as u32))
            .unzip();
        Ctl::Snapshot {
            proc: cluster.proc,
            version: self.presence_version,
            users,
            sessions,
        }
    }

    fn ask_snapshot(&self, of: u64) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_ctl(&Ctl::SnapshotRequest { of });
        }
    }

    /// Reads a room changed by another process and applies it (see
    /// `cluster::reloads`: the newest read counts, and reads are coalesced).
    fn reload_room(&mut self, room_id: String, change: RoomChange, ctx: &mut Context<Self>) {
        let loads = self.room_loads.entry(room_id.clone()).or_default();
        let Some(generation) = loads.want(change.clone()) else {
            return;
        };
        let load = self.store.load_room(&room_id);
        ctx.spawn(load.into_actor(self).map(move |res, act, ctx| {
            let loads = act.room_loads.entry(room_id.clone()).or_default();
            let (apply, next) = loads.finished(generation, res.is_ok());
            if let Some(next) = next {
                act.reload_room(room_id.clone(), next, ctx);
            }
            let state = match res {
                Ok(state) => state,
                Err(e) => {
                    log::warn!("could not reload room {room_id}: {e}");
                    return;
                }
            };
            if apply {
                act.apply_room_state(&room_id, state, change, ctx);
            }
        }));
    }

    /// Makes the directory entry match the committed state, and hands the
    /// state to the room if it runs here.
    fn apply_room_state(
        &mut self,
        room_id: &str,
        state: RoomState,
        change: RoomChange,
        ctx: &mut Context<Self>,
    ) {
        let Some(record) = state.record.clone() else {
            if let Some(addr) = self.running(room_id) {
                addr.do_send(room::Reload {
                    change,
                    attach: Vec::new(),
                    elsewhere: Default::default(),
                });
            }
            self.forget_room(room_id);
            return;
        };
        if !self.dir.rooms.contains_key(room_id) {
            self.dir
                .insert(RoomEntry::new(record.clone(), IndexSet::new()));
        } else {
            self.dir.set_record(room_id, record.clone());
        }
        let names: IndexSet<String> = state
            .members
            .iter()
            .map(|m| m.user.username.clone())
            .collect();
        let old = self.dir.rooms[room_id].members.clone();
        for gone in old.iter().filter(|n| !names.contains(*n)) {
            self.dir.remove_membership(room_id, gone);
        }
        let mut attach = Vec::new();
        for new in names.iter().filter(|n| !old.contains(*n)) {
            self.dir.add_membership(room_id, new);
            for handle in self.sessions_of(new) {
                attach.push((new.clone(), handle));
            }
        }
        let elsewhere = names
            .iter()
            .filter(|n| self.peers.is_online(n))
            .cloned()
            .collect();
        match self.running(room_id) {
            Some(addr) => addr.do_send(room::Reload {
                change,
                attach,
                elsewhere,
            }),
            // A user with sessions here joined on another process: start the
            // room here so they get its messages live (it loads the members).
            None if !attach.is_empty() => {
                if let Some(addr) = self.room_addr(room_id, ctx.address()) {
                    for (username, handle) in attach {
                        addr.do_send(room::Attach { username, handle });
                    }
                }
            }
            None => {}
        }
    }

    /// A join of a room this process has not heard of: it may have been
    /// created on another process a moment ago. Reads it from the database
    /// and, when it exists, joins as usual.
    pub(super) fn join_unknown(
        &mut self,
        msg: super::JoinRoom,
    ) -> ResponseActFuture<Self, super::RegistryResult<super::JoinedRoom>> {
        use crate::protocol::{ErrorCode, Failure};
        let load = self.store.load_room(&msg.room_id);
        Box::pin(load.into_actor(self).then(move |res, act, ctx| {
            let found = match res {
                Ok(state) if state.record.is_some() => {
                    let room_id = msg.room_id.clone();
                    act.apply_room_state(&room_id, state, RoomChange::Created, ctx);
                    act.dir.rooms.contains_key(&room_id)
                }
                _ => false,
            };
            let me = ctx.address();
            async move {
                if !found {
                    return Err(Failure::from(ErrorCode::NoSuchRoom));
                }
                me.send(msg)
                    .await
                    .map_err(|_| Failure::from(ErrorCode::Internal))?
            }
            .into_actor(act)
        }))
    }

    /// After a lost Redis connection: anything may have been missed. Every
    /// room running here reloads, the directory is read again, and presence
    /// is exchanged anew.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        let running: Vec<String> = self
            .dir
            .rooms
            .iter()
            .filter(|(_, e)| e.addr.as_ref().is_some_and(|a| a.connected()))
            .map(|(id, _)| id.clone())
            .collect();
        for room_id in running {
            self.reload_room(room_id, RoomChange::Updated, ctx);
        }
        let load = self.store.load_directory();
        ctx.spawn(load.into_actor(self).map(|res, act, ctx| {
            let Ok(entries) = res else {
                log::warn!("could not reload the directory after a lost connection");
                return;
            };
            let known: Vec<String> = act.dir.rooms.keys().cloned().collect();
            for room_id in known {
                if !entries.iter().any(|e| e.room.room_id == room_id) {
                    act.reload_room(room_id, RoomChange::Deleted, ctx);
                }
            }
            for entry in entries {
                let same = act.dir.rooms.get(&entry.room.room_id).is_some_and(|e| {
                    e.members.iter().eq(entry.members.iter()) && e.record.name == entry.room.name
                });
                if !same {
                    act.reload_room(entry.room.room_id, RoomChange::Updated, ctx);
                }
            }
        }));
    }
}

impl Handler<FromCluster> for Registry {
    type Result = ();

    fn handle(&mut self, msg: FromCluster, ctx: &mut Self::Context) {
        let Some(me) = self.cluster.as_ref().map(|c| c.proc) else {
            return;
        };
        let now = Instant::now();
        let mut changes = Vec::new();
        match msg {
            FromCluster::Up => {
                self.subscriptions += 1;
                if let Some(cluster) = &self.cluster {
                    cluster.publish_ctl(&self.snapshot());
                }
                // 0: every process answers with its snapshot.
                self.ask_snapshot(0);
                if self.subscriptions > 1 {
                    log::info!("redis is back: reloading rooms and directory");
                    self.resync(ctx);
                }
            }
            FromCluster::Ctl(ctl) => match ctl {
                Ctl::Alive { proc, version } => {
                    if self.peers.alive(proc, version, now) {
                        self.ask_snapshot(proc);
                    }
                }
                Ctl::Presence {
                    proc,
                    version,
                    user,
                    online,
                    sessions,
                } => {
                    if self.peers.presence(
                        proc,
                        version,
                        &user,
                        online,
                        sessions,
                        now,
                        &mut changes,
                    ) {
                        self.ask_snapshot(proc);
                    }
                }
                Ctl::SnapshotRequest { of } => {
                    if of == 0 || of == me {
                        if let Some(cluster) = &self.cluster {
                            cluster.publish_ctl(&self.snapshot());
                        }
                    }
                }
                Ctl::Snapshot {
                    proc,
                    version,
                    users,
                    sessions,
                } => self
                    .peers
                    .snapshot(proc, version, users, sessions, now, &mut changes),
                Ctl::Room {
                    room_id, change, ..
                } => self.reload_room(room_id, change, ctx),
                Ctl::Bye { proc } => self.peers.remove(proc, &mut changes),
            },
        }
        self.remote_changes(changes);
    }
}
