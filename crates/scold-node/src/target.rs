//! `scold target`, routing part: the return path while the target is diverted.
//!
//! The target's replies to diverted clients must go back through the hidden gateway,
//! never out of the attacked main link. Each diverted client (or proxy NAT source) gets
//! a host route `CLIENT via GATEWAY` in SCOLD's own routing table, reached by one policy
//! rule; other traffic finds no match there and falls through to the main table, so it is
//! unaffected. Removing the routes (or stopping the daemon) removes the rule with the
//! last route: routing is back exactly as it was.

use crate::common::{self, CommandReceiver};
use anyhow::Context as _;
use scold_proto::dataplane::{Command, RefusalCode, Reply, Route, Stats, Via};
use scold_tunnel::netlink::{Netlink, RouteTable, RouteTarget, RuleSelector};
use serde::Deserialize;
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: scold target --config /etc/scold/target.toml\n\
Print a commented config with --example-config.")]
pub struct Args {
    /// The target's TOML config file: routing table, static return routes.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "example_config"
    )]
    pub config: Option<PathBuf>,
    /// Print a commented example config and exit.
    #[arg(long)]
    pub example_config: bool,
    /// Check the config file and exit without touching the system.
    #[arg(long)]
    pub check: bool,
}

pub const EXAMPLE: &str = r#"# scold target: return path of diverted clients through the hidden gateway.

# The address clients reach the target at (on the main link). Return routes prefer it
# as source, so servers on unbound sockets (UDP) answer from the address clients asked.
source = "203.0.113.10"

# SCOLD's own routing table and the priority of the rule that leads to it. The rule
# exists only while at least one return route does.
table = 5102
rule_priority = 5102

# Return routes (the coordinator adds and removes them while diverting).
[[routes]]
destination = "198.51.100.7/32"      # a diverted client, or a proxy's NAT source
via = { gateway = "10.3.0.1" }       # the hidden gateway's address on the target's LAN
"#;

fn default_table() -> u32 {
    5102
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let mut c: Config = common::load(path)?;
        c.file = path.to_path_buf();
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
    if a.example_config {
        print!("{EXAMPLE}");
        return Ok(());
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

struct Target {
    table: RouteTable,
    source: Option<std::net::IpAddr>,
}

impl common::Node for Target {
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
            Command::GetStats => Reply::Stats(Stats::default()),
            other => Reply::refused(
                RefusalCode::NotForThisRole,
                format!(
                    "{} is not a target command (a target takes add_route, remove_route, get_stats)",
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
    mut commands: CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Stats> {
    let nl = Netlink::new()?;
    let mut node = Target {
        table: RouteTable::new(nl, cfg.table, cfg.rule_priority, RuleSelector::default()),
        source: cfg.source,
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
    let result = common::apply_static(&cfg.file, entries, &mut node).await;
    if result.is_ok() {
        tracing::info!(table = cfg.table, "target return path ready");
        common::command_loop(&mut node, &mut commands, shutdown).await;
    }
    let errors = node.table.clear().await;
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
