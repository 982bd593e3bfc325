//! Fixtures shared by the DNS targets: a zone with every kind of answer the query path
//! gives (data, ALT, CNAME chains and loops, a delegation with glue, empty
//! non-terminals), the server state built from it, and the TSIG key it knows.
#![allow(dead_code)]

use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use scold_dns::config::{DnsConfig, Secondary};
use scold_dns::rrl::RrlConfig;
use scold_dns::server::Shared;
use scold_dns::update::{Grant, NamePattern, Policy};
use scold_dns::zone::{Catalog, Zone, ZoneData};
use scold_dns::{TsigAlgorithm, TsigKey};
use std::sync::{Arc, OnceLock};

pub const ALT: u16 = 65280;
pub const ORIGIN: &str = "example.com.";

pub const ZONE: &str = "$TTL 300
@ SOA ns1 hostmaster 7 3600 900 604800 60
@ NS ns1
ns1 A 192.0.2.53
www 60 A 192.0.2.10
www 60 AAAA 2001:db8::10
www 60 ALT 203.55.57.102
www 60 TYPE65280 \\# 16 20010db8000000000000000000000099
alias CNAME www
alias2 CNAME alias
out CNAME www.example.net.
loop1 CNAME loop2
loop2 CNAME loop1
sub NS ns.sub
ns.sub A 192.0.2.77
x.y.z A 1.2.3.4
txt TXT \"v=spf1 -all\" \"second string\"
mx MX 10 mail
mail A 192.0.2.25
dyn ALT 10.0.0.1
";

pub fn origin() -> Name {
    Name::from_ascii(ORIGIN).expect("valid origin")
}

/// A fresh copy of the fixture zone (parsed once per process).
pub fn zone_data() -> ZoneData {
    static ZONE_DATA: OnceLock<ZoneData> = OnceLock::new();
    ZONE_DATA
        .get_or_init(|| {
            scold_dns::zonefile::parse(ZONE, "fuzz", &origin(), ALT).expect("fixture zone parses")
        })
        .clone()
}

pub fn catalog() -> &'static Catalog {
    static CAT: OnceLock<Catalog> = OnceLock::new();
    CAT.get_or_init(|| Catalog {
        zones: vec![Arc::new(Zone::new(zone_data()))],
    })
}

pub fn key() -> TsigKey {
    TsigKey::new(
        "fuzz-key.",
        TsigAlgorithm::HmacSha256,
        "c2NvbGQtZnV6ei1zZWNyZXQtb2YtdGhpcnR5LXR3bw==",
    )
    .expect("fixture key")
}

/// What the key may change in `update::apply` runs: ALT and A below the zone, and
/// anything at `dyn`.
pub fn policy() -> Policy {
    Policy {
        grants: vec![
            Grant {
                names: vec![NamePattern::parse("*.example.com").expect("pattern")],
                types: Some([ALT, 1].into_iter().collect()),
            },
            Grant {
                names: vec![NamePattern::parse("dyn.example.com").expect("pattern")],
                types: None,
            },
        ],
    }
}

/// The server's state for the fixture zone. The key is known (so signatures are
/// checked and responses signed) but may change nothing, so no run writes the journal
/// and every run sees the same zone. The files are removed once loaded; the journal
/// stays open through its descriptor.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("scold-fuzz-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let zone_file = dir.join("example.com.zone");
        std::fs::write(&zone_file, ZONE).expect("zone file");
        let cfg = DnsConfig {
            listen: vec!["127.0.0.1:53".parse().expect("address")],
            alt_type: ALT,
            journal: dir.join("journal"),
            udp_workers: 1,
            tcp_max_connections: 1,
            tcp_idle_timeout_secs: 1,
            zones: vec![(ORIGIN.to_string(), zone_file)],
            keys: vec![(key(), Policy::default())],
            // The key is a secondary's too: signed AXFR and IXFR reach the transfer path.
            secondaries: vec![Secondary {
                name: "fuzz".into(),
                address: "127.0.0.1:9".parse().expect("address"),
                key: 0,
                zones: Vec::new(),
                allow_from: Vec::new(),
                notify: false,
            }],
            rrl: RrlConfig::default(),
            metrics: None,
        };
        let s = Shared::load(&cfg).expect("server state loads");
        let _ = std::fs::remove_dir_all(&dir);
        s
    })
}

/// Checks what every response the server sends must satisfy, and returns it parsed.
pub fn check_response(req: &[u8], resp: &[u8]) -> Message {
    assert!(resp.len() >= 12, "response of {} bytes", resp.len());
    assert_eq!(
        &resp[0..2],
        &req[0..2],
        "response id differs from the request's"
    );
    assert!(resp[2] & 0x80 != 0, "response without QR");
    Message::from_vec(resp).unwrap_or_else(|e| {
        panic!("response does not parse: {e}\nrequest  {req:02x?}\nresponse {resp:02x?}")
    })
}
