//! The namespace harness on the host: what it builds works, and nothing it made
//! outlives it, also when the test fails half-way. Needs root and iproute2.

use scold_testkit::{Net, Netns, NETNS_ETC_DIR};
use std::path::Path;

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

#[test]
fn links_carry_traffic_and_processes_log_inside_their_namespace() {
    let mut net = Net::new("tk", &["a", "b", "w"], &[("ping", "iputils-ping")]);
    net.link("a", "b", Some("10.77.0.1/24"), Some("10.77.0.2/24"));
    assert!(
        net.exec("a", "ping -n -c 1 -W 2 10.77.0.2")
            .status
            .success(),
        "no ping across the veth link"
    );
    net.bridge("w");
    net.bridge_port("w", "a");
    net.addr("a", &net.dev("aw"), "10.78.0.1/24");
    let links = net.must("w", "ip -o link show");
    assert!(links.contains(&net.dev("wa")), "{links}");
    net.spawn("b", "addrs", &["ip", "-o", "addr", "show"]);
    assert!(net.wait_exit("addrs", 10).is_some_and(|s| s.success()));
    let log = net.log("addrs");
    assert!(
        log.contains("10.77.0.2") && !log.contains("10.77.0.1"),
        "{log}"
    );
    net.resolv_conf("a", "nameserver 127.0.0.53\n");
    assert!(net.out("a", "cat /etc/resolv.conf").contains("127.0.0.53"));
}

#[test]
fn a_failed_test_leaves_no_namespace_process_or_file() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let mut net = Net::new("tk", &["x", "y"], &[]);
        net.link("x", "y", None, None);
        net.resolv_conf("x", "nameserver 127.0.0.1\n");
        net.spawn("x", "sleeper", &["sleep", "300"]);
        *seen.lock().unwrap() = Some((
            [net.ns("x"), net.ns("y")],
            net.pid("sleeper"),
            net.dir().to_path_buf(),
        ));
        panic!("deliberate failure half-way");
    });
    assert!(result.is_err());
    let (names, pid, dir) = seen.into_inner().unwrap().expect("the net was built");
    for ns in &names {
        assert!(!Netns::exists(ns), "{ns} outlived the failed test");
        assert!(!Path::new(NETNS_ETC_DIR).join(ns).exists());
    }
    assert!(!running(pid), "process {pid} outlived the failed test");
    assert!(!dir.exists(), "{} outlived the failed test", dir.display());
}

#[test]
fn one_namespace_alone_is_removed_on_drop() {
    let ns = Netns::new("tk1");
    let name = ns.name().to_string();
    assert!(Netns::exists(&name));
    let lo = ns.must_run("ip", &["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    drop(ns);
    assert!(!Netns::exists(&name));
}
