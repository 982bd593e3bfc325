//! Reading a Linux link: counters through rtnetlink, packets through a sampled
//! [`Capture`], folded into [`LinkSample`]s for the [`Detector`](crate::Detector).
//!
//! Counters (`rx_packets`, `rx_bytes`) are exact and come from the kernel's
//! link statistics. The protocol mix, SYN count, new sources and top sources
//! need packet headers: the capture receives one incoming packet in `one_in`
//! (chosen in the kernel by [`Program::sample`], so a flood costs us only its
//! sample), cut to `snaplen` bytes. Per-class counts are the exact packet delta
//! split by the sampled mix, so they always add up to the counters.
//!
//! Counters are read through rtnetlink rather than `/sys/class/net` because
//! sysfs shows the network namespace it was mounted in, while a netlink socket
//! belongs to the namespace it was created in: a sampler opened inside a
//! namespace (see [`LinkSampler::open_in_netns`]) then works from any thread.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use serde::{Deserialize, Serialize};

use crate::capture::{
    ifindex, Capture, CaptureConfig, CaptureError, CaptureStats, Program, MAX_BATCH,
};
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
    #[error(transparent)]
    Capture(CaptureError),
    #[error("reading link statistics of {interface:?} over rtnetlink failed: {detail}")]
    Netlink { interface: String, detail: String },
    #[error("reading link statistics of {interface:?} needs a tokio runtime: the rtnetlink connection runs as a task on it")]
    NoRuntime { interface: String },
    #[error("reading {path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

impl From<CaptureError> for SampleError {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::NoSuchInterface { interface } => {
                SampleError::NoSuchInterface { interface }
            }
            CaptureError::BadInterfaceName { interface } => {
                SampleError::BadInterfaceName { interface }
            }
            other => SampleError::Capture(other),
        }
    }
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

/// Reads one link's statistics through rtnetlink.
///
/// The connection is opened in the namespace of the thread that opens the reader (a
/// netlink socket belongs to the namespace it was created in) and its driver runs as
/// a task on the tokio runtime current at that moment; reads are then async, so a
/// slow answer never blocks the runtime's thread.
#[derive(Debug)]
pub struct CounterReader {
    handle: rtnetlink::Handle,
    ifindex: u32,
    interface: String,
}

/// How long one read waits for the kernel's answer.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

impl CounterReader {
    /// Opens in the calling thread's network namespace; needs a tokio runtime
    /// context (the connection's driver is spawned on it).
    pub fn open(interface: &str) -> Result<Self, SampleError> {
        let idx = ifindex(interface)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SampleError::NoRuntime {
                interface: interface.to_string(),
            });
        }
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| SampleError::Netlink {
            interface: interface.to_string(),
            detail: format!("opening an rtnetlink socket: {e}"),
        })?;
        tokio::spawn(conn);
        Ok(CounterReader {
            handle,
            ifindex: idx,
            interface: interface.to_string(),
        })
    }

    fn nl_err(&self, detail: impl Into<String>) -> SampleError {
        SampleError::Netlink {
            interface: self.interface.clone(),
            detail: detail.into(),
        }
    }

    pub async fn read(&mut self) -> Result<LinkCounters, SampleError> {
        let mut links = self.handle.link().get().match_index(self.ifindex).execute();
        let answer = tokio::time::timeout(NETLINK_TIMEOUT, links.try_next())
            .await
            .map_err(|_| self.nl_err(format!("no answer within {NETLINK_TIMEOUT:?}")))?;
        let link = match answer {
            Ok(Some(link)) => link,
            Ok(None) => return Err(self.nl_err("no link message in answer")),
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                return Err(SampleError::NoSuchInterface {
                    interface: self.interface.clone(),
                })
            }
            Err(e) => return Err(self.nl_err(format!("kernel answered: {e}"))),
        };
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Stats64(s) => Some(LinkCounters {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_dropped: s.rx_dropped,
                }),
                _ => None,
            })
            .ok_or_else(|| self.nl_err("link message without IFLA_STATS64"))
    }
}

/// Counters plus sampled packets of one link.
#[derive(Debug)]
pub struct LinkSampler {
    counters: CounterReader,
    packets: Capture,
    acc: SampleAccumulator,
    budget: usize,
}

impl LinkSampler {
    /// Opens the sockets in the calling thread's network namespace; needs a tokio
    /// runtime context (see [`CounterReader::open`]).
    pub fn open(interface: &str, cfg: &SamplerConfig) -> Result<Self, SampleError> {
        let counters = CounterReader::open(interface)?;
        let packets = Capture::open(
            interface,
            &CaptureConfig {
                // Room for the headers whatever the configured cut.
                snaplen: cfg.snaplen.max(64) as usize,
                batch: MAX_BATCH,
                program: Program::sample(cfg.one_in, cfg.snaplen),
                // The program drops outgoing packets itself.
                ignore_outgoing: false,
                rcvbuf: cfg.rcvbuf,
            },
        )?;
        Ok(LinkSampler {
            counters,
            packets,
            acc: SampleAccumulator::new(cfg),
            budget: cfg.poll_budget.max(1),
        })
    }

    /// Opens the sockets inside network namespace `netns`; the sampler then
    /// works from any thread of the current tokio runtime.
    pub fn open_in_netns(
        netns: &str,
        interface: &str,
        cfg: &SamplerConfig,
    ) -> Result<Self, SampleError> {
        // The namespace's thread enters this runtime, so the netlink connection it
        // creates there is driven here.
        let rt = tokio::runtime::Handle::try_current().map_err(|_| SampleError::NoRuntime {
            interface: interface.to_string(),
        })?;
        let (i, c) = (interface.to_string(), cfg.clone());
        in_netns(netns, move || {
            let _rt = rt.enter();
            LinkSampler::open(&i, &c)
        })?
    }

    /// Drains waiting sampled packets (up to the poll budget), never blocking.
    /// Returns how many were read (fewer than the budget: the queue is empty).
    pub fn poll(&mut self) -> Result<usize, SampleError> {
        let mut n = 0;
        while n < self.budget {
            let want = (self.budget - n).min(MAX_BATCH);
            let batch = self.packets.recv_batch(want)?;
            for p in batch.iter() {
                match classify_lax(p) {
                    Ok(info) => self.acc.add(&info),
                    Err(_) => self.acc.add_non_ip(),
                }
            }
            n += batch.len();
            if batch.len() < want {
                break;
            }
        }
        Ok(n)
    }

    /// Reads the counters and folds in what was sampled since the last call.
    pub async fn sample(&mut self) -> Result<LinkSample, SampleError> {
        self.poll()?;
        let c = self.counters.read().await?;
        Ok(self.acc.fold(c, Instant::now()))
    }

    /// Exact counters only.
    pub async fn counters(&mut self) -> Result<LinkCounters, SampleError> {
        self.counters.read().await
    }

    /// The packet capture's counters (packets read, packets the kernel dropped).
    pub fn capture_stats(&mut self) -> Result<CaptureStats, SampleError> {
        Ok(self.packets.stats()?)
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

    #[tokio::test]
    async fn missing_interface_is_a_clear_error() {
        let e = LinkSampler::open("nosuchif0", &SamplerConfig::default()).unwrap_err();
        assert!(matches!(e, SampleError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("nosuchif0"));
        let e = LinkSampler::open_in_netns("scold-no-such-ns", "lo", &SamplerConfig::default())
            .unwrap_err();
        assert!(matches!(e, SampleError::Netns { .. }), "{e}");
    }

    #[test]
    fn counters_need_a_runtime_and_say_so() {
        let e = CounterReader::open("lo").unwrap_err();
        assert!(matches!(e, SampleError::NoRuntime { .. }), "{e}");
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[tokio::test]
    async fn loopback_counters_read_over_netlink() {
        let mut r = CounterReader::open("lo").unwrap();
        let a = r.read().await.unwrap();
        // Traffic of our own on loopback moves the counters.
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            tx.send_to(b"x", sink.local_addr().unwrap()).unwrap();
        }
        let b = r.read().await.unwrap();
        assert!(b.rx_packets >= a.rx_packets + 3, "{a:?} -> {b:?}");
        assert!(b.rx_bytes > a.rx_bytes, "{a:?} -> {b:?}");
    }
}
