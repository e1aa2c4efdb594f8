//! A device at work, as the terminal client drives it: one connection
//! (`Conn`), the device's state on disk (`DeviceStore`: its key, its
//! groups, where it is in each room's log, the identity keys it pinned and
//! what it decrypted), and section 7 per room (`RoomLog`).
//!
//! Every MLS operation is saved with its effects in one transaction. The
//! duties of section 7 that need the server are here: identity keys pinned
//! on first use (a changed key is refused), the log applied from history in
//! order before a send, new devices announced (returned to the caller) before
//! the send goes, `commit_required` answered by committing the Removes, and
//! `stale_epoch` by applying the log and trying again.

use std::collections::HashMap;
use std::path::Path;

use openmls::prelude::{GroupId, MlsGroup, OpenMlsProvider};
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde_bytes::ByteBuf;

use super::conn::{Conn, IdentityPair};
use super::device_store::{DeviceStore, Plaintext, RoomMark};
use super::mls::Device;
use super::room_log::{Applied, Leaf, LogError, RoomLog};
use crate::identity::IdentityKey;
use crate::protocol::{Entry, Member as MemberInfo, Request, RoomSummary, ServerMsg};
use crate::protocol::{ErrorCode, PlainMsg, PlainRequest};

/// A failure, for people.
pub type ChatResult<T> = std::result::Result<T, String>;

fn because<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// What a send did besides sending: the devices announced before it.
#[derive(Debug, Default)]
pub struct Sent {
    pub seq: u64,
    pub announced: Vec<Leaf>,
    /// This device committed its weekly update path first.
    pub updated: bool,
}

struct Room {
    group: MlsGroup,
    log: RoomLog,
    /// When this device last committed an update path here (ms).
    updated: u64,
}

/// Section 7: a device commits an update path at least this often in a room
/// where it is active.
pub const UPDATE_EVERY_MS: u64 = 7 * 24 * 3600 * 1000;

pub struct Chat {
    pub c: Conn,
    pub device: Device,
    store: DeviceStore,
    provider: OpenMlsRustCrypto,
    pins: HashMap<String, IdentityKey>,
    rooms: HashMap<String, Room>,
    /// What the user must be told (a resync), for the caller to show.
    pub notices: Vec<String>,
    /// The user's rooms when this device logged in (`logged_in`).
    pub mine: Vec<RoomSummary>,
    /// Every message decrypted, by whatever call read it (a send or a
    /// commit reads the log first): for a screen to drain and show.
    pub received: Vec<Plaintext>,
}

/// The application plaintext (PROTOCOL.md section 2): one CBOR map of
/// `text` and `sent_at` (the sender's clock, in ms).
pub fn encode_plaintext(text: &str, sent_at: u64) -> Vec<u8> {
    use ciborium::Value;
    let mut out = Vec::with_capacity(text.len() + 24);
    ciborium::into_writer(
        &Value::Map(vec![
            (Value::Text("text".into()), Value::Text(text.into())),
            (
                Value::Text("sent_at".into()),
                Value::Integer(sent_at.into()),
            ),
        ]),
        &mut out,
    )
    .expect("writing to a Vec cannot fail");
    out
}

/// (text, sent_at) of a plaintext: exactly one CBOR map with `text` (text)
/// and `sent_at` (unsigned), nothing after it; other keys are ignored.
pub fn decode_plaintext(bytes: &[u8]) -> Option<(String, u64)> {
    use ciborium::Value;
    let mut reader = bytes;
    let Value::Map(entries) = ciborium::from_reader::<Value, _>(&mut reader).ok()? else {
        return None;
    };
    if !reader.is_empty() {
        return None;
    }
    let get = |k: &str| entries.iter().find(|(key, _)| key.as_text() == Some(k));
    let text = get("text")?.1.as_text()?.to_owned();
    let sent_at = u64::try_from(get("sent_at")?.1.as_integer()?).ok()?;
    Some((text, sent_at))
}

impl Chat {
    /// Opens the device file at `path` (making the device on first use),
    /// connects to `url` and logs in as this device.
    pub async fn open(url: &str, identity: &IdentityPair, path: &Path) -> ChatResult<Chat> {
        let (mut store, provider) = DeviceStore::open(path).map_err(because("device store"))?;
        let device = match store.device(&provider).map_err(because("device store"))? {
            Some(d) if d.user == identity.username => d,
            Some(d) => return Err(format!("{} holds a device of {}", path.display(), d.user)),
            None => {
                let d = Device::new(&identity.username, |m| identity.sign(m));
                store
                    .put_device(&d, &provider)
                    .map_err(because("device store"))?;
                d
            }
        };
        let mut c = Conn::connect(url).await.map_err(because("connect"))?;
        let logged_in =
            c.login(identity, &device.certificate)
                .await
                .map_err(|e| match e.code() {
                    Some(ErrorCode::UnknownUser) => format!(
                        "{} is not registered on {url}: run `e2ee-chat register`",
                        identity.username
                    ),
                    _ => format!("login failed: {e}"),
                })?;
        let ServerMsg::LoggedIn { rooms: mine, .. } = logged_in else {
            return Err(format!("not logged in: {logged_in:?}"));
        };
        let mut pins = HashMap::new();
        for (user, der) in store.pins().map_err(because("device store"))? {
            pins.insert(
                user,
                IdentityKey::parse(&der).map_err(because("a pinned key"))?,
            );
        }
        let me = IdentityKey::parse(&identity.der).map_err(because("identity key"))?;
        store
            .pin(&identity.username, &identity.der)
            .map_err(because("device store"))?;
        pins.entry(identity.username.clone()).or_insert(me);
        Ok(Chat {
            c,
            device,
            store,
            provider,
            pins,
            rooms: HashMap::new(),
            notices: Vec::new(),
            mine,
            received: Vec::new(),
        })
    }

    /// Pins the members' identity keys on first use; a member whose key
    /// changed is refused (section 7).
    pub fn pin_members(&mut self, members: &[MemberInfo]) -> ChatResult<()> {
        for m in members {
            match self.pins.get(&m.username) {
                Some(k) if k.der() == m.identity_key.as_slice() => {}
                Some(_) => {
                    return Err(format!(
                        "the identity key of {} changed since it was first seen: \
                         compare fingerprints with them before you talk here",
                        m.username
                    ))
                }
                None => {
                    let key =
                        IdentityKey::parse(&m.identity_key).map_err(because("identity key"))?;
                    self.store
                        .pin(&m.username, &m.identity_key)
                        .map_err(because("device store"))?;
                    self.pins.insert(m.username.clone(), key);
                }
            }
        }
        Ok(())
    }

    /// The identity key pinned for `user`, if this device has seen them.
    pub fn pinned(&self, user: &str) -> Option<&IdentityKey> {
        self.pins.get(user)
    }

    /// Pins `identity_key` for `user` in place of the key pinned before,
    /// if its fingerprint is `fingerprint`, which the user compared with
    /// them. Rooms are checked again with the new pin.
    pub fn trust(
        &mut self,
        user: &str,
        identity_key: &[u8],
        fingerprint: [u8; 32],
    ) -> ChatResult<()> {
        let key = IdentityKey::parse(identity_key).map_err(because("identity key"))?;
        if key.fingerprint() != fingerprint {
            return Err(format!(
                "the server serves {user} a key with another fingerprint: not trusted"
            ));
        }
        self.store
            .repin(user, identity_key)
            .map_err(because("device store"))?;
        self.pins.insert(user.to_owned(), key);
        self.rooms.clear();
        Ok(())
    }

    /// New devices in the room's group not yet shown to the user: they
    /// are returned once (to show now) and kept as told. The send path
    /// shows them too, before it sends; a screen shows them as they come.
    pub fn take_announcements(&mut self, room_id: &str) -> ChatResult<Vec<Leaf>> {
        let room = self.room(room_id)?;
        let Err(Ok(leaves)) = room.log.may_send() else {
            return Ok(Vec::new());
        };
        let told = room.log.announced();
        self.save(room_id, &[], told)?;
        Ok(leaves)
    }

    /// The devices in the room's group as this device checked them: (leaf
    /// index, user, device id).
    pub fn devices_in(&mut self, room_id: &str) -> ChatResult<Vec<(u32, String, Vec<u8>)>> {
        Ok(self
            .room(room_id)?
            .log
            .devices()
            .into_iter()
            .map(|(i, u, d)| (i, u.to_owned(), d.to_vec()))
            .collect())
    }

    /// `get_members`: the room's members with their identity keys.
    pub async fn members(&mut self, room_id: &str) -> ChatResult<Vec<MemberInfo>> {
        match self
            .c
            .request(&Request::Shared(PlainRequest::GetMembers {
                room_id: room_id.into(),
            }))
            .await
            .map_err(because("members"))?
        {
            ServerMsg::Members { members, .. } => Ok(members),
            other => Err(format!("not members: {other:?}")),
        }
    }

    fn save(
        &mut self,
        room_id: &str,
        plaintexts: &[Plaintext],
        told: Vec<(String, Vec<u8>)>,
    ) -> ChatResult<()> {
        let room = &self.rooms[room_id];
        let mark = RoomMark {
            room_id: room_id.to_owned(),
            group_id: room.group.group_id().as_slice().to_vec(),
            applied: room.log.applied,
            updated: room.updated,
            announced: told,
        };
        self.store
            .save_room(&self.provider, plaintexts, Some(&mark))
            .map(|_| ())
            .map_err(because("device store"))
    }

    /// The room's group and log, from memory or the device file.
    fn room(&mut self, room_id: &str) -> ChatResult<&mut Room> {
        if !self.rooms.contains_key(room_id) {
            let RoomMark {
                group_id,
                applied,
                updated,
                announced,
                ..
            } = self
                .store
                .room(room_id)
                .map_err(because("device store"))?
                .ok_or_else(|| format!("this device is not in {room_id}: join it first"))?;
            let group = MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&group_id))
                .map_err(|e| format!("the saved group: {e:?}"))?
                .ok_or("the saved group is missing")?;
            let log = RoomLog::restore(&self.device, &group, &self.pins, applied, announced)
                .map_err(|e| e.to_string())?;
            self.rooms.insert(
                room_id.to_owned(),
                Room {
                    group,
                    log,
                    updated,
                },
            );
        }
        Ok(self.rooms.get_mut(room_id).expect("inserted"))
    }

    /// `create_room` with a new group whose only leaf is this device.
    pub async fn create(
        &mut self,
        name: &str,
        password: Option<String>,
        hidden: bool,
    ) -> ChatResult<RoomSummary> {
        let (group, objects) = self
            .device
            .create_group(&self.provider, rand::random())
            .map_err(because("MLS"))?;
        let joined = self
            .c
            .request(&Request::CreateRoom {
                name: name.into(),
                password,
                hidden: hidden.then_some(true),
                group_info: ByteBuf::from(objects.group_info),
                ratchet_tree: ByteBuf::from(objects.ratchet_tree),
            })
            .await
            .map_err(because("create"))?;
        let ServerMsg::Joined { room, .. } = joined else {
            return Err(format!("not joined: {joined:?}"));
        };
        self.begin(&room.room_id, group, 0)?;
        Ok(room)
    }

    /// A group this device just made or entered: its log starts after
    /// `applied`, and both are saved at once.
    fn begin(&mut self, room_id: &str, group: MlsGroup, applied: u64) -> ChatResult<()> {
        let log =
            RoomLog::new(&self.device, &group, &self.pins, applied).map_err(|e| e.to_string())?;
        let updated = crate::util::now_ms();
        self.rooms.insert(
            room_id.to_owned(),
            Room {
                group,
                log,
                updated,
            },
        );
        self.save(room_id, &[], Vec::new())
    }

    /// `join_room`, then this device enters the group by external commit
    /// (a refused one is dropped and tried again from a fresh state).
    pub async fn join(
        &mut self,
        room_id: &str,
        password: Option<String>,
    ) -> ChatResult<RoomSummary> {
        let joined = self
            .c
            .request(&Request::Shared(PlainRequest::JoinRoom {
                room_id: room_id.into(),
                password,
            }))
            .await
            .map_err(because("join"))?;
        let ServerMsg::Joined { room, members, .. } = joined else {
            return Err(format!("not joined: {joined:?}"));
        };
        self.pin_members(&members)?;
        let saved = self.store.room(room_id).map_err(because("device store"))?;
        if room.in_group == Some(true) && saved.is_some() {
            self.room(room_id)?;
            return Ok(room);
        }
        // Not in the group, or in it with a state this device lost: an
        // external commit (which removes its old leaf, if any).
        self.enter(room_id).await?;
        Ok(room)
    }

    /// An external commit into the room's group (a join, or a resync that
    /// removes this device's old leaf).
    pub async fn enter(&mut self, room_id: &str) -> ChatResult<()> {
        for _ in 0..5 {
            let (_, group_info, ratchet_tree) = self
                .c
                .group_state(room_id)
                .await
                .map_err(because("group_state"))?;
            let (mut group, join) = self
                .device
                .join_external(&self.provider, &group_info, &ratchet_tree)
                .map_err(because("MLS"))?;
            let reply = self
                .c
                .commit(room_id, &join)
                .await
                .map_err(because("commit"))?;
            match reply {
                ServerMsg::Committed { seq, .. } => return self.begin(room_id, group, seq),
                // Section 7: a refused join's state is thrown away.
                ServerMsg::Error {
                    code: ErrorCode::StaleEpoch,
                    ..
                } => {
                    let _ = group.delete(self.provider.storage());
                    continue;
                }
                other => return Err(format!("the server refused the join: {other:?}")),
            }
        }
        Err("the group kept moving; try again".into())
    }

    /// Applies the room's log from history up to now; the messages of
    /// others come back (and are kept on the device).
    pub async fn sync(&mut self, room_id: &str) -> ChatResult<Vec<Plaintext>> {
        let mut out = Vec::new();
        loop {
            let after = self.room(room_id)?.log.applied;
            let page = self
                .c
                .request(&Request::Shared(PlainRequest::History {
                    room_id: room_id.into(),
                    after_seq: Some(after),
                    before_seq: None,
                    limit: Some(200),
                }))
                .await
                .map_err(because("history"))?;
            let ServerMsg::History {
                entries, has_more, ..
            } = page
            else {
                return Err(format!("not history: {page:?}"));
            };
            for e in &entries {
                match self.take(room_id, e).await? {
                    Some(p) => out.extend(p),
                    None => break,
                }
            }
            if !has_more || entries.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Applies `e` and saves what it did in one transaction: its message,
    /// if any (`Some`), or `None` when the device had to rejoin.
    async fn take(&mut self, room_id: &str, e: &Entry) -> ChatResult<Option<Vec<Plaintext>>> {
        match self.apply(room_id, e) {
            Ok(p) => {
                self.save(room_id, p.as_slice(), Vec::new())?;
                self.received.extend(p.iter().cloned());
                Ok(Some(p.into_iter().collect()))
            }
            Err(LogError::Untrusted(why)) => {
                // The commit was merged; a leaf failed, maybe only because
                // its user is new here: pin the members and look again.
                self.save(room_id, &[], Vec::new())?;
                let members = self.members(room_id).await?;
                self.pin_members(&members)?;
                let room = self.rooms.get_mut(room_id).expect("loaded");
                if room.log.recheck(&room.group, &self.pins).is_err() {
                    self.notices.push(format!(
                        "{room_id}: {why}; nothing is sent there until it is resolved"
                    ));
                }
                Ok(Some(Vec::new()))
            }
            Err(LogError::Resync(why)) => {
                // Section 7: rejoin by external commit (removing this
                // device's old leaf) and say so.
                self.rooms.remove(room_id);
                self.enter(room_id).await?;
                self.notices.push(format!(
                    "{room_id}: this device could not follow the room ({why}); it \
                     rejoined, and some messages may be unreadable"
                ));
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// An `entry` event: applied if it is the next in the room's log, read
    /// with what is missing from history if it is not, ignored if applied
    /// already or if this device is not in the room. The messages of others
    /// come back.
    pub async fn receive(&mut self, e: &Entry) -> ChatResult<Vec<Plaintext>> {
        if !self.is_in(&e.room_id)? {
            return Ok(Vec::new());
        }
        let applied = self.room(&e.room_id)?.log.applied;
        if e.seq <= applied {
            return Ok(Vec::new());
        }
        if e.seq > applied + 1 {
            return self.sync(&e.room_id).await;
        }
        Ok(self.take(&e.room_id, e).await?.unwrap_or_default())
    }

    /// Whether this device is in `room_id`'s group (in memory or on file).
    pub fn is_in(&self, room_id: &str) -> ChatResult<bool> {
        Ok(self.rooms.contains_key(room_id)
            || self
                .store
                .room(room_id)
                .map_err(because("device store"))?
                .is_some())
    }

    /// Commits the removal of `user`'s leaves from the room's group, if it
    /// still holds any (section 7: a member left, was kicked or banned).
    /// Every other member's device may race to do the same: the first
    /// commit wins, and the others find nothing left to remove.
    pub async fn remove_user(&mut self, room_id: &str, user: &str) -> ChatResult<()> {
        if !self.is_in(room_id)? {
            return Ok(());
        }
        self.sync(room_id).await?;
        let leaves = self.room(room_id)?.log.leaves_of(user);
        if !leaves.is_empty() {
            self.commit(room_id, &leaves).await?;
        }
        Ok(())
    }

    /// Applies one entry (the caller saves its effects, in one transaction).
    fn apply(&mut self, room_id: &str, e: &Entry) -> Result<Option<Plaintext>, LogError> {
        let room = self.rooms.get_mut(room_id).expect("loaded by sync");
        let applied = room
            .log
            .apply(&self.device, &self.provider, &mut room.group, e, &self.pins);
        let plaintext = match applied {
            Ok(Applied::Message {
                plaintext,
                sender_ok,
            }) => {
                let (text, sent_at) = decode_plaintext(&plaintext)
                    .unwrap_or_else(|| ("[not a chat message]".into(), 0));
                Some(Plaintext {
                    room_id: room_id.to_owned(),
                    seq: e.seq,
                    sender: if sender_ok {
                        e.sender.clone()
                    } else {
                        format!("{} [sender check failed]", e.sender)
                    },
                    device_id: e.device_id.to_vec(),
                    sent_at,
                    text,
                })
            }
            Ok(_) | Err(LogError::Replayed(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(plaintext)
    }

    /// A member commit with these Removes and an update path, merged at
    /// `committed`; on `stale_epoch` the log is applied and it is built
    /// again.
    ///
    /// The leaves are named by index in the group as the server has it
    /// now; on a retry they are found again by device, since a leaf index
    /// may be reused by a device that entered meanwhile (and one already
    /// removed by another member's commit is not removed twice).
    pub async fn commit(&mut self, room_id: &str, remove: &[u32]) -> ChatResult<u64> {
        let mut devices: Option<Vec<(String, Vec<u8>)>> = None;
        for _ in 0..5 {
            self.sync(room_id).await?;
            let log = &self.room(room_id)?.log;
            let remove: Vec<u32> = match &devices {
                None => {
                    devices = Some(
                        remove
                            .iter()
                            .filter_map(|&i| log.leaf(i))
                            .map(|(u, d)| (u.to_owned(), d.to_vec()))
                            .collect(),
                    );
                    remove.to_vec()
                }
                Some(wanted) => {
                    let now: Vec<u32> = wanted
                        .iter()
                        .filter_map(|(u, d)| log.index_of(u, d))
                        .collect();
                    if now.is_empty() && !wanted.is_empty() {
                        // Another member's commit removed them.
                        return Ok(self.rooms[room_id].group.epoch().as_u64());
                    }
                    now
                }
            };
            let room = self.rooms.get_mut(room_id).expect("loaded");
            let objects = self
                .device
                .commit(&self.provider, &mut room.group, &remove)
                .map_err(because("MLS"))?;
            let reply = self
                .c
                .commit(room_id, &objects)
                .await
                .map_err(because("commit"))?;
            let room = self.rooms.get_mut(room_id).expect("loaded");
            match reply {
                ServerMsg::Committed { seq, epoch, .. } => {
                    room.group
                        .merge_pending_commit(&self.provider)
                        .map_err(|e| format!("merge: {e:?}"))?;
                    // The tree changed (leaves removed): the log's view too.
                    let _ = room.log.recheck(&room.group, &self.pins);
                    // Its own entry: applied by merging.
                    if room.log.applied + 1 == seq {
                        room.log.applied = seq;
                    }
                    room.updated = crate::util::now_ms();
                    self.save(room_id, &[], Vec::new())?;
                    return Ok(epoch);
                }
                ServerMsg::Error {
                    code: ErrorCode::StaleEpoch,
                    ..
                } => {
                    room.group
                        .clear_pending_commit(self.provider.storage())
                        .map_err(|e| format!("{e:?}"))?;
                }
                other => {
                    let _ = room.group.clear_pending_commit(self.provider.storage());
                    return Err(format!("the server refused the commit: {other:?}"));
                }
            }
        }
        Err("the group kept moving; try again".into())
    }

    /// Sends `text`: applies the log first, announces new devices (they
    /// come back in `Sent`), commits the Removes the server asks for, and
    /// follows a moving epoch.
    pub async fn send(&mut self, room_id: &str, text: &str) -> ChatResult<Sent> {
        let members = self.members(room_id).await?;
        self.pin_members(&members)?;
        let mut sent = Sent::default();
        if self.room(room_id)?.updated + UPDATE_EVERY_MS < crate::util::now_ms() {
            // Section 7: a fresh leaf key at least weekly.
            self.commit(room_id, &[]).await?;
            sent.updated = true;
        }
        for _ in 0..5 {
            self.sync(room_id).await?;
            let room = self.room(room_id)?;
            match room.log.may_send() {
                Ok(()) => {}
                Err(Err(why)) => return Err(format!("not sending in an untrusted room: {why}")),
                Err(Ok(leaves)) => {
                    let told = room.log.announced();
                    sent.announced.extend(leaves);
                    self.save(room_id, &[], told)?;
                }
            }
            let room = self.rooms.get_mut(room_id).expect("loaded");
            let message = self
                .device
                .encrypt(
                    &self.provider,
                    &mut room.group,
                    &encode_plaintext(text, crate::util::now_ms()),
                )
                .map_err(because("MLS"))?;
            self.save(room_id, &[], Vec::new())?;
            let reply = self
                .c
                .request_raw(&Request::Send {
                    room_id: room_id.into(),
                    msg_id: ByteBuf::from(rand::random::<[u8; 16]>().to_vec()),
                    message: ByteBuf::from(message),
                })
                .await
                .map_err(because("send"))?;
            match reply {
                ServerMsg::Shared(PlainMsg::Sent { seq, ts, .. }) => {
                    // Its own text, kept with the others' (it cannot
                    // decrypt its own message later).
                    let mine = Plaintext {
                        room_id: room_id.to_owned(),
                        seq,
                        sender: self.device.user.clone(),
                        device_id: self.device.device_id.to_vec(),
                        sent_at: ts,
                        text: text.to_owned(),
                    };
                    self.store
                        .save(&self.provider, &[mine])
                        .map_err(because("device store"))?;
                    sent.seq = seq;
                    return Ok(sent);
                }
                ServerMsg::Error {
                    code: ErrorCode::CommitRequired,
                    remove: Some(remove),
                    ..
                } => {
                    self.commit(room_id, &remove).await?;
                }
                ServerMsg::Error {
                    code: ErrorCode::StaleEpoch,
                    ..
                } => {}
                other => return Err(format!("the server refused the message: {other:?}")),
            }
        }
        Err("the group kept moving; try again".into())
    }

    /// Pretends this device last updated its leaf in `room_id` at `at` (ms):
    /// for tests of the weekly update.
    pub fn set_updated(&mut self, room_id: &str, at: u64) -> ChatResult<()> {
        self.room(room_id)?.updated = at;
        self.save(room_id, &[], Vec::new())
    }

    /// What this device decrypted in the room, in seq order.
    pub fn history(&self, room_id: &str) -> ChatResult<Vec<Plaintext>> {
        self.store
            .plaintexts(room_id)
            .map_err(because("device store"))
    }
}
