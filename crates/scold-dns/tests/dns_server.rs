//! `scold dns` as a user meets it: a real process, driven by BIND's `nsupdate` and
//! `dig` and Knot's `kdig`, killed with SIGKILL, fed garbage and floods.

mod common;

use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use scold_testkit::{free_port, output, require_tool, scold_bin};

fn key(name: &str, alg: &str, secret: &str) -> String {
    format!("{alg}:{name}:{secret}")
}

fn script(port: u16, body: &str) -> String {
    format!("server 127.0.0.1 {port}\nzone example.com\n{body}\nsend\n")
}

#[test]
fn nsupdate_adds_and_deletes_alt_and_dig_kdig_read_them() {
    let s = DnsSetup::new(0, "");
    let _srv = s.start("a");
    let good = key("coordinator", "hmac-sha256", SECRET);

    // Zone-file ALT in both syntaxes, read by dig and kdig.
    assert_eq!(
        dig_short(s.port, "www.example.com", "TYPE65280", &[]),
        vec!["\\# 4 CB373966"]
    );
    assert_eq!(
        dig_short(s.port, "old.example.com", "TYPE65280", &["+tcp"]),
        vec!["\\# 4 CB373967"]
    );
    let kdig = require_tool("kdig", "knot-dnsutils");
    let out = output(Command::new(&kdig).args([
        "-p",
        &s.port.to_string(),
        "@127.0.0.1",
        "www.example.com",
        "TYPE65280",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TYPE65280") && text.contains("\\# 4 CB373966"),
        "kdig output:\n{text}"
    );
    assert!(text.contains("NOERROR"), "kdig output:\n{text}");

    let serial0 = dig_short(s.port, "example.com", "SOA", &[]);

    // Add two ALT records with nsupdate (RFC 3597 syntax, TSIG hmac-sha256).
    let out = nsupdate(
        &["-y", &good],
        &script(
            s.port,
            "update add p.example.com. 60 TYPE65280 \\# 4 C6336401\nupdate add p.example.com. 60 TYPE65280 \\# 4 C6336402",
        ),
    );
    assert!(
        out.status.success(),
        "nsupdate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dig_short(s.port, "p.example.com", "TYPE65280", &[]),
        vec!["\\# 4 C6336401", "\\# 4 C6336402"]
    );
    let serial1 = dig_short(s.port, "example.com", "SOA", &[]);
    assert_ne!(serial0, serial1, "the SOA serial changes with every update");
    let kout = output(Command::new(&kdig).args([
        "+short",
        "-p",
        &s.port.to_string(),
        "@127.0.0.1",
        "p.example.com",
        "TYPE65280",
    ]));
    assert_eq!(String::from_utf8_lossy(&kout.stdout).lines().count(), 2);

    // The same over TCP (nsupdate -v).
    let out = nsupdate(
        &["-v", "-y", &good],
        &script(
            s.port,
            "update add tcp.example.com. 60 TYPE65280 \\# 4 C6336403",
        ),
    );
    assert!(
        out.status.success(),
        "nsupdate over TCP failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dig_short(s.port, "tcp.example.com", "TYPE65280", &["+tcp"]),
        vec!["\\# 4 C6336403"]
    );

    // Delete one RR, then the whole set.
    let out = nsupdate(
        &["-y", &good],
        &script(
            s.port,
            "update delete p.example.com. TYPE65280 \\# 4 C6336401",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dig_short(s.port, "p.example.com", "TYPE65280", &[]),
        vec!["\\# 4 C6336402"]
    );
    let out = nsupdate(
        &["-y", &good],
        &script(s.port, "update delete p.example.com. TYPE65280"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dig_short(s.port, "p.example.com", "TYPE65280", &[]).is_empty());

    // hmac-sha512 key limited to www ALT.
    let www_key = key("alt-only-www", "hmac-sha512", SECRET);
    let out = nsupdate(
        &["-y", &www_key],
        &script(
            s.port,
            "update add www.example.com. 60 TYPE65280 \\# 4 0A000001",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dig_short(s.port, "www.example.com", "TYPE65280", &[])
        .contains(&"\\# 4 0A000001".to_string()));

    let before = dig_short(s.port, "example.com", "SOA", &[]);
    let refused = |args: &[&str], body: &str, want: &str| {
        let out = nsupdate(args, &script(s.port, body));
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "update {body:?} with {args:?} was accepted"
        );
        assert!(
            err.contains(want),
            "expected {want} for {body:?}, nsupdate said: {err}"
        );
    };
    let add = "update add evil.example.com. 60 TYPE65280 \\# 4 01020304";
    refused(
        &["-y", &key("coordinator", "hmac-sha256", WRONG_SECRET)],
        add,
        "BADSIG",
    );
    refused(
        &["-y", &key("stranger", "hmac-sha256", SECRET)],
        add,
        "BADKEY",
    );
    refused(&[], add, "REFUSED");
    // Policy: the www-only key may not touch other names or types.
    refused(&["-y", &www_key], add, "REFUSED");
    refused(
        &["-y", &www_key],
        "update add www.example.com. 60 A 192.0.2.99",
        "REFUSED",
    );
    refused(
        &["-y", &good],
        "update add evil.example.com. 60 TXT \"x\"",
        "REFUSED",
    );
    // Malformed ALT RDATA.
    refused(
        &["-y", &good],
        "update add evil.example.com. 60 TYPE65280 \\# 3 010203",
        "FORMERR",
    );
    // Nothing above changed the zone.
    assert!(dig_short(s.port, "evil.example.com", "TYPE65280", &[]).is_empty());
    assert_eq!(dig_short(s.port, "example.com", "SOA", &[]), before);
    assert_eq!(
        dig_short(s.port, "www.example.com", "A", &[]),
        vec!["192.0.2.10"]
    );
}

/// The TSIG record at the end of `msg`, field by field (RFC 8945 section 4.2), read
/// from the raw bytes rather than through a DNS library.
struct TsigFields {
    owner: Vec<u8>,
    algorithm: Vec<u8>,
    time: u64,
    fudge: u16,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    other: Vec<u8>,
}

fn last_tsig(msg: &[u8], key_owner_len: usize) -> TsigFields {
    // The TSIG record is last, its owner and algorithm uncompressed: look back for the
    // record whose owner has the key name's length and whose RDATA ends the message.
    let arcount = u16::from_be_bytes([msg[10], msg[11]]);
    assert!(arcount >= 1, "no additional record");
    let mut p = msg.len();
    for start in (12..msg.len()).rev() {
        if start + key_owner_len + 10 > msg.len() {
            continue;
        }
        let q = start + key_owner_len;
        if msg[q..q + 4] == [0, 250, 0, 255] {
            let rdlen = u16::from_be_bytes([msg[q + 8], msg[q + 9]]) as usize;
            if q + 10 + rdlen == msg.len() {
                p = start;
                break;
            }
        }
    }
    assert!(p < msg.len(), "no TSIG record at the end of {msg:02x?}");
    let owner = msg[p..p + key_owner_len].to_vec();
    let mut q = p + key_owner_len + 8;
    assert_eq!(&msg[q - 4..q], &[0, 0, 0, 0], "TSIG TTL is 0");
    q += 2;
    let alg_start = q;
    while msg[q] != 0 {
        q += 1 + msg[q] as usize;
    }
    q += 1;
    let algorithm = msg[alg_start..q].to_vec();
    let mut t = [0u8; 8];
    t[2..].copy_from_slice(&msg[q..q + 6]);
    let fudge = u16::from_be_bytes([msg[q + 6], msg[q + 7]]);
    let mac_len = u16::from_be_bytes([msg[q + 8], msg[q + 9]]) as usize;
    q += 10;
    let mac = msg[q..q + mac_len].to_vec();
    q += mac_len;
    let original_id = u16::from_be_bytes([msg[q], msg[q + 1]]);
    let error = u16::from_be_bytes([msg[q + 2], msg[q + 3]]);
    let other_len = u16::from_be_bytes([msg[q + 4], msg[q + 5]]) as usize;
    let other = msg[q + 6..q + 6 + other_len].to_vec();
    assert_eq!(q + 6 + other_len, msg.len());
    TsigFields {
        owner,
        algorithm,
        time: u64::from_be_bytes(t),
        fudge,
        mac,
        original_id,
        error,
        other,
    }
}

/// RFC 8945 section 5.2.3 on the wire: an update signed an hour before the server's
/// clock gets NOTAUTH/BADTIME, signed with the same key, carrying the client's Time
/// Signed and Fudge, the server's time in a 6-byte Other Data, and a MAC that the
/// client's verifier (hickory-proto's, which checks the answer's time against the
/// time the request was signed with) accepts. Nothing changes.
#[test]
fn out_of_window_update_gets_badtime_with_the_clients_time() {
    // nsupdate and knsupdate cannot be given another clock (no faketime here), so the
    // skewed request is signed with hickory-proto's TSIG code.
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name, RecordType};
    let s = DnsSetup::new(0, "");
    let _srv = s.start("t");
    let k: scold_dns::TsigKey = key("coordinator", "hmac-sha256", SECRET).parse().unwrap();
    for (skew, fudge) in [(-3600i64, 300u16), (7200, 60)] {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Update);
        let mut q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::SOA);
        q.set_query_class(DNSClass::IN);
        m.add_query(q);
        let mut r = hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("late.example.com.").unwrap(),
            60,
            hickory_proto::rr::RData::A("192.0.2.1".parse().unwrap()),
        );
        r.dns_class = DNSClass::IN;
        m.authorities.push(r);
        let client_time = (scold_dns::tsig::now_secs() as i64 + skew) as u64;
        let mut verifier = m
            .finalize(&k.signer(fudge), client_time)
            .unwrap()
            .expect("a verifier for the answer");
        let before = scold_dns::tsig::now_secs();
        let raw =
            udp_ask(s.addr(), &m.to_vec().unwrap(), Duration::from_secs(2)).expect("an answer");
        let after = scold_dns::tsig::now_secs();
        let resp = Message::from_vec(&raw).unwrap();
        assert_eq!(
            resp.metadata.response_code,
            hickory_proto::op::ResponseCode::NotAuth
        );
        let f = last_tsig(&raw, "\x0bcoordinator\x00".len());
        assert_eq!(
            f.owner, b"\x0bcoordinator\x00",
            "signed with the request's key"
        );
        assert_eq!(f.algorithm, b"\x0bhmac-sha256\x00");
        assert_eq!(f.error, 18, "TSIG error BADTIME");
        assert_eq!(
            f.time, client_time,
            "Time Signed must be the client's (RFC 8945 5.2.3), not the server's"
        );
        assert_eq!(f.fudge, fudge, "Fudge is the request's");
        assert_eq!(f.original_id, 4242);
        assert_eq!(f.mac.len(), 32, "the answer is signed");
        assert_eq!(f.other.len(), 6, "Other Len 6");
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&f.other);
        let server_time = u64::from_be_bytes(t);
        assert!(
            (before..=after).contains(&server_time),
            "Other Data {server_time} is not the server's clock ({before}..={after})"
        );
        verifier.verify(&raw).unwrap_or_else(|e| {
            panic!("the client cannot verify the BADTIME answer with its own time: {e}")
        });
    }
    assert!(dig_short(s.port, "late.example.com", "A", &[]).is_empty());
}

#[test]
fn acknowledged_update_survives_kill_9() {
    let s = DnsSetup::new(0, "");
    let good = key("coordinator", "hmac-sha256", SECRET);
    for round in 0..3u8 {
        let mut srv = s.start(&format!("k{round}"));
        let body = format!("update add k{round}.example.com. 60 TYPE65280 \\# 4 0A0000{round:02X}");
        let out = nsupdate(&["-y", &good], &script(s.port, &body));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SIGKILL right after the acknowledgement: no chance to flush anything.
        srv.kill9();
        let _srv2 = s.start(&format!("k{round}b"));
        for r in 0..=round {
            assert_eq!(
                dig_short(s.port, &format!("k{r}.example.com"), "TYPE65280", &[]),
                vec![format!("\\# 4 0A0000{r:02X}")],
                "update {r} lost after kill -9 in round {round}"
            );
        }
    }
}

#[test]
fn garbage_is_answered_or_dropped_and_service_continues() {
    let s = DnsSetup::new(0, "");
    let mut srv = s.start("f");
    let addr = s.addr();
    let good = query_bytes(0x4242, "www.example.com", 1, true);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut answered_garbage = 0;
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Every truncation of a good query.
    for cut in 0..good.len() {
        cases.push(good[..cut].to_vec());
    }
    // Random bytes, and random bit flips of a good query.
    for i in 0..300 {
        let len = (next() % 600) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            b = good.clone();
            for _ in 0..(1 + next() % 4) {
                let p = (next() as usize) % b.len();
                b[p] ^= 1 << (next() % 8);
            }
        }
        cases.push(b);
    }
    // Oversized: a 60 KB datagram with a valid header.
    let mut big = good.clone();
    big.resize(60_000, 0xAB);
    cases.push(big);
    // Compression loop in the question.
    cases.push(vec![
        0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
    ]);
    for c in &cases {
        let _ = sock.send_to(c, addr);
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answered_garbage += 1;
            assert!(n >= 12, "a reply shorter than a header");
            assert_eq!(&buf[..2], &c[..2], "a reply to garbage keeps the ID");
            assert!(buf[2] & 0x80 != 0, "replies have QR set");
        }
    }
    assert!(
        answered_garbage > 0,
        "malformed queries must get error answers, not only silence"
    );
    // Garbage over TCP: a length prefix larger than what follows, then close.
    if let Ok(mut t) = TcpStream::connect(addr) {
        use std::io::Write;
        let _ = t.write_all(&[0xFF, 0xFF, 1, 2, 3]);
    }
    assert!(
        srv.alive(),
        "server died on malformed input:\n{}",
        srv.log_text()
    );
    let r = udp_ask(addr, &good, Duration::from_secs(2)).expect("still answering");
    assert_eq!(r[3] & 0xF, 0, "NOERROR for the good query");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
}

#[test]
fn flood_from_one_source_does_not_starve_others() {
    // Limit 50 responses/s per /32; flood from 127.0.0.1, query from 127.0.0.2.
    let s = DnsSetup::new(50, "slip = 0");
    let srv_addr = s.addr();
    let mut srv = s.start("r");
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.set_nonblocking(true).unwrap();
    let q = query_bytes(1, "www.example.com", 1, false);
    let mut got = 0usize;
    let t0 = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 512];
    let other = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    other
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut other_ok = 0;
    while sent < 20_000 && t0.elapsed() < Duration::from_secs(4) {
        for _ in 0..200 {
            if flood.send_to(&q, srv_addr).is_ok() {
                sent += 1;
            }
        }
        while flood.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        if sent % 4000 == 0 {
            let oq = query_bytes(0x7777, "www.example.com", 1, false);
            other.send_to(&oq, srv_addr).unwrap();
            if let Ok((n, _)) = other.recv_from(&mut buf) {
                if n >= 12 && buf[..2] == oq[..2] {
                    other_ok += 1;
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    while flood.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Each of two workers allows up to 50/s plus a burst of 50.
    let allowed = (2.0 * 50.0 * (elapsed + 1.0)) as usize + 100;
    assert!(
        got <= allowed,
        "flooding source got {got} answers for {sent} queries in {elapsed:.1}s (limit ~{allowed})"
    );
    assert!(got > 0, "the flooding source still gets its share");
    assert!(other_ok >= 1, "another source was starved during the flood");
    assert!(srv.alive());
    let third = UdpSocket::bind("127.0.0.3:0").unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    third.send_to(&q, srv_addr).unwrap();
    assert!(
        third.recv_from(&mut buf).is_ok(),
        "server still answers after the flood"
    );
}

#[test]
fn config_errors_name_the_file_and_key_and_sigterm_stops_cleanly() {
    let s = DnsSetup::new(0, "");
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:1\"]\njournal = \"j\"\nalt_type = 12\n[[zone]]\nname=\"example.com\"\nfile=\"x\"\n").unwrap();
    let out = output(
        Command::new(scold_bin())
            .args(["dns", "--config"])
            .arg(&bad),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("alt_type") && err.contains("65280"),
        "{err}"
    );

    let out = output(Command::new(scold_bin()).args(["dns", "--example-config"]));
    assert!(out.status.success());
    std::fs::create_dir(s.dir.path().join("ex")).unwrap();
    let example = s.dir.path().join("ex/example.toml");
    std::fs::write(&example, &out.stdout).unwrap();
    let out = output(
        Command::new(scold_bin())
            .args(["dns", "--config"])
            .arg(&example)
            .arg("--check"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("example.com.zone"),
        "a missing zone file is named: {err}"
    );

    let mut srv = s.start("s");
    let status = srv.terminate().expect("exit status");
    assert!(
        status.success(),
        "SIGTERM must stop scold dns cleanly: {status:?}\n{}",
        srv.log_text()
    );
}

/// Reads `/metrics` from the server's Prometheus endpoint.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn metrics_count_answers_and_updates() {
    let s = DnsSetup::new(0, "");
    let mport = free_port();
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("metrics = \"127.0.0.1:{mport}\"\n{text}"),
    )
    .unwrap();
    let _srv = s.start("metrics");
    for _ in 0..5 {
        assert_eq!(
            dig_short(s.port, "www.example.com", "A", &[]),
            vec!["192.0.2.10"]
        );
    }
    let good = key("coordinator", "hmac-sha256", SECRET);
    let bad = key("coordinator", "hmac-sha256", WRONG_SECRET);
    let body = "update add m.example.com. 60 TYPE65280 \\# 4 0A000001";
    assert!(nsupdate(&["-y", &good], &script(s.port, body))
        .status
        .success());
    assert!(!nsupdate(&["-y", &bad], &script(s.port, body))
        .status
        .success());
    // UDP workers add their counts in batches, at the latest after an idle 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    let m = scrape(mport);
    assert!(
        counter(&m, "scold_dns_answers_total{path=\"fast\"}") >= 5,
        "{m}"
    );
    assert_eq!(
        counter(&m, "scold_dns_updates_total{outcome=\"applied\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        counter(&m, "scold_dns_updates_total{outcome=\"bad_tsig\"}"),
        1,
        "{m}"
    );
}

/// The `status:` of every header `dig +comments` prints (one per message).
fn dig_statuses(port: u16, args: &[&str]) -> (Vec<String>, String) {
    let text = dig_comments(port, args);
    let st = text
        .lines()
        .filter_map(|l| l.split("status: ").nth(1))
        .map(|r| r.split(',').next().unwrap_or("").to_string())
        .collect();
    (st, text)
}

/// docs/dns.md promises REFUSED for zone transfers to anyone but a configured
/// secondary (this set-up has none): `dig AXFR` and `dig IXFR=1` (whose request carries
/// the client's SOA in the authority section), over TCP and UDP, unsigned or signed
/// with the coordinator's key, and Knot's `kdig` too; a query that is really malformed
/// still gets FORMERR. tests/secondaries.rs has the transfers that are answered.
#[test]
fn zone_transfers_without_a_secondarys_key_are_refused_and_malformed_queries_get_formerr() {
    let s = DnsSetup::new(0, "");
    let _srv = s.start("xfr");
    let tsig = key("coordinator", "hmac-sha256", SECRET);
    for args in [
        vec!["example.com", "AXFR"],
        vec!["example.com", "IXFR=1"],
        vec!["+notcp", "example.com", "IXFR=1"],
        vec!["+noedns", "example.com", "IXFR=1"],
        vec!["-y", tsig.as_str(), "example.com", "IXFR=1"],
        vec!["-y", tsig.as_str(), "example.com", "AXFR"],
    ] {
        let (st, text) = dig_statuses(s.port, &args);
        assert_eq!(st, vec!["REFUSED"], "dig {args:?}:\n{text}");
        assert!(
            !text.contains("Couldn't verify"),
            "dig {args:?}: the signed refusal does not verify:\n{text}"
        );
    }
    let kdig = require_tool("kdig", "knot-dnsutils");
    for t in ["AXFR", "IXFR=1"] {
        let out = output(Command::new(&kdig).args([
            "+time=2",
            "-p",
            &s.port.to_string(),
            "@127.0.0.1",
            "example.com",
            t,
        ]));
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("'REFUSED'"), "kdig {t}:\n{text}");
        assert!(!text.contains("FORMERR"), "kdig {t}:\n{text}");
    }
    // Malformed: an A query with a record in the authority section, and an IXFR
    // without the SOA it must carry.
    let mut q = query_bytes(0x5151, "www.example.com", 1, false);
    q[9] = 1;
    q.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
    let r = udp_ask(s.addr(), &q, Duration::from_secs(2)).expect("an answer");
    assert_eq!(
        r[3] & 0xF,
        1,
        "FORMERR for a query with an authority record"
    );
    let q = query_bytes(0x5152, "example.com", 251, false);
    let r = udp_ask(s.addr(), &q, Duration::from_secs(2)).expect("an answer");
    assert_eq!(r[3] & 0xF, 1, "FORMERR for an IXFR without its SOA");
}

/// A key that may change any type below the zone (the updates BIND's own tests use).
fn any_type_key_config() -> String {
    format!(
        "[[key]]\nname = \"admin\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{SECRET}\"\n[[key.allow]]\nnames = [\"*.example.com\"]\ntypes = [\"ANY\"]\n"
    )
}

/// A zone file with a CNAME beside other data is refused, as BIND (`named-checkzone`:
/// "CNAME and other data") and Knot refuse it, by `--check` and at start, naming the
/// file, the line and the owner; an UPDATE cannot create that state either: as BIND
/// does (RFC 2136 section 3.4.2.2), the conflicting records are ignored and the rest
/// of the update applies.
#[test]
fn cname_and_other_data_refused_in_zone_files_and_ignored_in_updates() {
    let s = DnsSetup::new(0, &any_type_key_config());
    let zone = s.path("example.com.zone");
    std::fs::write(&zone, format!("{ZONE}www CNAME ns1\nalias CNAME www\n")).unwrap();
    for args in [&["--check"][..], &[]] {
        let (st, log) = s.run_to_exit(&format!("cname{}", args.len()), args);
        assert!(
            !st.success(),
            "{args:?} accepted CNAME and other data:\n{log}"
        );
        assert!(
            log.contains("example.com.zone:9:")
                && log.contains("www.example.com.")
                && log.contains("CNAME and other data"),
            "{args:?}: the error names the file, line and owner:\n{log}"
        );
    }

    // Without the bad line, the server starts; updates cannot recreate the state.
    std::fs::write(&zone, format!("{ZONE}alias CNAME www\n")).unwrap();
    let _srv = s.start("cname-ok");
    let out = nsupdate(
        &["-y", &key("admin", "hmac-sha256", SECRET)],
        &script(
            s.port,
            "update add www.example.com. 60 CNAME other.example.com.\n\
             update add alias.example.com. 60 A 192.0.2.99\n\
             update add alias.example.com. 60 TXT \"x\"\n\
             update add new.example.com. 60 A 192.0.2.1\n\
             update add new.example.com. 60 CNAME www.example.com.",
        ),
    );
    assert!(
        out.status.success(),
        "BIND answers such an update NOERROR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dig_short(s.port, "www.example.com", "ANY", &["+tcp"]),
        vec!["192.0.2.10", "\\# 4 CB373966"],
        "a CNAME was added beside www's data"
    );
    assert_eq!(
        dig_short(s.port, "alias.example.com", "ANY", &["+tcp"]),
        vec!["www.example.com."],
        "data was added beside alias's CNAME"
    );
    assert_eq!(
        dig_short(s.port, "new.example.com", "ANY", &["+tcp"]),
        vec!["192.0.2.1"],
        "a CNAME was added beside new's A in the same update"
    );
}
