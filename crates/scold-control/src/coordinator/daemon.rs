//! `scold coordinator` as a process: arguments, config, listener, shutdown.

use super::*;
use anyhow::Context;
use scold_link::channel::{self};
use scold_metrics::Metrics;
use scold_proto::identity::Role;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info};

#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's TOML configuration file.
    #[arg(long, short, required_unless_present = "example_config")]
    pub config: Option<PathBuf>,
    /// Print a commented example configuration and exit.
    #[arg(long)]
    pub example_config: bool,
}

/// Starts a coordinator from a loaded config; returns when `shutdown` flips.
pub async fn serve(
    cfg: Config,
    config_path: &Path,
    dns: Box<dyn DnsBackend>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    scold_pki::install_crypto_provider();
    let tls = Arc::new(cfg.tls.load(config_path)?);
    anyhow::ensure!(
        tls.identity().role == Role::Coordinator,
        "{}: [tls] cert is for {}, not a coordinator; issue one with `scold ca issue --role coordinator --name NAME`",
        config_path.display(),
        tls.identity()
    );
    let listen = cfg.coordinator.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen}; change [coordinator] listen in {}",
                config_path.display()
            )
        })?;
    let metrics = Metrics::new();
    if let Some(m) = &cfg.metrics {
        let addr = m.listen;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics.serve(addr).await {
                error!("{e:#}");
            }
        });
    }
    serve_on(cfg, tls, dns, listener, metrics, shutdown).await
}

/// How often connected peers' certificates are checked again without a new CRL.
const PEER_RECHECK: Duration = Duration::from_secs(60);

/// Runs a coordinator on an already bound listener (tests, embedding).
pub async fn serve_on(
    cfg: Config,
    tls: Arc<scold_pki::TlsIdentity>,
    dns: Box<dyn DnsBackend>,
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sweep_every = Duration::from_millis(cfg.coordinator.heartbeat_ms.clamp(50, 1000));
    let coordinator_limits = cfg.coordinator.connections;
    let request_rate = cfg.coordinator.requests;
    let coordinator = Coordinator::open(cfg, dns, metrics.clone())?;
    info!(listen = %listener.local_addr()?, identity = %tls.identity(), "coordinator listening");
    coordinator.resume();
    let sweeper = {
        let c = coordinator.clone();
        let tls = tls.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            let mut generation = tls.crl_generation();
            let mut checked = std::time::Instant::now();
            loop {
                tick.tick().await;
                c.sweep();
                // Peers are checked again when a new revocation list came into force, and
                // once a minute for certificates that expired while connected.
                let now_generation = tls.crl_generation();
                if now_generation != generation || checked.elapsed() >= PEER_RECHECK {
                    generation = now_generation;
                    checked = std::time::Instant::now();
                    c.recheck_peers(&tls);
                }
                let expired = tls.crl_expired();
                metrics.crl_expired.set(i64::from(expired));
                c.set_crl_expired(expired);
            }
        })
    };
    let requests = Arc::new(channel::RequestLimiter::new(
        request_rate,
        channel::DEFAULT_MAX_OPEN,
    ));
    let r = channel::serve(
        listener,
        tls,
        Arc::new(CoordinatorHandler(coordinator)),
        metrics,
        coordinator_limits,
        requests,
        shutdown,
    )
    .await;
    sweeper.abort();
    r.context("the coordinator's control listener stopped")
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let cfg: Config = scold_daemon::load(path, "scold coordinator --example-config")?;
    cfg.validate(path)?;
    Ok(cfg)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.example_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(());
    }
    let path = args.config.expect("clap requires --config");
    let cfg = load_config(&path)?;
    serve(
        cfg,
        &path,
        Box::new(TsigDns),
        scold_daemon::shutdown_signal(),
    )
    .await
}
