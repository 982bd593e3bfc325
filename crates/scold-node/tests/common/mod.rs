//! Helpers shared by the namespace tests of the data-path daemons: the `scold` binary,
//! required tools, shell commands, stopping a started process by its PID; [`net`] is the
//! namespace harness itself.
#![allow(dead_code)]

pub mod consortium;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn scold_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SCOLD_BIN") {
        return PathBuf::from(p);
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("scold");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "the scold binary is not built under {}: run `cargo build -p scold` first (or set SCOLD_BIN)",
        target.display()
    );
}

pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is missing: install the Debian package {package}"
    );
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn terminate(child: &mut Child) {
    // By the PID we started, never by name.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn sha256(path: &Path) -> String {
    must(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
