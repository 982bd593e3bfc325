//! One real DNS query over UDP from the calling thread's network namespace, the way a
//! stub resolver asks: the testbed uses it to wait for `scold dns` and `scold resolver`
//! to answer, and to watch for the target's ALT records at the client site's resolver
//! (the moment clients can learn the proxies).
//!
//! Message building and parsing is hickory-proto's; ALT RDATA (RFC 3597 unknown type,
//! 4 or 16 bytes) is read here because the record type is SCOLD's own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::error::LabError;

/// The ALT record type's code (private use; the system's default).
pub const ALT_TYPE: u16 = 65280;

/// What one query returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsAnswer {
    /// The response code as its mnemonic (`NoError`, `NXDomain`, ...).
    pub rcode: String,
    /// A records in the answer section.
    pub a: Vec<Ipv4Addr>,
    /// ALT records in the answer section (malformed ones are skipped).
    pub alt: Vec<IpAddr>,
    /// From sending the query to the answer.
    pub seconds: f64,
}

/// The address in one ALT RDATA: 4 bytes (IPv4) or 16 (IPv6); anything else is `None`.
pub fn alt_address(rdata: &[u8]) -> Option<IpAddr> {
    match rdata.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            rdata[0], rdata[1], rdata[2], rdata[3],
        ))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(rdata);
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn bad(server: SocketAddr, reason: impl Into<String>) -> LabError {
    LabError::Protocol {
        peer: format!("DNS server {server}"),
        reason: reason.into(),
    }
}

/// Asks `server` for `name` of type `rtype` (recursion desired) and waits at most
/// `timeout` for the matching answer.
pub fn query(
    server: SocketAddr,
    name: &str,
    rtype: u16,
    timeout: Duration,
) -> Result<DnsAnswer, LabError> {
    let qname = Name::from_ascii(name).map_err(|e| LabError::BadSpec(format!("{name:?}: {e}")))?;
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let mut q = Query::query(qname, RecordType::from(rtype));
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    let wire = m
        .to_vec()
        .map_err(|e| bad(server, format!("cannot encode the query: {e}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let what = format!("DNS query for {name} type {rtype} to {server}");
    let sock = UdpSocket::bind(bind).map_err(|e| LabError::io(what.clone(), e))?;
    let start = Instant::now();
    sock.send_to(&wire, server)
        .map_err(|e| LabError::io(what.clone(), e))?;
    let deadline = start + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LabError::Timeout {
                what,
                secs: timeout.as_secs_f64(),
            });
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| LabError::io(what.clone(), e))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LabError::io(what, e)),
        };
        if from != server {
            continue;
        }
        // A datagram that does not parse or is not our answer is ignored, as a stub does.
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if resp.metadata.id != id || resp.metadata.message_type != MessageType::Response {
            continue;
        }
        return Ok(parse_answer(&resp, start.elapsed().as_secs_f64()));
    }
}

fn parse_answer(resp: &Message, seconds: f64) -> DnsAnswer {
    let mut out = DnsAnswer {
        rcode: format!("{:?}", resp.metadata.response_code),
        seconds,
        ..Default::default()
    };
    for r in &resp.answers {
        match &r.data {
            RData::A(a) => out.a.push(a.0),
            RData::Unknown { code, rdata } if u16::from(*code) == ALT_TYPE => {
                if let Some(ip) = alt_address(&rdata.anything) {
                    out.alt.push(ip);
                }
            }
            _ => {}
        }
    }
    out.alt.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_rdata_lengths() {
        assert_eq!(
            alt_address(&[198, 18, 16, 2]),
            Some("198.18.16.2".parse().unwrap())
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(alt_address(&v6.octets()), Some(IpAddr::V6(v6)));
        for bad in [&[][..], &[1, 2, 3], &[1, 2, 3, 4, 5], &[0; 15], &[0; 17]] {
            assert_eq!(alt_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_answers_from_a_server_on_loopback() {
        // A one-shot server that answers with one A and one ALT record, after first
        // sending a datagram with the wrong id (which must be ignored).
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert!(q.metadata.recursion_desired);
            let mut wrong = q.clone();
            wrong.metadata.id = q.metadata.id.wrapping_add(1);
            wrong.metadata.message_type = MessageType::Response;
            server.send_to(&wrong.to_vec().unwrap(), peer).unwrap();
            server.send_to(b"garbage", peer).unwrap();
            let mut r = q.clone();
            r.metadata.message_type = MessageType::Response;
            let name = q.queries[0].name().clone();
            r.answers.push(hickory_proto::rr::Record::from_rdata(
                name.clone(),
                10,
                RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 19, 1, 2))),
            ));
            r.answers.push(hickory_proto::rr::Record::from_rdata(
                name,
                10,
                RData::Unknown {
                    code: RecordType::Unknown(ALT_TYPE),
                    rdata: hickory_proto::rr::rdata::NULL::with(vec![198, 18, 16, 2]),
                },
            ));
            server.send_to(&r.to_vec().unwrap(), peer).unwrap();
        });
        let a = query(addr, "www.target.test.", ALT_TYPE, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(a.rcode, "NoError");
        assert_eq!(a.a, vec![Ipv4Addr::new(198, 19, 1, 2)]);
        assert_eq!(a.alt, vec!["198.18.16.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn silent_server_times_out() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let e = query(addr, "www.target.test.", 1, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, LabError::Timeout { .. }), "{e}");
        drop(server);
    }
}
