//! Test support shared by SCOLD's test suites, written once so every suite finds the
//! binary, checks the host and cleans up the same way:
//!
//! - [`scold_bin`]: the built `scold` binary the process tests run;
//! - [`require_root`], [`require_tool`]: a test that lacks root or a tool fails with a
//!   message naming what to do (the Debian package to install), it never passes
//!   silently;
//! - [`Netns`] and [`Net`]: uniquely named network namespaces, veth links and a bridge,
//!   removed on drop, also while a failed assertion unwinds;
//! - [`Proc`]: a child process with its output in a log file, stopped by the PID we
//!   started (never by name) when dropped;
//! - bounded waits ([`wait_for`], [`wait_until`], [`wait_tcp_port`]) and a free
//!   loopback port ([`free_port`]);
//! - [`browser`]: headless Chromium in a namespace (the DOM, a screenshot, a live page
//!   over the DevTools protocol);
//! - [`EtcdCluster`]: a real etcd cluster on loopback, for coordinator replicas;
//! - shell helpers ([`sh`], [`must`], [`must_run`], [`output`]) whose failures carry the
//!   command and its output.
//!
//! What only one suite needs (a consortium topology, DNS fixtures, `scold ctl`) stays in
//! that suite's `tests/common/`, built on these pieces.
#![forbid(unsafe_code)]

mod bin;
pub mod browser;
mod etcd;
mod host;
mod net;
mod netns;
mod proc;
mod text;
mod wait;

pub use bin::scold_bin;
pub use etcd::EtcdCluster;
pub use host::{
    find_tool, is_root, must, must_run, output, require_root, require_tool, require_tools, sh,
};
pub use net::Net;
pub use netns::{unique_suffix, Netns, NETNS_DIR, NETNS_ETC_DIR};
pub use proc::{send_signal, Proc, Signal, STOP_GRACE};
pub use text::{strip_ansi, tail};
pub use wait::{free_port, poll_until, tcp_listening, wait_for, wait_tcp_port, wait_until};
