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
use std::time::Duration;

use crate::util::Windows;

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
    /// the client's own claims and are never used. Every header line counts,
    /// in order, as one list: a proxy that adds a line of its own instead of
    /// appending to the client's puts its entry last, where it is read.
    /// Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        for line in forwarded_for.rev() {
            for entry in line.rsplit(',') {
                match parse_entry(entry.trim()) {
                    Some(ip) if self.addrs.contains(&ip) => continue,
                    Some(ip) => return ip,
                    None => return peer,
                }
            }
        }
        peer
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The key an address is budgeted under: an IPv4 address as it is, an IPv6
/// address by its /64 (one subscriber's network: a client that holds a /64
/// has 2^64 addresses to rotate through).
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

struct Counts {
    connections: HashMap<IpAddr, usize>,
    /// Registrations in the current hour, per address.
    registrations: Windows<IpAddr>,
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
            counts: Mutex::new(Counts {
                connections: HashMap::new(),
                registrations: Windows::new(HOUR, 10_000),
            }),
            max_connections,
            registrations_per_hour,
        })
    }

    /// A connection slot for `ip`, or `None` when it has
    /// `max_connections_per_ip` already.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = budget_key(ip);
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
        let mut c = self.counts.lock().expect("peers lock");
        c.registrations
            .take(budget_key(ip), self.registrations_per_hour)
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
        let one = |h: &'static str| std::iter::once(h);
        let none = TrustedProxies::parse(&[]).unwrap();
        assert_eq!(
            none.client_ip(ip("10.0.0.1"), one("1.2.3.4")),
            ip("10.0.0.1")
        );
        let listed = TrustedProxies::parse(&["10.0.0.1".into(), "10.0.0.2".into()]).unwrap();
        // The client's own claim (leftmost) is ignored; proxies are skipped.
        assert_eq!(
            listed.client_ip(ip("10.0.0.1"), one("6.6.6.6, 1.2.3.4, 10.0.0.2")),
            ip("1.2.3.4")
        );
        assert_eq!(
            listed.client_ip(ip("10.0.0.9"), one("1.2.3.4")),
            ip("10.0.0.9")
        );
        assert_eq!(
            listed.client_ip(ip("10.0.0.1"), one("junk")),
            ip("10.0.0.1")
        );
        assert_eq!(
            listed.client_ip(ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        let any = TrustedProxies::parse(&["*".into()]).unwrap();
        assert_eq!(
            any.client_ip(ip("10.1.1.1"), one("6.6.6.6, 1.2.3.4")),
            ip("1.2.3.4")
        );
        assert!(TrustedProxies::parse(&["heroku".into()]).is_err());
    }

    /// Issue 20 item 14: a client-supplied first header line, `ip:port`
    /// entries, and IPv6 clients rotating addresses in their /64.
    #[test]
    fn every_header_line_ports_and_ipv6_networks() {
        let any = TrustedProxies::parse(&["*".into()]).unwrap();
        // The client sent its own X-Forwarded-For line; the proxy added one.
        let lines = ["6.6.6.6", "1.2.3.4"];
        assert_eq!(
            any.client_ip(ip("10.1.1.1"), lines.into_iter()),
            ip("1.2.3.4")
        );
        // Entries with ports (as some proxies write them) are the client,
        // not a reason to fall back to the proxy.
        let lines = ["5.6.7.8:51234"];
        assert_eq!(
            any.client_ip(ip("10.1.1.1"), lines.into_iter()),
            ip("5.6.7.8")
        );
        let lines = ["[2001:db8::7]:443"];
        assert_eq!(
            any.client_ip(ip("10.1.1.1"), lines.into_iter()),
            ip("2001:db8::7")
        );
        // One /64 is one budget.
        let peers = Peers::new(2, 100);
        let _a = peers.connect(ip("2001:db8:1:2::1")).unwrap();
        let _b = peers.connect(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(peers.connect(ip("2001:db8:1:2::3")).is_none());
        assert!(peers.connect(ip("2001:db8:1:3::1")).is_some());
        assert_eq!(budget_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
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
