//! Who is online on the other processes. Each process numbers its presence
//! events; a receiver that sees a number out of turn (a lost notification,
//! a Redis restart) or an unknown process asks for a snapshot. A process
//! silent for longer than the timeout is dropped with all its users.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::ProcId;

struct Peer {
    last_seen: Instant,
    version: u64,
    users: HashSet<String>,
    /// Sessions per user there (a user in `users` without an entry has one).
    sessions: HashMap<String, u32>,
    /// Waiting for a snapshot: events are not trusted until it comes.
    stale: bool,
}

/// Remote presence, and for each user on how many other processes they are
/// online.
#[derive(Default)]
pub struct Peers {
    peers: HashMap<ProcId, Peer>,
    counts: HashMap<String, u32>,
}

/// A user who became online or offline elsewhere (counting every other
/// process).
pub type Change = (String, bool);

impl Peers {
    pub fn is_online(&self, user: &str) -> bool {
        self.counts.contains_key(user)
    }

    /// Users online on at least one other process.
    pub fn users(&self) -> impl Iterator<Item = &String> {
        self.counts.keys()
    }

    /// `user`'s sessions on the other processes, as last told.
    pub fn sessions_elsewhere(&self, user: &str) -> u32 {
        if !self.counts.contains_key(user) {
            return 0;
        }
        self.peers
            .values()
            .filter(|p| p.users.contains(user))
            .map(|p| p.sessions.get(user).copied().unwrap_or(1))
            .sum()
    }

    pub fn processes(&self) -> usize {
        self.peers.len()
    }

    fn peer(&mut self, proc: ProcId, now: Instant) -> &mut Peer {
        self.peers.entry(proc).or_insert_with(|| Peer {
            last_seen: now,
            version: 0,
            users: HashSet::new(),
            sessions: HashMap::new(),
            stale: true,
        })
    }

    fn add(&mut self, user: &str, changes: &mut Vec<Change>) {
        let n = self.counts.entry(user.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            changes.push((user.to_owned(), true));
        }
    }

    fn sub(&mut self, user: &str, changes: &mut Vec<Change>) {
        if let Some(n) = self.counts.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(user);
                changes.push((user.to_owned(), false));
            }
        }
    }

    /// A heartbeat. True when a snapshot of `proc` should be asked for.
    pub fn alive(&mut self, proc: ProcId, version: u64, now: Instant) -> bool {
        let p = self.peer(proc, now);
        p.last_seen = now;
        p.stale || p.version != version
    }

    /// A presence event. True when a snapshot should be asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn presence(
        &mut self,
        proc: ProcId,
        version: u64,
        user: &str,
        online: bool,
        sessions: u32,
        now: Instant,
        changes: &mut Vec<Change>,
    ) -> bool {
        let p = self.peer(proc, now);
        p.last_seen = now;
        if p.stale || version != p.version + 1 {
            p.stale = true;
            return true;
        }
        p.version = version;
        if online {
            p.sessions.insert(user.to_owned(), sessions.max(1));
        } else {
            p.sessions.remove(user);
        }
        let changed = if online {
            p.users.insert(user.to_owned())
        } else {
            p.users.remove(user)
        };
        if changed {
            if online {
                self.add(user, changes);
            } else {
                self.sub(user, changes);
            }
        }
        false
    }

    /// A whole state; replaces what was known of `proc`.
    pub fn snapshot(
        &mut self,
        proc: ProcId,
        version: u64,
        users: Vec<String>,
        sessions: Vec<u32>,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        let p = self.peer(proc, now);
        if !p.stale && version < p.version {
            return; // an older answer than what the events brought
        }
        p.last_seen = now;
        p.version = version;
        p.stale = false;
        p.sessions = users
            .iter()
            .zip(sessions.iter().copied().chain(std::iter::repeat(1)))
            .map(|(u, n)| (u.clone(), n.max(1)))
            .collect();
        let new: HashSet<String> = users.into_iter().collect();
        let old = std::mem::take(&mut p.users);
        p.users = new.clone();
        for u in old.difference(&new) {
            self.sub(u, changes);
        }
        for u in new.difference(&old) {
            self.add(u, changes);
        }
    }

    /// Drops `proc` and everyone online only there.
    pub fn remove(&mut self, proc: ProcId, changes: &mut Vec<Change>) {
        if let Some(p) = self.peers.remove(&proc) {
            for u in &p.users {
                self.sub(u, changes);
            }
        }
    }

    /// Drops processes not heard from within `timeout`; returns them.
    pub fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        changes: &mut Vec<Change>,
    ) -> Vec<ProcId> {
        let dead: Vec<ProcId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.remove(*id, changes);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_in_turn_snapshots_out_of_turn_and_expiry() {
        let mut peers = Peers::default();
        let t = Instant::now();
        let mut ch = Vec::new();
        // An unknown process: ask for its snapshot first.
        assert!(peers.alive(7, 0, t));
        peers.snapshot(7, 2, vec!["bob".into()], vec![], t, &mut ch);
        assert_eq!(ch, [("bob".to_string(), true)]);
        assert!(!peers.alive(7, 2, t));
        ch.clear();
        assert!(!peers.presence(7, 3, "carol", true, 1, t, &mut ch));
        assert_eq!(ch, [("carol".to_string(), true)]);
        // Event 4 lost: 5 is out of turn.
        ch.clear();
        assert!(peers.presence(7, 5, "dave", true, 1, t, &mut ch));
        assert!(ch.is_empty());
        peers.snapshot(
            7,
            5,
            vec!["carol".into(), "dave".into()],
            vec![2, 1],
            t,
            &mut ch,
        );
        assert!(ch.contains(&("bob".to_string(), false)));
        assert!(ch.contains(&("dave".to_string(), true)));
        // Online on two processes: offline only when both are gone.
        ch.clear();
        peers.snapshot(8, 1, vec!["carol".into()], vec![3], t, &mut ch);
        assert_eq!(peers.sessions_elsewhere("carol"), 5);
        assert!(!peers.presence(8, 2, "carol", true, 1, t, &mut ch));
        assert_eq!(peers.sessions_elsewhere("carol"), 3);
        assert_eq!(peers.sessions_elsewhere("nobody"), 0);
        assert!(ch.is_empty());
        let later = t + Duration::from_secs(10);
        assert!(!peers.alive(8, 2, later));
        assert_eq!(peers.expire(later, Duration::from_secs(5), &mut ch), [7]);
        assert_eq!(ch, [("dave".to_string(), false)]);
        assert!(peers.is_online("carol"));
        ch.clear();
        peers.remove(8, &mut ch);
        assert_eq!(ch, [("carol".to_string(), false)]);
        assert_eq!(peers.users().count(), 0);
    }
}
