//! One network namespace, uniquely named, removed on drop.

use crate::host::{must, must_run, require_root, require_tool, sh};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds per-namespace files (`resolv.conf`).
pub const NETNS_ETC_DIR: &str = "/etc/netns";

/// Every name this crate gives starts with this, so a namespace left by a killed test
/// run is recognised as a test's.
pub(crate) const MARK: &str = "scoldt-";

/// A suffix no other test, test binary or parallel run shares: this process's PID
/// (base 36, fixed width, so the whole PID fits) and a per-process counter. Short, so
/// that device names built from it fit the kernel's 15 bytes.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let pid = base36(std::process::id());
    format!(
        "{pid:0>5}{}",
        base36(COUNTER.fetch_add(1, Ordering::SeqCst))
    )
}

fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// A network namespace with its loopback up. Dropping it deletes the namespace and its
/// `/etc/netns` folder, also while a failed assertion unwinds.
pub struct Netns {
    name: String,
    etc: Option<PathBuf>,
}

impl Netns {
    /// A namespace named `scoldt-{tag}-{unique suffix}`. Checks root and `ip`.
    pub fn new(tag: &str) -> Netns {
        loop {
            let name = format!("{MARK}{tag}-{}", unique_suffix());
            // A namespace of that name can only be the leftover of a killed run whose
            // PID was the same as ours: never ours to take or to delete.
            if !Netns::exists(&name) {
                return Netns::create(name);
            }
        }
    }

    /// Creates the namespace `name`; fails the test if it cannot (it exists, no root).
    pub(crate) fn create(name: String) -> Netns {
        require_root();
        require_tool("ip", "iproute2");
        // Owned (and so deleted on drop) only once `ip netns add` made it: a name that
        // existed before is someone else's.
        must(&format!("ip netns add {name}"));
        let ns = Netns { name, etc: None };
        must(&format!("ip -n {} link set lo up", ns.name));
        ns
    }

    /// Whether a namespace of that name exists.
    pub fn exists(name: &str) -> bool {
        Path::new(NETNS_DIR).join(name).exists()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program` with `args` inside the namespace; its stdout. Fails the test
    /// unless it succeeds.
    pub fn must_run(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        must_run("ip", &all)
    }

    /// Writes `/etc/netns/NAME/resolv.conf`: `ip netns exec` mounts it over
    /// `/etc/resolv.conf`, so the namespace's applications ask the resolver it names.
    pub fn resolv_conf(&mut self, text: &str) {
        let etc = Path::new(NETNS_ETC_DIR).join(&self.name);
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("create {}: {e}", etc.display()));
        self.etc = Some(etc.clone());
        let file = etc.join("resolv.conf");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
        if let Some(etc) = &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_unique_and_short() {
        let a = unique_suffix();
        let b = unique_suffix();
        assert_ne!(a, b);
        assert!(a.len() <= 7, "{a}");
        assert!(a.starts_with(&format!("{:0>5}", base36(std::process::id()))));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        // The largest PID Linux gives (pid_max is at most 2^22) takes five digits.
        assert_eq!(base36(4_194_304), "2hwcg");
    }
}
