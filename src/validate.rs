//! Validation rules of PROTOCOL.md section 5, and room-name folding for
//! case-insensitive uniqueness.

use crate::protocol::{ErrorCode, PlainRequest};

/// `^[a-z0-9][a-z0-9_-]{2,31}$`
pub fn username(name: &str) -> Result<(), ErrorCode> {
    let bytes = name.as_bytes();
    let ok = (3..=32).contains(&bytes.len())
        && matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9')
        && bytes[1..]
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::InvalidUsername)
    }
}

/// 1 to 64 characters from letters, digits, space, `_`, `-`, `.`; no leading
/// or trailing space.
pub fn room_name(name: &str) -> Result<(), ErrorCode> {
    let count = name.chars().count();
    let ok = (1..=64).contains(&count)
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::InvalidRoomName)
    }
}

/// A new room's name and optional password.
pub fn new_room(name: &str, password: Option<&str>) -> Result<(), ErrorCode> {
    room_name(name)?;
    password.map_or(Ok(()), self::password)
}

/// 1 to 128 bytes of UTF-8.
pub fn password(pw: &str) -> Result<(), ErrorCode> {
    if (1..=128).contains(&pw.len()) {
        Ok(())
    } else {
        Err(ErrorCode::InvalidPassword)
    }
}

/// The stateless checks of a request's fields (section 5), made by the
/// session before anything else sees the request. Key material, names and
/// passwords of the requests that carry MLS objects are checked where those
/// are handled (`session::account`, `session::rooms`).
pub fn request(req: &PlainRequest) -> Result<(), ErrorCode> {
    match req {
        PlainRequest::Login { username } => self::username(username),
        PlainRequest::Kick { username, .. }
        | PlainRequest::Ban { username, .. }
        | PlainRequest::Unban { username, .. } => self::username(username),
        PlainRequest::RenameRoom { name, .. } => room_name(name),
        PlainRequest::SetPassword { password, .. } => {
            password.as_deref().map_or(Ok(()), self::password)
        }
        _ => Ok(()),
    }
}

/// The form under which room names must be unique: full Unicode lowercase.
pub fn fold_room_name(name: &str) -> String {
    name.to_lowercase()
}

/// The key a room's name is unique under (the directory's name index and
/// the stores' `name_folded`): the folded name for a listed room; for a
/// hidden room its id under a prefix no room name can have, so a hidden
/// room's name can neither be probed with `create_room` (it would answer
/// `room_exists`) nor block anyone's name.
pub fn room_name_key(name: &str, hidden: bool, room_id: &str) -> String {
    if hidden {
        format!("{HIDDEN_KEY}{room_id}")
    } else {
        fold_room_name(name)
    }
}

/// The prefix of hidden rooms' name keys (a control character: never in a
/// valid room name).
pub const HIDDEN_KEY: &str = "\u{1}hidden:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["abc", "a-b", "0_9", "abcdefghijabcdefghijabcdefghij12"] {
            assert!(username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "_ab",
            "-ab",
            "a b",
            "abcdefghijabcdefghijabcdefghij123",
            "ab\0c",
            "añb",
        ] {
            assert!(username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn room_names() {
        for ok in ["General", "a", "Ünïcödé room", "v1.2_beta-3"] {
            assert!(room_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            " lead",
            "trail ",
            "semi;colon",
            "nul\0",
            "rtl\u{202e}mark",
            long.as_str(),
        ] {
            assert!(room_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(fold_room_name("GeNeRaL"), fold_room_name("general"));
    }
}
