//! The SCOLD control plane: the mutual-TLS channel every pair of daemons speaks, the
//! coordinator that drives each target's state machine with its durable store, a node's
//! link to the coordinator, the operator CLI, and Prometheus metrics.
//!
//! The wire formats and the state machine themselves are sans-IO in `scold-proto`; this
//! crate is the I/O around them.

pub mod agent;
pub mod channel;
pub mod config;
pub mod coordinator;
pub mod ctl;
/// The daemons' Prometheus metrics (kept here under its old path).
pub use scold_metrics as metrics;
pub mod orchestrate;
pub mod store;
