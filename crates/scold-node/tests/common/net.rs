//! The network-namespace harness of the tests that run real processes: namespaces with
//! unique names, veth links and a bridge, processes started inside a namespace with
//! their output in a log file, stopped or killed by the PID we started, log waiting, and
//! a clean-up on drop (also while a failed assertion unwinds) that stops every process,
//! deletes every namespace and the per-namespace `/etc/netns` files.
//!
//! Also the pieces several tests build the same way: certificates (with the `scold ca`
//! CLI, or the library for an IP in the certificate), zone files, `scold dns`,
//! `scold resolver` and an unmodified Unbound as a client site's resolver.
#![allow(dead_code)]

use super::{is_root, must, require, scold_bin, sh, terminate};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How many lines of each process's log a failure message shows.
const LOG_TAIL: usize = 60;

/// One test's namespaces and processes. Namespace `n` is `{prefix}{n}{s}` and a device
/// `d` is `{d}{s}`, where `s` is made of the PID and a per-process counter: parallel
/// tests and test binaries never share a name.
pub struct Net {
    pub s: String,
    prefix: String,
    names: Vec<String>,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    etc: Vec<PathBuf>,
    log_filter: Option<String>,
}

impl Net {
    /// Checks root and `tools` (name, Debian package), then creates the namespaces
    /// `names` with their loopback up.
    pub fn new(prefix: &str, names: &[&str], tools: &[(&str, &str)]) -> Net {
        assert!(
            is_root(),
            "these tests build network namespaces and need root"
        );
        for (tool, package) in [("ip", "iproute2"), ("timeout", "coreutils")]
            .iter()
            .chain(tools)
        {
            require(tool, package);
        }
        let s = format!(
            "{}{}",
            std::process::id() % 100000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = Net {
            s,
            prefix: prefix.to_string(),
            names: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
            etc: Vec::new(),
            log_filter: None,
        };
        for n in names {
            let ns = net.ns(n);
            // Recorded before it exists: a failure half-way still deletes it.
            net.names.push(ns.clone());
            must(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        net
    }

    pub fn ns(&self, n: &str) -> String {
        format!("{}{n}{}", self.prefix, self.s)
    }

    pub fn dev(&self, d: &str) -> String {
        format!("{d}{}", self.s)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// A veth pair between namespaces `x` and `y`: device `{x}{y}` in `x`, `{y}{x}` in
    /// `y`, each with its address (CIDR) when given, and up.
    pub fn link(&self, x: &str, y: &str, ax: Option<&str>, ay: Option<&str>) {
        let (dx, dy) = (self.dev(&format!("{x}{y}")), self.dev(&format!("{y}{x}")));
        let (nx, ny) = (self.ns(x), self.ns(y));
        must(&format!(
            "ip link add {dx} type veth peer name {dy} && \
             ip link set {dx} netns {nx} && ip link set {dy} netns {ny}"
        ));
        for (n, d, a) in [(x, &dx, ax), (y, &dy, ay)] {
            if let Some(a) = a {
                self.addr(n, d, a);
            }
        }
    }

    /// Adds `addr` (CIDR) to device `dev` (full name) in namespace `n` and sets it up.
    pub fn addr(&self, n: &str, dev: &str, addr: &str) {
        let ns = self.ns(n);
        must(&format!(
            "ip -n {ns} addr add {addr} dev {dev} && ip -n {ns} link set {dev} up"
        ));
    }

    /// A bridge `br{s}` in namespace `n`.
    pub fn bridge(&self, n: &str) -> String {
        let (ns, br) = (self.ns(n), self.dev("br"));
        must(&format!(
            "ip -n {ns} link add {br} type bridge && ip -n {ns} link set {br} up"
        ));
        br
    }

    /// Plugs namespace `x` into the bridge of namespace `n`: device `{x}x` in `x`
    /// (left down until it gets an address), port `x{x}` on the bridge.
    pub fn bridge_port(&self, n: &str, x: &str) {
        let (inside, port) = (self.dev(&format!("{x}x")), self.dev(&format!("x{x}")));
        let (nx, nn, br) = (self.ns(x), self.ns(n), self.dev("br"));
        must(&format!(
            "ip link add {inside} type veth peer name {port} && \
             ip link set {inside} netns {nx} && ip link set {port} netns {nn} && \
             ip -n {nn} link set {port} master {br} && ip -n {nn} link set {port} up"
        ));
    }

    pub fn route(&self, n: &str, spec: &str) {
        must(&format!("ip -n {} route add {spec}", self.ns(n)));
    }

    /// `/etc/netns/NS/resolv.conf` for namespace `n`: `ip netns exec` mounts it over
    /// /etc/resolv.conf, so the namespace's applications ask the resolver it names.
    pub fn resolv_conf(&mut self, n: &str, text: &str) {
        let etc = PathBuf::from(format!("/etc/netns/{}", self.ns(n)));
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/...");
        self.etc.push(etc.clone());
        std::fs::write(etc.join("resolv.conf"), text).expect("write resolv.conf");
    }

    /// The `--log` filter given to every `scold` process started after this.
    pub fn set_log_filter(&mut self, filter: &str) {
        self.log_filter = Some(filter.to_string());
    }

    /// Starts `args` in namespace `n` with stdout and stderr in `{label}.log`.
    pub fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{label}.log"))).expect("log");
        // `ip netns exec` execs the program: the PID we hold is the program's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push((label.to_string(), child));
    }

    /// Starts `scold ROLE --config CONFIG` in namespace `n`.
    pub fn scold(&mut self, n: &str, label: &str, role: &str, config: impl AsRef<Path>) {
        let bin = scold_bin().display().to_string();
        let cfg = config.as_ref().display().to_string();
        let mut args = vec![bin];
        if let Some(f) = &self.log_filter {
            args.extend(["--log".to_string(), f.clone()]);
        }
        args.extend([role.to_string(), "--config".to_string(), cfg]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(n, label, &args);
    }

    fn take(&mut self, label: &str) -> Child {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        self.children.remove(i).1
    }

    pub fn pid(&self, label: &str) -> u32 {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    /// SIGTERM by PID, SIGKILL after 5 s.
    pub fn stop(&mut self, label: &str) {
        let mut c = self.take(label);
        terminate(&mut c);
    }

    /// SIGKILL by PID: the process gets no chance to say goodbye.
    pub fn kill9(&mut self, label: &str) {
        let mut c = self.take(label);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Whether the process `label` is still running.
    pub fn running(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `secs` for `label` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, label: &str, secs: u64) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            let i = self.children.iter().position(|(l, _)| l == label)?;
            if let Ok(Some(st)) = self.children[i].1.try_wait() {
                self.children.remove(i);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A process's output, without terminal colour codes.
    pub fn log(&self, label: &str) -> String {
        strip_ansi(&std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default())
    }

    /// The last lines of every running process's log, for a failure message.
    pub fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(l, _)| {
                let log = self.log(l);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
                format!("--- {l}\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    pub fn wait_log(&self, label: &str, text: &str, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if self.log(label).contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{label} never logged {text:?}\n{}", self.logs());
    }

    /// Runs `cmd` (through `sh` when it has shell syntax) in namespace `n`, at most 60 s.
    pub fn exec(&self, n: &str, cmd: &str) -> std::process::Output {
        sh(&format!("timeout 60 ip netns exec {} {cmd}", self.ns(n)))
    }

    /// stdout and stderr of `cmd` in namespace `n`.
    pub fn out(&self, n: &str, cmd: &str) -> String {
        let o = self.exec(n, cmd);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `scold ARGS` in namespace `n`.
    pub fn scold_cli(&self, n: &str, args: &str) -> std::process::Output {
        self.exec(n, &format!("{} {args}", scold_bin().display()))
    }

    /// What SCOLD may touch in namespace `n`: rules and every routing table but the
    /// kernel's local one (which changes by itself), and with `nft` the ruleset.
    pub fn routing(&self, n: &str, nft: bool) -> String {
        let nft = if nft { "; nft list ruleset" } else { "" };
        let out = self.exec(
            n,
            &format!(
                "sh -c 'ip rule; ip -6 rule; ip route show table all; ip -6 route show table all{nft}'"
            ),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("fe80::") && !l.contains("table local"))
            .map(|l| l.replace(" linkdown", ""))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            terminate(c);
        }
        for ns in &self.names {
            let _ = sh(&format!("ip netns del {ns}"));
        }
        for etc in &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
    }
}

pub fn strip_ansi(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A consortium CA in `{ca}` made with `scold ca init`, and for each (role, name) a
/// certificate `{certs}/{role}-{name}.crt` with its key, made with `scold ca issue`.
pub fn ca_issue(net: &Net, ca: &str, certs: &str, issues: &[(&str, &str)]) {
    let bin = scold_bin().display().to_string();
    let (ca, certs) = (net.p(ca), net.p(certs));
    must(&format!("{bin} ca --dir {ca} init"));
    for (role, name) in issues {
        must(&format!(
            "{bin} ca --dir {ca} issue --role {role} --name {name} --out {certs}"
        ));
    }
}

/// A proxy certificate for `name` with `ip` in it, from `ca`, into `out`: (cert, key).
pub fn issue_proxy(ca: &mut scold_pki::Ca, name: &str, ip: &str, out: &Path) -> (PathBuf, PathBuf) {
    use scold_pki::{Identity, Role, Validity};
    let p = ca
        .issue(
            &Identity::new(Role::Proxy, name).expect("identity"),
            &[ip.parse().expect("ip")],
            &[],
            Validity::days(1),
            out,
        )
        .expect("issue");
    (p.cert, p.key)
}

// ---------------------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------------------

/// The private type code the tests' ALT records use.
pub const ALT_TYPE: u16 = 65280;

/// An ALT record's data for an IPv4 address in the RFC 3597 form, as an unmodified tool
/// writes and shows it: `TYPE65280 \# 4 0A01000B`.
pub fn alt_rfc3597(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().expect("ipv4");
    let hex: String = ip.octets().iter().map(|b| format!("{b:02X}")).collect();
    format!("TYPE{ALT_TYPE} \\# 4 {hex}")
}

/// A zone file: `$TTL ttl`, an SOA whose minimum (the negative TTL) is `negative`, an
/// NS `ns` at `ns_addr`, then `records` (owner-relative lines).
pub fn zone_text(
    origin: &str,
    ttl: u32,
    negative: u32,
    ns_addr: &str,
    records: &[String],
) -> String {
    let mut z = format!(
        "$ORIGIN {origin}.\n$TTL {ttl}\n\
         @ IN SOA ns.{origin}. admin.{origin}. 1 60 60 600 {negative}\n\
         @ IN NS ns\nns IN A {ns_addr}\n"
    );
    for r in records {
        z.push_str(r);
        z.push('\n');
    }
    z
}

/// A TSIG key `scold dns` accepts updates with, for `names` and `types`.
pub struct UpdateKey<'a> {
    pub name: &'a str,
    pub secret: &'a str,
    pub names: &'a str,
    pub types: &'a str,
}

/// Writes `{label}.zone` and `{label}.toml` and starts `scold dns` (TargetDNS) in
/// namespace `n` on `listen`, serving `zone` with `zone_text`.
pub fn start_scold_dns(
    net: &mut Net,
    n: &str,
    label: &str,
    listen: &str,
    zone: &str,
    zone_text: &str,
    key: Option<UpdateKey>,
) {
    let zone_file = net.write(&format!("{label}.zone"), zone_text);
    let mut cfg = format!(
        "listen = [\"{listen}\"]\njournal = \"{}\"\n[[zone]]\nname = \"{zone}\"\nfile = \"{}\"\n",
        net.p(&format!("{label}.journal")),
        zone_file.display()
    );
    if let Some(k) = key {
        cfg.push_str(&format!(
            "[[key]]\nname = \"{}\"\nalgorithm = \"hmac-sha256\"\nsecret = \"{}\"\n\
             [[key.allow]]\nnames = {}\ntypes = {}\n",
            k.name, k.secret, k.names, k.types
        ));
    }
    let cfg = net.write(&format!("{label}.toml"), &cfg);
    net.scold(n, label, "dns", &cfg);
}

/// Starts `scold resolver` (a client site's ClientDNS) in namespace `n`; `extra` is
/// appended to its config (timeouts, NOTIFY keys).
pub fn start_scold_resolver(
    net: &mut Net,
    n: &str,
    label: &str,
    listen: &str,
    upstream: &str,
    extra: &str,
) {
    let cfg = net.write(
        &format!("{label}.toml"),
        &format!("listen = [\"{listen}\"]\nupstream = [\"{upstream}\"]\n{extra}"),
    );
    net.scold(n, label, "resolver", &cfg);
}

/// An unmodified Unbound as a client site's resolver: it listens on `ip`:53 for `allow`
/// (CIDR) and sends queries for `zone` to `upstream` (`ip@port`). `max_ttl` caps what it
/// caches, so withdrawn ALT records leave its cache in at most that many seconds.
pub struct Unbound<'a> {
    pub ip: &'a str,
    pub allow: &'a str,
    pub zone: &'a str,
    pub upstream: &'a str,
    pub max_ttl: u32,
}

/// Writes `{label}.conf` for `u`, checks it with `unbound-checkconf`, starts Unbound in
/// namespace `n` in the foreground and returns when it answers.
pub fn start_unbound(net: &mut Net, n: &str, label: &str, u: &Unbound) {
    let Unbound {
        ip,
        allow,
        zone,
        upstream,
        max_ttl,
    } = *u;
    require("unbound", "unbound");
    require("unbound-checkconf", "unbound");
    require("dig", "bind9-dnsutils");
    let cfg = net.write(
        &format!("{label}.conf"),
        &format!(
            "server:\n\
             \x20 interface: {ip}\n  port: 53\n  access-control: {allow} allow\n\
             \x20 do-ip6: no\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n\
             \x20 verbosity: 1\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n\
             \x20 pidfile: \"{dir}/{label}.pid\"\n\
             \x20 # No DNSSEC validation for the test zone (unsigned), no trust anchor.\n\
             \x20 module-config: \"iterator\"\n\
             \x20 domain-insecure: \"{zone}\"\n\
             \x20 # What an operator sets so withdrawn ALT records leave the cache soon.\n\
             \x20 cache-max-ttl: {max_ttl}\n  cache-max-negative-ttl: {max_ttl}\n\
             \x20 serve-expired: no\n  prefetch: no\n\
             forward-zone:\n  name: \"{zone}\"\n  forward-addr: {upstream}\n\
             remote-control:\n  control-enable: no\n",
            dir = net.dir().display()
        ),
    );
    let o = sh(&format!("unbound-checkconf {}", cfg.display()));
    assert!(
        o.status.success(),
        "unbound-checkconf {}: {}{}",
        cfg.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let cfg = cfg.display().to_string();
    net.spawn(n, label, &["unbound", "-d", "-c", &cfg]);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        // Any answer (even NXDOMAIN) means it serves.
        let o = net.exec(n, &format!("dig +time=1 +tries=1 @{ip} {zone} SOA"));
        if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("status:") {
            return;
        }
        assert!(
            Instant::now() < end,
            "unbound did not answer on {ip}:53\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
