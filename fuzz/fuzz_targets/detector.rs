//! The target's link anomaly detector and the proxy's self-defence monitor, fed any
//! counter samples at any times (counters that reset, time stamps out of order).
//!
//! Properties:
//! - nothing panics;
//! - alarms and all-clears alternate, starting with an alarm, and `state()` agrees;
//! - every rate and summary is finite and not negative, so the alarm's JSON (what the
//!   coordinator receives) carries numbers, not nulls;
//! - under-attack and recovered reports of the self-defence monitor alternate too.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scold_filter::detect::DetectorState;
use scold_filter::{
    Detector, DetectorConfig, DetectorEvent, LinkSample, LoadSample, Rates, SelfDefence,
    SelfDefenceConfig, SelfDefenceEvent, SourceCount,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[derive(Debug, Arbitrary)]
struct Sample {
    dt_ms: i32,
    packets: u64,
    bytes: u64,
    tcp: u64,
    udp: u64,
    icmp: u64,
    other: u64,
    tcp_syn: u64,
    new_sources: u64,
    top: Vec<(u8, u64)>,
    rx_dropped: u64,
    cpu_busy: u64,
    cpu_total: u64,
}

#[derive(Debug, Arbitrary)]
struct Input {
    small: bool,
    ceilings: bool,
    link_capacity: Option<u32>,
    rx_pps_max: Option<u32>,
    /// Samples as increments on the previous one (realistic) or as raw values.
    increments: bool,
    samples: Vec<Sample>,
}

fn check_rates(r: &Rates, what: &str) {
    for v in [
        r.pps,
        r.bps,
        r.tcp_pps,
        r.udp_pps,
        r.icmp_pps,
        r.other_pps,
        r.syn_pps,
        r.new_sources_per_s,
    ] {
        assert!(v.is_finite() && v >= 0.0, "{what}: {r:?}");
    }
}

fn json_has_no_null(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Array(a) => a.iter().all(json_has_no_null),
        serde_json::Value::Object(o) => o.values().all(json_has_no_null),
        _ => true,
    }
}

fuzz_target!(|input: Input| {
    let mut dcfg = DetectorConfig::default();
    if input.small {
        dcfg.alarm_after = Duration::from_millis(10);
        dcfg.hold_down = Duration::from_millis(50);
        dcfg.warmup = Duration::from_millis(20);
        dcfg.baseline_time_constant = Duration::from_millis(100);
        dcfg.floors = Rates::default();
    }
    if input.ceilings {
        dcfg.ceilings = Some(Rates {
            pps: 1000.0,
            bps: 1e6,
            ..Rates::default()
        });
    }
    let mut det = Detector::new(dcfg);
    let mut sd = SelfDefence::new(SelfDefenceConfig {
        link_capacity_bps: input.link_capacity.map(f64::from),
        rx_pps_max: input.rx_pps_max.map(f64::from),
        sustain: Duration::from_millis(if input.small { 10 } else { 3000 }),
        recover_after: Duration::from_millis(if input.small { 30 } else { 30_000 }),
        ..SelfDefenceConfig::default()
    });

    let mut now = Duration::from_secs(100);
    let mut in_alarm = false;
    let mut under_attack = false;
    let mut link = LinkSample::default();
    let mut load = LoadSample::default();
    for s in input.samples.iter().take(256) {
        now = if s.dt_ms >= 0 {
            now.saturating_add(Duration::from_millis(s.dt_ms as u64))
        } else {
            now.saturating_sub(Duration::from_millis(u64::from(s.dt_ms.unsigned_abs())))
        };
        let top: Vec<SourceCount> = s
            .top
            .iter()
            .take(20)
            .map(|(h, n)| SourceCount {
                addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, *h)),
                packets: *n,
            })
            .collect();
        if input.increments {
            let add = |a: u64, b: u64| a.saturating_add(b % 10_000_000);
            link = LinkSample {
                packets: add(link.packets, s.packets),
                bytes: add(link.bytes, s.bytes),
                tcp: add(link.tcp, s.tcp),
                udp: add(link.udp, s.udp),
                icmp: add(link.icmp, s.icmp),
                other: add(link.other, s.other),
                tcp_syn: add(link.tcp_syn, s.tcp_syn),
                new_sources: add(link.new_sources, s.new_sources),
                top_sources: top,
            };
            load = LoadSample {
                rx_packets: add(load.rx_packets, s.packets),
                rx_bytes: add(load.rx_bytes, s.bytes),
                rx_dropped: add(load.rx_dropped, s.rx_dropped),
                cpu_busy: add(load.cpu_busy, s.cpu_busy),
                cpu_total: add(load.cpu_total, s.cpu_total),
            };
        } else {
            link = LinkSample {
                packets: s.packets,
                bytes: s.bytes,
                tcp: s.tcp,
                udp: s.udp,
                icmp: s.icmp,
                other: s.other,
                tcp_syn: s.tcp_syn,
                new_sources: s.new_sources,
                top_sources: top,
            };
            load = LoadSample {
                rx_packets: s.packets,
                rx_bytes: s.bytes,
                rx_dropped: s.rx_dropped,
                cpu_busy: s.cpu_busy,
                cpu_total: s.cpu_total,
            };
        }

        match det.observe(now, &link) {
            Some(DetectorEvent::Alarm(sum)) => {
                assert!(!in_alarm, "two alarms without an all-clear");
                in_alarm = true;
                check_rates(&sum.rates, "alarm rates");
                check_rates(&sum.baseline, "alarm baseline");
                assert!(sum.syn_share.is_finite() && (0.0..=1.0).contains(&sum.syn_share));
                assert!(sum.anomalous_for_secs.is_finite() && sum.anomalous_for_secs >= 0.0);
                assert!(!sum.kinds.is_empty(), "alarm without a kind");
                let ev = DetectorEvent::Alarm(sum);
                let v = serde_json::to_value(&ev).expect("alarm serialises");
                assert!(json_has_no_null(&v), "alarm JSON has a null: {v}");
            }
            Some(DetectorEvent::AllClear(sum)) => {
                assert!(in_alarm, "all-clear without an alarm");
                in_alarm = false;
                check_rates(&sum.peak, "peak");
                check_rates(&sum.rates, "all-clear rates");
                assert!(sum.alarm_secs.is_finite() && sum.alarm_secs >= 0.0);
                assert!(sum.calm_secs.is_finite() && sum.calm_secs >= 0.0);
            }
            None => {}
        }
        check_rates(&det.last_rates(), "last rates");
        check_rates(&det.baseline(), "baseline");
        assert_eq!(det.state(now) == DetectorState::Alarm, in_alarm);
        assert_eq!(det.current_summary().is_some(), in_alarm);

        match sd.observe(now, &load) {
            Some(SelfDefenceEvent::UnderAttack(r)) => {
                assert!(!under_attack, "two under-attack reports");
                under_attack = true;
                assert!(!r.saturated.is_empty());
                assert!(
                    r.cpu_busy.is_finite() && (0.0..=1.0).contains(&r.cpu_busy),
                    "{r:?}"
                );
            }
            Some(SelfDefenceEvent::Recovered(_)) => {
                assert!(under_attack, "recovered without an attack");
                under_attack = false;
            }
            None => {}
        }
        assert_eq!(sd.under_attack(), under_attack);
    }
});
