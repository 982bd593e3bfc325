//! Data-plane commands: what the coordinator asks a proxy, gateway, target or client to
//! set up on the indirect route, and what the node answers.
//!
//! The same commands come from two places: the static entries of a daemon's config file,
//! applied at start-up, and the control channel (carried as the JSON `command` of a
//! `Request::Dataplane`). Every command is idempotent: applying it twice leaves the node
//! as applying it once did, and the reply says whether anything changed. A node answers
//! a command its role does not carry out with [`RefusalCode::NotForThisRole`].
//!
//! Sans-IO: only types, parsing and validation; the daemons in `scold-node` apply them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// How inner packets travel between two tunnel end points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// RFC 2003 IP-in-IP: IP protocol 4, the inner IPv4 packet right after the outer
    /// header. Wire-compatible with Linux `ip tunnel mode ipip`. IPv4 only.
    Ipip,
    /// The inner packet as the payload of one UDP datagram.
    Udp,
    /// WireGuard over UDP: authenticated and encrypted, silent to anything that does not
    /// hold a registered key.
    Wireguard,
}

impl Encap {
    pub const ALL: [Encap; 3] = [Encap::Ipip, Encap::Udp, Encap::Wireguard];

    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Udp => "udp",
            Encap::Wireguard => "wireguard",
        }
    }

    /// Bytes added to every inner packet when the outer header is IPv4 (IPv6 adds 20).
    pub fn overhead_v4(self) -> usize {
        match self {
            Encap::Ipip => 20,
            Encap::Udp => 20 + 8,
            // 16-byte data header and 16-byte Poly1305 tag inside UDP.
            Encap::Wireguard => 20 + 8 + 32,
        }
    }

    /// The largest inner packet that fits an outer path of `outer_mtu` bytes unfragmented.
    pub fn inner_mtu(self, outer_mtu: u16) -> u16 {
        outer_mtu.saturating_sub(self.overhead_v4() as u16)
    }

    /// Whether this encapsulation runs over a UDP port (as opposed to a raw IP protocol).
    pub fn uses_udp(self) -> bool {
        !matches!(self, Encap::Ipip)
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encap {
    type Err = DataplaneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encap::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| DataplaneError::UnknownEncap(s.to_string()))
    }
}

/// An IP prefix such as `192.0.2.0/24` or `2001:db8::1/128`. Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix from an address and a length; refuses set host bits and over-long lengths.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, DataplaneError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(DataplaneError::BadPrefix(format!(
                "{addr}/{len}: length over {max}"
            )));
        }
        let p = Prefix { addr, len };
        if p.network() != addr {
            return Err(DataplaneError::BadPrefix(format!(
                "{addr}/{len}: host bits set (did you mean {}/{len}?)",
                p.network()
            )));
        }
        Ok(p)
    }

    /// The one-address prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_host(&self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                self.len == 0 || (u32::from(net) ^ u32::from(ip)) >> (32 - self.len) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                self.len == 0 || (u128::from(net) ^ u128::from(ip)) >> (128 - self.len) == 0
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = DataplaneError;
    /// Accepts `addr/len`, or a bare address meaning one host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DataplaneError::BadPrefix(format!("{s:?}: expected ADDRESS/LENGTH"));
        match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let len: u8 = l.parse().map_err(|_| bad())?;
                Prefix::new(addr, len)
            }
            None => Ok(Prefix::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard public key in its usual text form: 32 bytes in standard base64 (44
/// characters ending in `=`). Decoding is left to the tunnel layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicKey(pub String);

impl PublicKey {
    /// A shape check without decoding: 44 base64 characters, the last one `=`.
    pub fn looks_valid(&self) -> bool {
        let b = self.0.as_bytes();
        b.len() == 44
            && b[43] == b'='
            && b[..43]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
    }
}

/// A tunnel end point this node exchanges encapsulated packets with: for a client its
/// proxy, for a proxy a target's gateway, for a gateway a registered proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Name used in routes, logs and counters (for example the peer's node name).
    pub name: String,
    /// The peer's outer address: packets to it go there, and packets from it are
    /// recognised by this source address.
    pub address: IpAddr,
    /// The peer's UDP port (udp and wireguard). Absent: learned from the peer's first
    /// accepted packet, so the peer must speak first.
    #[serde(default)]
    pub port: Option<u16>,
    pub encap: Encap,
    /// Required for wireguard.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// WireGuard persistent keepalive in seconds (keeps NAT state and the session warm).
    #[serde(default)]
    pub keepalive_secs: Option<u16>,
    /// Engine threads the peer reads its tunnel with (its `[tunnel] engines`), when
    /// more than one: packets to it go in GSO runs that each keep to one steering
    /// bucket, so that every flow reaches one of its engines, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<u8>,
}

/// A client admitted at a proxy (after the admission exchange or a coordinator push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The client's address: the outer source of its tunnel packets and the inner source
    /// it may use. Packets with any other inner source are dropped as spoofed.
    pub client: IpAddr,
    /// The client's UDP port; absent: learned from its first accepted packet.
    #[serde(default)]
    pub port: Option<u16>,
    pub encap: Encap,
    /// Required for wireguard.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// Where the client may send through this proxy: the target it asked for.
    pub targets: Vec<Prefix>,
    /// The client's engine threads, when more than one (see [`Peer::engines`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<u8>,
}

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Via {
    /// Through the tunnel to the named peer (client: its proxy; proxy: the gateway of the
    /// target). The client also gets a kernel host route into its tunnel device.
    Peer(String),
    /// Through a next-hop router on a local link, in the node's own routing table
    /// (target: the hidden gateway, for the return path of diverted clients).
    Gateway(IpAddr),
}

/// One route of the indirect path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub destination: Prefix,
    pub via: Via,
}

/// Transport protocol of a NAT service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Scheme 4.3: the proxy accepts a target's service port on its own public address and
/// relays each flow through its tunnel to the target's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatService {
    pub protocol: Protocol,
    /// Where the proxy listens (its public address and the service port).
    pub listen: SocketAddr,
    /// The target's service address; reached through the route for it.
    pub target: SocketAddr,
    /// Start each TCP connection with a PROXY protocol v2 header carrying the client's
    /// address (the target's server must expect it).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Scheme 4.2: a proxy sets a route up to a client agent (paper Sec. 4.2). The proxy
/// connects to the agent's push port over mutual TLS with its consortium certificate,
/// offers its tunnel end point, and admits the client with the tunnel parameters the
/// agent answers. The agent checks the proxy's certificate and that the proxy's address
/// is in `fqdn`'s ALT set before it routes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The client's node name, for logs.
    pub client: String,
    /// Where the client agent takes pushes: its address and push port.
    pub agent: SocketAddr,
    /// The target's DNS name, whose ALT set must list this proxy.
    pub fqdn: String,
    /// The target's addresses, routed into the tunnel at the client.
    pub targets: Vec<IpAddr>,
}

/// Largest number of target addresses in one push (the push frames are small).
pub const MAX_PUSH_TARGETS: usize = 32;

/// A data-plane order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Add or update a tunnel peer (client, proxy, gateway).
    AddPeer(Peer),
    /// Remove a peer and every route through it.
    RemovePeer { name: String },
    /// Admit a client (proxy).
    AddSession(Session),
    /// Withdraw a client's admission (proxy).
    RemoveSession { client: IpAddr },
    /// Scheme 4.2: push the route for a target to a client agent, then admit the client
    /// (proxy).
    PushRoute(Push),
    /// Scheme 4.2: tell a client agent to drop the route this proxy pushed for `fqdn`,
    /// then withdraw the client's admission (proxy). An unreachable agent is no error:
    /// it tears the route down itself when the ALT records go.
    WithdrawPush { agent: SocketAddr, fqdn: String },
    /// Add or update a route (client, proxy, target).
    AddRoute(Route),
    /// Remove the route for a destination.
    RemoveRoute { destination: Prefix },
    /// Start relaying a service (proxy, scheme 4.3).
    AddNatService(NatService),
    /// Stop relaying a service.
    RemoveNatService {
        protocol: Protocol,
        listen: SocketAddr,
    },
    /// Target, schemes 4.1/4.2: send the replies of every connection that arrives from
    /// the hidden gateway back through it, to its address `via` on the target's
    /// network. No per-client state: connections are recognised by where they came in.
    SetReturnPath { via: IpAddr },
    /// Target: remove the return path, leaving routing as it was found.
    ClearReturnPath,
    /// Report counters.
    GetStats,
}

impl Command {
    /// Short stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::AddPeer(_) => "add_peer",
            Command::RemovePeer { .. } => "remove_peer",
            Command::AddSession(_) => "add_session",
            Command::RemoveSession { .. } => "remove_session",
            Command::PushRoute(_) => "push_route",
            Command::WithdrawPush { .. } => "withdraw_push",
            Command::AddRoute(_) => "add_route",
            Command::RemoveRoute { .. } => "remove_route",
            Command::AddNatService(_) => "add_nat_service",
            Command::RemoveNatService { .. } => "remove_nat_service",
            Command::SetReturnPath { .. } => "set_return_path",
            Command::ClearReturnPath => "clear_return_path",
            Command::GetStats => "get_stats",
        }
    }

    /// Checks what can be checked without the node's state. A command that fails here
    /// must be refused without changing anything.
    pub fn validate(&self) -> Result<(), DataplaneError> {
        match self {
            Command::AddPeer(p) => {
                if p.name.is_empty() || p.name.len() > 63 || p.name.contains(char::is_whitespace) {
                    return Err(DataplaneError::Invalid(format!(
                        "peer name {:?}: use 1-63 characters without spaces",
                        p.name
                    )));
                }
                check_key(p.encap, p.public_key.as_ref(), &p.name)?;
                check_family(p.encap, p.address, &p.name)?;
                if p.address.is_unspecified() || p.address.is_multicast() {
                    return Err(DataplaneError::Invalid(format!(
                        "peer {}: address {} is not a unicast address",
                        p.name, p.address
                    )));
                }
                if p.port == Some(0) {
                    return Err(DataplaneError::Invalid(format!(
                        "peer {}: port 0; leave it out to learn it from the peer",
                        p.name
                    )));
                }
                Ok(())
            }
            Command::AddSession(s) => {
                let who = format!("client {}", s.client);
                check_key(s.encap, s.public_key.as_ref(), &who)?;
                check_family(s.encap, s.client, &who)?;
                if s.targets.is_empty() {
                    return Err(DataplaneError::Invalid(format!(
                        "{who}: no targets; list the target prefixes the client may reach"
                    )));
                }
                Ok(())
            }
            Command::PushRoute(p) => {
                let who = format!("push to client {} at {}", p.client, p.agent);
                check_push_agent(p.agent, &who)?;
                check_fqdn(&p.fqdn, &who)?;
                if p.targets.is_empty() || p.targets.len() > MAX_PUSH_TARGETS {
                    return Err(DataplaneError::Invalid(format!(
                        "{who}: {} target addresses; list 1 to {MAX_PUSH_TARGETS}",
                        p.targets.len()
                    )));
                }
                if let Some(t) = p
                    .targets
                    .iter()
                    .find(|t| t.is_unspecified() || t.is_multicast())
                {
                    return Err(DataplaneError::Invalid(format!(
                        "{who}: target {t} is not a unicast address"
                    )));
                }
                Ok(())
            }
            Command::WithdrawPush { agent, fqdn } => {
                let who = format!("push withdrawal at {agent}");
                check_push_agent(*agent, &who)?;
                check_fqdn(fqdn, &who)
            }
            Command::AddRoute(r) => match &r.via {
                Via::Peer(name) if name.is_empty() => Err(DataplaneError::Invalid(format!(
                    "route {}: empty peer name",
                    r.destination
                ))),
                Via::Gateway(gw) if gw.is_ipv4() != r.destination.addr().is_ipv4() => {
                    Err(DataplaneError::Invalid(format!(
                        "route {}: next hop {gw} is of the other address family",
                        r.destination
                    )))
                }
                _ => Ok(()),
            },
            Command::AddNatService(n) => {
                if n.listen.port() == 0 || n.target.port() == 0 {
                    return Err(DataplaneError::Invalid(format!(
                        "NAT service {} {} -> {}: port 0 is not a service port",
                        n.protocol, n.listen, n.target
                    )));
                }
                if n.proxy_protocol && n.protocol == Protocol::Udp {
                    return Err(DataplaneError::Invalid(format!(
                        "NAT service udp {}: the PROXY protocol header is only sent on TCP",
                        n.listen
                    )));
                }
                Ok(())
            }
            Command::SetReturnPath { via } => {
                if via.is_unspecified() || via.is_multicast() || via.is_loopback() {
                    return Err(DataplaneError::Invalid(format!(
                        "return path via {via}: the gateway's address must be a unicast address on the target's network"
                    )));
                }
                Ok(())
            }
            Command::RemovePeer { .. }
            | Command::ClearReturnPath
            | Command::RemoveSession { .. }
            | Command::RemoveRoute { .. }
            | Command::RemoveNatService { .. }
            | Command::GetStats => Ok(()),
        }
    }
}

fn check_key(encap: Encap, key: Option<&PublicKey>, who: &str) -> Result<(), DataplaneError> {
    match (encap, key) {
        (Encap::Wireguard, None) => Err(DataplaneError::Invalid(format!(
            "{who}: encap wireguard needs public_key"
        ))),
        (Encap::Wireguard, Some(k)) if !k.looks_valid() => Err(DataplaneError::Invalid(format!(
            "{who}: public_key {:?} is not a WireGuard key (44 base64 characters)",
            k.0
        ))),
        (Encap::Ipip | Encap::Udp, Some(_)) => Err(DataplaneError::Invalid(format!(
            "{who}: public_key is only used with encap wireguard"
        ))),
        _ => Ok(()),
    }
}

fn check_push_agent(agent: SocketAddr, who: &str) -> Result<(), DataplaneError> {
    if agent.port() == 0 || agent.ip().is_unspecified() || agent.ip().is_multicast() {
        return Err(DataplaneError::Invalid(format!(
            "{who}: the agent's push end point must be a unicast address and a port above 0"
        )));
    }
    Ok(())
}

fn check_fqdn(fqdn: &str, who: &str) -> Result<(), DataplaneError> {
    let ok = !fqdn.is_empty()
        && fqdn.len() <= 254
        && fqdn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok {
        return Err(DataplaneError::Invalid(format!(
            "{who}: {fqdn:?} is not a DNS name"
        )));
    }
    Ok(())
}

fn check_family(encap: Encap, addr: IpAddr, who: &str) -> Result<(), DataplaneError> {
    if encap == Encap::Ipip && addr.is_ipv6() {
        return Err(DataplaneError::Invalid(format!(
            "{who}: ipip (RFC 2003) carries IPv4 only; use udp or wireguard for {addr}"
        )));
    }
    Ok(())
}

/// Counters of one tunnel peer or client session, from this node's point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets from this peer that were dropped (spoofed source, destination not allowed,
    /// no route, failed authentication).
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    pub name: String,
    pub address: IpAddr,
    pub encap: Encap,
    pub counters: Counters,
}

/// Node-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub peers: Vec<PeerStats>,
    /// Tunnel packets from addresses that are no peer (not admitted, not registered).
    pub dropped_unknown_source: u64,
    /// Outer datagrams larger than a receive slot: cut short by the kernel, so dropped
    /// whole rather than relayed truncated.
    #[serde(default)]
    pub dropped_truncated: u64,
    /// Inner packets that had nowhere to go.
    pub dropped_no_route: u64,
    /// Inner packets too large for the next tunnel (answered with ICMP "fragmentation
    /// needed" where the sender can be reached).
    pub dropped_too_big: u64,
    /// Send errors towards peers (peer down: ICMP unreachable, no route).
    pub send_errors: u64,
    /// Packets each packet-engine thread received (outer datagrams and TUN packets),
    /// by thread: how evenly the node's cores share the load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_packets: Vec<u64>,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The command is malformed or contradicts itself.
    Invalid,
    /// This role does not carry out that command (e.g. AddSession at a gateway).
    NotForThisRole,
    /// The command names something that does not exist (e.g. a route via an unknown peer).
    UnknownReference,
    /// The command conflicts with existing state (e.g. a peer address used by another).
    Conflict,
    /// The operating system refused (netlink, socket); the message says what.
    System,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// Applied; `changed` is false when the node already was in the asked state.
    Done {
        changed: bool,
    },
    Stats(Stats),
    Refused {
        code: RefusalCode,
        message: String,
    },
}

impl Reply {
    pub fn refused(code: RefusalCode, message: impl Into<String>) -> Self {
        Reply::Refused {
            code,
            message: message.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        !matches!(self, Reply::Refused { .. })
    }
}

impl From<DataplaneError> for Reply {
    fn from(e: DataplaneError) -> Self {
        Reply::refused(RefusalCode::Invalid, e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error("unknown encapsulation {0:?} (expected ipip, udp or wireguard)")]
    UnknownEncap(String),
    #[error("invalid prefix {0}")]
    BadPrefix(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn prefix_parses_and_matches() {
        let p: Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains("10.1.255.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let h: Prefix = "2001:db8::1".parse().unwrap();
        assert!(h.is_host());
        assert_eq!(h.to_string(), "2001:db8::1/128");
        let v6: Prefix = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    }

    #[test]
    fn prefix_refuses_malformed() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/24",
            "x/8",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?} accepted");
        }
        let e = "10.0.0.1/24".parse::<Prefix>().unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/24"), "{e}");
    }

    #[test]
    fn push_commands_are_checked() {
        let push = |agent: &str, fqdn: &str, targets: &[&str]| {
            Command::PushRoute(Push {
                client: "c1".into(),
                agent: agent.parse().unwrap(),
                fqdn: fqdn.into(),
                targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            })
        };
        let good = push("10.9.0.2:5444", "www.example.net.", &["192.0.2.10"]);
        good.validate().unwrap();
        let j = serde_json::to_string(&good).unwrap();
        assert!(j.contains("\"op\":\"push_route\""), "{j}");
        assert_eq!(serde_json::from_str::<Command>(&j).unwrap(), good);
        for (bad, why) in [
            (
                push("10.9.0.2:0", "www.example.net.", &["192.0.2.10"]),
                "port",
            ),
            (
                push("0.0.0.0:5444", "www.example.net.", &["192.0.2.10"]),
                "unicast",
            ),
            (push("10.9.0.2:5444", "", &["192.0.2.10"]), "DNS name"),
            (push("10.9.0.2:5444", "a b.", &["192.0.2.10"]), "DNS name"),
            (
                push("10.9.0.2:5444", "www.example.net.", &[]),
                "target addresses",
            ),
            (
                push("10.9.0.2:5444", "www.example.net.", &["224.0.0.1"]),
                "unicast",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("192.0.2.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(push("10.9.0.2:5444", "w.", &many).validate().is_err());
        let w = Command::WithdrawPush {
            agent: "10.9.0.2:5444".parse().unwrap(),
            fqdn: "www.example.net.".into(),
        };
        w.validate().unwrap();
        assert_eq!(w.kind(), "withdraw_push");
        // Unknown fields are refused: a push is exactly what it says.
        let extra = r#"{"op":"push_route","client":"c","agent":"10.9.0.2:5444","fqdn":"w.","targets":["192.0.2.1"],"x":1}"#;
        assert!(serde_json::from_str::<Command>(extra).is_err());
    }

    #[test]
    fn commands_round_trip_as_json() {
        let cmds = vec![
            Command::AddPeer(Peer {
                name: "gw1".into(),
                address: "192.0.2.1".parse().unwrap(),
                port: Some(51820),
                encap: Encap::Wireguard,
                public_key: Some(PublicKey(KEY.into())),
                keepalive_secs: Some(25),
                engines: None,
            }),
            Command::AddSession(Session {
                client: "198.51.100.7".parse().unwrap(),
                port: None,
                encap: Encap::Udp,
                public_key: None,
                targets: vec!["203.0.113.10/32".parse().unwrap()],
                engines: None,
            }),
            Command::AddRoute(Route {
                destination: "203.0.113.10/32".parse().unwrap(),
                via: Via::Peer("gw1".into()),
            }),
            Command::AddRoute(Route {
                destination: "198.51.100.7/32".parse().unwrap(),
                via: Via::Gateway("10.3.0.1".parse().unwrap()),
            }),
            Command::AddNatService(NatService {
                protocol: Protocol::Tcp,
                listen: "192.0.2.5:80".parse().unwrap(),
                target: "203.0.113.10:80".parse().unwrap(),
                proxy_protocol: true,
            }),
            Command::RemoveSession {
                client: "198.51.100.7".parse().unwrap(),
            },
            Command::SetReturnPath {
                via: "10.3.0.1".parse().unwrap(),
            },
            Command::ClearReturnPath,
            Command::GetStats,
        ];
        for c in cmds {
            c.validate().unwrap();
            let j = serde_json::to_string(&c).unwrap();
            let back: Command = serde_json::from_str(&j).unwrap();
            assert_eq!(back, c, "{j}");
        }
        let r = Reply::refused(RefusalCode::NotForThisRole, "no sessions at a gateway");
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&j).unwrap(), r);
    }

    #[test]
    fn validation_refuses_inconsistent_commands() {
        let peer = |encap, key: Option<&str>, addr: &str| {
            Command::AddPeer(Peer {
                name: "p".into(),
                address: addr.parse().unwrap(),
                port: None,
                encap,
                public_key: key.map(|k| PublicKey(k.into())),
                keepalive_secs: None,
                engines: None,
            })
        };
        assert!(peer(Encap::Wireguard, None, "192.0.2.1")
            .validate()
            .is_err());
        assert!(peer(Encap::Wireguard, Some("short"), "192.0.2.1")
            .validate()
            .is_err());
        assert!(peer(Encap::Udp, Some(KEY), "192.0.2.1").validate().is_err());
        assert!(peer(Encap::Ipip, None, "2001:db8::1").validate().is_err());
        assert!(peer(Encap::Udp, None, "0.0.0.0").validate().is_err());
        assert!(peer(Encap::Udp, None, "2001:db8::1").validate().is_ok());
        let nat = Command::AddNatService(NatService {
            protocol: Protocol::Udp,
            listen: "192.0.2.5:53".parse().unwrap(),
            target: "203.0.113.10:53".parse().unwrap(),
            proxy_protocol: true,
        });
        assert!(nat.validate().is_err());
        let route = Command::AddRoute(Route {
            destination: "10.0.0.0/8".parse().unwrap(),
            via: Via::Gateway("2001:db8::1".parse().unwrap()),
        });
        assert!(route.validate().is_err());
    }

    #[test]
    fn return_path_commands() {
        let j = serde_json::to_string(&Command::SetReturnPath {
            via: "10.3.0.1".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(j, r#"{"op":"set_return_path","via":"10.3.0.1"}"#);
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"clear_return_path"}"#).unwrap(),
            Command::ClearReturnPath
        );
        for bad in ["0.0.0.0", "224.0.0.1", "127.0.0.1", "::"] {
            let c = Command::SetReturnPath {
                via: bad.parse().unwrap(),
            };
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        for bad in [
            r#"{"op":"set_return_path"}"#,
            r#"{"op":"set_return_path","via":"10.3.0.300"}"#,
            r#"{"op":"set_return_path","via":null}"#,
        ] {
            assert!(serde_json::from_str::<Command>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_json_is_an_error() {
        for bad in [
            r#"{"op":"add_peer"}"#,
            r#"{"op":"launch"}"#,
            r#"{"op":"add_route","destination":"10.0.0.1/8","via":{"peer":"x"}}"#,
            r#"{"op":"add_peer","name":"a","address":"1.2.3.4","encap":"gre"}"#,
            r#"{"op":"add_peer","name":"a","address":"1.2.3.4","encap":"udp","colour":1}"#,
        ] {
            assert!(serde_json::from_str::<Command>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inner_mtu_per_encapsulation() {
        assert_eq!(Encap::Ipip.inner_mtu(1500), 1480);
        assert_eq!(Encap::Udp.inner_mtu(1500), 1472);
        assert_eq!(Encap::Wireguard.inner_mtu(1500), 1440);
    }
}
