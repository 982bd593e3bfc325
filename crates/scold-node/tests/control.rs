//! The whole system linked: real `scold ca`, `scold dns`, `scold resolver`,
//! `scold coordinator`, `scold gateway`, two `scold proxy`, `scold target` and
//! `scold client` processes in network namespaces, driven with `scold ctl`.
//!
//! - Divert by the operator; the client pings and fetches the target through proxy 1,
//!   the gateway and the target's return path while the main link cannot carry the
//!   replies; proxy 1 is killed and the coordinator resets the target to proxy 2; the
//!   restore puts the target's rules, routes and nftables ruleset back exactly.
//! - A UDP flood on the target's main link raises the alarm by itself; the divert
//!   follows; after the flood and the hold-down the all-clear restores.
//! - A flood at proxy 1 is blocked by its filter (alert line, nftables element,
//!   traceback at the coordinator), and its self-defence resets it out.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `socat`, `hping3`, `nft`
//! (nftables), `sha256sum`, `timeout` (coreutils) and a built binary (`cargo build -p
//! scold`, or SCOLD_BIN=/path/to/scold).

use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::certs::ca_issue;
use common::consortium::{
    consortium, control_tls, dns_configs, serve_payload, ConsortiumNet, NOTIFY_SECRET, SECRET,
};
use scold_testkit::{must, Net};

/// The tests build seven namespaces each; one at a time keeps a 2-core machine usable.
static SERIAL: Mutex<()> = Mutex::new(());

/// The topology of [`consortium`]: the client has a link to each proxy and nothing else.
fn net() -> Net {
    consortium(false, &[("hping3", "hping3"), ("nft", "nftables")])
}

/// Extra config text per role, for what a test exercises.
#[derive(Default)]
struct Extra {
    target: String,
    p1: String,
}

/// Certificates, configs and every process but the clients.
fn start(net: &mut Net, extra: Extra) {
    let ca = net.p("ca");
    let certs = net.p("certs");
    ca_issue(
        net,
        "ca",
        "certs",
        &[
            ("coordinator", "main"),
            ("operator", "admin"),
            ("proxy", "p1"),
            ("proxy", "p2"),
            ("gateway", "gw1"),
            ("target", "web"),
        ],
    );
    let tls = |role: &str, name: &str| control_tls(net, role, name);

    // TargetDNS and a client site's resolver, in the control namespace.
    let (dns, resolver) = dns_configs(net);
    let coordinator = net.write(
        "coordinator.toml",
        &format!(
            r#"[coordinator]
listen = "0.0.0.0:7800"
state = "{}"
heartbeat_ms = 200
down_after_ms = 1500
max_backoff_ms = 500
[tls]
ca = "{certs}/ca.crt"
cert = "{certs}/coordinator-main.crt"
key = "{certs}/coordinator-main.key"
crl = "{ca}/crl.pem"
[[target]]
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["10.4.0.2"]
gateways = ["gw1"]
ttl = 1
proxies = 1
[target.dns]
server = "127.0.0.1:5353"
key = "hmac-sha256:coordinator:{SECRET}"
# The consortium binds each proxy's address, capacity and organisation.
[[proxy]]
name = "p1"
address = "10.1.0.1"
capacity_mbps = 2000
organisation = "org-p1"
[[proxy]]
name = "p2"
address = "10.5.0.1"
capacity_mbps = 1000
organisation = "org-p2"
"#,
            net.p("coordinator.redb")
        ),
    );
    let s = net.suffix().to_string();
    let gateway = net.write(
        "gateway.toml",
        &format!(
            "lan_interface = \"gt{s}\"\ntun_name = \"sg{s}\"\n[tunnel]\nencap = \"udp\"\nlisten = \"10.7.0.1:51820\"\n\
             [control]\ncoordinator = \"10.9.3.1:7800\"\naddress = \"10.7.0.1\"\ninside = \"10.3.0.1\"\norganisation = \"site\"\n{}",
            tls("gateway", "gw1")
        ),
    );
    let proxy = |name: &str,
                 n: u8,
                 client: &str,
                 public: &str,
                 toward_gw: &str,
                 capacity: u32,
                 extra: &str| {
        format!(
            "[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:51820\"\n{extra}\n\
             [control]\ncoordinator = \"10.9.{n}.1:7800\"\naddress = \"{public}\"\nendpoint = \"{toward_gw}:51820\"\ncapacity_mbps = {capacity}\norganisation = \"org-{name}\"\n{}\n\
             [[notify]]\nresolver = \"10.9.{n}.1:5300\"\nkey = \"hmac-sha256:{name}:{NOTIFY_SECRET}\"\n\
             [[notify]]\nresolver = \"10.9.{n}.1:5399\"\nkey = \"hmac-sha256:{name}:{NOTIFY_SECRET}\"\n\
             [[sessions]]\nclient = \"{client}\"\nencap = \"udp\"\ntargets = [\"10.4.0.2/32\"]\n",
            tls("proxy", name)
        )
    };
    let p1 = net.write(
        "p1.toml",
        &proxy("p1", 1, "10.1.0.2", "10.1.0.1", "10.2.0.1", 2000, &extra.p1),
    );
    let p2 = net.write(
        "p2.toml",
        &proxy("p2", 2, "10.5.0.2", "10.5.0.1", "10.6.0.1", 1000, ""),
    );
    let target = net.write(
        "target.toml",
        &format!(
            "source = \"10.4.0.2\"\n{}\n[control]\ncoordinator = \"10.9.4.1:7800\"\nmetrics = \"10.9.4.2:9803\"\n{}",
            extra.target,
            tls("target", "web")
        ),
    );

    // A file the target serves, fetched through the tunnel.
    serve_payload(net, 400_000);

    net.scold("k", "dns", "dns", &dns);
    net.scold("k", "resolver", "resolver", &resolver);
    net.scold("k", "coordinator", "coordinator", &coordinator);
    net.wait_log("coordinator", "coordinator listening", 20);
    net.scold("g", "gateway", "gateway", &gateway);
    net.scold("a", "p1", "proxy", &p1);
    net.scold("b", "p2", "proxy", &p2);
    net.scold("t", "target", "target", &target);
    net.wait_nodes_up();
    net.wait_log("target", "registered with the coordinator", 20);
}

fn client(net: &mut Net, label: &str, source: &str, proxy: &str, tun: &str) {
    let s = net.suffix().to_string();
    let cfg = net.write(
        &format!("{label}.toml"),
        &format!(
            "source = \"{source}\"\ntun_name = \"{tun}{s}\"\ntable = 5110\nrule_priority = 5110\n[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:0\"\n\
             [[peers]]\nname = \"proxy\"\naddress = \"{proxy}\"\nport = 51820\nencap = \"udp\"\n\
             [[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"proxy\" }}\n"
        ),
    );
    net.scold("c", label, "client", &cfg);
    net.wait_log(label, "client tunnel ready", 10);
}

#[test]
fn divert_reset_and_restore_end_to_end() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    // Strict reverse-path filtering, as many distributions ship it: the gateway's packets
    // carry client sources that route out of the main link, so the return path must
    // loosen it while it exists and put it back afterwards.
    let tg = net.dev("tg");
    let rp_filter = |net: &Net| {
        let o = net.exec(
            "t",
            &format!("sh -c 'cat /proc/sys/net/ipv4/conf/all/rp_filter /proc/sys/net/ipv4/conf/{tg}/rp_filter'"),
        );
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    must(&format!(
        "ip netns exec {} sysctl -q -w net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{tg}.rp_filter=1",
        net.ns("t")
    ));
    let before = net.target_state();
    start(&mut net, Extra::default());
    client(&mut net, "client1", "10.1.0.2", "10.1.0.1", "sc");
    // Before the divert nothing carries the client to the target.
    assert!(!net.ping(1), "ping reached the target before any divert");

    net.ctl("divert web");
    net.wait_phase("diverted", &["p1"], 30);
    net.wait_ping();
    net.fetch("fetched-1.bin");
    let during = net.target_state();
    assert!(
        during.contains("fwmark 0x5c5c lookup 5104"),
        "no return-path rule:\n{during}"
    );
    assert!(
        during.contains("default via 10.3.0.1") && during.contains("table 5104"),
        "no return-path route:\n{during}"
    );
    assert!(
        during.contains("table inet scold_return"),
        "no return-path marks:\n{during}"
    );
    assert_eq!(
        rp_filter(&net),
        "2 2",
        "reverse-path filtering not loosened"
    );
    // The main link cannot carry replies: the only default route of the main table
    // still points at it, so the replies above went through the gateway.
    assert!(during.contains("default via 10.4.0.1"), "{during}");
    // The target's metrics endpoint runs beside the link.
    let m = String::from_utf8_lossy(
        &net.exec(
            "k",
            // HTTP/1.0: the server closes after the answer. The request side stays open
            // (ignoreeof) so the server never sees a half-closed client and gives up.
            "sh -c 'printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" | timeout 10 socat STDIO,ignoreeof TCP:10.9.4.2:9803'",
        )
        .stdout,
    )
    .into_owned();
    assert!(
        m.contains("scold_node_commands_total{kind=\"set_return_path\",result=\"done\"} 1"),
        "{m}"
    );

    // Proxy 1 dies without a word: the coordinator resets the target to proxy 2.
    net.kill9("p1");
    net.wait_phase("diverted", &["p2"], 30);
    net.stop("client1");
    client(&mut net, "client2", "10.5.0.2", "10.5.0.1", "sd");
    net.wait_ping();
    net.fetch("fetched-2.bin");
    // Proxy 2 notified the resolver that answers, and logged the one that does not:
    // one failure does not fail the order.
    net.wait_log("p2", "resolver notified", 10);
    assert!(net.log("p2").contains("NOTIFY failed"), "{}", net.log("p2"));
    assert!(
        net.log("resolver").contains("signed NOTIFY"),
        "{}",
        net.log("resolver")
    );

    net.ctl("restore web");
    net.wait_phase("normal", &[], 30);
    let after = net.target_state();
    assert_eq!(
        before, after,
        "the target's routing or nftables were not put back"
    );
    assert!(
        !net.ping(1),
        "ping still reaches the target after the restore"
    );
    let events = net.ctl("events --limit 200");
    assert!(events.contains("operator_divert"), "{events}");
    assert!(
        events.contains("proxy_down") || events.contains("silent"),
        "{events}"
    );
}

#[test]
fn flood_on_the_main_link_diverts_and_calm_restores() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    let before = net.target_state();
    let tr = net.dev("tr");
    start(
        &mut net,
        Extra {
            // The gateway shares nothing with other routers here, but learning its MAC
            // exercises the neighbour-table path.
            target: format!(
                "[return_path]\ngateway_mac = \"learn\"\n\
                 [detect]\ninterface = \"{tr}\"\ninterval_ms = 100\none_in = 1\nalarm_after_ms = 500\nhold_down_ms = 3000\nwarmup_ms = 1000\n\
                 [detect.floors]\npps = 300.0\nudp_pps = 200.0\nbps = 200000.0\n"
            ),
            p1: String::new(),
        },
    );
    client(&mut net, "client1", "10.1.0.2", "10.1.0.1", "sc");
    // Past the detector's warm-up before the flood starts.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(net.status()["targets"][0]["phase"], "normal");

    // A bounded UDP flood at the main link: about 2000 packets/s for at most 4 s.
    net.spawn(
        "r",
        "flood",
        &[
            "timeout", "6", "hping3", "--udp", "-p", "9", "-i", "u500", "-c", "8000", "-q",
            "10.4.0.2",
        ],
    );
    net.wait_phase("diverted", &["p1"], 30);
    net.wait_ping();
    let during = net.target_state();
    assert!(
        during.contains("ether saddr"),
        "the gateway's MAC was not learned:\n{during}"
    );
    net.wait_log("target", "attack on the main link: alarm", 5);
    assert!(
        net.log("target").contains("udp_flood"),
        "{}",
        net.log("target")
    );

    // The flood ends; after the hold-down the target sends the all-clear.
    net.wait_phase("normal", &[], 40);
    net.wait_log("target", "all clear", 5);
    assert_eq!(before, net.target_state());
    let events = net.ctl("events --limit 200");
    assert!(events.contains("alarm"), "{events}");
    assert!(events.contains("all_clear"), "{events}");
}

#[test]
fn proxy_filter_blocks_a_flood_and_self_defence_resets_the_proxy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = net();
    let ac = net.dev("ac");
    let alerts = net.p("alerts.jsonl");
    start(
        &mut net,
        Extra {
            target: String::new(),
            // CPU saturation is off (cpu_busy_max above 1): the machine running the test
            // may be busy with anything.
            p1: format!(
                "[filter]\ninterface = \"{ac}\"\nalerts = \"{alerts}\"\nudp_pps = 200.0\nblock_after_drops = 30\nblock_secs = 20\ntraceback_secs = 1\n\
                 [selfdefence]\nrx_pps_max = 600.0\nsustain_ms = 1000\nrecover_ms = 60000\ncpu_busy_max = 2.0\ninterval_ms = 200\n"
            ),
        },
    );
    net.ctl("divert web");
    net.wait_phase("diverted", &["p1"], 30);

    // A UDP flood at proxy 1 from a source that is no admitted client.
    net.spawn(
        "c",
        "flood",
        &[
            "timeout",
            "8",
            "hping3",
            "--udp",
            "-a",
            "10.1.0.66",
            "-p",
            "9",
            "-i",
            "u500",
            "-c",
            "12000",
            "-q",
            "10.1.0.1",
        ],
    );
    // The filter blocks it: an alert line and a kernel element.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let a = std::fs::read_to_string(&alerts).unwrap_or_default();
        if a.contains("\"kind\":\"blocked\"") && a.contains("10.1.0.66") {
            break;
        }
        assert!(Instant::now() < end, "no block alert:\n{a}\n{}", net.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let set = String::from_utf8_lossy(&net.exec("a", "nft list set inet scold blocked4").stdout)
        .into_owned();
    assert!(
        set.contains("10.1.0.66"),
        "not blocked in the kernel:\n{set}"
    );
    // Self-defence: the proxy reports the attack on itself and is reset out.
    net.wait_phase("diverted", &["p2"], 30);
    let s = net.status();
    let p1 = s["proxies"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "p1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(p1["health"], "attacked", "{s:#}");
    // Its heartbeats tell the coordinator what its filter dropped (the status page
    // and `scold ctl --json proxies` show it).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = net.status();
        let drops = s["proxies"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "p1"))
            .and_then(|p| p["load"]["filter_drops"].as_u64())
            .unwrap_or(0);
        if drops > 0 {
            break;
        }
        assert!(Instant::now() < end, "p1 reported no filter drops:\n{s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The traceback goes out every traceback_secs (1 s here): the reset can come first.
    let end = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = net.ctl("events --limit 200");
        if events.contains("traceback") && events.contains("10.1.0.66") {
            break events;
        }
        assert!(
            Instant::now() < end,
            "no traceback naming 10.1.0.66:\n{events}\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(events.contains("proxy_attacked"), "{events}");
    // The block list leaves with the proxy.
    net.stop("p1");
    let tables = String::from_utf8_lossy(&net.exec("a", "nft list tables").stdout).into_owned();
    assert!(!tables.contains("scold"), "{tables}");
}
