//! The mutual-TLS control channel between two daemons.
//!
//! One TLS 1.3 connection carries requests both ways (each side numbers its own) and
//! their responses, in the frames of [`scold_proto::frame`]. The peer's identity comes
//! from its verified certificate; every incoming request passes the authorisation table
//! of [`scold_proto::control::authorize`] before a handler sees it. A refused handshake
//! or request is logged, counted, and answered with a typed refusal; the daemon keeps
//! serving everyone else.

use rustls::pki_types::CertificateDer;
use scold_daemon::{until_set, Door, Throttle};
use scold_metrics::Metrics;
use scold_pki::TlsIdentity;
use scold_proto::control::{authorize, Message, Refusal, RefusalReason, Reply, Request, Response};
use scold_proto::frame;
use scold_proto::identity::{Identity, Role};
use scold_proto::limits::{ConnLimits, Rate, TokenBucket};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How long a TLS handshake we start may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer that connected to us may take for its handshake: short, because a
/// connection that never completes one holds a place at the door meanwhile.
pub const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The default limits at a control listener's door: a node holds one connection, an
/// operator a few; the pool's proxies and a site's clients may share a network.
pub const DEFAULT_LIMITS: ConnLimits = ConnLimits::new(16, 256, 4096);
/// Default time a request waits for its response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} refused ({reason}): {source}")]
    Handshake {
        addr: String,
        reason: scold_pki::RefusalReason,
        source: std::io::Error,
    },
    #[error("peer certificate unusable: {0}")]
    Identity(String),
    #[error("the connection to {0} is closed")]
    Closed(String),
    #[error("{peer} did not answer {kind} within {timeout:?}")]
    Timeout {
        peer: String,
        kind: &'static str,
        timeout: Duration,
    },
    #[error("{peer} refused {kind}: {refusal}")]
    Refused {
        peer: String,
        kind: &'static str,
        refusal: Refusal,
    },
    #[error("{peer} failed {kind}: {message}")]
    Failed {
        peer: String,
        kind: &'static str,
        message: String,
    },
}

/// What a daemon does with authorised requests arriving on a channel.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: &Channel, request: Request) -> impl Future<Output = Response> + Send;

    /// Called once when a channel closes.
    fn closed(&self, _channel: &Channel) -> impl Future<Output = ()> + Send {
        async {}
    }
}

struct Inner {
    peer: Identity,
    /// The certificate chain the peer showed, to check again when the CRL changes.
    peer_chain: Vec<CertificateDer<'static>>,
    remote: SocketAddr,
    /// Ends the connection from our side.
    close: Arc<tokio::sync::Notify>,
    /// The listener's per-identity request limits (accepted connections only).
    limiter: Option<Arc<RequestLimiter>>,
    /// At most one log line a second for refused requests.
    refusal_log: Mutex<Throttle>,
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    metrics: Metrics,
    closed: watch::Receiver<bool>,
}

/// A handle to one live connection. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({} at {})", self.inner.peer, self.inner.remote)
    }
}

impl Channel {
    pub fn peer(&self) -> &Identity {
        &self.inner.peer
    }

    pub fn remote(&self) -> SocketAddr {
        self.inner.remote
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// The certificate chain the peer showed in the handshake.
    pub fn peer_chain(&self) -> &[CertificateDer<'static>] {
        &self.inner.peer_chain
    }

    /// Ends the connection (pending requests fail at once, the handler's `closed` runs).
    pub fn close(&self) {
        self.inner.close.notify_one();
    }

    /// Resolves when the connection has closed.
    pub async fn wait_closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Sends `request` and waits for its response.
    pub async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, ChannelError> {
        let kind = request.kind();
        let peer = self.inner.peer.to_string();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        let mut bytes = Vec::new();
        frame::encode(&Message::Request { id, request }.to_bytes(), &mut bytes);
        if self.inner.out.send(bytes).await.is_err() {
            self.forget(id);
            return Err(ChannelError::Closed(peer));
        }
        self.inner.metrics.message("out", kind);
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.forget(id);
                Err(ChannelError::Timeout {
                    peer,
                    kind,
                    timeout,
                })
            }
            Ok(Err(_)) => Err(ChannelError::Closed(peer)),
            Ok(Ok(Response::Ok { reply })) => Ok(reply),
            Ok(Ok(Response::Refused(refusal))) => Err(ChannelError::Refused {
                peer,
                kind,
                refusal,
            }),
            Ok(Ok(Response::Failed { message })) => Err(ChannelError::Failed {
                peer,
                kind,
                message,
            }),
        }
    }

    fn forget(&self, id: u64) {
        self.inner.pending.lock().expect("pending lock").remove(&id);
    }

    /// Runs the connection over an established stream until it closes. Returns the
    /// handle at once; the connection lives in spawned tasks.
    pub fn spawn<S, H>(
        stream: S,
        peer: Identity,
        peer_chain: Vec<CertificateDer<'static>>,
        remote: SocketAddr,
        handler: Arc<H>,
        metrics: Metrics,
        limiter: Option<Arc<RequestLimiter>>,
    ) -> Channel
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        H: Handler,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
        let (closed_tx, closed_rx) = watch::channel(false);
        let close = Arc::new(tokio::sync::Notify::new());
        let channel = Channel {
            inner: Arc::new(Inner {
                peer,
                peer_chain,
                remote,
                close: close.clone(),
                limiter,
                refusal_log: Mutex::new(Throttle::new(Duration::from_secs(1))),
                out: out_tx,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                metrics: metrics.clone(),
                closed: closed_rx,
            }),
        };
        metrics.open.inc();

        // Writer: one task owns the write half so frames never interleave.
        let writer_task = tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
                if out_rx.is_empty() && writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });

        let ch = channel.clone();
        tokio::spawn(async move {
            let mut decoder = frame::Decoder::default();
            let mut buf = vec![0u8; 16 * 1024];
            'read: loop {
                let n = tokio::select! {
                    r = reader.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    _ = close.notified() => break,
                };
                decoder.push(&buf[..n]);
                loop {
                    let body = match decoder.next_frame() {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            warn!(peer = %ch.peer(), remote = %ch.remote(), error = %e, "closing control connection: bad frame");
                            metrics.refusal("bad_frame");
                            break 'read;
                        }
                    };
                    match Message::from_bytes(&body) {
                        Ok(Message::Request { id, request }) => {
                            ch.dispatch(id, request, handler.clone());
                        }
                        Ok(Message::Response { id, response }) => {
                            let waiter = ch.inner.pending.lock().expect("pending lock").remove(&id);
                            if let Some(w) = waiter {
                                let _ = w.send(response);
                            } else {
                                debug!(peer = %ch.peer(), id, "late or unknown response dropped");
                            }
                        }
                        Err(e) => {
                            // Unparseable message: refuse it (id unknown, so 0) and go on;
                            // the framing is intact, so the connection can continue.
                            warn!(peer = %ch.peer(), error = %e, "refusing malformed control message");
                            metrics.refusal(RefusalReason::BadRequest.as_str());
                            ch.send_response(
                                0,
                                Response::Refused(Refusal::new(
                                    RefusalReason::BadRequest,
                                    e.to_string(),
                                )),
                            );
                        }
                    }
                }
            }
            let _ = closed_tx.send(true);
            // Fail every request still waiting, so callers do not wait for a timeout.
            ch.inner.pending.lock().expect("pending lock").clear();
            writer_task.abort();
            metrics.open.dec();
            handler.closed(&ch).await;
            debug!(peer = %ch.peer(), remote = %ch.remote(), "control connection closed");
        });
        channel
    }

    fn send_response(&self, id: u64, response: Response) {
        let mut bytes = Vec::new();
        frame::encode(&Message::Response { id, response }.to_bytes(), &mut bytes);
        // A full queue means the peer does not read; dropping the answer makes its
        // request time out, which is the right signal.
        let _ = self.inner.out.try_send(bytes);
    }

    fn dispatch<H: Handler>(&self, id: u64, request: Request, handler: Arc<H>) {
        let kind = request.kind();
        self.inner.metrics.message("in", kind);
        let refused = authorize(self.peer(), &request).err().or_else(|| {
            let l = self.inner.limiter.as_ref()?;
            l.admit(self.peer(), std::time::Instant::now())
                .err()
                .map(|why| Refusal::new(RefusalReason::Busy, why))
        });
        if let Some(refusal) = refused {
            self.inner.metrics.refusal(refusal.reason.as_str());
            let held = self
                .inner
                .refusal_log
                .lock()
                .expect("throttle lock")
                .allow(std::time::Instant::now());
            if let Some(held) = held {
                warn!(peer = %self.peer(), remote = %self.remote(), request = kind, reason = refusal.reason.as_str(), held_back = held, "refused: {}", refusal.message);
            }
            self.send_response(id, Response::Refused(refusal));
            return;
        }
        let ch = self.clone();
        tokio::spawn(async move {
            let response = handler.handle(&ch, request).await;
            if let Some(l) = &ch.inner.limiter {
                l.done(ch.peer());
            }
            if let Response::Refused(r) = &response {
                ch.inner.metrics.refusal(r.reason.as_str());
            }
            ch.send_response(id, response);
        });
    }
}

fn peer_chain_of(conn: &rustls::CommonState) -> Vec<CertificateDer<'static>> {
    conn.peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default()
}

fn identity_of(conn: &rustls::CommonState) -> Result<Identity, ChannelError> {
    scold_pki::peer_identity(conn).map_err(|e| ChannelError::Identity(e.to_string()))
}

/// Accepts control connections until `shutdown` flips to true. Each connection is
/// counted against `limits` before its handshake (per source, per network, in total); one that
/// would pass a limit is closed at once, counted in `scold_refusals_total{reason}` and
/// logged at most once a second.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<TlsIdentity>,
    handler: Arc<H>,
    metrics: Metrics,
    limits: ConnLimits,
    requests: Arc<RequestLimiter>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), scold_pki::PkiError> {
    // Roles that may send nothing here are refused in the handshake.
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls.server_config_for(&scold_proto::control::COORDINATOR_PEERS)?,
    );
    let door = Door::unprefixed("control port", limits, metrics.clone());
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_set(&mut shutdown) => return Ok(()),
        };
        let Some(pass) = door.enter(remote) else {
            continue;
        };
        let door = door.clone();
        let refuse = move |reason: &str, detail: &dyn std::fmt::Display| {
            door.refuse(remote, reason, detail);
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let metrics = metrics.clone();
        let limiter = requests.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(ACCEPT_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reason = scold_pki::refusal_reason_io(&e);
                        refuse(reason.as_str(), &e);
                        return;
                    }
                    Err(_) => {
                        refuse("handshake_timeout", &"the handshake timed out");
                        return;
                    }
                };
            let peer = match identity_of(tls.get_ref().1) {
                Ok(p) => p,
                Err(e) => {
                    refuse("bad_identity", &e);
                    return;
                }
            };
            info!(%remote, %peer, "control connection accepted");
            metrics.connection(peer.role.as_str());
            let chain = peer_chain_of(tls.get_ref().1);
            let ch = Channel::spawn(tls, peer, chain, remote, handler, metrics, Some(limiter));
            // The place at the door is held until the connection closes.
            ch.wait_closed().await;
            drop(pass);
        });
    }
}

/// The default per-identity request limits of a control listener: a node sends a
/// heartbeat a second or a few, an operator a handful of commands.
pub const DEFAULT_REQUEST_RATE: Rate = Rate {
    per_sec: 50.0,
    burst: 200.0,
};
/// Requests one identity may have open at once, over all its connections.
pub const DEFAULT_MAX_OPEN: usize = 32;

/// Per-identity request limits of a listener, over all of an identity's connections: a
/// rate (token bucket) and how many requests may be open at once. One certificate
/// holder cannot make the coordinator spend on it what everyone else needs.
pub struct RequestLimiter {
    rate: Rate,
    max_open: usize,
    state: Mutex<HashMap<Identity, (TokenBucket, usize)>>,
}

impl RequestLimiter {
    pub fn new(rate: Rate, max_open: usize) -> Self {
        RequestLimiter {
            rate,
            max_open,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `id` in, or says why not.
    fn admit(&self, id: &Identity, now: std::time::Instant) -> Result<(), String> {
        let mut st = self.state.lock().expect("limiter lock");
        let (bucket, open) = st
            .entry(id.clone())
            .or_insert_with(|| (TokenBucket::new(self.rate), 0));
        if *open >= self.max_open {
            return Err(format!(
                "{id} has {} requests open already; wait for their answers",
                self.max_open
            ));
        }
        if !bucket.take(now) {
            return Err(format!(
                "{id} sends more than {} requests a second; slow down",
                self.rate.per_sec
            ));
        }
        *open += 1;
        Ok(())
    }

    /// One request of `id` was answered.
    fn done(&self, id: &Identity) {
        if let Some((_, open)) = self.state.lock().expect("limiter lock").get_mut(id) {
            *open = open.saturating_sub(1);
        }
    }
}

/// Connects to a peer that must hold one of the `expected` roles.
pub async fn connect<H: Handler>(
    addr: SocketAddr,
    tls: &TlsIdentity,
    expected: &[Role],
    handler: Arc<H>,
    metrics: Metrics,
) -> Result<Channel, ChannelError> {
    let config = tls
        .client_config(expected)
        .map_err(|e| ChannelError::Identity(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect_err = |source| ChannelError::Connect {
        addr: addr.to_string(),
        source,
    };
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    // Peers are identified by SAN URI, not by name; the verifier ignores this name.
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(|source| {
            let reason = scold_pki::refusal_reason_io(&source);
            metrics.refusal(reason.as_str());
            ChannelError::Handshake {
                addr: addr.to_string(),
                reason,
                source,
            }
        })?;
    let peer = identity_of(stream.get_ref().1)?;
    metrics.connection(peer.role.as_str());
    let chain = peer_chain_of(stream.get_ref().1);
    Ok(Channel::spawn(
        stream, peer, chain, addr, handler, metrics, None,
    ))
}

/// A handler that refuses everything: for clients such as `scold ctl` that only send.
pub struct NoRequests;

impl Handler for NoRequests {
    async fn handle(&self, _from: &Channel, request: Request) -> Response {
        Response::Refused(Refusal::new(
            RefusalReason::Role,
            format!("this peer accepts no {} requests", request.kind()),
        ))
    }
}
