//! Scheme 4.3: the proxy accepts a target's service port on its own address and relays
//! each flow to the target. The outgoing side is an ordinary socket whose route leads
//! into the proxy's TUN device, so the flow travels the tunnel to the target's gateway.
//!
//! TCP bytes move with `splice(2)` through a pipe per direction (tokio-splice): the
//! kernel hands the received pages to the other socket and the relay never copies them
//! through user space.

use crate::error::TunnelError;
use crate::proxy_protocol::{self, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Idle time after which a UDP flow is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// Most UDP flows relayed at once per service; more are dropped until some expire.
pub const MAX_UDP_FLOWS: usize = 4096;

#[derive(Debug, Default)]
pub struct NatCounters {
    pub flows: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_to_target: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// A running relay; dropping it stops accepting (flows in progress end on their own).
pub struct NatRelay {
    task: JoinHandle<()>,
    pub counters: Arc<NatCounters>,
    pub local: SocketAddr,
}

impl Drop for NatRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sock_err(what: String) -> impl FnOnce(std::io::Error) -> TunnelError {
    move |source| TunnelError::Socket { what, source }
}

/// Relays TCP connections on `listen` to `target`, optionally starting each with a PROXY
/// protocol v2 header.
pub async fn spawn_tcp(
    listen: SocketAddr,
    target: SocketAddr,
    proxy_protocol: bool,
) -> Result<NatRelay, TunnelError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(sock_err(format!("NAT TCP listener on {listen}")))?;
    let local = listener.local_addr()?;
    let counters = Arc::new(NatCounters::default());
    let c = counters.clone();
    let task = tokio::spawn(async move {
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%listen, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let c = c.clone();
            tokio::spawn(async move {
                c.flows.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = relay_tcp(client, peer, listen, target, proxy_protocol, &c).await {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, %target, error = %e, "NAT flow ended with an error");
                }
            });
        }
    });
    Ok(NatRelay {
        task,
        counters,
        local,
    })
}

async fn relay_tcp(
    mut client: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    target: SocketAddr,
    proxy_protocol: bool,
    c: &NatCounters,
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if proxy_protocol {
        let mut hdr = [0u8; proxy_protocol::MAX_LEN];
        let n = proxy_protocol::encode(peer, listen, Transport::Stream, &mut hdr);
        upstream.write_all(&hdr[..n]).await?;
    }
    let (up, down) = tokio_splice::zero_copy_bidirectional(&mut client, &mut upstream).await?;
    c.bytes_to_target.fetch_add(up, Ordering::Relaxed);
    c.bytes_to_client.fetch_add(down, Ordering::Relaxed);
    Ok(())
}

/// Relays UDP datagrams on `listen` to `target`: one upstream socket per client address,
/// forgotten after [`UDP_IDLE`].
pub async fn spawn_udp(listen: SocketAddr, target: SocketAddr) -> Result<NatRelay, TunnelError> {
    let sock = Arc::new(
        UdpSocket::bind(listen)
            .await
            .map_err(sock_err(format!("NAT UDP socket on {listen}")))?,
    );
    let local = sock.local_addr()?;
    let counters = Arc::new(NatCounters::default());
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut flows: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, client) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(_) => continue,
            };
            flows.retain(|_, (_, t)| !t.is_finished());
            let up = match flows.get(&client) {
                Some((u, _)) => u.clone(),
                None => {
                    if flows.len() >= MAX_UDP_FLOWS {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let bind: SocketAddr = if target.is_ipv4() {
                        "0.0.0.0:0".parse().expect("literal")
                    } else {
                        "[::]:0".parse().expect("literal")
                    };
                    let u = match UdpSocket::bind(bind).await {
                        Ok(u) => Arc::new(u),
                        Err(_) => continue,
                    };
                    if u.connect(target).await.is_err() {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    c.flows.fetch_add(1, Ordering::Relaxed);
                    let (u2, s2, c2) = (u.clone(), sock.clone(), c.clone());
                    let back = tokio::spawn(async move {
                        let mut b = vec![0u8; 65536];
                        while let Ok(Ok(m)) = tokio::time::timeout(UDP_IDLE, u2.recv(&mut b)).await
                        {
                            if s2.send_to(&b[..m], client).await.is_ok() {
                                c2.bytes_to_client.fetch_add(m as u64, Ordering::Relaxed);
                            }
                        }
                    });
                    flows.insert(client, (u.clone(), back));
                    u
                }
            };
            if up.send(&buf[..n]).await.is_ok() {
                c.bytes_to_target.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(NatRelay {
        task,
        counters,
        local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Bytes cross the relay intact both ways, with the PROXY v2 header first, and a
    /// half-close travels through: the target sees EOF, yet its answer still reaches
    /// the client.
    #[tokio::test]
    async fn tcp_relay_moves_bytes_both_ways_and_half_close() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let relay = spawn_tcp("127.0.0.1:0".parse().unwrap(), target_addr, true)
            .await
            .unwrap();
        let up_data = pattern(3 << 20, 7);
        let down_data = pattern(2 << 20, 99);
        let (up2, down2) = (up_data.clone(), down_data.clone());
        let server = tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            let hdr = proxy_protocol::parse(&got).unwrap();
            assert_eq!(&got[hdr.len..], &up2[..], "client bytes changed on the way");
            s.write_all(&down2).await.unwrap();
            s.shutdown().await.unwrap();
            hdr.addresses.map(|(src, _)| src)
        });
        let mut c = TcpStream::connect(relay.local).await.unwrap();
        let client_addr = c.local_addr().unwrap();
        c.write_all(&up_data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
            .await
            .expect("relay stalled")
            .unwrap();
        assert_eq!(back, down_data);
        assert_eq!(server.await.unwrap(), Some(client_addr));
        // The flow's counters are added when both directions have finished.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while relay.counters.bytes_to_client.load(Ordering::Relaxed) == 0
            && std::time::Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            relay.counters.bytes_to_target.load(Ordering::Relaxed),
            up_data.len() as u64,
            "header bytes are not counted as relayed"
        );
        assert_eq!(
            relay.counters.bytes_to_client.load(Ordering::Relaxed),
            down_data.len() as u64
        );
        assert_eq!(relay.counters.failed.load(Ordering::Relaxed), 0);
    }

    /// A target that refuses the connection ends the client's flow and counts a failure.
    #[tokio::test]
    async fn tcp_relay_counts_refused_target() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let relay = spawn_tcp("127.0.0.1:0".parse().unwrap(), closed, false)
            .await
            .unwrap();
        let mut c = TcpStream::connect(relay.local).await.unwrap();
        let mut b = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut b))
            .await
            .expect("the relay kept a flow to a closed target open");
        assert!(r.is_err() || b.is_empty());
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while relay.counters.failed.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(relay.counters.failed.load(Ordering::Relaxed), 1);
    }
}
