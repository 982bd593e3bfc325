//! The SCOLD control plane.
pub mod coordinator;
pub mod ctl;
