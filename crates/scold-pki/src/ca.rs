//! The consortium certificate authority: a directory holding the CA key and certificate,
//! an index of what it issued, and the CRL it signs.
//!
//! Layout of the CA directory:
//! - `ca.key`  the CA's private key (mode 0600)
//! - `ca.crt`  the self-signed CA certificate every daemon trusts
//! - `index.json` every certificate issued: serial, identity, validity, revocation
//! - `crl.pem` the X.509 CRL, re-signed on every revocation; daemons re-read it

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use scold_proto::identity::Identity;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::{create_dir, write_private, write_public};
use crate::{PkiError, TlsPaths};

pub const CA_KEY: &str = "ca.key";
pub const CA_CERT: &str = "ca.crt";
pub const INDEX: &str = "index.json";
pub const CRL: &str = "crl.pem";

/// Default lifetime of a CA certificate.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of a node certificate.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// Default time until a CRL's next-update date.
pub const DEFAULT_CRL_DAYS: u32 = 30;
/// Backdating of `not_before`, so a peer whose clock is a little behind accepts a
/// certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// The time a certificate is valid. Any window may be given (even one wholly in the past,
/// which is how tests make an expired certificate); `not_after` must follow `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a few minutes ago until `days` from now.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(days.into()),
        }
    }

    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::Validity(format!(
                "not_after {not_after} is not after not_before {not_before}"
            )));
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// Options of [`Ca::init`].
#[derive(Debug, Clone)]
pub struct CaInit {
    /// Organisation name in the CA's subject (the consortium's name).
    pub org: String,
    /// Lifetime of the CA certificate in days.
    pub days: u32,
    /// Replace an existing CA. Every certificate the old one issued stops working.
    pub force: bool,
}

impl Default for CaInit {
    fn default() -> Self {
        CaInit {
            org: "SCOLD consortium".into(),
            days: DEFAULT_CA_DAYS,
            force: false,
        }
    }
}

/// One issued certificate, as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Lowercase hex, no separators.
    pub serial: String,
    pub identity: Identity,
    /// The SAN URI, for readers of the JSON.
    pub uri: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub revoked: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Where the certificate was written.
    pub cert_file: PathBuf,
}

/// Status of an issued certificate at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    Valid,
    Revoked,
    Expired,
    NotYetValid,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Revoked => "revoked",
            CertStatus::Expired => "expired",
            CertStatus::NotYetValid => "not-yet-valid",
        }
    }
}

impl IndexEntry {
    pub fn status(&self, now: OffsetDateTime) -> CertStatus {
        if self.revoked {
            CertStatus::Revoked
        } else if now > self.not_after {
            CertStatus::Expired
        } else if now < self.not_before {
            CertStatus::NotYetValid
        } else {
            CertStatus::Valid
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// Number of the last CRL written; CRL numbers must increase.
    crl_number: u64,
    certificates: Vec<IndexEntry>,
}

/// What [`Ca::issue`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    pub serial: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The copy of the CA certificate next to the node's files.
    pub ca_cert: PathBuf,
    /// The CA's CRL (in the CA directory; copy it to nodes on other hosts).
    pub crl: PathBuf,
}

impl IssuedPaths {
    /// The paths a daemon on this host loads, with revocation checking against the CA's
    /// own CRL file.
    pub fn tls_paths(&self) -> TlsPaths {
        TlsPaths {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            crl: Some(self.crl.clone()),
        }
    }
}

/// Which certificates to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One serial, hex, with or without `:` separators, any case.
    Serial(String),
    /// Every certificate not yet revoked issued to this identity.
    Identity(Identity),
}

/// Summary of the CA certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CaInfo {
    pub dir: PathBuf,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub crl_number: u64,
}

/// An opened CA directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
    index: IndexFile,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn rc(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { action, source }
}

fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut s = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut s)
        .map_err(|_| PkiError::Validity("the system random generator failed".into()))?;
    // Positive (top bit clear) and non-zero first byte, so the DER integer is exactly
    // these 16 bytes and the hex in the index matches the certificate.
    s[0] = (s[0] & 0x7f) | 0x01;
    Ok(s.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if s.is_empty() || s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Normalises a serial given by an operator to the index's form.
pub fn normalise_serial(s: &str) -> Option<String> {
    unhex(s).map(|b| hex(&b))
}

fn read_index(dir: &Path) -> Result<IndexFile, PkiError> {
    let path = dir.join(INDEX);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| PkiError::Index {
            path: path.clone(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile {
            version: 1,
            ..Default::default()
        }),
        Err(source) => Err(PkiError::Read {
            what: "CA index",
            path,
            source,
        }),
    }
}

/// An exclusive lock on the CA directory, released when dropped (the file is closed).
/// `scold ca` run by an operator and the testbed may change the same CA at once; each
/// change re-reads the index under the lock so neither loses the other's entries.
struct DirLock(#[allow(dead_code)] std::fs::File);

fn lock_dir(dir: &Path) -> Result<DirLock, PkiError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
    loop {
        // SAFETY: flock on a descriptor we own and keep open for the call; no memory is
        // passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(DirLock(f));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(PkiError::Write { path, source: err });
        }
    }
}

impl Ca {
    /// Creates a CA in `dir` (created if needed): key, self-signed certificate, empty
    /// index and an empty CRL, so daemons can name the CRL from the start.
    pub fn init(dir: &Path, opts: &CaInit) -> Result<Ca, PkiError> {
        let key_path = dir.join(CA_KEY);
        let cert_path = dir.join(CA_CERT);
        if !opts.force && (key_path.exists() || cert_path.exists()) {
            return Err(PkiError::CaExists {
                dir: dir.to_path_buf(),
            });
        }
        if opts.org.trim().is_empty() {
            return Err(PkiError::Validity("the organisation name is empty".into()));
        }
        create_dir(dir)?;
        let _lock = lock_dir(dir)?;
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, opts.org.as_str());
        // A key fingerprint in the name keeps two CAs of the same organisation apart:
        // with equal subjects a peer of the other CA is refused for a bad signature
        // (alert decrypt_error) instead of as an unknown CA.
        let fp = hex(&params.key_identifier(&key)[..4]);
        dn.push(DnType::CommonName, format!("{} CA {fp}", opts.org));
        params.distinguished_name = dn;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::days(opts.days);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .self_signed(&key)
            .map_err(rc("sign the CA certificate"))?;
        let cert_pem = cert.pem();

        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert_pem.as_bytes())?;
        let mut ca = Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            key,
            index: IndexFile {
                version: 1,
                ..Default::default()
            },
        };
        // Also replaces the index, so a forced re-init forgets the old CA's entries.
        ca.write_crl_locked(DEFAULT_CRL_DAYS)?;
        tracing::info!(dir = %dir.display(), "created consortium CA");
        Ok(ca)
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        let key_path = dir.join(CA_KEY);
        let cert_path = dir.join(CA_CERT);
        if !key_path.exists() && !cert_path.exists() {
            return Err(PkiError::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let read = |p: &Path, what| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Read {
                what,
                path: p.to_path_buf(),
                source,
            })
        };
        let key_pem = read(&key_path, "CA private key")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadPem {
            what: "private key",
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let cert_pem = read(&cert_path, "CA certificate")?;
        // Fail now, not at the first issue, if the certificate is unusable.
        let der = crate::cert::read_certs(&cert_path)?.swap_remove(0);
        let (_, x) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
        if !x.is_ca() {
            return Err(PkiError::NotACa { path: cert_path });
        }
        if x.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let index = read_index(dir)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            key,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every certificate issued, oldest first.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.index.certificates
    }

    pub fn info(&self) -> Result<CaInfo, PkiError> {
        let der = crate::cert::read_certs(&self.cert_path())?.swap_remove(0);
        let (_, x) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate {
            path: self.cert_path(),
            detail: e.to_string(),
        })?;
        Ok(CaInfo {
            dir: self.dir.clone(),
            subject: x.subject().to_string(),
            not_before: x.validity().not_before.to_datetime(),
            not_after: x.validity().not_after.to_datetime(),
            crl_number: self.index.crl_number,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(rc("read the CA certificate"))
    }

    /// Issues a certificate for `id`, usable as TLS server and client, with the identity
    /// in a SAN URI plus the given IP and DNS names. Writes `<role>-<name>.crt`,
    /// `<role>-<name>.key` (0600) and `ca.crt` into `out_dir`, and records it in the
    /// index.
    pub fn issue(
        &mut self,
        id: &Identity,
        ips: &[IpAddr],
        dns: &[String],
        validity: Validity,
        out_dir: &Path,
    ) -> Result<IssuedPaths, PkiError> {
        // Identity fields are public: re-check so a hand-built one cannot smuggle a '/'.
        let id = Identity::new(id.role, id.name.clone())?;
        // Certificates carry whole seconds; the index records what the certificate says.
        let secs = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        let validity = Validity::between(secs(validity.not_before), secs(validity.not_after))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.to_string());
        params.distinguished_name = dn;
        let uri = id.to_uri();
        let mut sans = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(rc("encode the identity URI"))?,
        )];
        for d in dns {
            let bad = || PkiError::Validity(format!("{d:?} is not a DNS name (ASCII only)"));
            rustls::pki_types::DnsName::try_from(d.as_str()).map_err(|_| bad())?;
            sans.push(SanType::DnsName(d.clone().try_into().map_err(|_| bad())?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;

        let key = KeyPair::generate().map_err(rc("generate a node key"))?;
        let _lock = lock_dir(&self.dir)?;
        self.index = read_index(&self.dir)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(rc("sign the node certificate"))?;

        create_dir(out_dir)?;
        let base = format!("{}-{}", id.role, id.name);
        let cert_path = out_dir.join(format!("{base}.crt"));
        let key_path = out_dir.join(format!("{base}.key"));
        let ca_copy = out_dir.join(CA_CERT);
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        if ca_copy != self.cert_path() {
            write_public(&ca_copy, self.cert_pem.as_bytes())?;
        }
        let serial_hex = hex(&serial);
        self.index.certificates.push(IndexEntry {
            serial: serial_hex.clone(),
            identity: id.clone(),
            uri,
            not_before: validity.not_before,
            not_after: validity.not_after,
            issued_at: OffsetDateTime::now_utc(),
            revoked: false,
            revoked_at: None,
            cert_file: cert_path.clone(),
        });
        self.save_index()?;
        tracing::info!(identity = %id, serial = %serial_hex, "issued certificate");
        Ok(IssuedPaths {
            serial: serial_hex,
            cert: cert_path,
            key: key_path,
            ca_cert: ca_copy,
            crl: self.crl_path(),
        })
    }

    /// Marks the matching certificates revoked and rewrites the CRL. Returns the entries
    /// revoked by this call; revoking an already revoked serial is not an error and
    /// returns nothing new.
    pub fn revoke(&mut self, target: &RevokeTarget) -> Result<Vec<IndexEntry>, PkiError> {
        let _lock = lock_dir(&self.dir)?;
        self.index = read_index(&self.dir)?;
        let now = OffsetDateTime::now_utc();
        let mut matched = false;
        let mut newly = Vec::new();
        let serial = match target {
            RevokeTarget::Serial(s) => Some(
                normalise_serial(s)
                    .ok_or_else(|| PkiError::NotFound(format!("serial {s:?} (not hex)")))?,
            ),
            RevokeTarget::Identity(_) => None,
        };
        for e in &mut self.index.certificates {
            let hit = match (target, &serial) {
                (RevokeTarget::Serial(_), Some(s)) => &e.serial == s,
                (RevokeTarget::Identity(id), _) => &e.identity == id,
                _ => false,
            };
            if !hit {
                continue;
            }
            matched = true;
            if !e.revoked {
                e.revoked = true;
                e.revoked_at = Some(now);
                newly.push(e.clone());
            }
        }
        if !matched {
            return Err(PkiError::NotFound(match target {
                RevokeTarget::Serial(s) => format!("serial {s}"),
                RevokeTarget::Identity(id) => format!("identity {id}"),
            }));
        }
        self.save_index()?;
        self.write_crl_locked(DEFAULT_CRL_DAYS)?;
        for e in &newly {
            tracing::info!(identity = %e.identity, serial = %e.serial, "revoked certificate");
        }
        Ok(newly)
    }

    /// Signs a fresh CRL of every revoked certificate, valid for `days`, and writes it
    /// atomically to `crl.pem` (daemons pick it up by its changed metadata).
    pub fn write_crl(&mut self, days: u32) -> Result<PathBuf, PkiError> {
        let _lock = lock_dir(&self.dir)?;
        self.index = read_index(&self.dir)?;
        self.write_crl_locked(days)
    }

    fn write_crl_locked(&mut self, days: u32) -> Result<PathBuf, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = self
            .index
            .certificates
            .iter()
            .filter(|e| e.revoked)
            .map(|e| {
                let serial = unhex(&e.serial).ok_or_else(|| PkiError::Index {
                    path: self.dir.join(INDEX),
                    detail: format!("serial {:?} is not hex", e.serial),
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: e.revoked_at.unwrap_or(now),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        self.index.crl_number += 1;
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + Duration::days(days.max(1).into()),
            crl_number: SerialNumber::from_slice(&self.index.crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer()?)
            .map_err(rc("sign the CRL"))?;
        let pem = crl.pem().map_err(rc("encode the CRL"))?;
        self.save_index()?;
        let path = self.crl_path();
        write_public(&path, pem.as_bytes())?;
        Ok(path)
    }

    fn save_index(&self) -> Result<(), PkiError> {
        let path = self.dir.join(INDEX);
        let json = serde_json::to_vec_pretty(&self.index).map_err(|e| PkiError::Index {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        write_public(&path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms() {
        assert_eq!(normalise_serial("0A:ff:10").as_deref(), Some("0aff10"));
        assert_eq!(normalise_serial("0aff10").as_deref(), Some("0aff10"));
        for bad in ["", "0", "zz", "0a:f", "ä0"] {
            assert_eq!(normalise_serial(bad), None, "{bad}");
        }
    }

    #[test]
    fn validity_must_be_ordered() {
        let now = OffsetDateTime::now_utc();
        assert!(Validity::between(now, now).is_err());
        assert!(Validity::between(now - Duration::days(2), now - Duration::days(1)).is_ok());
    }
}
