//! Prometheus metrics of the SCOLD daemons, served at `/metrics`.
//!
//! One registry per daemon, with the control plane's counters (connections, messages
//! by type, refusals by reason, target phase changes) always present; a daemon adds
//! its own through [`Metrics::with_registry`].

#![forbid(unsafe_code)]

/// The metric types, for daemons that register their own.
pub use prometheus_client;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

type Labels = Vec<(String, String)>;

/// Counters every control-plane daemon keeps. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Accepted (authenticated) connections by peer role.
    pub connections: Family<Labels, Counter>,
    /// Connections open now.
    pub open: Gauge,
    /// Control messages by direction (`in`/`out`) and request type.
    pub messages: Family<Labels, Counter>,
    /// Refused handshakes and requests by reason.
    pub refusals: Family<Labels, Counter>,
    /// Target phase changes by `from` and `to`.
    pub transitions: Family<Labels, Counter>,
    /// 1 while the revocation list in force is past its next-update date.
    pub crl_expired: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scold");
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            connections: Family::default(),
            open: Gauge::default(),
            messages: Family::default(),
            refusals: Family::default(),
            transitions: Family::default(),
            crl_expired: Gauge::default(),
        };
        registry.register(
            "crl_expired",
            "1 while the revocation list in force is past its next-update date (revocations since then are unknown here)",
            m.crl_expired.clone(),
        );
        registry.register(
            "connections",
            "Authenticated control connections, by peer role",
            m.connections.clone(),
        );
        registry.register(
            "connections_open",
            "Control connections open now",
            m.open.clone(),
        );
        registry.register(
            "messages",
            "Control messages, by direction and type",
            m.messages.clone(),
        );
        registry.register(
            "refusals",
            "Refused handshakes and requests, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "transitions",
            "Target phase changes, by from and to phase",
            m.transitions.clone(),
        );
        *m.registry.lock().expect("metrics lock") = registry;
        m
    }

    pub fn connection(&self, role: &str) {
        self.connections.get_or_create(&l(&[("role", role)])).inc();
    }

    pub fn message(&self, direction: &str, kind: &str) {
        self.messages
            .get_or_create(&l(&[("direction", direction), ("type", kind)]))
            .inc();
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals.get_or_create(&l(&[("reason", reason)])).inc();
    }

    pub fn transition(&self, from: &str, to: &str) {
        self.transitions
            .get_or_create(&l(&[("from", from), ("to", to)]))
            .inc();
    }

    /// Lets a daemon register metrics of its own beside the common ones.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().expect("metrics lock"))
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock().expect("metrics lock"));
        out
    }

    /// Serves `/metrics` on `addr` until the task is dropped.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for metrics on {addr}; pick a free address in [metrics] listen")
        })?;
        self.serve_on(listener).await
    }

    /// Serves `/metrics` on a bound listener until the task is dropped.
    pub async fn serve_on(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        }
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = self.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        axum::serve(listener, app).await.context("metrics server")
    }
}

/// Moves `counter` up to `total`, a count kept elsewhere (an engine's or a filter's own
/// statistics) that only grows while its owner lives. A total below the counter means
/// the owner started over (a tunnel peer removed and added again): the counter cannot go
/// down, so it counts the new total on top, and `rate()` sees no negative step.
pub fn advance(counter: &Counter, total: u64, last: &mut u64) {
    let step = if total >= *last { total - *last } else { total };
    if step > 0 {
        counter.inc_by(step);
    }
    *last = total;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_follows_a_total_across_restarts() {
        let c: Counter = Counter::default();
        let mut last = 0;
        advance(&c, 10, &mut last);
        advance(&c, 15, &mut last);
        assert_eq!(c.get(), 15);
        // The owner started over at 0 and has counted 4 since.
        advance(&c, 4, &mut last);
        assert_eq!(c.get(), 19);
        advance(&c, 4, &mut last);
        assert_eq!(c.get(), 19);
    }

    #[test]
    fn renders_counters() {
        let m = Metrics::new();
        m.connection("proxy");
        m.message("in", "heartbeat");
        m.refusal("revoked");
        m.transition("normal", "diverting");
        let text = m.render();
        for want in [
            "scold_connections_total{role=\"proxy\"} 1",
            "scold_messages_total{direction=\"in\",type=\"heartbeat\"} 1",
            "scold_refusals_total{reason=\"revoked\"} 1",
            "scold_transitions_total{from=\"normal\",to=\"diverting\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
