//! The update journal: every accepted update is appended and fsynced before it is
//! answered, and replayed at start, so nothing acknowledged is lost by a crash.
//!
//! Each entry is `len: u32 | crc32: u32 | payload`, the payload holding the final state
//! of every RRset the update touched ([`ChangeSet`]). Reading tells three endings apart
//! ([`Scan`]):
//!
//! - clean: every entry is whole and its checksum matches;
//! - a torn last entry ([`Tail::Torn`]): the file ends inside an entry (its length or its
//!   record is incomplete, or the rest of the file is zeros) and nothing intact follows.
//!   That is a write the process died in, before it was fsynced, so before it was
//!   acknowledged: it is safe to cut off;
//! - damage ([`Tail::Damaged`]): a whole entry whose checksum does not match, or an
//!   entry whose length points past the end while intact entries follow it. That entry
//!   (and whatever follows) was acknowledged, so the journal is never cut there
//!   silently: the server refuses to start until the operator decides
//!   (`scold dns --recover-journal`).
//!
//! Payload versions: 1 (the first format) holds the zone, the serial after the change
//! and the changes; 2 adds the serial before the change, the journal's "base serial"
//! that tells whether an edited zone file has moved past the journal. Both are read;
//! new entries are written as version 2. A version-1 entry's base serial is taken as
//! its serial minus one, which is exact unless that update set the SOA serial itself.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::update::{Change, ChangeSet};
use crate::zone::RRset;

/// Bytes before each payload: length and CRC-32.
pub const ENTRY_HEADER: usize = 8;

/// A journal failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Opening, reading or writing failed.
    #[error("journal {path}: {what}: {source} (check the directory exists and is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// An acknowledged entry is damaged: cutting the journal there would lose it.
    #[error("{}", damage_message(.path, .damage))]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where and how.
        damage: Box<Damage>,
        /// Intact entries before the damage.
        intact_before: usize,
    },
    /// The file changed between reading it and acting on what was read.
    #[error("journal {0}: it changed while scold dns was reading it; is another scold dns using it? Start again once it is the only one")]
    Changed(PathBuf),
}

fn damage_message(path: &Path, d: &Damage) -> String {
    let later = match (d.later.len(), d.highest_serial_after()) {
        (0, _) => "no intact entry follows it".to_string(),
        (n, Some(s)) => format!("{n} intact entries follow it (highest serial {s})"),
        (n, None) => format!("{n} intact entries follow it"),
    };
    format!(
        "journal {} is damaged at byte {}, in entry {} ({}); {}. Its updates were acknowledged, so scold dns does not cut the journal there and does not start; nothing was changed. \
To start from the {} intact entries before the damage, run scold dns with --recover-journal: the damaged file is kept beside it (renamed with a `.damaged-<time>` suffix), the serials lost are logged, and the zone serial continues above the highest one seen. Or put back a copy of the journal from a backup",
        path.display(),
        d.offset,
        d.entry,
        d.reason,
        later,
        d.entry - 1,
    )
}

/// An intact entry as read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedEntry {
    /// Byte offset of its header.
    pub offset: u64,
    /// Its length with the header.
    pub len: u64,
    /// What it holds.
    pub cs: ChangeSet,
}

/// Where and how a journal is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first damaged entry.
    pub offset: u64,
    /// Its number, counting from 1.
    pub entry: usize,
    /// What is wrong with it.
    pub reason: String,
    /// The damaged entry's contents, decoded without trusting them, when they decode
    /// (its zone and serial tell which serial was lost).
    pub damaged: Option<ChangeSet>,
    /// Intact entries found after the damage.
    pub later: Vec<ScannedEntry>,
}

impl Damage {
    /// The highest serial of the intact entries after the damage.
    pub fn highest_serial_after(&self) -> Option<u32> {
        self.later.iter().map(|e| e.cs.serial).reduce(|a, b| {
            if crate::update::serial_gt(b, a) {
                b
            } else {
                a
            }
        })
    }
}

/// How the journal ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to an intact entry.
    Clean,
    /// The last entry is incomplete: a write cut short before it was acknowledged.
    Torn {
        /// Where it starts.
        offset: u64,
        /// Its bytes on disk.
        bytes: u64,
        /// "incomplete length", "incomplete record" or "zero-filled".
        how: &'static str,
    },
    /// An acknowledged entry is damaged.
    Damaged(Box<Damage>),
}

/// What reading a journal found, with nothing changed on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The intact entries before any torn tail or damage, in order.
    pub entries: Vec<ScannedEntry>,
    /// How the file ends.
    pub tail: Tail,
    /// The file's length (0 when it does not exist).
    pub file_len: u64,
    /// Whether the file exists.
    pub exists: bool,
}

impl Scan {
    /// Length of the intact prefix.
    pub fn valid_len(&self) -> u64 {
        self.entries.last().map(|e| e.offset + e.len).unwrap_or(0)
    }

    /// The intact entries of the zone with apex `apex`, in order.
    pub fn changes_of(&self, apex: &[u8]) -> Vec<&ChangeSet> {
        self.entries
            .iter()
            .map(|e| &e.cs)
            .filter(|c| c.zone == apex)
            .collect()
    }
}

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE), table-driven: a damaged journal is searched for intact entries at
/// every byte offset after the damage.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// One entry frame around a payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(payload.len() + ENTRY_HEADER);
    entry.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    entry.extend_from_slice(&crc32(payload).to_be_bytes());
    entry.extend_from_slice(payload);
    entry
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Makes a directory entry change (a created, renamed or linked file) durable.
pub fn sync_dir(path: &Path) -> Result<(), JournalError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(path, "cannot sync its directory"))?;
    }
    Ok(())
}

impl Journal {
    /// Reads the journal at `path` and changes nothing on disk; a missing file reads as
    /// an empty journal.
    pub fn scan(path: &Path) -> Result<Scan, JournalError> {
        let buf = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Scan {
                    entries: Vec::new(),
                    tail: Tail::Clean,
                    file_len: 0,
                    exists: false,
                })
            }
            Err(e) => return Err(io_err(path, "cannot read")(e)),
        };
        let mut s = scan_bytes(&buf);
        s.exists = true;
        Ok(s)
    }

    /// Opens (creating) the journal and returns it with the intact entries it holds.
    /// A torn last entry is cut off; damage is an error and changes nothing.
    pub fn open(path: &Path) -> Result<(Self, Vec<ChangeSet>), JournalError> {
        let scan = Self::scan(path)?;
        if let Tail::Damaged(d) = &scan.tail {
            return Err(JournalError::Damaged {
                path: path.to_path_buf(),
                damage: d.clone(),
                intact_before: scan.entries.len(),
            });
        }
        if let Tail::Torn { offset, bytes, how } = scan.tail {
            tracing::warn!(
                path = %path.display(),
                offset,
                dropped_bytes = bytes,
                how,
                intact_entries = scan.entries.len(),
                "journal ends with an incomplete entry: a write cut short by a crash, before it was on disk and so before it was acknowledged; cutting it off"
            );
        }
        let j = Self::open_scanned(path, &scan)?;
        Ok((j, scan.entries.into_iter().map(|e| e.cs).collect()))
    }

    /// Opens (creating) the journal for appending after `scan` was read from it: a torn
    /// tail the scan found is cut off (the caller reports it). Fails without changing
    /// anything if the file is no longer the one scanned, or if the scan found damage.
    pub fn open_scanned(path: &Path, scan: &Scan) -> Result<Self, JournalError> {
        if let Tail::Damaged(d) = &scan.tail {
            return Err(JournalError::Damaged {
                path: path.to_path_buf(),
                damage: d.clone(),
                intact_before: scan.entries.len(),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path, "cannot open"))?;
        // A new journal's directory entry must be durable too, or the first
        // acknowledged update could vanish with the file after a power loss.
        sync_dir(path)?;
        let len = file
            .metadata()
            .map_err(io_err(path, "cannot read its size"))?
            .len();
        if len != scan.file_len {
            return Err(JournalError::Changed(path.to_path_buf()));
        }
        if let Tail::Torn { .. } = scan.tail {
            file.set_len(scan.valid_len())
                .map_err(io_err(path, "cannot truncate"))?;
            file.sync_all().map_err(io_err(path, "cannot sync"))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(io_err(path, "cannot seek"))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes a new journal at `path` holding `entries` (whole frames, in order), keeping
    /// the file that was there under `aside` (a hard link, so it is never deleted), and
    /// opens it for appending. Crash-safe: until the final rename the old journal is in
    /// place; after it, both files are.
    pub fn replace(path: &Path, entries: &[u8], aside: &Path) -> Result<Self, JournalError> {
        let tmp = path.with_extension(format!(
            "{}new",
            path.extension()
                .map(|e| format!("{}.", e.to_string_lossy()))
                .unwrap_or_default()
        ));
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp, "cannot create"))?;
            f.write_all(entries)
                .and_then(|_| f.sync_all())
                .map_err(io_err(&tmp, "cannot write"))?;
        }
        if path.exists() {
            // A hard link keeps the very bytes; where links are not supported, a copy.
            if std::fs::hard_link(path, aside).is_err() {
                std::fs::copy(path, aside)
                    .and_then(|_| File::open(aside)?.sync_all())
                    .map_err(io_err(aside, "cannot keep the old journal under this name"))?;
            }
            sync_dir(aside)?;
        }
        std::fs::rename(&tmp, path).map_err(io_err(path, "cannot put the new journal in place"))?;
        sync_dir(path)?;
        let scan = Self::scan(path)?;
        Self::open_scanned(path, &scan)
    }

    /// Appends one change set and waits until it is on disk.
    pub fn append(&mut self, cs: &ChangeSet) -> Result<(), JournalError> {
        let entry = frame(&encode(cs));
        let path = self.path.clone();
        self.file
            .write_all(&entry)
            .and_then(|_| self.file.sync_data())
            .map_err(io_err(&path, "cannot write"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A name next to `path` that does not exist yet: `<file>.<what>-<unix time>[-n]`.
pub fn aside_name(path: &Path, what: &str, now: u64) -> PathBuf {
    let base = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n = 0;
    loop {
        let name = if n == 0 {
            format!("{base}.{what}-{now}")
        } else {
            format!("{base}.{what}-{now}-{n}")
        };
        let p = path.with_file_name(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

fn put_bytes8(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// Encodes a change set payload (version 2).
pub fn encode(cs: &ChangeSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(2); // format version
    put_bytes8(&mut out, &cs.zone);
    out.extend_from_slice(&cs.prev_serial.to_be_bytes());
    out.extend_from_slice(&cs.serial.to_be_bytes());
    out.extend_from_slice(&(cs.changes.len() as u16).to_be_bytes());
    for c in &cs.changes {
        put_bytes8(&mut out, &c.name);
        out.extend_from_slice(&c.rtype.to_be_bytes());
        match &c.set {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.ttl.to_be_bytes());
                out.extend_from_slice(&(s.rdatas.len() as u16).to_be_bytes());
                for rd in &s.rdatas {
                    out.extend_from_slice(&(rd.len() as u16).to_be_bytes());
                    out.extend_from_slice(rd);
                }
            }
        }
    }
    out
}

struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes8(&mut self) -> Option<Vec<u8>> {
        let n = self.u8()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

/// Decodes a change set payload of version 1 or 2.
pub fn decode(payload: &[u8]) -> Option<ChangeSet> {
    let mut r = Rd { b: payload, p: 0 };
    let version = r.u8()?;
    if !(1..=2).contains(&version) {
        return None;
    }
    let zone = r.bytes8()?;
    let prev = if version >= 2 { Some(r.u32()?) } else { None };
    let serial = r.u32()?;
    let n = r.u16()?;
    let mut changes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = r.bytes8()?;
        let rtype = r.u16()?;
        let set = match r.u8()? {
            0 => None,
            1 => {
                let ttl = r.u32()?;
                let k = r.u16()?;
                let mut rdatas = Vec::with_capacity(k as usize);
                for _ in 0..k {
                    let l = r.u16()? as usize;
                    rdatas.push(r.take(l)?.to_vec());
                }
                Some(RRset { ttl, rdatas })
            }
            _ => return None,
        };
        changes.push(Change { name, rtype, set });
    }
    (r.p == payload.len()).then_some(ChangeSet {
        zone,
        prev_serial: prev.unwrap_or_else(|| serial.wrapping_sub(1)),
        serial,
        changes,
    })
}

/// What sits at one offset.
enum At {
    /// An intact entry of this many bytes.
    Valid(usize, ChangeSet),
    /// The file ends inside the header or the record.
    Short(&'static str),
    /// A whole entry that is not intact.
    Bad(&'static str, Option<ChangeSet>),
}

fn entry_at(buf: &[u8], p: usize) -> At {
    let rest = &buf[p..];
    if rest.len() < ENTRY_HEADER {
        return At::Short("incomplete length");
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let Some(payload) = rest.get(ENTRY_HEADER..ENTRY_HEADER.saturating_add(len)) else {
        return At::Short("incomplete record");
    };
    if crc32(payload) != crc {
        return At::Bad("its checksum does not match its contents", decode(payload));
    }
    match decode(payload) {
        Some(cs) => At::Valid(ENTRY_HEADER + len, cs),
        None => At::Bad(
            "its checksum matches but its contents cannot be read (written by a newer scold dns?)",
            None,
        ),
    }
}

/// The intact entries found at or after `from`, trying every byte offset until one
/// reads, then following entry by entry.
fn resync(buf: &[u8], from: usize) -> Vec<ScannedEntry> {
    let mut out = Vec::new();
    let mut q = from;
    while q + ENTRY_HEADER < buf.len() {
        match entry_at(buf, q) {
            At::Valid(l, cs) => {
                out.push(ScannedEntry {
                    offset: q as u64,
                    len: l as u64,
                    cs,
                });
                q += l;
            }
            _ => q += 1,
        }
    }
    out
}

/// Reads journal bytes: the intact entries and how the file ends.
pub fn scan_bytes(buf: &[u8]) -> Scan {
    let mut entries = Vec::new();
    let mut p = 0;
    let tail = loop {
        if p == buf.len() {
            break Tail::Clean;
        }
        let rest = &buf[p..];
        let torn = |how| Tail::Torn {
            offset: p as u64,
            bytes: rest.len() as u64,
            how,
        };
        // A file extended by a write that never reached the disk reads back as zeros.
        if rest.iter().all(|&b| b == 0) {
            break torn("zero-filled");
        }
        let entry = entries.len() + 1;
        let damaged = |reason: String, damaged, later| {
            Tail::Damaged(Box::new(Damage {
                offset: p as u64,
                entry,
                reason,
                damaged,
                later,
            }))
        };
        match entry_at(buf, p) {
            At::Valid(l, cs) => {
                entries.push(ScannedEntry {
                    offset: p as u64,
                    len: l as u64,
                    cs,
                });
                p += l;
            }
            At::Short(how) => {
                // Torn only if it really is the end: an entry whose length was damaged
                // also looks incomplete, but then its checksum matches the rest of the
                // file (it was the last one) or intact entries follow it.
                if rest.len() > ENTRY_HEADER {
                    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                    let body = &rest[ENTRY_HEADER..];
                    if crc32(body) == crc {
                        break damaged(
                            "its length field is wrong: it points past the end of the file, yet the entry is whole".into(),
                            decode(body),
                            Vec::new(),
                        );
                    }
                }
                let later = resync(buf, p + 1);
                if !later.is_empty() {
                    break damaged(
                        format!("its length field points past the end of the file, yet intact entries follow it from byte {}", later[0].offset),
                        None,
                        later,
                    );
                }
                break torn(how);
            }
            At::Bad(reason, cs) => {
                break damaged(reason.into(), cs, resync(buf, p + 1));
            }
        }
    };
    Scan {
        entries,
        tail,
        file_len: buf.len() as u64,
        exists: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(serial: u32) -> ChangeSet {
        ChangeSet {
            zone: b"\x07example\x03com\x00".to_vec(),
            prev_serial: serial - 1,
            serial,
            changes: vec![
                Change {
                    name: b"\x03WWW\x07example\x03com\x00".to_vec(),
                    rtype: 65280,
                    set: Some(RRset {
                        ttl: 30,
                        rdatas: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
                    }),
                },
                Change {
                    name: b"\x03old\x07example\x03com\x00".to_vec(),
                    rtype: 1,
                    set: None,
                },
            ],
        }
    }

    /// A version-1 payload, as the first format wrote it.
    fn encode_v1(cs: &ChangeSet) -> Vec<u8> {
        let v2 = encode(cs);
        let zl = 1 + v2[1] as usize;
        let mut out = vec![1];
        out.extend_from_slice(&v2[1..1 + zl]);
        out.extend_from_slice(&v2[1 + zl + 4..]);
        out
    }

    fn journal(n: u32) -> Vec<u8> {
        (2..2 + n).flat_map(|s| frame(&encode(&cs(s)))).collect()
    }

    fn serials(s: &Scan) -> Vec<u32> {
        s.entries.iter().map(|e| e.cs.serial).collect()
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let (mut j, e) = Journal::open(&path).unwrap();
            assert!(e.is_empty());
            j.append(&cs(11)).unwrap();
            j.append(&cs(12)).unwrap();
        }
        // A crash in the middle of a third write.
        let good_len = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let third = frame(&encode(&cs(13)));
        f.write_all(&third[..third.len() / 2]).unwrap();
        drop(f);
        let (mut j, e) = Journal::open(&path).unwrap();
        assert_eq!(e, vec![cs(11), cs(12)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        j.append(&cs(14)).unwrap();
        drop(j);
        let (_, e) = Journal::open(&path).unwrap();
        assert_eq!(e, vec![cs(11), cs(12), cs(14)]);
    }

    /// Every way a write can be cut short is a torn tail: any prefix of the last
    /// entry, and a zero-filled extension.
    #[test]
    fn every_cut_of_the_last_entry_is_torn() {
        let full = journal(5);
        let last = frame(&encode(&cs(7)));
        for cut in 1..last.len() {
            let mut b = full.clone();
            b.extend_from_slice(&last[..cut]);
            let s = scan_bytes(&b);
            assert_eq!(
                serials(&s),
                vec![2, 3, 4, 5, 6],
                "cut {cut}: the intact entries"
            );
            let Tail::Torn { offset, bytes, how } = s.tail else {
                panic!("cut {cut}: {:?}", s.tail)
            };
            assert_eq!((offset, bytes), (full.len() as u64, cut as u64));
            let want = if last[..cut].iter().all(|&x| x == 0) {
                "zero-filled"
            } else if cut < ENTRY_HEADER {
                "incomplete length"
            } else {
                "incomplete record"
            };
            assert_eq!(how, want);
        }
        let mut b = full.clone();
        b.extend_from_slice(&[0; 300]);
        assert!(matches!(
            scan_bytes(&b).tail,
            Tail::Torn {
                how: "zero-filled",
                ..
            }
        ));
        assert_eq!(scan_bytes(&full).tail, Tail::Clean);
    }

    /// One flipped bit anywhere in a 25-entry journal is never taken for a torn tail:
    /// it is damage, at the entry it hit, with the entries before it intact and those
    /// after it found.
    #[test]
    fn any_flipped_bit_is_damage_never_a_torn_tail() {
        let b = journal(25);
        let offsets: Vec<usize> = scan_bytes(&b)
            .entries
            .iter()
            .map(|e| e.offset as usize)
            .collect();
        for i in 0..b.len() {
            for bit in [0u8, 3, 7] {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                let s = scan_bytes(&d);
                let hit = offsets.iter().rposition(|&o| o <= i).unwrap();
                let Tail::Damaged(dmg) = &s.tail else {
                    panic!("byte {i} bit {bit}: {:?}", s.tail);
                };
                assert_eq!(s.entries.len(), hit, "byte {i}: intact entries before");
                assert_eq!(dmg.entry, hit + 1);
                assert_eq!(dmg.offset, offsets[hit] as u64);
                if hit < 24 {
                    assert_eq!(
                        dmg.highest_serial_after(),
                        Some(26),
                        "byte {i} bit {bit}: the entries after the damage are found"
                    );
                }
            }
        }
    }

    #[test]
    fn version_1_entries_are_read_and_mixed_with_version_2() {
        let mut b = frame(&encode_v1(&cs(2)));
        b.extend(frame(&encode_v1(&cs(3))));
        b.extend(frame(&encode(&cs(4))));
        let s = scan_bytes(&b);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(
            s.entries.iter().map(|e| e.cs.clone()).collect::<Vec<_>>(),
            vec![cs(2), cs(3), cs(4)]
        );
        // A torn version-1 tail is still torn.
        let v1 = frame(&encode_v1(&cs(5)));
        let mut t = b.clone();
        t.extend_from_slice(&v1[..10]);
        assert!(matches!(scan_bytes(&t).tail, Tail::Torn { .. }));
    }

    #[test]
    fn damaged_file_is_refused_by_open_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut b = journal(25);
        let mid = b.len() / 2;
        b[mid] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        let e = Journal::open(&path).err().expect("damage is an error");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("byte ")
                && msg.contains("in entry 13")
                && msg.contains("--recover-journal"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b, "the file is untouched");
    }

    #[test]
    fn scan_changes_nothing_and_missing_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let s = Journal::scan(&path).unwrap();
        assert!(!s.exists && s.entries.is_empty());
        assert!(!path.exists(), "a scan creates nothing");
        let mut b = journal(3);
        b.extend_from_slice(&[0, 0, 1]);
        std::fs::write(&path, &b).unwrap();
        let s = Journal::scan(&path).unwrap();
        assert!(matches!(s.tail, Tail::Torn { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), b);
    }

    #[test]
    fn replace_keeps_the_old_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.journal");
        let old = journal(4);
        std::fs::write(&path, &old).unwrap();
        let aside = aside_name(&path, "damaged", 1234);
        assert_eq!(aside.file_name().unwrap(), "dns.journal.damaged-1234");
        let keep = frame(&encode(&cs(2)));
        let mut j = Journal::replace(&path, &keep, &aside).unwrap();
        j.append(&cs(9)).unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), old);
        let s = Journal::scan(&path).unwrap();
        assert_eq!(serials(&s), vec![2, 9]);
        assert_eq!(
            aside_name(&path, "damaged", 1234).file_name().unwrap(),
            "dns.journal.damaged-1234-1"
        );
    }

    #[test]
    fn corrupt_payload_is_rejected() {
        let p = encode(&cs(1 + 1));
        assert_eq!(decode(&p), Some(cs(2)));
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_none(), "prefix {cut} accepted");
        }
        let mut bad = p.clone();
        bad[0] = 9;
        assert!(decode(&bad).is_none());
        let v1 = encode_v1(&cs(2));
        assert_eq!(decode(&v1), Some(cs(2)));
    }
}
