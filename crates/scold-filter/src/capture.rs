//! Packet capture on a Linux link: one AF_PACKET socket for both of SCOLD's link
//! watchers, the target's sampler ([`crate::sample`]) and the proxy's link watcher.
//!
//! A [`Capture`] is a non-blocking `SOCK_DGRAM` packet socket bound to one interface:
//! it receives IP packets (the link header stripped), each cut in the kernel by a
//! classic BPF [`Program`] to at most the capture's snap length, and reads them in
//! batches with one `recvmmsg(2)` per batch. The program is the capture's only
//! selection: built here, so its jumps are checked by the unit tests below rather
//! than by the kernel's verifier at run time.
//!
//! - [`Program::sample`]: one incoming packet in N (the target's sampler).
//! - [`Program::hide_ipv4_sources`]: every packet except those of blocked IPv4 sources
//!   (the proxy's watcher: nftables drops those after the tap, so without this the
//!   watcher would still get a copy of a flood it has already blocked).
//! - [`Program::snap`]: every packet.
//!
//! The socket is created with protocol 0, which receives nothing until `bind`, so no
//! packet is queued before the program is attached.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Most packets one `recvmmsg(2)` reads.
pub const MAX_BATCH: usize = 64;

/// Blocked IPv4 sources a [`Program::hide_ipv4_sources`] program hides at most (a
/// classic BPF jump reaches 255 instructions ahead); more stay visible.
pub const MAX_HIDDEN: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("interface {interface:?} not found in this network namespace; check `ip link`")]
    NoSuchInterface { interface: String },
    #[error("interface name {interface:?} is not valid")]
    BadInterfaceName { interface: String },
    #[error("{what} on interface {interface:?}: {source}")]
    Os {
        what: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
}

impl CaptureError {
    fn os(what: &'static str, interface: &str, source: io::Error) -> Self {
        CaptureError::Os {
            what,
            interface: interface.to_string(),
            source,
        }
    }
}

/// The index of `interface` in the calling thread's network namespace.
pub fn ifindex(interface: &str) -> Result<u32, CaptureError> {
    let c = CString::new(interface).map_err(|_| CaptureError::BadInterfaceName {
        interface: interface.to_string(),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(CaptureError::NoSuchInterface {
            interface: interface.to_string(),
        });
    }
    Ok(idx)
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T and we pass its exact size; the descriptor is
    // open for as long as `fd` is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One classic BPF instruction (`struct sock_filter` of linux/filter.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Classic BPF opcodes and ancillary offsets (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_MOD_K: u16 = 0x94;
const BPF_RET_K: u16 = 0x06;
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PROTOCOL: i32 = 0;
const SKF_AD_PKTTYPE: i32 = 4;
const SKF_AD_RANDOM: i32 = 56;
const PACKET_OUTGOING: u32 = 4;
const ETH_P_IP: u32 = 0x0800;

const fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// A classic BPF program for a [`Capture`]. The socket is SOCK_DGRAM, so the program
/// sees each packet from its IP header; it returns how many bytes to keep (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program(Vec<Insn>);

impl Program {
    /// Every packet, cut to `snaplen` bytes.
    pub fn snap(snaplen: u32) -> Program {
        Program(vec![ins(BPF_RET_K, 0, 0, snaplen)])
    }

    /// The sampler's program: drop outgoing packets, keep one in `one_in` of the rest
    /// (chosen at random in the kernel, so a flood costs only its sample), cut to
    /// `snaplen` bytes (at least 20, one IPv4 header).
    pub fn sample(one_in: u32, snaplen: u32) -> Program {
        Program(vec![
            ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32),
            ins(BPF_JEQ_K, 4, 0, PACKET_OUTGOING),
            ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) as u32),
            ins(BPF_MOD_K, 0, 0, one_in.max(1)),
            ins(BPF_JEQ_K, 0, 1, 0),
            ins(BPF_RET_K, 0, 0, snaplen.max(20)),
            ins(BPF_RET_K, 0, 0, 0),
        ])
    }

    /// Every packet cut to `snaplen` bytes, except IPv4 packets from `hidden` sources,
    /// which are not copied at all. Only the first [`MAX_HIDDEN`] sources are hidden.
    pub fn hide_ipv4_sources(hidden: &[Ipv4Addr], snaplen: u32) -> Program {
        let hidden = &hidden[..hidden.len().min(MAX_HIDDEN)];
        if hidden.is_empty() {
            return Program::snap(snaplen);
        }
        let n = hidden.len() as u8;
        let mut prog = vec![
            ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PROTOCOL) as u32),
            // Not IPv4: straight to "copy".
            ins(BPF_JEQ_K, 0, n + 1, ETH_P_IP),
            // The IPv4 source address.
            ins(BPF_LD_W_ABS, 0, 0, 12),
        ];
        for (i, a) in hidden.iter().enumerate() {
            // A match jumps over the remaining comparisons and "copy" to "drop".
            prog.push(ins(BPF_JEQ_K, n - i as u8, 0, u32::from(*a)));
        }
        prog.push(ins(BPF_RET_K, 0, 0, snaplen));
        prog.push(ins(BPF_RET_K, 0, 0, 0));
        Program(prog)
    }

    pub fn instructions(&self) -> &[Insn] {
        &self.0
    }

    fn to_kernel(&self) -> Vec<libc::sock_filter> {
        self.0
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    }
}

/// How a [`Capture`] is opened.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Bytes kept of each packet: the size of each read buffer. The program should
    /// cut to at most this; longer packets are truncated to it anyway.
    pub snaplen: usize,
    /// Packets read per system call (at most [`MAX_BATCH`]).
    pub batch: usize,
    /// The program attached before the socket is bound.
    pub program: Program,
    /// Our own transmissions are not copied (PACKET_IGNORE_OUTGOING).
    pub ignore_outgoing: bool,
    /// Socket receive buffer in bytes. Set with SO_RCVBUFFORCE, which passes
    /// `net.core.rmem_max` when we are root, and SO_RCVBUF (capped) otherwise.
    pub rcvbuf: usize,
}

/// Counters of one capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Packets read from the socket.
    pub packets: u64,
    /// Packets the kernel dropped because the socket's queue was full
    /// (PACKET_STATISTICS, summed since the capture was opened).
    pub kernel_drops: u64,
}

/// A non-blocking AF_PACKET socket with a copy of the incoming packets of one link
/// that its [`Program`] selects, as IP packets cut to the snap length.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    interface: String,
    snaplen: usize,
    batch: usize,
    bufs: Vec<u8>,
    lens: [usize; MAX_BATCH],
    stats: CaptureStats,
}

impl Capture {
    /// Opens in the calling thread's network namespace (needs CAP_NET_RAW).
    pub fn open(interface: &str, cfg: &CaptureConfig) -> Result<Capture, CaptureError> {
        let index = ifindex(interface)?;
        let err = |what, source| CaptureError::os(what, interface, source);
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(err(
                "opening an AF_PACKET socket (packet capture needs CAP_NET_RAW)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        attach(&fd, &cfg.program).map_err(|e| err("attaching the capture's BPF program", e))?;
        if cfg.ignore_outgoing {
            let one: libc::c_int = 1;
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
                .map_err(|e| err("setting PACKET_IGNORE_OUTGOING", e))?;
        }
        let rcvbuf = cfg.rcvbuf.min(i32::MAX as usize) as libc::c_int;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf)
                .map_err(|e| err("setting SO_RCVBUF", e))?;
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err(
                "binding the AF_PACKET socket",
                io::Error::last_os_error(),
            ));
        }
        let snaplen = cfg.snaplen.max(1);
        let batch = cfg.batch.clamp(1, MAX_BATCH);
        Ok(Capture {
            fd,
            interface: interface.to_string(),
            snaplen,
            batch,
            bufs: vec![0; snaplen * batch],
            lens: [0; MAX_BATCH],
            stats: CaptureStats::default(),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Replaces the program atomically (the kernel swaps it under the socket lock).
    pub fn set_program(&self, program: &Program) -> Result<(), CaptureError> {
        attach(&self.fd, program).map_err(|e| {
            CaptureError::os("replacing the capture's BPF program", &self.interface, e)
        })
    }

    /// Waits up to `timeout` for a packet to arrive (or a signal).
    pub fn wait_readable(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Reads up to `max` waiting packets (at most the configured batch) with one
    /// `recvmmsg(2)`, never blocking. An empty batch means the queue is empty. One
    /// system call per batch rather than per packet: a watcher reads a copy of the
    /// link's traffic, floods included.
    pub fn recv_batch(&mut self, max: usize) -> Result<Batch<'_>, CaptureError> {
        let n = max.min(self.batch);
        if n == 0 {
            return Ok(Batch {
                bufs: &self.bufs,
                lens: &self.lens[..0],
                snaplen: self.snaplen,
            });
        }
        // SAFETY: all-zero iovec and mmsghdr values are valid (null pointers, zero
        // lengths); the entries used are filled in below.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for ((v, m), b) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(self.bufs.chunks_exact_mut(self.snaplen))
            .take(n)
        {
            v.iov_base = b.as_mut_ptr() as *mut libc::c_void;
            v.iov_len = b.len();
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        let got = loop {
            // SAFETY: `msgs[..n]` point at `iov[..n]`, which point into `self.bufs`;
            // all live and writable for the call; the socket is non-blocking and
            // MSG_DONTWAIT is set.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break 0,
                io::ErrorKind::Interrupted => continue,
                _ => {
                    return Err(CaptureError::os(
                        "reading captured packets",
                        &self.interface,
                        e,
                    ))
                }
            }
        };
        for (l, m) in self.lens.iter_mut().zip(msgs.iter()).take(got) {
            *l = (m.msg_len as usize).min(self.snaplen);
        }
        self.stats.packets += got as u64;
        Ok(Batch {
            bufs: &self.bufs,
            lens: &self.lens[..got],
            snaplen: self.snaplen,
        })
    }

    /// The capture's counters; reads (and so resets) the kernel's drop count.
    pub fn stats(&mut self) -> Result<CaptureStats, CaptureError> {
        // SAFETY: tpacket_stats is plain data; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes and `len` is a valid in/out size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(CaptureError::os(
                "reading PACKET_STATISTICS",
                &self.interface,
                io::Error::last_os_error(),
            ));
        }
        self.stats.kernel_drops += u64::from(st.tp_drops);
        Ok(self.stats)
    }
}

impl AsRawFd for Capture {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The packets of one [`Capture::recv_batch`], each cut to the snap length.
#[derive(Debug)]
pub struct Batch<'a> {
    bufs: &'a [u8],
    lens: &'a [usize],
    snaplen: usize,
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let (bufs, snaplen) = (self.bufs, self.snaplen);
        self.lens
            .iter()
            .enumerate()
            .map(move |(i, l)| &bufs[i * snaplen..i * snaplen + l])
    }
}

/// Attaches (or atomically replaces) the socket's classic BPF program.
fn attach(fd: &OwnedFd, program: &Program) -> io::Result<()> {
    let prog = program.to_kernel();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // The kernel copies the program during the call; `prog` outlives it.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel knows about a packet beside its bytes.
    #[derive(Clone, Copy)]
    struct Meta {
        /// Ethertype (SKF_AD_PROTOCOL).
        proto: u32,
        /// Packet type (SKF_AD_PKTTYPE): 0 to us, 4 outgoing.
        pkttype: u32,
        /// What SKF_AD_RANDOM yields.
        random: u32,
    }

    const IN4: Meta = Meta {
        proto: ETH_P_IP,
        pkttype: 0,
        random: 0,
    };

    /// Runs the subset of classic BPF the builders use, as the kernel does; panics
    /// on a jump out of the program or an unknown instruction.
    fn run(prog: &Program, meta: Meta, pkt: &[u8]) -> u32 {
        let prog = prog.instructions();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            match i.code {
                BPF_RET_K => return i.k,
                BPF_LD_W_ABS if i.k == (SKF_AD_OFF + SKF_AD_PROTOCOL) as u32 => acc = meta.proto,
                BPF_LD_W_ABS if i.k == (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32 => acc = meta.pkttype,
                BPF_LD_W_ABS if i.k == (SKF_AD_OFF + SKF_AD_RANDOM) as u32 => acc = meta.random,
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    let Some(w) = pkt.get(k..k + 4) else { return 0 };
                    acc = u32::from_be_bytes(w.try_into().unwrap());
                }
                BPF_MOD_K => acc %= i.k,
                BPF_JEQ_K => {
                    pc += if acc == i.k { i.jt } else { i.jf } as usize;
                }
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
            assert!(pc < prog.len(), "the program runs off its end");
        }
    }

    fn ip4(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 0, 0, 1]);
        p
    }

    #[test]
    fn snap_keeps_everything_cut() {
        assert_eq!(run(&Program::snap(160), IN4, &ip4([10, 0, 0, 2])), 160);
    }

    #[test]
    fn sample_keeps_one_in_n_incoming_packets() {
        let prog = Program::sample(8, 96);
        let p = ip4([10, 0, 0, 2]);
        let kept = (0..800u32)
            .filter(|r| {
                run(
                    &prog,
                    Meta {
                        random: r.wrapping_mul(2_654_435_761),
                        ..IN4
                    },
                    &p,
                ) == 96
            })
            .count();
        assert_eq!(kept, 100, "one in 8 of 800 evenly spread random values");
        // Outgoing packets are never kept, whatever the random value.
        for random in 0..16 {
            let out = Meta {
                pkttype: PACKET_OUTGOING,
                random,
                ..IN4
            };
            assert_eq!(run(&prog, out, &p), 0);
        }
        // One in 0 means every packet; the cut keeps at least an IPv4 header.
        let all = Program::sample(0, 4);
        for random in [0, 1, 7, u32::MAX] {
            assert_eq!(run(&all, Meta { random, ..IN4 }, &p), 20);
        }
    }

    #[test]
    fn hide_drops_exactly_the_hidden_ipv4_sources() {
        let a = Ipv4Addr::new(10, 1, 0, 66);
        let b = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            Program::hide_ipv4_sources(&[], 160),
            Program::snap(160),
            "nothing hidden: every packet is copied"
        );
        let prog = Program::hide_ipv4_sources(&[a, b], 160);
        assert_eq!(run(&prog, IN4, &ip4(a.octets())), 0);
        assert_eq!(run(&prog, IN4, &ip4(b.octets())), 0);
        assert_eq!(run(&prog, IN4, &ip4([10, 1, 0, 67])), 160);
        // Not IPv4 (here IPv6 whose bytes 12..16 happen to spell a hidden address).
        let v6 = Meta {
            proto: 0x86dd,
            ..IN4
        };
        assert_eq!(run(&prog, v6, &ip4(a.octets())), 160);
        // The longest program keeps every jump inside it; the first MAX_HIDDEN sources
        // are hidden, the rest stay visible.
        let many: Vec<Ipv4Addr> = (0..400u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let prog = Program::hide_ipv4_sources(&many, 160);
        assert_eq!(prog.instructions().len(), 3 + MAX_HIDDEN + 2);
        assert_eq!(run(&prog, IN4, &ip4(many[0].octets())), 0);
        assert_eq!(run(&prog, IN4, &ip4(many[MAX_HIDDEN - 1].octets())), 0);
        assert_eq!(run(&prog, IN4, &ip4(many[MAX_HIDDEN].octets())), 160);
    }

    #[test]
    fn missing_interface_is_named() {
        let cfg = CaptureConfig {
            snaplen: 96,
            batch: 8,
            program: Program::snap(96),
            ignore_outgoing: false,
            rcvbuf: 1 << 16,
        };
        let e = Capture::open("nosuchif0", &cfg).unwrap_err();
        assert!(matches!(e, CaptureError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("nosuchif0"), "{e}");
        let e = Capture::open("bad\0name", &cfg).unwrap_err();
        assert!(matches!(e, CaptureError::BadInterfaceName { .. }), "{e}");
    }

    /// The kernel takes the programs and applies them: on loopback, a datagram from a
    /// hidden source is not copied to the capture, one from another source is; batches
    /// and counters follow what was read.
    #[test]
    fn capture_hides_blocked_sources_in_the_kernel() {
        // Needs CAP_NET_RAW (the tests run as root, as CI does).
        let snaplen = 160;
        let mut cap = Capture::open(
            "lo",
            &CaptureConfig {
                snaplen,
                batch: MAX_BATCH,
                program: Program::snap(snaplen as u32),
                ignore_outgoing: true,
                rcvbuf: 1 << 20,
            },
        )
        .expect("an AF_PACKET socket on lo: run the tests as root");
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let hidden = Ipv4Addr::new(127, 0, 0, 2);
        let from = |ip: &str| std::net::UdpSocket::bind((ip, 0)).unwrap();
        let (a, b) = (from("127.0.0.2"), from("127.0.0.3"));
        // Seen by the capture: the source of each copied UDP packet to the sink.
        let seen = |cap: &mut Capture| {
            let mut out = Vec::new();
            std::thread::sleep(Duration::from_millis(50));
            loop {
                let batch = cap.recv_batch(MAX_BATCH).unwrap();
                for p in batch.iter() {
                    assert!(p.len() <= snaplen);
                    if p.len() >= 24
                        && p[9] == 17
                        && u16::from_be_bytes([p[22], p[23]]) == to.port()
                    {
                        out.push(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
                    }
                }
                if batch.len() < MAX_BATCH {
                    break;
                }
            }
            out
        };
        let read_before = cap.stats().unwrap().packets;
        a.send_to(b"x", to).unwrap();
        b.send_to(b"x", to).unwrap();
        let before = seen(&mut cap);
        assert!(before.contains(&hidden), "{before:?}");
        assert!(cap.stats().unwrap().packets >= read_before + 2);
        cap.set_program(&Program::hide_ipv4_sources(&[hidden], snaplen as u32))
            .expect("the kernel takes the program");
        a.send_to(b"x", to).unwrap();
        b.send_to(b"x", to).unwrap();
        let after = seen(&mut cap);
        assert!(
            !after.contains(&hidden),
            "a hidden source was copied: {after:?}"
        );
        assert!(after.contains(&Ipv4Addr::new(127, 0, 0, 3)), "{after:?}");
        cap.set_program(&Program::snap(snaplen as u32)).unwrap();
        a.send_to(b"x", to).unwrap();
        assert!(
            seen(&mut cap).contains(&hidden),
            "the source stayed hidden after release"
        );
        // A batch of at most `max` packets, however many wait.
        for _ in 0..5 {
            b.send_to(b"x", to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(cap.recv_batch(2).unwrap().len() <= 2);
    }
}
