//! The user-space forwarding table of the packet engine: where an inner packet goes,
//! given where it came from. Sans-IO so the roles' rules are unit-tested.
//!
//! The roles are configurations of the same table:
//! - client: destinations of targets -> the proxy peer; everything from the proxy -> TUN.
//! - proxy: each admitted client is a peer whose inner source must be its own address and
//!   whose destinations must be its targets; target prefixes -> the gateway peer; client
//!   addresses -> the client peer; the NAT source address -> TUN.
//! - gateway: everything from a registered proxy -> TUN, and the inner source is learned so
//!   the target's reply (read from TUN) goes back through the proxy it came in by.

use scold_proto::dataplane::Prefix;
use std::collections::HashMap;
use std::net::IpAddr;

pub type PeerId = usize;

/// Where an inner packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Tun,
    Peer(PeerId),
}

/// Why an inner packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Inner source not allowed for this peer (spoofing).
    Spoofed,
    /// Destination not allowed for this peer (a client outside its targets).
    NotPermitted,
    NoRoute,
    /// The route leads back where the packet came from.
    Loop,
    Malformed,
}

/// What a peer may send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Allowed inner sources; empty: any.
    pub sources: Vec<Prefix>,
    /// Allowed inner destinations; empty: any.
    pub destinations: Vec<Prefix>,
    /// Remember inner sources seen from this peer, to route replies back to it.
    pub learn_sources: bool,
    /// Pass this peer's inner packets through the engine's inspector (the proxy's
    /// filter judges its client sessions; gateways and proxies are trusted peers).
    pub inspect: bool,
}

/// Cap on learned addresses so a peer cannot grow the table without bound.
pub const MAX_LEARNED: usize = 1 << 20;

/// The maps looked up for every packet: ahash, randomly keyed per process, costs a
/// fraction of the standard SipHash per lookup (SipHash was a few percent of a relay's
/// time in a profile) and still keeps keys from being chosen to collide.
pub(crate) type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default)]
pub struct Fib {
    hosts: FastMap<IpAddr, Dest>,
    /// Shorter prefixes, longest first.
    prefixes: Vec<(Prefix, Dest)>,
    learned: FastMap<IpAddr, PeerId>,
    /// Where packets from peers go when nothing more specific matches (client, gateway).
    pub peer_default: Option<Dest>,
}

impl Fib {
    pub fn with_peer_default(peer_default: Option<Dest>) -> Self {
        Fib {
            peer_default,
            ..Default::default()
        }
    }

    /// Adds or replaces a route; returns whether anything changed.
    pub fn insert(&mut self, prefix: Prefix, dest: Dest) -> bool {
        if prefix.is_host() {
            return self.hosts.insert(prefix.addr(), dest) != Some(dest);
        }
        if let Some(e) = self.prefixes.iter_mut().find(|(p, _)| *p == prefix) {
            let changed = e.1 != dest;
            e.1 = dest;
            return changed;
        }
        self.prefixes.push((prefix, dest));
        self.prefixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        true
    }

    pub fn remove(&mut self, prefix: &Prefix) -> bool {
        if prefix.is_host() {
            return self.hosts.remove(&prefix.addr()).is_some();
        }
        let before = self.prefixes.len();
        self.prefixes.retain(|(p, _)| p != prefix);
        before != self.prefixes.len()
    }

    /// Removes every route and learned address through `peer`.
    pub fn forget_peer(&mut self, peer: PeerId) {
        self.hosts.retain(|_, d| *d != Dest::Peer(peer));
        self.prefixes.retain(|(_, d)| *d != Dest::Peer(peer));
        self.learned.retain(|_, p| *p != peer);
    }

    pub fn routes(&self) -> impl Iterator<Item = (Prefix, Dest)> + '_ {
        self.hosts
            .iter()
            .map(|(a, d)| (Prefix::host(*a), *d))
            .chain(self.prefixes.iter().copied())
    }

    pub fn lookup(&self, dst: IpAddr) -> Option<Dest> {
        if let Some(d) = self.hosts.get(&dst) {
            return Some(*d);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, d)| *d)
    }

    /// Decides for a packet that came out of `peer`'s tunnel.
    pub fn from_peer(
        &mut self,
        peer: PeerId,
        policy: &PeerPolicy,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<Dest, Drop> {
        if !policy.sources.is_empty() && !policy.sources.iter().any(|p| p.contains(src)) {
            return Err(Drop::Spoofed);
        }
        if !policy.destinations.is_empty() && !policy.destinations.iter().any(|p| p.contains(dst)) {
            return Err(Drop::NotPermitted);
        }
        if policy.learn_sources {
            let room = self.learned.len() < MAX_LEARNED;
            match self.learned.get_mut(&src) {
                Some(p) => *p = peer,
                None if room => {
                    self.learned.insert(src, peer);
                }
                None => {}
            }
        }
        let dest = self
            .lookup(dst)
            .or(self.peer_default)
            .ok_or(Drop::NoRoute)?;
        if dest == Dest::Peer(peer) {
            return Err(Drop::Loop);
        }
        Ok(dest)
    }

    /// Decides for a packet read from the TUN device.
    pub fn from_tun(&self, dst: IpAddr) -> Result<Dest, Drop> {
        if let Some(p) = self.learned.get(&dst) {
            return Ok(Dest::Peer(*p));
        }
        match self.lookup(dst) {
            Some(Dest::Peer(p)) => Ok(Dest::Peer(p)),
            Some(Dest::Tun) => Err(Drop::Loop),
            None => Err(Drop::NoRoute),
        }
    }
}

/// Source and destination of an inner IPv4 or IPv6 packet.
pub fn inner_addrs(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => {
            let h = etherparse::Ipv4HeaderSlice::from_slice(pkt).ok()?;
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
        6 => {
            let h = etherparse::Ipv6HeaderSlice::from_slice(pkt).ok()?;
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn pfx(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn proxy_rules() {
        let mut f = Fib::default();
        let gw = 0;
        let client = 1;
        f.insert(pfx("203.0.113.0/24"), Dest::Peer(gw));
        f.insert(pfx("198.51.100.7/32"), Dest::Peer(client));
        let client_policy = PeerPolicy {
            sources: vec![pfx("198.51.100.7/32")],
            destinations: vec![pfx("203.0.113.10/32")],
            learn_sources: false,
            inspect: false,
        };
        assert_eq!(
            f.from_peer(
                client,
                &client_policy,
                ip("198.51.100.7"),
                ip("203.0.113.10")
            ),
            Ok(Dest::Peer(gw))
        );
        assert_eq!(
            f.from_peer(
                client,
                &client_policy,
                ip("198.51.100.8"),
                ip("203.0.113.10")
            ),
            Err(Drop::Spoofed)
        );
        assert_eq!(
            f.from_peer(
                client,
                &client_policy,
                ip("198.51.100.7"),
                ip("203.0.113.11")
            ),
            Err(Drop::NotPermitted)
        );
        let gw_policy = PeerPolicy::default();
        assert_eq!(
            f.from_peer(gw, &gw_policy, ip("203.0.113.10"), ip("198.51.100.7")),
            Ok(Dest::Peer(client))
        );
        assert_eq!(
            f.from_peer(gw, &gw_policy, ip("203.0.113.10"), ip("198.51.100.9")),
            Err(Drop::NoRoute)
        );
        assert_eq!(
            f.from_peer(gw, &gw_policy, ip("203.0.113.10"), ip("203.0.113.99")),
            Err(Drop::Loop)
        );
        f.forget_peer(client);
        assert_eq!(
            f.from_peer(gw, &gw_policy, ip("203.0.113.10"), ip("198.51.100.7")),
            Err(Drop::NoRoute)
        );
    }

    #[test]
    fn gateway_learns_the_proxy_a_flow_came_by() {
        let mut f = Fib {
            peer_default: Some(Dest::Tun),
            ..Default::default()
        };
        let learn = PeerPolicy {
            learn_sources: true,
            ..Default::default()
        };
        assert_eq!(f.from_tun(ip("198.51.100.7")), Err(Drop::NoRoute));
        assert_eq!(
            f.from_peer(3, &learn, ip("198.51.100.7"), ip("203.0.113.10")),
            Ok(Dest::Tun)
        );
        assert_eq!(f.from_tun(ip("198.51.100.7")), Ok(Dest::Peer(3)));
        // The client moved to another proxy: replies follow.
        f.from_peer(4, &learn, ip("198.51.100.7"), ip("203.0.113.10"))
            .unwrap();
        assert_eq!(f.from_tun(ip("198.51.100.7")), Ok(Dest::Peer(4)));
    }

    #[test]
    fn longest_prefix_wins_and_updates_are_idempotent() {
        let mut f = Fib::default();
        assert!(f.insert(pfx("10.0.0.0/8"), Dest::Peer(1)));
        assert!(f.insert(pfx("10.1.0.0/16"), Dest::Peer(2)));
        assert!(!f.insert(pfx("10.1.0.0/16"), Dest::Peer(2)));
        assert_eq!(f.lookup(ip("10.1.2.3")), Some(Dest::Peer(2)));
        assert_eq!(f.lookup(ip("10.2.2.3")), Some(Dest::Peer(1)));
        assert!(f.remove(&pfx("10.1.0.0/16")));
        assert!(!f.remove(&pfx("10.1.0.0/16")));
        assert_eq!(f.lookup(ip("10.1.2.3")), Some(Dest::Peer(1)));
    }

    #[test]
    fn inner_addrs_refuses_malformed() {
        assert_eq!(inner_addrs(&[]), None);
        assert_eq!(inner_addrs(&[0x45, 0, 0]), None);
        assert_eq!(inner_addrs(&[0x15; 40]), None);
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[3] = 20;
        p[12..16].copy_from_slice(&[1, 2, 3, 4]);
        p[16..20].copy_from_slice(&[5, 6, 7, 8]);
        assert_eq!(inner_addrs(&p), Some((ip("1.2.3.4"), ip("5.6.7.8"))));
    }
}
