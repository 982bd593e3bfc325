//! What the lab's process-level tests share: the host's view of a lab run's namespaces
//! and processes, and a run of `scold` watched from outside. The binary, root check,
//! process clean-up and waits come from `scold_testkit`.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeSet;
use std::time::Duration;

use scold_lab::topology::{NETNS_DIR, NETNS_ETC_DIR};
use scold_testkit::{scold_bin, wait_for, Proc};

/// The arguments of a short `scold lab` run (one repetition, five pings, one small
/// transfer, short waits), to which each test adds its own.
pub const SHORT_RUN: [&str; 11] = [
    "lab",
    "--reps",
    "1",
    "--pings",
    "5",
    "--sizes",
    "250k",
    "--attack-timeout",
    "4",
    "--divert-wait",
    "10",
];

/// Names in `dir` that start with `prefix`.
pub fn names_in(dir: &str, prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces of the lab run by process `pid`.
pub fn namespaces_of_pid(pid: u32) -> BTreeSet<String> {
    names_in(NETNS_DIR, &format!("scoldlab-{pid}-"))
}

/// The `/etc/netns` folders (resolv.conf) of the lab run by process `pid`.
pub fn etc_netns_of_pid(pid: u32) -> BTreeSet<String> {
    names_in(NETNS_ETC_DIR, &format!("scoldlab-{pid}-"))
}

/// The host folders of files (certificates, keys, configs) of the run by process `pid`.
pub fn files_dirs_of_pid(pid: u32) -> BTreeSet<String> {
    names_in(
        &std::env::temp_dir().display().to_string(),
        &format!("scoldlab-{pid}-"),
    )
}

pub fn pids_in(ns: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), so a
/// reused PID is not taken for the same process; `None` once it is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    f.nth(18)?.parse().ok()
}

/// Every process seen in the run's namespaces, with its start time.
pub fn processes_of_pid(pid: u32) -> BTreeSet<(u32, u64)> {
    let mut out = BTreeSet::new();
    for ns in namespaces_of_pid(pid) {
        for p in pids_in(&ns) {
            if let Some(t) = start_time(p) {
                out.insert((p, t));
            }
        }
    }
    out
}

/// Those of `seen` that still run.
pub fn still_running(seen: &BTreeSet<(u32, u64)>) -> Vec<u32> {
    seen.iter()
        .filter(|(p, t)| start_time(*p) == Some(*t))
        .map(|(p, _)| *p)
        .collect()
}

/// Host routes or rules that mention the lab's address range (198.18.0.0/15): the lab
/// must never leave one (it never creates one).
pub fn host_lab_routes() -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["route", "show", "table", "all"][..],
        &["rule", "show"][..],
    ] {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2)");
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("198.18.") || l.contains("198.19."))
                .map(String::from),
        );
    }
    out
}

/// A finished run of `scold` with the lab's namespaces: its exit, its output, and every
/// process seen in its namespaces while it ran.
pub struct LabRun {
    pub pid: u32,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub seen: BTreeSet<(u32, u64)>,
}

/// Runs the `scold` binary with `args` until it exits (at most `secs`, else the test
/// fails and the run is killed), noting every process in its namespaces meanwhile.
pub fn run_lab(args: &[std::ffi::OsString], secs: u64) -> LabRun {
    use std::io::Read as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let child = std::process::Command::new(scold_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start scold");
    // Stopped on drop, so a failing assertion leaves no lab process running.
    let mut child = Proc::adopt("scold", child);
    let pid = child.pid();
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
    let finished = wait_for(Duration::from_secs(secs), || {
        child.child().try_wait().unwrap().is_some()
    });
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(finished, "scold {args:?} did not finish within {secs} s");
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut o) = child.child().stdout.take() {
        o.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut e) = child.child().stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    let status = child.child().wait().unwrap();
    let seen = seen.lock().unwrap().clone();
    LabRun {
        pid,
        status,
        stdout,
        stderr,
        seen,
    }
}

/// Asserts that a finished run left nothing: namespaces, their /etc folders, file
/// folders, processes (it must have run at least `min_processes`), host routes.
pub fn assert_left_nothing(run: &LabRun, min_processes: usize, routes_before: &[String]) {
    let pid = run.pid;
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "{:?}",
        namespaces_of_pid(pid)
    );
    assert!(
        etc_netns_of_pid(pid).is_empty(),
        "{:?}",
        etc_netns_of_pid(pid)
    );
    assert!(
        files_dirs_of_pid(pid).is_empty(),
        "{:?}",
        files_dirs_of_pid(pid)
    );
    assert!(
        run.seen.len() >= min_processes,
        "only {} processes seen in the run's namespaces: were the roles real processes?",
        run.seen.len()
    );
    let left = still_running(&run.seen);
    assert!(left.is_empty(), "processes {left:?} outlived the run");
    assert_eq!(host_lab_routes(), routes_before, "host routes changed");
}
