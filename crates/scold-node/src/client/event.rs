//! What the DNS front ([`super::stub`]), the push service ([`super::push`]) and the
//! agent's own tasks tell the agent's loop ([`super::agent`]).

use super::admission::AdmissionConn;
use scold_proto::admission::Admitted;
use scold_proto::agent::{Input, Ticket};
use scold_proto::push::{PushAnswer, RouteOffer};
use std::net::IpAddr;
use tokio::sync::oneshot;

/// What the DNS front, the push service and the agent's own tasks tell the agent's loop.
pub(super) enum Event {
    /// An A/AAAA answer for `name` came with ALT records: set the route up, then answer.
    Lookup {
        name: String,
        targets: Vec<IpAddr>,
        alts: Vec<IpAddr>,
        ttl: u32,
        done: oneshot::Sender<()>,
    },
    /// A lookup of `name` found no ALT records.
    NoAlt { name: String },
    /// Scheme 4.2: a verified proxy (certificate role proxy, address in the name's ALT
    /// set `alts`) pushed a route. `from`: the address it connected from; `local`: ours
    /// on that path.
    Push {
        from: IpAddr,
        local: IpAddr,
        offer: RouteOffer,
        alts: Vec<IpAddr>,
        ttl: u32,
        answer: oneshot::Sender<PushAnswer>,
    },
    /// Scheme 4.2: a verified proxy withdrew its route to `name`.
    Withdraw {
        from: IpAddr,
        name: String,
        answer: oneshot::Sender<PushAnswer>,
    },
    /// The result of a re-read or a measurement the core asked for.
    Done(Input),
    /// A new admission connection, admitted (or why not).
    Connected {
        ticket: Ticket,
        proxy: IpAddr,
        result: Result<Box<(AdmissionConn, Admitted)>, String>,
    },
    /// An admission over the open connection `gen` to `proxy`.
    Readmitted {
        ticket: Ticket,
        proxy: IpAddr,
        gen: u64,
        result: Result<Admitted, String>,
    },
    /// From the task that owns the admission connection `gen` to `proxy`.
    Link {
        proxy: IpAddr,
        gen: u64,
        event: LinkEvent,
    },
}

/// What a connection task reports.
pub(super) enum LinkEvent {
    ProbeAnswer {
        seq: u64,
        arrived: Option<u64>,
        draining: bool,
    },
    /// The proxy started or stopped draining (a notice, or a probe answer's flag).
    Draining {
        draining: bool,
        reason: Option<String>,
    },
    /// The connection broke or the proxy closed it; the task has ended.
    Closed { why: String },
}
