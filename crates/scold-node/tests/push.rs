//! Scheme 4.2 end to end with real processes in network namespaces: `scold ca`,
//! `scold dns`, `scold resolver`, `scold coordinator`, `scold gateway`, two
//! `scold proxy`, `scold target` and a `scold client` agent holding a client
//! certificate, linked to the coordinator.
//!
//! - `scold ctl divert` of a scheme-4.2 target: the coordinator assigns the client to a
//!   proxy; that proxy pushes the route; the client reaches the target (ping by address
//!   and a TCP fetch) with no DNS lookup by any application.
//! - A second registered client site that nobody can reach is left out (audited) and
//!   does not hold the divert up.
//! - A TLS client with a proxy certificate of another CA is refused at the handshake; a
//!   `scold proxy` with a consortium proxy certificate whose address is not in the ALT
//!   set is refused by the agent (typed refusal `not_in_alt_set`); the route is intact.
//! - The assigned proxy is killed: the coordinator resets the target to the other proxy,
//!   which pushes to the moved client; the client reaches the target through it.
//! - The client agent restarts while the target is diverted: on its registration the
//!   coordinator has its proxy push again.
//! - `scold ctl restore`: the proxy withdraws the push and the route goes.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `openssl`, `sha256sum`,
//! `timeout` (coreutils) and a built binary (`cargo build -p scold`, or SCOLD_BIN).

use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::consortium::{
    consortium, flood_proxy, start_linked, start_paced_download, ConsortiumNet, Linked,
};
use common::*;
use scold_testkit::{must, require_tool, scold_bin, Net};

/// The tests build seven namespaces each; one at a time keeps a 2-core machine usable.
static SERIAL: Mutex<()> = Mutex::new(());

/// The topology of [`consortium`] with the client host's own address and its link to
/// the control namespace.
fn net() -> Net {
    consortium(true, &[("openssl", "openssl")])
}

/// Every process of the scheme-4.2 system; see [`start_linked`].
fn start(net: &mut Net, extra: Option<(&str, &str)>, site2_push: bool) {
    start_linked(
        net,
        &Linked {
            scheme: "4.2",
            proxy_extra: extra,
            site2_push,
            admission_extra: "",
        },
    );
}

/// Proxy name and public address of the proxy the coordinator assigns site1 to.
fn assigned() -> (&'static str, &'static str) {
    let a = scold_control::orchestrate::assign_clients(
        &["p1".to_string(), "p2".to_string()],
        &["site1".to_string()],
    );
    let p = a
        .iter()
        .find(|(_, c)| c.contains(&"site1".to_string()))
        .map(|(p, _)| p.as_str())
        .expect("assigned");
    if p == "p1" {
        ("p1", "10.1.0.1")
    } else {
        ("p2", "10.5.0.1")
    }
}

#[test]
fn proxies_push_routes_to_client_agents() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    start(&mut net, None, false);
    assert!(!net.ping(1), "ping reached the target before any divert");

    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    net.wait_log("coordinator", "client agent not reached", 20);
    let (proxy, address) = assigned();
    let other = if proxy == "p1" { "p2" } else { "p1" };
    net.wait_log(proxy, "route pushed to the client agent", 20);
    net.wait_log("client", "indirect route pushed by proxy", 20);
    let client_log = net.log("client");
    let line = client_log
        .lines()
        .find(|l| l.contains("indirect route pushed by proxy"))
        .unwrap_or_default();
    assert!(line.contains(address), "pushed by another proxy: {line}");
    assert!(
        !net.log(other).contains("route pushed to the client agent"),
        "the client was pushed by both proxies\n{}",
        net.logs()
    );
    net.wait_ping();
    net.fetch("fetched-1.bin");
    // The route is a host route into the agent's tunnel, from the host's address.
    let route = net.exec("c", "ip route get 10.4.0.2");
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(
        route.contains(&format!("dev sc{}", net.suffix())) && route.contains("src 10.8.0.1"),
        "{route}"
    );
    // Nobody asked the agent's stub resolver anything: the route came by the push.
    assert!(
        !client_log.contains("indirect route up"),
        "a 4.1 admission happened:\n{client_log}"
    );

    // A proxy certificate of another CA: refused at the agent's TLS handshake.
    let bin = scold_bin().display().to_string();
    let ca2 = net.p("ca2");
    let certs2 = net.p("certs2");
    must(&format!("{bin} ca --dir {ca2} init"));
    must(&format!(
        "{bin} ca --dir {ca2} issue --role proxy --name p1 --out {certs2}"
    ));
    // `sleep 1`: keep the connection open long enough to read the agent's alert, which
    // TLS 1.3 sends after the client's certificate.
    let o = net.exec(
        "a",
        &format!(
            "sh -c 'sleep 1 | timeout 5 openssl s_client -tls1_3 -connect 10.8.0.1:5444 -cert {certs2}/proxy-p1.crt -key {certs2}/proxy-p1.key 2>&1'"
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout).to_lowercase();
    let end = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let log = net.log("client");
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("push refused") && l.contains("TLS handshake"))
        {
            break l.to_string();
        }
        assert!(
            Instant::now() < end,
            "the agent did not refuse a foreign certificate\nopenssl: {out}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refusal.contains("10.1.0.1"), "{refusal}");
    assert!(
        out.contains("alert") || out.contains("unknown ca") || out.contains("errno"),
        "openssl saw no refusal:\n{out}"
    );

    // A consortium proxy (p3) whose address is not in the ALT set: refused by the agent
    // after it looked the ALT set up; the proxy's push fails with that typed refusal.
    let rogue = net.write(
        "p3.toml",
        &format!(
            "[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:51822\"\n\
             [admission]\nlisten = \"0.0.0.0:5446\"\nca = \"{0}/ca.crt\"\ncert = \"{0}/proxy-p3.crt\"\nkey = \"{0}/proxy-p3.key\"\n\
             [[pushes]]\nclient = \"site1\"\nagent = \"10.8.0.1:5444\"\nfqdn = \"www.example.net.\"\ntargets = [\"10.4.0.2\"]\n",
            net.p("certs")
        ),
    );
    net.scold("k", "p3", "proxy", &rogue);
    net.wait_log("p3", "NotInAltSet", 20);
    assert!(
        net.log("client").contains("not in the ALT set"),
        "{}",
        net.log("client")
    );
    assert!(net.ping(2), "the pushed route broke after refused pushes");
    let route = net.exec("c", "ip route get 10.4.0.2");
    assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("dev sc{}", net.suffix())));

    // Proxy reset: the assigned proxy dies; the coordinator takes it out of the set and
    // the other proxy pushes to the moved client before the lost one is torn down.
    let other_address = if other == "p1" {
        "10.1.0.1"
    } else {
        "10.5.0.1"
    };
    net.kill9(proxy);
    net.wait_phase("diverted", &[other], 30);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = net.log("client");
        let moved = log
            .lines()
            .filter(|l| l.contains("indirect route pushed by proxy"))
            .any(|l| l.contains(other_address));
        if moved {
            break;
        }
        assert!(
            Instant::now() < end,
            "{other} never pushed to the moved client\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    net.wait_log(other, "route pushed to the client agent", 10);
    net.wait_ping();
    net.fetch("fetched-2.bin");

    // The client agent restarts while the target is diverted: it leaves routing as it
    // found it, registers again, and the coordinator has its proxy push at once.
    net.stop("client");
    let r = net.exec("c", "ip route get 10.4.0.2");
    assert!(
        !String::from_utf8_lossy(&r.stdout).contains(&format!("dev sc{}", net.suffix())),
        "the agent left its route behind"
    );
    let client_cfg = net.p("client.toml");
    net.scold("c", "client", "client", &client_cfg);
    net.wait_log("client", "indirect route pushed by proxy", 20);
    net.wait_ping();

    // Restore: ALT withdrawn, the proxy withdraws its push, the route goes.
    net.ctl("restore web");
    net.wait_phase("normal", &[], 40);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let r = net.exec("c", "ip route get 10.4.0.2");
        let r = String::from_utf8_lossy(&r.stdout).into_owned();
        if !r.contains(&format!("dev sc{}", net.suffix())) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the pushed route outlived the restore: {r}\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !net.ping(1),
        "the target is still reachable after the restore"
    );
}

/// How the assigned proxy fails in [`transfer_across_reset`].
enum Failure {
    /// SIGKILL: the coordinator finds it silent.
    Killed,
    /// A flood at it: its self-defence reports the attack (ProxyAttacked).
    Attacked,
}

/// Scheme 4.2, L3 mode: a paced TCP download from the target runs through the proxy that
/// pushed the route; that proxy fails; the coordinator resets the target to the other
/// proxy (4.4), which pushes to the client. The connection (client host 10.8.0.1 to the
/// target 10.4.0.2, neither address changes) finishes with the right checksum.
fn transfer_across_reset(failure: Failure) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    require_tool("python3", "python3");
    let (proxy, _) = assigned();
    let other = if proxy == "p1" { "p2" } else { "p1" };
    let other_address = if other == "p1" {
        "10.1.0.1"
    } else {
        "10.5.0.1"
    };
    let (victim_address, dev) = if proxy == "p1" {
        ("10.1.0.1", net.dev("ac"))
    } else {
        ("10.5.0.1", net.dev("bc"))
    };
    // Self-defence watches the link from the client site; the download's own
    // acknowledgements (a few hundred packets/s at this pace) stay below its threshold.
    let defence = format!(
        "[selfdefence]\ninterface = \"{dev}\"\nrx_pps_max = 1500.0\nsustain_ms = 1000\nrecover_ms = 60000\ncpu_busy_max = 2.0\ninterval_ms = 200\n"
    );
    let extra = match failure {
        Failure::Killed => None,
        Failure::Attacked => Some((proxy, defence.as_str())),
    };
    start(&mut net, extra, false);
    // 12 MiB at 1.5 MB/s: about 8 s.
    let big = net.path("big.bin");
    must(&format!(
        "head -c 12582912 /dev/urandom > {}",
        big.display()
    ));
    let file = format!("FILE:{}", big.display());
    net.spawn(
        "t",
        "big-server",
        &["socat", "-U", "TCP-LISTEN:8081,reuseaddr,fork", &file],
    );
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    net.wait_log("client", "indirect route pushed by proxy", 20);
    net.wait_ping();

    let (out, at_failure) = start_paced_download(&mut net);
    let t0 = Instant::now();
    match failure {
        Failure::Killed => {
            net.kill9(proxy);
        }
        Failure::Attacked => flood_proxy(&mut net, "c", "10.1.0.66", victim_address),
    }
    net.wait_phase("diverted", &[other], 30);
    let end = Instant::now() + Duration::from_secs(20);
    while !net
        .log("client")
        .lines()
        .filter(|l| l.contains("indirect route pushed by proxy"))
        .any(|l| l.contains(other_address))
    {
        assert!(
            Instant::now() < end,
            "{other} never pushed to the client\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = t0.elapsed();
    if let Failure::Attacked = failure {
        let s = net.status();
        let p = s["proxies"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == proxy))
            .cloned()
            .unwrap_or_default();
        assert_eq!(p["health"], "attacked", "{s:#}");
        assert!(net.ctl("events --limit 200").contains("proxy_attacked"));
    }
    let status = net
        .wait_exit("transfer", 120)
        .unwrap_or_else(|| panic!("the transfer never ended\n{}", net.logs()));
    assert!(
        status.success(),
        "the transfer failed ({status}) across the reset:\n{}\n{}",
        net.log("transfer"),
        net.logs()
    );
    assert_eq!(
        sha256(&out),
        sha256(&big),
        "the transferred file differs from the target's"
    );
    eprintln!(
        "{proxy} failed after {at_failure} bytes; {other} pushed {} ms later; the transfer ended {} ms after the failure with the right checksum",
        moved.as_millis(),
        t0.elapsed().as_millis()
    );
}

#[test]
fn transfer_survives_a_killed_proxy() {
    transfer_across_reset(Failure::Killed);
}

#[test]
fn transfer_survives_an_attacked_proxy() {
    require_tool("hping3", "hping3");
    transfer_across_reset(Failure::Attacked);
}

/// Scheme 4.2: a client site that no proxy could reach at the divert is tried again in
/// the background; once its link is back it gets its route without registering again.
#[test]
fn unreachable_client_gets_its_push_when_it_comes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    start(&mut net, None, true);
    net.wait_log("client2", "taking route pushes from proxies", 20);
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    net.wait_log("client", "indirect route pushed by proxy", 20);
    net.wait_log("coordinator", "client agent not reached", 20);
    assert!(
        !net.log("client2")
            .contains("indirect route pushed by proxy"),
        "site2 was reached although no proxy has a route to it"
    );
    // The link comes back: both proxies can reach 10.8.0.2 now.
    net.route("a", "10.8.0.2/32 via 10.1.0.2");
    net.route("b", "10.8.0.2/32 via 10.5.0.2");
    net.wait_log("client2", "indirect route pushed by proxy", 40);
    net.wait_log(
        "coordinator",
        "route pushed to a client agent on a later try",
        5,
    );
    let line = net
        .log("coordinator")
        .lines()
        .find(|l| l.contains("on a later try"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("site2"), "{line}");
    // site2 did not register again: one registration in its log.
    assert_eq!(
        net.log("client2")
            .matches("registered with the coordinator")
            .count(),
        1,
        "{}",
        net.log("client2")
    );
}
