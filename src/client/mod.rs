//! The protocol-level client: one websocket connection, requests with ids,
//! events queued in arrival order, and the end-to-end crypto of sending and
//! reading messages (encrypt, wrap for every member, sign; verify, unwrap,
//! decrypt).
//!
//! It is deliberately simple: no background task. `request` writes a frame
//! and reads until its reply arrives, queueing any events it reads on the way;
//! `next_event` hands them out. The tests, the CLI and the load generator all
//! use it.

pub mod device_store;
pub mod display;
pub mod envelope;
pub mod member3;
pub mod mls;
pub mod room3;
pub mod v3;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::crypto::{self, CryptoError, KeyPair, PublicKeys};
use crate::protocol::{ErrorCode, Member, MessageData, Request, RoomSummary, ServerMsg};

pub use envelope::{open_message, seal_message, seal_parts, Plaintext};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next binary frame from the server within `timeout`, skipping
/// control frames; a close frame is `Closed` with its code and reason.
/// Version 2's subprotocol (this client's v2 connection sends none, which a
/// v2 server accepts too).
pub const SUBPROTOCOL: &str = "e2ee-chat.v2";

/// Which protocol the server at `url` speaks: one handshake offering both
/// subprotocols, of which the server picks its own (2 or 3).
pub async fn server_protocol(url: &str) -> Result<u8> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("{}, {SUBPROTOCOL}", v3::SUBPROTOCOL))
            .expect("a valid header"),
    );
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError, SubProtocolError};
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| ClientError::Timeout)?;
    let (mut ws, response) = match connected {
        // A server that names no subprotocol speaks version 2 (as this
        // client's own v2 connection, which asks for none).
        Err(Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => return Ok(2),
        other => other?,
    };
    let _ = ws.close(None).await;
    match response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|p| p.to_str().ok())
    {
        Some(v3::SUBPROTOCOL) => Ok(3),
        Some(SUBPROTOCOL) => Ok(2),
        other => Err(ClientError::Decode(format!(
            "the server chose no protocol this client speaks ({other:?})"
        ))),
    }
}

pub(crate) async fn next_binary(ws: &mut Ws, timeout: Duration) -> Result<bytes::Bytes> {
    loop {
        let next = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| ClientError::Timeout)?;
        match next {
            None => return Err(ClientError::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WsMessage::Binary(b))) => return Ok(b),
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(ClientError::Closed(
                    frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)),
                ))
            }
            Some(Ok(_)) => continue,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the connection{}", .0.as_ref().map(|c| format!(" ({})", display::escape(c))).unwrap_or_default())]
    Closed(Option<String>),
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("undecodable frame from the server: {0}")]
    Decode(String),
    #[error("{code:?}: {}", display::escape(.message))]
    Server {
        code: ErrorCode,
        message: String,
        members: Option<Vec<Member>>,
    },
    #[error("unexpected reply: {0:?}")]
    Unexpected(Box<ServerMsg>),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("unknown sender {0}: no pinned key")]
    UnknownSender(String),
    #[error("not logged in")]
    NotLoggedIn,
    #[error("the keys of {0} changed since they were first seen; check the new fingerprint with them and trust it before sending")]
    KeyChanged(String),
    #[error("the server sent a username that breaks the protocol's pattern: {}", display::escape(.0))]
    BadName(String),
    #[error("cannot tell which host the URL names; login proofs sign it")]
    NoHost,
    #[error("this message belongs to another room ({})", display::escape(.0))]
    OtherRoom(String),
}

impl ClientError {
    /// The server's error code, if this is an error reply.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A user's name and private keys.
#[derive(Clone)]
pub struct Identity {
    pub username: String,
    pub keys: KeyPair,
}

/// A message after verification and decryption.
#[derive(Debug, Clone, PartialEq)]
pub struct Decrypted {
    pub room_id: String,
    pub seq: u64,
    /// The server's time of storing (its claim only).
    pub ts: u64,
    /// The sender's time, from the signed plaintext: the one to show.
    pub sent_at: u64,
    pub msg_id: Vec<u8>,
    pub sender: String,
    pub text: String,
}

/// Something the user must be told that the server cannot be trusted with
/// (PROTOCOL.md section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// About to encrypt to a member this client has not encrypted to in
    /// this room before.
    NewRecipient {
        room_id: String,
        username: String,
        fingerprint: [u8; 32],
    },
}

/// Called with each notice before the client acts on it (e.g. before it
/// encrypts to a new recipient).
pub type NoticeHook = Box<dyn FnMut(&Notice) + Send>;

/// Whether a member object carries exactly the pinned keys.
fn same_keys(pinned: &PublicKeys, m: &Member) -> bool {
    pinned.sign_der == m.sign_key.as_slice() && pinned.enc_der == m.enc_key.as_slice()
}

pub struct Client {
    ws: Ws,
    next_id: u64,
    events: VecDeque<ServerMsg>,
    identity: Option<Identity>,
    /// Pinned public keys of every user seen (trust on first use).
    pins: HashMap<String, PublicKeys>,
    /// Users whose keys differed from the pinned ones when seen again.
    pub key_changes: Vec<String>,
    /// Last known member list per room.
    members: HashMap<String, Vec<Member>>,
    /// The host login proofs sign: the authority of the URL dialed.
    host: String,
    /// Signed messages already shown, by (sender, msg_id): a replay is dropped.
    seen: HashSet<(String, Vec<u8>)>,
    /// Per room, the users this client has encrypted to (or was told of).
    recipients_told: HashMap<String, HashSet<String>>,
    /// Notices not yet taken with `take_notices`.
    notices: Vec<Notice>,
    notice_hook: Option<NoticeHook>,
    pub timeout: Duration,
}

impl Client {
    /// Connects to a `ws://` (or `wss://`) URL, with TCP_NODELAY.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects with extra HTTP headers on the upgrade request (e.g. what a
    /// proxy adds, for tests).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Client> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let host = crypto::host_of_url(url).ok_or(ClientError::NoHost)?;
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let bad = |e: String| ClientError::Decode(format!("header {name}: {e}"));
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?,
                HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        Ok(Client {
            host,
            seen: HashSet::new(),
            recipients_told: HashMap::new(),
            notices: Vec::new(),
            notice_hook: None,
            ws,
            next_id: 1,
            events: VecDeque::new(),
            identity: None,
            pins: HashMap::new(),
            key_changes: Vec::new(),
            members: HashMap::new(),
            timeout: Duration::from_secs(10),
        })
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The host this client's login proofs sign.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Signs login proofs for `host` instead of the dialed one (tests of a
    /// relayed login; a real client never needs it).
    pub fn set_host(&mut self, host: &str) {
        self.host = host.to_owned();
    }

    /// Calls `hook` with every notice, before the client acts on it.
    pub fn on_notice(&mut self, hook: NoticeHook) {
        self.notice_hook = Some(hook);
    }

    /// Notices so far (also given to the hook), oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Per room, the users already announced as recipients (for a client
    /// that keeps them across runs).
    pub fn told_recipients(&self) -> &HashMap<String, HashSet<String>> {
        &self.recipients_told
    }

    /// Records users the user was told of in an earlier run.
    pub fn set_told_recipients(&mut self, room_id: &str, users: impl IntoIterator<Item = String>) {
        self.recipients_told
            .entry(room_id.to_owned())
            .or_default()
            .extend(users);
    }

    fn notify(&mut self, notice: Notice) {
        match &mut self.notice_hook {
            Some(hook) => hook(&notice),
            None => log::warn!("{notice:?}"),
        }
        self.notices.push(notice);
    }

    /// Sends raw bytes as one binary frame (for tests of bad input).
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> Result<()> {
        self.ws.send(WsMessage::Binary(frame.into())).await?;
        Ok(())
    }

    /// Sends any websocket message (text frames, pings...).
    pub async fn send_ws(&mut self, msg: WsMessage) -> Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Reads the next server message from the socket (not the queue).
    pub async fn read(&mut self) -> Result<ServerMsg> {
        let frame = next_binary(&mut self.ws, self.timeout).await?;
        let msg = ServerMsg::decode(&frame).map_err(ClientError::Decode)?;
        self.observe(&msg);
        Ok(msg)
    }

    /// Keeps pins and member lists current from everything read.
    fn observe(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Joined { room, members, .. } => {
                self.set_members(&room.room_id, members.clone())
            }
            ServerMsg::Members {
                room_id, members, ..
            } => self.set_members(room_id, members.clone()),
            ServerMsg::Error {
                members: Some(members),
                ..
            } => {
                for m in members {
                    self.pin(m);
                }
            }
            ServerMsg::MemberJoined { room_id, member } => {
                self.pin(member);
                let list = self.members.entry(room_id.clone()).or_default();
                list.retain(|m| m.username != member.username);
                list.push(member.clone());
            }
            ServerMsg::MemberLeft {
                room_id, username, ..
            } => {
                if let Some(list) = self.members.get_mut(room_id) {
                    list.retain(|m| &m.username != username);
                }
            }
            ServerMsg::Removed { room_id, .. } | ServerMsg::RoomDeleted { room_id } => {
                self.members.remove(room_id);
            }
            _ => {}
        }
    }

    fn set_members(&mut self, room_id: &str, members: Vec<Member>) {
        for m in &members {
            self.pin(m);
        }
        self.members.insert(room_id.to_owned(), members);
    }

    fn pin(&mut self, m: &Member) {
        if crate::validate::username(&m.username).is_err() {
            return;
        }
        match self.pins.get(&m.username) {
            Some(p) if same_keys(p, m) => {}
            Some(_) => {
                if !self.key_changes.contains(&m.username) {
                    log::warn!("keys of {} changed since first seen", m.username);
                    self.key_changes.push(m.username.clone());
                }
            }
            None => {
                if let Ok(keys) = PublicKeys::parse(&m.sign_key, &m.enc_key) {
                    self.pins.insert(m.username.clone(), keys);
                }
            }
        }
    }

    /// The pinned keys of a user, if seen.
    pub fn pinned(&self, username: &str) -> Option<&PublicKeys> {
        self.pins.get(username)
    }

    /// Pins keys known from earlier sessions (a persistent pin store), or
    /// replaces a pin the user decided to trust again.
    pub fn pin_keys(&mut self, username: &str, sign_der: &[u8], enc_der: &[u8]) -> Result<()> {
        let keys = PublicKeys::parse(sign_der, enc_der)?;
        self.pins.insert(username.to_owned(), keys);
        self.key_changes.retain(|u| u != username);
        Ok(())
    }

    /// Every pinned user and the fingerprint of the pinned keys.
    pub fn pins(&self) -> impl Iterator<Item = (&str, [u8; 32])> {
        self.pins.iter().map(|(u, k)| (u.as_str(), k.fingerprint()))
    }

    /// `username`'s member object from any room's last member list.
    pub fn members_of_any(&self, username: &str) -> Option<Member> {
        self.members
            .values()
            .flatten()
            .find(|m| m.username == username)
            .cloned()
    }

    /// The last member list seen for a room.
    pub fn members_of(&self, room_id: &str) -> Option<&[Member]> {
        self.members.get(room_id).map(Vec::as_slice)
    }

    /// Sends a request and waits for its reply; events read meanwhile are queued.
    pub async fn request_raw(&mut self, req: &Request) -> Result<ServerMsg> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(req.encode(Some(id))).await?;
        loop {
            let msg = self.read().await?;
            match msg.reply_id() {
                Some(rid) if rid == id => return Ok(msg),
                Some(_) => continue, // a reply to a request we stopped waiting for
                None => self.events.push_back(msg),
            }
        }
    }

    /// Like `request_raw`, but an `error` reply becomes `Err(Server{..})`.
    pub async fn request(&mut self, req: &Request) -> Result<ServerMsg> {
        match self.request_raw(req).await? {
            ServerMsg::Error {
                code,
                message,
                members,
                ..
            } => Err(ClientError::Server {
                code,
                message,
                members,
            }),
            other => Ok(other),
        }
    }

    /// The next event: queued first, then from the socket.
    pub async fn next_event(&mut self) -> Result<ServerMsg> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        self.read().await
    }

    /// Reads events until one matches, keeping the others queued in order.
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&ServerMsg) -> bool,
    ) -> Result<ServerMsg> {
        if let Some(pos) = self.events.iter().position(&mut pred) {
            return Ok(self.events.remove(pos).expect("position is valid"));
        }
        loop {
            let msg = self.read().await?;
            if pred(&msg) {
                return Ok(msg);
            }
            self.events.push_back(msg);
        }
    }

    /// Events read so far and not yet taken.
    pub fn queued_events(&self) -> impl Iterator<Item = &ServerMsg> {
        self.events.iter()
    }

    pub fn drain_events(&mut self) -> Vec<ServerMsg> {
        self.events.drain(..).collect()
    }

    // ------------------------------------------------------------ account

    pub async fn register(&mut self, identity: &Identity) -> Result<()> {
        let req = Request::Register {
            username: identity.username.clone(),
            sign_key: ByteBuf::from(identity.keys.sign_der.clone()),
            enc_key: ByteBuf::from(identity.keys.enc_der.clone()),
        };
        match self.request(&req).await? {
            ServerMsg::Registered { .. } => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Logs in with a signed challenge; returns the user's rooms.
    pub async fn login(&mut self, identity: &Identity) -> Result<Vec<RoomSummary>> {
        let nonce = match self
            .request(&Request::Login {
                username: identity.username.clone(),
            })
            .await?
        {
            ServerMsg::Challenge { nonce, .. } => nonce,
            other => return Err(ClientError::Unexpected(Box::new(other))),
        };
        let signature = identity.keys.sign(&crypto::login_signature_input(
            &self.host,
            &identity.username,
            &nonce,
        ));
        match self
            .request(&Request::Prove {
                signature: ByteBuf::from(signature),
            })
            .await?
        {
            ServerMsg::LoggedIn { rooms, .. } => {
                self.identity = Some(identity.clone());
                // Pin our own keys so our messages verify like anyone's.
                self.pins
                    .entry(identity.username.clone())
                    .or_insert(PublicKeys::parse(
                        &identity.keys.sign_der,
                        &identity.keys.enc_der,
                    )?);
                Ok(rooms)
            }
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    // ------------------------------------------------------------ rooms

    pub async fn list_rooms(
        &mut self,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(Vec<RoomSummary>, u64, u64)> {
        match self.request(&Request::ListRooms { offset, limit }).await? {
            ServerMsg::Rooms {
                rooms,
                total,
                connected,
                ..
            } => Ok((rooms, total, connected)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    fn expect_joined(msg: ServerMsg) -> Result<(RoomSummary, Vec<Member>)> {
        match msg {
            ServerMsg::Joined { room, members, .. } => Ok((room, members)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn create_room(
        &mut self,
        name: &str,
        password: Option<&str>,
        hidden: bool,
    ) -> Result<(RoomSummary, Vec<Member>)> {
        let req = Request::CreateRoom {
            name: name.to_owned(),
            password: password.map(str::to_owned),
            hidden: hidden.then_some(true),
        };
        Self::expect_joined(self.request(&req).await?)
    }

    pub async fn join_room(
        &mut self,
        room_id: &str,
        password: Option<&str>,
    ) -> Result<(RoomSummary, Vec<Member>)> {
        let req = Request::JoinRoom {
            room_id: room_id.to_owned(),
            password: password.map(str::to_owned),
        };
        Self::expect_joined(self.request(&req).await?)
    }

    /// Sends a request whose success reply is a bare `ok`.
    pub async fn request_ok(&mut self, req: &Request) -> Result<()> {
        match self.request(req).await? {
            ServerMsg::Ok { .. } => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn leave_room(&mut self, room_id: &str) -> Result<()> {
        self.request_ok(&Request::LeaveRoom {
            room_id: room_id.to_owned(),
        })
        .await?;
        self.members.remove(room_id);
        Ok(())
    }

    pub async fn get_members(&mut self, room_id: &str) -> Result<Vec<Member>> {
        match self
            .request(&Request::GetMembers {
                room_id: room_id.to_owned(),
            })
            .await?
        {
            ServerMsg::Members { members, .. } => Ok(members),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    // ------------------------------------------------------------ messages

    /// Encrypts `text` for the room's current members and sends it. On
    /// `stale_members` it re-wraps the same message for the new member set
    /// and sends it again (once). Returns (seq, ts).
    pub async fn send_text(&mut self, room_id: &str, text: &str) -> Result<(u64, u64)> {
        let identity = self.identity.clone().ok_or(ClientError::NotLoggedIn)?;
        if !self.members.contains_key(room_id) {
            self.get_members(room_id).await?;
        }
        let msg_id = crypto::random_bytes::<{ crypto::MSG_ID_LEN }>();
        let (mut body, aes_key) = seal_parts(&identity.keys, room_id, text, msg_id);
        let recipients = self.recipients(room_id)?;
        envelope::wrap_for(&mut body, &aes_key, &recipients)?;
        for attempt in 0..3 {
            match self.request(&Request::Send(body.clone())).await {
                Ok(ServerMsg::Sent { seq, ts, .. }) => return Ok((seq, ts)),
                Ok(other) => return Err(ClientError::Unexpected(Box::new(other))),
                Err(ClientError::Server {
                    code: ErrorCode::StaleMembers,
                    members: Some(members),
                    ..
                }) if attempt < 2 => {
                    self.set_members(room_id, members);
                    let recipients = self.recipients(room_id)?;
                    envelope::wrap_for(&mut body, &aes_key, &recipients)?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// Who to wrap for: the room's members, each with the enc key pinned
    /// for them. A member whose keys differ from the pin, or whose name
    /// breaks the protocol's pattern, stops the send. Every member this
    /// client has not encrypted to in the room before is announced first.
    fn recipients(&mut self, room_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let members = self
            .members
            .get(room_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            if crate::validate::username(&m.username).is_err() {
                return Err(ClientError::BadName(m.username.clone()));
            }
            match self.pins.get(&m.username) {
                Some(p) if same_keys(p, m) => out.push((m.username.clone(), p.enc_der.clone())),
                _ => return Err(ClientError::KeyChanged(m.username.clone())),
            }
        }
        let me = self.identity.as_ref().map(|i| i.username.clone());
        for (name, _) in &out {
            let told = self.recipients_told.entry(room_id.to_owned()).or_default();
            if Some(name) == me.as_ref() || !told.insert(name.clone()) {
                continue;
            }
            let fingerprint = self.pins[name].fingerprint();
            self.notify(Notice::NewRecipient {
                room_id: room_id.to_owned(),
                username: name.clone(),
                fingerprint,
            });
        }
        Ok(out)
    }

    /// Verifies and decrypts a message with the sender's pinned keys. Does
    /// not deduplicate: see [`Client::accept`].
    pub fn decrypt(&self, m: &MessageData) -> Result<Decrypted> {
        let identity = self.identity.as_ref().ok_or(ClientError::NotLoggedIn)?;
        if crate::validate::username(&m.sender).is_err() {
            return Err(ClientError::BadName(m.sender.clone()));
        }
        let sender = self
            .pins
            .get(&m.sender)
            .ok_or_else(|| ClientError::UnknownSender(m.sender.clone()))?;
        let plaintext = open_message(&identity.keys, sender, m)?;
        Ok(Decrypted {
            room_id: m.room_id.clone(),
            seq: m.seq,
            ts: m.ts,
            sent_at: plaintext.sent_at,
            msg_id: m.msg_id.to_vec(),
            sender: m.sender.clone(),
            text: plaintext.text,
        })
    }

    /// Decrypts a message to show it: `Ok(None)` when this signed message
    /// (sender, msg_id) was already shown, e.g. replayed by the server under
    /// another seq. Only messages that verify are remembered, so a forged
    /// copy cannot hide the real one.
    pub fn accept(&mut self, m: &MessageData) -> Result<Option<Decrypted>> {
        let d = self.decrypt(m)?;
        let fresh = self.seen.insert((d.sender.clone(), d.msg_id.clone()));
        Ok(fresh.then_some(d))
    }

    /// [`Client::accept`] for a message shown as `room_id`'s: a server can
    /// answer one room's `history` with another room's signed messages, and
    /// those are refused (`OtherRoom`) whatever they say.
    pub fn accept_in(&mut self, room_id: &str, m: &MessageData) -> Result<Option<Decrypted>> {
        if m.room_id != room_id {
            return Err(ClientError::OtherRoom(m.room_id.clone()));
        }
        self.accept(m)
    }

    /// Waits for the next `message` event in `room_id` that was not shown
    /// before, and decrypts it.
    pub async fn next_message(&mut self, room_id: &str) -> Result<Decrypted> {
        loop {
            let msg = self
                .wait_for(|e| matches!(e, ServerMsg::Message(m) if m.room_id == room_id))
                .await?;
            let ServerMsg::Message(m) = msg else {
                unreachable!("matched above")
            };
            if let Some(d) = self.accept(&m)? {
                return Ok(d);
            }
        }
    }

    pub async fn history(
        &mut self,
        room_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(Vec<MessageData>, bool)> {
        let req = Request::History {
            room_id: room_id.to_owned(),
            after_seq,
            before_seq,
            limit,
        };
        match self.request(&req).await? {
            ServerMsg::History {
                messages, has_more, ..
            } => Ok((messages, has_more)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Gives up the client and returns its websocket (for load generators
    /// that read frames themselves).
    pub fn into_ws(self) -> Ws {
        self.ws
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
