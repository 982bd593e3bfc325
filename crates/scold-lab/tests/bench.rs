//! `scold lab bench` end to end, short: two timed set-ups and two failovers on a fresh
//! testbed, every sample present and successful, nothing left behind. It checks that
//! the benchmark works, never how fast the figures are.
//!
//! Runs the real `scold` binary (`cargo build -p scold` first, as CI does).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let child = std::process::Command::new(scold_bin())
        .args([
            "lab",
            "bench",
            "--runs",
            "2",
            "--failover-runs",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start scold lab bench");
    let mut child = Reap(child);
    let pid = child.0.id();
    // Every process that runs in the bench's namespaces, to check none outlives it.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, done) = (seen.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                seen.lock().unwrap().extend(processes_of_pid(pid));
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    assert!(
        wait_for(150, || child.0.try_wait().unwrap().is_some()),
        "scold lab bench did not finish within 150 s"
    );
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
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
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "{:?}",
        namespaces_of_pid(pid)
    );
    assert!(
        files_dirs_of_pid(pid).is_empty(),
        "{:?}",
        files_dirs_of_pid(pid)
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 8,
        "only {} processes seen in the bench's namespaces",
        seen.len()
    );
    let left = still_running(&seen);
    assert!(left.is_empty(), "processes {left:?} outlived the bench");
    assert_eq!(host_lab_routes(), routes_before, "host routes changed");
}
