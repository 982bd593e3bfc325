//! The one error type of this crate. Every message names the file or input that failed
//! and, where there is one, the operator's fix.

use std::path::PathBuf;

use scold_proto::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {what} {path}: {source} (check the path in the configuration and that this user may read it)")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source} (check that the directory exists and is writable)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} does not hold a {what}: {detail} (expected the PEM file written by `scold ca`)"
    )]
    BadPem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error(
        "cannot parse the certificate in {path}: {detail} (re-issue it with `scold ca issue`)"
    )]
    BadCertificate { path: PathBuf, detail: String },

    #[error("{path} is not a CA certificate (no basicConstraints CA:TRUE): point the CA setting at the consortium's ca.crt")]
    NotACa { path: PathBuf },

    #[error("certificate {path} names no SCOLD identity: {detail} (issue it with `scold ca issue --role ROLE --name NAME`)")]
    NoIdentity { path: PathBuf, detail: String },

    #[error("private key {key} does not belong to certificate {cert}: use the .key file written together with that .crt")]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("certificate {cert} was not issued by the CA in {ca}: {detail} (re-issue it with this CA, or point the CA setting at the CA that issued it)")]
    NotIssuedByCa {
        cert: PathBuf,
        ca: PathBuf,
        detail: String,
    },

    #[error("invalid certificate revocation list {path}: {detail} (rewrite it with `scold ca crl` on the CA host and copy it here)")]
    BadCrl { path: PathBuf, detail: String },

    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    #[error("the peer's certificate names no SCOLD identity: {0}")]
    PeerIdentity(String),

    #[error(transparent)]
    Identity(#[from] IdentityError),

    #[error("a CA already exists in {dir}: keep it, or pass --force to replace it (every certificate it issued stops working)")]
    CaExists { dir: PathBuf },

    #[error("no CA in {dir}: run `scold ca --dir {dir} init` first")]
    NoCa { dir: PathBuf },

    #[error("cannot {action}: {source}")]
    Rcgen {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("the CA index {path} is damaged: {detail} (restore it from a backup; the certificates themselves are unaffected)")]
    Index { path: PathBuf, detail: String },

    #[error("no issued certificate matches {0} (see `scold ca show`)")]
    NotFound(String),

    #[error("invalid validity window: {0}")]
    Validity(String),
}
