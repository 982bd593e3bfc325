//! Scheme 4.1 with the whole system linked: `scold ctl divert` makes the coordinator
//! publish the ALT records in TargetDNS (`scold dns`); the proxies' NOTIFY clears the
//! client site's resolver (`scold resolver`); an unmodified application on the client
//! host (`curl`, `ping`, by name, through the host's resolv.conf pointing at the
//! `scold client` agent) reaches the target through a proxy of the ALT set. The proxy in
//! use is killed: the agent moves to the other one by itself while a ping loop runs,
//! and the coordinator resets the target to the survivor. `scold ctl restore` withdraws
//! the ALT records and the agent leaves routing as it found it.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `curl`, `getent`
//! (libc-bin), `python3`, `sha256sum`, `timeout` (coreutils) and a built binary
//! (`cargo build -p scold`, or SCOLD_BIN).

use std::time::{Duration, Instant};

mod common;
use common::consortium::{client_asks_agent, consortium, start_linked, ConsortiumNet, Linked};
use scold_testkit::Net;

/// The icmp_seq numbers that got a reply, from ping's output.
fn replied(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The proxy the agent's route went up through last, from its log.
fn chosen_proxy(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("indirect route up"))
        .and_then(|l| l.split("proxy=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
}

fn curl_page(net: &Net) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let page = net.out("c", "curl -s --max-time 3 http://www.example.net/");
        if page.contains("scold-target-page") || Instant::now() >= end {
            return page;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn divert_failover_and_restore_with_the_client_agent() {
    let mut net = consortium(
        true,
        &[
            ("curl", "curl"),
            ("getent", "libc-bin"),
            ("python3", "python3"),
        ],
    );
    // The client host's applications ask the agent.
    client_asks_agent(&mut net);
    start_linked(&mut net, &Linked::SCHEME_41);
    let www = net.path("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), "scold-target-page\n").expect("index");
    let www = www.display().to_string();
    net.spawn(
        "t",
        "http",
        &[
            "timeout",
            "300",
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
    let before = net.routing("c", false);

    // Not diverted: the name resolves, nothing carries the client to the target.
    let hosts = net.out("c", "getent hosts www.example.net");
    assert!(
        hosts.contains("10.4.0.2"),
        "getent: {hosts}\n{}",
        net.logs()
    );
    assert!(!net.ping(1), "ping reached the target before any divert");
    assert_eq!(net.routing("c", false), before);

    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 40);
    let page = curl_page(&net);
    assert!(
        page.contains("scold-target-page"),
        "curl: {page}\n{}",
        net.logs()
    );
    let ping = net.out("c", "ping -n -c 3 -i 0.2 -W 2 www.example.net");
    assert_eq!(replied(&ping).len(), 3, "ping by name: {ping}");
    let first = chosen_proxy(&net.log("client"))
        .unwrap_or_else(|| panic!("the agent logged no proxy:\n{}", net.log("client")));
    let (victim, other, other_addr) = match first.as_str() {
        "10.1.0.1" => ("p1", "p2", "10.5.0.1"),
        "10.5.0.1" => ("p2", "p1", "10.1.0.1"),
        x => panic!("the agent chose {x}, which is no proxy of the ALT set"),
    };

    // The proxy in use dies while a bounded ping loop (100 pings, 50 ms apart) runs.
    net.spawn(
        "c",
        "pingloop",
        &[
            "ping",
            "-n",
            "-c",
            "100",
            "-i",
            "0.05",
            "-W",
            "1",
            "www.example.net",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    net.kill9(victim);
    let end = t0 + Duration::from_secs(10);
    while !net.log("client").contains("failover done") {
        assert!(Instant::now() < end, "no failover:\n{}", net.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    let moved = t0.elapsed();
    // The agent's design bound: the probe time-out (600 ms here) plus one admission,
    // with room for a loaded machine. The figure itself (goal: under 1 s) is measured
    // by `scold lab bench`, not asserted here.
    assert!(
        moved <= Duration::from_secs(3),
        "the move took {} ms:\n{}",
        moved.as_millis(),
        net.log("client")
    );
    assert_eq!(
        chosen_proxy(&net.log("client")).as_deref(),
        Some(other_addr),
        "the agent did not move to {other}:\n{}",
        net.log("client")
    );
    assert!(
        net.wait_exit("pingloop", 30).is_some(),
        "the ping loop hung"
    );
    let out = net.log("pingloop");
    let seqs = replied(&out);
    assert!(
        seqs.iter().any(|s| *s >= 90),
        "the ping loop never got through again:\n{out}\n{}",
        net.logs()
    );
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "{victim} killed: the agent's failover done {} ms later; {} of 100 pings answered, longest gap about {} ms",
        moved.as_millis(),
        seqs.len(),
        gap * 50
    );
    // The coordinator finds the proxy silent and resets the target to the survivor.
    net.wait_phase("diverted", &[other], 30);
    let page = curl_page(&net);
    assert!(
        page.contains("scold-target-page"),
        "curl after the reset: {page}\n{}",
        net.logs()
    );
    net.fetch("fetched.bin");

    // Restore: the ALT records go; the agent's re-query at their TTL tears it all down.
    net.ctl("restore web");
    net.wait_phase("normal", &[], 40);
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && net.routing("c", false) != before {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        net.routing("c", false),
        before,
        "routing not restored after the restore:\n{}",
        net.logs()
    );
    assert!(net
        .log("client")
        .contains("tearing the indirect route down"));
    assert!(
        !net.ping(1),
        "ping still reaches the target after the restore"
    );
    net.stop("client");
    assert_eq!(
        net.routing("c", false),
        before,
        "routing changed by the agent's exit"
    );
}
