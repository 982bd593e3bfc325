//! The secure DNS update the DNS steps call: RFC 2136 + TSIG through `scold_dns::Updater`,
//! behind a trait so tests can watch what is published.

use crate::config::*;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a target's records could not be published or restored. The step stays pending and
/// is retried; the message goes to the audit log and `scold ctl status`.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The target's `dns.key` cannot be used (fix the coordinator's config).
    #[error("target {target}: dns.key: {detail}")]
    Key { target: String, detail: String },
    /// The update or its confirming query failed at the server.
    #[error(transparent)]
    Update(#[from] scold_dns::UpdateError),
    /// Another back end's failure, in its own words.
    #[error("{0}")]
    Backend(String),
}

/// The secure DNS update of a target's records (RFC 2136 + TSIG).
pub trait DnsBackend: Send + Sync + 'static {
    /// Lists `proxies` for the target: ALT records (4.1, 4.2) or A/AAAA records (4.3).
    fn publish<'a>(
        &'a self,
        target: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<(), DnsError>>;
    /// Puts the target's normal records back.
    fn restore<'a>(&'a self, target: &'a TargetConfig) -> BoxFut<'a, Result<(), DnsError>>;
}

/// The real back end: RFC 2136 updates signed with the target's TSIG key, each
/// confirmed by a query, against `scold dns`, BIND, Knot or any RFC 2136 server.
pub struct TsigDns;

fn updater(t: &TargetConfig) -> Result<scold_dns::Updater, DnsError> {
    let key: scold_dns::TsigKey = t.dns.key.parse().map_err(|e| DnsError::Key {
        target: t.name.clone(),
        detail: format!("{e}"),
    })?;
    Ok(scold_dns::Updater::new(t.dns.server, key))
}

impl DnsBackend for TsigDns {
    fn publish<'a>(
        &'a self,
        t: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let u = updater(t)?;
            let r = match t.scheme {
                Scheme::Nat => u.replace_addresses(&t.zone, &t.fqdn, proxies, t.ttl).await,
                Scheme::Resolver | Scheme::Push => {
                    u.set_alt(&t.zone, &t.fqdn, proxies, t.ttl).await
                }
            };
            Ok(r?)
        })
    }

    fn restore<'a>(&'a self, t: &'a TargetConfig) -> BoxFut<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let u = updater(t)?;
            let r = match t.scheme {
                Scheme::Nat => {
                    u.replace_addresses(&t.zone, &t.fqdn, &t.addresses, t.ttl)
                        .await
                }
                Scheme::Resolver | Scheme::Push => u.clear_alt(&t.zone, &t.fqdn).await,
            };
            Ok(r?)
        })
    }
}

// --- the coordinator ---------------------------------------------------------------
