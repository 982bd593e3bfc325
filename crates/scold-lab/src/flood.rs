//! The attack generator: UDP, ICMP echo and TCP SYN floods at a set packet rate and
//! size for a set time, in the role the paper gives Stacheldraht.
//!
//! It is bounded three ways before it sends anything: the destination must lie inside
//! the lab's address range and the testbed's own prefixes, it refuses to run anywhere
//! but a lab network namespace (so its packets only ever travel between the lab's
//! namespaces), and rate, duration and total packet count each have a hard ceiling.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, TcpHeader};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::LabError;
use crate::net::{Ipv4Net, LAB_RANGE};

/// The most packets one flood may send, whatever is asked.
pub const HARD_MAX_PACKETS: u64 = 50_000_000;
/// The highest rate accepted, packets per second.
pub const HARD_MAX_RATE: u64 = 1_000_000;
/// The longest flood accepted.
pub const HARD_MAX_DURATION: Duration = Duration::from_secs(600);
/// Largest payload: a UDP datagram that fits a 1500-byte MTU unfragmented.
pub const MAX_PAYLOAD: usize = 1472;

/// Which flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FloodKind {
    Udp,
    Icmp,
    Syn,
}

impl FromStr for FloodKind {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "udp" => Ok(FloodKind::Udp),
            "icmp" => Ok(FloodKind::Icmp),
            "syn" => Ok(FloodKind::Syn),
            _ => Err(LabError::BadFlood(format!(
                "unknown flood kind `{s}`: udp, icmp or syn"
            ))),
        }
    }
}

/// What to send.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FloodSpec {
    pub kind: FloodKind,
    pub target: Ipv4Addr,
    /// Destination port of UDP and SYN floods; 0 picks a random port per packet.
    pub port: u16,
    /// Packets per second.
    pub rate_pps: u64,
    /// Payload bytes of UDP and ICMP packets (SYNs carry none).
    pub payload: usize,
    pub duration: Duration,
    /// Stop after this many packets even if time remains.
    pub max_packets: u64,
}

/// Why a flood ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodEnd {
    Duration,
    PacketCap,
    Stopped,
}

/// What a flood did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FloodReport {
    pub kind: FloodKind,
    pub target: Ipv4Addr,
    /// Packets handed to the kernel.
    pub sent: u64,
    /// Sends the kernel refused (full queues); not counted in `sent`.
    pub send_errors: u64,
    pub seconds: f64,
    pub ended_by: FloodEnd,
}

/// Accepts `target` only inside [`LAB_RANGE`] and, when `allowed` is not empty, inside
/// one of `allowed` (the testbed's link prefixes).
pub fn check_target(target: Ipv4Addr, allowed: &[Ipv4Net]) -> Result<(), LabError> {
    let in_allowed = allowed.is_empty() || allowed.iter().any(|p| p.contains(target));
    if LAB_RANGE.contains(target) && in_allowed {
        return Ok(());
    }
    let mut ranges: Vec<String> = allowed
        .iter()
        .filter(|p| LAB_RANGE.covers(p))
        .map(|p| p.to_string())
        .collect();
    if ranges.is_empty() {
        ranges.push(LAB_RANGE.to_string());
    }
    Err(LabError::OutsideTestbed {
        addr: target,
        allowed: ranges.join(", "),
    })
}

impl FloodSpec {
    /// Checks the bounds; `allowed` as for [`check_target`].
    pub fn validate(&self, allowed: &[Ipv4Net]) -> Result<(), LabError> {
        check_target(self.target, allowed)?;
        let bad = |m: String| Err(LabError::BadFlood(m));
        if self.rate_pps == 0 || self.rate_pps > HARD_MAX_RATE {
            return bad(format!(
                "rate {} packets/s: must be 1 to {HARD_MAX_RATE}",
                self.rate_pps
            ));
        }
        if self.duration.is_zero() || self.duration > HARD_MAX_DURATION {
            return bad(format!(
                "duration {:?}: must be above 0 and at most {HARD_MAX_DURATION:?}",
                self.duration
            ));
        }
        if self.max_packets == 0 || self.max_packets > HARD_MAX_PACKETS {
            return bad(format!(
                "packet cap {}: must be 1 to {HARD_MAX_PACKETS}",
                self.max_packets
            ));
        }
        if self.payload > MAX_PAYLOAD {
            return bad(format!(
                "payload {} bytes: at most {MAX_PAYLOAD} (one unfragmented packet)",
                self.payload
            ));
        }
        Ok(())
    }
}

enum Sender {
    Udp(UdpSocket, Vec<u8>),
    Icmp(Socket, Vec<u8>, u16),
    Syn(Socket, Ipv4Addr),
}

fn open(spec: &FloodSpec) -> Result<Sender, LabError> {
    let what = |k: &str| format!("opening the {k} flood socket towards {}", spec.target);
    Ok(match spec.kind {
        FloodKind::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::io(what("UDP"), e))?;
            s.set_nonblocking(true)
                .map_err(|e| LabError::io(what("UDP"), e))?;
            Sender::Udp(s, vec![0x55; spec.payload])
        }
        FloodKind::Icmp => {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
                .map_err(|e| LabError::io(what("ICMP (raw, root needed)"), e))?;
            s.set_nonblocking(true)
                .map_err(|e| LabError::io(what("ICMP"), e))?;
            Sender::Icmp(s, vec![0x55; spec.payload], rand::random())
        }
        FloodKind::Syn => {
            // The source address the kernel would pick, for the TCP checksum.
            let probe = UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::io(what("SYN"), e))?;
            probe
                .connect((spec.target, 9))
                .map_err(|e| LabError::io(format!("no route to {}", spec.target), e))?;
            let src = match probe.local_addr() {
                Ok(SocketAddr::V4(a)) => *a.ip(),
                _ => {
                    return Err(LabError::BadFlood(format!(
                        "no IPv4 source address towards {}",
                        spec.target
                    )))
                }
            };
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
                .map_err(|e| LabError::io(what("SYN (raw, root needed)"), e))?;
            s.set_nonblocking(true)
                .map_err(|e| LabError::io(what("SYN"), e))?;
            Sender::Syn(s, src)
        }
    })
}

fn port(p: u16) -> u16 {
    if p == 0 {
        rand::random::<u16>().max(1)
    } else {
        p
    }
}

fn send_one(s: &mut Sender, spec: &FloodSpec, n: u64) -> std::io::Result<()> {
    match s {
        Sender::Udp(sock, payload) => sock
            .send_to(payload, (spec.target, port(spec.port)))
            .map(|_| ()),
        Sender::Icmp(sock, payload, id) => {
            let hdr = Icmpv4Header::with_checksum(
                Icmpv4Type::EchoRequest(IcmpEchoHeader {
                    id: *id,
                    seq: n as u16,
                }),
                payload,
            );
            let mut pkt = hdr.to_bytes().to_vec();
            pkt.extend_from_slice(payload);
            let to: SocketAddr = SocketAddrV4::new(spec.target, 0).into();
            sock.send_to(&pkt, &to.into()).map(|_| ())
        }
        Sender::Syn(sock, src) => {
            let mut tcp = TcpHeader::new(
                rand::random::<u16>().max(1024),
                port(spec.port),
                rand::random(),
                64240,
            );
            tcp.syn = true;
            tcp.checksum = tcp
                .calc_checksum_ipv4_raw(src.octets(), spec.target.octets(), &[])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let pkt = tcp.to_bytes();
            let to: SocketAddr = SocketAddrV4::new(spec.target, 0).into();
            sock.send_to(&pkt, &to.into()).map(|_| ())
        }
    }
}

/// Runs the flood on the calling thread (whose namespace it sends from) until its
/// duration passes, its packet cap is reached or `stop` is set.
pub fn run(
    spec: &FloodSpec,
    allowed: &[Ipv4Net],
    stop: Option<&AtomicBool>,
) -> Result<FloodReport, LabError> {
    spec.validate(allowed)?;
    if crate::topology::current_lab_netns()
        .map_err(|e| LabError::io("checking the network namespace", e))?
        .is_none()
    {
        return Err(LabError::NotInLabNetns);
    }
    let mut sender = open(spec)?;
    let cap = spec.max_packets.min(HARD_MAX_PACKETS);
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let ended_by = loop {
        let elapsed = start.elapsed();
        if elapsed >= spec.duration {
            break FloodEnd::Duration;
        }
        if sent >= cap {
            break FloodEnd::PacketCap;
        }
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break FloodEnd::Stopped;
        }
        // Packets due so far at the set rate; a slow host sends fewer, never a burst
        // above the rate beyond one tick's worth.
        let due = ((elapsed.as_secs_f64() * spec.rate_pps as f64) as u64 + 1).min(cap);
        let batch = due.saturating_sub(sent + errors).min(4096);
        if batch == 0 {
            let next = Duration::from_secs_f64(1.0 / spec.rate_pps as f64);
            std::thread::sleep(next.clamp(Duration::from_micros(50), Duration::from_millis(5)));
            continue;
        }
        for _ in 0..batch {
            match send_one(&mut sender, spec, sent) {
                Ok(()) => sent += 1,
                // A full queue is part of flooding: count it and keep the pace.
                Err(_) => errors += 1,
            }
            if sent >= cap {
                break;
            }
        }
    };
    Ok(FloodReport {
        kind: spec.kind,
        target: spec.target,
        sent,
        send_errors: errors,
        seconds: start.elapsed().as_secs_f64(),
        ended_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: Ipv4Addr) -> FloodSpec {
        FloodSpec {
            kind: FloodKind::Udp,
            target,
            port: 9,
            rate_pps: 100,
            payload: 100,
            duration: Duration::from_secs(1),
            max_packets: 10,
        }
    }

    #[test]
    fn refuses_addresses_outside_the_testbed() {
        let lab: Vec<Ipv4Net> = vec!["198.18.1.0/24".parse().unwrap()];
        for outside in [
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(198, 20, 0, 1),
        ] {
            let e = spec(outside).validate(&[]).unwrap_err();
            assert!(
                matches!(e, LabError::OutsideTestbed { .. }),
                "{outside}: {e}"
            );
            assert!(run(&spec(outside), &lab, None).is_err());
        }
        // Inside the lab range but not in this testbed's prefixes.
        let e = spec(Ipv4Addr::new(198, 18, 2, 2))
            .validate(&lab)
            .unwrap_err();
        assert!(matches!(e, LabError::OutsideTestbed { .. }), "{e}");
        spec(Ipv4Addr::new(198, 18, 1, 2)).validate(&lab).unwrap();
    }

    #[test]
    fn refuses_unbounded_parameters() {
        let ok = spec(Ipv4Addr::new(198, 18, 1, 2));
        ok.validate(&[]).unwrap();
        for bad in [
            FloodSpec {
                rate_pps: 0,
                ..ok.clone()
            },
            FloodSpec {
                rate_pps: HARD_MAX_RATE + 1,
                ..ok.clone()
            },
            FloodSpec {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            FloodSpec {
                duration: HARD_MAX_DURATION + Duration::from_secs(1),
                ..ok.clone()
            },
            FloodSpec {
                max_packets: 0,
                ..ok.clone()
            },
            FloodSpec {
                max_packets: HARD_MAX_PACKETS + 1,
                ..ok.clone()
            },
            FloodSpec {
                payload: MAX_PAYLOAD + 1,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate(&[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_the_hosts_own_namespace() {
        // Unit tests run outside any lab namespace: a valid lab target is still refused.
        assert_eq!(crate::topology::current_lab_netns().unwrap(), None);
        let e = run(&spec(Ipv4Addr::new(198, 18, 1, 2)), &[], None).unwrap_err();
        assert!(matches!(e, LabError::NotInLabNetns), "{e}");
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("syn".parse::<FloodKind>().unwrap(), FloodKind::Syn);
        assert!("tcp".parse::<FloodKind>().is_err());
    }
}
