//! The scenario `scold lab` runs.
//!
//! 1. Build Figure 8 and start every role as a real `scold` process ([`crate::roles`]).
//! 2. Baseline: ping and downloads over the direct route (Tables 1-2, "direct").
//! 3. Table 3: the same probes by address and by name through ClientDNS and TargetDNS.
//! 4. Table 4. Scheme 4.1 (default, data path linked to the coordinator): the
//!    operator's alarm (`scold ctl divert`) makes the coordinator set the indirect
//!    route up and publish the ALT records; the lab times the application's lookup
//!    through the client agent (which answers once it has set the route up) until the
//!    first answer through the tunnel. Without the link (`--no-control`) the lab
//!    publishes the ALT records itself. `--static-route` and schemes 4.2/4.3: the time
//!    from starting the static client agent and the target's return path. Repeated.
//! 5. Indirect route without attack (Tables 1-2, "indirect"); then (linked) the
//!    operator's all-clear (`scold ctl restore`), so the attack meets the direct route.
//! 6. Attack on the main link (real `scold lab flood` processes); the target's detector
//!    raises the alarm (or, with `--operator-alarm` and outside agent mode, the operator
//!    with `scold ctl divert`), and the coordinator's progress is watched (ALT records
//!    at ClientDNS, or its phase when the lab published them); meanwhile direct and
//!    indirect measurements under attack, then (client agent) the proxy failover of
//!    4.4: the client's proxy is flooded until its self-defence reports it (or, with
//!    `--failover kill`, its process is killed) while an echo loop measures the gap.
//! 7. The attack ends; the detector's all-clear after its hold-down (or `scold ctl
//!    restore`) and the coordinator's restore are timed.
//!
//! In agent mode the gateway, proxies and a second `scold target` are linked to the
//! coordinator, whose divert sets their routes up, before the attack (the operator's
//! alarm) as under it (the detector's). Scheme 4.2 configures the coordinator for
//! pushes but the lab's clients use static tunnels; `--static-route`, `--no-control`
//! and 4.3 use static configs too. The report says which figure came from where.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::audit;
use crate::dnsq;
use crate::error::LabError;
use crate::fig8::{self, Fig8, Fig8Options};
use crate::flood::{FloodKind, FloodReport};
use crate::measure::{self, Transfer};
use crate::progress::Progress;
use crate::report::{
    self, fmt_seconds, fmt_size, Condition, Metric, Outcome, Probe, Proto, Resolver, Results,
    Route, PAPER_RESOLVER,
};
use crate::roles::{self, Encap, RoleOptions, Roles, Scheme};
use crate::serve::{self, DEFAULT_BULK_PORT, DEFAULT_HTTP_PORT};
use crate::topology::LabProcess;

/// Everything the scenario needs to know.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioConfig {
    pub testbed: Fig8Options,
    /// Repetitions of each download per condition (and of Tables 3 and 4).
    pub reps: u32,
    /// ICMP echoes per condition.
    pub pings: u32,
    pub sizes: Vec<u64>,
    pub flood_kind: FloodKind,
    /// Total attack rate over all attackers, packets per second.
    pub flood_rate_pps: u64,
    pub flood_payload: usize,
    /// Longest a download may take without an attack.
    pub timeout: Duration,
    /// Longest a download over the attacked direct route may take (then it counts as
    /// "above").
    pub attack_timeout: Duration,
    /// Repetitions of each download over the attacked direct route.
    pub attack_reps: u32,
    /// Run the attacked direct route's downloads one after another instead of at once.
    pub attack_sequential: bool,
    /// How long the flood runs before measuring, so the queue is full.
    pub attack_warmup: Duration,
    /// Longest wait from the alarm for the ALT records at ClientDNS.
    pub divert_wait: Duration,
    pub encap: Encap,
    pub scheme: Scheme,
    /// Static configs lay the indirect route out (client tunnels in 4.1 and 4.2, NAT
    /// services in 4.3) instead of the coordinator's divert; the coordinator is left
    /// out of the run.
    #[serde(default)]
    pub static_route: bool,
    /// Repetitions of the proxy failover under attack (agent mode only; 0: skipped).
    #[serde(default)]
    pub failover_reps: u32,
    /// How the client's proxy is taken out in the failover measurement.
    #[serde(default)]
    pub failover_attack: FailoverAttack,
    /// Leave the data-path daemons unlinked from the coordinator (no `[control]`).
    #[serde(default)]
    pub no_control: bool,
    /// Raise the alarm with `scold ctl divert` even when the target's detector could.
    #[serde(default)]
    pub operator_alarm: bool,
    /// Under attack, the attackers also go for SCOLD itself ([`crate::adversary`]).
    #[serde(default)]
    pub adversary: bool,
    pub out_dir: PathBuf,
    /// On failure, keep the namespaces for inspection (`scold lab cleanup` removes them).
    pub keep_on_failure: bool,
    /// The `scold` binary that runs each role.
    pub scold_bin: PathBuf,
    pub quiet: bool,
}

/// How the failover measurement (4.4) takes the client's proxy out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailoverAttack {
    /// Flood the proxy's address (bounded) until its self-defence reports
    /// `ProxyAttacked` and the coordinator resets it out of the ALT set (needs the data
    /// path linked to the coordinator; otherwise the proxy is killed).
    #[default]
    Flood,
    /// Kill the proxy's process (SIGKILL): the client agent's keepalive notices.
    Kill,
}

impl ScenarioConfig {
    /// Steps the progress display counts.
    fn steps(&self) -> usize {
        let downloads = self.sizes.len() as u32 * 2;
        let per_cond = |reps: u32| (self.pings + downloads * reps) as usize;
        let table3 = PAPER_RESOLVER.len() * 2 * self.reps as usize;
        let table4 = 3 * self.reps as usize;
        3 * per_cond(self.reps)
            + per_cond(self.attack_reps)
            + table3
            + table4
            + 14
            + if self.failover_mode() {
                self.failover_reps as usize
            } else {
                0
            }
            + if self.adversary {
                crate::adversary::STEPS
            } else {
                0
            }
            + if self.testbed.replicated() {
                crate::takeover::STEPS
            } else {
                0
            }
    }

    /// Whether the gateway, proxies, a target agent (and in 4.2 the client agents) are
    /// linked to the coordinator, so its divert, reset and restore lay the indirect
    /// route out. Otherwise the coordinator is left out of the run: no divert, failover
    /// by reset or restore is asked of it.
    pub fn control_mode(&self) -> bool {
        !self.static_route && !self.no_control
    }

    /// Whether the target's detector raises the alarm (no `scold ctl divert`).
    pub fn detect_mode(&self) -> bool {
        self.control_mode() && !self.operator_alarm
    }

    /// Whether clients run `scold client` agents: the stub resolver of scheme 4.1, or
    /// the push service of 4.2 (clients run no SCOLD software in 4.3).
    pub fn agent_mode(&self) -> bool {
        !self.static_route && self.scheme != Scheme::Nat
    }

    /// Whether the proxy failover (4.4) is measured: whenever the route is not static.
    pub fn failover_mode(&self) -> bool {
        !self.static_route && self.failover_reps > 0
    }

    /// What the run must reach to be complete, or `None` when it did: the
    /// coordinator's divert and restore (when it drives the route), every failover
    /// repetition asked for, and no failed sample. The reason is one line.
    pub fn incomplete(&self, r: &Results) -> Option<String> {
        let ok = |m: Metric| {
            r.samples
                .iter()
                .any(|s| s.metric == m && matches!(s.outcome, Outcome::Ok { .. }))
        };
        let mut missing = Vec::new();
        if self.control_mode() {
            if !ok(Metric::Divert) {
                missing.push("the coordinator's divert under attack was not reached".to_string());
            }
            if self.detect_mode() && !ok(Metric::AllClear) {
                missing.push("the detector's all-clear was not reached".into());
            }
            if !ok(Metric::Restore) {
                missing.push("the coordinator's restore was not reached".into());
            }
        }
        if self.failover_mode() {
            let done = r
                .samples
                .iter()
                .filter(|s| s.metric == Metric::Failover && matches!(s.outcome, Outcome::Ok { .. }))
                .count();
            if done < self.failover_reps as usize {
                missing.push(format!(
                    "{done} of {} proxy failovers completed",
                    self.failover_reps
                ));
            }
        }
        let failed: Vec<String> = r
            .samples
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Failed { error } => Some(format!("{:?} #{}: {error}", s.metric, s.rep)),
                _ => None,
            })
            .collect();
        if let Some(first) = failed.first() {
            missing.push(format!("{} samples failed (first: {first})", failed.len()));
        }
        if self.testbed.replicated() && self.control_mode() && r.takeover.is_none() {
            missing.push("the coordinator takeover was not measured".into());
        }
        (!missing.is_empty()).then(|| missing.join("; ").replace('\n', " "))
    }
}

/// Where the report went.
pub struct Outputs {
    pub results: Results,
    pub tables: String,
    pub json: PathBuf,
    pub svg: PathBuf,
    pub text: PathBuf,
    pub logs: PathBuf,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates the output directory and clears the role logs of an earlier run in it, which
/// would be mistaken for this one's; returns the logs folder.
pub(crate) fn prepare_out_dir(dir: &Path) -> Result<PathBuf, LabError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let logs = dir.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)
            .map_err(|e| LabError::io(format!("clearing {}", logs.display()), e))?;
    }
    Ok(logs)
}

/// Runs the scenario and writes `results.json`, `report.txt`, `downloads.svg` and each
/// role's log under `logs/` into the output directory.
pub fn run(cfg: &ScenarioConfig) -> Result<Outputs, LabError> {
    let logs = prepare_out_dir(&cfg.out_dir)?;
    let mut results = Results {
        scold_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix: unix_now(),
        config: serde_json::to_value(cfg).unwrap_or_default(),
        ..Default::default()
    };
    let mut progress = Progress::new(cfg.steps(), cfg.quiet);

    progress.phase(&format!(
        "building the Figure 8 testbed: {} proxies, {} clients, {} attackers, main link {} bit/s ({:?} duplex)",
        cfg.testbed.proxies, cfg.testbed.clients, cfg.testbed.attackers,
        cfg.testbed.bottleneck.rate_bit, cfg.testbed.duplex
    ));
    let lab = Fig8::build(cfg.testbed.clone())?;
    progress.step("testbed", lab.id());
    let outcome = phases(&lab, cfg, &logs, &mut results, &mut progress);
    if let Err(e) = outcome {
        if cfg.keep_on_failure {
            let id = lab.keep();
            eprintln!(
                "scold lab: failed; namespaces {id}-* kept for inspection \
                 (`ip netns list`); remove them with `scold lab cleanup --all`"
            );
        }
        return Err(e);
    }
    lab.teardown()?;
    progress.step(
        "tear-down",
        "processes, namespaces and their /etc/netns files removed",
    );

    results.finished_unix = unix_now();
    let tables = report::render_tables(&results, &cfg.sizes);
    let json = cfg.out_dir.join("results.json");
    let svg = cfg.out_dir.join("downloads.svg");
    let text = cfg.out_dir.join("report.txt");
    let write = |p: &Path, data: &[u8]| {
        std::fs::write(p, data).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
    };
    let mut body = serde_json::to_vec_pretty(&results)
        .map_err(|e| LabError::io("encoding the results", std::io::Error::other(e.to_string())))?;
    body.push(b'\n');
    write(&json, &body)?;
    write(&svg, report::render_svg(&results, &cfg.sizes).as_bytes())?;
    let mut full = tables.clone();
    for n in &results.notes {
        full.push_str(&format!("\nnote: {n}\n"));
    }
    write(&text, full.as_bytes())?;
    let html = cfg.out_dir.join("report.html");
    write(
        &html,
        crate::html::render(&results, &cfg.sizes, &full).as_bytes(),
    )?;
    progress.step("report", &cfg.out_dir.display().to_string());
    Ok(Outputs {
        results,
        tables,
        json,
        svg,
        text,
        logs,
    })
}

fn transfer_outcome(r: Result<Transfer, LabError>, limit: Duration) -> Outcome {
    match r {
        Ok(t) => Outcome::Ok { seconds: t.seconds },
        Err(LabError::Timeout { .. }) => Outcome::Timeout {
            limit_seconds: limit.as_secs_f64(),
        },
        Err(e) => Outcome::Failed {
            error: e.to_string(),
        },
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Outcome::Ok { seconds } => fmt_seconds(*seconds),
        Outcome::Timeout { limit_seconds } => {
            format!("> {} (cut)", fmt_seconds(*limit_seconds))
        }
        Outcome::Failed { error } => format!("failed: {error}"),
    }
}

fn download(
    target: Ipv4Addr,
    proto: Proto,
    size: u64,
    limit: Duration,
    device: Option<&str>,
) -> Result<Transfer, LabError> {
    match proto {
        Proto::Bulk => {
            measure::fetch_bulk_via((target, DEFAULT_BULK_PORT).into(), size, limit, device)
        }
        Proto::Http => measure::fetch_http_via(
            (target, DEFAULT_HTTP_PORT).into(),
            "target",
            &serve::http_path(size),
            limit,
            device,
        ),
    }
}

/// How to run one condition's measurements.
struct Plan {
    condition: Condition,
    /// Where the client sends its probes: the target, or in NAT mode (4.3) its proxy.
    dest: Ipv4Addr,
    /// Whether ICMP echoes reach the target this way (NAT mode relays service ports only).
    ping: bool,
    reps: u32,
    limit: Duration,
    /// All downloads at once instead of one after another.
    concurrent: bool,
    /// Sockets confined to this device of the client ([`direct_device`]).
    device: Option<&'static str>,
}

/// The device direct-route probes are confined to: in scheme 4.2 the route a proxy
/// pushed covers the target's address from the divert on, so probes of the direct
/// route leave by the client's own uplink; elsewhere the client's routing decides.
fn direct_device(cfg: &ScenarioConfig) -> Option<&'static str> {
    (cfg.scheme == Scheme::Push && cfg.agent_mode()).then_some(fig8::LEAF_IF)
}

/// Ping and downloads from client 1 to the target; returns the bytes downloaded.
fn measure_condition(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    plan: &Plan,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<u64, LabError> {
    let client = fig8::client(1);
    let target = plan.dest;
    let label = plan.condition.label();
    let echo_timeout = Duration::from_secs(1);
    let echoes = if plan.ping {
        lab.run_in(&client, || {
            measure::ping_samples_via(
                target,
                cfg.pings,
                Duration::from_millis(100),
                echo_timeout,
                plan.device,
            )
        })??
    } else {
        Vec::new()
    };
    for (i, e) in echoes.iter().enumerate() {
        let outcome = match e {
            Some(d) => Outcome::Ok {
                seconds: d.as_secs_f64(),
            },
            None => Outcome::Timeout {
                limit_seconds: echo_timeout.as_secs_f64(),
            },
        };
        progress.step(&format!("{label}: ping #{}", i + 1), &show(&outcome));
        results.push(
            Metric::Condition {
                probe: Probe::Ping,
                condition: plan.condition,
            },
            i as u32 + 1,
            outcome,
        );
    }
    // Repetitions outermost, so slow drift spreads over every size alike.
    let mut jobs = Vec::new();
    for rep in 1..=plan.reps {
        for &size in &cfg.sizes {
            for proto in [Proto::Bulk, Proto::Http] {
                jobs.push((rep, size, proto));
            }
        }
    }
    let limit = plan.limit;
    let device = plan.device;
    let outcomes: Vec<Result<Transfer, LabError>> = if plan.concurrent {
        let handles = jobs
            .iter()
            .map(|&(_, size, proto)| {
                lab.thread_in(&client, move || {
                    download(target, proto, size, limit, device)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::io(
                        "a download thread",
                        std::io::Error::other("panicked"),
                    ))
                })
            })
            .collect()
    } else {
        let mut v = Vec::new();
        for &(rep, size, proto) in &jobs {
            let r = lab.run_in(&client, || download(target, proto, size, limit, device))?;
            // Shown as it happens; recorded below with the rest.
            progress.step(
                &format!("{label}: {} {} #{rep}", proto.label(), fmt_size(size)),
                &show(&transfer_outcome(clone_result(&r), limit)),
            );
            v.push(r);
        }
        v
    };
    let mut bytes = 0;
    for (&(rep, size, proto), r) in jobs.iter().zip(outcomes) {
        if let Ok(t) = &r {
            bytes += t.bytes;
        }
        let outcome = transfer_outcome(r, limit);
        if plan.concurrent {
            progress.step(
                &format!("{label}: {} {} #{rep}", proto.label(), fmt_size(size)),
                &show(&outcome),
            );
        }
        results.push(
            Metric::Condition {
                probe: Probe::Download { proto, size },
                condition: plan.condition,
            },
            rep,
            outcome,
        );
    }
    Ok(bytes)
}

/// A copy of a download result for display (errors keep their kind and text).
fn clone_result(r: &Result<Transfer, LabError>) -> Result<Transfer, LabError> {
    match r {
        Ok(t) => Ok(*t),
        Err(LabError::Timeout { what, secs }) => Err(LabError::Timeout {
            what: what.clone(),
            secs: *secs,
        }),
        Err(e) => Err(LabError::BadSpec(e.to_string())),
    }
}

/// Starts one flood process per attacker, splitting the rate among them.
fn start_floods(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    budget: Duration,
) -> Result<Vec<LabProcess>, LabError> {
    let attackers = lab.attackers();
    let n = attackers.len().max(1) as u64;
    let per = (cfg.flood_rate_pps / n).max(1);
    let allow: Vec<String> = lab.prefixes().iter().map(|p| p.to_string()).collect();
    let mut procs = Vec::new();
    for a in &attackers {
        let mut cmd = lab.command(a, &cfg.scold_bin)?;
        cmd.args(["lab", "flood", "--kind"])
            .arg(match cfg.flood_kind {
                FloodKind::Udp => "udp",
                FloodKind::Icmp => "icmp",
                FloodKind::Syn => "syn",
            })
            .args(["--target", &fig8::TARGET_ADDR.to_string()])
            .args(["--rate", &per.to_string()])
            .args(["--payload", &cfg.flood_payload.to_string()])
            .args(["--duration", &budget.as_secs().max(1).to_string()]);
        for p in &allow {
            cmd.args(["--allow", p]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        procs.push(lab.spawn(&format!("{a}: scold lab flood"), &mut cmd)?);
    }
    Ok(procs)
}

/// An error naming the first flood process that is no longer running.
fn floods_ended(procs: &mut [LabProcess]) -> Option<LabError> {
    for p in procs.iter_mut() {
        match p.try_wait() {
            Ok(None) => {}
            Ok(Some(st)) => {
                return Some(LabError::Command {
                    command: p.label().to_string(),
                    status: st.to_string(),
                    stderr: "the flood ended before the measurements under attack did (see its \
                             message above); the figures under attack would not be"
                        .into(),
                })
            }
            Err(e) => return Some(e),
        }
    }
    None
}

/// Stops the floods and reads each one's report.
fn stop_floods(procs: Vec<LabProcess>) -> Vec<Result<FloodReport, String>> {
    procs
        .into_iter()
        .map(|mut p| {
            let out = p.take_stdout();
            let _ = p.stop(Duration::from_secs(3));
            let mut text = String::new();
            if let Some(mut o) = out {
                let _ = o.read_to_string(&mut text);
            }
            serde_json::from_str::<FloodReport>(text.trim())
                .map_err(|_| format!("{}: no report ({:?})", p.label(), text.trim()))
        })
        .collect()
}

/// One JSON line from `scold lab fetch` or `scold lab ping` run in `client`.
fn tool_json(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    client: &str,
    args: &[String],
) -> Result<serde_json::Value, LabError> {
    let mut all = vec!["--log".to_string(), "warn".into(), "lab".into()];
    all.extend(args.iter().cloned());
    let out = lab.exec(
        client,
        &cfg.scold_bin.display().to_string(),
        &all,
        cfg.timeout + Duration::from_secs(5),
    )?;
    serde_json::from_slice(&out.stdout).map_err(|e| LabError::Protocol {
        peer: format!(
            "scold lab {}",
            args.first().map(String::as_str).unwrap_or("")
        ),
        reason: format!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    })
}

/// Table 3: each probe by address and by name, as a separate process in client 1 whose
/// resolv.conf points at ClientDNS; the time is the tool's lookup plus its probe.
fn measure_resolver(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let client = fig8::client(1);
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
    for rep in 1..=cfg.reps {
        for &(probe, _, _) in PAPER_RESOLVER.iter() {
            for resolver in [Resolver::Address, Resolver::Name] {
                let host = match resolver {
                    Resolver::Address => fig8::TARGET_ADDR.to_string(),
                    Resolver::Name => roles::TARGET_FQDN.to_string(),
                };
                let args: Vec<String> = match probe {
                    Probe::Ping => vec![
                        "ping".into(),
                        host.clone(),
                        "--count".into(),
                        "1".into(),
                        "--timeout".into(),
                        "1".into(),
                    ],
                    Probe::Download { proto, size } => vec![
                        "fetch".into(),
                        "--proto".into(),
                        match proto {
                            Proto::Bulk => "bulk".into(),
                            Proto::Http => "http".into(),
                        },
                        "--server".into(),
                        host.clone(),
                        "--size".into(),
                        size.to_string(),
                        "--timeout".into(),
                        cfg.timeout.as_secs_f64().to_string(),
                    ],
                };
                let outcome = match tool_json(lab, cfg, &client, &args) {
                    Ok(v) => {
                        let resolve = f(&v, "resolve_seconds");
                        let probe_s = match probe {
                            Probe::Ping => v
                                .get("rtt_seconds")
                                .and_then(|r| r.get(0))
                                .and_then(|x| x.as_f64()),
                            Probe::Download { .. } => f(&v, "seconds"),
                        };
                        match (resolve, probe_s) {
                            (Some(a), Some(b)) => Outcome::Ok { seconds: a + b },
                            (Some(_), None) if probe == Probe::Ping => {
                                Outcome::Timeout { limit_seconds: 1.0 }
                            }
                            _ => Outcome::Failed {
                                error: format!("unexpected tool output {v}"),
                            },
                        }
                    }
                    Err(e) => Outcome::Failed {
                        error: e.to_string(),
                    },
                };
                progress.step(
                    &format!(
                        "Table 3: {} by {} #{rep}",
                        match probe {
                            Probe::Ping => "ping".to_string(),
                            Probe::Download { proto, size } =>
                                format!("{} {}", proto.label(), fmt_size(size)),
                        },
                        match resolver {
                            Resolver::Address => "address",
                            Resolver::Name => "name",
                        }
                    ),
                    &show(&outcome),
                );
                results.push(Metric::Resolver { probe, resolver }, rep, outcome);
            }
        }
    }
    Ok(())
}

/// Seconds from `t0` until `attempt` first succeeds, trying until `deadline`.
fn first_success(t0: Instant, deadline: Instant, mut attempt: impl FnMut() -> bool) -> Option<f64> {
    while Instant::now() < deadline {
        if attempt() {
            return Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Table 4 (static set-up): starts the client agents and the target's return path,
/// and times the first ping reply and the first complete 100k downloads that went out
/// and came back through client 1's tunnel (sockets bound to its TUN device, so the
/// direct route cannot answer for it). Leaves the agents stopped.
///
/// A download attempt started before the route is whole loses its SYN and waits out
/// its own time limit, so attempts are cut short ([`SETUP_ATTEMPT`]); that bounds how
/// much a set-up time can overstate the truth.
const SETUP_ATTEMPT: Duration = Duration::from_millis(200);

fn measure_setup(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let client = fig8::client(1);
    let limit = Duration::from_secs(15);
    // In NAT mode (4.3) the proxy's address answers only through the relay, so no
    // socket binding is needed there, and pings do not reach the target.
    let (target, pings) = indirect_dest(roles)?;
    let dev = pings.then_some(roles::CLIENT_TUN);
    let mut lookups = Vec::new();
    for rep in 1..=cfg.reps {
        if roles.resolver_agent() {
            // The target's side first (as after a divert); the clock starts at the
            // application's lookup, which the agent answers once the route is up.
            roles.indirect_on()?;
        }
        let t0 = Instant::now();
        let deadline = t0 + limit;
        if roles.resolver_agent() {
            let (secs, _) = agent_lookup(lab, limit)?;
            lookups.push(secs);
        } else {
            roles.indirect_on()?;
        }
        let ping = lab.thread_in(&client, move || {
            if !pings {
                return None;
            }
            first_success(t0, deadline, || {
                measure::ping_samples_via(
                    target,
                    1,
                    Duration::ZERO,
                    Duration::from_millis(100),
                    dev,
                )
                .is_ok_and(|e| e[0].is_some())
            })
        })?;
        let bulk = lab.thread_in(&client, move || {
            first_success(t0, deadline, || {
                measure::fetch_bulk_via(
                    (target, DEFAULT_BULK_PORT).into(),
                    100_000,
                    SETUP_ATTEMPT,
                    dev,
                )
                .is_ok()
            })
        })?;
        let http = lab.thread_in(&client, move || {
            first_success(t0, deadline, || {
                measure::fetch_http_via(
                    (target, DEFAULT_HTTP_PORT).into(),
                    "target",
                    &serve::http_path(100_000),
                    SETUP_ATTEMPT,
                    dev,
                )
                .is_ok()
            })
        })?;
        let probes = [
            (Probe::Ping, ping),
            (
                Probe::Download {
                    proto: Proto::Bulk,
                    size: 100_000,
                },
                bulk,
            ),
            (
                Probe::Download {
                    proto: Proto::Http,
                    size: 100_000,
                },
                http,
            ),
        ];
        for (probe, h) in probes {
            let got = h.join().ok().flatten();
            if probe == Probe::Ping && !pings {
                continue;
            }
            let outcome = match got {
                Some(s) => Outcome::Ok { seconds: s },
                None => Outcome::Timeout {
                    limit_seconds: limit.as_secs_f64(),
                },
            };
            progress.step(
                &format!(
                    "Table 4: set-up until the first {} #{rep}",
                    match probe {
                        Probe::Ping => "ping reply".to_string(),
                        Probe::Download { proto, size } =>
                            format!("{} {} download", proto.label(), fmt_size(size)),
                    }
                ),
                &show(&outcome),
            );
            results.push(Metric::Setup { probe }, rep, outcome);
        }
        roles.check_agents()?;
        route_off(roles)?;
    }
    if let (Some(med), Some(worst)) = (
        measure::median(&lookups),
        lookups.iter().copied().reduce(f64::max),
    ) {
        results.notes.push(format!(
            "Table 4 (client agent): the application's lookup of {} through the agent took \
             {} median, {} worst over {} repetitions (it is answered only once the agent \
             has measured the proxies, been admitted by one and brought the tunnel and host \
             route up); the figures in Table 4 run from that lookup to the first answer \
             through the tunnel; the ping and both 100k downloads start together and share \
             the alternate link",
            roles::TARGET_FQDN,
            fmt_seconds(med),
            fmt_seconds(worst),
            lookups.len()
        ));
    }
    Ok(())
}

/// Agent mode: client 1's application looks the target's name up through its agent
/// (the server its resolv.conf names). Returns the seconds until the answer and the A
/// records; fails when no answer or no address came.
fn agent_lookup(lab: &Fig8, limit: Duration) -> Result<(f64, Vec<Ipv4Addr>), LabError> {
    let server: SocketAddr = (roles::AGENT_DNS, 53).into();
    let t0 = Instant::now();
    let a = lab.run_in(&fig8::client(1), || {
        dnsq::query(server, &format!("{}.", roles::TARGET_FQDN), 1, limit)
    })??;
    if a.a.is_empty() {
        return Err(LabError::Protocol {
            peer: format!("the client agent of {} at {server}", fig8::client(1)),
            reason: format!("no address for {} (rcode {})", roles::TARGET_FQDN, a.rcode),
        });
    }
    Ok((t0.elapsed().as_secs_f64(), a.a))
}

/// Takes client 1 off the indirect route: stops the target's return path and, with
/// the scheme 4.1 agent, restarts the client agents (stopping one removes its tunnel
/// and routes). A pushed route (4.2) or the A records (4.3) stay until the
/// coordinator's restore.
pub(crate) fn route_off(roles: &mut Roles) -> Result<(), LabError> {
    roles.indirect_off()?;
    if roles.resolver_agent() {
        roles.restart_client_agents()?;
    }
    Ok(())
}

/// Starts the indirect route and waits until a ping through the tunnel is answered.
pub(crate) fn indirect_up(lab: &Fig8, roles: &mut Roles) -> Result<(), LabError> {
    roles.indirect_on()?;
    let client = fig8::client(1);
    if roles.resolver_agent() {
        // The agent sets the route up when the name is looked up.
        agent_lookup(lab, Duration::from_secs(15))?;
    }
    let (dest, ping) = indirect_dest(roles)?;
    let t0 = Instant::now();
    let ok = lab.run_in(&client, || {
        first_success(t0, t0 + Duration::from_secs(15), || {
            if ping {
                measure::ping_samples_via(
                    dest,
                    1,
                    Duration::ZERO,
                    Duration::from_millis(200),
                    Some(roles::CLIENT_TUN),
                )
                .is_ok_and(|e| e[0].is_some())
            } else {
                // NAT mode: only the relay through the tunnel can answer there.
                measure::fetch_http(
                    (dest, DEFAULT_HTTP_PORT).into(),
                    "target",
                    "/0k",
                    Duration::from_millis(300),
                )
                .is_ok()
            }
        })
    })?;
    roles.check_agents()?;
    if ok.is_none() {
        return Err(LabError::Timeout {
            what: format!(
                "the indirect route {} -> {} -> {} -> target (no answer through the \
                 tunnel; see the logs in {})",
                client,
                if roles.linked() {
                    "its proxy"
                } else {
                    roles.proxy_of(&client).unwrap_or("?")
                },
                fig8::ALT_GW,
                roles.log_dir().display()
            ),
            secs: 15.0,
        });
    }
    Ok(())
}

/// Where client 1 sends its probes over the indirect route, and whether pings get
/// there: the target itself, or in NAT mode (4.3) a proxy's address, which relays the
/// service ports only: with the coordinator, the first address ClientDNS gives for the
/// target's name (as an unmodified client would connect to), else its static proxy.
fn indirect_dest(roles: &Roles) -> Result<(Ipv4Addr, bool), LabError> {
    let client = fig8::client(1);
    match roles.scheme() {
        Scheme::Nat if roles.linked() => match roles.nat_lookup()? {
            (a, Some(_)) => Ok((a, false)),
            (a, None) => Err(LabError::Protocol {
                peer: "ClientDNS".into(),
                reason: format!(
                    "{} resolves to {a}, which is no proxy's address: the coordinator's \
                     divert did not replace the A records; coordinator: {}",
                    roles::TARGET_FQDN,
                    target_status(roles)
                ),
            }),
        },
        Scheme::Nat => Ok((
            roles
                .proxy_of(&client)
                .and_then(fig8::address_of)
                .expect("client 1 has a proxy"),
            false,
        )),
        _ => Ok((fig8::TARGET_ADDR, true)),
    }
}

/// Measures one indirect condition and checks the bytes really came through the tunnel.
fn measure_indirect(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    attack: bool,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    indirect_up(lab, roles)?;
    let before = roles.gateway_tunnel_bytes()?;
    let (dest, ping) = indirect_dest(roles)?;
    let plan = Plan {
        condition: Condition {
            route: Route::Indirect,
            attack,
        },
        dest,
        ping,
        reps: cfg.reps,
        limit: cfg.timeout,
        concurrent: false,
        device: None,
    };
    let bytes = measure_condition(lab, cfg, &plan, results, progress)?;
    if roles.scheme() == Scheme::Nat && roles.linked() {
        results.notes.push(curl_by_name(lab, roles, attack)?);
    }
    let through = roles.gateway_tunnel_bytes()?.saturating_sub(before);
    roles.check()?;
    route_off(roles)?;
    if through < bytes {
        return Err(LabError::BadSpec(format!(
            "{} downloaded {bytes} bytes on the indirect route but only {through} left the \
             site through the hidden gateway's tunnel device {}: the measurement did not take \
             the indirect route",
            fig8::client(1),
            roles::GATEWAY_TUN
        )));
    }
    Ok(())
}

/// Scheme 4.3 with a tool nobody here wrote: `curl` in client 1 fetches the target's
/// page by name (its resolv.conf names ClientDNS); it must connect to a proxy's address
/// and get the page. Returns the note saying so.
fn curl_by_name(lab: &Fig8, roles: &Roles, attack: bool) -> Result<String, LabError> {
    crate::topology::require_tool("curl", "curl")?;
    let url = format!("http://{}:{DEFAULT_HTTP_PORT}/0k", roles::TARGET_FQDN);
    let out = lab.exec(
        &fig8::client(1),
        "curl",
        [
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code} %{remote_ip}",
            url.as_str(),
        ],
        Duration::from_secs(8),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, ip) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    let proxy = ip.parse::<Ipv4Addr>().ok().and_then(|a| {
        lab.proxies()
            .into_iter()
            .find(|p| fig8::address_of(p) == Some(a))
    });
    match (code, proxy) {
        ("200", Some(p)) => Ok(format!(
            "scheme 4.3{}: an unmodified client's `curl {url}` (resolv.conf naming ClientDNS) \
             connected to {ip} ({p}) and got HTTP 200 from the target through it",
            if attack { ", under attack" } else { "" }
        )),
        _ => Err(LabError::Protocol {
            peer: format!("curl in {}", fig8::client(1)),
            reason: format!(
                "`curl {url}` gave {text:?} ({}), not HTTP 200 from a proxy's address; \
                 coordinator: {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                target_status(roles)
            ),
        }),
    }
}

/// What the divert publishes for clients: ALT records, or in NAT mode (4.3) the
/// proxies' addresses as the name's A records.
fn published(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Nat => "A records naming the proxies",
        _ => "ALT records",
    }
}

/// Seconds until the ALT records changed, and the set then seen.
type AltSeen = (f64, Vec<std::net::IpAddr>);

/// Waits (at most two ALT TTLs from `t0`) until ClientDNS shows the diverted records.
fn wait_alt_diverted(lab: &Fig8, scheme: Scheme, t0: Instant) -> Result<Option<AltSeen>, LabError> {
    let deadline = t0 + Duration::from_secs(roles::DNS_TTL as u64 * 2);
    let watcher = watch_alt(
        lab,
        scheme,
        t0,
        deadline,
        true,
        Arc::new(AtomicBool::new(false)),
    )?;
    Ok(watcher.join().ok().flatten())
}

/// Watches ClientDNS from client 1 for the divert as clients see it: the target's ALT
/// records (4.1, 4.2), or in NAT mode (4.3) A records that no longer name the target
/// but its proxies. Returns the seconds from `t0` until the answer shows `diverted`
/// (and the addresses then listed), or `None` at `deadline` or `stop`.
fn watch_alt(
    lab: &Fig8,
    scheme: Scheme,
    t0: Instant,
    deadline: Instant,
    diverted: bool,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Option<AltSeen>>, LabError> {
    let server: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("in the plan"), 53).into();
    let nat = scheme == Scheme::Nat;
    lab.thread_in(&fig8::client(1), move || {
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let rtype = if nat { 1 } else { dnsq::ALT_TYPE };
            if let Ok(a) = dnsq::query(
                server,
                &format!("{}.", roles::TARGET_FQDN),
                rtype,
                Duration::from_millis(500),
            ) {
                let (now_diverted, listed) = if nat {
                    (
                        !a.a.is_empty() && !a.a.contains(&fig8::TARGET_ADDR),
                        a.a.iter().map(|&x| x.into()).collect(),
                    )
                } else {
                    (!a.alt.is_empty(), a.alt)
                };
                if now_diverted == diverted {
                    return Some((t0.elapsed().as_secs_f64(), listed));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
}

/// The target's phase in a `scold ctl --json status` reply.
pub(crate) fn phase_of(status: &serde_json::Value) -> Option<String> {
    status
        .get("targets")?
        .as_array()?
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(roles::TARGET_ID))?
        .get("phase")?
        .as_str()
        .map(str::to_string)
}

/// Polls the coordinator (`scold ctl --json status`, run as `ip` + `argv`) every
/// 100 ms and records, for each phase of `wants`, the seconds from `t0` at which it was
/// first seen; returns once the last one is seen, or at `deadline` or `stop`.
pub(crate) fn watch_phases(
    argv: Vec<String>,
    t0: Instant,
    deadline: Instant,
    wants: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Option<f64>>> {
    std::thread::spawn(move || {
        let mut seen = vec![None; wants.len()];
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let out = std::process::Command::new("ip")
                .args(&argv)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            let phase = out.ok().and_then(|o| {
                serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|v| phase_of(&v))
            });
            if let Some(i) = wants.iter().position(|w| Some(*w) == phase.as_deref()) {
                let t = t0.elapsed().as_secs_f64();
                seen[i].get_or_insert(t);
                if i == wants.len() - 1 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

/// [`watch_phases`] for one phase, as a divert watcher.
fn watch_phase(
    argv: Vec<String>,
    t0: Instant,
    deadline: Instant,
    want: &'static [&'static str; 1],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<AltSeen>> {
    let h = watch_phases(argv, t0, deadline, want, stop);
    std::thread::spawn(move || {
        h.join()
            .ok()
            .and_then(|v| v.first().copied().flatten())
            .map(|s| (s, Vec::new()))
    })
}

/// The failover's echo loop: one echo this often through the tunnel...
const ECHO_EVERY: Duration = Duration::from_millis(20);
/// ...each waiting this long (the tunnel's round trip is about a millisecond), so the
/// gap it measures is at most about `ECHO_EVERY + ECHO_TIMEOUT` longer than the outage.
const ECHO_TIMEOUT: Duration = Duration::from_millis(60);

/// One failover repetition's echo log: seconds from the loop's start at which each
/// answered echo came back.
struct EchoLog {
    replies: Vec<f64>,
}

/// The outage an echo log shows around an event at `t_event`: the longest silence
/// between two answers of which the later came after the event.
fn outage(replies: &[f64], t_event: f64) -> Option<f64> {
    replies
        .windows(2)
        .filter(|w| w[1] > t_event)
        .map(|w| w[1] - w[0])
        .reduce(f64::max)
}

/// Waits until the coordinator lists `proxy` as up (`up`: its attacked mark expired,
/// or it registered again) or as not up (`!up`: marked down or attacked), and the
/// target is in phase "diverted", at most `limit`.
fn wait_proxy(roles: &Roles, proxy: &str, up: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let health_ok = roles.ctl(&["proxies"]).ok().is_some_and(|v| {
            let list = v.get("proxies").cloned().unwrap_or(v);
            list.as_array().is_some_and(|a| {
                a.iter().any(|p| {
                    p.get("name").and_then(|n| n.as_str()) == Some(proxy)
                        && (p.get("health").and_then(|h| h.as_str()) == Some("up")) == up
                })
            })
        });
        let diverted = roles
            .ctl(&["status"])
            .ok()
            .and_then(|v| phase_of(&v))
            .is_some_and(|p| p == "diverted");
        if health_ok && diverted {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Proxy failover (4.4) under attack: with client 1 on the indirect route through the
/// proxy its agent chose, a bounded echo loop (one echo every [`ECHO_EVERY`] through the
/// tunnel, each waiting at most [`ECHO_TIMEOUT`]) runs while that proxy is taken out: flooded from an
/// attacker (`--failover flood`, the default with the data path linked: its
/// self-defence reports the attack, the coordinator resets it out of the ALT set and
/// the gateway stops admitting it, the agent re-reads the set and moves) or killed
/// (`--failover kill`: the agent's keepalive notices). The figure is the longest
/// silence the loop saw after the event, until echoes came back through the other
/// proxy. A killed proxy is started again after each repetition; a flooded one is
/// used again once the coordinator's attacked mark expired.
pub(crate) fn measure_failover(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let client = fig8::client(1);
    let limit = Duration::from_secs(12);
    let flood = cfg.failover_attack == FailoverAttack::Flood && cfg.control_mode();
    indirect_up(lab, roles)?;
    // Which proxy the client's tunnel goes through, before and after, is read off its
    // tunnel packets (a counter per proxy), not out of the agent's log.
    roles.watch_tunnels(&client)?;
    let mut gaps = Vec::new();
    let mut moves = Vec::new();
    let mut resets = Vec::new();
    for rep in 1..=cfg.failover_reps {
        let counted = roles.tunnel_packets(&client)?;
        // Set once the client's tunnel goes to another proxy; the loop then runs 10
        // more answers.
        let moved = Arc::new(AtomicBool::new(false));
        let flag = moved.clone();
        let start = Instant::now();
        let pinger = lab.thread_in(&client, move || {
            let mut log = EchoLog {
                replies: Vec::new(),
            };
            let mut after_move = 0;
            while start.elapsed() < limit && after_move < 10 {
                let t = Instant::now();
                let ok = measure::ping_samples_via(
                    fig8::TARGET_ADDR,
                    1,
                    Duration::ZERO,
                    ECHO_TIMEOUT,
                    Some(roles::CLIENT_TUN),
                )
                .is_ok_and(|e| e[0].is_some());
                if ok {
                    log.replies.push(start.elapsed().as_secs_f64());
                    if flag.load(Ordering::Relaxed) {
                        after_move += 1;
                    }
                }
                if let Some(rest) = ECHO_EVERY.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            log
        })?;
        std::thread::sleep(Duration::from_secs(1));
        // The proxy the echoes of that second went to.
        let warm = roles.tunnel_packets(&client)?;
        let node = busiest_since(&counted, &warm, None);
        let Some(node) = node else {
            moved.store(true, Ordering::Relaxed);
            let _ = pinger.join();
            return Err(LabError::Protocol {
                peer: format!("the client agent of {client}"),
                reason: format!(
                    "none of its tunnel packets went to a proxy in the second before the \
                     failover (counters {warm:?}); see the logs in {}",
                    roles.log_dir().display()
                ),
            });
        };
        let t_event = start.elapsed().as_secs_f64();
        let t_event_wall = SystemTime::now();
        let mut attack = None;
        if flood {
            attack = Some(start_proxy_flood(lab, cfg, &node, rep)?);
        } else {
            roles.kill_proxy(&node)?;
        }
        // The agent moved when its tunnel packets go to another proxy.
        let mut moved_at = None;
        let mut after = None;
        while start.elapsed() < limit {
            if let Ok(now) = roles.tunnel_packets(&client) {
                if let Some(p) = busiest_since(&warm, &now, Some(&node)) {
                    moved_at = Some(start.elapsed().as_secs_f64());
                    after = Some(p);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        moved.store(true, Ordering::Relaxed);
        let sent = attack.map(|p| stop_floods(vec![p]));
        let log = pinger.join().map_err(|_| {
            LabError::io("the failover echo loop", std::io::Error::other("panicked"))
        })?;
        let what = if flood { "flooded" } else { "killed" };
        let first_after = moved_at.and_then(|m| log.replies.iter().copied().find(|&t| t > m));
        let outcome = match (moved_at, first_after, outage(&log.replies, t_event)) {
            (Some(m), Some(_), Some(gap)) => {
                gaps.push(gap);
                moves.push(m - t_event);
                Outcome::Ok { seconds: gap }
            }
            (Some(_), _, _) => Outcome::Failed {
                error: format!(
                    "the agent moved from {node} ({what}) to {after:?} but no echo came back \
                     through it within {}",
                    fmt_seconds(limit.as_secs_f64())
                ),
            },
            (None, _, _) => Outcome::Timeout {
                limit_seconds: limit.as_secs_f64() - t_event,
            },
        };
        progress.step(
            &format!("failover: {node} {what} #{rep}"),
            &format!(
                "{} (now via {}{})",
                show(&outcome),
                after.map(|a| a.to_string()).unwrap_or("?".into()),
                match moved_at {
                    Some(m) => format!(
                        ", agent moved {} after the {}",
                        fmt_seconds(m - t_event),
                        if flood { "flood began" } else { "kill" }
                    ),
                    None => String::new(),
                }
            ),
        );
        if let Some(Some(Ok(r))) = sent.as_ref().map(|v| v.first()) {
            results.notes.push(format!(
                "failover #{rep}: flood {:?} to {node} ({}): {} packets in {:.1} s",
                r.kind, r.target, r.sent, r.seconds
            ));
        }
        results.push(Metric::Failover, rep, outcome);
        proxy_back(roles, cfg, &node, flood, rep)?;
        if cfg.control_mode() {
            let event = if flood { "flood began" } else { "kill" };
            results.notes.push(match wait_reset(roles, t_event_wall) {
                Ok((out, done)) => {
                    resets.push(done);
                    format!(
                        "failover #{rep}: the coordinator reset {node} out of the target's set \
                         {} after the {event} and had the set complete again {} after it \
                         (phases \"resetting\" and \"diverted\" in its audit log)",
                        fmt_seconds(out),
                        fmt_seconds(done)
                    )
                }
                Err(e) => format!("failover #{rep}: the coordinator's reset of {node}: {e}"),
            });
        }
        roles.check()?;
    }
    if let (Some(med), Some(worst)) = (
        measure::median(&gaps),
        gaps.iter().copied().reduce(f64::max),
    ) {
        results.notes.push(if flood {
            format!(
                "failover (4.4): the client's proxy was flooded from an attacker ({} packets/s \
                 of 64 bytes, under the main-link attack); its self-defence (over {} packets/s \
                 for {} ms) {}reported ProxyAttacked; the client's tunnel moved to the other \
                 proxy {} median after the flood began, and the coordinator reset the proxy \
                 out of the ALT set and the gateway's admitted set ({} median after the flood \
                 began, by its audit log){}; the gap in a 20 ms echo loop through the tunnel: \
                 {} median, {} worst over {} repetitions",
                roles::PROXY_FLOOD_PPS,
                roles::PROXY_RX_PPS_MAX,
                roles::PROXY_SUSTAIN_MS,
                if cfg.scheme == Scheme::Push {
                    ""
                } else {
                    "told its admitted client agents it is draining and "
                },
                fmt_seconds(measure::median(&moves).unwrap_or(0.0)),
                measure::median(&resets)
                    .map(fmt_seconds)
                    .unwrap_or_else(|| "?".into()),
                if cfg.scheme == Scheme::Push {
                    " and had the other proxy push the route to the client agent (scheme 4.2: \
                     the agent moves only on a push)"
                } else {
                    ""
                },
                fmt_seconds(med),
                fmt_seconds(worst),
                gaps.len()
            )
        } else {
            format!(
                "failover (4.4): gap in a 20 ms echo loop through the tunnel when the client's \
                 proxy process was killed (SIGKILL){}, until echoes came back through the \
                 other proxy{}: {} median, {} worst over {} repetitions",
                if lab.attackers().is_empty() {
                    ""
                } else {
                    " under attack"
                },
                if cfg.scheme == Scheme::Push {
                    " (scheme 4.2: after the coordinator marked it down and had the other \
                     proxy push the route)"
                } else {
                    ""
                },
                fmt_seconds(med),
                fmt_seconds(worst),
                gaps.len()
            )
        });
    }
    route_off(roles)
}

/// Scheme 4.3's failover (4.4): the client runs no SCOLD software, so nothing moves
/// its open connections; what it gets is the coordinator's reset republishing the A
/// records without the lost proxy. A bounded loop in client 1 looks the name up at
/// ClientDNS and opens a new HTTP connection to the first address every
/// [`ECHO_EVERY`], while the proxy it leads to is flooded (self-defence, reset) or
/// killed (marked down, reset). The figure is the time from the coordinator entering
/// "resetting" (its audit log) until a new connection through another proxy succeeded.
pub(crate) fn measure_failover_nat(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let client = fig8::client(1);
    let limit = Duration::from_secs(15);
    let flood = cfg.failover_attack == FailoverAttack::Flood && cfg.control_mode();
    let what = if flood { "flooded" } else { "killed" };
    let cdns: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("in the plan"), 53).into();
    let mut figures = Vec::new();
    let mut from_event = Vec::new();
    for rep in 1..=cfg.failover_reps {
        let (old, node) = roles.nat_lookup()?;
        let Some(node) = node else {
            return Err(LabError::Protocol {
                peer: "ClientDNS".into(),
                reason: format!(
                    "{} resolves to {old}, no proxy's address, before the failover; \
                     coordinator: {}",
                    roles::TARGET_FQDN,
                    target_status(roles)
                ),
            });
        };
        let start = Instant::now();
        // Successful new connections: (Unix ms, the address connected to). The loop
        // ends after 10 through another address, or at `limit`.
        let prober = lab.thread_in(&client, move || {
            let mut ok: Vec<(u64, Ipv4Addr)> = Vec::new();
            let mut elsewhere = 0;
            while start.elapsed() < limit && elsewhere < 10 {
                let t = Instant::now();
                let to = dnsq::query(
                    cdns,
                    &format!("{}.", roles::TARGET_FQDN),
                    1,
                    Duration::from_millis(300),
                )
                .ok()
                .and_then(|a| a.a.first().copied());
                if let Some(to) = to {
                    let fetched = measure::fetch_http(
                        (to, DEFAULT_HTTP_PORT).into(),
                        "target",
                        "/0k",
                        Duration::from_millis(300),
                    );
                    if fetched.is_ok() {
                        ok.push((audit::unix_ms(SystemTime::now()), to));
                        if to != old {
                            elsewhere += 1;
                        }
                    }
                }
                if let Some(rest) = ECHO_EVERY.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            ok
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let t_event_wall = SystemTime::now();
        let event_ms = audit::unix_ms(t_event_wall);
        let attack = if flood {
            Some(start_proxy_flood(lab, cfg, &node, rep)?)
        } else {
            roles.kill_proxy(&node)?;
            None
        };
        let ok = prober.join().map_err(|_| {
            LabError::io(
                "the failover connection loop",
                std::io::Error::other("panicked"),
            )
        })?;
        let sent = attack.map(|p| stop_floods(vec![p]));
        let reset = wait_reset(roles, t_event_wall);
        let before = ok
            .iter()
            .filter(|(t, a)| *t < event_ms && *a == old)
            .count();
        let outcome = match &reset {
            Ok((out, _)) => {
                let reset_ms = event_ms + (out * 1000.0) as u64;
                match ok.iter().find(|(t, a)| *t >= reset_ms && *a != old) {
                    Some((t, a)) => {
                        let s = (t - reset_ms) as f64 / 1000.0;
                        figures.push(s);
                        from_event.push((t - event_ms) as f64 / 1000.0);
                        results.notes.push(format!(
                            "failover #{rep} (4.3): {node} ({old}) {what}; the coordinator \
                             reset it out {} after, and a new connection from {client} \
                             (lookup at ClientDNS, then HTTP) succeeded through {a} {} after \
                             the reset ({} after the {}); {before} connections through {old} \
                             had succeeded in the second before",
                            fmt_seconds(*out),
                            fmt_seconds(s),
                            fmt_seconds((t - event_ms) as f64 / 1000.0),
                            if flood { "flood began" } else { "kill" }
                        ));
                        Outcome::Ok { seconds: s }
                    }
                    None => Outcome::Failed {
                        error: format!(
                            "no new connection through another proxy than {node} succeeded \
                             within {} of the {what} proxy's reset; coordinator: {}",
                            fmt_seconds(limit.as_secs_f64()),
                            target_status(roles)
                        ),
                    },
                }
            }
            Err(e) => Outcome::Failed {
                error: format!("the coordinator's reset of {node}: {e}"),
            },
        };
        progress.step(&format!("failover: {node} {what} #{rep}"), &show(&outcome));
        if let Some(Some(Ok(r))) = sent.as_ref().map(|v| v.first()) {
            results.notes.push(format!(
                "failover #{rep}: flood {:?} to {node} ({}): {} packets in {:.1} s",
                r.kind, r.target, r.sent, r.seconds
            ));
        }
        results.push(Metric::Failover, rep, outcome);
        proxy_back(roles, cfg, &node, flood, rep)?;
        roles.check()?;
    }
    if let (Some(med), Some(worst)) = (
        measure::median(&figures),
        figures.iter().copied().reduce(f64::max),
    ) {
        results.notes.push(format!(
            "failover (4.4, scheme 4.3): from the coordinator's reset (A records republished \
             without the {what} proxy, ClientDNS told by signed NOTIFY) until a new \
             connection through another proxy succeeded: {} median, {} worst over {} \
             repetitions ({} median from the {}). Connections that were open through the \
             {what} proxy are lost in this scheme: the client holds no tunnel that could \
             move, only new connections find the other proxy",
            fmt_seconds(med),
            fmt_seconds(worst),
            figures.len(),
            fmt_seconds(measure::median(&from_event).unwrap_or(0.0)),
            if flood { "flood's start" } else { "kill" }
        ));
    }
    Ok(())
}

/// After failover repetition `rep`: a flooded `node` is waited for until the
/// coordinator takes it back (its attacked mark expired); a killed one is started
/// again, once the coordinator has reset it out (with the data path linked).
fn proxy_back(
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    node: &str,
    flood: bool,
    rep: u32,
) -> Result<(), LabError> {
    if flood {
        if rep < cfg.failover_reps && !wait_proxy(roles, node, true, Duration::from_secs(15)) {
            return Err(LabError::Timeout {
                what: format!(
                    "the coordinator to take {node} back after its attack (attacked mark \
                     of {} ms) and the target back to phase \"diverted\"; coordinator: {}",
                    roles::ATTACKED_HOLD_MS,
                    target_status(roles)
                ),
                secs: 15.0,
            });
        }
    } else {
        // A proxy started again from its file has none of the divert's orders, and
        // the coordinator gives them to a proxy it chooses, not to one that merely
        // registers again: it must first see this one silent and reset it out.
        if cfg.control_mode() && !wait_proxy(roles, node, false, Duration::from_secs(15)) {
            return Err(LabError::Timeout {
                what: format!(
                    "the coordinator to mark the killed {node} down and reset it out; \
                     coordinator: {}",
                    target_status(roles)
                ),
                secs: 15.0,
            });
        }
        roles.restart_proxy(node)?;
        if cfg.control_mode()
            && rep < cfg.failover_reps
            && !wait_proxy(roles, node, true, Duration::from_secs(15))
        {
            return Err(LabError::Timeout {
                what: format!(
                    "the restarted {node} to register with the coordinator again; \
                     coordinator: {}",
                    target_status(roles)
                ),
                secs: 15.0,
            });
        }
    }
    Ok(())
}

/// Tunnel packets to a proxy that show the client's tunnel goes there: the echo loop
/// sends 50 a second, a stray keepalive or handshake one or two.
const TUNNEL_PACKETS_SHOWN: u64 = 3;

/// The proxy, other than `not`, that `counts` shows the most tunnel packets to since
/// `before` (both from [`Roles::tunnel_packets`]), if at least
/// [`TUNNEL_PACKETS_SHOWN`].
pub(crate) fn busiest_since(
    before: &[(String, u64)],
    counts: &[(String, u64)],
    not: Option<&str>,
) -> Option<String> {
    counts
        .iter()
        .filter(|(p, _)| Some(p.as_str()) != not)
        .map(|(p, n)| {
            let was = before.iter().find(|(q, _)| q == p).map_or(0, |(_, m)| *m);
            (p, n.saturating_sub(was))
        })
        .filter(|(_, d)| *d >= TUNNEL_PACKETS_SHOWN)
        .max_by_key(|(_, d)| *d)
        .map(|(p, _)| p.clone())
}

/// Waits (at most 10 s) until the coordinator's audit log shows the lab target's proxy
/// reset after `since`: phase "resetting", then "diverted" again. Returns the seconds
/// from `since` to each.
fn wait_reset(roles: &Roles, since: SystemTime) -> Result<(f64, f64), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = audit::unix_ms(since);
    loop {
        let events = roles
            .events()
            .map_err(|e| format!("the coordinator's audit log could not be read: {e}"));
        let found = events.as_ref().ok().and_then(|ev| {
            let out = audit::entered(ev, "resetting", s)?;
            let done = audit::entered(ev, "diverted", out)?;
            Some((audit::seconds(s, out), audit::seconds(s, done)))
        });
        match (found, events) {
            (Some(t), _) => return Ok(t),
            (None, Err(e)) if Instant::now() > deadline => return Err(e),
            (None, _) if Instant::now() > deadline => {
                return Err("no reset (phase \"resetting\", then \"diverted\") in the \
                            coordinator's audit log within 10 s"
                    .into())
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Starts one bounded flood from an attacker at `proxy`'s address.
fn start_proxy_flood(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    proxy: &str,
    rep: u32,
) -> Result<LabProcess, LabError> {
    let attackers = lab.attackers();
    let Some(a) = attackers.get(rep as usize % attackers.len().max(1)) else {
        return Err(LabError::BadSpec(
            "the proxy failover by flood needs an attacker (--attackers 1 or more)".into(),
        ));
    };
    let addr = fig8::address_of(proxy).expect("proxy of the plan");
    let mut cmd = lab.command(a, &cfg.scold_bin)?;
    cmd.args(["lab", "flood", "--kind", "udp"])
        .args(["--target", &addr.to_string()])
        .args(["--rate", &roles::PROXY_FLOOD_PPS.to_string()])
        .args(["--payload", "64"])
        .args(["--duration", "15"]);
    for p in lab.prefixes() {
        cmd.args(["--allow", &p.to_string()]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    lab.spawn(&format!("{a}: scold lab flood at {proxy}"), &mut cmd)
}

/// The coordinator's view of the target: phase, pending steps, last error.
pub(crate) fn target_status(roles: &Roles) -> String {
    match roles.ctl(&["status"]) {
        Ok(v) => {
            let t = v
                .get("targets")
                .and_then(|t| t.as_array())
                .and_then(|a| {
                    a.iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(roles::TARGET_ID))
                })
                .cloned()
                .unwrap_or_default();
            let s = |k: &str| t.get(k).map(|x| x.to_string()).unwrap_or("?".into());
            format!(
                "phase {}, pending steps {}, last error {}",
                s("phase"),
                s("pending"),
                s("last_error")
            )
        }
        Err(e) => format!("`scold ctl status` failed: {e}"),
    }
}

/// By the coordinator's audit log: seconds until the lab target entered phase `to`,
/// counted from its entering phase `from` at or after `since` (the coordinator taking
/// an alarm or an all-clear), or with no `from`, from `since` itself (a moment the lab
/// took, such as the attack's start). Err says what the log lacks.
fn audit_time(
    roles: &Roles,
    since: SystemTime,
    from: Option<&str>,
    to: &str,
) -> Result<f64, String> {
    let events = roles
        .events()
        .map_err(|e| format!("the coordinator's audit log could not be read: {e}"))?;
    let since_ms = audit::unix_ms(since);
    let start = match from {
        Some(p) => audit::entered(&events, p, since_ms).ok_or_else(|| {
            format!("the coordinator's audit log shows no phase \"{p}\" after the lab's start")
        })?,
        None => since_ms,
    };
    audit::entered(&events, to, start)
        .map(|t| audit::seconds(start, t))
        .ok_or_else(|| format!("the coordinator's audit log shows no phase \"{to}\""))
}

/// A time from [`audit_time`] for a note: the figure, or what was missing.
fn fmt_audit(t: &Result<f64, String>) -> String {
    match t {
        Ok(s) => fmt_seconds(*s),
        Err(e) => format!("? ({e})"),
    }
}

/// A Table 4 probe running: what it probes, and its thread (seconds to its first answer).
type SetupProbe = (Probe, std::thread::JoinHandle<Option<f64>>);

/// Table 4 for the schemes in which nothing on the client waits for a lookup (4.2,
/// 4.3): probes from client 1, started just before the operator's alarm at `t0`, each
/// timing the first answer over the indirect route: in 4.2 through the tunnel the
/// proxy pushed (sockets bound to the agent's TUN device), in 4.3 through the address
/// ClientDNS gives for the target's name once it is a proxy's (a fresh lookup per
/// attempt, as an unmodified client makes one per connection).
fn divert_setup_probes(
    lab: &Fig8,
    scheme: Scheme,
    t0: Instant,
    deadline: Instant,
) -> Result<Vec<SetupProbe>, LabError> {
    let client = fig8::client(1);
    let nat = scheme == Scheme::Nat;
    let dev = (!nat).then_some(roles::CLIENT_TUN);
    let cdns: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("in the plan"), 53).into();
    // In 4.3: the address the name leads to once it no longer is the target's own.
    let dest = move || -> Option<Ipv4Addr> {
        if !nat {
            return Some(fig8::TARGET_ADDR);
        }
        let a = dnsq::query(
            cdns,
            &format!("{}.", roles::TARGET_FQDN),
            1,
            Duration::from_millis(300),
        )
        .ok()?;
        a.a.first().copied().filter(|&x| x != fig8::TARGET_ADDR)
    };
    let mut out = Vec::new();
    if !nat {
        let h = lab.thread_in(&client, move || {
            first_success(t0, deadline, || {
                measure::ping_samples_via(
                    fig8::TARGET_ADDR,
                    1,
                    Duration::ZERO,
                    Duration::from_millis(100),
                    dev,
                )
                .is_ok_and(|e| e[0].is_some())
            })
        })?;
        out.push((Probe::Ping, h));
    }
    for proto in [Proto::Bulk, Proto::Http] {
        let h = lab.thread_in(&client, move || {
            first_success(t0, deadline, || {
                let Some(to) = dest() else {
                    return false;
                };
                match proto {
                    Proto::Bulk => measure::fetch_bulk_via(
                        (to, DEFAULT_BULK_PORT).into(),
                        100_000,
                        SETUP_ATTEMPT,
                        dev,
                    )
                    .is_ok(),
                    Proto::Http => measure::fetch_http_via(
                        (to, DEFAULT_HTTP_PORT).into(),
                        "target",
                        &serve::http_path(100_000),
                        SETUP_ATTEMPT,
                        dev,
                    )
                    .is_ok(),
                }
            })
        })?;
        out.push((
            Probe::Download {
                proto,
                size: 100_000,
            },
            h,
        ));
    }
    Ok(out)
}

/// Before the attack: `scold ctl divert` and the wait until the coordinator reports
/// phase "diverted" and ClientDNS shows what it published. In 4.2 and 4.3 this is
/// also Table 4 ([`divert_setup_probes`]).
fn operator_divert(
    lab: &Fig8,
    roles: &Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    progress.phase(
        "the operator's alarm (scold ctl divert): the coordinator sets the indirect route up",
    );
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_phases(
        roles.ctl_argv(&["status"])?,
        t0,
        t0 + cfg.divert_wait,
        &["diverted"],
        stop.clone(),
    );
    let probes = if roles.resolver_agent() {
        Vec::new()
    } else {
        divert_setup_probes(lab, cfg.scheme, t0, t0 + cfg.divert_wait)?
    };
    let sent = roles.ctl(&["divert", roles::TARGET_ID]);
    if sent.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let diverted = watcher
        .join()
        .ok()
        .and_then(|v| v.first().copied().flatten());
    // The probes end at their first answer, or at the same deadline as the watcher.
    let firsts: Vec<(Probe, Option<f64>)> = probes
        .into_iter()
        .map(|(p, h)| (p, h.join().ok().flatten()))
        .collect();
    sent?;
    if diverted.is_none() {
        return Err(LabError::Timeout {
            what: format!(
                "the coordinator's divert on the operator's alarm (phase \"diverted\"); \
                 coordinator: {}",
                target_status(roles)
            ),
            secs: cfg.divert_wait.as_secs_f64(),
        });
    }
    // The divert's own time, from the coordinator taking the alarm.
    let diverted = audit_time(roles, t0_wall, Some("diverting"), "diverted");
    let seen = wait_alt_diverted(lab, cfg.scheme, t0)?;
    let Some((visible, alt)) = seen else {
        return Err(LabError::Timeout {
            what: format!(
                "the {} of {} at ClientDNS after the coordinator's divert; \
                 coordinator: {}",
                published(cfg.scheme),
                roles::TARGET_FQDN,
                target_status(roles)
            ),
            secs: roles::DNS_TTL as f64 * 2.0,
        });
    };
    progress.step(
        "divert before the attack (operator's alarm)",
        &format!(
            "phase \"diverted\" {} after the coordinator took the alarm, {} {alt:?} \
             visible at ClientDNS {} after `scold ctl divert` started",
            fmt_audit(&diverted),
            published(cfg.scheme),
            fmt_seconds(visible)
        ),
    );
    results.notes.push(format!(
        "indirect route before the attack: the operator's alarm (`scold ctl divert`) made \
         the coordinator set the gateway, both proxies{} and the target's return path up \
         (phase \"diverted\" {} after it took the alarm, by its audit log) and publish {} \
         {alt:?}; the proxies' signed NOTIFY made ClientDNS drop its cached answer, so the \
         records were visible there {} after `scold ctl divert` started",
        if cfg.scheme == Scheme::Nat {
            " (each opening the target's service ports as a NAT relay)"
        } else {
            ""
        },
        fmt_audit(&diverted),
        published(cfg.scheme),
        fmt_seconds(visible)
    ));
    for (probe, first) in firsts {
        let outcome = match first {
            Some(s) => Outcome::Ok { seconds: s },
            None => Outcome::Timeout {
                limit_seconds: cfg.divert_wait.as_secs_f64(),
            },
        };
        progress.step(
            &format!(
                "Table 4: operator's alarm until the first {}",
                match probe {
                    Probe::Ping => "ping reply".to_string(),
                    Probe::Download { proto, size } =>
                        format!("{} {} download", proto.label(), fmt_size(size)),
                }
            ),
            &show(&outcome),
        );
        results.push(Metric::Setup { probe }, 1, outcome);
    }
    Ok(())
}

/// After the indirect measurements without attack: `scold ctl restore` and the wait
/// until phase "normal", so the attack meets a site on its direct route.
fn operator_restore(
    roles: &Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    progress.phase("the operator's all-clear (scold ctl restore) before the attack");
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let wait = cfg.divert_wait + Duration::from_secs(roles::DNS_TTL as u64 * 2);
    let watcher = watch_phases(
        roles.ctl_argv(&["status"])?,
        t0,
        t0 + wait,
        &["normal"],
        Arc::new(AtomicBool::new(false)),
    );
    roles.ctl(&["restore", roles::TARGET_ID])?;
    let seen = watcher
        .join()
        .ok()
        .and_then(|v| v.first().copied().flatten());
    if seen.is_none() {
        return Err(LabError::Timeout {
            what: format!(
                "the coordinator's restore before the attack (phase \"normal\"); \
                 coordinator: {}",
                target_status(roles)
            ),
            secs: wait.as_secs_f64(),
        });
    }
    let normal = audit_time(roles, t0_wall, Some("restoring"), "normal");
    progress.step(
        "restore before the attack (operator's all-clear)",
        &format!(
            "phase \"normal\" {} after the coordinator took the all-clear",
            fmt_audit(&normal)
        ),
    );
    results.notes.push(format!(
        "before the attack the operator's all-clear restored the direct route: phase \
         \"normal\" {} after the coordinator took it, by its audit log ({}, one TTL \
         drained, routes torn down)",
        fmt_audit(&normal),
        match cfg.scheme {
            Scheme::Nat => "the target's own A records put back",
            Scheme::Push => "ALT withdrawn, pushed routes withdrawn",
            Scheme::Resolver => "ALT withdrawn",
        }
    ));
    Ok(())
}

/// How the report's figures were obtained, for the run's scheme and mode: the indirect
/// route and who laid it out, Tables 3 and 4, the failover, the divert and restore,
/// and what the scheme can and cannot measure.
fn provenance(cfg: &ScenarioConfig, client: &str, encap: &str) -> Vec<String> {
    let gw = fig8::ALT_GW;
    let mut v = Vec::new();
    let linked = "Nothing else of it is static: the gateway, both proxies and a second \
                  `scold target` are linked to the coordinator ([control] tables) and got \
                  their peers, routes and return path from its divert orders (before the \
                  attack on the operator's alarm, under attack on the target's detector's)";
    match (cfg.scheme, cfg.static_route, cfg.no_control) {
        (_, true, _) => v.push(format!(
            "indirect route: {client} -> its proxy -> {gw} (hidden gateway) -> target over \
             {encap}, set up by STATIC configs ({} config files, --static-route): the \
             coordinator is left out of this run, so no divert, reset or restore of it is \
             measured",
            if cfg.scheme == Scheme::Nat {
                "scold proxy with NAT services, gateway and target"
            } else {
                "scold client, proxy, gateway and target"
            }
        )),
        (Scheme::Resolver, false, no_control) => {
            v.push(format!(
                "indirect route: {client} -> the proxy its client agent chose -> {gw} (hidden \
                 gateway) -> target over {encap}, set up by the scheme 4.1 client agent \
                 (`scold client` with [agent]; {client}'s resolv.conf names it): on the \
                 target's ALT records it measured the proxies, was admitted by one through \
                 its TLS admission service and brought the tunnel and host route up. {}",
                if no_control {
                    "The proxies' route to the gateway, the gateway's peers and the target's \
                     return routes are STATIC configs; the data-path daemons had no [control] \
                     tables (--no-control), so the coordinator is left out of this run and \
                     the lab published the ALT records itself with a TSIG-signed update"
                } else {
                    linked
                }
            ));
            v.push(
                "Table 3: real lookups from a process in the client whose resolv.conf names \
                 the client agent, which forwards to ClientDNS (`scold resolver`) and \
                 TargetDNS (`scold dns`); measured before the ALT records exist, so the agent \
                 only passes the lookup through"
                    .into(),
            );
            v.push(
                "Table 4: from the application's lookup of the name through the client agent \
                 (which answers only once the route is up) to the first ping reply / complete \
                 100k download through the client's TUN device; the agent is restarted with \
                 no route before each repetition, the target's return path is in place \
                 before it"
                    .into(),
            );
            v.push(
                "scheme 4.1 measures every probe through the tunnel (ICMP included) and the \
                 failover as the gap in an echo loop; it cannot protect an application that \
                 connects by address without a lookup (the agent acts on lookups)"
                    .into(),
            );
        }
        (Scheme::Push, false, _) => {
            v.push(format!(
                "indirect route: {client} -> the proxy the coordinator assigned it -> {gw} \
                 (hidden gateway) -> target over {encap}, PUSHED: {client} runs the scheme 4.2 \
                 client agent (`scold client` with [agent.push] and [control], a client \
                 certificate), registered with the coordinator; on the divert the proxy \
                 pushed the route over TLS, and the agent took it only because the proxy's \
                 certificate chains to the consortium CA and its address is in the target's \
                 ALT set. No application lookup is involved. {linked}"
            ));
            v.push(
                "Table 3: real lookups from a process whose resolv.conf names ClientDNS \
                 (`scold resolver`), which forwards to TargetDNS (`scold dns`): in 4.2 \
                 applications do not ask the agent"
                    .into(),
            );
            v.push(
                "Table 4: from the operator's alarm (`scold ctl divert`) to the first ping \
                 reply / complete 100k download through the client's TUN device, probes \
                 started with the alarm: the coordinator's set-up, DNS update and the \
                 proxy's push together; one repetition (each divert needs a restore, which \
                 waits out one ALT TTL)"
                    .into(),
            );
            v.push(
                "scheme 4.2 measures every probe through the tunnel (ICMP included), also for \
                 applications that use the target's address; the failover is the gap in an \
                 echo loop until the other proxy's push is in place: the client moves only \
                 when the coordinator's reset has it pushed, not on its own"
                    .into(),
            );
        }
        (Scheme::Nat, false, _) => {
            v.push(format!(
                "indirect route: {client} -> a proxy's address -> {gw} (hidden gateway) -> \
                 target over {encap} between proxy and gateway; {client} runs NO SCOLD \
                 software: its resolv.conf names ClientDNS, the coordinator's divert \
                 replaced the target's A records with the chosen proxies' addresses and \
                 ordered the proxies to open the target's HTTP and bulk ports as a NAT relay; \
                 the lab's own HTTP and bulk fetchers look the name up at ClientDNS and \
                 connect to the first address. {linked}"
            ));
            v.push(
                "Table 3: real lookups from a process whose resolv.conf names ClientDNS \
                 (`scold resolver`), which forwards to TargetDNS (`scold dns`)"
                    .into(),
            );
            v.push(
                "Table 4: from the operator's alarm (`scold ctl divert`) to the first \
                 complete 100k download from the address ClientDNS then gives for the name \
                 (a new lookup per attempt); one repetition"
                    .into(),
            );
            v.push(
                "scheme 4.3 CANNOT measure ICMP (a NAT relay of service ports does not carry \
                 echo requests): the indirect ping cells and the ping set-up are not \
                 measured. Its failover is the time from the coordinator's reset until a new \
                 connection through another proxy succeeds; connections open on the dead \
                 proxy are LOST in this scheme (the client holds no tunnel to move)"
                    .into(),
            );
        }
    }
    if cfg.control_mode() {
        v.push(if cfg.failover_attack == FailoverAttack::Flood {
            format!(
                "failover (4.4): the proxy the client uses is flooded (bounded, {} \
                 packets/s) under the main-link attack; its self-defence ([selfdefence] \
                 rx_pps_max {} for {} ms, set for the lab's traffic) reports ProxyAttacked \
                 and the coordinator resets it out",
                roles::PROXY_FLOOD_PPS,
                roles::PROXY_RX_PPS_MAX,
                roles::PROXY_SUSTAIN_MS
            )
        } else {
            "failover (4.4): the client's proxy's process is killed (SIGKILL) under attack; \
             the coordinator marks it down and resets it out"
                .into()
        });
        v.push(format!(
            "divert: {}; restore: {}; both timed as the target's phase changes in the \
             coordinator's audit log (`scold ctl --json events`), scheme {}",
            if cfg.detect_mode() {
                format!(
                    "no operator alarm: the target's detector ([detect] on its main link, \
                     sampled every 100 ms, warm-up {} s, UDP ceiling {} packets/s, alarm after \
                     {} ms of anomaly) raised it; timed from the flood's start. The target's \
                     control channel to the coordinator leaves the site by its alternate \
                     uplink (a host route via the hidden gateway, which masquerades that one \
                     connection), so the alarm does not have to cross the flooded main link",
                    roles::DETECT_WARMUP_MS / 1000,
                    roles::DETECT_UDP_CEILING,
                    roles::DETECT_ALARM_AFTER_MS
                )
            } else {
                "the operator's alarm (`scold ctl divert`), timed from the coordinator \
                 taking it"
                    .to_string()
            },
            if cfg.detect_mode() {
                format!(
                    "automatic: the detector's all-clear after {} s of calm on the main link \
                     (the lab's short hold-down), then the coordinator's restore; timed from \
                     the flood's end, and checked on the client ({})",
                    roles::DETECT_HOLD_DOWN_MS as f64 / 1000.0,
                    restore_check(cfg.scheme)
                )
            } else {
                format!(
                    "the operator's all-clear (`scold ctl restore`), timed from the \
                     coordinator taking it, and checked on the client ({})",
                    restore_check(cfg.scheme)
                )
            },
            cfg.scheme.as_str()
        ));
    } else if !cfg.static_route {
        v.push(
            "failover (4.4): a proxy's process is killed while the client uses it, under \
             attack; the gap is measured by a 20 ms echo loop through the tunnel"
                .into(),
        );
    }
    v
}

/// What the lab checks on the client after the coordinator's restore.
fn restore_check(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Resolver => "no ALT records at ClientDNS",
        Scheme::Push => "the pushed route withdrawn from the client agent",
        Scheme::Nat => "the target's own A record back at ClientDNS",
    }
}

fn phases(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    logs: &Path,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    // What the clients receive, over the whole scenario (the HTML report's chart).
    let mut timeline = crate::timeline::Sampler::start();
    if cfg.testbed.replicated() {
        progress.phase(&format!(
            "starting the roles: CA and certificates, etcd ({} members), scold dns (hidden \
             primary) and knotd (its secondary), scold resolver, {} scold coordinator \
             replicas, scold gateway, scold proxy, the target's services",
            fig8::ETCD_MEMBERS,
            cfg.testbed.coordinators
        ));
    } else {
        progress.phase(
            "starting the roles: CA and certificates, scold dns, scold resolver, scold \
             coordinator, scold gateway, scold proxy, the target's services",
        );
    }
    let mut roles = Roles::start(
        lab,
        RoleOptions {
            scold_bin: cfg.scold_bin.clone(),
            log_dir: logs.to_path_buf(),
            encap: cfg.encap,
            scheme: cfg.scheme,
            agent: cfg.agent_mode(),
            control: cfg.control_mode(),
            detect: cfg.detect_mode(),
            coordinators: cfg.testbed.coordinators,
        },
    )?;
    progress.step(
        "roles",
        &format!(
            "coordinator, TargetDNS, ClientDNS, gateway, {} proxies, target services up",
            lab.proxies().len()
        ),
    );
    let client = fig8::client(1);
    let proxy = if cfg.control_mode() {
        "its proxy".to_string()
    } else {
        roles.proxy_of(&client).unwrap_or("?").to_string()
    };
    let encap = cfg.encap.as_str();
    results.provenance = vec![
        "every role ran as its own `scold` process in its network namespace (logs in the \
         output's logs/ folder); certificates from a CA made for the run"
            .into(),
        format!("direct route: {client} -> internet router -> main link (bottleneck) -> target"),
    ];
    results.provenance.extend(provenance(cfg, &client, encap));
    if cfg.testbed.replicated() {
        results.provenance.push(format!(
            "replicated control plane: {} `scold coordinator` replicas ({}) sharing their \
             state and lead in an etcd cluster of {} members ({}), each in a namespace \
             of its own off the bottleneck; every node and `scold ctl` lists every replica. \
             TargetDNS: `scold dns` in {} is a hidden primary that only the coordinator \
             updates; ClientDNS asks its secondary, Knot in {}, which follows it by NOTIFY \
             and IXFR",
            cfg.testbed.coordinators,
            lab.coordinators().join(", "),
            fig8::ETCD_MEMBERS,
            lab.etcd_members().join(", "),
            fig8::TARGET_DNS,
            fig8::DNS_SECONDARY
        ));
    }
    let direct = Condition {
        route: Route::Direct,
        attack: false,
    };
    progress.phase("baseline: direct route, no attack");
    measure_condition(
        lab,
        cfg,
        &Plan {
            condition: direct,
            dest: fig8::TARGET_ADDR,
            ping: true,
            reps: cfg.reps,
            limit: cfg.timeout,
            concurrent: false,
            device: direct_device(cfg),
        },
        results,
        progress,
    )?;
    roles.check()?;

    progress.phase(&format!(
        "Table 3: probes by address and by the name {} (ClientDNS -> TargetDNS)",
        roles::TARGET_FQDN
    ));
    measure_resolver(lab, cfg, results, progress)?;
    roles.check()?;

    if cfg.control_mode() {
        // The indirect route before the attack comes from the coordinator's divert on
        // the operator's alarm: gateway, proxies and the target's return path set up,
        // then the ALT records published and ClientDNS notified.
        // In 4.2 and 4.3 Table 4 is timed from the operator's alarm, in this divert.
        operator_divert(lab, &roles, cfg, results, progress)?;
        if roles.resolver_agent() {
            progress.phase(
                "Table 4: the application's lookup through the client agent until the first \
                 answer through the tunnel, repeatedly",
            );
        }
    } else if roles.resolver_agent() {
        // The divert's DNS step, done by the lab: the coordinator publishes ALT records
        // only once every data-path daemon has taken its orders.
        let proxies: Vec<Ipv4Addr> = lab
            .proxies()
            .iter()
            .filter_map(|p| fig8::address_of(p))
            .collect();
        let t_pub = Instant::now();
        roles.set_alt(&proxies)?;
        // ClientDNS may still hold the agent's earlier "no ALT" answer for the zone's
        // negative TTL; Table 4 starts once clients can see the records.
        let seen = wait_alt_diverted(lab, cfg.scheme, t_pub)?;
        let Some((visible, _)) = seen else {
            return Err(LabError::Timeout {
                what: format!(
                    "the lab's ALT records for {} to be visible at ClientDNS",
                    roles::TARGET_FQDN
                ),
                secs: roles::DNS_TTL as f64 * 2.0,
            });
        };
        results.notes.push(format!(
            "ALT records {proxies:?} published by the lab with a signed update; visible at \
             ClientDNS {} later (ClientDNS held the earlier negative answer up to the zone's \
             negative TTL of {} s)",
            fmt_seconds(visible),
            roles::DNS_TTL
        ));
        progress.step(
            "ALT records published",
            &format!(
                "{} ALT {proxies:?} at TargetDNS by the lab (TSIG-signed with the \
                 coordinator's key), visible at ClientDNS after {}",
                roles::TARGET_FQDN,
                fmt_seconds(visible)
            ),
        );
        progress.phase(
            "Table 4: the application's lookup through the client agent until the first \
             answer through the tunnel, repeatedly",
        );
    } else {
        progress.phase("Table 4: setting the indirect route up (static configs), repeatedly");
    }
    if !cfg.control_mode() || roles.resolver_agent() {
        measure_setup(lab, &mut roles, cfg, results, progress)?;
    }

    progress.phase(&format!(
        "indirect route, no attack: {client} -> {proxy} -> {} -> target ({encap})",
        fig8::ALT_GW
    ));
    measure_indirect(lab, &mut roles, cfg, false, results, progress)?;
    if cfg.control_mode() {
        operator_restore(&roles, cfg, results, progress)?;
    }

    // The attack. The flood's own time limit (the generator's longest) is a backstop;
    // it is stopped as soon as measuring ends, and one that ended first fails the run.
    let budget = crate::flood::HARD_MAX_DURATION;
    progress.phase(&format!(
        "attack: {} flood at {} packets/s of {} bytes from {} attackers on the target's main link",
        match cfg.flood_kind {
            FloodKind::Udp => "UDP",
            FloodKind::Icmp => "ICMP",
            FloodKind::Syn => "TCP SYN",
        },
        cfg.flood_rate_pps,
        cfg.flood_payload,
        lab.attackers().len()
    ));
    let mut floods = start_floods(lab, cfg, budget)?;
    timeline.mark(
        crate::timeline::MarkKind::Attack,
        format!("{} attackers flood the main link", lab.attackers().len()),
    );
    let attacked = attack_phase(lab, &mut roles, cfg, &mut floods, results, progress);
    let early = floods_ended(&mut floods);
    let t_end = (Instant::now(), SystemTime::now());
    timeline.mark_at(
        t_end.1,
        crate::timeline::MarkKind::AttackEnd,
        "the floods stop",
    );
    let reports = stop_floods(floods);
    let mut sent = 0;
    for r in &reports {
        match r {
            Ok(r) => {
                sent += r.sent;
                results.notes.push(format!(
                    "flood: {:?} to {}: {} packets in {:.1} s ({} send errors)",
                    r.kind, r.target, r.sent, r.seconds, r.send_errors
                ));
            }
            Err(e) => results.notes.push(format!("flood: {e}")),
        }
    }
    progress.step("attack ended", &format!("{sent} packets sent"));
    let diverted = attacked?;
    if let Some(e) = early {
        return Err(e);
    }

    restore_phase(lab, &roles, cfg, diverted, t_end, results, progress)?;
    crate::takeover::finish(
        results,
        if cfg.failover_mode() {
            cfg.failover_reps
        } else {
            0
        },
    );
    if !cfg.failover_mode() {
        results.notes.push(
            "proxy failover (4.4): not measured: it needs a route that is not static \
             (drop --static-route) and --failover-reps above 0"
                .into(),
        );
    }
    roles.check()?;
    // The coordinator's audit log gives the timeline's divert, failover and restore; a
    // run without the coordinator has none to give.
    let events = if cfg.control_mode() {
        roles.events().unwrap_or_default()
    } else {
        Vec::new()
    };
    results.timeline = Some(timeline.finish(&events));
    roles.stop_all()?;
    progress.step("roles stopped", "every scold process exited");
    Ok(())
}

/// Under attack: the operator alarm, the direct route, the indirect route, and what
/// the coordinator's divert reached. Returns whether the ALT records appeared.
fn attack_phase(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    floods: &mut [LabProcess],
    results: &mut Results,
    progress: &mut Progress,
) -> Result<bool, LabError> {
    // The floods started just before this call.
    let t_attack = Instant::now();
    let t_attack_wall = SystemTime::now();
    std::thread::sleep(cfg.attack_warmup);
    if let Some(e) = floods_ended(floods) {
        return Err(e);
    }
    // With the target's detector the clock runs from the attack's start; otherwise
    // from the operator's alarm (the coordinator taking it, by its audit log, where
    // the coordinator's phase is the figure).
    let (t_alarm, t_alarm_wall) = if cfg.detect_mode() {
        (t_attack, t_attack_wall)
    } else {
        (Instant::now(), SystemTime::now())
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Without the coordinator (static routes, --no-control) nothing is asked of it.
    let coordinator = cfg.control_mode();
    // The poll only shows that the divert happened; its time is the coordinator's.
    let watcher = coordinator.then(|| {
        roles.ctl_argv(&["status"]).map(|argv| {
            watch_phase(
                argv,
                t_alarm,
                t_alarm + cfg.divert_wait,
                &["diverted"],
                stop.clone(),
            )
        })
    });
    let watcher = watcher.transpose()?;
    let divert = if cfg.detect_mode() || !coordinator {
        Ok(serde_json::Value::Null)
    } else {
        roles.ctl(&["divert", roles::TARGET_ID])
    };
    progress.step(
        if !coordinator {
            "alarm: none (the coordinator is left out of this run)"
        } else if cfg.detect_mode() {
            "alarm: none sent (the target's [detect] watches its main link)"
        } else {
            "alarm: scold ctl divert"
        },
        &match &divert {
            Ok(serde_json::Value::Null) if !coordinator => {
                "the indirect route is the lab's own".into()
            }
            Ok(serde_json::Value::Null) => "the coordinator is watched for the divert".into(),
            Ok(v) => format!(
                "coordinator answered, target phase {}",
                v.get("phase").map(|p| p.to_string()).unwrap_or("?".into())
            ),
            Err(e) => format!("failed: {e}"),
        },
    );

    let attacked = Condition {
        route: Route::Direct,
        attack: true,
    };
    progress.phase(&format!(
        "direct route under attack ({} each, {})",
        fmt_seconds(cfg.attack_timeout.as_secs_f64()),
        if cfg.attack_sequential {
            "downloads one after another"
        } else {
            "downloads all at once"
        }
    ));
    measure_condition(
        lab,
        cfg,
        &Plan {
            condition: attacked,
            dest: fig8::TARGET_ADDR,
            ping: true,
            reps: cfg.attack_reps,
            limit: cfg.attack_timeout,
            concurrent: !cfg.attack_sequential,
            device: direct_device(cfg),
        },
        results,
        progress,
    )?;
    if !cfg.attack_sequential {
        results.notes.push(format!(
            "direct route under attack: the {} downloads ran at the same time, each cut at {} \
             (shown as \"> {}\"); `--attack-sequential` runs them one after another",
            cfg.sizes.len() * 2 * cfg.attack_reps as usize,
            fmt_seconds(cfg.attack_timeout.as_secs_f64()),
            fmt_seconds(cfg.attack_timeout.as_secs_f64()),
        ));
    }

    let seen = watcher.map(|w| w.join().ok().flatten());
    stop.store(true, Ordering::Relaxed);
    let diverted = match seen {
        None => {
            results.notes.push(
                "divert, failover by reset and restore: not asked of the coordinator \
                 (--static-route or --no-control leave it out of the run)"
                    .into(),
            );
            true
        }
        Some(seen) => {
            let status = target_status(roles);
            let outcome = match (&divert, &seen) {
                (Err(e), _) => Outcome::Failed {
                    error: format!("`scold ctl divert` failed: {e}"),
                },
                (Ok(_), Some(_)) => {
                    let from = (!cfg.detect_mode()).then_some("diverting");
                    match audit_time(roles, t_alarm_wall, from, "diverted") {
                        Ok(s) => {
                            results.notes.push(format!(
                                "divert: by its audit log, the coordinator reached phase \
                                 \"diverted\" {} after {}; coordinator: {status}",
                                fmt_seconds(s),
                                if cfg.detect_mode() {
                                    format!(
                                        "the flood started (the target's detector raised the \
                                         alarm; the coordinator took it {} after the flood \
                                         started)",
                                        fmt_audit(&audit_time(
                                            roles,
                                            t_attack_wall,
                                            None,
                                            "diverting"
                                        ))
                                    )
                                } else {
                                    "it took the operator's alarm".into()
                                }
                            ));
                            Outcome::Ok { seconds: s }
                        }
                        Err(error) => Outcome::Failed { error },
                    }
                }
                (Ok(_), None) => Outcome::Failed {
                    error: format!(
                        "no phase \"diverted\" within {} of the alarm; coordinator: {status}",
                        fmt_seconds(cfg.divert_wait.as_secs_f64())
                    ),
                },
            };
            progress.step("divert (coordinator)", &show(&outcome));
            let diverted = matches!(outcome, Outcome::Ok { .. });
            results.push(Metric::Divert, 1, outcome);
            if !diverted {
                // Nothing but the coordinator's divert lays the indirect route out here.
                return Err(LabError::Timeout {
                    what: format!(
                        "the coordinator's divert under attack (the indirect route is its \
                         own); coordinator: {}",
                        target_status(roles)
                    ),
                    secs: cfg.divert_wait.as_secs_f64(),
                });
            }
            diverted
        }
    };

    progress.phase("indirect route under attack");
    measure_indirect(lab, roles, cfg, true, results, progress)?;
    if cfg.testbed.replicated() && coordinator {
        progress.phase(
            "coordinator takeover under attack: kill -9 of the leading replica (by its etcd \
             leader key), a standby takes the lead",
        );
        crate::takeover::run(lab, roles, results, progress)?;
    }
    if cfg.failover_mode() {
        progress.phase(&format!(
            "proxy failover under attack (4.4): {} the client's proxy, {} times",
            if cfg.failover_attack == FailoverAttack::Flood && cfg.control_mode() {
                "flood"
            } else {
                "kill"
            },
            cfg.failover_reps
        ));
        if cfg.scheme == Scheme::Nat {
            measure_failover_nat(lab, roles, cfg, results, progress)?;
        } else {
            measure_failover(lab, roles, cfg, results, progress)?;
        }
    }
    if cfg.adversary {
        progress.phase(
            "adversary: the attackers go for SCOLD itself (gateway scan, admission flood, \
             register flood, a revoked proxy, the coordinator killed as a proxy dies) while \
             the client downloads through the indirect route",
        );
        crate::adversary::run(lab, roles, cfg, results, progress)?;
    }

    Ok(diverted)
}

/// After the attack: the all-clear (the target's detector after its hold-down, or the
/// operator's `scold ctl restore`) and the coordinator's restore. With the detector the
/// clock runs from the attack's end (`t_end`): to the all-clear (the coordinator enters
/// "restoring") and to the restore (phase "normal" again). Otherwise from the
/// coordinator taking the operator's all-clear until phase "normal" (agent mode), or
/// from the operator's all-clear until the ALT records are gone from ClientDNS. The
/// coordinator's phase changes are timed by its audit log ([`audit_time`]).
fn restore_phase(
    lab: &Fig8,
    roles: &Roles,
    cfg: &ScenarioConfig,
    diverted: bool,
    (t_end, t_end_wall): (Instant, SystemTime),
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    if !cfg.control_mode() {
        return Ok(());
    }
    // The coordinator waits out the ALT TTL before tearing down; allow for it.
    let wait = cfg.divert_wait + Duration::from_secs(roles::DNS_TTL as u64 * 2);
    if cfg.detect_mode() {
        progress.phase(&format!(
            "the attack is over: waiting for the target's all-clear (hold-down {}) and the \
             coordinator's restore",
            fmt_seconds(roles::DETECT_HOLD_DOWN_MS as f64 / 1000.0)
        ));
        // The poll waits for the restore's end; the times are the coordinator's.
        let seen = watch_phases(
            roles.ctl_argv(&["status"])?,
            t_end,
            t_end + wait + Duration::from_millis(roles::DETECT_HOLD_DOWN_MS),
            &["normal"],
            Arc::new(AtomicBool::new(false)),
        )
        .join()
        .unwrap_or_default();
        let restored = seen.first().copied().flatten().is_some();
        let (clear, normal) = if restored {
            (
                audit_time(roles, t_end_wall, None, "restoring").ok(),
                audit_time(roles, t_end_wall, None, "normal").ok(),
            )
        } else {
            (None, None)
        };
        let status = target_status(roles);
        let outcome_of = |s: Option<f64>, what: &str| match s {
            Some(s) => Outcome::Ok { seconds: s },
            None if !diverted => Outcome::Failed {
                error: format!(
                    "no divert to restore, so no {what}; coordinator after the attack: {status}"
                ),
            },
            None if restored => Outcome::Failed {
                error: format!(
                    "the coordinator's audit log shows no {what} after the attack's end, \
                     though it is restored; coordinator: {status}"
                ),
            },
            None => Outcome::Failed {
                error: format!(
                    "no {what} within {} of the attack's end; coordinator: {status}",
                    fmt_seconds(wait.as_secs_f64())
                ),
            },
        };
        let clear_o = outcome_of(clear, "all-clear");
        let normal_o = checked_restore(lab, roles, outcome_of(normal, "restore"));
        progress.step("all-clear (target's detector)", &show(&clear_o));
        progress.step("restore (coordinator)", &show(&normal_o));
        if let (Some(c), Some(n)) = (clear, normal) {
            results.notes.push(format!(
                "restore: attack end -> all-clear (the target's detector after {} of calm; \
                 the coordinator left \"diverted\") {} -> restored (phase \"normal\": {}, \
                 resolvers notified, one TTL of {} s drained, routes torn down) {}",
                fmt_seconds(roles::DETECT_HOLD_DOWN_MS as f64 / 1000.0),
                fmt_seconds(c),
                match cfg.scheme {
                    Scheme::Nat => "the target's own A records put back",
                    _ => "ALT withdrawn",
                },
                roles::DNS_TTL,
                fmt_seconds(n)
            ));
        }
        results.push(Metric::AllClear, 1, clear_o);
        results.push(Metric::Restore, 1, normal_o);
        return Ok(());
    }
    progress.phase("the attack is over: scold ctl restore");
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let watcher = diverted
        .then(|| {
            roles.ctl_argv(&["status"]).map(|argv| {
                watch_phase(
                    argv,
                    t0,
                    t0 + wait,
                    &["normal"],
                    Arc::new(AtomicBool::new(false)),
                )
            })
        })
        .transpose()?;
    let restore = roles.ctl(&["restore", roles::TARGET_ID]);
    let outcome = match (restore, watcher) {
        (Err(e), _) => Outcome::Failed {
            error: format!("`scold ctl restore` failed: {e}"),
        },
        // The figure is the coordinator's: from its taking the all-clear to phase
        // "normal", by its audit log.
        (Ok(_), Some(w)) => match w.join().ok().flatten() {
            Some(_) => match audit_time(roles, t0_wall, Some("restoring"), "normal") {
                Ok(seconds) => Outcome::Ok { seconds },
                Err(error) => Outcome::Failed { error },
            },
            None => Outcome::Failed {
                error: format!(
                    "no phase \"normal\" within {} of the all-clear; coordinator: {}",
                    fmt_seconds(wait.as_secs_f64()),
                    target_status(roles)
                ),
            },
        },
        (Ok(_), None) => Outcome::Failed {
            error: format!(
                "no divert to restore; coordinator after the all-clear: {}",
                target_status(roles)
            ),
        },
    };
    let outcome = checked_restore(lab, roles, outcome);
    progress.step("restore (coordinator)", &show(&outcome));
    results.push(Metric::Restore, 1, outcome);
    Ok(())
}

/// A restore the coordinator reports done, checked where the client sees it (see
/// [`restore_check`]): failed, with what the client still sees, if it is not.
fn checked_restore(lab: &Fig8, roles: &Roles, outcome: Outcome) -> Outcome {
    if !matches!(outcome, Outcome::Ok { .. }) {
        return outcome;
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(roles::DNS_TTL as u64 * 2);
    let still = match roles.scheme() {
        Scheme::Push => first_success(t0, deadline, || {
            roles.pushed_route().is_ok_and(|pushed| !pushed)
        })
        .is_none()
        .then(|| {
            format!(
                "{} still routes the target into its agent's tunnel {}",
                fig8::client(1),
                roles::CLIENT_TUN
            )
        }),
        Scheme::Nat => first_success(t0, deadline, || {
            roles
                .nat_lookup()
                .is_ok_and(|(a, _)| a == fig8::TARGET_ADDR)
        })
        .is_none()
        .then(|| {
            format!(
                "ClientDNS still gives {:?} for {}, not the target's own address",
                roles.nat_lookup().map(|(a, _)| a).ok(),
                roles::TARGET_FQDN
            )
        }),
        Scheme::Resolver => match watch_alt(
            lab,
            Scheme::Resolver,
            t0,
            deadline,
            false,
            Arc::new(AtomicBool::new(false)),
        ) {
            Ok(h) => h
                .join()
                .ok()
                .flatten()
                .is_none()
                .then(|| "ClientDNS still gives ALT records for the target".to_string()),
            Err(e) => Some(format!("ClientDNS could not be asked: {e}")),
        },
    };
    match still {
        None => outcome,
        Some(why) => Outcome::Failed {
            error: format!(
                "the coordinator reports the restore done, but {why} {} later",
                fmt_seconds(t0.elapsed().as_secs_f64())
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_the_longest_silence_ending_after_the_event() {
        // Answers every 20 ms, a silence from 1.00 to 1.30 s, answers again.
        let replies = [0.96, 0.98, 1.00, 1.30, 1.32, 1.34];
        let gap = outage(&replies, 1.01).unwrap();
        assert!((gap - 0.30).abs() < 1e-9, "{gap}");
        // A longer silence before the event does not count.
        let replies = [0.10, 0.90, 0.92, 1.00, 1.10, 1.12];
        let gap = outage(&replies, 0.95).unwrap();
        assert!((gap - 0.10).abs() < 1e-9, "{gap}");
        // No answer after the event: nothing to measure.
        assert_eq!(outage(&[0.1, 0.2], 0.5), None);
        assert_eq!(outage(&[], 0.5), None);
    }

    #[test]
    fn the_proxy_a_tunnel_goes_to_is_the_one_its_packets_went_to() {
        let c = |a: u64, b: u64| vec![("proxy1".to_string(), a), ("proxy2".to_string(), b)];
        assert_eq!(
            busiest_since(&c(0, 0), &c(50, 0), None).as_deref(),
            Some("proxy1")
        );
        // Moved: the other proxy gets the packets now.
        assert_eq!(
            busiest_since(&c(50, 0), &c(51, 9), Some("proxy1")).as_deref(),
            Some("proxy2")
        );
        // A stray keepalive to the other proxy is not a move.
        assert_eq!(busiest_since(&c(50, 0), &c(60, 1), Some("proxy1")), None);
        // Counters started over count from zero.
        assert_eq!(busiest_since(&c(50, 9), &c(0, 0), None), None);
        assert_eq!(
            busiest_since(&[], &c(4, 0), None).as_deref(),
            Some("proxy1")
        );
    }

    fn config(args: &[&str]) -> ScenarioConfig {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: crate::cli::ScenarioArgs,
        }
        let mut all = vec!["lab"];
        all.extend_from_slice(args);
        crate::cli::scenario_config(&Wrap::parse_from(all).a).unwrap()
    }

    fn sample(metric: Metric, rep: u32, outcome: Outcome) -> crate::report::Sample {
        crate::report::Sample {
            metric,
            rep,
            outcome,
        }
    }

    #[test]
    fn a_run_is_complete_only_with_divert_failovers_restore_and_no_failed_sample() {
        let ok = || Outcome::Ok { seconds: 0.1 };
        let cfg = config(&["--scheme", "4.2", "--failover-reps", "2"]);
        let mut r = Results::default();
        let why = cfg.incomplete(&r).unwrap();
        assert!(why.contains("divert") && why.contains("restore"), "{why}");
        assert!(why.contains("0 of 2 proxy failovers"), "{why}");
        r.samples = vec![
            sample(Metric::Divert, 1, ok()),
            sample(Metric::AllClear, 1, ok()),
            sample(Metric::Restore, 1, ok()),
            sample(Metric::Failover, 1, ok()),
        ];
        let why = cfg.incomplete(&r).unwrap();
        assert_eq!(why, "1 of 2 proxy failovers completed");
        r.samples.push(sample(
            Metric::Failover,
            2,
            Outcome::Failed {
                error: "no new connection\nthrough another proxy".into(),
            },
        ));
        let why = cfg.incomplete(&r).unwrap();
        assert!(
            why.contains("1 samples failed") && !why.contains('\n'),
            "{why}"
        );
        r.samples.pop();
        r.samples.push(sample(Metric::Failover, 2, ok()));
        assert_eq!(cfg.incomplete(&r), None);
        // A timed-out download on the attacked direct route is a figure, not a failure.
        r.samples.push(sample(
            Metric::Setup { probe: Probe::Ping },
            1,
            Outcome::Timeout { limit_seconds: 1.0 },
        ));
        assert_eq!(cfg.incomplete(&r), None);
        // Static routes leave the coordinator out: nothing of it is owed.
        let cfg = config(&["--static-route"]);
        assert_eq!(cfg.incomplete(&Results::default()), None);
        // The operator's alarm: no detector all-clear is owed.
        let cfg = config(&[
            "--scheme",
            "4.3",
            "--operator-alarm",
            "--failover-reps",
            "0",
        ]);
        r.samples = vec![
            sample(Metric::Divert, 1, ok()),
            sample(Metric::Restore, 1, ok()),
        ];
        assert_eq!(cfg.incomplete(&r), None);
    }

    #[test]
    fn phase_is_read_from_the_status_of_the_lab_target() {
        let v = serde_json::json!({"targets": [
            {"name": "other", "phase": "diverted"},
            {"name": roles::TARGET_ID, "phase": "restoring"}
        ]});
        assert_eq!(phase_of(&v).as_deref(), Some("restoring"));
        assert_eq!(phase_of(&serde_json::json!({"targets": []})), None);
        assert_eq!(phase_of(&serde_json::json!({"error": "x"})), None);
    }
}
