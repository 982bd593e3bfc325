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
