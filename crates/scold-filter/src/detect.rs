//! Attack detection on a link, sans-IO.
//!
//! The caller feeds cumulative counters ([`LinkSample`]) with a monotonic time
//! stamp; the [`Detector`] turns consecutive samples into rates, compares them
//! with a baseline it learns by EWMA, and reports an [`DetectorEvent::Alarm`]
//! once an anomaly has been sustained, and an [`DetectorEvent::AllClear`] once
//! every rate has stayed back near the baseline for the hold-down time.
//!
//! Design choices:
//! - The baseline learns only from calm samples: a sample above the alarm
//!   threshold is never learned, so an attack (or a burst) cannot teach the
//!   detector that floods are normal. A slow ramp stays under the threshold and
//!   is followed by the EWMA, so it never alarms.
//! - "Sustained" is a leaky score: anomalous time adds up, calm time drains it at
//!   half speed. A burst shorter than `alarm_after` cannot alarm, while an attack
//!   with brief dips (sampling jitter, pulsing) still does.
//! - All-clear uses a lower threshold than the alarm (hysteresis) and restarts its
//!   hold-down on any sample above it, so a pulsing attack keeps the alarm up
//!   instead of flapping.
//! - Absolute floors keep a near-idle link from alarming on a harmless jump
//!   (10 pps to 50 pps is 5x but no attack).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Cumulative counters of one link, as read at one instant. Every counter only
/// grows; a decrease is taken as a counter reset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSample {
    /// Packets received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Received packets per transport class (estimates when sampled).
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other: u64,
    /// TCP segments with SYN set and ACK clear.
    pub tcp_syn: u64,
    /// Sources seen for the first time (within the sampler's memory).
    pub new_sources: u64,
    /// Heaviest sources over the sampler's recent window, largest first.
    pub top_sources: Vec<SourceCount>,
}

/// One source and its (estimated) packet count over a recent window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCount {
    pub addr: IpAddr,
    pub packets: u64,
}

/// Rates over one sample interval. Bytes are reported as bits per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub pps: f64,
    pub bps: f64,
    pub tcp_pps: f64,
    pub udp_pps: f64,
    pub icmp_pps: f64,
    pub other_pps: f64,
    pub syn_pps: f64,
    pub new_sources_per_s: f64,
}

const N: usize = 8;
const PPS: usize = 0;
const BPS: usize = 1;
const TCP: usize = 2;
const UDP: usize = 3;
const ICMP: usize = 4;
const OTHER: usize = 5;
const SYN: usize = 6;
const NEWSRC: usize = 7;
/// Pseudo-metric bit for "SYN share too high".
const SYN_SHARE_BIT: u16 = 1 << N;

impl Rates {
    fn to_array(self) -> [f64; N] {
        [
            self.pps,
            self.bps,
            self.tcp_pps,
            self.udp_pps,
            self.icmp_pps,
            self.other_pps,
            self.syn_pps,
            self.new_sources_per_s,
        ]
    }

    fn from_array(a: [f64; N]) -> Self {
        Rates {
            pps: a[PPS],
            bps: a[BPS],
            tcp_pps: a[TCP],
            udp_pps: a[UDP],
            icmp_pps: a[ICMP],
            other_pps: a[OTHER],
            syn_pps: a[SYN],
            new_sources_per_s: a[NEWSRC],
        }
    }

    /// Share of TCP segments that are bare SYNs (0 when there is no TCP).
    pub fn syn_share(&self) -> f64 {
        if self.tcp_pps > 0.0 {
            (self.syn_pps / self.tcp_pps).min(1.0)
        } else {
            0.0
        }
    }

    /// Share of each transport class in the packet rate.
    pub fn protocol_mix(&self) -> ProtocolMix {
        let total = self.tcp_pps + self.udp_pps + self.icmp_pps + self.other_pps;
        if total <= 0.0 {
            return ProtocolMix::default();
        }
        ProtocolMix {
            tcp: self.tcp_pps / total,
            udp: self.udp_pps / total,
            icmp: self.icmp_pps / total,
            other: self.other_pps / total,
        }
    }

    fn max(self, other: Rates) -> Rates {
        let (a, b) = (self.to_array(), other.to_array());
        Rates::from_array(std::array::from_fn(|i| a[i].max(b[i])))
    }
}

/// Fractions of the packet rate per transport class; they add up to 1 (or are all 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolMix {
    pub tcp: f64,
    pub udp: f64,
    pub icmp: f64,
    pub other: f64,
}

/// What kind of attack the anomalous rates point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    UdpFlood,
    IcmpFlood,
    SynFlood,
    /// TCP other than bare SYNs (ACK, RST floods, ...).
    TcpFlood,
    OtherProtocolFlood,
    /// Packet or byte rate without one dominant class.
    Volumetric,
    /// Many never-seen sources: typical of spoofed floods.
    ManyNewSources,
}

/// What the target tells the coordinator when it raises the alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackSummary {
    pub kinds: Vec<AttackKind>,
    /// Rates of the interval that raised the alarm.
    pub rates: Rates,
    /// The learned baseline the rates were compared with.
    pub baseline: Rates,
    pub protocol_mix: ProtocolMix,
    pub syn_share: f64,
    pub top_sources: Vec<SourceCount>,
    /// Seconds from the first anomalous sample to the alarm.
    pub anomalous_for_secs: f64,
}

/// What the target tells the coordinator when the attack is over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllClearSummary {
    /// Seconds from the alarm to the all-clear.
    pub alarm_secs: f64,
    /// Seconds the rates have been calm (at least the hold-down).
    pub calm_secs: f64,
    /// Highest rates seen while the alarm was up (each field on its own).
    pub peak: Rates,
    pub baseline: Rates,
    /// Rates of the last interval.
    pub rates: Rates,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum DetectorEvent {
    Alarm(AttackSummary),
    AllClear(AllClearSummary),
}

/// Tuning of the detector. The defaults suit a site's main link sampled every
/// 100 ms to 1 s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// How long an anomaly must last before the alarm.
    pub alarm_after: Duration,
    /// How long every rate must stay calm before the all-clear.
    pub hold_down: Duration,
    /// Time constant of the baseline EWMA.
    pub baseline_time_constant: Duration,
    /// Learning time after start: only the absolute ceilings can alarm before it ends.
    pub warmup: Duration,
    /// A rate above `baseline * alarm_factor` is anomalous...
    pub alarm_factor: f64,
    /// ...and so is one above `baseline + alarm_sigmas * stddev`, whichever is higher.
    pub alarm_sigmas: f64,
    /// A rate is calm again under `baseline * clear_factor` (and `+ clear_sigmas * stddev`).
    pub clear_factor: f64,
    pub clear_sigmas: f64,
    /// Absolute rates under which nothing is anomalous; half of these is always calm.
    pub floors: Rates,
    /// A bare-SYN share of TCP above this (with `syn_pps` above its floor) is anomalous.
    pub syn_share_alarm: f64,
    /// Rates that are anomalous whatever the baseline (e.g. 90 % of the link's capacity).
    pub ceilings: Option<Rates>,
    /// How many top sources go into the alarm.
    pub top_sources: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            alarm_after: Duration::from_secs(1),
            hold_down: Duration::from_secs(30),
            baseline_time_constant: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            alarm_factor: 4.0,
            alarm_sigmas: 6.0,
            clear_factor: 1.5,
            clear_sigmas: 3.0,
            floors: Rates {
                pps: 5_000.0,
                bps: 20_000_000.0,
                tcp_pps: 3_000.0,
                udp_pps: 2_000.0,
                icmp_pps: 500.0,
                other_pps: 1_000.0,
                syn_pps: 500.0,
                new_sources_per_s: 500.0,
            },
            syn_share_alarm: 0.6,
            ceilings: None,
            top_sources: 10,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    mean: f64,
    var: f64,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// No rate yet, or within the warm-up.
    Normal,
    Alarm {
        since: Duration,
        calm_since: Option<Duration>,
        peak: Rates,
    },
}

/// Where the detector stands, for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorState {
    Learning,
    Normal,
    Alarm,
}

/// The sans-IO attack detector of one link.
#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    prev: Option<(Duration, LinkSample)>,
    started: Option<Duration>,
    baseline: Option<[Ewma; N]>,
    /// Leaky sustained-anomaly score, in seconds.
    score: f64,
    anomaly_started: Option<Duration>,
    /// Metrics that were anomalous during the current episode (bit per metric).
    episode_metrics: u16,
    state: State,
    last_rates: Rates,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Detector {
            cfg,
            prev: None,
            started: None,
            baseline: None,
            score: 0.0,
            anomaly_started: None,
            episode_metrics: 0,
            state: State::Normal,
            last_rates: Rates::default(),
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Takes new thresholds (a config reload); the learned baseline, the state (an
    /// alarm in force stays in force) and the anomaly score are kept.
    pub fn reconfigure(&mut self, cfg: DetectorConfig) {
        self.cfg = cfg;
    }

    /// The learned baseline (zero before the first interval).
    pub fn baseline(&self) -> Rates {
        match &self.baseline {
            Some(b) => Rates::from_array(std::array::from_fn(|i| b[i].mean)),
            None => Rates::default(),
        }
    }

    /// Rates of the last interval.
    pub fn last_rates(&self) -> Rates {
        self.last_rates
    }

    pub fn state(&self, now: Duration) -> DetectorState {
        match self.state {
            State::Alarm { .. } => DetectorState::Alarm,
            State::Normal if self.in_warmup(now) => DetectorState::Learning,
            State::Normal => DetectorState::Normal,
        }
    }

    fn in_warmup(&self, now: Duration) -> bool {
        match self.started {
            Some(s) => now.saturating_sub(s) < self.cfg.warmup,
            None => true,
        }
    }

    /// Feed one sample. `now` is monotonic time (any origin, never going back).
    pub fn observe(&mut self, now: Duration, sample: &LinkSample) -> Option<DetectorEvent> {
        let Some((then, prev)) = self.prev.take() else {
            self.prev = Some((now, sample.clone()));
            self.started = Some(now);
            return None;
        };
        if now <= then {
            // Out-of-order or duplicate time stamp: keep the older reference.
            self.prev = Some((then, prev));
            return None;
        }
        let dt = (now - then).as_secs_f64();
        let rates = match rates_between(&prev, sample, dt) {
            Some(r) => r,
            None => {
                // A counter went backwards (interface re-created, counters reset):
                // restart from this sample rather than report a huge rate.
                self.prev = Some((now, sample.clone()));
                return None;
            }
        };
        self.prev = Some((now, sample.clone()));
        self.last_rates = rates;
        self.step(now, dt, rates, sample)
    }

    fn thresholds(&self) -> Option<([f64; N], [f64; N])> {
        let b = self.baseline.as_ref()?;
        let floors = self.cfg.floors.to_array();
        let alarm = std::array::from_fn(|i| {
            let sd = b[i].var.max(0.0).sqrt();
            (b[i].mean * self.cfg.alarm_factor)
                .max(b[i].mean + self.cfg.alarm_sigmas * sd)
                .max(floors[i])
        });
        let clear = std::array::from_fn(|i| {
            let sd = b[i].var.max(0.0).sqrt();
            (b[i].mean * self.cfg.clear_factor)
                .max(b[i].mean + self.cfg.clear_sigmas * sd)
                .max(floors[i] * 0.5)
        });
        Some((alarm, clear))
    }

    /// Bit set of metrics above the alarm threshold (bit `N` = SYN share).
    fn anomalous_metrics(&self, now: Duration, r: &Rates) -> u16 {
        let a = r.to_array();
        let mut bits = 0u16;
        if let Some(ceil) = &self.cfg.ceilings {
            let c = ceil.to_array();
            for i in 0..N {
                if c[i] > 0.0 && a[i] > c[i] {
                    bits |= 1 << i;
                }
            }
        }
        if self.in_warmup(now) {
            return bits;
        }
        if let Some((alarm, _)) = self.thresholds() {
            for i in 0..N {
                if a[i] > alarm[i] {
                    bits |= 1 << i;
                }
            }
        }
        if r.syn_pps > self.cfg.floors.syn_pps && r.syn_share() > self.cfg.syn_share_alarm {
            bits |= SYN_SHARE_BIT;
        }
        bits
    }

    fn is_calm(&self, r: &Rates) -> bool {
        let Some((_, clear)) = self.thresholds() else {
            return true;
        };
        let a = r.to_array();
        let rates_calm = (0..N).all(|i| a[i] <= clear[i]);
        let syn_calm = r.syn_pps <= self.cfg.floors.syn_pps * 0.5
            || r.syn_share() <= self.cfg.syn_share_alarm * 0.75;
        let under_ceilings = match &self.cfg.ceilings {
            Some(c) => {
                let c = c.to_array();
                (0..N).all(|i| c[i] <= 0.0 || a[i] <= c[i])
            }
            None => true,
        };
        rates_calm && syn_calm && under_ceilings
    }

    fn learn(&mut self, dt: f64, r: &Rates) {
        let a = r.to_array();
        match &mut self.baseline {
            None => {
                self.baseline = Some(std::array::from_fn(|i| Ewma {
                    mean: a[i],
                    var: 0.0,
                }));
            }
            Some(b) => {
                let tau = self.cfg.baseline_time_constant.as_secs_f64().max(1e-3);
                let alpha = 1.0 - (-dt / tau).exp();
                for i in 0..N {
                    let diff = a[i] - b[i].mean;
                    b[i].mean += alpha * diff;
                    b[i].var = (1.0 - alpha) * (b[i].var + alpha * diff * diff);
                }
            }
        }
    }

    fn step(
        &mut self,
        now: Duration,
        dt: f64,
        rates: Rates,
        sample: &LinkSample,
    ) -> Option<DetectorEvent> {
        let bits = self.anomalous_metrics(now, &rates);
        match self.state.clone() {
            State::Normal => {
                if bits != 0 {
                    if self.score == 0.0 {
                        self.anomaly_started = Some(now - Duration::from_secs_f64(dt));
                        self.episode_metrics = 0;
                    }
                    self.score += dt;
                    self.episode_metrics |= bits;
                } else {
                    self.score = (self.score - dt * 0.5).max(0.0);
                    if self.score == 0.0 {
                        self.anomaly_started = None;
                        self.episode_metrics = 0;
                    }
                    // Learn only from samples that are not anomalous, so bursts and
                    // attacks never raise the baseline.
                    self.learn(dt, &rates);
                }
                if self.score >= self.cfg.alarm_after.as_secs_f64() {
                    let summary = self.summary(now, &rates, sample);
                    self.state = State::Alarm {
                        since: now,
                        calm_since: None,
                        peak: rates,
                    };
                    self.score = 0.0;
                    return Some(DetectorEvent::Alarm(summary));
                }
                None
            }
            State::Alarm {
                since,
                calm_since,
                peak,
            } => {
                let peak = peak.max(rates);
                let calm_since = if self.is_calm(&rates) {
                    // The interval that just ended was calm: calm time counts from
                    // its end, so the hold-down is never shortened by an interval
                    // that still held some of the attack.
                    Some(calm_since.unwrap_or(now))
                } else {
                    None
                };
                if let Some(c) = calm_since {
                    if now - c >= self.cfg.hold_down {
                        self.state = State::Normal;
                        self.anomaly_started = None;
                        self.episode_metrics = 0;
                        return Some(DetectorEvent::AllClear(AllClearSummary {
                            alarm_secs: (now - since).as_secs_f64(),
                            calm_secs: (now - c).as_secs_f64(),
                            peak,
                            baseline: self.baseline(),
                            rates,
                        }));
                    }
                }
                self.state = State::Alarm {
                    since,
                    calm_since,
                    peak,
                };
                None
            }
        }
    }

    fn summary(&self, now: Duration, rates: &Rates, sample: &LinkSample) -> AttackSummary {
        let bits = self.episode_metrics;
        let has = |i: usize| bits & (1 << i) != 0;
        let mut kinds = Vec::new();
        if has(UDP) {
            kinds.push(AttackKind::UdpFlood);
        }
        if has(ICMP) {
            kinds.push(AttackKind::IcmpFlood);
        }
        if has(SYN) || bits & SYN_SHARE_BIT != 0 {
            kinds.push(AttackKind::SynFlood);
        } else if has(TCP) {
            kinds.push(AttackKind::TcpFlood);
        }
        if has(OTHER) {
            kinds.push(AttackKind::OtherProtocolFlood);
        }
        if kinds.is_empty() && (has(PPS) || has(BPS)) {
            kinds.push(AttackKind::Volumetric);
        }
        if has(NEWSRC) {
            kinds.push(AttackKind::ManyNewSources);
        }
        let mut top = sample.top_sources.clone();
        top.truncate(self.cfg.top_sources);
        AttackSummary {
            kinds,
            rates: *rates,
            baseline: self.baseline(),
            protocol_mix: rates.protocol_mix(),
            syn_share: rates.syn_share(),
            top_sources: top,
            anomalous_for_secs: self
                .anomaly_started
                .map(|s| now.saturating_sub(s).as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    /// A summary of the current interval, e.g. to refresh the coordinator while
    /// the alarm is up. `None` outside an alarm.
    pub fn current_summary(&self) -> Option<AttackSummary> {
        let State::Alarm { since, .. } = &self.state else {
            return None;
        };
        let (now, sample) = self.prev.as_ref()?;
        let mut s = self.summary(*now, &self.last_rates, sample);
        s.anomalous_for_secs = now.saturating_sub(*since).as_secs_f64();
        if s.kinds.is_empty() {
            s.kinds = kinds_of(&self.last_rates, &self.baseline());
        }
        Some(s)
    }
}

/// Kinds by which class rose most over its baseline (for refreshes, where the
/// episode bits are gone).
fn kinds_of(r: &Rates, b: &Rates) -> Vec<AttackKind> {
    let excess = |x: f64, y: f64| x - y;
    let cands = [
        (excess(r.udp_pps, b.udp_pps), AttackKind::UdpFlood),
        (excess(r.icmp_pps, b.icmp_pps), AttackKind::IcmpFlood),
        (excess(r.syn_pps, b.syn_pps), AttackKind::SynFlood),
        (
            excess(r.tcp_pps - r.syn_pps, b.tcp_pps - b.syn_pps),
            AttackKind::TcpFlood,
        ),
        (
            excess(r.other_pps, b.other_pps),
            AttackKind::OtherProtocolFlood,
        ),
    ];
    cands
        .iter()
        .filter(|(e, _)| *e > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| vec![*k])
        .unwrap_or_else(|| vec![AttackKind::Volumetric])
}

fn rates_between(a: &LinkSample, b: &LinkSample, dt: f64) -> Option<Rates> {
    let d = |x: u64, y: u64| y.checked_sub(x).map(|v| v as f64 / dt);
    Some(Rates {
        pps: d(a.packets, b.packets)?,
        bps: d(a.bytes, b.bytes)? * 8.0,
        tcp_pps: d(a.tcp, b.tcp)?,
        udp_pps: d(a.udp, b.udp)?,
        icmp_pps: d(a.icmp, b.icmp)?,
        other_pps: d(a.other, b.other)?,
        syn_pps: d(a.tcp_syn, b.tcp_syn)?,
        new_sources_per_s: d(a.new_sources, b.new_sources)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// Per-second traffic profile fed into a synthetic link.
    #[derive(Clone, Copy, Default)]
    struct Traffic {
        tcp: f64,
        udp: f64,
        icmp: f64,
        syn: f64,
        pkt_size: f64,
        new_src: f64,
    }

    fn normal() -> Traffic {
        Traffic {
            tcp: 1400.0,
            udp: 500.0,
            icmp: 20.0,
            syn: 30.0,
            pkt_size: 800.0,
            new_src: 5.0,
        }
    }

    /// A synthetic link: accumulates counters tick by tick with deterministic
    /// +-20 % noise.
    struct Link {
        now: Duration,
        s: LinkSample,
        rng: u64,
        det: Detector,
        events: Vec<(Duration, DetectorEvent)>,
    }

    impl Link {
        fn new(cfg: DetectorConfig) -> Self {
            Link {
                now: Duration::from_secs(1000),
                s: LinkSample::default(),
                rng: 0x9e37_79b9_7f4a_7c15,
                det: Detector::new(cfg),
                events: Vec::new(),
            }
        }

        fn noise(&mut self) -> f64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            0.8 + 0.4 * ((self.rng % 10_000) as f64 / 10_000.0)
        }

        fn run(&mut self, secs: f64, f: impl Fn(f64) -> Traffic) {
            let ticks = (secs / TICK.as_secs_f64()).round() as u64;
            let t0 = self.now;
            for _ in 0..ticks {
                let t = (self.now - t0).as_secs_f64();
                let tr = f(t);
                let dt = TICK.as_secs_f64();
                let n = self.noise();
                let tcp = (tr.tcp * dt * n) as u64;
                let udp = (tr.udp * dt * n) as u64;
                let icmp = (tr.icmp * dt * n) as u64;
                let syn = ((tr.syn * dt * n) as u64).min(tcp);
                self.s.tcp += tcp;
                self.s.udp += udp;
                self.s.icmp += icmp;
                self.s.tcp_syn += syn;
                self.s.packets += tcp + udp + icmp;
                self.s.bytes += ((tcp + udp + icmp) as f64 * tr.pkt_size) as u64;
                self.s.new_sources += (tr.new_src * dt * n) as u64;
                self.now += TICK;
                if let Some(e) = self.det.observe(self.now, &self.s) {
                    self.events.push((self.now, e));
                }
            }
        }

        fn alarms(&self) -> Vec<(Duration, &AttackSummary)> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    DetectorEvent::Alarm(s) => Some((*t, s)),
                    _ => None,
                })
                .collect()
        }

        fn all_clears(&self) -> Vec<Duration> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    DetectorEvent::AllClear(_) => Some(*t),
                    _ => None,
                })
                .collect()
        }
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            hold_down: Duration::from_secs(10),
            ..DetectorConfig::default()
        }
    }

    fn with(f: impl Fn(&mut Traffic)) -> impl Fn(f64) -> Traffic {
        move |_| {
            let mut t = normal();
            f(&mut t);
            t
        }
    }

    /// Runs a flood and checks alarm timing, kind and the all-clear timing.
    fn flood_case(flood: impl Fn(&mut Traffic), kind: AttackKind) {
        let c = cfg();
        let mut link = Link::new(c.clone());
        link.run(120.0, |_| normal());
        assert!(link.events.is_empty(), "no alarm on normal traffic");
        let start = link.now;
        link.run(5.0, with(flood));
        let alarms = link.alarms();
        assert_eq!(alarms.len(), 1, "one alarm during the flood");
        let (t, summary) = alarms[0];
        let delay = t - start;
        assert!(delay >= c.alarm_after, "not before the window: {delay:?}");
        assert!(
            delay <= c.alarm_after + TICK,
            "within the window: {delay:?}"
        );
        assert!(summary.kinds.contains(&kind), "{:?}", summary.kinds);
        let stop = link.now;
        link.run(30.0, |_| normal());
        let clears = link.all_clears();
        assert_eq!(clears.len(), 1);
        let after = clears[0] - stop;
        assert!(
            after >= c.hold_down,
            "all-clear only after hold-down: {after:?}"
        );
        assert!(after <= c.hold_down + 2 * TICK, "{after:?}");
    }

    #[test]
    fn udp_flood_alarms_within_window_and_clears_after_hold_down() {
        flood_case(|t| t.udp = 200_000.0, AttackKind::UdpFlood);
    }

    #[test]
    fn icmp_flood_alarms() {
        flood_case(
            |t| {
                t.icmp = 30_000.0;
                t.pkt_size = 100.0;
            },
            AttackKind::IcmpFlood,
        );
    }

    #[test]
    fn syn_flood_alarms() {
        flood_case(
            |t| {
                t.tcp += 50_000.0;
                t.syn += 50_000.0;
            },
            AttackKind::SynFlood,
        );
    }

    #[test]
    fn spoofed_sources_are_reported() {
        flood_case(
            |t| {
                t.udp = 100_000.0;
                t.new_src = 50_000.0;
            },
            AttackKind::ManyNewSources,
        );
    }

    #[test]
    fn short_bursts_do_not_alarm() {
        let mut link = Link::new(cfg());
        link.run(60.0, |_| normal());
        for _ in 0..20 {
            // 0.6 s at 100x, then 4.4 s of normal traffic.
            link.run(0.6, with(|t| t.udp = 50_000.0));
            link.run(4.4, |_| normal());
        }
        // One burst just under the window.
        link.run(0.9, with(|t| t.udp = 500_000.0));
        link.run(10.0, |_| normal());
        assert!(link.events.is_empty(), "{:?}", link.events);
        // The bursts were not learned: the baseline is still the normal rate.
        assert!(
            link.det.baseline().udp_pps < 1_000.0,
            "{:?}",
            link.det.baseline()
        );
    }

    #[test]
    fn slow_ramp_does_not_alarm() {
        let mut link = Link::new(cfg());
        link.run(60.0, |_| normal());
        // Ten-fold growth over ten minutes: a flash crowd building up, not a flood.
        link.run(600.0, |t| {
            let k = 1.0 + 9.0 * t / 600.0;
            let n = normal();
            Traffic {
                tcp: n.tcp * k,
                udp: n.udp * k,
                icmp: n.icmp * k,
                syn: n.syn * k,
                new_src: n.new_src * k,
                ..n
            }
        });
        assert!(link.events.is_empty(), "{:?}", link.events);
        assert!(link.det.baseline().tcp_pps > 10_000.0);
    }

    #[test]
    fn pulsing_attack_keeps_one_alarm_and_clears_after_last_pulse() {
        let c = cfg();
        let mut link = Link::new(c.clone());
        link.run(60.0, |_| normal());
        for _ in 0..6 {
            link.run(4.0, with(|t| t.udp = 100_000.0));
            link.run(4.0, |_| normal());
        }
        let last_stop = link.now - Duration::from_secs(4);
        link.run(20.0, |_| normal());
        assert_eq!(link.alarms().len(), 1, "{:?}", link.events);
        let clears = link.all_clears();
        assert_eq!(clears.len(), 1);
        assert!(clears[0] - last_stop >= c.hold_down);
    }

    #[test]
    fn flapping_near_threshold_does_not_alarm() {
        // Anomalous every other tick: half the time cannot add up to a sustained anomaly.
        let mut link = Link::new(cfg());
        link.run(60.0, |_| normal());
        for _ in 0..100 {
            link.run(0.1, with(|t| t.udp = 20_000.0));
            link.run(0.2, |_| normal());
        }
        assert!(link.events.is_empty(), "{:?}", link.events);
    }

    #[test]
    fn alarm_after_is_configurable() {
        let c = DetectorConfig {
            alarm_after: Duration::from_secs(3),
            ..cfg()
        };
        let mut link = Link::new(c);
        link.run(60.0, |_| normal());
        let start = link.now;
        link.run(2.5, with(|t| t.udp = 100_000.0));
        assert!(link.events.is_empty());
        link.run(1.0, with(|t| t.udp = 100_000.0));
        let a = link.alarms();
        assert_eq!(a.len(), 1);
        assert!(a[0].0 - start >= Duration::from_secs(3));
    }

    #[test]
    fn no_relative_alarm_during_warmup_but_ceiling_works() {
        let mut link = Link::new(cfg());
        link.run(3.0, with(|t| t.udp = 100_000.0));
        assert!(link.events.is_empty(), "baseline still learning");

        let c = DetectorConfig {
            ceilings: Some(Rates {
                pps: 50_000.0,
                ..Rates::default()
            }),
            ..cfg()
        };
        let mut link = Link::new(c);
        link.run(3.0, with(|t| t.udp = 100_000.0));
        assert_eq!(link.alarms().len(), 1, "ceiling alarms even while learning");
        assert!(link.alarms()[0].1.kinds.contains(&AttackKind::Volumetric));
    }

    #[test]
    fn counter_reset_and_time_going_back_are_ignored() {
        let mut d = Detector::new(cfg());
        let mut s = LinkSample {
            packets: 1_000_000,
            bytes: 1_000_000_000,
            udp: 1_000_000,
            ..LinkSample::default()
        };
        assert!(d.observe(Duration::from_secs(1), &s).is_none());
        s.packets = 10;
        s.udp = 10;
        s.bytes = 10;
        assert!(d.observe(Duration::from_secs(2), &s).is_none());
        assert_eq!(d.last_rates(), Rates::default());
        s.packets += 100;
        s.udp += 100;
        s.bytes += 1000;
        assert!(d.observe(Duration::from_secs(2), &s).is_none());
        assert!(d.observe(Duration::from_secs(1), &s).is_none());
        assert!(d.observe(Duration::from_secs(3), &s).is_none());
        assert_eq!(d.last_rates().pps, 100.0);
        assert_eq!(d.last_rates().bps, 8000.0);
    }

    #[test]
    fn summary_carries_top_sources_and_mix() {
        let mut link = Link::new(cfg());
        link.run(60.0, |_| normal());
        link.s.top_sources = vec![
            SourceCount {
                addr: "192.0.2.7".parse().unwrap(),
                packets: 900,
            },
            SourceCount {
                addr: "2001:db8::1".parse().unwrap(),
                packets: 100,
            },
        ];
        link.run(2.0, with(|t| t.udp = 100_000.0));
        let a = link.alarms();
        assert_eq!(a.len(), 1);
        let s = a[0].1;
        assert_eq!(
            s.top_sources[0].addr,
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert!(s.protocol_mix.udp > 0.9);
        assert!(s.anomalous_for_secs >= 1.0);
        let json = serde_json::to_string(&DetectorEvent::Alarm(s.clone())).unwrap();
        assert!(json.contains("\"event\":\"alarm\""), "{json}");
        assert!(json.contains("udp_flood"), "{json}");
        let back: DetectorEvent = serde_json::from_str(&json).unwrap();
        let DetectorEvent::Alarm(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(back.kinds, s.kinds);
        assert_eq!(back.top_sources, s.top_sources);
        assert!(link.det.current_summary().is_some());
    }

    #[test]
    fn quiet_link_jump_under_floor_does_not_alarm() {
        let mut link = Link::new(cfg());
        link.run(60.0, |_| Traffic {
            tcp: 10.0,
            pkt_size: 100.0,
            ..Traffic::default()
        });
        link.run(10.0, |_| Traffic {
            tcp: 500.0,
            udp: 500.0,
            pkt_size: 100.0,
            ..Traffic::default()
        });
        assert!(link.events.is_empty());
    }
}
