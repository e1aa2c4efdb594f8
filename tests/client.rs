//! A hostile server against a device (`PROTOCOL.md` section 7): the
//! "server" here is the test, which builds the log entries a real server
//! would relay and tampers with them. Each client duty of the section gets
//! its case: a leaf whose certificate is forged or signed by another
//! identity key makes the room untrusted; a message whose MLS sender is not
//! the claimed sender is marked failed; a silently added device is announced
//! before the next send; a replayed commit is never applied twice; a dropped
//! commit is a gap, and a renumbered log makes the device resync.

mod common;

use std::collections::HashMap;

use common::phone::identity;
use e2ee_chat::client::conn::IdentityPair;
use e2ee_chat::client::mls::{CommitObjects, Device};
use e2ee_chat::client::room_log::{Applied, LogError, RoomLog};
use e2ee_chat::identity::IdentityKey;
use e2ee_chat::protocol::{Entry, EntryKind};
use openmls::prelude::MlsGroup;
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;

struct Dev {
    dev: Device,
    provider: OpenMlsRustCrypto,
    group: Option<MlsGroup>,
}

impl Dev {
    fn of(id: &IdentityPair) -> Dev {
        Dev::with(Device::new(&id.username, |m| id.sign(m)))
    }

    fn with(dev: Device) -> Dev {
        Dev {
            dev,
            provider: OpenMlsRustCrypto::default(),
            group: None,
        }
    }

    /// Joins `host`'s group by external commit (as the server's
    /// `group_state` would serve it).
    fn join(&mut self, host: &Dev) -> CommitObjects {
        let group = host.group.as_ref().unwrap();
        let info = host.dev.export_group_info(&host.provider, group).unwrap();
        let tree = {
            use openmls::prelude::tls_codec::Serialize;
            group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .unwrap()
        };
        let (joined, objects) = self
            .dev
            .join_external(&self.provider, &info, &tree)
            .unwrap();
        self.group = Some(joined);
        objects
    }

    fn commit(&mut self, remove: &[u32]) -> CommitObjects {
        let mut group = self.group.take().unwrap();
        let objects = self.dev.commit(&self.provider, &mut group, remove).unwrap();
        group.merge_pending_commit(&self.provider).unwrap();
        self.group = Some(group);
        objects
    }

    fn say(&mut self, text: &str) -> Vec<u8> {
        let mut group = self.group.take().unwrap();
        let bytes = self
            .dev
            .encrypt(&self.provider, &mut group, text.as_bytes())
            .unwrap();
        self.group = Some(group);
        bytes
    }

    fn epoch(&self) -> u64 {
        self.group.as_ref().unwrap().epoch().as_u64()
    }

    fn apply(&mut self, log: &mut RoomLog, e: &Entry, pins: &Pinned) -> Result<Applied, LogError> {
        let group = self.group.as_mut().unwrap();
        log.apply(&self.dev, &self.provider, group, e, pins)
    }
}

type Pinned = HashMap<String, IdentityKey>;

fn pins(ids: &[&IdentityPair]) -> Pinned {
    ids.iter()
        .map(|id| (id.username.clone(), IdentityKey::parse(&id.der).unwrap()))
        .collect()
}

/// The entry a server relays: `sender`/`device` as it claims them.
fn entry(seq: u64, from: &Dev, kind: EntryKind, epoch: u64, data: &[u8]) -> Entry {
    Entry {
        room_id: "r-test".into(),
        seq,
        ts: 0,
        sender: from.dev.user.clone(),
        device_id: ByteBuf::from(from.dev.device_id.to_vec()),
        kind,
        epoch,
        data: ByteBuf::from(data.to_vec()),
        msg_id: (kind == EntryKind::Message).then(|| ByteBuf::from(vec![1; 16])),
        group_info: None,
    }
}

/// Alice's group; her log; Bob joined (entry 1), applied and announced.
fn alice_and_bob() -> (IdentityPair, IdentityPair, Dev, Dev, RoomLog, Pinned) {
    let (alice_id, bob_id) = (identity("alice", 0), identity("bob", 1));
    let pins = pins(&[&alice_id, &bob_id]);
    let mut alice = Dev::of(&alice_id);
    let (group, _) = alice
        .dev
        .create_group(&alice.provider, rand::random())
        .unwrap();
    alice.group = Some(group);
    let mut log = RoomLog::new(&alice.dev, alice.group.as_ref().unwrap(), &pins, 0).unwrap();
    assert_eq!(log.may_send(), Ok(()), "alone: nothing to announce");
    let mut bob = Dev::of(&bob_id);
    let join = bob.join(&alice);
    let applied = alice
        .apply(
            &mut log,
            &entry(1, &bob, EntryKind::Commit, 1, &join.commit),
            &pins,
        )
        .unwrap();
    let Applied::Commit { new_devices } = applied else {
        panic!("not a commit: {applied:?}");
    };
    assert_eq!(new_devices.len(), 1);
    assert_eq!(new_devices[0].user, "bob");
    assert_eq!(new_devices[0].device_id, bob.dev.device_id.to_vec());
    assert_eq!(
        new_devices[0].fingerprint,
        IdentityKey::parse(&bob_id.der).unwrap().fingerprint()
    );
    // Announced before the next send.
    assert!(matches!(log.may_send(), Err(Ok(ref leaves)) if leaves == &new_devices));
    log.announced();
    assert_eq!(log.may_send(), Ok(()));
    (alice_id, bob_id, alice, bob, log, pins)
}

#[test]
fn a_forged_certificate_makes_the_room_untrusted() {
    let (_, _, mut alice, _, mut log, pins) = alice_and_bob();
    // The server lets in a "bob" device whose certificate's signature is junk.
    let mut mallory = Dev::with(Device::new("bob", |_| vec![7; 256]));
    let join = mallory.join(&alice);
    let r = alice.apply(
        &mut log,
        &entry(2, &mallory, EntryKind::Commit, 2, &join.commit),
        &pins,
    );
    assert!(matches!(r, Err(LogError::Untrusted(_))), "{r:?}");
    assert!(matches!(log.may_send(), Err(Err(_))), "no sending there");
}

#[test]
fn a_certificate_signed_by_another_identity_key_makes_the_room_untrusted() {
    let (_, _, mut alice, _, mut log, pins) = alice_and_bob();
    // Carol's identity key certifies a device for "bob".
    let carol = identity("carol", 2);
    let mut fake = Dev::with(Device::new("bob", |m| carol.sign(m)));
    let join = fake.join(&alice);
    let r = alice.apply(
        &mut log,
        &entry(2, &fake, EntryKind::Commit, 2, &join.commit),
        &pins,
    );
    assert!(matches!(r, Err(LogError::Untrusted(_))), "{r:?}");
    // And a user nobody pinned is untrusted too.
    let (_, _, mut alice, _, mut log, pins) = alice_and_bob();
    let mut stranger = Dev::of(&carol);
    let join = stranger.join(&alice);
    let r = alice.apply(
        &mut log,
        &entry(2, &stranger, EntryKind::Commit, 2, &join.commit),
        &pins,
    );
    assert!(matches!(r, Err(LogError::Untrusted(_))), "{r:?}");
}

#[test]
fn a_message_whose_mls_sender_is_not_the_claimed_one_is_marked_failed() {
    let (_, _, mut alice, mut bob, mut log, pins) = alice_and_bob();
    let carol_id = identity("carol", 2);
    let carol = Dev::of(&carol_id);
    let hi = bob.say("hi");
    // The server says Carol sent Bob's message.
    let mut lie = entry(2, &bob, EntryKind::Message, 1, &hi);
    lie.sender = "carol".into();
    lie.device_id = ByteBuf::from(carol.dev.device_id.to_vec());
    let r = alice.apply(&mut log, &lie, &pins).unwrap();
    assert_eq!(
        r,
        Applied::Message {
            plaintext: b"hi".to_vec(),
            sender_ok: false
        }
    );
    // Told the truth, the next one passes.
    let again = bob.say("again");
    let r = alice
        .apply(
            &mut log,
            &entry(3, &bob, EntryKind::Message, 1, &again),
            &pins,
        )
        .unwrap();
    assert_eq!(
        r,
        Applied::Message {
            plaintext: b"again".to_vec(),
            sender_ok: true
        }
    );
}

#[test]
fn a_silently_added_device_is_announced_before_the_next_send() {
    let (alice_id, bob_id, mut alice, _, mut log, pins) = alice_and_bob();
    // A second device of Bob's, and one of Alice's own, enter the group.
    let mut tablet = Dev::of(&bob_id);
    let join = tablet.join(&alice);
    alice
        .apply(
            &mut log,
            &entry(2, &tablet, EntryKind::Commit, 2, &join.commit),
            &pins,
        )
        .unwrap();
    let mut laptop = Dev::of(&alice_id);
    let join = laptop.join(&alice);
    alice
        .apply(
            &mut log,
            &entry(3, &laptop, EntryKind::Commit, 3, &join.commit),
            &pins,
        )
        .unwrap();
    let Err(Ok(leaves)) = log.may_send() else {
        panic!("must announce first");
    };
    let named: Vec<(&str, Vec<u8>)> = leaves
        .iter()
        .map(|l| (l.user.as_str(), l.device_id.clone()))
        .collect();
    assert_eq!(
        named,
        [
            ("bob", tablet.dev.device_id.to_vec()),
            ("alice", laptop.dev.device_id.to_vec())
        ]
    );
    log.announced();
    assert_eq!(log.may_send(), Ok(()));
}

#[test]
fn a_replayed_commit_is_never_applied_twice() {
    let (_, _, mut alice, mut bob, mut log, pins) = alice_and_bob();
    let update = bob.commit(&[]);
    let e = entry(2, &bob, EntryKind::Commit, 2, &update.commit);
    alice.apply(&mut log, &e, &pins).unwrap();
    assert_eq!(alice.epoch(), 2);
    // The same entry again: ignored.
    assert_eq!(alice.apply(&mut log, &e, &pins), Err(LogError::Replayed(2)));
    // The same commit under a new seq: it cannot apply; resync.
    let again = entry(3, &bob, EntryKind::Commit, 2, &update.commit);
    assert!(matches!(
        alice.apply(&mut log, &again, &pins),
        Err(LogError::Resync(_))
    ));
    assert_eq!(alice.epoch(), 2, "applied once");
}

#[test]
fn a_dropped_commit_is_a_gap_and_a_renumbered_log_forces_a_resync() {
    let (_, _, mut alice, mut bob, mut log, pins) = alice_and_bob();
    let update = bob.commit(&[]);
    let _dropped = entry(2, &bob, EntryKind::Commit, 2, &update.commit);
    let after = bob.say("after the commit");
    // Seq 2 is missing: the device reads history first.
    assert_eq!(
        alice.apply(
            &mut log,
            &entry(3, &bob, EntryKind::Message, 2, &after),
            &pins
        ),
        Err(LogError::Gap { from: 2, to: 2 })
    );
    // A server that renumbers its log to hide the commit: the message is of
    // an epoch this device never reached.
    let r = alice.apply(
        &mut log,
        &entry(2, &bob, EntryKind::Message, 2, &after),
        &pins,
    );
    assert!(matches!(r, Err(LogError::Resync(_))), "{r:?}");
    // Nothing was applied from it: the group is still at epoch 1.
    assert_eq!(alice.epoch(), 1);
}
