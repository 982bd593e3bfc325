//! The door of a listener: a connection is counted against its source's, its network's
//! and the listener's limits ([`scold_proto::limits`]) before anything is spent on it,
//! and uncounted when its [`Pass`] is dropped. Refusals are logged at most once per
//! interval, with how many were not logged, so a flood cannot flood the log too.

use scold_proto::limits::{ConnLimits, ConnTable, LimitHit};
use std::net::IpAddr;
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
    fn the_throttle_logs_once_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_millis(1001)), None);
    }
}
