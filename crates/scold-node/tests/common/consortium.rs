//! The linked system's topology (coordinator and DNS in a control namespace, two
//! proxies, a gateway, the target and its attacked main link, a client site) and what
//! the tests do with it: `scold ctl`, waiting for a phase, ping and a checksummed TCP
//! fetch through the indirect route, the target's routing state.
#![allow(dead_code)]

use super::net::Net;
use super::{must, sha256};
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
        let (c, s) = (net.ns("c"), net.s.clone());
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

impl Net {
    /// Pings the target from the client namespace (no name looked up).
    pub fn ping(&self, count: u32) -> bool {
        self.exec("c", &format!("ping -n -q -c {count} -i 0.2 -W 1 10.4.0.2"))
            .status
            .success()
    }

    pub fn wait_ping(&self) {
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
    pub fn fetch(&self, name: &str) {
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
    pub fn target_state(&self) -> String {
        self.routing("t", true)
    }

    pub fn ctl(&self, args: &str) -> String {
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

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl("--json status")).expect("status JSON")
    }

    /// Polls the status until `pred` holds, up to `secs`.
    pub fn wait_status(
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

    pub fn wait_phase(&self, phase: &str, proxies: &[&str], secs: u64) -> serde_json::Value {
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

    pub fn wait_nodes_up(&self) {
        self.wait_status("p1, p2 and gw1 up", 20, |s| {
            let up = |list: &serde_json::Value, name: &str| {
                list.as_array()
                    .is_some_and(|a| a.iter().any(|n| n["name"] == name && n["health"] == "up"))
            };
            up(&s["proxies"], "p1") && up(&s["proxies"], "p2") && up(&s["gateways"], "gw1")
        });
    }
}
