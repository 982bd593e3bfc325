//! The coordinator's per-target state machine under any order of events: alarms,
//! all-clears, lost and added proxies, and step results that are current, stale, repeated or
//! invented; plus the durable form of the state and the proxy choice.
//!
//! Invariants checked after every event:
//! - the epoch never decreases, and rises by exactly one exactly when a new plan starts;
//! - `running()` is empty iff no stage is left, and no stage is empty;
//! - `Normal` and `Diverted` have no stages left; `Normal` has no proxies; every other
//!   phase has work left;
//! - `is_pending(e, s)` holds iff `e` is the current epoch and `s` is in the running stage;
//! - an event that reports no change changes nothing; a result for another epoch or a
//!   step not running changes nothing;
//! - the steps the driver is told to start are the running stage;
//! - the state survives its JSON round trip (what the coordinator stores).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scold_proto::state::{choose_proxies, Candidate, Event, Phase, Step, TargetState};

const PROXIES: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];

#[derive(Debug, Arbitrary, Clone, Copy)]
struct ProxyIx(u8);

impl ProxyIx {
    fn name(self) -> String {
        PROXIES[usize::from(self.0) % PROXIES.len()].to_string()
    }
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum FuzzStep {
    GatewaySetup,
    TargetSetup,
    ProxySetup(ProxyIx),
    DnsPublish,
    NotifyResolvers,
    Drain,
    DnsRestore,
    ProxyTeardown(ProxyIx),
    GatewayTeardown,
    TargetTeardown,
}

impl FuzzStep {
    fn step(self) -> Step {
        match self {
            FuzzStep::GatewaySetup => Step::GatewaySetup,
            FuzzStep::TargetSetup => Step::TargetSetup,
            FuzzStep::ProxySetup(p) => Step::ProxySetup(p.name()),
            FuzzStep::DnsPublish => Step::DnsPublish,
            FuzzStep::NotifyResolvers => Step::NotifyResolvers,
            FuzzStep::Drain => Step::Drain,
            FuzzStep::DnsRestore => Step::DnsRestore,
            FuzzStep::ProxyTeardown(p) => Step::ProxyTeardown(p.name()),
            FuzzStep::GatewayTeardown => Step::GatewayTeardown,
            FuzzStep::TargetTeardown => Step::TargetTeardown,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum FuzzEvent {
    Alarm(Vec<ProxyIx>),
    AllClear,
    ProxyLost(ProxyIx, Option<ProxyIx>),
    ProxyAdded(ProxyIx),
    /// A result for the `i`-th running step of the current epoch (what a driver sends).
    RunningDone(u8),
    RunningFailed(u8),
    /// A result for any step at an epoch near the current one (stale, future, invented).
    StepDone(i8, FuzzStep),
    StepFailed(i8, FuzzStep),
    /// The coordinator restarts: the state is reloaded from its stored form.
    Reload,
}

#[derive(Debug, Arbitrary)]
struct FuzzCandidate {
    proxy: ProxyIx,
    org: u8,
    capacity_mbps: u32,
    serving: u32,
    usable: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    events: Vec<(u16, FuzzEvent)>,
    pool: Vec<FuzzCandidate>,
    k: u8,
    exclude: Vec<ProxyIx>,
}

fn check_invariants(s: &TargetState) {
    assert_eq!(s.running().is_empty(), s.stages.is_empty(), "{s:?}");
    assert!(
        s.stages.iter().all(|st| !st.is_empty()),
        "empty stage: {s:?}"
    );
    match s.phase {
        Phase::Normal => {
            assert!(s.stages.is_empty(), "normal with work left: {s:?}");
            assert!(s.proxies.is_empty(), "normal with proxies: {s:?}");
        }
        Phase::Diverted => assert!(s.stages.is_empty(), "diverted with work left: {s:?}"),
        Phase::Diverting | Phase::Restoring | Phase::Resetting => {
            assert!(!s.stages.is_empty(), "{} with no work: {s:?}", s.phase)
        }
    }
}

fn epoch_near(s: &TargetState, d: i8) -> u64 {
    s.epoch.saturating_add_signed(i64::from(d % 3))
}

fn to_event(s: &TargetState, e: &FuzzEvent) -> Option<Event> {
    let running = s.running();
    Some(match e {
        FuzzEvent::Alarm(ps) => Event::Alarm {
            proxies: ps.iter().map(|p| p.name()).collect(),
        },
        FuzzEvent::AllClear => Event::AllClear,
        FuzzEvent::ProxyLost(p, r) => Event::ProxyLost {
            proxy: p.name(),
            replacement: r.map(ProxyIx::name),
        },
        FuzzEvent::ProxyAdded(p) => Event::ProxyAdded { proxy: p.name() },
        FuzzEvent::RunningDone(i) | FuzzEvent::RunningFailed(i) => {
            if running.is_empty() {
                return None;
            }
            let step = running[usize::from(*i) % running.len()].clone();
            if matches!(e, FuzzEvent::RunningDone(_)) {
                Event::StepDone {
                    epoch: s.epoch,
                    step,
                }
            } else {
                Event::StepFailed {
                    epoch: s.epoch,
                    step,
                    error: "refused".into(),
                }
            }
        }
        FuzzEvent::StepDone(d, st) => Event::StepDone {
            epoch: epoch_near(s, *d),
            step: st.step(),
        },
        FuzzEvent::StepFailed(d, st) => Event::StepFailed {
            epoch: epoch_near(s, *d),
            step: st.step(),
            error: "timeout".into(),
        },
        FuzzEvent::Reload => return None,
    })
}

fn run_events(input: &Input) {
    let mut s = TargetState::default();
    let mut now = 0u64;
    check_invariants(&s);
    for (dt, fe) in input.events.iter().take(256) {
        now += u64::from(*dt);
        if let FuzzEvent::Reload = fe {
            let stored = serde_json::to_string(&s).expect("state serialises");
            let back: TargetState = serde_json::from_str(&stored).expect("stored state loads");
            assert_eq!(back, s, "state changed across a reload");
            s = back;
            continue;
        }
        let Some(ev) = to_event(&s, fe) else { continue };
        let before = s.clone();
        let step_probe = match &ev {
            Event::StepDone { epoch, step } | Event::StepFailed { epoch, step, .. } => {
                let pending = before.is_pending(*epoch, step);
                assert_eq!(
                    pending,
                    *epoch == before.epoch && before.running().contains(step),
                    "is_pending disagrees with the running stage"
                );
                Some(pending)
            }
            _ => None,
        };
        let out = s.apply(now, ev.clone());
        check_invariants(&s);

        assert!(
            s.epoch >= before.epoch,
            "epoch went back: {before:?} -> {s:?}"
        );
        assert!(
            s.epoch - before.epoch <= 1,
            "epoch jumped: {before:?} -> {s:?}"
        );
        let new_plan = s.epoch == before.epoch + 1;
        if new_plan {
            assert!(out.transition.is_some(), "new epoch without a transition");
            assert!(out.changed);
            assert!(s.last_error.is_none());
            assert_eq!(s.since_ms, now);
        }
        if !out.start.is_empty() {
            assert_eq!(
                out.start.as_slice(),
                s.running(),
                "start is not the running stage"
            );
        }
        if let Some((from, to)) = out.transition {
            assert_eq!(from, before.phase);
            assert_eq!(to, s.phase);
            assert!(out.changed);
        }
        if !out.changed {
            assert_eq!(s, before, "state changed but the outcome says it did not");
            assert!(out.start.is_empty() && out.transition.is_none());
        }
        if step_probe == Some(false) {
            assert_eq!(s, before, "a result that was not pending changed the state");
        }
        if let (Some(true), Event::StepFailed { .. }) = (step_probe, &ev) {
            assert_eq!(s.stages, before.stages, "a failed step must stay pending");
            assert!(s.last_error.is_some());
        }
        if let Event::ProxyAdded { proxy } = &ev {
            // Taken only by a resting divert, and only a proxy not yet in the set.
            let taken = before.phase == Phase::Diverted && !before.proxies.contains(proxy);
            assert_eq!(out.changed, taken, "{before:?} + {ev:?}");
            if taken {
                assert_eq!(s.phase, Phase::Resetting);
                assert_eq!(s.proxies.iter().filter(|p| *p == proxy).count(), 1);
                assert!(s.running().contains(&Step::ProxySetup(proxy.clone())));
            }
        }
        if let (Some(true), Event::StepDone { step, .. }) = (step_probe, &ev) {
            assert!(
                !s.is_pending(before.epoch, step),
                "a done step is still pending"
            );
        }
    }
}

fn run_choice(input: &Input) {
    // The coordinator's pool has one entry per registered proxy name.
    let mut pool: Vec<Candidate> = Vec::new();
    for c in input.pool.iter().map(|c| Candidate {
        name: c.proxy.name(),
        organisation: format!("org{}", c.org % 4),
        capacity_mbps: c.capacity_mbps,
        serving: c.serving,
        usable: c.usable,
    }) {
        if !pool.iter().any(|p| p.name == c.name) {
            pool.push(c);
        }
    }
    let exclude: Vec<String> = input.exclude.iter().map(|p| p.name()).collect();
    let k = usize::from(input.k % 8);
    let chosen = choose_proxies(&pool, k, &exclude);
    assert!(chosen.len() <= k);
    for (i, name) in chosen.iter().enumerate() {
        assert!(!exclude.contains(name), "chose excluded {name}");
        assert!(
            pool.iter().any(|c| &c.name == name && c.usable),
            "chose {name}, which no usable candidate has"
        );
        assert!(!chosen[..i].contains(name), "chose {name} twice");
    }
    // Spread: the first round takes one proxy from each organisation.
    let org_of = |n: &String| {
        pool.iter()
            .find(|c| &c.name == n)
            .map(|c| c.organisation.clone())
            .expect("chosen from the pool")
    };
    let mut orgs: Vec<String> = pool
        .iter()
        .filter(|c| c.usable && !exclude.contains(&c.name))
        .map(|c| c.organisation.clone())
        .collect();
    orgs.sort();
    orgs.dedup();
    let first_round = orgs.len().min(k);
    let mut seen: Vec<String> = Vec::new();
    for n in &chosen[..first_round] {
        let o = org_of(n);
        assert!(
            !seen.contains(&o),
            "organisation {o} chosen twice before others: {chosen:?}"
        );
        seen.push(o);
    }
    // Fewer than k only when no other usable, non-excluded name is left.
    if chosen.len() < k {
        for c in pool
            .iter()
            .filter(|c| c.usable && !exclude.contains(&c.name))
        {
            assert!(
                chosen.contains(&c.name),
                "left out usable {} with room for more",
                c.name
            );
        }
    }
}

fuzz_target!(|input: Input| {
    run_events(&input);
    run_choice(&input);
});
