//! The ALT resource record: the address of one SCOLD proxy that clients may use to reach
//! a target under attack.
//!
//! ALT is a private-use RR type (RFC 6895 reserves 65280-65534; SCOLD defaults to 65280,
//! operators may pick another code). Its RDATA is exactly one IPv4 address (4 bytes) or
//! one IPv6 address (16 bytes); any other length is malformed and refused.
//!
//! Because no DNS software knows the type, it travels everywhere as an RFC 3597 unknown
//! type: `TYPE65280 \# 4 CB373966`. SCOLD's own tools also accept and print the
//! mnemonic form `ALT 203.55.57.102`.
//!
//! This module is sans-IO: it turns bytes and text into [`AltRdata`] and back, nothing
//! more, so the client agent can parse ALT answers without any socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The RR type code SCOLD uses for ALT unless configured otherwise (first private-use code).
pub const DEFAULT_ALT_TYPE: u16 = 65280;

/// The mnemonic of the ALT type in presentation format.
pub const ALT_MNEMONIC: &str = "ALT";

/// Why bytes or text are not a valid ALT RDATA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AltError {
    /// The RDATA length is neither 4 (IPv4) nor 16 (IPv6).
    #[error("ALT RDATA is {0} bytes long; it must be 4 (IPv4) or 16 (IPv6)")]
    BadLength(usize),
    /// The presentation text is not an IP address.
    #[error(
        "`{0}` is not an IPv4 or IPv6 address (ALT takes one address, e.g. `ALT 203.55.57.102`)"
    )]
    BadAddress(String),
    /// The RFC 3597 generic form is malformed.
    #[error("malformed RFC 3597 RDATA `{0}`: expected `\\# <length> <hex>` with length equal to the number of hex bytes")]
    BadGeneric(String),
    /// The text names a type that is not ALT.
    #[error("record type `{found}` is not ALT (expected `ALT` or `TYPE{expected}`)")]
    WrongType {
        /// What the text said.
        found: String,
        /// The ALT code in force.
        expected: u16,
    },
}

/// The RDATA of one ALT record: the address of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AltRdata(pub IpAddr);

impl AltRdata {
    /// Parses wire-format RDATA (exactly 4 or 16 bytes).
    pub fn from_wire(rdata: &[u8]) -> Result<Self, AltError> {
        match rdata.len() {
            4 => {
                let b: [u8; 4] = rdata.try_into().map_err(|_| AltError::BadLength(4))?;
                Ok(Self(IpAddr::V4(Ipv4Addr::from(b))))
            }
            16 => {
                let b: [u8; 16] = rdata.try_into().map_err(|_| AltError::BadLength(16))?;
                Ok(Self(IpAddr::V6(Ipv6Addr::from(b))))
            }
            n => Err(AltError::BadLength(n)),
        }
    }

    /// Wire-format RDATA: 4 bytes for IPv4, 16 for IPv6.
    pub fn to_wire(&self) -> Vec<u8> {
        match self.0 {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Parses the RDATA part of presentation text: either an address (`203.55.57.102`,
    /// `2001:db8::1`) or the RFC 3597 form (`\# 4 CB373966`, hex may be split by blanks).
    pub fn from_presentation(text: &str) -> Result<Self, AltError> {
        let t = text.trim();
        if t.starts_with("\\#") {
            let bytes = parse_generic_rdata(t)?;
            return Self::from_wire(&bytes);
        }
        t.parse::<IpAddr>()
            .map(Self)
            .map_err(|_| AltError::BadAddress(t.to_string()))
    }

    /// The RFC 3597 presentation of the RDATA: `\# 4 CB373966`.
    pub fn to_generic(&self) -> String {
        let w = self.to_wire();
        format!("\\# {} {}", w.len(), data_encoding::HEXUPPER.encode(&w))
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for AltRdata {
    /// Mnemonic-form RDATA: the address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<IpAddr> for AltRdata {
    fn from(a: IpAddr) -> Self {
        Self(a)
    }
}

/// Parses RFC 3597 generic RDATA text `\# <len> <hex>...` into bytes.
///
/// The hex may be split into several blank-separated words; `\# 0` is empty RDATA.
pub fn parse_generic_rdata(text: &str) -> Result<Vec<u8>, AltError> {
    let bad = || AltError::BadGeneric(text.to_string());
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("\\#") {
        return Err(bad());
    }
    let len: usize = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let hex: String = words.collect();
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = data_encoding::HEXUPPER_PERMISSIVE
        .decode(hex.as_bytes())
        .map_err(|_| bad())?;
    if bytes.len() != len || len > u16::MAX as usize {
        return Err(bad());
    }
    Ok(bytes)
}

/// Parses `ALT <addr>` or `TYPE<code> \# <len> <hex>` (type and RDATA, without owner,
/// class or TTL) for the given ALT type code.
pub fn parse_type_and_rdata(text: &str, alt_type: u16) -> Result<AltRdata, AltError> {
    let t = text.trim();
    let (ty, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let is_alt = ty.eq_ignore_ascii_case(ALT_MNEMONIC)
        || ty.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("TYPE"))
            && ty[4..].parse::<u16>() == Ok(alt_type);
    if !is_alt {
        return Err(AltError::WrongType {
            found: ty.to_string(),
            expected: alt_type,
        });
    }
    AltRdata::from_presentation(rest)
}

/// The RFC 3597 presentation of a whole ALT type-and-RDATA: `TYPE65280 \# 4 CB373966`.
pub fn to_generic_type_and_rdata(rdata: &AltRdata, alt_type: u16) -> String {
    format!("TYPE{alt_type} {}", rdata.to_generic())
}

/// The mnemonic presentation of a whole ALT type-and-RDATA: `ALT 203.55.57.102`.
pub fn to_mnemonic_type_and_rdata(rdata: &AltRdata) -> String {
    format!("{ALT_MNEMONIC} {rdata}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_wire_round_trip() {
        let r = AltRdata::from_wire(&[203, 55, 57, 102]).unwrap();
        assert_eq!(r.to_string(), "203.55.57.102");
        assert_eq!(r.to_wire(), vec![203, 55, 57, 102]);
        assert_eq!(r.to_generic(), "\\# 4 CB373966");
    }

    #[test]
    fn ipv6_wire_round_trip() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let r = AltRdata(a);
        let w = r.to_wire();
        assert_eq!(w.len(), 16);
        assert_eq!(AltRdata::from_wire(&w).unwrap(), r);
        assert_eq!(r.to_generic(), "\\# 16 20010DB8000000000000000000000001");
    }

    #[test]
    fn malformed_lengths_are_refused() {
        for n in [0usize, 1, 3, 5, 15, 17, 255] {
            assert_eq!(
                AltRdata::from_wire(&vec![0; n]),
                Err(AltError::BadLength(n)),
                "length {n}"
            );
        }
    }

    #[test]
    fn presentation_forms() {
        let want = AltRdata("203.55.57.102".parse().unwrap());
        assert_eq!(AltRdata::from_presentation("203.55.57.102").unwrap(), want);
        assert_eq!(AltRdata::from_presentation("\\# 4 CB373966").unwrap(), want);
        assert_eq!(
            AltRdata::from_presentation("\\# 4 cb37 3966").unwrap(),
            want
        );
        assert_eq!(
            parse_type_and_rdata("ALT 203.55.57.102", DEFAULT_ALT_TYPE).unwrap(),
            want
        );
        assert_eq!(
            parse_type_and_rdata("TYPE65280 \\# 4 CB373966", DEFAULT_ALT_TYPE).unwrap(),
            want
        );
        assert_eq!(
            to_generic_type_and_rdata(&want, DEFAULT_ALT_TYPE),
            "TYPE65280 \\# 4 CB373966"
        );
        assert_eq!(to_mnemonic_type_and_rdata(&want), "ALT 203.55.57.102");
    }

    #[test]
    fn malformed_presentation_is_refused() {
        for bad in [
            "",
            "203.55.57",
            "203.55.57.102.1",
            "example.com",
            "\\#",
            "\\# 4",
            "\\# 4 CB3739",
            "\\# 3 CB3739",
            "\\# 4 CB37396",
            "\\# 4 ZZ373966",
            "\\# x CB373966",
            "\\# 2 CB37",
            "\\# 0",
        ] {
            assert!(
                AltRdata::from_presentation(bad).is_err(),
                "accepted {bad:?}"
            );
        }
        assert!(matches!(
            parse_type_and_rdata("TYPE65281 \\# 4 CB373966", DEFAULT_ALT_TYPE),
            Err(AltError::WrongType { .. })
        ));
        assert!(parse_type_and_rdata("A 1.2.3.4", DEFAULT_ALT_TYPE).is_err());
        // A configured code other than the default.
        assert!(parse_type_and_rdata("TYPE65300 \\# 4 01020304", 65300).is_ok());
    }

    #[test]
    fn generic_rdata_parser() {
        assert_eq!(parse_generic_rdata("\\# 0").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_generic_rdata("\\# 2 0a0B").unwrap(), vec![10, 11]);
        assert!(parse_generic_rdata("# 2 0a0b").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            match AltRdata::from_wire(&b) {
                Ok(r) => proptest::prop_assert_eq!(r.to_wire(), b),
                Err(AltError::BadLength(n)) => proptest::prop_assert_eq!(n, b.len()),
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn any_text_never_panics(s in "\\PC{0,40}") {
            let _ = AltRdata::from_presentation(&s);
            let _ = parse_type_and_rdata(&s, DEFAULT_ALT_TYPE);
        }
    }
}
