//! Why `scold dns` cannot start: the errors of loading its zones and journal
//! (`startup`) and of opening its sockets (`server`).

use crate::journal::JournalError;
use std::net::SocketAddr;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A zone file is wrong.
    #[error(transparent)]
    ZoneFile(#[from] crate::zonefile::ZoneFileError),
    /// The journal cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A socket could not be opened.
    #[error("cannot listen on {addr} ({proto}): {source} (is another server on that port? ports below 1024 need root)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// udp or tcp.
        proto: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// A zone name is wrong.
    #[error("zone `{0}` is not a valid domain name")]
    ZoneName(String),
    /// The same zone twice.
    #[error("zone `{0}` is configured twice")]
    DuplicateZone(String),
}
