//! The config file of every role of a lab run, built as the daemon's own config struct
//! (`scold_node::proxy::Config`, `scold_control::config::Config`, `scold_dns`'s
//! `DnsFile`, ...) and serialised to TOML, so what the lab writes is what the daemon
//! reads: a key the daemon renames or drops fails to compile here instead of
//! being silently ignored or refused at the run's start.
//!
//! [`ConfigPlan`] holds what the files are made from (the run's options, node names,
//! certificates, keys and secrets); [`RoleConfigs::build`] turns it into the configs
//! without touching the system, and [`RoleConfigs::write`] puts them in the run's files
//! folder. The only file that is not a daemon config is the target's zone, an RFC 1035
//! master file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use scold_control::config as coordinator;
use scold_dns::config::{
    AllowConfig, DnsFile, KeyConfig, NotifyKeyConfig, ResolverFile, ZoneConfig,
};
use scold_link::TlsConfig;
use scold_node::client::{self, AgentSection, PushSection};
use scold_node::gateway;
use scold_node::node::control::{ControlSection, NotifyEntry};
use scold_node::node::TunnelSection;
use scold_node::proxy::admission::AdmissionSection;
use scold_node::proxy::filter::SelfDefenceSection;
use scold_node::proxy::{self, NatSection};
use scold_node::target::detect::{DetectSection, RatesSection};
use scold_node::target::{self};
use scold_proto::dataplane::{NatService, Peer, Prefix, Protocol, PublicKey, Route, Session, Via};
use serde::Serialize;

use crate::error::LabError;
use crate::fig8;
use crate::settings::{self, Encap, Scheme};

/// The TSIG key name under which the coordinator (and the lab, standing in for it)
/// updates the target's zone.
pub const UPDATE_KEY_NAME: &str = "coordinator";
/// Capacity each lab proxy offers, in Mbit/s (what it announces and what the
/// coordinator's pool lists).
pub const PROXY_CAPACITY_MBPS: u32 = 1000;

/// The files of one run, in its files folder.
pub const GATEWAY_FILE: &str = "gateway.toml";
/// The target's static return path (without a coordinator link).
pub const TARGET_FILE: &str = "target.toml";
/// The target linked to the coordinator (with `control`).
pub const TARGET_CONTROL_FILE: &str = "target-control.toml";
pub const DNS_FILE: &str = "dns.toml";
pub const RESOLVER_FILE: &str = "resolver.toml";
pub const COORDINATOR_FILE: &str = "coordinator.toml";
/// TargetDNS's secondary (replicated control plane): Knot's config.
pub const KNOT_FILE: &str = "knot.conf";
/// The folder Knot keeps the transferred zone and its state in.
pub const KNOT_DIR: &str = "knot";
/// TargetDNS's zone (RFC 1035 master file).
pub const ZONE_FILE: &str = "target.test.zone";

/// The config file of a proxy or client node.
pub fn node_file(node: &str) -> String {
    format!("{node}.toml")
}

/// A WireGuard key pair (base64).
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair, LabError> {
        let private = scold_tunnel::keys::generate_private()
            .map_err(|e| LabError::BadSpec(format!("cannot make a WireGuard key: {e}")))?;
        let public = scold_tunnel::keys::public_of(&private)
            .map_err(|e| LabError::BadSpec(format!("cannot derive a WireGuard public key: {e}")))?;
        Ok(KeyPair { private, public })
    }
}

/// The consortium's certificates for one run.
#[derive(Clone, Debug)]
pub struct Pki {
    pub coordinator: scold_pki::IssuedPaths,
    /// The lab's operator (for `scold ctl`).
    pub operator: scold_pki::IssuedPaths,
    /// Every other node that speaks the control protocol, by node name (coordinator
    /// replicas after the first among them).
    pub certs: Vec<(String, scold_pki::IssuedPaths)>,
}

impl Pki {
    /// The consortium CA in `dir` and a certificate for every node that speaks the
    /// control protocol: the coordinator, the operator, the gateway, the target, each
    /// of `proxies` and each of `clients` (the scheme 4.2 client agents show theirs to
    /// the proxies that push to them), and each coordinator replica of `replicas` (the
    /// replicas after the first, each with its own name and address).
    pub fn issue(
        dir: &Path,
        proxies: &[String],
        clients: &[String],
        replicas: &[String],
    ) -> Result<Pki, LabError> {
        use scold_pki::{Ca, CaInit, Identity, Role, Validity};
        let pki = |e: scold_pki::PkiError| LabError::BadSpec(format!("lab PKI: {e}"));
        let mut ca = Ca::init(
            &dir.join("ca"),
            &CaInit {
                org: "SCOLD lab consortium".into(),
                ..CaInit::default()
            },
        )
        .map_err(pki)?;
        let mut issue = |role: Role, name: &str, ip: Option<Ipv4Addr>| {
            let ips: Vec<IpAddr> = ip.into_iter().map(IpAddr::V4).collect();
            ca.issue(
                &Identity::new(role, name).map_err(|e| LabError::BadSpec(e.to_string()))?,
                &ips,
                &[],
                Validity::days(2),
                &dir.join(format!("{}-{name}", role.as_str())),
            )
            .map_err(pki)
        };
        let coordinator = issue(
            Role::Coordinator,
            "coordinator",
            fig8::address_of(fig8::COORDINATOR),
        )?;
        let mut certs = vec![
            (
                fig8::ALT_GW.to_string(),
                issue(
                    Role::Gateway,
                    settings::GATEWAY_ID,
                    fig8::address_of(fig8::ALT_GW),
                )?,
            ),
            (
                fig8::TARGET.to_string(),
                issue(Role::Target, settings::TARGET_ID, Some(fig8::TARGET_ADDR))?,
            ),
        ];
        for p in proxies {
            certs.push((p.clone(), issue(Role::Proxy, p, fig8::address_of(p))?));
        }
        for c in clients {
            certs.push((c.clone(), issue(Role::Client, c, fig8::address_of(c))?));
        }
        for r in replicas {
            certs.push((r.clone(), issue(Role::Coordinator, r, fig8::address_of(r))?));
        }
        let operator = issue(Role::Operator, "lab", None)?;
        Ok(Pki {
            coordinator,
            operator,
            certs,
        })
    }

    /// The certificate issued to `node`.
    pub fn cert_of(&self, node: &str) -> &scold_pki::IssuedPaths {
        self.certs
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c)
            .expect("a certificate per node")
    }
}

/// What the role configs of one run are made from.
#[derive(Clone, Debug)]
pub struct ConfigPlan {
    /// The run's files folder: the configs name their state, journal and zone files
    /// there.
    pub dir: PathBuf,
    pub encap: Encap,
    pub scheme: Scheme,
    /// Client agents (see [`Choices::agent`]).
    pub agent: bool,
    /// The data path linked to the coordinator (see [`Choices::control`]).
    pub control: bool,
    /// The target's detector raises the alarm (see [`Choices::detect`]).
    pub detect: bool,
    pub proxies: Vec<String>,
    pub clients: Vec<String>,
    /// The proxy each client is given: client node -> proxy node.
    pub assignment: Vec<(String, String)>,
    pub pki: Pki,
    /// The coordinator's TSIG secret for TargetDNS (base64).
    pub dns_secret: String,
    pub gateway_key: KeyPair,
    pub proxy_keys: Vec<(String, KeyPair)>,
    pub client_keys: Vec<(String, KeyPair)>,
    /// Each proxy's TSIG secret for its NOTIFY to ClientDNS (base64).
    pub notify_secrets: Vec<(String, String)>,
    /// The coordinator replicas' node names, the first one first (one: no replicas).
    pub coordinators: Vec<String>,
    /// The etcd members' client addresses (replicas only).
    pub etcd: Vec<SocketAddr>,
    /// The TSIG secret TargetDNS's secondary transfers with (replicas only).
    pub secondary_secret: String,
}

/// What a run chose that the roles' configs depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choices {
    pub encap: Encap,
    pub scheme: Scheme,
    /// Clients run `scold client` agents (with `[agent]`) rather than static client
    /// configs: the stub resolver that is admitted by a proxy of the ALT set (4.1), or
    /// the push service that proxies push routes to (4.2). Not in 4.3, where clients
    /// run no SCOLD software.
    pub agent: bool,
    /// The gateway, the proxies and the target get `[control]` tables and take the
    /// coordinator's orders.
    pub control: bool,
    /// With `control`: the target's detector raises the alarm itself (`[detect]`).
    pub detect: bool,
    /// Coordinator replicas (see [`fig8::Fig8Options::coordinators`]): above one they
    /// share an etcd cluster, and TargetDNS is a hidden primary with a secondary.
    pub coordinators: usize,
}

impl Choices {
    /// Whether the control plane is replicated.
    pub fn replicated(&self) -> bool {
        self.coordinators > 1
    }
}

fn secret() -> String {
    scold_tunnel::keys::encode_key(&rand::random::<[u8; 32]>())
}

impl ConfigPlan {
    /// A plan with fresh keys and secrets; clients are given the proxies in turn.
    pub fn new(
        dir: PathBuf,
        opts: Choices,
        proxies: Vec<String>,
        clients: Vec<String>,
        pki: Pki,
    ) -> Result<ConfigPlan, LabError> {
        if proxies.is_empty() {
            return Err(LabError::BadSpec(
                "the indirect route needs at least one proxy (--proxies)".into(),
            ));
        }
        let assignment = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), proxies[i % proxies.len()].clone()))
            .collect();
        let keys = |nodes: &[String]| -> Result<Vec<(String, KeyPair)>, LabError> {
            nodes
                .iter()
                .map(|n| KeyPair::generate().map(|k| (n.clone(), k)))
                .collect()
        };
        Ok(ConfigPlan {
            dir,
            encap: opts.encap,
            scheme: opts.scheme,
            agent: opts.agent,
            control: opts.control,
            detect: opts.detect,
            assignment,
            pki,
            dns_secret: secret(),
            gateway_key: KeyPair::generate()?,
            proxy_keys: keys(&proxies)?,
            client_keys: keys(&clients)?,
            notify_secrets: proxies.iter().map(|p| (p.clone(), secret())).collect(),
            coordinators: (1..=opts.coordinators.max(1))
                .map(fig8::coordinator)
                .collect(),
            etcd: if opts.replicated() {
                (1..=fig8::ETCD_MEMBERS)
                    .map(|i| {
                        SocketAddr::new(addr(&fig8::etcd(i)).into(), settings::ETCD_CLIENT_PORT)
                    })
                    .collect()
            } else {
                Vec::new()
            },
            secondary_secret: secret(),
            proxies,
            clients,
        })
    }

    fn key_of<'k>(list: &'k [(String, KeyPair)], node: &str) -> &'k KeyPair {
        list.iter()
            .find(|(n, _)| n == node)
            .map(|(_, k)| k)
            .expect("a key per node")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the control plane is replicated (coordinator replicas on etcd, TargetDNS
    /// as a hidden primary with a secondary).
    pub fn replicated(&self) -> bool {
        self.coordinators.len() > 1
    }

    /// Every coordinator replica's control address, the first one first.
    pub fn coordinator_addrs(&self) -> Vec<SocketAddr> {
        self.coordinators
            .iter()
            .map(|c| SocketAddr::new(addr(c).into(), settings::COORDINATOR_PORT))
            .collect()
    }

    fn tunnel(&self, listen: SocketAddr, key: &KeyPair) -> TunnelSection {
        TunnelSection {
            listen: Some(listen),
            ipip: self.encap == Encap::Ipip,
            private_key: (self.encap == Encap::Wireguard).then(|| key.private.clone()),
            encap: self.encap,
            ..TunnelSection::default()
        }
    }

    /// A `[control]` table linking `node` to the coordinator, with its certificate;
    /// standalone when the run does not link the data path.
    fn control(&self, node: &str) -> ControlSection {
        if !self.control {
            return ControlSection::default();
        }
        let c = self.pki.cert_of(node);
        let replicas = self.coordinator_addrs();
        ControlSection {
            coordinator: replicas.first().copied(),
            replicas: replicas[1..].to_vec(),
            tls: Some(TlsConfig {
                ca: c.ca_cert.clone(),
                cert: c.cert.clone(),
                key: c.key.clone(),
                crl: Some(c.crl.clone()),
            }),
            ..ControlSection::default()
        }
    }

    fn peer(&self, name: &str, address: Ipv4Addr, port: Option<u16>, key: &KeyPair) -> Peer {
        Peer {
            name: name.to_string(),
            address: address.into(),
            // ipip has no ports.
            port: port.filter(|_| self.encap != Encap::Ipip),
            encap: self.encap,
            public_key: (self.encap == Encap::Wireguard).then(|| PublicKey(key.public.clone())),
            keepalive_secs: None,
            engines: None,
        }
    }
}

/// The address of a node of the plan.
fn addr(node: &str) -> Ipv4Addr {
    fig8::address_of(node).expect("a node of the Figure 8 plan")
}

fn host(a: Ipv4Addr) -> Prefix {
    Prefix::host(a.into())
}

/// The configs of every role of one run.
#[derive(Debug)]
pub struct RoleConfigs {
    /// The hidden gateway.
    pub gateway: gateway::Config,
    /// Each proxy, by node name.
    pub proxies: Vec<(String, proxy::Config)>,
    /// Each client's agent, by node name: the scheme 4.1 agent, or a static tunnel to
    /// its proxy (none in 4.3, where clients run no SCOLD software).
    pub clients: Vec<(String, client::Config)>,
    /// The target's static return path (while the lab puts clients on the indirect
    /// route itself).
    pub target: target::Config,
    /// The target linked to the coordinator, with `control`.
    pub target_control: Option<target::Config>,
    /// TargetDNS's zone, an RFC 1035 master file.
    pub zone: String,
    pub dns: DnsFile,
    pub resolver: ResolverFile,
    pub coordinator: coordinator::Config,
    /// The coordinator replicas after the first, by node name (replicas only).
    pub replicas: Vec<(String, coordinator::Config)>,
    /// TargetDNS's secondary: Knot's config (replicas only).
    pub knot: Option<String>,
}

impl RoleConfigs {
    pub fn build(plan: &ConfigPlan) -> RoleConfigs {
        let target = fig8::TARGET_ADDR;
        let gw_addr = addr(fig8::ALT_GW);
        let cdns = addr(fig8::CLIENT_DNS);
        let dns_addr = addr(fig8::TARGET_DNS);
        let ca = &plan.pki.coordinator.ca_cert;

        // The hidden gateway: accepts the registered proxies, delivers to the site LAN.
        // Linked to the coordinator it admits exactly the proxies its orders name;
        // otherwise every proxy is a static peer.
        let mut gw = gateway::Config::new(fig8::GW_SITE_IF);
        gw.tun_name = settings::GATEWAY_TUN.into();
        gw.tunnel = plan.tunnel((gw_addr, settings::TUNNEL_PORT).into(), &plan.gateway_key);
        if !plan.control {
            gw.peers = plan
                .proxy_keys
                .iter()
                .map(|(p, k)| plan.peer(p, addr(p), None, k))
                .collect();
        }
        gw.control = plan.control(fig8::ALT_GW);
        if plan.control {
            gw.control.address = Some(gw_addr.into());
            gw.control.inside = Some(fig8::ALT_GW_SITE_ADDR.into());
            gw.control.organisation = Some("org-target".into());
        }

        let mut proxies = Vec::new();
        for (p, k) in &plan.proxy_keys {
            let mut cfg = proxy::Config {
                tunnel: plan.tunnel((Ipv4Addr::UNSPECIFIED, settings::TUNNEL_PORT).into(), k),
                ..proxy::Config::default()
            };
            // Each proxy signs its NOTIFY to ClientDNS with a key of its own (paper
            // Sec. 3 step 4: the client site's resolver drops the diverted name at once).
            if let Some((_, secret)) = plan.notify_secrets.iter().find(|(q, _)| q == p) {
                cfg.notify.push(NotifyEntry {
                    resolver: (cdns, 53).into(),
                    key: format!("hmac-sha256:{p}:{secret}"),
                });
            }
            // Linked to the coordinator, the proxy gets its peer and route to the
            // gateway from the divert's orders; otherwise from this file.
            if !plan.control {
                cfg.peers.push(plan.peer(
                    settings::GATEWAY_ID,
                    gw_addr,
                    Some(settings::TUNNEL_PORT),
                    &plan.gateway_key,
                ));
                cfg.routes.push(Route {
                    destination: host(target),
                    via: Via::Peer(settings::GATEWAY_ID.into()),
                });
            }
            if plan.scheme == Scheme::Nat {
                cfg.nat = Some(NatSection::new(
                    settings::nat_source(settings::proxy_index(p)).into(),
                ));
                // Linked to the coordinator, the proxy opens the target's ports on the
                // divert's order; otherwise from this file.
                let ports = if plan.control {
                    Vec::new()
                } else {
                    settings::NAT_PORTS.to_vec()
                };
                for port in ports {
                    cfg.nat_services.push(NatService {
                        protocol: Protocol::Tcp,
                        listen: (addr(p), port).into(),
                        target: (target, port).into(),
                        proxy_protocol: false,
                    });
                }
            }
            if plan.agent {
                // Clients are admitted by the TLS exchange (4.1), or pushed to on the
                // coordinator's order (4.2, where this certificate is what the client
                // agent checks), not listed here.
                let certs = plan.pki.cert_of(p);
                let mut admission =
                    AdmissionSection::new(ca.clone(), certs.cert.clone(), certs.key.clone());
                admission.listen = (addr(p), settings::ADMISSION_PORT).into();
                admission.allow = vec![host(target)];
                cfg.admission = Some(admission);
            } else {
                for (c, _) in plan.assignment.iter().filter(|(_, q)| q == p) {
                    let key = ConfigPlan::key_of(&plan.client_keys, c);
                    cfg.sessions.push(Session {
                        client: addr(c).into(),
                        port: None,
                        encap: plan.encap,
                        public_key: (plan.encap == Encap::Wireguard)
                            .then(|| PublicKey(key.public.clone())),
                        targets: vec![host(target)],
                        engines: None,
                    });
                }
            }
            if plan.control {
                // Self-defence (4.4): a proxy whose link takes more packets than it can
                // relay asks the coordinator to reset it out of the ALT set. The lab's
                // relay traffic stays near 1300 packets/s (the 10 Mbit/s alternate
                // link's data and its ACKs), its attack on a proxy sends
                // PROXY_FLOOD_PPS. CPU saturation is not a test here (a busy share
                // above 1 never counts): the machine's CPUs are shared by every node
                // of the testbed.
                cfg.selfdefence = Some(SelfDefenceSection {
                    interface: Some(fig8::LEAF_IF.into()),
                    interval_ms: 200,
                    link_capacity_mbps: None,
                    link_utilisation_max: None,
                    rx_pps_max: Some(settings::PROXY_RX_PPS_MAX),
                    rx_dropped_per_s_max: None,
                    cpu_busy_max: Some(2.0),
                    sustain_ms: Some(settings::PROXY_SUSTAIN_MS),
                    recover_ms: Some(3000),
                });
            }
            cfg.control = plan.control(p);
            if plan.control {
                cfg.control.address = Some(addr(p).into());
                cfg.control.capacity_mbps = Some(PROXY_CAPACITY_MBPS);
                cfg.control.organisation = Some(format!("org-{p}"));
            }
            proxies.push((p.clone(), cfg));
        }

        let mut clients = Vec::new();
        for (c, p) in &plan.assignment {
            if plan.scheme == Scheme::Nat && !plan.agent {
                // Clients run no SCOLD software in 4.3: they talk to the proxy's address.
                continue;
            }
            let key = ConfigPlan::key_of(&plan.client_keys, c);
            let mut cfg = client_defaults();
            cfg.tun_name = settings::CLIENT_TUN.into();
            cfg.tunnel = plan.tunnel((Ipv4Addr::UNSPECIFIED, 0).into(), key);
            if plan.agent {
                cfg.agent = Some(AgentSection {
                    listen: (settings::AGENT_DNS, 53).into(),
                    upstream: vec![(cdns, 53).into()],
                    ca: ca.clone(),
                    crl: None,
                    alt_type: scold_dns::alt::DEFAULT_ALT_TYPE,
                    admission_port: settings::ADMISSION_PORT,
                    // The agent's failover reacts within these: stated here, so the
                    // lab's failover figures say what they ran with.
                    probe_interval_ms: 200,
                    probe_timeout_ms: 600,
                    admission_timeout_ms: 1000,
                    upstream_timeout_ms: 1500,
                    keepalive_secs: 10,
                    min_refresh_ms: None,
                    min_refresh_secs: None,
                    max_refresh_secs: settings::AGENT_MAX_REFRESH_SECS,
                    // Scheme 4.2: proxies push the route here on the coordinator's
                    // order, showing their consortium certificate.
                    push: (plan.scheme == Scheme::Push).then(|| {
                        let certs = plan.pki.cert_of(c);
                        PushSection::new(
                            (addr(c), settings::PUSH_PORT).into(),
                            certs.cert.clone(),
                            certs.key.clone(),
                        )
                    }),
                });
                if plan.scheme == Scheme::Push {
                    // The agent registers with the coordinator, which has a proxy of
                    // each diverted target push to it.
                    cfg.control = plan.control(c);
                    if plan.control {
                        cfg.control.address = Some(addr(c).into());
                    }
                }
            } else {
                cfg.source = Some(addr(c).into());
                cfg.peers.push(plan.peer(
                    p,
                    addr(p),
                    Some(settings::TUNNEL_PORT),
                    ConfigPlan::key_of(&plan.proxy_keys, p),
                ));
                cfg.routes.push(Route {
                    destination: host(target),
                    via: Via::Peer(p.clone()),
                });
            }
            clients.push((c.clone(), cfg));
        }

        // Replies go back to the clients themselves, or in NAT mode to the proxies'
        // relay addresses.
        let returns: Vec<Ipv4Addr> = if plan.scheme == Scheme::Nat {
            plan.proxies
                .iter()
                .map(|p| settings::nat_source(settings::proxy_index(p)))
                .collect()
        } else {
            plan.clients.iter().map(|c| addr(c)).collect()
        };
        let static_target = target::Config {
            source: Some(target.into()),
            routes: returns
                .into_iter()
                .map(|dest| Route {
                    destination: host(dest),
                    via: Via::Gateway(fig8::ALT_GW_SITE_ADDR.into()),
                })
                .collect(),
            ..target::Config::default()
        };
        // A second `scold target`, running throughout, takes the coordinator's orders
        // (the return path it sets at target set-up is marked by connection, so it
        // leaves the direct route alone); the static one above comes and goes with the
        // lab's own indirect phases.
        let target_control = plan.control.then(|| target::Config {
            source: Some(target.into()),
            control: plan.control(fig8::TARGET),
            detect: plan.detect.then(detect_section),
            ..target::Config::default()
        });

        // DNS: the target's zone with a short TTL, and the coordinator's update key.
        let ttl = settings::DNS_TTL;
        // Replicated: TargetDNS is a hidden primary (the SOA's MNAME, in no NS record)
        // that the coordinator updates; the secondary is the zone's only name server
        // and the one ClientDNS asks.
        let secondary = plan.replicated().then(|| addr(fig8::DNS_SECONDARY));
        let zone = match secondary {
            None => format!(
                "$ORIGIN {z}.\n$TTL {ttl}\n@ SOA ns1 hostmaster 1 3600 900 604800 {ttl}\n  NS ns1\n\
                 ns1 A {dns_addr}\nwww A {target}\n",
                z = settings::ZONE
            ),
            Some(sec) => format!(
                "$ORIGIN {z}.\n$TTL {ttl}\n@ SOA ns1 hostmaster 1 3600 900 604800 {ttl}\n  NS ns2\n\
                 ns1 A {dns_addr}\nns2 A {sec}\nwww A {target}\n",
                z = settings::ZONE
            ),
        };
        let mut dns = DnsFile::new(vec![(dns_addr, 53).into()], plan.path("dns.journal"));
        dns.zone.push(ZoneConfig {
            name: settings::ZONE.into(),
            file: plan.path(ZONE_FILE),
        });
        dns.key.push(KeyConfig {
            name: UPDATE_KEY_NAME.into(),
            algorithm: "hmac-sha256".into(),
            secret: plan.dns_secret.clone(),
            allow: vec![AllowConfig {
                names: vec![format!("*.{}", settings::ZONE)],
                types: vec!["ALT".into(), "A".into(), "AAAA".into()],
            }],
        });
        if let Some(sec) = secondary {
            dns.key.push(KeyConfig {
                name: settings::SECONDARY_KEY_NAME.into(),
                algorithm: "hmac-sha256".into(),
                secret: plan.secondary_secret.clone(),
                allow: Vec::new(),
            });
            dns.secondary.push(scold_dns::config::SecondaryConfig {
                name: fig8::DNS_SECONDARY.into(),
                address: (sec, 53).into(),
                key: settings::SECONDARY_KEY_NAME.into(),
                zones: vec![settings::ZONE.into()],
                allow_from: vec![format!("{sec}/32")],
                notify: true,
            });
        }
        let upstream = secondary.unwrap_or(dns_addr);
        let mut resolver = ResolverFile::new(vec![(cdns, 53).into()], vec![(upstream, 53).into()]);
        resolver.notify_key = plan
            .notify_secrets
            .iter()
            .map(|(p, secret)| NotifyKeyConfig {
                name: p.clone(),
                algorithm: "hmac-sha256".into(),
                secret: secret.clone(),
            })
            .collect();

        let tls = &plan.pki.coordinator;
        let coordinator = coordinator::Config {
            coordinator: coordinator::CoordinatorSection {
                heartbeat_ms: 500,
                down_after_ms: 2000,
                proxies_per_target: plan.proxies.len().min(2),
                attacked_hold_ms: settings::ATTACKED_HOLD_MS,
                client_push_port: settings::PUSH_PORT,
                ..coordinator::CoordinatorSection::new(
                    (Ipv4Addr::UNSPECIFIED, settings::COORDINATOR_PORT).into(),
                    plan.path("coordinator.redb"),
                )
            },
            tls: TlsConfig {
                ca: tls.ca_cert.clone(),
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                crl: Some(tls.crl.clone()),
            },
            metrics: None,
            // The status page, on the coordinator namespace's loopback.
            admin: Some(coordinator::AdminSection::new(
                (Ipv4Addr::LOCALHOST, settings::STATUS_PAGE_PORT).into(),
                false,
            )),
            targets: vec![coordinator::TargetConfig {
                name: settings::TARGET_ID.into(),
                fqdn: format!("{}.", settings::TARGET_FQDN),
                zone: format!("{}.", settings::ZONE),
                addresses: vec![target.into()],
                gateways: vec![settings::GATEWAY_ID.into()],
                scheme: match plan.scheme {
                    Scheme::Resolver => coordinator::Scheme::Resolver,
                    Scheme::Push => coordinator::Scheme::Push,
                    Scheme::Nat => coordinator::Scheme::Nat,
                },
                ttl,
                proxies: None,
                // Scheme 4.3: the ports the proxies relay (the lab's HTTP and bulk
                // services; ICMP is not a port and is not relayed).
                services: if plan.scheme == Scheme::Nat {
                    settings::NAT_PORTS
                        .iter()
                        .map(|&port| coordinator::Service {
                            protocol: Protocol::Tcp,
                            port,
                            proxy_protocol: false,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                dns: coordinator::TargetDnsConfig {
                    server: (dns_addr, 53).into(),
                    key: format!("hmac-sha256:{UPDATE_KEY_NAME}:{}", plan.dns_secret),
                },
            }],
            proxies: plan
                .proxies
                .iter()
                .map(|p| coordinator::ProxyConfig {
                    name: p.clone(),
                    address: addr(p).into(),
                    capacity_mbps: PROXY_CAPACITY_MBPS,
                    organisation: Some(format!("org-{p}")),
                })
                .collect(),
            webhooks: Vec::new(),
        };

        // Replicas: the same coordinator, each with its own certificate, sharing its
        // state in etcd instead of a file of its own.
        let mut replicas = Vec::new();
        let mut coordinator = coordinator;
        if plan.replicated() {
            let replica = |cfg: &coordinator::Config, node: &str| {
                let mut cfg = cfg.clone();
                cfg.coordinator.state = PathBuf::new();
                cfg.coordinator.etcd = Some(coordinator::EtcdSection {
                    endpoints: plan.etcd.clone(),
                    prefix: settings::ETCD_PREFIX.into(),
                    lease_secs: settings::LEASE_SECS,
                    timeout_ms: 1000,
                });
                if node != fig8::COORDINATOR {
                    let c = plan.pki.cert_of(node);
                    cfg.tls = TlsConfig {
                        ca: c.ca_cert.clone(),
                        cert: c.cert.clone(),
                        key: c.key.clone(),
                        crl: Some(c.crl.clone()),
                    };
                }
                cfg
            };
            for node in &plan.coordinators[1..] {
                replicas.push((node.clone(), replica(&coordinator, node)));
            }
            coordinator = replica(&coordinator, fig8::COORDINATOR);
        }
        let knot = secondary.map(|sec| knot_conf(plan, sec, dns_addr));

        RoleConfigs {
            gateway: gw,
            proxies,
            clients,
            target: static_target,
            target_control,
            zone,
            dns,
            resolver,
            coordinator,
            replicas,
            knot,
        }
    }

    /// Writes every file into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), LabError> {
        write_toml(
            dir,
            GATEWAY_FILE,
            "scold gateway of the lab's target site",
            &self.gateway,
        )?;
        for (p, cfg) in &self.proxies {
            write_toml(dir, &node_file(p), &format!("scold proxy {p}"), cfg)?;
        }
        for (c, cfg) in &self.clients {
            let what = if cfg.agent.as_ref().is_some_and(|a| a.push.is_some()) {
                format!("scold client agent of {c} (scheme 4.2: takes route pushes)")
            } else if cfg.agent.is_some() {
                format!("scold client agent of {c} (scheme 4.1)")
            } else {
                format!("scold client agent of {c}: a static tunnel to its proxy")
            };
            write_toml(dir, &node_file(c), &what, cfg)?;
        }
        write_toml(
            dir,
            TARGET_FILE,
            "scold target: return path of the diverted clients",
            &self.target,
        )?;
        if let Some(t) = &self.target_control {
            write_toml(
                dir,
                TARGET_CONTROL_FILE,
                "scold target: linked to the coordinator",
                t,
            )?;
        }
        write_file(&dir.join(ZONE_FILE), &self.zone)?;
        write_toml(dir, DNS_FILE, "scold dns: the lab's TargetDNS", &self.dns)?;
        write_toml(
            dir,
            RESOLVER_FILE,
            "scold resolver: the lab's ClientDNS",
            &self.resolver,
        )?;
        for (node, cfg) in &self.replicas {
            write_toml(
                dir,
                &node_file(node),
                &format!("scold coordinator of the lab: replica {node}"),
                cfg,
            )?;
        }
        if let Some(knot) = &self.knot {
            std::fs::create_dir_all(dir.join(KNOT_DIR)).map_err(|e| {
                LabError::io(format!("creating {}", dir.join(KNOT_DIR).display()), e)
            })?;
            write_file(&dir.join(KNOT_FILE), knot)?;
        }
        write_toml(
            dir,
            COORDINATOR_FILE,
            "scold coordinator of the lab",
            &self.coordinator,
        )
    }
}

/// TargetDNS's secondary: Knot (unmodified) at `sec`, pulling the target's zone from the
/// hidden primary at `primary` by TSIG-signed transfer and taking its signed NOTIFY.
/// The zone's refresh is an hour, so only the NOTIFY makes a change arrive quickly.
fn knot_conf(plan: &ConfigPlan, sec: Ipv4Addr, primary: Ipv4Addr) -> String {
    let dir = plan.path(KNOT_DIR);
    let conf = scold_dns::knot::secondary_conf(&scold_dns::knot::Secondary {
        dir: &dir,
        listen: (sec, 53).into(),
        primary: (primary, 53).into(),
        key_name: settings::SECONDARY_KEY_NAME,
        secret: &plan.secondary_secret,
        zones: &[settings::ZONE],
    });
    format!("# Knot: the lab's TargetDNS secondary, following the hidden primary scold dns\n{conf}")
}

/// The lab target's detector: the lab's main link carries a few hundred packets/s of
/// real traffic and no UDP to speak of; the flood's UDP well above that is the attack,
/// whatever the baseline learned (the ceiling). No byte-rate ceiling: the baseline's
/// downloads fill the link on purpose. The hold-down is short so the run ends with the
/// detector's all-clear and the coordinator's restore.
fn detect_section() -> DetectSection {
    DetectSection {
        interface: fig8::TARGET_MAIN_IF.into(),
        interval_ms: Some(100),
        one_in: None,
        alarm_after_ms: Some(settings::DETECT_ALARM_AFTER_MS),
        hold_down_ms: Some(settings::DETECT_HOLD_DOWN_MS),
        warmup_ms: Some(settings::DETECT_WARMUP_MS),
        baseline_secs: None,
        alarm_factor: None,
        alarm_sigmas: None,
        clear_factor: None,
        clear_sigmas: None,
        syn_share_alarm: None,
        floors: Some(RatesSection {
            pps: Some(300.0),
            udp_pps: Some(200.0),
            ..RatesSection::default()
        }),
        ceilings: Some(RatesSection {
            udp_pps: Some(settings::DETECT_UDP_CEILING),
            ..RatesSection::default()
        }),
    }
}

/// `scold client`'s config as an empty file gives it (every key has a default there).
fn client_defaults() -> client::Config {
    toml::from_str("").expect("every key of scold client's config has a default")
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// Writes `cfg` as TOML to `dir/name`, after a comment line that says what it is.
fn write_toml(dir: &Path, name: &str, what: &str, cfg: &impl Serialize) -> Result<(), LabError> {
    let text = toml::to_string(cfg)
        .map_err(|e| LabError::BadSpec(format!("cannot write {name} as TOML: {e}")))?;
    write_file(&dir.join(name), &format!("# {what}\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option sets the lab runs with: the scenario's default (client agents, the
    /// data path linked to the coordinator, the target's detector), the bench's
    /// operator alarm, agents without the coordinator link, static routes, and schemes
    /// 4.2 and 4.3; each over every encapsulation.
    fn option_sets() -> Vec<Choices> {
        let mut v = Vec::new();
        for encap in [Encap::Udp, Encap::Ipip, Encap::Wireguard] {
            for (scheme, agent, control, detect) in [
                (Scheme::Resolver, true, true, true),
                (Scheme::Resolver, true, true, false),
                (Scheme::Resolver, true, false, false),
                (Scheme::Resolver, false, false, false),
                (Scheme::Push, true, true, true),
                (Scheme::Push, false, false, false),
                (Scheme::Nat, false, true, true),
                (Scheme::Nat, false, false, false),
            ] {
                v.push(Choices {
                    encap,
                    scheme,
                    agent,
                    control,
                    detect,
                    coordinators: 1,
                });
            }
        }
        // The replicated control plane (`--coordinators 3`).
        v.push(Choices {
            encap: Encap::Wireguard,
            scheme: Scheme::Resolver,
            agent: true,
            control: true,
            detect: true,
            coordinators: 3,
        });
        v
    }

    fn public_of(private: &Option<String>) -> Option<PublicKey> {
        private
            .as_ref()
            .map(|k| PublicKey(scold_tunnel::keys::public_of(k).unwrap()))
    }

    /// Every role's config for the default topology (two proxies, one client), written
    /// as the lab writes it, loads with the daemon's own loader, and the files agree
    /// with each other (keys, addresses, secrets).
    #[test]
    fn every_role_config_loads_with_its_daemons_loader() {
        let base = tempfile::tempdir().unwrap();
        let opts = crate::fig8::Fig8Options::default();
        let proxies: Vec<String> = (1..=opts.proxies).map(fig8::proxy).collect();
        let clients: Vec<String> = (1..=opts.clients).map(fig8::client).collect();
        let pki = Pki::issue(
            base.path(),
            &proxies,
            &clients,
            &["coordinator2".into(), "coordinator3".into()],
        )
        .unwrap();
        for (i, o) in option_sets().iter().enumerate() {
            let what = format!(
                "{:?} {} agent={} control={} detect={}",
                o.encap,
                o.scheme.as_str(),
                o.agent,
                o.control,
                o.detect
            );
            let dir = base.path().join(format!("run{i}"));
            std::fs::create_dir(&dir).unwrap();
            let plan = ConfigPlan::new(
                dir.clone(),
                *o,
                proxies.clone(),
                clients.clone(),
                pki.clone(),
            )
            .unwrap();
            let built = RoleConfigs::build(&plan);
            built.write(&dir).unwrap();
            let fail = |file: &str, e: String| -> ! {
                let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                panic!("{what}: {file} does not load: {e}\n{text}")
            };

            let gw = gateway::Config::load(&dir.join(GATEWAY_FILE))
                .unwrap_or_else(|e| fail(GATEWAY_FILE, format!("{e:#}")));
            assert_eq!(gw.control.coordinator.is_some(), o.control, "{what}");
            let gw_public = public_of(&gw.tunnel.private_key);
            let mut proxy_publics = Vec::new();
            for p in &proxies {
                let file = node_file(p);
                let cfg = proxy::Config::load(&dir.join(&file))
                    .unwrap_or_else(|e| fail(&file, format!("{e:#}")));
                assert_eq!(cfg.tunnel.encap, plan.encap, "{what}: {file}");
                assert_eq!(
                    cfg.control.coordinator.is_some(),
                    o.control,
                    "{what}: {file}"
                );
                assert_eq!(cfg.admission.is_some(), o.agent, "{what}: {file}");
                assert_eq!(cfg.nat.is_some(), o.scheme == Scheme::Nat, "{what}: {file}");
                assert_eq!(
                    cfg.nat_services.len(),
                    if o.scheme == Scheme::Nat && !o.control {
                        2
                    } else {
                        0
                    },
                    "{what}: {file}"
                );
                // The proxy's static peer is the gateway, under the gateway's key.
                for peer in &cfg.peers {
                    assert_eq!(peer.public_key, gw_public, "{what}: {file}");
                }
                proxy_publics.push((p.clone(), public_of(&cfg.tunnel.private_key)));
                let (_, secret) = plan.notify_secrets.iter().find(|(q, _)| q == p).unwrap();
                assert_eq!(cfg.notify.len(), 1, "{what}: {file}");
                assert!(
                    cfg.notify[0].key.ends_with(secret.as_str()),
                    "{what}: {file}"
                );
            }
            // The gateway's static peers are the proxies, under their keys.
            for peer in &gw.peers {
                let (_, public) = proxy_publics.iter().find(|(p, _)| *p == peer.name).unwrap();
                assert_eq!(
                    &peer.public_key, public,
                    "{what}: gateway peer {}",
                    peer.name
                );
            }
            assert_eq!(
                gw.peers.len(),
                if o.control { 0 } else { proxies.len() },
                "{what}"
            );

            for c in &clients {
                let file = node_file(c);
                if o.scheme == Scheme::Nat {
                    assert!(!dir.join(&file).exists(), "{what}: {file} written in 4.3");
                    continue;
                }
                let cfg = client::Config::load(&dir.join(&file))
                    .unwrap_or_else(|e| fail(&file, format!("{e:#}")));
                assert_eq!(cfg.agent.is_some(), o.agent, "{what}: {file}");
                // 4.2 agents take pushes and register with the coordinator.
                let push = o.agent && o.scheme == Scheme::Push;
                assert_eq!(
                    cfg.agent.as_ref().is_some_and(|a| a.push.is_some()),
                    push,
                    "{what}: {file}"
                );
                assert_eq!(
                    cfg.control.coordinator.is_some(),
                    push && o.control,
                    "{what}: {file}"
                );
                assert_eq!(cfg.tun_name, settings::CLIENT_TUN, "{what}: {file}");
                for peer in &cfg.peers {
                    let (_, public) = proxy_publics.iter().find(|(p, _)| *p == peer.name).unwrap();
                    assert_eq!(&peer.public_key, public, "{what}: {file}");
                }
            }

            let t = target::Config::load(&dir.join(TARGET_FILE))
                .unwrap_or_else(|e| fail(TARGET_FILE, format!("{e:#}")));
            assert!(!t.routes.is_empty(), "{what}");
            let tc = dir.join(TARGET_CONTROL_FILE);
            if o.control {
                let t = target::Config::load(&tc)
                    .unwrap_or_else(|e| fail(TARGET_CONTROL_FILE, format!("{e:#}")));
                assert_eq!(t.detect.is_some(), o.detect, "{what}");
            } else {
                assert!(
                    !tc.exists(),
                    "{what}: {TARGET_CONTROL_FILE} written without control"
                );
            }

            let dns = scold_dns::config::load_dns(&dir.join(DNS_FILE))
                .unwrap_or_else(|e| fail(DNS_FILE, e.to_string()));
            assert_eq!(
                dns.zones,
                vec![(settings::ZONE.to_string(), dir.join(ZONE_FILE))]
            );
            assert!(dir.join(ZONE_FILE).is_file());
            let resolver = scold_dns::config::load_resolver(&dir.join(RESOLVER_FILE))
                .unwrap_or_else(|e| fail(RESOLVER_FILE, e.to_string()));
            assert_eq!(resolver.notify_keys.len(), proxies.len(), "{what}");

            let coord = scold_control::coordinator::load_config(&dir.join(COORDINATOR_FILE))
                .unwrap_or_else(|e| fail(COORDINATOR_FILE, format!("{e:#}")));
            assert_eq!(
                coord.targets[0].scheme.as_str(),
                o.scheme.as_str(),
                "{what}"
            );
            assert_eq!(coord.proxies.len(), proxies.len(), "{what}");
            assert_eq!(coord.coordinator.client_push_port, settings::PUSH_PORT);
            // 4.3: the coordinator orders the relays; static NAT services only without it.
            assert_eq!(
                coord.targets[0].services.len(),
                if o.scheme == Scheme::Nat { 2 } else { 0 },
                "{what}"
            );
            // The coordinator updates TargetDNS under the key TargetDNS knows.
            assert_eq!(
                coord.targets[0].dns.key,
                format!("hmac-sha256:{UPDATE_KEY_NAME}:{}", plan.dns_secret)
            );
            assert_eq!(built.dns.key[0].secret, plan.dns_secret);

            // Replicas: each replica's config loads, shares etcd and has its own
            // certificate; every node lists every replica; ClientDNS asks the secondary,
            // which the hidden primary notifies and lets transfer under a key they share.
            let all: Vec<SocketAddr> = plan.coordinator_addrs();
            assert_eq!(all.len(), o.coordinators, "{what}");
            assert_eq!(coord.coordinator.etcd.is_some(), o.replicated(), "{what}");
            for r in &plan.coordinators[1..] {
                let file = node_file(r);
                let cfg = scold_control::coordinator::load_config(&dir.join(&file))
                    .unwrap_or_else(|e| fail(&file, format!("{e:#}")));
                let etcd = cfg
                    .coordinator
                    .etcd
                    .expect("a replica has [coordinator.etcd]");
                assert_eq!(etcd.endpoints.len(), fig8::ETCD_MEMBERS, "{what}");
                assert_eq!(cfg.tls.cert, plan.pki.cert_of(r).cert, "{what}: {file}");
            }
            if o.control {
                let p = proxy::Config::load(&dir.join(node_file(&proxies[0]))).unwrap();
                let mut listed = vec![p.control.coordinator.unwrap()];
                listed.extend(p.control.replicas.iter().copied());
                assert_eq!(listed, all, "{what}");
            }
            let upstream = if o.replicated() {
                addr(fig8::DNS_SECONDARY)
            } else {
                addr(fig8::TARGET_DNS)
            };
            assert_eq!(
                resolver.upstream,
                vec![SocketAddr::from((upstream, 53))],
                "{what}"
            );
            assert_eq!(dns.secondaries.len(), usize::from(o.replicated()), "{what}");
            let knot = std::fs::read_to_string(dir.join(KNOT_FILE)).ok();
            assert_eq!(knot.is_some(), o.replicated(), "{what}");
            if let Some(k) = knot {
                assert!(k.contains(&plan.secondary_secret), "{what}: {k}");
                assert!(built
                    .dns
                    .key
                    .iter()
                    .any(|k| k.secret == plan.secondary_secret));
            }
        }
    }
}
