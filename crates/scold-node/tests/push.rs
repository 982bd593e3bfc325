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
            ("openssl", "openssl"),
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
            ("k", "c", "10.9.5.1/24", "10.9.5.2/24"),
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
        // The client host's one address, 10.8.0.1: it registers it, proxies push to it
        // and its tunnel packets leave from it towards either proxy.
        must(&format!("ip -n wc{s} addr add 10.8.0.1/32 dev lo"));
        must(&format!(
            "ip -n wc{s} route replace 10.1.0.0/24 dev ca{s} src 10.8.0.1"
        ));
        must(&format!(
            "ip -n wc{s} route replace 10.5.0.0/24 dev cb{s} src 10.8.0.1"
        ));
        must(&format!("ip -n wa{s} route add 10.8.0.1/32 via 10.1.0.2"));
        must(&format!("ip -n wb{s} route add 10.8.0.1/32 via 10.5.0.2"));
        must(&format!("ip -n wk{s} route add 10.8.0.1/32 via 10.9.5.2"));
        net
    }

    fn ns(&self, n: &str) -> String {
        format!("w{n}{}", self.s)
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

    /// SIGTERM by PID, then SIGKILL after 5 s.
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

    /// Pings the target from the client host (from 10.8.0.1, no name looked up).
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

/// Certificates, configs and every process, the client agent included.
fn start(net: &mut Net) {
    let bin = scold_bin().display().to_string();
    let ca = net.p("ca");
    let certs = net.p("certs");
    must(&format!("{bin} ca --dir {ca} init"));
    for (role, name) in [
        ("coordinator", "main"),
        ("operator", "admin"),
        ("proxy", "p1"),
        ("proxy", "p2"),
        ("proxy", "p3"),
        ("gateway", "gw1"),
        ("target", "web"),
        ("client", "site1"),
        ("client", "site2"),
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
    let admission = |name: &str, port: u16| {
        format!(
            "[admission]\nlisten = \"0.0.0.0:{port}\"\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/proxy-{name}.crt\"\nkey = \"{certs}/proxy-{name}.key\"\n"
        )
    };
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
client_push_port = 5444
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
scheme = "4.2"
ttl = 1
proxies = 2
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
    let proxy = |name: &str, n: u8, public: &str, toward_gw: &str| {
        format!(
            "[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:51820\"\n{}\n\
             [control]\ncoordinator = \"10.9.{n}.1:7800\"\naddress = \"{public}\"\nendpoint = \"{toward_gw}:51820\"\ncapacity_mbps = 1000\norganisation = \"org-{name}\"\n{}\n\
             [[notify]]\nresolver = \"10.9.{n}.1:5300\"\nkey = \"hmac-sha256:{name}:{NOTIFY_SECRET}\"\n",
            admission(name, 5443),
            tls("proxy", name)
        )
    };
    let p1 = net.write("p1.toml", &proxy("p1", 1, "10.1.0.1", "10.2.0.1"));
    let p2 = net.write("p2.toml", &proxy("p2", 2, "10.5.0.1", "10.6.0.1"));
    let target = net.write(
        "target.toml",
        &format!(
            "source = \"10.4.0.2\"\n[control]\ncoordinator = \"10.9.4.1:7800\"\n{}",
            tls("target", "web")
        ),
    );
    let client = net.write(
        "client.toml",
        &format!(
            "tun_name = \"sc{s}\"\ntable = 5110\nrule_priority = 5110\n[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:0\"\n\
             [agent]\nlisten = \"127.0.0.53:53\"\nupstream = [\"10.9.5.1:5300\"]\nca = \"{certs}/ca.crt\"\ncrl = \"{ca}/crl.pem\"\n\
             [agent.push]\nlisten = \"10.8.0.1:5444\"\ncert = \"{certs}/client-site1.crt\"\nkey = \"{certs}/client-site1.key\"\n\
             [control]\ncoordinator = \"10.9.5.1:7800\"\naddress = \"10.8.0.1\"\n{}",
            tls("client", "site1")
        ),
    );

    // A second client site that registers but whose push port nobody reaches: it must
    // not hold the divert up.
    let client2 = net.write(
        "client2.toml",
        &format!(
            "tun_name = \"sd{s}\"\ntable = 5111\nrule_priority = 5111\n[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:0\"\n\
             [agent]\nlisten = \"127.0.0.54:53\"\nupstream = [\"10.9.5.1:5300\"]\nca = \"{certs}/ca.crt\"\n\
             [control]\ncoordinator = \"10.9.5.1:7800\"\naddress = \"10.8.0.2\"\n{}",
            tls("client", "site2")
        ),
    );

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
    net.scold("c", "client", "client", &client);
    net.scold("c", "client2", "client", &client2);
    net.wait_nodes_up();
    net.wait_log("client", "taking route pushes from proxies", 20);
    net.wait_log("client", "registered with the coordinator", 20);
    net.wait_log("client2", "registered with the coordinator", 20);
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
    let mut net = Net::new();
    start(&mut net);
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
        route.contains(&format!("dev sc{}", net.s)) && route.contains("src 10.8.0.1"),
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
    assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("dev sc{}", net.s)));

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
        !String::from_utf8_lossy(&r.stdout).contains(&format!("dev sc{}", net.s)),
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
        if !r.contains(&format!("dev sc{}", net.s)) {
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
