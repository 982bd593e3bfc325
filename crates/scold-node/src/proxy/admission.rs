//! The proxy's admission server (scheme 4.1): TLS 1.3 with the proxy's consortium
//! certificate, one task per connection, each request judged by the sans-IO
//! [`scold_proto::admission::Admissions`] and applied through the proxy's command channel
//! before it is answered; drain notices to every open connection; session leases.

use crate::node::cookie::{Challenger, Pending};
use crate::node::{CommandReceiver, CommandRequest};
use scold_daemon::Door;
use scold_pki::{Role, TlsIdentity, TlsPaths};
use scold_proto::admission::{
    arrivals, Admissions, AdmitRefusal, ClientMessage, ConnId, Drain, ProxyMessage, ProxyOffer,
    DEFAULT_PORT, MAX_TARGETS,
};
use scold_proto::dataplane::{Command, Encap, Prefix, PublicKey, Reply};
use scold_proto::frame::{edge_decoder as decoder, encode_message as encode, next_message};
use scold_proto::limits::ConnLimits;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_max_clients() -> usize {
    4096
}
fn default_max_clients_per_prefix() -> usize {
    64
}
fn default_lease() -> u64 {
    300
}
fn default_idle() -> u64 {
    30
}
fn default_connections() -> ConnLimits {
    DEFAULT_CONNECTIONS
}
fn default_handshake_ms() -> u64 {
    3000
}
fn default_hello() -> u64 {
    5
}
fn default_cookie_after() -> usize {
    DEFAULT_COOKIE_AFTER
}

/// Connections not yet admitted (in their TLS handshake or waiting for their first
/// request) from which on the admission port is under load and spends handshakes only
/// on clients that show a cookie. Far above what clients reconnecting at once after a
/// failover hold for the few milliseconds of a handshake, far below the door's total.
pub const DEFAULT_COOKIE_AFTER: usize = 64;

/// Admission connections one address, one /24 (/56) and everyone may hold: a client
/// agent keeps one connection to a proxy (two while it reconnects), a site's resolver
/// network holds a few dozen agents at most.
pub const DEFAULT_CONNECTIONS: ConnLimits = ConnLimits::new(8, 64, 1024);

/// `[admission]` of the proxy config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    /// TLS listener for client agents.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The consortium CA certificate; the proxy's certificate (role proxy) and key.
    /// Relative paths are taken from the config file's directory.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// The tunnel address announced to clients; default: the address each client
    /// connected to (one of the proxy's ALT addresses).
    #[serde(default)]
    pub tunnel_address: Option<IpAddr>,
    /// Targets this proxy admits clients to; empty: any.
    #[serde(default)]
    pub allow: Vec<Prefix>,
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Sessions one network (an IPv4 /24, an IPv6 /56) may hold of `max_clients`.
    #[serde(default = "default_max_clients_per_prefix")]
    pub max_clients_per_prefix: usize,
    /// Seconds a session outlives its client's last admission connection.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Seconds of silence after which an admitted client's connection is closed (its
    /// probes renew it).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Seconds a connection that holds no session may stay silent before it must send
    /// its admission or a probe: a handshake alone does not buy a place for long.
    #[serde(default = "default_hello")]
    pub hello_timeout_secs: u64,
    /// Milliseconds a TLS handshake may take; counted from the TCP accept.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    /// Connections per source address, per network (/24, /56) and in total, counted
    /// before the TLS handshake; more are closed at once.
    #[serde(default = "default_connections")]
    pub connections: ConnLimits,
    /// Under load (this many connections or more not yet admitted: in their TLS
    /// handshake or waiting for their first request) a connection gets a TLS handshake
    /// only with a valid cookie; any other gets a cookie reply and is closed at once.
    /// 0: always demand a cookie.
    #[serde(default = "default_cookie_after")]
    pub cookie_after: usize,
}

impl AdmissionSection {
    /// An `[admission]` table with the consortium CA and the proxy's certificate and
    /// key, every other key at its default.
    pub fn new(ca: PathBuf, cert: PathBuf, key: PathBuf) -> AdmissionSection {
        AdmissionSection {
            listen: default_listen(),
            ca,
            cert,
            key,
            crl: None,
            tunnel_address: None,
            allow: Vec::new(),
            max_clients: default_max_clients(),
            max_clients_per_prefix: default_max_clients_per_prefix(),
            lease_secs: default_lease(),
            idle_timeout_secs: default_idle(),
            hello_timeout_secs: default_hello(),
            handshake_timeout_ms: default_handshake_ms(),
            connections: default_connections(),
            cookie_after: default_cookie_after(),
        }
    }
}

/// What the admission port tells the proxy's self-defence: which port it is and how many
/// connections its listener has accepted, so a burst of connections is set down to
/// admission, not taken for a flood of the link
/// ([`scold_filter::selfdefence::AdmissionExcuse`]). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AdmissionTap {
    /// The admission port; None without `[admission]`.
    pub port: Option<u16>,
    accepted: Arc<AtomicU64>,
}

impl AdmissionTap {
    pub fn new(cfg: &crate::proxy::Config) -> AdmissionTap {
        AdmissionTap {
            port: cfg.admission.as_ref().map(|a| a.listen.port()),
            accepted: Arc::default(),
        }
    }

    /// Connections the listener has accepted so far, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Stops the admission server when dropped.
#[derive(Default)]
pub struct AdmissionGuard {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where reloaded limits go (with an `[admission]` table).
    pub live: Option<AdmissionLive>,
}

/// The running admission port's door and cookie threshold.
#[derive(Clone)]
pub struct AdmissionLive {
    door: Door,
    challenger: Arc<Challenger>,
}

impl AdmissionLive {
    /// Applies the limits of a reloaded `[admission]` table: connections held now stay,
    /// new ones meet the new limits.
    pub fn apply(&self, a: &AdmissionSection) {
        self.door.set_limits(a.connections);
        self.challenger.set_after(a.cookie_after);
        tracing::info!(connections = ?a.connections, cookie_after = a.cookie_after, "admission: new limits in force");
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Longest wait for the data plane to apply a session, or for an answer to be written.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the proxy waits for its data plane's counters when it answers a probe: a
/// busy command feed (a push in progress) must not make the answer late.
const PROBE_STATS_TIMEOUT: Duration = Duration::from_millis(150);
/// How long one read of the counters serves every probe (many clients probe at once).
const PROBE_STATS_FRESH: Duration = Duration::from_millis(50);

/// Tunnel packets that arrived per client outer address, and when they were read.
type Arrivals = Option<(Instant, Arc<HashMap<IpAddr, u64>>)>;

struct Server {
    offer: ProxyOffer,
    state: Mutex<Admissions>,
    commands: mpsc::Sender<CommandRequest>,
    idle: Duration,
    /// How long a connection without a session may stay silent.
    hello: Duration,
    arrivals: Mutex<Arrivals>,
    /// Whether this proxy asks its clients to move (set by its self-defence).
    drain: watch::Receiver<Drain>,
    /// The id of the next admission connection.
    next_conn: AtomicU64,
}

impl Server {
    async fn apply(&self, cmd: Command) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let kind = cmd.kind();
        self.commands
            .send((cmd, tx))
            .await
            .map_err(|_| "the proxy's data plane has stopped".to_string())?;
        match tokio::time::timeout(STEP_TIMEOUT, rx).await {
            Ok(Ok(Reply::Refused { code, message })) => {
                Err(format!("data plane refused {kind} ({code:?}): {message}"))
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("the proxy's data plane dropped the command".into()),
            Err(_) => Err(format!("the data plane did not apply {kind} in time")),
        }
    }

    /// The tunnel packets that arrived from `client` (kept or dropped), from the data
    /// plane's counters; None when it has no session for `client` or did not answer
    /// within [`PROBE_STATS_TIMEOUT`].
    async fn arrived(&self, client: IpAddr) -> Option<u64> {
        let mut cache = self.arrivals.lock().await;
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PROBE_STATS_FRESH);
        if !fresh {
            let (tx, rx) = oneshot::channel();
            // A full feed means a busy data plane: answer without counters.
            self.commands.try_send((Command::GetStats, tx)).ok()?;
            match tokio::time::timeout(PROBE_STATS_TIMEOUT, rx).await {
                Ok(Ok(Reply::Stats(stats))) => {
                    let map = arrivals(&stats);
                    *cache = Some((Instant::now(), Arc::new(map)));
                }
                _ => return None,
            }
        }
        cache.as_ref().and_then(|(_, m)| m.get(&client).copied())
    }

    async fn handle(
        &self,
        client: IpAddr,
        conn: ConnId,
        local: IpAddr,
        req: ClientMessage,
    ) -> ProxyMessage {
        match req {
            ClientMessage::Ping { seq } => ProxyMessage::Pong {
                seq,
                arrived: self.arrived(client).await,
                draining: self.drain.borrow().draining,
            },
            ClientMessage::Admit(a) => {
                let mut st = self.state.lock().await;
                let (plan, admitted) = match st.plan_admit(client, conn, local, &a, &self.offer) {
                    Ok(p) => p,
                    Err((code, message)) => {
                        tracing::info!(%client, ?code, %message, "admission refused");
                        return ProxyMessage::Refused { code, message };
                    }
                };
                let was_new = st.targets(client).is_empty();
                if let Err(message) = self.apply(plan.command.clone()).await {
                    tracing::warn!(%client, %message, "admission failed");
                    return ProxyMessage::Refused {
                        code: AdmitRefusal::System,
                        message,
                    };
                }
                st.commit(plan);
                if was_new {
                    st.connected(client);
                }
                tracing::info!(%client, encap = %a.encap, targets = ?admitted.targets, "client admitted");
                ProxyMessage::Admitted(admitted)
            }
            ClientMessage::Release { targets } => {
                if targets.len() > MAX_TARGETS {
                    return ProxyMessage::Refused {
                        code: AdmitRefusal::BadRequest,
                        message: format!("at most {MAX_TARGETS} targets per request"),
                    };
                }
                let mut st = self.state.lock().await;
                if let Some(plan) = st.plan_release(client, Some(conn), &targets) {
                    if let Err(message) = self.apply(plan.command.clone()).await {
                        return ProxyMessage::Refused {
                            code: AdmitRefusal::System,
                            message,
                        };
                    }
                    st.commit(plan);
                    tracing::info!(%client, ?targets, "client released targets");
                }
                ProxyMessage::Released {
                    remaining: st.targets(client).len(),
                }
            }
        }
    }

    /// `pending`: counts the connection as not yet admitted until its first request.
    async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut tls: S,
        client: IpAddr,
        local: IpAddr,
        mut pending: Option<Pending>,
    ) {
        // Sessions are bound to the connection that made them (see `plan_admit`).
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut dec = decoder();
        let mut buf = vec![0u8; 2048];
        // Counted as a connection of this client once it has been admitted (the first
        // admission counts it), so the lease only starts when the last one closes.
        let mut counted = !self.state.lock().await.targets(client).is_empty();
        if counted {
            self.state.lock().await.connected(client);
        }
        // What this connection was last told about draining. A client that connects
        // while the proxy drains is told at once, before it asks anything.
        let mut drain = self.drain.clone();
        let mut drain_open = true;
        let mut told = false;
        let now = drain.borrow_and_update().clone();
        if now.draining {
            if !self.tell(&mut tls, client, &now).await {
                return self.closed(client, conn, counted).await;
            }
            told = true;
        }
        loop {
            let msg = match next_message::<ClientMessage>(&mut dec) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tokio::select! {
                        r = tokio::time::timeout(if counted { self.idle } else { self.hello }, tls.read(&mut buf)) => match r {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => dec.push(&buf[..n]),
                            Err(_) => {
                                tracing::debug!(%client, "admission connection idle; closing");
                                break;
                            }
                        },
                        changed = drain.changed(), if drain_open => {
                            if changed.is_err() {
                                // The switch is gone (the proxy is stopping): nothing
                                // more to tell.
                                drain_open = false;
                                continue;
                            }
                            let now = drain.borrow_and_update().clone();
                            if now.draining != told {
                                if !self.tell(&mut tls, client, &now).await {
                                    break;
                                }
                                told = now.draining;
                            }
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::info!(%client, error = %e, "bad admission message; closing");
                    let _ = tls
                        .write_all(&encode(&ProxyMessage::Refused {
                            code: AdmitRefusal::BadRequest,
                            message: e.to_string(),
                        }))
                        .await;
                    break;
                }
            };
            // A request: the connection no longer counts towards the port's load.
            pending.take();
            let admit = matches!(msg, ClientMessage::Admit(_));
            let answer = self.handle(client, conn, local, msg).await;
            if admit && !counted && matches!(answer, ProxyMessage::Admitted(_)) {
                counted = true;
            }
            if tokio::time::timeout(STEP_TIMEOUT, tls.write_all(&encode(&answer)))
                .await
                .map(|r| r.is_err())
                .unwrap_or(true)
            {
                break;
            }
        }
        self.closed(client, conn, counted).await;
    }

    /// Sends the drain notice `d` on a client's connection; false when it cannot be
    /// written in time (the connection is then closed).
    async fn tell<S: AsyncWrite + Unpin>(&self, tls: &mut S, client: IpAddr, d: &Drain) -> bool {
        // Debug only: at the start of an attack every client is told at once, and the
        // self-defence task logs the drain itself.
        tracing::debug!(%client, draining = d.draining, "telling an admitted client whether to move");
        tokio::time::timeout(STEP_TIMEOUT, tls.write_all(&encode(&d.notice())))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A connection of `client` closed; `counted`: it held one of its admission counts.
    async fn closed(&self, client: IpAddr, conn: ConnId, counted: bool) {
        if counted {
            self.state
                .lock()
                .await
                .disconnected(client, conn, Instant::now());
        }
    }
}

/// The proxy's consortium identity from `[admission]` (it must be a proxy certificate).
fn proxy_identity(cfg: &crate::proxy::Config, a: &AdmissionSection) -> anyhow::Result<TlsIdentity> {
    let file = cfg.file.display().to_string();
    let resolve = |p: &Path| scold_daemon::resolve(&cfg.file, p);
    scold_pki::install_crypto_provider();
    let tls = TlsIdentity::load(&TlsPaths {
        ca_cert: resolve(&a.ca),
        cert: resolve(&a.cert),
        key: resolve(&a.key),
        crl: a.crl.as_deref().map(resolve),
    })
    .map_err(|e| anyhow::anyhow!("config file {file}: [admission]: {e}"))?;
    if tls.identity().role != Role::Proxy {
        anyhow::bail!(
            "config file {file}: [admission] cert names {}, but clients only accept a proxy certificate; issue one with `scold ca issue --role proxy`",
            tls.identity()
        );
    }
    Ok(tls)
}

/// What this proxy offers clients, from its `[tunnel]` and `[admission]` tables.
fn offer_of(cfg: &crate::proxy::Config, a: &AdmissionSection) -> anyhow::Result<ProxyOffer> {
    let t = &cfg.tunnel;
    let private = t.private_key(&cfg.file)?;
    let public_key = match &private {
        Some(k) => Some(PublicKey(scold_tunnel::keys::public_of(k)?)),
        None => None,
    };
    let mut encaps = Vec::new();
    if t.listen.is_some() {
        encaps.push(Encap::Udp);
        if public_key.is_some() {
            encaps.push(Encap::Wireguard);
        }
    }
    if t.ipip {
        encaps.push(Encap::Ipip);
    }
    Ok(ProxyOffer {
        encaps,
        tunnel_address: a.tunnel_address,
        port: t.listen.map(|l| l.port()),
        public_key,
        outer_mtu: t.outer_mtu,
        relay_mtu: t.inner_mtu(),
        allow: a.allow.clone(),
        max_clients: a.max_clients,
        max_clients_per_prefix: a.max_clients_per_prefix,
        engines: u8::try_from(t.engines).unwrap_or(u8::MAX),
    })
}

/// Scheme 4.2: the proxy's pusher, from the same `[admission]` identity and offer; None
/// without `[admission]`.
pub fn pusher(cfg: &crate::proxy::Config) -> anyhow::Result<Option<crate::proxy::push::Pusher>> {
    let Some(a) = &cfg.admission else {
        return Ok(None);
    };
    let tls = proxy_identity(cfg, a)?;
    let offer = offer_of(cfg, a)?;
    let p = crate::proxy::push::Pusher::new(&tls, &offer, STEP_TIMEOUT.min(Duration::from_secs(2)))
        .map_err(|e| anyhow::anyhow!("config file {}: [admission]: {e}", cfg.file.display()))?;
    Ok(Some(p))
}

/// Starts the admission server of a proxy whose config has an `[admission]` table.
/// `commands` is the proxy's command feed: it is replaced by one that carries both the
/// original feed and the admission's sessions. `drain` is the receiver of the proxy's
/// [`drain_switch`]: while it says draining, clients are told to move. Without
/// `[admission]` nothing happens.
pub async fn start(
    cfg: &crate::proxy::Config,
    commands: &mut CommandReceiver,
    drain: watch::Receiver<Drain>,
    metrics: Option<scold_metrics::Metrics>,
    tap: AdmissionTap,
) -> anyhow::Result<AdmissionGuard> {
    let Some(a) = &cfg.admission else {
        return Ok(AdmissionGuard::default());
    };
    let file = cfg.file.display().to_string();
    let tls = proxy_identity(cfg, a)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls.server_config_without_client_auth()
            .map_err(|e| anyhow::anyhow!("config file {file}: [admission]: {e}"))?,
    );
    let offer = offer_of(cfg, a)?;
    let listener = TcpListener::bind(a.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "config file {file}: [admission] listen {}: {e} (is another daemon on that port?)",
            a.listen
        )
    })?;

    // Merge the control plane's feed and the admission's commands into one.
    let (tx, rx) = mpsc::channel(64);
    let mut upstream = std::mem::replace(commands, rx);
    let fwd = tx.clone();
    let forward = tokio::spawn(async move {
        while let Some(c) = upstream.recv().await {
            if fwd.send(c).await.is_err() {
                break;
            }
        }
    });
    let server = Arc::new(Server {
        offer,
        state: Mutex::new(Admissions::default()),
        commands: tx,
        idle: Duration::from_secs(a.idle_timeout_secs.max(1)),
        hello: Duration::from_secs(a.hello_timeout_secs.clamp(1, a.idle_timeout_secs.max(1))),
        arrivals: Mutex::new(None),
        drain,
        next_conn: AtomicU64::new(1),
    });
    let lease = Duration::from_secs(a.lease_secs);
    let reaper = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(
                Duration::from_secs(5).min(lease.max(Duration::from_secs(1))),
            );
            loop {
                tick.tick().await;
                let mut st = server.state.lock().await;
                for client in st.expired(Instant::now(), lease) {
                    let Some(plan) = st.plan_release(client, None, &st.targets(client)) else {
                        continue;
                    };
                    match server.apply(plan.command.clone()).await {
                        Ok(()) => {
                            st.commit(plan);
                            tracing::info!(%client, "admission lease expired; session removed");
                        }
                        Err(e) => {
                            tracing::warn!(%client, error = %e, "cannot remove an expired session")
                        }
                    }
                }
            }
        })
    };
    tracing::info!(listen = %a.listen, identity = %tls.identity(), "admission server listening");
    let door = Door::new("admission", a.connections, metrics.clone());
    let handshake = Duration::from_millis(a.handshake_timeout_ms.max(1));
    let challenger = Challenger::new(a.cookie_after);
    let live = AdmissionLive {
        door: door.clone(),
        challenger: challenger.clone(),
    };
    let gauges = metrics.map(|m| {
        let (door, challenger) = (door.clone(), challenger.clone());
        tokio::spawn(async move { connection_gauges(m, door, challenger).await })
    });
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admission accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tap.accepted.fetch_add(1, Ordering::Relaxed);
            // Counted before anything is spent on it; a refused one is closed at once.
            let Some(pass) = door.enter(peer) else {
                continue;
            };
            let local = match tcp.local_addr() {
                Ok(l) => l,
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let server = server.clone();
            let door = door.clone();
            let challenger = challenger.clone();
            tokio::spawn(async move {
                let _pass = pass;
                let start = Instant::now();
                // The cookie preamble first: under load, a connection without a valid
                // cookie ends here, answered with one, before any TLS work.
                let Some(tcp) = challenger.admit(tcp, peer, local, &door, handshake).await else {
                    return;
                };
                let pending = challenger.enter();
                let left = handshake.saturating_sub(start.elapsed());
                match tokio::time::timeout(left, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        server
                            .serve_conn(tls, peer.ip(), local.ip(), Some(pending))
                            .await
                    }
                    Ok(Err(e)) => door.refuse(
                        peer,
                        scold_pki::refusal_reason_io(&e).as_str(),
                        &format_args!("TLS handshake: {e}"),
                    ),
                    Err(_) => door.refuse(peer, "handshake_timeout", &"TLS handshake timed out"),
                }
            });
        }
    });
    let mut tasks = vec![forward, reaper, accept];
    tasks.extend(gauges);
    Ok(AdmissionGuard {
        tasks,
        live: Some(live),
    })
}

/// Keeps `scold_admission_connections` (held by the door now) and
/// `scold_admission_pending` (of those, not yet admitted: what makes the port demand
/// cookies) current, a few times a second.
async fn connection_gauges(m: scold_metrics::Metrics, door: Door, challenger: Arc<Challenger>) {
    use prometheus_client::metrics::gauge::Gauge;
    let (open, pending) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    m.with_registry(|r| {
        r.register(
            "admission_connections",
            "Connections the admission port holds now",
            open.clone(),
        );
        r.register(
            "admission_pending",
            "Admission connections not yet admitted (in their TLS handshake or before their first request); at cookie_after the port demands cookies",
            pending.clone(),
        );
    });
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        open.set(door.open() as i64);
        pending.set(challenger.pending() as i64);
    }
}

/// The proxy's drain switch: its self-defence holds the sender, the admission server
/// ([`start`]) the receiver.
pub fn drain_switch() -> (watch::Sender<Drain>, watch::Receiver<Drain>) {
    watch::channel(Drain::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_limits_default_and_are_configurable() {
        // A table written before the limits existed still loads, with the defaults.
        let old: AdmissionSection =
            toml::from_str("ca = \"ca.crt\"\ncert = \"p.crt\"\nkey = \"p.key\"\n").unwrap();
        assert_eq!(old.connections, DEFAULT_CONNECTIONS);
        assert_eq!(old.handshake_timeout_ms, 3000);
        assert_eq!(old.hello_timeout_secs, 5);
        assert_eq!(old.cookie_after, DEFAULT_COOKIE_AFTER);
        assert!(old.cookie_after > 0 && old.cookie_after < old.connections.total);
        assert!(old.connections.per_source < old.connections.total);
        let new: AdmissionSection = toml::from_str(
            "ca = \"ca.crt\"\ncert = \"p.crt\"\nkey = \"p.key\"\nhello_timeout_secs = 2\ncookie_after = 0\nconnections = { per_source = 2, per_prefix = 10, total = 100 }\n",
        )
        .unwrap();
        assert_eq!(new.connections, ConnLimits::new(2, 10, 100));
        assert_eq!(new.hello_timeout_secs, 2);
        assert_eq!(new.cookie_after, 0);
        // And it round-trips (the lab writes these tables).
        let back: AdmissionSection = toml::from_str(&toml::to_string(&new).unwrap()).unwrap();
        assert_eq!(back.connections, new.connections);
    }
}
