//! A device's side of MLS rooms (PROTOCOL.md section 2):
//! its Ed25519 key and certificate, the one group configuration every device
//! uses, and the MLS operations a device sends to the server (create a
//! group, join by external commit, commit removals and updates, encrypt),
//! each returning the TLS bytes that go into a frame.
//!
//! State lives in the `OpenMlsRustCrypto` provider the caller passes; the
//! terminal client's persistent store is `device_store`.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::identity::DeviceCertificate;
use crate::mls::CIPHERSUITE;

/// Why an MLS operation failed on the device.
#[derive(Debug, thiserror::Error)]
#[error("MLS: {0}")]
pub struct MlsError(pub String);

fn err(e: impl std::fmt::Debug) -> MlsError {
    MlsError(format!("{e:?}"))
}

/// One installation: a random device id, its own MLS signature key, and the
/// certificate by which the user's identity key vouches for that key.
pub struct Device {
    pub user: String,
    pub device_id: [u8; 16],
    pub signer: SignatureKeyPair,
    pub certificate: Vec<u8>,
}

impl Device {
    /// A new device for `user`; `sign` is the identity key's RSA-PSS signer.
    pub fn new(user: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Self {
        let device_id = crate::crypto::random_bytes::<16>();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .expect("Ed25519 key generation");
        let certificate =
            DeviceCertificate::issue(user, &device_id, signer.public(), sign).encode();
        Device {
            user: user.to_owned(),
            device_id,
            signer,
            certificate,
        }
    }

    /// The leaf credential: a BasicCredential holding the certificate.
    pub fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.certificate.clone()).into(),
            signature_key: self.signer.public().into(),
        }
    }

    /// Creates a group whose only leaf is this device, as `create_room`
    /// wants it: the epoch-0 GroupInfo and the tree.
    pub fn create_group(
        &self,
        provider: &OpenMlsRustCrypto,
        group_id: [u8; 16],
    ) -> Result<(MlsGroup, GroupObjects), MlsError> {
        let group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&group_id))
            .ciphersuite(CIPHERSUITE)
            .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(false)
            .build(provider, &self.signer, self.credential())
            .map_err(err)?;
        let objects = GroupObjects {
            group_info: self.export_group_info(provider, &group)?,
            ratchet_tree: tree_bytes(&group)?,
        };
        Ok((group, objects))
    }

    /// This device's GroupInfo for the group's current epoch.
    pub fn export_group_info(
        &self,
        provider: &OpenMlsRustCrypto,
        group: &MlsGroup,
    ) -> Result<Vec<u8>, MlsError> {
        group
            .export_group_info(provider.crypto(), &self.signer, false)
            .map_err(err)?
            .tls_serialize_detached()
            .map_err(err)
    }

    /// Joins by external commit from what `group_state` serves. The group
    /// returned is already merged locally (openmls's `finalize`): if the
    /// server refuses the commit, the caller must drop it (section 7).
    pub fn join_external(
        &self,
        provider: &OpenMlsRustCrypto,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<(MlsGroup, CommitObjects), MlsError> {
        let info = MlsMessageIn::tls_deserialize_exact(group_info).map_err(err)?;
        let MlsMessageBodyIn::GroupInfo(info) = info.extract() else {
            return Err(MlsError("not a GroupInfo".to_owned()));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree).map_err(err)?;
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(join_config())
            .skip_lifetime_validation()
            .build_group(provider, info, self.credential())
            .map_err(err)?
            .load_psks(provider.storage())
            .map_err(err)?
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), &self.signer, |_| true)
            .map_err(err)?
            .finalize(provider)
            .map_err(err)?;
        Ok((group, CommitObjects::of(bundle)?))
    }

    /// A member commit with these Removes and an update path; pending until
    /// the server says `committed` (then `merge_pending_commit`).
    pub fn commit(
        &self,
        provider: &OpenMlsRustCrypto,
        group: &mut MlsGroup,
        remove: &[u32],
    ) -> Result<CommitObjects, MlsError> {
        let bundle = group
            .commit_builder()
            .propose_removals(remove.iter().map(|i| LeafNodeIndex::new(*i)))
            .force_self_update(true)
            .load_psks(provider.storage())
            .map_err(err)?
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), &self.signer, |_| true)
            .map_err(err)?
            .stage_commit(provider)
            .map_err(err)?;
        CommitObjects::of(bundle)
    }

    /// An application message: the PrivateMessage bytes for `send`.
    pub fn encrypt(
        &self,
        provider: &OpenMlsRustCrypto,
        group: &mut MlsGroup,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        group
            .create_message(provider, &self.signer, plaintext)
            .map_err(err)?
            .tls_serialize_detached()
            .map_err(err)
    }
}

/// What a log entry's MLS message did to this device's group.
#[derive(Debug)]
pub enum Processed {
    /// An application message: its plaintext, and the sender's leaf
    /// credential (the `device_certificate` it carries).
    Message {
        plaintext: Vec<u8>,
        credential: Vec<u8>,
    },
    /// Another device's commit, now merged: the group is at its epoch.
    Commit,
}

impl Device {
    /// Processes a log entry's `data` (another device's commit or a
    /// message) in `group`; a commit is merged at once (entries come in
    /// log order, and the server stored it).
    pub fn process(
        &self,
        provider: &OpenMlsRustCrypto,
        group: &mut MlsGroup,
        data: &[u8],
    ) -> Result<Processed, MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(data)
            .map_err(err)?
            .try_into_protocol_message()
            .map_err(err)?;
        let processed = group.process_message(provider, message).map_err(err)?;
        let credential = processed.credential().serialized_content().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(Processed::Message {
                plaintext: m.into_bytes(),
                credential,
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group.merge_staged_commit(provider, *staged).map_err(err)?;
                Ok(Processed::Commit)
            }
            other => Err(MlsError(format!("not a commit or a message: {other:?}"))),
        }
    }
}

/// Epochs a device keeps secrets for, to read messages sent just before a
/// commit; the server accepts the same window.
pub const MAX_PAST_EPOCHS: usize = 2;

/// The configuration of a group a device joins.
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(false)
        .build()
}

fn tree_bytes(group: &MlsGroup) -> Result<Vec<u8>, MlsError> {
    group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(err)
}

/// What `create_room` uploads.
pub struct GroupObjects {
    pub group_info: Vec<u8>,
    pub ratchet_tree: Vec<u8>,
}

/// What `commit` uploads: the commit and the GroupInfo of the epoch it
/// makes.
pub struct CommitObjects {
    pub commit: Vec<u8>,
    pub group_info: Vec<u8>,
}

impl CommitObjects {
    fn of(bundle: CommitMessageBundle) -> Result<Self, MlsError> {
        let (commit, _, info) = bundle.into_messages();
        let info = info.ok_or_else(|| MlsError("no GroupInfo with the commit".to_owned()))?;
        Ok(CommitObjects {
            commit: commit.tls_serialize_detached().map_err(err)?,
            group_info: info.tls_serialize_detached().map_err(err)?,
        })
    }
}
