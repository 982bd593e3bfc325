//! What the testbed needs from the host, checked before anything is built or started.
//!
//! A run that finds a missing program half-way has already spent minutes and left
//! namespaces to clean up; this check names every missing program at once, with the one
//! `apt-get` line that installs them all. `scripts/lab` installs the same packages before
//! it builds the binary (a unit test keeps its list in step with [`needed`]).

use crate::LabError;
use std::path::Path;

/// A program the lab runs, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    /// What the lab uses it for, shown when it is missing.
    pub used_for: &'static str,
}

const fn tool(program: &'static str, package: &'static str, used_for: &'static str) -> Tool {
    Tool {
        program,
        package,
        used_for,
    }
}

/// Every program of every mode of the lab.
pub const ALL: [Tool; 9] = [
    tool("ip", "iproute2", "namespaces, links, addresses and routes"),
    tool("tc", "iproute2", "the rate-limited bottleneck links"),
    tool(
        "nft",
        "nftables",
        "the target's management route and tunnel counters",
    ),
    tool(
        "timeout",
        "coreutils",
        "bounding the attack tools' run time",
    ),
    tool(
        "ss",
        "iproute2",
        "reading the proxy's sockets under the admission flood",
    ),
    tool(
        "hping3",
        "hping3",
        "the scan for the hidden gateway (--adversary)",
    ),
    tool(
        "tcpdump",
        "tcpdump",
        "watching what the hidden gateway sends (--adversary)",
    ),
    tool(
        "etcd",
        "etcd-server",
        "the etcd cluster coordinator replicas share (--coordinators 2 or more)",
    ),
    tool(
        "knotd",
        "knot",
        "TargetDNS's secondary (--coordinators 2 or more)",
    ),
];

/// The programs a run needs: the scenario, `up` and `bench` need the first five;
/// `--adversary` adds the attack tools, a replicated control plane (`--coordinators`
/// above 1) etcd and Knot.
pub fn needed(adversary: bool, replicated: bool) -> Vec<Tool> {
    ALL.iter()
        .copied()
        .filter(|t| adversary || !matches!(t.program, "hping3" | "tcpdump"))
        .filter(|t| replicated || !matches!(t.program, "etcd" | "knotd"))
        .collect()
}

/// The tools of `tools` that are not on `path` (a PATH-style list of folders).
pub fn missing_on(tools: &[Tool], path: Option<&std::ffi::OsStr>) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|t| {
            !path
                .map(|p| std::env::split_paths(p).any(|d| d.join(t.program).is_file()))
                .unwrap_or(false)
        })
        .collect()
}

/// The packages that install `tools`, each once, in order.
pub fn packages(tools: &[Tool]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in tools {
        if !out.contains(&t.package) {
            out.push(t.package);
        }
    }
    out
}

/// Fails, naming every missing program and the command that installs them, unless all
/// of `needed(adversary, replicated)` are on PATH and the kernel offers TUN devices.
pub fn check(adversary: bool, replicated: bool) -> Result<(), LabError> {
    let missing = missing_on(
        &needed(adversary, replicated),
        std::env::var_os("PATH").as_deref(),
    );
    if !missing.is_empty() {
        let programs = missing
            .iter()
            .map(|t| format!("`{}` ({}, for {})", t.program, t.package, t.used_for))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(LabError::ToolsMissing {
            programs,
            install: format!(
                "apt-get install -y --no-install-recommends {}",
                packages(&missing).join(" ")
            ),
        });
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::NoTun);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversary_adds_the_attack_tools() {
        let plain = needed(false, false);
        assert!(plain
            .iter()
            .all(|t| !["hping3", "etcd", "knotd"].contains(&t.program)));
        assert!(needed(true, false).iter().any(|t| t.program == "hping3"));
        assert!(needed(false, true).iter().any(|t| t.program == "etcd"));
        assert_eq!(needed(true, true).len(), ALL.len());
    }

    #[test]
    fn missing_programs_and_one_install_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ip"), "").unwrap();
        let missing = missing_on(&needed(true, false), Some(dir.path().as_os_str()));
        assert!(missing.iter().all(|t| t.program != "ip"));
        assert!(missing.iter().any(|t| t.program == "tc"));
        // iproute2 once, although tc and ss both come from it.
        assert_eq!(
            packages(&missing),
            vec!["iproute2", "nftables", "coreutils", "hping3", "tcpdump"]
        );
        assert_eq!(
            missing_on(&needed(false, false), None).len(),
            needed(false, false).len()
        );
    }

    /// scripts/lab installs the packages before building, so it cannot ask the binary.
    #[test]
    fn scripts_lab_installs_every_package() {
        let script = include_str!("../../../scripts/lab");
        let list = script
            .lines()
            .find_map(|l| l.strip_prefix("packages=("))
            .and_then(|l| l.split(')').next())
            .expect("scripts/lab has a line packages=(...)");
        for p in packages(&ALL) {
            assert!(
                list.split_whitespace().any(|w| w == p),
                "scripts/lab does not install {p} (its packages: {list})"
            );
        }
    }
}
