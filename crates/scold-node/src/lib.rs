//! The SCOLD daemons on the data path.
pub mod client;
pub mod gateway;
pub mod proxy;
pub mod target;
