//! The few facts the detector and the firewall need from one IP packet.
//!
//! Parsing goes through etherparse's checked slices and allocates nothing, so it
//! can run on every relayed packet.

use std::net::IpAddr;

use etherparse::{IpNumber, IpSlice, LaxIpSlice};
use serde::{Deserialize, Serialize};

/// Transport class used for rates and flood classification. ICMPv6 counts as ICMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl Proto {
    fn from_ip_number(n: IpNumber) -> Self {
        match n {
            IpNumber::TCP => Proto::Tcp,
            IpNumber::UDP => Proto::Udp,
            IpNumber::ICMP | IpNumber::IPV6_ICMP => Proto::Icmp,
            _ => Proto::Other,
        }
    }
}

/// What one packet tells us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// A TCP segment with SYN set and ACK clear: a connection attempt.
    pub syn: bool,
    /// Length of the IP packet in bytes (from the header when it is sane).
    pub len: usize,
}

/// Why a packet could not be classified.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("malformed IP packet ({len} bytes): {source}")]
    Ip {
        len: usize,
        #[source]
        source: etherparse::err::ip::SliceError,
    },
    #[error("truncated IP packet ({len} bytes): {source}")]
    Lax {
        len: usize,
        #[source]
        source: etherparse::err::ip::LaxHeaderSliceError,
    },
}

/// True when the TCP header in `payload` is a bare SYN. Needs only the flags byte
/// (offset 13), so truncated samples still classify.
fn bare_syn(payload: &[u8]) -> bool {
    match payload.get(13) {
        Some(flags) => flags & 0x02 != 0 && flags & 0x10 == 0,
        None => false,
    }
}

/// Strict classification of a complete IPv4 or IPv6 packet, as the proxy relays it.
/// A packet whose lengths do not add up is an error (the firewall drops it).
pub fn classify(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let ip = IpSlice::from_slice(packet).map_err(|source| PacketError::Ip {
        len: packet.len(),
        source,
    })?;
    let payload = ip.payload();
    let proto = Proto::from_ip_number(payload.ip_number);
    let first_fragment = match &ip {
        IpSlice::Ipv4(v4) => v4.header().fragments_offset().value() == 0,
        IpSlice::Ipv6(_) => !payload.fragmented,
    };
    let syn = proto == Proto::Tcp && first_fragment && bare_syn(payload.payload);
    Ok(PacketInfo {
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        proto,
        syn,
        len: packet.len(),
    })
}

/// Lenient classification of a possibly truncated packet (a sampled capture cut at
/// a snap length). The length is taken from the IP header where it is present.
pub fn classify_lax(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let (ip, _ext_err) = LaxIpSlice::from_slice(packet).map_err(|source| PacketError::Lax {
        len: packet.len(),
        source,
    })?;
    let payload = ip.payload();
    let proto = Proto::from_ip_number(payload.ip_number);
    let (first_fragment, len) = match &ip {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                h.fragments_offset().value() == 0,
                usize::from(h.total_len()),
            )
        }
        LaxIpSlice::Ipv6(v6) => (
            !payload.fragmented,
            usize::from(v6.header().payload_length()) + 40,
        ),
    };
    let syn = proto == Proto::Tcp && first_fragment && bare_syn(payload.payload);
    Ok(PacketInfo {
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        proto,
        syn,
        len: len.max(packet.len()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    pub fn udp4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64).udp(4000, 53);
        let payload = vec![0u8; payload_len];
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, &payload).unwrap();
        out
    }

    pub fn syn4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64)
            .tcp(40000, 80, 1, 64240)
            .syn();
        let mut out = Vec::with_capacity(b.size(0));
        b.write(&mut out, &[]).unwrap();
        out
    }

    pub fn ack4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64)
            .tcp(40000, 80, 1, 64240)
            .ack(7);
        let payload = vec![0u8; payload_len];
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, &payload).unwrap();
        out
    }

    pub fn icmp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64).icmpv4_echo_request(1, 1);
        let payload = [0u8; 56];
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, &payload).unwrap();
        out
    }

    pub fn udp6(src: [u8; 16], dst: [u8; 16], payload_len: usize) -> Vec<u8> {
        let b = PacketBuilder::ipv6(src, dst, 64).udp(4000, 53);
        let payload = vec![0u8; payload_len];
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, &payload).unwrap();
        out
    }

    #[test]
    fn classifies_protocols_and_syn() {
        let p = classify(&udp4([10, 0, 0, 1], [10, 0, 0, 2], 100)).unwrap();
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(p.len, 20 + 8 + 100);
        assert!(!p.syn);
        let p = classify(&syn4([10, 0, 0, 1], [10, 0, 0, 2])).unwrap();
        assert_eq!(p.proto, Proto::Tcp);
        assert!(p.syn);
        let p = classify(&ack4([10, 0, 0, 1], [10, 0, 0, 2], 10)).unwrap();
        assert!(!p.syn);
        let p = classify(&icmp4([10, 0, 0, 1], [10, 0, 0, 2])).unwrap();
        assert_eq!(p.proto, Proto::Icmp);
        let p = classify(&udp6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0; 16],
            3,
        ))
        .unwrap();
        assert_eq!(p.proto, Proto::Udp);
        assert!(p.src.is_ipv6());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(classify(&[]).is_err());
        assert!(classify(&[0x45]).is_err());
        assert!(classify(&[0x60; 10]).is_err());
        assert!(classify(&[0x15; 40]).is_err()); // version 1
        let mut p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 100);
        p.truncate(40); // total length says 128
        assert!(classify(&p).is_err());
        // The lenient parser accepts the cut capture and keeps the header's length.
        let lax = classify_lax(&p).unwrap();
        assert_eq!(lax.len, 128);
        assert_eq!(lax.proto, Proto::Udp);
    }

    #[test]
    fn truncated_syn_still_classifies_leniently() {
        let mut p = syn4([10, 0, 0, 1], [10, 0, 0, 2]);
        p.truncate(20 + 14);
        let lax = classify_lax(&p).unwrap();
        assert!(lax.syn);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = classify(&bytes);
            let _ = classify_lax(&bytes);
        }
    }
}
