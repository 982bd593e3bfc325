//! A Knot DNS configuration that runs Knot, unmodified, as a secondary of `scold dns`:
//! zones pulled by TSIG-signed transfer and refreshed on the primary's signed NOTIFY.
//! The lab's TargetDNS secondary and the interop tests use it, so both run one set-up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// What a Knot secondary of `scold dns` needs to know.
pub struct Secondary<'a> {
    /// Knot's run and storage folder.
    pub dir: &'a Path,
    /// Where Knot answers.
    pub listen: SocketAddr,
    /// The primary (`scold dns`): transfers come from it, NOTIFY is taken from it.
    pub primary: SocketAddr,
    /// The TSIG key (HMAC-SHA256) both sign with: its name and base64 secret.
    pub key_name: &'a str,
    pub secret: &'a str,
    /// The zones Knot follows.
    pub zones: &'a [&'a str],
}

/// The `knot.conf` text for `s`.
pub fn secondary_conf(s: &Secondary<'_>) -> String {
    let mut zones = String::new();
    for z in s.zones {
        let _ = write!(
            zones,
            "  - domain: {z}\n    master: primary\n    acl: notify_from_primary\n"
        );
    }
    format!(
        r#"server:
    rundir: "{dir}"
    listen: {listen_ip}@{listen_port}
log:
  - target: stderr
    any: info
database:
    storage: "{dir}"
key:
  - id: {key}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: primary
    address: {primary_ip}@{primary_port}
    key: {key}
acl:
  - id: notify_from_primary
    address: {primary_ip}
    key: {key}
    action: notify
template:
  - id: default
    storage: "{dir}"
    file: "%s.zone"
zone:
{zones}"#,
        dir = s.dir.display(),
        listen_ip = s.listen.ip(),
        listen_port = s.listen.port(),
        primary_ip = s.primary.ip(),
        primary_port = s.primary.port(),
        key = s.key_name,
        secret = s.secret,
    )
}
