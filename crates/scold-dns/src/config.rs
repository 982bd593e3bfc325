//! TOML configuration of `scold dns` and `scold resolver`.
//!
//! [`DnsFile`] and [`ResolverFile`] are the files as written (tools that generate a
//! config build and serialise them); [`load_dns`] and [`load_resolver`] read and check
//! them into [`DnsConfig`] and [`ResolverConfig`]. Every error names the file, the key
//! and what to write instead.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rrl::RrlConfig;
use crate::tsig::{TsigAlgorithm, TsigKey};
use crate::update::{Grant, NamePattern, Policy};

/// A configuration error: the file, the line where known, the key, the problem and the
/// fix (the loader every daemon uses).
pub use scold_daemon::ConfigError;

/// `[[zone]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone apex, e.g. `example.com`.
    pub name: String,
    /// RFC 1035 master file (relative to the config file's directory).
    pub file: PathBuf,
}

/// `[[key.allow]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Names: `www.example.com` (exactly) or `*.example.com` (anything below).
    pub names: Vec<String>,
    /// Types: mnemonics, `ALT`, `TYPEnnn`, or `ANY` for all.
    pub types: Vec<String>,
}

/// `[[key]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key name, as the client's `nsupdate -y` or updater uses it.
    pub name: String,
    /// `hmac-sha256` or `hmac-sha512`.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// Base64 secret.
    pub secret: String,
    /// What the key may change (nothing if absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowConfig>,
}

fn default_alg() -> String {
    "hmac-sha256".into()
}

/// `[[secondary]]`: a secondary server that may transfer zones and is notified of
/// changes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Where its NOTIFY goes (address and port the secondary listens on).
    pub address: SocketAddr,
    /// The `[[key]]` it signs its transfer requests with; NOTIFY is signed with it too.
    pub key: String,
    /// Zones it may transfer and is notified of; absent: every zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// Addresses or networks its transfer requests may come from; absent: any address
    /// that signs with the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Whether to send it NOTIFY (at start and after every change).
    #[serde(default = "default_true")]
    pub notify: bool,
}

fn default_true() -> bool {
    true
}

/// A checked `[[secondary]]`.
#[derive(Debug, Clone)]
pub struct Secondary {
    /// Name for logs and metrics.
    pub name: String,
    /// NOTIFY destination.
    pub address: SocketAddr,
    /// Index of its key in [`DnsConfig::keys`].
    pub key: usize,
    /// Apex keys (lower-case wire form) of the zones it serves; empty: all.
    pub zones: Vec<Vec<u8>>,
    /// Where its transfer requests may come from; empty: anywhere.
    pub allow_from: Vec<ipnet::IpNet>,
    /// Send NOTIFY.
    pub notify: bool,
}

impl Secondary {
    /// Whether it serves the zone with apex key `apex`.
    pub fn serves(&self, apex: &[u8]) -> bool {
        self.zones.is_empty() || self.zones.iter().any(|z| z == apex)
    }

    /// Whether a transfer request from `ip` may be its.
    pub fn allows_from(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Responses per second per source prefix; 0 disables.
    pub responses_per_second: u32,
    /// Every n-th limited response is sent truncated; 0 drops all.
    pub slip: u32,
    /// IPv4 prefix length.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length.
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let d = RrlConfig::default();
        Self {
            responses_per_second: d.responses_per_second,
            slip: d.slip,
            ipv4_prefix: d.ipv4_prefix,
            ipv6_prefix: d.ipv6_prefix,
        }
    }
}

/// The raw `scold dns` file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// Addresses to serve on, UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// RR type code of ALT.
    #[serde(default = "default_alt")]
    pub alt_type: u16,
    /// Journal path (relative to the config file's directory).
    pub journal: PathBuf,
    /// UDP worker threads per address; 0 = one per CPU.
    #[serde(default)]
    pub udp_workers: usize,
    /// Largest number of concurrent TCP connections.
    #[serde(default = "default_tcp_max")]
    pub tcp_max_connections: usize,
    /// Seconds a TCP connection may stay idle.
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    /// Zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zone: Vec<ZoneConfig>,
    /// TSIG keys and what each may change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeyConfig>,
    /// Secondary servers: zone transfers and NOTIFY.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary: Vec<SecondaryConfig>,
    /// Response rate limiting.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Address of the Prometheus `/metrics` endpoint; absent: none.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

impl DnsFile {
    /// A `scold dns` file that serves on `listen` and journals to `journal`, with no zone
    /// or key yet and every other key at its default.
    pub fn new(listen: Vec<SocketAddr>, journal: PathBuf) -> DnsFile {
        DnsFile {
            listen,
            alt_type: default_alt(),
            journal,
            udp_workers: 0,
            tcp_max_connections: default_tcp_max(),
            tcp_idle_timeout_secs: default_tcp_idle(),
            zone: Vec::new(),
            key: Vec::new(),
            secondary: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            metrics: None,
        }
    }
}

fn default_alt() -> u16 {
    crate::alt::DEFAULT_ALT_TYPE
}
fn default_tcp_max() -> usize {
    256
}
fn default_tcp_idle() -> u64 {
    10
}

/// A checked `scold dns` configuration.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Addresses.
    pub listen: Vec<SocketAddr>,
    /// ALT code.
    pub alt_type: u16,
    /// Journal path (absolute or relative to the working directory).
    pub journal: PathBuf,
    /// UDP workers per address.
    pub udp_workers: usize,
    /// TCP connection limit.
    pub tcp_max_connections: usize,
    /// TCP idle timeout.
    pub tcp_idle_timeout_secs: u64,
    /// Zones: name and file.
    pub zones: Vec<(String, PathBuf)>,
    /// Keys with their policies (same order).
    pub keys: Vec<(TsigKey, Policy)>,
    /// Secondaries.
    pub secondaries: Vec<Secondary>,
    /// Rate limiting.
    pub rrl: RrlConfig,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
}

/// Reads and checks a `scold dns` config file.
pub fn load_dns(path: &Path) -> Result<DnsConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(path, format!("cannot read it: {e}")).hint(format!(
            "pass an existing file to --config; `scold dns --example-config > {}` writes one",
            path.display()
        ))
    })?;
    parse_dns(&text, path)
}

/// Reads a `scold dns` config file as written (to compare on reload) and as checked.
pub fn load_dns_file(path: &Path) -> Result<(DnsFile, DnsConfig), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(path, format!("cannot read it: {e}"))
            .hint("restore the file; the running configuration stays in force")
    })?;
    let cfg = parse_dns(&text, path)?;
    let raw: DnsFile = scold_daemon::parse(&text, path, "scold dns --example-config")?;
    Ok((raw, cfg))
}

/// Parses `scold dns` config text; `path` names the file in errors and anchors relative paths.
pub fn parse_dns(text: &str, path: &Path) -> Result<DnsConfig, ConfigError> {
    let err = |msg: String| ConfigError::new(path, msg);
    let raw: DnsFile = scold_daemon::parse(text, path, "scold dns --example-config")?;
    if raw.listen.is_empty() {
        return Err(err(
            "`listen` is empty: give at least one address, e.g. listen = [\"127.0.0.1:53\"]".into(),
        ));
    }
    if !(65280..=65534).contains(&raw.alt_type) {
        return Err(err(format!(
            "`alt_type` = {} is not a private-use type: pick one in 65280..=65534",
            raw.alt_type
        )));
    }
    if raw.zone.is_empty() {
        return Err(err("no [[zone]]: add one with `name` and `file`".into()));
    }
    let mut zones = Vec::new();
    for (i, z) in raw.zone.iter().enumerate() {
        hickory_proto::rr::Name::from_ascii(&z.name).map_err(|e| {
            err(format!(
                "zone[{i}].name `{}` is not a domain name: {e}",
                z.name
            ))
        })?;
        zones.push((z.name.clone(), scold_daemon::resolve(path, &z.file)));
    }
    let mut keys = Vec::new();
    for (i, k) in raw.key.iter().enumerate() {
        let alg: TsigAlgorithm = k
            .algorithm
            .parse()
            .map_err(|e| err(format!("key[{i}].algorithm: {e}")))?;
        let key =
            TsigKey::new(&k.name, alg, &k.secret).map_err(|e| err(format!("key[{i}]: {e}")))?;
        let mut grants = Vec::new();
        for (j, a) in k.allow.iter().enumerate() {
            let mut names = Vec::new();
            for n in &a.names {
                names.push(
                    NamePattern::parse(n)
                        .map_err(|e| err(format!("key[{i}].allow[{j}].names: {e}")))?,
                );
            }
            let mut types: Option<BTreeSet<u16>> = Some(BTreeSet::new());
            for t in &a.types {
                if t.eq_ignore_ascii_case("ANY") || t == "*" {
                    types = None;
                    break;
                }
                let code = crate::wire::parse_type(t, raw.alt_type).ok_or_else(|| {
                    err(format!(
                        "key[{i}].allow[{j}].types: `{t}` is not a record type (use e.g. ALT, A, AAAA, TYPE65280 or ANY)"
                    ))
                })?;
                if let Some(s) = types.as_mut() {
                    s.insert(code);
                }
            }
            grants.push(Grant { names, types });
        }
        keys.push((key, Policy { grants }));
    }
    let mut secondaries = Vec::new();
    for (i, s) in raw.secondary.iter().enumerate() {
        let key = raw
            .key
            .iter()
            .position(|k| {
                crate::wire::name_key(&hickory_proto::rr::Name::from_ascii(&k.name).unwrap_or_default())
                    == crate::wire::name_key(&hickory_proto::rr::Name::from_ascii(&s.key).unwrap_or_default())
            })
            .ok_or_else(|| {
                err(format!(
                    "secondary[{i}].key `{}` is not the name of a [[key]]: add the key the secondary signs its transfers with as a [[key]] (without [[key.allow]] it may change nothing)",
                    s.key
                ))
            })?;
        let mut zs = Vec::new();
        for z in &s.zones {
            let apex = hickory_proto::rr::Name::from_ascii(z)
                .ok()
                .map(|n| crate::wire::name_key(&n))
                .filter(|k| {
                    raw.zone.iter().any(|c| {
                        hickory_proto::rr::Name::from_ascii(&c.name)
                            .is_ok_and(|n| crate::wire::name_key(&n) == *k)
                    })
                })
                .ok_or_else(|| {
                    err(format!(
                        "secondary[{i}].zones: `{z}` is not one of the [[zone]] names"
                    ))
                })?;
            zs.push(apex);
        }
        let mut allow_from = Vec::new();
        for a in &s.allow_from {
            let net = a
                .parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    err(format!(
                        "secondary[{i}].allow_from: `{a}` is not an address or a network (write e.g. \"192.0.2.54\" or \"192.0.2.0/24\")"
                    ))
                })?;
            allow_from.push(net);
        }
        secondaries.push(Secondary {
            name: s.name.clone(),
            address: s.address,
            key,
            zones: zs,
            allow_from,
            notify: s.notify,
        });
    }
    let rl = &raw.rate_limit;
    if rl.ipv4_prefix > 32 || rl.ipv6_prefix > 128 {
        return Err(err(
            "rate_limit.ipv4_prefix must be <= 32 and ipv6_prefix <= 128".into(),
        ));
    }
    Ok(DnsConfig {
        listen: raw.listen,
        alt_type: raw.alt_type,
        journal: scold_daemon::resolve(path, &raw.journal),
        udp_workers: raw.udp_workers,
        tcp_max_connections: raw.tcp_max_connections.max(1),
        tcp_idle_timeout_secs: raw.tcp_idle_timeout_secs.max(1),
        zones,
        keys,
        secondaries,
        rrl: RrlConfig {
            responses_per_second: rl.responses_per_second,
            slip: rl.slip,
            ipv4_prefix: rl.ipv4_prefix,
            ipv6_prefix: rl.ipv6_prefix,
        },
        metrics: raw.metrics,
    })
}

/// The commented example printed by `scold dns --example-config`.
pub const DNS_EXAMPLE: &str = r#"# scold dns: authoritative server of a target site (TargetDNS).
# Relative paths are taken from the directory of this file.

# Addresses to answer on, over both UDP and TCP.
listen = ["127.0.0.1:5353", "[::1]:5353"]

# RR type code of ALT records (private use: 65280..=65534).
alt_type = 65280

# Every accepted update is written here (and fsynced) before it is acknowledged,
# and replayed at start. Keep it on persistent storage.
journal = "dns.journal"

# UDP worker threads per address (0 = one per CPU).
udp_workers = 0

# TCP: concurrent connection limit and idle timeout.
tcp_max_connections = 256
tcp_idle_timeout_secs = 10

[[zone]]
name = "example.com"
# RFC 1035 master file; may use `ALT 203.0.113.7` and `TYPE65280 \# 4 CB007107`.
file = "example.com.zone"

# TSIG keys (RFC 8945). Generate a secret with `tsig-keygen -a hmac-sha256 NAME`
# or `openssl rand -base64 32`. Use the same key with `nsupdate -y hmac-sha256:NAME:SECRET`.
[[key]]
name = "coordinator"
algorithm = "hmac-sha256"          # or "hmac-sha512"
secret = "c2NvbGQtZXhhbXBsZS1zZWNyZXQtY2hhbmdlLW1lIQ=="
# What this key may change. Names: "www.example.com" exactly, or "*.example.com" for
# anything below. Types: mnemonics, ALT, TYPEnnn, or ANY. Without [[key.allow]] the key
# may change nothing.
[[key.allow]]
names = ["*.example.com"]
types = ["ALT", "A", "AAAA"]

# Secondary servers (BIND, Knot, NSD, another scold dns). Each may transfer the zones
# (AXFR, and IXFR from the journal's recent changes) over TCP, only when its request is
# signed with its key; an unsigned or wrongly signed request is refused. It is sent a
# NOTIFY signed with the same key at start and after every change, retried with
# back-off until it answers.
[[key]]
name = "secondary1"
secret = "c2NvbGQtZXhhbXBsZS1zZWNvbmRhcnktY2hhbmdlLW1lIQ=="
[[secondary]]
name = "ns2"
address = "192.0.2.54:53"        # where NOTIFY goes
key = "secondary1"               # a [[key]] above
# zones = ["example.com"]        # default: every zone
# allow_from = ["192.0.2.54", "2001:db8::/64"]   # default: any address holding the key
# notify = true

# Prometheus metrics at http://ADDRESS/metrics (answers by path, updates by outcome,
# rate-limited answers, transfers, NOTIFY). Leave out for none.
# metrics = "127.0.0.1:9853"

# Response rate limiting per source prefix (UDP only). 0 disables.
[rate_limit]
responses_per_second = 200
slip = 2            # every 2nd limited answer goes out truncated, so real clients retry over TCP
ipv4_prefix = 24
ipv6_prefix = 56
"#;

/// `[[notify_key]]` of the resolver: a proxy allowed to flush names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyKeyConfig {
    /// Key name.
    pub name: String,
    /// `hmac-sha256` or `hmac-sha512`.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// Base64 secret.
    pub secret: String,
}

/// The raw `scold resolver` file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverFile {
    /// Addresses to serve on, UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Upstream servers, tried in order.
    pub upstream: Vec<SocketAddr>,
    /// Largest number of cached answers.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
    /// Cap on how long anything is cached, seconds.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: u32,
    /// Seconds to wait for an upstream answer before trying the next.
    #[serde(default = "default_up_timeout")]
    pub upstream_timeout_ms: u64,
    /// Keys whose signed NOTIFY flushes a cached name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify_key: Vec<NotifyKeyConfig>,
    /// Address of the Prometheus `/metrics` endpoint; absent: none.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

impl ResolverFile {
    /// A `scold resolver` file that serves on `listen` and forwards to `upstream`, with
    /// no NOTIFY key yet and every other key at its default.
    pub fn new(listen: Vec<SocketAddr>, upstream: Vec<SocketAddr>) -> ResolverFile {
        ResolverFile {
            listen,
            upstream,
            cache_entries: default_cache(),
            max_ttl: default_max_ttl(),
            upstream_timeout_ms: default_up_timeout(),
            notify_key: Vec::new(),
            metrics: None,
        }
    }
}

fn default_cache() -> usize {
    100_000
}
fn default_max_ttl() -> u32 {
    86_400
}
fn default_up_timeout() -> u64 {
    1500
}

/// A checked resolver configuration.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Addresses.
    pub listen: Vec<SocketAddr>,
    /// Upstreams.
    pub upstream: Vec<SocketAddr>,
    /// Cache size.
    pub cache_entries: usize,
    /// TTL cap.
    pub max_ttl: u32,
    /// Upstream timeout.
    pub upstream_timeout_ms: u64,
    /// NOTIFY keys.
    pub notify_keys: Vec<TsigKey>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
}

/// Reads and checks a `scold resolver` config file.
pub fn load_resolver(path: &Path) -> Result<ResolverConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(path, format!("cannot read it: {e}")).hint(format!(
            "pass an existing file to --config; `scold resolver --example-config > {}` writes one",
            path.display()
        ))
    })?;
    parse_resolver(&text, path)
}

/// Parses resolver config text.
pub fn parse_resolver(text: &str, path: &Path) -> Result<ResolverConfig, ConfigError> {
    let err = |msg: String| ConfigError::new(path, msg);
    let raw: ResolverFile = scold_daemon::parse(text, path, "scold resolver --example-config")?;
    if raw.listen.is_empty() {
        return Err(err(
            "`listen` is empty: give at least one address, e.g. listen = [\"127.0.0.1:53\"]".into(),
        ));
    }
    if raw.upstream.is_empty() {
        return Err(err("`upstream` is empty: give the recursive or authoritative server(s) to forward to, e.g. upstream = [\"192.0.2.53:53\"]".into()));
    }
    let mut notify_keys = Vec::new();
    for (i, k) in raw.notify_key.iter().enumerate() {
        let alg: TsigAlgorithm = k
            .algorithm
            .parse()
            .map_err(|e| err(format!("notify_key[{i}].algorithm: {e}")))?;
        notify_keys.push(
            TsigKey::new(&k.name, alg, &k.secret)
                .map_err(|e| err(format!("notify_key[{i}]: {e}")))?,
        );
    }
    Ok(ResolverConfig {
        listen: raw.listen,
        upstream: raw.upstream,
        cache_entries: raw.cache_entries.max(16),
        max_ttl: raw.max_ttl,
        upstream_timeout_ms: raw.upstream_timeout_ms.max(50),
        notify_keys,
        metrics: raw.metrics,
    })
}

/// The commented example printed by `scold resolver --example-config`.
pub const RESOLVER_EXAMPLE: &str = r#"# scold resolver: caching forwarding resolver of a client site (ClientDNS).

# Addresses to answer on, over both UDP and TCP.
listen = ["127.0.0.1:5300"]

# Servers to forward to, tried in order (a recursive resolver, or TargetDNS itself).
upstream = ["127.0.0.1:5353"]

# Cache size (answers) and the longest time anything is kept, in seconds.
cache_entries = 100000
max_ttl = 86400

# How long to wait for an upstream before trying the next, in milliseconds.
upstream_timeout_ms = 1500

# Prometheus metrics at http://ADDRESS/metrics (answers by source, NOTIFY outcomes).
# metrics = "127.0.0.1:9854"

# Proxies allowed to flush a cached name at once with a TSIG-signed NOTIFY
# (paper Section 3 step 4). Unsigned or wrongly signed NOTIFY is ignored and logged.
[[notify_key]]
name = "proxy1"
algorithm = "hmac-sha256"
secret = "cHJveHkxLWV4YW1wbGUtc2VjcmV0LWNoYW5nZS1tZSE="
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_parse() {
        let c = parse_dns(DNS_EXAMPLE, Path::new("/etc/scold/dns.toml")).unwrap();
        assert_eq!(c.zones[0].1, PathBuf::from("/etc/scold/example.com.zone"));
        assert_eq!(c.journal, PathBuf::from("/etc/scold/dns.journal"));
        assert_eq!(c.keys.len(), 2);
        assert!(c.keys[0].1.allows(b"\x03www\x07example\x03com\x00", 65280));
        assert!(!c.keys[0].1.allows(b"\x03www\x07example\x03com\x00", 16));
        // The secondary's key may transfer, and change nothing.
        assert_eq!(c.secondaries.len(), 1);
        let sec = &c.secondaries[0];
        assert_eq!(c.keys[sec.key].0.name, "secondary1");
        assert!(c.keys[sec.key].1.grants.is_empty());
        assert!(sec.notify && sec.serves(b"\x07example\x03com\x00"));
        assert!(sec.allows_from("203.0.113.9".parse().unwrap()));
        let r = parse_resolver(RESOLVER_EXAMPLE, Path::new("r.toml")).unwrap();
        assert_eq!(r.notify_keys.len(), 1);
    }

    #[test]
    fn raw_files_serialise_to_what_they_were_read_from() {
        let path = Path::new("/etc/scold/dns.toml");
        let raw: DnsFile = toml::from_str(DNS_EXAMPLE).unwrap();
        let text = toml::to_string(&raw).unwrap();
        assert_eq!(
            format!("{:?}", parse_dns(&text, path).unwrap()),
            format!("{:?}", parse_dns(DNS_EXAMPLE, path).unwrap()),
            "{text}"
        );
        let raw: ResolverFile = toml::from_str(RESOLVER_EXAMPLE).unwrap();
        let text = toml::to_string(&raw).unwrap();
        assert_eq!(
            format!("{:?}", parse_resolver(&text, path).unwrap()),
            format!("{:?}", parse_resolver(RESOLVER_EXAMPLE, path).unwrap()),
            "{text}"
        );
        // A file built from the constructors alone is complete.
        let listen = vec!["127.0.0.1:53".parse().unwrap()];
        let mut dns = DnsFile::new(listen.clone(), "dns.journal".into());
        dns.zone.push(ZoneConfig {
            name: "example.com".into(),
            file: "example.com.zone".into(),
        });
        let c = parse_dns(&toml::to_string(&dns).unwrap(), path).unwrap();
        assert_eq!(c.alt_type, crate::alt::DEFAULT_ALT_TYPE);
        assert_eq!(c.journal, PathBuf::from("/etc/scold/dns.journal"));
        let r = ResolverFile::new(listen.clone(), vec!["127.0.0.1:5353".parse().unwrap()]);
        let c = parse_resolver(&toml::to_string(&r).unwrap(), path).unwrap();
        assert_eq!(c.upstream_timeout_ms, 1500);
        assert!(c.notify_keys.is_empty());
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let bad = DNS_EXAMPLE.replace("alt_type = 65280", "alt_type = 99");
        let e = parse_dns(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml") && e.contains("alt_type") && e.contains("65280..=65534"),
            "{e}"
        );
        let bad = DNS_EXAMPLE.replace("types = [\"ALT\", \"A\", \"AAAA\"]", "types = [\"BOGUS\"]");
        let e = parse_dns(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key[0].allow[0].types") && e.contains("BOGUS"),
            "{e}"
        );
        let bad = DNS_EXAMPLE.replace("udp_workers = 0", "udp_workerz = 0");
        let e = parse_dns(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp_workerz"), "{e}");
        let bad = DNS_EXAMPLE.replace("algorithm = \"hmac-sha256\"", "algorithm = \"hmac-md5\"");
        let e = parse_dns(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key[0].algorithm") && e.contains("hmac-sha512"),
            "{e}"
        );
        let with_sec = |sec: &str| {
            let text = DNS_EXAMPLE.replace(
                "[[secondary]]\nname = \"ns2\"",
                &format!("[[secondary]]\nname = \"ns2\"\n{sec}"),
            );
            parse_dns(&text, Path::new("x.toml"))
        };
        let c = with_sec("zones = [\"EXAMPLE.com.\"]\nallow_from = [\"192.0.2.54\", \"2001:db8::/64\"]\nnotify = false").unwrap();
        let sec = &c.secondaries[0];
        assert!(!sec.notify && sec.serves(b"\x07example\x03com\x00"));
        assert!(!sec.serves(b"\x07example\x03net\x00"));
        assert!(sec.allows_from("192.0.2.54".parse().unwrap()));
        assert!(sec.allows_from("::ffff:192.0.2.54".parse().unwrap()));
        assert!(sec.allows_from("2001:db8::7".parse().unwrap()));
        assert!(!sec.allows_from("192.0.2.55".parse().unwrap()));
        let e = with_sec("zones = [\"example.net\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secondary[0].zones") && e.contains("example.net"),
            "{e}"
        );
        let e = with_sec("allow_from = [\"192.0.2.0/33\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("secondary[0].allow_from"), "{e}");
        let e = parse_dns(
            &DNS_EXAMPLE.replace("key = \"secondary1\"", "key = \"nokey\""),
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("secondary[0].key") && e.contains("nokey"), "{e}");
        let e = parse_resolver(
            "listen = [\"127.0.0.1:1\"]\nupstream = []\n",
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream"), "{e}");
    }
}
