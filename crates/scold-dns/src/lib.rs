//! Secure DNS of SCOLD (paper Section 3): how clients learn which proxies lead to a
//! target under attack.
//!
//! - [`alt`]: the ALT record codec (sans-IO), used by every part that reads ALT answers.
//! - [`zonefile`], [`zone`], [`answer`]: master files, zone data and the query path of
//!   `scold dns`, the target's authoritative server ([`server`]).
//! - [`update`], [`tsig`], [`journal`]: RFC 2136 dynamic update authenticated with
//!   RFC 8945 TSIG, per-key policy, and the on-disk journal that makes every acknowledged
//!   update survive a crash; [`startup`] decides how the journal and the zone files
//!   combine at start (torn tail, damage, a zone file edited past the journal).
//!   [`rrl`] limits responses per source. [`zonereload`] applies edited, added and
//!   removed zones on a config reload (SIGHUP) without losing an acknowledged update.
//! - [`transfer`], [`notify`]: secondaries. AXFR and IXFR (from the recent changes) to
//!   TSIG-authorized secondaries, multi-message TSIG; signed NOTIFY after every change,
//!   retried with back-off. [`knot`] writes the configuration of a Knot secondary.
//! - [`updater`]: the coordinator's client that sets and clears a target's ALT set, and
//!   the proxy's signed NOTIFY.
//! - [`resolver`]: `scold resolver`, the client site's caching resolver (ClientDNS) that
//!   drops a cached name on a TSIG-signed NOTIFY from a proxy.
//!
//! Everything speaks standard DNS (ALT is an RFC 3597 unknown type), so BIND, Knot,
//! Unbound and `nsupdate` interoperate with no patch.

#![forbid(unsafe_code)]

pub mod alt;
pub mod answer;
pub mod cli;
pub mod config;
pub mod error;
pub mod journal;
pub mod knot;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod resolver;
pub mod rrl;
pub mod server;
pub mod startup;
pub mod transfer;
pub mod tsig;
pub mod update;
pub mod updater;
pub mod wire;
pub mod zone;
pub mod zonefile;
pub mod zonereload;

#[cfg(test)]
mod testutil;

pub use tsig::{TsigAlgorithm, TsigKey};
pub use updater::{send_notify, UpdateError, Updater};
