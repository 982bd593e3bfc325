//! `scold proxy`: admits clients and relays their tunnels to the hidden gateway of the
//! target each asked for (paper Section 4), and in NAT mode (scheme 4.3) relays a
//! target's service ports from its own public address.
//!
//! Each admitted client is a tunnel peer known by its address: its inner packets must
//! carry that address as source and may only go to its targets; tunnel packets from
//! anyone not admitted are dropped without a word. The L3 relay never enters the kernel's
//! forwarding path: a packet is decapsulated, checked, and re-encapsulated for the
//! gateway inside the packet engine. Replies from the gateway go back to the session of
//! their destination. Counters are per session (peer) and node-wide.
//!
//! With a `[filter]` table every inner packet of a session passes the IDS/firewall on
//! the engine thread before it is relayed (see [`crate::proxy::filter`]); what it drops is
//! counted per session (`GetStats`: the peer's `dropped`; Prometheus:
//! `proxy_session_dropped_packets` and `proxy_session_filtered_packets` by client).

pub mod admission;
pub mod filter;
pub mod push;

use crate::node::control::{self, ControlSection, NodeContext, NotifyEntry};
use crate::node::daemon::{LiveChange, LiveReceiver};
use crate::node::{self, CommandReceiver, TunnelSection};
use crate::proxy::filter::{Defence, FilterSection, FilterUpdate, SelfDefenceSection, TunnelPorts};
use anyhow::Context as _;
use scold_proto::dataplane::{
    Command, Encap, NatService, Peer, Prefix, Protocol, PublicKey, Push, RefusalCode, Reply, Route,
    Session, Stats, Via,
};
use scold_tunnel::fib::{Dest, PeerPolicy};
use scold_tunnel::nat::{self, NatRelay};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use scold_tunnel::{Engine, EngineConfig, EngineHandle};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold proxy --config /etc/scold/proxy.toml
\
The config file holds the tunnel socket, gateways, admitted clients and NAT services.
\
Print a commented config with --example-config; make a WireGuard key with --genkey.")]
pub struct Args {
    #[command(flatten)]
    pub flags: node::daemon::Flags,
}

pub const EXAMPLE: &str = r#"# scold proxy: admits clients and relays them to the target's hidden gateway.

[tunnel]
# UDP socket for udp and wireguard tunnels (clients and gateways alike).
listen = "0.0.0.0:51820"
# Also carry RFC 2003 ipip tunnels (IP protocol 4, one raw socket for all peers).
ipip = false
# WireGuard private key (make one with `scold proxy --genkey`), or private_key_file.
private_key = "oK1m8k5gGv2cYxq0yRZt5oGv3s8Jk8oB1rKk7l0d0E0="
outer_mtu = 1500
encap = "wireguard"
# Packet-engine threads (default 1): each has its own UDP socket on the tunnel port
# and its own TUN queue, and inner flows are spread over them; about one per core the
# node can spare for packets. Changing it needs a restart.
engines = 1

# The link to the coordinator (optional: without it the proxy runs standalone with the
# entries below). The coordinator sets up gateways and routes while a target is diverted.
[control]
coordinator = "192.0.2.100:7800"
# The public address clients reach this proxy at; the tunnel end point is this address
# and the port of tunnel.listen unless `endpoint` says otherwise. What goes into ALT is
# the consortium's word, not this file's: the coordinator lists a proxy under the
# address of its [[proxy]] entry, or else only under an address its certificate names
# (`scold ca issue --role proxy --ip ADDR`), and takes capacity and organisation from
# its own [[proxy]] entry. The values here are reported for information.
address = "192.0.2.10"
capacity_mbps = 1000
organisation = "org-a"
metrics = "127.0.0.1:9801"    # Prometheus metrics (optional, also standalone)
[control.tls]
ca = "ca.crt"                 # relative to this file's folder unless absolute
cert = "proxy-p1.crt"         # scold ca issue --role proxy --name p1
key = "proxy-p1.key"
crl = "crl.pem"

# The admission service of scheme 4.1 (client agents connect here over TLS and see this
# certificate). The same identity pushes routes to client agents in scheme 4.2: the
# coordinator orders a push, the proxy connects to the agent's push port with this
# certificate, and admits the client with the tunnel parameters the agent answers.
# [admission]
# listen = "0.0.0.0:5443"
# ca = "ca.crt"
# cert = "proxy-p1.crt"
# key = "proxy-p1.key"
# The door of the admission port, counted before any TLS handshake: connections per
# source address, per network (/24, /56) and in total. One host or one network cannot
# fill the port that legitimate clients need.
# connections = { per_source = 8, per_prefix = 64, total = 1024 }
# handshake_timeout_ms = 3000   # a TLS handshake not done by then is dropped
# hello_timeout_secs = 5        # silence allowed before the first admission or probe
# idle_timeout_secs = 30        # silence allowed on an admitted client's connection
# max_clients_per_prefix = 64   # sessions one /24 (/56) may hold of max_clients
# Stateless cookies: with this many connections or more not yet admitted (in their TLS
# handshake or waiting for their first request) the port is under load, and a
# connection gets a TLS handshake only if its cookie preamble carries the cookie this
# proxy gave its address; any other is answered with a cookie reply and closed at once
# (the agent connects again with the cookie). Agents too old to send the preamble are
# not served while it lasts. 0: always demand a cookie.
# cookie_after = 64

# Client sites' resolvers told by a TSIG-signed NOTIFY to drop a diverted name at once
# (each resolver lists this key under its notify_key).
[[notify]]
resolver = "198.51.100.53:53"
key = "hmac-sha256:p1:cHJveHkxLWV4YW1wbGUtc2VjcmV0LWNoYW5nZS1tZSE="

# The IDS/firewall: every packet a client session sends through the proxy is judged
# on the relay path, and everything else arriving on the proxy's link (interface) by a
# watcher, per source (token buckets per flood class); sources that keep flooding are
# dropped, blocked in nftables (table inet scold) and reported to the coordinator
# (traceback).
[filter]
interface = "eth0"
alerts = "/var/log/scold/alerts.jsonl"   # JSON lines; default: standard error
nft = true                    # mirror blocks into the kernel when nft is installed
traceback_secs = 10
traceback_top = 20
# Per-source limits (defaults shown): pps = 20000.0, bytes_per_s = 25000000.0,
# udp_pps = 10000.0, icmp_pps = 50.0, syn_pps = 50.0; block_after_drops = 200,
# block_secs = 60, max_block_secs = 3600, new_source_pps = 20000.0 (0: off)
# These limits, and [admission] connections and cookie_after, change without a restart:
# edit this file, then `systemctl reload scold-proxy` (SIGHUP) or
# `scold ctl reload proxy/NAME`; the answer names what needs a restart instead.

# Self-defence: when the proxy itself is overwhelmed it asks the coordinator to reset
# it out of every ALT set (paper 4.4), and at once tells the client agents it admitted
# (scheme 4.1, over their open admission connections) to move to another proxy of the
# ALT set; once it has recovered for recover_ms it stops telling them.
[selfdefence]
# interface = "eth0"          # default: filter.interface
link_capacity_mbps = 1000.0
rx_pps_max = 500000.0
cpu_busy_max = 0.95
sustain_ms = 3000
recover_ms = 30000

# Gateways of targets (the coordinator adds more through the control channel).
[[peers]]
name = "gw-example"
address = "203.0.113.1"
port = 51820
encap = "wireguard"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
keepalive_secs = 25

# Which gateway carries which target.
[[routes]]
destination = "203.0.113.10/32"
via = { peer = "gw-example" }

# Admitted clients (normally added after the admission exchange or a coordinator push).
[[sessions]]
client = "198.51.100.7"
encap = "wireguard"
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
targets = ["203.0.113.10/32"]
# port = 40000   # leave out to learn it from the client's first packet

# Routes pushed to client agents at start (scheme 4.2; normally the coordinator orders
# them while a target is diverted). Needs [admission]: its certificate is shown to the
# agent, which accepts only if this proxy is in the ALT set of fqdn.
# [[pushes]]
# client = "site1"
# agent = "198.51.100.7:5444"
# fqdn = "www.example.net."
# targets = ["203.0.113.10"]

# NAT mode (scheme 4.3): relay the target's service ports from this proxy's address.
# Needs the [nat] section: relayed flows leave through a TUN device with this source
# address, and the target routes replies to it back through its gateway.
[nat]
tun_name = "scold-nat"
source = "100.64.0.1"
table = 5100
rule_priority = 5100

[[nat_services]]
protocol = "tcp"
listen = "192.0.2.10:80"
target = "203.0.113.10:80"
proxy_protocol = true   # start each connection with a PROXY protocol v2 header
"#;

fn default_nat_tun() -> String {
    "scold-nat".into()
}
fn default_table() -> u32 {
    5100
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatSection {
    #[serde(default = "default_nat_tun")]
    pub tun_name: String,
    /// Source address of relayed flows inside the tunnel.
    pub source: IpAddr,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
}

impl NatSection {
    /// A `[nat]` table that gives relayed flows the source `source`, every other key at
    /// its default.
    pub fn new(source: IpAddr) -> NatSection {
        NatSection {
            tun_name: default_nat_tun(),
            source,
            table: default_table(),
            rule_priority: default_table(),
        }
    }
}

/// Every key has a default, so `Default` is what an empty config file gives.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tunnel: TunnelSection,
    #[serde(default)]
    pub nat: Option<NatSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<Session>,
    /// Scheme 4.2 routes pushed to client agents at start (normally the coordinator
    /// orders them); needs `[admission]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushes: Vec<Push>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_services: Vec<NatService>,
    #[serde(default, skip_serializing_if = "ControlSection::is_empty")]
    pub control: ControlSection,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyEntry>,
    #[serde(default)]
    pub filter: Option<FilterSection>,
    #[serde(default)]
    pub selfdefence: Option<SelfDefenceSection>,
    /// Scheme 4.1: the TLS admission port for client agents.
    #[serde(default)]
    pub admission: Option<crate::proxy::admission::AdmissionSection>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = scold_daemon::load(path, "scold proxy --example-config")?;
        c.file = path.to_path_buf();
        c.tunnel.check(path)?;
        c.control.check(path)?;
        control::Notifier::from_config(&c.notify, path)?;
        if let Some(f) = &c.filter {
            f.filter_config()
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        }
        if c.selfdefence
            .as_ref()
            .is_some_and(|s| s.interface.is_none())
            && c.filter.is_none()
        {
            anyhow::bail!(
                "config file {}: [selfdefence] needs an interface (or a [filter] table whose interface it watches)",
                path.display()
            );
        }
        if c.tunnel.listen.is_none() && !c.tunnel.ipip {
            anyhow::bail!(
                "config file {}: tunnel.listen is not set and tunnel.ipip is false: the proxy would carry no tunnel; set one",
                path.display()
            );
        }
        if !c.nat_services.is_empty() && c.nat.is_none() {
            anyhow::bail!(
                "config file {}: nat_services need a [nat] section (tun_name, source)",
                path.display()
            );
        }
        if !c.pushes.is_empty() && c.admission.is_none() {
            anyhow::bail!(
                "config file {}: pushes need an [admission] table: its certificate is what client agents check",
                path.display()
            );
        }
        for (place, cmd) in c.entries() {
            cmd.validate()
                .map_err(|e| anyhow::anyhow!("config file {}: {place}: {e}", path.display()))?;
        }
        Ok(c)
    }

    fn entries(&self) -> Vec<(String, Command)> {
        let mut v: Vec<(String, Command)> = Vec::new();
        v.extend(self.peers.iter().enumerate().map(|(i, p)| {
            (
                format!("peers[{i}] ({})", p.name),
                Command::AddPeer(p.clone()),
            )
        }));
        v.extend(self.routes.iter().enumerate().map(|(i, r)| {
            (
                format!("routes[{i}] ({})", r.destination),
                Command::AddRoute(r.clone()),
            )
        }));
        v.extend(self.sessions.iter().enumerate().map(|(i, s)| {
            (
                format!("sessions[{i}] ({})", s.client),
                Command::AddSession(s.clone()),
            )
        }));
        v.extend(self.pushes.iter().enumerate().map(|(i, p)| {
            (
                format!("pushes[{i}] ({} at {})", p.client, p.agent),
                Command::PushRoute(p.clone()),
            )
        }));
        v.extend(self.nat_services.iter().enumerate().map(|(i, n)| {
            (
                format!("nat_services[{i}] ({} {})", n.protocol, n.listen),
                Command::AddNatService(n.clone()),
            )
        }));
        v
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    node::daemon::run::<Config>(a.flags).await
}

impl node::daemon::RoleDaemon for Config {
    const ROLE: scold_proto::identity::Role = scold_proto::identity::Role::Proxy;
    const EXAMPLE: &'static str = EXAMPLE;
    /// The filter's thresholds and the admission port's limits; sessions, tunnels and
    /// connections are not touched by applying them.
    const LIVE: &'static [&'static str] = &[
        "filter.pps",
        "filter.bytes_per_s",
        "filter.udp_pps",
        "filter.icmp_pps",
        "filter.syn_pps",
        "filter.block_after_drops",
        "filter.block_secs",
        "filter.max_block_secs",
        "filter.new_source_pps",
        "admission.connections",
        "admission.cookie_after",
    ];

    fn load(path: &Path) -> anyhow::Result<Self> {
        Config::load(path)
    }

    fn control(&self) -> &ControlSection {
        &self.control
    }

    fn node_info(&self, path: &Path) -> anyhow::Result<scold_proto::control::NodeInfo> {
        let mut tunnel = self.control.tunnel_info(&self.tunnel, path)?;
        // Scheme 4.3: flows relayed from the service ports reach the target from the
        // `[nat]` source, so that is the address the coordinator has the target route
        // back through its gateway.
        if let (Some(t), Some(nat)) = (tunnel.as_mut(), &self.nat) {
            t.inside.get_or_insert(nat.source);
        }
        Ok(self.control.node_info(tunnel))
    }

    fn notifier(&self, path: &Path) -> anyhow::Result<Option<control::Notifier>> {
        Ok(Some(control::Notifier::from_config(&self.notify, path)?))
    }

    async fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        live: LiveReceiver<Config>,
        shutdown: S,
        ctx: NodeContext,
    ) -> anyhow::Result<()> {
        serve_live(self, commands, live, shutdown, ctx)
            .await
            .map(|_| ())
    }
}

/// The peer name of a client session.
pub fn session_peer_name(client: IpAddr) -> String {
    format!("client-{client}")
}

struct Nat {
    table: RouteTable,
    tun_index: u32,
    source: IpAddr,
    services: HashMap<(Protocol, SocketAddr), (NatService, NatRelay)>,
}

struct Proxy {
    engine: EngineHandle,
    nat: Option<Nat>,
    filter: Option<tokio::sync::mpsc::UnboundedSender<FilterUpdate>>,
    /// Scheme 4.2: the pusher (from `[admission]`), and what was pushed to each agent.
    pusher: Option<Arc<crate::proxy::push::Pusher>>,
    pushed: HashMap<SocketAddr, PushedClient>,
    /// Pushes whose exchange with the agent is still running, by agent and name, with
    /// the generation that started them: a withdraw or a newer push of the same name
    /// while one runs makes its result stale.
    in_flight: HashMap<(SocketAddr, String), u64>,
    push_generation: u64,
    /// Where a config reload's new limits go.
    live_filter: Option<filter::LiveFilter>,
    live_admission: Option<crate::proxy::admission::AdmissionLive>,
}

/// A push whose exchange with the agent ended (it ran in its own task so that a slow or
/// unreachable agent holds up neither the proxy's other commands nor other pushes).
struct PushDone {
    push: Push,
    generation: u64,
    result: Result<crate::proxy::push::Pushed, crate::proxy::push::PushError>,
    reply: oneshot::Sender<Reply>,
}

/// The routes pushed to one client agent, by target name; its session admits the union.
struct PushedClient {
    client: IpAddr,
    encap: Encap,
    public_key: Option<PublicKey>,
    targets: std::collections::BTreeMap<String, Vec<IpAddr>>,
}

impl PushedClient {
    fn session(&self) -> Session {
        let mut targets: Vec<Prefix> = self
            .targets
            .values()
            .flatten()
            .map(|t| Prefix::host(*t))
            .collect();
        targets.sort();
        targets.dedup();
        Session {
            client: self.client,
            port: None,
            encap: self.encap,
            public_key: self.public_key.clone(),
            targets,
            // A pushed client's engine count is not known: plain GSO runs.
            engines: None,
        }
    }
}

/// The refusal of a push by a proxy that cannot push.
fn no_pusher() -> Reply {
    Reply::refused(
        RefusalCode::NotForThisRole,
        "this proxy has no [admission] table, so it has no certificate to show client agents; add one to push routes (scheme 4.2)",
    )
}

impl Proxy {
    fn tell_filter(&self, u: FilterUpdate) {
        if let Some(f) = &self.filter {
            let _ = f.send(u);
        }
    }
}

fn engine_reply<T>(
    r: Result<Result<(T, bool), scold_tunnel::TunnelError>, scold_tunnel::TunnelError>,
) -> Reply {
    match r {
        Ok(Ok((_, changed))) => Reply::Done { changed },
        Ok(Err(e)) => Reply::refused(RefusalCode::Conflict, e.to_string()),
        Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
    }
}

impl Proxy {
    async fn add_session(&mut self, s: Session) -> Reply {
        let peer = Peer {
            name: session_peer_name(s.client),
            address: s.client,
            port: s.port,
            encap: s.encap,
            public_key: s.public_key.clone(),
            keepalive_secs: None,
            engines: s.engines,
        };
        let policy = PeerPolicy {
            sources: vec![Prefix::host(s.client)],
            destinations: s.targets.clone(),
            learn_sources: false,
            // The filter judges every packet of a client (a no-op without [filter]).
            inspect: true,
        };
        let client = s.client;
        let r = self
            .engine
            .call(move |st| {
                st.add_peer(&peer, policy).map(|(id, changed)| {
                    let routed = st.fib.insert(Prefix::host(client), Dest::Peer(id));
                    ((), changed || routed)
                })
            })
            .await;
        engine_reply(r)
    }

    /// Scheme 4.2: offers the route to the agent, then admits the client with the tunnel
    /// parameters it answered. Idempotent: a repeated push re-applies the same session.
    /// (Static pushes at start-up; the command loop runs pushes concurrently through
    /// [`Proxy::start_push`].)
    async fn push_route(&mut self, p: Push) -> Reply {
        let Some(pusher) = &self.pusher else {
            return no_pusher();
        };
        let result = pusher.push(&p).await;
        self.finish_push(p, result).await
    }

    /// Starts the exchange of `p` with its agent in its own task; the outcome comes back
    /// on `done` and is applied by [`Proxy::push_done`].
    fn start_push(
        &mut self,
        p: Push,
        reply: oneshot::Sender<Reply>,
        done: &mpsc::UnboundedSender<PushDone>,
    ) {
        let Some(pusher) = self.pusher.clone() else {
            let _ = reply.send(no_pusher());
            return;
        };
        self.push_generation += 1;
        let generation = self.push_generation;
        self.in_flight
            .insert((p.agent, scold_proto::push::name_key(&p.fqdn)), generation);
        let done = done.clone();
        tokio::spawn(async move {
            let result = pusher.push(&p).await;
            let _ = done.send(PushDone {
                push: p,
                generation,
                result,
                reply,
            });
        });
    }

    /// Applies a finished push unless a withdraw or a newer push of the same name came
    /// while it ran.
    async fn push_done(
        &mut self,
        push: Push,
        generation: u64,
        result: Result<crate::proxy::push::Pushed, crate::proxy::push::PushError>,
    ) -> Reply {
        let key = (push.agent, scold_proto::push::name_key(&push.fqdn));
        match self.in_flight.get(&key) {
            Some(&g) if g == generation => {
                self.in_flight.remove(&key);
                self.finish_push(push, result).await
            }
            Some(_) => Reply::refused(
                RefusalCode::Conflict,
                format!(
                    "push of {} to {} superseded by a newer push of the same name",
                    push.fqdn, push.agent
                ),
            ),
            None => {
                // Withdrawn while the agent was being asked: take back what it accepted.
                if result.is_ok() {
                    if let Some(pusher) = self.pusher.clone() {
                        let (agent, fqdn) = (push.agent, push.fqdn.clone());
                        tokio::spawn(async move {
                            if let Err(e) = pusher.withdraw(agent, &fqdn).await {
                                tracing::info!(%agent, %fqdn, error = %e, "could not take a withdrawn push back; the agent drops the route when the ALT records go");
                            }
                        });
                    }
                }
                Reply::refused(
                    RefusalCode::Conflict,
                    format!(
                        "push of {} to {} withdrawn while it was in flight",
                        push.fqdn, push.agent
                    ),
                )
            }
        }
    }

    /// Admits the client a push established (or reports why it was not).
    async fn finish_push(
        &mut self,
        p: Push,
        result: Result<crate::proxy::push::Pushed, crate::proxy::push::PushError>,
    ) -> Reply {
        let pushed = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(client = %p.client, agent = %p.agent, fqdn = %p.fqdn, error = %e, "push refused or failed");
                let code = match &e {
                    crate::proxy::push::PushError::Refused { .. } => RefusalCode::Conflict,
                    _ => RefusalCode::System,
                };
                return Reply::refused(code, e.to_string());
            }
        };
        let key = scold_proto::push::name_key(&p.fqdn);
        let entry = self.pushed.entry(p.agent).or_insert_with(|| PushedClient {
            client: pushed.client,
            encap: pushed.accepted.encap,
            public_key: pushed.accepted.public_key.clone(),
            targets: Default::default(),
        });
        entry.encap = pushed.accepted.encap;
        entry.public_key = pushed.accepted.public_key.clone();
        entry.targets.insert(key, p.targets.clone());
        let session = entry.session();
        self.tell_filter(FilterUpdate::Admit(session.client));
        let r = self.add_session(session).await;
        if r.is_ok() {
            tracing::info!(client = %p.client, agent = %p.agent, fqdn = %p.fqdn, encap = %pushed.accepted.encap, "route pushed to the client agent; session admitted");
        }
        r
    }

    /// Carries out commands until `shutdown`, like [`node::command_loop`], except that
    /// pushes run concurrently.
    /// Applies a reloaded config's live keys: the filter's thresholds, the admission
    /// port's limits. Sessions, tunnels and connections stay as they are.
    fn reconfigure(&mut self, change: LiveChange<Config>) {
        let LiveChange {
            config,
            keys,
            reply,
        } = change;
        let mut result = Ok(());
        if keys.iter().any(|k| k.starts_with("filter.")) {
            result = match (&self.live_filter, &config.filter) {
                (Some(l), Some(f)) => l.apply(f),
                _ => Err("the proxy runs without a [filter]; adding one needs a restart".into()),
            };
        }
        if result.is_ok() && keys.iter().any(|k| k.starts_with("admission.")) {
            match (&self.live_admission, &config.admission) {
                (Some(l), Some(a)) => l.apply(a),
                _ => {
                    result = Err(
                        "the proxy runs without an [admission] port; adding one needs a restart"
                            .into(),
                    )
                }
            }
        }
        let _ = reply.send(result);
    }

    async fn command_loop(
        &mut self,
        commands: &mut CommandReceiver,
        live: &mut LiveReceiver<Config>,
        shutdown: impl Future<Output = ()>,
    ) {
        use node::Node as _;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<PushDone>();
        tokio::pin!(shutdown);
        let mut open = true;
        let mut reloads = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                change = live.recv(), if reloads => match change {
                    Some(c) => self.reconfigure(c),
                    None => reloads = false,
                },
                Some(PushDone { push, generation, result, reply }) = done_rx.recv() => {
                    let r = self.push_done(push, generation, result).await;
                    node::log_reply("push_route", &r);
                    let _ = reply.send(r);
                }
                c = commands.recv(), if open => match c {
                    Some((Command::PushRoute(p), reply)) => self.start_push(p, reply, &done_tx),
                    Some((cmd, reply)) => {
                        let kind = cmd.kind();
                        let r = self.apply(cmd).await;
                        node::log_reply(kind, &r);
                        let _ = reply.send(r);
                    }
                    // The control plane went away; keep forwarding until told to stop.
                    None => open = false,
                },
            }
        }
    }

    /// Scheme 4.2: tells the agent to drop what this proxy pushed for `fqdn` (best
    /// effort: an agent that is gone tears down by itself when ALT goes) and narrows or
    /// removes the client's session.
    async fn withdraw_push(&mut self, agent: SocketAddr, fqdn: String) -> Reply {
        let key = scold_proto::push::name_key(&fqdn);
        let stopped = self.in_flight.remove(&(agent, key.clone())).is_some();
        let Some(entry) = self.pushed.get_mut(&agent) else {
            return Reply::Done { changed: stopped };
        };
        if entry.targets.remove(&key).is_none() {
            return Reply::Done { changed: stopped };
        }
        if let Some(pusher) = &self.pusher {
            if let Err(e) = pusher.withdraw(agent, &fqdn).await {
                tracing::info!(%agent, %fqdn, error = %e, "could not tell the client agent; it drops the route when the ALT records go");
            }
        }
        let (client, remaining) = (entry.client, !entry.targets.is_empty());
        if remaining {
            let session = entry.session();
            return self.add_session(session).await;
        }
        self.pushed.remove(&agent);
        self.tell_filter(FilterUpdate::Dismiss(client));
        let name = session_peer_name(client);
        match self.engine.call(move |s| s.remove_peer(&name)).await {
            Ok(_) => Reply::Done { changed: true },
            Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
        }
    }

    async fn add_nat_service(&mut self, n: NatService) -> Reply {
        let Some(nat) = self.nat.as_mut() else {
            return Reply::refused(
                RefusalCode::NotForThisRole,
                "this proxy has no [nat] section, so it cannot relay services",
            );
        };
        let key = (n.protocol, n.listen);
        if let Some((existing, _)) = nat.services.get(&key) {
            if *existing == n {
                return Reply::Done { changed: false };
            }
            nat.services.remove(&key);
        }
        let target_host = Prefix::host(n.target.ip());
        if let Err(e) = nat
            .table
            .add(
                target_host,
                RouteTarget::Device {
                    index: nat.tun_index,
                    src: Some(nat.source).filter(|s| s.is_ipv4() == n.target.is_ipv4()),
                },
            )
            .await
        {
            return Reply::refused(RefusalCode::System, e.to_string());
        }
        let relay = match n.protocol {
            Protocol::Tcp => nat::spawn_tcp(n.listen, n.target, n.proxy_protocol).await,
            Protocol::Udp => nat::spawn_udp(n.listen, n.target).await,
        };
        match relay {
            Ok(r) => {
                tracing::info!(protocol = %n.protocol, listen = %n.listen, target = %n.target, proxy_protocol = n.proxy_protocol, "NAT service relaying");
                nat.services.insert(key, (n, r));
                Reply::Done { changed: true }
            }
            Err(e) => {
                if !nat
                    .services
                    .values()
                    .any(|(s, _)| s.target.ip() == n.target.ip())
                {
                    let _ = nat.table.remove(&target_host).await;
                }
                Reply::refused(RefusalCode::System, e.to_string())
            }
        }
    }

    async fn remove_nat_service(&mut self, protocol: Protocol, listen: SocketAddr) -> Reply {
        let Some(nat) = self.nat.as_mut() else {
            return Reply::Done { changed: false };
        };
        let Some((svc, _relay)) = nat.services.remove(&(protocol, listen)) else {
            return Reply::Done { changed: false };
        };
        if !nat
            .services
            .values()
            .any(|(s, _)| s.target.ip() == svc.target.ip())
        {
            if let Err(e) = nat.table.remove(&Prefix::host(svc.target.ip())).await {
                return Reply::refused(RefusalCode::System, e.to_string());
            }
        }
        Reply::Done { changed: true }
    }
}

impl node::Node for Proxy {
    async fn apply(&mut self, cmd: Command) -> Reply {
        if let Err(e) = cmd.validate() {
            return e.into();
        }
        match cmd {
            Command::AddPeer(p) => {
                // A gateway: its replies are never judged by the filter.
                self.tell_filter(FilterUpdate::Exempt(p.address));
                let r = self
                    .engine
                    .call(move |s| s.add_peer(&p, PeerPolicy::default()))
                    .await;
                engine_reply(r)
            }
            Command::RemovePeer { name } => {
                let r = self
                    .engine
                    .call(move |s| {
                        let addr = s.peer_spec(&name).map(|p| p.address);
                        (s.remove_peer(&name), addr)
                    })
                    .await;
                match r {
                    Ok((changed, addr)) => {
                        if let Some(a) = addr {
                            self.tell_filter(FilterUpdate::Unexempt(a));
                        }
                        Reply::Done { changed }
                    }
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::AddSession(s) => {
                self.tell_filter(FilterUpdate::Admit(s.client));
                self.add_session(s).await
            }
            Command::RemoveSession { client } => {
                self.tell_filter(FilterUpdate::Dismiss(client));
                let name = session_peer_name(client);
                match self.engine.call(move |s| s.remove_peer(&name)).await {
                    Ok(changed) => Reply::Done { changed },
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::AddRoute(Route {
                destination,
                via: Via::Peer(name),
            }) => {
                let r = self
                    .engine
                    .call(move |s| match s.peer_id(&name) {
                        Some(id) => Ok(s.fib.insert(destination, Dest::Peer(id))),
                        None => Err(name),
                    })
                    .await;
                match r {
                    Ok(Ok(changed)) => Reply::Done { changed },
                    Ok(Err(name)) => Reply::refused(
                        RefusalCode::UnknownReference,
                        format!("route {destination}: no peer named {name:?}; add the gateway peer first"),
                    ),
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::AddRoute(_) => Reply::refused(
                RefusalCode::NotForThisRole,
                "a proxy routes targets through gateway peers (via = { peer = NAME })",
            ),
            Command::RemoveRoute { destination } => {
                match self.engine.call(move |s| s.fib.remove(&destination)).await {
                    Ok(changed) => Reply::Done { changed },
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::PushRoute(p) => self.push_route(p).await,
            Command::WithdrawPush { agent, fqdn } => self.withdraw_push(agent, fqdn).await,
            Command::AddNatService(n) => self.add_nat_service(n).await,
            Command::RemoveNatService { protocol, listen } => {
                self.remove_nat_service(protocol, listen).await
            }
            Command::GetStats => match self.engine.call(|s| s.stats()).await {
                Ok(s) => Reply::Stats(s),
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            Command::SetReturnPath { .. } | Command::ClearReturnPath => Reply::refused(
                RefusalCode::NotForThisRole,
                "the return path is set at the target, not at a proxy",
            ),
        }
    }
}

/// Runs the proxy until `shutdown`; `commands` is the control plane's feed. Returns the
/// final counters after NAT routes are removed.
pub async fn serve(
    cfg: Config,
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Stats> {
    serve_with(cfg, commands, shutdown, NodeContext::default()).await
}

/// [`serve`] with the control link's context: the filter reports through its agent.
pub async fn serve_with(
    cfg: Config,
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
    ctx: NodeContext,
) -> anyhow::Result<Stats> {
    let (_none, live) = mpsc::channel(1);
    serve_live(cfg, commands, live, shutdown, ctx).await
}

/// [`serve_with`] that also applies reloaded configs from `live`.
pub async fn serve_live(
    cfg: Config,
    mut commands: CommandReceiver,
    mut live: LiveReceiver<Config>,
    shutdown: impl Future<Output = ()> + Send,
    ctx: NodeContext,
) -> anyhow::Result<Stats> {
    // Self-defence flips the switch; the admission server tells the clients to move.
    let (drain, drain_rx) = crate::proxy::admission::drain_switch();
    let tap = crate::proxy::admission::AdmissionTap::new(&cfg);
    let admission = crate::proxy::admission::start(
        &cfg,
        &mut commands,
        drain_rx,
        Some(ctx.metrics.metrics.clone()),
        tap.clone(),
    )
    .await?;
    let pusher = crate::proxy::admission::pusher(&cfg)?;
    let nl = Netlink::new()?;
    let mut nat = None;
    let tun = match &cfg.nat {
        Some(n) => {
            let mtu = cfg.tunnel.inner_mtu();
            let tun = scold_tunnel::tun::create(&n.tun_name, mtu, cfg.tunnel.engines)?;
            let index = nl.link_index(&n.tun_name).await?;
            let len = if n.source.is_ipv4() { 32 } else { 128 };
            nl.add_address(index, n.source, len).await?;
            nl.set_up(index).await?;
            nat = Some(Nat {
                table: RouteTable::new(
                    nl.clone(),
                    n.table,
                    n.rule_priority,
                    RuleSelector::default(),
                ),
                tun_index: index,
                source: n.source,
                services: HashMap::new(),
            });
            Some(tun)
        }
        None => None,
    };
    let (engine, handle) = Engine::new(
        EngineConfig {
            udp_listen: cfg.tunnel.listen,
            ipip: cfg.tunnel.ipip,
            ipip_bind: cfg.tunnel.ipip_bind,
            private_key: cfg.tunnel.private_key(&cfg.file)?,
            outer_mtu: cfg.tunnel.outer_mtu,
            engines: cfg.tunnel.engines,
            peer_default: None,
        },
        tun,
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine_task = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    if let Some(n) = &cfg.nat {
        // Replies to relayed flows come back from the gateway addressed to the NAT source.
        let src = Prefix::host(n.source);
        handle.call(move |s| s.fib.insert(src, Dest::Tun)).await?;
    }
    let (defence, filter) = match &cfg.filter {
        Some(f) => {
            let ports = TunnelPorts {
                udp: cfg.tunnel.listen.map(|l| l.port()),
                ipip: cfg.tunnel.ipip,
            };
            let (d, tx, session) =
                Defence::start(Some(f), cfg.selfdefence.as_ref(), ports, &ctx, drain, tap)?;
            if let Some(sf) = session {
                // The filter on the relay path: owned by the engine thread from now on.
                let sf: Box<dyn scold_tunnel::Inspect> = Box::new(sf);
                handle.call(move |s| s.set_inspector(Some(sf))).await?;
            }
            (Some(d), Some(tx))
        }
        None => match &cfg.selfdefence {
            Some(sd) => (
                Some(Defence::start(None, Some(sd), TunnelPorts::default(), &ctx, drain, tap)?.0),
                None,
            ),
            None => (None, None),
        },
    };
    let session_metrics = tokio::spawn(session_metrics(handle.clone(), ctx.clone()));
    let tunnel_metrics = crate::node::tunnel_metrics::spawn(handle.clone(), &ctx.metrics.metrics);
    let mut node = Proxy {
        engine: handle,
        nat,
        filter,
        pusher: pusher.map(Arc::new),
        live_filter: defence.as_ref().and_then(|d| d.live.clone()),
        live_admission: admission.live.clone(),
        pushed: HashMap::new(),
        in_flight: HashMap::new(),
        push_generation: 0,
    };
    let result = node::apply_static(&cfg.file, cfg.entries(), &mut node).await;
    if result.is_ok() {
        tracing::info!(listen = ?cfg.tunnel.listen, ipip = cfg.tunnel.ipip, nat = cfg.nat.is_some(), "proxy running");
        node.command_loop(&mut commands, &mut live, shutdown).await;
    }
    if let Some(mut n) = node.nat.take() {
        n.services.clear();
        for e in n.table.clear().await {
            tracing::warn!(error = %e, "tear-down incomplete");
        }
    }
    session_metrics.abort();
    tunnel_metrics.abort();
    if let Some(d) = defence {
        d.stop().await;
    }
    let _ = stop_tx.send(());
    let stats = engine_task.await.context("packet engine task failed")?;
    tracing::info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "proxy stopped");
    result.map(|_| stats)
}

/// Keeps the per-session drop counters of the engine in the Prometheus registry, as
/// counters; a session's series goes when the session does.
async fn session_metrics(engine: EngineHandle, ctx: NodeContext) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    type Labels = Vec<(String, String)>;
    let dropped: Family<Labels, Counter> = Family::default();
    let filtered: Family<Labels, Counter> = Family::default();
    ctx.metrics.metrics.with_registry(|r| {
        r.register(
            "proxy_session_dropped_packets",
            "Packets of a client session the proxy dropped (policy, authentication, filter)",
            dropped.clone(),
        );
        r.register(
            "proxy_session_filtered_packets",
            "Packets of a client session the filter dropped on the relay path",
            filtered.clone(),
        );
    });
    let mut last: std::collections::HashMap<Labels, (u64, u64)> = Default::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // Bytes received from every peer, and when: the load the heartbeats report.
    let mut received: Option<(u64, std::time::Instant)> = None;
    loop {
        tick.tick().await;
        let Ok((drops, rx_bytes)) = engine
            .call(|s| {
                let rx: u64 = s.stats().peers.iter().map(|p| p.counters.rx_bytes).sum();
                (s.drops(), rx)
            })
            .await
        else {
            return;
        };
        if let Some(agent) = &ctx.agent {
            let now = std::time::Instant::now();
            let clients = drops
                .iter()
                .filter(|d| d.name.starts_with("client-"))
                .count() as u64;
            let rate = match received {
                Some((before, at)) if rx_bytes >= before => {
                    let secs = now.duration_since(at).as_secs_f64().max(0.001);
                    ((rx_bytes - before) as f64 / secs) as u64
                }
                _ => 0,
            };
            received = Some((rx_bytes, now));
            agent.report_load(|l| {
                l.clients = clients;
                l.bytes_per_sec = rate;
            });
        }
        let mut seen = std::collections::HashMap::new();
        for d in drops.iter().filter(|d| d.name.starts_with("client-")) {
            let labels = vec![("client".to_string(), d.address.to_string())];
            let (mut ld, mut lf) = last.remove(&labels).unwrap_or_default();
            scold_metrics::advance(&dropped.get_or_create(&labels), d.dropped, &mut ld);
            scold_metrics::advance(&filtered.get_or_create(&labels), d.filtered, &mut lf);
            seen.insert(labels, (ld, lf));
        }
        for gone in last.keys() {
            dropped.remove(gone);
            filtered.remove(gone);
        }
        last = seen;
    }
}
