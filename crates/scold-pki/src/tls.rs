//! Mutual TLS between SCOLD daemons: one [`TlsIdentity`] per daemon, from which the server
//! and client configurations are made.
//!
//! Peers are identified by the `scold://<role>/<name>` SAN URI of their certificate, never
//! by a DNS name: the client's hostname check is replaced by a check that the server's
//! role is one the caller expects. Revocation comes from the CA's CRL file, which is
//! re-read while the daemon runs: a verifier checks the file's metadata at most once per
//! [`DEFAULT_CRL_CHECK_INTERVAL`] during handshakes and rebuilds its webpki verifiers
//! when the file changed, so `scold ca revoke` takes effect without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};
use scold_proto::identity::{Identity, Role};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::{identity_from_der, identity_of, read_certs, read_crl, read_key};
use crate::refusal::{refusal_reason, IdentityRefusal, RefusalReason};
use crate::PkiError;

/// How often, at most, a running daemon looks at its CRL file for changes.
pub const DEFAULT_CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The crypto provider every SCOLD configuration uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Idempotent. The configurations of
/// this crate name their provider explicitly and do not need it; other rustls users in
/// the process (HTTP clients, DNS over TLS) do, because the dependency tree enables both
/// ring and aws-lc-rs and rustls refuses to guess.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: by us earlier, or by the embedding
    // program on purpose. Either way there is nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where a daemon's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The consortium CA certificate (`ca.crt`).
    pub ca_cert: PathBuf,
    /// This node's certificate (`<role>-<name>.crt`); intermediates may follow it.
    pub cert: PathBuf,
    /// This node's private key (`<role>-<name>.key`).
    pub key: PathBuf,
    /// The CA's CRL (`crl.pem`). `None` means no revocation checking at all; a named file
    /// must exist and be valid at load time.
    pub crl: Option<PathBuf>,
}

/// A daemon's loaded TLS material. Cheap to share: configurations made from it share one
/// revocation state, so a CRL change is picked up once for all of them.
pub struct TlsIdentity {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust: Arc<Trust>,
}

impl Clone for TlsIdentity {
    /// A clone shares the revocation state (and check interval) of the original.
    fn clone(&self) -> Self {
        TlsIdentity {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            trust: self.trust.clone(),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("identity", &self.identity)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads and cross-checks the files: the CA file must hold a CA certificate, our
    /// certificate must carry one SCOLD identity, be signed by that CA and match the key,
    /// and a named CRL must be signed by the CA. An expired, not yet valid or revoked own
    /// certificate is only logged: the daemon can still start, and its peers will refuse it
    /// with a clear reason.
    pub fn load(paths: &TlsPaths) -> Result<Self, PkiError> {
        let ca_der = read_ca(&paths.ca_cert)?;
        let chain = read_certs(&paths.cert)?;
        let identity = identity_from_der(&chain[0]).map_err(|detail| PkiError::NoIdentity {
            path: paths.cert.clone(),
            detail,
        })?;
        let key = read_key(&paths.key)?;
        let provider = provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => PkiError::KeyMismatch {
                    cert: paths.cert.clone(),
                    key: paths.key.clone(),
                },
                other => PkiError::BadPem {
                    what: "usable private key",
                    path: paths.key.clone(),
                    detail: other.to_string(),
                },
            },
        )?;

        let trust = Trust::new(provider, ca_der, paths.ca_cert.clone(), paths.crl.clone())?;
        trust.check_own(&chain, &paths.cert)?;
        tracing::debug!(%identity, cert = %paths.cert.display(), "loaded TLS identity");
        Ok(TlsIdentity {
            identity,
            chain,
            key,
            trust: Arc::new(trust),
        })
    }

    /// Changes how often the CRL file is looked at (default
    /// [`DEFAULT_CRL_CHECK_INTERVAL`]); zero looks at every handshake.
    pub fn set_crl_check_interval(&self, every: Duration) {
        self.trust.lock().interval = every;
    }

    /// Who we are, from our own certificate's SAN URI.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Our certificate chain, end entity first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Server side: TLS 1.3 only; every client must present a certificate that chains to
    /// the CA, is within its validity, is not revoked and names one SCOLD identity. Which
    /// roles may do what is the caller's decision, after the handshake, from
    /// [`peer_identity`]; [`TlsIdentity::server_config_for`] also refuses, in the
    /// handshake, every role the server never talks to.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(None)
    }

    /// [`TlsIdentity::server_config`] that refuses in the handshake (alert
    /// `bad_certificate`, [`IdentityRefusal::WrongRole`]) a client whose role is not one
    /// of `roles`: a certificate of a role that may send nothing here buys no session.
    pub fn server_config_for(&self, roles: &[Role]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(Some(roles.to_vec()))
    }

    fn server_config_with(
        &self,
        roles: Option<Vec<Role>>,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let verifier = Arc::new(ReloadingClientVerifier {
            trust: self.trust.clone(),
            roles,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        // No session resumption: a resumed session skips certificate verification, so a
        // client revoked (or expired) since its last full handshake would get back in.
        // Control connections are few and long-lived; full handshakes cost little.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Server side for peers that hold no certificate: the client agents of scheme 4.1,
    /// which only have the consortium CA certificate and authenticate the proxy, not
    /// themselves (the proxy admits them by address and tunnel key). TLS 1.3 only, no
    /// session resumption, and no certificate is asked for.
    pub fn server_config_without_client_auth(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Client side: TLS 1.3 only; the server must chain to the CA, be within its validity,
    /// not be revoked, and its SAN URI must name one of the `expected` roles. The
    /// `ServerName` given to `connect` is not checked against the certificate (pass the
    /// peer's IP address; a DNS name there would only be sent as SNI).
    pub fn client_config(&self, expected: &[Role]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let verifier = Arc::new(RoleCheckingServerVerifier {
            trust: self.trust.clone(),
            expected: expected.to_vec(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        // As on the server side: resumption would skip the revocation and role checks.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// Reads the CRL file now if it changed, regardless of the check interval, and returns
    /// how many serials the list in force revokes (0 without a CRL).
    pub fn reload_crl(&self) -> usize {
        self.trust.refresh(true);
        self.trust.lock().revoked
    }

    /// Checks a peer's certificate chain again, against the CA and the revocation list in
    /// force now (the CRL file is re-read first if it changed): a peer revoked or expired
    /// since its handshake is refused here, and the caller closes its connection. How
    /// often the file is looked at is the CRL check interval.
    pub fn recheck_peer(&self, chain: &[CertificateDer<'static>]) -> Result<(), RefusalReason> {
        self.trust.recheck(chain)
    }

    /// Whether the revocation list in force is past its next-update date: revocations
    /// issued since then are unknown here. The list stays in force (refusing every peer
    /// would stop the consortium); operators see this in logs, metrics and status.
    pub fn crl_expired(&self) -> bool {
        self.trust.crl_expired()
    }

    /// Grows by one each time a new revocation list comes into force (looking at the
    /// file if the check interval passed): a daemon rechecks its live peers when it
    /// changes.
    pub fn crl_generation(&self) -> u64 {
        self.trust.refresh(false);
        self.trust.lock().generation
    }
}

/// Trust in the consortium CA without an identity of one's own: what a client agent of
/// scheme 4.1 holds (`ca.crt`, optionally the CRL) to verify the proxies it talks to.
#[derive(Clone)]
pub struct CaTrust {
    trust: Arc<Trust>,
}

impl fmt::Debug for CaTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaTrust")
            .field("trust", &self.trust)
            .finish()
    }
}

impl CaTrust {
    /// Loads the CA certificate (it must be a CA) and, if named, its CRL (it must be
    /// signed by that CA); the CRL is re-read while running, as for [`TlsIdentity`].
    pub fn load(ca_cert: &Path, crl: Option<&Path>) -> Result<Self, PkiError> {
        let ca_der = read_ca(ca_cert)?;
        let trust = Trust::new(
            provider(),
            ca_der,
            ca_cert.to_path_buf(),
            crl.map(Path::to_path_buf),
        )?;
        Ok(CaTrust {
            trust: Arc::new(trust),
        })
    }

    /// Checks a server's certificate chain again, against the CA and the revocation list
    /// in force now (the CRL file is re-read first if it changed, at most once per check
    /// interval): a proxy revoked or expired since the handshake is refused here, and the
    /// client leaves it.
    pub fn recheck_peer(&self, chain: &[CertificateDer<'static>]) -> Result<(), RefusalReason> {
        self.trust.recheck(chain)
    }

    /// Client side without a client certificate: TLS 1.3 only, no resumption; the server
    /// must chain to the CA, be within its validity, not be revoked, and name one of the
    /// `expected` roles in its SAN URI.
    pub fn client_config(&self, expected: &[Role]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let verifier = Arc::new(RoleCheckingServerVerifier {
            trust: self.trust.clone(),
            expected: expected.to_vec(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Reads a CA certificate file and checks that it holds a CA.
fn read_ca(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let ca_der = read_certs(path)?.swap_remove(0);
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| PkiError::BadCertificate {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if !ca.is_ca() {
        return Err(PkiError::NotACa {
            path: path.to_path_buf(),
        });
    }
    Ok(ca_der)
}

/// The IP addresses the peer's end-entity certificate names in its subjectAltName (empty
/// when it names none), from an established connection.
pub fn peer_ip_addresses(conn: &CommonState) -> Result<Vec<std::net::IpAddr>, PkiError> {
    let certs = conn
        .peer_certificates()
        .ok_or(PkiError::NoPeerCertificate)?;
    let ee = certs.first().ok_or(PkiError::NoPeerCertificate)?;
    crate::cert::ip_addresses_from_der(ee).map_err(PkiError::PeerIdentity)
}

/// Identity of the peer, from the end-entity certificate of an established connection
/// (its chain was verified during the handshake).
pub fn peer_identity(conn: &CommonState) -> Result<Identity, PkiError> {
    let certs = conn
        .peer_certificates()
        .ok_or(PkiError::NoPeerCertificate)?;
    let ee = certs.first().ok_or(PkiError::NoPeerCertificate)?;
    identity_from_der(ee).map_err(PkiError::PeerIdentity)
}

/// Identifies a version of the CRL file without reading it. The inode catches atomic
/// replacement by rename, the length and mtime an in-place rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    File {
        modified: Option<SystemTime>,
        len: u64,
        ino: u64,
    },
    Missing,
}

fn stat(path: &Path) -> Seen {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Seen::File {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        },
        Err(_) => Seen::Missing,
    }
}

struct Verifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

struct TrustState {
    interval: Duration,
    last_check: Instant,
    seen: Seen,
    revoked: usize,
    /// When the CRL in force says a newer one is due.
    next_update: Option<SystemTime>,
    /// Revocation lists that came into force after the first.
    generation: u64,
    verifiers: Arc<Verifiers>,
}

/// The CA, the CRL in force and the verifiers built from them.
struct Trust {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    ca_der: CertificateDer<'static>,
    ca_path: PathBuf,
    crl_path: Option<PathBuf>,
    state: Mutex<TrustState>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("ca", &self.ca_path)
            .field("crl", &self.crl_path)
            .finish_non_exhaustive()
    }
}

impl Trust {
    fn recheck(&self, chain: &[CertificateDer<'static>]) -> Result<(), RefusalReason> {
        let Some((ee, rest)) = chain.split_first() else {
            return Err(RefusalReason::NoCertificate);
        };
        self.current()
            .client
            .verify_client_cert(ee, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| refusal_reason(&e))
    }

    fn crl_expired(&self) -> bool {
        self.refresh(false);
        self.lock()
            .next_update
            .is_some_and(|t| t < std::time::SystemTime::now())
    }

    /// Handshake signature check with this trust's provider: the same for both verifier
    /// directions, so both delegate here.
    fn verify_signature(
        &self,
        tls13: bool,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn new(
        provider: Arc<CryptoProvider>,
        ca_der: CertificateDer<'static>,
        ca_path: PathBuf,
        crl_path: Option<PathBuf>,
    ) -> Result<Self, PkiError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| PkiError::BadCertificate {
                path: ca_path.clone(),
                detail: e.to_string(),
            })?;
        let roots = Arc::new(roots);
        let hints = roots.subjects();
        let (crls, revoked, next_update, seen) = match &crl_path {
            None => (Vec::new(), 0, None, Seen::Missing),
            Some(p) => {
                let seen = stat(p);
                let c = load_crl(p, &ca_der)?;
                (vec![c.der], c.revoked, c.next_update, seen)
            }
        };
        let verifiers = build_verifiers(&provider, &roots, crls).map_err(|e| match &crl_path {
            Some(p) => PkiError::BadCrl {
                path: p.clone(),
                detail: e.to_string(),
            },
            None => e,
        })?;
        Ok(Trust {
            provider,
            roots,
            hints,
            ca_der,
            ca_path,
            crl_path,
            state: Mutex::new(TrustState {
                interval: DEFAULT_CRL_CHECK_INTERVAL,
                last_check: Instant::now(),
                seen,
                revoked,
                next_update,
                generation: 0,
                verifiers: Arc::new(verifiers),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrustState> {
        // A panic while holding the lock cannot leave the state half-updated (it is
        // replaced field by field with complete values), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Our own certificate against the CA: a foreign issuer is a configuration error,
    /// anything else (expired, revoked) only a warning.
    fn check_own(
        &self,
        chain: &[CertificateDer<'static>],
        cert_path: &Path,
    ) -> Result<(), PkiError> {
        let verifiers = self.current();
        let now = UnixTime::now();
        let res = verifiers
            .client
            .verify_client_cert(&chain[0], &chain[1..], now);
        match res {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(
                e @ (CertificateError::UnknownIssuer | CertificateError::BadSignature),
            )) => Err(PkiError::NotIssuedByCa {
                cert: cert_path.to_path_buf(),
                ca: self.ca_path.clone(),
                detail: e.to_string(),
            }),
            Err(e) => {
                tracing::warn!(cert = %cert_path.display(), error = %e,
                    "our own certificate will be refused by peers; re-issue it with `scold ca issue`");
                Ok(())
            }
        }
    }

    /// The verifiers in force, after looking at the CRL file if the interval passed.
    fn current(&self) -> Arc<Verifiers> {
        self.refresh(false);
        self.lock().verifiers.clone()
    }

    fn refresh(&self, force: bool) {
        let Some(path) = &self.crl_path else { return };
        let mut st = self.lock();
        if !force && st.last_check.elapsed() < st.interval {
            return;
        }
        st.last_check = Instant::now();
        let seen = stat(path);
        if seen == st.seen {
            return;
        }
        // Remember this version even if it is bad, so a broken file is reported once
        // rather than at every handshake.
        st.seen = seen;
        if seen == Seen::Missing {
            tracing::warn!(crl = %path.display(),
                "CRL file disappeared; keeping the previous revocation list in force");
            return;
        }
        let rebuilt = load_crl(path, &self.ca_der).and_then(|c| {
            build_verifiers(&self.provider, &self.roots, vec![c.der])
                .map(|v| (v, c.revoked, c.next_update))
        });
        match rebuilt {
            Ok((v, revoked, next_update)) => {
                tracing::info!(crl = %path.display(), revoked, "reloaded certificate revocation list");
                st.verifiers = Arc::new(v);
                st.revoked = revoked;
                st.next_update = next_update;
                st.generation += 1;
            }
            Err(e) => tracing::warn!(crl = %path.display(), error = %e,
                "new CRL rejected; keeping the previous revocation list in force"),
        }
    }
}

/// Reads a CRL and checks that our CA signed it: a CRL from another issuer would make
/// webpki treat every peer's revocation status as unknown and refuse them all.
fn load_crl(path: &Path, ca_der: &CertificateDer<'_>) -> Result<LoadedCrl, PkiError> {
    let der = read_crl(path)?;
    let bad = |detail: String| PkiError::BadCrl {
        path: path.to_path_buf(),
        detail,
    };
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| bad(format!("not an X.509 CRL: {e}")))?;
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| bad(e.to_string()))?;
    if crl.issuer() != ca.subject() {
        return Err(bad(format!(
            "issued by {}, not by our CA {}",
            crl.issuer(),
            ca.subject()
        )));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| bad(format!("signature does not verify with our CA's key: {e}")))?;
    let next_update = crl.next_update().map(|next| {
        if next.timestamp() < UnixTime::now().as_secs() as i64 {
            tracing::warn!(crl = %path.display(), next_update = %next,
                "CRL is past its next-update date: revocations since then are unknown here; refresh it with `scold ca crl`");
        }
        SystemTime::UNIX_EPOCH + Duration::from_secs(next.timestamp().max(0) as u64)
    });
    let revoked = crl.iter_revoked_certificates().count();
    Ok(LoadedCrl {
        der,
        revoked,
        next_update,
    })
}

/// A CRL read from its file and checked against the CA.
struct LoadedCrl {
    der: CertificateRevocationListDer<'static>,
    revoked: usize,
    next_update: Option<SystemTime>,
}

fn build_verifiers(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Verifiers, PkiError> {
    // Only end entities are checked: the chain is CA -> leaf, and the CA itself is the
    // trust anchor, which no CRL of its own can revoke.
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()?;
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(PkiError::Verifier)?;
    Ok(Verifiers { client, server })
}

fn refuse(r: IdentityRefusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(r))))
}

/// Server-side verifier of client certificates that follows CRL changes.
#[derive(Debug)]
struct ReloadingClientVerifier {
    trust: Arc<Trust>,
    /// The roles this server talks to; `None`: any role the CA issued.
    roles: Option<Vec<Role>>,
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .client
            .verify_client_cert(end_entity, intermediates, now)?;
        let id =
            identity_from_der(end_entity).map_err(|e| refuse(IdentityRefusal::NoIdentity(e)))?;
        if let Some(roles) = &self.roles {
            if !roles.contains(&id.role) {
                return Err(refuse(IdentityRefusal::WrongRole {
                    expected: roles.clone(),
                    presented: id,
                }));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verify_signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verify_signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.schemes()
    }
}

/// Client-side verifier of server certificates: webpki's chain, validity and revocation
/// checks, then the SCOLD role check in place of the hostname check.
#[derive(Debug)]
struct RoleCheckingServerVerifier {
    trust: Arc<Trust>,
    expected: Vec<Role>,
}

impl ServerCertVerifier for RoleCheckingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.trust.current().server.clone();
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(_) => {}
            // webpki checks the name last, after chain, validity and revocation all
            // passed; so a name mismatch means "verified except for the DNS name", and
            // SCOLD does not identify peers by DNS name.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let id = identity_of(&cert).map_err(|e| refuse(IdentityRefusal::NoIdentity(e)))?;
        if !self.expected.contains(&id.role) {
            return Err(refuse(IdentityRefusal::WrongRole {
                expected: self.expected.clone(),
                presented: id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verify_signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.verify_signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.schemes()
    }
}
