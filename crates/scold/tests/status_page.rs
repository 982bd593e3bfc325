//! The coordinator's status page (`[admin]`) as an attacker and an operator meet it: a
//! real `scold coordinator` on loopback, certificates from `scold ca`, requests from
//! `curl` and `openssl s_client`. Who holds no operator certificate of the consortium
//! gets nothing; malformed, oversized, non-GET and idle requests are refused cleanly and
//! hold nothing.

use scold_testkit::{free_port, require_tool, wait_tcp_port, Proc};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{scold, SCOLD, SECRET};

struct Site {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    coordinator: Proc,
    admin: SocketAddr,
    metrics: SocketAddr,
}

/// Certificates of the consortium CA for `(role, name)`, and of a second, foreign CA
/// for an operator named like ours.
fn pki(dir: &Path) {
    let ca = dir.join("ca").display().to_string();
    let certs = dir.join("certs").display().to_string();
    scold(&["ca", "--dir", &ca, "init"]);
    for (role, name) in [
        ("coordinator", "main"),
        ("operator", "admin"),
        ("proxy", "p1"),
        ("target", "web"),
    ] {
        scold(&[
            "ca", "--dir", &ca, "issue", "--role", role, "--name", name, "--out", &certs,
        ]);
    }
    let other = dir.join("other-ca").display().to_string();
    let other_certs = dir.join("other").display().to_string();
    scold(&["ca", "--dir", &other, "init"]);
    scold(&[
        "ca",
        "--dir",
        &other,
        "issue",
        "--role",
        "operator",
        "--name",
        "admin",
        "--out",
        &other_certs,
    ]);
}

fn config(dir: &Path, admin: &str) -> (String, SocketAddr) {
    let control = free_port();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
[coordinator]
listen = "127.0.0.1:{control}"
state = "{state}"
[tls]
ca = "certs/ca.crt"
cert = "certs/coordinator-main.crt"
key = "certs/coordinator-main.key"
[metrics]
listen = "{metrics}"
{admin}
[[target]]
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["192.0.2.10"]
gateways = ["gw1"]
[target.dns]
server = "127.0.0.1:9"
key = "hmac-sha256:coordinator:{SECRET}"
"#,
        state = dir.join("state.redb").display()
    );
    (text, metrics)
}

fn start(admin_tls: bool) -> Site {
    require_tool("curl", "curl");
    require_tool("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    pki(&dir);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (text, metrics) = config(
        &dir,
        &format!("[admin]\nlisten = \"{admin}\"\ntls = {admin_tls}\n"),
    );
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    let mut coordinator = Proc::spawn(
        "scold coordinator",
        Command::new(SCOLD)
            .args(["coordinator", "--config"])
            .arg(&path),
        &dir.join("coordinator.log"),
    );
    coordinator.wait_tcp_port(admin, Duration::from_secs(20));
    assert!(wait_tcp_port(metrics, Duration::from_secs(10)));
    Site {
        dir,
        _tmp: tmp,
        coordinator,
        admin,
        metrics,
    }
}

impl Site {
    /// `curl` over HTTPS with the client certificate `cert` (a path under the site's
    /// folder, without `.crt`/`.key`), or none; `args` come first.
    fn curl(&self, cert: Option<&str>, args: &[&str], path: &str) -> Output {
        let mut c = Command::new("curl");
        c.current_dir(&self.dir)
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            // The coordinator's certificate names a SCOLD identity, not this host name:
            // the chain is checked against the consortium CA, the name is not.
            .args(["--cacert", "certs/ca.crt", "--insecure"])
            .args(args);
        if let Some(cert) = cert {
            c.args([
                "--cert",
                &format!("{cert}.crt"),
                "--key",
                &format!("{cert}.key"),
            ]);
        }
        c.arg(format!("https://{}{path}", self.admin));
        c.output().unwrap()
    }

    /// The HTTP status curl got (0 when there was no HTTP answer) and the body.
    fn get(&self, cert: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
        let out = self.curl(cert, args, path);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn metric(&self, name: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{}/metrics", self.metrics))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Bytes sent over TLS with the operator's certificate by `openssl s_client`; what
    /// came back.
    fn raw_tls(&self, bytes: &[u8]) -> String {
        let mut child = Command::new("timeout")
            .current_dir(&self.dir)
            .args([
                "10",
                "openssl",
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-tls1_3",
            ])
            .args(["-connect", &self.admin.to_string()])
            .args([
                "-cert",
                "certs/operator-admin.crt",
                "-key",
                "certs/operator-admin.key",
            ])
            .args(["-CAfile", "certs/ca.crt"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(bytes).unwrap();
        // Keep the connection open while the answer comes; s_client ends at its EOF.
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn the_status_page_admits_operator_certificates_only() {
    scold_testkit::require_root();
    let site = start(true);

    // The operator sees the page and the coordinator's view.
    let (code, body) = site.get(Some("certs/operator-admin"), &[], "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("<script src=\"/status.js\""), "{body}");
    let (code, body) = site.get(Some("certs/operator-admin"), &[], "/api/status");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["targets"][0]["name"], "web", "{body}");
    assert_eq!(v["status"]["targets"][0]["phase"], "normal", "{body}");
    assert_eq!(v["coordinator"], "coordinator/main", "{body}");
    let (code, js) = site.get(Some("certs/operator-admin"), &[], "/status.js");
    assert_eq!(code, 200);
    assert!(js.contains("EventSource"), "{js}");
    // The live stream sends the view at once.
    let (_, live) = site.get(
        Some("certs/operator-admin"),
        &["--max-time", "2"],
        "/api/live",
    );
    assert!(
        live.contains("event: status") && live.contains("\"targets\""),
        "{live}"
    );

    let refused_before = site.metric("scold_refusals_total{reason=\"admin_tls\"}");
    // No certificate, a certificate of another role, a certificate of another CA: no
    // HTTP answer at all (the TLS handshake fails).
    for (who, cert) in [
        ("no certificate", None),
        ("a proxy certificate", Some("certs/proxy-p1")),
        ("a target certificate", Some("certs/target-web")),
        ("an operator of another CA", Some("other/operator-admin")),
    ] {
        for path in ["/", "/api/status", "/api/live"] {
            let (code, body) = site.get(cert, &[], path);
            assert_eq!(code, 0, "{who} got HTTP {code} for {path}: {body}");
            assert!(
                !body.contains("targets") && !body.contains("<html"),
                "{who}: {body}"
            );
        }
    }
    let refused = site.metric("scold_refusals_total{reason=\"admin_tls\"}") - refused_before;
    assert!(
        refused >= 12,
        "12 refused handshakes counted, saw {refused}"
    );

    // Only GET: a POST, PUT or DELETE changes nothing and is refused.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (code, _) = site.get(
            Some("certs/operator-admin"),
            &["-X", method, "--data", "phase=diverted"],
            "/api/status",
        );
        assert_eq!(code, 405, "{method}");
    }
    let (code, _) = site.get(Some("certs/operator-admin"), &[], "/api/divert");
    assert_eq!(code, 404);
    // An oversized request head.
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let (code, body) = site.get(Some("certs/operator-admin"), &["-H", &big], "/");
    // 431, or (when the server closed before curl sent it all, and the unread rest
    // reset the connection) no answer at all: never the page.
    assert!(
        code == 431 || code == 0,
        "an oversized head got HTTP {code}: {body}"
    );
    assert!(!body.contains("<html"));
    // Garbage in the TLS session.
    let answer = site.raw_tls(b"\x00\x01GARBAGE \xff\xfe\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "garbage: {answer:?}");

    // Nothing of it is kept: more bad connections from this address than the door
    // admits at once (16), then the operator still gets in.
    for _ in 0..20 {
        let answer = site.raw_tls(b"BREW /pot HTCPCP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    }
    // A connection that says nothing is closed after the handshake time (3 s).
    let t0 = Instant::now();
    let mut idle = TcpStream::connect(site.admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle connection got bytes");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "an idle connection was held {:?}",
        t0.elapsed()
    );
    let (code, _) = site.get(Some("certs/operator-admin"), &[], "/api/status");
    assert_eq!(code, 200, "the operator is still served");
    assert!(site.coordinator_alive());
}

impl Site {
    fn coordinator_alive(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.coordinator.pid().to_string()])
            .status()
            .unwrap()
            .success()
    }
}

#[test]
fn plain_http_is_loopback_only_and_answers_loopback_names_only() {
    scold_testkit::require_root();
    require_tool("curl", "curl");
    // A plain page on a routable address is refused when the config is read.
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = config(
        tmp.path(),
        "[admin]\nlisten = \"0.0.0.0:7880\"\ntls = false\n",
    );
    let path = tmp.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("timeout")
        .args(["20", SCOLD, "coordinator", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a plain page on 0.0.0.0 was accepted"
    );
    assert!(err.contains("[admin]") && err.contains("loopback"), "{err}");

    let site = start(false);
    let get = |host: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://{}/api/status", site.admin))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(get(&site.admin.to_string()), "200");
    assert_eq!(get(&format!("localhost:{}", site.admin.port())), "200");
    // A foreign name that resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    assert_eq!(get("attacker.example"), "421");
    assert_eq!(
        get(&format!("attacker.example:{}", site.admin.port())),
        "421"
    );
    // Garbage over plain HTTP: 400, and the listener goes on.
    let mut s = TcpStream::connect(site.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // A connection that sends nothing, or half a request head, is closed after the
    // head's time (5 s).
    for first in [&b""[..], b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"] {
        let t0 = Instant::now();
        let mut idle = TcpStream::connect(site.admin).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        idle.write_all(first).unwrap();
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest);
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "a silent connection was held {:?}",
            t0.elapsed()
        );
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "{rest:?}"
        );
    }
    assert_eq!(get(&site.admin.to_string()), "200");
}
