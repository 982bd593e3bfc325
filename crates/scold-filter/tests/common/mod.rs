//! The filter's network-namespace fixture (two namespaces on one veth link, built with
//! `scold_testkit`, so uniquely named and removed on drop, also on panic) and bounded
//! traffic generators; traffic only goes to addresses inside those namespaces.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use scold_filter::sample::in_netns;
use scold_testkit::{wait_until, Net};
use socket2::{Domain, Protocol, Socket, Type};

/// Two namespaces joined by a veth pair: `t` (the target, 10.99.0.1/24 on
/// [`Link::target_if`]) and `p` (the peer, 10.99.0.2/24), removed on drop.
pub struct Link {
    pub net: Net,
}

pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

impl Link {
    pub fn new(tag: &str) -> Link {
        let net = Net::new(&format!("f{tag}"), &["t", "p"], &[("ping", "iputils-ping")]);
        net.link("t", "p", Some("10.99.0.1/24"), Some("10.99.0.2/24"));
        // Wait until the link carries traffic (veth needs both ends up).
        wait_until(
            "the veth link to carry a ping",
            Duration::from_secs(5),
            || net.exec("p", "ping -c1 -W1 10.99.0.1").status.success(),
        );
        Link { net }
    }

    /// The target's namespace.
    pub fn target(&self) -> String {
        self.net.ns("t")
    }

    /// The peer's namespace.
    pub fn peer(&self) -> String {
        self.net.ns("p")
    }

    /// The target's end of the link.
    pub fn target_if(&self) -> String {
        self.net.dev("tp")
    }

    /// stdout of `cmd` in the target's namespace; fails the test unless it succeeds.
    pub fn in_target(&self, cmd: &str) -> String {
        self.net.must("t", cmd)
    }
}

/// How a flood ended.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u64,
    pub stopped: Instant,
}

/// Sends from inside `ns` until `max_packets` are sent or `max_time` passed.
fn bounded<F>(ns: &str, max_packets: u64, max_time: Duration, make: F) -> FloodReport
where
    F: FnOnce() -> Box<dyn FnMut(u64) -> bool> + Send + 'static,
{
    in_netns(ns, move || {
        let mut send = make();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tries = 0u64;
        while sent < max_packets {
            tries += 1;
            if tries.is_multiple_of(256) && start.elapsed() >= max_time {
                break;
            }
            if send(sent) {
                sent += 1;
            } else {
                // Socket buffer full: let the queue drain a little.
                std::thread::yield_now();
            }
        }
        FloodReport {
            sent,
            stopped: Instant::now(),
        }
    })
    .expect("enter attacker namespace")
}

pub fn udp_flood(ns: &str, dst: Ipv4Addr, max_packets: u64, max_time: Duration) -> FloodReport {
    bounded(ns, max_packets, max_time, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        let payload = [0u8; 64];
        Box::new(move |i| {
            let port = 10_000 + (i % 1000) as u16;
            sock.send_to(&payload, SocketAddrV4::new(dst, port)).is_ok()
        })
    })
}

pub fn icmp_flood(ns: &str, dst: Ipv4Addr, max_packets: u64, max_time: Duration) -> FloodReport {
    bounded(ns, max_packets, max_time, move || {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw icmp");
        let to: SocketAddr = SocketAddrV4::new(dst, 0).into();
        let to = socket2::SockAddr::from(to);
        Box::new(move |i| {
            let payload = [0x5au8; 56];
            let h = etherparse::Icmpv4Header::with_checksum(
                etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                    id: 0x5c01,
                    seq: i as u16,
                }),
                &payload,
            );
            let mut buf = Vec::with_capacity(64);
            h.write(&mut buf).unwrap();
            buf.extend_from_slice(&payload);
            sock.send_to(&buf, &to).is_ok()
        })
    })
}

/// SYNs from `src` (an address of `ns`) with rotating source ports, through a
/// raw IP socket (the kernel sends our header as is).
pub fn syn_flood(
    ns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    max_packets: u64,
    max_time: Duration,
) -> FloodReport {
    bounded(ns, max_packets, max_time, move || {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw ip socket");
        let to = socket2::SockAddr::from(SocketAddr::from(SocketAddrV4::new(dst, 0)));
        Box::new(move |i| {
            let b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
                .tcp(1024 + (i % 60_000) as u16, 80, i as u32, 64240)
                .syn();
            let mut buf = Vec::with_capacity(60);
            b.write(&mut buf, &[]).unwrap();
            sock.send_to(&buf, &to).is_ok()
        })
    })
}

/// Sends `n` datagrams from the peer to the target and counts how many a
/// socket in the target receives.
pub fn delivered(link: &Link, port: u16, n: usize) -> usize {
    let rx = in_netns(&link.target(), move || {
        UdpSocket::bind(SocketAddrV4::new(TARGET_IP, port)).expect("bind in target")
    })
    .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = in_netns(&link.peer(), || UdpSocket::bind("0.0.0.0:0").unwrap()).unwrap();
    for _ in 0..n {
        tx.send_to(b"hello", SocketAddrV4::new(TARGET_IP, port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(2);
    while got < n && Instant::now() < deadline {
        match rx.recv(&mut buf) {
            Ok(_) => got += 1,
            Err(_) => break,
        }
    }
    got
}
