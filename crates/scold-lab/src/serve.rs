//! The target's services in the testbed: an HTTP/1.1 server of generated files and a
//! bulk TCP download service (the paper's FTP: N bytes on request, nothing else).
//!
//! Plain threads and blocking sockets: a handful of concurrent downloads is all the lab
//! asks for, and threads started from a thread inside a namespace stay in it, which keeps
//! the server usable both as a `scold lab serve` process and inside a test's namespace
//! thread. Listeners are bound in [`Server::bind`], on the caller's thread, so the
//! caller decides the namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// Default HTTP port of the target.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Default port of the bulk download service.
pub const DEFAULT_BULK_PORT: u16 = 5001;
/// Largest download either service hands out (bounds every transfer).
pub const MAX_SIZE: u64 = 1 << 30;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A request line or header longer than this is refused.
const MAX_LINE: usize = 8 * 1024;
/// A client that sends no complete request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A send that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the services listen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServeConfig {
    pub bind: Ipv4Addr,
    pub http_port: u16,
    pub bulk_port: u16,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: Ipv4Addr::UNSPECIFIED,
            http_port: DEFAULT_HTTP_PORT,
            bulk_port: DEFAULT_BULK_PORT,
        }
    }
}

/// The request line of the bulk service: `SEND <bytes>\n`.
pub fn bulk_request(size: u64) -> String {
    format!("SEND {size}\n")
}

/// Parses a bulk request line; `None` for anything malformed or above [`MAX_SIZE`].
pub fn parse_bulk_request(line: &str) -> Option<u64> {
    let n = line.trim_end_matches(['\r', '\n']).strip_prefix("SEND ")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u64>().ok().filter(|&n| n <= MAX_SIZE)
}

/// Maps an HTTP path to a file size: `/bytes/<n>` or `/<n>k` (the paper's document
/// names, kilobytes of 1000 bytes), up to [`MAX_SIZE`].
pub fn parse_http_path(path: &str) -> Option<u64> {
    let digits = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let n = if let Some(n) = path.strip_prefix("/bytes/") {
        digits(n)?
    } else {
        digits(path.strip_prefix('/')?.strip_suffix('k')?)?.checked_mul(1000)?
    };
    (n <= MAX_SIZE).then_some(n)
}

/// The HTTP path for a file of `size` bytes.
pub fn http_path(size: u64) -> String {
    format!("/bytes/{size}")
}

/// The bound services, ready to run.
pub struct Server {
    http: TcpListener,
    bulk: TcpListener,
}

impl Server {
    /// Binds both listeners in the calling thread's network namespace.
    pub fn bind(cfg: &ServeConfig) -> Result<Server, LabError> {
        let listen = |port: u16, what: &str| {
            let addr = SocketAddr::from((cfg.bind, port));
            let l = TcpListener::bind(addr)
                .map_err(|e| LabError::io(format!("binding the {what} service on {addr}"), e))?;
            l.set_nonblocking(true)
                .map_err(|e| LabError::io(format!("configuring {addr}"), e))?;
            Ok::<_, LabError>(l)
        };
        Ok(Server {
            http: listen(cfg.http_port, "HTTP")?,
            bulk: listen(cfg.bulk_port, "bulk download")?,
        })
    }

    /// The bound addresses (HTTP, bulk).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.http.local_addr().expect("bound listener"),
            self.bulk.local_addr().expect("bound listener"),
        )
    }

    /// Serves until `stop` is set.
    pub fn run_until(self, stop: Arc<AtomicBool>) {
        let active = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for (l, http) in [(&self.http, true), (&self.bulk, false)] {
                match l.accept() {
                    Ok((s, peer)) => {
                        idle = false;
                        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                            tracing::warn!(%peer, "too many connections, dropping one");
                            continue;
                        }
                        active.fetch_add(1, Ordering::Relaxed);
                        let active = active.clone();
                        let spawned = std::thread::Builder::new()
                            .name("lab-serve-conn".into())
                            .spawn(move || {
                                let r = if http { serve_http(s) } else { serve_bulk(s) };
                                if let Err(e) = r {
                                    tracing::debug!(%peer, error = %e, "connection ended");
                                }
                                active.fetch_sub(1, Ordering::Relaxed);
                            });
                        if spawned.is_err() {
                            // The closure (and its counter decrement) never runs.
                            tracing::warn!(%peer, "cannot start a connection thread");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Serves for `d`, then returns.
    pub fn run_for(self, d: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(d);
            s2.store(true, Ordering::Relaxed);
        });
        self.run_until(stop);
        let _ = t.join();
    }
}

fn prepare(s: &TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    s.set_nodelay(true)
}

fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "request line missing, unterminated or too long",
        ));
    }
    String::from_utf8(line)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "request is not UTF-8"))
}

/// The bulk service's bytes repeat every this many.
const PATTERN_PERIOD: usize = 64 * 1024;

/// The byte the bulk service sends at `offset` of every download, so a client can check
/// what arrived (see [`crate::measure::fetch_bulk_checked_via`]).
pub const fn pattern_byte(offset: u64) -> u8 {
    b'a' + ((offset % PATTERN_PERIOD as u64) % 26) as u8
}

/// Sends `size` generated bytes: [`pattern_byte`] at each offset.
fn send_bytes(w: &mut TcpStream, size: u64) -> std::io::Result<()> {
    static CHUNK: [u8; PATTERN_PERIOD] = {
        let mut b = [0u8; PATTERN_PERIOD];
        let mut i = 0;
        while i < b.len() {
            b[i] = pattern_byte(i as u64);
            i += 1;
        }
        b
    };
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK.len() as u64) as usize;
        w.write_all(&CHUNK[..n])?;
        left -= n as u64;
    }
    w.flush()
}

fn serve_bulk(s: TcpStream) -> std::io::Result<()> {
    prepare(&s)?;
    let mut r = BufReader::new(s.try_clone()?);
    let line = read_line(&mut r)?;
    let mut w = s;
    match parse_bulk_request(&line) {
        Some(n) => send_bytes(&mut w, n),
        None => w.write_all(b"ERR expected `SEND <bytes>` with at most 1073741824 bytes\n"),
    }
}

fn respond(w: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve_http(s: TcpStream) -> std::io::Result<()> {
    prepare(&s)?;
    let started = Instant::now();
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let request = match read_line(&mut r) {
        Ok(l) => l,
        Err(_) => return respond(&mut w, "400 Bad Request", "malformed request line\n"),
    };
    // Headers are read (and bounded) but not needed: every response closes.
    let mut headers = 0;
    loop {
        let h = match read_line(&mut r) {
            Ok(h) => h,
            Err(_) => return respond(&mut w, "400 Bad Request", "malformed header\n"),
        };
        if h == "\r\n" || h == "\n" {
            break;
        }
        headers += 1;
        if headers > 100 || started.elapsed() > REQUEST_TIMEOUT {
            return respond(
                &mut w,
                "431 Request Header Fields Too Large",
                "too many headers\n",
            );
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    if !matches!(version, Some(v) if v.starts_with("HTTP/1.")) || parts.next().is_some() {
        return respond(
            &mut w,
            "400 Bad Request",
            "expected `GET <path> HTTP/1.1`\n",
        );
    }
    let head = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return respond(&mut w, "405 Method Not Allowed", "GET or HEAD only\n"),
    };
    let Some(size) = path.and_then(parse_http_path) else {
        return respond(
            &mut w,
            "404 Not Found",
            "files are /bytes/<n> or /<n>k, at most 1 GiB\n",
        );
    };
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )?;
    if !head {
        send_bytes(&mut w, size)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_requests() {
        assert_eq!(parse_bulk_request(&bulk_request(100_000)), Some(100_000));
        assert_eq!(parse_bulk_request("SEND 0\r\n"), Some(0));
        for bad in [
            "",
            "SEND\n",
            "SEND \n",
            "SEND -1\n",
            "SEND 1e6\n",
            "send 10\n",
            "SEND 99999999999999999999999\n",
            "SEND 1073741825\n",
        ] {
            assert_eq!(parse_bulk_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_paths() {
        assert_eq!(parse_http_path("/100k"), Some(100_000));
        assert_eq!(parse_http_path("/2000k"), Some(2_000_000));
        assert_eq!(parse_http_path(&http_path(12345)), Some(12345));
        for bad in [
            "",
            "/",
            "/k",
            "/abck",
            "/bytes/",
            "/bytes/-1",
            "/bytes/1x",
            "100k",
            "/9999999999999k",
            "/bytes/1073741825",
            "/../etc/passwd",
        ] {
            assert_eq!(parse_http_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serves_http_and_bulk_on_loopback() {
        let cfg = ServeConfig {
            bind: Ipv4Addr::LOCALHOST,
            http_port: 0,
            bulk_port: 0,
        };
        let server = Server::bind(&cfg).unwrap();
        let (http, bulk) = server.local_addrs();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || server.run_until(s2));
        let timeout = Duration::from_secs(10);
        let b = crate::measure::fetch_bulk(bulk, 250_000, timeout).unwrap();
        assert_eq!(b.bytes, 250_000);
        // The checked download sees the service's own bytes, and a size the service
        // cut short or padded would not pass.
        let c = crate::measure::fetch_bulk_checked_via(bulk, 250_000, timeout, None).unwrap();
        assert!(c.intact(250_000), "{c:?}");
        assert!(!c.intact(250_001), "{c:?}");
        let other = crate::measure::fetch_bulk_checked_via(bulk, 1_000, timeout, None).unwrap();
        assert_ne!(other.digest, c.digest);
        let h = crate::measure::fetch_http(http, "target", &http_path(100_000), timeout).unwrap();
        assert_eq!(h.bytes, 100_000);
        let h = crate::measure::fetch_http(http, "target", "/0k", timeout).unwrap();
        assert_eq!(h.bytes, 0);
        let e = crate::measure::fetch_http(http, "target", "/nope", timeout).unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        // Garbage on the bulk port gets an error line, not bytes.
        let mut s = TcpStream::connect(bulk).unwrap();
        s.write_all(b"GIVE ME EVERYTHING\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("ERR"), "{reply}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
