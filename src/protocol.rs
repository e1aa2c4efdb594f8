//! The wire protocol (docs/PROTOCOL.md): every request, reply and event as a
//! typed Rust value, the strict frame decoder the server uses, the encoders
//! both sides use, and the one table of error codes.
//!
//! Requests are decoded by hand from a `ciborium::Value` so that the CBOR
//! types are checked exactly as the spec says (a byte field sent as an array,
//! or text sent as bytes, is `malformed`); serde's lenient visitors would
//! accept both. Replies and events derive serde and are tagged by `type`.

use std::collections::BTreeMap;

use ciborium::Value;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

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
    StaleMembers,
    InvalidMessage,
    Internal,
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
            StaleMembers => "the key set does not match the room's members",
            InvalidMessage => "the message is invalid",
            Internal => "internal server error",
        }
    }
}

/// An error answer before it gets its request id.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub members: Option<Vec<Member>>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            members: None,
        }
    }

    pub fn into_msg(self, id: Option<u64>) -> ServerMsg {
        ServerMsg::Error {
            id,
            code: self.code,
            message: self.message,
            members: self.members,
        }
    }
}

impl From<ErrorCode> for Failure {
    fn from(code: ErrorCode) -> Self {
        Failure::new(code, code.default_message())
    }
}

/// A `send` request's body.
#[derive(Debug, Clone, Serialize)]
pub struct SendBody {
    pub room_id: String,
    pub msg_id: ByteBuf,
    pub nonce: ByteBuf,
    pub key_commitment: ByteBuf,
    pub ciphertext: ByteBuf,
    pub keys: BTreeMap<String, ByteBuf>,
    pub signature: ByteBuf,
}

impl SendBody {
    /// The bytes the sender signs (PROTOCOL.md section 3, Messages, step 5).
    pub fn signature_input(&self) -> Vec<u8> {
        crate::crypto::message_signature_input(
            &self.room_id,
            &self.msg_id,
            &self.nonce,
            &self.key_commitment,
            &self.ciphertext,
        )
    }
}

/// Every client request (without its `id`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Register {
        username: String,
        sign_key: ByteBuf,
        enc_key: ByteBuf,
    },
    Login {
        username: String,
    },
    Prove {
        signature: ByteBuf,
    },
    Ping,
    ListRooms {
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    CreateRoom {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hidden: Option<bool>,
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
    Send(SendBody),
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

impl Request {
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
}

/// 4.2 Member object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub username: String,
    pub sign_key: ByteBuf,
    pub enc_key: ByteBuf,
    pub online: bool,
    pub joined_at: u64,
}

/// A stored chat message as one recipient sees it (the `message` event, and
/// the entries of a `history` reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageData {
    pub room_id: String,
    pub seq: u64,
    pub ts: u64,
    pub msg_id: ByteBuf,
    pub sender: String,
    pub nonce: ByteBuf,
    pub key_commitment: ByteBuf,
    pub ciphertext: ByteBuf,
    pub key: ByteBuf,
    pub signature: ByteBuf,
}

/// Everything the server sends: direct replies (with the request's `id`) and
/// pushed events (without).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
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
    LoggedIn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        username: String,
        server_time: u64,
        rooms: Vec<RoomSummary>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        server_time: u64,
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
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Members {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        members: Vec<Member>,
    },
    Sent {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        msg_id: ByteBuf,
        seq: u64,
        ts: u64,
    },
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: String,
        messages: Vec<MessageData>,
        has_more: bool,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Member>>,
    },
    MemberJoined {
        room_id: String,
        member: Member,
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
    Message(MessageData),
}

impl ServerMsg {
    /// The request id this message answers, if it is a direct reply.
    pub fn reply_id(&self) -> Option<u64> {
        use ServerMsg::*;
        match self {
            Registered { id, .. }
            | Challenge { id, .. }
            | LoggedIn { id, .. }
            | Pong { id, .. }
            | Rooms { id, .. }
            | Joined { id, .. }
            | Ok { id }
            | Members { id, .. }
            | Sent { id, .. }
            | History { id, .. }
            | Error { id, .. } => *id,
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut out).expect("server messages always serialize");
        out
    }

    pub fn decode(frame: &[u8]) -> Result<ServerMsg, String> {
        ciborium::from_reader(frame).map_err(|e| e.to_string())
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

/// Encodes a `message` event once for a room and then cheaply per recipient:
/// the common fields are serialized once, and each recipient's frame is that
/// prefix with the map header bumped by one and its own `key` appended.
pub struct MessageFrame {
    common: Vec<u8>,
}

#[derive(Serialize)]
struct CommonMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room_id: &'a str,
    seq: u64,
    ts: u64,
    #[serde(with = "serde_bytes")]
    msg_id: &'a [u8],
    sender: &'a str,
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
    #[serde(with = "serde_bytes")]
    key_commitment: &'a [u8],
    #[serde(with = "serde_bytes")]
    ciphertext: &'a [u8],
    #[serde(with = "serde_bytes")]
    signature: &'a [u8],
}

impl MessageFrame {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        room_id: &str,
        seq: u64,
        ts: u64,
        msg_id: &[u8],
        sender: &str,
        nonce: &[u8],
        key_commitment: &[u8],
        ciphertext: &[u8],
        signature: &[u8],
    ) -> Self {
        let common = CommonMessage {
            kind: "message",
            room_id,
            seq,
            ts,
            msg_id,
            sender,
            nonce,
            key_commitment,
            ciphertext,
            signature,
        };
        let mut out = Vec::with_capacity(ciphertext.len() + 512);
        ciborium::into_writer(&common, &mut out).expect("message serializes");
        debug_assert_eq!(out[0], 0xaa, "ten-entry map header");
        MessageFrame { common: out }
    }

    /// The whole frame for one recipient.
    pub fn for_recipient(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.common.len() + key.len() + 16);
        out.push(0xab); // map of eleven entries
        out.extend_from_slice(&self.common[1..]);
        out.extend_from_slice(&[0x63, b'k', b'e', b'y']); // text(3) "key"
        write_bytes_header(&mut out, key.len());
        out.extend_from_slice(key);
        out
    }
}

fn write_bytes_header(out: &mut Vec<u8>, len: usize) {
    const MAJOR_BYTES: u8 = 0x40;
    match len {
        0..=23 => out.push(MAJOR_BYTES | len as u8),
        24..=0xff => out.extend_from_slice(&[MAJOR_BYTES | 24, len as u8]),
        0x100..=0xffff => {
            out.push(MAJOR_BYTES | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(MAJOR_BYTES | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).expect("values always serialize");
    out
}

/// Why a frame could not be turned into a request. `id` is the request id
/// when it could still be read, so the error can echo it.
#[derive(Debug, Clone)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub failure: Failure,
}

/// Most data items `decode_request` accepts in one frame: a `send` to a
/// room of 2,000 members has about 4,000.
pub const DEFAULT_MAX_ITEMS: usize = 4096;

/// Deepest nesting accepted: requests are at most a map of maps.
pub const MAX_DEPTH: usize = 4;

/// Decodes one binary frame into `(id, request)`, checking every CBOR type,
/// with at most [`DEFAULT_MAX_ITEMS`] items.
pub fn decode_request(frame: &[u8]) -> Result<(Option<u64>, Request), DecodeError> {
    decode_request_bounded(frame, DEFAULT_MAX_ITEMS)
}

/// Decodes one binary frame, first counting its items without allocating:
/// a frame with more than `max_items` data items or nesting deeper than
/// [`MAX_DEPTH`] is `malformed` before anything is built, so a frame of a
/// million tiny items costs a scan, not a million allocations.
pub fn decode_request_bounded(
    frame: &[u8],
    max_items: usize,
) -> Result<(Option<u64>, Request), DecodeError> {
    let malformed = |id, why: String| DecodeError {
        id,
        failure: Failure::new(ErrorCode::Malformed, why),
    };
    if let Err(e) = shape::check(frame, max_items) {
        return Err(match e {
            // Answered with the request id, found by a walk that builds nothing.
            shape::Refused::TooManyItems => DecodeError {
                id: shape::peek_id(frame),
                failure: Failure::new(
                    ErrorCode::TooLarge,
                    format!("the request has more than {max_items} CBOR items"),
                ),
            },
            shape::Refused::Malformed(why) => malformed(None, why),
        });
    }
    let value: Value = ciborium::from_reader(frame)
        .map_err(|e| malformed(None, format!("the frame is not CBOR: {e}")))?;
    let Value::Map(entries) = value else {
        return Err(malformed(None, "the frame is not a CBOR map".into()));
    };
    let fields = Fields(&entries);
    let id = match fields.get("id") {
        None => None,
        Some(v) => match as_uint(v) {
            Some(id) if id < MAX_REQUEST_ID => Some(id),
            _ => {
                return Err(malformed(
                    None,
                    "`id` must be an unsigned integer below 2^53".into(),
                ))
            }
        },
    };
    let kind = match fields.get("type") {
        Some(Value::Text(t)) => t.as_str(),
        Some(_) => return Err(malformed(id, "`type` must be text".into())),
        None => return Err(malformed(id, "the map has no `type`".into())),
    };
    let request = fields.request(kind).map_err(|e| match e {
        FieldError::UnknownType => DecodeError {
            id,
            failure: Failure::new(
                ErrorCode::UnknownType,
                format!("unknown request type `{kind}`"),
            ),
        },
        FieldError::Bad(why) => malformed(id, why),
    })?;
    Ok((id, request))
}

/// A CBOR walker that counts data items and depth without building values.
mod shape {
    use super::MAX_DEPTH;

    struct Scan<'a> {
        frame: &'a [u8],
        pos: usize,
        items: usize,
        max_items: usize,
    }

    const BREAK: u8 = 0xff;

    pub enum Refused {
        TooManyItems,
        Malformed(String),
    }

    pub fn check(frame: &[u8], max_items: usize) -> Result<(), Refused> {
        let mut scan = Scan {
            frame,
            pos: 0,
            items: 0,
            max_items,
        };
        match scan.item(0) {
            Ok(()) => Ok(()),
            Err(_) if scan.items > max_items => Err(Refused::TooManyItems),
            Err(why) => Err(Refused::Malformed(why)),
        }
    }

    /// The top-level `id`, if the frame is a definite-length map that has a
    /// valid one; walks every item but builds nothing.
    pub fn peek_id(frame: &[u8]) -> Option<u64> {
        let mut scan = Scan {
            frame,
            pos: 0,
            items: 0,
            max_items: usize::MAX,
        };
        let (5, Some(n)) = scan.head().ok()? else {
            return None;
        };
        for _ in 0..n {
            let key_start = scan.pos;
            scan.item(1).ok()?;
            let is_id = &frame[key_start..scan.pos] == b"\x62id";
            let value_start = scan.pos;
            scan.item(1).ok()?;
            if is_id {
                let mut value = Scan {
                    frame: &frame[value_start..scan.pos],
                    pos: 0,
                    items: 0,
                    max_items: 1,
                };
                return match value.head().ok()? {
                    (0, Some(id)) if id < super::MAX_REQUEST_ID => Some(id),
                    _ => None,
                };
            }
        }
        None
    }

    impl Scan<'_> {
        fn byte(&mut self) -> Result<u8, String> {
            let b = *self
                .frame
                .get(self.pos)
                .ok_or("the frame is not CBOR: truncated")?;
            self.pos += 1;
            Ok(b)
        }

        fn skip(&mut self, n: u64) -> Result<(), String> {
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| self.pos.checked_add(n))
                .filter(|end| *end <= self.frame.len())
                .ok_or("the frame is not CBOR: truncated")?;
            self.pos = end;
            Ok(())
        }

        /// (major type, argument); `None` for an indefinite length.
        fn head(&mut self) -> Result<(u8, Option<u64>), String> {
            let first = self.byte()?;
            let (major, info) = (first >> 5, first & 0x1f);
            let arg = match info {
                0..=23 => Some(u64::from(info)),
                24..=27 => {
                    let len = 1usize << (info - 24);
                    let mut v = 0u64;
                    for _ in 0..len {
                        v = (v << 8) | u64::from(self.byte()?);
                    }
                    Some(v)
                }
                31 if matches!(major, 2..=5 | 7) => None,
                _ => return Err("the frame is not CBOR: bad item header".into()),
            };
            Ok((major, arg))
        }

        fn at_break(&mut self) -> Result<bool, String> {
            match self.frame.get(self.pos) {
                Some(&BREAK) => {
                    self.pos += 1;
                    Ok(true)
                }
                Some(_) => Ok(false),
                None => Err("the frame is not CBOR: truncated".into()),
            }
        }

        fn item(&mut self, depth: usize) -> Result<(), String> {
            self.items += 1;
            if self.items > self.max_items {
                return Err(format!(
                    "the frame has more than {} CBOR items",
                    self.max_items
                ));
            }
            if depth > MAX_DEPTH {
                return Err(format!("the frame nests deeper than {MAX_DEPTH} levels"));
            }
            match self.head()? {
                (0 | 1, _) => Ok(()),
                (2 | 3, Some(len)) => self.skip(len),
                (major @ (2 | 3), None) => {
                    // Definite-length chunks of the same type, then a break.
                    while !self.at_break()? {
                        match self.head()? {
                            (m, Some(len)) if m == major => self.skip(len)?,
                            _ => return Err("the frame is not CBOR: bad string chunk".into()),
                        }
                    }
                    Ok(())
                }
                (4, Some(n)) => self.entries(n, depth),
                (5, Some(n)) => self.entries(n.saturating_mul(2), depth),
                (4 | 5, None) => {
                    while !self.at_break()? {
                        self.item(depth + 1)?;
                    }
                    Ok(())
                }
                (6, _) => self.item(depth + 1),
                (7, Some(_)) => Ok(()),
                _ => Err("the frame is not CBOR: unexpected break".into()),
            }
        }

        fn entries(&mut self, n: u64, depth: usize) -> Result<(), String> {
            for _ in 0..n {
                self.item(depth + 1)?;
            }
            Ok(())
        }
    }
}

enum FieldError {
    UnknownType,
    Bad(String),
}

type FieldResult<T> = Result<T, FieldError>;

struct Fields<'a>(&'a [(Value, Value)]);

fn as_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

impl Fields<'_> {
    /// The value for `key`; CBOR null counts as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    fn missing(key: &str) -> FieldError {
        FieldError::Bad(format!("missing `{key}`"))
    }

    fn wrong(key: &str, what: &str) -> FieldError {
        FieldError::Bad(format!("`{key}` must be {what}"))
    }

    fn opt_text(&self, key: &str) -> FieldResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            Some(_) => Err(Self::wrong(key, "text")),
        }
    }

    fn text(&self, key: &str) -> FieldResult<String> {
        self.opt_text(key)?.ok_or_else(|| Self::missing(key))
    }

    fn bytes(&self, key: &str) -> FieldResult<ByteBuf> {
        match self.get(key) {
            None => Err(Self::missing(key)),
            Some(Value::Bytes(b)) => Ok(ByteBuf::from(b.clone())),
            Some(_) => Err(Self::wrong(key, "a byte string")),
        }
    }

    fn opt_uint(&self, key: &str) -> FieldResult<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_uint(v)
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "an unsigned integer")),
        }
    }

    fn opt_bool(&self, key: &str) -> FieldResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::wrong(key, "a boolean")),
        }
    }

    fn key_map(&self, key: &str) -> FieldResult<BTreeMap<String, ByteBuf>> {
        let Some(Value::Map(entries)) = self.get(key) else {
            return Err(match self.get(key) {
                None => Self::missing(key),
                Some(_) => Self::wrong(key, "a map"),
            });
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            match (k, v) {
                (Value::Text(name), Value::Bytes(wrapped)) => {
                    out.insert(name.clone(), ByteBuf::from(wrapped.clone()));
                }
                _ => return Err(Self::wrong(key, "a map of text to byte strings")),
            }
        }
        Ok(out)
    }

    fn room_user(&self) -> FieldResult<(String, String)> {
        Ok((self.text("room_id")?, self.text("username")?))
    }

    fn request(&self, kind: &str) -> FieldResult<Request> {
        Ok(match kind {
            "register" => Request::Register {
                username: self.text("username")?,
                sign_key: self.bytes("sign_key")?,
                enc_key: self.bytes("enc_key")?,
            },
            "login" => Request::Login {
                username: self.text("username")?,
            },
            "prove" => Request::Prove {
                signature: self.bytes("signature")?,
            },
            "ping" => Request::Ping,
            "list_rooms" => Request::ListRooms {
                offset: self.opt_uint("offset")?,
                limit: self.opt_uint("limit")?,
            },
            "create_room" => Request::CreateRoom {
                name: self.text("name")?,
                password: self.opt_text("password")?,
                hidden: self.opt_bool("hidden")?,
            },
            "join_room" => Request::JoinRoom {
                room_id: self.text("room_id")?,
                password: self.opt_text("password")?,
            },
            "leave_room" => Request::LeaveRoom {
                room_id: self.text("room_id")?,
            },
            "get_members" => Request::GetMembers {
                room_id: self.text("room_id")?,
            },
            "kick" => {
                let (room_id, username) = self.room_user()?;
                Request::Kick { room_id, username }
            }
            "ban" => {
                let (room_id, username) = self.room_user()?;
                Request::Ban { room_id, username }
            }
            "unban" => {
                let (room_id, username) = self.room_user()?;
                Request::Unban { room_id, username }
            }
            "rename_room" => Request::RenameRoom {
                room_id: self.text("room_id")?,
                name: self.text("name")?,
            },
            "set_password" => Request::SetPassword {
                room_id: self.text("room_id")?,
                password: self.opt_text("password")?,
            },
            "delete_room" => Request::DeleteRoom {
                room_id: self.text("room_id")?,
            },
            "send" => Request::Send(SendBody {
                room_id: self.text("room_id")?,
                msg_id: self.bytes("msg_id")?,
                nonce: self.bytes("nonce")?,
                key_commitment: self.bytes("key_commitment")?,
                ciphertext: self.bytes("ciphertext")?,
                keys: self.key_map("keys")?,
                signature: self.bytes("signature")?,
            }),
            "history" => Request::History {
                room_id: self.text("room_id")?,
                after_seq: self.opt_uint("after_seq")?,
                before_seq: self.opt_uint("before_seq")?,
                limit: self.opt_uint("limit")?,
            },
            _ => return Err(FieldError::UnknownType),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(frame: &[u8]) -> ErrorCode {
        decode_request(frame).unwrap_err().failure.code
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::JoinRoom {
            room_id: "r-1".into(),
            password: Some("pw".into()),
        };
        let (id, back) = decode_request(&req.encode(Some(7))).unwrap();
        assert_eq!(id, Some(7));
        assert!(
            matches!(back, Request::JoinRoom { room_id, password: Some(p) } if room_id == "r-1" && p == "pw")
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
            assert!(matches!(req, Request::Ping));
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

    #[test]
    fn message_frame_matches_serde() {
        let frame = MessageFrame::new(
            "r-1", 5, 99, &[1; 16], "alice", &[2; 12], &[6; 32], &[3; 300], &[4; 256],
        );
        let bytes = frame.for_recipient(&[5; 256]);
        let msg = ServerMsg::decode(&bytes).unwrap();
        let ServerMsg::Message(m) = msg else {
            panic!("not a message")
        };
        assert_eq!(m.seq, 5);
        assert_eq!(m.key.as_slice(), &[5; 256]);
        assert_eq!(m.ciphertext.len(), 300);
        assert_eq!(m.key_commitment.as_slice(), &[6; 32]);
        assert_eq!(m.sender, "alice");
        assert_eq!(peek_type(&bytes), b"message");
        let sent = ServerMsg::Sent {
            id: Some(1),
            room_id: "r".into(),
            msg_id: ByteBuf::from(vec![0; 16]),
            seq: 1,
            ts: 2,
        };
        assert_eq!(peek_type(&sent.encode()), b"sent");
        assert_eq!(peek_type(b"\xa0"), b"");
    }
}
