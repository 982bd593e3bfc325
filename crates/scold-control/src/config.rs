//! The coordinator's configuration file: its listener, TLS, the targets it protects,
//! the proxy pool it may choose from.

use anyhow::Context;
use scold_link::TlsConfig;
use scold_proto::limits::{ConnLimits, Rate};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub coordinator: CoordinatorSection,
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// The read-only status page (`[admin]`), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSection>,
    #[serde(default, rename = "target", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "proxy", skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyConfig>,
    /// Alert hooks: alarm, divert, failover, restore and revocation events posted as
    /// signed JSON.
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::webhook::WebhookConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// Address the control channel listens on.
    pub listen: SocketAddr,
    /// The durable state file (redb) of a coordinator that runs alone; replicas share
    /// their state in etcd instead (`[coordinator.etcd]`).
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub state: PathBuf,
    /// Coordinator replicas: the etcd cluster they share their state in and elect their
    /// leader with. Without it, one coordinator keeps its state in `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSection>,
    /// How often nodes send heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node silent for this long is marked down.
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// How many proxies each diverted target gets.
    #[serde(default = "default_proxies_per_target")]
    pub proxies_per_target: usize,
    /// How long an `attacked` mark on a proxy holds before it may be chosen again.
    #[serde(default = "default_attacked_hold_ms")]
    pub attacked_hold_ms: u64,
    /// Upper bound of the retry backoff of a failed step.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Scheme 4.2: the TCP port where client agents take route pushes from proxies (the
    /// same at every client site, like the proxies' admission port in 4.1).
    #[serde(default = "default_client_push_port")]
    pub client_push_port: u16,
    /// Limits at the control listener's door: connections per source address, per
    /// network (/24, /56) and in total.
    #[serde(default = "default_connections")]
    pub connections: ConnLimits,
    /// Requests one identity may send, over all its connections (a sustained rate and
    /// a burst); more are refused as busy, and at most 32 may be open at once.
    #[serde(default = "default_requests")]
    pub requests: Rate,
    /// Audit events kept in the state store; the oldest go first.
    #[serde(default = "default_keep_events")]
    pub keep_events: u64,
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// `[coordinator.etcd]`: replicas of one coordinator sharing an etcd cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client addresses of the etcd members (its `--listen-client-urls`), tried in turn.
    pub endpoints: Vec<SocketAddr>,
    /// Every key the replicas write starts with this (one prefix per consortium).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Seconds of the leader's lease: a leader that stops renewing it (dead, or cut off
    /// from etcd) is replaced after this long, and stops acting itself within it.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Milliseconds a call to etcd may take.
    #[serde(default = "default_etcd_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_etcd_prefix() -> String {
    "/scold/".into()
}
fn default_lease_secs() -> u64 {
    3
}
fn default_etcd_timeout_ms() -> u64 {
    1000
}

fn default_keep_events() -> u64 {
    crate::store::DEFAULT_KEEP_EVENTS
}

fn default_requests() -> Rate {
    scold_link::channel::DEFAULT_REQUEST_RATE
}

fn default_connections() -> ConnLimits {
    scold_link::channel::DEFAULT_LIMITS
}

impl CoordinatorSection {
    /// A `[coordinator]` table listening on `listen` with its state in `state`, every
    /// other key at its default.
    pub fn new(listen: SocketAddr, state: PathBuf) -> CoordinatorSection {
        CoordinatorSection {
            listen,
            state,
            etcd: None,
            heartbeat_ms: default_heartbeat_ms(),
            down_after_ms: default_down_after_ms(),
            proxies_per_target: default_proxies_per_target(),
            attacked_hold_ms: default_attacked_hold_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            client_push_port: default_client_push_port(),
            connections: default_connections(),
            requests: default_requests(),
            keep_events: default_keep_events(),
        }
    }
}

fn default_client_push_port() -> u16 {
    5444
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_down_after_ms() -> u64 {
    3500
}
fn default_proxies_per_target() -> usize {
    2
}
fn default_attacked_hold_ms() -> u64 {
    300_000
}
fn default_max_backoff_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

/// `[admin]`: where the coordinator serves its read-only status page.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the status page.
    pub listen: SocketAddr,
    /// HTTPS with mutual TLS: the coordinator's own certificate ([tls]), and only
    /// clients with an operator certificate of the consortium CA get in. `false`: plain
    /// HTTP, allowed on a loopback address only (whoever can reach it is on this host).
    #[serde(default = "default_admin_tls")]
    pub tls: bool,
    /// Connections the page takes from one address, one network and in all.
    #[serde(default = "default_admin_connections")]
    pub connections: ConnLimits,
}

fn default_admin_tls() -> bool {
    true
}

fn default_admin_connections() -> ConnLimits {
    ConnLimits::new(16, 32, 64)
}

impl AdminSection {
    /// The status page on `listen`, over mutual TLS when `tls`.
    pub fn new(listen: SocketAddr, tls: bool) -> AdminSection {
        AdminSection {
            listen,
            tls,
            connections: default_admin_connections(),
        }
    }
}

/// Which indirect-route scheme of the paper a target uses.
pub use scold_proto::control::Scheme;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Node name; the target's certificate must be `scold://target/<name>`.
    pub name: String,
    /// The DNS name clients use, e.g. `www.example.net.`.
    pub fqdn: String,
    /// The zone that holds it, e.g. `example.net.`.
    pub zone: String,
    /// The target's normal (main-link) addresses.
    pub addresses: Vec<IpAddr>,
    /// Names of its hidden alternate gateways.
    pub gateways: Vec<String>,
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    /// TTL of the ALT records; also how long a restore waits for caches to drain.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Proxies for this target; overrides `[coordinator] proxies_per_target`.
    #[serde(default)]
    pub proxies: Option<usize>,
    /// Scheme 4.3: the service ports proxies relay, as `tcp/80`, `udp/53`, or
    /// `tcp/443+proxy` to start each connection with a PROXY protocol v2 header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    pub dns: TargetDnsConfig,
}

/// A service port relayed by proxies in scheme 4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub protocol: scold_proto::dataplane::Protocol,
    pub port: u16,
    pub proxy_protocol: bool,
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use scold_proto::dataplane::Protocol;
        let bad = || format!("service {s:?}: write tcp/PORT, udp/PORT or tcp/PORT+proxy");
        let (proto, rest) = s.split_once('/').ok_or_else(bad)?;
        let (port, proxy_protocol) = match rest.strip_suffix("+proxy") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" if !proxy_protocol => Protocol::Udp,
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Service {
            protocol,
            port,
            proxy_protocol,
        })
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)?;
        if self.proxy_protocol {
            f.write_str("+proxy")?;
        }
        Ok(())
    }
}

impl Serialize for Service {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn default_scheme() -> Scheme {
    Scheme::Resolver
}
fn default_ttl() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDnsConfig {
    /// The TargetDNS primaries that accept RFC 2136 updates, tried in order until one
    /// takes the update: `server = "192.0.2.53:53"` or
    /// `servers = ["192.0.2.53:53", "192.0.2.54:53"]`.
    #[serde(alias = "servers")]
    pub server: DnsServers,
    /// TSIG key as `algorithm:name:base64-secret`, e.g. `hmac-sha256:scold:AbC...=`.
    pub key: String,
}

/// One TargetDNS primary or several, in the order they are tried. Written as one
/// address or a list; one address is written back as one address, so a file with a
/// single `server` reads and writes as it always did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServers(pub Vec<SocketAddr>);

impl DnsServers {
    /// The addresses, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, SocketAddr> {
        self.0.iter()
    }
}

impl From<SocketAddr> for DnsServers {
    fn from(a: SocketAddr) -> Self {
        Self(vec![a])
    }
}

impl From<(std::net::Ipv4Addr, u16)> for DnsServers {
    fn from(a: (std::net::Ipv4Addr, u16)) -> Self {
        Self(vec![a.into()])
    }
}

impl From<(IpAddr, u16)> for DnsServers {
    fn from(a: (IpAddr, u16)) -> Self {
        Self(vec![a.into()])
    }
}

impl From<Vec<SocketAddr>> for DnsServers {
    fn from(v: Vec<SocketAddr>) -> Self {
        Self(v)
    }
}

impl Serialize for DnsServers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DnsServers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(SocketAddr),
            Many(Vec<SocketAddr>),
        }
        match Form::deserialize(d) {
            Ok(Form::One(a)) => Ok(Self(vec![a])),
            Ok(Form::Many(v)) if !v.is_empty() => Ok(Self(v)),
            Ok(Form::Many(_)) => Err(serde::de::Error::custom(
                "the list of DNS servers is empty: give at least one, e.g. \"192.0.2.53:53\"",
            )),
            Err(_) => Err(serde::de::Error::custom(
                "expected an address with port, e.g. \"192.0.2.53:53\", or a list of them tried in order",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub name: String,
    pub address: IpAddr,
    #[serde(default = "default_capacity")]
    pub capacity_mbps: u32,
    #[serde(default)]
    pub organisation: Option<String>,
}

pub(crate) fn default_capacity() -> u32 {
    1000
}

pub const EXAMPLE_CONFIG: &str = r#"# scold coordinator configuration.
[coordinator]
# Control channel address (mutual TLS). Only consortium nodes and operators connect here;
# it is never shown to clients.
listen = "0.0.0.0:7800"
# Durable state: target phases, registry, audit log.
state = "/var/lib/scold/coordinator.redb"
# Or replicas: several coordinators (each with this table, its own listen address and
# certificate) share their state in etcd; one leads (an etcd lease), the others stand by
# without listening and take over when its lease lapses. Nodes and `scold ctl` list every
# replica's address and talk to whichever listens. Leave `state` out then.
# [coordinator.etcd]
# endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
# prefix = "/scold/"
# lease_secs = 3
# timeout_ms = 1000
# Nodes send heartbeats this often; one silent for down_after_ms is marked down.
heartbeat_ms = 1000
down_after_ms = 3500
# Proxies per diverted target (spread over organisations, by free capacity).
proxies_per_target = 2
# A proxy that reported an attack on itself is not chosen again for this long.
attacked_hold_ms = 300000
# Failed steps are retried with exponential backoff up to this.
max_backoff_ms = 10000
# Scheme 4.2: client agents (registered with a `client` certificate) take route pushes
# from proxies on this TCP port of the address they registered with.
client_push_port = 5444
# Connections the control port takes from one address, one network (/24 or /56) and in
# all; a connection over a limit is closed before its TLS handshake, counted in
# scold_refusals_total{reason}, and logged at most once a second.
connections = { per_source = 16, per_prefix = 256, total = 4096 }
# Requests one certificate may send (per second on average, and at once); more are
# refused as `busy`. Heartbeats take a few a second.
requests = { per_sec = 50.0, burst = 200.0 }
# Audit events kept in the state file; the oldest go first.
keep_events = 100000

[tls]
# Paths are relative to this file's folder unless absolute.
ca = "ca.crt"
cert = "coordinator-main.crt"
key = "coordinator-main.key"
crl = "crl.pem"

# Prometheus metrics at http://<listen>/metrics (optional).
[metrics]
listen = "127.0.0.1:9800"

# The read-only status page (optional): each target's phase and timeline, the ALT set,
# each proxy's health and load, live. With tls = true (the default) it is HTTPS with the
# [tls] certificate above, and only a browser holding an operator certificate of the
# consortium CA gets in (`scold ca issue --role operator --name NAME`, imported as
# PKCS#12). tls = false serves plain HTTP and is refused unless listen is a loopback
# address (reach it from elsewhere through an SSH tunnel).
# [admin]
# listen = "127.0.0.1:7880"
# tls = false
# connections = { per_source = 16, per_prefix = 32, total = 64 }

# Alert hooks (optional, any number): alarm, divert, failover, restore and revocation
# events POSTed as JSON, signed: X-Scold-Signature: sha256=HMAC-SHA256(secret, body).
# Retried after 0.5, 1, 2, 4 s; a slow or dead receiver never delays a divert.
# [[webhook]]
# url = "http://127.0.0.1:9090/scold"
# secret = "a long random string, e.g. from openssl rand -base64 32"
# events = ["alarm", "divert", "failover", "restore", "revocation"]

# One table per protected target. A reload (SIGHUP, `scold ctl reload coordinator`)
# adds and removes targets and applies changed ones; a target that is not in its normal
# phase keeps its names, addresses, gateways, scheme, services and ttl (and stays, if
# its table is removed) until it is restored: the answer says what was refused.
[[target]]
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["192.0.2.10"]
gateways = ["gw1"]
# "4.1" client agents read ALT records; "4.2" proxies push routes; "4.3" proxy as NAT.
scheme = "4.1"
ttl = 10
[target.dns]
# The TargetDNS primary, or several tried in order until one takes the update:
# servers = ["192.0.2.53:53", "198.51.100.53:53"]
server = "192.0.2.53:53"
key = "hmac-sha256:scold-update:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg=="

# Proxies of the pool may be declared here; proxies that register with a consortium
# certificate join the pool too.
[[proxy]]
name = "p1"
address = "198.51.100.1"
capacity_mbps = 1000
organisation = "org-a"
"#;

impl Config {
    pub fn validate(&self, path: &Path) -> anyhow::Result<()> {
        crate::webhook::Webhooks::check(&self.webhooks)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match &self.coordinator.etcd {
            None => anyhow::ensure!(
                !self.coordinator.state.as_os_str().is_empty(),
                "{}: [coordinator] needs `state` (the state file of a coordinator that runs \
                 alone) or a [coordinator.etcd] table (replicas sharing an etcd cluster)",
                path.display()
            ),
            Some(e) => {
                anyhow::ensure!(
                    !e.endpoints.is_empty(),
                    "{}: [coordinator.etcd] endpoints is empty; list the etcd members' client \
                     addresses, e.g. [\"10.0.0.1:2379\"]",
                    path.display()
                );
                anyhow::ensure!(
                    e.prefix.starts_with('/') && e.prefix.ends_with('/'),
                    "{}: [coordinator.etcd] prefix {:?} must start and end with '/'",
                    path.display(),
                    e.prefix
                );
                anyhow::ensure!(
                    (2..=60).contains(&e.lease_secs),
                    "{}: [coordinator.etcd] lease_secs {} must be 2 to 60",
                    path.display(),
                    e.lease_secs
                );
            }
        }
        if let Some(a) = &self.admin {
            anyhow::ensure!(
                a.tls || a.listen.ip().is_loopback(),
                "{}: [admin] listen = {} without tls: the status page is served in plain HTTP \
                 only on a loopback address (127.0.0.1 or ::1); set tls = true to serve it to \
                 operator certificates over HTTPS, or listen on a loopback address",
                path.display(),
                a.listen
            );
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.targets {
            scold_proto::identity::validate_name(&t.name)
                .with_context(|| format!("{}: [[target]] name", path.display()))?;
            anyhow::ensure!(
                seen.insert(&t.name),
                "{}: target {:?} is defined twice; give each [[target]] its own name",
                path.display(),
                t.name
            );
            anyhow::ensure!(
                !t.gateways.is_empty(),
                "{}: target {:?} has no gateways; list its hidden alternate gateways in `gateways`",
                path.display(),
                t.name
            );
            anyhow::ensure!(
                !t.addresses.is_empty(),
                "{}: target {:?} has no addresses; list its main-link addresses in `addresses`",
                path.display(),
                t.name
            );
            anyhow::ensure!(
                t.fqdn.ends_with('.') && t.zone.ends_with('.') && t.fqdn.ends_with(&t.zone),
                "{}: target {:?}: fqdn {:?} must be a fully qualified name (ending in '.') inside zone {:?}",
                path.display(),
                t.name,
                t.fqdn,
                t.zone
            );
            // Without services a 4.3 divert would point the name at proxies that relay
            // nothing: every client of the target would lose it.
            anyhow::ensure!(
                t.scheme != Scheme::Nat || !t.services.is_empty(),
                "{}: target {:?} uses scheme 4.3 (proxies relay its ports as a NAT) but lists no `services`; add the ports to relay, e.g. services = [\"tcp/80\", \"tcp/443+proxy\"]",
                path.display(),
                t.name
            );
            t.dns.key.parse::<scold_dns::TsigKey>().map_err(|e| {
                anyhow::anyhow!(
                    "{}: target {:?}: dns.key: {e}; write it as `hmac-sha256:KEYNAME:BASE64SECRET`",
                    path.display(),
                    t.name
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_serialises_to_what_it_was_read_from() {
        let cfg: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        let text = toml::to_string(&cfg).unwrap();
        let again: Config = toml::from_str(&text).unwrap();
        assert_eq!(format!("{again:?}"), format!("{cfg:?}"), "{text}");
    }

    #[test]
    fn a_nat_target_without_services_is_refused() {
        let mut cfg: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        cfg.targets[0].scheme = Scheme::Nat;
        let e = cfg.validate(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("services") && e.contains("tcp/80"), "{e}");
        cfg.targets[0].services = vec!["tcp/80".parse().unwrap()];
        cfg.validate(Path::new("c.toml")).unwrap();
    }

    #[test]
    fn a_plain_status_page_must_listen_on_loopback() {
        let mut cfg: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        cfg.admin = Some(AdminSection::new("0.0.0.0:7880".parse().unwrap(), false));
        let e = cfg.validate(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("[admin]") && e.contains("loopback"), "{e}");
        cfg.admin = Some(AdminSection::new("127.0.0.1:7880".parse().unwrap(), false));
        cfg.validate(Path::new("c.toml")).unwrap();
        cfg.admin = Some(AdminSection::new("[::1]:7880".parse().unwrap(), false));
        cfg.validate(Path::new("c.toml")).unwrap();
        cfg.admin = Some(AdminSection::new("0.0.0.0:7880".parse().unwrap(), true));
        cfg.validate(Path::new("c.toml")).unwrap();
        // The example's commented table, uncommented, is what the page reads.
        let text = EXAMPLE_CONFIG
            .replace("# [admin]", "[admin]")
            .replace(
                "# listen = \"127.0.0.1:7880\"",
                "listen = \"127.0.0.1:7880\"",
            )
            .replace("# tls = false", "tls = false")
            .replace(
                "# connections = { per_source = 16",
                "connections = { per_source = 16",
            );
        let cfg: Config = toml::from_str(&text).unwrap();
        let admin = cfg.admin.as_ref().expect("[admin] read");
        assert!(!admin.tls && admin.connections.total == 64);
        cfg.validate(Path::new("c.toml")).unwrap();
    }

    #[test]
    fn services_are_written_as_they_are_read() {
        for s in ["tcp/80", "udp/53", "tcp/443+proxy"] {
            let service: Service = s.parse().unwrap();
            assert_eq!(service.to_string(), s);
        }
    }
}
