//! The SCOLD testbed (`scold lab`): the paper's Figure 8 built from network namespaces
//! on one Linux host, with the traffic, attack and measurement tools that reproduce its
//! Section 5, and the report that sets our figures beside the paper's.
//!
//! It is also the harness of every end-to-end test: other crates build a
//! [`topology::Topology`] (or the ready-made [`fig8::Fig8`]), start real processes in
//! its nodes with [`topology::Topology::spawn`], and rely on its tear-down to leave
//! nothing behind. Only this crate shells out to iproute2 (`ip`, `tc`); the daemons use
//! netlink.
//!
//! The scenario ([`scenario`]) runs every role as its own `scold` process
//! ([`roles`]): coordinator, TargetDNS, ClientDNS, gateway, proxies, target and client
//! agents, with a CA and configs made for the run as the daemons' own config structs
//! ([`configs`]).

pub mod adversary;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod configs;
pub mod dnsq;
pub mod error;
pub mod fig8;
pub mod flood;
pub mod html;
pub mod measure;
pub mod net;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod roles;
pub mod scenario;
pub mod serve;
pub mod settings;
pub mod takeover;
pub mod timeline;
pub mod topology;

pub use error::LabError;
pub use fig8::{Fig8, Fig8Options};
pub use net::{Ipv4Net, LAB_RANGE};
pub use topology::{LabProcess, Spec, Tbf, Topology};
