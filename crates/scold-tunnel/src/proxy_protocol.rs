//! PROXY protocol version 2 header (HAProxy's specification, section 2.2): sent first on
//! a relayed TCP connection so the target learns the client's address. Sans-IO.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Largest header [`encode`] writes (IPv6 addresses).
pub const MAX_LEN: usize = 16 + 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// Writes a `PROXY` command header for a connection from `src` to `dst` into `out` and
/// returns its length. Mixed families are mapped to IPv6 (IPv4-mapped addresses).
pub fn encode(
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    out: &mut [u8; MAX_LEN],
) -> usize {
    out[..12].copy_from_slice(&SIGNATURE);
    out[12] = 0x21; // version 2, command PROXY
    let proto = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = 0x10 | proto;
            out[14..16].copy_from_slice(&12u16.to_be_bytes());
            out[16..20].copy_from_slice(&s.octets());
            out[20..24].copy_from_slice(&d.octets());
            out[24..26].copy_from_slice(&src.port().to_be_bytes());
            out[26..28].copy_from_slice(&dst.port().to_be_bytes());
            28
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out[13] = 0x20 | proto;
            out[14..16].copy_from_slice(&36u16.to_be_bytes());
            out[16..32].copy_from_slice(&v6(s).octets());
            out[32..48].copy_from_slice(&v6(d).octets());
            out[48..50].copy_from_slice(&src.port().to_be_bytes());
            out[50..52].copy_from_slice(&dst.port().to_be_bytes());
            52
        }
    }
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// None for the LOCAL command (health checks).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub transport: Option<Transport>,
    /// Bytes the header takes, including TLVs.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("need more bytes")]
    Incomplete,
    #[error("not a PROXY protocol v2 header")]
    BadSignature,
    #[error("unsupported version or command byte {0:#04x}")]
    BadVersion(u8),
    #[error("address block shorter than its family needs")]
    ShortAddresses,
}

/// Parses a header at the start of `b` (the receiving side; used by tests and tools).
pub fn parse(b: &[u8]) -> Result<Header, ParseError> {
    if b.len() < 16 {
        return Err(if SIGNATURE.starts_with(&b[..b.len().min(12)]) {
            ParseError::Incomplete
        } else {
            ParseError::BadSignature
        });
    }
    if b[..12] != SIGNATURE {
        return Err(ParseError::BadSignature);
    }
    let ver_cmd = b[12];
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ParseError::BadVersion(ver_cmd));
    }
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    if b.len() < 16 + len {
        return Err(ParseError::Incomplete);
    }
    let body = &b[16..16 + len];
    let transport = match b[13] & 0x0f {
        1 => Some(Transport::Stream),
        2 => Some(Transport::Datagram),
        _ => None,
    };
    let addresses = if ver_cmd & 0x0f == 0 {
        None
    } else {
        match b[13] >> 4 {
            1 => {
                if body.len() < 12 {
                    return Err(ParseError::ShortAddresses);
                }
                let s: [u8; 4] = body[0..4].try_into().expect("4 bytes");
                let d: [u8; 4] = body[4..8].try_into().expect("4 bytes");
                Some((
                    SocketAddr::new(s.into(), u16::from_be_bytes([body[8], body[9]])),
                    SocketAddr::new(d.into(), u16::from_be_bytes([body[10], body[11]])),
                ))
            }
            2 => {
                if body.len() < 36 {
                    return Err(ParseError::ShortAddresses);
                }
                let s: [u8; 16] = body[0..16].try_into().expect("16 bytes");
                let d: [u8; 16] = body[16..32].try_into().expect("16 bytes");
                Some((
                    SocketAddr::new(s.into(), u16::from_be_bytes([body[32], body[33]])),
                    SocketAddr::new(d.into(), u16::from_be_bytes([body[34], body[35]])),
                ))
            }
            _ => None,
        }
    };
    Ok(Header {
        addresses,
        transport,
        len: 16 + len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_header_matches_the_specification() {
        let mut out = [0u8; MAX_LEN];
        let n = encode(
            "198.51.100.7:40000".parse().unwrap(),
            "192.0.2.10:80".parse().unwrap(),
            Transport::Stream,
            &mut out,
        );
        // Bytes as in the specification's example layout.
        let expect: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x0C, 198, 51, 100, 7, 192, 0, 2, 10, 0x9c, 0x40, 0x00, 0x50,
        ];
        assert_eq!(&out[..n], &expect[..]);
        let h = parse(&out[..n]).unwrap();
        assert_eq!(h.len, 28);
        assert_eq!(
            h.addresses,
            Some((
                "198.51.100.7:40000".parse().unwrap(),
                "192.0.2.10:80".parse().unwrap()
            ))
        );
    }

    #[test]
    fn v6_round_trip() {
        let mut out = [0u8; MAX_LEN];
        let s: SocketAddr = "[2001:db8::7]:1234".parse().unwrap();
        let d: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let n = encode(s, d, Transport::Stream, &mut out);
        assert_eq!(n, 52);
        assert_eq!(parse(&out[..n]).unwrap().addresses, Some((s, d)));
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ParseError::BadSignature)
        );
        assert_eq!(parse(&SIGNATURE[..5]), Err(ParseError::Incomplete));
        let mut out = [0u8; MAX_LEN];
        let n = encode(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            Transport::Stream,
            &mut out,
        );
        assert_eq!(parse(&out[..n - 1]), Err(ParseError::Incomplete));
        let mut bad = out;
        bad[12] = 0x31;
        assert_eq!(parse(&bad[..n]), Err(ParseError::BadVersion(0x31)));
        let mut short = out;
        short[15] = 4;
        assert_eq!(parse(&short[..20]), Err(ParseError::ShortAddresses));
    }
}
