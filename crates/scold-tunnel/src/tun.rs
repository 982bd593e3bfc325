//! TUN devices through tun-rs.

use crate::error::TunnelError;
use tun_rs::{AsyncDevice, DeviceBuilder};

/// Creates (and brings up) a layer-3 TUN device named `name` with the given MTU.
pub fn create(name: &str, mtu: u16) -> Result<AsyncDevice, TunnelError> {
    DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .build_async()
        .map_err(|source| TunnelError::Tun {
            name: name.to_string(),
            source,
        })
}
