//! How actors reach a session without knowing the `Session` actor: its id,
//! the pre-encoded frames it is pushed (`Push`), and `SessionHandle`, the
//! recipient plus the send-queue accounting that rooms and the Registry use
//! to deliver to it. Neutral ground: `session`, `registry` and `room` all
//! import it, and it imports none of them, so the actor modules form no
//! cycle (session → registry → room).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;
use bytes::Bytes;

pub type SessionId = u64;

/// A pre-encoded frame for the session to write to its socket.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Push(pub Bytes);

/// How rooms reach a session: its address plus a flag the sender raises
/// when the session's bounded send queue (`limits.send_queue`) is full.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: SessionId,
    recipient: Recipient<Push>,
    overflow: Arc<AtomicBool>,
    /// Bytes of frames queued for the session and not yet written.
    queued: Arc<AtomicUsize>,
    /// Most bytes that may be queued (`limits.send_queue_bytes`).
    budget: usize,
}

impl SessionHandle {
    pub fn new(
        id: SessionId,
        recipient: Recipient<Push>,
        overflow: Arc<AtomicBool>,
        queued: Arc<AtomicUsize>,
        budget: usize,
    ) -> SessionHandle {
        SessionHandle {
            id,
            recipient,
            overflow,
            queued,
            budget,
        }
    }

    /// Queues a frame. False when the session is gone or too slow; the
    /// caller then forgets the handle, and a slow session closes itself
    /// (1008) as soon as it runs again.
    pub fn deliver(&self, frame: Bytes) -> bool {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > self.budget {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.overflow.store(true, Ordering::Relaxed);
            return false;
        }
        match self.recipient.try_send(Push(frame)) {
            Ok(()) => true,
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                if let SendError::Full(_) = e {
                    self.overflow.store(true, Ordering::Relaxed);
                }
                false
            }
        }
    }
}
