//! Client-side DNS transport shared by the updater and the resolver: one request, one
//! response, over UDP with a fall-back to TCP when the answer is truncated.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP, then TCP if the response is truncated.
    Auto,
    /// TCP only.
    Tcp,
}

/// Sends `req` to `server` and returns the response with the same ID.
pub async fn exchange(
    server: SocketAddr,
    req: &[u8],
    timeout: Duration,
    transport: Transport,
) -> std::io::Result<Vec<u8>> {
    if transport == Transport::Auto && req.len() <= 1232 {
        let r = tokio::time::timeout(timeout, exchange_udp(server, req))
            .await
            .map_err(|_| timed_out(server, "udp"))??;
        let tc = r.len() >= 4 && r[2] & 0x02 != 0;
        if !tc {
            return Ok(r);
        }
    }
    tokio::time::timeout(timeout, exchange_tcp(server, req))
        .await
        .map_err(|_| timed_out(server, "tcp"))?
}

fn timed_out(server: SocketAddr, proto: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from {server} over {proto}"),
    )
}

async fn exchange_udp(server: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(req).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore stray datagrams that are not the answer to this request.
        if n >= 12 && buf[..2] == req[..2] && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(server: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(req.len() + 2);
    framed.extend_from_slice(&(req.len() as u16).to_be_bytes());
    framed.extend_from_slice(req);
    s.write_all(&framed).await?;
    loop {
        let mut lb = [0u8; 2];
        s.read_exact(&mut lb).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(lb) as usize];
        s.read_exact(&mut buf).await?;
        if buf.len() >= 12 && buf[..2] == req[..2] {
            return Ok(buf);
        }
    }
}
