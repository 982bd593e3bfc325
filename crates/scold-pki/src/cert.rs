//! Reading certificates: the SCOLD identity in a certificate's SAN URI, and the PEM files
//! the CA writes.

use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use scold_proto::identity::{Identity, URI_SCHEME};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// The identity a DER certificate asserts in its `scold://<role>/<name>` SAN URI.
///
/// Exactly one SCOLD URI must be present: a certificate naming two identities would let
/// its holder pick whichever suits it, so it is refused.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    identity_of(&cert)
}

pub(crate) fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
        .ok_or_else(|| "no subjectAltName extension".to_string())?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) if u.starts_with(URI_SCHEME) => Some(*u),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or_else(|| format!("no {URI_SCHEME}<role>/<name> URI in subjectAltName"))?;
    if let Some(second) = uris.next() {
        return Err(format!("two SCOLD identities ({uri} and {second})"));
    }
    Identity::from_uri(uri).map_err(|e| e.to_string())
}

/// The IP addresses a DER certificate names in its subjectAltName (empty when none).
pub fn ip_addresses_from_der(der: &[u8]) -> Result<Vec<IpAddr>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
    else {
        return Ok(Vec::new());
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::IPAddress(b) => Some(match b.len() {
                4 => Ok(IpAddr::from(
                    <[u8; 4]>::try_from(*b).expect("length checked"),
                )),
                16 => Ok(IpAddr::from(
                    <[u8; 16]>::try_from(*b).expect("length checked"),
                )),
                n => Err(format!("subjectAltName IP address of {n} bytes")),
            }),
            _ => None,
        })
        .collect()
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates of a PEM file, in order; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            what: "certificate",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::BadPem {
            what: "certificate",
            path: path.to_path_buf(),
            detail: "no BEGIN CERTIFICATE block".into(),
        });
    }
    for c in &certs {
        X509Certificate::from_der(c).map_err(|e| PkiError::BadCertificate {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PkiError::BadPem {
        what: "private key",
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The first CRL of a file, PEM (`X509 CRL`) or raw DER.
pub fn read_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, PkiError> {
    let bytes = read(path, "certificate revocation list")?;
    if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| PkiError::BadPem {
            what: "certificate revocation list",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    } else {
        Ok(CertificateRevocationListDer::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_an_identity() {
        for bad in [
            &b""[..],
            b"\x30\x03\x02\x01\x00",
            b"-----BEGIN CERTIFICATE-----",
            &[0xff; 300],
        ] {
            assert!(identity_from_der(bad).is_err());
        }
    }

    #[test]
    fn garbage_files_give_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, b"hello world\n").unwrap();
        assert!(matches!(read_certs(&p), Err(PkiError::BadPem { .. })));
        assert!(matches!(read_key(&p), Err(PkiError::BadPem { .. })));
        assert!(matches!(read_crl(&p), Err(PkiError::BadPem { .. })));
        // A PEM armour around bytes that are not a certificate.
        std::fs::write(
            &p,
            b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            read_certs(&p),
            Err(PkiError::BadCertificate { .. })
        ));
        // Truncated base64.
        std::fs::write(&p, b"-----BEGIN CERTIFICATE-----\nMIIB$$$\n").unwrap();
        assert!(read_certs(&p).is_err());
        let missing = dir.path().join("missing.pem");
        assert!(matches!(read_certs(&missing), Err(PkiError::Read { .. })));
    }
}
