//! `scold dns` and `scold resolver`: command-line entry points.

use std::path::PathBuf;

use anyhow::Context;

/// `scold dns`: the authoritative server of a target site.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Authoritative DNS server for one or more zones (TargetDNS), over UDP and TCP, with \
RFC 2136 dynamic updates authenticated by TSIG (hmac-sha256/hmac-sha512) and a per-key policy. \
Every accepted update is journaled (fsync) before it is answered and replayed at start. \
Secondaries ([[secondary]]: BIND, Knot, NSD) may transfer the zones by AXFR or IXFR over TCP, \
only with their TSIG key, and get a signed NOTIFY after every change, retried until answered. \
Zone files are RFC 1035 master files that may use `ALT 203.0.113.7` and `TYPE65280 \\# 4 CB007107`. \
SIGHUP reloads the configuration: TSIG keys, policies, secondaries and zones apply at once (an edited \
zone file only with a serial above the one served and every RRset an update set kept as it is); \
what needs a restart is named in the log."
)]
pub struct DnsArgs {
    /// TOML configuration file (listen addresses, zones, journal, TSIG keys and their
    /// policies, secondaries, rate limit). `--example-config` prints a commented one.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "example_config"
    )]
    pub config: Option<PathBuf>,
    /// Print a commented example configuration to standard output and exit.
    #[arg(long)]
    pub example_config: bool,
    /// Load the configuration, zone files and journal, report problems and what a start
    /// would do (cut a torn journal entry, set a stale or damaged journal aside), and
    /// exit without serving. Changes nothing on disk.
    #[arg(long)]
    pub check: bool,
    /// When the journal is damaged (not just a torn last entry), start from the intact
    /// entries before the damage instead of refusing to start: the damaged file is kept
    /// beside it (`<journal>.damaged-<unix time>`), the serials lost are logged, and the
    /// zone serial continues above the highest one seen. With --check, only reports
    /// what it would do.
    #[arg(long)]
    pub recover_journal: bool,
}

/// `scold resolver`: the caching resolver of a client site.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Caching forwarding resolver (ClientDNS) over UDP and TCP. It honours TTLs, carries ALT \
records like any other type, and drops a cached name at once when a proxy sends a NOTIFY signed \
with one of the configured TSIG keys; unsigned or wrongly signed NOTIFY is ignored and logged."
)]
pub struct ResolverArgs {
    /// TOML configuration file (listen addresses, upstream servers, cache limits, the
    /// proxies' NOTIFY keys). `--example-config` prints a commented one.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "example_config"
    )]
    pub config: Option<PathBuf>,
    /// Print a commented example configuration to standard output and exit.
    #[arg(long)]
    pub example_config: bool,
}

/// Serves `/metrics` at `addr` in the background, with `register` adding the
/// daemon's own counters. A failure to bind is fatal: an operator who asked for
/// metrics must not silently get none.
async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    register: impl FnOnce(&scold_metrics::Metrics),
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let m = scold_metrics::Metrics::new();
    register(&m);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on {addr}; change `metrics` in the config")
    })?;
    tokio::spawn(async move {
        if let Err(e) = m.serve_on(listener).await {
            tracing::error!("{e:#}");
        }
    });
    Ok(())
}

/// What `scold dns` applies on reload (SIGHUP): the TSIG keys with their update
/// policies, the secondaries (which name keys), the zones (added, removed, a zone file
/// edited: see [`crate::zonereload`]). Listeners, the journal, the ALT type and rate
/// limits need a restart.
const DNS_LIVE: &[&str] = &["key", "secondary", "zone", "zone_file"];

/// A reloaded config: as written (compared key by key) and as checked (applied).
#[derive(serde::Serialize)]
struct Reloaded {
    #[serde(flatten)]
    file: crate::config::DnsFile,
    /// The zone files' contents (length and CRC), so that an edited zone file is a
    /// change to apply although the config file is the same.
    zone_file: Vec<String>,
    #[serde(skip)]
    cfg: Option<crate::config::DnsConfig>,
}

/// Runs `scold dns`.
pub async fn run_dns(a: DnsArgs) -> anyhow::Result<()> {
    if a.example_config {
        print!("{}", crate::config::DNS_EXAMPLE);
        return Ok(());
    }
    let path = a.config.context("--config FILE is required")?;
    let cfg = crate::config::load_dns(&path)?;
    let opts = crate::startup::StartOptions {
        recover_journal: a.recover_journal,
    };
    if a.check {
        // Only reads: what a start would change on disk is reported, not done.
        let plan = crate::startup::plan(&cfg, opts)
            .with_context(|| format!("configuration {} cannot start", path.display()))?;
        for z in &plan.zones {
            println!(
                "zone {}: {} records, serial {}",
                z.origin,
                z.rr_count(),
                z.serial()
            );
        }
        for n in &plan.notes {
            let level = match n.level {
                crate::startup::Level::Info => "note",
                crate::startup::Level::Warn => "warning",
                crate::startup::Level::Error => "error",
            };
            println!("{level}: {}", n.text);
        }
        println!(
            "configuration {} is valid (nothing was changed on disk)",
            path.display()
        );
        return Ok(());
    }
    // From here on a SIGHUP reloads instead of ending the process.
    let (reload_tx, reload_rx) = scold_daemon::reload::channel();
    let _hangups = scold_daemon::reload::on_hangup(reload_tx)
        .context("cannot watch SIGHUP for config reloads")?;
    let shared = crate::server::Shared::load_with(&cfg, opts)
        .with_context(|| format!("cannot start scold dns from {}", path.display()))?;
    let server = crate::server::start_with(&cfg, std::sync::Arc::new(shared))
        .await
        .with_context(|| format!("cannot start scold dns from {}", path.display()))?;
    serve_metrics(cfg.metrics, |m| server.shared.metrics.register(m)).await?;
    let (raw, _) = crate::config::load_dns_file(&path)
        .with_context(|| format!("cannot start scold dns from {}", path.display()))?;
    let shared = server.shared.clone();
    tokio::spawn(scold_daemon::reload::serve(
        "dns".to_string(),
        path.clone(),
        scold_daemon::reload::Running::new(
            &Reloaded {
                file: raw,
                zone_file: crate::zonereload::fingerprints(&cfg),
                cfg: None,
            },
            DNS_LIVE,
        ),
        reload_rx,
        |p: &std::path::Path| {
            crate::config::load_dns_file(p)
                .map(|(file, cfg)| Reloaded {
                    file,
                    zone_file: crate::zonereload::fingerprints(&cfg),
                    cfg: Some(cfg),
                })
                .map_err(|e| e.to_string())
        },
        async move |new: Reloaded, keys: Vec<String>| {
            let cfg = new.cfg.ok_or("no checked configuration")?;
            // Keys first: a zone added now is notified to the secondaries of the new
            // config.
            shared.set_access(&cfg);
            if keys.iter().any(|k| k == "zone" || k == "zone_file") {
                let sh = shared.clone();
                // Zone files are read and the journal may be rewritten: off the runtime.
                tokio::task::spawn_blocking(move || sh.reload_zones(&cfg))
                    .await
                    .map_err(|e| format!("the zone reload stopped: {e}"))?;
            }
            Ok(())
        },
    ));
    tracing::info!(config = %path.display(), "scold dns ready");
    scold_daemon::terminated().await;
    server.shutdown().await;
    Ok(())
}

/// Runs `scold resolver`.
pub async fn run_resolver(a: ResolverArgs) -> anyhow::Result<()> {
    if a.example_config {
        print!("{}", crate::config::RESOLVER_EXAMPLE);
        return Ok(());
    }
    let path = a.config.context("--config FILE is required")?;
    let cfg = crate::config::load_resolver(&path)?;
    let r = crate::resolver::start(&cfg)
        .await
        .with_context(|| format!("cannot start scold resolver from {}", path.display()))?;
    serve_metrics(cfg.metrics, |m| r.inner.metrics.register(m)).await?;
    tracing::info!(config = %path.display(), "scold resolver ready");
    scold_daemon::terminated().await;
    r.shutdown().await;
    Ok(())
}
