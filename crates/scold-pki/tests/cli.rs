//! `scold ca` end to end, in process: the same argument parsing and functions the binary
//! runs.

use clap::{CommandFactory, Parser};
use scold_pki::cli::{execute, CaArgs};
use scold_pki::{Ca, Identity, Role, TlsIdentity};

#[derive(Parser, Debug)]
#[command(name = "scold")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    Ca(CaArgs),
}

fn ca(args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["scold", "ca"];
    argv.extend_from_slice(args);
    let Cmd::Ca(a) = Cli::try_parse_from(argv)?.cmd;
    execute(&a)
}

#[test]
fn init_issue_revoke_show_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();

    let e = ca(&["--dir", d, "show"]).unwrap_err().to_string();
    assert!(
        e.contains(&format!("run `scold ca --dir {d} init` first")),
        "{e}"
    );

    let out = ca(&[
        "--dir",
        d,
        "init",
        "--org",
        "Example Consortium",
        "--days",
        "30",
    ])
    .unwrap();
    assert!(out.contains("Example Consortium"), "{out}");
    let e = ca(&["init", "--dir", d]).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");

    let certs = tmp.path().join("certs");
    let c = certs.to_str().unwrap();
    let out = ca(&[
        "--dir",
        d,
        "issue",
        "--role",
        "proxy",
        "--name",
        "p1",
        "--ip",
        "10.0.0.1",
        "--ip",
        "fd00::1",
        "--dns",
        "p1.example",
        "--days",
        "10",
        "--out",
        c,
    ])
    .unwrap();
    assert!(out.contains("scold://proxy/p1"), "{out}");
    ca(&[
        "--dir",
        d,
        "issue",
        "--role",
        "coordinator",
        "--name",
        "c1",
        "--out",
        c,
    ])
    .unwrap();
    for f in [
        "proxy-p1.crt",
        "proxy-p1.key",
        "ca.crt",
        "coordinator-c1.key",
    ] {
        assert!(certs.join(f).exists(), "{f} missing");
    }
    // The default output directory.
    ca(&["--dir", d, "issue", "--role", "gateway", "--name", "g1"]).unwrap();
    assert!(dir.join("issued/gateway-g1.crt").exists());

    // The issued files load as a daemon would load them.
    let paths = scold_pki::TlsPaths {
        ca_cert: certs.join("ca.crt"),
        cert: certs.join("proxy-p1.crt"),
        key: certs.join("proxy-p1.key"),
        crl: Some(dir.join("crl.pem")),
    };
    let tls = TlsIdentity::load(&paths).unwrap();
    assert_eq!(tls.identity(), &Identity::new(Role::Proxy, "p1").unwrap());
    assert_eq!(tls.reload_crl(), 0);

    let json: serde_json::Value =
        serde_json::from_str(&ca(&["--dir", d, "show", "--json"]).unwrap()).unwrap();
    let list = json["certificates"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|c| c["status"] == "valid"), "{json}");
    let p1 = list
        .iter()
        .find(|c| c["uri"] == "scold://proxy/p1")
        .unwrap();
    let serial = p1["serial"].as_str().unwrap().to_string();
    assert_eq!(serial.len(), 32);

    // Revoke by serial, in the colon form some tools print.
    let colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
        .collect();
    let out = ca(&["--dir", d, "revoke", "--serial", &colons.join(":")]).unwrap();
    assert!(out.contains(&serial), "{out}");
    assert_eq!(tls.reload_crl(), 1, "the rewritten CRL lists the serial");
    ca(&["--dir", d, "revoke", "--role", "gateway", "--name", "g1"]).unwrap();
    assert_eq!(tls.reload_crl(), 2);

    let table = ca(&["--dir", d, "show"]).unwrap();
    let line = |who: &str| table.lines().find(|l| l.contains(who)).unwrap().to_string();
    assert!(line("scold://proxy/p1").ends_with("revoked"), "{table}");
    assert!(line("scold://gateway/g1").ends_with("revoked"), "{table}");
    assert!(line("scold://coordinator/c1").ends_with("valid"), "{table}");
    assert!(table.contains("Example Consortium"), "{table}");

    let e = ca(&["--dir", d, "revoke", "--role", "proxy", "--name", "nobody"]).unwrap_err();
    assert!(e.to_string().contains("scold ca show"), "{e}");
    let e = ca(&["--dir", d, "revoke", "--serial", "xyz"]).unwrap_err();
    assert!(e.to_string().contains("not hex"), "{e}");

    ca(&["--dir", d, "crl", "--days", "3"]).unwrap();
    assert_eq!(tls.reload_crl(), 2);
    let opened = Ca::open(&dir).unwrap();
    assert_eq!(opened.entries().iter().filter(|e| e.revoked).count(), 2);

    // --force replaces the CA and forgets the old index.
    ca(&["--dir", d, "init", "--force"]).unwrap();
    assert!(Ca::open(&dir).unwrap().entries().is_empty());
}

#[test]
fn bad_arguments_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ca");
    let d = d.to_str().unwrap();
    ca(&["--dir", d, "init"]).unwrap();
    for bad in [
        &["--dir", d, "issue", "--role", "king", "--name", "x"][..],
        &["--dir", d, "issue", "--role", "proxy"],
        &[
            "--dir",
            d,
            "issue",
            "--role",
            "proxy",
            "--name",
            "x",
            "--ip",
            "not-an-ip",
        ],
        &[
            "--dir", d, "issue", "--role", "proxy", "--name", "x", "--days", "0",
        ],
        &["--dir", d, "revoke"],
        &["--dir", d, "revoke", "--role", "proxy"],
        &[
            "--dir", d, "revoke", "--serial", "01", "--role", "proxy", "--name", "x",
        ],
    ] {
        assert!(ca(bad).is_err(), "{bad:?} accepted");
    }
    let e = ca(&["--dir", d, "issue", "--role", "proxy", "--name", "Bad/Name"]).unwrap_err();
    assert!(e.to_string().contains("invalid node name"), "{e}");
    let e = ca(&[
        "--dir",
        d,
        "issue",
        "--role",
        "proxy",
        "--name",
        "x",
        "--dns",
        "bücher.example",
    ])
    .unwrap_err();
    assert!(format!("{e:#}").contains("not a DNS name"), "{e:#}");
    // Nothing was issued by the refused commands.
    assert!(Ca::open(std::path::Path::new(d))
        .unwrap()
        .entries()
        .is_empty());
}

#[test]
fn every_flag_is_documented() {
    let mut cmd = Cli::command();
    cmd.build();
    let ca = cmd.find_subcommand_mut("ca").unwrap();
    for sub in ["init", "issue", "revoke", "show", "crl"] {
        let sc = ca
            .find_subcommand_mut(sub)
            .unwrap_or_else(|| panic!("{sub} missing"));
        assert!(sc.get_about().is_some(), "{sub} has no description");
        for arg in sc.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(
                arg.get_help().is_some(),
                "{sub} --{} undocumented",
                arg.get_id()
            );
        }
        let help = sc.render_long_help().to_string();
        assert!(help.contains("--dir"), "{sub}: {help}");
    }
}

#[test]
fn two_handles_on_one_ca_do_not_lose_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let mut a = Ca::init(&dir, &Default::default()).unwrap();
    let mut b = Ca::open(&dir).unwrap();
    let v = scold_pki::Validity::days(1);
    let out = tmp.path().join("out");
    a.issue(
        &Identity::new(Role::Proxy, "p1").unwrap(),
        &[],
        &[],
        v,
        &out,
    )
    .unwrap();
    b.issue(
        &Identity::new(Role::Proxy, "p2").unwrap(),
        &[],
        &[],
        v,
        &out,
    )
    .unwrap();
    a.revoke(&scold_pki::RevokeTarget::Identity(
        Identity::new(Role::Proxy, "p2").unwrap(),
    ))
    .unwrap();
    let all = Ca::open(&dir).unwrap();
    let names: Vec<_> = all
        .entries()
        .iter()
        .map(|e| (e.identity.name.as_str(), e.revoked))
        .collect();
    assert_eq!(names, [("p1", false), ("p2", true)]);
}

#[test]
fn damaged_index_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    Ca::init(&dir, &Default::default()).unwrap();
    std::fs::write(dir.join("index.json"), b"{ not json").unwrap();
    let e = Ca::open(&dir).unwrap_err();
    assert!(matches!(e, scold_pki::PkiError::Index { .. }), "{e}");
    std::fs::write(dir.join("ca.key"), b"garbage").unwrap();
    assert!(matches!(
        Ca::open(&dir),
        Err(scold_pki::PkiError::BadPem { .. })
    ));
}
