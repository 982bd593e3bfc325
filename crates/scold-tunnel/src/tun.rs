//! TUN devices through tun-rs.

use crate::error::TunnelError;
use std::os::fd::{AsRawFd, RawFd};
use tun_rs::{DeviceBuilder, SyncDevice};

/// A layer-3 TUN device, non-blocking, for the packet engine's own threads: one queue
/// per engine thread.
///
/// The descriptors are deliberately not registered with the tokio reactor: the engine
/// waits on them in its own epoll sets, and a second registration would wake a runtime
/// worker for every packet as well.
pub struct TunDevice {
    pub(crate) queues: Vec<TunQueue>,
}

/// One queue of a TUN device: the kernel hands each flow's packets to one queue, and a
/// write to any queue enters the stack.
pub struct TunQueue {
    pub(crate) dev: SyncDevice,
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

impl TunDevice {
    /// The device's interface name.
    pub fn name(&self) -> Result<String, TunnelError> {
        Ok(self.queues[0].dev.name()?)
    }

    /// How many queues (engine threads) it has.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }
}

/// Creates (and brings up) a layer-3 TUN device named `name` with the given MTU and
/// `queues` queues (at least one; more than one makes it a multi-queue device,
/// `IFF_MULTI_QUEUE`, which spreads flows over the queues by their hash).
///
/// Offloads are on (`IFF_VNET_HDR` with TSO/GSO): the kernel hands over a whole TCP burst
/// of up to 64 KB in one read, which the engine splits, and takes coalesced segments in
/// one write. Without this every inner packet costs a system call at the TUN boundary.
pub fn create(name: &str, mtu: u16, queues: usize) -> Result<TunDevice, TunnelError> {
    let err = |source| TunnelError::Tun {
        name: name.to_string(),
        source,
    };
    let first = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .offload(true)
        .multi_queue(queues > 1)
        .build_sync()
        .map_err(err)?;
    let mut devs = Vec::with_capacity(queues.max(1));
    for _ in 1..queues {
        devs.push(first.try_clone().map_err(err)?);
    }
    devs.insert(0, first);
    let mut out = Vec::with_capacity(devs.len());
    for dev in devs {
        dev.set_nonblocking(true).map_err(err)?;
        out.push(TunQueue { dev });
    }
    Ok(TunDevice { queues: out })
}
