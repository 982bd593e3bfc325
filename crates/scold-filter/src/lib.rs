//! Attack detection and the proxy IDS/firewall of SCOLD.
//!
//! SCOLD starts when the target detects an attack on its main link, and relies
//! on every proxy to filter attack traffic out of what it relays to the target
//! (paper Sections 1, 2.1, 4.4). This crate holds that logic for the daemons in
//! `scold-node`:
//!
//! - [`detect`]: sans-IO link-rate anomaly detector of the target (alarm and
//!   all-clear with an [`detect::AttackSummary`] for the coordinator).
//! - [`firewall`]: sans-IO per-packet filter of the proxy (per-source token
//!   buckets, flood classification, block list with expiry, traceback list).
//! - [`selfdefence`]: sans-IO detection of a severe attack on a proxy itself.
//! - [`capture`] (Linux): the one AF_PACKET capture with its classic BPF programs,
//!   used by the target's sampler and the proxy's link watcher.
//! - [`sample`] and [`monitor`] (Linux): read a link's counters and sample its
//!   packets, and drive a detector from them in a tokio task.
//! - [`nft`]: the nftables back end that drops blocked sources in the kernel.
//! - [`xdp`] (Linux): the same block list as an XDP program, dropping blocked IPv4
//!   sources at the interface before the stack.
//!
//! The sans-IO parts take time as a parameter and never touch a socket, so the
//! same code runs in tests on synthetic traces and in the daemons.

#[cfg(target_os = "linux")]
pub mod capture;
pub mod detect;
pub mod firewall;
pub mod heavy;
#[cfg(target_os = "linux")]
pub mod monitor;
#[cfg(target_os = "linux")]
pub mod nft;
pub mod packet;
#[cfg(target_os = "linux")]
pub mod sample;
pub mod selfdefence;
#[cfg(target_os = "linux")]
pub mod xdp;

pub use detect::{
    AllClearSummary, AttackKind, AttackSummary, Detector, DetectorConfig, DetectorEvent,
    LinkSample, Rates, SourceCount,
};
pub use firewall::{Alert, DropReason, Filter, FilterConfig, FilterEvent, FloodKind, Verdict};
pub use selfdefence::{
    AdmissionExcuse, LoadSample, PortCounters, SelfDefence, SelfDefenceConfig, SelfDefenceEvent,
};
