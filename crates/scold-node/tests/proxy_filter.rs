//! The proxy's IDS/firewall and its path-MTU answers with real `scold` processes in
//! network namespaces.
//!
//! Two clients admitted at one proxy (udp tunnels), a hidden gateway behind a WireGuard
//! tunnel, a target, and an outside host. Client A floods the target through its
//! tunnel while client B downloads 10 MB through the same proxy, and the outside host
//! floods the proxy's address and tunnel port with hping3: B's file arrives intact, A's
//! flood is dropped at the proxy (counters, alerts, the nftables set, expiry), the
//! outsider is blocked too. A second test sends a 1472-byte DF packet from the udp
//! client into the narrower WireGuard hop and expects ICMP "fragmentation needed", and
//! checks that a TCP upload (which needs path MTU discovery there) completes.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables), `hping3`, `ping` (iputils-ping),
//! `socat`, `curl`, `python3`, `sha256sum` and a built binary (`cargo build -p scold`,
//! or SCOLD_BIN=/path/to/scold).

use scold_testkit::{must, poll_until, Net};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::*;

const TARGET: &str = "10.3.0.2";
const CLIENT_A: &str = "10.1.0.2";
const CLIENT_B: &str = "10.1.0.3";
const OUTSIDER_SYN: &str = "10.1.0.66";
const OUTSIDER_UDP: &str = "10.1.0.67";
/// The proxy's base block time in the test config, and its ceiling.
const BLOCK_SECS: u64 = 4;
const MAX_BLOCK_SECS: u64 = 8;
/// How often the waits on the proxy's state look (each look runs `nft` or reads the
/// alerts).
const POLL: Duration = Duration::from_millis(200);

/// Clients A and B and the outside host x hang off one switch w (a bridge) with the
/// proxy's public link, which the filter watches; behind the proxy a WireGuard tunnel
/// to the gateway g, and the target t on the gateway's LAN.
///
/// a 10.1.0.2, b 10.1.0.3, x 10.1.0.66/.67 -- w -- 10.1.0.1 p 10.2.0.1 -- 10.2.0.2 g
/// 10.3.0.1 -- 10.3.0.2 t
fn lab() -> Net {
    let lab = Net::new(
        "pf",
        &["a", "b", "x", "w", "p", "g", "t"],
        &[
            ("nft", "nftables"),
            ("hping3", "hping3"),
            ("ping", "iputils-ping"),
            ("socat", "socat"),
            ("curl", "curl"),
            ("python3", "python3"),
            ("sha256sum", "coreutils"),
        ],
    );
    lab.bridge("w");
    for n in ["a", "b", "x", "p"] {
        lab.bridge_port("w", n);
    }
    lab.link("p", "g", None, None);
    lab.link("g", "t", None, None);
    for (ns, dev, addr) in [
        ("a", "aw", "10.1.0.2/24"),
        ("b", "bw", "10.1.0.3/24"),
        ("x", "xw", "10.1.0.66/24"),
        ("x", "xw", "10.1.0.67/24"),
        ("p", "pw", "10.1.0.1/24"),
        ("p", "pg", "10.2.0.1/24"),
        ("g", "gp", "10.2.0.2/24"),
        ("g", "gt", "10.3.0.1/24"),
        ("t", "tg", "10.3.0.2/24"),
    ] {
        lab.addr(ns, &lab.dev(dev), addr);
    }
    // The target answers everyone through its gateway.
    lab.route("t", "default via 10.3.0.1");
    lab
}

/// Pings the target from namespace `from`, with ping's `extra` options.
fn ping(lab: &Net, from: &str, extra: &str, count: u32) -> std::process::Output {
    lab.exec(
        from,
        &format!("ping -n -c {count} -i 0.2 -W 2 {extra} {TARGET}"),
    )
}

/// Waits until a ping from `from` gets through (a WireGuard handshake takes a round
/// trip).
fn wait_ping(lab: &Net, from: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if ping(lab, from, "-q", 1).status.success() {
            return;
        }
    }
    panic!(
        "no ping from {from} through the indirect route in 20 s\n{}",
        lab.logs()
    );
}

/// The proxy's Prometheus metrics.
fn metrics(lab: &Net) -> String {
    String::from_utf8_lossy(
        &lab.exec("p", "curl -s -m 5 http://127.0.0.1:9901/metrics")
            .stdout,
    )
    .into_owned()
}

/// The addresses in the proxy's nftables block set.
fn blocked_in_nft(lab: &Net) -> String {
    String::from_utf8_lossy(&lab.exec("p", "nft list set inet scold blocked4").stdout).into_owned()
}

/// Gateway, proxy and client configs: clients on udp tunnels, proxy to gateway over
/// WireGuard, the proxy's filter on its public link with small limits.
fn write_configs(lab: &Net, filter: bool) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (proxy_key, proxy_pub) = keypair();
    let (gw_key, gw_pub) = keypair();
    let gw = wireguard_gateway(lab, &gw_key, &proxy_pub);
    let filter_section = if filter {
        format!(
            "[control]\nmetrics = \"127.0.0.1:9901\"\n\
             [filter]\ninterface = \"{}\"\nalerts = \"{}\"\nnft = true\nxdp = \"generic\"\ntraceback_secs = 1\n\
             pps = 10000.0\nbytes_per_s = 5000000.0\nudp_pps = 2000.0\nsyn_pps = 50.0\n\
             block_after_drops = 200\nblock_secs = {BLOCK_SECS}\nmax_block_secs = {MAX_BLOCK_SECS}\n",
            lab.dev("pw"),
            lab.path("alerts.jsonl").display()
        )
    } else {
        String::new()
    };
    let proxy = lab.write(
        "proxy.toml",
        &format!(
            "[tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"{proxy_key}\"\n\
             {filter_section}\
             [[peers]]\nname = \"gw\"\naddress = \"10.2.0.2\"\nport = 51820\nencap = \"wireguard\"\npublic_key = \"{gw_pub}\"\n\
             [[routes]]\ndestination = \"{TARGET}/32\"\nvia = {{ peer = \"gw\" }}\n\
             [[sessions]]\nclient = \"{CLIENT_A}\"\nencap = \"udp\"\ntargets = [\"{TARGET}/32\"]\n\
             [[sessions]]\nclient = \"{CLIENT_B}\"\nencap = \"udp\"\ntargets = [\"{TARGET}/32\"]\n"
        ),
    );
    let client = |name: &str, source: &str| {
        lab.write(
            &format!("client-{name}.toml"),
            &format!(
                "source = \"{source}\"\ntun_name = \"s{name}{}\"\n\
                 [tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:0\"\n\
                 [[peers]]\nname = \"proxy\"\naddress = \"10.1.0.1\"\nport = 51820\nencap = \"udp\"\n\
                 [[routes]]\ndestination = \"{TARGET}/32\"\nvia = {{ peer = \"proxy\" }}\n",
                lab.suffix()
            ),
        )
    };
    (gw, proxy, client("a", CLIENT_A), client("b", CLIENT_B))
}

/// A counter from the final stats line a daemon logs when it stops.
fn counter(log: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    log.rfind(&key)
        .map(|i| {
            log[i + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// A counter of one peer from the final stats line the proxy logs when it stops.
fn peer_counter(log: &str, peer: &str, name: &str) -> u64 {
    let start = log
        .rfind("{\"peers\"")
        .unwrap_or_else(|| panic!("no final stats in the log:\n{log}"));
    let stats: serde_json::Value = serde_json::Deserializer::from_str(&log[start..])
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("final stats do not parse:\n{}", &log[start..]));
    stats["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer))
        .and_then(|p| p["counters"][name].as_u64())
        .unwrap_or_else(|| panic!("no {name} for peer {peer} in {stats}"))
}

/// The value of one Prometheus sample, e.g. `proxy_session_filtered_packets{client="10.1.0.2"}`.
fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// hping3's packet count from its closing statistics ("N packets tramitted").
fn hping_sent(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("packets tramitted") || l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A UDP flood to the target from inside a client, through its tunnel: at most
/// `count` packets at about 25 000 per second, for at most 10 s. Prints how many the
/// kernel accepted.
const FLOOD_PY: &str = r#"
import socket, sys, time
count = int(sys.argv[1]); target = sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"f" * 64
start = time.monotonic(); sent = 0; tried = 0
while tried < count and time.monotonic() - start < 10:
    for _ in range(250):
        tried += 1
        try:
            s.sendto(payload, (target, 9)); sent += 1
        except OSError:
            pass
    ahead = tried / 25000.0 - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(sent, flush=True)
"#;

fn alerts(lab: &Net) -> Vec<serde_json::Value> {
    std::fs::read_to_string(lab.path("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alert {l:?}: {e}")))
        .collect()
}

fn alert_for(alerts: &[serde_json::Value], src: &str, kind: &str) -> Option<serde_json::Value> {
    alerts
        .iter()
        .find(|a| a["src"] == src && a["kind"] == kind)
        .cloned()
}

#[test]
fn flood_through_the_proxy_is_dropped_while_another_client_downloads() {
    let mut lab = lab();
    let (gw, proxy, client_a, client_b) = write_configs(&lab, true);
    // The target counts the flood's packets that reach it.
    must(&format!(
        "ip netns exec {} nft -f - <<'EOF'\n\
         table inet count {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  udp dport 9 counter\n }}\n}}\nEOF",
        lab.ns("t")
    ));
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("p", "proxy", "proxy", &proxy);
    lab.scold("a", "client-a", "client", &client_a);
    lab.scold("b", "client-b", "client", &client_b);
    wait_ping(&lab, "a");
    wait_ping(&lab, "b");

    let src = lab.path("src.bin");
    let dst = lab.path("dst.bin");
    must(&format!(
        "head -c 10000000 /dev/urandom > {}",
        src.display()
    ));
    lab.spawn(
        "t",
        "tcp-source",
        &[
            "timeout",
            "120",
            "socat",
            "-u",
            &format!("FILE:{}", src.display()),
            "TCP4-LISTEN:5001,reuseaddr",
        ],
    );

    // The floods: A through its tunnel; the outsider at the proxy's address (SYN) and
    // at its tunnel port from a second address (UDP), with hping3.
    const FLOOD: u64 = 200_000;
    lab.spawn(
        "a",
        "flood-a",
        &[
            "timeout",
            "15",
            "python3",
            "-c",
            FLOOD_PY,
            &FLOOD.to_string(),
            TARGET,
        ],
    );
    lab.spawn(
        "x",
        "hping-syn",
        &[
            "timeout", "-s", "INT", "8", "hping3", "-q", "-S", "-p", "80", "--flood", "10.1.0.1",
        ],
    );
    lab.spawn(
        "x",
        "hping-udp",
        &[
            "timeout",
            "-s",
            "INT",
            "8",
            "hping3",
            "-q",
            "--udp",
            "-p",
            "51820",
            "-d",
            "1200",
            "-a",
            OUTSIDER_UDP,
            "--flood",
            "10.1.0.1",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));

    // B downloads 10 MB while the floods run.
    lab.spawn(
        "b",
        "download",
        &[
            "timeout",
            "90",
            "socat",
            "-u",
            &format!("TCP4:{TARGET}:5001"),
            &format!("OPEN:{},creat,trunc", dst.display()),
        ],
    );

    // The flooders show up in the kernel's block set while they flood.
    let mut seen = String::new();
    let all_blocked = poll_until(Duration::from_secs(6), POLL, || {
        seen = blocked_in_nft(&lab);
        [CLIENT_A, OUTSIDER_SYN, OUTSIDER_UDP]
            .iter()
            .all(|a| seen.contains(a))
    });
    assert!(
        all_blocked,
        "not every flooder is in the nftables set:\n{seen}\nalerts: {:?}\n{}",
        alerts(&lab),
        lab.logs()
    );
    assert!(
        !seen.contains(CLIENT_B),
        "the well-behaved client was blocked:\n{seen}"
    );

    let status = lab.wait_exit("download", 95);
    assert!(
        status.is_some(),
        "B's download did not finish\n{}",
        lab.logs()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "B's download failed: {status:?}\n{}",
        lab.log("download")
    );
    assert_eq!(
        sha256(&src),
        sha256(&dst),
        "B's 10 MB arrived damaged or incomplete"
    );

    assert!(
        lab.wait_exit("flood-a", 15).is_some(),
        "A's flood did not end"
    );
    let sent: u64 = lab
        .log("flood-a")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("flood script output: {:?}", lab.log("flood-a")));
    let counted = must(&format!(
        "ip netns exec {} nft list chain inet count input",
        lab.ns("t")
    ));
    let received: u64 = counted
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {counted}"));
    assert!(
        sent > 10_000,
        "the flood sent only {sent} packets: the test measured nothing"
    );
    assert!(
        received * 10 < sent,
        "the target received {received} of {sent} flood packets: the proxy did not stop the flood"
    );

    // The proxy's own account: drops on the relay path for A, none for B.
    let m = metrics(&lab);
    let filtered_a = metric(
        &m,
        &format!("scold_proxy_session_filtered_packets_total{{client=\"{CLIENT_A}\"}}"),
    );
    let filtered_b = metric(
        &m,
        &format!("scold_proxy_session_filtered_packets_total{{client=\"{CLIENT_B}\"}}"),
    );
    assert!(
        filtered_a.is_some_and(|n| n >= 200),
        "A's dropped packets on the relay path: {filtered_a:?}\n{m}"
    );
    assert_eq!(filtered_b, Some(0), "B lost packets to the filter\n{m}");
    assert!(
        metric(&m, "scold_filter_dropped_total").is_some_and(|n| n > 0),
        "filter_dropped\n{m}"
    );
    // The blocked flooders' packets that kept coming were dropped by XDP at the proxy's
    // link, in front of the nftables set.
    let xdp_dropped = metric(&m, "scold_filter_xdp_dropped_total");
    assert!(
        xdp_dropped.is_some_and(|n| n > 1000),
        "XDP dropped {xdp_dropped:?} packets of blocked sources\n{m}"
    );
    let link = must(&format!(
        "ip netns exec {} ip -d link show dev {}",
        lab.ns("p"),
        lab.dev("pw")
    ));
    assert!(
        link.contains("xdpgeneric"),
        "no XDP program on the link:\n{link}"
    );
    // What an operator graphs: counters (rate() works on them), typed as such, and the
    // clients' tunnel traffic.
    for (name, kind) in [
        ("scold_filter_passed", "counter"),
        ("scold_filter_dropped", "counter"),
        ("scold_filter_relay_dropped", "counter"),
        ("scold_filter_capture_dropped", "counter"),
        ("scold_filter_xdp_dropped", "counter"),
        ("scold_filter_xdp_dropped_bytes", "counter"),
        ("scold_filter_blocked_sources", "gauge"),
        ("scold_proxy_session_filtered_packets", "counter"),
        ("scold_tunnel_rx_packets", "counter"),
        ("scold_tunnel_rx_bytes", "counter"),
        ("scold_tunnel_tx_packets", "counter"),
        ("scold_tunnel_tx_bytes", "counter"),
        ("scold_tunnel_peers", "gauge"),
    ] {
        let line = format!("# TYPE {name} {kind}");
        assert!(m.lines().any(|l| l == line), "no {line}\n{m}");
    }
    assert!(
        metric(
            &m,
            "scold_tunnel_rx_packets_total{peer=\"clients\",encap=\"udp\"}"
        )
        .is_some_and(|n| n > 0),
        "no tunnel packets from the clients counted\n{m}"
    );
    assert!(
        metric(
            &m,
            "scold_tunnel_tx_packets_total{peer=\"gw\",encap=\"wireguard\"}"
        )
        .is_some_and(|n| n > 0),
        "no tunnel packets to the gateway counted\n{m}"
    );

    let al = alerts(&lab);
    let a_block = alert_for(&al, CLIENT_A, "blocked").expect("no block alert for A");
    assert_eq!(a_block["reason"], "udp_flood", "{a_block}");
    assert_eq!(a_block["block_secs"], BLOCK_SECS as f64, "{a_block}");
    let syn = alert_for(&al, OUTSIDER_SYN, "blocked").expect("no block alert for the SYN flooder");
    assert_eq!(syn["reason"], "syn_flood", "{syn}");
    assert!(
        alert_for(&al, OUTSIDER_UDP, "blocked").is_some(),
        "no block alert for the tunnel-port flooder: {al:?}"
    );
    assert!(
        alert_for(&al, CLIENT_B, "blocked").is_none(),
        "B was blocked: {al:?}"
    );

    // Blocks end: the set empties of A and an expiry alert follows, within the
    // longest block (a repeat offence doubles it) plus the filter's housekeeping.
    assert!(lab.wait_exit("hping-syn", 10).is_some());
    assert!(lab.wait_exit("hping-udp", 10).is_some());
    let syn_sent = hping_sent(&lab.log("hping-syn"));
    let released = poll_until(Duration::from_secs(MAX_BLOCK_SECS + 6), POLL, || {
        !blocked_in_nft(&lab).contains(CLIENT_A)
            && alert_for(&alerts(&lab), CLIENT_A, "expired").is_some()
    });
    assert!(
        released,
        "A's block did not expire: {}\nalerts: {:?}",
        blocked_in_nft(&lab),
        alerts(&lab)
    );
    // A behaves again and gets through.
    assert!(
        ping(&lab, "a", "-q", 3).status.success(),
        "A cannot reach the target after its block expired\n{}",
        lab.logs()
    );

    lab.stop("client-a");
    lab.stop("client-b");
    lab.stop("proxy");
    let link = must(&format!(
        "ip netns exec {} ip -d link show dev {}",
        lab.ns("p"),
        lab.dev("pw")
    ));
    assert!(
        !link.contains("xdpgeneric"),
        "the proxy left its XDP program on the link:\n{link}"
    );
    let plog = lab.log("proxy");
    // What the proxy relayed to the gateway over the whole run: B's acknowledgements,
    // the pings, and the part of A's flood its bucket let through.
    let relayed = peer_counter(&plog, "gw", "tx_packets");
    assert!(
        relayed * 10 < sent,
        "the proxy relayed {relayed} packets to the gateway while A sent {sent}\n{plog}"
    );
    assert!(
        counter(&plog, "dropped_unknown_source") > 0,
        "the tunnel-port flood from a non-admitted address never reached the engine's drop count\n{plog}"
    );
    eprintln!(
        "flood from A: {sent} sent, {received} reached the target; relay-path drops {filtered_a:?}; \
         relayed to the gateway {relayed}; hping3 SYN flood: {syn_sent} sent; XDP dropped \
         {xdp_dropped:?}"
    );
}

#[test]
fn too_big_for_the_next_tunnel_is_answered_with_frag_needed() {
    let mut lab = lab();
    let (gw, proxy, client_a, _) = write_configs(&lab, false);
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("p", "proxy", "proxy", &proxy);
    lab.scold("a", "client-a", "client", &client_a);
    wait_ping(&lab, "a");

    // 1472 bytes fit A's udp tunnel (TUN MTU 1472) but not the WireGuard hop behind the
    // proxy (1440): the proxy answers on the target's behalf.
    let out = ping(&lab, "a", "-M do -s 1444", 2);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1440") || text.contains("mtu=1440"),
        "no fragmentation-needed answer with MTU 1440:\n{text}\n{}",
        lab.logs()
    );
    // Fitting packets still pass.
    assert!(
        ping(&lab, "a", "-q -M do -s 1400", 2).status.success(),
        "1428-byte ping failed"
    );

    // A TCP upload: the client's segments start at its TUN's MSS and only path MTU
    // discovery brings them under the WireGuard hop's limit.
    let src = lab.path("up.bin");
    let dst = lab.path("up-received.bin");
    must(&format!("head -c 3000000 /dev/urandom > {}", src.display()));
    lab.spawn(
        "t",
        "tcp-sink",
        &[
            "timeout",
            "60",
            "socat",
            "-u",
            "TCP4-LISTEN:5002,reuseaddr",
            &format!("OPEN:{},creat,trunc", dst.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        "a",
        &format!(
            "timeout 30 socat -u FILE:{} TCP4:{TARGET}:5002",
            src.display()
        ),
    );
    assert!(
        out.status.success(),
        "TCP upload through the narrower hop failed: {out:?}\n{}",
        lab.logs()
    );
    assert!(lab.wait_exit("tcp-sink", 10).is_some());
    assert_eq!(sha256(&src), sha256(&dst), "the upload arrived damaged");
    lab.stop("client-a");
    lab.stop("proxy");
    assert!(
        counter(&lab.log("proxy"), "dropped_too_big") > 0,
        "the proxy never saw a packet too big: the test measured nothing\n{}",
        lab.log("proxy")
    );
}
