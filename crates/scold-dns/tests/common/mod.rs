//! What the DNS process and interop tests share: the test zone and a `scold dns` set-up
//! on loopback, small DNS clients, `nsupdate` and `dig`. The binary, tools, processes and
//! ports come from `scold_testkit`.
#![allow(dead_code)]

use scold_testkit::{free_port, output, require_tool, scold_bin, Proc};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A TSIG secret shared by the tests (base64).
pub const SECRET: &str = "c2NvbGQtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg==";
/// A different secret.
pub const WRONG_SECRET: &str = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZy0=";

/// Builds a query for `name`/`qtype` (with EDNS when `edns`).
pub fn query_bytes(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        edns as u8,
    ];
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() {
            continue;
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    }
    m
}

/// One UDP exchange; `None` on time-out.
pub fn udp_ask(server: SocketAddr, req: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(req, server).ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        if n >= 2 && buf[..2] == req[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// Waits until `server` answers a query for `name` SOA, up to 15 s.
pub fn wait_answering(server: SocketAddr, name: &str, proc_: &mut Proc) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        assert!(
            proc_.alive(),
            "{} exited early:\n{}",
            proc_.name(),
            proc_.log_text()
        );
        if udp_ask(
            server,
            &query_bytes(7, name, 6, false),
            Duration::from_millis(200),
        )
        .is_some()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} did not answer within 15 s:\n{}",
        proc_.name(),
        proc_.log_text()
    );
}

/// Runs `nsupdate` with `script` on stdin and the given extra arguments.
pub fn nsupdate(args: &[&str], script: &str) -> Output {
    use std::io::Write;
    let bin = require_tool("nsupdate", "bind9-dnsutils");
    let mut c = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsupdate starts");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    c.wait_with_output().unwrap()
}

/// `dig +short` output lines.
pub fn dig_short(port: u16, name: &str, qtype: &str, extra: &[&str]) -> Vec<String> {
    let bin = require_tool("dig", "bind9-dnsutils");
    let out = output(
        Command::new(bin)
            .args([
                "+short",
                "+time=2",
                "+tries=2",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
                name,
                qtype,
            ])
            .args(extra),
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// What `dig +comments` (header and status lines) prints, stdout then stderr, asking
/// 127.0.0.1:`port` with `args` (name, type and further options).
pub fn dig_comments(port: u16, args: &[&str]) -> String {
    let bin = require_tool("dig", "bind9-dnsutils");
    let out = output(
        Command::new(bin)
            .args([
                "+comments",
                "+time=2",
                "+tries=1",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
            ])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A temporary directory with the standard test zone and a `scold dns` config.
pub struct DnsSetup {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
}

pub const ZONE: &str = "$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 900 604800 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\nwww 60 ALT 203.55.57.102\nold 60 TYPE65280 \\# 4 CB373967\n";

impl DnsSetup {
    /// Writes the zone and a config; `extra` is appended to the config.
    pub fn new(rate_limit: u32, extra: &str) -> DnsSetup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("example.com.zone"), ZONE).unwrap();
        let cfg = format!(
            r#"listen = ["127.0.0.1:{port}"]
journal = "dns.journal"
udp_workers = 2
[[zone]]
name = "example.com"
file = "example.com.zone"
[[key]]
name = "coordinator"
algorithm = "hmac-sha256"
secret = "{SECRET}"
[[key.allow]]
names = ["*.example.com"]
types = ["ALT", "A", "AAAA"]
[[key]]
name = "alt-only-www"
algorithm = "hmac-sha512"
secret = "{SECRET}"
[[key.allow]]
names = ["www.example.com"]
types = ["ALT"]
[rate_limit]
responses_per_second = {rate_limit}
ipv4_prefix = 32
{extra}
"#
        );
        let config = dir.path().join("dns.toml");
        std::fs::write(&config, cfg).unwrap();
        DnsSetup { dir, port, config }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts `scold dns` and waits until it answers.
    pub fn start(&self, tag: &str) -> Proc {
        self.start_with(tag, &[])
    }

    /// Starts `scold dns` with extra arguments and waits until it answers.
    pub fn start_with(&self, tag: &str, args: &[&str]) -> Proc {
        let mut p = Proc::spawn(
            "scold dns",
            Command::new(scold_bin())
                .args(["dns", "--config"])
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "info"),
            &self.dir.path().join(format!("dns-{tag}.log")),
        );
        wait_answering(self.addr(), "example.com", &mut p);
        p
    }

    /// Runs `scold dns --config FILE ARGS` expecting it to exit by itself (a check, or a
    /// start that must fail) within 20 s; a server that keeps running is killed and the
    /// test fails. Returns the exit status and everything it printed.
    pub fn run_to_exit(&self, tag: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
        let mut p = Proc::spawn(
            "scold dns",
            Command::new(scold_bin())
                .args(["dns", "--config"])
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "info"),
            &self.dir.path().join(format!("dns-{tag}.log")),
        );
        if let Some(st) = p.wait_exit(Duration::from_secs(20)) {
            return (st, p.log_text());
        }
        p.kill9();
        panic!(
            "scold dns {args:?} did not exit within 20 s (it should have refused to start or only checked):\n{}",
            p.log_text()
        );
    }

    /// A file in the setup's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Starts an unmodified Knot (`knotd`) in `dir` as a secondary on 127.0.0.1:`port` of
/// `zones`, pulled from the primary on 127.0.0.1:`primary_port` with the TSIG key
/// `sec-knot` (secret [`SECRET`]), whose NOTIFY signed with that key it takes. Its
/// log is `dir/knot.log`; the returned guard stops it.
pub fn start_knot_secondary(
    knotd: &Path,
    dir: &Path,
    port: u16,
    primary_port: u16,
    zones: &[&str],
) -> Proc {
    let conf = dir.join("knot.conf");
    let text = scold_dns::knot::secondary_conf(&scold_dns::knot::Secondary {
        dir,
        listen: ([127, 0, 0, 1], port).into(),
        primary: ([127, 0, 0, 1], primary_port).into(),
        key_name: "sec-knot",
        secret: SECRET,
        zones,
    });
    std::fs::write(&conf, text).unwrap();
    Proc::spawn(
        "knotd",
        Command::new(knotd).arg("-c").arg(&conf),
        &dir.join("knot.log"),
    )
}
