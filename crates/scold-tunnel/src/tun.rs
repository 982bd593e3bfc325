//! TUN devices through tun-rs.

use crate::error::TunnelError;
use tun_rs::{AsyncDevice, DeviceBuilder};

/// Creates (and brings up) a layer-3 TUN device named `name` with the given MTU.
///
/// Offloads are on (`IFF_VNET_HDR` with TSO/GSO): the kernel hands over a whole TCP burst
/// of up to 64 KB in one read, which the engine splits, and takes coalesced segments in
/// one write. Without this every inner packet costs a system call at the TUN boundary.
pub fn create(name: &str, mtu: u16) -> Result<AsyncDevice, TunnelError> {
    DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .offload(true)
        .build_async()
        .map_err(|source| TunnelError::Tun {
            name: name.to_string(),
            source,
        })
}
