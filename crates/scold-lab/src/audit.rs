//! Timings from the coordinator's audit log (`scold ctl --json events`).
//!
//! The coordinator records each phase change of a target as an event with its own
//! millisecond clock and the phase entered as a field ([`EventView::phase`]). The lab
//! times a divert, a proxy reset and a restore from those records: not by when a
//! status poll happened to see the phase (a poll every 100 ms adds up to that much),
//! and never by the wording of a log line. The lab and the coordinator run on one host,
//! so the lab's wall clock and the coordinator's are the same clock.

use std::time::{SystemTime, UNIX_EPOCH};

use scold_proto::control::EventView;

use crate::roles;

/// `t` as Unix milliseconds (the audit log's clock), rounded down.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time (Unix ms) of the first event at or after `since_ms` in which the lab's
/// target entered `phase`.
pub fn entered(events: &[EventView], phase: &str, since_ms: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.subject == roles::TARGET_ID && e.at_ms >= since_ms)
        .find(|e| e.phase.as_deref() == Some(phase))
        .map(|e| e.at_ms)
}

/// Seconds from `from_ms` to `to_ms` (both Unix ms); zero if `to_ms` is earlier.
pub fn seconds(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// Seconds from `from` (a time the lab took) to `to_ms` (an audit-log time). The lab's
/// time is rounded down to the millisecond like the coordinator's, so an event that
/// followed it is never before it.
pub fn seconds_since(from: SystemTime, to_ms: u64) -> f64 {
    seconds(unix_ms(from), to_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(at_ms: u64, subject: &str, event: &str, phase: Option<&str>) -> EventView {
        EventView {
            seq: at_ms,
            at_ms,
            subject: subject.into(),
            event: event.into(),
            detail: "wording for people, not read here".into(),
            phase: phase.map(str::to_string),
        }
    }

    #[test]
    fn phase_changes_are_found_by_field_subject_and_time() {
        let t = roles::TARGET_ID;
        let log = [
            ev(1_000, t, "phase", Some("diverting")),
            ev(1_200, t, "phase", Some("diverted")),
            ev(1_300, "other", "phase", Some("restoring")),
            ev(1_350, t, "operator_restore", None),
            ev(1_400, t, "phase", Some("restoring")),
            ev(2_000, t, "phase", Some("normal")),
            ev(3_000, t, "phase", Some("diverting")),
            ev(3_150, t, "phase", Some("diverted")),
        ];
        assert_eq!(entered(&log, "diverting", 0), Some(1_000));
        // Only changes at or after the given time count: the second divert.
        assert_eq!(entered(&log, "diverting", 2_500), Some(3_000));
        assert_eq!(entered(&log, "diverted", 3_000), Some(3_150));
        // Another target's change is not the lab target's.
        assert_eq!(entered(&log, "restoring", 0), Some(1_400));
        assert_eq!(entered(&log, "resetting", 0), None);
        assert_eq!(entered(&log, "normal", 2_001), None);
        assert!((seconds(1_000, 1_200) - 0.2).abs() < 1e-9);
        assert_eq!(seconds(1_200, 1_000), 0.0);
        let t0 = UNIX_EPOCH + Duration::from_micros(1_000_900);
        assert_eq!(unix_ms(t0), 1_000);
        assert!((seconds_since(t0, 1_250) - 0.25).abs() < 1e-9);
    }
}
