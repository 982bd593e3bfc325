//! Reading a Linux link: counters through rtnetlink, packets through a sampled
//! AF_PACKET socket, folded into [`LinkSample`]s for the [`Detector`](crate::Detector).
//!
//! Counters (`rx_packets`, `rx_bytes`) are exact and come from the kernel's
//! link statistics. The protocol mix, SYN count, new sources and top sources
//! need packet headers: an AF_PACKET socket receives one incoming packet in
//! `one_in` (chosen in the kernel by a classic BPF program, so a flood costs
//! us only its sample), cut to `snaplen` bytes. Per-class counts are the exact
//! packet delta split by the sampled mix, so they always add up to the counters.
//!
//! Counters are read through rtnetlink rather than `/sys/class/net` because
//! sysfs shows the network namespace it was mounted in, while a netlink socket
//! belongs to the namespace it was created in: a sampler opened inside a
//! namespace (see [`LinkSampler::open_in_netns`]) then works from any thread.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::detect::{LinkSample, SourceCount};
use crate::heavy::SpaceSaving;
use crate::packet::{classify_lax, PacketInfo, Proto};
use crate::selfdefence::LoadSample;

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("interface {interface:?} not found in this network namespace; check `ip link`")]
    NoSuchInterface { interface: String },
    #[error("interface name {interface:?} is not valid")]
    BadInterfaceName { interface: String },
    #[error("cannot enter network namespace {name:?} (/run/netns/{name}): {source}; does `ip netns list` show it, and are we root?")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{what} for interface {interface:?} failed: {source} (packet sampling needs CAP_NET_RAW)"
    )]
    Socket {
        what: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("reading link statistics of {interface:?} over rtnetlink failed: {detail}")]
    Netlink { interface: String, detail: String },
    #[error("reading {path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Exact receive/transmit counters of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Keep one incoming packet in this many (1 keeps all).
    pub one_in: u32,
    /// Bytes kept of each sampled packet (headers are enough).
    pub snaplen: u32,
    /// Most packets read from the socket per call of [`LinkSampler::poll`].
    pub poll_budget: usize,
    /// Heavy-hitter table size.
    pub top_capacity: usize,
    /// Top-source counts are halved this often, so they follow recent traffic.
    pub top_decay: Duration,
    /// Sources remembered to tell new from known (two generations of this size).
    pub seen_capacity: usize,
    /// Socket receive buffer in bytes.
    pub rcvbuf: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            one_in: 8,
            snaplen: 96,
            poll_budget: 2048,
            top_capacity: 64,
            top_decay: Duration::from_secs(5),
            seen_capacity: 65_536,
            rcvbuf: 2 * 1024 * 1024,
        }
    }
}

/// Folds sampled packets and exact counters into cumulative [`LinkSample`]s.
/// Holds no OS resources, so it is tested directly.
#[derive(Debug)]
pub struct SampleAccumulator {
    one_in: u64,
    // Sampled counts since the last fold.
    tick: [u64; 4],
    tick_syn: u64,
    tick_new: u64,
    // Cumulative estimates (f64 so the split of each delta is not rounded away).
    cum: [f64; 4],
    cum_syn: f64,
    cum_new: f64,
    last_mix: Option<([f64; 4], f64)>,
    last_counters: Option<LinkCounters>,
    top: SpaceSaving<IpAddr>,
    seen_cur: HashSet<IpAddr>,
    seen_old: HashSet<IpAddr>,
    seen_cap: usize,
    top_decay: Duration,
    last_decay: Option<Instant>,
}

/// Top sources put into each [`LinkSample`].
pub const TOP_REPORTED: usize = 16;

fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
        Proto::Icmp => 2,
        Proto::Other => 3,
    }
}

impl SampleAccumulator {
    pub fn new(cfg: &SamplerConfig) -> Self {
        SampleAccumulator {
            one_in: u64::from(cfg.one_in.max(1)),
            tick: [0; 4],
            tick_syn: 0,
            tick_new: 0,
            cum: [0.0; 4],
            cum_syn: 0.0,
            cum_new: 0.0,
            last_mix: None,
            last_counters: None,
            top: SpaceSaving::new(cfg.top_capacity),
            seen_cur: HashSet::new(),
            seen_old: HashSet::new(),
            seen_cap: cfg.seen_capacity.max(16),
            top_decay: cfg.top_decay,
            last_decay: None,
        }
    }

    /// Account one sampled packet.
    pub fn add(&mut self, p: &PacketInfo) {
        self.tick[proto_index(p.proto)] += 1;
        if p.syn {
            self.tick_syn += 1;
        }
        self.top.add(p.src, 1);
        if !self.seen_cur.contains(&p.src) && !self.seen_old.contains(&p.src) {
            self.tick_new += 1;
            if self.seen_cur.len() >= self.seen_cap {
                self.seen_old = std::mem::take(&mut self.seen_cur);
            }
            self.seen_cur.insert(p.src);
        }
    }

    /// Account one sampled frame that is not IP (ARP, LLDP, ...).
    pub fn add_non_ip(&mut self) {
        self.tick[3] += 1;
    }

    /// Fold the packets sampled since the last call with the link's counters.
    pub fn fold(&mut self, c: LinkCounters, now: Instant) -> LinkSample {
        let delta = match self.last_counters {
            Some(prev) if c.rx_packets >= prev.rx_packets => {
                (c.rx_packets - prev.rx_packets) as f64
            }
            _ => 0.0,
        };
        self.last_counters = Some(c);
        let sampled: u64 = self.tick.iter().sum();
        let mix = if sampled > 0 {
            let s = sampled as f64;
            let m = self.tick.map(|x| x as f64 / s);
            let syn = self.tick_syn as f64 / s;
            self.last_mix = Some((m, syn));
            Some((m, syn))
        } else {
            // Nothing sampled (a light link and 1-in-N): assume the last mix.
            self.last_mix
        };
        match mix {
            Some((m, syn)) => {
                for (cum, share) in self.cum.iter_mut().zip(m) {
                    *cum += delta * share;
                }
                self.cum_syn += delta * syn;
            }
            None => self.cum[3] += delta,
        }
        self.cum_new += (self.tick_new * self.one_in) as f64;
        self.tick = [0; 4];
        self.tick_syn = 0;
        self.tick_new = 0;

        let top_sources = self
            .top
            .top(TOP_REPORTED)
            .into_iter()
            .map(|(addr, n, _)| SourceCount {
                addr,
                packets: n * self.one_in,
            })
            .collect();
        match self.last_decay {
            Some(t) if now.duration_since(t) >= self.top_decay => {
                self.top.decay();
                self.last_decay = Some(now);
            }
            None => self.last_decay = Some(now),
            _ => {}
        }
        LinkSample {
            packets: c.rx_packets,
            bytes: c.rx_bytes,
            tcp: self.cum[0] as u64,
            udp: self.cum[1] as u64,
            icmp: self.cum[2] as u64,
            other: self.cum[3] as u64,
            tcp_syn: self.cum_syn as u64,
            new_sources: self.cum_new as u64,
            top_sources,
        }
    }
}

/// Run `f` on a thread that has entered network namespace `name`
/// (`/run/netns/NAME`, as `ip netns add` creates). Sockets created by `f`
/// stay in that namespace after the thread ends.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SampleError> {
    let path = format!("/run/netns/{name}");
    let ns = std::fs::File::open(&path).map_err(|source| SampleError::Netns {
        name: name.to_string(),
        source,
    })?;
    let owned_name = name.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns only changes the calling thread's namespace; `ns` is an
        // open namespace file for the whole call. The thread is ours and ends
        // right after `f`, so no other code runs in the namespace by accident.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(SampleError::Netns {
                name: owned_name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
    .join()
    .expect("namespace worker thread panicked")
}

fn ifindex(interface: &str) -> Result<u32, SampleError> {
    let c = CString::new(interface).map_err(|_| SampleError::BadInterfaceName {
        interface: interface.to_string(),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(SampleError::NoSuchInterface {
            interface: interface.to_string(),
        });
    }
    Ok(idx)
}

fn setsockopt<T>(fd: RawFd, level: i32, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T and we pass its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

/// Reads one link's statistics through an rtnetlink socket.
///
/// One fixed request (RTM_GETLINK for an index) and one attribute
/// (IFLA_STATS64) are all we need, synchronously, from a socket bound to a
/// namespace; that is a few lines of framing, not worth an async netlink stack.
#[derive(Debug)]
pub struct CounterReader {
    fd: OwnedFd,
    ifindex: u32,
    interface: String,
    seq: u32,
    buf: Vec<u8>,
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const IFLA_STATS64: u16 = 23;
const NLMSG_HDRLEN: usize = 16;
const IFINFO_LEN: usize = 16;

impl CounterReader {
    /// Opens in the calling thread's network namespace.
    pub fn open(interface: &str) -> Result<Self, SampleError> {
        let idx = ifindex(interface)?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(SampleError::Socket {
                what: "opening rtnetlink socket",
                interface: interface.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).map_err(|source| {
            SampleError::Socket {
                what: "setting rtnetlink receive timeout",
                interface: interface.to_string(),
                source,
            }
        })?;
        Ok(CounterReader {
            fd,
            ifindex: idx,
            interface: interface.to_string(),
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    fn nl_err(&self, detail: impl Into<String>) -> SampleError {
        SampleError::Netlink {
            interface: self.interface.clone(),
            detail: detail.into(),
        }
    }

    pub fn read(&mut self) -> Result<LinkCounters, SampleError> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; NLMSG_HDRLEN + IFINFO_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + IFINFO_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        req[16] = libc::AF_UNSPEC as u8;
        req[20..24].copy_from_slice(&(self.ifindex as i32).to_ne_bytes());
        // SAFETY: `req` is a valid buffer of the given length; the socket is ours.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(self.nl_err(format!("send: {}", io::Error::last_os_error())));
        }
        loop {
            // SAFETY: `buf` is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(self.nl_err(format!("recv: {}", io::Error::last_os_error())));
            }
            let n = n as usize;
            if let Some(result) = self.parse(n)? {
                return Ok(result);
            }
        }
    }

    /// Walks the messages in `buf[..n]`; `None` means "not ours, read again".
    fn parse(&self, n: usize) -> Result<Option<LinkCounters>, SampleError> {
        let buf = &self.buf[..n];
        let mut off = 0;
        while off + NLMSG_HDRLEN <= buf.len() {
            let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
            let u16_at = |o: usize| u16::from_ne_bytes(buf[o..o + 2].try_into().unwrap());
            let len = u32_at(off) as usize;
            let ty = u16_at(off + 4);
            let seq = u32_at(off + 8);
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                return Err(self.nl_err("truncated netlink message"));
            }
            let msg = &buf[off..off + len];
            off += (len + 3) & !3;
            if seq != self.seq {
                continue;
            }
            match ty {
                NLMSG_ERROR => {
                    let code = if msg.len() >= 20 {
                        i32::from_ne_bytes(msg[16..20].try_into().unwrap())
                    } else {
                        0
                    };
                    if code == -libc::ENODEV {
                        return Err(SampleError::NoSuchInterface {
                            interface: self.interface.clone(),
                        });
                    }
                    return Err(self.nl_err(format!(
                        "kernel answered: {}",
                        io::Error::from_raw_os_error(-code)
                    )));
                }
                NLMSG_DONE => return Err(self.nl_err("no link message in answer")),
                RTM_NEWLINK => {
                    let mut a = NLMSG_HDRLEN + IFINFO_LEN;
                    while a + 4 <= msg.len() {
                        let alen = u16::from_ne_bytes(msg[a..a + 2].try_into().unwrap()) as usize;
                        let aty =
                            u16::from_ne_bytes(msg[a + 2..a + 4].try_into().unwrap()) & 0x3fff;
                        if alen < 4 || a + alen > msg.len() {
                            break;
                        }
                        if aty == IFLA_STATS64 && alen >= 4 + 8 * 7 {
                            let v = |i: usize| {
                                let o = a + 4 + 8 * i;
                                u64::from_ne_bytes(msg[o..o + 8].try_into().unwrap())
                            };
                            // struct rtnl_link_stats64: rx_packets, tx_packets,
                            // rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped.
                            return Ok(Some(LinkCounters {
                                rx_packets: v(0),
                                tx_packets: v(1),
                                rx_bytes: v(2),
                                tx_bytes: v(3),
                                rx_dropped: v(6),
                            }));
                        }
                        a += (alen + 3) & !3;
                    }
                    return Err(self.nl_err("link message without IFLA_STATS64"));
                }
                _ => continue,
            }
        }
        Ok(None)
    }
}

// Classic BPF opcodes and ancillary offsets (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_MOD_K: u16 = 0x94;
const BPF_RET_K: u16 = 0x06;
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PKTTYPE: i32 = 4;
const SKF_AD_RANDOM: i32 = 56;
const PACKET_OUTGOING: u32 = 4;

/// The kernel-side sampler: drop outgoing packets, keep one in `one_in` of the
/// rest, cut to `snaplen`.
fn sampling_program(one_in: u32, snaplen: u32) -> [libc::sock_filter; 7] {
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32),
        ins(BPF_JEQ_K, 4, 0, PACKET_OUTGOING),
        ins(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) as u32),
        ins(BPF_MOD_K, 0, 0, one_in.max(1)),
        ins(BPF_JEQ_K, 0, 1, 0),
        ins(BPF_RET_K, 0, 0, snaplen.max(20)),
        ins(BPF_RET_K, 0, 0, 0),
    ]
}

/// Non-blocking AF_PACKET socket that receives sampled incoming packets of one
/// interface as IP packets (SOCK_DGRAM strips the link header).
#[derive(Debug)]
pub struct PacketSampler {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketSampler {
    /// Opens in the calling thread's network namespace.
    pub fn open(interface: &str, cfg: &SamplerConfig) -> Result<Self, SampleError> {
        let idx = ifindex(interface)?;
        let err = |what, source| SampleError::Socket {
            what,
            interface: interface.to_string(),
            source,
        };
        // Protocol 0 receives nothing until bind, so no unfiltered packet is
        // queued before the filter is attached.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(err("opening AF_PACKET socket", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = sampling_program(cfg.one_in, cfg.snaplen);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
        )
        .map_err(|e| err("attaching the sampling BPF program", e))?;
        let rcvbuf = cfg.rcvbuf.min(i32::MAX as usize) as libc::c_int;
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf)
            .map_err(|e| err("setting SO_RCVBUF", e))?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = idx as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("binding AF_PACKET socket", io::Error::last_os_error()));
        }
        Ok(PacketSampler {
            fd,
            buf: vec![0; cfg.snaplen.max(64) as usize],
        })
    }

    /// Reads up to `budget` waiting packets into `acc`, never blocking. Returns
    /// how many were read (fewer than `budget` means the queue is empty).
    pub fn poll(&mut self, acc: &mut SampleAccumulator, budget: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < budget {
            // SAFETY: `buf` is a valid writable buffer of its length; the socket
            // is non-blocking.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(n),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let got = (r as usize).min(self.buf.len());
            match classify_lax(&self.buf[..got]) {
                Ok(info) => acc.add(&info),
                Err(_) => acc.add_non_ip(),
            }
            n += 1;
        }
        Ok(n)
    }
}

impl AsRawFd for PacketSampler {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Counters plus sampled packets of one link.
#[derive(Debug)]
pub struct LinkSampler {
    counters: CounterReader,
    packets: PacketSampler,
    acc: SampleAccumulator,
    budget: usize,
}

impl LinkSampler {
    /// Opens the sockets in the calling thread's network namespace.
    pub fn open(interface: &str, cfg: &SamplerConfig) -> Result<Self, SampleError> {
        Ok(LinkSampler {
            counters: CounterReader::open(interface)?,
            packets: PacketSampler::open(interface, cfg)?,
            acc: SampleAccumulator::new(cfg),
            budget: cfg.poll_budget.max(1),
        })
    }

    /// Opens the sockets inside network namespace `netns`; the sampler then
    /// works from any thread.
    pub fn open_in_netns(
        netns: &str,
        interface: &str,
        cfg: &SamplerConfig,
    ) -> Result<Self, SampleError> {
        let (i, c) = (interface.to_string(), cfg.clone());
        in_netns(netns, move || LinkSampler::open(&i, &c))?
    }

    /// Drains waiting sampled packets (up to the poll budget), never blocking.
    pub fn poll(&mut self) -> Result<usize, SampleError> {
        self.packets
            .poll(&mut self.acc, self.budget)
            .map_err(|source| SampleError::Socket {
                what: "reading sampled packets",
                interface: self.counters.interface.clone(),
                source,
            })
    }

    /// Reads the counters and folds in what was sampled since the last call.
    pub fn sample(&mut self) -> Result<LinkSample, SampleError> {
        self.poll()?;
        let c = self.counters.read()?;
        Ok(self.acc.fold(c, Instant::now()))
    }

    /// Exact counters only.
    pub fn counters(&mut self) -> Result<LinkCounters, SampleError> {
        self.counters.read()
    }
}

impl AsRawFd for LinkSampler {
    fn as_raw_fd(&self) -> RawFd {
        self.packets.as_raw_fd()
    }
}

/// Cumulative CPU time of the machine, from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user, so it is left out.
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(CpuTimes {
        busy,
        total: busy + idle,
    })
}

pub fn read_cpu_times() -> Result<CpuTimes, SampleError> {
    const PATH: &str = "/proc/stat";
    let text =
        std::fs::read_to_string(PATH).map_err(|source| SampleError::Proc { path: PATH, source })?;
    parse_proc_stat(&text).ok_or_else(|| SampleError::Proc {
        path: PATH,
        source: io::Error::new(io::ErrorKind::InvalidData, "no aggregate cpu line"),
    })
}

/// A self-defence sample from the link's counters and the CPU times.
pub fn load_sample(c: &LinkCounters, cpu: &CpuTimes) -> LoadSample {
    LoadSample {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        rx_dropped: c.rx_dropped,
        cpu_busy: cpu.busy,
        cpu_total: cpu.total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn info(src: [u8; 4], proto: Proto, syn: bool) -> PacketInfo {
        PacketInfo {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            proto,
            syn,
            len: 60,
        }
    }

    #[test]
    fn accumulator_splits_exact_deltas_by_sampled_mix() {
        let cfg = SamplerConfig {
            one_in: 10,
            ..SamplerConfig::default()
        };
        let mut acc = SampleAccumulator::new(&cfg);
        let t = Instant::now();
        let mut c = LinkCounters::default();
        let s0 = acc.fold(c, t);
        assert_eq!(s0.packets, 0);
        // 100 sampled: 75 UDP from one source, 25 SYN from 25 sources.
        for _ in 0..75 {
            acc.add(&info([203, 0, 113, 1], Proto::Udp, false));
        }
        for i in 0..25 {
            acc.add(&info([198, 51, 100, i], Proto::Tcp, true));
        }
        c.rx_packets = 1000;
        c.rx_bytes = 60_000;
        let s1 = acc.fold(c, t);
        assert_eq!(s1.packets, 1000);
        assert_eq!(s1.udp, 750);
        assert_eq!(s1.tcp, 250);
        assert_eq!(s1.tcp_syn, 250);
        assert_eq!(s1.new_sources, 26 * 10);
        assert_eq!(s1.top_sources[0].addr, IpAddr::from([203, 0, 113, 1]));
        assert_eq!(s1.top_sources[0].packets, 750);
        // Nothing sampled next time: the delta follows the last mix.
        c.rx_packets = 1100;
        let s2 = acc.fold(c, t);
        assert_eq!(s2.udp, 825);
        assert_eq!(s2.new_sources, 260, "known sources are not new");
        // Counters reset (link re-created): no negative delta, still monotonic.
        c.rx_packets = 5;
        let s3 = acc.fold(c, t);
        assert_eq!(s3.udp, 825);
    }

    #[test]
    fn unknown_mix_goes_to_other() {
        let mut acc = SampleAccumulator::new(&SamplerConfig::default());
        let t = Instant::now();
        acc.fold(LinkCounters::default(), t);
        let s = acc.fold(
            LinkCounters {
                rx_packets: 10,
                ..Default::default()
            },
            t,
        );
        assert_eq!(s.other, 10);
    }

    #[test]
    fn proc_stat_parses() {
        let t = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            parse_proc_stat(t),
            Some(CpuTimes {
                busy: 161,
                total: 981
            })
        );
        assert_eq!(parse_proc_stat("cpu 1 2\n"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
        assert!(read_cpu_times().unwrap().total > 0);
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let e = LinkSampler::open("nosuchif0", &SamplerConfig::default()).unwrap_err();
        assert!(matches!(e, SampleError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("nosuchif0"));
        let e = LinkSampler::open_in_netns("scold-no-such-ns", "lo", &SamplerConfig::default())
            .unwrap_err();
        assert!(matches!(e, SampleError::Netns { .. }), "{e}");
    }

    #[test]
    fn loopback_counters_read_over_netlink() {
        let mut r = CounterReader::open("lo").unwrap();
        let a = r.read().unwrap();
        let b = r.read().unwrap();
        assert!(b.rx_packets >= a.rx_packets);
    }
}
