//! Test support: a phone, one openmls device with its own provider and
//! group, as the DS core's and the room's unit tests drive it.

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::{Committer, RoomGroup};
use crate::client::mls::{CommitObjects, Device};

pub(crate) struct Phone {
    pub(crate) device: Device,
    pub(crate) provider: OpenMlsRustCrypto,
    pub(crate) group: Option<MlsGroup>,
}

impl Phone {
    pub(crate) fn new(user: &str) -> Self {
        Phone {
            device: Device::new(user, |_| vec![7; 256]),
            provider: OpenMlsRustCrypto::default(),
            group: None,
        }
    }

    pub(crate) fn me(&self) -> Committer<'_> {
        Committer {
            user: &self.device.user,
            device: &self.device.device_id,
            certificate: &self.device.certificate,
        }
    }

    /// An external commit from the server's current objects.
    pub(crate) fn join(&mut self, room: &RoomGroup, info: &[u8]) -> CommitObjects {
        let (group, objects) = self
            .device
            .join_external(&self.provider, info, &room.ratchet_tree())
            .expect("join");
        self.group = Some(group);
        objects
    }

    pub(crate) fn commit(&mut self, remove: &[u32]) -> CommitObjects {
        let mut group = self.group.take().expect("in the group");
        let objects = self
            .device
            .commit(&self.provider, &mut group, remove)
            .expect("commit");
        self.group = Some(group);
        objects
    }

    pub(crate) fn merge(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    /// Applies another device's commit.
    pub(crate) fn apply(&mut self, commit: &[u8]) {
        let provider = &self.provider;
        let group = self.group.as_mut().unwrap();
        let message = MlsMessageIn::tls_deserialize_exact(commit)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        let processed = group.process_message(provider, message).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("not a commit");
        };
        group.merge_staged_commit(provider, *staged).unwrap();
    }

    pub(crate) fn send(&mut self, text: &[u8]) -> Vec<u8> {
        let mut group = self.group.take().unwrap();
        let bytes = self
            .device
            .encrypt(&self.provider, &mut group, text)
            .unwrap();
        self.group = Some(group);
        bytes
    }

    pub(crate) fn read(&mut self, message: &[u8]) -> Vec<u8> {
        let provider = &self.provider;
        let message = MlsMessageIn::tls_deserialize_exact(message)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        let processed = self
            .group
            .as_mut()
            .unwrap()
            .process_message(provider, message)
            .unwrap();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => m.into_bytes(),
            other => panic!("not an application message: {other:?}"),
        }
    }
}
