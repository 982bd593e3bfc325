//! RFC 2136 dynamic updates: the sans-IO update logic over any prerequisites and
//! changes, and the server's signed-message path (TSIG check, refusal, signed answer).
//!
//! Properties:
//! - nothing panics;
//! - a refused update changes nothing; an applied one raises the SOA serial, touches only
//!   names the key may change, keeps the apex SOA, and its journal change set replays on
//!   the old zone to exactly the new zone and survives the journal's encoding;
//! - the server answers every update with the request's id; an unsigned one is refused,
//!   a correctly signed one gets an answer its sender's verifier accepts, and one with a
//!   byte changed after signing is never accepted.
#![no_main]

#[path = "common/dns.rs"]
mod dns;

use arbitrary::Arbitrary;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, NULL, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use libfuzzer_sys::fuzz_target;
use scold_dns::journal;
use scold_dns::tsig::{now_secs, DEFAULT_FUDGE};
use scold_dns::update::{apply, replay, serial_gt, UpdateResult};
use scold_dns::wire::name_key;
use scold_dns::zone::{Zone, ZoneData};
use std::net::{Ipv4Addr, Ipv6Addr};

const NAMES: [&str; 10] = [
    "example.com.",
    "www.example.com.",
    "WWW.Example.COM.",
    "dyn.example.com.",
    "a.dyn.example.com.",
    "ns1.example.com.",
    "alias.example.com.",
    "sub.example.com.",
    "x.sub.example.com.",
    "www.example.net.",
];

#[derive(Debug, Arbitrary)]
enum Kind {
    A(u8),
    Aaaa(u8),
    Alt(u8),
    AltBytes(Vec<u8>),
    Cname(u8),
    Txt(String),
    Soa,
    Ns,
    /// No RDATA (class ANY/NONE deletes and prerequisites), of this type.
    Empty(u16),
}

#[derive(Debug, Arbitrary)]
struct Rr {
    name: u8,
    class: u8,
    ttl: u32,
    kind: Kind,
}

#[derive(Debug, Arbitrary)]
struct Input {
    zone: u8,
    zone_type: bool,
    prereqs: Vec<Rr>,
    updates: Vec<Rr>,
    damage: Option<(u16, u8)>,
    raw: Vec<u8>,
}

fn name(i: u8) -> Name {
    Name::from_ascii(NAMES[usize::from(i) % NAMES.len()]).expect("valid name")
}

fn record(r: &Rr) -> Record {
    let owner = name(r.name);
    let data = match &r.kind {
        Kind::A(x) => RData::A(Ipv4Addr::new(192, 0, 2, *x).into()),
        Kind::Aaaa(x) => {
            RData::AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(*x)).into())
        }
        Kind::Alt(x) => RData::Unknown {
            code: RecordType::Unknown(dns::ALT),
            rdata: NULL::with(vec![10, 0, 0, *x]),
        },
        Kind::AltBytes(b) => RData::Unknown {
            code: RecordType::Unknown(dns::ALT),
            rdata: NULL::with(b.iter().copied().take(40).collect()),
        },
        Kind::Cname(i) => RData::CNAME(CNAME(name(*i))),
        Kind::Txt(s) => RData::TXT(TXT::new(vec![s.chars().take(100).collect()])),
        Kind::Soa => {
            let z = dns::zone_data();
            let set = &z.node(&z.apex).expect("apex").rrsets[&6];
            // The fixture's SOA with the serial at the end bumped.
            let mut rd = set.rdatas[0].clone();
            let n = rd.len();
            rd[n - 17] = rd[n - 17].wrapping_add(1);
            RData::Unknown {
                code: RecordType::SOA,
                rdata: NULL::with(rd),
            }
        }
        Kind::Ns => RData::NS(hickory_proto::rr::rdata::NS(name(5))),
        Kind::Empty(t) => RData::Update0(RecordType::from(*t)),
    };
    let mut rec = Record::from_rdata(owner, r.ttl % 100_000, data);
    rec.dns_class = match r.class % 5 {
        0 | 1 => DNSClass::IN,
        2 => DNSClass::ANY,
        3 => DNSClass::NONE,
        _ => DNSClass::CH,
    };
    rec
}

fn update_message(input: &Input) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Update);
    let zone = if input.zone % 4 == 0 {
        name(9)
    } else {
        dns::origin()
    };
    let qt = if input.zone_type {
        RecordType::SOA
    } else {
        RecordType::A
    };
    let mut q = Query::query(zone, qt);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.answers = input.prereqs.iter().take(8).map(record).collect();
    m.authorities = input.updates.iter().take(8).map(record).collect();
    m
}

type Content = Vec<(Vec<u8>, Vec<(u16, u32, Vec<Vec<u8>>)>)>;

fn content(z: &ZoneData) -> Content {
    z.nodes
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                n.rrsets
                    .iter()
                    .map(|(t, s)| (*t, s.ttl, s.rdatas.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// The sans-IO update logic on a fresh copy of the fixture zone.
fn check_apply(msg: &Message) {
    let z0 = dns::zone_data();
    let before = content(&z0);
    let policy = dns::policy();
    match apply(msg, &z0, &policy, dns::ALT) {
        UpdateResult::Error(rc, _) => assert_ne!(rc, 0, "error with NOERROR"),
        UpdateResult::NoChange => {}
        UpdateResult::Changed { zone, changes } => {
            let old = z0.soa().expect("fixture has a SOA").serial;
            let new = zone.soa().expect("an update removed the apex SOA").serial;
            assert!(serial_gt(new, old), "serial {old} -> {new}");
            assert_eq!(changes.serial, new);
            assert_eq!(changes.zone, z0.apex);
            let after = content(&zone);
            // Only RRsets the key may change, other than the SOA's serial, differ.
            for c in &changes.changes {
                let k = name_key(&scold_dns::wire::key_to_name(&c.name));
                if c.rtype != 6 {
                    assert!(
                        policy.allows(&k, c.rtype),
                        "changed {k:02x?} type {} without permission",
                        c.rtype
                    );
                }
            }
            let mut replayed = z0.clone();
            replay(&mut replayed, &changes);
            assert_eq!(
                content(&replayed),
                after,
                "journal replay differs from the update"
            );
            let decoded =
                journal::decode(&journal::encode(&changes)).expect("journal entry decodes");
            assert_eq!(decoded, changes);
            let _ = Zone::new(*zone);
        }
    }
    assert_eq!(content(&z0), before, "the input zone was modified");
}

/// The server's path: unsigned, signed, and signed then damaged.
fn check_server(msg: &Message, damage: Option<(u16, u8)>) {
    if msg.metadata.op_code != OpCode::Update || msg.metadata.message_type != MessageType::Query {
        return;
    }
    let shared = dns::shared();
    let src = "192.0.2.9:5300".parse().expect("address");
    let Ok(unsigned) = msg.to_vec() else { return };
    if let Some(r) = shared.handle_slow(&unsigned, src, true) {
        let m = dns::check_response(&unsigned, &r);
        assert_ne!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "unsigned update accepted"
        );
    }

    // A message hickory writes but cannot read back is answered FORMERR unsigned
    // (RFC 8945 5.2: a request that cannot be interpreted); nothing to verify then.
    if Message::from_vec(&unsigned).is_err() {
        return;
    }
    let mut m = msg.clone();
    let key = dns::key();
    let Ok(Some(mut verifier)) = m.finalize(&key.signer(DEFAULT_FUDGE), now_secs()) else {
        return;
    };
    let Ok(signed) = m.to_vec() else { return };
    let r = shared
        .handle_slow(&signed, src, true)
        .expect("a signed update gets an answer");
    dns::check_response(&signed, &r);
    if let Err(e) = verifier.verify(&r) {
        panic!("answer to a signed update does not verify: {e}\n{r:02x?}");
    }

    if let Some((pos, x)) = damage {
        if x == 0 {
            return;
        }
        // Damage inside the signed body, past the id: the id is restored from the TSIG
        // record before checking (RFC 8945 section 5.2), so only the body must be intact.
        let mut bad = signed.clone();
        if unsigned.len() <= 2 {
            return;
        }
        let i = 2 + usize::from(pos) % (unsigned.len() - 2);
        bad[i] ^= x;
        if let Some(r) = shared.handle_slow(&bad, src, true) {
            let bm = dns::check_response(&bad, &r);
            assert_ne!(
                bm.metadata.response_code,
                ResponseCode::NoError,
                "damaged update accepted"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let msg = update_message(&input);
    if let Ok(bytes) = msg.to_vec() {
        // What the server works on is the message as parsed from the wire.
        if let Ok(parsed) = Message::from_vec(&bytes) {
            check_apply(&parsed);
        }
    }
    check_server(&msg, input.damage);

    if let Ok(raw) = Message::from_vec(&input.raw) {
        check_apply(&raw);
        if let Ok(bytes) = raw.to_vec() {
            if let Ok(parsed) = Message::from_vec(&bytes) {
                check_server(&parsed, None);
            }
        }
    }
});
