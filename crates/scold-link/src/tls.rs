//! The `[tls]` table of every daemon on the control plane.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `[tls]` table every control-plane daemon has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The consortium CA certificate.
    pub ca: PathBuf,
    /// This node's certificate, issued by `scold ca issue`.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The CA's revocation list; re-read while running.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsConfig {
    /// Paths relative to the config file's folder are resolved against it, so a config
    /// and its certificates can move together.
    pub fn resolve(&self, config_file: &Path) -> scold_pki::TlsPaths {
        let abs = |p: &Path| scold_daemon::resolve(config_file, p);
        scold_pki::TlsPaths {
            ca_cert: abs(&self.ca),
            cert: abs(&self.cert),
            key: abs(&self.key),
            crl: self.crl.as_deref().map(abs),
        }
    }

    /// Loads the TLS material, naming the config file on error.
    pub fn load(&self, config_file: &Path) -> Result<scold_pki::TlsIdentity, TlsLoadError> {
        scold_pki::TlsIdentity::load(&self.resolve(config_file)).map_err(|source| TlsLoadError {
            file: config_file.to_path_buf(),
            source,
        })
    }
}

/// The `[tls]` table names files that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: [tls] cannot be loaded ({source}); check the paths, or issue a certificate with `scold ca issue`", file.display())]
pub struct TlsLoadError {
    pub file: PathBuf,
    #[source]
    pub source: scold_pki::PkiError,
}
