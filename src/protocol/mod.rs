//! The wire protocol (docs/PROTOCOL.md): every request, reply and event as a
//! typed Rust value, the strict frame decoder the server uses, the encoders
//! both sides use, and the one table of error codes.
//!
//! Requests are decoded by hand from a `ciborium::Value` so that the CBOR
//! types are checked exactly as the spec says (a byte field sent as an array,
//! or text sent as bytes, is `malformed`); serde's lenient visitors would
//! accept both. Replies and events derive serde and are tagged by `type`.
//!
//! One file per mechanism, as mini-redis keeps frame, parse and connection
//! apart: this one holds the types and the error codes; `shape` scans a
//! frame's CBOR items and depth without building anything; `decode` turns
//! a checked frame into a request, field by field; `frames` holds the
//! requests and frames that carry MLS objects or devices (`Request`,
//! `ServerMsg`), whose `Shared` variants hold this file's `PlainRequest` and
//! `PlainMsg`: the frames about accounts, rooms and members that carry
//! none.

use ciborium::Value;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

mod decode;
mod frames;
mod shape;

pub use frames::{DeviceInfo, Entry, EntryKind, Member, Request, RoomSummary, ServerMsg};

pub use decode::{
    decode_request, decode_request_bounded, DecodeError, DEFAULT_MAX_ITEMS, MAX_DEPTH,
};

/// Largest `id` a client may send (2^53, so JavaScript clients can use it).
pub const MAX_REQUEST_ID: u64 = 1 << 53;

/// Every error code of PROTOCOL.md section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Malformed,
    UnknownType,
    TooLarge,
    RateLimited,
    NotLoggedIn,
    AlreadyLoggedIn,
    InvalidUsername,
    InvalidKey,
    UsernameTaken,
    UnknownUser,
    NoChallenge,
    AuthFailed,
    InvalidRoomName,
    InvalidPassword,
    RoomExists,
    NoSuchRoom,
    WrongPassword,
    Banned,
    RoomFull,
    TooManyRooms,
    NotMember,
    NotOwner,
    NoSuchMember,
    InvalidTarget,
    InvalidMessage,
    Internal,
    // Added by version 3 (PROTOCOL.md section 6).
    StaleEpoch,
    CommitRequired,
    InvalidGroup,
    NotAllowed,
    InvalidDevice,
    TooManyDevices,
}

impl ErrorCode {
    /// The default human sentence for a code; call sites may say more.
    pub fn default_message(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "the request is not a well-formed CBOR map",
            UnknownType => "unknown request type",
            TooLarge => "the message is too large",
            RateLimited => "too many requests; slow down",
            NotLoggedIn => "log in first",
            AlreadyLoggedIn => "this connection is already logged in",
            InvalidUsername => "usernames are 3 to 32 characters: a-z, 0-9, _ and -",
            InvalidKey => "keys must be RSA SubjectPublicKeyInfo DER, 2048 to 4096 bits, e = 65537",
            UsernameTaken => "that username is taken",
            UnknownUser => "no such user",
            NoChallenge => "no login challenge is pending (or it expired)",
            AuthFailed => "the login signature did not verify",
            InvalidRoomName => "room names are 1 to 64 letters, digits, spaces, _ - or .",
            InvalidPassword => "room passwords are 1 to 128 bytes",
            RoomExists => "a room with that name exists",
            NoSuchRoom => "no such room",
            WrongPassword => "wrong room password",
            Banned => "you are banned from this room",
            RoomFull => "the room is full",
            TooManyRooms => "too many rooms",
            NotMember => "you are not a member of this room",
            NotOwner => "only the room owner may do that",
            NoSuchMember => "that user is not a member of this room",
            InvalidTarget => "the owner cannot do that to themself",
            InvalidMessage => "the message is invalid",
            Internal => "internal server error",
            StaleEpoch => "the group has moved to another epoch",
            CommitRequired => "the group has leaves to remove: commit their removal first",
            InvalidGroup => "the MLS objects do not parse or do not verify against the group",
            NotAllowed => "the room's policy does not allow that commit",
            InvalidDevice => "the device certificate is invalid",
            TooManyDevices => "this user has too many devices",
        }
    }
}

/// An error answer before it gets its request id.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    /// `stale_epoch`: the group's current epoch.
    pub epoch: Option<u64>,
    /// `commit_required`: the leaves to remove.
    pub remove: Option<Vec<u32>>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            epoch: None,
            remove: None,
        }
    }

    /// `stale_epoch`, with the group's current epoch.
    pub fn stale_epoch(epoch: u64) -> Self {
        Failure {
            epoch: Some(epoch),
            ..Failure::new(
                ErrorCode::StaleEpoch,
                format!("the group is at epoch {epoch}"),
            )
        }
    }

    /// `commit_required`, with the leaves to remove.
    pub fn commit_required(remove: Vec<u32>) -> Self {
        Failure {
            remove: Some(remove),
            ..Failure::new(
                ErrorCode::CommitRequired,
                "the group holds leaves to remove: commit their removal first",
            )
        }
    }

    /// The `error` frame (with `epoch` and `remove`).
    pub fn into_msg(self, id: Option<u64>) -> frames::ServerMsg {
        frames::ServerMsg::Error {
            id,
            code: self.code,
            message: self.message,
            epoch: self.epoch,
            remove: self.remove,
        }
    }
}

impl From<ErrorCode> for Failure {
    fn from(code: ErrorCode) -> Self {
        Failure::new(code, code.default_message())
    }
}

/// Every client request (without its `id`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlainRequest {
    Login {
        username: String,
    },
    Ping,
    ListRooms {
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    JoinRoom {
        room_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    LeaveRoom {
        room_id: String,
    },
    GetMembers {
        room_id: String,
    },
    Kick {
        room_id: String,
        username: String,
    },
    Ban {
        room_id: String,
        username: String,
    },
    Unban {
        room_id: String,
        username: String,
    },
    RenameRoom {
        room_id: String,
        name: String,
    },
    SetPassword {
        room_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    DeleteRoom {
        room_id: String,
    },
    History {
        room_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        after_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        before_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
}

impl PlainRequest {
    /// Encodes the request as one CBOR frame, with `id` when given.
    pub fn encode(&self, id: Option<u64>) -> Vec<u8> {
        let mut value = Value::serialized(self).expect("requests always serialize");
        if let (Some(id), Value::Map(entries)) = (id, &mut value) {
            entries.push((Value::Text("id".into()), Value::Integer(id.into())));
        }
        to_vec(&value)
    }
}

/// 4.1 Room summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorySummary {
    pub room_id: String,
    pub name: String,
    pub owner: String,
    pub members: u64,
    pub online: u64,
    pub has_password: bool,
    pub hidden: bool,
    pub created_at: u64,
    pub last_seq: u64,
}

/// Everything the server sends: direct replies (with the request's `id`) and
/// pushed events (without).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlainMsg {
    Registered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        username: String,
    },
    Challenge {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        nonce: ByteBuf,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        server_time: u64,
    },
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Sent {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        msg_id: ByteBuf,
        seq: u64,
        ts: u64,
    },
    MemberLeft {
        room_id: String,
        username: String,
        reason: String,
    },
    OwnerChanged {
        room_id: String,
        owner: String,
    },
    Presence {
        room_id: String,
        username: String,
        online: bool,
    },
    Removed {
        room_id: String,
        reason: String,
    },
    RoomRenamed {
        room_id: String,
        name: String,
    },
    RoomDeleted {
        room_id: String,
    },
}

impl PlainMsg {
    /// The request id this message answers, if it is a direct reply.
    pub fn reply_id(&self) -> Option<u64> {
        use PlainMsg::*;
        match self {
            Registered { id, .. }
            | Challenge { id, .. }
            | Pong { id, .. }
            | Ok { id }
            | Sent { id, .. } => *id,
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut out).expect("server messages always serialize");
        out
    }

    pub fn decode(frame: &[u8]) -> Result<PlainMsg, String> {
        ciborium::from_reader(frame).map_err(|e| e.to_string())
    }
}

/// A server frame a session writes (`ServerMsg`, or a `PlainMsg` it
/// wraps).
pub trait Reply: 'static {
    fn encode(&self) -> Vec<u8>;
    /// An `error` frame (counted in the metrics).
    fn is_error(&self) -> bool;
}

impl Reply for PlainMsg {
    fn encode(&self) -> Vec<u8> {
        PlainMsg::encode(self)
    }

    fn is_error(&self) -> bool {
        false
    }
}

impl Reply for frames::ServerMsg {
    fn encode(&self) -> Vec<u8> {
        frames::ServerMsg::encode(self)
    }

    fn is_error(&self) -> bool {
        matches!(self, frames::ServerMsg::Error { .. })
    }
}

/// The `type` of a server frame without decoding it: every frame the server
/// writes starts with the map header and then `type` and its short text
/// (serde puts the tag first; `MessageFrame` keeps it first). For load
/// generators and tests that count frames; empty for anything else.
pub fn peek_type(frame: &[u8]) -> &[u8] {
    const TYPE_KEY: &[u8] = b"\x64type"; // text(4) "type"
    match frame.get(1..6) {
        Some(key) if key == TYPE_KEY && frame.len() > 7 && frame[6] & 0xe0 == 0x60 => {
            let len = (frame[6] & 0x1f) as usize;
            frame.get(7..7 + len).unwrap_or(b"")
        }
        _ => b"",
    }
}

fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).expect("values always serialize");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(frame: &[u8]) -> ErrorCode {
        decode_request(frame).unwrap_err().failure.code
    }

    #[test]
    fn requests_round_trip() {
        let req = PlainRequest::JoinRoom {
            room_id: "r-1".into(),
            password: Some("pw".into()),
        };
        let (id, back) = decode_request(&req.encode(Some(7))).unwrap();
        assert_eq!(id, Some(7));
        assert!(
            matches!(back, frames::Request::Shared(PlainRequest::JoinRoom { room_id, password: Some(p) }) if room_id == "r-1" && p == "pw")
        );
    }

    #[test]
    fn strict_types() {
        // text where bytes belong
        let v = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("prove".into())),
            (Value::Text("signature".into()), Value::Text("abc".into())),
        ]);
        assert_eq!(code_of(&to_vec(&v)), ErrorCode::Malformed);
        // unknown type, id echoed
        let v = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("frobnicate".into())),
            (Value::Text("id".into()), Value::Integer(9.into())),
        ]);
        let err = decode_request(&to_vec(&v)).unwrap_err();
        assert_eq!(err.failure.code, ErrorCode::UnknownType);
        assert_eq!(err.id, Some(9));
        // negative id
        let v = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("ping".into())),
            (Value::Text("id".into()), Value::Integer((-1).into())),
        ]);
        assert_eq!(code_of(&to_vec(&v)), ErrorCode::Malformed);
    }

    #[test]
    fn item_and_depth_bounds_come_before_decoding() {
        // 100k tiny items: refused by the scan.
        let many = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("ping".into())),
            (
                Value::Text("pad".into()),
                Value::Array(vec![Value::Integer(0.into()); 100_000]),
            ),
        ]);
        let many = match many {
            Value::Map(mut entries) => {
                entries.push((Value::Text("id".into()), Value::Integer(12.into())));
                Value::Map(entries)
            }
            _ => unreachable!(),
        };
        let err = decode_request(&to_vec(&many)).unwrap_err();
        assert_eq!(err.failure.code, ErrorCode::TooLarge);
        assert_eq!(err.id, Some(12), "the id is echoed");
        assert!(
            err.failure.message.contains("items"),
            "{}",
            err.failure.message
        );
        // Deep nesting.
        let mut deep = Value::Integer(1.into());
        for _ in 0..10 {
            deep = Value::Array(vec![deep]);
        }
        let nested = Value::Map(vec![
            (Value::Text("type".into()), Value::Text("ping".into())),
            (Value::Text("pad".into()), deep),
        ]);
        let err = decode_request(&to_vec(&nested)).unwrap_err();
        assert!(
            err.failure.message.contains("deeper"),
            "{}",
            err.failure.message
        );
        // Indefinite lengths, tags, floats and chunked strings still pass the
        // scan and are judged by the decoder.
        let ok = [
            &b"\xbf\x64type\x64ping\x62id\x01\xff"[..],
            &b"\xa2\x64type\x64ping\x63pad\xc1\xfb\x3f\xf0\0\0\0\0\0\0"[..],
            &b"\xa2\x64type\x64ping\x63pad\x5f\x41a\x42bc\xff"[..],
        ];
        for frame in ok {
            let (_, req) = decode_request(frame).unwrap();
            assert!(matches!(req, frames::Request::Shared(PlainRequest::Ping)));
        }
        // Truncated or huge declared lengths are malformed, not a panic.
        for bad in [
            &b"\xa2\x64type"[..],
            b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\xff",
        ] {
            assert_eq!(code_of(bad), ErrorCode::Malformed);
        }
    }
}
