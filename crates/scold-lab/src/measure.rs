//! Measurement tools: ICMP echo round-trip time, timed HTTP and bulk TCP downloads, and
//! the statistics the tables use.
//!
//! Built in rather than `ping` and `curl`: nothing to install, the timing covers exactly
//! connect-to-last-byte, a lost echo or a stalled transfer is a typed outcome instead of
//! text to parse, and the same functions run both in a `scold lab` sub-process and on a
//! test's namespace thread. Each function opens its sockets on the calling thread, so
//! the caller's network namespace decides where the measurement runs from.

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4HeaderSlice};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::LabError;

/// Payload bytes every download of this process received so far (the lab's clients:
/// their downloads run on threads of this process); the run's timeline samples it.
pub static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn received(n: usize) {
    RECEIVED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// A finished download.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transfer {
    /// Payload bytes received.
    pub bytes: u64,
    /// From the start of the TCP connect to the last byte.
    pub seconds: f64,
    /// The TCP connect alone.
    pub connect_seconds: f64,
}

fn remaining(deadline: Instant, what: &str, timeout: Duration) -> Result<Duration, LabError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(LabError::Timeout {
            what: what.to_string(),
            secs: timeout.as_secs_f64(),
        });
    }
    Ok(deadline - now)
}

/// A socket confined to `device` (SO_BINDTODEVICE): it sends only out of that device
/// and receives only what arrives on it.
fn bound_socket(
    domain: Domain,
    ty: Type,
    proto: Protocol,
    device: &str,
) -> Result<Socket, LabError> {
    let s = Socket::new(domain, ty, Some(proto))
        .map_err(|e| LabError::io(format!("opening a socket for {device}"), e))?;
    s.bind_device(Some(device.as_bytes()))
        .map_err(|e| LabError::io(format!("binding a socket to device {device}"), e))?;
    Ok(s)
}

fn connect(
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
    device: Option<&str>,
) -> Result<TcpStream, LabError> {
    let what = format!("connecting to {addr}");
    let left = remaining(deadline, &what, timeout)?;
    let timed_out = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            LabError::Timeout {
                what: what.clone(),
                secs: timeout.as_secs_f64(),
            }
        } else {
            LabError::io(what.clone(), e)
        }
    };
    let s = match device {
        None => TcpStream::connect_timeout(&addr, left).map_err(timed_out)?,
        Some(dev) => {
            let s = bound_socket(Domain::for_address(addr), Type::STREAM, Protocol::TCP, dev)?;
            s.connect_timeout(&addr.into(), left).map_err(timed_out)?;
            TcpStream::from(s)
        }
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Reads to end of stream, giving up at `deadline`; returns the byte count.
fn drain(
    r: &mut impl Read,
    sock: &TcpStream,
    deadline: Instant,
    what: &str,
    timeout: Duration,
    limit: u64,
) -> Result<u64, LabError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let left = remaining(deadline, what, timeout)?;
        sock.set_read_timeout(Some(left))
            .map_err(|e| LabError::io(what.to_string(), e))?;
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                received(n);
                total += n as u64;
                if total > limit {
                    return Err(LabError::Protocol {
                        peer: what.to_string(),
                        reason: format!("sent more than the {limit} bytes asked for"),
                    });
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LabError::Timeout {
                    what: format!("{what} ({total} bytes received)"),
                    secs: timeout.as_secs_f64(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LabError::io(what.to_string(), e)),
        }
    }
}

/// A bulk download asked for: the connection, and when it started.
struct BulkRequest {
    start: Instant,
    deadline: Instant,
    what: String,
    stream: TcpStream,
    connect_seconds: f64,
}

/// Connects to the bulk service at `addr` (through `device` when given) and asks for
/// `size` bytes, within `timeout`.
fn request_bulk(
    addr: SocketAddr,
    size: u64,
    timeout: Duration,
    device: Option<&str>,
) -> Result<BulkRequest, LabError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let what = format!("bulk download of {size} bytes from {addr}");
    let mut stream = connect(addr, deadline, timeout, device)?;
    let connect_seconds = start.elapsed().as_secs_f64();
    stream
        .write_all(crate::serve::bulk_request(size).as_bytes())
        .map_err(|e| LabError::io(what.clone(), e))?;
    Ok(BulkRequest {
        start,
        deadline,
        what,
        stream,
        connect_seconds,
    })
}

/// Downloads `size` bytes from the bulk service at `addr` (see [`crate::serve`]).
pub fn fetch_bulk(addr: SocketAddr, size: u64, timeout: Duration) -> Result<Transfer, LabError> {
    fetch_bulk_via(addr, size, timeout, None)
}

/// [`fetch_bulk`] on a socket confined to `device` when given: only a download that
/// went out and came back through that device succeeds.
pub fn fetch_bulk_via(
    addr: SocketAddr,
    size: u64,
    timeout: Duration,
    device: Option<&str>,
) -> Result<Transfer, LabError> {
    let BulkRequest {
        start,
        deadline,
        what,
        stream: s,
        connect_seconds,
    } = request_bulk(addr, size, timeout, device)?;
    let mut r = s.try_clone().map_err(|e| LabError::io(what.clone(), e))?;
    let bytes = drain(&mut r, &s, deadline, &what, timeout, size)?;
    let seconds = start.elapsed().as_secs_f64();
    if bytes != size {
        return Err(LabError::Protocol {
            peer: addr.to_string(),
            reason: format!("bulk service sent {bytes} bytes of {size}"),
        });
    }
    Ok(Transfer {
        bytes,
        seconds,
        connect_seconds,
    })
}

/// A bulk download whose bytes were checked.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckedTransfer {
    pub transfer: Transfer,
    /// FNV-1a (64 bits) of the bytes received, and of the bytes the service sends.
    pub digest: u64,
    pub expected_digest: u64,
    /// The longest wait for the next bytes, from the request on.
    pub longest_stall: f64,
}

impl CheckedTransfer {
    /// Every byte arrived, and they are the service's.
    pub fn intact(&self, size: u64) -> bool {
        self.transfer.bytes == size && self.digest == self.expected_digest
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// [`fetch_bulk_via`] that also checks each byte's content (a digest of what arrived
/// against one of what the service sends, [`crate::serve::pattern_byte`]) and records
/// the longest pause in the stream: for a download that must survive a proxy failover
/// intact. A short or corrupted download is returned, not an error, so the caller can
/// say what was wrong; only a failure to connect or a timeout is an error.
pub fn fetch_bulk_checked_via(
    addr: SocketAddr,
    size: u64,
    timeout: Duration,
    device: Option<&str>,
) -> Result<CheckedTransfer, LabError> {
    let BulkRequest {
        start,
        deadline,
        what,
        stream: mut s,
        connect_seconds,
    } = request_bulk(addr, size, timeout, device)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut total, mut digest, mut expected) = (0u64, FNV_OFFSET, FNV_OFFSET);
    let mut last = Instant::now();
    let mut longest = 0f64;
    loop {
        let left = remaining(deadline, &what, timeout)?;
        s.set_read_timeout(Some(left))
            .map_err(|e| LabError::io(what.clone(), e))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received(n);
                longest = longest.max(last.elapsed().as_secs_f64());
                last = Instant::now();
                digest = fnv(digest, &buf[..n]);
                total += n as u64;
                if total > size {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LabError::Timeout {
                    what: format!("{what} ({total} bytes received)"),
                    secs: timeout.as_secs_f64(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LabError::io(format!("{what} ({total} bytes received)"), e)),
        }
    }
    for off in 0..size {
        expected = fnv(expected, &[crate::serve::pattern_byte(off)]);
    }
    Ok(CheckedTransfer {
        transfer: Transfer {
            bytes: total,
            seconds: start.elapsed().as_secs_f64(),
            connect_seconds,
        },
        digest,
        expected_digest: expected,
        longest_stall: longest,
    })
}

/// `GET path` over HTTP/1.1 from `addr` with `Host: host`; the body must be exactly as
/// long as its Content-Length.
pub fn fetch_http(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<Transfer, LabError> {
    fetch_http_via(addr, host, path, timeout, None)
}

/// [`fetch_http`] on a socket confined to `device` when given.
pub fn fetch_http_via(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    device: Option<&str>,
) -> Result<Transfer, LabError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let what = format!("HTTP GET {path} from {addr}");
    let mut s = connect(addr, deadline, timeout, device)?;
    let connect_seconds = start.elapsed().as_secs_f64();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scold-lab\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| LabError::io(what.clone(), e))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| LabError::io(what.clone(), e))?);
    let bad = |reason: String| LabError::Protocol {
        peer: addr.to_string(),
        reason,
    };
    let mut line = String::new();
    let read_line = |r: &mut BufReader<TcpStream>, line: &mut String| {
        line.clear();
        let left = remaining(deadline, &what, timeout)?;
        s.set_read_timeout(Some(left))
            .map_err(|e| LabError::io(what.clone(), e))?;
        match r.by_ref().take(8192).read_line(line) {
            Ok(0) => Err(bad("connection closed inside the response header".into())),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(LabError::Timeout {
                    what: what.clone(),
                    secs: timeout.as_secs_f64(),
                })
            }
            Err(e) => Err(LabError::io(what.clone(), e)),
        }
    };
    read_line(&mut r, &mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            bad(format!(
                "not an HTTP/1.x status line: {:?}",
                line.trim_end()
            ))
        })?;
    if status != 200 {
        return Err(bad(format!("HTTP status {}", line.trim_end())));
    }
    let mut length: Option<u64> = None;
    for _ in 0..100 {
        read_line(&mut r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| bad(format!("bad Content-Length {:?}", v.trim())))?,
                );
            }
        }
    }
    let length = length.ok_or_else(|| bad("response has no Content-Length".into()))?;
    let bytes = drain(&mut r, &s, deadline, &what, timeout, length)?;
    let seconds = start.elapsed().as_secs_f64();
    if bytes != length {
        return Err(bad(format!(
            "body was {bytes} bytes, Content-Length {length}"
        )));
    }
    Ok(Transfer {
        bytes,
        seconds,
        connect_seconds,
    })
}

/// One ICMP echo: its round-trip time, or `None` when no reply came within the timeout.
pub type Echo = Option<Duration>;

/// Sends `count` ICMP echo requests to `dest`, one after the other, `interval` apart,
/// each waiting at most `timeout` for its reply. Lost echoes are `None`.
pub fn ping_samples(
    dest: Ipv4Addr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<Vec<Echo>, LabError> {
    ping_samples_via(dest, count, interval, timeout, None)
}

/// [`ping_samples`] from a socket confined to `device` when given: an echo counts only
/// if its reply arrived on that device.
pub fn ping_samples_via(
    dest: Ipv4Addr,
    count: u32,
    interval: Duration,
    timeout: Duration,
    device: Option<&str>,
) -> Result<Vec<Echo>, LabError> {
    let sock = match device {
        None => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(|e| LabError::io("opening a raw ICMP socket (root needed)", e))?,
        Some(dev) => bound_socket(Domain::IPV4, Type::RAW, Protocol::ICMPV4, dev)?,
    };
    let to: SocketAddr = SocketAddrV4::new(dest, 0).into();
    // Raw ICMP sockets see every echo reply arriving in the namespace: a random
    // identifier tells ours from another prober's.
    let id: u16 = rand::random();
    let mut out = Vec::with_capacity(count as usize);
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    for seq in 0..count {
        if seq > 0 {
            std::thread::sleep(interval);
        }
        let seq16 = seq as u16;
        let payload = *b"scold-lab-echo-probe-0123456789abcdef0123456789abcdef";
        let hdr = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq: seq16 }),
            &payload,
        );
        let mut pkt = hdr.to_bytes().to_vec();
        pkt.extend_from_slice(&payload);
        let sent = Instant::now();
        sock.send_to(&pkt, &to.into())
            .map_err(|e| LabError::io(format!("sending an ICMP echo to {dest}"), e))?;
        let deadline = sent + timeout;
        let mut got = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))
                .map_err(|e| LabError::io("setting the ICMP socket timeout", e))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LabError::io(format!("receiving from {dest}"), e)),
            };
            // SAFETY: recv initialised the first `n` bytes of `buf`.
            let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
            if is_reply(data, dest, id, seq16) {
                got = Some(sent.elapsed());
                break;
            }
        }
        out.push(got);
    }
    Ok(out)
}

/// Whether a raw-socket datagram (IPv4 header + ICMP) is our echo reply.
fn is_reply(data: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Ok(ip) = Ipv4HeaderSlice::from_slice(data) else {
        return false;
    };
    if ip.source_addr() != from {
        return false;
    }
    let Some(icmp) = data.get(ip.slice().len()..) else {
        return false;
    };
    match Icmpv4Slice::from_slice(icmp).map(|s| s.icmp_type()) {
        Ok(Icmpv4Type::EchoReply(e)) => e.id == id && e.seq == seq,
        _ => false,
    }
}

/// `count` echoes 100 ms apart; the round-trip times of those answered, or a time-out
/// error when none was.
pub fn ping(dest: Ipv4Addr, count: u32, timeout: Duration) -> Result<Vec<Duration>, LabError> {
    let all = ping_samples(dest, count, Duration::from_millis(100), timeout)?;
    let got: Vec<Duration> = all.into_iter().flatten().collect();
    if got.is_empty() {
        return Err(LabError::Timeout {
            what: format!("ICMP echo to {dest}"),
            secs: timeout.as_secs_f64(),
        });
    }
    Ok(got)
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// The p-th percentile (0-100) by linear interpolation between closest ranks; NaNs
/// are ignored; `None` when nothing is left.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = p / 100.0 * (s.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(s[lo] + (s[hi] - s[lo]) * (rank - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), Some(5.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 90.0), Some(4.6));
        assert_eq!(percentile(&[1.0], 101.0), None);
    }

    #[test]
    fn echo_reply_matching() {
        let payload = [1u8, 2, 3];
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoReply(IcmpEchoHeader { id: 7, seq: 3 }),
            &payload,
        );
        let mut body = icmp.to_bytes().to_vec();
        body.extend_from_slice(&payload);
        let from = Ipv4Addr::new(198, 18, 1, 2);
        let ip = etherparse::Ipv4Header::new(
            body.len() as u16,
            64,
            etherparse::IpNumber::ICMP,
            from.octets(),
            [198, 18, 1, 1],
        )
        .unwrap();
        let mut pkt = ip.to_bytes().to_vec();
        pkt.extend_from_slice(&body);
        assert!(is_reply(&pkt, from, 7, 3));
        assert!(!is_reply(&pkt, from, 8, 3), "other identifier");
        assert!(!is_reply(&pkt, from, 7, 4), "other sequence");
        assert!(
            !is_reply(&pkt, Ipv4Addr::new(198, 18, 9, 9), 7, 3),
            "other source"
        );
        assert!(!is_reply(&pkt[..10], from, 7, 3), "truncated");
        assert!(!is_reply(&[], from, 7, 3));
    }

    #[test]
    fn unreachable_download_is_an_error_not_a_hang() {
        // Nothing listens on this loopback port (bound then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
        assert!(fetch_bulk(addr, 10, Duration::from_secs(2)).is_err());
        assert!(fetch_http(addr, "x", "/1k", Duration::from_secs(2)).is_err());
    }
}
