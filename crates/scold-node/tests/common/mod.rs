//! What the namespace tests of the data-path daemons share beyond `scold_testkit` (the
//! binary, root and tool checks, the namespace harness `Net`, processes): certificates
//! ([`certs`]), DNS servers and resolvers ([`dns`]), the linked consortium topology
//! ([`consortium`]) and file checksums.
#![allow(dead_code)]

pub mod certs;
pub mod consortium;
pub mod dns;

use std::path::Path;

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    scold_testkit::must(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
