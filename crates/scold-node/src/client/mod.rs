//! `scold client`: the client agent of scheme 4.1 (paper Section 4.1, "indirect route by
//! the resolver library"), done without patching libc: a local stub resolver that the
//! host's resolv.conf points at.
//!
//! With an `[agent]` table the client forwards every query to the site's resolver
//! (ClientDNS) through its DNS front (`stub`). For an A/AAAA question it also asks for
//! the ALT records of the name; when there are some, it picks a proxy of the ALT set
//! (lowest round-trip time to the proxies' admission ports, ties at random), runs the
//! admission exchange ([`admission`]), brings the tunnel to that proxy up and a host
//! route for each target address into it, and only then returns the normal answer to the
//! application. Each admission connection stays open and is probed; each answer carries
//! the proxy's count of our tunnel packets that arrived, so the probes watch the tunnel
//! path too. When a proxy stops answering, or our tunnel packets stop reaching it, or it
//! says it is draining (its self-defence declared it under attack: a notice on the
//! admission connection, or a flag in a probe answer), the agent moves to the next proxy
//! of the ALT set (a draining proxy it keeps when no other admits it), and sends one
//! datagram to each target through the new tunnel so the target's gateway returns
//! traffic by the new proxy at once (a TCP connection open across the move survives).
//! When the name has no ALT records any more (a later lookup, or a re-query when the ALT
//! TTL runs out), tunnel and routes go. Scheme 4.2: proxies push routes to the agent
//! (`push`).
//!
//! Those decisions are made by the sans-IO core [`scold_proto::agent::Agent`]; the
//! agent here (`agent`) is the I/O driver that feeds it and carries its actions out.
//!
//! Without `[agent]` the client is a static data path: the peers and routes of its config
//! file ([`config`]). Either way routes live in SCOLD's own routing table behind one
//! policy rule, so exiting leaves routing exactly as found.

pub mod admission;
mod agent;
pub mod config;
mod event;
mod push;
mod stub;

pub use self::config::{
    AgentSection, Config, PushSection, DEFAULT_MIN_REFRESH, EXAMPLE, MIN_REFRESH_FLOOR_MS,
};

use crate::node::{self, CommandReceiver};
use anyhow::Context as _;
use scold_proto::dataplane::{Command, Prefix, RefusalCode, Reply, Route, Stats, Via};
use scold_tunnel::fib::{Dest, PeerPolicy};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use scold_tunnel::{Engine, EngineConfig, EngineHandle};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold client --config /etc/scold/client.toml
\
The config file holds the tunnel, the agent (stub resolver, admission, push) or a static
\
proxy peer and target routes.
\
Print a commented config with --example-config; make a WireGuard key with --genkey.")]
pub struct Args {
    #[command(flatten)]
    pub flags: node::daemon::Flags,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    node::daemon::run::<Config>(a.flags).await
}

impl node::daemon::RoleDaemon for Config {
    const ROLE: scold_proto::identity::Role = scold_proto::identity::Role::Client;
    const EXAMPLE: &'static str = EXAMPLE;

    fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        Config::load(path)
    }

    fn control(&self) -> &crate::node::control::ControlSection {
        &self.control
    }

    fn node_info(&self, _path: &std::path::Path) -> anyhow::Result<scold_proto::control::NodeInfo> {
        Ok(self.control.node_info(None))
    }

    async fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        _live: crate::node::daemon::LiveReceiver<Self>,
        shutdown: S,
        ctx: crate::node::control::NodeContext,
    ) -> anyhow::Result<()> {
        serve_with(self, commands, shutdown, Some(ctx.metrics.metrics))
            .await
            .map(|_| ())
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
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Stats> {
    serve_with(cfg, commands, shutdown, None).await
}

/// [`serve`] that counts the push listener's refusals in `metrics`.
pub async fn serve_with(
    cfg: Config,
    mut commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Option<scold_metrics::Metrics>,
) -> anyhow::Result<Stats> {
    let mtu = cfg.tunnel.inner_mtu();
    let tun = scold_tunnel::tun::create(&cfg.tun_name, mtu, cfg.tunnel.engines)?;
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
            engines: cfg.tunnel.engines,
        },
        Some(tun),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let engine_task = tokio::spawn(engine.run(async move {
        let _ = stop_rx.await;
    }));
    // Ends with the engine.
    if let Some(m) = &metrics {
        crate::node::tunnel_metrics::spawn(handle.clone(), m);
    }
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
                result =
                    agent::run(&cfg, a, mtu, &mut node, &mut commands, shutdown, metrics).await;
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
