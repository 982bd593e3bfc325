//! Builds real testbeds in network namespaces (root needed) and checks that they work
//! and that tear-down leaves nothing behind.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{names_in, start_time};
use scold_lab::fig8::{self, Fig8, Fig8Options};
use scold_lab::measure;
use scold_lab::topology::{Spec, Tbf, Topology, NETNS_DIR};

fn lab_namespaces_of(id: &str) -> BTreeSet<String> {
    names_in(NETNS_DIR, &format!("{id}-"))
}

fn alive(pid: u32) -> bool {
    start_time(pid).is_some()
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
    let stray = std::process::Command::new("ip")
        .args(["netns", "exec", topo.netns("a").unwrap(), "sleep", "300"])
        .spawn()
        .unwrap();
    // Stopped by this test if the topology fails to.
    let mut stray = scold_testkit::Proc::adopt("stray sleep", stray);
    std::thread::sleep(Duration::from_millis(200));
    let stray_pid = stray.pid();
    std::mem::forget(p); // the topology alone must stop it
    topo.teardown().expect("teardown");
    assert!(lab_namespaces_of(&id).is_empty(), "namespaces left behind");
    assert!(!alive(pid), "recorded process left running");
    let _ = stray.child().wait();
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
fn full_duplex_bottleneck_limits_the_main_link() {
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
        duplex: fig8::Duplex::Full,
        alt_link: None,
        ..Default::default()
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

fn rx_packets(lab: &Topology, node: &str, ifname: &str) -> u64 {
    let out = lab
        .exec(
            node,
            "ip",
            ["-j", "-s", "link", "show", "dev", ifname],
            Duration::from_secs(5),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

#[test]
fn flood_stops_at_its_cap_and_refuses_outside_addresses() {
    use scold_lab::flood::{self, FloodEnd, FloodKind, FloodSpec};
    let lab = Fig8::build(Fig8Options {
        proxies: 0,
        clients: 1,
        attackers: 1,
        alt_link: None,
        ..Default::default()
    })
    .expect("build");
    let allowed = lab.prefixes();
    // The alternate gateway's uplink is not rate-limited here: every packet arrives.
    let victim = fig8::address_of(fig8::ALT_GW).unwrap();
    for kind in [FloodKind::Udp, FloodKind::Icmp, FloodKind::Syn] {
        let before = rx_packets(&lab, fig8::ALT_GW, fig8::GW_UP_IF);
        let spec = FloodSpec {
            kind,
            target: victim,
            port: 9,
            rate_pps: 2000,
            payload: 200,
            duration: Duration::from_secs(30),
            max_packets: 300,
        };
        let allowed2 = allowed.clone();
        let report = lab
            .run_in(&fig8::attacker(1), move || {
                flood::run(&spec, &allowed2, None)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{kind:?} flood: {e}"));
        assert_eq!(report.sent, 300, "{kind:?}");
        assert_eq!(report.ended_by, FloodEnd::PacketCap, "{kind:?}");
        assert!(report.seconds < 30.0, "{kind:?} ran to its duration");
        let after = rx_packets(&lab, fig8::ALT_GW, fig8::GW_UP_IF);
        assert!(
            after - before >= 300,
            "{kind:?}: only {} packets arrived",
            after - before
        );
    }
    // From inside the testbed, outside addresses are still refused.
    for outside in [
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(8, 8, 8, 8),
        Ipv4Addr::new(198, 18, 250, 1), // lab range, but no link of this testbed
    ] {
        let spec = FloodSpec {
            kind: FloodKind::Udp,
            target: outside,
            port: 9,
            rate_pps: 10,
            payload: 10,
            duration: Duration::from_secs(1),
            max_packets: 1,
        };
        let allowed2 = allowed.clone();
        let r = lab
            .run_in(&fig8::attacker(1), move || {
                flood::run(&spec, &allowed2, None)
            })
            .unwrap();
        assert!(
            matches!(r, Err(scold_lab::LabError::OutsideTestbed { .. })),
            "{outside}: {r:?}"
        );
    }
    lab.teardown().unwrap();
}

#[test]
fn half_duplex_bottleneck_is_shared_by_both_directions() {
    // The default main link shares one token bucket between both directions: a
    // download's data (outbound) and a flood (inbound) compete for it. Without the
    // flood, the download runs at most at the bottleneck rate.
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
        duplex: fig8::Duplex::Half,
        alt_link: None,
        ..Default::default()
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
    let size = 500_000u64;
    let t = lab
        .run_in(&fig8::client(1), || {
            measure::fetch_http(
                (fig8::TARGET_ADDR, scold_lab::serve::DEFAULT_HTTP_PORT).into(),
                "target",
                &scold_lab::serve::http_path(size),
                Duration::from_secs(20),
            )
        })
        .unwrap()
        .expect("HTTP download across the shared bottleneck");
    let rate = size as f64 * 8.0 / t.seconds;
    assert!(rate < rate_bit as f64 * 1.3, "{rate:.0} bit/s: not shaped");
    // Every packet of the download crossed the shaped interface.
    let out = lab
        .exec(
            fig8::WIRE,
            "tc",
            ["-s", "-j", "qdisc", "show", "dev", fig8::SHARED_IF],
            Duration::from_secs(5),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = v[0]["bytes"].as_u64().unwrap();
    assert!(
        bytes >= size,
        "only {bytes} bytes went through the shared bottleneck"
    );
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap().expect("server");
    lab.teardown().unwrap();
}
