//! The one skeleton every data-path daemon runs on: its flags (`--example-config`,
//! `--genkey`, `--check`), its config file, the metrics endpoint and the link to the
//! coordinator, then the role's own service until SIGTERM or SIGINT, then a clean stop.
//!
//! A role implements [`RoleDaemon`] on its config type; `scold proxy`, `scold gateway`,
//! `scold target` and `scold client` all start through [`run`].
//!
//! SIGHUP, or a reload order from the coordinator (`scold ctl reload NODE`), reads the
//! config file again ([`scold_daemon::reload`]): keys of the role's [`RoleDaemon::LIVE`]
//! list that changed go to the running service as a [`LiveChange`]; other changed keys
//! are named in the answer as waiting for a restart.

use super::control::{ControlLink, ControlSection, NodeContext, Notifier};
use super::CommandReceiver;
use anyhow::Context as _;
use scold_proto::control::NodeInfo;
use scold_proto::identity::Role;
use std::future::Future;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// A reloaded config whose live keys changed, for the running service to apply.
pub struct LiveChange<D> {
    /// The whole new config; only the parts under `keys` are to be applied.
    pub config: D,
    /// The changed keys, each covered by [`RoleDaemon::LIVE`].
    pub keys: Vec<String>,
    /// `Err` says why the change could not be applied (the old values stay).
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Where a role's service receives live changes.
pub type LiveReceiver<D> = mpsc::Receiver<LiveChange<D>>;

/// The flags every role's command line has (each role's `Args` flattens them).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Flags {
    /// The role's TOML config file (`--example-config` prints a commented one).
    #[arg(long, short = 'c', value_name = "FILE", required_unless_present_any = ["example_config", "genkey"])]
    pub config: Option<PathBuf>,
    /// Print a commented example config and exit.
    #[arg(long)]
    pub example_config: bool,
    /// Print a fresh WireGuard private key (and its public key) and exit (roles with a
    /// tunnel key: proxy, gateway, client).
    #[arg(long)]
    pub genkey: bool,
    /// Check the config file and exit without touching the system.
    #[arg(long)]
    pub check: bool,
}

/// A data-path role, implemented on its config type.
pub trait RoleDaemon: Sized + Send + serde::Serialize + 'static {
    /// The role its certificate must name.
    const ROLE: Role;
    /// The commented example config (`--example-config`).
    const EXAMPLE: &'static str;
    /// Whether the role holds a WireGuard key (`--genkey` makes sense).
    const TUNNEL_KEY: bool = true;
    /// Config keys (dotted; a key covers everything under it) the running service
    /// applies on reload; it gets them as [`LiveChange`]s. Every other changed key
    /// needs a restart.
    const LIVE: &'static [&'static str] = &[];

    /// Reads and checks the config file; errors name the file, the key and the fix.
    fn load(path: &Path) -> anyhow::Result<Self>;

    /// The `[control]` table: coordinator, TLS, metrics.
    fn control(&self) -> &ControlSection;

    /// What the node tells the coordinator when it registers.
    fn node_info(&self, path: &Path) -> anyhow::Result<NodeInfo>;

    /// Who hears the node's signed NOTIFY messages (proxies only).
    fn notifier(&self, _path: &Path) -> anyhow::Result<Option<Notifier>> {
        Ok(None)
    }

    /// Runs the role until `shutdown` completes, taking commands (static entries of the
    /// config file and the coordinator's orders) from `commands` and reloaded configs
    /// from `live` (only when [`Self::LIVE`] is not empty).
    fn serve<S: Future<Output = ()> + Send>(
        self,
        commands: CommandReceiver,
        live: LiveReceiver<Self>,
        shutdown: S,
        ctx: NodeContext,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Handles the flags that exit at once; otherwise loads the config and returns it.
pub fn prepare<D: RoleDaemon>(flags: Flags) -> anyhow::Result<Option<(PathBuf, D)>> {
    if flags.example_config {
        print!("{}", D::EXAMPLE);
        return Ok(None);
    }
    if flags.genkey {
        anyhow::ensure!(
            D::TUNNEL_KEY,
            "scold {} holds no tunnel key: --genkey is for proxy, gateway and client",
            D::ROLE
        );
        super::print_genkey()?;
        return Ok(None);
    }
    let path = flags
        .config
        .context("--config FILE is required (or --example-config)")?;
    let cfg = D::load(&path)?;
    if flags.check {
        println!("{}: ok", path.display());
        return Ok(None);
    }
    Ok(Some((path, cfg)))
}

/// Runs role `D` as a daemon: flags, config, control link and metrics, the role's
/// service, and a clean stop on SIGTERM or SIGINT.
pub async fn run<D: RoleDaemon>(flags: Flags) -> anyhow::Result<()> {
    let Some((path, cfg)) = prepare::<D>(flags)? else {
        return Ok(());
    };
    // Before anything slow: from here on a SIGHUP reloads instead of ending the process.
    let (reload_tx, reload_rx) = scold_daemon::reload::channel();
    let hangups = scold_daemon::reload::on_hangup(reload_tx.clone())
        .context("cannot watch SIGHUP for config reloads")?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let info = cfg.node_info(&path)?;
    let notifier = cfg.notifier(&path)?;
    let link = ControlLink::start(
        D::ROLE,
        cfg.control(),
        &path,
        info,
        tx,
        notifier,
        Some(reload_tx),
    )
    .await?;
    let node = match &link.name {
        Some(n) => format!("{}/{n}", D::ROLE),
        None => D::ROLE.to_string(),
    };
    let (live_tx, live_rx) = mpsc::channel(1);
    let running = scold_daemon::reload::Running::new(&cfg, D::LIVE);
    let reloads = tokio::spawn(scold_daemon::reload::serve(
        node,
        path,
        running,
        reload_rx,
        |p: &Path| D::load(p).map_err(|e| format!("{e:#}")),
        async move |config: D, keys: Vec<String>| {
            let (reply, answer) = oneshot::channel();
            live_tx
                .send(LiveChange {
                    config,
                    keys,
                    reply,
                })
                .await
                .map_err(|_| "the service is not running".to_string())?;
            answer
                .await
                .map_err(|_| "the service stopped before applying the change".to_string())?
        },
    ));
    let r = cfg
        .serve(rx, live_rx, scold_daemon::terminated(), link.context())
        .await;
    hangups.abort();
    reloads.abort();
    link.stop();
    r
}
