//! The testbed's error type.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Everything that can go wrong while building, using or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the SCOLD lab needs root to create network namespaces (CAP_NET_ADMIN and CAP_SYS_ADMIN); \
         run it as root, for example `sudo -E cargo run -p scold -- lab`"
    )]
    NotRoot,

    #[error("`{tool}` was not found on PATH; install the Debian package `{package}`")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },

    #[error("the SCOLD lab needs programs that are not installed: {programs}; install them with `{install}` (scripts/lab does this before it builds)")]
    ToolsMissing { programs: String, install: String },

    #[error("the kernel offers no TUN devices (/dev/net/tun is missing); load the module with `modprobe tun`")]
    NoTun,

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid prefix `{input}`: {reason}")]
    BadPrefix { input: String, reason: &'static str },

    #[error("invalid topology: {0}")]
    BadSpec(String),

    #[error("no node `{0}` in this topology")]
    UnknownNode(String),

    #[error("cannot enter the network namespace of `{node}` ({path}): {source}")]
    EnterNetns {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "refusing to send to {addr}: it is outside the testbed's address ranges ({allowed}); \
         attack traffic only ever goes to addresses inside the lab's namespaces"
    )]
    OutsideTestbed { addr: Ipv4Addr, allowed: String },

    #[error(
        "refusing to flood from outside a lab network namespace (the host's own included); \
         run the generator inside one (`ip netns exec scoldlab-... scold lab flood ...`)"
    )]
    NotInLabNetns,

    #[error("invalid flood parameters: {0}")]
    BadFlood(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} timed out after {secs:.1} s")]
    Timeout { what: String, secs: f64 },

    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: String, reason: String },

    #[error("{role} ({program}) {problem}; its log is {}{tail}", log.display())]
    Role {
        role: String,
        program: String,
        problem: String,
        log: PathBuf,
        /// The log's last lines, starting with a newline, or empty.
        tail: String,
    },
}

impl LabError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
