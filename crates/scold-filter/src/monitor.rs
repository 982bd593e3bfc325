//! The target's link monitor: a tokio task that samples a link every
//! `interval`, drives a [`Detector`], and sends its events on a channel.
//!
//! Sampled packets are read whenever the socket is readable (so its queue does
//! not overflow between ticks); counters are read and the detector stepped on
//! each tick. The task stops when [`MonitorHandle::stop`] is called, when the
//! handle is dropped, or when the event receiver is dropped.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::detect::{Detector, DetectorConfig, DetectorEvent, DetectorState, Rates};
use crate::sample::{LinkSampler, SampleError, SamplerConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// The link to watch (the target's main link).
    pub interface: String,
    /// Network namespace the interface lives in (`ip netns` name); `None` is the
    /// namespace of the calling process.
    pub netns: Option<String>,
    /// How often counters are read and the detector is stepped.
    pub interval: Duration,
    pub sampler: SamplerConfig,
    pub detector: DetectorConfig,
    /// Capacity of the event channel.
    pub channel_capacity: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interface: String::new(),
            netns: None,
            interval: Duration::from_millis(100),
            sampler: SamplerConfig::default(),
            detector: DetectorConfig::default(),
            channel_capacity: 16,
        }
    }
}

/// The monitor's current view, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub state: DetectorState,
    pub rates: Rates,
    pub baseline: Rates,
    pub samples: u64,
    /// Last sampling error, if the latest tick failed.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor of {interface:?}: {source}")]
    Sample {
        interface: String,
        #[source]
        source: SampleError,
    },
    #[error("monitor of {interface:?}: registering the packet socket with tokio failed: {source}")]
    Register {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Handle of a running monitor.
#[derive(Debug)]
pub struct MonitorHandle {
    stop: Option<oneshot::Sender<()>>,
    detector: mpsc::UnboundedSender<DetectorConfig>,
    task: Option<JoinHandle<()>>,
    status: watch::Receiver<MonitorStatus>,
}

impl MonitorHandle {
    /// The latest status (updated every interval).
    pub fn status(&self) -> watch::Receiver<MonitorStatus> {
        self.status.clone()
    }

    /// Hands the detector new thresholds (a config reload); its baseline and state
    /// stay. `false` when the task has ended.
    pub fn reconfigure(&self, cfg: DetectorConfig) -> bool {
        self.detector.send(cfg).is_ok()
    }

    /// Stops the task and waits for it to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Opens the link (in `cfg.netns` if set) and starts the monitor task on the
/// current tokio runtime. Opening errors (no such interface, no privilege)
/// are returned here rather than from the task.
pub fn spawn(
    cfg: MonitorConfig,
) -> Result<(MonitorHandle, mpsc::Receiver<DetectorEvent>), MonitorError> {
    let sampler = match &cfg.netns {
        Some(ns) => LinkSampler::open_in_netns(ns, &cfg.interface, &cfg.sampler),
        None => LinkSampler::open(&cfg.interface, &cfg.sampler),
    }
    .map_err(|source| MonitorError::Sample {
        interface: cfg.interface.clone(),
        source,
    })?;
    // SAFETY: the descriptor is owned by `sampler`, which the AsyncFd owns in
    // turn, so it stays open and unchanged for as long as it is registered.
    let sampler =
        unsafe { AsyncFd::register(sampler) }.map_err(|source| MonitorError::Register {
            interface: cfg.interface.clone(),
            source: source.into(),
        })?;
    let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let detector = Detector::new(cfg.detector.clone());
    let (status_tx, status_rx) = watch::channel(MonitorStatus {
        state: DetectorState::Learning,
        rates: Rates::default(),
        baseline: Rates::default(),
        samples: 0,
        error: None,
    });
    let (cfg_tx, cfg_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(cfg, sampler, detector, tx, stop_rx, status_tx, cfg_rx));
    Ok((
        MonitorHandle {
            stop: Some(stop_tx),
            detector: cfg_tx,
            task: Some(task),
            status: status_rx,
        },
        rx,
    ))
}

async fn run(
    cfg: MonitorConfig,
    mut sampler: AsyncFd<LinkSampler>,
    mut detector: Detector,
    tx: mpsc::Sender<DetectorEvent>,
    mut stop: oneshot::Receiver<()>,
    status: watch::Sender<MonitorStatus>,
    mut reconfigure: mpsc::UnboundedReceiver<DetectorConfig>,
) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tx.closed() => break,
            Some(c) = reconfigure.recv() => {
                detector.reconfigure(c);
                tracing::info!(interface = %cfg.interface, "attack detection: new thresholds in force");
            }
            _ = tick.tick() => {
                let now = start.elapsed();
                match sampler.get_mut().sample().await {
                    Ok(s) => {
                        samples += 1;
                        let ev = detector.observe(now, &s);
                        status.send_replace(MonitorStatus {
                            state: detector.state(now),
                            rates: detector.last_rates(),
                            baseline: detector.baseline(),
                            samples,
                            error: None,
                        });
                        if let Some(ev) = ev {
                            match &ev {
                                DetectorEvent::Alarm(s) => tracing::warn!(
                                    interface = %cfg.interface,
                                    kinds = ?s.kinds,
                                    pps = s.rates.pps,
                                    "attack detected"
                                ),
                                DetectorEvent::AllClear(s) => tracing::info!(
                                    interface = %cfg.interface,
                                    alarm_secs = s.alarm_secs,
                                    "attack over"
                                ),
                            }
                            if tx.send(ev).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        // A vanished link (e.g. during reconfiguration) is logged and
                        // retried on the next tick rather than ending detection.
                        tracing::warn!(interface = %cfg.interface, error = %e, "link sample failed");
                        status.send_modify(|st| st.error = Some(e.to_string()));
                    }
                }
            }
            guard = sampler.readable_mut() => {
                match guard {
                    Ok(mut g) => {
                        match g.get_inner_mut().poll() {
                            Ok(n) if n >= cfg.sampler.poll_budget.max(1) => {
                                // More is waiting: keep readiness, let other branches run.
                                tokio::task::yield_now().await;
                            }
                            Ok(_) => g.clear_ready(),
                            Err(e) => {
                                tracing::warn!(interface = %cfg.interface, error = %e, "packet sampling failed");
                                g.clear_ready();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(interface = %cfg.interface, error = %e, "packet socket failed");
                        break;
                    }
                }
            }
        }
    }
}
