//! A test's network: several namespaces, their links, and the processes in them.

use crate::bin::scold_bin;
use crate::host::{must, require_root, require_tools, sh};
use crate::netns::{unique_suffix, Netns, MARK};
use crate::proc::Proc;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// How long [`Net::exec`] lets a command run.
const EXEC_SECS: u64 = 60;

/// One test's namespaces and processes.
///
/// Namespace `n` is `scoldt-{prefix}{n}-{s}` and device `d` is `{d}{s}`, where `s` is
/// [`unique_suffix`]: parallel tests and test binaries never share a name, and devices
/// are created inside their namespaces, so they never meet another test's (or the
/// host's) devices either.
///
/// Dropping it stops every process it started (SIGTERM by PID, SIGKILL after a grace),
/// then deletes every namespace and its `/etc/netns` folder and the working folder; when
/// the test failed, it prints the tail of every process's log first.
pub struct Net {
    s: String,
    prefix: String,
    // Dropped in this order, after `Drop::drop` stopped the processes.
    namespaces: Vec<Netns>,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    log_filter: Option<String>,
}

impl Net {
    /// Checks root, `ip`, `timeout` and `tools` (name, Debian package), then creates the
    /// namespaces `names`, each with its loopback up.
    pub fn new(prefix: &str, names: &[&str], tools: &[(&str, &str)]) -> Net {
        require_root();
        require_tools(&[("ip", "iproute2"), ("timeout", "coreutils")]);
        require_tools(tools);
        let name = |n: &str, s: &str| format!("{MARK}{prefix}{n}-{s}");
        // A name in use can only be a leftover of a killed run that had our PID.
        let s = loop {
            let s = unique_suffix();
            if !names.iter().any(|n| Netns::exists(&name(n, &s))) {
                break s;
            }
        };
        let mut net = Net {
            s,
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            dir: tempfile::tempdir().expect("a temporary folder"),
            procs: Vec::new(),
            log_filter: None,
        };
        for n in names {
            let ns = Netns::create(net.ns(n));
            net.namespaces.push(ns);
        }
        net
    }

    /// The per-test suffix of every name.
    pub fn suffix(&self) -> &str {
        &self.s
    }

    /// The full name of namespace `n`.
    pub fn ns(&self, n: &str) -> String {
        format!("{MARK}{}{n}-{}", self.prefix, self.s)
    }

    /// The full name of device `d`.
    pub fn dev(&self, d: &str) -> String {
        format!("{d}{}", self.s)
    }

    fn netns_mut(&mut self, n: &str) -> &mut Netns {
        let name = self.ns(n);
        self.namespaces
            .iter_mut()
            .find(|ns| ns.name() == name)
            .unwrap_or_else(|| panic!("no namespace {n}"))
    }

    /// The test's working folder (configs, logs, files), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// [`Net::path`] as a string, for config files.
    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes `text` to `name` in the working folder.
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
            "ip -n {nx} link add {dx} type veth peer name {dy} netns {ny}"
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

    /// A bridge `br{s}` in namespace `n`, up.
    pub fn bridge(&self, n: &str) -> String {
        let (ns, br) = (self.ns(n), self.dev("br"));
        must(&format!(
            "ip -n {ns} link add {br} type bridge && ip -n {ns} link set {br} up"
        ));
        br
    }

    /// Plugs namespace `x` into the bridge of namespace `n`: device `{x}{n}` in `x` (left
    /// down until it gets an address), port `{n}{x}` on the bridge, up.
    pub fn bridge_port(&self, n: &str, x: &str) {
        let (inside, port) = (self.dev(&format!("{x}{n}")), self.dev(&format!("{n}{x}")));
        let (nx, nn, br) = (self.ns(x), self.ns(n), self.dev("br"));
        must(&format!(
            "ip -n {nx} link add {inside} type veth peer name {port} netns {nn} && \
             ip -n {nn} link set {port} master {br} && ip -n {nn} link set {port} up"
        ));
    }

    /// `ip route add SPEC` in namespace `n`.
    pub fn route(&self, n: &str, spec: &str) {
        must(&format!("ip -n {} route add {spec}", self.ns(n)));
    }

    /// The resolv.conf that applications in namespace `n` read (see
    /// [`Netns::resolv_conf`]).
    pub fn resolv_conf(&mut self, n: &str, text: &str) {
        self.netns_mut(n).resolv_conf(text);
    }

    /// The `--log` filter given to every `scold` process started after this.
    pub fn set_log_filter(&mut self, filter: &str) {
        self.log_filter = Some(filter.to_string());
    }

    /// Starts `args` in namespace `n`, in the working folder, with stdout and stderr in
    /// `{label}.log`.
    pub fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        assert!(
            self.procs.iter().all(|p| p.name() != label),
            "a process {label} already runs"
        );
        // `ip netns exec` execs the program: the PID we hold is the program's own.
        let p = Proc::spawn(
            label,
            Command::new("ip")
                .args(["netns", "exec", &self.ns(n)])
                .args(args)
                .current_dir(self.dir.path())
                .env("NO_COLOR", "1"),
            &self.path(&format!("{label}.log")),
        );
        self.procs.push(p.quiet());
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

    fn find(&mut self, label: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name() == label)
    }

    fn take(&mut self, label: &str) -> Proc {
        let i = self
            .procs
            .iter()
            .position(|p| p.name() == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        self.procs.remove(i)
    }

    /// The PID of process `label`.
    pub fn pid(&self, label: &str) -> u32 {
        self.procs
            .iter()
            .find(|p| p.name() == label)
            .map(Proc::pid)
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    /// Sends `sig` to process `label` (by its PID, while it is not reaped).
    pub fn signal(&mut self, label: &str, sig: crate::proc::Signal) {
        self.find(label)
            .unwrap_or_else(|| panic!("no process {label}"))
            .signal(sig)
            .unwrap_or_else(|e| panic!("cannot signal {label}: {e}"));
    }

    /// SIGTERM by PID, SIGKILL after the grace; its exit status.
    pub fn stop(&mut self, label: &str) -> Option<ExitStatus> {
        self.take(label).terminate()
    }

    /// SIGKILL by PID: the process gets no chance to say goodbye.
    pub fn kill9(&mut self, label: &str) -> Option<ExitStatus> {
        self.take(label).kill9()
    }

    /// Whether process `label` is still running.
    pub fn running(&mut self, label: &str) -> bool {
        self.find(label).is_some_and(Proc::alive)
    }

    /// Waits up to `secs` for `label` to exit by itself; its exit status, after which
    /// it is no longer held. `None` if it still runs (or there is no such process).
    pub fn wait_exit(&mut self, label: &str, secs: u64) -> Option<ExitStatus> {
        let st = self.find(label)?.wait_exit(Duration::from_secs(secs))?;
        self.take(label);
        Some(st)
    }

    /// A process's output, without terminal colour codes.
    pub fn log(&self, label: &str) -> String {
        let raw = std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default();
        crate::text::strip_ansi(&raw)
    }

    /// The last lines of every running process's log, for a failure message.
    pub fn logs(&self) -> String {
        self.procs.iter().map(Proc::log_tail).collect()
    }

    /// Waits up to `secs` until `label` logged `text`; fails the test with the logs.
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

    /// Runs `cmd` (through `sh` when it has shell syntax) in namespace `n`, at most
    /// 60 s.
    pub fn exec(&self, n: &str, cmd: &str) -> Output {
        sh(&format!(
            "timeout {EXEC_SECS} ip netns exec {} {cmd}",
            self.ns(n)
        ))
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

    /// stdout of `cmd` in namespace `n`; fails the test unless it succeeds.
    pub fn must(&self, n: &str, cmd: &str) -> String {
        let o = self.exec(n, cmd);
        assert!(
            o.status.success(),
            "command failed in {n} ({}): {cmd}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `scold ARGS` in namespace `n`.
    pub fn scold_cli(&self, n: &str, args: &str) -> Output {
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
        if std::thread::panicking() && !self.procs.is_empty() {
            eprintln!("logs of the failed test's processes:\n{}", self.logs());
        }
        // Newest first: clients before the servers they talk to.
        while let Some(mut p) = self.procs.pop() {
            p.terminate();
        }
        // The namespaces, their /etc folders and the working folder go with the fields.
    }
}
