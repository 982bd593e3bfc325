//! The hidden gateway's packet policy: the gateway sends nothing to anyone but the
//! registered proxies' tunnels, its own control connection and the target's network.
//!
//! A scan of the gateway's outside address would otherwise find it at once: the kernel
//! answers pings, sends a TCP reset for every closed port, ICMP port and protocol
//! unreachable, timestamp replies. Dropping what arrives is not enough (the tunnel
//! socket must receive); what leaves is filtered instead, in the `output` hook, so that
//! every reply the kernel would make is dropped before it is sent. The policy is
//! installed before the tunnel socket opens and removed when the gateway stops.
//!
//! ```text
//! table inet scold_hidden {
//!     set peers4 { type ipv4_addr; }              # the registered proxies
//!     set peers6 { type ipv6_addr; }
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         oifname "lo" accept
//!         oifname "<lan_interface>" accept        # the target's network
//!         oifname "<tun_name>" accept
//!         ip daddr @peers4 udp sport <tunnel port> accept
//!         ip6 daddr @peers6 udp sport <tunnel port> accept
//!         ip daddr @peers4 meta l4proto ipip accept   # with tunnel.ipip
//!         ip daddr <coordinator> tcp dport <port> accept   # each replica's
//!         ip daddr <allow_out prefix> accept
//!         icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
//!         counter drop
//!     }
//!     chain forward {                              # with block_inward
//!         type filter hook forward priority filter; policy accept;
//!         iifname "<tun_name>" accept
//!         oifname "<tun_name>" accept
//!         iifname "<lan_interface>" accept        # the site's own traffic out
//!         ct state established,related accept     # and its answers
//!         counter drop
//!     }
//! }
//! ```
//!
//! Rules go through the `nftables` crate (`nft -j`), each change one transaction.

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, Element, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use scold_filter::nft::{replace_table, Nft, NftError};
use scold_proto::dataplane::Prefix;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

fn yes() -> bool {
    true
}
fn default_table() -> String {
    "scold_hidden".into()
}
fn default_nft() -> String {
    "nft".into()
}

/// `[hidden]`: the gateway's packet policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenSection {
    /// Install the policy at start (default). Turn it off only where another firewall
    /// already keeps the gateway silent.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Outsiders cannot open connections through the gateway into the target's network
    /// (default): forwarded traffic passes only if it enters or leaves a tunnel, comes
    /// from `lan_interface` (the site's own traffic leaving by the alternate uplink, such
    /// as the target's control link), or answers such traffic.
    #[serde(default = "yes")]
    pub block_inward: bool,
    /// Destinations the gateway may still send to, e.g. a management network or a
    /// metrics scraper outside the target's network.
    #[serde(default)]
    pub allow_out: Vec<Prefix>,
    /// The nftables table that holds the policy.
    #[serde(default = "default_table")]
    pub table: String,
    /// The `nft` program.
    #[serde(default = "default_nft")]
    pub nft: String,
}

impl Default for HiddenSection {
    fn default() -> Self {
        HiddenSection {
            enabled: true,
            block_inward: true,
            allow_out: Vec::new(),
            table: default_table(),
            nft: default_nft(),
        }
    }
}

/// What the policy lets out besides the peers' tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Openings {
    pub lan_interface: String,
    pub tun_name: String,
    /// The tunnel socket's UDP port (udp and wireguard).
    pub udp_port: Option<u16>,
    /// IP protocol 4 to the peers.
    pub ipip: bool,
    /// The coordinator's control address, and each other replica's when the
    /// coordinator runs as replicas (whichever leads is where the link goes).
    pub control: Vec<SocketAddr>,
}

/// The installed policy. Dropping it does not remove it: call [`Hidden::remove`].
pub struct Hidden {
    section: HiddenSection,
    nft: Nft,
    /// Peer name -> the address admitted for it.
    peers: HashMap<String, IpAddr>,
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn text(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

fn prefix(p: &Prefix) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
        addr: Box::new(text(p.addr().to_string())),
        len: u32::from(p.len()),
    }))
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

impl Hidden {
    /// The whole policy as one nft JSON document: what [`Hidden::install`] applies, and
    /// what an operator loads at boot (`nft -j -f FILE`) so the gateway is silent before
    /// the daemon starts.
    pub fn ruleset(section: &HiddenSection, o: &Openings) -> Nftables<'static> {
        let fam = NfFamily::INet;
        let table = || Cow::Owned(section.table.clone());
        let mut b = Batch::new();
        // A table left by a gateway that died is replaced whole.
        replace_table(&mut b, fam, &section.table);
        for (name, ty) in [("peers4", SetType::Ipv4Addr), ("peers6", SetType::Ipv6Addr)] {
            b.add(NfListObject::Set(Box::new(Set {
                family: fam,
                table: table(),
                name: name.into(),
                set_type: SetTypeValue::Single(ty),
                ..Set::default()
            })));
        }
        let chain = |name: &'static str, hook: NfHook| Chain {
            family: fam,
            table: table(),
            name: name.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(0),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        };
        let rule = |chain: &'static str, expr: Vec<Statement<'static>>, comment: &str| {
            NfListObject::Rule(Rule {
                family: fam,
                table: table(),
                chain: chain.into(),
                expr: Cow::Owned(expr),
                comment: Some(Cow::Owned(format!("scold: {comment}"))),
                ..Rule::default()
            })
        };
        let accept = || Statement::Accept(None);

        b.add(NfListObject::Chain(chain("output", NfHook::Output)));
        for (ifname, why) in [
            ("lo".to_string(), "loopback"),
            (o.lan_interface.clone(), "the target's network"),
            (o.tun_name.clone(), "the tunnels' inside"),
        ] {
            b.add(rule(
                "output",
                vec![eq(meta(MetaKey::Oifname), text(ifname)), accept()],
                why,
            ));
        }
        if let Some(port) = o.udp_port {
            for (fam_name, set) in [("ip", "@peers4"), ("ip6", "@peers6")] {
                b.add(rule(
                    "output",
                    vec![
                        eq(payload(fam_name, "daddr"), text(set)),
                        eq(payload("udp", "sport"), Expression::Number(u32::from(port))),
                        accept(),
                    ],
                    "tunnel packets to registered proxies",
                ));
            }
        }
        if o.ipip {
            b.add(rule(
                "output",
                vec![
                    eq(payload("ip", "daddr"), text("@peers4")),
                    eq(meta(MetaKey::L4proto), Expression::Number(4)),
                    accept(),
                ],
                "ipip tunnel packets to registered proxies",
            ));
        }
        for &c in &o.control {
            b.add(rule(
                "output",
                vec![
                    eq(
                        payload(family_of(c.ip()), "daddr"),
                        text(c.ip().to_string()),
                    ),
                    eq(
                        payload("tcp", "dport"),
                        Expression::Number(u32::from(c.port())),
                    ),
                    accept(),
                ],
                "the control connection to the coordinator",
            ));
        }
        for p in &section.allow_out {
            b.add(rule(
                "output",
                vec![
                    eq(payload(family_of(p.addr()), "daddr"), prefix(p)),
                    accept(),
                ],
                "allow_out",
            ));
        }
        b.add(rule(
            "output",
            vec![
                eq(
                    payload("icmpv6", "type"),
                    Expression::Named(NamedExpression::Set(
                        [
                            "nd-neighbor-solicit",
                            "nd-neighbor-advert",
                            "nd-router-solicit",
                        ]
                        .into_iter()
                        .map(|t| nftables::expr::SetItem::Element(text(t)))
                        .collect(),
                    )),
                ),
                accept(),
            ],
            "IPv6 neighbour discovery",
        ));
        b.add(rule(
            "output",
            vec![
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Drop(None),
            ],
            "the hidden gateway answers no one else",
        ));
        if section.block_inward {
            b.add(NfListObject::Chain(chain("forward", NfHook::Forward)));
            for (key, ifname, why) in [
                (
                    MetaKey::Iifname,
                    &o.tun_name,
                    "from the tunnels to the target",
                ),
                (
                    MetaKey::Oifname,
                    &o.tun_name,
                    "from the target into the tunnels",
                ),
                (
                    MetaKey::Iifname,
                    &o.lan_interface,
                    "the site's own traffic out by the alternate uplink",
                ),
            ] {
                b.add(rule(
                    "forward",
                    vec![eq(meta(key), text(ifname.clone())), accept()],
                    why,
                ));
            }
            b.add(rule(
                "forward",
                vec![
                    eq(
                        Expression::Named(NamedExpression::CT(nftables::expr::CT {
                            key: "state".into(),
                            family: None,
                            dir: None,
                        })),
                        Expression::Named(NamedExpression::Set(
                            ["established", "related"]
                                .into_iter()
                                .map(|t| nftables::expr::SetItem::Element(text(t)))
                                .collect(),
                        )),
                    ),
                    accept(),
                ],
                "answers to the site's own traffic",
            ));
            b.add(rule(
                "forward",
                vec![
                    Statement::Counter(Counter::Anonymous(None)),
                    Statement::Drop(None),
                ],
                "no way in to the target's network but the tunnels",
            ));
        }
        b.to_nftables()
    }

    /// Installs the policy (replacing one a previous run left behind).
    pub fn install(section: HiddenSection, o: &Openings) -> Result<Hidden, NftError> {
        let h = Hidden {
            nft: Nft::new(section.nft.clone(), None),
            section,
            peers: HashMap::new(),
        };
        h.nft.apply(
            &Self::ruleset(&h.section, o),
            "install the hidden gateway's policy (or set [hidden] enabled = false where another firewall keeps the gateway silent)",
        )?;
        tracing::info!(table = %h.section.table, "hidden gateway: nothing leaves but tunnel, control and target-network traffic");
        Ok(h)
    }

    fn element(&self, addr: IpAddr) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: NfFamily::INet,
            table: Cow::Owned(self.section.table.clone()),
            name: if addr.is_ipv4() { "peers4" } else { "peers6" }.into(),
            elem: Cow::Owned(vec![text(addr.to_string())]),
        })
    }

    /// Lets tunnel packets out to peer `name` at `addr` (replacing its old address).
    pub fn admit(&mut self, name: &str, addr: IpAddr) -> Result<(), NftError> {
        let old = self.peers.get(name).copied();
        if old == Some(addr) {
            return Ok(());
        }
        let mut b = Batch::new();
        if let Some(old) = old.filter(|o| !self.peers.iter().any(|(n, a)| n != name && a == o)) {
            b.delete(self.element(old));
        }
        b.add(self.element(addr));
        self.nft.apply(
            &b.to_nftables(),
            "admit a proxy through the hidden gateway's policy",
        )?;
        self.peers.insert(name.to_string(), addr);
        Ok(())
    }

    /// Stops tunnel packets to peer `name` (unless another peer has the same address).
    pub fn forget(&mut self, name: &str) -> Result<(), NftError> {
        let Some(addr) = self.peers.remove(name) else {
            return Ok(());
        };
        if self.peers.values().any(|a| *a == addr) {
            return Ok(());
        }
        let mut b = Batch::new();
        b.delete(self.element(addr));
        self.nft.apply(
            &b.to_nftables(),
            "remove a proxy from the hidden gateway's policy",
        )
    }

    /// Removes the policy (when the gateway stops).
    pub fn remove(self) -> Result<(), NftError> {
        self.nft.delete_table(NfFamily::INet, &self.section.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openings() -> Openings {
        Openings {
            lan_interface: "eth1".into(),
            tun_name: "scold-gw".into(),
            udp_port: Some(51820),
            ipip: true,
            control: vec![
                "192.0.2.100:7800".parse().unwrap(),
                "192.0.2.101:7801".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn the_ruleset_lets_out_only_what_the_gateway_needs() {
        let mut s = HiddenSection::default();
        s.allow_out.push("198.51.100.0/24".parse().unwrap());
        let json = serde_json::to_string(&Hidden::ruleset(&s, &openings())).unwrap();
        for needle in [
            "\"oifname\"",
            "\"eth1\"",
            "\"scold-gw\"",
            "@peers4",
            "@peers6",
            "51820",
            "192.0.2.100",
            "7800",
            // A coordinator replica: reachable once it leads.
            "192.0.2.101",
            "7801",
            "198.51.100.0",
            "nd-neighbor-solicit",
            "\"drop\"",
            "\"forward\"",
        ] {
            assert!(json.contains(needle), "{needle} missing from {json}");
        }
        // The last rule of the output chain drops; nothing follows it there.
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rules: Vec<&serde_json::Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object().map(|_| &c["add"]["rule"]))
            .filter(|r| r["chain"] == "output")
            .collect();
        let last = rules.last().unwrap();
        assert!(last["expr"].to_string().contains("drop"), "{last}");
        assert!(rules[..rules.len() - 1]
            .iter()
            .all(|r| r["expr"].to_string().contains("accept")));
    }

    #[test]
    fn without_ipip_or_forward_filtering_those_rules_are_absent() {
        let s = HiddenSection {
            block_inward: false,
            ..HiddenSection::default()
        };
        let mut o = openings();
        o.ipip = false;
        o.control.clear();
        let json = serde_json::to_string(&Hidden::ruleset(&s, &o)).unwrap();
        assert!(!json.contains("\"forward\""), "{json}");
        assert!(!json.contains("l4proto"), "{json}");
        assert!(!json.contains("7800"), "{json}");
    }
}
