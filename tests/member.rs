//! The client library's device at work (`client::chat::Chat`)
//! against a real server, each with its state in its own device file:
//! the weekly update path, a user's own new device announced to the
//! others and to the user's other devices, a restart from the device file
//! that goes on where it stopped.

mod common;

use common::phone::identity;
use common::TestServer;
use e2ee_chat::client::chat::{Chat, UPDATE_EVERY_MS};
use e2ee_chat::protocol::{Request, ServerMsg};

async fn epoch(m: &mut Chat, room_id: &str) -> u64 {
    match m
        .c
        .request(&Request::GroupState {
            room_id: room_id.into(),
        })
        .await
        .unwrap()
    {
        ServerMsg::GroupState { epoch, .. } => epoch,
        other => panic!("not group_state: {other:?}"),
    }
}

#[tokio::test]
async fn devices_talk_announce_new_devices_update_weekly_and_restart_from_their_file() {
    let server = TestServer::new();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (alice_id, bob_id) = (identity("alice", 0), identity("bob", 1));
    let mut c = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    c.register(&alice_id).await.unwrap();
    c.register(&bob_id).await.unwrap();

    let mut alice = Chat::open(&url, &alice_id, &dir.path().join("alice.db"))
        .await
        .unwrap();
    let room = alice.create("Lobby", None, false).await.unwrap().room_id;
    let mut bob = Chat::open(&url, &bob_id, &dir.path().join("bob.db"))
        .await
        .unwrap();
    bob.join(&room, None).await.unwrap();
    let sent = alice.send(&room, "hello bob").await.unwrap();
    assert_eq!(sent.announced.len(), 1, "bob's device, before the send");
    assert_eq!(sent.announced[0].user, "bob");
    let got = bob.sync(&room).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].sender.as_str(), got[0].text.as_str()),
        ("alice", "hello bob")
    );
    let sent = bob.send(&room, "hi alice").await.unwrap();
    assert_eq!(
        sent.announced.len(),
        1,
        "alice's phone, before bob's first send"
    );

    // Alice's laptop: a new device of hers. Bob and her phone both name it.
    let mut laptop = Chat::open(&url, &alice_id, &dir.path().join("laptop.db"))
        .await
        .unwrap();
    laptop.join(&room, None).await.unwrap();
    let sent = bob.send(&room, "who is there?").await.unwrap();
    assert_eq!(sent.announced.len(), 1);
    assert_eq!(sent.announced[0].user, "alice");
    assert_eq!(
        sent.announced[0].device_id,
        laptop.device.device_id.to_vec()
    );
    let sent = alice.send(&room, "that is my laptop").await.unwrap();
    assert_eq!(
        sent.announced
            .iter()
            .map(|l| l.device_id.clone())
            .collect::<Vec<_>>(),
        [laptop.device.device_id.to_vec()],
        "the user's own new device is announced too"
    );
    alice.sync(&room).await.unwrap();
    let on_laptop = laptop.sync(&room).await.unwrap();
    assert_eq!(
        on_laptop
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>(),
        ["who is there?", "that is my laptop"]
    );

    // A week without an update: the next send commits one first.
    let before = epoch(&mut alice, &room).await;
    let now = e2ee_chat::util::now_ms();
    alice.set_updated(&room, now - UPDATE_EVERY_MS - 1).unwrap();
    let sent = alice.send(&room, "fresh keys").await.unwrap();
    assert!(sent.updated);
    assert_eq!(epoch(&mut alice, &room).await, before + 1);
    let again = alice.send(&room, "no update now").await.unwrap();
    assert!(!again.updated);

    // Bob's device restarts from its file: it goes on where it stopped.
    drop(bob);
    let mut bob = Chat::open(&url, &bob_id, &dir.path().join("bob.db"))
        .await
        .unwrap();
    let got = bob.sync(&room).await.unwrap();
    assert_eq!(
        got.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
        ["that is my laptop", "fresh keys", "no update now"]
    );
    let history = bob.history(&room).unwrap();
    assert_eq!(history.first().unwrap().text, "hello bob");
    assert!(
        history.iter().any(|p| p.text == "hi alice"),
        "its own text is kept"
    );
    assert_eq!(history.last().unwrap().text, "no update now");
    let sent = bob.send(&room, "back").await.unwrap();
    assert!(sent.announced.is_empty(), "announced before the restart");
    server.stop().await;
}

/// The next `entry` event of `room_id` (other events are skipped).
async fn next_entry(m: &mut Chat, room_id: &str, seq: u64) -> e2ee_chat::protocol::Entry {
    loop {
        if let ServerMsg::Entry(e) = m.c.next_event().await.unwrap() {
            if e.room_id == room_id && e.seq >= seq {
                return e;
            }
        }
    }
}

/// Waits for the `member_left` event of `user` in `room_id`.
async fn member_left(m: &mut Chat, room_id: &str, user: &str) {
    use e2ee_chat::protocol::PlainMsg;
    loop {
        if let ServerMsg::Shared(PlainMsg::MemberLeft {
            room_id: r,
            username,
            ..
        }) = m.c.next_event().await.unwrap()
        {
            if r == room_id && username == user {
                return;
            }
        }
    }
}

#[tokio::test]
async fn live_entries_apply_and_a_member_who_leaves_is_removed_once_by_the_others() {
    let server = TestServer::new();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let ids = [
        identity("alice", 0),
        identity("bob", 1),
        identity("carol", 2),
    ];
    let mut c = e2ee_chat::client::conn::Conn::connect(&url).await.unwrap();
    for id in &ids {
        c.register(id).await.unwrap();
    }
    let mut open = Vec::new();
    for id in &ids {
        let path = dir.path().join(format!("{}.db", id.username));
        open.push(Chat::open(&url, id, &path).await.unwrap());
    }
    let [mut alice, mut bob, mut carol] = <[Chat; 3]>::try_from(open).ok().unwrap();
    let room = alice.create("Lobby", None, false).await.unwrap().room_id;
    bob.join(&room, None).await.unwrap();
    carol.join(&room, None).await.unwrap();
    alice.sync(&room).await.unwrap();

    // Live: Carol's device applies Alice's message as its event comes.
    let sent = alice.send(&room, "live").await.unwrap();
    let e = next_entry(&mut carol, &room, sent.seq).await;
    let got = carol.receive(&e).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].sender.as_str(), got[0].text.as_str()),
        ("alice", "live")
    );
    assert!(
        carol.receive(&e).await.unwrap().is_empty(),
        "a replay is ignored"
    );

    // An event past a gap: what is missing is read from history first.
    let one = bob.send(&room, "one").await.unwrap();
    let two = bob.send(&room, "two").await.unwrap();
    let e = next_entry(&mut carol, &room, two.seq).await;
    assert!(one.seq < two.seq);
    let got = carol.receive(&e).await.unwrap();
    assert_eq!(
        got.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );

    // Bob leaves. Alice's and Carol's devices both hear it and race to
    // commit the removal of his leaf: one commit wins, the other device
    // finds nothing left to remove, and both end in the same epoch.
    alice.sync(&room).await.unwrap();
    let before = epoch(&mut alice, &room).await;
    bob.c
        .request(&Request::Shared(
            e2ee_chat::protocol::PlainRequest::LeaveRoom {
                room_id: room.clone(),
            },
        ))
        .await
        .unwrap();
    member_left(&mut alice, &room, "bob").await;
    member_left(&mut carol, &room, "bob").await;
    let (a, c) = tokio::join!(
        alice.remove_user(&room, "bob"),
        carol.remove_user(&room, "bob")
    );
    a.unwrap();
    c.unwrap();
    assert_eq!(epoch(&mut alice, &room).await, before + 1, "one commit");
    for m in [&mut alice, &mut carol] {
        m.sync(&room).await.unwrap();
        let users: Vec<String> = m
            .devices_in(&room)
            .unwrap()
            .into_iter()
            .map(|(_, u, _)| u)
            .collect();
        assert_eq!(users.len(), 2, "{users:?}");
        assert!(!users.contains(&"bob".to_owned()), "{users:?}");
    }
    let sent = carol.send(&room, "just us").await.unwrap();
    assert!(!sent.updated);
    assert_eq!(
        epoch(&mut carol, &room).await,
        before + 1,
        "no commit_required"
    );
    let got = alice.sync(&room).await.unwrap();
    assert_eq!(got.last().unwrap().text, "just us");
    server.stop().await;
}
