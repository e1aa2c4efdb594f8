//! One chat message's end-to-end crypto (PROTOCOL.md section 3, Messages):
//! sealing (fresh AES key, plaintext `{text, sent_at}`, key commitment,
//! signature, a wrapped key per recipient) and opening (signature, unwrap,
//! commitment, decrypt, exactly one CBOR map). No I/O and no state: the
//! [`Client`](super::Client) decides whose keys to trust.

use std::collections::BTreeMap;

use ciborium::Value;
use serde_bytes::ByteBuf;

use super::{ClientError, Result};
use crate::crypto::{self, CryptoError, KeyPair, PublicKeys};
use crate::protocol::{MessageData, SendBody};
use crate::util::now_ms;

/// The plaintext inside a message's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    pub text: String,
    /// The sender's clock, in ms since the epoch (signed, unlike `ts`).
    pub sent_at: u64,
}

impl Plaintext {
    /// One CBOR map `{text, sent_at}`.
    pub fn encode(&self) -> Vec<u8> {
        let map = Value::Map(vec![
            (Value::Text("text".into()), Value::Text(self.text.clone())),
            (
                Value::Text("sent_at".into()),
                Value::Integer(self.sent_at.into()),
            ),
        ]);
        let mut out = Vec::with_capacity(self.text.len() + 24);
        ciborium::into_writer(&map, &mut out).expect("plaintext encodes");
        out
    }

    /// Exactly one CBOR map with `text` (text) and `sent_at` (unsigned),
    /// nothing after it; other keys are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Plaintext> {
        let bad = |why: &str| ClientError::Crypto(CryptoError::Other(format!("plaintext {why}")));
        let mut reader = bytes;
        let value: Value = ciborium::from_reader(&mut reader).map_err(|_| bad("is not CBOR"))?;
        if !reader.is_empty() {
            return Err(bad("has bytes after its map"));
        }
        let Value::Map(entries) = value else {
            return Err(bad("is not a map"));
        };
        let field = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
                .map(|(_, v)| v)
        };
        let text = match field("text") {
            Some(Value::Text(t)) => t.clone(),
            _ => return Err(bad("has no text")),
        };
        let sent_at = match field("sent_at") {
            Some(Value::Integer(i)) => u64::try_from(*i).map_err(|_| bad("has a bad sent_at"))?,
            _ => return Err(bad("has no sent_at")),
        };
        Ok(Plaintext { text, sent_at })
    }
}

/// Builds a complete `send` body: fresh AES key, nonce and msg_id; the
/// plaintext sealed once; the key wrapped for every recipient; signed.
pub fn seal_message(
    keys: &KeyPair,
    room_id: &str,
    text: &str,
    recipients: &[(String, Vec<u8>)],
) -> Result<SendBody> {
    let msg_id = crypto::random_bytes::<{ crypto::MSG_ID_LEN }>();
    let (mut body, aes_key) = seal_parts(keys, room_id, text, msg_id);
    wrap_for(&mut body, &aes_key, recipients)?;
    Ok(body)
}

/// Seals `text` (sent now) under a fresh AES key and nonce with the given
/// `msg_id`, commits to the key and signs; `keys` in the body is left empty
/// for the caller to wrap. Returns the body and the AES key (kept to re-wrap
/// after `stale_members`).
pub fn seal_parts(
    keys: &KeyPair,
    room_id: &str,
    text: &str,
    msg_id: [u8; crypto::MSG_ID_LEN],
) -> (SendBody, [u8; crypto::AES_KEY_LEN]) {
    let aes_key = crypto::random_bytes::<{ crypto::AES_KEY_LEN }>();
    let nonce = crypto::random_bytes::<{ crypto::NONCE_LEN }>();
    let plaintext = Plaintext {
        text: text.to_owned(),
        sent_at: now_ms(),
    }
    .encode();
    let ciphertext = crypto::seal(
        &aes_key,
        &nonce,
        &crypto::message_aad(room_id, &msg_id),
        &plaintext,
    );
    let commitment = crypto::key_commitment(&aes_key);
    let signature = keys.sign(&crypto::message_signature_input(
        room_id,
        &msg_id,
        &nonce,
        &commitment,
        &ciphertext,
    ));
    let body = SendBody {
        room_id: room_id.to_owned(),
        msg_id: ByteBuf::from(msg_id.to_vec()),
        nonce: ByteBuf::from(nonce.to_vec()),
        key_commitment: ByteBuf::from(commitment.to_vec()),
        ciphertext: ByteBuf::from(ciphertext),
        keys: BTreeMap::new(),
        signature: ByteBuf::from(signature),
    };
    (body, aes_key)
}

/// (Re)wraps the message key for exactly `recipients` (name, enc_key DER).
pub fn wrap_for(
    body: &mut SendBody,
    aes_key: &[u8],
    recipients: &[(String, Vec<u8>)],
) -> Result<()> {
    body.keys.clear();
    for (name, enc_der) in recipients {
        body.keys.insert(
            name.clone(),
            ByteBuf::from(crypto::wrap_key(enc_der, aes_key)?),
        );
    }
    Ok(())
}

/// Verifies, unwraps, checks the key commitment and decrypts one message
/// with the sender's pinned keys. Any failure means: show it as failed.
pub fn open_message(me: &KeyPair, sender_keys: &PublicKeys, m: &MessageData) -> Result<Plaintext> {
    let input = crypto::message_signature_input(
        &m.room_id,
        &m.msg_id,
        &m.nonce,
        &m.key_commitment,
        &m.ciphertext,
    );
    if !sender_keys.verify(&input, &m.signature) {
        return Err(CryptoError::BadSignature.into());
    }
    let aes_key = me.unwrap_key(&m.key)?;
    // Without this check a sender could wrap different keys for different
    // members and make one signed ciphertext read differently for each.
    if crypto::key_commitment(&aes_key).as_slice() != m.key_commitment.as_slice() {
        return Err(CryptoError::Other(
            "the message key does not match its commitment (the sender may be equivocating)".into(),
        )
        .into());
    }
    let plaintext = crypto::open(
        &aes_key,
        &m.nonce,
        &crypto::message_aad(&m.room_id, &m.msg_id),
        &m.ciphertext,
    )?;
    Plaintext::decode(&plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_exactly_one_map() {
        let p = Plaintext {
            text: "hi".into(),
            sent_at: 7,
        };
        let bytes = p.encode();
        assert_eq!(Plaintext::decode(&bytes).unwrap(), p);
        let mut trailing = bytes.clone();
        trailing.push(0xa0);
        assert!(Plaintext::decode(&trailing).is_err());
        let mut no_time = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![(Value::Text("text".into()), Value::Text("x".into()))]),
            &mut no_time,
        )
        .unwrap();
        assert!(Plaintext::decode(&no_time).is_err());
        assert!(Plaintext::decode(b"\x01").is_err());
    }
}
