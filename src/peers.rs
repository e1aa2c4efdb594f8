//! Per-address budgets: who the client is (its IP, taken from
//! `X-Forwarded-For` only behind `server.trusted_proxies`), how many
//! connections each address holds (`limits.max_connections_per_ip`) and how
//! many accounts it registered in the last hour
//! (`limits.registrations_per_ip_per_hour`).
//!
//! This is connection accounting, not chat state: a short `Mutex` section
//! per connection and per registration, never held across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// Which peers may tell us the client's address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    any: bool,
    addrs: Vec<IpAddr>,
}

impl TrustedProxies {
    /// `"*"` trusts whatever connects (a platform router such as Heroku's,
    /// the only thing that can reach the process); otherwise IP addresses.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut t = TrustedProxies::default();
        for e in entries {
            if e == "*" {
                t.any = true;
            } else {
                t.addrs.push(
                    e.parse()
                        .map_err(|_| format!("{e:?} is not an IP address or \"*\""))?,
                );
            }
        }
        Ok(t)
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        self.any || self.addrs.contains(ip)
    }

    /// The client's address: the peer, unless the peer is a trusted proxy;
    /// then the rightmost `X-Forwarded-For` entry that is not a listed
    /// proxy (the one the first trusted hop saw). Entries further left are
    /// the client's own claims and are never used.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        for entry in header.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if self.addrs.contains(&ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
        peer
    }
}

#[derive(Default)]
struct Counts {
    connections: HashMap<IpAddr, usize>,
    /// Registrations in the window that started at the instant.
    registrations: HashMap<IpAddr, (Instant, u32)>,
}

/// The server's per-address books.
pub struct Peers {
    counts: Mutex<Counts>,
    max_connections: usize,
    registrations_per_hour: u32,
}

/// One connection's place in its address's count; given back on drop.
pub struct Slot {
    peers: Arc<Peers>,
    pub ip: IpAddr,
}

impl Slot {
    /// Counts one registration from this connection's address; false past
    /// `limits.registrations_per_ip_per_hour`.
    pub fn register(&self) -> bool {
        self.peers.register(self.ip)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.peers.counts.lock().expect("peers lock");
        if let Some(n) = c.connections.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.connections.remove(&self.ip);
            }
        }
    }
}

impl Peers {
    pub fn new(max_connections: usize, registrations_per_hour: u32) -> Arc<Peers> {
        Arc::new(Peers {
            counts: Mutex::default(),
            max_connections,
            registrations_per_hour,
        })
    }

    /// A connection slot for `ip`, or `None` when it has
    /// `max_connections_per_ip` already.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut c = self.counts.lock().expect("peers lock");
        let n = c.connections.entry(ip).or_default();
        if *n >= self.max_connections {
            return None;
        }
        *n += 1;
        Some(Slot {
            peers: self.clone(),
            ip,
        })
    }

    /// Counts one registration from `ip`; false past the hourly limit.
    pub fn register(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut c = self.counts.lock().expect("peers lock");
        if c.registrations.len() > 10_000 {
            c.registrations
                .retain(|_, (since, _)| now.duration_since(*since) < HOUR);
        }
        let (since, count) = c.registrations.entry(ip).or_insert((now, 0));
        if now.duration_since(*since) >= HOUR {
            *since = now;
            *count = 0;
        }
        if *count >= self.registrations_per_hour {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let none = TrustedProxies::parse(&[]).unwrap();
        assert_eq!(
            none.client_ip(ip("10.0.0.1"), Some("1.2.3.4")),
            ip("10.0.0.1")
        );
        let listed = TrustedProxies::parse(&["10.0.0.1".into(), "10.0.0.2".into()]).unwrap();
        // The client's own claim (leftmost) is ignored; proxies are skipped.
        assert_eq!(
            listed.client_ip(ip("10.0.0.1"), Some("6.6.6.6, 1.2.3.4, 10.0.0.2")),
            ip("1.2.3.4")
        );
        assert_eq!(
            listed.client_ip(ip("10.0.0.9"), Some("1.2.3.4")),
            ip("10.0.0.9")
        );
        assert_eq!(
            listed.client_ip(ip("10.0.0.1"), Some("junk")),
            ip("10.0.0.1")
        );
        assert_eq!(listed.client_ip(ip("10.0.0.1"), None), ip("10.0.0.1"));
        let any = TrustedProxies::parse(&["*".into()]).unwrap();
        assert_eq!(
            any.client_ip(ip("10.1.1.1"), Some("6.6.6.6, 1.2.3.4")),
            ip("1.2.3.4")
        );
        assert!(TrustedProxies::parse(&["heroku".into()]).is_err());
    }

    #[test]
    fn slots_and_registrations_are_counted_per_address() {
        let peers = Peers::new(2, 1);
        let a = peers.connect(ip("1.1.1.1")).unwrap();
        let _b = peers.connect(ip("1.1.1.1")).unwrap();
        assert!(peers.connect(ip("1.1.1.1")).is_none());
        assert!(peers.connect(ip("2.2.2.2")).is_some());
        drop(a);
        assert!(peers.connect(ip("1.1.1.1")).is_some());
        assert!(peers.register(ip("1.1.1.1")));
        assert!(!peers.register(ip("1.1.1.1")));
        assert!(peers.register(ip("2.2.2.2")));
    }
}
