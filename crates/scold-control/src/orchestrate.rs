//! What each step of a target's plan asks of each node, as data-plane commands.
//!
//! Pure: the coordinator gathers what it knows (the target's config, the tunnel end
//! points nodes announced when they registered, which proxies each gateway must admit)
//! and this module turns a step into orders. Every order is idempotent and states the
//! wanted end state (a gateway's peer list is synchronised, not appended to), so a
//! retried or re-driven step converges.

use crate::config::{Scheme, TargetConfig};
use scold_proto::control::TunnelInfo;
use scold_proto::dataplane::{Command, NatService, Peer, Prefix, Push, Route, Via};
use scold_proto::state::Step;
use std::net::{IpAddr, SocketAddr};

/// A node the coordinator knows, with the tunnel end point it announced.
#[derive(Debug, Clone)]
pub struct Known {
    pub name: String,
    /// The address clients reach it at (a proxy's, as published in DNS): what a
    /// scheme 4.3 proxy listens on, which may differ from its tunnel end point.
    pub address: Option<IpAddr>,
    pub tunnel: Option<TunnelInfo>,
}

/// Everything a step's orders depend on.
pub struct Context<'a> {
    pub target: &'a TargetConfig,
    /// The target's current proxy set.
    pub proxies: Vec<Known>,
    /// The target's gateways.
    pub gateways: Vec<Known>,
    /// Every proxy of the pool (a gateway is told to drop the ones it must not admit).
    pub pool: Vec<Known>,
    /// For each gateway of the target: the proxies it must admit, over every target
    /// that uses it and is diverted now.
    pub gateway_admits: Vec<(String, Vec<String>)>,
    /// Whether another diverted target still sends this proxy to the same gateway.
    pub gateway_shared: bool,
    /// Scheme 4.2: the client agents that are registered and up, with their address.
    pub clients: Vec<(String, IpAddr)>,
    /// The TCP port client agents take pushes on.
    pub push_port: u16,
}

/// FNV-1a: a hash that is the same in every build and on every host, so a client keeps
/// its proxy across coordinator restarts as long as the proxy set is the same.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Scheme 4.2: which proxy of `proxies` pushes to each client. Stable: each client's
/// name is hashed over the sorted proxy set, so the assignment depends only on the set,
/// spreads clients over it, and a client moves only when its proxy leaves the set (or
/// the set's size changes). Returns `(proxy, clients)` in proxy order.
pub fn assign_clients(proxies: &[String], clients: &[String]) -> Vec<(String, Vec<String>)> {
    let mut sorted: Vec<String> = proxies.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<(String, Vec<String>)> =
        sorted.iter().map(|p| (p.clone(), Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    for c in clients {
        let i = (stable_hash(c) % out.len() as u64) as usize;
        out[i].1.push(c.clone());
    }
    out
}

/// One order: which node, what to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub node: String,
    pub commands: Vec<Command>,
}

/// Why a step's orders cannot be written yet. The step stays pending and is retried:
/// each of these clears when the named node registers with what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{role} {name} has not announced its tunnel end point")]
    NoTunnel { role: &'static str, name: String },
    #[error("no gateway of target {target} has announced its tunnel end point")]
    NoGateway { target: String },
    #[error("proxy {name} is not in the target's set")]
    NotInSet { name: String },
    #[error("gateway {gateway} has not announced its address on the target's network")]
    NoInsideAddress { gateway: String },
}

fn tunnel<'a>(k: &'a Known, role: &'static str) -> Result<&'a TunnelInfo, PlanError> {
    k.tunnel.as_ref().ok_or_else(|| PlanError::NoTunnel {
        role,
        name: k.name.clone(),
    })
}

fn peer(k: &Known, role: &'static str) -> Result<Peer, PlanError> {
    let t = tunnel(k, role)?;
    Ok(Peer {
        name: k.name.clone(),
        address: t.endpoint.ip(),
        port: t.encap.uses_udp().then_some(t.endpoint.port()),
        encap: t.encap,
        public_key: t.public_key.clone(),
        keepalive_secs: None,
        engines: t.engines,
    })
}

/// The gateway a proxy sends this target's traffic to: the first one that announced
/// its tunnel end point.
fn gateway<'a>(ctx: &'a Context<'_>) -> Result<&'a Known, PlanError> {
    ctx.gateways
        .iter()
        .find(|g| g.tunnel.is_some())
        .ok_or_else(|| PlanError::NoGateway {
            target: ctx.target.name.clone(),
        })
}

fn nat_services(ctx: &Context<'_>, proxy: &Known) -> Result<Vec<NatService>, PlanError> {
    if ctx.target.scheme != Scheme::Nat {
        return Ok(Vec::new());
    }
    // Clients connect to the address the A records name, which is the proxy's public
    // address, not necessarily its tunnel end point.
    let listen_ip = match proxy.address {
        Some(a) => a,
        None => tunnel(proxy, "proxy")?.endpoint.ip(),
    };
    let mut out = Vec::new();
    for s in &ctx.target.services {
        for addr in &ctx.target.addresses {
            out.push(NatService {
                protocol: s.protocol,
                listen: SocketAddr::new(listen_ip, s.port),
                target: SocketAddr::new(*addr, s.port),
                proxy_protocol: s.proxy_protocol,
            });
        }
    }
    Ok(out)
}

/// The target-side address of the target's gateway: the next hop of its return path.
fn gateway_inside(ctx: &Context) -> Result<IpAddr, PlanError> {
    let gw = gateway(ctx)?;
    tunnel(gw, "gateway")?
        .inside
        .ok_or_else(|| PlanError::NoInsideAddress {
            gateway: gw.name.clone(),
        })
}

/// Scheme 4.3: a route (`add`) or its removal for each proxy of the set: a relayed flow
/// arrives from the source the proxy announced for its relays (its `[nat] source`), or
/// else from its tunnel end point, and goes back through the gateway.
fn nat_return_routes(ctx: &Context, inside: IpAddr, add: bool) -> Result<Vec<Command>, PlanError> {
    ctx.proxies
        .iter()
        .map(|p| {
            let t = tunnel(p, "proxy")?;
            let destination = Prefix::host(t.inside.unwrap_or(t.endpoint.ip()));
            Ok(if add {
                Command::AddRoute(Route {
                    destination,
                    via: Via::Gateway(inside),
                })
            } else {
                Command::RemoveRoute { destination }
            })
        })
        .collect()
}

/// The orders of `step`; an empty list means the step needs no node (DNS, drain).
pub fn orders(step: &Step, ctx: &Context<'_>) -> Result<Vec<Order>, PlanError> {
    let target_routes = || ctx.target.addresses.iter().map(|a| Prefix::host(*a));
    match step {
        Step::GatewaySetup | Step::GatewayTeardown => {
            let mut out = Vec::new();
            for (gw, admit) in &ctx.gateway_admits {
                let mut commands = Vec::new();
                for p in &ctx.pool {
                    if admit.contains(&p.name) {
                        commands.push(Command::AddPeer(peer(p, "proxy")?));
                    } else {
                        commands.push(Command::RemovePeer {
                            name: p.name.clone(),
                        });
                    }
                }
                out.push(Order {
                    node: gw.clone(),
                    commands,
                });
            }
            Ok(out)
        }
        Step::ProxySetup(p) => {
            let proxy = find(&ctx.proxies, p)?;
            let gw = gateway(ctx)?;
            let mut commands = vec![Command::AddPeer(peer(gw, "gateway")?)];
            commands.extend(target_routes().map(|destination| {
                Command::AddRoute(Route {
                    destination,
                    via: Via::Peer(gw.name.clone()),
                })
            }));
            commands.extend(
                nat_services(ctx, proxy)?
                    .into_iter()
                    .map(Command::AddNatService),
            );
            Ok(vec![Order {
                node: p.clone(),
                commands,
            }])
        }
        Step::PushRoutes => {
            if ctx.target.scheme != Scheme::Push || ctx.clients.is_empty() {
                return Ok(vec![]);
            }
            let names: Vec<String> = ctx.clients.iter().map(|(n, _)| n.clone()).collect();
            let set: Vec<String> = ctx.proxies.iter().map(|k| k.name.clone()).collect();
            let mut out = Vec::new();
            for (proxy, clients) in assign_clients(&set, &names) {
                if clients.is_empty() {
                    continue;
                }
                let commands = clients
                    .iter()
                    .filter_map(|c| ctx.clients.iter().find(|(n, _)| n == c))
                    .map(|(name, addr)| {
                        Command::PushRoute(Push {
                            client: name.clone(),
                            agent: SocketAddr::new(*addr, ctx.push_port),
                            fqdn: ctx.target.fqdn.clone(),
                            targets: ctx.target.addresses.clone(),
                        })
                    })
                    .collect();
                out.push(Order {
                    node: proxy,
                    commands,
                });
            }
            Ok(out)
        }
        Step::ProxyTeardown(p) => {
            let known = ctx.pool.iter().find(|k| &k.name == p);
            let proxy = Known {
                name: p.clone(),
                address: known.and_then(|k| k.address),
                tunnel: known.and_then(|k| k.tunnel.clone()),
            };
            let mut commands: Vec<Command> = nat_services(ctx, &proxy)
                .unwrap_or_default()
                .into_iter()
                .map(|n| Command::RemoveNatService {
                    protocol: n.protocol,
                    listen: n.listen,
                })
                .collect();
            if ctx.target.scheme == Scheme::Push {
                // Which clients this proxy pushed to depends on the set it was in; every
                // client is named and the proxy withdraws only what it pushed.
                commands.extend(ctx.clients.iter().map(|(_, addr)| Command::WithdrawPush {
                    agent: SocketAddr::new(*addr, ctx.push_port),
                    fqdn: ctx.target.fqdn.clone(),
                }));
            }
            commands
                .extend(target_routes().map(|destination| Command::RemoveRoute { destination }));
            if !ctx.gateway_shared {
                if let Ok(gw) = gateway(ctx) {
                    commands.push(Command::RemovePeer {
                        name: gw.name.clone(),
                    });
                }
            }
            Ok(vec![Order {
                node: p.clone(),
                commands,
            }])
        }
        Step::TargetRoutes if ctx.target.scheme != Scheme::Nat => Ok(Vec::new()),
        Step::TargetRoutes => Ok(vec![Order {
            // 4.3: every proxy of the set, including one that joined after the divert
            // (idempotent for the others).
            node: ctx.target.name.clone(),
            commands: nat_return_routes(ctx, gateway_inside(ctx)?, true)?,
        }]),
        Step::TargetSetup | Step::TargetTeardown => {
            // The return path: replies to diverted clients leave through the gateway.
            // Scheme 4.3 flows reach the target from the proxies' relays, so each
            // proxy's address is routed back through the gateway. In 4.1/4.2 clients
            // arrive with their own addresses, unknown in advance: the target marks
            // connections that come in from the gateway and routes their replies back
            // to it (no per-client state).
            let inside = gateway_inside(ctx)?;
            let setup = *step == Step::TargetSetup;
            let commands = if ctx.target.scheme == Scheme::Nat {
                nat_return_routes(ctx, inside, setup)?
            } else if setup {
                vec![Command::SetReturnPath { via: inside }]
            } else {
                vec![Command::ClearReturnPath]
            };
            Ok(vec![Order {
                node: ctx.target.name.clone(),
                commands,
            }])
        }
        Step::DnsPublish | Step::DnsRestore | Step::Drain | Step::NotifyResolvers => Ok(vec![]),
    }
}

fn find<'a>(ks: &'a [Known], name: &str) -> Result<&'a Known, PlanError> {
    ks.iter()
        .find(|k| k.name == name)
        .ok_or_else(|| PlanError::NotInSet {
            name: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Service;
    use scold_proto::dataplane::{Encap, Protocol, PublicKey};

    fn known(name: &str, ip: &str, inside: Option<&str>) -> Known {
        Known {
            name: name.into(),
            address: None,
            tunnel: Some(TunnelInfo {
                endpoint: format!("{ip}:51820").parse().unwrap(),
                encap: Encap::Wireguard,
                public_key: Some(PublicKey(format!("{}=", "A".repeat(43)))),
                inside: inside.map(|s| s.parse().unwrap()),
                engines: None,
            }),
        }
    }

    /// A node's engine count reaches the peers told about it, so their senders keep GSO
    /// runs to one steering bucket; one engine says nothing.
    #[test]
    fn a_gateways_engine_count_goes_into_its_peer_entry() {
        let mut g = known("g1", "203.0.113.9", Some("10.3.0.1"));
        assert_eq!(peer(&g, "gateway").unwrap().engines, None);
        g.tunnel.as_mut().unwrap().engines = Some(4);
        assert_eq!(peer(&g, "gateway").unwrap().engines, Some(4));
    }

    fn target(scheme: Scheme) -> TargetConfig {
        let text = format!(
            r#"
name = "web"
fqdn = "www.example.net."
zone = "example.net."
addresses = ["192.0.2.10"]
gateways = ["gw1"]
scheme = "{}"
services = ["tcp/80", "tcp/443+proxy", "udp/53"]
[dns]
server = "127.0.0.1:53"
key = "hmac-sha256:k:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg=="
"#,
            scheme.as_str()
        );
        toml::from_str(&text).unwrap()
    }

    fn ctx(t: &TargetConfig) -> Context<'_> {
        Context {
            target: t,
            proxies: vec![known("p1", "198.51.100.1", None)],
            gateways: vec![known("gw1", "203.0.113.9", Some("10.3.0.1"))],
            pool: vec![
                known("p1", "198.51.100.1", None),
                known("p2", "198.51.100.2", None),
            ],
            gateway_admits: vec![("gw1".into(), vec!["p1".into()])],
            gateway_shared: false,
            clients: vec![
                ("c1".into(), "10.9.0.2".parse().unwrap()),
                ("c2".into(), "10.9.0.3".parse().unwrap()),
            ],
            push_port: 5444,
        }
    }

    #[test]
    fn clients_are_spread_stably_over_the_proxies() {
        let names: Vec<String> = (0..200).map(|i| format!("client-{i}")).collect();
        let set = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let a = assign_clients(&set(&["p2", "p1", "p3"]), &names);
        // Sorted proxy order, every client exactly once, no proxy left idle.
        assert_eq!(
            a.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["p1", "p2", "p3"]
        );
        assert_eq!(a.iter().map(|(_, c)| c.len()).sum::<usize>(), 200);
        assert!(a.iter().all(|(_, c)| c.len() > 30), "{a:?}");
        // The same set in another order: the same assignment.
        assert_eq!(a, assign_clients(&set(&["p3", "p1", "p2"]), &names));
        // A replacement in the same position keeps everyone else in place.
        let b = assign_clients(&set(&["p1", "p2", "p4"]), &names);
        assert_eq!(a[0].1, b[0].1);
        assert_eq!(a[1].1, b[1].1);
        assert_eq!(a[2].1, b[2].1);
        assert!(assign_clients(&[], &names).is_empty());
    }

    #[test]
    fn push_scheme_pushes_to_every_client_and_withdraws_on_teardown() {
        let t = target(Scheme::Push);
        let mut c = ctx(&t);
        c.proxies.push(known("p2", "198.51.100.2", None));
        let o = orders(&Step::PushRoutes, &c).unwrap();
        let mut pushed: Vec<(String, String)> = Vec::new();
        for order in &o {
            for cmd in &order.commands {
                cmd.validate().unwrap();
                let Command::PushRoute(p) = cmd else {
                    panic!("{cmd:?}")
                };
                assert_eq!(p.fqdn, "www.example.net.");
                assert_eq!(p.targets, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
                assert_eq!(p.agent.port(), 5444);
                pushed.push((order.node.clone(), p.client.clone()));
            }
        }
        pushed.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(pushed.len(), 2, "{pushed:?}");
        assert_eq!(pushed[0].1, "c1");
        assert_eq!(pushed[1].1, "c2");
        let o = orders(&Step::ProxyTeardown("p1".into()), &c).unwrap();
        let withdrawn = o[0]
            .commands
            .iter()
            .filter(|c| matches!(c, Command::WithdrawPush { .. }))
            .count();
        assert_eq!(withdrawn, 2);
        // Other schemes push nothing.
        for scheme in [Scheme::Resolver, Scheme::Nat] {
            let t = target(scheme);
            assert!(orders(&Step::PushRoutes, &ctx(&t)).unwrap().is_empty());
            let o = orders(&Step::ProxyTeardown("p1".into()), &ctx(&t)).unwrap();
            assert!(!o[0]
                .commands
                .iter()
                .any(|c| matches!(c, Command::WithdrawPush { .. })));
        }
    }

    #[test]
    fn gateway_admits_exactly_the_set() {
        let t = target(Scheme::Resolver);
        let o = orders(&Step::GatewaySetup, &ctx(&t)).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].node, "gw1");
        assert!(
            matches!(&o[0].commands[0], Command::AddPeer(p) if p.name == "p1" && p.port == Some(51820))
        );
        assert_eq!(o[0].commands[1], Command::RemovePeer { name: "p2".into() });
    }

    #[test]
    fn proxy_setup_routes_the_target_to_the_gateway() {
        let t = target(Scheme::Resolver);
        let o = orders(&Step::ProxySetup("p1".into()), &ctx(&t)).unwrap();
        let c = &o[0].commands;
        assert!(
            matches!(&c[0], Command::AddPeer(p) if p.name == "gw1" && p.address.to_string() == "203.0.113.9")
        );
        assert_eq!(
            c[1],
            Command::AddRoute(Route {
                destination: "192.0.2.10/32".parse().unwrap(),
                via: Via::Peer("gw1".into())
            })
        );
        assert_eq!(c.len(), 2, "no NAT services outside scheme 4.3");
        for cmd in c {
            cmd.validate().unwrap();
        }
    }

    #[test]
    fn nat_scheme_relays_services_and_routes_proxies_back() {
        let t = target(Scheme::Nat);
        let o = orders(&Step::ProxySetup("p1".into()), &ctx(&t)).unwrap();
        let nat: Vec<&NatService> = o[0]
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::AddNatService(n) => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(nat.len(), 3);
        assert_eq!(nat[1].listen.to_string(), "198.51.100.1:443");
        assert!(nat[1].proxy_protocol);
        assert_eq!(nat[2].protocol, Protocol::Udp);
        let o = orders(&Step::TargetSetup, &ctx(&t)).unwrap();
        assert_eq!(
            o[0].commands,
            vec![Command::AddRoute(Route {
                destination: "198.51.100.1/32".parse().unwrap(),
                via: Via::Gateway("10.3.0.1".parse().unwrap())
            })]
        );
        let o = orders(&Step::ProxyTeardown("p1".into()), &ctx(&t)).unwrap();
        assert_eq!(o[0].commands.len(), 3 + 1 + 1);
        // A reset's replacement: the target routes every proxy of the set back.
        let o = orders(&Step::TargetRoutes, &ctx(&t)).unwrap();
        assert_eq!(o[0].node, "web");
        assert_eq!(
            o[0].commands,
            orders(&Step::TargetSetup, &ctx(&t)).unwrap()[0].commands
        );

        // A proxy whose public address is not its tunnel end point listens on the
        // public one (the A records name it), and one that announced the source of its
        // relays (`[nat] source`) has that routed back, not its end point.
        let mut c = ctx(&t);
        for k in c.proxies.iter_mut().chain(c.pool.iter_mut()) {
            if k.name == "p1" {
                k.address = Some("192.0.2.77".parse().unwrap());
                k.tunnel.as_mut().unwrap().inside = Some("100.64.0.1".parse().unwrap());
            }
        }
        let o = orders(&Step::ProxySetup("p1".into()), &c).unwrap();
        assert!(o[0].commands.iter().any(|cmd| matches!(cmd,
            Command::AddNatService(n) if n.listen.to_string() == "192.0.2.77:443")));
        let o = orders(&Step::TargetSetup, &c).unwrap();
        assert_eq!(
            o[0].commands,
            vec![Command::AddRoute(Route {
                destination: "100.64.0.1/32".parse().unwrap(),
                via: Via::Gateway("10.3.0.1".parse().unwrap())
            })]
        );
        let o = orders(&Step::ProxyTeardown("p1".into()), &c).unwrap();
        assert!(o[0].commands.iter().any(|cmd| matches!(cmd,
            Command::RemoveNatService { listen, .. } if listen.to_string() == "192.0.2.77:80")));
    }

    #[test]
    fn resolver_and_push_schemes_mark_the_return_path() {
        for scheme in [Scheme::Resolver, Scheme::Push] {
            let t = target(scheme);
            let o = orders(&Step::TargetSetup, &ctx(&t)).unwrap();
            assert_eq!(o[0].node, "web");
            assert_eq!(
                o[0].commands,
                vec![Command::SetReturnPath {
                    via: "10.3.0.1".parse().unwrap()
                }]
            );
            o[0].commands[0].validate().unwrap();
            let o = orders(&Step::TargetTeardown, &ctx(&t)).unwrap();
            assert_eq!(o[0].commands, vec![Command::ClearReturnPath]);
            // Their return path does not depend on the proxies: a reset asks nothing
            // of the target (which may be unreachable under attack).
            assert!(orders(&Step::TargetRoutes, &ctx(&t)).unwrap().is_empty());
        }
        // A gateway that did not announce its inside address: an error naming it.
        let t = target(Scheme::Resolver);
        let mut c = ctx(&t);
        c.gateways[0].tunnel.as_mut().unwrap().inside = None;
        let e = orders(&Step::TargetSetup, &c).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoInsideAddress {
                gateway: "gw1".into()
            }
        );
        assert!(e.to_string().contains("target's network"), "{e}");
    }

    #[test]
    fn missing_tunnel_info_is_an_error_that_names_the_node() {
        let t = target(Scheme::Resolver);
        let mut c = ctx(&t);
        c.gateways[0].tunnel = None;
        let e = orders(&Step::ProxySetup("p1".into()), &c).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoGateway {
                target: "web".into()
            }
        );
    }

    #[test]
    fn service_syntax() {
        let s: Service = "tcp/443+proxy".parse().unwrap();
        assert_eq!(
            (s.protocol, s.port, s.proxy_protocol),
            (Protocol::Tcp, 443, true)
        );
        assert!("sctp/1".parse::<Service>().is_err());
        assert!("tcp/0".parse::<Service>().is_err());
        assert!("udp/53+proxy".parse::<Service>().is_err());
    }
}
