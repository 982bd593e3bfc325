//! The paper's Figure 8 testbed as a ready-made topology.
//!
//! ```text
//!   client1..M   attacker1..K   proxy1..N   clientdns   targetdns   coordinator
//!        \            |             |           |           |           /
//!         +-----------+------- inet (the "internet" router) ----------+
//!                                 |                       |
//!                   main link: wire (tbf bottleneck)  alternate link
//!                                 |                       |
//!                              maingw                   altgw  (hidden)
//!                                 |                       |
//!                                 +------- target --------+
//! ```
//!
//! The main link runs through a `wire` router that holds the bottleneck. By default it
//! is one shared medium for both directions, like a half-duplex link or a hub: the wire
//! sends every packet, either way, through one veth pair whose egress carries the
//! token-bucket filter, so an inbound flood also starves the target's outbound replies.
//! With [`Duplex::Full`] each direction has its own filter instead, and a flood only
//! delays what enters the site (ACKs, requests), which TCP downloads shrug off.
//!
//! Address plan, all inside 198.18.0.0/15 (see [`crate::net::LAB_RANGE`]):
//! each leaf on the internet router has its own /24 (router `.1`, leaf `.2`);
//! the target site is 198.19.0.0/16: main-gateway segment 198.19.1.0/24 (the target's
//! public address 198.19.1.2) and alternate-gateway segment 198.19.2.0/24, which the
//! internet router has no route to (the alternate gateway's inside is hidden; only its
//! uplink address, where proxies send tunnels, is reachable).
//!
//! With more than one coordinator ([`Fig8Options::coordinators`]) the control plane is
//! replicated, each part a leaf of its own off the bottleneck: `coordinator` and
//! `coordinator2..N` (198.18.3.2, then 198.18.4.2 ...), the three etcd members `etcd1..3`
//! (198.18.11.2 to 198.18.13.2) the replicas share their state in, and TargetDNS's
//! secondary `targetdns2` (198.18.10.2), which ClientDNS asks while `targetdns` becomes
//! the hidden primary that only the coordinator updates and the secondary transfers from.

use std::net::Ipv4Addr;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::net::Ipv4Net;
use crate::topology::{Spec, Tbf, Topology};

/// The internet router in the middle.
pub const INTERNET: &str = "inet";
/// The target site's main gateway (the bottleneck link is its uplink).
pub const MAIN_GW: &str = "maingw";
/// The target site's hidden alternate gateway.
pub const ALT_GW: &str = "altgw";
/// The attacked site.
pub const TARGET: &str = "target";
/// The client site's resolver.
pub const CLIENT_DNS: &str = "clientdns";
/// The target's authoritative DNS server.
pub const TARGET_DNS: &str = "targetdns";
/// The coordinator.
pub const COORDINATOR: &str = "coordinator";
/// TargetDNS's secondary (replicated control plane): the server ClientDNS asks; it
/// follows the hidden primary `targetdns` by NOTIFY and IXFR.
pub const DNS_SECONDARY: &str = "targetdns2";
/// Members of the etcd cluster coordinator replicas share (replicated control plane).
pub const ETCD_MEMBERS: usize = 3;
/// Most coordinator replicas the address plan holds.
pub const MAX_COORDINATORS: usize = 7;
/// The router in the middle of the main link that holds the bottleneck.
pub const WIRE: &str = "wire";
/// The name of the main link's internet side (internet router -- wire).
pub const MAIN_LINK: &str = "main";
/// The interface of the wire that carries the shared bottleneck (half duplex).
pub const SHARED_IF: &str = "hx";
/// The name of the alternate link (internet router -- alternate gateway).
pub const ALT_LINK: &str = "alt";

/// Interface name of every leaf's single uplink.
pub const LEAF_IF: &str = "eth0";
/// Gateways' uplink interface towards the internet router.
pub const GW_UP_IF: &str = "wan";
/// Gateways' interface towards the target.
pub const GW_SITE_IF: &str = "lan";
/// The target's interface to the main gateway (carries its public address).
pub const TARGET_MAIN_IF: &str = "main";
/// The target's interface to the alternate gateway.
pub const TARGET_ALT_IF: &str = "alt";

/// Most proxies, clients and attackers the address plan holds.
pub const MAX_PROXIES: usize = 64;
pub const MAX_CLIENTS: usize = 32;
pub const MAX_ATTACKERS: usize = 32;

const PROXY_BASE: usize = 16;
const CLIENT_BASE: usize = 80;
const ATTACKER_BASE: usize = 112;

/// The n-th proxy's node name (1-based).
pub fn proxy(n: usize) -> String {
    format!("proxy{n}")
}
/// The n-th client's node name (1-based).
pub fn client(n: usize) -> String {
    format!("client{n}")
}
/// The n-th coordinator replica's node name (1-based): the first is [`COORDINATOR`].
pub fn coordinator(n: usize) -> String {
    if n <= 1 {
        COORDINATOR.to_string()
    } else {
        format!("{COORDINATOR}{n}")
    }
}
/// The n-th etcd member's node name (1-based).
pub fn etcd(n: usize) -> String {
    format!("etcd{n}")
}
/// The n-th attacker's node name (1-based).
pub fn attacker(n: usize) -> String {
    format!("attacker{n}")
}

/// How big a Figure 8 testbed to build.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fig8Options {
    pub proxies: usize,
    pub clients: usize,
    pub attackers: usize,
    /// The main link's token-bucket filter.
    pub bottleneck: Tbf,
    /// Whether both directions of the main link share the bottleneck.
    #[serde(default)]
    pub duplex: Duplex,
    /// The alternate link's token-bucket filter, each direction on its own (`None`:
    /// unshaped). The site's second uplink has a capacity too: shaped like the main
    /// link, indirect and direct downloads compare like for like, as in the paper.
    #[serde(default)]
    pub alt_link: Option<Tbf>,
    /// Coordinator replicas. One: the coordinator alone with its own state file. More:
    /// replicas sharing an etcd cluster of [`ETCD_MEMBERS`] members, and TargetDNS as a
    /// hidden primary with a secondary that ClientDNS asks (see the module doc).
    #[serde(default = "one")]
    pub coordinators: usize,
}

fn one() -> usize {
    1
}

/// How the main link's bottleneck treats the two directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Duplex {
    /// One shared capacity for both directions (a half-duplex link or a hub).
    #[default]
    Half,
    /// Each direction has the full rate.
    Full,
}

impl Default for Fig8Options {
    fn default() -> Self {
        Fig8Options {
            proxies: 2,
            clients: 1,
            attackers: 1,
            bottleneck: Tbf::default(),
            duplex: Duplex::default(),
            alt_link: Some(Tbf::default()),
            coordinators: 1,
        }
    }
}

impl Fig8Options {
    /// Whether the control plane is replicated (more than one coordinator).
    pub fn replicated(&self) -> bool {
        self.coordinators > 1
    }
}

fn leaf_subnet(third: usize) -> (String, String) {
    (
        format!("198.18.{third}.1/24"),
        format!("198.18.{third}.2/24"),
    )
}

/// The third octet of a leaf's /24 on the internet router, by node name.
fn leaf_octet(node: &str) -> Option<usize> {
    let num = |p: &str| node.strip_prefix(p).and_then(|n| n.parse::<usize>().ok());
    match node {
        CLIENT_DNS => Some(1),
        TARGET_DNS => Some(2),
        COORDINATOR => Some(3),
        DNS_SECONDARY => Some(10),
        _ => num("coordinator")
            .filter(|&n| (2..=MAX_COORDINATORS).contains(&n))
            .map(|n| n + 2)
            .or_else(|| {
                num("etcd")
                    .filter(|&n| (1..=ETCD_MEMBERS).contains(&n))
                    .map(|n| n + 10)
            })
            .or_else(|| {
                num("proxy")
                    .filter(|&n| (1..=MAX_PROXIES).contains(&n))
                    .map(|n| PROXY_BASE + n - 1)
                    .or_else(|| {
                        num("client")
                            .filter(|&n| (1..=MAX_CLIENTS).contains(&n))
                            .map(|n| CLIENT_BASE + n - 1)
                    })
                    .or_else(|| {
                        num("attacker")
                            .filter(|&n| (1..=MAX_ATTACKERS).contains(&n))
                            .map(|n| ATTACKER_BASE + n - 1)
                    })
            }),
    }
}

/// The address of a Figure 8 node as other nodes reach it: a leaf's uplink address, a
/// gateway's uplink address, or the target's public (main-link) address.
pub fn address_of(node: &str) -> Option<Ipv4Addr> {
    match node {
        TARGET => Some(Ipv4Addr::new(198, 19, 1, 2)),
        MAIN_GW => Some(Ipv4Addr::new(198, 18, 202, 2)),
        WIRE => Some(Ipv4Addr::new(198, 18, 200, 2)),
        ALT_GW => Some(Ipv4Addr::new(198, 18, 201, 2)),
        INTERNET => Some(Ipv4Addr::new(198, 18, 200, 1)),
        _ => leaf_octet(node).map(|o| Ipv4Addr::new(198, 18, o as u8, 2)),
    }
}

/// The target's public address (behind the bottleneck).
pub const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
/// The target's address on the alternate gateway's segment.
pub const TARGET_ALT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 2);
/// The alternate gateway's address on the target's segment.
pub const ALT_GW_SITE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);

/// The Figure 8 spec for `opts`.
pub fn spec(opts: &Fig8Options) -> Result<Spec, LabError> {
    let check = |what: &str, n: usize, lo: usize, max: usize| {
        if n < lo || n > max {
            Err(LabError::BadSpec(format!(
                "{what}: {n} requested, the Figure 8 address plan holds {lo} to {max}"
            )))
        } else {
            Ok(())
        }
    };
    check("proxies", opts.proxies, 0, MAX_PROXIES)?;
    check("clients", opts.clients, 1, MAX_CLIENTS)?;
    check("attackers", opts.attackers, 0, MAX_ATTACKERS)?;
    check("coordinators", opts.coordinators, 1, MAX_COORDINATORS)?;

    let mut s = Spec::new();
    s.router(INTERNET)
        .router(WIRE)
        .router(MAIN_GW)
        .router(ALT_GW)
        .host(TARGET);
    let mut leaves: Vec<(String, bool)> = vec![
        (CLIENT_DNS.into(), false),
        (TARGET_DNS.into(), false),
        (COORDINATOR.into(), false),
    ];
    if opts.replicated() {
        leaves.extend((2..=opts.coordinators).map(|i| (coordinator(i), false)));
        leaves.extend((1..=ETCD_MEMBERS).map(|i| (etcd(i), false)));
        leaves.push((DNS_SECONDARY.into(), false));
    }
    // Proxies relay between tunnels, so they forward like routers.
    leaves.extend((1..=opts.proxies).map(|i| (proxy(i), true)));
    leaves.extend((1..=opts.clients).map(|i| (client(i), false)));
    leaves.extend((1..=opts.attackers).map(|i| (attacker(i), false)));
    for (name, forwards) in &leaves {
        if *forwards {
            s.router(name);
        } else {
            s.host(name);
        }
        let octet = leaf_octet(name).expect("leaf names come from the plan");
        let (r, l) = leaf_subnet(octet);
        s.link(
            &format!("to-{name}"),
            (INTERNET, &format!("to-{name}"), &r),
            (name, LEAF_IF, &l),
        )?;
        s.route(name, None, Ipv4Addr::new(198, 18, octet as u8, 1));
    }
    s.link(
        MAIN_LINK,
        (INTERNET, "to-maingw", "198.18.200.1/24"),
        (WIRE, "inet", "198.18.200.2/24"),
    )?;
    s.link(
        "main-gw",
        (WIRE, "gw", "198.18.202.1/24"),
        (MAIN_GW, GW_UP_IF, "198.18.202.2/24"),
    )?;
    s.link(
        ALT_LINK,
        (INTERNET, "to-altgw", "198.18.201.1/24"),
        (ALT_GW, GW_UP_IF, "198.18.201.2/24"),
    )?;
    s.link(
        "site-main",
        (MAIN_GW, GW_SITE_IF, "198.19.1.1/24"),
        (TARGET, TARGET_MAIN_IF, "198.19.1.2/24"),
    )?;
    s.link(
        "site-alt",
        (ALT_GW, GW_SITE_IF, "198.19.2.1/24"),
        (TARGET, TARGET_ALT_IF, "198.19.2.2/24"),
    )?;
    let site: Ipv4Net = "198.19.1.0/24".parse()?;
    s.route(INTERNET, Some(site), Ipv4Addr::new(198, 18, 200, 2));
    s.route(WIRE, Some(site), Ipv4Addr::new(198, 18, 202, 2));
    s.route(WIRE, None, Ipv4Addr::new(198, 18, 200, 1));
    s.route(MAIN_GW, None, Ipv4Addr::new(198, 18, 202, 1));
    s.route(ALT_GW, None, Ipv4Addr::new(198, 18, 201, 1));
    // The alternate gateway reaches the target's public address across the site LAN:
    // that is where the packets it takes out of proxy tunnels are going.
    s.route(
        ALT_GW,
        Some(Ipv4Net::new(TARGET_ADDR, 32)?),
        TARGET_ALT_ADDR,
    );
    if let Some(tbf) = opts.alt_link {
        s.shaper(INTERNET, "to-altgw", tbf);
        s.shaper(ALT_GW, GW_UP_IF, tbf);
    }
    s.route(TARGET, None, Ipv4Addr::new(198, 19, 1, 1));
    match opts.duplex {
        Duplex::Full => {
            s.shaper(WIRE, "gw", opts.bottleneck);
            s.shaper(WIRE, "inet", opts.bottleneck);
        }
        Duplex::Half => {
            // Everything the wire forwards, either way, first goes out `hx` (policy
            // rules by input interface) to its twin `hy`, then on by the main table.
            // The gateway of that detour is a made-up address pinned to hy's MAC:
            // Linux refuses a route via one of the node's own addresses.
            const HY_MAC: &str = "02:5c:01:d0:00:02";
            let hop = Ipv4Addr::new(198, 18, 203, 3);
            s.link(
                "shared",
                (WIRE, SHARED_IF, "198.18.203.1/24"),
                (WIRE, "hy", "198.18.203.2/24"),
            )?;
            s.mac(WIRE, "hy", HY_MAC);
            s.rule(WIRE, "inet", 100).rule(WIRE, "gw", 100);
            s.table_route(WIRE, 100, None, hop, SHARED_IF);
            s.neighbour(WIRE, SHARED_IF, hop, HY_MAC);
            s.shaper(WIRE, SHARED_IF, opts.bottleneck);
        }
    }
    s.validate()?;
    Ok(s)
}

/// A built Figure 8 testbed; derefs to its [`Topology`].
pub struct Fig8 {
    topo: Topology,
    opts: Fig8Options,
}

impl Fig8 {
    /// Builds the testbed (root needed).
    pub fn build(opts: Fig8Options) -> Result<Fig8, LabError> {
        let topo = Topology::build(spec(&opts)?)?;
        Ok(Fig8 { topo, opts })
    }

    pub fn options(&self) -> &Fig8Options {
        &self.opts
    }

    /// Node names of the proxies.
    pub fn proxies(&self) -> Vec<String> {
        (1..=self.opts.proxies).map(proxy).collect()
    }

    /// Node names of the clients.
    pub fn clients(&self) -> Vec<String> {
        (1..=self.opts.clients).map(client).collect()
    }

    /// Node names of the coordinator replicas, the first one first.
    pub fn coordinators(&self) -> Vec<String> {
        (1..=self.opts.coordinators).map(coordinator).collect()
    }

    /// Node names of the etcd members (none unless the control plane is replicated).
    pub fn etcd_members(&self) -> Vec<String> {
        if self.opts.replicated() {
            (1..=ETCD_MEMBERS).map(etcd).collect()
        } else {
            Vec::new()
        }
    }

    /// Node names of the attackers.
    pub fn attackers(&self) -> Vec<String> {
        (1..=self.opts.attackers).map(attacker).collect()
    }

    /// The address other nodes reach `node` at (see [`address_of`]).
    pub fn address(&self, node: &str) -> Result<Ipv4Addr, LabError> {
        self.topo.netns(node)?;
        address_of(node).ok_or_else(|| LabError::UnknownNode(node.to_string()))
    }

    /// Keeps the namespaces after this handle is gone (see [`Topology::keep`]).
    pub fn keep(self) -> String {
        self.topo.keep()
    }

    /// Tears the testbed down (also done on drop).
    pub fn teardown(self) -> Result<(), LabError> {
        self.topo.teardown()
    }
}

impl Deref for Fig8 {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_valid_and_inside_lab_range() {
        let s = spec(&Fig8Options::default()).unwrap();
        for p in s.prefixes() {
            assert!(
                crate::net::LAB_RANGE.covers(&p),
                "{p} outside the lab range"
            );
        }
        assert!(s.node("proxy2").is_some() && s.node("proxy3").is_none());
        // The shared main-link bottleneck and the alternate link's two directions.
        assert_eq!(s.shapers.len(), 3);
        assert!(s.shapers.iter().any(|b| b.ifname == SHARED_IF));
        let full = spec(&Fig8Options {
            duplex: Duplex::Full,
            alt_link: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(full.shapers.len(), 2);
    }

    #[test]
    fn largest_plan_is_valid() {
        let opts = Fig8Options {
            proxies: MAX_PROXIES,
            clients: MAX_CLIENTS,
            attackers: MAX_ATTACKERS,
            coordinators: MAX_COORDINATORS,
            ..Default::default()
        };
        let s = spec(&opts).unwrap();
        for p in s.prefixes() {
            assert!(
                crate::net::LAB_RANGE.covers(&p),
                "{p} outside the lab range"
            );
        }
        let too_many = Fig8Options {
            proxies: MAX_PROXIES + 1,
            ..Default::default()
        };
        assert!(spec(&too_many).is_err());
        let no_client = Fig8Options {
            clients: 0,
            ..Default::default()
        };
        assert!(spec(&no_client).is_err());
    }

    #[test]
    fn addresses_match_the_spec() {
        let opts = Fig8Options {
            proxies: 3,
            clients: 2,
            attackers: 2,
            ..Default::default()
        };
        let s = spec(&Fig8Options {
            coordinators: 3,
            ..opts
        })
        .unwrap();
        for node in [
            "coordinator2",
            "coordinator3",
            "etcd1",
            "etcd3",
            DNS_SECONDARY,
            "proxy3",
            "client2",
            "attacker2",
            CLIENT_DNS,
            TARGET_DNS,
            COORDINATOR,
        ] {
            let e = s.endpoints(node).next().unwrap();
            assert_eq!(Some(e.addr.addr()), address_of(node), "{node}");
        }
        assert_eq!(address_of(TARGET), Some(TARGET_ADDR));
        assert_eq!(address_of("proxy99"), None);
        assert_eq!(address_of("nobody"), None);
    }
}
