//! The door of a listener: a connection is counted against its source's, its network's
//! and the listener's limits ([`scold_proto::limits`]) before anything is spent on it,
//! and uncounted when its [`Pass`] is dropped. Refusals are logged at most once per
//! interval, with how many were not logged, so a flood cannot flood the log too.

use scold_metrics::Metrics;
use scold_proto::limits::{ConnLimits, ConnTable, LimitHit};
use std::fmt::Display;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One listener's connection table, shared by its accept loop and its connections.
#[derive(Clone)]
pub struct Gate {
    table: Arc<Mutex<ConnTable>>,
}

/// A counted connection; dropping it frees its place.
pub struct Pass {
    table: Arc<Mutex<ConnTable>>,
    ip: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.table.lock().expect("gate lock").close(self.ip);
    }
}

impl Gate {
    pub fn new(limits: ConnLimits) -> Self {
        Gate {
            table: Arc::new(Mutex::new(ConnTable::new(limits))),
        }
    }

    /// Counts a connection from `ip`, or says which limit it would pass.
    pub fn enter(&self, ip: IpAddr) -> Result<Pass, LimitHit> {
        self.table.lock().expect("gate lock").open(ip)?;
        Ok(Pass {
            table: self.table.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.table.lock().expect("gate lock").total()
    }

    /// New limits for connections that come from now on; held ones stay.
    pub fn set_limits(&self, limits: ConnLimits) {
        self.table.lock().expect("gate lock").set_limits(limits);
    }
}

/// At most one log line per interval; counts what it held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)`: log now, and say that `n` lines were held back since the last one;
    /// `None`: hold this one back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// The door of a daemon's public listener (the coordinator's control port, the proxy's
/// admission port, the client agent's push port): every connection is counted against
/// its source's, its network's and the listener's limits before a task or a TLS
/// handshake is spent on it, refusals are counted in `scold_refusals_total{reason}` and
/// logged at most once a second, so one host or one network cannot fill the port that
/// everyone else needs, nor the log. Cheap to clone into each connection's task.
#[derive(Clone)]
pub struct Door {
    listener: &'static str,
    /// Refusal reasons carry the listener's name (`admission_per_source`).
    prefixed: bool,
    gate: Gate,
    metrics: Option<Metrics>,
    log: Arc<Mutex<Throttle>>,
}

impl Door {
    /// A door named `listener` (the prefix of its refusal reasons, e.g. `admission`).
    pub fn new(listener: &'static str, limits: ConnLimits, metrics: Option<Metrics>) -> Door {
        Door {
            listener,
            prefixed: true,
            gate: Gate::new(limits),
            metrics,
            log: Arc::new(Mutex::new(Throttle::new(Duration::from_secs(1)))),
        }
    }

    /// A door whose refusal reasons are the bare ones (`per_source`, `revoked`): the
    /// control port's, whose reasons predate the other listeners.
    pub fn unprefixed(listener: &'static str, limits: ConnLimits, metrics: Metrics) -> Door {
        Door {
            prefixed: false,
            ..Door::new(listener, limits, Some(metrics))
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
        let reason = if self.prefixed {
            format!("{}_{reason}", self.listener)
        } else {
            reason.to_string()
        };
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

    /// New limits (a config reload) for connections that come from now on.
    pub fn set_limits(&self, limits: ConnLimits) {
        self.gate.set_limits(limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_frees_its_place_when_dropped() {
        let g = Gate::new(ConnLimits::new(1, 2, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let p = g.enter(a).unwrap();
        assert!(matches!(g.enter(a), Err(LimitHit::Source(1))));
        drop(p);
        assert_eq!(g.open(), 0);
        let _p = g.enter(a).unwrap();
    }

    #[test]
    fn new_limits_count_new_connections_and_keep_held_ones() {
        let d = Door::new("admission", ConnLimits::new(3, 10, 10), None);
        let a: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let held: Vec<_> = (0..3).filter_map(|_| d.enter(a)).collect();
        assert_eq!(held.len(), 3);
        d.set_limits(ConnLimits::new(1, 10, 10));
        assert!(d.enter(a).is_none(), "the tighter limit is not in force");
        assert_eq!(d.open(), 3, "a reload dropped held connections");
        drop(held);
        let one = d.enter(a);
        assert!(one.is_some());
        assert!(d.enter(a).is_none());
    }

    #[test]
    fn the_throttle_logs_once_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_millis(1001)), None);
    }

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
