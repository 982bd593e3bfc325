//! DNS pieces several namespace tests build the same way: zone files and ALT records in
//! the RFC 3597 form, `scold dns` (TargetDNS), `scold resolver` and an unmodified Unbound
//! as a client site's resolver.
#![allow(dead_code)]

use scold_testkit::{require_tool, sh, Net};
use std::time::{Duration, Instant};

/// The private type code the tests' ALT records use.
pub const ALT_TYPE: u16 = 65280;

/// An ALT record's data for an IPv4 address in the RFC 3597 form, as an unmodified tool
/// writes and shows it: `TYPE65280 \# 4 0A01000B`.
pub fn alt_rfc3597(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().expect("ipv4");
    let hex: String = ip.octets().iter().map(|b| format!("{b:02X}")).collect();
    format!("TYPE{ALT_TYPE} \\# 4 {hex}")
}

/// A zone file: `$TTL ttl`, an SOA whose minimum (the negative TTL) is `negative`, an
/// NS `ns` at `ns_addr`, then `records` (owner-relative lines).
pub fn zone_text(
    origin: &str,
    ttl: u32,
    negative: u32,
    ns_addr: &str,
    records: &[String],
) -> String {
    let mut z = format!(
        "$ORIGIN {origin}.\n$TTL {ttl}\n\
         @ IN SOA ns.{origin}. admin.{origin}. 1 60 60 600 {negative}\n\
         @ IN NS ns\nns IN A {ns_addr}\n"
    );
    for r in records {
        z.push_str(r);
        z.push('\n');
    }
    z
}

/// A TSIG key `scold dns` accepts updates with, for `names` and `types`.
pub struct UpdateKey<'a> {
    pub name: &'a str,
    pub secret: &'a str,
    pub names: &'a str,
    pub types: &'a str,
}

/// Writes `{label}.zone` and `{label}.toml` and starts `scold dns` (TargetDNS) in
/// namespace `n` on `listen`, serving `zone` with `zone_text`.
pub fn start_scold_dns(
    net: &mut Net,
    n: &str,
    label: &str,
    listen: &str,
    zone: &str,
    zone_text: &str,
    key: Option<UpdateKey>,
) {
    let zone_file = net.write(&format!("{label}.zone"), zone_text);
    let mut cfg = format!(
        "listen = [\"{listen}\"]\njournal = \"{}\"\n[[zone]]\nname = \"{zone}\"\nfile = \"{}\"\n",
        net.p(&format!("{label}.journal")),
        zone_file.display()
    );
    if let Some(k) = key {
        cfg.push_str(&format!(
            "[[key]]\nname = \"{}\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\n\
             [[key.allow]]\nnames = {}\ntypes = {}\n",
            k.name, k.secret, k.names, k.types
        ));
    }
    let cfg = net.write(&format!("{label}.toml"), &cfg);
    net.scold(n, label, "dns", &cfg);
}

/// Starts `scold resolver` (a client site's ClientDNS) in namespace `n`; `extra` is
/// appended to its config (timeouts, NOTIFY keys).
pub fn start_scold_resolver(
    net: &mut Net,
    n: &str,
    label: &str,
    listen: &str,
    upstream: &str,
    extra: &str,
) {
    let cfg = net.write(
        &format!("{label}.toml"),
        &format!("listen = [\"{listen}\"]\nupstream = [\"{upstream}\"]\n{extra}"),
    );
    net.scold(n, label, "resolver", &cfg);
}

/// An unmodified Unbound as a client site's resolver: it listens on `ip`:53 for `allow`
/// (CIDR) and sends queries for `zone` to `upstream` (`ip@port`). `max_ttl` caps what it
/// caches, so withdrawn ALT records leave its cache in at most that many seconds.
pub struct Unbound<'a> {
    pub ip: &'a str,
    pub allow: &'a str,
    pub zone: &'a str,
    pub upstream: &'a str,
    pub max_ttl: u32,
}

/// Writes `{label}.conf` for `u`, checks it with `unbound-checkconf`, starts Unbound in
/// namespace `n` in the foreground and returns when it answers.
pub fn start_unbound(net: &mut Net, n: &str, label: &str, u: &Unbound) {
    let Unbound {
        ip,
        allow,
        zone,
        upstream,
        max_ttl,
    } = *u;
    require_tool("unbound", "unbound");
    require_tool("unbound-checkconf", "unbound");
    require_tool("dig", "bind9-dnsutils");
    let cfg = net.write(
        &format!("{label}.conf"),
        &format!(
            "server:\n\
             \x20 interface: {ip}\n  port: 53\n  access-control: {allow} allow\n\
             \x20 do-ip6: no\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n\
             \x20 verbosity: 1\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n\
             \x20 pidfile: \"{dir}/{label}.pid\"\n\
             \x20 # No DNSSEC validation for the test zone (unsigned), no trust anchor.\n\
             \x20 module-config: \"iterator\"\n\
             \x20 domain-insecure: \"{zone}\"\n\
             \x20 # What an operator sets so withdrawn ALT records leave the cache soon.\n\
             \x20 cache-max-ttl: {max_ttl}\n  cache-max-negative-ttl: {max_ttl}\n\
             \x20 serve-expired: no\n  prefetch: no\n\
             forward-zone:\n  name: \"{zone}\"\n  forward-addr: {upstream}\n\
             remote-control:\n  control-enable: no\n",
            dir = net.dir().display()
        ),
    );
    let o = sh(&format!("unbound-checkconf {}", cfg.display()));
    assert!(
        o.status.success(),
        "unbound-checkconf {}: {}{}",
        cfg.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let cfg = cfg.display().to_string();
    net.spawn(n, label, &["unbound", "-d", "-c", &cfg]);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        // Any answer (even NXDOMAIN) means it serves.
        let o = net.exec(n, &format!("dig +time=1 +tries=1 @{ip} {zone} SOA"));
        if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("status:") {
            return;
        }
        assert!(
            Instant::now() < end,
            "unbound did not answer on {ip}:53\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
