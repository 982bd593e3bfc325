//! The SCOLD testbed.
pub mod cli;
