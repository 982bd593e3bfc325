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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Datagrams (or GRO trains) per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Datagrams queued for one `sendmmsg` flush: room for a few GSO messages of a full
/// 64 KB TUN burst each (about 44 datagrams at a 1500-byte MTU).
pub const TX_BATCH: usize = 128;

const SOCKET_BUFFER: usize = 4 << 20;

/// Longest wait for room in a full socket send buffer before the rest of a batch is
/// dropped.
pub const SEND_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterKind {
    Udp,
    Ipip,
}

pub struct OuterSocket {
    fd: Socket,
    kind: OuterKind,
    /// UDP segmentation offload on send; turned off if the kernel refuses it.
    gso: AtomicBool,
}

/// Linux `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h), not in every libc release.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Receive slot: one datagram, or with UDP GRO one coalesced train of up to 64 KB.
const RX_SLOT: usize = 65536;
/// Most datagrams one GSO send may carry (kernel limit UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Control-message room for one `int` or `u16` option (CMSG_SPACE(4) on 64-bit).
const CMSG_ROOM: usize = 24;

/// Received datagrams: payload (for ipip, after the outer IPv4 header) and source. A
/// GRO train is split back into its datagrams here.
pub struct RxBatch {
    data: Box<[u8]>,
    entries: Vec<(usize, usize, SocketAddr)>,
    /// Datagrams the kernel cut to the slot size (MSG_TRUNC) since the last
    /// [`RxBatch::take_truncated`].
    truncated: u64,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            data: vec![0u8; BATCH * RX_SLOT].into_boxed_slice(),
            entries: Vec::with_capacity(BATCH * GSO_MAX_SEGMENTS),
            truncated: 0,
        }
    }
}

impl RxBatch {
    /// How many datagrams were dropped for being cut short, since the last call.
    pub fn take_truncated(&mut self) -> u64 {
        std::mem::take(&mut self.truncated)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Datagram `i`: its payload and its source.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let (start, len, src) = self.entries[i];
        (&self.data[start..start + len], src)
    }
}

/// Datagrams waiting to be sent.
pub struct TxBatch {
    data: Box<[u8]>,
    lens: [usize; TX_BATCH],
    dsts: [SocketAddr; TX_BATCH],
    /// Steering bucket of each datagram ([`crate::steer::bucket`]); a GSO run keeps to one.
    buckets: [u8; TX_BATCH],
    /// The order the datagrams go out in ([`TxBatch::arrange`]): slot numbers.
    order: [u8; TX_BATCH],
    n: usize,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch {
            data: vec![0u8; TX_BATCH * MAX_PACKET].into_boxed_slice(),
            lens: [0; TX_BATCH],
            dsts: [SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); TX_BATCH],
            buckets: [crate::steer::NO_BUCKET; TX_BATCH],
            order: [0; TX_BATCH],
            n: 0,
        }
    }
}

impl TxBatch {
    pub fn is_full(&self) -> bool {
        self.n == TX_BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The next free slot, to encapsulate into. Call [`TxBatch::commit`] to keep it.
    pub fn slot(&mut self) -> &mut [u8] {
        debug_assert!(self.n < TX_BATCH);
        let base = self.n * MAX_PACKET;
        &mut self.data[base..base + MAX_PACKET]
    }

    /// Keeps the first `len` bytes of the slot for `dst`, in steering bucket `bucket`
    /// ([`crate::steer::NO_BUCKET`] for anything the receiver does not steer).
    pub fn commit(&mut self, len: usize, dst: SocketAddr, bucket: u8) {
        self.lens[self.n] = len;
        self.dsts[self.n] = dst;
        self.buckets[self.n] = bucket;
        self.n += 1;
    }

    /// Copies `payload` into the next slot for `dst` (see [`TxBatch::commit`]).
    pub fn push(&mut self, payload: &[u8], dst: SocketAddr, bucket: u8) {
        let len = payload.len().min(MAX_PACKET);
        self.slot()[..len].copy_from_slice(&payload[..len]);
        self.commit(len, dst, bucket);
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }

    /// Puts each destination's datagrams of one steering bucket together, keeping their
    /// order within it (so every flow keeps its order), for long GSO runs: interleaved
    /// flows in different buckets would otherwise cut every run short. Without GSO the
    /// batch goes out as queued.
    fn arrange(&mut self, gso: bool) {
        let n = self.n;
        for (i, o) in self.order[..n].iter_mut().enumerate() {
            *o = i as u8;
        }
        if !gso || self.buckets[..n].iter().all(|&b| b == self.buckets[0]) {
            return;
        }
        // Key: the destination's first slot, the bucket, the slot; sorted, the slot
        // number comes out in the wanted order. No allocation.
        let mut keys = [0u32; TX_BATCH];
        for (i, key) in keys[..n].iter_mut().enumerate() {
            let first = (0..i).find(|&j| self.dsts[j] == self.dsts[i]).unwrap_or(i);
            *key = (first as u32) << 16 | u32::from(self.buckets[i]) << 8 | i as u32;
        }
        keys[..n].sort_unstable();
        for (o, k) in self.order[..n].iter_mut().zip(&keys[..n]) {
            *o = (k & 0xff) as u8;
        }
    }

    /// The slot that goes out `p`-th.
    fn at(&self, p: usize) -> usize {
        usize::from(self.order[p])
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
        Self::udp_shared(bind, false)
    }

    /// `n` UDP sockets on one address and port, an `SO_REUSEPORT` group whose datagrams
    /// are steered to a socket by inner flow ([`crate::steer`]); one engine thread
    /// reads each. `n == 1` is [`OuterSocket::udp`]. With port 0 the first socket picks
    /// the port and the others join it.
    ///
    /// Only sockets of the same user can join a reuseport group, so another user's
    /// process cannot take a share of the tunnel's datagrams.
    pub fn udp_group(bind: SocketAddr, n: usize) -> Result<Vec<Self>, TunnelError> {
        if n <= 1 {
            return Ok(vec![Self::udp(bind)?]);
        }
        let first = Self::udp_shared(bind, true)?;
        let at = first.local_addr().map_err(|source| TunnelError::Socket {
            what: format!("UDP tunnel socket on {bind}"),
            source,
        })?;
        let mut all = vec![first];
        for _ in 1..n {
            all.push(Self::udp_shared(at, true)?);
        }
        if let Err(e) = crate::steer::attach(all[0].as_raw_fd(), n as u32) {
            // Still correct without it: the kernel's own hash keeps each tunnel on one
            // engine, so only one tunnel's spread over the engines is lost.
            tracing::warn!(error = %e, listen = %at,
                "the kernel refused the flow steering program; each tunnel stays on one engine thread");
        }
        Ok(all)
    }

    fn udp_shared(bind: SocketAddr, reuseport: bool) -> Result<Self, TunnelError> {
        let what = || format!("UDP tunnel socket on {bind}");
        let err = |source| TunnelError::Socket {
            what: what(),
            source,
        };
        let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
            .map_err(err)?;
        tune(&sock, bind.is_ipv6()).map_err(err)?;
        if reuseport {
            sock.set_reuse_port(true).map_err(err)?;
        }
        sock.bind(&bind.into()).map_err(err)?;
        // UDP GRO: the kernel may hand over a train of datagrams from one peer at once.
        let _ = set_int_opt(&sock, libc::SOL_UDP, UDP_GRO, 1);
        Ok(OuterSocket {
            fd: sock,
            kind: OuterKind::Udp,
            gso: AtomicBool::new(true),
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
        Ok(OuterSocket {
            fd: sock,
            kind: OuterKind::Ipip,
            gso: AtomicBool::new(false),
        })
    }

    pub fn kind(&self) -> OuterKind {
        self.kind
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Waits until a read may succeed, at most `timeout`; whether it may.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        crate::poll::wait_readable(self.fd.as_raw_fd(), timeout)
    }

    /// Reads up to [`BATCH`] datagrams (or GRO trains) without blocking. `Ok(0)`:
    /// nothing pending. Transient errors that ICMP reports (a peer that is down) are
    /// swallowed.
    pub fn try_recv_batch(&self, rx: &mut RxBatch) -> io::Result<usize> {
        rx.entries.clear();
        match self.recv_batch_raw(rx) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn recv_batch_raw(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut control = [[0u64; CMSG_ROOM / 8]; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = rx.data.as_mut_ptr();
        for i in 0..BATCH {
            iov[i].write(libc::iovec {
                // SAFETY: slot i lies inside `rx.data` (BATCH * RX_SLOT bytes).
                iov_base: unsafe { base.add(i * RX_SLOT) }.cast(),
                iov_len: RX_SLOT,
            });
            hdrs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_control = control[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = CMSG_ROOM as _;
        }
        let n = loop {
            // SAFETY: every header points at a live iovec over its own buffer slot, a live
            // sockaddr_storage and a live control buffer; the kernel writes at most the
            // given lengths.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
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
        for i in 0..n {
            let len = hdrs[i].msg_len as usize;
            // A datagram larger than its slot arrives cut short: relaying the front of it
            // would hand the next hop a packet whose headers claim more than it holds.
            if hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                rx.truncated += 1;
                continue;
            }
            // SAFETY: the kernel filled msg_namelen bytes of names[i] for this datagram.
            let Some(src) = (unsafe { sockaddr_to_std(names[i].as_ptr()) }) else {
                continue;
            };
            let slot = i * RX_SLOT;
            if self.kind == OuterKind::Ipip {
                // Raw IPv4 sockets deliver the outer header too.
                let b = &rx.data[slot..slot + len];
                if len < 20 || b[0] >> 4 != 4 || b[9] != libc::IPPROTO_IPIP as u8 {
                    continue;
                }
                let off = usize::from(b[0] & 0x0f) * 4;
                if off < 20 || off > len {
                    continue;
                }
                rx.entries.push((slot + off, len - off, src));
                continue;
            }
            // SAFETY: the kernel set msg_controllen to the bytes it wrote into control[i].
            let seg = unsafe { gro_segment(&hdrs[i].msg_hdr) };
            match seg {
                Some(seg) if seg > 0 && seg < len => {
                    let mut at = 0;
                    while at < len {
                        let l = seg.min(len - at);
                        rx.entries.push((slot + at, l, src));
                        at += l;
                    }
                }
                _ => rx.entries.push((slot, len, src)),
            }
        }
        // Report "something was read" even if every datagram was malformed, so the caller
        // keeps draining.
        Ok(n)
    }

    /// Length of the run of datagrams from `i` that one GSO send can carry: same
    /// destination, same steering bucket, same size, except that the last may be
    /// shorter.
    fn gso_run(&self, tx: &TxBatch, p: usize) -> usize {
        if self.kind != OuterKind::Udp || !self.gso.load(Ordering::Relaxed) {
            return 1;
        }
        let i = tx.at(p);
        let seg = tx.lens[i];
        let mut q = p + 1;
        let mut total = seg;
        while q < tx.n && q - p < GSO_MAX_SEGMENTS {
            let j = tx.at(q);
            if tx.dsts[j] != tx.dsts[i]
                || tx.buckets[j] != tx.buckets[i]
                || tx.lens[j] > seg
                || total + tx.lens[j] > 65000
            {
                break;
            }
            total += tx.lens[j];
            q += 1;
            if tx.lens[j] < seg {
                break;
            }
        }
        q - p
    }

    /// One `sendmmsg` over `tx[start..]`, runs of equal datagrams to one peer as one GSO
    /// message each: how many datagrams went, or the error of the first message with
    /// the number of datagrams it carried.
    fn send_some(&self, tx: &mut TxBatch, start: usize) -> Result<usize, (io::Error, usize)> {
        let mut iov: [MaybeUninit<libc::iovec>; TX_BATCH] =
            [const { MaybeUninit::uninit() }; TX_BATCH];
        let mut names: [MaybeUninit<SockAddr>; TX_BATCH] =
            [const { MaybeUninit::uninit() }; TX_BATCH];
        let mut control = [[0u64; CMSG_ROOM / 8]; TX_BATCH];
        let mut counts = [0usize; TX_BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut hdrs: [libc::mmsghdr; TX_BATCH] = unsafe { std::mem::zeroed() };
        let base = tx.data.as_mut_ptr();
        let mut msgs = 0;
        let mut i = start;
        while i < tx.n {
            let run = self.gso_run(tx, i);
            for k in 0..run {
                let slot = tx.at(i + k);
                iov[i + k].write(libc::iovec {
                    // SAFETY: every slot lies inside `tx.data`.
                    iov_base: unsafe { base.add(slot * MAX_PACKET) }.cast(),
                    iov_len: tx.lens[slot],
                });
            }
            let dst = match (self.kind, tx.dsts[tx.at(i)]) {
                // Raw sockets take no port.
                (OuterKind::Ipip, SocketAddr::V4(a)) => {
                    SocketAddr::V4(SocketAddrV4::new(*a.ip(), 0))
                }
                (_, d) => d,
            };
            let name = names[msgs].write(SockAddr::from(dst));
            let h = &mut hdrs[msgs].msg_hdr;
            h.msg_iov = iov[i].as_mut_ptr();
            h.msg_iovlen = run as _;
            h.msg_name = name.as_ptr() as *mut libc::c_void;
            h.msg_namelen = name.len();
            if run > 1 {
                h.msg_control = control[msgs].as_mut_ptr().cast();
                h.msg_controllen = CMSG_ROOM as _;
                // SAFETY: the control buffer has room for one u16 control message and is
                // aligned for cmsghdr (u64 array); the header points at it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(c).cast::<u16>(),
                        tx.lens[tx.at(i)] as u16,
                    );
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                }
            }
            counts[msgs] = run;
            msgs += 1;
            i += run;
        }
        // SAFETY: `msgs` headers, each pointing at live iovecs, address and control data.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                msgs as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        let res = if r >= 0 {
            Ok(counts[..r as usize].iter().sum())
        } else {
            Err((io::Error::last_os_error(), counts[0]))
        };
        for n in names.iter_mut().take(msgs) {
            // SAFETY: names[..msgs] were written above.
            unsafe { n.assume_init_drop() };
        }
        res
    }

    /// Sends every queued datagram, waiting for socket space when needed (at most
    /// [`SEND_WAIT`] each time); per-datagram failures are counted, not returned.
    pub fn flush(&self, tx: &mut TxBatch) -> SendReport {
        let mut report = SendReport::default();
        tx.arrange(self.kind == OuterKind::Udp && self.gso.load(Ordering::Relaxed));
        let mut start = 0;
        while start < tx.n {
            match self.send_some(tx, start) {
                Ok(0) => {}
                Ok(r) => {
                    for k in 0..r {
                        report.sent += 1;
                        report.bytes += tx.lens[tx.at(start + k)] as u64;
                    }
                    start += r;
                }
                // A device that cannot segment: send one datagram per message from now on.
                Err((e, run)) if run > 1 && e.raw_os_error() == Some(libc::EIO) => {
                    tracing::info!(
                        "UDP segmentation offload refused; sending datagrams one by one"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err((e, run)) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                        // The socket buffer is full: wait for room instead of dropping, so
                        // a fast sender is slowed rather than made to retransmit. A queue
                        // that stays full (a stuck device) costs the rest of the batch.
                        if !crate::poll::wait_writable(self.fd.as_raw_fd(), SEND_WAIT) {
                            report.errors += (tx.n - start) as u64;
                            break;
                        }
                    }
                    Some(libc::EMSGSIZE) => {
                        report.too_big += run as u64;
                        start += run;
                    }
                    // Unreachable peer (a queued ICMP error), no route, filtered.
                    _ => {
                        report.errors += run as u64;
                        start += run;
                    }
                },
            }
        }
        tx.clear();
        report
    }
}

impl AsRawFd for OuterSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// The segment size of a UDP GRO train, from the control messages of one datagram.
///
/// # Safety
/// `h.msg_control`/`msg_controllen` must describe control data the kernel wrote.
unsafe fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: per the contract; CMSG_* walk only inside msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaved datagrams of several buckets and two destinations go out grouped by
    /// destination and bucket, each group in the order it was queued; one bucket, or no
    /// GSO, leaves the order alone.
    #[test]
    fn arrange_groups_buckets_and_keeps_order_within_each() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let mut tx = TxBatch::default();
        let plan = [
            (a, 3),
            (a, 5),
            (b, 3),
            (a, 3),
            (a, 5),
            (b, 3),
            (a, 7),
            (a, 3),
        ];
        for (dst, bucket) in plan {
            tx.push(&[0u8; 10], dst, bucket);
        }
        tx.arrange(true);
        let order: Vec<usize> = (0..tx.n).map(|p| tx.at(p)).collect();
        assert_eq!(order, [0, 3, 7, 1, 4, 6, 2, 5]);
        tx.arrange(false);
        assert_eq!(
            (0..tx.n).map(|p| tx.at(p)).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        let mut one = TxBatch::default();
        for dst in [a, b, a] {
            one.push(&[0u8; 10], dst, 4);
        }
        one.arrange(true);
        assert_eq!((0..3).map(|p| one.at(p)).collect::<Vec<_>>(), [0, 1, 2]);
    }

    /// A batch of equal datagrams to one peer goes out as GSO sends and comes in
    /// (through GRO where the kernel coalesces) as the same datagrams, in order; a
    /// different peer and a short tail are kept apart.
    #[test]
    fn batches_survive_gso_and_gro() {
        let a = OuterSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = OuterSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let c = OuterSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let (bd, cd) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut tx = TxBatch::default();
        let mut want_b = Vec::new();
        for i in 0..20u8 {
            let len = if i == 19 { 300 } else { 1200 };
            let p = vec![i; len];
            tx.push(&p, if i == 10 { cd } else { bd }, crate::steer::NO_BUCKET);
            if i != 10 {
                want_b.push(p);
            }
        }
        let r = a.flush(&mut tx);
        assert_eq!(r.sent, 20, "{r:?}");
        assert_eq!(r.bytes, 19 * 1200 + 300);
        assert!(
            a.gso.load(Ordering::Relaxed),
            "the kernel refused UDP GSO on loopback"
        );
        let mut got = Vec::new();
        let mut rx = RxBatch::default();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want_b.len() && std::time::Instant::now() < end {
            b.wait_readable(Duration::from_secs(1));
            b.try_recv_batch(&mut rx).unwrap();
            for i in 0..rx.len() {
                let (p, src) = rx.get(i);
                assert_eq!(src, a.local_addr().unwrap());
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, want_b);
        assert!(c.wait_readable(Duration::from_secs(5)));
        c.try_recv_batch(&mut rx).unwrap();
        assert_eq!(rx.len(), 1);
        assert_eq!(rx.get(0).0, &[10u8; 1200][..]);
    }
}
