//! Zones on a config reload (SIGHUP): zones added to the config are loaded and served,
//! zones removed are no longer served, and a zone file edited on disk is taken when it
//! is safe to, each zone decided on its own.
//!
//! An edited zone file is taken only when its SOA serial is above the serial served
//! (RFC 1982), like Knot's difference loading: the served zone becomes the file's data,
//! the difference goes into the zone's history so a secondary still gets it by IXFR, and
//! the secondaries get a NOTIFY. The file must not undo an acknowledged update: every
//! RRset that an update in the journal set must read the same in the file (the operator
//! edits a copy of the zone as served, e.g. from `dig AXFR`), or the zone's reload is
//! refused, naming the RRsets, and the zone is served as before. Once taken, the file
//! holds what those updates did, so the zone's journal entries are superseded: the
//! journal is kept aside (`<journal>.reload-<unix time>`) and written anew without them,
//! and later updates journal on top of the file's serial, which is what a restart
//! replays. A file whose serial is not above the served one is not taken (nothing
//! could tell a secondary that the data changed) and the log says to raise it.
//!
//! A zone added is loaded as at start: its file, and the journal's entries for it (a
//! zone that was served before and removed) when the file is the one they were written
//! against. A zone removed is answered like any unknown zone (REFUSED, NOTAUTH for an
//! update); its journal entries stay on disk.
//!
//! The catalog is swapped in one step under the journal lock that updates take, so a
//! query sees the old zone or the new one, never none, and an update is applied either
//! to the zone before the reload (and then checked against the file like any other
//! update) or to the new one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::DnsConfig;
use crate::journal::{aside_name, encode, frame, Journal, Scan, Tail};
use crate::server::Shared;
use crate::startup::History;
use crate::update::{serial_gt, ChangeSet};
use crate::wire::{key_to_name, name_key, name_wire, T_SOA};
use crate::zone::{next_serial, Catalog, RRset, Zone, ZoneData};

/// What identifies a zone file's content: its length and CRC-32, or why it cannot be
/// read. Compared on reload to skip zone files nobody touched.
pub fn fingerprint(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) => format!("{} bytes, crc32 {:08x}", b.len(), crate::journal::crc32(&b)),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// The zone files of `cfg`, as `name: fingerprint`, for the reload's comparison: an
/// edited zone file shows as a changed `zone_file` key.
pub fn fingerprints(cfg: &DnsConfig) -> Vec<String> {
    cfg.zones
        .iter()
        .map(|(name, file)| format!("{name}: {}", fingerprint(file)))
        .collect()
}

/// What a reload did to one zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The zone file is the one served: nothing to do.
    Unchanged,
    /// Served now from its file (and the journal), at this serial.
    Added(u32),
    /// The edited file is served now: serial before, serial now.
    Reloaded(u32, u32),
    /// No longer served.
    Removed,
    /// Served as before (or, for a new zone, not served); why.
    Kept(String),
}

/// One zone's line of the reload's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneResult {
    /// The zone.
    pub zone: String,
    /// What happened.
    pub outcome: Outcome,
}

struct Loaded {
    name: String,
    file: PathBuf,
    fingerprint: String,
    data: Result<ZoneData, String>,
}

fn load(name: &str, file: &Path, alt_type: u16) -> Loaded {
    let fingerprint = fingerprint(file);
    let data = hickory_proto::rr::Name::from_ascii(name)
        .map_err(|e| format!("`{name}` is not a valid domain name: {e}"))
        .and_then(|mut origin| {
            origin.set_fqdn(true);
            crate::zonefile::load(file, &origin, alt_type).map_err(|e| e.to_string())
        });
    Loaded {
        name: name.to_string(),
        file: file.to_path_buf(),
        fingerprint,
        data,
    }
}

fn same_set(rtype: u16, a: Option<&RRset>, b: Option<&RRset>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.ttl == b.ttl
                && a.rdatas.len() == b.rdatas.len()
                && a.rdatas
                    .iter()
                    .all(|x| b.rdatas.iter().any(|y| crate::wire::rdata_eq(rtype, x, y)))
        }
        _ => false,
    }
}

fn set_at<'a>(z: &'a ZoneData, key: &[u8], rtype: u16) -> Option<&'a RRset> {
    z.nodes.get(key).and_then(|n| n.rrsets.get(&rtype))
}

/// Every RRset of both zones, for a diff of the whole zone.
fn all_sets(a: &ZoneData, b: &ZoneData) -> Vec<(Vec<u8>, u16)> {
    let mut out = Vec::new();
    for z in [a, b] {
        for node in z.nodes.values() {
            for &t in node.rrsets.keys() {
                out.push((name_wire(&node.name), t));
            }
        }
    }
    out
}

/// The RRsets an update set (not the SOA), with the serial of the last update that did,
/// in journal order.
fn updated_sets(entries: &[&ChangeSet]) -> Vec<((Vec<u8>, u16), u32)> {
    let mut out: Vec<((Vec<u8>, u16), u32)> = Vec::new();
    for cs in entries {
        for c in &cs.changes {
            if c.rtype == T_SOA {
                continue;
            }
            let k = (name_key(&key_to_name(&c.name)), c.rtype);
            match out.iter_mut().find(|(x, _)| *x == k) {
                Some(e) => e.1 = cs.serial,
                None => out.push((k, cs.serial)),
            }
        }
    }
    out
}

fn later_of(a: u32, b: u32) -> u32 {
    if serial_gt(b, a) {
        b
    } else {
        a
    }
}

enum Plan {
    Keep,
    Serve {
        zone: Arc<Zone>,
        /// The journal's entries for this zone no longer apply.
        drop_entries: bool,
        /// A serial move to journal (a zone whose file is behind its old entries).
        bump: Option<ChangeSet>,
    },
}

impl Shared {
    /// Applies the zones of a reloaded `cfg`: loads added ones, drops removed ones, takes
    /// edited zone files where that loses no acknowledged update, and swaps the catalog
    /// in one step. Logs and returns what happened to each zone; a zone whose reload is
    /// refused is served as before.
    pub fn reload_zones(&self, cfg: &DnsConfig) -> Vec<ZoneResult> {
        // Parse outside the lock: updates keep flowing meanwhile.
        let loaded: Vec<Loaded> = cfg
            .zones
            .iter()
            .map(|(name, file)| load(name, file, self.alt_type))
            .collect();
        let results = self.reload_loaded(loaded);
        for r in &results {
            match &r.outcome {
                Outcome::Unchanged => {}
                Outcome::Added(serial) => {
                    tracing::info!(zone = %r.zone, serial, "zone added by reload, served now")
                }
                Outcome::Reloaded(from, to) => {
                    tracing::info!(zone = %r.zone, from, to, "zone file reloaded, served now")
                }
                Outcome::Removed => {
                    tracing::info!(zone = %r.zone, "zone removed by reload, no longer served; its journal entries stay on disk")
                }
                Outcome::Kept(why) => {
                    tracing::error!(zone = %r.zone, "zone reload refused: {why}")
                }
            }
        }
        results
    }

    fn reload_loaded(&self, loaded: Vec<Loaded>) -> Vec<ZoneResult> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let cat = self.catalog();
        let mut results = Vec::new();
        // Read once, only when a zone needs it.
        let mut scan: Option<Result<Scan, String>> = None;
        let jpath = journal.path().to_path_buf();
        let mut read_scan = || {
            scan.get_or_insert_with(|| match Journal::scan(&jpath) {
                Err(e) => Err(e.to_string()),
                Ok(s) if s.tail != Tail::Clean => Err(format!(
                    "the journal {} does not end with a whole entry (a write that failed, or damage): restart scold dns to have it checked (`scold dns --check` first)",
                    jpath.display()
                )),
                Ok(s) => Ok(s),
            })
            .clone()
        };
        let mut plans: Vec<(Plan, usize)> = Vec::new();
        for (li, l) in loaded.iter().enumerate() {
            let apex = l.data.as_ref().map(|d| d.apex.clone()).ok();
            let current = apex.as_ref().and_then(|a| cat.find_exact(a)).or_else(|| {
                // A file that does not load still names a zone that may be served.
                hickory_proto::rr::Name::from_ascii(&l.name)
                    .ok()
                    .map(|mut n| {
                        n.set_fqdn(true);
                        name_key(&n)
                    })
                    .and_then(|k| cat.find_exact(&k))
            });
            let (plan, outcome) = match (current, &l.data) {
                (Some(zi), _)
                    if sources.get(&cat.zones[zi].data.apex)
                        == Some(&(l.file.clone(), l.fingerprint.clone())) =>
                {
                    (Plan::Keep, Outcome::Unchanged)
                }
                (Some(zi), Err(e)) => (
                    Plan::Keep,
                    Outcome::Kept(format!(
                        "{e}; still serving serial {} from before",
                        cat.zones[zi].data.serial()
                    )),
                ),
                (None, Err(e)) => (
                    Plan::Keep,
                    Outcome::Kept(format!("{e}; the zone is not served")),
                ),
                (Some(zi), Ok(file)) => {
                    let served = &cat.zones[zi];
                    match self.plan_edited(served, file, &l.file, &mut read_scan) {
                        Ok(p) => (p, Outcome::Reloaded(served.data.serial(), file.serial())),
                        Err(why) => (Plan::Keep, Outcome::Kept(why)),
                    }
                }
                (None, Ok(file)) => match plan_added(file, &l.file, &mut read_scan) {
                    Ok((p, serial)) => (p, Outcome::Added(serial)),
                    Err(why) => (Plan::Keep, Outcome::Kept(why)),
                },
            };
            results.push(ZoneResult {
                zone: l.name.clone(),
                outcome,
            });
            plans.push((plan, li));
        }

        // The journal first: if it cannot be written, nothing changes.
        let drop_zones: Vec<&[u8]> = plans
            .iter()
            .filter_map(|(p, _)| match p {
                Plan::Serve {
                    zone,
                    drop_entries: true,
                    ..
                } => Some(&zone.data.apex[..]),
                _ => None,
            })
            .collect();
        let bumps: Vec<&ChangeSet> = plans
            .iter()
            .filter_map(|(p, _)| match p {
                Plan::Serve { bump: Some(b), .. } => Some(b),
                _ => None,
            })
            .collect();
        if !drop_zones.is_empty() || !bumps.is_empty() {
            let rewritten = read_scan().and_then(|scan| {
                rewrite(&journal, &scan, &drop_zones, &bumps).map_err(|e| e.to_string())
            });
            match rewritten {
                Ok(j) => *journal = j,
                Err(e) => {
                    let why = format!("the journal cannot be rewritten ({e}); served as before");
                    for (p, li) in &plans {
                        if let Plan::Serve { .. } = p {
                            if let Some(r) = results.iter_mut().find(|r| r.zone == loaded[*li].name)
                            {
                                r.outcome = Outcome::Kept(why.clone());
                            }
                        }
                    }
                    return results;
                }
            }
        }

        // The new catalog, in config order; zones not in the config any more are gone.
        let mut zones = Vec::new();
        let mut changed = Vec::new();
        let mut kept_apexes = HashSet::new();
        for (p, li) in &plans {
            let l = &loaded[*li];
            match p {
                Plan::Serve { zone, .. } => {
                    sources.insert(
                        zone.data.apex.clone(),
                        (l.file.clone(), l.fingerprint.clone()),
                    );
                    changed.push(zone.data.apex.clone());
                    kept_apexes.insert(zone.data.apex.clone());
                    zones.push(zone.clone());
                }
                Plan::Keep => {
                    let key = match &l.data {
                        Ok(d) => Some(d.apex.clone()),
                        Err(_) => hickory_proto::rr::Name::from_ascii(&l.name)
                            .ok()
                            .map(|mut n| {
                                n.set_fqdn(true);
                                name_key(&n)
                            }),
                    };
                    if let Some(zi) = key.and_then(|k| cat.find_exact(&k)) {
                        kept_apexes.insert(cat.zones[zi].data.apex.clone());
                        zones.push(cat.zones[zi].clone());
                    }
                }
            }
        }
        for z in &cat.zones {
            if !kept_apexes.contains(&z.data.apex) {
                sources.remove(&z.data.apex);
                results.push(ZoneResult {
                    zone: z.data.origin.to_string(),
                    outcome: Outcome::Removed,
                });
            }
        }
        let removed = results.iter().any(|r| r.outcome == Outcome::Removed);
        if !changed.is_empty() || removed || zones.len() != cat.zones.len() {
            *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Catalog { zones });
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        drop(sources);
        drop(journal);
        for apex in changed {
            self.zone_changed(&apex);
        }
        results
    }

    /// A served zone whose file changed: the file's data when its serial is newer and it
    /// keeps every RRset the journal's updates set.
    fn plan_edited(
        &self,
        served: &Zone,
        file: &ZoneData,
        path: &Path,
        read_scan: &mut impl FnMut() -> Result<Scan, String>,
    ) -> Result<Plan, String> {
        let s = served.data.serial();
        let f = file.serial();
        if !serial_gt(f, s) {
            return Err(format!(
                "the zone file {} has serial {f}, not above the served serial {s}: still serving serial {s}; raise the serial in the file above {s} (and keep what updates added) and reload again",
                path.display()
            ));
        }
        let scan = read_scan()?;
        let entries = scan.changes_of(&served.data.apex);
        let lost: Vec<String> = updated_sets(&entries)
            .into_iter()
            .filter(|((k, t), _)| !same_set(*t, set_at(&served.data, k, *t), set_at(file, k, *t)))
            .map(|((k, t), serial)| {
                let ty = crate::wire::type_name(t, self.alt_type);
                let now = match set_at(&served.data, &k, t) {
                    Some(set) => format!("{} record(s), TTL {}", set.rdatas.len(), set.ttl),
                    None => "deleted".to_string(),
                };
                format!(
                    "{} {ty} ({now}, by the update at serial {serial})",
                    key_to_name(&k)
                )
            })
            .collect();
        if !lost.is_empty() {
            return Err(format!(
                "the zone file {} (serial {f}) would undo acknowledged updates: {}; still serving serial {s}; write these RRsets into the file as served (`dig AXFR` with a secondary's key shows them) and reload again",
                path.display(),
                lost.join("; ")
            ));
        }
        let history: History =
            match crate::transfer::diff(&served.data, file, &all_sets(&served.data, file)) {
                Some(d) => crate::transfer::extend(&served.history, d),
                None => Vec::new().into(),
            };
        Ok(Plan::Serve {
            zone: Arc::new(Zone::with_history(file.clone(), history)),
            drop_entries: !entries.is_empty(),
            bump: None,
        })
    }
}

/// A zone new to the config: its file, with the journal's entries for it replayed when
/// the file is the one they were written against (the rule start-up follows).
fn plan_added(
    file: &ZoneData,
    path: &Path,
    read_scan: &mut impl FnMut() -> Result<Scan, String>,
) -> Result<(Plan, u32), String> {
    let scan = read_scan()?;
    let entries = scan.changes_of(&file.apex);
    let mut z = file.clone();
    let mut history: History = Vec::new().into();
    let Some(first) = entries.first() else {
        let serial = z.serial();
        return Ok((
            Plan::Serve {
                zone: Arc::new(Zone::new(z)),
                drop_entries: false,
                bump: None,
            },
            serial,
        ));
    };
    let f = file.serial();
    let base = first.prev_serial;
    if serial_gt(f, base) {
        // Edited after its journal began: the entries no longer apply (as at start).
        let highest = entries.iter().fold(base, |m, c| later_of(m, c.serial));
        tracing::warn!(zone = %z.origin, file = %path.display(), file_serial = f, journal_base = base, "the zone file was edited after the journal's entries for this zone began: they are not replayed and are left out of the journal (the old journal is kept aside)");
        let bump = (!serial_gt(f, highest)).then(|| {
            let new = next_serial(highest);
            tracing::warn!(zone = %z.origin, file = %path.display(), file_serial = f, highest, serving = new, "the zone file's serial is not above the highest the journal held: serving the next one so the serial does not go backwards; raise the serial in the file");
            crate::startup::bump(&mut z, new)
        });
        let serial = z.serial();
        return Ok((
            Plan::Serve {
                zone: Arc::new(Zone::new(z)),
                drop_entries: true,
                bump,
            },
            serial,
        ));
    }
    for cs in &entries {
        let touched = crate::transfer::touched(cs);
        let before = crate::transfer::snapshot(&z, &touched);
        crate::update::replay(&mut z, cs);
        if let Some(d) = crate::transfer::diff(&before, &z, &touched) {
            history = crate::transfer::extend(&history, d);
        }
    }
    let serial = z.serial();
    Ok((
        Plan::Serve {
            zone: Arc::new(Zone::with_history(z, history)),
            drop_entries: false,
            bump: None,
        },
        serial,
    ))
}

/// The journal without the entries of `drop_zones`, with `bumps` after them; the old
/// file is kept aside. `scan` was read under the same lock, so nothing was appended since.
fn rewrite(
    journal: &Journal,
    scan: &Scan,
    drop_zones: &[&[u8]],
    bumps: &[&ChangeSet],
) -> Result<Journal, crate::journal::JournalError> {
    let path = journal.path();
    let buf = if scan.exists {
        std::fs::read(path).map_err(|source| crate::journal::JournalError::Io {
            path: path.to_path_buf(),
            what: "cannot read",
            source,
        })?
    } else {
        Vec::new()
    };
    if buf.len() as u64 != scan.file_len {
        return Err(crate::journal::JournalError::Changed(path.to_path_buf()));
    }
    let mut out = Vec::with_capacity(buf.len());
    let mut kept = 0;
    for e in &scan.entries {
        if !drop_zones.contains(&&e.cs.zone[..]) {
            out.extend_from_slice(&buf[e.offset as usize..(e.offset + e.len) as usize]);
            kept += 1;
        }
    }
    for b in bumps {
        out.extend(frame(&encode(b)));
    }
    let aside = aside_name(path, "reload", crate::tsig::now_secs());
    let j = Journal::replace(path, &out, &aside)?;
    tracing::warn!(
        journal = %path.display(),
        kept_as = %aside.display(),
        entries_kept = kept,
        entries_superseded = scan.entries.len() - kept,
        "journal entries superseded by reloaded zone files left out; the old journal is kept aside (not deleted) and a new one written"
    );
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{config, cs, key, ALT};

    fn zone_text(origin: &str, serial: u32) -> String {
        format!("$ORIGIN {origin}\n$TTL 60\n@ SOA ns1 h {serial} 3600 900 604800 60\n@ NS ns1\nns1 A 192.0.2.53\n")
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: DnsConfig,
    }

    /// `example.com.` served at serial 1 and `example.net.` (file at `net_serial`) not
    /// configured, with journal entries for both.
    fn setup(net_serial: u32, entries: &[ChangeSet]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut zones = Vec::new();
        for (name, serial) in [("example.com.", 1), ("example.net.", net_serial)] {
            let file = dir.path().join(format!("{name}zone"));
            std::fs::write(&file, zone_text(name, serial)).unwrap();
            zones.push((name.to_string(), file));
        }
        let cfg = config(dir.path(), zones);
        let (mut j, _) = Journal::open(&cfg.journal).unwrap();
        for e in entries {
            j.append(e).unwrap();
        }
        Setup { dir, cfg }
    }

    fn only_com(cfg: &DnsConfig) -> DnsConfig {
        let mut c = cfg.clone();
        c.zones.truncate(1);
        c
    }

    fn served(sh: &Shared, zone: &str) -> Option<(u32, Vec<Vec<u8>>)> {
        let cat = sh.catalog();
        let z = &cat.zones[cat.find_exact(&key(zone))?].data;
        let alt = z
            .node(&key(&format!("www.{zone}")))
            .and_then(|n| n.rrsets.get(&ALT))
            .map(|s| s.rdatas.clone())
            .unwrap_or_default();
        Some((z.serial(), alt))
    }

    fn asides(s: &Setup) -> usize {
        std::fs::read_dir(s.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("dns.journal.reload-")
            })
            .count()
    }

    #[test]
    fn a_zone_added_again_gets_its_journal_entries_back() {
        let s = setup(5, &[cs("example.net.", 6), cs("example.com.", 2)]);
        let sh = Shared::load(&only_com(&s.cfg)).unwrap();
        assert_eq!(
            served(&sh, "example.com."),
            Some((2, vec![vec![10, 0, 0, 2]]))
        );
        assert_eq!(served(&sh, "example.net."), None);
        let before = std::fs::read(&s.cfg.journal).unwrap();
        let r = sh.reload_zones(&s.cfg);
        assert_eq!(r[0].outcome, Outcome::Unchanged);
        assert_eq!(r[1].outcome, Outcome::Added(6));
        assert_eq!(
            served(&sh, "example.net."),
            Some((6, vec![vec![10, 0, 0, 6]]))
        );
        assert_eq!(std::fs::read(&s.cfg.journal).unwrap(), before);
        assert_eq!(asides(&s), 0);
        // And removed again: its entries stay.
        let r = sh.reload_zones(&only_com(&s.cfg));
        assert_eq!(r[1].outcome, Outcome::Removed);
        assert_eq!(served(&sh, "example.net."), None);
        assert_eq!(std::fs::read(&s.cfg.journal).unwrap(), before);
    }

    #[test]
    fn a_zone_added_with_a_newer_file_leaves_its_old_entries_out_of_the_journal() {
        // The file moved past the journal's base (5) but not past its highest serial
        // (7): served at 8 so the serial does not go backwards, as at start.
        let s = setup(
            6,
            &[
                cs("example.net.", 6),
                cs("example.com.", 2),
                cs("example.net.", 7),
            ],
        );
        let sh = Shared::load(&only_com(&s.cfg)).unwrap();
        let r = sh.reload_zones(&s.cfg);
        assert_eq!(r[1].outcome, Outcome::Added(8));
        assert_eq!(served(&sh, "example.net."), Some((8, vec![])));
        assert_eq!(asides(&s), 1);
        // What a restart now serves is what is served.
        drop(sh);
        let again = Shared::load(&s.cfg).unwrap();
        assert_eq!(served(&again, "example.net."), Some((8, vec![])));
        assert_eq!(
            served(&again, "example.com."),
            Some((2, vec![vec![10, 0, 0, 2]]))
        );
    }

    #[test]
    fn an_edited_file_that_keeps_the_updates_is_taken_and_survives_a_restart() {
        let s = setup(5, &[cs("example.com.", 2)]);
        let sh = Shared::load(&only_com(&s.cfg)).unwrap();
        let file = &s.cfg.zones[0].1;
        // Without the update's RRset: refused.
        std::fs::write(file, zone_text("example.com.", 9)).unwrap();
        let r = sh.reload_zones(&only_com(&s.cfg));
        assert!(
            matches!(&r[0].outcome, Outcome::Kept(w) if w.contains("www.example.com. ALT (1 record(s), TTL 30, by the update at serial 2)")),
            "{r:?}"
        );
        assert_eq!(
            served(&sh, "example.com."),
            Some((2, vec![vec![10, 0, 0, 2]]))
        );
        // With it: taken, with the difference in the history.
        std::fs::write(
            file,
            zone_text("example.com.", 9) + "www 30 TYPE65280 \\# 4 0A000002\nnew A 192.0.2.7\n",
        )
        .unwrap();
        let r = sh.reload_zones(&only_com(&s.cfg));
        assert_eq!(r[0].outcome, Outcome::Reloaded(2, 9));
        let cat = sh.catalog();
        let last = cat.zones[0].history.last().unwrap().clone();
        assert_eq!((last.from_serial(), last.to_serial()), (2, 9));
        assert_eq!(last.added.len(), 1, "{last:?}");
        assert!(last.removed.is_empty(), "{last:?}");
        // Reloading the same file again does nothing.
        let r = sh.reload_zones(&only_com(&s.cfg));
        assert_eq!(r[0].outcome, Outcome::Unchanged);
        drop(sh);
        let again = Shared::load(&only_com(&s.cfg)).unwrap();
        assert_eq!(
            served(&again, "example.com."),
            Some((9, vec![vec![10, 0, 0, 2]]))
        );
    }
}
