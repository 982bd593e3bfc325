//! Network-namespace fixtures and bounded traffic generators for the tests.
//! Every namespace is uniquely named and removed on drop (also on panic);
//! traffic only goes to addresses inside namespaces these fixtures created.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use scold_filter::sample::in_netns;
use socket2::{Domain, Protocol, Socket, Type};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install the Debian package `{package}`"
    );
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that is deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_tool("ip", "iproute2");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("scoldf-{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: `target` (t0, 10.99.0.1/24) and
/// `peer` (p0, 10.99.0.2/24).
pub struct Link {
    pub target: Netns,
    pub peer: Netns,
}

pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

impl Link {
    pub fn new(tag: &str) -> Link {
        let target = Netns::new(&format!("{tag}t"));
        let peer = Netns::new(&format!("{tag}p"));
        run(
            "ip",
            &[
                "link",
                "add",
                "t0",
                "netns",
                &target.name,
                "type",
                "veth",
                "peer",
                "name",
                "p0",
                "netns",
                &peer.name,
            ],
        );
        target.exec("ip", &["addr", "add", "10.99.0.1/24", "dev", "t0"]);
        target.exec("ip", &["link", "set", "t0", "up"]);
        peer.exec("ip", &["addr", "add", "10.99.0.2/24", "dev", "p0"]);
        peer.exec("ip", &["link", "set", "p0", "up"]);
        // Wait until the link carries traffic (veth needs both ends up).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &peer.name,
                    "ping",
                    "-c1",
                    "-W1",
                    "10.99.0.1",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "veth link did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Link { target, peer }
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
