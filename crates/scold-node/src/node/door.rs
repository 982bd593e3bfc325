//! The door of a node's public listener (the proxy's admission port, the client agent's
//! push port): every connection is counted against its source's, its network's and the
//! listener's limits before a task or a TLS handshake is spent on it, refusals are
//! counted in `scold_refusals_total{reason}` under the listener's name and logged at
//! most once a second, so one host or one network cannot fill the port that everyone
//! else needs, nor the log.

use scold_daemon::{Gate, Pass, Throttle};
use scold_metrics::Metrics;
use scold_proto::limits::ConnLimits;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One listener's door; cheap to clone into each connection's task.
#[derive(Clone)]
pub struct Door {
    listener: &'static str,
    gate: Gate,
    metrics: Option<Metrics>,
    log: Arc<Mutex<Throttle>>,
}

impl Door {
    /// A door named `listener` (the prefix of its refusal reasons, e.g. `admission`).
    pub fn new(listener: &'static str, limits: ConnLimits, metrics: Option<Metrics>) -> Door {
        Door {
            listener,
            gate: Gate::new(limits),
            metrics,
            log: Arc::new(Mutex::new(Throttle::new(Duration::from_secs(1)))),
        }
    }

    /// Counts a connection from `peer`; `None` (refused, counted and maybe logged) when it
    /// would pass a limit. Hold the pass for the connection's life.
    pub fn enter(&self, peer: SocketAddr) -> Option<Pass> {
        match self.gate.enter(peer.ip()) {
            Ok(p) => Some(p),
            Err(hit) => {
                self.refuse(peer, hit.as_str(), &hit);
                None
            }
        }
    }

    /// Counts and (at most once a second) logs a refused connection from `peer`.
    pub fn refuse(&self, peer: SocketAddr, reason: &str, detail: &dyn Display) {
        let reason = format!("{}_{reason}", self.listener);
        if let Some(m) = &self.metrics {
            m.refusal(&reason);
        }
        let held = self.log.lock().expect("door log").allow(Instant::now());
        if let Some(held) = held {
            tracing::warn!(%peer, listener = self.listener, %reason, held_back = held, "{} refused: {detail}", self.listener);
        }
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.gate.open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_fill_the_door_and_refusals_are_counted_by_reason() {
        let m = Metrics::new();
        let d = Door::new("admission", ConnLimits::new(2, 3, 10), Some(m.clone()));
        let a: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let passes: Vec<_> = (0..5).filter_map(|_| d.enter(a)).collect();
        assert_eq!(passes.len(), 2);
        // The same /24 has one place left; another network is not touched.
        assert!(d.enter("192.0.2.8:1".parse().unwrap()).is_some_and(|p| {
            drop(p);
            true
        }));
        let held = d.enter("192.0.2.9:1".parse().unwrap()).unwrap();
        assert!(d.enter("192.0.2.10:1".parse().unwrap()).is_none());
        assert!(d.enter("198.51.100.1:1".parse().unwrap()).is_some());
        drop(held);
        drop(passes);
        assert_eq!(d.open(), 0);
        let text = m.render();
        assert!(
            text.contains("reason=\"admission_per_source\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("reason=\"admission_per_prefix\"} 1"),
            "{text}"
        );
    }
}
