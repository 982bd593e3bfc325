//! Small wire-format helpers shared by the server, the updater and the resolver.
//!
//! The hot query path reads the header and question itself (no allocation); everything
//! else goes through hickory-proto's `Message`.

use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

/// DNS header length.
pub const HEADER_LEN: usize = 12;
/// RR type codes used on the hot path.
pub const T_SOA: u16 = 6;
/// NS.
pub const T_NS: u16 = 2;
/// CNAME.
pub const T_CNAME: u16 = 5;
/// A.
pub const T_A: u16 = 1;
/// AAAA.
pub const T_AAAA: u16 = 28;
/// OPT (EDNS0).
pub const T_OPT: u16 = 41;
/// TSIG.
pub const T_TSIG: u16 = 250;
/// IXFR (RFC 1995).
pub const T_IXFR: u16 = 251;
/// AXFR.
pub const T_AXFR: u16 = 252;
/// ANY.
pub const T_ANY: u16 = 255;
/// Class IN.
pub const C_IN: u16 = 1;
/// Class NONE (RFC 2136).
pub const C_NONE: u16 = 254;
/// Class ANY.
pub const C_ANY: u16 = 255;

/// Lower-case uncompressed wire form of a name: the key of every table here.
pub fn name_key(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Uncompressed wire form of a name, case preserved.
pub fn name_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Turns a lower-case wire key back into a `Name` (for logs and slow paths).
pub fn key_to_name(key: &[u8]) -> Name {
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i < key.len() && key[i] != 0 {
        let l = key[i] as usize;
        if i + 1 + l > key.len() {
            break;
        }
        labels.push(&key[i + 1..i + 1 + l]);
        i += 1 + l;
    }
    let mut n = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
    n.set_fqdn(true);
    n
}

/// Whether `name` (wire key) is `apex` or below it, on a label boundary.
pub fn is_at_or_below(name: &[u8], apex: &[u8]) -> bool {
    if apex.len() > name.len() {
        return false;
    }
    let mut i = 0;
    loop {
        if name.len() - i == apex.len() {
            return name[i..] == *apex;
        }
        if i >= name.len() || name[i] == 0 {
            return false;
        }
        i += 1 + name[i] as usize;
        if i > name.len() {
            return false;
        }
    }
}

/// Uncompressed wire RDATA of a typed hickory `RData`.
pub fn rdata_wire(rdata: &RData) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    if let RData::Unknown { rdata, .. } = rdata {
        return Ok(rdata.anything.clone());
    }
    let mut buf = Vec::with_capacity(64);
    {
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        rdata.emit(&mut enc)?;
    }
    Ok(buf)
}

/// Whether a record of this type may share its owner with a CNAME: only the DNSSEC
/// records that sign and chain the alias itself, RRSIG and NSEC (RFC 2181 section 10.1,
/// RFC 4035 section 2.5). Everything else beside a CNAME is "CNAME and other data".
pub fn coexists_with_cname(rtype: u16) -> bool {
    matches!(rtype, 46 | 47)
}

/// Whether RDATA of this type holds domain names, which compare case-insensitively.
pub fn rdata_has_names(rtype: u16) -> bool {
    matches!(rtype, 2 | 5 | 6 | 12 | 15 | 33 | 39)
}

/// RDATA equality as RFC 2136 section 1.1.1 requires (names case-insensitive).
pub fn rdata_eq(rtype: u16, a: &[u8], b: &[u8]) -> bool {
    if rdata_has_names(rtype) {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// The mnemonic of a type, with ALT for the configured code and `TYPEn` for unknown ones.
pub fn type_name(rtype: u16, alt_type: u16) -> String {
    if rtype == alt_type {
        return crate::alt::ALT_MNEMONIC.to_string();
    }
    match RecordType::from(rtype) {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}

/// Parses a type mnemonic: `ALT`, `TYPEnnn` or any mnemonic hickory knows.
pub fn parse_type(s: &str, alt_type: u16) -> Option<u16> {
    if s.eq_ignore_ascii_case(crate::alt::ALT_MNEMONIC) {
        return Some(alt_type);
    }
    // Compare bytes: `s` is untrusted text and byte 4 may fall inside a character.
    if s.len() > 4 && s.as_bytes()[..4].eq_ignore_ascii_case(b"TYPE") {
        return s[4..].parse().ok();
    }
    let up = s.to_ascii_uppercase();
    match up.parse::<RecordType>() {
        Ok(RecordType::Unknown(_)) | Err(_) => None,
        Ok(t) => Some(u16::from(t)),
    }
}

/// Reads the uncompressed name starting at `pos` in `msg`, appending its lower-case form
/// to `key`. Returns the position after the name. Compression pointers are refused:
/// questions never need them.
pub fn read_plain_name(msg: &[u8], mut pos: usize, key: &mut [u8; 255]) -> Option<(usize, usize)> {
    let mut klen = 0usize;
    loop {
        let l = *msg.get(pos)? as usize;
        if l == 0 {
            if klen + 1 > 255 {
                return None;
            }
            key[klen] = 0;
            return Some((pos + 1, klen + 1));
        }
        if l > 63 {
            return None;
        }
        if klen + 1 + l + 1 > 255 {
            return None;
        }
        let label = msg.get(pos + 1..pos + 1 + l)?;
        key[klen] = l as u8;
        for (d, s) in key[klen + 1..klen + 1 + l].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        klen += 1 + l;
        pos += 1 + l;
    }
}

/// Skips a possibly compressed name at `pos`; returns the position after it.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let l = *msg.get(pos)?;
        match l {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + l as usize,
            0xC0..=0xFF => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Reads a big-endian u16.
#[inline]
pub fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// Reads a big-endian u32.
#[inline]
pub fn u32_at(msg: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_be_bytes(msg.get(pos..pos + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_suffixes() {
        let n = Name::from_ascii("WWW.Example.COM.").unwrap();
        let k = name_key(&n);
        assert_eq!(k, b"\x03www\x07example\x03com\x00");
        assert_eq!(name_wire(&n), b"\x03WWW\x07Example\x03COM\x00");
        assert!(is_at_or_below(&k, b"\x07example\x03com\x00"));
        assert!(is_at_or_below(&k, b"\x00"));
        assert!(is_at_or_below(&k, &k));
        assert!(!is_at_or_below(&k, b"\x03com\x03com\x00"));
        assert!(!is_at_or_below(b"\x07example\x03com\x00", &k));
        // "xample.com" is a byte suffix but not a label suffix.
        assert!(!is_at_or_below(&k, b"\x06xample\x03com\x00"));
        assert_eq!(key_to_name(&k).to_ascii(), "www.example.com.");
    }

    #[test]
    fn plain_name_reader_refuses_bad_input() {
        let mut key = [0u8; 255];
        assert!(read_plain_name(b"\x03www", 0, &mut key).is_none());
        assert!(read_plain_name(b"\xc0\x0c", 0, &mut key).is_none());
        assert!(read_plain_name(b"\x40", 0, &mut key).is_none());
        let (end, len) = read_plain_name(b"\x01A\x00rest", 0, &mut key).unwrap();
        assert_eq!((end, len), (3, 3));
        assert_eq!(&key[..3], b"\x01a\x00");
        // A name longer than 255 bytes.
        let mut long = Vec::new();
        for _ in 0..5 {
            long.push(63);
            long.extend([b'a'; 63]);
        }
        long.push(0);
        assert!(read_plain_name(&long, 0, &mut key).is_none());
    }

    #[test]
    fn type_names() {
        assert_eq!(parse_type("ALT", 65280), Some(65280));
        assert_eq!(parse_type("type65280", 65280), Some(65280));
        assert_eq!(parse_type("aaaa", 65280), Some(28));
        assert_eq!(parse_type("NOPE", 65280), None);
        // Found by fuzzing: a multi-byte character across byte 4.
        assert_eq!(parse_type("TYP\u{72b}1", 65280), None);
        assert_eq!(parse_type("ABC\u{72b}", 65280), None);
        assert_eq!(type_name(65280, 65280), "ALT");
        assert_eq!(type_name(65281, 65280), "TYPE65281");
        assert_eq!(type_name(1, 65280), "A");
    }
}
