//! Child processes that never outlive their test.

use crate::text::{strip_ansi, tail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How many lines of a log a failure shows.
const LOG_TAIL: usize = 60;

/// The signals tests send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT, what Ctrl-C sends.
    Int,
    /// SIGTERM, what an operator's `kill` or systemd sends.
    Term,
    /// SIGKILL: no chance to clean up.
    Kill,
    /// SIGSTOP: the process hangs (a stuck server), until SIGCONT.
    Stop,
    /// SIGCONT: a stopped process goes on.
    Cont,
    /// SIGHUP: a daemon reloads its config file.
    Hup,
}

/// Sends `sig` to process `pid`. Only for PIDs the test itself started or saw start in
/// its own namespaces; a [`Proc`] signals its child with [`Proc::signal`], which cannot
/// hit a reused PID.
pub fn send_signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is not a process id")))?;
    let sig = match sig {
        Signal::Int => rustix::process::Signal::INT,
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Kill => rustix::process::Signal::KILL,
        Signal::Stop => rustix::process::Signal::STOP,
        Signal::Cont => rustix::process::Signal::CONT,
        Signal::Hup => rustix::process::Signal::HUP,
    };
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

/// A child process, stopped by its PID (SIGTERM, SIGKILL after [`STOP_GRACE`]) when
/// dropped, also while a failed assertion unwinds. A started process's stdout and
/// stderr go to a log file; when the test fails, the drop prints the log's tail.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    report_on_panic: bool,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr in `log` (created).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("create the log {}: {e}", log.display()));
        let out = f
            .try_clone()
            .unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: Some(log.to_path_buf()),
            report_on_panic: true,
        }
    }

    /// Takes charge of a child started elsewhere (with its own stdio): it is stopped
    /// when this is dropped.
    pub fn adopt(name: &str, child: Child) -> Proc {
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: None,
            report_on_panic: true,
        }
    }

    /// No log tail on a failing test's output (the owner reports it itself).
    pub(crate) fn quiet(mut self) -> Proc {
        self.report_on_panic = false;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn held(&self) -> &Child {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} was already stopped", self.name))
    }

    /// The PID of the process (`ip netns exec` execs its program, so it is the
    /// program's own).
    pub fn pid(&self) -> u32 {
        self.held().id()
    }

    /// The child itself, for its pipes or its exit status.
    pub fn child(&mut self) -> &mut Child {
        let name = &self.name;
        self.child
            .as_mut()
            .unwrap_or_else(|| panic!("{name} was already stopped"))
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends `sig` while the child has not been reaped (so its PID is still its own).
    pub fn signal(&mut self, sig: Signal) -> std::io::Result<()> {
        let c = self.child();
        if c.try_wait()?.is_some() {
            return Ok(());
        }
        send_signal(c.id(), sig)
    }

    /// Waits up to `timeout` for it to exit by itself; its exit status, or `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.as_mut()?.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`]; its exit
    /// status (`None` if it was already stopped).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = self.signal(Signal::Term);
        let st = self.wait_exit(STOP_GRACE);
        let mut c = self.child.take()?;
        st.or_else(|| {
            let _ = c.kill();
            c.wait().ok()
        })
    }

    /// SIGKILL now: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Its output so far, without terminal colour codes.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| strip_ansi(&t))
            .unwrap_or_default()
    }

    /// The last lines of its output, headed by its name.
    pub fn log_tail(&self) -> String {
        format!("--- {}\n{}\n", self.name, tail(&self.log_text(), LOG_TAIL))
    }

    /// Waits until its log contains `text`; fails the test with the log after `timeout`
    /// or when the process exits first.
    pub fn wait_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(text) {
            assert!(
                self.alive(),
                "{} exited before logging {text:?}\n{}",
                self.name,
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "{} did not log {text:?} within {timeout:?}\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until something accepts TCP connections on `addr`; fails the test with
    /// this process's log after `timeout` or when it exits first.
    pub fn wait_tcp_port(&mut self, addr: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !crate::tcp_listening(addr) {
            assert!(
                self.alive(),
                "{} exited before listening on {addr}\n{}",
                self.name,
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "nothing listens on {addr} after {timeout:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if std::thread::panicking() && self.report_on_panic && self.log.is_some() {
            eprintln!("{}", self.log_tail());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    }

    #[test]
    fn output_goes_to_the_log_and_the_exit_status_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "echo",
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 7"]),
            &dir.path().join("echo.log"),
        );
        let st = p.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(st.code(), Some(7));
        assert_eq!(p.log_text(), "out\nerr\n");
        assert_eq!(p.terminate().map(|s| s.code()), Some(Some(7)));
    }

    #[test]
    fn drop_stops_the_process_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "sleep",
            Command::new("sleep").arg("300"),
            &dir.path().join("sleep.log"),
        );
        let pid = p.pid();
        assert!(p.alive());
        drop(p);
        assert!(!running(pid), "sleep {pid} outlived its Proc");
    }

    #[test]
    fn sigterm_is_followed_by_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "stubborn",
            // No child of its own that SIGKILL would orphan: only short sleeps.
            Command::new("sh").args([
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 0.1; done",
            ]),
            &dir.path().join("stubborn.log"),
        );
        p.wait_log("ready", Duration::from_secs(10));
        let t = Instant::now();
        let st = p.terminate().expect("status");
        assert!(t.elapsed() >= STOP_GRACE, "{:?}", t.elapsed());
        assert!(!st.success());
    }

    #[test]
    fn an_adopted_child_is_stopped_too() {
        let child = Command::new("sleep").arg("300").spawn().unwrap();
        let mut p = Proc::adopt("sleep", child);
        let pid = p.pid();
        p.signal(Signal::Int).unwrap();
        assert!(p.wait_exit(Duration::from_secs(10)).is_some());
        drop(p);
        assert!(!running(pid));
    }
}
