//! The strict request decoder: the frame's shape is checked first
//! (`super::shape`), then the map is read field by field with the exact
//! CBOR types the spec names.

use ciborium::Value;
use serde_bytes::ByteBuf;

use super::frames::Request;
use super::shape;
use super::{ErrorCode, Failure, PlainRequest, MAX_REQUEST_ID};

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
    decode_with(frame, max_items, |f, kind| f.request(kind))
}

fn decode_with<R>(
    frame: &[u8],
    max_items: usize,
    read: impl FnOnce(&Fields<'_>, &str) -> FieldResult<R>,
) -> Result<(Option<u64>, R), DecodeError> {
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
    let request = read(&fields, kind).map_err(|e| match e {
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

    fn room_user(&self) -> FieldResult<(String, String)> {
        Ok((self.text("room_id")?, self.text("username")?))
    }

    fn plain_request(&self, kind: &str) -> FieldResult<PlainRequest> {
        Ok(match kind {
            "login" => PlainRequest::Login {
                username: self.text("username")?,
            },
            "ping" => PlainRequest::Ping,
            "list_rooms" => PlainRequest::ListRooms {
                offset: self.opt_uint("offset")?,
                limit: self.opt_uint("limit")?,
            },
            "join_room" => PlainRequest::JoinRoom {
                room_id: self.text("room_id")?,
                password: self.opt_text("password")?,
            },
            "leave_room" => PlainRequest::LeaveRoom {
                room_id: self.text("room_id")?,
            },
            "get_members" => PlainRequest::GetMembers {
                room_id: self.text("room_id")?,
            },
            "kick" => {
                let (room_id, username) = self.room_user()?;
                PlainRequest::Kick { room_id, username }
            }
            "ban" => {
                let (room_id, username) = self.room_user()?;
                PlainRequest::Ban { room_id, username }
            }
            "unban" => {
                let (room_id, username) = self.room_user()?;
                PlainRequest::Unban { room_id, username }
            }
            "rename_room" => PlainRequest::RenameRoom {
                room_id: self.text("room_id")?,
                name: self.text("name")?,
            },
            "set_password" => PlainRequest::SetPassword {
                room_id: self.text("room_id")?,
                password: self.opt_text("password")?,
            },
            "delete_room" => PlainRequest::DeleteRoom {
                room_id: self.text("room_id")?,
            },
            "history" => PlainRequest::History {
                room_id: self.text("room_id")?,
                after_seq: self.opt_uint("after_seq")?,
                before_seq: self.opt_uint("before_seq")?,
                limit: self.opt_uint("limit")?,
            },
            _ => return Err(FieldError::UnknownType),
        })
    }

    /// Every request: those that carry MLS objects or device certificates
    /// here, the rest by `request`.
    fn request(&self, kind: &str) -> FieldResult<Request> {
        Ok(match kind {
            "register" => Request::Register {
                username: self.text("username")?,
                identity_key: self.bytes("identity_key")?,
                proof: self.bytes("proof")?,
            },
            "prove" => Request::Prove {
                signature: self.bytes("signature")?,
                device: self.bytes("device")?,
            },
            "create_room" => Request::CreateRoom {
                name: self.text("name")?,
                password: self.opt_text("password")?,
                hidden: self.opt_bool("hidden")?,
                group_info: self.bytes("group_info")?,
                ratchet_tree: self.bytes("ratchet_tree")?,
            },
            "send" => Request::Send {
                room_id: self.text("room_id")?,
                msg_id: self.bytes("msg_id")?,
                message: self.bytes("message")?,
            },
            "commit" => Request::Commit {
                room_id: self.text("room_id")?,
                commit: self.bytes("commit")?,
                group_info: self.bytes("group_info")?,
            },
            "group_state" => Request::GroupState {
                room_id: self.text("room_id")?,
            },
            "publish_group_info" => Request::PublishGroupInfo {
                room_id: self.text("room_id")?,
                group_info: self.bytes("group_info")?,
            },
            "remove_device" => Request::RemoveDevice {
                device_id: self.bytes("device_id")?,
            },
            "list_devices" => Request::ListDevices {
                username: self.text("username")?,
            },
            _ => Request::Shared(self.plain_request(kind)?),
        })
    }
}
