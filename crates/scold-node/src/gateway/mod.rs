//! `scold gateway`: the hidden alternate gateway of a target site (paper Sections 2.2 A
//! and 4).
//!
//! It accepts tunnels only from the proxies the coordinator registered (by outer source
//! address, and in wireguard mode by key); anything else is dropped without an answer:
//! the tunnel socket is open, so the kernel sends no ICMP, and the engine never replies to
//! an unregistered or unauthenticated sender. Decapsulated packets go out of a TUN device
//! into the kernel, which forwards them to the target. The target's replies arrive on the
//! LAN interface; a policy rule (`iif LAN lookup TABLE`, TABLE: `default dev TUN`) sends
//! them back into the TUN device, and the engine returns each through the proxy that
//! client's traffic last came in by.

pub mod hidden;

use crate::node::control::{self, ControlSection};
use crate::node::{self, CommandReceiver, Sysctl, TunnelSection};
use anyhow::Context as _;
use hidden::{Hidden, HiddenSection, Openings};
use scold_proto::dataplane::{Command, Peer, Prefix, RefusalCode, Reply};
use scold_tunnel::fib::{Dest, PeerPolicy};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use scold_tunnel::{Engine, EngineConfig, EngineHandle};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold gateway --config /etc/scold/gateway.toml
\
The config file holds the tunnel socket, TUN device, LAN interface, registered proxies
\
and the hidden gateway's packet policy.
\
Print a commented config with --example-config; make a WireGuard key with --genkey.")]
pub struct Args {
    #[command(flatten)]
    pub flags: node::daemon::Flags,
    /// Print the packet policy that keeps this gateway silent (nft JSON) and exit. Load
    /// it at boot with `nft -j -f FILE` so the gateway is silent before the daemon runs.
    #[arg(long, requires = "config")]
    pub print_policy: bool,
}

pub const EXAMPLE: &str = r#"# scold gateway: the hidden alternate gateway of a target site.

# TUN device that carries decapsulated traffic to and from the target.
tun_name = "scold-gw"
# Interface towards the target: packets arriving here are sent back into the tunnels.
lan_interface = "eth1"
# SCOLD's own routing table and the priority of the rule that leads to it.
table = 5101
rule_priority = 5101
# Turn on IPv4 forwarding while running (restored on exit).
enable_forwarding = true

[tunnel]
# UDP socket for udp and wireguard tunnels from proxies.
listen = "0.0.0.0:51820"
# Also accept RFC 2003 ipip tunnels (IP protocol 4).
ipip = false
# WireGuard private key (make one with `scold gateway --genkey`), or private_key_file.
private_key = "oK1m8k5gGv2cYxq0yRZt5oGv3s8Jk8oB1rKk7l0d0E0="
# Outer path MTU, and the encapsulation whose overhead sets the TUN MTU.
outer_mtu = 1500
encap = "wireguard"
# Packet-engine threads (default 1): each has its own UDP socket on the tunnel port
# and its own TUN queue, and inner flows are spread over them; about one per core the
# node can spare for packets. Changing it needs a restart.
engines = 1

# The link to the coordinator (optional: without it the gateway runs standalone with
# the peers below). The coordinator tells the gateway which proxies to admit.
[control]
coordinator = "192.0.2.100:7800"
# The tunnel end point proxies send to (default: address and the port of tunnel.listen).
address = "203.0.113.1"
# This gateway's address on the target's network: the next hop of the target's return
# path, announced to the coordinator.
inside = "10.3.0.1"
organisation = "org-target"
# Prometheus metrics at http://ADDR/metrics (optional, also without a coordinator).
metrics = "127.0.0.1:9802"
[control.tls]
ca = "ca.crt"                 # relative to this file's folder unless absolute
cert = "gateway-gw1.crt"      # scold ca issue --role gateway --name gw1
key = "gateway-gw1.key"
crl = "crl.pem"

# The packet policy that keeps the gateway hidden (nftables, installed at start, removed
# at exit): nothing leaves but tunnel packets to registered proxies, the control
# connection, and traffic on lan_interface and the TUN device. `scold gateway --config
# FILE --print-policy > /etc/scold/hidden.json` and `nft -j -f /etc/scold/hidden.json`
# in a boot unit keep it silent before the daemon starts.
[hidden]
enabled = true
# No way in to the target's network but the tunnels: forwarded traffic passes only if it
# enters or leaves the TUN device, comes from lan_interface (the site's own traffic out
# by this uplink, e.g. the target's control link) or answers it.
block_inward = true
# Destinations it may still send to (management, a metrics scraper outside the LAN).
allow_out = []

# Proxies registered by the coordinator (more come through the control channel).
[[peers]]
name = "proxy-1"
address = "192.0.2.10"
encap = "wireguard"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
# port = 51820   # leave out to learn it from the proxy's first packet
"#;

fn default_tun() -> String {
    "scold-gw".into()
}
fn default_table() -> u32 {
    5101
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tunnel: TunnelSection,
    #[serde(default = "default_tun")]
    pub tun_name: String,
    pub lan_interface: String,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
    #[serde(default = "yes")]
    pub enable_forwarding: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "ControlSection::is_empty")]
    pub control: ControlSection,
    /// The packet policy that keeps the gateway silent to everyone but its proxies.
    #[serde(default)]
    pub hidden: HiddenSection,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Config {
    /// What the hidden gateway's policy must let out for this config.
    pub fn openings(&self) -> Openings {
        Openings {
            lan_interface: self.lan_interface.clone(),
            tun_name: self.tun_name.clone(),
            udp_port: self.tunnel.listen.map(|l| l.port()),
            ipip: self.tunnel.ipip,
            control: self
                .control
                .coordinator
                .into_iter()
                .chain(self.control.replicas.iter().copied())
                .collect(),
        }
    }

    /// The config of a gateway whose site LAN is `lan_interface`, every other key at the
    /// default an absent key gets.
    pub fn new(lan_interface: impl Into<String>) -> Config {
        Config {
            tunnel: TunnelSection::default(),
            tun_name: default_tun(),
            lan_interface: lan_interface.into(),
            table: default_table(),
            rule_priority: default_table(),
            enable_forwarding: yes(),
            peers: Vec::new(),
            control: ControlSection::default(),
            hidden: HiddenSection::default(),
            file: PathBuf::new(),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = scold_daemon::load(path, "scold gateway --example-config")?;
        c.file = path.to_path_buf();
        c.tunnel.check(path)?;
        c.control.check(path)?;
        if c.hidden.enabled && c.tunnel.listen.is_some_and(|l| l.port() == 0) {
            anyhow::bail!(
                "config file {}: tunnel.listen has port 0 but [hidden] lets tunnel packets out by their source port; give tunnel.listen a port",
                path.display()
            );
        }
        if c.tunnel.listen.is_none() && !c.tunnel.ipip {
            anyhow::bail!(
                "config file {}: tunnel.listen is not set and tunnel.ipip is false: the gateway would accept no tunnel; set one",
                path.display()
            );
        }
        for (i, p) in c.peers.iter().enumerate() {
            Command::AddPeer(p.clone())
                .validate()
                .map_err(|e| anyhow::anyhow!("config file {}: peers[{i}]: {e}", path.display()))?;
        }
        Ok(c)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.print_policy {
        let path = a
            .flags
            .config
            .context("--print-policy needs --config FILE")?;
        let cfg = Config::load(&path)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&Hidden::ruleset(&cfg.hidden, &cfg.openings()))?
        );
        return Ok(());
    }
    node::daemon::run::<Config>(a.flags).await
}

impl node::daemon::RoleDaemon for Config {
    const ROLE: scold_proto::identity::Role = scold_proto::identity::Role::Gateway;
    const EXAMPLE: &'static str = EXAMPLE;

    fn load(path: &Path) -> anyhow::Result<Self> {
        Config::load(path)
    }

    fn control(&self) -> &ControlSection {
        &self.control
    }

    fn node_info(&self, path: &Path) -> anyhow::Result<scold_proto::control::NodeInfo> {
        let info = self
            .control
            .node_info(self.control.tunnel_info(&self.tunnel, path)?);
        if self.control.coordinator.is_some()
            && info.tunnel.as_ref().is_none_or(|t| t.inside.is_none())
        {
            tracing::warn!("[control] has no inside address: the coordinator cannot give the target its return path");
        }
        Ok(info)
    }

    async fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        _live: crate::node::daemon::LiveReceiver<Self>,
        shutdown: S,
        ctx: control::NodeContext,
    ) -> anyhow::Result<()> {
        serve_with(self, commands, shutdown, Some(ctx.metrics.metrics))
            .await
            .map(|_| ())
    }
}

struct Gateway {
    engine: EngineHandle,
    hidden: Option<Hidden>,
}

impl node::Node for Gateway {
    async fn apply(&mut self, cmd: Command) -> Reply {
        if let Err(e) = cmd.validate() {
            return e.into();
        }
        match cmd {
            Command::AddPeer(p) => {
                // Replies go back by the proxy a client's packets came in by.
                let policy = PeerPolicy {
                    learn_sources: true,
                    ..Default::default()
                };
                let (name, address) = (p.name.clone(), p.address);
                if let Some(h) = self.hidden.as_mut() {
                    // Let its tunnel packets out before the engine sends any. `nft` is a
                    // child process: the worker thread steps aside while it runs.
                    if let Err(e) = tokio::task::block_in_place(|| h.admit(&name, address)) {
                        return Reply::refused(RefusalCode::System, e.to_string());
                    }
                }
                match self.engine.call(move |s| s.add_peer(&p, policy)).await {
                    Ok(Ok((_, changed))) => Reply::Done { changed },
                    Ok(Err(e)) => Reply::refused(RefusalCode::Conflict, e.to_string()),
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::RemovePeer { name } => {
                if let Some(h) = self.hidden.as_mut() {
                    if let Err(e) = tokio::task::block_in_place(|| h.forget(&name)) {
                        tracing::warn!(peer = %name, error = %e, "hidden gateway policy");
                    }
                }
                match self.engine.call(move |s| s.remove_peer(&name)).await {
                    Ok(changed) => Reply::Done { changed },
                    Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
                }
            }
            Command::GetStats => match self.engine.call(|s| s.stats()).await {
                Ok(s) => Reply::Stats(s),
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            other => Reply::refused(
                RefusalCode::NotForThisRole,
                format!(
                    "{} is not a gateway command (a gateway takes add_peer, remove_peer, get_stats)",
                    other.kind()
                ),
            ),
        }
    }
}

/// Runs the gateway until `shutdown`; `commands` is the control plane's feed. Returns the
/// final counters after routes and sysctls are put back.
pub async fn serve(
    cfg: Config,
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<scold_proto::dataplane::Stats> {
    serve_with(cfg, commands, shutdown, None).await
}

/// [`serve`] that keeps per-tunnel counters in `metrics`.
pub async fn serve_with(
    cfg: Config,
    mut commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Option<scold_metrics::Metrics>,
) -> anyhow::Result<scold_proto::dataplane::Stats> {
    let mtu = cfg.tunnel.inner_mtu();
    let tun = scold_tunnel::tun::create(&cfg.tun_name, mtu, cfg.tunnel.engines)?;
    let nl = Netlink::new()?;
    let index = nl.link_index(&cfg.tun_name).await?;
    nl.set_up(index).await?;
    // Decapsulated sources come in on the TUN device while the reverse route may point
    // elsewhere; strict reverse-path filtering would drop them.
    let _ = Sysctl::set(&format!("net.ipv4.conf.{}.rp_filter", cfg.tun_name), "0");
    let private_key = cfg.tunnel.private_key(&cfg.file)?;
    // Silent before the tunnel socket opens.
    let hidden = if cfg.hidden.enabled {
        Some(Hidden::install(cfg.hidden.clone(), &cfg.openings())?)
    } else {
        tracing::warn!(
            "[hidden] enabled = false: this gateway answers scans unless another firewall stops it"
        );
        None
    };
    let (engine, handle) = Engine::new(
        EngineConfig {
            udp_listen: cfg.tunnel.listen,
            ipip: cfg.tunnel.ipip,
            ipip_bind: cfg.tunnel.ipip_bind,
            private_key,
            outer_mtu: cfg.tunnel.outer_mtu,
            engines: cfg.tunnel.engines,
            peer_default: Some(Dest::Tun),
        },
        Some(tun),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine_task = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));

    let forwarding = if cfg.enable_forwarding {
        Sysctl::set("net.ipv4.ip_forward", "1")?
    } else {
        None
    };
    let mut table = RouteTable::new(
        nl.clone(),
        cfg.table,
        cfg.rule_priority,
        RuleSelector {
            iif: Some(cfg.lan_interface.clone()),
        },
    );
    // Ends with the engine.
    if let Some(m) = &metrics {
        crate::node::tunnel_metrics::spawn(handle.clone(), m);
    }
    let mut gw = Gateway {
        engine: handle,
        hidden,
    };
    let setup = async {
        nl.link_index(&cfg.lan_interface)
            .await
            .with_context(|| format!("config file {}: lan_interface", cfg.file.display()))?;
        table
            .add(
                Prefix::new("0.0.0.0".parse().expect("literal"), 0).expect("valid"),
                RouteTarget::Device { index, src: None },
            )
            .await?;
        let entries = cfg
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
        node::apply_static(&cfg.file, entries, &mut gw).await
    };
    let result = setup.await;
    if result.is_ok() {
        tracing::info!(tun = %cfg.tun_name, mtu, lan = %cfg.lan_interface, "gateway running");
        node::command_loop(&mut gw, &mut commands, shutdown).await;
    }
    for e in table.clear().await {
        tracing::warn!(error = %e, "tear-down incomplete");
    }
    if let Some(f) = forwarding {
        f.restore();
    }
    let _ = stop_tx.send(());
    let stats = engine_task.await.context("packet engine task failed")?;
    if let Some(h) = gw.hidden.take() {
        if let Err(e) = h.remove() {
            tracing::warn!(error = %e, "tear-down incomplete");
        }
    }
    tracing::info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "gateway stopped");
    result.map(|_| stats)
}
