//! The target's monitor on a real veth link in network namespaces: bounded
//! UDP, ICMP and SYN floods (and one from hping3) raise the alarm within the
//! configured window, and the all-clear comes only after the flood stops plus
//! the hold-down. Needs root (namespaces, raw sockets).

mod common;

use std::time::{Duration, Instant};

use common::{FloodReport, Link, PEER_IP, TARGET_IP};
use scold_filter::detect::{AttackKind, DetectorConfig, DetectorEvent, Rates};
use scold_filter::monitor::{self, MonitorConfig};
use scold_filter::sample::SamplerConfig;
use tokio::sync::mpsc::Receiver;

/// The floods share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ALARM_AFTER: Duration = Duration::from_secs(1);
/// The monitor's sampling interval: the sample in which the flood begins counts as
/// anomalous for its whole length, so the alarm may come up to one interval early
/// against the test's clock.
const INTERVAL: Duration = Duration::from_millis(100);
const HOLD_DOWN: Duration = Duration::from_secs(3);
/// The flood lasts well beyond the alarm window so the alarm must come during it.
const FLOOD_TIME: Duration = Duration::from_secs(5);
const FLOOD_MAX_PACKETS: u64 = 3_000_000;

fn config(link: &Link) -> MonitorConfig {
    MonitorConfig {
        interface: link.target_if(),
        netns: Some(link.target()),
        interval: INTERVAL,
        sampler: SamplerConfig {
            one_in: 4,
            ..SamplerConfig::default()
        },
        detector: DetectorConfig {
            alarm_after: ALARM_AFTER,
            hold_down: HOLD_DOWN,
            warmup: Duration::from_secs(2),
            baseline_time_constant: Duration::from_secs(10),
            // An idle test link: floors well above its background (ARP, a ping)
            // and well below what a flood from one core sends.
            floors: Rates {
                pps: 2_000.0,
                bps: 2_000_000.0,
                tcp_pps: 1_000.0,
                udp_pps: 1_000.0,
                icmp_pps: 300.0,
                other_pps: 1_000.0,
                syn_pps: 300.0,
                new_sources_per_s: 300.0,
            },
            ..DetectorConfig::default()
        },
        channel_capacity: 16,
    }
}

struct Timeline {
    flood_start: Instant,
    flood: FloodReport,
    alarm: (Instant, DetectorEvent),
    all_clear: (Instant, DetectorEvent),
}

async fn next_event(
    rx: &mut Receiver<DetectorEvent>,
    limit: Duration,
) -> Option<(Instant, DetectorEvent)> {
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(e)) => Some((Instant::now(), e)),
        _ => None,
    }
}

/// Starts the monitor, lets it learn the idle link, runs `flood` in the peer
/// namespace and collects the alarm and the all-clear.
async fn scenario(
    link: &Link,
    flood: impl FnOnce(String) -> FloodReport + Send + 'static,
) -> Timeline {
    let (handle, mut rx) = monitor::spawn(config(link)).expect("monitor starts in the namespace");
    // Warm-up plus a little: the baseline of an idle link.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        rx.try_recv().is_err(),
        "no event on an idle link, status {:?}",
        *handle.status().borrow()
    );
    let ns = link.peer();
    let flood_start = Instant::now();
    let flood_task = tokio::task::spawn_blocking(move || flood(ns));

    let alarm = next_event(&mut rx, FLOOD_TIME + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no alarm; status {:?}", *handle.status().borrow()));
    let flood = flood_task.await.expect("flood thread");
    let all_clear = next_event(&mut rx, HOLD_DOWN + Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no all-clear; status {:?}", *handle.status().borrow()));
    handle.stop().await;
    Timeline {
        flood_start,
        flood,
        alarm,
        all_clear,
    }
}

fn check(t: &Timeline, kind: AttackKind, top_source: Option<std::net::IpAddr>) {
    let DetectorEvent::Alarm(summary) = &t.alarm.1 else {
        panic!("first event must be the alarm: {:?}", t.alarm.1)
    };
    let delay = t.alarm.0 - t.flood_start;
    eprintln!(
        "flood sent {} packets in {:?}; alarm after {:?}: {}",
        t.flood.sent,
        t.flood.stopped - t.flood_start,
        delay,
        serde_json::to_string(summary).unwrap()
    );
    assert!(
        t.flood.sent > 10_000,
        "the flood must be a flood: {:?}",
        t.flood
    );
    assert!(
        delay + INTERVAL >= ALARM_AFTER,
        "alarm only after a sustained anomaly, got {delay:?}"
    );
    assert!(
        t.alarm.0 < t.flood.stopped,
        "the alarm must come while the flood runs (within the window), got {delay:?}"
    );
    assert!(summary.kinds.contains(&kind), "kinds {:?}", summary.kinds);
    if let Some(src) = top_source {
        assert_eq!(summary.top_sources.first().map(|s| s.addr), Some(src));
    }
    let DetectorEvent::AllClear(clear) = &t.all_clear.1 else {
        panic!("second event must be the all-clear: {:?}", t.all_clear.1)
    };
    let after_stop = t.all_clear.0 - t.flood.stopped;
    eprintln!("all-clear {after_stop:?} after the flood stopped: {clear:?}");
    assert!(
        after_stop + INTERVAL >= HOLD_DOWN,
        "all-clear only after flood stop + hold-down, got {after_stop:?}"
    );
    assert!(clear.peak.pps > 5_000.0, "{clear:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flood_raises_alarm_and_all_clear_after_hold_down() {
    let _g = SERIAL.lock().await;
    let link = Link::new("udp");
    let t = scenario(&link, |ns| {
        common::udp_flood(&ns, TARGET_IP, FLOOD_MAX_PACKETS, FLOOD_TIME)
    })
    .await;
    check(&t, AttackKind::UdpFlood, Some(PEER_IP.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_flood_raises_alarm_and_all_clear_after_hold_down() {
    let _g = SERIAL.lock().await;
    let link = Link::new("icmp");
    let t = scenario(&link, |ns| {
        common::icmp_flood(&ns, TARGET_IP, FLOOD_MAX_PACKETS, FLOOD_TIME)
    })
    .await;
    check(&t, AttackKind::IcmpFlood, Some(PEER_IP.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_flood_raises_alarm_and_all_clear_after_hold_down() {
    let _g = SERIAL.lock().await;
    let link = Link::new("syn");
    let t = scenario(&link, |ns| {
        common::syn_flood(&ns, PEER_IP, TARGET_IP, FLOOD_MAX_PACKETS, FLOOD_TIME)
    })
    .await;
    check(&t, AttackKind::SynFlood, Some(PEER_IP.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hping3_syn_flood_raises_alarm() {
    scold_testkit::require_tool("hping3", "hping3");
    let _g = SERIAL.lock().await;
    let link = Link::new("hping");
    let t = scenario(&link, |ns| {
        let start = Instant::now();
        // Bounded twice: by count (-c) and by time (timeout). -i u20 is about
        // 50 000 SYN/s at most.
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "timeout",
                "-s",
                "INT",
                "5",
                "hping3",
                "-q",
                "-S",
                "-p",
                "80",
                "-i",
                "u20",
                "-c",
                "250000",
                "10.99.0.1",
            ])
            .output()
            .expect("run hping3");
        let stopped = Instant::now();
        let stats = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        eprintln!("hping3 ran {:?}: {}", stopped - start, stats.trim());
        // `timeout` ends hping3 with SIGINT and status 124; only a failure to start is an error.
        assert!(
            out.status.success() || out.status.code() == Some(124),
            "hping3 failed: {stats}"
        );
        // hping3 prints "N packets transmitted" when it ends (also on SIGINT).
        let sent = stats
            .split("packets transmitted")
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        FloodReport { sent, stopped }
    })
    .await;
    check(&t, AttackKind::SynFlood, Some(PEER_IP.into()));
}
