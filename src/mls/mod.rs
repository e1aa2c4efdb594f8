//! The Delivery Service core (`PROTOCOL.md` sections 2–3, and
//! DESIGN.md "Rooms as MLS groups"): what the server knows of a room's MLS
//! group and the checks it makes on what devices upload. No actors and no
//! store: a room holds a [`RoomGroup`], asks it to check a commit, writes the
//! new state it returns, and the clear header of an application message is
//! read by [`message_epoch`] in O(1).
//!
//! - `group.rs`: [`RoomGroup`]: creation from the creator's epoch-0 objects,
//!   commits (openmls `PublicGroup` validation, then the section 3 policy, then
//!   the uploaded GroupInfo against the state the commit makes), GroupInfo
//!   replacement, leaves to remove.
//! - `state.rs`: the compact row that holds the group's public state.
//! - `wire.rs`: parsing the TLS objects that travel in frames.
//!
//! The server never holds a group secret.

mod group;
mod state;
mod wire;

pub use group::{Accepted, CommitError, Committer, LeafOwner, RoomGroup, Roster};
pub use state::StateError;
pub use wire::{message_epoch, MessageError};

use openmls::prelude::Ciphersuite;
use openmls_rust_crypto::RustCrypto;

/// The one ciphersuite: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Epochs before the current one whose application messages are still
/// accepted (the clients' `max_past_epochs`).
pub const PAST_EPOCHS: u64 = 2;

/// The server's crypto: verification and hashing only (it signs nothing).
pub(crate) fn crypto() -> &'static RustCrypto {
    static CRYPTO: std::sync::OnceLock<RustCrypto> = std::sync::OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
