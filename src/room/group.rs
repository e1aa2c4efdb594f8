//! A room's MLS group as its `RoomActor` keeps it (PROTOCOL.md
//! section 3, "The room log"): the group's public state ([`RoomGroup`]),
//! the stored GroupInfo, the removal epoch, who may hold a leaf (members'
//! registered devices), and the leaves to remove, kept current so that a
//! `send` costs O(1).
//!
//! [`GroupRoom`] is a plain state machine, no actor and no store, unit-tested
//! below with real openmls devices. A commit moves it at once and yields
//! the entry to append; if the store refuses the entry (another process's
//! commit won the epoch, or the write failed) the actor reloads it from the
//! store's row.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::{EntryKind, LogEntry};
use crate::mls::{
    message_epoch, CommitError, Committer, MessageError, RoomGroup, Roster, StateError, PAST_EPOCHS,
};
use crate::store::{GroupChange, GroupRow, NewEntry};

/// Members' registered, live devices: (user, device id) → certificate.
#[derive(Debug, Clone, Default)]
pub struct Devices(HashMap<(String, Vec<u8>), Vec<u8>>);

impl Devices {
    pub fn add(&mut self, user: &str, device: &[u8], certificate: Vec<u8>) {
        self.0
            .insert((user.to_owned(), device.to_vec()), certificate);
    }

    pub fn remove(&mut self, user: &str, device: &[u8]) {
        self.0.remove(&(user.to_owned(), device.to_vec()));
    }

    /// A member left (or was kicked or banned): none of their devices may
    /// hold a leaf any more.
    pub fn remove_user(&mut self, user: &str) {
        self.0.retain(|(u, _), _| u != user);
    }
}

impl Roster for Devices {
    fn certificate(&self, user: &str, device: &[u8]) -> Option<&[u8]> {
        self.0
            .get(&(user.to_owned(), device.to_vec()))
            .map(Vec::as_slice)
    }
}

/// Why a `send` is refused after the membership and size checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendRefusal {
    /// `invalid_message`.
    Invalid(MessageError),
    /// `commit_required`, with the leaves to remove.
    CommitRequired(Vec<u32>),
    /// `stale_epoch`, with the current epoch.
    StaleEpoch(u64),
    /// For a later epoch than this copy of the group's (the current one
    /// here): `stale_epoch`, unless another process moved the group on.
    Ahead(u64),
}

pub struct GroupRoom {
    room_id: String,
    group: RoomGroup,
    group_info: Vec<u8>,
    removal_epoch: u64,
    devices: Devices,
    to_remove: Vec<u32>,
}

impl GroupRoom {
    /// The room's group from its stored row.
    pub fn load(room_id: &str, row: &GroupRow, devices: Devices) -> Result<Self, StateError> {
        let group = RoomGroup::load(&row.state, &row.group_id)?;
        let mut room = GroupRoom {
            room_id: room_id.to_owned(),
            group,
            group_info: row.group_info.clone(),
            removal_epoch: row.removal_epoch,
            devices,
            to_remove: Vec::new(),
        };
        room.refresh();
        Ok(room)
    }

    fn refresh(&mut self) {
        self.to_remove = self.group.leaves_to_remove(&self.devices);
    }

    pub fn epoch(&self) -> u64 {
        self.group.epoch()
    }

    /// What `group_state` serves: the epoch, the GroupInfo, the tree.
    pub fn group_state(&self) -> (u64, &[u8], Vec<u8>) {
        (self.epoch(), &self.group_info, self.group.ratchet_tree())
    }

    /// The leaves of users who are no longer members or of removed devices.
    pub fn leaves_to_remove(&self) -> &[u32] {
        &self.to_remove
    }

    /// Whether `device` of `user` has a leaf (`in_group`).
    pub fn in_group(&self, user: &str, device: &[u8]) -> bool {
        self.group.has_device(user, device)
    }

    /// Who may hold a leaf changed (a member left, a device was removed or
    /// added): the leaves to remove follow.
    pub fn update_devices(&mut self, change: impl FnOnce(&mut Devices)) {
        change(&mut self.devices);
        self.refresh();
    }

    /// `send`, after membership and size: an application PrivateMessage of
    /// this group, no leaves to remove, and an epoch in the window (the
    /// current one or the `PAST_EPOCHS` before it, and not before the
    /// latest removal). O(1): it reads the message's clear header.
    pub fn check_message(&self, message: &[u8]) -> Result<u64, SendRefusal> {
        let epoch = message_epoch(message, self.group.group_id()).map_err(SendRefusal::Invalid)?;
        if !self.to_remove.is_empty() {
            return Err(SendRefusal::CommitRequired(self.to_remove.clone()));
        }
        let current = self.epoch();
        if epoch > current {
            return Err(SendRefusal::Ahead(current));
        }
        if epoch + PAST_EPOCHS < current || epoch < self.removal_epoch {
            return Err(SendRefusal::StaleEpoch(current));
        }
        Ok(epoch)
    }

    /// `commit`, checks 2–5 (the caller checked membership and size): on
    /// success the group is at the new epoch here and the entry to append
    /// is returned. If the store refuses it, the caller reloads this room
    /// from the store ([`GroupRoom::load`]).
    pub fn commit(
        &mut self,
        commit: &[u8],
        group_info: &[u8],
        committer: Committer<'_>,
    ) -> Result<Arc<NewEntry>, CommitError> {
        let from_epoch = self.epoch();
        let accepted = self
            .group
            .commit(commit, group_info, committer, &self.devices)?;
        let removed = !accepted.removed.is_empty();
        if removed {
            self.removal_epoch = accepted.epoch;
        }
        self.group_info = group_info.to_vec();
        self.refresh();
        Ok(Arc::new(NewEntry {
            room_id: self.room_id.clone(),
            entry: LogEntry {
                kind: EntryKind::Commit,
                sender: committer.user.to_owned(),
                device_id: committer.device.to_vec(),
                epoch: accepted.epoch,
                data: commit.to_vec(),
                msg_id: None,
                group_info: Some(group_info.to_vec()),
            },
            commit: Some(GroupChange {
                from_epoch,
                state: accepted.state,
                removed,
            }),
        }))
    }

    /// `publish_group_info`: checks it, and keeps it; the caller stores it
    /// for the epoch it returns.
    pub fn publish_group_info(
        &mut self,
        group_info: &[u8],
        committer: Committer<'_>,
    ) -> Result<u64, CommitError> {
        self.group.check_group_info(group_info, committer)?;
        self.group_info = group_info.to_vec();
        Ok(self.epoch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mls::testing::Phone;

    fn devices_of(phones: &[&Phone]) -> Devices {
        let mut devices = Devices::default();
        for p in phones {
            devices.add(
                &p.device.user,
                &p.device.device_id,
                p.device.certificate.clone(),
            );
        }
        devices
    }

    /// Alice's room, as stored at creation, with Bob joined by external commit.
    fn room_with_bob() -> (Phone, Phone, GroupRoom) {
        let mut alice = Phone::new("alice");
        let (group, objects) = alice.device.create_group(&alice.provider, [4; 16]).unwrap();
        alice.group = Some(group);
        let created =
            RoomGroup::create(&objects.group_info, &objects.ratchet_tree, alice.me()).unwrap();
        let row = GroupRow {
            group_id: vec![4; 16],
            epoch: 0,
            state: created.state(),
            group_info: objects.group_info.clone(),
            removal_epoch: 0,
        };
        let mut bob = Phone::new("bob");
        let mut room = GroupRoom::load("r-04", &row, devices_of(&[&alice, &bob])).unwrap();
        let (epoch, info, tree) = room.group_state();
        assert_eq!(epoch, 0);
        let (group, join) = bob
            .device
            .join_external(&bob.provider, info, &tree)
            .unwrap();
        bob.group = Some(group);
        let entry = room
            .commit(&join.commit, &join.group_info, bob.me())
            .unwrap();
        assert_eq!(entry.entry.epoch, 1);
        assert_eq!(entry.commit.as_ref().unwrap().from_epoch, 0);
        alice.apply(&join.commit);
        (alice, bob, room)
    }

    #[test]
    fn messages_in_the_epoch_window_pass_in_o1() {
        let (mut alice, mut bob, mut room) = room_with_bob();
        let old = bob.send(b"hi"); // epoch 1
        assert_eq!(room.check_message(&old), Ok(1));
        // Two updates later, epoch-1 messages are still in the window; three, not.
        for _ in 0..2 {
            let c = alice.commit(&[]);
            alice.merge();
            room.commit(&c.commit, &c.group_info, alice.me()).unwrap();
            bob.apply(&c.commit);
        }
        assert_eq!(room.epoch(), 3);
        assert_eq!(room.check_message(&old), Ok(1));
        let c = alice.commit(&[]);
        alice.merge();
        room.commit(&c.commit, &c.group_info, alice.me()).unwrap();
        assert_eq!(room.check_message(&old), Err(SendRefusal::StaleEpoch(4)));
        assert_eq!(
            room.check_message(b"junk"),
            Err(SendRefusal::Invalid(MessageError::NotPrivate))
        );
    }

    #[test]
    fn a_kicked_member_blocks_sends_until_the_removal_commit() {
        let (mut alice, bob, mut room) = room_with_bob();
        let before_kick = alice.send(b"hi");
        room.update_devices(|d| d.remove_user("bob"));
        let bob_leaf = room.leaves_to_remove().to_vec();
        assert_eq!(bob_leaf.len(), 1);
        assert_eq!(
            room.check_message(&before_kick),
            Err(SendRefusal::CommitRequired(bob_leaf.clone()))
        );
        let removal = alice.commit(&bob_leaf);
        alice.merge();
        let entry = room
            .commit(&removal.commit, &removal.group_info, alice.me())
            .unwrap();
        assert!(entry.commit.as_ref().unwrap().removed);
        assert!(room.leaves_to_remove().is_empty());
        assert!(!room.in_group("bob", &bob.device.device_id));
        // Messages from before the removal are refused from now on.
        assert_eq!(
            room.check_message(&before_kick),
            Err(SendRefusal::StaleEpoch(2))
        );
        assert_eq!(room.check_message(&alice.send(b"hi")), Ok(2));
    }

    #[test]
    fn a_refused_commit_changes_nothing_and_a_reload_restores_the_row() {
        let (alice, mut bob, mut room) = room_with_bob();
        let state = room.group.state();
        let bob_update = bob.commit(&[]);
        // From Alice's connection: not allowed, and nothing moved.
        let err = room
            .commit(&bob_update.commit, &bob_update.group_info, alice.me())
            .unwrap_err();
        assert!(matches!(err, CommitError::NotAllowed(_)));
        assert_eq!(room.group.state(), state);
        assert_eq!(room.epoch(), 1);
        // Taken in memory, then the store says another commit won: reload.
        let row_before = GroupRow {
            group_id: vec![4; 16],
            epoch: 1,
            state: state.clone(),
            group_info: room.group_info.clone(),
            removal_epoch: 0,
        };
        room.commit(&bob_update.commit, &bob_update.group_info, bob.me())
            .unwrap();
        assert_eq!(room.epoch(), 2);
        let reloaded = GroupRoom::load("r-04", &row_before, room.devices.clone()).unwrap();
        assert_eq!((reloaded.epoch(), reloaded.group.state()), (1, state));
    }

    #[test]
    fn published_group_infos_are_kept_for_group_state() {
        let (alice, _bob, mut room) = room_with_bob();
        let info = alice
            .device
            .export_group_info(&alice.provider, alice.group.as_ref().unwrap())
            .unwrap();
        assert_eq!(room.publish_group_info(&info, alice.me()), Ok(1));
        assert_eq!(room.group_state().1, info.as_slice());
    }
}
