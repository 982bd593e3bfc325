//! Packets per second through `Filter::check`, beside a plain HashMap
//! per-source counter (the simplest filter one would write) and parsing alone,
//! on the same packets in the same run.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{IpSlice, PacketBuilder};
use scold_filter::firewall::{Filter, FilterConfig};
use scold_filter::packet::classify;

const DST: [u8; 4] = [192, 0, 2, 1];

fn udp(src: [u8; 4], len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, DST, 64).udp(4000, 53);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0u8; len]).unwrap();
    out
}

fn tcp(src: [u8; 4], len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, DST, 64)
        .tcp(40000, 443, 1, 64240)
        .ack(1);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0u8; len]).unwrap();
    out
}

/// One flooding source (9 in 10 packets) and 64 clients sending 1200-byte TCP.
fn mixed() -> Vec<Vec<u8>> {
    let flood = udp([203, 0, 113, 9], 64);
    (0..4096u32)
        .map(|i| {
            if i % 10 == 0 {
                tcp([198, 51, 100, (i / 10 % 64) as u8], 1200)
            } else {
                flood.clone()
            }
        })
        .collect()
}

/// Spoofed flood: every packet from a different address.
fn spoofed() -> Vec<Vec<u8>> {
    (0..4096u32)
        .map(|i| {
            let a = (0x0a00_0000 + i * 7919).to_be_bytes();
            udp(a, 64)
        })
        .collect()
}

/// The peer: per-source packet count in a fixed one-second window.
struct HashMapCounter {
    seen: HashMap<IpAddr, (u64, u64)>,
    limit: u64,
}

impl HashMapCounter {
    fn check(&mut self, now_ns: u64, pkt: &[u8]) -> bool {
        let Ok(ip) = IpSlice::from_slice(pkt) else {
            return false;
        };
        let e = self.seen.entry(ip.source_addr()).or_insert((now_ns, 0));
        if now_ns - e.0 >= 1_000_000_000 {
            *e = (now_ns, 0);
        }
        e.1 += 1;
        e.1 <= self.limit
    }
}

fn bench(c: &mut Criterion) {
    for (name, pkts) in [("mixed", mixed()), ("spoofed", spoofed())] {
        let mut g = c.benchmark_group(format!("filter_check/{name}"));
        g.throughput(Throughput::Elements(pkts.len() as u64));

        let mut f = Filter::new(FilterConfig {
            max_sources: 65_536,
            ..FilterConfig::default()
        });
        let mut t = Duration::from_secs(1);
        g.bench_function("scold_filter", |b| {
            b.iter(|| {
                let mut pass = 0u32;
                for p in &pkts {
                    // 1 µs between packets: about one million packets per second.
                    t += Duration::from_micros(1);
                    if f.check(t, p) == scold_filter::Verdict::Pass {
                        pass += 1;
                    }
                }
                black_box(pass)
            })
        });

        let mut peer = HashMapCounter {
            seen: HashMap::new(),
            limit: 20_000,
        };
        let mut now = 1_000_000_000u64;
        g.bench_function("hashmap_counter_peer", |b| {
            b.iter(|| {
                let mut pass = 0u32;
                for p in &pkts {
                    now += 1_000;
                    if peer.check(now, p) {
                        pass += 1;
                    }
                }
                // Unbounded, unlike the filter: keep the peer from growing without limit.
                if peer.seen.len() > 65_536 {
                    peer.seen.clear();
                }
                black_box(pass)
            })
        });

        g.bench_function("parse_only", |b| {
            b.iter(|| {
                let mut n = 0u32;
                for p in &pkts {
                    if classify(black_box(p)).is_ok() {
                        n += 1;
                    }
                }
                black_box(n)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
