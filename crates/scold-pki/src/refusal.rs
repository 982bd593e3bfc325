//! Why a handshake was refused, as a small closed set fit for log fields and metric
//! labels.

use std::fmt;

use rustls::{AlertDescription, CertificateError};
use scold_proto::identity::{Identity, Role};

/// Why a TLS handshake with a peer failed, from either side's point of view: our verifier
/// refused the peer's certificate, or the peer refused ours and told us with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The certificate does not chain to the consortium CA.
    UnknownCa,
    /// The certificate is on the CA's revocation list.
    Revoked,
    /// The certificate's validity ended. A peer's alert cannot tell this from
    /// [`RefusalReason::NotYetValid`] (TLS has one alert for both) and is reported as this.
    Expired,
    /// The certificate's validity has not begun.
    NotYetValid,
    /// The server's certificate names a role the client did not expect.
    WrongRole,
    /// The certificate names no usable SCOLD identity.
    BadIdentity,
    /// The client presented no certificate.
    NoCertificate,
    /// Anything else: protocol errors, I/O, unexpected alerts.
    Other,
}

impl RefusalReason {
    /// A stable lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::Revoked => "revoked",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::WrongRole => "wrong_role",
            RefusalReason::BadIdentity => "bad_identity",
            RefusalReason::NoCertificate => "no_certificate",
            RefusalReason::Other => "other",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SCOLD-specific reasons our verifiers refuse a certificate that webpki accepted.
/// Carried inside `CertificateError::Other` so [`refusal_reason`] can recover them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRefusal {
    #[error("peer certificate names no SCOLD identity: {0}")]
    NoIdentity(String),
    #[error("peer is {presented} but only {} may answer here", roles(expected))]
    WrongRole {
        expected: Vec<Role>,
        presented: Identity,
    },
}

fn roles(r: &[Role]) -> String {
    let v: Vec<&str> = r.iter().map(|r| r.as_str()).collect();
    if v.is_empty() {
        "no role".into()
    } else {
        v.join(", ")
    }
}

/// Maps a rustls handshake error to a [`RefusalReason`].
pub fn refusal_reason(err: &rustls::Error) -> RefusalReason {
    use RefusalReason as R;
    match err {
        rustls::Error::InvalidCertificate(ce) => match ce {
            // A bad signature on the chain means a look-alike CA (same name, other key).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => R::UnknownCa,
            CertificateError::Revoked => R::Revoked,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => R::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                R::NotYetValid
            }
            CertificateError::Other(o) => match o.0.downcast_ref::<IdentityRefusal>() {
                Some(IdentityRefusal::WrongRole { .. }) => R::WrongRole,
                Some(IdentityRefusal::NoIdentity(_)) => R::BadIdentity,
                None => R::Other,
            },
            _ => R::Other,
        },
        rustls::Error::NoCertificatesPresented => R::NoCertificate,
        rustls::Error::AlertReceived(a) => match a {
            AlertDescription::UnknownCA => R::UnknownCa,
            AlertDescription::CertificateRevoked => R::Revoked,
            AlertDescription::CertificateExpired => R::Expired,
            AlertDescription::CertificateRequired => R::NoCertificate,
            _ => R::Other,
        },
        _ => R::Other,
    }
}

/// [`refusal_reason`] for the `io::Error` tokio-rustls returns, which wraps the rustls
/// error.
pub fn refusal_reason_io(err: &std::io::Error) -> RefusalReason {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .map_or(RefusalReason::Other, refusal_reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn maps_local_and_remote_errors() {
        let ic = |e| rustls::Error::InvalidCertificate(e);
        assert_eq!(
            refusal_reason(&ic(CertificateError::UnknownIssuer)),
            RefusalReason::UnknownCa
        );
        assert_eq!(
            refusal_reason(&ic(CertificateError::Revoked)),
            RefusalReason::Revoked
        );
        assert_eq!(
            refusal_reason(&ic(CertificateError::BadSignature)),
            RefusalReason::UnknownCa
        );
        assert_eq!(
            refusal_reason(&ic(CertificateError::Expired)),
            RefusalReason::Expired
        );
        assert_eq!(
            refusal_reason(&ic(CertificateError::NotValidYet)),
            RefusalReason::NotYetValid
        );
        let wrong = IdentityRefusal::WrongRole {
            expected: vec![Role::Coordinator],
            presented: Identity::new(Role::Proxy, "p1").unwrap(),
        };
        assert_eq!(
            wrong.to_string(),
            "peer is proxy/p1 but only coordinator may answer here"
        );
        let e = ic(CertificateError::Other(rustls::OtherError(Arc::new(wrong))));
        assert_eq!(refusal_reason(&e), RefusalReason::WrongRole);
        assert_eq!(
            refusal_reason(&rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            )),
            RefusalReason::Revoked
        );
        assert_eq!(
            refusal_reason(&rustls::Error::NoCertificatesPresented),
            RefusalReason::NoCertificate
        );
        assert_eq!(
            refusal_reason(&rustls::Error::DecryptError),
            RefusalReason::Other
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        assert_eq!(refusal_reason_io(&io), RefusalReason::UnknownCa);
        assert_eq!(
            refusal_reason_io(&std::io::Error::other("x")),
            RefusalReason::Other
        );
    }
}
