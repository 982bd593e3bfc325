//! What `scold dns` does with its zone files and journal at start, decided before
//! anything on disk changes, so that `--check` can report it and change nothing.
//!
//! [`plan`] reads the zone files and the journal and settles, zone by zone, what is
//! served:
//!
//! - the journal replays over the zone file when the file's SOA serial is equal to or
//!   lower than the journal's base serial (the serial the first entry for that zone
//!   started from): the file is the one the journal was written against;
//! - when the file's serial is higher, the file was edited after the journal began
//!   (BIND calls that journal "out of date"): its entries for that zone no longer apply.
//!   The file's data is served, a warning names both serials and the file, and the
//!   journal is moved aside (kept, never deleted) and rewritten without that zone's
//!   entries;
//! - a torn last entry (a write cut short by a crash, never acknowledged) is cut off;
//! - damage before the last entry stops the start, unless the operator asked for
//!   recovery: then the journal is moved aside, the server starts from the intact
//!   entries before the damage, and every serial lost is logged.
//!
//! The serial never goes backwards: whenever the data served does not include the
//! highest serial the journal held for a zone (entries lost to damage, or a zone file
//! edited without raising its serial past the journal), the zone is served at the next
//! serial above it, and that change is journaled like an update.
//!
//! [`apply`] then makes the journal match the plan and opens it for appending.

use std::path::{Path, PathBuf};

use crate::config::DnsConfig;
use crate::error::ServerError;
use crate::journal::{aside_name, encode, frame, Damage, Journal, JournalError, Scan, Tail};
use crate::update::{self, serial_gt, Change, ChangeSet};
use crate::wire::{key_to_name, name_wire, T_SOA};
use crate::zone::{next_serial, ZoneData};

/// Choices the operator makes on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Start from the intact entries before damage in the journal (`--recover-journal`),
    /// keeping the damaged file aside, instead of refusing to start.
    pub recover_journal: bool,
}

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// For the record.
    Info,
    /// Something the operator should look at.
    Warn,
    /// Data was lost.
    Error,
}

/// One thing start-up does beyond loading, for the log and for `--check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// How much it matters.
    pub level: Level,
    /// What, naming files and serials.
    pub text: String,
}

#[derive(Debug)]
struct Rewrite {
    /// Suffix of the name the old journal is kept under.
    kind: &'static str,
    /// Zones whose entries the new journal leaves out (their zone file is newer).
    drop_zones: Vec<Vec<u8>>,
    /// Serial moves to journal after the kept entries.
    bumps: Vec<ChangeSet>,
}

/// What start-up will serve and do, with nothing changed on disk yet.
#[derive(Debug)]
pub struct LoadPlan {
    /// The zones as they will be served.
    pub zones: Vec<ZoneData>,
    /// Per zone, the changes the journal replay made (for IXFR), oldest first.
    pub histories: Vec<History>,
    /// Journal entries replayed.
    pub replayed: usize,
    /// What start-up does beyond loading.
    pub notes: Vec<Note>,
    journal: PathBuf,
    scan: Scan,
    rewrite: Option<Rewrite>,
}

fn later_of(a: u32, b: u32) -> u32 {
    if serial_gt(b, a) {
        b
    } else {
        a
    }
}

fn serial_list(v: &[u32]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let consecutive = v.windows(2).all(|w| w[1] == next_serial(w[0]));
    if consecutive && v.len() > 2 {
        format!("{}..={}", v[0], v[v.len() - 1])
    } else {
        v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// What one lost entry had changed, for the operator who makes it again.
fn describe(cs: &ChangeSet, alt_type: u16) -> String {
    let parts: Vec<String> = cs
        .changes
        .iter()
        .filter(|c| c.rtype != T_SOA)
        .map(|c| {
            let ty = crate::wire::type_name(c.rtype, alt_type);
            match &c.set {
                Some(s) => format!(
                    "{} {ty} set to {} record(s)",
                    key_to_name(&c.name),
                    s.rdatas.len()
                ),
                None => format!("{} {ty} deleted", key_to_name(&c.name)),
            }
        })
        .collect();
    if parts.is_empty() {
        "the SOA only".into()
    } else {
        parts.join("; ")
    }
}

/// Moves `z` to `serial` and returns the journal entry that records it.
pub(crate) fn bump(z: &mut ZoneData, serial: u32) -> ChangeSet {
    bump_tracked(z, serial, None)
}

/// [`bump`], adding the serial move to `history` when given.
fn bump_tracked(z: &mut ZoneData, serial: u32, history: Option<&mut History>) -> ChangeSet {
    let before = history.is_some().then(|| crate::transfer::snapshot(z, &[]));
    let cs = bump_only(z, serial);
    if let (Some(h), Some(before)) = (history, before) {
        if let Some(d) = crate::transfer::diff(&before, z, &[]) {
            *h = crate::transfer::extend(h, d);
        }
    }
    cs
}

/// The recent changes of a zone, oldest first.
pub type History = std::sync::Arc<[std::sync::Arc<crate::transfer::Diff>]>;

fn bump_only(z: &mut ZoneData, serial: u32) -> ChangeSet {
    let prev = z.serial();
    z.set_serial(serial);
    let apex = &z.nodes[&z.apex];
    ChangeSet {
        zone: z.apex.clone(),
        prev_serial: prev,
        serial,
        changes: vec![Change {
            name: name_wire(&apex.name),
            rtype: T_SOA,
            set: apex.rrsets.get(&T_SOA).cloned(),
        }],
    }
}

/// Reads the zone files and the journal and decides what start-up serves and does.
/// Changes nothing on disk.
pub fn plan(cfg: &DnsConfig, opts: StartOptions) -> Result<LoadPlan, ServerError> {
    let mut zones: Vec<ZoneData> = Vec::new();
    let mut files: Vec<&Path> = Vec::new();
    for (name, file) in &cfg.zones {
        let mut origin = hickory_proto::rr::Name::from_ascii(name)
            .map_err(|_| ServerError::ZoneName(name.clone()))?;
        origin.set_fqdn(true);
        let z = crate::zonefile::load(file, &origin, cfg.alt_type)?;
        if zones.iter().any(|d| d.apex == z.apex) {
            return Err(ServerError::DuplicateZone(name.clone()));
        }
        zones.push(z);
        files.push(file);
    }

    let jpath = &cfg.journal;
    let scan = Journal::scan(jpath)?;
    let mut notes = Vec::new();
    let mut note = |level, text: String| notes.push(Note { level, text });
    let damage: Option<Damage> = match &scan.tail {
        Tail::Clean => None,
        Tail::Torn { offset, bytes, how } => {
            note(
                Level::Warn,
                format!(
                    "journal {}: its last entry is incomplete ({how}: {bytes} bytes from byte {offset}), a write cut short by a crash before it was on disk, so never acknowledged; it is cut off at start, the {} intact entries before it are kept",
                    jpath.display(),
                    scan.entries.len()
                ),
            );
            None
        }
        Tail::Damaged(d) if !opts.recover_journal => {
            return Err(JournalError::Damaged {
                path: jpath.clone(),
                damage: d.clone(),
                intact_before: scan.entries.len(),
            }
            .into())
        }
        Tail::Damaged(d) => {
            note(
                Level::Error,
                format!(
                    "journal {}: damaged at byte {}, in entry {} ({}); --recover-journal: starting from the {} intact entries before it; the damaged file is kept aside",
                    jpath.display(),
                    d.offset,
                    d.entry,
                    d.reason,
                    scan.entries.len()
                ),
            );
            Some((**d).clone())
        }
    };
    // Entries read after the damage (and the damaged one, when it decodes): their
    // updates were acknowledged and are lost; their serials were seen.
    let lost: Vec<&ChangeSet> = damage
        .iter()
        .flat_map(|d| d.damaged.iter().chain(d.later.iter().map(|e| &e.cs)))
        .collect();
    // A damaged entry that cannot be read may have belonged to any zone.
    let unknown_damaged_zone = damage.as_ref().is_some_and(|d| d.damaged.is_none());

    let mut kind = damage.as_ref().map(|_| "damaged");
    let mut drop_zones = Vec::new();
    let mut bumps = Vec::new();
    let mut replayed = 0;
    let mut histories: Vec<History> = vec![Vec::new().into(); zones.len()];
    for ((z, file), hist) in zones.iter_mut().zip(&files).zip(histories.iter_mut()) {
        let good = scan.changes_of(&z.apex);
        let zlost: Vec<&ChangeSet> = lost.iter().copied().filter(|c| c.zone == z.apex).collect();
        let file_serial = z.serial();
        let Some(first) = good.first().or(zlost.first()) else {
            if unknown_damaged_zone {
                // Had it been this zone's, it took the next serial: serve the one after.
                let new = next_serial(next_serial(file_serial));
                note(
                    Level::Warn,
                    format!(
                        "zone {}: the damaged journal entry cannot be read and may have been this zone's (serial {}); serving serial {new} (was {file_serial}) so that no serial is reused",
                        z.origin,
                        next_serial(file_serial)
                    ),
                );
                bumps.push(bump_tracked(z, new, Some(hist)));
            }
            continue;
        };
        let base = first.prev_serial;
        let highest = good
            .iter()
            .chain(zlost.iter())
            .fold(base, |m, c| later_of(m, c.serial));

        if serial_gt(file_serial, base) {
            let n = good.len() + zlost.len();
            note(
                Level::Warn,
                format!(
                    "zone {}: the zone file {} has serial {file_serial}, above the journal's base serial {base}: the file was edited after the journal began, so the journal's {n} entries for this zone (serials up to {highest}) no longer apply and are not replayed; serving the zone file's data; the journal {} is moved aside and kept",
                    z.origin,
                    file.display(),
                    jpath.display()
                ),
            );
            drop_zones.push(z.apex.clone());
            kind.get_or_insert("stale");
            if !serial_gt(file_serial, highest) {
                let new = next_serial(highest);
                note(
                    Level::Warn,
                    format!(
                        "zone {}: serial {file_serial} of {} is not above {highest}, the highest serial the journal held for it (secondaries and resolvers may have seen it): serving serial {new} so the serial does not go backwards; raise the serial in the zone file above {highest}",
                        z.origin,
                        file.display()
                    ),
                );
                bumps.push(bump(z, new));
            }
            continue;
        }

        for cs in &good {
            let touched = crate::transfer::touched(cs);
            let before = crate::transfer::snapshot(z, &touched);
            update::replay(z, cs);
            if let Some(d) = crate::transfer::diff(&before, z, &touched) {
                *hist = crate::transfer::extend(hist, d);
            }
            replayed += 1;
        }
        if damage.is_none() {
            continue;
        }
        let cur = z.serial();
        let mut target = highest;
        if unknown_damaged_zone {
            target = later_of(target, next_serial(cur));
        }
        if !serial_gt(target, cur) {
            continue;
        }
        let new = next_serial(target);
        let readable: Vec<u32> = zlost.iter().map(|c| c.serial).collect();
        note(
            Level::Error,
            format!(
                "zone {}: acknowledged updates after serial {cur} are lost with the damaged part of the journal: serials {}..={target} (readable in the damaged file: {}); make them again (nsupdate, or the coordinator's next update); serving serial {new} so the serial does not go backwards",
                z.origin,
                next_serial(cur),
                serial_list(&readable)
            ),
        );
        for cs in &zlost {
            // The damaged entry decoded without a matching checksum: what it says may
            // itself be damaged.
            let unverified = damage
                .as_ref()
                .and_then(|d| d.damaged.as_ref())
                .is_some_and(|d| std::ptr::eq(d, *cs));
            note(
                Level::Error,
                format!(
                    "zone {}: lost update, serial {}{}: {}",
                    z.origin,
                    cs.serial,
                    if unverified {
                        " (the damaged entry itself: this may be wrong)"
                    } else {
                        ""
                    },
                    describe(cs, cfg.alt_type)
                ),
            );
        }
        bumps.push(bump_tracked(z, new, Some(hist)));
    }
    let mut unknown: Vec<&Vec<u8>> = scan
        .entries
        .iter()
        .map(|e| &e.cs.zone)
        .filter(|k| !zones.iter().any(|z| &z.apex == *k))
        .collect();
    unknown.sort();
    unknown.dedup();
    for k in unknown {
        note(
            Level::Warn,
            format!(
                "journal {}: entries for zone {}, which is no longer configured, are kept in the journal but not served",
                jpath.display(),
                key_to_name(k)
            ),
        );
    }
    if replayed > 0 {
        note(
            Level::Info,
            format!("journal {}: {replayed} entries replayed", jpath.display()),
        );
    }
    let rewrite = kind.map(|kind| Rewrite {
        kind,
        drop_zones,
        bumps,
    });
    Ok(LoadPlan {
        zones,
        histories,
        replayed,
        notes,
        journal: jpath.clone(),
        scan,
        rewrite,
    })
}

/// Logs the plan's notes, makes the journal on disk match it and opens it for
/// appending; returns the zones to serve.
pub fn apply(plan: LoadPlan) -> Result<(Vec<ZoneData>, Vec<History>, Journal), ServerError> {
    for n in &plan.notes {
        match n.level {
            Level::Info => tracing::info!("{}", n.text),
            Level::Warn => tracing::warn!("{}", n.text),
            Level::Error => tracing::error!("{}", n.text),
        }
    }
    let path = &plan.journal;
    let journal = match &plan.rewrite {
        None => Journal::open_scanned(path, &plan.scan)?,
        Some(rw) => {
            let buf = if plan.scan.exists {
                std::fs::read(path).map_err(|source| JournalError::Io {
                    path: path.clone(),
                    what: "cannot read",
                    source,
                })?
            } else {
                Vec::new()
            };
            if buf.len() as u64 != plan.scan.file_len {
                return Err(JournalError::Changed(path.clone()).into());
            }
            let mut out = Vec::with_capacity(buf.len());
            let mut kept = 0;
            for e in &plan.scan.entries {
                if !rw.drop_zones.contains(&e.cs.zone) {
                    out.extend_from_slice(&buf[e.offset as usize..(e.offset + e.len) as usize]);
                    kept += 1;
                }
            }
            for b in &rw.bumps {
                out.extend(frame(&encode(b)));
            }
            let aside = aside_name(path, rw.kind, crate::tsig::now_secs());
            let j = Journal::replace(path, &out, &aside)?;
            tracing::warn!(
                journal = %path.display(),
                kept_as = %aside.display(),
                entries_kept = kept,
                serial_moves = rw.bumps.len(),
                "journal moved aside (kept, not deleted) and written anew"
            );
            j
        }
    };
    Ok((plan.zones, plan.histories, journal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, Tail};
    use crate::server::Shared;
    use crate::testutil::{config, cs, key, ALT};

    fn zone_text(origin: &str, serial: u32, extra: &str) -> String {
        format!("$ORIGIN {origin}\n$TTL 60\n@ SOA ns1 h {serial} 3600 900 604800 60\n@ NS ns1\nns1 A 192.0.2.53\n{extra}")
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: DnsConfig,
    }

    impl Setup {
        fn new(zones: &[(&str, u32)]) -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let mut zs = Vec::new();
            for (name, serial) in zones {
                let file = dir.path().join(format!("{name}zone"));
                std::fs::write(&file, zone_text(name, *serial, "")).unwrap();
                zs.push((name.to_string(), file));
            }
            let cfg = config(dir.path(), zs);
            Setup { dir, cfg }
        }

        fn edit(&self, zi: usize, serial: u32, extra: &str) {
            let (name, file) = &self.cfg.zones[zi];
            std::fs::write(file, zone_text(name, serial, extra)).unwrap();
        }

        fn files(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        }

        fn asides(&self, kind: &str) -> Vec<Vec<u8>> {
            self.files()
                .into_iter()
                .filter(|(n, _)| n.starts_with(&format!("dns.journal.{kind}-")))
                .map(|(_, b)| b)
                .collect()
        }
    }

    fn write_journal(s: &Setup, entries: &[ChangeSet]) -> Vec<u8> {
        let (mut j, _) = Journal::open(&s.cfg.journal).unwrap();
        for e in entries {
            j.append(e).unwrap();
        }
        std::fs::read(&s.cfg.journal).unwrap()
    }

    fn serial(p: &LoadPlan, zi: usize) -> u32 {
        p.zones[zi].soa().unwrap().serial
    }

    fn alt(p: &LoadPlan, zi: usize, name: &str) -> Vec<Vec<u8>> {
        p.zones[zi]
            .node(&key(name))
            .and_then(|n| n.rrsets.get(&ALT))
            .map(|s| s.rdatas.clone())
            .unwrap_or_default()
    }

    fn notes(p: &LoadPlan, level: Level) -> String {
        p.notes
            .iter()
            .filter(|n| n.level == level)
            .map(|n| n.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn journal_replays_over_a_zone_file_at_or_below_its_base_serial() {
        let s = Setup::new(&[("example.com.", 1)]);
        write_journal(&s, &[cs("example.com.", 2), cs("example.com.", 3)]);
        for (file_serial, extra) in [(1, ""), (1, "new A 192.0.2.9\n"), (0, "")] {
            s.edit(0, file_serial, extra);
            let before = s.files();
            let p = plan(&s.cfg, StartOptions::default()).unwrap();
            assert_eq!(s.files(), before, "planning changes nothing");
            assert_eq!(serial(&p, 0), 3);
            assert_eq!(alt(&p, 0, "www.example.com."), vec![vec![10, 0, 0, 3]]);
            assert_eq!(p.replayed, 2);
            assert!(notes(&p, Level::Warn).is_empty(), "{:?}", p.notes);
            assert!(p.rewrite.is_none());
        }
    }

    #[test]
    fn a_zone_file_edited_past_the_journal_wins_and_the_journal_is_kept_aside() {
        let s = Setup::new(&[("example.com.", 1), ("example.net.", 5)]);
        let old = write_journal(
            &s,
            &[
                cs("example.com.", 2),
                cs("example.net.", 6),
                cs("example.com.", 3),
            ],
        );
        s.edit(0, 10, "edited A 192.0.2.5\n");
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert_eq!(serial(&p, 0), 10, "the zone file's serial");
        assert!(
            alt(&p, 0, "www.example.com.").is_empty(),
            "journal not replayed"
        );
        assert!(p.zones[0].node(&key("edited.example.com.")).is_some());
        assert_eq!(serial(&p, 1), 6, "the other zone still replays");
        let w = notes(&p, Level::Warn);
        assert!(
            w.contains("serial 10")
                && w.contains("base serial 1")
                && w.contains(&s.cfg.zones[0].1.display().to_string()),
            "{w}"
        );
        let (zones, _, mut j) = apply(p).unwrap();
        assert_eq!(zones[0].soa().unwrap().serial, 10);
        assert_eq!(
            s.asides("stale"),
            vec![old],
            "the old journal is kept whole"
        );
        let scan = Journal::scan(&s.cfg.journal).unwrap();
        assert_eq!(
            scan.entries
                .iter()
                .map(|e| e.cs.clone())
                .collect::<Vec<_>>(),
            vec![cs("example.net.", 6)],
            "the new journal keeps the other zone's entries"
        );
        // The next start finds nothing stale.
        j.append(&cs("example.com.", 11)).unwrap();
        drop(j);
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert!(notes(&p, Level::Warn).is_empty(), "{:?}", p.notes);
        assert_eq!(serial(&p, 0), 11);
    }

    #[test]
    fn an_edited_zone_file_whose_serial_is_not_past_the_journal_moves_on_above_it() {
        let s = Setup::new(&[("example.com.", 1)]);
        write_journal(
            &s,
            &[
                cs("example.com.", 2),
                cs("example.com.", 3),
                cs("example.com.", 4),
            ],
        );
        s.edit(0, 3, "");
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert_eq!(serial(&p, 0), 5, "above the journal's highest serial 4");
        let w = notes(&p, Level::Warn);
        assert!(
            w.contains("raise the serial") && w.contains("above 4"),
            "{w}"
        );
        let (_, _, j) = apply(p).unwrap();
        drop(j);
        // The move is journaled: a restart serves 5 again, without a warning.
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert_eq!(serial(&p, 0), 5);
        assert!(notes(&p, Level::Warn).is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn damage_stops_the_start_unless_recovery_is_asked_and_the_serial_keeps_rising() {
        let s = Setup::new(&[("example.com.", 1)]);
        let entries: Vec<ChangeSet> = (2..=26).map(|n| cs("example.com.", n)).collect();
        let mut b = write_journal(&s, &entries);
        let scan = Journal::scan(&s.cfg.journal).unwrap();
        let hit = &scan.entries[12]; // serial 14
        b[(hit.offset + hit.len / 2) as usize] ^= 0x01;
        std::fs::write(&s.cfg.journal, &b).unwrap();
        let before = s.files();

        let e = plan(&s.cfg, StartOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&s.cfg.journal.display().to_string())
                && e.contains(&format!("byte {}", hit.offset))
                && e.contains("entry 13")
                && e.contains("--recover-journal"),
            "{e}"
        );
        assert!(!e.contains("never acknowledged"), "{e}");
        assert!(Shared::load(&s.cfg).is_err());
        assert_eq!(s.files(), before, "a refused start changes nothing");

        let opts = StartOptions {
            recover_journal: true,
        };
        let p = plan(&s.cfg, opts).unwrap();
        assert_eq!(s.files(), before, "planning a recovery changes nothing");
        assert_eq!(p.replayed, 12);
        assert_eq!(alt(&p, 0, "www.example.com."), vec![vec![10, 0, 0, 13]]);
        assert_eq!(
            serial(&p, 0),
            27,
            "above 26, the highest serial in the file"
        );
        let lost = notes(&p, Level::Error);
        assert!(lost.contains("serials 14..=26"), "{lost}");
        assert!(
            lost.contains("15..=26"),
            "the readable lost serials: {lost}"
        );
        assert!(
            lost.contains("lost update, serial 20: www.example.com. ALT set to 1 record(s)"),
            "{lost}"
        );
        let (_, _, mut j) = apply(p).unwrap();
        assert_eq!(
            s.asides("damaged"),
            vec![b.clone()],
            "the damaged file is kept"
        );
        j.append(&cs("example.com.", 28)).unwrap();
        drop(j);
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert_eq!(serial(&p, 0), 28);
        assert!(
            p.notes.iter().all(|n| n.level == Level::Info),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn an_unreadable_damaged_entry_still_moves_every_serial_on() {
        let s = Setup::new(&[("example.com.", 1), ("example.net.", 7)]);
        let mut b = write_journal(&s, &[cs("example.com.", 2), cs("example.com.", 3)]);
        // The last entry's zone name is damaged: nothing says whose it was.
        let scan = Journal::scan(&s.cfg.journal).unwrap();
        let last = scan.entries[1].offset as usize;
        b[last + 9] = 0xFF;
        std::fs::write(&s.cfg.journal, &b).unwrap();
        let p = plan(
            &s.cfg,
            StartOptions {
                recover_journal: true,
            },
        )
        .unwrap();
        // Serial 2 replayed; the unreadable entry presumably took 3 (7 + 1 had it been
        // the other zone's): each zone moves on past that.
        assert_eq!(serial(&p, 0), 4);
        assert_eq!(serial(&p, 1), 9);
    }

    #[test]
    fn a_torn_tail_is_reported_by_the_plan_and_cut_by_apply() {
        let s = Setup::new(&[("example.com.", 1)]);
        let mut b = write_journal(&s, &[cs("example.com.", 2)]);
        let good = b.len();
        b.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3, 4, 2, 12]);
        std::fs::write(&s.cfg.journal, &b).unwrap();
        let before = s.files();
        let p = plan(&s.cfg, StartOptions::default()).unwrap();
        assert!(
            notes(&p, Level::Warn).contains("incomplete record"),
            "{:?}",
            p.notes
        );
        assert_eq!(s.files(), before);
        let (_, _, j) = apply(p).unwrap();
        drop(j);
        assert_eq!(std::fs::read(&s.cfg.journal).unwrap().len(), good);
        assert_eq!(Journal::scan(&s.cfg.journal).unwrap().tail, Tail::Clean);
    }
}
