//! A registered user as the server holds it: the name and the parsed public
//! keys, shared by `Arc` between the Registry's cache and every room.
//! Protocol v2 users have a signing and an encryption key; protocol v3 users
//! have one identity key (stored in the record's `sign_key`, with an empty
//! `enc_key`).

use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::crypto::{CryptoError, PublicKeys};
use crate::identity::IdentityKey;
use crate::protocol::v3::Member3;
use crate::protocol::Member;
use crate::store::UserRecord;

#[derive(Debug)]
pub struct User {
    pub username: String,
    pub keys: UserKeys,
    pub created_at: u64,
}

/// A user's public keys, by protocol version.
#[derive(Debug)]
pub enum UserKeys {
    V2(PublicKeys),
    V3(IdentityKey),
}

impl User {
    pub fn from_record(record: &UserRecord) -> Result<Arc<User>, CryptoError> {
        let keys = if record.enc_key.is_empty() {
            UserKeys::V3(IdentityKey::parse(&record.sign_key)?)
        } else {
            UserKeys::V2(PublicKeys::parse(&record.sign_key, &record.enc_key)?)
        };
        Ok(Arc::new(User {
            username: record.username.clone(),
            keys,
            created_at: record.created_at,
        }))
    }

    /// Whether `signature` is this user's RSA-PSS signature over `msg` (by
    /// the v2 signing key or the v3 identity key).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        match &self.keys {
            UserKeys::V2(keys) => keys.verify(msg, signature),
            UserKeys::V3(identity) => identity.verify(msg, signature),
        }
    }

    /// v2: the length of every key wrapped for this user.
    pub fn enc_len(&self) -> Option<usize> {
        match &self.keys {
            UserKeys::V2(keys) => Some(keys.enc_len),
            UserKeys::V3(_) => None,
        }
    }

    /// v3: the identity key.
    pub fn identity(&self) -> Option<&IdentityKey> {
        match &self.keys {
            UserKeys::V2(_) => None,
            UserKeys::V3(identity) => Some(identity),
        }
    }

    /// The protocol's member object (4.2) for this user.
    pub fn member(&self, online: bool, joined_at: u64) -> Member {
        let (sign_key, enc_key) = match &self.keys {
            UserKeys::V2(keys) => (keys.sign_der.clone(), keys.enc_der.clone()),
            UserKeys::V3(identity) => (identity.der().to_vec(), Vec::new()),
        };
        Member {
            username: self.username.clone(),
            sign_key: ByteBuf::from(sign_key),
            enc_key: ByteBuf::from(enc_key),
            online,
            joined_at,
        }
    }

    /// Version 3's member object (4.2).
    pub fn member3(&self, online: bool, joined_at: u64) -> Member3 {
        let identity_key = match &self.keys {
            UserKeys::V2(keys) => keys.sign_der.clone(),
            UserKeys::V3(identity) => identity.der().to_vec(),
        };
        Member3 {
            username: self.username.clone(),
            identity_key: ByteBuf::from(identity_key),
            online,
            joined_at,
        }
    }
}
