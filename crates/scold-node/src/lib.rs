//! The SCOLD daemons on the data path: `scold proxy`, `scold gateway`, `scold target`,
//! `scold client`.
//!
//! Each daemon reads one TOML file whose static entries (peers, sessions, routes, NAT
//! services) are applied at start-up as the same `scold_proto::dataplane::Command`s the
//! coordinator sends later through the control channel. Each module exposes
//! `serve(config, commands, shutdown)`, which the control plane calls with its own
//! command channel, and `run(Args)`, the CLI entry point.
//!
//! With a `[control]` table, `run` links the daemon to the coordinator
//! ([`control`]): it registers with its tunnel end point, and the coordinator's orders
//! arrive in the same command channel as the static entries. The target also watches
//! its main link ([`detect`]) and keeps the return path of diverted clients
//! ([`returnpath`]); the proxy filters what arrives on its link ([`filter`]).

pub mod admission;
pub mod client;
pub mod common;
pub mod control;
pub mod detect;
pub mod filter;
pub mod gateway;
pub mod proxy;
pub mod push;
pub mod returnpath;
pub mod target;
