//! The coordinator's DNS updater: RFC 2136 updates signed with TSIG, sent to the
//! target's authoritative server (`scold dns`, BIND 9, Knot, or any RFC 2136 server),
//! retried, and confirmed by a query. Also the proxy's signed NOTIFY to a ClientDNS.
//!
//! Every update here is idempotent (it replaces a whole RRset), so a retry after a lost
//! response is harmless.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::alt::AltRdata;
use crate::net::{exchange, Transport};
use crate::tsig::{now_secs, TsigKey, DEFAULT_FUDGE};

/// Why an update, query or NOTIFY failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A name argument is not a domain name.
    #[error("`{0}` is not a valid domain name")]
    BadName(String),
    /// No answer after all retries.
    #[error("no answer from {server} after {attempts} attempts: {last} (is the server running and reachable?)")]
    Unreachable {
        /// Server.
        server: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// Last transport error.
        last: String,
    },
    /// The server refused the request.
    #[error("{server} answered {answer} to the {what} of {name}: {hint}")]
    Rejected {
        /// Server.
        server: SocketAddr,
        /// What was asked.
        what: &'static str,
        /// The name.
        name: String,
        /// RCODE, and TSIG error if any (`NOTAUTH, TSIG BadSig`).
        answer: String,
        /// What to check.
        hint: &'static str,
    },
    /// The response's TSIG did not verify.
    #[error("the response from {server} is not signed with key {key}: {why} (wrong secret, or something altered it)")]
    BadResponseSignature {
        /// Server.
        server: SocketAddr,
        /// Key name.
        key: String,
        /// Details.
        why: String,
    },
    /// The response could not be parsed.
    #[error("unusable response from {server}: {why}")]
    BadResponse {
        /// Server.
        server: SocketAddr,
        /// Details.
        why: String,
    },
    /// The server accepted the update but a query does not show it.
    #[error(
        "{server} accepted the update of {name} but a query shows {found:?} instead of {wanted:?}"
    )]
    NotConfirmed {
        /// Server.
        server: SocketAddr,
        /// Name and type (`www.example.com. ALT`).
        name: String,
        /// Expected addresses.
        wanted: Vec<IpAddr>,
        /// Seen addresses.
        found: Vec<IpAddr>,
    },
    /// Encoding failed (a bug or an absurd input).
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// Sends signed updates to one authoritative server.
#[derive(Debug, Clone)]
pub struct Updater {
    /// The authoritative server.
    pub server: SocketAddr,
    /// TSIG key the server knows, with a policy that allows the changes.
    pub key: TsigKey,
    /// Time to wait for each answer.
    pub timeout: Duration,
    /// Attempts per request (at least 1).
    pub retries: u32,
    /// ALT type code.
    pub alt_type: u16,
}

fn fqdn(s: &str) -> Result<Name, UpdateError> {
    let mut n = Name::from_ascii(s).map_err(|_| UpdateError::BadName(s.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

fn rcode_hint(rc: ResponseCode, tsig: Option<TsigError>) -> &'static str {
    match (rc, tsig) {
        (_, Some(TsigError::BadKey)) => "the server does not know this key name and algorithm",
        (_, Some(TsigError::BadSig)) => "the key secret differs from the server's",
        (_, Some(TsigError::BadTime)) => "the clocks of this host and the server differ by more than the fudge (300 s): fix NTP",
        (ResponseCode::Refused, _) => "the key's policy does not allow this change (or the server takes no updates for the zone)",
        (ResponseCode::NotAuth, _) => "the server is not authoritative for that zone: check the zone name",
        (ResponseCode::NotZone, _) => "the name is not inside the zone",
        (ResponseCode::FormErr, _) => "the server could not parse the request",
        (ResponseCode::ServFail, _) => "the server failed (for scold dns: check its journal is writable)",
        _ => "see the server's log",
    }
}

impl Updater {
    /// An updater with a 2 s timeout, 3 attempts and ALT type 65280.
    pub fn new(server: SocketAddr, key: TsigKey) -> Self {
        Self {
            server,
            key,
            timeout: Duration::from_secs(2),
            retries: 3,
            alt_type: crate::alt::DEFAULT_ALT_TYPE,
        }
    }

    fn alt_record(&self, name: &Name, ttl: u32, a: IpAddr) -> Record {
        Record::from_rdata(
            name.clone(),
            ttl,
            RData::Unknown {
                code: RecordType::Unknown(self.alt_type),
                rdata: NULL::with(AltRdata(a).to_wire()),
            },
        )
    }

    fn delete_rrset(name: &Name, t: RecordType) -> Record {
        let mut r = Record::update0(name.clone(), 0, t);
        r.dns_class = DNSClass::ANY;
        r
    }

    /// Replaces the whole ALT set of `name` with `addrs` (empty: removes it), then
    /// confirms with a query.
    pub async fn set_alt(
        &self,
        zone: &str,
        name: &str,
        addrs: &[IpAddr],
        ttl: u32,
    ) -> Result<(), UpdateError> {
        let n = fqdn(name)?;
        let alt = RecordType::Unknown(self.alt_type);
        let mut updates = vec![Self::delete_rrset(&n, alt)];
        updates.extend(addrs.iter().map(|&a| self.alt_record(&n, ttl, a)));
        self.update(zone, &n, updates).await?;
        self.confirm(&n, self.alt_type, addrs).await
    }

    /// Removes every ALT record of `name`, then confirms.
    pub async fn clear_alt(&self, zone: &str, name: &str) -> Result<(), UpdateError> {
        self.set_alt(zone, name, &[], 0).await
    }

    /// Scheme 4.3: replaces the A and AAAA sets of `name` with `addrs` (the proxies'
    /// addresses while diverted, the target's own to put them back), then confirms.
    pub async fn replace_addresses(
        &self,
        zone: &str,
        name: &str,
        addrs: &[IpAddr],
        ttl: u32,
    ) -> Result<(), UpdateError> {
        let n = fqdn(name)?;
        let mut updates = vec![
            Self::delete_rrset(&n, RecordType::A),
            Self::delete_rrset(&n, RecordType::AAAA),
        ];
        for &a in addrs {
            let rd = match a {
                IpAddr::V4(v4) => RData::A(v4.into()),
                IpAddr::V6(v6) => RData::AAAA(v6.into()),
            };
            updates.push(Record::from_rdata(n.clone(), ttl, rd));
        }
        self.update(zone, &n, updates).await?;
        let v4: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv4).collect();
        let v6: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv6).collect();
        self.confirm(&n, 1, &v4).await?;
        self.confirm(&n, 28, &v6).await
    }

    /// Queries `name` for `rtype` at the server and returns the answer records.
    pub async fn query(&self, name: &str, rtype: u16) -> Result<Vec<Record>, UpdateError> {
        let n = fqdn(name)?;
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        // Authoritative servers ignore RD; resolvers (Unbound) refuse queries without it.
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(n.clone(), RecordType::from(rtype)));
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(crate::answer::OUR_UDP_PAYLOAD);
        m.set_edns(e);
        let bytes = m.to_vec().map_err(|e| UpdateError::Encode(e.to_string()))?;
        let raw = self.send(&bytes, Transport::Auto).await?;
        let resp = Message::from_vec(&raw).map_err(|e| UpdateError::BadResponse {
            server: self.server,
            why: e.to_string(),
        })?;
        match resp.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            rc => {
                return Err(UpdateError::Rejected {
                    server: self.server,
                    what: "query",
                    name: name.to_string(),
                    answer: rc.to_string(),
                    hint: "the server does not answer this name for this client (not authoritative for it, or recursion refused)",
                })
            }
        }
        Ok(resp
            .answers
            .into_iter()
            .filter(|r| u16::from(r.record_type()) == rtype && r.name.eq_ignore_root_case(&n))
            .collect())
    }

    /// The ALT addresses of `name` as the server now answers them.
    pub async fn query_alt(&self, name: &str) -> Result<Vec<IpAddr>, UpdateError> {
        Ok(addrs_of(&self.query(name, self.alt_type).await?))
    }

    async fn confirm(&self, n: &Name, rtype: u16, want: &[IpAddr]) -> Result<(), UpdateError> {
        let mut found = addrs_of(&self.query(&n.to_ascii(), rtype).await?);
        let mut wanted = want.to_vec();
        found.sort();
        found.dedup();
        wanted.sort();
        wanted.dedup();
        if found == wanted {
            Ok(())
        } else {
            Err(UpdateError::NotConfirmed {
                server: self.server,
                name: format!(
                    "{} {}",
                    n.to_ascii(),
                    crate::wire::type_name(rtype, self.alt_type)
                ),
                wanted,
                found,
            })
        }
    }

    async fn send(&self, bytes: &[u8], transport: Transport) -> Result<Vec<u8>, UpdateError> {
        let attempts = self.retries.max(1);
        let mut last = String::new();
        for i in 0..attempts {
            match exchange(self.server, bytes, self.timeout, transport).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(server = %self.server, attempt = i + 1, error = %e, "no answer; retrying");
                    last = e.to_string();
                }
            }
        }
        Err(UpdateError::Unreachable {
            server: self.server,
            attempts,
            last,
        })
    }

    async fn update(
        &self,
        zone: &str,
        name: &Name,
        updates: Vec<Record>,
    ) -> Result<(), UpdateError> {
        let z = fqdn(zone)?;
        let mut last_err = None;
        for _ in 0..self.retries.max(1) {
            let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Update);
            let mut q = Query::query(z.clone(), RecordType::SOA);
            q.set_query_class(DNSClass::IN);
            m.add_query(q);
            m.authorities = updates.clone();
            let signer = self.key.signer(DEFAULT_FUDGE);
            let mut verifier = m
                .finalize(&signer, now_secs())
                .map_err(|e| UpdateError::Encode(e.to_string()))?
                .ok_or_else(|| UpdateError::Encode("no TSIG verifier".into()))?;
            let bytes = m.to_vec().map_err(|e| UpdateError::Encode(e.to_string()))?;
            let raw = self.send(&bytes, Transport::Auto).await?;
            let resp = Message::from_vec(&raw).map_err(|e| UpdateError::BadResponse {
                server: self.server,
                why: e.to_string(),
            })?;
            let rc = resp.metadata.response_code;
            let tsig_err = resp.signature.as_ref().and_then(|s| s.data.error);
            if rc != ResponseCode::NoError || tsig_err.is_some() {
                let e = UpdateError::Rejected {
                    server: self.server,
                    what: "update",
                    name: name.to_ascii(),
                    answer: format!(
                        "{rc}{}",
                        tsig_err
                            .map(|t| format!(", TSIG {t:?}"))
                            .unwrap_or_default()
                    ),
                    hint: rcode_hint(rc, tsig_err),
                };
                // A SERVFAIL may pass; refusals will not.
                if rc == ResponseCode::ServFail {
                    last_err = Some(e);
                    continue;
                }
                return Err(e);
            }
            verifier
                .verify(&raw)
                .map_err(|e| UpdateError::BadResponseSignature {
                    server: self.server,
                    key: self.key.name.clone(),
                    why: e.to_string(),
                })?;
            tracing::info!(server = %self.server, zone, name = %name, "DNS update accepted");
            return Ok(());
        }
        Err(last_err.expect("loop ran at least once"))
    }
}

fn addrs_of(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            RData::Unknown { rdata, .. } => AltRdata::from_wire(&rdata.anything).ok().map(|a| a.0),
            _ => None,
        })
        .collect()
}

/// Proxy -> ClientDNS: a TSIG-signed NOTIFY that makes the resolver drop `name` from
/// its cache at once (paper Section 3 step 4). Succeeds when the resolver answers
/// NOERROR with a valid signature.
pub async fn send_notify(
    resolver: SocketAddr,
    key: &TsigKey,
    name: &str,
) -> Result<(), UpdateError> {
    let n = fqdn(name)?;
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(n.clone(), RecordType::SOA));
    let mut verifier = m
        .finalize(&key.signer(DEFAULT_FUDGE), now_secs())
        .map_err(|e| UpdateError::Encode(e.to_string()))?
        .ok_or_else(|| UpdateError::Encode("no TSIG verifier".into()))?;
    let bytes = m.to_vec().map_err(|e| UpdateError::Encode(e.to_string()))?;
    let mut last = String::new();
    for _ in 0..3 {
        match exchange(resolver, &bytes, Duration::from_secs(2), Transport::Auto).await {
            Ok(raw) => {
                let resp = Message::from_vec(&raw).map_err(|e| UpdateError::BadResponse {
                    server: resolver,
                    why: e.to_string(),
                })?;
                let rc = resp.metadata.response_code;
                if rc != ResponseCode::NoError {
                    return Err(UpdateError::Rejected {
                        server: resolver,
                        what: "NOTIFY",
                        name: name.to_string(),
                        answer: rc.to_string(),
                        hint: match rc {
                            ResponseCode::NotAuth => {
                                "the resolver does not accept this key: check its notify_key list"
                            }
                            _ => "see the resolver's log",
                        },
                    });
                }
                verifier
                    .verify(&raw)
                    .map_err(|e| UpdateError::BadResponseSignature {
                        server: resolver,
                        key: key.name.clone(),
                        why: e.to_string(),
                    })?;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(UpdateError::Unreachable {
        server: resolver,
        attempts: 3,
        last,
    })
}
