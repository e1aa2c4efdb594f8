//! Parsing the MLS objects of a frame (TLS-encoded `MLSMessage`s and the
//! ratchet tree) and reading what the server may read of them: the clear
//! header of a PrivateMessage, the signer and confirmation tag of a
//! GroupInfo.

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, Size as _};
use openmls::prelude::*;

/// A GroupInfo as uploaded, with the parts openmls keeps private read from
/// its encoding.
pub(crate) struct UploadedGroupInfo {
    pub info: VerifiableGroupInfo,
    /// The leaf that signed it.
    pub signer: u32,
    /// The TLS encoding of its confirmation tag.
    pub confirmation_tag: Vec<u8>,
}

pub(crate) fn group_info(bytes: &[u8]) -> Option<UploadedGroupInfo> {
    let MlsMessageBodyIn::GroupInfo(info) =
        MlsMessageIn::tls_deserialize_exact(bytes).ok()?.extract()
    else {
        return None;
    };
    // GroupInfo = GroupContext, extensions, confirmation_tag, uint32 signer,
    // signature (RFC 9420 §12.4.3).
    let encoded = info.tls_serialize_detached().ok()?;
    let head = info.group_context().tls_serialized_len() + info.extensions().tls_serialized_len();
    let tail = Verifiable::signature(&info).tls_serialized_len() + 4;
    let signer_at = encoded.len().checked_sub(tail)?;
    if signer_at < head {
        return None;
    }
    let signer = u32::from_be_bytes(encoded[signer_at..signer_at + 4].try_into().ok()?);
    Some(UploadedGroupInfo {
        confirmation_tag: encoded[head..signer_at].to_vec(),
        signer,
        info,
    })
}

pub(crate) fn ratchet_tree(bytes: &[u8]) -> Option<RatchetTreeIn> {
    RatchetTreeIn::tls_deserialize_exact(bytes).ok()
}

/// A commit as uploaded: a PublicMessage whose content is a Commit.
pub(crate) fn commit(bytes: &[u8]) -> Option<(ProtocolMessage, Vec<u8>)> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .ok()?
        .try_into_protocol_message()
        .ok()?;
    let ProtocolMessage::PublicMessage(public) = &message else {
        return None;
    };
    if public.content_type() != ContentType::Commit {
        return None;
    }
    let tag = public.confirmation_tag()?.tls_serialize_detached().ok()?;
    Some((message, tag))
}

/// Why a `send`'s message is refused before its epoch is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not an MLS PrivateMessage")]
    NotPrivate,
    #[error("the message is for another group")]
    OtherGroup,
    #[error("the message's content type is not application")]
    NotApplication,
}

/// The epoch of an application PrivateMessage of `group_id`: all the server
/// reads of a `send` (its clear header).
pub fn message_epoch(bytes: &[u8], group_id: &[u8]) -> Result<u64, MessageError> {
    let message =
        MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| MessageError::NotPrivate)?;
    let MlsMessageBodyIn::PrivateMessage(private) = message.extract() else {
        return Err(MessageError::NotPrivate);
    };
    if private.group_id().as_slice() != group_id {
        return Err(MessageError::OtherGroup);
    }
    if private.content_type() != ContentType::Application {
        return Err(MessageError::NotApplication);
    }
    Ok(private.epoch().as_u64())
}
