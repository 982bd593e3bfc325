//! Builds real testbeds in network namespaces (root needed) and checks that they work
//! and that tear-down leaves nothing behind.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scold_lab::fig8::{self, Fig8, Fig8Options};
use scold_lab::measure;
use scold_lab::topology::{Spec, Tbf, Topology, NETNS_DIR};

fn lab_namespaces_of(id: &str) -> BTreeSet<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{id}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit_once(") ").unwrap().1.chars().next().unwrap();
            st != 'Z'
        })
        .unwrap_or(false)
}

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
fn build_and_teardown_leave_nothing() {
    let topo = Topology::build(two_hosts_via_router()).expect("build");
    let id = topo.id().to_string();
    assert_eq!(lab_namespaces_of(&id).len(), 3);
    // A process inside a node, started through the topology.
    let mut cmd = topo.command("b", "sleep").unwrap();
    cmd.arg("300");
    let p = topo.spawn("sleeper", &mut cmd).unwrap();
    let pid = p.pid();
    assert!(alive(pid));
    // A process started behind the topology's back (not recorded) is found by namespace.
    let mut stray = std::process::Command::new("ip")
        .args(["netns", "exec", topo.netns("a").unwrap(), "sleep", "300"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stray_pid = stray.id();
    std::mem::forget(p); // the topology alone must stop it
    topo.teardown().expect("teardown");
    assert!(lab_namespaces_of(&id).is_empty(), "namespaces left behind");
    assert!(!alive(pid), "recorded process left running");
    let _ = stray.wait();
    assert!(!alive(stray_pid), "process in a namespace left running");
}

#[test]
fn panic_midway_still_cleans_up() {
    let id = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let topo = Topology::build(two_hosts_via_router()).expect("build");
        *id.lock().unwrap() = topo.id().to_string();
        panic!("deliberate failure mid-test");
    });
    assert!(result.is_err());
    let id = id.into_inner().unwrap();
    assert!(!id.is_empty());
    assert!(
        lab_namespaces_of(&id).is_empty(),
        "namespaces left after a panic"
    );
}

#[test]
fn ping_crosses_the_internet_router() {
    let lab = Fig8::build(Fig8Options {
        proxies: 1,
        clients: 1,
        attackers: 1,
        ..Default::default()
    })
    .expect("build");
    let client = fig8::client(1);
    for dest in [
        fig8::TARGET_ADDR,
        fig8::address_of("proxy1").unwrap(),
        fig8::address_of(fig8::ALT_GW).unwrap(),
        fig8::address_of(fig8::TARGET_DNS).unwrap(),
    ] {
        let rtts = lab
            .run_in(&client, || measure::ping(dest, 3, Duration::from_secs(2)))
            .unwrap()
            .unwrap_or_else(|e| panic!("ping {dest}: {e}"));
        assert_eq!(rtts.len(), 3, "ping {dest}");
    }
    // The alternate gateway's inside is hidden: the internet has no route there.
    let hidden = lab
        .run_in(&client, || {
            measure::ping(fig8::ALT_GW_SITE_ADDR, 1, Duration::from_millis(500))
        })
        .unwrap();
    assert!(hidden.is_err(), "the hidden segment answered: {hidden:?}");
    // And the real `ping` tool works there too (the daemons' tests use it).
    let out = lab
        .exec(
            &client,
            "ping",
            ["-c", "1", "-W", "2", &fig8::TARGET_ADDR.to_string()],
            Duration::from_secs(5),
        )
        .expect("ping (package iputils-ping) from client to target");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 received"));
    lab.teardown().unwrap();
}

#[test]
fn bottleneck_limits_the_main_link() {
    // 4 Mbit/s on the main link: a 1 MB download through it needs at least ~2 s, so
    // its rate is clearly under the veth rate, whatever the machine's speed.
    let rate_bit = 4_000_000u64;
    let lab = Fig8::build(Fig8Options {
        proxies: 0,
        clients: 1,
        attackers: 0,
        bottleneck: Tbf {
            rate_bit,
            burst_bytes: 16 * 1024,
            latency_ms: 50,
        },
    })
    .expect("build");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = lab
        .thread_in(fig8::TARGET, move || {
            scold_lab::serve::Server::bind(&scold_lab::serve::ServeConfig::default())
                .map(|s| s.run_until(stop2))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let size = 1_000_000u64;
    let s = lab
        .run_in(&fig8::client(1), || {
            measure::fetch_bulk(
                (fig8::TARGET_ADDR, scold_lab::serve::DEFAULT_BULK_PORT).into(),
                size,
                Duration::from_secs(20),
            )
        })
        .unwrap()
        .expect("bulk download across the bottleneck");
    assert_eq!(s.bytes, size);
    let rate = size as f64 * 8.0 / s.seconds;
    assert!(
        rate < rate_bit as f64 * 1.3,
        "{rate:.0} bit/s through a {rate_bit} bit/s bottleneck: tbf not in place"
    );
    eprintln!("bulk 1 MB through a {rate_bit} bit/s bottleneck: {rate:.0} bit/s");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap().expect("server");
    lab.teardown().unwrap();
}
