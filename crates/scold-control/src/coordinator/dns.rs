//! The secure DNS update the DNS steps call: RFC 2136 + TSIG through `scold_dns::Updater`,
//! behind a trait so tests can watch what is published.

use crate::config::*;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The secure DNS update of a target's records (RFC 2136 + TSIG).
pub trait DnsBackend: Send + Sync + 'static {
    /// Lists `proxies` for the target: ALT records (4.1, 4.2) or A/AAAA records (4.3).
    fn publish<'a>(
        &'a self,
        target: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<(), String>>;
    /// Puts the target's normal records back.
    fn restore<'a>(&'a self, target: &'a TargetConfig) -> BoxFut<'a, Result<(), String>>;
}

/// The real back end: RFC 2136 updates signed with the target's TSIG key, each
/// confirmed by a query, against `scold dns`, BIND, Knot or any RFC 2136 server.
pub struct TsigDns;

fn updater(t: &TargetConfig) -> Result<scold_dns::Updater, String> {
    let key: scold_dns::TsigKey = t
        .dns
        .key
        .parse()
        .map_err(|e| format!("target {}: dns.key: {e}", t.name))?;
    Ok(scold_dns::Updater::new(t.dns.server, key))
}

impl DnsBackend for TsigDns {
    fn publish<'a>(
        &'a self,
        t: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let u = updater(t)?;
            let r = match t.scheme {
                Scheme::Nat => u.replace_addresses(&t.zone, &t.fqdn, proxies, t.ttl).await,
                Scheme::Resolver | Scheme::Push => {
                    u.set_alt(&t.zone, &t.fqdn, proxies, t.ttl).await
                }
            };
            r.map_err(|e| e.to_string())
        })
    }

    fn restore<'a>(&'a self, t: &'a TargetConfig) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let u = updater(t)?;
            let r = match t.scheme {
                Scheme::Nat => {
                    u.replace_addresses(&t.zone, &t.fqdn, &t.addresses, t.ttl)
                        .await
                }
                Scheme::Resolver | Scheme::Push => u.clear_alt(&t.zone, &t.fqdn).await,
            };
            r.map_err(|e| e.to_string())
        })
    }
}

// --- the coordinator ---------------------------------------------------------------
