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

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The tests build seven namespaces each; one at a time keeps a 2-core machine usable.
static SERIAL: Mutex<()> = Mutex::new(());

const SECRET: &str = "c2NvbGQtY29udHJvbC10ZXN0LXNlY3JldC0wMTIzNDU=";
const NOTIFY_SECRET: &str = "cHJveHktbm90aWZ5LXRlc3Qtc2VjcmV0LTAxMjM0NTY=";

const NS: [&str; 7] = ["k", "c", "a", "b", "g", "t", "r"];

/// Namespaces (suffixed with a per-test id):
///
/// ```text
///            k: coordinator, scold dns, scold resolver (10.9.N.1 towards each node)
///           /  |  \   \
///  c 10.1.0.2 -- 10.1.0.1 a (proxy p1) 10.2.0.1 -- 10.2.0.2 \
///  c 10.5.0.2 -- 10.5.0.1 b (proxy p2) 10.6.0.1 -- 10.6.0.2  g (gateway gw1, 10.7.0.1)
///                                                 g 10.3.0.1 -- 10.3.0.2 t (target web)
///                                                 t 10.4.0.2 -- 10.4.0.1 r (main link)
/// ```
///
/// r has no route back to the client: replies that leave by the main link are lost,
/// so only the return path through g works. The client has no route to the target
/// but its tunnel.
struct Net {
    s: String,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Net {
    fn new() -> Net {
        assert!(
            is_root(),
            "these tests build network namespaces and need root"
        );
        for (t, p) in [
            ("ip", "iproute2"),
            ("ping", "iputils-ping"),
            ("socat", "socat"),
            ("hping3", "hping3"),
            ("nft", "nftables"),
            ("sha256sum", "coreutils"),
            ("timeout", "coreutils"),
        ] {
            require(t, p);
        }
        let s = format!(
            "{}{}",
            std::process::id() % 100000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let net = Net {
            s,
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
        };
        let s = &net.s;
        for n in NS {
            must(&format!(
                "ip netns add w{n}{s} && ip -n w{n}{s} link set lo up"
            ));
        }
        let links = [
            ("k", "a", "10.9.1.1/24", "10.9.1.2/24"),
            ("k", "b", "10.9.2.1/24", "10.9.2.2/24"),
            ("k", "g", "10.9.3.1/24", "10.9.3.2/24"),
            ("k", "t", "10.9.4.1/24", "10.9.4.2/24"),
            ("c", "a", "10.1.0.2/24", "10.1.0.1/24"),
            ("c", "b", "10.5.0.2/24", "10.5.0.1/24"),
            ("a", "g", "10.2.0.1/24", "10.2.0.2/24"),
            ("b", "g", "10.6.0.1/24", "10.6.0.2/24"),
            ("g", "t", "10.3.0.1/24", "10.3.0.2/24"),
            ("t", "r", "10.4.0.2/24", "10.4.0.1/24"),
        ];
        for (x, y, ax, ay) in links {
            must(&format!(
                "ip link add {x}{y}{s} type veth peer name {y}{x}{s} && \
                 ip link set {x}{y}{s} netns w{x}{s} && ip link set {y}{x}{s} netns w{y}{s} && \
                 ip -n w{x}{s} addr add {ax} dev {x}{y}{s} && ip -n w{x}{s} link set {x}{y}{s} up && \
                 ip -n w{y}{s} addr add {ay} dev {y}{x}{s} && ip -n w{y}{s} link set {y}{x}{s} up"
            ));
        }
        must(&format!("ip -n wg{s} addr add 10.7.0.1/32 dev lo"));
        must(&format!("ip -n wg{s} route add 10.4.0.0/24 via 10.3.0.2"));
        must(&format!("ip -n wa{s} route add 10.7.0.1/32 via 10.2.0.2"));
        must(&format!("ip -n wb{s} route add 10.7.0.1/32 via 10.6.0.2"));
        must(&format!("ip -n wt{s} route add default via 10.4.0.1"));
        net
    }

    fn ns(&self, n: &str) -> String {
        format!("w{n}{}", self.s)
    }

    fn dev(&self, d: &str) -> String {
        format!("{d}{}", self.s)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.path(name), text).expect("write config");
        self.p(name)
    }

    fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{label}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push((label.to_string(), child));
    }

    fn scold(&mut self, n: &str, label: &str, role: &str, config: &str) {
        let bin = scold_bin().display().to_string();
        self.spawn(n, label, &[&bin, role, "--config", config]);
    }

    fn stop(&mut self, label: &str) {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.children.remove(i);
        terminate(&mut child);
    }

    /// SIGKILL by PID: the process gets no chance to say goodbye.
    fn kill9(&mut self, label: &str) {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.children.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(l, _)| {
                let log = self.log(l);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {l}\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    fn wait_log(&self, label: &str, text: &str, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if self.log(label).contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{label} never logged {text:?}\n{}", self.logs());
    }

    fn exec(&self, n: &str, cmd: &str) -> std::process::Output {
        sh(&format!("timeout 30 ip netns exec {} {cmd}", self.ns(n)))
    }

    fn ping(&self, count: u32) -> bool {
        self.exec("c", &format!("ping -n -q -c {count} -i 0.2 -W 1 10.4.0.2"))
            .status
            .success()
    }

    fn wait_ping(&self) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if self.ping(1) {
                return;
            }
        }
        panic!(
            "no ping through the indirect route in 20 s\n{}",
            self.logs()
        );
    }

    /// Fetches the target's file over TCP through the tunnel and compares checksums.
    fn fetch(&self, name: &str) {
        let out = self.path(name);
        let o = self.exec(
            "c",
            &format!(
                "timeout 20 socat -u TCP:10.4.0.2:8080,connect-timeout=5 CREATE:{}",
                out.display()
            ),
        );
        assert!(
            o.status.success(),
            "fetch failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        assert_eq!(
            sha256(&out),
            sha256(&self.path("payload.bin")),
            "the fetched file differs"
        );
    }

    /// What SCOLD may touch on the target: rules, every table but the kernel's local
    /// one, and the nftables ruleset.
    fn target_state(&self) -> String {
        let out = self.exec(
            "t",
            "sh -c 'ip rule; ip -6 rule; ip route show table all; ip -6 route show table all; nft list ruleset'",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("fe80::") && !l.contains("table local"))
            .map(|l| l.replace(" linkdown", ""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn scold_cli(&self, n: &str, args: &str) -> std::process::Output {
        self.exec(n, &format!("{} {args}", scold_bin().display()))
    }

    fn ctl(&self, args: &str) -> String {
        let certs = self.p("certs");
        let o = self.scold_cli(
            "k",
            &format!(
                "ctl --coordinator 127.0.0.1:7800 --ca {certs}/ca.crt --cert {certs}/operator-admin.crt --key {certs}/operator-admin.key --timeout 5 {args}"
            ),
        );
        assert!(
            o.status.success(),
            "scold ctl {args} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl("--json status")).expect("status JSON");
        v
    }

    /// Polls the status until `pred` holds, up to `secs`.
    fn wait_status(
        &self,
        what: &str,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if Instant::now() >= end {
                panic!("never saw {what} in {secs} s: {s:#}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_phase(&self, phase: &str, proxies: &[&str], secs: u64) -> serde_json::Value {
        self.wait_status(&format!("phase {phase} with {proxies:?}"), secs, |s| {
            let t = &s["targets"][0];
            t["phase"] == phase
                && t["proxies"].as_array().is_some_and(|a| {
                    a.iter()
                        .map(|p| p.as_str().unwrap_or(""))
                        .eq(proxies.iter().copied())
                })
        })
    }

    fn wait_nodes_up(&self) {
        self.wait_status("p1, p2 and gw1 up", 20, |s| {
            let up = |list: &serde_json::Value, name: &str| {
                list.as_array()
                    .is_some_and(|a| a.iter().any(|n| n["name"] == name && n["health"] == "up"))
            };
            up(&s["proxies"], "p1") && up(&s["proxies"], "p2") && up(&s["gateways"], "gw1")
        });
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            terminate(c);
        }
        for n in NS {
            let _ = sh(&format!("ip netns del w{n}{}", self.s));
        }
    }
}

/// Extra config text per role, for what a test exercises.
#[derive(Default)]
struct Extra {
    target: String,
    p1: String,
}

/// Certificates, configs and every process but the clients.
fn start(net: &mut Net, extra: Extra) {
    let bin = scold_bin().display().to_string();
    let ca = net.p("ca");
    let certs = net.p("certs");
    must(&format!("{bin} ca --dir {ca} init"));
    for (role, name) in [
        ("coordinator", "main"),
        ("operator", "admin"),
        ("proxy", "p1"),
        ("proxy", "p2"),
        ("gateway", "gw1"),
        ("target", "web"),
    ] {
        must(&format!(
            "{bin} ca --dir {ca} issue --role {role} --name {name} --out {certs}"
        ));
    }
    let tls = |role: &str, name: &str| {
        format!(
            "[control.tls]\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/{role}-{name}.crt\"\nkey = \"{certs}/{role}-{name}.key\"\ncrl = \"{ca}/crl.pem\"\n"
        )
    };

    // TargetDNS and a client site's resolver, in the control namespace.
    net.write(
        "example.net.zone",
        "$ORIGIN example.net.\n$TTL 60\n@ SOA ns1 admin 1 3600 600 86400 10\n@ NS ns1\nns1 A 10.9.4.1\nwww 10 A 10.4.0.2\n",
    );
    let dns = net.write(
        "dns.toml",
        &format!(
            "listen = [\"127.0.0.1:5353\"]\njournal = \"{}\"\n[[zone]]\nname = \"example.net\"\nfile = \"{}\"\n[[key]]\nname = \"coordinator\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{SECRET}\"\n[[key.allow]]\nnames = [\"www.example.net\"]\ntypes = [\"ALT\", \"A\", \"AAAA\"]\n",
            net.p("dns.journal"),
            net.p("example.net.zone")
        ),
    );
    let resolver = net.write(
        "resolver.toml",
        &format!(
            "listen = [\"0.0.0.0:5300\"]\nupstream = [\"127.0.0.1:5353\"]\n[[notify_key]]\nname = \"p1\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{NOTIFY_SECRET}\"\n[[notify_key]]\nname = \"p2\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{NOTIFY_SECRET}\"\n"
        ),
    );
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
"#,
            net.p("coordinator.redb")
        ),
    );
    let s = net.s.clone();
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
    let payload = net.path("payload.bin");
    must(&format!(
        "head -c 400000 /dev/urandom > {}",
        payload.display()
    ));
    // socat itself, not through `sh -c`: the clean-up stops the PID it started, and a
    // shell in between would leave socat running after the test.
    let file = format!("FILE:{}", payload.display());
    net.spawn(
        "t",
        "web-server",
        &["socat", "-U", "TCP-LISTEN:8080,reuseaddr,fork", &file],
    );

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
    let s = net.s.clone();
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
    let mut net = Net::new();
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
    let mut net = Net::new();
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
    let mut net = Net::new();
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
    let events = net.ctl("events --limit 200");
    assert!(events.contains("traceback"), "{events}");
    assert!(events.contains("10.1.0.66"), "{events}");
    assert!(events.contains("proxy_attacked"), "{events}");
    // The block list leaves with the proxy.
    net.stop("p1");
    let tables = String::from_utf8_lossy(&net.exec("a", "nft list tables").stdout).into_owned();
    assert!(!tables.contains("scold"), "{tables}");
}
