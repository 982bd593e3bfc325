//! The secure DNS update the DNS steps call: RFC 2136 + TSIG through `scold_dns::Updater`,
//! behind a trait so tests can watch what is published.

use crate::config::*;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

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
    /// Every configured primary failed; each one's reason, in the order tried.
    #[error("no DNS server took the update: {}", .0.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    AllServers(Vec<(SocketAddr, scold_dns::UpdateError)>),
    /// Another back end's failure, in its own words.
    #[error("{0}")]
    Backend(String),
}

/// Which server took an update, and why the ones tried before it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The server that took it.
    pub by: String,
    /// The servers passed over before it, each with why.
    pub passed_over: Vec<(String, String)>,
}

impl std::fmt::Display for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "taken by {}", self.by)?;
        if !self.passed_over.is_empty() {
            let why: Vec<String> = self
                .passed_over
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect();
            write!(f, " after {}", why.join("; "))?;
        }
        Ok(())
    }
}

/// The secure DNS update of a target's records (RFC 2136 + TSIG).
pub trait DnsBackend: Send + Sync + 'static {
    /// Lists `proxies` for the target: ALT records (4.1, 4.2) or A/AAAA records (4.3).
    fn publish<'a>(
        &'a self,
        target: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<Accepted, DnsError>>;
    /// Puts the target's normal records back.
    fn restore<'a>(&'a self, target: &'a TargetConfig) -> BoxFut<'a, Result<Accepted, DnsError>>;
}

/// The real back end: RFC 2136 updates signed with the target's TSIG key, each
/// confirmed by a query, against `scold dns`, BIND, Knot or any RFC 2136 server. With
/// several primaries configured, each is tried in turn until one takes the update.
pub struct TsigDns;

/// Time each primary gets per request before the next one is tried.
const PER_SERVER_TIMEOUT: Duration = Duration::from_secs(2);

fn key_of(t: &TargetConfig) -> Result<scold_dns::TsigKey, DnsError> {
    t.dns.key.parse().map_err(|e| DnsError::Key {
        target: t.name.clone(),
        detail: format!("{e}"),
    })
}

/// Runs `op` against each primary of `t` in order until one succeeds.
async fn first_taker<F, Fut>(t: &TargetConfig, what: &str, op: F) -> Result<Accepted, DnsError>
where
    F: Fn(scold_dns::Updater) -> Fut,
    Fut: Future<Output = Result<(), scold_dns::UpdateError>>,
{
    let key = key_of(t)?;
    let servers: Vec<SocketAddr> = t.dns.server.iter().copied().collect();
    let mut failed = Vec::new();
    for (i, &server) in servers.iter().enumerate() {
        let mut u = scold_dns::Updater::new(server, key.clone());
        if servers.len() > 1 {
            // The next primary is there to be tried: do not spend the whole retry
            // budget on one that is down.
            u.timeout = PER_SERVER_TIMEOUT;
            u.retries = 2;
        }
        match op(u).await {
            Ok(()) => {
                let acc = Accepted {
                    by: server.to_string(),
                    passed_over: failed
                        .iter()
                        .map(|(s, e): &(SocketAddr, scold_dns::UpdateError)| {
                            (s.to_string(), e.to_string())
                        })
                        .collect(),
                };
                tracing::info!(target = %t.name, server = %server, tried = i + 1, "{what}: DNS update {acc}");
                return Ok(acc);
            }
            Err(e) => {
                if i + 1 < servers.len() {
                    tracing::warn!(target = %t.name, server = %server, error = %e, next = %servers[i + 1], "{what}: DNS server did not take the update; trying the next");
                }
                failed.push((server, e));
            }
        }
    }
    if failed.len() == 1 {
        let (_, e) = failed.pop().expect("one");
        return Err(DnsError::Update(e));
    }
    Err(DnsError::AllServers(failed))
}

impl DnsBackend for TsigDns {
    fn publish<'a>(
        &'a self,
        t: &'a TargetConfig,
        proxies: &'a [IpAddr],
    ) -> BoxFut<'a, Result<Accepted, DnsError>> {
        Box::pin(first_taker(t, "publish", move |u| async move {
            match t.scheme {
                Scheme::Nat => u.replace_addresses(&t.zone, &t.fqdn, proxies, t.ttl).await,
                Scheme::Resolver | Scheme::Push => {
                    u.set_alt(&t.zone, &t.fqdn, proxies, t.ttl).await
                }
            }
        }))
    }

    fn restore<'a>(&'a self, t: &'a TargetConfig) -> BoxFut<'a, Result<Accepted, DnsError>> {
        Box::pin(first_taker(t, "restore", move |u| async move {
            match t.scheme {
                Scheme::Nat => {
                    u.replace_addresses(&t.zone, &t.fqdn, &t.addresses, t.ttl)
                        .await
                }
                Scheme::Resolver | Scheme::Push => u.clear_alt(&t.zone, &t.fqdn).await,
            }
        }))
    }
}

// --- the coordinator ---------------------------------------------------------------
