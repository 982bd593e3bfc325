//! What every SCOLD daemon shares, whatever its role: reading its one TOML file with
//! errors an operator can act on ([`config`]), the per-source limits at the door of each
//! listener ([`gate`]), one shutdown signal ([`shutdown`]) and live config reload on
//! SIGHUP ([`reload`]),
//! so `scold coordinator`, `scold dns`, `scold resolver` and the data-path daemons stop
//! and complain the same way.
//!
//! The role-specific skeletons (a node's control link, the coordinator's store) are
//! built on these in their own crates.

#![forbid(unsafe_code)]

pub mod config;
pub mod gate;
pub mod reload;
pub mod shutdown;

pub use config::{load, parse, resolve, ConfigError};
pub use gate::{Door, Gate, Pass, Throttle};
pub use shutdown::{shutdown_signal, terminated, until_set, wait_for_signal};
