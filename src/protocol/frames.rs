//! The whole wire (`PROTOCOL.md` sections 3–4): every request
//! ([`Request`]) and every server frame ([`ServerMsg`]). Those that carry
//! MLS objects, devices or identity keys are variants here; each enum ends
//! in a `Shared` variant holding the frames that carry none (login, ping,
//! rooms, owner operations, presence...: `super::PlainRequest`,
//! `super::PlainMsg`). Requests are decoded strictly by
//! `decode::decode_request`.

use ciborium::Value;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{ErrorCode, PlainMsg, PlainRequest};

/// Every client request (without its `id`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Register {
        username: String,
        identity_key: ByteBuf,
        proof: ByteBuf,
    },
    Prove {
        signature: ByteBuf,
        /// This device's `device_certificate`.
        device: ByteBuf,
    },
    CreateRoom {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hidden: Option<bool>,
        group_info: ByteBuf,
        ratchet_tree: ByteBuf,
    },
    Send {
        room_id: String,
        msg_id: ByteBuf,
        message: ByteBuf,
    },
    Commit {
        room_id: String,
        commit: ByteBuf,
        group_info: ByteBuf,
    },
    GroupState {
        room_id: String,
    },
    PublishGroupInfo {
        room_id: String,
        group_info: ByteBuf,
    },
    RemoveDevice {
        device_id: ByteBuf,
    },
    ListDevices {
        username: String,
    },
    /// A request that carries no MLS object (never `register`,
    /// `prove`, `create_room` or `send`).
    #[serde(untagged)]
    Shared(PlainRequest),
}

impl Request {
    /// Encodes the request as one CBOR frame, with `id` when given.
    pub fn encode(&self, id: Option<u64>) -> Vec<u8> {
        if let Request::Shared(request) = self {
            return request.encode(id);
        }
        let mut value = Value::serialized(self).expect("requests always serialize");
        if let (Some(id), Value::Map(entries)) = (id, &mut value) {
            entries.push((Value::Text("id".into()), Value::Integer(id.into())));
        }
        let mut out = Vec::with_capacity(64);
        ciborium::into_writer(&value, &mut out).expect("values always serialize");
        out
    }
}

/// 4.1 Room summary: the directory's summary and the group's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub name: String,
    pub owner: String,
    pub members: u64,
    pub online: u64,
    pub has_password: bool,
    pub hidden: bool,
    pub created_at: u64,
    pub last_seq: u64,
    pub epoch: u64,
    /// In `logged_in` and `joined`: whether this device has a leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_group: Option<bool>,
}

impl RoomSummary {
    /// The directory's summary with the group's epoch (and `in_group`).
    pub fn new(s: super::DirectorySummary, epoch: u64, in_group: Option<bool>) -> Self {
        RoomSummary {
            room_id: s.room_id,
            name: s.name,
            owner: s.owner,
            members: s.members,
            online: s.online,
            has_password: s.has_password,
            hidden: s.hidden,
            created_at: s.created_at,
            last_seq: s.last_seq,
            epoch,
            in_group,
        }
    }
}

/// 4.2 Member object: one identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub username: String,
    pub identity_key: ByteBuf,
    pub online: bool,
    pub joined_at: u64,
}

/// One device of a user (`list_devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: ByteBuf,
    pub device_certificate: ByteBuf,
    pub added_at: u64,
}

/// What a log entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Commit,
    Message,
}

/// One entry of a room's log: the `entry` event, and the entries of a
/// `history` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub room_id: String,
    pub seq: u64,
    pub ts: u64,
    pub sender: String,
    pub device_id: ByteBuf,
    pub kind: EntryKind,
    pub epoch: u64,
    /// The MLSMessage bytes.
    pub data: ByteBuf,
    /// Messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<ByteBuf>,
    /// Commits only: the GroupInfo uploaded with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_info: Option<ByteBuf>,
}

impl Entry {
    /// A stored log entry of `room_id` as every member gets it.
    pub fn new(room_id: &str, seq: u64, ts: u64, e: &crate::message::LogEntry) -> Entry {
        Entry {
            room_id: room_id.to_owned(),
            seq,
            ts,
            sender: e.sender.clone(),
            device_id: ByteBuf::from(e.device_id.clone()),
            kind: match e.kind {
                crate::message::EntryKind::Commit => EntryKind::Commit,
                crate::message::EntryKind::Message => EntryKind::Message,
            },
            epoch: e.epoch,
            data: ByteBuf::from(e.data.clone()),
            msg_id: e.msg_id.clone().map(ByteBuf::from),
            group_info: e.group_info.clone().map(ByteBuf::from),
        }
    }

    /// Back to the stored form: (seq, ts, entry).
    pub fn into_log(self) -> (u64, u64, crate::message::LogEntry) {
        let kind = match self.kind {
            EntryKind::Commit => crate::message::EntryKind::Commit,
            EntryKind::Message => crate::message::EntryKind::Message,
        };
        let entry = crate::message::LogEntry {
            kind,
            sender: self.sender,
            device_id: self.device_id.into_vec(),
            epoch: self.epoch,
            data: self.data.into_vec(),
            msg_id: self.msg_id.map(ByteBuf::into_vec),
            group_info: self.group_info.map(ByteBuf::into_vec),
        };
        (self.seq, self.ts, entry)
    }

    /// The `entry` event's bytes: the same for every member, so a room
    /// encodes it once and shares them.
    pub fn event(self) -> bytes::Bytes {
        bytes::Bytes::from(ServerMsg::Entry(self).encode())
    }
}

/// Every server frame: those that carry MLS objects, devices or identity
/// keys here, and the rest as `Shared`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    LoggedIn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        username: String,
        device_id: ByteBuf,
        server_time: u64,
        rooms: Vec<RoomSummary>,
    },
    Rooms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        rooms: Vec<RoomSummary>,
        total: u64,
        connected: u64,
    },
    Joined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: RoomSummary,
        members: Vec<Member>,
    },
    Members {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        members: Vec<Member>,
    },
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        entries: Vec<Entry>,
        has_more: bool,
        first_seq: u64,
    },
    Committed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        seq: u64,
        epoch: u64,
    },
    GroupState {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        epoch: u64,
        group_info: ByteBuf,
        ratchet_tree: ByteBuf,
    },
    Devices {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        username: String,
        devices: Vec<DeviceInfo>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        /// `stale_epoch`: the group's current epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// `commit_required`: the leaves to remove.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remove: Option<Vec<u32>>,
    },
    MemberJoined {
        room_id: String,
        member: Member,
    },
    Entry(Entry),
    /// A frame that carries none of those (`registered`, `challenge`,
    /// `pong`, `ok`, `sent`, `member_left`, `owner_changed`, `presence`,
    /// `removed`, `room_renamed`, `room_deleted`).
    #[serde(untagged)]
    Shared(PlainMsg),
}

impl ServerMsg {
    /// The request id this message answers, if it is a direct reply.
    pub fn reply_id(&self) -> Option<u64> {
        use ServerMsg::*;
        match self {
            LoggedIn { id, .. }
            | Rooms { id, .. }
            | Joined { id, .. }
            | Members { id, .. }
            | History { id, .. }
            | Committed { id, .. }
            | GroupState { id, .. }
            | Devices { id, .. }
            | Error { id, .. } => *id,
            MemberJoined { .. } | Entry(_) => None,
            Shared(msg) => msg.reply_id(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        if let ServerMsg::Shared(msg) = self {
            return msg.encode();
        }
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut out).expect("server messages always serialize");
        out
    }

    pub fn decode(frame: &[u8]) -> Result<ServerMsg, String> {
        ciborium::from_reader(frame).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_request;

    fn b(bytes: &[u8]) -> ByteBuf {
        ByteBuf::from(bytes.to_vec())
    }

    #[test]
    fn every_v3_request_round_trips() {
        let requests = [
            Request::Register {
                username: "alice".into(),
                identity_key: b(b"der"),
                proof: b(b"proof"),
            },
            Request::Prove {
                signature: b(b"sig"),
                device: b(b"cert"),
            },
            Request::CreateRoom {
                name: "lobby".into(),
                password: Some("pw".into()),
                hidden: Some(true),
                group_info: b(b"gi"),
                ratchet_tree: b(b"tree"),
            },
            Request::Send {
                room_id: "r-1".into(),
                msg_id: b(&[1; 16]),
                message: b(b"private message"),
            },
            Request::Commit {
                room_id: "r-1".into(),
                commit: b(b"commit"),
                group_info: b(b"gi"),
            },
            Request::GroupState {
                room_id: "r-1".into(),
            },
            Request::PublishGroupInfo {
                room_id: "r-1".into(),
                group_info: b(b"gi"),
            },
            Request::RemoveDevice {
                device_id: b(&[2; 16]),
            },
            Request::ListDevices {
                username: "bob".into(),
            },
            Request::Shared(PlainRequest::JoinRoom {
                room_id: "r-1".into(),
                password: None,
            }),
            Request::Shared(PlainRequest::Login {
                username: "alice".into(),
            }),
        ];
        for request in requests {
            let frame = request.encode(Some(5));
            let (id, back) = decode_request(&frame).unwrap();
            assert_eq!(id, Some(5));
            // Same fields: the re-encoding is the same frame.
            assert_eq!(back.encode(Some(5)), frame, "{request:?}");
        }
    }

    #[test]
    fn version_2_shapes_are_malformed() {
        // Version 2's `send` and `prove` shapes lack today's fields.
        let v2_send = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("send".into())),
            (Value::Text("id".into()), Value::Integer(3.into())),
            (Value::Text("room_id".into()), Value::Text("r-1".into())),
            (Value::Text("msg_id".into()), Value::Bytes(vec![1; 16])),
            (Value::Text("ciphertext".into()), Value::Bytes(vec![1])),
        ]);
        let mut frame = Vec::new();
        ciborium::into_writer(&v2_send, &mut frame).unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert_eq!((err.id, err.failure.code), (Some(3), ErrorCode::Malformed));
        let v2_prove = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("prove".into())),
            (Value::Text("signature".into()), Value::Bytes(vec![1])),
        ]);
        let mut frame = Vec::new();
        ciborium::into_writer(&v2_prove, &mut frame).unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert_eq!(err.failure.code, ErrorCode::Malformed);
        // Text where the commit's bytes belong.
        let text = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("commit".into())),
            (Value::Text("room_id".into()), Value::Text("r-1".into())),
            (Value::Text("commit".into()), Value::Text("abc".into())),
            (Value::Text("group_info".into()), Value::Bytes(vec![1])),
        ]);
        let mut frame = Vec::new();
        ciborium::into_writer(&text, &mut frame).unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert_eq!(err.failure.code, ErrorCode::Malformed);
    }

    #[test]
    fn a_stored_entry_is_one_event_for_every_member() {
        use crate::message::{EntryKind as Kind, LogEntry};
        let stored = LogEntry {
            kind: Kind::Message,
            sender: "alice".into(),
            device_id: vec![1; 16],
            epoch: 3,
            data: vec![5; 40],
            msg_id: Some(vec![2; 16]),
            group_info: None,
        };
        let entry = Entry::new("r-1", 9, 77, &stored);
        assert_eq!(entry.kind, EntryKind::Message);
        assert_eq!((entry.seq, entry.ts, entry.epoch), (9, 77, 3));
        let bytes = entry.clone().event();
        assert_eq!(ServerMsg::decode(&bytes).unwrap(), ServerMsg::Entry(entry));
        assert_eq!(crate::protocol::peek_type(&bytes), b"entry");
    }

    #[test]
    fn server_frames_round_trip_and_shared_ones_stay_version_2() {
        let entry = Entry {
            room_id: "r-1".into(),
            seq: 7,
            ts: 1_700_000_000_000,
            sender: "bob".into(),
            device_id: b(&[3; 16]),
            kind: EntryKind::Commit,
            epoch: 4,
            data: b(b"commit"),
            msg_id: None,
            group_info: Some(b(b"gi")),
        };
        let messages = [
            ServerMsg::Entry(entry.clone()),
            ServerMsg::Committed {
                id: Some(1),
                room_id: "r-1".into(),
                seq: 7,
                epoch: 5,
            },
            ServerMsg::Error {
                id: Some(2),
                code: ErrorCode::CommitRequired,
                message: "remove first".into(),
                epoch: None,
                remove: Some(vec![1, 4]),
            },
            ServerMsg::History {
                id: None,
                room_id: "r-1".into(),
                entries: vec![entry],
                has_more: false,
                first_seq: 1,
            },
            ServerMsg::Shared(PlainMsg::Ok { id: Some(9) }),
            ServerMsg::Shared(PlainMsg::Registered {
                id: Some(1),
                username: "alice".into(),
            }),
        ];
        for msg in messages {
            let frame = msg.encode();
            assert_eq!(ServerMsg::decode(&frame).unwrap(), msg);
        }
        // A shared frame has the plain enum's bytes.
        let ok = PlainMsg::Ok { id: Some(9) };
        assert_eq!(ServerMsg::Shared(ok.clone()).encode(), ok.encode());
        assert_eq!(
            crate::protocol::peek_type(
                &ServerMsg::Committed {
                    id: None,
                    room_id: "r".into(),
                    seq: 1,
                    epoch: 1,
                }
                .encode()
            ),
            b"committed"
        );
    }
}
