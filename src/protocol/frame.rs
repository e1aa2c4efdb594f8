//! The `message` event's encoding: the fields every recipient shares are
//! serialized once per room, and each recipient's frame is that prefix with
//! the map header bumped by one and its own `key` appended.

use serde::Serialize;

use crate::message::Sealed;

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
    pub fn new(room_id: &str, seq: u64, ts: u64, m: &Sealed) -> Self {
        let common = CommonMessage {
            kind: "message",
            room_id,
            seq,
            ts,
            msg_id: &m.msg_id,
            sender: &m.sender,
            nonce: &m.nonce,
            key_commitment: &m.key_commitment,
            ciphertext: &m.ciphertext,
            signature: &m.signature,
        };
        let mut out = Vec::with_capacity(m.ciphertext.len() + 512);
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
