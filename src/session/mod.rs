//! `Session`: one actor per websocket connection. It decodes frames, applies
//! the rate limit and heartbeat, runs the login challenge, checks login
//! proofs and device certificates (on the actix-web worker thread it lives
//! on, so the work is spread over the workers and per-connection order is
//! kept), and forwards requests to the Registry or straight to a room.
//!
//! The session holds no chat state of its own: only who it is logged in as
//! and which device it acts as, its pending challenge, and a cache of room
//! addresses it has used. Files: this one (frames, limits, the requests that
//! carry no MLS object), `login` (the challenge and going online), `account`
//! (registration, proofs, devices, and the dispatch of every request),
//! `rooms` (rooms and their groups).

mod account;
mod login;
mod rooms;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use crate::config::Settings;
use crate::crypto::{self};
use crate::handle::{Push, SessionId};
use crate::metrics;
use crate::peers::Slot;
use crate::protocol::{decode_request_bounded, ErrorCode, Failure, PlainMsg, PlainRequest, Reply};
use crate::registry::{self, Registry};
use crate::room::{OwnerAction, RoomActor};
use crate::store::HistoryQuery;
use crate::user::User;
use crate::util::now_ms;
use crate::validate;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One request's place in a per-connection count; given back on drop (the
/// reply, or the request's failure, drops it).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<InFlight> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Challenge {
    user: Arc<User>,
    nonce: [u8; crypto::CHALLENGE_LEN],
    expires: Instant,
}

/// Per-connection token bucket.
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Session {
    id: SessionId,
    registry: Addr<Registry>,
    settings: Arc<Settings>,
    user: Option<Arc<User>>,
    challenge: Option<Challenge>,
    rooms: HashMap<String, Addr<RoomActor>>,
    last_heard: Instant,
    bucket: Bucket,
    refused_in_row: u32,
    /// Raised by a room when this session's send queue was full.
    overflow: Arc<AtomicBool>,
    /// Bytes pushed to this session and not yet written (see `SessionHandle`).
    queued: Arc<AtomicUsize>,
    /// `login` requests in the current minute (limits.login_attempts_per_minute).
    logins: (Instant, u32),
    /// The server's count of open sessions.
    open: Arc<AtomicUsize>,
    /// The user this session announced to the Registry as online.
    announced: Option<String>,
    /// The hosts a login proof may sign (PROTOCOL.md section 3, Account):
    /// `server.public_hosts`, or the upgrade request's `Host` header.
    hosts: Arc<[String]>,
    /// This connection's place in its address's budget (given back on drop).
    peer: Slot,
    /// `history` requests waiting for the store (`limits.history_in_flight`).
    history_in_flight: Arc<AtomicUsize>,
    /// Bytes of the fragmented message being received (continuation frames
    /// are never reassembled, but they count against `max_frame_bytes`).
    fragments: usize,
    /// The device this connection acts as, once proved.
    device: Option<account::ActingDevice>,
}

type Ctx = ws::WebsocketContext<Session>;

/// Closes the connection with `code` and a reason, and stops the session.
fn close(ctx: &mut Ctx, code: ws::CloseCode, why: &str) {
    ctx.close(Some(ws::CloseReason {
        code,
        description: Some(why.into()),
    }));
    ctx.stop();
}

impl Session {
    pub fn new(
        registry: Addr<Registry>,
        settings: Arc<Settings>,
        open: Arc<AtomicUsize>,
        hosts: Arc<[String]>,
        peer: Slot,
    ) -> Self {
        Session {
            hosts,
            peer,
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            registry,
            bucket: Bucket {
                tokens: settings.rate_limit.burst,
                last: Instant::now(),
            },
            settings,
            user: None,
            challenge: None,
            rooms: HashMap::new(),
            last_heard: Instant::now(),
            refused_in_row: 0,
            overflow: Arc::new(AtomicBool::new(false)),
            queued: Arc::new(AtomicUsize::new(0)),
            logins: (Instant::now(), 0),
            open,
            announced: None,
            fragments: 0,
            history_in_flight: Arc::default(),
            device: None,
        }
    }

    /// Closes the connection (1008) if a room found its send queue full:
    /// it has missed events, so it must reconnect and catch up from history.
    fn check_overflow(&mut self, ctx: &mut Ctx) -> bool {
        if !self.overflow.load(Ordering::Relaxed) {
            return false;
        }
        log::warn!("session {} closed: too slow to read its messages", self.id);
        close(
            ctx,
            ws::CloseCode::Policy,
            "send queue full: reconnect and catch up from history",
        );
        true
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let rl = &self.settings.rate_limit;
        let refill = now.duration_since(self.bucket.last).as_secs_f64() * rl.per_second;
        self.bucket.tokens = (self.bucket.tokens + refill).min(rl.burst);
        self.bucket.last = now;
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn write(&self, ctx: &mut Ctx, msg: impl Reply) {
        if msg.is_error() {
            metrics::inc(&metrics::ERRORS);
        }
        ctx.binary(msg.encode());
    }

    /// Writes an `error` frame.
    fn fail(&self, ctx: &mut Ctx, id: Option<u64>, f: impl Into<Failure>) {
        self.write(ctx, f.into().into_msg(id));
    }

    fn username(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.username.as_str())
    }

    fn on_frame(&mut self, ctx: &mut Ctx, frame: Option<&[u8]>) {
        metrics::inc(&metrics::REQUESTS);
        let allowed = self.take_token();
        // Over the limit, only a small frame is decoded (to echo its id).
        let max_items = if allowed {
            2 * self.settings.limits.max_members_per_room + 64
        } else {
            64
        };
        let decoded = match frame {
            Some(bytes) => decode_request_bounded(bytes, max_items),
            None => Err(crate::protocol::DecodeError {
                id: None,
                failure: Failure::new(
                    ErrorCode::Malformed,
                    "text frames are not accepted; send CBOR in binary frames",
                ),
            }),
        };
        if !allowed {
            self.refused_in_row += 1;
            let id = decoded.as_ref().map_or_else(|e| e.id, |(id, _)| *id);
            self.fail(ctx, id, ErrorCode::RateLimited);
            if self.refused_in_row >= self.settings.rate_limit.close_after {
                log::warn!("session {} closed for flooding", self.id);
                close(ctx, ws::CloseCode::Policy, "rate limit exceeded");
            }
            return;
        }
        self.refused_in_row = 0;
        match decoded {
            Ok((id, request)) => self.dispatch(ctx, id, request),
            Err(e) => self.fail(ctx, e.id, e.failure),
        }
    }

    /// Answers a request from a future: `reply` turns the success value into
    /// the reply message; failures become `error` with the request id.
    fn answer<T, F, R: Reply>(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        fut: F,
        reply: impl FnOnce(&mut Self, T) -> R + 'static,
    ) where
        T: 'static,
        F: std::future::Future<Output = Result<T, Failure>> + 'static,
    {
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(v) => {
                let msg = reply(act, v);
                act.write(ctx, msg)
            }
            Err(f) => act.fail(ctx, id, f),
        }));
    }

    fn ask_registry<M, T, R: Reply>(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        msg: M,
        reply: impl FnOnce(&mut Self, T) -> R + 'static,
    ) where
        M: Message<Result = Result<T, Failure>> + Send + 'static,
        T: Send + 'static,
        Registry: Handler<M>,
    {
        let req = self.registry.send(msg);
        self.answer(
            ctx,
            id,
            async move {
                req.await
                    .unwrap_or_else(|_| Err(ErrorCode::Internal.into()))
            },
            reply,
        );
    }

    /// Sends `msg` to a room: straight away when its address is cached (so
    /// requests to one room keep their order), else after resolving it.
    fn ask_room<M, T, R: Reply>(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        room_id: String,
        msg: M,
        reply: impl FnOnce(&mut Self, T) -> R + 'static,
    ) where
        M: Message<Result = Result<T, Failure>> + Send + 'static,
        T: Send + 'static,
        RoomActor: Handler<M>,
    {
        let gone = || Failure::from(ErrorCode::NoSuchRoom);
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Failure>>>> =
            match self.rooms.get(&room_id).filter(|a| a.connected()) {
                Some(addr) => {
                    let req = addr.send(msg);
                    Box::pin(async move { req.await.unwrap_or_else(|_| Err(gone())) })
                }
                None => {
                    self.rooms.remove(&room_id);
                    let resolve = self.registry.send(registry::Resolve { room_id });
                    Box::pin(async move {
                        let addr = resolve.await.ok().flatten().ok_or_else(gone)?;
                        addr.send(msg).await.unwrap_or_else(|_| Err(gone()))
                    })
                }
            };
        self.answer(ctx, id, fut, reply);
    }

    /// The requests that carry no MLS object: `ping` and `login` at any
    /// time, the rest once logged in.
    fn dispatch_plain(&mut self, ctx: &mut Ctx, id: Option<u64>, request: PlainRequest) {
        let before_login = matches!(request, PlainRequest::Ping | PlainRequest::Login { .. });
        if !before_login && self.user.is_none() {
            return self.fail(ctx, id, ErrorCode::NotLoggedIn);
        }
        if let Err(code) = validate::request(&request) {
            return self.fail(ctx, id, code);
        }
        match request {
            PlainRequest::Ping => self.write(
                ctx,
                PlainMsg::Pong {
                    id,
                    server_time: now_ms(),
                },
            ),
            PlainRequest::Login { username } => self.login(ctx, id, username),
            PlainRequest::LeaveRoom { room_id } => {
                let msg = registry::LeaveRoom {
                    username: self.username().to_owned(),
                    room_id: room_id.clone(),
                };
                self.ask_registry(ctx, id, msg, move |act, ()| {
                    act.rooms.remove(&room_id);
                    PlainMsg::Ok { id }
                });
            }
            PlainRequest::Kick {
                room_id,
                username: target,
            } => self.owner_op(ctx, id, room_id, OwnerAction::Kick(target)),
            PlainRequest::Ban {
                room_id,
                username: target,
            } => self.owner_op(ctx, id, room_id, OwnerAction::Ban(target)),
            PlainRequest::Unban {
                room_id,
                username: target,
            } => self.owner_op(ctx, id, room_id, OwnerAction::Unban(target)),
            PlainRequest::RenameRoom { room_id, name } => {
                self.owner_op(ctx, id, room_id, OwnerAction::Rename(name))
            }
            PlainRequest::SetPassword { room_id, password } => {
                self.owner_op(ctx, id, room_id, OwnerAction::SetPassword(password))
            }
            PlainRequest::DeleteRoom { room_id } => {
                self.owner_op(ctx, id, room_id, OwnerAction::Delete)
            }
            other => self.dispatch_rooms(ctx, id, other),
        }
    }

    /// `list_rooms`: a page of the directory (offset, limit 1..=1000).
    fn list_rooms(
        &self,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> impl std::future::Future<Output = Result<registry::ListedRooms, Failure>> {
        let req = self.registry.send(registry::ListRooms {
            username: self.username().to_owned(),
            offset: offset.unwrap_or(0).min(usize::MAX as u64) as usize,
            limit: limit.unwrap_or(100).clamp(1, 1000) as usize,
        });
        async move { req.await.map_err(|_| Failure::from(ErrorCode::Internal)) }
    }

    /// A `history` request's query and its read slot: reads of one
    /// connection are bounded, so pipelined history requests cannot fill the
    /// store's read pool (`rate_limited` past the bound, answered here).
    fn history_query(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: Option<u64>,
    ) -> Option<(HistoryQuery, InFlight)> {
        let query = HistoryQuery {
            after_seq,
            before_seq,
            limit: limit.unwrap_or(50).clamp(1, 500) as usize,
            max_bytes: self.settings.limits.history_page_bytes,
        };
        match InFlight::take(
            &self.history_in_flight,
            self.settings.limits.history_in_flight,
        ) {
            Some(slot) => Some((query, slot)),
            None => {
                self.fail(ctx, id, ErrorCode::RateLimited);
                None
            }
        }
    }

    fn owner_op(&mut self, ctx: &mut Ctx, id: Option<u64>, room_id: String, action: OwnerAction) {
        let msg = registry::OwnerRequest {
            username: self.username().to_owned(),
            room_id,
            action,
        };
        self.ask_registry(ctx, id, msg, move |_, ()| PlainMsg::Ok { id });
    }
}

impl Actor for Session {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        ctx.set_mailbox_capacity(self.settings.limits.send_queue);
        self.open.fetch_add(1, Ordering::Relaxed);
        metrics::inc(&metrics::CONNECTIONS_OPEN);
        metrics::inc(&metrics::CONNECTIONS_TOTAL);
        let deadline = std::time::Duration::from_secs(self.settings.limits.login_deadline_secs);
        ctx.run_later(deadline, move |act, ctx| {
            if act.user.is_none() {
                log::info!("session {} closed: no login within {deadline:?}", act.id);
                close(
                    ctx,
                    ws::CloseCode::Policy,
                    "log in sooner (limits.login_deadline_secs)",
                );
            }
        });
        let timeout = self.settings.heartbeat_timeout();
        ctx.run_interval(self.settings.heartbeat_interval(), move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                log::info!("session {} timed out", act.id);
                ctx.stop();
            } else if !act.check_overflow(ctx) {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Ctx) {
        metrics::dec(&metrics::CONNECTIONS_OPEN);
        self.open.fetch_sub(1, Ordering::Relaxed);
        // Also when a login was still on its way to the Registry: it may
        // already have recorded this session.
        let name = self
            .user
            .as_ref()
            .map(|u| u.username.clone())
            .or(self.announced.take());
        if let Some(username) = name {
            self.registry.do_send(registry::Offline {
                username,
                session: self.id,
            });
        }
    }
}

impl Handler<Push> for Session {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Ctx) {
        self.queued.fetch_sub(msg.0.len(), Ordering::AcqRel);
        if !self.check_overflow(ctx) {
            ctx.binary(msg.0);
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Ctx) {
        self.last_heard = Instant::now();
        let len = match &item {
            Ok(ws::Message::Binary(b)) => b.len(),
            Ok(ws::Message::Text(t)) => t.len(),
            Ok(ws::Message::Continuation(item)) => {
                // A message in fragments: each fragment passes the codec's
                // frame limit, so the whole is counted here. Clients send
                // one frame per message (PROTOCOL.md section 1), so an
                // anonymous client gets no fragments at all.
                let (first, part) = match item {
                    actix_http::ws::Item::FirstText(b) | actix_http::ws::Item::FirstBinary(b) => {
                        (true, b.len())
                    }
                    actix_http::ws::Item::Continue(b) | actix_http::ws::Item::Last(b) => {
                        (false, b.len())
                    }
                };
                if self.user.is_none() {
                    log::info!("session {}: fragmented frame before login", self.id);
                    close(ctx, ws::CloseCode::Size, "fragmented frame before login");
                    return;
                }
                self.fragments = if first { part } else { self.fragments + part };
                if self.fragments > self.settings.limits.max_frame_bytes {
                    log::info!(
                        "session {}: fragmented message over the size limit",
                        self.id
                    );
                    close(ctx, ws::CloseCode::Size, "frame too large");
                    return;
                }
                if !matches!(item, actix_http::ws::Item::Last(_)) {
                    return;
                }
                self.fragments = 0;
                0
            }
            _ => 0,
        };
        // Before login only small frames: an anonymous client cannot
        // make the server decode megabytes.
        if self.user.is_none() && len > self.settings.limits.login_frame_bytes {
            log::info!("session {}: {len}-byte frame before login", self.id);
            close(ctx, ws::CloseCode::Size, "frame too large before login");
            return;
        }
        match item {
            Ok(ws::Message::Binary(bytes)) => self.on_frame(ctx, Some(&bytes)),
            Ok(ws::Message::Text(_)) | Ok(ws::Message::Continuation(_)) => self.on_frame(ctx, None),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                log::info!("session {}: frame over the size limit", self.id);
                close(ctx, ws::CloseCode::Size, "frame too large");
            }
            Err(e) => {
                log::info!("session {}: websocket protocol error: {e}", self.id);
                ctx.close(Some(ws::CloseCode::Protocol.into()));
                ctx.stop();
            }
        }
    }
}
