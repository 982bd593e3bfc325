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
use tracing::{error, info, warn};

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
    let listen = cfg.coordinator.listen;
    let bind = || async {
        tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {listen}; change [coordinator] listen in {}",
                    config_path.display()
                )
            })
    };
    let Some(replica) = cfg.coordinator.etcd.clone() else {
        let listener = bind().await?;
        return serve_on(cfg, tls, dns, listener, metrics, shutdown).await;
    };
    serve_replica(cfg, config_path, replica, tls, dns, metrics, shutdown, bind).await
}

/// A replica that takes the lead may have stood by for weeks: the `[[target]]` and
/// `[[proxy]]` entries it drives are read from its file again (every other key keeps its
/// value from the start, as a reload would keep it). A file that no longer loads leaves
/// the entries read at start, with a warning.
fn reread_entries(mut cfg: Config, path: &Path) -> Config {
    match load_config(path) {
        Ok(now) => {
            cfg.targets = now.targets;
            cfg.proxies = now.proxies;
        }
        Err(e) => warn!(
            "taking the lead with the [[target]] and [[proxy]] entries read at start: the config file does not load now: {e:#}"
        ),
    }
    cfg
}

/// A replica sharing an etcd cluster: stands by (not listening) until it leads, then
/// serves as the coordinator on the fenced shared store, renewing its lead; gives the
/// lead back on shutdown, and stops with an error when it loses it (a supervisor
/// restarts it, as a standby).
#[allow(clippy::too_many_arguments)]
async fn serve_replica<B, F>(
    cfg: Config,
    config_path: &Path,
    replica: crate::config::EtcdSection,
    tls: Arc<scold_pki::TlsIdentity>,
    dns: Box<dyn DnsBackend>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    bind: B,
) -> anyhow::Result<()>
where
    B: FnOnce() -> F,
    F: std::future::Future<Output = anyhow::Result<tokio::net::TcpListener>>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let timeout = Duration::from_millis(replica.timeout_ms.max(50));
    let client = || crate::etcd::Etcd::new(replica.endpoints.clone(), timeout);
    let me = format!("{} at {}", tls.identity(), cfg.coordinator.listen);
    let stop = Arc::new(AtomicBool::new(false));
    // The shutdown signal, seen by the blocking campaign and keep-alive loops.
    let watcher = {
        let stop = stop.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            scold_daemon::until_set(&mut shutdown).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    info!(endpoints = ?replica.endpoints, prefix = %replica.prefix, "coordinator replica: campaigning for the lead");
    let lead = {
        let (etcd, prefix, me, stop) = (client(), replica.prefix.clone(), me.clone(), stop.clone());
        let secs = replica.lease_secs;
        tokio::task::spawn_blocking(move || lead::campaign(&etcd, &prefix, &me, secs, &stop))
            .await?
    };
    let Some(lead) = lead else {
        watcher.abort();
        return Ok(());
    };
    info!(epoch = lead.epoch, "coordinator replica: leading");
    let cfg = reread_entries(cfg, config_path);
    let store = {
        let (etcd, prefix, fence) = (client(), replica.prefix.clone(), lead.fence.clone());
        tokio::task::spawn_blocking(move || Store::etcd(etcd, &prefix, Some(fence))).await??
    };
    // Renew the lead; losing it stops this replica's service at once.
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = {
        let (etcd, lead, stop) = (client(), lead.clone(), stop.clone());
        let secs = replica.lease_secs;
        tokio::task::spawn_blocking(move || {
            let stopped = lead::keep(&etcd, &lead, secs, &stop);
            if !stopped {
                let _ = lost_tx.send(true);
            } else {
                // Shutdown: hand the lead over at once instead of after the lease.
                let _ = etcd.lease_revoke(lead.lease);
            }
        })
    };
    let (serve_stop_tx, serve_stop) = watch::channel(false);
    let lost_flag = Arc::new(AtomicBool::new(false));
    let relay = {
        let lost_flag = lost_flag.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = scold_daemon::until_set(&mut shutdown) => {}
                _ = scold_daemon::until_set(&mut lost) => lost_flag.store(true, Ordering::Relaxed),
            }
            let _ = serve_stop_tx.send(true);
        })
    };
    let listener = bind().await?;
    let served = serve_with(
        cfg,
        store,
        lead.epoch.max(0) as u64,
        tls,
        dns,
        listener,
        metrics,
        serve_stop,
    )
    .await;
    relay.abort();
    stop.store(true, Ordering::Relaxed);
    let _ = keeper.await;
    watcher.abort();
    if lost_flag.load(Ordering::Relaxed) {
        anyhow::bail!(
            "this coordinator replica lost the lead (epoch {}): it could not renew its etcd \
             lease, so it stopped acting before another replica could take over; start it \
             again to stand by",
            lead.epoch
        );
    }
    served
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
    let store = Store::open(&cfg.coordinator.state)?;
    serve_with(cfg, store, 0, tls, dns, listener, metrics, shutdown).await
}

/// [`serve_on`] with the store opened by the caller and the leadership epoch every
/// order carries (0 for a coordinator alone).
#[allow(clippy::too_many_arguments)]
pub async fn serve_with(
    cfg: Config,
    store: Store,
    leader_epoch: u64,
    tls: Arc<scold_pki::TlsIdentity>,
    dns: Box<dyn DnsBackend>,
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sweep_every = Duration::from_millis(cfg.coordinator.heartbeat_ms.clamp(50, 1000));
    let coordinator_limits = cfg.coordinator.connections;
    let request_rate = cfg.coordinator.requests;
    let admin = cfg.admin.clone();
    let coordinator = Coordinator::open_with(cfg, store, dns, metrics.clone())?;
    coordinator.set_leader_epoch(leader_epoch);
    info!(listen = %listener.local_addr()?, identity = %tls.identity(), "coordinator listening");
    coordinator.resume();
    coordinator.serve_reloads();
    let status_page = match admin {
        Some(a) => {
            let listener = status_page::bind(&a).await?;
            let tls = a.tls.then(|| tls.clone());
            let (c, m, s) = (coordinator.clone(), metrics.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = status_page::serve(c, a, tls, listener, m, s).await {
                    error!("{e:#}");
                }
            }))
        }
        None => None,
    };
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
    if let Some(p) = status_page {
        p.abort();
    }
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
    ops::watch_hangups(&path, &cfg)?;
    serve(
        cfg,
        &path,
        Box::new(TsigDns),
        scold_daemon::shutdown_signal(),
    )
    .await
}
