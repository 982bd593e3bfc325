//! TUN devices through tun-rs.

use crate::error::TunnelError;
use tun_rs::{DeviceBuilder, SyncDevice};

/// A layer-3 TUN device, non-blocking, for the packet engine's own thread.
///
/// The descriptor is deliberately not registered with the tokio reactor: the engine waits
/// on it in its own epoll set, and a second registration would wake a runtime worker for
/// every packet as well.
pub struct TunDevice {
    pub(crate) dev: SyncDevice,
}

impl TunDevice {
    /// The device's interface name.
    pub fn name(&self) -> Result<String, TunnelError> {
        Ok(self.dev.name()?)
    }
}

/// Creates (and brings up) a layer-3 TUN device named `name` with the given MTU.
///
/// Offloads are on (`IFF_VNET_HDR` with TSO/GSO): the kernel hands over a whole TCP burst
/// of up to 64 KB in one read, which the engine splits, and takes coalesced segments in
/// one write. Without this every inner packet costs a system call at the TUN boundary.
pub fn create(name: &str, mtu: u16) -> Result<TunDevice, TunnelError> {
    let err = |source| TunnelError::Tun {
        name: name.to_string(),
        source,
    };
    let dev = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .offload(true)
        .build_sync()
        .map_err(err)?;
    dev.set_nonblocking(true).map_err(err)?;
    Ok(TunDevice { dev })
}
