//! The proxy's per-packet firewall under any packets, times (also going back: clocks
//! of other hosts, or a caller's bug), operator blocks and housekeeping.
//!
//! Properties:
//! - nothing panics, whatever the packet or the time;
//! - the tracked sources never exceed `max_sources` (the memory bound), and undrained
//!   events never exceed `max_events`;
//! - a packet is dropped as malformed exactly when it does not classify;
//! - every verdict is counted once: the counters add up to the packets checked, and
//!   they never go down;
//! - a source blocked by hand is blocked at once, and its next packet is dropped as
//!   blocked; an unblocked source is not blocked;
//! - the offender list is never longer than asked.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scold_filter::packet::classify;
use scold_filter::{DropReason, Filter, FilterConfig, FloodKind, Verdict};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

#[derive(Debug, Arbitrary)]
struct Cfg {
    max_sources: u8,
    ipv6_prefix_len: u8,
    pps: u16,
    udp_pps: u16,
    icmp_pps: u16,
    syn_pps: u16,
    bytes_per_s: u32,
    burst_ms: u16,
    block_after_drops: u8,
    block_for_ms: u32,
    max_block_for_ms: u32,
    new_source_pps: Option<u16>,
    establish_after_ms: u16,
    idle_timeout_ms: u32,
    max_events: u8,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Proto {
    Tcp { syn: bool, ack: bool },
    Udp,
    Icmp,
    Other(u8),
}

#[derive(Debug, Arbitrary, Clone, Copy)]
struct Src {
    v6: bool,
    host: u8,
}

impl Src {
    fn addr(self) -> IpAddr {
        if self.v6 {
            // Hosts spread over a few /64s so prefix tracking matters.
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                u16::from(self.host >> 4),
                0,
                0,
                0,
                u16::from(self.host),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, self.host % 32))
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Packet {
        src: Src,
        proto: Proto,
        payload: u16,
    },
    Raw(Vec<u8>),
    Block(Src),
    Unblock(Src),
    Admit(Src),
    Expire,
    Drain,
    Offenders(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    cfg: Cfg,
    ops: Vec<(i32, Op)>,
}

fn config(c: &Cfg) -> FilterConfig {
    let mut cfg = FilterConfig {
        max_sources: usize::from(c.max_sources % 32) + 1,
        ipv6_prefix_len: c.ipv6_prefix_len,
        block_after_drops: u32::from(c.block_after_drops % 16),
        block_for: Duration::from_millis(u64::from(c.block_for_ms)),
        max_block_for: Duration::from_millis(u64::from(c.max_block_for_ms)),
        new_source_pps: c.new_source_pps.map(f64::from),
        establish_after: Duration::from_millis(u64::from(c.establish_after_ms)),
        idle_timeout: Duration::from_millis(u64::from(c.idle_timeout_ms)),
        max_events: usize::from(c.max_events % 16),
        ..FilterConfig::default()
    };
    cfg.limits.pps = f64::from(c.pps);
    cfg.limits.udp_pps = f64::from(c.udp_pps);
    cfg.limits.icmp_pps = f64::from(c.icmp_pps);
    cfg.limits.syn_pps = f64::from(c.syn_pps);
    cfg.limits.bytes_per_s = f64::from(c.bytes_per_s);
    cfg.limits.burst = Duration::from_millis(u64::from(c.burst_ms));
    cfg
}

fn packet(src: IpAddr, proto: Proto, payload: u16) -> Vec<u8> {
    let (number, mut body) = match proto {
        Proto::Tcp { syn, ack } => {
            let mut t = vec![0u8; 20];
            t[12] = 5 << 4;
            t[13] = u8::from(syn) << 1 | u8::from(ack) << 4;
            (6u8, t)
        }
        Proto::Udp => (17, vec![0u8; 8]),
        Proto::Icmp => (
            if src.is_ipv4() { 1 } else { 58 },
            vec![8, 0, 0, 0, 0, 0, 0, 0],
        ),
        Proto::Other(n) => (n, Vec::new()),
    };
    body.resize(body.len() + usize::from(payload % 1500), 0xab);
    match src {
        IpAddr::V4(s) => {
            let total = 20 + body.len();
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[8] = 64;
            p[9] = number;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&[203, 0, 113, 10]);
            p.extend_from_slice(&body);
            p
        }
        IpAddr::V6(s) => {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
            p[6] = number;
            p[7] = 64;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1).octets());
            p.extend_from_slice(&body);
            p
        }
    }
}

fuzz_target!(|input: Input| {
    let cfg = config(&input.cfg);
    let max_sources = cfg.max_sources;
    let max_events = cfg.max_events;
    let mut f = Filter::new(cfg);
    let mut now = Duration::from_secs(1_000);
    let mut checked = 0u64;
    let mut prev = f.stats();

    for (dt_us, op) in input.ops.iter().take(512) {
        now = if *dt_us >= 0 {
            now.saturating_add(Duration::from_micros(*dt_us as u64))
        } else {
            now.saturating_sub(Duration::from_micros(dt_us.unsigned_abs() as u64))
        };
        let mut check = |f: &mut Filter, pkt: &[u8]| {
            checked += 1;
            let v = f.check(now, pkt);
            let malformed = classify(pkt).is_err();
            assert_eq!(
                matches!(v, Verdict::Drop(DropReason::Malformed)),
                malformed,
                "malformed verdict disagrees with classify: {v:?}"
            );
            v
        };
        match op {
            Op::Packet {
                src,
                proto,
                payload,
            } => {
                let pkt = packet(src.addr(), *proto, *payload);
                let blocked = f.is_blocked(now, src.addr());
                let v = check(&mut f, &pkt);
                if blocked && classify(&pkt).is_ok() {
                    assert!(
                        matches!(v, Verdict::Drop(DropReason::Blocked(_))),
                        "packet from blocked {} got {v:?}",
                        src.addr()
                    );
                }
            }
            Op::Raw(bytes) => {
                check(&mut f, bytes);
            }
            Op::Block(src) => {
                f.block(now, src.addr(), FloodKind::PacketRate);
                assert!(
                    f.is_blocked(now, src.addr()),
                    "{} not blocked after block",
                    src.addr()
                );
            }
            Op::Unblock(src) => {
                f.unblock(now, src.addr());
                assert!(
                    !f.is_blocked(now, src.addr()),
                    "{} blocked after unblock",
                    src.addr()
                );
            }
            Op::Admit(src) => f.admit(now, src.addr()),
            Op::Expire => f.expire(now),
            Op::Drain => {
                let n = f.drain_events().count();
                assert!(n <= max_events, "{n} events queued, cap {max_events}");
            }
            Op::Offenders(n) => {
                let list = f.top_offenders(now, usize::from(*n));
                assert!(list.len() <= usize::from(*n));
                assert!(list
                    .windows(2)
                    .all(|w| w[0].dropped_packets >= w[1].dropped_packets));
            }
        }
        let s = f.stats();
        assert!(
            s.tracked_sources <= max_sources,
            "{} sources tracked, cap {max_sources}",
            s.tracked_sources
        );
        assert_eq!(
            s.passed
                + s.dropped_malformed
                + s.dropped_blocked
                + s.dropped_rate
                + s.dropped_new_source,
            checked,
            "verdict counters do not add up: {s:?}"
        );
        for (a, b) in [
            (prev.passed, s.passed),
            (prev.dropped_malformed, s.dropped_malformed),
            (prev.dropped_blocked, s.dropped_blocked),
            (prev.dropped_rate, s.dropped_rate),
            (prev.dropped_new_source, s.dropped_new_source),
            (prev.evictions, s.evictions),
            (prev.events_lost, s.events_lost),
        ] {
            assert!(b >= a, "a counter went down: {prev:?} -> {s:?}");
        }
        prev = s;
    }
    assert!(f.drain_events().count() <= max_events);
});
