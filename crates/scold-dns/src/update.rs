//! RFC 2136 dynamic update, sans-IO: prerequisites, permission, update, and the
//! resulting change set that the journal records.
//!
//! The caller has already authenticated the request (TSIG) and found which key signed
//! it; this module decides, for that key's [`Policy`], what the update does to a
//! [`ZoneData`] and which RCODE answers it. On any error nothing changes.

use std::collections::{BTreeMap, BTreeSet};

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use crate::answer::rcode;
use crate::wire::{
    coexists_with_cname, is_at_or_below, name_key, name_wire, rdata_eq, rdata_wire, T_ANY, T_CNAME,
    T_NS, T_SOA,
};
use crate::zone::{next_serial, RRset, ZoneData};

/// Which names a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Exactly this name (lower-case wire key).
    Exact(Vec<u8>),
    /// Any name strictly below this one (`*.example.com`).
    Below(Vec<u8>),
}

impl NamePattern {
    /// Parses `www.example.com` or `*.example.com`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (below, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let mut n =
            Name::from_ascii(rest).map_err(|e| format!("`{s}` is not a domain name: {e}"))?;
        n.set_fqdn(true);
        let k = name_key(&n);
        Ok(if below {
            Self::Below(k)
        } else {
            Self::Exact(k)
        })
    }

    fn matches(&self, key: &[u8]) -> bool {
        match self {
            Self::Exact(k) => k == key,
            Self::Below(k) => key != k.as_slice() && is_at_or_below(key, k),
        }
    }
}

/// One permission: these names, these types (`None` = every type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Names covered.
    pub names: Vec<NamePattern>,
    /// Types covered; `None` means all, which is also what deleting a whole name needs.
    pub types: Option<BTreeSet<u16>>,
}

/// What one key may change. An empty policy allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Grants; any one that matches allows the change.
    pub grants: Vec<Grant>,
}

impl Policy {
    /// Whether the key may change `rtype` (`T_ANY`: every type) at the name `key`.
    pub fn allows(&self, key: &[u8], rtype: u16) -> bool {
        self.grants.iter().any(|g| {
            g.names.iter().any(|p| p.matches(key))
                && match &g.types {
                    None => true,
                    Some(ts) => rtype != T_ANY && ts.contains(&rtype),
                }
        })
    }
}

/// The new content of one RRset after an update (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Owner, uncompressed wire form, case kept.
    pub name: Vec<u8>,
    /// Type.
    pub rtype: u16,
    /// The set after the update.
    pub set: Option<RRset>,
}

/// An applied update, as the journal stores it: the final state of every RRset it
/// touched, so replaying it twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// Zone apex (lower-case wire key).
    pub zone: Vec<u8>,
    /// SOA serial before the change (the first entry's is the journal's base serial).
    pub prev_serial: u32,
    /// SOA serial after the change.
    pub serial: u32,
    /// Touched RRsets.
    pub changes: Vec<Change>,
}

/// The result of processing an update.
#[derive(Debug)]
pub enum UpdateResult {
    /// Prerequisites held and nothing needed to change.
    NoChange,
    /// The zone changed; `zone` is its new content.
    Changed {
        /// New zone content.
        zone: Box<ZoneData>,
        /// What to journal.
        changes: ChangeSet,
    },
    /// Refused with this RCODE; nothing changed.
    Error(u16, String),
}

fn meta_type(t: u16) -> bool {
    // OPT, TSIG, TKEY, IXFR, AXFR, MAILB, MAILA, ANY and the SIG-like types are not data.
    matches!(t, 0 | 41 | 249 | 250 | 251 | 252 | 253 | 254 | 255)
}

fn rd_bytes(r: &Record) -> Result<Option<Vec<u8>>, String> {
    match &r.data {
        RData::Update0(_) => Ok(None),
        d => rdata_wire(d).map(Some).map_err(|e| e.to_string()),
    }
}

/// Applies an UPDATE message for `zone` under `policy` (RFC 2136 section 3).
pub fn apply(msg: &Message, zone: &ZoneData, policy: &Policy, alt_type: u16) -> UpdateResult {
    use UpdateResult::Error as E;
    // 3.1: zone section.
    if msg.queries.len() != 1 {
        return E(
            rcode::FORMERR,
            "the zone section must hold exactly one zone".into(),
        );
    }
    let zq = &msg.queries[0];
    if u16::from(zq.query_type()) != T_SOA || zq.query_class() != DNSClass::IN {
        return E(
            rcode::FORMERR,
            "the zone section must be `<zone> IN SOA`".into(),
        );
    }
    let apex = &zone.apex;

    // 3.2: prerequisites.
    let mut value_sets: BTreeMap<(Vec<u8>, u16), Vec<Vec<u8>>> = BTreeMap::new();
    for r in &msg.answers {
        let key = name_key(&r.name);
        let t = u16::from(r.record_type());
        if r.ttl != 0 {
            return E(
                rcode::FORMERR,
                format!("prerequisite {} has a non-zero TTL", r.name),
            );
        }
        if !is_at_or_below(&key, apex) {
            return E(
                rcode::NOTZONE,
                format!("prerequisite {} is outside the zone", r.name),
            );
        }
        let rd = match rd_bytes(r) {
            Ok(x) => x,
            Err(e) => return E(rcode::FORMERR, e),
        };
        let node = zone.node(&key);
        match r.dns_class {
            DNSClass::ANY => {
                if rd.is_some() {
                    return E(rcode::FORMERR, "class ANY prerequisite with RDATA".into());
                }
                if t == T_ANY {
                    if node.is_none_or(|n| n.rrsets.is_empty()) {
                        return E(
                            rcode::NXDOMAIN,
                            format!("prerequisite failed: {} is not in use", r.name),
                        );
                    }
                } else if node.and_then(|n| n.rrsets.get(&t)).is_none() {
                    return E(
                        rcode::NXRRSET,
                        format!("prerequisite failed: no {t} RRset at {}", r.name),
                    );
                }
            }
            DNSClass::NONE => {
                if rd.is_some() {
                    return E(rcode::FORMERR, "class NONE prerequisite with RDATA".into());
                }
                if t == T_ANY {
                    if node.is_some_and(|n| !n.rrsets.is_empty()) {
                        return E(
                            rcode::YXDOMAIN,
                            format!("prerequisite failed: {} is in use", r.name),
                        );
                    }
                } else if node.and_then(|n| n.rrsets.get(&t)).is_some() {
                    return E(
                        rcode::YXRRSET,
                        format!("prerequisite failed: a {t} RRset exists at {}", r.name),
                    );
                }
            }
            DNSClass::IN => {
                if meta_type(t) {
                    return E(rcode::FORMERR, format!("prerequisite of meta type {t}"));
                }
                let Some(rd) = rd else {
                    return E(
                        rcode::FORMERR,
                        "value-dependent prerequisite without RDATA".into(),
                    );
                };
                value_sets.entry((key, t)).or_default().push(rd);
            }
            _ => {
                return E(
                    rcode::FORMERR,
                    format!("prerequisite of class {}", r.dns_class),
                )
            }
        }
    }
    for ((key, t), want) in &value_sets {
        let have = zone.node(key).and_then(|n| n.rrsets.get(t));
        let same = have.is_some_and(|h| {
            h.rdatas
                .iter()
                .all(|a| want.iter().any(|b| rdata_eq(*t, a, b)))
                && want
                    .iter()
                    .all(|b| h.rdatas.iter().any(|a| rdata_eq(*t, a, b)))
        });
        if !same {
            return E(rcode::NXRRSET, "prerequisite failed: RRset differs".into());
        }
    }

    // 3.3 and 3.4.1: permission and prescan, before anything changes.
    struct Op {
        name: Name,
        key: Vec<u8>,
        class: DNSClass,
        rtype: u16,
        ttl: u32,
        rd: Option<Vec<u8>>,
    }
    let mut ops = Vec::with_capacity(msg.authorities.len());
    for r in &msg.authorities {
        let key = name_key(&r.name);
        let t = u16::from(r.record_type());
        if !is_at_or_below(&key, apex) {
            return E(
                rcode::NOTZONE,
                format!("update of {} is outside the zone", r.name),
            );
        }
        let rd = match rd_bytes(r) {
            Ok(x) => x,
            Err(e) => return E(rcode::FORMERR, e),
        };
        match r.dns_class {
            DNSClass::IN => {
                if meta_type(t) {
                    return E(
                        rcode::FORMERR,
                        format!("cannot add a record of meta type {t}"),
                    );
                }
                let Some(rd) = &rd else {
                    return E(rcode::FORMERR, format!("add of {} without RDATA", r.name));
                };
                if let Err(e) = crate::zonefile::check_wire_rdata(t, rd, alt_type) {
                    return E(rcode::FORMERR, format!("{}: {e}", r.name));
                }
                if r.ttl > i32::MAX as u32 {
                    return E(rcode::FORMERR, "TTL above 2^31-1".into());
                }
            }
            DNSClass::ANY => {
                if r.ttl != 0 || rd.is_some() || matches!(t, 251..=254) {
                    return E(rcode::FORMERR, format!("malformed delete of {}", r.name));
                }
            }
            DNSClass::NONE => {
                if r.ttl != 0 || rd.is_none() || meta_type(t) {
                    return E(rcode::FORMERR, format!("malformed delete-RR of {}", r.name));
                }
            }
            _ => return E(rcode::FORMERR, format!("update of class {}", r.dns_class)),
        }
        if !policy.allows(&key, t) {
            return E(
                rcode::REFUSED,
                format!(
                    "the key may not change {} records at {}",
                    crate::wire::type_name(t, alt_type),
                    r.name
                ),
            );
        }
        ops.push(Op {
            name: r.name.clone(),
            key,
            class: r.dns_class,
            rtype: t,
            ttl: r.ttl,
            rd,
        });
    }

    // 3.4.2: apply to a copy.
    let mut z = zone.clone();
    let mut touched: BTreeSet<(Vec<u8>, u16)> = BTreeSet::new();
    let old_serial = zone.serial();
    let mut soa_serial_set = false;
    for op in &ops {
        let at_apex = op.key == *apex;
        match op.class {
            DNSClass::IN => {
                let rd = op.rd.clone().unwrap_or_default();
                let node = z.node(&op.key);
                // RFC 2136 section 3.4.2.2, as BIND does it: a CNAME add at a name with
                // other data, or other data at a CNAME, is ignored (the rest of the
                // update still applies), so no update can make "CNAME and other data".
                let has_cname = node.is_some_and(|n| n.rrsets.contains_key(&T_CNAME));
                let has_other = node.is_some_and(|n| {
                    n.rrsets
                        .keys()
                        .any(|&k| k != T_CNAME && !coexists_with_cname(k))
                });
                if op.rtype == T_CNAME && has_other {
                    tracing::info!(name = %op.name, "UPDATE: attempt to add a CNAME beside other data ignored");
                    continue;
                }
                if op.rtype != T_CNAME && has_cname && !coexists_with_cname(op.rtype) {
                    tracing::info!(name = %op.name, rtype = op.rtype, "UPDATE: attempt to add other data beside a CNAME ignored");
                    continue;
                }
                if op.rtype == T_SOA {
                    if !at_apex {
                        continue;
                    }
                    let new_serial = soa_serial_of(&rd);
                    if !new_serial.is_some_and(|s| serial_gt(s, old_serial)) {
                        continue;
                    }
                    soa_serial_set = true;
                }
                if z.add_rr(&op.name, op.rtype, op.ttl, rd) {
                    touched.insert((op.key.clone(), op.rtype));
                }
            }
            DNSClass::ANY => {
                let Some(node) = z.nodes.get_mut(&op.key) else {
                    continue;
                };
                let types: Vec<u16> = if op.rtype == T_ANY {
                    node.rrsets.keys().copied().collect()
                } else {
                    vec![op.rtype]
                };
                for t in types {
                    if at_apex && (t == T_SOA || t == T_NS) {
                        continue;
                    }
                    if node.rrsets.remove(&t).is_some() {
                        touched.insert((op.key.clone(), t));
                    }
                }
                z.prune(&op.key);
            }
            DNSClass::NONE => {
                if op.rtype == T_SOA {
                    continue;
                }
                let Some(set) = z
                    .nodes
                    .get_mut(&op.key)
                    .and_then(|n| n.rrsets.get_mut(&op.rtype))
                else {
                    continue;
                };
                if at_apex && op.rtype == T_NS && set.rdatas.len() == 1 {
                    continue;
                }
                let rd = op.rd.as_deref().unwrap_or_default();
                let before = set.rdatas.len();
                set.rdatas.retain(|x| !rdata_eq(op.rtype, x, rd));
                if set.rdatas.len() != before {
                    touched.insert((op.key.clone(), op.rtype));
                }
                z.prune(&op.key);
            }
            _ => {}
        }
    }
    if touched.is_empty() {
        return UpdateResult::NoChange;
    }
    if !soa_serial_set {
        z.set_serial(next_serial(old_serial));
    }
    touched.insert((apex.clone(), T_SOA));
    let serial = z.serial();
    let changes = touched
        .into_iter()
        .map(|(key, t)| {
            let node = z.node(&key);
            Change {
                name: node
                    .map(|n| name_wire(&n.name))
                    .unwrap_or_else(|| key.clone()),
                rtype: t,
                set: node.and_then(|n| n.rrsets.get(&t)).cloned(),
            }
        })
        .collect();
    UpdateResult::Changed {
        changes: ChangeSet {
            zone: apex.clone(),
            prev_serial: old_serial,
            serial,
            changes,
        },
        zone: Box::new(z),
    }
}

fn soa_serial_of(rd: &[u8]) -> Option<u32> {
    let p = crate::wire::skip_name(rd, 0)?;
    let p = crate::wire::skip_name(rd, p)?;
    crate::wire::u32_at(rd, p)
}

/// RFC 1982: whether serial `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// Replays a journaled change set onto `z` (idempotent).
pub fn replay(z: &mut ZoneData, cs: &ChangeSet) {
    for c in &cs.changes {
        let name = crate::wire::key_to_name(&c.name);
        let key = name_key(&name);
        match &c.set {
            Some(set) => {
                let node = z
                    .nodes
                    .entry(key.clone())
                    .or_insert_with(|| crate::zone::NodeData {
                        name: name.clone(),
                        rrsets: BTreeMap::new(),
                    });
                node.rrsets.insert(c.rtype, set.clone());
            }
            None => {
                if let Some(n) = z.nodes.get_mut(&key) {
                    n.rrsets.remove(&c.rtype);
                }
                z.prune(&key);
            }
        }
    }
    let cur = z.serial();
    if serial_gt(cs.serial, cur) {
        z.set_serial(cs.serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::rcode::{NXRRSET, YXDOMAIN, YXRRSET};
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::NULL;
    use hickory_proto::rr::RecordType;

    const ALT: u16 = 65280;

    fn zone() -> ZoneData {
        let text = "$TTL 60\n@ SOA ns1 h 10 3600 900 604800 60\n@ NS ns1\nns1 A 192.0.2.53\nwww A 192.0.2.10\nwww ALT 10.0.0.1\nother A 192.0.2.20\n";
        crate::zonefile::parse(text, "t", &n("example.com."), ALT).unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn alt_rr(name: &str, ip: [u8; 4], class: DNSClass, ttl: u32) -> Record {
        let mut r = Record::from_rdata(
            n(name),
            ttl,
            RData::Unknown {
                code: RecordType::Unknown(ALT),
                rdata: NULL::with(ip.to_vec()),
            },
        );
        r.dns_class = class;
        r
    }

    fn msg(prereq: Vec<Record>, updates: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Query, OpCode::Update);
        let mut q = Query::query(n("example.com."), RecordType::SOA);
        q.set_query_class(DNSClass::IN);
        m.add_query(q);
        m.answers = prereq;
        m.authorities = updates;
        m
    }

    fn alt_policy() -> Policy {
        Policy {
            grants: vec![Grant {
                names: vec![NamePattern::parse("*.example.com").unwrap()],
                types: Some([ALT].into_iter().collect()),
            }],
        }
    }

    fn changed(r: UpdateResult) -> (ZoneData, ChangeSet) {
        match r {
            UpdateResult::Changed { zone, changes } => (*zone, changes),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn alt_set(z: &ZoneData, name: &str) -> Vec<Vec<u8>> {
        z.node(&name_key(&n(name)))
            .and_then(|x| x.rrsets.get(&ALT))
            .map(|s| s.rdatas.clone())
            .unwrap_or_default()
    }

    #[test]
    fn add_replace_and_delete_alt_bumps_serial() {
        let z0 = zone();
        let m = msg(
            vec![],
            vec![
                alt_rr("www.example.com.", [0; 4], DNSClass::ANY, 0).clone(),
                alt_rr("www.example.com.", [10, 0, 0, 2], DNSClass::IN, 30),
                alt_rr("www.example.com.", [10, 0, 0, 3], DNSClass::IN, 30),
            ],
        );
        // The class-ANY delete has no RDATA.
        let mut m = m;
        m.authorities[0].data = RData::Update0(RecordType::Unknown(ALT));
        let (z1, cs) = changed(apply(&m, &z0, &alt_policy(), ALT));
        assert_eq!(
            alt_set(&z1, "www.example.com."),
            vec![vec![10, 0, 0, 2], vec![10, 0, 0, 3]]
        );
        assert_eq!(z1.soa().unwrap().serial, 11);
        assert_eq!(cs.serial, 11);
        // Replaying the change set on the original gives the same zone.
        let mut z2 = z0.clone();
        replay(&mut z2, &cs);
        assert_eq!(
            alt_set(&z2, "www.example.com."),
            alt_set(&z1, "www.example.com.")
        );
        assert_eq!(z2.soa(), z1.soa());
        replay(&mut z2, &cs);
        assert_eq!(z2.soa(), z1.soa(), "replay is idempotent");

        // Delete one RR.
        let m = msg(
            vec![],
            vec![alt_rr("www.example.com.", [10, 0, 0, 2], DNSClass::NONE, 0)],
        );
        let (z3, _) = changed(apply(&m, &z1, &alt_policy(), ALT));
        assert_eq!(alt_set(&z3, "www.example.com."), vec![vec![10, 0, 0, 3]]);
        assert_eq!(z3.soa().unwrap().serial, 12);
        // Deleting it again changes nothing.
        let m = msg(
            vec![],
            vec![alt_rr("www.example.com.", [10, 0, 0, 2], DNSClass::NONE, 0)],
        );
        assert!(matches!(
            apply(&m, &z3, &alt_policy(), ALT),
            UpdateResult::NoChange
        ));
    }

    #[test]
    fn policy_refuses_other_names_and_types() {
        let z0 = zone();
        // Apex is not below *.example.com.
        let m = msg(
            vec![],
            vec![alt_rr("example.com.", [1, 2, 3, 4], DNSClass::IN, 30)],
        );
        assert!(matches!(
            apply(&m, &z0, &alt_policy(), ALT),
            UpdateResult::Error(5, _)
        ));
        // A records are not granted.
        let mut r = Record::from_rdata(
            n("www.example.com."),
            30,
            RData::A("1.2.3.4".parse().unwrap()),
        );
        r.dns_class = DNSClass::IN;
        let m = msg(
            vec![],
            vec![alt_rr("x.example.com.", [1, 2, 3, 4], DNSClass::IN, 30), r],
        );
        assert!(matches!(
            apply(&m, &z0, &alt_policy(), ALT),
            UpdateResult::Error(5, _)
        ));
        // An empty policy allows nothing.
        let m = msg(
            vec![],
            vec![alt_rr("x.example.com.", [1, 2, 3, 4], DNSClass::IN, 30)],
        );
        assert!(matches!(
            apply(&m, &z0, &Policy::default(), ALT),
            UpdateResult::Error(5, _)
        ));
        // Deleting a whole name needs a grant for every type.
        let mut d = alt_rr("www.example.com.", [0; 4], DNSClass::ANY, 0);
        d.data = RData::Update0(RecordType::ANY);
        let m = msg(vec![], vec![d]);
        assert!(matches!(
            apply(&m, &z0, &alt_policy(), ALT),
            UpdateResult::Error(5, _)
        ));
    }

    #[test]
    fn prerequisites_and_format_errors() {
        let z0 = zone();
        let p = alt_policy();
        let mut exists = alt_rr("nope.example.com.", [0; 4], DNSClass::ANY, 0);
        exists.data = RData::Update0(RecordType::ANY);
        let m = msg(
            vec![exists],
            vec![alt_rr("x.example.com.", [1, 2, 3, 4], DNSClass::IN, 30)],
        );
        assert!(matches!(apply(&m, &z0, &p, ALT), UpdateResult::Error(3, _)));
        let mut notexists = alt_rr("www.example.com.", [0; 4], DNSClass::NONE, 0);
        notexists.data = RData::Update0(RecordType::ANY);
        let m = msg(vec![notexists], vec![]);
        assert!(matches!(
            apply(&m, &z0, &p, ALT),
            UpdateResult::Error(YXDOMAIN, _)
        ));
        let mut rrset = alt_rr("www.example.com.", [0; 4], DNSClass::NONE, 0);
        rrset.data = RData::Update0(RecordType::Unknown(ALT));
        let m = msg(vec![rrset], vec![]);
        assert!(matches!(
            apply(&m, &z0, &p, ALT),
            UpdateResult::Error(YXRRSET, _)
        ));
        // Value-dependent: www ALT is exactly {10.0.0.1}.
        let m = msg(
            vec![alt_rr("www.example.com.", [10, 0, 0, 1], DNSClass::IN, 0)],
            vec![],
        );
        assert!(matches!(apply(&m, &z0, &p, ALT), UpdateResult::NoChange));
        let m = msg(
            vec![alt_rr("www.example.com.", [10, 0, 0, 9], DNSClass::IN, 0)],
            vec![],
        );
        assert!(matches!(
            apply(&m, &z0, &p, ALT),
            UpdateResult::Error(NXRRSET, _)
        ));
        // Out of zone.
        let m = msg(
            vec![],
            vec![alt_rr("www.example.org.", [1, 2, 3, 4], DNSClass::IN, 30)],
        );
        assert!(matches!(
            apply(&m, &z0, &p, ALT),
            UpdateResult::Error(10, _)
        ));
        // Malformed ALT RDATA is refused.
        let mut bad = alt_rr("x.example.com.", [1, 2, 3, 4], DNSClass::IN, 30);
        bad.data = RData::Unknown {
            code: RecordType::Unknown(ALT),
            rdata: NULL::with(vec![1, 2, 3]),
        };
        let m = msg(vec![], vec![bad]);
        assert!(matches!(apply(&m, &z0, &p, ALT), UpdateResult::Error(1, _)));
        // Non-zero TTL on a prerequisite.
        let m = msg(
            vec![alt_rr("www.example.com.", [10, 0, 0, 1], DNSClass::IN, 5)],
            vec![],
        );
        assert!(matches!(apply(&m, &z0, &p, ALT), UpdateResult::Error(1, _)));
    }

    fn everything() -> Policy {
        Policy {
            grants: vec![Grant {
                names: vec![
                    NamePattern::parse("example.com").unwrap(),
                    NamePattern::parse("*.example.com").unwrap(),
                ],
                types: None,
            }],
        }
    }

    proptest::proptest! {
        // Any UPDATE either fails cleanly or yields a change set whose replay on the
        // old zone gives exactly the new one (what the journal relies on).
        #[test]
        fn random_updates_replay_to_the_same_zone(
            ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..4, 0u8..3), 0..8)
        ) {
            let z0 = zone();
            let names = ["www.example.com.", "new.example.com.", "example.com."];
            let mut ups = Vec::new();
            for (kind, name, last, ty) in ops {
                let nm = names[name as usize];
                let mut r = alt_rr(nm, [10, 0, 0, last], DNSClass::IN, 30);
                if ty == 1 {
                    r.data = RData::A(std::net::Ipv4Addr::new(10, 0, 0, last).into());
                }
                if ty == 2 {
                    r.data = RData::Update0(RecordType::NS);
                    r.dns_class = DNSClass::ANY;
                    r.ttl = 0;
                }
                match kind {
                    1 => { r.dns_class = DNSClass::NONE; r.ttl = 0; }
                    2 => { r.data = RData::Update0(r.record_type()); r.dns_class = DNSClass::ANY; r.ttl = 0; }
                    3 => { r.data = RData::Update0(RecordType::ANY); r.dns_class = DNSClass::ANY; r.ttl = 0; }
                    _ => {}
                }
                ups.push(r);
            }
            let m = msg(vec![], ups);
            if let UpdateResult::Changed { zone, changes } = apply(&m, &z0, &everything(), ALT) {
                let mut z = z0.clone();
                replay(&mut z, &changes);
                proptest::prop_assert_eq!(&z.nodes.keys().collect::<Vec<_>>(), &zone.nodes.keys().collect::<Vec<_>>());
                for (k, n) in &zone.nodes {
                    proptest::prop_assert_eq!(&z.nodes[k].rrsets, &n.rrsets);
                }
                // The apex keeps its SOA and NS whatever the update said.
                let apex = z.node(&z.apex).unwrap();
                proptest::prop_assert!(apex.rrsets.contains_key(&T_SOA));
                proptest::prop_assert!(apex.rrsets.contains_key(&T_NS));
                proptest::prop_assert!(serial_gt(zone.soa().unwrap().serial, z0.soa().unwrap().serial));
            }
        }

        #[test]
        fn random_bytes_as_update_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 12..200)) {
            if let Ok(m) = Message::from_vec(&b) {
                let _ = apply(&m, &zone(), &everything(), ALT);
            }
        }
    }

    fn rr(name: &str, data: RData) -> Record {
        let mut r = Record::from_rdata(n(name), 30, data);
        r.dns_class = DNSClass::IN;
        r
    }

    fn cname(target: &str) -> RData {
        RData::CNAME(hickory_proto::rr::rdata::CNAME(n(target)))
    }

    /// RFC 2136 section 3.4.2.2 as BIND applies it: a CNAME add at a name with other
    /// data and other data at a CNAME are ignored, the rest of the update applies.
    #[test]
    fn no_update_makes_cname_and_other_data() {
        let z0 = zone();
        let m = msg(
            vec![],
            vec![
                rr("www.example.com.", cname("other.example.com.")),
                rr("new.example.com.", RData::A("192.0.2.1".parse().unwrap())),
            ],
        );
        let (z1, _) = changed(apply(&m, &z0, &everything(), ALT));
        let www = z1.node(&name_key(&n("www.example.com."))).unwrap();
        assert!(!www.rrsets.contains_key(&T_CNAME), "CNAME beside A added");
        assert!(z1.node(&name_key(&n("new.example.com."))).is_some());

        // A CNAME at a new name, then other data there: the other data is ignored,
        // whether in the same update or a later one.
        let m = msg(
            vec![],
            vec![
                rr("alias.example.com.", cname("www.example.com.")),
                rr("alias.example.com.", RData::A("192.0.2.2".parse().unwrap())),
                alt_rr("alias.example.com.", [10, 0, 0, 9], DNSClass::IN, 30),
            ],
        );
        let (z2, _) = changed(apply(&m, &z1, &everything(), ALT));
        let alias = z2.node(&name_key(&n("alias.example.com."))).unwrap();
        assert_eq!(
            alias.rrsets.keys().copied().collect::<Vec<_>>(),
            vec![T_CNAME]
        );
        let m = msg(
            vec![],
            vec![rr(
                "alias.example.com.",
                RData::A("192.0.2.3".parse().unwrap()),
            )],
        );
        assert!(matches!(
            apply(&m, &z2, &everything(), ALT),
            UpdateResult::NoChange
        ));
        // A new CNAME at a CNAME replaces it; deleting the A first lets a CNAME in.
        let m = msg(
            vec![],
            vec![rr("alias.example.com.", cname("ns1.example.com."))],
        );
        let (z3, _) = changed(apply(&m, &z2, &everything(), ALT));
        assert_eq!(
            z3.node(&name_key(&n("alias.example.com."))).unwrap().rrsets[&T_CNAME].rdatas,
            vec![name_wire(&n("ns1.example.com."))]
        );
        let mut del = rr("other.example.com.", RData::Update0(RecordType::ANY));
        del.dns_class = DNSClass::ANY;
        del.ttl = 0;
        let m = msg(
            vec![],
            vec![del, rr("other.example.com.", cname("www.example.com."))],
        );
        let (z4, _) = changed(apply(&m, &z3, &everything(), ALT));
        let other = z4.node(&name_key(&n("other.example.com."))).unwrap();
        assert_eq!(
            other.rrsets.keys().copied().collect::<Vec<_>>(),
            vec![T_CNAME]
        );
    }

    #[test]
    fn patterns() {
        let below = NamePattern::parse("*.example.com").unwrap();
        assert!(below.matches(&name_key(&n("a.b.example.com."))));
        assert!(!below.matches(&name_key(&n("example.com."))));
        let exact = NamePattern::parse("www.example.com.").unwrap();
        assert!(exact.matches(&name_key(&n("WWW.example.com."))));
        assert!(!exact.matches(&name_key(&n("x.www.example.com."))));
        assert!(serial_gt(1, u32::MAX));
        assert!(!serial_gt(5, 5));
    }
}
