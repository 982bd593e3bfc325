//! Every role of the Figure 8 testbed as a real `scold` process in its namespace, with
//! a CA, certificates, keys and config files generated for the run.
//!
//! | node         | process                 | what it gets                                          |
//! |--------------|-------------------------|-------------------------------------------------------|
//! | coordinator  | `scold coordinator`     | certificate, the target, its DNS and TSIG key, the proxies |
//! | coordinatorN | `scold coordinator`     | replicated control plane: replicas 2..N, each with its own certificate, sharing etcd |
//! | etcd1..3     | `etcd`                  | replicated control plane: the cluster the replicas keep their state and lead in |
//! | targetdns2   | `knotd`                 | replicated control plane: TargetDNS's secondary, following the hidden primary by NOTIFY and IXFR; ClientDNS asks it |
//! | targetdns    | `scold dns`             | zone `target.test` (`www` A = the target, TTL 10), the coordinator's TSIG key |
//! | clientdns    | `scold resolver`        | forwards to TargetDNS; the clients' resolv.conf names it |
//! | altgw        | `scold gateway`         | the proxies as peers, the site LAN                     |
//! | proxyN       | `scold proxy`           | the gateway as peer, a route to the target, client sessions |
//! | target       | `scold lab serve`       | HTTP on 80 and bulk TCP on 5001                        |
//! | target       | `scold target`          | return routes of diverted clients: static (while indirect), or linked to the coordinator with `[detect]` on the main link |
//! | clientN      | `scold client`          | 4.1: the client agent its resolv.conf names (admission with a proxy of the ALT set, tunnel, host route); otherwise a static tunnel to its proxy (while indirect; not in 4.3) |
//!
//! In scheme 4.3 the proxies also relay the target's HTTP and bulk ports as a NAT from
//! their own addresses, the target's return routes lead to the proxies' relay
//! addresses, and clients run no SCOLD software.
//!
//! In scheme 4.1 (unless static routes are asked for) proxies run their `[admission]`
//! service and clients the agent of scheme 4.1. With the data path linked to the
//! coordinator (`control`, the default there) the gateway, the proxies and a second
//! `scold target` take the coordinator's orders and nothing of the indirect route is
//! static: the divert sets the gateway's peers, the proxies' routes and the target's
//! return path up, publishes the ALT records and has the proxies send ClientDNS a
//! signed NOTIFY (each proxy has its own TSIG key there). The target's `[detect]`
//! watches its main link ([`DETECT_ALARM_AFTER_MS`], [`DETECT_HOLD_DOWN_MS`]), its
//! control channel leaves by the alternate uplink ([`Roles::start`] routes it through
//! the hidden gateway), and the proxies run `[selfdefence]` ([`PROXY_RX_PPS_MAX`]).
//! Without `control` the proxies' routes, the gateway's peers and the target's return
//! routes are static configs and the lab publishes ALT records itself with the
//! coordinator's TSIG key ([`Roles::set_alt`]). [`Roles::indirect_on`] and
//! [`Roles::indirect_off`] start and stop the static agents that switch a client
//! between the direct and the indirect route; the gateway and proxies run throughout,
//! as consortium infrastructure does.
//!
//! Each process writes its log to `<out>/logs/<label>.log`. A role that exits or does
//! not become ready fails the run with its log's last lines. Certificates, keys and
//! configs ([`crate::configs`]: each the daemon's own config struct, serialised) go
//! into the testbed's own files folder ([`Topology::files_dir`]), removed with it.
//!
//! [`Topology::files_dir`]: crate::topology::Topology::files_dir

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::configs::{self, ConfigPlan, Pki, RoleConfigs};
use crate::dnsq;
use crate::error::LabError;
use crate::fig8::{self, Fig8};
use crate::topology::LabProcess;

pub use crate::settings::*;

/// How to run the roles.
#[derive(Clone, Debug)]
pub struct RoleOptions {
    /// The `scold` binary.
    pub scold_bin: PathBuf,
    /// Where each process's log goes.
    pub log_dir: PathBuf,
    pub encap: Encap,
    pub scheme: Scheme,
    /// Scheme 4.1 with client agents (`scold client` with `[agent]`): each client's
    /// resolv.conf names its agent, which sets the route up when a lookup meets ALT
    /// records; proxies admit clients through their `[admission]` service. Otherwise
    /// the route comes from static configs.
    pub agent: bool,
    /// Give the gateway, the proxies and the target `[control]` tables, so they take
    /// the coordinator's orders and its divert can complete.
    pub control: bool,
    /// With `control`: the target's detector watches the main link and raises the
    /// alarm itself (`[detect]`), instead of the operator's `scold ctl divert`.
    pub detect: bool,
    /// Coordinator replicas (above one: on etcd, and TargetDNS with a secondary); the
    /// testbed must have been built with as many.
    pub coordinators: usize,
}

impl RoleOptions {
    /// What of these options the configs depend on.
    pub fn choices(&self) -> configs::Choices {
        configs::Choices {
            encap: self.encap,
            scheme: self.scheme,
            agent: self.agent,
            control: self.control,
            detect: self.detect,
            coordinators: self.coordinators,
        }
    }
}

/// The nftables table that counts a client's tunnel packets per proxy
/// ([`Roles::watch_tunnels`]).
const WATCH_TABLE: &str = "scold-lab-watch";
/// The nftables table that counts ClientDNS's queries to TargetDNS's primary and
/// secondary ([`Roles::dns_upstream_queries`]).
const DNS_WATCH_TABLE: &str = "scold-lab-dns";

/// The packet counter of every rule with a comment in `nft -j list` output, by comment.
fn counters_by_comment(v: &serde_json::Value) -> Vec<(String, u64)> {
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter_map(|rule| {
            let comment = rule.get("comment")?.as_str()?.to_string();
            let packets = rule
                .get("expr")?
                .as_array()?
                .iter()
                .find_map(|e| e.pointer("/counter/packets"))?
                .as_u64()?;
            Some((comment, packets))
        })
        .collect()
}

struct Running {
    label: String,
    program: String,
    log: PathBuf,
    proc: LabProcess,
}

/// The last `n` lines of a log file, each indented, after a newline; empty if none.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from(", which ends with:");
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str("\n    ");
        out.push_str(l);
    }
    out
}

/// The running roles of one testbed. Dropping it stops every process.
pub struct Roles<'a> {
    lab: &'a Fig8,
    opts: RoleOptions,
    /// CA, certificates, keys, configs, state files; removed with the testbed.
    dir: PathBuf,
    daemons: Vec<Running>,
    agents: Vec<Running>,
    /// What the configs were made from: certificates, keys, secrets, which proxy each
    /// client is given.
    plan: ConfigPlan,
    /// Client agents of scheme 4.1 (agent mode), running throughout: client node and
    /// process.
    client_agents: Vec<(String, Running)>,
}

impl<'a> Roles<'a> {
    /// Generates the PKI and configs and starts every long-running role: TargetDNS,
    /// ClientDNS, the coordinator, the gateway, the proxies and the target's services.
    /// Returns once each answers (or fails naming the role that did not).
    pub fn start(lab: &'a Fig8, opts: RoleOptions) -> Result<Roles<'a>, LabError> {
        if lab.proxies().is_empty() {
            return Err(LabError::BadSpec(
                "the indirect route needs at least one proxy (--proxies)".into(),
            ));
        }
        std::fs::create_dir_all(&opts.log_dir)
            .map_err(|e| LabError::io(format!("creating {}", opts.log_dir.display()), e))?;
        let dir = lab.files_dir()?;
        // The CA library logs each certificate; the progress display says it once.
        let pki = tracing::subscriber::with_default(
            tracing::subscriber::NoSubscriber::default(),
            || {
                Pki::issue(
                    &dir,
                    &lab.proxies(),
                    &lab.clients(),
                    &lab.coordinators()[1..],
                )
            },
        )?;
        let plan = ConfigPlan::new(
            dir.clone(),
            opts.choices(),
            lab.proxies(),
            lab.clients(),
            pki,
        )?;
        RoleConfigs::build(&plan).write(&dir)?;
        let mut roles = Roles {
            lab,
            opts,
            dir,
            daemons: Vec::new(),
            agents: Vec::new(),
            plan,
            client_agents: Vec::new(),
        };
        // With the scheme 4.1 agent the applications ask it, and it asks ClientDNS. In
        // 4.2 the agent only takes pushes: applications ask ClientDNS, as in 4.3.
        let resolver = if roles.resolver_agent() {
            AGENT_DNS
        } else {
            fig8::address_of(fig8::CLIENT_DNS).expect("in plan")
        };
        for c in lab.clients() {
            lab.set_resolv_conf(&c, &[resolver])?;
        }
        roles.start_daemons()?;
        if roles.plan.replicated() {
            roles.watch_dns_upstreams()?;
        }
        if roles.opts.agent {
            for c in lab.clients() {
                let r = roles.start_client_agent(&c)?;
                roles.client_agents.push((c, r));
            }
        }
        Ok(roles)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `scold <args>` in `node`, logging to `<log_dir>/<label>.log`.
    fn spawn(&self, node: &str, label: &str, args: &[&str]) -> Result<Running, LabError> {
        let mut all = vec!["--log", "info"];
        all.extend_from_slice(args);
        let program = format!("scold {}", args.first().copied().unwrap_or_default());
        self.spawn_program(node, label, &self.opts.scold_bin, &program, &all)
    }

    /// Starts `bin <args>` in `node` (shown as `program`), logging to
    /// `<log_dir>/<label>.log`.
    fn spawn_program(
        &self,
        node: &str,
        label: &str,
        bin: &Path,
        program: &str,
        args: &[&str],
    ) -> Result<Running, LabError> {
        let log = self.opts.log_dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| LabError::io(format!("creating {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
        let mut cmd = self.lab.command(node, bin)?;
        cmd.args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let program = program.to_string();
        let proc = self.lab.spawn(&format!("{node}: {program}"), &mut cmd)?;
        tracing::debug!(node, label, pid = proc.pid(), "role started");
        Ok(Running {
            label: label.to_string(),
            program,
            log,
            proc,
        })
    }

    fn failed(r: &Running, problem: String) -> LabError {
        LabError::Role {
            role: r.label.clone(),
            program: r.program.clone(),
            problem,
            log: r.log.clone(),
            tail: log_tail(&r.log, 15),
        }
    }

    /// Waits until `ready` holds, failing if the process exits first or `limit` passes.
    fn wait_ready(
        r: &mut Running,
        limit: Duration,
        mut ready: impl FnMut(&Running) -> bool,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = r.proc.try_wait()? {
                return Err(Self::failed(r, format!("exited at start ({st})")));
            }
            if ready(r) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Self::failed(
                    r,
                    format!("did not become ready within {:.0} s", limit.as_secs_f64()),
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn log_says(r: &Running, line: &str) -> bool {
        std::fs::read_to_string(&r.log)
            .map(|t| t.contains(line))
            .unwrap_or(false)
    }

    fn config_arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn start_daemons(&mut self) -> Result<(), LabError> {
        let lab = self.lab;
        let limit = Duration::from_secs(15);
        let target = fig8::TARGET_ADDR;
        if self.plan.replicated() {
            self.start_etcd()?;
        }

        let cfg = self.config_arg(configs::DNS_FILE);
        let mut dns = self.spawn(fig8::TARGET_DNS, "targetdns", &["dns", "--config", &cfg])?;
        let dns_addr: SocketAddr = (fig8::address_of(fig8::TARGET_DNS).expect("plan"), 53).into();
        let answers = |node: &str, server: SocketAddr| {
            let node = node.to_string();
            move |_: &Running| {
                lab.run_in(&node, || {
                    dnsq::query(
                        server,
                        &format!("{TARGET_FQDN}."),
                        1,
                        Duration::from_millis(300),
                    )
                })
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|a| a.a == [target])
            }
        };
        Self::wait_ready(&mut dns, limit, answers(fig8::TARGET_DNS, dns_addr))?;
        self.daemons.push(dns);

        if self.plan.replicated() {
            // The secondary serves the zone once its first transfer from the hidden
            // primary is in.
            crate::topology::require_tool("knotd", "knot")?;
            let cfg = self.config_arg(configs::KNOT_FILE);
            let mut sec = self.spawn_program(
                fig8::DNS_SECONDARY,
                "targetdns2",
                Path::new("knotd"),
                "knotd (TargetDNS secondary)",
                &["-c", &cfg],
            )?;
            let sec_addr: SocketAddr =
                (fig8::address_of(fig8::DNS_SECONDARY).expect("plan"), 53).into();
            Self::wait_ready(&mut sec, limit, answers(fig8::CLIENT_DNS, sec_addr))?;
            self.daemons.push(sec);
        }

        let cfg = self.config_arg(configs::RESOLVER_FILE);
        let mut res = self.spawn(
            fig8::CLIENT_DNS,
            "clientdns",
            &["resolver", "--config", &cfg],
        )?;
        let cdns: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("plan"), 53).into();
        Self::wait_ready(&mut res, limit, answers(&fig8::client(1), cdns))?;
        self.daemons.push(res);

        let cfg = self.config_arg(configs::COORDINATOR_FILE);
        let mut coord = self.spawn(
            fig8::COORDINATOR,
            "coordinator",
            &["coordinator", "--config", &cfg],
        )?;
        Self::wait_ready(&mut coord, limit, |r| {
            Self::log_says(r, "coordinator listening") && self.ctl(&["status"]).is_ok()
        })?;
        self.daemons.push(coord);
        // The other replicas find the first one leading and stand by.
        let standbys = self.plan.coordinators[1..].to_vec();
        for node in &standbys {
            let cfg = self.config_arg(&configs::node_file(node));
            let mut r = self.spawn(node, node, &["coordinator", "--config", &cfg])?;
            Self::wait_ready(&mut r, limit, |r| Self::log_says(r, "standing by"))?;
            self.daemons.push(r);
        }

        let cfg = self.config_arg(configs::GATEWAY_FILE);
        let mut gw = self.spawn(fig8::ALT_GW, "altgw", &["gateway", "--config", &cfg])?;
        Self::wait_ready(&mut gw, limit, |r| Self::log_says(r, "gateway running"))?;
        self.daemons.push(gw);

        for p in lab.proxies() {
            let cfg = self.config_arg(&configs::node_file(&p));
            let mut r = self.spawn(&p, &p, &["proxy", "--config", &cfg])?;
            Self::wait_ready(&mut r, limit, |r| Self::log_says(r, "proxy running"))?;
            self.daemons.push(r);
        }

        if self.opts.control {
            self.management_via_alt()?;
            let cfg = self.config_arg(configs::TARGET_CONTROL_FILE);
            let mut t = self.spawn(
                fig8::TARGET,
                "target-control",
                &["target", "--config", &cfg],
            )?;
            Self::wait_ready(&mut t, limit, |r| {
                Self::log_says(r, "registered with the coordinator")
            })?;
            self.daemons.push(t);
        }

        let mut serve = self.spawn(fig8::TARGET, "target-services", &["lab", "serve"])?;
        let http: SocketAddr = (target, crate::serve::DEFAULT_HTTP_PORT).into();
        let client = fig8::client(1);
        Self::wait_ready(&mut serve, limit, |_| {
            lab.run_in(&client, || {
                crate::measure::fetch_http(http, "target", "/0k", Duration::from_millis(500))
            })
            .ok()
            .and_then(|r| r.ok())
            .is_some()
        })?;
        self.daemons.push(serve);
        Ok(())
    }

    /// Replicated control plane: starts the etcd cluster (Debian `etcd-server`), one
    /// member in each `etcdN` namespace, and waits until the cluster answers a read.
    /// Each member keeps its data in the run's files folder. The timings are small (50
    /// ms heartbeat, 500 ms election) so that etcd's own elections are not what a
    /// coordinator takeover waits on.
    fn start_etcd(&mut self) -> Result<(), LabError> {
        crate::topology::require_tool("etcd", "etcd-server")?;
        let members = self.lab.etcd_members();
        let url = |node: &str, port: u16| {
            format!("http://{}:{port}", fig8::address_of(node).expect("plan"))
        };
        let cluster = members
            .iter()
            .map(|m| format!("{m}={}", url(m, ETCD_PEER_PORT)))
            .collect::<Vec<_>>()
            .join(",");
        let mut started = Vec::new();
        for m in &members {
            let data = self.path(&format!("{m}.etcd"));
            let data = data.display().to_string();
            let (client, peer) = (url(m, ETCD_CLIENT_PORT), url(m, ETCD_PEER_PORT));
            let r = self.spawn_program(
                m,
                m,
                Path::new("etcd"),
                "etcd",
                &[
                    "--name",
                    m,
                    "--data-dir",
                    &data,
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--log-level",
                    "warn",
                ],
            )?;
            started.push(r);
        }
        // Members wait for each other before they answer: ready together.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (r, endpoint) in started.iter_mut().zip(self.plan.etcd.clone()) {
            let left = deadline.saturating_duration_since(Instant::now());
            Self::wait_ready(r, left, |_| self.etcd_read(&[endpoint]).is_ok())?;
        }
        self.daemons.extend(started);
        Ok(())
    }

    /// Reads who leads the coordinator replicas from etcd (at `endpoints`), from the
    /// first coordinator's namespace.
    fn etcd_read(&self, endpoints: &[SocketAddr]) -> Result<Option<String>, LabError> {
        let etcd = scold_control::etcd::Etcd::new(endpoints.to_vec(), Duration::from_millis(500));
        self.lab
            .run_in(fig8::COORDINATOR, || {
                scold_control::coordinator::lead::leader(&etcd, ETCD_PREFIX)
            })?
            .map_err(|e| LabError::Protocol {
                peer: format!("etcd {endpoints:?}"),
                reason: e.to_string(),
            })
    }

    /// Replicated control plane: the node of the coordinator replica that leads now,
    /// by the leader key in etcd (`None` while no replica leads).
    pub fn leading_coordinator(&self) -> Result<Option<String>, LabError> {
        let holder = self.etcd_read(&self.plan.etcd)?;
        Ok(holder.map(|h| replica_of(&h).unwrap_or(h)))
    }

    /// The coordinator replicas' node names, the first one first.
    pub fn coordinators(&self) -> &[String] {
        &self.plan.coordinators
    }

    /// The log file of the running role labelled `label`.
    pub fn log_of(&self, label: &str) -> Option<PathBuf> {
        self.daemons
            .iter()
            .find(|r| r.label == label)
            .map(|r| r.log.clone())
    }

    /// Sends the target's control channel to the coordinator out through the site's
    /// alternate uplink rather than the main link: a host route for the coordinator's
    /// address via the hidden gateway, which masquerades that one connection behind its
    /// uplink address (the site segment behind it is not routed on the internet).
    ///
    /// Without it the alarm has to cross the link the flood fills: on the lab's shared
    /// 10 Mbit/s bottleneck the alarm's TLS records and their acknowledgements were
    /// lost often enough that the coordinator heard the alarm seconds late, and the
    /// channel's heartbeats timed out. A site that can still reach the coordinator
    /// through its alternate uplink does not depend on the attacked link to ask for
    /// help. Only the control connection takes this way; the gateway stays silent to
    /// everything else.
    fn management_via_alt(&self) -> Result<(), LabError> {
        crate::topology::require_tool("nft", "nftables")?;
        let target_ns = self.lab.netns(fig8::TARGET)?;
        let gw_ns = self.lab.netns(fig8::ALT_GW)?;
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", gw_ns, "nft"];
            all.extend_from_slice(args);
            crate::topology::run_cmd("ip", &all)
        };
        nft(&["add", "table", "ip", "scold-lab-mgmt"])?;
        nft(&[
            "add",
            "chain",
            "ip",
            "scold-lab-mgmt",
            "post",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ])?;
        // Every replica: whichever leads is where the target's alarm must go.
        for a in self.plan.coordinator_addrs() {
            let std::net::IpAddr::V4(coordinator) = a.ip() else {
                continue;
            };
            self.management_route(target_ns, gw_ns, coordinator, &nft)?;
        }
        Ok(())
    }

    /// [`Roles::management_via_alt`] for the coordinator (replica) at `coordinator`.
    fn management_route(
        &self,
        target_ns: &str,
        gw_ns: &str,
        coordinator: Ipv4Addr,
        nft: &dyn Fn(&[&str]) -> Result<String, LabError>,
    ) -> Result<(), LabError> {
        crate::topology::run_cmd(
            "ip",
            &[
                "-n",
                target_ns,
                "route",
                "replace",
                &format!("{coordinator}/32"),
                "via",
                &fig8::ALT_GW_SITE_ADDR.to_string(),
                "dev",
                fig8::TARGET_ALT_IF,
            ],
        )?;
        // The gateway sends everything from the site LAN into its tunnels (a policy
        // rule on the LAN interface); this one connection goes out by the main table.
        crate::topology::run_cmd(
            "ip",
            &[
                "-n",
                gw_ns,
                "rule",
                "add",
                "priority",
                "100",
                "iif",
                fig8::GW_SITE_IF,
                "from",
                &format!("{}/32", fig8::TARGET_ALT_ADDR),
                "to",
                &format!("{coordinator}/32"),
                "ipproto",
                "tcp",
                "dport",
                &COORDINATOR_PORT.to_string(),
                "lookup",
                "main",
            ],
        )?;
        nft(&[
            "add",
            "rule",
            "ip",
            "scold-lab-mgmt",
            "post",
            "ip",
            "saddr",
            &fig8::TARGET_ALT_ADDR.to_string(),
            "ip",
            "daddr",
            &coordinator.to_string(),
            "tcp",
            "dport",
            &COORDINATOR_PORT.to_string(),
            "oifname",
            fig8::GW_UP_IF,
            "masquerade",
        ])?;
        Ok(())
    }

    /// `ip netns exec <coordinator's namespace> scold ctl --json ... ARGS` as one argument
    /// list, for a thread that polls the coordinator while the lab does other work.
    pub fn ctl_argv(&self, args: &[&str]) -> Result<Vec<String>, LabError> {
        let mut v = vec![
            "netns".to_string(),
            "exec".into(),
            self.lab.netns(fig8::COORDINATOR)?.to_string(),
            self.opts.scold_bin.display().to_string(),
        ];
        v.extend(self.ctl_args(args));
        Ok(v)
    }

    fn ctl_args(&self, args: &[&str]) -> Vec<String> {
        // Replicas: every one, in order; `scold ctl` talks to whichever listens (the
        // leader: standbys do not listen).
        let coordinator = if self.plan.replicated() {
            self.plan
                .coordinator_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!("127.0.0.1:{COORDINATOR_PORT}")
        };
        let mut all: Vec<String> = [
            "--log",
            "warn",
            "ctl",
            "--coordinator",
            &coordinator,
            "--timeout",
            "5",
            "--json",
            "--ca",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.push(self.plan.pki.operator.ca_cert.display().to_string());
        all.push("--cert".into());
        all.push(self.plan.pki.operator.cert.display().to_string());
        all.push("--key".into());
        all.push(self.plan.pki.operator.key.display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        all
    }

    /// Runs `scold ctl --json ARGS` as the lab's operator inside the coordinator's
    /// namespace and returns its JSON reply.
    pub fn ctl(&self, args: &[&str]) -> Result<serde_json::Value, LabError> {
        let all = self.ctl_args(args);
        let out = self.lab.exec(
            fig8::COORDINATOR,
            &self.opts.scold_bin.display().to_string(),
            &all,
            Duration::from_secs(10),
        )?;
        serde_json::from_slice(&out.stdout).map_err(|e| LabError::Protocol {
            peer: "scold ctl".into(),
            reason: format!(
                "its output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }

    /// The coordinator's audit log, oldest first (`scold ctl --json events`): what
    /// [`crate::audit`] takes the divert, reset and restore times from.
    pub fn events(&self) -> Result<Vec<scold_proto::control::EventView>, LabError> {
        let v = self.ctl(&["events", "--limit", "5000"])?;
        match serde_json::from_value(v.clone()) {
            Ok(scold_proto::control::Reply::Events { events }) => Ok(events),
            _ => Err(LabError::Protocol {
                peer: "scold ctl events".into(),
                reason: format!("its reply is not an event list: {v}"),
            }),
        }
    }

    /// Starts the agents that put every client on the indirect route: the target's
    /// return path and each client's agent. Returns without waiting for the route.
    pub fn indirect_on(&mut self) -> Result<(), LabError> {
        if !self.agents.is_empty() || self.opts.control {
            // Linked to the coordinator, the target's return path is the one its
            // divert set up (in the `scold target` that runs throughout).
            return Ok(());
        }
        let cfg = self.config_arg(configs::TARGET_FILE);
        let mut t = self.spawn(fig8::TARGET, "target-agent", &["target", "--config", &cfg])?;
        if self.opts.agent {
            // The site's side is in place before clients look the name up, as after a
            // divert; the agent's set-up time is then the client's alone.
            Self::wait_ready(&mut t, Duration::from_secs(15), |r| {
                Self::log_says(r, "target return path ready")
            })?;
        }
        self.agents.push(t);
        if self.opts.scheme == Scheme::Nat || self.opts.agent {
            // Clients run no SCOLD software in 4.3: they talk to the proxy's address.
            // Client agents (4.1) run throughout and set the route up on a lookup.
            return Ok(());
        }
        for (c, _) in self.plan.assignment.clone() {
            let cfg = self.config_arg(&configs::node_file(&c));
            let r = self.spawn(&c, &format!("{c}-agent"), &["client", "--config", &cfg])?;
            self.agents.push(r);
        }
        Ok(())
    }

    /// Starts `client`'s agent and waits until it answers DNS.
    fn start_client_agent(&self, client: &str) -> Result<Running, LabError> {
        let cfg = self.config_arg(&configs::node_file(client));
        let mut r = self.spawn(
            client,
            &format!("{client}-agent"),
            &["client", "--config", &cfg],
        )?;
        Self::wait_ready(&mut r, Duration::from_secs(15), |r| {
            Self::log_says(r, "client agent answering DNS")
        })?;
        Ok(r)
    }

    /// Whether the clients run agents (4.1 or 4.2 without static routes).
    pub fn agent_mode(&self) -> bool {
        self.opts.agent
    }

    /// Whether the data path is linked to the coordinator (its divert lays the route
    /// out).
    pub fn linked(&self) -> bool {
        self.opts.control
    }

    /// Whether the clients run the scheme 4.1 agent, which sets the route up when an
    /// application looks the name up through it.
    pub fn resolver_agent(&self) -> bool {
        self.opts.agent && self.opts.scheme == Scheme::Resolver
    }

    /// Scheme 4.3 as an unmodified client sees it: client 1 looks the target's name up
    /// at ClientDNS (as its resolv.conf says) and connects to the first address. Returns
    /// that address and the proxy node it belongs to (`None` when it is not a proxy's,
    /// e.g. the target's own before a divert).
    pub fn nat_lookup(&self) -> Result<(Ipv4Addr, Option<String>), LabError> {
        let server: SocketAddr = (fig8::address_of(fig8::CLIENT_DNS).expect("plan"), 53).into();
        let a = self.lab.run_in(&fig8::client(1), || {
            dnsq::query(
                server,
                &format!("{TARGET_FQDN}."),
                1,
                Duration::from_secs(2),
            )
        })??;
        let first = *a.a.first().ok_or_else(|| LabError::Protocol {
            peer: format!("ClientDNS {server}"),
            reason: format!("no A record for {TARGET_FQDN} (rcode {})", a.rcode),
        })?;
        let proxy = self
            .lab
            .proxies()
            .into_iter()
            .find(|p| fig8::address_of(p) == Some(first));
        Ok((first, proxy))
    }

    /// Scheme 4.2: whether client 1's route to the target goes into its agent's
    /// tunnel (`ip route get`), i.e. a proxy's push is in place.
    pub fn pushed_route(&self) -> Result<bool, LabError> {
        let out = crate::topology::run_cmd(
            "ip",
            &[
                "-n",
                self.lab.netns(&fig8::client(1))?,
                "route",
                "get",
                &fig8::TARGET_ADDR.to_string(),
            ],
        )?;
        Ok(out.contains(&format!("dev {CLIENT_TUN}")))
    }

    /// Agent mode: stops each client agent (SIGTERM: it removes its tunnel and routes)
    /// and starts it again, so the next lookup sets the route up from nothing. Earlier
    /// logs are kept as `<client>-agent.N.log`.
    pub fn restart_client_agents(&mut self) -> Result<(), LabError> {
        for (c, mut r) in std::mem::take(&mut self.client_agents) {
            match r.proc.stop(Duration::from_secs(5))? {
                Some(st) if st.success() => {}
                st => return Err(Self::failed(&r, format!("did not stop cleanly ({st:?})"))),
            }
            let mut n = 1;
            let kept = loop {
                let k = self.opts.log_dir.join(format!("{c}-agent.{n}.log"));
                if !k.exists() {
                    break k;
                }
                n += 1;
            };
            let _ = std::fs::rename(&r.log, kept);
            let fresh = self.start_client_agent(&c)?;
            self.client_agents.push((c, fresh));
        }
        Ok(())
    }

    /// Counts `client`'s tunnel packets to each proxy from now on: an nftables table in
    /// the client's namespace (which the lab made) with one counter per proxy, read by
    /// [`Roles::tunnel_packets`]. Which proxy a client agent's tunnel goes through is
    /// then read off the data path, not out of what the agent logs. Installing it again
    /// starts the counters over.
    pub fn watch_tunnels(&self, client: &str) -> Result<(), LabError> {
        crate::topology::require_tool("nft", "nftables")?;
        let ns = self.lab.netns(client)?;
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "nft"];
            all.extend_from_slice(args);
            crate::topology::run_cmd("ip", &all)
        };
        nft(&["add", "table", "ip", WATCH_TABLE])?;
        nft(&["flush", "table", "ip", WATCH_TABLE])?;
        nft(&[
            "add",
            "chain",
            "ip",
            WATCH_TABLE,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ])?;
        let port = TUNNEL_PORT.to_string();
        // Tunnel packets only: the agent's admission connections and probes go to
        // every proxy of the ALT set, its tunnel to one.
        let tunnel: &[&str] = match self.opts.encap {
            Encap::Ipip => &["ip", "protocol", "4"],
            Encap::Udp | Encap::Wireguard => &["udp", "dport", &port],
        };
        for p in self.lab.proxies() {
            let addr = fig8::address_of(&p).expect("plan").to_string();
            let comment = format!("\"{p}\"");
            let mut rule = vec![
                "add",
                "rule",
                "ip",
                WATCH_TABLE,
                "out",
                "ip",
                "daddr",
                &addr,
            ];
            rule.extend_from_slice(tunnel);
            rule.extend_from_slice(&["counter", "comment", &comment]);
            nft(&rule)?;
        }
        Ok(())
    }

    /// Replicated control plane: counts, in ClientDNS's namespace, every packet it sends
    /// to port 53 of TargetDNS's secondary and of its hidden primary, so the report
    /// shows from the data path which of the two the clients' lookups went to.
    fn watch_dns_upstreams(&self) -> Result<(), LabError> {
        crate::topology::require_tool("nft", "nftables")?;
        let ns = self.lab.netns(fig8::CLIENT_DNS)?;
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "nft"];
            all.extend_from_slice(args);
            crate::topology::run_cmd("ip", &all)
        };
        nft(&["add", "table", "ip", DNS_WATCH_TABLE])?;
        nft(&[
            "add",
            "chain",
            "ip",
            DNS_WATCH_TABLE,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ])?;
        for (node, comment) in [
            (fig8::DNS_SECONDARY, "\"secondary\""),
            (fig8::TARGET_DNS, "\"primary\""),
        ] {
            let addr = fig8::address_of(node).expect("plan").to_string();
            nft(&[
                "add",
                "rule",
                "ip",
                DNS_WATCH_TABLE,
                "out",
                "ip",
                "daddr",
                &addr,
                "meta",
                "l4proto",
                "{ tcp, udp }",
                "th",
                "dport",
                "53",
                "counter",
                "comment",
                comment,
            ])?;
        }
        Ok(())
    }

    /// Replicated control plane: packets ClientDNS sent to TargetDNS's secondary and to
    /// its hidden primary since the roles started, as (secondary, primary).
    pub fn dns_upstream_queries(&self) -> Result<(u64, u64), LabError> {
        let out = crate::topology::run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                self.lab.netns(fig8::CLIENT_DNS)?,
                "nft",
                "-j",
                "list",
                "table",
                "ip",
                DNS_WATCH_TABLE,
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Protocol {
            peer: "nft -j".into(),
            reason: format!("{e}: {out}"),
        })?;
        let counts = counters_by_comment(&v);
        let of = |c: &str| -> u64 { counts.iter().filter(|(n, _)| n == c).map(|(_, p)| p).sum() };
        Ok((of("secondary"), of("primary")))
    }

    /// `client`'s tunnel packets to each proxy since [`Roles::watch_tunnels`], by proxy
    /// node.
    pub fn tunnel_packets(&self, client: &str) -> Result<Vec<(String, u64)>, LabError> {
        let out = crate::topology::run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                self.lab.netns(client)?,
                "nft",
                "-j",
                "list",
                "table",
                "ip",
                WATCH_TABLE,
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Protocol {
            peer: "nft -j".into(),
            reason: format!("{e}: {out}"),
        })?;
        Ok(counters_by_comment(&v))
    }

    /// Publishes (or with an empty list withdraws) the target's ALT records at
    /// TargetDNS with a TSIG-signed update under the coordinator's key, sent from the
    /// coordinator's namespace: what the coordinator's divert does, done by the lab.
    pub fn set_alt(&self, proxies: &[Ipv4Addr]) -> Result<(), LabError> {
        let key = scold_dns::tsig::TsigKey::new(
            configs::UPDATE_KEY_NAME,
            scold_dns::tsig::TsigAlgorithm::HmacSha256,
            &self.plan.dns_secret,
        )
        .map_err(|e| LabError::BadSpec(format!("the lab's TSIG key: {e}")))?;
        let server: SocketAddr = (fig8::address_of(fig8::TARGET_DNS).expect("plan"), 53).into();
        let updater = scold_dns::updater::Updater::new(server, key);
        let addrs: Vec<IpAddr> = proxies.iter().map(|&a| a.into()).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::io("starting a DNS update runtime", e))?;
        self.lab
            .run_in(fig8::COORDINATOR, || {
                rt.block_on(updater.set_alt(ZONE, TARGET_FQDN, &addrs, DNS_TTL))
            })?
            .map_err(|e| LabError::Protocol {
                peer: format!("TargetDNS {server}"),
                reason: format!("the signed ALT update for {TARGET_FQDN} failed: {e}"),
            })
    }

    /// Kills `proxy`'s process outright (SIGKILL, as a crash or an overwhelmed host
    /// would stop answering) and waits for it.
    pub fn kill_proxy(&mut self, proxy: &str) -> Result<(), LabError> {
        self.kill_daemon(proxy)
    }

    /// Kills the long-running role labelled `label` (a proxy's node name,
    /// `coordinator`, ...) with SIGKILL and waits for it.
    pub fn kill_daemon(&mut self, label: &str) -> Result<(), LabError> {
        let r = self
            .daemons
            .iter_mut()
            .find(|r| r.label == label)
            .ok_or_else(|| LabError::BadSpec(format!("no running role {label}")))?;
        r.proc.kill()?;
        Ok(())
    }

    /// Starts a killed `proxy` again from its config and waits until it runs.
    pub fn restart_proxy(&mut self, proxy: &str) -> Result<(), LabError> {
        self.restart_daemon(proxy)
    }

    /// Starts the killed role labelled `label` again from its config (a proxy or the
    /// coordinator, which keeps its state file) and waits until it runs; the old log is
    /// kept beside the new one as `<label>.<n>.log`.
    pub fn restart_daemon(&mut self, label: &str) -> Result<(), LabError> {
        let i = self
            .daemons
            .iter()
            .position(|r| r.label == label)
            .ok_or_else(|| LabError::BadSpec(format!("no role {label}")))?;
        let old = self.daemons.remove(i);
        let mut n = 1;
        let kept = loop {
            let k = self.opts.log_dir.join(format!("{label}.{n}.log"));
            if !k.exists() {
                break k;
            }
            n += 1;
        };
        let _ = std::fs::rename(&old.log, kept);
        drop(old);
        let limit = Duration::from_secs(15);
        let r = if label == "coordinator" {
            let cfg = self.config_arg(configs::COORDINATOR_FILE);
            let mut r = self.spawn(fig8::COORDINATOR, label, &["coordinator", "--config", &cfg])?;
            Self::wait_ready(&mut r, limit, |r| {
                Self::log_says(r, "coordinator listening") && self.ctl(&["status"]).is_ok()
            })?;
            r
        } else {
            let cfg = self.config_arg(&configs::node_file(label));
            let mut r = self.spawn(label, label, &["proxy", "--config", &cfg])?;
            Self::wait_ready(&mut r, limit, |r| Self::log_says(r, "proxy running"))?;
            r
        };
        self.daemons.insert(i, r);
        Ok(())
    }

    /// A certificate of `role` for `name` from the run's CA, with `ip` as its address:
    /// what a member of the consortium holds, here for a member that turns on it.
    pub fn issue_cert(
        &self,
        role: scold_pki::Role,
        name: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<scold_pki::IssuedPaths, LabError> {
        let pki = |e: scold_pki::PkiError| LabError::BadSpec(format!("lab PKI: {e}"));
        let mut ca = scold_pki::Ca::open(&self.dir.join("ca")).map_err(pki)?;
        let id =
            scold_pki::Identity::new(role, name).map_err(|e| LabError::BadSpec(e.to_string()))?;
        let ips: Vec<IpAddr> = ip.into_iter().map(IpAddr::V4).collect();
        ca.issue(
            &id,
            &ips,
            &[],
            scold_pki::Validity::days(2),
            &self.dir.join(format!("{}-{name}", role.as_str())),
        )
        .map_err(pki)
    }

    /// Revokes every certificate of the proxy `node` and writes the run's CRL anew (the
    /// file every role's `[tls]` names), as `scold ca revoke` and `scold ca crl` would.
    pub fn revoke_proxy(&self, node: &str) -> Result<(), LabError> {
        let pki = |e: scold_pki::PkiError| LabError::BadSpec(format!("lab PKI: {e}"));
        let mut ca = scold_pki::Ca::open(&self.dir.join("ca")).map_err(pki)?;
        let id = scold_pki::Identity::new(scold_pki::Role::Proxy, node)
            .map_err(|e| LabError::BadSpec(e.to_string()))?;
        let revoked = ca
            .revoke(&scold_pki::RevokeTarget::Identity(id))
            .map_err(pki)?;
        if revoked.is_empty() {
            return Err(LabError::BadSpec(format!(
                "the lab CA holds no certificate of proxy {node} to revoke"
            )));
        }
        ca.write_crl(2).map_err(pki)?;
        Ok(())
    }

    /// The consortium CA certificate of the run, and its CRL.
    pub fn ca_files(&self) -> (PathBuf, PathBuf) {
        let c = &self.plan.pki.coordinator;
        (c.ca_cert.clone(), c.crl.clone())
    }

    /// Fails naming the agent if one exited.
    pub fn check_agents(&mut self) -> Result<(), LabError> {
        for (_, r) in &mut self.client_agents {
            if let Some(st) = r.proc.try_wait()? {
                return Err(Self::failed(r, format!("exited ({st})")));
            }
        }
        for r in &mut self.agents {
            if let Some(st) = r.proc.try_wait()? {
                return Err(Self::failed(r, format!("exited ({st})")));
            }
        }
        Ok(())
    }

    /// Stops the indirect-route agents (SIGTERM: each removes its routes) and waits for
    /// them; an agent that does not stop cleanly is an error.
    pub fn indirect_off(&mut self) -> Result<(), LabError> {
        let mut first_err = None;
        for mut r in std::mem::take(&mut self.agents) {
            match r.proc.stop(Duration::from_secs(5)) {
                Ok(Some(st)) if st.success() => {}
                Ok(st) => {
                    let problem = match st {
                        Some(st) => format!("did not stop cleanly ({st})"),
                        None => "had already exited".into(),
                    };
                    first_err.get_or_insert(Self::failed(&r, problem));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the indirect-route agents run.
    pub fn indirect(&self) -> bool {
        !self.agents.is_empty()
    }

    /// Fails naming the role if a long-running one exited.
    pub fn check(&mut self) -> Result<(), LabError> {
        for r in &mut self.daemons {
            if let Some(st) = r.proc.try_wait()? {
                return Err(Self::failed(
                    r,
                    format!("exited while the run needed it ({st})"),
                ));
            }
        }
        self.check_agents()
    }

    /// The proxy that serves `client`.
    pub fn proxy_of(&self, client: &str) -> Option<&str> {
        self.plan
            .assignment
            .iter()
            .find(|(c, _)| c == client)
            .map(|(_, p)| p.as_str())
    }

    /// Bytes the hidden gateway took from the site into its tunnels (what its TUN
    /// device transmitted, from `ip -s link`): every byte the target sends over the
    /// indirect route passes there, whatever the scheme.
    pub fn gateway_tunnel_bytes(&self) -> Result<u64, LabError> {
        let out = crate::topology::run_cmd(
            "ip",
            &[
                "-j",
                "-s",
                "-n",
                self.lab.netns(fig8::ALT_GW)?,
                "link",
                "show",
                "dev",
                GATEWAY_TUN,
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Protocol {
            peer: "ip -j -s link".into(),
            reason: e.to_string(),
        })?;
        v.get(0)
            .and_then(|l| l.pointer("/stats64/tx/bytes"))
            .and_then(|b| b.as_u64())
            .ok_or_else(|| LabError::Protocol {
                peer: "ip -j -s link".into(),
                reason: format!(
                    "no tx byte count for {GATEWAY_TUN} on {}: {out}",
                    fig8::ALT_GW
                ),
            })
    }

    /// The scheme the roles run.
    pub fn scheme(&self) -> Scheme {
        self.opts.scheme
    }

    /// Stops every process (agents first), in reverse start order.
    pub fn stop_all(&mut self) -> Result<(), LabError> {
        let agents = self.indirect_off();
        for (_, mut r) in std::mem::take(&mut self.client_agents) {
            let _ = r.proc.stop(Duration::from_secs(5));
        }
        for mut r in std::mem::take(&mut self.daemons).into_iter().rev() {
            let _ = r.proc.stop(Duration::from_secs(3));
        }
        agents
    }

    /// Where the logs are.
    pub fn log_dir(&self) -> &Path {
        &self.opts.log_dir
    }
}

/// The node a coordinator replica's leader key names: the replica writes
/// `coordinator/<name> at <address>` there, and the lab names each replica's
/// certificate after its node.
pub fn replica_of(holder: &str) -> Option<String> {
    let who = holder.split(" at ").next()?;
    who.strip_prefix("coordinator/").map(str::to_string)
}

impl Drop for Roles<'_> {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_counters_are_read_by_comment() {
        // As `nft -j list table ip scold-lab-watch` prints it (nftables 1.0).
        let v = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": WATCH_TABLE, "handle": 1}},
            {"chain": {"family": "ip", "table": WATCH_TABLE, "name": "out", "handle": 1,
                       "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": WATCH_TABLE, "chain": "out", "handle": 2,
                      "comment": "proxy1", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": "198.18.16.2"}},
                {"counter": {"packets": 41, "bytes": 5412}}]}},
            {"rule": {"family": "ip", "table": WATCH_TABLE, "chain": "out", "handle": 3,
                      "comment": "proxy2", "expr": [
                {"counter": {"packets": 0, "bytes": 0}}]}},
            {"rule": {"family": "ip", "table": WATCH_TABLE, "chain": "out", "handle": 4,
                      "expr": [{"counter": {"packets": 7, "bytes": 0}}]}}
        ]});
        assert_eq!(
            counters_by_comment(&v),
            vec![("proxy1".to_string(), 41), ("proxy2".to_string(), 0)]
        );
        assert!(counters_by_comment(&serde_json::json!({"error": 1})).is_empty());
    }

    #[test]
    fn the_leader_key_names_the_replicas_node() {
        assert_eq!(
            replica_of("coordinator/coordinator2 at 0.0.0.0:7800").as_deref(),
            Some("coordinator2")
        );
        assert_eq!(replica_of("proxy/p1 at 1.2.3.4:1"), None);
    }
}
