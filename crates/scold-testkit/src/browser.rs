//! Headless Chromium (Debian `chromium`), to check pages as a person sees them: the DOM
//! after the page's scripts ran, a screenshot, and a live page driven over the DevTools
//! protocol.
//!
//! Chromium always runs inside a network namespace (one the test made, or a lab's), so
//! nothing it does in the background (component updates, safe browsing) leaves the
//! host: the namespace has no route out. It runs as root there, hence `--no-sandbox`.

use crate::{require_tool, Proc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Flags of every run: headless, no first-run work, no background fetches.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-pings",
    "--hide-scrollbars",
    "--mute-audio",
];

/// The `chromium` binary; fails the test naming the package when it is missing.
pub fn require_chromium() -> std::path::PathBuf {
    require_tool("chromium", "chromium")
}

fn chromium_in(netns: &str, profile: &Path, extra: &[&str]) -> Command {
    let chromium = require_chromium();
    let mut c = Command::new("timeout");
    c.args(["120", "ip", "netns", "exec", netns])
        .arg(chromium)
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra);
    c
}

fn ran(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "chromium {what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` once it loaded and its scripts ran (`--dump-dom`), seen from inside
/// `netns`.
pub fn dump_dom(netns: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let out = chromium_in(netns, profile.path(), &["--dump-dom", url])
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&ran("--dump-dom", out).stdout).into_owned()
}

/// A PNG screenshot of `url` at `width` x `height` into `png`, seen from inside `netns`.
pub fn screenshot(netns: &str, url: &str, png: &Path, width: u32, height: u32) {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let out = chromium_in(
        netns,
        profile.path(),
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={width},{height}"),
            url,
        ],
    )
    .stdin(Stdio::null())
    .output()
    .expect("run chromium");
    ran("--screenshot", out);
}

/// A live page in headless Chromium, driven over the DevTools protocol through a pipe
/// (`--remote-debugging-pipe`: messages are JSON, each ended by a NUL byte, Chromium
/// reads fd 3 and writes fd 4). Dropping it closes the pipe and stops Chromium by PID.
pub struct Browser {
    to: Option<ChildStdin>,
    from: mpsc::Receiver<Value>,
    session: String,
    next: u64,
    proc: Proc,
    _profile: tempfile::TempDir,
}

/// How long one DevTools call may take.
const CALL: Duration = Duration::from_secs(30);

impl Browser {
    /// Opens `url` in Chromium inside `netns`; `log` takes Chromium's own output.
    pub fn open(netns: &str, url: &str, log: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("chromium profile dir");
        // The shell hands our pipes to Chromium as fds 3 and 4 (stdin and stdout are the
        // pipes here), then points its stdin at /dev/null and stdout at the log.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "sh", "-c"])
            .arg(format!(
                "exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2 --remote-debugging-pipe --user-data-dir={} about:blank",
                profile.path().display()
            ))
            .arg(require_chromium())
            .args(FLAGS);
        let logf = std::fs::File::create(log).expect("chromium log");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .expect("start chromium");
        let to = child.stdin.take();
        let stdout = child.stdout.take().expect("chromium's pipe");
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(r.read_until(0, &mut buf), Ok(n) if n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            to,
            from,
            session: String::new(),
            next: 0,
            proc: Proc::adopt("chromium", child),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": url }));
        let id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": id, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode");
        bytes.push(0);
        let to = self.to.as_mut().expect("pipe open");
        to.write_all(&bytes)
            .and_then(|_| to.flush())
            .unwrap_or_else(|e| panic!("DevTools pipe to chromium: {e}"));
        let deadline = Instant::now() + CALL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no DevTools answer to {method} within {CALL:?}: {e}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// The value of the JavaScript expression `expr` in the page (JSON-able values).
    pub fn eval(&mut self, expr: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script {expr:?} threw: {e}");
        }
        r["result"]["value"].clone()
    }
}

impl Browser {
    /// A PNG of the page as it is now, written to `png`; its size in bytes.
    pub fn screenshot(&mut self, png: &Path) -> usize {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let bytes = base64(r["data"].as_str().expect("screenshot data"));
        std::fs::write(png, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", png.display()));
        bytes.len()
    }
}

/// Standard base64 (what DevTools sends binary data as).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the pipe makes Chromium exit; the Proc stops it by PID otherwise.
        self.to.take();
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::base64("AAEC/w=="), [0, 1, 2, 255]);
    }
}
