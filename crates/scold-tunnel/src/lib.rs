//! The indirect route's data plane (paper Section 4): user-space tunnels over TUN.
//!
//! Nothing here needs a kernel tunnel module. A node's [`engine::Engine`] owns one TUN
//! device (where it needs one), one UDP socket and one raw IP-protocol-4 socket, shared by
//! all its tunnel peers and demultiplexed by outer source address, and moves inner
//! packets between them after the [`fib`] decides where each goes. The encapsulations
//! ([`encap`]) are `ipip` (RFC 2003, wire-compatible with Linux `ip tunnel mode ipip`),
//! `udp`, and `wireguard` (boringtun's noise state machine). Routes and policy rules go
//! through rtnetlink ([`netlink`]) into a table of SCOLD's own, so tearing down restores
//! routing exactly. [`nat`] relays TCP and UDP services for scheme 4.3, optionally
//! behind a PROXY protocol v2 header ([`proxy_protocol`]). A relay that joins tunnels
//! of different overheads answers packets too big for the next one with ICMP
//! ([`icmp`]), and a node can hang a per-packet judge on the relay path
//! ([`engine::Inspect`]: the proxy's IDS/firewall).
//!
//! The daemons in `scold-node` configure these pieces; the commands that drive them are
//! the sans-IO types of `scold_proto::dataplane`.

pub mod encap;
pub mod engine;
pub mod error;
pub mod fib;
pub mod icmp;
pub mod keys;
pub mod nat;
pub mod netlink;
pub mod poll;
pub mod proxy_protocol;
pub mod socket;
pub mod steer;
pub mod tun;

pub use engine::{Engine, EngineConfig, EngineHandle, Inspect, PeerDrops, State};
pub use error::TunnelError;
