//! `[[target]]` entries of the coordinator's config file applied by a reload (SIGHUP or
//! `scold ctl reload coordinator`), without touching what runs for other targets.
//!
//! The file wins for every target it lists; the store holds only run-time additions
//! (`scold ctl target add`). What a reload may change depends on the target's phase:
//!
//! - a target new in the file is driven at once, as if it had been there at start;
//! - a target gone from the file is forgotten in its normal phase; in any other phase it
//!   stays, driven as before, and the answer says to restore it first;
//! - a changed target takes its new entry whole in its normal phase. In any other phase
//!   the running divert (or restore) was laid out on its names, addresses, gateways,
//!   scheme, services and ALT TTL: those keep their running values and the change is
//!   refused, named in the answer, until the target is back to normal and the file is
//!   reloaded again. What only the next DNS update or the next choice of proxies reads
//!   (`dns.server`, `dns.key`, `proxies`) applies in every phase.
//!
//! [`plan`] decides (pure, tested here); [`Coordinator::apply_file_targets`] carries the
//! decision out: durably first, then in memory, under the state lock so no phase changes
//! between the decision and the swap.

use super::*;
use scold_daemon::reload::Applied;
use std::collections::BTreeSet;

/// Keys of a `[[target]]` table that only the next DNS update or the next choice of
/// proxies reads: they change in every phase. Every other key is read by the steps of a
/// running divert or restore, so it changes only in the normal phase.
const LIVE_IN_EVERY_PHASE: &[&str] = &["dns", "proxies"];

/// What a reload does to the driven targets.
#[derive(Debug, Default)]
pub(super) struct TargetPlan {
    /// New in the file: driven from now on.
    pub add: Vec<TargetConfig>,
    /// Gone from the file, in their normal phase: forgotten.
    pub remove: Vec<String>,
    /// Changed: the config that runs from now on (the file's entry, or the running one
    /// with the keys of [`LIVE_IN_EVERY_PHASE`] from the file).
    pub replace: Vec<TargetConfig>,
    /// Run-time targets (in the store) that the file now lists: the store's entry goes.
    pub taken_from_store: Vec<String>,
    /// Keys applied, for the answer: `target.web.gateways`, `target.mail (added)`.
    pub applied: Vec<String>,
    /// Changes refused, each `keys: why`.
    pub refused: Vec<String>,
    /// The names the file's targets are known by from now on: the new file's, and those
    /// whose removal was refused.
    pub file_names: Vec<String>,
}

/// The keys of two target tables that differ, as dotted paths below the table
/// (`gateways`, `dns.server`).
fn changed_keys(old: &TargetConfig, new: &TargetConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        // One level down for the [target.dns] table: the servers and the key are told
        // apart in the answer.
        match (x.and_then(|v| v.as_object()), y.and_then(|v| v.as_object())) {
            (Some(xo), Some(yo)) => {
                let sub: BTreeSet<&String> = xo.keys().chain(yo.keys()).collect();
                for s in sub {
                    if xo.get(s) != yo.get(s) {
                        out.push(format!("{k}.{s}"));
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

fn live_in_every_phase(key: &str) -> bool {
    LIVE_IN_EVERY_PHASE
        .iter()
        .any(|p| key == *p || key.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
}

/// Decides what a reload does. `file_names`: the targets the file listed so far;
/// `running`: every driven target's config with its phase; `new`: the new file's
/// entries (already checked by the config loader).
pub(super) fn plan(
    file_names: &[String],
    running: &BTreeMap<String, (Arc<TargetConfig>, Phase)>,
    new: &[TargetConfig],
) -> TargetPlan {
    let mut p = TargetPlan::default();
    for t in new {
        p.file_names.push(t.name.clone());
        let Some((old, phase)) = running.get(&t.name) else {
            p.applied.push(format!("target.{} (added)", t.name));
            p.add.push(t.clone());
            continue;
        };
        let was_runtime = !file_names.contains(&t.name);
        if was_runtime {
            p.taken_from_store.push(t.name.clone());
        }
        let keys = changed_keys(old, t);
        if keys.is_empty() {
            if was_runtime {
                p.applied
                    .push(format!("target.{} (now from the config file)", t.name));
            }
            continue;
        }
        if *phase == Phase::Normal {
            p.applied
                .extend(keys.iter().map(|k| format!("target.{}.{k}", t.name)));
            p.replace.push(t.clone());
            continue;
        }
        let (live, held): (Vec<String>, Vec<String>) =
            keys.into_iter().partition(|k| live_in_every_phase(k));
        if !live.is_empty() {
            let mut merged = (**old).clone();
            merged.dns = t.dns.clone();
            merged.proxies = t.proxies;
            p.applied
                .extend(live.iter().map(|k| format!("target.{}.{k}", t.name)));
            p.replace.push(merged);
        }
        if !held.is_empty() {
            p.refused.push(format!(
                "{}: {name} is {phase} and its steps run on the running values, which stay; \
                 restore it first (`scold ctl restore {name}`) and reload again once it is normal",
                held.iter()
                    .map(|k| format!("target.{}.{k}", t.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                name = t.name,
            ));
        }
    }
    for name in file_names {
        if new.iter().any(|t| &t.name == name) {
            continue;
        }
        match running.get(name) {
            None => {}
            Some((_, Phase::Normal)) => {
                p.applied.push(format!("target.{name} (removed)"));
                p.remove.push(name.clone());
            }
            Some((_, phase)) => {
                p.file_names.push(name.clone());
                p.refused.push(format!(
                    "target.{name}: {name} is {phase}, so it stays, driven as before; a target \
                     leaves only in its normal phase: restore it first (`scold ctl restore \
                     {name}`) and reload again"
                ));
            }
        }
    }
    p
}

impl Coordinator {
    /// Whether the config file lists `name` (as last applied); the others came from
    /// `scold ctl target add`.
    pub(super) fn file_target(&self, name: &str) -> bool {
        self.file_targets
            .lock()
            .expect("file targets lock")
            .iter()
            .any(|n| n == name)
    }

    /// A reload's `[[target]]` entries: see the module's comment. Nothing changes when
    /// the store cannot record the change.
    pub(super) fn apply_file_targets(
        self: &Arc<Self>,
        new: Vec<TargetConfig>,
    ) -> Result<Applied, String> {
        let (p, resume) = {
            let mut world = self.lock();
            let mut file_names = self.file_targets.lock().expect("file targets lock");
            let running: BTreeMap<String, (Arc<TargetConfig>, Phase)> = self
                .targets
                .read()
                .expect("targets lock")
                .iter()
                .map(|(n, c)| {
                    let phase = world
                        .targets
                        .get(n)
                        .map(|s| s.phase)
                        .unwrap_or(Phase::Normal);
                    (n.clone(), (c.clone(), phase))
                })
                .collect();
            let p = plan(&file_names, &running, &new);
            // A target new to the driver may have a state in the store already (the
            // file listed it before a restart): it goes on from there, as at start.
            let fresh: Vec<(String, TargetState)> = p
                .add
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        world.targets.get(&t.name).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let mut events = Vec::new();
            for t in &p.add {
                events.push(event(
                    &t.name,
                    "target_added",
                    format!("from the reloaded config file: {}", target_summary(t)),
                ));
            }
            for name in &p.remove {
                events.push(event(
                    name,
                    "target_removed",
                    "from the reloaded config file",
                ));
            }
            for t in &p.replace {
                let keys: Vec<&str> = p
                    .applied
                    .iter()
                    .filter_map(|k| k.strip_prefix(&format!("target.{}.", t.name)))
                    .collect();
                events.push(event(
                    &t.name,
                    "target_config",
                    format!("from the reloaded config file: {}", keys.join(", ")),
                ));
            }
            for name in &p.taken_from_store {
                events.push(event(
                    name,
                    "target_config",
                    "the config file lists it now: its run-time entry is dropped, the file's is used",
                ));
            }
            for why in &p.refused {
                let subject = why
                    .strip_prefix("target.")
                    .and_then(|r| r.split(['.', ':', ',']).next())
                    .unwrap_or("coordinator");
                events.push(event(subject, "target_config_refused", why.clone()));
            }
            let dropped: Vec<&str> = p
                .taken_from_store
                .iter()
                .chain(&p.remove)
                .map(|s| s.as_str())
                .collect();
            self.commit(Batch {
                targets: fresh.iter().map(|(n, s)| (n.as_str(), s)).collect(),
                target_configs: dropped.iter().map(|n| (*n, None)).collect(),
                removed_targets: p.remove.iter().map(|s| s.as_str()).collect(),
                events,
                ..Default::default()
            })
            .map_err(|e| format!("cannot record the [[target]] changes, none applied: {e}"))?;
            let mut cfgs = self.targets.write().expect("targets lock");
            for t in p.add.iter().chain(&p.replace) {
                cfgs.insert(t.name.clone(), Arc::new(t.clone()));
            }
            for name in &p.remove {
                cfgs.remove(name);
                world.targets.remove(name);
                self.phases.forget(name);
            }
            drop(cfgs);
            let mut resume = Vec::new();
            for (name, st) in fresh {
                self.phases.set(&name, st.phase);
                if !st.running().is_empty() {
                    resume.push((name.clone(), st.epoch, st.running().to_vec()));
                }
                world.targets.insert(name, st);
            }
            *file_names = p.file_names.clone();
            (p, resume)
        };
        for t in &p.add {
            info!(target = %t.name, "target added from the reloaded config file");
        }
        for name in &p.remove {
            info!(target = %name, "target removed: the reloaded config file no longer lists it");
        }
        for why in &p.refused {
            warn!("target change refused by the reload: {why}");
        }
        for (target, epoch, steps) in resume {
            info!(%target, epoch, steps = steps.len(), "resuming the half-done steps of a target the file lists again");
            for step in steps {
                self.spawn_step(target.clone(), epoch, step);
            }
        }
        if !p.replace.is_empty() {
            // More proxies wanted: a diverted target short of them takes more now.
            self.refill(None, "target_config");
        }
        Ok(Applied {
            applied: p.applied,
            refused: p.refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> TargetConfig {
        let cfg: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        cfg.targets[0].clone()
    }

    fn running(list: &[(&TargetConfig, Phase)]) -> BTreeMap<String, (Arc<TargetConfig>, Phase)> {
        list.iter()
            .map(|(t, p)| (t.name.clone(), (Arc::new((*t).clone()), *p)))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_target_is_added_and_an_unchanged_file_changes_nothing() {
        let w = web();
        let mut mail = web();
        mail.name = "mail".into();
        let p = plan(
            &names(&["web"]),
            &running(&[(&w, Phase::Diverted)]),
            &[w.clone(), mail],
        );
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.applied, ["target.mail (added)"]);
        assert!(p.replace.is_empty() && p.remove.is_empty() && p.refused.is_empty());
        assert_eq!(p.file_names, ["web", "mail"]);
        let p = plan(&names(&["web"]), &running(&[(&w, Phase::Diverted)]), &[w]);
        assert!(p.applied.is_empty() && p.refused.is_empty() && p.replace.is_empty());
    }

    #[test]
    fn a_target_leaves_only_in_its_normal_phase() {
        let w = web();
        let p = plan(&names(&["web"]), &running(&[(&w, Phase::Normal)]), &[]);
        assert_eq!(p.remove, ["web"]);
        assert_eq!(p.applied, ["target.web (removed)"]);
        assert!(p.file_names.is_empty());
        for phase in [
            Phase::Diverting,
            Phase::Diverted,
            Phase::Resetting,
            Phase::Restoring,
        ] {
            let p = plan(&names(&["web"]), &running(&[(&w, phase)]), &[]);
            assert!(p.remove.is_empty(), "{phase}");
            assert_eq!(p.file_names, ["web"], "still the file's: {phase}");
            assert_eq!(p.refused.len(), 1);
            let why = &p.refused[0];
            assert!(
                why.starts_with("target.web: web is ")
                    && why.contains(phase.as_str())
                    && why.contains("scold ctl restore web"),
                "{why}"
            );
        }
        // A run-time target is not the file's to remove.
        let p = plan(&[], &running(&[(&w, Phase::Normal)]), &[]);
        assert!(p.remove.is_empty() && p.applied.is_empty());
    }

    #[test]
    fn a_normal_target_takes_its_whole_new_entry() {
        let w = web();
        let mut n = web();
        n.gateways = names(&["gw1", "gw2"]);
        n.addresses.push("192.0.2.11".parse().unwrap());
        n.scheme = Scheme::Push;
        n.dns.server = DnsServers(vec![
            "192.0.2.53:53".parse().unwrap(),
            "192.0.2.54:53".parse().unwrap(),
        ]);
        let p = plan(
            &names(&["web"]),
            &running(&[(&w, Phase::Normal)]),
            &[n.clone()],
        );
        assert_eq!(
            p.applied,
            [
                "target.web.addresses",
                "target.web.dns.server",
                "target.web.gateways",
                "target.web.scheme"
            ]
        );
        assert!(p.refused.is_empty());
        assert_eq!(format!("{:?}", p.replace), format!("{:?}", [n]));
    }

    #[test]
    fn a_diverted_target_keeps_what_its_divert_runs_on_and_takes_dns_and_proxies() {
        let w = web();
        let mut n = web();
        n.scheme = Scheme::Push;
        n.gateways = names(&["gw2"]);
        n.fqdn = "web.example.net.".into();
        n.ttl = 60;
        n.proxies = Some(3);
        n.dns.key = "hmac-sha256:other:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==".into();
        let p = plan(
            &names(&["web"]),
            &running(&[(&w, Phase::Diverted)]),
            &[n.clone()],
        );
        assert_eq!(p.applied, ["target.web.dns.key", "target.web.proxies"]);
        let [merged] = p.replace.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(merged.scheme, w.scheme);
        assert_eq!(merged.gateways, w.gateways);
        assert_eq!(merged.fqdn, w.fqdn);
        assert_eq!(merged.ttl, w.ttl);
        assert_eq!(merged.proxies, Some(3));
        assert_eq!(merged.dns.key, n.dns.key);
        let [why] = p.refused.as_slice() else {
            panic!("{p:?}")
        };
        assert!(
            why.starts_with(
                "target.web.fqdn, target.web.gateways, target.web.scheme, target.web.ttl: web is diverted"
            ) && why.contains("scold ctl restore web"),
            "{why}"
        );
        // Only held keys changed: nothing replaced, the refusal said.
        let mut only = web();
        only.scheme = Scheme::Nat;
        only.services = vec!["tcp/80".parse().unwrap()];
        let p = plan(
            &names(&["web"]),
            &running(&[(&w, Phase::Restoring)]),
            &[only],
        );
        assert!(p.replace.is_empty() && p.applied.is_empty());
        assert!(
            p.refused[0].starts_with("target.web.scheme, target.web.services: web is restoring")
        );
    }

    #[test]
    fn the_file_takes_a_run_time_target_over() {
        let w = web();
        let p = plan(
            &[],
            &running(&[(&w, Phase::Diverted)]),
            std::slice::from_ref(&w),
        );
        assert_eq!(p.taken_from_store, ["web"]);
        assert_eq!(p.applied, ["target.web (now from the config file)"]);
        assert_eq!(p.file_names, ["web"]);
    }
}
