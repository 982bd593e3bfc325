//! Clean-up after failures. Its own test binary: it compares the host's namespace list
//! before and after, which tests building testbeds in parallel would disturb.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use scold_lab::topology::{Spec, Topology, NETNS_DIR};

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

fn namespaces_of_pid(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("scoldlab-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn pids_in(ns: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit_once(") ").unwrap().1.chars().next(),
                Some('Z' | 'X')
            )
        })
        .unwrap_or(false)
}

/// Waits until `cond` holds, at most `secs`.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// Kills the child on drop, so a failing assertion leaves no lab process running.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigint_to_a_running_lab_removes_everything() {
    let out = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_scold-lab"))
        .args([
            "lab", "--reps", "50", "--pings", "2", "--sizes", "100k", "--quiet", "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start scold-lab");
    let mut child = Reap(child);
    let pid = child.0.id();
    // Wait until the testbed is up and the target's server runs inside it.
    let target_ns = format!("scoldlab-{pid}-0-target");
    assert!(
        wait_for(30, || !pids_in(&target_ns).is_empty()),
        "the lab never started its target service"
    );
    let mut inside: Vec<u32> = Vec::new();
    for ns in namespaces_of_pid(pid) {
        inside.extend(pids_in(&ns));
    }
    assert!(!namespaces_of_pid(pid).is_empty());
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    assert!(
        wait_for(30, || child.0.try_wait().unwrap().is_some()),
        "the lab did not exit within 30 s of SIGINT"
    );
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "an interrupted lab must exit non-zero");
    assert!(
        namespaces_of_pid(pid).is_empty(),
        "namespaces left after SIGINT: {:?}",
        namespaces_of_pid(pid)
    );
    for p in inside {
        assert!(
            !running(p),
            "process {p} of the lab still runs after SIGINT"
        );
    }
}

#[test]
fn cleanup_removes_what_a_killed_lab_left() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_scold-lab"))
        .args(["lab", "up", "--proxies", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start scold-lab");
    let mut child = Reap(child);
    let pid = child.0.id();
    assert!(
        wait_for(30, || namespaces_of_pid(pid).len() >= 10),
        "the lab never built its testbed"
    );
    // Let the build finish, then kill it so hard it cannot clean up.
    std::thread::sleep(std::time::Duration::from_millis(500));
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
    let mut stray = Reap(stray);
    let stray_pid = stray.0.id();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let left = namespaces_of_pid(pid);
    assert!(!left.is_empty(), "SIGKILL cannot have cleaned up");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scold-lab"))
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
    let _ = stray.0.wait();
    assert!(
        !running(stray_pid),
        "cleanup left a process inside a namespace"
    );
}
