//! What the subcommands and the screen share: the server URL, times,
//! fingerprints typed by the user, how a message is shown, and the owner
//! operations.

use e2ee_chat::protocol::PlainRequest;

use crate::profile::{CliResult, Profile};
use crate::DEFAULT_SERVER;

pub fn server_url(cli_server: Option<&str>, profile: &Profile) -> String {
    cli_server
        .map(str::to_owned)
        .or_else(|| profile.config.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

/// A fingerprint as typed by a person: hex digits, any case, spaces ignored.
pub fn parse_fingerprint(words: &[String]) -> CliResult<[u8; 32]> {
    let hex_digits: String = words
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = hex::decode(hex_digits.to_ascii_lowercase())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or("a fingerprint is 64 hex digits (spaces allowed)")?;
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&bytes);
    Ok(fp)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from milliseconds since the epoch.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One message as shown: the sender's signed time when it verified (else
/// the server's), the mark, and the escaped text.
pub struct Shown {
    pub seq: u64,
    pub time: u64,
    pub sender: String,
    pub mark: &'static str,
    pub text: String,
}

/// An owner operation, as both the subcommands and the chat window name it.
pub enum OwnerCmd {
    Kick(String),
    Ban(String),
    Unban(String),
    Rename(String),
    Password(Option<String>),
    Delete,
}

/// The protocol request for an owner operation in `room_id`.
pub fn owner_request(cmd: OwnerCmd, room_id: &str) -> PlainRequest {
    let room_id = room_id.to_owned();
    match cmd {
        OwnerCmd::Kick(username) => PlainRequest::Kick { room_id, username },
        OwnerCmd::Ban(username) => PlainRequest::Ban { room_id, username },
        OwnerCmd::Unban(username) => PlainRequest::Unban { room_id, username },
        OwnerCmd::Rename(name) => PlainRequest::RenameRoom { room_id, name },
        OwnerCmd::Password(password) => PlainRequest::SetPassword { room_id, password },
        OwnerCmd::Delete => PlainRequest::DeleteRoom { room_id },
    }
}

impl OwnerCmd {
    /// What was done, for the user: `room` is the room as they named it.
    pub fn done(&self, room: &str) -> String {
        use e2ee_chat::client::display::escape;
        let room = escape(room);
        match self {
            OwnerCmd::Kick(user) => format!("kicked {} from {room}", escape(user)),
            OwnerCmd::Ban(user) => format!("banned {} from {room}", escape(user)),
            OwnerCmd::Unban(user) => format!("unbanned {} in {room}", escape(user)),
            OwnerCmd::Rename(name) => format!("renamed {room} to {}", escape(name)),
            OwnerCmd::Password(Some(_)) => format!("password set for {room}"),
            OwnerCmd::Password(None) => format!("password removed for {room}"),
            OwnerCmd::Delete => format!("deleted {room}"),
        }
    }
}
