//! The client agent's side of the admission (scheme 4.1): TLS 1.3 to a proxy of the ALT
//! set, the proxy's certificate checked against the consortium CA, its role and the
//! address connected to; then `admit`, probes and `release` over the open connection.
//! The messages and the check of an answer are sans-IO in [`scold_proto::admission`].

use crate::node::cookie::{CookieCache, Sniff};
use scold_pki::{CaTrust, Identity, Role};
use scold_proto::admission::{
    check_admitted, AdmitRefusal, AdmitRequest, Admitted, ClientMessage, Drain, ProxyMessage,
};
use scold_proto::cookie::encode_preamble;
use scold_proto::frame;
use scold_proto::frame::{edge_decoder as decoder, encode_message as encode, next_message};

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        code: AdmitRefusal,
        message: String,
    },
    #[error("admission at {addr}: the answer is not usable: {source}")]
    BadAnswer {
        addr: SocketAddr,
        #[source]
        source: scold_proto::admission::BadAnswer,
    },
    #[error("admission at {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
}

/// The client agent's side of the admission.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    /// The CA (and CRL) the proxies' certificates are checked against, again while a
    /// connection is open.
    trust: CaTrust,
    port: u16,
    timeout: Duration,
    /// The cookie each proxy last gave us (shared by clones).
    cookies: CookieCache,
}

/// Connections one `connect` opens at most: with no cookie or a stale one, a proxy under
/// load answers the first with a fresh cookie, which the second shows.
const COOKIE_ATTEMPTS: usize = 3;

/// An open, verified admission connection to one proxy.
pub struct AdmissionConn {
    pub proxy: SocketAddr,
    /// Our address on the path to the proxy: the tunnel's inner source.
    pub local: IpAddr,
    pub identity: Identity,
    stream: tokio_rustls::client::TlsStream<Sniff<TcpStream>>,
    /// The proxy's certificate chain from the handshake, and the trust to check it with
    /// again ([`AdmissionConn::recheck`]).
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    trust: CaTrust,
    dec: frame::Decoder,
    /// What the proxy last said about draining (a notice or a probe answer).
    drain: Drain,
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
            trust,
            port,
            timeout,
            cookies: CookieCache::default(),
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
        let mut attempt = 0;
        let (stream, local) = loop {
            attempt += 1;
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
            // The preamble goes right before the ClientHello, with the cookie this proxy
            // gave us (if any): no round trip of its own.
            let mut tcp = tcp;
            let cookie = self.cookies.get(addr);
            tokio::time::timeout(
                self.timeout,
                tcp.write_all(&encode_preamble(cookie.as_ref())),
            )
            .await
            .map_err(|_| AdmissionError::Timeout {
                addr,
                what: "TCP send",
            })?
            .map_err(|source| AdmissionError::Connect { addr, source })?;
            let sniff = Sniff::new(tcp);
            let slot = sniff.slot();
            let name = rustls::pki_types::ServerName::IpAddress(proxy.into());
            let r = tokio::time::timeout(self.timeout, self.tls.connect(name, sniff))
                .await
                .map_err(|_| AdmissionError::Timeout {
                    addr,
                    what: "TLS handshake",
                })?;
            let demanded = slot.lock().expect("cookie slot").take();
            match (r, demanded) {
                (Ok(stream), _) => break (stream, local),
                (Err(_), Some(fresh)) if attempt < COOKIE_ATTEMPTS => {
                    tracing::info!(%addr, had_cookie = cookie.is_some(), "the proxy is under load and gave us a cookie; connecting again with it");
                    self.cookies.put(addr, fresh);
                }
                (Err(e), _) => {
                    return Err(AdmissionError::Tls {
                        addr,
                        reason: scold_pki::refusal_reason_io(&e).as_str(),
                        detail: e.to_string(),
                    })
                }
            }
        };
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
        let chain = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        Ok(AdmissionConn {
            proxy: addr,
            local,
            identity,
            chain,
            trust: self.trust.clone(),
            stream,
            dec: decoder(),
            drain: Drain::default(),
        })
    }
}

impl AdmissionConn {
    /// Checks the proxy's certificate again against the CA and the revocation list in
    /// force now: a proxy the consortium revoked (or whose certificate expired) while
    /// this connection was open is refused, and the agent leaves it.
    pub fn recheck(&self) -> Result<(), scold_pki::RefusalReason> {
        self.trust.recheck_peer(&self.chain)
    }

    /// Sends one request without waiting for the answer.
    pub async fn send(&mut self, req: &ClientMessage) -> Result<(), AdmissionError> {
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
    pub async fn recv(&mut self) -> Result<ProxyMessage, AdmissionError> {
        loop {
            match self.recv_any().await? {
                ProxyMessage::Draining { .. } => continue,
                a => return Ok(a),
            }
        }
    }

    /// Reads the next message, drain notices included. Cancel-safe.
    pub async fn recv_any(&mut self) -> Result<ProxyMessage, AdmissionError> {
        let addr = self.proxy;
        let proto = |detail: String| AdmissionError::Protocol { addr, detail };
        let mut buf = [0u8; 2048];
        loop {
            if let Some(a) =
                next_message::<ProxyMessage>(&mut self.dec).map_err(|e| proto(e.to_string()))?
            {
                match &a {
                    ProxyMessage::Draining { draining, reason } => {
                        self.drain = Drain {
                            draining: *draining,
                            reason: reason.clone().filter(|_| *draining),
                        };
                    }
                    ProxyMessage::Pong { draining, .. } if *draining != self.drain.draining => {
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
        req: &ClientMessage,
        timeout: Duration,
    ) -> Result<ProxyMessage, AdmissionError> {
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
        match self
            .call(&ClientMessage::Admit(req.clone()), timeout)
            .await?
        {
            ProxyMessage::Admitted(a) => {
                check_admitted(&a, req, alt, self.local)
                    .map_err(|source| AdmissionError::BadAnswer { addr, source })?;
                Ok(a)
            }
            ProxyMessage::Refused { code, message } => Err(AdmissionError::Refused {
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
