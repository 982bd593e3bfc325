//! The control plane end to end over real mutual TLS on loopback: a coordinator, nodes
//! linked through `CoordinatorLink`, an operator channel. The nodes' data planes are played by
//! handlers that record the orders they get; the DNS back end records the updates.

use scold_control::config::{Config, TargetConfig};
use scold_control::coordinator::{self, Accepted, BoxFut, DnsBackend, DnsError};
use scold_link::channel::{self, Channel, ChannelError, Handler, NoRequests};
use scold_link::CoordinatorLink;
use scold_metrics::Metrics;
use scold_pki::{Ca, CaInit, Identity, RevokeTarget, Role, TlsIdentity, Validity};
use scold_proto::control::{
    EpochGuard, NodeInfo, RefusalReason, Reply, Request, Response, StatusReport, TunnelInfo,
};
use scold_proto::dataplane;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    root: PathBuf,
}

impl Pki {
    fn new() -> Self {
        scold_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ca = Ca::init(&root.join("ca"), &CaInit::default()).unwrap();
        Pki {
            _dir: dir,
            ca,
            root,
        }
    }

    fn issue_with(&mut self, role: Role, name: &str, validity: Validity) -> Arc<TlsIdentity> {
        let out = self.root.join(format!("{role}-{name}"));
        let paths = self
            .ca
            .issue(
                &Identity::new(role, name).unwrap(),
                &[],
                &[],
                validity,
                &out,
            )
            .unwrap();
        Arc::new(TlsIdentity::load(&paths.tls_paths()).unwrap())
    }

    fn issue(&mut self, role: Role, name: &str) -> Arc<TlsIdentity> {
        self.issue_with(role, name, Validity::days(1))
    }

    /// A certificate that names `ips` as well.
    fn issue_naming(&mut self, role: Role, name: &str, ips: &[IpAddr]) -> Arc<TlsIdentity> {
        let out = self.root.join(format!("{role}-{name}-ip"));
        let paths = self
            .ca
            .issue(
                &Identity::new(role, name).unwrap(),
                ips,
                &[],
                Validity::days(1),
                &out,
            )
            .unwrap();
        Arc::new(TlsIdentity::load(&paths.tls_paths()).unwrap())
    }
}

/// Records the DNS updates the coordinator makes.
#[derive(Default, Clone)]
struct RecordingDns {
    log: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<bool>>,
}

impl DnsBackend for RecordingDns {
    fn publish<'a>(
        &'a self,
        t: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<Accepted, DnsError>> {
        Box::pin(async move {
            if *self.fail.lock().unwrap() {
                return Err(DnsError::Backend("server unreachable".into()));
            }
            let mut v: Vec<String> = proxies.iter().map(|a| a.to_string()).collect();
            v.sort();
            self.log
                .lock()
                .unwrap()
                .push(format!("publish {} {}", t.fqdn, v.join(",")));
            Ok(Accepted::default())
        })
    }
    fn restore<'a>(&'a self, t: &'a TargetConfig) -> BoxFut<'a, Result<Accepted, DnsError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("restore {}", t.fqdn));
            Ok(Accepted::default())
        })
    }
}

/// A node that applies orders by recording them, guarding epochs like a real node.
#[derive(Default)]
struct Node {
    orders: Mutex<Vec<String>>,
    epochs: Mutex<EpochGuard>,
}

impl Handler for Node {
    async fn handle(&self, _from: &Channel, request: Request) -> Response {
        match request {
            Request::Dataplane {
                target,
                epoch,
                commands,
                ..
            } => {
                if let Err(r) = self.epochs.lock().unwrap().admit(&target, epoch) {
                    return Response::Refused(r);
                }
                let what: Vec<String> = commands.iter().map(describe).collect();
                self.orders.lock().unwrap().push(what.join(","));
                Response::Ok {
                    reply: Reply::Dataplane {
                        replies: commands
                            .iter()
                            .map(|_| dataplane::Reply::Done { changed: true })
                            .collect(),
                    },
                }
            }
            Request::Notify { target, epoch, .. } => {
                if let Err(r) = self.epochs.lock().unwrap().admit(&target, epoch) {
                    return Response::Refused(r);
                }
                self.orders.lock().unwrap().push("notify".into());
                Response::Ok { reply: Reply::Done }
            }
            other => Response::Refused(scold_proto::control::Refusal::new(
                RefusalReason::Role,
                format!("unexpected {}", other.kind()),
            )),
        }
    }
}

fn describe(c: &dataplane::Command) -> String {
    match c {
        dataplane::Command::AddPeer(p) => format!("add_peer({})", p.name),
        dataplane::Command::RemovePeer { name } => format!("remove_peer({name})"),
        other => other.kind().to_string(),
    }
}

/// The tunnel end point a node announces: proxies at their configured address.
fn tunnel(role: Role, name: &str) -> Option<TunnelInfo> {
    let (ip, inside) = match (role, name) {
        (Role::Proxy, "p1") => ("198.51.100.1", None),
        (Role::Proxy, "p2") => ("198.51.100.2", None),
        (Role::Proxy, "p3") => ("198.51.100.3", None),
        (Role::Gateway, _) => ("203.0.113.9", Some("10.3.0.1".parse().unwrap())),
        _ => return None,
    };
    Some(TunnelInfo {
        endpoint: format!("{ip}:51820").parse().unwrap(),
        encap: dataplane::Encap::Udp,
        public_key: None,
        inside,
        engines: None,
    })
}

/// The coordinator settings a test may change.
#[derive(Clone)]
struct Knobs {
    proxies: usize,
    down_after_ms: u64,
    attacked_hold_ms: u64,
    /// The target's scheme: "4.1", "4.2" or "4.3".
    scheme: &'static str,
    /// More tables for the config file (e.g. `[[webhook]]`).
    extra: String,
}

impl Knobs {
    fn proxies(proxies: usize) -> Knobs {
        Knobs {
            proxies,
            down_after_ms: 600,
            attacked_hold_ms: 300_000,
            scheme: "4.1",
            extra: String::new(),
        }
    }
}

fn config(state: &Path, listen: SocketAddr, knobs: Knobs) -> Config {
    let Knobs {
        proxies,
        down_after_ms,
        attacked_hold_ms,
        scheme,
        extra,
    } = knobs;
    // Scheme 4.3 relays service ports; a target without any is refused.
    let services = if scheme == "4.3" {
        "services = [\"tcp/80\"]"
    } else {
        ""
    };
    let text = format!(
        r#"
[coordinator]
listen = "{listen}"
state = "{}"
heartbeat_ms = 100
down_after_ms = {down_after_ms}
proxies_per_target = {proxies}
attacked_hold_ms = {attacked_hold_ms}
max_backoff_ms = 200
[tls]
ca = "unused"
cert = "unused"
key = "unused"
[[target]]
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["192.0.2.10"]
gateways = ["gw1"]
ttl = 0
scheme = "{scheme}"
{services}
[target.dns]
server = "127.0.0.1:53"
key = "hmac-sha256:k:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg=="
[[proxy]]
name = "p1"
address = "198.51.100.1"
organisation = "a"
capacity_mbps = 3000
[[proxy]]
name = "p2"
address = "198.51.100.2"
organisation = "b"
capacity_mbps = 2000
[[proxy]]
name = "p3"
address = "198.51.100.3"
organisation = "c"
capacity_mbps = 1000
{extra}
"#,
        state.display()
    );
    scold_daemon::parse(&text, Path::new("test.toml"), "x").unwrap()
}

struct Rig {
    pki: Pki,
    addr: SocketAddr,
    dns: RecordingDns,
    metrics: Metrics,
    stop: watch::Sender<bool>,
}

impl Rig {
    async fn start(proxies: usize) -> Rig {
        Rig::start_with(Knobs::proxies(proxies)).await
    }

    async fn start_with(knobs: Knobs) -> Rig {
        let mut pki = Pki::new();
        let tls = pki.issue(Role::Coordinator, "main");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = config(&pki.root.join("state.redb"), addr, knobs);
        let dns = RecordingDns::default();
        let metrics = Metrics::new();
        let (stop, rx) = watch::channel(false);
        let (d, m) = (dns.clone(), metrics.clone());
        tokio::spawn(async move {
            coordinator::serve_on(cfg, tls, Box::new(d), listener, m, rx)
                .await
                .unwrap()
        });
        Rig {
            pki,
            addr,
            dns,
            metrics,
            stop,
        }
    }

    fn node(
        &mut self,
        role: Role,
        name: &str,
        address: Option<&str>,
    ) -> (CoordinatorLink, Arc<Node>) {
        let (agent, node, stop) = self.stoppable_node(role, name, address);
        std::mem::forget(stop);
        (agent, node)
    }

    fn stoppable_node(
        &mut self,
        role: Role,
        name: &str,
        address: Option<&str>,
    ) -> (CoordinatorLink, Arc<Node>, watch::Sender<bool>) {
        let info = NodeInfo {
            address: address.map(|a| a.parse().unwrap()),
            tunnel: tunnel(role, name),
            ..Default::default()
        };
        self.node_with(role, name, info)
    }

    /// A node that announces `info` (a fresh data plane: it has applied no order yet).
    fn node_with(
        &mut self,
        role: Role,
        name: &str,
        info: NodeInfo,
    ) -> (CoordinatorLink, Arc<Node>, watch::Sender<bool>) {
        let tls = self.pki.issue(role, name);
        let node = Arc::new(Node::default());
        let (stop, rx) = watch::channel(false);
        let agent = CoordinatorLink::start(self.addr, info, tls, node.clone(), Metrics::new(), rx);
        (agent, node, stop)
    }

    async fn operator(&mut self) -> Channel {
        let tls = self.pki.issue(Role::Operator, "admin");
        channel::connect(
            self.addr,
            &tls,
            &[Role::Coordinator],
            Arc::new(NoRequests),
            Metrics::new(),
        )
        .await
        .unwrap()
    }
}

async fn status(op: &Channel) -> StatusReport {
    match op.request(Request::Status, T).await.unwrap() {
        Reply::Status(s) => s,
        other => panic!("unexpected {other:?}"),
    }
}

/// Polls the status until `pred` holds (bounded).
async fn wait_status(
    op: &Channel,
    what: &str,
    pred: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    for _ in 0..200 {
        let s = status(op).await;
        if pred(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", status(op).await);
}

/// Waits until `proxies` proxies and a gateway are up, diverts "web" as the operator
/// and waits for phase "diverted".
async fn divert_once_up(op: &Channel, proxies: usize) -> StatusReport {
    wait_status(op, "nodes up", |s| {
        s.proxies.iter().filter(|p| p.health == "up").count() == proxies
            && s.gateways.iter().any(|g| g.health == "up")
    })
    .await;
    op.request(
        Request::Divert {
            target: "web".into(),
        },
        T,
    )
    .await
    .unwrap();
    wait_status(op, "diverted", |s| phase(s) == "diverted").await
}

fn phase(s: &StatusReport) -> &str {
    &s.targets.iter().find(|t| t.name == "web").unwrap().phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_reset_and_restore() {
    let mut rig = Rig::start(2).await;
    let (target, target_node) = rig.node(Role::Target, "web", None);
    let (_gw, gw_node) = rig.node(Role::Gateway, "gw1", None);
    let mut proxies = Vec::new();
    for p in ["p1", "p2", "p3"] {
        proxies.push(rig.node(Role::Proxy, p, None));
    }
    let op = rig.operator().await;
    wait_status(&op, "nodes up", |s| {
        s.proxies.iter().filter(|p| p.health == "up").count() == 3
            && s.gateways.iter().any(|g| g.health == "up")
    })
    .await;

    // A target may raise alarms only for itself.
    let err = target
        .request(
            Request::Alarm {
                target: "mail".into(),
                summary: serde_json::Value::Null,
            },
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Refused { ref refusal, .. } if refusal.reason == RefusalReason::Subject),
        "{err}"
    );

    // The alarm: divert with the two proxies of most free capacity, different orgs.
    let reply = target
        .request(
            Request::Alarm {
                target: "web".into(),
                summary: serde_json::json!({"pps": 1e6}),
            },
            T,
        )
        .await
        .unwrap();
    let Reply::Target(view) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(view.phase, "diverting");
    let s = wait_status(&op, "diverted", |s| phase(s) == "diverted").await;
    let web = s.targets.iter().find(|t| t.name == "web").unwrap();
    assert_eq!(web.proxies, vec!["p1", "p2"]);
    assert_eq!(
        rig.dns.log.lock().unwrap().clone(),
        vec!["publish www.example.net. 198.51.100.1,198.51.100.2"]
    );
    assert_eq!(
        gw_node.orders.lock().unwrap().clone(),
        vec!["add_peer(p1),add_peer(p2),remove_peer(p3)"]
    );
    // Scheme 4.1: the target marks what comes from the gateway and routes it back.
    assert_eq!(
        target_node.orders.lock().unwrap().clone(),
        vec!["set_return_path"]
    );
    assert_eq!(
        proxies[0].1.orders.lock().unwrap().clone(),
        vec!["add_peer(gw1),add_route", "notify"]
    );
    assert!(proxies[2].1.orders.lock().unwrap().is_empty());

    // A second alarm changes nothing (idempotent).
    target
        .request(
            Request::Alarm {
                target: "web".into(),
                summary: serde_json::Value::Null,
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(phase(&status(&op).await), "diverted");

    // p1 reports a severe attack on itself: it is swapped for p3 (paper 4.4).
    proxies[0]
        .0
        .request(
            Request::ProxyAttacked {
                proxy: "p1".into(),
                summary: serde_json::Value::Null,
            },
            T,
        )
        .await
        .unwrap();
    let s = wait_status(&op, "reset done", |s| {
        phase(s) == "diverted" && s.targets[0].proxies == vec!["p2", "p3"]
    })
    .await;
    assert_eq!(
        s.proxies.iter().find(|p| p.name == "p1").unwrap().health,
        "attacked"
    );
    assert!(proxies[0]
        .1
        .orders
        .lock()
        .unwrap()
        .contains(&"remove_route,remove_peer(gw1)".to_string()));
    assert!(proxies[2]
        .1
        .orders
        .lock()
        .unwrap()
        .contains(&"add_peer(gw1),add_route".to_string()));
    assert_eq!(
        rig.dns.log.lock().unwrap().last().unwrap(),
        "publish www.example.net. 198.51.100.2,198.51.100.3"
    );

    // A proxy may not speak for another one, nor act as an operator.
    let err = proxies[1]
        .0
        .request(
            Request::ProxyAttacked {
                proxy: "p3".into(),
                summary: serde_json::Value::Null,
            },
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Refused { ref refusal, .. } if refusal.reason == RefusalReason::Subject)
    );
    let err = proxies[1]
        .0
        .request(
            Request::Restore {
                target: "web".into(),
            },
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Refused { ref refusal, .. } if refusal.reason == RefusalReason::Role)
    );

    // The all-clear restores: DNS back, routes torn down, normal.
    target
        .request(
            Request::AllClear {
                target: "web".into(),
            },
            T,
        )
        .await
        .unwrap();
    let s = wait_status(&op, "normal", |s| phase(s) == "normal").await;
    assert!(s.targets[0].proxies.is_empty());
    assert_eq!(
        rig.dns.log.lock().unwrap().last().unwrap(),
        "restore www.example.net."
    );
    assert_eq!(
        gw_node.orders.lock().unwrap().last().unwrap(),
        "remove_peer(p1),remove_peer(p2),remove_peer(p3)"
    );
    assert_eq!(
        target_node.orders.lock().unwrap().last().unwrap(),
        "clear_return_path"
    );

    // The audit log has every phase change, in order.
    let Reply::Events { events } = op
        .request(
            Request::Events {
                limit: 1000,
                subject: None,
                kind: None,
            },
            T,
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "phase")
        .map(|e| e.detail.split(" (").next().unwrap())
        .collect();
    // Each names the phase it entered as a field of its own, for tools.
    for e in events.iter().filter(|e| e.event == "phase") {
        let entered = e.detail.split(" (").next().unwrap().rsplit(" -> ").next();
        assert_eq!(e.phase.as_deref(), entered, "{e:?}");
    }
    assert!(events
        .iter()
        .all(|e| (e.event == "phase") == e.phase.is_some()));
    assert_eq!(
        phases,
        vec![
            "normal -> diverting",
            "diverting -> diverted",
            "diverted -> resetting",
            "resetting -> diverted",
            "diverted -> restoring",
            "restoring -> normal"
        ]
    );
    let metrics = rig.metrics.render();
    assert!(
        metrics.contains("scold_transitions_total{from=\"normal\",to=\"diverting\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scold_refusals_total{reason=\"subject\"} 2"),
        "{metrics}"
    );
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_steps_are_retried_not_skipped_and_dead_proxies_are_replaced() {
    let mut rig = Rig::start(1).await;
    *rig.dns.fail.lock().unwrap() = true;
    let (_target, _) = rig.node(Role::Target, "web", None);
    let (_gw, _) = rig.node(Role::Gateway, "gw1", None);
    let (_p1, p1_node, p1_stop) = rig.stoppable_node(Role::Proxy, "p1", None);
    let op = rig.operator().await;
    wait_status(&op, "nodes up", |s| {
        s.proxies.iter().any(|p| p.name == "p1" && p.health == "up")
    })
    .await;
    // Only p1 is up, so it is chosen.
    op.request(
        Request::Divert {
            target: "web".into(),
        },
        T,
    )
    .await
    .unwrap();
    let s = wait_status(&op, "dns failure visible", |s| {
        s.targets[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("server unreachable"))
    })
    .await;
    assert_eq!(phase(&s), "diverting");
    assert_eq!(
        s.targets[0].pending,
        vec!["dns-publish", "notify-resolvers", "push-routes"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        phase(&status(&op).await),
        "diverting",
        "a failing step must block the divert"
    );
    // The DNS server comes back: the retry goes through.
    *rig.dns.fail.lock().unwrap() = false;
    wait_status(&op, "diverted", |s| phase(s) == "diverted").await;

    // p2 comes up; p1 goes silent: it is marked down and replaced by p2.
    let (_p2, p2_node) = rig.node(Role::Proxy, "p2", None);
    wait_status(&op, "p2 up", |s| {
        s.proxies.iter().any(|p| p.name == "p2" && p.health == "up")
    })
    .await;
    let _ = p1_stop.send(true); // p1 dies: no more heartbeats
    let s = wait_status(&op, "p1 replaced", |s| {
        phase(s) == "diverted" && s.targets[0].proxies == vec!["p2"]
    })
    .await;
    assert_eq!(
        s.proxies.iter().find(|p| p.name == "p1").unwrap().health,
        "down"
    );
    assert!(p2_node
        .orders
        .lock()
        .unwrap()
        .contains(&"add_peer(gw1),add_route".to_string()));
    // p1 is gone, so its tear-down cannot be delivered: it stays pending and retried,
    // and the target is nonetheless served by p2 (DNS already lists only p2).
    assert!(rig
        .dns
        .log
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .ends_with("198.51.100.2"));
    let _ = p1_node;
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_others_still_served() {
    let mut rig = Rig::start(2).await;
    // A certificate from another CA.
    let mut other = Pki::new();
    let stranger = other.issue(Role::Operator, "admin");
    let err = channel::connect(
        rig.addr,
        &stranger,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await;
    // TLS 1.3: the client may finish its handshake before the server's verdict arrives;
    // then the first request fails instead.
    if let Ok(ch) = err {
        assert!(ch.request(Request::Status, T).await.is_err());
    }
    // An expired certificate.
    let now = time::OffsetDateTime::now_utc();
    let expired = rig.pki.issue_with(
        Role::Operator,
        "old",
        Validity::between(
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap(),
    );
    if let Ok(ch) = channel::connect(
        rig.addr,
        &expired,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await
    {
        assert!(ch.request(Request::Status, T).await.is_err());
    }
    // A revoked certificate, revoked while the coordinator runs.
    let revoked = rig.pki.issue(Role::Operator, "gone");
    rig.pki
        .ca
        .revoke(&RevokeTarget::Identity(
            Identity::new(Role::Operator, "gone").unwrap(),
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // CRL re-read interval
    if let Ok(ch) = channel::connect(
        rig.addr,
        &revoked,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await
    {
        assert!(ch.request(Request::Status, T).await.is_err());
    }
    // Certificates of roles that may ask the coordinator nothing (a DNS server, a
    // resolver, another coordinator) from the consortium's own CA: refused in the
    // handshake, not per request.
    for (role, name) in [
        (Role::Dns, "ns1"),
        (Role::Resolver, "res1"),
        (Role::Coordinator, "other"),
    ] {
        let wrong = rig.pki.issue(role, name);
        if let Ok(ch) = channel::connect(
            rig.addr,
            &wrong,
            &[Role::Coordinator],
            Arc::new(NoRequests),
            Metrics::new(),
        )
        .await
        {
            let err = ch.request(Request::Status, T).await.unwrap_err();
            assert!(
                !matches!(err, ChannelError::Refused { .. }),
                "{role:?}: a request was answered (refused per request): {err}"
            );
        }
    }
    // Everyone else is still served.
    let op = rig.operator().await;
    status(&op).await;
    let m = rig.metrics.render();
    assert!(
        m.contains("scold_refusals_total{reason=\"wrong_role\"} 3"),
        "wrong roles not refused in the handshake:\n{m}"
    );
    for reason in ["unknown_ca", "expired", "revoked"] {
        assert!(
            m.contains(&format!("scold_refusals_total{{reason=\"{reason}\"}} 1")),
            "{reason} not counted:\n{m}"
        );
    }
    let _ = rig.stop.send(true);
}

/// A node's link and data plane, stopped (as a process that dies) when restarted.
struct Running {
    agent: CoordinatorLink,
    node: Arc<Node>,
    stop: watch::Sender<bool>,
}

impl Running {
    fn new((agent, node, stop): (CoordinatorLink, Arc<Node>, watch::Sender<bool>)) -> Running {
        Running { agent, node, stop }
    }

    /// The node process dies: its link to the coordinator goes, and with it every
    /// order its data plane held.
    fn kill(self) {
        let _ = self.stop.send(true);
        drop(self.agent);
    }
}

/// Waits (bounded) until `node` has applied an order batch equal to `want`.
async fn wait_order(node: &Node, what: &str, want: &str) {
    for _ in 0..400 {
        if node.orders.lock().unwrap().iter().any(|o| o == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "timed out waiting for {what} to get {want:?}; it got {:?}",
        node.orders.lock().unwrap()
    );
}

async fn events(op: &Channel) -> Vec<scold_proto::control::EventView> {
    match op
        .request(
            Request::Events {
                limit: 1000,
                subject: None,
                kind: None,
            },
            T,
        )
        .await
        .unwrap()
    {
        Reply::Events { events } => events,
        other => panic!("unexpected {other:?}"),
    }
}

fn web(s: &StatusReport) -> &scold_proto::control::TargetView {
    s.targets.iter().find(|t| t.name == "web").unwrap()
}

/// A proxy, the gateway and the target restart (their data planes empty) while the
/// target is diverted: each gets its own set-up orders again on registering, without a
/// phase change; nodes that did not restart are not bothered. A gateway that comes back
/// with a new tunnel end point has the proxies told the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_get_their_set_up_orders_again() {
    // Restarts are quicker than down_after_ms: the nodes are never marked down, so only
    // the re-synchronisation on registering can bring their state back.
    let mut rig = Rig::start_with(Knobs {
        down_after_ms: 10_000,
        ..Knobs::proxies(2)
    })
    .await;
    let target = Running::new(rig.stoppable_node(Role::Target, "web", None));
    let gw = Running::new(rig.stoppable_node(Role::Gateway, "gw1", None));
    let p1 = Running::new(rig.stoppable_node(Role::Proxy, "p1", None));
    let (_p2, p2_node) = rig.node(Role::Proxy, "p2", None);
    let op = rig.operator().await;
    let s = divert_once_up(&op, 2).await;
    assert_eq!(web(&s).proxies, vec!["p1", "p2"]);
    let epoch = web(&s).epoch;
    let relay = "add_peer(gw1),add_route";
    let admit = "add_peer(p1),add_peer(p2),remove_peer(p3)";
    assert_eq!(
        p2_node.orders.lock().unwrap().clone(),
        vec![relay, "notify"]
    );
    assert_eq!(gw.node.orders.lock().unwrap().clone(), vec![admit]);

    // p1 restarts: its relay to the gateway is re-sent, nothing else.
    p1.kill();
    let p1 = Running::new(rig.stoppable_node(Role::Proxy, "p1", None));
    wait_order(&p1.node, "restarted p1", relay).await;
    // The gateway restarts: it admits the set again.
    gw.kill();
    let gw = Running::new(rig.stoppable_node(Role::Gateway, "gw1", None));
    wait_order(&gw.node, "restarted gw1", admit).await;
    // The target restarts: its return path is set again.
    target.kill();
    let target = Running::new(rig.stoppable_node(Role::Target, "web", None));
    wait_order(&target.node, "restarted target", "set_return_path").await;

    assert_eq!(p1.node.orders.lock().unwrap().clone(), vec![relay]);
    assert_eq!(gw.node.orders.lock().unwrap().clone(), vec![admit]);
    assert_eq!(
        target.node.orders.lock().unwrap().clone(),
        vec!["set_return_path"]
    );
    // p2 did not restart and its gateway's end point did not change: left alone.
    assert_eq!(
        p2_node.orders.lock().unwrap().clone(),
        vec![relay, "notify"]
    );
    // No phase change: the same plan, the same epoch.
    let s = status(&op).await;
    assert_eq!((phase(&s), web(&s).epoch), ("diverted", epoch));

    // Each re-synchronisation is in the audit log, naming the node and the orders. The
    // entry is written once the node has answered, so it may follow the order by a
    // moment.
    let wanted = [
        ("proxy/p1", "proxy-setup(p1)"),
        ("gateway/gw1", "gateway-setup"),
        ("target/web", "target-setup"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resyncs: Vec<String> = events(&op)
            .await
            .into_iter()
            .filter(|e| e.subject == "web" && e.event == "resync")
            .map(|e| e.detail)
            .collect();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(node, step)| {
                !resyncs
                    .iter()
                    .any(|d| d.starts_with(&format!("{node} registered again")) && d.contains(step))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no resync of {missing:?} in {resyncs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway comes back on another address: the proxies of the set get its new
    // end point, and the target its return path again.
    gw.kill();
    let mut moved = tunnel(Role::Gateway, "gw1").unwrap();
    moved.endpoint = "203.0.113.77:51820".parse().unwrap();
    let gw = Running::new(rig.node_with(
        Role::Gateway,
        "gw1",
        NodeInfo {
            tunnel: Some(moved),
            ..Default::default()
        },
    ));
    wait_order(&gw.node, "moved gw1", admit).await;
    for _ in 0..400 {
        let relays = |n: &Node| {
            n.orders
                .lock()
                .unwrap()
                .iter()
                .filter(|o| *o == relay)
                .count()
        };
        let returns = target
            .node
            .orders
            .lock()
            .unwrap()
            .iter()
            .filter(|o| *o == "set_return_path")
            .count();
        if relays(&p1.node) == 2 && relays(&p2_node) == 2 && returns == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        p2_node.orders.lock().unwrap().clone(),
        vec![relay, "notify", relay],
        "p2 must be told the gateway's new end point"
    );
    assert_eq!(p1.node.orders.lock().unwrap().clone(), vec![relay, relay]);
    assert_eq!(
        target.node.orders.lock().unwrap().clone(),
        vec!["set_return_path", "set_return_path"]
    );
    let s = status(&op).await;
    assert_eq!((phase(&s), web(&s).epoch), ("diverted", epoch));
    let _ = rig.stop.send(true);
}

/// Two proxies wanted and only two in the pool: one reports an attack on itself and
/// has no replacement, so the set shrinks to one. When its `attacked` mark expires it
/// is added back (set up, then published), so a second loss still leaves a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_attack_mark_expires_rejoins_a_short_set() {
    let mut rig = Rig::start_with(Knobs {
        attacked_hold_ms: 1500,
        ..Knobs::proxies(2)
    })
    .await;
    let (_target, _) = rig.node(Role::Target, "web", None);
    let (_gw, gw_node) = rig.node(Role::Gateway, "gw1", None);
    let (p1, p1_node) = rig.node(Role::Proxy, "p1", None);
    let (p2, _) = rig.node(Role::Proxy, "p2", None);
    // p3 is configured but never comes up: the pool has two usable proxies.
    let op = rig.operator().await;
    let s = divert_once_up(&op, 2).await;
    assert_eq!(web(&s).proxies, vec!["p1", "p2"]);

    p1.request(
        Request::ProxyAttacked {
            proxy: "p1".into(),
            summary: serde_json::Value::Null,
        },
        T,
    )
    .await
    .unwrap();
    // Out at once, with no replacement; back once the mark expires (1.5 s).
    let s = wait_status(&op, "p1 back in the set", |s| {
        phase(s) == "diverted" && web(s).proxies == vec!["p2", "p1"]
    })
    .await;
    assert_eq!(
        s.proxies.iter().find(|p| p.name == "p1").unwrap().health,
        "up"
    );
    assert_eq!(
        rig.dns.log.lock().unwrap().clone(),
        vec![
            "publish www.example.net. 198.51.100.1,198.51.100.2",
            "publish www.example.net. 198.51.100.2",
            "publish www.example.net. 198.51.100.1,198.51.100.2",
        ]
    );
    // p1 was torn down, then set up again and told to notify; the gateway admitted
    // the short set, then both again.
    assert_eq!(
        p1_node.orders.lock().unwrap().clone(),
        vec![
            "add_peer(gw1),add_route",
            "notify",
            "remove_route,remove_peer(gw1)",
            "add_peer(gw1),add_route",
            "notify"
        ]
    );
    assert_eq!(
        gw_node.orders.lock().unwrap().clone(),
        vec![
            "add_peer(p1),add_peer(p2),remove_peer(p3)",
            "remove_peer(p1),add_peer(p2),remove_peer(p3)",
            "add_peer(p1),add_peer(p2),remove_peer(p3)"
        ]
    );
    let log = events(&op).await;
    let phases: Vec<&str> = log
        .iter()
        .filter(|e| e.event == "phase")
        .map(|e| e.detail.split(" (").next().unwrap())
        .collect();
    assert_eq!(
        phases,
        vec![
            "normal -> diverting",
            "diverting -> diverted",
            "diverted -> resetting",
            "resetting -> diverted",
            "diverted -> resetting",
            "resetting -> diverted",
        ]
    );
    assert!(
        log.iter()
            .any(|e| e.event == "proxy_back" && e.detail.contains("ProxyAdded")),
        "the addition is audited: {log:#?}"
    );

    // Now p2 is attacked: p1 still serves the target.
    p2.request(
        Request::ProxyAttacked {
            proxy: "p2".into(),
            summary: serde_json::Value::Null,
        },
        T,
    )
    .await
    .unwrap();
    // (Polled on the DNS log: p2's own mark expires soon after, and it comes back.)
    for _ in 0..400 {
        if rig.dns.log.lock().unwrap().len() > 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        rig.dns.log.lock().unwrap().get(3).map(String::as_str),
        Some("publish www.example.net. 198.51.100.1")
    );
    let _ = rig.stop.send(true);
}

/// Scheme 4.2: a client agent that registers while the target is diverted has its
/// proxy push its route; a proxy that restarts gets its relay and its pushes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_scheme_late_client_and_restarted_proxy_get_their_pushes() {
    use scold_control::orchestrate::assign_clients;
    let mut rig = Rig::start_with(Knobs {
        down_after_ms: 10_000,
        scheme: "4.2",
        ..Knobs::proxies(2)
    })
    .await;
    let (_target, _) = rig.node(Role::Target, "web", None);
    let (_gw, _) = rig.node(Role::Gateway, "gw1", None);
    let p1 = Running::new(rig.stoppable_node(Role::Proxy, "p1", None));
    let p2 = Running::new(rig.stoppable_node(Role::Proxy, "p2", None));
    let (_c1, _) = rig.node(Role::Client, "c1", Some("10.9.0.2"));
    let op = rig.operator().await;
    let s = divert_once_up(&op, 2).await;
    assert_eq!(web(&s).proxies, vec!["p1", "p2"]);
    let set = vec!["p1".to_string(), "p2".to_string()];
    let proxy_of = |client: &str| -> String {
        assign_clients(&set, &[client.to_string()])
            .into_iter()
            .find(|(_, cs)| !cs.is_empty())
            .unwrap()
            .0
    };
    let node_of = |proxy: &str| if proxy == "p1" { &p1.node } else { &p2.node };
    let pushes = |n: &Node| {
        n.orders
            .lock()
            .unwrap()
            .iter()
            .filter(|o| *o == "push_route")
            .count()
    };
    let c1_proxy = proxy_of("c1");
    assert_eq!(pushes(node_of(&c1_proxy)), 1, "c1 pushed at the divert");

    // c2 registers late: its proxy pushes its route, no one else pushes again.
    let (_c2, _) = rig.node(Role::Client, "c2", Some("10.9.0.3"));
    let c2_proxy = proxy_of("c2");
    let want = if c1_proxy == c2_proxy { 2 } else { 1 };
    for _ in 0..400 {
        if pushes(node_of(&c2_proxy)) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        pushes(node_of(&c2_proxy)),
        want,
        "c2 pushed when it registered"
    );
    assert_eq!(pushes(&p1.node) + pushes(&p2.node), 2);

    // c1's proxy restarts: it gets its relay and the pushes of its clients again.
    let (p1, p2) = if c1_proxy == "p1" {
        p1.kill();
        (
            Running::new(rig.stoppable_node(Role::Proxy, "p1", None)),
            p2,
        )
    } else {
        p2.kill();
        (
            p1,
            Running::new(rig.stoppable_node(Role::Proxy, "p2", None)),
        )
    };
    let restarted = if c1_proxy == "p1" { &p1.node } else { &p2.node };
    wait_order(restarted, "restarted proxy", "add_peer(gw1),add_route").await;
    for _ in 0..400 {
        if pushes(restarted) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        pushes(restarted),
        want,
        "{:?}",
        restarted.orders.lock().unwrap()
    );
    let s = status(&op).await;
    assert_eq!(phase(&s), "diverted");
    let _ = rig.stop.send(true);
}

/// A proxy of a two-proxy set dies and, with no other proxy in the pool, is taken out
/// with no replacement. When it comes back (a new process registers) it rejoins the set
/// and gets its relay again; the DNS lists both proxies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_that_registers_again_rejoins_a_short_set() {
    let mut rig = Rig::start(2).await;
    let (_target, _) = rig.node(Role::Target, "web", None);
    let (_gw, _) = rig.node(Role::Gateway, "gw1", None);
    let p1 = Running::new(rig.stoppable_node(Role::Proxy, "p1", None));
    let (_p2, _) = rig.node(Role::Proxy, "p2", None);
    let op = rig.operator().await;
    wait_status(&op, "nodes up", |s| {
        s.proxies.iter().filter(|p| p.health == "up").count() == 2
            && s.gateways.iter().any(|g| g.health == "up")
    })
    .await;
    op.request(
        Request::Divert {
            target: "web".into(),
        },
        T,
    )
    .await
    .unwrap();
    wait_status(&op, "diverted", |s| {
        phase(s) == "diverted" && web(s).proxies == vec!["p1", "p2"]
    })
    .await;

    p1.kill();
    let s = wait_status(&op, "p1 down and out", |s| {
        phase(s) == "diverted" && web(s).proxies == vec!["p2"]
    })
    .await;
    assert_eq!(
        s.proxies.iter().find(|p| p.name == "p1").unwrap().health,
        "down"
    );
    assert_eq!(
        rig.dns.log.lock().unwrap().last().unwrap(),
        "publish www.example.net. 198.51.100.2"
    );

    let p1 = Running::new(rig.stoppable_node(Role::Proxy, "p1", None));
    wait_status(&op, "p1 back in the set", |s| {
        phase(s) == "diverted" && web(s).proxies == vec!["p2", "p1"]
    })
    .await;
    assert_eq!(
        p1.node.orders.lock().unwrap().clone(),
        vec!["add_peer(gw1),add_route", "notify"]
    );
    assert_eq!(
        rig.dns.log.lock().unwrap().last().unwrap(),
        "publish www.example.net. 198.51.100.1,198.51.100.2"
    );
    let _ = rig.stop.send(true);
}

/// One host opens far more connections than the control port lets one address hold,
/// and holds them without a handshake: the port closes the extra ones at once (counted
/// by reason), drops the held ones after the short handshake deadline, and keeps
/// serving everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_fill_the_control_port() {
    use tokio::io::AsyncReadExt;
    let mut rig = Rig::start(2).await;
    let flood: usize = 200;
    let mut held = Vec::new();
    for _ in 0..flood {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        held.push(s.connect(rig.addr).await.unwrap());
    }
    // Everyone else still gets in: an operator and a node register and are served.
    let op = rig.operator().await;
    let (_p1, _) = rig.node(Role::Proxy, "p1", None);
    wait_status(&op, "p1 up", |s| {
        s.proxies.iter().any(|p| p.name == "p1" && p.health == "up")
    })
    .await;
    let per_source = channel::DEFAULT_LIMITS.per_source;
    let m = rig.metrics.render();
    let refused = format!(
        "scold_refusals_total{{reason=\"per_source\"}} {}",
        flood - per_source
    );
    assert!(m.contains(&refused), "want {refused} in\n{m}");
    // The connections over the limit were closed at once; the ones within it are
    // closed when their handshake deadline passes.
    let mut closed_at_once = 0;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, flood - per_source);
    tokio::time::sleep(channel::ACCEPT_HANDSHAKE_TIMEOUT + Duration::from_millis(500)).await;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a held connection outlived the handshake deadline: {r:?}"
        );
    }
    let m = rig.metrics.render();
    assert!(
        m.contains(&format!(
            "scold_refusals_total{{reason=\"handshake_timeout\"}} {per_source}"
        )),
        "{m}"
    );
    // And the host gets a place again once its connections are gone.
    drop(held);
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut c = s.connect(rig.addr).await.unwrap();
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.read(&mut b))
            .await
            .is_err(),
        "a fresh connection from the host was refused"
    );
    let _ = rig.stop.send(true);
}

/// A proxy revoked while it is connected and serves a diverted target: within seconds
/// its connection is closed, it is reset out of the ALT set (another proxy takes its
/// place), it shows as revoked, and its link cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_revoked_while_connected_is_cut_off_and_reset_out() {
    let mut rig = Rig::start(2).await;
    let (_target, _) = rig.node(Role::Target, "web", None);
    let (_gw, _) = rig.node(Role::Gateway, "gw1", None);
    let mut links = Vec::new();
    for p in ["p1", "p2", "p3"] {
        links.push((p, rig.node(Role::Proxy, p, None).0));
    }
    let op = rig.operator().await;
    let s = divert_once_up(&op, 3).await;
    let victim = web(&s).proxies[0].clone();
    let address = match victim.as_str() {
        "p1" => "198.51.100.1",
        "p2" => "198.51.100.2",
        _ => "198.51.100.3",
    };
    rig.pki
        .ca
        .revoke(&RevokeTarget::Identity(
            Identity::new(Role::Proxy, &victim).unwrap(),
        ))
        .unwrap();
    // The CRL is re-read at most once a second, then every live peer is checked again.
    let s = wait_status(&op, "the revoked proxy reset out", |s| {
        phase(s) == "diverted"
            && web(s).proxies.len() == 2
            && !web(s).proxies.contains(&victim)
            && s.proxies
                .iter()
                .any(|p| p.name == victim && p.health == "revoked")
    })
    .await;
    let published = rig.dns.log.lock().unwrap().last().unwrap().clone();
    assert!(
        published.starts_with("publish") && !published.contains(address),
        "{published}"
    );
    let link = &links.iter().find(|(p, _)| *p == victim).unwrap().1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!link.connected(), "the revoked proxy's link is still up");
    assert!(
        rig.metrics
            .render()
            .contains("scold_refusals_total{reason=\"revoked\"}"),
        "the cut-off is not counted"
    );
    // Chosen for nothing again: the set stays without it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = status(&op).await;
    assert!(!web(&again).proxies.contains(&victim), "{:#?}", web(&again));
    assert_eq!(web(&again).proxies, web(&s).proxies);
    let _ = rig.stop.send(true);
}

/// A proxy certificate holder cannot steer ALT: a proxy the consortium did not configure
/// is listed only under an address its certificate names, and its own word on capacity
/// and organisation is not taken; a configured proxy is listed under its configured
/// address whatever it declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_listed_only_under_addresses_the_consortium_bound_to_it() {
    let mut rig = Rig::start(2).await;
    let op = rig.operator().await;
    let named: IpAddr = "203.0.113.9".parse().unwrap();
    let declare = |address: &str| NodeInfo {
        address: Some(address.parse().unwrap()),
        capacity_mbps: Some(999_999),
        organisation: Some("everyone".into()),
        tunnel: tunnel(Role::Proxy, "p1"),
        ..Default::default()
    };
    // Another address than its certificate names: refused, nothing recorded.
    let tls = rig.pki.issue_naming(Role::Proxy, "p9", &[named]);
    let ch = channel::connect(
        rig.addr,
        &tls,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await
    .unwrap();
    let err = ch
        .request(Request::Register(declare("192.0.2.66")), T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Refused { ref refusal, .. } if refusal.reason == RefusalReason::Subject && refusal.message.contains("--ip 192.0.2.66")),
        "{err}"
    );
    assert!(!status(&op).await.proxies.iter().any(|p| p.name == "p9"));
    // The address it names: listed under it, at the default capacity, in no organisation.
    ch.request(Request::Register(declare("203.0.113.9")), T)
        .await
        .unwrap();
    let s = status(&op).await;
    let p9 = s.proxies.iter().find(|p| p.name == "p9").unwrap();
    assert_eq!(p9.address, Some(named));
    assert_ne!(p9.capacity_mbps, Some(999_999));
    assert_eq!(p9.organisation, None);
    // A configured proxy declaring another address keeps the configured one.
    let tls = rig.pki.issue(Role::Proxy, "p2");
    let ch2 = channel::connect(
        rig.addr,
        &tls,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await
    .unwrap();
    ch2.request(Request::Register(declare("192.0.2.77")), T)
        .await
        .unwrap();
    let s = status(&op).await;
    let p2 = s.proxies.iter().find(|p| p.name == "p2").unwrap();
    assert_eq!(p2.address, Some("198.51.100.2".parse().unwrap()));
    assert_eq!(p2.capacity_mbps, Some(2000));
    assert_eq!(p2.organisation.as_deref(), Some("b"));
    let _ = rig.stop.send(true);
}

/// A member floods the control plane with its valid certificate: 2,000 pipelined
/// `register` requests on one connection. Those past its burst or its open-request
/// limit are refused as busy (or, when it does not read its answers fast enough, left
/// unanswered), those that change nothing write nothing and log no audit event, and the
/// operator is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_flood_the_control_plane() {
    let mut rig = Rig::start(2).await;
    let op = rig.operator().await;
    let before = events(&op).await.len();
    let tls = rig.pki.issue(Role::Proxy, "p1");
    let ch = channel::connect(
        rig.addr,
        &tls,
        &[Role::Coordinator],
        Arc::new(NoRequests),
        Metrics::new(),
    )
    .await
    .unwrap();
    let info = NodeInfo {
        tunnel: tunnel(Role::Proxy, "p1"),
        ..Default::default()
    };
    let flood = 2000;
    let started = std::time::Instant::now();
    let answers = futures_join((0..flood).map(|_| {
        let (ch, info) = (ch.clone(), info.clone());
        async move { ch.request(Request::Register(info), T).await }
    }))
    .await;
    let (mut ok, mut busy, mut unanswered) = (0, 0, 0);
    for a in &answers {
        match a {
            Ok(_) => ok += 1,
            Err(ChannelError::Refused { refusal, .. }) if refusal.reason == RefusalReason::Busy => {
                busy += 1
            }
            Err(ChannelError::Timeout { .. }) => unanswered += 1,
            Err(e) => panic!("unexpected answer: {e}"),
        }
    }
    let burst = channel::DEFAULT_REQUEST_RATE.burst as usize;
    assert!(
        ok >= 1 && ok <= burst + 100,
        "{ok} answered, {busy} busy, {unanswered} unanswered"
    );
    assert!(busy > 0, "nothing was refused as busy");
    // The operator is served at once, and the audit log holds one registration.
    let t = std::time::Instant::now();
    let after = events(&op).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    let registered: Vec<_> = after
        .iter()
        .filter(|e| e.subject == "proxy/p1" && e.event == "registered")
        .collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert!(
        after.len() <= before + 3,
        "{} events after {before}",
        after.len()
    );
    assert!(
        rig.metrics
            .render()
            .contains("scold_refusals_total{reason=\"busy\"}"),
        "busy refusals are not counted"
    );
    eprintln!("{flood} registers answered in {:?}", started.elapsed());
    let _ = rig.stop.send(true);
}

/// Runs every future to its end, all at once.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Scheme 4.3: the proxy a reset brings in after the divert relays to a target that
/// routes it back: the reset asks the target to route the new set's relay sources
/// through the gateway (in 4.1 and 4.2 a reset asks the target nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_replacement_proxy_is_routed_back_by_the_target() {
    let mut rig = Rig::start_with(Knobs {
        scheme: "4.3",
        ..Knobs::proxies(2)
    })
    .await;
    let (_target, target_node) = rig.node(Role::Target, "web", None);
    let (_gw, _) = rig.node(Role::Gateway, "gw1", None);
    let (p1, _) = rig.node(Role::Proxy, "p1", None);
    let _p2 = rig.node(Role::Proxy, "p2", None);
    let _p3 = rig.node(Role::Proxy, "p3", None);
    let op = rig.operator().await;
    wait_status(&op, "nodes up", |s| {
        s.proxies.iter().filter(|p| p.health == "up").count() == 3
    })
    .await;
    let s = divert_once_up(&op, 3).await;
    assert_eq!(web(&s).proxies, vec!["p1", "p2"]);
    assert_eq!(
        target_node.orders.lock().unwrap().clone(),
        vec!["add_route,add_route"]
    );
    p1.request(
        Request::ProxyAttacked {
            proxy: "p1".into(),
            summary: serde_json::Value::Null,
        },
        T,
    )
    .await
    .unwrap();
    wait_status(&op, "p3 replaces p1", |s| {
        phase(s) == "diverted" && web(s).proxies.contains(&"p3".to_string())
    })
    .await;
    // The reset's target step: p2 and the newcomer p3 routed back.
    assert_eq!(
        target_node.orders.lock().unwrap().clone(),
        vec!["add_route,add_route", "add_route,add_route"]
    );
    let _ = rig.stop.send(true);
}

/// A webhook receiver on loopback: records each request's headers and body; answers
/// the first `fail_first` requests with HTTP 500, the rest with 204, or never answers
/// when `hang`.
/// Requests a receiver got: headers (names in lower case) and body.
type Deliveries = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

struct Receiver {
    url: String,
    got: Deliveries,
}

impl Receiver {
    fn start(fail_first: usize, hang: bool) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/scold", l.local_addr().unwrap());
        let got: Deliveries = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                if hang {
                    // Take the connection and say nothing, as a stuck receiver.
                    held.push(c);
                    continue;
                }
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_string();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(": ").unwrap();
                        headers.push((k.to_ascii_lowercase(), v.to_string()));
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let n = {
                        let mut g = g.lock().unwrap();
                        g.push((headers, body));
                        g.len()
                    };
                    let answer = if n <= fail_first {
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbusy"
                    } else {
                        "HTTP/1.1 204 No Content\r\n\r\n"
                    };
                    c.write_all(answer.as_bytes()).unwrap();
                }
            }
        });
        Receiver { url, got }
    }
}

/// Alert hooks: a receiver gets the alarm, the divert and the restore as JSON signed
/// with its secret (a refused delivery is tried again), while a receiver that takes the
/// connection and never answers delays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_hooks_get_signed_events_and_a_stuck_one_delays_nothing() {
    let ok = Receiver::start(1, false);
    let stuck = Receiver::start(0, true);
    let secret = "hook-secret-0123456789";
    let mut knobs = Knobs::proxies(2);
    knobs.extra = format!(
        "[[webhook]]\nurl = \"{}\"\nsecret = \"{secret}\"\n[[webhook]]\nurl = \"{}\"\nsecret = \"{secret}\"\nevents = [\"divert\"]\ntimeout_ms = 30000\n",
        ok.url, stuck.url
    );
    let mut rig = Rig::start_with(knobs).await;
    let _t = rig.node(Role::Target, "web", None);
    let _gw = rig.node(Role::Gateway, "gw1", None);
    let _p1 = rig.node(Role::Proxy, "p1", None);
    let _p2 = rig.node(Role::Proxy, "p2", None);
    let op = rig.operator().await;
    divert_once_up(&op, 2).await;
    op.request(
        Request::Restore {
            target: "web".into(),
        },
        T,
    )
    .await
    .unwrap();
    wait_status(&op, "restored", |s| phase(s) == "normal").await;
    // The restore came through while the stuck receiver still held the divert.
    assert!(stuck.got.lock().unwrap().is_empty());

    let mut kinds = Vec::new();
    for _ in 0..100 {
        kinds = ok
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| {
                h.iter()
                    .find(|(k, _)| k == "x-scold-event")
                    .map(|(_, v)| v.clone())
                    .unwrap()
            })
            .collect::<Vec<_>>();
        if kinds.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The alarm, refused once and delivered again, then the divert and the restore.
    assert_eq!(kinds, ["alarm", "alarm", "divert", "restore"], "{kinds:?}");
    for (headers, body) in ok.got.lock().unwrap().iter() {
        let h = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            h("x-scold-signature"),
            scold_control::webhook::signature(secret, body)
        );
        assert_ne!(
            h("x-scold-signature"),
            scold_control::webhook::signature("another-secret-0123", body)
        );
        let p: scold_control::webhook::Payload = serde_json::from_slice(body).unwrap();
        assert_eq!(p.event.subject, "web");
        assert_eq!(h("x-scold-delivery"), p.event.seq.to_string());
        assert_eq!(h("x-scold-event"), p.kind.as_str());
    }
    let m = rig.metrics.render();
    assert!(
        m.contains("scold_webhook_deliveries_total{outcome=\"delivered\"} 3"),
        "{m}"
    );
    let _ = rig.stop.send(true);
}
