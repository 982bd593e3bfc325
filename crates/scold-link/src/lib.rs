//! How SCOLD daemons talk on the control plane, for both ends: the mutual-TLS
//! [`channel`] every pair of daemons speaks (frames, requests and answers, role checks),
//! a node's [`link`] to the coordinator (register, heartbeat, reconnect), and the `[tls]`
//! table of their config files ([`tls`]).
//!
//! Nodes depend on this crate, not on the coordinator's: a proxy or a client links
//! neither the coordinator's store nor its driver. The messages themselves are sans-IO in
//! `scold_proto::control`.

#![forbid(unsafe_code)]

pub mod channel;
pub mod link;
pub mod tls;

pub use channel::{Channel, ChannelError, Handler};
pub use link::CoordinatorLink;
pub use tls::{TlsConfig, TlsLoadError};
