//! The one chat message type: [`Sealed`], a message as its sender sealed it
//! (PROTOCOL.md section 3, Messages). Every layer wraps it instead of
//! repeating its fields: the request that brings it (`protocol::SendBody`
//! converts into it), what a store keeps (`store::NewMessage` with every
//! recipient's wrapped key, `store::StoredMessage` with one), what another
//! process relays (`cluster`), and the `message` event every recipient gets
//! (`protocol::MessageFrame`, `protocol::MessageData`). The wire encodings
//! stay as they are, byte for byte; a protocol change changes this type.

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
