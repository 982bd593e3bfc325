//! The coordinator as an operator runs it: real `scold ca`, `scold dns`,
//! `scold coordinator` and `scold ctl` processes; gateway, target and proxies linked
//! over mutual TLS (their data planes answer orders in this test process); the secure
//! DNS update checked on the wire with `dig`; a kill -9 of the coordinator in the middle
//! of a divert, and a restart that finishes it.

use scold_link::channel::{Channel, Handler};
use scold_link::CoordinatorLink;
use scold_metrics::Metrics;
use scold_pki::{Ca, Identity, Role, TlsIdentity, Validity};
use scold_proto::control::{NodeInfo, Reply, Request, Response, StatusReport, TunnelInfo};
use scold_proto::dataplane;
use scold_testkit::{free_port, require_tool, Proc};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod common;
use common::{scold, SCOLD, SECRET};

/// Records the orders a node gets; answers every one with success. Its [`Hold`] can
/// keep the first order that matches a pattern from being answered until released, as a
/// node that is slow to apply it.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>, Hold);

#[derive(Default)]
struct Hold {
    /// Orders whose description starts with this are held (none: nothing is).
    pattern: Mutex<Option<String>>,
    /// An order is being held now.
    holding: std::sync::atomic::AtomicBool,
    released: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn hold(&self, pattern: &str) {
        *self.1.pattern.lock().unwrap() = Some(pattern.to_string());
    }
    fn holding(&self) -> bool {
        self.1.holding.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn release(&self) {
        self.1
            .released
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Handler for Recorder {
    async fn handle(&self, _from: &Channel, request: Request) -> Response {
        let what = match &request {
            Request::Dataplane { commands, .. } => commands
                .iter()
                .map(|c| match c {
                    dataplane::Command::AddPeer(p) => format!("add_peer({})", p.name),
                    dataplane::Command::RemovePeer { name } => format!("remove_peer({name})"),
                    other => other.kind().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.kind().to_string(),
        };
        use std::sync::atomic::Ordering::Relaxed;
        let held = self
            .1
            .pattern
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|p| what.starts_with(p));
        if held && !self.1.released.load(Relaxed) {
            self.1.holding.store(true, Relaxed);
            while !self.1.released.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.0.lock().unwrap().push(what);
        Response::Ok { reply: Reply::Done }
    }
}

/// The tunnel end points the nodes announce when they register.
fn tunnel_of(role: Role, name: &str) -> Option<TunnelInfo> {
    let (endpoint, inside) = match (role, name) {
        (Role::Proxy, "p1") => ("198.51.100.1:51820", None),
        (Role::Proxy, "p2") => ("198.51.100.2:51820", None),
        (Role::Proxy, "p3") => ("198.51.100.3:51820", None),
        (Role::Gateway, _) => ("203.0.113.9:51820", Some("10.3.0.1".parse().unwrap())),
        _ => return None,
    };
    Some(TunnelInfo {
        endpoint: endpoint.parse().unwrap(),
        encap: dataplane::Encap::Udp,
        public_key: None,
        inside,
        engines: None,
    })
}

struct Site {
    dir: PathBuf,
    control: SocketAddr,
    /// The other coordinator replicas' control addresses (none: one coordinator).
    replicas: Vec<SocketAddr>,
    metrics: SocketAddr,
    dns_port: u16,
}

impl Site {
    fn ctl(&self, args: &[&str]) -> String {
        let certs = self.dir.join("certs");
        let every: Vec<String> = std::iter::once(self.control)
            .chain(self.replicas.iter().copied())
            .map(|a| a.to_string())
            .collect();
        let mut all = vec![
            "ctl".to_string(),
            "--coordinator".into(),
            every.join(","),
            "--ca".into(),
            certs.join("ca.crt").display().to_string(),
            "--cert".into(),
            certs.join("operator-admin.crt").display().to_string(),
            "--key".into(),
            certs.join("operator-admin.key").display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        scold(&all)
    }

    /// The coordinator's audit log, oldest first (`scold ctl --json events`).
    fn events(&self) -> Vec<scold_proto::control::EventView> {
        match serde_json::from_str::<Reply>(&self.ctl(&["--json", "events", "--limit", "1000"]))
            .unwrap()
        {
            Reply::Events { events } => events,
            other => panic!("{other:?}"),
        }
    }

    fn status(&self) -> StatusReport {
        let out = self.ctl(&["--json", "status"]);
        match serde_json::from_str::<Reply>(&out).unwrap() {
            Reply::Status(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn wait_phase(&self, want: &str) -> StatusReport {
        let t = Instant::now();
        loop {
            let s = self.status();
            if s.targets[0].phase == want {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "never reached {want}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alt(&self) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "+short",
                "+tries=1",
                "+time=2",
                "-p",
                &self.dns_port.to_string(),
                "@127.0.0.1",
                "www.example.net",
                "TYPE65280",
            ])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        v.sort();
        v
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

/// One consortium on loopback: a CA, the real `scold dns` with the coordinator's TSIG
/// key, and the coordinator's config for target `web` and the given proxies.
struct Consortium {
    dir: PathBuf,
    ca: Ca,
    coord_cfg: PathBuf,
    site: Arc<Site>,
    _dns: Proc,
}

impl Consortium {
    fn setup(proxies: &[&str]) -> Consortium {
        require_tool("dig", "bind9-dnsutils");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.keep();
        let ca_dir = dir.join("ca");
        let certs = dir.join("certs");
        let ca_s = ca_dir.display().to_string();
        let certs_s = certs.display().to_string();
        scold(&["ca", "--dir", &ca_s, "init"]);
        for (role, name) in [("coordinator", "main"), ("operator", "admin")] {
            scold(&[
                "ca", "--dir", &ca_s, "issue", "--role", role, "--name", name, "--out", &certs_s,
            ]);
        }

        // TargetDNS: the real `scold dns`, with the coordinator's TSIG key.
        let dns_port = free_port();
        std::fs::write(
            dir.join("example.net.zone"),
            "$ORIGIN example.net.\n$TTL 60\n@ SOA ns1 admin 1 3600 600 86400 10\n@ NS ns1\nns1 A 192.0.2.53\nwww 10 A 192.0.2.10\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("dns.toml"),
            format!(
                "listen = [\"127.0.0.1:{dns_port}\"]\njournal = \"dns.journal\"\n[[zone]]\nname = \"example.net\"\nfile = \"example.net.zone\"\n[[key]]\nname = \"coordinator\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{SECRET}\"\n[[key.allow]]\nnames = [\"www.example.net\"]\ntypes = [\"ALT\", \"A\", \"AAAA\"]\n"
            ),
        )
        .unwrap();
        let mut dns = Proc::spawn(
            "scold dns",
            Command::new(SCOLD)
                .args(["dns", "--config"])
                .arg(dir.join("dns.toml")),
            &dir.join("dns.log"),
        );
        dns.wait_tcp_port(
            format!("127.0.0.1:{dns_port}").parse().unwrap(),
            Duration::from_secs(20),
        );

        let site = Site {
            control: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            metrics: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            dns_port,
            dir: dir.clone(),
            replicas: Vec::new(),
        };
        let pool: String = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "[[proxy]]\nname = \"{p}\"\naddress = \"198.51.100.{}\"\norganisation = \"org-{p}\"\n",
                    i + 1
                )
            })
            .collect();
        let coord_cfg = dir.join("coordinator.toml");
        std::fs::write(
            &coord_cfg,
            format!(
                r#"[coordinator]
listen = "{}"
state = "state/coordinator.redb"
heartbeat_ms = 200
down_after_ms = 3000
max_backoff_ms = 300
[tls]
ca = "certs/ca.crt"
cert = "certs/coordinator-main.crt"
key = "certs/coordinator-main.key"
crl = "ca/crl.pem"
[metrics]
listen = "{}"
[[target]]
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["192.0.2.10"]
gateways = ["gw1"]
ttl = 1
[target.dns]
server = "127.0.0.1:{dns_port}"
key = "hmac-sha256:coordinator:{SECRET}"
{pool}"#,
                site.control, site.metrics
            ),
        )
        .unwrap();
        scold_pki::install_crypto_provider();
        Consortium {
            ca: Ca::open(&ca_dir).unwrap(),
            dir,
            coord_cfg,
            site: Arc::new(site),
            _dns: dns,
        }
    }

    /// Starts `scold coordinator` (its `state` is relative to the working directory)
    /// and waits until it listens.
    fn start_coordinator(&self, log: &str) -> Proc {
        let log = self.dir.join(log);
        let mut p = Proc::spawn(
            "scold coordinator",
            Command::new(SCOLD)
                .args(["coordinator", "--config"])
                .arg(&self.coord_cfg)
                .current_dir(&self.dir),
            &log,
        );
        p.wait_tcp_port(self.site.control, Duration::from_secs(20));
        p
    }

    /// A node linked to the coordinator whose data plane records the orders it gets.
    fn node(
        &mut self,
        role: Role,
        name: &str,
    ) -> (CoordinatorLink, Arc<Recorder>, watch::Sender<bool>) {
        let paths = self
            .ca
            .issue(
                &Identity::new(role, name).unwrap(),
                &[],
                &[],
                Validity::days(1),
                &self.dir.join(format!("n-{name}")),
            )
            .unwrap();
        let tls = Arc::new(TlsIdentity::load(&paths.tls_paths()).unwrap());
        let rec = Arc::new(Recorder::default());
        let (stop, rx) = watch::channel(false);
        let agent = CoordinatorLink::start_any(
            std::iter::once(self.site.control)
                .chain(self.site.replicas.iter().copied())
                .collect(),
            NodeInfo {
                tunnel: tunnel_of(role, name),
                ..Default::default()
            },
            tls,
            rec.clone(),
            Metrics::new(),
            rx,
        );
        (agent, rec, stop)
    }
}

/// Waits until `ok` holds for the coordinator's status, or fails after 30 s with it.
fn wait_status(site: &Site, what: &str, ok: impl Fn(&StatusReport) -> bool) -> StatusReport {
    let t = Instant::now();
    loop {
        let s = site.status();
        if ok(&s) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never {what}: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `proxies` proxies and a gateway are up at the coordinator.
fn wait_nodes_up(site: &Site, proxies: usize) {
    wait_status(site, "up", |s| {
        s.proxies.iter().filter(|p| p.health == "up").count() == proxies
            && s.gateways.iter().any(|g| g.health == "up")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_survives_kill_9_and_updates_dns_on_the_wire() {
    let mut c = Consortium::setup(&["p1", "p2"]);
    let mut coordinator = c.start_coordinator("coordinator.log");
    let site = c.site.clone();
    // Nodes: target and proxies now; the gateway only after the crash.
    let (_t, target, _ts) = c.node(Role::Target, "web");
    let (_p1, p1, _p1s) = c.node(Role::Proxy, "p1");
    let (_p2, _p2r, _p2s) = c.node(Role::Proxy, "p2");

    let before = tokio::task::spawn_blocking({
        let site = site.clone();
        move || {
            let t = Instant::now();
            while site
                .status()
                .proxies
                .iter()
                .filter(|p| p.health == "up")
                .count()
                < 2
            {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "proxies never registered"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(site.alt().is_empty(), "ALT records before any divert");
            site.ctl(&["divert", "web"]);
            // The gateway is not connected: the divert waits at its first stage, and
            // nothing is published in DNS before the route works. The set-up steps run
            // side by side, so the gateway's failure may be the last error or only in
            // the audit log.
            let t = Instant::now();
            let s = loop {
                let s = site.status();
                let gateway_missing = |e: &str| e.contains("gateway/gw1 is not connected");
                if s.targets[0]
                    .last_error
                    .as_deref()
                    .is_some_and(gateway_missing)
                    || s.events
                        .iter()
                        .any(|e| e.event == "step_failed" && gateway_missing(&e.detail))
                {
                    break s;
                }
                assert!(t.elapsed() < Duration::from_secs(20), "{s:#?}");
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_eq!(s.targets[0].phase, "diverting");
            assert!(
                site.alt().is_empty(),
                "ALT published before the route was set up"
            );
            s
        }
    })
    .await
    .unwrap();

    // kill -9 in the middle of the divert, then restart.
    coordinator.kill9();
    let mut coordinator = c.start_coordinator("coordinator-2.log");
    let after = tokio::task::spawn_blocking({
        let site = site.clone();
        move || site.status()
    })
    .await
    .unwrap();
    assert_eq!(after.targets[0].phase, "diverting");
    assert_eq!(after.targets[0].epoch, before.targets[0].epoch);
    assert_eq!(after.targets[0].proxies, before.targets[0].proxies);

    // The gateway comes: the restarted coordinator finishes the divert by itself.
    let (_gw2, gw2, _gws) = c.node(Role::Gateway, "gw1");
    tokio::task::spawn_blocking(move || {
        let s = site.wait_phase("diverted");
        assert_eq!(s.targets[0].proxies, vec!["p1", "p2"]);
        // The secure DNS update really happened, on the wire, signed (dig shows the
        // RFC 3597 form of ALT: 198.51.100.1 = C6336401).
        assert_eq!(site.alt(), vec!["\\# 4 C6336401", "\\# 4 C6336402"]);
        let m = site.metrics();
        assert!(
            m.contains("scold_transitions_total{from=\"diverting\",to=\"diverted\"} 1"),
            "{m}"
        );
        site.ctl(&["restore", "web"]);
        let s = site.wait_phase("normal");
        assert!(s.targets[0].proxies.is_empty());
        assert!(site.alt().is_empty(), "ALT records left after restore");
        let events = site.ctl(&["events", "--limit", "200"]);
        assert!(events.contains("operator_divert"), "{events}");
        assert!(events.contains("restoring -> normal"), "{events}");
        // What an operator graphs, scraped from the running coordinator.
        let m = site.metrics();
        for line in [
            "# TYPE scold_target_phase gauge",
            "scold_target_phase{target=\"web\",phase=\"normal\"} 1",
            "scold_target_phase{target=\"web\",phase=\"diverted\"} 0",
            "# TYPE scold_divert_duration_seconds histogram",
            "scold_divert_duration_seconds_count{target=\"web\"} 1",
            "# TYPE scold_restore_duration_seconds histogram",
            "scold_restore_duration_seconds_count{target=\"web\"} 1",
            "# TYPE scold_reset_duration_seconds histogram",
        ] {
            assert!(m.lines().any(|l| l == line), "no {line} in\n{m}");
        }
    })
    .await
    .unwrap();
    assert_eq!(
        gw2.0.lock().unwrap().clone(),
        vec![
            "add_peer(p1),add_peer(p2)",
            "remove_peer(p1),remove_peer(p2)"
        ]
    );
    // Target: set-up and tear-down orders (scheme 4.1 needs no per-proxy route).
    assert_eq!(target.0.lock().unwrap().len(), 2);
    assert_eq!(
        p1.0.lock().unwrap().clone(),
        vec![
            "add_peer(gw1),add_route",
            "notify", // divert: resolvers drop the answer without ALT
            "notify", // restore: resolvers drop the answer with ALT
            "remove_route,remove_peer(gw1)"
        ]
    );
    coordinator.kill9();
}

/// A proxy that dies while the coordinator is down (kill -9 of both, restart of only
/// the coordinator) is handled as lost once the heartbeat timeout passes: it is reset
/// out of the ALT set, on the wire, and another proxy takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_dead_across_a_coordinator_restart_is_reset_out() {
    let mut c = Consortium::setup(&["p1", "p2", "p3"]);
    let mut coordinator = c.start_coordinator("coordinator.log");
    let site = c.site.clone();
    let _t = c.node(Role::Target, "web");
    let _gw = c.node(Role::Gateway, "gw1");
    let mut proxies: Vec<_> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|p| (p, Some(c.node(Role::Proxy, p))))
        .collect();
    let diverted = tokio::task::spawn_blocking({
        let site = site.clone();
        move || {
            wait_nodes_up(&site, 3);
            site.ctl(&["divert", "web"]);
            wait_status(&site, "diverted", |s| {
                s.targets[0].phase == "diverted" && s.targets[0].proxies.len() == 2
            })
        }
    })
    .await
    .unwrap();
    let dead = diverted.targets[0].proxies[0].clone();

    // Both die; only the coordinator comes back.
    coordinator.kill9();
    let slot = proxies.iter_mut().find(|(p, _)| *p == dead).unwrap();
    let (link, _, stop) = slot.1.take().unwrap();
    let _ = stop.send(true);
    drop(link);
    let _coordinator = c.start_coordinator("coordinator-2.log");

    tokio::task::spawn_blocking(move || {
        let s = wait_status(&site, "the dead proxy reset out", |s| {
            s.targets[0].phase == "diverted"
                && s.targets[0].proxies.len() == 2
                && !s.targets[0].proxies.contains(&dead)
        });
        let n = |p: &str| p.trim_start_matches('p').parse::<u8>().unwrap();
        let mut want: Vec<String> = s.targets[0]
            .proxies
            .iter()
            .map(|p| format!("\\# 4 C63364{:02X}", n(p)))
            .collect();
        want.sort();
        assert_eq!(site.alt(), want, "ALT on the wire after the reset");
        assert_eq!(
            s.proxies.iter().find(|p| p.name == dead).unwrap().health,
            "down"
        );
        let events = site.ctl(&["events", "--limit", "200"]);
        assert!(events.contains("proxy_down"), "{events}");
    })
    .await
    .unwrap();
}

/// The configs of two replicas of `c`'s coordinator sharing `etcd` under `prefix`: the
/// first listens where the single coordinator would, the second on a port of its own.
fn replica_configs(
    c: &Consortium,
    etcd: &scold_testkit::EtcdCluster,
    prefix: &str,
) -> (PathBuf, PathBuf, SocketAddr) {
    let a = c.site.control;
    let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let single = std::fs::read_to_string(&c.coord_cfg).unwrap();
    let endpoints: Vec<String> = etcd.clients().iter().map(|e| format!("\"{e}\"")).collect();
    let replica = |listen: SocketAddr, metrics: u16| {
        single
            .replace("state = \"state/coordinator.redb\"\n", "")
            .replace(&format!("listen = \"{a}\""), &format!("listen = \"{listen}\""))
            .replace(
                &format!("listen = \"{}\"", c.site.metrics),
                &format!("listen = \"127.0.0.1:{metrics}\""),
            )
            .replace(
                "[tls]",
                &format!(
                    "[coordinator.etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\nlease_secs = 2\n\n[tls]",
                    endpoints.join(", ")
                ),
            )
    };
    let cfg_a = c.dir.join("replica-a.toml");
    let cfg_b = c.dir.join("replica-b.toml");
    std::fs::write(&cfg_a, replica(a, c.site.metrics.port())).unwrap();
    std::fs::write(&cfg_b, replica(b, free_port())).unwrap();
    (cfg_a, cfg_b, b)
}

/// Starts two replicas of `c`'s coordinator on `etcd` under `prefix`, waits until the
/// first leads and the second stands by, and points the site's `scold ctl` and nodes at
/// both. Returns (leader, standby).
fn start_replicas(
    c: &mut Consortium,
    etcd: &scold_testkit::EtcdCluster,
    prefix: &str,
) -> (Proc, Proc) {
    let (cfg_a, cfg_b, b) = replica_configs(c, etcd, prefix);
    let start = replica_starter(c);
    let mut leader = start(&cfg_a, "replica-a.log");
    leader.wait_tcp_port(c.site.control, Duration::from_secs(20));
    let mut standby = start(&cfg_b, "replica-b.log");
    standby.wait_log("standing by", Duration::from_secs(20));
    Arc::get_mut(&mut c.site).unwrap().replicas = vec![b];
    (leader, standby)
}

/// Starts a replica from its config, logging to `log` in `c`'s folder.
fn replica_starter(c: &Consortium) -> impl Fn(&PathBuf, &str) -> Proc {
    let dir = c.dir.clone();
    move |cfg: &PathBuf, log: &str| {
        Proc::spawn(
            "scold coordinator replica",
            Command::new(SCOLD)
                .args(["coordinator", "--config"])
                .arg(cfg)
                .current_dir(&dir),
            &dir.join(log),
        )
    }
}

/// Two coordinator replicas sharing a real etcd (Debian `etcd-server`): one leads and
/// listens, the other stands by without listening. A divert completes under the first;
/// kill -9 of it, and the standby takes over when its lease lapses: the nodes follow it
/// (they know both addresses), it holds the divert's state and the audit log from
/// before, and its restore works, on the wire. A target added to its file while it stood
/// by is driven once it leads. The killed one, started again, stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_from_a_killed_leader() {
    let etcd = scold_testkit::EtcdCluster::start(1);
    let mut c = Consortium::setup(&["p1", "p2"]);
    let a = c.site.control;
    let (cfg_a, cfg_b, b) = replica_configs(&c, &etcd, "/scold-e2e/");
    let start = replica_starter(&c);
    let mut leader = start(&cfg_a, "replica-a.log");
    leader.wait_tcp_port(a, Duration::from_secs(20));
    let mut standby = start(&cfg_b, "replica-b.log");
    standby.wait_log("standing by", Duration::from_secs(20));
    assert!(
        !scold_testkit::tcp_listening(b),
        "the standby replica listens while the other leads"
    );

    // A target added to the standby's file while it stands by: it reads its entries
    // again when it takes the lead.
    let text = std::fs::read_to_string(&cfg_b).unwrap();
    let from = text.find("[[target]]").unwrap();
    let to = from + text[from..].find("key = ").unwrap();
    let to = to + text[to..].find('\n').unwrap() + 1;
    let web2 = text[from..to]
        .replace("name = \"web\"", "name = \"web2\"")
        .replace("www.example.net.", "web2.example.net.")
        .replace("192.0.2.10", "192.0.2.11");
    std::fs::write(&cfg_b, format!("{text}\n{web2}")).unwrap();

    Arc::get_mut(&mut c.site).unwrap().replicas = vec![b];
    let site = c.site.clone();
    let _t = c.node(Role::Target, "web");
    let _gw = c.node(Role::Gateway, "gw1");
    let _p1 = c.node(Role::Proxy, "p1");
    let _p2 = c.node(Role::Proxy, "p2");
    let before = tokio::task::spawn_blocking({
        let site = site.clone();
        move || {
            wait_nodes_up(&site, 2);
            site.ctl(&["divert", "web"]);
            let s = site.wait_phase("diverted");
            assert_eq!(site.alt(), vec!["\\# 4 C6336401", "\\# 4 C6336402"]);
            (s, site.events())
        }
    })
    .await
    .unwrap();

    // kill -9 of the leader: the standby takes over once the lease lapses.
    leader.kill9();
    let killed = Instant::now();
    let site2 = site.clone();
    tokio::task::spawn_blocking(move || {
        assert!(
            scold_testkit::wait_tcp_port(b, Duration::from_secs(20)),
            "the standby never took over"
        );
        eprintln!(
            "takeover: the standby listened {:?} after the leader's kill -9 (lease 2 s)",
            killed.elapsed()
        );
        let s = wait_status(&site2, "nodes back at the new leader", |s| {
            s.proxies.iter().filter(|p| p.health == "up").count() == 2
                && s.gateways.iter().any(|g| g.health == "up")
        });
        // The divert's state and the audit log from before the takeover are there.
        assert_eq!(s.targets[0].name, "web");
        assert_eq!(s.targets[0].phase, "diverted");
        assert!(
            !before.0.targets.iter().any(|t| t.name == "web2")
                && s.targets
                    .iter()
                    .any(|t| t.name == "web2" && t.phase == "normal"),
            "the new leader does not drive the target its file gained while it stood by: {:?}",
            s.targets
        );
        assert_eq!(s.targets[0].epoch, before.0.targets[0].epoch);
        assert_eq!(s.targets[0].proxies, before.0.targets[0].proxies);
        let seqs = |events: &[scold_proto::control::EventView]| -> Vec<u64> {
            events.iter().map(|e| e.seq).collect()
        };
        let old = seqs(&before.1);
        let now = seqs(&site2.events());
        assert!(now.starts_with(&old), "the audit log is not continuous");
        assert!(now.windows(2).all(|w| w[0] < w[1]));
        // The new leader acts: the restore completes, on the wire.
        site2.ctl(&["restore", "web"]);
        site2.wait_phase("normal");
        assert!(site2.alt().is_empty(), "ALT records left after the restore");
    })
    .await
    .unwrap();

    // The killed replica, started again, stands by.
    let mut again = start(&cfg_a, "replica-a-2.log");
    again.wait_log("standing by", Duration::from_secs(20));
    assert!(!scold_testkit::tcp_listening(a), "two replicas listen");
    again.terminate();
    standby.terminate();
}

/// Where a divert is cut by the leader's death.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The gateway holds its set-up order.
    Gateway,
    /// The target holds its return-path order.
    Target,
    /// Proxy p1 holds its set-up order.
    Proxy,
    /// TargetDNS hangs (SIGSTOP) during the ALT update.
    Dns,
    /// Proxy p1 holds its NOTIFY order.
    Notify,
}

/// A divert under replicas, cut at `cut` by kill -9 of the leader while that step is in
/// flight: the standby takes over and the divert completes once, with the same result
/// as an uninterrupted one.
async fn divert_cut_by_the_leaders_death(etcd: &scold_testkit::EtcdCluster, cut: Cut) {
    let mut c = Consortium::setup(&["p1", "p2"]);
    let (mut leader, mut standby) = start_replicas(&mut c, etcd, &format!("/scold-cut-{cut:?}/"));
    let b = c.site.replicas[0];
    let site = c.site.clone();
    let (_t, target, _ts) = c.node(Role::Target, "web");
    let (_g, gateway, _gs) = c.node(Role::Gateway, "gw1");
    let (_p1, p1, _p1s) = c.node(Role::Proxy, "p1");
    let (_p2, p2, _p2s) = c.node(Role::Proxy, "p2");
    let dns_pid = c._dns.pid();
    let holder = match cut {
        Cut::Gateway => Some((gateway.clone(), "add_peer")),
        Cut::Target => Some((target.clone(), "")),
        Cut::Proxy => Some((p1.clone(), "add_peer(gw1)")),
        Cut::Notify => Some((p1.clone(), "notify")),
        Cut::Dns => None,
    };
    if let Some((r, pattern)) = &holder {
        r.hold(pattern);
    }
    let first_epoch = tokio::task::spawn_blocking({
        let site = site.clone();
        let holder = holder.clone();
        move || {
            wait_nodes_up(&site, 2);
            if let Cut::Dns = cut {
                scold_testkit::send_signal(dns_pid, scold_testkit::Signal::Stop).unwrap();
            }
            site.ctl(&["divert", "web"]);
            // The step is in flight.
            let t = Instant::now();
            loop {
                let s = site.status();
                let there = match &holder {
                    Some((r, _)) => r.holding(),
                    None => {
                        s.targets[0].pending.iter().any(|p| p == "dns-publish")
                            && !s.targets[0].pending.iter().any(|p| p.ends_with("setup"))
                    }
                };
                if there {
                    break s.targets[0].epoch;
                }
                assert!(t.elapsed() < Duration::from_secs(20), "{cut:?}: {s:#?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .await
    .unwrap();

    // The leader dies with the step in flight; the step's node (or server) recovers.
    leader.kill9();
    match &holder {
        Some((r, _)) => r.release(),
        None => scold_testkit::send_signal(dns_pid, scold_testkit::Signal::Cont).unwrap(),
    }
    let site2 = site.clone();
    tokio::task::spawn_blocking(move || {
        assert!(
            scold_testkit::wait_tcp_port(b, Duration::from_secs(20)),
            "{cut:?}: the standby never took over"
        );
        let s = site2.wait_phase("diverted");
        assert_eq!(s.targets[0].epoch, first_epoch, "{cut:?}: a second divert");
        assert_eq!(s.targets[0].proxies, vec!["p1", "p2"], "{cut:?}");
        assert_eq!(
            site2.alt(),
            vec!["\\# 4 C6336401", "\\# 4 C6336402"],
            "{cut:?}: ALT on the wire"
        );
        // One divert in the audit log: entered "diverted" once, and the log continuous.
        let events = site2.events();
        assert!(
            events.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "{cut:?}: gaps"
        );
        let diverted = events
            .iter()
            .filter(|e| e.subject == "web" && e.phase.as_deref() == Some("diverted"))
            .count();
        assert_eq!(diverted, 1, "{cut:?}: {events:#?}");
    })
    .await
    .unwrap();
    // Every node ends set up once: the order cut in flight may have been re-sent (orders
    // are idempotent), nothing else was, and nothing of the divert is missing.
    let effects = |r: &Recorder| -> std::collections::BTreeSet<String> {
        r.0.lock().unwrap().iter().cloned().collect()
    };
    let count =
        |r: &Recorder, what: &str| r.0.lock().unwrap().iter().filter(|o| *o == what).count();
    assert_eq!(
        effects(&gateway),
        ["add_peer(p1),add_peer(p2)".to_string()].into(),
        "{cut:?}"
    );
    for (name, p) in [("p1", &p1), ("p2", &p2)] {
        let mut want: std::collections::BTreeSet<String> =
            ["add_peer(gw1),add_route".to_string()].into();
        want.insert("notify".into());
        assert_eq!(effects(p), want, "{cut:?}: {name}");
    }
    assert_eq!(
        target
            .0
            .lock()
            .unwrap()
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1,
        "{cut:?}"
    );
    let resent = match cut {
        Cut::Gateway => count(&gateway, "add_peer(p1),add_peer(p2)"),
        Cut::Proxy => count(&p1, "add_peer(gw1),add_route"),
        Cut::Notify => count(&p1, "notify"),
        Cut::Target => target.0.lock().unwrap().len(),
        Cut::Dns => 1,
    };
    // At most: the dead leader's delivery, the new leader's re-run of the stage, and
    // the re-sync a node gets when it registers with the new leader. Each is the same
    // idempotent order (a data plane answers `changed: false` to a repeat).
    eprintln!("{cut:?}: the step cut in flight reached its node {resent} time(s)");
    assert!(
        (1..=3).contains(&resent),
        "{cut:?}: the cut step reached its node {resent} times"
    );
    standby.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divert_cut_at_any_step_by_the_leaders_death_completes_once() {
    let etcd = scold_testkit::EtcdCluster::start(1);
    for cut in [Cut::Gateway, Cut::Target, Cut::Proxy, Cut::Dns, Cut::Notify] {
        divert_cut_by_the_leaders_death(&etcd, cut).await;
    }
}

/// The divert's time by the coordinator's own audit log: from entering "diverting" to
/// entering "diverted", milliseconds.
fn divert_ms(site: &Site) -> u64 {
    let events = site.events();
    let at = |phase: &str| {
        events
            .iter()
            .rev()
            .find(|e| e.phase.as_deref() == Some(phase))
            .map(|e| e.at_ms)
            .unwrap()
    };
    at("diverted") - at("diverting")
}

fn median_worst(v: &mut [u64]) -> (u64, u64) {
    v.sort_unstable();
    (v[v.len() / 2], *v.last().unwrap())
}

/// Benchmark, not a test (`bash bench/replicas.sh` runs it in release): a divert's
/// latency with the store in redb (one coordinator) and in etcd (replicas), and the time
/// from the leader's kill -9 to the first order from the standby, median and worst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bash bench/replicas.sh"]
async fn bench_replicas() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let etcd = scold_testkit::EtcdCluster::start(1);
    let (mut redb, mut shared, mut takeover) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        for replicas in [false, true] {
            let mut c = Consortium::setup(&["p1", "p2"]);
            let (mut leader, standby) = if replicas {
                let (l, s) = start_replicas(&mut c, &etcd, &format!("/bench-{run}/"));
                (l, Some(s))
            } else {
                (c.start_coordinator("coordinator.log"), None)
            };
            let site = c.site.clone();
            let _t = c.node(Role::Target, "web");
            let (_g, gateway, _gs) = c.node(Role::Gateway, "gw1");
            let _p1 = c.node(Role::Proxy, "p1");
            let _p2 = c.node(Role::Proxy, "p2");
            let ms = tokio::task::spawn_blocking({
                let site = site.clone();
                move || {
                    wait_nodes_up(&site, 2);
                    site.ctl(&["divert", "web"]);
                    site.wait_phase("diverted");
                    let ms = divert_ms(&site);
                    site.ctl(&["restore", "web"]);
                    site.wait_phase("normal");
                    ms
                }
            })
            .await
            .unwrap();
            if !replicas {
                redb.push(ms);
                leader.kill9();
                continue;
            }
            shared.push(ms);
            // Leader loss: a divert waits on the gateway's order; the leader dies.
            gateway.hold("add_peer");
            let site2 = site.clone();
            let ms = tokio::task::spawn_blocking(move || {
                site2.ctl(&["divert", "web"]);
                let t = Instant::now();
                while !gateway.holding() {
                    assert!(t.elapsed() < Duration::from_secs(20));
                    std::thread::sleep(Duration::from_millis(10));
                }
                let before = gateway.0.lock().unwrap().len();
                leader.kill9();
                let killed = Instant::now();
                gateway.release();
                // The dead leader's order lands once released; the standby's is next.
                while gateway.0.lock().unwrap().len() < before + 2 {
                    assert!(killed.elapsed() < Duration::from_secs(30), "no takeover");
                    std::thread::sleep(Duration::from_millis(5));
                }
                let ms = killed.elapsed().as_millis() as u64;
                drop(standby);
                ms
            })
            .await
            .unwrap();
            takeover.push(ms);
        }
    }
    let (rm, rw) = median_worst(&mut redb);
    let (em, ew) = median_worst(&mut shared);
    let (tm, tw) = median_worst(&mut takeover);
    println!("runs: {runs} each (lease 2 s, standby poll 200 ms)");
    println!("divert, state in redb (one coordinator):    median {rm} ms, worst {rw} ms");
    println!("divert, state in etcd (replicas):           median {em} ms, worst {ew} ms");
    println!("leader kill -9 -> standby's first order:    median {tm} ms, worst {tw} ms");
}

/// What is interrupted after a completed divert.
#[derive(Clone, Copy, Debug)]
enum After {
    /// The operator's restore, cut while the gateway holds its tear-down order.
    RestoreAtGateway,
    /// The operator's restore, cut while TargetDNS hangs in the ALT withdrawal.
    RestoreAtDns,
    /// A proxy reset (p1 reports an attack), cut while the gateway holds its order.
    ResetAtGateway,
    /// A proxy reset, cut while TargetDNS hangs in the new ALT update.
    ResetAtDns,
}

/// A restore or a proxy reset under replicas, cut by kill -9 of the leader with one of
/// its steps in flight: the standby finishes it, once.
async fn cut_after_divert(etcd: &scold_testkit::EtcdCluster, cut: After) {
    let mut c = Consortium::setup(&["p1", "p2", "p3"]);
    let (mut leader, mut standby) = start_replicas(&mut c, etcd, &format!("/scold-after-{cut:?}/"));
    let b = c.site.replicas[0];
    let site = c.site.clone();
    let _t = c.node(Role::Target, "web");
    let (_g, gateway, _gs) = c.node(Role::Gateway, "gw1");
    let (p1_link, _p1, _p1s) = c.node(Role::Proxy, "p1");
    let _p2 = c.node(Role::Proxy, "p2");
    let _p3 = c.node(Role::Proxy, "p3");
    let dns_pid = c._dns.pid();
    let at_dns = matches!(cut, After::RestoreAtDns | After::ResetAtDns);
    let reset = matches!(cut, After::ResetAtGateway | After::ResetAtDns);
    let site1 = site.clone();
    let gw = gateway.clone();
    tokio::task::spawn_blocking(move || {
        wait_status(&site1, "up", |s| {
            s.proxies.iter().filter(|p| p.health == "up").count() == 3
                && s.gateways.iter().any(|g| g.health == "up")
        });
        site1.ctl(&["divert", "web"]);
        site1.wait_phase("diverted");
        if at_dns {
            scold_testkit::send_signal(dns_pid, scold_testkit::Signal::Stop).unwrap();
        } else {
            gw.hold("");
        }
    })
    .await
    .unwrap();
    if reset {
        p1_link
            .request(
                Request::ProxyAttacked {
                    proxy: "p1".into(),
                    summary: serde_json::Value::Null,
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    } else {
        let site1 = site.clone();
        tokio::task::spawn_blocking(move || site1.ctl(&["restore", "web"]))
            .await
            .unwrap();
    }
    let site1 = site.clone();
    let gw = gateway.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        loop {
            let s = site1.status();
            let pending = &s.targets[0].pending;
            let there = if at_dns {
                pending
                    .iter()
                    .any(|p| p == "dns-publish" || p == "dns-restore")
            } else {
                gw.holding()
            };
            if there {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{cut:?}: {s:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();

    leader.kill9();
    if at_dns {
        scold_testkit::send_signal(dns_pid, scold_testkit::Signal::Cont).unwrap();
    } else {
        gateway.release();
    }
    tokio::task::spawn_blocking(move || {
        assert!(
            scold_testkit::wait_tcp_port(b, Duration::from_secs(20)),
            "{cut:?}: the standby never took over"
        );
        let (want_phase, want_alt, entered) = if reset {
            (
                "diverted",
                vec!["\\# 4 C6336402", "\\# 4 C6336403"],
                "resetting",
            )
        } else {
            ("normal", vec![], "normal")
        };
        let s = wait_status(&site, "finished", |s| {
            s.targets[0].phase == want_phase
                && (!reset || !s.targets[0].proxies.contains(&"p1".to_string()))
        });
        if reset {
            let mut set = s.targets[0].proxies.clone();
            set.sort();
            assert_eq!(set, vec!["p2", "p3"], "{cut:?}");
        }
        assert_eq!(site.alt(), want_alt, "{cut:?}: records on the wire");
        let events = site.events();
        assert!(
            events.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "{cut:?}: gaps"
        );
        let n = events
            .iter()
            .filter(|e| e.subject == "web" && e.phase.as_deref() == Some(entered))
            .count();
        assert_eq!(n, 1, "{cut:?}: entered {entered} {n} times: {events:#?}");
    })
    .await
    .unwrap();
    standby.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_or_reset_cut_by_the_leaders_death_completes_once() {
    let etcd = scold_testkit::EtcdCluster::start(1);
    for cut in [
        After::RestoreAtGateway,
        After::RestoreAtDns,
        After::ResetAtGateway,
        After::ResetAtDns,
    ] {
        cut_after_divert(&etcd, cut).await;
    }
}
