//! The hidden gateway stays hidden from someone who scans for it: from an outside
//! namespace, hping3 sends TCP, UDP, ICMP (echo and timestamp), IP-in-IP, GRE, fake
//! WireGuard and packets with a proxy's address as their source to the gateway's
//! tunnel address and to the address of the interface it arrives by, before a divert,
//! while the target is diverted (and a client downloads through the gateway), and after
//! the restore. tcpdump in the scanner's namespace must see nothing come back, while
//! the gateway's policy counts what the kernel would have answered.
//!
//! Needs root, `ip` (iproute2), `hping3`, `tcpdump`, `ping` (iputils-ping), `socat`,
//! `getent` (libc-bin), `sha256sum`, `timeout` (coreutils) and a built binary.

mod common;
use common::consortium::{client_asks_agent, consortium, start_linked, ConsortiumNet, Linked};
use scold_testkit::Net;

/// The gateway's tunnel end point and its address towards the scanner.
const TUNNEL: &str = "10.7.0.1";
const OUTSIDE: &str = "10.66.0.2";

/// One bounded round of scans from the scanner namespace `r`.
fn scan(net: &Net) {
    // Each probe is bounded in count and by `timeout`; sources are fixed so replies,
    // had there been any, would be easy to spot.
    let probes = [
        "-S -s 20000 -p ++1 -c 40 -i u2000",    // TCP SYN to ports 1..40
        "-A -s 20100 -p 22 -c 5 -i u2000",      // TCP ACK (draws a RST)
        "--udp -s 20200 -p ++1 -c 40 -i u2000", // UDP to ports 1..40
        "--udp -s 20300 -p 51820 -d 148 -c 5 -i u2000", // fake WireGuard initiations
        "--icmp -c 5 -i u2000",                 // echo
        "--icmp --icmptype 13 -c 3 -i u2000",   // timestamp
        "--rawip -H 4 -d 40 -c 5 -i u2000",     // IP-in-IP
        "--rawip -H 47 -d 40 -c 5 -i u2000",    // GRE
        "-S -s 20400 -p 80 -a 10.2.0.1 -c 5 -i u2000", // a proxy's address, spoofed
        "--udp -s 20500 -p 51820 -a 10.6.0.1 -c 5 -i u2000", // the other proxy's
    ];
    for dest in [TUNNEL, OUTSIDE] {
        for p in probes {
            let _ = net.exec("r", &format!("timeout 10 hping3 -q {p} {dest}"));
        }
    }
}

/// The packets the scanner's capture saw from the gateway so far.
fn answers(net: &Net, pcap: &str) -> String {
    net.out(
        "r",
        &format!("tcpdump -n -r {pcap} 'src host {TUNNEL} or src host {OUTSIDE}' 2>/dev/null"),
    )
}

/// What the policy's drop rule has counted.
fn dropped(net: &Net) -> u64 {
    net.out("g", "nft list chain inet scold_hidden output")
        .lines()
        .find(|l| l.contains("answers no one else"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_scan_finds_no_sign_of_the_gateway_before_during_and_after_a_divert() {
    let mut net = consortium(
        true,
        &[
            ("hping3", "hping3"),
            ("tcpdump", "tcpdump"),
            ("getent", "libc-bin"),
        ],
    );
    // The scanner: the main link's router, given a link to the gateway's outside
    // interface, as anyone on the internet could reach it.
    net.link("r", "g", Some("10.66.0.1/24"), Some("10.66.0.2/24"));
    net.route("r", &format!("{TUNNEL}/32 via {OUTSIDE}"));
    client_asks_agent(&mut net);
    start_linked(&mut net, &Linked::SCHEME_41);
    let pcap = net.p("scanner.pcap");
    let dev = net.dev("rg");
    net.spawn(
        "r",
        "tcpdump",
        &["tcpdump", "-i", &dev, "-n", "-U", "-w", &pcap, "ip or ip6"],
    );
    net.wait_log("tcpdump", "listening on", 10);
    net.wait_nodes_up();

    // Before any divert.
    scan(&net);
    let before = dropped(&net);
    assert!(
        before > 0,
        "the policy dropped nothing, so the scan proves nothing:\n{}",
        net.out("g", "nft list ruleset")
    );
    assert_eq!(
        answers(&net, &pcap),
        "",
        "the gateway answered a scan before the divert"
    );

    // Diverted: a client fetches through the gateway while the scan runs again.
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1", "p2"], 30);
    let hosts = net.out("c", "getent hosts www.example.net");
    assert!(
        hosts.contains("10.4.0.2"),
        "getent: {hosts}\n{}",
        net.logs()
    );
    net.wait_ping();
    scan(&net);
    net.fetch("during-scan.bin");
    assert!(
        dropped(&net) > before,
        "the second scan drew nothing to drop"
    );
    assert_eq!(
        answers(&net, &pcap),
        "",
        "the gateway answered a scan while diverted"
    );

    // Restored: the policy stays while the gateway runs.
    net.ctl("restore web");
    net.wait_phase("normal", &[], 30);
    scan(&net);
    net.stop("tcpdump");
    assert_eq!(
        answers(&net, &pcap),
        "",
        "the gateway answered a scan after the restore"
    );
    let seen = net.out(
        "r",
        &format!(
            "tcpdump -n -r {pcap} 'dst host {TUNNEL} or dst host {OUTSIDE}' 2>/dev/null | wc -l"
        ),
    );
    assert!(
        seen.trim().parse::<u32>().unwrap_or(0) > 300,
        "the probes did not leave the scanner ({seen})"
    );
}
