//! Several server processes behind one address (issue 16): what they tell
//! each other over Redis, and the handle the Registry and the rooms use.
//!
//! The database stays the only source of truth; Redis carries
//! notifications, never the only copy of anything:
//!
//! - **The room log**: a room publishes each entry it stored on
//!   `{prefix}:room:{room_id}`; every process with that room running
//!   delivers it to its own sessions in seq order. A process that sees a
//!   seq gap, or that (re)subscribed, reads what it missed from the
//!   database ([`crate::store::Store::entries_after`]).
//! - **Directory and membership** (`{prefix}:ctl`): a room was created,
//!   joined, left, changed or deleted; the other processes reload that room
//!   from the database ([`Ctl::Room`]).
//! - **Presence**: each process announces its users going online and
//!   offline, numbered, and says it is alive every `heartbeat_ms`; a process
//!   not heard from for `peer_timeout_ms` no longer counts
//!   ([`presence::Peers`]).
//!
//! The Redis side (connections, reconnects, subscriptions) is in `link`.

mod link;
pub mod outbox;
pub mod presence;
pub mod reloads;

use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ClusterSettings;
use crate::store::{Appended, NewEntry, StoredEntry};
use outbox::{Outbox, Outgoing};

/// A server process's identity for this run (random at start).
pub type ProcId = u64;

/// An event on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ctl {
    /// The process is alive; `version` counts its presence events so far.
    Alive { proc: ProcId, version: u64 },
    /// `user`'s sessions on `proc` changed: `online` while they have one,
    /// `sessions` of them (for `max_connections_per_user` across processes).
    Presence {
        proc: ProcId,
        version: u64,
        user: String,
        online: bool,
        #[serde(default = "one")]
        sessions: u32,
    },
    /// Asks `of` for its whole presence state.
    SnapshotRequest { of: ProcId },
    Snapshot {
        proc: ProcId,
        version: u64,
        users: Vec<String>,
        /// Each user's session count, in `users` order (1 when absent).
        #[serde(default)]
        sessions: Vec<u32>,
    },
    /// A committed change to a room: reload it from the database.
    Room {
        proc: ProcId,
        room_id: String,
        change: RoomChange,
    },
    /// The process is stopping.
    Bye { proc: ProcId },
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RoomChange {
    Created,
    Joined(String),
    /// Left, kicked or banned (`reason` as in `member_left`).
    Removed {
        user: String,
        reason: String,
    },
    /// Owner, name, password or bans.
    Updated,
    Deleted,
}

impl Ctl {
    pub fn sender(&self) -> Option<ProcId> {
        match self {
            Ctl::Alive { proc, .. }
            | Ctl::Presence { proc, .. }
            | Ctl::Snapshot { proc, .. }
            | Ctl::Room { proc, .. }
            | Ctl::Bye { proc } => Some(*proc),
            Ctl::SnapshotRequest { .. } => None,
        }
    }
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// A log entry on a room channel: the `entry` event's fields.
fn encode_entry(e: &NewEntry, at: Appended) -> Vec<u8> {
    encode(&crate::protocol::Entry::new(
        &e.room_id, at.seq, at.ts, &e.entry,
    ))
}

/// What a room channel carried: a log entry.
fn decode_feed(room_id: &str, bytes: &[u8]) -> Option<RoomFeed> {
    let entry: crate::protocol::Entry = ciborium::from_reader(bytes).ok()?;
    if entry.room_id != room_id {
        return None;
    }
    let (seq, ts, entry) = entry.into_log();
    Some(RoomFeed::Entry(Box::new(StoredEntry { seq, ts, entry })))
}

/// What the link tells a room.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RoomFeed {
    /// A log entry another process (or this one) stored.
    Entry(Box<StoredEntry>),
    /// The room's channel is subscribed (again): read what was missed.
    Subscribed,
}

/// What the link tells the Registry.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FromCluster {
    Ctl(Ctl),
    /// Subscribed (again) after a start or a lost connection: anything may
    /// have been missed.
    Up,
}

enum SubCmd {
    Room(String, Recipient<RoomFeed>),
    Leave(String),
}

/// The handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Cluster {
    pub proc: ProcId,
    pub settings: Arc<ClusterSettings>,
    prefix: Arc<str>,
    publish: mpsc::UnboundedSender<Outgoing>,
    outbox: Arc<Outbox>,
    subs: mpsc::UnboundedSender<SubCmd>,
}

impl Cluster {
    /// Starts the Redis link on the current actix system; events go to
    /// `registry`. Connecting happens in the background, with retries.
    pub fn start(
        settings: &ClusterSettings,
        registry: Recipient<FromCluster>,
    ) -> Result<Cluster, String> {
        let client = link::client(settings)?;
        let proc: ProcId = rand::random();
        let prefix: Arc<str> = settings.channel_prefix.as_str().into();
        // Unbounded as a channel, bounded by the outbox's accounting.
        let (publish, published) = mpsc::unbounded_channel();
        let outbox = Outbox::new();
        let (subs, sub_cmds) = mpsc::unbounded_channel();
        actix_rt::spawn(link::publisher(client.clone(), published, outbox.clone()));
        actix_rt::spawn(link::subscriber(
            client,
            prefix.clone(),
            proc,
            registry,
            sub_cmds,
        ));
        log::info!(
            "cluster mode: process {proc:016x}, channels {prefix}:*, redis {}",
            link::redacted(&settings.redis_url)
        );
        Ok(Cluster {
            proc,
            settings: Arc::new(settings.clone()),
            prefix,
            publish,
            outbox,
            subs,
        })
    }

    fn send(&self, o: Outgoing) {
        if !self.outbox.admit(&o) {
            if o.control {
                log::error!(
                    "cluster: {} control notifications wait for Redis; dropping",
                    outbox::CONTROLS
                );
            }
            crate::metrics::add(&crate::metrics::CLUSTER_DROPPED, 1);
            return;
        }
        if let Err(e) = self.publish.send(o) {
            self.outbox.release(&e.0);
            crate::metrics::add(&crate::metrics::CLUSTER_DROPPED, 1);
        }
    }

    pub fn publish_ctl(&self, ctl: &Ctl) {
        self.send(Outgoing {
            channel: format!("{}:ctl", self.prefix),
            payload: encode(ctl),
            control: true,
        });
    }

    pub fn room_changed(&self, room_id: &str, change: RoomChange) {
        self.publish_ctl(&Ctl::Room {
            proc: self.proc,
            room_id: room_id.to_owned(),
            change,
        });
    }

    pub fn publish_entry(&self, e: &NewEntry, at: Appended) {
        self.send(Outgoing {
            channel: format!("{}:room:{}", self.prefix, e.room_id),
            payload: encode_entry(e, at),
            control: false,
        });
    }

    pub fn subscribe_room(&self, room_id: &str, room: Recipient<RoomFeed>) {
        let _ = self.subs.send(SubCmd::Room(room_id.to_owned(), room));
    }

    pub fn unsubscribe_room(&self, room_id: &str) {
        let _ = self.subs.send(SubCmd::Leave(room_id.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_and_a_control_cross_the_wire_whole() {
        let e = NewEntry {
            room_id: "r".into(),
            entry: crate::message::LogEntry {
                kind: crate::message::EntryKind::Commit,
                sender: "alice".into(),
                device_id: vec![1; 16],
                epoch: 4,
                data: vec![2; 100],
                msg_id: None,
                group_info: Some(vec![3; 50]),
            },
            commit: None,
        };
        let at = Appended {
            seq: 9,
            ts: 10,
            duplicate: false,
        };
        let Some(RoomFeed::Entry(got)) = decode_feed("r", &encode_entry(&e, at)) else {
            panic!("an entry decodes");
        };
        assert_eq!((got.seq, got.ts), (9, 10));
        assert_eq!(got.entry, e.entry, "every part");
        assert!(decode_feed("other", &encode_entry(&e, at)).is_none());
        assert!(decode_feed("r", b"junk").is_none());
        let ctl = Ctl::Room {
            proc: 1,
            room_id: "r".into(),
            change: RoomChange::Removed {
                user: "bob".into(),
                reason: "kicked".into(),
            },
        };
        let back: Ctl = ciborium::from_reader(&encode(&ctl)[..]).unwrap();
        assert!(
            matches!(back, Ctl::Room { change, .. } if change == RoomChange::Removed {
                user: "bob".into(),
                reason: "kicked".into()
            })
        );
    }
}
