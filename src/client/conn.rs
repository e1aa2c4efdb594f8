//! One connection (`PROTOCOL.md`): the subprotocol `e2ee-chat.v3`,
//! requests with ids, events queued in arrival order, and the account steps
//! (register with a proof, login proved by the identity key with this
//! device's certificate). The MLS side of a device is
//! [`super::mls::Device`]; a device at work over one connection is
//! [`super::chat::Chat`].

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::SinkExt;
use rsa::pkcs8::EncodePublicKey;
use rsa::RsaPrivateKey;
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{ClientError, Result, Ws};
use crate::crypto;
use crate::identity::{login_signature_input, register_proof_input};
use crate::protocol::{PlainMsg, PlainRequest};
use crate::protocol::{Request, ServerMsg};

/// The subprotocol (PROTOCOL.md section 1).
pub const SUBPROTOCOL: &str = "e2ee-chat.v3";

/// A user's identity key pair (RSA-PSS); the private half stays here.
#[derive(Clone)]
pub struct IdentityPair {
    pub username: String,
    pub private: RsaPrivateKey,
    /// The public key, SPKI DER (`identity_key`).
    pub der: Vec<u8>,
}

impl IdentityPair {
    pub fn new(username: &str, private: RsaPrivateKey) -> Self {
        let der = private
            .to_public_key()
            .to_public_key_der()
            .expect("an RSA public key encodes")
            .as_bytes()
            .to_vec();
        IdentityPair {
            username: username.to_owned(),
            private,
            der,
        }
    }

    /// RSA-PSS (SHA-256, salt 32) over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        crypto::pss_sign(&self.private, msg)
    }
}

/// One websocket connection.
pub struct Conn {
    ws: Ws,
    host: String,
    next_id: u64,
    events: VecDeque<ServerMsg>,
    pub timeout: Duration,
}

impl Conn {
    /// Connects to a `ws://` (or `wss://`) URL asking for `e2ee-chat.v3`,
    /// with TCP_NODELAY.
    pub async fn connect(url: &str) -> Result<Conn> {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects with extra HTTP headers on the upgrade request (e.g. what a
    /// proxy adds, for tests).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Conn> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let host = crypto::host_of_url(url).ok_or(ClientError::NoHost)?;
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        for (name, value) in headers {
            let bad = |e: String| ClientError::Decode(format!("header {name}: {e}"));
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?,
                HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        Ok(Conn {
            ws,
            host,
            next_id: 1,
            events: VecDeque::new(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The socket, for callers that pipeline frames themselves.
    pub fn into_ws(self) -> Ws {
        self.ws
    }

    /// The host a proof signs (from the URL).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Signs proofs for `host` instead (what a client relayed through a
    /// look-alike server would sign; for tests).
    pub fn set_host(&mut self, host: &str) {
        self.host = host.to_owned();
    }

    /// Sends raw bytes as one binary frame (for tests of bad input).
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> Result<()> {
        self.ws.send(WsMessage::Binary(frame.into())).await?;
        Ok(())
    }

    /// Reads the next server frame from the socket (not the queue).
    pub async fn read(&mut self) -> Result<ServerMsg> {
        let frame = super::next_binary(&mut self.ws, self.timeout).await?;
        ServerMsg::decode(&frame).map_err(ClientError::Decode)
    }

    /// Sends a request and waits for its reply (an `error` reply too);
    /// events read meanwhile are queued.
    pub async fn request_raw(&mut self, req: &Request) -> Result<ServerMsg> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(req.encode(Some(id))).await?;
        loop {
            let msg = self.read().await?;
            match msg.reply_id() {
                Some(rid) if rid == id => return Ok(msg),
                Some(_) => continue,
                None => self.events.push_back(msg),
            }
        }
    }

    /// Like `request_raw`, but an `error` reply becomes `Err(Server{..})`.
    pub async fn request(&mut self, req: &Request) -> Result<ServerMsg> {
        match self.request_raw(req).await? {
            ServerMsg::Error { code, message, .. } => Err(ClientError::Server { code, message }),
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

    /// `list_rooms` (the first `limit`, at most 1,000): the rooms and how
    /// many there are.
    pub async fn list_rooms(
        &mut self,
        limit: Option<u64>,
    ) -> Result<(Vec<crate::protocol::RoomSummary>, u64)> {
        match self
            .request(&Request::Shared(PlainRequest::ListRooms {
                offset: None,
                limit,
            }))
            .await?
        {
            ServerMsg::Rooms { rooms, total, .. } => Ok((rooms, total)),
            other => Err(ClientError::Decode(format!("not rooms: {other:?}"))),
        }
    }

    /// `group_state`: (epoch, GroupInfo, ratchet tree).
    pub async fn group_state(&mut self, room_id: &str) -> Result<(u64, Vec<u8>, Vec<u8>)> {
        match self
            .request(&Request::GroupState {
                room_id: room_id.into(),
            })
            .await?
        {
            ServerMsg::GroupState {
                epoch,
                group_info,
                ratchet_tree,
                ..
            } => Ok((epoch, group_info.into_vec(), ratchet_tree.into_vec())),
            other => Err(ClientError::Decode(format!("not group_state: {other:?}"))),
        }
    }

    /// `commit` of a commit and its GroupInfo: the reply as it came
    /// (`committed`, or an `error` the caller answers).
    pub async fn commit(
        &mut self,
        room_id: &str,
        objects: &super::mls::CommitObjects,
    ) -> Result<ServerMsg> {
        self.request_raw(&Request::Commit {
            room_id: room_id.into(),
            commit: ByteBuf::from(objects.commit.clone()),
            group_info: ByteBuf::from(objects.group_info.clone()),
        })
        .await
    }

    /// `register` with the proof of possession of the identity key.
    pub async fn register(&mut self, identity: &IdentityPair) -> Result<()> {
        let proof = identity.sign(&register_proof_input(&self.host, &identity.username));
        self.request(&Request::Register {
            username: identity.username.clone(),
            identity_key: ByteBuf::from(identity.der.clone()),
            proof: ByteBuf::from(proof),
        })
        .await
        .map(|_| ())
    }

    /// `login` and `prove` with this device's certificate: the
    /// `logged_in` reply.
    pub async fn login(
        &mut self,
        identity: &IdentityPair,
        certificate: &[u8],
    ) -> Result<ServerMsg> {
        let challenge = self
            .request(&Request::Shared(PlainRequest::Login {
                username: identity.username.clone(),
            }))
            .await?;
        let ServerMsg::Shared(PlainMsg::Challenge { nonce, .. }) = challenge else {
            return Err(ClientError::Decode(format!(
                "not a challenge: {challenge:?}"
            )));
        };
        let input = login_signature_input(&self.host, &identity.username, &nonce);
        self.request(&Request::Prove {
            signature: ByteBuf::from(identity.sign(&input)),
            device: ByteBuf::from(certificate.to_vec()),
        })
        .await
    }
}
