//! `scold lab bench` end to end, short: two timed set-ups and two failovers on a fresh
//! testbed, every sample present and successful, nothing left behind. It checks that
//! the benchmark works, never how fast the figures are.
//!
//! Runs the real `scold` binary (`cargo build -p scold` first, as CI does).

mod common;

use common::*;
use scold_testkit::require_root;

/// The outcomes of the samples of `metric` in bench.json.
fn outcomes(bench: &serde_json::Value, metric: &str) -> Vec<String> {
    bench["samples"]
        .as_array()
        .expect("bench.json has samples")
        .iter()
        .filter(|s| s["metric"] == metric)
        .map(|s| s["outcome"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn bench_times_set_up_and_failover_and_leaves_nothing() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let routes_before = host_lab_routes();
    let mut args: Vec<std::ffi::OsString> = [
        "lab",
        "bench",
        "--runs",
        "2",
        "--failover-runs",
        "2",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(out.path().into());
    let run = run_lab(&args, 150);
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    assert!(
        run.status.success(),
        "scold lab bench failed:\n{stderr}\n{stdout}"
    );

    // Every timed run produced its figure.
    let text = std::fs::read_to_string(out.path().join("bench.json")).expect("bench.json");
    let bench: serde_json::Value = serde_json::from_str(&text).expect("bench.json is JSON");
    for (metric, n) in [("alarm_to_first_packet", 2), ("failover", 2)] {
        let o = outcomes(&bench, metric);
        assert_eq!(o, vec!["ok"; n], "{metric}: {o:?}\n{stdout}\n{stderr}");
    }
    assert!(
        out.path().join("bench.txt").is_file(),
        "bench.txt not written"
    );
    assert!(
        stdout.contains("set-up") && stdout.contains("failover"),
        "{stdout}"
    );

    // Nothing left behind.
    assert_left_nothing(&run, 8, &routes_before);
}
