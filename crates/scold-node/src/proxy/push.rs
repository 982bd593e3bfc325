//! The proxy's pusher (scheme 4.2): on the coordinator's order, TLS 1.3 to a client
//! agent's push port with the proxy's consortium certificate, one offer, one answer.
//! The messages and the agent's checks are sans-IO in [`scold_proto::push`].

use crate::node::wire::{read_message, write_message};
use scold_pki::{Role, TlsIdentity};
use scold_proto::dataplane::{Encap, PublicKey, Push};
use scold_proto::push::{Accepted, PushAnswer, PushRefusal, PushRequest, RouteOffer};

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Why a push did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach the client agent at {agent}: {detail}")]
    Connect { agent: SocketAddr, detail: String },
    #[error("TLS with the client agent at {agent} failed: {detail}")]
    Tls { agent: SocketAddr, detail: String },
    #[error("the client agent at {agent} refused ({code:?}): {message}")]
    Refused {
        agent: SocketAddr,
        code: PushRefusal,
        message: String,
    },
    #[error("the client agent at {agent}: {detail}")]
    Protocol { agent: SocketAddr, detail: String },
}

/// The proxy's pusher: its consortium identity and what it offers.
pub struct Pusher {
    tls: tokio_rustls::TlsConnector,
    /// The proxy's tunnel end point; None: the address the push leaves from.
    pub tunnel_address: Option<IpAddr>,
    pub port: Option<u16>,
    pub encaps: Vec<Encap>,
    pub public_key: Option<PublicKey>,
    pub inner_mtu: u16,
    pub timeout: Duration,
}

/// What a push established: the client's address (as the proxy sees it) and tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub client: IpAddr,
    pub accepted: Accepted,
}

impl Pusher {
    /// `tls`: the proxy's identity (role proxy); agents must show role client.
    pub fn new(
        tls: &TlsIdentity,
        offer: &scold_proto::admission::ProxyOffer,
        timeout: Duration,
    ) -> Result<Self, scold_pki::PkiError> {
        Ok(Pusher {
            tls: tokio_rustls::TlsConnector::from(tls.client_config(&[Role::Client])?),
            tunnel_address: offer.tunnel_address,
            port: offer.port,
            encaps: offer.encaps.clone(),
            public_key: offer.public_key.clone(),
            inner_mtu: offer.relay_mtu,
            timeout,
        })
    }

    async fn connect(
        &self,
        agent: SocketAddr,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, IpAddr), PushError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(agent))
            .await
            .map_err(|_| PushError::Connect {
                agent,
                detail: "TCP connect timed out".into(),
            })?
            .map_err(|e| PushError::Connect {
                agent,
                detail: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|e| PushError::Connect {
                agent,
                detail: e.to_string(),
            })?
            .ip();
        let name = rustls::pki_types::ServerName::IpAddress(agent.ip().into());
        let s = tokio::time::timeout(self.timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| PushError::Tls {
                agent,
                detail: "handshake timed out".into(),
            })?
            .map_err(|e| PushError::Tls {
                agent,
                detail: e.to_string(),
            })?;
        Ok((s, local))
    }

    /// Offers the route of `p` to its agent; returns the agent's tunnel parameters.
    pub async fn push(&self, p: &Push) -> Result<Pushed, PushError> {
        let agent = p.agent;
        let (mut s, local) = self.connect(agent).await?;
        let offer = RouteOffer {
            fqdn: p.fqdn.clone(),
            targets: p.targets.clone(),
            tunnel_address: self.tunnel_address.unwrap_or(local),
            port: self.port,
            encaps: self.encaps.clone(),
            public_key: self.public_key.clone(),
            inner_mtu: self.inner_mtu,
        };
        let proto = |detail| PushError::Protocol { agent, detail };
        write_message(&mut s, &PushRequest::Push(offer), self.timeout)
            .await
            .map_err(proto)?;
        // The agent looks the ALT set up before it answers: allow for that.
        let answer: PushAnswer = read_message(&mut s, self.timeout * 3)
            .await
            .map_err(proto)?;
        let _ = s.shutdown().await;
        match answer {
            PushAnswer::Accepted(a) => {
                if !self.encaps.contains(&a.encap) {
                    return Err(proto(format!(
                        "it chose {}, which was not offered",
                        a.encap
                    )));
                }
                if a.encap == Encap::Wireguard
                    && !a.public_key.as_ref().is_some_and(|k| k.looks_valid())
                {
                    return Err(proto("wireguard without a valid public key".into()));
                }
                Ok(Pushed {
                    client: agent.ip(),
                    accepted: a,
                })
            }
            PushAnswer::Refused { code, message } => Err(PushError::Refused {
                agent,
                code,
                message,
            }),
            other => Err(proto(format!("unexpected answer {other:?}"))),
        }
    }

    /// Tells the agent to drop the route this proxy pushed for `fqdn`.
    pub async fn withdraw(&self, agent: SocketAddr, fqdn: &str) -> Result<bool, PushError> {
        let (mut s, _) = self.connect(agent).await?;
        let proto = |detail| PushError::Protocol { agent, detail };
        write_message(
            &mut s,
            &PushRequest::Withdraw {
                fqdn: fqdn.to_string(),
            },
            self.timeout,
        )
        .await
        .map_err(proto)?;
        let answer: PushAnswer = read_message(&mut s, self.timeout).await.map_err(proto)?;
        let _ = s.shutdown().await;
        match answer {
            PushAnswer::Withdrawn { changed } => Ok(changed),
            PushAnswer::Refused { code, message } => Err(PushError::Refused {
                agent,
                code,
                message,
            }),
            other => Err(proto(format!("unexpected answer {other:?}"))),
        }
    }
}
