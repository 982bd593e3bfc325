//! `scold client`: the client agent of scheme 4.1 (paper Section 4.1, "indirect route by
//! the resolver library"), done without patching libc: a local stub resolver that the
//! host's resolv.conf points at.
//!
//! With an `[agent]` table the client forwards every query to the site's resolver
//! (ClientDNS). For an A/AAAA question it also asks for the ALT records of the name; when
//! there are some, it picks a proxy of the ALT set (lowest round-trip time to the
//! proxies' admission ports, ties at random), runs the admission exchange
//! ([`crate::admission`]), brings the tunnel to that proxy up and a host route for each
//! target address into it, and only then returns the normal answer to the application.
//! Each admission connection stays open and is probed; each answer carries the proxy's
//! count of our tunnel packets that arrived, so the probes watch the tunnel path too.
//! When a proxy stops answering, or our tunnel packets stop reaching it, or it says it
//! is draining (its self-defence declared it under attack: a notice on the admission
//! connection, or a flag in a probe answer), the agent moves to the next proxy of the
//! ALT set (a draining proxy it keeps when no other admits it), and sends one datagram
//! to each target through the new tunnel so the target's gateway returns traffic by the
//! new proxy at once (a TCP connection open across the move survives). When the name has no ALT
//! records any more (a later lookup, or a re-query when the ALT TTL runs out), tunnel and
//! routes go.
//!
//! Without `[agent]` the client is a static data path: the peers and routes of its config
//! file. Either way routes live in SCOLD's own routing table behind one policy rule, so
//! exiting leaves routing exactly as found.

pub mod admission;

use self::admission::{AdmissionConn, AdmissionError, Connector};
use crate::node::{self, CommandReceiver, TunnelSection};
use anyhow::Context as _;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use scold_proto::admission::{AdmitRequest, Admitted, ClientMessage, ProxyMessage};
use scold_proto::dataplane::{
    Command, Encap, Peer, Prefix, PublicKey, RefusalCode, Reply, Route, Stats, Via,
};
use scold_tunnel::fib::{Dest, PeerPolicy};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use scold_tunnel::{Engine, EngineConfig, EngineHandle};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold client --config /etc/scold/client.toml\n\
Print a commented config with --example-config; make a WireGuard key with --genkey.")]
pub struct Args {
    /// The client's TOML config file: tunnel, proxy peer, target routes.
    #[arg(long, short = 'c', value_name = "FILE", required_unless_present_any = ["example_config", "genkey"])]
    pub config: Option<PathBuf>,
    /// Print a commented example config and exit.
    #[arg(long)]
    pub example_config: bool,
    /// Print a fresh WireGuard private key (and its public key) and exit.
    #[arg(long)]
    pub genkey: bool,
    /// Check the config file and exit without touching the system.
    #[arg(long)]
    pub check: bool,
}

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
            let base = path.parent().unwrap_or(Path::new("."));
            let resolve = |p: &Path| {
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                }
            };
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

pub async fn run(a: Args) -> anyhow::Result<()> {
    node::daemon::run::<Config>(node::daemon::Flags {
        config: a.config,
        example_config: a.example_config,
        genkey: a.genkey,
        check: a.check,
    })
    .await
}

impl node::daemon::RoleDaemon for Config {
    const ROLE: scold_proto::identity::Role = scold_proto::identity::Role::Client;
    const EXAMPLE: &'static str = EXAMPLE;

    fn load(path: &Path) -> anyhow::Result<Self> {
        Config::load(path)
    }

    fn control(&self) -> &crate::node::control::ControlSection {
        &self.control
    }

    fn node_info(&self, _path: &Path) -> anyhow::Result<scold_proto::control::NodeInfo> {
        Ok(self.control.node_info(None))
    }

    async fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        shutdown: S,
        _ctx: crate::node::control::NodeContext,
    ) -> anyhow::Result<()> {
        serve(self, commands, shutdown).await.map(|_| ())
    }
}

struct Client {
    engine: EngineHandle,
    table: RouteTable,
    tun_index: u32,
    source: Option<IpAddr>,
    /// Which peer each route goes through, to remove its kernel route with the peer.
    routes: BTreeMap<Prefix, String>,
}

impl Client {
    /// Adds a route through `peer`; `src` is the preferred source of the kernel route
    /// (the address the proxy admitted), default: the configured `source`.
    async fn add_route(&mut self, destination: Prefix, peer: String, src: Option<IpAddr>) -> Reply {
        let name = peer.clone();
        let r = self
            .engine
            .call(move |s| match s.peer_id(&name) {
                Some(id) => Ok(s.fib.insert(destination, Dest::Peer(id))),
                None => Err(()),
            })
            .await;
        let changed_fib = match r {
            Ok(Ok(c)) => c,
            Ok(Err(())) => {
                return Reply::refused(
                    RefusalCode::UnknownReference,
                    format!("route {destination}: no peer named {peer:?}; add the peer first"),
                )
            }
            Err(e) => return Reply::refused(RefusalCode::System, e.to_string()),
        };
        let src = src
            .or(self.source)
            .filter(|s| s.is_ipv4() == destination.addr().is_ipv4());
        match self
            .table
            .add(
                destination,
                RouteTarget::Device {
                    index: self.tun_index,
                    src,
                },
            )
            .await
        {
            Ok(changed) => {
                self.routes.insert(destination, peer);
                Reply::Done {
                    changed: changed || changed_fib,
                }
            }
            Err(e) => {
                let _ = self.engine.call(move |s| s.fib.remove(&destination)).await;
                Reply::refused(RefusalCode::System, e.to_string())
            }
        }
    }

    async fn remove_route(&mut self, destination: Prefix) -> Result<bool, String> {
        self.routes.remove(&destination);
        let a = self
            .engine
            .call(move |s| s.fib.remove(&destination))
            .await
            .map_err(|e| e.to_string())?;
        let b = self
            .table
            .remove(&destination)
            .await
            .map_err(|e| e.to_string())?;
        Ok(a || b)
    }
}

impl node::Node for Client {
    async fn apply(&mut self, cmd: Command) -> Reply {
        if let Err(e) = cmd.validate() {
            return e.into();
        }
        match cmd {
            Command::AddPeer(p) => {
                match self
                    .engine
                    .call(move |s| s.add_peer(&p, PeerPolicy::default()))
                    .await
                {
                    Ok(Ok((_, changed))) => Reply::Done { changed },
                    Ok(Err(e)) => Reply::refused(RefusalCode::Conflict, e.to_string()),
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::RemovePeer { name } => {
                let through: Vec<Prefix> = self
                    .routes
                    .iter()
                    .filter(|(_, p)| **p == name)
                    .map(|(d, _)| *d)
                    .collect();
                for d in through {
                    if let Err(e) = self.remove_route(d).await {
                        return Reply::refused(RefusalCode::System, e);
                    }
                }
                match self.engine.call(move |s| s.remove_peer(&name)).await {
                    Ok(changed) => Reply::Done { changed },
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::AddRoute(Route {
                destination,
                via: Via::Peer(peer),
            }) => self.add_route(destination, peer, None).await,
            Command::AddRoute(_) => Reply::refused(
                RefusalCode::NotForThisRole,
                "a client routes through a proxy peer (via = { peer = NAME })",
            ),
            Command::RemoveRoute { destination } => match self.remove_route(destination).await {
                Ok(changed) => Reply::Done { changed },
                Err(e) => Reply::refused(RefusalCode::System, e),
            },
            Command::GetStats => match self.engine.call(|s| s.stats()).await {
                Ok(s) => Reply::Stats(s),
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            other => Reply::refused(
                RefusalCode::NotForThisRole,
                format!("{} is not a client command", other.kind()),
            ),
        }
    }
}

/// Runs the client's data path until `shutdown`, then removes its routes and rule.
pub async fn serve(
    cfg: Config,
    mut commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Stats> {
    let mtu = cfg.tunnel.inner_mtu();
    let tun = scold_tunnel::tun::create(&cfg.tun_name, mtu)?;
    let nl = Netlink::new()?;
    let tun_index = nl.link_index(&cfg.tun_name).await?;
    nl.set_up(tun_index).await?;
    let (engine, handle) = Engine::new(
        EngineConfig {
            udp_listen: cfg.tunnel.listen,
            ipip: cfg.tunnel.ipip,
            ipip_bind: cfg.tunnel.ipip_bind,
            private_key: cfg.tunnel.private_key(&cfg.file)?,
            outer_mtu: cfg.tunnel.outer_mtu,
            // Everything the proxy sends is for this host.
            peer_default: Some(Dest::Tun),
        },
        Some(tun),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine_task = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    let mut node = Client {
        engine: handle,
        table: RouteTable::new(nl, cfg.table, cfg.rule_priority, RuleSelector::default()),
        tun_index,
        source: cfg.source,
        routes: BTreeMap::new(),
    };
    let mut entries: Vec<(String, Command)> = cfg
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("peers[{i}] ({})", p.name),
                Command::AddPeer(p.clone()),
            )
        })
        .collect();
    entries.extend(cfg.routes.iter().enumerate().map(|(i, r)| {
        (
            format!("routes[{i}] ({})", r.destination),
            Command::AddRoute(r.clone()),
        )
    }));
    let mut result = node::apply_static(&cfg.file, entries, &mut node).await;
    if result.is_ok() {
        tracing::info!(tun = %cfg.tun_name, mtu, "client tunnel ready");
        match &cfg.agent {
            Some(a) => {
                result = run_agent(&cfg, a, mtu, &mut node, &mut commands, shutdown).await;
            }
            None => node::command_loop(&mut node, &mut commands, shutdown).await,
        }
    }
    for e in node.table.clear().await {
        tracing::warn!(error = %e, "tear-down incomplete");
    }
    let _ = stop_tx.send(());
    let stats = engine_task.await.context("packet engine task failed")?;
    tracing::info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "client stopped");
    result.map(|_| stats)
}

// ---------------------------------------------------------------------------------------
// The agent of scheme 4.1
// ---------------------------------------------------------------------------------------

/// What the DNS front, the link tasks and the re-queries tell the agent's loop.
enum Event {
    /// An A/AAAA answer for `name` came with ALT records: set the route up, then answer.
    Lookup {
        name: String,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
        done: oneshot::Sender<()>,
    },
    /// A lookup of `name` found no ALT records.
    NoAlt { name: String },
    /// The ALT re-query of `name` at its TTL; None: no upstream answered.
    Requeried {
        name: String,
        result: Option<(Vec<IpAddr>, u32)>,
    },
    /// A proxy's admission connection failed or stopped answering probes.
    LinkDown { proxy: IpAddr, why: String },
    /// A proxy started (`draining`) or stopped asking its clients to move.
    Draining {
        proxy: IpAddr,
        draining: bool,
        reason: Option<String>,
    },
    /// Scheme 4.2: a verified proxy (certificate role proxy) pushed or withdrew a route.
    /// `from`: the address it connected from; `local`: ours on that path.
    Push {
        from: IpAddr,
        local: IpAddr,
        request: scold_proto::push::PushRequest,
        answer: oneshot::Sender<scold_proto::push::PushAnswer>,
    },
}

/// Orders for a link task, which owns one admission connection.
enum LinkOp {
    Admit(
        AdmitRequest,
        Vec<IpAddr>,
        oneshot::Sender<Result<Admitted, AdmissionError>>,
    ),
    Release(Vec<IpAddr>, oneshot::Sender<()>),
}

struct Link {
    ops: mpsc::Sender<LinkOp>,
    admitted: Admitted,
    peer: String,
    task: tokio::task::JoinHandle<()>,
}

struct NameState {
    targets: BTreeSet<IpAddr>,
    alts: Vec<IpAddr>,
    proxy: Option<IpAddr>,
    refresh_at: Instant,
    requery_pending: bool,
    /// When to try again to find a proxy (none worked).
    retry_at: Option<Instant>,
    /// Scheme 4.2: `proxy` pushed this route; the agent keeps it while that proxy is in
    /// the ALT set and does not look for another (the next push moves it).
    pushed: bool,
    /// The wait before the next retry: doubles after each round that found no proxy,
    /// up to [`MAX_RETRY`], so refused proxies are not asked every second for ever.
    retry_delay: Duration,
}

struct Agent<'a> {
    node: &'a mut Client,
    cfg: AgentSection,
    encap: Encap,
    public_key: Option<PublicKey>,
    tun_mtu: u16,
    connector: Connector,
    names: HashMap<String, NameState>,
    links: HashMap<IpAddr, Link>,
    /// Proxies that failed recently, and until when they are tried last.
    down: HashMap<IpAddr, Instant>,
    /// Proxies whose open admission connection says they drain: tried after the others.
    draining: BTreeSet<IpAddr>,
    events: mpsc::Sender<Event>,
    dns: Arc<DnsFront>,
}

/// When a name's ALT set is read again: at its TTL, within `min` and `max`.
fn refresh_in(ttl: u32, min: Duration, max: Duration) -> Duration {
    Duration::from_secs(ttl as u64).clamp(min, max.max(min))
}

/// How long a failed proxy is tried only after the others.
const DOWN_FOR: Duration = Duration::from_secs(30);
/// Bounds of the wait between two rounds of admission attempts for a name.
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often the agent looks at re-queries and retries.
const TICK: Duration = Duration::from_millis(250);

fn peer_name(proxy: IpAddr) -> String {
    format!("proxy-{proxy}")
}

async fn run_agent(
    cfg: &Config,
    a: &AgentSection,
    tun_mtu: u16,
    node: &mut Client,
    commands: &mut CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let file = cfg.file.display();
    let connector = Connector::new(
        &a.ca,
        a.crl.as_deref(),
        a.admission_port,
        Duration::from_millis(a.admission_timeout_ms),
    )
    .map_err(|e| anyhow::anyhow!("config file {file}: agent.ca: {e}"))?;
    let public_key = match cfg.tunnel.private_key(&cfg.file)? {
        Some(k) if cfg.tunnel.encap == Encap::Wireguard => {
            Some(PublicKey(scold_tunnel::keys::public_of(&k)?))
        }
        _ => None,
    };
    let (events_tx, mut events) = mpsc::channel(256);
    let dns = Arc::new(DnsFront {
        upstream: a.upstream.clone(),
        timeout: Duration::from_millis(a.upstream_timeout_ms),
        alt_type: a.alt_type,
        events: events_tx.clone(),
    });
    let servers = dns
        .clone()
        .start(a.listen)
        .await
        .with_context(|| format!("config file {file}: agent.listen {}", a.listen))?;
    tracing::info!(listen = %a.listen, upstream = ?a.upstream, encap = %cfg.tunnel.encap, "client agent answering DNS");
    let push_server = match &a.push {
        Some(p) => Some(
            start_push(p, a, events_tx.clone())
                .await
                .with_context(|| format!("config file {file}: [agent.push]"))?,
        ),
        None => None,
    };
    let mut agent = Agent {
        node,
        cfg: a.clone(),
        encap: cfg.tunnel.encap,
        public_key,
        tun_mtu,
        connector,
        names: HashMap::new(),
        links: HashMap::new(),
        down: HashMap::new(),
        draining: BTreeSet::new(),
        events: events_tx,
        dns,
    };
    tokio::pin!(shutdown);
    // Re-queries are started on the tick: it must come at least as often as the least
    // re-read interval.
    let mut tick = tokio::time::interval(TICK.min(a.min_refresh()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(ev) = events.recv() => agent.event(ev).await,
            c = commands.recv(), if open => match c {
                Some((cmd, reply)) => {
                    let kind = cmd.kind();
                    let r = node::Node::apply(&mut *agent.node, cmd).await;
                    node::log_reply(kind, &r);
                    let _ = reply.send(r);
                }
                None => open = false,
            },
            _ = tick.tick() => agent.tick().await,
        }
    }
    for s in servers {
        s.abort();
    }
    if let Some(p) = push_server {
        p.abort();
    }
    agent.shutdown().await;
    Ok(())
}

impl Agent<'_> {
    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Lookup {
                name,
                targets,
                alts,
                ttl,
                done,
            } => {
                let refresh = self.refresh_in(ttl);
                let st = self.names.entry(name.clone()).or_insert_with(|| NameState {
                    targets: BTreeSet::new(),
                    alts: Vec::new(),
                    proxy: None,
                    refresh_at: Instant::now() + refresh,
                    requery_pending: false,
                    retry_at: None,
                    retry_delay: MIN_RETRY,
                    pushed: false,
                });
                st.targets.extend(targets);
                st.alts = alts;
                st.refresh_at = Instant::now() + refresh;
                self.ensure(&name).await;
                let _ = done.send(());
            }
            Event::NoAlt { name } => {
                if self.names.contains_key(&name) {
                    tracing::info!(%name, "no ALT records any more; tearing the indirect route down");
                    self.teardown(&name).await;
                }
            }
            Event::Requeried { name, result } => {
                let Some(st) = self.names.get_mut(&name) else {
                    return;
                };
                st.requery_pending = false;
                match result {
                    None => st.refresh_at = Instant::now() + Duration::from_secs(1),
                    Some((alts, _)) if alts.is_empty() => {
                        tracing::info!(%name, "ALT records withdrawn; tearing the indirect route down");
                        self.teardown(&name).await;
                    }
                    Some((alts, ttl)) => {
                        let refresh = self.refresh_in(ttl);
                        let st = self.names.get_mut(&name).expect("present");
                        st.refresh_at = Instant::now() + refresh;
                        let mut leave = None;
                        if st.alts != alts {
                            tracing::info!(%name, ?alts, "ALT set changed");
                            st.alts = alts;
                            // A new ALT set may hold a proxy to leave a draining one for.
                            leave = st.proxy.filter(|p| self.draining.contains(p));
                        }
                        self.ensure_leaving(&name, leave).await;
                    }
                }
            }
            Event::LinkDown { proxy, why } => self.link_down(proxy, &why).await,
            Event::Draining {
                proxy,
                draining,
                reason,
            } => self.proxy_draining(proxy, draining, reason).await,
            Event::Push {
                from,
                local,
                request,
                answer,
            } => {
                let a = match request {
                    scold_proto::push::PushRequest::Push(offer) => {
                        self.pushed(from, local, offer).await
                    }
                    scold_proto::push::PushRequest::Withdraw { fqdn } => {
                        let name = scold_proto::push::name_key(&fqdn);
                        let ours = self
                            .names
                            .get(&name)
                            .is_some_and(|s| s.pushed && s.proxy == Some(from));
                        if ours {
                            tracing::info!(%name, proxy = %from, "pushed route withdrawn by its proxy");
                            self.teardown(&name).await;
                        }
                        scold_proto::push::PushAnswer::Withdrawn { changed: ours }
                    }
                };
                let _ = answer.send(a);
            }
        }
    }

    /// Scheme 4.2: a proxy offers the route to `offer.fqdn`. Accepted only when the
    /// address it connected from and its tunnel address are in the name's ALT set, as
    /// our own upstream resolver gives it; then the peer and host routes go in.
    async fn pushed(
        &mut self,
        from: IpAddr,
        local: IpAddr,
        offer: scold_proto::push::RouteOffer,
    ) -> scold_proto::push::PushAnswer {
        use scold_proto::push::{
            judge, name_key, Accepted, PushAnswer as Answer, PushRefusal as RefusalCode,
        };
        let refuse = |code, message: String| {
            tracing::warn!(proxy = %from, fqdn = %offer.fqdn, ?code, %message, "route push refused");
            Answer::Refused { code, message }
        };
        if let Err(e) = offer.validate() {
            return refuse(RefusalCode::BadRequest, e.to_string());
        }
        let name = name_key(&offer.fqdn);
        let (alts, ttl) = match self.dns.alt(&name).await {
            Ok(x) => x,
            Err(e) => return refuse(RefusalCode::AltLookup, format!("ALT of {name}: {e}")),
        };
        if let Err(Answer::Refused { code, message }) = judge(&offer, from, &alts, self.encap) {
            return refuse(code, message);
        }
        let targets: BTreeSet<IpAddr> = offer
            .targets
            .iter()
            .copied()
            .filter(|t| !alts.contains(t))
            .collect();
        if targets.is_empty() {
            return refuse(
                RefusalCode::BadRequest,
                "every target address is also a proxy address".into(),
            );
        }
        let peer = Peer {
            name: peer_name(from),
            address: offer.tunnel_address,
            port: self.encap.uses_udp().then_some(offer.port).flatten(),
            encap: self.encap,
            public_key: (self.encap == Encap::Wireguard)
                .then(|| offer.public_key.clone())
                .flatten(),
            keepalive_secs: Some(self.cfg.keepalive_secs).filter(|k| *k > 0),
        };
        if let Reply::Refused { code, message } =
            node::Node::apply(&mut *self.node, Command::AddPeer(peer)).await
        {
            return refuse(
                RefusalCode::System,
                format!("cannot add the tunnel peer ({code:?}): {message}"),
            );
        }
        if let Err(e) = self.route(&targets, from, local).await {
            return refuse(RefusalCode::System, e);
        }
        if offer.inner_mtu < self.tun_mtu {
            tracing::warn!(proxy = %from, inner_mtu = offer.inner_mtu, tun_mtu = self.tun_mtu,
                "the path through this proxy carries smaller packets than the TUN MTU; lower tunnel.outer_mtu");
        }
        let refresh = Instant::now() + self.refresh_in(ttl);
        let previous = self.names.get(&name).and_then(|s| s.proxy);
        let st = self.names.entry(name.clone()).or_insert_with(|| NameState {
            targets: BTreeSet::new(),
            alts: Vec::new(),
            proxy: None,
            refresh_at: refresh,
            requery_pending: false,
            retry_at: None,
            retry_delay: MIN_RETRY,
            pushed: true,
        });
        st.targets.extend(targets.iter().copied());
        st.alts = alts;
        st.proxy = Some(from);
        st.pushed = true;
        st.refresh_at = refresh;
        st.retry_at = None;
        tracing::info!(%name, proxy = %from, source = %local, targets = ?targets, "indirect route pushed by proxy");
        if let Some(old) = previous.filter(|p| *p != from) {
            announce_path(&targets, local).await;
            self.release_if_unused(old, &targets).await;
        }
        Answer::Accepted(Accepted {
            encap: self.encap,
            public_key: self.public_key.clone(),
        })
    }

    fn refresh_in(&self, ttl: u32) -> Duration {
        refresh_in(
            ttl,
            self.cfg.min_refresh(),
            Duration::from_secs(self.cfg.max_refresh_secs),
        )
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        self.down.retain(|_, until| *until > now);
        let mut retry = Vec::new();
        for (name, st) in self.names.iter_mut() {
            if st.refresh_at <= now && !st.requery_pending {
                st.requery_pending = true;
                let dns = self.dns.clone();
                let events = self.events.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let result = dns.alt(&name).await.ok();
                    let _ = events.send(Event::Requeried { name, result }).await;
                });
            }
            if st.retry_at.is_some_and(|t| t <= now) {
                retry.push(name.clone());
            }
        }
        for name in retry {
            self.ensure(&name).await;
        }
    }

    /// Proxies of `alts` in the order to try them: those that failed recently last; the
    /// others by the round-trip time of a TCP connect to their admission port, ties (same
    /// millisecond) at random; those that did not answer at all after them.
    async fn rank(&self, alts: &[IpAddr]) -> Vec<IpAddr> {
        use rand::seq::SliceRandom;
        let port = self.connector.port();
        let limit = Duration::from_millis(self.cfg.admission_timeout_ms.min(500));
        // Proxies that failed recently are not measured (a silent one would hold the
        // ranking up for the whole time limit); they come last anyway.
        let down = &self.down;
        let probes = alts.iter().map(|&p| async move {
            if down.contains_key(&p) {
                return (p, None);
            }
            let t0 = Instant::now();
            let r = tokio::time::timeout(limit, tokio::net::TcpStream::connect((p, port))).await;
            let rtt = match r {
                Ok(Ok(_)) => Some(t0.elapsed()),
                _ => None,
            };
            (p, rtt)
        });
        let mut measured = futures::future::join_all(probes).await;
        measured.shuffle(&mut rand::rng());
        measured.sort_by_key(|(p, rtt)| {
            (
                self.down.contains_key(p),
                self.draining.contains(p),
                rtt.map(|d| d.as_millis()).unwrap_or(u128::MAX),
            )
        });
        tracing::debug!(?measured, "proxies ranked");
        measured.into_iter().map(|(p, _)| p).collect()
    }

    fn request(&self, targets: &BTreeSet<IpAddr>) -> AdmitRequest {
        AdmitRequest {
            targets: targets.iter().copied().collect(),
            encap: self.encap,
            public_key: self.public_key.clone(),
            port: None,
        }
    }

    /// Brings `name`'s indirect route up (or keeps it), through its current proxy if that
    /// one is still in the ALT set and alive, otherwise through the best other one.
    async fn ensure(&mut self, name: &str) {
        self.ensure_leaving(name, None).await
    }

    /// [`Self::ensure`]; when `leave` is the current proxy (it drains), the others of
    /// the ALT set are tried first and it is kept only when none of them admits us.
    async fn ensure_leaving(&mut self, name: &str, leave: Option<IpAddr>) {
        let Some(st) = self.names.get(name) else {
            return;
        };
        if st.pushed {
            if st.proxy.is_some_and(|p| st.alts.contains(&p)) {
                return;
            }
            tracing::info!(%name, proxy = ?st.proxy, "the proxy that pushed the route left the ALT set; dropping the route until the next push");
            self.teardown(name).await;
            return;
        }
        let targets: BTreeSet<IpAddr> = st
            .targets
            .iter()
            .copied()
            .filter(|t| !st.alts.contains(t))
            .collect();
        if targets.len() < st.targets.len() {
            tracing::warn!(%name, "a target address is also a proxy address; it is not routed into the tunnel");
        }
        if targets.is_empty() {
            return;
        }
        let alts = st.alts.clone();
        let current = st
            .proxy
            .filter(|p| alts.contains(p) && self.links.contains_key(p));
        let req = self.request(&targets);
        let previous = st.proxy;
        let mut order: Vec<IpAddr> = current.into_iter().collect();
        let mut ranked = false;
        if let Some(old) = leave.filter(|p| current == Some(*p)) {
            ranked = true;
            order = self.rank(&alts).await;
            order.retain(|p| *p != old);
            order.push(old);
        } else if order.is_empty() {
            ranked = true;
            order = self.rank(&alts).await;
        }
        while let Some(proxy) = (!order.is_empty()).then(|| order.remove(0)) {
            let t0 = Instant::now();
            match self.admit(proxy, &alts, &req).await {
                Ok(local) => {
                    if let Err(e) = self.route(&targets, proxy, local).await {
                        tracing::warn!(%name, %proxy, error = %e, "cannot install routes");
                        continue;
                    }
                    if let Some(st) = self.names.get_mut(name) {
                        st.proxy = Some(proxy);
                        st.retry_at = None;
                        st.retry_delay = MIN_RETRY;
                    }
                    if previous != Some(proxy) {
                        let identity = self
                            .links
                            .get(&proxy)
                            .map(|l| l.admitted.tunnel_address.to_string())
                            .unwrap_or_default();
                        tracing::info!(%name, %proxy, tunnel = %identity, source = %local, targets = ?targets, elapsed_ms = t0.elapsed().as_millis() as u64, "indirect route up");
                        if let Some(old) = previous {
                            announce_path(&targets, local).await;
                            self.release_if_unused(old, &targets).await;
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(%name, %proxy, error = %e, "admission failed; trying the next proxy of the ALT set");
                    self.down.insert(proxy, Instant::now() + DOWN_FOR);
                }
            }
            if order.is_empty() && !ranked {
                // The current proxy (if any) did not do; measure the others only now, so
                // a lookup of a name already routed costs no probes.
                ranked = true;
                order = self
                    .rank(&alts)
                    .await
                    .into_iter()
                    .filter(|p| Some(*p) != current)
                    .collect();
            }
        }
        if let Some(st) = self.names.get_mut(name) {
            tracing::error!(%name, alts = ?alts, retry_in_ms = st.retry_delay.as_millis() as u64,
                "no proxy of the ALT set admitted us");
            st.retry_at = Some(Instant::now() + st.retry_delay);
            st.retry_delay = (st.retry_delay * 2).min(MAX_RETRY);
        }
    }

    /// Admission at `proxy` for `req`, over its open link or a new one. Returns our
    /// address towards it (the tunnel's inner source).
    async fn admit(
        &mut self,
        proxy: IpAddr,
        alts: &[IpAddr],
        req: &AdmitRequest,
    ) -> Result<IpAddr, AdmissionError> {
        let timeout = Duration::from_millis(self.cfg.admission_timeout_ms);
        if let Some(link) = self.links.get_mut(&proxy) {
            if req
                .targets
                .iter()
                .all(|t| link.admitted.targets.contains(t))
            {
                return Ok(link.admitted.client);
            }
            let (tx, rx) = oneshot::channel();
            let sent = link
                .ops
                .send(LinkOp::Admit(req.clone(), alts.to_vec(), tx))
                .await
                .is_ok();
            let answer = if sent {
                tokio::time::timeout(timeout * 2, rx)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            } else {
                None
            };
            return match answer {
                Some(Ok(a)) => {
                    link.admitted = a;
                    Ok(link.admitted.client)
                }
                Some(Err(e)) => Err(e),
                None => Err(AdmissionError::Timeout {
                    addr: SocketAddr::new(proxy, self.connector.port()),
                    what: "admission over the open link",
                }),
            };
        }
        let t0 = Instant::now();
        let mut conn = self.connector.connect(proxy, alts).await?;
        let admitted = conn.admit(req, alts, timeout).await?;
        if admitted.inner_mtu < self.tun_mtu {
            tracing::warn!(%proxy, inner_mtu = admitted.inner_mtu, tun_mtu = self.tun_mtu,
                "the path through this proxy carries smaller packets than the TUN MTU; lower tunnel.outer_mtu or tunnel.mtu");
        }
        let peer = Peer {
            name: peer_name(proxy),
            address: admitted.tunnel_address,
            port: admitted.port,
            encap: admitted.encap,
            public_key: admitted.public_key.clone(),
            keepalive_secs: Some(self.cfg.keepalive_secs).filter(|k| *k > 0),
        };
        if let Reply::Refused { code, message } =
            node::Node::apply(&mut *self.node, Command::AddPeer(peer.clone())).await
        {
            return Err(AdmissionError::Protocol {
                addr: conn.proxy,
                detail: format!("cannot add the tunnel peer ({code:?}): {message}"),
            });
        }
        tracing::info!(%proxy, identity = %conn.identity, source = %conn.local, encap = %admitted.encap, inner_mtu = admitted.inner_mtu, elapsed_ms = t0.elapsed().as_millis() as u64, "admitted by proxy");
        let (ops_tx, ops_rx) = mpsc::channel(8);
        let task = tokio::spawn(link_task(
            conn,
            ops_rx,
            self.events.clone(),
            Probing {
                interval: Duration::from_millis(self.cfg.probe_interval_ms),
                timeout: Duration::from_millis(self.cfg.probe_timeout_ms),
                call_timeout: timeout,
                engine: self.node.engine.clone(),
                peer: peer.name.clone(),
            },
        ));
        let local = admitted.client;
        self.links.insert(
            proxy,
            Link {
                ops: ops_tx,
                admitted,
                peer: peer.name,
                task,
            },
        );
        Ok(local)
    }

    /// Host routes for `targets` into the tunnel to `proxy`, with `local` as source.
    async fn route(
        &mut self,
        targets: &BTreeSet<IpAddr>,
        proxy: IpAddr,
        local: IpAddr,
    ) -> Result<(), String> {
        let peer = peer_name(proxy);
        for t in targets {
            match self
                .node
                .add_route(Prefix::host(*t), peer.clone(), Some(local))
                .await
            {
                Reply::Refused { code, message } => {
                    return Err(format!("route {t} ({code:?}): {message}"))
                }
                Reply::Done { changed: true } => {
                    tracing::info!(target = %t, %proxy, %local, "host route into the tunnel")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After `targets` moved away from `proxy`: releases them there, and closes the
    /// link and removes the peer when no name uses the proxy any more.
    async fn release_if_unused(&mut self, proxy: IpAddr, targets: &BTreeSet<IpAddr>) {
        let in_use = self.names.values().any(|s| s.proxy == Some(proxy));
        if let Some(link) = self.links.get(&proxy) {
            let (tx, rx) = oneshot::channel();
            if link
                .ops
                .send(LinkOp::Release(targets.iter().copied().collect(), tx))
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
            }
        }
        if !in_use {
            self.drop_link(proxy).await;
        }
    }

    async fn drop_link(&mut self, proxy: IpAddr) {
        if self.draining.remove(&proxy) {
            // We no longer hear when it recovers: try it only after the others for a
            // while.
            self.down.insert(proxy, Instant::now() + DOWN_FOR);
        }
        let name = match self.links.remove(&proxy) {
            Some(link) => {
                link.task.abort();
                link.peer
            }
            None => peer_name(proxy),
        };
        // Routes still through this peer go with it (none when every name moved).
        let r = node::Node::apply(&mut *self.node, Command::RemovePeer { name }).await;
        node::log_reply("remove_peer", &r);
    }

    async fn link_down(&mut self, proxy: IpAddr, why: &str) {
        let t0 = Instant::now();
        tracing::warn!(%proxy, %why, "proxy lost; moving to the next proxy of the ALT set");
        self.down.insert(proxy, Instant::now() + DOWN_FOR);
        self.draining.remove(&proxy);
        if let Some(link) = self.links.remove(&proxy) {
            link.task.abort();
        }
        let affected: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| s.proxy == Some(proxy))
            .map(|(n, _)| n.clone())
            .collect();
        // The old peer and its routes stay until each name has its new routes, so no
        // packet falls back to the direct path in between.
        for name in &affected {
            if let Some(st) = self.names.get_mut(name) {
                st.proxy = None;
            }
            self.ensure(name).await;
        }
        if !self.links.contains_key(&proxy) {
            // Routes of names that found no other proxy go with the peer.
            let r = node::Node::apply(
                &mut *self.node,
                Command::RemovePeer {
                    name: peer_name(proxy),
                },
            )
            .await;
            node::log_reply("remove_peer", &r);
        }
        for name in &affected {
            let Some(st) = self.names.get(name) else {
                continue;
            };
            let Some(local) = st
                .proxy
                .and_then(|p| self.links.get(&p))
                .map(|l| l.admitted.client)
            else {
                continue;
            };
            let targets: BTreeSet<IpAddr> = st
                .targets
                .iter()
                .copied()
                .filter(|t| !st.alts.contains(t))
                .collect();
            announce_path(&targets, local).await;
        }
        if !affected.is_empty() {
            let moved: Vec<Option<IpAddr>> = affected
                .iter()
                .map(|n| self.names.get(n).and_then(|s| s.proxy))
                .collect();
            tracing::info!(%proxy, names = ?affected, now_via = ?moved, elapsed_ms = t0.elapsed().as_millis() as u64, "failover done");
        }
    }

    /// A proxy we hold an admission connection to says it drains (its self-defence
    /// declared it under attack) or no longer does. Draining: every name routed through
    /// it moves to the best other proxy of its ALT set that admits us, the same way as a
    /// failover (new routes first, then the path announcement and the release there);
    /// a name for which none does stays.
    async fn proxy_draining(&mut self, proxy: IpAddr, draining: bool, reason: Option<String>) {
        if !draining {
            if self.draining.remove(&proxy) {
                tracing::info!(%proxy, "proxy no longer draining");
            }
            return;
        }
        if !self.links.contains_key(&proxy) || !self.draining.insert(proxy) {
            return;
        }
        let t0 = Instant::now();
        let reason = reason.unwrap_or_default();
        tracing::warn!(%proxy, %reason, "proxy is draining (its self-defence declared an attack); moving to the next proxy of the ALT set");
        let affected: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| s.proxy == Some(proxy) && !s.pushed)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &affected {
            self.ensure_leaving(name, Some(proxy)).await;
        }
        let now_via: Vec<Option<IpAddr>> = affected
            .iter()
            .map(|n| self.names.get(n).and_then(|s| s.proxy))
            .collect();
        let stayed: Vec<&String> = affected
            .iter()
            .zip(&now_via)
            .filter(|(_, p)| **p == Some(proxy))
            .map(|(n, _)| n)
            .collect();
        if !stayed.is_empty() {
            tracing::warn!(%proxy, names = ?stayed, "no other proxy of the ALT set admitted us; staying on the draining proxy");
        }
        if stayed.len() < affected.len() {
            tracing::info!(%proxy, reason = "draining", names = ?affected, ?now_via, elapsed_ms = t0.elapsed().as_millis() as u64, "failover done");
        }
    }

    /// Removes `name`'s routes (targets no other name uses), releases them at the proxy
    /// and closes the link when nothing else uses it.
    async fn teardown(&mut self, name: &str) {
        let Some(st) = self.names.remove(name) else {
            return;
        };
        let still: BTreeSet<IpAddr> = self
            .names
            .values()
            .flat_map(|s| s.targets.iter().copied())
            .collect();
        let gone: BTreeSet<IpAddr> = st.targets.difference(&still).copied().collect();
        for t in &gone {
            match self.node.remove_route(Prefix::host(*t)).await {
                Ok(_) => tracing::info!(target = %t, %name, "host route removed"),
                Err(e) => tracing::warn!(target = %t, error = %e, "cannot remove the host route"),
            }
        }
        if let Some(p) = st.proxy {
            self.release_if_unused(p, &gone).await;
        }
    }

    /// On exit: release every admission; the caller removes routes and rule.
    async fn shutdown(&mut self) {
        let names: Vec<String> = self.names.keys().cloned().collect();
        for n in names {
            self.teardown(&n).await;
        }
        let left: Vec<IpAddr> = self.links.keys().copied().collect();
        for p in left {
            self.drop_link(p).await;
        }
    }
}

/// Where a path announcement goes: the discard port (RFC 863).
const ANNOUNCE_PORT: u16 = 9;
/// When the announcement goes, after the move: at once, and again in case the first one
/// arrived before the new proxy was ready for us (a pushing proxy admits the client only
/// after it has our answer) or was lost.
const ANNOUNCE_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// After `targets` moved to another proxy: an empty UDP datagram from `local` to each,
/// through the new tunnel, a few times (see [`ANNOUNCE_AT`]). The target's gateway
/// returns a client's packets by the proxy they last came in by; a client that only
/// answers what it receives (a download, whose acknowledgements stop when the data stops)
/// would otherwise send nothing by the new proxy, and the target's retransmissions would
/// keep going to the lost one until the connection timed out. What comes back (at most
/// an ICMP port unreachable) is ignored.
async fn announce_path(targets: &BTreeSet<IpAddr>, local: IpAddr) {
    let targets: Vec<IpAddr> = targets
        .iter()
        .copied()
        .filter(|t| t.is_ipv4() == local.is_ipv4())
        .collect();
    if targets.is_empty() {
        return;
    }
    let sock = match tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%local, error = %e, "cannot announce the new path to the targets");
            return;
        }
    };
    tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        for at in ANNOUNCE_AT {
            tokio::time::sleep_until(t0 + at).await;
            for t in &targets {
                match sock.send_to(&[], (*t, ANNOUNCE_PORT)).await {
                    Ok(_) => tracing::debug!(target = %t, %local, "new path announced"),
                    Err(e) => {
                        tracing::debug!(target = %t, %local, error = %e, "cannot announce the new path")
                    }
                }
            }
        }
    });
}

/// Largest number of push connections served at once.
const MAX_PUSH_CONNECTIONS: usize = 64;
/// Limit of a push's TLS handshake, its request, and of writing the answer.
const PUSH_STEP: Duration = Duration::from_secs(3);

/// Scheme 4.2: the push service. Mutual TLS: the proxy's certificate must chain to the
/// consortium CA (and not be revoked); its role must be proxy. The request goes to the
/// agent's loop, which checks the ALT set and installs the route.
async fn start_push(
    p: &PushSection,
    a: &AgentSection,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    scold_pki::install_crypto_provider();
    let tls = scold_pki::TlsIdentity::load(&scold_pki::TlsPaths {
        ca_cert: a.ca.clone(),
        cert: p.cert.clone(),
        key: p.key.clone(),
        crl: a.crl.clone(),
    })?;
    anyhow::ensure!(
        tls.identity().role == scold_pki::Role::Client,
        "cert names {}, but proxies push only to a client certificate; issue one with `scold ca issue --role client --name NAME`",
        tls.identity()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .with_context(|| format!("listen {} (is another daemon on that port?)", p.listen))?;
    tracing::info!(listen = %p.listen, identity = %tls.identity(), "taking route pushes from proxies");
    Ok(tokio::spawn(async move {
        let _tls = tls;
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_PUSH_CONNECTIONS));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "push accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many push connections; dropping one");
                continue;
            };
            let Ok(local) = tcp.local_addr().map(|l| l.ip()) else {
                continue;
            };
            let acceptor = acceptor.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = serve_push(acceptor, tcp, peer.ip(), local, events).await {
                    tracing::info!(%peer, error = %e, "push refused");
                }
            });
        }
    }))
}

async fn serve_push(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    from: IpAddr,
    local: IpAddr,
    events: mpsc::Sender<Event>,
) -> Result<(), String> {
    use crate::node::wire::{read_message, write_message};
    use scold_proto::push::{
        PushAnswer as Answer, PushRefusal as RefusalCode, PushRequest as Request,
    };
    let mut tls = tokio::time::timeout(PUSH_STEP, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let identity = scold_pki::peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
    if identity.role != scold_pki::Role::Proxy {
        let why = format!("{identity} is not a proxy");
        let _ = write_message(
            &mut tls,
            &Answer::Refused {
                code: RefusalCode::Role,
                message: why.clone(),
            },
            PUSH_STEP,
        )
        .await;
        return Err(why);
    }
    // A certificate that names its addresses must name the one it connected from, as in
    // the admission of scheme 4.1.
    let names = scold_pki::peer_ip_addresses(tls.get_ref().1).map_err(|e| e.to_string())?;
    if !names.is_empty() && !names.contains(&from) {
        let why = format!("{identity} connected from {from}, but its certificate names {names:?}");
        let _ = write_message(
            &mut tls,
            &Answer::Refused {
                code: RefusalCode::NotInAltSet,
                message: why.clone(),
            },
            PUSH_STEP,
        )
        .await;
        return Err(why);
    }
    let request: Request = match read_message(&mut tls, PUSH_STEP).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write_message(
                &mut tls,
                &Answer::Refused {
                    code: RefusalCode::BadRequest,
                    message: e.clone(),
                },
                PUSH_STEP,
            )
            .await;
            return Err(format!("from {identity}: {e}"));
        }
    };
    let (tx, rx) = oneshot::channel();
    let sent = events
        .send(Event::Push {
            from,
            local,
            request,
            answer: tx,
        })
        .await
        .is_ok();
    // The agent asks its upstream for the ALT set first: allow for that.
    let answer = match (sent, tokio::time::timeout(PUSH_STEP * 2, rx).await) {
        (true, Ok(Ok(a))) => a,
        _ => Answer::Refused {
            code: RefusalCode::System,
            message: "the agent did not decide in time".into(),
        },
    };
    tracing::debug!(%identity, ?answer, "push answered");
    write_message(&mut tls, &answer, PUSH_STEP).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// How a link task probes its proxy.
struct Probing {
    interval: Duration,
    timeout: Duration,
    /// Limit of an admission or release over the link.
    call_timeout: Duration,
    /// Our data plane and the proxy's peer in it: what we sent into the tunnel.
    engine: EngineHandle,
    peer: String,
}

/// Fewest tunnel packets sent between two probes for a probe to judge the path.
const PATH_MIN_SENT: u64 = 2;

/// Watches the tunnel path itself from the probe answers: the packets we sent into the
/// tunnel to the proxy against the proxy's count of what arrived from us. The admission
/// connection alone shows only that the proxy's host answers on TCP; this sees tunnel
/// packets that stop reaching the proxy (its tunnel port blocked or flooded, its data
/// plane stuck). An idle tunnel gives no verdict either way. Sans-IO.
#[derive(Debug, Default)]
struct PathWatch {
    /// (sent, arrived) at the previous probe that had both.
    last: Option<(u64, u64)>,
    /// Probes in a row that saw packets sent and none arrive.
    stalled: u32,
}

impl PathWatch {
    /// One probe answer: `sent` is ours, read before the probe went out (so those packets
    /// had the probe's round trip to arrive); `arrived` is the proxy's, read when it
    /// answered. True when `limit` probes in a row saw packets sent and none arrive.
    fn observe(&mut self, sent: u64, arrived: u64, limit: u32) -> bool {
        match self.last {
            // A counter went back: the peer or the session was made anew.
            Some((s0, a0)) if sent < s0 || arrived < a0 => self.stalled = 0,
            Some((_, a0)) if arrived > a0 => self.stalled = 0,
            Some((s0, _)) if sent - s0 >= PATH_MIN_SENT => self.stalled += 1,
            _ => {}
        }
        self.last = Some((sent, arrived));
        self.stalled >= limit.max(1)
    }

    /// An answer without the proxy's count: the next one is not compared across the gap.
    fn gap(&mut self) {
        self.last = None;
    }
}

/// Tunnel packets sent to `peer` so far, from our data plane; None when it did not say.
async fn sent_to(engine: &EngineHandle, peer: &str) -> Option<u64> {
    let peer = peer.to_string();
    engine
        .call(move |s| {
            s.stats()
                .peers
                .into_iter()
                .find(|p| p.name == peer)
                .map(|p| p.counters.tx_packets)
        })
        .await
        .ok()
        .flatten()
}

/// Owns one admission connection: carries the agent's requests and probes the proxy,
/// and through its answers the tunnel path ([`PathWatch`]).
async fn link_task(
    mut conn: AdmissionConn,
    mut ops: mpsc::Receiver<LinkOp>,
    events: mpsc::Sender<Event>,
    p: Probing,
) {
    let proxy = conn.proxy.ip();
    let mut seq = 0u64;
    let mut path = PathWatch::default();
    // As many stalled probes as fit in the probe time limit: the tunnel path gets the
    // same time to recover as the admission connection.
    let limit = u32::try_from(p.timeout.as_millis() / p.interval.as_millis().max(1))
        .unwrap_or(u32::MAX)
        .max(2);
    // What the agent was last told about the proxy draining.
    let mut told = false;
    let mut next_probe = tokio::time::Instant::now() + p.interval;
    let why = loop {
        if conn.draining() != told {
            told = conn.draining();
            let reason = conn.drain_reason().map(str::to_string);
            let _ = events
                .send(Event::Draining {
                    proxy,
                    draining: told,
                    reason,
                })
                .await;
        }
        tokio::select! {
            op = ops.recv() => match op {
                None => return,
                Some(LinkOp::Admit(req, alts, reply)) => {
                    let r = conn.admit(&req, &alts, p.call_timeout).await;
                    let broken = matches!(r, Err(AdmissionError::Protocol { .. } | AdmissionError::Timeout { .. }));
                    let why = r.as_ref().err().map(|e| e.to_string());
                    let _ = reply.send(r);
                    if broken {
                        break why.unwrap_or_default();
                    }
                }
                Some(LinkOp::Release(targets, reply)) => {
                    let _ = conn.call(&ClientMessage::Release { targets }, p.call_timeout).await;
                    let _ = reply.send(());
                }
            },
            // Between requests the proxy may speak unasked (a drain notice), or close.
            m = conn.recv_any() => match m {
                Err(e) => break e.to_string(),
                Ok(ProxyMessage::Draining { .. }) => {}
                Ok(other) => tracing::debug!(%proxy, answer = ?other, "late admission answer ignored"),
            },
            _ = tokio::time::sleep_until(next_probe) => {
                seq += 1;
                let sent = sent_to(&p.engine, &p.peer).await;
                let r = probe_once(&mut conn, seq, p.timeout).await;
                // The interval runs from the end of a probe, as before a late answer
                // could wake the loop in between.
                next_probe = tokio::time::Instant::now() + p.interval;
                match r {
                    Err(e) => break e,
                    Ok(arrived) => match (sent, arrived) {
                        (Some(sent), Some(arrived)) => {
                            if path.observe(sent, arrived, limit) {
                                break format!(
                                    "tunnel packets stopped reaching the proxy ({limit} probes in a row: sent, none arrived)"
                                );
                            }
                        }
                        _ => path.gap(),
                    },
                }
            }
        }
    };
    let _ = events.send(Event::LinkDown { proxy, why }).await;
}

/// One probe: a ping, and its pong within `timeout`. Late answers to earlier requests
/// (a release that timed out) are skipped. Returns the proxy's count of our tunnel
/// packets that arrived, when it gave one.
async fn probe_once(
    conn: &mut AdmissionConn,
    seq: u64,
    timeout: Duration,
) -> Result<Option<u64>, String> {
    let r = tokio::time::timeout(timeout, async {
        conn.send(&ClientMessage::Ping { seq }).await?;
        loop {
            match conn.recv().await? {
                ProxyMessage::Pong {
                    seq: s, arrived, ..
                } if s == seq => return Ok::<Option<u64>, AdmissionError>(arrived),
                _ => continue,
            }
        }
    })
    .await;
    match r {
        Ok(Ok(arrived)) => Ok(arrived),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer to a probe within {} ms",
            timeout.as_millis()
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The DNS front: forwards to ClientDNS, asks for ALT beside A/AAAA
// ---------------------------------------------------------------------------------------

struct DnsFront {
    upstream: Vec<SocketAddr>,
    timeout: Duration,
    alt_type: u16,
    events: mpsc::Sender<Event>,
}

/// Longest wait for the indirect route before the answer goes out anyway.
const SETUP_WAIT: Duration = Duration::from_secs(4);
/// Queries answered at once over UDP, and TCP connections served at once.
const MAX_IN_FLIGHT: usize = 512;
const MAX_TCP: usize = 128;

fn name_key(n: &Name) -> String {
    let mut s = n.to_ascii().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

impl DnsFront {
    async fn start(
        self: Arc<Self>,
        listen: SocketAddr,
    ) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
        let udp = Arc::new(tokio::net::UdpSocket::bind(listen).await?);
        let tcp = tokio::net::TcpListener::bind(listen).await?;
        let me = self.clone();
        let udp_task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, src) = match udp.recv_from(&mut buf).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS receive failed");
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%src, "too many DNS queries in flight; dropping one");
                    continue;
                };
                let req = buf[..n].to_vec();
                let me = me.clone();
                let udp = udp.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(resp) = me.answer(&req, true).await {
                        let _ = udp.send_to(&resp, src).await;
                    }
                });
            }
        });
        let me = self;
        let tcp_task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    loop {
                        let mut lb = [0u8; 2];
                        let read =
                            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut lb))
                                .await;
                        if !matches!(read, Ok(Ok(_))) {
                            break;
                        }
                        let mut req = vec![0u8; u16::from_be_bytes(lb) as usize];
                        if !matches!(
                            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut req))
                                .await,
                            Ok(Ok(_))
                        ) {
                            break;
                        }
                        let Some(resp) = me.answer(&req, false).await else {
                            break;
                        };
                        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(vec![udp_task, tcp_task])
    }

    /// Sends `req` to the upstreams in order; the first usable answer.
    async fn forward(&self, req: &[u8]) -> Option<Vec<u8>> {
        for server in &self.upstream {
            match scold_dns::net::exchange(
                *server,
                req,
                self.timeout,
                scold_dns::net::Transport::Auto,
            )
            .await
            {
                Ok(r) if r.len() >= 12 => {
                    let rcode = r[3] & 0x0f;
                    // SERVFAIL and REFUSED: the next upstream may do better.
                    if (rcode == 2 || rcode == 5)
                        && server != self.upstream.last().expect("non-empty")
                    {
                        continue;
                    }
                    return Some(r);
                }
                Ok(_) => continue,
                Err(e) => tracing::debug!(%server, error = %e, "upstream did not answer"),
            }
        }
        None
    }

    /// The ALT set of `name` and its TTL (for an empty set: the negative TTL).
    async fn alt(&self, name: &str) -> Result<(Vec<IpAddr>, u32), String> {
        let qname = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(qname, RecordType::Unknown(self.alt_type)));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
        let bytes = m.to_vec().map_err(|e| e.to_string())?;
        let r = self
            .forward(&bytes)
            .await
            .ok_or_else(|| "no upstream answered the ALT query".to_string())?;
        let resp = Message::from_vec(&r).map_err(|e| format!("ALT answer: {e}"))?;
        if resp.metadata.id != m.metadata.id {
            return Err("ALT answer with another ID".into());
        }
        alt_from_response(&resp, self.alt_type)
    }

    /// Answers one query from an application; None: send nothing.
    async fn answer(&self, req: &[u8], udp: bool) -> Option<Vec<u8>> {
        let parsed = Message::from_vec(req).ok();
        let question = parsed.as_ref().and_then(|m| {
            let q = m.queries.first()?;
            let scold = m.metadata.message_type == MessageType::Query
                && m.metadata.op_code == OpCode::Query
                && q.query_class() == DNSClass::IN
                && matches!(q.query_type(), RecordType::A | RecordType::AAAA);
            scold.then(|| name_key(q.name()))
        });
        let (resp, alt) = match &question {
            Some(name) => {
                let (r, a) = tokio::join!(self.forward(req), self.alt(name));
                (r, Some(a))
            }
            None => (self.forward(req).await, None),
        };
        let resp = match resp {
            Some(r) => r,
            None => return parsed.map(|m| servfail(&m)),
        };
        if let (Some(name), Some(alt)) = (question, alt) {
            let targets = Message::from_vec(&resp)
                .ok()
                .filter(|m| m.metadata.response_code == ResponseCode::NoError)
                .map(|m| addresses(&m))
                .unwrap_or_default();
            match alt {
                Ok((alts, ttl)) if !alts.is_empty() => {
                    if !targets.is_empty() {
                        let (tx, rx) = oneshot::channel();
                        let ev = Event::Lookup {
                            name: name.clone(),
                            targets,
                            alts,
                            ttl,
                            done: tx,
                        };
                        if self.events.send(ev).await.is_ok()
                            && tokio::time::timeout(SETUP_WAIT, rx).await.is_err()
                        {
                            tracing::warn!(%name, "indirect route not ready in time; answering anyway");
                        }
                    }
                }
                Ok(_) => {
                    let _ = self.events.send(Event::NoAlt { name }).await;
                }
                Err(e) => tracing::debug!(%name, error = %e, "ALT lookup failed; routes unchanged"),
            }
        }
        Some(if udp { fit_udp(req, resp) } else { resp })
    }
}

/// The ALT addresses of a response and their TTL; NODATA/NXDOMAIN give an empty set with
/// the negative TTL.
fn alt_from_response(resp: &Message, alt_type: u16) -> Result<(Vec<IpAddr>, u32), String> {
    match resp.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rc => return Err(format!("ALT query answered {rc}")),
    }
    let mut alts = Vec::new();
    let mut ttl = u32::MAX;
    for r in &resp.answers {
        if u16::from(r.record_type()) != alt_type {
            continue;
        }
        let wire = scold_dns::wire::rdata_wire(&r.data).map_err(|e| e.to_string())?;
        match scold_dns::alt::AltRdata::from_wire(&wire) {
            Ok(a) => {
                if !alts.contains(&a.addr()) {
                    alts.push(a.addr());
                }
                ttl = ttl.min(r.ttl);
            }
            Err(e) => tracing::warn!(error = %e, "malformed ALT record ignored"),
        }
    }
    if alts.is_empty() {
        ttl = resp
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(5);
    }
    Ok((alts, ttl))
}

/// A/AAAA addresses in the answer section.
fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v
}

fn servfail(req: &Message) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.response_code = ResponseCode::ServFail;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    if let Some(q) = req.queries.first() {
        m.add_query(q.clone());
    }
    m.to_vec().unwrap_or_default()
}

/// An upstream answer that may have come over TCP, cut to what the application's UDP
/// query allows (its EDNS payload size, or 512): truncated with TC set if larger.
fn fit_udp(req: &[u8], resp: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(req)
        .ok()
        .and_then(|m| m.edns.as_ref().map(|e| e.max_payload()))
        .unwrap_or(512)
        .max(512) as usize;
    if resp.len() <= limit {
        return resp;
    }
    match Message::from_vec(&resp) {
        Ok(m) => {
            let mut t = m.truncate();
            t.metadata.truncation = true;
            t.to_vec().unwrap_or_default()
        }
        Err(_) => resp[..12.min(resp.len())].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Record, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(rcode: ResponseCode) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(
            name("www.site.example."),
            RecordType::Unknown(65280),
        ));
        m
    }

    fn alt_record(bytes: &[u8], ttl: u32) -> Record {
        let data = RData::Unknown {
            code: RecordType::Unknown(65280),
            rdata: hickory_proto::rr::rdata::NULL::with(bytes.to_vec()),
        };
        Record::from_rdata(name("www.site.example."), ttl, data)
    }

    fn soa(minimum: u32) -> Record {
        Record::from_rdata(
            name("site.example."),
            60,
            RData::SOA(SOA::new(
                name("ns.site.example."),
                name("admin.site.example."),
                1,
                60,
                60,
                600,
                minimum,
            )),
        )
    }

    #[test]
    fn alt_set_from_an_answer() {
        let mut m = response(ResponseCode::NoError);
        m.add_answer(alt_record(&[10, 1, 0, 11], 30));
        m.add_answer(alt_record(&[10, 1, 0, 12], 20));
        // Duplicates and malformed RDATA (neither 4 nor 16 bytes) are not addresses.
        m.add_answer(alt_record(&[10, 1, 0, 12], 20));
        m.add_answer(alt_record(&[1, 2, 3], 5));
        // Another type in the answer does not count.
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        let bytes = m.to_vec().unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        let (alts, ttl) = alt_from_response(&m, 65280).unwrap();
        assert_eq!(alts, vec![ip("10.1.0.11"), ip("10.1.0.12")]);
        assert_eq!(ttl, 20);
        // Under another ALT code the same records are not ALT.
        assert!(alt_from_response(&m, 65281).unwrap().0.is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_alt_uses_the_negative_ttl_and_failures_are_errors() {
        let mut m = response(ResponseCode::NoError);
        m.add_authority(soa(3));
        let (alts, ttl) = alt_from_response(&m, 65280).unwrap();
        assert!(alts.is_empty());
        assert_eq!(ttl, 3);
        let m = response(ResponseCode::NXDomain);
        assert_eq!(alt_from_response(&m, 65280).unwrap(), (vec![], 5));
        assert!(alt_from_response(&response(ResponseCode::ServFail), 65280).is_err());
        assert!(alt_from_response(&response(ResponseCode::Refused), 65280).is_err());
    }

    #[test]
    fn addresses_of_an_answer() {
        let mut m = response(ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        m.add_answer(Record::from_rdata(
            name("www.site.example."),
            1,
            RData::A(A::new(10, 4, 0, 2)),
        ));
        m.add_answer(alt_record(&[10, 1, 0, 11], 30));
        assert_eq!(addresses(&m), vec![ip("10.4.0.2")]);
    }

    #[test]
    fn large_answers_are_truncated_for_udp() {
        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name("big.site.example."), RecordType::A));
        let req = q.to_vec().unwrap();
        let mut r = Message::response(9, OpCode::Query);
        r.add_query(Query::query(name("big.site.example."), RecordType::A));
        for i in 0..60u8 {
            r.add_answer(Record::from_rdata(
                name("big.site.example."),
                1,
                RData::A(A::new(10, 4, 1, i)),
            ));
        }
        let big = r.to_vec().unwrap();
        assert!(big.len() > 512);
        let cut = fit_udp(&req, big);
        assert!(cut.len() <= 512);
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        // Garbage from upstream is cut to a header, never passed on whole.
        assert_eq!(fit_udp(&req, vec![0xff; 600]).len(), 12);
        // Small answers pass unchanged.
        let small = response(ResponseCode::NoError).to_vec().unwrap();
        assert_eq!(fit_udp(&req, small.clone()), small);
    }

    #[test]
    fn names_are_compared_lowercase_and_absolute() {
        assert_eq!(name_key(&name("WWW.Site.Example")), "www.site.example.");
        assert_eq!(name_key(&name("www.site.example.")), "www.site.example.");
    }

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

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(300));
        // A TTL of 0 is re-read at the least interval, below a second if so configured.
        assert_eq!(refresh_in(0, min, max), min);
        assert_eq!(refresh_in(1, min, max), Duration::from_secs(1));
        assert_eq!(refresh_in(86400, min, max), max);
        // Bounds the wrong way round do not panic: the least interval wins.
        assert_eq!(
            refresh_in(5, Duration::from_secs(10), Duration::from_secs(1)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn path_watch_sees_packets_stop_arriving() {
        let mut w = PathWatch::default();
        // First answer: nothing to compare with.
        assert!(!w.observe(10, 5, 3));
        // Packets go and arrive.
        assert!(!w.observe(20, 15, 3));
        // Sent, none arrived: three probes in a row is the limit.
        assert!(!w.observe(30, 15, 3));
        assert!(!w.observe(40, 15, 3));
        assert!(w.observe(50, 15, 3));
        // One arrival clears it.
        assert!(!w.observe(60, 16, 3));
        assert_eq!(w.stalled, 0);
    }

    #[test]
    fn path_watch_idle_and_gaps_give_no_verdict() {
        let mut w = PathWatch::default();
        assert!(!w.observe(10, 10, 2));
        // Idle: fewer than PATH_MIN_SENT packets between probes, nothing arrived.
        for _ in 0..10 {
            assert!(!w.observe(10 + PATH_MIN_SENT - 1, 10, 2));
            w.last = Some((10, 10));
        }
        assert_eq!(w.stalled, 0);
        // A stall, then an answer without the proxy's count, then a comparison that
        // starts over: the gap is not judged.
        assert!(!w.observe(20, 10, 2));
        w.gap();
        assert!(!w.observe(1000, 10, 2));
        assert_eq!(w.stalled, 1);
        // Counters that went back (peer or session made anew) start over.
        assert!(!w.observe(5, 0, 2));
        assert_eq!(w.stalled, 0);
        // A limit of 0 acts as 1.
        let mut w = PathWatch::default();
        w.observe(0, 0, 0);
        assert!(w.observe(10, 0, 0));
    }
}
