//! [`RoomGroup`]: one room's MLS group as its Delivery Service sees it, and
//! the checks of PROTOCOL.md section 3 (`create_room`, `commit`,
//! `publish_group_info`, leaves to remove).

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;

use super::state::{Slot, StateError};
use super::{crypto, wire, CIPHERSUITE};
use crate::identity::{DeviceCertificate, DEVICE_ID_LEN};

/// The device a request comes from: this connection's, with the
/// certificate it proved at login (already checked, PROTOCOL.md `prove`).
#[derive(Debug, Clone, Copy)]
pub struct Committer<'a> {
    pub user: &'a str,
    pub device: &'a [u8],
    pub certificate: &'a [u8],
}

/// What the server knows of who may hold a leaf, from the room's members
/// and the users' devices.
pub trait Roster {
    /// The certificate of `user`'s device `device` if `user` is a current
    /// member and the device is registered and not removed.
    fn certificate(&self, user: &str, device: &[u8]) -> Option<&[u8]>;
}

/// Whose device holds a leaf, from its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOwner {
    pub index: u32,
    pub user: String,
    pub device: Vec<u8>,
    /// The credential's bytes (a device certificate).
    pub certificate: Vec<u8>,
}

impl LeafOwner {
    /// A leaf to remove: its user is no longer a member, or its device was
    /// removed.
    fn is_stale(&self, roster: &impl Roster) -> bool {
        roster.certificate(&self.user, &self.device) != Some(self.certificate.as_slice())
    }
}

/// Why a commit (or an uploaded group) is refused; each maps to one error
/// code of section 6.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// `invalid_group`: does not parse, is for another group, or does not
    /// verify against the group's state.
    #[error("invalid group object: {0}")]
    InvalidGroup(String),
    /// `stale_epoch`: not at the group's current epoch (given).
    #[error("the group is at epoch {0}")]
    StaleEpoch(u64),
    /// For a later epoch than this copy of the group's (given): stale to
    /// the client, unless another process moved the group on (then this
    /// copy reads the stored group again).
    #[error("the group here is at epoch {0}; the commit is for a later one")]
    Ahead(u64),
    /// `not_allowed`: valid MLS, refused by the room's policy.
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

fn invalid(why: impl Into<String>) -> CommitError {
    CommitError::InvalidGroup(why.into())
}

fn not_allowed(why: impl Into<String>) -> CommitError {
    CommitError::NotAllowed(why.into())
}

/// A commit the group has taken: what to store with it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The epoch the commit made.
    pub epoch: u64,
    /// The new public state row.
    pub state: Vec<u8>,
    /// The leaves it removed.
    pub removed: Vec<u32>,
    /// Whether it came from a device joining (an external commit).
    pub external: bool,
}

/// One room's group: openmls's public group, the row it lives in, and who
/// holds each leaf.
pub struct RoomGroup {
    public: PublicGroup,
    slot: Slot,
    leaves: Vec<LeafOwner>,
}

impl std::fmt::Debug for RoomGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomGroup")
            .field("group_id", &hex::encode(self.group_id()))
            .field("epoch", &self.epoch())
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

impl RoomGroup {
    /// `create_room`: the creator's epoch-0 GroupInfo and tree, for a group
    /// whose only leaf is the creator's device.
    pub fn create(
        group_info: &[u8],
        ratchet_tree: &[u8],
        creator: Committer<'_>,
    ) -> Result<Self, CommitError> {
        let uploaded = wire::group_info(group_info).ok_or_else(|| invalid("not a GroupInfo"))?;
        let tree = wire::ratchet_tree(ratchet_tree).ok_or_else(|| invalid("not a ratchet tree"))?;
        let info = &uploaded.info;
        if info.ciphersuite() != CIPHERSUITE {
            return Err(invalid("another ciphersuite"));
        }
        if info.group_id().as_slice().len() != 16 {
            return Err(invalid("the group id is not 16 bytes"));
        }
        if info.epoch().as_u64() != 0 {
            return Err(invalid("not epoch 0"));
        }
        check_extensions(info)?;
        let slot = Slot::default();
        let (public, _) =
            PublicGroup::from_external(crypto(), &slot, tree, uploaded.info, ProposalStore::new())
                .map_err(|e| invalid(format!("{e}")))?;
        let group = RoomGroup::with(public, slot)?;
        match group.leaves.as_slice() {
            [only]
                if only.user == creator.user
                    && only.device == creator.device
                    && only.certificate == creator.certificate => {}
            _ => {
                return Err(invalid(
                    "the group's only leaf must be the creator's device",
                ))
            }
        }
        Ok(group)
    }

    /// A group from its stored row.
    pub fn load(state: &[u8], group_id: &[u8]) -> Result<Self, StateError> {
        let slot = Slot::from_bytes(state)?;
        let public = slot.load(&GroupId::from_slice(group_id))?;
        RoomGroup::with(public, slot).map_err(|e| StateError::new(e.to_string()))
    }

    fn with(public: PublicGroup, slot: Slot) -> Result<Self, CommitError> {
        let leaves = owners(&public)?;
        Ok(RoomGroup {
            public,
            slot,
            leaves,
        })
    }

    pub fn group_id(&self) -> &[u8] {
        self.public.group_id().as_slice()
    }

    pub fn epoch(&self) -> u64 {
        self.public.group_context().epoch().as_u64()
    }

    /// The row to store.
    pub fn state(&self) -> Vec<u8> {
        self.slot.to_bytes()
    }

    /// The tree as `group_state` serves it (the `ratchet_tree` extension's
    /// body).
    pub fn ratchet_tree(&self) -> Vec<u8> {
        self.public
            .export_ratchet_tree()
            .tls_serialize_detached()
            .expect("a tree the group holds encodes")
    }

    /// Who holds each leaf, by leaf index.
    pub fn leaves(&self) -> &[LeafOwner] {
        &self.leaves
    }

    /// The leaves to remove: of users who are no longer members, or of
    /// devices that were removed.
    pub fn leaves_to_remove(&self, roster: &impl Roster) -> Vec<u32> {
        self.leaves
            .iter()
            .filter(|leaf| leaf.is_stale(roster))
            .map(|leaf| leaf.index)
            .collect()
    }

    fn leaf(&self, index: u32) -> Option<&LeafOwner> {
        self.leaves
            .binary_search_by_key(&index, |leaf| leaf.index)
            .ok()
            .map(|at| &self.leaves[at])
    }

    /// Whether `device` of `user` has a leaf (`in_group`).
    pub fn has_device(&self, user: &str, device: &[u8]) -> bool {
        self.leaves
            .iter()
            .any(|leaf| leaf.user == user && leaf.device == device)
    }

    /// `commit`, checks 2–5 of section 3 (the caller has checked membership
    /// and size). On success the group has moved to the new epoch; the
    /// caller stores [`Accepted::state`] with the commit and, if the store
    /// refuses (another process's commit won the epoch), reloads the group
    /// from the store.
    pub fn commit(
        &mut self,
        commit: &[u8],
        group_info: &[u8],
        committer: Committer<'_>,
        roster: &impl Roster,
    ) -> Result<Accepted, CommitError> {
        // 2. Both objects parse and are for this group and ciphersuite.
        let (message, tag) = wire::commit(commit).ok_or_else(|| invalid("not a commit"))?;
        let uploaded = wire::group_info(group_info).ok_or_else(|| invalid("not a GroupInfo"))?;
        let ProtocolMessage::PublicMessage(public_message) = &message else {
            return Err(invalid("not a PublicMessage"));
        };
        if public_message.group_id() != self.public.group_id()
            || uploaded.info.group_id() != self.public.group_id()
            || uploaded.info.ciphersuite() != CIPHERSUITE
        {
            return Err(invalid("another group"));
        }
        // 3. The current epoch.
        let epoch = public_message.epoch().as_u64();
        if epoch > self.epoch() {
            return Err(CommitError::Ahead(self.epoch()));
        }
        if epoch != self.epoch() {
            return Err(CommitError::StaleEpoch(self.epoch()));
        }
        // 4. Valid for the group's public state ...
        let processed = self
            .public
            .process_message(crypto(), message)
            .map_err(|e| invalid(format!("{e}")))?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(invalid("not a commit"));
        };
        let external = matches!(sender, Sender::NewMemberCommit);
        let committer_leaf = match sender {
            Sender::Member(index) => index.u32(),
            Sender::NewMemberCommit => self
                .public
                .ext_commit_sender_index(&staged)
                .map_err(|e| invalid(format!("{e}")))?
                .u32(),
            _ => return Err(invalid("not from a member or a joining device")),
        };
        // ... and the GroupInfo matches the state it creates.
        let signer_key = match staged.update_path_leaf_node() {
            Some(leaf) => leaf.signature_key().clone(),
            None => self
                .public
                .leaf(LeafNodeIndex::new(committer_leaf))
                .ok_or_else(|| invalid("no committer leaf"))?
                .signature_key()
                .clone(),
        };
        check_group_info(
            &uploaded,
            staged.group_context(),
            &tag,
            committer_leaf,
            signer_key,
        )?;
        // 5. Allowed.
        let removed = self.policy(&staged, external, committer_leaf, committer, roster)?;
        self.public
            .merge_commit(&self.slot, *staged)
            .map_err(|e| invalid(format!("{e}")))?;
        // Only the removed leaves and the committer's changed: no need to
        // read every credential again.
        self.leaves.retain(|leaf| !removed.contains(&leaf.index));
        let owner = LeafOwner {
            index: committer_leaf,
            user: committer.user.to_owned(),
            device: committer.device.to_vec(),
            certificate: committer.certificate.to_vec(),
        };
        match self
            .leaves
            .binary_search_by_key(&committer_leaf, |leaf| leaf.index)
        {
            Ok(at) => self.leaves[at] = owner,
            Err(at) => self.leaves.insert(at, owner),
        }
        Ok(Accepted {
            epoch: self.epoch(),
            state: self.state(),
            removed,
            external,
        })
    }

    /// Section 3's rule 5 on a staged commit; the leaves it removes.
    fn policy(
        &self,
        staged: &StagedCommit,
        external: bool,
        committer_leaf: u32,
        committer: Committer<'_>,
        roster: &impl Roster,
    ) -> Result<Vec<u32>, CommitError> {
        let own_device =
            |leaf: &LeafOwner| leaf.user == committer.user && leaf.device == committer.device;
        let mut removed = Vec::new();
        let mut external_inits = 0;
        for queued in staged.queued_proposals() {
            if queued.proposal_or_ref_type() != ProposalOrRefType::Proposal {
                return Err(not_allowed("a proposal by reference"));
            }
            match queued.proposal() {
                Proposal::Remove(remove) => {
                    let index = remove.removed().u32();
                    let leaf = self
                        .leaf(index)
                        .ok_or_else(|| not_allowed("a Remove of an empty leaf"))?;
                    let allowed = if external {
                        own_device(leaf)
                    } else {
                        leaf.is_stale(roster) || leaf.user == committer.user
                    };
                    if !allowed {
                        return Err(not_allowed(format!("a Remove of leaf {index}")));
                    }
                    removed.push(index);
                }
                Proposal::ExternalInit(_) if external => external_inits += 1,
                other => {
                    return Err(not_allowed(format!(
                        "a {:?} proposal",
                        other.proposal_type()
                    )))
                }
            }
        }
        if external && (external_inits != 1 || removed.len() > 1) {
            return Err(not_allowed(
                "an external commit has one ExternalInit and at most one Remove",
            ));
        }
        if !external {
            let sender = self
                .leaf(committer_leaf)
                .ok_or_else(|| invalid("no committer leaf"))?;
            if !own_device(sender) {
                return Err(not_allowed("the commit is not from this device's leaf"));
            }
        }
        // The only leaf a commit can add or change is the committer's own
        // (its update path): it must carry this device's certificate.
        match staged.update_path_leaf_node() {
            Some(leaf) => check_leaf(leaf, committer)?,
            None if external => return Err(invalid("an external commit without a path")),
            None => {}
        }
        // No device has two leaves afterwards. Every commit the group took
        // kept that, so only the committer's device can break it.
        let twice = self.leaves.iter().any(|leaf| {
            own_device(leaf) && leaf.index != committer_leaf && !removed.contains(&leaf.index)
        });
        if twice {
            return Err(not_allowed("a device would hold two leaves"));
        }
        Ok(removed)
    }

    /// `publish_group_info`: a GroupInfo for the current epoch signed by
    /// `committer`'s leaf.
    pub fn check_group_info(
        &self,
        group_info: &[u8],
        committer: Committer<'_>,
    ) -> Result<(), CommitError> {
        let uploaded = wire::group_info(group_info).ok_or_else(|| invalid("not a GroupInfo"))?;
        let leaf = self
            .leaves
            .iter()
            .find(|leaf| leaf.user == committer.user && leaf.device == committer.device)
            .ok_or_else(|| invalid("this device has no leaf in the group"))?;
        let key = self
            .public
            .leaf(LeafNodeIndex::new(leaf.index))
            .ok_or_else(|| invalid("no leaf"))?
            .signature_key()
            .clone();
        let tag = self
            .public
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(|e| invalid(format!("{e}")))?;
        check_group_info(
            &uploaded,
            self.public.group_context(),
            &tag,
            leaf.index,
            key,
        )
    }
}

/// A GroupInfo for `context`, with `external_pub` and no tree, confirming
/// `tag`, signed by leaf `signer` whose key is `key`.
fn check_group_info(
    uploaded: &wire::UploadedGroupInfo,
    context: &GroupContext,
    tag: &[u8],
    signer: u32,
    key: SignaturePublicKey,
) -> Result<(), CommitError> {
    let info = &uploaded.info;
    check_extensions(info)?;
    let same_context = match (
        info.group_context().tls_serialize_detached(),
        context.tls_serialize_detached(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_context {
        return Err(invalid("the GroupInfo's group context is not the group's"));
    }
    if uploaded.confirmation_tag != tag {
        return Err(invalid(
            "the GroupInfo's confirmation tag is not the commit's",
        ));
    }
    if uploaded.signer != signer {
        return Err(invalid("the GroupInfo is not signed by the committer"));
    }
    let key = key.into_signature_public_key_enriched(CIPHERSUITE.signature_algorithm());
    info.verify_no_out(crypto(), &key)
        .map_err(|_| invalid("the GroupInfo's signature does not verify"))
}

fn check_extensions(info: &VerifiableGroupInfo) -> Result<(), CommitError> {
    if info.extensions().external_pub().is_none() {
        return Err(invalid("the GroupInfo has no external_pub"));
    }
    if info.extensions().ratchet_tree().is_some() {
        return Err(invalid("the GroupInfo carries the tree"));
    }
    Ok(())
}

/// A leaf the committer adds or changes carries exactly its device's
/// certificate, and its signature key is the certified key.
fn check_leaf(leaf: &LeafNode, committer: Committer<'_>) -> Result<(), CommitError> {
    let credential = leaf.credential();
    if credential.credential_type() != CredentialType::Basic
        || credential.serialized_content() != committer.certificate
    {
        return Err(not_allowed(
            "the leaf does not carry this device's certificate",
        ));
    }
    let cert = DeviceCertificate::decode(committer.certificate)
        .map_err(|_| not_allowed("this device's certificate does not decode"))?;
    if leaf.signature_key().as_slice() != cert.mls_key.as_slice() {
        return Err(not_allowed(
            "the leaf's signature key is not the certified key",
        ));
    }
    Ok(())
}

/// Who holds each leaf. A leaf whose credential is not a device certificate
/// cannot be in a group the server took (every leaf it added was checked),
/// so meeting one means the state is not the server's.
fn owners(public: &PublicGroup) -> Result<Vec<LeafOwner>, CommitError> {
    public
        .members()
        .map(|member| {
            let credential = &member.credential;
            let cert = (credential.credential_type() == CredentialType::Basic)
                .then(|| DeviceCertificate::decode(credential.serialized_content()).ok())
                .flatten()
                .filter(|cert| cert.device.len() == DEVICE_ID_LEN)
                .ok_or_else(|| {
                    not_allowed(format!("leaf {} is not a device", member.index.u32()))
                })?;
            if member.signature_key != cert.mls_key {
                return Err(not_allowed(format!(
                    "leaf {} does not use its certified key",
                    member.index.u32()
                )));
            }
            Ok(LeafOwner {
                index: member.index.u32(),
                user: cert.user,
                device: cert.device,
                certificate: credential.serialized_content().to_vec(),
            })
        })
        .collect()
}
