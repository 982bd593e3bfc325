//! The run's timeline: what the lab's clients received, 100 ms at a time, over the whole
//! scenario, with the moments that shaped it (attack start and end from the lab, the
//! alarm, divert, failovers and restore from the coordinator's audit log).
//!
//! The clients' downloads run on threads of this process, so one counter
//! ([`crate::measure::RECEIVED`]) sees all of them; a sampler thread reads it every
//! 100 ms. Memory stays bounded however long a run takes: at [`MAX_BINS`] bins,
//! neighbours merge and the interval doubles. The figures of the tables come from the
//! downloads' own clocks and are not touched by this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use scold_proto::control::EventView;

use crate::audit::unix_ms;
use crate::measure::RECEIVED;
use crate::roles;

/// The sampling period.
pub const TICK_MS: u64 = 100;
/// Bins kept at most; beyond, pairs merge and the interval doubles.
pub const MAX_BINS: usize = 4096;

/// What a mark on the timeline stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// The flood on the target's main link starts.
    Attack,
    /// The flood stops.
    AttackEnd,
    /// An alarm reaches the coordinator (the target's detector or the operator).
    Alarm,
    /// The coordinator's target enters phase "diverted".
    Divert,
    /// A proxy is reset out of the ALT set (phase "resetting"): clients fail over.
    Failover,
    /// The target is back to phase "normal".
    Restore,
}

impl MarkKind {
    pub fn label(self) -> &'static str {
        match self {
            MarkKind::Attack => "attack starts",
            MarkKind::AttackEnd => "attack ends",
            MarkKind::Alarm => "alarm",
            MarkKind::Divert => "divert",
            MarkKind::Failover => "failover",
            MarkKind::Restore => "restore",
        }
    }
}

/// One moment on the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// Milliseconds from the timeline's start.
    pub at_ms: u64,
    pub kind: MarkKind,
    /// What happened, for people.
    pub detail: String,
}

/// Bytes the clients received per interval, and the marks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Unix time (ms) of the first bin's start.
    pub start_unix_ms: u64,
    /// Length of one bin in ms (100, doubled for each merge of a long run).
    pub interval_ms: u64,
    /// Payload bytes the clients' downloads received in each bin.
    pub bytes: Vec<u64>,
    pub marks: Vec<Mark>,
}

impl Timeline {
    /// Length covered, in ms.
    pub fn duration_ms(&self) -> u64 {
        self.interval_ms * self.bytes.len() as u64
    }

    /// Throughput of bin `i` in bit/s.
    pub fn bits_per_sec(&self, i: usize) -> f64 {
        self.bytes.get(i).copied().unwrap_or(0) as f64 * 8.0 * 1000.0
            / self.interval_ms.max(1) as f64
    }
}

/// Adds one tick's bytes; merges neighbours at [`MAX_BINS`].
#[derive(Debug)]
struct Bins {
    interval_ms: u64,
    bytes: Vec<u64>,
    /// The bin being filled and how many ticks it holds.
    open: u64,
    ticks: u64,
}

impl Bins {
    fn new() -> Bins {
        Bins {
            interval_ms: TICK_MS,
            bytes: Vec::new(),
            open: 0,
            ticks: 0,
        }
    }

    fn tick(&mut self, bytes: u64) {
        self.open += bytes;
        self.ticks += 1;
        if self.ticks * TICK_MS >= self.interval_ms {
            self.bytes.push(self.open);
            self.open = 0;
            self.ticks = 0;
            if self.bytes.len() >= MAX_BINS {
                self.bytes = self.bytes.chunks(2).map(|c| c.iter().sum()).collect();
                self.interval_ms *= 2;
            }
        }
    }

    /// The bins, with a last partial one scaled to a whole bin's length so its rate is
    /// right.
    fn finish(mut self) -> (u64, Vec<u64>) {
        let whole = self.interval_ms / TICK_MS;
        if let Some(scaled) = (self.open * whole).checked_div(self.ticks) {
            self.bytes.push(scaled);
        }
        (self.interval_ms, self.bytes)
    }
}

/// Samples [`RECEIVED`] every 100 ms on its own thread until [`Sampler::finish`] (or
/// drop).
pub struct Sampler {
    start: SystemTime,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Bins>>,
    marks: Vec<Mark>,
}

impl Sampler {
    pub fn start() -> Sampler {
        let start = SystemTime::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-timeline".into())
            .spawn(move || {
                let mut bins = Bins::new();
                let mut last = RECEIVED.load(Ordering::Relaxed);
                let t0 = Instant::now();
                let mut n = 1u32;
                while !flag.load(Ordering::Relaxed) {
                    // Ticks on a fixed grid, so a late wake-up does not shift the rest.
                    let next = t0 + Duration::from_millis(TICK_MS) * n;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    let now = RECEIVED.load(Ordering::Relaxed);
                    bins.tick(now.wrapping_sub(last));
                    last = now;
                    n += 1;
                }
                bins
            })
            .ok();
        Sampler {
            start,
            stop,
            thread,
            marks: Vec::new(),
        }
    }

    /// Marks the present moment.
    pub fn mark(&mut self, kind: MarkKind, detail: impl Into<String>) {
        self.mark_at(SystemTime::now(), kind, detail);
    }

    /// Marks a moment the lab took earlier.
    pub fn mark_at(&mut self, at: SystemTime, kind: MarkKind, detail: impl Into<String>) {
        self.marks.push(Mark {
            at_ms: unix_ms(at).saturating_sub(unix_ms(self.start)),
            kind,
            detail: detail.into(),
        });
    }

    /// Stops sampling; the timeline with the lab's marks and those the coordinator's
    /// audit log gives for the lab's target.
    pub fn finish(mut self, events: &[EventView]) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        let (interval_ms, bytes) = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(Bins::new)
            .finish();
        let start_unix_ms = unix_ms(self.start);
        let mut marks = std::mem::take(&mut self.marks);
        marks.extend(audit_marks(events, start_unix_ms));
        marks.sort_by_key(|m| m.at_ms);
        Timeline {
            start_unix_ms,
            interval_ms,
            bytes,
            marks,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The alarm, divert, failover and restore marks of the lab's target, from the
/// coordinator's audit log (its phase field, never the wording), from `since_ms` on.
pub fn audit_marks(events: &[EventView], since_ms: u64) -> Vec<Mark> {
    let mut out = Vec::new();
    let mut phase = "normal".to_string();
    for e in events.iter().filter(|e| e.subject == roles::TARGET_ID) {
        let kind = match (e.event.as_str(), e.phase.as_deref()) {
            ("alarm", _) => Some((MarkKind::Alarm, "the target's detector".to_string())),
            ("operator_divert", _) => Some((MarkKind::Alarm, "scold ctl divert".to_string())),
            ("phase", Some("diverted")) if phase == "resetting" => None,
            ("phase", Some("diverted")) => Some((MarkKind::Divert, e.detail.clone())),
            ("phase", Some("resetting")) => Some((MarkKind::Failover, e.detail.clone())),
            ("phase", Some("normal")) => Some((MarkKind::Restore, e.detail.clone())),
            _ => None,
        };
        if let Some(p) = e.phase.as_deref() {
            phase = p.to_string();
        }
        if let Some((kind, detail)) = kind.filter(|_| e.at_ms >= since_ms) {
            out.push(Mark {
                at_ms: e.at_ms - since_ms,
                kind,
                detail,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, event: &str, phase: Option<&str>) -> EventView {
        EventView {
            seq: at_ms,
            at_ms,
            subject: roles::TARGET_ID.into(),
            event: event.into(),
            detail: format!("{event} at {at_ms}"),
            phase: phase.map(str::to_string),
        }
    }

    #[test]
    fn long_runs_merge_bins_and_stay_bounded() {
        let mut b = Bins::new();
        for _ in 0..(MAX_BINS * 3) {
            b.tick(10);
        }
        let (interval, bytes) = b.finish();
        assert!(bytes.len() <= MAX_BINS, "{}", bytes.len());
        assert_eq!(interval, 4 * TICK_MS);
        // Every byte is still counted, and the rate is the same at every scale.
        assert_eq!(bytes.iter().sum::<u64>(), 10 * (MAX_BINS as u64) * 3);
        let t = Timeline {
            interval_ms: interval,
            bytes,
            ..Default::default()
        };
        assert!((t.bits_per_sec(0) - 800.0).abs() < 1e-9);
    }

    #[test]
    fn a_partial_last_bin_keeps_its_rate() {
        let mut b = Bins::new();
        for _ in 0..(MAX_BINS + 1) {
            b.tick(5);
        }
        // Now 200 ms bins; one tick into the next.
        let (interval, bytes) = b.finish();
        assert_eq!(interval, 200);
        assert_eq!(*bytes.last().unwrap(), 10);
    }

    #[test]
    fn marks_come_from_the_phase_field() {
        let log = [
            ev(900, "phase", Some("diverted")),
            ev(1_000, "operator_divert", None),
            ev(1_100, "phase", Some("diverting")),
            ev(1_300, "phase", Some("diverted")),
            ev(2_000, "proxy_attacked", None),
            ev(2_010, "phase", Some("resetting")),
            ev(2_200, "phase", Some("diverted")),
            ev(3_000, "alarm", None),
            ev(4_000, "phase", Some("restoring")),
            ev(4_500, "phase", Some("normal")),
        ];
        let marks = audit_marks(&log, 1_000);
        let got: Vec<(u64, MarkKind)> = marks.iter().map(|m| (m.at_ms, m.kind)).collect();
        assert_eq!(
            got,
            vec![
                (0, MarkKind::Alarm),
                (300, MarkKind::Divert),
                // The "diverted" that ends a reset is no second divert.
                (1_010, MarkKind::Failover),
                (2_000, MarkKind::Alarm),
                (3_500, MarkKind::Restore),
            ]
        );
    }

    #[test]
    fn the_sampler_sees_what_downloads_receive() {
        let mut s = Sampler::start();
        std::thread::sleep(Duration::from_millis(150));
        RECEIVED.fetch_add(1_000_000, Ordering::Relaxed);
        s.mark(MarkKind::Attack, "test");
        std::thread::sleep(Duration::from_millis(250));
        let t = s.finish(&[]);
        assert_eq!(t.interval_ms, TICK_MS);
        assert!(t.bytes.len() >= 3, "{:?}", t.bytes);
        // Other tests of this process may download too: at least ours is there.
        assert!(t.bytes.iter().sum::<u64>() >= 1_000_000, "{:?}", t.bytes);
        assert_eq!(t.marks.len(), 1);
        assert!((100..400).contains(&t.marks[0].at_ms), "{:?}", t.marks);
    }
}
