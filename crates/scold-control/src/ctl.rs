//! `scold ctl`: operator commands against a running coordinator, over the same mutual
//! TLS as every daemon (with an operator certificate).

use anyhow::Context;
use scold_link::channel::{self, NoRequests};
use scold_metrics::Metrics;
use scold_proto::control::{EventView, ProxyView, Reply, Request, TargetView};
use scold_proto::identity::Role;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Control address of the coordinator; with replicas, every replica's address,
    /// comma-separated (the one that leads answers).
    #[arg(
        long,
        env = "SCOLD_COORDINATOR",
        default_value = "127.0.0.1:7800",
        value_delimiter = ','
    )]
    pub coordinator: Vec<SocketAddr>,
    /// The consortium CA certificate.
    #[arg(long, env = "SCOLD_CA", default_value = "ca.crt")]
    pub ca: PathBuf,
    /// Your operator certificate (`scold ca issue --role operator --name YOU`).
    #[arg(long, env = "SCOLD_CERT", default_value = "operator.crt")]
    pub cert: PathBuf,
    /// The private key of the operator certificate.
    #[arg(long, env = "SCOLD_KEY", default_value = "operator.key")]
    pub key: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the coordinator.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand)]
pub enum CtlCommand {
    /// Targets with their phase and proxies, proxies, gateways, and the last events.
    Status,
    /// Divert a target now, as if its detector had raised an alarm.
    Divert {
        /// Target name as configured on the coordinator.
        target: String,
    },
    /// Restore a target now, as if its detector had sent the all-clear.
    Restore {
        /// Target name as configured on the coordinator.
        target: String,
    },
    /// The proxy pool: address, organisation, capacity, health, targets served.
    Proxies,
    /// The audit log, newest last.
    Events {
        /// How many events to show (the newest that match).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only events about this target (its name) or node (`role/name`, e.g.
        /// `proxy/p1`).
        #[arg(long)]
        subject: Option<String>,
        /// Only events of this kind, e.g. `phase`, `registered`, `health`, `resync`,
        /// `step_done`, `proxy_attacked`.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Have a node re-read its config file and apply what can change while it runs
    /// (as SIGHUP does); prints what it applied, what waits for a restart, and what it
    /// refused for now and why (the coordinator's diverted targets keep their gateways,
    /// scheme and addresses until restored). A file the node cannot use is refused with
    /// its file and line, and the node keeps its running config.
    Reload {
        /// The node as `role/name` (e.g. `proxy/p1`), or its name when only one
        /// connected node has it; `coordinator` for the coordinator itself.
        node: String,
    },
    /// Change the proxy pool while the system runs (kept in the coordinator's store,
    /// written to its audit log).
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Add, remove or show targets while the system runs (kept in the coordinator's
    /// store, written to its audit log).
    #[command(subcommand)]
    Target(TargetCommand),
}

#[derive(clap::Subcommand)]
pub enum TargetCommand {
    /// Add a target from FILE: one `[[target]]` table as in the coordinator's config
    /// file (with or without the `[[target]]` line), checked as the config file's are.
    Add {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Forget a target added with `add`; it must be in its normal phase (restore it
    /// first). One from the config file is removed there.
    Remove { name: String },
    /// A target's configuration and phase, and whether it was added at run time.
    Show { name: String },
}

/// One target from a file: a `[[target]]` table, or its keys alone.
fn target_file(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped {
        target: Vec<crate::config::TargetConfig>,
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the target file {}", path.display()))?;
    let t = if text.lines().any(|l| l.trim() == "[[target]]") {
        let w: Wrapped = scold_daemon::parse(&text, path, "")?;
        anyhow::ensure!(
            w.target.len() == 1,
            "{}: holds {} [[target]] tables; add one target per file",
            path.display(),
            w.target.len()
        );
        w.target.into_iter().next().expect("one")
    } else {
        scold_daemon::parse::<crate::config::TargetConfig>(&text, path, "")?
    };
    Ok(serde_json::to_value(t)?)
}

#[derive(clap::Subcommand)]
pub enum ProxyCommand {
    /// Add a proxy, bound to the public address that ALT records may carry for it. It
    /// waits for `approve` before it is chosen for anything.
    Add {
        /// The proxy's name: the name its certificate carries (`scold ca issue --role
        /// proxy --name NAME`).
        name: String,
        /// Its public address, where clients reach it.
        #[arg(long)]
        address: std::net::IpAddr,
        /// What it offers, in Mbit/s (default 1000); proxy choice weighs it.
        #[arg(long)]
        capacity_mbps: Option<u32>,
        /// The consortium member that contributes it; a target's proxies are spread
        /// over organisations.
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Let an added (or drained) proxy be chosen from now on.
    Approve { name: String },
    /// Take a proxy out of service without an attack: it is chosen for nothing, and
    /// every target it serves gets another proxy while its clients move there.
    Drain { name: String },
    /// Forget a drained or pending proxy that was added with `add` (one in the
    /// coordinator's config file is removed there, then reloaded).
    Remove { name: String },
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard
/// Hinnant's algorithm), for the times `scold ctl` and the lab's report print.
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn fmt_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (y, mo, d) = civil_date((secs / 86400) as i64);
    format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// Renders rows as an aligned table with a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn targets_table(ts: &[TargetView]) -> String {
    table(
        &[
            "TARGET",
            "PHASE",
            "EPOCH",
            "SCHEME",
            "PROXIES",
            "PENDING",
            "SINCE",
            "LAST ERROR",
        ],
        ts.iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.phase.clone(),
                    t.epoch.to_string(),
                    t.scheme.clone(),
                    if t.proxies.is_empty() {
                        "-".into()
                    } else {
                        t.proxies.join(",")
                    },
                    if t.pending.is_empty() {
                        "-".into()
                    } else {
                        t.pending.join(",")
                    },
                    fmt_time(t.since_ms),
                    t.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}

fn proxies_table(ps: &[ProxyView]) -> String {
    table(
        &[
            "PROXY",
            "ADDRESS",
            "ORG",
            "MBIT/S",
            "HEALTH",
            "POOL",
            "LAST SEEN",
            "SERVING",
        ],
        ps.iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    p.organisation.clone().unwrap_or_else(|| "-".into()),
                    p.capacity_mbps
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    p.health.clone(),
                    if p.pool.is_empty() {
                        "member".into()
                    } else {
                        p.pool.clone()
                    },
                    p.last_seen_ms
                        .map(fmt_time)
                        .unwrap_or_else(|| "never".into()),
                    if p.serving.is_empty() {
                        "-".into()
                    } else {
                        p.serving.join(",")
                    },
                ]
            })
            .collect(),
    )
}

fn events_table(es: &[EventView]) -> String {
    table(
        &["SEQ", "TIME", "SUBJECT", "EVENT", "DETAIL"],
        es.iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    fmt_time(e.at_ms),
                    e.subject.clone(),
                    e.event.clone(),
                    e.detail.clone(),
                ]
            })
            .collect(),
    )
}

/// Renders a reply for a terminal.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => {
            let gws = table(
                &["GATEWAY", "HEALTH", "LAST SEEN"],
                s.gateways
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            g.health.clone(),
                            g.last_seen_ms
                                .map(fmt_time)
                                .unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect(),
            );
            let crl = if s.crl_expired {
                "WARNING: the coordinator's revocation list is past its next-update date; revocations since then are unknown to it. Refresh it with `scold ca crl`.\n"
            } else {
                ""
            };
            format!(
                "{crl}{}\n{}\n{}\n{}",
                targets_table(&s.targets),
                proxies_table(&s.proxies),
                gws,
                events_table(&s.events)
            )
        }
        Reply::Proxies { proxies } => proxies_table(proxies),
        Reply::Events { events } => events_table(events),
        Reply::Target(t) => targets_table(std::slice::from_ref(t)),
        Reply::TargetConfig {
            config,
            runtime,
            view,
        } => {
            let toml = serde_json::from_value::<crate::config::TargetConfig>(config.clone())
                .ok()
                .and_then(|t| toml::to_string(&t).ok())
                .unwrap_or_else(|| format!("{config:#}\n"));
            format!(
                "{}# {} (added at run time: {runtime})\n[[target]]\n{toml}",
                targets_table(std::slice::from_ref(view)),
                view.name
            )
        }
        Reply::Reloaded(r) => {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(", ")
                }
            };
            let mut out = format!(
                "{} reloaded {}\napplied:       {}\nneeds restart: {}\n",
                r.node,
                r.file,
                list(&r.applied),
                list(&r.needs_restart)
            );
            // One refusal a line: each says what stays and what to do.
            for why in &r.refused {
                out.push_str(&format!("refused:       {why}\n"));
            }
            out
        }
        other => format!("{other:?}\n"),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    scold_pki::install_crypto_provider();
    let tls = scold_pki::TlsIdentity::load(&scold_pki::TlsPaths {
        ca_cert: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        crl: None,
    })
    .context("cannot load the operator certificate; pass --ca, --cert and --key (or SCOLD_CA, SCOLD_CERT, SCOLD_KEY)")?;
    let mut tried = Vec::new();
    let mut channel = None;
    for addr in &args.coordinator {
        match channel::connect(
            *addr,
            &tls,
            &[Role::Coordinator],
            Arc::new(NoRequests),
            Metrics::new(),
        )
        .await
        {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(e) => tried.push(format!("{addr}: {e}")),
        }
    }
    let channel = channel.ok_or_else(|| {
        anyhow::anyhow!(
            "cannot reach the coordinator ({}); check --coordinator (every replica's address, comma-separated)",
            tried.join("; ")
        )
    })?;
    let request = match &args.command {
        CtlCommand::Status => Request::Status,
        CtlCommand::Divert { target } => Request::Divert {
            target: target.clone(),
        },
        CtlCommand::Restore { target } => Request::Restore {
            target: target.clone(),
        },
        CtlCommand::Proxies => Request::Proxies,
        CtlCommand::Events {
            limit,
            subject,
            kind,
        } => Request::Events {
            limit: *limit,
            subject: subject.clone(),
            kind: kind.clone(),
        },
        CtlCommand::Reload { node } => Request::ReloadNode { node: node.clone() },
        CtlCommand::Proxy(ProxyCommand::Add {
            name,
            address,
            capacity_mbps,
            organisation,
        }) => Request::ProxyAdd {
            name: name.clone(),
            address: *address,
            capacity_mbps: *capacity_mbps,
            organisation: organisation.clone(),
        },
        CtlCommand::Proxy(ProxyCommand::Approve { name }) => {
            Request::ProxyApprove { name: name.clone() }
        }
        CtlCommand::Proxy(ProxyCommand::Drain { name }) => {
            Request::ProxyDrain { name: name.clone() }
        }
        CtlCommand::Proxy(ProxyCommand::Remove { name }) => {
            Request::ProxyRemove { name: name.clone() }
        }
        CtlCommand::Target(TargetCommand::Add { file }) => Request::TargetAdd {
            config: target_file(file)?,
        },
        CtlCommand::Target(TargetCommand::Remove { name }) => {
            Request::TargetRemove { name: name.clone() }
        }
        CtlCommand::Target(TargetCommand::Show { name }) => {
            Request::TargetShow { name: name.clone() }
        }
    };
    let reply = channel
        .request(request, Duration::from_secs(args.timeout))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render(&reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time(1_700_000_000_123), "2023-11-14 22:13:20.123Z");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
