//! Who may hold how many connections at once, sans-IO: per source address, per source
//! prefix (an IPv4 /24, an IPv6 /56 by default, the sizes an operator or a provider
//! hands out) and in total. One host, or one network, cannot fill a listener that
//! everyone else needs: it hits its own limit long before the total.
//!
//! The daemons keep one [`ConnTable`] per listener and ask it before they spend anything
//! on a connection (a task, a TLS handshake).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnLimits {
    /// Connections one address may hold.
    pub per_source: usize,
    /// Connections one prefix (below) may hold.
    pub per_prefix: usize,
    /// Connections the listener holds at most.
    pub total: usize,
    /// Length of the IPv4 prefix counted together.
    #[serde(default = "default_v4")]
    pub v4_prefix: u8,
    /// Length of the IPv6 prefix counted together.
    #[serde(default = "default_v6")]
    pub v6_prefix: u8,
}

fn default_v4() -> u8 {
    24
}
fn default_v6() -> u8 {
    56
}

impl ConnLimits {
    /// Limits with the default prefix lengths (/24 and /56).
    pub const fn new(per_source: usize, per_prefix: usize, total: usize) -> Self {
        ConnLimits {
            per_source,
            per_prefix,
            total,
            v4_prefix: 24,
            v6_prefix: 56,
        }
    }
}

/// Which limit a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    #[error("this address holds its {0} connections already")]
    Source(usize),
    #[error("this address's network holds its {0} connections already")]
    Prefix(usize),
    #[error("the listener holds its {0} connections already")]
    Total(usize),
}

impl LimitHit {
    /// A short stable name, for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitHit::Source(_) => "per_source",
            LimitHit::Prefix(_) => "per_prefix",
            LimitHit::Total(_) => "total",
        }
    }
}

/// The prefix `ip` is counted under.
pub fn prefix_of(ip: IpAddr, v4_len: u8, v6_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let len = u32::from(v4_len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            // An IPv4-mapped address counts as the IPv4 address it carries.
            if let Some(v4) = a.to_ipv4_mapped() {
                return prefix_of(IpAddr::V4(v4), v4_len, v6_len);
            }
            let len = u32::from(v6_len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    }
}

/// The open connections of one listener, by source and by prefix.
#[derive(Debug)]
pub struct ConnTable {
    limits: ConnLimits,
    by_source: HashMap<IpAddr, usize>,
    by_prefix: HashMap<IpAddr, usize>,
    total: usize,
}

impl ConnTable {
    pub fn new(limits: ConnLimits) -> Self {
        ConnTable {
            limits,
            by_source: HashMap::new(),
            by_prefix: HashMap::new(),
            total: 0,
        }
    }

    /// New limits (a config reload). Connections held now stay; new ones are counted
    /// against the new limits.
    pub fn set_limits(&mut self, limits: ConnLimits) {
        self.limits = limits;
    }

    /// Open connections in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Open connections from `ip`.
    pub fn from_source(&self, ip: IpAddr) -> usize {
        self.by_source.get(&canonical(ip)).copied().unwrap_or(0)
    }

    /// Counts a new connection from `ip`, or says which limit it would pass. A refusal
    /// changes nothing.
    pub fn open(&mut self, ip: IpAddr) -> Result<(), LimitHit> {
        let l = self.limits;
        let ip = canonical(ip);
        let prefix = prefix_of(ip, l.v4_prefix, l.v6_prefix);
        if self.by_source.get(&ip).copied().unwrap_or(0) >= l.per_source {
            return Err(LimitHit::Source(l.per_source));
        }
        if self.by_prefix.get(&prefix).copied().unwrap_or(0) >= l.per_prefix {
            return Err(LimitHit::Prefix(l.per_prefix));
        }
        if self.total >= l.total {
            return Err(LimitHit::Total(l.total));
        }
        *self.by_source.entry(ip).or_insert(0) += 1;
        *self.by_prefix.entry(prefix).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    /// Forgets one connection from `ip` that [`ConnTable::open`] counted.
    pub fn close(&mut self, ip: IpAddr) {
        let l = self.limits;
        let ip = canonical(ip);
        let prefix = prefix_of(ip, l.v4_prefix, l.v6_prefix);
        let dec = |m: &mut HashMap<IpAddr, usize>, k: IpAddr| {
            if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
                true
            } else {
                false
            }
        };
        if dec(&mut self.by_source, ip) {
            dec(&mut self.by_prefix, prefix);
            self.total = self.total.saturating_sub(1);
        }
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address: a dual-stack listener must not
/// count one host twice under two names.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A sustained rate with room for a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Units per second, on average.
    pub per_sec: f64,
    /// Units that may come at once.
    pub burst: f64,
}

/// A token bucket: [`TokenBucket::take`] says whether one more unit fits `rate` at `now`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        TokenBucket {
            rate,
            tokens: rate.burst,
            last: None,
        }
    }

    /// Takes one unit if the rate allows it at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate.per_sec).min(self.rate.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_group_a_network() {
        assert_eq!(prefix_of(ip("203.0.113.77"), 24, 56), ip("203.0.113.0"));
        assert_eq!(
            prefix_of(ip("2001:db8:1:2ff:1::9"), 24, 56),
            ip("2001:db8:1:200::")
        );
        assert_eq!(
            prefix_of(ip("::ffff:203.0.113.77"), 24, 56),
            ip("203.0.113.0")
        );
        assert_eq!(prefix_of(ip("203.0.113.77"), 0, 0), ip("0.0.0.0"));
        assert_eq!(prefix_of(ip("203.0.113.77"), 32, 128), ip("203.0.113.77"));
    }

    #[test]
    fn one_host_and_one_network_hit_their_own_limits_first() {
        let mut t = ConnTable::new(ConnLimits::new(2, 3, 5));
        t.open(ip("203.0.113.1")).unwrap();
        t.open(ip("203.0.113.1")).unwrap();
        assert_eq!(t.open(ip("203.0.113.1")), Err(LimitHit::Source(2)));
        // The same host under its IPv4-mapped name is the same host.
        assert_eq!(t.open(ip("::ffff:203.0.113.1")), Err(LimitHit::Source(2)));
        t.open(ip("203.0.113.2")).unwrap();
        assert_eq!(t.open(ip("203.0.113.3")), Err(LimitHit::Prefix(3)));
        // Others still get in, up to the total.
        t.open(ip("198.51.100.1")).unwrap();
        t.open(ip("2001:db8::1")).unwrap();
        assert_eq!(t.open(ip("192.0.2.1")), Err(LimitHit::Total(5)));
        assert_eq!(t.total(), 5);
        // A refusal changed nothing; a close frees exactly one place.
        t.close(ip("203.0.113.1"));
        assert_eq!(t.from_source(ip("203.0.113.1")), 1);
        t.open(ip("192.0.2.1")).unwrap();
        assert_eq!(t.open(ip("203.0.113.1")), Err(LimitHit::Total(5)));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate {
            per_sec: 10.0,
            burst: 3.0,
        });
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // 100 ms later one more token has come, not two.
        let t1 = t0 + std::time::Duration::from_millis(100);
        assert!(b.take(t1));
        assert!(!b.take(t1));
        // A long pause refills only up to the burst.
        let t2 = t1 + std::time::Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(t2)));
        assert!(!b.take(t2));
    }

    #[test]
    fn closing_what_was_never_opened_changes_nothing() {
        let mut t = ConnTable::new(ConnLimits::new(1, 1, 1));
        t.close(ip("192.0.2.1"));
        assert_eq!(t.total(), 0);
        t.open(ip("192.0.2.1")).unwrap();
        t.close(ip("192.0.2.2"));
        assert_eq!(t.total(), 1);
        t.close(ip("192.0.2.1"));
        assert_eq!(t.total(), 0);
        t.open(ip("192.0.2.9")).unwrap();
    }
}
