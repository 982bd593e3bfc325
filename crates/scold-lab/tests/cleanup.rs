//! Clean-up after failures. Its own test binary: it compares the host's namespace list
//! before and after, which tests building testbeds in parallel would disturb.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use scold_lab::topology::{Spec, Topology, NETNS_DIR};

fn two_hosts_via_router() -> Spec {
    let mut s = Spec::new();
    s.host("a").router("r").host("b");
    s.link(
        "ar",
        ("a", "eth0", "198.18.10.2/24"),
        ("r", "to-a", "198.18.10.1/24"),
    )
    .unwrap();
    s.link(
        "rb",
        ("r", "to-b", "198.18.11.1/24"),
        ("b", "eth0", "198.18.11.2/24"),
    )
    .unwrap();
    s.route("a", None, Ipv4Addr::new(198, 18, 10, 1));
    s.route("b", None, Ipv4Addr::new(198, 18, 11, 1));
    s
}

#[test]
fn failed_build_removes_partial_state() {
    let mut s = two_hosts_via_router();
    // Valid on paper, refused by the kernel: a second default route, which `ip route
    // add` refuses after the namespaces and links exist.
    s.route("a", None, Ipv4Addr::new(198, 18, 10, 1));
    let before: BTreeSet<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let err = match Topology::build(s) {
        Ok(_) => panic!("a duplicate default route must fail"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("route"), "{err}");
    let after: BTreeSet<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("scoldlab-{}-", std::process::id())))
                .collect()
        })
        .unwrap_or_default();
    let leaked: Vec<_> = after.difference(&before).collect();
    assert!(leaked.is_empty(), "partial build left {leaked:?}");
}
