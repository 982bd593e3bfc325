//! Kernel drops for blocked sources through nftables.
//!
//! The user-space [`Filter`](crate::Filter) sees every relayed packet, but a
//! flood it drops has still crossed the kernel into user space. Where nftables
//! is available, the proxy also puts each blocked source into a kernel set,
//! matched by a rule at the very start of the stack (the `prerouting` hook at
//! raw priority, before connection tracking), so that traffic is dropped
//! before it costs a socket read. Each element carries its own timeout, so the
//! kernel lifts a block by itself even if the proxy dies.
//!
//! Layout (all in one table that belongs to SCOLD, removed whole by
//! [`NftBlocklist::remove`]):
//!
//! ```text
//! table inet scold {
//!     set blocked4 { type ipv4_addr; flags timeout; }
//!     set blocked6 { type ipv6_addr; flags interval,timeout; }   # IPv6 prefixes
//!     chain prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         ip saddr @blocked4 counter drop
//!         ip6 saddr @blocked6 counter drop
//!     }
//! }
//! ```
//!
//! Commands go through the `nftables` crate (`nft -j`), batched so each call
//! is one atomic transaction. [`Nft`] runs them (in a network namespace if asked)
//! and turns failures into [`NftError`]s; the target's return path (`scold-node`)
//! uses the same runner and table helpers for its own table.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use nftables::batch::Batch;
use nftables::expr::{
    Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};

use crate::firewall::FilterEvent;
use crate::sample::{in_netns, SampleError};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program:?}: {source}; install the Debian package `nftables`")]
    NotInstalled {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "nft refused to {action}: {stderr} (is the kernel's nf_tables available and are we root?)"
    )]
    Failed { action: String, stderr: String },
    #[error("cannot {action}: {detail}")]
    Other { action: String, detail: String },
    #[error("IPv4 blocks are single addresses, got {addr}/{prefix_len}")]
    Ipv4Prefix { addr: IpAddr, prefix_len: u8 },
    #[error("prefix length {prefix_len} is out of range for {addr}")]
    BadPrefix { addr: IpAddr, prefix_len: u8 },
    #[error(transparent)]
    Netns(#[from] SampleError),
}

/// Where and under which names the blocklist lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NftConfig {
    pub table: String,
    pub set4: String,
    pub set6: String,
    pub chain: String,
    /// Priority of the hook; -300 (raw) runs before connection tracking.
    pub priority: i32,
    /// The `nft` program.
    pub program: String,
    /// Run `nft` inside this network namespace (`ip netns` name).
    pub netns: Option<String>,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "scold".into(),
            set4: "blocked4".into(),
            set6: "blocked6".into(),
            chain: "prerouting".into(),
            priority: -300,
            program: "nft".into(),
            netns: None,
        }
    }
}

/// One element of a blocklist set, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockedEntry {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Time left until the kernel removes the element.
    pub expires: Option<Duration>,
}

/// Runs `nft` with JSON documents built with the `nftables` crate, inside a network
/// namespace if asked. Every call is one transaction: all of it applies, or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nft {
    program: String,
    netns: Option<String>,
}

impl Nft {
    /// `program` is the `nft` binary; `netns` an `ip netns` name, `None` for the
    /// namespace of the calling process.
    pub fn new(program: impl Into<String>, netns: Option<String>) -> Self {
        Nft {
            program: program.into(),
            netns,
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NftError> {
        match &self.netns {
            // A child process inherits the network namespace of the thread that
            // forks it, so nft runs inside the namespace.
            Some(ns) => Ok(in_netns(ns, f)?),
            None => Ok(f()),
        }
    }

    /// Runs `nft ARGS`, feeding `stdin`; `action` names the step in errors.
    ///
    /// This and not `nftables::helper`: the helper leaves nft's standard error to
    /// the daemon's, so the reason nft gives for a refusal would miss the error.
    fn exec(
        &self,
        args: &[&str],
        stdin: Option<String>,
        action: &str,
    ) -> Result<Vec<u8>, NftError> {
        let program = self.program.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let output = self.run(move || {
            let mut child = Command::new(&program)
                .args(&args)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A write error shows as nft's own failure below.
                let _ = pipe.write_all(text.as_bytes());
            }
            child.wait_with_output()
        })?;
        let output = output.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NftError::NotInstalled {
                    program: self.program.clone(),
                    source,
                }
            } else {
                NftError::Other {
                    action: action.to_string(),
                    detail: format!("running {:?}: {source}", self.program),
                }
            }
        })?;
        if !output.status.success() {
            return Err(NftError::Failed {
                action: action.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(output.stdout)
    }

    /// Applies `doc` (`nft -j -f -`) as one transaction.
    pub fn apply(&self, doc: &Nftables<'_>, action: &str) -> Result<(), NftError> {
        let payload = serde_json::to_string(doc).map_err(|e| NftError::Other {
            action: action.to_string(),
            detail: e.to_string(),
        })?;
        self.exec(&["-j", "-f", "-"], Some(payload), action)
            .map(|_| ())
    }

    /// Checks `doc` (`nft -c -j -f -`): the kernel validates the transaction and
    /// discards it, so nothing changes.
    pub fn check(&self, doc: &Nftables<'_>, action: &str) -> Result<(), NftError> {
        let payload = serde_json::to_string(doc).map_err(|e| NftError::Other {
            action: action.to_string(),
            detail: e.to_string(),
        })?;
        self.exec(&["-c", "-j", "-f", "-"], Some(payload), action)
            .map(|_| ())
    }

    /// `nft -j list ARGS...` as JSON.
    pub fn list(&self, args: &[&str]) -> Result<serde_json::Value, NftError> {
        let action = format!("list {}", args.join(" "));
        let mut full = vec!["-j", "list"];
        full.extend_from_slice(args);
        let out = self.exec(&full, None, &action)?;
        serde_json::from_slice(&out).map_err(|e| NftError::Other {
            action,
            detail: format!("unreadable JSON: {e}"),
        })
    }

    /// Deletes table `name` of `family` whole. Not an error if it is gone.
    pub fn delete_table(&self, family: NfFamily, name: &str) -> Result<(), NftError> {
        let mut b = Batch::new();
        // Add-then-delete: succeeds whether or not the table exists.
        let t = table(family, name);
        b.add(NfListObject::Table(t.clone()));
        b.delete(NfListObject::Table(t));
        self.apply(
            &b.to_nftables(),
            &format!("delete table {} {name}", family_name(family)),
        )
    }
}

/// Table `name` of `family`, as an object to add or delete.
pub fn table(family: NfFamily, name: &str) -> Table<'static> {
    Table {
        family,
        name: name.to_string().into(),
        handle: None,
    }
}

/// Starts `batch` with an empty table `name`: whatever a table of that name held
/// (left over from a run that could not clean up) goes in the same transaction as
/// what the batch adds after this.
pub fn replace_table(batch: &mut Batch<'static>, family: NfFamily, name: &str) {
    let t = table(family, name);
    batch.add(NfListObject::Table(t.clone()));
    batch.delete(NfListObject::Table(t.clone()));
    batch.add(NfListObject::Table(t));
}

fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// Handle on the `inet scold` table.
#[derive(Clone, Debug)]
pub struct NftBlocklist {
    cfg: NftConfig,
    nft: Nft,
}

impl NftBlocklist {
    /// Creates the table, sets, chain and drop rules if missing (idempotent:
    /// the chain's rules are replaced, elements already in the sets are kept).
    pub fn ensure(cfg: NftConfig) -> Result<Self, NftError> {
        let this = NftBlocklist::new(cfg);
        let c = &this.cfg;
        let fam = NfFamily::INet;
        let mut b = Batch::new();
        b.add(NfListObject::Table(table(fam, &c.table)));
        for (name, ty, interval) in [
            (&c.set4, SetType::Ipv4Addr, false),
            (&c.set6, SetType::Ipv6Addr, true),
        ] {
            let mut flags = HashSet::from([SetFlag::Timeout]);
            if interval {
                flags.insert(SetFlag::Interval);
            }
            b.add(NfListObject::Set(Box::new(Set {
                family: fam,
                table: c.table.clone().into(),
                name: name.clone().into(),
                set_type: SetTypeValue::Single(ty),
                flags: Some(flags),
                ..Set::default()
            })));
        }
        let chain = Chain {
            family: fam,
            table: c.table.clone().into(),
            name: c.chain.clone().into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(c.priority),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        };
        b.add(NfListObject::Chain(chain.clone()));
        b.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
        for (proto, set) in [("ip", &c.set4), ("ip6", &c.set6)] {
            b.add(NfListObject::Rule(Rule {
                family: fam,
                table: c.table.clone().into(),
                chain: c.chain.clone().into(),
                expr: Cow::Owned(vec![
                    Statement::Match(Match {
                        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                            PayloadField {
                                protocol: proto.into(),
                                field: "saddr".into(),
                            },
                        ))),
                        right: Expression::String(format!("@{set}").into()),
                        op: Operator::EQ,
                    }),
                    Statement::Counter(Counter::Anonymous(None)),
                    Statement::Drop(None),
                ]),
                comment: Some("scold: sources blocked by the proxy filter".into()),
                ..Rule::default()
            }));
        }
        this.apply(&b.to_nftables(), "create the scold table")?;
        Ok(this)
    }

    fn new(cfg: NftConfig) -> Self {
        let nft = Nft::new(cfg.program.clone(), cfg.netns.clone());
        NftBlocklist { cfg, nft }
    }

    pub fn config(&self) -> &NftConfig {
        &self.cfg
    }

    fn apply(&self, doc: &Nftables<'_>, action: &str) -> Result<(), NftError> {
        self.nft.apply(doc, action)
    }

    fn element_value(addr: IpAddr, prefix_len: u8) -> Result<Expression<'static>, NftError> {
        match addr {
            IpAddr::V4(_) if prefix_len != 32 => Err(NftError::Ipv4Prefix { addr, prefix_len }),
            IpAddr::V4(a) => Ok(Expression::String(a.to_string().into())),
            IpAddr::V6(_) if prefix_len == 0 || prefix_len > 128 => {
                Err(NftError::BadPrefix { addr, prefix_len })
            }
            IpAddr::V6(a) => {
                // nft rejects a prefix whose host bits are set.
                let mask = if prefix_len >= 128 {
                    u128::MAX
                } else {
                    !(u128::MAX >> prefix_len)
                };
                let net = Ipv6Addr::from(u128::from(a) & mask);
                Ok(Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(net.to_string().into())),
                    len: u32::from(prefix_len),
                })))
            }
        }
    }

    fn set_for(&self, addr: IpAddr) -> &str {
        if addr.is_ipv4() {
            &self.cfg.set4
        } else {
            &self.cfg.set6
        }
    }

    fn element(
        &self,
        addr: IpAddr,
        val: Expression<'static>,
        timeout: Option<u32>,
    ) -> Element<'static> {
        let e = match timeout {
            Some(t) => Expression::Named(NamedExpression::Elem(Elem {
                val: Box::new(val),
                timeout: Some(t),
                expires: None,
                comment: None,
                counter: None,
            })),
            None => val,
        };
        Element {
            family: NfFamily::INet,
            table: self.cfg.table.clone().into(),
            name: self.set_for(addr).to_string().into(),
            elem: Cow::Owned(vec![e]),
        }
    }

    /// Blocks each `(address, prefix length, duration)` in the kernel, in one
    /// transaction. A source already blocked gets the new duration. Durations
    /// are rounded up to whole seconds (nft's resolution).
    pub fn block_many(&self, entries: &[(IpAddr, u8, Duration)]) -> Result<(), NftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new();
        for &(addr, prefix_len, dur) in entries {
            let val = Self::element_value(addr, prefix_len)?;
            let secs = u32::try_from(dur.as_secs() + u64::from(dur.subsec_nanos() > 0))
                .unwrap_or(u32::MAX)
                .max(1);
            // add-delete-add: `add` alone keeps the old timeout of an element
            // that exists, and `delete` alone fails on one that does not.
            b.add(NfListObject::Element(self.element(
                addr,
                val.clone(),
                Some(secs),
            )));
            b.delete(NfListObject::Element(self.element(addr, val.clone(), None)));
            b.add(NfListObject::Element(self.element(addr, val, Some(secs))));
        }
        self.apply(&b.to_nftables(), "add blocked sources")
    }

    pub fn block(&self, addr: IpAddr, prefix_len: u8, dur: Duration) -> Result<(), NftError> {
        self.block_many(&[(addr, prefix_len, dur)])
    }

    /// Lifts a block. Not an error if the element is already gone.
    pub fn unblock(&self, addr: IpAddr, prefix_len: u8) -> Result<(), NftError> {
        let val = Self::element_value(addr, prefix_len)?;
        // Adding first (with a 1 s timeout) makes the delete succeed whether or
        // not the element was still there.
        let mut b = Batch::new();
        b.add(NfListObject::Element(self.element(
            addr,
            val.clone(),
            Some(1),
        )));
        b.delete(NfListObject::Element(self.element(addr, val, None)));
        self.apply(&b.to_nftables(), "remove a blocked source")
    }

    /// Mirrors the filter's events into the kernel: `Blocked` adds an element
    /// for the block's duration, `Expired` removes it.
    pub fn apply_events<'e>(
        &self,
        events: impl IntoIterator<Item = &'e FilterEvent>,
    ) -> Result<(), NftError> {
        let mut adds = Vec::new();
        for e in events {
            match e {
                FilterEvent::Blocked {
                    src,
                    prefix_len,
                    duration,
                    ..
                } => adds.push((*src, *prefix_len, *duration)),
                FilterEvent::Expired { src, prefix_len } => {
                    adds.retain(|(a, p, _)| !(a == src && p == prefix_len));
                    self.unblock(*src, *prefix_len)?;
                }
            }
        }
        self.block_many(&adds)
    }

    /// The elements of both sets.
    pub fn list(&self) -> Result<Vec<BlockedEntry>, NftError> {
        let mut out = Vec::new();
        for set in [&self.cfg.set4, &self.cfg.set6] {
            let v = self.nft.list(&["set", "inet", &self.cfg.table, set])?;
            parse_set_elements(&v, &mut out);
        }
        Ok(out)
    }

    /// Packets and bytes dropped so far by the blocklist rules (both families).
    pub fn drop_counters(&self) -> Result<(u64, u64), NftError> {
        let v = self
            .nft
            .list(&["chain", "inet", &self.cfg.table, &self.cfg.chain])?;
        Ok(sum_counters(&v))
    }

    /// Deletes the whole table (sets, chain, rules). Not an error if it is gone.
    pub fn remove(self) -> Result<(), NftError> {
        self.nft.delete_table(NfFamily::INet, &self.cfg.table)
    }
}

/// Counts the packets and bytes that arrive on one interface for one TCP port (the
/// proxy's admission port), in a table of its own: what self-defence sets down to
/// admission rather than to the link ([`crate::selfdefence::AdmissionExcuse`]). A
/// counter only; it drops nothing.
#[derive(Clone, Debug)]
pub struct NftPortCounter {
    nft: Nft,
    table: String,
}

/// The chain of [`NftPortCounter`]'s table.
const PORT_CHAIN: &str = "count";

impl NftPortCounter {
    /// Creates (or replaces) table `inet <table>` with one counting rule for TCP to
    /// `port` arriving on `interface`, ahead of the block list (priority -350), so it
    /// counts what the interface's own counters count.
    pub fn ensure(
        nft: Nft,
        table: &str,
        interface: &str,
        port: u16,
    ) -> Result<NftPortCounter, NftError> {
        let fam = NfFamily::INet;
        let mut b = Batch::new();
        replace_table(&mut b, fam, table);
        b.add(NfListObject::Chain(Chain {
            family: fam,
            table: table.to_string().into(),
            name: PORT_CHAIN.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(-350),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        b.add(NfListObject::Rule(Rule {
            family: fam,
            table: table.to_string().into(),
            chain: PORT_CHAIN.into(),
            expr: Cow::Owned(vec![
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Meta(Meta {
                        key: MetaKey::Iifname,
                    })),
                    right: Expression::String(interface.to_string().into()),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: "tcp".into(),
                            field: "dport".into(),
                        },
                    ))),
                    right: Expression::Number(u32::from(port)),
                    op: Operator::EQ,
                }),
                Statement::Counter(Counter::Anonymous(None)),
            ]),
            comment: Some("scold: traffic of the admission port, not link load".into()),
            ..Rule::default()
        }));
        nft.apply(&b.to_nftables(), &format!("create table inet {table}"))?;
        Ok(NftPortCounter {
            nft,
            table: table.to_string(),
        })
    }

    /// Packets and bytes counted so far.
    pub fn read(&self) -> Result<(u64, u64), NftError> {
        let v = self.nft.list(&["chain", "inet", &self.table, PORT_CHAIN])?;
        Ok(sum_counters(&v))
    }

    /// Deletes the table. Not an error if it is gone.
    pub fn remove(self) -> Result<(), NftError> {
        self.nft.delete_table(NfFamily::INet, &self.table)
    }
}

/// Reads the elements out of `nft -j list set` output.
fn parse_set_elements(v: &serde_json::Value, out: &mut Vec<BlockedEntry>) {
    let Some(objs) = v.get("nftables").and_then(|x| x.as_array()) else {
        return;
    };
    for o in objs {
        let Some(elems) = o
            .get("set")
            .and_then(|s| s.get("elem"))
            .and_then(|e| e.as_array())
        else {
            continue;
        };
        for e in elems {
            let (val, expires) = match e.get("elem") {
                Some(inner) => (
                    inner.get("val").unwrap_or(inner),
                    inner
                        .get("expires")
                        .and_then(|x| x.as_u64())
                        .map(Duration::from_secs),
                ),
                None => (e, None),
            };
            let parsed = if let Some(s) = val.as_str() {
                s.parse::<IpAddr>()
                    .ok()
                    .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
            } else if let Some(p) = val.get("prefix") {
                let addr = p
                    .get("addr")
                    .and_then(|a| a.as_str())
                    .and_then(|a| a.parse().ok());
                let len = p
                    .get("len")
                    .and_then(|l| l.as_u64())
                    .and_then(|l| u8::try_from(l).ok());
                addr.zip(len)
            } else {
                None
            };
            if let Some((addr, prefix_len)) = parsed {
                out.push(BlockedEntry {
                    addr,
                    prefix_len,
                    expires,
                });
            }
        }
    }
}

/// Adds up the anonymous counters of all rules in `nft -j list chain` output.
fn sum_counters(v: &serde_json::Value) -> (u64, u64) {
    let mut total = (0, 0);
    let rules = v
        .get("nftables")
        .and_then(|x| x.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"));
    for r in rules {
        for st in r
            .get("expr")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(c) = st.get("counter") {
                total.0 += c.get("packets").and_then(|x| x.as_u64()).unwrap_or(0);
                total.1 += c.get("bytes").and_then(|x| x.as_u64()).unwrap_or(0);
            }
        }
    }
    total
}

/// True when `nft` can be run (the binary exists and answers `--version`).
pub fn nft_available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listing_of_both_set_kinds() {
        let v4: serde_json::Value = serde_json::from_str(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "blocked4", "table": "scold", "type": "ipv4_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "10.1.2.3", "timeout": 50, "expires": 49}}, "10.9.9.9"]}}]}"#).unwrap();
        let v6: serde_json::Value = serde_json::from_str(r#"{"nftables": [{"set": {"name": "blocked6", "elem": [{"elem": {"val": {"prefix": {"addr": "2001:db8:0:1::", "len": 64}}, "timeout": 50, "expires": 49}}]}}]}"#).unwrap();
        let mut out = Vec::new();
        parse_set_elements(&v4, &mut out);
        parse_set_elements(&v6, &mut out);
        assert_eq!(
            out,
            vec![
                BlockedEntry {
                    addr: "10.1.2.3".parse().unwrap(),
                    prefix_len: 32,
                    expires: Some(Duration::from_secs(49))
                },
                BlockedEntry {
                    addr: "10.9.9.9".parse().unwrap(),
                    prefix_len: 32,
                    expires: None
                },
                BlockedEntry {
                    addr: "2001:db8:0:1::".parse().unwrap(),
                    prefix_len: 64,
                    expires: Some(Duration::from_secs(49))
                },
            ]
        );
        // Empty or odd documents yield nothing rather than an error.
        parse_set_elements(
            &serde_json::json!({"nftables": [{"set": {"name": "x"}}]}),
            &mut out,
        );
        parse_set_elements(&serde_json::json!([1, 2]), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn counters_are_summed() {
        let v = serde_json::json!({"nftables": [
            {"chain": {"name": "prerouting"}},
            {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 5, "bytes": 300}}, {"drop": null}]}},
            {"rule": {"expr": [{"counter": {"packets": 2, "bytes": 100}}]}}
        ]});
        assert_eq!(sum_counters(&v), (7, 400));
        assert_eq!(sum_counters(&serde_json::json!({})), (0, 0));
    }

    #[test]
    fn element_values_are_checked() {
        assert!(matches!(
            NftBlocklist::element_value("10.0.0.0".parse().unwrap(), 24),
            Err(NftError::Ipv4Prefix { .. })
        ));
        assert!(matches!(
            NftBlocklist::element_value("2001:db8::1".parse().unwrap(), 0),
            Err(NftError::BadPrefix { .. })
        ));
        let v = NftBlocklist::element_value("2001:db8::1".parse().unwrap(), 64).unwrap();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"prefix":{"addr":"2001:db8::","len":64}}"#);
    }

    #[test]
    fn missing_nft_is_named() {
        let bl = NftBlocklist::new(NftConfig {
            program: "/nonexistent/nft".into(),
            ..NftConfig::default()
        });
        let e = bl
            .block("10.0.0.1".parse().unwrap(), 32, Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(e, NftError::NotInstalled { .. }), "{e}");
        assert!(e.to_string().contains("nftables"));
        assert!(!nft_available("/nonexistent/nft"));
    }
}
