//! Received tunnel datagrams: decapsulation for `ipip`, `udp` and `wireguard`, the inner
//! header read, and the forwarding decision for a packet that came out of a peer.
//!
//! Properties:
//! - plain encapsulations hand out exactly the payload, and only IPv4 (ipip) or
//!   IPv4/IPv6 (udp) packets; any payload has a steering bucket in range, or none;
//! - the forwarding table never sends a packet back to the peer it came from, never
//!   passes a spoofed source or a destination outside the peer's policy, and a learned
//!   source routes the reply back to that peer;
//! - a WireGuard end that shares no session with the sender yields neither an inner
//!   packet nor an answer for any datagram;
//! - in an established WireGuard session, an intact datagram delivers exactly the packet
//!   sent, and a datagram with any byte changed delivers nothing.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scold_proto::dataplane::{Encap, Prefix};
use scold_tunnel::encap::{Action, Encapsulation, Plain, WireGuard, MAX_PACKET};
use scold_tunnel::fib::{inner_addrs, Dest, Fib, PeerPolicy};
use scold_tunnel::keys;
use std::net::{IpAddr, Ipv4Addr};

/// A few prefixes the policies and routes are drawn from, so decisions hit both ways.
const PREFIXES: [&str; 8] = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "192.0.2.0/24",
    "0.0.0.0/0",
    "2001:db8::/32",
    "2001:db8::1/128",
    "::/0",
];

fn prefix(i: u8) -> Prefix {
    PREFIXES[usize::from(i) % PREFIXES.len()]
        .parse()
        .expect("valid prefix")
}

#[derive(Debug, Arbitrary)]
struct Route {
    prefix: u8,
    /// `None`: the TUN device; `Some(p)`: peer `p % 4`.
    peer: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum Mode {
    Ipip,
    Udp,
    /// Datagrams from a stranger to a WireGuard end.
    WgStranger,
    /// An established WireGuard session; each (packet, damage) is sent through it.
    WgSession,
}

#[derive(Debug, Arbitrary)]
struct Input {
    mode: Mode,
    peer: u8,
    sources: Vec<u8>,
    destinations: Vec<u8>,
    learn: bool,
    routes: Vec<Route>,
    peer_default: Option<Option<u8>>,
    datagrams: Vec<(Vec<u8>, Option<(u16, u8)>)>,
}

fn fib_of(input: &Input) -> Fib {
    let dest = |p: Option<u8>| match p {
        None => Dest::Tun,
        Some(p) => Dest::Peer(usize::from(p % 4)),
    };
    let mut fib = Fib::with_peer_default(input.peer_default.map(dest));
    for r in input.routes.iter().take(16) {
        fib.insert(prefix(r.prefix), dest(r.peer));
    }
    fib
}

fn policy_of(input: &Input) -> PeerPolicy {
    PeerPolicy {
        sources: input.sources.iter().take(4).map(|&i| prefix(i)).collect(),
        destinations: input
            .destinations
            .iter()
            .take(4)
            .map(|&i| prefix(i))
            .collect(),
        learn_sources: input.learn,
        // Inspection is the engine's business; the table ignores it.
        inspect: false,
    }
}

/// What the engine does with an inner packet from `peer`.
fn forward(fib: &mut Fib, policy: &PeerPolicy, peer: usize, pkt: &[u8]) {
    let Some((src, dst)) = inner_addrs(pkt) else {
        return;
    };
    match pkt[0] >> 4 {
        4 => assert!(src.is_ipv4() && dst.is_ipv4()),
        6 => assert!(src.is_ipv6() && dst.is_ipv6()),
        v => panic!("inner_addrs accepted IP version {v}"),
    }
    let src_ok = policy.sources.is_empty() || policy.sources.iter().any(|p| p.contains(src));
    let dst_ok =
        policy.destinations.is_empty() || policy.destinations.iter().any(|p| p.contains(dst));
    let r = fib.from_peer(peer, policy, src, dst);
    if let Ok(d) = r {
        assert!(src_ok, "spoofed source {src} passed");
        assert!(dst_ok, "destination {dst} outside the policy passed");
        assert_ne!(
            d,
            Dest::Peer(peer),
            "packet sent back into the tunnel it came from"
        );
    }
    if src_ok && dst_ok && policy.learn_sources {
        assert_eq!(
            fib.from_tun(src),
            Ok(Dest::Peer(peer)),
            "the reply to a learned source does not go back to its peer"
        );
    }
}

fn key(seed: u8) -> String {
    keys::encode_key(&[seed; 32])
}

fn wg(own: u8, other: u8, index: u32) -> WireGuard {
    let private = keys::private_key(&key(own), "own").expect("fixed key");
    let peer_public = keys::public_of(&key(other)).expect("fixed key");
    let peer_public = keys::public_key(&peer_public, "peer").expect("fixed key");
    WireGuard::new(private, peer_public, None, index)
}

/// A well-formed IPv4 packet carrying `payload` (what a TUN device hands the engine).
fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1400)];
    let len = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&Ipv4Addr::new(10, 1, 2, 3).octets());
    p[16..20].copy_from_slice(&Ipv4Addr::new(192, 0, 2, 7).octets());
    p.extend_from_slice(payload);
    p
}

fn session(input: &Input) {
    let src: IpAddr = "192.0.2.1".parse().expect("address");
    let mut a = wg(1, 2, 1);
    let mut b = wg(2, 1, 2);
    let mut sa = vec![0u8; MAX_PACKET];
    let mut sb = vec![0u8; MAX_PACKET];
    // Handshake, started by a packet from a.
    let first = ipv4_packet(b"hello");
    let Action::ToPeer(init) = a.encapsulate(&first, &mut sa) else {
        panic!("no handshake initiation")
    };
    let init = init.to_vec();
    let Action::ToPeer(resp) = b.decapsulate(src, &init, &mut sb) else {
        panic!("no handshake response")
    };
    let resp = resp.to_vec();
    let mut queued = Vec::new();
    if let Action::ToPeer(k) = a.decapsulate(src, &resp, &mut sa) {
        queued.push(k.to_vec());
    }
    while let Action::ToPeer(k) = a.flush(&mut sa) {
        queued.push(k.to_vec());
    }
    for d in &queued {
        let _ = b.decapsulate(src, d, &mut sb);
    }

    for (payload, damage) in input.datagrams.iter().take(8) {
        let pkt = ipv4_packet(payload);
        let Action::ToPeer(enc) = a.encapsulate(&pkt, &mut sa) else {
            panic!("established session does not encapsulate")
        };
        let mut enc = enc.to_vec();
        let damaged = match damage {
            Some((pos, x)) if *x != 0 => {
                let i = usize::from(*pos) % enc.len();
                enc[i] ^= x;
                true
            }
            _ => false,
        };
        match b.decapsulate(src, &enc, &mut sb) {
            Action::Inner(got) => {
                assert!(!damaged, "a damaged datagram was delivered");
                assert_eq!(got, &pkt[..], "delivered packet differs from the one sent");
            }
            other => assert!(damaged, "an intact datagram was not delivered: {other:?}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let peer = usize::from(input.peer % 4);
    let mut scratch = vec![0u8; MAX_PACKET];
    match input.mode {
        Mode::Ipip | Mode::Udp => {
            let encap = if matches!(input.mode, Mode::Ipip) {
                Encap::Ipip
            } else {
                Encap::Udp
            };
            let mut e = Plain(encap);
            let mut fib = fib_of(&input);
            let policy = policy_of(&input);
            let src: IpAddr = "198.51.100.1".parse().expect("address");
            for (d, _) in &input.datagrams {
                // The steering bucket of any payload is one of the buckets or none, and
                // the same for the same bytes.
                let b = scold_tunnel::steer::bucket(d);
                assert!(b == scold_tunnel::steer::NO_BUCKET || u32::from(b) < scold_tunnel::steer::BUCKETS);
                assert_eq!(b, scold_tunnel::steer::bucket(d));
                match e.decapsulate(src, d, &mut scratch) {
                    Action::Inner(pkt) => {
                        assert_eq!(pkt, &d[..]);
                        let v = d[0] >> 4;
                        assert!(v == 4 || (v == 6 && encap == Encap::Udp), "version {v}");
                        forward(&mut fib, &policy, peer, pkt);
                    }
                    Action::Refused(_) => {}
                    other => panic!("plain decapsulation answered {other:?}"),
                }
            }
        }
        Mode::WgStranger => {
            let mut gw = wg(3, 4, 7);
            let src: IpAddr = "203.0.113.9".parse().expect("address");
            for (d, _) in &input.datagrams {
                match gw.decapsulate(src, d, &mut scratch) {
                    Action::Refused(_) | Action::Nothing => {}
                    other => panic!("wireguard answered a stranger: {other:?}"),
                }
            }
        }
        Mode::WgSession => session(&input),
    }
});
