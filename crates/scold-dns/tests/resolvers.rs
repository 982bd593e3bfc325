//! Resolvers in front of `scold dns`: `scold resolver` (cache, TTLs, signed NOTIFY
//! from a proxy) and an unmodified Unbound carrying ALT as an unknown type.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::*;
use scold_dns::{send_notify, TsigKey, Updater};
use scold_testkit::{free_port, require_tool, scold_bin, Proc};

const PROXY_SECRET: &str = "cHJveHkxLXNlY3JldC1mb3ItdGVzdHMtMDEyMzQ1Njc=";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn start_resolver(dir: &std::path::Path, upstream: SocketAddr) -> (Proc, SocketAddr) {
    let port = free_port();
    let cfg = dir.join("resolver.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nupstream = [\"{upstream}\"]\nupstream_timeout_ms = 1000\n[[notify_key]]\nname = \"proxy1\"\nsecret = \"{PROXY_SECRET}\"\n"
        ),
    )
    .unwrap();
    let mut p = Proc::spawn(
        "scold resolver",
        Command::new(scold_bin())
            .args(["resolver", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info"),
        &dir.join("resolver.log"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_answering(addr, "example.com", &mut p);
    (p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_caches_alt_and_drops_it_on_signed_notify_only() {
    let s = DnsSetup::new(0, "");
    let _dns = s.start("r");
    let (mut res, raddr) = start_resolver(s.dir.path(), s.addr());
    let coord = Updater::new(
        s.addr(),
        format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap(),
    );
    let via_resolver = Updater::new(
        raddr,
        format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap(),
    );

    coord
        .set_alt("example.com", "www.example.com", &[ip("198.51.100.1")], 300)
        .await
        .unwrap();
    assert_eq!(
        via_resolver.query_alt("www.example.com").await.unwrap(),
        vec![ip("198.51.100.1")]
    );
    // dig through the resolver sees the RFC 3597 form too.
    assert_eq!(
        dig_short(raddr.port(), "www.example.com", "TYPE65280", &[]),
        vec!["\\# 4 C6336401"]
    );

    // The authoritative data changes; the resolver still serves its cached copy.
    coord
        .set_alt("example.com", "www.example.com", &[ip("198.51.100.2")], 300)
        .await
        .unwrap();
    assert_eq!(
        via_resolver.query_alt("www.example.com").await.unwrap(),
        vec![ip("198.51.100.1")]
    );

    // Unsigned NOTIFY and NOTIFY signed with a wrong or unknown key change nothing.
    let unsigned = {
        let mut m = hickory_proto::op::Message::new(
            99,
            hickory_proto::op::MessageType::Query,
            hickory_proto::op::OpCode::Notify,
        );
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("www.example.com.").unwrap(),
            hickory_proto::rr::RecordType::SOA,
        ));
        m.to_vec().unwrap()
    };
    let r = udp_ask(raddr, &unsigned, Duration::from_secs(2)).expect("an answer");
    assert_ne!(r[3] & 0xF, 0, "unsigned NOTIFY is not accepted");
    let wrong: TsigKey = format!("hmac-sha256:proxy1:{WRONG_SECRET}")
        .parse()
        .unwrap();
    assert!(send_notify(raddr, &wrong, "www.example.com").await.is_err());
    let unknown: TsigKey = format!("hmac-sha256:proxy9:{PROXY_SECRET}")
        .parse()
        .unwrap();
    assert!(send_notify(raddr, &unknown, "www.example.com")
        .await
        .is_err());
    assert_eq!(
        via_resolver.query_alt("www.example.com").await.unwrap(),
        vec![ip("198.51.100.1")]
    );
    let log = res.log_text();
    assert!(log.contains("unsigned NOTIFY ignored"), "{log}");
    assert!(log.contains("NOTIFY ignored"), "{log}");

    // The proxy's signed NOTIFY drops the name at once.
    let proxy: TsigKey = format!("hmac-sha256:proxy1:{PROXY_SECRET}")
        .parse()
        .unwrap();
    send_notify(raddr, &proxy, "www.example.com")
        .await
        .expect("signed NOTIFY accepted");
    assert_eq!(
        via_resolver.query_alt("www.example.com").await.unwrap(),
        vec![ip("198.51.100.2")]
    );

    // TTLs: a 1-second ALT set expires by itself.
    coord
        .set_alt("example.com", "short.example.com", &[ip("198.51.100.3")], 1)
        .await
        .unwrap();
    assert_eq!(
        via_resolver.query_alt("short.example.com").await.unwrap(),
        vec![ip("198.51.100.3")]
    );
    coord
        .set_alt("example.com", "short.example.com", &[ip("198.51.100.4")], 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        via_resolver.query_alt("short.example.com").await.unwrap(),
        vec![ip("198.51.100.4")]
    );
    // Cached TTLs count down.
    let recs = via_resolver.query("www.example.com", 65280).await.unwrap();
    assert!(recs[0].ttl <= 300);
    assert!(res.alive());
    let st = res.terminate().unwrap();
    assert!(st.success(), "SIGTERM stops scold resolver cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_unbound_in_front_of_scold_dns_returns_alt() {
    let unbound = require_tool("unbound", "unbound");
    let s = DnsSetup::new(0, "");
    let _dns = s.start("ub");
    let coord = Updater::new(
        s.addr(),
        format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap(),
    );
    coord
        .set_alt(
            "example.com",
            "www.example.com",
            &[ip("198.51.100.1"), ip("2001:db8::5")],
            60,
        )
        .await
        .unwrap();
    let d = s.dir.path();
    let port = free_port();
    let conf = d.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    domain-insecure: "example.com"
stub-zone:
    name: "example.com"
    stub-addr: 127.0.0.1@{dns}
"#,
            dir = d.display(),
            dns = s.port
        ),
    )
    .unwrap();
    let mut p = Proc::spawn(
        "unbound",
        Command::new(unbound).args(["-d", "-c"]).arg(&conf),
        &d.join("unbound.log"),
    );
    let uaddr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_answering(uaddr, "example.com", &mut p);
    assert_eq!(
        dig_short(port, "www.example.com", "TYPE65280", &[]),
        vec!["\\# 16 20010DB8000000000000000000000005", "\\# 4 C6336401"]
    );
    // Our own codec reads what Unbound relays.
    let u = Updater::new(
        uaddr,
        format!("hmac-sha256:coordinator:{SECRET}").parse().unwrap(),
    );
    let mut got = u.query_alt("www.example.com").await.unwrap();
    got.sort();
    assert_eq!(got, vec![ip("198.51.100.1"), ip("2001:db8::5")]);
}
