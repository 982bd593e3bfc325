//! The SCOLD daemons on the data path, one folder per role: `scold proxy` ([`proxy`]),
//! `scold gateway` ([`gateway`]), `scold target` ([`target`]), `scold client`
//! ([`client`]), and what they share ([`node`]).
//!
//! Each role is a thin I/O shell over pure cores that live in `scold-proto` with the
//! other protocol logic: the admission and push exchanges
//! ([`scold_proto::admission`], [`scold_proto::push`]), the client agent's decisions
//! ([`scold_proto::agent`]) and the data-plane commands.
//!
//! - [`proxy`]: admits clients ([`proxy::admission`]), pushes routes to them
//!   ([`proxy::push`]), filters what it relays and what floods it ([`proxy::filter`]),
//!   relays to the hidden gateway, and in scheme 4.3 accepts the target's service ports.
//! - [`client`]: the client agent: a SCOLD-aware stub resolver, the admission at a proxy
//!   ([`client::admission`]), the driver of the agent's decision core (failover,
//!   drains, ALT re-reads), and the scheme 4.2 push listener.
//! - [`target`]: watches its main link ([`target::detect`]) and keeps the return path of
//!   diverted clients ([`target::returnpath`]).
//! - [`gateway`]: the hidden alternate gateway; tunnels from registered proxies only.
//! - [`node`]: the daemon skeleton every role runs on: config sections, the command
//!   channel that static config entries and the coordinator's orders share, the link to
//!   the coordinator ([`node::control`]), framed messages over TLS ([`node::wire`]).

#![forbid(unsafe_code)]

pub mod client;
pub mod gateway;
pub mod node;
pub mod proxy;
pub mod target;
