//! Master files (`scold dns` zone files, operator-written or generated).
//!
//! Properties: parsing never panics; an accepted zone has its SOA, only names at or
//! below its apex, and compiles for the query path; asking the compiled zone for each
//! of its RRsets gets an answer that parses as DNS (so every accepted RDATA is valid
//! wire data for its type) and, when authoritative and complete, is not empty.
#![no_main]

use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use scold_dns::answer::{self, Outcome};
use scold_dns::wire::{is_at_or_below, name_wire};
use scold_dns::zone::{Catalog, Zone};
use std::sync::Arc;

const ALT: u16 = 65280;

fn query(name: &Name, rtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&name_wire(name));
    q.extend_from_slice(&rtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Name::from_ascii("example.com.").expect("origin");
    let Ok(z) = scold_dns::zonefile::parse(text, "fuzz.zone", &origin, ALT) else {
        return;
    };
    assert!(z.soa().is_some(), "accepted zone without SOA");
    for key in z.nodes.keys() {
        assert!(
            is_at_or_below(key, &z.apex),
            "node {key:02x?} outside the zone"
        );
    }
    let asks: Vec<(Name, u16)> = z
        .nodes
        .values()
        .flat_map(|n| n.rrsets.keys().map(move |t| (n.name.clone(), *t)))
        .take(32)
        .collect();
    let cat = Catalog {
        zones: vec![Arc::new(Zone::new(z))],
    };
    let mut out = Vec::new();
    for (name, rtype) in asks {
        let q = query(&name, rtype);
        assert_eq!(answer::answer(&cat, &q, &mut out, false), Outcome::Reply);
        let m = Message::from_vec(&out).unwrap_or_else(|e| {
            panic!("answer for {name} type {rtype} does not parse: {e}\n{out:02x?}")
        });
        assert_eq!(m.metadata.id, 0x1234);
        if m.metadata.authoritative
            && !m.metadata.truncation
            && !matches!(rtype, 0 | 41 | 250..=255)
        {
            assert!(
                !m.answers.is_empty(),
                "no answer for {name} type {rtype}, which the zone holds"
            );
        }
    }
});
