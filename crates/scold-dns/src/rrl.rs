//! Response rate limiting per source prefix, so a query flood (or a reflection attack
//! that spoofs a victim's address) cannot take all of the server's answers.
//!
//! A token bucket per IPv4 /24 or IPv6 /56 (configurable) in a fixed-size table: no
//! allocation per packet, bounded memory whatever the number of sources. Over the
//! limit, responses are dropped, except every `slip`-th one, which is sent truncated
//! (TC=1) so a real client behind a busy prefix retries over TCP and still gets through.
//! Each UDP worker owns one table, so the effective limit of a source whose packets
//! the kernel spreads over several workers is up to `rate x workers`.

use std::net::IpAddr;

/// The limiter's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second allowed per prefix; 0 disables limiting.
    pub responses_per_second: u32,
    /// Every n-th limited response goes out truncated; 0 drops them all.
    pub slip: u32,
    /// IPv4 prefix length that groups sources.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length that groups sources.
    pub ipv6_prefix: u8,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            responses_per_second: 200,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it.
    Send,
    /// Send it truncated (TC=1, no records).
    Slip,
    /// Send nothing.
    Drop,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    key: u128,
    /// Tokens in thousandths of a response.
    milli_tokens: i64,
    last_ms: u64,
    limited: u32,
}

const TABLE: usize = 4096;

/// One worker's limiter.
pub struct Rrl {
    cfg: RrlConfig,
    seed: u64,
    table: Vec<Bucket>,
    /// Responses dropped or slipped since start (for logs).
    pub limited_total: u64,
}

impl Rrl {
    /// A limiter with a random hash seed (so an attacker cannot aim at one slot).
    pub fn new(cfg: RrlConfig) -> Self {
        Self {
            cfg,
            seed: rand::random(),
            table: vec![
                Bucket::default();
                if cfg.responses_per_second == 0 {
                    0
                } else {
                    TABLE
                }
            ],
            limited_total: 0,
        }
    }

    fn prefix(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => {
                let bits = self.cfg.ipv4_prefix.min(32) as u32;
                let v = u32::from(a);
                let m = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                (1u128 << 64) | (v & m) as u128
            }
            IpAddr::V6(a) => {
                let bits = self.cfg.ipv6_prefix.min(128) as u32;
                let v = u128::from(a);
                let m = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                (v & m) ^ (2u128 << 120)
            }
        }
    }

    /// Accounts one response to `src` at `now_ms` (any monotonic milliseconds).
    #[inline]
    pub fn check(&mut self, src: IpAddr, now_ms: u64) -> Action {
        if self.cfg.responses_per_second == 0 {
            return Action::Send;
        }
        let key = self.prefix(src);
        let h = (key as u64 ^ (key >> 64) as u64 ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = (h >> 52) as usize % TABLE;
        let cap = self.cfg.responses_per_second as i64 * 1000;
        let b = &mut self.table[slot];
        if b.key != key || b.last_ms == 0 {
            *b = Bucket {
                key,
                milli_tokens: cap,
                last_ms: now_ms.max(1),
                limited: 0,
            };
        } else {
            let dt = now_ms.saturating_sub(b.last_ms) as i64;
            b.milli_tokens = (b.milli_tokens + dt * self.cfg.responses_per_second as i64).min(cap);
            b.last_ms = now_ms.max(b.last_ms);
        }
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            return Action::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        self.limited_total += 1;
        if self.cfg.slip > 0 && b.limited.is_multiple_of(self.cfg.slip) {
            Action::Slip
        } else {
            Action::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u32, slip: u32) -> RrlConfig {
        RrlConfig {
            responses_per_second: rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }

    #[test]
    fn limits_a_flooding_prefix_but_not_others() {
        let mut r = Rrl::new(cfg(10, 0));
        let flood: IpAddr = "198.51.100.7".parse().unwrap();
        let same_prefix: IpAddr = "198.51.100.8".parse().unwrap();
        let other: IpAddr = "203.0.113.1".parse().unwrap();
        let sent = (0..100)
            .filter(|_| r.check(flood, 1000) == Action::Send)
            .count();
        assert_eq!(sent, 10);
        assert_eq!(r.check(same_prefix, 1000), Action::Drop);
        assert_eq!(r.check(other, 1000), Action::Send);
        // Half a second later, five more.
        let sent = (0..100)
            .filter(|_| r.check(flood, 1500) == Action::Send)
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn slip_sends_every_nth_truncated() {
        let mut r = Rrl::new(cfg(1, 2));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(r.check(ip, 10), Action::Send);
        let acts: Vec<Action> = (0..4).map(|_| r.check(ip, 10)).collect();
        assert_eq!(
            acts,
            vec![Action::Drop, Action::Slip, Action::Drop, Action::Slip]
        );
        // Same /56, different /64.
        let near: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_ne!(r.check(near, 10), Action::Send);
    }

    #[test]
    fn disabled_always_sends() {
        let mut r = Rrl::new(cfg(0, 2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10_000).all(|_| r.check(ip, 5) == Action::Send));
    }
}
