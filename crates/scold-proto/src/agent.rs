//! The client agent's decisions (paper Section 4.1, and the bookkeeping of the pushes of
//! Section 4.2), sans-IO: which proxy of a name's ALT set carries it, when to move to
//! another one, when to read the ALT set again, when to tear the indirect route down.
//!
//! [`Agent`] is a state machine driven by `(now, Input) -> Vec<Action>`
//! ([`Agent::handle`]); it never touches a socket, a clock or a thread. The client daemon
//! in `scold-node` (`client::agent`) feeds it what happened (a DNS answer, the result of
//! an admission at a proxy, a probe answer, a drain notice, a closed connection, a timer)
//! and carries out what it asks (look a name up again, measure the proxies, admit at a
//! proxy, install or remove host routes, release targets, close a connection, send a
//! probe, announce the new path). [`Agent::poll_timeout`] says when to feed
//! [`Input::Tick`] next.
//!
//! What the agent decides:
//!
//! - A name with ALT records gets a proxy of its ALT set: the one it has if that is still
//!   in the set and connected, else the best by the round trip of a TCP connect to the
//!   proxies' admission ports (ties in the order the measurement gives them; the driver
//!   shuffles it), proxies that drain after the others, proxies that failed in the last
//!   [`DOWN_FOR`] last and not measured. The first that admits us and whose routes go in
//!   carries the name. A target address that is also a proxy address is not routed.
//! - When none does, the name is tried again after [`MIN_RETRY`], doubling each round up
//!   to [`MAX_RETRY`].
//! - Each admission connection is probed every `probe_interval`; an answer must come
//!   within `probe_timeout`. Each answer carries the proxy's count of our tunnel packets
//!   that arrived; against our count of what we sent ([`Input::SentCount`]) it shows a
//!   tunnel path that stopped carrying while the proxy still answers ([`PathWatch`]). A
//!   proxy whose connection closes, whose probe goes unanswered or whose path stalls is
//!   lost: each name it carried moves to the next proxy, new routes first; then its peer
//!   goes, and one datagram per target announces the new path ([`ANNOUNCE_AT`]).
//! - A proxy that says it drains (its self-defence declared it under attack) loses its
//!   names to the best other proxy of their ALT sets that does not drain and admits us;
//!   a name for which there is none stays.
//! - A name's ALT set is read again at its TTL, within `min_refresh` and `max_refresh`
//!   ([`refresh_in`]); [`REQUERY_RETRY`] after a re-read nobody answered. A changed set
//!   may move the name (off a proxy that left it, or off a draining one); an empty set
//!   tears the name's routes down and releases them at the proxy.
//! - Scheme 4.2: a route a proxy pushed stays while that proxy is in the ALT set; the
//!   agent does not look for another proxy for that name.
//!
//! Work that needs the network (ranking, admission, routes) is done for one name at a
//! time, in the order it was asked for: an admission connection carries one request at
//! a time, and a failover of many names must not open several connections to the same
//! proxy at once. Everything else (drain notices, closed connections, DNS answers,
//! timers) is taken in at once, and the work in flight checks the name again when its
//! I/O completes: a name that went or was pushed meanwhile is dropped, one whose ALT set
//! changed is started afresh on the new set.

use crate::admission::{AdmitRequest, Admitted};
use crate::dataplane::{Encap, PublicKey};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a proxy that failed is tried only after the others (and not measured).
pub const DOWN_FOR: Duration = Duration::from_secs(30);
/// Bounds of the wait between two rounds of admission attempts for a name.
pub const MIN_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// The wait before reading a name's ALT set again after no upstream answered.
pub const REQUERY_RETRY: Duration = Duration::from_secs(1);
/// Fewest tunnel packets sent between two probes for a probe to judge the path.
pub const PATH_MIN_SENT: u64 = 2;
/// When the new path is announced after a move: at once, and again in case the first
/// one arrived before the new proxy was ready for us (a pushing proxy admits the client
/// only after it has our answer) or was lost.
pub const ANNOUNCE_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// When a name's ALT set is read again: at its TTL, within `min` and `max`.
pub fn refresh_in(ttl: u32, min: Duration, max: Duration) -> Duration {
    Duration::from_secs(ttl as u64).clamp(min, max.max(min))
}

/// What the agent needs to know of its own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The encapsulation asked of proxies.
    pub encap: Encap,
    /// Our WireGuard public key (wireguard only).
    pub public_key: Option<PublicKey>,
    /// Our engine threads, told to proxies when more than one.
    pub engines: Option<u8>,
    /// Bounds of the wait between two reads of a name's ALT set.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// How often an admission connection is probed, and how long an answer may take.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

/// Pairs an action that needs the network with the input that answers it.
pub type Ticket = u64;

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An application's A/AAAA lookup of `name` (lowercase, absolute) found `targets`,
    /// and the ALT query beside it found `alts` (not empty) with `ttl`. Answered with
    /// [`Action::Ready`] once the route is up (or cannot be).
    Lookup {
        name: String,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
    },
    /// A lookup of `name` found no ALT records.
    NoAlt { name: String },
    /// The answer to [`Action::Requery`]: the ALT set and its TTL (for an empty set, the
    /// negative TTL); None when no upstream answered.
    Requeried {
        name: String,
        answer: Option<(Vec<IpAddr>, u32)>,
    },
    /// The answer to [`Action::Measure`]: each proxy's round trip, None when it did not
    /// answer. Equal round trips keep the order given here.
    Measured {
        ticket: Ticket,
        rtts: Vec<(IpAddr, Option<Duration>)>,
    },
    /// The answer to [`Action::Admit`]. On success over a new connection the driver has
    /// opened it and added the proxy's tunnel peer.
    Admission {
        ticket: Ticket,
        proxy: IpAddr,
        result: Result<Admitted, String>,
    },
    /// The answer to [`Action::Route`].
    Routed {
        ticket: Ticket,
        result: Result<(), String>,
    },
    /// Tunnel packets sent to `proxy` so far, read just before probe `seq` went out;
    /// None when the data plane did not say.
    SentCount {
        proxy: IpAddr,
        seq: u64,
        sent: Option<u64>,
    },
    /// The answer to probe `seq`: the proxy's count of our tunnel packets that arrived
    /// (None: it did not say) and whether it drains.
    ProbeAnswer {
        proxy: IpAddr,
        seq: u64,
        arrived: Option<u64>,
        draining: bool,
    },
    /// The proxy said unasked on its admission connection that it starts (or stops)
    /// draining.
    DrainNotice {
        proxy: IpAddr,
        draining: bool,
        reason: Option<String>,
    },
    /// The admission connection to `proxy` closed or broke.
    LinkClosed { proxy: IpAddr, why: String },
    /// Scheme 4.2: `proxy` pushed the route to `name` and the driver accepted it (the
    /// proxy is in `alts`) and installed peer and host routes for `targets`, with
    /// `source` as our address towards it.
    Pushed {
        name: String,
        proxy: IpAddr,
        source: IpAddr,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
    },
    /// Scheme 4.2: `proxy` withdrew its route to `name`.
    Withdrawn { name: String, proxy: IpAddr },
    /// Time passed (see [`Agent::poll_timeout`]).
    Tick,
}

/// What the driver is to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read `name`'s ALT set again; answer with [`Input::Requeried`].
    Requery { name: String },
    /// Measure the round trip of a TCP connect to each proxy's admission port; answer
    /// with [`Input::Measured`].
    Measure {
        ticket: Ticket,
        proxies: Vec<IpAddr>,
    },
    /// Ask `proxy` to admit us for `request`, over its open admission connection or a
    /// new one (checked against `alts`); answer with [`Input::Admission`].
    Admit {
        ticket: Ticket,
        proxy: IpAddr,
        alts: Vec<IpAddr>,
        request: AdmitRequest,
    },
    /// Host routes for `targets` into the tunnel to `proxy`, with `source` as preferred
    /// source; answer with [`Input::Routed`].
    Route {
        ticket: Ticket,
        proxy: IpAddr,
        targets: Vec<IpAddr>,
        source: IpAddr,
    },
    /// Remove the host routes of `targets` (they were `name`'s).
    Unroute { name: String, targets: Vec<IpAddr> },
    /// Tell `proxy` over its admission connection that we no longer need `targets`.
    Release { proxy: IpAddr, targets: Vec<IpAddr> },
    /// Close the admission connection to `proxy` once what was sent on it is done.
    CloseLink { proxy: IpAddr },
    /// Remove the tunnel peer of `proxy`, and with it the routes still through it.
    RemovePeer { proxy: IpAddr },
    /// Read the tunnel's count of packets sent to `proxy` (answer with
    /// [`Input::SentCount`]), then send probe `seq` on its admission connection (answer
    /// with [`Input::ProbeAnswer`]).
    Probe { proxy: IpAddr, seq: u64 },
    /// One empty UDP datagram from `source` to each of `targets` (discard port) through
    /// the tunnel: the target's gateway returns our traffic by the proxy it last came in
    /// by.
    Announce {
        targets: Vec<IpAddr>,
        source: IpAddr,
    },
    /// The lookups of `name` waiting for its route may be answered.
    Ready { name: String },
    /// Something an operator wants in the log.
    Note(Note),
}

/// Why names moved off a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// The proxy was lost (connection closed, probe unanswered, tunnel path stalled).
    Lost,
    /// The proxy said it drains.
    Draining,
}

/// What the agent reports for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A lookup of a name with routes found no ALT records any more.
    NoAlt {
        name: String,
    },
    /// A re-read of a name's ALT set found it empty.
    AltWithdrawn {
        name: String,
    },
    AltChanged {
        name: String,
        alts: Vec<IpAddr>,
    },
    /// The proxy that pushed a name's route is no longer in its ALT set.
    PushedProxyLeft {
        name: String,
        proxy: Option<IpAddr>,
    },
    /// Some of a name's addresses are also proxy addresses; they are not routed.
    TargetIsProxy {
        name: String,
    },
    Ranked {
        order: Vec<(IpAddr, Option<Duration>)>,
    },
    /// `name`'s routes now go through `proxy` (whose tunnel end point is `tunnel`).
    RouteUp {
        name: String,
        proxy: IpAddr,
        tunnel: IpAddr,
        source: IpAddr,
        targets: Vec<IpAddr>,
        elapsed: Duration,
    },
    RouteFailed {
        name: String,
        proxy: IpAddr,
        error: String,
    },
    AdmissionFailed {
        name: String,
        proxy: IpAddr,
        error: String,
    },
    /// No proxy of the ALT set admitted us; the next round is in `retry_in`.
    NoProxy {
        name: String,
        alts: Vec<IpAddr>,
        retry_in: Duration,
    },
    ProxyLost {
        proxy: IpAddr,
        why: String,
    },
    Draining {
        proxy: IpAddr,
        reason: Option<String>,
    },
    DrainOver {
        proxy: IpAddr,
    },
    /// No other proxy admitted these names: they stay on the draining proxy.
    Staying {
        proxy: IpAddr,
        names: Vec<String>,
    },
    /// The names of a lost or draining proxy have moved (`now_via`, in the same order;
    /// None: no proxy carries the name now).
    FailoverDone {
        proxy: IpAddr,
        reason: MoveReason,
        names: Vec<String>,
        now_via: Vec<Option<IpAddr>>,
        elapsed: Duration,
    },
    PushWithdrawn {
        name: String,
        proxy: IpAddr,
    },
}

/// Watches the tunnel path itself from the probe answers: the packets we sent into the
/// tunnel to the proxy against the proxy's count of what arrived from us. The admission
/// connection alone shows only that the proxy's host answers on TCP; this sees tunnel
/// packets that stop reaching the proxy (its tunnel port blocked or flooded, its data
/// plane stuck). An idle tunnel gives no verdict either way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathWatch {
    /// (sent, arrived) at the previous probe that had both.
    last: Option<(u64, u64)>,
    /// Probes in a row that saw packets sent and none arrive.
    stalled: u32,
}

impl PathWatch {
    /// One probe answer: `sent` is ours, read before the probe went out (so those packets
    /// had the probe's round trip to arrive); `arrived` is the proxy's, read when it
    /// answered. True when `limit` probes in a row saw packets sent and none arrive.
    pub fn observe(&mut self, sent: u64, arrived: u64, limit: u32) -> bool {
        match self.last {
            // A counter went back: the peer or the session was made anew.
            Some((s0, a0)) if sent < s0 || arrived < a0 => self.stalled = 0,
            Some((_, a0)) if arrived > a0 => self.stalled = 0,
            Some((s0, _)) if sent - s0 >= PATH_MIN_SENT => self.stalled += 1,
            _ => {}
        }
        self.last = Some((sent, arrived));
        self.stalled >= limit.max(1)
    }

    /// An answer without one of the counts: the next one is not compared across the gap.
    pub fn gap(&mut self) {
        self.last = None;
    }
}

#[derive(Debug, Clone)]
struct NameState {
    targets: BTreeSet<IpAddr>,
    alts: Vec<IpAddr>,
    proxy: Option<IpAddr>,
    /// Scheme 4.2: `proxy` pushed this route; it is kept while that proxy is in the ALT
    /// set and no other is looked for (the next push moves it).
    pushed: bool,
    refresh_at: Instant,
    requery_pending: bool,
    /// When to try again to find a proxy (none worked).
    retry_at: Option<Instant>,
    /// The wait before the next retry: doubles after each round that found no proxy,
    /// up to [`MAX_RETRY`], so refused proxies are not asked every second for ever.
    retry_delay: Duration,
    /// A lookup waits for this name's route ([`Action::Ready`]).
    lookup_waiting: bool,
}

impl NameState {
    fn new(refresh_at: Instant) -> Self {
        NameState {
            targets: BTreeSet::new(),
            alts: Vec::new(),
            proxy: None,
            pushed: false,
            refresh_at,
            requery_pending: false,
            retry_at: None,
            retry_delay: MIN_RETRY,
            lookup_waiting: false,
        }
    }

    /// The targets that go into the tunnel: not those that are proxy addresses.
    fn routed(&self) -> BTreeSet<IpAddr> {
        self.targets
            .iter()
            .copied()
            .filter(|t| !self.alts.contains(t))
            .collect()
    }
}

/// An open admission connection, as the agent knows it.
#[derive(Debug, Clone)]
struct Conn {
    admitted: Admitted,
    seq: u64,
    next_probe: Instant,
    probe: Option<Outstanding>,
    path: PathWatch,
}

#[derive(Debug, Clone)]
struct Outstanding {
    seq: u64,
    deadline: Instant,
    sent: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskKind {
    /// A lookup, a re-read or a retry.
    Ensure,
    /// The names of a lost proxy move.
    Failover { proxy: IpAddr },
    /// The names of a draining proxy move.
    Drain { proxy: IpAddr },
}

/// Work on one or more names that needs the network, done one name at a time.
#[derive(Debug, Clone)]
struct Task {
    kind: TaskKind,
    /// Names still to do.
    names: VecDeque<String>,
    /// Every name of the task (for the failover report).
    affected: Vec<String>,
    /// The proxy to move off when another admits us (it drains).
    leave: Option<IpAddr>,
    /// When the task was asked for.
    since: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rank {
    /// Every proxy of the ALT set.
    All,
    /// All but the current one (it did not do).
    Others(Option<IpAddr>),
    /// Those that do not drain, then the draining current one as the last resort.
    Leave(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    None,
    Measure {
        ticket: Ticket,
        rank: Rank,
    },
    Admit {
        ticket: Ticket,
        proxy: IpAddr,
    },
    Route {
        ticket: Ticket,
        proxy: IpAddr,
        source: IpAddr,
    },
}

/// One name being brought up (or kept) on a proxy.
#[derive(Debug, Clone)]
struct Ensure {
    name: String,
    targets: BTreeSet<IpAddr>,
    alts: Vec<IpAddr>,
    previous: Option<IpAddr>,
    current: Option<IpAddr>,
    leave: Option<IpAddr>,
    order: VecDeque<IpAddr>,
    ranked: bool,
    rank_next: Option<Rank>,
    /// A lookup waits for the outcome.
    answers: bool,
    wait: Wait,
    attempt_since: Instant,
}

/// The client agent's decision core. See the module documentation.
#[derive(Debug)]
pub struct Agent {
    cfg: Config,
    names: BTreeMap<String, NameState>,
    conns: BTreeMap<IpAddr, Conn>,
    /// Proxies that failed recently, and until when they are tried last.
    down: BTreeMap<IpAddr, Instant>,
    /// Proxies whose admission connection says they drain.
    draining: BTreeSet<IpAddr>,
    queue: VecDeque<Task>,
    running: Option<Task>,
    ensure: Option<Ensure>,
    /// Path announcements still to send: when, to which targets, from where.
    announce: Vec<(Instant, Vec<IpAddr>, IpAddr)>,
    next_ticket: Ticket,
}

fn covers(a: &Admitted, targets: &BTreeSet<IpAddr>) -> bool {
    targets.iter().all(|t| a.targets.contains(t))
}

impl Agent {
    pub fn new(cfg: Config) -> Self {
        Agent {
            cfg,
            names: BTreeMap::new(),
            conns: BTreeMap::new(),
            down: BTreeMap::new(),
            draining: BTreeSet::new(),
            queue: VecDeque::new(),
            running: None,
            ensure: None,
            announce: Vec::new(),
            next_ticket: 1,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The proxy that carries `name` now.
    pub fn proxy_of(&self, name: &str) -> Option<IpAddr> {
        self.names.get(name).and_then(|s| s.proxy)
    }

    /// The proxy that pushed `name`'s route (scheme 4.2).
    pub fn pushed_by(&self, name: &str) -> Option<IpAddr> {
        self.names
            .get(name)
            .filter(|s| s.pushed)
            .and_then(|s| s.proxy)
    }

    /// The names the agent holds routes (or is looking for them) for.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// Whether `proxy` failed within the last [`DOWN_FOR`] at `now`.
    pub fn is_down(&self, proxy: IpAddr, now: Instant) -> bool {
        self.down.get(&proxy).is_some_and(|t| *t > now)
    }

    /// Whether `proxy` said it drains.
    pub fn is_draining(&self, proxy: IpAddr) -> bool {
        self.draining.contains(&proxy)
    }

    /// Whether an admission connection to `proxy` is open.
    pub fn is_connected(&self, proxy: IpAddr) -> bool {
        self.conns.contains_key(&proxy)
    }

    /// When the next round of admission attempts for `name` is due.
    pub fn retry_at(&self, name: &str) -> Option<Instant> {
        self.names.get(name).and_then(|s| s.retry_at)
    }

    /// The next time [`Input::Tick`] has something to do; None: nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let admitting = self.admitting_at();
        let announce = self.announce.iter().map(|(t, _, _)| *t);
        let probes = self.conns.iter().filter_map(|(p, c)| match &c.probe {
            Some(o) => Some(o.deadline),
            None if admitting == Some(*p) => None,
            None => Some(c.next_probe),
        });
        let names = self.names.values().flat_map(|s| {
            let refresh = (!s.requery_pending).then_some(s.refresh_at);
            refresh.into_iter().chain(s.retry_at)
        });
        announce.chain(probes).chain(names).min()
    }

    /// Takes in what happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Lookup {
                name,
                targets,
                alts,
                ttl,
            } => self.lookup(now, name, targets, alts, ttl, &mut out),
            Input::NoAlt { name } => {
                if self.names.contains_key(&name) {
                    out.push(Action::Note(Note::NoAlt { name: name.clone() }));
                    self.teardown(now, &name, &mut out);
                }
            }
            Input::Requeried { name, answer } => self.requeried(now, name, answer, &mut out),
            Input::Measured { ticket, rtts } => self.measured(now, ticket, rtts, &mut out),
            Input::Admission {
                ticket,
                proxy,
                result,
            } => self.admission(now, ticket, proxy, result, &mut out),
            Input::Routed { ticket, result } => self.routed(now, ticket, result, &mut out),
            Input::SentCount { proxy, seq, sent } => {
                if let Some(o) = self
                    .conns
                    .get_mut(&proxy)
                    .and_then(|c| c.probe.as_mut())
                    .filter(|o| o.seq == seq)
                {
                    o.sent = sent;
                }
            }
            Input::ProbeAnswer {
                proxy,
                seq,
                arrived,
                draining,
            } => self.probe_answer(now, proxy, seq, arrived, draining, &mut out),
            Input::DrainNotice {
                proxy,
                draining,
                reason,
            } => self.drain(now, proxy, draining, reason, &mut out),
            Input::LinkClosed { proxy, why } => {
                // Only a connection the agent holds: a late report of one it closed
                // itself changes nothing.
                if self.conns.remove(&proxy).is_some() {
                    self.lost(now, proxy, why, &mut out);
                }
            }
            Input::Pushed {
                name,
                proxy,
                source,
                targets,
                alts,
                ttl,
            } => self.pushed(now, name, proxy, source, targets, alts, ttl, &mut out),
            Input::Withdrawn { name, proxy } => {
                if self.pushed_by(&name) == Some(proxy) {
                    out.push(Action::Note(Note::PushWithdrawn {
                        name: name.clone(),
                        proxy,
                    }));
                    self.teardown(now, &name, &mut out);
                }
            }
            Input::Tick => self.tick(now, &mut out),
        }
        self.drive(now, &mut out);
        out
    }

    /// On exit: every name's routes go and are released; every connection closes and
    /// every peer goes. Work in flight is abandoned.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.queue.clear();
        self.running = None;
        self.ensure = None;
        self.announce.clear();
        let names: Vec<String> = self.names.keys().cloned().collect();
        for n in names {
            self.teardown(now, &n, &mut out);
        }
        let left: Vec<IpAddr> = self.conns.keys().copied().collect();
        for p in left {
            self.drop_link(now, p, &mut out);
        }
        out
    }

    fn ticket(&mut self) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    fn refresh_in(&self, ttl: u32) -> Duration {
        refresh_in(ttl, self.cfg.min_refresh, self.cfg.max_refresh)
    }

    /// The proxy an admission is in flight at, if any: not probed meanwhile, as its
    /// connection carries one request at a time.
    fn admitting_at(&self) -> Option<IpAddr> {
        match self.ensure.as_ref().map(|e| &e.wait) {
            Some(Wait::Admit { proxy, .. }) => Some(*proxy),
            _ => None,
        }
    }

    /// Whether a name uses `proxy`, or the work in flight does.
    fn in_use(&self, proxy: IpAddr) -> bool {
        let waiting = match self.ensure.as_ref().map(|e| &e.wait) {
            Some(Wait::Admit { proxy: p, .. } | Wait::Route { proxy: p, .. }) => *p == proxy,
            _ => false,
        };
        waiting || self.names.values().any(|s| s.proxy == Some(proxy))
    }

    fn enqueue_ensure(&mut self, now: Instant, name: &str, leave: Option<IpAddr>) {
        let queued = self.queue.iter_mut().find(|t| {
            t.kind == TaskKind::Ensure && t.names.front().map(String::as_str) == Some(name)
        });
        match queued {
            Some(t) => t.leave = t.leave.or(leave),
            None => self.queue.push_back(Task {
                kind: TaskKind::Ensure,
                names: VecDeque::from([name.to_string()]),
                affected: vec![name.to_string()],
                leave,
                since: now,
            }),
        }
    }

    fn lookup(
        &mut self,
        now: Instant,
        name: String,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
        out: &mut Vec<Action>,
    ) {
        if alts.is_empty() {
            if self.names.contains_key(&name) {
                out.push(Action::Note(Note::NoAlt { name: name.clone() }));
                self.teardown(now, &name, out);
            }
            out.push(Action::Ready { name });
            return;
        }
        let refresh = now + self.refresh_in(ttl);
        let st = self
            .names
            .entry(name.clone())
            .or_insert_with(|| NameState::new(refresh));
        st.targets.extend(targets);
        st.alts = alts;
        st.refresh_at = refresh;
        st.lookup_waiting = true;
        self.enqueue_ensure(now, &name, None);
    }

    fn requeried(
        &mut self,
        now: Instant,
        name: String,
        answer: Option<(Vec<IpAddr>, u32)>,
        out: &mut Vec<Action>,
    ) {
        let refresh = answer.as_ref().map(|(_, ttl)| self.refresh_in(*ttl));
        let Some(st) = self.names.get_mut(&name) else {
            return;
        };
        st.requery_pending = false;
        match answer {
            None => st.refresh_at = now + REQUERY_RETRY,
            Some((alts, _)) if alts.is_empty() => {
                out.push(Action::Note(Note::AltWithdrawn { name: name.clone() }));
                self.teardown(now, &name, out);
            }
            Some((alts, _)) => {
                st.refresh_at = now + refresh.unwrap_or(self.cfg.min_refresh);
                let mut leave = None;
                if st.alts != alts {
                    out.push(Action::Note(Note::AltChanged {
                        name: name.clone(),
                        alts: alts.clone(),
                    }));
                    st.alts = alts;
                    // A new ALT set may hold a proxy to leave a draining one for.
                    leave = st.proxy.filter(|p| self.draining.contains(p));
                }
                self.enqueue_ensure(now, &name, leave);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pushed(
        &mut self,
        now: Instant,
        name: String,
        proxy: IpAddr,
        source: IpAddr,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
        out: &mut Vec<Action>,
    ) {
        let refresh = now + self.refresh_in(ttl);
        let st = self
            .names
            .entry(name.clone())
            .or_insert_with(|| NameState::new(refresh));
        let previous = st.proxy;
        st.targets.extend(targets.iter().copied());
        st.alts = alts;
        st.proxy = Some(proxy);
        st.pushed = true;
        st.refresh_at = refresh;
        st.retry_at = None;
        st.retry_delay = MIN_RETRY;
        if let Some(old) = previous.filter(|p| *p != proxy) {
            let targets: BTreeSet<IpAddr> = targets.into_iter().collect();
            self.announce_path(now, &targets, source, out);
            self.release_if_unused(now, old, &targets, out);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut due = Vec::new();
        self.announce.retain(|(t, targets, source)| {
            if *t <= now {
                due.push((*t, targets.clone(), *source));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|(t, _, _)| *t);
        for (_, targets, source) in due {
            out.push(Action::Announce { targets, source });
        }
        let admitting = self.admitting_at();
        let mut lost = Vec::new();
        for (p, c) in self.conns.iter_mut() {
            match &c.probe {
                Some(o) if o.deadline <= now => lost.push(*p),
                Some(_) => {}
                None if c.next_probe <= now && admitting != Some(*p) => {
                    c.seq += 1;
                    c.probe = Some(Outstanding {
                        seq: c.seq,
                        deadline: now + self.cfg.probe_timeout,
                        sent: None,
                    });
                    out.push(Action::Probe {
                        proxy: *p,
                        seq: c.seq,
                    });
                }
                None => {}
            }
        }
        for p in lost {
            self.conns.remove(&p);
            out.push(Action::CloseLink { proxy: p });
            let why = format!(
                "no answer to a probe within {} ms",
                self.cfg.probe_timeout.as_millis()
            );
            self.lost(now, p, why, out);
        }
        let mut retry = Vec::new();
        for (name, st) in self.names.iter_mut() {
            if st.refresh_at <= now && !st.requery_pending {
                st.requery_pending = true;
                out.push(Action::Requery { name: name.clone() });
            }
            if st.retry_at.is_some_and(|t| t <= now) {
                st.retry_at = None;
                retry.push(name.clone());
            }
        }
        for name in retry {
            self.enqueue_ensure(now, &name, None);
        }
    }

    /// As many stalled probes as fit in the probe time limit (at least 2): the tunnel
    /// path gets the same time to recover as the admission connection.
    fn path_limit(&self) -> u32 {
        let n = self.cfg.probe_timeout.as_millis() / self.cfg.probe_interval.as_millis().max(1);
        u32::try_from(n).unwrap_or(u32::MAX).max(2)
    }

    fn probe_answer(
        &mut self,
        now: Instant,
        proxy: IpAddr,
        seq: u64,
        arrived: Option<u64>,
        draining: bool,
        out: &mut Vec<Action>,
    ) {
        let limit = self.path_limit();
        let interval = self.cfg.probe_interval;
        let Some(c) = self.conns.get_mut(&proxy) else {
            return;
        };
        // A late answer to an earlier probe is not this one's.
        let Some(o) = c.probe.take_if(|o| o.seq == seq) else {
            return;
        };
        // The interval runs from the answer.
        c.next_probe = now + interval;
        let stalled = match (o.sent, arrived) {
            (Some(sent), Some(arrived)) => c.path.observe(sent, arrived, limit),
            _ => {
                c.path.gap();
                false
            }
        };
        if draining != self.draining.contains(&proxy) {
            self.drain(now, proxy, draining, None, out);
        }
        if stalled && self.conns.remove(&proxy).is_some() {
            out.push(Action::CloseLink { proxy });
            let why = format!(
                "tunnel packets stopped reaching the proxy ({limit} probes in a row: sent, none arrived)"
            );
            self.lost(now, proxy, why, out);
        }
    }

    /// `proxy`'s connection is gone (already removed from `conns`): it is tried last for
    /// a while, and every name it carried moves.
    fn lost(&mut self, now: Instant, proxy: IpAddr, why: String, out: &mut Vec<Action>) {
        out.push(Action::Note(Note::ProxyLost { proxy, why }));
        self.down.insert(proxy, now + DOWN_FOR);
        self.draining.remove(&proxy);
        let mut affected = Vec::new();
        for (n, s) in self.names.iter_mut() {
            if s.proxy == Some(proxy) {
                // The old peer and its routes stay until each name has its new routes,
                // so no packet falls back to the direct path in between.
                s.proxy = None;
                affected.push(n.clone());
            }
        }
        self.queue.push_back(Task {
            kind: TaskKind::Failover { proxy },
            names: affected.iter().cloned().collect(),
            affected,
            leave: None,
            since: now,
        });
    }

    fn drain(
        &mut self,
        now: Instant,
        proxy: IpAddr,
        draining: bool,
        reason: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if !draining {
            if self.draining.remove(&proxy) {
                out.push(Action::Note(Note::DrainOver { proxy }));
            }
            return;
        }
        // Only a proxy we hold (or are opening) a connection to can tell us.
        let known = self.conns.contains_key(&proxy) || self.admitting_at() == Some(proxy);
        if !known || !self.draining.insert(proxy) {
            return;
        }
        out.push(Action::Note(Note::Draining { proxy, reason }));
        self.queue.push_back(Task {
            kind: TaskKind::Drain { proxy },
            names: VecDeque::new(),
            affected: Vec::new(),
            leave: Some(proxy),
            since: now,
        });
    }

    /// Removes `name`'s routes (targets no other name uses), releases them at the proxy
    /// and closes its connection when nothing else uses it.
    fn teardown(&mut self, now: Instant, name: &str, out: &mut Vec<Action>) {
        let Some(st) = self.names.remove(name) else {
            return;
        };
        let still: BTreeSet<IpAddr> = self
            .names
            .values()
            .flat_map(|s| s.targets.iter().copied())
            .collect();
        let gone: BTreeSet<IpAddr> = st.targets.difference(&still).copied().collect();
        if !gone.is_empty() {
            out.push(Action::Unroute {
                name: name.to_string(),
                targets: gone.iter().copied().collect(),
            });
        }
        if let Some(p) = st.proxy {
            self.release_if_unused(now, p, &gone, out);
        }
        if st.lookup_waiting {
            out.push(Action::Ready {
                name: name.to_string(),
            });
        }
    }

    /// After `targets` moved away from `proxy`: releases them there, and closes the
    /// connection and removes the peer when no name uses the proxy any more.
    fn release_if_unused(
        &mut self,
        now: Instant,
        proxy: IpAddr,
        targets: &BTreeSet<IpAddr>,
        out: &mut Vec<Action>,
    ) {
        if self.conns.contains_key(&proxy) && !targets.is_empty() {
            out.push(Action::Release {
                proxy,
                targets: targets.iter().copied().collect(),
            });
        }
        if !self.in_use(proxy) {
            self.drop_link(now, proxy, out);
        }
    }

    fn drop_link(&mut self, now: Instant, proxy: IpAddr, out: &mut Vec<Action>) {
        if self.draining.remove(&proxy) {
            // We no longer hear when it recovers: try it only after the others for a
            // while.
            self.down.insert(proxy, now + DOWN_FOR);
        }
        if self.conns.remove(&proxy).is_some() {
            out.push(Action::CloseLink { proxy });
        }
        // Routes still through this peer go with it (none when every name moved).
        out.push(Action::RemovePeer { proxy });
    }

    fn announce_path(
        &mut self,
        now: Instant,
        targets: &BTreeSet<IpAddr>,
        source: IpAddr,
        out: &mut Vec<Action>,
    ) {
        let targets: Vec<IpAddr> = targets
            .iter()
            .copied()
            .filter(|t| t.is_ipv4() == source.is_ipv4())
            .collect();
        if targets.is_empty() {
            return;
        }
        for at in ANNOUNCE_AT {
            if at.is_zero() {
                out.push(Action::Announce {
                    targets: targets.clone(),
                    source,
                });
            } else {
                self.announce.push((now + at, targets.clone(), source));
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // The work that needs the network, one name at a time
    // -----------------------------------------------------------------------------------

    /// Runs the work until it waits for I/O or none is left.
    fn drive(&mut self, now: Instant, out: &mut Vec<Action>) {
        loop {
            if let Some(mut e) = self.ensure.take() {
                if e.wait != Wait::None {
                    self.ensure = Some(e);
                    return;
                }
                if self.step(now, &mut e, out) {
                    self.ensure = Some(e);
                    return;
                }
                continue;
            }
            let Some(task) = self.running.as_mut() else {
                match self.queue.pop_front() {
                    Some(mut t) => {
                        // A drain moves the names on the proxy when it starts (one may
                        // have been admitted there meanwhile), unless it has recovered.
                        if let TaskKind::Drain { proxy } = t.kind {
                            if self.draining.contains(&proxy) {
                                t.affected = self
                                    .names
                                    .iter()
                                    .filter(|(_, s)| s.proxy == Some(proxy) && !s.pushed)
                                    .map(|(n, _)| n.clone())
                                    .collect();
                                t.names = t.affected.iter().cloned().collect();
                            }
                        }
                        self.running = Some(t);
                    }
                    None => {
                        self.sweep(now, out);
                        return;
                    }
                }
                continue;
            };
            match task.names.pop_front() {
                Some(name) => {
                    let leave = task.leave;
                    self.ensure = self.start_ensure(now, &name, leave, out);
                }
                None => {
                    let task = self.running.take().expect("running");
                    self.finish(now, task, out);
                }
            }
        }
    }

    /// Connections no name and no work uses: left over when routes failed after an
    /// admission, or a name went while it was being admitted.
    fn sweep(&mut self, now: Instant, out: &mut Vec<Action>) {
        let unused: Vec<IpAddr> = self
            .conns
            .keys()
            .copied()
            .filter(|p| !self.in_use(*p))
            .collect();
        for p in unused {
            self.drop_link(now, p, out);
        }
    }

    fn finish(&mut self, now: Instant, task: Task, out: &mut Vec<Action>) {
        let now_via = |s: &Self| -> Vec<Option<IpAddr>> {
            task.affected
                .iter()
                .map(|n| s.names.get(n).and_then(|st| st.proxy))
                .collect()
        };
        match task.kind {
            TaskKind::Ensure => {}
            TaskKind::Failover { proxy } => {
                if !self.conns.contains_key(&proxy) {
                    // Routes of names that found no other proxy go with the peer.
                    out.push(Action::RemovePeer { proxy });
                }
                for name in &task.affected {
                    let Some(st) = self.names.get(name) else {
                        continue;
                    };
                    let Some(source) = st
                        .proxy
                        .and_then(|p| self.conns.get(&p))
                        .map(|c| c.admitted.client)
                    else {
                        continue;
                    };
                    let targets = st.routed();
                    self.announce_path(now, &targets, source, out);
                }
                if !task.affected.is_empty() {
                    let now_via = now_via(self);
                    out.push(Action::Note(Note::FailoverDone {
                        proxy,
                        reason: MoveReason::Lost,
                        names: task.affected,
                        now_via,
                        elapsed: now.saturating_duration_since(task.since),
                    }));
                }
            }
            TaskKind::Drain { proxy } => {
                let now_via = now_via(self);
                let stayed: Vec<String> = task
                    .affected
                    .iter()
                    .zip(&now_via)
                    .filter(|(_, p)| **p == Some(proxy))
                    .map(|(n, _)| n.clone())
                    .collect();
                let moved = stayed.len() < task.affected.len();
                if !stayed.is_empty() {
                    out.push(Action::Note(Note::Staying {
                        proxy,
                        names: stayed,
                    }));
                }
                if moved {
                    out.push(Action::Note(Note::FailoverDone {
                        proxy,
                        reason: MoveReason::Draining,
                        names: task.affected,
                        now_via,
                        elapsed: now.saturating_duration_since(task.since),
                    }));
                }
            }
        }
    }

    /// Starts bringing `name`'s route up (or keeping it): through its current proxy if
    /// that one is still in the ALT set and connected, else through the best other one.
    /// When `leave` is the current proxy (it drains), the others are tried first and it
    /// is kept only when none admits us. None: nothing to wait for.
    fn start_ensure(
        &mut self,
        now: Instant,
        name: &str,
        leave: Option<IpAddr>,
        out: &mut Vec<Action>,
    ) -> Option<Ensure> {
        let st = self.names.get_mut(name)?;
        let answers = std::mem::take(&mut st.lookup_waiting);
        self.begin(now, name, leave, answers, out)
    }

    fn begin(
        &mut self,
        now: Instant,
        name: &str,
        leave: Option<IpAddr>,
        answers: bool,
        out: &mut Vec<Action>,
    ) -> Option<Ensure> {
        let ready = |out: &mut Vec<Action>| {
            if answers {
                out.push(Action::Ready {
                    name: name.to_string(),
                });
            }
        };
        let Some(st) = self.names.get(name) else {
            ready(out);
            return None;
        };
        if st.pushed {
            if !st.proxy.is_some_and(|p| st.alts.contains(&p)) {
                out.push(Action::Note(Note::PushedProxyLeft {
                    name: name.to_string(),
                    proxy: st.proxy,
                }));
                self.teardown(now, name, out);
            }
            ready(out);
            return None;
        }
        let targets = st.routed();
        if targets.len() < st.targets.len() {
            out.push(Action::Note(Note::TargetIsProxy {
                name: name.to_string(),
            }));
        }
        if targets.is_empty() {
            ready(out);
            return None;
        }
        let alts = st.alts.clone();
        let current = st
            .proxy
            .filter(|p| alts.contains(p) && self.conns.contains_key(p));
        let mut e = Ensure {
            name: name.to_string(),
            targets,
            alts,
            previous: st.proxy,
            current,
            leave,
            order: VecDeque::new(),
            ranked: false,
            rank_next: None,
            answers,
            wait: Wait::None,
            attempt_since: now,
        };
        if let Some(old) = leave.filter(|p| current == Some(*p)) {
            e.ranked = true;
            e.rank_next = Some(Rank::Leave(old));
        } else if let Some(c) = current {
            e.order.push_back(c);
        } else {
            e.ranked = true;
            e.rank_next = Some(Rank::All);
        }
        Some(e)
    }

    /// Goes on with `e` until it waits for I/O (true) or is done (false).
    fn step(&mut self, now: Instant, e: &mut Ensure, out: &mut Vec<Action>) -> bool {
        loop {
            if e.wait != Wait::None {
                return true;
            }
            if let Some(rank) = e.rank_next.take() {
                let candidates = self.candidates(e, rank);
                let measure: Vec<IpAddr> = candidates
                    .iter()
                    .copied()
                    .filter(|p| !self.is_down(*p, now))
                    .collect();
                if measure.is_empty() {
                    e.order = self.rank(now, e, rank, &[]);
                    continue;
                }
                let ticket = self.ticket();
                out.push(Action::Measure {
                    ticket,
                    proxies: measure,
                });
                e.wait = Wait::Measure { ticket, rank };
                return true;
            }
            match e.order.pop_front() {
                Some(proxy) => {
                    e.attempt_since = now;
                    if let Some(c) = self
                        .conns
                        .get(&proxy)
                        .filter(|c| covers(&c.admitted, &e.targets))
                    {
                        let source = c.admitted.client;
                        let ticket = self.ticket();
                        out.push(Action::Route {
                            ticket,
                            proxy,
                            targets: e.targets.iter().copied().collect(),
                            source,
                        });
                        e.wait = Wait::Route {
                            ticket,
                            proxy,
                            source,
                        };
                        return true;
                    }
                    let ticket = self.ticket();
                    out.push(Action::Admit {
                        ticket,
                        proxy,
                        alts: e.alts.clone(),
                        request: AdmitRequest {
                            targets: e.targets.iter().copied().collect(),
                            encap: self.cfg.encap,
                            public_key: self.cfg.public_key.clone(),
                            port: None,
                            engines: self.cfg.engines,
                        },
                    });
                    e.wait = Wait::Admit { ticket, proxy };
                    return true;
                }
                None if !e.ranked => {
                    // The current proxy did not do; measure the others only now, so a
                    // lookup of a name already routed costs no probes.
                    e.ranked = true;
                    e.rank_next = Some(Rank::Others(e.current));
                }
                None => {
                    if let Some(st) = self.names.get_mut(&e.name) {
                        out.push(Action::Note(Note::NoProxy {
                            name: e.name.clone(),
                            alts: e.alts.clone(),
                            retry_in: st.retry_delay,
                        }));
                        st.retry_at = Some(now + st.retry_delay);
                        st.retry_delay = (st.retry_delay * 2).min(MAX_RETRY);
                    }
                    if e.answers {
                        out.push(Action::Ready {
                            name: e.name.clone(),
                        });
                    }
                    return false;
                }
            }
        }
    }

    fn candidates(&self, e: &Ensure, rank: Rank) -> Vec<IpAddr> {
        e.alts
            .iter()
            .copied()
            .filter(|p| match rank {
                Rank::All => true,
                Rank::Others(current) => Some(*p) != current,
                // Moving from one draining proxy to another gains nothing.
                Rank::Leave(old) => *p != old && !self.draining.contains(p),
            })
            .collect()
    }

    /// The candidates of `rank` in the order to try them: those that failed recently
    /// last, draining ones before them, the others by round trip (in milliseconds; ties
    /// in the order measured), those that did not answer after them.
    fn rank(
        &self,
        now: Instant,
        e: &Ensure,
        rank: Rank,
        rtts: &[(IpAddr, Option<Duration>)],
    ) -> VecDeque<IpAddr> {
        let candidates = self.candidates(e, rank);
        let mut measured: Vec<(IpAddr, Option<Duration>)> = rtts
            .iter()
            .filter(|(p, _)| candidates.contains(p))
            .cloned()
            .collect();
        for p in &candidates {
            if !measured.iter().any(|(q, _)| q == p) {
                measured.push((*p, None));
            }
        }
        measured.sort_by_key(|(p, rtt)| {
            (
                self.is_down(*p, now),
                self.draining.contains(p),
                rtt.map(|d| d.as_millis()).unwrap_or(u128::MAX),
            )
        });
        let mut order: VecDeque<IpAddr> = measured.iter().map(|(p, _)| *p).collect();
        if let Rank::Leave(old) = rank {
            order.push_back(old);
        }
        order
    }

    /// The work in flight for `e` after its I/O, if it still makes sense as it is. When
    /// the name went or was pushed meanwhile the work is dropped; when its ALT set
    /// changed it starts afresh on the new set (left for [`Self::drive`]).
    fn recheck(&mut self, now: Instant, e: Ensure, out: &mut Vec<Action>) -> Option<Ensure> {
        match self.names.get(&e.name) {
            Some(st) if !st.pushed && st.alts == e.alts => Some(e),
            Some(st) if !st.pushed => {
                self.ensure = self.begin(now, &e.name, e.leave, e.answers, out);
                None
            }
            _ => {
                if e.answers {
                    out.push(Action::Ready { name: e.name });
                }
                None
            }
        }
    }

    fn measured(
        &mut self,
        now: Instant,
        ticket: Ticket,
        rtts: Vec<(IpAddr, Option<Duration>)>,
        out: &mut Vec<Action>,
    ) {
        let Some(mut e) = self.ensure.take() else {
            return;
        };
        let rank = match e.wait {
            Wait::Measure { ticket: t, rank } if t == ticket => rank,
            _ => {
                self.ensure = Some(e);
                return;
            }
        };
        e.wait = Wait::None;
        let Some(mut e) = self.recheck(now, e, out) else {
            return;
        };
        e.order = self.rank(now, &e, rank, &rtts);
        out.push(Action::Note(Note::Ranked {
            order: e
                .order
                .iter()
                .map(|p| {
                    let rtt = rtts.iter().find(|(q, _)| q == p).and_then(|(_, r)| *r);
                    (*p, rtt)
                })
                .collect(),
        }));
        self.ensure = Some(e);
    }

    fn admission(
        &mut self,
        now: Instant,
        ticket: Ticket,
        proxy: IpAddr,
        result: Result<Admitted, String>,
        out: &mut Vec<Action>,
    ) {
        if let Ok(a) = &result {
            match self.conns.get_mut(&proxy) {
                Some(c) => c.admitted = a.clone(),
                None => {
                    self.conns.insert(
                        proxy,
                        Conn {
                            admitted: a.clone(),
                            seq: 0,
                            next_probe: now + self.cfg.probe_interval,
                            probe: None,
                            path: PathWatch::default(),
                        },
                    );
                }
            }
        }
        let Some(mut e) = self.ensure.take() else {
            return;
        };
        if e.wait != (Wait::Admit { ticket, proxy }) {
            self.ensure = Some(e);
            return;
        }
        e.wait = Wait::None;
        if let Err(error) = &result {
            out.push(Action::Note(Note::AdmissionFailed {
                name: e.name.clone(),
                proxy,
                error: error.clone(),
            }));
            self.down.insert(proxy, now + DOWN_FOR);
        }
        let Some(mut e) = self.recheck(now, e, out) else {
            return;
        };
        if let Ok(a) = result {
            let ticket = self.ticket();
            out.push(Action::Route {
                ticket,
                proxy,
                targets: e.targets.iter().copied().collect(),
                source: a.client,
            });
            e.wait = Wait::Route {
                ticket,
                proxy,
                source: a.client,
            };
        }
        self.ensure = Some(e);
    }

    fn routed(
        &mut self,
        now: Instant,
        ticket: Ticket,
        result: Result<(), String>,
        out: &mut Vec<Action>,
    ) {
        let Some(mut e) = self.ensure.take() else {
            return;
        };
        let (proxy, source) = match e.wait {
            Wait::Route {
                ticket: t,
                proxy,
                source,
            } if t == ticket => (proxy, source),
            _ => {
                self.ensure = Some(e);
                return;
            }
        };
        e.wait = Wait::None;
        if let Err(error) = result {
            out.push(Action::Note(Note::RouteFailed {
                name: e.name.clone(),
                proxy,
                error,
            }));
            self.ensure = Some(e);
            return;
        }
        if self.names.get(&e.name).is_some_and(|s| s.pushed) {
            // A proxy pushed the name's route meanwhile: that one stands.
            if e.answers {
                out.push(Action::Ready { name: e.name });
            }
            return;
        }
        let Some(st) = self.names.get_mut(&e.name) else {
            // The name went while its routes went in: they go again.
            let still: BTreeSet<IpAddr> = self
                .names
                .values()
                .flat_map(|s| s.targets.iter().copied())
                .collect();
            let gone: Vec<IpAddr> = e.targets.difference(&still).copied().collect();
            if !gone.is_empty() {
                out.push(Action::Unroute {
                    name: e.name.clone(),
                    targets: gone,
                });
            }
            if e.answers {
                out.push(Action::Ready { name: e.name });
            }
            return;
        };
        st.proxy = Some(proxy);
        st.retry_at = None;
        st.retry_delay = MIN_RETRY;
        if e.previous != Some(proxy) {
            let tunnel = self
                .conns
                .get(&proxy)
                .map(|c| c.admitted.tunnel_address)
                .unwrap_or(proxy);
            out.push(Action::Note(Note::RouteUp {
                name: e.name.clone(),
                proxy,
                tunnel,
                source,
                targets: e.targets.iter().copied().collect(),
                elapsed: now.saturating_duration_since(e.attempt_since),
            }));
            if let Some(old) = e.previous {
                self.announce_path(now, &e.targets, source, out);
                self.release_if_unused(now, old, &e.targets, out);
            }
        }
        if e.answers {
            out.push(Action::Ready { name: e.name });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "www.site.example.";
    const OTHER: &str = "mail.site.example.";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn key(c: char) -> PublicKey {
        PublicKey(format!("{}=", c.to_string().repeat(43)))
    }

    fn c() -> IpAddr {
        ip("10.1.0.2")
    }
    fn t() -> IpAddr {
        ip("10.4.0.2")
    }
    fn t2() -> IpAddr {
        ip("10.4.0.3")
    }
    fn p1() -> IpAddr {
        ip("10.1.0.11")
    }
    fn p2() -> IpAddr {
        ip("10.1.0.12")
    }
    fn p3() -> IpAddr {
        ip("10.1.0.13")
    }
    fn p4() -> IpAddr {
        ip("10.1.0.14")
    }

    fn config() -> Config {
        Config {
            encap: Encap::Wireguard,
            public_key: Some(key('C')),
            engines: None,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
            probe_interval: ms(200),
            probe_timeout: ms(600),
        }
    }

    /// The proxy's answer: `client` admitted to `targets` through `proxy`'s tunnel.
    fn admitted(proxy: IpAddr, targets: &[IpAddr]) -> Admitted {
        Admitted {
            client: c(),
            tunnel_address: proxy,
            port: Some(51820),
            encap: Encap::Wireguard,
            public_key: Some(key('P')),
            engines: None,
            inner_mtu: 1420,
            targets: targets.to_vec(),
        }
    }

    fn request(targets: &[IpAddr]) -> AdmitRequest {
        AdmitRequest {
            targets: targets.to_vec(),
            encap: Encap::Wireguard,
            public_key: Some(key('C')),
            port: None,
            engines: None,
        }
    }

    /// The agent and a clock.
    struct H {
        a: Agent,
        t0: Instant,
        now: Instant,
    }

    impl H {
        fn new() -> H {
            H::with(config())
        }

        fn with(cfg: Config) -> H {
            let t0 = Instant::now();
            H {
                a: Agent::new(cfg),
                t0,
                now: t0,
            }
        }

        /// Moves the clock to `n` ms after the start (never back).
        fn at(&mut self, n: u64) -> &mut Self {
            let t = self.t0 + ms(n);
            assert!(t >= self.now, "the test clock goes back");
            self.now = t;
            self
        }

        fn time(&self, n: u64) -> Instant {
            self.t0 + ms(n)
        }

        fn feed(&mut self, input: Input) -> Vec<Action> {
            self.a.handle(self.now, input)
        }

        fn tick(&mut self, n: u64) -> Vec<Action> {
            self.at(n);
            self.feed(Input::Tick)
        }

        fn lookup(
            &mut self,
            name: &str,
            targets: &[IpAddr],
            alts: &[IpAddr],
            ttl: u32,
        ) -> Vec<Action> {
            self.feed(Input::Lookup {
                name: name.into(),
                targets: targets.to_vec(),
                alts: alts.to_vec(),
                ttl,
            })
        }

        fn measured(&mut self, ticket: Ticket, rtts: &[(IpAddr, u64)]) -> Vec<Action> {
            self.feed(Input::Measured {
                ticket,
                rtts: rtts.iter().map(|(p, m)| (*p, Some(ms(*m)))).collect(),
            })
        }

        fn admitted(&mut self, ticket: Ticket, proxy: IpAddr, targets: &[IpAddr]) -> Vec<Action> {
            self.feed(Input::Admission {
                ticket,
                proxy,
                result: Ok(admitted(proxy, targets)),
            })
        }

        fn refused(&mut self, ticket: Ticket, proxy: IpAddr) -> Vec<Action> {
            self.feed(Input::Admission {
                ticket,
                proxy,
                result: Err(format!("proxy {proxy} refused the admission (full)")),
            })
        }

        fn routed(&mut self, ticket: Ticket) -> Vec<Action> {
            self.feed(Input::Routed {
                ticket,
                result: Ok(()),
            })
        }

        /// `name` with `targets` routed through `via` after a first lookup at the time
        /// set, `via` measured fastest of `alts`.
        fn up(&mut self, name: &str, targets: &[IpAddr], alts: &[IpAddr], via: IpAddr, ttl: u32) {
            let out = self.lookup(name, targets, alts, ttl);
            let m = measure_ticket(&out);
            let rtts: Vec<(IpAddr, u64)> = alts
                .iter()
                .filter(|p| measured_proxies(&out).contains(p))
                .map(|p| (*p, if *p == via { 1 } else { 9 }))
                .collect();
            let out = self.measured(m, &rtts);
            let (ticket, proxy) = admit_ticket(&out);
            assert_eq!(proxy, via, "{out:?}");
            let all: Vec<IpAddr> = match self.a.conns.get(&via) {
                Some(c) => c
                    .admitted
                    .targets
                    .iter()
                    .chain(targets)
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                None => targets.to_vec(),
            };
            let out = self.admitted(ticket, via, &all);
            let r = route_ticket(&out);
            let out = self.routed(r);
            assert!(
                out.contains(&Action::Ready { name: name.into() }),
                "{out:?}"
            );
            assert_eq!(self.a.proxy_of(name), Some(via));
        }
    }

    fn io(out: &[Action]) -> Vec<Action> {
        out.iter()
            .filter(|a| !matches!(a, Action::Note(_)))
            .cloned()
            .collect()
    }

    fn notes(out: &[Action]) -> Vec<Note> {
        out.iter()
            .filter_map(|a| match a {
                Action::Note(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn measure_ticket(out: &[Action]) -> Ticket {
        out.iter()
            .find_map(|a| match a {
                Action::Measure { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no measurement in {out:?}"))
    }

    fn measured_proxies(out: &[Action]) -> Vec<IpAddr> {
        out.iter()
            .find_map(|a| match a {
                Action::Measure { proxies, .. } => Some(proxies.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn admit_ticket(out: &[Action]) -> (Ticket, IpAddr) {
        out.iter()
            .find_map(|a| match a {
                Action::Admit { ticket, proxy, .. } => Some((*ticket, *proxy)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no admission in {out:?}"))
    }

    fn route_ticket(out: &[Action]) -> Ticket {
        out.iter()
            .find_map(|a| match a {
                Action::Route { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no route in {out:?}"))
    }

    fn has_route_up(out: &[Action], name: &str, via: IpAddr) -> bool {
        notes(out).iter().any(
            |n| matches!(n, Note::RouteUp { name: n, proxy, .. } if n == name && *proxy == via),
        )
    }

    #[test]
    fn first_alt_answer_picks_a_proxy_and_installs_the_route() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 5);
        assert_eq!(
            out,
            vec![Action::Measure {
                ticket: 1,
                proxies: vec![p1(), p2()]
            }]
        );
        // The lowest round trip wins.
        h.at(3);
        let out = h.measured(1, &[(p1(), 4), (p2(), 2)]);
        assert_eq!(
            io(&out),
            vec![Action::Admit {
                ticket: 2,
                proxy: p2(),
                alts: vec![p1(), p2()],
                request: request(&[t()]),
            }]
        );
        h.at(10);
        let out = h.admitted(2, p2(), &[t()]);
        assert_eq!(
            out,
            vec![Action::Route {
                ticket: 3,
                proxy: p2(),
                targets: vec![t()],
                source: c(),
            }]
        );
        assert!(h.a.is_connected(p2()));
        h.at(11);
        let out = h.routed(3);
        assert_eq!(
            out,
            vec![
                Action::Note(Note::RouteUp {
                    name: NAME.into(),
                    proxy: p2(),
                    tunnel: p2(),
                    source: c(),
                    targets: vec![t()],
                    elapsed: ms(8),
                }),
                Action::Ready { name: NAME.into() },
            ]
        );
        assert_eq!(h.a.proxy_of(NAME), Some(p2()));
        // A second lookup of the routed name measures and admits nothing: the routes are
        // made sure of, and the application answered.
        h.at(20);
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 5);
        assert_eq!(
            out,
            vec![Action::Route {
                ticket: 4,
                proxy: p2(),
                targets: vec![t()],
                source: c(),
            }]
        );
        assert_eq!(h.routed(4), vec![Action::Ready { name: NAME.into() }]);
        // The connection is probed every interval from the admission.
        assert_eq!(h.a.poll_timeout(), Some(h.time(210)));
        assert_eq!(
            h.tick(210),
            vec![Action::Probe {
                proxy: p2(),
                seq: 1
            }]
        );
    }

    #[test]
    fn a_target_that_is_a_proxy_is_not_routed() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[p1()], &[p1(), p2()], 5);
        assert_eq!(
            out,
            vec![
                Action::Note(Note::TargetIsProxy { name: NAME.into() }),
                Action::Ready { name: NAME.into() }
            ]
        );
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 5);
        assert!(notes(&out).contains(&Note::TargetIsProxy { name: NAME.into() }));
        assert_eq!(measured_proxies(&out), vec![p1(), p2()]);
    }

    #[test]
    fn dead_proxy_fails_over_to_the_next_of_the_alt_set() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 300);
        h.at(100);
        let out = h.feed(Input::LinkClosed {
            proxy: p2(),
            why: "the proxy closed the connection".into(),
        });
        // The driver closed the connection itself: nothing to close here. The lost proxy
        // is not measured.
        assert_eq!(
            out,
            vec![
                Action::Note(Note::ProxyLost {
                    proxy: p2(),
                    why: "the proxy closed the connection".into()
                }),
                Action::Measure {
                    ticket: 4,
                    proxies: vec![p1()]
                }
            ]
        );
        assert!(h.a.is_down(p2(), h.now));
        assert_eq!(h.a.proxy_of(NAME), None);
        let out = h.measured(4, &[(p1(), 3)]);
        assert_eq!(admit_ticket(&out), (5, p1()));
        h.at(150);
        let out = h.admitted(5, p1(), &[t()]);
        assert_eq!(route_ticket(&out), 6);
        h.at(160);
        let out = h.routed(6);
        // New routes first; then the old peer goes, the path is announced and the move
        // reported.
        assert_eq!(
            io(&out),
            vec![
                Action::RemovePeer { proxy: p2() },
                Action::Announce {
                    targets: vec![t()],
                    source: c()
                },
            ]
        );
        assert!(has_route_up(&out, NAME, p1()));
        assert_eq!(
            notes(&out).last(),
            Some(&Note::FailoverDone {
                proxy: p2(),
                reason: MoveReason::Lost,
                names: vec![NAME.into()],
                now_via: vec![Some(p1())],
                elapsed: ms(60),
            })
        );
        assert_eq!(h.a.proxy_of(NAME), Some(p1()));
        // The announcement goes again at 200 ms, 1 s and 3 s.
        let announce = Action::Announce {
            targets: vec![t()],
            source: c(),
        };
        assert!(!h.tick(359).contains(&announce));
        assert!(h.tick(360).contains(&announce));
        assert!(!h.tick(1159).contains(&announce));
        assert!(h.tick(1160).contains(&announce));
        assert!(h.tick(3160).contains(&announce));
        assert!(!h.tick(10_000).contains(&announce));
    }

    #[test]
    fn unanswered_probe_loses_the_proxy() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 300);
        assert_eq!(
            h.tick(200),
            vec![Action::Probe {
                proxy: p2(),
                seq: 1
            }]
        );
        // One answer in time: the next probe comes an interval after it.
        let out = h.at(250).feed(Input::ProbeAnswer {
            proxy: p2(),
            seq: 1,
            arrived: None,
            draining: false,
        });
        assert!(out.is_empty(), "{out:?}");
        assert!(h.tick(449).is_empty());
        assert_eq!(
            h.tick(450),
            vec![Action::Probe {
                proxy: p2(),
                seq: 2
            }]
        );
        // No answer within the probe time limit.
        assert!(h.tick(1049).is_empty());
        let out = h.tick(1050);
        assert_eq!(
            out,
            vec![
                Action::CloseLink { proxy: p2() },
                Action::Note(Note::ProxyLost {
                    proxy: p2(),
                    why: "no answer to a probe within 600 ms".into()
                }),
                Action::Measure {
                    ticket: 4,
                    proxies: vec![p1()]
                }
            ]
        );
        // A late answer, or a late close report, changes nothing.
        assert!(h
            .feed(Input::ProbeAnswer {
                proxy: p2(),
                seq: 2,
                arrived: None,
                draining: false
            })
            .is_empty());
        assert!(h
            .feed(Input::LinkClosed {
                proxy: p2(),
                why: "aborted".into()
            })
            .is_empty());
    }

    #[test]
    fn refused_admission_moves_on_to_the_next_proxy() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        let m = measure_ticket(&out);
        let out = h.measured(m, &[(p1(), 4), (p2(), 2)]);
        assert_eq!(admit_ticket(&out), (2, p2()));
        h.at(5);
        let out = h.refused(2, p2());
        assert_eq!(
            out,
            vec![
                Action::Note(Note::AdmissionFailed {
                    name: NAME.into(),
                    proxy: p2(),
                    error: format!("proxy {} refused the admission (full)", p2()),
                }),
                Action::Admit {
                    ticket: 3,
                    proxy: p1(),
                    alts: vec![p1(), p2()],
                    request: request(&[t()]),
                }
            ]
        );
        assert!(h.a.is_down(p2(), h.now));
        let out = h.admitted(3, p1(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p1()));
        assert!(!h.a.is_connected(p2()));
    }

    #[test]
    fn route_failure_moves_on_and_the_unused_connection_is_closed() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        let out = h.measured(measure_ticket(&out), &[(p1(), 4), (p2(), 2)]);
        let out = h.admitted(admit_ticket(&out).0, p2(), &[t()]);
        let out = h.feed(Input::Routed {
            ticket: route_ticket(&out),
            result: Err("route 10.4.0.2: netlink refused".into()),
        });
        assert!(matches!(notes(&out)[0], Note::RouteFailed { proxy, .. } if proxy == p2()));
        // Not a proxy failure: not marked down.
        assert!(!h.a.is_down(p2(), h.now));
        let (ticket, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p1());
        let out = h.admitted(ticket, p1(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p1()));
        // The admission at p2 that no name uses is closed.
        assert!(out.contains(&Action::CloseLink { proxy: p2() }), "{out:?}");
        assert!(out.contains(&Action::RemovePeer { proxy: p2() }));
        assert!(h.a.is_connected(p1()) && !h.a.is_connected(p2()));
    }

    #[test]
    fn drain_notice_moves_the_names_to_another_proxy() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 300);
        h.at(100);
        let out = h.feed(Input::DrainNotice {
            proxy: p2(),
            draining: true,
            reason: Some("self-defence: under attack".into()),
        });
        // Only the others are measured: the draining one is the last resort.
        assert_eq!(
            out,
            vec![
                Action::Note(Note::Draining {
                    proxy: p2(),
                    reason: Some("self-defence: under attack".into())
                }),
                Action::Measure {
                    ticket: 4,
                    proxies: vec![p1()]
                }
            ]
        );
        // No probe while the move is under way would change anything; a second notice
        // is the same drain.
        assert!(notes(&h.feed(Input::DrainNotice {
            proxy: p2(),
            draining: true,
            reason: None
        }))
        .is_empty());
        let out = h.measured(4, &[(p1(), 3)]);
        assert_eq!(admit_ticket(&out), (5, p1()));
        let out = h.admitted(5, p1(), &[t()]);
        let r = route_ticket(&out);
        h.at(130);
        let out = h.routed(r);
        assert_eq!(
            io(&out),
            vec![
                Action::Announce {
                    targets: vec![t()],
                    source: c()
                },
                Action::Release {
                    proxy: p2(),
                    targets: vec![t()]
                },
                Action::CloseLink { proxy: p2() },
                Action::RemovePeer { proxy: p2() },
            ]
        );
        assert!(has_route_up(&out, NAME, p1()));
        assert_eq!(
            notes(&out).last(),
            Some(&Note::FailoverDone {
                proxy: p2(),
                reason: MoveReason::Draining,
                names: vec![NAME.into()],
                now_via: vec![Some(p1())],
                elapsed: ms(30),
            })
        );
        // We no longer hear when it recovers: tried last for a while.
        assert!(h.a.is_down(p2(), h.now) && !h.a.is_draining(p2()));
    }

    #[test]
    fn drained_with_no_other_proxy_the_name_stays() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p2()], p2(), 300);
        h.at(100);
        // The flag in a probe answer says the same as a notice (without a reason).
        let probe = h.tick(200);
        assert_eq!(
            probe,
            vec![Action::Probe {
                proxy: p2(),
                seq: 1
            }]
        );
        let out = h.at(210).feed(Input::ProbeAnswer {
            proxy: p2(),
            seq: 1,
            arrived: None,
            draining: true,
        });
        // Nothing to measure: the only proxy keeps the name, routes made sure of.
        assert_eq!(
            out,
            vec![
                Action::Note(Note::Draining {
                    proxy: p2(),
                    reason: None
                }),
                Action::Route {
                    ticket: 4,
                    proxy: p2(),
                    targets: vec![t()],
                    source: c()
                }
            ]
        );
        let out = h.routed(4);
        assert_eq!(
            out,
            vec![Action::Note(Note::Staying {
                proxy: p2(),
                names: vec![NAME.into()]
            })]
        );
        assert_eq!(h.a.proxy_of(NAME), Some(p2()));
        assert!(h.a.is_connected(p2()));
        // Recovered: said once.
        let over = h.feed(Input::DrainNotice {
            proxy: p2(),
            draining: false,
            reason: None,
        });
        assert_eq!(over, vec![Action::Note(Note::DrainOver { proxy: p2() })]);
        assert!(h
            .feed(Input::DrainNotice {
                proxy: p2(),
                draining: false,
                reason: None
            })
            .is_empty());
    }

    #[test]
    fn alt_set_withdrawn_tears_down_and_releases() {
        let mut h = H::with(Config {
            probe_interval: Duration::from_secs(3600),
            probe_timeout: Duration::from_secs(3600),
            ..config()
        });
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 5);
        h.up(OTHER, &[t(), t2()], &[p1(), p2()], p2(), 5);
        // Re-read at the TTL; the set is gone.
        let out = h.tick(5000);
        assert_eq!(
            out,
            vec![
                Action::Requery { name: OTHER.into() },
                Action::Requery { name: NAME.into() }
            ]
        );
        h.at(5010);
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![], 5)),
        });
        // The target OTHER still uses keeps its route, and the proxy its connection.
        assert_eq!(
            out,
            vec![Action::Note(Note::AltWithdrawn { name: NAME.into() })]
        );
        let out = h.feed(Input::NoAlt { name: OTHER.into() });
        assert_eq!(
            out,
            vec![
                Action::Note(Note::NoAlt { name: OTHER.into() }),
                Action::Unroute {
                    name: OTHER.into(),
                    targets: vec![t(), t2()]
                },
                Action::Release {
                    proxy: p2(),
                    targets: vec![t(), t2()]
                },
                Action::CloseLink { proxy: p2() },
                Action::RemovePeer { proxy: p2() },
            ]
        );
        assert_eq!(h.a.names().count(), 0);
        assert_eq!(h.a.poll_timeout(), None);
        // A late re-read of a name that went changes nothing; nor does a lookup
        // without ALT of a name never seen.
        assert!(h
            .feed(Input::Requeried {
                name: OTHER.into(),
                answer: Some((vec![p1()], 5))
            })
            .is_empty());
        assert!(h.feed(Input::NoAlt { name: "x.".into() }).is_empty());
    }

    #[test]
    fn alt_set_is_read_again_at_its_ttl_within_bounds() {
        let mut h = H::with(Config {
            probe_interval: Duration::from_secs(3600),
            probe_timeout: Duration::from_secs(3600),
            ..config()
        });
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 5);
        let requery = vec![Action::Requery { name: NAME.into() }];
        assert_eq!(h.a.poll_timeout(), Some(h.time(5000)));
        assert!(h.tick(4999).is_empty());
        assert_eq!(h.tick(5000), requery);
        // Asked once until answered.
        assert_eq!(h.a.poll_timeout(), Some(h.time(3_600_000)));
        assert!(h.tick(5100).is_empty());
        // TTL 0: read again after the least interval; the unchanged set keeps the proxy.
        h.at(5200);
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![p1(), p2()], 0)),
        });
        assert_eq!(
            out,
            vec![Action::Route {
                ticket: 4,
                proxy: p2(),
                targets: vec![t()],
                source: c()
            }]
        );
        assert!(h.routed(4).is_empty());
        assert!(h.tick(6199).is_empty());
        assert_eq!(h.tick(6200), requery);
        // No upstream answered: again after a second.
        h.at(6300);
        assert!(h
            .feed(Input::Requeried {
                name: NAME.into(),
                answer: None
            })
            .is_empty());
        assert!(h.tick(7299).is_empty());
        assert_eq!(h.tick(7300), requery);
        // A day's TTL: the most is max_refresh.
        h.at(7400);
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![p1(), p2()], 86_400)),
        });
        h.routed(route_ticket(&out));
        assert!(h.tick(307_399).is_empty());
        assert_eq!(h.tick(307_400), requery);
    }

    #[test]
    fn changed_alt_set_moves_off_a_proxy_that_left_it() {
        let mut h = H::with(Config {
            probe_interval: Duration::from_secs(3600),
            probe_timeout: Duration::from_secs(3600),
            ..config()
        });
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 5);
        h.at(5000);
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![p1(), p3()], 5)),
        });
        assert_eq!(
            notes(&out),
            vec![Note::AltChanged {
                name: NAME.into(),
                alts: vec![p1(), p3()]
            }]
        );
        assert_eq!(measured_proxies(&out), vec![p1(), p3()]);
        let out = h.measured(measure_ticket(&out), &[(p1(), 5), (p3(), 1)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p3());
        let out = h.admitted(a, p3(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p3()));
        assert_eq!(
            io(&out),
            vec![
                Action::Announce {
                    targets: vec![t()],
                    source: c()
                },
                Action::Release {
                    proxy: p2(),
                    targets: vec![t()]
                },
                Action::CloseLink { proxy: p2() },
                Action::RemovePeer { proxy: p2() },
            ]
        );
    }

    #[test]
    fn tunnel_path_blocked_while_admission_answers_moves() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 300);
        // 600 ms of probes every 200 ms: three stalled probes in a row are the limit.
        let mut last = Vec::new();
        for k in 1..=4u64 {
            let at = 200 * k + 10 * (k - 1);
            assert_eq!(
                h.tick(at),
                vec![Action::Probe {
                    proxy: p2(),
                    seq: k
                }],
                "probe {k}"
            );
            assert!(h
                .feed(Input::SentCount {
                    proxy: p2(),
                    seq: k,
                    sent: Some(10 * k)
                })
                .is_empty());
            h.at(at + 10);
            last = h.feed(Input::ProbeAnswer {
                proxy: p2(),
                seq: k,
                arrived: Some(5),
                draining: false,
            });
            if k < 4 {
                assert!(last.is_empty(), "probe {k}: {last:?}");
            }
        }
        assert_eq!(
            last,
            vec![
                Action::CloseLink { proxy: p2() },
                Action::Note(Note::ProxyLost {
                    proxy: p2(),
                    why: "tunnel packets stopped reaching the proxy (3 probes in a row: sent, none arrived)".into()
                }),
                Action::Measure {
                    ticket: 4,
                    proxies: vec![p1()]
                }
            ]
        );
    }

    #[test]
    fn idle_tunnel_and_missing_counts_do_not_lose_the_proxy() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p2(), 300);
        for k in 1..=10u64 {
            let at = 200 * k + 10 * (k - 1);
            assert_eq!(
                h.tick(at),
                vec![Action::Probe {
                    proxy: p2(),
                    seq: k
                }]
            );
            // Odd probes: our count unknown; even ones: one packet sent (idle).
            if k % 2 == 0 {
                h.feed(Input::SentCount {
                    proxy: p2(),
                    seq: k,
                    sent: Some(k),
                });
            }
            h.at(at + 10);
            let out = h.feed(Input::ProbeAnswer {
                proxy: p2(),
                seq: k,
                arrived: Some(0),
                draining: false,
            });
            assert!(out.is_empty(), "probe {k}: {out:?}");
        }
        assert!(h.a.is_connected(p2()));
    }

    #[test]
    fn proxy_that_drains_while_admitting_us_is_left_after() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        let out = h.measured(measure_ticket(&out), &[(p1(), 5), (p2(), 1)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p2());
        // The notice comes while the admission is in flight.
        let out = h.feed(Input::DrainNotice {
            proxy: p2(),
            draining: true,
            reason: Some("self-defence: under attack".into()),
        });
        assert_eq!(
            out,
            vec![Action::Note(Note::Draining {
                proxy: p2(),
                reason: Some("self-defence: under attack".into())
            })]
        );
        // The admission goes through: the application gets a working route now, and
        // the move off the draining proxy starts at once.
        let out = h.admitted(a, p2(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p2()));
        assert!(out.contains(&Action::Ready { name: NAME.into() }));
        assert_eq!(measured_proxies(&out), vec![p1()]);
        let out = h.measured(measure_ticket(&out), &[(p1(), 5)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p1());
        let out = h.admitted(a, p1(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p1()));
        // New routes first, then the release at the draining proxy.
        let io = io(&out);
        assert_eq!(
            io[1..],
            [
                Action::Release {
                    proxy: p2(),
                    targets: vec![t()]
                },
                Action::CloseLink { proxy: p2() },
                Action::RemovePeer { proxy: p2() },
            ]
        );
        assert!(matches!(
            notes(&out).last(),
            Some(Note::FailoverDone {
                reason: MoveReason::Draining,
                ..
            })
        ));
        // A notice from a proxy we hold no connection to is not taken.
        assert!(h
            .feed(Input::DrainNotice {
                proxy: p4(),
                draining: true,
                reason: None
            })
            .is_empty());
    }

    #[test]
    fn two_proxies_drain_at_once() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2(), p3()], p1(), 300);
        h.up(OTHER, &[t2()], &[p1(), p2(), p3()], p2(), 300);
        h.at(100);
        let drain = |p| Input::DrainNotice {
            proxy: p,
            draining: true,
            reason: None,
        };
        let out = h.feed(drain(p1()));
        assert_eq!(measured_proxies(&out), vec![p2(), p3()]);
        let m = measure_ticket(&out);
        let out = h.feed(drain(p2()));
        assert_eq!(
            out,
            vec![Action::Note(Note::Draining {
                proxy: p2(),
                reason: None
            })]
        );
        // p2 answers fastest but drains now: moving from one draining proxy to another
        // gains nothing.
        let out = h.measured(m, &[(p2(), 1), (p3(), 5)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p3());
        let out = h.admitted(a, p3(), &[t()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, NAME, p3()));
        // p1 is left and closed; then the second drain's names move, to p3 as well.
        assert!(out.contains(&Action::CloseLink { proxy: p1() }));
        assert_eq!(measured_proxies(&out), vec![p3()]);
        let out = h.measured(measure_ticket(&out), &[(p3(), 5)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p3());
        let out = h.admitted(a, p3(), &[t(), t2()]);
        let out = h.routed(route_ticket(&out));
        assert!(has_route_up(&out, OTHER, p3()));
        assert!(out.contains(&Action::CloseLink { proxy: p2() }));
        let done: Vec<Note> = notes(&out)
            .into_iter()
            .filter(|n| matches!(n, Note::FailoverDone { .. }))
            .collect();
        assert_eq!(
            done,
            vec![Note::FailoverDone {
                proxy: p2(),
                reason: MoveReason::Draining,
                names: vec![OTHER.into()],
                now_via: vec![Some(p3())],
                elapsed: Duration::ZERO,
            }]
        );
        assert_eq!(h.a.proxy_of(NAME), Some(p3()));
        assert_eq!(h.a.proxy_of(OTHER), Some(p3()));
    }

    #[test]
    fn two_proxies_drain_and_none_is_left_each_name_stays() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p1(), 300);
        h.up(OTHER, &[t2()], &[p1(), p2()], p2(), 300);
        h.at(100);
        let out = h.feed(Input::DrainNotice {
            proxy: p1(),
            draining: true,
            reason: None,
        });
        let m = measure_ticket(&out);
        h.feed(Input::DrainNotice {
            proxy: p2(),
            draining: true,
            reason: None,
        });
        // No ping-pong: each name stays where it is.
        let out = h.measured(m, &[(p2(), 1)]);
        assert_eq!(
            io(&out),
            vec![Action::Route {
                ticket: route_ticket(&out),
                proxy: p1(),
                targets: vec![t()],
                source: c()
            }]
        );
        let out = h.routed(route_ticket(&out));
        assert_eq!(
            notes(&out)[0],
            Note::Staying {
                proxy: p1(),
                names: vec![NAME.into()]
            }
        );
        let r = route_ticket(&out);
        let out = h.routed(r);
        assert_eq!(
            notes(&out),
            vec![Note::Staying {
                proxy: p2(),
                names: vec![OTHER.into()]
            }]
        );
        assert!(io(&out).is_empty(), "{out:?}");
        assert_eq!(h.a.proxy_of(NAME), Some(p1()));
        assert_eq!(h.a.proxy_of(OTHER), Some(p2()));
    }

    #[test]
    fn refresh_racing_a_failover_follows_the_new_alt_set() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2(), p3()], p1(), 300);
        h.at(100);
        let out = h.feed(Input::LinkClosed {
            proxy: p1(),
            why: "reset".into(),
        });
        assert_eq!(measured_proxies(&out), vec![p2(), p3()]);
        let out = h.measured(measure_ticket(&out), &[(p2(), 1), (p3(), 5)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p2());
        // The coordinator reset the target meanwhile: p2 is no longer in the set.
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![p3(), p4()], 300)),
        });
        assert_eq!(
            out,
            vec![Action::Note(Note::AltChanged {
                name: NAME.into(),
                alts: vec![p3(), p4()]
            })]
        );
        // p2 admits us, but the work starts afresh on the new set.
        let out = h.admitted(a, p2(), &[t()]);
        assert_eq!(measured_proxies(&out), vec![p3(), p4()]);
        let out = h.measured(measure_ticket(&out), &[(p3(), 3), (p4(), 7)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p3());
        let out = h.admitted(a, p3(), &[t()]);
        let mut all = h.routed(route_ticket(&out));
        assert!(has_route_up(&all, NAME, p3()));
        assert!(notes(&all).contains(&Note::FailoverDone {
            proxy: p1(),
            reason: MoveReason::Lost,
            names: vec![NAME.into()],
            now_via: vec![Some(p3())],
            elapsed: Duration::ZERO,
        }));
        // The re-read's own check of the name keeps p3; the unused admission at p2 is
        // closed.
        let r = route_ticket(&all);
        all.extend(h.routed(r));
        assert!(all.contains(&Action::RemovePeer { proxy: p1() }));
        assert!(all.contains(&Action::CloseLink { proxy: p2() }));
        assert!(!all
            .iter()
            .any(|a| matches!(a, Action::Route { proxy, .. } if *proxy == p2())));
        assert_eq!(h.a.proxy_of(NAME), Some(p3()));
        assert!(!h.a.is_connected(p2()));
    }

    #[test]
    fn proxy_marked_down_is_tried_last_until_down_for_has_passed() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        let out = h.measured(measure_ticket(&out), &[(p1(), 9), (p2(), 2)]);
        let (_, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p2());
        let out = h.refused(2, p2());
        let out = h.admitted(admit_ticket(&out).0, p1(), &[t()]);
        h.routed(route_ticket(&out));
        // 10 s later: p2 is neither measured nor tried first, although it was the
        // fastest; it is still tried when p1 does not do.
        h.at(10_000);
        let out = h.lookup(OTHER, &[t2()], &[p1(), p2()], 300);
        assert_eq!(measured_proxies(&out), vec![p1()]);
        let out = h.measured(measure_ticket(&out), &[(p1(), 9)]);
        let (a, proxy) = admit_ticket(&out);
        assert_eq!(proxy, p1());
        let out = h.refused(a, p1());
        assert_eq!(admit_ticket(&out).1, p2());
        h.refused(admit_ticket(&out).0, p2());
        // Just before DOWN_FOR from the refusal at 10 s: p1 still down; p2 (refused again
        // at 10 s) too.
        assert!(h.a.is_down(p2(), h.time(39_999)));
        assert!(!h.a.is_down(p2(), h.time(40_000)));
        // After DOWN_FOR both are measured again and ranked by round trip.
        h.at(40_000);
        let out = h.lookup("ftp.site.example.", &[t2()], &[p1(), p2()], 300);
        assert_eq!(measured_proxies(&out), vec![p1(), p2()]);
        let out = h.measured(measure_ticket(&out), &[(p1(), 9), (p2(), 2)]);
        assert_eq!(admit_ticket(&out).1, p2());
    }

    #[test]
    fn retries_back_off_within_bounds() {
        let mut h = H::with(Config {
            max_refresh: Duration::from_secs(3600),
            ..config()
        });
        let out = h.lookup(NAME, &[t()], &[p1()], 3600);
        let out = h.measured(measure_ticket(&out), &[(p1(), 1)]);
        let out = h.refused(admit_ticket(&out).0, p1());
        assert_eq!(
            notes(&out)[1],
            Note::NoProxy {
                name: NAME.into(),
                alts: vec![p1()],
                retry_in: MIN_RETRY
            }
        );
        assert!(out.contains(&Action::Ready { name: NAME.into() }));
        let mut at = 0u64;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let next = h.a.retry_at(NAME).expect("a retry is due");
            let wait = next - h.time(at);
            waits.push(wait.as_secs());
            at += wait.as_millis() as u64;
            assert!(h.tick(at - 1).is_empty());
            // The refused proxy is tried at once while it is down (not measured), after
            // a measurement once DOWN_FOR has passed since the last refusal.
            let mut out = h.tick(at);
            if waits.last() == Some(&30) {
                assert_eq!(measured_proxies(&out), vec![p1()]);
                out = h.measured(measure_ticket(&out), &[(p1(), 1)]);
            } else {
                assert!(measured_proxies(&out).is_empty(), "{out:?}");
            }
            let (a, proxy) = admit_ticket(&out);
            assert_eq!(proxy, p1());
            let out = h.refused(a, p1());
            assert!(matches!(notes(&out)[1], Note::NoProxy { .. }));
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        // A success starts the next failures at the least wait again.
        let next = h.a.retry_at(NAME).unwrap();
        at += (next - h.time(at)).as_millis() as u64;
        let out = h.tick(at);
        let out = h.measured(measure_ticket(&out), &[(p1(), 1)]);
        let out = h.admitted(admit_ticket(&out).0, p1(), &[t()]);
        h.routed(route_ticket(&out));
        assert_eq!(h.a.retry_at(NAME), None);
        let out = h.at(at + 10).feed(Input::LinkClosed {
            proxy: p1(),
            why: "gone".into(),
        });
        let out = h.refused(admit_ticket(&out).0, p1());
        assert!(notes(&out).contains(&Note::NoProxy {
            name: NAME.into(),
            alts: vec![p1()],
            retry_in: MIN_RETRY
        }));
    }

    #[test]
    fn pushed_route_is_kept_while_its_proxy_is_in_the_alt_set() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p1(), 300);
        // The coordinator's push through p2 moves the name: the path is announced and
        // the admission at p1 released.
        let out = h.feed(Input::Pushed {
            name: NAME.into(),
            proxy: p2(),
            source: c(),
            targets: vec![t()],
            alts: vec![p1(), p2()],
            ttl: 300,
        });
        assert_eq!(
            out,
            vec![
                Action::Announce {
                    targets: vec![t()],
                    source: c()
                },
                Action::Release {
                    proxy: p1(),
                    targets: vec![t()]
                },
                Action::CloseLink { proxy: p1() },
                Action::RemovePeer { proxy: p1() },
            ]
        );
        assert_eq!(h.a.pushed_by(NAME), Some(p2()));
        // A lookup does not look for another proxy.
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        assert_eq!(out, vec![Action::Ready { name: NAME.into() }]);
        // A withdrawal by another proxy changes nothing; by p2 it tears down.
        assert!(h
            .feed(Input::Withdrawn {
                name: NAME.into(),
                proxy: p1()
            })
            .is_empty());
        let out = h.feed(Input::Withdrawn {
            name: NAME.into(),
            proxy: p2(),
        });
        assert_eq!(
            out,
            vec![
                Action::Note(Note::PushWithdrawn {
                    name: NAME.into(),
                    proxy: p2()
                }),
                Action::Unroute {
                    name: NAME.into(),
                    targets: vec![t()]
                },
                Action::RemovePeer { proxy: p2() },
            ]
        );
        // Pushed again, then p2 leaves the ALT set: the route goes until the next push.
        h.feed(Input::Pushed {
            name: NAME.into(),
            proxy: p2(),
            source: c(),
            targets: vec![t()],
            alts: vec![p1(), p2()],
            ttl: 300,
        });
        let out = h.feed(Input::Requeried {
            name: NAME.into(),
            answer: Some((vec![p1()], 300)),
        });
        assert!(notes(&out).contains(&Note::PushedProxyLeft {
            name: NAME.into(),
            proxy: Some(p2())
        }));
        assert!(out.contains(&Action::Unroute {
            name: NAME.into(),
            targets: vec![t()]
        }));
        assert_eq!(h.a.names().count(), 0);
    }

    #[test]
    fn name_gone_while_being_admitted_leaves_nothing_behind() {
        let mut h = H::new();
        let out = h.lookup(NAME, &[t()], &[p1(), p2()], 300);
        let out = h.measured(measure_ticket(&out), &[(p1(), 1)]);
        let (a, _) = admit_ticket(&out);
        let out = h.feed(Input::NoAlt { name: NAME.into() });
        assert_eq!(
            out,
            vec![
                Action::Note(Note::NoAlt { name: NAME.into() }),
                Action::Unroute {
                    name: NAME.into(),
                    targets: vec![t()]
                }
            ]
        );
        let out = h.admitted(a, p1(), &[t()]);
        // The lookup is answered; the admission no name uses is closed.
        assert_eq!(
            out,
            vec![
                Action::Ready { name: NAME.into() },
                Action::CloseLink { proxy: p1() },
                Action::RemovePeer { proxy: p1() },
            ]
        );
        assert_eq!(h.a.poll_timeout(), None);
    }

    #[test]
    fn shutdown_releases_everything() {
        let mut h = H::new();
        h.up(NAME, &[t()], &[p1(), p2()], p1(), 300);
        h.up(OTHER, &[t2()], &[p1(), p2()], p2(), 300);
        let out = h.a.shutdown(h.now);
        assert_eq!(
            out,
            vec![
                Action::Unroute {
                    name: OTHER.into(),
                    targets: vec![t2()]
                },
                Action::Release {
                    proxy: p2(),
                    targets: vec![t2()]
                },
                Action::CloseLink { proxy: p2() },
                Action::RemovePeer { proxy: p2() },
                Action::Unroute {
                    name: NAME.into(),
                    targets: vec![t()]
                },
                Action::Release {
                    proxy: p1(),
                    targets: vec![t()]
                },
                Action::CloseLink { proxy: p1() },
                Action::RemovePeer { proxy: p1() },
            ]
        );
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(300));
        // A TTL of 0 is re-read at the least interval, below a second if so configured.
        assert_eq!(refresh_in(0, min, max), min);
        assert_eq!(refresh_in(1, min, max), Duration::from_secs(1));
        assert_eq!(refresh_in(86400, min, max), max);
        // Bounds the wrong way round do not panic: the least interval wins.
        assert_eq!(
            refresh_in(5, Duration::from_secs(10), Duration::from_secs(1)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn path_watch_sees_packets_stop_arriving() {
        let mut w = PathWatch::default();
        // First answer: nothing to compare with.
        assert!(!w.observe(10, 5, 3));
        // Packets go and arrive.
        assert!(!w.observe(20, 15, 3));
        // Sent, none arrived: three probes in a row is the limit.
        assert!(!w.observe(30, 15, 3));
        assert!(!w.observe(40, 15, 3));
        assert!(w.observe(50, 15, 3));
        // One arrival clears it.
        assert!(!w.observe(60, 16, 3));
        assert_eq!(w.stalled, 0);
    }

    #[test]
    fn path_watch_idle_and_gaps_give_no_verdict() {
        let mut w = PathWatch::default();
        assert!(!w.observe(10, 10, 2));
        // Idle: fewer than PATH_MIN_SENT packets between probes, nothing arrived.
        for _ in 0..10 {
            assert!(!w.observe(10 + PATH_MIN_SENT - 1, 10, 2));
            w.last = Some((10, 10));
        }
        assert_eq!(w.stalled, 0);
        // A stall, then an answer without the proxy's count, then a comparison that
        // starts over: the gap is not judged.
        assert!(!w.observe(20, 10, 2));
        w.gap();
        assert!(!w.observe(1000, 10, 2));
        assert_eq!(w.stalled, 1);
        // Counters that went back (peer or session made anew) start over.
        assert!(!w.observe(5, 0, 2));
        assert_eq!(w.stalled, 0);
        // A limit of 0 acts as 1.
        let mut w = PathWatch::default();
        w.observe(0, 0, 0);
        assert!(w.observe(10, 0, 0));
    }
    mod interleavings {
        use super::*;
        use proptest::prelude::*;

        /// One thing the world does; numbers pick among small pools.
        #[derive(Debug, Clone)]
        enum Op {
            Lookup { name: u8, alts: u8, ttl: u8 },
            NoAlt(u8),
            Requeried { pick: u8, alts: u8 },
            Measured(u8),
            Admitted { pick: u8, ok: bool },
            Closed(u8),
            Drain { proxy: u8, on: bool },
            Probe { pick: u8, arrived: u8 },
            Pushed { name: u8, proxy: u8 },
            Withdrawn { name: u8, proxy: u8 },
            Time(u16),
            RoutesFail(bool),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (any::<u8>(), 1..16u8, any::<u8>()).prop_map(|(name, alts, ttl)| Op::Lookup {
                    name,
                    alts,
                    ttl: ttl % 8
                }),
                any::<u8>().prop_map(Op::NoAlt),
                (any::<u8>(), any::<u8>()).prop_map(|(pick, alts)| Op::Requeried { pick, alts }),
                any::<u8>().prop_map(Op::Measured),
                (any::<u8>(), any::<bool>()).prop_map(|(pick, ok)| Op::Admitted { pick, ok }),
                any::<u8>().prop_map(Op::Closed),
                (any::<u8>(), any::<bool>()).prop_map(|(proxy, on)| Op::Drain { proxy, on }),
                (any::<u8>(), any::<u8>()).prop_map(|(pick, arrived)| Op::Probe { pick, arrived }),
                (any::<u8>(), any::<u8>()).prop_map(|(name, proxy)| Op::Pushed { name, proxy }),
                (any::<u8>(), any::<u8>()).prop_map(|(name, proxy)| Op::Withdrawn { name, proxy }),
                (0..3000u16).prop_map(Op::Time),
                any::<bool>().prop_map(Op::RoutesFail),
            ]
        }

        const NAMES: [&str; 3] = ["a.example.", "b.example.", "c.example."];

        fn proxy(i: u8) -> IpAddr {
            IpAddr::from([10, 1, 0, 11 + i % 4])
        }

        fn alts(mask: u8) -> Vec<IpAddr> {
            (0..4u8)
                .filter(|i| mask & (1 << i) != 0)
                .map(proxy)
                .collect()
        }

        /// A driver in memory: answers what the core asks, when the test says.
        struct Sim {
            h: H,
            /// Actions that wait for an answer: measurements, admissions, re-reads,
            /// probes.
            pending: Vec<Action>,
            open: BTreeSet<IpAddr>,
            routes_fail: bool,
            /// Names whose lookup waits for Ready.
            waiting: BTreeSet<String>,
        }

        impl Sim {
            fn take(&mut self, out: Vec<Action>) {
                let mut todo: VecDeque<Action> = out.into();
                while let Some(a) = todo.pop_front() {
                    match a {
                        Action::Route { ticket, .. } => {
                            let result = if self.routes_fail {
                                Err("no route".into())
                            } else {
                                Ok(())
                            };
                            todo.extend(self.h.feed(Input::Routed { ticket, result }));
                        }
                        Action::Measure { .. }
                        | Action::Admit { .. }
                        | Action::Requery { .. }
                        | Action::Probe { .. } => self.pending.push(a),
                        Action::CloseLink { proxy } => {
                            assert!(
                                self.open.remove(&proxy),
                                "closed {proxy}, which is not open"
                            );
                        }
                        Action::Ready { name } => {
                            self.waiting.remove(&name);
                        }
                        _ => {}
                    }
                }
                // The network work is one name at a time.
                let in_flight = self
                    .pending
                    .iter()
                    .filter(|a| matches!(a, Action::Measure { .. } | Action::Admit { .. }))
                    .count();
                assert!(
                    in_flight <= 1,
                    "{in_flight} measurements or admissions at once"
                );
            }

            fn pick(&mut self, pick: u8, f: impl Fn(&Action) -> bool) -> Option<Action> {
                let idx: Vec<usize> = (0..self.pending.len())
                    .filter(|i| f(&self.pending[*i]))
                    .collect();
                if idx.is_empty() {
                    return None;
                }
                Some(self.pending.remove(idx[usize::from(pick) % idx.len()]))
            }

            fn admit(&mut self, a: Action, ok: bool) {
                let Action::Admit {
                    ticket,
                    proxy,
                    request,
                    ..
                } = a
                else {
                    unreachable!()
                };
                let result = if ok {
                    self.open.insert(proxy);
                    Ok(admitted(proxy, &request.targets))
                } else {
                    Err("refused".into())
                };
                let out = self.h.feed(Input::Admission {
                    ticket,
                    proxy,
                    result,
                });
                self.take(out);
            }

            fn measure(&mut self, a: Action) {
                let Action::Measure { ticket, proxies } = a else {
                    unreachable!()
                };
                let rtts = proxies
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (*p, Some(ms(i as u64 + 1))))
                    .collect();
                let out = self.h.feed(Input::Measured { ticket, rtts });
                self.take(out);
            }

            fn step(&mut self, op: Op) {
                let out = match op {
                    Op::Lookup {
                        name,
                        alts: mask,
                        ttl,
                    } => {
                        let name = NAMES[usize::from(name) % 3];
                        self.waiting.insert(name.into());
                        self.h
                            .lookup(name, &[t(), t2()], &alts(mask), u32::from(ttl))
                    }
                    Op::NoAlt(n) => self.h.feed(Input::NoAlt {
                        name: NAMES[usize::from(n) % 3].into(),
                    }),
                    Op::Requeried { pick, alts: mask } => {
                        match self.pick(pick, |a| matches!(a, Action::Requery { .. })) {
                            Some(Action::Requery { name }) => {
                                let answer = (mask & 0x30 != 0x30).then(|| (alts(mask), 1));
                                self.h.feed(Input::Requeried { name, answer })
                            }
                            _ => vec![],
                        }
                    }
                    Op::Measured(pick) => {
                        if let Some(a) = self.pick(pick, |a| matches!(a, Action::Measure { .. })) {
                            self.measure(a);
                        }
                        vec![]
                    }
                    Op::Admitted { pick, ok } => {
                        if let Some(a) = self.pick(pick, |a| matches!(a, Action::Admit { .. })) {
                            self.admit(a, ok);
                        }
                        vec![]
                    }
                    Op::Closed(p) => {
                        let p = proxy(p);
                        if self.open.remove(&p) {
                            self.h.feed(Input::LinkClosed {
                                proxy: p,
                                why: "closed".into(),
                            })
                        } else {
                            vec![]
                        }
                    }
                    Op::Drain { proxy: p, on } => {
                        let p = proxy(p);
                        if self.open.contains(&p) {
                            self.h.feed(Input::DrainNotice {
                                proxy: p,
                                draining: on,
                                reason: None,
                            })
                        } else {
                            vec![]
                        }
                    }
                    Op::Probe { pick, arrived } => {
                        match self.pick(pick, |a| matches!(a, Action::Probe { .. })) {
                            Some(Action::Probe { proxy, seq }) if self.open.contains(&proxy) => {
                                let mut out = self.h.feed(Input::SentCount {
                                    proxy,
                                    seq,
                                    sent: Some(seq * 10),
                                });
                                out.extend(self.h.feed(Input::ProbeAnswer {
                                    proxy,
                                    seq,
                                    arrived: Some(u64::from(arrived % 4)),
                                    draining: arrived > 250,
                                }));
                                out
                            }
                            _ => vec![],
                        }
                    }
                    Op::Pushed { name, proxy: p } => self.h.feed(Input::Pushed {
                        name: NAMES[usize::from(name) % 3].into(),
                        proxy: proxy(p),
                        source: c(),
                        targets: vec![t()],
                        alts: alts(0xf),
                        ttl: 5,
                    }),
                    Op::Withdrawn { name, proxy: p } => self.h.feed(Input::Withdrawn {
                        name: NAMES[usize::from(name) % 3].into(),
                        proxy: proxy(p),
                    }),
                    Op::Time(d) => {
                        let now = self.h.now + ms(u64::from(d));
                        self.h.now = now;
                        let out = self.h.feed(Input::Tick);
                        self.take(out);
                        // Nothing left to do now: no busy loop for the driver.
                        if let Some(t) = self.h.a.poll_timeout() {
                            assert!(t > now, "poll_timeout {t:?} is not after now {now:?}");
                        }
                        vec![]
                    }
                    Op::RoutesFail(f) => {
                        self.routes_fail = f;
                        vec![]
                    }
                };
                self.take(out);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever happens in whatever order, the core never panics, closes only
            /// connections that are open, does one name's network work at a time,
            /// leaves no timer due, and answers every lookup once its work is done.
            #[test]
            fn any_interleaving_keeps_the_core_sound(ops in proptest::collection::vec(op(), 1..80)) {
                let mut sim = Sim {
                    h: H::new(),
                    pending: Vec::new(),
                    open: BTreeSet::new(),
                    routes_fail: false,
                    waiting: BTreeSet::new(),
                };
                for op in ops {
                    sim.step(op);
                }
                // Let the network work finish: every proxy measured admits us.
                sim.routes_fail = false;
                for _ in 0..200 {
                    if let Some(a) = sim.pick(0, |a| matches!(a, Action::Measure { .. })) {
                        sim.measure(a);
                    } else if let Some(a) = sim.pick(0, |a| matches!(a, Action::Admit { .. })) {
                        sim.admit(a, true);
                    } else {
                        break;
                    }
                }
                prop_assert!(sim.h.a.ensure.is_none() && sim.h.a.running.is_none());
                prop_assert!(sim.waiting.is_empty(), "lookups never answered: {:?}", sim.waiting);
                let now = sim.h.now;
                let out = sim.h.a.shutdown(now);
                sim.take(out);
                prop_assert!(sim.open.is_empty(), "open after shutdown: {:?}", sim.open);
            }
        }
    }
}
