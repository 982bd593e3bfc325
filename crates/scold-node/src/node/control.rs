//! The link from a data-path daemon to the coordinator: the `[control]` config table,
//! registration through [`scold_link::CoordinatorLink`], and the handler that turns
//! the coordinator's orders into the daemon's data-plane commands.
//!
//! Orders travel the same command channel as the static entries of the config file,
//! so a daemon applies them with the same code. Each order carries its target's epoch;
//! an [`EpochGuard`] refuses one older than an epoch already applied, and orders are
//! applied one at a time (whole order before the next) so a stale order that waited
//! behind a newer one is refused instead of undoing it.

use crate::node::CommandRequest;
use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use scold_link::channel::{Channel, Handler};
use scold_link::CoordinatorLink;
use scold_link::TlsConfig;
use scold_metrics::Metrics;
use scold_proto::control::{
    EpochGuard, NodeInfo, Refusal, RefusalReason, Reply, Request, Response, TunnelInfo,
};
use scold_proto::dataplane::{self, Command};
use scold_proto::identity::Role;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// `[control]`: how the daemon reaches the coordinator and what it announces. Without
/// `coordinator` the daemon runs standalone (only its config's static entries).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// The coordinator's control address (mutual TLS).
    #[serde(default)]
    pub coordinator: Option<SocketAddr>,
    /// The other replicas' addresses, when the coordinator runs as replicas sharing
    /// etcd: the link goes to whichever leads (standby replicas do not listen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<SocketAddr>,
    /// This node's certificate, key, the consortium CA and its CRL; needed with
    /// `coordinator`. Relative paths are relative to the config file's folder.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve Prometheus metrics at `http://ADDR:PORT/metrics` (also standalone).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// The address clients or proxies reach this node at (a proxy's goes into ALT
    /// records).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// The tunnel end point others send to; default: `address` and the port of
    /// `tunnel.listen`.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// Gateways: their address on the target's network (the target's return path
    /// goes through it).
    #[serde(default)]
    pub inside: Option<IpAddr>,
    /// Proxies: the capacity offered, in Mbit/s.
    #[serde(default)]
    pub capacity_mbps: Option<u32>,
    /// The consortium organisation that runs this node.
    #[serde(default)]
    pub organisation: Option<String>,
}

impl ControlSection {
    /// Whether every key is absent, as without a `[control]` table: a config writer
    /// leaves the table out then.
    pub fn is_empty(&self) -> bool {
        matches!(
            self,
            ControlSection {
                coordinator: None,
                replicas: _,
                tls: None,
                metrics: None,
                address: None,
                endpoint: None,
                inside: None,
                capacity_mbps: None,
                organisation: None,
            }
        ) && self.replicas.is_empty()
    }

    /// Checks what can be checked before start-up.
    pub fn check(&self, file: &Path) -> anyhow::Result<()> {
        if self.coordinator.is_none() && !self.replicas.is_empty() {
            anyhow::bail!(
                "config file {}: [control] replicas is set without coordinator; put one replica's address in coordinator and the others in replicas",
                file.display()
            );
        }
        if self.coordinator.is_some() && self.tls.is_none() {
            anyhow::bail!(
                "config file {}: [control] coordinator is set but [control.tls] is missing; add ca, cert and key (issue them with `scold ca issue`)",
                file.display()
            );
        }
        Ok(())
    }

    /// What this node tells the coordinator about itself when it registers.
    pub fn node_info(&self, tunnel: Option<TunnelInfo>) -> NodeInfo {
        NodeInfo {
            address: self.address,
            capacity_mbps: self.capacity_mbps,
            organisation: self.organisation.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            tunnel,
        }
    }

    /// The tunnel end point announced to the coordinator.
    pub fn tunnel_info(
        &self,
        tunnel: &crate::node::TunnelSection,
        file: &Path,
    ) -> anyhow::Result<Option<TunnelInfo>> {
        let endpoint = match (self.endpoint, self.address, tunnel.listen) {
            (Some(e), _, _) => e,
            (None, Some(a), Some(l)) => SocketAddr::new(a, l.port()),
            (None, Some(a), None) if tunnel.ipip => SocketAddr::new(a, 0),
            (None, _, Some(l)) if !l.ip().is_unspecified() => l,
            _ => return Ok(None),
        };
        let public_key = match tunnel.private_key(file)? {
            Some(k) if tunnel.encap == dataplane::Encap::Wireguard => Some(dataplane::PublicKey(
                scold_tunnel::keys::public_of(&k).map_err(|e| {
                    anyhow::anyhow!("config file {}: tunnel.private_key: {e}", file.display())
                })?,
            )),
            _ => None,
        };
        Ok(Some(TunnelInfo {
            endpoint,
            encap: tunnel.encap,
            public_key,
            inside: self.inside,
            engines: u8::try_from(tunnel.engines).ok().filter(|&n| n > 1),
        }))
    }
}

/// Counters every data-path daemon adds to the control-plane metrics.
#[derive(Clone)]
pub struct NodeMetrics {
    pub metrics: Metrics,
    /// Data-plane commands by kind and result (`done`, `unchanged`, `refused`).
    pub commands: Family<Vec<(String, String)>, Counter>,
    /// Orders refused as stale.
    pub stale: Counter,
    /// NOTIFY messages by result (`ok`, `failed`).
    pub notify: Family<Vec<(String, String)>, Counter>,
    /// Whether the link to the coordinator is up.
    pub connected: Gauge,
}

impl NodeMetrics {
    pub fn new() -> Self {
        let m = NodeMetrics {
            metrics: Metrics::new(),
            commands: Family::default(),
            stale: Counter::default(),
            notify: Family::default(),
            connected: Gauge::default(),
        };
        m.metrics.with_registry(|r| {
            r.register(
                "node_commands",
                "Data-plane commands applied, by kind and result",
                m.commands.clone(),
            );
            r.register(
                "node_stale_orders",
                "Orders refused because their epoch was older than one applied",
                m.stale.clone(),
            );
            r.register(
                "node_notify",
                "Signed NOTIFY messages to client-site resolvers, by result",
                m.notify.clone(),
            );
            r.register(
                "node_coordinator_connected",
                "1 while the link to the coordinator is up",
                m.connected.clone(),
            );
        });
        m
    }

    pub fn command(&self, kind: &str, reply: &dataplane::Reply) {
        let result = match reply {
            dataplane::Reply::Done { changed: true } | dataplane::Reply::Stats(_) => "done",
            dataplane::Reply::Done { changed: false } => "unchanged",
            dataplane::Reply::Refused { .. } => "refused",
        };
        self.commands
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends signed NOTIFY messages to the client sites' resolvers (paper Sec. 3 step 4).
#[derive(Clone, Default)]
pub struct Notifier {
    pub resolvers: Vec<(SocketAddr, scold_dns::TsigKey)>,
}

/// `[[notify]]` at a proxy: one client-site resolver and the key it accepts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyEntry {
    pub resolver: SocketAddr,
    /// TSIG key as `hmac-sha256:KEYNAME:BASE64SECRET`.
    pub key: String,
}

impl Notifier {
    pub fn from_config(entries: &[NotifyEntry], file: &Path) -> anyhow::Result<Notifier> {
        let mut resolvers = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let key: scold_dns::TsigKey = e.key.parse().map_err(|err| {
                anyhow::anyhow!(
                    "config file {}: notify[{i}].key: {err}; write it as `hmac-sha256:KEYNAME:BASE64SECRET`",
                    file.display()
                )
            })?;
            resolvers.push((e.resolver, key));
        }
        Ok(Notifier { resolvers })
    }

    /// Notifies every resolver at once. Fails only when every resolver failed; partial
    /// failures are logged and counted.
    pub async fn notify(&self, fqdn: &str, metrics: &NodeMetrics) -> Result<usize, String> {
        if self.resolvers.is_empty() {
            tracing::info!(%fqdn, "no resolvers to notify ([[notify]] is empty)");
            return Ok(0);
        }
        let sends = self.resolvers.iter().map(|(addr, key)| async move {
            (*addr, scold_dns::send_notify(*addr, key, fqdn).await)
        });
        let results = futures::future::join_all(sends).await;
        let mut ok = 0;
        let mut errors = Vec::new();
        for (addr, r) in results {
            let label = if r.is_ok() { "ok" } else { "failed" };
            metrics
                .notify
                .get_or_create(&vec![("result".into(), label.into())])
                .inc();
            match r {
                Ok(()) => {
                    ok += 1;
                    tracing::info!(resolver = %addr, %fqdn, "resolver notified");
                }
                Err(e) => {
                    tracing::warn!(resolver = %addr, %fqdn, error = %e, "NOTIFY failed");
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        if ok == 0 {
            return Err(format!(
                "NOTIFY for {fqdn} failed at every resolver: {}",
                errors.join("; ")
            ));
        }
        Ok(ok)
    }
}

/// The daemon's side of the control channel.
pub struct NodeHandler {
    role: Role,
    commands: mpsc::Sender<CommandRequest>,
    /// Held for a whole order, so orders apply one at a time.
    guard: tokio::sync::Mutex<EpochGuard>,
    notifier: Option<Notifier>,
    metrics: NodeMetrics,
    /// The daemon's reload task, for the coordinator's reload orders.
    reloads: Option<scold_daemon::reload::ReloadSender>,
}

impl NodeHandler {
    pub fn new(
        role: Role,
        commands: mpsc::Sender<CommandRequest>,
        notifier: Option<Notifier>,
        metrics: NodeMetrics,
    ) -> Self {
        NodeHandler {
            role,
            commands,
            guard: tokio::sync::Mutex::new(EpochGuard::default()),
            notifier,
            metrics,
            reloads: None,
        }
    }

    /// Takes reload orders to `reloads`.
    pub fn with_reloads(mut self, reloads: Option<scold_daemon::reload::ReloadSender>) -> Self {
        self.reloads = reloads;
        self
    }

    /// Applies one order's commands in sequence through the command channel; `leader`
    /// is the sending coordinator's leadership epoch (0 for one alone).
    pub async fn order(
        &self,
        target: &str,
        epoch: u64,
        leader: u64,
        commands: Vec<Command>,
    ) -> Result<Vec<dataplane::Reply>, Refusal> {
        let mut guard = self.guard.lock().await;
        if let Err(r) = guard
            .admit_leader(leader)
            .and_then(|()| guard.admit(target, epoch))
        {
            self.metrics.stale.inc();
            tracing::warn!(%target, epoch, "refusing a stale order: {}", r.message);
            return Err(r);
        }
        let mut replies = Vec::with_capacity(commands.len());
        for cmd in commands {
            let kind = cmd.kind();
            let (tx, rx) = oneshot::channel();
            if self.commands.send((cmd, tx)).await.is_err() {
                return Err(Refusal::new(
                    RefusalReason::Unavailable,
                    "the data plane has stopped",
                ));
            }
            let reply = rx.await.map_err(|_| {
                Refusal::new(
                    RefusalReason::Unavailable,
                    "the data plane stopped before answering",
                )
            })?;
            self.metrics.command(kind, &reply);
            replies.push(reply);
        }
        Ok(replies)
    }
}

impl Handler for NodeHandler {
    async fn handle(&self, _from: &Channel, request: Request) -> Response {
        match request {
            Request::Dataplane {
                target,
                epoch,
                commands,
                leader,
            } => {
                tracing::info!(%target, epoch, leader, commands = commands.len(), "order from the coordinator");
                match self.order(&target, epoch, leader, commands).await {
                    Ok(replies) => Response::Ok {
                        reply: Reply::Dataplane { replies },
                    },
                    Err(r) => Response::Refused(r),
                }
            }
            Request::Notify {
                target,
                epoch,
                fqdn,
                leader,
            } => {
                let Some(n) = &self.notifier else {
                    return Response::Refused(Refusal::new(
                        RefusalReason::Role,
                        format!("a {} sends no NOTIFY", self.role),
                    ));
                };
                let admitted = {
                    let mut g = self.guard.lock().await;
                    g.admit_leader(leader)
                        .and_then(|()| g.admit(&target, epoch))
                };
                if let Err(r) = admitted {
                    self.metrics.stale.inc();
                    return Response::Refused(r);
                }
                match n.notify(&fqdn, &self.metrics).await {
                    Ok(_) => Response::Ok { reply: Reply::Done },
                    Err(message) => Response::Failed { message },
                }
            }
            Request::Reload => match &self.reloads {
                Some(r) => match r.request("coordinator").await {
                    Ok(report) => Response::Ok {
                        reply: Reply::Reloaded(report),
                    },
                    Err(message) => Response::Failed { message },
                },
                None => Response::Refused(Refusal::new(
                    RefusalReason::Unavailable,
                    "this node was started without a config file to reload",
                )),
            },
            other => Response::Refused(Refusal::new(
                RefusalReason::Role,
                format!("a {} takes no {} requests", self.role, other.kind()),
            )),
        }
    }
}

/// What a daemon's own tasks need of the control link: the agent to report through,
/// the node's name, the metrics registry.
#[derive(Clone, Default)]
pub struct NodeContext {
    pub agent: Option<CoordinatorLink>,
    pub name: Option<String>,
    pub metrics: NodeMetrics,
}

/// A running link to the coordinator (if configured) and the metrics endpoint.
pub struct ControlLink {
    pub agent: Option<CoordinatorLink>,
    /// This node's name, from its certificate (what it may speak for).
    pub name: Option<String>,
    pub metrics: NodeMetrics,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlLink {
    /// Starts the metrics endpoint and the link to the coordinator as `[control]` says.
    /// `commands` is where orders go: the daemon's command channel.
    pub async fn start(
        role: Role,
        section: &ControlSection,
        file: &Path,
        info: NodeInfo,
        commands: mpsc::Sender<CommandRequest>,
        notifier: Option<Notifier>,
        reloads: Option<scold_daemon::reload::ReloadSender>,
    ) -> anyhow::Result<ControlLink> {
        let metrics = NodeMetrics::new();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(addr) = section.metrics {
            // Bind here so a busy port fails the start instead of a log line later.
            let probe = std::net::TcpListener::bind(addr).with_context(|| {
                format!(
                    "config file {}: [control] metrics = {addr}: cannot listen there; pick a free address",
                    file.display()
                )
            })?;
            drop(probe);
            let m = metrics.metrics.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = m.serve(addr).await {
                    tracing::error!("{e:#}");
                }
            }));
        }
        let (agent, name) = match (section.coordinator, &section.tls) {
            (Some(coordinator), Some(tls)) => {
                scold_pki::install_crypto_provider();
                let tls = Arc::new(tls.load(file)?);
                let id = tls.identity().clone();
                anyhow::ensure!(
                    id.role == role,
                    "config file {}: [control.tls] cert is for {id}, not a {role}; issue one with `scold ca issue --role {role} --name NAME`",
                    file.display()
                );
                let handler = Arc::new(
                    NodeHandler::new(role, commands, notifier, metrics.clone())
                        .with_reloads(reloads),
                );
                let mut all = vec![coordinator];
                all.extend(section.replicas.iter().copied());
                let agent = CoordinatorLink::start_any(
                    all,
                    info,
                    tls,
                    handler,
                    metrics.metrics.clone(),
                    stop_rx,
                );
                let (a, g) = (agent.clone(), metrics.connected.clone());
                let mut stop_watch = stop.subscribe();
                tasks.push(tokio::spawn(async move {
                    loop {
                        g.set(i64::from(a.connected()));
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = scold_daemon::until_set(&mut stop_watch) => return,
                        }
                    }
                }));
                tracing::info!(%coordinator, identity = %id, "linking to the coordinator");
                (Some(agent), Some(id.name))
            }
            _ => {
                tracing::info!("no [control] coordinator: running standalone");
                (None, None)
            }
        };
        Ok(ControlLink {
            agent,
            name,
            metrics,
            stop,
            tasks,
        })
    }

    pub fn context(&self) -> NodeContext {
        NodeContext {
            agent: self.agent.clone(),
            name: self.name.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Stops the agent and the metrics endpoint.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Sends `make()` to the coordinator until it is acknowledged, refused, or `cancel`
/// says the report is no longer wanted (a newer one replaced it). Backs off up to 5 s.
pub async fn report_until_acknowledged(
    agent: &CoordinatorLink,
    what: &str,
    make: impl Fn() -> Request,
    mut cancel: impl FnMut() -> bool,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        if cancel() {
            return false;
        }
        match agent.request(make(), Duration::from_secs(10)).await {
            Ok(reply) => {
                tracing::info!(report = what, ?reply, "coordinator acknowledged");
                return true;
            }
            // A refusal is the coordinator's answer (unknown target, wrong name): sending
            // the same report again cannot change it.
            Err(e @ scold_link::channel::ChannelError::Refused { .. }) => {
                tracing::error!(report = what, error = %e, "the coordinator refused the report; check this node's certificate name and the coordinator's config");
                return false;
            }
            Err(e) => {
                tracing::warn!(report = what, error = %e, retry_in = ?backoff, "report not acknowledged; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> (NodeHandler, mpsc::Receiver<CommandRequest>) {
        let (tx, rx) = mpsc::channel(4);
        (
            NodeHandler::new(Role::Gateway, tx, None, NodeMetrics::new()),
            rx,
        )
    }

    /// Answers every command with Done{changed: true}, recording kinds.
    fn answer(mut rx: mpsc::Receiver<CommandRequest>) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((cmd, reply)) = rx.recv().await {
                seen.push(cmd.kind().to_string());
                let _ = reply.send(dataplane::Reply::Done { changed: true });
            }
            seen
        })
    }

    #[tokio::test]
    async fn orders_apply_in_sequence_and_stale_epochs_are_refused() {
        let (h, rx) = handler();
        let seen = answer(rx);
        let r = h
            .order(
                "web",
                3,
                0,
                vec![Command::RemovePeer { name: "p1".into() }, Command::GetStats],
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 2);
        // The same epoch again: a retry, applied.
        h.order("web", 3, 0, vec![Command::GetStats]).await.unwrap();
        let e = h
            .order("web", 2, 0, vec![Command::GetStats])
            .await
            .unwrap_err();
        assert_eq!(e.reason, RefusalReason::Stale);
        // Epochs are per target.
        h.order("mail", 1, 0, vec![Command::GetStats])
            .await
            .unwrap();
        assert_eq!(h.metrics.stale.get(), 1);
        drop(h);
        assert_eq!(
            seen.await.unwrap(),
            vec!["remove_peer", "get_stats", "get_stats", "get_stats"]
        );
    }

    #[tokio::test]
    async fn orders_of_a_deposed_coordinator_replica_are_refused() {
        let (h, rx) = handler();
        let seen = answer(rx);
        // Replica of leadership 40 gives an order; then a newer leader (57) takes over.
        h.order("web", 1, 40, vec![Command::GetStats])
            .await
            .unwrap();
        h.order("web", 1, 57, vec![Command::GetStats])
            .await
            .unwrap();
        // The deposed one, not yet aware, sends again: refused, nothing applied, even
        // with a newer target epoch.
        let e = h
            .order(
                "web",
                2,
                40,
                vec![Command::RemovePeer { name: "p1".into() }],
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason, RefusalReason::Stale);
        assert_eq!(h.metrics.stale.get(), 1);
        drop(h);
        assert_eq!(seen.await.unwrap(), vec!["get_stats", "get_stats"]);
    }

    #[tokio::test]
    async fn a_stopped_data_plane_is_unavailable() {
        let (h, rx) = handler();
        drop(rx);
        let e = h
            .order("web", 1, 0, vec![Command::GetStats])
            .await
            .unwrap_err();
        assert_eq!(e.reason, RefusalReason::Unavailable);
    }

    #[tokio::test]
    async fn notify_fails_only_when_every_resolver_fails() {
        let key: scold_dns::TsigKey = "hmac-sha256:p1:c2NvbGQtZTJlLXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODk="
            .parse()
            .unwrap();
        let m = NodeMetrics::new();
        assert_eq!(
            Notifier::default().notify("www.example.net.", &m).await,
            Ok(0)
        );
        // Nothing listens on these ports (bound then closed): every NOTIFY fails.
        let dead = |_: u8| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let n = Notifier {
            resolvers: vec![(dead(0), key.clone()), (dead(1), key)],
        };
        let e = n.notify("www.example.net.", &m).await.unwrap_err();
        assert!(e.contains("every resolver"), "{e}");
    }

    #[test]
    fn control_section_parses_and_checks() {
        let text = r#"
coordinator = "127.0.0.1:7800"
metrics = "127.0.0.1:9801"
address = "198.51.100.1"
capacity_mbps = 500
organisation = "org-a"
[tls]
ca = "ca.crt"
cert = "proxy-p1.crt"
key = "proxy-p1.key"
"#;
        let c: ControlSection = toml::from_str(text).unwrap();
        c.check(Path::new("x.toml")).unwrap();
        let t = crate::node::TunnelSection {
            listen: Some("0.0.0.0:51820".parse().unwrap()),
            encap: dataplane::Encap::Udp,
            ..Default::default()
        };
        let info = c.tunnel_info(&t, Path::new("x.toml")).unwrap().unwrap();
        assert_eq!(info.endpoint.to_string(), "198.51.100.1:51820");
        assert!(info.public_key.is_none());
        let bad: ControlSection = toml::from_str("coordinator = \"127.0.0.1:7800\"").unwrap();
        let e = bad.check(Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("[control.tls]"), "{e}");
        assert!(toml::from_str::<ControlSection>("coordinater = \"1.2.3.4:1\"").is_err());
        // Standalone: nothing to announce without an address or endpoint.
        let none: ControlSection = toml::from_str("").unwrap();
        assert!(none.tunnel_info(&t, Path::new("x")).unwrap().is_none());
    }
}
