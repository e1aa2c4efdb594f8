//! The client library: a connection (`conn::Conn`: requests with ids,
//! events queued in arrival order, no background task), a device's MLS
//! side (`mls::Device`), a room's log as one device applies it
//! (`room_log::RoomLog`, with the checks of PROTOCOL.md section 7), the
//! device's state on disk (`device_store`), and a device at work over one
//! connection (`chat::Chat`). The tests, the terminal client and the
//! load generator all use it.

pub mod chat;
pub mod conn;
pub mod device_store;
pub mod display;
pub mod mls;
pub mod room_log;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::crypto::CryptoError;
use crate::protocol::ErrorCode;

pub use conn::SUBPROTOCOL;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next binary frame from the server within `timeout`, skipping
/// control frames; a close frame is `Closed` with its code and reason.
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
    Server { code: ErrorCode, message: String },
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
