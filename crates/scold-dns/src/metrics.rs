//! Prometheus counters of `scold dns` and `scold resolver`.
//!
//! The UDP workers count in plain local integers and add them to these shared
//! counters in batches, so the answer path does not touch a shared cache line per
//! query.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use scold_metrics::Metrics;

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// Counters of the authoritative server.
#[derive(Clone, Default)]
pub struct DnsMetrics {
    /// Answers, by path (`fast`: precompiled answers; `full`: signed requests, updates).
    pub answers: Family<Labels, Counter>,
    /// Requests dropped without an answer (responses, runts).
    pub dropped: Counter,
    /// Answers withheld (`drop`) or truncated (`slip`) by response rate limiting.
    pub rate_limited: Family<Labels, Counter>,
    /// UPDATE outcomes: applied, unchanged, refused, unsigned, bad_tsig, error.
    pub updates: Family<Labels, Counter>,
    /// Zone transfers by answer: full, incremental, up_to_date, udp_soa, refused.
    pub transfers: Family<Labels, Counter>,
    /// NOTIFY to secondaries by outcome: sent (each attempt), answered, refused,
    /// bad_signature, unanswered (given up after the retries).
    pub notifies: Family<Labels, Counter>,
}

impl DnsMetrics {
    /// Adds the counters to a daemon's registry.
    pub fn register(&self, m: &Metrics) {
        m.with_registry(|r| {
            r.register(
                "dns_answers",
                "DNS answers sent, by path",
                self.answers.clone(),
            );
            r.register(
                "dns_dropped",
                "DNS requests dropped without an answer",
                self.dropped.clone(),
            );
            r.register(
                "dns_rate_limited",
                "Answers withheld or truncated by response rate limiting",
                self.rate_limited.clone(),
            );
            r.register(
                "dns_updates",
                "RFC 2136 updates, by outcome",
                self.updates.clone(),
            );
            r.register(
                "dns_transfers",
                "Zone transfers (AXFR, IXFR) to secondaries, by answer",
                self.transfers.clone(),
            );
            r.register(
                "dns_notifies",
                "NOTIFY messages to secondaries, by outcome",
                self.notifies.clone(),
            );
        });
    }

    pub fn answer(&self, path: &str, n: u64) {
        if n > 0 {
            self.answers.get_or_create(&label("path", path)).inc_by(n);
        }
    }

    pub fn limited(&self, action: &str, n: u64) {
        if n > 0 {
            self.rate_limited
                .get_or_create(&label("action", action))
                .inc_by(n);
        }
    }

    pub fn update(&self, outcome: &str) {
        self.updates.get_or_create(&label("outcome", outcome)).inc();
    }

    pub fn transfer(&self, answer: &str) {
        self.transfers.get_or_create(&label("answer", answer)).inc();
    }

    pub fn notify(&self, outcome: &str) {
        self.notifies
            .get_or_create(&label("outcome", outcome))
            .inc();
    }
}

/// What one UDP worker counted since its last flush.
#[derive(Default)]
pub(crate) struct LocalCounts {
    pub fast: u64,
    pub full: u64,
    pub dropped: u64,
    pub limited: u64,
    pub slipped: u64,
    pending: u32,
}

impl LocalCounts {
    /// Counts one request and flushes every 64.
    pub fn tick(&mut self, m: &DnsMetrics) {
        self.pending += 1;
        if self.pending >= 64 {
            self.flush(m);
        }
    }

    pub fn flush(&mut self, m: &DnsMetrics) {
        m.answer("fast", self.fast);
        m.answer("full", self.full);
        if self.dropped > 0 {
            m.dropped.inc_by(self.dropped);
        }
        m.limited("drop", self.limited);
        m.limited("slip", self.slipped);
        *self = LocalCounts::default();
    }
}

/// Counters of the caching resolver.
#[derive(Clone, Default)]
pub struct ResolverMetrics {
    /// Answers, by source: `cache` or `upstream`; `failed` when no upstream answered.
    pub answers: Family<Labels, Counter>,
    /// NOTIFY messages, by outcome: `flushed`, `unsigned`, `bad_tsig`.
    pub notify: Family<Labels, Counter>,
}

impl ResolverMetrics {
    pub fn register(&self, m: &Metrics) {
        m.with_registry(|r| {
            r.register(
                "resolver_answers",
                "Resolver answers, by source (cache, upstream, failed)",
                self.answers.clone(),
            );
            r.register(
                "resolver_notify",
                "NOTIFY messages, by outcome",
                self.notify.clone(),
            );
        });
    }

    pub fn answer(&self, source: &str) {
        self.answers.get_or_create(&label("source", source)).inc();
    }

    pub fn notify(&self, outcome: &str) {
        self.notify.get_or_create(&label("outcome", outcome)).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counts_reach_the_registry() {
        let m = Metrics::new();
        let d = DnsMetrics::default();
        d.register(&m);
        let mut l = LocalCounts::default();
        for _ in 0..70 {
            l.fast += 1;
            l.tick(&d);
        }
        let text = m.render();
        assert!(
            text.contains("scold_dns_answers_total{path=\"fast\"} 64"),
            "{text}"
        );
        l.flush(&d);
        d.update("applied");
        let text = m.render();
        assert!(
            text.contains("scold_dns_answers_total{path=\"fast\"} 70"),
            "{text}"
        );
        assert!(
            text.contains("scold_dns_updates_total{outcome=\"applied\"} 1"),
            "{text}"
        );
    }
}
