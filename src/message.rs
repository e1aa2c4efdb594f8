//! The one chat message type: [`Sealed`], a message as its sender sealed it
//! (PROTOCOL.md section 3, Messages). Every layer wraps it instead of
//! repeating its fields: the request that brings it (`protocol::SendBody`
//! converts into it), what a store keeps (`store::NewMessage` with every
//! recipient's wrapped key, `store::StoredMessage` with one), what another
//! process relays (`cluster`), and the `message` event every recipient gets
//! (`protocol::MessageFrame`, `protocol::MessageData`). The wire encodings
//! stay as they are, byte for byte; a protocol change changes this type.
//! Protocol v3's log entry ([`LogEntry`]: a commit or an MLS message) lives
//! here too, beside it until v2 goes.

/// A message's sealed parts: who sent it, its id, and the encrypted text
/// with what proves and binds it. The wrapped content keys travel beside it
/// (every recipient's in a store or on the cluster; one in a delivery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sealed {
    pub msg_id: Vec<u8>,
    pub sender: String,
    pub nonce: Vec<u8>,
    pub key_commitment: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Sealed {
    /// Its bytes, without framing.
    pub fn len(&self) -> usize {
        self.msg_id.len()
            + self.sender.len()
            + self.nonce.len()
            + self.key_commitment.len()
            + self.ciphertext.len()
            + self.signature.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Protocol v3: what an entry of a room's log holds (PROTOCOL-v3.md, "The
/// room log"): a commit or an application message, one seq order for both.
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

/// One v3 log entry as its device sent it: the MLSMessage bytes and what
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
