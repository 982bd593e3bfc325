//! The coordinator's read-only status page (`[admin]`): each target's phase, ALT set and
//! timeline (alarm, divert, failovers, restore), each proxy's health and the load its
//! heartbeats report, live over server-sent events.
//!
//! The page shows what `scold ctl status` shows: the same [`StatusReport`] and
//! [`EventView`]s, as JSON, rendered in the browser by a script embedded in the binary
//! (no external fetches). Nothing on it changes state: every route is a GET.
//!
//! Who gets in: over HTTPS (the default) only a client with an operator certificate of
//! the consortium CA (refused in the TLS handshake otherwise, as on the control port);
//! in plain HTTP, which the config allows on a loopback address only, whoever can reach
//! that address on this host, and only under a loopback `Host` name (a page of another
//! site that rebinds its name to 127.0.0.1 gets nothing). Every connection passes the
//! listener's door (per source, per network, in total) before any handshake, has 3 s
//! for its TLS handshake and 5 s for each request's head, which may hold 16 KiB.

use super::*;
use crate::config::AdminSection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use scold_daemon::Door;
use serde::Serialize;
use std::collections::HashSet;
use tokio::sync::watch;

const INDEX: &str = include_str!("status_page/index.html");
const SCRIPT: &str = include_str!("status_page/status.js");
const STYLE: &str = include_str!("status_page/status.css");

/// How often the published view is compared with the coordinator's state.
const LIVE_EVERY: Duration = Duration::from_millis(200);
/// How often the audit log is read again when no state changed.
const EVENTS_EVERY: Duration = Duration::from_secs(2);
/// The newest audit events the timeline is taken from.
const TIMELINE_SCAN: usize = 500;
/// A TLS handshake must be done in this long.
const HANDSHAKE: Duration = Duration::from_secs(3);
/// A request's head must arrive in this long.
const HEADER_READ: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's buffer); larger ones get 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Headers one request may carry.
const MAX_HEADERS: usize = 32;

const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// What the page shows: the coordinator's status report and the targets' timelines.
#[derive(Debug, Clone, Serialize)]
pub struct PageData {
    /// The coordinator's identity.
    pub coordinator: String,
    /// Unix time (ms) of this view.
    pub at_ms: u64,
    /// Targets, proxies (with their reported load), gateways; its `events` are empty
    /// (see `timeline`).
    pub status: StatusReport,
    /// Audit events about the targets (alarms, phase changes, proxies lost and
    /// refilled, restores) and the proxies' health changes, oldest first.
    pub timeline: Vec<EventView>,
}

impl Coordinator {
    fn page_status(&self) -> Result<StatusReport, Refusal> {
        self.status(0)
    }

    fn page_timeline(&self, status: &StatusReport) -> Result<Vec<EventView>, Refusal> {
        let targets: HashSet<&str> = status.targets.iter().map(|t| t.name.as_str()).collect();
        let shown = |subject: &str, event: &str| {
            (targets.contains(subject) && event != "step_done")
                || (subject.starts_with("proxy/") && event == "health")
        };
        Ok(self
            .store
            .events(TIMELINE_SCAN)
            .map_err(|e| Refusal::new(RefusalReason::Unavailable, e.to_string()))?
            .into_iter()
            .filter(|(_, e)| shown(&e.subject, &e.event))
            .map(|(seq, e)| e.into_view(seq))
            .collect())
    }
}

/// Keeps the published page view current: the in-memory status every [`LIVE_EVERY`],
/// the audit log when the status changed or every [`EVENTS_EVERY`]. One reader of the
/// state for every open page.
async fn publish(c: Arc<Coordinator>, me: String, tx: watch::Sender<Arc<str>>) {
    let mut tick = tokio::time::interval(LIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut timeline = Vec::new();
    let mut events_read: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let status = match c.page_status() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "status page: cannot read the coordinator's status");
                continue;
            }
        };
        let status_json = serde_json::to_string(&status).unwrap_or_default();
        let changed = status_json != last_status;
        if changed || events_read.is_none_or(|t| t.elapsed() >= EVENTS_EVERY) {
            match c.page_timeline(&status) {
                Ok(t) => timeline = t,
                Err(e) => warn!(error = %e, "status page: cannot read the audit log"),
            }
            events_read = Some(std::time::Instant::now());
        }
        last_status = status_json;
        let page = PageData {
            coordinator: me.clone(),
            at_ms: now_ms(),
            status,
            timeline: timeline.clone(),
        };
        let json: Arc<str> = serde_json::to_string(&page).unwrap_or_default().into();
        // Subscribers wake only when something other than the clock changed.
        tx.send_if_modified(|old| {
            let same = strip_clock(old) == strip_clock(&json);
            if !same {
                *old = json.clone();
            }
            !same
        });
    }
}

/// The view without its `at_ms` field (the only part that changes every time).
fn strip_clock(json: &str) -> &str {
    json.split_once(",\"status\":")
        .map_or(json, |(_, rest)| rest)
}

#[derive(Clone)]
struct Shared {
    live: watch::Receiver<Arc<str>>,
    /// Plain HTTP on loopback: requests must name a loopback host.
    plain: bool,
}

/// Plain HTTP answers only requests for a loopback host: a browser sends the name it
/// resolved, so a foreign page whose name an attacker points at 127.0.0.1 (DNS
/// rebinding) is refused.
fn host_allowed(shared: &Shared, headers: &HeaderMap) -> bool {
    if !shared.plain {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(a, _)| a),
        None => host.rsplit_once(':').map_or(host, |(a, _)| a),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|a: IpAddr| a.is_loopback())
}

fn with_headers(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (k, v) in SECURITY_HEADERS {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn misdirected() -> Response {
    with_headers(
        StatusCode::MISDIRECTED_REQUEST,
        "text/plain; charset=utf-8",
        "this status page answers only requests for a loopback host (127.0.0.1, [::1], localhost)\n"
            .into(),
    )
}

async fn asset(
    State(s): State<Shared>,
    headers: HeaderMap,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    if !host_allowed(&s, &headers) {
        return misdirected();
    }
    with_headers(StatusCode::OK, content_type, body.to_string())
}

async fn status_json(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !host_allowed(&s, &headers) {
        return misdirected();
    }
    let body = s.live.borrow().to_string();
    with_headers(StatusCode::OK, "application/json", body)
}

async fn live(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !host_allowed(&s, &headers) {
        return misdirected();
    }
    let stream = futures::stream::unfold((s.live.clone(), true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = rx.borrow_and_update().clone();
        let ev = SseEvent::default().event("status").data(&*data);
        Some((Ok::<_, std::convert::Infallible>(ev), (rx, false)))
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response();
    for (k, v) in SECURITY_HEADERS {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}

fn router(shared: Shared) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/",
            get(|s, h| asset(s, h, "text/html; charset=utf-8", INDEX)),
        )
        .route(
            "/status.js",
            get(|s, h| asset(s, h, "text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/status.css",
            get(|s, h| asset(s, h, "text/css; charset=utf-8", STYLE)),
        )
        .route("/api/status", get(status_json))
        .route("/api/live", get(live))
        .with_state(shared)
}

/// Binds the status page's listener (a busy or wrong address fails the start).
pub(super) async fn bind(section: &AdminSection) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(section.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the status page on {}; change [admin] listen",
                section.listen
            )
        })
}

/// Serves the status page on `listener` until `shutdown` flips: mutual TLS with operator
/// certificates when `tls` is given, plain HTTP otherwise (the config allows that on
/// loopback only).
pub(super) async fn serve(
    c: Arc<Coordinator>,
    section: AdminSection,
    tls: Option<Arc<scold_pki::TlsIdentity>>,
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let acceptor = match &tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            t.server_config_for(&[Role::Operator])
                .context("the status page's TLS configuration")?,
        )),
        None => None,
    };
    let me = tls
        .as_ref()
        .map(|t| t.identity().to_string())
        .unwrap_or_else(|| "coordinator".into());
    let door = Arc::new(Door::new("admin", section.connections, Some(metrics)));
    let (tx, rx) = watch::channel::<Arc<str>>(Arc::from("{}"));
    let publisher = tokio::spawn(publish(c.clone(), me, tx));
    let app = router(Shared {
        live: rx,
        plain: acceptor.is_none(),
    });
    info!(
        listen = %listener.local_addr()?,
        tls = acceptor.is_some(),
        "status page listening"
    );
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "status page: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = scold_daemon::until_set(&mut shutdown) => break,
        };
        let Some(pass) = door.enter(peer) else {
            continue;
        };
        let (app, acceptor, door, mut stop) = (
            app.clone(),
            acceptor.clone(),
            door.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _pass = pass;
            let served = async {
                match acceptor {
                    None => serve_http(tcp, app).await,
                    Some(acceptor) => {
                        let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return door.refuse(peer, "tls", &e),
                            Err(_) => {
                                return door.refuse(
                                    peer,
                                    "handshake_timeout",
                                    &"TLS handshake timed out",
                                )
                            }
                        };
                        // The handshake already refused every other role; checked again
                        // here so the page never serves without an operator identity.
                        match scold_pki::peer_identity(tls.get_ref().1) {
                            Ok(id) if id.role == Role::Operator => {
                                tracing::debug!(%peer, operator = %id, "status page: operator connected");
                                serve_http(tls, app).await
                            }
                            Ok(id) => door.refuse(peer, "role", &format!("{id} is no operator")),
                            Err(e) => door.refuse(peer, "identity", &e),
                        }
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                _ = scold_daemon::until_set(&mut stop) => {}
            }
        });
    }
    publisher.abort();
    Ok(())
}

async fn serve_http<IO>(io: IO, app: axum::Router)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    if let Err(e) = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
    {
        tracing::debug!(error = %e, "status page connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(plain: bool) -> Shared {
        Shared {
            live: watch::channel::<Arc<str>>(Arc::from("{}")).1,
            plain,
        }
    }

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn plain_http_answers_loopback_hosts_only() {
        let s = shared(true);
        for ok in [
            "127.0.0.1:7880",
            "127.0.0.1",
            "[::1]:7880",
            "localhost:7880",
            "LOCALHOST",
        ] {
            assert!(host_allowed(&s, &host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7880",
            "10.0.0.1:7880",
            "127.0.0.1.evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!host_allowed(&s, &host(bad)), "{bad}");
        }
        assert!(!host_allowed(&s, &HeaderMap::new()), "no Host header");
        // Over mutual TLS the certificate is the check.
        assert!(host_allowed(
            &shared(false),
            &host("scold-coordinator.example")
        ));
    }

    #[test]
    fn the_clock_alone_is_no_change() {
        let a = r#"{"coordinator":"c","at_ms":1,"status":{"targets":[]},"timeline":[]}"#;
        let b = r#"{"coordinator":"c","at_ms":2,"status":{"targets":[]},"timeline":[]}"#;
        let c = r#"{"coordinator":"c","at_ms":2,"status":{"targets":[1]},"timeline":[]}"#;
        assert_eq!(strip_clock(a), strip_clock(b));
        assert_ne!(strip_clock(b), strip_clock(c));
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        // The SVG namespace is a name, not an address fetched.
        let script = SCRIPT.replace("\"http://www.w3.org/2000/svg\"", "SVG");
        for (name, text) in [("index", INDEX), ("script", &*script), ("style", STYLE)] {
            for bad in [
                "http:",
                "https:",
                "//",
                "innerHTML",
                "outerHTML",
                "eval(",
                "@import",
            ] {
                let code: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                assert!(!code.contains(bad), "{name} contains {bad}");
            }
        }
        assert!(INDEX.contains("src=\"/status.js\"") && INDEX.contains("href=\"/status.css\""));
    }
}
