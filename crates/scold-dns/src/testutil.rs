//! Fixtures the unit tests of zone start-up and zone reload share.

use crate::update::{Change, ChangeSet};
use crate::wire::name_key;
use crate::zone::RRset;
use hickory_proto::rr::Name;

/// The ALT record type (private use).
pub const ALT: u16 = 65280;

/// The store key of `name`.
pub fn key(name: &str) -> Vec<u8> {
    name_key(&Name::from_ascii(name).unwrap())
}

/// An update of `www.<zone>` ALT to 10.0.0.<serial>, from `serial - 1`.
pub fn cs(zone: &str, serial: u32) -> ChangeSet {
    ChangeSet {
        zone: key(zone),
        prev_serial: serial - 1,
        serial,
        changes: vec![Change {
            name: key(&format!("www.{zone}")),
            rtype: ALT,
            set: Some(RRset {
                ttl: 30,
                rdatas: vec![vec![10, 0, 0, serial as u8]],
            }),
        }],
    }
}
