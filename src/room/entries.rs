//! A room's MLS side (`PROTOCOL.md` section 3): the room's
//! group ([`GroupRoom`]) loaded with the room, and the requests that use it:
//! `group_state`, `commit`, `send`, `publish_group_info` and `history`.
//! Commits and messages go through the room's one ordered write queue
//! (`RoomActor::submit`), so `committed`, `sent` and `entry` leave in seq
//! order, and every member's connections get each entry as one shared frame.
//!
//! Who may hold a leaf follows the room: a member's devices enter the
//! roster when they join (read from the store) or are added, and leave it
//! when the member leaves, is kicked or banned, or removes the device.

use std::future::Future;

use actix::prelude::*;
use bytes::Bytes;

use super::group::{Devices, SendRefusal};
use super::{internal, GroupRoom, RoomActor, RoomResult};
use crate::mls::{CommitError, Committer};
use crate::protocol::Member;
use crate::protocol::ServerMsg;
use crate::protocol::{ErrorCode, Failure};
use crate::store::{
    Appended, EntryHistory, EntryKind, HistoryQuery, LogEntry, NewEntry, SharedStore, StoreError,
};

/// A room's group as read from the store, with its members' devices.
pub(super) type GroupLoad = Option<(crate::store::GroupRow, Devices)>;

/// Reads the room's group row and its members' live devices.
pub(super) fn load_group(
    store: &SharedStore,
    room_id: &str,
) -> impl Future<Output = Result<GroupLoad, StoreError>> {
    let row = store.load_group(room_id);
    let devices = store.room_devices(room_id);
    async move {
        let Some(row) = row.await? else {
            return Ok(None);
        };
        let mut roster = Devices::default();
        for d in devices.await? {
            roster.add(&d.username, &d.device_id, d.certificate);
        }
        Ok(Some((row, roster)))
    }
}

fn commit_failure(e: CommitError) -> Failure {
    match e {
        CommitError::InvalidGroup(why) => Failure::new(ErrorCode::InvalidGroup, why),
        CommitError::StaleEpoch(epoch) | CommitError::Ahead(epoch) => Failure::stale_epoch(epoch),
        CommitError::NotAllowed(why) => Failure::new(ErrorCode::NotAllowed, why),
    }
}

fn too_large(what: &str, len: usize, max: usize) -> Failure {
    Failure::new(
        ErrorCode::TooLarge,
        format!("the {what} is {len} bytes; the limit is {max}"),
    )
}

impl RoomActor {
    /// Takes the group as read from the store. `false` if the room has no
    /// group (a damaged database) or its state does not load.
    pub(super) fn take_group(&mut self, loaded: GroupLoad) -> bool {
        let Some((row, devices)) = loaded else {
            log::error!("room {} has no MLS group", self.record.room_id);
            return false;
        };
        match GroupRoom::load(&self.record.room_id, &row, devices) {
            Ok(group) => {
                self.directory
                    .epoch
                    .store(group.epoch(), std::sync::atomic::Ordering::Relaxed);
                self.group = Some(group);
                true
            }
            Err(e) => {
                log::error!(
                    "room {}: the stored group does not load: {e}",
                    self.record.room_id
                );
                false
            }
        }
    }

    /// The group here moved ahead of the store (a commit it refused or that
    /// failed), or behind it (another process's commit): reads the stored
    /// group again.
    pub(super) fn reload_group(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "room {}: reading the group again from the store",
            self.record.room_id
        );
        let reload = self.with_stored_group();
        ctx.spawn(reload);
    }

    /// A commit this room did not make (another process's, read from the
    /// channel or the store) moved the group past this room's copy: read the
    /// stored group again. (This room's own commits carry their group change
    /// and are in its copy already.)
    pub(super) fn follow_commit(&mut self, e: &NewEntry, ctx: &mut Context<Self>) {
        let behind = self
            .group
            .as_ref()
            .is_some_and(|g| e.entry.epoch > g.epoch());
        if e.commit.is_none() && e.entry.kind == EntryKind::Commit && behind {
            self.reload_group(ctx);
        }
    }

    /// Who may hold a leaf, read again from the store (after another
    /// process changed the room's members).
    pub(super) fn reload_devices(&mut self, ctx: &mut Context<Self>) {
        if self.group.is_none() {
            return;
        }
        let read = self.store.room_devices(&self.record.room_id);
        ctx.spawn(read.into_actor(self).map(|res, act, _| match res {
            Ok(devices) => {
                if let Some(group) = &mut act.group {
                    group.update_devices(|roster| {
                        *roster = Devices::default();
                        for d in devices {
                            roster.add(&d.username, &d.device_id, d.certificate);
                        }
                    });
                }
            }
            Err(e) => log::warn!("room {}: devices reload: {e}", act.record.room_id),
        }));
    }

    /// The `member_joined` event.
    pub(super) fn member_joined_frame(&self, member: Member) -> Bytes {
        let room_id = self.record.room_id.clone();
        Bytes::from(ServerMsg::MemberJoined { room_id, member }.encode())
    }

    fn member_group(&self, username: &str) -> RoomResult<&GroupRoom> {
        if !self.members.contains_key(username) {
            return Err(ErrorCode::NotMember.into());
        }
        self.group
            .as_ref()
            .ok_or_else(|| internal("a room without its group"))
    }

    fn member_group_mut(&mut self, username: &str) -> RoomResult<&mut GroupRoom> {
        self.member_group(username)?;
        Ok(self.group.as_mut().expect("checked"))
    }

    /// A member's devices entered the room (read with the join).
    pub(super) fn add_member_devices(&mut self, devices: Vec<crate::store::DeviceRecord>) {
        if let Some(group) = &mut self.group {
            group.update_devices(|roster| {
                for d in devices {
                    roster.add(&d.username, &d.device_id, d.certificate);
                }
            });
        }
    }

    /// A member left, was kicked or banned: their leaves are to remove.
    pub(super) fn remove_member_devices(&mut self, username: &str) {
        if let Some(group) = &mut self.group {
            group.update_devices(|roster| roster.remove_user(username));
        }
    }
}

/// `in_group` and the epoch for a summary (`logged_in`, `joined`).
#[derive(Message)]
#[rtype(result = "Option<(u64, bool)>")]
pub struct GroupView {
    pub username: String,
    pub device_id: Vec<u8>,
}

impl Handler<GroupView> for RoomActor {
    type Result = Option<(u64, bool)>;

    fn handle(&mut self, msg: GroupView, _: &mut Self::Context) -> Self::Result {
        let group = self.group.as_ref()?;
        Some((group.epoch(), group.in_group(&msg.username, &msg.device_id)))
    }
}

/// `group_state`: the epoch, the GroupInfo and the tree.
#[derive(Message)]
#[rtype(result = "RoomResult<(u64, Vec<u8>, Vec<u8>)>")]
pub struct GroupState {
    pub username: String,
}

impl Handler<GroupState> for RoomActor {
    type Result = RoomResult<(u64, Vec<u8>, Vec<u8>)>;

    fn handle(&mut self, msg: GroupState, _: &mut Self::Context) -> Self::Result {
        let (epoch, info, tree) = self.member_group(&msg.username)?.group_state();
        Ok((epoch, info.to_vec(), tree))
    }
}

/// The device a request comes from (the connection's proved device).
pub struct FromDevice {
    pub username: String,
    pub device_id: Vec<u8>,
    pub certificate: Vec<u8>,
}

impl FromDevice {
    fn committer(&self) -> Committer<'_> {
        Committer {
            user: &self.username,
            device: &self.device_id,
            certificate: &self.certificate,
        }
    }
}

/// `commit`: answers the new entry's seq and the new epoch.
#[derive(Message)]
#[rtype(result = "RoomResult<(u64, u64)>")]
pub struct Commit {
    pub from: FromDevice,
    pub commit: Vec<u8>,
    pub group_info: Vec<u8>,
}

impl Handler<Commit> for RoomActor {
    type Result = ResponseActFuture<Self, RoomResult<(u64, u64)>>;

    fn handle(&mut self, msg: Commit, ctx: &mut Self::Context) -> Self::Result {
        self.commit(msg, true, ctx)
    }
}

impl RoomActor {
    /// `commit` (see [`Commit`]). `may_reload`: a commit for a later epoch
    /// than this copy of the group's reads the stored group first, once (with
    /// several processes, another one may have moved it on).
    fn commit(
        &mut self,
        msg: Commit,
        may_reload: bool,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, RoomResult<(u64, u64)>> {
        let max = self.settings.limits.max_commit_bytes;
        let checked = self
            .member_group_mut(&msg.from.username)
            .map_err(Refused::from)
            .and_then(|group| {
                let len = msg.commit.len() + msg.group_info.len();
                if len > max {
                    return Err(too_large("commit", len, max).into());
                }
                group
                    .commit(&msg.commit, &msg.group_info, msg.from.committer())
                    .map_err(Refused::Commit)
            });
        let entry = match checked {
            Ok(entry) => entry,
            Err(Refused::Commit(CommitError::Ahead(_))) if may_reload && self.cluster.is_some() => {
                return Box::pin(
                    self.with_stored_group()
                        .then(move |(), act, ctx| act.commit(msg, false, ctx)),
                );
            }
            Err(refused) => return Box::pin(fut::ready(Err(refused.into()))),
        };
        let epoch = entry.entry.epoch;
        log::debug!(
            "room {}: {} commits epoch {epoch}",
            self.record.room_id,
            msg.from.username
        );
        self.directory
            .epoch
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
        let append = self.store.append_entry(entry.clone());
        let done = self.submit(entry, append, ctx);
        Box::pin(async move { done.await.map(|a| (a.seq, epoch)) }.into_actor(self))
    }

    /// Reads the stored group (and devices) and takes it.
    fn with_stored_group(&mut self) -> impl ActorFuture<Self, Output = ()> {
        load_group(&self.store, &self.record.room_id)
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(loaded) => {
                    if !act.take_group(loaded) {
                        ctx.stop();
                    }
                }
                Err(e) => log::warn!("room {}: group reload failed: {e}", act.record.room_id),
            })
    }
}

/// A refusal before the store: a failure, or what the group said.
enum Refused {
    Failure(Failure),
    Commit(CommitError),
    Send(SendRefusal),
}

impl From<Failure> for Refused {
    fn from(f: Failure) -> Self {
        Refused::Failure(f)
    }
}

impl From<Refused> for Failure {
    fn from(r: Refused) -> Failure {
        match r {
            Refused::Failure(f) => f,
            Refused::Commit(e) => commit_failure(e),
            Refused::Send(SendRefusal::Invalid(e)) => {
                Failure::new(ErrorCode::InvalidMessage, e.to_string())
            }
            Refused::Send(SendRefusal::CommitRequired(leaves)) => Failure::commit_required(leaves),
            Refused::Send(SendRefusal::StaleEpoch(current) | SendRefusal::Ahead(current)) => {
                Failure::stale_epoch(current)
            }
        }
    }
}

/// `send`: one application PrivateMessage.
#[derive(Message)]
#[rtype(result = "RoomResult<Appended>")]
pub struct SendMessage {
    pub username: String,
    pub device_id: Vec<u8>,
    pub msg_id: Vec<u8>,
    pub message: Vec<u8>,
}

impl Handler<SendMessage> for RoomActor {
    type Result = ResponseActFuture<Self, RoomResult<Appended>>;

    fn handle(&mut self, msg: SendMessage, ctx: &mut Self::Context) -> Self::Result {
        self.send_entry(msg, true, ctx)
    }
}

impl RoomActor {
    /// `send` (see [`SendMessage`]); `may_reload` as for [`RoomActor::commit`].
    fn send_entry(
        &mut self,
        msg: SendMessage,
        may_reload: bool,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, RoomResult<Appended>> {
        let max = self.settings.limits.max_message_bytes;
        let checked = self
            .member_group(&msg.username)
            .map_err(Refused::from)
            .and_then(|group| {
                if msg.message.len() > max {
                    return Err(too_large("message", msg.message.len(), max).into());
                }
                if msg.msg_id.len() != crate::crypto::MSG_ID_LEN {
                    return Err(
                        Failure::new(ErrorCode::InvalidMessage, "msg_id must be 16 bytes").into(),
                    );
                }
                group.check_message(&msg.message).map_err(Refused::Send)
            });
        let epoch = match checked {
            Ok(epoch) => epoch,
            Err(Refused::Send(SendRefusal::Ahead(_))) if may_reload && self.cluster.is_some() => {
                return Box::pin(
                    self.with_stored_group()
                        .then(move |(), act, ctx| act.send_entry(msg, false, ctx)),
                );
            }
            Err(Refused::Send(
                refusal @ (SendRefusal::CommitRequired(_)
                | SendRefusal::StaleEpoch(_)
                | SendRefusal::Ahead(_)),
            )) => {
                let failure = Failure::from(Refused::Send(refusal));
                // A resend of a stored message still answers its `sent`.
                let lookup =
                    self.store
                        .find_entry(&self.record.room_id, &msg.device_id, &msg.msg_id);
                return Box::pin(super::resend_or(lookup, failure).into_actor(self));
            }
            Err(refused) => return Box::pin(fut::ready(Err(refused.into()))),
        };
        let entry = std::sync::Arc::new(NewEntry {
            room_id: self.record.room_id.clone(),
            entry: LogEntry {
                kind: EntryKind::Message,
                sender: msg.username,
                device_id: msg.device_id,
                epoch,
                data: msg.message,
                msg_id: Some(msg.msg_id),
                group_info: None,
            },
            commit: None,
        });
        let append = self.store.append_entry(entry.clone());
        Box::pin(self.submit(entry, append, ctx).into_actor(self))
    }
}

/// `publish_group_info`: a GroupInfo of the current epoch signed by this
/// device's leaf replaces the stored one.
#[derive(Message)]
#[rtype(result = "RoomResult<()>")]
pub struct PublishGroupInfo {
    pub from: FromDevice,
    pub group_info: Vec<u8>,
}

impl Handler<PublishGroupInfo> for RoomActor {
    type Result = ResponseFuture<RoomResult<()>>;

    fn handle(&mut self, msg: PublishGroupInfo, _: &mut Self::Context) -> Self::Result {
        let checked = self.member_group_mut(&msg.from.username).and_then(|group| {
            group
                .publish_group_info(&msg.group_info, msg.from.committer())
                .map_err(commit_failure)
        });
        let epoch = match checked {
            Ok(epoch) => epoch,
            Err(f) => return Box::pin(async move { Err(f) }),
        };
        let write = self
            .store
            .set_group_info(&self.record.room_id, epoch, msg.group_info);
        Box::pin(async move {
            match write.await {
                Ok(true) => Ok(()),
                // Another process's commit moved the group on meanwhile.
                Ok(false) => Err(Failure::stale_epoch(epoch + 1)),
                Err(e) => Err(internal(e)),
            }
        })
    }
}

/// `history`: the room's entries from the requester's membership periods.
#[derive(Message)]
#[rtype(result = "RoomResult<EntryHistory>")]
pub struct History {
    pub username: String,
    pub query: HistoryQuery,
}

impl Handler<History> for RoomActor {
    type Result = ResponseFuture<RoomResult<EntryHistory>>;

    fn handle(&mut self, msg: History, _: &mut Self::Context) -> Self::Result {
        if let Err(f) = self.member_group(&msg.username) {
            return Box::pin(async move { Err(f) });
        }
        let read = self
            .store
            .entry_history(&self.record.room_id, &msg.username, msg.query);
        Box::pin(async move { read.await.map_err(internal) })
    }
}

/// A member's device was added (its certificate) or removed (`None`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceChange {
    pub username: String,
    pub device_id: Vec<u8>,
    pub certificate: Option<Vec<u8>>,
}

impl Handler<DeviceChange> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: DeviceChange, _: &mut Self::Context) {
        if !self.members.contains_key(&msg.username) {
            return;
        }
        if let Some(group) = &mut self.group {
            group.update_devices(|roster| match msg.certificate {
                Some(cert) => roster.add(&msg.username, &msg.device_id, cert),
                None => roster.remove(&msg.username, &msg.device_id),
            });
        }
    }
}
