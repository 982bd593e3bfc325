//! The lab's fixed settings: names, ports and thresholds every role's config and every
//! measurement agree on. Why each threshold has its value is in docs/lab.md.

use std::net::Ipv4Addr;

/// The target's zone on TargetDNS (`.test` is reserved for testing, RFC 6761).
pub const ZONE: &str = "target.test";
/// The name clients look up.
pub const TARGET_FQDN: &str = "www.target.test";
/// TTL of the target's records, as the paper's short-TTL advice and the coordinator's
/// ALT records use.
pub const DNS_TTL: u32 = 10;
/// The target's name in the coordinator and in its certificate.
pub const TARGET_ID: &str = "target";
/// The alternate gateway's name in the coordinator and in its certificate.
pub const GATEWAY_ID: &str = "altgw";
/// The coordinator's control port.
pub const COORDINATOR_PORT: u16 = 7800;
/// The coordinator's status page, plain HTTP on the loopback of its namespace.
pub const STATUS_PAGE_PORT: u16 = 7880;
/// Tunnel port of gateway and proxies (udp and wireguard).
pub const TUNNEL_PORT: u16 = 51820;
/// The client agent's TUN device.
pub const CLIENT_TUN: &str = "scold-cl";
/// The gateway's TUN device.
pub const GATEWAY_TUN: &str = "scold-gw";

/// The paper's indirect-route scheme, as the coordinator is configured with it.
pub use scold_proto::control::Scheme;
/// Encapsulation between client, proxy and gateway: the data plane's own type.
pub use scold_proto::dataplane::Encap;

/// The source address the n-th proxy (1-based) gives the flows it relays in NAT mode
/// (4.3): inside the lab range, on no link, so only the target's return route through
/// the hidden gateway leads back to it.
pub fn nat_source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 240, n as u8)
}

/// The lab target's detector: an anomaly sustained this long raises the alarm.
pub const DETECT_ALARM_AFTER_MS: u64 = 500;
/// The lab target's detector: calm for this long after the attack gives the all-clear
/// (a site would use tens of seconds; the lab's attack is one steady flood).
pub const DETECT_HOLD_DOWN_MS: u64 = 4000;
/// The lab target's detector: learning time after start (the attack comes much later).
pub const DETECT_WARMUP_MS: u64 = 3000;
/// The lab target's detector: UDP packets/s on the main link that alarm whatever the
/// baseline (the lab's real traffic is TCP and DNS; the default flood is 2400/s).
pub const DETECT_UDP_CEILING: f64 = 600.0;

/// Received packets/s on a lab proxy's link that its self-defence takes as an attack.
pub const PROXY_RX_PPS_MAX: f64 = 2500.0;
/// How long a lab proxy's link must stay over [`PROXY_RX_PPS_MAX`] before it reports.
pub const PROXY_SUSTAIN_MS: u64 = 600;
/// Packets/s of the lab's attack on one proxy (bounded, small packets).
pub const PROXY_FLOOD_PPS: u64 = 5000;
/// How long the lab's coordinator keeps a proxy that reported an attack out of use
/// (a site would keep it out for minutes; the lab attacks the proxies in turn).
pub const ATTACKED_HOLD_MS: u64 = 3000;
/// The client agents re-read the ALT set at least this often (seconds), so a proxy
/// reset out of the set is left within about a second even while it still answers.
pub const AGENT_MAX_REFRESH_SECS: u64 = 1;

/// TCP port of the proxies' admission service (scheme 4.1 agents).
pub const ADMISSION_PORT: u16 = 5443;
/// TCP port of the client agents' push service (scheme 4.2); the coordinator's
/// `client_push_port`.
pub const PUSH_PORT: u16 = 5444;
/// Scheme 4.3: the target's ports the proxies relay (the lab's HTTP and bulk services).
pub const NAT_PORTS: [u16; 2] = [
    crate::serve::DEFAULT_HTTP_PORT,
    crate::serve::DEFAULT_BULK_PORT,
];
/// Where each client agent answers DNS inside its client's namespace.
pub const AGENT_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

/// `proxyN` -> N.
pub(crate) fn proxy_index(node: &str) -> usize {
    node.strip_prefix("proxy")
        .and_then(|n| n.parse().ok())
        .expect("proxy nodes are named proxyN")
}

/// Replicated control plane: each etcd member's client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// Replicated control plane: each etcd member's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// Replicated control plane: the prefix of every key the coordinator replicas write.
pub const ETCD_PREFIX: &str = "/scold-lab/";
/// Replicated control plane: seconds of the leading replica's etcd lease. A leader that
/// dies is replaced once its lease lapses, so this bounds the takeover from below.
pub const LEASE_SECS: u64 = 2;
/// The TSIG key name TargetDNS's secondary signs its transfers with (and the hidden
/// primary its NOTIFY).
pub const SECONDARY_KEY_NAME: &str = "secondary";
