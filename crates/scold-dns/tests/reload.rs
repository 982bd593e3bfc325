//! `scold dns` reloads its config on SIGHUP: TSIG keys and their update policies change
//! while it serves (an `nsupdate` with a new key is taken, one with a dropped key is
//! refused), and a broken file changes nothing and is named with its line. Zones reload
//! live: a zone added is answered, a zone removed is refused, an edited zone file with a
//! newer serial is served (and reaches a Knot secondary by NOTIFY and IXFR), and a zone
//! file that would undo an acknowledged update, is not newer, or does not parse is
//! refused with the reason while the zone is served as before.
//!
//! Needs `nsupdate` and `dig` (bind9-dnsutils), `knotd` (knot) and a built binary.

mod common;

use common::*;
use scold_testkit::{free_port, require_tool, Proc, Signal};
use std::time::{Duration, Instant};

const NEW_SECRET: &str = "bmV3LWtleS1mb3ItdGhlLXJlbG9hZC10ZXN0LTEyMzQ1Ng==";

fn update(port: u16, key: &str, name: &str, ip: &str) -> std::process::Output {
    nsupdate(
        &["-y", key],
        &format!("server 127.0.0.1 {port}\nzone example.com\nupdate add {name}.example.com. 60 A {ip}\nsend\n"),
    )
}

/// Waits until the log has `n` lines with `text`.
fn wait_lines(p: &mut scold_testkit::Proc, text: &str, n: usize) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let log = p.log_text();
        if log.matches(text).count() >= n {
            return log;
        }
        assert!(Instant::now() < end, "never {n}x {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_swaps_tsig_keys_and_a_broken_file_changes_nothing() {
    let s = DnsSetup::new(0, "");
    let mut srv = s.start("reload");
    let old = format!("hmac-sha256:coordinator:{SECRET}");
    let new = format!("hmac-sha256:coordinator2:{NEW_SECRET}");
    assert!(update(s.port, &old, "a", "192.0.2.1").status.success());
    let out = update(s.port, &new, "b", "192.0.2.2");
    assert!(!out.status.success(), "an unknown key was taken");

    // Drop "coordinator", add "coordinator2", and name another zone file.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text
        .replace("name = \"coordinator\"", "name = \"coordinator2\"")
        .replacen(
            &format!("secret = \"{SECRET}\""),
            &format!("secret = \"{NEW_SECRET}\""),
            1,
        )
        .replace(
            "file = \"example.com.zone\"",
            "file = \"example.com.zone2\"",
        );
    std::fs::write(s.path("example.com.zone2"), ZONE).unwrap();
    std::fs::write(&s.config, &text).unwrap();
    srv.signal(Signal::Hup).unwrap();
    let log = wait_lines(&mut srv, "config reloaded", 1);
    let line = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    // The zone now comes from another file, with the same serial: applied, and kept as
    // served (nothing tells a secondary the data changed) with the reason.
    assert!(line.contains("applied=[\"key\", \"zone\"]"), "{line}");
    assert!(line.contains("needs_restart=[]"), "{line}");
    assert!(
        log.contains("not above the served serial 2"),
        "no reason for keeping the zone:\n{log}"
    );
    assert!(
        update(s.port, &new, "c", "192.0.2.3").status.success(),
        "the new key is refused"
    );
    assert!(
        !update(s.port, &old, "d", "192.0.2.4").status.success(),
        "the dropped key still works"
    );
    assert_eq!(dig_short(s.port, "c.example.com", "A", &[]), ["192.0.2.3"]);
    assert_eq!(
        dig_short(s.port, "a.example.com", "A", &[]),
        ["192.0.2.1"],
        "a reload lost an update"
    );

    // A broken file: refused with its line, the keys in force stay.
    let broken = format!(
        "{text}\n[[key]]\nname = \"x\"\nalgorithm = \"hmac-sha256\"\nsecret = \"x\"\nsecrte = 1\n"
    );
    let line_no = broken
        .lines()
        .position(|l| l.starts_with("secrte"))
        .unwrap()
        + 1;
    std::fs::write(&s.config, &broken).unwrap();
    srv.signal(Signal::Hup).unwrap();
    let log = wait_lines(&mut srv, "config reload refused", 1);
    let place = format!("{} (line {line_no})", s.config.display());
    assert!(
        log.contains(&place),
        "the refusal does not say {place}:\n{log}"
    );
    assert!(srv.alive(), "a broken file ended the server");
    assert!(
        update(s.port, &new, "e", "192.0.2.5").status.success(),
        "the keys in force changed"
    );
}

fn serial_at(port: u16, zone: &str) -> u32 {
    let soa = dig_short(port, zone, "SOA", &[]);
    assert_eq!(soa.len(), 1, "SOA of {zone}: {soa:?}");
    soa[0].split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn com_zone(serial: u32, extra: &str) -> String {
    format!(
        "$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 hostmaster {serial} 3600 900 604800 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\nwww 60 ALT 203.55.57.102\nold 60 TYPE65280 \\# 4 CB373967\n{extra}"
    )
}

const NET_ZONE: &str = "$ORIGIN example.net.\n$TTL 300\n@ SOA ns1 hostmaster 7 3600 900 604800 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 198.51.100.80\n";

/// Sends SIGHUP and waits for the reload's answer in the log (the `n`th one); returns
/// the log.
fn hup(srv: &mut Proc, n: usize) -> String {
    srv.signal(Signal::Hup).unwrap();
    wait_lines(srv, "config reloaded", n)
}

#[test]
fn sighup_adds_edits_and_removes_zones_without_losing_an_update() {
    let s = DnsSetup::new(0, "");
    let mut srv = s.start("zones");
    let key = format!("hmac-sha256:coordinator:{SECRET}");
    assert!(update(s.port, &key, "a", "192.0.2.1").status.success());
    assert_eq!(serial_at(s.port, "example.com"), 2);

    // A zone added to the config is served.
    assert!(dig_comments(s.port, &["+norec", "www.example.net", "A"]).contains("status: REFUSED"));
    std::fs::write(s.path("example.net.zone"), NET_ZONE).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap();
    let with_net =
        format!("{config}\n[[zone]]\nname = \"example.net\"\nfile = \"example.net.zone\"\n");
    std::fs::write(&s.config, &with_net).unwrap();
    let log = hup(&mut srv, 1);
    assert!(log.contains("zone added by reload"), "{log}");
    assert_eq!(
        dig_short(s.port, "www.example.net", "A", &[]),
        ["198.51.100.80"]
    );

    // A zone file that leaves out the acknowledged update: refused, still served.
    let com = s.path("example.com.zone");
    std::fs::write(&com, com_zone(5, "new A 192.0.2.50\n")).unwrap();
    let log = hup(&mut srv, 2);
    let refusal = log
        .lines()
        .find(|l| l.contains("would undo acknowledged updates"))
        .unwrap_or_else(|| panic!("no refusal:\n{log}"));
    assert!(
        refusal.contains("a.example.com. A (1 record(s), TTL 60, by the update at serial 2)"),
        "the refusal does not name the update: {refusal}"
    );
    assert_eq!(dig_short(s.port, "a.example.com", "A", &[]), ["192.0.2.1"]);
    assert!(dig_short(s.port, "new.example.com", "A", &[]).is_empty());
    assert_eq!(serial_at(s.port, "example.com"), 2);

    // A serial not above the served one: kept, with the reason.
    std::fs::write(&com, com_zone(2, "a 60 A 192.0.2.1\nnew A 192.0.2.50\n")).unwrap();
    let log = hup(&mut srv, 3);
    assert!(
        log.contains("has serial 2, not above the served serial 2"),
        "{log}"
    );
    assert!(dig_short(s.port, "new.example.com", "A", &[]).is_empty());

    // A broken zone file: refused with file:line, still served.
    std::fs::write(&com, com_zone(5, "a 60 A 192.0.2.1\nnew A 192.0.2.500\n")).unwrap();
    let line_no = com_zone(5, "a 60 A 192.0.2.1\n").lines().count() + 1;
    let log = hup(&mut srv, 4);
    let place = format!("{}:{line_no}:", com.display());
    assert!(
        log.lines()
            .any(|l| l.contains("zone reload refused") && l.contains(&place)),
        "the refusal does not name {place}:\n{log}"
    );
    assert_eq!(dig_short(s.port, "a.example.com", "A", &[]), ["192.0.2.1"]);
    assert_eq!(serial_at(s.port, "example.com"), 2);

    // The file with the update in it and a newer serial: served.
    std::fs::write(&com, com_zone(5, "a 60 A 192.0.2.1\nnew A 192.0.2.50\n")).unwrap();
    let log = hup(&mut srv, 5);
    assert!(log.contains("zone file reloaded"), "{log}");
    assert_eq!(
        dig_short(s.port, "new.example.com", "A", &[]),
        ["192.0.2.50"]
    );
    assert_eq!(dig_short(s.port, "a.example.com", "A", &[]), ["192.0.2.1"]);
    assert_eq!(serial_at(s.port, "example.com"), 5);
    // Updates go on on top of the file, and everything survives a restart (the
    // journal was written anew from the file's serial; the old one is kept aside).
    assert!(update(s.port, &key, "b", "192.0.2.2").status.success());
    assert_eq!(serial_at(s.port, "example.com"), 6);
    let asides: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("dns.journal.reload-")
        })
        .collect();
    assert_eq!(asides.len(), 1, "the old journal is not kept aside");
    srv.terminate();
    let mut srv2 = s.start("zones-restarted");
    assert_eq!(serial_at(s.port, "example.com"), 6);
    for (name, ip) in [
        ("a", "192.0.2.1"),
        ("b", "192.0.2.2"),
        ("new", "192.0.2.50"),
    ] {
        assert_eq!(
            dig_short(s.port, &format!("{name}.example.com"), "A", &[]),
            [ip],
            "{name} lost across the restart:\n{}",
            srv2.log_text()
        );
    }
    assert_eq!(
        dig_short(s.port, "www.example.net", "A", &[]),
        ["198.51.100.80"]
    );

    // A zone removed: refused like any unknown zone, updates to it NOTAUTH; the journal
    // is left as it was.
    let journal_before = std::fs::read(s.path("dns.journal")).unwrap();
    std::fs::write(&s.config, &config).unwrap();
    let log = hup(&mut srv2, 1);
    assert!(log.contains("zone removed by reload"), "{log}");
    assert!(
        dig_comments(s.port, &["+norec", "www.example.net", "A"]).contains("status: REFUSED"),
        "a removed zone is still answered"
    );
    assert_eq!(
        std::fs::read(s.path("dns.journal")).unwrap(),
        journal_before,
        "removing a zone changed the journal"
    );
    assert_eq!(dig_short(s.port, "b.example.com", "A", &[]), ["192.0.2.2"]);
    let out = nsupdate(
        &["-y", &key],
        &format!("server 127.0.0.1 {}\nzone example.net\nupdate add x.example.net. 60 A 192.0.2.9\nsend\n", s.port),
    );
    assert!(
        !out.status.success(),
        "an update to a removed zone was taken"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOTAUTH"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An edited zone file and a zone added reach a Knot secondary by the primary's NOTIFY:
/// the edit by IXFR (from the difference the reload recorded), the new zone by AXFR.
#[test]
fn a_reloaded_zone_reaches_a_knot_secondary() {
    let knotd = require_tool("knotd", "knot");
    let kport = free_port();
    let s = DnsSetup::new(
        0,
        &format!("[[key]]\nname = \"sec-knot\"\nsecret = \"{SECRET}\"\n[[secondary]]\nname = \"knot\"\naddress = \"127.0.0.1:{kport}\"\nkey = \"sec-knot\"\n"),
    );
    let mut srv = s.start("p");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut k = start_knot_secondary(&knotd, d, kport, s.port, &["example.com", "example.net"]);
    let wait_knot = |k: &mut Proc, name: &str, want: &[&str]| {
        let t0 = Instant::now();
        loop {
            assert!(k.alive(), "knotd exited:\n{}", k.log_text());
            if dig_short(kport, name, "A", &["+norec"]) == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "knot does not answer {name} {want:?}:\n{}",
                k.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_knot(&mut k, "www.example.com", &["192.0.2.10"]);

    std::fs::write(
        s.path("example.com.zone"),
        com_zone(2, "new A 192.0.2.50\n"),
    )
    .unwrap();
    std::fs::write(s.path("example.net.zone"), NET_ZONE).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{config}\n[[zone]]\nname = \"example.net\"\nfile = \"example.net.zone\"\n"),
    )
    .unwrap();
    let log = hup(&mut srv, 1);
    let line = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(line.contains("applied=[\"zone\", \"zone_file\"]"), "{line}");
    wait_knot(&mut k, "new.example.com", &["192.0.2.50"]);
    wait_knot(&mut k, "www.example.net", &["198.51.100.80"]);
    let log = srv.log_text();
    assert!(
        log.lines().any(|l| l.contains("answer=\"incremental\"")
            && l.contains("secondary=knot ")
            && l.contains("serial=2")),
        "the edited zone did not go to knot by IXFR:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("NOTIFY answered") && l.contains("example.net")),
        "knot was not notified of the added zone:\n{log}"
    );
}

/// Updates racing zone reloads: each update is either in the zone before the reload
/// (and then the file must hold it, or that reload is refused) or applied to the
/// reloaded zone; no query ever finds the zone missing, and every acknowledged update
/// is served at the end and after a restart from disk. The server runs in this process
/// (its zone reload called directly, as SIGHUP does) so that the reloads come much
/// faster than a signal round trip would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_racing_zone_reloads_are_never_lost() {
    use scold_dns::zonereload::Outcome;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, Mutex};

    const UPDATES: usize = 60;
    const RELOADS: u32 = 20;
    let s = DnsSetup::new(0, "");
    let cfg = scold_dns::config::load_dns(&s.config).unwrap();
    let server = scold_dns::server::start(&cfg).await.unwrap();
    let addr = server.addrs[0];
    let key: scold_dns::TsigKey = format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap();
    let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8));
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));

    let updater = {
        let acked = acked.clone();
        let u = scold_dns::Updater::new(addr, key);
        tokio::spawn(async move {
            for i in 0..UPDATES {
                u.replace_addresses("example.com", &format!("u{i}.example.com"), &[ip(i)], 60)
                    .await
                    .unwrap_or_else(|e| panic!("update {i} failed: {e}"));
                acked.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let querier = tokio::task::spawn_blocking(move || {
        for n in 0..400u16 {
            let q = query_bytes(n, "www.example.com", 1, false);
            let r = udp_ask(addr, &q, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("query {n}: no answer"));
            let rcode = r[3] & 0x0F;
            let ancount = u16::from_be_bytes([r[6], r[7]]);
            assert!(
                rcode == 0 && ancount == 1,
                "query {n} during reloads: rcode {rcode}, {ancount} answers"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    });

    let file = s.path("example.com.zone");
    let mut outcomes = Vec::new();
    let mut last_taken = None;
    let mut last_taken_text = String::new();
    for k in 1..=RELOADS {
        let done: Vec<usize> = acked.lock().unwrap().clone();
        let mut extra = format!("f{k} A 10.2.0.{k}\n");
        for i in &done {
            extra.push_str(&format!("u{i} 60 A {}\n", ip(*i)));
        }
        let text = com_zone(1000 * k, &extra);
        std::fs::write(&file, &text).unwrap();
        let shared = server.shared.clone();
        let c = cfg.clone();
        let r = tokio::task::spawn_blocking(move || shared.reload_zones(&c))
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        match &r[0].outcome {
            Outcome::Reloaded(_, to) => {
                assert_eq!(*to, 1000 * k);
                last_taken = Some(k);
                last_taken_text = text;
            }
            Outcome::Kept(why) => assert!(
                why.contains("would undo acknowledged updates"),
                "reload {k} refused for another reason: {why}"
            ),
            o => panic!("reload {k}: {o:?}"),
        }
        outcomes.push(r[0].outcome.clone());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    updater.await.unwrap();
    querier.await.unwrap();
    let last_taken = last_taken.unwrap_or_else(|| panic!("no reload was taken: {outcomes:?}"));
    let taken = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Reloaded(..)))
        .count();
    eprintln!(
        "zone reloads racing updates: {taken} taken, {} refused",
        outcomes.len() - taken
    );

    let check = |when: &str| {
        for i in 0..UPDATES {
            assert_eq!(
                dig_short(s.port, &format!("u{i}.example.com"), "A", &[]),
                [ip(i).to_string()],
                "update {i} lost {when}"
            );
        }
        assert_eq!(
            dig_short(s.port, &format!("f{last_taken}.example.com"), "A", &[]),
            [format!("10.2.0.{last_taken}")],
            "the last zone file taken is not served {when}"
        );
    };
    tokio::task::block_in_place(|| check("while running"));
    server.shutdown().await;
    // A restart reads the zone file on disk. The last file written may be one a reload
    // refused; the operator then puts back the file that was taken (a file edited past
    // the journal would win at start-up, with the journal kept aside: see startup.rs).
    std::fs::write(&file, &last_taken_text).unwrap();
    let again = scold_dns::server::start(&cfg).await.unwrap();
    tokio::task::block_in_place(|| check("after a restart"));
    again.shutdown().await;
}
