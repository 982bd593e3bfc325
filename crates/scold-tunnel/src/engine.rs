//! The packet engine: one task that owns the outer sockets, the TUN device, the peers
//! and the forwarding table, and moves packets between them.
//!
//! Why one owner: the state (peers, WireGuard sessions, the table) is touched on every
//! packet; owning it in one place needs no lock on the fast path. Control changes come in
//! as closures over a channel ([`EngineHandle::call`]) and run between two batches, so the
//! control plane plugs in without touching the packet path.
//!
//! Why its own thread: the engine runs on a dedicated OS thread blocked in a
//! level-triggered `epoll_wait` ([`crate::poll`]), not as a tokio task, so a packet costs
//! one thread wake-up and the system calls that move it, nothing more (see `poll.rs` for
//! what the reactor added). [`Engine::run`] stays an async function for the daemons: it
//! starts the thread and waits for the shutdown signal.
//!
//! Speed: buffers are allocated once; the sockets are read and written 32 datagrams per
//! system call (`recvmmsg`/`sendmmsg`), equal datagrams to one peer as one GSO send;
//! what is ready is processed and sent at once, never held back to fill a batch;
//! WireGuard encrypts straight into the send batch.
//!
//! Inspection: a node may install an [`Inspect`] implementation (the proxy installs its
//! IDS/firewall). It runs on the engine thread and sees every inner packet of a peer
//! whose policy asks for it (`PeerPolicy::inspect`: the proxy's client sessions), after
//! decapsulation (so WireGuard's decrypted packets too) and before the forwarding
//! decision. Owned by the engine thread, it needs no lock; a packet it refuses is
//! dropped and counted for its peer ([`State::drops`]).
//!
//! Too big: an inner packet from a peer that does not fit the next tunnel is answered
//! with ICMP "fragmentation needed" / ICMPv6 "packet too big" through the tunnel it
//! came by ([`crate::icmp`]), rate-limited, so path MTU discovery keeps working across
//! encapsulations of different overheads.

use crate::encap::{Action, Encapsulation, Plain, WireGuard, MAX_PACKET};
use crate::error::TunnelError;
use crate::fib::{inner_addrs, Dest, Fib, PeerId, PeerPolicy};
use crate::icmp;
use crate::keys;
use crate::poll::{Poller, Ready, Waker};
use crate::socket::{endpoint, OuterKind, OuterSocket, RxBatch, SendReport, TxBatch};
use crate::tun::{TunDevice, TunQueue};
use boringtun::x25519::StaticSecret;
use scold_proto::dataplane::{Counters, Encap, Peer, PeerStats, Stats};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room before each packet written to the TUN device for the virtio header.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Largest read from an offloading TUN device: a 64 KB GSO burst and its header.
const TUN_READ: usize = VIRTIO_NET_HDR_LEN + 65535;

/// Datagram batches drained per wake-up before the other sources get a turn.
const ROUNDS_PER_WAKE: usize = 8;
/// TUN reads (each up to one 64 KB burst) per wake-up before the other sources get a turn.
const TUN_PER_WAKE: usize = 16;
/// Period of the WireGuard timers.
const TICK: Duration = Duration::from_millis(100);

const TOKEN_WAKE: u64 = 0;
const TOKEN_UDP: u64 = 1;
const TOKEN_IPIP: u64 = 2;
const TOKEN_TUN: u64 = 3;

/// ICMP "too big" answers per second, and their burst.
const ICMP_PER_SEC: f64 = 100.0;
const ICMP_BURST: f64 = 20.0;

/// A per-packet judge on the engine thread (the proxy's IDS/firewall).
///
/// The engine calls [`Inspect::check`] for every inner packet of a peer whose policy has
/// `inspect` set, before the packet is routed. It runs on the packet path: it must not
/// block, and should not allocate; anything slow (logging, nftables, reports) belongs on
/// another thread, fed through a bounded channel that is never waited on.
pub trait Inspect: Send {
    /// `true` forwards the packet, `false` drops it. `now` is taken once per batch;
    /// `outer_src` is the tunnel peer's address (the admitted client), `inner` the
    /// complete decapsulated IPv4/IPv6 packet.
    fn check(&mut self, now: Instant, outer_src: IpAddr, inner: &[u8]) -> bool;

    /// Called about every 100 ms on the engine thread, for housekeeping (expiring
    /// blocks, handing events on).
    fn tick(&mut self, _now: Instant) {}
}

/// Dropped packets of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDrops {
    pub name: String,
    pub address: IpAddr,
    /// Every drop of this peer's packets (policy, authentication, inspection).
    pub dropped: u64,
    /// Of which the inspector refused.
    pub filtered: u64,
}

/// What the engine listens on.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// UDP socket for `udp` and `wireguard` peers (port 0: any free port, for initiators).
    pub udp_listen: Option<SocketAddr>,
    /// Open the raw ipip socket (needed as soon as one peer uses `ipip`).
    pub ipip: bool,
    /// Restrict the ipip socket to one local address.
    pub ipip_bind: Option<Ipv4Addr>,
    /// This node's WireGuard private key, base64 (needed for `wireguard` peers).
    pub private_key: Option<String>,
    /// MTU of the outer path; inner packets that would not fit encapsulated are dropped
    /// and counted (the TUN MTU is set so that it does not happen), and when relayed
    /// from one peer to another answered with ICMP "too big" through the first.
    pub outer_mtu: u16,
    /// Where packets from peers go when no route matches (client, gateway: the TUN).
    pub peer_default: Option<Dest>,
    /// Packet-engine threads (lanes), 1 to [`MAX_ENGINES`]. More than one needs a TUN
    /// device with as many queues ([`crate::tun::create`]).
    pub engines: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            udp_listen: None,
            ipip: false,
            ipip_bind: None,
            private_key: None,
            outer_mtu: 1500,
            peer_default: None,
            engines: 1,
        }
    }
}

struct PeerEntry {
    spec: Peer,
    policy: PeerPolicy,
    endpoint: Option<SocketAddr>,
    encap: Box<dyn Encapsulation>,
    counters: Counters,
    /// Packets the inspector refused (also counted in `counters.dropped`).
    filtered: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    unknown_source: u64,
    truncated: u64,
    no_route: u64,
    too_big: u64,
    send_errors: u64,
    icmp_too_big: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.unknown_source += o.unknown_source;
        self.truncated += o.truncated;
        self.no_route += o.no_route;
        self.too_big += o.too_big;
        self.send_errors += o.send_errors;
        self.icmp_too_big += o.icmp_too_big;
    }
}

/// The engine's state, as control closures see it.
pub struct State {
    peers: Vec<Option<PeerEntry>>,
    by_addr: crate::fib::FastMap<IpAddr, PeerId>,
    by_name: HashMap<String, PeerId>,
    /// The forwarding table; control code adds routes to peers by their [`PeerId`].
    pub fib: Fib,
    totals: Totals,
    private_key: Option<StaticSecret>,
    has_udp: bool,
    has_ipip: bool,
    outer_mtu: u16,
    inspector: Option<Box<dyn Inspect>>,
    icmp_limit: icmp::RateLimit,
    /// Peers to start a session with at the next tick ([`State::initiate`]).
    initiate: Vec<PeerId>,
    /// Packets each lane received (outer datagrams and TUN packets).
    lane_packets: Vec<u64>,
}

fn outer_kind(e: Encap) -> OuterKind {
    match e {
        Encap::Ipip => OuterKind::Ipip,
        Encap::Udp | Encap::Wireguard => OuterKind::Udp,
    }
}

impl State {
    /// Adds a peer, or updates the one of the same name. Returns its id and whether
    /// anything changed. A changed key or encapsulation starts a fresh tunnel state.
    pub fn add_peer(
        &mut self,
        spec: &Peer,
        policy: PeerPolicy,
    ) -> Result<(PeerId, bool), TunnelError> {
        let perr = |reason: String| TunnelError::Peer {
            name: spec.name.clone(),
            reason,
        };
        match spec.encap {
            Encap::Ipip if !self.has_ipip => {
                return Err(perr(
                    "encap ipip but this node has no ipip socket; enable ipip in the config".into(),
                ))
            }
            Encap::Udp | Encap::Wireguard if !self.has_udp => {
                return Err(perr(format!(
                    "encap {} but this node has no UDP tunnel socket; set listen in the config",
                    spec.encap
                )))
            }
            _ => {}
        }
        if let Some(&other) = self.by_addr.get(&spec.address) {
            let same = self.peers[other]
                .as_ref()
                .is_some_and(|p| p.spec.name == spec.name);
            if !same {
                return Err(TunnelError::AddressInUse(spec.address));
            }
        }
        let existing = self.by_name.get(&spec.name).copied();
        if let Some(id) = existing {
            let e = self.peers[id].as_ref().expect("indexed peer exists");
            if e.spec == *spec && e.policy == policy {
                return Ok((id, false));
            }
        }
        let fresh_encap = match existing.and_then(|id| self.peers[id].as_ref()) {
            Some(e) => {
                e.spec.encap != spec.encap
                    || e.spec.public_key != spec.public_key
                    || e.spec.keepalive_secs != spec.keepalive_secs
            }
            None => true,
        };
        let id = existing.unwrap_or_else(|| {
            self.peers
                .iter()
                .position(Option::is_none)
                .unwrap_or(self.peers.len())
        });
        let encap: Option<Box<dyn Encapsulation>> = if fresh_encap {
            Some(match spec.encap {
                Encap::Udp | Encap::Ipip => Box::new(Plain(spec.encap)),
                Encap::Wireguard => {
                    let private = self.private_key.clone().ok_or_else(|| {
                        perr("encap wireguard but this node has no private_key; set private_key in the config".into())
                    })?;
                    let key = spec
                        .public_key
                        .as_ref()
                        .ok_or_else(|| perr("encap wireguard needs public_key".into()))?;
                    let public =
                        keys::public_key(&key.0, &format!("public_key of peer {}", spec.name))?;
                    // The index tags WireGuard session ids; one per peer slot.
                    Box::new(WireGuard::new(
                        private,
                        public,
                        spec.keepalive_secs,
                        id as u32 + 1,
                    ))
                }
            })
        } else {
            None
        };
        let ep = match spec.encap {
            Encap::Ipip => Some(endpoint(spec.address, 0)),
            _ => spec.port.map(|p| endpoint(spec.address, p)),
        };
        if id == self.peers.len() {
            self.peers.push(None);
        }
        match (self.peers[id].as_mut(), encap) {
            (Some(e), enc) => {
                self.by_addr.remove(&e.spec.address);
                if let Some(enc) = enc {
                    e.encap = enc;
                }
                // Keep a learned endpoint unless the address or port was set anew.
                if ep.is_some() || e.spec.address != spec.address {
                    e.endpoint = ep;
                }
                e.spec = spec.clone();
                e.policy = policy;
            }
            (None, Some(enc)) => {
                self.peers[id] = Some(PeerEntry {
                    spec: spec.clone(),
                    policy,
                    endpoint: ep,
                    encap: enc,
                    counters: Counters::default(),
                    filtered: 0,
                });
            }
            (None, None) => unreachable!("a new peer always gets a fresh encapsulation"),
        }
        self.by_addr.insert(spec.address, id);
        self.by_name.insert(spec.name.clone(), id);
        Ok((id, true))
    }

    /// Removes a peer and every route through it; returns whether it existed.
    pub fn remove_peer(&mut self, name: &str) -> bool {
        let Some(id) = self.by_name.remove(name) else {
            return false;
        };
        if let Some(e) = self.peers[id].take() {
            self.by_addr.remove(&e.spec.address);
        }
        self.fib.forget_peer(id);
        true
    }

    /// Has this side start a session with every peer that has none yet, at the next
    /// tick (within 100 ms): a WireGuard handshake initiation, forced. For a peer that
    /// learnt of us after we of it (a proxy that pushed a route admits the client only
    /// once the client's agent answered): our first initiation reached it before it
    /// knew our key and was dropped, and WireGuard would wait out its 5 s rekey
    /// time-out before trying again. Peers with a session are left alone.
    pub fn initiate_pending(&mut self) {
        self.initiate = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.spec.encap == Encap::Wireguard))
            .map(|(id, _)| id)
            .collect();
    }

    pub fn peer_id(&self, name: &str) -> Option<PeerId> {
        self.by_name.get(name).copied()
    }

    pub fn peer_spec(&self, name: &str) -> Option<&Peer> {
        self.peer_id(name)
            .and_then(|id| self.peers[id].as_ref())
            .map(|e| &e.spec)
    }

    /// Installs (or with `None` removes) the per-packet inspector.
    pub fn set_inspector(&mut self, inspector: Option<Box<dyn Inspect>>) {
        self.inspector = inspector;
    }

    /// Dropped packets per peer, with the share the inspector refused.
    pub fn drops(&self) -> Vec<PeerDrops> {
        self.peers
            .iter()
            .flatten()
            .map(|e| PeerDrops {
                name: e.spec.name.clone(),
                address: e.spec.address,
                dropped: e.counters.dropped,
                filtered: e.filtered,
            })
            .collect()
    }

    /// ICMP "fragmentation needed" / "packet too big" answers sent so far.
    pub fn icmp_too_big_sent(&self) -> u64 {
        self.totals.icmp_too_big
    }

    pub fn stats(&self) -> Stats {
        Stats {
            peers: self
                .peers
                .iter()
                .flatten()
                .map(|e| PeerStats {
                    name: e.spec.name.clone(),
                    address: e.spec.address,
                    encap: e.spec.encap,
                    counters: e.counters.clone(),
                })
                .collect(),
            dropped_unknown_source: self.totals.unknown_source,
            dropped_truncated: self.totals.truncated,
            dropped_no_route: self.totals.no_route,
            dropped_too_big: self.totals.too_big,
            send_errors: self.totals.send_errors,
            engine_packets: self.lane_packets.clone(),
        }
    }
}

type Op = Box<dyn FnOnce(&mut State) + Send>;

/// Lets other tasks change the engine's state between two batches.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Op>,
    waker: Arc<Waker>,
}

impl EngineHandle {
    /// Runs `f` on the engine's state and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> R + Send + 'static,
    ) -> Result<R, TunnelError> {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.tx
            .send(op)
            .await
            .map_err(|_| TunnelError::EngineStopped)?;
        self.waker.wake();
        rx.await.map_err(|_| TunnelError::EngineStopped)
    }
}

/// Where processed packets go; flushed after each batch.
struct Sinks<'a> {
    udp: Option<&'a OuterSocket>,
    ipip: Option<&'a OuterSocket>,
    tun: Option<&'a TunQueue>,
    tx_udp: &'a mut TxBatch,
    tx_ipip: &'a mut TxBatch,
    /// Inner packets for the TUN device, written together so GRO can coalesce them.
    tun_tx: &'a mut [Vec<u8>],
    tun_tx_n: usize,
    gro: &'a mut GROTable,
    /// Room for one ICMP answer.
    icmp: &'a mut [u8],
    /// Counted here and added to the state's totals after the batch.
    totals: Totals,
}

impl Sinks<'_> {
    fn account(totals: &mut Totals, r: SendReport) {
        totals.too_big += r.too_big;
        totals.send_errors += r.errors;
    }

    fn flush_tun(&mut self) {
        if self.tun_tx_n == 0 {
            return;
        }
        if let Some(tun) = self.tun {
            let bufs = &mut self.tun_tx[..self.tun_tx_n];
            if tun.dev.send_multiple(self.gro, bufs, TUN_OFFSET).is_err() {
                self.totals.send_errors += 1;
            }
        }
        self.tun_tx_n = 0;
    }

    fn flush(&mut self) {
        self.flush_tun();
        if let (Some(s), false) = (self.udp, self.tx_udp.is_empty()) {
            let r = s.flush(self.tx_udp);
            Self::account(&mut self.totals, r);
        }
        if let (Some(s), false) = (self.ipip, self.tx_ipip.is_empty()) {
            let r = s.flush(self.tx_ipip);
            Self::account(&mut self.totals, r);
        }
    }

    fn room(&mut self, kind: OuterKind) {
        let full = match kind {
            OuterKind::Udp => self.tx_udp.is_full(),
            OuterKind::Ipip => self.tx_ipip.is_full(),
        };
        if full {
            self.flush();
        }
    }

    fn tx(&mut self, kind: OuterKind) -> &mut TxBatch {
        match kind {
            OuterKind::Udp => self.tx_udp,
            OuterKind::Ipip => self.tx_ipip,
        }
    }

    /// Queues bytes that are already the outer payload (handshake messages).
    fn raw(&mut self, kind: OuterKind, bytes: &[u8], dst: SocketAddr) {
        self.room(kind);
        self.tx(kind).push(bytes, dst, crate::steer::NO_BUCKET);
    }

    /// Encapsulates `inner` for `peer` straight into the send batch.
    fn send_peer(&mut self, peer: &mut PeerEntry, inner: &[u8], outer_mtu: u16) -> Sent {
        let Some(dst) = peer.endpoint else {
            // Port not learned yet: the peer has not spoken.
            self.totals.no_route += 1;
            return Sent::Dropped;
        };
        let overhead = peer.spec.encap.overhead_v4() + if dst.is_ipv6() { 20 } else { 0 };
        if inner.len() + overhead > usize::from(outer_mtu) {
            self.totals.too_big += 1;
            let room = usize::from(outer_mtu).saturating_sub(overhead);
            return Sent::TooBig(u16::try_from(room).unwrap_or(u16::MAX));
        }
        let kind = outer_kind(peer.spec.encap);
        self.room(kind);
        let tx = self.tx(kind);
        let slot = tx.slot();
        let slot_ptr = slot.as_ptr();
        let placed = match peer.encap.encapsulate(inner, slot) {
            Action::ToPeer(b) => Some((b.len(), std::ptr::eq(b.as_ptr(), slot_ptr))),
            _ => None,
        };
        // Plain udp is steered by inner flow at a receiver with several engines; keep
        // each GSO run within one bucket so that it reaches one of them whole. For a
        // receiver with one engine that would only cut runs short.
        let bucket = match peer.spec.encap {
            Encap::Udp if peer.spec.engines.is_some_and(|n| n > 1) => crate::steer::bucket(inner),
            _ => crate::steer::NO_BUCKET,
        };
        match placed {
            Some((len, true)) => tx.commit(len, dst, bucket),
            Some((_, false)) => tx.push(inner, dst, bucket),
            None => return Sent::Dropped,
        }
        peer.counters.tx_packets += 1;
        peer.counters.tx_bytes += inner.len() as u64;
        Sent::Queued
    }

    /// Tells the sender of `pkt` (which came from peer `back`) that the next tunnel
    /// carries at most `mtu` bytes, through `back`'s tunnel.
    fn answer_too_big(&mut self, back: &mut PeerEntry, pkt: &[u8], mtu: u16, outer_mtu: u16) {
        // The buffer is lent out for the send, which needs `self` as well.
        let buf = std::mem::take(&mut self.icmp);
        if let Some(n) = icmp::too_big(pkt, mtu, buf) {
            if let Sent::Queued = self.send_peer(back, &buf[..n], outer_mtu) {
                self.totals.icmp_too_big += 1;
            }
        }
        self.icmp = buf;
    }

    fn send_tun(&mut self, pkt: &[u8]) {
        if self.tun.is_none() {
            self.totals.no_route += 1;
            return;
        }
        if self.tun_tx_n == self.tun_tx.len() {
            self.flush_tun();
        }
        let b = &mut self.tun_tx[self.tun_tx_n];
        b.clear();
        b.resize(TUN_OFFSET, 0);
        b.extend_from_slice(pkt);
        self.tun_tx_n += 1;
    }
}

/// What became of a packet handed to [`Sinks::send_peer`].
enum Sent {
    Queued,
    /// Too large for the peer's tunnel, which carries inner packets of this size at most.
    TooBig(u16),
    Dropped,
}

/// Two distinct peers, mutably.
fn pair_mut(
    peers: &mut [Option<PeerEntry>],
    a: PeerId,
    b: PeerId,
) -> (Option<&mut PeerEntry>, Option<&mut PeerEntry>) {
    debug_assert_ne!(a, b);
    if a < b {
        let (l, r) = peers.split_at_mut(b);
        (l[a].as_mut(), r[0].as_mut())
    } else {
        let (l, r) = peers.split_at_mut(a);
        (r[0].as_mut(), l[b].as_mut())
    }
}

fn on_datagram(
    state: &mut State,
    sinks: &mut Sinks<'_>,
    scratch: &mut [u8],
    kind: OuterKind,
    payload: &[u8],
    src: SocketAddr,
    now: Instant,
) {
    let Some(&id) = state.by_addr.get(&src.ip()) else {
        // Not admitted / not registered: dropped without a word.
        state.totals.unknown_source += 1;
        return;
    };
    let outer_mtu = state.outer_mtu;
    let Some(peer) = state.peers[id].as_mut() else {
        return;
    };
    if outer_kind(peer.spec.encap) != kind {
        state.totals.unknown_source += 1;
        return;
    }
    let learn = peer.spec.port.is_none() && kind == OuterKind::Udp;
    match peer.encap.decapsulate(src.ip(), payload, scratch) {
        Action::Inner(pkt) => {
            if learn {
                peer.endpoint = Some(src);
            }
            peer.counters.rx_packets += 1;
            peer.counters.rx_bytes += pkt.len() as u64;
            let Some((isrc, idst)) = inner_addrs(pkt) else {
                peer.counters.dropped += 1;
                return;
            };
            if peer.policy.inspect {
                if let Some(inspector) = state.inspector.as_mut() {
                    if !inspector.check(now, src.ip(), pkt) {
                        peer.counters.dropped += 1;
                        peer.filtered += 1;
                        return;
                    }
                }
            }
            match state.fib.from_peer(id, &peer.policy, isrc, idst) {
                Ok(Dest::Tun) => sinks.send_tun(pkt),
                Ok(Dest::Peer(q)) => {
                    if let (Some(back), Some(next)) = pair_mut(&mut state.peers, id, q) {
                        if let Sent::TooBig(mtu) = sinks.send_peer(next, pkt, outer_mtu) {
                            if state.icmp_limit.allow(now) {
                                sinks.answer_too_big(back, pkt, mtu, outer_mtu);
                            }
                        }
                    }
                }
                Err(crate::fib::Drop::NoRoute) => state.totals.no_route += 1,
                Err(_) => peer.counters.dropped += 1,
            }
        }
        Action::ToPeer(reply) => {
            // A handshake answer: the peer proved its key (wireguard only).
            if learn {
                peer.endpoint = Some(src);
            }
            sinks.raw(kind, reply, src);
            while let Action::ToPeer(b) = peer.encap.flush(scratch) {
                sinks.raw(kind, b, src);
            }
        }
        Action::Nothing => {
            if learn && peer.spec.encap == Encap::Wireguard {
                // Authenticated keepalive or completed handshake.
                peer.endpoint = Some(src);
            }
        }
        Action::Refused(_) => peer.counters.dropped += 1,
    }
}

/// The engine: create with [`Engine::new`], change through its [`EngineHandle`], run with
/// [`Engine::run`].
///
/// It runs as one or more lanes ([`EngineConfig::engines`]), each a thread of its own
/// with its own UDP socket (one `SO_REUSEPORT` group on the tunnel port, inner flows
/// steered to a lane by [`crate::steer`]), its own queue of a multi-queue TUN device
/// and its own batches. The lanes share one [`State`] behind a lock taken once per
/// received batch: the system calls, which are most of a packet's cost, run in
/// parallel; the per-packet work under the lock (decapsulation, inspection, the
/// forwarding decision, encapsulation) is a small part. Lane 0 also runs the control
/// closures and the timers, and owns the raw ipip socket (a raw socket sees every
/// packet of its protocol, so a second one would only receive copies).
pub struct Engine {
    state: Arc<Mutex<State>>,
    lanes: Vec<Lane>,
}

/// One engine thread's sources, batches and readiness loop.
struct Lane {
    index: usize,
    udp: Option<OuterSocket>,
    /// The raw ipip socket, shared for sending; only lane 0 reads it.
    ipip: Option<Arc<OuterSocket>>,
    tun: Option<TunQueue>,
    tx_udp: TxBatch,
    tx_ipip: TxBatch,
    rx: RxBatch,
    scratch: Box<[u8]>,
    icmp: Box<[u8]>,
    tun_rx: TunRx,
    tun_tx: Vec<Vec<u8>>,
    gro: GROTable,
    /// Control closures (lane 0 only).
    ops: Option<mpsc::Receiver<Op>>,
    poller: Poller,
    waker: Arc<Waker>,
}

/// Buffers for offloaded TUN reads: the raw burst, and the packets it splits into.
struct TunRx {
    original: Box<[u8]>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

/// Stops the engine threads when the future of [`Engine::run`] ends or is dropped.
struct StopOnDrop {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
    }
}

/// Reports a lane's end to [`Engine::run`] when dropped: at its return or its panic.
struct Done(usize, mpsc::UnboundedSender<usize>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// The shared state, also when a lane panicked while holding it: the other lanes and
/// [`Engine::run`] still stop cleanly and report the counters (perhaps one batch short).
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds what sends outside the lock counted (refusals, errors; rarely anything).
fn add_totals(state: &Mutex<State>, totals: Totals) {
    if totals != Totals::default() {
        lock(state).totals += totals;
    }
}

/// Most engine threads one node may have: the steering program's buckets
/// ([`crate::steer::BUCKETS`]).
pub const MAX_ENGINES: usize = crate::steer::BUCKETS as usize;

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        tun: Option<TunDevice>,
    ) -> Result<(Engine, EngineHandle), TunnelError> {
        let n = cfg.engines;
        if !(1..=MAX_ENGINES).contains(&n) {
            return Err(TunnelError::Config(format!(
                "engines = {n}: give between 1 and {MAX_ENGINES} packet-engine threads"
            )));
        }
        let mut udp: Vec<Option<OuterSocket>> = match cfg.udp_listen {
            Some(bind) => OuterSocket::udp_group(bind, n)?
                .into_iter()
                .map(Some)
                .collect(),
            None => (0..n).map(|_| None).collect(),
        };
        let ipip = if cfg.ipip {
            Some(Arc::new(OuterSocket::ipip(cfg.ipip_bind)?))
        } else {
            None
        };
        let mut queues: Vec<Option<TunQueue>> = match tun {
            Some(t) if t.queues.len() != n => {
                return Err(TunnelError::Config(format!(
                    "the TUN device has {} queue(s) for {n} engine(s); create it with one queue per engine",
                    t.queues.len()
                )))
            }
            Some(t) => t.queues.into_iter().map(Some).collect(),
            None => (0..n).map(|_| None).collect(),
        };
        let private_key = cfg
            .private_key
            .as_deref()
            .map(|k| keys::private_key(k, "private_key"))
            .transpose()?;
        let poll_err = |source| TunnelError::Socket {
            what: "the packet engine's epoll set".into(),
            source,
        };
        let (tx, rx) = mpsc::channel(64);
        let mut ops = Some(rx);
        let mut lanes = Vec::with_capacity(n);
        for index in 0..n {
            let poller = Poller::new().map_err(poll_err)?;
            let waker = Arc::new(Waker::new().map_err(poll_err)?);
            poller
                .add(waker.as_raw_fd(), TOKEN_WAKE)
                .map_err(poll_err)?;
            let udp = udp[index].take();
            if let Some(s) = &udp {
                poller.add(s.as_raw_fd(), TOKEN_UDP).map_err(poll_err)?;
            }
            if let (Some(s), 0) = (&ipip, index) {
                poller.add(s.as_raw_fd(), TOKEN_IPIP).map_err(poll_err)?;
            }
            let tun = queues[index].take();
            if let Some(t) = &tun {
                poller.add(t.as_raw_fd(), TOKEN_TUN).map_err(poll_err)?;
            }
            lanes.push(Lane {
                index,
                udp,
                ipip: ipip.clone(),
                tun,
                tx_udp: TxBatch::default(),
                tx_ipip: TxBatch::default(),
                rx: RxBatch::default(),
                scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
                icmp: vec![0u8; icmp::MAX_ANSWER].into_boxed_slice(),
                tun_rx: TunRx {
                    original: vec![0u8; TUN_READ].into_boxed_slice(),
                    bufs: vec![vec![0u8; MAX_PACKET]; IDEAL_BATCH_SIZE],
                    sizes: vec![0; IDEAL_BATCH_SIZE],
                },
                // Capacity for a coalesced 64 KB write, so GRO never reallocates.
                tun_tx: (0..IDEAL_BATCH_SIZE)
                    .map(|_| Vec::with_capacity(TUN_READ + TUN_OFFSET))
                    .collect(),
                gro: GROTable::default(),
                ops: if index == 0 { ops.take() } else { None },
                poller,
                waker,
            });
        }
        let state = State {
            peers: Vec::new(),
            by_addr: Default::default(),
            by_name: HashMap::new(),
            fib: Fib::with_peer_default(cfg.peer_default),
            totals: Totals::default(),
            private_key,
            has_udp: cfg.udp_listen.is_some(),
            has_ipip: ipip.is_some(),
            outer_mtu: cfg.outer_mtu,
            inspector: None,
            icmp_limit: icmp::RateLimit::new(ICMP_PER_SEC, ICMP_BURST),
            initiate: Vec::new(),
            lane_packets: vec![0; n],
        };
        let waker = lanes[0].waker.clone();
        Ok((
            Engine {
                state: Arc::new(Mutex::new(state)),
                lanes,
            },
            EngineHandle { tx, waker },
        ))
    }

    /// The local address of the UDP tunnel socket.
    pub fn udp_local_addr(&self) -> Option<SocketAddr> {
        self.lanes[0].udp.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Moves packets until `shutdown` completes; returns the final counters.
    ///
    /// The packets move on threads of the engine's own (each named `scold-engine`); this
    /// future only waits. Dropping it stops the threads as well.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stats {
        let stop = Arc::new(AtomicBool::new(false));
        let guard = StopOnDrop {
            stop: stop.clone(),
            wakers: self.lanes.iter().map(|l| l.waker.clone()).collect(),
        };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
        let state = self.state;
        let mut running = 0;
        for lane in self.lanes {
            let (stop, state, done_tx) = (stop.clone(), state.clone(), done_tx.clone());
            let spawned = std::thread::Builder::new()
                .name("scold-engine".into())
                .spawn(move || {
                    // Says "ended" also when the lane panics.
                    let _done = Done(lane.index, done_tx);
                    lane.run_blocking(&state, &stop);
                });
            match spawned {
                Ok(_) => running += 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a packet engine thread; no packet will move");
                    drop(guard);
                    while running > 0 && done_rx.recv().await.is_some() {
                        running -= 1;
                    }
                    return Stats::default();
                }
            }
        }
        drop(done_tx);
        tokio::select! {
            _ = shutdown => {}
            Some(index) = done_rx.recv() => {
                // Only an epoll failure or a panic ends a lane before shutdown.
                tracing::error!(engine = index, "a packet engine thread ended before shutdown; the engine stops");
                running -= 1;
            }
        }
        drop(guard);
        while running > 0 && done_rx.recv().await.is_some() {
            running -= 1;
        }
        let stats = lock(&state).stats();
        stats
    }
}

impl Lane {
    fn run_blocking(mut self, state: &Mutex<State>, stop: &AtomicBool) {
        let mut ready = [Ready {
            token: 0,
            error: false,
        }; 8];
        let mut next_tick = Instant::now() + TICK;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_tick {
                if self.index == 0 {
                    self.on_tick(state);
                }
                next_tick = now + TICK;
            }
            // No busy polling: spinning for the next packet measured far worse (3x the
            // round-trip time) on a node whose cores are shared with other work.
            let timeout = next_tick.saturating_duration_since(now);
            let n = match self.poller.wait(&mut ready, timeout) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; the packet engine stops");
                    break;
                }
            };
            for r in &ready[..n] {
                match r.token {
                    TOKEN_WAKE => {
                        self.waker.reset();
                        self.run_ops(state);
                    }
                    TOKEN_UDP => self.drain_outer(state, OuterKind::Udp),
                    TOKEN_IPIP => self.drain_outer(state, OuterKind::Ipip),
                    TOKEN_TUN => self.drain_tun(state),
                    _ => {}
                }
            }
        }
        self.run_ops(state);
    }

    fn run_ops(&mut self, state: &Mutex<State>) {
        let Some(ops) = self.ops.as_mut() else { return };
        while let Ok(op) = ops.try_recv() {
            op(&mut lock(state));
        }
    }

    /// Stops watching a source that keeps failing, so a level-triggered error does not
    /// spin the thread.
    fn give_up(&mut self, fd: std::os::fd::RawFd, what: &str, e: &std::io::Error) {
        tracing::error!(error = %e, engine = self.index, "reading {what} keeps failing; the engine stops reading it");
        let _ = self.poller.remove(fd);
    }

    /// Splits the lane into the sinks the packet path writes to and its receive buffers.
    fn split(&mut self) -> (Sinks<'_>, &mut RxBatch, &mut [u8], &mut TunRx) {
        let Lane {
            udp,
            ipip,
            tun,
            tx_udp,
            tx_ipip,
            rx,
            scratch,
            icmp,
            tun_rx,
            tun_tx,
            gro,
            ..
        } = self;
        let sinks = Sinks {
            udp: udp.as_ref(),
            ipip: ipip.as_deref(),
            tun: tun.as_ref(),
            tx_udp,
            tx_ipip,
            tun_tx,
            tun_tx_n: 0,
            gro,
            icmp,
            totals: Totals::default(),
        };
        (sinks, rx, scratch, tun_rx)
    }

    fn drain_outer(&mut self, state: &Mutex<State>, kind: OuterKind) {
        let index = self.index;
        let (mut sinks, rx, scratch, _) = self.split();
        let sock = match kind {
            OuterKind::Udp => sinks.udp,
            OuterKind::Ipip => sinks.ipip,
        };
        let Some(sock) = sock else { return };
        for _ in 0..ROUNDS_PER_WAKE {
            // Errors that ICMP reports for a peer that is down are consumed inside.
            let got = match sock.try_recv_batch(rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the tunnel socket failed");
                    break;
                }
            };
            sinks.totals.truncated += rx.take_truncated();
            if rx.is_empty() {
                // Nothing, or only datagrams cut short (counted): read on if it was a full
                // batch.
                if got < crate::socket::BATCH {
                    break;
                }
                continue;
            }
            // One clock read per batch: the inspector's buckets need no finer time.
            let now = Instant::now();
            {
                let mut st = lock(state);
                for i in 0..rx.len() {
                    let (payload, src) = rx.get(i);
                    on_datagram(&mut st, &mut sinks, scratch, kind, payload, src, now);
                }
                st.lane_packets[index] += rx.len() as u64;
                st.totals += std::mem::take(&mut sinks.totals);
            }
            // The sends happen outside the lock, in parallel with the other lanes.
            sinks.flush();
            // A short batch emptied the queue; the level-triggered poll reports more.
            if got < crate::socket::BATCH {
                break;
            }
        }
        add_totals(state, sinks.totals);
    }

    fn drain_tun(&mut self, state: &Mutex<State>) {
        let index = self.index;
        let (mut sinks, _, _, rx) = self.split();
        let Some(tun) = sinks.tun else { return };
        let mut failed = None;
        for _ in 0..TUN_PER_WAKE {
            let n = match tun
                .dev
                .recv_multiple(&mut rx.original, &mut rx.bufs, &mut rx.sizes, 0)
            {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            {
                let mut st = lock(state);
                let st = &mut *st;
                let outer_mtu = st.outer_mtu;
                for i in 0..n {
                    let pkt = &rx.bufs[i][..rx.sizes[i]];
                    let Some((_, dst)) = inner_addrs(pkt) else {
                        continue;
                    };
                    match st.fib.from_tun(dst) {
                        Ok(Dest::Peer(q)) => {
                            if let Some(p) = st.peers.get_mut(q).and_then(Option::as_mut) {
                                // The TUN MTU is set so that this fits; a larger packet
                                // is dropped and counted.
                                sinks.send_peer(p, pkt, outer_mtu);
                            }
                        }
                        _ => sinks.totals.no_route += 1,
                    }
                }
                st.lane_packets[index] += n as u64;
                st.totals += std::mem::take(&mut sinks.totals);
            }
            if n > 1 {
                // A GSO burst: send it before reading the next, so the peer's TCP sees a
                // steady stream rather than bursts of batches. Single packets wait for
                // the batch, which the sends after the loop take.
                sinks.flush();
            }
        }
        sinks.flush();
        add_totals(state, sinks.totals);
        if let Some(e) = failed {
            // EBADFD/EIO: the interface was deleted under us; a malformed offload header
            // is a single bad read and worth only a warning.
            if matches!(
                e.raw_os_error(),
                Some(libc::EBADFD | libc::EIO | libc::ENODEV)
            ) {
                let fd = self.tun.as_ref().map(|t| t.as_raw_fd());
                if let Some(fd) = fd {
                    self.give_up(fd, "the TUN device", &e);
                }
            } else {
                tracing::warn!(error = %e, "reading the TUN device failed");
            }
        }
    }

    /// WireGuard timers: handshake retries, keepalives, rekeying (lane 0).
    fn on_tick(&mut self, state: &Mutex<State>) {
        let (mut sinks, _, scratch, _) = self.split();
        {
            let mut st = lock(state);
            let st = &mut *st;
            if let Some(inspector) = st.inspector.as_mut() {
                inspector.tick(Instant::now());
            }
            for id in std::mem::take(&mut st.initiate) {
                let Some(p) = st.peers.get_mut(id).and_then(|p| p.as_mut()) else {
                    continue;
                };
                let Some(dst) = p.endpoint else { continue };
                if let Action::ToPeer(b) = p.encap.initiate(scratch) {
                    sinks.raw(outer_kind(p.spec.encap), b, dst);
                }
            }
            for p in st.peers.iter_mut().flatten() {
                if p.spec.encap != Encap::Wireguard {
                    continue;
                }
                let Some(dst) = p.endpoint else { continue };
                if let Action::ToPeer(b) = p.encap.tick(scratch) {
                    sinks.raw(OuterKind::Udp, b, dst);
                }
            }
            st.totals += std::mem::take(&mut sinks.totals);
        }
        sinks.flush();
        add_totals(state, sinks.totals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scold_proto::dataplane::Prefix;
    use std::net::UdpSocket;

    /// A proxy's relay as the daemon sets it up: gateway peer "gw" (127.0.0.3, udp) for
    /// 10.4.0.0/24, client session "client" (127.0.0.2) with source 10.1.0.2 and
    /// destination 10.4.0.2, inspected or not; the client's address routes to it.
    fn relay_peers(s: &mut State, gw_port: u16, inspect: bool) {
        let peer = |name: &str, address: &str, port| Peer {
            name: name.into(),
            address: address.parse().unwrap(),
            port,
            encap: Encap::Udp,
            public_key: None,
            keepalive_secs: None,
            engines: None,
        };
        let (gid, _) = s
            .add_peer(
                &peer("gw", "127.0.0.3", Some(gw_port)),
                PeerPolicy::default(),
            )
            .unwrap();
        let policy = PeerPolicy {
            sources: vec!["10.1.0.2/32".parse::<Prefix>().unwrap()],
            destinations: vec!["10.4.0.2/32".parse::<Prefix>().unwrap()],
            learn_sources: false,
            inspect,
        };
        let (cid, _) = s
            .add_peer(&peer("client", "127.0.0.2", None), policy)
            .unwrap();
        s.fib
            .insert("10.1.0.2/32".parse().unwrap(), Dest::Peer(cid));
        s.fib
            .insert("10.4.0.0/24".parse().unwrap(), Dest::Peer(gid));
    }

    fn v4_packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn bind(ip: &str) -> UdpSocket {
        let s = UdpSocket::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// A relay engine on loopback with `engines` lanes and the peers of [`relay_peers`]
    /// (gateway at `gw_port`): its tunnel address, handle, stop switch and task.
    async fn relay(
        engines: usize,
        gw_port: u16,
        inspect: bool,
    ) -> (
        SocketAddr,
        EngineHandle,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Stats>,
    ) {
        let (engine, handle) = Engine::new(
            EngineConfig {
                udp_listen: Some("127.0.0.1:0".parse().unwrap()),
                engines,
                ..EngineConfig::default()
            },
            None,
        )
        .unwrap();
        let listen = engine.udp_local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(engine.run(async move {
            let _ = stop_rx.await;
        }));
        handle
            .call(move |s| relay_peers(s, gw_port, inspect))
            .await
            .unwrap();
        (listen, handle, stop_tx, task)
    }

    /// A proxy engine on loopback: a client's udp-encapsulated packets reach the gateway
    /// peer in order and unchanged, an answer goes back to the client's learned port,
    /// a stranger is dropped and counted, control calls work while packets flow, and
    /// after shutdown the handle reports the engine stopped.
    #[tokio::test]
    async fn proxy_engine_relays_between_peers_on_its_thread() {
        let client = bind("127.0.0.2");
        let gateway = bind("127.0.0.3");
        let stranger = bind("127.0.0.9");
        let gw_port = gateway.local_addr().unwrap().port();
        let (listen, handle, stop_tx, task) = relay(1, gw_port, false).await;

        let sent: Vec<Vec<u8>> = (0..50)
            .map(|i| v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 100 + i * 20))
            .collect();
        for p in &sent {
            client.send_to(p, listen).unwrap();
        }
        let mut buf = [0u8; 2048];
        for (i, want) in sent.iter().enumerate() {
            let (n, from) = gateway.recv_from(&mut buf).unwrap();
            assert_eq!(from, listen);
            assert_eq!(&buf[..n], &want[..], "packet {i} changed or out of order");
        }
        // The answer goes back to the client's port, learned from its first packet.
        let reply = v4_packet([10, 4, 0, 2], [10, 1, 0, 2], 300);
        gateway.send_to(&reply, listen).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &reply[..]);
        // A stranger and a spoofed inner source get nowhere.
        stranger
            .send_to(&v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 64), listen)
            .unwrap();
        client
            .send_to(&v4_packet([10, 9, 9, 9], [10, 4, 0, 2], 64), listen)
            .unwrap();
        gateway
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            gateway.recv_from(&mut buf).is_err(),
            "a refused packet went through"
        );
        let stats = handle.call(|s| s.stats()).await.unwrap();
        assert_eq!(stats.dropped_unknown_source, 1);
        let c = stats.peers.iter().find(|p| p.name == "client").unwrap();
        assert_eq!(c.counters.rx_packets, 51);
        assert_eq!(c.counters.dropped, 1);
        assert_eq!(c.counters.tx_packets, 1);

        stop_tx.send(()).unwrap();
        let fin = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the engine did not stop")
            .unwrap();
        assert_eq!(fin.dropped_unknown_source, 1);
        assert!(matches!(
            handle.call(|_| ()).await,
            Err(TunnelError::EngineStopped)
        ));
    }

    /// Two lanes share one tunnel port: the datagrams of one client (one outer 4-tuple),
    /// single or in GSO runs, are spread over both by inner flow, each flow arrives whole
    /// and in order, the control state is seen by both, and the counters add up across
    /// lanes.
    #[tokio::test]
    async fn two_engines_spread_one_tunnel_by_inner_flow() {
        let client = bind("127.0.0.2");
        let gateway = bind("127.0.0.3");
        socket2::SockRef::from(&gateway)
            .set_recv_buffer_size(8 << 20)
            .unwrap();
        let gw_port = gateway.local_addr().unwrap().port();
        let (listen, handle, stop_tx, task) = relay(2, gw_port, false).await;

        const FLOWS: u16 = 16;
        const ROUNDS: u16 = 40;
        let receiver = std::thread::spawn(move || {
            let mut got: HashMap<u16, Vec<u16>> = HashMap::new();
            let mut buf = [0u8; 2048];
            for _ in 0..FLOWS * ROUNDS {
                let Ok((n, _)) = gateway.recv_from(&mut buf) else {
                    break;
                };
                assert_eq!(n, 120);
                let port = u16::from_be_bytes([buf[20], buf[21]]);
                let seq = u16::from_be_bytes([buf[28], buf[29]]);
                got.entry(port).or_default().push(seq);
            }
            got
        });
        // The first half as single datagrams, the second as the engine sends them: GSO
        // runs of a send batch, which arrive as one skb each.
        let batch = OuterSocket::udp("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut tx = TxBatch::default();
        for round in 0..ROUNDS {
            for flow in 0..FLOWS {
                let mut p = v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 120);
                p[20..22].copy_from_slice(&(40000 + flow).to_be_bytes());
                p[22..24].copy_from_slice(&5201u16.to_be_bytes());
                p[28..30].copy_from_slice(&round.to_be_bytes());
                if round < ROUNDS / 2 {
                    client.send_to(&p, listen).unwrap();
                } else {
                    tx.push(&p, listen, crate::steer::bucket(&p));
                    if tx.is_full() || flow == FLOWS - 1 {
                        batch.flush(&mut tx);
                    }
                }
            }
        }
        let got = receiver.join().unwrap();
        assert_eq!(got.len(), usize::from(FLOWS), "a flow went missing");
        for (port, seqs) in &got {
            assert_eq!(
                seqs,
                &(0..ROUNDS).collect::<Vec<_>>(),
                "flow from port {port} lost or reordered packets"
            );
        }
        let total = u64::from(FLOWS * ROUNDS);
        // A stranger's junk of every shape (empty, one byte, truncated IPv4 and IPv6
        // headers, an IPv4 header claiming 60 bytes of options) is steered somewhere,
        // counted as unknown, and changes nothing.
        let stranger = bind("127.0.0.9");
        let junk: [&[u8]; 6] = [
            &[],
            &[0x45],
            &[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6],
            &[0x60; 30],
            &[0x4f; 24],
            &[0x01, 0, 0, 0, 9, 9, 9, 9],
        ];
        for j in junk {
            stranger.send_to(j, listen).unwrap();
        }
        let mut stats = handle.call(|s| s.stats()).await.unwrap();
        for _ in 0..50 {
            if stats.dropped_unknown_source >= junk.len() as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats = handle.call(|s| s.stats()).await.unwrap();
        }
        assert_eq!(stats.dropped_unknown_source, junk.len() as u64);
        let total = total + junk.len() as u64;
        assert_eq!(stats.engine_packets.len(), 2);
        assert_eq!(stats.engine_packets.iter().sum::<u64>(), total);
        assert!(
            stats.engine_packets.iter().all(|&n| n > 0),
            "one lane carried the whole tunnel: {:?}",
            stats.engine_packets
        );
        let c = stats.peers.iter().find(|p| p.name == "client").unwrap();
        assert_eq!(c.counters.rx_packets, u64::from(FLOWS * ROUNDS));
        stop_tx.send(()).unwrap();
        let fin = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the engine threads did not stop")
            .unwrap();
        assert_eq!(fin.engine_packets.iter().sum::<u64>(), total);
    }

    /// Panics on the first packet it judges.
    struct Bomb;

    impl Inspect for Bomb {
        fn check(&mut self, _now: Instant, _outer_src: IpAddr, _inner: &[u8]) -> bool {
            panic!("inspector failed");
        }
    }

    /// A lane that dies (here its inspector panics) ends the whole engine, the other
    /// lane too, instead of leaving it half-running until shutdown.
    #[tokio::test]
    async fn a_lane_that_panics_stops_the_engine() {
        let client = bind("127.0.0.2");
        let gateway = bind("127.0.0.3");
        let gw_port = gateway.local_addr().unwrap().port();
        let (listen, handle, _stop_tx, task) = relay(2, gw_port, true).await;
        handle
            .call(|s| s.set_inspector(Some(Box::new(Bomb))))
            .await
            .unwrap();
        client
            .send_to(&v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 100), listen)
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the engine kept running after a lane died")
            .unwrap();
        assert!(matches!(
            handle.call(|_| ()).await,
            Err(TunnelError::EngineStopped)
        ));
    }

    /// A lane count out of range is refused with the bounds, before anything is opened.
    #[test]
    fn engine_counts_out_of_range_are_refused() {
        for engines in [0, MAX_ENGINES + 1] {
            let e = Engine::new(
                EngineConfig {
                    udp_listen: Some("127.0.0.1:0".parse().unwrap()),
                    engines,
                    ..EngineConfig::default()
                },
                None,
            )
            .err()
            .expect("accepted an engine count out of range");
            assert!(e.to_string().contains("between 1 and 16"), "{e}");
        }
    }

    /// Refuses inner packets of odd length and counts what it saw, by outer source.
    struct OddOut {
        seen: Arc<std::sync::Mutex<Vec<IpAddr>>>,
        ticks: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Inspect for OddOut {
        fn check(&mut self, _now: Instant, outer_src: IpAddr, inner: &[u8]) -> bool {
            self.seen.lock().unwrap().push(outer_src);
            inner.len().is_multiple_of(2)
        }
        fn tick(&mut self, _now: Instant) {
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The inspector sees every inner packet of an inspected session (and nothing from
    /// the gateway), its refusals are dropped and counted per peer, and a packet too big
    /// for the gateway's tunnel is answered with ICMP "fragmentation needed" through the
    /// client's tunnel.
    #[tokio::test]
    async fn inspector_and_too_big_answers() {
        let client = bind("127.0.0.2");
        let gateway = bind("127.0.0.3");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let gw_port = gateway.local_addr().unwrap().port();
        let inspector = OddOut {
            seen: seen.clone(),
            ticks: ticks.clone(),
        };
        let (listen, handle, stop_tx, task) = relay(1, gw_port, true).await;
        handle
            .call(move |s| s.set_inspector(Some(Box::new(inspector))))
            .await
            .unwrap();

        for i in 0..20 {
            let p = v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 100 + i);
            client.send_to(&p, listen).unwrap();
        }
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            let (n, _) = gateway.recv_from(&mut buf).unwrap();
            assert!(n.is_multiple_of(2), "a refused packet went through");
        }
        // The gateway's reply is not inspected.
        gateway
            .send_to(&v4_packet([10, 4, 0, 2], [10, 1, 0, 2], 301), listen)
            .unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(n, 301);

        // 1480 bytes with DF do not fit a udp tunnel on a 1500-byte path (28 bytes of
        // headers): the client hears "fragmentation needed, MTU 1472" from the target.
        let mut big = v4_packet([10, 1, 0, 2], [10, 4, 0, 2], 1480);
        big[6] = 0x40;
        client.send_to(&big, listen).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        let icmp = &buf[..n];
        assert_eq!(icmp[9], 1, "an ICMP packet");
        assert_eq!(&icmp[12..16], &[10, 4, 0, 2]);
        assert_eq!(&icmp[16..20], &[10, 1, 0, 2]);
        assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1472);
        assert_eq!(&icmp[28..48], &big[..20], "quotes the dropped packet");
        // Without DF the packet is only dropped.
        big[6] = 0;
        client.send_to(&big, listen).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            client.recv_from(&mut buf).is_err(),
            "answered a packet without DF"
        );

        let (drops, stats, icmp_sent) = handle
            .call(|s| (s.drops(), s.stats(), s.icmp_too_big_sent()))
            .await
            .unwrap();
        let c = drops.iter().find(|d| d.name == "client").unwrap();
        assert_eq!((c.dropped, c.filtered), (10, 10));
        let g = drops.iter().find(|d| d.name == "gw").unwrap();
        assert_eq!(g.filtered, 0);
        assert_eq!(stats.dropped_too_big, 2);
        assert_eq!(icmp_sent, 1);
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 22, "20 small, 2 big, none from the gateway");
            assert!(seen
                .iter()
                .all(|a| *a == "127.0.0.2".parse::<IpAddr>().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            ticks.load(Ordering::Relaxed) >= 1,
            "the inspector never ticked"
        );
        stop_tx.send(()).unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
