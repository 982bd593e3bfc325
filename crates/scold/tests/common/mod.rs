//! What the tests of the `scold` binary that run a coordinator share: the built binary
//! and the TSIG secret of the coordinator's key.
#![allow(dead_code)]

use std::process::Command;

/// The `scold` binary this package builds.
pub const SCOLD: &str = env!("CARGO_BIN_EXE_scold");
/// The TSIG secret of the coordinator's key at TargetDNS (base64).
pub const SECRET: &str = "c2NvbGQtZTJlLXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODk=";

/// Runs `scold ARGS` to the end; its stdout. Fails the test unless it succeeds.
pub fn scold(args: &[&str]) -> String {
    let out = Command::new(SCOLD).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scold {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
