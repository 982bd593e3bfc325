//! Declarative testbed topologies built from network namespaces and veth links.
//!
//! A [`Spec`] lists nodes, point-to-point links with their addresses, static routes,
//! policy rules, permanent neighbour entries and token-bucket filters (the bottleneck). [`Topology::build`] creates it with iproute2 (`ip`, `tc`):
//! one namespace per node, veth pairs created directly inside their namespaces (so no
//! interface ever appears in the host's namespace and interface names only need to be
//! unique per node), forwarding on routers, and a token-bucket filter on each shaped interface.
//!
//! Clean-up is complete by construction: nothing is created outside the run's
//! namespaces, so deleting them removes every link, address and route. Every process is
//! started through [`Topology::spawn`] or found in a namespace at tear-down, and is killed
//! by PID. A run registers itself in a process-wide list as soon as it starts building, so
//! a signal handler can tear down every live run ([`teardown_all_live`]) and a later
//! `scold lab cleanup` can remove what a killed run left ([`cleanup_leftovers`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::net::Ipv4Net;

/// Every namespace the lab creates starts with this, and `scold lab cleanup` touches
/// nothing else.
pub const NETNS_PREFIX: &str = "scoldlab-";

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns exec` finds per-namespace files that it bind-mounts over `/etc`
/// (`/etc/netns/<ns>/resolv.conf`). The only thing the lab writes outside its
/// namespaces; tear-down and `scold lab cleanup` remove it.
pub const NETNS_ETC_DIR: &str = "/etc/netns";

const MAX_NODE_NAME: usize = 24;
const MAX_IFNAME: usize = 15;

/// One node: a host or a router, each in its own network namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// Routers forward IPv4 between their links.
    pub router: bool,
}

/// One end of a link.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub node: String,
    /// Interface name inside the node (at most 15 characters).
    pub ifname: String,
    /// Interface address with the link's prefix length.
    pub addr: Ipv4Net,
}

/// A veth pair between two nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub a: Endpoint,
    pub b: Endpoint,
}

/// A static route; `dest: None` is the default route.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteSpec {
    pub node: String,
    pub dest: Option<Ipv4Net>,
    pub via: Ipv4Addr,
    /// Routing table (main when `None`).
    #[serde(default)]
    pub table: Option<u32>,
    /// Output interface with the gateway taken as on-link (no subnet check).
    #[serde(default)]
    pub onlink_dev: Option<String>,
}

/// A policy rule: packets arriving on `iif` use routing table `table`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleSpec {
    pub node: String,
    pub iif: String,
    pub table: u32,
}

/// A permanent neighbour entry (`ip neigh add ... nud permanent`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeighSpec {
    pub node: String,
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub lladdr: String,
}

/// A fixed MAC address for one interface.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacSpec {
    pub node: String,
    pub ifname: String,
    pub mac: String,
}

/// Token-bucket filter parameters, as `tc qdisc ... tbf` takes them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tbf {
    /// Sustained rate in bits per second.
    pub rate_bit: u64,
    /// Bucket size in bytes; at least one full-size frame.
    pub burst_bytes: u32,
    /// Longest time a packet may wait in the queue; sets the queue length.
    pub latency_ms: u32,
}

impl Default for Tbf {
    fn default() -> Self {
        Tbf {
            rate_bit: 10_000_000,
            burst_bytes: 16 * 1024,
            latency_ms: 50,
        }
    }
}

/// A token-bucket filter on one interface's egress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shaper {
    pub node: String,
    pub ifname: String,
    pub tbf: Tbf,
}

/// A declarative topology.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    pub nodes: Vec<NodeSpec>,
    pub links: Vec<LinkSpec>,
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub neighbours: Vec<NeighSpec>,
    #[serde(default)]
    pub macs: Vec<MacSpec>,
    pub shapers: Vec<Shaper>,
}

impl Spec {
    pub fn new() -> Self {
        Spec::default()
    }

    /// Adds a host.
    pub fn host(&mut self, name: &str) -> &mut Self {
        self.nodes.push(NodeSpec {
            name: name.to_string(),
            router: false,
        });
        self
    }

    /// Adds a router (IPv4 forwarding on).
    pub fn router(&mut self, name: &str) -> &mut Self {
        self.nodes.push(NodeSpec {
            name: name.to_string(),
            router: true,
        });
        self
    }

    /// Adds a link `a` -- `b`; each side is `(node, ifname, "addr/len")`.
    pub fn link(
        &mut self,
        name: &str,
        a: (&str, &str, &str),
        b: (&str, &str, &str),
    ) -> Result<&mut Self, LabError> {
        let ep = |(node, ifname, addr): (&str, &str, &str)| -> Result<Endpoint, LabError> {
            Ok(Endpoint {
                node: node.to_string(),
                ifname: ifname.to_string(),
                addr: addr.parse()?,
            })
        };
        self.links.push(LinkSpec {
            name: name.to_string(),
            a: ep(a)?,
            b: ep(b)?,
        });
        Ok(self)
    }

    /// Adds a route on `node` to `dest` (`None`: default route) via `via`.
    pub fn route(&mut self, node: &str, dest: Option<Ipv4Net>, via: Ipv4Addr) -> &mut Self {
        self.routes.push(RouteSpec {
            node: node.to_string(),
            dest,
            via,
            table: None,
            onlink_dev: None,
        });
        self
    }

    /// Adds a route in routing `table` through `dev`, gateway taken as on-link.
    pub fn table_route(
        &mut self,
        node: &str,
        table: u32,
        dest: Option<Ipv4Net>,
        via: Ipv4Addr,
        dev: &str,
    ) -> &mut Self {
        self.routes.push(RouteSpec {
            node: node.to_string(),
            dest,
            via,
            table: Some(table),
            onlink_dev: Some(dev.to_string()),
        });
        self
    }

    /// Packets arriving on `iif` of `node` use routing table `table`.
    pub fn rule(&mut self, node: &str, iif: &str, table: u32) -> &mut Self {
        self.rules.push(RuleSpec {
            node: node.to_string(),
            iif: iif.to_string(),
            table,
        });
        self
    }

    /// A permanent neighbour entry on `node`'s `ifname`.
    pub fn neighbour(
        &mut self,
        node: &str,
        ifname: &str,
        addr: Ipv4Addr,
        lladdr: &str,
    ) -> &mut Self {
        self.neighbours.push(NeighSpec {
            node: node.to_string(),
            ifname: ifname.to_string(),
            addr,
            lladdr: lladdr.to_string(),
        });
        self
    }

    /// Gives `node`'s `ifname` a fixed MAC address.
    pub fn mac(&mut self, node: &str, ifname: &str, mac: &str) -> &mut Self {
        self.macs.push(MacSpec {
            node: node.to_string(),
            ifname: ifname.to_string(),
            mac: mac.to_string(),
        });
        self
    }

    /// Limits the egress of `node`'s `ifname` with `tbf`.
    pub fn shaper(&mut self, node: &str, ifname: &str, tbf: Tbf) -> &mut Self {
        self.shapers.push(Shaper {
            node: node.to_string(),
            ifname: ifname.to_string(),
            tbf,
        });
        self
    }

    /// Limits both directions of `link` with `tbf` (one filter on each end).
    pub fn bottleneck(&mut self, link: &str, tbf: Tbf) -> &mut Self {
        let ends: Vec<(String, String)> = self
            .links
            .iter()
            .filter(|l| l.name == link)
            .flat_map(|l| [&l.a, &l.b])
            .map(|e| (e.node.clone(), e.ifname.clone()))
            .collect();
        if ends.is_empty() {
            // Kept so validation reports the unknown link.
            self.shaper("", link, tbf);
        }
        for (n, i) in ends {
            self.shaper(&n, &i, tbf);
        }
        self
    }

    /// The node, if present.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every link's subnet, once each.
    pub fn prefixes(&self) -> Vec<Ipv4Net> {
        let set: BTreeSet<(u32, u8)> = self
            .links
            .iter()
            .map(|l| (u32::from(l.a.addr.network()), l.a.addr.prefix_len()))
            .collect();
        set.into_iter()
            .map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).expect("length came from a prefix"))
            .collect()
    }

    /// The endpoints attached to `node`.
    pub fn endpoints(&self, node: &str) -> impl Iterator<Item = &Endpoint> {
        let node = node.to_string();
        self.links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter(move |e| e.node == node)
    }

    /// Checks names, addresses and references; building runs this first.
    pub fn validate(&self) -> Result<(), LabError> {
        let bad = |m: String| Err(LabError::BadSpec(m));
        let mut names = BTreeSet::new();
        for n in &self.nodes {
            if n.name.is_empty()
                || n.name.len() > MAX_NODE_NAME
                || !n
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return bad(format!(
                    "node name `{}` must be 1-{MAX_NODE_NAME} characters of a-z, 0-9 and -",
                    n.name
                ));
            }
            if !names.insert(n.name.as_str()) {
                return bad(format!("node `{}` is listed twice", n.name));
            }
        }
        let mut ifnames: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut links = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for l in &self.links {
            if !links.insert(l.name.as_str()) {
                return bad(format!("link `{}` is listed twice", l.name));
            }
            for e in [&l.a, &l.b] {
                if !names.contains(e.node.as_str()) {
                    return bad(format!("link `{}` names unknown node `{}`", l.name, e.node));
                }
                if e.ifname.is_empty()
                    || e.ifname.len() > MAX_IFNAME
                    || e.ifname == "lo"
                    || !e
                        .ifname
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return bad(format!(
                        "interface name `{}` on `{}` must be 1-{MAX_IFNAME} characters of a-z, 0-9, - and _",
                        e.ifname, e.node
                    ));
                }
                if !ifnames.insert((e.node.as_str(), e.ifname.as_str())) {
                    return bad(format!(
                        "interface `{}` appears twice on node `{}`",
                        e.ifname, e.node
                    ));
                }
                if !addrs.insert(e.addr.addr()) {
                    return bad(format!("address {} is used twice", e.addr.addr()));
                }
                if e.addr.prefix_len() > 30 {
                    return bad(format!(
                        "link `{}`: prefix {} leaves no room for two hosts",
                        l.name, e.addr
                    ));
                }
            }
            if l.a.addr.trunc() != l.b.addr.trunc() {
                return bad(format!(
                    "link `{}`: {} and {} are not on one subnet",
                    l.name, l.a.addr, l.b.addr
                ));
            }
        }
        for r in &self.routes {
            if !names.contains(r.node.as_str()) {
                return bad(format!("route names unknown node `{}`", r.node));
            }
            if let Some(dev) = &r.onlink_dev {
                if !ifnames.contains(&(r.node.as_str(), dev.as_str())) {
                    return bad(format!(
                        "route on `{}` names unknown interface `{dev}`",
                        r.node
                    ));
                }
            } else if !self.endpoints(&r.node).any(|e| e.addr.contains(r.via)) {
                return bad(format!(
                    "route on `{}` via {} : no link of that node reaches the gateway",
                    r.node, r.via
                ));
            }
        }
        let known_if = |node: &str, ifname: &str, what: &str| {
            if ifnames.contains(&(node, ifname)) {
                Ok(())
            } else {
                Err(LabError::BadSpec(format!(
                    "{what} names unknown interface `{ifname}` on `{node}`"
                )))
            }
        };
        for r in &self.rules {
            known_if(&r.node, &r.iif, "rule")?;
        }
        let mac_ok = |m: &str| {
            m.len() == 17
                && m.split(':').count() == 6
                && m.split(':')
                    .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
        };
        for n in &self.neighbours {
            known_if(&n.node, &n.ifname, "neighbour entry")?;
            if !mac_ok(&n.lladdr) {
                return bad(format!(
                    "neighbour entry: `{}` is not a MAC address",
                    n.lladdr
                ));
            }
        }
        for m in &self.macs {
            known_if(&m.node, &m.ifname, "MAC setting")?;
            if !mac_ok(&m.mac) {
                return bad(format!("`{}` is not a MAC address", m.mac));
            }
        }
        for b in &self.shapers {
            known_if(&b.node, &b.ifname, "bottleneck")?;
            if b.tbf.rate_bit < 8_000 || b.tbf.burst_bytes < 1600 || b.tbf.latency_ms == 0 {
                return bad(format!(
                    "bottleneck on `{}` of `{}`: rate must be at least 8 kbit/s, burst at least \
                     1600 bytes (one full frame) and latency above 0",
                    b.ifname, b.node
                ));
            }
        }
        Ok(())
    }
}

/// One run's namespaces and the PIDs it started, as the process-wide list knows them.
#[derive(Default)]
struct LiveRun {
    namespaces: Vec<String>,
    pids: BTreeSet<u32>,
}

static LIVE: Mutex<BTreeMap<String, LiveRun>> = Mutex::new(BTreeMap::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<String, LiveRun>> {
    // A panic while holding the lock leaves plain data behind; clean-up must still run.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with a clear message unless the process runs as root.
pub fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}

/// Fails with the Debian package to install unless `tool` is on PATH.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result<(), LabError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(LabError::ToolMissing { tool, package })
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into the network namespace at `path`. Sockets it creates
/// afterwards live there; other threads are unaffected.
pub fn enter_netns(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: `f` is an open descriptor of a namespace file for the whole call;
    // setns(CLONE_NEWNET) only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The name of the lab namespace (one whose name starts with [`NETNS_PREFIX`]) the
/// calling thread is in, or `None` when it is in any other namespace, the host's own
/// included. The flood generator refuses to run unless this names one.
pub fn current_lab_netns() -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/thread-self/ns/net")?;
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(NETNS_PREFIX) {
            continue;
        }
        // The named file is a bind mount of the namespace: its inode is the namespace's.
        if let Ok(m) = std::fs::metadata(entry.path()) {
            if m.dev() == me.dev() && m.ino() == me.ino() {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

fn signal(pid: u32, sig: libc::c_int) {
    if pid == 0 || pid == std::process::id() || pid > i32::MAX as u32 {
        return;
    }
    // SAFETY: kill has no memory effects; a stale PID yields ESRCH, which we ignore.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether `pid` is a process that has not exited (zombies count as exited).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .map(|state| state != 'Z' && state != 'X')
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// PIDs of the processes inside a named namespace.
fn netns_pids(ns: &str) -> Vec<u32> {
    run_cmd("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Terminates `pids` (SIGTERM, then SIGKILL after `grace`) and waits until none runs.
fn terminate(pids: &BTreeSet<u32>, grace: Duration) {
    for &p in pids {
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|&&p| running(p)) {
        signal(p, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process in `namespaces` and the listed `pids`, then deletes the namespaces.
fn destroy(namespaces: &[String], pids: &BTreeSet<u32>) -> Vec<LabError> {
    let mut all = pids.clone();
    for ns in namespaces {
        all.extend(netns_pids(ns));
    }
    all.remove(&std::process::id());
    terminate(&all, Duration::from_millis(1500));
    let mut errors = Vec::new();
    for ns in namespaces {
        let etc = Path::new(NETNS_ETC_DIR).join(ns);
        if etc.exists() {
            if let Err(e) = std::fs::remove_dir_all(&etc) {
                errors.push(LabError::io(format!("removing {}", etc.display()), e));
            }
        }
        if !Path::new(NETNS_DIR).join(ns).exists() {
            continue;
        }
        if let Err(e) = run_cmd("ip", &["netns", "del", ns]) {
            errors.push(e);
        }
    }
    errors
}

/// The folder of run `id`'s files on the host (certificates, keys, configs, state):
/// named after the run so `scold lab cleanup` finds it when the run was killed.
pub fn files_dir_of(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{id}-files"))
}

fn remove_files_dir(id: &str) -> Option<LabError> {
    let dir = files_dir_of(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(LabError::io(format!("removing {}", dir.display()), e)),
    }
}

/// Tears down every run of this process that is still live. Meant for a signal handler
/// path that will exit the process right after.
pub fn teardown_all_live() -> Vec<LabError> {
    let runs: Vec<(String, LiveRun)> = std::mem::take(&mut *live()).into_iter().collect();
    let mut errors = Vec::new();
    for (id, run) in runs {
        errors.extend(destroy(&run.namespaces, &run.pids));
        errors.extend(remove_files_dir(&id));
    }
    errors
}

/// A namespace left behind by an earlier run.
#[derive(Clone, Debug, Serialize)]
pub struct Leftover {
    pub netns: String,
    /// The PID of the `scold lab` that created it, from its name.
    pub owner_pid: Option<u32>,
    /// Whether a process with that PID still runs (then it is probably a live run).
    pub owner_alive: bool,
}

/// Lists the lab's namespaces on this host, and namespace names that only have a
/// per-namespace `/etc/netns` folder left.
pub fn find_leftovers() -> Result<Vec<Leftover>, LabError> {
    let mut names = BTreeSet::new();
    for d in [NETNS_DIR, NETNS_ETC_DIR] {
        let dir = match std::fs::read_dir(d) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LabError::io(format!("reading {d}"), e)),
        };
        names.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    let mut out = Vec::new();
    for name in names {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let owner_pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let owner_alive = owner_pid.is_some_and(|p| p != std::process::id() && running(p));
        out.push(Leftover {
            netns: name,
            owner_pid,
            owner_alive,
        });
    }
    out.sort_by(|a, b| a.netns.cmp(&b.netns));
    Ok(out)
}

/// What [`cleanup_leftovers`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    /// Namespaces whose creating process still runs, left alone unless `include_live`.
    pub skipped_live: Vec<String>,
}

/// Removes the lab's namespaces left by runs that are gone (or all of them with
/// `include_live`), killing the processes inside them by PID first. Touches only
/// namespaces whose name starts with [`NETNS_PREFIX`], and never this process's own.
pub fn cleanup_leftovers(include_live: bool) -> Result<CleanupReport, LabError> {
    require_root()?;
    require_tool("ip", "iproute2")?;
    let mine: BTreeSet<String> = live()
        .values()
        .flat_map(|r| r.namespaces.iter().cloned())
        .collect();
    let mut report = CleanupReport::default();
    let mut doomed = Vec::new();
    for l in find_leftovers()? {
        if mine.contains(&l.netns) {
            continue;
        }
        if l.owner_alive && !include_live {
            report.skipped_live.push(l.netns);
        } else {
            doomed.push(l.netns);
        }
    }
    let mut errors = destroy(&doomed, &BTreeSet::new());
    // The files folders of killed runs (certificates, keys, configs).
    let live_ids: BTreeSet<String> = live().keys().cloned().collect();
    let tmp = std::env::temp_dir();
    if let Ok(dir) = std::fs::read_dir(&tmp) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix("-files")
                .filter(|id| id.starts_with(NETNS_PREFIX))
            else {
                continue;
            };
            if live_ids.contains(id) {
                continue;
            }
            let owner = id[NETNS_PREFIX.len()..]
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            let alive = owner.is_some_and(|p| p != std::process::id() && running(p));
            if alive && !include_live {
                report.skipped_live.push(name);
                continue;
            }
            errors.extend(remove_files_dir(id));
            doomed.push(tmp.join(&name).display().to_string());
        }
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    report.removed = doomed;
    Ok(report)
}

/// A running process inside the testbed. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct LabProcess {
    child: Option<Child>,
    pid: u32,
    run_id: String,
    label: String,
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label given at spawn (node and program), for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The child's standard output, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// The child's standard error, if it was piped and not yet taken.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    fn reaped(&mut self) {
        self.child = None;
        if let Some(run) = live().get_mut(&self.run_id) {
            run.pids.remove(&self.pid);
        }
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        match c.try_wait() {
            Ok(Some(st)) => {
                self.reaped();
                Ok(Some(st))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(LabError::io(format!("waiting for {}", self.label), e)),
        }
    }

    /// Waits at most `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it at once (SIGKILL, no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>, LabError> {
        if self.child.is_none() {
            return Ok(None);
        }
        signal(self.pid, libc::SIGKILL);
        let st = self
            .child
            .as_mut()
            .map(|c| c.wait())
            .transpose()
            .map_err(|e| LabError::io(format!("waiting for {}", self.label), e))?;
        self.reaped();
        Ok(st)
    }

    /// Asks it to stop (SIGTERM), kills it after `grace`, and reaps it.
    pub fn stop(&mut self, grace: Duration) -> Result<Option<ExitStatus>, LabError> {
        if self.child.is_none() {
            return Ok(None);
        }
        signal(self.pid, libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(Some(st));
        }
        signal(self.pid, libc::SIGKILL);
        let st = self
            .child
            .as_mut()
            .map(|c| c.wait())
            .transpose()
            .map_err(|e| LabError::io(format!("waiting for {}", self.label), e))?;
        self.reaped();
        Ok(st)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(1));
    }
}

/// A built testbed. Dropping it (or [`Topology::teardown`]) kills every process it
/// started or that runs in its namespaces, and deletes the namespaces.
pub struct Topology {
    id: String,
    spec: Spec,
    ns: BTreeMap<String, String>,
    done: bool,
}

impl Topology {
    /// Creates `spec`. Needs root and iproute2. On error, whatever was created is removed.
    pub fn build(spec: Spec) -> Result<Topology, LabError> {
        spec.validate()?;
        require_root()?;
        require_tool("ip", "iproute2")?;
        if !spec.shapers.is_empty() {
            require_tool("tc", "iproute2")?;
        }
        let id = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: BTreeMap<String, String> = spec
            .nodes
            .iter()
            .map(|n| (n.name.clone(), format!("{id}-{}", n.name)))
            .collect();
        // Registered before anything exists, so a signal mid-build still cleans up.
        live().insert(
            id.clone(),
            LiveRun {
                namespaces: ns.values().cloned().collect(),
                pids: BTreeSet::new(),
            },
        );
        let topo = Topology {
            id,
            spec,
            ns,
            done: false,
        };
        // On error `topo` drops here and removes the partial build.
        topo.create()?;
        tracing::debug!(id = %topo.id, nodes = topo.spec.nodes.len(), "testbed built");
        Ok(topo)
    }

    fn create(&self) -> Result<(), LabError> {
        for node in &self.spec.nodes {
            let ns = &self.ns[&node.name];
            run_cmd("ip", &["netns", "add", ns])?;
            run_cmd("ip", &["-n", ns, "link", "set", "dev", "lo", "up"])?;
            let forward = if node.router { "1" } else { "0" };
            // Loose source checks: the indirect route returns replies on a different
            // link than requests arrived on.
            self.write_sysctls(
                &node.name,
                &[
                    ("net/ipv4/ip_forward", forward),
                    ("net/ipv4/conf/all/rp_filter", "0"),
                    ("net/ipv4/conf/default/rp_filter", "0"),
                    ("net/ipv4/ping_group_range", "0 2147483647"),
                ],
            )?;
        }
        for l in &self.spec.links {
            let (na, nb) = (&self.ns[&l.a.node], &self.ns[&l.b.node]);
            run_cmd(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &l.a.ifname,
                    "netns",
                    na,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &l.b.ifname,
                    "netns",
                    nb,
                ],
            )?;
            for (e, ns) in [(&l.a, na), (&l.b, nb)] {
                if let Some(m) = self
                    .spec
                    .macs
                    .iter()
                    .find(|m| m.node == e.node && m.ifname == e.ifname)
                {
                    run_cmd(
                        "ip",
                        &["-n", ns, "link", "set", "dev", &e.ifname, "address", &m.mac],
                    )?;
                }
                run_cmd(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &e.addr.to_string(),
                        "dev",
                        &e.ifname,
                    ],
                )?;
                run_cmd("ip", &["-n", ns, "link", "set", "dev", &e.ifname, "up"])?;
            }
        }
        for r in &self.spec.routes {
            let ns = &self.ns[&r.node];
            let dest = r
                .dest
                .map(|d| d.trunc().to_string())
                .unwrap_or_else(|| "default".into());
            let via = r.via.to_string();
            let table = r.table.map(|t| t.to_string());
            let mut args = vec!["-n", ns, "route", "add", &dest, "via", &via];
            if let Some(dev) = &r.onlink_dev {
                args.extend(["dev", dev, "onlink"]);
            }
            if let Some(t) = &table {
                args.extend(["table", t]);
            }
            run_cmd("ip", &args)?;
        }
        for r in &self.spec.rules {
            let table = r.table.to_string();
            run_cmd(
                "ip",
                &[
                    "-n",
                    &self.ns[&r.node],
                    "rule",
                    "add",
                    "iif",
                    &r.iif,
                    "table",
                    &table,
                ],
            )?;
        }
        for n in &self.spec.neighbours {
            run_cmd(
                "ip",
                &[
                    "-n",
                    &self.ns[&n.node],
                    "neigh",
                    "replace",
                    &n.addr.to_string(),
                    "lladdr",
                    &n.lladdr,
                    "dev",
                    &n.ifname,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        for b in &self.spec.shapers {
            run_cmd(
                "tc",
                &[
                    "-n",
                    &self.ns[&b.node],
                    "qdisc",
                    "add",
                    "dev",
                    &b.ifname,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{}bit", b.tbf.rate_bit),
                    "burst",
                    &b.tbf.burst_bytes.to_string(),
                    "latency",
                    &format!("{}ms", b.tbf.latency_ms),
                ],
            )?;
        }
        Ok(())
    }

    fn write_sysctls(&self, node: &str, kv: &[(&str, &str)]) -> Result<(), LabError> {
        let kv: Vec<(String, String)> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.run_in(node, move || -> Result<(), LabError> {
            for (k, v) in kv {
                let path = format!("/proc/sys/{k}");
                std::fs::write(&path, &v)
                    .map_err(|e| LabError::io(format!("writing {v} to {path}"), e))?;
            }
            Ok(())
        })?
    }

    /// This run's unique id (also the prefix of its namespace names).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The namespace name of `node`.
    pub fn netns(&self, node: &str) -> Result<&str, LabError> {
        self.ns
            .get(node)
            .map(String::as_str)
            .ok_or_else(|| LabError::UnknownNode(node.to_string()))
    }

    /// Makes `ip netns exec` processes in `node` resolve names through `nameservers`:
    /// writes `/etc/netns/<ns>/resolv.conf`, which it bind-mounts over
    /// `/etc/resolv.conf`. Processes started before this keep the host's file. Removed
    /// with the namespace.
    pub fn set_resolv_conf(
        &self,
        node: &str,
        nameservers: &[Ipv4Addr],
    ) -> Result<PathBuf, LabError> {
        let dir = Path::new(NETNS_ETC_DIR).join(self.netns(node)?);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("resolv.conf");
        let mut text = format!("# written by scold lab for {node}; removed with the testbed\n");
        for ns in nameservers {
            text.push_str(&format!("nameserver {ns}\n"));
        }
        // Short time-outs: a lost answer shows as a slow lookup, not a long hang.
        text.push_str("options timeout:1 attempts:2\n");
        std::fs::write(&path, text)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// This run's folder for files on the host (certificates, keys, configs, state),
    /// created private to root on first use and removed with the testbed, also on a
    /// signal or by `scold lab cleanup` after a kill.
    pub fn files_dir(&self) -> Result<PathBuf, LabError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = files_dir_of(&self.id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// The namespace file of `node`, for setns.
    pub fn netns_path(&self, node: &str) -> Result<PathBuf, LabError> {
        Ok(Path::new(NETNS_DIR).join(self.netns(node)?))
    }

    /// Every namespace of this run.
    pub fn namespaces(&self) -> Vec<String> {
        self.ns.values().cloned().collect()
    }

    /// The address of `node` on interface `ifname`.
    pub fn addr(&self, node: &str, ifname: &str) -> Result<Ipv4Addr, LabError> {
        self.spec
            .endpoints(node)
            .find(|e| e.ifname == ifname)
            .map(|e| e.addr.addr())
            .ok_or_else(|| LabError::UnknownNode(format!("{node}/{ifname}")))
    }

    /// Every link subnet of this testbed: the only destinations traffic generators accept.
    pub fn prefixes(&self) -> Vec<Ipv4Net> {
        self.spec.prefixes()
    }

    /// A command that runs `program` inside `node`'s namespace through `ip netns exec`
    /// (which also bind-mounts `/etc/netns/<ns>/*` files such as resolv.conf). Add
    /// arguments and stdio, then start it with [`Topology::spawn`] or
    /// [`Topology::exec`].
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Result<Command, LabError> {
        let ns = self.netns(node)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(program)
            .stdin(Stdio::null());
        Ok(c)
    }

    /// Starts `cmd` (from [`Topology::command`]) and records its PID for tear-down.
    /// `ip netns exec` replaces itself with the program, so the PID is the program's.
    pub fn spawn(&self, label: &str, cmd: &mut Command) -> Result<LabProcess, LabError> {
        let command = format!("{cmd:?}");
        // Hold the list while starting so a concurrent tear-down sees the PID.
        let mut live = live();
        let run = live.get_mut(&self.id).ok_or_else(|| {
            LabError::BadSpec(format!("testbed {} is already torn down", self.id))
        })?;
        let child = cmd
            .spawn()
            .map_err(|source| LabError::Spawn { command, source })?;
        let pid = child.id();
        run.pids.insert(pid);
        tracing::debug!(pid, label, "started");
        Ok(LabProcess {
            child: Some(child),
            pid,
            run_id: self.id.clone(),
            label: label.to_string(),
        })
    }

    /// Runs `program args` inside `node` to completion and returns its output; a
    /// non-zero exit is an error. Killed after `timeout`.
    pub fn exec<I, S>(
        &self,
        node: &str,
        program: &str,
        args: I,
        timeout: Duration,
    ) -> Result<Output, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(node, program)?;
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        let mut p = self.spawn(&format!("{node}: {program}"), &mut cmd)?;
        // Read both pipes on threads so a chatty child never blocks on a full pipe.
        let out = p.take_stdout();
        let err = p.take_stderr();
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut v);
                }
                v
            })
        };
        let to = read(out.map(|o| Box::new(o) as Box<dyn std::io::Read + Send>));
        let te = read(err.map(|e| Box::new(e) as Box<dyn std::io::Read + Send>));
        let status = match p.wait_timeout(timeout)? {
            Some(st) => st,
            None => {
                p.stop(Duration::from_millis(200))?;
                return Err(LabError::Timeout {
                    what: shown,
                    secs: timeout.as_secs_f64(),
                });
            }
        };
        let stdout = to.join().unwrap_or_default();
        let stderr = te.join().unwrap_or_default();
        if !status.success() {
            return Err(LabError::Command {
                command: shown,
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs `f` on a fresh thread inside `node`'s namespace and returns its result.
    /// Sockets `f` creates live in that namespace, without starting a process.
    pub fn run_in<T, F>(&self, node: &str, f: F) -> Result<T, LabError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let path = self.netns_path(node)?;
        let node = node.to_string();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter_netns(&path).map_err(|source| LabError::EnterNetns {
                    node,
                    path: path.clone(),
                    source,
                })?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a background thread inside `node`'s namespace.
    pub fn thread_in<T, F>(&self, node: &str, f: F) -> Result<std::thread::JoinHandle<T>, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.netns_path(node)?;
        // Opened here so a missing namespace is the caller's error, not the thread's.
        let ns = File::open(&path).map_err(|source| LabError::EnterNetns {
            node: node.to_string(),
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let h = std::thread::Builder::new()
            .name(format!("lab-{node}"))
            .spawn(move || {
                // SAFETY: `ns` is an open namespace descriptor for the whole call;
                // setns(CLONE_NEWNET) only changes this thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                };
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                // Never run `f` in the wrong namespace; the caller already has the error.
                assert!(ok, "could not enter the network namespace");
                f()
            })
            .map_err(|e| LabError::io("starting a namespace thread", e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(h),
            Ok(Err(source)) => Err(LabError::EnterNetns {
                node: node.to_string(),
                path,
                source,
            }),
            Err(_) => Err(LabError::io(
                "starting a namespace thread",
                std::io::Error::other("thread ended before entering the namespace"),
            )),
        }
    }

    /// Leaves the namespaces in place (for inspection after a failure) and returns the
    /// run id; processes still stop when their [`LabProcess`] handles drop.
    /// `scold lab cleanup --all` removes them later.
    pub fn keep(mut self) -> String {
        self.done = true;
        live().remove(&self.id);
        std::mem::take(&mut self.id)
    }

    /// Kills every process and removes every namespace of this run; returns the first
    /// error (all steps are attempted regardless).
    pub fn teardown(mut self) -> Result<(), LabError> {
        match self.destroy().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn destroy(&mut self) -> Vec<LabError> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let run = live().remove(&self.id);
        let pids = run.map(|r| r.pids).unwrap_or_default();
        let mut errors = destroy(&self.namespaces(), &pids);
        errors.extend(remove_files_dir(&self.id));
        for e in &errors {
            tracing::warn!(id = %self.id, error = %e, "testbed tear-down");
        }
        errors
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_hosts() -> Spec {
        let mut s = Spec::new();
        s.host("a").host("b");
        s.link(
            "ab",
            ("a", "eth0", "198.18.0.1/24"),
            ("b", "eth0", "198.18.0.2/24"),
        )
        .unwrap();
        s
    }

    #[test]
    fn valid_spec_passes() {
        two_hosts().validate().unwrap();
        assert_eq!(two_hosts().prefixes()[0].to_string(), "198.18.0.0/24");
    }

    #[test]
    fn refuses_bad_specs() {
        let mut s = two_hosts();
        s.host("a");
        assert!(s.validate().is_err(), "duplicate node");

        let mut s = two_hosts();
        s.link(
            "x",
            ("a", "eth1", "198.18.1.1/24"),
            ("b", "eth1", "198.18.2.1/24"),
        )
        .unwrap();
        assert!(s.validate().is_err(), "ends on different subnets");

        let mut s = two_hosts();
        s.link(
            "x",
            ("a", "eth0", "198.18.1.1/24"),
            ("b", "eth1", "198.18.1.2/24"),
        )
        .unwrap();
        assert!(s.validate().is_err(), "interface reused");

        let mut s = two_hosts();
        s.link(
            "x",
            ("a", "averyveryverylongname", "198.18.1.1/24"),
            ("b", "e", "198.18.1.2/24"),
        )
        .unwrap();
        assert!(s.validate().is_err(), "interface name too long");

        let mut s = two_hosts();
        s.route("a", None, Ipv4Addr::new(198, 18, 9, 1));
        assert!(s.validate().is_err(), "unreachable gateway");

        let mut s = two_hosts();
        s.bottleneck("nope", Tbf::default());
        assert!(s.validate().is_err(), "unknown bottleneck link");

        let mut s = two_hosts();
        s.rule("a", "eth9", 100);
        assert!(s.validate().is_err(), "rule on an unknown interface");

        let mut s = two_hosts();
        s.neighbour(
            "a",
            "eth0",
            Ipv4Addr::new(198, 18, 0, 9),
            "zz:00:00:00:00:00",
        );
        assert!(s.validate().is_err(), "bad MAC");

        let mut s = two_hosts();
        s.bottleneck(
            "ab",
            Tbf {
                burst_bytes: 100,
                ..Tbf::default()
            },
        );
        assert!(s.validate().is_err(), "burst below one frame");

        let mut s = Spec::new();
        s.host("Bad Name");
        assert!(s.validate().is_err(), "bad node name");
    }
}
