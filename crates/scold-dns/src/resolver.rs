//! `scold resolver` (ClientDNS): a caching forwarding resolver for a client site.
//!
//! It forwards misses to its upstream servers, caches answers for their TTL (negative
//! answers for the SOA's negative TTL, RFC 2308), and carries ALT like any other type:
//! records of unknown type are kept as opaque RDATA. A proxy under attack sends a
//! TSIG-signed NOTIFY naming a target (paper Section 3, step 4); the resolver verifies
//! it against the configured proxy keys and drops every cached answer for that name at
//! once, so the next lookup sees the new ALT set. Unsigned or wrongly signed NOTIFY
//! changes nothing and is logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::config::ResolverConfig;
use crate::net::{exchange, Transport};
use crate::tsig::{self, Verdict};
use crate::wire::name_key;

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({proto}): {source} (is another server on that port? ports below 1024 need root)")]
pub struct ResolverError {
    addr: SocketAddr,
    proto: &'static str,
    source: std::io::Error,
}

type CacheKey = (Vec<u8>, u16, u16);

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

/// The cache and settings.
pub struct Resolver {
    cfg: ResolverConfig,
    cache: Mutex<HashMap<CacheKey, Entry>>,
    /// Prometheus counters (registered when the config names a metrics address).
    pub metrics: crate::metrics::ResolverMetrics,
}

impl Resolver {
    /// A resolver with an empty cache.
    pub fn new(cfg: ResolverConfig) -> Self {
        Self {
            cfg,
            cache: Mutex::new(HashMap::new()),
            metrics: Default::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of cached answers (for tests and logs).
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    /// Drops every cached answer for `name` (any type); returns how many.
    pub fn flush_name(&self, name: &hickory_proto::rr::Name) -> usize {
        let key = name_key(name);
        let mut c = self.cache();
        let before = c.len();
        c.retain(|k, _| k.0 != key);
        before - c.len()
    }

    /// Answers one request; `None` means send nothing.
    pub async fn handle(&self, req: &[u8], src: SocketAddr, udp: bool) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(_) => {
                if req.len() < 12 || req[2] & 0x80 != 0 {
                    return None;
                }
                let mut out = Vec::new();
                crate::answer::header_only(&mut out, req, crate::answer::rcode::FORMERR, 0);
                return Some(out);
            }
        };
        if msg.metadata.message_type == MessageType::Response {
            return None;
        }
        match msg.metadata.op_code {
            OpCode::Notify => Some(self.notify(&msg, req, src)),
            OpCode::Query => Some(self.query(&msg, udp).await),
            _ => Some(error_reply(&msg, ResponseCode::NotImp)),
        }
    }

    fn notify(&self, msg: &Message, req: &[u8], src: SocketAddr) -> Vec<u8> {
        let Some(q) = msg.queries.first() else {
            return error_reply(msg, ResponseCode::FormErr);
        };
        let Some(sig) = msg.signature.as_ref() else {
            tracing::warn!(%src, name = %q.name(), "unsigned NOTIFY ignored: the cache is unchanged");
            self.metrics.notify("unsigned");
            return error_reply(msg, ResponseCode::Refused);
        };
        let now = tsig::now_secs();
        match tsig::verify_request(req, sig, &self.cfg.notify_keys, now) {
            Verdict::Ok { key, mac } => {
                let n = self.flush_name(q.name());
                self.metrics.notify("flushed");
                tracing::info!(%src, key = %self.cfg.notify_keys[key].name, name = %q.name(), dropped = n, "signed NOTIFY: cached name dropped");
                let mut resp = Message::response(msg.metadata.id, OpCode::Notify);
                resp.metadata.authoritative = true;
                resp.add_query(q.clone());
                let mut out = resp.to_vec().unwrap_or_default();
                if let Err(e) = tsig::sign_response(
                    &mut out,
                    &self.cfg.notify_keys[key],
                    &mac,
                    msg.metadata.id,
                    now,
                ) {
                    tracing::warn!(error = %e, "cannot sign the NOTIFY response");
                }
                out
            }
            v => {
                let why = match v {
                    Verdict::BadKey { .. } => "unknown key",
                    Verdict::BadSig { .. } => "bad signature",
                    Verdict::BadTime { .. } => "signed outside the time window",
                    _ => "malformed TSIG",
                };
                tracing::warn!(%src, key = %sig.name, name = %q.name(), reason = why, "NOTIFY ignored: the cache is unchanged");
                self.metrics.notify("bad_tsig");
                error_reply(msg, ResponseCode::NotAuth)
            }
        }
    }

    async fn query(&self, msg: &Message, udp: bool) -> Vec<u8> {
        if msg.queries.len() != 1 {
            return error_reply(msg, ResponseCode::FormErr);
        }
        let q = &msg.queries[0];
        let key: CacheKey = (
            name_key(q.name()),
            u16::from(q.query_type()),
            u16::from(q.query_class()),
        );
        let cached = {
            let mut c = self.cache();
            match c.get(&key) {
                Some(e) => {
                    let age = e.stored.elapsed().as_secs() as u32;
                    if age < e.ttl {
                        let mut m = e.msg.clone();
                        for r in m
                            .answers
                            .iter_mut()
                            .chain(m.authorities.iter_mut())
                            .chain(m.additionals.iter_mut())
                        {
                            r.ttl = r.ttl.saturating_sub(age);
                        }
                        Some(m)
                    } else {
                        c.remove(&key);
                        None
                    }
                }
                None => None,
            }
        };
        let resp = match cached {
            Some(m) => {
                self.metrics.answer("cache");
                m
            }
            None => match self.forward(q).await {
                Some(m) => {
                    self.metrics.answer("upstream");
                    self.store(key, &m);
                    m
                }
                None => {
                    self.metrics.answer("failed");
                    return error_reply(msg, ResponseCode::ServFail);
                }
            },
        };
        self.finish(msg, resp, udp)
    }

    /// Adapts a (cached or fresh) upstream answer to this client's request.
    fn finish(&self, req: &Message, mut m: Message, udp: bool) -> Vec<u8> {
        m.metadata.id = req.metadata.id;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.authoritative = false;
        m.queries = req.queries.clone();
        m.signature = None;
        m.edns = req.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(crate::answer::OUR_UDP_PAYLOAD);
            e
        });
        let limit = if udp {
            req.edns
                .as_ref()
                .map(|e| e.max_payload().clamp(512, crate::answer::OUR_UDP_PAYLOAD))
                .unwrap_or(512) as usize
        } else {
            u16::MAX as usize
        };
        match m.to_vec() {
            Ok(v) if v.len() <= limit => v,
            Ok(_) => {
                let mut t = m.truncate();
                t.metadata.truncation = true;
                t.to_vec().unwrap_or_default()
            }
            Err(_) => error_reply(req, ResponseCode::ServFail),
        }
    }

    async fn forward(&self, q: &Query) -> Option<Message> {
        let mut up = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        up.metadata.recursion_desired = true;
        up.add_query(q.clone());
        let mut e = Edns::new();
        e.set_max_payload(crate::answer::OUR_UDP_PAYLOAD);
        up.set_edns(e);
        let bytes = up.to_vec().ok()?;
        let timeout = Duration::from_millis(self.cfg.upstream_timeout_ms);
        for server in &self.cfg.upstream {
            match exchange(*server, &bytes, timeout, Transport::Auto).await {
                Ok(r) => match Message::from_vec(&r) {
                    Ok(m) if m.metadata.id == up.metadata.id => {
                        if matches!(
                            m.metadata.response_code,
                            ResponseCode::ServFail | ResponseCode::Refused
                        ) {
                            tracing::debug!(%server, rcode = ?m.metadata.response_code, "upstream failed; trying the next");
                            continue;
                        }
                        return Some(m);
                    }
                    _ => tracing::debug!(%server, "upstream sent an unusable answer"),
                },
                Err(e) => tracing::debug!(%server, error = %e, "upstream did not answer"),
            }
        }
        tracing::warn!(name = %q.name(), "no upstream answered");
        None
    }

    fn store(&self, key: CacheKey, m: &Message) {
        let rc = m.metadata.response_code;
        if !(rc == ResponseCode::NoError || rc == ResponseCode::NXDomain) || m.metadata.truncation {
            return;
        }
        let ttl = if m.answers.is_empty() {
            // Negative answer: the SOA's TTL bounded by its MINIMUM (RFC 2308 section 5).
            m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        } else {
            m.answers
                .iter()
                .chain(m.authorities.iter())
                .filter(|r| r.record_type() != RecordType::OPT && r.dns_class != DNSClass::NONE)
                .map(|r| r.ttl)
                .min()
        };
        let Some(ttl) = ttl.map(|t| t.min(self.cfg.max_ttl)) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let mut c = self.cache();
        if c.len() >= self.cfg.cache_entries {
            // Full: drop what has expired; if that is not enough, drop everything older
            // than the median age. Rare, and bounded work.
            c.retain(|_, e| e.stored.elapsed().as_secs() < e.ttl as u64);
            if c.len() >= self.cfg.cache_entries {
                let n = c.len() / 2;
                let keys: Vec<CacheKey> = c.keys().take(n).cloned().collect();
                for k in keys {
                    c.remove(&k);
                }
            }
        }
        let mut msg = m.clone();
        msg.edns = None;
        msg.signature = None;
        c.insert(
            key,
            Entry {
                msg,
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

fn error_reply(req: &Message, rc: ResponseCode) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.response_code = rc;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    if let Some(q) = req.queries.first() {
        m.add_query(q.clone());
    }
    m.to_vec().unwrap_or_default()
}

/// Largest number of UDP queries being answered at once.
const MAX_IN_FLIGHT: usize = 4096;
/// Largest number of concurrent TCP clients.
const MAX_TCP_CONNECTIONS: usize = 256;

/// A started resolver.
pub struct RunningResolver {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The addresses actually bound.
    pub addrs: Vec<SocketAddr>,
    /// The resolver (cache inspection in tests).
    pub inner: Arc<Resolver>,
}

impl RunningResolver {
    /// Stops serving.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the resolver (call within a tokio runtime).
pub async fn start(cfg: &ResolverConfig) -> Result<RunningResolver, ResolverError> {
    let inner = Arc::new(Resolver::new(cfg.clone()));
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for &want in &cfg.listen {
        let udp = UdpSocket::bind(want)
            .await
            .map_err(|source| ResolverError {
                addr: want,
                proto: "udp",
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| ResolverError {
            addr: want,
            proto: "udp",
            source,
        })?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ResolverError {
                addr,
                proto: "tcp",
                source,
            })?;
        let udp = Arc::new(udp);
        let r = inner.clone();
        // Bounded work in flight: a flood of misses waiting on the upstream must not
        // grow memory without limit; past the bound, queries are dropped.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    tracing::debug!(%src, "too many queries in flight; dropped");
                    continue;
                };
                let req = buf[..n].to_vec();
                let (r, udp) = (r.clone(), udp.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(resp) = r.handle(&req, src, true).await {
                        let _ = udp.send_to(&resp, src).await;
                    }
                });
            }
        }));
        let r = inner.clone();
        let conns = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut s, src)) = tcp.accept().await else {
                    continue;
                };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    continue;
                };
                let r = r.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    loop {
                        let mut lb = [0u8; 2];
                        let idle = Duration::from_secs(10);
                        if !matches!(
                            tokio::time::timeout(idle, s.read_exact(&mut lb)).await,
                            Ok(Ok(_))
                        ) {
                            return;
                        }
                        let mut req = vec![0u8; u16::from_be_bytes(lb) as usize];
                        if !matches!(
                            tokio::time::timeout(idle, s.read_exact(&mut req)).await,
                            Ok(Ok(_))
                        ) {
                            return;
                        }
                        let Some(resp) = r.handle(&req, src, false).await else {
                            continue;
                        };
                        let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&resp);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
        tracing::info!(%addr, upstream = ?cfg.upstream, "scold resolver listening on UDP and TCP");
        addrs.push(addr);
    }
    Ok(RunningResolver {
        tasks,
        addrs,
        inner,
    })
}
