//! Fixtures the unit tests of zone start-up and zone reload share: a change set and a
//! server config.

use crate::config::DnsConfig;
use crate::rrl::RrlConfig;
use crate::update::{Change, ChangeSet};
use crate::wire::name_key;
use crate::zone::RRset;
use hickory_proto::rr::Name;
use std::path::{Path, PathBuf};

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

/// A server's config for the tests that never open its sockets: `zones` (name, file),
/// the journal `dns.journal` in `dir`, no keys, secondaries or metrics.
pub fn config(dir: &Path, zones: Vec<(String, PathBuf)>) -> DnsConfig {
    DnsConfig {
        listen: vec!["127.0.0.1:53".parse().unwrap()],
        alt_type: ALT,
        journal: dir.join("dns.journal"),
        udp_workers: 1,
        tcp_max_connections: 1,
        tcp_idle_timeout_secs: 1,
        zones,
        keys: Vec::new(),
        secondaries: Vec::new(),
        rrl: RrlConfig::default(),
        metrics: None,
    }
}
