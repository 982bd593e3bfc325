//! Config files: every role's example parses, and mistakes are reported with the file,
//! the key and a hint at the fix.

use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn examples_parse() {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "proxy.toml", scold_node::proxy::EXAMPLE);
    let c = scold_node::proxy::Config::load(&p).unwrap();
    assert_eq!(c.sessions.len(), 1);
    assert_eq!(c.nat_services.len(), 1);
    let p = write(&d, "gateway.toml", scold_node::gateway::EXAMPLE);
    assert_eq!(
        scold_node::gateway::Config::load(&p).unwrap().peers.len(),
        1
    );
    let p = write(&d, "target.toml", scold_node::target::EXAMPLE);
    assert_eq!(
        scold_node::target::Config::load(&p).unwrap().routes.len(),
        1
    );
}

fn err_of(text: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "bad.toml", text);
    let e = scold_node::proxy::Config::load(&p).unwrap_err();
    format!("{e:#}")
}

#[test]
fn errors_name_file_key_and_fix() {
    let e = err_of("[tunnel]\nlisten = \"0.0.0.0:51820\"\nlisen = 1\n");
    assert!(e.contains("bad.toml") && e.contains("lisen"), "{e}");

    let e = err_of("[tunnel]\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"short\"\n");
    assert!(e.contains("bad.toml") && e.contains("private_key"), "{e}");

    let e = err_of(
        "[tunnel]\nlisten = \"0.0.0.0:51820\"\n[[sessions]]\nclient = \"10.0.0.1\"\nencap = \"wireguard\"\ntargets = [\"10.4.0.2/32\"]\n",
    );
    assert!(e.contains("sessions[0]") && e.contains("public_key"), "{e}");

    let e = err_of(
        "[tunnel]\nlisten = \"0.0.0.0:51820\"\n[[routes]]\ndestination = \"10.4.0.1/24\"\nvia = { peer = \"gw\" }\n",
    );
    assert!(
        e.contains("10.4.0.0/24"),
        "the fix for set host bits is suggested: {e}"
    );

    let e = err_of("[[peers]]\nname = \"gw\"\naddress = \"10.2.0.2\"\nencap = \"udp\"\n");
    assert!(e.contains("tunnel.listen"), "{e}");

    let e = err_of(
        "[tunnel]\nlisten = \"0.0.0.0:51820\"\n[[nat_services]]\nprotocol = \"tcp\"\nlisten = \"10.1.0.1:80\"\ntarget = \"10.4.0.2:80\"\n",
    );
    assert!(e.contains("[nat]"), "{e}");

    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.toml");
    let e = format!(
        "{:#}",
        scold_node::proxy::Config::load(&missing).unwrap_err()
    );
    assert!(e.contains("nope.toml"), "{e}");
}
