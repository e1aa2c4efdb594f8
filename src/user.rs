//! A registered user as the server holds it: the name and the parsed
//! identity key, shared by `Arc` between the Registry's cache and every
//! room. Stores keep the identity key in the user record's `sign_key` (the
//! column's name from before version 3; `enc_key` is empty).

use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::crypto::CryptoError;
use crate::identity::IdentityKey;
use crate::protocol::Member;
use crate::store::UserRecord;

#[derive(Debug)]
pub struct User {
    pub username: String,
    pub identity: IdentityKey,
    pub created_at: u64,
}

impl User {
    pub fn from_record(record: &UserRecord) -> Result<Arc<User>, CryptoError> {
        Ok(Arc::new(User {
            username: record.username.clone(),
            identity: IdentityKey::parse(&record.sign_key)?,
            created_at: record.created_at,
        }))
    }

    /// Whether `signature` is this user's RSA-PSS signature over `msg` by
    /// the identity key.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        self.identity.verify(msg, signature)
    }

    /// The member object (4.2) for this user.
    pub fn member(&self, online: bool, joined_at: u64) -> Member {
        Member {
            username: self.username.clone(),
            identity_key: ByteBuf::from(self.identity.der().to_vec()),
            online,
            joined_at,
        }
    }
}
