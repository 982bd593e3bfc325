//! `scold proxy`, defence part: the IDS/firewall, traceback reports, and self-defence
//! (paper Sections 2.1 and 4.4).
//!
//! The filter judges traffic in two places, and every packet in exactly one of them:
//!
//! - **On the relay path** ([`SessionFilter`]): the packet engine of `scold-tunnel`
//!   hands every inner packet of an admitted client session to this
//!   [`scold_tunnel::Inspect`] implementation on its own thread, after decapsulation
//!   (WireGuard's decrypted packets too) and before the packet is relayed. A
//!   [`scold_filter::Filter`] owned by that thread judges it by the client's address
//!   (the outer source) and the inner packet's class (UDP, ICMP, bare SYN), so a client
//!   tunnelling a flood hits those buckets and its packets are dropped in user space
//!   whatever the encapsulation. No lock, no allocation per packet; block and expiry
//!   events and a once-a-second summary leave the engine thread through a bounded
//!   channel with `try_send` (when it is full the engine drops the message and counts
//!   it, never waits).
//! - **On the link** (the watcher, a thread of its own): an AF_PACKET socket receives
//!   a copy of every packet arriving on the proxy's link (headers only, cut in the
//!   kernel to [`SNAPLEN`] bytes, read in batches) and a second `Filter` judges what
//!   the engine does not see:
//!   traffic that is not tunnelled (a SYN flood at the proxy's own address, UDP to
//!   other ports), and tunnel datagrams from addresses that are no admitted session
//!   (the engine drops those unread, but only the kernel can keep them from costing
//!   the proxy's CPU). Tunnel datagrams from admitted sessions and everything from
//!   registered gateways are skipped here, so no packet is judged twice.
//!
//! Both filters' blocks take effect in the kernel too: a blocked source goes into the
//! nftables set of [`scold_filter::nft::NftBlocklist`] with the block's duration as its
//! timeout, and is dropped at prerouting before the tunnel socket or the NAT relays read
//! it. The watcher's packet socket taps packets before netfilter, so its kernel program
//! ([`Program::hide_ipv4_sources`]) also stops copying the IPv4 sources the set holds: a
//! blocked flood reaches no user space at all. Without nftables, the session filter still drops
//! in user space, and the watcher only counts and reports.
//!
//! Alerts (blocked, expired) are JSON lines. Every `traceback_secs` the sources with the
//! most drops in either filter go to the coordinator (`Traceback`). [`SelfDefence`]
//! watches the link's counters and the CPU; when the proxy itself is overwhelmed it
//! sends `ProxyAttacked`, and the coordinator resets the proxy out of every ALT set. At
//! the same moment it sets the proxy's [`Drain`] switch: the admission server tells every
//! admitted client agent to move to another proxy at once, and stops telling them when
//! self-defence reports the proxy recovered.

use crate::node::control::{report_until_acknowledged, NodeContext};
use crate::proxy::admission::AdmissionTap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use scold_filter::capture::{Capture, CaptureConfig, Program, MAX_BATCH};
use scold_filter::firewall::{Alert, FilterConfig, FilterStats, Offender, SourceLimits};
use scold_filter::nft::{nft_available, Nft, NftBlocklist, NftConfig, NftPortCounter};
use scold_filter::packet::{classify, classify_lax, PacketInfo, Proto};
use scold_filter::selfdefence::{AdmissionExcuse, PortCounters};
use scold_filter::xdp::{XdpBlocklist, XdpMode};
use scold_filter::{
    Filter, FilterEvent, SelfDefence, SelfDefenceConfig, SelfDefenceEvent, Verdict,
};
use scold_metrics::advance;
use scold_proto::admission::Drain;
use scold_proto::control::Request;
use serde::Deserialize;
use std::collections::HashSet;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Bytes of each packet copied to the filter: outer headers and the start of an inner
/// packet.
pub const SNAPLEN: u32 = 160;
/// Packets read per wake-up before the timers get a turn.
const READ_BUDGET: usize = 1024;
/// Captured packets read per system call.
const CAPTURE_BATCH: usize = MAX_BATCH;
/// Pause after each read of the capture queue, so a flood costs the watcher a few
/// hundred wake-ups a second with full batches, not one wake-up per packet. Blocks
/// start at most this much later; the queue holds far more than this long of a flood.
const CAPTURE_PAUSE: Duration = Duration::from_millis(2);
/// The capture's receive buffer: the watcher reads in batches (see CAPTURE_PAUSE), so
/// room for tens of milliseconds of a flood.
const CAPTURE_RCVBUF: usize = 4 * 1024 * 1024;
/// Messages from the engine thread that may wait for the defence task.
const ENGINE_QUEUE: usize = 1024;

/// Opens the watcher's capture: a copy of every incoming packet of the proxy's link,
/// cut to [`SNAPLEN`] bytes in the kernel (no source hidden yet; see
/// [`Watcher::run`] for the updates), our own transmissions left out.
fn open_capture(interface: &str) -> Result<Capture, scold_filter::capture::CaptureError> {
    Capture::open(
        interface,
        &CaptureConfig {
            snaplen: SNAPLEN as usize,
            batch: CAPTURE_BATCH,
            program: Program::snap(SNAPLEN),
            ignore_outgoing: true,
            rcvbuf: CAPTURE_RCVBUF,
        },
    )
}

fn yes() -> bool {
    true
}
fn default_traceback_secs() -> u64 {
    10
}
fn default_traceback_top() -> usize {
    20
}

/// `[filter]` of a proxy.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    /// The proxy's public link: every packet arriving here is judged.
    pub interface: String,
    /// Alerts as JSON lines to this file (appended); default: standard error.
    #[serde(default)]
    pub alerts: Option<PathBuf>,
    /// Mirror blocks into nftables (table `inet scold`) when `nft` is present.
    #[serde(default = "yes")]
    pub nft: bool,
    /// Also drop blocked IPv4 sources with an XDP program on `interface`, before the
    /// kernel's stack: `native` (in the driver), `generic` (any interface, veth too) or
    /// `off` (the default). nftables stays the fallback: if the program cannot be
    /// attached the proxy says why and carries on with nftables alone.
    #[serde(default)]
    pub xdp: XdpSetting,
    /// How often the top offenders go to the coordinator.
    #[serde(default = "default_traceback_secs")]
    pub traceback_secs: u64,
    /// How many sources a traceback report lists at most.
    #[serde(default = "default_traceback_top")]
    pub traceback_top: usize,
    /// Per-source limits (packets/s, bytes/s, and per flood class).
    #[serde(default)]
    pub pps: Option<f64>,
    #[serde(default)]
    pub bytes_per_s: Option<f64>,
    #[serde(default)]
    pub udp_pps: Option<f64>,
    #[serde(default)]
    pub icmp_pps: Option<f64>,
    #[serde(default)]
    pub syn_pps: Option<f64>,
    /// Rate-limit drops within one second that block a source...
    #[serde(default)]
    pub block_after_drops: Option<u32>,
    /// ...for this long, doubled per repeat up to `max_block_secs`.
    #[serde(default)]
    pub block_secs: Option<u64>,
    #[serde(default)]
    pub max_block_secs: Option<u64>,
    /// Shared packet budget of sources not yet established; 0 turns it off.
    #[serde(default)]
    pub new_source_pps: Option<f64>,
}

/// `[filter] xdp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpSetting {
    #[default]
    Off,
    Native,
    Generic,
}

/// Entries the XDP block list holds at most (the filter blocks far fewer at once).
const XDP_MAX_BLOCKED: u32 = 65_536;
/// How often the XDP drop counters are read into the metrics...
const XDP_READ: Duration = Duration::from_secs(1);
/// ...and every how many reads expired entries are removed (the program already lets
/// their packets pass).
const XDP_SWEEP_EVERY: u32 = 5;

/// Loads and attaches the XDP block list as `[filter] xdp` asks; None (logged) when off
/// or when it cannot be attached, leaving the blocks to nftables.
fn attach_xdp(section: &FilterSection) -> Option<Arc<XdpBlocklist>> {
    let mode = match section.xdp {
        XdpSetting::Off => return None,
        XdpSetting::Native => XdpMode::Native,
        XdpSetting::Generic => XdpMode::Generic,
    };
    match XdpBlocklist::attach(&section.interface, mode, XDP_MAX_BLOCKED) {
        Ok(x) => Some(Arc::new(x)),
        Err(e) => {
            tracing::warn!(error = %e, interface = %section.interface, "[filter] xdp: cannot attach the XDP block list; blocked sources are dropped by nftables only");
            None
        }
    }
}

/// Where blocks take effect in the kernel: the nftables set and, when attached, the XDP
/// program in front of it.
#[derive(Clone, Default)]
struct KernelBlocks {
    nft: Option<NftBlocklist>,
    xdp: Option<Arc<XdpBlocklist>>,
}

impl KernelBlocks {
    fn any(&self) -> bool {
        self.nft.is_some() || self.xdp.is_some()
    }
}

impl FilterSection {
    pub fn filter_config(&self) -> Result<FilterConfig, String> {
        let d = FilterConfig::default();
        let l = SourceLimits::default();
        let limits = SourceLimits {
            pps: self.pps.unwrap_or(l.pps),
            bytes_per_s: self.bytes_per_s.unwrap_or(l.bytes_per_s),
            udp_pps: self.udp_pps.unwrap_or(l.udp_pps),
            icmp_pps: self.icmp_pps.unwrap_or(l.icmp_pps),
            syn_pps: self.syn_pps.unwrap_or(l.syn_pps),
            burst: l.burst,
        };
        for (k, v) in [
            ("pps", limits.pps),
            ("bytes_per_s", limits.bytes_per_s),
            ("udp_pps", limits.udp_pps),
            ("icmp_pps", limits.icmp_pps),
            ("syn_pps", limits.syn_pps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("filter.{k} = {v}: limits must be positive"));
            }
        }
        if self.interface.is_empty() {
            return Err("filter.interface is empty; name the proxy's public link".into());
        }
        if self.traceback_secs == 0 {
            return Err("filter.traceback_secs = 0; use at least 1".into());
        }
        Ok(FilterConfig {
            limits,
            block_after_drops: self.block_after_drops.unwrap_or(d.block_after_drops).max(1),
            block_for: self
                .block_secs
                .map(Duration::from_secs)
                .unwrap_or(d.block_for),
            max_block_for: self
                .max_block_secs
                .map(Duration::from_secs)
                .unwrap_or(d.max_block_for),
            new_source_pps: match self.new_source_pps {
                Some(x) if x <= 0.0 => None,
                Some(x) => Some(x),
                None => d.new_source_pps,
            },
            ..d
        })
    }
}

fn default_sd_interval_ms() -> u64 {
    500
}

/// `[selfdefence]` of a proxy: when is the proxy itself overwhelmed.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelfDefenceSection {
    /// The link to watch; default: `filter.interface`.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default = "default_sd_interval_ms")]
    pub interval_ms: u64,
    /// The link's capacity; with it, utilisation over `link_utilisation_max` counts.
    #[serde(default)]
    pub link_capacity_mbps: Option<f64>,
    #[serde(default)]
    pub link_utilisation_max: Option<f64>,
    /// Received packets/s that count as saturation.
    #[serde(default)]
    pub rx_pps_max: Option<f64>,
    #[serde(default)]
    pub rx_dropped_per_s_max: Option<f64>,
    /// Busy share of all CPUs that counts as saturation (above 1: never).
    #[serde(default)]
    pub cpu_busy_max: Option<f64>,
    /// Saturation must last this long before the coordinator is told.
    #[serde(default)]
    pub sustain_ms: Option<u64>,
    #[serde(default)]
    pub recover_ms: Option<u64>,
}

impl SelfDefenceSection {
    pub fn config(&self) -> SelfDefenceConfig {
        let d = SelfDefenceConfig::default();
        SelfDefenceConfig {
            link_capacity_bps: self.link_capacity_mbps.map(|m| m * 1e6),
            link_utilisation_max: self.link_utilisation_max.unwrap_or(d.link_utilisation_max),
            rx_pps_max: self.rx_pps_max.or(d.rx_pps_max),
            rx_dropped_per_s_max: self.rx_dropped_per_s_max.unwrap_or(d.rx_dropped_per_s_max),
            cpu_busy_max: self.cpu_busy_max.unwrap_or(d.cpu_busy_max),
            sustain: self
                .sustain_ms
                .map(Duration::from_millis)
                .unwrap_or(d.sustain),
            recover_after: self
                .recover_ms
                .map(Duration::from_millis)
                .unwrap_or(d.recover_after),
        }
    }
}

/// What the proxy's command path tells the filter.
#[derive(Debug, Clone)]
pub enum FilterUpdate {
    /// A client session: its tunnel datagrams are judged on the relay path; its other
    /// traffic on the link is admitted (exempt from the new-source budget, evicted last).
    Admit(IpAddr),
    /// The session ended: its tunnel datagrams are judged on the link again.
    Dismiss(IpAddr),
    /// A tunnel peer (gateway): never judged.
    Exempt(IpAddr),
    Unexempt(IpAddr),
    /// The filter's own: a source entered (`Hide`) or left (`Unhide`) the nftables set,
    /// so the link watcher stops or resumes copying its packets (see
    /// [`Program::hide_ipv4_sources`]).
    Hide(IpAddr),
    Unhide(IpAddr),
    /// New limits from a config reload; tracked sources and blocks stay.
    Reconfigure(Box<FilterConfig>),
}

/// The filters' limits as Prometheus gauges (`scold_filter_limit{limit="pps"}`), so an
/// operator sees which values a reload put in force.
#[derive(Clone, Default)]
struct LimitGauges(
    prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
);

impl LimitGauges {
    fn set(&self, cfg: &FilterConfig) {
        let l = &cfg.limits;
        for (k, v) in [
            ("pps", l.pps),
            ("bytes_per_s", l.bytes_per_s),
            ("udp_pps", l.udp_pps),
            ("icmp_pps", l.icmp_pps),
            ("syn_pps", l.syn_pps),
            ("block_after_drops", f64::from(cfg.block_after_drops)),
            ("block_secs", cfg.block_for.as_secs_f64()),
            ("max_block_secs", cfg.max_block_for.as_secs_f64()),
            ("new_source_pps", cfg.new_source_pps.unwrap_or(0.0)),
        ] {
            self.0
                .get_or_create(&vec![("limit".to_string(), k.to_string())])
                .set(v);
        }
    }
}

/// Hands new limits to the running filters: the link watcher (through its update
/// queue), the relay path's filter on the engine thread (picked up at its next tick,
/// within about 100 ms) and the `scold_filter_limit` gauges.
#[derive(Clone)]
pub struct LiveFilter {
    watcher: mpsc::UnboundedSender<FilterUpdate>,
    session: Arc<std::sync::Mutex<Option<FilterConfig>>>,
    gauges: LimitGauges,
}

impl LiveFilter {
    /// Applies the limits of a reloaded `[filter]` table.
    pub fn apply(&self, section: &FilterSection) -> Result<(), String> {
        let cfg = section.filter_config()?;
        self.watcher
            .send(FilterUpdate::Reconfigure(Box::new(cfg.clone())))
            .map_err(|_| "the link watcher has stopped".to_string())?;
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg.clone());
        self.gauges.set(&cfg);
        Ok(())
    }
}

/// How tunnel datagrams are recognised.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelPorts {
    pub udp: Option<u16>,
    pub ipip: bool,
}

/// Whether a captured packet is a tunnel datagram (UDP to the tunnel port, or IP
/// protocol 4 when ipip is on), i.e. what the engine reads.
pub fn is_tunnel_datagram(packet: &[u8], tunnel: TunnelPorts) -> bool {
    let Some(first) = packet.first() else {
        return false;
    };
    let (ihl, proto) = match first >> 4 {
        4 => (usize::from(first & 0x0f) * 4, packet.get(9)),
        6 => (40, packet.get(6)),
        _ => return false,
    };
    match proto {
        Some(4) => tunnel.ipip && first >> 4 == 4,
        Some(17) => {
            tunnel.udp.is_some()
                && packet
                    .get(ihl + 2..ihl + 4)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    == tunnel.udp
        }
        _ => false,
    }
}

/// The facts the filter judges a captured packet by: for clear-text tunnel datagrams
/// the inner packet's class with the outer source and length.
pub fn judge_info(packet: &[u8], tunnel: TunnelPorts) -> Option<PacketInfo> {
    let outer = classify_lax(packet).ok()?;
    let ihl = match packet.first()? >> 4 {
        4 => usize::from(packet[0] & 0x0f) * 4,
        6 => 40,
        _ => return Some(outer),
    };
    let is_ipip = tunnel.ipip && packet[0] >> 4 == 4 && packet.get(9) == Some(&4);
    let inner = if is_ipip {
        packet.get(ihl..)
    } else if outer.proto == Proto::Udp
        && tunnel.udp.is_some()
        && packet
            .get(ihl + 2..ihl + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            == tunnel.udp
    {
        match packet.get(ihl + 8..) {
            // Clear-text encapsulation: the payload is an IP packet.
            Some(p) if matches!(p.first().map(|b| b >> 4), Some(4) | Some(6)) => Some(p),
            // WireGuard (or anything else): opaque; judged by rate and size only.
            _ => {
                return Some(PacketInfo {
                    proto: Proto::Other,
                    syn: false,
                    ..outer
                })
            }
        }
    } else {
        None
    };
    match inner.and_then(|p| classify_lax(p).ok()) {
        Some(i) => Some(PacketInfo {
            src: outer.src,
            dst: outer.dst,
            proto: i.proto,
            syn: i.syn,
            len: outer.len,
        }),
        None => Some(outer),
    }
}

/// What the filters on their threads (the engine's, the watcher's) hand to the
/// defence task.
#[derive(Debug)]
pub enum FilterReport {
    /// A source blocked or released.
    Event(FilterEvent),
    /// Once a second: the filter's counters, its top offenders, how many events were
    /// lost because the queue was full, and (the link watcher's) how many packets the
    /// kernel dropped because the capture's queue was full.
    Summary {
        stats: FilterStats,
        top: Vec<Offender>,
        lost: u64,
        capture_drops: u64,
    },
}

/// The filter on the relay path: a [`scold_tunnel::Inspect`] the proxy installs in its
/// packet engine. See the module documentation for what it judges.
pub struct SessionFilter {
    filter: Filter,
    /// New limits from a config reload, taken at the next tick.
    pending: Arc<std::sync::Mutex<Option<FilterConfig>>>,
    epoch: Instant,
    tx: mpsc::Sender<FilterReport>,
    next_summary: Instant,
    top: usize,
    lost: u64,
}

impl SessionFilter {
    /// `cfg` as for the link's filter; the new-source budget is switched off, since
    /// only admitted sessions reach the relay path. Reports go to `tx`, never waited on.
    pub fn new(cfg: FilterConfig, top: usize, tx: mpsc::Sender<FilterReport>) -> Self {
        let now = Instant::now();
        SessionFilter {
            filter: Filter::new(FilterConfig {
                new_source_pps: None,
                ..cfg
            }),
            pending: Default::default(),
            epoch: now,
            tx,
            next_summary: now,
            top,
            lost: 0,
        }
    }

    fn hand_on_events(&mut self) {
        for e in self.filter.drain_events() {
            if self.tx.try_send(FilterReport::Event(e)).is_err() {
                self.lost += 1;
            }
        }
    }
}

impl scold_tunnel::Inspect for SessionFilter {
    fn check(&mut self, now: Instant, outer_src: IpAddr, inner: &[u8]) -> bool {
        let t = now.saturating_duration_since(self.epoch);
        // Judged by the client's address, whatever the inner source says (the engine
        // checks that after this, and a spoofing client must still pay).
        let info = match classify(inner).or_else(|_| classify_lax(inner)) {
            Ok(i) => PacketInfo {
                src: outer_src,
                ..i
            },
            Err(_) => return false,
        };
        let pass = self.filter.check_info(t, &info) == Verdict::Pass;
        if self.filter.has_events() {
            self.hand_on_events();
        }
        pass
    }

    fn tick(&mut self, now: Instant) {
        if now < self.next_summary {
            return;
        }
        self.next_summary = now + Duration::from_secs(1);
        // Once a second, never waiting on the packet path: a reload holding the lock is
        // seen at the next summary.
        if let Ok(mut p) = self.pending.try_lock() {
            if let Some(cfg) = p.take() {
                self.filter.reconfigure(FilterConfig {
                    new_source_pps: None,
                    ..cfg
                });
            }
        }
        let t = now.saturating_duration_since(self.epoch);
        self.filter.expire(t);
        self.hand_on_events();
        let summary = FilterReport::Summary {
            stats: self.filter.stats(),
            top: self.filter.top_offenders(t, self.top),
            lost: self.lost,
            capture_drops: 0,
        };
        let _ = self.tx.try_send(summary);
    }
}

/// Filter metrics, moved on from the filters' own counters once a second. What only
/// grows is a Prometheus counter (`rate()` works on it); what goes up and down a gauge.
#[derive(Clone, Default)]
struct FilterMetrics {
    passed: Counter,
    dropped: Counter,
    xdp_dropped: Counter,
    xdp_dropped_bytes: Counter,
    blocks: Counter,
    blocked_now: Gauge,
    tracked: Gauge,
    relay_dropped: Counter,
    events_lost: Counter,
    capture_dropped: Counter,
    /// The totals last seen: passed, dropped, relay_dropped, events_lost, capture_dropped,
    /// xdp_dropped, xdp_dropped_bytes.
    last: Arc<std::sync::Mutex<[u64; 7]>>,
    /// The link to the coordinator, whose heartbeats carry the drop total.
    agent: Option<scold_link::CoordinatorLink>,
}

impl FilterMetrics {
    /// The gauges from both filters' latest summaries.
    fn set(&self, link: &FilterStats, relay: &FilterStats, lost: u64) {
        let dropped = |s: &FilterStats| {
            s.dropped_blocked + s.dropped_rate + s.dropped_new_source + s.dropped_malformed
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let [passed, dropped_last, relay_last, lost_last, _, xdp_last, _] = &mut *last;
        advance(&self.passed, link.passed + relay.passed, passed);
        advance(&self.dropped, dropped(link) + dropped(relay), dropped_last);
        if let Some(agent) = &self.agent {
            // The filters' own drops and the XDP program's (last[5], read once a second).
            let total = dropped(link) + dropped(relay) + *xdp_last;
            agent.report_load(|l| l.filter_drops = total);
        }
        advance(&self.relay_dropped, dropped(relay), relay_last);
        self.tracked
            .set((link.tracked_sources + relay.tracked_sources) as i64);
        advance(&self.events_lost, lost, lost_last);
    }

    fn set_capture_dropped(&self, total: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        advance(&self.capture_dropped, total, &mut last[4]);
    }

    fn set_xdp_dropped(&self, d: scold_filter::xdp::XdpDrops) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        advance(&self.xdp_dropped, d.packets, &mut last[5]);
        advance(&self.xdp_dropped_bytes, d.bytes, &mut last[6]);
    }
}

/// The running defence tasks; stop with [`Defence::stop`].
pub struct Defence {
    /// With a `[filter]`: where reloaded limits go.
    pub live: Option<LiveFilter>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    nft: Option<NftBlocklist>,
    /// Detaches when the last handle is dropped.
    xdp: Option<Arc<XdpBlocklist>>,
    /// Self-defence's count of the admission port's packets.
    port_counter: Option<NftPortCounter>,
    /// Ends the watcher's thread.
    watcher_stop: Option<Arc<AtomicBool>>,
}

impl Defence {
    /// Starts the link's filter on its interface (and self-defence when configured).
    /// Returns the sender the proxy uses to tell the filter about sessions and peers,
    /// and with a `[filter]` the [`SessionFilter`] to install in the packet engine
    /// (`State::set_inspector`). Self-defence sets `drain` while it declares the proxy
    /// under attack (the admission server then tells clients to move).
    pub fn start(
        section: Option<&FilterSection>,
        selfdefence: Option<&SelfDefenceSection>,
        tunnel: TunnelPorts,
        ctx: &NodeContext,
        drain: tokio::sync::watch::Sender<Drain>,
        admission: AdmissionTap,
    ) -> anyhow::Result<(
        Defence,
        mpsc::UnboundedSender<FilterUpdate>,
        Option<SessionFilter>,
    )> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let mut nft = None;
        let mut xdp = None;
        let mut session = None;
        let mut watcher_stop = None;
        let mut port_counter = None;
        let mut live = None;
        if let Some(section) = section {
            let started = start_filter(section, (tx.clone(), rx), tunnel, ctx)?;
            live = Some(LiveFilter {
                watcher: tx.clone(),
                session: started.session.pending.clone(),
                gauges: started.gauges,
            });
            tasks.push(started.task);
            nft = started.kernel.nft;
            xdp = started.kernel.xdp;
            session = Some(started.session);
            watcher_stop = Some(started.watcher_stop);
        }
        if let Some(sd) = selfdefence {
            let interface = sd
                .interface
                .clone()
                .or_else(|| section.map(|s| s.interface.clone()))
                .ok_or_else(|| anyhow::anyhow!("[selfdefence] needs an interface"))?;
            port_counter = admission_counter(&interface, &admission);
            tasks.push(tokio::spawn(run_selfdefence(
                interface,
                sd.config(),
                Duration::from_millis(sd.interval_ms.clamp(50, 10_000)),
                ctx.clone(),
                drain,
                port_counter.clone().map(|c| (c, admission)),
            )));
        }
        Ok((
            Defence {
                live,
                tasks,
                nft,
                xdp,
                port_counter,
                watcher_stop,
            },
            tx,
            session,
        ))
    }

    /// Stops the tasks and removes the nftables table.
    pub async fn stop(self) {
        if let Some(s) = &self.watcher_stop {
            s.store(true, Ordering::Relaxed);
        }
        for t in self.tasks {
            t.abort();
        }
        if let Some(x) = self.xdp {
            tracing::info!(interface = x.interface(), "XDP block list detached");
            drop(x);
        }
        if let Some(n) = self.nft {
            let r = tokio::task::spawn_blocking(move || n.remove()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "cannot remove the nftables block list");
            }
        }
        if let Some(c) = self.port_counter {
            let r = tokio::task::spawn_blocking(move || c.remove()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "cannot remove the admission port's nftables counter");
            }
        }
    }
}

struct StartedFilter {
    gauges: LimitGauges,
    task: tokio::task::JoinHandle<()>,
    kernel: KernelBlocks,
    session: SessionFilter,
    watcher_stop: Arc<AtomicBool>,
}

fn start_filter(
    section: &FilterSection,
    (updates, rx): (
        mpsc::UnboundedSender<FilterUpdate>,
        mpsc::UnboundedReceiver<FilterUpdate>,
    ),
    tunnel: TunnelPorts,
    ctx: &NodeContext,
) -> anyhow::Result<StartedFilter> {
    let cfg = section
        .filter_config()
        .map_err(|e| anyhow::anyhow!("[filter]: {e}"))?;
    let capture = open_capture(&section.interface).map_err(|e| {
        anyhow::anyhow!("[filter]: cannot watch the proxy's link (filter.interface): {e}")
    })?;
    let nft = if section.nft {
        let nc = NftConfig::default();
        if nft_available(&nc.program) {
            Some(NftBlocklist::ensure(nc).map_err(|e| anyhow::anyhow!("[filter] nft: {e}"))?)
        } else {
            tracing::warn!("nft is not installed (Debian package `nftables`): blocks are only counted and reported, not enforced in the kernel");
            None
        }
    } else {
        None
    };
    let kernel = KernelBlocks {
        nft,
        xdp: attach_xdp(section),
    };
    let alerts: Box<dyn io::Write + Send> = match &section.alerts {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    anyhow::anyhow!("[filter] alerts = {}: cannot open: {e}", p.display())
                })?,
        ),
        None => Box::new(io::stderr()),
    };
    let fm = FilterMetrics {
        agent: ctx.agent.clone(),
        ..Default::default()
    };
    let gauges = LimitGauges::default();
    gauges.set(&cfg);
    ctx.metrics.metrics.with_registry(|r| {
        r.register(
            "filter_limit",
            "Limits the proxy filter holds each source to now (they change on a config reload)",
            gauges.0.clone(),
        );
        r.register(
            "filter_passed",
            "Packets the proxy filter passed",
            fm.passed.clone(),
        );
        r.register(
            "filter_dropped",
            "Packets the proxy filter judged attack traffic",
            fm.dropped.clone(),
        );
        r.register(
            "filter_xdp_dropped",
            "Packets of blocked sources the XDP program dropped at the interface",
            fm.xdp_dropped.clone(),
        );
        r.register(
            "filter_xdp_dropped_bytes",
            "Bytes of blocked sources the XDP program dropped at the interface",
            fm.xdp_dropped_bytes.clone(),
        );
        r.register(
            "filter_blocks",
            "Sources put on the block list",
            fm.blocks.clone(),
        );
        r.register(
            "filter_blocked_sources",
            "Sources blocked now",
            fm.blocked_now.clone(),
        );
        r.register(
            "filter_tracked_sources",
            "Sources the filter tracks",
            fm.tracked.clone(),
        );
        r.register(
            "filter_relay_dropped",
            "Packets of admitted sessions the filter dropped on the relay path",
            fm.relay_dropped.clone(),
        );
        r.register(
            "filter_events_lost",
            "Block/expiry events the filters' threads could not hand on (queue full)",
            fm.events_lost.clone(),
        );
        r.register(
            "filter_capture_dropped",
            "Packets the kernel dropped before the link watcher read them (capture queue full)",
            fm.capture_dropped.clone(),
        );
    });
    tracing::info!(interface = %section.interface, nft = kernel.nft.is_some(), xdp = kernel.xdp.is_some(), "proxy filter on the relay path and watching the link");
    let (etx, erx) = mpsc::channel(ENGINE_QUEUE);
    let session = SessionFilter::new(cfg.clone(), section.traceback_top, etx);
    let (ltx, lrx) = mpsc::channel(ENGINE_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = Watcher {
        capture,
        filter: Filter::new(cfg),
        tunnel,
        updates: rx,
        tx: ltx,
        stop: stop.clone(),
        top: section.traceback_top,
    };
    std::thread::Builder::new()
        .name("scold-watch".into())
        .spawn(move || watcher.run())
        .map_err(|e| anyhow::anyhow!("[filter]: cannot start the link watcher thread: {e}"))?;
    let task = tokio::spawn(run_filter(
        Inputs {
            link: lrx,
            engine: erx,
            watcher: updates,
        },
        kernel.clone(),
        alerts,
        fm,
        section.clone(),
        ctx.clone(),
    ));
    Ok(StartedFilter {
        gauges,
        task,
        kernel,
        session,
        watcher_stop: stop,
    })
}

/// What the filter task listens to: both filters' reports.
struct Inputs {
    link: mpsc::Receiver<FilterReport>,
    engine: mpsc::Receiver<FilterReport>,
    /// Back to the link watcher: which sources the kernel set holds.
    watcher: mpsc::UnboundedSender<FilterUpdate>,
}

/// The link watcher: a thread of its own that owns the capture socket and the link's
/// `Filter`, and hands events and summaries on like the engine's [`SessionFilter`].
///
/// Why a thread and batches: a packet socket wakes whoever waits on it for every
/// packet, so a flood watched through the async runtime costs a wake-up per packet
/// (measured: most of a core at 80 000 packets/s). Under load the watcher instead
/// sleeps [`CAPTURE_PAUSE`] between reads and drains the queue in batches of
/// [`CAPTURE_BATCH`] with nobody waiting on the socket; when the link is quiet it
/// waits in `poll(2)` for the next packet.
struct Watcher {
    capture: Capture,
    filter: Filter,
    tunnel: TunnelPorts,
    updates: mpsc::UnboundedReceiver<FilterUpdate>,
    tx: mpsc::Sender<FilterReport>,
    stop: Arc<AtomicBool>,
    top: usize,
}

impl Watcher {
    /// Sends the filter's block and expiry events on.
    fn forward_events(&mut self, lost: &mut u64) {
        for e in self.filter.drain_events() {
            if self.tx.try_send(FilterReport::Event(e)).is_err() {
                *lost += 1;
            }
        }
    }

    fn run(mut self) {
        let start = Instant::now();
        let mut exempt: HashSet<IpAddr> = HashSet::new();
        // Admitted sessions: their tunnel datagrams are judged on the relay path.
        let mut sessions: HashSet<IpAddr> = HashSet::new();
        let mut next_summary = start + Duration::from_secs(1);
        let mut lost = 0u64;
        // Sources in the nftables set: hidden from the capture in the kernel, so a
        // blocked flood costs the watcher nothing (blocks expire by time, not by the
        // traffic seen).
        let mut hidden: std::collections::BTreeSet<std::net::Ipv4Addr> = Default::default();
        let mut hide_changed = false;
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(u) = self.updates.try_recv() {
                match u {
                    FilterUpdate::Admit(ip) => {
                        sessions.insert(ip);
                        self.filter.admit(start.elapsed(), ip);
                    }
                    FilterUpdate::Dismiss(ip) => {
                        sessions.remove(&ip);
                    }
                    FilterUpdate::Exempt(ip) => {
                        exempt.insert(ip);
                    }
                    FilterUpdate::Unexempt(ip) => {
                        exempt.remove(&ip);
                    }
                    FilterUpdate::Hide(IpAddr::V4(a)) => hide_changed |= hidden.insert(a),
                    FilterUpdate::Unhide(IpAddr::V4(a)) => hide_changed |= hidden.remove(&a),
                    // The program matches IPv4 sources only; IPv6 blocks stay visible.
                    FilterUpdate::Hide(_) | FilterUpdate::Unhide(_) => {}
                    FilterUpdate::Reconfigure(cfg) => {
                        self.filter.reconfigure(*cfg);
                        tracing::info!("link filter: new limits in force");
                    }
                }
            }
            if std::mem::take(&mut hide_changed) {
                let list: Vec<std::net::Ipv4Addr> = hidden.iter().copied().collect();
                let program = Program::hide_ipv4_sources(&list, SNAPLEN);
                if let Err(e) = self.capture.set_program(&program) {
                    tracing::warn!(error = %e, "cannot update the capture's program; blocked sources stay visible to the watcher");
                }
            }
            let now = start.elapsed();
            let mut n = 0;
            while n < READ_BUDGET {
                match self.capture.recv_batch(CAPTURE_BATCH) {
                    Ok(batch) => {
                        n += batch.len();
                        for pkt in batch.iter() {
                            let Some(info) = judge_info(pkt, self.tunnel) else {
                                continue;
                            };
                            if exempt.contains(&info.src)
                                || (sessions.contains(&info.src)
                                    && is_tunnel_datagram(pkt, self.tunnel))
                            {
                                // A gateway, or a session's tunnel: judged on the relay path.
                                continue;
                            }
                            self.filter.check_info(now, &info);
                        }
                        if batch.len() < CAPTURE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading captured packets failed");
                        std::thread::sleep(Duration::from_secs(1));
                        break;
                    }
                }
            }
            self.forward_events(&mut lost);
            let wall = Instant::now();
            if wall >= next_summary {
                next_summary = wall + Duration::from_secs(1);
                let t = start.elapsed();
                self.filter.expire(t);
                self.forward_events(&mut lost);
                let capture_drops = match self.capture.stats() {
                    Ok(c) => c.kernel_drops,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the capture's counters");
                        0
                    }
                };
                let summary = FilterReport::Summary {
                    stats: self.filter.stats(),
                    top: self.filter.top_offenders(t, self.top),
                    lost,
                    capture_drops,
                };
                let _ = self.tx.try_send(summary);
            }
            if n >= CAPTURE_BATCH {
                // A flood: let the queue fill with nobody waiting on the socket.
                std::thread::sleep(CAPTURE_PAUSE);
            } else {
                self.capture.wait_readable(Duration::from_millis(100));
            }
        }
    }
}

/// The `n` sources with the most drops over both filters.
fn merge_offenders(mut a: Vec<Offender>, b: &[Offender], n: usize) -> Vec<Offender> {
    a.extend(b.iter().cloned());
    a.sort_by_key(|o| std::cmp::Reverse(o.dropped_packets));
    let mut seen = HashSet::new();
    a.retain(|o| seen.insert(o.src));
    a.truncate(n);
    a
}

async fn run_filter(
    inputs: Inputs,
    kernel: KernelBlocks,
    mut alerts: Box<dyn io::Write + Send>,
    fm: FilterMetrics,
    section: FilterSection,
    ctx: NodeContext,
) {
    let Inputs {
        mut link,
        mut engine,
        watcher,
    } = inputs;
    // The link watcher stops copying what the kernel drops (only where the kernel drops
    // it: without nftables or XDP, blocks are counted, not enforced, and the watcher
    // keeps seeing the traffic).
    let hide = |e: &FilterEvent, to_kernel: bool| {
        if !kernel.any() || !to_kernel {
            return;
        }
        let _ = watcher.send(match e {
            FilterEvent::Blocked { src, .. } => FilterUpdate::Hide(*src),
            FilterEvent::Expired { src, .. } => FilterUpdate::Unhide(*src),
        });
    };
    let mut link_stats = FilterStats::default();
    let mut link_top: Vec<Offender> = Vec::new();
    let mut link_lost = 0u64;
    let mut relay_stats = FilterStats::default();
    let mut relay_top: Vec<Offender> = Vec::new();
    let mut relay_lost = 0u64;
    let (mut link_open, mut engine_open) = (true, true);
    // Who blocks what: a source both filters block (a session flooding through its
    // tunnel and at the proxy's address) stays in the kernel set until both release it.
    let mut link_blocked: HashSet<IpAddr> = HashSet::new();
    let mut relay_blocked: HashSet<IpAddr> = HashSet::new();
    let mut traceback = tokio::time::interval(Duration::from_secs(section.traceback_secs));
    traceback.tick().await;
    let mut last_sent: Vec<IpAddr> = Vec::new();
    let mut xdp_read = tokio::time::interval(XDP_READ);
    let mut xdp_reads = 0u32;
    loop {
        tokio::select! {
            _ = xdp_read.tick(), if kernel.xdp.is_some() => {
                if let Some(x) = &kernel.xdp {
                    xdp_reads += 1;
                    if xdp_reads.is_multiple_of(XDP_SWEEP_EVERY) {
                        if let Err(e) = x.sweep() {
                            tracing::warn!(error = %e, "cannot sweep the XDP block list");
                        }
                    }
                    match x.drops() {
                        Ok(d) => fm.set_xdp_dropped(d),
                        Err(e) => tracing::warn!(error = %e, "cannot read the XDP drop counters"),
                    }
                }
            }
            r = link.recv(), if link_open => match r {
                Some(FilterReport::Event(e)) => {
                    let to_kernel = track(&e, &mut link_blocked, &relay_blocked);
                    hide(&e, to_kernel);
                    publish(vec![e], Some(&kernel).filter(|_| to_kernel), &mut alerts, &fm).await;
                }
                Some(FilterReport::Summary { stats, top, lost, capture_drops }) => {
                    (link_stats, link_top, link_lost) = (stats, top, lost);
                    fm.set(&link_stats, &relay_stats, link_lost + relay_lost);
                    fm.set_capture_dropped(capture_drops);
                }
                None => {
                    tracing::error!("the link watcher stopped; the link is no longer judged");
                    link_open = false;
                }
            },
            r = engine.recv(), if engine_open => match r {
                Some(FilterReport::Event(e)) => {
                    let to_kernel = track(&e, &mut relay_blocked, &link_blocked);
                    hide(&e, to_kernel);
                    publish(vec![e], Some(&kernel).filter(|_| to_kernel), &mut alerts, &fm).await;
                }
                Some(FilterReport::Summary { stats, top, lost, .. }) => {
                    (relay_stats, relay_top, relay_lost) = (stats, top, lost);
                    fm.set(&link_stats, &relay_stats, link_lost + relay_lost);
                }
                None => engine_open = false,
            },
            _ = traceback.tick() => {
                let top = merge_offenders(link_top.clone(), &relay_top, section.traceback_top);
                let sources: Vec<IpAddr> = top.iter().map(|o| o.src).collect();
                if sources.is_empty() || sources == last_sent {
                    continue;
                }
                let json = serde_json::to_string(&top).unwrap_or_default();
                tracing::info!(offenders = %json, "traceback: top offenders");
                if let (Some(agent), Some(name)) = (&ctx.agent, &ctx.name) {
                    let req = Request::Traceback { proxy: name.clone(), sources: sources.clone() };
                    match agent.request(req, Duration::from_secs(5)).await {
                        Ok(_) => last_sent = sources,
                        Err(e) => tracing::warn!(error = %e, "traceback report not delivered; next period retries"),
                    }
                }
            }
        }
    }
}

/// Notes a filter's event in its set of blocked sources; false when the kernel set must
/// not follow it (an expiry while the other filter still blocks the source).
fn track(e: &FilterEvent, mine: &mut HashSet<IpAddr>, other: &HashSet<IpAddr>) -> bool {
    match e {
        FilterEvent::Blocked { src, .. } => {
            mine.insert(*src);
            true
        }
        FilterEvent::Expired { src, .. } => {
            mine.remove(src);
            !other.contains(src)
        }
    }
}

/// Alerts, metrics and the kernel's mirrors (XDP, nftables) for block/expiry events of
/// either filter.
async fn publish(
    events: Vec<FilterEvent>,
    kernel: Option<&KernelBlocks>,
    alerts: &mut Box<dyn io::Write + Send>,
    fm: &FilterMetrics,
) {
    if events.is_empty() {
        return;
    }
    let wall = SystemTime::now();
    for e in &events {
        let a = Alert::from_event(e, wall);
        if a.kind == "blocked" {
            fm.blocks.inc();
            fm.blocked_now.inc();
            tracing::warn!(src = %a.src, reason = ?a.reason, "source blocked");
        } else {
            fm.blocked_now.dec();
        }
        let _ = writeln!(alerts, "{}", a.to_json_line());
    }
    let _ = alerts.flush();
    if let Some(x) = kernel.and_then(|k| k.xdp.as_ref()) {
        // Map updates are single system calls: no need to leave the task.
        if let Err(e) = x.apply_events(events.iter()) {
            tracing::warn!(error = %e, "cannot mirror blocks into the XDP block list");
        }
    }
    if let Some(n) = kernel.and_then(|k| k.nft.as_ref()) {
        let n = n.clone();
        let r = tokio::task::spawn_blocking(move || n.apply_events(events.iter())).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "cannot mirror blocks into nftables");
        }
    }
}

/// What a drain notice tells clients: which resources are saturated.
fn drain_reason(report: &scold_filter::selfdefence::LoadReport) -> String {
    let what: Vec<String> = report
        .saturated
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    format!(
        "self-defence: under attack ({}; {:.0} packets/s received)",
        what.join(", "),
        report.rx_pps
    )
}

/// The table in which self-defence counts the admission port's packets.
const ADMISSION_COUNTER_TABLE: &str = "scold_admission";

/// The nftables counter of the admission port's packets on the watched `interface`;
/// None (logged) without `[admission]` or nft, when the admission traffic counts as the
/// link's.
fn admission_counter(interface: &str, tap: &AdmissionTap) -> Option<NftPortCounter> {
    let port = tap.port?;
    if !nft_available("nft") {
        tracing::warn!("nft is not installed (Debian package `nftables`): self-defence counts the admission port's connections as link load");
        return None;
    }
    match NftPortCounter::ensure(
        Nft::new("nft", None),
        ADMISSION_COUNTER_TABLE,
        interface,
        port,
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the admission port's packets; self-defence counts them as link load");
            None
        }
    }
}

async fn run_selfdefence(
    interface: String,
    cfg: SelfDefenceConfig,
    every: Duration,
    ctx: NodeContext,
    drain: tokio::sync::watch::Sender<Drain>,
    admission: Option<(NftPortCounter, AdmissionTap)>,
) {
    let mut reader = match scold_filter::sample::CounterReader::open(&interface) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "self-defence cannot read the link; it is off");
            return;
        }
    };
    let mut sd = SelfDefence::new(cfg);
    let mut excuse = AdmissionExcuse::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut reporting: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let (c, cpu) = match (reader.read().await, scold_filter::sample::read_cpu_times()) {
            (Ok(c), Ok(cpu)) => (c, cpu),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "self-defence sample failed");
                continue;
            }
        };
        let mut sample = scold_filter::sample::load_sample(&c, &cpu);
        if let Some((counter, tap)) = &admission {
            // Read together with the link's counters, so both cover the same interval.
            let counter = counter.clone();
            let accepted = tap.accepted();
            match tokio::task::spawn_blocking(move || counter.read()).await {
                Ok(Ok((packets, bytes))) => {
                    let port = PortCounters {
                        packets,
                        bytes,
                        accepted,
                    };
                    sample = excuse.apply(port, &sample);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the admission port's counter")
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the admission port's counter"),
            }
        }
        match sd.observe(start.elapsed(), &sample) {
            Some(SelfDefenceEvent::UnderAttack(report)) => {
                let summary = serde_json::to_value(&report).unwrap_or_default();
                tracing::warn!(%interface, summary = %summary, "this proxy is under a severe attack");
                // The clients first: they move at once over their open admission
                // connections, before the coordinator's reset reaches them through DNS.
                drain.send_replace(Drain::because(&drain_reason(&report)));
                tracing::warn!(
                    connections = drain.receiver_count().saturating_sub(1),
                    "draining: admitted clients are told to move to another proxy"
                );
                if let (Some(agent), Some(name)) = (ctx.agent.clone(), ctx.name.clone()) {
                    if let Some(r) = reporting.take() {
                        r.abort();
                    }
                    reporting = Some(tokio::spawn(async move {
                        report_until_acknowledged(
                            &agent,
                            "proxy_attacked",
                            || Request::ProxyAttacked {
                                proxy: name.clone(),
                                summary: summary.clone(),
                            },
                            || false,
                        )
                        .await;
                    }));
                }
            }
            Some(SelfDefenceEvent::Recovered(report)) => {
                if let Some(r) = reporting.take() {
                    r.abort();
                }
                let summary = serde_json::to_string(&report).unwrap_or_default();
                tracing::info!(%interface, summary = %summary, "this proxy recovered; the coordinator's attacked mark expires by itself");
                drain.send_replace(Drain::default());
                tracing::info!("no longer draining: clients are told they may stay");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x9c, 0x40]);
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn syn4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let mut tcp = [0u8; 20];
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        p.extend_from_slice(&tcp);
        p
    }

    const T: TunnelPorts = TunnelPorts {
        udp: Some(51820),
        ipip: true,
    };

    #[test]
    fn clear_text_tunnels_are_judged_by_their_inner_packet() {
        let inner = syn4([10, 1, 0, 2], [10, 4, 0, 2]);
        let outer = ipv4_udp([10, 1, 0, 2], [10, 1, 0, 1], 51820, &inner);
        let i = judge_info(&outer, T).unwrap();
        assert_eq!((i.proto, i.syn), (Proto::Tcp, true));
        assert_eq!(i.src.to_string(), "10.1.0.2");
        assert_eq!(i.len, outer.len());
        // Truncated capture still classifies the inner SYN.
        let i = judge_info(&outer[..(SNAPLEN as usize).min(outer.len())], T).unwrap();
        assert!(i.syn);
        // ipip: protocol 4, inner right after the outer header.
        let mut ipip = vec![
            0x45, 0, 0, 60, 0, 0, 0, 0, 64, 4, 0, 0, 10, 1, 0, 2, 10, 1, 0, 1,
        ];
        ipip.extend_from_slice(&inner);
        let i = judge_info(&ipip, T).unwrap();
        assert_eq!((i.proto, i.syn), (Proto::Tcp, true));
    }

    #[test]
    fn opaque_tunnels_and_other_ports() {
        // A WireGuard data message: type 4, three zero bytes.
        let wg = ipv4_udp(
            [10, 1, 0, 2],
            [10, 1, 0, 1],
            51820,
            &[4, 0, 0, 0, 1, 2, 3, 4],
        );
        assert_eq!(judge_info(&wg, T).unwrap().proto, Proto::Other);
        // Plain UDP to another port: a UDP packet (flood class udp).
        let flood = ipv4_udp([10, 1, 0, 66], [10, 1, 0, 1], 9, &[0x45; 16]);
        assert_eq!(judge_info(&flood, T).unwrap().proto, Proto::Udp);
        // Without a tunnel port, the same datagram to 51820 is plain UDP.
        let plain = ipv4_udp([10, 1, 0, 2], [10, 1, 0, 1], 51820, &[0x45; 20]);
        assert_eq!(
            judge_info(&plain, TunnelPorts::default()).unwrap().proto,
            Proto::Udp
        );
    }

    #[test]
    fn tunnel_datagrams_are_recognised() {
        let inner = syn4([10, 1, 0, 2], [10, 4, 0, 2]);
        assert!(is_tunnel_datagram(
            &ipv4_udp([10, 1, 0, 2], [10, 1, 0, 1], 51820, &inner),
            T
        ));
        assert!(!is_tunnel_datagram(
            &ipv4_udp([10, 1, 0, 2], [10, 1, 0, 1], 53, &inner),
            T
        ));
        assert!(!is_tunnel_datagram(&inner, T), "a bare SYN is no tunnel");
        let mut ipip = vec![
            0x45, 0, 0, 60, 0, 0, 0, 0, 64, 4, 0, 0, 10, 1, 0, 2, 10, 1, 0, 1,
        ];
        ipip.extend_from_slice(&inner);
        assert!(is_tunnel_datagram(&ipip, T));
        let no_ipip = TunnelPorts {
            udp: Some(51820),
            ipip: false,
        };
        assert!(!is_tunnel_datagram(&ipip, no_ipip));
        for bad in [
            &[][..],
            &[0x45],
            &[0x45, 0, 0, 0, 0, 0, 0, 0, 0, 17],
            &[0x60; 7],
        ] {
            assert!(!is_tunnel_datagram(bad, T), "{bad:?}");
        }
    }

    /// The relay-path filter: a session flooding UDP is dropped and blocked, the block
    /// event goes out through the channel, another session is untouched, a summary
    /// follows on the tick, and a full channel never blocks the caller.
    #[test]
    fn session_filter_blocks_a_flooding_client_only() {
        use scold_tunnel::Inspect;
        let section: FilterSection = toml::from_str(
            "interface = \"eth0\"\nudp_pps = 100.0\nblock_after_drops = 20\nblock_secs = 5",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let mut f = SessionFilter::new(section.filter_config().unwrap(), 5, tx);
        let a: IpAddr = "10.1.0.2".parse().unwrap();
        let b: IpAddr = "10.1.0.3".parse().unwrap();
        let flood = ipv4_udp([10, 1, 0, 2], [10, 4, 0, 2], 9, &[0; 32]);
        let ack = {
            let mut p = syn4([10, 1, 0, 3], [10, 4, 0, 2]);
            p[33] = 0x10;
            p
        };
        let t0 = Instant::now();
        let mut passed = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            if f.check(now, a, &flood) {
                passed += 1;
            }
            assert!(f.check(now, b, &ack), "B dropped at packet {i}");
        }
        assert!(passed <= 110, "A passed {passed} of 1000 at 10x its limit");
        match rx.try_recv() {
            Ok(FilterReport::Event(FilterEvent::Blocked { src, .. })) => assert_eq!(src, a),
            other => panic!("expected A's block, got {other:?}"),
        }
        // Malformed inner packets are refused.
        assert!(!f.check(t0, b, &[0x45, 0, 0]));
        f.tick(t0 + Duration::from_secs(1));
        match rx.try_recv() {
            Ok(FilterReport::Summary {
                stats, top, lost, ..
            }) => {
                assert!(stats.dropped_rate + stats.dropped_blocked >= 890);
                assert_eq!(top[0].src, a);
                assert!(top[0].blocked);
                assert_eq!(lost, 0);
            }
            other => panic!("expected a summary, got {other:?}"),
        }
        // Nobody reads: summaries fill the queue, A's expiry (after 5 s) finds it full
        // and is dropped and counted; the engine thread never waits.
        for i in 0..10 {
            f.tick(t0 + Duration::from_secs(2 + i));
        }
        assert_eq!(rx.len(), 4, "the queue stays bounded");
        assert_eq!(f.lost, 1, "the expiry event was not counted as lost");
    }

    #[test]
    fn a_source_both_filters_block_stays_in_the_kernel_until_both_release_it() {
        let a: IpAddr = "10.1.0.2".parse().unwrap();
        let blocked = FilterEvent::Blocked {
            src: a,
            prefix_len: 32,
            reason: scold_filter::FloodKind::UdpFlood,
            until: Duration::from_secs(9),
            duration: Duration::from_secs(4),
            dropped_packets: 200,
        };
        let expired = FilterEvent::Expired {
            src: a,
            prefix_len: 32,
        };
        let (mut link, mut relay) = (HashSet::new(), HashSet::new());
        assert!(track(&blocked, &mut relay, &link));
        assert!(track(&blocked, &mut link, &relay));
        assert!(
            !track(&expired, &mut relay, &link),
            "the watcher still blocks it"
        );
        assert!(track(&expired, &mut link, &relay));
        assert!(link.is_empty() && relay.is_empty());
    }

    #[test]
    fn garbage_is_not_judged() {
        for bad in [&[][..], &[0x45], &[0x00; 40], &[0xff; 3]] {
            assert!(judge_info(bad, T).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn sections_pass_through() {
        let s: FilterSection = toml::from_str(
            "interface = \"eth0\"\nudp_pps = 100.0\nblock_after_drops = 20\nblock_secs = 30\nnew_source_pps = 0.0",
        )
        .unwrap();
        let c = s.filter_config().unwrap();
        assert_eq!(c.limits.udp_pps, 100.0);
        assert_eq!(c.block_after_drops, 20);
        assert_eq!(c.block_for, Duration::from_secs(30));
        assert_eq!(c.new_source_pps, None);
        assert_eq!(s.traceback_secs, 10);
        let s: FilterSection = toml::from_str("interface = \"eth0\"\npps = -1.0").unwrap();
        assert!(s.filter_config().is_err());
        assert!(toml::from_str::<FilterSection>("interface = \"e\"\nudp = 1").is_err());
        let sd: SelfDefenceSection =
            toml::from_str("rx_pps_max = 500.0\nsustain_ms = 1000\ncpu_busy_max = 2.0").unwrap();
        let c = sd.config();
        assert_eq!(c.rx_pps_max, Some(500.0));
        assert_eq!(c.sustain, Duration::from_secs(1));
        assert_eq!(c.cpu_busy_max, 2.0);
    }
}
