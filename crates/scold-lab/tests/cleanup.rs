//! Clean-up after failures. Its own test binary: it compares the host's namespace list
//! before and after, which tests building testbeds in parallel would disturb.
//!
//! The process tests run the real `scold` binary (`cargo build -p scold` first).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::*;
use scold_lab::topology::{Spec, Topology, NETNS_DIR};
use scold_testkit::{require_root, scold_bin, send_signal, wait_for, Proc, Signal};
use std::time::Duration;

fn two_hosts_via_router() -> Spec {
    let mut s = Spec::new();
    s.host("a").router("r").host("b");
    s.link(
        "ar",
        ("a", "eth0", "198.18.10.2/24"),
        ("r", "to-a", "198.18.10.1/24"),
    )
    .unwrap();
    s.link(
        "rb",
        ("r", "to-b", "198.18.11.1/24"),
        ("b", "eth0", "198.18.11.2/24"),
    )
    .unwrap();
    s.route("a", None, Ipv4Addr::new(198, 18, 10, 1));
    s.route("b", None, Ipv4Addr::new(198, 18, 11, 1));
    s
}

#[test]
fn failed_build_removes_partial_state() {
    let mut s = two_hosts_via_router();
    // Valid on paper, refused by the kernel: a second default route, which `ip route
    // add` refuses after the namespaces and links exist.
    s.route("a", None, Ipv4Addr::new(198, 18, 10, 1));
    let before: BTreeSet<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let err = match Topology::build(s) {
        Ok(_) => panic!("a duplicate default route must fail"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("route"), "{err}");
    let after: BTreeSet<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("scoldlab-{}-", std::process::id())))
                .collect()
        })
        .unwrap_or_default();
    let leaked: Vec<_> = after.difference(&before).collect();
    assert!(leaked.is_empty(), "partial build left {leaked:?}");
}

#[test]
fn sigint_to_a_running_lab_removes_everything() {
    sigint_removes_everything(&[], &["target", "proxy1"], 6);
}

/// `--coordinators 3`: the etcd members, every coordinator replica and TargetDNS's
/// secondary go with the rest.
#[test]
fn sigint_to_a_replicated_lab_removes_etcd_and_every_replica() {
    sigint_removes_everything(
        &["--coordinators", "3"],
        &[
            "etcd1",
            "etcd2",
            "etcd3",
            "coordinator",
            "coordinator2",
            "coordinator3",
            "targetdns2",
            "target",
        ],
        12,
    );
}

/// Starts `scold lab` with `extra` options, waits until each node of `nodes` runs a
/// process (and `min` processes run in all), interrupts it and checks that nothing of
/// it is left.
fn sigint_removes_everything(extra: &[&str], nodes: &[&str], min: usize) {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(scold_bin())
        .args([
            "lab", "--reps", "50", "--pings", "2", "--sizes", "100k", "--quiet",
        ])
        .args(extra)
        .arg("--out")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start scold lab");
    let mut child = Proc::adopt("scold lab", child);
    let pid = child.pid();
    // Wait until every role runs: the target's services are the last to start.
    assert!(
        wait_for(Duration::from_secs(45), || nodes
            .iter()
            .all(|n| !pids_in(&format!("scoldlab-{pid}-0-{n}")).is_empty())),
        "the lab never started its roles in {nodes:?}"
    );
    let inside = processes_of_pid(pid);
    assert!(inside.len() >= min, "too few role processes: {inside:?}");
    assert!(
        !etc_netns_of_pid(pid).is_empty(),
        "no client resolv.conf written"
    );
    child.signal(Signal::Int).expect("SIGINT to scold lab");
    assert!(
        wait_for(Duration::from_secs(30), || child
            .child()
            .try_wait()
            .unwrap()
            .is_some()),
        "the lab did not exit within 30 s of SIGINT"
    );
    let status = child.child().wait().unwrap();
    assert!(!status.success(), "an interrupted lab must exit non-zero");
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "namespaces left after SIGINT: {:?}",
        namespaces_of_pid(pid)
    );
    assert!(
        etc_netns_of_pid(pid).is_empty(),
        "/etc/netns folders left after SIGINT: {:?}",
        etc_netns_of_pid(pid)
    );
    assert!(
        files_dirs_of_pid(pid).is_empty(),
        "{:?}",
        files_dirs_of_pid(pid)
    );
    let left = still_running(&inside);
    assert!(left.is_empty(), "processes {left:?} still run after SIGINT");
    assert!(host_lab_routes().is_empty(), "{:?}", host_lab_routes());
}

/// A role that dies mid-run fails the run, which names it and still removes everything.
#[test]
fn a_role_dying_fails_the_run_and_removes_everything() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(scold_bin())
        .args([
            "lab",
            "--reps",
            "30",
            "--pings",
            "2",
            "--sizes",
            "100k",
            "--proxies",
            "1",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start scold lab");
    let mut child = Proc::adopt("scold lab", child);
    let pid = child.pid();
    let proxy_ns = format!("scoldlab-{pid}-0-proxy1");
    let target_ns = format!("scoldlab-{pid}-0-target");
    assert!(
        wait_for(Duration::from_secs(30), || !pids_in(&target_ns).is_empty()
            && !pids_in(&proxy_ns).is_empty()),
        "the lab never started its roles"
    );
    let inside = processes_of_pid(pid);
    // The proxy dies as a crashed daemon does.
    for p in pids_in(&proxy_ns) {
        // A process the lab started inside its own namespace.
        let _ = send_signal(p, Signal::Kill);
    }
    assert!(
        wait_for(Duration::from_secs(90), || child
            .child()
            .try_wait()
            .unwrap()
            .is_some()),
        "the lab did not notice its proxy died within 90 s"
    );
    let mut err = String::new();
    use std::io::Read;
    child
        .child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.child().wait().unwrap();
    assert!(
        !status.success(),
        "a run whose proxy died must fail:\n{err}"
    );
    assert!(
        err.contains("proxy1") && err.contains("scold proxy"),
        "the error does not name the role that died:\n{err}"
    );
    assert!(
        out.path().join("logs").join("proxy1.log").is_file(),
        "the role's log was not kept"
    );
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "namespaces left after a failed run: {:?}",
        namespaces_of_pid(pid)
    );
    assert!(etc_netns_of_pid(pid).is_empty());
    assert!(
        files_dirs_of_pid(pid).is_empty(),
        "{:?}",
        files_dirs_of_pid(pid)
    );
    let left = still_running(&inside);
    assert!(
        left.is_empty(),
        "processes {left:?} still run after a failed run"
    );
}

#[test]
fn cleanup_removes_what_a_killed_lab_left() {
    require_root();
    let child = std::process::Command::new(scold_bin())
        .args(["lab", "up", "--proxies", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start scold lab");
    let mut child = Proc::adopt("scold lab", child);
    let pid = child.pid();
    assert!(
        wait_for(Duration::from_secs(30), || namespaces_of_pid(pid).len()
            >= 10),
        "the lab never built its testbed"
    );
    // Let the build finish, then kill it so hard it cannot clean up.
    std::thread::sleep(Duration::from_millis(500));
    let stray = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("scoldlab-{pid}-0-target"),
            "sleep",
            "300",
        ])
        .spawn()
        .unwrap();
    let mut stray = Proc::adopt("stray sleep", stray);
    let stray_pid = stray.pid();
    // What a scenario run writes outside its namespaces: a client's resolv.conf.
    let etc = std::path::Path::new(scold_lab::topology::NETNS_ETC_DIR)
        .join(format!("scoldlab-{pid}-0-client1"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 198.18.1.2\n").unwrap();
    // And its folder of certificates and configs.
    let files = scold_lab::topology::files_dir_of(&format!("scoldlab-{pid}-0"));
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("coordinator.toml"), "# left by a killed run\n").unwrap();
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let left = namespaces_of_pid(pid);
    assert!(!left.is_empty(), "SIGKILL cannot have cleaned up");
    let out = std::process::Command::new(scold_bin())
        .args(["lab", "cleanup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for ns in &left {
        assert!(
            text.contains(ns.as_str()),
            "cleanup did not report {ns}: {text}"
        );
    }
    assert!(namespaces_of_pid(pid).is_empty(), "cleanup left namespaces");
    assert!(
        etc_netns_of_pid(pid).is_empty(),
        "cleanup left /etc/netns folders: {:?}",
        etc_netns_of_pid(pid)
    );
    assert!(
        !files.exists(),
        "cleanup left the run's files folder {}",
        files.display()
    );
    let _ = stray.child().wait();
    assert!(
        start_time(stray_pid).is_none(),
        "cleanup left a process inside a namespace"
    );
}
