//! Links, addresses, routes and policy rules through rtnetlink.
//!
//! Every route SCOLD adds lives in its own routing table, reached by one policy rule
//! that SCOLD adds with the first route of an address family and removes with the last.
//! The main table is never touched, so tearing down (or a crash followed by the operator
//! deleting the table) puts routing back exactly as it was found.

use crate::error::TunnelError;
use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use scold_proto::dataplane::Prefix;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The `proto` value marking SCOLD's routes (`ip route show proto 0x5c`).
pub const RTPROT_SCOLD: u8 = 0x5c;

fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> TunnelError {
    TunnelError::Netlink {
        op: op.into(),
        message: e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink connection for this network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection; its driver runs as a task on the current runtime.
    pub fn new() -> Result<Self, TunnelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| TunnelError::Socket {
            what: "rtnetlink socket".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, TunnelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => Err(TunnelError::Netlink {
                op: format!("look up interface {name}"),
                message: "no such interface".into(),
            }),
            Err(e) => Err(nl_err(format!("look up interface {name}"), e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<(), TunnelError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("set link {index} up"), e))
    }

    /// Adds an address to an interface; an address already present is fine.
    pub async fn add_address(&self, index: u32, addr: IpAddr, len: u8) -> Result<(), TunnelError> {
        match self.handle.address().add(index, addr, len).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(
                format!("add address {addr}/{len} to link {index}"),
                e,
            )),
        }
    }
}

/// Where a route of a [`RouteTable`] sends packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// Out of an interface (the TUN device), with an optional preferred source.
    Device { index: u32, src: Option<IpAddr> },
    /// Through a next-hop router, with an optional preferred source.
    Via {
        gateway: IpAddr,
        src: Option<IpAddr>,
    },
}

/// Which packets consult the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSelector {
    /// Only packets that arrived on this interface (gateway: the target's LAN).
    pub iif: Option<String>,
}

/// SCOLD's own routing table and the rule that leads to it.
pub struct RouteTable {
    nl: Netlink,
    table: u32,
    priority: u32,
    selector: RuleSelector,
    rules: BTreeMap<bool, RuleMessage>,
    routes: BTreeMap<Prefix, (RouteTarget, RouteMessage)>,
}

impl RouteTable {
    pub fn new(nl: Netlink, table: u32, priority: u32, selector: RuleSelector) -> Self {
        RouteTable {
            nl,
            table,
            priority,
            selector,
            rules: BTreeMap::new(),
            routes: BTreeMap::new(),
        }
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    pub fn routes(&self) -> impl Iterator<Item = (&Prefix, &RouteTarget)> {
        self.routes.iter().map(|(p, (t, _))| (p, t))
    }

    fn message(&self, prefix: Prefix, target: RouteTarget) -> Result<RouteMessage, TunnelError> {
        fn bad<E: std::fmt::Display>(prefix: Prefix) -> impl Fn(E) -> TunnelError {
            move |e| TunnelError::Netlink {
                op: format!("build route {prefix}"),
                message: e.to_string(),
            }
        }
        let bad = bad(prefix);
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(prefix.addr(), prefix.len())
            .map_err(&bad)?
            .table_id(self.table)
            .protocol(RouteProtocol::Other(RTPROT_SCOLD));
        let b = match target {
            RouteTarget::Device { index, src } => {
                let b = b.output_interface(index).scope(RouteScope::Link);
                match src {
                    Some(s) => b.pref_source(s).map_err(&bad)?,
                    None => b,
                }
            }
            RouteTarget::Via { gateway, src } => {
                let b = b.gateway(gateway).map_err(&bad)?;
                match src {
                    Some(s) => b.pref_source(s).map_err(&bad)?,
                    None => b,
                }
            }
        };
        Ok(b.build())
    }

    async fn ensure_rule(&mut self, v6: bool) -> Result<(), TunnelError> {
        if self.rules.contains_key(&v6) {
            return Ok(());
        }
        let req = self
            .nl
            .handle
            .rule()
            .add()
            .table_id(self.table)
            .priority(self.priority)
            .action(RuleAction::ToTable);
        let req = match &self.selector.iif {
            Some(i) => req.input_interface(i.clone()),
            None => req,
        };
        // The two families are different request types; keep the message for deletion.
        let (res, msg) = if v6 {
            let mut r = req.v6();
            let m = r.message_mut().clone();
            (r.execute().await, m)
        } else {
            let mut r = req.v4();
            let m = r.message_mut().clone();
            (r.execute().await, m)
        };
        self.finish_rule(res, msg, v6).await
    }

    async fn finish_rule(
        &mut self,
        res: Result<(), rtnetlink::Error>,
        msg: RuleMessage,
        v6: bool,
    ) -> Result<(), TunnelError> {
        match res {
            Ok(()) => {}
            // Left over from a run that could not clean up: adopt it, remove it at the end.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(nl_err(
                    format!("add rule priority {} lookup {}", self.priority, self.table),
                    e,
                ))
            }
        }
        self.rules.insert(v6, msg);
        Ok(())
    }

    async fn drop_rule_if_unused(&mut self, v6: bool) -> Result<(), TunnelError> {
        if self.routes.keys().any(|p| p.addr().is_ipv6() == v6) {
            return Ok(());
        }
        if let Some(msg) = self.rules.remove(&v6) {
            match self.nl.handle.rule().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(nl_err(
                        format!(
                            "delete rule priority {} lookup {}",
                            self.priority, self.table
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Adds or replaces the route for `prefix`; returns whether anything changed.
    pub async fn add(&mut self, prefix: Prefix, target: RouteTarget) -> Result<bool, TunnelError> {
        if let Some((t, _)) = self.routes.get(&prefix) {
            if *t == target {
                return Ok(false);
            }
        }
        let msg = self.message(prefix, target)?;
        self.nl
            .handle
            .route()
            .add(msg.clone())
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format!("add route {prefix} table {}", self.table), e))?;
        self.routes.insert(prefix, (target, msg));
        if let Err(e) = self.ensure_rule(prefix.addr().is_ipv6()).await {
            // Do not leave a route behind that the failed command did not promise.
            let _ = self.remove(&prefix).await;
            return Err(e);
        }
        Ok(true)
    }

    /// Removes the route for `prefix`; returns whether there was one.
    pub async fn remove(&mut self, prefix: &Prefix) -> Result<bool, TunnelError> {
        let Some((_, msg)) = self.routes.remove(prefix) else {
            return Ok(false);
        };
        match self.nl.handle.route().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ESRCH) || errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(nl_err(
                    format!("delete route {prefix} table {}", self.table),
                    e,
                ))
            }
        }
        self.drop_rule_if_unused(prefix.addr().is_ipv6()).await?;
        Ok(true)
    }

    /// Removes every route and rule this table added. Errors are collected, not fatal,
    /// so one failure does not leave the rest behind.
    pub async fn clear(&mut self) -> Vec<TunnelError> {
        let mut errors = Vec::new();
        let prefixes: Vec<Prefix> = self.routes.keys().copied().collect();
        for p in prefixes {
            if let Err(e) = self.remove(&p).await {
                errors.push(e);
            }
        }
        for v6 in [false, true] {
            if let Err(e) = self.drop_rule_if_unused(v6).await {
                errors.push(e);
            }
        }
        errors
    }
}
