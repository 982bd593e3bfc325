//! `scold dns`: the authoritative server's I/O.
//!
//! UDP is served by blocking worker threads, one socket each on the same address
//! (`SO_REUSEPORT`, so the kernel spreads queries), because a plain `recvfrom` /
//! `sendto` loop over a precompiled answer costs far less CPU per query than an async
//! runtime's wake-ups. TCP, which is rarer and needs timeouts per connection, runs on
//! tokio. UPDATE, NOTIFY and TSIG-signed messages leave the fast path for
//! [`Shared::handle_slow`], where hickory-proto parses them fully.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::answer::{self, rcode, Outcome};
use crate::config::{DnsConfig, Secondary};
use crate::journal::Journal;
use crate::rrl::{Action, Rrl, RrlConfig};
use crate::tsig::{self, TsigKey, Verdict};
use crate::update::{self, Policy, UpdateResult};
use crate::zone::{Catalog, Zone};

pub use crate::error::ServerError;

/// State shared by every worker.
pub struct Shared {
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    pub(crate) generation: AtomicU64,
    /// TSIG keys, their update policies and the secondaries (which name keys by index):
    /// swapped together by a config reload, read once per request.
    access: RwLock<Arc<Access>>,
    /// Held by whoever changes the catalog (an update, a zone reload), so changes
    /// apply one at a time in journal order.
    pub(crate) journal: Mutex<Journal>,
    pub(crate) alt_type: u16,
    /// Per zone apex: the zone file its served data was loaded from, with its
    /// fingerprint then, so a reload skips zone files nobody touched.
    pub(crate) sources: Mutex<std::collections::HashMap<Vec<u8>, (std::path::PathBuf, String)>>,
    /// Zones that changed (by apex key), for the NOTIFY sender (set once the server runs).
    changed: OnceLock<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    /// Prometheus counters (registered when the config names a metrics address).
    pub metrics: crate::metrics::DnsMetrics,
}

/// Who may do what: the keys, each key's update policy, the secondaries.
pub struct Access {
    pub keys: Vec<TsigKey>,
    pub policies: Vec<Policy>,
    pub secondaries: Vec<Secondary>,
}

impl Access {
    fn of(cfg: &DnsConfig) -> Access {
        let (keys, policies) = cfg.keys.iter().cloned().unzip();
        Access {
            keys,
            policies,
            secondaries: cfg.secondaries.clone(),
        }
    }
}

impl Shared {
    /// Loads the zones and replays the journal over them (a damaged journal stops it).
    pub fn load(cfg: &DnsConfig) -> Result<Self, ServerError> {
        Self::load_with(cfg, crate::startup::StartOptions::default())
    }

    /// Loads the zones and the journal as [`crate::startup`] decides with `opts`, and
    /// brings the journal on disk in line.
    pub fn load_with(
        cfg: &DnsConfig,
        opts: crate::startup::StartOptions,
    ) -> Result<Self, ServerError> {
        let plan = crate::startup::plan(cfg, opts)?;
        let (datas, histories, journal) = crate::startup::apply(plan)?;
        let mut sources = std::collections::HashMap::new();
        for (z, (_, file)) in datas.iter().zip(&cfg.zones) {
            tracing::info!(zone = %z.origin, file = %file.display(), records = z.rr_count(), serial = z.soa().map(|s| s.serial), "zone loaded");
            sources.insert(
                z.apex.clone(),
                (file.clone(), crate::zonereload::fingerprint(file)),
            );
        }
        let catalog = Catalog {
            zones: datas
                .into_iter()
                .zip(histories)
                .map(|(d, h)| Arc::new(Zone::with_history(d, h)))
                .collect(),
        };
        Ok(Self {
            catalog: RwLock::new(Arc::new(catalog)),
            generation: AtomicU64::new(0),
            access: RwLock::new(Arc::new(Access::of(cfg))),
            journal: Mutex::new(journal),
            alt_type: cfg.alt_type,
            sources: Mutex::new(sources),
            changed: OnceLock::new(),
            metrics: Default::default(),
        })
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes whenever the catalog does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The keys, policies and secondaries in force now.
    pub fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts the TSIG keys, update policies and secondaries of a reloaded config in
    /// force; a request being answered finishes with the ones it started with.
    pub fn set_access(&self, cfg: &DnsConfig) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Access::of(cfg));
        tracing::info!(
            keys = cfg.keys.len(),
            secondaries = cfg.secondaries.len(),
            "TSIG keys, update policies and secondaries reloaded"
        );
    }

    /// Tells the NOTIFY sender that the zone with apex key `apex` changed (nothing
    /// before the server runs).
    pub(crate) fn zone_changed(&self, apex: &[u8]) {
        if let Some(tx) = self.changed.get() {
            let _ = tx.send(apex.to_vec());
        }
    }

    /// Handles UPDATE, NOTIFY and signed messages. Returns the response to send, if any
    /// (the first message of a multi-message transfer answer: over UDP there is no other).
    pub fn handle_slow(&self, req: &[u8], src: SocketAddr, udp: bool) -> Option<Vec<u8>> {
        self.handle_slow_all(req, src, udp).into_iter().next()
    }

    /// Like [`Shared::handle_slow`], with every message of the answer: a zone transfer
    /// over TCP may take several.
    pub fn handle_slow_all(&self, req: &[u8], src: SocketAddr, udp: bool) -> Vec<Vec<u8>> {
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%src, error = %e, "unparseable message");
                let mut out = Vec::new();
                answer::header_only(&mut out, req, rcode::FORMERR, opcode_bits(req));
                return vec![out];
            }
        };
        if msg.metadata.message_type == MessageType::Response {
            return Vec::new();
        }
        let acc = self.access();
        match msg.metadata.op_code {
            OpCode::Update => vec![self.handle_update(&acc, &msg, req, src)],
            OpCode::Query => self.signed_query(&acc, msg, req, src, udp),
            _ => {
                let mut out = Vec::new();
                answer::header_only(&mut out, req, rcode::NOTIMP, opcode_bits(req));
                vec![out]
            }
        }
    }

    fn signed_query(
        &self,
        acc: &Access,
        mut msg: Message,
        req: &[u8],
        src: SocketAddr,
        udp: bool,
    ) -> Vec<Vec<u8>> {
        let Some(sig) = msg.signature.take() else {
            let mut out = Vec::new();
            answer::header_only(&mut out, req, rcode::FORMERR, 0);
            return vec![out];
        };
        let now = tsig::now_secs();
        match tsig::verify_request(req, &sig, &acc.keys, now) {
            Verdict::Ok { key, mac } => {
                let is_transfer = msg.queries.len() == 1
                    && matches!(
                        msg.queries[0].query_type(),
                        RecordType::AXFR | RecordType::IXFR
                    );
                if is_transfer {
                    return self.transfer(acc, &msg, key, &mac, src, udp, now);
                }
                let Ok(unsigned) = msg.to_vec() else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                if answer::answer(&self.catalog(), &unsigned, &mut out, udp) != Outcome::Reply {
                    return Vec::new();
                }
                if tsig::sign_response(&mut out, &acc.keys[key], &mac, msg.metadata.id, now)
                    .is_err()
                {
                    return Vec::new();
                }
                vec![out]
            }
            v => vec![self.tsig_failure(acc, &msg, v, src, now)],
        }
    }

    /// A signed response with `rc` and nothing else (a refused transfer).
    fn signed_error(
        &self,
        acc: &Access,
        msg: &Message,
        rc: u16,
        key: usize,
        mac: &[u8],
        now: u64,
    ) -> Vec<u8> {
        let mut out = self.response(msg, rc);
        if let Err(e) = tsig::sign_response(&mut out, &acc.keys[key], mac, msg.metadata.id, now) {
            tracing::warn!(error = %e, "cannot sign the answer");
        }
        out
    }

    /// AXFR or IXFR from a request whose TSIG verified with key `key`: answered only to a
    /// secondary configured with that key for that zone (and, if it lists addresses,
    /// from one of them); every message of the answer is signed.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        acc: &Access,
        msg: &Message,
        key: usize,
        mac: &[u8],
        src: SocketAddr,
        udp: bool,
        now: u64,
    ) -> Vec<Vec<u8>> {
        let q = &msg.queries[0];
        let ixfr = q.query_type() == RecordType::IXFR;
        let kind = if ixfr { "IXFR" } else { "AXFR" };
        let keyname = &acc.keys[key].name;
        let cat = self.catalog();
        let apex = crate::wire::name_key(q.name());
        let Some(zi) = cat.find_exact(&apex) else {
            tracing::warn!(%src, key = %keyname, zone = %q.name(), "{kind} for a zone not served here; refused");
            self.metrics.transfer("refused");
            return vec![self.signed_error(acc, msg, rcode::NOTAUTH, key, mac, now)];
        };
        let sec = acc
            .secondaries
            .iter()
            .find(|s| s.key == key && s.serves(&apex) && s.allows_from(src.ip()));
        let Some(sec) = sec else {
            tracing::warn!(%src, key = %keyname, zone = %q.name(), "{kind} refused: no [[secondary]] with this key may transfer this zone from this address");
            self.metrics.transfer("refused");
            return vec![self.signed_error(acc, msg, rcode::REFUSED, key, mac, now)];
        };
        let zone = &cat.zones[zi];
        let current = zone.data.serial();
        let plan = if ixfr {
            let client = msg.authorities.first().and_then(|r| match &r.data {
                hickory_proto::rr::RData::SOA(soa) => Some(soa.serial),
                _ => None,
            });
            let Some(client) = client else {
                return vec![self.signed_error(acc, msg, rcode::FORMERR, key, mac, now)];
            };
            let plan = crate::transfer::plan_ixfr(current, &zone.history, client);
            if udp && plan != crate::transfer::Plan::UpToDate {
                // RFC 1995 section 2: an answer that does not fit a datagram is the
                // current SOA alone, and the client comes back over TCP.
                tracing::info!(%src, secondary = %sec.name, zone = %q.name(), client_serial = client, serial = current, "IXFR over UDP: answered with the SOA, for a transfer over TCP");
                self.metrics.transfer("udp_soa");
                crate::transfer::Plan::UpToDate
            } else {
                if !udp {
                    tracing::info!(%src, secondary = %sec.name, zone = %q.name(), client_serial = client, serial = current, answer = plan.kind(), "IXFR");
                }
                self.metrics.transfer(plan.kind());
                plan
            }
        } else {
            if udp {
                tracing::warn!(%src, secondary = %sec.name, zone = %q.name(), "AXFR over UDP refused: zone transfers run over TCP");
                self.metrics.transfer("refused");
                return vec![self.signed_error(acc, msg, rcode::REFUSED, key, mac, now)];
            }
            tracing::info!(%src, secondary = %sec.name, zone = %q.name(), serial = current, "AXFR");
            self.metrics.transfer("full");
            crate::transfer::Plan::Full
        };
        let rrs = crate::transfer::records(&zone.data, &plan);
        let question = crate::transfer::Question {
            name: crate::wire::name_wire(q.name()),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class()),
        };
        let mut msgs = crate::transfer::messages(
            msg.metadata.id,
            &question,
            &rrs,
            crate::transfer::MESSAGE_LIMIT,
        );
        if let Err(e) =
            crate::transfer::sign_all(&mut msgs, &acc.keys[key], mac, msg.metadata.id, now)
        {
            tracing::error!(error = %e, "cannot sign the transfer");
            return vec![self.signed_error(acc, msg, rcode::SERVFAIL, key, mac, now)];
        }
        tracing::debug!(%src, zone = %q.name(), records = rrs.len(), messages = msgs.len(), "{kind} answer");
        msgs
    }

    fn tsig_failure(
        &self,
        acc: &Access,
        msg: &Message,
        v: Verdict,
        src: SocketAddr,
        now: u64,
    ) -> Vec<u8> {
        let sig_name = msg
            .signature
            .as_ref()
            .map(|s| s.name.to_ascii())
            .unwrap_or_default();
        let (rc, err) = match &v {
            Verdict::BadKey { .. } => (rcode::NOTAUTH, Some(TsigError::BadKey)),
            Verdict::BadSig { .. } => (rcode::NOTAUTH, Some(TsigError::BadSig)),
            Verdict::BadTime { .. } => (rcode::NOTAUTH, Some(TsigError::BadTime)),
            Verdict::Malformed | Verdict::Ok { .. } => (rcode::FORMERR, None),
        };
        tracing::warn!(%src, key = %sig_name, error = ?err, "TSIG check failed; request refused");
        let mut out = self.response(msg, rc);
        let id = msg.metadata.id;
        let r = match v {
            Verdict::BadKey { name } => {
                let alg = msg
                    .signature
                    .as_ref()
                    .map(|s| s.data.algorithm.clone())
                    .unwrap_or(hickory_proto::rr::rdata::tsig::TsigAlgorithm::HmacSha256);
                tsig::append_unsigned_error(&mut out, &name, alg, id, now, TsigError::BadKey)
            }
            Verdict::BadSig { key } => tsig::append_unsigned_error(
                &mut out,
                &acc.keys[key].dns_name(),
                acc.keys[key].algorithm.to_hickory(),
                id,
                now,
                TsigError::BadSig,
            ),
            Verdict::BadTime {
                key,
                mac,
                time,
                fudge,
            } => tsig::sign_badtime_response(&mut out, &acc.keys[key], &mac, id, time, fudge, now),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot append the TSIG error record");
        }
        out
    }

    /// An unsigned response echoing the question/zone section.
    fn response(&self, msg: &Message, rc: u16) -> Vec<u8> {
        let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
        resp.metadata.response_code = <ResponseCode as From<u16>>::from(rc);
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        if let Some(q) = msg.queries.first() {
            resp.add_query(q.clone());
        }
        resp.to_vec().unwrap_or_else(|_| {
            let mut out = Vec::new();
            answer::header_only(&mut out, &msg.metadata.id.to_be_bytes(), rc, 0);
            out
        })
    }

    fn handle_update(&self, acc: &Access, msg: &Message, req: &[u8], src: SocketAddr) -> Vec<u8> {
        let now = tsig::now_secs();
        let Some(sig) = msg.signature.as_ref() else {
            tracing::warn!(%src, "unsigned UPDATE refused: updates need a TSIG key");
            self.metrics.update("unsigned");
            return self.response(msg, rcode::REFUSED);
        };
        let (key, mac) = match tsig::verify_request(req, sig, &acc.keys, now) {
            Verdict::Ok { key, mac } => (key, mac),
            v => {
                self.metrics.update("bad_tsig");
                return self.tsig_failure(acc, msg, v, src, now);
            }
        };
        let rc = self.apply_update(acc, msg, key, src);
        let mut out = self.response(msg, rc);
        if let Err(e) = tsig::sign_response(&mut out, &acc.keys[key], &mac, msg.metadata.id, now) {
            tracing::warn!(error = %e, "cannot sign the UPDATE response");
        }
        out
    }

    fn apply_update(&self, acc: &Access, msg: &Message, key: usize, src: SocketAddr) -> u16 {
        let Some(zq) = msg.queries.first() else {
            return rcode::FORMERR;
        };
        let zkey = crate::wire::name_key(zq.name());
        // One update at a time: each sees the previous one's result, and the journal
        // order is the apply order.
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let cat = self.catalog();
        let Some(zi) = cat.find_exact(&zkey) else {
            tracing::warn!(%src, zone = %zq.name(), "UPDATE for a zone not served here");
            return rcode::NOTAUTH;
        };
        let keyname = &acc.keys[key].name;
        match update::apply(msg, &cat.zones[zi].data, &acc.policies[key], self.alt_type) {
            UpdateResult::NoChange => {
                tracing::info!(%src, key = %keyname, zone = %zq.name(), "UPDATE accepted; nothing to change");
                self.metrics.update("unchanged");
                rcode::NOERROR
            }
            UpdateResult::Error(rc, why) => {
                tracing::warn!(%src, key = %keyname, zone = %zq.name(), rcode = rc, reason = %why, "UPDATE refused");
                self.metrics.update("refused");
                rc
            }
            UpdateResult::Changed { zone, changes } => {
                if let Err(e) = journal.append(&changes) {
                    tracing::error!(error = %e, "UPDATE not applied: the journal cannot be written");
                    self.metrics.update("error");
                    return rcode::SERVFAIL;
                }
                let old = &cat.zones[zi];
                let touched = crate::transfer::touched(&changes);
                let history = match crate::transfer::diff(&old.data, &zone, &touched) {
                    Some(d) => crate::transfer::extend(&old.history, d),
                    None => Vec::new().into(),
                };
                let mut zones = cat.zones.clone();
                zones[zi] = Arc::new(Zone::with_history(*zone, history));
                *self.catalog.write().unwrap_or_else(|p| p.into_inner()) =
                    Arc::new(Catalog { zones });
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.zone_changed(&cat.zones[zi].data.apex);
                tracing::info!(%src, key = %keyname, zone = %zq.name(), serial = changes.serial, rrsets = changes.changes.len() - 1, "UPDATE applied and journaled");
                self.metrics.update("applied");
                rcode::NOERROR
            }
        }
    }
}

fn opcode_bits(req: &[u8]) -> u16 {
    if req.len() >= 3 {
        (req[2] as u16 & 0x78) << 8
    } else {
        0
    }
}

/// A started server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tcp: Vec<tokio::task::JoinHandle<()>>,
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// Shared state (for tests and metrics).
    pub shared: Arc<Shared>,
}

impl RunningServer {
    /// Stops accepting, lets workers finish the message in hand, and joins them.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for t in &self.tcp {
            t.abort();
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Room for bursts: a flood fills the queue, not the server's memory.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s.into())
}

/// Starts serving `cfg` (call within a tokio runtime).
pub async fn start(cfg: &DnsConfig) -> Result<RunningServer, ServerError> {
    let shared = Arc::new(Shared::load(cfg)?);
    start_with(cfg, shared).await
}

/// Starts serving with already-loaded state.
pub async fn start_with(
    cfg: &DnsConfig,
    shared: Arc<Shared>,
) -> Result<RunningServer, ServerError> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = if cfg.udp_workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.udp_workers
    };
    let mut threads = Vec::new();
    let mut tcp = Vec::new();
    let mut addrs = Vec::new();
    let conn_limit = Arc::new(tokio::sync::Semaphore::new(cfg.tcp_max_connections));
    for &want in &cfg.listen {
        let bind_err = |proto, source| ServerError::Bind {
            addr: want,
            proto,
            source,
        };
        let first = udp_socket(want).map_err(|e| bind_err("udp", e))?;
        let addr = first.local_addr().map_err(|e| bind_err("udp", e))?;
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(udp_socket(addr).map_err(|e| bind_err("udp", e))?);
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err("tcp", e))?;
        for (i, s) in socks.into_iter().enumerate() {
            let sh = shared.clone();
            let st = stop.clone();
            let rrl = cfg.rrl;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_worker(s, sh, st, rrl))
                    .map_err(|e| bind_err("udp", e))?,
            );
        }
        let sh = shared.clone();
        let idle = Duration::from_secs(cfg.tcp_idle_timeout_secs);
        let lim = conn_limit.clone();
        tcp.push(tokio::spawn(tcp_accept(listener, sh, idle, lim)));
        tracing::info!(%addr, udp_workers = workers, "scold dns listening on UDP and TCP");
        addrs.push(addr);
    }
    // Also without secondaries: a reload may add some.
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if shared.changed.set(tx.clone()).is_ok() {
            tcp.push(tokio::spawn(crate::notify::run(shared.clone(), rx)));
            // The zones as loaded may be news to the secondaries (a restart after the
            // zone file changed, or updates they missed while this server was down).
            for z in &shared.catalog().zones {
                let _ = tx.send(z.data.apex.clone());
            }
        }
    }
    Ok(RunningServer {
        stop,
        threads,
        tcp,
        addrs,
        shared,
    })
}

fn udp_worker(sock: UdpSocket, shared: Arc<Shared>, stop: Arc<AtomicBool>, rrl_cfg: RrlConfig) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(4096);
    let mut cat = shared.catalog();
    let mut gen = shared.generation();
    let mut rrl = Rrl::new(rrl_cfg);
    let limiting = rrl_cfg.responses_per_second > 0;
    let t0 = Instant::now();
    let mut last_limited_log = 0u64;
    let mut counts = crate::metrics::LocalCounts::default();
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                counts.flush(&shared.metrics);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let g = shared.generation();
        if g != gen {
            cat = shared.catalog();
            gen = g;
        }
        counts.tick(&shared.metrics);
        let req = &buf[..n];
        let resp: &[u8] = match answer::answer(&cat, req, &mut out, true) {
            Outcome::Reply => {
                if limiting {
                    let now_ms = t0.elapsed().as_millis() as u64 + 1;
                    match rrl.check(src.ip(), now_ms) {
                        Action::Send => {
                            counts.fast += 1;
                            &out
                        }
                        Action::Slip => {
                            counts.slipped += 1;
                            answer::make_truncated(&mut out, req);
                            &out
                        }
                        Action::Drop => {
                            counts.limited += 1;
                            if rrl.limited_total >= last_limited_log * 2 + 1000 {
                                last_limited_log = rrl.limited_total;
                                tracing::warn!(%src, limited = rrl.limited_total, "rate limiting responses");
                            }
                            continue;
                        }
                    }
                } else {
                    counts.fast += 1;
                    &out
                }
            }
            Outcome::Drop => {
                counts.dropped += 1;
                continue;
            }
            Outcome::Slow => match shared.handle_slow(req, src, true) {
                Some(r) => {
                    counts.full += 1;
                    out = r;
                    &out
                }
                None => {
                    counts.dropped += 1;
                    continue;
                }
            },
        };
        if let Err(e) = sock.send_to(resp, src) {
            tracing::debug!(%src, error = %e, "udp send failed");
        }
    }
    counts.flush(&shared.metrics);
}

async fn tcp_accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    idle: Duration,
    limit: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%src, "tcp connection limit reached; closing");
            continue;
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tcp_conn(stream, src, sh, idle).await {
                tracing::debug!(%src, error = %e, "tcp connection ended");
            }
        });
    }
}

async fn tcp_conn(
    mut stream: tokio::net::TcpStream,
    src: SocketAddr,
    shared: Arc<Shared>,
    idle: Duration,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    let mut req = Vec::with_capacity(512);
    loop {
        let mut lenb = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut lenb)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let len = u16::from_be_bytes(lenb) as usize;
        req.resize(len, 0);
        tokio::time::timeout(idle, stream.read_exact(&mut req))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow client"))??;
        let cat = shared.catalog();
        let resp = match answer::answer(&cat, &req, &mut out, false) {
            Outcome::Reply => {
                shared.metrics.answer("fast", 1);
                std::mem::take(&mut out)
            }
            Outcome::Drop => {
                shared.metrics.dropped.inc();
                return Ok(());
            }
            Outcome::Slow => {
                let sh = shared.clone();
                let r = std::mem::take(&mut req);
                let (mut resp, r) =
                    tokio::task::spawn_blocking(move || (sh.handle_slow_all(&r, src, false), r))
                        .await
                        .map_err(std::io::Error::other)?;
                req = r;
                if resp.is_empty() {
                    shared.metrics.dropped.inc();
                    continue;
                }
                shared.metrics.answer("full", 1);
                let last = resp.pop().expect("not empty");
                for m in resp {
                    framed.clear();
                    framed.extend_from_slice(&(m.len() as u16).to_be_bytes());
                    framed.extend_from_slice(&m);
                    stream.write_all(&framed).await?;
                }
                last
            }
        };
        framed.clear();
        framed.extend_from_slice(&(resp.len() as u16).to_be_bytes());
        framed.extend_from_slice(&resp);
        stream.write_all(&framed).await?;
        out = resp;
    }
}
