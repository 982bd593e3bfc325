//! The SCOLD coordinator: the daemon that drives each target's state machine with its
//! durable store, and the operator CLI (`scold ctl`).
//!
//! The wire formats and the state machine themselves are sans-IO in `scold-proto`; the
//! channel the coordinator speaks and the nodes' link to it are in `scold-link`, so no
//! node links this crate or its store.

#![forbid(unsafe_code)]

pub mod config;
pub mod coordinator;
pub mod ctl;
pub mod etcd;
pub mod http;
pub mod orchestrate;
pub mod store;
pub mod webhook;
