//! The agent of scheme 4.1 (and the receiving end of 4.2's pushes): the I/O driver of
//! the sans-IO core [`scold_proto::agent::Agent`], which makes every decision.
//!
//! One loop owns the core. It feeds it what the DNS front ([`super::stub`]), the push
//! service ([`super::push`]), the admission connections and the timers report, and
//! carries out the core's actions: DNS re-reads, proxy measurements and admissions run
//! as tasks that report back to the loop, so a slow proxy never holds the loop up; route,
//! peer and counter changes on the local data plane are done at once and their result
//! fed straight back. Each admission connection is owned by a task ([`link_task`]) that
//! sends the loop's requests one at a time and reports probe answers, drain notices and
//! its own end.

use super::admission::{AdmissionConn, AdmissionError, Connector};
use super::config::{AgentSection, Config};
use super::event::{Event, LinkEvent};
use super::push::{start_push, PushContext};
use super::stub::DnsFront;
use super::Client;
use crate::node::{self, CommandReceiver};
use anyhow::Context as _;
use scold_proto::admission::{AdmitRequest, Admitted, ClientMessage, ProxyMessage};
use scold_proto::agent::{Action, Agent, Input, MoveReason, Note, Ticket};
use scold_proto::dataplane::{Command, Encap, Peer, Prefix, PublicKey, Reply};
use scold_proto::push::{name_key, Accepted, PushAnswer, PushRefusal, RouteOffer};
use scold_tunnel::EngineHandle;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Orders for a connection task, carried out one at a time.
enum LinkOp {
    Admit(
        AdmitRequest,
        Vec<IpAddr>,
        oneshot::Sender<Result<Admitted, AdmissionError>>,
    ),
    Release(Vec<IpAddr>),
    Probe(u64),
}

/// An open admission connection to a proxy, owned by its [`link_task`].
struct ProxyConn {
    ops: mpsc::Sender<LinkOp>,
    /// Tells this connection's reports from those of an earlier one to the same proxy.
    gen: u64,
    task: tokio::task::JoinHandle<()>,
}

/// How long a closed connection may take to send what was asked of it (a release)
/// before its task is stopped.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// Where a path announcement goes: the discard port (RFC 863). What comes back (at most
/// an ICMP port unreachable) is ignored.
const ANNOUNCE_PORT: u16 = 9;

fn peer_name(proxy: IpAddr) -> String {
    format!("proxy-{proxy}")
}

struct Driver<'a> {
    node: &'a mut Client,
    core: Agent,
    cfg: AgentSection,
    encap: Encap,
    public_key: Option<PublicKey>,
    tun_mtu: u16,
    connector: Connector,
    links: HashMap<IpAddr, ProxyConn>,
    next_gen: u64,
    /// Closed connections' tasks, finishing what was asked of them.
    closing: Vec<tokio::task::JoinHandle<()>>,
    /// Lookups waiting for their name's route.
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
    events: mpsc::Sender<Event>,
    dns: Arc<DnsFront>,
}

/// Runs the agent until `shutdown`; then releases every admission (the caller removes
/// routes and rule).
pub(super) async fn run(
    cfg: &Config,
    a: &AgentSection,
    tun_mtu: u16,
    node: &mut Client,
    commands: &mut CommandReceiver,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Option<scold_metrics::Metrics>,
) -> anyhow::Result<()> {
    let file = cfg.file.display();
    let connector = Connector::new(
        &a.ca,
        a.crl.as_deref(),
        a.admission_port,
        Duration::from_millis(a.admission_timeout_ms),
    )
    .map_err(|e| anyhow::anyhow!("config file {file}: agent.ca: {e}"))?;
    let public_key = match cfg.tunnel.private_key(&cfg.file)? {
        Some(k) if cfg.tunnel.encap == Encap::Wireguard => {
            Some(PublicKey(scold_tunnel::keys::public_of(&k)?))
        }
        _ => None,
    };
    let (events_tx, mut events) = mpsc::channel(256);
    let dns = Arc::new(DnsFront {
        upstream: a.upstream.clone(),
        timeout: Duration::from_millis(a.upstream_timeout_ms),
        alt_type: a.alt_type,
        events: events_tx.clone(),
    });
    let servers = dns
        .clone()
        .start(a.listen)
        .await
        .with_context(|| format!("config file {file}: agent.listen {}", a.listen))?;
    tracing::info!(listen = %a.listen, upstream = ?a.upstream, encap = %cfg.tunnel.encap, "client agent answering DNS");
    let push_server = match &a.push {
        Some(p) => Some(
            start_push(
                p,
                a,
                PushContext {
                    events: events_tx.clone(),
                    dns: dns.clone(),
                    encap: cfg.tunnel.encap,
                },
                metrics,
            )
            .await
            .with_context(|| format!("config file {file}: [agent.push]"))?,
        ),
        None => None,
    };
    let core = Agent::new(scold_proto::agent::Config {
        encap: cfg.tunnel.encap,
        public_key: public_key.clone(),
        engines: u8::try_from(cfg.tunnel.engines).ok().filter(|&n| n > 1),
        min_refresh: a.min_refresh(),
        max_refresh: Duration::from_secs(a.max_refresh_secs),
        probe_interval: Duration::from_millis(a.probe_interval_ms),
        probe_timeout: Duration::from_millis(a.probe_timeout_ms),
    });
    let mut d = Driver {
        node,
        core,
        cfg: a.clone(),
        encap: cfg.tunnel.encap,
        public_key,
        tun_mtu,
        connector,
        links: HashMap::new(),
        next_gen: 0,
        closing: Vec::new(),
        waiting: HashMap::new(),
        events: events_tx,
        dns,
    };
    tokio::pin!(shutdown);
    let mut open = true;
    loop {
        let deadline = d.core.poll_timeout();
        let timer = async move {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(ev) = events.recv() => d.event(ev).await,
            c = commands.recv(), if open => match c {
                Some((cmd, reply)) => {
                    let kind = cmd.kind();
                    let r = node::Node::apply(&mut *d.node, cmd).await;
                    node::log_reply(kind, &r);
                    let _ = reply.send(r);
                }
                None => open = false,
            },
            _ = timer => d.feed(Input::Tick).await,
        }
    }
    for s in servers {
        s.abort();
    }
    if let Some(p) = push_server {
        p.abort();
    }
    d.shutdown().await;
    Ok(())
}

impl Driver<'_> {
    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Lookup {
                name,
                targets,
                alts,
                ttl,
                done,
            } => {
                self.waiting.entry(name.clone()).or_default().push(done);
                self.feed(Input::Lookup {
                    name,
                    targets,
                    alts,
                    ttl,
                })
                .await
            }
            Event::NoAlt { name } => self.feed(Input::NoAlt { name }).await,
            Event::Push {
                from,
                local,
                offer,
                alts,
                ttl,
                answer,
            } => {
                let a = self.pushed(from, local, offer, alts, ttl).await;
                let _ = answer.send(a);
            }
            Event::Withdraw { from, name, answer } => {
                let changed = self.core.pushed_by(&name) == Some(from);
                self.feed(Input::Withdrawn { name, proxy: from }).await;
                let _ = answer.send(PushAnswer::Withdrawn { changed });
            }
            Event::Done(input) => self.feed(input).await,
            Event::Connected {
                ticket,
                proxy,
                result,
            } => {
                let result = match result {
                    Ok(c) => {
                        let (conn, admitted) = *c;
                        self.open_link(proxy, conn, admitted).await
                    }
                    Err(e) => Err(e),
                };
                self.feed(Input::Admission {
                    ticket,
                    proxy,
                    result,
                })
                .await
            }
            Event::Readmitted {
                ticket,
                proxy,
                gen,
                result,
            } => {
                // An answer over a connection that has gone since is no admission.
                let result = match result {
                    Ok(_) if self.links.get(&proxy).map(|l| l.gen) != Some(gen) => {
                        Err("the admission connection closed before the answer was taken in".into())
                    }
                    r => r,
                };
                self.feed(Input::Admission {
                    ticket,
                    proxy,
                    result,
                })
                .await
            }
            Event::Link { proxy, gen, event } => {
                if self.links.get(&proxy).map(|l| l.gen) != Some(gen) {
                    return;
                }
                let input = match event {
                    LinkEvent::ProbeAnswer {
                        seq,
                        arrived,
                        draining,
                    } => Input::ProbeAnswer {
                        proxy,
                        seq,
                        arrived,
                        draining,
                    },
                    LinkEvent::Draining { draining, reason } => Input::DrainNotice {
                        proxy,
                        draining,
                        reason,
                    },
                    LinkEvent::Closed { why } => {
                        self.links.remove(&proxy);
                        Input::LinkClosed { proxy, why }
                    }
                };
                self.feed(input).await
            }
        }
    }

    /// Feeds `input` to the core and carries out what it asks, feeding the results of
    /// local work straight back.
    async fn feed(&mut self, input: Input) {
        let mut todo: VecDeque<Action> = self.core.handle(Instant::now(), input).into();
        while let Some(action) = todo.pop_front() {
            if let Some(result) = self.act(action).await {
                todo.extend(self.core.handle(Instant::now(), result));
            }
        }
    }

    /// Carries out one action; the input that answers it when it is done at once.
    async fn act(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Requery { name } => {
                let dns = self.dns.clone();
                let events = self.events.clone();
                tokio::spawn(async move {
                    let answer = dns.alt(&name).await.ok();
                    let _ = events
                        .send(Event::Done(Input::Requeried { name, answer }))
                        .await;
                });
                None
            }
            Action::Measure { ticket, proxies } => {
                let port = self.connector.port();
                let limit = Duration::from_millis(self.cfg.admission_timeout_ms.min(500));
                let events = self.events.clone();
                tokio::spawn(async move {
                    let rtts = measure(&proxies, port, limit).await;
                    let _ = events
                        .send(Event::Done(Input::Measured { ticket, rtts }))
                        .await;
                });
                None
            }
            Action::Admit {
                ticket,
                proxy,
                alts,
                request,
            } => {
                self.admit(ticket, proxy, alts, request);
                None
            }
            Action::Route {
                ticket,
                proxy,
                targets,
                source,
            } => {
                let result = self.route(&targets, proxy, source).await;
                Some(Input::Routed { ticket, result })
            }
            Action::Unroute { name, targets } => {
                for t in targets {
                    match self.node.remove_route(Prefix::host(t)).await {
                        Ok(_) => tracing::info!(target = %t, %name, "host route removed"),
                        Err(e) => {
                            tracing::warn!(target = %t, error = %e, "cannot remove the host route")
                        }
                    }
                }
                None
            }
            Action::Release { proxy, targets } => {
                if let Some(l) = self.links.get(&proxy) {
                    let _ = l.ops.try_send(LinkOp::Release(targets));
                }
                None
            }
            Action::CloseLink { proxy } => {
                if let Some(l) = self.links.remove(&proxy) {
                    // Without its orders the task ends once it has done those it has.
                    drop(l.ops);
                    let mut task = l.task;
                    self.closing.push(tokio::spawn(async move {
                        if tokio::time::timeout(CLOSE_GRACE, &mut task).await.is_err() {
                            task.abort();
                        }
                    }));
                    self.closing.retain(|t| !t.is_finished());
                }
                None
            }
            Action::RemovePeer { proxy } => {
                let r = node::Node::apply(
                    &mut *self.node,
                    Command::RemovePeer {
                        name: peer_name(proxy),
                    },
                )
                .await;
                node::log_reply("remove_peer", &r);
                None
            }
            Action::Probe { proxy, seq } => {
                let Some(l) = self.links.get(&proxy) else {
                    // The core and this loop disagree: the connection is gone.
                    return Some(Input::LinkClosed {
                        proxy,
                        why: "no admission connection to probe".into(),
                    });
                };
                // Our count goes first, so those packets have the probe's round trip
                // to arrive.
                let ops = l.ops.clone();
                let sent = sent_to(&self.node.engine, &peer_name(proxy)).await;
                let _ = ops.try_send(LinkOp::Probe(seq));
                Some(Input::SentCount { proxy, seq, sent })
            }
            Action::Announce { targets, source } => {
                tokio::spawn(announce(targets, source));
                // A WireGuard session not up yet is started again: a pushing proxy admits
                // us only after our answer, so our first initiation may have come too
                // early and been dropped (see `State::initiate_pending`).
                let engine = self.node.engine.clone();
                tokio::spawn(async move {
                    let _ = engine.call(|st| st.initiate_pending()).await;
                });
                None
            }
            Action::Ready { name } => {
                for done in self.waiting.remove(&name).unwrap_or_default() {
                    let _ = done.send(());
                }
                None
            }
            Action::Note(n) => {
                log(n);
                None
            }
        }
    }

    /// Admission at `proxy`: over its open connection, or a new one.
    fn admit(&mut self, ticket: Ticket, proxy: IpAddr, alts: Vec<IpAddr>, req: AdmitRequest) {
        let timeout = Duration::from_millis(self.cfg.admission_timeout_ms);
        let events = self.events.clone();
        if let Some(l) = self.links.get(&proxy) {
            let ops = l.ops.clone();
            let gen = l.gen;
            let addr = SocketAddr::new(proxy, self.connector.port());
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                let sent = ops.send(LinkOp::Admit(req, alts, tx)).await.is_ok();
                let answer = if sent {
                    tokio::time::timeout(timeout * 2, rx)
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                } else {
                    None
                };
                let result = match answer {
                    Some(r) => r.map_err(|e| e.to_string()),
                    None => Err(AdmissionError::Timeout {
                        addr,
                        what: "admission over the open link",
                    }
                    .to_string()),
                };
                let _ = events
                    .send(Event::Readmitted {
                        ticket,
                        proxy,
                        gen,
                        result,
                    })
                    .await;
            });
            return;
        }
        let connector = self.connector.clone();
        tokio::spawn(async move {
            let result = async {
                let mut conn = connector.connect(proxy, &alts).await?;
                let admitted = conn.admit(&req, &alts, timeout).await?;
                Ok::<_, AdmissionError>(Box::new((conn, admitted)))
            }
            .await
            .map_err(|e| e.to_string());
            let _ = events
                .send(Event::Connected {
                    ticket,
                    proxy,
                    result,
                })
                .await;
        });
    }

    /// A new connection admitted us: the proxy's tunnel peer goes in and a task takes
    /// the connection over.
    async fn open_link(
        &mut self,
        proxy: IpAddr,
        conn: AdmissionConn,
        admitted: Admitted,
    ) -> Result<Admitted, String> {
        if admitted.inner_mtu < self.tun_mtu {
            tracing::warn!(%proxy, inner_mtu = admitted.inner_mtu, tun_mtu = self.tun_mtu,
                "the path through this proxy carries smaller packets than the TUN MTU; lower tunnel.outer_mtu or tunnel.mtu");
        }
        let peer = Peer {
            name: peer_name(proxy),
            address: admitted.tunnel_address,
            port: admitted.port,
            encap: admitted.encap,
            public_key: admitted.public_key.clone(),
            keepalive_secs: Some(self.cfg.keepalive_secs).filter(|k| *k > 0),
            engines: admitted.engines,
        };
        if let Reply::Refused { code, message } =
            node::Node::apply(&mut *self.node, Command::AddPeer(peer)).await
        {
            return Err(AdmissionError::Protocol {
                addr: conn.proxy,
                detail: format!("cannot add the tunnel peer ({code:?}): {message}"),
            }
            .to_string());
        }
        tracing::info!(%proxy, identity = %conn.identity, source = %conn.local, encap = %admitted.encap, inner_mtu = admitted.inner_mtu, "admitted by proxy");
        if let Some(old) = self.links.remove(&proxy) {
            // Not expected (the core asks for a new connection only when it has none);
            // the newer one stands.
            old.task.abort();
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let (ops_tx, ops_rx) = mpsc::channel(8);
        let task = tokio::spawn(link_task(
            conn,
            ops_rx,
            self.events.clone(),
            gen,
            Duration::from_millis(self.cfg.admission_timeout_ms),
            Duration::from_millis(self.cfg.probe_timeout_ms) * 2,
        ));
        self.links.insert(
            proxy,
            ProxyConn {
                ops: ops_tx,
                gen,
                task,
            },
        );
        Ok(admitted)
    }

    /// Host routes for `targets` into the tunnel to `proxy`, with `local` as source.
    async fn route(
        &mut self,
        targets: &[IpAddr],
        proxy: IpAddr,
        local: IpAddr,
    ) -> Result<(), String> {
        let peer = peer_name(proxy);
        for t in targets {
            match self
                .node
                .add_route(Prefix::host(*t), peer.clone(), Some(local))
                .await
            {
                Reply::Refused { code, message } => {
                    return Err(format!("route {t} ({code:?}): {message}"))
                }
                Reply::Done { changed: true } => {
                    tracing::info!(target = %t, %proxy, %local, "host route into the tunnel")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Scheme 4.2: a proxy of the name's ALT set offers the route to `offer.fqdn`; the
    /// peer and host routes go in, then the core takes the route as pushed.
    async fn pushed(
        &mut self,
        from: IpAddr,
        local: IpAddr,
        offer: RouteOffer,
        alts: Vec<IpAddr>,
        ttl: u32,
    ) -> PushAnswer {
        let refuse = |code, message: String| {
            tracing::warn!(proxy = %from, fqdn = %offer.fqdn, ?code, %message, "route push refused");
            PushAnswer::Refused { code, message }
        };
        let name = name_key(&offer.fqdn);
        let targets: BTreeSet<IpAddr> = offer
            .targets
            .iter()
            .copied()
            .filter(|t| !alts.contains(t))
            .collect();
        if targets.is_empty() {
            return refuse(
                PushRefusal::BadRequest,
                "every target address is also a proxy address".into(),
            );
        }
        let peer = Peer {
            name: peer_name(from),
            address: offer.tunnel_address,
            port: self.encap.uses_udp().then_some(offer.port).flatten(),
            encap: self.encap,
            public_key: (self.encap == Encap::Wireguard)
                .then(|| offer.public_key.clone())
                .flatten(),
            keepalive_secs: Some(self.cfg.keepalive_secs).filter(|k| *k > 0),
            // A pushed offer does not say how many engines the proxy reads with.
            engines: None,
        };
        if let Reply::Refused { code, message } =
            node::Node::apply(&mut *self.node, Command::AddPeer(peer)).await
        {
            return refuse(
                PushRefusal::System,
                format!("cannot add the tunnel peer ({code:?}): {message}"),
            );
        }
        let targets: Vec<IpAddr> = targets.into_iter().collect();
        if let Err(e) = self.route(&targets, from, local).await {
            return refuse(PushRefusal::System, e);
        }
        if offer.inner_mtu < self.tun_mtu {
            tracing::warn!(proxy = %from, inner_mtu = offer.inner_mtu, tun_mtu = self.tun_mtu,
                "the path through this proxy carries smaller packets than the TUN MTU; lower tunnel.outer_mtu");
        }
        tracing::info!(%name, proxy = %from, source = %local, targets = ?targets, "indirect route pushed by proxy");
        self.feed(Input::Pushed {
            name,
            proxy: from,
            source: local,
            targets,
            alts,
            ttl,
        })
        .await;
        PushAnswer::Accepted(Accepted {
            encap: self.encap,
            public_key: self.public_key.clone(),
        })
    }

    /// On exit: every admission is released and every connection closed; the caller
    /// removes routes and rule.
    async fn shutdown(&mut self) {
        for action in self.core.shutdown(Instant::now()) {
            if let Some(result) = self.act(action).await {
                // Nothing asked at shutdown answers at once but a route, which it
                // does not ask for.
                tracing::debug!(?result, "result at shutdown ignored");
            }
        }
        for (_, l) in self.links.drain() {
            l.task.abort();
        }
        for t in self.closing.drain(..) {
            let _ = t.await;
        }
    }
}

/// The round trip of a TCP connect to each proxy's admission port, within `limit`
/// (None: no answer), in random order so equal ones are taken at random.
async fn measure(
    proxies: &[IpAddr],
    port: u16,
    limit: Duration,
) -> Vec<(IpAddr, Option<Duration>)> {
    use rand::seq::SliceRandom;
    let probes = proxies.iter().map(|&p| async move {
        let t0 = Instant::now();
        let r = tokio::time::timeout(limit, tokio::net::TcpStream::connect((p, port))).await;
        (p, matches!(r, Ok(Ok(_))).then(|| t0.elapsed()))
    });
    let mut measured = futures::future::join_all(probes).await;
    measured.shuffle(&mut rand::rng());
    measured
}

/// After `targets` moved to another proxy: an empty UDP datagram from `local` to each,
/// through the new tunnel (the core repeats it, see
/// [`scold_proto::agent::ANNOUNCE_AT`]). The target's gateway returns a client's packets
/// by the proxy they last came in by; a client that only answers what it receives (a
/// download, whose acknowledgements stop when the data stops) would otherwise send
/// nothing by the new proxy, and the target's retransmissions would keep going to the
/// lost one until the connection timed out.
async fn announce(targets: Vec<IpAddr>, local: IpAddr) {
    let sock = match tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%local, error = %e, "cannot announce the new path to the targets");
            return;
        }
    };
    for t in &targets {
        match sock.send_to(&[], (*t, ANNOUNCE_PORT)).await {
            Ok(_) => tracing::debug!(target = %t, %local, "new path announced"),
            Err(e) => {
                tracing::debug!(target = %t, %local, error = %e, "cannot announce the new path")
            }
        }
    }
}

/// Tunnel packets sent to `peer` so far, from our data plane; None when it did not say.
async fn sent_to(engine: &EngineHandle, peer: &str) -> Option<u64> {
    let peer = peer.to_string();
    engine
        .call(move |s| {
            s.stats()
                .peers
                .into_iter()
                .find(|p| p.name == peer)
                .map(|p| p.counters.tx_packets)
        })
        .await
        .ok()
        .flatten()
}

/// The core's report, in the log.
fn log(n: Note) {
    match n {
        Note::NoAlt { name } => {
            tracing::info!(%name, "no ALT records any more; tearing the indirect route down")
        }
        Note::AltWithdrawn { name } => {
            tracing::info!(%name, "ALT records withdrawn; tearing the indirect route down")
        }
        Note::AltChanged { name, alts } => tracing::info!(%name, ?alts, "ALT set changed"),
        Note::PushedProxyLeft { name, proxy } => tracing::info!(%name, ?proxy,
            "the proxy that pushed the route left the ALT set; dropping the route until the next push"),
        Note::TargetIsProxy { name } => tracing::warn!(%name,
            "a target address is also a proxy address; it is not routed into the tunnel"),
        Note::Ranked { order } => tracing::debug!(measured = ?order, "proxies ranked"),
        Note::RouteUp {
            name,
            proxy,
            tunnel,
            source,
            targets,
            elapsed,
        } => tracing::info!(%name, %proxy, %tunnel, %source, ?targets,
            elapsed_ms = elapsed.as_millis() as u64, "indirect route up"),
        Note::RouteFailed { name, proxy, error } => {
            tracing::warn!(%name, %proxy, %error, "cannot install routes")
        }
        Note::AdmissionFailed { name, proxy, error } => tracing::warn!(%name, %proxy, %error,
            "admission failed; trying the next proxy of the ALT set"),
        Note::NoProxy {
            name,
            alts,
            retry_in,
        } => tracing::error!(%name, ?alts, retry_in_ms = retry_in.as_millis() as u64,
            "no proxy of the ALT set admitted us"),
        Note::ProxyLost { proxy, why } => {
            tracing::warn!(%proxy, %why, "proxy lost; moving to the next proxy of the ALT set")
        }
        Note::Draining { proxy, reason } => {
            let reason = reason.unwrap_or_default();
            tracing::warn!(%proxy, %reason,
                "proxy is draining (its self-defence declared an attack); moving to the next proxy of the ALT set")
        }
        Note::DrainOver { proxy } => tracing::info!(%proxy, "proxy no longer draining"),
        Note::Staying { proxy, names } => tracing::warn!(%proxy, ?names,
            "no other proxy of the ALT set admitted us; staying on the draining proxy"),
        Note::FailoverDone {
            proxy,
            reason: MoveReason::Lost,
            names,
            now_via,
            elapsed,
        } => tracing::info!(%proxy, ?names, ?now_via, elapsed_ms = elapsed.as_millis() as u64,
            "failover done"),
        Note::FailoverDone {
            proxy,
            reason: MoveReason::Draining,
            names,
            now_via,
            elapsed,
        } => tracing::info!(%proxy, reason = "draining", ?names, ?now_via,
            elapsed_ms = elapsed.as_millis() as u64, "failover done"),
        Note::PushWithdrawn { name, proxy } => {
            tracing::info!(%name, %proxy, "pushed route withdrawn by its proxy")
        }
    }
}

/// Owns one admission connection: carries the agent's requests to the proxy one at a
/// time and reports probe answers, the proxy's drain state and the connection's end.
/// Ends without a report when the agent drops its orders (it closed the connection).
async fn link_task(
    mut conn: AdmissionConn,
    mut ops: mpsc::Receiver<LinkOp>,
    events: mpsc::Sender<Event>,
    gen: u64,
    call_timeout: Duration,
    probe_limit: Duration,
) {
    let proxy = conn.proxy.ip();
    let report = |event| Event::Link { proxy, gen, event };
    // What the agent was last told about the proxy draining.
    let mut told = false;
    let why = loop {
        if conn.draining() != told {
            told = conn.draining();
            let reason = conn.drain_reason().map(str::to_string);
            let _ = events
                .send(report(LinkEvent::Draining {
                    draining: told,
                    reason,
                }))
                .await;
        }
        tokio::select! {
            op = ops.recv() => match op {
                None => return,
                Some(LinkOp::Admit(req, alts, reply)) => {
                    let r = conn.admit(&req, &alts, call_timeout).await;
                    let broken = matches!(r, Err(AdmissionError::Protocol { .. } | AdmissionError::Timeout { .. }));
                    let why = r.as_ref().err().map(|e| e.to_string());
                    let _ = reply.send(r);
                    if broken {
                        break why.unwrap_or_default();
                    }
                }
                Some(LinkOp::Release(targets)) => {
                    let _ = conn.call(&ClientMessage::Release { targets }, call_timeout).await;
                }
                Some(LinkOp::Probe(seq)) => match conn
                    .recheck()
                    .map_err(|r| format!("the proxy's certificate no longer passes ({}); leaving it", r.as_str()))
                {
                    Err(why) => break why,
                    Ok(()) => match probe_once(&mut conn, seq, probe_limit).await {
                    Ok((arrived, draining)) => {
                        let _ = events
                            .send(report(LinkEvent::ProbeAnswer { seq, arrived, draining }))
                            .await;
                    }
                    Err(e) => break e,
                    },
                },
            },
            // Between requests the proxy may speak unasked (a drain notice), or close.
            m = conn.recv_any() => match m {
                Err(e) => break e.to_string(),
                Ok(ProxyMessage::Draining { .. }) => {}
                Ok(other) => tracing::debug!(%proxy, answer = ?other, "late admission answer ignored"),
            },
        }
    };
    let _ = events.send(report(LinkEvent::Closed { why })).await;
}

/// One probe: a ping, and its pong. Late answers to earlier requests (a release that
/// timed out) are skipped. The agent's core judges the probe's time limit; `limit` only
/// bounds how long this connection waits. Returns the proxy's count of our tunnel
/// packets that arrived, when it gave one, and whether it drains.
async fn probe_once(
    conn: &mut AdmissionConn,
    seq: u64,
    limit: Duration,
) -> Result<(Option<u64>, bool), String> {
    let r = tokio::time::timeout(limit, async {
        conn.send(&ClientMessage::Ping { seq }).await?;
        loop {
            match conn.recv().await? {
                ProxyMessage::Pong {
                    seq: s,
                    arrived,
                    draining,
                } if s == seq => return Ok::<_, AdmissionError>((arrived, draining)),
                _ => continue,
            }
        }
    })
    .await;
    match r {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer to a probe within {} ms",
            limit.as_millis()
        )),
    }
}
