//! What a test needs of the host (root, tools) and running commands on it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether the tests run with an effective user id of 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Fails the test unless it runs as root: namespaces, veth links, TUN devices and
/// nftables need it.
pub fn require_root() {
    assert!(
        is_root(),
        "these tests create network namespaces and need root: run them as root \
         (scripts/test does, as CI)"
    );
}

/// Directories searched after `PATH`: `sudo` and cron often leave the sbin ones out.
const EXTRA_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The executable `tool` on `PATH` or in the usual system directories.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of `tool`; fails the test, naming the Debian package to install, when it
/// is missing. A test whose tool is missing fails: it never passes without testing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!("`{tool}` is missing: install the Debian package `{package}` (apt-get install {package})")
    })
}

/// [`require_tool`] for each (tool, Debian package).
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        require_tool(tool, package);
    }
}

/// Runs `cmd` with `sh -c`; its output whatever its exit status.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh -c {cmd:?}: {e}"))
}

/// Runs `cmd` with `sh -c` and returns its stdout; fails the test, with the command
/// and its output, unless it succeeds.
pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed ({}): {cmd}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `program` with `args` (no shell) and returns its stdout; fails the test unless
/// it succeeds.
pub fn must_run(program: &str, args: &[&str]) -> String {
    let o = output(Command::new(program).args(args));
    assert!(
        o.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `cmd` to completion; fails the test only if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_tool_is_found_with_its_path() {
        let p = require_tool("sh", "dash");
        assert!(p.is_absolute() && p.ends_with("sh"), "{}", p.display());
    }

    #[test]
    #[should_panic(
        expected = "`scold-no-such-tool` is missing: install the Debian package `scold-pkg`"
    )]
    fn a_missing_tool_fails_naming_the_package() {
        require_tool("scold-no-such-tool", "scold-pkg");
    }

    #[test]
    fn must_returns_stdout_and_fails_with_the_command() {
        assert_eq!(must("echo hello"), "hello\n");
        assert_eq!(must_run("echo", &["a", "b"]), "a b\n");
        let err = std::panic::catch_unwind(|| must("echo oops >&2; exit 3")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("exit 3") && msg.contains("oops"), "{msg}");
    }
}
