//! Zone data and the precompiled form the query path answers from.
//!
//! [`ZoneData`] is the authoritative content (what updates change and the journal
//! replays). [`CompiledZone`] is derived from it after every change: each RRset is
//! already laid out as answer records whose owner is a compression pointer to the
//! question (offset 12), so answering a query is a hash lookup and a copy.

use std::collections::{BTreeMap, HashMap, HashSet};

use hickory_proto::rr::Name;

use crate::wire::{
    is_at_or_below, name_key, name_wire, u16_at, u32_at, C_IN, T_A, T_AAAA, T_CNAME, T_NS, T_SOA,
};

/// All RRs of one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RRset {
    /// TTL shared by the set.
    pub ttl: u32,
    /// Uncompressed wire RDATA of each RR, without duplicates.
    pub rdatas: Vec<Vec<u8>>,
}

/// The RRsets of one owner name.
#[derive(Debug, Clone)]
pub struct NodeData {
    /// The owner name as first written (case kept for answers).
    pub name: Name,
    /// RRsets by type.
    pub rrsets: BTreeMap<u16, RRset>,
}

/// The fields of the SOA RDATA this server needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoaFields {
    /// SERIAL.
    pub serial: u32,
    /// MINIMUM (negative caching TTL, RFC 2308).
    pub minimum: u32,
    /// TTL of the SOA RR itself.
    pub ttl: u32,
}

/// The authoritative content of one zone.
#[derive(Debug, Clone)]
pub struct ZoneData {
    /// The zone's apex name.
    pub origin: Name,
    /// Lower-case wire key of the apex.
    pub apex: Vec<u8>,
    /// Nodes by lower-case wire key.
    pub nodes: BTreeMap<Vec<u8>, NodeData>,
}

impl ZoneData {
    /// An empty zone.
    pub fn new(mut origin: Name) -> Self {
        origin.set_fqdn(true);
        Self {
            apex: name_key(&origin),
            origin,
            nodes: BTreeMap::new(),
        }
    }

    /// Adds one RR; returns whether anything changed. An RR that is already present only
    /// updates the set's TTL (RFC 2136 section 3.4.2.2).
    pub fn add_rr(&mut self, owner: &Name, rtype: u16, ttl: u32, rdata: Vec<u8>) -> bool {
        let key = name_key(owner);
        let node = self.nodes.entry(key).or_insert_with(|| NodeData {
            name: owner.clone(),
            rrsets: BTreeMap::new(),
        });
        let set = node.rrsets.entry(rtype).or_insert_with(|| RRset {
            ttl,
            rdatas: Vec::new(),
        });
        let mut changed = set.ttl != ttl;
        set.ttl = ttl;
        if rtype == T_SOA || rtype == T_CNAME {
            // Singleton types: the new RR replaces the old one.
            if set.rdatas.first() != Some(&rdata) {
                set.rdatas.clear();
                set.rdatas.push(rdata);
                changed = true;
            }
        } else if !set
            .rdatas
            .iter()
            .any(|r| crate::wire::rdata_eq(rtype, r, &rdata))
        {
            set.rdatas.push(rdata);
            changed = true;
        }
        changed
    }

    /// Node lookup by key.
    pub fn node(&self, key: &[u8]) -> Option<&NodeData> {
        self.nodes.get(key)
    }

    /// Removes empty sets and nodes below `key`'s node.
    pub fn prune(&mut self, key: &[u8]) {
        if let Some(n) = self.nodes.get_mut(key) {
            n.rrsets.retain(|_, s| !s.rdatas.is_empty());
            if n.rrsets.is_empty() {
                self.nodes.remove(key);
            }
        }
    }

    /// The SOA serial; 0 for a zone without a readable SOA.
    pub fn serial(&self) -> u32 {
        self.soa().map(|s| s.serial).unwrap_or(0)
    }

    /// The apex SOA fields.
    pub fn soa(&self) -> Option<SoaFields> {
        let set = self.nodes.get(&self.apex)?.rrsets.get(&T_SOA)?;
        let rd = set.rdatas.first()?;
        let p = soa_fixed_offset(rd)?;
        Some(SoaFields {
            serial: u32_at(rd, p)?,
            minimum: u32_at(rd, p + 16)?,
            ttl: set.ttl,
        })
    }

    /// Sets the apex SOA serial.
    pub fn set_serial(&mut self, serial: u32) {
        let apex = self.apex.clone();
        if let Some(rd) = self
            .nodes
            .get_mut(&apex)
            .and_then(|n| n.rrsets.get_mut(&T_SOA))
            .and_then(|s| s.rdatas.first_mut())
        {
            if let Some(p) = soa_fixed_offset(rd) {
                rd[p..p + 4].copy_from_slice(&serial.to_be_bytes());
            }
        }
    }

    /// Number of RRs in the zone.
    pub fn rr_count(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|n| n.rrsets.values())
            .map(|s| s.rdatas.len())
            .sum()
    }
}

/// Offset of SERIAL inside uncompressed SOA RDATA (after MNAME and RNAME).
fn soa_fixed_offset(rd: &[u8]) -> Option<usize> {
    let p = crate::wire::skip_name(rd, 0)?;
    let p = crate::wire::skip_name(rd, p)?;
    (rd.len() == p + 20).then_some(p)
}

/// The next serial in RFC 1982 arithmetic (0 is skipped, as BIND does).
pub fn next_serial(s: u32) -> u32 {
    match s.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// One RRset laid out as answer records with owner pointer `C0 0C`.
#[derive(Debug, Clone, Default)]
pub struct CompiledSet {
    /// RR type.
    pub rtype: u16,
    /// Number of records.
    pub count: u16,
    /// The records.
    pub blob: Vec<u8>,
}

impl CompiledSet {
    fn new(rtype: u16, set: &RRset) -> Self {
        let mut blob = Vec::with_capacity(set.rdatas.iter().map(|r| r.len() + 12).sum());
        for rd in &set.rdatas {
            blob.extend_from_slice(&[0xC0, 0x0C]);
            blob.extend_from_slice(&rtype.to_be_bytes());
            blob.extend_from_slice(&C_IN.to_be_bytes());
            blob.extend_from_slice(&set.ttl.to_be_bytes());
            blob.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            blob.extend_from_slice(rd);
        }
        Self {
            rtype,
            count: set.rdatas.len() as u16,
            blob,
        }
    }

    /// Appends the records with the owner written as `owner` (a pointer or a full name).
    pub fn emit_with_owner(&self, out: &mut Vec<u8>, owner: &[u8]) {
        if owner == [0xC0, 0x0C] {
            out.extend_from_slice(&self.blob);
            return;
        }
        let mut p = 0;
        while p + 12 <= self.blob.len() {
            let rdlen = u16_at(&self.blob, p + 10).unwrap_or(0) as usize;
            out.extend_from_slice(owner);
            out.extend_from_slice(&self.blob[p + 2..p + 12 + rdlen]);
            p += 12 + rdlen;
        }
    }
}

/// A name in the compiled zone.
#[derive(Debug, Clone, Default)]
pub struct CompiledNode {
    /// RRsets, sorted by type (few per name: a linear scan beats hashing).
    pub sets: Vec<CompiledSet>,
    /// Lower-case wire key of the CNAME target, when the node is an alias.
    pub cname_target: Option<Vec<u8>>,
}

impl CompiledNode {
    /// The set of a type.
    #[inline]
    pub fn set(&self, rtype: u16) -> Option<&CompiledSet> {
        self.sets.iter().find(|s| s.rtype == rtype)
    }
}

/// A delegation point below the apex.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// NS records (owner pointer patched at answer time).
    pub ns: CompiledSet,
    /// In-zone glue A/AAAA records with full owner names.
    pub glue: Vec<u8>,
    /// Number of glue records.
    pub glue_count: u16,
}

/// The answerable form of a zone.
#[derive(Debug, Clone)]
pub struct CompiledZone {
    /// Apex key.
    pub apex: Vec<u8>,
    /// Names (including empty non-terminals, which have no sets).
    pub nodes: HashMap<Vec<u8>, CompiledNode>,
    /// Delegation points strictly below the apex.
    pub cuts: HashMap<Vec<u8>, Cut>,
    /// The SOA RR body (type..RDATA, no owner) with the negative-caching TTL.
    pub soa_negative: Vec<u8>,
}

impl CompiledZone {
    /// Builds the compiled form of `z`.
    pub fn build(z: &ZoneData) -> Self {
        let mut nodes: HashMap<Vec<u8>, CompiledNode> = HashMap::with_capacity(z.nodes.len() * 2);
        let mut cut_keys = HashSet::new();
        for (key, node) in &z.nodes {
            let mut c = CompiledNode::default();
            for (&t, set) in &node.rrsets {
                if set.rdatas.is_empty() {
                    continue;
                }
                c.sets.push(CompiledSet::new(t, set));
                if t == T_CNAME {
                    c.cname_target = crate::wire::skip_name(&set.rdatas[0], 0)
                        .map(|end| set.rdatas[0][..end].to_ascii_lowercase());
                }
                if t == T_NS && *key != z.apex {
                    cut_keys.insert(key.clone());
                }
            }
            // Empty non-terminals: every ancestor up to the apex exists (NODATA, not NXDOMAIN).
            let mut p = 0;
            while key.len() - p > z.apex.len() && key[p] != 0 {
                p += 1 + key[p] as usize;
                nodes.entry(key[p..].to_vec()).or_default();
            }
            nodes.insert(key.clone(), c);
        }
        let mut cuts = HashMap::new();
        for key in cut_keys {
            let node = &z.nodes[&key];
            let ns = CompiledSet::new(T_NS, &node.rrsets[&T_NS]);
            let mut glue = Vec::new();
            let mut glue_count = 0u16;
            for rd in &node.rrsets[&T_NS].rdatas {
                let target = rd.to_ascii_lowercase();
                if !is_at_or_below(&target, &z.apex) {
                    continue;
                }
                if let Some(tn) = z.nodes.get(&target) {
                    for t in [T_A, T_AAAA] {
                        if let Some(set) = tn.rrsets.get(&t) {
                            CompiledSet::new(t, set)
                                .emit_with_owner(&mut glue, &name_wire(&tn.name));
                            glue_count += set.rdatas.len() as u16;
                        }
                    }
                }
            }
            cuts.insert(
                key,
                Cut {
                    ns,
                    glue,
                    glue_count,
                },
            );
        }
        let mut soa_negative = Vec::new();
        if let (Some(f), Some(set)) = (
            z.soa(),
            z.nodes.get(&z.apex).and_then(|n| n.rrsets.get(&T_SOA)),
        ) {
            let rd = &set.rdatas[0];
            soa_negative.extend_from_slice(&T_SOA.to_be_bytes());
            soa_negative.extend_from_slice(&C_IN.to_be_bytes());
            soa_negative.extend_from_slice(&f.ttl.min(f.minimum).to_be_bytes());
            soa_negative.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            soa_negative.extend_from_slice(rd);
        }
        Self {
            apex: z.apex.clone(),
            nodes,
            cuts,
            soa_negative,
        }
    }
}

/// A zone: its data and its compiled form, always in step.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Authoritative content.
    pub data: ZoneData,
    /// Answerable form of `data`.
    pub compiled: CompiledZone,
    /// The recent changes that led to `data`, oldest first (IXFR answers from them).
    pub history: std::sync::Arc<[std::sync::Arc<crate::transfer::Diff>]>,
}

impl Zone {
    /// Compiles `data`, with no history.
    pub fn new(data: ZoneData) -> Self {
        Self::with_history(data, Vec::new().into())
    }

    /// Compiles `data`, which `history` led to.
    pub fn with_history(
        data: ZoneData,
        history: std::sync::Arc<[std::sync::Arc<crate::transfer::Diff>]>,
    ) -> Self {
        let compiled = CompiledZone::build(&data);
        Self {
            data,
            compiled,
            history,
        }
    }
}

/// All zones served.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Zones, in no order.
    pub zones: Vec<std::sync::Arc<Zone>>,
}

impl Catalog {
    /// The index of the deepest zone containing `key`.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, z) in self.zones.iter().enumerate() {
            let al = z.compiled.apex.len();
            if best.is_some_and(|(_, l)| l >= al) {
                continue;
            }
            if is_at_or_below(key, &z.compiled.apex) {
                best = Some((i, al));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The index of the zone whose apex is exactly `key`.
    pub fn find_exact(&self, key: &[u8]) -> Option<usize> {
        self.zones.iter().position(|z| z.data.apex == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_wraps_and_skips_zero() {
        assert_eq!(next_serial(1), 2);
        assert_eq!(next_serial(u32::MAX), 1);
    }

    #[test]
    fn add_dedups_and_updates_ttl() {
        let mut z = ZoneData::new(Name::from_ascii("example.com.").unwrap());
        let n = Name::from_ascii("www.example.com.").unwrap();
        assert!(z.add_rr(&n, 65280, 60, vec![1, 2, 3, 4]));
        assert!(!z.add_rr(&n, 65280, 60, vec![1, 2, 3, 4]));
        assert!(z.add_rr(&n, 65280, 30, vec![1, 2, 3, 4]));
        assert_eq!(z.rr_count(), 1);
    }

    #[test]
    fn empty_non_terminals_exist() {
        let mut z = ZoneData::new(Name::from_ascii("example.com.").unwrap());
        z.add_rr(
            &Name::from_ascii("a.b.c.example.com.").unwrap(),
            1,
            60,
            vec![1, 2, 3, 4],
        );
        let c = CompiledZone::build(&z);
        assert!(c.nodes.contains_key(&b"\x01c\x07example\x03com\x00"[..]));
        assert!(c
            .nodes
            .contains_key(&b"\x01b\x01c\x07example\x03com\x00"[..]));
        assert!(!c.nodes.contains_key(&b"\x01x\x07example\x03com\x00"[..]));
    }
}
