//! An attacker who targets SCOLD itself: from one address of the client site it opens
//! about 1,100 TLS connections to the admission port of each proxy and holds them idle.
//! A legitimate client agent on another address (10.8.0.1) must still be admitted, and
//! the proxies must not take the burst for an attack on themselves.
//!
//! Needs root, `ip`, `ping`, `socat`, `curl`, `getent`, `python3`, `timeout` and a
//! built binary (`cargo build -p scold`, or SCOLD_BIN).

use std::time::{Duration, Instant};

mod common;
use common::consortium::{client_asks_agent, consortium, start_linked, ConsortiumNet, Linked};

/// Opens up to `argv[3]` TLS connections from `argv[1]` to `argv[2]`:5443 (no
/// certificate check: it is the attacker), holds them `argv[4]` seconds, closes them.
/// Every connect and handshake is bounded by a 1 s timeout.
const ATTACKER: &str = r#"
import socket, ssl, sys, time, resource
src, dst, n, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
held, tcp_ok, tls_ok = [], 0, 0
for i in range(n):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.bind((src, 0))
        s.connect((dst, 5443))
        tcp_ok += 1
        t = ctx.wrap_socket(s)
        tls_ok += 1
        held.append(t)
    except Exception:
        held.append(s)
print(f"opened tcp={tcp_ok} tls={tls_ok} of {n}", flush=True)
time.sleep(hold)
for s in held:
    try:
        s.close()
    except Exception:
        pass
print("closed", flush=True)
"#;

fn chosen_proxy(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("indirect route up"))
        .and_then(|l| l.split("proxy=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
}

#[test]
fn one_host_holding_idle_connections_does_not_block_admission() {
    let mut net = consortium(
        true,
        &[
            ("curl", "curl"),
            ("getent", "libc-bin"),
            ("python3", "python3"),
        ],
    );
    client_asks_agent(&mut net);
    // Self-defence as in the drain test: 1500 packets/s for a second on the link from
    // the client site is an attack; the CPU is left out (the test machine's load is not).
    let defence = "[selfdefence]\ninterface = \"{client_link}\"\nrx_pps_max = 1500.0\nsustain_ms = 1000\nrecover_ms = 3000\ncpu_busy_max = 2.0\ninterval_ms = 200\n";
    start_linked(
        &mut net,
        &Linked {
            proxy_extra: Some(("*", defence)),
            ..Linked::SCHEME_41
        },
    );
    let www = net.path("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), "scold-target-page\n").expect("index");
    let www = www.display().to_string();
    net.spawn(
        "t",
        "http",
        &[
            "timeout",
            "200",
            "python3",
            "-m",
            "http.server",
            "80",
            "--bind",
            "10.4.0.2",
            "--directory",
            &www,
        ],
    );
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);

    // The attacker: 10.1.0.2 and 10.5.0.2 (the client site's link addresses, another
    // network than the agent's 10.8.0.1) at p1 and p2, 1,100 connections each, held
    // 40 s, every process bounded by `timeout`.
    let script = net.write("attacker.py", ATTACKER);
    let script = script.display().to_string();
    for (label, src, dst) in [
        ("atk1", "10.1.0.2", "10.1.0.1"),
        ("atk2", "10.5.0.2", "10.5.0.1"),
    ] {
        net.spawn(
            "c",
            label,
            &["timeout", "90", "python3", &script, src, dst, "1100", "40"],
        );
    }
    let end = Instant::now() + Duration::from_secs(60);
    while !(net.log("atk1").contains("opened") && net.log("atk2").contains("opened")) {
        assert!(
            Instant::now() < end,
            "the attackers did not finish opening:\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // While they hold their connections, the agent is admitted: an application's lookup
    // brings the indirect route up and curl reaches the target.
    let end = Instant::now() + Duration::from_secs(25);
    let page = loop {
        let page = net.out("c", "curl -s --max-time 3 http://www.example.net/");
        if page.contains("scold-target-page") || Instant::now() >= end {
            break page;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        page.contains("scold-target-page"),
        "no admission while one host holds idle connections: {page}\n{}",
        net.logs()
    );
    assert!(
        chosen_proxy(&net.log("client")).is_some(),
        "{}",
        net.log("client")
    );
    // The door refused the attacker's connections and counted them.
    let proxies = format!("{}{}", net.log("p1"), net.log("p2"));
    assert!(
        proxies.contains("admission_per_source"),
        "no refusal at the admission door:\n{proxies}"
    );
    // The burst is not an attack on the proxy itself.
    assert!(
        !proxies.contains("under a severe attack"),
        "a proxy took the admission burst for an attack:\n{proxies}"
    );
    assert!(
        !net.ctl("events --limit 200").contains("proxy_attacked"),
        "{}",
        net.ctl("events --limit 200")
    );
}
