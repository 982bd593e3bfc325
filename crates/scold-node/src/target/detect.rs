//! `scold target`, detection part: watches the main link with
//! [`scold_filter::monitor`] and reports alarms and all-clears to the coordinator
//! (paper Sec. 3 step 1), retrying each report until the coordinator acknowledges it.
//! A newer report replaces one still being retried (an all-clear overtakes its alarm).

use crate::node::control::{report_until_acknowledged, NodeContext};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use scold_filter::detect::{DetectorConfig, DetectorEvent, Rates};
use scold_filter::monitor::{self, MonitorConfig, MonitorHandle};
use scold_filter::sample::SamplerConfig;
use scold_proto::control::Request;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// Rates in `[detect.floors]` / `[detect.ceilings]`; unset fields keep the default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RatesSection {
    pub pps: Option<f64>,
    pub bps: Option<f64>,
    pub tcp_pps: Option<f64>,
    pub udp_pps: Option<f64>,
    pub icmp_pps: Option<f64>,
    pub other_pps: Option<f64>,
    pub syn_pps: Option<f64>,
    pub new_sources_per_s: Option<f64>,
}

impl RatesSection {
    fn over(&self, base: Rates) -> Rates {
        Rates {
            pps: self.pps.unwrap_or(base.pps),
            bps: self.bps.unwrap_or(base.bps),
            tcp_pps: self.tcp_pps.unwrap_or(base.tcp_pps),
            udp_pps: self.udp_pps.unwrap_or(base.udp_pps),
            icmp_pps: self.icmp_pps.unwrap_or(base.icmp_pps),
            other_pps: self.other_pps.unwrap_or(base.other_pps),
            syn_pps: self.syn_pps.unwrap_or(base.syn_pps),
            new_sources_per_s: self.new_sources_per_s.unwrap_or(base.new_sources_per_s),
        }
    }
}

/// `[detect]`: attack detection on the target's main link.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSection {
    /// The main link (the one an attack fills).
    pub interface: String,
    /// How often counters are read.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Keep one incoming packet in this many for the protocol mix and top sources.
    #[serde(default)]
    pub one_in: Option<u32>,
    /// How long an anomaly must last before the alarm.
    #[serde(default)]
    pub alarm_after_ms: Option<u64>,
    /// How long the link must stay calm before the all-clear.
    #[serde(default)]
    pub hold_down_ms: Option<u64>,
    /// Learning time after start (only ceilings alarm before it ends).
    #[serde(default)]
    pub warmup_ms: Option<u64>,
    /// Time constant of the learned baseline.
    #[serde(default)]
    pub baseline_secs: Option<u64>,
    #[serde(default)]
    pub alarm_factor: Option<f64>,
    #[serde(default)]
    pub alarm_sigmas: Option<f64>,
    #[serde(default)]
    pub clear_factor: Option<f64>,
    #[serde(default)]
    pub clear_sigmas: Option<f64>,
    #[serde(default)]
    pub syn_share_alarm: Option<f64>,
    /// Rates under which nothing is anomalous.
    #[serde(default)]
    pub floors: Option<RatesSection>,
    /// Rates that alarm whatever the baseline (e.g. 90 % of the link's capacity).
    #[serde(default)]
    pub ceilings: Option<RatesSection>,
}

impl DetectSection {
    pub fn monitor_config(&self) -> Result<MonitorConfig, String> {
        let d = DetectorConfig::default();
        let ms = Duration::from_millis;
        let det = DetectorConfig {
            alarm_after: self.alarm_after_ms.map(ms).unwrap_or(d.alarm_after),
            hold_down: self.hold_down_ms.map(ms).unwrap_or(d.hold_down),
            warmup: self.warmup_ms.map(ms).unwrap_or(d.warmup),
            baseline_time_constant: self
                .baseline_secs
                .map(Duration::from_secs)
                .unwrap_or(d.baseline_time_constant),
            alarm_factor: self.alarm_factor.unwrap_or(d.alarm_factor),
            alarm_sigmas: self.alarm_sigmas.unwrap_or(d.alarm_sigmas),
            clear_factor: self.clear_factor.unwrap_or(d.clear_factor),
            clear_sigmas: self.clear_sigmas.unwrap_or(d.clear_sigmas),
            syn_share_alarm: self.syn_share_alarm.unwrap_or(d.syn_share_alarm),
            floors: self
                .floors
                .as_ref()
                .map(|f| f.over(d.floors))
                .unwrap_or(d.floors),
            ceilings: self.ceilings.as_ref().map(|c| c.over(Rates::default())),
            top_sources: d.top_sources,
        };
        if det.clear_factor > det.alarm_factor {
            return Err(format!(
                "detect.clear_factor {} is above detect.alarm_factor {}: the all-clear threshold must be below the alarm's",
                det.clear_factor, det.alarm_factor
            ));
        }
        if self.interface.is_empty() {
            return Err("detect.interface is empty; name the main link".into());
        }
        let mut m = MonitorConfig {
            interface: self.interface.clone(),
            detector: det,
            ..Default::default()
        };
        if let Some(i) = self.interval_ms {
            if !(10..=10_000).contains(&i) {
                return Err(format!("detect.interval_ms = {i} is outside 10..=10000"));
            }
            m.interval = ms(i);
        }
        if let Some(n) = self.one_in {
            m.sampler = SamplerConfig {
                one_in: n.max(1),
                ..m.sampler
            };
        }
        Ok(m)
    }
}

/// What the target last told (or must tell) the coordinator.
#[derive(Debug, Clone)]
enum Report {
    Alarm(serde_json::Value),
    AllClear,
}

/// The running detector; stops with [`Detection::stop`].
pub struct Detection {
    monitor: Option<MonitorHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Detection {
    pub fn start(section: &DetectSection, ctx: &NodeContext) -> anyhow::Result<Detection> {
        let cfg = section
            .monitor_config()
            .map_err(|e| anyhow::anyhow!("[detect]: {e}"))?;
        let (handle, mut events) = monitor::spawn(cfg.clone())
            .map_err(|e| anyhow::anyhow!("[detect]: cannot watch the main link: {e}"))?;
        let alarm = Gauge::<i64>::default();
        let alarms = Counter::<u64>::default();
        ctx.metrics.metrics.with_registry(|r| {
            r.register(
                "target_alarm",
                "1 while the detector holds an alarm on the main link",
                alarm.clone(),
            );
            r.register(
                "target_alarms",
                "Alarms raised by the detector",
                alarms.clone(),
            );
        });
        let (report_tx, report_rx) = watch::channel::<Option<Report>>(None);
        let mut tasks = Vec::new();
        let interface = cfg.interface.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let json = serde_json::to_value(&ev).unwrap_or_default();
                // One JSON line per event in the log, for the operator and the audit.
                let line = serde_json::to_string(&json).unwrap_or_default();
                match ev {
                    DetectorEvent::Alarm(_) => {
                        alarm.set(1);
                        alarms.inc();
                        tracing::warn!(%interface, summary = %line, "attack on the main link: alarm");
                        let _ = report_tx.send(Some(Report::Alarm(json)));
                    }
                    DetectorEvent::AllClear(_) => {
                        alarm.set(0);
                        tracing::info!(%interface, summary = %line, "main link calm again: all clear");
                        let _ = report_tx.send(Some(Report::AllClear));
                    }
                }
            }
        }));
        match (&ctx.agent, &ctx.name) {
            (Some(agent), Some(name)) => {
                let (agent, name) = (agent.clone(), name.clone());
                tasks.push(tokio::spawn(report_loop(agent, name, report_rx)));
            }
            _ => tracing::info!("no coordinator: alarms are only logged"),
        }
        tracing::info!(interface = %cfg.interface, "watching the main link for attacks");
        Ok(Detection {
            monitor: Some(handle),
            tasks,
        })
    }

    /// Applies the thresholds of a reloaded `[detect]` table (the interface, sampling
    /// interval and sampling rate need a restart); the learned baseline and an alarm in
    /// force stay.
    pub fn reconfigure(&self, section: &DetectSection) -> Result<(), String> {
        let cfg = section.monitor_config()?;
        match &self.monitor {
            Some(m) if m.reconfigure(cfg.detector) => Ok(()),
            _ => Err("attack detection has stopped".into()),
        }
    }

    pub async fn stop(mut self) {
        if let Some(m) = self.monitor.take() {
            m.stop().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn report_loop(
    agent: scold_link::CoordinatorLink,
    name: String,
    mut rx: watch::Receiver<Option<Report>>,
) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(report) = rx.borrow_and_update().clone() else {
            continue;
        };
        let (what, request) = match report {
            Report::Alarm(summary) => (
                "alarm",
                Request::Alarm {
                    target: name.clone(),
                    summary,
                },
            ),
            Report::AllClear => (
                "all_clear",
                Request::AllClear {
                    target: name.clone(),
                },
            ),
        };
        let newer = rx.clone();
        report_until_acknowledged(
            &agent,
            what,
            || request.clone(),
            || newer.has_changed().unwrap_or(true),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_passes_through_to_the_detector() {
        let s: DetectSection = toml::from_str(
            r#"
interface = "eth0"
interval_ms = 50
one_in = 1
alarm_after_ms = 500
hold_down_ms = 3000
warmup_ms = 1000
[floors]
pps = 200.0
udp_pps = 100.0
[ceilings]
bps = 900000000.0
"#,
        )
        .unwrap();
        let m = s.monitor_config().unwrap();
        assert_eq!(m.interface, "eth0");
        assert_eq!(m.interval, Duration::from_millis(50));
        assert_eq!(m.sampler.one_in, 1);
        assert_eq!(m.detector.alarm_after, Duration::from_millis(500));
        assert_eq!(m.detector.hold_down, Duration::from_secs(3));
        assert_eq!(m.detector.warmup, Duration::from_secs(1));
        assert_eq!(m.detector.floors.pps, 200.0);
        assert_eq!(m.detector.floors.udp_pps, 100.0);
        // Unset floors keep the defaults.
        assert_eq!(
            m.detector.floors.icmp_pps,
            DetectorConfig::default().floors.icmp_pps
        );
        assert_eq!(m.detector.ceilings.unwrap().bps, 900_000_000.0);
    }

    #[test]
    fn bad_sections_are_refused() {
        assert!(
            toml::from_str::<DetectSection>("").is_err(),
            "interface is required"
        );
        assert!(toml::from_str::<DetectSection>("interface = \"e\"\nalarm_after = 1").is_err());
        let s: DetectSection =
            toml::from_str("interface = \"e\"\nalarm_factor = 2.0\nclear_factor = 3.0").unwrap();
        assert!(s.monitor_config().unwrap_err().contains("clear_factor"));
        let s: DetectSection = toml::from_str("interface = \"e\"\ninterval_ms = 1").unwrap();
        assert!(s.monitor_config().is_err());
    }
}
