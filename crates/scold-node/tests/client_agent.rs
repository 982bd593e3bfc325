//! The client agent of scheme 4.1 with real `scold` processes in network namespaces:
//! `scold dns` (TargetDNS, a static zone whose `www` has an A record and two ALT records),
//! `scold resolver` (ClientDNS), two `scold proxy` with `[admission]`, a gateway, a
//! target, and `scold client` in agent mode with the client's resolv.conf pointing at it.
//! Unmodified applications (`getent`, `curl`, `ping`) reach the target through a proxy;
//! killing that proxy moves the agent to the other one; withdrawing the ALT records with
//! `nsupdate` tears the route down and leaves routing as it was. A proxy certificate from
//! another CA, and a tunnel address outside the ALT set, are refused.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils-ping), `curl`, `getent` (libc-bin),
//! `nsupdate` (bind9-dnsutils), `python3` and a built binary (`cargo build -p scold`, or
//! SCOLD_BIN=/path/to/scold).
//!
//! The client, both proxies and the DNS servers share one switched segment
//! (10.1.0.0/24, a bridge in namespace `n`); each proxy has its own link to the hidden
//! gateway; the target's main link (to `r`) leads nowhere back to the client, so only the
//! indirect route works:
//!
//! ```text
//! c 10.1.0.2 ---+                 +--- p1 10.1.0.11 | 10.2.1.1 -- 10.2.1.2 g
//! d 10.1.0.53/54 +--- bridge (n) -+--- p2 10.1.0.12 | 10.2.2.1 -- 10.2.2.2 g
//! g 10.3.0.1 -- 10.3.0.2 t 10.4.0.2 -- 10.4.0.1 r
//! ```

use scold_pki::{Ca, CaInit, Identity, Role, Validity};
use scold_tunnel::keys;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

const ZONE: &str = "site.example";
const TSIG_SECRET: &str = "c2NvbGQtY2xpZW50LWFnZW50LXRlc3Qta2V5LTAwMDE=";

fn keypair() -> (String, String) {
    let private = keys::generate_private().expect("key");
    let public = keys::public_of(&private).expect("public");
    (private, public)
}

const NAMESPACES: [&str; 8] = ["n", "c", "d", "p1", "p2", "g", "t", "r"];

struct Lab {
    s: String,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn new() -> Lab {
        for (tool, pkg) in [
            ("ip", "iproute2"),
            ("ping", "iputils-ping"),
            ("curl", "curl"),
            ("getent", "libc-bin"),
            ("nsupdate", "bind9-dnsutils"),
            ("python3", "python3"),
            ("timeout", "coreutils"),
        ] {
            require(tool, pkg);
        }
        assert!(
            is_root(),
            "these tests build network namespaces and need root"
        );
        let s = format!(
            "{}{}",
            std::process::id() % 100000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            s,
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
        };
        let s = &lab.s;
        for n in NAMESPACES {
            must(&format!(
                "ip netns add {n}{s} && ip -n {n}{s} link set lo up"
            ));
        }
        must(&format!(
            "ip -n n{s} link add br{s} type bridge && ip -n n{s} link set br{s} up"
        ));
        for n in ["c", "d", "p1", "p2"] {
            must(&format!(
                "ip link add {n}x{s} type veth peer name x{n}{s} && \
                 ip link set {n}x{s} netns {n}{s} && ip link set x{n}{s} netns n{s} && \
                 ip -n n{s} link set x{n}{s} master br{s} && ip -n n{s} link set x{n}{s} up"
            ));
        }
        for (a, b) in [("p1", "g"), ("p2", "g"), ("g", "t"), ("t", "r")] {
            let (ab, ba) = (format!("{a}{b}{s}"), format!("{b}{a}{s}"));
            must(&format!(
                "ip link add {ab} type veth peer name {ba} && \
                 ip link set {ab} netns {a}{s} && ip link set {ba} netns {b}{s}"
            ));
        }
        for (ns, dev, addr) in [
            ("c", "cx", "10.1.0.2/24"),
            ("d", "dx", "10.1.0.53/24"),
            ("d", "dx", "10.1.0.54/24"),
            ("p1", "p1x", "10.1.0.11/24"),
            ("p2", "p2x", "10.1.0.12/24"),
            ("p1", "p1g", "10.2.1.1/24"),
            ("g", "gp1", "10.2.1.2/24"),
            ("p2", "p2g", "10.2.2.1/24"),
            ("g", "gp2", "10.2.2.2/24"),
            ("g", "gt", "10.3.0.1/24"),
            ("t", "tg", "10.3.0.2/24"),
            ("t", "tr", "10.4.0.2/24"),
            ("r", "rt", "10.4.0.1/24"),
        ] {
            must(&format!(
                "ip -n {ns}{s} addr add {addr} dev {dev}{s} && ip -n {ns}{s} link set {dev}{s} up"
            ));
        }
        must(&format!("ip -n t{s} route add default via 10.4.0.1"));
        must(&format!("ip -n g{s} route add 10.4.0.0/24 via 10.3.0.2"));
        // `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf: the
        // client's applications ask the agent, as on a host whose resolv.conf names it.
        let etc = lab.etc_netns();
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/...");
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.53\noptions timeout:5 attempts:1\n",
        )
        .expect("write resolv.conf");
        lab
    }

    fn etc_netns(&self) -> PathBuf {
        PathBuf::from(format!("/etc/netns/c{}", self.s))
    }

    fn ns(&self, n: &str) -> String {
        format!("{n}{}", self.s)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{label}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push((label.to_string(), child));
    }

    fn scold(&mut self, n: &str, label: &str, role: &str, config: &Path) {
        let bin = scold_bin();
        let cfg = config.to_str().expect("utf-8 path").to_string();
        self.spawn(
            n,
            label,
            &[
                bin.to_str().expect("utf-8"),
                "--log",
                "info,scold_node=debug",
                role,
                "--config",
                &cfg,
            ],
        );
    }

    fn child(&mut self, label: &str) -> Child {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        self.children.remove(i).1
    }

    fn stop(&mut self, label: &str) {
        let mut c = self.child(label);
        terminate(&mut c);
    }

    /// Kills a process at once (SIGKILL, by its PID): a proxy that dies without a word.
    fn kill(&mut self, label: &str) {
        let mut c = self.child(label);
        let _ = Command::new("kill")
            .args(["-KILL", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }

    /// A process's output, without terminal colour codes.
    fn log(&self, label: &str) -> String {
        let raw = std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(l, _)| format!("--- {l}\n{}", self.log(l)))
            .collect()
    }

    fn wait_log(&self, label: &str, text: &str, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if self.log(label).contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{label} never logged {text:?}:\n{}", self.logs());
    }

    fn exec(&self, n: &str, cmd: &str) -> std::process::Output {
        sh(&format!("timeout 60 ip netns exec {} {cmd}", self.ns(n)))
    }

    fn out(&self, n: &str, cmd: &str) -> String {
        let o = self.exec(n, cmd);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Rules and every table but the kernel's local one (which changes by itself).
    fn routing(&self, n: &str) -> String {
        let out = self.exec(
            n,
            "sh -c 'ip rule; ip -6 rule; ip route show table all; ip -6 route show table all'",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("fe80::") && !l.contains("table local"))
            .map(|l| l.replace(" linkdown", ""))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            terminate(c);
        }
        for n in NAMESPACES {
            let _ = sh(&format!("ip netns del {n}{}", self.s));
        }
        let _ = std::fs::remove_dir_all(self.etc_netns());
    }
}

/// Keys, certificates and configs of one run.
struct Setup {
    proxy_keys: [(String, String); 2],
    gateway_key: (String, String),
    client_key: (String, String),
    ca: PathBuf,
}

fn issue(ca: &mut Ca, name: &str, ip: &str, out: &Path) -> (PathBuf, PathBuf) {
    let p = ca
        .issue(
            &Identity::new(Role::Proxy, name).expect("identity"),
            &[ip.parse().expect("ip")],
            &[],
            Validity::days(1),
            out,
        )
        .expect("issue");
    (p.cert, p.key)
}

impl Setup {
    fn new(lab: &Lab) -> Setup {
        let mut ca = Ca::init(&lab.path("ca"), &CaInit::default()).expect("CA");
        let ca_cert = ca.cert_path();
        let certs = lab.path("certs");
        let s = Setup {
            proxy_keys: [keypair(), keypair()],
            gateway_key: keypair(),
            client_key: keypair(),
            ca: ca_cert,
        };
        for (i, ip) in [(1, "10.1.0.11"), (2, "10.1.0.12")] {
            issue(&mut ca, &format!("p{i}"), ip, &certs);
        }
        s
    }
}

fn zone_file(alts: &[&str]) -> String {
    let mut z = format!(
        "$ORIGIN {ZONE}.\n$TTL 2\n\
         @ IN SOA ns.{ZONE}. admin.{ZONE}. 1 60 60 600 1\n\
         @ IN NS ns\nns IN A 10.1.0.54\nwww IN A 10.4.0.2\n"
    );
    for (i, a) in alts.iter().enumerate() {
        if i % 2 == 0 {
            z.push_str(&format!("www IN ALT {a}\n"));
        } else {
            // The RFC 3597 form, as an unmodified tool would write it.
            let ip: std::net::Ipv4Addr = a.parse().expect("ipv4");
            let hex: String = ip.octets().iter().map(|b| format!("{b:02X}")).collect();
            z.push_str(&format!("www IN TYPE65280 \\# 4 {hex}\n"));
        }
    }
    z
}

/// Starts TargetDNS (with `alts` in the zone) and ClientDNS.
fn start_dns(lab: &mut Lab, alts: &[&str]) {
    lab.write("site.zone", &zone_file(alts));
    let dns = lab.write(
        "dns.toml",
        &format!(
            "listen = [\"10.1.0.54:53\"]\njournal = \"dns.journal\"\n\
             [[zone]]\nname = \"{ZONE}\"\nfile = \"site.zone\"\n\
             [[key]]\nname = \"coord\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{TSIG_SECRET}\"\n\
             [[key.allow]]\nnames = [\"*.{ZONE}\"]\ntypes = [\"ALT\", \"A\"]\n"
        ),
    );
    let resolver = lab.write(
        "resolver.toml",
        "listen = [\"10.1.0.53:53\"]\nupstream = [\"10.1.0.54:53\"]\nupstream_timeout_ms = 1000\n",
    );
    lab.scold("d", "dns", "dns", &dns);
    lab.scold("d", "resolver", "resolver", &resolver);
}

/// Starts the gateway, the target, the two proxies and the target's web server.
fn start_path(lab: &mut Lab, st: &Setup, admission: [&str; 2]) {
    let s = lab.s.clone();
    let gw = lab.write(
        "gateway.toml",
        &format!(
            "lan_interface = \"gt{s}\"\ntun_name = \"sg{s}\"\n\
             [tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"{}\"\n\
             [[peers]]\nname = \"proxy-1\"\naddress = \"10.2.1.1\"\nencap = \"wireguard\"\npublic_key = \"{}\"\n\
             [[peers]]\nname = \"proxy-2\"\naddress = \"10.2.2.1\"\nencap = \"wireguard\"\npublic_key = \"{}\"\n",
            st.gateway_key.0, st.proxy_keys[0].1, st.proxy_keys[1].1
        ),
    );
    let target = lab.write(
        "target.toml",
        "source = \"10.4.0.2\"\n[[routes]]\ndestination = \"10.1.0.0/24\"\nvia = { gateway = \"10.3.0.1\" }\n",
    );
    lab.scold("g", "gateway", "gateway", &gw);
    lab.scold("t", "target", "target", &target);
    for (i, extra) in admission.iter().enumerate() {
        let n = i + 1;
        let cfg = lab.write(
            &format!("proxy{n}.toml"),
            &format!(
                "[tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"{}\"\n\
                 [[peers]]\nname = \"gw\"\naddress = \"10.2.{n}.2\"\nport = 51820\nencap = \"wireguard\"\npublic_key = \"{}\"\n\
                 [[routes]]\ndestination = \"10.4.0.2/32\"\nvia = {{ peer = \"gw\" }}\n\
                 [admission]\nlisten = \"10.1.0.1{n}:5443\"\nallow = [\"10.4.0.0/24\"]\n{}\n",
                st.proxy_keys[i].0, st.gateway_key.1, extra
            ),
        );
        lab.scold(&format!("p{n}"), &format!("proxy{n}"), "proxy", &cfg);
    }
    let www = lab.path("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), "scold-target-page\n").expect("index");
    let www = www.to_str().expect("utf-8").to_string();
    lab.spawn(
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
}

fn admission_tls(certs: &str, n: u32) -> String {
    format!("ca = \"{certs}/ca.crt\"\ncert = \"{certs}/proxy-p{n}.crt\"\nkey = \"{certs}/proxy-p{n}.key\"\n")
}

fn start_agent(lab: &mut Lab, st: &Setup) {
    let s = lab.s.clone();
    let cfg = lab.write(
        "client.toml",
        &format!(
            "tun_name = \"sc{s}\"\n\
             [tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:0\"\nprivate_key = \"{}\"\n\
             [agent]\nlisten = \"127.0.0.53:53\"\nupstream = [\"10.1.0.53:53\"]\nca = \"{}\"\nalt_type = 65280\n\
             probe_interval_ms = 200\nprobe_timeout_ms = 600\n",
            st.client_key.0,
            st.ca.display()
        ),
    );
    lab.scold("c", "client", "client", &cfg);
    lab.wait_log("client", "client agent answering DNS", 15);
}

/// The proxy the agent's route went up through last, from its log.
fn chosen_proxy(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("indirect route up"))
        .and_then(|l| l.split("proxy=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
}

/// The icmp_seq numbers that got a reply, from ping's output.
fn replied(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Runs a bounded ping loop (200 pings, 50 ms apart) to the target, breaks the proxy in
/// use with `brk` after one second, and checks that the loop gets through again by
/// `expect`; prints the longest gap seen (a measurement, not an assertion).
fn failover(lab: &mut Lab, what: &str, expect: &str, brk: impl FnOnce(&mut Lab)) {
    let pinglog = lab.path(&format!("failover-{what}.log"));
    let mut pinger = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 60 ip netns exec {} ping -n -c 200 -i 0.05 -W 1 10.4.0.2 > {} 2>&1",
            lab.ns("c"),
            pinglog.display()
        ))
        .spawn()
        .expect("ping loop");
    std::thread::sleep(Duration::from_millis(1000));
    let downs = lab.log("client").matches("failover done").count();
    brk(lab);
    let _ = pinger.wait();
    let out = std::fs::read_to_string(&pinglog).unwrap_or_default();
    let seqs = replied(&out);
    assert!(
        seqs.iter().any(|s| *s >= 190),
        "{what} proxy: the ping loop never got through again:\n{out}\n{}",
        lab.logs()
    );
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "failover ({what} proxy): {} of 200 replies; longest gap {gap} pings of 50 ms (about {} ms)",
        seqs.len(),
        gap * 50
    );
    let clog = lab.log("client");
    assert!(
        clog.matches("failover done").count() > downs,
        "{what} proxy: no failover:\n{clog}"
    );
    assert_eq!(
        chosen_proxy(&clog).as_deref(),
        Some(expect),
        "{what} proxy: the agent did not move to {expect}:\n{clog}"
    );
    if let Some(line) = clog
        .lines()
        .filter(|l| l.contains("failover done"))
        .nth(downs)
    {
        eprintln!("agent: {line}");
    }
}

#[test]
fn agent_sets_up_fails_over_and_tears_down() {
    let mut lab = Lab::new();
    let st = Setup::new(&lab);
    start_dns(&mut lab, &["10.1.0.11", "10.1.0.12"]);
    start_path(
        &mut lab,
        &st,
        [&admission_tls("certs", 1), &admission_tls("certs", 2)],
    );
    lab.wait_log("proxy1", "admission server listening", 15);
    lab.wait_log("proxy2", "admission server listening", 15);
    // Nothing routes to the target before the lookup.
    assert!(
        !lab.exec("c", "ping -n -c 1 -W 1 10.4.0.2").status.success(),
        "the target answers without the indirect route: the topology is wrong"
    );
    start_agent(&mut lab, &st);
    let before = lab.routing("c");

    // An unmodified application's lookup brings the route up before it gets its answer.
    let hosts = lab.out("c", &format!("getent hosts www.{ZONE}"));
    assert!(
        hosts.contains("10.4.0.2"),
        "getent: {hosts}\n{}",
        lab.logs()
    );
    let table = lab.out("c", "ip route show table 5103");
    assert!(
        table.contains("10.4.0.2"),
        "no host route for the target after the lookup: {table}\n{}",
        lab.logs()
    );
    let first = chosen_proxy(&lab.log("client"))
        .unwrap_or_else(|| panic!("the agent logged no proxy:\n{}", lab.log("client")));
    assert!(first == "10.1.0.11" || first == "10.1.0.12", "{first}");

    // Applications reach the target by name through the proxy.
    let end = Instant::now() + Duration::from_secs(15);
    let mut page = String::new();
    while Instant::now() < end {
        page = lab.out("c", &format!("curl -s --max-time 3 http://www.{ZONE}/"));
        if page.contains("scold-target-page") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        page.contains("scold-target-page"),
        "curl: {page}\n{}",
        lab.logs()
    );
    let ping = lab.out("c", &format!("ping -n -c 3 -i 0.2 -W 2 www.{ZONE}"));
    assert_eq!(replied(&ping).len(), 3, "ping by name: {ping}");

    // First the proxy in use goes silent (its link is cut, no RST, no FIN): the probes
    // time out and the agent moves to the other proxy.
    let (p_first, p_other) = if first == "10.1.0.11" {
        (("p1", "proxy1"), ("p2", "proxy2"))
    } else {
        (("p2", "proxy2"), ("p1", "proxy1"))
    };
    let other_addr = if first == "10.1.0.11" {
        "10.1.0.12"
    } else {
        "10.1.0.11"
    };
    let port = format!("x{}{}", p_first.0, lab.s);
    let n = lab.ns("n");
    failover(&mut lab, "silent", other_addr, |_| {
        must(&format!("ip -n {n} link set {port} down"));
    });
    must(&format!("ip -n {n} link set {port} up"));

    // Then the proxy now in use dies (SIGKILL): the agent goes back to the first one,
    // which answers again.
    failover(&mut lab, "killed", &first, |lab| lab.kill(p_other.1));
    assert_eq!(
        lab.log("client").matches("failover done").count(),
        2,
        "{}",
        lab.log("client")
    );

    // Withdraw the ALT records; the agent's re-query at the ALT TTL tears everything down.
    let upd = lab.write(
        "withdraw.nsupdate",
        &format!("server 10.1.0.54 53\nzone {ZONE}\nupdate delete www.{ZONE} TYPE65280\nsend\n"),
    );
    let o = lab.exec(
        "d",
        &format!(
            "nsupdate -y hmac-sha256:coord:{TSIG_SECRET} {}",
            upd.display()
        ),
    );
    assert!(o.status.success(), "nsupdate: {o:?}");
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && lab.routing("c") != before {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lab.routing("c"),
        before,
        "routing not restored after the ALT records went:\n{}",
        lab.logs()
    );
    assert!(lab
        .log("client")
        .contains("tearing the indirect route down"));
    // The name still resolves normally; without ALT nothing is set up again.
    let hosts = lab.out("c", &format!("getent hosts www.{ZONE}"));
    assert!(hosts.contains("10.4.0.2"), "{hosts}");
    assert_eq!(lab.routing("c"), before);

    lab.stop("client");
    assert_eq!(
        lab.routing("c"),
        before,
        "routing changed by the agent's exit"
    );
    let clog = lab.log("client");
    assert!(!clog.contains("panicked"), "{clog}");
}

/// A proxy whose certificate comes from another CA, and one that names a tunnel address
/// outside the ALT set, are both refused; the application still gets its answer and
/// routing stays as it was.
#[test]
fn agent_refuses_foreign_ca_and_address_outside_alt_set() {
    let mut lab = Lab::new();
    let st = Setup::new(&lab);
    let mut other = Ca::init(&lab.path("other-ca"), &CaInit::default()).expect("CA");
    issue(&mut other, "p1", "10.1.0.11", &lab.path("rogue"));
    start_dns(&mut lab, &["10.1.0.11", "10.1.0.12"]);
    let rogue =
        "ca = \"rogue/ca.crt\"\ncert = \"rogue/proxy-p1.crt\"\nkey = \"rogue/proxy-p1.key\"\n";
    let elsewhere = format!(
        "{}tunnel_address = \"10.1.0.99\"\n",
        admission_tls("certs", 2)
    );
    start_path(&mut lab, &st, [rogue, &elsewhere]);
    lab.wait_log("proxy1", "admission server listening", 15);
    lab.wait_log("proxy2", "admission server listening", 15);
    start_agent(&mut lab, &st);
    let before = lab.routing("c");

    let hosts = lab.out("c", &format!("getent hosts www.{ZONE}"));
    assert!(
        hosts.contains("10.4.0.2"),
        "getent: {hosts}\n{}",
        lab.logs()
    );
    // Over TCP too, and other types pass through unchanged (ALT itself included).
    require("dig", "bind9-dnsutils");
    let tcp = lab.out("c", &format!("dig +tcp +short @127.0.0.53 www.{ZONE} A"));
    assert_eq!(tcp.trim(), "10.4.0.2", "A over TCP: {tcp}");
    let alt = lab.out("c", &format!("dig +short @127.0.0.53 www.{ZONE} TYPE65280"));
    assert!(
        alt.contains("0A01000B") && alt.contains("0A01000C"),
        "ALT through the agent: {alt}"
    );
    let clog = lab.log("client");
    assert!(
        clog.contains("unknown_ca"),
        "the foreign CA was not refused:\n{clog}"
    );
    assert!(
        clog.contains("10.1.0.99 is not in the ALT set"),
        "the tunnel address outside the ALT set was not refused:\n{clog}"
    );
    assert!(!clog.contains("indirect route up"), "{clog}");
    assert_eq!(
        lab.routing("c"),
        before,
        "a refused proxy left routes behind"
    );
    assert!(
        !lab.exec("c", "ping -n -c 1 -W 1 10.4.0.2").status.success(),
        "the target is reachable although every proxy was refused"
    );
}
