//! Logging in (PROTOCOL.md section 3, Account): the per-address budget of
//! registrations, the login challenge, and going online once a proof holds
//! (the proofs themselves are checked in `account.rs`).

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde_bytes::ByteBuf;

use super::{Challenge, Ctx, Session};
use crate::crypto;
use crate::handle::SessionHandle;
use crate::metrics;
use crate::protocol::{DirectorySummary, ErrorCode, Failure, PlainMsg, Reply};
use crate::registry;
use crate::room;
use crate::user::User;

impl Session {
    /// Takes a registration from this address's hourly budget, or answers
    /// `rate_limited`.
    pub(super) fn may_register(&mut self, ctx: &mut Ctx, id: Option<u64>) -> bool {
        if !self.peer.register() {
            log::warn!(
                "session {}: registrations from {} over the limit",
                self.id,
                self.peer.ip
            );
            self.fail(
                ctx,
                id,
                Failure::new(
                    ErrorCode::RateLimited,
                    "too many registrations from your address; try again later",
                ),
            );
            return false;
        }
        true
    }

    pub(super) fn login(&mut self, ctx: &mut Ctx, id: Option<u64>, username: String) {
        if self.user.is_some() {
            return self.fail(ctx, id, ErrorCode::AlreadyLoggedIn);
        }
        if self.logins.0.elapsed() >= std::time::Duration::from_secs(60) {
            self.logins = (Instant::now(), 0);
        }
        self.logins.1 += 1;
        if self.logins.1 > self.settings.limits.login_attempts_per_minute {
            return self.fail(
                ctx,
                id,
                Failure::new(
                    ErrorCode::RateLimited,
                    "too many login attempts on this connection; wait a minute",
                ),
            );
        }
        let ttl = std::time::Duration::from_secs(self.settings.security.challenge_ttl_secs);
        self.ask_registry(
            ctx,
            id,
            registry::LookupUser { username },
            move |act, user| {
                let nonce = crypto::random_bytes::<{ crypto::CHALLENGE_LEN }>();
                act.challenge = Some(Challenge {
                    user,
                    nonce,
                    expires: Instant::now() + ttl,
                });
                PlainMsg::Challenge {
                    id,
                    nonce: ByteBuf::from(nonce.to_vec()),
                }
            },
        );
    }

    /// A proved login: tell the Registry this session is `user`'s (it
    /// attaches it to the user's rooms), then answer with `reply`, with
    /// each room's epoch and whether the connection's `device` has a leaf
    /// there (`in_group`), asked of the rooms at once.
    pub(super) fn go_online<R: Reply>(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        user: Arc<User>,
        device: Vec<u8>,
        reply: impl FnOnce(Option<u64>, String, Vec<(DirectorySummary, Option<(u64, bool)>)>) -> R
            + 'static,
    ) {
        let username = user.username.clone();
        let handle = SessionHandle::new(
            self.id,
            ctx.address().recipient(),
            self.overflow.clone(),
            self.queued.clone(),
            self.settings.limits.send_queue_bytes,
        );
        self.announced = Some(username.clone());
        let online = self.registry.send(registry::Online {
            username: username.clone(),
            handle,
        });
        let name = username.clone();
        let fut = async move {
            let info = online
                .await
                .unwrap_or_else(|_| Err(ErrorCode::Internal.into()))?;
            let asks = info.rooms.iter().map(|summary| {
                let addr = info
                    .addrs
                    .iter()
                    .find(|(id, _)| *id == summary.room_id)
                    .map(|(_, a)| a.clone());
                let view = room::GroupView {
                    username: name.clone(),
                    device_id: device.clone(),
                };
                async move {
                    match addr {
                        Some(a) => a.send(view).await.ok().flatten(),
                        None => None,
                    }
                }
            });
            let views = futures_util::future::join_all(asks).await;
            Ok::<_, Failure>((info, views))
        };
        self.answer(ctx, id, fut, move |act, (info, views)| {
            metrics::inc(&metrics::LOGINS);
            log::debug!("session {} logged in as {username}", act.id);
            act.user = Some(user);
            let rooms = info.rooms.into_iter().zip(views).collect();
            act.rooms.extend(info.addrs);
            reply(id, username, rooms)
        });
    }
}
