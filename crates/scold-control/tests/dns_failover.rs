//! The coordinator's DNS back end with several TargetDNS primaries: a primary that
//! does not answer or refuses is passed over, the next real `scold dns` takes the
//! update, and the result names which one did; when none takes it, the error names
//! each and why.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scold_control::config::{DnsServers, TargetConfig};
use scold_control::coordinator::{DnsBackend, DnsError, TsigDns};
use scold_dns::Updater;
use scold_testkit::{free_port, scold_bin, Proc};

const SECRET: &str = "c2NvbGQtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg==";
const ZONE: &str = "$ORIGIN example.net.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 900 604800 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\n";

/// A `scold dns` on loopback serving example.net; `with_key`: it knows the
/// coordinator's key (otherwise it refuses its updates).
struct Primary {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    _proc: Proc,
}

impl Primary {
    fn start(with_key: bool) -> Primary {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        std::fs::write(d.join("example.net.zone"), ZONE).unwrap();
        let key = if with_key {
            format!(
                "[[key]]\nname = \"coordinator\"\nsecret = \"{SECRET}\"\n[[key.allow]]\nnames = [\"*.example.net\"]\ntypes = [\"ALT\", \"A\", \"AAAA\"]\n"
            )
        } else {
            String::new()
        };
        std::fs::write(
            d.join("dns.toml"),
            format!(
                "listen = [\"127.0.0.1:{port}\"]\njournal = \"dns.journal\"\nudp_workers = 1\n[[zone]]\nname = \"example.net\"\nfile = \"example.net.zone\"\n{key}"
            ),
        )
        .unwrap();
        let mut p = Proc::spawn(
            "scold dns",
            Command::new(scold_bin())
                .args(["dns", "--config"])
                .arg(d.join("dns.toml"))
                .env("RUST_LOG", "info"),
            &d.join("dns.log"),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_answering(addr, &mut p, d);
        Primary {
            _dir: dir,
            addr,
            _proc: p,
        }
    }
}

fn wait_answering(addr: SocketAddr, p: &mut Proc, dir: &Path) {
    // A SOA query for example.net, id 7.
    let mut q = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07example\x03net\x00\x00\x06\x00\x01");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        assert!(p.alive(), "scold dns exited:\n{}", p.log_text());
        let mut buf = [0u8; 512];
        if sock.send_to(&q, addr).is_ok() && sock.recv_from(&mut buf).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("scold dns in {} did not answer within 15 s", dir.display());
}

/// A target whose `[target.dns]` lists `servers`, read from TOML as an operator
/// writes it.
fn target(servers: &[SocketAddr]) -> TargetConfig {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    toml::from_str(&format!(
        "name = \"web\"\nfqdn = \"www.example.net.\"\nzone = \"example.net.\"\naddresses = [\"192.0.2.10\"]\ngateways = [\"gw1\"]\n[dns]\nservers = [{}]\nkey = \"hmac-sha256:coordinator:{SECRET}\"\n",
        list.join(", ")
    ))
    .unwrap()
}

fn nobody() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_primary_takes_the_update_and_is_named() {
    let live = Primary::start(true);
    let refusing = Primary::start(false);
    let dead = nobody();
    let key = format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap();
    let check = Updater::new(live.addr, key);

    // Nothing listens at the first: the second takes the update.
    let t = target(&[dead, live.addr]);
    let acc = TsigDns
        .publish(&t, &[ip("198.51.100.1")])
        .await
        .expect("the live primary takes it");
    assert_eq!(acc.by, live.addr.to_string());
    assert_eq!(acc.passed_over.len(), 1);
    assert_eq!(acc.passed_over[0].0, dead.to_string());
    assert!(
        acc.passed_over[0].1.contains("no answer"),
        "{:?}",
        acc.passed_over
    );
    assert!(acc.to_string().contains(&format!("taken by {}", live.addr)));
    assert_eq!(
        check.query_alt("www.example.net").await.unwrap(),
        vec![ip("198.51.100.1")]
    );

    // The first refuses (it does not know the key): the second takes the restore.
    let t = target(&[refusing.addr, live.addr]);
    let acc = TsigDns
        .restore(&t)
        .await
        .expect("the live primary takes it");
    assert_eq!(acc.by, live.addr.to_string());
    assert_eq!(acc.passed_over[0].0, refusing.addr.to_string());
    assert!(
        acc.passed_over[0].1.contains("NOTAUTH") || acc.passed_over[0].1.contains("BadKey"),
        "{:?}",
        acc.passed_over
    );
    assert!(check.query_alt("www.example.net").await.unwrap().is_empty());

    // The live one first: no other is tried.
    let t = target(&[live.addr, dead]);
    let acc = TsigDns.publish(&t, &[ip("198.51.100.2")]).await.unwrap();
    assert_eq!(acc.by, live.addr.to_string());
    assert!(acc.passed_over.is_empty());

    // None takes it: the error names each and why.
    let t = target(&[dead, refusing.addr]);
    let e = TsigDns
        .publish(&t, &[ip("198.51.100.3")])
        .await
        .expect_err("no primary takes it");
    assert!(
        matches!(e, DnsError::AllServers(ref v) if v.len() == 2),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&dead.to_string()) && text.contains(&refusing.addr.to_string()),
        "{text}"
    );
    assert_eq!(
        check.query_alt("www.example.net").await.unwrap(),
        vec![ip("198.51.100.2")],
        "a failed publish changed nothing"
    );
}

/// A config written before several primaries existed (`server = "..."`) still loads,
/// and writes back the same way.
#[test]
fn a_single_server_still_loads() {
    let t: TargetConfig = toml::from_str(&format!(
        "name = \"web\"\nfqdn = \"www.example.net.\"\nzone = \"example.net.\"\naddresses = [\"192.0.2.10\"]\ngateways = [\"gw1\"]\n[dns]\nserver = \"192.0.2.53:53\"\nkey = \"hmac-sha256:coordinator:{SECRET}\"\n"
    ))
    .unwrap();
    assert_eq!(
        t.dns.server,
        DnsServers(vec!["192.0.2.53:53".parse().unwrap()])
    );
    let text = toml::to_string(&t).unwrap();
    assert!(text.contains("server = \"192.0.2.53:53\""), "{text}");
    let e = toml::from_str::<TargetConfig>(
        "name = \"web\"\nfqdn = \"www.example.net.\"\nzone = \"example.net.\"\naddresses = [\"192.0.2.10\"]\ngateways = [\"gw1\"]\n[dns]\nservers = []\nkey = \"k\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty"), "{e}");
}
