//! Alert hooks: the coordinator posts what an operator gets paged for (alarm, divert,
//! proxy failover, restore, revocation) as JSON to each configured `[[webhook]]`, signed
//! with HMAC-SHA256 under the hook's secret, retried with backoff, and never in the way
//! of the control plane: an event is handed to the hook's queue without waiting, and a
//! full queue drops it (counted, logged at most every few seconds).
//!
//! A delivery is `POST <path>` with the body
//! `{"kind", "seq", "at_ms", "subject", "event", "detail", "phase"}` and the headers
//! `X-Scold-Event: <kind>`, `X-Scold-Delivery: <seq>` (the audit log's sequence
//! number: a receiver drops repeats by it) and `X-Scold-Signature: sha256=<hex>`, the
//! HMAC of the body. Any 2xx answer ends it; anything else is tried again after 0.5, 1,
//! 2, 4 s.

use crate::store::EventRecord;
use scold_proto::control::EventView;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What a hook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A target's divert began (its detector's or an operator's alarm).
    Alarm,
    /// A target is diverted: its indirect route is up and published.
    Divert,
    /// A proxy of a diverted target is being replaced (paper 4.4).
    Failover,
    /// A target is back on its main link.
    Restore,
    /// A node's certificate was found revoked or expired while connected.
    Revocation,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Alarm,
        Kind::Divert,
        Kind::Failover,
        Kind::Restore,
        Kind::Revocation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alarm => "alarm",
            Kind::Divert => "divert",
            Kind::Failover => "failover",
            Kind::Restore => "restore",
            Kind::Revocation => "revocation",
        }
    }
}

/// What kind of alert an audit event is, if any.
pub fn kind_of(ev: &EventRecord) -> Option<Kind> {
    match (ev.event.as_str(), ev.phase.as_deref()) {
        ("phase", Some("diverting")) => Some(Kind::Alarm),
        ("phase", Some("diverted")) if !ev.detail.starts_with("resetting") => Some(Kind::Divert),
        ("phase", Some("resetting")) => Some(Kind::Failover),
        ("phase", Some("normal")) => Some(Kind::Restore),
        ("health", _) if ev.detail.starts_with("revoked") => Some(Kind::Revocation),
        _ => None,
    }
}

fn all_kinds() -> Vec<Kind> {
    Kind::ALL.to_vec()
}
fn default_timeout_ms() -> u64 {
    2000
}

/// `[[webhook]]` of the coordinator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`. (For an https receiver, put a TLS-terminating relay on
    /// the coordinator's host in front of it.)
    pub url: String,
    /// The HMAC-SHA256 key the receiver checks `X-Scold-Signature` with.
    pub secret: String,
    /// What to post; default: every kind.
    #[serde(default = "all_kinds")]
    pub events: Vec<Kind>,
    /// Milliseconds one delivery attempt may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::str::FromStr for Url {
    type Err = String;
    fn from_str(s: &str) -> Result<Url, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            if s.starts_with("https://") {
                format!(
                    "{s}: https is not spoken here; point the hook at a TLS-terminating relay \
                     (http://127.0.0.1:PORT/...) that forwards to it"
                )
            } else {
                format!("{s}: write http://host[:port]/path")
            }
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad = || format!("{s}: write http://host[:port]/path");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || port == 0 || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Url {
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// The body a hook gets for one event: its kind, and the audit entry as `scold ctl
/// events` shows it (the same fields, flat in the JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Payload {
    pub kind: Kind,
    #[serde(flatten)]
    pub event: EventView,
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Waits before the 2nd, 3rd, ... attempt of a delivery.
const RETRY_WAITS: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// Events a hook's queue holds before new ones are dropped.
const QUEUE: usize = 1024;

struct Hook {
    url: String,
    kinds: Vec<Kind>,
    queue: mpsc::Sender<Payload>,
}

/// Counters of what the hooks did.
#[derive(Clone)]
struct Counters {
    outcome: scold_metrics::prometheus_client::metrics::family::Family<
        Vec<(&'static str, &'static str)>,
        scold_metrics::prometheus_client::metrics::counter::Counter,
    >,
}

impl Counters {
    fn count(&self, outcome: &'static str) {
        self.outcome
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }
}

/// The coordinator's hooks. Cheap to call from anywhere: [`Webhooks::offer`] never
/// waits.
#[derive(Clone, Default)]
pub struct Webhooks {
    hooks: Arc<Vec<Hook>>,
    counters: Option<Counters>,
    /// When a drop was last logged.
    dropped_log: Arc<Mutex<Option<Instant>>>,
}

impl Webhooks {
    /// Checks every hook's URL; an error names the hook.
    pub fn check(cfgs: &[WebhookConfig]) -> Result<(), String> {
        for (i, c) in cfgs.iter().enumerate() {
            c.url
                .parse::<Url>()
                .map_err(|e| format!("[[webhook]] #{}: url {e}", i + 1))?;
            if c.secret.len() < 16 {
                return Err(format!(
                    "[[webhook]] #{} ({}): secret is shorter than 16 bytes; use a long random one (e.g. `openssl rand -base64 32`)",
                    i + 1,
                    c.url
                ));
            }
        }
        Ok(())
    }

    /// Starts one delivery task per hook (needs a tokio runtime when there are hooks).
    pub fn start(cfgs: &[WebhookConfig], metrics: &scold_metrics::Metrics) -> Webhooks {
        if cfgs.is_empty() {
            return Webhooks::default();
        }
        let counters = Counters {
            outcome: Default::default(),
        };
        metrics.with_registry(|r| {
            r.register(
                "webhook_deliveries",
                "Webhook deliveries by outcome: delivered, failed (after every retry), dropped (queue full)",
                counters.outcome.clone(),
            )
        });
        let hooks = cfgs
            .iter()
            .filter_map(|c| {
                let url: Url = c.url.parse().ok()?;
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(c.clone(), url, rx, counters.clone()));
                info!(url = %c.url, events = ?c.events, "webhook configured");
                Some(Hook {
                    url: c.url.clone(),
                    kinds: c.events.clone(),
                    queue: tx,
                })
            })
            .collect();
        Webhooks {
            hooks: Arc::new(hooks),
            counters: Some(counters),
            dropped_log: Arc::default(),
        }
    }

    /// Hands the audit event `seq` to every hook that wants its kind; never waits.
    pub fn offer(&self, seq: u64, ev: &EventRecord) {
        if self.hooks.is_empty() {
            return;
        }
        let Some(kind) = kind_of(ev) else { return };
        let payload = Payload {
            kind,
            event: ev.clone().into_view(seq),
        };
        for h in self.hooks.iter().filter(|h| h.kinds.contains(&kind)) {
            if h.queue.try_send(payload.clone()).is_err() {
                if let Some(c) = &self.counters {
                    c.count("dropped");
                }
                let mut last = self.dropped_log.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(url = %h.url, kind = kind.as_str(), "webhook queue full; event dropped (is the receiver down?)");
                    *last = Some(Instant::now());
                }
            }
        }
    }
}

/// One hook's delivery loop: one event at a time, in order, each tried until answered
/// 2xx or out of retries.
async fn deliver(
    cfg: WebhookConfig,
    url: Url,
    mut rx: mpsc::Receiver<Payload>,
    counters: Counters,
) {
    let timeout = Duration::from_millis(cfg.timeout_ms.max(50));
    while let Some(p) = rx.recv().await {
        let body = match serde_json::to_vec(&p) {
            Ok(b) => b,
            Err(_) => continue,
        };
        let headers = vec![
            ("X-Scold-Event", p.kind.as_str().to_string()),
            ("X-Scold-Delivery", p.event.seq.to_string()),
            ("X-Scold-Signature", signature(&cfg.secret, &body)),
        ];
        let mut attempt = 0;
        loop {
            let (u, b, h) = (url.clone(), body.clone(), headers.clone());
            let r = tokio::task::spawn_blocking(move || post_once(&u, &h, &b, timeout))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(()) => {
                    counters.count("delivered");
                    break;
                }
                Err(e) if attempt < RETRY_WAITS.len() => {
                    warn!(url = %cfg.url, seq = p.event.seq, attempt = attempt + 1, error = %e, "webhook delivery failed; trying again");
                    tokio::time::sleep(RETRY_WAITS[attempt]).await;
                    attempt += 1;
                }
                Err(e) => {
                    warn!(url = %cfg.url, seq = p.event.seq, error = %e, "webhook delivery failed for good; event not delivered");
                    counters.count("failed");
                    break;
                }
            }
        }
    }
}

fn post_once(
    url: &Url,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{}: no address", url.host))?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let host = if url.port == 80 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    match crate::http::post(&s, &host, &url.path, headers, body, deadline)? {
        crate::http::Exchange::Answer(status, _, _) if (200..300).contains(&status) => Ok(()),
        crate::http::Exchange::Answer(status, text, _) => Err(format!(
            "answered HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )),
        crate::http::Exchange::Broken(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, phase: Option<&str>, detail: &str) -> EventRecord {
        EventRecord {
            at_ms: 1,
            subject: "web".into(),
            event: event.into(),
            detail: detail.into(),
            phase: phase.map(str::to_string),
        }
    }

    #[test]
    fn audit_events_map_to_alert_kinds() {
        let k = |e: &str, p: Option<&str>, d: &str| kind_of(&ev(e, p, d));
        assert_eq!(
            k("phase", Some("diverting"), "normal -> diverting"),
            Some(Kind::Alarm)
        );
        assert_eq!(
            k("phase", Some("diverted"), "diverting -> diverted"),
            Some(Kind::Divert)
        );
        assert_eq!(
            k("phase", Some("resetting"), "diverted -> resetting"),
            Some(Kind::Failover)
        );
        // The end of a reset is not a second divert.
        assert_eq!(k("phase", Some("diverted"), "resetting -> diverted"), None);
        assert_eq!(
            k("phase", Some("normal"), "restoring -> normal"),
            Some(Kind::Restore)
        );
        assert_eq!(
            k("health", None, "revoked (revoked)"),
            Some(Kind::Revocation)
        );
        assert_eq!(k("health", None, "down (silent)"), None);
        assert_eq!(k("registered", None, "from 1.2.3.4"), None);
    }

    #[test]
    fn urls() {
        let u: Url = "http://127.0.0.1:8080/hooks/scold".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/hooks/scold")
        );
        let u: Url = "http://alerts.example.net".parse().unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u: Url = "http://[::1]:9/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let e = "https://hooks.example.net/x".parse::<Url>().unwrap_err();
        assert!(e.contains("relay"), "{e}");
        for bad in [
            "ftp://x/",
            "http://:80/",
            "http://h:0/",
            "http://h:x/",
            "http://h/a b",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
