//! A minimal UDP relay with the proxy filter, for `bench/filter.sh`.
//!
//! It stands in for the proxy's data path: every datagram it receives goes
//! through `Filter::check_info` before it is forwarded. With `--nft`, blocks are
//! mirrored into the kernel set so the flood stops reaching the socket.
//!
//! udp_relay LISTEN FORWARD SECONDS [--nft] [--no-filter]
//!
//! Prints one JSON line of counters at the end.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use scold_filter::firewall::{Alert, Filter, FilterConfig};
use scold_filter::nft::{NftBlocklist, NftConfig};
use scold_filter::packet::{PacketInfo, Proto};
use scold_filter::Verdict;

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass; all-zero is a valid start value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: udp_relay LISTEN FORWARD SECONDS [--nft] [--no-filter]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse()?;
    let forward: SocketAddr = args[2].parse()?;
    let secs: u64 = args[3].parse()?;
    let use_nft = args.iter().any(|a| a == "--nft");
    let no_filter = args.iter().any(|a| a == "--no-filter");

    let sock = UdpSocket::bind(listen)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let out = UdpSocket::bind("0.0.0.0:0")?;
    let mut filter = Filter::new(FilterConfig::default());
    let nft = if use_nft {
        Some(NftBlocklist::ensure(NftConfig::default())?)
    } else {
        None
    };
    let start = Instant::now();
    let mut last_tick = start;
    let (mut received, mut forwarded, mut dropped) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    while start.elapsed() < Duration::from_secs(secs) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                received += 1;
                let info = PacketInfo {
                    src: from.ip(),
                    dst: listen.ip(),
                    proto: Proto::Udp,
                    syn: false,
                    len: n + 28,
                };
                let pass = no_filter || filter.check_info(start.elapsed(), &info) == Verdict::Pass;
                if pass {
                    let _ = out.send_to(&buf[..n], forward);
                    forwarded += 1;
                } else {
                    dropped += 1;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            filter.expire(start.elapsed());
            let events: Vec<_> = filter.drain_events().collect();
            for e in &events {
                eprintln!(
                    "{}",
                    Alert::from_event(e, std::time::SystemTime::now()).to_json_line()
                );
            }
            if let Some(n) = &nft {
                n.apply_events(&events)?;
            }
        }
    }
    let (kernel_dropped, _) = match &nft {
        Some(n) => n.drop_counters()?,
        None => (0, 0),
    };
    println!(
        "{}",
        serde_json::json!({
            "dropped_kernel": kernel_dropped,
            "received": received,
            "forwarded": forwarded,
            "dropped_user": dropped,
            "cpu_secs": cpu_secs(),
            "wall_secs": start.elapsed().as_secs_f64(),
            "offenders": filter.top_offenders(start.elapsed(), 3),
        })
    );
    if let Some(n) = nft {
        n.remove()?;
    }
    Ok(())
}
