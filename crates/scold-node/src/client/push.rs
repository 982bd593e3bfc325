//! Scheme 4.2 (paper Section 4.2): the agent's push service. Proxies connect on the
//! coordinator's order and offer the route to a diverted name. Mutual TLS: the proxy's
//! certificate must chain to the consortium CA (and not be revoked), its role must be
//! proxy, and when it names addresses the one it connected from must be among them. The
//! offer is checked ([`RouteOffer::validate`]) and judged against the name's ALT set as
//! our own upstream resolver gives it ([`judge`]); only then does it go to the agent's
//! loop, which installs peer and routes.

use super::config::{AgentSection, PushSection};
use super::event::Event;
use super::stub::DnsFront;
use anyhow::Context as _;
use scold_daemon::Door;
use scold_proto::dataplane::Encap;
use scold_proto::push::{
    judge, name_key, PushAnswer as Answer, PushRefusal as RefusalCode, PushRequest as Request,
    RouteOffer,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// Limit of a push's request, and of writing the answer.
const PUSH_STEP: Duration = Duration::from_secs(3);

/// What a push needs besides its connection.
#[derive(Clone)]
pub(super) struct PushContext {
    /// The agent's loop.
    pub(super) events: mpsc::Sender<Event>,
    /// Where the ALT set of a pushed name is asked.
    pub(super) dns: Arc<DnsFront>,
    /// The encapsulation the agent speaks.
    pub(super) encap: Encap,
}

/// Starts the push service on `p.listen`.
pub(super) async fn start_push(
    p: &PushSection,
    a: &AgentSection,
    cx: PushContext,
    metrics: Option<scold_metrics::Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    scold_pki::install_crypto_provider();
    let tls = scold_pki::TlsIdentity::load(&scold_pki::TlsPaths {
        ca_cert: a.ca.clone(),
        cert: p.cert.clone(),
        key: p.key.clone(),
        crl: a.crl.clone(),
    })?;
    anyhow::ensure!(
        tls.identity().role == scold_pki::Role::Client,
        "cert names {}, but proxies push only to a client certificate; issue one with `scold ca issue --role client --name NAME`",
        tls.identity()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .with_context(|| format!("listen {} (is another daemon on that port?)", p.listen))?;
    tracing::info!(listen = %p.listen, identity = %tls.identity(), "taking route pushes from proxies");
    let door = Door::new("push", p.connections, metrics);
    let handshake = Duration::from_millis(p.handshake_timeout_ms.max(1));
    Ok(tokio::spawn(async move {
        let _tls = tls;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "push accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Counted before anything is spent on it; a refused one is closed at once.
            let Some(pass) = door.enter(peer) else {
                continue;
            };
            let Ok(local) = tcp.local_addr().map(|l| l.ip()) else {
                continue;
            };
            let acceptor = acceptor.clone();
            let cx = cx.clone();
            let door = door.clone();
            tokio::spawn(async move {
                let _pass = pass;
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return door.refuse(
                            peer,
                            scold_pki::refusal_reason_io(&e).as_str(),
                            &format_args!("TLS handshake: {e}"),
                        )
                    }
                    Err(_) => {
                        return door.refuse(peer, "handshake_timeout", &"TLS handshake timed out")
                    }
                };
                if let Err(e) = serve_push(tls, peer.ip(), local, cx).await {
                    tracing::info!(%peer, error = %e, "push refused");
                }
            });
        }
    }))
}

async fn serve_push(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    from: IpAddr,
    local: IpAddr,
    cx: PushContext,
) -> Result<(), String> {
    use crate::node::wire::{read_message, write_message};
    let identity = scold_pki::peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
    if identity.role != scold_pki::Role::Proxy {
        let why = format!("{identity} is not a proxy");
        let _ = write_message(
            &mut tls,
            &Answer::Refused {
                code: RefusalCode::Role,
                message: why.clone(),
            },
            PUSH_STEP,
        )
        .await;
        return Err(why);
    }
    // A certificate that names its addresses must name the one it connected from, as in
    // the admission of scheme 4.1.
    let names = scold_pki::peer_ip_addresses(tls.get_ref().1).map_err(|e| e.to_string())?;
    if !names.is_empty() && !names.contains(&from) {
        let why = format!("{identity} connected from {from}, but its certificate names {names:?}");
        let _ = write_message(
            &mut tls,
            &Answer::Refused {
                code: RefusalCode::NotInAltSet,
                message: why.clone(),
            },
            PUSH_STEP,
        )
        .await;
        return Err(why);
    }
    let request: Request = match read_message(&mut tls, PUSH_STEP).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write_message(
                &mut tls,
                &Answer::Refused {
                    code: RefusalCode::BadRequest,
                    message: e.clone(),
                },
                PUSH_STEP,
            )
            .await;
            return Err(format!("from {identity}: {e}"));
        }
    };
    let (tx, rx) = oneshot::channel();
    let event = match request {
        Request::Push(offer) => match check_offer(&cx, from, offer).await {
            Ok((offer, alts, ttl)) => Some(Event::Push {
                from,
                local,
                offer,
                alts,
                ttl,
                answer: tx,
            }),
            Err(refusal) => {
                let _ = tx.send(refusal);
                None
            }
        },
        Request::Withdraw { fqdn } => Some(Event::Withdraw {
            from,
            name: name_key(&fqdn),
            answer: tx,
        }),
    };
    let sent = match event {
        Some(ev) => cx.events.send(ev).await.is_ok(),
        None => true,
    };
    let answer = match (sent, tokio::time::timeout(PUSH_STEP, rx).await) {
        (true, Ok(Ok(a))) => a,
        _ => Answer::Refused {
            code: RefusalCode::System,
            message: "the agent did not decide in time".into(),
        },
    };
    tracing::debug!(%identity, ?answer, "push answered");
    write_message(&mut tls, &answer, PUSH_STEP).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// An offer the agent may take: valid, and from a proxy of the name's ALT set (asked of
/// our own upstream) that carries our encapsulation. Returns it with that ALT set and
/// its TTL.
async fn check_offer(
    cx: &PushContext,
    from: IpAddr,
    offer: RouteOffer,
) -> Result<(RouteOffer, Vec<IpAddr>, u32), Answer> {
    let refuse = |code, message: String| {
        tracing::warn!(proxy = %from, fqdn = %offer.fqdn, ?code, %message, "route push refused");
        Answer::Refused { code, message }
    };
    if let Err(e) = offer.validate() {
        return Err(refuse(RefusalCode::BadRequest, e.to_string()));
    }
    let name = name_key(&offer.fqdn);
    let (alts, ttl) = match cx.dns.alt(&name).await {
        Ok(x) => x,
        Err(e) => {
            return Err(refuse(
                RefusalCode::AltLookup,
                format!("ALT of {name}: {e}"),
            ))
        }
    };
    if let Err(Answer::Refused { code, message }) = judge(&offer, from, &alts, cx.encap) {
        return Err(refuse(code, message));
    }
    Ok((offer, alts, ttl))
}
