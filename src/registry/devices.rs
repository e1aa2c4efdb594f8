//! Devices: recording a device at `prove`, listing a user's
//! devices, removing one. The store decides each inside its write (the
//! per-user limit holds across processes); the Registry maps its answer to
//! the protocol's errors.

use actix::prelude::*;

use super::{internal, Registry, RegistryResult};
use crate::cluster::RoomChange;
use crate::identity::DeviceCertificate;
use crate::protocol::DeviceInfo;
use crate::protocol::{ErrorCode, Failure};
use crate::room;
use crate::store::{DeviceAdded, DeviceRecord};
use crate::util::now_ms;
use serde_bytes::ByteBuf;

/// A device proved at login: record it (first time) or check it is the
/// one recorded. Answers the certificate the server keeps for it, which
/// the device's leaves must carry.
#[derive(Message)]
#[rtype(result = "RegistryResult<Vec<u8>>")]
pub struct AddDevice {
    pub certificate: DeviceCertificate,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
}

impl Handler<AddDevice> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<Vec<u8>>>;

    fn handle(&mut self, msg: AddDevice, _: &mut Self::Context) -> Self::Result {
        let cert = msg.certificate;
        let record = DeviceRecord {
            username: cert.user.clone(),
            device_id: cert.device.clone(),
            certificate: msg.bytes.clone(),
            mls_key: cert.mls_key.clone(),
            added_at: now_ms(),
        };
        let store = self.store.clone();
        let max = self.settings.limits.max_devices_per_user;
        let added = record.clone();
        let work = async move {
            let invalid = |why: &str| Err(Failure::new(ErrorCode::InvalidDevice, why));
            match store.add_device(record, max).await.map_err(internal)? {
                DeviceAdded::Added => {
                    log::info!("{}: new device {}", cert.user, hex::encode(&cert.device));
                    Ok(msg.bytes)
                }
                DeviceAdded::Known => store
                    .list_devices(&cert.user)
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .find(|d| d.device_id == cert.device)
                    .map(|d| d.certificate)
                    .ok_or_else(|| {
                        Failure::new(ErrorCode::InvalidDevice, "this device was removed")
                    }),
                DeviceAdded::OtherKey => {
                    invalid("this device id is registered with another MLS key")
                }
                DeviceAdded::Removed => invalid("this device was removed; make a new one"),
                DeviceAdded::TooMany => Err(Failure::new(
                    ErrorCode::TooManyDevices,
                    format!(
                        "this user has {max} devices (or too many removed ones); remove one first"
                    ),
                )),
            }
        };
        Box::pin(work.into_actor(self).map(move |res, act, ctx| {
            if let Ok(kept) = &res {
                act.tell_rooms(&added.username, &added.device_id, Some(kept.clone()), ctx);
                act.remember_device(DeviceRecord {
                    certificate: kept.clone(),
                    ..added
                });
            }
            res
        }))
    }
}

/// A user's live device by id, if recorded: a known device's login needs
/// no signature check and no write (its certificate was checked when it
/// was recorded).
#[derive(Message)]
#[rtype(result = "RegistryResult<Option<DeviceRecord>>")]
pub struct FindDevice {
    pub username: String,
    pub device_id: Vec<u8>,
}

impl Handler<FindDevice> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<Option<DeviceRecord>>>;

    fn handle(&mut self, msg: FindDevice, _: &mut Self::Context) -> Self::Result {
        let key = (msg.username, msg.device_id);
        if let Some(known) = self.devices.get(&key) {
            return Box::pin(fut::ready(Ok(Some(known.clone()))));
        }
        let list = self.store.list_devices(&key.0);
        Box::pin(list.into_actor(self).map(move |res, act, _| {
            let found = res
                .map_err(internal)?
                .into_iter()
                .find(|d| d.device_id == key.1);
            if let Some(device) = &found {
                act.remember_device(device.clone());
            }
            Ok(found)
        }))
    }
}

impl Registry {
    /// Tells the user's running rooms that a device may now hold a leaf
    /// (its certificate) or may not any more (`None`: its leaves become
    /// leaves to remove). Rooms that are not running read the devices when
    /// they start.
    /// With several processes, theirs are told to read the room again.
    fn tell_rooms(
        &mut self,
        username: &str,
        device_id: &[u8],
        certificate: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) {
        let rooms: Vec<String> = self.dir.rooms_of(username).cloned().collect();
        for room_id in rooms {
            if let Some(addr) = self.dir.rooms.get(&room_id).and_then(|e| e.addr.as_ref()) {
                addr.do_send(room::DeviceChange {
                    username: username.to_owned(),
                    device_id: device_id.to_vec(),
                    certificate: certificate.clone(),
                });
            }
            self.announce(&room_id, RoomChange::Updated, ctx);
        }
    }

    /// Keeps a live device for the next login (one process only).
    fn remember_device(&mut self, device: DeviceRecord) {
        const MOST: usize = 200_000;
        if self.cluster.is_some() {
            return;
        }
        if self.devices.len() >= MOST {
            self.devices.clear();
        }
        self.devices
            .insert((device.username.clone(), device.device_id.clone()), device);
    }
}

/// `list_devices`: a user's devices that are not removed.
#[derive(Message)]
#[rtype(result = "RegistryResult<Vec<DeviceInfo>>")]
pub struct ListDevices {
    pub username: String,
}

impl Handler<ListDevices> for Registry {
    type Result = ResponseFuture<RegistryResult<Vec<DeviceInfo>>>;

    fn handle(&mut self, msg: ListDevices, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let known = self.users.contains_key(&msg.username);
        Box::pin(async move {
            if !known
                && store
                    .get_user(&msg.username)
                    .await
                    .map_err(internal)?
                    .is_none()
            {
                return Err(ErrorCode::UnknownUser.into());
            }
            Ok(store
                .list_devices(&msg.username)
                .await
                .map_err(internal)?
                .into_iter()
                .map(|d| DeviceInfo {
                    device_id: ByteBuf::from(d.device_id),
                    device_certificate: ByteBuf::from(d.certificate),
                    added_at: d.added_at,
                })
                .collect())
        })
    }
}

/// `remove_device`: one of the user's own devices, for good.
#[derive(Message)]
#[rtype(result = "RegistryResult<()>")]
pub struct RemoveDevice {
    pub username: String,
    pub device_id: Vec<u8>,
}

impl Handler<RemoveDevice> for Registry {
    type Result = ResponseActFuture<Self, RegistryResult<()>>;

    fn handle(&mut self, msg: RemoveDevice, _: &mut Self::Context) -> Self::Result {
        let key = (msg.username, msg.device_id);
        self.devices.remove(&key);
        let remove = self.store.remove_device(&key.0, &key.1, now_ms());
        Box::pin(remove.into_actor(self).map(move |res, act, ctx| {
            // Again: a login may have remembered it while the write ran.
            act.devices.remove(&key);
            if !res.map_err(internal)? {
                return Err(Failure::new(ErrorCode::InvalidDevice, "no such device"));
            }
            log::info!("{}: removed device {}", key.0, hex::encode(&key.1));
            act.tell_rooms(&key.0, &key.1, None, ctx);
            Ok(())
        }))
    }
}
