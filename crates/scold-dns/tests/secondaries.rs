//! `scold dns` as the primary of servers nobody here wrote: Knot, BIND 9 and NSD, each
//! unmodified, pull the zone by TSIG-signed transfer, and an ALT change reaches each
//! within a second of the primary's acknowledgement (its signed NOTIFY, then IXFR);
//! `dig` and `kdig` show that a transfer without a secondary's key is refused and that
//! a signed one, several messages long, verifies.
//!
//! Everything runs on loopback, each server on its own port with its own directory,
//! stopped by PID when the test ends (the `Proc` guards).

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use scold_dns::{TsigKey, Updater};
use scold_testkit::{free_port, output, require_tool, strip_ansi, Proc};

/// Records enough that a full transfer takes several messages (each at most 16 KiB),
/// so the secondaries check the multi-message TSIG chain (RFC 8945 section 5.3.1).
const BULK: usize = 1500;

fn big_zone() -> String {
    let mut z = String::from(ZONE);
    for i in 0..BULK {
        z.push_str(&format!("h{i} 300 A 10.9.{}.{}\n", i / 250, i % 250));
    }
    z
}

/// The primary's config lines for a secondary `name` at `port` with key `key`.
fn secondary_config(name: &str, key: &str, port: u16, extra: &str) -> String {
    format!(
        "[[key]]\nname = \"{key}\"\nsecret = \"{SECRET}\"\n[[secondary]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nkey = \"{key}\"\n{extra}\n"
    )
}

/// A `scold dns` primary with the big zone and the given extra config.
fn primary(extra: &str) -> DnsSetup {
    let s = DnsSetup::new(0, extra);
    std::fs::write(s.path("example.com.zone"), big_zone()).unwrap();
    s
}

/// The ALT records of www at 127.0.0.1:`port`, as `dig +short` prints them.
fn alt_at(port: u16) -> Vec<String> {
    dig_short(port, "www.example.com", "TYPE65280", &["+norec"])
}

fn spec(name: &str, secret: &str) -> String {
    format!("hmac-sha256:{name}:{secret}")
}

/// Waits up to 30 s for the secondary at `port` to serve the zone as the primary
/// first published it: the last bulk record and the ALT record.
fn wait_loaded(port: u16, p: &mut Proc) {
    let last = format!("h{}.example.com", BULK - 1);
    let want = format!("10.9.{}.{}", (BULK - 1) / 250, (BULK - 1) % 250);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        assert!(p.alive(), "{} exited:\n{}", p.name(), p.log_text());
        if dig_short(port, &last, "A", &["+norec"]) == vec![want.clone()]
            && alt_at(port) == vec!["\\# 4 CB373966".to_string()]
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} did not load the zone from scold dns within 30 s:\n{}",
        p.name(),
        p.log_text()
    );
}

/// The ALT change on the primary, then the time until the secondary at `port` answers
/// it. The zone's refresh is an hour, so only the NOTIFY makes it this quick.
async fn change_reaches(primary: &DnsSetup, port: u16, p: &mut Proc) -> Duration {
    let key: TsigKey = spec("coordinator", SECRET).parse().unwrap();
    let u = Updater::new(primary.addr(), key);
    u.set_alt(
        "example.com",
        "www.example.com",
        &["198.51.100.1".parse::<IpAddr>().unwrap()],
        60,
    )
    .await
    .expect("the primary takes the update");
    // set_alt returns after the acknowledgement and one confirming query: the
    // acknowledgement came no later than this.
    let acked = Instant::now();
    let want = vec!["\\# 4 C6336401".to_string()];
    loop {
        if alt_at(port) == want {
            return acked.elapsed();
        }
        assert!(
            acked.elapsed() < Duration::from_secs(10),
            "{} still does not answer the new ALT record 10 s after the update:\n{}\nprimary:\n{}",
            p.name(),
            p.log_text(),
            std::fs::read_to_string(primary.path("dns-p.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What each interop test checks once its secondary runs.
async fn check_secondary(primary: &DnsSetup, sec_port: u16, sec: &mut Proc, name: &str) {
    wait_loaded(sec_port, sec);
    let took = change_reaches(primary, sec_port, sec).await;
    assert!(
        took <= Duration::from_secs(1),
        "{name}: the ALT change took {took:?} to reach the secondary after the primary acknowledged it\n{}\nprimary:\n{}",
        sec.log_text(),
        strip_ansi(&std::fs::read_to_string(primary.path("dns-p.log")).unwrap_or_default())
    );
    // The primary's log: the secondary's transfers were signed and answered, the last
    // one incrementally, and it answered the signed NOTIFY.
    let log = strip_ansi(&std::fs::read_to_string(primary.path("dns-p.log")).unwrap());
    let mine = format!("secondary={name} ");
    let line = |what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains(&mine) && l.contains("serial=2"))
    };
    assert!(
        line("NOTIFY answered"),
        "{name}: no answered NOTIFY of serial 2 in the primary's log:\n{log}"
    );
    assert!(
        line("answer=\"incremental\""),
        "{name}: serial 2 did not go by incremental transfer:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("AXFR") && l.contains(&mine)),
        "{name}: the first pull was not an AXFR:\n{log}"
    );
    eprintln!("{name}: the ALT change reached the secondary {took:?} after the acknowledgement");
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_follows_scold_dns() {
    let knotd = require_tool("knotd", "knot");
    let port = free_port();
    let s = primary(&secondary_config("knot", "sec-knot", port, ""));
    let _p = s.start("p");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut k = start_knot_secondary(&knotd, d, port, s.port, &["example.com"]);
    check_secondary(&s, port, &mut k, "knot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind9_follows_scold_dns() {
    let named = require_tool("named", "bind9");
    let port = free_port();
    let s = primary(&secondary_config("bind", "sec-bind", port, ""));
    let _p = s.start("p");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = write(
        d,
        "named.conf",
        &format!(
            r#"options {{
    directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{dir}/named.pid";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "sec-bind" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "example.com" {{
    type secondary;
    primaries port {pport} {{ 127.0.0.1 key "sec-bind"; }};
    file "{dir}/example.com.bk";
}};
"#,
            dir = d.display(),
            pport = s.port
        ),
    );
    let mut b = Proc::spawn(
        "named",
        Command::new(named).args(["-g", "-n", "1", "-c"]).arg(&conf),
        &d.join("named.log"),
    );
    check_secondary(&s, port, &mut b, "bind").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsd_follows_scold_dns() {
    let nsd = require_tool("nsd", "nsd");
    let port = free_port();
    let s = primary(&secondary_config("nsd", "sec-nsd", port, ""));
    let _p = s.start("p");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = write(
        d,
        "nsd.conf",
        &format!(
            r#"server:
    ip-address: 127.0.0.1
    port: {port}
    username: ""
    chroot: ""
    zonesdir: "{dir}"
    database: ""
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    xfrdir: "{dir}"
    pidfile: "{dir}/nsd.pid"
    server-count: 1
    verbosity: 2
    # NSD serves a transfer after a reload that it holds back to one a second by
    # default (the first transfer just happened): no hold, as an operator who wants
    # changes out at once sets it.
    xfrd-reload-timeout: 0
remote-control:
    control-enable: no
key:
    name: sec-nsd
    algorithm: hmac-sha256
    secret: "{SECRET}"
zone:
    name: example.com
    zonefile: "{dir}/example.com.zone"
    request-xfr: 127.0.0.1@{pport} sec-nsd
    allow-notify: 127.0.0.1 sec-nsd
"#,
            dir = d.display(),
            pport = s.port
        ),
    );
    let mut n = Proc::spawn(
        "nsd",
        Command::new(nsd).args(["-d", "-c"]).arg(&conf),
        &d.join("nsd.log"),
    );
    check_secondary(&s, port, &mut n, "nsd").await;
}

/// The status lines `dig` printed (one per message it read).
fn statuses(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split("status: ").nth(1))
        .map(|r| r.split(',').next().unwrap_or(""))
        .collect()
}

/// Answer records of a `dig` transfer listing (comments, blank lines and the TSIG
/// records left out).
fn records(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty() && !l.contains("TSIG"))
        .collect()
}

/// A transfer is answered only to a request signed with a secondary's key, from an
/// address the secondary allows: unsigned or with another key it is REFUSED, with an
/// unknown key or a wrong secret NOTAUTH. Signed right, the whole zone comes in
/// several messages that `dig` and `kdig` verify; IXFR gives the difference from the
/// journal, over UDP only the SOA, and after a restart still the difference.
#[test]
fn transfers_need_a_secondarys_key() {
    let nobody = free_port();
    let extra = secondary_config("sec1", "sec1", nobody, "notify = false")
        + &secondary_config("far", "far", nobody, "allow_from = [\"192.0.2.1\"]");
    let s = primary(&extra);
    let mut p = s.start("p");
    // The test zone's six records and the bulk ones, with the SOA first and last.
    let zone_rrs = 6 + BULK + 1;

    for (args, want, what) in [
        (vec![], "REFUSED", "unsigned"),
        (
            vec!["-y".to_string(), spec("coordinator", SECRET)],
            "REFUSED",
            "a key that is not a secondary's",
        ),
        (
            vec!["-y".to_string(), spec("far", SECRET)],
            "REFUSED",
            "a secondary's key from an address it does not allow",
        ),
        (
            vec!["-y".to_string(), spec("stranger", SECRET)],
            "NOTAUTH",
            "an unknown key",
        ),
        (
            vec!["-y".to_string(), spec("sec1", WRONG_SECRET)],
            "NOTAUTH",
            "a wrong secret",
        ),
    ] {
        for t in ["AXFR", "IXFR=0"] {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["example.com", t]);
            let text = dig_comments(s.port, &a);
            assert_eq!(statuses(&text), vec![want], "{t} with {what}:\n{text}");
            assert!(
                records(&text).is_empty(),
                "{t} with {what} gave records:\n{text}"
            );
        }
    }

    // Signed with the secondary's key: the whole zone, in several verified messages.
    let sec1 = spec("sec1", SECRET);
    let text = dig_comments(s.port, &["-y", &sec1, "example.com", "AXFR"]);
    let rrs = records(&text);
    assert!(
        !text.contains("Couldn't verify") && !text.contains("failed") && !text.contains("failure"),
        "{text}"
    );
    assert_eq!(rrs.len(), zone_rrs, "{text}");
    assert!(rrs.first().unwrap().contains("SOA") && rrs.last().unwrap().contains("SOA"));
    let msgs: usize = text
        .lines()
        .find_map(|l| l.split("(messages ").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no XFR size line:\n{text}"));
    assert!(msgs >= 3, "{msgs} messages:\n{text}");
    let kdig = require_tool("kdig", "knot-dnsutils");
    let out = output(Command::new(&kdig).args([
        "+time=2",
        "-y",
        &sec1,
        "-p",
        &s.port.to_string(),
        "@127.0.0.1",
        "example.com",
        "AXFR",
    ]));
    let ktext =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !ktext.contains("failed") && !ktext.contains("WARNING"),
        "kdig AXFR:\n{ktext}"
    );
    assert!(
        ktext.contains(&format!("{zone_rrs} records")),
        "kdig AXFR:\n{ktext}"
    );

    // An ALT change, then IXFR from the first serial: the difference only.
    let out = nsupdate(
        &["-y", &spec("coordinator", SECRET)],
        &format!(
            "server 127.0.0.1 {}\nzone example.com\nupdate delete www.example.com. TYPE65280\nupdate add www.example.com. 60 TYPE65280 \\# 4 C6336401\nsend\n",
            s.port
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ixfr = |p: u16, extra: &[&str]| {
        let mut a = vec!["-y", sec1.as_str()];
        a.extend_from_slice(extra);
        a.extend(["example.com", "IXFR=1"]);
        dig_comments(p, &a)
    };
    let check_incremental = |text: &str| {
        let rrs = records(text);
        assert_eq!(rrs.len(), 6, "{text}");
        assert!(rrs[0].contains(" 2 ") && rrs[1].contains(" 1 ") && rrs[3].contains(" 2 "));
        assert!(rrs[2].contains("CB373966"), "the old ALT removed: {text}");
        assert!(rrs[4].contains("C6336401"), "the new ALT added: {text}");
        assert!(!text.contains("Couldn't verify"), "{text}");
    };
    check_incremental(&ixfr(s.port, &["+tcp"]));
    // Over UDP: the current SOA alone, which sends the client to TCP.
    let text = ixfr(s.port, &["+notcp"]);
    let rrs = records(&text);
    assert_eq!(rrs.len(), 1, "{text}");
    assert!(rrs[0].contains("SOA") && rrs[0].contains(" 2 "), "{text}");
    // Up to date: the SOA alone.
    let mut a = vec!["-y", sec1.as_str(), "+tcp", "example.com", "IXFR=2"];
    let text = dig_comments(s.port, &a);
    assert_eq!(records(&text).len(), 1, "{text}");

    // After a restart the journal still gives the difference; from a serial it does
    // not reach, the whole zone.
    p.terminate();
    let _p = s.start("p2");
    check_incremental(&ixfr(s.port, &["+tcp"]));
    a[4] = "IXFR=0";
    let text = dig_comments(s.port, &a);
    assert_eq!(records(&text).len(), zone_rrs, "{text}");
}

/// The NOTIFY to a secondary that does not answer is resent with growing waits, each
/// copy signed with the secondary's key, and stops once an answer signed with that key
/// comes back. The secondary here is the test itself on a UDP socket.
#[test]
fn notify_is_resent_until_answered() {
    use hickory_proto::op::{Message, MessageType, OpCode};
    use scold_dns::tsig::{now_secs, sign_response, verify_request, Verdict};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let s = primary(&secondary_config("quiet", "quiet", port, ""));
    let key: TsigKey = spec("quiet", SECRET).parse().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The secondary: lets two copies of the start-up NOTIFY go unanswered, answers the
    // third, then listens two more seconds for copies that should no longer come. It
    // runs before the primary starts, so each copy is timed as it arrives.
    let secondary = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let t0 = Instant::now();
        let mut buf = [0u8; 1500];
        let mut answered_at: Option<Instant> = None;
        while t0.elapsed() < Duration::from_secs(15) {
            if answered_at.is_some_and(|a| a.elapsed() > Duration::from_secs(2)) {
                break;
            }
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let req = &buf[..n];
            let m = Message::from_vec(req).expect("the NOTIFY parses");
            assert_eq!(m.metadata.op_code, OpCode::Notify);
            assert_eq!(m.queries[0].name().to_ascii(), "example.com.");
            let sig = m.signature.clone().expect("the NOTIFY is signed");
            let Verdict::Ok { mac, .. } =
                verify_request(req, &sig, std::slice::from_ref(&key), now_secs())
            else {
                panic!("the NOTIFY does not verify with the secondary's key");
            };
            seen.push(Instant::now());
            if seen.len() == 3 {
                let mut r = Message::new(m.metadata.id, MessageType::Response, OpCode::Notify);
                r.metadata.authoritative = true;
                r.add_query(m.queries[0].clone());
                let mut out = r.to_vec().unwrap();
                sign_response(&mut out, &key, &mac, m.metadata.id, now_secs()).unwrap();
                sock.send_to(&out, from).unwrap();
                answered_at = Some(Instant::now());
            }
        }
        seen
    });
    let _p = s.start("p");
    let seen = secondary.join().expect("the secondary thread");
    assert_eq!(
        seen.len(),
        3,
        "NOTIFY copies: {} (three expected: two unanswered, the third answered)",
        seen.len()
    );
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(450) && gaps[1] > gaps[0],
        "the waits between copies do not grow: {gaps:?}"
    );
    let log = strip_ansi(&std::fs::read_to_string(s.path("dns-p.log")).unwrap());
    assert!(
        log.lines().any(|l| l.contains("NOTIFY answered")
            && l.contains("secondary=quiet ")
            && l.contains("attempt=3")),
        "{log}"
    );
}
