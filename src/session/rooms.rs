//! What a session asks of rooms (`PROTOCOL.md` section 3, Rooms, The room
//! log, History): `create_room` with the creator's group (checked here, on
//! the connection's worker, before the Registry sees it), `join_room`,
//! `list_rooms`, `get_members`, `group_state`, `commit`, `send`,
//! `publish_group_info` and `history`. Leaving and the owner operations are
//! in `mod.rs`.

use serde_bytes::ByteBuf;

use super::{Ctx, Session};
use crate::identity::room_id_of_group_id;
use crate::metrics;
use crate::mls::{Committer, RoomGroup};
use crate::protocol::{Entry, RoomSummary, ServerMsg};
use crate::protocol::{ErrorCode, Failure, PlainMsg, PlainRequest};
use crate::registry;
use crate::room::{self, FromDevice};
use crate::store::GroupRow;
use crate::validate;

/// The most a new group's GroupInfo or tree may take (one leaf: about 1 KiB
/// with a 4096-bit identity key's certificate).
const NEW_GROUP_BYTES: usize = 16 * 1024;

impl Session {
    /// The connection's proved device as the rooms need it.
    fn acting_device(&self) -> FromDevice {
        let device = self.device.as_ref().expect("a login sets the device");
        FromDevice {
            username: self.username().to_owned(),
            device_id: device.device_id.clone(),
            certificate: device.certificate.clone(),
        }
    }

    pub(super) fn group_state(&mut self, ctx: &mut Ctx, id: Option<u64>, room_id: String) {
        let username = self.username().to_owned();
        let rid = room_id.clone();
        self.ask_room(
            ctx,
            id,
            room_id,
            room::GroupState { username },
            move |_, (epoch, group_info, tree)| ServerMsg::GroupState {
                id,
                room_id: rid,
                epoch,
                group_info: ByteBuf::from(group_info),
                ratchet_tree: ByteBuf::from(tree),
            },
        );
    }

    pub(super) fn commit(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        room_id: String,
        commit: Vec<u8>,
        group_info: Vec<u8>,
    ) {
        let msg = room::Commit {
            from: self.acting_device(),
            commit,
            group_info,
        };
        let rid = room_id.clone();
        self.ask_room(ctx, id, room_id, msg, move |_, (seq, epoch)| {
            ServerMsg::Committed {
                id,
                room_id: rid,
                seq,
                epoch,
            }
        });
    }

    pub(super) fn send(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        room_id: String,
        msg_id: Vec<u8>,
        message: Vec<u8>,
    ) {
        let from = self.acting_device();
        let msg = room::SendMessage {
            username: from.username,
            device_id: from.device_id,
            msg_id: msg_id.clone(),
            message,
        };
        let rid = room_id.clone();
        self.ask_room(ctx, id, room_id, msg, move |_, appended| {
            if !appended.duplicate {
                metrics::inc(&metrics::MESSAGES_SENT);
            }
            PlainMsg::Sent {
                id,
                room_id: rid,
                msg_id: ByteBuf::from(msg_id),
                seq: appended.seq,
                ts: appended.ts,
            }
        });
    }

    pub(super) fn publish_group_info(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        room_id: String,
        group_info: Vec<u8>,
    ) {
        let msg = room::PublishGroupInfo {
            from: self.acting_device(),
            group_info,
        };
        self.ask_room(ctx, id, room_id, msg, move |_, ()| PlainMsg::Ok { id });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_room(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        name: String,
        password: Option<String>,
        hidden: Option<bool>,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) {
        if let Err(code) = validate::new_room(&name, password.as_deref()) {
            return self.fail(ctx, id, code);
        }
        // A new group has one leaf: its objects are small. Bigger ones are
        // refused before openmls checks every leaf of a tree.
        if group_info.len() > NEW_GROUP_BYTES || ratchet_tree.len() > NEW_GROUP_BYTES {
            return self.fail(
                ctx,
                id,
                Failure::new(
                    ErrorCode::InvalidGroup,
                    format!("a new group has one leaf: its GroupInfo and tree fit in {NEW_GROUP_BYTES} bytes"),
                ),
            );
        }
        let from = self.acting_device();
        let created = RoomGroup::create(
            group_info,
            ratchet_tree,
            Committer {
                user: &from.username,
                device: &from.device_id,
                certificate: &from.certificate,
            },
        );
        let group = match created {
            Ok(group) => group,
            Err(e) => {
                return self.fail(
                    ctx,
                    id,
                    Failure::new(ErrorCode::InvalidGroup, e.to_string()),
                )
            }
        };
        let row = GroupRow {
            group_id: group.group_id().to_vec(),
            epoch: 0,
            state: group.state(),
            group_info: group_info.to_vec(),
            removal_epoch: 0,
        };
        log::debug!(
            "session {}: creates {}",
            self.id,
            room_id_of_group_id(&row.group_id)
        );
        let msg = registry::CreateRoom {
            user: self.user.clone().expect("logged in"),
            name,
            password,
            hidden: hidden.unwrap_or(false),
            group: row,
        };
        self.ask_registry(ctx, id, msg, move |act, joined| act.joined(id, joined));
    }

    /// `joined`; the room's address is kept.
    fn joined(&mut self, id: Option<u64>, joined: registry::JoinedRoom) -> ServerMsg {
        self.rooms
            .insert(joined.room.room_id.clone(), joined.addr.clone());
        let (epoch, in_group) = joined.group.unwrap_or_default();
        ServerMsg::Joined {
            id,
            room: RoomSummary::new(joined.room, epoch, Some(in_group)),
            members: joined.members,
        }
    }

    /// `list_rooms`, `join_room`, `get_members` and `history`: the
    /// requests about rooms that carry no MLS object.
    pub(super) fn dispatch_rooms(&mut self, ctx: &mut Ctx, id: Option<u64>, request: PlainRequest) {
        let username = self.username().to_owned();
        match request {
            PlainRequest::ListRooms { offset, limit } => {
                let fut = self.list_rooms(offset, limit);
                self.answer(ctx, id, fut, move |_, listed| ServerMsg::Rooms {
                    id,
                    rooms: listed
                        .rooms
                        .into_iter()
                        .zip(listed.epochs)
                        .map(|(s, epoch)| RoomSummary::new(s, epoch, None))
                        .collect(),
                    total: listed.total,
                    connected: listed.connected,
                });
            }
            PlainRequest::JoinRoom { room_id, password } => {
                let msg = registry::JoinRoom {
                    user: self.user.clone().expect("logged in"),
                    room_id,
                    password,
                    ip: self.peer.ip,
                    device: self.acting_device().device_id,
                };
                self.ask_registry(ctx, id, msg, move |act, joined| act.joined(id, joined));
            }
            PlainRequest::GetMembers { room_id } => {
                let rid = room_id.clone();
                self.ask_room(
                    ctx,
                    id,
                    room_id,
                    room::GetMembers { username },
                    move |_, members| ServerMsg::Members {
                        id,
                        room_id: rid,
                        members,
                    },
                );
            }
            PlainRequest::History {
                room_id,
                after_seq,
                before_seq,
                limit,
            } => {
                let Some((query, slot)) = self.history_query(ctx, id, after_seq, before_seq, limit)
                else {
                    return;
                };
                let rid = room_id.clone();
                self.ask_room(
                    ctx,
                    id,
                    room_id,
                    room::History { username, query },
                    move |_, history| {
                        drop(slot);
                        ServerMsg::History {
                            id,
                            entries: history
                                .page
                                .messages
                                .iter()
                                .map(|e| Entry::new(&rid, e.seq, e.ts, &e.entry))
                                .collect(),
                            room_id: rid,
                            has_more: history.page.has_more,
                            first_seq: history.first_seq,
                        }
                    },
                );
            }
            other => unreachable!("dispatched in session/mod.rs: {other:?}"),
        }
    }
}
