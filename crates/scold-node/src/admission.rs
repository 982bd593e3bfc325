//! The admission exchange of scheme 4.1 (paper Section 4.1): a client agent asks a proxy
//! to carry it to a target, and the proxy admits it as a tunnel session.
//!
//! The client opens TLS 1.3 to the proxy's admission port. The proxy presents its
//! consortium certificate (role `proxy`); the client holds only the CA certificate and
//! checks that the proxy chains to it, that the role is `proxy`, that the address it
//! connected to is in the ALT set DNS gave it (and, when the certificate names IP
//! addresses, among them). The client has no certificate: the proxy admits it by the
//! address the connection comes from and the tunnel key it sends, and lets it reach only
//! the targets it asked for.
//!
//! Messages are JSON in the control channel's frames (`scold_proto::frame`), at most
//! [`MAX_FRAME`] bytes. Each request gets one answer, in order:
//!
//! - `admit {targets, encap, public_key, port}` -> `admitted {client, tunnel_address,
//!   port, encap, public_key, inner_mtu, targets}` or `refused {code, message}`. The proxy
//!   applies `Command::AddSession` (the union of every target this client was admitted
//!   to) through its command channel before it answers; asking again changes nothing.
//! - `ping {seq}` -> `pong {seq, arrived, draining}`: the client keeps the connection
//!   open and probes it to notice a dead proxy within a second. `arrived` (absent when
//!   the data plane does not answer within 150 ms) grows with every tunnel packet that
//!   reached the proxy from the client's address, so the client also notices a tunnel
//!   path that stopped carrying while the admission port still answers. `draining`
//!   (present only while true) says the proxy asks its clients to move.
//! - `release {targets}` -> `released {remaining}`: the client no longer needs those
//!   targets; with none left the proxy removes the session.
//!
//! One message is not an answer: `draining {draining, reason}`, which the proxy sends
//! unasked on every open admission connection when its self-defence declares it under
//! attack (`draining: true`, paper Section 4.4) and again when it has recovered
//! (`draining: false`); a connection opened while the proxy drains is told at once. The
//! client moves to another proxy of the ALT set without waiting for the coordinator's
//! reset to reach it through DNS. Like every message it comes over the TLS connection in
//! which the proxy showed its consortium certificate. A proxy that is not draining sends
//! exactly what it sent before this message existed; a client that predates it refuses
//! the unknown message and drops the connection, which moves it to another proxy too.
//!
//! A session whose client has no open admission connection is removed after the lease
//! time, so clients that failed over elsewhere do not stay admitted for ever.
//!
//! The message types and [`Admissions`] (the proxy's bookkeeping) are sans-IO; [`start`]
//! runs the proxy's server and [`Connector`] is the client side.

use crate::common::{CommandReceiver, CommandRequest};
use scold_pki::{CaTrust, Identity, Role, TlsIdentity, TlsPaths};
use scold_proto::dataplane::{Command, Encap, Prefix, PublicKey, Reply, Session};
use scold_proto::frame;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};

/// The admission port proxies listen on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 5443;
/// Largest admission frame; a request names at most [`MAX_TARGETS`] addresses.
pub const MAX_FRAME: usize = 4096;
/// Largest number of target addresses in one request.
pub const MAX_TARGETS: usize = 32;
/// Longest `reason` of a drain notice, in bytes (it is for logs).
pub const MAX_REASON: usize = 256;

// ---------------------------------------------------------------------------------------
// Messages (sans-IO)
// ---------------------------------------------------------------------------------------

/// What a client asks to be admitted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitRequest {
    /// The target's addresses, from the A/AAAA answer.
    pub targets: Vec<IpAddr>,
    /// The encapsulation the client speaks.
    pub encap: Encap,
    /// The client's WireGuard public key (wireguard only).
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// The client's tunnel UDP port; absent: the proxy learns it from the first packet
    /// (which also works through NAT).
    #[serde(default)]
    pub port: Option<u16>,
}

/// The proxy's answer to an admission: where and how to send tunnel packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admitted {
    /// The client's address as the proxy saw it: the only inner source it may use.
    pub client: IpAddr,
    /// The proxy's tunnel end point.
    pub tunnel_address: IpAddr,
    /// The proxy's tunnel UDP port (udp and wireguard).
    #[serde(default)]
    pub port: Option<u16>,
    pub encap: Encap,
    /// The proxy's WireGuard public key (wireguard only).
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// The largest inner packet the whole path carries unfragmented.
    pub inner_mtu: u16,
    /// Every target this client is now admitted to at this proxy.
    pub targets: Vec<IpAddr>,
}

/// Why an admission was refused. A refusal changes nothing at the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Malformed or contradictory request.
    BadRequest,
    /// This proxy does not carry the asked encapsulation.
    UnsupportedEncap,
    /// A target is outside what this proxy serves.
    NotServed,
    /// The proxy admits no more clients.
    Full,
    /// The proxy's data plane refused or did not answer.
    System,
}

/// A client's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Admit(AdmitRequest),
    Ping { seq: u64 },
    Release { targets: Vec<IpAddr> },
}

/// The proxy's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Admitted(Admitted),
    /// `arrived`: the client's tunnel packets that have reached the proxy so far (kept
    /// or dropped), from its data plane's counters; absent when the data plane did not
    /// answer in time. The agent compares it with what it sent, so the probe watches the
    /// tunnel path itself, not only the proxy's admission port.
    ///
    /// `draining`: the proxy asks its clients to move to another proxy (see
    /// [`Answer::Draining`]); left out while false, so a proxy that is not draining
    /// answers as proxies did before the field existed.
    Pong {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arrived: Option<u64>,
        #[serde(default, skip_serializing_if = "is_false")]
        draining: bool,
    },
    /// Not an answer: sent unasked when the proxy starts or stops draining (its
    /// self-defence declared an attack, or the attack is over). `reason` is for logs.
    Draining {
        draining: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Released {
        remaining: usize,
    },
    Refused {
        code: RefusalCode,
        message: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether a proxy asks its admitted clients to move to another proxy, and why: set by
/// its self-defence when it declares the proxy under attack, cleared when it has
/// recovered. The admission server tells every client (probe answers and a
/// [`Answer::Draining`] notice on each open connection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    pub draining: bool,
    pub reason: Option<String>,
}

impl Drain {
    /// Draining for `reason` (cut to [`MAX_REASON`] bytes).
    pub fn because(reason: &str) -> Drain {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Drain {
            draining: true,
            reason: Some(reason[..end].to_string()),
        }
    }

    /// The notice that tells a client this state.
    pub fn notice(&self) -> Answer {
        Answer::Draining {
            draining: self.draining,
            reason: self.reason.clone().filter(|_| self.draining),
        }
    }
}

/// The proxy's drain switch: its self-defence holds the sender, the admission server
/// ([`start`]) the receiver.
pub fn drain_switch() -> (watch::Sender<Drain>, watch::Receiver<Drain>) {
    watch::channel(Drain::default())
}

/// A message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("admission frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("admission message is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// One framed message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("admission messages always serialise");
    let mut out = Vec::with_capacity(body.len() + 5);
    frame::encode(&body, &mut out);
    out
}

/// A decoder of admission frames with the admission size limit.
pub fn decoder() -> frame::Decoder {
    frame::Decoder::new(MAX_FRAME)
}

/// The next message from `d`, if a whole one is buffered.
pub fn next_message<T: for<'de> Deserialize<'de>>(
    d: &mut frame::Decoder,
) -> Result<Option<T>, DecodeError> {
    match d.next_frame()? {
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
        None => Ok(None),
    }
}

impl AdmitRequest {
    /// Checks what can be checked without the proxy's state.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("no targets: name the target addresses from the A/AAAA answer".into());
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(format!(
                "{} targets; at most {MAX_TARGETS} per request",
                self.targets.len()
            ));
        }
        for t in &self.targets {
            if t.is_unspecified() || t.is_multicast() || t.is_loopback() {
                return Err(format!("target {t} is not a unicast address"));
            }
            if self.encap == Encap::Ipip && t.is_ipv6() {
                return Err(format!("target {t}: ipip carries IPv4 only"));
            }
        }
        match (&self.public_key, self.encap) {
            (None, Encap::Wireguard) => {
                return Err("wireguard needs the client's public key".into())
            }
            (Some(k), Encap::Wireguard) if !k.looks_valid() => {
                return Err("public key is not 44 characters of base64".into())
            }
            (Some(_), Encap::Ipip | Encap::Udp) => {
                return Err(format!("a public key makes no sense with {}", self.encap))
            }
            _ => {}
        }
        if self.port == Some(0) {
            return Err("port 0; leave it out to have it learned".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's bookkeeping (sans-IO)
// ---------------------------------------------------------------------------------------

/// What this proxy offers every client, from its own config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Encapsulations the proxy's engine carries.
    pub encaps: Vec<Encap>,
    /// The tunnel address to announce; None: the address the client connected to.
    pub tunnel_address: Option<IpAddr>,
    pub port: Option<u16>,
    pub public_key: Option<PublicKey>,
    /// Outer MTU towards clients.
    pub outer_mtu: u16,
    /// Inner MTU of the proxy's relay towards gateways.
    pub relay_mtu: u16,
    /// Targets this proxy serves; empty: any.
    pub allow: Vec<Prefix>,
    pub max_clients: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientEntry {
    encap: Encap,
    public_key: Option<PublicKey>,
    port: Option<u16>,
    targets: BTreeSet<IpAddr>,
    /// Open admission connections from this client.
    connections: usize,
    /// When the last connection closed (for the lease).
    idle_since: Option<Instant>,
}

/// A planned change: apply `command`, then [`Admissions::commit`] the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub client: IpAddr,
    pub command: Command,
    entry: Option<ClientEntry>,
}

/// Which clients this proxy admitted, to which targets.
#[derive(Debug, Default)]
pub struct Admissions {
    clients: HashMap<IpAddr, ClientEntry>,
}

fn session(client: IpAddr, e: &ClientEntry) -> Session {
    Session {
        client,
        port: e.port,
        encap: e.encap,
        public_key: e.public_key.clone(),
        targets: e.targets.iter().map(|t| Prefix::host(*t)).collect(),
    }
}

impl Admissions {
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The targets `client` is admitted to.
    pub fn targets(&self, client: IpAddr) -> Vec<IpAddr> {
        self.clients
            .get(&client)
            .map(|e| e.targets.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Plans an admission of `client` (the connection's source) that connected to
    /// `local` (our address); the answer to send once the plan is applied comes with it.
    pub fn plan_admit(
        &self,
        client: IpAddr,
        local: IpAddr,
        req: &AdmitRequest,
        offer: &Offer,
    ) -> Result<(Plan, Admitted), (RefusalCode, String)> {
        req.validate().map_err(|m| (RefusalCode::BadRequest, m))?;
        if !offer.encaps.contains(&req.encap) {
            return Err((
                RefusalCode::UnsupportedEncap,
                format!(
                    "this proxy carries {}; ask for one of those",
                    offer
                        .encaps
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if req.encap == Encap::Ipip && client.is_ipv6() {
            return Err((
                RefusalCode::BadRequest,
                "ipip carries IPv4 only and this client connected over IPv6".into(),
            ));
        }
        if !offer.allow.is_empty() {
            if let Some(t) = req
                .targets
                .iter()
                .find(|t| !offer.allow.iter().any(|p| p.contains(**t)))
            {
                return Err((
                    RefusalCode::NotServed,
                    format!("target {t} is not served by this proxy"),
                ));
            }
        }
        let mut entry = match self.clients.get(&client) {
            // Same tunnel parameters: add targets. New parameters (the client restarted
            // with another key): start afresh with the asked targets only.
            Some(e)
                if e.encap == req.encap && e.public_key == req.public_key && e.port == req.port =>
            {
                e.clone()
            }
            Some(e) => ClientEntry {
                encap: req.encap,
                public_key: req.public_key.clone(),
                port: req.port,
                targets: BTreeSet::new(),
                connections: e.connections,
                idle_since: e.idle_since,
            },
            None => {
                if self.clients.len() >= offer.max_clients {
                    return Err((
                        RefusalCode::Full,
                        format!(
                            "this proxy admits at most {} clients; try another proxy of the ALT set",
                            offer.max_clients
                        ),
                    ));
                }
                ClientEntry {
                    encap: req.encap,
                    public_key: req.public_key.clone(),
                    port: req.port,
                    targets: BTreeSet::new(),
                    connections: 0,
                    idle_since: None,
                }
            }
        };
        entry.targets.extend(req.targets.iter().copied());
        if entry.targets.len() > 4 * MAX_TARGETS {
            return Err((
                RefusalCode::BadRequest,
                format!("more than {} targets for one client", 4 * MAX_TARGETS),
            ));
        }
        let base = req.encap.inner_mtu(offer.outer_mtu);
        // An IPv6 outer header is 20 bytes longer than the IPv4 one the overhead assumes.
        let outer_v6 = if client.is_ipv6() { 20 } else { 0 };
        let admitted = Admitted {
            client,
            tunnel_address: offer.tunnel_address.unwrap_or(local),
            port: if req.encap.uses_udp() {
                offer.port
            } else {
                None
            },
            encap: req.encap,
            public_key: if req.encap == Encap::Wireguard {
                offer.public_key.clone()
            } else {
                None
            },
            inner_mtu: base.saturating_sub(outer_v6).min(offer.relay_mtu),
            targets: entry.targets.iter().copied().collect(),
        };
        let command = Command::AddSession(session(client, &entry));
        Ok((
            Plan {
                client,
                command,
                entry: Some(entry),
            },
            admitted,
        ))
    }

    /// Plans a release of some of `client`'s targets; `None` if it holds none of them.
    pub fn plan_release(&self, client: IpAddr, targets: &[IpAddr]) -> Option<Plan> {
        let e = self.clients.get(&client)?;
        let mut left = e.clone();
        for t in targets {
            left.targets.remove(t);
        }
        if left.targets.len() == e.targets.len() {
            return None;
        }
        if left.targets.is_empty() {
            return Some(Plan {
                client,
                command: Command::RemoveSession { client },
                entry: None,
            });
        }
        Some(Plan {
            client,
            command: Command::AddSession(session(client, &left)),
            entry: Some(left),
        })
    }

    /// Records an applied plan.
    pub fn commit(&mut self, plan: Plan) {
        match plan.entry {
            Some(mut e) => {
                if let Some(old) = self.clients.get(&plan.client) {
                    e.connections = old.connections;
                    e.idle_since = old.idle_since;
                }
                self.clients.insert(plan.client, e);
            }
            None => {
                self.clients.remove(&plan.client);
            }
        }
    }

    /// A connection from `client` opened.
    pub fn connected(&mut self, client: IpAddr) {
        if let Some(e) = self.clients.get_mut(&client) {
            e.connections += 1;
            e.idle_since = None;
        }
    }

    /// A connection from `client` that had been admitted closed at `now`.
    pub fn disconnected(&mut self, client: IpAddr, now: Instant) {
        if let Some(e) = self.clients.get_mut(&client) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 {
                e.idle_since = Some(now);
            }
        }
    }

    /// Clients whose last connection closed more than `lease` before `now`.
    pub fn expired(&self, now: Instant, lease: Duration) -> Vec<IpAddr> {
        self.clients
            .iter()
            .filter(|(_, e)| {
                e.idle_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= lease)
            })
            .map(|(c, _)| *c)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's server
// ---------------------------------------------------------------------------------------

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_max_clients() -> usize {
    4096
}
fn default_lease() -> u64 {
    300
}
fn default_idle() -> u64 {
    30
}

/// `[admission]` of the proxy config.
#[derive(Debug, Clone, Deserialize)]
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
    /// Seconds a session outlives its client's last admission connection.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Seconds of silence after which an admission connection is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
}

/// Stops the admission server when dropped.
#[derive(Debug, Default)]
pub struct AdmissionGuard {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Tunnel packets that arrived per peer outer address (kept or dropped): what a probe
/// answer reports to the client at that address.
pub fn arrivals(stats: &scold_proto::dataplane::Stats) -> HashMap<IpAddr, u64> {
    let mut m = HashMap::new();
    for p in &stats.peers {
        *m.entry(p.address).or_insert(0) += p.counters.rx_packets + p.counters.dropped;
    }
    m
}

/// Longest wait for a TLS handshake or for the data plane to apply a session.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest number of admission connections served at once.
const MAX_CONNECTIONS: usize = 1024;

/// How long the proxy waits for its data plane's counters when it answers a probe: a
/// busy command feed (a push in progress) must not make the answer late.
const PROBE_STATS_TIMEOUT: Duration = Duration::from_millis(150);
/// How long one read of the counters serves every probe (many clients probe at once).
const PROBE_STATS_FRESH: Duration = Duration::from_millis(50);

/// Tunnel packets that arrived per client outer address, and when they were read.
type Arrivals = Option<(Instant, Arc<HashMap<IpAddr, u64>>)>;

struct Server {
    offer: Offer,
    state: Mutex<Admissions>,
    commands: mpsc::Sender<CommandRequest>,
    idle: Duration,
    arrivals: Mutex<Arrivals>,
    /// Whether this proxy asks its clients to move (set by its self-defence).
    drain: watch::Receiver<Drain>,
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

    async fn handle(&self, client: IpAddr, local: IpAddr, req: Request) -> Answer {
        match req {
            Request::Ping { seq } => Answer::Pong {
                seq,
                arrived: self.arrived(client).await,
                draining: self.drain.borrow().draining,
            },
            Request::Admit(a) => {
                let mut st = self.state.lock().await;
                let (plan, admitted) = match st.plan_admit(client, local, &a, &self.offer) {
                    Ok(p) => p,
                    Err((code, message)) => {
                        tracing::info!(%client, ?code, %message, "admission refused");
                        return Answer::Refused { code, message };
                    }
                };
                let was_new = st.targets(client).is_empty();
                if let Err(message) = self.apply(plan.command.clone()).await {
                    tracing::warn!(%client, %message, "admission failed");
                    return Answer::Refused {
                        code: RefusalCode::System,
                        message,
                    };
                }
                st.commit(plan);
                if was_new {
                    st.connected(client);
                }
                tracing::info!(%client, encap = %a.encap, targets = ?admitted.targets, "client admitted");
                Answer::Admitted(admitted)
            }
            Request::Release { targets } => {
                if targets.len() > MAX_TARGETS {
                    return Answer::Refused {
                        code: RefusalCode::BadRequest,
                        message: format!("at most {MAX_TARGETS} targets per request"),
                    };
                }
                let mut st = self.state.lock().await;
                if let Some(plan) = st.plan_release(client, &targets) {
                    if let Err(message) = self.apply(plan.command.clone()).await {
                        return Answer::Refused {
                            code: RefusalCode::System,
                            message,
                        };
                    }
                    st.commit(plan);
                    tracing::info!(%client, ?targets, "client released targets");
                }
                Answer::Released {
                    remaining: st.targets(client).len(),
                }
            }
        }
    }

    async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut tls: S,
        client: IpAddr,
        local: IpAddr,
    ) {
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
                return self.closed(client, counted).await;
            }
            told = true;
        }
        loop {
            let msg = match next_message::<Request>(&mut dec) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tokio::select! {
                        r = tokio::time::timeout(self.idle, tls.read(&mut buf)) => match r {
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
                        .write_all(&encode(&Answer::Refused {
                            code: RefusalCode::BadRequest,
                            message: e.to_string(),
                        }))
                        .await;
                    break;
                }
            };
            let admit = matches!(msg, Request::Admit(_));
            let answer = self.handle(client, local, msg).await;
            if admit && !counted && matches!(answer, Answer::Admitted(_)) {
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
        self.closed(client, counted).await;
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
    async fn closed(&self, client: IpAddr, counted: bool) {
        if counted {
            self.state.lock().await.disconnected(client, Instant::now());
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The proxy's consortium identity from `[admission]` (it must be a proxy certificate).
fn proxy_identity(cfg: &crate::proxy::Config, a: &AdmissionSection) -> anyhow::Result<TlsIdentity> {
    let file = cfg.file.display().to_string();
    let base = cfg.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    scold_pki::install_crypto_provider();
    let tls = TlsIdentity::load(&TlsPaths {
        ca_cert: resolve(&base, &a.ca),
        cert: resolve(&base, &a.cert),
        key: resolve(&base, &a.key),
        crl: a.crl.as_ref().map(|c| resolve(&base, c)),
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
fn offer_of(cfg: &crate::proxy::Config, a: &AdmissionSection) -> anyhow::Result<Offer> {
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
    Ok(Offer {
        encaps,
        tunnel_address: a.tunnel_address,
        port: t.listen.map(|l| l.port()),
        public_key,
        outer_mtu: t.outer_mtu,
        relay_mtu: t.inner_mtu(),
        allow: a.allow.clone(),
        max_clients: a.max_clients,
    })
}

/// Scheme 4.2: the proxy's pusher, from the same `[admission]` identity and offer; None
/// without `[admission]`.
pub fn pusher(cfg: &crate::proxy::Config) -> anyhow::Result<Option<crate::push::Pusher>> {
    let Some(a) = &cfg.admission else {
        return Ok(None);
    };
    let tls = proxy_identity(cfg, a)?;
    let offer = offer_of(cfg, a)?;
    let p = crate::push::Pusher::new(&tls, &offer, STEP_TIMEOUT.min(Duration::from_secs(2)))
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
        arrivals: Mutex::new(None),
        drain,
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
                    let Some(plan) = st.plan_release(client, &st.targets(client)) else {
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
    let accept = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admission accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many admission connections; dropping one");
                continue;
            };
            let local = match tcp.local_addr() {
                Ok(l) => l.ip(),
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let server = server.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => server.serve_conn(tls, peer.ip(), local).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "admission handshake failed"),
                    Err(_) => tracing::info!(%peer, "admission handshake timed out"),
                }
            });
        }
    });
    Ok(AdmissionGuard {
        tasks: vec![forward, reaper, accept],
    })
}

// ---------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------

/// Why an admission did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("proxy {proxy} is not in the ALT set {alt:?}; refusing to use it")]
    NotInAltSet { proxy: IpAddr, alt: Vec<IpAddr> },
    #[error("cannot connect to the admission port {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admission at {addr}: {what} timed out")]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
    },
    #[error("admission at {addr}: TLS refused ({reason}): {detail}")]
    Tls {
        addr: SocketAddr,
        reason: &'static str,
        detail: String,
    },
    #[error(
        "admission at {addr}: the certificate of {identity} names addresses {names:?}, not {addr}"
    )]
    CertificateAddress {
        addr: SocketAddr,
        identity: Identity,
        names: Vec<IpAddr>,
    },
    #[error("proxy {addr} refused the admission ({code:?}): {message}")]
    Refused {
        addr: SocketAddr,
        code: RefusalCode,
        message: String,
    },
    #[error("admission at {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
}

/// The client agent's side of the admission.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    port: u16,
    timeout: Duration,
}

/// An open, verified admission connection to one proxy.
pub struct AdmissionConn {
    pub proxy: SocketAddr,
    /// Our address on the path to the proxy: the tunnel's inner source.
    pub local: IpAddr,
    pub identity: Identity,
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    dec: frame::Decoder,
    /// What the proxy last said about draining (a notice or a probe answer).
    drain: Drain,
}

/// Checks an admission answer against what was asked and the ALT set.
pub fn check_admitted(
    a: &Admitted,
    req: &AdmitRequest,
    alt: &[IpAddr],
    local: IpAddr,
) -> Result<(), String> {
    if !alt.contains(&a.tunnel_address) {
        return Err(format!(
            "tunnel address {} is not in the ALT set {alt:?}",
            a.tunnel_address
        ));
    }
    if a.encap != req.encap {
        return Err(format!("asked for {}, got {}", req.encap, a.encap));
    }
    if a.client != local {
        // Behind NAT the proxy sees another address; the inner source must be the one it
        // admitted, and we cannot send from it.
        return Err(format!(
            "the proxy admitted {} but we connected from {local} (NAT between client and proxy is not supported)",
            a.client
        ));
    }
    if a.encap == Encap::Wireguard && !a.public_key.as_ref().is_some_and(|k| k.looks_valid()) {
        return Err("wireguard without a valid proxy public key".into());
    }
    if a.encap.uses_udp() && a.port.is_none_or(|p| p == 0) {
        return Err(format!("{} without a tunnel port", a.encap));
    }
    if !(576..=9000).contains(&a.inner_mtu) {
        return Err(format!("inner MTU {} is outside 576..=9000", a.inner_mtu));
    }
    if let Some(t) = req.targets.iter().find(|t| !a.targets.contains(t)) {
        return Err(format!("target {t} missing from the admitted targets"));
    }
    Ok(())
}

impl Connector {
    /// `ca`: the consortium CA certificate; `port`: the proxies' admission port.
    pub fn new(
        ca: &Path,
        crl: Option<&Path>,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, scold_pki::PkiError> {
        scold_pki::install_crypto_provider();
        let trust = CaTrust::load(ca, crl)?;
        Ok(Connector {
            tls: tokio_rustls::TlsConnector::from(trust.client_config(&[Role::Proxy])?),
            port,
            timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Opens and verifies an admission connection to `proxy`, which must be in `alt`.
    pub async fn connect(
        &self,
        proxy: IpAddr,
        alt: &[IpAddr],
    ) -> Result<AdmissionConn, AdmissionError> {
        let addr = SocketAddr::new(proxy, self.port);
        if !alt.contains(&proxy) {
            return Err(AdmissionError::NotInAltSet {
                proxy,
                alt: alt.to_vec(),
            });
        }
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| AdmissionError::Timeout {
                addr,
                what: "TCP connect",
            })?
            .map_err(|source| AdmissionError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|source| AdmissionError::Connect { addr, source })?
            .ip();
        let name = rustls::pki_types::ServerName::IpAddress(proxy.into());
        let stream = tokio::time::timeout(self.timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| AdmissionError::Timeout {
                addr,
                what: "TLS handshake",
            })?
            .map_err(|e| AdmissionError::Tls {
                addr,
                reason: scold_pki::refusal_reason_io(&e).as_str(),
                detail: e.to_string(),
            })?;
        let conn = stream.get_ref().1;
        let identity = scold_pki::peer_identity(conn).map_err(|e| AdmissionError::Tls {
            addr,
            reason: "bad_identity",
            detail: e.to_string(),
        })?;
        let names = scold_pki::peer_ip_addresses(conn).map_err(|e| AdmissionError::Tls {
            addr,
            reason: "bad_identity",
            detail: e.to_string(),
        })?;
        if !names.is_empty() && !names.contains(&proxy) {
            return Err(AdmissionError::CertificateAddress {
                addr,
                identity,
                names,
            });
        }
        Ok(AdmissionConn {
            proxy: addr,
            local,
            identity,
            stream,
            dec: decoder(),
            drain: Drain::default(),
        })
    }
}

impl AdmissionConn {
    /// Sends one request without waiting for the answer.
    pub async fn send(&mut self, req: &Request) -> Result<(), AdmissionError> {
        let addr = self.proxy;
        self.stream
            .write_all(&encode(req))
            .await
            .map_err(|e| AdmissionError::Protocol {
                addr,
                detail: format!("send: {e}"),
            })
    }

    /// Whether the proxy asks us to move to another proxy, as it last said (a drain
    /// notice or a probe answer).
    pub fn draining(&self) -> bool {
        self.drain.draining
    }

    /// Why the proxy drains, when it said.
    pub fn drain_reason(&self) -> Option<&str> {
        self.drain.reason.as_deref()
    }

    /// Reads the next answer, skipping drain notices (recorded: [`Self::draining`]).
    /// Cancel-safe: bytes read stay buffered.
    pub async fn recv(&mut self) -> Result<Answer, AdmissionError> {
        loop {
            match self.recv_any().await? {
                Answer::Draining { .. } => continue,
                a => return Ok(a),
            }
        }
    }

    /// Reads the next message, drain notices included. Cancel-safe.
    pub async fn recv_any(&mut self) -> Result<Answer, AdmissionError> {
        let addr = self.proxy;
        let proto = |detail: String| AdmissionError::Protocol { addr, detail };
        let mut buf = [0u8; 2048];
        loop {
            if let Some(a) =
                next_message::<Answer>(&mut self.dec).map_err(|e| proto(e.to_string()))?
            {
                match &a {
                    Answer::Draining { draining, reason } => {
                        self.drain = Drain {
                            draining: *draining,
                            reason: reason.clone().filter(|_| *draining),
                        };
                    }
                    Answer::Pong { draining, .. } if *draining != self.drain.draining => {
                        self.drain = Drain {
                            draining: *draining,
                            reason: None,
                        };
                    }
                    _ => {}
                }
                return Ok(a);
            }
            match self.stream.read(&mut buf).await {
                Ok(0) => return Err(proto("the proxy closed the connection".into())),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) => return Err(proto(format!("receive: {e}"))),
            }
        }
    }

    /// One request, one answer, within `timeout`.
    pub async fn call(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Answer, AdmissionError> {
        let addr = self.proxy;
        tokio::time::timeout(timeout, async {
            self.send(req).await?;
            self.recv().await
        })
        .await
        .map_err(|_| AdmissionError::Timeout {
            addr,
            what: "answer",
        })?
    }

    /// Asks for admission and checks the answer against the request and the ALT set.
    pub async fn admit(
        &mut self,
        req: &AdmitRequest,
        alt: &[IpAddr],
        timeout: Duration,
    ) -> Result<Admitted, AdmissionError> {
        let addr = self.proxy;
        match self.call(&Request::Admit(req.clone()), timeout).await? {
            Answer::Admitted(a) => {
                check_admitted(&a, req, alt, self.local)
                    .map_err(|detail| AdmissionError::Protocol { addr, detail })?;
                Ok(a)
            }
            Answer::Refused { code, message } => Err(AdmissionError::Refused {
                addr,
                code,
                message,
            }),
            other => Err(AdmissionError::Protocol {
                addr,
                detail: format!("unexpected answer {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> PublicKey {
        PublicKey(format!("{}=", c.to_string().repeat(43)))
    }

    fn offer() -> Offer {
        Offer {
            encaps: vec![Encap::Udp, Encap::Wireguard],
            tunnel_address: None,
            port: Some(51820),
            public_key: Some(key('P')),
            outer_mtu: 1500,
            relay_mtu: 1440,
            allow: vec!["10.4.0.0/16".parse().unwrap()],
            max_clients: 2,
        }
    }

    fn req(targets: &[&str]) -> AdmitRequest {
        AdmitRequest {
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            encap: Encap::Wireguard,
            public_key: Some(key('C')),
            port: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn admit_is_idempotent_and_accumulates_targets() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        let (plan, ans) = a
            .plan_admit(c, ip("10.1.0.1"), &req(&["10.4.0.2"]), &offer())
            .unwrap();
        assert_eq!(ans.tunnel_address, ip("10.1.0.1"));
        assert_eq!(ans.inner_mtu, 1440);
        assert_eq!(ans.port, Some(51820));
        assert_eq!(ans.public_key, Some(key('P')));
        let first = plan.command.clone();
        a.commit(plan);
        // The same request again plans the same command.
        let (plan, _) = a
            .plan_admit(c, ip("10.1.0.1"), &req(&["10.4.0.2"]), &offer())
            .unwrap();
        assert_eq!(plan.command, first);
        a.commit(plan);
        // A second target adds to the first.
        let (plan, ans) = a
            .plan_admit(c, ip("10.1.0.1"), &req(&["10.4.0.3"]), &offer())
            .unwrap();
        assert_eq!(ans.targets, vec![ip("10.4.0.2"), ip("10.4.0.3")]);
        match &plan.command {
            Command::AddSession(s) => assert_eq!(s.targets.len(), 2),
            other => panic!("{other:?}"),
        }
        a.commit(plan);
        assert_eq!(a.len(), 1);
        // A new key (restarted client) starts afresh.
        let mut r = req(&["10.4.0.9"]);
        r.public_key = Some(key('D'));
        let (_, ans) = a.plan_admit(c, ip("10.1.0.1"), &r, &offer()).unwrap();
        assert_eq!(ans.targets, vec![ip("10.4.0.9")]);
    }

    #[test]
    fn refusals_are_typed_and_change_nothing() {
        let mut a = Admissions::default();
        let l = ip("10.1.0.1");
        let bad = |a: &Admissions, c: &str, r: &AdmitRequest| {
            a.plan_admit(ip(c), l, r, &offer()).unwrap_err().0
        };
        assert_eq!(bad(&a, "10.1.0.2", &req(&[])), RefusalCode::BadRequest);
        assert_eq!(
            bad(&a, "10.1.0.2", &req(&["10.9.0.1"])),
            RefusalCode::NotServed
        );
        assert_eq!(
            bad(&a, "10.1.0.2", &req(&["224.0.0.1"])),
            RefusalCode::BadRequest
        );
        let mut r = req(&["10.4.0.2"]);
        r.encap = Encap::Ipip;
        r.public_key = None;
        assert_eq!(bad(&a, "10.1.0.2", &r), RefusalCode::UnsupportedEncap);
        let mut r = req(&["10.4.0.2"]);
        r.public_key = None;
        assert_eq!(bad(&a, "10.1.0.2", &r), RefusalCode::BadRequest);
        let mut r = req(&["10.4.0.2"]);
        r.public_key = Some(PublicKey("short".into()));
        assert_eq!(bad(&a, "10.1.0.2", &r), RefusalCode::BadRequest);
        let many: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("10.4.1.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(bad(&a, "10.1.0.2", &req(&many)), RefusalCode::BadRequest);
        assert!(a.is_empty());
        for c in ["10.1.0.2", "10.1.0.3"] {
            let (p, _) = a
                .plan_admit(ip(c), l, &req(&["10.4.0.2"]), &offer())
                .unwrap();
            a.commit(p);
        }
        assert_eq!(bad(&a, "10.1.0.4", &req(&["10.4.0.2"])), RefusalCode::Full);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn release_and_lease() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        let (p, _) = a
            .plan_admit(c, ip("10.1.0.1"), &req(&["10.4.0.2", "10.4.0.3"]), &offer())
            .unwrap();
        a.commit(p);
        a.connected(c);
        assert!(a.plan_release(c, &[ip("10.4.0.99")]).is_none());
        let p = a.plan_release(c, &[ip("10.4.0.2")]).unwrap();
        assert!(matches!(p.command, Command::AddSession(_)));
        a.commit(p);
        assert_eq!(a.targets(c), vec![ip("10.4.0.3")]);
        let t0 = Instant::now();
        assert!(a.expired(t0, Duration::ZERO).is_empty(), "connected");
        a.disconnected(c, t0);
        assert!(a.expired(t0, Duration::from_secs(5)).is_empty());
        assert_eq!(
            a.expired(t0 + Duration::from_secs(5), Duration::from_secs(5)),
            vec![c]
        );
        let p = a.plan_release(c, &a.targets(c)).unwrap();
        assert_eq!(p.command, Command::RemoveSession { client: c });
        a.commit(p);
        assert!(a.is_empty());
    }

    #[test]
    fn answer_checks() {
        let r = req(&["10.4.0.2"]);
        let good = Admitted {
            client: ip("10.1.0.2"),
            tunnel_address: ip("10.1.0.1"),
            port: Some(51820),
            encap: Encap::Wireguard,
            public_key: Some(key('P')),
            inner_mtu: 1440,
            targets: vec![ip("10.4.0.2")],
        };
        let alt = [ip("10.1.0.1"), ip("10.1.0.9")];
        assert!(check_admitted(&good, &r, &alt, ip("10.1.0.2")).is_ok());
        let mut a = good.clone();
        a.tunnel_address = ip("10.66.0.1");
        assert!(check_admitted(&a, &r, &alt, ip("10.1.0.2"))
            .unwrap_err()
            .contains("not in the ALT set"));
        assert!(check_admitted(&good, &r, &alt, ip("10.1.0.7")).is_err());
        let mut a = good.clone();
        a.public_key = None;
        assert!(check_admitted(&a, &r, &alt, ip("10.1.0.2")).is_err());
        let mut a = good.clone();
        a.inner_mtu = 100;
        assert!(check_admitted(&a, &r, &alt, ip("10.1.0.2")).is_err());
        let mut a = good;
        a.targets.clear();
        assert!(check_admitted(&a, &r, &alt, ip("10.1.0.2")).is_err());
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let msgs = vec![
            Request::Admit(req(&["10.4.0.2", "2001:db8::1"])),
            Request::Ping { seq: 7 },
            Request::Release {
                targets: vec![ip("10.4.0.2")],
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode(m));
        }
        let mut d = decoder();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            d.push(b);
            while let Some(m) = next_message::<Request>(&mut d).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);

        for body in [
            &b"{}"[..],
            b"not json",
            br#"{"type":"admit"}"#,
            br#"{"type":"admit","targets":[],"encap":"gre"}"#,
            br#"{"type":"ping","seq":1,"extra":2}"#,
            br#"{"type":"launch"}"#,
        ] {
            let mut w = Vec::new();
            frame::encode(body, &mut w);
            let mut d = decoder();
            d.push(&w);
            assert!(
                next_message::<Request>(&mut d).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(body)
            );
        }
        let mut d = decoder();
        d.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(matches!(
            next_message::<Request>(&mut d),
            Err(DecodeError::Frame(_))
        ));
    }

    #[test]
    fn pong_carries_the_arrival_count_or_not() {
        for a in [
            Answer::Pong {
                seq: 3,
                arrived: Some(42),
                draining: false,
            },
            Answer::Pong {
                seq: 4,
                arrived: None,
                draining: true,
            },
        ] {
            let mut d = decoder();
            d.push(&encode(&a));
            assert_eq!(next_message::<Answer>(&mut d).unwrap(), Some(a));
        }
        // A proxy that sends no count is understood; an unknown field is refused.
        let old = br#"{"type":"pong","seq":9}"#;
        assert_eq!(
            serde_json::from_slice::<Answer>(old).unwrap(),
            Answer::Pong {
                seq: 9,
                arrived: None,
                draining: false,
            }
        );
        assert!(serde_json::from_slice::<Answer>(br#"{"type":"pong","seq":9,"x":1}"#).is_err());
        assert!(
            serde_json::from_slice::<Answer>(br#"{"type":"pong","seq":9,"arrived":-1}"#).is_err()
        );
    }

    #[test]
    fn drain_state_on_the_wire() {
        // Not draining: a pong is byte for byte what a proxy without the field sends,
        // so clients that predate it still understand it.
        let calm = Answer::Pong {
            seq: 1,
            arrived: Some(5),
            draining: false,
        };
        assert_eq!(
            serde_json::to_string(&calm).unwrap(),
            r#"{"type":"pong","seq":1,"arrived":5}"#
        );
        let busy = Answer::Pong {
            seq: 2,
            arrived: None,
            draining: true,
        };
        assert_eq!(
            serde_json::to_string(&busy).unwrap(),
            r#"{"type":"pong","seq":2,"draining":true}"#
        );
        // The notice, both ways; the reason goes only with draining and is bounded.
        let on = Drain::because(&"x".repeat(10 * MAX_REASON));
        assert_eq!(on.reason.as_ref().map(String::len), Some(MAX_REASON));
        let n = on.notice();
        let mut d = decoder();
        d.push(&encode(&n));
        assert_eq!(next_message::<Answer>(&mut d).unwrap(), Some(n));
        assert_eq!(
            serde_json::to_string(&Drain::default().notice()).unwrap(),
            r#"{"type":"draining","draining":false}"#
        );
        // A multi-byte character at the cut is not split.
        let r = Drain::because(&"é".repeat(MAX_REASON));
        assert!(r.reason.unwrap().len() <= MAX_REASON);
        // Malformed notices are refused.
        for bad in [
            &br#"{"type":"draining"}"#[..],
            br#"{"type":"draining","draining":"yes"}"#,
            br#"{"type":"draining","draining":true,"until":3}"#,
            br#"{"type":"pong","seq":1,"draining":1}"#,
        ] {
            assert!(
                serde_json::from_slice::<Answer>(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arrivals_add_up_per_client_address() {
        use scold_proto::dataplane::{Counters, PeerStats, Stats};
        let peer = |addr: &str, rx, dropped| PeerStats {
            name: format!("s-{addr}"),
            address: ip(addr),
            encap: Encap::Udp,
            counters: Counters {
                rx_packets: rx,
                dropped,
                ..Default::default()
            },
        };
        let stats = Stats {
            peers: vec![
                peer("10.1.0.2", 10, 2),
                peer("10.1.0.3", 0, 0),
                peer("10.1.0.2", 1, 0),
            ],
            ..Default::default()
        };
        let m = arrivals(&stats);
        assert_eq!(m.get(&ip("10.1.0.2")), Some(&13));
        assert_eq!(m.get(&ip("10.1.0.3")), Some(&0));
        assert_eq!(m.get(&ip("10.1.0.4")), None);
    }
}
