//! The update journal: every accepted update is appended and fsynced before it is
//! answered, and replayed at start, so nothing acknowledged is lost by a crash.
//!
//! Each entry is `len: u32 | crc32: u32 | payload`, the payload holding the final state
//! of every RRset the update touched ([`ChangeSet`]). A torn last entry (the process died
//! while writing, before answering) fails its length or checksum and is cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::update::{Change, ChangeSet};
use crate::zone::RRset;

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
}

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// CRC-32 (IEEE), bitwise: entries are small and written once per update.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

impl Journal {
    /// Opens (creating) the journal and returns it with the valid entries it holds.
    /// A damaged tail is truncated away.
    pub fn open(path: &Path) -> Result<(Self, Vec<ChangeSet>), JournalError> {
        let io = |what, source| JournalError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io("cannot open", e))?;
        // A new journal's directory entry must be durable too, or the first
        // acknowledged update could vanish with the file after a power loss.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot sync its directory", e))?;
        }
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|e| io("cannot read", e))?;
        let (entries, good) = decode_all(&buf);
        if good < buf.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = buf.len() - good,
                "journal ends with an incomplete entry (a crash while writing an update that was never acknowledged); cutting it off"
            );
            file.set_len(good as u64)
                .map_err(|e| io("cannot truncate", e))?;
            file.sync_all().map_err(|e| io("cannot sync", e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| io("cannot seek", e))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            entries,
        ))
    }

    /// Appends one change set and waits until it is on disk.
    pub fn append(&mut self, cs: &ChangeSet) -> Result<(), JournalError> {
        let payload = encode(cs);
        let mut entry = Vec::with_capacity(payload.len() + 8);
        entry.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        entry.extend_from_slice(&crc32(&payload).to_be_bytes());
        entry.extend_from_slice(&payload);
        let path = self.path.clone();
        let io = |what, source| JournalError::Io { path, what, source };
        self.file
            .write_all(&entry)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| io("cannot write", e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn put_bytes8(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// Encodes a change set payload.
pub fn encode(cs: &ChangeSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(1); // format version
    put_bytes8(&mut out, &cs.zone);
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

/// Decodes a change set payload.
pub fn decode(payload: &[u8]) -> Option<ChangeSet> {
    let mut r = Rd { b: payload, p: 0 };
    if r.u8()? != 1 {
        return None;
    }
    let zone = r.bytes8()?;
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
        serial,
        changes,
    })
}

/// Decodes entries from the start; returns them and the length of the valid prefix.
fn decode_all(buf: &[u8]) -> (Vec<ChangeSet>, usize) {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 8 <= buf.len() {
        let len = u32::from_be_bytes(buf[p..p + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(buf[p + 4..p + 8].try_into().expect("4 bytes"));
        let Some(payload) = buf.get(p + 8..p + 8 + len) else {
            break;
        };
        if crc32(payload) != crc {
            break;
        }
        let Some(cs) = decode(payload) else { break };
        out.push(cs);
        p += 8 + len;
    }
    (out, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(serial: u32) -> ChangeSet {
        ChangeSet {
            zone: b"\x07example\x03com\x00".to_vec(),
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

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
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
        let third = encode(&cs(13));
        f.write_all(&(third.len() as u32).to_be_bytes()).unwrap();
        f.write_all(&crc32(&third).to_be_bytes()).unwrap();
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

    #[test]
    fn corrupt_payload_is_rejected() {
        let p = encode(&cs(1));
        assert_eq!(decode(&p), Some(cs(1)));
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_none(), "prefix {cut} accepted");
        }
        let mut bad = p.clone();
        bad[0] = 9;
        assert!(decode(&bad).is_none());
    }
}
