//! What the namespace tests of the data-path daemons share beyond `scold_testkit` (the
//! binary, root and tool checks, the namespace harness `Net`, processes): certificates
//! ([`certs`]), DNS servers and resolvers ([`dns`]), the linked consortium topology
//! ([`consortium`]) and file checksums.
#![allow(dead_code)]

pub mod certs;
pub mod consortium;
pub mod dns;

use std::path::Path;

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    scold_testkit::must(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A paced download for the tests whose traffic must last: as `python3 SCRIPT OUT RATE
/// HOST PORT IDLE` it reads what HOST:PORT sends over one TCP connection into OUT, at most RATE
/// bytes/s, flushing as it goes (the tests watch the file grow), and prints the byte
/// count at the end. Connecting waits at most 10 s, a silent connection IDLE s.
pub const PACED_READER: &str = r#"
import socket, sys, time
out, rate = sys.argv[1], float(sys.argv[2])
host, port, idle = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.create_connection((host, port), timeout=10)
s.settimeout(idle)
t0, n = time.monotonic(), 0
with open(out, "wb") as f:
    while True:
        d = s.recv(65536)
        if not d:
            break
        f.write(d)
        f.flush()
        n += len(d)
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
print(n, flush=True)
"#;

/// A fresh WireGuard key pair (private, public), base64.
pub fn keypair() -> (String, String) {
    let private = scold_tunnel::keys::generate_private().expect("key");
    let public = scold_tunnel::keys::public_of(&private).expect("public");
    (private, public)
}

/// `gateway.toml` of the gateway in namespace g behind one proxy (proxy-1 at 10.2.0.1)
/// over WireGuard, its LAN on the device `gt`: the small labs with one proxy, one
/// gateway and the target t behind it.
pub fn wireguard_gateway(
    lab: &scold_testkit::Net,
    gw_key: &str,
    proxy_pub: &str,
) -> std::path::PathBuf {
    lab.write(
        "gateway.toml",
        &format!(
            "lan_interface = \"{}\"\ntun_name = \"sg{}\"\n\
             [tunnel]\nencap = \"wireguard\"\nlisten = \"0.0.0.0:51820\"\nprivate_key = \"{gw_key}\"\n\
             [[peers]]\nname = \"proxy-1\"\naddress = \"10.2.0.1\"\nencap = \"wireguard\"\npublic_key = \"{proxy_pub}\"\n",
            lab.dev("gt"),
            lab.suffix(),
        ),
    )
}
