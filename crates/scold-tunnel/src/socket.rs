//! Outer sockets: one UDP socket (for `udp` and `wireguard` peers) and one raw
//! IP-protocol-4 socket (for `ipip` peers) per node, each shared by all peers and
//! demultiplexed by the outer source address.
//!
//! Both force path MTU discovery on (`IP_PMTUDISC_DO`): the outer packet is never
//! fragmented, an oversized one fails with `EMSGSIZE` and is counted. Reads and writes are
//! batched with `recvmmsg`/`sendmmsg` into buffers allocated once.

use crate::encap::MAX_PACKET;
use crate::error::TunnelError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use tokio::io::unix::AsyncFd;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 32;

const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterKind {
    Udp,
    Ipip,
}

pub struct OuterSocket {
    fd: AsyncFd<Socket>,
    kind: OuterKind,
}

/// Received datagrams: payload (for ipip, after the outer IPv4 header) and source.
pub struct RxBatch {
    data: Box<[u8]>,
    lens: [usize; BATCH],
    offsets: [usize; BATCH],
    srcs: [SocketAddr; BATCH],
    n: usize,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            data: vec![0u8; BATCH * MAX_PACKET].into_boxed_slice(),
            lens: [0; BATCH],
            offsets: [0; BATCH],
            srcs: [SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            n: 0,
        }
    }
}

impl RxBatch {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i`: its payload and its source.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let base = i * MAX_PACKET;
        (
            &self.data[base + self.offsets[i]..base + self.lens[i]],
            self.srcs[i],
        )
    }
}

/// Datagrams waiting to be sent.
pub struct TxBatch {
    data: Box<[u8]>,
    lens: [usize; BATCH],
    dsts: [SocketAddr; BATCH],
    n: usize,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch {
            data: vec![0u8; BATCH * MAX_PACKET].into_boxed_slice(),
            lens: [0; BATCH],
            dsts: [SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            n: 0,
        }
    }
}

impl TxBatch {
    pub fn is_full(&self) -> bool {
        self.n == BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The next free slot, to encapsulate into. Call [`TxBatch::commit`] to keep it.
    pub fn slot(&mut self) -> &mut [u8] {
        debug_assert!(self.n < BATCH);
        let base = self.n * MAX_PACKET;
        &mut self.data[base..base + MAX_PACKET]
    }

    /// Keeps the first `len` bytes of the slot for `dst`.
    pub fn commit(&mut self, len: usize, dst: SocketAddr) {
        self.lens[self.n] = len;
        self.dsts[self.n] = dst;
        self.n += 1;
    }

    /// Copies `payload` into the next slot for `dst`.
    pub fn push(&mut self, payload: &[u8], dst: SocketAddr) {
        let len = payload.len().min(MAX_PACKET);
        self.slot()[..len].copy_from_slice(&payload[..len]);
        self.commit(len, dst);
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }
}

/// Outcome of a flush.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendReport {
    pub sent: u64,
    pub bytes: u64,
    /// Refused by the kernel as larger than the path MTU.
    pub too_big: u64,
    /// Other errors: unreachable peer (ICMP reported back), no route, filtered.
    pub errors: u64,
}

fn set_int_opt(fd: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live i32 and the length passed is its size; the fd is open.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn tune(sock: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_opt(
            sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )?;
    } else {
        set_int_opt(
            sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
    }
    // Large buffers absorb bursts between two turns of the loop. The FORCE variants
    // pass the sysctl ceiling when we are root; fall back to the plain ones.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_opt(sock, libc::SOL_SOCKET, force, SOCKET_BUFFER as i32).is_err() {
            let _ = set_int_opt(sock, libc::SOL_SOCKET, plain, SOCKET_BUFFER as i32);
        }
    }
    sock.set_nonblocking(true)
}

impl OuterSocket {
    /// A UDP socket bound to `bind` (port 0: any free port).
    pub fn udp(bind: SocketAddr) -> Result<Self, TunnelError> {
        let what = || format!("UDP tunnel socket on {bind}");
        let err = |source| TunnelError::Socket {
            what: what(),
            source,
        };
        let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
            .map_err(err)?;
        tune(&sock, bind.is_ipv6()).map_err(err)?;
        sock.bind(&bind.into()).map_err(err)?;
        // SAFETY: the socket owns its descriptor, which stays open and unchanged for as
        // long as the AsyncFd holds the socket.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(|e| err(io::Error::from(e)))?;
        Ok(OuterSocket {
            fd,
            kind: OuterKind::Udp,
        })
    }

    /// The raw IP-protocol-4 socket of RFC 2003 tunnels. Receives every ipip packet
    /// addressed to this host; `bind` restricts it to one local address.
    pub fn ipip(bind: Option<Ipv4Addr>) -> Result<Self, TunnelError> {
        let what = || "raw IP-in-IP socket (protocol 4; needs root or CAP_NET_RAW)".to_string();
        let err = |source| TunnelError::Socket {
            what: what(),
            source,
        };
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_IPIP)),
        )
        .map_err(err)?;
        tune(&sock, false).map_err(err)?;
        if let Some(a) = bind {
            sock.bind(&SocketAddr::new(IpAddr::V4(a), 0).into())
                .map_err(err)?;
        }
        // SAFETY: the socket owns its descriptor, which stays open and unchanged for as
        // long as the AsyncFd holds the socket.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(|e| err(io::Error::from(e)))?;
        Ok(OuterSocket {
            fd,
            kind: OuterKind::Ipip,
        })
    }

    pub fn kind(&self) -> OuterKind {
        self.kind
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd
            .get_ref()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        // Readiness stays set until a read meets EAGAIN (see try_recv_batch), so a caller
        // that stops draining early is woken again at once.
        let _guard = self.fd.readable().await?;
        Ok(())
    }

    /// Reads up to [`BATCH`] datagrams without blocking. `Ok(0)`: nothing pending.
    /// Transient errors that ICMP reports (a peer that is down) are swallowed.
    pub fn try_recv_batch(&self, rx: &mut RxBatch) -> io::Result<usize> {
        rx.n = 0;
        match self
            .fd
            .try_io(tokio::io::Interest::READABLE, |_| self.recv_batch_raw(rx))
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn recv_batch_raw(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = rx.data.as_mut_ptr();
        for i in 0..BATCH {
            iov[i].write(libc::iovec {
                // SAFETY: slot i lies inside `rx.data` (BATCH * MAX_PACKET bytes).
                iov_base: unsafe { base.add(i * MAX_PACKET) }.cast(),
                iov_len: MAX_PACKET,
            });
            hdrs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        let n = loop {
            // SAFETY: every header points at a live iovec over its own buffer slot and at
            // a live sockaddr_storage; the kernel writes at most the given lengths.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.get_ref().as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
                // A queued ICMP error from an earlier send (peer down): tolerated.
                Some(
                    libc::ECONNREFUSED
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
                    | libc::EHOSTDOWN
                    | libc::EMSGSIZE,
                ) => continue,
                _ => return Err(e),
            }
        };
        let mut kept = 0;
        for i in 0..n {
            let len = hdrs[i].msg_len as usize;
            // SAFETY: the kernel filled msg_namelen bytes of names[i] for this datagram.
            let Some(src) = (unsafe { sockaddr_to_std(names[i].as_ptr()) }) else {
                continue;
            };
            let slot = i * MAX_PACKET;
            let mut off = 0;
            if self.kind == OuterKind::Ipip {
                // Raw IPv4 sockets deliver the outer header too.
                let b = &rx.data[slot..slot + len];
                if len < 20 || b[0] >> 4 != 4 || b[9] != libc::IPPROTO_IPIP as u8 {
                    continue;
                }
                off = usize::from(b[0] & 0x0f) * 4;
                if off < 20 || off > len {
                    continue;
                }
            }
            if kept != i {
                rx.data
                    .copy_within(slot + off..slot + len, kept * MAX_PACKET + off);
            }
            rx.offsets[kept] = off;
            rx.lens[kept] = len;
            rx.srcs[kept] = src;
            kept += 1;
        }
        rx.n = kept;
        // Report "something was read" even if every datagram was malformed, so the caller
        // keeps draining.
        Ok(n.max(kept))
    }

    /// One `sendmmsg` over `tx[start..]`: how many went, or the error of the first.
    fn send_some(&self, tx: &mut TxBatch, start: usize) -> io::Result<usize> {
        let count = tx.n - start;
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut names: [MaybeUninit<SockAddr>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = tx.data.as_mut_ptr();
        for j in 0..count {
            let i = start + j;
            let dst = match (self.kind, tx.dsts[i]) {
                // Raw sockets take no port.
                (OuterKind::Ipip, SocketAddr::V4(a)) => {
                    SocketAddr::V4(SocketAddrV4::new(*a.ip(), 0))
                }
                (_, d) => d,
            };
            let name = names[j].write(SockAddr::from(dst));
            iov[j].write(libc::iovec {
                // SAFETY: slot i lies inside `tx.data`.
                iov_base: unsafe { base.add(i * MAX_PACKET) }.cast(),
                iov_len: tx.lens[i],
            });
            hdrs[j].msg_hdr.msg_iov = iov[j].as_mut_ptr();
            hdrs[j].msg_hdr.msg_iovlen = 1;
            hdrs[j].msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
            hdrs[j].msg_hdr.msg_namelen = name.len();
        }
        // SAFETY: `count` headers, each pointing at a live iovec and a live address.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.get_ref().as_raw_fd(),
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        let res = if r >= 0 {
            Ok(r as usize)
        } else {
            Err(io::Error::last_os_error())
        };
        for n in names.iter_mut().take(count) {
            // SAFETY: names[..count] were written above.
            unsafe { n.assume_init_drop() };
        }
        res
    }

    /// Sends every queued datagram, waiting for socket space when needed; per-datagram
    /// failures are counted, not returned.
    pub async fn flush(&self, tx: &mut TxBatch) -> SendReport {
        let mut report = SendReport::default();
        let mut start = 0;
        while start < tx.n {
            match self.send_some(tx, start) {
                Ok(0) => {}
                Ok(r) => {
                    for k in 0..r {
                        report.sent += 1;
                        report.bytes += tx.lens[start + k] as u64;
                    }
                    start += r;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                        // The socket buffer is full: wait for room instead of dropping, so
                        // a fast sender is slowed rather than made to retransmit.
                        match self.fd.writable().await {
                            Ok(mut g) => g.clear_ready(),
                            Err(_) => {
                                report.errors += (tx.n - start) as u64;
                                break;
                            }
                        }
                    }
                    Some(libc::EMSGSIZE) => {
                        report.too_big += 1;
                        start += 1;
                    }
                    // Unreachable peer (a queued ICMP error), no route, filtered.
                    _ => {
                        report.errors += 1;
                        start += 1;
                    }
                },
            }
        }
        tx.clear();
        report
    }
}

/// Reads an IPv4 or IPv6 socket address the kernel wrote.
///
/// # Safety
/// `ss` must point at a sockaddr_storage the kernel filled for one datagram.
unsafe fn sockaddr_to_std(ss: *const libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: per the contract, the family field is initialised and tells which
    // structure the storage holds; both fit inside sockaddr_storage.
    unsafe {
        match i32::from((*ss).ss_family) {
            libc::AF_INET => {
                let a = &*(ss as *const libc::sockaddr_in);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(ss as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    a.sin6_addr.s6_addr.into(),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Builds a socket address from an IP and port (port ignored for ipip).
pub fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
        IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, port, 0, 0)),
    }
}
