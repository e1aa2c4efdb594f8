//! The room's public group state as one compact row: openmls's
//! [`PublicGroup`] (tree, group context, interim transcript hash,
//! confirmation tag; no secrets) in and out of bytes.
//!
//! openmls reads and writes a public group only through a
//! `PublicStorageProvider`. `Slot` is one that holds one group's four
//! values, each serialized with `postcard` (byte strings stay raw, so the row
//! is close to the TLS size of the tree; openmls's own MemoryStorage writes
//! JSON, about four times larger). The server keeps no queued proposals:
//! every proposal is committed by value (PROTOCOL.md section 2).

use std::cell::RefCell;

use openmls::prelude::{GroupId, PublicGroup};
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, CURRENT_VERSION};
use serde::{Deserialize, Serialize};

/// Why a stored state could not be read back (a corrupt or foreign row).
#[derive(Debug, thiserror::Error)]
#[error("the room's group state does not decode: {0}")]
pub struct StateError(String);

impl StateError {
    pub(crate) fn new(why: String) -> Self {
        StateError(why)
    }
}

/// The four values of one public group, serialized.
#[derive(Default, Serialize, Deserialize)]
struct Values {
    #[serde(with = "serde_bytes")]
    tree: Vec<u8>,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
    #[serde(with = "serde_bytes")]
    interim_transcript_hash: Vec<u8>,
    #[serde(with = "serde_bytes")]
    confirmation_tag: Vec<u8>,
}

/// A `PublicStorageProvider` for exactly one group, in memory.
#[derive(Default)]
pub(crate) struct Slot(RefCell<Values>);

impl Slot {
    /// A slot holding a row written by [`Slot::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let values = postcard::from_bytes(bytes).map_err(|e| StateError(e.to_string()))?;
        Ok(Slot(RefCell::new(values)))
    }

    /// The row: what openmls last wrote here (every `from_external` and
    /// `merge_commit` writes all four values).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&*self.0.borrow()).expect("serializing to a Vec cannot fail")
    }

    /// The group this slot holds.
    pub(crate) fn load(&self, group_id: &GroupId) -> Result<PublicGroup, StateError> {
        PublicGroup::load(self, group_id)?
            .ok_or_else(|| StateError("a value is missing".to_owned()))
    }
}

fn put<T: Serialize>(cell: &mut Vec<u8>, value: &T) -> Result<(), StateError> {
    *cell = postcard::to_stdvec(value).map_err(|e| StateError(e.to_string()))?;
    Ok(())
}

fn get<T: serde::de::DeserializeOwned>(cell: &[u8]) -> Result<Option<T>, StateError> {
    if cell.is_empty() {
        return Ok(None);
    }
    postcard::from_bytes(cell)
        .map(Some)
        .map_err(|e| StateError(e.to_string()))
}

impl PublicStorageProvider<CURRENT_VERSION> for Slot {
    type PublicError = StateError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> Result<(), StateError> {
        put(&mut self.0.borrow_mut().tree, tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        hash: &H,
    ) -> Result<(), StateError> {
        put(&mut self.0.borrow_mut().interim_transcript_hash, hash)
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        context: &C,
    ) -> Result<(), StateError> {
        put(&mut self.0.borrow_mut().context, context)
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        tag: &T,
    ) -> Result<(), StateError> {
        put(&mut self.0.borrow_mut().confirmation_tag, tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &R,
        _: &P,
    ) -> Result<(), StateError> {
        Err(StateError("the server keeps no proposals".to_owned()))
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, P)>, StateError> {
        Ok(Vec::new())
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, StateError> {
        get(&self.0.borrow().tree)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<C>, StateError> {
        get(&self.0.borrow().context)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<H>, StateError> {
        get(&self.0.borrow().interim_transcript_hash)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<T>, StateError> {
        get(&self.0.borrow().confirmation_tag)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.0.borrow_mut().tree.clear();
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), StateError> {
        self.0.borrow_mut().confirmation_tag.clear();
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.0.borrow_mut().context.clear();
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), StateError> {
        self.0.borrow_mut().interim_transcript_hash.clear();
        Ok(())
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &R,
    ) -> Result<(), StateError> {
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<(), StateError> {
        Ok(())
    }
}
