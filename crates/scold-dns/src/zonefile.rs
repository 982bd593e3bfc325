//! RFC 1035 master files, with the `ALT` mnemonic and RFC 3597 `TYPEnnn \# len hex`.
//!
//! hickory-proto's zone parser refuses unknown types and the `\#` syntax, so the file
//! structure (directives, owners, TTL and class, parentheses, comments, quoting) is read
//! here; the RDATA of well-known types is still parsed by hickory-proto.

use std::collections::HashMap;
use std::path::Path;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::alt::{parse_generic_rdata, AltRdata};
use crate::wire::{is_at_or_below, name_key, parse_type, rdata_wire, T_CNAME};
use crate::zone::ZoneData;

/// A master-file error, naming the file, the line and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ZoneFileError {
    /// The file (or `<text>`).
    pub file: String,
    /// 1-based line of the entry.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub msg: String,
}

#[derive(Default)]
struct OwnerLines {
    /// Line and lower-case RDATA of the owner's CNAME.
    cname: Option<(usize, Vec<u8>)>,
    /// Line and type of the owner's first record that may not stand beside a CNAME.
    other: Option<(usize, u16)>,
}

struct Entry {
    line: usize,
    leading_blank: bool,
    tokens: Vec<String>,
}

fn tokenize(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries = Vec::new();
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    let mut depth = 0u32;
    let mut cur: Option<Entry> = None;
    let mut at_line_start = true;
    while let Some(c) = chars.next() {
        if at_line_start && depth == 0 {
            if let Some(e) = cur.take() {
                if !e.tokens.is_empty() {
                    entries.push(e);
                }
            }
            cur = Some(Entry {
                line,
                leading_blank: c == ' ' || c == '\t',
                tokens: Vec::new(),
            });
        }
        at_line_start = false;
        let entry = cur.as_mut().expect("entry started above");
        match c {
            '\n' => {
                line += 1;
                at_line_start = true;
            }
            ' ' | '\t' | '\r' => {}
            ';' => {
                while let Some(&n) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '(' => depth += 1,
            ')' => {
                if depth == 0 {
                    return Err((line, "`)` without a matching `(`".into()));
                }
                depth -= 1;
            }
            '"' => {
                let mut tok = String::from('"');
                let mut closed = false;
                while let Some(n) = chars.next() {
                    tok.push(n);
                    match n {
                        '\\' => {
                            if let Some(m) = chars.next() {
                                tok.push(m);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => line += 1,
                        _ => {}
                    }
                }
                if !closed {
                    return Err((
                        line,
                        "unterminated quoted string: add the closing `\"`".into(),
                    ));
                }
                entry.tokens.push(tok);
            }
            _ => {
                let mut tok = String::from(c);
                if c == '\\' {
                    if let Some(m) = chars.next() {
                        tok.push(m);
                    }
                }
                while let Some(&n) = chars.peek() {
                    if matches!(n, ' ' | '\t' | '\r' | '\n' | ';' | '(' | ')' | '"') {
                        break;
                    }
                    chars.next();
                    tok.push(n);
                    if n == '\\' {
                        if let Some(m) = chars.next() {
                            tok.push(m);
                        }
                    }
                }
                entry.tokens.push(tok);
            }
        }
    }
    if depth != 0 {
        return Err((line, "unbalanced `(`: add the closing `)`".into()));
    }
    if let Some(e) = cur {
        if !e.tokens.is_empty() {
            entries.push(e);
        }
    }
    Ok(entries)
}

fn parse_ttl(s: &str) -> Option<u32> {
    if !s.as_bytes().first()?.is_ascii_digit() {
        return None;
    }
    hickory_proto::serialize::txt::parse_ttl(s).ok()
}

fn abs_name(tok: &str, origin: &Name) -> Result<Name, String> {
    if tok == "@" {
        return Ok(origin.clone());
    }
    Name::parse(tok, Some(origin)).map_err(|e| format!("bad domain name `{tok}`: {e}"))
}

/// Reads a master file from disk.
pub fn load(path: &Path, origin: &Name, alt_type: u16) -> Result<ZoneData, ZoneFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ZoneFileError {
        file: path.display().to_string(),
        line: 0,
        msg: format!("cannot read the zone file: {e}"),
    })?;
    parse(&text, &path.display().to_string(), origin, alt_type)
}

/// Parses master-file text for the zone `origin`.
pub fn parse(
    text: &str,
    file: &str,
    origin: &Name,
    alt_type: u16,
) -> Result<ZoneData, ZoneFileError> {
    let err = |line: usize, msg: String| ZoneFileError {
        file: file.to_string(),
        line,
        msg,
    };
    let entries = tokenize(text).map_err(|(l, m)| err(l, m))?;
    let mut origin_now = origin.clone();
    origin_now.set_fqdn(true);
    let apex_key = name_key(&origin_now);
    let mut zone = ZoneData::new(origin_now.clone());
    let mut default_ttl: Option<u32> = None;
    let mut last_ttl: Option<u32> = None;
    let mut last_owner: Option<Name> = None;
    // Per owner: the line of its CNAME and of its first other record, so that "CNAME
    // and other data" is reported where it happens, as BIND and Knot refuse it.
    let mut lines: HashMap<Vec<u8>, OwnerLines> = HashMap::new();

    for e in entries {
        let t = &e.tokens;
        let first = t[0].as_str();
        if !e.leading_blank && first.starts_with('$') {
            match first.to_ascii_uppercase().as_str() {
                "$ORIGIN" => {
                    let n = t
                        .get(1)
                        .ok_or_else(|| err(e.line, "$ORIGIN needs a name".into()))?;
                    origin_now = abs_name(n, &origin_now).map_err(|m| err(e.line, m))?;
                }
                "$TTL" => {
                    let v = t
                        .get(1)
                        .and_then(|v| parse_ttl(v))
                        .ok_or_else(|| err(e.line, "$TTL needs a TTL such as 300 or 1h".into()))?;
                    default_ttl = Some(v);
                }
                other => {
                    return Err(err(
                        e.line,
                        format!("directive {other} is not supported here: inline the records"),
                    ))
                }
            }
            continue;
        }
        let mut i = 0;
        let owner = if e.leading_blank {
            last_owner.clone().ok_or_else(|| {
                err(
                    e.line,
                    "record without an owner name and no previous owner".into(),
                )
            })?
        } else {
            i = 1;
            abs_name(first, &origin_now).map_err(|m| err(e.line, m))?
        };
        last_owner = Some(owner.clone());
        let mut ttl = None;
        // TTL and class may come in either order (RFC 1035 section 5.1).
        for _ in 0..2 {
            let Some(tok) = t.get(i) else { break };
            if let Some(v) = parse_ttl(tok) {
                ttl = Some(v);
                i += 1;
            } else if tok.eq_ignore_ascii_case("IN") {
                i += 1;
            } else if ["CH", "HS", "CS"]
                .iter()
                .any(|c| tok.eq_ignore_ascii_case(c))
                || tok.to_ascii_uppercase().starts_with("CLASS")
            {
                return Err(err(
                    e.line,
                    format!("class {tok} is not served: only IN zones are"),
                ));
            }
        }
        let ty_tok = t
            .get(i)
            .ok_or_else(|| err(e.line, "missing record type".into()))?;
        let rtype = parse_type(ty_tok, alt_type).ok_or_else(|| {
            err(
                e.line,
                format!("unknown record type `{ty_tok}`: use a standard mnemonic, ALT, or the RFC 3597 form TYPEnnn \\# len hex"),
            )
        })?;
        i += 1;
        let rd = &t[i..];
        let ttl = match ttl.or(default_ttl).or(last_ttl) {
            Some(v) => v,
            None => {
                return Err(err(
                    e.line,
                    "no TTL: give the record a TTL or put `$TTL 300` at the top".into(),
                ))
            }
        };
        if ttl > i32::MAX as u32 {
            return Err(err(e.line, format!("TTL {ttl} is above 2^31-1")));
        }
        last_ttl = Some(ttl);
        let rdata =
            rdata_from_tokens(rtype, rd, &origin_now, alt_type).map_err(|m| err(e.line, m))?;
        let key = name_key(&owner);
        if !is_at_or_below(&key, &apex_key) {
            return Err(err(
                e.line,
                format!(
                    "{owner} is outside the zone {}: fix the owner or the zone name",
                    zone.origin
                ),
            ));
        }
        if rtype == crate::wire::T_SOA && key != apex_key {
            return Err(err(e.line, "SOA is only allowed at the zone apex".into()));
        }
        let seen = lines.entry(key.clone()).or_default();
        if rtype == T_CNAME {
            if let Some((l, t)) = seen.other {
                return Err(err(
                    e.line,
                    format!(
                        "{owner}: CNAME and other data (the {} record at line {l}): a name with a CNAME can hold nothing else (RFC 1034 section 3.6.2); remove the CNAME or the other records",
                        crate::wire::type_name(t, alt_type)
                    ),
                ));
            }
            if let Some((l, first)) = &seen.cname {
                if *first != rdata.to_ascii_lowercase() {
                    return Err(err(
                        e.line,
                        format!("{owner}: a second CNAME (the first is at line {l}): a name has at most one; keep one"),
                    ));
                }
            } else {
                seen.cname = Some((e.line, rdata.to_ascii_lowercase()));
            }
        } else if !crate::wire::coexists_with_cname(rtype) {
            if let Some((l, _)) = &seen.cname {
                return Err(err(
                    e.line,
                    format!(
                        "{owner}: CNAME and other data (the CNAME is at line {l}): a name with a CNAME can hold nothing else (RFC 1034 section 3.6.2); remove the CNAME or this {} record",
                        crate::wire::type_name(rtype, alt_type)
                    ),
                ));
            }
            seen.other.get_or_insert((e.line, rtype));
        }
        zone.add_rr(&owner, rtype, ttl, rdata);
    }
    if zone.soa().is_none() {
        return Err(err(
            0,
            format!(
                "zone {} has no SOA record at its apex: add one",
                zone.origin
            ),
        ));
    }
    if let Some(n) = zone.nodes.get(&apex_key) {
        if n.rrsets.get(&crate::wire::T_SOA).map(|s| s.rdatas.len()) != Some(1) {
            return Err(err(0, "the apex must hold exactly one SOA record".into()));
        }
    }
    Ok(zone)
}

/// Parses RDATA tokens of type `rtype` into uncompressed wire bytes.
pub fn rdata_from_tokens(
    rtype: u16,
    rd: &[String],
    origin: &Name,
    alt_type: u16,
) -> Result<Vec<u8>, String> {
    if matches!(rtype, 0 | 41 | 249..=255) {
        return Err(format!(
            "type {rtype} is a meta type and cannot be in a zone file"
        ));
    }
    if rd.first().map(String::as_str) == Some("\\#") {
        let bytes = parse_generic_rdata(&rd.join(" ")).map_err(|e| e.to_string())?;
        check_wire_rdata(rtype, &bytes, alt_type)?;
        let rt = RecordType::from(rtype);
        if rtype != alt_type && !matches!(rt, RecordType::Unknown(_)) {
            // RFC 3597 section 5: generic RDATA of a known type must be valid for it.
            use hickory_proto::serialize::binary::{BinDecoder, Restrict};
            let data = RData::read(
                &mut BinDecoder::new(&bytes),
                rt,
                Restrict::new(bytes.len() as u16),
            )
            .map_err(|e| format!("\\# RDATA is not valid {rt} RDATA: {e}"))?;
            return rdata_wire(&data).map_err(|e| format!("cannot encode {rt} RDATA: {e}"));
        }
        return Ok(bytes);
    }
    if rtype == alt_type {
        return AltRdata::from_presentation(&rd.join(" "))
            .map(|a| a.to_wire())
            .map_err(|e| e.to_string());
    }
    let rt = RecordType::from(rtype);
    if matches!(rt, RecordType::Unknown(_)) {
        return Err(format!(
            "type {rtype} has no text form here: write its RDATA as \\# <length> <hex>"
        ));
    }
    // Names in RDATA may be relative to $ORIGIN; hickory's RDATA parser wants them absolute.
    let name_positions: &[usize] = match rtype {
        2 | 5 | 12 | 39 => &[0],
        15 => &[1],
        33 => &[3],
        6 => &[0, 1],
        _ => &[],
    };
    let mut toks: Vec<String> = rd.to_vec();
    for &p in name_positions {
        if let Some(tok) = toks.get_mut(p) {
            *tok = abs_name(tok, origin)?.to_ascii();
        }
    }
    let data = RData::try_from_str(rt, &toks.join(" "))
        .map_err(|e| format!("bad {rt} RDATA `{}`: {e}", rd.join(" ")))?;
    rdata_wire(&data).map_err(|e| format!("cannot encode {rt} RDATA: {e}"))
}

/// Checks wire RDATA of the types whose length is fixed (A, AAAA, ALT).
pub fn check_wire_rdata(rtype: u16, bytes: &[u8], alt_type: u16) -> Result<(), String> {
    if rtype == alt_type {
        AltRdata::from_wire(bytes).map_err(|e| e.to_string())?;
    } else if rtype == crate::wire::T_A && bytes.len() != 4 {
        return Err(format!("A RDATA must be 4 bytes, not {}", bytes.len()));
    } else if rtype == crate::wire::T_AAAA && bytes.len() != 16 {
        return Err(format!("AAAA RDATA must be 16 bytes, not {}", bytes.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alt::DEFAULT_ALT_TYPE;

    const ZONE: &str = r#"
$ORIGIN example.com.
$TTL 300
@   IN SOA ns1 hostmaster (
        2024010101 ; serial
        3600 900 604800 60 )
    IN NS ns1
ns1 IN A 192.0.2.53
www 60 IN A 192.0.2.10
www IN ALT 203.55.57.102
www IN TYPE65280 \# 4 CB373967
www IN AAAA 2001:db8::10
www2 IN TYPE1 \# 4 C0000201
alias IN CNAME www
mail IN MX 10 mx.example.net.
txt IN TXT "hello world" "two; parts"
v6alt IN ALT 2001:db8::99
sub IN NS ns.sub
ns.sub IN A 192.0.2.77
"#;

    fn origin() -> Name {
        Name::from_ascii("example.com.").unwrap()
    }

    #[test]
    fn parses_a_zone_with_alt_in_both_forms() {
        let z = parse(ZONE, "t", &origin(), DEFAULT_ALT_TYPE).unwrap();
        assert_eq!(z.soa().unwrap().serial, 2024010101);
        let www = z.nodes.get(&b"\x03www\x07example\x03com\x00"[..]).unwrap();
        let alt = www.rrsets.get(&DEFAULT_ALT_TYPE).unwrap();
        assert_eq!(alt.rdatas.len(), 2);
        assert!(alt.rdatas.contains(&vec![203, 55, 57, 102]));
        assert!(alt.rdatas.contains(&vec![203, 55, 57, 103]));
        assert_eq!(www.rrsets.get(&1).unwrap().ttl, 60);
        assert_eq!(alt.ttl, 300, "$TTL applies to records without a TTL");
        let txt = z.nodes.get(&b"\x03txt\x07example\x03com\x00"[..]).unwrap();
        assert_eq!(
            txt.rrsets.get(&16).unwrap().rdatas[0],
            b"\x0bhello world\x0atwo; parts".to_vec()
        );
        let alias = z
            .nodes
            .get(&b"\x05alias\x07example\x03com\x00"[..])
            .unwrap();
        assert_eq!(
            alias.rrsets.get(&5).unwrap().rdatas[0],
            b"\x03www\x07example\x03com\x00".to_vec()
        );
    }

    #[test]
    fn refuses_malformed_alt_and_other_errors() {
        let head = "$TTL 60\n@ SOA ns1 h 1 2 3 4 5\n";
        for (body, needle) in [
            ("www ALT 1.2.3\n", "not an IPv4"),
            ("www TYPE65280 \\# 3 010203\n", "must be 4"),
            ("www TYPE65280 \\# 4 010203\n", "malformed RFC 3597"),
            ("www BOGUS 1.2.3.4\n", "unknown record type"),
            ("www A 1.2.3.4.5\n", "bad A RDATA"),
            ("www.other.org. A 1.2.3.4\n", "outside the zone"),
            ("www CH A 1.2.3.4\n", "class CH"),
            ("www A ( 1.2.3.4\n", "unbalanced"),
            ("$INCLUDE other\n", "not supported"),
            ("www TXT \"open\n", "unterminated"),
            ("www SOA ns1 h 1 2 3 4 5\n", "only allowed at the zone apex"),
            // Found by fuzzing: generic RDATA that is no valid NS name.
            ("www NS \\# 4 c0000201\n", "not valid NS RDATA"),
            ("www TYPE41 \\# 0\n", "meta type"),
        ] {
            let text = format!("{head}{body}");
            let e = parse(&text, "z.db", &origin(), DEFAULT_ALT_TYPE).unwrap_err();
            assert!(e.to_string().contains(needle), "{body:?}: {e}");
            assert!(e.to_string().starts_with("z.db:"), "{e}");
        }
        let e = parse("www 60 A 1.2.3.4\n", "z", &origin(), DEFAULT_ALT_TYPE).unwrap_err();
        assert!(e.to_string().contains("no SOA"), "{e}");
        let e = parse("www A 1.2.3.4\n", "z", &origin(), DEFAULT_ALT_TYPE).unwrap_err();
        assert!(e.to_string().contains("no TTL"), "{e}");
    }

    /// "CNAME and other data" is refused at load, as named-checkzone and Knot refuse
    /// it, naming the file, the line and the owner, whichever comes first in the file.
    #[test]
    fn cname_and_other_data_are_refused() {
        let head = "$ORIGIN example.com.\n$TTL 60\n@ SOA ns1 h 1 2 3 4 5\n";
        for (body, line, other) in [
            ("www A 192.0.2.1\nwww CNAME other\n", 5, "line 4"),
            ("www CNAME other\nwww A 192.0.2.1\n", 5, "line 4"),
            ("www CNAME other\n  ALT 10.0.0.1\n", 5, "line 4"),
            ("www CNAME other\nWWW.example.com. TXT \"x\"\n", 5, "line 4"),
            ("@ CNAME other\n", 4, "line 3"),
            ("www CNAME a\nwww CNAME b\n", 5, "line 4"),
        ] {
            let text = format!("{head}{body}");
            let e = parse(&text, "z.db", &origin(), DEFAULT_ALT_TYPE)
                .expect_err(body)
                .to_string();
            assert!(e.starts_with(&format!("z.db:{line}: ")), "{body:?}: {e}");
            assert!(
                e.contains("example.com."),
                "{body:?}: the owner is named: {e}"
            );
            assert!(e.contains(other), "{body:?}: the other line is named: {e}");
        }
        // The same CNAME twice is one record; RRSIG and NSEC may stand beside it.
        let text = format!(
            "{head}www CNAME other\nwww CNAME other\nwww TYPE47 \\# 18 0178076578616d706c6503636f6d00000140\nother A 192.0.2.1\n"
        );
        let z = parse(&text, "z.db", &origin(), DEFAULT_ALT_TYPE).unwrap();
        let www = z.nodes.get(&b"\x03www\x07example\x03com\x00"[..]).unwrap();
        assert_eq!(www.rrsets[&T_CNAME].rdatas.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_text_never_panics(s in "\\PC{0,120}") {
            let _ = parse(&s, "z", &origin(), DEFAULT_ALT_TYPE);
            let _ = parse(&format!("$TTL 60\n@ SOA a b 1 2 3 4 5\n{s}\n"), "z", &origin(), DEFAULT_ALT_TYPE);
        }
    }

    #[test]
    fn configured_alt_code() {
        let text = "$TTL 60\n@ SOA ns1 h 1 2 3 4 5\nwww ALT 10.0.0.1\n";
        let z = parse(text, "z", &origin(), 65300).unwrap();
        let www = z.nodes.get(&b"\x03www\x07example\x03com\x00"[..]).unwrap();
        assert!(www.rrsets.contains_key(&65300));
    }
}
