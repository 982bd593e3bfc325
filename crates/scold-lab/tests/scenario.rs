//! `scold lab` end to end, short: every role as a real process, the direct and indirect
//! routes with and without the attack, and nothing left behind. Asserts the shape of
//! Tables 1-2 (as a reader of the paper would check them), never a wall-clock speed.
//!
//! Runs the real `scold` binary (`cargo build -p scold` first, as CI does).

mod common;

use std::sync::Mutex;

use common::*;
use scold_lab::report::{Condition, Metric, Outcome, Probe, Proto, Results, Route, Summary};
use scold_testkit::require_root;

fn cond(route: Route, attack: bool) -> Condition {
    Condition { route, attack }
}

/// The median of a Tables 1-2 cell as seconds; "above the limit" counts as the limit.
fn median(r: &Results, probe: Probe, c: Condition) -> f64 {
    match r.summary(Metric::Condition {
        probe,
        condition: c,
    }) {
        Summary::Median { seconds, .. } => seconds,
        Summary::Above { limit, .. } => limit,
        other => panic!("{probe:?} {c:?}: {other:?}"),
    }
}

/// The lab runs use most of the machine: one at a time, so neither distorts the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn short_scenario_has_the_papers_shape_and_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // No operator: the target's detector raises the alarm and, after its hold-down,
    // the all-clear; the coordinator diverts and restores on its own.
    let (r, stdout) = run_short(&["--failover-reps", "2"]);
    let (d, da) = (cond(Route::Direct, false), cond(Route::Direct, true));
    let (i, ia) = (cond(Route::Indirect, false), cond(Route::Indirect, true));
    let ping = Probe::Ping;
    // Direct under attack: far worse than direct (the flood fills the bottleneck).
    assert!(
        median(&r, ping, da) > 10.0 * median(&r, ping, d),
        "ping: the attack did not hurt the direct route:\n{stdout}"
    );
    // Indirect under attack: about as good as indirect without (generous bounds: the
    // machine is shared and the tunnel runs in user space).
    assert!(
        median(&r, ping, ia) < (5.0 * median(&r, ping, i)).max(median(&r, ping, i) + 0.02),
        "ping: the indirect route suffered from the attack:\n{stdout}"
    );
    // Table 3 and 4 were measured.
    assert!(r
        .samples
        .iter()
        .any(|s| matches!(s.metric, Metric::Resolver { .. })
            && matches!(s.outcome, Outcome::Ok { .. })));
    assert!(r.samples.iter().any(
        |s| matches!(s.metric, Metric::Setup { .. }) && matches!(s.outcome, Outcome::Ok { .. })
    ));
    // Scheme 4.1 by default runs client agents: the route came from a lookup meeting the
    // ALT records, and flooding the client's proxy made its self-defence report it, the
    // coordinator reset it out and the client move to the other one, each time.
    assert!(stdout.contains("reported ProxyAttacked"), "{stdout}");
    assert!(stdout.contains("client agent"), "{stdout}");
    let failovers: Vec<&Outcome> = r
        .samples
        .iter()
        .filter(|s| s.metric == Metric::Failover)
        .map(|s| &s.outcome)
        .collect();
    assert_eq!(failovers.len(), 2, "{stdout}");
    assert!(
        failovers.iter().all(|o| matches!(o, Outcome::Ok { .. })),
        "a failover did not complete: {failovers:?}\n{stdout}"
    );
    // The data-path daemons are linked to the coordinator: the detector's alarm and
    // all-clear reach it, and its divert and restore both complete.
    assert!(stdout.contains("target's detector"), "{stdout}");
    // Nothing of the indirect route is static: the coordinator's divert laid it out,
    // before the attack on the operator's alarm.
    assert!(stdout.contains("from its divert orders"), "{stdout}");
    assert!(!stdout.contains("STATIC configs"), "{stdout}");
    assert!(
        stdout.contains("indirect route before the attack"),
        "{stdout}"
    );
    assert_divert_all_clear_restore(&r, &stdout);
}

/// The divert, the all-clear and the restore each completed at least once.
fn assert_divert_all_clear_restore(r: &Results, stdout: &str) {
    for m in [Metric::Divert, Metric::AllClear, Metric::Restore] {
        assert!(
            r.samples
                .iter()
                .any(|s| s.metric == m && matches!(s.outcome, Outcome::Ok { .. })),
            "{m:?} did not complete:\n{stdout}"
        );
    }
}

/// What every scheme's run must show of the coordinator: its divert under attack (on
/// the target's detector's alarm), the failover by its reset of the flooded proxy, the
/// detector's all-clear and its restore, each completed.
fn assert_coordinator_drove(r: &Results, stdout: &str, failovers: usize) {
    assert_divert_all_clear_restore(r, stdout);
    let done = r
        .samples
        .iter()
        .filter(|s| s.metric == Metric::Failover && matches!(s.outcome, Outcome::Ok { .. }))
        .count();
    assert_eq!(done, failovers, "failovers:\n{stdout}");
    assert!(stdout.contains("target's detector"), "{stdout}");
    assert!(stdout.contains("from its divert orders"), "{stdout}");
    assert!(!stdout.contains("STATIC configs"), "{stdout}");
    assert!(
        stdout.contains("indirect route before the attack"),
        "{stdout}"
    );
}

/// Scheme 4.2: client agents registered with the coordinator take the route its
/// proxies push; the failover moves them by push, the restore withdraws it.
#[test]
fn push_scheme_is_driven_by_the_coordinator() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (r, stdout) = run_short(&["--scheme", "4.2", "--failover-reps", "1"]);
    assert_coordinator_drove(&r, &stdout, 1);
    assert!(stdout.contains("PUSHED"), "{stdout}");
    assert!(
        stdout.contains("had the other proxy push the route"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the pushed route withdrawn from the client agent"),
        "{stdout}"
    );
    // The ping goes through the pushed tunnel: measured in every indirect cell.
    assert!(matches!(
        r.summary(Metric::Condition {
            probe: Probe::Ping,
            condition: cond(Route::Indirect, true)
        }),
        Summary::Median { .. }
    ));
}

/// Scheme 4.3 (the proxy relays the target's ports as a NAT) over plain UDP tunnels:
/// the divert replaces the A records, unmodified clients (the lab's fetchers and curl)
/// reach the target through a proxy, the reset republishes them.
#[test]
fn nat_scheme_is_driven_by_the_coordinator() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (r, stdout) = run_short(&["--scheme", "4.3", "--encap", "udp", "--failover-reps", "1"]);
    assert_coordinator_drove(&r, &stdout, 1);
    assert!(stdout.contains("A records naming the proxies"), "{stdout}");
    assert!(stdout.contains("`curl http://www.target.test"), "{stdout}");
    assert!(stdout.contains("got HTTP 200 from the target"), "{stdout}");
    assert!(
        stdout.contains("connections open on the dead proxy are LOST"),
        "{stdout}"
    );
    // No ping over a NAT relay of service ports: the cell says so instead of a number.
    assert_eq!(
        r.summary(Metric::Condition {
            probe: Probe::Ping,
            condition: cond(Route::Indirect, true)
        }),
        Summary::NotMeasured
    );
}

/// `--static-route`: static configs lay the route out, the coordinator is left out (no
/// divert, failover or restore is asked of it, and the run is complete without them).
#[test]
fn static_route_still_reaches_the_target() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (r, stdout) = run_short(&["--static-route"]);
    assert!(stdout.contains("STATIC configs"), "{stdout}");
    for m in [Metric::Divert, Metric::Failover, Metric::Restore] {
        assert!(!r.samples.iter().any(|s| s.metric == m), "{m:?}:\n{stdout}");
    }
}

/// `--coordinators 3`: three coordinator replicas on a 3-member etcd cluster. Under
/// attack, after the divert, the leading replica is killed; a standby takes the lead,
/// the gateway, proxies and target link to it, and the proxy failover and the restore
/// complete under it. The clients' lookups go through TargetDNS's secondary, which the
/// divert's ALT records reached by NOTIFY and IXFR from the hidden primary.
#[test]
fn replicated_coordinator_takes_over_under_attack() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (r, stdout) = run_short_within(&["--coordinators", "3", "--failover-reps", "1"], 200);
    assert_coordinator_drove(&r, &stdout, 1);
    let t = r.takeover.as_ref().expect("no takeover in results.json");
    let replicas = ["coordinator", "coordinator2", "coordinator3"];
    assert!(
        replicas.contains(&t.before.as_str()) && replicas.contains(&t.after.as_str()),
        "{t:?}"
    );
    assert_ne!(t.before, t.after, "the killed replica still leads: {t:?}");
    assert_eq!((t.replicas, t.etcd_members), (3, 3), "{t:?}");
    // The moments follow each other: lead won, then served, then the nodes linked.
    assert!(
        0.0 < t.elected_seconds
            && t.elected_seconds <= t.serving_seconds
            && t.serving_seconds <= t.nodes_back_seconds,
        "{t:?}"
    );
    // What ran after the takeover, i.e. under the new leader.
    assert_eq!((t.failovers_after, t.failovers_asked), (1, 1), "{t:?}");
    assert!(t.restore_after, "{t:?}");
    // DNS: the clients' resolver asked the secondary only; the ALT update reached it
    // by NOTIFY and incremental transfer.
    let s = &t.secondary;
    assert!(!s.alt.is_empty(), "{s:?}");
    assert!(
        s.notifies_answered > 0 && s.incremental_transfers > 0,
        "{s:?}"
    );
    assert!(
        s.clientdns_to_secondary > 0 && s.clientdns_to_primary == 0,
        "{s:?}"
    );
    assert!(
        stdout.contains("Coordinator takeover under attack"),
        "{stdout}"
    );
    for role in [
        "coordinator2",
        "coordinator3",
        "etcd1",
        "etcd3",
        "targetdns2",
    ] {
        assert!(stdout.contains(role), "{role} not in the report:\n{stdout}");
    }
}

/// Runs a short scenario with `extra` options; checks what every scheme must show (the
/// download shape of Tables 1-2, the report, the logs, nothing left behind) and returns
/// the results and the printed report.
fn run_short(extra: &[&str]) -> (Results, String) {
    run_short_within(extra, 110)
}

/// [`run_short`], the run given up to `secs` seconds.
fn run_short_within(extra: &[&str], secs: u64) -> (Results, String) {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let routes_before = host_lab_routes();
    let mut args: Vec<std::ffi::OsString> = SHORT_RUN
        .iter()
        .chain(&["--quiet", "--out"])
        .map(Into::into)
        .collect();
    args.push(out.path().into());
    args.extend(extra.iter().map(Into::into));
    let run = run_lab(&args, secs);
    let (stdout, stderr) = (run.stdout.clone(), &run.stderr);
    assert!(
        run.status.success(),
        "scold lab failed:\n{stderr}\n{stdout}"
    );
    assert_left_nothing(&run, 8, &routes_before);

    // The report a user reads.
    for t in [
        "Table 1",
        "Table 2",
        "Table 3",
        "Table 4",
        "How these figures were obtained",
    ] {
        assert!(stdout.contains(t), "{t} missing from the output:\n{stdout}");
    }
    for f in ["results.json", "report.txt", "downloads.svg"] {
        assert!(out.path().join(f).is_file(), "{f} not written");
    }
    // (The client agent runs only in the schemes where the client tunnels itself; the
    // static return path only where the data path is not linked to the coordinator.)
    let nat = extra.contains(&"4.3");
    let linked = !extra.contains(&"--static-route");
    for role in [
        "coordinator",
        "targetdns",
        "clientdns",
        "altgw",
        "proxy1",
        if linked {
            "target-control"
        } else {
            "target-agent"
        },
        "target-services",
        if nat { "proxy2" } else { "client1-agent" },
    ] {
        let log = out.path().join("logs").join(format!("{role}.log"));
        assert!(log.is_file(), "no log for {role}");
    }

    let r: Results =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let (d, da) = (cond(Route::Direct, false), cond(Route::Direct, true));
    let (i, ia) = (cond(Route::Indirect, false), cond(Route::Indirect, true));
    for proto in [Proto::Bulk, Proto::Http] {
        let p = Probe::Download {
            proto,
            size: 250_000,
        };
        // Direct under attack: far worse than direct.
        assert!(
            median(&r, p, da) > 3.0 * median(&r, p, d),
            "{p:?}: the attack did not hurt the direct route:\n{stdout}"
        );
        // Indirect under attack: finished, and about as fast as without the attack.
        assert!(
            matches!(
                r.summary(Metric::Condition {
                    probe: p,
                    condition: ia
                }),
                Summary::Median { .. }
            ),
            "{p:?}: no finished download over the indirect route under attack:\n{stdout}"
        );
        assert!(
            median(&r, p, ia) < 2.0 * median(&r, p, i) + 0.2,
            "{p:?}: the indirect route suffered from the attack:\n{stdout}"
        );
    }
    // With the coordinator in the run, its divert is reported: a number (a run that
    // missed it exits non-zero, above).
    if linked {
        let divert = r
            .samples
            .iter()
            .find(|s| s.metric == Metric::Divert)
            .expect("a divert sample");
        assert!(
            matches!(divert.outcome, Outcome::Ok { seconds } if seconds > 0.0),
            "{:?}",
            divert.outcome
        );
    }
    (r, stdout)
}

/// Adversary mode: under the flood the attackers also go for SCOLD itself (a scan for
/// the hidden gateway, a connection flood at the client's proxy's admission port, a
/// member's `register` flood, a revoked proxy, the coordinator killed as the client's
/// proxy dies) while the client downloads through its tunnel. The run exits non-zero
/// if any attack got through; each must be reported as held, with what it tried.
#[test]
fn adversary_mode_attacks_on_scold_itself_get_nowhere() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let out = tempfile::tempdir().unwrap();
    let routes_before = host_lab_routes();
    let mut args: Vec<std::ffi::OsString> = [
        "lab",
        "--adversary",
        "--reps",
        "1",
        "--pings",
        "3",
        "--sizes",
        "100k",
        "--attack-timeout",
        "4",
        "--failover-reps",
        "1",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(out.path().into());
    let run = run_lab(&args, 200);
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    assert!(
        run.status.success(),
        "scold lab --adversary failed:\n{stderr}\n{stdout}"
    );
    assert_left_nothing(&run, 8, &routes_before);
    let r: Results =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let names: Vec<&str> = r.attacks.iter().map(|a| a.name.as_str()).collect();
    for want in [
        "downloads through the indirect route",
        "scan for the hidden gateway",
        "admission port",
        "register flood",
        "revoked while connected",
        "coordinator killed",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no attack {want:?} in {names:?}"
        );
    }
    for a in &r.attacks {
        assert!(a.held, "{} got through: {}\n{stdout}", a.name, a.achieved);
        assert!(!a.tried.is_empty() && !a.achieved.is_empty(), "{a:?}");
    }
    assert!(stdout.contains("Attacks on SCOLD itself"), "{stdout}");
    // The gateway scan sent probes and none came back.
    let scan = r
        .attacks
        .iter()
        .find(|a| a.name.contains("hidden gateway"))
        .unwrap();
    assert!(scan.achieved.contains("no packet came back"), "{scan:?}");
}
