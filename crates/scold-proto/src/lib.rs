//! Sans-IO wire formats and state machines of SCOLD.
//!
//! Everything here is pure: no sockets, no clocks (time is a parameter), no threads.
//! The daemons in `scold-node` drive these types over real I/O; the fuzz targets and
//! unit tests drive them over bytes in memory.

#![forbid(unsafe_code)]

pub mod admission;
pub mod agent;
pub mod control;
pub mod cookie;
pub mod dataplane;
pub mod frame;
pub mod identity;
pub mod limits;
pub mod push;
pub mod state;
