//! ICMP "fragmentation needed" (IPv4, type 3 code 4) and ICMPv6 "packet too big" for
//! inner packets that do not fit the next tunnel, sans-IO.
//!
//! Why: a relay that silently drops a packet too large for the next hop black-holes
//! TCP path MTU discovery (RFC 1191, RFC 8201); the sender keeps retransmitting a
//! segment that never arrives. The engine answers instead, the way a router on the
//! path would, and the sender's kernel lowers its path MTU.
//!
//! The answer's source is the original packet's destination: the client's fib policy
//! and its kernel's reverse-path check accept packets from the target through the
//! tunnel, and an ICMP error is matched to its socket by the quoted packet, not by who
//! sent it. No answer is made to an ICMP error, a non-first fragment, an IPv4 packet
//! without DF (the sender lets it be fragmented) or anything unparseable.

/// Largest answer: IPv6's minimum MTU, as RFC 4443 asks; IPv4 answers stay within 576.
pub const MAX_ANSWER: usize = 1280;
const V4_ANSWER_MAX: usize = 576;
const TTL: u8 = 64;

/// Internet checksum (RFC 1071) over `data`, starting from `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes into `out` the ICMP answer telling the sender of `pkt` that the next hop
/// carries at most `mtu` bytes; returns its length, or `None` when no answer is due.
/// `out` should hold [`MAX_ANSWER`] bytes.
pub fn too_big(pkt: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 => too_big_v4(pkt, mtu, out),
        6 => too_big_v6(pkt, mtu, out),
        _ => None,
    }
}

fn too_big_v4(pkt: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    let df = frag & 0x4000 != 0;
    let offset = frag & 0x1fff;
    if !df || offset != 0 {
        return None;
    }
    if pkt[9] == 1 {
        // Never answer an ICMP error with an ICMP error (RFC 1812 4.3.2.7).
        let t = *pkt.get(ihl)?;
        if matches!(t, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    let (src, dst) = (&pkt[12..16], &pkt[16..20]);
    if dst[0] >= 224 || src[0] >= 224 || src == [0, 0, 0, 0] {
        // Multicast, broadcast or unspecified: no error messages about those.
        return None;
    }
    let quote = pkt.len().min(V4_ANSWER_MAX - 28);
    let total = 28 + quote;
    if out.len() < total {
        return None;
    }
    let o = &mut out[..total];
    // Version/IHL, TOS (internetwork control, as routers send ICMP), total length,
    // identification, flags/fragment offset, TTL, protocol ICMP, checksum (below).
    o[..12].copy_from_slice(&[
        0x45,
        0xc0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        TTL,
        1,
        0,
        0,
    ]);
    o[12..16].copy_from_slice(dst);
    o[16..20].copy_from_slice(src);
    let c = fold(sum16(0, &o[..20]));
    o[10..12].copy_from_slice(&c.to_be_bytes());
    o[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
    o[26..28].copy_from_slice(&mtu.to_be_bytes());
    o[28..].copy_from_slice(&pkt[..quote]);
    let c = fold(sum16(0, &o[20..]));
    o[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn too_big_v6(pkt: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if pkt.len() < 40 {
        return None;
    }
    if pkt[6] == 58 && pkt.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let (src, dst) = (&pkt[8..24], &pkt[24..40]);
    if dst[0] == 0xff || src.iter().all(|b| *b == 0) {
        return None;
    }
    let quote = pkt.len().min(MAX_ANSWER - 48);
    let plen = 8 + quote;
    let total = 40 + plen;
    if out.len() < total {
        return None;
    }
    let o = &mut out[..total];
    o[..8].copy_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, 58, TTL]);
    o[8..24].copy_from_slice(dst);
    o[24..40].copy_from_slice(src);
    o[40..48].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    o[44..48].copy_from_slice(&u32::from(mtu).to_be_bytes());
    o[48..].copy_from_slice(&pkt[..quote]);
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut s = sum16(0, &o[8..40]);
    s += plen as u32;
    s += 58;
    let c = fold(sum16(s, &o[40..]));
    o[42..44].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// A token bucket for the answers, so a flood of large packets cannot turn the relay
/// into an ICMP source (RFC 1812 4.3.2.8, RFC 4443 2.4 f).
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl RateLimit {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimit {
            per_sec,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4HeaderSlice,
        Ipv6HeaderSlice, SlicedPacket, TransportSlice,
    };
    use std::time::{Duration, Instant};

    fn v4(df: bool, proto: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 1, 0, 2]);
        p[16..20].copy_from_slice(&[10, 4, 0, 2]);
        let c = fold(sum16(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn v6(next: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(
            &"2001:db8:1::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[24..40].copy_from_slice(
            &"2001:db8:4::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p
    }

    #[test]
    fn ipv4_frag_needed_is_well_formed() {
        let pkt = v4(true, 6, 1472);
        let mut out = [0u8; MAX_ANSWER];
        let n = too_big(&pkt, 1440, &mut out).expect("an answer");
        assert_eq!(n, 576);
        let ip = Ipv4HeaderSlice::from_slice(&out[..n]).unwrap();
        assert_eq!(ip.source(), [10, 4, 0, 2], "from the original destination");
        assert_eq!(ip.destination(), [10, 1, 0, 2]);
        assert_eq!(ip.protocol(), IpNumber::ICMP);
        assert_eq!(
            ip.header_checksum(),
            ip.to_header().calc_header_checksum(),
            "IPv4 header checksum"
        );
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = s.transport else {
            panic!("not ICMP: {s:?}")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1440
            })
        );
        assert_eq!(
            icmp.checksum(),
            icmp.header().icmp_type.calc_checksum(icmp.payload()),
            "ICMP checksum"
        );
        assert_eq!(
            icmp.payload(),
            &pkt[..548],
            "quotes the start of the packet"
        );
    }

    #[test]
    fn ipv6_packet_too_big_is_well_formed() {
        let pkt = v6(6, 1500);
        let mut out = [0u8; MAX_ANSWER];
        let n = too_big(&pkt, 1420, &mut out).expect("an answer");
        assert_eq!(n, MAX_ANSWER, "as much as fits in 1280 bytes");
        let ip = Ipv6HeaderSlice::from_slice(&out[..n]).unwrap();
        assert_eq!(ip.source_addr().to_string(), "2001:db8:4::2");
        assert_eq!(ip.destination_addr().to_string(), "2001:db8:1::2");
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = s.transport else {
            panic!("not ICMPv6: {s:?}")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1420 });
        let want = icmp
            .icmp_type()
            .calc_checksum(ip.source(), ip.destination(), icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), want, "ICMPv6 checksum");
    }

    #[test]
    fn no_answer_where_none_is_due() {
        let mut out = [0u8; MAX_ANSWER];
        // Without DF the sender allows fragmentation: the engine only drops.
        assert!(too_big(&v4(false, 6, 1472), 1440, &mut out).is_none());
        // A non-first fragment.
        let mut frag = v4(true, 17, 1472);
        frag[7] = 10;
        assert!(too_big(&frag, 1440, &mut out).is_none());
        // An ICMP error (type 3) is never answered; an echo request is.
        let mut err = v4(true, 1, 1472);
        err[20] = 3;
        assert!(too_big(&err, 1440, &mut out).is_none());
        err[20] = 8;
        assert!(too_big(&err, 1440, &mut out).is_some());
        let mut e6 = v6(58, 1400);
        e6[40] = 1;
        assert!(too_big(&e6, 1280, &mut out).is_none());
        e6[40] = 128;
        assert!(too_big(&e6, 1280, &mut out).is_some());
        // Multicast destinations.
        let mut mc = v4(true, 17, 1472);
        mc[16] = 239;
        assert!(too_big(&mc, 1440, &mut out).is_none());
        // Garbage and truncated headers.
        for bad in [&[][..], &[0x45], &[0x4f; 30], &[0x60; 20], &[0x10; 60]] {
            assert!(too_big(bad, 1440, &mut out).is_none(), "{bad:?}");
        }
        // An output buffer too small is refused, not overrun.
        let mut small = [0u8; 100];
        assert!(too_big(&v4(true, 6, 1472), 1440, &mut small).is_none());
    }

    #[test]
    fn rate_limit_refills() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10.0, 3.0);
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(150)));
        assert!(!r.allow(t0 + Duration::from_millis(150)));
    }
}
