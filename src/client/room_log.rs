//! A device's side of section 7 of `PROTOCOL.md` for one room: what it
//! checks before it trusts what the server relays. [`RoomLog`] applies the
//! room's log entries to the device's group strictly in seq order and
//!
//! - validates every leaf's credential against the pinned identity keys
//!   (exact certificate encoding, signature by the user's pinned key, leaf
//!   key equal to the certified key): one bad leaf makes the room untrusted;
//! - collects new devices (the user's own too) to announce before the next
//!   send;
//! - checks that a message's MLS sender carries the certificate of the
//!   entry's claimed `sender` and `device_id`;
//! - never applies an entry twice (a replay), never skips one (a gap asks
//!   for history), and says when the log cannot be applied (a dropped or
//!   deleted commit: resync by external commit).
//!
//! It holds no socket: the caller feeds it entries from `entry` events or
//! `history`, so a hostile server is simply a test that feeds it bad ones.

use std::collections::{HashMap, HashSet};

use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::mls::{Device, Processed};
use crate::identity::{DeviceCertificate, IdentityKey};
use crate::protocol::{Entry, EntryKind};

/// The identity keys this device pinned, by username.
pub trait Pins {
    fn identity(&self, user: &str) -> Option<&IdentityKey>;
}

impl Pins for HashMap<String, IdentityKey> {
    fn identity(&self, user: &str) -> Option<&IdentityKey> {
        self.get(user)
    }
}

/// A device in the room's group, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub index: u32,
    pub user: String,
    pub device_id: Vec<u8>,
    /// SHA-256 of the user's identity key.
    pub fingerprint: [u8; 32],
}

/// What applying one entry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Another device's message, decrypted. `sender_ok` is false when the
    /// MLS sender's certificate is not the entry's `sender`/`device_id`:
    /// show it as failed.
    Message { plaintext: Vec<u8>, sender_ok: bool },
    /// A commit, merged; the devices it brought in (to announce).
    Commit { new_devices: Vec<Leaf> },
    /// This device's own entry (merged at `committed`, or its own message).
    Own,
}

/// Why the log cannot be applied as it came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Already applied (the server sent it again): ignored.
    #[error("entry {0} was applied already")]
    Replayed(u64),
    /// Entries are missing before this one: read history first.
    #[error("entries {from}..{to} are missing")]
    Gap { from: u64, to: u64 },
    /// The room holds a device whose credential fails: do not send there.
    #[error("the room is untrusted: {0}")]
    Untrusted(String),
    /// The group cannot follow the log (a commit was dropped or deleted,
    /// or fails): rejoin by external commit; some messages may be lost.
    #[error("this device must resync: {0}")]
    Resync(String),
}

/// A device's view of one room's log (section 7).
pub struct RoomLog {
    /// The last seq applied.
    pub applied: u64,
    /// Leaves checked, by index: (user, device id).
    leaves: HashMap<u32, (String, Vec<u8>)>,
    /// Devices the user was told about.
    announced: HashSet<(String, Vec<u8>)>,
    /// Devices to announce before this device sends.
    pending: Vec<Leaf>,
    untrusted: Option<String>,
}

impl RoomLog {
    /// After `me` created or joined the group at log position `applied`:
    /// checks every leaf (the whole tree, as section 7 asks at a join); the
    /// other devices in it are to announce, and a leaf that fails the check
    /// makes the room untrusted.
    pub fn new(
        me: &Device,
        group: &MlsGroup,
        pins: &impl Pins,
        applied: u64,
    ) -> Result<Self, LogError> {
        Self::restore(me, group, pins, applied, [])
    }

    /// [`RoomLog::new`] for a group saved on the device, with the devices
    /// the user was already told about.
    pub fn restore(
        me: &Device,
        group: &MlsGroup,
        pins: &impl Pins,
        applied: u64,
        announced: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<Self, LogError> {
        let mut told: HashSet<(String, Vec<u8>)> = announced.into_iter().collect();
        told.insert((me.user.clone(), me.device_id.to_vec()));
        let mut log = RoomLog {
            applied,
            leaves: HashMap::new(),
            announced: told,
            pending: Vec::new(),
            untrusted: None,
        };
        // A leaf that fails makes the room untrusted (no sending, said by
        // `may_send`), not unreadable.
        match log.check_tree(group, pins) {
            Ok(()) | Err(LogError::Untrusted(_)) => Ok(log),
            Err(e) => Err(e),
        }
    }

    /// The device at leaf `index`, as checked.
    pub fn leaf(&self, index: u32) -> Option<(&str, &[u8])> {
        self.leaves
            .get(&index)
            .map(|(u, d)| (u.as_str(), d.as_slice()))
    }

    /// Checks the tree again (after pinning a user seen for the first
    /// time, or trusting a new key): the room is trusted again if every
    /// leaf passes.
    pub fn recheck(&mut self, group: &MlsGroup, pins: &impl Pins) -> Result<(), LogError> {
        self.check_tree(group, pins)
    }

    /// The leaves of `user`'s devices, in index order.
    pub fn leaves_of(&self, user: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .leaves
            .iter()
            .filter(|(_, (u, _))| u == user)
            .map(|(&i, _)| i)
            .collect();
        out.sort_unstable();
        out
    }

    /// The leaf of `user`'s device `device_id`, if it is in the group.
    pub fn index_of(&self, user: &str, device_id: &[u8]) -> Option<u32> {
        self.leaves
            .iter()
            .find(|(_, (u, d))| u == user && d == device_id)
            .map(|(&i, _)| i)
    }

    /// Every device in the group: (leaf index, user, device id), by index.
    pub fn devices(&self) -> Vec<(u32, &str, &[u8])> {
        let mut out: Vec<(u32, &str, &[u8])> = self
            .leaves
            .iter()
            .map(|(&i, (u, d))| (i, u.as_str(), d.as_slice()))
            .collect();
        out.sort_unstable_by_key(|l| l.0);
        out
    }

    /// Whether this device may send now: not in an untrusted room, and
    /// every new device announced (`Err` lists them; call [`Self::announced`]
    /// once the user was told).
    pub fn may_send(&self) -> Result<(), Result<Vec<Leaf>, String>> {
        if let Some(why) = &self.untrusted {
            return Err(Err(why.clone()));
        }
        if !self.pending.is_empty() {
            return Err(Ok(self.pending.clone()));
        }
        Ok(())
    }

    /// The new devices were shown to the user: they are returned, to keep.
    pub fn announced(&mut self) -> Vec<(String, Vec<u8>)> {
        let told: Vec<(String, Vec<u8>)> = self
            .pending
            .drain(..)
            .map(|leaf| (leaf.user, leaf.device_id))
            .collect();
        self.announced.extend(told.iter().cloned());
        told
    }

    /// Checks every leaf of `group`; new devices join `pending`. A leaf
    /// that fails makes the room untrusted; it is still listed by the user
    /// its certificate names, if it decodes, so it can be removed.
    fn check_tree(&mut self, group: &MlsGroup, pins: &impl Pins) -> Result<(), LogError> {
        let mut leaves = HashMap::new();
        let mut failed = None;
        for member in group.members() {
            let credential = member.credential.serialized_content();
            let leaf = match check_leaf(credential, &member.signature_key, pins) {
                Ok(cert) => cert,
                Err(why) => {
                    if let Ok(c) = DeviceCertificate::decode(credential) {
                        leaves.insert(member.index.u32(), (c.user, c.device));
                    }
                    failed.get_or_insert(format!("leaf {}: {why}", member.index.u32()));
                    continue;
                }
            };
            let key = (leaf.user.clone(), leaf.device.clone());
            if !self.announced.contains(&key)
                && !self
                    .pending
                    .iter()
                    .any(|l| l.user == leaf.user && l.device_id == leaf.device)
            {
                let fingerprint = pins
                    .identity(&leaf.user)
                    .map(IdentityKey::fingerprint)
                    .unwrap_or_default();
                self.pending.push(Leaf {
                    index: member.index.u32(),
                    user: leaf.user.clone(),
                    device_id: leaf.device.clone(),
                    fingerprint,
                });
            }
            leaves.insert(member.index.u32(), key);
        }
        self.leaves = leaves;
        match failed {
            // Every leaf checks (a bad one was removed): trusted again.
            None => {
                self.untrusted = None;
                Ok(())
            }
            Some(why) => {
                self.untrusted = Some(why.clone());
                Err(LogError::Untrusted(why))
            }
        }
    }

    /// Applies the next entry of the log to `group` (this `device`'s).
    pub fn apply(
        &mut self,
        device: &Device,
        provider: &OpenMlsRustCrypto,
        group: &mut MlsGroup,
        entry: &Entry,
        pins: &impl Pins,
    ) -> Result<Applied, LogError> {
        if entry.seq <= self.applied {
            return Err(LogError::Replayed(entry.seq));
        }
        if entry.seq > self.applied + 1 {
            return Err(LogError::Gap {
                from: self.applied + 1,
                to: entry.seq - 1,
            });
        }
        if entry.device_id.as_slice() == device.device_id {
            // Its own commit was merged at `committed`; a commit of its own
            // it never merged means it lost its state: resync.
            if entry.kind == EntryKind::Commit && group.epoch().as_u64() < entry.epoch {
                return Err(LogError::Resync(
                    "the log has a commit of this device that it did not merge".into(),
                ));
            }
            self.applied = entry.seq;
            return Ok(Applied::Own);
        }
        let before = group.epoch().as_u64();
        let processed = device.process(provider, group, &entry.data);
        self.applied = entry.seq;
        match processed {
            Ok(Processed::Message {
                plaintext,
                credential,
            }) => {
                let sender_ok = DeviceCertificate::decode(&credential).is_ok_and(|c| {
                    c.user == entry.sender && c.device == entry.device_id.as_slice()
                });
                Ok(Applied::Message {
                    plaintext,
                    sender_ok,
                })
            }
            Ok(Processed::Commit) => {
                let known = self.pending.len();
                self.check_tree(group, pins)?;
                Ok(Applied::Commit {
                    new_devices: self.pending[known..].to_vec(),
                })
            }
            Err(e) if entry.kind == EntryKind::Commit || entry.epoch > before => {
                Err(LogError::Resync(format!("entry {}: {e}", entry.seq)))
            }
            // A message this device cannot read (from before it joined, or
            // damaged): the log goes on.
            Err(e) => Ok(Applied::Message {
                plaintext: format!("[unreadable: {e}]").into_bytes(),
                sender_ok: false,
            }),
        }
    }
}

/// Section 7's check of one leaf: its credential is a device certificate
/// in the exact encoding, signed by the pinned identity key of its user,
/// for the leaf's signature key.
fn check_leaf(
    credential: &[u8],
    signature_key: &[u8],
    pins: &impl Pins,
) -> Result<DeviceCertificate, String> {
    let cert = DeviceCertificate::decode(credential).map_err(|e| e.to_string())?;
    crate::validate::username(&cert.user).map_err(|_| "not a valid username".to_owned())?;
    let identity = pins
        .identity(&cert.user)
        .ok_or_else(|| format!("no pinned identity key for {}", cert.user))?;
    let cert =
        DeviceCertificate::check(credential, &cert.user, identity).map_err(|e| e.to_string())?;
    if cert.mls_key != signature_key {
        return Err("the leaf's key is not the certified one".into());
    }
    Ok(cert)
}
