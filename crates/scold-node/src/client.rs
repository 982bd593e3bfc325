//! `scold client`, data path: a tunnel to a proxy and host routes for the target
//! addresses into it (paper Section 4.1, after the resolver has picked a proxy).
//!
//! The routes live in SCOLD's own routing table behind one policy rule, so exiting
//! leaves routing exactly as found. The DNS-driven agent builds on this later.

use crate::common::{self, CommandReceiver, TunnelSection};
use anyhow::Context as _;
use scold_proto::dataplane::{Command, Peer, Prefix, RefusalCode, Reply, Route, Stats, Via};
use scold_tunnel::fib::{Dest, PeerPolicy};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use scold_tunnel::{Engine, EngineConfig, EngineHandle};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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

pub const EXAMPLE: &str = r#"# scold client: tunnel to a proxy and host routes for targets into it.

[tunnel]
# Local UDP socket for udp and wireguard tunnels (port 0: any free port).
listen = "0.0.0.0:0"
ipip = false
private_key = "oK1m8k5gGv2cYxq0yRZt5oGv3s8Jk8oB1rKk7l0d0E0="
outer_mtu = 1500
encap = "wireguard"        # sets the TUN MTU: outer_mtu minus this encapsulation's overhead

tun_name = "scold-cl"
# Source address of tunnelled packets: the address the proxy admitted.
source = "198.51.100.7"
table = 5103
rule_priority = 5103

[[peers]]
name = "proxy-1"
address = "192.0.2.10"
port = 51820
encap = "wireguard"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
keepalive_secs = 25

[[routes]]
destination = "203.0.113.10/32"   # the target
via = { peer = "proxy-1" }
"#;

fn default_tun() -> String {
    "scold-cl".into()
}
fn default_table() -> u32 {
    5103
}

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = common::load(path)?;
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
    if a.example_config {
        print!("{EXAMPLE}");
        return Ok(());
    }
    if a.genkey {
        return common::print_genkey();
    }
    let path = a.config.expect("clap requires --config");
    let cfg = Config::load(&path)?;
    if a.check {
        println!("{}: ok", path.display());
        return Ok(());
    }
    let (_keep, rx) = tokio::sync::mpsc::channel(16);
    serve(cfg, rx, common::shutdown_signal()).await.map(|_| ())
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
    async fn add_route(&mut self, destination: Prefix, peer: String) -> Reply {
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
        let src = self
            .source
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

impl common::Node for Client {
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
            }) => self.add_route(destination, peer).await,
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
    let result = common::apply_static(&cfg.file, entries, &mut node).await;
    if result.is_ok() {
        tracing::info!(tun = %cfg.tun_name, mtu, "client tunnel ready");
        common::command_loop(&mut node, &mut commands, shutdown).await;
    }
    for e in node.table.clear().await {
        tracing::warn!(error = %e, "tear-down incomplete");
    }
    let _ = stop_tx.send(());
    let stats = engine_task.await.context("packet engine task failed")?;
    tracing::info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "client stopped");
    result.map(|_| stats)
}
