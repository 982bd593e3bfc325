//! The SCOLD daemons on the data path: `scold proxy`, `scold gateway`, `scold target`,
//! `scold client`.
//!
//! Each daemon reads one TOML file whose static entries (peers, sessions, routes, NAT
//! services) are applied at start-up as the same `scold_proto::dataplane::Command`s the
//! coordinator sends later through the control channel. Each module exposes
//! `serve(config, commands, shutdown)`, which the control plane calls with its own
//! command channel, and `run(Args)`, the CLI entry point.

pub mod client;
pub mod common;
pub mod gateway;
pub mod proxy;
pub mod target;
