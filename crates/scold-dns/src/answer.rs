//! The query path: request bytes in, response bytes out, no I/O and no allocation
//! beyond the reused output buffer.
//!
//! Only plain QUERY messages are answered here. UPDATE, NOTIFY and TSIG-signed
//! messages are handed to the slow path ([`Outcome::Slow`]), which uses hickory-proto's
//! full message model.

use crate::wire::{
    read_plain_name, skip_name, u16_at, HEADER_LEN, T_ANY, T_AXFR, T_CNAME, T_IXFR, T_OPT, T_SOA,
    T_TSIG,
};
use crate::zone::{Catalog, CompiledZone};

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds a response to send.
    Reply,
    /// Send nothing (not a query, or too broken to answer).
    Drop,
    /// Needs the full message path (UPDATE, NOTIFY, TSIG).
    Slow,
}

/// Our EDNS0 UDP payload size (the DNS flag day 2020 value: no fragmentation).
pub const OUR_UDP_PAYLOAD: u16 = 1232;

/// Response codes used here.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;
    /// Name exists when it should not (RFC 2136).
    pub const YXDOMAIN: u16 = 6;
    /// RRset exists when it should not (RFC 2136).
    pub const YXRRSET: u16 = 7;
    /// RRset that should exist does not (RFC 2136).
    pub const NXRRSET: u16 = 8;
    /// Not authoritative (RFC 2136) / not authorized (RFC 8945).
    pub const NOTAUTH: u16 = 9;
    /// Not in zone.
    pub const NOTZONE: u16 = 10;
    /// Bad EDNS version (extended, 16).
    pub const BADVERS: u16 = 16;
}

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;

struct Edns {
    payload: u16,
    version: u8,
}

/// Answers a request from the catalog.
///
/// `udp` is true when the response goes over UDP and must fit the client's limit.
pub fn answer(cat: &Catalog, req: &[u8], out: &mut Vec<u8>, udp: bool) -> Outcome {
    out.clear();
    if req.len() < HEADER_LEN {
        return Outcome::Drop;
    }
    let flags = u16::from_be_bytes([req[2], req[3]]);
    if flags & FLAG_QR != 0 {
        return Outcome::Drop;
    }
    let opcode = (flags >> 11) & 0xF;
    if opcode == 4 || opcode == 5 {
        return Outcome::Slow;
    }
    let rd = flags & FLAG_RD;
    let ar = u16::from_be_bytes([req[10], req[11]]);
    // A request with an additional section may be signed (TSIG); its error answer must
    // then be signed too (RFC 8945 5.3), which only the full path does.
    let refuse = |out: &mut Vec<u8>, code: u16, flags: u16| {
        if ar > 0 {
            return Outcome::Slow;
        }
        header_only(out, req, code, flags);
        Outcome::Reply
    };
    if opcode != 0 {
        return refuse(out, rcode::NOTIMP, rd | (opcode << 11));
    }
    let qd = u16::from_be_bytes([req[4], req[5]]);
    let an = u16::from_be_bytes([req[6], req[7]]);
    let ns = u16::from_be_bytes([req[8], req[9]]);
    if qd != 1 || an != 0 {
        return refuse(out, rcode::FORMERR, rd);
    }
    let mut key = [0u8; 255];
    let Some((qend, klen)) = read_plain_name(req, HEADER_LEN, &mut key) else {
        return refuse(out, rcode::FORMERR, rd);
    };
    let (Some(qtype), Some(qclass)) = (u16_at(req, qend), u16_at(req, qend + 2)) else {
        return refuse(out, rcode::FORMERR, rd);
    };
    let question_end = qend + 4;
    let mut p = question_end;

    // Authority section: empty, except in an IXFR, which carries the client's SOA
    // there (RFC 1995 section 3). Unsigned, that is a well-formed request for a
    // transfer, refused below like AXFR (a signed one went to the full path, which
    // serves secondaries); an IXFR without exactly that SOA is malformed (as BIND
    // judges it).
    if ns != 0 || qtype == T_IXFR {
        if qtype != T_IXFR || ns != 1 {
            return refuse(out, rcode::FORMERR, rd);
        }
        let Some(np) = skip_name(req, p) else {
            return refuse(out, rcode::FORMERR, rd);
        };
        let (Some(t), Some(rdlen)) = (u16_at(req, np), u16_at(req, np + 8)) else {
            return refuse(out, rcode::FORMERR, rd);
        };
        p = np + 10 + rdlen as usize;
        if t != T_SOA || p > req.len() {
            return refuse(out, rcode::FORMERR, rd);
        }
    }

    // Additional section: at most one OPT; a TSIG means a signed request (slow path).
    let mut edns: Option<Edns> = None;
    for _ in 0..ar {
        let name_start = p;
        let Some(np) = skip_name(req, p) else {
            return refuse(out, rcode::FORMERR, rd);
        };
        let (Some(t), Some(class), Some(rdlen)) =
            (u16_at(req, np), u16_at(req, np + 2), u16_at(req, np + 8))
        else {
            return refuse(out, rcode::FORMERR, rd);
        };
        if t == T_TSIG {
            return Outcome::Slow;
        }
        if t == T_OPT {
            if edns.is_some() || req[name_start] != 0 {
                return refuse(out, rcode::FORMERR, rd);
            }
            edns = Some(Edns {
                payload: class,
                version: req[np + 5],
            });
        }
        p = np + 10 + rdlen as usize;
        if p > req.len() {
            return refuse(out, rcode::FORMERR, rd);
        }
    }

    // Header (counts patched at the end) and the question copied as received.
    out.extend_from_slice(&req[0..2]);
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&req[HEADER_LEN..question_end]);
    let mut counts = [0u16; 3];
    let mut aa = 0u16;
    let rc = resolve(
        cat,
        &key[..klen],
        qtype,
        qclass,
        out,
        &mut counts,
        &mut aa,
        edns.as_ref(),
    );

    let mut rc_full = rc;
    if let Some(e) = &edns {
        if e.version > 0 {
            out.truncate(question_end);
            counts = [0; 3];
            aa = 0;
            rc_full = rcode::BADVERS;
        }
    }
    let limit = if udp {
        match &edns {
            Some(e) => e.payload.clamp(512, OUR_UDP_PAYLOAD) as usize,
            None => 512,
        }
    } else {
        u16::MAX as usize
    };
    let opt_len = if edns.is_some() { 11 } else { 0 };
    let mut tc = 0;
    if out.len() + opt_len > limit {
        out.truncate(question_end);
        counts = [0; 3];
        tc = FLAG_TC;
    }
    if edns.is_some() {
        push_opt(out, rc_full);
        counts[2] += 1;
    }
    let f = FLAG_QR | aa | tc | rd | (rc_full & 0xF);
    out[2..4].copy_from_slice(&f.to_be_bytes());
    out[6..8].copy_from_slice(&counts[0].to_be_bytes());
    out[8..10].copy_from_slice(&counts[1].to_be_bytes());
    out[10..12].copy_from_slice(&counts[2].to_be_bytes());
    Outcome::Reply
}

/// Fills the answer and authority sections; returns the RCODE.
#[allow(clippy::too_many_arguments)]
#[inline]
fn resolve(
    cat: &Catalog,
    key: &[u8],
    qtype: u16,
    qclass: u16,
    out: &mut Vec<u8>,
    counts: &mut [u16; 3],
    aa: &mut u16,
    _edns: Option<&Edns>,
) -> u16 {
    if qclass != crate::wire::C_IN && qclass != crate::wire::C_ANY {
        return rcode::REFUSED;
    }
    match qtype {
        0 | T_OPT | T_TSIG => return rcode::FORMERR,
        // Transfers go only to secondaries that sign their request (the full path).
        T_IXFR | T_AXFR => return rcode::REFUSED,
        _ => {}
    }
    let Some(zi) = cat.find(key) else {
        return rcode::REFUSED;
    };
    let z: &CompiledZone = &cat.zones[zi].compiled;
    let apex_off = (HEADER_LEN + key.len() - z.apex.len()) as u16;

    // A delegation above or at the name: refer (not authoritative).
    if !z.cuts.is_empty() {
        let mut offs = [0u8; 128];
        let mut n = 0;
        let mut p = 0;
        while key.len() - p > z.apex.len() {
            offs[n] = p as u8;
            n += 1;
            p += 1 + key[p] as usize;
        }
        for &o in offs[..n].iter().rev() {
            if let Some(cut) = z.cuts.get(&key[o as usize..]) {
                let ptr = pointer(HEADER_LEN + o as usize);
                cut.ns.emit_with_owner(out, &ptr);
                counts[1] += cut.ns.count;
                out.extend_from_slice(&cut.glue);
                counts[2] += cut.glue_count;
                return rcode::NOERROR;
            }
        }
    }
    *aa = FLAG_AA;
    let Some(node) = z.nodes.get(key) else {
        push_soa(out, z, apex_off, counts);
        return rcode::NXDOMAIN;
    };
    if qtype == T_ANY {
        if node.sets.is_empty() {
            push_soa(out, z, apex_off, counts);
        }
        for s in &node.sets {
            out.extend_from_slice(&s.blob);
            counts[0] += s.count;
        }
        return rcode::NOERROR;
    }
    if let Some(s) = node.set(qtype) {
        out.extend_from_slice(&s.blob);
        counts[0] += s.count;
        return rcode::NOERROR;
    }
    let Some(mut target) = node.cname_target.as_deref() else {
        push_soa(out, z, apex_off, counts);
        return rcode::NOERROR;
    };
    // Follow in-zone CNAME chains (RFC 1034 section 4.3.2), owners pointing at the
    // previous CNAME's RDATA so nothing is written twice.
    let cn = node.set(T_CNAME).expect("alias node has a CNAME set");
    let mut rdata_off = out.len() + 12;
    out.extend_from_slice(&cn.blob);
    counts[0] += 1;
    for _ in 0..8 {
        if !crate::wire::is_at_or_below(target, &z.apex) || rdata_off > 0x3FFF {
            return rcode::NOERROR;
        }
        let Some(tn) = z.nodes.get(target) else {
            push_soa(out, z, apex_off, counts);
            return rcode::NXDOMAIN;
        };
        let ptr = pointer(rdata_off);
        if let Some(s) = tn.set(qtype) {
            s.emit_with_owner(out, &ptr);
            counts[0] += s.count;
            return rcode::NOERROR;
        }
        match (tn.cname_target.as_deref(), tn.set(T_CNAME)) {
            (Some(next), Some(cs)) => {
                rdata_off = out.len() + 12;
                cs.emit_with_owner(out, &ptr);
                counts[0] += 1;
                target = next;
            }
            _ => {
                push_soa(out, z, apex_off, counts);
                return rcode::NOERROR;
            }
        }
    }
    rcode::NOERROR
}

#[inline]
fn pointer(off: usize) -> [u8; 2] {
    (0xC000u16 | off as u16).to_be_bytes()
}

#[inline]
fn push_soa(out: &mut Vec<u8>, z: &CompiledZone, apex_off: u16, counts: &mut [u16; 3]) {
    if z.soa_negative.is_empty() {
        return;
    }
    out.extend_from_slice(&pointer(apex_off as usize));
    out.extend_from_slice(&z.soa_negative);
    counts[1] += 1;
}

fn push_opt(out: &mut Vec<u8>, rc: u16) {
    out.push(0);
    out.extend_from_slice(&T_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    out.push((rc >> 4) as u8);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
}

/// A header-only reply with `rcode` (used when the question cannot be read).
pub fn header_only(out: &mut Vec<u8>, req: &[u8], rc: u16, extra_flags: u16) {
    out.clear();
    out.extend_from_slice(&req[0..2]);
    let f = FLAG_QR | extra_flags | (rc & 0xF);
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// Rewrites a response in `out` as a truncated one (TC set, no records except OPT is
/// dropped too): used by rate limiting's "slip" so a real client retries over TCP.
pub fn make_truncated(out: &mut Vec<u8>, req: &[u8]) {
    let mut key = [0u8; 255];
    let qend = match read_plain_name(req, HEADER_LEN, &mut key) {
        Some((e, _)) if e + 4 <= req.len() && out.len() >= e + 4 => e + 4,
        _ => HEADER_LEN,
    };
    out.truncate(qend);
    let f = u16::from_be_bytes([out[2], out[3]]) | FLAG_TC;
    out[2..4].copy_from_slice(&f.to_be_bytes());
    let qd: u16 = if qend > HEADER_LEN { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].copy_from_slice(&[0; 6]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::sync::Arc;

    const ZONE: &str = "$TTL 300\n@ SOA ns1 hostmaster 7 3600 900 604800 60\n@ NS ns1\nns1 A 192.0.2.53\nwww 60 A 192.0.2.10\nwww 60 ALT 203.55.57.102\nwww 60 TYPE65280 \\# 16 20010db8000000000000000000000099\nalias CNAME www\nalias2 CNAME alias\nout CNAME www.example.net.\nsub NS ns.sub\nns.sub A 192.0.2.77\nx.y.z A 1.2.3.4\n";

    fn catalog() -> Catalog {
        let origin = Name::from_ascii("example.com.").unwrap();
        let z = crate::zonefile::parse(ZONE, "t", &origin, 65280).unwrap();
        Catalog {
            zones: vec![Arc::new(Zone::new(z))],
        }
    }

    fn ask(name: &str, t: RecordType, edns: bool) -> (Vec<u8>, Message) {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        let req = m.to_vec().unwrap();
        let mut out = Vec::new();
        assert_eq!(answer(&catalog(), &req, &mut out, true), Outcome::Reply);
        let resp = Message::from_vec(&out).expect("our response parses");
        (out, resp)
    }

    /// A request the fast path cannot read goes to the full path when it may be
    /// signed (so the error answer can be signed), and is answered here otherwise.
    #[test]
    fn unreadable_requests_with_additional_records_go_to_the_full_path() {
        // No question, one additional record (a TSIG could be there).
        let mut req = vec![0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut out = Vec::new();
        assert_eq!(answer(&catalog(), &req, &mut out, true), Outcome::Slow);
        req[11] = 0;
        assert_eq!(answer(&catalog(), &req, &mut out, true), Outcome::Reply);
        let r = Message::from_vec(&out).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // An unknown opcode with an additional record, and without.
        let mut req = vec![0x12, 0x34, 0x31, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(answer(&catalog(), &req, &mut out, true), Outcome::Slow);
        req[11] = 0;
        assert_eq!(answer(&catalog(), &req, &mut out, true), Outcome::Reply);
    }

    #[test]
    fn positive_answers_with_alt() {
        let (_, r) = ask("WWW.example.com.", RecordType::Unknown(65280), true);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.queries[0].name().to_ascii(), "WWW.example.com.");
        let mut addrs: Vec<String> = r
            .answers
            .iter()
            .map(|rr| match &rr.data {
                RData::Unknown { rdata, .. } => crate::alt::AltRdata::from_wire(&rdata.anything)
                    .unwrap()
                    .to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        addrs.sort();
        assert_eq!(addrs, vec!["2001:db8::99", "203.55.57.102"]);
        assert_eq!(r.answers[0].ttl, 60);
        assert!(r.edns.is_some());
    }

    #[test]
    fn negative_answers_carry_soa() {
        let (_, r) = ask("nope.example.com.", RecordType::A, false);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(
            r.authorities[0].ttl, 60,
            "negative TTL is min(SOA TTL, MINIMUM)"
        );
        assert_eq!(r.authorities[0].name.to_ascii(), "example.com.");
        let (_, r) = ask("www.example.com.", RecordType::MX, false);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities.len(), 1);
        // Empty non-terminal: NODATA, not NXDOMAIN.
        let (_, r) = ask("y.z.example.com.", RecordType::A, false);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn cname_chains_and_referrals() {
        let (_, r) = ask("alias2.example.com.", RecordType::A, false);
        assert_eq!(r.answers.len(), 3);
        assert_eq!(r.answers[2].name.to_ascii(), "www.example.com.");
        assert_eq!(r.answers[2].data, RData::A("192.0.2.10".parse().unwrap()));
        let (_, r) = ask("out.example.com.", RecordType::A, false);
        assert_eq!(r.answers.len(), 1);
        let (_, r) = ask("host.sub.example.com.", RecordType::A, false);
        assert!(!r.metadata.authoritative);
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(r.authorities[0].name.to_ascii(), "sub.example.com.");
        assert_eq!(r.additionals.len(), 1);
        let (_, r) = ask("other.org.", RecordType::A, false);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn malformed_requests_get_errors_or_nothing() {
        let cat = catalog();
        let mut out = Vec::new();
        assert_eq!(answer(&cat, &[0; 5], &mut out, true), Outcome::Drop);
        // A response is never answered.
        let mut resp = vec![0u8; 12];
        resp[2] = 0x80;
        assert_eq!(answer(&cat, &resp, &mut out, true), Outcome::Drop);
        // Header claims a question that is not there.
        let mut h = vec![0xAB, 0xCD, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(answer(&cat, &h, &mut out, true), Outcome::Reply);
        assert_eq!(out[3] & 0xF, rcode::FORMERR as u8);
        assert_eq!(&out[..2], &[0xAB, 0xCD]);
        // Truncated mid-question.
        h.extend_from_slice(b"\x03www\x07exam");
        assert_eq!(answer(&cat, &h, &mut out, true), Outcome::Reply);
        assert_eq!(out[3] & 0xF, rcode::FORMERR as u8);
        // Unknown opcode.
        let mut st = vec![0, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(answer(&cat, &st, &mut out, true), Outcome::Reply);
        assert_eq!(out[3] & 0xF, rcode::NOTIMP as u8);
        st[2] = 0x28; // UPDATE
        assert_eq!(answer(&cat, &st, &mut out, true), Outcome::Slow);
    }

    fn soa_record(serial: u32) -> hickory_proto::rr::Record {
        let soa = hickory_proto::rr::rdata::SOA::new(
            Name::from_ascii("ns1.example.com.").unwrap(),
            Name::from_ascii("hostmaster.example.com.").unwrap(),
            serial,
            3600,
            900,
            604800,
            60,
        );
        hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            0,
            RData::SOA(soa),
        )
    }

    fn rcode_of(req: &Message) -> (Outcome, Vec<u8>) {
        let mut out = Vec::new();
        let o = answer(&catalog(), &req.to_vec().unwrap(), &mut out, false);
        (o, out)
    }

    /// Unsigned transfers are refused: AXFR and IXFR (whose client SOA sits in the
    /// authority section, RFC 1995) without TSIG are REFUSED with the question echoed,
    /// while a query that really is malformed still gets FORMERR.
    #[test]
    fn unsigned_transfers_are_refused_and_malformed_queries_get_formerr() {
        for edns in [false, true] {
            let mut m = Message::new(0x1111, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::IXFR,
            ));
            m.add_authority(soa_record(1));
            if edns {
                m.set_edns(hickory_proto::op::Edns::new());
            }
            let (o, out) = rcode_of(&m);
            assert_eq!(o, Outcome::Reply, "IXFR answered on the fast path");
            let r = Message::from_vec(&out).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "IXFR");
            assert_eq!(r.queries.len(), 1);
            assert_eq!(r.queries[0].query_type(), RecordType::IXFR);
            assert!(r.answers.is_empty() && r.authorities.is_empty());
            assert_eq!(r.edns.is_some(), edns);

            let mut m = Message::new(0x2222, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::AXFR,
            ));
            if edns {
                m.set_edns(hickory_proto::op::Edns::new());
            }
            let (_, out) = rcode_of(&m);
            let r = Message::from_vec(&out).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "AXFR");
        }
        let formerr = |m: &Message, what: &str| {
            let (o, out) = rcode_of(m);
            assert_eq!(o, Outcome::Reply, "{what}");
            assert_eq!(out[3] & 0xF, rcode::FORMERR as u8, "{what}");
        };
        // An IXFR without the client's SOA, with two records, or with another type.
        let ixfr = |auth: Vec<hickory_proto::rr::Record>| {
            let mut m = Message::new(0x3333, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::IXFR,
            ));
            m.authorities = auth;
            m
        };
        formerr(&ixfr(vec![]), "IXFR without a SOA");
        formerr(
            &ixfr(vec![soa_record(1), soa_record(2)]),
            "IXFR with two SOAs",
        );
        let a = hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            0,
            RData::A("192.0.2.1".parse().unwrap()),
        );
        formerr(&ixfr(vec![a.clone()]), "IXFR with an A record");
        // An ordinary query with records in the answer or authority section.
        let mut m = Message::new(0x4444, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("www.example.com.").unwrap(),
            RecordType::A,
        ));
        m.add_authority(soa_record(1));
        formerr(&m, "A query with an authority record");
        m.authorities.clear();
        m.add_answer(a);
        formerr(&m, "A query with an answer record");
        // An IXFR whose authority record runs past the end of the message.
        let mut b = ixfr(vec![soa_record(1)]).to_vec().unwrap();
        b.truncate(b.len() - 3);
        let mut out = Vec::new();
        assert_eq!(answer(&catalog(), &b, &mut out, true), Outcome::Reply);
        assert_eq!(out[3] & 0xF, rcode::FORMERR as u8, "truncated IXFR");
    }

    #[test]
    fn bad_edns_version_and_truncation() {
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("www.example.com.").unwrap(),
            RecordType::A,
        ));
        let mut e = hickory_proto::op::Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let mut out = Vec::new();
        answer(&catalog(), &m.to_vec().unwrap(), &mut out, true);
        let r = Message::from_vec(&out).unwrap();
        // hickory names extended RCODE 16 BADSIG; in a reply to a query with OPT it is BADVERS.
        assert_eq!(u16::from(r.metadata.response_code), 16);

        // A big RRset over plain UDP (512 bytes) is truncated, but not over TCP.
        let mut text = String::from(ZONE);
        for i in 0..60 {
            text.push_str(&format!("big ALT 10.0.{}.{}\n", i / 250, i % 250));
        }
        let origin = Name::from_ascii("example.com.").unwrap();
        let cat = Catalog {
            zones: vec![Arc::new(Zone::new(
                crate::zonefile::parse(&text, "t", &origin, 65280).unwrap(),
            ))],
        };
        let mut m = Message::new(2, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("big.example.com.").unwrap(),
            RecordType::Unknown(65280),
        ));
        let req = m.to_vec().unwrap();
        answer(&cat, &req, &mut out, true);
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        answer(&cat, &req, &mut out, false);
        let r = Message::from_vec(&out).unwrap();
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 60);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let cat = catalog();
            let mut out = Vec::new();
            if answer(&cat, &b, &mut out, true) == Outcome::Reply {
                proptest::prop_assert!(out.len() >= 12);
                proptest::prop_assert_eq!(&out[..2], &b[..2]);
            }
        }
    }
}
