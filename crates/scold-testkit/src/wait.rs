//! Bounded waits: every wait of a test has a deadline, and a loopback port to listen on.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// How often [`wait_for`] and [`wait_until`] check.
const POLL: Duration = Duration::from_millis(50);

/// Checks `cond` every `interval` until it holds or `timeout` has passed (then once
/// more); whether it held.
pub fn poll_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(interval);
    }
    cond()
}

/// Waits until `cond` holds, at most `timeout`; whether it held.
pub fn wait_for(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, POLL, cond)
}

/// Waits until `cond` holds; fails the test, naming `what`, after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Whether something accepts TCP connections on `addr`.
pub fn tcp_listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Waits until something accepts TCP connections on `addr`, at most `timeout`.
pub fn wait_tcp_port(addr: SocketAddr, timeout: Duration) -> bool {
    wait_for(timeout, || tcp_listening(addr))
}

/// A loopback port free for both UDP and TCP right now (a DNS server takes both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
        let port = u.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP after 100 tries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_when_the_condition_holds_or_at_the_deadline() {
        let t = Instant::now();
        let mut n = 0;
        assert!(wait_for(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert!(t.elapsed() < Duration::from_secs(2));
        let t = Instant::now();
        assert!(!wait_for(Duration::from_millis(200), || false));
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_until_names_what_never_came() {
        wait_until("the impossible", Duration::from_millis(100), || false);
    }

    #[test]
    fn a_free_port_can_be_listened_on_and_is_then_seen() {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(!tcp_listening(addr));
        let _l = TcpListener::bind(addr).unwrap();
        assert!(wait_tcp_port(addr, Duration::from_secs(2)));
    }
}
