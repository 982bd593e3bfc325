//! The admission port's cookie exchange (`scold_proto::cookie`): the bytes a listener
//! reads first (a preamble, or a legacy client's TLS) and the bytes a client reads back
//! (a cookie reply, or TLS). The first input byte picks addresses and a secret for the
//! cookie jar; the rest are the bytes read.
//!
//! Properties:
//! - neither parser claims more bytes than given; a preamble takes 0 bytes exactly when
//!   it is a legacy client's (its first byte is not the magic's), else 6 or 22;
//! - what parses re-encodes to exactly the bytes it took (one encoding per message);
//! - the decision does not depend on how much more has arrived: every shorter prefix of
//!   a parsed message needs more bytes, every longer input parses the same, and an input
//!   that is refused is never accepted on more bytes;
//! - a cookie the jar makes for an address and listener checks for them and not for
//!   another address; not under load every preamble proceeds; under load a preamble
//!   proceeds exactly when its cookie checks, and a legacy client is closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_proto::cookie::{
    encode_preamble, encode_reply, parse_preamble, parse_reply, CookieJar, Parsed, Preamble,
    Verdict, HEADER_LEN, PREAMBLE_MAX, REPLY_LEN, ROTATE_EVERY,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

fn check_preamble(data: &[u8]) {
    let full = parse_preamble(data);
    match full {
        Ok(Parsed::Done(p, n)) => {
            assert!(n <= data.len());
            match p {
                Preamble::Legacy => assert_eq!(n, 0),
                Preamble::Empty => {
                    assert_eq!(n, HEADER_LEN);
                    assert_eq!(encode_preamble(None), &data[..n]);
                }
                Preamble::Cookie(c) => {
                    assert_eq!(n, PREAMBLE_MAX);
                    assert_eq!(encode_preamble(Some(&c)), &data[..n]);
                }
            }
            for cut in 0..n {
                assert_eq!(parse_preamble(&data[..cut]), Ok(Parsed::NeedMore), "cut {cut}");
            }
            for cut in n.max(1)..=data.len() {
                assert_eq!(parse_preamble(&data[..cut]), Ok(Parsed::Done(p, n)));
            }
        }
        Ok(Parsed::NeedMore) => {
            assert!(data.len() < PREAMBLE_MAX);
            for cut in 0..data.len() {
                assert_eq!(parse_preamble(&data[..cut]), Ok(Parsed::NeedMore));
            }
        }
        Err(_) => {
            for cut in 0..=data.len() {
                assert!(!matches!(parse_preamble(&data[..cut]), Ok(Parsed::Done(..))));
            }
        }
    }
}

fn check_reply(data: &[u8]) {
    match parse_reply(data) {
        Ok(Parsed::Done(c, n)) => {
            assert_eq!(n, REPLY_LEN);
            assert_eq!(&encode_reply(&c)[..], &data[..n]);
            for cut in 0..n {
                assert_eq!(parse_reply(&data[..cut]), Ok(Parsed::NeedMore));
            }
        }
        Ok(Parsed::NeedMore) => assert!(data.len() < REPLY_LEN),
        Err(_) => {
            for cut in 0..=data.len() {
                assert!(!matches!(parse_reply(&data[..cut]), Ok(Parsed::Done(..))));
            }
        }
    }
}

fn check_jar(pick: u8, data: &[u8]) {
    let mut secret = [pick; 32];
    for (s, d) in secret.iter_mut().zip(data) {
        *s ^= *d;
    }
    let jar = CookieJar::new(Duration::from_secs(u64::from(pick)), secret, ROTATE_EVERY);
    let client = IpAddr::V4(Ipv4Addr::new(10, pick, 0, 1));
    let other = IpAddr::V4(Ipv4Addr::new(10, pick, 0, 2));
    let listener = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, pick)), 5443);
    let c = jar.make(client, listener);
    assert!(jar.check(&c, client, listener));
    assert!(!jar.check(&c, other, listener));
    if let Ok(Parsed::Done(p, _)) = parse_preamble(data) {
        assert_eq!(jar.judge(false, &p, client, listener), Verdict::Proceed);
        let under = jar.judge(true, &p, client, listener);
        match p {
            Preamble::Legacy => assert!(matches!(under, Verdict::Close { .. })),
            Preamble::Empty => assert!(matches!(under, Verdict::Challenge { .. })),
            Preamble::Cookie(k) => assert_eq!(
                under == Verdict::Proceed,
                jar.check(&k, client, listener)
            ),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    check_preamble(data);
    check_reply(data);
    check_jar(pick, data);
});
