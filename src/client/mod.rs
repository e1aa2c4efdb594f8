//! The protocol-level client: one websocket connection, requests with ids,
//! events queued in arrival order, and the end-to-end crypto of sending and
//! reading messages (encrypt, wrap for every member, sign; verify, unwrap,
//! decrypt).
//!
//! It is deliberately simple: no background task. `request` writes a frame
//! and reads until its reply arrives, queueing any events it reads on the way;
//! `next_event` hands them out. The tests, the CLI and the load generator all
//! use it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::crypto::{self, CryptoError, KeyPair, PublicKeys};
use crate::protocol::{ErrorCode, Member, MessageData, Request, RoomSummary, SendBody, ServerMsg};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the connection{}", .0.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("undecodable frame from the server: {0}")]
    Decode(String),
    #[error("{code:?}: {message}")]
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

/// The plaintext inside a message's ciphertext (a CBOR map with `text`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plaintext {
    pub text: String,
}

/// A message after verification and decryption.
#[derive(Debug, Clone, PartialEq)]
pub struct Decrypted {
    pub room_id: String,
    pub seq: u64,
    pub ts: u64,
    pub sender: String,
    pub text: String,
}

/// Builds a complete `send` body: fresh AES key, nonce and msg_id; the
/// plaintext sealed once; the key wrapped for every recipient; signed.
pub fn seal_message(
    keys: &KeyPair,
    room_id: &str,
    text: &str,
    recipients: &[(String, Vec<u8>)],
) -> Result<SendBody> {
    let (mut body, aes_key) = seal_unwrapped(keys, room_id, text);
    wrap_for(&mut body, &aes_key, recipients)?;
    Ok(body)
}

/// Seals and signs a message without wrapping its key for anyone yet;
/// returns the body and the AES key (kept to re-wrap after `stale_members`).
fn seal_unwrapped(
    keys: &KeyPair,
    room_id: &str,
    text: &str,
) -> (SendBody, [u8; crypto::AES_KEY_LEN]) {
    seal_parts(
        keys,
        room_id,
        text,
        crypto::random_bytes::<{ crypto::MSG_ID_LEN }>(),
    )
}

/// Seals `text` under a fresh AES key and nonce with the given `msg_id`, and
/// signs it; `keys` in the body is left empty for the caller to wrap.
pub fn seal_parts(
    keys: &KeyPair,
    room_id: &str,
    text: &str,
    msg_id: [u8; crypto::MSG_ID_LEN],
) -> (SendBody, [u8; crypto::AES_KEY_LEN]) {
    let aes_key = crypto::random_bytes::<{ crypto::AES_KEY_LEN }>();
    let nonce = crypto::random_bytes::<{ crypto::NONCE_LEN }>();
    let mut plaintext = Vec::new();
    ciborium::into_writer(
        &Plaintext {
            text: text.to_owned(),
        },
        &mut plaintext,
    )
    .expect("plaintext encodes");
    let ciphertext = crypto::seal(
        &aes_key,
        &nonce,
        &crypto::message_aad(room_id, &msg_id),
        &plaintext,
    );
    let signature = keys.sign(&crypto::message_signature_input(
        room_id,
        &msg_id,
        &nonce,
        &ciphertext,
    ));
    let body = SendBody {
        room_id: room_id.to_owned(),
        msg_id: ByteBuf::from(msg_id.to_vec()),
        nonce: ByteBuf::from(nonce.to_vec()),
        ciphertext: ByteBuf::from(ciphertext),
        keys: BTreeMap::new(),
        signature: ByteBuf::from(signature),
    };
    (body, aes_key)
}

fn wrap_for(body: &mut SendBody, aes_key: &[u8], recipients: &[(String, Vec<u8>)]) -> Result<()> {
    body.keys.clear();
    for (name, enc_der) in recipients {
        body.keys.insert(
            name.clone(),
            ByteBuf::from(crypto::wrap_key(enc_der, aes_key)?),
        );
    }
    Ok(())
}

/// Verifies, unwraps and decrypts one message with the sender's pinned keys.
pub fn open_message(me: &KeyPair, sender_keys: &PublicKeys, m: &MessageData) -> Result<String> {
    let input = crypto::message_signature_input(&m.room_id, &m.msg_id, &m.nonce, &m.ciphertext);
    if !sender_keys.verify(&input, &m.signature) {
        return Err(CryptoError::BadSignature.into());
    }
    let aes_key = me.unwrap_key(&m.key)?;
    let plaintext = crypto::open(
        &aes_key,
        &m.nonce,
        &crypto::message_aad(&m.room_id, &m.msg_id),
        &m.ciphertext,
    )?;
    let parsed: Plaintext = ciborium::from_reader(plaintext.as_slice()).map_err(|e| {
        ClientError::Crypto(CryptoError::Other(format!(
            "plaintext is not a CBOR map with text: {e}"
        )))
    })?;
    Ok(parsed.text)
}

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
    pub timeout: Duration,
}

impl Client {
    /// Connects to a `ws://` (or `wss://`) URL, with TCP_NODELAY.
    pub async fn connect(url: &str) -> Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        Ok(Client {
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
        loop {
            let next = tokio::time::timeout(self.timeout, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?;
            match next {
                None => return Err(ClientError::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(WsMessage::Binary(b))) => {
                    let msg = ServerMsg::decode(&b).map_err(ClientError::Decode)?;
                    self.observe(&msg);
                    return Ok(msg);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)),
                    ))
                }
                Some(Ok(_)) => continue,
            }
        }
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
        let signature = identity
            .keys
            .sign(&crypto::login_signature_input(&identity.username, &nonce));
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
        let (mut body, aes_key) = seal_unwrapped(&identity.keys, room_id, text);
        wrap_for(&mut body, &aes_key, &self.recipients(room_id)?)?;
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
                    wrap_for(&mut body, &aes_key, &recipients)?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// Who to wrap for: the room's members, each with the enc key pinned
    /// for them. A member whose keys differ from the pin stops the send.
    fn recipients(&self, room_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let members = self
            .members
            .get(room_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        members
            .iter()
            .map(|m| match self.pins.get(&m.username) {
                Some(p) if same_keys(p, m) => Ok((m.username.clone(), p.enc_der.clone())),
                _ => Err(ClientError::KeyChanged(m.username.clone())),
            })
            .collect()
    }

    /// Verifies and decrypts a message with the sender's pinned keys.
    pub fn decrypt(&self, m: &MessageData) -> Result<Decrypted> {
        let identity = self.identity.as_ref().ok_or(ClientError::NotLoggedIn)?;
        let sender = self
            .pins
            .get(&m.sender)
            .ok_or_else(|| ClientError::UnknownSender(m.sender.clone()))?;
        let text = open_message(&identity.keys, sender, m)?;
        Ok(Decrypted {
            room_id: m.room_id.clone(),
            seq: m.seq,
            ts: m.ts,
            sender: m.sender.clone(),
            text,
        })
    }

    /// Waits for the next `message` event in `room_id` and decrypts it.
    pub async fn next_message(&mut self, room_id: &str) -> Result<Decrypted> {
        let msg = self
            .wait_for(|e| matches!(e, ServerMsg::Message(m) if m.room_id == room_id))
            .await?;
        match msg {
            ServerMsg::Message(m) => self.decrypt(&m),
            _ => unreachable!("matched above"),
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
