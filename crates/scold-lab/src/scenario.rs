//! The scenario `scold lab` runs: build Figure 8, start the target's services as a real
//! `scold lab serve` process, measure ping and downloads from the client, flood the
//! target's main link from the attackers (real `scold lab flood` processes), measure
//! again, and write the report.
//!
//! This is the direct-route half of Tables 1-2. The indirect route needs the
//! coordinator, DNS, proxies and tunnels in the lab; until they are wired in, the
//! report marks those columns (and Tables 3-4, failover and restore) as not measured.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::fig8::{self, Fig8, Fig8Options};
use crate::flood::{FloodKind, FloodReport};
use crate::measure::{self, Transfer};
use crate::progress::Progress;
use crate::report::{
    self, fmt_seconds, fmt_size, Condition, Metric, Outcome, Probe, Proto, Results, Route,
};
use crate::serve::{self, DEFAULT_BULK_PORT, DEFAULT_HTTP_PORT};
use crate::topology::LabProcess;

/// Everything the scenario needs to know.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioConfig {
    pub testbed: Fig8Options,
    /// Repetitions of each download per condition.
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
    /// Longest a download may take under attack (then it counts as "above").
    pub attack_timeout: Duration,
    /// How long the flood runs before measuring, so the queue is full.
    pub attack_warmup: Duration,
    pub out_dir: PathBuf,
    /// On failure, keep the namespaces for inspection (`scold lab cleanup` removes them).
    pub keep_on_failure: bool,
    /// The `scold` binary that runs each role.
    pub scold_bin: PathBuf,
    pub quiet: bool,
}

/// Where the report went.
pub struct Outputs {
    pub results: Results,
    pub tables: String,
    pub json: PathBuf,
    pub svg: PathBuf,
    pub text: PathBuf,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the scenario and writes `results.json`, `report.txt` and `downloads.svg` into
/// the output directory.
pub fn run(cfg: &ScenarioConfig) -> Result<Outputs, LabError> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| LabError::io(format!("creating {}", cfg.out_dir.display()), e))?;
    let mut results = Results {
        scold_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix: unix_now(),
        config: serde_json::to_value(cfg).unwrap_or_default(),
        ..Default::default()
    };
    let downloads = cfg.sizes.len() as u32 * 2 * cfg.reps;
    let total = 2 * (cfg.pings + downloads) as usize + 5;
    let mut progress = Progress::new(total, cfg.quiet);

    progress.phase(&format!(
        "building the Figure 8 testbed: {} proxies, {} clients, {} attackers, main link {} bit/s ({:?} duplex)",
        cfg.testbed.proxies, cfg.testbed.clients, cfg.testbed.attackers,
        cfg.testbed.bottleneck.rate_bit, cfg.testbed.duplex
    ));
    let lab = Fig8::build(cfg.testbed.clone())?;
    progress.step("testbed", lab.id());
    let outcome = measure_direct(&lab, cfg, &mut results, &mut progress);
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
    progress.step("tear-down", "namespaces and processes removed");

    results.notes.push(
        "indirect route (Tables 1-2, right half), resolver overhead (Table 3), route set-up \
         (Table 4), proxy failover and restore: not measured in this build; they need the \
         coordinator, DNS, proxies and tunnels running in the lab"
            .into(),
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
    progress.step("report", &cfg.out_dir.display().to_string());
    Ok(Outputs {
        results,
        tables,
        json,
        svg,
        text,
    })
}

fn scold(lab: &Fig8, cfg: &ScenarioConfig, node: &str) -> Result<std::process::Command, LabError> {
    lab.command(node, &cfg.scold_bin)
}

/// Starts the target's services and waits until the client reaches them.
fn start_services(lab: &Fig8, cfg: &ScenarioConfig) -> Result<LabProcess, LabError> {
    let mut cmd = scold(lab, cfg, fig8::TARGET)?;
    cmd.args(["lab", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut server = lab.spawn("target: scold lab serve", &mut cmd)?;
    let http: SocketAddr = (fig8::TARGET_ADDR, DEFAULT_HTTP_PORT).into();
    let client = fig8::client(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = lab.run_in(&client, || {
            measure::fetch_http(http, "target", "/0k", Duration::from_secs(1))
        })?;
        if probe.is_ok() {
            return Ok(server);
        }
        if let Some(st) = server.try_wait()? {
            return Err(LabError::Command {
                command: format!("{} lab serve", cfg.scold_bin.display()),
                status: st.to_string(),
                stderr: "the target's services exited at start (see the log above)".into(),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: format!("waiting for the target's services at {http}"),
                secs: 10.0,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
            format!("no answer within {}", fmt_seconds(*limit_seconds))
        }
        Outcome::Failed { error } => format!("failed: {error}"),
    }
}

/// Ping and downloads from client 1 to the target under `condition`.
fn measure_condition(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    condition: Condition,
    target: Ipv4Addr,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let client = fig8::client(1);
    let limit = if condition.attack {
        cfg.attack_timeout
    } else {
        cfg.timeout
    };
    let echo_timeout = Duration::from_secs(1);
    let echoes = lab.run_in(&client, || {
        measure::ping_samples(target, cfg.pings, Duration::from_millis(100), echo_timeout)
    })??;
    for (i, e) in echoes.iter().enumerate() {
        let outcome = match e {
            Some(d) => Outcome::Ok {
                seconds: d.as_secs_f64(),
            },
            None => Outcome::Timeout {
                limit_seconds: echo_timeout.as_secs_f64(),
            },
        };
        progress.step(
            &format!("{}: ping #{}", condition.label(), i + 1),
            &show(&outcome),
        );
        results.push(
            Metric::Condition {
                probe: Probe::Ping,
                condition,
            },
            i as u32 + 1,
            outcome,
        );
    }
    // Repetitions outermost, so slow drift spreads over every size alike.
    for rep in 1..=cfg.reps {
        for &size in &cfg.sizes {
            for proto in [Proto::Bulk, Proto::Http] {
                let r = lab.run_in(&client, || match proto {
                    Proto::Bulk => {
                        measure::fetch_bulk((target, DEFAULT_BULK_PORT).into(), size, limit)
                    }
                    Proto::Http => measure::fetch_http(
                        (target, DEFAULT_HTTP_PORT).into(),
                        "target",
                        &serve::http_path(size),
                        limit,
                    ),
                })?;
                let outcome = transfer_outcome(r, limit);
                progress.step(
                    &format!(
                        "{}: {} {} #{rep}",
                        condition.label(),
                        proto.label(),
                        fmt_size(size)
                    ),
                    &show(&outcome),
                );
                results.push(
                    Metric::Condition {
                        probe: Probe::Download { proto, size },
                        condition,
                    },
                    rep,
                    outcome,
                );
            }
        }
    }
    Ok(())
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
        let mut cmd = scold(lab, cfg, a)?;
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

fn measure_direct(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    progress.phase("starting the target's HTTP and bulk TCP services (scold lab serve)");
    let mut server = start_services(lab, cfg)?;
    progress.step("services", "ready");

    let direct = Condition {
        route: Route::Direct,
        attack: false,
    };
    progress.phase("baseline: direct route, no attack");
    measure_condition(lab, cfg, direct, fig8::TARGET_ADDR, results, progress)?;

    // The flood's own time limit is a backstop; it is stopped as soon as measuring ends.
    let per_download = cfg.attack_timeout.as_secs_f64();
    let budget = Duration::from_secs_f64(
        cfg.attack_warmup.as_secs_f64()
            + cfg.pings as f64 * 1.2
            + per_download * (cfg.sizes.len() as f64 * 2.0 * cfg.reps as f64)
            + 30.0,
    );
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
    let floods = start_floods(lab, cfg, budget)?;
    std::thread::sleep(cfg.attack_warmup);
    let attacked = Condition {
        route: Route::Direct,
        attack: true,
    };
    let measured = measure_condition(lab, cfg, attacked, fig8::TARGET_ADDR, results, progress);
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
    measured?;
    let _ = server.stop(Duration::from_secs(2));
    Ok(())
}
