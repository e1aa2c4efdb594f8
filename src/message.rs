//! The one log entry type: [`LogEntry`], a commit or an application
//! message as its device sent it (PROTOCOL.md section 3, "The room log"),
//! with what the server read of it. Every layer wraps it instead of
//! repeating its fields: what a room submits and a store keeps
//! (`store::NewEntry`, `store::StoredEntry`), what another process relays
//! (`cluster`), and the `entry` event every member gets
//! (`protocol::Entry`, encoded once per entry). The wire encodings stay
//! as they are, byte for byte; a protocol change changes this type.

/// What an entry of a room's log holds: a commit or an application
/// message, one seq order for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Commit,
    Message,
}

impl EntryKind {
    /// How stores write it.
    pub fn code(self) -> i64 {
        match self {
            EntryKind::Commit => 1,
            EntryKind::Message => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(EntryKind::Commit),
            2 => Some(EntryKind::Message),
            _ => None,
        }
    }
}

/// One log entry as its device sent it: the MLSMessage bytes and what
/// the server read of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub kind: EntryKind,
    /// The user and device whose connection sent it.
    pub sender: String,
    pub device_id: Vec<u8>,
    /// The epoch the message is in; for a commit, the epoch it made.
    pub epoch: u64,
    pub data: Vec<u8>,
    /// Messages: the client's id (a resend of (room, device, msg_id) is
    /// answered with the stored seq).
    pub msg_id: Option<Vec<u8>>,
    /// Commits: the GroupInfo uploaded with it.
    pub group_info: Option<Vec<u8>>,
}

impl LogEntry {
    /// Its bytes, without framing.
    pub fn len(&self) -> usize {
        self.sender.len()
            + self.device_id.len()
            + self.data.len()
            + self.msg_id.as_ref().map_or(0, Vec::len)
            + self.group_info.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
