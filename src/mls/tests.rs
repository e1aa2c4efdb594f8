//! The Delivery Service core against real openmls devices (the client
//! library's `client::mls::Device`): every rule of PROTOCOL.md section 3
//! that a [`RoomGroup`] decides, each refusal checked to change nothing.
//! Certificates carry a placeholder signature: the RSA check happens at
//! `prove`, before a device's certificate reaches a roster.

use std::collections::HashMap;

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::testing::Phone;
use super::*;
use crate::client::mls::Device;

/// Members and their registered devices.
#[derive(Default)]
struct Members(HashMap<(String, Vec<u8>), Vec<u8>>);

impl Members {
    fn of(phones: &[&Phone]) -> Self {
        let mut members = Members::default();
        for phone in phones {
            members.add(phone);
        }
        members
    }

    fn add(&mut self, phone: &Phone) {
        let d = &phone.device;
        self.0.insert(
            (d.user.clone(), d.device_id.to_vec()),
            d.certificate.clone(),
        );
    }

    fn remove_user(&mut self, user: &str) {
        self.0.retain(|(u, _), _| u != user);
    }
}

impl Roster for Members {
    fn certificate(&self, user: &str, device: &[u8]) -> Option<&[u8]> {
        self.0
            .get(&(user.to_owned(), device.to_vec()))
            .map(Vec::as_slice)
    }
}

/// Alice's room, created by her phone.
fn room() -> (Phone, RoomGroup, Vec<u8>) {
    let mut alice = Phone::new("alice");
    let (group, objects) = alice
        .device
        .create_group(&alice.provider, crate::crypto::random_bytes())
        .unwrap();
    alice.group = Some(group);
    let room = RoomGroup::create(&objects.group_info, &objects.ratchet_tree, alice.me()).unwrap();
    (alice, room, objects.group_info)
}

/// Alice's room with Bob's phone joined by external commit.
fn room_with_bob() -> (Phone, Phone, RoomGroup, Vec<u8>) {
    let (mut alice, mut room, info) = room();
    let mut bob = Phone::new("bob");
    let join = bob.join(&room, &info);
    let roster = Members::of(&[&alice, &bob]);
    room.commit(&join.commit, &join.group_info, bob.me(), &roster)
        .unwrap();
    alice.apply(&join.commit);
    (alice, bob, room, join.group_info)
}

/// Asserts `err` is a `not_allowed` whose reason mentions `why`.
fn not_allowed(err: CommitError, why: &str) {
    match err {
        CommitError::NotAllowed(reason) if reason.contains(why) => {}
        other => panic!("expected not_allowed ({why}), got {other:?}"),
    }
}

/// Asserts a refusal changed nothing.
fn unchanged(room: &RoomGroup, before: &[u8]) {
    assert_eq!(room.state(), before, "a refused request changed the group");
}

#[test]
fn create_takes_the_creators_group_and_the_row_round_trips() {
    let (alice, room, _) = room();
    assert_eq!(room.epoch(), 0);
    assert_eq!(room.leaves().len(), 1);
    assert_eq!(room.leaves()[0].user, "alice");
    assert_eq!(room.leaves()[0].device, alice.device.device_id);
    assert!(room.has_device("alice", &alice.device.device_id));

    let loaded = RoomGroup::load(&room.state(), room.group_id()).unwrap();
    assert_eq!(loaded.epoch(), 0);
    assert_eq!(loaded.leaves(), room.leaves());
    assert_eq!(loaded.ratchet_tree(), room.ratchet_tree());
    assert_eq!(loaded.state(), room.state());
    assert!(RoomGroup::load(b"not a row", room.group_id()).is_err());
}

#[test]
fn create_refuses_objects_that_are_not_the_callers_group() {
    let mut alice = Phone::new("alice");
    let bob = Phone::new("bob");
    let (group, objects) = alice
        .device
        .create_group(&alice.provider, crate::crypto::random_bytes())
        .unwrap();
    // Bob uploads Alice's group as his.
    let err = RoomGroup::create(&objects.group_info, &objects.ratchet_tree, bob.me()).unwrap_err();
    assert!(matches!(err, CommitError::InvalidGroup(_)), "{err:?}");
    // Garbage, or the objects swapped.
    for (info, tree) in [
        (&b"junk"[..], &objects.ratchet_tree[..]),
        (&objects.group_info[..], &b"junk"[..]),
        (&objects.ratchet_tree[..], &objects.group_info[..]),
    ] {
        assert!(matches!(
            RoomGroup::create(info, tree, alice.me()),
            Err(CommitError::InvalidGroup(_))
        ));
    }
    // A GroupInfo that carries the tree.
    let with_tree = group
        .export_group_info(alice.provider.crypto(), &alice.device.signer, true)
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    assert!(matches!(
        RoomGroup::create(&with_tree, &objects.ratchet_tree, alice.me()),
        Err(CommitError::InvalidGroup(_))
    ));
    // Not epoch 0.
    alice.group = Some(group);
    alice.commit(&[]);
    alice.merge();
    let info = alice
        .device
        .export_group_info(&alice.provider, alice.group.as_ref().unwrap())
        .unwrap();
    let tree = alice
        .group
        .as_ref()
        .unwrap()
        .export_ratchet_tree()
        .tls_serialize_detached()
        .unwrap();
    assert!(matches!(
        RoomGroup::create(&info, &tree, alice.me()),
        Err(CommitError::InvalidGroup(_))
    ));
}

#[test]
fn an_external_join_is_taken_and_both_devices_talk() {
    let (mut alice, mut bob, room, _) = room_with_bob();
    assert_eq!(room.epoch(), 1);
    assert_eq!(room.leaves().len(), 2);
    assert!(room.has_device("bob", &bob.device.device_id));

    let hello = bob.send(b"hello alice");
    assert_eq!(message_epoch(&hello, room.group_id()), Ok(1));
    assert_eq!(alice.read(&hello), b"hello alice");
    let back = alice.send(b"hi bob");
    assert_eq!(bob.read(&back), b"hi bob");
}

#[test]
fn the_first_commit_for_an_epoch_wins() {
    let (alice, mut room, info) = room();
    let mut bob = Phone::new("bob");
    let mut carol = Phone::new("carol");
    let bob_join = bob.join(&room, &info);
    let carol_join = carol.join(&room, &info);
    let roster = Members::of(&[&alice, &bob, &carol]);
    room.commit(&bob_join.commit, &bob_join.group_info, bob.me(), &roster)
        .unwrap();
    let before = room.state();
    let err = room
        .commit(
            &carol_join.commit,
            &carol_join.group_info,
            carol.me(),
            &roster,
        )
        .unwrap_err();
    assert_eq!(err, CommitError::StaleEpoch(1));
    unchanged(&room, &before);
}

#[test]
fn an_external_commit_must_be_this_connections_device() {
    let (alice, mut room, info) = room();
    let mut bob = Phone::new("bob");
    let carol = Phone::new("carol");
    let join = bob.join(&room, &info);
    let roster = Members::of(&[&alice, &bob, &carol]);
    let before = room.state();
    let err = room
        .commit(&join.commit, &join.group_info, carol.me(), &roster)
        .unwrap_err();
    not_allowed(err, "this device's certificate");
    unchanged(&room, &before);
}

#[test]
fn a_member_commit_must_come_from_this_connections_leaf() {
    let (alice, mut bob, mut room, _) = room_with_bob();
    let roster = Members::of(&[&alice, &bob]);
    let update = bob.commit(&[]);
    let before = room.state();
    let err = room
        .commit(&update.commit, &update.group_info, alice.me(), &roster)
        .unwrap_err();
    not_allowed(err, "not from this device's leaf");
    unchanged(&room, &before);
    // From Bob's own connection it is an update path, and allowed.
    let accepted = room
        .commit(&update.commit, &update.group_info, bob.me(), &roster)
        .unwrap();
    assert_eq!((accepted.epoch, accepted.removed.len()), (2, 0));
}

#[test]
fn removes_only_of_leaves_to_remove() {
    let (mut alice, bob, mut room, _) = room_with_bob();
    let mut roster = Members::of(&[&alice, &bob]);
    let bob_leaf = room
        .leaves()
        .iter()
        .find(|l| l.user == "bob")
        .unwrap()
        .index;

    // Bob is still a member: his leaf is not Alice's to remove.
    assert!(room.leaves_to_remove(&roster).is_empty());
    let kick = alice.commit(&[bob_leaf]);
    let before = room.state();
    let err = room
        .commit(&kick.commit, &kick.group_info, alice.me(), &roster)
        .unwrap_err();
    not_allowed(err, "a Remove of leaf");
    unchanged(&room, &before);

    // Once he is kicked, his leaf is one to remove, and the same commit passes.
    roster.remove_user("bob");
    assert_eq!(room.leaves_to_remove(&roster), vec![bob_leaf]);
    let accepted = room
        .commit(&kick.commit, &kick.group_info, alice.me(), &roster)
        .unwrap();
    assert_eq!(accepted.removed, vec![bob_leaf]);
    assert!(room.leaves_to_remove(&roster).is_empty());
    assert!(!room.has_device("bob", &bob.device.device_id));
}

#[test]
fn a_user_may_remove_their_own_other_device() {
    let (mut alice, mut room, info) = room();
    let mut laptop = Phone {
        device: Device::new("alice", |_| vec![7; 256]),
        provider: OpenMlsRustCrypto::default(),
        group: None,
    };
    let join = laptop.join(&room, &info);
    let roster = Members::of(&[&alice, &laptop]);
    room.commit(&join.commit, &join.group_info, laptop.me(), &roster)
        .unwrap();
    alice.apply(&join.commit);
    let laptop_leaf = room
        .leaves()
        .iter()
        .find(|l| l.device == laptop.device.device_id)
        .unwrap()
        .index;
    let remove = alice.commit(&[laptop_leaf]);
    let accepted = room
        .commit(&remove.commit, &remove.group_info, alice.me(), &roster)
        .unwrap();
    assert_eq!(accepted.removed, vec![laptop_leaf]);
}

#[test]
fn adds_are_not_allowed() {
    let (mut alice, mut room, _) = room();
    let carol = Phone::new("carol");
    let roster = Members::of(&[&alice, &carol]);
    let key_package = KeyPackage::builder()
        .build(
            super::CIPHERSUITE,
            &carol.provider,
            &carol.device.signer,
            carol.device.credential(),
        )
        .unwrap();
    let provider = &alice.provider;
    let group = alice.group.as_mut().unwrap();
    let bundle = group
        .commit_builder()
        .propose_adds([key_package.key_package().clone()])
        .load_psks(provider.storage())
        .unwrap()
        .create_group_info(true)
        .build(
            provider.rand(),
            provider.crypto(),
            &alice.device.signer,
            |_| true,
        )
        .unwrap()
        .stage_commit(provider)
        .unwrap();
    let (commit, _, info) = bundle.into_messages();
    let before = room.state();
    let err = room
        .commit(
            &commit.tls_serialize_detached().unwrap(),
            &info.unwrap().tls_serialize_detached().unwrap(),
            alice.me(),
            &roster,
        )
        .unwrap_err();
    not_allowed(err, "Add proposal");
    unchanged(&room, &before);
}

#[test]
fn the_group_info_must_be_the_one_the_commit_makes() {
    let (mut alice, bob, mut room, bob_info) = room_with_bob();
    let roster = Members::of(&[&alice, &bob]);
    let update = alice.commit(&[]);
    let before = room.state();
    // The previous epoch's GroupInfo (Bob's) with Alice's commit.
    for info in [&bob_info[..], b"junk", &update.commit[..]] {
        let err = room
            .commit(&update.commit, info, alice.me(), &roster)
            .unwrap_err();
        assert!(matches!(err, CommitError::InvalidGroup(_)), "{err:?}");
        unchanged(&room, &before);
    }
    // A forged signature: flip the last byte.
    let mut forged = update.group_info.clone();
    *forged.last_mut().unwrap() ^= 1;
    let err = room
        .commit(&update.commit, &forged, alice.me(), &roster)
        .unwrap_err();
    assert!(matches!(err, CommitError::InvalidGroup(_)), "{err:?}");
    unchanged(&room, &before);
    room.commit(&update.commit, &update.group_info, alice.me(), &roster)
        .unwrap();
}

#[test]
fn a_forged_commit_is_invalid() {
    let (mut alice, bob, mut room, _) = room_with_bob();
    let roster = Members::of(&[&alice, &bob]);
    let update = alice.commit(&[]);
    let mut forged = update.commit.clone();
    let at = forged.len() - 40;
    forged[at] ^= 1;
    let before = room.state();
    let err = room
        .commit(&forged, &update.group_info, alice.me(), &roster)
        .unwrap_err();
    assert!(matches!(err, CommitError::InvalidGroup(_)), "{err:?}");
    unchanged(&room, &before);
}

#[test]
fn a_lost_device_resyncs_by_replacing_its_own_leaf() {
    let (alice, bob, mut room, info) = room_with_bob();
    let roster = Members::of(&[&alice, &bob]);
    let old_leaf = room
        .leaves()
        .iter()
        .find(|l| l.user == "bob")
        .unwrap()
        .index;
    // Bob's device lost its state; the same device rejoins.
    let mut again = Phone {
        device: bob.device,
        provider: OpenMlsRustCrypto::default(),
        group: None,
    };
    let join = again.join(&room, &info);
    let accepted = room
        .commit(&join.commit, &join.group_info, again.me(), &roster)
        .unwrap();
    assert_eq!(accepted.removed, vec![old_leaf]);
    assert!(accepted.external);
    assert_eq!(room.leaves().len(), 2);
}

#[test]
fn a_commit_of_another_group_is_invalid() {
    let (alice, bob, mut room, _) = room_with_bob();
    let (_, other, other_info) = self::room();
    let mut carol = Phone::new("carol");
    let join = carol.join(&other, &other_info);
    let roster = Members::of(&[&alice, &bob, &carol]);
    let before = room.state();
    let err = room
        .commit(&join.commit, &join.group_info, carol.me(), &roster)
        .unwrap_err();
    assert!(matches!(err, CommitError::InvalidGroup(_)), "{err:?}");
    unchanged(&room, &before);
}

#[test]
fn message_headers() {
    let (_, mut bob, room, _) = room_with_bob();
    let (_, other, _) = self::room();
    let hello = bob.send(b"hi");
    assert_eq!(message_epoch(&hello, room.group_id()), Ok(1));
    assert_eq!(
        message_epoch(&hello, other.group_id()),
        Err(MessageError::OtherGroup)
    );
    let update = bob.commit(&[]);
    assert_eq!(
        message_epoch(&update.commit, room.group_id()),
        Err(MessageError::NotPrivate)
    );
    assert_eq!(
        message_epoch(b"junk", room.group_id()),
        Err(MessageError::NotPrivate)
    );
}

#[test]
fn publish_group_info_takes_only_the_devices_own_current_one() {
    let (alice, bob, room, bob_info) = room_with_bob();
    let alice_info = alice
        .device
        .export_group_info(&alice.provider, alice.group.as_ref().unwrap())
        .unwrap();
    room.check_group_info(&alice_info, alice.me()).unwrap();
    room.check_group_info(&bob_info, bob.me()).unwrap();
    // Bob's GroupInfo uploaded by Alice's connection.
    assert!(matches!(
        room.check_group_info(&bob_info, alice.me()),
        Err(CommitError::InvalidGroup(_))
    ));
    // A device with no leaf.
    let carol = Phone::new("carol");
    assert!(room.check_group_info(&alice_info, carol.me()).is_err());
}
