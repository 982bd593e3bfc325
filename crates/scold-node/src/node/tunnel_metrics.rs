//! Per-tunnel traffic as Prometheus counters, read from the packet engine once a second.
//!
//! Every tunnel peer (a gateway, a proxy) has its own series, labelled by peer name and
//! encapsulation. A proxy's client sessions are peers too, one per admitted client: to
//! keep the number of series bounded by the consortium, not by the clients, they are
//! counted together under `peer="clients"` (per-client drops have their own series,
//! `scold_proxy_session_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use scold_proto::dataplane::{Counters, Stats};
use scold_tunnel::EngineHandle;
use std::collections::HashMap;
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// Peer names the proxy gives its client sessions.
const CLIENT_PREFIX: &str = "client-";

/// The series, registered in one daemon's registry.
#[derive(Clone, Default)]
pub struct TunnelMetrics {
    rx_packets: Family<Labels, Counter>,
    rx_bytes: Family<Labels, Counter>,
    tx_packets: Family<Labels, Counter>,
    tx_bytes: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    peers: Gauge,
    engine_dropped: Family<Labels, Counter>,
    engine_packets: Family<Labels, Counter>,
    send_errors: Counter,
}

/// The totals seen last, to count only what is new.
#[derive(Default)]
struct Seen {
    peers: HashMap<(String, String), Counters>,
    engine: [u64; 5],
    lanes: Vec<u64>,
}

fn step(now: u64, before: u64) -> u64 {
    // Below what was seen: the peer was removed and added again and counts from zero.
    if now >= before {
        now - before
    } else {
        now
    }
}

impl TunnelMetrics {
    pub fn register(metrics: &scold_metrics::Metrics) -> Self {
        let m = TunnelMetrics::default();
        metrics.with_registry(|r| {
            r.register(
                "tunnel_rx_packets",
                "Inner packets received from a tunnel peer, by peer and encapsulation",
                m.rx_packets.clone(),
            );
            r.register(
                "tunnel_rx_bytes",
                "Inner bytes received from a tunnel peer, by peer and encapsulation",
                m.rx_bytes.clone(),
            );
            r.register(
                "tunnel_tx_packets",
                "Inner packets sent into the tunnel to a peer, by peer and encapsulation",
                m.tx_packets.clone(),
            );
            r.register(
                "tunnel_tx_bytes",
                "Inner bytes sent into the tunnel to a peer, by peer and encapsulation",
                m.tx_bytes.clone(),
            );
            r.register(
                "tunnel_dropped_packets",
                "Packets from a tunnel peer that were dropped (spoofed source, destination not allowed, no route, failed authentication)",
                m.dropped.clone(),
            );
            r.register("tunnel_peers", "Tunnel peers now", m.peers.clone());
            r.register(
                "tunnel_engine_dropped_packets",
                "Packets the tunnel engine dropped before any peer, by reason",
                m.engine_dropped.clone(),
            );
            r.register(
                "tunnel_engine_packets",
                "Packets each packet-engine thread received (tunnel datagrams and TUN packets), by thread: how evenly the cores share the load",
                m.engine_packets.clone(),
            );
            r.register(
                "tunnel_send_errors",
                "Send errors towards tunnel peers (peer down: ICMP unreachable, no route)",
                m.send_errors.clone(),
            );
        });
        m
    }

    fn update(&self, stats: &Stats, seen: &mut Seen) {
        let mut now: HashMap<(String, String), Counters> = HashMap::new();
        for p in &stats.peers {
            let key = (p.name.clone(), p.encap.as_str().to_string());
            let before = seen.peers.get(&key).cloned().unwrap_or_default();
            let peer = if p.name.starts_with(CLIENT_PREFIX) {
                "clients"
            } else {
                p.name.as_str()
            };
            let labels: Labels = vec![
                ("peer".into(), peer.into()),
                ("encap".into(), key.1.clone()),
            ];
            let c = &p.counters;
            for (family, n, b) in [
                (&self.rx_packets, c.rx_packets, before.rx_packets),
                (&self.rx_bytes, c.rx_bytes, before.rx_bytes),
                (&self.tx_packets, c.tx_packets, before.tx_packets),
                (&self.tx_bytes, c.tx_bytes, before.tx_bytes),
                (&self.dropped, c.dropped, before.dropped),
            ] {
                family.get_or_create(&labels).inc_by(step(n, b));
            }
            now.insert(key, c.clone());
        }
        // A peer that is gone takes its series with it (client sessions share theirs).
        for (name, encap) in seen.peers.keys() {
            let still = now.keys().any(|(n, _)| n == name) || name.starts_with(CLIENT_PREFIX);
            if !still {
                let labels: Labels = vec![
                    ("peer".into(), name.clone()),
                    ("encap".into(), encap.clone()),
                ];
                for family in [
                    &self.rx_packets,
                    &self.rx_bytes,
                    &self.tx_packets,
                    &self.tx_bytes,
                    &self.dropped,
                ] {
                    family.remove(&labels);
                }
            }
        }
        seen.peers = now;
        self.peers.set(stats.peers.len() as i64);
        let totals = [
            stats.dropped_unknown_source,
            stats.dropped_truncated,
            stats.dropped_no_route,
            stats.dropped_too_big,
        ];
        for (i, reason) in ["unknown_source", "truncated", "no_route", "too_big"]
            .iter()
            .enumerate()
        {
            self.engine_dropped
                .get_or_create(&vec![("reason".into(), reason.to_string())])
                .inc_by(step(totals[i], seen.engine[i]));
            seen.engine[i] = totals[i];
        }
        self.send_errors
            .inc_by(step(stats.send_errors, seen.engine[4]));
        seen.engine[4] = stats.send_errors;
        seen.lanes.resize(stats.engine_packets.len(), 0);
        for (i, &n) in stats.engine_packets.iter().enumerate() {
            self.engine_packets
                .get_or_create(&vec![("engine".into(), i.to_string())])
                .inc_by(step(n, seen.lanes[i]));
            seen.lanes[i] = n;
        }
    }
}

/// Registers the tunnel series in `metrics` and keeps them current until the engine
/// stops.
pub fn spawn(
    engine: EngineHandle,
    metrics: &scold_metrics::Metrics,
) -> tokio::task::JoinHandle<()> {
    let m = TunnelMetrics::register(metrics);
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Ok(stats) = engine.call(|s| s.stats()).await else {
                return;
            };
            m.update(&stats, &mut seen);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use scold_proto::dataplane::{Encap, PeerStats};

    fn peer(name: &str, rx: u64) -> PeerStats {
        PeerStats {
            name: name.into(),
            address: "192.0.2.1".parse().unwrap(),
            encap: Encap::Wireguard,
            counters: Counters {
                rx_packets: rx,
                rx_bytes: rx * 100,
                ..Default::default()
            },
        }
    }

    #[test]
    fn counts_per_peer_and_clients_together() {
        let metrics = scold_metrics::Metrics::new();
        let m = TunnelMetrics::register(&metrics);
        let mut seen = Seen::default();
        let mut stats = Stats {
            peers: vec![peer("gw1", 5), peer("client-a", 2), peer("client-b", 3)],
            dropped_no_route: 7,
            engine_packets: vec![10, 4],
            ..Default::default()
        };
        m.update(&stats, &mut seen);
        // client-a leaves, gw1 counts on, client-c arrives.
        stats.peers = vec![peer("gw1", 9), peer("client-b", 4), peer("client-c", 1)];
        stats.engine_packets = vec![12, 9];
        m.update(&stats, &mut seen);
        let text = metrics.render();
        for want in [
            "# TYPE scold_tunnel_rx_packets counter",
            "scold_tunnel_rx_packets_total{peer=\"gw1\",encap=\"wireguard\"} 9",
            "scold_tunnel_rx_packets_total{peer=\"clients\",encap=\"wireguard\"} 7",
            "scold_tunnel_rx_bytes_total{peer=\"gw1\",encap=\"wireguard\"} 900",
            "scold_tunnel_engine_dropped_packets_total{reason=\"no_route\"} 7",
            "scold_tunnel_peers 3",
            "scold_tunnel_engine_packets_total{engine=\"0\"} 12",
            "scold_tunnel_engine_packets_total{engine=\"1\"} 9",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // gw1 removed: its series goes.
        stats.peers = vec![];
        m.update(&stats, &mut seen);
        assert!(!metrics.render().contains("peer=\"gw1\""));
    }
}
