//! Errors of the tunnel layer.

use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot create TUN device {name:?}: {source} (is /dev/net/tun present and are we root or CAP_NET_ADMIN?)")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op} failed: {message}")]
    Netlink { op: String, message: String },
    #[error("invalid WireGuard key {what}: {reason}")]
    BadKey { what: String, reason: String },
    #[error("peer {name}: {reason}")]
    Peer { name: String, reason: String },
    #[error("address {0} is already used by another peer")]
    AddressInUse(IpAddr),
    #[error("{0}")]
    Config(String),
    #[error("the packet engine has stopped")]
    EngineStopped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
