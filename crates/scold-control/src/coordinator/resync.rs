//! What a node that registers again while a target it serves is diverted is owed.

use super::*;
use scold_proto::identity::Role;
use scold_proto::state::{Step, TargetState};
use std::fmt;
use std::time::Duration;

/// A node that registers again gets its set-up orders again: this many tries, the first
/// after [`RESYNC_FIRST`] (it registers just before its command service is up), each
/// wait twice the one before.
pub(super) const RESYNC_TRIES: u32 = 5;
pub(super) const RESYNC_FIRST: Duration = Duration::from_millis(300);

/// Which node role carries out a step's orders.
pub(super) fn step_role(step: &Step) -> Role {
    match step {
        Step::GatewaySetup | Step::GatewayTeardown => Role::Gateway,
        Step::TargetSetup | Step::TargetRoutes | Step::TargetTeardown => Role::Target,
        _ => Role::Proxy,
    }
}

/// One part of the orders a node that registered again is sent for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resend {
    /// The orders of the step addressed to the node itself.
    Own(Step),
    /// Every order of the step: other nodes hold the node's tunnel end point, which it
    /// announced anew (a new address or key after a restart).
    All(Step),
    /// Scheme 4.2: the pushes of this client agent's route, through its proxy.
    PushTo(String),
}

impl fmt::Display for Resend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resend::Own(step) => write!(f, "{step}"),
            Resend::All(step) => write!(f, "{step} (all nodes)"),
            Resend::PushTo(client) => write!(f, "push-routes(client/{client})"),
        }
    }
}

/// What `role/name`, registering (again) now, is owed for a target in state `st`: its
/// part of the set-up steps of a diverted target it takes part in. A proxy of the set
/// gets its relay (and in 4.2 its pushes), a gateway of the target its admitted proxies,
/// the target its return path, a 4.2 client agent its route. With `tunnel_changed`, the
/// nodes that hold the node's end point are told the new one as well. Only steps the
/// plan has done (or that are not part of it) are sent again: one still in the plan is
/// run, or retried, by the driver with what is known then (and in 4.2 no push may
/// precede the DNS update). A client's push is the exception while the push step runs:
/// that step works from the client list it read when it started. Empty when nothing
/// is owed.
pub(super) fn resync_steps(
    role: Role,
    name: &str,
    tunnel_changed: bool,
    tcfg: &TargetConfig,
    st: &TargetState,
) -> Vec<Resend> {
    if !st.phase.is_diverted() {
        return Vec::new();
    }
    let push = tcfg.scheme == Scheme::Push;
    let mut out = Vec::new();
    match role {
        Role::Proxy if st.proxies.iter().any(|p| p == name) => {
            out.push(Resend::Own(Step::ProxySetup(name.to_string())));
            if push {
                out.push(Resend::Own(Step::PushRoutes));
            }
            if tunnel_changed {
                out.push(Resend::All(Step::GatewaySetup));
                if tcfg.scheme == Scheme::Nat {
                    // The target routes the proxy's relayed flows back by its address.
                    out.push(Resend::All(Step::TargetSetup));
                }
            }
        }
        Role::Gateway if tcfg.gateways.iter().any(|g| g == name) => {
            out.push(Resend::Own(Step::GatewaySetup));
            if tunnel_changed {
                out.extend(
                    st.proxies
                        .iter()
                        .map(|p| Resend::All(Step::ProxySetup(p.clone()))),
                );
                out.push(Resend::All(Step::TargetSetup));
            }
        }
        Role::Target if tcfg.name == name => out.push(Resend::Own(Step::TargetSetup)),
        Role::Client if push => out.push(Resend::PushTo(name.to_string())),
        _ => {}
    }
    let in_plan =
        |step: &Step, skip: usize| st.stages.iter().skip(skip).flatten().any(|s| s == step);
    out.retain(|r| match r {
        Resend::Own(step) | Resend::All(step) => !in_plan(step, 0),
        Resend::PushTo(_) => !in_plan(&Step::PushRoutes, 1),
    });
    out
}
