//! Stateless cookies for a TLS listener under load (the admission port of scheme 4.1),
//! sans-IO, after WireGuard's cookie reply and DNS cookies (RFC 7873, RFC 9018).
//!
//! A client writes a short preamble before its TLS ClientHello, with the cookie it holds
//! for this listener or none. While the listener is not under load it reads past the
//! preamble and the TLS handshake goes on as before. Under load it spends a handshake only
//! on a connection whose cookie proves that its source address receives what the listener
//! sends to it: any other gets a cookie reply instead of TLS and is closed at once, so a
//! one-shot or spoofed source costs one accept and one small write, and holds no task, no
//! slot and no TLS state. The client keeps the cookie and connects again at once.
//!
//! ```text
//! preamble (client -> listener, before the ClientHello):
//!   "SCKQ"  version (1)  length (0 or 16)  cookie (length bytes)
//! cookie reply (listener -> client, instead of the TLS ServerHello; then close):
//!   "SCKR"  version (1)  length (16)       cookie (16 bytes)
//! ```
//!
//! Both start with `S` (0x53): a TLS record starts with its content type (0x14 to 0x17)
//! and an SSLv2-style hello with 0x80, so the first byte tells a preamble from a legacy
//! client's ClientHello, and a cookie reply from the TLS answer, on the first read: a
//! client pays no round trip when no cookie is demanded.
//!
//! The cookie is the first 16 bytes of HMAC-SHA256 under a secret of the listener over
//! the client's address and the listener's address and port. No state is kept per
//! client: the listener checks a cookie by computing it again. The secret is replaced
//! every [`ROTATE_EVERY`] by fresh random bytes the caller supplies; the current and the
//! previous one are accepted, so a cookie is good for between one and two rotation
//! periods. The source port is not bound (each connection has another), nor is anything
//! the client chose: TCP's own handshake already keeps an off-path host from answering for
//! an address it does not hold, and the cookie only has to show that the address came
//! back once.

use ring::hmac;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The preamble's magic (SCOLD cookie query).
pub const PREAMBLE_MAGIC: [u8; 4] = *b"SCKQ";
/// The cookie reply's magic.
pub const REPLY_MAGIC: [u8; 4] = *b"SCKR";
/// The only version there is.
pub const VERSION: u8 = 1;
/// Bytes of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Bytes before the cookie: magic, version, length.
pub const HEADER_LEN: usize = 6;
/// The longest preamble.
pub const PREAMBLE_MAX: usize = HEADER_LEN + COOKIE_LEN;
/// The cookie reply's length.
pub const REPLY_LEN: usize = HEADER_LEN + COOKIE_LEN;
/// How often the listener replaces its secret.
pub const ROTATE_EVERY: Duration = Duration::from_secs(120);
/// Bytes of a secret.
pub const SECRET_LEN: usize = 32;

/// A cookie: proof that a source address received what the listener sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie(pub [u8; COOKIE_LEN]);

impl std::fmt::Debug for Cookie {
    // Not secret, but long and meaningless in logs: its first bytes are enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cookie({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// What a connection starts with, as the listener reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// No preamble: a client that predates cookies (its first byte is TLS's). Nothing
    /// was consumed; the bytes belong to the TLS handshake.
    Legacy,
    /// A preamble without a cookie: the client holds none for this listener.
    Empty,
    /// A preamble with the cookie the client holds.
    Cookie(Cookie),
}

/// A parse that may need more bytes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Not enough bytes yet to decide; read more and parse again from the start.
    NeedMore,
    /// The value and how many bytes it took.
    Done(T, usize),
}

/// Bytes that are neither a well-formed preamble (or cookie reply) nor TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("bad magic {0:02x?}: neither a SCOLD cookie preamble nor TLS")]
    BadMagic([u8; 4]),
    #[error("cookie version {0} is not supported (this end speaks version {VERSION})")]
    BadVersion(u8),
    #[error("bad cookie length {0} (must be 0 or {COOKIE_LEN})")]
    BadLength(u8),
}

/// Whether the first byte a listener reads (or a client reads back) starts a preamble
/// or a cookie reply rather than TLS.
pub fn starts_cookie_message(first: u8) -> bool {
    first == PREAMBLE_MAGIC[0]
}

fn parse_header(buf: &[u8], magic: [u8; 4]) -> Result<Parsed<Option<Cookie>>, CookieError> {
    // Refuse a wrong magic as soon as its bytes are there, not after waiting for more.
    let have = buf.len().min(magic.len());
    if buf[..have] != magic[..have] {
        let mut got = [0u8; 4];
        got[..have].copy_from_slice(&buf[..have]);
        return Err(CookieError::BadMagic(got));
    }
    if buf.len() < HEADER_LEN {
        return Ok(Parsed::NeedMore);
    }
    if buf[4] != VERSION {
        return Err(CookieError::BadVersion(buf[4]));
    }
    let len = buf[5];
    match len as usize {
        0 => Ok(Parsed::Done(None, HEADER_LEN)),
        COOKIE_LEN if buf.len() >= PREAMBLE_MAX => {
            let mut c = [0u8; COOKIE_LEN];
            c.copy_from_slice(&buf[HEADER_LEN..PREAMBLE_MAX]);
            Ok(Parsed::Done(Some(Cookie(c)), PREAMBLE_MAX))
        }
        COOKIE_LEN => Ok(Parsed::NeedMore),
        _ => Err(CookieError::BadLength(len)),
    }
}

/// Reads what a connection starts with. `buf` holds the bytes read so far (from the
/// first); the listener consumes the `Done` length and hands the rest to TLS.
pub fn parse_preamble(buf: &[u8]) -> Result<Parsed<Preamble>, CookieError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::NeedMore);
    };
    if !starts_cookie_message(first) {
        // TLS (or garbage, which the TLS handshake refuses).
        return Ok(Parsed::Done(Preamble::Legacy, 0));
    }
    Ok(match parse_header(buf, PREAMBLE_MAGIC)? {
        Parsed::NeedMore => Parsed::NeedMore,
        Parsed::Done(None, n) => Parsed::Done(Preamble::Empty, n),
        Parsed::Done(Some(c), n) => Parsed::Done(Preamble::Cookie(c), n),
    })
}

/// The preamble a client writes before its ClientHello.
pub fn encode_preamble(cookie: Option<&Cookie>) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREAMBLE_MAX);
    out.extend_from_slice(&PREAMBLE_MAGIC);
    out.push(VERSION);
    match cookie {
        Some(c) => {
            out.push(COOKIE_LEN as u8);
            out.extend_from_slice(&c.0);
        }
        None => out.push(0),
    }
    out
}

/// The cookie reply a listener writes instead of TLS.
pub fn encode_reply(cookie: &Cookie) -> [u8; REPLY_LEN] {
    let mut out = [0u8; REPLY_LEN];
    out[..4].copy_from_slice(&REPLY_MAGIC);
    out[4] = VERSION;
    out[5] = COOKIE_LEN as u8;
    out[HEADER_LEN..].copy_from_slice(&cookie.0);
    out
}

/// Reads a cookie reply (the client checked [`starts_cookie_message`] on its first
/// byte). A reply without a cookie is malformed.
pub fn parse_reply(buf: &[u8]) -> Result<Parsed<Cookie>, CookieError> {
    if buf.is_empty() {
        return Ok(Parsed::NeedMore);
    }
    match parse_header(buf, REPLY_MAGIC)? {
        Parsed::NeedMore => Ok(Parsed::NeedMore),
        Parsed::Done(Some(c), n) => Ok(Parsed::Done(c, n)),
        Parsed::Done(None, _) => Err(CookieError::BadLength(0)),
    }
}

/// The listener's secrets: the current one makes cookies, the current and the previous
/// one check them. Time is a parameter (any monotonic clock, as a duration since a
/// fixed start); the fresh secrets come from the caller's random source.
pub struct CookieJar {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    /// When the current secret was made.
    since: Duration,
    every: Duration,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("since", &self.since)
            .field("every", &self.every)
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a listener did not take a connection into its TLS handshake, or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the TLS handshake (after the preamble's bytes, if any).
    Proceed,
    /// Write a cookie reply and close; `reason` for the refusal counters.
    Challenge { reason: &'static str },
    /// Close without a word (a legacy client under load cannot read a cookie reply).
    Close { reason: &'static str },
}

impl CookieJar {
    /// A jar whose first secret is `fresh`, made at `now`, replaced every `every`.
    pub fn new(now: Duration, fresh: [u8; SECRET_LEN], every: Duration) -> CookieJar {
        CookieJar {
            current: hmac::Key::new(hmac::HMAC_SHA256, &fresh),
            previous: None,
            since: now,
            every: every.max(Duration::from_secs(1)),
        }
    }

    /// Whether the secret is due to be replaced at `now`.
    pub fn due(&self, now: Duration) -> bool {
        now.saturating_sub(self.since) >= self.every
    }

    /// Replaces the secret with `fresh` if it is due at `now` (call it before making or
    /// checking a cookie). Secrets change on a fixed schedule (every period from the
    /// first), however late the call: the one replaced still checks cookies until the
    /// end of the current period, and if a whole period passed without a call, both old
    /// ones go. So a cookie is good for between one and two periods.
    pub fn rotate(&mut self, now: Duration, fresh: [u8; SECRET_LEN]) {
        if !self.due(now) {
            return;
        }
        let new = hmac::Key::new(hmac::HMAC_SHA256, &fresh);
        let old = std::mem::replace(&mut self.current, new);
        let periods = now.saturating_sub(self.since).as_nanos() / self.every.as_nanos();
        self.previous = if periods >= 2 { None } else { Some(old) };
        let periods = u32::try_from(periods).unwrap_or(u32::MAX);
        self.since = self
            .since
            .saturating_add(self.every.saturating_mul(periods));
    }

    fn mac(key: &hmac::Key, client: IpAddr, listener: SocketAddr) -> Cookie {
        let mut input = [0u8; 1 + 16 + 16 + 2];
        input[0] = VERSION;
        input[1..17].copy_from_slice(&canonical(client));
        input[17..33].copy_from_slice(&canonical(listener.ip()));
        input[33..].copy_from_slice(&listener.port().to_be_bytes());
        let tag = hmac::sign(key, &input);
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        Cookie(c)
    }

    /// The cookie of `client` at `listener` (the address and port it connected to).
    pub fn make(&self, client: IpAddr, listener: SocketAddr) -> Cookie {
        Self::mac(&self.current, client, listener)
    }

    /// Whether `cookie` is the cookie of `client` at `listener` under the current or
    /// the previous secret.
    pub fn check(&self, cookie: &Cookie, client: IpAddr, listener: SocketAddr) -> bool {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|k| same(&Self::mac(k, client, listener).0, &cookie.0))
    }

    /// The listener's decision on a connection that started with `preamble`:
    /// `under_load` says whether it is spending handshakes only on proven sources.
    pub fn judge(
        &self,
        under_load: bool,
        preamble: &Preamble,
        client: IpAddr,
        listener: SocketAddr,
    ) -> Verdict {
        if !under_load {
            // A cookie is not even checked: it costs a hash, and proves nothing needed.
            return Verdict::Proceed;
        }
        match preamble {
            Preamble::Cookie(c) if self.check(c, client, listener) => Verdict::Proceed,
            Preamble::Cookie(_) => Verdict::Challenge {
                reason: "cookie_invalid",
            },
            Preamble::Empty => Verdict::Challenge {
                reason: "cookie_demanded",
            },
            Preamble::Legacy => Verdict::Close {
                reason: "no_preamble",
            },
        }
    }
}

/// An address as 16 bytes; IPv4 as its mapped IPv6 form, so an IPv4 client seen
/// through a dual-stack socket has the same cookie.
fn canonical(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1000);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn jar() -> CookieJar {
        CookieJar::new(T0, [7; SECRET_LEN], ROTATE_EVERY)
    }

    #[test]
    fn a_cookie_is_bound_to_the_client_and_the_listener() {
        let j = jar();
        let l = sa("10.1.0.1:5443");
        let c = j.make(ip("10.8.0.1"), l);
        assert!(j.check(&c, ip("10.8.0.1"), l));
        assert!(!j.check(&c, ip("10.8.0.2"), l), "another client address");
        assert!(
            !j.check(&c, ip("10.8.0.1"), sa("10.5.0.1:5443")),
            "another listener"
        );
        assert!(
            !j.check(&c, ip("10.8.0.1"), sa("10.1.0.1:5444")),
            "another port"
        );
        // An IPv4 client seen through a dual-stack socket is the same client.
        assert!(j.check(&c, ip("::ffff:10.8.0.1"), l));
        let v6 = j.make(ip("2001:db8::1"), sa("[2001:db8::53]:5443"));
        assert!(j.check(&v6, ip("2001:db8::1"), sa("[2001:db8::53]:5443")));
        assert!(!j.check(&v6, ip("2001:db8::2"), sa("[2001:db8::53]:5443")));
        // Another listener's secret makes other cookies.
        let other = CookieJar::new(T0, [8; SECRET_LEN], ROTATE_EVERY);
        assert!(!other.check(&c, ip("10.8.0.1"), l));
    }

    #[test]
    fn rotation_keeps_the_previous_secret_for_one_period() {
        let mut j = jar();
        let (client, l) = (ip("192.0.2.9"), sa("198.51.100.1:5443"));
        let c0 = j.make(client, l);
        // Not due yet: nothing changes.
        j.rotate(T0 + ROTATE_EVERY / 2, [1; SECRET_LEN]);
        assert_eq!(j.make(client, l), c0);
        assert!(!j.due(T0 + ROTATE_EVERY / 2));
        assert!(j.due(T0 + ROTATE_EVERY));
        // First rotation: new cookies, the old one is still good.
        j.rotate(T0 + ROTATE_EVERY, [1; SECRET_LEN]);
        let c1 = j.make(client, l);
        assert_ne!(c1, c0);
        assert!(j.check(&c0, client, l) && j.check(&c1, client, l));
        // Second rotation: the first cookie has expired, the second is still good.
        j.rotate(T0 + ROTATE_EVERY * 2, [2; SECRET_LEN]);
        assert!(!j.check(&c0, client, l));
        assert!(j.check(&c1, client, l));
        // A late call does not move the schedule: the next change is still due at the
        // start of the next period, so no cookie outlives two periods.
        let c2 = j.make(client, l);
        j.rotate(T0 + ROTATE_EVERY * 3 + ROTATE_EVERY / 2, [4; SECRET_LEN]);
        assert!(j.check(&c2, client, l) && !j.check(&c1, client, l));
        assert!(j.due(T0 + ROTATE_EVERY * 4));
        j.rotate(T0 + ROTATE_EVERY * 4, [5; SECRET_LEN]);
        assert!(!j.check(&c2, client, l));
    }

    #[test]
    fn a_secret_left_unrotated_for_two_periods_expires_with_its_predecessor() {
        let mut j = jar();
        let (client, l) = (ip("192.0.2.9"), sa("198.51.100.1:5443"));
        let c0 = j.make(client, l);
        // Nobody connected for a long time: the first use rotates, and the cookie made
        // two periods ago is not taken.
        j.rotate(T0 + ROTATE_EVERY * 2, [3; SECRET_LEN]);
        assert!(!j.check(&c0, client, l));
        let c = j.make(client, l);
        assert!(j.check(&c, client, l));
    }

    #[test]
    fn judging_under_load_and_not() {
        let j = jar();
        let (client, l) = (ip("10.8.0.1"), sa("10.1.0.1:5443"));
        let good = Preamble::Cookie(j.make(client, l));
        let bad = Preamble::Cookie(j.make(ip("10.8.0.2"), l));
        for p in [Preamble::Legacy, Preamble::Empty, good, bad] {
            assert_eq!(j.judge(false, &p, client, l), Verdict::Proceed, "{p:?}");
        }
        assert_eq!(j.judge(true, &good, client, l), Verdict::Proceed);
        assert_eq!(
            j.judge(true, &bad, client, l),
            Verdict::Challenge {
                reason: "cookie_invalid"
            }
        );
        assert_eq!(
            j.judge(true, &Preamble::Empty, client, l),
            Verdict::Challenge {
                reason: "cookie_demanded"
            }
        );
        assert_eq!(
            j.judge(true, &Preamble::Legacy, client, l),
            Verdict::Close {
                reason: "no_preamble"
            }
        );
    }

    #[test]
    fn preambles_round_trip_at_any_cut() {
        let c = Cookie([0xab; COOKIE_LEN]);
        for (bytes, want) in [
            (encode_preamble(None), Preamble::Empty),
            (encode_preamble(Some(&c)), Preamble::Cookie(c)),
        ] {
            let mut stream = bytes.clone();
            stream.extend_from_slice(&[0x16, 3, 1, 0, 5]);
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_preamble(&stream[..cut]),
                    Ok(Parsed::NeedMore),
                    "{cut}"
                );
            }
            for cut in bytes.len()..=stream.len() {
                assert_eq!(
                    parse_preamble(&stream[..cut]),
                    Ok(Parsed::Done(want, bytes.len()))
                );
            }
        }
        // A legacy client's ClientHello: nothing consumed.
        assert_eq!(
            parse_preamble(&[0x16, 3, 1]),
            Ok(Parsed::Done(Preamble::Legacy, 0))
        );
        assert_eq!(parse_preamble(&[]), Ok(Parsed::NeedMore));
    }

    #[test]
    fn malformed_preambles_are_refused_as_soon_as_they_show() {
        assert_eq!(
            parse_preamble(b"SX"),
            Err(CookieError::BadMagic(*b"SX\0\0"))
        );
        assert!(matches!(
            parse_preamble(b"SCKR\x01\x10"),
            Err(CookieError::BadMagic(_))
        ));
        assert_eq!(
            parse_preamble(b"SCKQ\x02\x00"),
            Err(CookieError::BadVersion(2))
        );
        assert_eq!(
            parse_preamble(b"SCKQ\x01\x08abcdefgh"),
            Err(CookieError::BadLength(8))
        );
        assert_eq!(
            parse_preamble(b"SCKQ\x01\xff"),
            Err(CookieError::BadLength(255))
        );
    }

    #[test]
    fn cookie_replies_round_trip_and_are_told_from_tls() {
        let c = Cookie([0x5a; COOKIE_LEN]);
        let r = encode_reply(&c);
        assert!(starts_cookie_message(r[0]));
        for tls_first in 0x14..=0x17u8 {
            assert!(!starts_cookie_message(tls_first));
        }
        assert!(!starts_cookie_message(0x80));
        for cut in 0..REPLY_LEN {
            assert_eq!(parse_reply(&r[..cut]), Ok(Parsed::NeedMore));
        }
        assert_eq!(parse_reply(&r), Ok(Parsed::Done(c, REPLY_LEN)));
        assert_eq!(parse_reply(b"SCKR\x01\x00"), Err(CookieError::BadLength(0)));
        assert!(matches!(
            parse_reply(&encode_preamble(Some(&c))),
            Err(CookieError::BadMagic(_))
        ));
    }
}
