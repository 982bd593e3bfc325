//! What an operator graphs of the coordinator's targets: the phase each is in, and how
//! long its diverts, proxy resets (failovers) and restores took.

use scold_metrics::prometheus_client::metrics::family::Family;
use scold_metrics::prometheus_client::metrics::gauge::Gauge;
use scold_metrics::prometheus_client::metrics::histogram::Histogram;
use scold_proto::state::Phase;

type Labels = Vec<(String, String)>;

/// Seconds: set-up is expected under a second, a stuck step retries for minutes.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone)]
pub(super) struct PhaseMetrics {
    phase: Family<Labels, Gauge>,
    divert: Family<Labels, Histogram, fn() -> Histogram>,
    reset: Family<Labels, Histogram, fn() -> Histogram>,
    restore: Family<Labels, Histogram, fn() -> Histogram>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

fn target(name: &str) -> Labels {
    vec![("target".into(), name.into())]
}

impl PhaseMetrics {
    pub(super) fn register(metrics: &scold_metrics::Metrics) -> Self {
        let m = PhaseMetrics {
            phase: Family::default(),
            divert: Family::new_with_constructor(histogram),
            reset: Family::new_with_constructor(histogram),
            restore: Family::new_with_constructor(histogram),
        };
        metrics.with_registry(|r| {
            r.register(
                "target_phase",
                "1 for the phase each target is in now, 0 for the others",
                m.phase.clone(),
            );
            r.register(
                "divert_duration_seconds",
                "Time from the start of a divert to every step done (ALT published, routes up), by target",
                m.divert.clone(),
            );
            r.register(
                "reset_duration_seconds",
                "Time a proxy reset (failover) took, from the lost proxy to the new set in place, by target",
                m.reset.clone(),
            );
            r.register(
                "restore_duration_seconds",
                "Time from the all-clear to everything put back, by target",
                m.restore.clone(),
            );
        });
        m
    }

    /// Shows `target` in `now`.
    pub(super) fn set(&self, name: &str, now: Phase) {
        for p in Phase::ALL {
            self.phase
                .get_or_create(&vec![
                    ("target".into(), name.into()),
                    ("phase".into(), p.as_str().into()),
                ])
                .set(i64::from(p == now));
        }
    }

    /// `name` is driven no more: its phase series go (its duration histograms stay, the
    /// record of what happened).
    pub(super) fn forget(&self, name: &str) {
        for p in Phase::ALL {
            self.phase.remove(&vec![
                ("target".into(), name.into()),
                ("phase".into(), p.as_str().into()),
            ]);
        }
    }

    /// A phase change of `name` after `seconds` in `from`.
    pub(super) fn transition(&self, name: &str, from: Phase, to: Phase, seconds: f64) {
        self.set(name, to);
        let h = match (from, to) {
            (Phase::Diverting, Phase::Diverted) => &self.divert,
            (Phase::Resetting, Phase::Diverted) => &self.reset,
            (Phase::Restoring, Phase::Normal) => &self.restore,
            _ => return,
        };
        h.get_or_create(&target(name)).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_durations() {
        let metrics = scold_metrics::Metrics::new();
        let m = PhaseMetrics::register(&metrics);
        m.set("web", Phase::Normal);
        m.transition("web", Phase::Normal, Phase::Diverting, 100.0);
        m.transition("web", Phase::Diverting, Phase::Diverted, 0.3);
        m.transition("web", Phase::Resetting, Phase::Diverted, 0.7);
        let text = metrics.render();
        for want in [
            "# TYPE scold_target_phase gauge",
            "scold_target_phase{target=\"web\",phase=\"diverted\"} 1",
            "scold_target_phase{target=\"web\",phase=\"normal\"} 0",
            "# TYPE scold_divert_duration_seconds histogram",
            "scold_divert_duration_seconds_bucket{le=\"0.5\",target=\"web\"} 1",
            "scold_divert_duration_seconds_bucket{le=\"0.25\",target=\"web\"} 0",
            "scold_reset_duration_seconds_count{target=\"web\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // Normal -> diverting is no divert duration.
        assert!(text.contains("scold_divert_duration_seconds_count{target=\"web\"} 1"));
        // A target driven no more shows no phase.
        m.set("mail", Phase::Normal);
        m.forget("web");
        let text = metrics.render();
        assert!(
            !text.contains("scold_target_phase{target=\"web\""),
            "{text}"
        );
        assert!(text.contains("scold_target_phase{target=\"mail\",phase=\"normal\"} 1"));
    }
}
