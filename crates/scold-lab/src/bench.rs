//! `scold lab bench`: repeated timings of the indirect route's set-up and of a proxy
//! failover, for a median and a worst case (the paper's Table 4 and Section 4.4; the
//! goals: set-up under 100 ms, failover under 1 s).
//!
//! Set-up, each run: client 1's application sends a UDP probe to the target every
//! millisecond and looks the target's name up through its client agent every 10 ms (as
//! applications opening connections do); a socket in the target's namespace bound to
//! its alternate-link device hears only probes that came by the indirect route. The
//! operator's alarm (`scold ctl divert`) starts the clock; the coordinator sets the
//! gateway, target and proxies up, publishes the ALT records and has the proxies
//! NOTIFY ClientDNS; the agent's next lookup meets the records, is admitted by a proxy
//! and brings the tunnel up; the figure is the first probe heard on the alternate link.
//! Then `scold ctl restore`, and the client agent is restarted with no route.
//!
//! Scheme 4.2 (`--scheme 4.2`): the same probes, without lookups; the route is the one
//! the client's proxy pushes on the coordinator's order. Scheme 4.3: the client runs
//! nothing; it looks the name up at ClientDNS and fetches the target's page from the
//! first address every 10 ms; the figure is the first page fetched through a proxy
//! (the NAT relays service ports, so no UDP probe gets through).
//!
//! Failover: one divert, then the client's proxy is killed repeatedly while an echo
//! loop through the tunnel measures the gap (as in the scenario's `--failover kill`);
//! in 4.3, the time from the coordinator's reset until a new connection through
//! another proxy succeeds.
//!
//! The main link is not attacked here: the set-up path does not cross it (the target's
//! control channel leaves by the alternate uplink), and an idle machine gives the
//! figures of the mechanism itself.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit;
use crate::error::LabError;
use crate::fig8::{self, Fig8};
use crate::measure;
use crate::progress::Progress;
use crate::report::{fmt_seconds, Metric, Outcome, Results};
use crate::roles::{self, RoleOptions, Roles};
use crate::scenario::{self, FailoverAttack, ScenarioConfig};

/// UDP port the set-up probes go to.
pub const PROBE_PORT: u16 = 9099;
/// The lab's goals for these figures (and the paper's figures' order of magnitude).
pub const SETUP_GOAL: Duration = Duration::from_millis(100);
pub const FAILOVER_GOAL: Duration = Duration::from_secs(1);
/// Longest wait for one set-up.
const SETUP_LIMIT: Duration = Duration::from_secs(10);

/// What the bench wrote.
pub struct BenchOutputs {
    pub results: Results,
    pub text: String,
    pub json: PathBuf,
    pub report: PathBuf,
}

/// Median and worst of `v`.
fn med_worst(v: &[f64]) -> Option<(f64, f64)> {
    Some((measure::median(v)?, v.iter().copied().reduce(f64::max)?))
}

/// Runs `runs` set-ups and `failover_runs` failovers on a fresh testbed (the scenario's
/// options give its size, encapsulation and binary) and writes `bench.json` and
/// `bench.txt` into the output directory.
pub fn run(cfg: &ScenarioConfig, runs: u32, failover_runs: u32) -> Result<BenchOutputs, LabError> {
    let logs = crate::scenario::prepare_out_dir(&cfg.out_dir)?;
    let mut results = Results {
        scold_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix: unix_now(),
        config: serde_json::json!({
            "runs": runs,
            "failover_runs": failover_runs,
            "encap": cfg.encap.as_str(),
            "scheme": cfg.scheme.as_str(),
            "proxies": cfg.testbed.proxies,
        }),
        ..Default::default()
    };
    let mut progress = Progress::new(3 + 2 * runs as usize + failover_runs as usize, cfg.quiet);
    progress.phase("building the Figure 8 testbed for the bench");
    let lab = Fig8::build(cfg.testbed.clone())?;
    progress.step("testbed", lab.id());
    let outcome = bench_phases(
        &lab,
        cfg,
        runs,
        failover_runs,
        &logs,
        &mut results,
        &mut progress,
    );
    if let Err(e) = outcome {
        if cfg.keep_on_failure {
            let id = lab.keep();
            eprintln!(
                "scold lab bench: failed; namespaces {id}-* kept for inspection; remove them \
                 with `scold lab cleanup --all`"
            );
        }
        return Err(e);
    }
    lab.teardown()?;
    progress.step("tear-down", "processes and namespaces removed");
    results.finished_unix = unix_now();

    let text = render(&results, runs, failover_runs);
    let json = cfg.out_dir.join("bench.json");
    let report = cfg.out_dir.join("bench.txt");
    let mut body = serde_json::to_vec_pretty(&results)
        .map_err(|e| LabError::io("encoding the results", std::io::Error::other(e.to_string())))?;
    body.push(b'\n');
    std::fs::write(&json, body)
        .map_err(|e| LabError::io(format!("writing {}", json.display()), e))?;
    std::fs::write(&report, &text)
        .map_err(|e| LabError::io(format!("writing {}", report.display()), e))?;
    Ok(BenchOutputs {
        results,
        text,
        json,
        report,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ok_seconds(r: &Results, m: Metric) -> Vec<f64> {
    r.samples
        .iter()
        .filter(|s| s.metric == m)
        .filter_map(|s| match s.outcome {
            Outcome::Ok { seconds } => Some(seconds),
            _ => None,
        })
        .collect()
}

/// The bench's report: each figure's median and worst beside its goal.
pub fn render(r: &Results, runs: u32, failover_runs: u32) -> String {
    let mut out = String::from("scold lab bench (median / worst, goal)\n");
    let line = |what: &str, m: Metric, n: u32, goal: Duration| {
        let v = ok_seconds(r, m);
        let got = match med_worst(&v) {
            Some((med, worst)) => format!(
                "{} / {} over {} of {n} runs{}",
                fmt_seconds(med),
                fmt_seconds(worst),
                v.len(),
                if worst <= goal.as_secs_f64() {
                    ", every run within the goal"
                } else if med <= goal.as_secs_f64() {
                    ", median within the goal"
                } else {
                    ", ABOVE the goal"
                }
            ),
            None if n == 0 => "not run".to_string(),
            None => format!("no run finished of {n}"),
        };
        format!(
            "  {what:<58} {got}  [goal: under {}]\n",
            fmt_seconds(goal.as_secs_f64())
        )
    };
    out += &line(
        "set-up: alarm -> first client packet over the indirect route",
        Metric::AlarmToFirstPacket,
        runs,
        SETUP_GOAL,
    );
    let v = ok_seconds(r, Metric::Divert);
    if let Some((med, worst)) = med_worst(&v) {
        out += &format!(
            "  {:<58} {} / {} over {} runs  [part of the set-up]\n",
            "of which: alarm -> coordinator phase \"diverted\"",
            fmt_seconds(med),
            fmt_seconds(worst),
            v.len()
        );
    }
    let nat = r.config.get("scheme").and_then(|v| v.as_str()) == Some("4.3");
    out += &line(
        if nat {
            "failover: reset of the dead proxy -> new connection elsewhere"
        } else {
            "failover: gap after the client's proxy died"
        },
        Metric::Failover,
        failover_runs,
        FAILOVER_GOAL,
    );
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn bench_phases(
    lab: &Fig8,
    cfg: &ScenarioConfig,
    runs: u32,
    failover_runs: u32,
    logs: &std::path::Path,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    progress.phase("starting the roles (data path linked to the coordinator)");
    let mut roles = Roles::start(
        lab,
        RoleOptions {
            scold_bin: cfg.scold_bin.clone(),
            log_dir: logs.to_path_buf(),
            encap: cfg.encap,
            scheme: cfg.scheme,
            agent: cfg.agent_mode(),
            control: true,
            detect: false,
            coordinators: 1,
        },
    )?;
    progress.step(
        "roles",
        "coordinator, DNS, gateway, proxies, target, client agent up",
    );
    let mut diverts = Vec::new();
    for run in 1..=runs {
        progress.phase(&format!("set-up run {run} of {runs}"));
        let (first, diverted) = if cfg.scheme == roles::Scheme::Nat {
            setup_run_nat(lab, &roles)?
        } else {
            setup_run(lab, &roles)?
        };
        let outcome = match first {
            Some(s) => Outcome::Ok { seconds: s },
            None => Outcome::Timeout {
                limit_seconds: SETUP_LIMIT.as_secs_f64(),
            },
        };
        progress.step(
            &format!("alarm -> first probe via the gateway #{run}"),
            &match &outcome {
                Outcome::Ok { seconds } => fmt_seconds(*seconds),
                _ => format!("none within {}", fmt_seconds(SETUP_LIMIT.as_secs_f64())),
            },
        );
        results.push(Metric::AlarmToFirstPacket, run, outcome);
        if let Some(d) = diverted {
            diverts.push(d);
            results.push(Metric::Divert, run, Outcome::Ok { seconds: d });
        }
        restore(&roles)?;
        if roles.resolver_agent() {
            roles.restart_client_agents()?;
        }
        roles.check()?;
        progress.step(
            &format!("restored #{run}"),
            &scenario::target_status(&roles),
        );
    }
    results.notes.push(format!(
        "set-up (scheme {}): the operator's alarm (`scold ctl divert`) to {}; each run \
         starts from phase \"normal\"; the clock starts when the coordinator took the \
         alarm (the phase change in its audit log, so `scold ctl`'s own start is not \
         counted); encapsulation {}",
        cfg.scheme.as_str(),
        match cfg.scheme {
            roles::Scheme::Resolver => {
                "the first of client 1's UDP probes (one every 1 ms) heard on the target's \
                 alternate-link device; the client's application looked the name up through \
                 its agent every 10 ms, and the agent was restarted with no route after each \
                 run"
            }
            roles::Scheme::Push => {
                "the first of client 1's UDP probes (one every 1 ms) heard on the target's \
                 alternate-link device, through the route the client's proxy pushed to its \
                 agent (no lookup involved)"
            }
            roles::Scheme::Nat => {
                "the first page client 1 fetched (HTTP, a lookup at ClientDNS and a new \
                 connection every 10 ms) from an address that is a proxy's, relayed to the \
                 target"
            }
        },
        cfg.encap.as_str()
    ));
    if failover_runs > 0 {
        progress.phase(&format!(
            "failover: kill the client's proxy, {failover_runs} times"
        ));
        roles.ctl(&["divert", roles::TARGET_ID])?;
        if !wait_phase(&roles, "diverted", SETUP_LIMIT) {
            return Err(LabError::Timeout {
                what: format!(
                    "the divert before the failover runs; coordinator: {}",
                    scenario::target_status(&roles)
                ),
                secs: SETUP_LIMIT.as_secs_f64(),
            });
        }
        let fcfg = ScenarioConfig {
            failover_reps: failover_runs,
            failover_attack: FailoverAttack::Kill,
            ..cfg.clone()
        };
        if cfg.scheme == roles::Scheme::Nat {
            scenario::measure_failover_nat(lab, &mut roles, &fcfg, results, progress)?;
        } else {
            scenario::measure_failover(lab, &mut roles, &fcfg, results, progress)?;
        }
        restore(&roles)?;
    }
    roles.check()?;
    roles.stop_all()?;
    Ok(())
}

/// The target's phase as the coordinator reports it.
fn phase(roles: &Roles) -> Option<String> {
    roles
        .ctl(&["status"])
        .ok()
        .and_then(|v| scenario::phase_of(&v))
}

fn wait_phase(roles: &Roles, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if phase(roles).as_deref() == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `scold ctl restore` and the wait for phase "normal" (the coordinator drains one ALT
/// TTL first).
fn restore(roles: &Roles) -> Result<(), LabError> {
    roles.ctl(&["restore", roles::TARGET_ID])?;
    let limit = Duration::from_secs(roles::DNS_TTL as u64 * 3);
    if wait_phase(roles, "normal", limit) {
        Ok(())
    } else {
        Err(LabError::Timeout {
            what: format!(
                "the coordinator's restore; coordinator: {}",
                scenario::target_status(roles)
            ),
            secs: limit.as_secs_f64(),
        })
    }
}

/// Seconds from the coordinator taking the alarm at or after `t0_wall` (its audit log)
/// to `heard`, and to its phase "diverted".
fn from_alarm(
    roles: &Roles,
    t0_wall: SystemTime,
    heard: Option<(Instant, SystemTime)>,
    t0: Instant,
) -> Result<(Option<f64>, Option<f64>), LabError> {
    let events = roles.events()?;
    let alarm_at = audit::entered(&events, "diverting", audit::unix_ms(t0_wall));
    let first = heard.map(|(mono, wall)| match alarm_at {
        Some(a) => audit::seconds(a, audit::unix_ms(wall)),
        None => (mono - t0).as_secs_f64(),
    });
    let divert =
        alarm_at.and_then(|a| audit::entered(&events, "diverted", a).map(|d| audit::seconds(a, d)));
    Ok((first, divert))
}

/// A divert the set-up benchmark has started: its clocks (monotonic and wall), the
/// watcher of the phase "diverted", and what `scold ctl divert` answered.
struct Started {
    t0: Instant,
    t0_wall: SystemTime,
    phases: std::thread::JoinHandle<Vec<Option<f64>>>,
    divert: Result<serde_json::Value, LabError>,
}

/// Starts the clocks, the phase watcher and the divert, in that order.
fn start_divert(roles: &Roles, stop: &Arc<AtomicBool>) -> Result<Started, LabError> {
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let phases = scenario::watch_phases(
        roles.ctl_argv(&["status"])?,
        t0,
        t0 + SETUP_LIMIT,
        &["diverted"],
        stop.clone(),
    );
    let divert = roles.ctl(&["divert", roles::TARGET_ID]);
    Ok(Started {
        t0,
        t0_wall,
        phases,
        divert,
    })
}

/// One set-up in scheme 4.3: client 1 looks the name up at ClientDNS and fetches the
/// target's page from the first address every 10 ms; returns the seconds from the
/// coordinator taking the alarm to the first page fetched from a proxy's address, and
/// to its phase "diverted".
fn setup_run_nat(lab: &Fig8, roles: &Roles) -> Result<(Option<f64>, Option<f64>), LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let cdns: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("in the plan"), 53).into();
    let app = lab.thread_in(&fig8::client(1), move || {
        let name = format!("{}.", roles::TARGET_FQDN);
        let deadline = Instant::now() + SETUP_LIMIT + Duration::from_secs(2);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            let to = crate::dnsq::query(cdns, &name, 1, Duration::from_millis(300))
                .ok()
                .and_then(|a| a.a.first().copied())
                .filter(|&a| a != fig8::TARGET_ADDR);
            if let Some(to) = to {
                let got = measure::fetch_http(
                    (to, crate::serve::DEFAULT_HTTP_PORT).into(),
                    "target",
                    "/0k",
                    Duration::from_millis(200),
                );
                if got.is_ok() {
                    return Some((Instant::now(), SystemTime::now()));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let Started {
        t0,
        t0_wall,
        phases,
        divert,
    } = start_divert(roles, &stop)?;
    if divert.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let heard = app
        .join()
        .map_err(|_| LabError::io("the fetch loop", std::io::Error::other("panicked")))?;
    let _ = phases.join();
    stop.store(true, Ordering::Relaxed);
    divert?;
    from_alarm(roles, t0_wall, heard, t0)
}

/// One set-up: returns the seconds from the coordinator taking the alarm (its audit
/// log) to the first probe heard on the alternate link, and to its phase "diverted"
/// (the same log).
fn setup_run(lab: &Fig8, roles: &Roles) -> Result<(Option<f64>, Option<f64>), LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    // The listener first, so no early probe is missed.
    let bound = Arc::new(AtomicBool::new(false));
    let (s, b) = (stop.clone(), bound.clone());
    type Heard = Option<(Instant, SystemTime)>;
    let sink = lab.thread_in(fig8::TARGET, move || -> Result<Heard, LabError> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(|e| LabError::io("opening the probe listener", e))?;
        sock.bind_device(Some(fig8::TARGET_ALT_IF.as_bytes()))
            .map_err(|e| LabError::io("binding the probe listener to the alternate link", e))?;
        let addr: SocketAddr = (Ipv4Addr::UNSPECIFIED, PROBE_PORT).into();
        sock.bind(&addr.into())
            .map_err(|e| LabError::io(format!("binding the probe listener to {addr}"), e))?;
        let sock: UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| LabError::io("setting the listener's time-out", e))?;
        b.store(true, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if sock.recv_from(&mut buf).is_ok() {
                return Ok(Some((Instant::now(), SystemTime::now())));
            }
        }
        Ok(None)
    })?;
    while !bound.load(Ordering::Relaxed) {
        if sink.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = stop.clone();
    let sender = lab.thread_in(&fig8::client(1), move || {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            return;
        };
        let dest: SocketAddr = (fig8::TARGET_ADDR, PROBE_PORT).into();
        let deadline = Instant::now() + SETUP_LIMIT + Duration::from_secs(2);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            // Unconnected: the port-unreachable answers of the direct route are ignored.
            let _ = sock.send_to(b"scold-lab setup probe", dest);
            std::thread::sleep(Duration::from_millis(1));
        }
    })?;
    let s = stop.clone();
    // Only the scheme 4.1 agent sets the route up on a lookup; in 4.2 nobody asks.
    let lookups = roles.resolver_agent();
    let app = lab.thread_in(&fig8::client(1), move || {
        if !lookups {
            return;
        }
        let server: SocketAddr = (roles::AGENT_DNS, 53).into();
        let name = format!("{}.", roles::TARGET_FQDN);
        let deadline = Instant::now() + SETUP_LIMIT + Duration::from_secs(2);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = crate::dnsq::query(server, &name, 1, Duration::from_millis(500));
            std::thread::sleep(Duration::from_millis(10));
        }
    })?;
    // Let the probes run on the direct route first.
    std::thread::sleep(Duration::from_millis(200));
    let Started {
        t0,
        t0_wall,
        phases,
        divert,
    } = start_divert(roles, &stop)?;
    if divert.is_ok() {
        let deadline = t0 + SETUP_LIMIT;
        while !sink.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    } else {
        stop.store(true, Ordering::Relaxed);
    }
    // The phase watcher ends once it has seen "diverted" (or at its deadline), so the
    // audit log read below holds the divert's end.
    let _ = phases.join();
    stop.store(true, Ordering::Relaxed);
    let heard = sink
        .join()
        .map_err(|_| LabError::io("the probe listener", std::io::Error::other("panicked")))??;
    let _ = sender.join();
    let _ = app.join();
    divert?;
    // The clock of the figure starts when the coordinator took the alarm (the target
    // entered "diverting" in its audit log), not when `scold ctl` started: the tool's
    // start and TLS handshake are not SCOLD's set-up. Both clocks are the host's.
    from_alarm(roles, t0_wall, heard, t0)
}
