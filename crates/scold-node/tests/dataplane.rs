//! The indirect route end to end with real `scold` processes in network namespaces:
//! client -> proxy -> gateway -> target, per encapsulation; the silent gateway; NAT mode
//! with a PROXY v2 header; the target's return path and its exact restore.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `tcpdump`, `sha256sum`
//! and a built binary (`cargo build -p scold`, or SCOLD_BIN=/path/to/scold).

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::consortium::ConsortiumNet;
use common::*;
use scold_testkit::{must, Net};

/// Five namespaces: client c, proxy p, gateway g, target t and the target's upstream
/// router r (the attacked main link). r has no route back to the client, so a reply
/// that leaves by the main link is lost: only the return path through g works.
///
/// c 10.1.0.2 -- 10.1.0.1 p 10.2.0.1 -- 10.2.0.2 g 10.3.0.1 -- 10.3.0.2 t 10.4.0.2 -- 10.4.0.1 r
fn lab() -> Net {
    let lab = Net::new(
        "",
        &["c", "p", "g", "t", "r"],
        &[
            ("ping", "iputils-ping"),
            ("socat", "socat"),
            ("tcpdump", "tcpdump"),
            ("sha256sum", "coreutils"),
        ],
    );
    for (a, b) in [("c", "p"), ("p", "g"), ("g", "t"), ("t", "r")] {
        lab.link(a, b, None, None);
    }
    for (ns, dev, addr) in [
        ("c", "cp", "10.1.0.2/24"),
        ("p", "pc", "10.1.0.1/24"),
        ("p", "pg", "10.2.0.1/24"),
        ("g", "gp", "10.2.0.2/24"),
        ("g", "gt", "10.3.0.1/24"),
        ("t", "tg", "10.3.0.2/24"),
        ("t", "tr", "10.4.0.2/24"),
        ("r", "rt", "10.4.0.1/24"),
    ] {
        lab.addr(ns, &lab.dev(dev), addr);
    }
    lab.route("t", "default via 10.4.0.1");
    lab.route("g", "10.4.0.0/24 via 10.3.0.2");
    lab
}

/// Pings the target from the client, with ping's `extra` options.
fn ping(lab: &Net, extra: &str, count: u32) -> bool {
    lab.exec(
        "c",
        &format!("ping -n -q -c {count} -i 0.2 -W 2 {extra} 10.4.0.2"),
    )
    .status
    .success()
}

struct Keys {
    client: (String, String),
    proxy: (String, String),
    gateway: (String, String),
}

fn keys3() -> Keys {
    Keys {
        client: keypair(),
        proxy: keypair(),
        gateway: keypair(),
    }
}

/// `[tunnel]` plus peer lines for one encapsulation.
fn tunnel(encap: &str, listen: &str, private: &str) -> String {
    let mut t = format!("[tunnel]\nencap = \"{encap}\"\nlisten = \"{listen}\"\n");
    if encap == "ipip" {
        t.push_str("ipip = true\n");
    }
    if encap == "wireguard" {
        t.push_str(&format!("private_key = \"{private}\"\n"));
    }
    t
}

fn peer(name: &str, addr: &str, port: Option<u16>, encap: &str, public: &str) -> String {
    let mut p =
        format!("[[peers]]\nname = \"{name}\"\naddress = \"{addr}\"\nencap = \"{encap}\"\n");
    if let (Some(port), true) = (port, encap != "ipip") {
        p.push_str(&format!("port = {port}\n"));
    }
    if encap == "wireguard" {
        p.push_str(&format!("public_key = \"{public}\"\n"));
    }
    p
}

fn write_configs(lab: &Net, encap: &str, k: &Keys) -> [PathBuf; 4] {
    let gw = lab.write(
        "gateway.toml",
        &format!(
            "lan_interface = \"{}\"\ntun_name = \"sg{}\"\n{}{}",
            lab.dev("gt"),
            lab.suffix(),
            tunnel(encap, "0.0.0.0:51820", &k.gateway.0),
            peer("proxy-1", "10.2.0.1", None, encap, &k.proxy.1)
        ),
    );
    let mut session = format!(
        "[[sessions]]\nclient = \"10.1.0.2\"\nencap = \"{encap}\"\ntargets = [\"10.4.0.2/32\"]\n"
    );
    if encap == "wireguard" {
        session.push_str(&format!("public_key = \"{}\"\n", k.client.1));
    }
    let proxy = lab.write(
        "proxy.toml",
        &format!(
            "{}{}[[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"gw\" }}\n{}",
            tunnel(encap, "0.0.0.0:51820", &k.proxy.0),
            peer("gw", "10.2.0.2", Some(51820), encap, &k.gateway.1),
            session
        ),
    );
    let target = lab.write(
        "target.toml",
        "source = \"10.4.0.2\"\n[[routes]]\ndestination = \"10.1.0.2/32\"\nvia = { gateway = \"10.3.0.1\" }\n",
    );
    let client = lab.write(
        "client.toml",
        &format!(
            "source = \"10.1.0.2\"\ntun_name = \"sc{}\"\n{}{}[[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"proxy\" }}\n",
            lab.suffix(),
            tunnel(encap, "0.0.0.0:0", &k.client.0),
            peer("proxy", "10.1.0.1", Some(51820), encap, &k.proxy.1)
        ),
    );
    [gw, proxy, target, client]
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

fn indirect_route(encap: &str) {
    let mut lab = lab();
    let k = keys3();
    let [gw, proxy, target, client] = write_configs(&lab, encap, &k);
    let before_target = lab.routing("t", false);
    let before_client = lab.routing("c", false);

    // Capture the proxy-gateway link for the whole run, to count outer fragments.
    let pcap = lab.path("pg.pcap");
    let pcap_s = pcap.to_str().expect("utf-8").to_string();
    let dev = lab.dev("pg");
    lab.spawn(
        "p",
        "tcpdump",
        &["tcpdump", "-i", &dev, "-n", "-s", "96", "-U", "-w", &pcap_s],
    );
    lab.wait_log("tcpdump", "listening on", 10);

    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("p", "proxy", "proxy", &proxy);
    lab.scold("c", "client", "client", &client);
    std::thread::sleep(Duration::from_millis(500));
    // Without the target's return path, replies leave by the main link and are lost.
    assert!(
        !ping(&lab, "", 2),
        "ping succeeded without the target's return path: the test topology is wrong"
    );
    lab.scold("t", "target", "target", &target);
    lab.wait_ping();

    assert!(ping(&lab, "", 5), "ping over {encap}\n{}", lab.logs());
    assert!(
        ping(&lab, "-s 1400 -M do", 3),
        "1400-byte ping over {encap}\n{}",
        lab.logs()
    );
    // A 1500-byte IP packet is larger than the tunnel MTU: the sending host fragments
    // the inner packet; the outer packets must still never be fragmented.
    assert!(
        ping(&lab, "-s 1472", 3),
        "1500-byte ping over {encap}\n{}",
        lab.logs()
    );

    // 10 MB over TCP with full-size segments, checked end to end.
    let src = lab.path("src.bin");
    let dst = lab.path("dst.bin");
    must(&format!(
        "head -c 10000000 /dev/urandom > {}",
        src.display()
    ));
    lab.spawn(
        "t",
        "tcp-sink",
        &[
            "timeout",
            "60",
            "socat",
            "-u",
            "TCP4-LISTEN:5001,reuseaddr",
            &format!("OPEN:{},creat,trunc", dst.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        "c",
        &format!("socat -u FILE:{} TCP4:10.4.0.2:5001", src.display()),
    );
    assert!(
        out.status.success(),
        "TCP transfer over {encap} failed: {out:?}\n{}",
        lab.logs()
    );
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) < 10_000_000 && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sha256(&src),
        sha256(&dst),
        "10 MB over {encap}: checksums differ"
    );

    // A UDP exchange.
    lab.spawn(
        "t",
        "udp-echo",
        &[
            "timeout",
            "30",
            "socat",
            "UDP4-RECVFROM:5002,fork,reuseaddr",
            "EXEC:cat",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        "c",
        "sh -c 'echo scold-udp-probe | socat -t 3 -T 3 - UDP4:10.4.0.2:5002'",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "scold-udp-probe",
        "UDP echo over {encap}\n{}",
        lab.logs()
    );

    // Tunnel packets from an address that was never admitted are dropped.
    if encap != "ipip" {
        must(&format!(
            "ip -n {} addr add 10.1.0.3/24 dev {}",
            lab.ns("c"),
            lab.dev("cp")
        ));
        let _ = lab.exec(
            "c",
            "sh -c 'head -c 100 /dev/zero | socat -u - UDP4:10.1.0.1:51820,bind=10.1.0.3'",
        );
        must(&format!(
            "ip -n {} addr del 10.1.0.3/24 dev {}",
            lab.ns("c"),
            lab.dev("cp")
        ));
    }

    lab.stop("client");
    lab.stop("target");
    lab.stop("proxy");
    lab.stop("gateway");
    std::thread::sleep(Duration::from_millis(300));
    lab.stop("tcpdump");

    assert_eq!(
        lab.routing("t", false),
        before_target,
        "target routing not restored"
    );
    assert_eq!(
        lab.routing("c", false),
        before_client,
        "client routing not restored"
    );

    let total = must(&format!(
        "tcpdump -n -r {} 2>/dev/null | wc -l",
        pcap.display()
    ));
    let frags = must(&format!(
        "tcpdump -n -r {} 'ip[6:2] & 0x3fff != 0' 2>/dev/null | wc -l",
        pcap.display()
    ));
    // With UDP segmentation offload the capture sees trains of datagrams as one packet,
    // so only "the capture saw the transfer" is checked here.
    assert!(
        total.trim().parse::<u64>().unwrap_or(0) > 100,
        "capture on the proxy-gateway link saw too few packets ({total})"
    );
    assert_eq!(
        frags.trim(),
        "0",
        "outer packets were fragmented over {encap}"
    );

    let plog = lab.log("proxy");
    assert!(
        plog.contains("proxy stopped"),
        "proxy did not stop cleanly:\n{plog}"
    );
    if encap != "ipip" {
        let dropped = counter(&plog, "dropped_unknown_source");
        assert!(
            dropped >= 1,
            "the probe from a non-admitted address was not counted as dropped:\n{plog}"
        );
    }
}

#[test]
fn indirect_route_udp() {
    indirect_route("udp");
}

/// The engines' packet counters from a daemon's final stats line.
fn engine_packets(log: &str) -> Vec<u64> {
    let key = "\"engine_packets\":[";
    log.rfind(key)
        .map(|i| {
            let rest = &log[i + key.len()..];
            rest[..rest.find(']').unwrap_or(0)]
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Two engine threads on every node: the client's and gateway's TUN devices get two
/// queues, sixteen TCP transfers at once arrive whole, and with udp on the proxy and
/// the gateway both threads carried packets (one tunnel spread over both by inner
/// flow; a WireGuard peer stays on one thread).
fn two_engines(encap: &str) {
    let mut lab = lab();
    let k = keys3();
    let [gw, proxy, target, client] = write_configs(&lab, encap, &k);
    for f in [&gw, &proxy, &client] {
        let text = std::fs::read_to_string(f).expect("config");
        // The peers read with two engines as well: senders keep GSO runs to one bucket.
        let text = text
            .replace("[tunnel]\n", "[tunnel]\nengines = 2\n")
            .replace("[[peers]]\n", "[[peers]]\nengines = 2\n")
            .replace("[[sessions]]\n", "[[sessions]]\nengines = 2\n");
        std::fs::write(f, text).expect("config");
    }
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("p", "proxy", "proxy", &proxy);
    lab.scold("c", "client", "client", &client);
    lab.scold("t", "target", "target", &target);
    lab.wait_ping();
    for (ns, tun) in [
        ("c", format!("sc{}", lab.suffix())),
        ("g", format!("sg{}", lab.suffix())),
    ] {
        let queues = lab.exec(ns, &format!("ls /sys/class/net/{tun}/queues"));
        let queues = String::from_utf8_lossy(&queues.stdout).to_string();
        assert!(
            queues.contains("rx-0") && queues.contains("rx-1"),
            "TUN {tun} does not have two queues: {queues:?}"
        );
    }

    const FLOWS: usize = 16;
    let src = lab.path("src.bin");
    let sums = lab.path("sums");
    must(&format!("head -c 2000000 /dev/urandom > {}", src.display()));
    std::fs::create_dir_all(&sums).expect("sums folder");
    // One file per connection, named by the client's port, holding what arrived's hash
    // (every connection accepted at once: socat's fork-per-connection with its backlog
    // of 5 resets some of sixteen simultaneous ones).
    let sink = lab.write(
        "sink.py",
        "import hashlib, socket, sys, threading\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('10.4.0.2', 5001)); s.listen(64); s.settimeout(60)\n\
         def take(c, port):\n\
         \x20   h = hashlib.sha256()\n\
         \x20   while True:\n\
         \x20       b = c.recv(65536)\n\
         \x20       if not b: break\n\
         \x20       h.update(b)\n\
         \x20   open('%s/%d' % (sys.argv[1], port), 'w').write(h.hexdigest())\n\
         while True:\n\
         \x20   c, a = s.accept(); c.settimeout(60)\n\
         \x20   threading.Thread(target=take, args=(c, a[1]), daemon=True).start()\n",
    );
    lab.spawn(
        "t",
        "tcp-sink",
        &[
            "timeout",
            "60",
            "python3",
            sink.to_str().expect("utf-8"),
            sums.to_str().expect("utf-8"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        "c",
        &format!(
            "sh -c 'for i in $(seq {FLOWS}); do (socat -u FILE:{} TCP4:10.4.0.2:5001 || echo failed) & done; wait'",
            src.display()
        ),
    );
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "transfers failed: {out:?}\n{}",
        lab.logs()
    );
    let want = sha256(&src);
    let end = Instant::now() + Duration::from_secs(15);
    let done = |want: &str| {
        std::fs::read_dir(&sums)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with(want))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    while done(&want) < FLOWS && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        done(&want),
        FLOWS,
        "not every transfer arrived whole\n{}",
        lab.logs()
    );
    lab.stop("client");
    lab.stop("target");
    lab.stop("proxy");
    lab.stop("gateway");
    for node in ["proxy", "gateway"] {
        let log = lab.log(node);
        let lanes = engine_packets(&log);
        assert_eq!(lanes.len(), 2, "{node} did not report two engines:\n{log}");
        assert!(
            encap != "udp" || lanes.iter().all(|&n| n > 100),
            "on the {node} one engine carried (nearly) everything: {lanes:?}"
        );
    }
}

#[test]
fn indirect_route_udp_on_two_engines() {
    two_engines("udp");
}

#[test]
fn indirect_route_wireguard_on_two_engines() {
    two_engines("wireguard");
}

#[test]
fn indirect_route_ipip() {
    indirect_route("ipip");
}

#[test]
fn indirect_route_wireguard() {
    indirect_route("wireguard");
}

/// In wireguard mode the gateway answers nothing to a non-proxy address: not a junk
/// datagram, not a real WireGuard handshake with an unregistered key, not a probe of a
/// closed port (which the kernel would answer with ICMP port unreachable: the hidden
/// gateway's packet policy drops that answer, and its drop counter shows it did).
#[test]
fn gateway_is_silent_to_strangers() {
    let mut lab = lab();
    let k = keys3();
    let [gw, ..] = write_configs(&lab, "wireguard", &k);
    lab.scold("g", "gateway", "gateway", &gw);
    must(&format!(
        "ip -n {} addr add 10.2.0.9/24 dev {}",
        lab.ns("p"),
        lab.dev("pg")
    ));
    let pcap = lab.path("gw.pcap");
    let pcap_s = pcap.to_str().expect("utf-8").to_string();
    let dev = lab.dev("gp");
    lab.spawn(
        "g",
        "tcpdump",
        &[
            "tcpdump",
            "-i",
            &dev,
            "-n",
            "-U",
            "-w",
            &pcap_s,
            "ip and host 10.2.0.9",
        ],
    );
    lab.wait_log("tcpdump", "listening on", 10);

    // A stranger running a real WireGuard initiator (unregistered key) from 10.2.0.9.
    let stranger = keypair();
    let cfg = lab.write(
        "stranger.toml",
        &format!(
            "source = \"10.2.0.9\"\ntun_name = \"sx{}\"\n[tunnel]\nencap = \"wireguard\"\nlisten = \"10.2.0.9:0\"\nprivate_key = \"{}\"\n{}[[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"gw\" }}\n",
            lab.suffix(),
            stranger.0,
            peer("gw", "10.2.0.2", Some(51820), "wireguard", &k.gateway.1)
        ),
    );
    lab.scold("p", "client", "client", &cfg);
    std::thread::sleep(Duration::from_millis(300));
    let _ = lab.exec("p", "ping -c 3 -i 0.3 -W 1 10.4.0.2");
    // Junk of the sizes of WireGuard messages, and a closed-port control probe.
    for size in [1, 32, 92, 148] {
        let _ = lab.exec(
            "p",
            &format!("sh -c 'head -c {size} /dev/urandom | socat -u - UDP4:10.2.0.2:51820,bind=10.2.0.9'"),
        );
    }
    let _ = lab.exec(
        "p",
        "sh -c 'echo control | socat -u - UDP4:10.2.0.2:51999,bind=10.2.0.9'",
    );
    std::thread::sleep(Duration::from_millis(1500));
    lab.stop("client");
    lab.stop("tcpdump");

    let to_port = must(&format!(
        "tcpdump -n -r {} 'dst host 10.2.0.2 and udp dst port 51820' 2>/dev/null | wc -l",
        pcap.display()
    ));
    assert!(
        to_port.trim().parse::<u32>().unwrap_or(0) >= 5,
        "the probes did not reach the gateway ({to_port})"
    );
    let answers = must(&format!(
        "tcpdump -n -r {} 'src host 10.2.0.2' 2>/dev/null",
        pcap.display()
    ));
    assert!(
        answers.trim().is_empty(),
        "the gateway answered a stranger:\n{answers}"
    );
    // The kernel did try to answer the closed-port probe (and the pings), so the
    // capture would have seen it: the policy's drop counter is not zero.
    let policy = must(&format!(
        "ip netns exec {} nft list chain inet scold_hidden output",
        lab.ns("g")
    ));
    let dropped: u64 = policy
        .lines()
        .find(|l| l.contains("answers no one else"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 1,
        "the policy dropped nothing, so the capture proves nothing:\n{policy}"
    );
    let glog = lab.log("gateway");
    assert!(!glog.contains("panicked"), "{glog}");
}

/// Scheme 4.3: the proxy relays a TCP service port from its own address through the
/// tunnel, starting with a PROXY v2 header that carries the client's address.
#[test]
fn nat_mode_with_proxy_v2_header() {
    let mut lab = lab();
    let k = keys3();
    let [gw, ..] = write_configs(&lab, "wireguard", &k);
    let proxy = lab.write(
        "proxy-nat.toml",
        &format!(
            "{}{}[[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"gw\" }}\n\
             [nat]\ntun_name = \"sn{}\"\nsource = \"100.64.0.1\"\n\
             [[nat_services]]\nprotocol = \"tcp\"\nlisten = \"10.1.0.1:8080\"\ntarget = \"10.4.0.2:8080\"\nproxy_protocol = true\n\
             [[nat_services]]\nprotocol = \"udp\"\nlisten = \"10.1.0.1:8053\"\ntarget = \"10.4.0.2:8053\"\n",
            tunnel("wireguard", "0.0.0.0:51820", &k.proxy.0),
            peer("gw", "10.2.0.2", Some(51820), "wireguard", &k.gateway.1),
            lab.suffix()
        ),
    );
    let target = lab.write(
        "target-nat.toml",
        "source = \"10.4.0.2\"\n[[routes]]\ndestination = \"100.64.0.1/32\"\nvia = { gateway = \"10.3.0.1\" }\n",
    );
    let before_proxy = lab.routing("p", false);
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("t", "target", "target", &target);
    lab.scold("p", "proxy", "proxy", &proxy);
    let got = lab.path("nat.bin");
    lab.spawn(
        "t",
        "tcp-sink",
        &[
            "timeout",
            "30",
            "socat",
            "-u",
            "TCP4-LISTEN:8080,reuseaddr",
            &format!("OPEN:{},creat,trunc", got.display()),
        ],
    );
    lab.spawn(
        "t",
        "udp-echo",
        &[
            "timeout",
            "30",
            "socat",
            "UDP4-RECVFROM:8053,fork,reuseaddr",
            "EXEC:cat",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    // The client runs no SCOLD software at all: it talks to the proxy's address.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let out = lab.exec(
            "c",
            "sh -c 'printf hello-through-nat | socat -u - TCP4:10.1.0.1:8080'",
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < end,
            "NAT TCP relay never accepted\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut data = Vec::new();
    while Instant::now() < end {
        data = std::fs::read(&got).unwrap_or_default();
        if data.ends_with(b"hello-through-nat") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = scold_tunnel::proxy_protocol::parse(&data).unwrap_or_else(|e| {
        panic!(
            "no PROXY v2 header at the target ({e}): {data:?}\n{}",
            lab.logs()
        )
    });
    let (src, dst) = h.addresses.expect("PROXY command with addresses");
    assert_eq!(
        src.ip().to_string(),
        "10.1.0.2",
        "client address in the header"
    );
    assert_eq!(dst.to_string(), "10.1.0.1:8080");
    assert_eq!(&data[h.len..], b"hello-through-nat");

    let out = lab.exec(
        "c",
        "sh -c 'echo nat-udp | socat -t 3 -T 3 - UDP4:10.1.0.1:8053'",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nat-udp",
        "UDP through the NAT relay\n{}",
        lab.logs()
    );
    lab.stop("proxy");
    assert_eq!(
        lab.routing("p", false),
        before_proxy,
        "proxy routing not restored"
    );
}
