//! The coordinator's per-target state machine (paper Sections 3, 4.2 and 4.4).
//!
//! A target is `Normal`, `Diverting` (routes being set up, ALT records being
//! published), `Diverted`, `Restoring` (ALT records withdrawn, routes torn down), or
//! `Resetting` (diverted, with an attacked or dead proxy being swapped out, or a proxy
//! that is usable again being added to a set that lost one without replacement).
//!
//! Each phase change raises the target's epoch and lays out a plan: stages of steps. The
//! steps of one stage run concurrently; the next stage starts when every step of the
//! current one is done. Steps are idempotent, so after a crash the driver simply runs
//! the current stage again. A failed step stays pending and is retried by the driver;
//! nothing is skipped. Results of an older epoch are ignored.
//!
//! Order of a divert: the gateway, target and proxies are set up first, and only then
//! are the proxies published in DNS, so that no client learns of a route that does not
//! work yet. A restore withdraws the DNS records first, lets cached answers drain, then
//! tears routes down.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Normal,
    Diverting,
    Diverted,
    Restoring,
    Resetting,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Normal,
        Phase::Diverting,
        Phase::Diverted,
        Phase::Restoring,
        Phase::Resetting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Diverting => "diverting",
            Phase::Diverted => "diverted",
            Phase::Restoring => "restoring",
            Phase::Resetting => "resetting",
        }
    }

    /// Whether the target is (being) diverted: alarms are no-ops, all-clears restore.
    pub fn is_diverted(self) -> bool {
        matches!(self, Phase::Diverting | Phase::Diverted | Phase::Resetting)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One idempotent unit of work the driver performs for a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "step", content = "proxy", rename_all = "snake_case")]
pub enum Step {
    /// The gateway accepts tunnels from exactly the current proxy set.
    GatewaySetup,
    /// The target sends diverted clients' replies back through the gateway.
    TargetSetup,
    /// Scheme 4.3: the target routes the relay source of every proxy of the current set
    /// back through the gateway, so a proxy that joins after the divert (a reset's
    /// replacement) relays to a target that answers it. Nothing to do in 4.1 and 4.2,
    /// whose return path does not depend on the proxies.
    TargetRoutes,
    /// This proxy relays the target's traffic to the gateway.
    ProxySetup(String),
    /// The target's DNS lists the current proxy set (ALT records, or A records in 4.3).
    DnsPublish,
    /// Proxies tell the client sites' resolvers to drop the cached name (Sec. 3 step 4).
    NotifyResolvers,
    /// Scheme 4.2: each proxy of the set pushes the route to the client agents assigned
    /// to it. After the DNS update and the NOTIFY, because a client accepts a push only
    /// from a proxy it finds in the target's ALT set. Nothing to do in 4.1 and 4.3.
    PushRoutes,
    /// Wait for cached DNS answers (the ALT TTL) to expire before tearing routes down.
    Drain,
    /// The target's DNS is back to its normal records.
    DnsRestore,
    ProxyTeardown(String),
    GatewayTeardown,
    TargetTeardown,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::GatewaySetup => f.write_str("gateway-setup"),
            Step::TargetSetup => f.write_str("target-setup"),
            Step::TargetRoutes => f.write_str("target-routes"),
            Step::ProxySetup(p) => write!(f, "proxy-setup({p})"),
            Step::DnsPublish => f.write_str("dns-publish"),
            Step::NotifyResolvers => f.write_str("notify-resolvers"),
            Step::PushRoutes => f.write_str("push-routes"),
            Step::Drain => f.write_str("drain"),
            Step::DnsRestore => f.write_str("dns-restore"),
            Step::ProxyTeardown(p) => write!(f, "proxy-teardown({p})"),
            Step::GatewayTeardown => f.write_str("gateway-teardown"),
            Step::TargetTeardown => f.write_str("target-teardown"),
        }
    }
}

/// What happened to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Attack alarm (from the target's detector or an operator). `proxies` is the set
    /// chosen for this target, used if a divert starts now.
    Alarm {
        proxies: Vec<String>,
    },
    /// The attack has ended (target's detector or operator).
    AllClear,
    /// A proxy in the set is attacked or dead; `replacement` is the proxy chosen to
    /// take its place, if the pool has one.
    ProxyLost {
        proxy: String,
        replacement: Option<String>,
    },
    /// A diverted target whose set is shorter than wanted gets `proxy` (a proxy that is
    /// usable again: it came back up, or its `attacked` mark expired). Taken only in
    /// `Diverted`: a running plan finishes first, and the driver offers the proxy again
    /// once the target is back in `Diverted`.
    ProxyAdded {
        proxy: String,
    },
    StepDone {
        epoch: u64,
        step: Step,
    },
    StepFailed {
        epoch: u64,
        step: Step,
        error: String,
    },
}

/// The durable state of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub phase: Phase,
    pub epoch: u64,
    /// Proxies currently assigned (published or being published).
    pub proxies: Vec<String>,
    /// Stages still to run; the front stage is running.
    pub stages: VecDeque<Vec<Step>>,
    pub last_error: Option<String>,
    /// Time (ms, caller's clock) of the last phase change.
    pub since_ms: u64,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            phase: Phase::Normal,
            epoch: 0,
            proxies: Vec::new(),
            stages: VecDeque::new(),
            last_error: None,
            since_ms: 0,
        }
    }
}

/// The result of applying an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `(from, to)` when the phase changed.
    pub transition: Option<(Phase, Phase)>,
    /// Steps the driver must start now (the whole of a newly started stage).
    pub start: Vec<Step>,
    /// Whether the state changed at all (and so must be persisted).
    pub changed: bool,
}

fn divert_plan(proxies: &[String], retired: &[String]) -> VecDeque<Vec<Step>> {
    let mut first = vec![Step::GatewaySetup, Step::TargetSetup];
    first.extend(proxies.iter().cloned().map(Step::ProxySetup));
    let mut plan = VecDeque::from([
        first,
        vec![Step::DnsPublish],
        vec![Step::NotifyResolvers],
        vec![Step::PushRoutes],
    ]);
    if !retired.is_empty() {
        plan.push_back(retired.iter().cloned().map(Step::ProxyTeardown).collect());
    }
    plan
}

fn restore_plan(proxies: &[String]) -> VecDeque<Vec<Step>> {
    let mut last = vec![Step::GatewayTeardown, Step::TargetTeardown];
    last.extend(proxies.iter().cloned().map(Step::ProxyTeardown));
    VecDeque::from([
        vec![Step::DnsRestore],
        vec![Step::NotifyResolvers, Step::Drain],
        last,
    ])
}

fn reset_plan(new: Option<&String>, lost: &str) -> VecDeque<Vec<Step>> {
    let mut first = vec![Step::GatewaySetup];
    first.extend(new.cloned().map(Step::ProxySetup));
    if new.is_some() {
        first.push(Step::TargetRoutes);
    }
    VecDeque::from([
        first,
        vec![Step::DnsPublish],
        vec![Step::NotifyResolvers],
        // Clients of the lost proxy get their new route before the old one is torn down.
        vec![Step::PushRoutes],
        vec![Step::ProxyTeardown(lost.to_string())],
    ])
}

/// A proxy joins a diverted target's set: like a reset without a tear-down. The gateway
/// admits it and it relays before DNS lists it, as in a divert.
fn add_plan(new: &str) -> VecDeque<Vec<Step>> {
    VecDeque::from([
        vec![
            Step::GatewaySetup,
            Step::ProxySetup(new.to_string()),
            Step::TargetRoutes,
        ],
        vec![Step::DnsPublish],
        vec![Step::NotifyResolvers],
        vec![Step::PushRoutes],
    ])
}

impl TargetState {
    /// Steps of the running stage (what a restarted driver must run again).
    pub fn running(&self) -> &[Step] {
        self.stages.front().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether `step` of `epoch` is still to be done (a retry is still wanted).
    pub fn is_pending(&self, epoch: u64, step: &Step) -> bool {
        epoch == self.epoch && self.running().contains(step)
    }

    fn enter(&mut self, now_ms: u64, phase: Phase, plan: VecDeque<Vec<Step>>, out: &mut Outcome) {
        out.transition = Some((self.phase, phase));
        self.phase = phase;
        self.epoch += 1;
        self.stages = plan;
        self.last_error = None;
        self.since_ms = now_ms;
        out.start = self.running().to_vec();
        out.changed = true;
    }

    pub fn apply(&mut self, now_ms: u64, event: Event) -> Outcome {
        let mut out = Outcome::default();
        match event {
            Event::Alarm { proxies } => match self.phase {
                Phase::Normal | Phase::Restoring => {
                    // From restoring, proxies that are being torn down come back: the
                    // divert plan sets every chosen proxy up again (idempotent).
                    self.proxies = proxies;
                    let plan = divert_plan(&self.proxies, &[]);
                    self.enter(now_ms, Phase::Diverting, plan, &mut out);
                }
                Phase::Diverting | Phase::Diverted | Phase::Resetting => {}
            },
            Event::AllClear => {
                if self.phase.is_diverted() {
                    let plan = restore_plan(&self.proxies);
                    self.enter(now_ms, Phase::Restoring, plan, &mut out);
                }
            }
            Event::ProxyLost { proxy, replacement } => {
                if self.phase.is_diverted() && self.proxies.contains(&proxy) {
                    self.proxies.retain(|p| *p != proxy);
                    let replacement = replacement.filter(|r| !self.proxies.contains(r));
                    if let Some(r) = &replacement {
                        self.proxies.push(r.clone());
                    }
                    let plan = if self.phase == Phase::Diverted {
                        reset_plan(replacement.as_ref(), &proxy)
                    } else {
                        // Mid-plan: redo the whole (idempotent) divert for the new set,
                        // so no step of the interrupted plan is lost.
                        divert_plan(&self.proxies, std::slice::from_ref(&proxy))
                    };
                    let next = if self.phase == Phase::Diverting {
                        Phase::Diverting
                    } else {
                        Phase::Resetting
                    };
                    self.enter(now_ms, next, plan, &mut out);
                }
            }
            Event::ProxyAdded { proxy } => {
                if self.phase == Phase::Diverted && !self.proxies.contains(&proxy) {
                    self.proxies.push(proxy);
                    let plan = add_plan(self.proxies.last().expect("just pushed"));
                    self.enter(now_ms, Phase::Resetting, plan, &mut out);
                }
            }
            Event::StepDone { epoch, step } => {
                if !self.is_pending(epoch, &step) {
                    return out;
                }
                out.changed = true;
                let stage = self.stages.front_mut().expect("pending implies a stage");
                stage.retain(|s| *s != step);
                if stage.is_empty() {
                    self.stages.pop_front();
                    if self.stages.is_empty() {
                        let done = match self.phase {
                            Phase::Diverting | Phase::Resetting => Phase::Diverted,
                            Phase::Restoring => {
                                self.proxies.clear();
                                Phase::Normal
                            }
                            p => p,
                        };
                        out.transition = Some((self.phase, done));
                        self.phase = done;
                        self.since_ms = now_ms;
                        self.last_error = None;
                    } else {
                        out.start = self.running().to_vec();
                    }
                }
            }
            Event::StepFailed { epoch, step, error } => {
                if self.is_pending(epoch, &step) {
                    self.last_error = Some(format!("{step}: {error}"));
                    out.changed = true;
                }
            }
        }
        out
    }
}

/// What the coordinator knows of a proxy when choosing a target's proxy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub organisation: String,
    pub capacity_mbps: u32,
    /// How many targets the proxy already serves.
    pub serving: u32,
    /// Up, registered and not attacked.
    pub usable: bool,
}

/// Chooses up to `k` usable proxies, best first: spread over organisations (so one
/// member's outage does not take a target's whole set), and within that by free
/// capacity (`capacity / (1 + serving)`), name as the tie-break so the choice is
/// reproducible. Never returns an unusable proxy or one in `exclude`.
pub fn choose_proxies(pool: &[Candidate], k: usize, exclude: &[String]) -> Vec<String> {
    let mut usable: Vec<&Candidate> = pool
        .iter()
        .filter(|c| c.usable && !exclude.contains(&c.name))
        .collect();
    let score = |c: &Candidate| (c.capacity_mbps as u64 * 1000) / (1 + c.serving as u64);
    usable.sort_by(|a, b| score(b).cmp(&score(a)).then_with(|| a.name.cmp(&b.name)));
    let mut chosen: Vec<String> = Vec::new();
    let mut orgs_used: Vec<&str> = Vec::new();
    // Rounds: each round takes at most one proxy per organisation not yet used in it.
    while chosen.len() < k {
        let before = chosen.len();
        orgs_used.clear();
        for c in &usable {
            if chosen.len() == k {
                break;
            }
            if chosen.contains(&c.name) || orgs_used.contains(&c.organisation.as_str()) {
                continue;
            }
            orgs_used.push(&c.organisation);
            chosen.push(c.name.clone());
        }
        if chosen.len() == before {
            break;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Runs every started step to completion, returning the final outcome chain.
    fn complete_all(s: &mut TargetState, mut start: Vec<Step>) -> Vec<(Phase, Phase)> {
        let mut transitions = Vec::new();
        let mut guard = 0;
        while let Some(step) = start.pop() {
            guard += 1;
            assert!(guard < 100, "plan does not terminate");
            let o = s.apply(
                0,
                Event::StepDone {
                    epoch: s.epoch,
                    step,
                },
            );
            transitions.extend(o.transition);
            start.extend(o.start);
        }
        transitions
    }

    fn diverted(proxies: &[&str]) -> TargetState {
        let mut s = TargetState::default();
        let o = s.apply(
            1,
            Event::Alarm {
                proxies: p(proxies),
            },
        );
        complete_all(&mut s, o.start);
        assert_eq!(s.phase, Phase::Diverted);
        s
    }

    #[test]
    fn divert_sets_routes_up_before_publishing() {
        let mut s = TargetState::default();
        let o = s.apply(
            5,
            Event::Alarm {
                proxies: p(&["p1", "p2"]),
            },
        );
        assert_eq!(o.transition, Some((Phase::Normal, Phase::Diverting)));
        assert_eq!(s.epoch, 1);
        assert!(o.start.contains(&Step::GatewaySetup));
        assert!(o.start.contains(&Step::TargetSetup));
        assert!(o.start.contains(&Step::ProxySetup("p1".into())));
        assert!(!o.start.contains(&Step::DnsPublish));
        // Pushes to client agents come last: after DNS lists the proxies and the
        // resolvers dropped their cached answers.
        let order: Vec<Vec<Step>> = s.stages.iter().cloned().collect();
        assert_eq!(
            order[1..],
            [
                vec![Step::DnsPublish],
                vec![Step::NotifyResolvers],
                vec![Step::PushRoutes]
            ]
        );
        let t = complete_all(&mut s, o.start);
        assert_eq!(t, vec![(Phase::Diverting, Phase::Diverted)]);
        assert!(s.stages.is_empty());
        assert_eq!(s.proxies, p(&["p1", "p2"]));
    }

    #[test]
    fn restore_withdraws_dns_then_drains_then_tears_down() {
        let mut s = diverted(&["p1"]);
        let o = s.apply(9, Event::AllClear);
        assert_eq!(o.transition, Some((Phase::Diverted, Phase::Restoring)));
        assert_eq!(o.start, vec![Step::DnsRestore]);
        let o = s.apply(
            9,
            Event::StepDone {
                epoch: s.epoch,
                step: Step::DnsRestore,
            },
        );
        assert_eq!(o.start, vec![Step::NotifyResolvers, Step::Drain]);
        let t = complete_all(&mut s, o.start);
        assert_eq!(t, vec![(Phase::Restoring, Phase::Normal)]);
        assert!(s.proxies.is_empty());
    }

    #[test]
    fn failed_step_stays_pending_and_blocks_progress() {
        let mut s = TargetState::default();
        let o = s.apply(
            0,
            Event::Alarm {
                proxies: p(&["p1"]),
            },
        );
        let epoch = s.epoch;
        let o2 = s.apply(
            0,
            Event::StepFailed {
                epoch,
                step: Step::GatewaySetup,
                error: "not available".into(),
            },
        );
        assert!(o2.changed);
        assert!(s.last_error.as_deref().unwrap().contains("not available"));
        assert!(s.is_pending(epoch, &Step::GatewaySetup));
        // Everything else done: still diverting, the failed step is not skipped.
        for step in o.start.into_iter().filter(|s| *s != Step::GatewaySetup) {
            s.apply(0, Event::StepDone { epoch, step });
        }
        assert_eq!(s.phase, Phase::Diverting);
        assert_eq!(s.running(), &[Step::GatewaySetup]);
        // The retry succeeds.
        let o = s.apply(
            0,
            Event::StepDone {
                epoch,
                step: Step::GatewaySetup,
            },
        );
        assert_eq!(o.start, vec![Step::DnsPublish]);
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut s = TargetState::default();
        s.apply(
            0,
            Event::Alarm {
                proxies: p(&["p1"]),
            },
        );
        let old = s.epoch;
        s.apply(0, Event::AllClear);
        let before = s.clone();
        let o = s.apply(
            0,
            Event::StepDone {
                epoch: old,
                step: Step::GatewaySetup,
            },
        );
        assert!(!o.changed);
        assert_eq!(s, before);
    }

    #[test]
    fn proxy_reset_swaps_the_proxy_out() {
        let mut s = diverted(&["p1", "p2"]);
        let o = s.apply(
            3,
            Event::ProxyLost {
                proxy: "p1".into(),
                replacement: Some("p3".into()),
            },
        );
        assert_eq!(o.transition, Some((Phase::Diverted, Phase::Resetting)));
        assert_eq!(s.proxies, p(&["p2", "p3"]));
        assert!(o.start.contains(&Step::ProxySetup("p3".into())));
        // The new proxy pushes to the moved clients before the lost one is torn down.
        let push = s
            .stages
            .iter()
            .position(|st| st.contains(&Step::PushRoutes));
        let down = s
            .stages
            .iter()
            .position(|st| st.contains(&Step::ProxyTeardown("p1".into())));
        assert!(push.unwrap() < down.unwrap(), "{:?}", s.stages);
        let t = complete_all(&mut s, o.start);
        assert_eq!(t, vec![(Phase::Resetting, Phase::Diverted)]);
    }

    #[test]
    fn proxy_lost_mid_divert_keeps_every_step() {
        let mut s = TargetState::default();
        s.apply(
            0,
            Event::Alarm {
                proxies: p(&["p1", "p2"]),
            },
        );
        let o = s.apply(
            0,
            Event::ProxyLost {
                proxy: "p1".into(),
                replacement: None,
            },
        );
        assert_eq!(s.phase, Phase::Diverting);
        assert!(o.start.contains(&Step::ProxySetup("p2".into())));
        assert!(s.stages.iter().flatten().any(|st| *st == Step::DnsPublish));
        assert!(s
            .stages
            .iter()
            .flatten()
            .any(|st| *st == Step::ProxyTeardown("p1".into())));
        let t = complete_all(&mut s, o.start);
        assert_eq!(t, vec![(Phase::Diverting, Phase::Diverted)]);
    }

    /// Every event in every phase: the resulting phase is the one the design says.
    #[test]
    fn exhaustive_transitions() {
        let events = || {
            vec![
                (
                    "alarm",
                    Event::Alarm {
                        proxies: p(&["p1", "p2"]),
                    },
                ),
                ("all_clear", Event::AllClear),
                (
                    "lost_member",
                    Event::ProxyLost {
                        proxy: "p1".into(),
                        replacement: Some("p3".into()),
                    },
                ),
                (
                    "lost_stranger",
                    Event::ProxyLost {
                        proxy: "p9".into(),
                        replacement: Some("p3".into()),
                    },
                ),
                ("added_newcomer", Event::ProxyAdded { proxy: "p5".into() }),
                ("added_member", Event::ProxyAdded { proxy: "p1".into() }),
            ]
        };
        let in_phase = |phase: Phase| -> TargetState {
            let mut s = TargetState::default();
            match phase {
                Phase::Normal => {}
                Phase::Diverting => {
                    s.apply(
                        0,
                        Event::Alarm {
                            proxies: p(&["p1", "p2"]),
                        },
                    );
                }
                Phase::Diverted => s = diverted(&["p1", "p2"]),
                Phase::Restoring => {
                    s = diverted(&["p1", "p2"]);
                    s.apply(0, Event::AllClear);
                }
                Phase::Resetting => {
                    s = diverted(&["p1", "p2"]);
                    s.apply(
                        0,
                        Event::ProxyLost {
                            proxy: "p2".into(),
                            replacement: Some("p4".into()),
                        },
                    );
                }
            }
            assert_eq!(s.phase, phase);
            s
        };
        use Phase::*;
        let expect = |from: Phase, ev: &str| -> Phase {
            match (from, ev) {
                (Normal, "alarm") | (Restoring, "alarm") => Diverting,
                (Normal, _) => Normal,
                (Restoring, _) => Restoring,
                (p, "alarm") => p,
                (_, "all_clear") => Restoring,
                (Diverting, "lost_member") => Diverting,
                (_, "lost_member") => Resetting,
                (p, "lost_stranger") => p,
                // Only a resting diverted target takes a proxy in, and only a new one.
                (Diverted, "added_newcomer") => Resetting,
                (p, "added_newcomer") | (p, "added_member") => p,
                _ => unreachable!(),
            }
        };
        for phase in Phase::ALL {
            for (name, ev) in events() {
                let mut s = in_phase(phase);
                let epoch = s.epoch;
                let o = s.apply(7, ev);
                let want = expect(phase, name);
                assert_eq!(s.phase, want, "{phase} + {name}");
                assert_eq!(o.transition.is_some(), s.epoch != epoch, "{phase} + {name}");
                if o.transition.is_some() {
                    assert_eq!(s.epoch, epoch + 1);
                    assert!(!o.start.is_empty(), "{phase} + {name} starts nothing");
                }
                // Whatever happened, the plan runs to a resting phase.
                let start = o.start.clone();
                let resting = if start.is_empty() && s.stages.is_empty() {
                    s.phase
                } else {
                    let mut start = start;
                    if start.is_empty() {
                        start = s.running().to_vec();
                    }
                    complete_all(&mut s, start);
                    s.phase
                };
                assert!(
                    matches!(resting, Normal | Diverted),
                    "{phase} + {name} rests in {resting}"
                );
            }
        }
    }

    #[test]
    fn proxy_added_to_a_short_set_is_set_up_before_it_is_published() {
        // p2 was lost with no replacement: the set is short.
        let mut s = diverted(&["p1", "p2"]);
        let o = s.apply(
            1,
            Event::ProxyLost {
                proxy: "p2".into(),
                replacement: None,
            },
        );
        complete_all(&mut s, o.start);
        assert_eq!(s.proxies, p(&["p1"]));
        let epoch = s.epoch;

        let o = s.apply(2, Event::ProxyAdded { proxy: "p2".into() });
        assert_eq!(o.transition, Some((Phase::Diverted, Phase::Resetting)));
        assert_eq!(s.epoch, epoch + 1);
        assert_eq!(s.since_ms, 2);
        assert_eq!(s.proxies, p(&["p1", "p2"]));
        // The gateway admits it and it relays first (in 4.3 the target routes its relays
        // back); DNS lists it only then, the resolvers are told, the 4.2 pushes follow;
        // nothing is torn down.
        assert_eq!(
            o.start,
            vec![
                Step::GatewaySetup,
                Step::ProxySetup("p2".into()),
                Step::TargetRoutes
            ]
        );
        let rest: Vec<Vec<Step>> = s.stages.iter().skip(1).cloned().collect();
        assert_eq!(
            rest,
            vec![
                vec![Step::DnsPublish],
                vec![Step::NotifyResolvers],
                vec![Step::PushRoutes]
            ]
        );
        let t = complete_all(&mut s, o.start);
        assert_eq!(t, vec![(Phase::Resetting, Phase::Diverted)]);
        assert_eq!(s.proxies, p(&["p1", "p2"]));
    }

    #[test]
    fn proxy_added_is_ignored_outside_a_resting_divert() {
        // A member again, or any phase but Diverted: no change at all.
        let mut s = diverted(&["p1"]);
        let before = s.clone();
        let o = s.apply(3, Event::ProxyAdded { proxy: "p1".into() });
        assert_eq!(o, Outcome::default());
        assert_eq!(s, before);

        let mut s = TargetState::default();
        let o = s.apply(3, Event::ProxyAdded { proxy: "p1".into() });
        assert!(!o.changed);
        assert!(s.proxies.is_empty(), "a normal target has no proxies");

        let mut s = TargetState::default();
        s.apply(
            0,
            Event::Alarm {
                proxies: p(&["p1"]),
            },
        );
        let before = s.clone();
        let o = s.apply(3, Event::ProxyAdded { proxy: "p2".into() });
        assert!(!o.changed);
        assert_eq!(s, before, "a divert in progress keeps its plan");

        // The event's stored form (audit log) round-trips.
        let ev = Event::ProxyAdded { proxy: "p2".into() };
        let j = serde_json::to_string(&ev).unwrap();
        assert!(j.contains("proxy_added"), "{j}");
        assert_eq!(serde_json::from_str::<Event>(&j).unwrap(), ev);
    }

    #[test]
    fn choice_spreads_organisations_and_skips_unusable() {
        let c = |name: &str, org: &str, cap: u32, serving: u32, usable: bool| Candidate {
            name: name.into(),
            organisation: org.into(),
            capacity_mbps: cap,
            serving,
            usable,
        };
        let pool = vec![
            c("a1", "a", 1000, 0, true),
            c("a2", "a", 900, 0, true),
            c("b1", "b", 100, 0, true),
            c("c1", "c", 5000, 0, false),
            c("d1", "d", 800, 3, true),
        ];
        assert_eq!(choose_proxies(&pool, 3, &[]), p(&["a1", "d1", "b1"]));
        assert_eq!(choose_proxies(&pool, 4, &[]), p(&["a1", "d1", "b1", "a2"]));
        assert_eq!(choose_proxies(&pool, 10, &[]).len(), 4);
        assert_eq!(choose_proxies(&pool, 2, &p(&["a1"])), p(&["a2", "d1"]));
        assert!(choose_proxies(&[], 3, &[]).is_empty());
    }

    #[test]
    fn restore_pushes_nothing() {
        let mut s = diverted(&["p1"]);
        s.apply(0, Event::AllClear);
        assert!(!s.stages.iter().flatten().any(|st| *st == Step::PushRoutes));
        assert_eq!(Step::PushRoutes.to_string(), "push-routes");
        let j = serde_json::to_string(&Step::PushRoutes).unwrap();
        assert_eq!(serde_json::from_str::<Step>(&j).unwrap(), Step::PushRoutes);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = TargetState::default();
        s.apply(
            0,
            Event::Alarm {
                proxies: p(&["p1"]),
            },
        );
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TargetState>(&j).unwrap(), s);
    }
}
