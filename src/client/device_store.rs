//! A device's state on disk (PROTOCOL.md section 7, "Keep what it
//! decrypted"): the device itself (id, certificate, MLS signature key), every
//! group's MLS state, and the plaintexts it decrypted, in one SQLite file
//! beside the terminal client's profile.
//!
//! openmls keeps a device's state in its provider's key-value storage
//! (`MemoryStorage`). [`DeviceStore::save`] writes what changed there since
//! the last save, with the plaintexts that the operation produced, in **one
//! transaction**: a crash between two saves loses the whole operation, never
//! half of it, so the state on disk is always one epoch's, whole (a torn
//! epoch would make the group unreadable). Forward secrecy means a message's
//! key is gone once it is decrypted, so its plaintext is written in the same
//! transaction as the state that consumed the key.

use std::collections::HashMap;
use std::path::Path;

use openmls::prelude::OpenMlsProvider;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rusqlite::{params, Connection, OptionalExtension};

use super::mls::Device;
use crate::mls::CIPHERSUITE;

#[derive(Debug, thiserror::Error)]
pub enum DeviceStoreError {
    #[error("device store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("device store: the device's signature key is missing")]
    NoSigner,
    #[error("device store: {0}")]
    Mls(String),
}

type Result<T> = std::result::Result<T, DeviceStoreError>;

/// The `device` row: user, device id, certificate, MLS key.
type DeviceRow = (String, Vec<u8>, Vec<u8>, Vec<u8>);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mls_state (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    user        TEXT NOT NULL,
    device_id   BLOB NOT NULL,
    certificate BLOB NOT NULL,
    mls_key     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    room_id  TEXT PRIMARY KEY,
    group_id BLOB NOT NULL,
    applied  INTEGER NOT NULL,
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS announced (
    room_id   TEXT NOT NULL,
    user      TEXT NOT NULL,
    device_id BLOB NOT NULL,
    PRIMARY KEY (room_id, user, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (
    user         TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plaintexts (
    room_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    device_id BLOB NOT NULL,
    sent_at   INTEGER NOT NULL,
    text      TEXT NOT NULL,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
";

/// A message this device decrypted, as it keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    pub room_id: String,
    pub seq: u64,
    pub sender: String,
    pub device_id: Vec<u8>,
    pub sent_at: u64,
    pub text: String,
}

/// Where this device is in a room's log, saved with the MLS state that
/// got it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMark {
    pub room_id: String,
    pub group_id: Vec<u8>,
    /// The last seq applied.
    pub applied: u64,
    /// When this device last committed an update of its leaf here (ms).
    pub updated: u64,
    /// Devices the user has been told about since the last save.
    pub announced: Vec<(String, Vec<u8>)>,
}

pub struct DeviceStore {
    conn: Connection,
    /// What is on disk of the MLS storage, to write only what changed.
    saved: HashMap<Vec<u8>, Vec<u8>>,
}

impl DeviceStore {
    /// Opens (or creates) the file, and a provider holding the state saved
    /// in it.
    pub fn open(path: &Path) -> Result<(DeviceStore, OpenMlsRustCrypto)> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        conn.execute_batch(SCHEMA)?;
        let saved: HashMap<Vec<u8>, Vec<u8>> = conn
            .prepare("SELECT key, value FROM mls_state")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let provider = OpenMlsRustCrypto::default();
        *provider
            .storage()
            .values
            .write()
            .expect("the storage lock is not poisoned") = saved.clone();
        Ok((DeviceStore { conn, saved }, provider))
    }

    /// Writes what changed in `provider`'s MLS state since the last save,
    /// and `plaintexts`, in one transaction. Answers how many state entries
    /// it wrote or deleted.
    pub fn save(
        &mut self,
        provider: &OpenMlsRustCrypto,
        plaintexts: &[Plaintext],
    ) -> Result<usize> {
        self.save_room(provider, plaintexts, None)
    }

    /// [`DeviceStore::save`], with where the device is in a room's log, in
    /// the same transaction.
    pub fn save_room(
        &mut self,
        provider: &OpenMlsRustCrypto,
        plaintexts: &[Plaintext],
        mark: Option<&RoomMark>,
    ) -> Result<usize> {
        let now = provider
            .storage()
            .values
            .read()
            .expect("the storage lock is not poisoned")
            .clone();
        let tx = self.conn.transaction()?;
        let mut changed = 0;
        {
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO mls_state (key, value) VALUES (?1, ?2)")?;
            for (key, value) in &now {
                if self.saved.get(key) != Some(value) {
                    put.execute(params![key, value])?;
                    changed += 1;
                }
            }
            let mut del = tx.prepare_cached("DELETE FROM mls_state WHERE key = ?1")?;
            for key in self.saved.keys().filter(|k| !now.contains_key(*k)) {
                del.execute(params![key])?;
                changed += 1;
            }
            let mut keep = tx.prepare_cached(
                "INSERT OR IGNORE INTO plaintexts (room_id, seq, sender, device_id, sent_at, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for p in plaintexts {
                keep.execute(params![
                    p.room_id,
                    p.seq as i64,
                    p.sender,
                    p.device_id,
                    p.sent_at as i64,
                    p.text
                ])?;
            }
            if let Some(m) = mark {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO rooms (room_id, group_id, applied, updated)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    m.room_id,
                    m.group_id,
                    m.applied as i64,
                    m.updated as i64
                ])?;
                let mut told = tx.prepare_cached(
                    "INSERT OR IGNORE INTO announced (room_id, user, device_id) VALUES (?1, ?2, ?3)",
                )?;
                for (user, device) in &m.announced {
                    told.execute(params![m.room_id, user, device])?;
                }
            }
        }
        tx.commit()?;
        self.saved = now;
        Ok(changed)
    }

    /// Records the device (once per file) with its signature key in the MLS
    /// state, and saves.
    pub fn put_device(&mut self, device: &Device, provider: &OpenMlsRustCrypto) -> Result<()> {
        device
            .signer
            .store(provider.storage())
            .map_err(|e| DeviceStoreError::Mls(format!("{e:?}")))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO device (id, user, device_id, certificate, mls_key)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                device.user,
                device.device_id.to_vec(),
                device.certificate,
                device.signer.public()
            ],
        )?;
        self.save(provider, &[])?;
        Ok(())
    }

    /// The device recorded in this file, if any.
    pub fn device(&self, provider: &OpenMlsRustCrypto) -> Result<Option<Device>> {
        let row: Option<DeviceRow> = self
            .conn
            .query_row(
                "SELECT user, device_id, certificate, mls_key FROM device WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((user, device_id, certificate, mls_key)) = row else {
            return Ok(None);
        };
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &mls_key,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or(DeviceStoreError::NoSigner)?;
        Ok(Some(Device {
            user,
            device_id: device_id
                .try_into()
                .map_err(|_| DeviceStoreError::Mls("a device id is 16 bytes".into()))?,
            signer,
            certificate,
        }))
    }

    /// Where this device is in `room_id`'s log (`announced`: every device
    /// the user was told about there).
    pub fn room(&self, room_id: &str) -> Result<Option<RoomMark>> {
        let row: Option<(Vec<u8>, i64, i64)> = self
            .conn
            .query_row(
                "SELECT group_id, applied, updated FROM rooms WHERE room_id = ?1",
                params![room_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((group_id, applied, updated)) = row else {
            return Ok(None);
        };
        let announced = self
            .conn
            .prepare_cached("SELECT user, device_id FROM announced WHERE room_id = ?1")?
            .query_map(params![room_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(Some(RoomMark {
            room_id: room_id.to_owned(),
            group_id,
            applied: applied as u64,
            updated: updated as u64,
            announced,
        }))
    }

    /// The identity keys this device pinned (DER), by user.
    pub fn pins(&self) -> Result<HashMap<String, Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT user, identity_key FROM pins")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Pins `user`'s identity key (first use).
    pub fn pin(&self, user: &str, identity_key: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO pins (user, identity_key) VALUES (?1, ?2)",
            params![user, identity_key],
        )?;
        Ok(())
    }

    /// Pins `identity_key` for `user` in place of any pinned before: the
    /// user compared fingerprints and trusts the new key.
    pub fn repin(&self, user: &str, identity_key: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO pins (user, identity_key) VALUES (?1, ?2)",
            params![user, identity_key],
        )?;
        Ok(())
    }

    /// What this device decrypted in `room_id`, in seq order.
    pub fn plaintexts(&self, room_id: &str) -> Result<Vec<Plaintext>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT seq, sender, device_id, sent_at, text FROM plaintexts
                 WHERE room_id = ?1 ORDER BY seq",
            )?
            .query_map(params![room_id], |r| {
                Ok(Plaintext {
                    room_id: room_id.to_owned(),
                    seq: r.get::<_, i64>(0)? as u64,
                    sender: r.get(1)?,
                    device_id: r.get(2)?,
                    sent_at: r.get::<_, i64>(3)? as u64,
                    text: r.get(4)?,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::*;

    use super::*;

    fn plaintext(seq: u64, text: &str) -> Plaintext {
        Plaintext {
            room_id: "r-1".into(),
            seq,
            sender: "bob".into(),
            device_id: vec![2; 16],
            sent_at: 1_700_000_000_000 + seq,
            text: text.into(),
        }
    }

    /// Alice's device in a file, a group with Bob (in memory), a message
    /// from Bob decrypted and saved with its plaintext; then the file is
    /// opened again, as after a restart, and the group goes on.
    #[test]
    fn state_and_plaintexts_survive_a_restart_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let (mut store, provider) = DeviceStore::open(&path).unwrap();
        assert!(store.device(&provider).unwrap().is_none());
        let alice = Device::new("alice", |_| vec![7; 256]);
        store.put_device(&alice, &provider).unwrap();
        let (mut group, objects) = alice.create_group(&provider, [9; 16]).unwrap();
        store.save(&provider, &[]).unwrap();

        let bob = Device::new("bob", |_| vec![7; 256]);
        let bob_provider = OpenMlsRustCrypto::default();
        let (mut bob_group, join) = bob
            .join_external(&bob_provider, &objects.group_info, &objects.ratchet_tree)
            .unwrap();
        let apply = |group: &mut MlsGroup, provider: &OpenMlsRustCrypto, bytes: &[u8]| {
            let message = MlsMessageIn::tls_deserialize_exact(bytes)
                .unwrap()
                .try_into_protocol_message()
                .unwrap();
            group
                .process_message(provider, message)
                .unwrap()
                .into_content()
        };
        let ProcessedMessageContent::StagedCommitMessage(staged) =
            apply(&mut group, &provider, &join.commit)
        else {
            panic!("a commit");
        };
        group.merge_staged_commit(&provider, *staged).unwrap();
        store.save(&provider, &[]).unwrap();

        let hello = bob
            .encrypt(&bob_provider, &mut bob_group, b"hello")
            .unwrap();
        let ProcessedMessageContent::ApplicationMessage(m) = apply(&mut group, &provider, &hello)
        else {
            panic!("a message");
        };
        assert_eq!(m.into_bytes(), b"hello");
        let written = store.save(&provider, &[plaintext(2, "hello")]).unwrap();
        assert!(written > 0, "decrypting moved the ratchet");
        // Nothing changed since: nothing to write.
        assert_eq!(store.save(&provider, &[]).unwrap(), 0);
        drop((store, provider, group));

        // Restart: the device, the group at epoch 1, and the plaintext.
        let (store, provider) = DeviceStore::open(&path).unwrap();
        let again = store.device(&provider).unwrap().unwrap();
        assert_eq!(again.device_id, alice.device_id);
        assert_eq!(again.certificate, alice.certificate);
        assert_eq!(again.signer.public(), alice.signer.public());
        let mut group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&[9; 16]))
            .unwrap()
            .unwrap();
        assert_eq!(group.epoch().as_u64(), 1);
        assert_eq!(
            store.plaintexts("r-1").unwrap(),
            vec![plaintext(2, "hello")]
        );
        // The next message decrypts with the restored state; the one already
        // read cannot be read twice (its key is gone: forward secrecy).
        let more = bob
            .encrypt(&bob_provider, &mut bob_group, b"again")
            .unwrap();
        let ProcessedMessageContent::ApplicationMessage(m) = apply(&mut group, &provider, &more)
        else {
            panic!("a message");
        };
        assert_eq!(m.into_bytes(), b"again");
        let message = MlsMessageIn::tls_deserialize_exact(&hello)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        assert!(group.process_message(&provider, message).is_err());
    }

    /// An operation that was not saved (the process died before `save`)
    /// leaves the file at the state before it, whole.
    #[test]
    fn an_unsaved_operation_is_lost_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let (mut store, provider) = DeviceStore::open(&path).unwrap();
        let alice = Device::new("alice", |_| vec![7; 256]);
        store.put_device(&alice, &provider).unwrap();
        let (mut group, _) = alice.create_group(&provider, [3; 16]).unwrap();
        store.save(&provider, &[]).unwrap();
        // An update committed and merged in memory, never saved.
        alice.commit(&provider, &mut group, &[]).unwrap();
        group.merge_pending_commit(&provider).unwrap();
        assert_eq!(group.epoch().as_u64(), 1);
        drop((store, provider, group));
        let (_, provider) = DeviceStore::open(&path).unwrap();
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&[3; 16]))
            .unwrap()
            .unwrap();
        assert_eq!(group.epoch().as_u64(), 0, "the state of the last save");
    }

    /// Where the device is in a room's log, the devices announced there and
    /// the pinned keys are saved with the MLS state and read back after a
    /// restart.
    #[test]
    fn room_marks_and_pins_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.db");
        let (mut store, provider) = DeviceStore::open(&path).unwrap();
        assert_eq!(store.room("r-1").unwrap(), None);
        let mark = RoomMark {
            room_id: "r-1".into(),
            group_id: vec![9; 16],
            applied: 7,
            updated: 5,
            announced: vec![("bob".into(), vec![2; 16])],
        };
        store
            .save_room(&provider, &[plaintext(7, "hi")], Some(&mark))
            .unwrap();
        let later = RoomMark {
            applied: 9,
            announced: vec![("carol".into(), vec![3; 16])],
            ..mark.clone()
        };
        store.save_room(&provider, &[], Some(&later)).unwrap();
        store.pin("bob", b"bob's key").unwrap();
        store.pin("bob", b"another key").unwrap();
        drop(store);
        let (store, _) = DeviceStore::open(&path).unwrap();
        let mut got = store.room("r-1").unwrap().unwrap();
        got.announced.sort();
        assert_eq!(got.applied, 9);
        assert_eq!(
            got.announced,
            [
                ("bob".to_owned(), vec![2; 16]),
                ("carol".to_owned(), vec![3; 16])
            ]
        );
        assert_eq!(store.plaintexts("r-1").unwrap().len(), 1);
        assert_eq!(store.pins().unwrap()["bob"], b"bob's key", "first use wins");
    }
}
