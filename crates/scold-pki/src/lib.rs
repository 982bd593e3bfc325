//! The consortium certificate authority of SCOLD and the mutual TLS every daemon speaks.
//!
//! Every control connection between SCOLD daemons is TLS 1.3 with certificates on both
//! sides, issued by one consortium CA (`scold ca`). A certificate names its holder's role
//! and node in a SAN URI (`scold://proxy/p1`, see [`scold_proto::identity`]); peers are
//! identified by that URI, never by DNS names. The CA publishes revocations as a signed
//! X.509 CRL that running daemons re-read, so a revoked node is refused everywhere
//! without restarts.
//!
//! - [`TlsIdentity`]: a daemon's loaded material, and its rustls server and client
//!   configurations; [`peer_identity`] and [`refusal_reason`] for after the handshake.
//! - [`Ca`]: the CA directory, used by `scold ca` and by the testbed to issue
//!   certificates programmatically.
//!
//! ```
//! use scold_pki::{Ca, CaInit, Identity, Role, TlsIdentity, Validity};
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path();
//! let mut ca = Ca::init(&dir.join("ca"), &CaInit::default())?;
//! let issued = ca.issue(
//!     &Identity::new(Role::Proxy, "p1")?,
//!     &["10.0.0.1".parse().unwrap()],
//!     &[],
//!     Validity::days(30),
//!     &dir.join("certs"),
//! )?;
//! let tls = TlsIdentity::load(&issued.tls_paths())?;
//! let server = tls.server_config()?; // for tokio_rustls::TlsAcceptor
//! let client = tls.client_config(&[Role::Coordinator])?; // for tokio_rustls::TlsConnector
//! # let _ = (server, client);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ca;
mod cert;
pub mod cli;
mod error;
mod fsutil;
mod refusal;
mod tls;

pub use ca::{Ca, CaInfo, CaInit, CertStatus, IndexEntry, IssuedPaths, RevokeTarget, Validity};
pub use cert::{identity_from_der, ip_addresses_from_der};
pub use error::PkiError;
pub use refusal::{refusal_reason, refusal_reason_io, IdentityRefusal, RefusalReason};
pub use scold_proto::identity::{Identity, Role};
pub use tls::{
    install_crypto_provider, peer_identity, peer_ip_addresses, CaTrust, TlsIdentity, TlsPaths,
    DEFAULT_CRL_CHECK_INTERVAL,
};
