//! Who a peer is: the role and node name a consortium certificate asserts.
//!
//! A certificate names its holder in a SAN URI `scold://<role>/<name>`. The role decides
//! what a peer may ask for (see the authorisation table in `control`), the name which
//! target, proxy or gateway it speaks for.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The role a certificate is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Proxy,
    Gateway,
    Target,
    Client,
    Dns,
    Resolver,
    Operator,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Coordinator,
        Role::Proxy,
        Role::Gateway,
        Role::Target,
        Role::Client,
        Role::Dns,
        Role::Resolver,
        Role::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Proxy => "proxy",
            Role::Gateway => "gateway",
            Role::Target => "target",
            Role::Client => "client",
            Role::Dns => "dns",
            Role::Resolver => "resolver",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown role {0:?} (expected one of coordinator, proxy, gateway, target, client, dns, resolver, operator)")]
    UnknownRole(String),
    #[error("invalid node name {0:?}: use 1-63 characters of a-z, 0-9, '-', '_' and '.'")]
    BadName(String),
    #[error("not a SCOLD identity URI: {0:?} (expected scold://<role>/<name>)")]
    BadUri(String),
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// A node's identity: role plus name, as its certificate asserts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

pub const URI_SCHEME: &str = "scold://";

/// Checks a node name: short, lowercase DNS-label-like, so it is safe in URIs, file
/// names, metric labels and logs.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadName(name.to_string()))
    }
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        validate_name(&name)?;
        Ok(Identity { role, name })
    }

    /// The SAN URI form, `scold://proxy/p1`.
    pub fn to_uri(&self) -> String {
        format!("{URI_SCHEME}{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .ok_or_else(|| IdentityError::BadUri(uri.to_string()))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::BadUri(uri.to_string()))?;
        Identity::new(role.parse()?, name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = Identity::new(Role::Proxy, "p1").unwrap();
        assert_eq!(id.to_uri(), "scold://proxy/p1");
        assert_eq!(Identity::from_uri("scold://proxy/p1").unwrap(), id);
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "http://proxy/p1",
            "scold://proxy",
            "scold://king/p1",
            "scold://proxy/",
            "scold://proxy/P1",
            "scold://proxy/a/b",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad} accepted");
        }
    }
}
