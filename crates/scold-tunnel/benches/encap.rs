//! Cost of the per-packet work of the tunnel hot path, without system calls: the
//! forwarding decision and each encapsulation, for a full-size inner packet.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scold_proto::dataplane::Encap;
use scold_tunnel::encap::{Action, Encapsulation, Plain, WireGuard, MAX_PACKET};
use scold_tunnel::fib::{inner_addrs, Dest, Fib, PeerPolicy};
use scold_tunnel::keys;
use std::net::IpAddr;

fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 1, 0, 2]);
    p[16..20].copy_from_slice(&[10, 4, 0, 2]);
    p
}

fn bench(c: &mut Criterion) {
    let pkt = packet(1420);
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Bytes(pkt.len() as u64));

    let mut fib = Fib::default();
    fib.insert("10.4.0.0/24".parse().unwrap(), Dest::Peer(0));
    fib.insert("10.1.0.2/32".parse().unwrap(), Dest::Peer(1));
    let policy = PeerPolicy {
        sources: vec!["10.1.0.2/32".parse().unwrap()],
        destinations: vec!["10.4.0.2/32".parse().unwrap()],
        learn_sources: false,
        inspect: false,
    };
    g.bench_function("parse_and_route", |b| {
        b.iter(|| {
            let (s, d) = inner_addrs(std::hint::black_box(&pkt)).unwrap();
            fib.from_peer(1, &policy, s, d).unwrap()
        })
    });

    let mut scratch = vec![0u8; MAX_PACKET];
    let mut plain = Plain(Encap::Udp);
    g.bench_function("udp_encap_decap", |b| {
        b.iter(|| {
            let n = match plain.encapsulate(&pkt, &mut scratch) {
                Action::ToPeer(o) => o.len(),
                _ => 0,
            };
            let src: IpAddr = "10.2.0.1".parse().unwrap();
            let m = match plain.decapsulate(src, &pkt[..n], &mut scratch) {
                Action::Inner(i) => i.len(),
                _ => 0,
            };
            assert_eq!(m, n);
        })
    });

    // A WireGuard pair after its handshake.
    let a_priv = keys::generate_private().unwrap();
    let b_priv = keys::generate_private().unwrap();
    let mut a = WireGuard::new(
        keys::private_key(&a_priv, "a").unwrap(),
        keys::public_key(&keys::public_of(&b_priv).unwrap(), "b").unwrap(),
        None,
        1,
    );
    let mut bb = WireGuard::new(
        keys::private_key(&b_priv, "b").unwrap(),
        keys::public_key(&keys::public_of(&a_priv).unwrap(), "a").unwrap(),
        None,
        2,
    );
    let src: IpAddr = "10.2.0.1".parse().unwrap();
    let mut sa = vec![0u8; MAX_PACKET];
    let mut sb = vec![0u8; MAX_PACKET];
    let init = match a.encapsulate(&pkt, &mut sa) {
        Action::ToPeer(x) => x.to_vec(),
        _ => panic!("no handshake"),
    };
    let resp = match bb.decapsulate(src, &init, &mut sb) {
        Action::ToPeer(x) => x.to_vec(),
        _ => panic!("no response"),
    };
    let mut queued = Vec::new();
    if let Action::ToPeer(x) = a.decapsulate(src, &resp, &mut sa) {
        queued.push(x.to_vec());
    }
    while let Action::ToPeer(x) = a.flush(&mut sa) {
        queued.push(x.to_vec());
    }
    for q in &queued {
        let _ = bb.decapsulate(src, q, &mut sb);
    }
    g.bench_function("wireguard_encrypt", |b| {
        b.iter(|| match a.encapsulate(&pkt, &mut sa) {
            Action::ToPeer(o) => o.len(),
            _ => 0,
        })
    });
    g.bench_function("wireguard_encrypt_decrypt", |b| {
        b.iter(|| {
            let enc = match a.encapsulate(&pkt, &mut sa) {
                Action::ToPeer(o) => o,
                _ => panic!("no session"),
            };
            match bb.decapsulate(src, enc, &mut sb) {
                Action::Inner(i) => i.len(),
                _ => 0,
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
