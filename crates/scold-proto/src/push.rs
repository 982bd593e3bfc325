//! Scheme 4.2 (paper Section 4.2, "indirect route with client running SCOLD daemon"),
//! sans-IO: a proxy sets the route up to a client agent on the coordinator's order.
//!
//! The proxy connects to the agent's push port over TLS 1.3 and shows its consortium
//! certificate; the agent shows its own `client` certificate, so both ends are
//! authenticated. The agent accepts a push only from a certificate that chains to the
//! consortium CA with role `proxy`, and only when the address the proxy connected from
//! is in the target's ALT set, which the agent asks its own upstream resolver for (a
//! proxy cannot vouch for itself). It answers with its tunnel parameters; the proxy
//! admits the client ([`crate::dataplane::Command::AddSession`]); the agent adds the
//! WireGuard peer and a host route for each target address into its TUN device.
//!
//! One request and one answer per connection, in the admission's length-prefixed JSON
//! frames (at most [`crate::admission::MAX_FRAME`] bytes, unknown fields refused).
//! Pushes and withdrawals are idempotent.
//!
//! Here: the messages, the agent's checks ([`RouteOffer::validate`], [`judge`]). The
//! proxy's pusher and the agent's listener are in `scold-node`.

use crate::dataplane::{Encap, PublicKey, MAX_PUSH_TARGETS};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The TCP port client agents take pushes on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 5444;

/// The proxy's offer: the route to `fqdn`'s addresses through its tunnel end point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOffer {
    pub fqdn: String,
    pub targets: Vec<IpAddr>,
    /// The proxy's tunnel end point (must be in the ALT set too).
    pub tunnel_address: IpAddr,
    /// The proxy's tunnel UDP port (udp and wireguard).
    #[serde(default)]
    pub port: Option<u16>,
    /// Encapsulations the proxy carries; the agent picks its own among them.
    pub encaps: Vec<Encap>,
    /// The proxy's WireGuard public key.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// The largest inner packet the path through the proxy carries.
    pub inner_mtu: u16,
}

/// A proxy's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushRequest {
    Push(RouteOffer),
    Withdraw { fqdn: String },
}

/// The agent's tunnel parameters, for the proxy's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    pub encap: Encap,
    #[serde(default)]
    pub public_key: Option<PublicKey>,
}

/// Why an agent refused a push. A refusal changes nothing at the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushRefusal {
    /// Malformed or contradictory request.
    BadRequest,
    /// The peer's certificate is not a proxy's.
    Role,
    /// The proxy's address is not in the target's ALT set (or there is none).
    NotInAltSet,
    /// The ALT set could not be looked up (no upstream answered).
    AltLookup,
    /// The proxy does not carry the agent's encapsulation.
    UnsupportedEncap,
    /// This agent takes no pushes, or could not install the route.
    System,
}

/// The agent's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushAnswer {
    Accepted(Accepted),
    Withdrawn { changed: bool },
    Refused { code: PushRefusal, message: String },
}

/// Why an agent refuses an offer before looking anything up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOffer {
    #[error("fqdn must be a DNS name")]
    Name,
    #[error("{0} targets; 1 to {MAX_PUSH_TARGETS} expected")]
    TargetCount(usize),
    #[error("target {0} is not a unicast address")]
    NotUnicast(IpAddr),
    #[error("the proxy's tunnel address is also a target")]
    TunnelIsTarget,
    #[error("inner MTU {0} is outside 576..=9000")]
    Mtu(u16),
    #[error("wireguard offered without a valid public key")]
    BadKey,
    #[error("a UDP encapsulation offered without a tunnel port")]
    NoPort,
}

impl RouteOffer {
    /// What the agent checks before it looks anything up.
    pub fn validate(&self) -> Result<(), InvalidOffer> {
        if self.fqdn.is_empty() || self.fqdn.len() > 254 {
            return Err(InvalidOffer::Name);
        }
        if self.targets.is_empty() || self.targets.len() > MAX_PUSH_TARGETS {
            return Err(InvalidOffer::TargetCount(self.targets.len()));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| t.is_unspecified() || t.is_multicast() || t.is_loopback())
        {
            return Err(InvalidOffer::NotUnicast(*t));
        }
        if self.targets.contains(&self.tunnel_address) {
            return Err(InvalidOffer::TunnelIsTarget);
        }
        if !(576..=9000).contains(&self.inner_mtu) {
            return Err(InvalidOffer::Mtu(self.inner_mtu));
        }
        if self.encaps.contains(&Encap::Wireguard)
            && !self.public_key.as_ref().is_some_and(|k| k.looks_valid())
        {
            return Err(InvalidOffer::BadKey);
        }
        if self.encaps.iter().any(|e| e.uses_udp()) && self.port.is_none_or(|p| p == 0) {
            return Err(InvalidOffer::NoPort);
        }
        Ok(())
    }
}

/// The agent's decision on a valid offer, given the ALT set it looked up: Ok(()) when
/// both the address the proxy connected from and its tunnel address are in it, and the
/// proxy carries `encap`.
pub fn judge(
    offer: &RouteOffer,
    from: IpAddr,
    alts: &[IpAddr],
    encap: Encap,
) -> Result<(), PushAnswer> {
    let refuse = |code, message: String| PushAnswer::Refused { code, message };
    if alts.is_empty() {
        return Err(refuse(
            PushRefusal::NotInAltSet,
            format!("{} has no ALT records: it is not diverted", offer.fqdn),
        ));
    }
    for (what, a) in [("address", from), ("tunnel address", offer.tunnel_address)] {
        if !alts.contains(&a) {
            return Err(refuse(
                PushRefusal::NotInAltSet,
                format!(
                    "the proxy's {what} {a} is not in the ALT set {alts:?} of {}",
                    offer.fqdn
                ),
            ));
        }
    }
    if !offer.encaps.contains(&encap) {
        return Err(refuse(
            PushRefusal::UnsupportedEncap,
            format!(
                "the agent speaks {encap}; the proxy offers {:?}",
                offer.encaps
            ),
        ));
    }
    Ok(())
}

/// A DNS name as the agent keys it: lowercase, absolute.
pub fn name_key(fqdn: &str) -> String {
    let mut s = fqdn.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{edge_decoder as decoder, encode_message as encode, next_message};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn offer() -> RouteOffer {
        RouteOffer {
            fqdn: "www.example.net.".into(),
            targets: vec![ip("192.0.2.10")],
            tunnel_address: ip("198.51.100.1"),
            port: Some(51820),
            encaps: vec![Encap::Udp, Encap::Wireguard],
            public_key: Some(PublicKey(format!("{}=", "A".repeat(43)))),
            inner_mtu: 1420,
        }
    }

    #[test]
    fn offers_are_checked() {
        offer().validate().unwrap();
        let mut o = offer();
        o.targets.clear();
        assert!(o.validate().is_err());
        let mut o = offer();
        o.targets.push(ip("198.51.100.1"));
        assert_eq!(o.validate(), Err(InvalidOffer::TunnelIsTarget));
        let mut o = offer();
        o.public_key = None;
        assert_eq!(o.validate(), Err(InvalidOffer::BadKey));
        let mut o = offer();
        o.port = None;
        assert_eq!(o.validate(), Err(InvalidOffer::NoPort));
        let mut o = offer();
        o.inner_mtu = 100;
        assert!(o.validate().is_err());
        let mut o = offer();
        o.targets = (0..40).map(|i| ip(&format!("192.0.2.{i}"))).collect();
        assert!(o.validate().is_err());
    }

    #[test]
    fn only_a_proxy_of_the_alt_set_is_accepted() {
        let alts = [ip("198.51.100.1"), ip("198.51.100.2")];
        let o = offer();
        judge(&o, ip("198.51.100.1"), &alts, Encap::Wireguard).unwrap();
        let code = |r: Result<(), PushAnswer>| match r {
            Err(PushAnswer::Refused { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        // Connected from an address outside the set.
        assert_eq!(
            code(judge(&o, ip("203.0.113.66"), &alts, Encap::Wireguard)),
            PushRefusal::NotInAltSet
        );
        // Offers a tunnel end point outside the set.
        let mut o2 = offer();
        o2.tunnel_address = ip("203.0.113.66");
        assert_eq!(
            code(judge(&o2, ip("198.51.100.1"), &alts, Encap::Wireguard)),
            PushRefusal::NotInAltSet
        );
        // Not diverted at all.
        assert_eq!(
            code(judge(&o, ip("198.51.100.1"), &[], Encap::Wireguard)),
            PushRefusal::NotInAltSet
        );
        assert_eq!(
            code(judge(&o, ip("198.51.100.1"), &alts, Encap::Ipip)),
            PushRefusal::UnsupportedEncap
        );
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            PushRequest::Push(offer()),
            PushRequest::Withdraw {
                fqdn: "www.example.net.".into(),
            },
        ] {
            let bytes = encode(&m);
            let mut d = decoder();
            d.push(&bytes);
            assert_eq!(next_message::<PushRequest>(&mut d).unwrap(), Some(m));
        }
        let mut d = decoder();
        d.push(&encode(
            &serde_json::json!({"type": "push", "fqdn": "x.", "evil": 1}),
        ));
        assert!(next_message::<PushRequest>(&mut d).is_err());
        // An over-long frame is refused before it is buffered.
        let mut d = decoder();
        d.push(&(1_000_000u32).to_be_bytes());
        d.push(&[1]);
        assert!(next_message::<PushRequest>(&mut d).is_err());
        assert_eq!(name_key("WWW.Example.NET"), "www.example.net.");
    }
}
