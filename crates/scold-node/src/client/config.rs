//! `scold client`'s configuration: the TOML file ([`Config`]), its `[agent]` table
//! ([`AgentSection`], the stub resolver of scheme 4.1) and `[agent.push]`
//! ([`PushSection`], the push service of scheme 4.2), and the commented example
//! (`scold client --example-config`).

use crate::node::TunnelSection;
use scold_proto::dataplane::{Command, Encap, Peer, Route, Via};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const EXAMPLE: &str = r#"# scold client: the client agent of scheme 4.1 (a SCOLD-aware stub resolver) and of
# scheme 4.2 (proxies push routes to it), or a static tunnel to a proxy.

# The TUN device, and SCOLD's own routing table behind one policy rule.
tun_name = "scold-cl"
table = 5103
rule_priority = 5103

[tunnel]
# Local UDP socket for udp and wireguard tunnels (port 0: any free port).
listen = "0.0.0.0:0"
ipip = false
# WireGuard private key (make one with `scold client --genkey`), or private_key_file.
private_key = "oK1m8k5gGv2cYxq0yRZt5oGv3s8Jk8oB1rKk7l0d0E0="
outer_mtu = 1500
# The encapsulation asked of proxies; it also sets the TUN MTU (outer_mtu minus its
# overhead).
encap = "wireguard"
# Packet-engine threads (default 1): each has its own UDP socket on the tunnel port
# and its own TUN queue, and inner flows are spread over them; about one per core the
# node can spare for packets. Changing it needs a restart.
engines = 1

# The agent: point resolv.conf at `listen` (nameserver 127.0.0.53).
[agent]
listen = "127.0.0.53:53"
# The site's resolver (ClientDNS), tried in order. Any resolver works unmodified; it must
# pass the ALT type through (every current one does, as an unknown type) and must not
# keep a withdrawn ALT set for long. For Unbound: cache-max-ttl and
# cache-max-negative-ttl no longer than the ALT TTL the coordinator writes (its target
# ttl), serve-expired: no; a forward-zone or stub-zone for the target's zone if it is not
# found by iteration; no DNSSEC validation failure for it (domain-insecure, if unsigned).
upstream = ["192.0.2.53:53"]
# The consortium CA certificate: proxies must present a certificate it issued, with role
# proxy. (Optional: its CRL, re-read while running.) Relative to this file.
ca = "ca.crt"
# crl = "crl.pem"
# RR type code of ALT records.
alt_type = 65280
# TCP port of the proxies' admission service.
admission_port = 5443
# How often the admission connection is probed, and how long an answer may take before
# the agent moves to the next proxy. Each answer also carries the proxy's count of our
# tunnel packets that arrived: when we send and none arrive for as many probes as fit in
# probe_timeout_ms, the agent moves too.
probe_interval_ms = 200
probe_timeout_ms = 600
# Limit of one admission (TCP + TLS + answer) and of one upstream DNS query.
admission_timeout_ms = 1000
upstream_timeout_ms = 1500
# WireGuard persistent keepalive towards the proxy.
keepalive_secs = 10
# A name's ALT set is asked again when its TTL runs out, within these bounds: at least
# min_refresh_ms apart (100 or more; default 1000), at most max_refresh_secs. A low
# value lets the agent see the coordinator's reset sooner when the ALT TTL is 0, at the
# cost of more queries to the site's resolver. (Older configs say min_refresh_secs =
# N, which is still read as N * 1000 ms; set one of the two.) A proxy whose
# self-defence declares it under attack tells the agent to move over the admission
# connection without waiting for the re-read.
min_refresh_ms = 1000
max_refresh_secs = 300

# Scheme 4.2: proxies push routes here on the coordinator's order. A push is taken only
# from a certificate of the consortium CA (agent.ca) with role proxy, connecting from an
# address in the target's ALT set (asked of agent.upstream). The port must be the
# coordinator's client_push_port.
[agent.push]
listen = "0.0.0.0:5444"
# This agent's certificate (`scold ca issue --role client --name NAME`) and key.
cert = "client-site1.crt"
key = "client-site1.key"
# Push connections per source address, per network (/24, /56) and in total, counted
# before the TLS handshake (only proxies push, a few names each).
# connections = { per_source = 4, per_prefix = 16, total = 64 }
# handshake_timeout_ms = 3000

# Scheme 4.2: the agent registers with the coordinator, which assigns it to a proxy of
# each diverted target. `address`: where proxies reach the push port.
[control]
coordinator = "192.0.2.1:7800"
address = "198.51.100.7"
[control.tls]
ca = "ca.crt"
cert = "client-site1.crt"
key = "client-site1.key"

# Static mode (no [agent]): the proxy and the routes are fixed.
# source = "198.51.100.7"     # source address of tunnelled packets
# [[peers]]
# name = "proxy-1"
# address = "192.0.2.10"
# port = 51820
# encap = "wireguard"
# public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
# keepalive_secs = 25
# [[routes]]
# destination = "203.0.113.10/32"
# via = { peer = "proxy-1" }
"#;

fn default_tun() -> String {
    "scold-cl".into()
}
fn default_table() -> u32 {
    5103
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tunnel: TunnelSection,
    #[serde(default = "default_tun")]
    pub tun_name: String,
    #[serde(default)]
    pub source: Option<IpAddr>,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The stub resolver of scheme 4.1 (and the push service of 4.2).
    #[serde(default)]
    pub agent: Option<AgentSection>,
    /// Scheme 4.2: the link to the coordinator, which registers the agent (with
    /// `address`, where proxies reach its push port).
    #[serde(
        default,
        skip_serializing_if = "crate::node::control::ControlSection::is_empty"
    )]
    pub control: crate::node::control::ControlSection,
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 53], 53))
}
fn default_alt_type() -> u16 {
    scold_dns::alt::DEFAULT_ALT_TYPE
}
fn default_admission_port() -> u16 {
    scold_proto::admission::DEFAULT_PORT
}
fn default_probe_interval() -> u64 {
    200
}
fn default_probe_timeout() -> u64 {
    600
}
fn default_admission_timeout() -> u64 {
    1000
}
fn default_upstream_timeout() -> u64 {
    1500
}
fn default_keepalive() -> u16 {
    10
}
/// The least wait between two reads of a name's ALT set unless configured.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// The lowest `min_refresh_ms` allowed: more often than ten times a second only loads
/// the site's resolver (and the agent looks at re-queries at most that often).
pub const MIN_REFRESH_FLOOR_MS: u64 = 100;

fn default_max_refresh() -> u64 {
    300
}

/// `[agent]`: the SCOLD-aware stub resolver.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Where applications' queries arrive (UDP and TCP).
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// The site's resolvers (ClientDNS), tried in order.
    pub upstream: Vec<SocketAddr>,
    /// The consortium CA certificate (relative paths: from the config file's directory).
    pub ca: PathBuf,
    #[serde(default)]
    pub crl: Option<PathBuf>,
    #[serde(default = "default_alt_type")]
    pub alt_type: u16,
    #[serde(default = "default_admission_port")]
    pub admission_port: u16,
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: u64,
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout_ms: u64,
    #[serde(default = "default_admission_timeout")]
    pub admission_timeout_ms: u64,
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_ms: u64,
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
    /// Least wait between two reads of a name's ALT set, in milliseconds (default 1000,
    /// at least [`MIN_REFRESH_FLOOR_MS`]); see [`AgentSection::min_refresh`].
    #[serde(default)]
    pub min_refresh_ms: Option<u64>,
    /// The same in whole seconds, as older configs say it; only one of the two is set.
    #[serde(default)]
    pub min_refresh_secs: Option<u64>,
    #[serde(default = "default_max_refresh")]
    pub max_refresh_secs: u64,
    /// Scheme 4.2: take route pushes from proxies.
    #[serde(default)]
    pub push: Option<PushSection>,
}

fn default_push_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], scold_proto::push::DEFAULT_PORT))
}

/// `[agent.push]`: where proxies push routes (scheme 4.2), and the client's consortium
/// certificate it shows them. The CA (and CRL) are the agent's.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    /// TCP address of the push service; the port must be the coordinator's
    /// `client_push_port`.
    #[serde(default = "default_push_listen")]
    pub listen: SocketAddr,
    /// Certificate (role client) and key, relative to the config file.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Push connections per source address, per network (/24, /56) and in total,
    /// counted before the TLS handshake; more are closed at once. Only proxies push, a
    /// few names each, so the defaults are small.
    #[serde(default = "default_push_connections")]
    pub connections: scold_proto::limits::ConnLimits,
    /// Milliseconds a push's TLS handshake may take.
    #[serde(default = "default_push_handshake_ms")]
    pub handshake_timeout_ms: u64,
}

impl PushSection {
    /// A push service on `listen` showing `cert` and `key`, every other key at its
    /// default.
    pub fn new(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> PushSection {
        PushSection {
            listen,
            cert,
            key,
            connections: default_push_connections(),
            handshake_timeout_ms: default_push_handshake_ms(),
        }
    }
}

fn default_push_connections() -> scold_proto::limits::ConnLimits {
    scold_proto::limits::ConnLimits::new(4, 16, 64)
}

fn default_push_handshake_ms() -> u64 {
    3000
}

impl AgentSection {
    fn check(&self, file: &Path) -> anyhow::Result<()> {
        let f = file.display();
        if self.upstream.is_empty() {
            anyhow::bail!("config file {f}: agent.upstream is empty; name the site's resolver, e.g. upstream = [\"192.0.2.53:53\"]");
        }
        if self.upstream.contains(&self.listen) {
            anyhow::bail!(
                "config file {f}: agent.upstream contains agent.listen {}: queries would loop",
                self.listen
            );
        }
        if !(65280..=65534).contains(&self.alt_type) {
            anyhow::bail!("config file {f}: agent.alt_type = {} is outside the private-use range 65280..=65534", self.alt_type);
        }
        if self.probe_interval_ms == 0
            || self.probe_timeout_ms == 0
            || self.admission_timeout_ms == 0
            || self.upstream_timeout_ms == 0
        {
            anyhow::bail!("config file {f}: agent time limits must be above zero");
        }
        match (self.min_refresh_ms, self.min_refresh_secs) {
            (Some(ms), Some(secs)) => anyhow::bail!(
                "config file {f}: agent sets both min_refresh_ms = {ms} and min_refresh_secs = {secs}; keep only min_refresh_ms (min_refresh_secs = N is the older way to write min_refresh_ms = N * 1000)"
            ),
            (None, Some(0)) => anyhow::bail!(
                "config file {f}: agent.min_refresh_secs = 0; for less than a second write min_refresh_ms instead (at least {MIN_REFRESH_FLOOR_MS})"
            ),
            (Some(ms), None) if ms < MIN_REFRESH_FLOOR_MS => anyhow::bail!(
                "config file {f}: agent.min_refresh_ms = {ms} is below {MIN_REFRESH_FLOOR_MS}: re-reading the ALT set more than ten times a second only loads the site's resolver; set {MIN_REFRESH_FLOOR_MS} or more"
            ),
            _ => {}
        }
        if self.max_refresh_secs == 0 {
            anyhow::bail!(
                "config file {f}: agent.max_refresh_secs = 0; set it to at least 1 (seconds)"
            );
        }
        let min = self.min_refresh();
        if min > Duration::from_secs(self.max_refresh_secs) {
            anyhow::bail!(
                "config file {f}: the agent's least ALT re-read interval ({} ms) is above max_refresh_secs = {}; lower min_refresh_ms or raise max_refresh_secs",
                min.as_millis(),
                self.max_refresh_secs
            );
        }
        Ok(())
    }

    /// The least wait between two reads of a name's ALT set: `min_refresh_ms`, else
    /// `min_refresh_secs` (the older key), else [`DEFAULT_MIN_REFRESH`].
    pub fn min_refresh(&self) -> Duration {
        match (self.min_refresh_ms, self.min_refresh_secs) {
            (Some(ms), _) => Duration::from_millis(ms),
            (None, Some(secs)) => Duration::from_secs(secs),
            (None, None) => DEFAULT_MIN_REFRESH,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = scold_daemon::load(path, "scold client --example-config")?;
        c.file = path.to_path_buf();
        if c.tunnel.listen.is_none() {
            c.tunnel.listen = Some("0.0.0.0:0".parse().expect("literal"));
        }
        c.tunnel.check(path)?;
        for (i, p) in c.peers.iter().enumerate() {
            Command::AddPeer(p.clone())
                .validate()
                .map_err(|e| anyhow::anyhow!("config file {}: peers[{i}]: {e}", path.display()))?;
        }
        if let Some(a) = &c.agent {
            a.check(path)?;
            let resolve = |p: &Path| scold_daemon::resolve(path, p);
            let a = c.agent.as_mut().expect("checked");
            a.ca = resolve(&a.ca);
            a.crl = a.crl.as_deref().map(resolve);
            if let Some(p) = a.push.as_mut() {
                p.cert = resolve(&p.cert);
                p.key = resolve(&p.key);
            }
            if c.tunnel.encap == Encap::Wireguard && c.tunnel.private_key(path)?.is_none() {
                anyhow::bail!(
                    "config file {}: tunnel.encap = \"wireguard\" needs tunnel.private_key (make one with `scold client --genkey`)",
                    path.display()
                );
            }
        }
        c.control.check(path)?;
        if c.control.coordinator.is_some() && c.control.address.is_none() {
            anyhow::bail!(
                "config file {}: [control] needs `address`: the address proxies reach this agent's push port at",
                path.display()
            );
        }
        for (i, r) in c.routes.iter().enumerate() {
            if let Via::Gateway(_) = r.via {
                anyhow::bail!(
                    "config file {}: routes[{i}].via: a client routes through a proxy peer; write via = {{ peer = \"NAME\" }}",
                    path.display()
                );
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_with_push_and_control() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        std::fs::write(&p, EXAMPLE).unwrap();
        let c = Config::load(&p).unwrap();
        let push = c.agent.unwrap().push.unwrap();
        assert_eq!(push.listen.port(), scold_proto::push::DEFAULT_PORT);
        assert_eq!(push.cert, dir.path().join("client-site1.crt"));
        assert_eq!(c.control.address, Some("198.51.100.7".parse().unwrap()));
        // A coordinator link without an address: proxies could not reach the agent.
        let text = EXAMPLE.replace("address = \"198.51.100.7\"\n", "");
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("[control] needs `address`"), "{e}");
    }

    #[test]
    fn agent_config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let p = dir.path().join("client.toml");
            std::fs::write(&p, text).unwrap();
            p
        };
        let key = scold_tunnel::keys::generate_private().unwrap();
        let base = format!("[tunnel]\nprivate_key = \"{key}\"\n");
        let ok = write(&format!(
            "{base}[agent]\nupstream = [\"10.1.0.53:53\"]\nca = \"ca.crt\"\n"
        ));
        let c = Config::load(&ok).unwrap();
        let a = c.agent.unwrap();
        assert_eq!(a.listen, "127.0.0.53:53".parse().unwrap());
        assert_eq!(a.ca, dir.path().join("ca.crt"));
        assert_eq!(a.alt_type, 65280);
        for (text, needle) in [
            (
                format!("{base}[agent]\nupstream = []\nca = \"ca.crt\"\n"),
                "agent.upstream",
            ),
            (
                format!("{base}[agent]\nupstream = [\"127.0.0.53:53\"]\nca = \"ca.crt\"\n"),
                "loop",
            ),
            (
                format!(
                    "{base}[agent]\nupstream = [\"10.1.0.53:53\"]\nca = \"ca.crt\"\nalt_type = 1\n"
                ),
                "alt_type",
            ),
            (
                "[agent]\nupstream = [\"10.1.0.53:53\"]\nca = \"ca.crt\"\n".to_string(),
                "private_key",
            ),
            (
                format!(
                    "{base}[agent]\nupstream = [\"10.1.0.53:53\"]\nca = \"ca.crt\"\nbogus = 1\n"
                ),
                "bogus",
            ),
        ] {
            let e = Config::load(&write(&text)).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn alt_reread_interval_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = scold_tunnel::keys::generate_private().unwrap();
        let load = |extra: &str| {
            let p = dir.path().join("client.toml");
            std::fs::write(
                &p,
                format!(
                    "[tunnel]\nprivate_key = \"{key}\"\n[agent]\nupstream = [\"10.1.0.53:53\"]\nca = \"ca.crt\"\n{extra}"
                ),
            )
            .unwrap();
            Config::load(&p).map(|c| c.agent.unwrap())
        };
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(ms(load("").unwrap().min_refresh()), 1000);
        assert_eq!(
            ms(load("min_refresh_ms = 100\n").unwrap().min_refresh()),
            100
        );
        assert_eq!(
            ms(load("min_refresh_ms = 250\n").unwrap().min_refresh()),
            250
        );
        // The older key still works.
        assert_eq!(
            ms(load("min_refresh_secs = 2\n").unwrap().min_refresh()),
            2000
        );
        for (extra, needles) in [
            (
                "min_refresh_ms = 99\n",
                &["min_refresh_ms = 99", "100 or more"][..],
            ),
            ("min_refresh_ms = 0\n", &["below 100"][..]),
            (
                "min_refresh_secs = 0\n",
                &["min_refresh_secs = 0", "write min_refresh_ms"][..],
            ),
            (
                "min_refresh_ms = 500\nmin_refresh_secs = 1\n",
                &["both", "keep only min_refresh_ms"][..],
            ),
            (
                "min_refresh_ms = 5000\nmax_refresh_secs = 2\n",
                &["above max_refresh_secs = 2", "lower min_refresh_ms"][..],
            ),
            ("max_refresh_secs = 0\n", &["max_refresh_secs = 0"][..]),
            ("min_refresh_ms = -1\n", &["min_refresh_ms"][..]),
        ] {
            let e = format!("{:#}", load(extra).unwrap_err());
            for n in needles {
                assert!(e.contains(n), "{extra:?}: {n:?} not in: {e}");
            }
        }
    }
}
