//! Proxy self-defence (paper Section 4.4), sans-IO.
//!
//! A proxy under a severe attack of its own cannot serve as an indirect route:
//! its link or its CPU is saturated. [`SelfDefence`] watches the proxy's link
//! counters and CPU time; when a saturation lasts `sustain`, it reports
//! [`SelfDefenceEvent::UnderAttack`] so the daemon can ask the coordinator to
//! reset the proxy out of the ALT set. It reports `Recovered` only after every
//! measure has stayed under its threshold for `recover_after`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Cumulative counters of the proxy's link and CPU at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSample {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets the kernel or driver dropped on receive (ring full, backlog full).
    pub rx_dropped: u64,
    /// CPU time spent busy (user, system, irq, softirq, steal), any unit.
    pub cpu_busy: u64,
    /// CPU time in total, same unit as `cpu_busy`.
    pub cpu_total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelfDefenceConfig {
    /// Capacity of the proxy's link in bits per second; `None` skips the link test.
    pub link_capacity_bps: Option<f64>,
    /// Share of the capacity that counts as saturated.
    pub link_utilisation_max: f64,
    /// Received packets per second that count as saturated (small-packet floods
    /// fill the CPU long before the link); `None` skips the test.
    pub rx_pps_max: Option<f64>,
    /// Receive drops per second that count as saturated.
    pub rx_dropped_per_s_max: f64,
    /// Busy share of all CPUs that counts as saturated.
    pub cpu_busy_max: f64,
    /// How long a saturation must last before it is reported.
    pub sustain: Duration,
    /// How long every measure must stay under its threshold before recovery.
    pub recover_after: Duration,
}

impl Default for SelfDefenceConfig {
    fn default() -> Self {
        SelfDefenceConfig {
            link_capacity_bps: None,
            link_utilisation_max: 0.9,
            rx_pps_max: None,
            rx_dropped_per_s_max: 1000.0,
            cpu_busy_max: 0.95,
            sustain: Duration::from_secs(3),
            recover_after: Duration::from_secs(30),
        }
    }
}

/// Which resource is saturated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saturation {
    LinkBandwidth,
    PacketRate,
    ReceiveDrops,
    Cpu,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub saturated: Vec<Saturation>,
    pub rx_bps: f64,
    pub rx_pps: f64,
    pub rx_dropped_per_s: f64,
    /// Busy share of all CPUs, 0..=1.
    pub cpu_busy: f64,
    /// `rx_bps / link_capacity_bps` when the capacity is known.
    pub link_utilisation: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum SelfDefenceEvent {
    UnderAttack(LoadReport),
    Recovered(LoadReport),
}

#[derive(Clone, Debug)]
pub struct SelfDefence {
    cfg: SelfDefenceConfig,
    prev: Option<(Duration, LoadSample)>,
    saturated_since: Option<Duration>,
    calm_since: Option<Duration>,
    under_attack: bool,
    last: Option<LoadReport>,
}

impl SelfDefence {
    pub fn new(cfg: SelfDefenceConfig) -> Self {
        SelfDefence {
            cfg,
            prev: None,
            saturated_since: None,
            calm_since: None,
            under_attack: false,
            last: None,
        }
    }

    pub fn under_attack(&self) -> bool {
        self.under_attack
    }

    /// The load of the last interval.
    pub fn last_report(&self) -> Option<&LoadReport> {
        self.last.as_ref()
    }

    /// Feed one sample; `now` is monotonic.
    pub fn observe(&mut self, now: Duration, s: &LoadSample) -> Option<SelfDefenceEvent> {
        let Some((then, prev)) = self.prev else {
            self.prev = Some((now, *s));
            return None;
        };
        if now <= then {
            return None;
        }
        self.prev = Some((now, *s));
        let dt = (now - then).as_secs_f64();
        let (Some(pk), Some(by), Some(dr)) = (
            s.rx_packets.checked_sub(prev.rx_packets),
            s.rx_bytes.checked_sub(prev.rx_bytes),
            s.rx_dropped.checked_sub(prev.rx_dropped),
        ) else {
            // Counter reset: start over from this sample.
            return None;
        };
        let cpu_busy = match (
            s.cpu_busy.checked_sub(prev.cpu_busy),
            s.cpu_total.checked_sub(prev.cpu_total),
        ) {
            (Some(b), Some(t)) if t > 0 => (b as f64 / t as f64).min(1.0),
            _ => 0.0,
        };
        let rx_bps = by as f64 * 8.0 / dt;
        let rx_pps = pk as f64 / dt;
        let rx_dropped_per_s = dr as f64 / dt;
        let link_utilisation = self
            .cfg
            .link_capacity_bps
            .filter(|c| *c > 0.0)
            .map(|c| rx_bps / c);
        let mut saturated = Vec::new();
        if link_utilisation.is_some_and(|u| u >= self.cfg.link_utilisation_max) {
            saturated.push(Saturation::LinkBandwidth);
        }
        if self.cfg.rx_pps_max.is_some_and(|m| rx_pps >= m) {
            saturated.push(Saturation::PacketRate);
        }
        if rx_dropped_per_s >= self.cfg.rx_dropped_per_s_max {
            saturated.push(Saturation::ReceiveDrops);
        }
        if cpu_busy >= self.cfg.cpu_busy_max {
            saturated.push(Saturation::Cpu);
        }
        let report = LoadReport {
            saturated,
            rx_bps,
            rx_pps,
            rx_dropped_per_s,
            cpu_busy,
            link_utilisation,
        };
        self.last = Some(report.clone());
        let is_saturated = !report.saturated.is_empty();

        if !self.under_attack {
            if is_saturated {
                // The interval that just ended was saturated, so it counts from its start.
                let since = *self.saturated_since.get_or_insert(then);
                if now - since >= self.cfg.sustain {
                    self.under_attack = true;
                    self.calm_since = None;
                    return Some(SelfDefenceEvent::UnderAttack(report));
                }
            } else {
                self.saturated_since = None;
            }
            None
        } else {
            if is_saturated {
                self.calm_since = None;
                return None;
            }
            let since = *self.calm_since.get_or_insert(now);
            if now - since >= self.cfg.recover_after {
                self.under_attack = false;
                self.saturated_since = None;
                return Some(SelfDefenceEvent::Recovered(report));
            }
            None
        }
    }
}

/// Packets per connection its admission port accepted that the proxy may set down to
/// admission rather than to its link: a TLS 1.3 handshake, a request or two and the close
/// take about ten from the client; the rest is room for packets that arrive in the next
/// sample's interval.
pub const ADMISSION_PACKETS_PER_CONNECTION: u64 = 20;

/// Cumulative counts of the proxy's admission port: the packets and bytes that arrived
/// for it (TCP to its port on the watched link, counted by the kernel), and the
/// connections its listener accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    pub packets: u64,
    pub bytes: u64,
    pub accepted: u64,
}

/// Takes the admission port's own traffic out of the link's counters before
/// [`SelfDefence`] judges them, so a burst of client connections (a flash crowd after a
/// failover, or an attacker's one-shot connections, which the port answers with cookie
/// replies) is not taken for a flood of the link. Only as many packets as
/// [`ADMISSION_PACKETS_PER_CONNECTION`] per connection accepted in the same interval
/// are set down to the port: packets to the port that open no connection (a spoofed SYN
/// or ACK flood at it) stay link load. Receive drops and the CPU are left as they are:
/// the cookies bound what admission can cost the CPU.
#[derive(Clone, Debug, Default)]
pub struct AdmissionExcuse {
    prev: Option<PortCounters>,
    packets: u64,
    bytes: u64,
}

impl AdmissionExcuse {
    /// The link sample `s` without the admission traffic counted in `port` (both read
    /// at the same moment) since the previous call.
    pub fn apply(&mut self, port: PortCounters, s: &LoadSample) -> LoadSample {
        if let Some(p) = self.prev {
            if let (Some(dp), Some(db), Some(da)) = (
                port.packets.checked_sub(p.packets),
                port.bytes.checked_sub(p.bytes),
                port.accepted.checked_sub(p.accepted),
            ) {
                let pk = dp.min(da.saturating_mul(ADMISSION_PACKETS_PER_CONNECTION));
                // The bytes of the packets set down, in the interval's proportion.
                let by = if dp == 0 {
                    0
                } else {
                    (u128::from(db) * u128::from(pk) / u128::from(dp)) as u64
                };
                self.packets = self.packets.saturating_add(pk);
                self.bytes = self.bytes.saturating_add(by);
            }
        }
        self.prev = Some(port);
        LoadSample {
            rx_packets: s.rx_packets.saturating_sub(self.packets),
            rx_bytes: s.rx_bytes.saturating_sub(self.bytes),
            ..*s
        }
    }

    /// Packets set down to the admission port so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sim {
        now: Duration,
        s: LoadSample,
        sd: SelfDefence,
        events: Vec<(Duration, SelfDefenceEvent)>,
    }

    impl Sim {
        fn new(cfg: SelfDefenceConfig) -> Self {
            Sim {
                now: Duration::from_secs(5),
                s: LoadSample::default(),
                sd: SelfDefence::new(cfg),
                events: vec![],
            }
        }
        /// `secs` seconds at `bps` bits/s, `pps` packets/s and `cpu` busy share.
        fn run(&mut self, secs: u64, bps: u64, pps: u64, cpu: f64) {
            for _ in 0..secs * 4 {
                self.now += Duration::from_millis(250);
                self.s.rx_bytes += bps / 8 / 4;
                self.s.rx_packets += pps / 4;
                self.s.cpu_total += 100;
                self.s.cpu_busy += (cpu * 100.0) as u64;
                if let Some(e) = self.sd.observe(self.now, &self.s) {
                    self.events.push((self.now, e));
                }
            }
        }
    }

    fn cfg() -> SelfDefenceConfig {
        SelfDefenceConfig {
            link_capacity_bps: Some(1e9),
            rx_pps_max: Some(500_000.0),
            recover_after: Duration::from_secs(10),
            ..SelfDefenceConfig::default()
        }
    }

    #[test]
    fn sustained_link_saturation_is_reported_then_recovery() {
        let mut sim = Sim::new(cfg());
        sim.run(30, 300_000_000, 50_000, 0.3);
        assert!(sim.events.is_empty());
        let start = sim.now;
        sim.run(10, 980_000_000, 200_000, 0.5);
        assert_eq!(sim.events.len(), 1);
        let (t, SelfDefenceEvent::UnderAttack(r)) = &sim.events[0] else {
            panic!("{:?}", sim.events)
        };
        assert!(*t - start >= Duration::from_secs(3));
        assert!(*t - start <= Duration::from_secs(4));
        assert_eq!(r.saturated, vec![Saturation::LinkBandwidth]);
        assert!(sim.sd.under_attack());
        let stop = sim.now;
        sim.run(20, 300_000_000, 50_000, 0.3);
        assert_eq!(sim.events.len(), 2);
        assert!(matches!(sim.events[1].1, SelfDefenceEvent::Recovered(_)));
        assert!(sim.events[1].0 - stop >= Duration::from_secs(10));
    }

    #[test]
    fn short_spikes_and_unknown_capacity_do_not_trigger() {
        let mut sim = Sim::new(cfg());
        for _ in 0..10 {
            sim.run(2, 990_000_000, 100_000, 0.99);
            sim.run(3, 100_000_000, 10_000, 0.1);
        }
        assert!(sim.events.is_empty(), "{:?}", sim.events);
        let mut sim = Sim::new(SelfDefenceConfig::default());
        sim.run(30, 50_000_000_000, 100_000, 0.2);
        assert!(sim.events.is_empty());
    }

    #[test]
    fn cpu_and_packet_rate_saturation() {
        let mut sim = Sim::new(cfg());
        sim.run(5, 100_000_000, 600_000, 0.99);
        let (_, SelfDefenceEvent::UnderAttack(r)) = &sim.events[0] else {
            panic!()
        };
        assert_eq!(r.saturated, vec![Saturation::PacketRate, Saturation::Cpu]);
        // Still saturated: no recovery, no second report.
        sim.run(60, 100_000_000, 10_000, 0.99);
        assert_eq!(sim.events.len(), 1);
    }

    #[test]
    fn counter_reset_is_not_an_attack() {
        let mut sd = SelfDefence::new(cfg());
        let big = LoadSample {
            rx_bytes: u64::MAX / 2,
            rx_packets: u64::MAX / 2,
            ..Default::default()
        };
        sd.observe(Duration::from_secs(1), &big);
        assert!(sd
            .observe(Duration::from_secs(2), &LoadSample::default())
            .is_none());
        assert!(sd
            .observe(Duration::from_secs(3), &LoadSample::default())
            .is_none());
        assert!(!sd.under_attack());
    }

    #[test]
    fn admission_connections_are_not_a_link_flood_but_packets_that_open_none_are() {
        let cfg = SelfDefenceConfig {
            rx_pps_max: Some(1500.0),
            cpu_busy_max: 2.0,
            sustain: Duration::from_secs(1),
            ..SelfDefenceConfig::default()
        };
        // 4 s of 2000 connections/s, 6 packets each, to the admission port, over 100
        // packets/s of other traffic.
        let mut sd = SelfDefence::new(cfg.clone());
        let mut ex = AdmissionExcuse::default();
        let (mut link, mut port) = (LoadSample::default(), PortCounters::default());
        let mut now = Duration::from_secs(10);
        for _ in 0..20 {
            now += Duration::from_millis(200);
            link.rx_packets += 20 + 400 * 6;
            link.rx_bytes += 20 * 100 + 400 * 6 * 300;
            port.packets += 400 * 6;
            port.bytes += 400 * 6 * 300;
            port.accepted += 400;
            let adjusted = ex.apply(port, &link);
            assert!(
                sd.observe(now, &adjusted).is_none(),
                "{:?}",
                sd.last_report()
            );
            assert!(sd.last_report().is_none_or(|r| r.rx_pps < 200.0));
        }
        assert_eq!(ex.packets(), 19 * 400 * 6);
        // A SYN flood at the same port (no connection accepted) is the link's load.
        let mut sd = SelfDefence::new(cfg);
        let mut ex = AdmissionExcuse::default();
        let mut attacked = false;
        for _ in 0..20 {
            now += Duration::from_millis(200);
            link.rx_packets += 20 + 2400;
            port.packets += 2400;
            port.accepted += 1;
            attacked |= sd.observe(now, &ex.apply(port, &link)).is_some();
        }
        assert!(attacked, "{:?}", sd.last_report());
        assert!(ex.packets() <= 19 * ADMISSION_PACKETS_PER_CONNECTION);
    }
}
