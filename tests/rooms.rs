//! Rooms over real sockets (`PROTOCOL.md` section 3), with devices that
//! have real openmls groups.
//! Creating a room with its group, joining by external commit, commits and
//! messages in one log with `entry` events, history, `group_state`,
//! `publish_group_info`, and every rule of the section with its error,
//! each checked to change nothing (the group's epoch, GroupInfo and tree as
//! `group_state` serves them, and the log).

mod common;

use common::phone::{code, refusal, Phone, Refusal};
use common::TestServer;
use e2ee_chat::protocol::{EntryKind, Request, ServerMsg};
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use serde_bytes::ByteBuf;

/// Alice's room with Bob in its group (epoch 1).
async fn room_with_bob(server: &TestServer) -> (Phone, Phone) {
    let mut alice = Phone::register(&server.url(), "alice", 0).await;
    alice.create("lobby").await;
    let mut bob = Phone::register(&server.url(), "bob", 1).await;
    bob.join_room(&alice.room.clone()).await;
    assert_eq!(bob.enter().await, 1);
    alice.catch_up_to(1).await;
    assert_eq!(alice.epoch(), 1);
    (alice, bob)
}

/// A `sent` reply's seq and ts.
fn sent(reply: ServerMsg) -> (u64, u64) {
    match reply {
        ServerMsg::Shared(PlainMsg::Sent { seq, ts, .. }) => (seq, ts),
        other => panic!("not sent: {other:?}"),
    }
}

/// What must not change when a request is refused.
async fn snapshot(p: &mut Phone) -> (u64, Vec<u8>, Vec<u8>, u64) {
    let (epoch, info, tree) = p.group_state().await;
    let history =
        p.c.request(&Request::Shared(PlainRequest::History {
            room_id: p.room.clone(),
            after_seq: None,
            before_seq: None,
            limit: None,
        }))
        .await
        .unwrap();
    let ServerMsg::History { entries, .. } = history else {
        panic!("not history: {history:?}");
    };
    (epoch, info, tree, entries.last().map_or(0, |e| e.seq))
}

#[tokio::test]
async fn create_join_by_external_commit_and_talk() {
    let server = TestServer::new();
    let mut alice = Phone::register(&server.url(), "alice", 0).await;
    let room = alice.create("lobby").await;
    assert!(room.room_id.starts_with("r-") && room.room_id.len() == 34);
    assert_eq!(
        (room.epoch, room.in_group, room.last_seq),
        (0, Some(true), 0)
    );

    let mut bob = Phone::register(&server.url(), "bob", 1).await;
    let joined = bob.join_room(&room.room_id).await;
    assert_eq!((joined.epoch, joined.in_group), (0, Some(false)));
    assert_eq!(bob.enter().await, 1);

    // Alice gets Bob's commit as an entry, with its GroupInfo, and applies it.
    let e = alice.next_entry().await;
    assert_eq!((e.seq, e.kind, e.epoch), (1, EntryKind::Commit, 1));
    assert_eq!(e.sender, "bob");
    assert_eq!(e.device_id.as_slice(), bob.dev.device_id);
    assert!(e.group_info.is_some() && e.msg_id.is_none());
    alice.apply(&e);
    assert_eq!(alice.epoch(), 1);

    // Both ways, one PrivateMessage each.
    let seq = alice.say("hello bob").await;
    assert_eq!(seq, 2);
    assert_eq!(bob.hear().await, "hello bob");
    bob.say("hi alice").await;
    assert_eq!(alice.hear().await, "hi alice");

    // History holds both kinds in one order; the summary has the epoch.
    let (epoch, _, _, last) = snapshot(&mut bob).await;
    assert_eq!((epoch, last), (1, 3));
    let (rooms, _) = bob.c.list_rooms(None).await.unwrap();
    assert_eq!((rooms[0].epoch, rooms[0].last_seq), (1, 3));

    // A new connection of Bob's device is told it is in the group; members
    // come in version 3's shape.
    let mut again = bob.second_connection(&server.url()).await;
    let logged_in = again
        .request(&Request::Shared(PlainRequest::Ping))
        .await
        .unwrap();
    assert!(matches!(
        logged_in,
        ServerMsg::Shared(PlainMsg::Pong { .. })
    ));
    let members = again
        .request(&Request::Shared(PlainRequest::GetMembers {
            room_id: room.room_id.clone(),
        }))
        .await
        .unwrap();
    let ServerMsg::Members { members, .. } = members else {
        panic!("not members: {members:?}");
    };
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].identity_key.as_slice(), alice.id.der.as_slice());
}

#[tokio::test]
async fn logged_in_says_which_rooms_this_device_is_in() {
    let server = TestServer::new();
    let (alice, _bob) = room_with_bob(&server).await;
    let mut c = e2ee_chat::client::conn::Conn::connect(&server.url())
        .await
        .unwrap();
    let ServerMsg::LoggedIn { rooms, .. } =
        c.login(&alice.id, &alice.dev.certificate).await.unwrap()
    else {
        panic!("not logged_in");
    };
    assert_eq!(rooms.len(), 1);
    assert_eq!((rooms[0].epoch, rooms[0].in_group), (1, Some(true)));
    // Another device of Alice's is a member but has no leaf.
    let other = Phone::login(&server.url(), alice.id.clone()).await;
    drop(other);
    let mut c = e2ee_chat::client::conn::Conn::connect(&server.url())
        .await
        .unwrap();
    let fresh = e2ee_chat::client::mls::Device::new("alice", |m| alice.id.sign(m));
    let ServerMsg::LoggedIn { rooms, .. } = c.login(&alice.id, &fresh.certificate).await.unwrap()
    else {
        panic!("not logged_in");
    };
    assert_eq!(rooms[0].in_group, Some(false));
}

#[tokio::test]
async fn bad_commits_get_their_error_and_change_nothing() {
    let server = TestServer::with(|s| {
        s.limits.max_commit_bytes = 100_000;
    });
    let (mut alice, mut bob) = room_with_bob(&server).await;

    // A commit for epoch 1 (Bob's join was built on it): stale_epoch.
    let mut carol = Phone::register(&server.url(), "carol", 2).await;
    carol.join_room(&alice.room.clone()).await;
    let (_, carol_join) = carol.external_commit().await;
    alice.commit(&[]).await; // epoch 2
    bob.catch_up_to(alice.applied).await;
    carol.catch_up_to(alice.applied).await;
    let r = refusal(carol.send_commit(&carol_join).await);
    assert_eq!(
        r,
        Refusal {
            code: ErrorCode::StaleEpoch,
            epoch: Some(2),
            remove: None
        }
    );
    let before = snapshot(&mut alice).await;

    // Garbage and another group's commit: invalid_group.
    let junk = e2ee_chat::client::mls::CommitObjects {
        commit: vec![1, 2, 3],
        group_info: vec![4, 5],
    };
    assert_eq!(
        refusal(alice.send_commit(&junk).await).code,
        ErrorCode::InvalidGroup
    );
    let mut dave = Phone::register(&server.url(), "dave", 3).await;
    dave.create("elsewhere").await;
    let foreign = dave.build_commit(&[]);
    assert_eq!(
        refusal(alice.send_commit(&foreign).await).code,
        ErrorCode::InvalidGroup
    );

    // Bob's commit sent from Alice's connection: not this device's leaf.
    let bobs = bob.build_commit(&[]);
    assert_eq!(
        refusal(alice.send_commit(&bobs).await).code,
        ErrorCode::NotAllowed
    );
    bob.drop_pending();

    // A Remove of a member (Bob is one): not_allowed.
    let bob_leaf = bob.group().own_leaf_index().u32();
    let removal = alice.build_commit(&[bob_leaf]);
    assert_eq!(
        refusal(alice.send_commit(&removal).await).code,
        ErrorCode::NotAllowed
    );
    alice.drop_pending();

    // A GroupInfo that does not match the commit: invalid_group.
    let update = alice.build_commit(&[]);
    let mismatched = e2ee_chat::client::mls::CommitObjects {
        commit: update.commit.clone(),
        group_info: before.1.clone(),
    };
    assert_eq!(
        refusal(alice.send_commit(&mismatched).await).code,
        ErrorCode::InvalidGroup
    );
    alice.drop_pending();

    // Carol's external commit sent from Bob's connection: not his device.
    let (_, carol_join) = carol.external_commit().await;
    assert_eq!(
        refusal(bob.send_commit(&carol_join).await).code,
        ErrorCode::NotAllowed
    );

    // Too large.
    let big = e2ee_chat::client::mls::CommitObjects {
        commit: vec![0; 100_000],
        group_info: vec![0; 16],
    };
    assert_eq!(
        refusal(alice.send_commit(&big).await).code,
        ErrorCode::TooLarge
    );

    // Not a member.
    let mut eve = Phone::register(&server.url(), "eve", 4).await;
    eve.room = alice.room.clone();
    assert_eq!(
        refusal(eve.send_commit(&update).await).code,
        ErrorCode::NotMember
    );

    assert_eq!(snapshot(&mut alice).await, before, "nothing changed");
    // And the group still works.
    alice.commit(&[]).await;
    bob.catch_up_to(alice.applied).await;
    assert_eq!(bob.epoch(), 3);
}

#[tokio::test]
async fn bad_sends_get_their_error_and_change_nothing() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    let old = alice.encrypt("from epoch 1");
    for _ in 0..3 {
        alice.commit(&[]).await;
    }
    bob.catch_up_to(alice.applied).await;
    assert_eq!(alice.epoch(), 4);
    let before = snapshot(&mut alice).await;

    // Three epochs back: stale_epoch with the current one.
    assert_eq!(
        refusal(alice.send_raw(rand::random(), old).await),
        Refusal {
            code: ErrorCode::StaleEpoch,
            epoch: Some(4),
            remove: None
        }
    );
    // Not a PrivateMessage, another group's, a bad msg_id.
    assert_eq!(
        refusal(alice.send_raw(rand::random(), vec![0, 1, 0, 2]).await).code,
        ErrorCode::InvalidMessage
    );
    let mut dave = Phone::register(&server.url(), "dave", 3).await;
    dave.create("elsewhere").await;
    let foreign = dave.encrypt("elsewhere");
    assert_eq!(
        refusal(alice.send_raw(rand::random(), foreign).await).code,
        ErrorCode::InvalidMessage
    );
    let fine = alice.encrypt("fine");
    let short_id = alice
        .c
        .request_raw(&Request::Send {
            room_id: alice.room.clone(),
            msg_id: ByteBuf::from(vec![1; 15]),
            message: ByteBuf::from(fine),
        })
        .await
        .unwrap();
    assert_eq!(refusal(short_id).code, ErrorCode::InvalidMessage);
    // Too large; not a member.
    assert_eq!(
        refusal(alice.send_raw(rand::random(), vec![0; 70_000]).await).code,
        ErrorCode::TooLarge
    );
    let mut eve = Phone::register(&server.url(), "eve", 4).await;
    eve.room = alice.room.clone();
    assert_eq!(
        refusal(eve.send_raw(rand::random(), vec![0; 10]).await).code,
        ErrorCode::NotMember
    );
    assert_eq!(snapshot(&mut alice).await, before, "nothing changed");

    // A resend of a stored message answers its first `sent`.
    let message = alice.encrypt("once");
    let id = rand::random();
    let first = alice.send_raw(id, message.clone()).await;
    let again = alice.send_raw(id, message).await;
    assert_eq!(sent(first), sent(again));
    assert_eq!(bob.hear().await, "once");
}

#[tokio::test]
async fn a_kick_requires_the_removal_commit_before_anyone_sends() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    let mut carol = Phone::register(&server.url(), "carol", 2).await;
    carol.join_room(&alice.room.clone()).await;
    carol.enter().await;
    alice.catch_up_to(carol.applied).await;
    bob.catch_up_to(carol.applied).await;
    // A message sent before the kick, resent after it, still answers `sent`.
    let message = carol.encrypt("before the kick");
    let kept_id = rand::random();
    let first = carol.send_raw(kept_id, message.clone()).await;
    alice.catch_up_to(alice.applied + 1).await;
    bob.catch_up_to(bob.applied + 1).await;

    let bob_leaf = bob.group().own_leaf_index().u32();
    alice
        .c
        .request(&Request::Shared(PlainRequest::Kick {
            room_id: alice.room.clone(),
            username: "bob".into(),
        }))
        .await
        .unwrap();
    let blocked = refusal(carol.try_say("hi").await);
    assert_eq!(
        blocked,
        Refusal {
            code: ErrorCode::CommitRequired,
            epoch: None,
            remove: Some(vec![bob_leaf])
        }
    );
    assert_eq!(sent(carol.send_raw(kept_id, message).await), sent(first));
    // Bob is not a member any more.
    assert_eq!(
        refusal(bob.try_say("still here?").await).code,
        ErrorCode::NotMember
    );
    assert_eq!(
        code(
            bob.c
                .request(&Request::GroupState {
                    room_id: alice.room.clone()
                })
                .await
        ),
        ErrorCode::NotMember
    );

    // Carol commits the removal; sends pass, and messages from before the
    // removal epoch are refused.
    let before_removal = alice.encrypt("from before");
    carol.commit(&[bob_leaf]).await;
    alice.catch_up_to(carol.applied).await;
    assert_eq!(alice.epoch(), carol.epoch());
    let r = refusal(alice.send_raw(rand::random(), before_removal).await);
    assert_eq!(r.code, ErrorCode::StaleEpoch);
    alice.say("bob is gone").await;
    assert_eq!(carol.hear().await, "bob is gone");
}

#[tokio::test]
async fn a_removed_device_leaves_a_leaf_to_remove_and_its_own_user_may_remove_it() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    // Bob's second device enters the group.
    let mut tablet = Phone::login(&server.url(), bob.id.clone()).await;
    tablet.join_room(&alice.room.clone()).await;
    tablet.enter().await;
    alice.catch_up_to(tablet.applied).await;
    bob.catch_up_to(tablet.applied).await;
    let tablet_leaf = tablet.group().own_leaf_index().u32();

    bob.c
        .request(&Request::RemoveDevice {
            device_id: ByteBuf::from(tablet.dev.device_id.to_vec()),
        })
        .await
        .unwrap();
    let r = refusal(alice.try_say("hi").await);
    assert_eq!(r.remove, Some(vec![tablet_leaf]));
    bob.commit(&[tablet_leaf]).await;
    alice.catch_up_to(bob.applied).await;
    alice.say("hi").await;
    assert_eq!(bob.hear().await, "hi");
}

#[tokio::test]
async fn two_commits_racing_for_one_epoch_one_wins_and_everyone_converges() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    let a = alice.build_commit(&[]);
    let b = bob.build_commit(&[]);
    let (ra, rb) = tokio::join!(alice.send_commit(&a), bob.send_commit(&b));
    let (winner, loser, loser_reply) = match (&ra, &rb) {
        (ServerMsg::Committed { .. }, _) => (&mut alice, &mut bob, rb),
        (_, ServerMsg::Committed { .. }) => (&mut bob, &mut alice, ra),
        _ => panic!("one commit must win: {ra:?} {rb:?}"),
    };
    assert_eq!(
        refusal(loser_reply),
        Refusal {
            code: ErrorCode::StaleEpoch,
            epoch: Some(2),
            remove: None
        }
    );
    winner.merge_pending();
    winner.catch_up_to(winner.applied + 1).await;
    // The loser drops its commit, applies the log and tries again.
    loser.drop_pending();
    loser.catch_up_to(loser.applied + 1).await;
    assert_eq!((winner.epoch(), loser.epoch()), (2, 2));
    loser.commit(&[]).await;
    winner.catch_up_to(loser.applied).await;
    assert_eq!(winner.epoch(), 3);
    winner.say("converged").await;
    assert_eq!(loser.hear().await, "converged");
}

#[tokio::test]
async fn published_group_infos_are_served_and_bad_ones_refused() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    let mine = alice
        .dev
        .export_group_info(&alice.provider, alice.group.as_ref().unwrap())
        .unwrap();
    alice
        .c
        .request(&Request::PublishGroupInfo {
            room_id: alice.room.clone(),
            group_info: ByteBuf::from(mine.clone()),
        })
        .await
        .unwrap();
    assert_eq!(bob.group_state().await.1, mine);
    // One of another epoch, and garbage: invalid_group, nothing changed.
    bob.commit(&[]).await;
    alice.catch_up_to(bob.applied).await;
    let before = snapshot(&mut bob).await;
    for bad in [mine, vec![1, 2, 3]] {
        let r = alice
            .c
            .request(&Request::PublishGroupInfo {
                room_id: alice.room.clone(),
                group_info: ByteBuf::from(bad),
            })
            .await;
        assert_eq!(code(r), ErrorCode::InvalidGroup);
    }
    assert_eq!(snapshot(&mut bob).await, before);
}

#[tokio::test]
async fn bad_groups_cannot_create_rooms() {
    let server = TestServer::new();
    let mut alice = Phone::register(&server.url(), "alice", 0).await;
    let mut bob = Phone::register(&server.url(), "bob", 1).await;
    // Bob's group uploaded by Alice: its only leaf is not her device.
    let (_, bobs) = bob.dev.create_group(&bob.provider, [9; 16]).unwrap();
    let create = |gi: Vec<u8>, tree: Vec<u8>| Request::CreateRoom {
        name: "taken".into(),
        password: None,
        hidden: None,
        group_info: ByteBuf::from(gi),
        ratchet_tree: ByteBuf::from(tree),
    };
    let r = alice
        .c
        .request(&create(bobs.group_info.clone(), bobs.ratchet_tree.clone()))
        .await;
    assert_eq!(code(r), ErrorCode::InvalidGroup);
    let r = alice.c.request(&create(vec![1], vec![2])).await;
    assert_eq!(code(r), ErrorCode::InvalidGroup);
    // A tree of many leaves is refused by its size, before openmls checks it.
    let r = alice
        .c
        .request(&create(bobs.group_info.clone(), vec![0; 100_000]))
        .await;
    assert_eq!(code(r), ErrorCode::InvalidGroup);
    // A group id that is taken: room_exists.
    bob.c
        .request(&create(bobs.group_info.clone(), bobs.ratchet_tree.clone()))
        .await
        .unwrap();
    let fresh = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let (_, again) = bob.dev.create_group(&fresh, [9; 16]).unwrap();
    let r = bob
        .c
        .request(&Request::CreateRoom {
            name: "another name".into(),
            password: None,
            hidden: None,
            group_info: ByteBuf::from(again.group_info),
            ratchet_tree: ByteBuf::from(again.ratchet_tree),
        })
        .await;
    assert_eq!(code(r), ErrorCode::RoomExists);
    let (rooms, _) = alice.c.list_rooms(None).await.unwrap();
    assert_eq!(rooms.len(), 1);
}

#[tokio::test]
async fn a_device_that_lost_its_group_resyncs_by_external_commit_removing_its_old_leaf() {
    let server = TestServer::new();
    let (mut alice, mut bob) = room_with_bob(&server).await;
    let old_leaf = bob.group().own_leaf_index().u32();
    alice.commit(&[]).await;
    // Bob lost his group state (it never saw epoch 2); he rejoins with the
    // same device: openmls's external commit removes his old leaf.
    bob.group = None;
    let (group, objects) = bob.external_commit().await;
    match bob.send_commit(&objects).await {
        ServerMsg::Committed { seq, epoch, .. } => {
            assert_eq!(epoch, 3);
            bob.group = Some(group);
            bob.entered_at = seq;
            bob.catch_up_to(seq).await;
        }
        other => panic!("resync refused: {other:?}"),
    }
    alice.catch_up_to(bob.applied).await;
    // Two leaves, one per device: Bob's old one went with his rejoin.
    let bob_cert = bob.dev.certificate.clone();
    let bobs: Vec<u32> = alice
        .group()
        .members()
        .filter(|m| m.credential.serialized_content() == bob_cert.as_slice())
        .map(|m| m.index.u32())
        .collect();
    assert_eq!(alice.group().members().count(), 2);
    assert_eq!(bobs.len(), 1, "{bobs:?} (old leaf {old_leaf})");
    alice.say("welcome back").await;
    assert_eq!(bob.hear().await, "welcome back");
    bob.say("thanks").await;
    assert_eq!(alice.hear().await, "thanks");
}

#[tokio::test]
async fn listings_after_a_restart_carry_each_groups_stored_epoch() {
    let mut server = TestServer::new();
    let (mut alice, _bob) = room_with_bob(&server).await;
    alice.commit(&[]).await;
    server.restart().await;
    // Carol is no member: her login starts no room actor.
    let mut carol = Phone::register(&server.url(), "carol", 2).await;
    let (rooms, _) = carol.c.list_rooms(None).await.unwrap();
    assert_eq!((rooms[0].epoch, rooms[0].last_seq), (2, 2));
}
