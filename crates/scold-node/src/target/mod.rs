//! `scold target`: attack detection on the main link, and the return path while the
//! target is diverted.
//!
//! The target's replies to diverted clients must go back through the hidden gateway,
//! never out of the attacked main link. In schemes 4.1/4.2 connections that arrive from
//! the gateway are marked and their replies policy-routed back to it
//! ([`crate::target::returnpath`], command `set_return_path`). In scheme 4.3 each proxy NAT
//! source gets a host route `SOURCE via GATEWAY` in SCOLD's own routing table, reached
//! by one policy rule; other traffic finds no match there and falls through to the main
//! table, so it is unaffected. Removing the routes (or stopping the daemon) removes the
//! rule with the last route: routing is back exactly as it was.
//!
//! With `[detect]`, the main link is watched ([`crate::target::detect`]); alarms and all-clears
//! go to the coordinator, which diverts and restores.

pub mod detect;
pub mod returnpath;

use crate::node::control::{ControlSection, NodeContext};
use crate::node::{self, CommandReceiver};
use crate::target::detect::{DetectSection, Detection};
use crate::target::returnpath::{ReturnPath, ReturnPathSection};
use anyhow::Context as _;
use scold_proto::dataplane::{Command, RefusalCode, Reply, Route, Stats, Via};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold target --config /etc/scold/target.toml
\
The config file holds the coordinator link, detection, the return path and static return
\
routes.
\
Print a commented config with --example-config.")]
pub struct Args {
    #[command(flatten)]
    pub flags: node::daemon::Flags,
}

pub const EXAMPLE: &str = r#"# scold target: attack detection on the main link, and the return path of diverted
# clients through the hidden gateway.

# The address clients reach the target at (on the main link). Return routes prefer it
# as source, so servers on unbound sockets (UDP) answer from the address clients asked.
source = "203.0.113.10"

# SCOLD's own routing table and the priority of the rule that leads to it. The rule
# exists only while at least one return route does.
table = 5102
rule_priority = 5102

# The link to the coordinator (optional: without it the target runs standalone).
[control]
coordinator = "192.0.2.100:7800"
metrics = "127.0.0.1:9803"    # Prometheus metrics (optional, also standalone)
[control.tls]
ca = "ca.crt"                 # relative to this file's folder unless absolute
cert = "target-web.crt"       # scold ca issue --role target --name web
key = "target-web.key"
crl = "crl.pem"

# Attack detection on the main link: an alarm asks the coordinator to divert, the
# all-clear (after hold_down of calm) to restore. Without [detect], only the operator
# diverts (scold ctl divert). The thresholds (not interface, interval_ms, one_in) change
# on reload: SIGHUP (systemctl reload) or `scold ctl reload target/NAME`.
[detect]
interface = "eth0"            # the main link
alarm_after_ms = 1000         # an anomaly must last this long
hold_down_ms = 30000          # calm this long before the all-clear
warmup_ms = 10000             # learning time after start
# interval_ms = 100, one_in = 8, alarm_factor = 4.0, alarm_sigmas = 6.0,
# clear_factor = 1.5, clear_sigmas = 3.0, baseline_secs = 60, syn_share_alarm = 0.6
[detect.floors]               # rates under which nothing is an attack
pps = 5000.0
udp_pps = 2000.0
# [detect.ceilings]           # rates that alarm whatever was learned
# bps = 900000000.0

# Return path of schemes 4.1/4.2 (set by the coordinator with the gateway's inside
# address): connections that arrive from the gateway are marked (nftables table
# inet scold_return) and their replies routed back to it by `fwmark` rule.
[return_path]
# interface = "eth1"          # default: the interface whose network holds the gateway
# gateway_mac = "learn"       # also match the gateway's MAC ("learn" or "02:00:5e:00:00:01")
mark = 0x5c5c
table = 5104
rule_priority = 5104

# Return routes (scheme 4.3: the coordinator adds and removes them while diverting).
[[routes]]
destination = "198.51.100.7/32"      # a diverted client, or a proxy's NAT source
via = { gateway = "10.3.0.1" }       # the hidden gateway's address on the target's LAN
"#;

fn default_table() -> u32 {
    5102
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "ControlSection::is_empty")]
    pub control: ControlSection,
    #[serde(default)]
    pub detect: Option<DetectSection>,
    #[serde(default)]
    pub return_path: ReturnPathSection,
    #[serde(skip)]
    pub file: PathBuf,
}

/// What an empty config file gives: a standalone target with no return routes.
impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            table: default_table(),
            rule_priority: default_table(),
            routes: Vec::new(),
            control: ControlSection::default(),
            detect: None,
            return_path: ReturnPathSection::default(),
            file: PathBuf::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = scold_daemon::load(path, "scold target --example-config")?;
        c.file = path.to_path_buf();
        c.control.check(path)?;
        c.return_path
            .check()
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        if let Some(d) = &c.detect {
            d.monitor_config()
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        }
        for (i, r) in c.routes.iter().enumerate() {
            if let Via::Peer(_) = r.via {
                anyhow::bail!(
                    "config file {}: routes[{i}].via: a target routes via its gateway's LAN address; write via = {{ gateway = \"ADDRESS\" }}",
                    path.display()
                );
            }
            Command::AddRoute(r.clone())
                .validate()
                .map_err(|e| anyhow::anyhow!("config file {}: routes[{i}]: {e}", path.display()))?;
        }
        Ok(c)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    node::daemon::run::<Config>(a.flags).await
}

impl node::daemon::RoleDaemon for Config {
    const ROLE: scold_proto::identity::Role = scold_proto::identity::Role::Target;
    /// The detector's thresholds; the link it watches and how it samples need a restart.
    const LIVE: &'static [&'static str] = &[
        "detect.alarm_after_ms",
        "detect.hold_down_ms",
        "detect.warmup_ms",
        "detect.baseline_secs",
        "detect.alarm_factor",
        "detect.alarm_sigmas",
        "detect.clear_factor",
        "detect.clear_sigmas",
        "detect.syn_share_alarm",
        "detect.floors",
        "detect.ceilings",
    ];
    const EXAMPLE: &'static str = EXAMPLE;
    const TUNNEL_KEY: bool = false;

    fn load(path: &Path) -> anyhow::Result<Self> {
        Config::load(path)
    }

    fn control(&self) -> &ControlSection {
        &self.control
    }

    fn node_info(&self, _path: &Path) -> anyhow::Result<scold_proto::control::NodeInfo> {
        let mut info = self.control.node_info(None);
        info.address = info.address.or(self.source);
        Ok(info)
    }

    async fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        live: crate::node::daemon::LiveReceiver<Config>,
        shutdown: S,
        ctx: NodeContext,
    ) -> anyhow::Result<()> {
        serve_live(self, commands, live, shutdown, ctx)
            .await
            .map(|_| ())
    }
}

struct Target {
    table: RouteTable,
    source: Option<std::net::IpAddr>,
    return_path: ReturnPath,
}

impl node::Node for Target {
    async fn apply(&mut self, cmd: Command) -> Reply {
        if let Err(e) = cmd.validate() {
            return e.into();
        }
        match cmd {
            Command::AddRoute(Route {
                destination,
                via: Via::Gateway(gw),
            }) => match self
                .table
                .add(
                    destination,
                    RouteTarget::Via {
                        gateway: gw,
                        src: self.source.filter(|s| s.is_ipv4() == gw.is_ipv4()),
                    },
                )
                .await
            {
                Ok(changed) => Reply::Done { changed },
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            Command::AddRoute(Route {
                via: Via::Peer(_), ..
            }) => Reply::refused(
                RefusalCode::NotForThisRole,
                "a target routes via its gateway's LAN address (via = { gateway = ADDRESS })",
            ),
            Command::RemoveRoute { destination } => match self.table.remove(&destination).await {
                Ok(changed) => Reply::Done { changed },
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            Command::SetReturnPath { via } => match self.return_path.set(via).await {
                Ok(changed) => Reply::Done { changed },
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            Command::ClearReturnPath => match self.return_path.clear().await {
                Ok(changed) => Reply::Done { changed },
                Err(e) => Reply::refused(RefusalCode::System, e.to_string()),
            },
            Command::GetStats => Reply::Stats(Stats::default()),
            other => Reply::refused(
                RefusalCode::NotForThisRole,
                format!(
                    "{} is not a target command (a target takes add_route, remove_route, set_return_path, clear_return_path, get_stats)",
                    other.kind()
                ),
            ),
        }
    }
}

/// Runs the target's return-path agent until `shutdown`, then removes every route and
/// rule it added.
pub async fn serve(
    cfg: Config,
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Stats> {
    serve_with(cfg, commands, shutdown, NodeContext::default()).await
}

/// [`serve`] with the control link's context: detection reports through its agent.
pub async fn serve_with(
    cfg: Config,
    commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
    ctx: NodeContext,
) -> anyhow::Result<Stats> {
    let (_none, live) = tokio::sync::mpsc::channel(1);
    serve_live(cfg, commands, live, shutdown, ctx).await
}

/// [`serve_with`] that also applies reloaded detector thresholds from `live`.
pub async fn serve_live(
    cfg: Config,
    mut commands: CommandReceiver,
    mut live: crate::node::daemon::LiveReceiver<Config>,
    shutdown: impl Future<Output = ()> + Send,
    ctx: NodeContext,
) -> anyhow::Result<Stats> {
    let nl = Netlink::new()?;
    let mut node = Target {
        table: RouteTable::new(nl, cfg.table, cfg.rule_priority, RuleSelector::default()),
        source: cfg.source,
        return_path: ReturnPath::new(cfg.return_path.clone())?,
    };
    let detection = match &cfg.detect {
        Some(d) => Some(Detection::start(d, &ctx)?),
        None => None,
    };
    let entries = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("routes[{i}] ({})", r.destination),
                Command::AddRoute(r.clone()),
            )
        })
        .collect();
    let result = node::apply_static(&cfg.file, entries, &mut node).await;
    if result.is_ok() {
        tracing::info!(table = cfg.table, "target return path ready");
        let orders = node::command_loop(&mut node, &mut commands, shutdown);
        tokio::pin!(orders);
        loop {
            tokio::select! {
                _ = &mut orders => break,
                Some(change) = live.recv() => {
                    let r = match (&detection, &change.config.detect) {
                        (Some(d), Some(s)) => d.reconfigure(s),
                        _ => Err("the target runs without [detect]; adding or removing it needs a restart".into()),
                    };
                    let _ = change.reply.send(r);
                }
            }
        }
    }
    if let Some(d) = detection {
        d.stop().await;
    }
    let mut errors: Vec<String> = node
        .table
        .clear()
        .await
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    if let Err(e) = node.return_path.clear().await {
        errors.push(e.to_string());
    }
    for e in &errors {
        tracing::warn!(error = %e, "tear-down incomplete");
    }
    result?;
    if !errors.is_empty() {
        return Err(anyhow::anyhow!(
            "{} routes or rules could not be removed",
            errors.len()
        ))
        .context("restoring the target's routing");
    }
    tracing::info!("target return path removed");
    Ok(Stats::default())
}
