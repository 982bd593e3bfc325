//! The proxy's user-space IDS and firewall, sans-IO: packet -> [`Verdict`].
//!
//! Every packet the proxy relays goes through [`Filter::check`]. Each source
//! (an IPv4 address, or an IPv6 prefix, /64 by default, since one host can
//! choose freely inside its /64) gets its own token buckets: packets, bytes, and
//! one per flood class (UDP, ICMP, bare TCP SYN). A packet that finds a bucket
//! empty is dropped with the flood class as the reason; a source that keeps
//! overrunning its buckets is put on the block list for a while, doubling for
//! repeat offenders. Because every bucket belongs to one source, a client that
//! stays within its limits is never dropped because another source floods.
//!
//! Spoofed floods (a new source address per packet) would each start with a
//! full bucket, so packets from sources not yet established share one
//! aggregate budget; established and admitted sources never touch it.
//!
//! Memory is bounded: at most `max_sources` sources are tracked, in storage
//! allocated up front; when full, a victim is chosen among a few random
//! entries, preferring new, idle, unadmitted ones. `check` does not allocate.
//!
//! Time is a parameter (`now`, monotonic); the caller drains [`FilterEvent`]s to
//! log alerts and to push blocks into the kernel (see `nft`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::packet::{classify, PacketInfo, Proto};

/// Which limit a source overran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodKind {
    UdpFlood,
    IcmpFlood,
    SynFlood,
    /// Packets per second over all protocols.
    PacketRate,
    /// Bytes per second over all protocols.
    ByteRate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not a parseable IPv4/IPv6 packet.
    Malformed,
    /// The source is on the block list.
    Blocked(FloodKind),
    /// The source overran one of its buckets.
    RateLimited(FloodKind),
    /// A not yet established source, while new sources together exceed their budget.
    NewSourceBudget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(DropReason),
}

/// Per-source limits. Each bucket holds `burst` worth of its rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceLimits {
    pub pps: f64,
    pub bytes_per_s: f64,
    pub udp_pps: f64,
    pub icmp_pps: f64,
    pub syn_pps: f64,
    pub burst: Duration,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            pps: 20_000.0,
            bytes_per_s: 25_000_000.0,
            udp_pps: 10_000.0,
            icmp_pps: 50.0,
            syn_pps: 50.0,
            burst: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterConfig {
    /// Upper bound of tracked sources (memory is allocated for all of them up front).
    pub max_sources: usize,
    /// IPv6 sources are tracked per prefix of this length (1..=128).
    pub ipv6_prefix_len: u8,
    pub limits: SourceLimits,
    /// Rate-limit drops within one second that put a source on the block list.
    pub block_after_drops: u32,
    /// First block time; each further block of the same source doubles it...
    pub block_for: Duration,
    /// ...up to this.
    pub max_block_for: Duration,
    /// Aggregate packet budget of all not yet established sources; `None` turns it off.
    pub new_source_pps: Option<f64>,
    /// A source seen this long without being blocked counts as established.
    pub establish_after: Duration,
    /// Sources idle this long are forgotten by [`Filter::expire`].
    pub idle_timeout: Duration,
    /// Undrained events beyond this are counted in `FilterStats::events_lost`.
    pub max_events: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            max_sources: 65_536,
            ipv6_prefix_len: 64,
            limits: SourceLimits::default(),
            block_after_drops: 200,
            block_for: Duration::from_secs(60),
            max_block_for: Duration::from_secs(3600),
            new_source_pps: Some(20_000.0),
            establish_after: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            max_events: 4096,
        }
    }
}

/// Something the caller should act on: log it, push it to nftables, report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum FilterEvent {
    Blocked {
        /// The address, or for IPv6 the network address of the tracked prefix.
        src: IpAddr,
        prefix_len: u8,
        reason: FloodKind,
        /// Monotonic time (the caller's clock) at which the block ends.
        until: Duration,
        /// Length of this block.
        duration: Duration,
        dropped_packets: u64,
    },
    Expired {
        src: IpAddr,
        prefix_len: u8,
    },
}

/// One JSON line for the alert log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub ts_unix_ms: u64,
    pub kind: String,
    pub src: IpAddr,
    pub prefix_len: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FloodKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_packets: Option<u64>,
}

impl Alert {
    /// `wall` is the wall-clock time of the event (the filter itself only knows
    /// monotonic time).
    pub fn from_event(event: &FilterEvent, wall: SystemTime) -> Alert {
        let ts_unix_ms = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        match event {
            FilterEvent::Blocked {
                src,
                prefix_len,
                reason,
                duration,
                dropped_packets,
                ..
            } => Alert {
                ts_unix_ms,
                kind: "blocked".into(),
                src: *src,
                prefix_len: *prefix_len,
                reason: Some(*reason),
                block_secs: Some(duration.as_secs_f64()),
                dropped_packets: Some(*dropped_packets),
            },
            FilterEvent::Expired { src, prefix_len } => Alert {
                ts_unix_ms,
                kind: "expired".into(),
                src: *src,
                prefix_len: *prefix_len,
                reason: None,
                block_secs: None,
                dropped_packets: None,
            },
        }
    }

    /// The alert as one line of JSON, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("Alert has only plain fields and always serializes")
    }
}

/// A source that had packets dropped, for traceback reports to the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offender {
    pub src: IpAddr,
    pub prefix_len: u8,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub passed_packets: u64,
    pub last_reason: Option<FloodKind>,
    pub blocked: bool,
    /// Seconds of block left at the time of the query.
    pub block_left_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    pub passed: u64,
    pub dropped_malformed: u64,
    pub dropped_blocked: u64,
    pub dropped_rate: u64,
    pub dropped_new_source: u64,
    pub tracked_sources: usize,
    pub evictions: u64,
    pub events_lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u128),
}

const B_PKT: usize = 0;
const B_BYTE: usize = 1;
const B_UDP: usize = 2;
const B_ICMP: usize = 3;
const B_SYN: usize = 4;
const NB: usize = 5;

#[derive(Clone, Debug)]
struct Slot {
    key: Key,
    tokens: [f64; NB],
    last_refill: u64,
    first_seen: u64,
    last_seen: u64,
    window_start: u64,
    window_drops: u32,
    blocks: u32,
    /// 0 when not blocked.
    blocked_until: u64,
    block_reason: FloodKind,
    admitted: bool,
    ever_blocked: bool,
    passed_packets: u64,
    dropped_packets: u64,
    dropped_bytes: u64,
    last_reason: Option<FloodKind>,
}

/// How many random entries are looked at to pick an eviction victim.
const EVICTION_SAMPLE: usize = 8;
const SEC: u64 = 1_000_000_000;

/// The per-proxy firewall.
#[derive(Debug)]
pub struct Filter {
    cfg: FilterConfig,
    /// Bucket rates per nanosecond and capacities, precomputed.
    rate_ns: [f64; NB],
    cap: [f64; NB],
    slots: Vec<Slot>,
    /// ahash, randomly keyed: looked up for every packet, with keys a flood chooses.
    index: HashMap<Key, u32, ahash::RandomState>,
    new_tokens: f64,
    new_cap: f64,
    new_last: u64,
    events: VecDeque<FilterEvent>,
    stats: FilterStats,
    rng: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Filter {
    pub fn new(cfg: FilterConfig) -> Self {
        let l = &cfg.limits;
        let rates = [l.pps, l.bytes_per_s, l.udp_pps, l.icmp_pps, l.syn_pps];
        let burst = l.burst.as_secs_f64().max(1e-3);
        let max_sources = cfg.max_sources.max(1);
        let new_cap = cfg
            .new_source_pps
            .map(|r| (r * burst).max(1.0))
            .unwrap_or(0.0);
        Filter {
            rate_ns: rates.map(|r| r / SEC as f64),
            // At least one packet (or one full-size packet for bytes) fits, so a
            // tiny limit still lets something through.
            cap: std::array::from_fn(|i| {
                let c = rates[i] * burst;
                if i == B_BYTE {
                    c.max(65_535.0)
                } else {
                    c.max(1.0)
                }
            }),
            slots: Vec::with_capacity(max_sources),
            index: HashMap::with_capacity_and_hasher(max_sources, Default::default()),
            new_tokens: new_cap,
            new_cap,
            new_last: 0,
            events: VecDeque::with_capacity(cfg.max_events.min(65_536)),
            stats: FilterStats::default(),
            rng: 0x2545_f491_4f6c_dd1d ^ (max_sources as u64),
            cfg: FilterConfig {
                max_sources,
                ipv6_prefix_len: cfg.ipv6_prefix_len.clamp(1, 128),
                ..cfg
            },
        }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.cfg
    }

    /// Takes new limits, block times and new-source budget (a config reload) without
    /// forgetting anyone: tracked sources, their blocks and counters stay; each bucket
    /// keeps its tokens up to its new capacity. `max_sources` and `ipv6_prefix_len`
    /// shape the table and stay as they were.
    pub fn reconfigure(&mut self, cfg: FilterConfig) {
        let fresh = Filter::new(FilterConfig {
            max_sources: 1,
            ..cfg.clone()
        });
        self.rate_ns = fresh.rate_ns;
        self.cap = fresh.cap;
        for s in &mut self.slots {
            for (t, c) in s.tokens.iter_mut().zip(self.cap) {
                *t = t.min(c);
            }
        }
        self.new_cap = fresh.new_cap;
        self.new_tokens = self.new_tokens.min(self.new_cap);
        self.cfg = FilterConfig {
            max_sources: self.cfg.max_sources,
            ipv6_prefix_len: self.cfg.ipv6_prefix_len,
            ..cfg
        };
    }

    fn key(&self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => {
                if let Some(v4) = a.to_ipv4_mapped() {
                    return Key::V4(u32::from(v4));
                }
                let bits = u32::from(self.cfg.ipv6_prefix_len);
                let mask = if bits >= 128 {
                    u128::MAX
                } else {
                    !(u128::MAX >> bits)
                };
                Key::V6(u128::from(a) & mask)
            }
        }
    }

    fn key_addr(&self, key: Key) -> (IpAddr, u8) {
        match key {
            Key::V4(a) => (IpAddr::V4(Ipv4Addr::from(a)), 32),
            Key::V6(a) => (IpAddr::V6(Ipv6Addr::from(a)), self.cfg.ipv6_prefix_len),
        }
    }

    /// Check one complete IPv4/IPv6 packet. Does not allocate.
    pub fn check(&mut self, now: Duration, packet: &[u8]) -> Verdict {
        match classify(packet) {
            Ok(info) => self.check_info(now, &info),
            Err(_) => {
                self.stats.dropped_malformed += 1;
                Verdict::Drop(DropReason::Malformed)
            }
        }
    }

    /// Check a packet the caller has already classified.
    pub fn check_info(&mut self, now: Duration, p: &PacketInfo) -> Verdict {
        let now = nanos(now);
        let key = self.key(p.src);
        let idx = self.slot_for(key, now);
        let established_after = nanos(self.cfg.establish_after);

        // Block list first: a blocked source costs one lookup.
        let blocked_until = self.slots[idx].blocked_until;
        if blocked_until != 0 {
            if now < blocked_until {
                let s = &mut self.slots[idx];
                s.last_seen = now;
                s.dropped_packets += 1;
                s.dropped_bytes += p.len as u64;
                self.stats.dropped_blocked += 1;
                return Verdict::Drop(DropReason::Blocked(s.block_reason));
            }
            self.unblock_slot(idx, now);
        }

        let s = &mut self.slots[idx];
        s.last_seen = now;
        let elapsed = now.saturating_sub(s.last_refill) as f64;
        s.last_refill = s.last_refill.max(now);
        for i in 0..NB {
            s.tokens[i] = (s.tokens[i] + elapsed * self.rate_ns[i]).min(self.cap[i]);
        }
        let established = s.admitted
            || (!s.ever_blocked && now.saturating_sub(s.first_seen) >= established_after);

        let class = match (p.proto, p.syn) {
            (Proto::Udp, _) => Some((B_UDP, FloodKind::UdpFlood)),
            (Proto::Icmp, _) => Some((B_ICMP, FloodKind::IcmpFlood)),
            (Proto::Tcp, true) => Some((B_SYN, FloodKind::SynFlood)),
            _ => None,
        };
        let len = p.len as f64;
        let over = if s.tokens[B_PKT] < 1.0 {
            Some(FloodKind::PacketRate)
        } else if class.is_some_and(|(b, _)| s.tokens[b] < 1.0) {
            class.map(|(_, k)| k)
        } else if s.tokens[B_BYTE] < len {
            Some(FloodKind::ByteRate)
        } else {
            None
        };

        if let Some(kind) = over {
            s.dropped_packets += 1;
            s.dropped_bytes += p.len as u64;
            s.last_reason = Some(kind);
            if now.saturating_sub(s.window_start) >= SEC {
                s.window_start = now;
                s.window_drops = 0;
            }
            s.window_drops += 1;
            self.stats.dropped_rate += 1;
            if s.window_drops >= self.cfg.block_after_drops.max(1) {
                self.block_slot(idx, now, kind);
            }
            return Verdict::Drop(DropReason::RateLimited(kind));
        }

        if !established && self.cfg.new_source_pps.is_some() {
            let rate = self.cfg.new_source_pps.unwrap_or(0.0) / SEC as f64;
            let el = now.saturating_sub(self.new_last) as f64;
            self.new_last = self.new_last.max(now);
            self.new_tokens = (self.new_tokens + el * rate).min(self.new_cap);
            if self.new_tokens < 1.0 {
                let s = &mut self.slots[idx];
                s.dropped_packets += 1;
                s.dropped_bytes += p.len as u64;
                self.stats.dropped_new_source += 1;
                return Verdict::Drop(DropReason::NewSourceBudget);
            }
            self.new_tokens -= 1.0;
        }

        let s = &mut self.slots[idx];
        s.tokens[B_PKT] -= 1.0;
        s.tokens[B_BYTE] -= len;
        if let Some((b, _)) = class {
            s.tokens[b] -= 1.0;
        }
        s.passed_packets += 1;
        self.stats.passed += 1;
        Verdict::Pass
    }

    fn push_event(&mut self, e: FilterEvent) {
        if self.events.len() >= self.cfg.max_events {
            self.stats.events_lost += 1;
            return;
        }
        self.events.push_back(e);
    }

    fn block_slot(&mut self, idx: usize, now: u64, kind: FloodKind) {
        let base = nanos(self.cfg.block_for).max(1);
        let max = nanos(self.cfg.max_block_for).max(base);
        let s = &mut self.slots[idx];
        let dur = base.saturating_mul(1u64 << s.blocks.min(30)).min(max);
        s.blocks = s.blocks.saturating_add(1);
        s.blocked_until = now.saturating_add(dur).max(1);
        s.block_reason = kind;
        s.ever_blocked = true;
        s.window_drops = 0;
        let (key, until, dropped_packets) = (s.key, s.blocked_until, s.dropped_packets);
        let (src, prefix_len) = self.key_addr(key);
        let ev = FilterEvent::Blocked {
            src,
            prefix_len,
            reason: kind,
            until: Duration::from_nanos(until),
            duration: Duration::from_nanos(dur),
            dropped_packets,
        };
        self.push_event(ev);
    }

    fn unblock_slot(&mut self, idx: usize, now: u64) {
        let cap = self.cap;
        let s = &mut self.slots[idx];
        s.blocked_until = 0;
        s.window_drops = 0;
        // Start the released source with a tenth of its burst, so it cannot burst
        // straight back to a full flood but its next packet is not dropped.
        s.tokens = std::array::from_fn(|i| (cap[i] * 0.1).max(1.0));
        s.last_refill = now;
        let key = s.key;
        let (src, prefix_len) = self.key_addr(key);
        self.push_event(FilterEvent::Expired { src, prefix_len });
    }

    fn fresh_slot(&self, key: Key, now: u64) -> Slot {
        Slot {
            key,
            tokens: self.cap,
            last_refill: now,
            first_seen: now,
            last_seen: now,
            window_start: now,
            window_drops: 0,
            blocks: 0,
            blocked_until: 0,
            block_reason: FloodKind::PacketRate,
            admitted: false,
            ever_blocked: false,
            passed_packets: 0,
            dropped_packets: 0,
            dropped_bytes: 0,
            last_reason: None,
        }
    }

    fn slot_for(&mut self, key: Key, now: u64) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i as usize;
        }
        let slot = self.fresh_slot(key, now);
        if self.slots.len() < self.cfg.max_sources {
            let i = self.slots.len();
            self.slots.push(slot);
            self.index.insert(key, i as u32);
            return i;
        }
        let victim = self.pick_victim(now);
        let old = self.slots[victim].key;
        self.index.remove(&old);
        self.slots[victim] = slot;
        self.index.insert(key, victim as u32);
        self.stats.evictions += 1;
        victim
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Eviction class: lower goes first. Admitted sources go last, so a flood of
    /// new addresses cannot push a known client out of the table.
    fn eviction_rank(&self, s: &Slot, now: u64) -> (u8, u64) {
        let established =
            !s.ever_blocked && now.saturating_sub(s.first_seen) >= nanos(self.cfg.establish_after);
        if s.admitted {
            (3, s.last_seen)
        } else if s.blocked_until > now {
            (2, s.blocked_until)
        } else if established {
            (1, s.last_seen)
        } else {
            (0, s.last_seen)
        }
    }

    fn pick_victim(&mut self, now: u64) -> usize {
        let n = self.slots.len() as u64;
        let mut best = (self.next_rand() % n) as usize;
        let mut best_rank = self.eviction_rank(&self.slots[best], now);
        for _ in 1..EVICTION_SAMPLE {
            let i = (self.next_rand() % n) as usize;
            let r = self.eviction_rank(&self.slots[i], now);
            if r < best_rank {
                best = i;
                best_rank = r;
            }
        }
        best
    }

    /// Periodic housekeeping (call about once a second): ends expired blocks
    /// (emitting `Expired`) and forgets idle sources. O(tracked sources).
    pub fn expire(&mut self, now: Duration) {
        let now = nanos(now);
        let idle = nanos(self.cfg.idle_timeout);
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.blocked_until != 0 && now >= s.blocked_until {
                self.unblock_slot(i, now);
            }
            let s = &self.slots[i];
            if s.blocked_until == 0 && !s.admitted && now.saturating_sub(s.last_seen) >= idle {
                let key = s.key;
                self.index.remove(&key);
                self.slots.swap_remove(i);
                if i < self.slots.len() {
                    let moved = self.slots[i].key;
                    self.index.insert(moved, i as u32);
                }
                continue;
            }
            i += 1;
        }
        self.stats.tracked_sources = self.slots.len();
    }

    /// Mark a source as admitted (e.g. a client that completed the tunnel
    /// handshake): it is exempt from the new-source budget and is evicted last.
    /// Its own limits still apply.
    pub fn admit(&mut self, now: Duration, src: IpAddr) {
        let key = self.key(src);
        let i = self.slot_for(key, nanos(now));
        self.slots[i].admitted = true;
    }

    /// Block a source by hand (operator or coordinator request).
    pub fn block(&mut self, now: Duration, src: IpAddr, reason: FloodKind) {
        let key = self.key(src);
        let now = nanos(now);
        let i = self.slot_for(key, now);
        self.block_slot(i, now, reason);
    }

    /// Lift a block before it expires. Returns whether the source was blocked.
    pub fn unblock(&mut self, now: Duration, src: IpAddr) -> bool {
        let key = self.key(src);
        match self.index.get(&key) {
            Some(&i) if self.slots[i as usize].blocked_until != 0 => {
                self.unblock_slot(i as usize, nanos(now));
                true
            }
            _ => false,
        }
    }

    pub fn is_blocked(&self, now: Duration, src: IpAddr) -> bool {
        let key = self.key(src);
        self.index
            .get(&key)
            .is_some_and(|&i| self.slots[i as usize].blocked_until > nanos(now))
    }

    /// Whether events wait to be drained (cheap; for callers on a packet path that
    /// hand events on only when there are some).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Take the pending events, oldest first.
    pub fn drain_events(&mut self) -> impl Iterator<Item = FilterEvent> + '_ {
        self.events.drain(..)
    }

    pub fn stats(&self) -> FilterStats {
        FilterStats {
            tracked_sources: self.slots.len(),
            ..self.stats.clone()
        }
    }

    /// The `n` sources with the most dropped packets, most first.
    pub fn top_offenders(&self, now: Duration, n: usize) -> Vec<Offender> {
        let now = nanos(now);
        let mut v: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.dropped_packets > 0 || s.blocked_until > now)
            .collect();
        let n = n.min(v.len());
        if n == 0 {
            return Vec::new();
        }
        v.select_nth_unstable_by(n - 1, |a, b| b.dropped_packets.cmp(&a.dropped_packets));
        v.truncate(n);
        v.sort_by_key(|s| std::cmp::Reverse(s.dropped_packets));
        v.into_iter()
            .map(|s| {
                let (src, prefix_len) = self.key_addr(s.key);
                let blocked = s.blocked_until > now;
                Offender {
                    src,
                    prefix_len,
                    dropped_packets: s.dropped_packets,
                    dropped_bytes: s.dropped_bytes,
                    passed_packets: s.passed_packets,
                    last_reason: if blocked {
                        Some(s.block_reason)
                    } else {
                        s.last_reason
                    },
                    blocked,
                    block_left_secs: if blocked {
                        (s.blocked_until - now) as f64 / SEC as f64
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{ack4, icmp4, syn4, udp4, udp6};

    const DST: [u8; 4] = [192, 0, 2, 1];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> FilterConfig {
        FilterConfig {
            limits: SourceLimits {
                pps: 1000.0,
                bytes_per_s: 1_000_000.0,
                udp_pps: 500.0,
                icmp_pps: 10.0,
                syn_pps: 10.0,
                burst: Duration::from_secs(1),
            },
            block_after_drops: 50,
            block_for: Duration::from_secs(10),
            max_block_for: Duration::from_secs(40),
            new_source_pps: None,
            ..FilterConfig::default()
        }
    }

    #[test]
    fn new_limits_apply_at_once_and_blocks_survive_a_reconfigure() {
        let mut f = Filter::new(cfg());
        let flooder = udp4([203, 0, 113, 9], DST, 64);
        let client = udp4([198, 51, 100, 7], DST, 64);
        // The flooder is blocked under the old limits.
        for t in 0..2000u64 {
            f.check(ms(t / 4), &flooder);
        }
        assert!(f.is_blocked(ms(500), IpAddr::from([203, 0, 113, 9])));
        // 300 UDP packets/s pass under udp_pps = 500...
        let mut passed = 0;
        for t in 0..300u64 {
            passed += u32::from(f.check(ms(500 + t * 3), &client) == Verdict::Pass);
        }
        assert_eq!(passed, 300);
        // ...and not under 100, from the moment the new limits are taken.
        let mut tighter = cfg();
        tighter.limits.udp_pps = 100.0;
        f.reconfigure(tighter.clone());
        assert_eq!(f.config().limits.udp_pps, 100.0);
        let mut passed = 0;
        for t in 0..300u64 {
            passed += u32::from(f.check(ms(1400 + t * 3), &client) == Verdict::Pass);
        }
        assert!(passed < 250, "passed {passed} of 300 at udp_pps = 100");
        assert!(
            f.is_blocked(ms(2400), IpAddr::from([203, 0, 113, 9])),
            "a reconfigure forgot a block"
        );
    }

    #[test]
    fn flood_is_dropped_while_well_behaved_client_passes_everything() {
        let mut f = Filter::new(cfg());
        let attacker = udp4([203, 0, 113, 9], DST, 64);
        let client = ack4([198, 51, 100, 7], DST, 1000);
        let mut client_passed = 0;
        let mut attacker_passed = 0;
        // 5 s: the attacker sends 20 packets per ms, the client one per 2 ms
        // (500 pps, 0.5 MB/s: inside its limits).
        for t in 0..5000u64 {
            for _ in 0..20 {
                if f.check(ms(t), &attacker) == Verdict::Pass {
                    attacker_passed += 1;
                }
            }
            if t % 2 == 0 {
                assert_eq!(f.check(ms(t), &client), Verdict::Pass, "client at {t} ms");
                client_passed += 1;
            }
        }
        assert_eq!(client_passed, 2500);
        // The attacker gets its burst plus a little before it is blocked.
        assert!(attacker_passed < 1000, "attacker passed {attacker_passed}");
        assert!(f.has_events());
        let events: Vec<_> = f.drain_events().collect();
        assert!(!f.has_events());
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            FilterEvent::Blocked { src, reason, .. } => {
                assert_eq!(*src, IpAddr::from([203, 0, 113, 9]));
                assert_eq!(*reason, FloodKind::UdpFlood);
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(f.is_blocked(ms(5000), IpAddr::from([203, 0, 113, 9])));
        assert!(!f.is_blocked(ms(5000), IpAddr::from([198, 51, 100, 7])));
        let top = f.top_offenders(ms(5000), 5);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].src, IpAddr::from([203, 0, 113, 9]));
        assert!(top[0].blocked);
    }

    #[test]
    fn classifies_icmp_and_syn_floods() {
        let mut f = Filter::new(cfg());
        let icmp = icmp4([203, 0, 113, 1], DST);
        let syn = syn4([203, 0, 113, 2], DST);
        let mut last = (Verdict::Pass, Verdict::Pass);
        // 40 packets of each against a limit of 10 per second: rate-limited,
        // not yet enough drops (50) for the block list.
        for t in 0..40 {
            last = (f.check(ms(t), &icmp), f.check(ms(t), &syn));
        }
        assert_eq!(
            last.0,
            Verdict::Drop(DropReason::RateLimited(FloodKind::IcmpFlood))
        );
        assert_eq!(
            last.1,
            Verdict::Drop(DropReason::RateLimited(FloodKind::SynFlood))
        );
        // Non-SYN TCP from the SYN flooder's address is still within its packet
        // limit: only the SYN class is exhausted.
        assert_eq!(
            f.check(ms(40), &ack4([203, 0, 113, 2], DST, 10)),
            Verdict::Pass
        );
    }

    #[test]
    fn block_expires_and_escalates() {
        let mut f = Filter::new(cfg());
        let p = icmp4([203, 0, 113, 1], DST);
        for t in 0..100 {
            f.check(ms(t), &p);
        }
        let ev: Vec<_> = f.drain_events().collect();
        let FilterEvent::Blocked {
            until, duration, ..
        } = ev[0]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(duration, Duration::from_secs(10));
        assert_eq!(
            f.check(until - ms(1), &p),
            Verdict::Drop(DropReason::Blocked(FloodKind::IcmpFlood))
        );
        f.expire(until);
        let ev: Vec<_> = f.drain_events().collect();
        assert_eq!(
            ev,
            vec![FilterEvent::Expired {
                src: IpAddr::from([203, 0, 113, 1]),
                prefix_len: 32
            }]
        );
        // Released with empty buckets: after 200 ms there are 2 ICMP tokens.
        let t0 = until + ms(200);
        assert_eq!(f.check(t0, &p), Verdict::Pass);
        // Flooding again gets a doubled block.
        for t in 0..200 {
            f.check(t0 + ms(t), &p);
        }
        let ev: Vec<_> = f.drain_events().collect();
        match ev.as_slice() {
            [FilterEvent::Blocked { duration, .. }] => {
                assert_eq!(*duration, Duration::from_secs(20))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn expiry_is_also_noticed_on_the_next_packet() {
        let mut f = Filter::new(cfg());
        f.block(ms(0), IpAddr::from([203, 0, 113, 5]), FloodKind::UdpFlood);
        let p = ack4([203, 0, 113, 5], DST, 10);
        assert!(matches!(
            f.check(ms(1), &p),
            Verdict::Drop(DropReason::Blocked(_))
        ));
        assert_eq!(f.check(Duration::from_secs(11), &p), Verdict::Pass);
        let ev: Vec<_> = f.drain_events().collect();
        assert!(
            matches!(ev.last(), Some(FilterEvent::Expired { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn ipv6_sources_are_tracked_per_prefix() {
        let mut f = Filter::new(cfg());
        let mut src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        // One attacker rotating its interface identifier inside one /64.
        for t in 0..2000u64 {
            src[15] = (t % 251) as u8;
            src[14] = (t / 251) as u8;
            f.check(ms(t / 2), &udp6(src, [0; 16], 10));
        }
        let ev: Vec<_> = f.drain_events().collect();
        assert_eq!(ev.len(), 1, "{ev:?}");
        let FilterEvent::Blocked {
            src, prefix_len, ..
        } = &ev[0]
        else {
            panic!()
        };
        assert_eq!(*src, "2001:db8:0:1::".parse::<IpAddr>().unwrap());
        assert_eq!(*prefix_len, 64);
        assert_eq!(f.stats().tracked_sources, 1);
    }

    #[test]
    fn malformed_packets_are_dropped_and_counted() {
        let mut f = Filter::new(cfg());
        assert_eq!(f.check(ms(0), &[]), Verdict::Drop(DropReason::Malformed));
        assert_eq!(
            f.check(ms(0), &[0x45, 0, 0, 1]),
            Verdict::Drop(DropReason::Malformed)
        );
        assert_eq!(f.stats().dropped_malformed, 2);
        assert_eq!(f.stats().tracked_sources, 0);
    }

    #[test]
    fn memory_is_bounded_and_admitted_clients_survive_a_spoofed_flood() {
        let mut f = Filter::new(FilterConfig {
            max_sources: 256,
            new_source_pps: Some(1000.0),
            ..cfg()
        });
        let client = IpAddr::from([198, 51, 100, 7]);
        f.admit(ms(0), client);
        let client_pkt = ack4([198, 51, 100, 7], DST, 500);
        let mut spoofed_passed = 0u64;
        for t in 0..2000u64 {
            for j in 0..50u32 {
                let a = (t as u32 * 50 + j).to_be_bytes();
                let p = udp4([10, a[1], a[2], a[3]], DST, 64);
                if f.check(ms(t), &p) == Verdict::Pass {
                    spoofed_passed += 1;
                }
            }
            assert_eq!(
                f.check(ms(t), &client_pkt),
                Verdict::Pass,
                "client at {t} ms"
            );
        }
        assert!(f.stats().tracked_sources <= 256);
        assert!(f.stats().evictions > 90_000);
        // 100 000 spoofed packets in 2 s; the shared budget admits ~1000/s plus its burst.
        assert!(spoofed_passed <= 3_100, "spoofed passed {spoofed_passed}");
        assert!(f.stats().dropped_new_source > 90_000);
    }

    #[test]
    fn new_sources_become_established() {
        let mut f = Filter::new(FilterConfig {
            new_source_pps: Some(1.0),
            ..cfg()
        });
        let a = ack4([198, 51, 100, 1], DST, 10);
        assert_eq!(f.check(ms(0), &a), Verdict::Pass); // budget burst of 1
        assert_eq!(
            f.check(ms(1), &a),
            Verdict::Drop(DropReason::NewSourceBudget)
        );
        // After `establish_after` the source no longer needs the shared budget.
        for t in 0..10 {
            assert_eq!(f.check(Duration::from_secs(3) + ms(t), &a), Verdict::Pass);
        }
    }

    #[test]
    fn idle_sources_are_forgotten_and_offenders_listed() {
        let mut f = Filter::new(cfg());
        f.check(ms(0), &ack4([198, 51, 100, 1], DST, 10));
        for t in 0..30 {
            f.check(ms(t), &icmp4([203, 0, 113, 3], DST));
        }
        assert_eq!(f.stats().tracked_sources, 2);
        let top = f.top_offenders(ms(30), 10);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].dropped_packets, 20);
        assert_eq!(top[0].last_reason, Some(FloodKind::IcmpFlood));
        f.expire(Duration::from_secs(400));
        assert_eq!(f.stats().tracked_sources, 0);
        // The lookup still works after swap-removes.
        assert_eq!(
            f.check(Duration::from_secs(400), &ack4([198, 51, 100, 1], DST, 10)),
            Verdict::Pass
        );
    }

    #[test]
    fn alerts_are_json_lines() {
        let ev = FilterEvent::Blocked {
            src: IpAddr::from([203, 0, 113, 9]),
            prefix_len: 32,
            reason: FloodKind::SynFlood,
            until: Duration::from_secs(70),
            duration: Duration::from_secs(60),
            dropped_packets: 321,
        };
        let line =
            Alert::from_event(&ev, UNIX_EPOCH + Duration::from_secs(1_700_000_000)).to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "blocked");
        assert_eq!(v["src"], "203.0.113.9");
        assert_eq!(v["reason"], "syn_flood");
        assert_eq!(v["block_secs"], 60.0);
        assert_eq!(v["ts_unix_ms"], 1_700_000_000_000u64);
        let exp = Alert::from_event(
            &FilterEvent::Expired {
                src: IpAddr::from([203, 0, 113, 9]),
                prefix_len: 32,
            },
            UNIX_EPOCH,
        )
        .to_json_line();
        assert_eq!(
            exp,
            r#"{"ts_unix_ms":0,"kind":"expired","src":"203.0.113.9","prefix_len":32}"#
        );
    }

    #[test]
    fn event_queue_is_bounded() {
        let mut f = Filter::new(FilterConfig {
            max_events: 3,
            ..cfg()
        });
        for i in 0..10u8 {
            f.block(ms(0), IpAddr::from([203, 0, 113, i]), FloodKind::UdpFlood);
        }
        assert_eq!(f.drain_events().count(), 3);
        assert_eq!(f.stats().events_lost, 7);
    }

    proptest::proptest! {
        /// Whatever the traffic of others, a source within its limits always passes.
        #[test]
        fn well_behaved_source_always_passes(
            others in proptest::collection::vec((0u8..16, 0u8..3, 0u16..1500), 1..400)
        ) {
            let mut f = Filter::new(FilterConfig { max_sources: 8, ..cfg() });
            f.admit(ms(0), IpAddr::from([198, 51, 100, 200]));
            let good = udp4([198, 51, 100, 200], DST, 100);
            for (t, (src, kind, len)) in others.iter().enumerate() {
                let s = [203, 0, 113, *src];
                let p = match kind {
                    0 => udp4(s, DST, usize::from(*len)),
                    1 => icmp4(s, DST),
                    _ => syn4(s, DST),
                };
                for _ in 0..20 {
                    f.check(ms(t as u64 * 4), &p);
                }
                // 250 pps: within the good source's UDP limit of 500.
                proptest::prop_assert_eq!(f.check(ms(t as u64 * 4), &good), Verdict::Pass);
            }
        }
    }
}
