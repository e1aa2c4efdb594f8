//! A registered user as the server holds it: the name and the parsed public
//! keys, shared by `Arc` between the Registry's cache and every room.

use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::crypto::{CryptoError, PublicKeys};
use crate::protocol::Member;
use crate::store::UserRecord;

#[derive(Debug)]
pub struct User {
    pub username: String,
    pub keys: PublicKeys,
    pub created_at: u64,
}

impl User {
    pub fn from_record(record: &UserRecord) -> Result<Arc<User>, CryptoError> {
        Ok(Arc::new(User {
            username: record.username.clone(),
            keys: PublicKeys::parse(&record.sign_key, &record.enc_key)?,
            created_at: record.created_at,
        }))
    }

    /// The protocol's member object (4.2) for this user.
    pub fn member(&self, online: bool, joined_at: u64) -> Member {
        Member {
            username: self.username.clone(),
            sign_key: ByteBuf::from(self.keys.sign_der.clone()),
            enc_key: ByteBuf::from(self.keys.enc_der.clone()),
            online,
            joined_at,
        }
    }
}
