//! The target's return path for schemes 4.1 and 4.2, without per-client state.
//!
//! Diverted clients reach the target through the hidden gateway, with their own
//! addresses as source. The replies must leave through the gateway too, never out of the
//! attacked main link, and the target cannot know in advance which clients those are.
//! So the connections themselves are marked:
//!
//! ```text
//! table inet scold_return {
//!     chain prerouting {
//!         type filter hook prerouting priority mangle; policy accept;
//!         iifname "LAN" [ether saddr GW-MAC] ct direction original ct mark set MARK
//!         ct direction reply ct mark MARK meta mark set MARK     # forwarded replies
//!     }
//!     chain output {
//!         type route hook output priority mangle; policy accept;
//!         ct direction reply ct mark MARK meta mark set MARK     # local replies
//!     }
//! }
//! ip rule add fwmark MARK lookup TABLE priority PRIORITY
//! ip route add default via INSIDE dev LAN table TABLE proto 0x5c
//! ```
//!
//! A packet that arrives from the gateway marks its connection; every reply of a marked
//! connection carries the mark and is routed by SCOLD's table to the gateway's inside
//! address. Other traffic never carries the mark and keeps its routes. Strict
//! reverse-path filtering would drop the gateway's packets (their sources route out of
//! the main link), so it is set to loose on the gateway's interface while the return
//! path exists. Clearing deletes the table, the rule and the route and puts the
//! sysctls back: `ip rule`, `ip route show table all` and `nft list ruleset` are as
//! they were found.
//!
//! The table is built with the `nftables` crate and applied through
//! [`scold_filter::nft::Nft`] (`nft -j`), the runner of the proxy's block list: one
//! transaction that replaces a table left over from a run that could not clean up.

use crate::node::Sysctl;
use futures::TryStreamExt;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT};
use nftables::schema::{Chain, NfListObject, Nftables, Rule};
use nftables::stmt::{Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::packet_route::rule::{RuleAction, RuleMessage};
use rtnetlink::{Handle, RouteMessageBuilder};
use scold_filter::nft::{Nft, NftError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

/// The `proto` of SCOLD's routes, as in `scold_tunnel::netlink`.
const RTPROT_SCOLD: u8 = scold_tunnel::netlink::RTPROT_SCOLD;

fn default_mark() -> u32 {
    0x5c5c
}
fn default_table() -> u32 {
    5104
}
fn default_nft() -> String {
    "nft".into()
}

/// How the gateway's link-layer address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayMac {
    /// Look it up in the neighbour table from the gateway's inside address.
    Learn,
    /// This address.
    Fixed([u8; 6]),
}

impl<'de> Deserialize<'de> for GatewayMac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for GatewayMac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GatewayMac::Learn => s.serialize_str("learn"),
            GatewayMac::Fixed(m) => s.serialize_str(&mac_text(m)),
        }
    }
}

impl std::str::FromStr for GatewayMac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "learn" {
            return Ok(GatewayMac::Learn);
        }
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!("gateway_mac {s:?}: write \"learn\" or six hex bytes like 02:00:5e:00:00:01")
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(GatewayMac::Fixed(mac))
    }
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `[return_path]` of a target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnPathSection {
    /// The interface towards the gateway; default: the one whose network holds the
    /// gateway's inside address.
    #[serde(default)]
    pub interface: Option<String>,
    /// Also match the gateway's link-layer address (when it shares its link with other
    /// routers): `"learn"` or `"02:00:5e:00:00:01"`. Absent: by interface only.
    #[serde(default)]
    pub gateway_mac: Option<GatewayMac>,
    /// The connection and packet mark (also the `fwmark` of the rule).
    #[serde(default = "default_mark")]
    pub mark: u32,
    #[serde(default = "default_table")]
    pub table: u32,
    #[serde(default = "default_table")]
    pub rule_priority: u32,
    /// The nftables table SCOLD owns (created and deleted whole).
    #[serde(default = "default_nft_table")]
    pub nft_table: String,
    /// The `nft` program.
    #[serde(default = "default_nft")]
    pub nft: String,
}

fn default_nft_table() -> String {
    "scold_return".into()
}

impl Default for ReturnPathSection {
    fn default() -> Self {
        ReturnPathSection {
            interface: None,
            gateway_mac: None,
            mark: default_mark(),
            table: default_table(),
            rule_priority: default_table(),
            nft_table: default_nft_table(),
            nft: default_nft(),
        }
    }
}

impl ReturnPathSection {
    pub fn check(&self) -> Result<(), String> {
        if self.mark == 0 {
            return Err(
                "return_path.mark = 0 would match unmarked packets; pick a non-zero mark".into(),
            );
        }
        if matches!(self.table, 0 | 253..=255) {
            return Err(format!(
                "return_path.table = {} is a kernel table (unspec, default, main, local); pick another",
                self.table
            ));
        }
        if self.nft_table.is_empty()
            || !self
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "return_path.nft_table {:?}: use letters, digits, '_' and '-'",
                self.nft_table
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReturnPathError {
    #[error("{op}: {message}")]
    Netlink { op: String, message: String },
    #[error("no interface of this host has an address in the network of the gateway's inside address {0}; set return_path.interface")]
    NoInterface(IpAddr),
    #[error("the gateway's link-layer address for {0} is not in the neighbour table after 3 s; is the gateway up? (or set return_path.gateway_mac)")]
    NoNeighbour(IpAddr),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("{0}")]
    Sysctl(String),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> ReturnPathError {
    let op = op.into();
    move |e| ReturnPathError::Netlink {
        op,
        message: e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

struct Active {
    via: IpAddr,
    rule: RuleMessage,
    route: RouteMessage,
    sysctls: Vec<Sysctl>,
}

/// The return path of one target: set for a gateway, cleared, or absent.
pub struct ReturnPath {
    cfg: ReturnPathSection,
    handle: Handle,
    active: Option<Active>,
}

impl ReturnPath {
    pub fn new(cfg: ReturnPathSection) -> Result<Self, ReturnPathError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ReturnPathError::Netlink {
                op: "open an rtnetlink socket".into(),
                message: e.to_string(),
            })?;
        tokio::spawn(conn);
        Ok(ReturnPath {
            cfg,
            handle,
            active: None,
        })
    }

    pub fn via(&self) -> Option<IpAddr> {
        self.active.as_ref().map(|a| a.via)
    }

    /// Sends replies of connections from the gateway at `via` back to it. Returns
    /// whether anything changed.
    pub async fn set(&mut self, via: IpAddr) -> Result<bool, ReturnPathError> {
        if self.via() == Some(via) {
            return Ok(false);
        }
        self.clear().await?;
        let (index, name) = self.interface_for(via).await?;
        let mac = match &self.cfg.gateway_mac {
            None => None,
            Some(GatewayMac::Fixed(m)) => Some(*m),
            Some(GatewayMac::Learn) => Some(self.learn_mac(via, index).await?),
        };
        let mut sysctls = Vec::new();
        if via.is_ipv4() {
            // Loose reverse-path filtering on the gateway's interface: the kernel takes
            // the higher of `all` and the interface's value, so both may need it.
            for key in ["all".to_string(), name.clone()] {
                let k = format!("net.ipv4.conf.{key}.rp_filter");
                let cur =
                    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{key}/rp_filter"))
                        .unwrap_or_default();
                if cur.trim() == "1" {
                    match Sysctl::set(&k, "2") {
                        Ok(Some(s)) => sysctls.push(s),
                        Ok(None) => {}
                        Err(e) => {
                            for s in sysctls {
                                s.restore();
                            }
                            return Err(ReturnPathError::Sysctl(format!("{e:#}")));
                        }
                    }
                }
            }
        }
        let undo = |sysctls: Vec<Sysctl>| {
            for s in sysctls.into_iter().rev() {
                s.restore();
            }
        };
        if let Err(e) = self.nft_install(&name, mac).await {
            undo(sysctls);
            return Err(e);
        }
        let route = match self.add_route(via, index).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.nft_delete().await;
                undo(sysctls);
                return Err(e);
            }
        };
        let rule = match self.add_rule(via.is_ipv6()).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.handle.route().del(route).execute().await;
                let _ = self.nft_delete().await;
                undo(sysctls);
                return Err(e);
            }
        };
        tracing::info!(%via, interface = %name, mac = ?mac.map(|m| mac_text(&m)), mark = self.cfg.mark, table = self.cfg.table, "return path through the gateway set");
        self.active = Some(Active {
            via,
            rule,
            route,
            sysctls,
        });
        Ok(true)
    }

    /// Removes the return path: rule, route, nftables table, sysctls. Returns whether
    /// there was one.
    pub async fn clear(&mut self) -> Result<bool, ReturnPathError> {
        let Some(a) = self.active.take() else {
            return Ok(false);
        };
        let mut first_err = None;
        match self.handle.rule().del(a.rule).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => first_err = Some(nl("delete the return-path rule")(e)),
        }
        match self.handle.route().del(a.route).execute().await {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => {}
            Err(e) => {
                first_err.get_or_insert(nl("delete the return-path route")(e));
            }
        }
        if let Err(e) = self.nft_delete().await {
            first_err.get_or_insert(e);
        }
        for s in a.sysctls.into_iter().rev() {
            s.restore();
        }
        tracing::info!(via = %a.via, "return path cleared");
        match first_err {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// The interface whose network holds `via`, or the configured one.
    async fn interface_for(&self, via: IpAddr) -> Result<(u32, String), ReturnPathError> {
        if let Some(name) = &self.cfg.interface {
            let mut links = self.handle.link().get().match_name(name.clone()).execute();
            return match links.try_next().await {
                Ok(Some(l)) => Ok((l.header.index, name.clone())),
                Ok(None) | Err(_) => Err(ReturnPathError::Netlink {
                    op: format!("look up return_path.interface {name}"),
                    message: "no such interface".into(),
                }),
            };
        }
        let mut addrs = self.handle.address().get().execute();
        let mut best: Option<(u8, u32)> = None;
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl("list the addresses of this host"))?
        {
            for attr in &a.attributes {
                let AddressAttribute::Address(ip) = attr else {
                    continue;
                };
                let len = a.header.prefix_len;
                let Ok(net) = scold_proto::dataplane::Prefix::new(mask(*ip, len), len) else {
                    continue;
                };
                if net.contains(via) && best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, a.header.index));
                }
            }
        }
        let (_, index) = best.ok_or(ReturnPathError::NoInterface(via))?;
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(nl(format!("look up interface {index}")))?
            .ok_or(ReturnPathError::NoInterface(via))?;
        let name = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .ok_or(ReturnPathError::NoInterface(via))?;
        Ok((index, name))
    }

    async fn neighbour(&self, via: IpAddr, index: u32) -> Result<Option<[u8; 6]>, ReturnPathError> {
        let mut n = self.handle.neighbours().get().execute();
        while let Some(m) = n.try_next().await.map_err(nl("list neighbours"))? {
            if m.header.ifindex != index {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            if dst != Some(via) {
                continue;
            }
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(b);
                    Some(mac)
                }
                _ => None,
            });
            if mac.is_some() {
                return Ok(mac);
            }
        }
        Ok(None)
    }

    /// The gateway's link-layer address from the neighbour table; one datagram to
    /// the discard port starts resolution when the entry is missing.
    async fn learn_mac(&self, via: IpAddr, index: u32) -> Result<[u8; 6], ReturnPathError> {
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut probed = false;
        loop {
            if let Some(m) = self.neighbour(via, index).await? {
                return Ok(m);
            }
            if tokio::time::Instant::now() >= end {
                return Err(ReturnPathError::NoNeighbour(via));
            }
            if !probed {
                probed = true;
                let bind = if via.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                if let Ok(s) = tokio::net::UdpSocket::bind(bind).await {
                    let _ = s.send_to(&[], (via, 9)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn add_route(&self, via: IpAddr, index: u32) -> Result<RouteMessage, ReturnPathError> {
        let any = if via.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        fn bad<E: std::fmt::Display>(via: IpAddr) -> impl Fn(E) -> ReturnPathError {
            move |e| ReturnPathError::Netlink {
                op: format!("build the return-path route via {via}"),
                message: e.to_string(),
            }
        }
        let bad = bad(via);
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .map_err(&bad)?
            .gateway(via)
            .map_err(&bad)?
            .output_interface(index)
            .table_id(self.cfg.table)
            .protocol(RouteProtocol::Other(RTPROT_SCOLD))
            .build();
        self.handle
            .route()
            .add(msg.clone())
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "add route default via {via} table {}",
                self.cfg.table
            )))?;
        Ok(msg)
    }

    async fn add_rule(&self, v6: bool) -> Result<RuleMessage, ReturnPathError> {
        let req = self
            .handle
            .rule()
            .add()
            .table_id(self.cfg.table)
            .priority(self.cfg.rule_priority)
            .fw_mark(self.cfg.mark)
            .action(RuleAction::ToTable);
        let (res, msg) = if v6 {
            let mut r = req.v6();
            let m = r.message_mut().clone();
            (r.execute().await, m)
        } else {
            let mut r = req.v4();
            let m = r.message_mut().clone();
            (r.execute().await, m)
        };
        match res {
            Ok(()) => Ok(msg),
            // Left over from a run that could not clean up: adopt it, remove it later.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(msg),
            Err(e) => Err(nl(format!(
                "add rule fwmark {:#x} lookup {} priority {}",
                self.cfg.mark, self.cfg.table, self.cfg.rule_priority
            ))(e)),
        }
    }

    fn nft_runner(&self) -> Nft {
        Nft::new(self.cfg.nft.clone(), None)
    }

    /// The ruleset: replaces SCOLD's table in one transaction (see the module
    /// documentation for the same rules in nft's text syntax).
    pub fn ruleset(&self, interface: &str, mac: Option<[u8; 6]>) -> Nftables<'static> {
        ruleset(&self.cfg.nft_table, self.cfg.mark, interface, mac)
    }

    async fn nft_install(
        &self,
        interface: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<(), ReturnPathError> {
        let nft = self.nft_runner();
        let doc = self.ruleset(interface, mac);
        blocking(move || nft.apply(&doc, "install the return-path marks")).await
    }

    async fn nft_delete(&self) -> Result<(), ReturnPathError> {
        let (nft, table) = (self.nft_runner(), self.cfg.nft_table.clone());
        blocking(move || nft.delete_table(NfFamily::INet, &table)).await
    }
}

/// Runs an `nft` call on the blocking pool: it waits for a child process.
async fn blocking(
    f: impl FnOnce() -> Result<(), NftError> + Send + 'static,
) -> Result<(), ReturnPathError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ReturnPathError::Nft(NftError::Other {
            action: "run nft".into(),
            detail: e.to_string(),
        })),
    }
}

/// Chain priority `mangle`.
const PRIORITY_MANGLE: i32 = -150;

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn set(key: Expression<'static>, value: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key,
        value: Expression::Number(value),
    })
}

/// `table inet TABLE` with the two chains of the module documentation, replacing any
/// table of that name in the same transaction.
fn ruleset(table: &str, mark: u32, interface: &str, mac: Option<[u8; 6]>) -> Nftables<'static> {
    let fam = NfFamily::INet;
    let mut b = Batch::new();
    scold_filter::nft::replace_table(&mut b, fam, table);
    let chain = |name: &'static str, ty, hook| Chain {
        family: fam,
        table: table.to_string().into(),
        name: name.into(),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(PRIORITY_MANGLE),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    };
    let rule = |chain: &'static str, expr: Vec<Statement<'static>>| Rule {
        family: fam,
        table: table.to_string().into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        ..Rule::default()
    };
    let str = |s: String| Expression::String(s.into());
    // ct direction reply ct mark MARK meta mark set MARK
    let replies = vec![
        is(ct("direction"), str("reply".into())),
        is(ct("mark"), Expression::Number(mark)),
        set(meta(MetaKey::Mark), mark),
    ];
    b.add(NfListObject::Chain(chain(
        "prerouting",
        NfChainType::Filter,
        NfHook::Prerouting,
    )));
    // iifname "LAN" [ether saddr GW-MAC] ct direction original ct mark set MARK
    let mut from_gateway = vec![is(meta(MetaKey::Iifname), str(interface.to_string()))];
    if let Some(m) = mac {
        from_gateway.push(is(
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: "ether".into(),
                    field: "saddr".into(),
                },
            ))),
            str(mac_text(&m)),
        ));
    }
    from_gateway.push(is(ct("direction"), str("original".into())));
    from_gateway.push(set(ct("mark"), mark));
    b.add(NfListObject::Rule(rule("prerouting", from_gateway)));
    // Forwarded replies.
    b.add(NfListObject::Rule(rule("prerouting", replies.clone())));
    b.add(NfListObject::Chain(chain(
        "output",
        NfChainType::Route,
        NfHook::Output,
    )));
    // Local replies.
    b.add(NfListObject::Rule(rule("output", replies)));
    b.to_nftables()
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_mac_parses() {
        assert_eq!("learn".parse::<GatewayMac>().unwrap(), GatewayMac::Learn);
        assert_eq!(
            "02:00:5E:00:00:0a".parse::<GatewayMac>().unwrap(),
            GatewayMac::Fixed([2, 0, 0x5e, 0, 0, 10])
        );
        for bad in [
            "",
            "02:00:5e:00:00",
            "02:00:5e:00:00:0g",
            "2:0:5e:0:0:1:",
            "0200.5e00.0001",
        ] {
            assert!(bad.parse::<GatewayMac>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn section_defaults_and_checks() {
        let s: ReturnPathSection = toml::from_str("").unwrap();
        s.check().unwrap();
        assert_eq!((s.mark, s.table, s.rule_priority), (0x5c5c, 5104, 5104));
        let s: ReturnPathSection = toml::from_str("mark = 0").unwrap();
        assert!(s.check().is_err());
        let s: ReturnPathSection = toml::from_str("table = 254").unwrap();
        assert!(s.check().unwrap_err().contains("main"));
        let s: ReturnPathSection = toml::from_str("nft_table = \"a b\"").unwrap();
        assert!(s.check().is_err());
        assert!(toml::from_str::<ReturnPathSection>("gateway_mac = \"x\"").is_err());
        assert!(toml::from_str::<ReturnPathSection>("colour = 1").is_err());
    }

    #[test]
    fn ruleset_marks_by_interface_and_mac() {
        let doc = serde_json::to_value(ruleset("scold_return", 0x5c5c, "eth1", None)).unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        // One transaction that replaces a left-over table, then the two chains.
        let t = serde_json::json!({"family": "inet", "name": "scold_return"});
        assert_eq!(cmds[0], serde_json::json!({"add": {"table": t}}));
        assert_eq!(cmds[1], serde_json::json!({"delete": {"table": t}}));
        assert_eq!(cmds[2], serde_json::json!({"add": {"table": t}}));
        let chains: Vec<_> = cmds
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .map(|c| {
                (
                    c["name"].as_str().unwrap(),
                    c["type"].as_str().unwrap(),
                    c["hook"].as_str().unwrap(),
                    c["prio"].as_i64().unwrap(),
                    c["policy"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            chains,
            [
                ("prerouting", "filter", "prerouting", -150, "accept"),
                ("output", "route", "output", -150, "accept")
            ]
        );
        let rules: Vec<(String, serde_json::Value)> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| (r["chain"].as_str().unwrap().to_string(), r["expr"].clone()))
            .collect();
        let m = |l: serde_json::Value, r: serde_json::Value| serde_json::json!({"match": {"op": "==", "left": l, "right": r}});
        let ct = |k: &str| serde_json::json!({"ct": {"key": k}});
        let meta = |k: &str| serde_json::json!({"meta": {"key": k}});
        let set = |k: serde_json::Value| serde_json::json!({"mangle": {"key": k, "value": 0x5c5c}});
        let replies = serde_json::json!([
            m(ct("direction"), "reply".into()),
            m(ct("mark"), 0x5c5c.into()),
            set(meta("mark")),
        ]);
        assert_eq!(
            rules,
            [
                (
                    "prerouting".to_string(),
                    serde_json::json!([
                        m(meta("iifname"), "eth1".into()),
                        m(ct("direction"), "original".into()),
                        set(ct("mark")),
                    ])
                ),
                ("prerouting".to_string(), replies.clone()),
                ("output".to_string(), replies),
            ]
        );
        // With the gateway's link-layer address, right after the interface.
        let doc = serde_json::to_value(ruleset(
            "scold_return",
            0x5c5c,
            "eth1",
            Some([2, 0, 0x5e, 0, 0, 1]),
        ))
        .unwrap();
        let first = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|c| c["add"].get("rule"))
            .unwrap();
        assert_eq!(
            first["expr"][1],
            m(
                serde_json::json!({"payload": {"protocol": "ether", "field": "saddr"}}),
                "02:00:5e:00:00:01".into()
            )
        );
    }

    /// nft itself takes the ruleset: checked (`nft -c`), so nothing changes.
    #[test]
    fn nft_accepts_the_ruleset() {
        let nft = Nft::new("nft", None);
        let table = format!("scold_rp_check_{}", std::process::id());
        for mac in [None, Some([2, 0, 0x5e, 0, 0, 1])] {
            let doc = ruleset(&table, 0x5c5c, "lo", mac);
            match nft.check(&doc, "check the return-path ruleset") {
                Ok(()) => {}
                Err(e @ NftError::NotInstalled { .. }) => {
                    panic!("{e} (the tests need it, as the return path does)")
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn masks() {
        assert_eq!(
            mask("10.3.0.2".parse().unwrap(), 24).to_string(),
            "10.3.0.0"
        );
        assert_eq!(mask("10.3.0.2".parse().unwrap(), 0).to_string(), "0.0.0.0");
        assert_eq!(
            mask("2001:db8::1".parse().unwrap(), 64).to_string(),
            "2001:db8::"
        );
    }
}
