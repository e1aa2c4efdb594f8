//! The room directory the Registry keeps: each room's entry (record,
//! members, running actor), the public listing in `list_rooms` order, the
//! case-folded name index and the user → rooms index. [`Directory`] is the
//! one place these change together: a room added, edited (its listing place
//! kept current), renamed (its name key moved), a member added or removed,
//! a room forgotten.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use indexmap::IndexSet;

use crate::room::RoomActor;
use crate::store::{DirectoryEntry, RoomRecord};
use crate::validate::room_name_key;

pub(super) struct RoomEntry {
    pub(super) record: RoomRecord,
    pub(super) members: IndexSet<String>,
    pub(super) addr: Option<Addr<RoomActor>>,
    /// Requests of the Registry's own (join, leave, owner operations)
    /// waiting for the running room: it is not stopped while any wait.
    pub(super) busy: usize,
    /// Since when the running room has had no member online here and no
    /// request of the Registry's (see `stop_idle_rooms`).
    pub(super) quiet_since: Option<std::time::Instant>,
    /// The last seq the running room delivered (`room::DirectoryLink`):
    /// listings take the larger of this and `record.last_seq`.
    pub(super) last_seq: Arc<AtomicU64>,
    /// The group's epoch as the running room last reported it.
    pub(super) epoch: Arc<AtomicU64>,
}

/// A room's place in `list_rooms` order: member count descending, then
/// `created_at`, then name (room id last, to make keys unique).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ListKey {
    members: Reverse<usize>,
    created_at: u64,
    name: String,
    pub(super) room_id: String,
}

impl RoomEntry {
    /// A room's entry, its actor not started.
    pub(super) fn new(record: RoomRecord, members: IndexSet<String>) -> Self {
        RoomEntry {
            record,
            members,
            addr: None,
            busy: 0,
            quiet_since: None,
            last_seq: Arc::new(AtomicU64::new(0)),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The room's last seq as this process knows it.
    pub(super) fn last_seq(&self) -> u64 {
        self.record
            .last_seq
            .max(self.last_seq.load(Ordering::Relaxed))
    }

    pub(super) fn list_key(&self) -> ListKey {
        ListKey {
            members: Reverse(self.members.len()),
            created_at: self.record.created_at,
            name: self.record.name.clone(),
            room_id: self.record.room_id.clone(),
        }
    }

    fn name_key(&self) -> String {
        let r = &self.record;
        room_name_key(&r.name, r.hidden, &r.room_id)
    }
}

/// Merges two ascending iterators.
pub(super) fn merge<'a>(
    a: impl Iterator<Item = &'a ListKey>,
    b: impl Iterator<Item = &'a ListKey>,
) -> impl Iterator<Item = &'a ListKey> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

#[derive(Default)]
pub(super) struct Directory {
    pub(super) rooms: HashMap<String, RoomEntry>,
    /// The public (not hidden) rooms in listing order, kept current on every
    /// change so `list_rooms` pages without sorting.
    pub(super) listing: BTreeSet<ListKey>,
    /// Case-folded room name → room id, including names reserved by a
    /// `create_room` that is still being stored.
    pub(super) names: HashMap<String, String>,
    pub(super) user_rooms: HashMap<String, HashSet<String>>,
}

impl Directory {
    /// The directory as the store holds it (at start, and after a resync).
    pub(super) fn load(&mut self, entries: Vec<DirectoryEntry>) {
        for DirectoryEntry {
            room,
            members,
            epoch,
        } in entries
        {
            let entry = RoomEntry::new(room, members.into_iter().collect());
            entry.epoch.store(epoch, Ordering::Relaxed);
            self.insert(entry);
        }
    }

    /// Adds a room (its name indexed, listed unless hidden), and its members.
    pub(super) fn insert(&mut self, entry: RoomEntry) {
        let room_id = entry.record.room_id.clone();
        self.names.insert(entry.name_key(), room_id.clone());
        for m in &entry.members {
            self.user_rooms
                .entry(m.clone())
                .or_default()
                .insert(room_id.clone());
        }
        if !entry.record.hidden {
            self.listing.insert(entry.list_key());
        }
        self.rooms.insert(room_id, entry);
    }

    /// Changes a room's entry and keeps its place in `listing` and its name
    /// key current.
    pub(super) fn edit(&mut self, room_id: &str, edit: impl FnOnce(&mut RoomEntry)) {
        let Some(entry) = self.rooms.get_mut(room_id) else {
            return;
        };
        let listed = !entry.record.hidden;
        if listed {
            self.listing.remove(&entry.list_key());
        }
        let old_key = entry.name_key();
        edit(entry);
        let new_key = entry.name_key();
        if new_key != old_key {
            self.names.remove(&old_key);
            self.names.insert(new_key, room_id.to_owned());
        }
        if listed {
            self.listing.insert(entry.list_key());
        }
    }

    /// The room's record as committed (a room's report, another process's
    /// change read back): a rename moves its name key.
    pub(super) fn set_record(&mut self, room_id: &str, record: RoomRecord) {
        self.edit(room_id, |entry| entry.record = record);
    }

    pub(super) fn rename(&mut self, room_id: &str, name: &str) {
        self.edit(room_id, |entry| entry.record.name = name.to_owned());
    }

    pub(super) fn add_membership(&mut self, room_id: &str, username: &str) {
        self.edit(room_id, |entry| {
            entry.members.insert(username.to_owned());
        });
        self.user_rooms
            .entry(username.to_owned())
            .or_default()
            .insert(room_id.to_owned());
    }

    pub(super) fn remove_membership(&mut self, room_id: &str, username: &str) {
        self.edit(room_id, |entry| {
            entry.members.shift_remove(username);
        });
        if let Some(set) = self.user_rooms.get_mut(username) {
            set.remove(room_id);
        }
    }

    /// Drops a room that is gone, with its name, listing place and members.
    pub(super) fn forget(&mut self, room_id: &str) {
        if let Some(entry) = self.rooms.remove(room_id) {
            self.listing.remove(&entry.list_key());
            self.names.remove(&entry.name_key());
            for m in &entry.members {
                if let Some(set) = self.user_rooms.get_mut(m) {
                    set.remove(room_id);
                }
            }
        }
    }

    /// The rooms `username` is in.
    pub(super) fn rooms_of(&self, username: &str) -> impl Iterator<Item = &String> {
        self.user_rooms.get(username).into_iter().flatten()
    }
}
