//! A device for socket tests: a `Conn` connection, the
//! user's identity key, an openmls device with its own provider, and its
//! group in one room. It does what a real client does (section 7 in
//! brief): applies the log in order, merges its own commit only after
//! `committed`, and joins by external commit from `group_state`.

use e2ee_chat::client::conn::{Conn, IdentityPair};
use e2ee_chat::client::mls::{CommitObjects, Device, Processed};
use e2ee_chat::client::ClientError;
use e2ee_chat::protocol::{Entry, EntryKind, Request, RoomSummary, ServerMsg};
use e2ee_chat::protocol::{ErrorCode, PlainMsg, PlainRequest};
use openmls::prelude::{MlsGroup, OpenMlsProvider};
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;

pub fn identity(name: &str, n: usize) -> IdentityPair {
    let pairs = &super::fixtures().pairs;
    IdentityPair::new(name, pairs[n % pairs.len()].sign.clone())
}

pub struct Phone {
    pub c: Conn,
    pub id: IdentityPair,
    pub dev: Device,
    pub provider: OpenMlsRustCrypto,
    pub group: Option<MlsGroup>,
    pub room: String,
    /// The last seq applied.
    pub applied: u64,
    /// The seq of this device's own entry into the group (earlier
    /// entries are not for it).
    pub entered_at: u64,
}

/// An `error` reply: its code, `epoch` and `remove`.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub epoch: Option<u64>,
    pub remove: Option<Vec<u32>>,
}

pub fn refusal(msg: ServerMsg) -> Refusal {
    match msg {
        ServerMsg::Error {
            code,
            epoch,
            remove,
            ..
        } => Refusal {
            code,
            epoch,
            remove,
        },
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The code of an `error` reply, whatever the success type.
#[track_caller]
pub fn err_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not an error reply: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

pub fn code(result: Result<ServerMsg, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not an error reply: {e}")),
        Ok(msg) => panic!("expected an error, got {msg:?}"),
    }
}

/// The next event matching `pred` (others are dropped), within the
/// connection's timeout.
pub async fn wait_event(c: &mut Conn, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        let e = c.next_event().await.expect("an event");
        if pred(&e) {
            return e;
        }
    }
}

/// Asserts no event matching `pred` arrives within `ms`.
pub async fn no_event(c: &mut Conn, ms: u64, pred: impl Fn(&ServerMsg) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Err(_) => return,
            Ok(Ok(e)) => assert!(!pred(&e), "unexpected event {e:?}"),
            Ok(Err(e)) => panic!("connection failed: {e}"),
        }
    }
}

/// A ping gets its pong.
pub async fn still_serves(c: &mut Conn) {
    let pong = c
        .request(&Request::Shared(PlainRequest::Ping))
        .await
        .unwrap();
    assert!(
        matches!(pong, ServerMsg::Shared(PlainMsg::Pong { .. })),
        "{pong:?}"
    );
}

/// Reads until the server closes: the close frame's code and reason.
pub async fn read_until_closed(c: &mut Conn) -> String {
    loop {
        match c.read().await {
            Ok(_) => continue,
            Err(ClientError::Closed(reason)) => return reason.unwrap_or_default(),
            Err(e) => return e.to_string(),
        }
    }
}

/// A request that carries no MLS object, as a request.
pub fn shared(req: PlainRequest) -> Request {
    Request::Shared(req)
}

impl Phone {
    /// `name` registered if new, and logged in as a new device.
    pub async fn user(url: &str, name: &str, n: usize) -> Phone {
        let id = identity(name, n);
        let mut c = Conn::connect(url).await.expect("connects");
        match c.register(&id).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::UsernameTaken) => {}
            Err(e) => panic!("register {name}: {e}"),
        }
        Phone::login(url, id).await
    }

    /// A request that carries no MLS object; an `error` reply is `Err`.
    pub async fn ask(&mut self, req: PlainRequest) -> Result<ServerMsg, ClientError> {
        self.c.request(&Request::Shared(req)).await
    }

    /// `create_room` with a new group, a password and `hidden`; on success
    /// this phone is in the room's group.
    pub async fn create_with(
        &mut self,
        name: &str,
        password: Option<&str>,
        hidden: bool,
    ) -> Result<RoomSummary, ClientError> {
        let (group, objects) = self
            .dev
            .create_group(&self.provider, rand::random())
            .expect("creates a group");
        let joined = self
            .c
            .request(&Request::CreateRoom {
                name: name.into(),
                password: password.map(str::to_owned),
                hidden: hidden.then_some(true),
                group_info: ByteBuf::from(objects.group_info),
                ratchet_tree: ByteBuf::from(objects.ratchet_tree),
            })
            .await?;
        let ServerMsg::Joined { room, .. } = joined else {
            panic!("not joined: {joined:?}");
        };
        self.group = Some(group);
        self.room = room.room_id.clone();
        self.applied = 0;
        self.entered_at = 0;
        Ok(room)
    }

    /// `join_room` with an optional password (no leaf yet).
    pub async fn join(
        &mut self,
        room_id: &str,
        password: Option<&str>,
    ) -> Result<RoomSummary, ClientError> {
        let joined = self
            .ask(PlainRequest::JoinRoom {
                room_id: room_id.into(),
                password: password.map(str::to_owned),
            })
            .await?;
        let ServerMsg::Joined { room, .. } = joined else {
            panic!("not joined: {joined:?}");
        };
        self.room = room_id.to_owned();
        self.applied = room.last_seq;
        Ok(room)
    }

    /// `get_members` of `room_id`: (name, online), in join order.
    pub async fn online(&mut self, room_id: &str) -> Vec<(String, bool)> {
        match self
            .ask(PlainRequest::GetMembers {
                room_id: room_id.into(),
            })
            .await
            .expect("members")
        {
            ServerMsg::Members { members, .. } => members
                .into_iter()
                .map(|m| (m.username, m.online))
                .collect(),
            other => panic!("not members: {other:?}"),
        }
    }

    /// `list_rooms`: (rooms, total, connected).
    pub async fn rooms(
        &mut self,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> (Vec<RoomSummary>, u64, u64) {
        match self
            .ask(PlainRequest::ListRooms { offset, limit })
            .await
            .expect("rooms")
        {
            ServerMsg::Rooms {
                rooms,
                total,
                connected,
                ..
            } => (rooms, total, connected),
            other => panic!("not rooms: {other:?}"),
        }
    }

    /// `name` registered (first device) and logged in.
    pub async fn register(url: &str, name: &str, n: usize) -> Phone {
        let id = identity(name, n);
        let mut c = Conn::connect(url).await.expect("connects");
        c.register(&id).await.expect("registers");
        Phone::login(url, id).await
    }

    /// A new device of an existing user, logged in.
    pub async fn login(url: &str, id: IdentityPair) -> Phone {
        let dev = Device::new(&id.username, |m| id.sign(m));
        let mut c = Conn::connect(url).await.expect("connects");
        c.login(&id, &dev.certificate).await.expect("logs in");
        Phone {
            c,
            id,
            dev,
            provider: OpenMlsRustCrypto::default(),
            group: None,
            room: String::new(),
            applied: 0,
            entered_at: 0,
        }
    }

    /// Another connection of this same device (same certificate).
    pub async fn second_connection(&self, url: &str) -> Conn {
        let mut c = Conn::connect(url).await.expect("connects");
        c.login(&self.id, &self.dev.certificate)
            .await
            .expect("logs in");
        c
    }

    pub fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("in the group")
    }

    pub fn epoch(&self) -> u64 {
        self.group.as_ref().expect("in the group").epoch().as_u64()
    }

    /// `create_room` with a new group: the `joined` summary.
    pub async fn create(&mut self, name: &str) -> RoomSummary {
        self.create_with(name, None, false)
            .await
            .expect("creates the room")
    }

    /// `join_room`: the `joined` summary.
    pub async fn join_room(&mut self, room_id: &str) -> RoomSummary {
        let joined = self
            .c
            .request(&Request::Shared(PlainRequest::JoinRoom {
                room_id: room_id.into(),
                password: None,
            }))
            .await
            .expect("joins");
        let ServerMsg::Joined { room, .. } = joined else {
            panic!("not joined: {joined:?}");
        };
        self.room = room_id.to_owned();
        self.applied = room.last_seq;
        room
    }

    /// `group_state`: (epoch, GroupInfo, tree).
    pub async fn group_state(&mut self) -> (u64, Vec<u8>, Vec<u8>) {
        self.c.group_state(&self.room).await.expect("group_state")
    }

    /// An external commit built from the current `group_state` (not sent).
    pub async fn external_commit(&mut self) -> (MlsGroup, CommitObjects) {
        let (_, info, tree) = self.group_state().await;
        self.dev
            .join_external(&self.provider, &info, &tree)
            .expect("builds an external commit")
    }

    /// `commit` of `objects`: the raw reply.
    pub async fn send_commit(&mut self, objects: &CommitObjects) -> ServerMsg {
        self.c.commit(&self.room, objects).await.expect("a reply")
    }

    /// Joins the group by external commit; its entry is applied.
    pub async fn enter(&mut self) -> u64 {
        let (group, objects) = self.external_commit().await;
        match self.send_commit(&objects).await {
            ServerMsg::Committed { seq, epoch, .. } => {
                self.group = Some(group);
                self.entered_at = seq;
                self.catch_up_to(seq).await;
                epoch
            }
            other => panic!("external commit refused: {other:?}"),
        }
    }

    /// A member commit (removes, update path), merged once `committed`.
    pub async fn commit(&mut self, remove: &[u32]) -> u64 {
        let objects = self.build_commit(remove);
        match self.send_commit(&objects).await {
            ServerMsg::Committed { seq, epoch, .. } => {
                self.merge_pending();
                self.catch_up_to(seq).await;
                epoch
            }
            other => {
                self.drop_pending();
                panic!("commit refused: {other:?}")
            }
        }
    }

    /// Drops this device's pending commit (refused, or lost a race).
    pub fn drop_pending(&mut self) {
        let provider = &self.provider;
        let group = self.group.as_mut().expect("in the group");
        group
            .clear_pending_commit(provider.storage())
            .expect("drops the pending commit");
    }

    /// Merges this device's pending commit (after `committed`).
    pub fn merge_pending(&mut self) {
        let provider = &self.provider;
        let group = self.group.as_mut().expect("in the group");
        group.merge_pending_commit(provider).expect("merges");
    }

    /// A commit built on this device's group, not sent (pending).
    pub fn build_commit(&mut self, remove: &[u32]) -> CommitObjects {
        let mut group = self.group.take().expect("in the group");
        let objects = self
            .dev
            .commit(&self.provider, &mut group, remove)
            .expect("builds a commit");
        self.group = Some(group);
        objects
    }

    /// Sends `text` with a new msg_id: the raw reply.
    pub async fn try_say(&mut self, text: &str) -> ServerMsg {
        let message = self.encrypt(text);
        self.send_raw(rand::random(), message).await
    }

    /// An application message of `text` (not sent).
    pub fn encrypt(&mut self, text: &str) -> Vec<u8> {
        let mut group = self.group.take().expect("in the group");
        let bytes = self
            .dev
            .encrypt(&self.provider, &mut group, text.as_bytes())
            .expect("encrypts");
        self.group = Some(group);
        bytes
    }

    /// `send` of `message` with `msg_id`: the raw reply.
    pub async fn send_raw(&mut self, msg_id: [u8; 16], message: Vec<u8>) -> ServerMsg {
        self.c
            .request_raw(&Request::Send {
                room_id: self.room.clone(),
                msg_id: ByteBuf::from(msg_id.to_vec()),
                message: ByteBuf::from(message),
            })
            .await
            .expect("a reply")
    }

    /// Sends `text`: its seq.
    pub async fn say(&mut self, text: &str) -> u64 {
        let message = self.encrypt(text);
        match self.send_raw(rand::random(), message).await {
            ServerMsg::Shared(PlainMsg::Sent { seq, .. }) => {
                self.catch_up_to(seq).await;
                seq
            }
            other => panic!("send refused: {other:?}"),
        }
    }

    /// A `history` page of this phone's room: (entries, has_more).
    pub async fn history_page(
        &mut self,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> (Vec<Entry>, bool) {
        let reply = self
            .c
            .request(&Request::Shared(PlainRequest::History {
                room_id: self.room.clone(),
                after_seq: after,
                before_seq: before,
                limit,
            }))
            .await
            .expect("history");
        let ServerMsg::History {
            entries, has_more, ..
        } = reply
        else {
            panic!("not history: {reply:?}");
        };
        (entries, has_more)
    }

    /// The names `get_members` lists for `room_id`.
    pub async fn member_names(&mut self, room_id: &str) -> Vec<String> {
        let reply = self
            .c
            .request(&Request::Shared(PlainRequest::GetMembers {
                room_id: room_id.into(),
            }))
            .await
            .expect("members");
        let ServerMsg::Members { members, .. } = reply else {
            panic!("not members: {reply:?}");
        };
        members.into_iter().map(|m| m.username).collect()
    }

    /// The next `entry` event of this room.
    pub async fn next_entry(&mut self) -> Entry {
        loop {
            match self.c.next_event().await.expect("an event") {
                ServerMsg::Entry(e) if e.room_id == self.room => return e,
                _ => continue,
            }
        }
    }

    /// Applies entries in order until `seq`; the plaintexts of messages
    /// from other devices come back.
    pub async fn catch_up_to(&mut self, seq: u64) -> Vec<String> {
        let mut texts = Vec::new();
        while self.applied < seq {
            let e = self.next_entry().await;
            if let Some(text) = self.apply(&e) {
                texts.push(text);
            }
        }
        texts
    }

    /// Applies one entry (skipping this device's own, which it merged or
    /// cannot decrypt); a message's text comes back.
    pub fn apply(&mut self, e: &Entry) -> Option<String> {
        assert_eq!(e.seq, self.applied + 1, "entries come in seq order");
        self.applied = e.seq;
        let own = e.device_id.as_slice() == self.dev.device_id;
        if own || self.group.is_none() || e.seq <= self.entered_at {
            return None;
        }
        let provider = &self.provider;
        let group = self.group.as_mut().unwrap();
        match self
            .dev
            .process(provider, group, &e.data)
            .expect("processes")
        {
            Processed::Message { plaintext, .. } => {
                Some(String::from_utf8(plaintext).expect("text"))
            }
            Processed::Commit => None,
        }
    }

    /// A new connection of this device (after a restart); its entries are
    /// read from history (`sync`).
    pub async fn reconnect(&mut self, url: &str) {
        self.c = self.second_connection(url).await;
    }

    /// This room's log after `after`, from `history` (every page).
    pub async fn history_after(&mut self, after: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let from = out.last().map_or(after, |e| e.seq);
            let page = self
                .c
                .request(&Request::Shared(PlainRequest::History {
                    room_id: self.room.clone(),
                    after_seq: Some(from),
                    before_seq: None,
                    limit: Some(500),
                }))
                .await
                .expect("history");
            let ServerMsg::History {
                entries, has_more, ..
            } = page
            else {
                panic!("not history: {page:?}");
            };
            out.extend(entries);
            if !has_more {
                return out;
            }
        }
    }

    /// Applies the log from history, after what was applied; a commit of
    /// this device's own whose `committed` never came is merged if the log
    /// has it, else dropped. The texts of others' messages come back.
    pub async fn sync(&mut self) -> Vec<String> {
        let entries = self.history_after(self.applied).await;
        let mine = entries.iter().any(|e| {
            e.device_id.as_slice() == self.dev.device_id
                && e.kind == EntryKind::Commit
                && e.epoch == self.epoch() + 1
        });
        if self.group().pending_commit().is_some() {
            if mine {
                self.merge_pending();
            } else {
                self.drop_pending();
            }
        }
        let mut texts = Vec::new();
        for e in &entries {
            if let Some(text) = self.apply(e) {
                texts.push(text);
            }
        }
        texts
    }

    /// Reads entries until a message arrives: its text.
    pub async fn hear(&mut self) -> String {
        loop {
            let e = self.next_entry().await;
            if let Some(text) = self.apply(&e) {
                return text;
            }
        }
    }
}
