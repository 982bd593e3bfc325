//! `scold coordinator`: the registry of targets, proxies and gateways, and the driver of
//! every target's state machine.
//!
//! Nodes connect over the mutual-TLS control channel, register and send heartbeats.
//! An alarm (from a target's detector or an operator) starts a divert: the state
//! machine of [`scold_proto::state`] lays out the steps, this module runs them (orders to
//! gateways, proxies and the target over their channels; DNS updates through the
//! [`DnsBackend`]), retries failed ones with backoff, and writes every state change and
//! audit event to the store before acknowledging anything.

use crate::config::*;
use crate::orchestrate;
use crate::store::{Batch, EventRecord, Health, NodeRecord, Pool, Store};
use scold_link::channel::{self, Channel};
use scold_metrics::Metrics;
use scold_proto::control::{
    EventView, NodeInfo, NodeLoad, NodeView, ProxyView, Refusal, RefusalReason, Reply, Request,
    StatusReport, TargetView,
};
use scold_proto::identity::Role;
use scold_proto::state::{choose_proxies, Candidate, Event, Outcome, Phase, Step, TargetState};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info, warn};

mod daemon;
mod dns;
mod file_targets;
mod handler;
pub mod lead;
mod ops;
mod phase_metrics;
mod resync;
mod status_page;

pub use daemon::{load_config, run, serve, serve_on, serve_with, Args};
pub use dns::{Accepted, BoxFut, DnsBackend, DnsError, TsigDns};
pub use handler::CoordinatorHandler;
use resync::*;

/// Scheme 4.2: how often a push that failed at the divert is tried again in the
/// background, and the waits between tries (doubling from the first to the largest):
/// about four minutes in all, after which the client gets its route when it registers.
const PUSH_RETRIES: u32 = 10;
const PUSH_RETRY_FIRST: Duration = Duration::from_secs(2);
const PUSH_RETRY_MAX: Duration = Duration::from_secs(30);

/// The address a proxy may be listed under in ALT: the one the consortium configured for
/// it, or one its certificate names (`scold ca issue --ip`). What the proxy says of itself
/// must agree; a proxy with neither cannot be listed.
fn proxy_address(
    configured: Option<IpAddr>,
    from: &Channel,
    declared: Option<IpAddr>,
) -> Result<Option<IpAddr>, Refusal> {
    let name = &from.peer().name;
    if let Some(a) = configured {
        if declared.is_some_and(|d| d != a) {
            warn!(proxy = %name, declared = ?declared, configured = %a, "a proxy declared another address than the consortium configured for it; using the configured one");
        }
        return Ok(Some(a));
    }
    let named = from
        .peer_chain()
        .first()
        .map(|ee| scold_pki::ip_addresses_from_der(ee).unwrap_or_default())
        .unwrap_or_default();
    match declared {
        Some(d) if named.contains(&d) => Ok(Some(d)),
        Some(d) => Err(Refusal::new(
            RefusalReason::Subject,
            format!(
                "proxy {name} declared address {d}, which its certificate does not name ({named:?}); add it to the coordinator's [[proxy]] table or issue the certificate with `scold ca issue --ip {d}`"
            ),
        )),
        None => Ok(named.first().copied()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct World {
    targets: BTreeMap<String, TargetState>,
    nodes: BTreeMap<String, NodeRecord>,
    live: HashMap<String, Channel>,
    /// What each node's last heartbeat said it carries (memory only).
    loads: HashMap<String, NodeLoad>,
}

/// What a registration tells beyond the reply.
struct Registration {
    reply: Reply,
    /// The node announced a tunnel end point other than the one known before.
    tunnel_changed: bool,
}

pub struct Coordinator {
    cfg: Config,
    /// Targets driven: the config file's and those added with `scold ctl target add`.
    targets: std::sync::RwLock<HashMap<String, Arc<TargetConfig>>>,
    store: Store,
    metrics: Metrics,
    phases: phase_metrics::PhaseMetrics,
    dns: Box<dyn DnsBackend>,
    world: Mutex<World>,
    /// The revocation list in force is past its next-update date (shown in status).
    crl_expired: std::sync::atomic::AtomicBool,
    /// This replica's leadership epoch (0: a coordinator alone), carried by every order.
    leader_epoch: std::sync::atomic::AtomicU64,
    /// Alert hooks, offered every committed audit event.
    webhooks: crate::webhook::Webhooks,
    /// The config file's `[[proxy]]` entries as last read (start or reload).
    file_proxies: Mutex<Vec<ProxyConfig>>,
    /// The names of the config file's `[[target]]` entries as last applied (start or
    /// reload); every other driven target came from `scold ctl target add`.
    file_targets: Mutex<Vec<String>>,
}

/// The record of a node that has never been seen (a config-file proxy, or one that
/// connects for the first time): down, a pool member.
fn unseen_node(role: Role, name: &str) -> NodeRecord {
    NodeRecord {
        role,
        name: name.to_string(),
        info: NodeInfo::default(),
        health: Health::Down,
        last_seen_ms: None,
        attacked_until_ms: None,
        pool: Pool::Member,
        runtime: false,
    }
}

/// What a config file's `[[proxy]]` entry says of it into its record.
fn take_proxy_entry(rec: &mut NodeRecord, p: &ProxyConfig) {
    rec.info.address = Some(p.address);
    rec.info.capacity_mbps = Some(p.capacity_mbps);
    rec.info.organisation = p.organisation.clone();
}

/// A target as its `target_added` event names it: name, addresses and scheme.
fn target_summary(t: &TargetConfig) -> String {
    format!(
        "{} ({}), scheme {}",
        t.fqdn,
        t.addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        t.scheme
    )
}

fn event(subject: &str, event: &str, detail: impl Into<String>) -> EventRecord {
    EventRecord {
        at_ms: now_ms(),
        subject: subject.to_string(),
        event: event.to_string(),
        detail: detail.into(),
        phase: None,
    }
}

impl Coordinator {
    /// Opens the state store and rebuilds the world from it and the config.
    pub fn open(
        cfg: Config,
        dns: Box<dyn DnsBackend>,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let store = Store::open(&cfg.coordinator.state)?;
        Self::open_with(cfg, store, dns, metrics)
    }

    /// [`Coordinator::open`] on a store opened by the caller (a replica's fenced etcd
    /// store).
    pub fn open_with(
        cfg: Config,
        store: Store,
        dns: Box<dyn DnsBackend>,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let store = store.keep_events(cfg.coordinator.keep_events);
        let started = now_ms();
        let mut targets = store.targets()?;
        for t in &cfg.targets {
            targets.entry(t.name.clone()).or_default();
        }
        for name in targets.keys() {
            if !cfg.targets.iter().any(|t| &t.name == name) {
                warn!(target = %name, "state holds a target the config no longer defines; it is kept but not driven");
            }
        }
        let mut nodes: BTreeMap<String, NodeRecord> = store
            .nodes()?
            .into_iter()
            .map(|mut n| {
                // Nobody is connected to a freshly started coordinator. A node that was
                // up gets one heartbeat timeout from now to register again; after that
                // sweep() handles it as silent, as if it had died while we ran: a proxy
                // is reset out of every ALT set that lists it.
                if n.health == Health::Up {
                    n.last_seen_ms = Some(started);
                }
                (NodeRecord::key(n.role, &n.name), n)
            })
            .collect();
        for p in &cfg.proxies {
            let key = NodeRecord::key(Role::Proxy, &p.name);
            let rec = nodes
                .entry(key)
                .or_insert_with(|| unseen_node(Role::Proxy, &p.name));
            take_proxy_entry(rec, p);
        }
        let mut target_cfgs: HashMap<String, Arc<TargetConfig>> = cfg
            .targets
            .iter()
            .map(|t| (t.name.clone(), Arc::new(t.clone())))
            .collect();
        for (name, t) in store.target_configs()? {
            if target_cfgs.contains_key(&name) {
                warn!(target = %name, "a target added at run time is now in the config file too; the file's entry is used");
                continue;
            }
            targets.entry(name.clone()).or_default();
            target_cfgs.insert(name, Arc::new(t));
        }
        let phases = phase_metrics::PhaseMetrics::register(&metrics);
        let webhooks = crate::webhook::Webhooks::start(&cfg.webhooks, &metrics);
        for (name, st) in &targets {
            phases.set(name, st.phase);
        }
        Ok(Arc::new(Coordinator {
            file_proxies: Mutex::new(cfg.proxies.clone()),
            file_targets: Mutex::new(cfg.targets.iter().map(|t| t.name.clone()).collect()),
            cfg,
            targets: std::sync::RwLock::new(target_cfgs),
            store,
            metrics,
            phases,
            dns,
            world: Mutex::new(World {
                targets,
                nodes,
                live: HashMap::new(),
                loads: HashMap::new(),
            }),
            crl_expired: Default::default(),
            leader_epoch: Default::default(),
            webhooks,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("coordinator state lock")
    }

    /// Re-drives every step that was running when the coordinator stopped.
    pub fn resume(self: &Arc<Self>) {
        let running: Vec<(String, u64, Vec<Step>)> = self
            .lock()
            .targets
            .iter()
            .filter(|(name, _)| self.has_target(name))
            .map(|(name, st)| (name.clone(), st.epoch, st.running().to_vec()))
            .filter(|(_, _, steps)| !steps.is_empty())
            .collect();
        for (target, epoch, steps) in running {
            info!(%target, epoch, steps = steps.len(), "resuming half-done steps after restart");
            for step in steps {
                self.spawn_step(target.clone(), epoch, step);
            }
        }
        // A proxy already down when the coordinator stopped, but still in a set (it
        // stopped between marking it down and resetting it out), is reset now.
        let stale: Vec<String> = {
            let world = self.lock();
            world
                .targets
                .values()
                .filter(|s| s.phase.is_diverted())
                .flat_map(|s| s.proxies.iter())
                .filter(|p| {
                    world
                        .nodes
                        .get(&NodeRecord::key(Role::Proxy, p))
                        .is_none_or(|n| n.health == Health::Down)
                })
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        for p in stale {
            info!(proxy = %p, "a proxy in a diverted set was already down at restart; resetting it out");
            self.proxy_lost(&p, "proxy_down");
        }
    }

    /// Applies `ev` to a target, durably, then starts the steps it calls for.
    fn apply(self: &Arc<Self>, target: &str, ev: Event, why: &str) -> Result<TargetView, Refusal> {
        let (outcome, view, epoch, in_phase_ms) = {
            let mut world = self.lock();
            let Some(state) = world.targets.get(target) else {
                return Err(Refusal::new(
                    RefusalReason::Unknown,
                    format!("no target named {target:?}"),
                ));
            };
            let mut next = state.clone();
            let audit = match &ev {
                Event::StepDone { step, .. } => Some(event(target, "step_done", step.to_string())),
                Event::StepFailed { .. } => None, // audited by the retry loop, with backoff
                other => Some(event(target, why, format!("{other:?}"))),
            };
            let in_phase_since = state.since_ms;
            let outcome: Outcome = next.apply(now_ms(), ev);
            if !outcome.changed {
                let view = self.target_view(target, state);
                return Ok(view);
            }
            let mut events: Vec<EventRecord> = audit.into_iter().collect();
            if let Some((from, to)) = outcome.transition {
                events.push(EventRecord {
                    phase: Some(to.to_string()),
                    ..event(
                        target,
                        "phase",
                        format!(
                            "{from} -> {to} (epoch {}, proxies {:?})",
                            next.epoch, next.proxies
                        ),
                    )
                });
            }
            self.commit(Batch {
                targets: vec![(target, &next)],
                events,
                ..Default::default()
            })
            .map_err(|e| {
                error!(%target, error = %e, "cannot persist target state; change not applied");
                Refusal::new(RefusalReason::Unavailable, format!("state store: {e}"))
            })?;
            let epoch = next.epoch;
            let view = self.target_view(target, &next);
            let in_phase_ms = next.since_ms.saturating_sub(in_phase_since);
            world.targets.insert(target.to_string(), next);
            (outcome, view, epoch, in_phase_ms)
        };
        if let Some((from, to)) = outcome.transition {
            info!(%target, %from, %to, epoch, "target phase changed");
            self.metrics.transition(from.as_str(), to.as_str());
            self.phases
                .transition(target, from, to, in_phase_ms as f64 / 1000.0);
        }
        for step in outcome.start {
            self.spawn_step(target.to_string(), epoch, step);
        }
        if matches!(outcome.transition, Some((_, Phase::Diverted))) {
            // A proxy that became usable while a plan ran was not offered then.
            self.refill(Some(target), "set_short");
        }
        Ok(view)
    }

    fn target_view(&self, name: &str, st: &TargetState) -> TargetView {
        TargetView {
            name: name.to_string(),
            phase: st.phase.to_string(),
            epoch: st.epoch,
            scheme: self
                .target_cfg(name)
                .map(|t| t.scheme.as_str())
                .unwrap_or("?")
                .to_string(),
            proxies: st.proxies.clone(),
            pending: st.stages.iter().flatten().map(|s| s.to_string()).collect(),
            last_error: st.last_error.clone(),
            since_ms: st.since_ms,
        }
    }

    fn spawn_step(self: &Arc<Self>, target: String, epoch: u64, step: Step) {
        let me = self.clone();
        tokio::spawn(async move { me.drive_step(target, epoch, step).await });
    }

    /// Runs one step until it succeeds or is no longer wanted, backing off on failure.
    async fn drive_step(self: Arc<Self>, target: String, epoch: u64, step: Step) {
        let mut backoff = Duration::from_millis(200);
        let max = Duration::from_millis(self.cfg.coordinator.max_backoff_ms);
        let mut attempt: u32 = 0;
        loop {
            if !self.still_pending(&target, epoch, &step) {
                return;
            }
            attempt += 1;
            match self.execute(&target, epoch, &step).await {
                Ok(()) => {
                    let _ = self.apply(&target, Event::StepDone { epoch, step }, "step_done");
                    return;
                }
                Err(error) => {
                    warn!(%target, epoch, %step, attempt, %error, "step failed; will retry");
                    // Audit the 1st, 2nd, 4th, 8th... failure so a long outage is
                    // visible without flooding the log.
                    if attempt.is_power_of_two() {
                        let _ = self.commit(Batch {
                            events: vec![event(
                                &target,
                                "step_failed",
                                format!("{step} (attempt {attempt}): {error}"),
                            )],
                            ..Default::default()
                        });
                    }
                    let _ = self.apply(
                        &target,
                        Event::StepFailed {
                            epoch,
                            step: step.clone(),
                            error,
                        },
                        "step_failed",
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }

    fn still_pending(&self, target: &str, epoch: u64, step: &Step) -> bool {
        self.lock()
            .targets
            .get(target)
            .is_some_and(|s| s.is_pending(epoch, step))
    }

    fn proxy_address(&self, name: &str) -> Option<IpAddr> {
        self.lock()
            .nodes
            .get(&NodeRecord::key(Role::Proxy, name))
            .and_then(|n| n.info.address)
    }

    async fn execute(
        self: &Arc<Self>,
        target: &str,
        epoch: u64,
        step: &Step,
    ) -> Result<(), String> {
        let tcfg = self
            .target_cfg(target)
            .ok_or_else(|| format!("target {target} is not configured"))?;
        let tcfg = &*tcfg;
        let proxies: Vec<String> = self
            .lock()
            .targets
            .get(target)
            .map(|s| s.proxies.clone())
            .unwrap_or_default();
        match step {
            Step::DnsPublish => {
                let addrs: Vec<IpAddr> = proxies
                    .iter()
                    .filter_map(|p| self.proxy_address(p))
                    .collect();
                if addrs.len() != proxies.len() {
                    return Err("a proxy of the set has no known address yet".into());
                }
                let acc = self
                    .dns
                    .publish(tcfg, &addrs)
                    .await
                    .map_err(|e| e.to_string())?;
                self.audit_dns(target, step, &acc);
                return Ok(());
            }
            Step::DnsRestore => {
                let acc = self.dns.restore(tcfg).await.map_err(|e| e.to_string())?;
                self.audit_dns(target, step, &acc);
                return Ok(());
            }
            Step::Drain => {
                tokio::time::sleep(Duration::from_secs(tcfg.ttl as u64)).await;
                return Ok(());
            }
            Step::NotifyResolvers => {
                for p in &proxies {
                    let request = Request::Notify {
                        target: tcfg.name.clone(),
                        epoch,
                        fqdn: tcfg.fqdn.clone(),
                        leader: self.leader_epoch(),
                    };
                    self.send(Role::Proxy, p, request).await?;
                }
                return Ok(());
            }
            Step::PushRoutes => {
                let ctx = self.context(tcfg, &proxies);
                let orders = orchestrate::orders(step, &ctx).map_err(|e| e.to_string())?;
                drop(ctx);
                return self.push_routes(tcfg, epoch, orders).await;
            }
            Step::ProxyTeardown(p) if !self.is_connected(Role::Proxy, p) => {
                // A dead proxy cannot be told. Its relay is already cut off: the gateway
                // set-up before this step admits only the current set.
                let _ = self.commit(Batch {
                    events: vec![event(
                        target,
                        "step_deferred",
                        format!("{step}: {p} is not connected; the gateway no longer admits it"),
                    )],
                    ..Default::default()
                });
                return Ok(());
            }
            _ => {}
        }
        let ctx = self.context(tcfg, &proxies);
        self.send_orders(
            tcfg,
            epoch,
            step_role(step),
            orchestrate::orders(step, &ctx).map_err(|e| e.to_string())?,
        )
        .await
    }

    /// Scheme 4.2: one request per push, all sent at once, so one slow or dead client
    /// agent costs only its own time limit and the others do not wait behind it; failed
    /// pushes are tried again a few times. A client site that stays unreachable must not
    /// hold the target's divert (or a reset's tear-down) up: it is audited and left out,
    /// tried again in the background for a while ([`PUSH_RETRIES`]), and pushed to when it
    /// registers again.
    async fn push_routes(
        self: &Arc<Self>,
        tcfg: &TargetConfig,
        epoch: u64,
        orders: Vec<orchestrate::Order>,
    ) -> Result<(), String> {
        let mut todo: Vec<(String, scold_proto::dataplane::Command)> = orders
            .into_iter()
            .flat_map(|o| {
                let node = o.node;
                o.commands.into_iter().map(move |c| (node.clone(), c))
            })
            .collect();
        let mut failures = Vec::new();
        for round in 0..3u32 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500) * round).await;
            }
            let (left, failed, _) = self.push_all(&tcfg.name, epoch, todo).await;
            todo = left;
            failures = failed;
            if todo.is_empty() {
                return Ok(());
            }
        }
        for f in &failures {
            warn!(target = %tcfg.name, epoch, failure = %f, "client agent not reached; left out, tried again later and when it registers again");
        }
        let _ = self.commit(Batch {
            events: vec![event(
                &tcfg.name,
                "push_failed",
                format!(
                    "{} client(s) not reached: {}",
                    failures.len(),
                    failures.join("; ")
                ),
            )],
            ..Default::default()
        });
        self.retry_pushes_later(tcfg.name.clone(), epoch, todo);
        Ok(())
    }

    /// Sends every push of `todo` at once, each in its own request. Returns the pushes
    /// that failed, why each failed, and the clients reached.
    async fn push_all(
        self: &Arc<Self>,
        target: &str,
        epoch: u64,
        todo: Vec<(String, scold_proto::dataplane::Command)>,
    ) -> (
        Vec<(String, scold_proto::dataplane::Command)>,
        Vec<String>,
        Vec<String>,
    ) {
        let mut set = tokio::task::JoinSet::new();
        for (proxy, cmd) in todo {
            let me = self.clone();
            let target = target.to_string();
            set.spawn(async move {
                let who = match &cmd {
                    scold_proto::dataplane::Command::PushRoute(p) => p.client.clone(),
                    other => other.kind().to_string(),
                };
                let Some(tcfg) = me.target_cfg(&target) else {
                    return Err((
                        proxy,
                        cmd,
                        format!("{who}: target {target} is not configured"),
                    ));
                };
                let one = orchestrate::Order {
                    node: proxy.clone(),
                    commands: vec![cmd.clone()],
                };
                match me.send_orders(&tcfg, epoch, Role::Proxy, vec![one]).await {
                    Ok(()) => Ok(who),
                    Err(e) => {
                        let why = format!("{who} via {proxy}: {e}");
                        Err((proxy, cmd, why))
                    }
                }
            });
        }
        let (mut left, mut failures, mut reached) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(who)) => reached.push(who),
                Ok(Err((proxy, cmd, why))) => {
                    failures.push(why);
                    left.push((proxy, cmd));
                }
                Err(e) => failures.push(format!("push task failed: {e}")),
            }
        }
        (left, failures, reached)
    }

    /// Pushes that failed every round of [`Self::push_routes`] are tried again in the
    /// background at growing intervals, up to [`PUSH_RETRIES`] times, while the target
    /// stays diverted in this epoch: a client site whose link comes back gets its route
    /// without having to register again.
    fn retry_pushes_later(
        self: &Arc<Self>,
        target: String,
        epoch: u64,
        mut todo: Vec<(String, scold_proto::dataplane::Command)>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut wait = PUSH_RETRY_FIRST;
            for attempt in 1..=PUSH_RETRIES {
                tokio::time::sleep(wait).await;
                let current = me
                    .lock()
                    .targets
                    .get(&target)
                    .is_some_and(|s| s.epoch == epoch && s.phase.is_diverted());
                if !current {
                    return; // a newer plan pushes (or withdraws) for everyone
                }
                let (left, failures, reached) = me.push_all(&target, epoch, todo).await;
                for client in &reached {
                    info!(%target, epoch, %client, attempt, "route pushed to a client agent on a later try");
                }
                todo = left;
                if todo.is_empty() {
                    return;
                }
                if attempt == PUSH_RETRIES {
                    warn!(%target, epoch, failures = ?failures, "client agents still not reached; they get their route when they register again");
                }
                wait = (wait * 2).min(PUSH_RETRY_MAX);
            }
        });
    }

    /// Sends each order and fails on the first refusal.
    async fn send_orders(
        &self,
        tcfg: &TargetConfig,
        epoch: u64,
        role: Role,
        orders: Vec<orchestrate::Order>,
    ) -> Result<(), String> {
        for order in orders {
            let request = Request::Dataplane {
                target: tcfg.name.clone(),
                epoch,
                commands: order.commands,
                leader: self.leader_epoch(),
            };
            match self.send(role, &order.node, request).await? {
                Reply::Dataplane { replies } => {
                    for r in replies {
                        if let scold_proto::dataplane::Reply::Refused { code, message } = r {
                            return Err(format!(
                                "{role}/{} refused ({code:?}): {message}",
                                order.node
                            ));
                        }
                    }
                }
                Reply::Done => {}
                other => return Err(format!("{role}/{} answered {other:?}", order.node)),
            }
        }
        Ok(())
    }

    /// A node that registers while a target it takes part in is diverted may have
    /// restarted and lost its data-plane state (a proxy its relay to the gateway, a
    /// gateway the proxies it admits, the target its return path, a 4.2 client agent its
    /// pushed route), and would drop the target's traffic until the next phase change.
    /// It gets its part of the set-up orders again now ([`resync_steps`]); orders are
    /// idempotent, so a node that merely reconnected loses nothing. A few tries with
    /// backoff, the first after a short wait: a node registers just before its command
    /// service is up. Each try reads the target afresh: a new plan may already cover the
    /// node (nothing left to send), and a target that is no longer diverted ends it.
    fn resync_node(self: &Arc<Self>, role: Role, name: String, tunnel_changed: bool) {
        let due: Vec<String> = {
            let world = self.lock();
            world
                .targets
                .iter()
                .filter(|(t, st)| {
                    self.target_cfg(t).is_some_and(|tcfg| {
                        !resync_steps(role, &name, tunnel_changed, &tcfg, st).is_empty()
                    })
                })
                .map(|(t, _)| t.clone())
                .collect()
        };
        for target in due {
            let me = self.clone();
            let name = name.clone();
            tokio::spawn(async move { me.resync_target(target, role, name, tunnel_changed).await });
        }
    }

    /// The tries of [`Self::resync_node`] for one target.
    async fn resync_target(
        self: Arc<Self>,
        target: String,
        role: Role,
        name: String,
        tunnel_changed: bool,
    ) {
        let Some(tcfg) = self.target_cfg(&target) else {
            return;
        };
        let tcfg = &*tcfg;
        let who = NodeRecord::key(role, &name);
        let mut backoff = RESYNC_FIRST;
        let mut done: Vec<Resend> = Vec::new();
        let mut done_epoch = None;
        let mut last_error = String::new();
        for attempt in 1..=RESYNC_TRIES {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            let Some((epoch, proxies, items)) = self.lock().targets.get(&target).map(|st| {
                let items = resync_steps(role, &name, tunnel_changed, tcfg, st);
                (st.epoch, st.proxies.clone(), items)
            }) else {
                return;
            };
            if done_epoch != Some(epoch) {
                done.clear();
                done_epoch = Some(epoch);
            }
            let todo: Vec<Resend> = items.into_iter().filter(|i| !done.contains(i)).collect();
            if todo.is_empty() {
                // Not diverted any more, or everything is sent or left to the plan.
                return;
            }
            match self
                .resend(tcfg, epoch, &name, &todo, &proxies, &mut done)
                .await
            {
                Ok(()) => {
                    let sent: Vec<String> = done.iter().map(Resend::to_string).collect();
                    info!(%target, node = %who, epoch, attempt, sent = ?sent, "set-up orders sent again to a node that registered again");
                    let _ = self.commit(Batch {
                        events: vec![event(
                            &target,
                            "resync",
                            format!(
                                "{who} registered again: sent {} (epoch {epoch})",
                                sent.join(", ")
                            ),
                        )],
                        ..Default::default()
                    });
                    return;
                }
                Err(error) => {
                    warn!(%target, node = %who, attempt, %error, "re-sending set-up orders to a node that registered again failed");
                    last_error = error;
                }
            }
        }
        warn!(%target, node = %who, error = %last_error, "node not re-synchronised; it gets its orders at the target's next phase change");
        let _ = self.commit(Batch {
            events: vec![event(
                &target,
                "resync_failed",
                format!("{who}: {RESYNC_TRIES} tries: {last_error}"),
            )],
            ..Default::default()
        });
    }

    /// Sends the orders of `items` for a node that registered again; each one that went
    /// through is added to `done`.
    async fn resend(
        self: &Arc<Self>,
        tcfg: &TargetConfig,
        epoch: u64,
        node: &str,
        items: &[Resend],
        proxies: &[String],
        done: &mut Vec<Resend>,
    ) -> Result<(), String> {
        for item in items {
            let mut ctx = self.context(tcfg, proxies);
            let step = match item {
                Resend::Own(step) | Resend::All(step) => step,
                Resend::PushTo(client) => {
                    ctx.clients.retain(|(n, _)| n == client);
                    &Step::PushRoutes
                }
            };
            let mut orders = orchestrate::orders(step, &ctx).map_err(|e| e.to_string())?;
            drop(ctx);
            if let Resend::Own(_) = item {
                orders.retain(|o| o.node == node);
            }
            if *step == Step::PushRoutes {
                let todo = orders
                    .into_iter()
                    .flat_map(|o| {
                        let node = o.node;
                        o.commands.into_iter().map(move |c| (node.clone(), c))
                    })
                    .collect();
                let (left, failures, _) = self.push_all(&tcfg.name, epoch, todo).await;
                if !left.is_empty() {
                    return Err(format!("{item}: {}", failures.join("; ")));
                }
            } else {
                self.send_orders(tcfg, epoch, step_role(step), orders)
                    .await
                    .map_err(|e| format!("{item}: {e}"))?;
            }
            done.push(item.clone());
        }
        Ok(())
    }

    /// What the orders of a step depend on, from the registry and the other targets.
    fn context<'a>(&self, tcfg: &'a TargetConfig, proxies: &[String]) -> orchestrate::Context<'a> {
        let world = self.lock();
        let known = |role: Role, name: &str| {
            let node = world.nodes.get(&NodeRecord::key(role, name));
            orchestrate::Known {
                name: name.to_string(),
                address: node.and_then(|n| n.info.address),
                tunnel: node.and_then(|n| n.info.tunnel.clone()),
            }
        };
        let diverted_using = |gw: &str| -> Vec<(&String, &TargetState)> {
            world
                .targets
                .iter()
                .filter(|(n, st)| {
                    st.phase.is_diverted()
                        && self
                            .target_cfg(n)
                            .is_some_and(|t| t.gateways.iter().any(|g| g == gw))
                })
                .collect()
        };
        let gateway_admits = tcfg
            .gateways
            .iter()
            .map(|gw| {
                let mut admit: Vec<String> = diverted_using(gw)
                    .into_iter()
                    .flat_map(|(_, st)| st.proxies.iter().cloned())
                    .collect();
                admit.sort();
                admit.dedup();
                (gw.clone(), admit)
            })
            .collect();
        let gateway_shared = tcfg.gateways.iter().any(|gw| {
            diverted_using(gw)
                .into_iter()
                .any(|(n, st)| *n != tcfg.name && st.proxies.iter().any(|p| proxies.contains(p)))
        });
        orchestrate::Context {
            target: tcfg,
            proxies: proxies.iter().map(|p| known(Role::Proxy, p)).collect(),
            gateways: tcfg
                .gateways
                .iter()
                .map(|g| known(Role::Gateway, g))
                .collect(),
            pool: world
                .nodes
                .values()
                .filter(|n| n.role == Role::Proxy)
                .map(|n| known(Role::Proxy, &n.name))
                .collect(),
            gateway_admits,
            gateway_shared,
            clients: world
                .nodes
                .values()
                .filter(|n| n.role == Role::Client && n.health == Health::Up)
                .filter_map(|n| Some((n.name.clone(), n.info.address?)))
                .collect(),
            push_port: self.cfg.coordinator.client_push_port,
        }
    }

    /// Records which TargetDNS primary took a DNS step (and which were passed over), so
    /// the operator sees it in the audit log and `scold ctl status`.
    fn audit_dns(&self, target: &str, step: &Step, acc: &Accepted) {
        let _ = self.commit(Batch {
            events: vec![event(target, "dns_server", format!("{step}: {acc}"))],
            ..Default::default()
        });
    }

    fn is_connected(&self, role: Role, name: &str) -> bool {
        self.lock()
            .live
            .get(&NodeRecord::key(role, name))
            .is_some_and(|c| !c.is_closed())
    }

    /// Sends one request to a node and waits for its answer.
    async fn send(&self, role: Role, name: &str, request: Request) -> Result<Reply, String> {
        let key = NodeRecord::key(role, name);
        let channel = self
            .lock()
            .live
            .get(&key)
            .cloned()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| format!("{key} is not connected"))?;
        channel
            .request(request, channel::REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    // --- registry --------------------------------------------------------------------

    fn candidates(&self, world: &World) -> Vec<Candidate> {
        let now = now_ms();
        world
            .nodes
            .values()
            .filter(|n| n.role == Role::Proxy)
            .map(|n| Candidate {
                name: n.name.clone(),
                organisation: n
                    .info
                    .organisation
                    .clone()
                    .unwrap_or_else(|| n.name.clone()),
                capacity_mbps: n.info.capacity_mbps.unwrap_or(default_capacity()),
                serving: world
                    .targets
                    .values()
                    .filter(|t| t.proxies.contains(&n.name))
                    .count() as u32,
                usable: n.health == Health::Up
                    && n.pool == Pool::Member
                    && n.info.address.is_some()
                    && n.attacked_until_ms.is_none_or(|u| u <= now),
            })
            .collect()
    }

    /// How many proxies the target gets: its own `proxies`, else the coordinator's.
    fn wanted(&self, target: &str) -> usize {
        self.target_cfg(target)
            .and_then(|t| t.proxies)
            .unwrap_or(self.cfg.coordinator.proxies_per_target)
    }

    fn choose_for(&self, target: &str, exclude: &[String]) -> Vec<String> {
        let k = self.wanted(target);
        let world = self.lock();
        choose_proxies(&self.candidates(&world), k, exclude)
    }

    /// Gives each resting diverted target (`only` that one, if named) whose proxy set is
    /// shorter than wanted one more proxy, chosen by the usual rules among the usable
    /// ones outside its set. A set shrinks when a lost proxy has no replacement; without
    /// this, a proxy that comes back (up again, or its `attacked` mark expired) would
    /// stay idle and the next loss would leave the target with no proxy. Called when a
    /// proxy becomes usable and when a target comes to rest in `Diverted` (so a set short
    /// by more than one fills up one proxy per plan).
    fn refill(self: &Arc<Self>, only: Option<&str>, why: &str) {
        let short: Vec<(String, Vec<String>)> = self
            .lock()
            .targets
            .iter()
            .filter(|(n, st)| {
                only.is_none_or(|o| o == n.as_str())
                    && st.phase == Phase::Diverted
                    && self.has_target(n)
                    && st.proxies.len() < self.wanted(n)
            })
            .map(|(n, st)| (n.clone(), st.proxies.clone()))
            .collect();
        for (target, current) in short {
            let Some(proxy) = self.choose_for(&target, &current).into_iter().next() else {
                continue;
            };
            info!(%target, %proxy, set = ?current, "proxy set short; adding a usable proxy");
            let _ = self.apply(&target, Event::ProxyAdded { proxy }, why);
        }
    }

    /// Takes a lost proxy out of every target that lists it, with a replacement each.
    fn proxy_lost(self: &Arc<Self>, proxy: &str, why: &str) {
        let affected: Vec<(String, Vec<String>)> = self
            .lock()
            .targets
            .iter()
            .filter(|(_, s)| s.phase.is_diverted() && s.proxies.iter().any(|p| p == proxy))
            .map(|(n, s)| (n.clone(), s.proxies.clone()))
            .collect();
        for (target, current) in affected {
            let mut exclude = current;
            exclude.push(proxy.to_string());
            let replacement = self.choose_for(&target, &exclude).into_iter().next();
            if replacement.is_none() {
                warn!(%target, %proxy, "no replacement proxy available; the target keeps fewer proxies");
            }
            let _ = self.apply(
                &target,
                Event::ProxyLost {
                    proxy: proxy.to_string(),
                    replacement,
                },
                why,
            );
        }
    }

    fn set_health(
        &self,
        world: &mut World,
        key: &str,
        health: Health,
        why: &str,
    ) -> Option<NodeRecord> {
        let node = world.nodes.get_mut(key)?;
        if node.health == health {
            return None;
        }
        node.health = health;
        if health == Health::Attacked {
            node.attacked_until_ms = Some(now_ms() + self.cfg.coordinator.attacked_hold_ms);
        }
        let rec = node.clone();
        if let Err(e) = self.commit(Batch {
            nodes: vec![&rec],
            events: vec![event(key, "health", format!("{} ({why})", health.as_str()))],
            ..Default::default()
        }) {
            error!(node = key, error = %e, "cannot persist node health");
        }
        Some(rec)
    }

    /// Records a node's registration.
    #[allow(clippy::result_large_err)]
    fn register(&self, from: &Channel, info: NodeInfo) -> Result<Registration, Refusal> {
        let peer = from.peer();
        let key = NodeRecord::key(peer.role, &peer.name);
        // What goes into ALT, and what proxy choice weighs, is the consortium's word,
        // not the node's: a proxy's address, capacity and organisation come from the
        // coordinator's [[proxy]] table, or else its address from its certificate.
        let bound = (peer.role == Role::Proxy)
            .then(|| self.bound_proxy(&peer.name))
            .flatten();
        let configured = bound.as_ref();
        let address = if peer.role == Role::Proxy {
            proxy_address(configured.map(|p| p.address), from, info.address)?
        } else {
            info.address
        };
        let mut world = self.lock();
        let rec = world
            .nodes
            .entry(key.clone())
            .or_insert_with(|| unseen_node(peer.role, &peer.name));
        let before = (rec.info.clone(), rec.health);
        let tunnel_changed = rec.info.tunnel != info.tunnel;
        rec.info = NodeInfo {
            address,
            capacity_mbps: match peer.role {
                Role::Proxy => Some(configured.map_or_else(default_capacity, |p| p.capacity_mbps)),
                _ => info.capacity_mbps,
            },
            organisation: match peer.role {
                Role::Proxy => configured.and_then(|p| p.organisation.clone()),
                _ => info.organisation,
            },
            version: info.version,
            tunnel: info.tunnel,
        };
        rec.last_seen_ms = Some(now_ms());
        // A revoked node that registers got through the handshake with the revocation
        // list in force now: it is no longer revoked.
        if matches!(rec.health, Health::Down | Health::Revoked) {
            rec.health = Health::Up;
        }
        let rec = rec.clone();
        // A registration that changes nothing (the same node again on the same
        // connection, with the same word on itself) is answered without a durable write
        // or an audit event: repeating it cannot fill the store or push real events out.
        let same_connection = world
            .live
            .get(&key)
            .is_some_and(|c| c.remote() == from.remote());
        if !same_connection || before != (rec.info.clone(), rec.health) {
            self.commit(Batch {
                nodes: vec![&rec],
                events: vec![event(&key, "registered", format!("from {}", from.remote()))],
                ..Default::default()
            })
            .map_err(|e| Refusal::new(RefusalReason::Unavailable, format!("state store: {e}")))?;
        }
        world.live.insert(key, from.clone());
        Ok(Registration {
            reply: Reply::Registered {
                heartbeat_ms: self.cfg.coordinator.heartbeat_ms,
            },
            tunnel_changed,
        })
    }

    /// Returns whether the node was down and is up again.
    fn heartbeat(&self, from: &Channel, load: Option<NodeLoad>) -> bool {
        let key = NodeRecord::key(from.peer().role, &from.peer().name);
        let mut world = self.lock();
        match load {
            Some(l) => world.loads.insert(key.clone(), l),
            None => world.loads.remove(&key),
        };
        let revived = match world.nodes.get_mut(&key) {
            Some(n) => {
                n.last_seen_ms = Some(now_ms());
                n.health == Health::Down
            }
            None => false,
        };
        world
            .live
            .entry(key.clone())
            .or_insert_with(|| from.clone());
        if revived {
            self.set_health(&mut world, &key, Health::Up, "heartbeat");
        }
        revived
    }

    /// Marks silent nodes down and attacked marks that expired back up; a proxy that
    /// goes down is swapped out of its targets.
    /// Records whether the revocation list in force is past its next-update date.
    /// Commits `batch` to the store and, once durable, offers its audit events to the
    /// alert hooks (which never make this wait).
    fn commit(&self, batch: Batch<'_>) -> Result<Vec<u64>, crate::store::StoreError> {
        let events = batch.events.clone();
        let seqs = self.store.commit(batch)?;
        for (seq, ev) in seqs.iter().zip(&events) {
            self.webhooks.offer(*seq, ev);
        }
        Ok(seqs)
    }

    /// The leadership epoch this coordinator's orders carry.
    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the leadership epoch (a replica, once it leads; before it serves).
    pub fn set_leader_epoch(&self, epoch: u64) {
        self.leader_epoch
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_crl_expired(&self, expired: bool) {
        let was = self
            .crl_expired
            .swap(expired, std::sync::atomic::Ordering::Relaxed);
        if expired && !was {
            warn!("the revocation list is past its next-update date: revocations issued since are unknown here; refresh it with `scold ca crl` (the old list stays in force)");
        }
    }

    /// Checks the certificate of every connected node again (after the revocation list
    /// changed, or a while after the last check, for expiries): a node whose certificate
    /// no longer passes loses its connection at once and is marked revoked; a revoked
    /// proxy is reset out of every ALT set that lists it and chosen for nothing again.
    pub fn recheck_peers(self: &Arc<Self>, tls: &scold_pki::TlsIdentity) {
        let live: Vec<(String, Channel)> = self
            .lock()
            .live
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut lost = Vec::new();
        for (key, ch) in live {
            let Err(reason) = tls.recheck_peer(ch.peer_chain()) else {
                continue;
            };
            warn!(node = %key, peer = %ch.peer(), reason = reason.as_str(), "closing the connection of a node whose certificate no longer passes");
            self.metrics.refusal(reason.as_str());
            ch.close();
            let mut world = self.lock();
            if world
                .live
                .get(&key)
                .is_some_and(|c| c.remote() == ch.remote())
            {
                world.live.remove(&key);
            }
            if self
                .set_health(&mut world, &key, Health::Revoked, reason.as_str())
                .is_some()
                && ch.peer().role == Role::Proxy
            {
                lost.push(ch.peer().name.clone());
            }
        }
        for p in lost {
            self.proxy_lost(&p, "proxy_revoked");
        }
    }

    fn sweep(self: &Arc<Self>) {
        let now = now_ms();
        let down_after = self.cfg.coordinator.down_after_ms;
        let mut lost = Vec::new();
        let mut back = false;
        {
            let mut world = self.lock();
            let keys: Vec<String> = world.nodes.keys().cloned().collect();
            for key in keys {
                let n = &world.nodes[&key];
                let silent = n
                    .last_seen_ms
                    .is_none_or(|t| now.saturating_sub(t) > down_after);
                let expired =
                    n.health == Health::Attacked && n.attacked_until_ms.is_some_and(|u| u <= now);
                let (role, name) = (n.role, n.name.clone());
                if n.health == Health::Up && silent {
                    self.set_health(&mut world, &key, Health::Down, "silent");
                    world.live.remove(&key);
                    if role == Role::Proxy {
                        lost.push(name);
                    }
                } else if expired {
                    let h = if silent { Health::Down } else { Health::Up };
                    self.set_health(&mut world, &key, h, "attacked mark expired");
                    back |= role == Role::Proxy && h == Health::Up;
                }
            }
        }
        for p in lost {
            self.proxy_lost(&p, "proxy_down");
        }
        if back {
            self.refill(None, "proxy_back");
        }
    }

    fn status(&self, limit: usize) -> Result<StatusReport, Refusal> {
        let world = self.lock();
        let targets = world
            .targets
            .iter()
            .map(|(n, s)| self.target_view(n, s))
            .collect();
        let proxies = self.proxy_views(&world);
        let gateways = world
            .nodes
            .values()
            .filter(|n| n.role == Role::Gateway)
            .map(|n| NodeView {
                name: n.name.clone(),
                address: n.info.address,
                health: n.health.as_str().to_string(),
                last_seen_ms: n.last_seen_ms,
            })
            .collect();
        drop(world);
        Ok(StatusReport {
            crl_expired: self.crl_expired.load(std::sync::atomic::Ordering::Relaxed),
            targets,
            proxies,
            gateways,
            // The status page reads the events itself (limit 0): no store read here.
            events: match limit {
                0 => Vec::new(),
                n => self.events(n, None, None)?,
            },
        })
    }

    fn proxy_views(&self, world: &World) -> Vec<ProxyView> {
        world
            .nodes
            .values()
            .filter(|n| n.role == Role::Proxy && n.pool != Pool::Removed)
            .map(|n| ProxyView {
                name: n.name.clone(),
                address: n.info.address,
                organisation: n.info.organisation.clone(),
                capacity_mbps: n.info.capacity_mbps,
                health: n.health.as_str().to_string(),
                pool: n.pool.as_str().to_string(),
                last_seen_ms: n.last_seen_ms,
                // While connected: an attacked proxy still reports what it drops.
                load: {
                    let key = NodeRecord::key(n.role, &n.name);
                    world
                        .live
                        .contains_key(&key)
                        .then(|| world.loads.get(&key).copied())
                        .flatten()
                },
                serving: world
                    .targets
                    .iter()
                    .filter(|(_, s)| s.proxies.contains(&n.name))
                    .map(|(t, _)| t.clone())
                    .collect(),
            })
            .collect()
    }

    fn events(
        &self,
        limit: usize,
        subject: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<EventView>, Refusal> {
        Ok(self
            .store
            .events_where(limit, |e| {
                subject.is_none_or(|s| e.subject == s) && kind.is_none_or(|k| e.event == k)
            })
            .map_err(|e| Refusal::new(RefusalReason::Unavailable, e.to_string()))?
            .into_iter()
            .map(|(seq, e)| e.into_view(seq))
            .collect())
    }

    fn alarm(self: &Arc<Self>, target: &str, why: &str, detail: &str) -> Result<Reply, Refusal> {
        if !self.has_target(target) {
            return Err(Refusal::new(
                RefusalReason::Unknown,
                format!("no target named {target:?} is configured on this coordinator"),
            ));
        }
        let proxies = self.choose_for(target, &[]);
        if proxies.is_empty() {
            warn!(%target, "alarm, but no usable proxy is registered; divert proceeds and waits for proxies");
        }
        info!(%target, why, detail, ?proxies, "alarm");
        self.apply(target, Event::Alarm { proxies }, why)
            .map(Reply::Target)
    }

    fn all_clear(self: &Arc<Self>, target: &str, why: &str) -> Result<Reply, Refusal> {
        if !self.has_target(target) {
            return Err(Refusal::new(
                RefusalReason::Unknown,
                format!("no target named {target:?} is configured on this coordinator"),
            ));
        }
        info!(%target, why, "all clear");
        self.apply(target, Event::AllClear, why).map(Reply::Target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn example_config_parses_and_validates() {
        let p = Path::new("example.toml");
        let cfg: Config = scold_daemon::parse(EXAMPLE_CONFIG, p, "x").unwrap();
        cfg.validate(p).unwrap();
        assert_eq!(cfg.targets[0].scheme, Scheme::Resolver);
        assert_eq!(cfg.proxies[0].name, "p1");
    }

    fn web(scheme: Scheme) -> TargetConfig {
        let p = Path::new("example.toml");
        let cfg: Config = scold_daemon::parse(EXAMPLE_CONFIG, p, "x").unwrap();
        let mut t = cfg.targets[0].clone();
        t.scheme = scheme;
        t
    }

    fn diverted(proxies: &[&str]) -> TargetState {
        let mut s = TargetState::default();
        let mut start = s
            .apply(
                0,
                Event::Alarm {
                    proxies: proxies.iter().map(|p| p.to_string()).collect(),
                },
            )
            .start;
        while let Some(step) = start.pop() {
            let epoch = s.epoch;
            start.extend(s.apply(0, Event::StepDone { epoch, step }).start);
        }
        assert_eq!(s.phase, Phase::Diverted);
        s
    }

    #[test]
    fn a_node_registering_again_is_owed_its_part_of_the_set_up() {
        use Resend::*;
        let t = web(Scheme::Resolver);
        let st = diverted(&["p1", "p2"]);
        let owed = |role, name, changed| resync_steps(role, name, changed, &t, &st);
        assert_eq!(
            owed(Role::Proxy, "p1", false),
            vec![Own(Step::ProxySetup("p1".into()))]
        );
        assert_eq!(
            owed(Role::Gateway, "gw1", false),
            vec![Own(Step::GatewaySetup)]
        );
        assert_eq!(
            owed(Role::Target, "web", false),
            vec![Own(Step::TargetSetup)]
        );
        // Not part of this target: nothing.
        assert!(owed(Role::Proxy, "p3", false).is_empty());
        assert!(owed(Role::Gateway, "gw2", false).is_empty());
        assert!(owed(Role::Target, "mail", false).is_empty());
        assert!(
            owed(Role::Client, "c1", false).is_empty(),
            "no pushes in 4.1"
        );
        // A new end point: the nodes that hold it are told too.
        assert_eq!(
            owed(Role::Proxy, "p1", true),
            vec![Own(Step::ProxySetup("p1".into())), All(Step::GatewaySetup)]
        );
        assert_eq!(
            owed(Role::Gateway, "gw1", true),
            vec![
                Own(Step::GatewaySetup),
                All(Step::ProxySetup("p1".into())),
                All(Step::ProxySetup("p2".into())),
                All(Step::TargetSetup)
            ]
        );
        // 4.3: the target routes a proxy's flows back by the proxy's address.
        let nat = web(Scheme::Nat);
        assert_eq!(
            resync_steps(Role::Proxy, "p1", true, &nat, &st),
            vec![
                Own(Step::ProxySetup("p1".into())),
                All(Step::GatewaySetup),
                All(Step::TargetSetup)
            ]
        );
        // 4.2: a proxy's pushes and a client's route.
        let push = web(Scheme::Push);
        assert_eq!(
            resync_steps(Role::Proxy, "p2", false, &push, &st),
            vec![Own(Step::ProxySetup("p2".into())), Own(Step::PushRoutes)]
        );
        assert_eq!(
            resync_steps(Role::Client, "c1", false, &push, &st),
            vec![PushTo("c1".into())]
        );
    }

    #[test]
    fn what_the_plan_still_has_to_do_is_left_to_it() {
        let push = web(Scheme::Push);
        // Diverting, first stage running: a set-up still to do is the driver's (it
        // retries on the new connection); one done in this plan is sent again. Pushes
        // wait for the DNS update.
        let mut st = TargetState::default();
        st.apply(
            0,
            Event::Alarm {
                proxies: vec!["p1".into(), "p2".into()],
            },
        );
        assert!(resync_steps(Role::Proxy, "p1", false, &push, &st).is_empty());
        let epoch = st.epoch;
        st.apply(
            0,
            Event::StepDone {
                epoch,
                step: Step::ProxySetup("p1".into()),
            },
        );
        assert_eq!(
            resync_steps(Role::Proxy, "p1", false, &push, &st),
            vec![Resend::Own(Step::ProxySetup("p1".into()))]
        );
        // The gateway's new end point: p1 is told; the gateway's own set-up, p2's and
        // the target's are still in the plan and will carry it.
        assert_eq!(
            resync_steps(Role::Gateway, "gw1", true, &push, &st),
            vec![Resend::All(Step::ProxySetup("p1".into()))]
        );
        assert!(resync_steps(Role::Client, "c1", false, &push, &st).is_empty());
        // Restoring or normal: nothing is set up again.
        let mut st = diverted(&["p1"]);
        st.apply(0, Event::AllClear);
        for (role, name) in [
            (Role::Proxy, "p1"),
            (Role::Gateway, "gw1"),
            (Role::Target, "web"),
            (Role::Client, "c1"),
        ] {
            assert!(resync_steps(role, name, true, &push, &st).is_empty());
            assert!(resync_steps(role, name, true, &push, &TargetState::default()).is_empty());
        }
        // Resetting, p2 being added: p1's relay is not in this plan (sent again), p2's
        // is (left to the plan); a client's push waits for the plan's push step.
        let mut st = diverted(&["p1"]);
        st.apply(0, Event::ProxyAdded { proxy: "p2".into() });
        assert_eq!(st.phase, Phase::Resetting);
        assert_eq!(
            resync_steps(Role::Proxy, "p1", false, &push, &st),
            vec![Resend::Own(Step::ProxySetup("p1".into()))]
        );
        assert!(resync_steps(Role::Proxy, "p2", false, &push, &st).is_empty());
        assert!(resync_steps(Role::Client, "c1", false, &push, &st).is_empty());
        // Once the push step runs, a client that registers is pushed to at once.
        while st.running() != [Step::PushRoutes] {
            let epoch = st.epoch;
            let step = st.running()[0].clone();
            st.apply(0, Event::StepDone { epoch, step });
        }
        assert_eq!(
            resync_steps(Role::Client, "c1", false, &push, &st),
            vec![Resend::PushTo("c1".into())]
        );
        assert_eq!(
            Resend::PushTo("c1".into()).to_string(),
            "push-routes(client/c1)"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let p = Path::new("c.toml");
        let bad = EXAMPLE_CONFIG.replace("gateways = [\"gw1\"]", "gateways = []");
        let cfg: Config = scold_daemon::parse(&bad, p, "x").unwrap();
        let e = cfg.validate(p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("gateways"), "{e}");
        let bad = EXAMPLE_CONFIG.replace("fqdn = \"www.example.net.\"", "fqdn = \"www.other.org\"");
        let cfg: Config = scold_daemon::parse(&bad, p, "x").unwrap();
        let e = cfg.validate(p).unwrap_err().to_string();
        assert!(e.contains("fully qualified"), "{e}");
    }
}
