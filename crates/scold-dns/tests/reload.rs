//! `scold dns` reloads its config on SIGHUP: TSIG keys and their update policies change
//! while it serves (an `nsupdate` with a new key is taken, one with a dropped key is
//! refused), zones it cannot change live are named in its log as waiting for a
//! restart, and a broken file changes nothing and is named with its line.
//!
//! Needs `nsupdate` and `dig` (bind9-dnsutils) and a built binary.

mod common;

use common::*;
use scold_testkit::Signal;
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
    assert!(line.contains("applied=[\"key\"]"), "{line}");
    assert!(line.contains("needs_restart=[\"zone\"]"), "{line}");
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
