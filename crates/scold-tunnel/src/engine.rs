//! The packet engine: one task that owns the outer sockets, the TUN device, the peers
//! and the forwarding table, and moves packets between them.
//!
//! Why one task: the state (peers, WireGuard sessions, the table) is touched on every
//! packet; owning it in one place needs no lock on the fast path. Control changes come in
//! as closures over a channel ([`EngineHandle::call`]) and run between two batches, so the
//! control plane plugs in without touching the packet path.
//!
//! Speed: buffers are allocated once; the sockets are read and written 32 datagrams per
//! system call (`recvmmsg`/`sendmmsg`); WireGuard encrypts straight into the send batch.

use crate::encap::{Action, Encapsulation, Plain, WireGuard, MAX_PACKET};
use crate::error::TunnelError;
use crate::fib::{inner_addrs, Dest, Fib, PeerId, PeerPolicy};
use crate::keys;
use crate::socket::{endpoint, OuterKind, OuterSocket, RxBatch, SendReport, TxBatch};
use boringtun::x25519::StaticSecret;
use scold_proto::dataplane::{Counters, Encap, Peer, PeerStats, Stats};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room before each packet written to the TUN device for the virtio header.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Largest read from an offloading TUN device: a 64 KB GSO burst and its header.
const TUN_READ: usize = VIRTIO_NET_HDR_LEN + 65535;

/// Datagram batches drained per wake-up before the other sources get a turn.
const ROUNDS_PER_WAKE: usize = 8;
/// TUN reads (each up to one 64 KB burst) per wake-up before the other sources get a turn.
const TUN_PER_WAKE: usize = 16;

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
    /// and counted (the TUN MTU is set so that it does not happen).
    pub outer_mtu: u16,
    /// Where packets from peers go when no route matches (client, gateway: the TUN).
    pub peer_default: Option<Dest>,
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
        }
    }
}

struct PeerEntry {
    spec: Peer,
    policy: PeerPolicy,
    endpoint: Option<SocketAddr>,
    encap: Box<dyn Encapsulation>,
    counters: Counters,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    unknown_source: u64,
    no_route: u64,
    too_big: u64,
    send_errors: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.unknown_source += o.unknown_source;
        self.no_route += o.no_route;
        self.too_big += o.too_big;
        self.send_errors += o.send_errors;
    }
}

/// The engine's state, as control closures see it.
pub struct State {
    peers: Vec<Option<PeerEntry>>,
    by_addr: HashMap<IpAddr, PeerId>,
    by_name: HashMap<String, PeerId>,
    /// The forwarding table; control code adds routes to peers by their [`PeerId`].
    pub fib: Fib,
    totals: Totals,
    private_key: Option<StaticSecret>,
    has_udp: bool,
    has_ipip: bool,
    outer_mtu: u16,
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

    pub fn peer_id(&self, name: &str) -> Option<PeerId> {
        self.by_name.get(name).copied()
    }

    pub fn peer_spec(&self, name: &str) -> Option<&Peer> {
        self.peer_id(name)
            .and_then(|id| self.peers[id].as_ref())
            .map(|e| &e.spec)
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
            dropped_no_route: self.totals.no_route,
            dropped_too_big: self.totals.too_big,
            send_errors: self.totals.send_errors,
        }
    }
}

type Op = Box<dyn FnOnce(&mut State) + Send>;

/// Lets other tasks change the engine's state between two batches.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Op>,
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
        rx.await.map_err(|_| TunnelError::EngineStopped)
    }
}

/// Where processed packets go; flushed after each batch.
struct Sinks<'a> {
    udp: Option<&'a OuterSocket>,
    ipip: Option<&'a OuterSocket>,
    tun: Option<&'a AsyncDevice>,
    tx_udp: &'a mut TxBatch,
    tx_ipip: &'a mut TxBatch,
    /// Inner packets for the TUN device, written together so GRO can coalesce them.
    tun_tx: &'a mut [Vec<u8>],
    tun_tx_n: usize,
    gro: &'a mut GROTable,
    /// Counted here and added to the state's totals after the batch.
    totals: Totals,
}

impl Sinks<'_> {
    fn account(totals: &mut Totals, r: SendReport) {
        totals.too_big += r.too_big;
        totals.send_errors += r.errors;
    }

    async fn flush_tun(&mut self) {
        if self.tun_tx_n == 0 {
            return;
        }
        if let Some(tun) = self.tun {
            let bufs = &mut self.tun_tx[..self.tun_tx_n];
            if tun.send_multiple(self.gro, bufs, TUN_OFFSET).await.is_err() {
                self.totals.send_errors += 1;
            }
        }
        self.tun_tx_n = 0;
    }

    async fn flush(&mut self) {
        self.flush_tun().await;
        if let (Some(s), false) = (self.udp, self.tx_udp.is_empty()) {
            let r = s.flush(self.tx_udp).await;
            Self::account(&mut self.totals, r);
        }
        if let (Some(s), false) = (self.ipip, self.tx_ipip.is_empty()) {
            let r = s.flush(self.tx_ipip).await;
            Self::account(&mut self.totals, r);
        }
    }

    async fn room(&mut self, kind: OuterKind) {
        let full = match kind {
            OuterKind::Udp => self.tx_udp.is_full(),
            OuterKind::Ipip => self.tx_ipip.is_full(),
        };
        if full {
            self.flush().await;
        }
    }

    fn tx(&mut self, kind: OuterKind) -> &mut TxBatch {
        match kind {
            OuterKind::Udp => self.tx_udp,
            OuterKind::Ipip => self.tx_ipip,
        }
    }

    /// Queues bytes that are already the outer payload (handshake messages).
    async fn raw(&mut self, kind: OuterKind, bytes: &[u8], dst: SocketAddr) {
        self.room(kind).await;
        self.tx(kind).push(bytes, dst);
    }

    /// Encapsulates `inner` for `peer` straight into the send batch.
    async fn send_peer(&mut self, peer: &mut PeerEntry, inner: &[u8], outer_mtu: u16) {
        let Some(dst) = peer.endpoint else {
            // Port not learned yet: the peer has not spoken.
            self.totals.no_route += 1;
            return;
        };
        let overhead = peer.spec.encap.overhead_v4() + if dst.is_ipv6() { 20 } else { 0 };
        if inner.len() + overhead > usize::from(outer_mtu) {
            self.totals.too_big += 1;
            return;
        }
        let kind = outer_kind(peer.spec.encap);
        self.room(kind).await;
        let tx = self.tx(kind);
        let slot = tx.slot();
        let slot_ptr = slot.as_ptr();
        let placed = match peer.encap.encapsulate(inner, slot) {
            Action::ToPeer(b) => Some((b.len(), std::ptr::eq(b.as_ptr(), slot_ptr))),
            _ => None,
        };
        match placed {
            Some((len, true)) => tx.commit(len, dst),
            Some((_, false)) => tx.push(inner, dst),
            None => return,
        }
        peer.counters.tx_packets += 1;
        peer.counters.tx_bytes += inner.len() as u64;
    }

    async fn send_tun(&mut self, pkt: &[u8]) {
        if self.tun.is_none() {
            self.totals.no_route += 1;
            return;
        }
        if self.tun_tx_n == self.tun_tx.len() {
            self.flush_tun().await;
        }
        let b = &mut self.tun_tx[self.tun_tx_n];
        b.clear();
        b.resize(TUN_OFFSET, 0);
        b.extend_from_slice(pkt);
        self.tun_tx_n += 1;
    }
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

async fn on_datagram(
    state: &mut State,
    sinks: &mut Sinks<'_>,
    scratch: &mut [u8],
    kind: OuterKind,
    payload: &[u8],
    src: SocketAddr,
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
            match state.fib.from_peer(id, &peer.policy, isrc, idst) {
                Ok(Dest::Tun) => sinks.send_tun(pkt).await,
                Ok(Dest::Peer(q)) => {
                    if let (_, Some(next)) = pair_mut(&mut state.peers, id, q) {
                        sinks.send_peer(next, pkt, outer_mtu).await;
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
            sinks.raw(kind, reply, src).await;
            while let Action::ToPeer(b) = peer.encap.flush(scratch) {
                sinks.raw(kind, b, src).await;
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
pub struct Engine {
    state: State,
    udp: Option<OuterSocket>,
    ipip: Option<OuterSocket>,
    tun: Option<AsyncDevice>,
    tx_udp: TxBatch,
    tx_ipip: TxBatch,
    rx: RxBatch,
    scratch: Box<[u8]>,
    tun_rx: TunRx,
    tun_tx: Vec<Vec<u8>>,
    gro: GROTable,
    ops: mpsc::Receiver<Op>,
}

/// Buffers for offloaded TUN reads: the raw burst, and the packets it splits into.
struct TunRx {
    original: Box<[u8]>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

async fn readable(s: Option<&OuterSocket>) -> std::io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn tun_readable(t: Option<&AsyncDevice>) -> std::io::Result<()> {
    match t {
        Some(t) => t.readable().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        tun: Option<AsyncDevice>,
    ) -> Result<(Engine, EngineHandle), TunnelError> {
        let udp = cfg.udp_listen.map(OuterSocket::udp).transpose()?;
        let ipip = if cfg.ipip {
            Some(OuterSocket::ipip(cfg.ipip_bind)?)
        } else {
            None
        };
        let private_key = cfg
            .private_key
            .as_deref()
            .map(|k| keys::private_key(k, "private_key"))
            .transpose()?;
        let (tx, rx) = mpsc::channel(64);
        let state = State {
            peers: Vec::new(),
            by_addr: HashMap::new(),
            by_name: HashMap::new(),
            fib: Fib::with_peer_default(cfg.peer_default),
            totals: Totals::default(),
            private_key,
            has_udp: udp.is_some(),
            has_ipip: ipip.is_some(),
            outer_mtu: cfg.outer_mtu,
        };
        Ok((
            Engine {
                state,
                udp,
                ipip,
                tun,
                tx_udp: TxBatch::default(),
                tx_ipip: TxBatch::default(),
                rx: RxBatch::default(),
                scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
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
                ops: rx,
            },
            EngineHandle { tx },
        ))
    }

    /// The local address of the UDP tunnel socket.
    pub fn udp_local_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Moves packets until `shutdown` completes; returns the final counters.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Stats {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut ops_open = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                op = self.ops.recv(), if ops_open => match op {
                    Some(op) => op(&mut self.state),
                    None => ops_open = false,
                },
                r = readable(self.udp.as_ref()) => {
                    if r.is_ok() { self.drain_outer(OuterKind::Udp).await }
                }
                r = readable(self.ipip.as_ref()) => {
                    if r.is_ok() { self.drain_outer(OuterKind::Ipip).await }
                }
                r = tun_readable(self.tun.as_ref()) => {
                    if r.is_ok() { self.drain_tun().await }
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.state.stats()
    }

    /// Splits the engine into the state and the sinks the packet path writes to.
    fn split(&mut self) -> (&mut State, Sinks<'_>, &mut RxBatch, &mut [u8], &mut TunRx) {
        let Engine {
            state,
            udp,
            ipip,
            tun,
            tx_udp,
            tx_ipip,
            rx,
            scratch,
            tun_rx,
            tun_tx,
            gro,
            ..
        } = self;
        let sinks = Sinks {
            udp: udp.as_ref(),
            ipip: ipip.as_ref(),
            tun: tun.as_ref(),
            tx_udp,
            tx_ipip,
            tun_tx,
            tun_tx_n: 0,
            gro,
            totals: Totals::default(),
        };
        (state, sinks, rx, scratch, tun_rx)
    }

    async fn drain_outer(&mut self, kind: OuterKind) {
        let (state, mut sinks, rx, scratch, _) = self.split();
        let sock = match kind {
            OuterKind::Udp => sinks.udp,
            OuterKind::Ipip => sinks.ipip,
        };
        let Some(sock) = sock else { return };
        for _ in 0..ROUNDS_PER_WAKE {
            match sock.try_recv_batch(rx) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the tunnel socket failed");
                    break;
                }
            }
            for i in 0..rx.len() {
                let (payload, src) = rx.get(i);
                on_datagram(state, &mut sinks, scratch, kind, payload, src).await;
            }
            sinks.flush().await;
        }
        state.totals += sinks.totals;
    }

    async fn drain_tun(&mut self) {
        let (state, mut sinks, _, _, rx) = self.split();
        let Some(tun) = sinks.tun else { return };
        let outer_mtu = state.outer_mtu;
        for _ in 0..TUN_PER_WAKE {
            let n = match tun.try_recv_multiple(&mut rx.original, &mut rx.bufs, &mut rx.sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the TUN device failed");
                    break;
                }
            };
            for i in 0..n {
                let pkt = &rx.bufs[i][..rx.sizes[i]];
                let Some((_, dst)) = inner_addrs(pkt) else {
                    continue;
                };
                match state.fib.from_tun(dst) {
                    Ok(Dest::Peer(q)) => {
                        if let Some(p) = state.peers.get_mut(q).and_then(Option::as_mut) {
                            sinks.send_peer(p, pkt, outer_mtu).await;
                        }
                    }
                    _ => sinks.totals.no_route += 1,
                }
            }
        }
        sinks.flush().await;
        state.totals += sinks.totals;
    }

    /// WireGuard timers: handshake retries, keepalives, rekeying.
    async fn on_tick(&mut self) {
        let (state, mut sinks, _, scratch, _) = self.split();
        for p in state.peers.iter_mut().flatten() {
            if p.spec.encap != Encap::Wireguard {
                continue;
            }
            let Some(dst) = p.endpoint else { continue };
            if let Action::ToPeer(b) = p.encap.tick(scratch) {
                sinks.raw(OuterKind::Udp, b, dst).await;
            }
        }
        sinks.flush().await;
        state.totals += sinks.totals;
    }
}
