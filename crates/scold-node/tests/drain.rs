//! A flooded proxy drains its clients (scheme 4.1, paper Sections 4.1 and 4.4), with the
//! whole system linked in network namespaces: `scold ctl divert` publishes the ALT set
//! (p1 and p2); the `scold client` agent on the client host brings its route up through
//! one of them; a paced TCP download from the target runs through it. That proxy is then
//! flooded (hping3 from the client's namespace to the proxy's address, bounded in count
//! and time) until its self-defence declares it under attack: it reports
//! `ProxyAttacked` to the coordinator and, at the same moment, tells the agent over the
//! open admission connection that it drains. The agent moves to the other proxy because
//! of that notice (its log says so), not because a probe failed or the ALT set changed;
//! the download ends with the right checksum. When the flood is over and self-defence
//! reports the proxy recovered, the proxy stops draining.
//!
//! Prints the time from the proxy's drain to the agent's routes through the other proxy,
//! from both processes' log time stamps (a measurement, not an assertion).
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `curl`, `getent`
//! (libc-bin), `python3`, `hping3`, `sha256sum`, `timeout` (coreutils) and a built binary
//! (`cargo build -p scold`, or SCOLD_BIN).

use std::time::{Duration, Instant};

mod common;
use common::consortium::{
    chosen_proxy, client_asks_agent, consortium, flood_proxy, start_linked, start_paced_download,
    ConsortiumNet, Linked,
};
use common::*;
use scold_testkit::{must, Net};

/// Seconds since midnight (UTC) of a log line's RFC 3339 time stamp
/// (`2026-01-02T03:04:05.678901Z ...`).
fn stamp(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The first line of `log` containing every one of `needles`.
fn line_with<'a>(log: &'a str, needles: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn flooded_proxy_drains_its_clients_to_another_proxy() {
    let mut net: Net = consortium(
        true,
        &[
            ("curl", "curl"),
            ("getent", "libc-bin"),
            ("python3", "python3"),
            ("hping3", "hping3"),
        ],
    );
    client_asks_agent(&mut net);
    // Self-defence on both proxies watches the link from the client site: 1500 packets/s
    // for a second is an attack. The download's acknowledgements (a few hundred
    // packets/s at its pace) and the agent's probes stay far below that; cpu_busy_max
    // above 1 leaves the CPU out (the test machine's load is not an attack).
    let defence = "[selfdefence]\ninterface = \"{client_link}\"\nrx_pps_max = 1500.0\nsustain_ms = 1000\nrecover_ms = 3000\ncpu_busy_max = 2.0\ninterval_ms = 200\n";
    start_linked(
        &mut net,
        &Linked {
            proxy_extra: Some(("*", defence)),
            ..Linked::SCHEME_41
        },
    );
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
    // An application's lookup brings the indirect route up through a proxy of the ALT
    // set.
    let first = net.wait_indirect_route();
    let (victim, victim_label, other, spoofed) = match first.as_str() {
        "10.1.0.1" => ("10.1.0.1", "p1", "10.5.0.1", "10.1.0.66"),
        "10.5.0.1" => ("10.5.0.1", "p2", "10.1.0.1", "10.5.0.66"),
        x => panic!("the agent chose {x}, which is no proxy of the ALT set"),
    };

    let (out, at_flood) = start_paced_download(&mut net);

    // The flood: 4000 UDP packets/s at the proxy in use, at most 24000 and 8 s, from a
    // spoofed address of its own link (nothing leaves the namespaces).
    let downs = net.log("client").matches("failover done").count();
    let t0 = Instant::now();
    flood_proxy(&mut net, "c", spoofed, victim);
    let end = t0 + Duration::from_secs(20);
    while net.log("client").matches("failover done").count() == downs {
        assert!(
            Instant::now() < end,
            "the agent never moved off the flooded proxy:\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen_after = t0.elapsed();

    // Why it moved: the proxy said it drains.
    let plog = net.log(victim_label);
    let clog = net.log("client");
    let drained = line_with(&plog, &["draining: admitted clients are told to move"])
        .unwrap_or_else(|| panic!("{victim_label} never drained:\n{plog}"));
    assert!(
        plog.contains("this proxy is under a severe attack"),
        "{plog}"
    );
    let notice = line_with(&clog, &["proxy is draining", &format!("proxy={victim}")])
        .unwrap_or_else(|| panic!("the agent never heard that {victim} drains:\n{clog}"));
    // The reason comes only with the notice the proxy sends unasked (a probe answer
    // carries the flag alone): the agent heard it without waiting for a probe.
    assert!(
        notice.contains("self-defence: under attack"),
        "the agent learnt of the drain from a probe, not from the proxy's notice: {notice}"
    );
    let failover = clog
        .lines()
        .filter(|l| l.contains("failover done"))
        .nth(downs)
        .expect("counted");
    assert!(
        failover.contains("reason=\"draining\"") && failover.contains(&format!("proxy={victim}")),
        "the agent moved for another reason than the drain: {failover}\n{clog}"
    );
    let before_move: String = clog
        .lines()
        .take_while(|l| *l != failover)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        line_with(&before_move, &["proxy lost", &format!("proxy={victim}")]).is_none(),
        "the agent lost {victim} (probe or tunnel path) before it moved, so the drain was not what moved it:\n{clog}"
    );
    assert_eq!(
        chosen_proxy(&clog).as_deref(),
        Some(other),
        "the agent did not move to {other}:\n{clog}"
    );
    let up = clog
        .lines()
        .rfind(|l| l.contains("indirect route up") && l.contains(&format!("proxy={other}")))
        .expect("chosen");
    match (stamp(drained), stamp(notice), stamp(up), stamp(failover)) {
        (Some(d), Some(n), Some(u), Some(f)) => eprintln!(
            "{victim_label} ({victim}) drained after {at_flood} bytes of the download; the agent heard it {:.0} ms later, \
             had its routes through {other} {:.0} ms after the drain, failover done at {:.0} ms \
             (the test saw it {} ms after the flood started)",
            (n - d) * 1000.0,
            (u - d) * 1000.0,
            (f - d) * 1000.0,
            seen_after.as_millis()
        ),
        _ => eprintln!(
            "the agent's failover done seen {} ms after the flood started (log time stamps unreadable)",
            seen_after.as_millis()
        ),
    }

    let status = net
        .wait_exit("transfer", 120)
        .unwrap_or_else(|| panic!("the transfer never ended\n{}", net.logs()));
    assert!(
        status.success(),
        "the transfer failed ({status}) across the drain:\n{}\n{}",
        net.log("transfer"),
        net.logs()
    );
    assert_eq!(
        sha256(&out),
        sha256(&big),
        "the transferred file differs from the target's"
    );
    eprintln!(
        "the download ended {} ms after the flood started, with the right checksum",
        t0.elapsed().as_millis()
    );
    // The coordinator has the attack report too (the reset follows it).
    assert!(
        net.ctl("events --limit 200").contains("proxy_attacked"),
        "{}",
        net.logs()
    );

    // The flood is over (bounded at 8 s): after recover_ms of calm self-defence reports
    // the proxy recovered and it stops draining.
    let end = Instant::now() + Duration::from_secs(30);
    while !net
        .log(victim_label)
        .contains("no longer draining: clients are told they may stay")
    {
        assert!(
            Instant::now() < end,
            "{victim_label} never stopped draining after the flood:\n{}",
            net.log(victim_label)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
