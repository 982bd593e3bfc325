//! Control messages between SCOLD daemons, and who may send which.
//!
//! Every message travels in one frame (see [`crate::frame`]) as JSON. Either side of a
//! connection may send requests; each carries an id chosen by its sender, and the answer
//! echoes it. Commands that change state carry an epoch: the coordinator raises a
//! target's epoch on every phase change, and a node refuses a command older than the
//! newest it has applied for that target, so a replayed or reordered message does no
//! harm. Commands are idempotent, so a retry of the same epoch is harmless too.

use crate::dataplane;
use crate::identity::{Identity, Role};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use thiserror::Error;

/// Which of the paper's indirect-route schemes (Section 4) a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheme {
    /// 4.1: client agents learn the proxies from ALT records.
    #[serde(rename = "4.1")]
    Resolver,
    /// 4.2: proxies push the route to client agents.
    #[serde(rename = "4.2")]
    Push,
    /// 4.3: the A records name the proxies, which relay the target's service ports as a
    /// NAT; clients run no SCOLD software.
    #[serde(rename = "4.3")]
    Nat,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::Resolver, Scheme::Push, Scheme::Nat];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Resolver => "4.1",
            Scheme::Push => "4.2",
            Scheme::Nat => "4.3",
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scheme name that is none of `4.1`, `4.2`, `4.3`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown scheme {0:?}: write 4.1, 4.2 or 4.3")]
pub struct UnknownScheme(pub String);

impl std::str::FromStr for Scheme {
    type Err = UnknownScheme;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheme::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| UnknownScheme(s.to_string()))
    }
}

pub type RequestId = u64;

/// One control-channel message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    Request { id: RequestId, request: Request },
    Response { id: RequestId, response: Response },
}

/// What a node tells the coordinator about itself when it (re)connects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The address clients or proxies reach this node at (proxies: the public address
    /// that goes into ALT records).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Capacity the node offers, in Mbit/s (proxies).
    #[serde(default)]
    pub capacity_mbps: Option<u32>,
    /// Organisation of the consortium that contributes the node.
    #[serde(default)]
    pub organisation: Option<String>,
    /// Software version, for the operator's view.
    #[serde(default)]
    pub version: String,
    /// This node's tunnel end point, which the coordinator passes to the nodes at the
    /// other end (a gateway's to its proxies, a proxy's to its gateway).
    #[serde(default)]
    pub tunnel: Option<TunnelInfo>,
}

/// How other nodes reach a node's tunnel end point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// Outer address and UDP port (udp, wireguard); for ipip only the address counts.
    pub endpoint: std::net::SocketAddr,
    pub encap: dataplane::Encap,
    /// WireGuard public key (wireguard only).
    #[serde(default)]
    pub public_key: Option<dataplane::PublicKey>,
    /// Gateways: their address on the target's network, the next hop of the target's
    /// return path. Proxies with a NAT relay (scheme 4.3): the source address of the
    /// flows they relay, which the target routes back through its gateway.
    #[serde(default)]
    pub inside: Option<IpAddr>,
    /// Engine threads the node reads its tunnel with (its `[tunnel] engines`), when
    /// more than one: packets to it go in GSO runs that each keep to one steering
    /// bucket, so that every flow reaches one of its engines, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    // --- nodes -> coordinator -------------------------------------------------------
    /// A proxy, gateway, target or client announces itself after connecting.
    Register(NodeInfo),
    /// Liveness; a node that stays silent is marked down.
    Heartbeat {
        seq: u64,
        /// What the node carries now (proxies), for the operator's view.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        load: Option<NodeLoad>,
    },
    /// A target reports an attack on its main link (paper Sec. 3 step 1).
    Alarm {
        target: String,
        /// Free-form summary from the detector: rates, protocol mix, top sources.
        #[serde(default)]
        summary: serde_json::Value,
    },
    /// A target reports that the attack has ended (after its hold-down time).
    AllClear {
        target: String,
    },
    /// A proxy reports a severe attack on itself (paper Sec. 4.4).
    ProxyAttacked {
        proxy: String,
        #[serde(default)]
        summary: serde_json::Value,
    },
    /// A proxy reports attack sources it filtered (traceback information).
    Traceback {
        proxy: String,
        sources: Vec<IpAddr>,
    },

    // --- coordinator -> nodes -------------------------------------------------------
    /// Data-plane orders for one target (route set-up, tear-down, ...), applied in
    /// order; each is idempotent.
    ///
    /// `leader`: the sending coordinator's leadership epoch when it runs as replicas
    /// (the create revision of its etcd leader key; 0 for a coordinator alone). A node
    /// refuses an order from an older leadership than one it already obeyed, so a
    /// deposed leader can do no harm ([`EpochGuard::admit_leader`]).
    Dataplane {
        target: String,
        epoch: u64,
        commands: Vec<dataplane::Command>,
        #[serde(default, skip_serializing_if = "is_zero")]
        leader: u64,
    },
    /// A proxy tells the client sites' resolvers, with a TSIG-signed NOTIFY, to drop
    /// their cached answer for `fqdn` (paper Sec. 3 step 4).
    Notify {
        target: String,
        epoch: u64,
        fqdn: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        leader: u64,
    },
    /// Re-read the config file and apply what can change while running (what an
    /// operator's `scold ctl reload NODE` becomes at the node). Answered with
    /// [`Reply::Reloaded`], or `Failed` naming the file and line when the new config
    /// cannot be used (the running one stays).
    Reload,

    // --- operator -> coordinator ----------------------------------------------------
    Status,
    Proxies,
    Events {
        limit: u32,
        /// Only events about this subject: a target's name, or `role/name` of a node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Only events of this kind (`phase`, `registered`, `health`, `resync`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    Divert {
        target: String,
    },
    Restore {
        target: String,
    },
    /// Have a node (`role/name`, or a name alone when only one node has it) re-read its
    /// config file; the coordinator forwards [`Request::Reload`] over the node's control
    /// channel and returns its answer. `coordinator` names the coordinator itself.
    ReloadNode {
        node: String,
    },
    /// Adds a proxy to the pool at run time, bound to `address` (what ALT may carry):
    /// pending until approved.
    ProxyAdd {
        name: String,
        address: IpAddr,
        #[serde(default)]
        capacity_mbps: Option<u32>,
        #[serde(default)]
        organisation: Option<String>,
    },
    /// Makes a pending proxy a member: it may be chosen from now on.
    ProxyApprove {
        name: String,
    },
    /// Takes a proxy out of service without an attack: chosen for nothing, and moved
    /// out of every ALT set with a replacement (the paper's 4.4 path).
    ProxyDrain {
        name: String,
    },
    /// Forgets a drained (or pending) proxy added at run time.
    ProxyRemove {
        name: String,
    },
    /// Adds a target at run time: `config` is one `[[target]]` table of the
    /// coordinator's config file, as JSON.
    TargetAdd {
        config: serde_json::Value,
    },
    /// Forgets a target added at run time (it must be in its normal phase).
    TargetRemove {
        name: String,
    },
    /// A target's configuration and phase.
    TargetShow {
        name: String,
    },
}

impl Request {
    /// Short stable name, used in logs and as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Register(_) => "register",
            Request::Heartbeat { .. } => "heartbeat",
            Request::Alarm { .. } => "alarm",
            Request::AllClear { .. } => "all_clear",
            Request::ProxyAttacked { .. } => "proxy_attacked",
            Request::Traceback { .. } => "traceback",
            Request::Dataplane { .. } => "dataplane",
            Request::Notify { .. } => "notify",
            Request::Status => "status",
            Request::Proxies => "proxies",
            Request::Events { .. } => "events",
            Request::Divert { .. } => "divert",
            Request::Restore { .. } => "restore",
            Request::Reload => "reload",
            Request::ReloadNode { .. } => "reload_node",
            Request::ProxyAdd { .. } => "proxy_add",
            Request::ProxyApprove { .. } => "proxy_approve",
            Request::ProxyDrain { .. } => "proxy_drain",
            Request::ProxyRemove { .. } => "proxy_remove",
            Request::TargetAdd { .. } => "target_add",
            Request::TargetRemove { .. } => "target_remove",
            Request::TargetShow { .. } => "target_show",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Response {
    Ok { reply: Reply },
    Refused(Refusal),
    Failed { message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Registered {
        heartbeat_ms: u64,
    },
    Status(StatusReport),
    Proxies {
        proxies: Vec<ProxyView>,
    },
    Events {
        events: Vec<EventView>,
    },
    /// The current phase of a target after an operator or alarm request.
    Target(TargetView),
    /// Results of data-plane orders, one per command.
    Dataplane {
        replies: Vec<dataplane::Reply>,
    },
    /// What a config reload changed.
    Reloaded(ReloadReport),
    /// A target's configuration (its `[[target]]` table as JSON), whether it was added
    /// at run time, and its phase.
    TargetConfig {
        config: serde_json::Value,
        runtime: bool,
        view: TargetView,
    },
}

/// The answer to a config reload: which keys of the file changed and took effect at
/// once, and which changed but wait for a restart (the running value stays until then).
/// Keys are dotted paths into the TOML file (`filter.pps`, `admission.connections`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The daemon that reloaded (`proxy/p1`, `coordinator`, `dns`).
    #[serde(default)]
    pub node: String,
    /// The config file it read.
    #[serde(default)]
    pub file: String,
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
    /// Changes the daemon could apply live but not now, each `key: why` (a diverted
    /// target's gateways); the running value stays. Left out when empty, so older
    /// readers see the report they know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "nothing".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "{} reloaded {}: applied {}; needs a restart: {}",
            if self.node.is_empty() {
                "daemon"
            } else {
                &self.node
            },
            self.file,
            list(&self.applied),
            list(&self.needs_restart)
        )?;
        if !self.refused.is_empty() {
            write!(f, "; refused: {}", self.refused.join("; "))?;
        }
        Ok(())
    }
}

/// Why a request was refused. Typed, so the sender can tell a bug from a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The peer's role may not send this request.
    Role,
    /// The peer's role may, but not about this subject (e.g. an alarm for another target).
    Subject,
    /// The command's epoch is older than one already applied.
    Stale,
    /// The request names a target, proxy or gateway the receiver does not know.
    Unknown,
    /// The request is malformed.
    BadRequest,
    /// The receiver cannot do this yet (a subsystem is not available).
    Unavailable,
    /// The peer sends faster than it may, or has too many requests open: try later.
    Busy,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Role => "role",
            RefusalReason::Subject => "subject",
            RefusalReason::Stale => "stale",
            RefusalReason::Unknown => "unknown",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::Unavailable => "unavailable",
            RefusalReason::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("refused ({reason:?}): {message}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

// --- operator views ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub targets: Vec<TargetView>,
    pub proxies: Vec<ProxyView>,
    pub gateways: Vec<NodeView>,
    pub events: Vec<EventView>,
    /// The coordinator's revocation list is past its next-update date: revocations
    /// issued since are unknown to it (it keeps the old list in force).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crl_expired: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    pub phase: String,
    pub epoch: u64,
    pub scheme: String,
    /// Proxies currently in the target's ALT set (or its A records, scheme 4.3).
    pub proxies: Vec<String>,
    /// Steps still to do in the current phase.
    pub pending: Vec<String>,
    pub last_error: Option<String>,
    /// Unix time (ms) of the last phase change.
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyView {
    pub name: String,
    pub address: Option<IpAddr>,
    pub organisation: Option<String>,
    pub capacity_mbps: Option<u32>,
    pub health: String,
    /// Its place in the pool: `member`, `pending` (added, not yet approved) or
    /// `draining` (being taken out).
    #[serde(default)]
    pub pool: String,
    /// Unix time (ms) the proxy was last heard from, if ever.
    pub last_seen_ms: Option<u64>,
    /// Targets whose ALT set lists this proxy.
    pub serving: Vec<String>,
    /// What the proxy last reported carrying (its heartbeats), while it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// A node's load as its heartbeats report it: live figures for the operator, kept in
/// memory only (a restarted coordinator shows them again at the next heartbeat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Client sessions admitted now.
    #[serde(default)]
    pub clients: u64,
    /// Bytes per second relayed through the tunnels (both directions), over the last
    /// second or so.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Packets the filter dropped since the node started (link and relay path, and the
    /// XDP block list's drops at the link).
    #[serde(default)]
    pub filter_drops: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub address: Option<IpAddr>,
    pub health: String,
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    /// Unix time (ms) the coordinator recorded the event.
    pub at_ms: u64,
    pub subject: String,
    pub event: String,
    /// For people; its wording may change.
    pub detail: String,
    /// A `phase` event's new phase, so tools need not read it out of `detail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

// --- codec -------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_vec(self).expect("control messages serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

// --- authorisation -----------------------------------------------------------------

/// The one authorisation table: which roles may send each request, and whether the
/// request's subject must be the sender itself.
///
/// `Subject::Own` means the request names a target or proxy, and a peer may only speak
/// for the node its certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Any,
    Own,
}

pub fn policy(req: &Request) -> (&'static [Role], Subject) {
    use Role::*;
    match req {
        Request::Register(_) | Request::Heartbeat { .. } => {
            (&[Proxy, Gateway, Target, Client], Subject::Any)
        }
        Request::Alarm { .. } | Request::AllClear { .. } => (&[Target], Subject::Own),
        Request::ProxyAttacked { .. } | Request::Traceback { .. } => (&[Proxy], Subject::Own),
        Request::Dataplane { .. } | Request::Notify { .. } | Request::Reload => {
            (&[Coordinator], Subject::Any)
        }
        Request::Status | Request::Proxies | Request::Events { .. } => (&[Operator], Subject::Any),
        Request::Divert { .. } | Request::Restore { .. } | Request::ReloadNode { .. } => {
            (&[Operator], Subject::Any)
        }
        Request::ProxyAdd { .. }
        | Request::ProxyApprove { .. }
        | Request::ProxyDrain { .. }
        | Request::ProxyRemove { .. }
        | Request::TargetAdd { .. }
        | Request::TargetRemove { .. }
        | Request::TargetShow { .. } => (&[Operator], Subject::Any),
    }
}

fn subject_of(req: &Request) -> Option<&str> {
    match req {
        Request::Alarm { target, .. } | Request::AllClear { target } => Some(target),
        Request::ProxyAttacked { proxy, .. } | Request::Traceback { proxy, .. } => Some(proxy),
        _ => None,
    }
}

/// The roles a coordinator's control port talks to: every role that may send it a
/// request ([`policy`]). Others (another coordinator, a DNS server, a resolver) are
/// refused in the TLS handshake.
pub const COORDINATOR_PEERS: [Role; 5] = [
    Role::Proxy,
    Role::Gateway,
    Role::Target,
    Role::Client,
    Role::Operator,
];

/// Decides whether `peer` may send `req`.
pub fn authorize(peer: &Identity, req: &Request) -> Result<(), Refusal> {
    let (roles, subject) = policy(req);
    if !roles.contains(&peer.role) {
        return Err(Refusal::new(
            RefusalReason::Role,
            format!("a {} may not send {}", peer.role, req.kind()),
        ));
    }
    if subject == Subject::Own {
        let named = subject_of(req).unwrap_or_default();
        if named != peer.name {
            return Err(Refusal::new(
                RefusalReason::Subject,
                format!(
                    "{} may send {} only about itself, not about {named:?}",
                    peer,
                    req.kind()
                ),
            ));
        }
    }
    Ok(())
}

// --- epochs ------------------------------------------------------------------------

/// Node-side guard against replayed or reordered commands: remembers the newest epoch
/// applied per target and refuses anything older.
#[derive(Debug, Default, Clone)]
pub struct EpochGuard {
    newest: HashMap<String, u64>,
    /// The newest coordinator leadership whose order was taken.
    newest_leader: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl EpochGuard {
    /// Accepts an order of leadership epoch `leader` if no newer leadership has been
    /// obeyed, and records it: once a node took an order from a new leader, the old one
    /// (deposed, or cut off and not yet aware) is refused as stale.
    pub fn admit_leader(&mut self, leader: u64) -> Result<(), Refusal> {
        if leader < self.newest_leader {
            return Err(Refusal::new(
                RefusalReason::Stale,
                format!(
                    "order of leadership epoch {leader}, but a coordinator of epoch {} leads now",
                    self.newest_leader
                ),
            ));
        }
        self.newest_leader = leader;
        Ok(())
    }

    /// Accepts `epoch` for `target` if it is not older than the newest seen, and records it.
    pub fn admit(&mut self, target: &str, epoch: u64) -> Result<(), Refusal> {
        match self.newest.get_mut(target) {
            Some(newest) if epoch < *newest => Err(Refusal::new(
                RefusalReason::Stale,
                format!("epoch {epoch} for {target} is older than the applied epoch {newest}"),
            )),
            Some(newest) => {
                *newest = epoch;
                Ok(())
            }
            None => {
                self.newest.insert(target.to_string(), epoch);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, name: &str) -> Identity {
        Identity::new(role, name).unwrap()
    }

    fn every_request() -> Vec<Request> {
        vec![
            Request::Register(NodeInfo::default()),
            Request::Heartbeat { seq: 1, load: None },
            Request::Heartbeat {
                seq: 2,
                load: Some(NodeLoad {
                    clients: 3,
                    bytes_per_sec: 4,
                    filter_drops: 5,
                }),
            },
            Request::Alarm {
                target: "web".into(),
                summary: serde_json::Value::Null,
            },
            Request::AllClear {
                target: "web".into(),
            },
            Request::ProxyAttacked {
                proxy: "p1".into(),
                summary: serde_json::Value::Null,
            },
            Request::Traceback {
                proxy: "p1".into(),
                sources: vec![],
            },
            Request::Dataplane {
                target: "web".into(),
                epoch: 3,
                commands: vec![dataplane::Command::GetStats],
                leader: 0,
            },
            Request::Notify {
                target: "web".into(),
                epoch: 3,
                fqdn: "www.example.net.".into(),
                leader: 0,
            },
            Request::Status,
            Request::Proxies,
            Request::Events {
                limit: 10,
                subject: None,
                kind: None,
            },
            Request::Divert {
                target: "web".into(),
            },
            Request::Restore {
                target: "web".into(),
            },
            Request::Reload,
            Request::ReloadNode {
                node: "proxy/p1".into(),
            },
            Request::ProxyAdd {
                name: "p3".into(),
                address: "192.0.2.3".parse().unwrap(),
                capacity_mbps: None,
                organisation: None,
            },
            Request::ProxyApprove { name: "p3".into() },
            Request::ProxyDrain { name: "p1".into() },
            Request::ProxyRemove { name: "p3".into() },
            Request::TargetAdd {
                config: serde_json::json!({"name": "mail"}),
            },
            Request::TargetRemove {
                name: "mail".into(),
            },
            Request::TargetShow { name: "web".into() },
        ]
    }

    /// The whole table, spelled out: (role, name) x request -> allowed?
    #[test]
    fn the_coordinator_port_talks_to_exactly_the_roles_that_may_ask_it_something() {
        // Requests a coordinator sends (to the nodes, over their own connections) are
        // not asked of it.
        let mut asking: Vec<Role> = every_request()
            .iter()
            .flat_map(|r| policy(r).0.iter().copied())
            .filter(|r| *r != Role::Coordinator)
            .collect();
        asking.sort_by_key(|r| r.as_str());
        asking.dedup();
        let mut peers = COORDINATOR_PEERS.to_vec();
        peers.sort_by_key(|r| r.as_str());
        assert_eq!(asking, peers);
    }

    #[test]
    fn authorisation_table() {
        use Role::*;
        let expect = |role: Role, name: &str, req: &Request| -> bool {
            match req.kind() {
                "register" | "heartbeat" => matches!(role, Proxy | Gateway | Target | Client),
                "alarm" | "all_clear" => role == Target && name == "web",
                "proxy_attacked" | "traceback" => role == Proxy && name == "p1",
                "dataplane" | "notify" | "reload" => role == Coordinator,
                "status" | "proxies" | "events" | "divert" | "restore" | "reload_node"
                | "proxy_add" | "proxy_approve" | "proxy_drain" | "proxy_remove" | "target_add"
                | "target_remove" | "target_show" => role == Operator,
                other => panic!("request {other} missing from the test"),
            }
        };
        for role in Role::ALL {
            for name in ["web", "p1", "other"] {
                let peer = id(role, name);
                for req in every_request() {
                    let got = authorize(&peer, &req).is_ok();
                    assert_eq!(got, expect(role, name, &req), "{peer} sending {req:?}");
                }
            }
        }
    }

    #[test]
    fn orders_of_a_deposed_leader_are_stale_once_a_newer_one_was_obeyed() {
        let mut g = EpochGuard::default();
        // A coordinator alone (leadership 0), then replicas: epochs only grow.
        assert!(g.admit_leader(0).is_ok());
        assert!(g.admit_leader(17).is_ok());
        assert!(g.admit_leader(17).is_ok(), "the same leader again");
        assert!(g.admit_leader(42).is_ok(), "a newer leader");
        let r = g.admit_leader(17).unwrap_err();
        assert_eq!(r.reason, RefusalReason::Stale);
        assert!(r.message.contains("42"), "{}", r.message);
        // An order without the field (an older coordinator) reads as leadership 0, and
        // one of leadership 0 is written without it.
        let old = r#"{"type":"dataplane","target":"web","epoch":3,"commands":[]}"#;
        match serde_json::from_str::<Request>(old).unwrap() {
            Request::Dataplane { leader, .. } => assert_eq!(leader, 0),
            other => panic!("{other:?}"),
        }
        let none = Request::Notify {
            target: "web".into(),
            epoch: 1,
            fqdn: "www.example.net.".into(),
            leader: 0,
        };
        assert!(!serde_json::to_string(&none).unwrap().contains("leader"));
    }

    #[test]
    fn target_cannot_raise_alarm_for_another() {
        let err = authorize(
            &id(Role::Target, "mail"),
            &Request::Alarm {
                target: "web".into(),
                summary: serde_json::Value::Null,
            },
        )
        .unwrap_err();
        assert_eq!(err.reason, RefusalReason::Subject);
    }

    #[test]
    fn proxy_cannot_command_a_gateway() {
        let err = authorize(
            &id(Role::Proxy, "p1"),
            &Request::Dataplane {
                target: "web".into(),
                epoch: 1,
                commands: vec![],
                leader: 0,
            },
        )
        .unwrap_err();
        assert_eq!(err.reason, RefusalReason::Role);
    }

    #[test]
    fn messages_round_trip() {
        for (i, req) in every_request().into_iter().enumerate() {
            let m = Message::Request {
                id: i as u64,
                request: req,
            };
            assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
        }
        let m = Message::Response {
            id: 9,
            response: Response::Refused(Refusal::new(RefusalReason::Stale, "old")),
        };
        assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b""[..],
            b"{}",
            b"{\"kind\":\"request\",\"id\":1}",
            b"{\"kind\":\"request\",\"id\":-1,\"request\":{\"type\":\"status\"}}",
            b"{\"kind\":\"request\",\"id\":1,\"request\":{\"type\":\"launch\"}}",
            b"\xff\xfe",
        ] {
            assert!(Message::from_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn epoch_guard_refuses_older() {
        let mut g = EpochGuard::default();
        g.admit("web", 5).unwrap();
        g.admit("web", 5).unwrap(); // retry of the same epoch: idempotent
        g.admit("web", 6).unwrap();
        assert_eq!(g.admit("web", 5).unwrap_err().reason, RefusalReason::Stale);
        g.admit("mail", 1).unwrap(); // per target
    }
}
