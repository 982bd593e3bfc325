//! Operator requests that act on the running system rather than on a target's phase:
//! `scold ctl reload NODE` forwards a reload order over the node's own control channel
//! and answers with the node's report. Every such request is an audit event, with who
//! asked and what came of it.

use super::*;
use scold_link::channel::ChannelError;
use scold_proto::control::{RefusalReason, ReloadReport};
use scold_proto::identity::Identity;

/// How long a node may take to read and apply its config file (under `scold ctl`'s
/// default 10 s, so the operator hears why rather than a time-out).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(8);

impl Coordinator {
    /// A driven target's configuration.
    pub(super) fn target_cfg(&self, name: &str) -> Option<Arc<TargetConfig>> {
        self.targets
            .read()
            .expect("targets lock")
            .get(name)
            .cloned()
    }

    /// Whether `name` is a driven target.
    pub(super) fn has_target(&self, name: &str) -> bool {
        self.targets
            .read()
            .expect("targets lock")
            .contains_key(name)
    }

    /// The connected node `node` names: `role/name`, or a bare name that only one
    /// connected node has.
    fn connected_node(&self, node: &str) -> Result<(String, Channel), Refusal> {
        let world = self.lock();
        if let Some(c) = world.live.get(node) {
            return Ok((node.to_string(), c.clone()));
        }
        let suffix = format!("/{node}");
        let found: Vec<(&String, &Channel)> = world
            .live
            .iter()
            .filter(|(k, _)| !node.contains('/') && k.ends_with(&suffix))
            .collect();
        match found.as_slice() {
            [(k, c)] => Ok(((*k).clone(), (*c).clone())),
            [] => {
                let mut known: Vec<&String> = world.live.keys().collect();
                known.sort();
                Err(Refusal::new(
                    RefusalReason::Unknown,
                    format!(
                        "no node {node:?} is connected; connected now: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ))
            }
            many => Err(Refusal::new(
                RefusalReason::BadRequest,
                format!(
                    "{node:?} names several nodes ({}); write role/name",
                    many.iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// `scold ctl reload NODE`: the node re-reads its config file and says what it
    /// applied and what waits for a restart; a file it cannot use is refused with the
    /// file and line, and the node keeps running on the old one.
    pub(super) async fn reload_node(&self, node: &str, by: &Identity) -> Result<Reply, Refusal> {
        if node == "coordinator" {
            return self.reload_self(by).await;
        }
        let (key, channel) = self.connected_node(node)?;
        let outcome = channel.request(Request::Reload, RELOAD_TIMEOUT).await;
        let (detail, result) = match outcome {
            Ok(Reply::Reloaded(report)) => (
                format!("by {by}: {report}"),
                Ok(Reply::Reloaded(ReloadReport {
                    node: if report.node.is_empty() {
                        key.clone()
                    } else {
                        report.node.clone()
                    },
                    ..report
                })),
            ),
            Ok(other) => (
                format!("by {by}: unexpected answer {other:?}"),
                Err(Refusal::new(
                    RefusalReason::Unavailable,
                    format!("{key} answered the reload with {other:?}"),
                )),
            ),
            Err(ChannelError::Failed { message, .. }) => (
                format!("by {by}: refused, running config kept: {message}"),
                Err(Refusal::new(
                    RefusalReason::BadRequest,
                    format!("{key} kept its running config: {message}"),
                )),
            ),
            Err(ChannelError::Refused { refusal, .. }) => (
                format!("by {by}: refused: {}", refusal.message),
                Err(Refusal::new(
                    refusal.reason,
                    format!("{key}: {}", refusal.message),
                )),
            ),
            Err(e) => (
                format!("by {by}: no answer: {e}"),
                Err(Refusal::new(
                    RefusalReason::Unavailable,
                    format!("{key} did not answer the reload: {e}"),
                )),
            ),
        };
        if let Err(e) = self.commit(Batch {
            events: vec![event(&key, "reload", detail)],
            ..Default::default()
        }) {
            warn!(error = %e, node = %key, "cannot record the reload in the audit log");
        }
        result
    }
}

/// A proxy name as `role/name` key.
fn proxy_key(name: &str) -> String {
    NodeRecord::key(Role::Proxy, name)
}

fn refuse(reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal::new(reason, message)
}

impl Coordinator {
    /// What the consortium bound a proxy to (its ALT address, capacity, organisation):
    /// its `[[proxy]]` entry in the config file, or else what `scold ctl proxy add`
    /// recorded. `None`: only its certificate can name its address.
    pub(super) fn bound_proxy(&self, name: &str) -> Option<ProxyConfig> {
        if let Some(p) = self
            .file_proxies
            .lock()
            .expect("file proxies lock")
            .iter()
            .find(|p| p.name == name)
        {
            return Some(p.clone());
        }
        let world = self.lock();
        let rec = world.nodes.get(&proxy_key(name))?;
        if !rec.runtime || rec.pool == Pool::Removed {
            return None;
        }
        Some(ProxyConfig {
            name: name.to_string(),
            address: rec.info.address?,
            capacity_mbps: rec.info.capacity_mbps.unwrap_or_else(default_capacity),
            organisation: rec.info.organisation.clone(),
        })
    }

    /// Writes a changed proxy record with its audit event, durable before the answer.
    fn commit_proxy(&self, rec: &NodeRecord, what: &str, detail: String) -> Result<(), Refusal> {
        self.commit(Batch {
            nodes: vec![rec],
            events: vec![event(&proxy_key(&rec.name), what, detail)],
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|e| refuse(RefusalReason::Unavailable, format!("cannot record it: {e}")))
    }

    fn pool_reply(&self) -> Reply {
        Reply::Proxies {
            proxies: self.proxy_views(&self.lock()),
        }
    }

    /// `scold ctl proxy add`: a new proxy, bound to `address`, pending until approved.
    pub(super) fn proxy_add(
        &self,
        name: &str,
        address: IpAddr,
        capacity_mbps: Option<u32>,
        organisation: Option<String>,
        by: &Identity,
    ) -> Result<Reply, Refusal> {
        scold_proto::identity::validate_name(name)
            .map_err(|e| refuse(RefusalReason::BadRequest, format!("proxy name: {e}")))?;
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            return Err(refuse(
                RefusalReason::BadRequest,
                format!("{address} cannot be a proxy's public address"),
            ));
        }
        if capacity_mbps == Some(0) {
            return Err(refuse(
                RefusalReason::BadRequest,
                "capacity must be above 0 Mbit/s",
            ));
        }
        let key = proxy_key(name);
        let rec = {
            let mut world = self.lock();
            if let Some(r) = world.nodes.get(&key).filter(|r| r.pool != Pool::Removed) {
                let same = r.runtime
                    && r.info.address == Some(address)
                    && capacity_mbps.is_none_or(|c| r.info.capacity_mbps == Some(c))
                    && organisation.is_none_or(|o| r.info.organisation.as_deref() == Some(&o));
                if same {
                    // The same order again: nothing to do.
                    return Ok(self.pool_reply_locked(&world));
                }
                return Err(refuse(
                    RefusalReason::BadRequest,
                    format!(
                        "a proxy {name} is already known ({}, pool {}); remove it first or pick another name",
                        if r.runtime { "added at run time" } else { "from the config file or its certificate" },
                        r.pool.as_str()
                    ),
                ));
            }
            if let Some(other) = world.nodes.values().find(|n| {
                n.role == Role::Proxy
                    && n.pool != Pool::Removed
                    && n.name != name
                    && n.info.address == Some(address)
            }) {
                return Err(refuse(
                    RefusalReason::BadRequest,
                    format!("{address} is already proxy {}'s address", other.name),
                ));
            }
            let rec = NodeRecord {
                role: Role::Proxy,
                name: name.to_string(),
                info: NodeInfo {
                    address: Some(address),
                    capacity_mbps: Some(capacity_mbps.unwrap_or_else(default_capacity)),
                    organisation,
                    ..Default::default()
                },
                health: Health::Down,
                last_seen_ms: None,
                attacked_until_ms: None,
                pool: Pool::Pending,
                runtime: true,
            };
            world.nodes.insert(key.clone(), rec.clone());
            rec
        };
        if let Err(e) = self.commit_proxy(
            &rec,
            "proxy_added",
            format!("by {by}: address {address}, pending approval"),
        ) {
            self.lock().nodes.remove(&key);
            return Err(e);
        }
        info!(proxy = %name, %address, %by, "proxy added to the pool, pending approval");
        Ok(self.pool_reply())
    }

    fn pool_reply_locked(&self, world: &World) -> Reply {
        Reply::Proxies {
            proxies: self.proxy_views(world),
        }
    }

    /// Changes a proxy's pool state from one of `from` to `to`; `Ok(false)` when it
    /// already was `to`.
    fn set_pool(
        &self,
        name: &str,
        from: &[Pool],
        to: Pool,
        what: &str,
        by: &Identity,
    ) -> Result<bool, Refusal> {
        let key = proxy_key(name);
        let (rec, old) = {
            let mut world = self.lock();
            let rec = world
                .nodes
                .get_mut(&key)
                .filter(|r| r.pool != Pool::Removed)
                .ok_or_else(|| {
                    refuse(
                        RefusalReason::Unknown,
                        format!("no proxy {name} is known; `scold ctl proxies` lists them"),
                    )
                })?;
            if rec.pool == to {
                return Ok(false);
            }
            if !from.contains(&rec.pool) {
                return Err(refuse(
                    RefusalReason::BadRequest,
                    format!(
                        "proxy {name} is {}; {what} needs it {}",
                        rec.pool.as_str(),
                        from.iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            }
            let old = rec.pool;
            rec.pool = to;
            (rec.clone(), old)
        };
        if let Err(e) = self.commit_proxy(
            &rec,
            what,
            format!("by {by}: {} -> {}", old.as_str(), to.as_str()),
        ) {
            if let Some(r) = self.lock().nodes.get_mut(&key) {
                r.pool = old;
            }
            return Err(e);
        }
        Ok(true)
    }

    /// `scold ctl proxy approve`: a pending proxy may be chosen from now on.
    pub(super) fn proxy_approve(
        self: &Arc<Self>,
        name: &str,
        by: &Identity,
    ) -> Result<Reply, Refusal> {
        if self.set_pool(
            name,
            &[Pool::Pending, Pool::Draining],
            Pool::Member,
            "proxy_approved",
            by,
        )? {
            info!(proxy = %name, %by, "proxy approved: it may be chosen");
            // A diverted target short of proxies takes it at once.
            self.refill(None, "proxy_approved");
        }
        Ok(self.pool_reply())
    }

    /// `scold ctl proxy drain`: the proxy is chosen for nothing from now on, and every
    /// target that lists it gets a replacement, exactly as when a proxy reports an
    /// attack on itself (paper 4.4): its ALT record goes, its routes are torn down and
    /// clients move to the other proxies.
    pub(super) fn proxy_drain(
        self: &Arc<Self>,
        name: &str,
        by: &Identity,
    ) -> Result<Reply, Refusal> {
        self.set_pool(
            name,
            &[Pool::Member, Pool::Pending],
            Pool::Draining,
            "proxy_draining",
            by,
        )?;
        info!(proxy = %name, %by, "draining the proxy: moving its targets to other proxies");
        // Also when it was draining already: a move that found no replacement then may
        // find one now.
        self.proxy_lost(name, "proxy_drain");
        Ok(self.pool_reply())
    }

    /// `scold ctl proxy remove`: forgets a proxy that serves nothing. A config-file
    /// proxy is removed from the file (then reload); one that serves a target is
    /// drained first. Its record stays as `removed`, so the proxy, still holding a
    /// valid certificate, is not taken back into the pool when it connects again;
    /// `scold ctl proxy add` brings it back.
    pub(super) fn proxy_remove(&self, name: &str, by: &Identity) -> Result<Reply, Refusal> {
        let key = proxy_key(name);
        let in_file = self
            .file_proxies
            .lock()
            .expect("file proxies lock")
            .iter()
            .any(|p| p.name == name);
        if in_file {
            return Err(refuse(
                RefusalReason::BadRequest,
                format!("proxy {name} is in the coordinator's config file; delete its [[proxy]] entry and reload (`scold ctl reload coordinator` or SIGHUP)"),
            ));
        }
        let rec = {
            let world = self.lock();
            let Some(rec) = world.nodes.get(&key).filter(|r| r.pool != Pool::Removed) else {
                return Ok(self.pool_reply_locked(&world));
            };
            if rec.pool == Pool::Member {
                return Err(refuse(
                    RefusalReason::BadRequest,
                    format!("proxy {name} is a member of the pool; `scold ctl proxy drain {name}` first, so its clients move"),
                ));
            }
            let serving: Vec<&String> = world
                .targets
                .iter()
                .filter(|(_, s)| s.proxies.iter().any(|p| p == name))
                .map(|(t, _)| t)
                .collect();
            if !serving.is_empty() {
                return Err(refuse(
                    RefusalReason::Busy,
                    format!("proxy {name} still serves {serving:?}: its clients are moving; try again when `scold ctl proxies` shows it serving nothing"),
                ));
            }
            rec.clone()
        };
        let was = rec.pool;
        let mut gone = rec;
        gone.pool = Pool::Removed;
        gone.runtime = true;
        self.lock().nodes.insert(key.clone(), gone.clone());
        if let Err(e) = self.commit_proxy(
            &gone,
            "proxy_removed",
            format!("by {by}: was {}", was.as_str()),
        ) {
            if let Some(r) = self.lock().nodes.get_mut(&key) {
                r.pool = was;
            }
            return Err(e);
        }
        info!(proxy = %name, %by, "proxy removed from the pool");
        Ok(self.pool_reply())
    }

    /// A reload of the coordinator's own file: `[[proxy]]` entries that are new or
    /// changed take effect at once (address, capacity, organisation); a proxy whose
    /// entry is gone is drained (it stays known, draining, until `scold ctl proxy
    /// remove`... which then is allowed since it is no longer in the file).
    pub(super) fn apply_file_proxies(
        self: &Arc<Self>,
        proxies: Vec<ProxyConfig>,
    ) -> Result<(), String> {
        let old = std::mem::replace(
            &mut *self.file_proxies.lock().expect("file proxies lock"),
            proxies.clone(),
        );
        let mut changed = Vec::new();
        {
            let mut world = self.lock();
            for p in &proxies {
                let key = proxy_key(&p.name);
                let rec = world
                    .nodes
                    .entry(key)
                    .or_insert_with(|| unseen_node(Role::Proxy, &p.name));
                let before = rec.clone();
                take_proxy_entry(rec, p);
                // The file is the consortium's word: an entry in it is no run-time record.
                rec.runtime = false;
                if *rec != before {
                    changed.push(rec.clone());
                }
            }
        }
        let gone: Vec<String> = old
            .iter()
            .filter(|o| !proxies.iter().any(|p| p.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        let events = changed
            .iter()
            .map(|r| {
                event(
                    &proxy_key(&r.name),
                    "proxy_config",
                    "from the reloaded config file",
                )
            })
            .collect();
        self.commit(Batch {
            nodes: changed.iter().collect(),
            events,
            ..Default::default()
        })
        .map_err(|e| format!("cannot record the new [[proxy]] entries: {e}"))?;
        let by = Identity::new(Role::Coordinator, "config").map_err(|e| e.to_string())?;
        for name in gone {
            // Dropped from the file: taken out of service as by `scold ctl proxy drain`.
            if let Err(r) = self.proxy_drain(&name, &by) {
                warn!(proxy = %name, "cannot drain a proxy dropped from the config file: {}", r.message);
            }
        }
        if !changed.is_empty() {
            self.refill(None, "proxy_config");
        }
        Ok(())
    }
}

/// The coordinator's part of a config reload: `[[proxy]]` and `[[target]]` apply live
/// (targets as their phase allows: `file_targets`), everything else waits for a
/// restart. The reload channel is set up by the process's entry
/// point ([`super::run`]), before anything slow, so a SIGHUP never ends the process;
/// the coordinator it drives exists only once this replica serves.
pub(super) const LIVE: &[&str] = &["proxy", "target"];

type PendingReloads = (
    std::path::PathBuf,
    Config,
    scold_daemon::reload::ReloadReceiver,
);

static PENDING: std::sync::Mutex<Option<PendingReloads>> = std::sync::Mutex::new(None);
static SENDER: std::sync::Mutex<Option<scold_daemon::reload::ReloadSender>> =
    std::sync::Mutex::new(None);

/// Called by [`super::run`]: SIGHUP reloads from now on; the requests wait for the
/// coordinator to serve.
pub(super) fn watch_hangups(path: &std::path::Path, cfg: &Config) -> anyhow::Result<()> {
    let (tx, rx) = scold_daemon::reload::channel();
    scold_daemon::reload::on_hangup(tx.clone())
        .map_err(|e| anyhow::anyhow!("cannot watch SIGHUP for config reloads: {e}"))?;
    *PENDING.lock().expect("reload lock") = Some((path.to_path_buf(), cfg.clone(), rx));
    *SENDER.lock().expect("reload lock") = Some(tx);
    Ok(())
}

impl Coordinator {
    /// Starts serving reloads for this coordinator, when the process set them up.
    pub(super) fn serve_reloads(self: &Arc<Self>) {
        let Some((path, _, rx)) = PENDING.lock().expect("reload lock").take() else {
            return;
        };
        // Compared with the config this coordinator runs on: a replica that took the
        // lead read its file again then.
        let running = scold_daemon::reload::Running::new(&self.cfg, LIVE);
        let c = self.clone();
        tokio::spawn(scold_daemon::reload::serve_reporting(
            "coordinator".to_string(),
            path,
            running,
            rx,
            |p: &std::path::Path| super::load_config(p).map_err(|e| format!("{e:#}")),
            async move |new: Config, keys: Vec<String>| {
                let mut applied = Vec::new();
                if keys.iter().any(|k| k == "proxy") {
                    c.apply_file_proxies(new.proxies)?;
                    applied.push("proxy".to_string());
                }
                // Targets are compared with what runs, not with the last file: a change
                // refused while a target was diverted applies at a later reload.
                let targets = c.apply_file_targets(new.targets)?;
                applied.extend(targets.applied);
                Ok(scold_daemon::reload::Applied {
                    applied,
                    refused: targets.refused,
                })
            },
        ));
    }

    /// `scold ctl reload coordinator`.
    pub(super) async fn reload_self(&self, by: &Identity) -> Result<Reply, Refusal> {
        let sender = SENDER.lock().expect("reload lock").clone();
        let Some(sender) = sender else {
            return Err(refuse(
                RefusalReason::Unavailable,
                "this coordinator was started without a config file to reload",
            ));
        };
        let outcome = sender.request("operator").await;
        let detail = match &outcome {
            Ok(r) => format!("by {by}: {r}"),
            Err(e) => format!("by {by}: refused, running config kept: {e}"),
        };
        if let Err(e) = self.commit(Batch {
            events: vec![event("coordinator", "reload", detail)],
            ..Default::default()
        }) {
            warn!(error = %e, "cannot record the reload in the audit log");
        }
        outcome.map(Reply::Reloaded).map_err(|m| {
            refuse(
                RefusalReason::BadRequest,
                format!("coordinator kept its running config: {m}"),
            )
        })
    }
}

impl Coordinator {
    /// Whether `name` came from `scold ctl target add` rather than the config file.
    fn runtime_target(&self, name: &str) -> bool {
        !self.file_target(name)
    }

    /// `scold ctl target add`: a new target, checked as the config file's are, kept in
    /// the store, driven from now on (normal phase until an alarm or `divert`).
    pub(super) fn target_add(
        &self,
        config: serde_json::Value,
        by: &Identity,
    ) -> Result<Reply, Refusal> {
        let t: TargetConfig = serde_json::from_value(config).map_err(|e| {
            refuse(
                RefusalReason::BadRequest,
                format!("not a [[target]] table: {e}"),
            )
        })?;
        let name = t.name.clone();
        if self.has_target(&name) {
            return Err(refuse(
                RefusalReason::BadRequest,
                format!("target {name} exists already; `scold ctl target show {name}`"),
            ));
        }
        // The same checks as a config file's targets, with every target known.
        let mut check = self.cfg.clone();
        check.targets = self
            .targets
            .read()
            .expect("targets lock")
            .values()
            .map(|c| (**c).clone())
            .chain(std::iter::once(t.clone()))
            .collect();
        check
            .validate(std::path::Path::new("scold ctl target add"))
            .map_err(|e| refuse(RefusalReason::BadRequest, format!("{e:#}")))?;
        let state = TargetState::default();
        self.commit(Batch {
            targets: vec![(&name, &state)],
            target_configs: vec![(&name, Some(&t))],
            events: vec![event(
                &name,
                "target_added",
                format!("by {by}: {}", target_summary(&t)),
            )],
            ..Default::default()
        })
        .map_err(|e| refuse(RefusalReason::Unavailable, format!("cannot record it: {e}")))?;
        self.targets
            .write()
            .expect("targets lock")
            .insert(name.clone(), Arc::new(t));
        self.lock().targets.insert(name.clone(), state);
        self.phases.set(&name, Phase::Normal);
        info!(target = %name, %by, "target added");
        self.target_show(&name)
    }

    /// `scold ctl target remove`: forgets a run-time target in its normal phase.
    pub(super) fn target_remove(&self, name: &str, by: &Identity) -> Result<Reply, Refusal> {
        if !self.has_target(name) {
            return Err(refuse(
                RefusalReason::Unknown,
                format!("no target {name}; `scold ctl status` lists them"),
            ));
        }
        if !self.runtime_target(name) {
            return Err(refuse(
                RefusalReason::BadRequest,
                format!("target {name} is in the coordinator's config file; remove its [[target]] entry there and reload (`scold ctl reload coordinator` or SIGHUP)"),
            ));
        }
        let phase = self.lock().targets.get(name).map(|s| s.phase);
        if phase.is_some_and(|p| p != Phase::Normal) {
            return Err(refuse(
                RefusalReason::BadRequest,
                format!(
                    "target {name} is {}; restore it first (`scold ctl restore {name}`) and remove it once it is normal",
                    phase.map(|p| p.to_string()).unwrap_or_default()
                ),
            ));
        }
        self.commit(Batch {
            target_configs: vec![(name, None)],
            removed_targets: vec![name],
            events: vec![event(name, "target_removed", format!("by {by}"))],
            ..Default::default()
        })
        .map_err(|e| refuse(RefusalReason::Unavailable, format!("cannot record it: {e}")))?;
        self.targets.write().expect("targets lock").remove(name);
        self.lock().targets.remove(name);
        self.phases.forget(name);
        info!(target = %name, %by, "target removed");
        Ok(Reply::Done)
    }

    /// `scold ctl target show`.
    pub(super) fn target_show(&self, name: &str) -> Result<Reply, Refusal> {
        let cfg = self.target_cfg(name).ok_or_else(|| {
            refuse(
                RefusalReason::Unknown,
                format!("no target {name}; `scold ctl status` lists them"),
            )
        })?;
        let view = {
            let world = self.lock();
            let st = world.targets.get(name).cloned().unwrap_or_default();
            self.target_view(name, &st)
        };
        Ok(Reply::TargetConfig {
            config: serde_json::to_value(&*cfg).unwrap_or_default(),
            runtime: self.runtime_target(name),
            view,
        })
    }
}
