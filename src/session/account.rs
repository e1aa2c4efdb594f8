//! Accounts and devices (`PROTOCOL.md` section 3, Account): registration
//! with a proof of possession of the identity key, login proofs that carry
//! a device certificate (the connection then acts as that device),
//! `list_devices` and `remove_device`; and the dispatch of every request:
//! those that carry no MLS object go to `mod.rs` (`login`, `ping`, leaving,
//! owner operations), rooms' to `rooms.rs`.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde_bytes::ByteBuf;

use super::{Ctx, Session};
use crate::identity::{
    login_signature_input, register_proof_input, DeviceCertificate, IdentityKey,
};
use crate::metrics;
use crate::protocol::{ErrorCode, Failure, PlainMsg};
use crate::protocol::{Request, RoomSummary, ServerMsg};
use crate::registry;
use crate::user::User;
use crate::util::now_ms;
use crate::validate;

/// The device a connection acts as, once its login is proved: rooms
/// check its commits and GroupInfos against it.
pub(super) struct ActingDevice {
    pub device_id: Vec<u8>,
    /// The certificate the server keeps for it (its leaves carry this one).
    pub certificate: Vec<u8>,
}

impl Session {
    pub(super) fn dispatch(&mut self, ctx: &mut Ctx, id: Option<u64>, request: Request) {
        match request {
            Request::Register {
                username,
                identity_key,
                proof,
            } => self.register(ctx, id, username, &identity_key, &proof),
            Request::Prove { signature, device } => self.prove(ctx, id, &signature, device),
            Request::Shared(request) => self.dispatch_plain(ctx, id, request),
            _ if self.user.is_none() => self.fail(ctx, id, ErrorCode::NotLoggedIn),
            Request::ListDevices { username } => {
                if let Err(code) = validate::username(&username) {
                    return self.fail(ctx, id, code);
                }
                self.ask_registry(
                    ctx,
                    id,
                    registry::ListDevices {
                        username: username.clone(),
                    },
                    move |_, devices| ServerMsg::Devices {
                        id,
                        username,
                        devices,
                    },
                );
            }
            Request::RemoveDevice { device_id } => {
                let msg = registry::RemoveDevice {
                    username: self.username().to_owned(),
                    device_id: device_id.into_vec(),
                };
                self.ask_registry(ctx, id, msg, move |_, ()| PlainMsg::Ok { id });
            }
            Request::CreateRoom {
                name,
                password,
                hidden,
                group_info,
                ratchet_tree,
            } => self.create_room(ctx, id, name, password, hidden, &group_info, &ratchet_tree),
            Request::GroupState { room_id } => self.group_state(ctx, id, room_id),
            Request::Commit {
                room_id,
                commit,
                group_info,
            } => self.commit(ctx, id, room_id, commit.into_vec(), group_info.into_vec()),
            Request::Send {
                room_id,
                msg_id,
                message,
            } => self.send(ctx, id, room_id, msg_id.into_vec(), message.into_vec()),
            Request::PublishGroupInfo {
                room_id,
                group_info,
            } => self.publish_group_info(ctx, id, room_id, group_info.into_vec()),
        }
    }

    fn register(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        username: String,
        identity_key: &[u8],
        proof: &[u8],
    ) {
        if let Err(code) = validate::username(&username) {
            return self.fail(ctx, id, code);
        }
        let identity = match IdentityKey::parse(identity_key) {
            Ok(k) => k,
            Err(e) => {
                return self.fail(ctx, id, Failure::new(ErrorCode::InvalidKey, e.to_string()))
            }
        };
        let proves = |host: &String| identity.verify(&register_proof_input(host, &username), proof);
        if !self.hosts.iter().any(proves) {
            metrics::inc(&metrics::LOGIN_FAILURES);
            return self.fail(
                ctx,
                id,
                Failure::new(
                    ErrorCode::AuthFailed,
                    "the registration proof does not verify with this identity key",
                ),
            );
        }
        if !self.may_register(ctx, id) {
            return;
        }
        let msg = registry::Register {
            username: username.clone(),
            identity,
        };
        self.ask_registry(ctx, id, msg, move |_, ()| PlainMsg::Registered {
            id,
            username,
        });
    }

    fn prove(&mut self, ctx: &mut Ctx, id: Option<u64>, signature: &[u8], device: ByteBuf) {
        if self.user.is_some() {
            return self.fail(ctx, id, ErrorCode::AlreadyLoggedIn);
        }
        let Some(challenge) = self.challenge.take().filter(|c| c.expires > Instant::now()) else {
            return self.fail(ctx, id, ErrorCode::NoChallenge);
        };
        let user = challenge.user;
        let identity = &user.identity;
        let proves = |host: &String| {
            identity.verify(
                &login_signature_input(host, &user.username, &challenge.nonce),
                signature,
            )
        };
        if !self.hosts.iter().any(proves) {
            metrics::inc(&metrics::LOGIN_FAILURES);
            log::info!(
                "session {}: failed login proof for {}",
                self.id,
                user.username
            );
            return self.fail(ctx, id, ErrorCode::AuthFailed);
        }
        let certificate = match DeviceCertificate::check_unsigned(&device, &user.username) {
            Ok(cert) => cert,
            Err(e) => {
                return self.fail(
                    ctx,
                    id,
                    Failure::new(ErrorCode::InvalidDevice, e.to_string()),
                )
            }
        };
        let find = self.registry.send(registry::FindDevice {
            username: user.username.clone(),
            device_id: certificate.device.clone(),
        });
        ctx.spawn(find.into_actor(self).map(move |res, act, ctx| {
            match res.unwrap_or_else(|_| Err(ErrorCode::Internal.into())) {
                Ok(Some(known)) if known.mls_key == certificate.mls_key => {
                    act.go_online_as(ctx, id, user, known.device_id, known.certificate)
                }
                Ok(Some(_)) => act.fail(
                    ctx,
                    id,
                    Failure::new(
                        ErrorCode::InvalidDevice,
                        "this device id is registered with another MLS key",
                    ),
                ),
                Ok(None) => act.add_device(ctx, id, user, certificate, device),
                Err(f) => act.fail(ctx, id, f),
            }
        }));
    }

    /// A device seen for the first time (or removed): its certificate's
    /// signature is checked here, on this connection's worker, then the
    /// store records it (or refuses: removed, the limit).
    fn add_device(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        user: Arc<User>,
        certificate: DeviceCertificate,
        device: ByteBuf,
    ) {
        if let Err(e) = certificate.check_signature(&user.identity) {
            return self.fail(
                ctx,
                id,
                Failure::new(ErrorCode::InvalidDevice, e.to_string()),
            );
        }
        let device_id = certificate.device.clone();
        let add = self.registry.send(registry::AddDevice {
            certificate,
            bytes: device.into_vec(),
        });
        ctx.spawn(add.into_actor(self).map(move |res, act, ctx| {
            match res.unwrap_or_else(|_| Err(ErrorCode::Internal.into())) {
                Ok(kept) => act.go_online_as(ctx, id, user, device_id, kept),
                Err(f) => act.fail(ctx, id, f),
            }
        }));
    }

    fn go_online_as(
        &mut self,
        ctx: &mut Ctx,
        id: Option<u64>,
        user: Arc<User>,
        device_id: Vec<u8>,
        certificate: Vec<u8>,
    ) {
        self.device = Some(ActingDevice {
            device_id: device_id.clone(),
            certificate,
        });
        self.go_online(
            ctx,
            id,
            user,
            device_id.clone(),
            move |id, username, rooms| ServerMsg::LoggedIn {
                id,
                username,
                device_id: ByteBuf::from(device_id),
                server_time: now_ms(),
                rooms: rooms
                    .into_iter()
                    .map(|(summary, view)| {
                        let (epoch, in_group) = view.unwrap_or_default();
                        RoomSummary::new(summary, epoch, Some(in_group))
                    })
                    .collect(),
            },
        );
    }
}
