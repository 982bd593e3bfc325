//! The DNS update journal's entry payloads, as read back from disk after a crash.
//!
//! Properties: decoding never panics; a payload that decodes re-encodes to a payload
//! that decodes to the same change set, and replaying it twice on the zone gives the
//! same zone as replaying it once (the journal relies on replay being idempotent).
#![no_main]

#[path = "common/dns.rs"]
mod dns;

use libfuzzer_sys::fuzz_target;
use scold_dns::journal::{decode, encode};
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

fuzz_target!(|data: &[u8]| {
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
