//! Certificates the namespace tests issue: with the `scold ca` CLI as an operator does,
//! or with the library when a certificate must carry an IP address.
#![allow(dead_code)]

use scold_testkit::{must, scold_bin, Net};
use std::path::{Path, PathBuf};

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
