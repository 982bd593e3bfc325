//! The coordinator's updater against servers nobody here wrote (BIND 9 and Knot) and
//! against `scold dns`: set, change and remove an ALT set, and swap A records for
//! scheme 4.3; a wrong key is refused everywhere.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use common::*;
use scold_dns::{TsigKey, UpdateError, Updater};
use scold_testkit::{free_port, require_tool, Proc};

const PEER_ZONE: &str = "$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 900 604800 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn good_key() -> TsigKey {
    format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap()
}

async fn exercise(server: SocketAddr) {
    let mut u = Updater::new(server, good_key());
    u.timeout = std::time::Duration::from_secs(3);

    // Set, change, remove the ALT set of www.
    u.set_alt(
        "example.com",
        "www.example.com",
        &[ip("198.51.100.1"), ip("2001:db8::1")],
        30,
    )
    .await
    .expect("set ALT");
    let mut got = u.query_alt("www.example.com").await.unwrap();
    got.sort();
    assert_eq!(got, vec![ip("198.51.100.1"), ip("2001:db8::1")]);
    u.set_alt("example.com", "www.example.com", &[ip("198.51.100.2")], 30)
        .await
        .expect("change ALT");
    assert_eq!(
        u.query_alt("www.example.com").await.unwrap(),
        vec![ip("198.51.100.2")]
    );
    u.clear_alt("example.com", "www.example.com")
        .await
        .expect("clear ALT");
    assert!(u.query_alt("www.example.com").await.unwrap().is_empty());

    // Scheme 4.3: A records become the proxies', then go back.
    u.replace_addresses(
        "example.com",
        "www.example.com",
        &[ip("198.51.100.7"), ip("198.51.100.8")],
        30,
    )
    .await
    .expect("divert A");
    let recs = u.query("www.example.com", 1).await.unwrap();
    assert_eq!(recs.len(), 2);
    u.replace_addresses("example.com", "www.example.com", &[ip("192.0.2.10")], 300)
        .await
        .expect("restore A");
    let recs = u.query("www.example.com", 1).await.unwrap();
    assert_eq!(recs.len(), 1);

    // A wrong secret is refused and changes nothing.
    let bad = Updater::new(
        server,
        format!("hmac-sha256:coordinator:{WRONG_SECRET}")
            .parse()
            .unwrap(),
    );
    let e = bad
        .set_alt("example.com", "www.example.com", &[ip("203.0.113.66")], 30)
        .await
        .expect_err("wrong key must be refused");
    assert!(matches!(e, UpdateError::Rejected { .. }), "{e}");
    assert!(
        e.to_string().contains("NOTAUTH")
            || e.to_string().contains("Not Authorized")
            || e.to_string().contains("BadSig"),
        "{e}"
    );
    assert!(u.query_alt("www.example.com").await.unwrap().is_empty());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updater_against_bind9() {
    let named = require_tool("named", "bind9");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    write(d, "example.com.zone", PEER_ZONE);
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
}};
controls {{ }};
key "coordinator" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "example.com" {{
    type primary;
    file "{dir}/example.com.zone";
    update-policy {{ grant coordinator subdomain example.com. ANY; }};
}};
"#,
            dir = d.display()
        ),
    );
    let mut p = Proc::spawn(
        "named",
        Command::new(named).args(["-g", "-n", "1", "-c"]).arg(&conf),
        &d.join("named.log"),
    );
    wait_answering(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "example.com",
        &mut p,
    );
    exercise(SocketAddr::from(([127, 0, 0, 1], port))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updater_against_knot() {
    let knotd = require_tool("knotd", "knot");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    write(d, "example.com.zone", PEER_ZONE);
    let conf = write(
        d,
        "knot.conf",
        &format!(
            r#"server:
    rundir: "{dir}"
    listen: 127.0.0.1@{port}
database:
    storage: "{dir}"
key:
  - id: coordinator
    algorithm: hmac-sha256
    secret: {SECRET}
acl:
  - id: coordinator_update
    key: coordinator
    action: update
template:
  - id: default
    storage: "{dir}"
    file: "%s.zone"
zone:
  - domain: example.com
    acl: coordinator_update
"#,
            dir = d.display()
        ),
    );
    let mut p = Proc::spawn(
        "knotd",
        Command::new(knotd).arg("-c").arg(&conf),
        &d.join("knot.log"),
    );
    wait_answering(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "example.com",
        &mut p,
    );
    exercise(SocketAddr::from(([127, 0, 0, 1], port))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updater_against_scold_dns() {
    let s = DnsSetup::new(0, "");
    let _srv = s.start("u");
    exercise(s.addr()).await;

    // The per-key policy: a key for www ALT only cannot swap A records.
    let mut u = Updater::new(
        s.addr(),
        format!("hmac-sha512:alt-only-www:{SECRET}")
            .parse()
            .unwrap(),
    );
    u.retries = 1;
    u.set_alt("example.com", "www.example.com", &[ip("198.51.100.9")], 30)
        .await
        .unwrap();
    let e = u
        .replace_addresses("example.com", "www.example.com", &[ip("198.51.100.9")], 30)
        .await
        .expect_err("policy refuses A");
    assert!(
        e.to_string().contains("REFUSED") || e.to_string().contains("Refused"),
        "{e}"
    );
    // Unreachable server: a clear error after the retries.
    let mut dead = Updater::new(SocketAddr::from(([127, 0, 0, 1], free_port())), good_key());
    dead.timeout = std::time::Duration::from_millis(200);
    dead.retries = 2;
    let e = dead
        .clear_alt("example.com", "www.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(e, UpdateError::Unreachable { attempts: 2, .. }),
        "{e}"
    );
}
