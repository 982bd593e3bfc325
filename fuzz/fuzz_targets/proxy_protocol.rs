//! PROXY protocol v2 headers (what a relayed service reads before the client's bytes).
//!
//! Properties: parsing never panics and never claims more bytes than it was given; a
//! header built by `encode` parses back to the same addresses (IPv4-mapped when the
//! families differ) and transport, with the length `encode` returned.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scold_tunnel::proxy_protocol::{encode, parse, Transport, MAX_LEN};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Arbitrary)]
struct Input {
    src: SocketAddr,
    dst: SocketAddr,
    datagram: bool,
    trailing: Vec<u8>,
    raw: Vec<u8>,
}

/// What the header can carry of an address: IP and port (no IPv6 scope or flow label).
fn mapped(a: SocketAddr, v6: bool) -> SocketAddr {
    match (a.ip(), v6) {
        (IpAddr::V4(v4), true) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        (ip, _) => SocketAddr::new(ip, a.port()),
    }
}

fuzz_target!(|input: Input| {
    if let Ok(h) = parse(&input.raw) {
        assert!(
            h.len >= 16 && h.len <= input.raw.len(),
            "{h:?} from {} bytes",
            input.raw.len()
        );
    }

    let transport = if input.datagram {
        Transport::Datagram
    } else {
        Transport::Stream
    };
    let mut buf = [0u8; MAX_LEN];
    let n = encode(input.src, input.dst, transport, &mut buf);
    let mut wire = buf[..n].to_vec();
    wire.extend_from_slice(&input.trailing);
    let h = parse(&wire).unwrap_or_else(|e| panic!("our own header does not parse: {e}"));
    assert_eq!(h.len, n);
    assert_eq!(h.transport, Some(transport));
    let v6 = !(input.src.is_ipv4() && input.dst.is_ipv4());
    assert_eq!(
        h.addresses,
        Some((mapped(input.src, v6), mapped(input.dst, v6))),
        "addresses changed"
    );
    // Any cut of the header is incomplete, never a different header.
    for cut in [0, 1, 11, 12, 15, 16, n - 1] {
        if cut < n {
            assert!(parse(&wire[..cut]).is_err(), "a header cut at {cut} parsed");
        }
    }
});
