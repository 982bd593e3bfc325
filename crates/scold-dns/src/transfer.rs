//! Zone transfers to secondaries (sans-IO): AXFR (RFC 5936) and IXFR (RFC 1995) answers
//! built from a zone and its recent history, cut into messages and signed with TSIG
//! (RFC 8945 section 5.3.1 for answers that span several messages).
//!
//! The history is the list of [`Diff`]s between consecutive serials, made when an
//! update is applied and when the journal is replayed at start. It is bounded; an IXFR
//! from a serial it no longer reaches is answered with the whole zone, as RFC 1995
//! section 4 allows.

use std::sync::Arc;

use crate::tsig::{self, TsigKey};
use crate::update::serial_gt;
use crate::wire::{key_to_name, name_key, name_wire, C_IN, T_SOA};
use crate::zone::{RRset, ZoneData};

/// Differences kept per zone; an IXFR from an older serial gets the whole zone.
pub const HISTORY_LIMIT: usize = 512;

/// Largest transfer message before its TSIG record: well under the 64 KiB TCP limit,
/// and small enough that a zone of a few thousand records spans several messages.
pub const MESSAGE_LIMIT: usize = 16 * 1024;

/// One resource record in uncompressed wire parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    /// Owner, uncompressed wire form, case kept.
    pub name: Vec<u8>,
    /// Type.
    pub rtype: u16,
    /// TTL.
    pub ttl: u32,
    /// RDATA, uncompressed.
    pub rdata: Vec<u8>,
}

impl Rr {
    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.rtype.to_be_bytes());
        out.extend_from_slice(&C_IN.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(&(self.rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.rdata);
    }

    fn wire_len(&self) -> usize {
        self.name.len() + 10 + self.rdata.len()
    }

    /// The SOA serial, when this is a SOA record.
    pub fn serial(&self) -> Option<u32> {
        let p = crate::wire::skip_name(&self.rdata, 0)?;
        let p = crate::wire::skip_name(&self.rdata, p)?;
        crate::wire::u32_at(&self.rdata, p)
    }
}

/// The change from one serial to the next, as IXFR sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The SOA before.
    pub from: Rr,
    /// The SOA after.
    pub to: Rr,
    /// Records removed (never the SOA).
    pub removed: Vec<Rr>,
    /// Records added (never the SOA).
    pub added: Vec<Rr>,
}

impl Diff {
    /// Serial before.
    pub fn from_serial(&self) -> u32 {
        self.from.serial().unwrap_or(0)
    }

    /// Serial after.
    pub fn to_serial(&self) -> u32 {
        self.to.serial().unwrap_or(0)
    }
}

/// The apex SOA record of `z`.
pub fn soa_rr(z: &ZoneData) -> Option<Rr> {
    let apex = z.nodes.get(&z.apex)?;
    let set = apex.rrsets.get(&T_SOA)?;
    Some(Rr {
        name: name_wire(&apex.name),
        rtype: T_SOA,
        ttl: set.ttl,
        rdata: set.rdatas.first()?.clone(),
    })
}

fn set_of<'a>(z: &'a ZoneData, key: &[u8], rtype: u16) -> Option<(&'a RRset, Vec<u8>)> {
    let node = z.nodes.get(key)?;
    node.rrsets.get(&rtype).map(|s| (s, name_wire(&node.name)))
}

/// The touched RRsets and the apex SOA of `z`: enough of it for [`diff`] to compare
/// against once `z` has changed, without copying the whole zone.
pub fn snapshot(z: &ZoneData, touched: &[(Vec<u8>, u16)]) -> ZoneData {
    let mut s = ZoneData::new(z.origin.clone());
    let mut copy = |key: &[u8], rtype: u16| {
        if let Some(node) = z.nodes.get(key) {
            if let Some(set) = node.rrsets.get(&rtype) {
                let n = s
                    .nodes
                    .entry(key.to_vec())
                    .or_insert_with(|| crate::zone::NodeData {
                        name: node.name.clone(),
                        rrsets: Default::default(),
                    });
                n.rrsets.insert(rtype, set.clone());
            }
        }
    };
    copy(&z.apex, T_SOA);
    for (name, rtype) in touched {
        copy(&name_key(&key_to_name(name)), *rtype);
    }
    s
}

/// The RRsets a journal entry touched, for [`snapshot`] and [`diff`].
pub fn touched(cs: &crate::update::ChangeSet) -> Vec<(Vec<u8>, u16)> {
    cs.changes
        .iter()
        .map(|c| (c.name.clone(), c.rtype))
        .collect()
}

/// What changed between `before` and `after` in the RRsets `touched` (owner in wire
/// form, any case, and type). `None` when either side has no SOA or the serial did not
/// move: such a change cannot be sent as an IXFR step.
pub fn diff(before: &ZoneData, after: &ZoneData, touched: &[(Vec<u8>, u16)]) -> Option<Diff> {
    let from = soa_rr(before)?;
    let to = soa_rr(after)?;
    if !serial_gt(to.serial()?, from.serial()?) {
        return None;
    }
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut seen: Vec<(Vec<u8>, u16)> = Vec::new();
    for (name, rtype) in touched {
        let key = name_key(&key_to_name(name));
        if *rtype == T_SOA && key == after.apex {
            continue;
        }
        if seen.iter().any(|(k, t)| k == &key && t == rtype) {
            continue;
        }
        seen.push((key.clone(), *rtype));
        let old = set_of(before, &key, *rtype);
        let new = set_of(after, &key, *rtype);
        let same_ttl = matches!((&old, &new), (Some((o, _)), Some((n, _))) if o.ttl == n.ttl);
        let has = |set: &Option<(&RRset, Vec<u8>)>, rd: &[u8]| {
            same_ttl
                && set.as_ref().is_some_and(|(s, _)| {
                    s.rdatas
                        .iter()
                        .any(|r| crate::wire::rdata_eq(*rtype, r, rd))
                })
        };
        if let Some((s, owner)) = &old {
            for rd in &s.rdatas {
                if !has(&new, rd) {
                    removed.push(Rr {
                        name: owner.clone(),
                        rtype: *rtype,
                        ttl: s.ttl,
                        rdata: rd.clone(),
                    });
                }
            }
        }
        if let Some((s, owner)) = &new {
            for rd in &s.rdatas {
                if !has(&old, rd) {
                    added.push(Rr {
                        name: owner.clone(),
                        rtype: *rtype,
                        ttl: s.ttl,
                        rdata: rd.clone(),
                    });
                }
            }
        }
    }
    Some(Diff {
        from,
        to,
        removed,
        added,
    })
}

/// The history with `d` added at its end, the oldest dropped past [`HISTORY_LIMIT`].
/// A diff that does not start where the history ends starts a new history.
pub fn extend(history: &[Arc<Diff>], d: Diff) -> Arc<[Arc<Diff>]> {
    let continues = history
        .last()
        .is_none_or(|last| last.to_serial() == d.from_serial());
    let keep = if continues { history } else { &[][..] };
    let skip = (keep.len() + 1).saturating_sub(HISTORY_LIMIT);
    keep[skip..]
        .iter()
        .cloned()
        .chain(std::iter::once(Arc::new(d)))
        .collect()
}

/// What a transfer request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The client has this serial or a newer one: the current SOA alone.
    UpToDate,
    /// IXFR: the differences from the client's serial, in order.
    Incremental(Vec<Arc<Diff>>),
    /// The whole zone (AXFR, or IXFR from a serial the history no longer reaches).
    Full,
}

impl Plan {
    /// For logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Plan::UpToDate => "up_to_date",
            Plan::Incremental(_) => "incremental",
            Plan::Full => "full",
        }
    }
}

/// Decides how to answer an IXFR from `client_serial` for a zone now at `current`.
pub fn plan_ixfr(current: u32, history: &[Arc<Diff>], client_serial: u32) -> Plan {
    if !serial_gt(current, client_serial) {
        return Plan::UpToDate;
    }
    let Some(start) = history
        .iter()
        .position(|d| d.from_serial() == client_serial)
    else {
        return Plan::Full;
    };
    let chain = &history[start..];
    let linked = chain
        .windows(2)
        .all(|w| w[0].to_serial() == w[1].from_serial());
    if linked && chain.last().map(|d| d.to_serial()) == Some(current) {
        Plan::Incremental(chain.to_vec())
    } else {
        Plan::Full
    }
}

/// The records of an answer, in order (RFC 5936 section 2.2, RFC 1995 section 4).
pub fn records(z: &ZoneData, plan: &Plan) -> Vec<Rr> {
    let Some(soa) = soa_rr(z) else {
        return Vec::new();
    };
    let mut out = vec![soa.clone()];
    match plan {
        Plan::UpToDate => return out,
        Plan::Incremental(diffs) => {
            for d in diffs {
                out.push(d.from.clone());
                out.extend(d.removed.iter().cloned());
                out.push(d.to.clone());
                out.extend(d.added.iter().cloned());
            }
        }
        Plan::Full => {
            for node in z.nodes.values() {
                let owner = name_wire(&node.name);
                for (&t, set) in &node.rrsets {
                    if t == T_SOA && node.name.to_lowercase() == z.origin.to_lowercase() {
                        continue;
                    }
                    for rd in &set.rdatas {
                        out.push(Rr {
                            name: owner.clone(),
                            rtype: t,
                            ttl: set.ttl,
                            rdata: rd.clone(),
                        });
                    }
                }
            }
        }
    }
    out.push(soa);
    out
}

/// The question of a transfer answer: owner as asked, type, class.
#[derive(Debug, Clone)]
pub struct Question {
    /// Name in uncompressed wire form, as the client wrote it.
    pub name: Vec<u8>,
    /// AXFR or IXFR.
    pub qtype: u16,
    /// Class.
    pub qclass: u16,
}

/// Cuts `rrs` into response messages to request `id` of at most about `limit` bytes
/// (one record larger than that gets a message of its own). The question is in the
/// first message only (RFC 5936 section 2.2.1).
pub fn messages(id: u16, q: &Question, rrs: &[Rr], limit: usize) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut count = 0u16;
    let start = |first: bool| {
        let mut m = Vec::with_capacity(limit.min(4096));
        m.extend_from_slice(&id.to_be_bytes());
        // QR, AA, opcode QUERY, NOERROR.
        m.extend_from_slice(&0x8400u16.to_be_bytes());
        m.extend_from_slice(&[0, first as u8, 0, 0, 0, 0, 0, 0]);
        if first {
            m.extend_from_slice(&q.name);
            m.extend_from_slice(&q.qtype.to_be_bytes());
            m.extend_from_slice(&q.qclass.to_be_bytes());
        }
        m
    };
    let finish = |m: &mut Vec<u8>, count: u16| m[6..8].copy_from_slice(&count.to_be_bytes());
    let mut cur = start(true);
    for rr in rrs {
        if count > 0 && (cur.len() + rr.wire_len() > limit || count == u16::MAX) {
            finish(&mut cur, count);
            msgs.push(std::mem::replace(&mut cur, start(false)));
            count = 0;
        }
        rr.emit(&mut cur);
        count += 1;
    }
    finish(&mut cur, count);
    msgs.push(cur);
    msgs
}

/// Signs every message of a multi-message answer (RFC 8945 section 5.3.1): the first
/// with the request's MAC and all TSIG variables, each later one with the MAC before
/// it and the timers only.
pub fn sign_all(
    msgs: &mut [Vec<u8>],
    key: &TsigKey,
    request_mac: &[u8],
    oid: u16,
    now: u64,
) -> Result<(), hickory_proto::ProtoError> {
    let mut prev = request_mac.to_vec();
    for (i, m) in msgs.iter_mut().enumerate() {
        prev = if i == 0 {
            tsig::sign_response_mac(m, key, &prev, oid, now)?
        } else {
            tsig::sign_subsequent(m, key, &prev, oid, now)?
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    const ZONE: &str = "$TTL 300\n@ SOA ns1 hostmaster 7 3600 900 604800 60\n@ NS ns1\nns1 A 192.0.2.53\nwww 60 A 192.0.2.10\nwww 60 ALT 203.55.57.102\nsub NS ns.sub\nns.sub A 192.0.2.77\n";

    fn zone() -> ZoneData {
        crate::zonefile::parse(ZONE, "t", &Name::from_ascii("example.com.").unwrap(), 65280)
            .unwrap()
    }

    fn www() -> Vec<u8> {
        name_wire(&Name::from_ascii("www.example.com.").unwrap())
    }

    /// The zone after changing www's ALT set to `addrs`, with the serial moved on.
    fn changed(z: &ZoneData, addrs: &[[u8; 4]], ttl: u32) -> ZoneData {
        let mut n = z.clone();
        let key = name_key(&Name::from_ascii("www.example.com.").unwrap());
        let node = n.nodes.get_mut(&key).unwrap();
        node.rrsets.insert(
            65280,
            RRset {
                ttl,
                rdatas: addrs.iter().map(|a| a.to_vec()).collect(),
            },
        );
        let s = n.soa().unwrap().serial;
        n.set_serial(crate::zone::next_serial(s));
        n
    }

    #[test]
    fn diffs_hold_what_changed_and_nothing_else() {
        let z0 = zone();
        let z1 = changed(&z0, &[[203, 55, 57, 102], [198, 51, 100, 1]], 60);
        let d = diff(&z0, &z1, &[(www(), 65280), (www(), 65280)]).unwrap();
        assert_eq!((d.from_serial(), d.to_serial()), (7, 8));
        assert!(d.removed.is_empty());
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].rdata, vec![198, 51, 100, 1]);
        // A TTL change replaces every record of the set.
        let z2 = changed(&z1, &[[203, 55, 57, 102], [198, 51, 100, 1]], 30);
        let d = diff(&z1, &z2, &[(www(), 65280)]).unwrap();
        assert_eq!((d.removed.len(), d.added.len()), (2, 2));
        assert!(d.added.iter().all(|r| r.ttl == 30));
        // No serial move: not an IXFR step.
        assert!(diff(&z1, &z1, &[(www(), 65280)]).is_none());
    }

    #[test]
    fn ixfr_plans_follow_the_chain_or_fall_back_to_the_whole_zone() {
        let z0 = zone();
        let z1 = changed(&z0, &[[198, 51, 100, 1]], 60);
        let z2 = changed(&z1, &[[198, 51, 100, 2]], 60);
        let h = extend(&[], diff(&z0, &z1, &[(www(), 65280)]).unwrap());
        let h = extend(&h, diff(&z1, &z2, &[(www(), 65280)]).unwrap());
        assert_eq!(h.len(), 2);
        match plan_ixfr(9, &h, 7) {
            Plan::Incremental(d) => assert_eq!(d.len(), 2),
            p => panic!("{p:?}"),
        }
        match plan_ixfr(9, &h, 8) {
            Plan::Incremental(d) => assert_eq!(d.len(), 1),
            p => panic!("{p:?}"),
        }
        assert_eq!(plan_ixfr(9, &h, 9), Plan::UpToDate);
        assert_eq!(plan_ixfr(9, &h, 10), Plan::UpToDate);
        assert_eq!(plan_ixfr(9, &h, 3), Plan::Full, "older than the history");
        assert_eq!(plan_ixfr(12, &h, 7), Plan::Full, "history ends short");
        // A diff that does not continue the history starts a new one.
        let mut far = z2.clone();
        far.set_serial(100);
        let far2 = changed(&far, &[[1, 2, 3, 4]], 60);
        let h2 = extend(&h, diff(&far, &far2, &[(www(), 65280)]).unwrap());
        assert_eq!(h2.len(), 1);
        // Bounded.
        let mut h = Arc::<[Arc<Diff>]>::from(Vec::new());
        let mut z = z0.clone();
        for i in 0..HISTORY_LIMIT + 5 {
            let n = changed(&z, &[[10, 0, (i / 250) as u8, (i % 250) as u8]], 60);
            h = extend(&h, diff(&z, &n, &[(www(), 65280)]).unwrap());
            z = n;
        }
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].from_serial(), 7 + 5);
    }

    fn parse_all(msgs: &[Vec<u8>]) -> Vec<hickory_proto::rr::Record> {
        msgs.iter()
            .flat_map(|m| Message::from_vec(m).expect("parses").answers)
            .collect()
    }

    #[test]
    fn full_and_incremental_answers_have_the_rfc_shape() {
        let z0 = zone();
        let z1 = changed(&z0, &[[198, 51, 100, 1]], 60);
        let q = Question {
            name: name_wire(&Name::from_ascii("example.com.").unwrap()),
            qtype: 252,
            qclass: 1,
        };
        let full = records(&z1, &Plan::Full);
        assert_eq!(full.len(), z1.rr_count() + 1, "SOA first and last");
        assert_eq!(full.first(), full.last());
        assert_eq!(full[0].serial(), Some(8));
        let msgs = messages(0x4242, &q, &full, MESSAGE_LIMIT);
        assert_eq!(msgs.len(), 1);
        let recs = parse_all(&msgs);
        assert_eq!(recs.len(), full.len());
        assert!(recs
            .iter()
            .any(|r| r.record_type() == RecordType::Unknown(65280)));

        let h = extend(&[], diff(&z0, &z1, &[(www(), 65280)]).unwrap());
        let inc = records(&z1, &plan_ixfr(8, &h, 7));
        let serials: Vec<Option<u32>> = inc.iter().map(Rr::serial).collect();
        // current SOA, old SOA, removed ALT, new SOA, added ALT, current SOA.
        assert_eq!(inc.len(), 6);
        assert_eq!(
            serials,
            vec![Some(8), Some(7), None, Some(8), None, Some(8)]
        );
        assert_eq!(inc[2].rdata, vec![203, 55, 57, 102]);
        assert_eq!(inc[4].rdata, vec![198, 51, 100, 1]);
        assert_eq!(records(&z1, &Plan::UpToDate).len(), 1);
    }

    /// A zone big enough for several messages: each message parses on its own, only
    /// the first carries the question, and hickory-proto's verifier (another
    /// implementation of RFC 8945 section 5.3.1) accepts the signed chain.
    #[test]
    fn multi_message_answers_are_signed_as_a_chain() {
        let mut text = String::from(ZONE);
        for i in 0..3000 {
            text.push_str(&format!("h{i} 60 ALT 10.1.{}.{}\n", i / 250, i % 250));
        }
        let z = crate::zonefile::parse(
            &text,
            "t",
            &Name::from_ascii("example.com.").unwrap(),
            65280,
        )
        .unwrap();
        let key: TsigKey = "hmac-sha256:sec1.:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
            .parse()
            .unwrap();
        let mut req = Message::new(0x7777, MessageType::Query, OpCode::Query);
        req.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::AXFR,
        ));
        let now = tsig::now_secs();
        let mut verifier = req.finalize(&key.signer(300), now).unwrap().unwrap();
        let raw = req.to_vec().unwrap();
        let sig = Message::from_vec(&raw).unwrap().signature.unwrap();
        let tsig::Verdict::Ok { mac, .. } =
            tsig::verify_request(&raw, &sig, std::slice::from_ref(&key), now)
        else {
            panic!("request does not verify");
        };
        let q = Question {
            name: name_wire(&Name::from_ascii("example.com.").unwrap()),
            qtype: 252,
            qclass: 1,
        };
        let rrs = records(&z, &Plan::Full);
        let mut msgs = messages(0x7777, &q, &rrs, MESSAGE_LIMIT);
        assert!(msgs.len() >= 3, "{} messages", msgs.len());
        sign_all(&mut msgs, &key, &mac, 0x7777, now).unwrap();
        let mut total = 0;
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= MESSAGE_LIMIT + 200);
            let r = verifier
                .verify(m)
                .unwrap_or_else(|e| panic!("message {i} does not verify: {e}"));
            assert_eq!(r.queries.len(), usize::from(i == 0));
            total += r.answers.len();
        }
        assert_eq!(total, rrs.len());
        // A message altered in the middle of the chain breaks it.
        let mut msgs2 = messages(0x7777, &q, &rrs, MESSAGE_LIMIT);
        sign_all(&mut msgs2, &key, &mac, 0x7777, now).unwrap();
        let last = msgs2[1].len() - 120;
        msgs2[1][last] ^= 1;
        let mut verifier = {
            // The same request again: its MAC is the same for the same time.
            let mut req = Message::new(0x7777, MessageType::Query, OpCode::Query);
            req.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::AXFR,
            ));
            req.finalize(&key.signer(300), now).unwrap().unwrap()
        };
        verifier
            .verify(&msgs2[0])
            .expect("first message still good");
        assert!(verifier.verify(&msgs2[1]).is_err(), "altered message");
    }
}
