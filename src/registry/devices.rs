//! Protocol v3's devices: recording a device at `prove`, listing a user's
//! devices, removing one. The store decides each inside its write (the
//! per-user limit holds across processes); the Registry maps its answer to
//! the protocol's errors.

use actix::prelude::*;

use super::{internal, Registry, RegistryResult};
use crate::identity::DeviceCertificate;
use crate::protocol::v3::DeviceInfo;
use crate::protocol::{ErrorCode, Failure};
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
    type Result = ResponseFuture<RegistryResult<Vec<u8>>>;

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
        Box::pin(async move {
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
        })
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
    type Result = ResponseFuture<RegistryResult<()>>;

    fn handle(&mut self, msg: RemoveDevice, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let removed = store
                .remove_device(&msg.username, &msg.device_id, now_ms())
                .await
                .map_err(internal)?;
            if !removed {
                return Err(Failure::new(ErrorCode::InvalidDevice, "no such device"));
            }
            log::info!(
                "{}: removed device {}",
                msg.username,
                hex::encode(&msg.device_id)
            );
            Ok(())
        })
    }
}
