//! The DNS update journal, as read back from disk after a crash or damage: the entry
//! payloads, and whole files.
//!
//! Properties: decoding never panics; a payload that decodes re-encodes to a payload
//! that decodes to the same change set, and replaying it twice on the zone gives the
//! same zone as replaying it once (the journal relies on replay being idempotent).
//! Reading a whole file never panics and accounts for every byte: the intact entries
//! lie back to back from the start, then either nothing, or a torn tail that runs to
//! the end, or damage right after the last intact entry with any intact entries found
//! after it lying beyond it.
#![no_main]

#[path = "common/dns.rs"]
mod dns;

use libfuzzer_sys::fuzz_target;
use scold_dns::journal::{decode, encode, scan_bytes, Tail};
use scold_dns::update::replay;
use scold_dns::zone::{Zone, ZoneData};

fn content(z: &ZoneData) -> Vec<(Vec<u8>, Vec<(u16, u32, Vec<Vec<u8>>)>)> {
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

fn check_file(data: &[u8]) {
    let s = scan_bytes(data);
    let mut p = 0u64;
    for e in &s.entries {
        assert_eq!(e.offset, p, "intact entries are back to back");
        p += e.len;
    }
    assert_eq!(s.valid_len(), p);
    match &s.tail {
        Tail::Clean => assert_eq!(p, data.len() as u64),
        Tail::Torn { offset, bytes, .. } => {
            assert_eq!(*offset, p);
            assert_eq!(
                offset + bytes,
                data.len() as u64,
                "a torn tail runs to the end"
            );
        }
        Tail::Damaged(d) => {
            assert_eq!(d.offset, p);
            assert_eq!(d.entry, s.entries.len() + 1);
            assert!(d
                .later
                .iter()
                .all(|e| e.offset > d.offset && e.offset + e.len <= data.len() as u64));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_file(data);
    let Some(cs) = decode(data) else { return };
    let again = decode(&encode(&cs)).expect("re-encoded change set decodes");
    assert_eq!(again, cs, "change set changed in a round trip");

    if cs.changes.len() > 64 {
        return;
    }
    let mut once = dns::zone_data();
    replay(&mut once, &cs);
    let mut twice = once.clone();
    replay(&mut twice, &cs);
    assert_eq!(content(&once), content(&twice), "replay is not idempotent");
    // Whatever the journal holds, the server must be able to compile and serve it.
    let _ = Zone::new(once);
});
