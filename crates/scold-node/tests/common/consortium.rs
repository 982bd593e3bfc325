//! The linked system's topology (coordinator and DNS in a control namespace, two
//! proxies, a gateway, the target and its attacked main link, a client site) and what
//! the tests do with it: `scold ctl`, waiting for a phase, ping and a checksummed TCP
//! fetch through the indirect route, the target's routing state.
#![allow(dead_code)]

use super::certs::ca_issue;
use super::sha256;
use scold_testkit::{must, Net};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Namespaces (suffixed with a per-test id, prefixed with `w`):
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
///
/// With `client_host`, the client namespace also has a link to k (10.9.5.2) and one
/// host address, 10.8.0.1, on its loopback: it registers it, proxies push to it and its
/// tunnel packets leave from it towards either proxy.
pub fn consortium(client_host: bool, tools: &[(&str, &str)]) -> Net {
    let mut all = vec![
        ("ping", "iputils-ping"),
        ("socat", "socat"),
        ("sha256sum", "coreutils"),
    ];
    all.extend_from_slice(tools);
    let net = Net::new("w", &["k", "c", "a", "b", "g", "t", "r"], &all);
    let mut links = vec![
        ("k", "a", "10.9.1.1/24", "10.9.1.2/24"),
        ("k", "b", "10.9.2.1/24", "10.9.2.2/24"),
        ("k", "g", "10.9.3.1/24", "10.9.3.2/24"),
        ("k", "t", "10.9.4.1/24", "10.9.4.2/24"),
    ];
    if client_host {
        links.push(("k", "c", "10.9.5.1/24", "10.9.5.2/24"));
    }
    links.extend([
        ("c", "a", "10.1.0.2/24", "10.1.0.1/24"),
        ("c", "b", "10.5.0.2/24", "10.5.0.1/24"),
        ("a", "g", "10.2.0.1/24", "10.2.0.2/24"),
        ("b", "g", "10.6.0.1/24", "10.6.0.2/24"),
        ("g", "t", "10.3.0.1/24", "10.3.0.2/24"),
        ("t", "r", "10.4.0.2/24", "10.4.0.1/24"),
    ]);
    for (x, y, ax, ay) in links {
        net.link(x, y, Some(ax), Some(ay));
    }
    must(&format!(
        "ip -n {} addr add 10.7.0.1/32 dev lo",
        net.ns("g")
    ));
    net.route("g", "10.4.0.0/24 via 10.3.0.2");
    net.route("a", "10.7.0.1/32 via 10.2.0.2");
    net.route("b", "10.7.0.1/32 via 10.6.0.2");
    net.route("t", "default via 10.4.0.1");
    if client_host {
        let (c, s) = (net.ns("c"), net.suffix().to_string());
        must(&format!("ip -n {c} addr add 10.8.0.1/32 dev lo"));
        must(&format!(
            "ip -n {c} route replace 10.1.0.0/24 dev ca{s} src 10.8.0.1"
        ));
        must(&format!(
            "ip -n {c} route replace 10.5.0.0/24 dev cb{s} src 10.8.0.1"
        ));
        net.route("a", "10.8.0.1/32 via 10.1.0.2");
        net.route("b", "10.8.0.1/32 via 10.5.0.2");
        net.route("k", "10.8.0.1/32 via 10.9.5.2");
    }
    net
}

/// `[control.tls]` of a node whose certificate `scold ca issue` wrote to `certs`.
pub fn control_tls(net: &Net, role: &str, name: &str) -> String {
    let (ca, certs) = (net.p("ca"), net.p("certs"));
    format!(
        "[control.tls]\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/{role}-{name}.crt\"\nkey = \"{certs}/{role}-{name}.key\"\ncrl = \"{ca}/crl.pem\"\n"
    )
}

/// A random file of `bytes` the target serves on TCP port 8080 (socat, one fork per
/// connection), named `payload.bin`.
pub fn serve_payload(net: &mut Net, bytes: u64) {
    let payload = net.path("payload.bin");
    must(&format!(
        "head -c {bytes} /dev/urandom > {}",
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
}

/// What the tests do on the topology of [`consortium`]: reach the target from the
/// client, fetch its file, read its routing state, drive the coordinator with `scold ctl`
/// and wait for its status. The pings also serve any topology whose client namespace
/// `c` reaches the target at 10.4.0.2 (the data-plane tests' one).
pub trait ConsortiumNet {
    /// Pings the target from the client namespace (no name looked up).
    fn ping(&self, count: u32) -> bool;

    /// Waits up to 20 s until a ping gets through the indirect route.
    fn wait_ping(&self);

    /// Fetches the target's file over TCP through the tunnel and compares checksums.
    fn fetch(&self, name: &str);

    /// What SCOLD may touch on the target: rules, every table but the kernel's local
    /// one, and the nftables ruleset.
    fn target_state(&self) -> String;

    /// `scold ctl ARGS` as the operator, in the control namespace; its stdout. Fails
    /// the test unless it succeeds.
    fn ctl(&self, args: &str) -> String;

    /// `scold ctl ARGS` in the control namespace with the certificate `cert` (e.g.
    /// `operator-admin`): (stdout, stderr, success), for a call that may be refused.
    fn ctl_as(&self, cert: &str, args: &str) -> (String, String, bool);

    /// The client's lookup of the target's name (repeated for up to 20 s) brings the
    /// agent's indirect route up and a ping gets through it; the proxy it went up
    /// through, from the agent's log.
    fn wait_indirect_route(&self) -> String;

    /// The coordinator's status, as `scold ctl --json status` prints it.
    fn status(&self) -> serde_json::Value;

    /// Polls the status until `pred` holds, up to `secs`.
    fn wait_status(
        &self,
        what: &str,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value;

    /// Waits up to `secs` until the target is in `phase` with exactly `proxies`.
    fn wait_phase(&self, phase: &str, proxies: &[&str], secs: u64) -> serde_json::Value;

    /// Waits until p1, p2 and gw1 are up at the coordinator.
    fn wait_nodes_up(&self);
}

impl ConsortiumNet for Net {
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

    fn target_state(&self) -> String {
        self.routing("t", true)
    }

    fn ctl(&self, args: &str) -> String {
        let (out, err, ok) = self.ctl_as("operator-admin", args);
        assert!(ok, "scold ctl {args} failed: {err}\n{}", self.logs());
        out
    }

    fn ctl_as(&self, cert: &str, args: &str) -> (String, String, bool) {
        let certs = self.p("certs");
        let o = self.scold_cli(
            "k",
            &format!(
                "ctl --coordinator 127.0.0.1:7800 --ca {certs}/ca.crt --cert {certs}/{cert}.crt --key {certs}/{cert}.key --timeout 5 {args}"
            ),
        );
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status.success(),
        )
    }

    fn wait_indirect_route(&self) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        while !self
            .out("c", "getent hosts www.example.net")
            .contains("10.4.0.2")
            || chosen_proxy(&self.log("client")).is_none()
        {
            assert!(
                Instant::now() < end,
                "no indirect route after the lookup:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.wait_ping();
        chosen_proxy(&self.log("client")).expect("checked")
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl("--json status")).expect("status JSON")
    }

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

/// The proxy the client agent's route went up through last, from its log.
pub fn chosen_proxy(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("indirect route up"))
        .and_then(|l| l.split("proxy=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
}

/// What [`start_linked`] sets up.
pub struct Linked<'a> {
    /// The target's scheme: "4.1" (client agents read ALT records) or "4.2" (proxies
    /// push routes to them).
    pub scheme: &'a str,
    /// Config text appended to one proxy's file (name, text), or to both with the name
    /// `*`; `{client_link}` in the text becomes that proxy's device towards the client
    /// site (what its self-defence watches).
    pub proxy_extra: Option<(&'a str, &'a str)>,
    /// The second client site has its address (10.8.0.2) and takes pushes on it, but no
    /// proxy has a route to it yet.
    pub site2_push: bool,
    /// Keys added to both proxies' `[admission]` table.
    pub admission_extra: &'a str,
}

impl Linked<'static> {
    /// Scheme 4.1 with nothing added to the proxies' configs and no second push site.
    pub const SCHEME_41: Linked<'static> = Linked {
        scheme: "4.1",
        proxy_extra: None,
        site2_push: false,
        admission_extra: "",
    };
}

/// The client host's applications look names up through the client agent's stub
/// resolver (127.0.0.53), one try of at most 5 s.
pub fn client_asks_agent(net: &mut Net) {
    net.resolv_conf("c", "nameserver 127.0.0.53\noptions timeout:5 attempts:1\n");
}

/// The secrets of the TSIG key the coordinator updates TargetDNS with, and of the
/// proxies' NOTIFY to the client site's resolver.
pub const SECRET: &str = "c2NvbGQtY29udHJvbC10ZXN0LXNlY3JldC0wMTIzNDU=";
pub const NOTIFY_SECRET: &str = "cHJveHktbm90aWZ5LXRlc3Qtc2VjcmV0LTAxMjM0NTY=";

/// TargetDNS (`scold dns` with the zone example.net and the coordinator's TSIG key) and
/// the client site's resolver (`scold resolver`, taking NOTIFY from p1 and p2): their
/// config files.
pub fn dns_configs(net: &Net) -> (PathBuf, PathBuf) {
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
    (dns, resolver)
}

/// On the topology of [`consortium`] with `client_host`: certificates (`scold ca`),
/// TargetDNS (`scold dns`, zone example.net) and the client site's resolver (`scold
/// resolver` on 10.9.5.1:5300) and the coordinator in k, the gateway gw1, proxies p1
/// (10.1.0.1) and p2 (10.5.0.1) with admission and push, the target `web`
/// (www.example.net, 10.4.0.2) serving `payload.bin` on TCP 8080, and two client agents
/// in c linked to the coordinator: site1 (10.8.0.1, stub resolver on 127.0.0.53, push
/// port 10.8.0.1:5444) and site2 (10.8.0.2, which no proxy reaches).
pub fn start_linked(net: &mut Net, opts: &Linked) {
    let (extra, site2_push) = (opts.proxy_extra, opts.site2_push);
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
            ("proxy", "p3"),
            ("gateway", "gw1"),
            ("target", "web"),
            ("client", "site1"),
            ("client", "site2"),
        ],
    );
    let tls = |role: &str, name: &str| control_tls(net, role, name);
    let admission = |name: &str, port: u16| {
        format!(
            "[admission]\nlisten = \"0.0.0.0:{port}\"\nca = \"{certs}/ca.crt\"\ncert = \"{certs}/proxy-{name}.crt\"\nkey = \"{certs}/proxy-{name}.key\"\n{}\n",
            opts.admission_extra
        )
    };
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
scheme = "{scheme}"
ttl = 1
proxies = 2
[target.dns]
server = "127.0.0.1:5353"
key = "hmac-sha256:coordinator:{SECRET}"
# The consortium binds each proxy's address (what ALT may carry), capacity and
# organisation; a proxy's own word on them is not taken.
[[proxy]]
name = "p1"
address = "10.1.0.1"
capacity_mbps = 1000
organisation = "org-p1"
[[proxy]]
name = "p2"
address = "10.5.0.1"
capacity_mbps = 1000
organisation = "org-p2"
"#,
            net.p("coordinator.redb"),
            scheme = opts.scheme,
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
    let client_link = |name: &str| net.dev(if name == "p1" { "ac" } else { "bc" });
    let proxy = |name: &str, n: u8, public: &str, toward_gw: &str| {
        format!(
            "[tunnel]\nencap = \"udp\"\nlisten = \"0.0.0.0:51820\"\n{}\n\
             [control]\ncoordinator = \"10.9.{n}.1:7800\"\naddress = \"{public}\"\nmetrics = \"127.0.0.1:9801\"\nendpoint = \"{toward_gw}:51820\"\ncapacity_mbps = 1000\norganisation = \"org-{name}\"\n{}\n\
             [[notify]]\nresolver = \"10.9.{n}.1:5300\"\nkey = \"hmac-sha256:{name}:{NOTIFY_SECRET}\"\n{}",
            admission(name, 5443),
            tls("proxy", name),
            extra
                .filter(|(p, _)| *p == name || *p == "*")
                .map(|(_, t)| t.replace("{client_link}", &client_link(name)))
                .unwrap_or_default()
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
             [agent]\nlisten = \"127.0.0.54:53\"\nupstream = [\"10.9.5.1:5300\"]\nca = \"{certs}/ca.crt\"\n{}\
             [control]\ncoordinator = \"10.9.5.1:7800\"\naddress = \"10.8.0.2\"\n{}",
            if site2_push {
                format!("[agent.push]\nlisten = \"10.8.0.2:5444\"\ncert = \"{certs}/client-site2.crt\"\nkey = \"{certs}/client-site2.key\"\n")
            } else {
                String::new()
            },
            tls("client", "site2")
        ),
    );
    if site2_push {
        must(&format!(
            "ip -n {} addr add 10.8.0.2/32 dev lo",
            net.ns("c")
        ));
    }

    serve_payload(net, 400_000);

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

/// Starts a download of the target's big file in the client (label "transfer", paced to
/// 1.5 MB/s so that it lasts long enough for a flood to fall in its middle, bounded to
/// 120 s) and waits until 3 MiB have arrived. Returns the file it
/// writes and its size at that moment.
pub fn start_paced_download(net: &mut Net) -> (PathBuf, u64) {
    let out = net.path("big.out");
    let reader = net.write("reader.py", super::PACED_READER);
    let (outs, readers) = (out.display().to_string(), reader.display().to_string());
    net.spawn(
        "c",
        "transfer",
        &[
            "timeout", "120", "python3", &readers, &outs, "1500000", "10.4.0.2", "8081", "60",
        ],
    );
    let size = |out: &PathBuf| std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(30);
    while size(&out) < 3 << 20 {
        assert!(
            Instant::now() < end && net.running("transfer"),
            "the transfer did not get going:\n{}\n{}",
            net.log("transfer"),
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = size(&out);
    (out, at)
}

/// Floods `proxy` from namespace `ns` (label "flood"): UDP to port 9 from the spoofed
/// address `from` of its own segment, 4000 packets/s, at most 24000 packets and 8 s, so
/// the proxy's self-defence fires. Nothing leaves the namespaces.
pub fn flood_proxy(net: &mut Net, ns: &str, from: &str, proxy: &str) {
    net.spawn(
        ns,
        "flood",
        &[
            "timeout", "8", "hping3", "--udp", "-a", from, "-p", "9", "-i", "u250", "-c", "24000",
            "-q", proxy,
        ],
    );
}
