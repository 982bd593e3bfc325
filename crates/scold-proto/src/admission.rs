//! The admission exchange of scheme 4.1 (paper Section 4.1), sans-IO: a client agent asks
//! a proxy to carry it to a target, and the proxy admits it as a tunnel session.
//!
//! The client opens TLS 1.3 to the proxy's admission port. The proxy presents its
//! consortium certificate (role `proxy`); the client holds only the CA certificate and
//! checks that the proxy chains to it, that the role is `proxy`, that the address it
//! connected to is in the ALT set DNS gave it (and, when the certificate names IP
//! addresses, among them). The client has no certificate: the proxy admits it by the
//! address the connection comes from and the tunnel key it sends, and lets it reach only
//! the targets it asked for.
//!
//! Before TLS, the client writes a cookie preamble ([`crate::cookie`]): `SCKQ`, version
//! 1, a length (0 or 16) and the cookie this proxy last gave it at this address, if any;
//! its ClientHello follows at once, without waiting. The proxy reads the preamble first.
//! While it holds fewer than `cookie_after` connections that are not yet admitted (in
//! their TLS handshake or before their first request; 0: always), it ignores the cookie
//! and the TLS handshake goes on. Under load it goes on only when the cookie is the one
//! its current or previous secret (replaced every two minutes) makes for the client's
//! address and the address and port it connected to; otherwise it writes a cookie reply
//! instead of TLS (`SCKR`, version 1, length 16, the cookie for this address) and closes
//! the connection at once, holding nothing for it. The client tells the reply from TLS by
//! its first byte (`S`, 0x53; a TLS record starts with 0x14 to 0x17), keeps the cookie
//! for this proxy and connects again with it at once: one extra round trip under load,
//! none otherwise. A client that sends no preamble (its first byte is TLS's) is served
//! as before while the proxy is not under load, and closed without a word while it is; a
//! malformed preamble (another magic, version or length) is closed at once.
//!
//! Messages are JSON in the control channel's frames ([`crate::frame`]), at most
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
//! reset to reach it through DNS. A proxy that is not draining sends exactly what it sent
//! before this message existed; a client that predates it refuses the unknown message and
//! drops the connection, which moves it to another proxy too.
//!
//! A session whose client has no open admission connection is removed after the lease
//! time, so clients that failed over elsewhere do not stay admitted for ever.
//!
//! Here: the messages and their codec, the proxy's judgement and bookkeeping
//! ([`Admissions`]), and the client's check of an answer ([`check_admitted`]). The
//! proxy's server and the client's connector that drive them over TLS are in
//! `scold-node` (`proxy::admission`, `client::admission`).

use crate::dataplane::{Command, Encap, Prefix, PublicKey, Session, Stats};
use crate::frame;
use crate::limits::prefix_of;
#[cfg(test)]
use frame::{edge_decoder as decoder, encode_message as encode, next_message};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The admission port proxies listen on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 5443;
/// Largest admission frame; a request names at most [`MAX_TARGETS`] addresses.
pub const MAX_FRAME: usize = frame::EDGE_MAX_FRAME;
/// Largest number of target addresses in one request.
pub const MAX_TARGETS: usize = 32;
/// Longest `reason` of a drain notice, in bytes (it is for logs).
pub const MAX_REASON: usize = 256;

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
    /// The client's engine threads, when more than one: the proxy's replies then keep
    /// each GSO run within one steering bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<u8>,
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
    /// Engine threads the proxy reads its tunnel with (its `[tunnel] engines`), when
    /// more than one: packets to it go in GSO runs that each keep to one steering
    /// bucket, so that every flow reaches one of its engines, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<u8>,
    /// The largest inner packet the whole path carries unfragmented.
    pub inner_mtu: u16,
    /// Every target this client is now admitted to at this proxy.
    pub targets: Vec<IpAddr>,
}

/// Why an admission was refused. A refusal changes nothing at the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmitRefusal {
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
    /// Another live admission connection holds this address's session, or the request
    /// would downgrade a WireGuard session: the session is bound to the connection that
    /// created it and to its encapsulation, not to the address alone.
    SessionHeld,
}

/// A client's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Admit(AdmitRequest),
    Ping { seq: u64 },
    Release { targets: Vec<IpAddr> },
}

/// The proxy's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProxyMessage {
    Admitted(Admitted),
    /// `arrived`: the client's tunnel packets that have reached the proxy so far (kept
    /// or dropped), from its data plane's counters; absent when the data plane did not
    /// answer in time. The agent compares it with what it sent, so the probe watches the
    /// tunnel path itself, not only the proxy's admission port.
    ///
    /// `draining`: the proxy asks its clients to move to another proxy (see
    /// [`ProxyMessage::Draining`]); left out while false, so a proxy that is not draining
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
        code: AdmitRefusal,
        message: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether a proxy asks its admitted clients to move to another proxy, and why: set by
/// its self-defence when it declares the proxy under attack, cleared when it has
/// recovered. The admission server tells every client (probe answers and a
/// [`ProxyMessage::Draining`] notice on each open connection).
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
    pub fn notice(&self) -> ProxyMessage {
        ProxyMessage::Draining {
            draining: self.draining,
            reason: self.reason.clone().filter(|_| self.draining),
        }
    }
}

/// Why an admission request is malformed (answered with [`AdmitRefusal::BadRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("no targets: name the target addresses from the A/AAAA answer")]
    NoTargets,
    #[error("{0} targets; at most {MAX_TARGETS} per request")]
    TooManyTargets(usize),
    #[error("target {0} is not a unicast address")]
    NotUnicast(IpAddr),
    #[error("target {0}: ipip carries IPv4 only")]
    IpipIpv6(IpAddr),
    #[error("wireguard needs the client's public key")]
    MissingKey,
    #[error("public key is not 44 characters of base64")]
    BadKey,
    #[error("a public key makes no sense with {0}")]
    UnexpectedKey(Encap),
    #[error("port 0; leave it out to have it learned")]
    PortZero,
}

impl AdmitRequest {
    /// Checks what can be checked without the proxy's state.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if self.targets.is_empty() {
            return Err(InvalidRequest::NoTargets);
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(InvalidRequest::TooManyTargets(self.targets.len()));
        }
        for t in &self.targets {
            if t.is_unspecified() || t.is_multicast() || t.is_loopback() {
                return Err(InvalidRequest::NotUnicast(*t));
            }
            if self.encap == Encap::Ipip && t.is_ipv6() {
                return Err(InvalidRequest::IpipIpv6(*t));
            }
        }
        match (&self.public_key, self.encap) {
            (None, Encap::Wireguard) => return Err(InvalidRequest::MissingKey),
            (Some(k), Encap::Wireguard) if !k.looks_valid() => return Err(InvalidRequest::BadKey),
            (Some(_), Encap::Ipip | Encap::Udp) => {
                return Err(InvalidRequest::UnexpectedKey(self.encap))
            }
            _ => {}
        }
        if self.port == Some(0) {
            return Err(InvalidRequest::PortZero);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's bookkeeping
// ---------------------------------------------------------------------------------------

/// What this proxy offers every client, from its own config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOffer {
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
    /// Sessions one network (an IPv4 /24, an IPv6 /56) may hold, so that one network
    /// cannot take every lease.
    pub max_clients_per_prefix: usize,
    /// The proxy's engine threads, told to clients when more than one.
    pub engines: u8,
}

/// The admission connection a request came over (the proxy numbers them); a session
/// is bound to the one that created it while that one lives.
pub type ConnId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientEntry {
    encap: Encap,
    public_key: Option<PublicKey>,
    port: Option<u16>,
    engines: Option<u8>,
    targets: BTreeSet<IpAddr>,
    /// Open admission connections from this client.
    connections: usize,
    /// When the last connection closed (for the lease).
    idle_since: Option<Instant>,
    /// The live admission connection that created (or last re-admitted) the session;
    /// None once it closed.
    owner: Option<ConnId>,
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
        engines: e.engines,
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
    ///
    /// A session is bound to its tunnel key and to the connection `conn` that made it:
    /// while that connection lives, no other connection from the same address (another
    /// host behind the same NAT) may change its key, port or encapsulation, and no
    /// connection but its own may turn a WireGuard session into an unauthenticated one.
    pub fn plan_admit(
        &self,
        client: IpAddr,
        conn: ConnId,
        local: IpAddr,
        req: &AdmitRequest,
        offer: &ProxyOffer,
    ) -> Result<(Plan, Admitted), (AdmitRefusal, String)> {
        req.validate()
            .map_err(|e| (AdmitRefusal::BadRequest, e.to_string()))?;
        if !offer.encaps.contains(&req.encap) {
            return Err((
                AdmitRefusal::UnsupportedEncap,
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
                AdmitRefusal::BadRequest,
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
                    AdmitRefusal::NotServed,
                    format!("target {t} is not served by this proxy"),
                ));
            }
        }
        let mut entry = match self.clients.get(&client) {
            // Same tunnel parameters: add targets (a reconnecting client re-admits over
            // its new connection, which then holds the session).
            Some(e)
                if e.encap == req.encap && e.public_key == req.public_key && e.port == req.port =>
            {
                let mut e = e.clone();
                if e.owner.is_none() {
                    e.owner = Some(conn);
                }
                e.engines = req.engines;
                e
            }
            // New parameters (the client restarted with another key): start afresh with
            // the asked targets only, but only over the connection that holds the
            // session, or when none does, and never down from WireGuard but over it.
            Some(e) => {
                let own = e.owner == Some(conn);
                if e.encap == Encap::Wireguard && req.encap != Encap::Wireguard && !own {
                    return Err((
                        AdmitRefusal::SessionHeld,
                        format!(
                            "{client} holds a wireguard session here; {} cannot replace it (release it over its own connection, or wait for its lease to end)",
                            req.encap
                        ),
                    ));
                }
                if e.owner.is_some() && !own {
                    return Err((
                        AdmitRefusal::SessionHeld,
                        format!(
                            "another live admission connection from {client} holds its session with other tunnel parameters"
                        ),
                    ));
                }
                ClientEntry {
                    encap: req.encap,
                    public_key: req.public_key.clone(),
                    port: req.port,
                    engines: req.engines,
                    targets: BTreeSet::new(),
                    connections: e.connections,
                    idle_since: e.idle_since,
                    owner: Some(conn),
                }
            }
            None => {
                if self.clients.len() >= offer.max_clients {
                    return Err((
                        AdmitRefusal::Full,
                        format!(
                            "this proxy admits at most {} clients; try another proxy of the ALT set",
                            offer.max_clients
                        ),
                    ));
                }
                let net = prefix_of(client, 24, 56);
                let same_net = self
                    .clients
                    .keys()
                    .filter(|c| prefix_of(**c, 24, 56) == net)
                    .count();
                if same_net >= offer.max_clients_per_prefix {
                    return Err((
                        AdmitRefusal::Full,
                        format!(
                            "this proxy admits at most {} clients from {client}'s network; try another proxy of the ALT set",
                            offer.max_clients_per_prefix
                        ),
                    ));
                }
                ClientEntry {
                    encap: req.encap,
                    public_key: req.public_key.clone(),
                    port: req.port,
                    engines: req.engines,
                    targets: BTreeSet::new(),
                    connections: 0,
                    idle_since: None,
                    owner: Some(conn),
                }
            }
        };
        entry.targets.extend(req.targets.iter().copied());
        if entry.targets.len() > 4 * MAX_TARGETS {
            return Err((
                AdmitRefusal::BadRequest,
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
            engines: (offer.engines > 1).then_some(offer.engines),
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

    /// Plans a release of some of `client`'s targets asked over connection `conn`
    /// (`None`: by the proxy itself, when a lease ends); `None` if it holds none of them,
    /// or if another live connection holds the session.
    pub fn plan_release(
        &self,
        client: IpAddr,
        conn: Option<ConnId>,
        targets: &[IpAddr],
    ) -> Option<Plan> {
        let e = self.clients.get(&client)?;
        if let (Some(owner), Some(conn)) = (e.owner, conn) {
            if owner != conn {
                return None;
            }
        }
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

    /// Connection `conn` from `client` that had been admitted closed at `now`; the
    /// session no longer belongs to it.
    pub fn disconnected(&mut self, client: IpAddr, conn: ConnId, now: Instant) {
        if let Some(e) = self.clients.get_mut(&client) {
            if e.owner == Some(conn) {
                e.owner = None;
            }
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

/// Tunnel packets that arrived per peer outer address (kept or dropped): what a probe
/// answer reports to the client at that address.
pub fn arrivals(stats: &Stats) -> HashMap<IpAddr, u64> {
    let mut m = HashMap::new();
    for p in &stats.peers {
        *m.entry(p.address).or_insert(0) += p.counters.rx_packets + p.counters.dropped;
    }
    m
}

/// Why a client does not use a proxy's `admitted` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("tunnel address {address} is not in the ALT set {alt:?}")]
    NotInAltSet { address: IpAddr, alt: Vec<IpAddr> },
    #[error("asked for {asked}, got {got}")]
    EncapMismatch { asked: Encap, got: Encap },
    /// Behind NAT the proxy sees another address; the inner source must be the one it
    /// admitted, and the client cannot send from it.
    #[error("the proxy admitted {admitted} but we connected from {local} (NAT between client and proxy is not supported)")]
    BehindNat { admitted: IpAddr, local: IpAddr },
    #[error("wireguard without a valid proxy public key")]
    BadKey,
    #[error("{0} without a tunnel port")]
    NoPort(Encap),
    #[error("inner MTU {0} is outside 576..=9000")]
    Mtu(u16),
    #[error("target {0} missing from the admitted targets")]
    MissingTarget(IpAddr),
}

/// Checks an admission answer against what was asked and the ALT set.
pub fn check_admitted(
    a: &Admitted,
    req: &AdmitRequest,
    alt: &[IpAddr],
    local: IpAddr,
) -> Result<(), BadAnswer> {
    if !alt.contains(&a.tunnel_address) {
        return Err(BadAnswer::NotInAltSet {
            address: a.tunnel_address,
            alt: alt.to_vec(),
        });
    }
    if a.encap != req.encap {
        return Err(BadAnswer::EncapMismatch {
            asked: req.encap,
            got: a.encap,
        });
    }
    if a.client != local {
        return Err(BadAnswer::BehindNat {
            admitted: a.client,
            local,
        });
    }
    if a.encap == Encap::Wireguard && !a.public_key.as_ref().is_some_and(|k| k.looks_valid()) {
        return Err(BadAnswer::BadKey);
    }
    if a.encap.uses_udp() && a.port.is_none_or(|p| p == 0) {
        return Err(BadAnswer::NoPort(a.encap));
    }
    if !(576..=9000).contains(&a.inner_mtu) {
        return Err(BadAnswer::Mtu(a.inner_mtu));
    }
    if let Some(t) = req.targets.iter().find(|t| !a.targets.contains(t)) {
        return Err(BadAnswer::MissingTarget(*t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> PublicKey {
        PublicKey(format!("{}=", c.to_string().repeat(43)))
    }

    fn offer() -> ProxyOffer {
        ProxyOffer {
            encaps: vec![Encap::Udp, Encap::Wireguard],
            tunnel_address: None,
            port: Some(51820),
            public_key: Some(key('P')),
            outer_mtu: 1500,
            relay_mtu: 1440,
            allow: vec!["10.4.0.0/16".parse().unwrap()],
            max_clients: 2,
            max_clients_per_prefix: 2,
            engines: 2,
        }
    }

    fn req(targets: &[&str]) -> AdmitRequest {
        AdmitRequest {
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            encap: Encap::Wireguard,
            public_key: Some(key('C')),
            port: None,
            engines: None,
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
            .plan_admit(c, 1, ip("10.1.0.1"), &req(&["10.4.0.2"]), &offer())
            .unwrap();
        assert_eq!(ans.tunnel_address, ip("10.1.0.1"));
        assert_eq!(ans.inner_mtu, 1440);
        assert_eq!(
            ans.engines,
            Some(2),
            "the proxy tells clients it reads with two engines"
        );
        let Command::AddSession(s) = &plan.command else {
            panic!("not a session: {:?}", plan.command)
        };
        assert_eq!(s.engines, None, "a one-engine client says nothing");
        let (again, _) = a
            .plan_admit(
                c,
                1,
                ip("10.1.0.1"),
                &AdmitRequest {
                    engines: Some(3),
                    ..req(&["10.4.0.2"])
                },
                &offer(),
            )
            .unwrap();
        let Command::AddSession(s) = &again.command else {
            panic!("not a session: {:?}", again.command)
        };
        assert_eq!(
            s.engines,
            Some(3),
            "a client's engine count reaches its session"
        );
        assert_eq!(ans.port, Some(51820));
        assert_eq!(ans.public_key, Some(key('P')));
        let first = plan.command.clone();
        a.commit(plan);
        // The same request again plans the same command.
        let (plan, _) = a
            .plan_admit(c, 1, ip("10.1.0.1"), &req(&["10.4.0.2"]), &offer())
            .unwrap();
        assert_eq!(plan.command, first);
        a.commit(plan);
        // A second target adds to the first.
        let (plan, ans) = a
            .plan_admit(c, 1, ip("10.1.0.1"), &req(&["10.4.0.3"]), &offer())
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
        let (_, ans) = a.plan_admit(c, 1, ip("10.1.0.1"), &r, &offer()).unwrap();
        assert_eq!(ans.targets, vec![ip("10.4.0.9")]);
    }

    #[test]
    fn refusals_are_typed_and_change_nothing() {
        let mut a = Admissions::default();
        let l = ip("10.1.0.1");
        let bad = |a: &Admissions, c: &str, r: &AdmitRequest| {
            a.plan_admit(ip(c), 1, l, r, &offer()).unwrap_err().0
        };
        assert_eq!(bad(&a, "10.1.0.2", &req(&[])), AdmitRefusal::BadRequest);
        assert_eq!(
            bad(&a, "10.1.0.2", &req(&["10.9.0.1"])),
            AdmitRefusal::NotServed
        );
        assert_eq!(
            bad(&a, "10.1.0.2", &req(&["224.0.0.1"])),
            AdmitRefusal::BadRequest
        );
        let mut r = req(&["10.4.0.2"]);
        r.encap = Encap::Ipip;
        r.public_key = None;
        assert_eq!(bad(&a, "10.1.0.2", &r), AdmitRefusal::UnsupportedEncap);
        let mut r = req(&["10.4.0.2"]);
        r.public_key = None;
        assert_eq!(bad(&a, "10.1.0.2", &r), AdmitRefusal::BadRequest);
        let mut r = req(&["10.4.0.2"]);
        r.public_key = Some(PublicKey("short".into()));
        assert_eq!(bad(&a, "10.1.0.2", &r), AdmitRefusal::BadRequest);
        let many: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("10.4.1.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(bad(&a, "10.1.0.2", &req(&many)), AdmitRefusal::BadRequest);
        assert!(a.is_empty());
        for c in ["10.1.0.2", "10.1.0.3"] {
            let (p, _) = a
                .plan_admit(ip(c), 1, l, &req(&["10.4.0.2"]), &offer())
                .unwrap();
            a.commit(p);
        }
        assert_eq!(bad(&a, "10.1.0.4", &req(&["10.4.0.2"])), AdmitRefusal::Full);
        assert_eq!(a.len(), 2);
    }

    fn admit(
        a: &mut Admissions,
        c: IpAddr,
        conn: ConnId,
        r: &AdmitRequest,
    ) -> Result<Admitted, AdmitRefusal> {
        let (p, ans) = a
            .plan_admit(c, conn, ip("10.1.0.1"), r, &offer())
            .map_err(|e| e.0)?;
        a.commit(p);
        Ok(ans)
    }

    fn session_of(a: &Admissions, c: IpAddr) -> (Encap, Option<PublicKey>) {
        let e = &a.clients[&c];
        (e.encap, e.public_key.clone())
    }

    #[test]
    fn a_wireguard_session_is_not_downgraded_from_its_address() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        admit(&mut a, c, 1, &req(&["10.4.0.2"])).unwrap();
        a.connected(c);
        let mut udp = req(&["10.4.0.2"]);
        udp.encap = Encap::Udp;
        udp.public_key = None;
        // Another connection from the same address (another host behind the NAT).
        assert_eq!(admit(&mut a, c, 2, &udp), Err(AdmitRefusal::SessionHeld));
        // Not even once the owning connection closed: the lease still holds the key.
        a.disconnected(c, 1, Instant::now());
        assert_eq!(admit(&mut a, c, 3, &udp), Err(AdmitRefusal::SessionHeld));
        assert_eq!(session_of(&a, c), (Encap::Wireguard, Some(key('C'))));
        // The owner itself may change its mind.
        let mut b = Admissions::default();
        admit(&mut b, c, 1, &req(&["10.4.0.2"])).unwrap();
        assert_eq!(admit(&mut b, c, 1, &udp).unwrap().encap, Encap::Udp);
    }

    #[test]
    fn a_live_session_keeps_its_key_against_another_connection() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        admit(&mut a, c, 1, &req(&["10.4.0.2"])).unwrap();
        a.connected(c);
        let mut thief = req(&["10.4.0.2"]);
        thief.public_key = Some(key('T'));
        assert_eq!(admit(&mut a, c, 2, &thief), Err(AdmitRefusal::SessionHeld));
        assert_eq!(session_of(&a, c).1, Some(key('C')));
        // Nor may it release the session (nothing is planned).
        assert!(a.plan_release(c, Some(2), &[ip("10.4.0.2")]).is_none());
        // The same key from another connection only adds targets (a reconnecting client).
        let ans = admit(&mut a, c, 2, &req(&["10.4.0.3"])).unwrap();
        assert_eq!(ans.targets.len(), 2);
        // Over its own connection, the client may take a new key.
        assert!(admit(&mut a, c, 1, &thief).is_ok());
        assert_eq!(session_of(&a, c).1, Some(key('T')));
    }

    #[test]
    fn a_restarted_client_takes_its_session_back_once_the_old_connection_closed() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        admit(&mut a, c, 1, &req(&["10.4.0.2"])).unwrap();
        a.connected(c);
        a.disconnected(c, 1, Instant::now());
        let mut fresh = req(&["10.4.0.2"]);
        fresh.public_key = Some(key('D'));
        assert!(admit(&mut a, c, 2, &fresh).is_ok());
        a.connected(c);
        // Connection 2 holds it now; 1 (gone) and 3 do not.
        let mut other = req(&["10.4.0.2"]);
        other.public_key = Some(key('E'));
        assert_eq!(admit(&mut a, c, 3, &other), Err(AdmitRefusal::SessionHeld));
        // The proxy itself (a lease ending) may always release.
        assert!(a.plan_release(c, None, &[ip("10.4.0.2")]).is_some());
    }

    #[test]
    fn one_network_cannot_take_every_lease() {
        let mut a = Admissions::default();
        let mut o = offer();
        o.max_clients = 10;
        o.max_clients_per_prefix = 2;
        let l = ip("10.1.0.1");
        for c in ["10.1.0.2", "10.1.0.3"] {
            let (p, _) = a.plan_admit(ip(c), 1, l, &req(&["10.4.0.2"]), &o).unwrap();
            a.commit(p);
        }
        let e = a
            .plan_admit(ip("10.1.0.4"), 1, l, &req(&["10.4.0.2"]), &o)
            .unwrap_err();
        assert_eq!(e.0, AdmitRefusal::Full);
        // Another /24 is admitted; so is an IPv6 host in another /56.
        assert!(a
            .plan_admit(ip("10.1.1.4"), 1, l, &req(&["10.4.0.2"]), &o)
            .is_ok());
        for c in ["2001:db8:0:1::1", "2001:db8:0:2::1"] {
            let (p, _) = a.plan_admit(ip(c), 1, l, &req(&["10.4.0.2"]), &o).unwrap();
            a.commit(p);
        }
        // Both sit in 2001:db8::/56: a third from it is refused.
        let e = a
            .plan_admit(ip("2001:db8:0:3::1"), 1, l, &req(&["10.4.0.2"]), &o)
            .unwrap_err();
        assert_eq!(e.0, AdmitRefusal::Full);
    }

    #[test]
    fn release_and_lease() {
        let mut a = Admissions::default();
        let c = ip("10.1.0.2");
        let (p, _) = a
            .plan_admit(
                c,
                1,
                ip("10.1.0.1"),
                &req(&["10.4.0.2", "10.4.0.3"]),
                &offer(),
            )
            .unwrap();
        a.commit(p);
        a.connected(c);
        assert!(a.plan_release(c, Some(1), &[ip("10.4.0.99")]).is_none());
        let p = a.plan_release(c, Some(1), &[ip("10.4.0.2")]).unwrap();
        assert!(matches!(p.command, Command::AddSession(_)));
        a.commit(p);
        assert_eq!(a.targets(c), vec![ip("10.4.0.3")]);
        let t0 = Instant::now();
        assert!(a.expired(t0, Duration::ZERO).is_empty(), "connected");
        a.disconnected(c, 1, t0);
        assert!(a.expired(t0, Duration::from_secs(5)).is_empty());
        assert_eq!(
            a.expired(t0 + Duration::from_secs(5), Duration::from_secs(5)),
            vec![c]
        );
        let p = a.plan_release(c, Some(1), &a.targets(c)).unwrap();
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
            engines: None,
            inner_mtu: 1440,
            targets: vec![ip("10.4.0.2")],
        };
        let alt = [ip("10.1.0.1"), ip("10.1.0.9")];
        assert!(check_admitted(&good, &r, &alt, ip("10.1.0.2")).is_ok());
        let mut a = good.clone();
        a.tunnel_address = ip("10.66.0.1");
        assert!(matches!(
            check_admitted(&a, &r, &alt, ip("10.1.0.2")),
            Err(BadAnswer::NotInAltSet { .. })
        ));
        assert!(matches!(
            check_admitted(&good, &r, &alt, ip("10.1.0.7")),
            Err(BadAnswer::BehindNat { .. })
        ));
        let mut a = good.clone();
        a.public_key = None;
        assert_eq!(
            check_admitted(&a, &r, &alt, ip("10.1.0.2")),
            Err(BadAnswer::BadKey)
        );
        let mut a = good.clone();
        a.inner_mtu = 100;
        assert_eq!(
            check_admitted(&a, &r, &alt, ip("10.1.0.2")),
            Err(BadAnswer::Mtu(100))
        );
        let mut a = good;
        a.targets.clear();
        assert!(matches!(
            check_admitted(&a, &r, &alt, ip("10.1.0.2")),
            Err(BadAnswer::MissingTarget(_))
        ));
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let msgs = vec![
            ClientMessage::Admit(req(&["10.4.0.2", "2001:db8::1"])),
            ClientMessage::Ping { seq: 7 },
            ClientMessage::Release {
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
            while let Some(m) = next_message::<ClientMessage>(&mut d).unwrap() {
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
                next_message::<ClientMessage>(&mut d).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(body)
            );
        }
        let mut d = decoder();
        d.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(matches!(
            next_message::<ClientMessage>(&mut d),
            Err(frame::MessageError::Frame(_))
        ));
    }

    #[test]
    fn pong_carries_the_arrival_count_or_not() {
        for a in [
            ProxyMessage::Pong {
                seq: 3,
                arrived: Some(42),
                draining: false,
            },
            ProxyMessage::Pong {
                seq: 4,
                arrived: None,
                draining: true,
            },
        ] {
            let mut d = decoder();
            d.push(&encode(&a));
            assert_eq!(next_message::<ProxyMessage>(&mut d).unwrap(), Some(a));
        }
        // A proxy that sends no count is understood; an unknown field is refused.
        let old = br#"{"type":"pong","seq":9}"#;
        assert_eq!(
            serde_json::from_slice::<ProxyMessage>(old).unwrap(),
            ProxyMessage::Pong {
                seq: 9,
                arrived: None,
                draining: false,
            }
        );
        assert!(
            serde_json::from_slice::<ProxyMessage>(br#"{"type":"pong","seq":9,"x":1}"#).is_err()
        );
        assert!(
            serde_json::from_slice::<ProxyMessage>(br#"{"type":"pong","seq":9,"arrived":-1}"#)
                .is_err()
        );
    }

    #[test]
    fn drain_state_on_the_wire() {
        // Not draining: a pong is byte for byte what a proxy without the field sends,
        // so clients that predate it still understand it.
        let calm = ProxyMessage::Pong {
            seq: 1,
            arrived: Some(5),
            draining: false,
        };
        assert_eq!(
            serde_json::to_string(&calm).unwrap(),
            r#"{"type":"pong","seq":1,"arrived":5}"#
        );
        let busy = ProxyMessage::Pong {
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
        assert_eq!(next_message::<ProxyMessage>(&mut d).unwrap(), Some(n));
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
                serde_json::from_slice::<ProxyMessage>(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arrivals_add_up_per_client_address() {
        use crate::dataplane::{Counters, PeerStats, Stats};
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
