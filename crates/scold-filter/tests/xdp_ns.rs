//! The XDP block list in a network namespace: the program passes the verifier and
//! attaches to a veth in generic mode, a blocked IPv4 source's packets never reach a
//! socket while others' do, drops are counted in packets and bytes, blocks lapse at their
//! expiry and are swept, a flood from a blocked source is dropped whole, and dropping the
//! handle detaches the program. Needs root and a kernel with BPF links.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{delivered, udp_flood, Link, PEER_IP, TARGET_IP};
use scold_filter::firewall::{FilterEvent, FloodKind};
use scold_filter::sample::in_netns;
use scold_filter::xdp::{XdpBlocklist, XdpMode};

fn attach(link: &Link) -> XdpBlocklist {
    let dev = link.target_if();
    in_netns(&link.target(), move || {
        XdpBlocklist::attach(&dev, XdpMode::Generic, 1024)
    })
    .expect("enter the target's namespace")
    .expect("load and attach the XDP program")
}

fn link_shows_xdp(link: &Link) -> bool {
    link.in_target(&format!("ip -d link show dev {}", link.target_if()))
        .contains("xdpgeneric")
}

#[test]
fn a_blocked_source_is_dropped_before_any_socket_and_counted() {
    let link = Link::new("xdpa");
    let xdp = attach(&link);
    assert!(link_shows_xdp(&link), "program not on the interface");
    assert_eq!(delivered(&link, 6001, 20), 20, "open path before any block");

    // A block on another address leaves the peer alone.
    xdp.block(Ipv4Addr::new(10, 99, 0, 77).into(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(delivered(&link, 6002, 20), 20);
    assert_eq!(xdp.drops().unwrap().packets, 0);

    xdp.block(PEER_IP.into(), Duration::from_secs(60)).unwrap();
    assert_eq!(delivered(&link, 6003, 20), 0, "blocked source got through");
    let d = xdp.drops().unwrap();
    assert!(d.packets >= 20, "{d:?}");
    // Each frame: Ethernet 14 + IPv4 20 + UDP 8 + "hello".
    assert!(d.bytes >= d.packets * 47, "{d:?}");
    let listed: Vec<Ipv4Addr> = xdp.list().unwrap().into_iter().map(|(a, _)| a).collect();
    assert!(listed.contains(&PEER_IP) && listed.len() == 2, "{listed:?}");

    // IPv6 blocks are nftables' job.
    assert!(!xdp
        .block("fd00::1".parse().unwrap(), Duration::from_secs(5))
        .unwrap());

    xdp.unblock(PEER_IP.into()).unwrap();
    assert_eq!(
        delivered(&link, 6004, 20),
        20,
        "unblocked source still dropped"
    );

    drop(xdp);
    assert!(!link_shows_xdp(&link), "program left on the interface");
}

#[test]
fn blocks_lapse_at_their_expiry_and_are_swept() {
    let link = Link::new("xdpb");
    let xdp = attach(&link);
    let events = [FilterEvent::Blocked {
        src: IpAddr::V4(PEER_IP),
        prefix_len: 32,
        reason: FloodKind::UdpFlood,
        duration: Duration::from_millis(800),
        until: Duration::from_millis(800),
        dropped_packets: 0,
    }];
    xdp.apply_events(&events).unwrap();
    assert_eq!(delivered(&link, 6101, 10), 0);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(delivered(&link, 6102, 10), 10, "traffic flows after expiry");
    assert_eq!(
        xdp.list().unwrap(),
        vec![],
        "an expired block is not listed"
    );
    assert_eq!(xdp.sweep().unwrap(), 1);
    assert_eq!(xdp.sweep().unwrap(), 0);
}

#[test]
fn a_flood_from_a_blocked_source_is_dropped_whole() {
    let link = Link::new("xdpc");
    let xdp = attach(&link);
    xdp.block(PEER_IP.into(), Duration::from_secs(60)).unwrap();
    let before = link.in_target("nstat -az UdpInDatagrams UdpNoPorts");
    let flood = udp_flood(&link.peer(), TARGET_IP, 200_000, Duration::from_secs(2));
    let d = xdp.drops().unwrap();
    assert!(flood.sent > 10_000, "the flood sent only {}", flood.sent);
    // Every datagram the peer sent was dropped at the interface (the veth delivers all).
    assert_eq!(d.packets, flood.sent, "{d:?} of {}", flood.sent);
    let after = link.in_target("nstat -az UdpInDatagrams UdpNoPorts");
    assert_eq!(
        udp_counts(&before),
        udp_counts(&after),
        "the stack saw the flood"
    );
}

fn udp_counts(nstat: &str) -> Vec<u64> {
    nstat
        .lines()
        .filter(|l| l.starts_with("Udp"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}
