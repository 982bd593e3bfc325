//! Secure DNS of SCOLD.
pub mod cli;
