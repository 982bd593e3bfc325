//! The journal as an operator meets it after a crash, a damaged disk or an edited zone
//! file: real `scold dns` processes, updates sent with BIND's `nsupdate`, answers read
//! with `dig`, and the files on disk compared byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

fn coordinator() -> String {
    format!("hmac-sha256:coordinator:{SECRET}")
}

/// `count` updates in one nsupdate run: k<first>..k<first+count-1>.example.com ALT.
fn updates(port: u16, first: u32, count: u32) {
    let mut script = format!("server 127.0.0.1 {port}\nzone example.com\n");
    for k in first..first + count {
        script.push_str(&format!(
            "update add k{k}.example.com. 60 TYPE65280 \\# 4 0A0000{k:02X}\nsend\n"
        ));
    }
    let out = nsupdate(&["-y", &coordinator()], &script);
    assert!(
        out.status.success(),
        "nsupdate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn soa_serial(port: u16) -> u32 {
    let soa = dig_short(port, "example.com", "SOA", &[]);
    assert_eq!(soa.len(), 1, "SOA answer: {soa:?}");
    soa[0]
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no serial in {soa:?}"))
}

fn has_k(port: u16, k: u32) -> bool {
    !dig_short(port, &format!("k{k}.example.com"), "TYPE65280", &[]).is_empty()
}

/// Every file in `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .filter(|(n, _)| !n.starts_with("dns-") || !n.ends_with(".log"))
        .collect()
}

/// Files of `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, b)| b)
        .collect()
}

/// One flipped byte in the middle of the journal is damage, not a torn tail: the
/// server refuses to start (naming the file, the byte offset, the entry and what to
/// do) and changes nothing; `--recover-journal` keeps the damaged file aside, starts
/// from the entries before the damage, logs the serials lost, and serves a serial
/// above every one the journal held, so it never goes backwards.
#[test]
fn flipped_byte_mid_journal_stops_the_start_and_recovery_keeps_the_serial_rising() {
    let s = DnsSetup::new(0, "");
    let journal = s.path("dns.journal");
    let mut srv = s.start("fill");
    updates(s.port, 1, 25);
    assert_eq!(soa_serial(s.port), 26);
    srv.terminate();

    let mut b = std::fs::read(&journal).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&journal, &b).unwrap();
    let before = snapshot(s.dir.path());

    for (tag, args) in [("refused", &[][..]), ("check", &["--check"][..])] {
        let (st, log) = s.run_to_exit(tag, args);
        assert!(!st.success(), "{args:?} accepted a damaged journal:\n{log}");
        assert!(
            log.contains(&journal.display().to_string())
                && log.contains("is damaged at byte ")
                && log.contains(", in entry ")
                && log.contains("--recover-journal"),
            "{args:?}: the error names the file, the offset, the entry and the way out:\n{log}"
        );
        assert!(!log.contains("never acknowledged"), "{log}");
        assert_eq!(snapshot(s.dir.path()), before, "{args:?} changed files");
    }
    let (st, log) = s.run_to_exit("check-recover", &["--check", "--recover-journal"]);
    assert!(st.success(), "{log}");
    assert!(
        log.contains("are lost") && log.contains("serving serial 27"),
        "{log}"
    );
    assert_eq!(
        snapshot(s.dir.path()),
        before,
        "--check --recover-journal changed files"
    );

    // Which entry was hit, from the error: entries before it survive, the rest is lost.
    let (_, log) = s.run_to_exit("refused-again", &[]);
    let entry: u32 = log
        .split(", in entry ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry number in:\n{log}"));
    assert!(
        (2..=24).contains(&entry),
        "entry {entry} is not in the middle"
    );

    let srv = s.start_with("recovered", &["--recover-journal"]);
    assert_eq!(
        soa_serial(s.port),
        27,
        "the serial continues above 26, the highest in the damaged file"
    );
    for k in 1..entry {
        assert!(has_k(s.port, k), "k{k} (entry {k}, before the damage) lost");
    }
    for k in entry..=25 {
        assert!(!has_k(s.port, k), "k{k} came back from the damaged part");
    }
    let log = srv.log_text();
    let lost = format!("serials {}..=26", entry + 1);
    assert!(
        log.contains(&lost),
        "the lost serials {lost} are logged:\n{log}"
    );
    assert_eq!(
        named(s.dir.path(), "dns.journal.damaged-"),
        vec![b.clone()],
        "the damaged journal is kept, byte for byte"
    );

    // The recovered journal works: a new update, a kill -9, a plain restart.
    updates(s.port, 40, 1);
    assert_eq!(soa_serial(s.port), 28);
    drop(srv);
    let srv = s.start("after");
    assert_eq!(soa_serial(s.port), 28);
    assert!(has_k(s.port, 40) && has_k(s.port, 1));
    assert!(!srv.log_text().contains("damaged"), "{}", srv.log_text());
}

/// `scold dns --check` reads and reports; it changes nothing on disk, not even a torn
/// journal tail that a real start cuts.
#[test]
fn check_changes_nothing_on_disk_even_with_a_torn_journal() {
    let s = DnsSetup::new(0, "");
    let journal = s.path("dns.journal");
    // No journal yet: a check does not create one.
    let before = snapshot(s.dir.path());
    let (st, log) = s.run_to_exit("check0", &["--check"]);
    assert!(st.success(), "{log}");
    assert_eq!(snapshot(s.dir.path()), before, "--check created a file");

    let mut srv = s.start("fill");
    updates(s.port, 1, 3);
    srv.kill9();
    // A crash while the fourth update was being written: its length and part of it.
    let mut b = std::fs::read(&journal).unwrap();
    let good = b.len();
    b.extend_from_slice(&[0, 0, 0, 60, 0x12, 0x34, 0x56, 0x78, 2, 12, b'e']);
    std::fs::write(&journal, &b).unwrap();

    let before = snapshot(s.dir.path());
    let (st, log) = s.run_to_exit("check", &["--check"]);
    assert!(st.success(), "{log}");
    assert!(
        log.contains("is valid")
            && log.contains("incomplete record")
            && log.contains("cut off at start"),
        "--check reports what a start would do:\n{log}"
    );
    assert_eq!(snapshot(s.dir.path()), before, "--check changed files");

    // A real start cuts the torn entry and keeps the three acknowledged ones.
    let _srv = s.start("cut");
    assert_eq!(std::fs::read(&journal).unwrap().len(), good);
    for k in 1..=3 {
        assert!(has_k(s.port, k));
    }
    assert_eq!(soa_serial(s.port), 4);
}

/// A zone file edited with a higher serial wins over the journal written against
/// the old file (as BIND treats an out-of-date journal): the start warns, naming both
/// serials and the file, serves the file's data, and keeps the old journal aside;
/// a zone file edited without raising its serial still gets the journal replayed.
#[test]
fn zone_file_edited_with_a_higher_serial_wins_over_the_stale_journal() {
    let s = DnsSetup::new(0, "");
    let zone = s.path("example.com.zone");
    let journal = s.path("dns.journal");
    let mut srv = s.start("fill");
    updates(s.port, 1, 2);
    assert_eq!(soa_serial(s.port), 3);
    srv.terminate();

    // Edited, serial left at 1: the journal still applies.
    let text = std::fs::read_to_string(&zone).unwrap();
    std::fs::write(&zone, format!("{text}same A 192.0.2.44\n")).unwrap();
    let mut srv = s.start("same-serial");
    assert_eq!(soa_serial(s.port), 3);
    assert!(has_k(s.port, 1) && has_k(s.port, 2));
    assert_eq!(
        dig_short(s.port, "same.example.com", "A", &[]),
        vec!["192.0.2.44"]
    );
    assert!(
        !srv.log_text().contains("base serial"),
        "{}",
        srv.log_text()
    );
    srv.terminate();

    // Edited with serial 10: the file wins.
    let old_journal = std::fs::read(&journal).unwrap();
    let text = text.replace("hostmaster 1 3600", "hostmaster 10 3600");
    std::fs::write(&zone, format!("{text}edited A 192.0.2.55\n")).unwrap();
    let mut srv = s.start("edited");
    assert_eq!(soa_serial(s.port), 10);
    assert_eq!(
        dig_short(s.port, "edited.example.com", "A", &[]),
        vec!["192.0.2.55"]
    );
    assert!(
        !has_k(s.port, 1) && !has_k(s.port, 2),
        "the stale journal was replayed"
    );
    let log = srv.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("serial 10")
            && log.contains("base serial 1")
            && log.contains(&zone.display().to_string()),
        "the warning names both serials and the file:\n{log}"
    );
    assert_eq!(
        named(s.dir.path(), "dns.journal.stale-"),
        vec![old_journal],
        "the stale journal is kept aside, byte for byte"
    );
    // Updates go on from the file's serial, and the next start warns no more.
    updates(s.port, 5, 1);
    assert_eq!(soa_serial(s.port), 11);
    srv.terminate();
    let srv = s.start("again");
    assert_eq!(soa_serial(s.port), 11);
    assert!(has_k(s.port, 5) && !has_k(s.port, 1));
    assert!(
        !srv.log_text().contains("base serial"),
        "{}",
        srv.log_text()
    );
}
