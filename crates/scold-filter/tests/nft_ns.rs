//! The nftables back end in a network namespace: the table is created
//! idempotently, blocked sources appear in the kernel set, their traffic is
//! dropped before it reaches a socket, elements expire by their timeout, and
//! the table is removed cleanly. Needs root and the `nftables` package.

mod common;

use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use common::{delivered, Link, PEER_IP, TARGET_IP};
use scold_filter::firewall::{Filter, FilterConfig, FilterEvent, SourceLimits};
use scold_filter::nft::{NftBlocklist, NftConfig};
use scold_filter::sample::in_netns;
use scold_testkit::require_tool;

fn blocklist(link: &Link) -> NftBlocklist {
    require_tool("nft", "nftables");
    NftBlocklist::ensure(NftConfig {
        netns: Some(link.target()),
        ..NftConfig::default()
    })
    .expect("create table inet scold in the namespace")
}

fn rule_counter(link: &Link) -> u64 {
    let out = link.in_target("nft list chain inet scold prerouting");
    out.lines()
        .find(|l| l.contains("@blocked4"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{out}"))
}

#[test]
fn table_is_idempotent_and_removed_cleanly() {
    let link = Link::new("nfta");
    let bl = blocklist(&link);
    bl.block(PEER_IP.into(), 32, Duration::from_secs(60))
        .unwrap();
    // A second ensure (daemon restart) keeps the elements and does not duplicate rules.
    let bl = NftBlocklist::ensure(bl.config().clone()).unwrap();
    let chain = link.in_target("nft list chain inet scold prerouting");
    assert_eq!(chain.matches(" drop").count(), 2, "{chain}");
    assert_eq!(bl.list().unwrap().len(), 1);
    bl.remove().unwrap();
    let tables = link.in_target("nft list tables");
    assert!(!tables.contains("scold"), "{tables}");
    // Removing twice is not an error.
    NftBlocklist::ensure(NftConfig {
        netns: Some(link.target()),
        ..NftConfig::default()
    })
    .unwrap()
    .remove()
    .unwrap();
}

#[test]
fn blocked_source_is_dropped_in_the_kernel_until_unblocked() {
    let link = Link::new("nftb");
    let bl = blocklist(&link);
    assert_eq!(delivered(&link, 5001, 20), 20, "open path before any block");
    bl.block(PEER_IP.into(), 32, Duration::from_secs(60))
        .unwrap();
    let shown = link.in_target("nft list set inet scold blocked4");
    assert!(shown.contains("10.99.0.2"), "{shown}");
    assert_eq!(
        delivered(&link, 5002, 20),
        0,
        "blocked source reaches no socket"
    );
    assert!(rule_counter(&link) >= 20);
    assert!(bl.drop_counters().unwrap().0 >= 20);
    bl.unblock(PEER_IP.into(), 32).unwrap();
    assert!(bl.list().unwrap().is_empty());
    assert_eq!(
        delivered(&link, 5003, 20),
        20,
        "traffic flows after unblock"
    );
    // Unblocking what is not blocked is fine.
    bl.unblock(PEER_IP.into(), 32).unwrap();
    bl.remove().unwrap();
}

#[test]
fn elements_expire_by_their_timeout() {
    let link = Link::new("nftc");
    let bl = blocklist(&link);
    let v6: IpAddr = "2001:db8:0:1::5".parse().unwrap();
    // A long block shortened by a re-block: the new duration wins.
    bl.block(PEER_IP.into(), 32, Duration::from_secs(600))
        .unwrap();
    bl.block_many(&[
        (PEER_IP.into(), 32, Duration::from_secs(2)),
        (v6, 64, Duration::from_secs(2)),
    ])
    .unwrap();
    let entries = bl.list().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries
        .iter()
        .any(|e| e.addr == IpAddr::from(PEER_IP) && e.prefix_len == 32));
    assert!(entries
        .iter()
        .any(|e| e.addr == "2001:db8:0:1::".parse::<IpAddr>().unwrap() && e.prefix_len == 64));
    assert!(entries
        .iter()
        .all(|e| e.expires.is_some_and(|x| x <= Duration::from_secs(2))));
    let six = link.in_target("nft list set inet scold blocked6");
    assert!(six.contains("2001:db8:0:1::/64"), "{six}");
    assert_eq!(delivered(&link, 5004, 10), 0);
    std::thread::sleep(Duration::from_millis(3_000));
    assert!(bl.list().unwrap().is_empty(), "expired elements are gone");
    assert_eq!(delivered(&link, 5005, 10), 10, "traffic flows after expiry");
    bl.remove().unwrap();
}

#[test]
fn filter_events_are_mirrored_into_the_set() {
    let link = Link::new("nftd");
    let bl = blocklist(&link);
    let mut f = Filter::new(FilterConfig {
        limits: SourceLimits {
            udp_pps: 100.0,
            ..SourceLimits::default()
        },
        block_after_drops: 10,
        block_for: Duration::from_secs(30),
        new_source_pps: None,
        ..FilterConfig::default()
    });
    let b = etherparse::PacketBuilder::ipv4(PEER_IP.octets(), TARGET_IP.octets(), 64).udp(1, 2);
    let mut pkt = Vec::new();
    b.write(&mut pkt, &[0u8; 32]).unwrap();
    let t0 = Duration::from_secs(1);
    for i in 0..500u64 {
        f.check(t0 + Duration::from_micros(i * 100), &pkt);
    }
    let events: Vec<FilterEvent> = f.drain_events().collect();
    assert!(
        matches!(events.as_slice(), [FilterEvent::Blocked { .. }]),
        "{events:?}"
    );
    bl.apply_events(&events).unwrap();
    let entries = bl.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].addr, IpAddr::from(PEER_IP));
    assert!(entries[0]
        .expires
        .is_some_and(|e| e > Duration::from_secs(20)));
    assert_eq!(delivered(&link, 5006, 10), 0);
    // The filter's expiry lifts the kernel block too.
    f.expire(t0 + Duration::from_secs(31));
    let events: Vec<FilterEvent> = f.drain_events().collect();
    assert!(
        matches!(events.as_slice(), [FilterEvent::Expired { .. }]),
        "{events:?}"
    );
    bl.apply_events(&events).unwrap();
    assert!(bl.list().unwrap().is_empty());
    bl.remove().unwrap();
}

/// The admission port's counter counts TCP to its port on its interface, and nothing
/// else: not UDP to the same port, not TCP to another port. It is removed cleanly.
#[test]
fn the_port_counter_counts_tcp_to_its_port_only() {
    use scold_filter::nft::{Nft, NftPortCounter};
    use std::net::{TcpListener, TcpStream};
    require_tool("nft", "nftables");
    let link = Link::new("pc");
    let counter = NftPortCounter::ensure(
        Nft::new("nft", Some(link.target())),
        "scold_admission_test",
        &link.target_if(),
        5443,
    )
    .expect("create the counter table in the namespace");
    assert_eq!(counter.read().unwrap(), (0, 0));
    let listener = in_netns(&link.target(), || {
        TcpListener::bind(SocketAddrV4::new(TARGET_IP, 5443)).expect("bind in target")
    })
    .unwrap();
    // Five connections, each opened and closed from the peer.
    for _ in 0..5 {
        let c = in_netns(&link.peer(), || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(TARGET_IP, 5443).into(),
                Duration::from_secs(2),
            )
        })
        .unwrap()
        .expect("connect");
        let (s, _) = listener.accept().expect("accept");
        drop(c);
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (packets, bytes) = counter.read().unwrap();
    // At least the SYN, the ACK and the FIN of each connection, and no more than a
    // handful each.
    assert!((15..=40).contains(&packets), "{packets} packets");
    assert!(bytes >= packets * 40, "{bytes} bytes for {packets} packets");
    // UDP to the same port and TCP to another are not counted.
    let _ = delivered(&link, 5443, 20);
    let _ = in_netns(&link.peer(), || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(TARGET_IP, 5444).into(),
            Duration::from_secs(1),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.read().unwrap().0, packets);
    counter.remove().expect("remove the table");
    let tables = link.in_target("nft list tables");
    assert!(!tables.contains("scold_admission_test"), "{tables}");
}
