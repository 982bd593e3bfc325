//! Adversary mode (`scold lab --adversary`): while the main link is flooded and the
//! target is diverted, the attackers also go for SCOLD itself, one attack after
//! another, and a client keeps downloading through the indirect route the whole time:
//!
//! 1. a scan for the hidden gateway (hping3: TCP, UDP, ICMP echo and timestamp, IP-in-IP,
//!    GRE, fake WireGuard, a proxy's address spoofed), tcpdump at the scanner;
//! 2. a connection flood at the admission port of the client's proxy, from 200 addresses
//!    in four /24s and 1,100 more from one address, held open without a word;
//! 3. a `register` flood at the coordinator from a member's own certificate;
//! 4. the client's proxy revoked by the consortium while it is connected, listed in ALT
//!    and carrying the client's tunnel;
//! 5. the coordinator killed at the moment the proxy the client moved to dies, and
//!    restarted.
//!
//! Each attack is reported with what was tried and what it achieved, measured from the
//! outside (packets captured, connections held, answers counted, the coordinator's
//! audit log and status, the ALT records at TargetDNS, where the client's tunnel
//! packets go), and whether SCOLD held. The downloads' bytes are checked against what
//! the target's service sent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit;
use crate::dnsq;
use crate::error::LabError;
use crate::fig8::{self, Fig8};
use crate::measure::{self, CheckedTransfer};
use crate::progress::Progress;
use crate::report::{fmt_seconds, Attack, Results};
use crate::roles::{self, Roles};
use crate::scenario::{self, ScenarioConfig};
use crate::serve::DEFAULT_BULK_PORT;

/// Proxies the adversary run needs: the client's, one to revoke, one to move to.
pub const MIN_PROXIES: usize = 3;
/// Steps the progress display counts for the adversary phase.
pub const STEPS: usize = 6;

/// The admission flood's extra source networks (routed to the attacker for the run).
const FLOOD_NETS: [u8; 4] = [200, 201, 202, 203];
const FLOOD_HOSTS_PER_NET: u8 = 50;
const FLOOD_CONNS_PER_SOURCE: usize = 6;
/// Connections from the attacker's own address: what filled the port once.
const ONE_HOST_CONNS: usize = 1100;
/// How long the flood's connections are held open (if the proxy lets them).
const FLOOD_HOLD: Duration = Duration::from_secs(12);
/// A legitimate client's admission probe must be answered within this.
const PROBE_LIMIT: Duration = Duration::from_secs(1);
/// Pipelined `register` requests of the member's flood.
const REGISTER_FLOOD: usize = 2000;
/// Size of each download the client repeats through the attacks.
const DOWNLOAD_SIZE: u64 = 2_000_000;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn elapsed(t: Instant) -> String {
    fmt_seconds(t.elapsed().as_secs_f64())
}

/// The client's downloads through the indirect route, repeated until stopped.
struct Downloads {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Result<CheckedTransfer, String>>>,
}

fn start_downloads(lab: &Fig8) -> Result<Downloads, LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = lab.thread_in(&fig8::client(1), move || {
        let mut done = Vec::new();
        let server: SocketAddr = (fig8::TARGET_ADDR, DEFAULT_BULK_PORT).into();
        while !flag.load(Ordering::Relaxed) {
            let r = measure::fetch_bulk_checked_via(
                server,
                DOWNLOAD_SIZE,
                DOWNLOAD_TIMEOUT,
                Some(roles::CLIENT_TUN),
            )
            .map_err(|e| e.to_string());
            let failed = r.is_err();
            done.push(r);
            if failed {
                // Not a tight loop on a route that is down.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        done
    })?;
    Ok(Downloads { stop, handle })
}

fn finish_downloads(d: Downloads) -> Attack {
    d.stop.store(true, Ordering::Relaxed);
    let done = d.handle.join().unwrap_or_default();
    let intact = done
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|c| c.intact(DOWNLOAD_SIZE)))
        .count();
    let broken: Vec<String> = done
        .iter()
        .filter_map(|r| match r {
            Ok(c) if c.intact(DOWNLOAD_SIZE) => None,
            Ok(c) => Some(format!(
                "{} of {DOWNLOAD_SIZE} bytes, digest {:016x} (expected {:016x})",
                c.transfer.bytes, c.digest, c.expected_digest
            )),
            Err(e) => Some(e.clone()),
        })
        .collect();
    let stall = done
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|c| c.longest_stall)
        .fold(0f64, f64::max);
    let bytes: u64 = done
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|c| c.transfer.bytes)
        .sum();
    Attack {
        name: "the client's downloads through the indirect route".into(),
        tried: format!(
            "{} downloads of {} from the target's bulk service through the client's tunnel, \
             one after another while every attack below ran",
            done.len(),
            crate::report::fmt_size(DOWNLOAD_SIZE)
        ),
        achieved: if broken.is_empty() {
            format!(
                "all {intact} complete with the right digest (FNV-1a of every byte against the \
                 service's), {} in all; longest pause in a stream {}",
                crate::report::fmt_size(bytes),
                fmt_seconds(stall)
            )
        } else {
            format!(
                "{intact} intact, {} not: {}; longest pause in a stream {}",
                broken.len(),
                broken.join("; "),
                fmt_seconds(stall)
            )
        },
        held: broken.is_empty() && intact > 0,
    }
}

/// The hidden gateway's policy: answers it dropped so far.
fn gateway_dropped(lab: &Fig8) -> Option<u64> {
    let out = lab
        .exec(
            fig8::ALT_GW,
            "nft",
            ["list", "chain", "inet", "scold_hidden", "output"],
            Duration::from_secs(5),
        )
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("answers no one else"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Runs `program args` in `node`, bounded by `limit`, whatever its exit status.
fn run_bounded(
    lab: &Fig8,
    node: &str,
    program: &str,
    args: &[&str],
    limit: Duration,
) -> Result<(), LabError> {
    let mut cmd = lab.command(node, program)?;
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    let mut p = lab.spawn(&format!("{node}: {program}"), &mut cmd)?;
    if p.wait_timeout(limit)?.is_none() {
        p.kill()?;
    }
    Ok(())
}

/// Attack 1: a scan for the hidden gateway from an attacker.
fn scan_gateway(lab: &Fig8, logs: &Path) -> Result<Attack, LabError> {
    crate::topology::require_tool("hping3", "hping3")?;
    crate::topology::require_tool("tcpdump", "tcpdump")?;
    let scanner = lab.attackers()[0].clone();
    let gw = fig8::address_of(fig8::ALT_GW).expect("plan").to_string();
    let pcap = logs.join("adversary-gateway-scan.pcap");
    let pcap_s = pcap.display().to_string();
    let mut dump = {
        let mut cmd = lab.command(&scanner, "tcpdump")?;
        cmd.args(["-i", fig8::LEAF_IF, "-n", "-U", "-w", &pcap_s, "ip"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        lab.spawn(&format!("{scanner}: tcpdump"), &mut cmd)?
    };
    std::thread::sleep(Duration::from_secs(1));
    let dropped_before = gateway_dropped(lab);
    let tunnel_port = roles::TUNNEL_PORT.to_string();
    let proxies: Vec<String> = lab
        .proxies()
        .iter()
        .filter_map(|p| fig8::address_of(p))
        .map(|a| a.to_string())
        .collect();
    // (arguments, packets sent): each bounded in count, and by `timeout` around it.
    let mut probes: Vec<(Vec<String>, u64)> = [
        ("-S -s 20000 -p ++1 -c 100 -i u1000", 100), // TCP SYN to ports 1..100
        ("-A -s 20200 -p 22 -c 5 -i u1000", 5),      // TCP ACK (draws a RST)
        ("--udp -s 20300 -p ++1 -c 100 -i u1000", 100), // UDP to ports 1..100
        ("--icmp -c 5 -i u1000", 5),                 // echo
        ("--icmp --icmptype 13 -c 5 -i u1000", 5),   // timestamp
        ("--rawip -H 4 -d 40 -c 5 -i u1000", 5),     // IP-in-IP
        ("--rawip -H 47 -d 40 -c 5 -i u1000", 5),    // GRE
    ]
    .iter()
    .map(|(a, n)| (a.split(' ').map(String::from).collect(), *n))
    .collect();
    // Fake WireGuard initiations (148 bytes) to the tunnel port.
    probes.push((
        format!("--udp -s 20400 -p {tunnel_port} -d 148 -c 5 -i u1000")
            .split(' ')
            .map(String::from)
            .collect(),
        5,
    ));
    // A proxy's address spoofed: the gateway admits tunnel packets from the proxies.
    for p in &proxies {
        probes.push((
            format!("-S -s 20500 -p 80 -a {p} -c 5 -i u1000")
                .split(' ')
                .map(String::from)
                .collect(),
            5,
        ));
        probes.push((
            format!("--udp -s 20600 -p {tunnel_port} -d 148 -a {p} -c 5 -i u1000")
                .split(' ')
                .map(String::from)
                .collect(),
            5,
        ));
    }
    let mut sent = 0;
    for (args, n) in &probes {
        let mut all = vec!["10", "hping3", "-q"];
        all.extend(args.iter().map(String::as_str));
        all.push(&gw);
        run_bounded(lab, &scanner, "timeout", &all, Duration::from_secs(12))?;
        sent += n;
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = dump.stop(Duration::from_secs(2));
    let out = lab.exec(
        &scanner,
        "tcpdump",
        ["-n", "-r", &pcap_s, &format!("src host {gw}")],
        Duration::from_secs(10),
    )?;
    let replies: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let dropped = match (dropped_before, gateway_dropped(lab)) {
        (Some(a), Some(b)) => format!(
            "; the gateway's policy dropped {} answers its kernel would have sent",
            b.saturating_sub(a)
        ),
        _ => "; the gateway's policy counter could not be read".into(),
    };
    Ok(Attack {
        name: "scan for the hidden gateway".into(),
        tried: format!(
            "hping3 runs asking for {sent} probes in all, from {scanner} to the gateway's address {gw}: TCP SYN and ACK, \
             UDP, ICMP echo and timestamp, IP-in-IP, GRE, fake WireGuard initiations, and \
             TCP and tunnel packets with each proxy's address spoofed (hping3); tcpdump at \
             the scanner ({})",
            pcap.display()
        ),
        achieved: if replies.is_empty() {
            format!("no packet came back from the gateway{dropped}")
        } else {
            format!(
                "{} packets came back from the gateway, first: {}{dropped}",
                replies.len(),
                replies[0]
            )
        },
        held: replies.is_empty(),
    })
}

/// What the admission flood's connections met.
#[derive(Debug, Default)]
struct ConnTally {
    attempted: usize,
    /// The TCP handshake completed.
    connected: usize,
    /// Refused or not answered at the TCP level.
    not_connected: usize,
    /// Closed by the proxy before the hold ended: (count, latest close seconds).
    closed: usize,
    latest_close: f64,
    /// Still open when the attacker let go.
    held: usize,
}

/// Opens `per` idle connections to `to` from each of `sources` (None: the host's own
/// address) at once, holds them for [`FLOOD_HOLD`], and counts what happened.
async fn conn_flood(sources: Vec<Option<Ipv4Addr>>, per: usize, to: SocketAddr) -> ConnTally {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for src in sources {
        for _ in 0..per {
            set.spawn(async move {
                let s = tokio::net::TcpSocket::new_v4().ok()?;
                if let Some(a) = src {
                    s.bind((a, 0).into()).ok()?;
                }
                let mut c = tokio::time::timeout(Duration::from_secs(3), s.connect(to))
                    .await
                    .ok()?
                    .ok()?;
                let mut b = [0u8; 256];
                let left = FLOOD_HOLD.saturating_sub(start.elapsed());
                // Read until the proxy closes, or the hold ends.
                let closed_at = tokio::time::timeout(left, async {
                    loop {
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return start.elapsed().as_secs_f64(),
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .ok();
                Some(closed_at)
            });
        }
    }
    let mut t = ConnTally::default();
    while let Some(r) = set.join_next().await {
        t.attempted += 1;
        match r.ok().flatten() {
            None => t.not_connected += 1,
            Some(Some(at)) => {
                t.connected += 1;
                t.closed += 1;
                t.latest_close = t.latest_close.max(at);
            }
            Some(None) => {
                t.connected += 1;
                t.held += 1;
            }
        }
    }
    t
}

/// Lets this process hold many sockets (the admission flood opens a few thousand).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn runtime(what: &str) -> Result<tokio::runtime::Runtime, LabError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::io(format!("starting a runtime for {what}"), e))
}

/// A legitimate client's admission probe to `proxy` from `client`: TLS to the admission
/// port, the proxy's certificate checked, one `ping` answered. Seconds, or the error.
fn admission_probe(
    lab: &Fig8,
    roles: &Roles,
    client: &str,
    proxy: Ipv4Addr,
) -> Result<f64, String> {
    let (ca, crl) = roles.ca_files();
    lab.run_in(client, move || {
        let rt = runtime("an admission probe").map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let t = Instant::now();
            let c = scold_node::client::admission::Connector::new(
                &ca,
                Some(&crl),
                roles::ADMISSION_PORT,
                Duration::from_secs(3),
            )
            .map_err(|e| e.to_string())?;
            let p = IpAddr::V4(proxy);
            let mut conn = c.connect(p, &[p]).await.map_err(|e| e.to_string())?;
            conn.call(
                &scold_proto::admission::ClientMessage::Ping { seq: 1 },
                Duration::from_secs(3),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(t.elapsed().as_secs_f64())
        })
    })
    .map_err(|e| e.to_string())?
}

/// Proxies the coordinator lists for the lab target, and its phase.
fn target_proxies(roles: &Roles) -> Option<(String, Vec<String>)> {
    let v = roles.ctl(&["status"]).ok()?;
    let t = v
        .get("targets")?
        .as_array()?
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(roles::TARGET_ID))?;
    let phase = t.get("phase")?.as_str()?.to_string();
    let proxies = t
        .get("proxies")?
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    Some((phase, proxies))
}

/// The health the coordinator gives `proxy`.
fn proxy_health(roles: &Roles, proxy: &str) -> Option<String> {
    let v = roles.ctl(&["status"]).ok()?;
    v.get("proxies")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(proxy))?
        .get("health")?
        .as_str()
        .map(str::to_string)
}

/// The ALT records TargetDNS serves for the target now.
fn alt_at_target_dns(lab: &Fig8) -> Result<Vec<IpAddr>, LabError> {
    let server: SocketAddr = (fig8::address_of(fig8::TARGET_DNS).expect("plan"), 53).into();
    let a = lab.run_in(fig8::COORDINATOR, || {
        dnsq::query(
            server,
            &format!("{}.", roles::TARGET_FQDN),
            dnsq::ALT_TYPE,
            Duration::from_secs(2),
        )
    })??;
    Ok(a.alt)
}

fn addr(node: &str) -> Ipv4Addr {
    fig8::address_of(node).expect("a node of the plan")
}

/// Whether the coordinator's audit log shows the target's proxy reset since `since`.
fn reset_since(roles: &Roles, since: SystemTime) -> bool {
    roles
        .events()
        .ok()
        .and_then(|ev| audit::entered(&ev, "resetting", audit::unix_ms(since)))
        .is_some()
}

/// Connections the proxy's host holds on its admission port (established, or half
/// open) from the flood's sources: `me` and the flood networks.
fn held_by_proxy(lab: &Fig8, proxy: &str, me: Ipv4Addr) -> Option<usize> {
    let out = lab
        .exec(
            proxy,
            "ss",
            [
                "-Htn",
                "state",
                "established",
                "state",
                "syn-recv",
                &format!("( sport = :{} )", roles::ADMISSION_PORT),
            ],
            Duration::from_secs(5),
        )
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Some(
        text.lines()
            .filter_map(|l| l.split_whitespace().last())
            .filter_map(|peer| peer.rsplit_once(':').map(|(a, _)| a.to_string()))
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .filter(|a| {
                *a == me || (a.octets()[..2] == [198, 19] && FLOOD_NETS.contains(&a.octets()[2]))
            })
            .count(),
    )
}

/// Attack 2: a connection flood at the admission port of the client's proxy.
fn admission_flood(lab: &Fig8, roles: &Roles, proxy: &str) -> Result<Attack, LabError> {
    let attackers = lab.attackers();
    let attacker = attackers[1 % attackers.len()].clone();
    let ns = lab.netns(&attacker)?.to_string();
    let me = addr(&attacker);
    // Four /24s of sources on the attacker, routed to it by the internet router.
    let mut sources = Vec::new();
    let mut batch = String::new();
    for net in FLOOD_NETS {
        for h in 1..=FLOOD_HOSTS_PER_NET {
            let a = Ipv4Addr::new(198, 19, net, h);
            batch += &format!("addr add {a}/32 dev {}\n", fig8::LEAF_IF);
            sources.push(Some(a));
        }
    }
    let file = roles.log_dir().join("adversary-sources.batch");
    std::fs::write(&file, batch)
        .map_err(|e| LabError::io(format!("writing {}", file.display()), e))?;
    crate::topology::run_cmd("ip", &["-n", &ns, "-batch", &file.display().to_string()])?;
    let inet = lab.netns(fig8::INTERNET)?.to_string();
    let routed = format!("198.19.{}.0/22", FLOOD_NETS[0]);
    crate::topology::run_cmd(
        "ip",
        &[
            "-n",
            &inet,
            "route",
            "replace",
            &routed,
            "via",
            &me.to_string(),
        ],
    )?;

    raise_fd_limit();
    let to: SocketAddr = (addr(proxy), roles::ADMISSION_PORT).into();
    let since = SystemTime::now();
    let t0 = Instant::now();
    let flood = lab.thread_in(&attacker, move || {
        let rt = runtime("the admission flood").ok()?;
        Some(rt.block_on(async move {
            let many = conn_flood(sources, FLOOD_CONNS_PER_SOURCE, to);
            let one = conn_flood(vec![None], ONE_HOST_CONNS, to);
            tokio::join!(many, one)
        }))
    })?;
    // A legitimate client's admissions while the flood holds its connections.
    std::thread::sleep(Duration::from_millis(1500));
    let held_early = held_by_proxy(lab, proxy, me);
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(admission_probe(lab, roles, &fig8::client(1), addr(proxy)));
        std::thread::sleep(Duration::from_millis(700));
    }
    // Just before the attacker lets go: what the proxy still holds of the flood.
    std::thread::sleep(FLOOD_HOLD.saturating_sub(t0.elapsed() + Duration::from_millis(500)));
    let held_late = held_by_proxy(lab, proxy, me);
    let (many, one) = flood
        .join()
        .ok()
        .flatten()
        .ok_or_else(|| LabError::BadSpec("the admission flood's thread failed".into()))?;
    let flood_secs = t0.elapsed().as_secs_f64();
    // Self-defence needs its sustain time to react: give it a moment to (wrongly) do so.
    std::thread::sleep(Duration::from_secs(1));
    let reset = reset_since(roles, since);
    let health = proxy_health(roles, proxy).unwrap_or_else(|| "?".into());
    let probe_ok = probes
        .iter()
        .all(|p| p.as_ref().is_ok_and(|s| *s <= PROBE_LIMIT.as_secs_f64()));
    let shown = |t: &ConnTally| {
        format!(
            "{} attempted, {} TCP-connected, {} not, {} closed by the proxy (the last {} \
             after the flood began), {} not closed at the attacker after {}",
            t.attempted,
            t.connected,
            t.not_connected,
            t.closed,
            fmt_seconds(t.latest_close),
            t.held,
            fmt_seconds(FLOOD_HOLD.as_secs_f64())
        )
    };
    let count = |n: Option<usize>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    let probes_shown: Vec<String> = probes
        .iter()
        .map(|p| match p {
            Ok(s) => fmt_seconds(*s),
            Err(e) => format!("failed ({e})"),
        })
        .collect();
    Ok(Attack {
        name: format!("connection flood at {proxy}'s admission port"),
        tried: format!(
            "from {attacker}: {} idle connections ({FLOOD_CONNS_PER_SOURCE} from each of {} \
             addresses in four /24s) and {ONE_HOST_CONNS} from its own address, all at once, \
             each held up to {} without a byte sent; meanwhile a client opened 3 admissions \
             (TLS, certificate checked, one ping)",
            FLOOD_NETS.len() * FLOOD_HOSTS_PER_NET as usize * FLOOD_CONNS_PER_SOURCE,
            FLOOD_NETS.len() * FLOOD_HOSTS_PER_NET as usize,
            fmt_seconds(FLOOD_HOLD.as_secs_f64())
        ),
        achieved: format!(
            "many sources: {}; one address: {}; the proxy's host held {} of the flood's \
             connections (established or half-open) 1.5 s in and {} at {}; the client's \
             admissions took {} (limit {}); the proxy was {}reset out of the ALT set \
             (health \"{health}\"); flood over in {}",
            shown(&many),
            shown(&one),
            count(held_early),
            count(held_late),
            fmt_seconds(FLOOD_HOLD.as_secs_f64() - 0.5),
            probes_shown.join(", "),
            fmt_seconds(PROBE_LIMIT.as_secs_f64()),
            if reset { "" } else { "not " },
            fmt_seconds(flood_secs)
        ),
        held: probe_ok && !reset && held_late == Some(0),
    })
}

/// Attack 3: a member floods the coordinator with `register` requests.
fn register_flood(lab: &Fig8, roles: &Roles) -> Result<Attack, LabError> {
    use scold_link::channel::{self, ChannelError, NoRequests};
    use scold_proto::control::{NodeInfo, RefusalReason, Request, TunnelInfo};
    let attackers = lab.attackers();
    let attacker = attackers[0].clone();
    let me = addr(&attacker);
    let cert = roles.issue_cert(scold_pki::Role::Proxy, "rogue", Some(me))?;
    let before = roles.events()?.len();
    let coordinator: SocketAddr = (addr(fig8::COORDINATOR), roles::COORDINATOR_PORT).into();
    let t0 = Instant::now();
    let flood = lab.thread_in(
        &attacker,
        move || -> Result<(usize, usize, usize, Vec<String>), String> {
            let rt = runtime("the register flood").map_err(|e| e.to_string())?;
            rt.block_on(async move {
                scold_pki::install_crypto_provider();
                let tls =
                    scold_pki::TlsIdentity::load(&cert.tls_paths()).map_err(|e| e.to_string())?;
                let ch = channel::connect(
                    coordinator,
                    &tls,
                    &[scold_pki::Role::Coordinator],
                    Arc::new(NoRequests),
                    scold_metrics::Metrics::new(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let info = NodeInfo {
                    tunnel: Some(TunnelInfo {
                        endpoint: (me, roles::TUNNEL_PORT).into(),
                        encap: scold_proto::dataplane::Encap::Udp,
                        public_key: None,
                        inside: None,
                        engines: None,
                    }),
                    ..Default::default()
                };
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..REGISTER_FLOOD {
                    let (ch, info) = (ch.clone(), info.clone());
                    set.spawn(async move {
                        ch.request(Request::Register(info), Duration::from_secs(5))
                            .await
                    });
                }
                let (mut ok, mut busy, mut unanswered, mut other) = (0, 0, 0, Vec::new());
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(_)) => ok += 1,
                        Ok(Err(ChannelError::Refused { refusal, .. }))
                            if refusal.reason == RefusalReason::Busy =>
                        {
                            busy += 1
                        }
                        Ok(Err(ChannelError::Timeout { .. })) => unanswered += 1,
                        Ok(Err(e)) => other.push(e.to_string()),
                        Err(e) => other.push(e.to_string()),
                    }
                }
                ch.close();
                Ok((ok, busy, unanswered, other))
            })
        },
    )?;
    // The operator's view while the member floods.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let status = roles.ctl(&["status"]);
    let status_secs = t.elapsed().as_secs_f64();
    let tally = flood
        .join()
        .map_err(|_| LabError::BadSpec("the register flood's thread panicked".into()))?;
    let flood_secs = t0.elapsed().as_secs_f64();
    let after = roles.events()?;
    let registered = after
        .iter()
        .skip(before)
        .filter(|e| e.subject == "proxy/rogue" && e.event == "registered")
        .count();
    let new_events = after.len().saturating_sub(before);
    let burst = scold_link::channel::DEFAULT_REQUEST_RATE.burst as usize;
    let (achieved, held) = match tally {
        Ok((ok, busy, unanswered, other)) => {
            let mut other_shown = other.clone();
            other_shown.dedup();
            (
                format!(
                    "{ok} answered, {busy} refused as busy, {unanswered} unanswered, {} \
                     other{}; {new_events} new audit events ({registered} registrations of \
                     proxy/rogue); `scold ctl status` answered in {} ({}) during the flood; \
                     flood over in {}",
                    other.len(),
                    other_shown
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    fmt_seconds(status_secs),
                    if status.is_ok() { "ok" } else { "failed" },
                    fmt_seconds(flood_secs)
                ),
                busy > 0
                    && ok <= burst + 100
                    && registered <= 1
                    && new_events <= 10
                    && status.is_ok()
                    && status_secs < 2.0,
            )
        }
        Err(e) => (format!("the member's channel failed: {e}"), false),
    };
    Ok(Attack {
        name: "register flood at the coordinator by a member".into(),
        tried: format!(
            "from {attacker}, with a proxy certificate the consortium's CA issued it \
             (proxy/rogue): {REGISTER_FLOOD} pipelined `register` requests on one channel"
        ),
        achieved,
        held,
    })
}

/// Waits up to `limit` for `ok`, polling; seconds from `t0` when it held.
fn wait_for(t0: Instant, limit: Duration, mut ok: impl FnMut() -> bool) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return Some(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The proxies the hidden gateway's policy lets tunnel packets go to.
fn gateway_peers(lab: &Fig8) -> Option<Vec<IpAddr>> {
    let out = lab
        .exec(
            fig8::ALT_GW,
            "nft",
            ["-j", "list", "set", "inet", "scold_hidden", "peers4"],
            Duration::from_secs(5),
        )
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let elems = v
        .get("nftables")?
        .as_array()?
        .iter()
        .find_map(|o| o.get("set"))?
        .get("elem")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    Some(
        elems
            .iter()
            .filter_map(|e| e.as_str())
            .filter_map(|a| a.parse().ok())
            .collect(),
    )
}

/// Attack 4: the consortium revokes the client's proxy while it is connected and ALT
/// lists it. Returns the report and the proxy the client's tunnel moved to.
fn revoked_proxy(
    lab: &Fig8,
    roles: &Roles,
    proxy: &str,
) -> Result<(Attack, Option<String>), LabError> {
    let client = fig8::client(1);
    let listed_before = target_proxies(roles)
        .map(|(_, p)| p.iter().any(|q| q == proxy))
        .unwrap_or(false);
    let its_addr = IpAddr::V4(addr(proxy));
    let peer_before = gateway_peers(lab).is_some_and(|p| p.contains(&its_addr));
    let before = roles.tunnel_packets(&client)?;
    let t0 = Instant::now();
    roles.revoke_proxy(proxy)?;
    let limit = Duration::from_secs(15);
    let revoked = wait_for(t0, limit, || {
        proxy_health(roles, proxy).as_deref() == Some("revoked")
    });
    let out_of_set = wait_for(t0, limit, || {
        target_proxies(roles)
            .is_some_and(|(phase, p)| phase == "diverted" && !p.iter().any(|q| q == proxy))
    });
    let out_of_dns = wait_for(t0, limit, || {
        alt_at_target_dns(lab).is_ok_and(|a| !a.is_empty() && !a.contains(&its_addr))
    });
    let out_of_gateway = wait_for(t0, limit, || {
        gateway_peers(lab).is_some_and(|p| !p.is_empty() && !p.contains(&its_addr))
    });
    let moved = wait_for(t0, limit, || {
        roles
            .tunnel_packets(&client)
            .ok()
            .and_then(|now| scenario::busiest_since(&before, &now, Some(proxy)))
            .is_some()
    });
    let to = roles
        .tunnel_packets(&client)
        .ok()
        .and_then(|now| scenario::busiest_since(&before, &now, Some(proxy)));
    let show = |t: Option<f64>| {
        t.map(fmt_seconds)
            .unwrap_or_else(|| "not within 15 s".into())
    };
    let attack = Attack {
        name: format!("{proxy}, the client's proxy, revoked while connected"),
        tried: format!(
            "the consortium revoked {proxy}'s certificate and wrote a new CRL while {proxy} \
             held its control channel, carried the client's tunnel, {} listed in the ALT \
             set and {} a tunnel peer of the hidden gateway",
            if listed_before { "was" } else { "was not" },
            if peer_before { "was" } else { "was not" },
        ),
        achieved: format!(
            "coordinator marked it revoked after {}; the target's set (phase diverted) \
             without it after {}; TargetDNS's ALT records without its address after {}; \
             the gateway's tunnel peers without it after {}; the client's tunnel moved to \
             {} after {}; ALT now {:?}",
            show(revoked),
            show(out_of_set),
            show(out_of_dns),
            show(out_of_gateway),
            to.as_deref().unwrap_or("no other proxy"),
            show(moved),
            alt_at_target_dns(lab).unwrap_or_default()
        ),
        held: revoked.is_some()
            && out_of_set.is_some()
            && out_of_dns.is_some()
            && out_of_gateway.is_some()
            && moved.is_some(),
    };
    Ok((attack, to))
}

/// Attack 5: the coordinator is killed as the client's proxy dies, and restarted.
fn coordinator_and_proxy_die(
    lab: &Fig8,
    roles: &mut Roles,
    proxy: &str,
    revoked: &str,
) -> Result<Attack, LabError> {
    let client = fig8::client(1);
    let before = roles.tunnel_packets(&client)?;
    let t0 = Instant::now();
    roles.kill_daemon("coordinator")?;
    roles.kill_proxy(proxy)?;
    std::thread::sleep(Duration::from_secs(1));
    let restart = roles.restart_daemon("coordinator");
    let t_back = Instant::now();
    let back_after = t0.elapsed().as_secs_f64();
    // The client agent moves by itself, coordinator or not.
    let moved = wait_for(t0, Duration::from_secs(10), || {
        roles
            .tunnel_packets(&client)
            .ok()
            .and_then(|now| scenario::busiest_since(&before, &now, Some(proxy)))
            .is_some()
    });
    let to = roles
        .tunnel_packets(&client)
        .ok()
        .and_then(|now| scenario::busiest_since(&before, &now, Some(proxy)));
    let dead = IpAddr::V4(addr(proxy));
    let gone = IpAddr::V4(addr(revoked));
    let replaced = restart.is_ok().then(|| {
        wait_for(t_back, Duration::from_secs(20), || {
            target_proxies(roles)
                .is_some_and(|(phase, p)| phase == "diverted" && !p.iter().any(|q| q == proxy))
        })
    });
    let replaced = replaced.flatten();
    let dns = wait_for(t_back, Duration::from_secs(20), || {
        alt_at_target_dns(lab)
            .is_ok_and(|a| !a.is_empty() && !a.contains(&dead) && !a.contains(&gone))
    });
    let alt = alt_at_target_dns(lab).unwrap_or_default();
    let show = |t: Option<f64>| {
        t.map(fmt_seconds)
            .unwrap_or_else(|| "not within 20 s".into())
    };
    Ok(Attack {
        name: "coordinator killed as the client's proxy dies".into(),
        tried: format!(
            "SIGKILL to the coordinator and to {proxy} (the proxy the client's tunnel went \
             through) at once; the coordinator alone restarted 1 s later from its state file"
        ),
        achieved: format!(
            "the client's tunnel moved to {} {} after the kill (the client agent, on its \
             own); the coordinator was back {} after the kill{}; it reset {proxy} out \
             (phase diverted, set without it) {} after it was back; TargetDNS's ALT records \
             without {proxy} and the revoked proxy {} after it was back: {alt:?}",
            to.as_deref().unwrap_or("no other proxy"),
            show(moved),
            fmt_seconds(back_after),
            match &restart {
                Ok(()) => String::new(),
                Err(e) => format!(" (restart FAILED: {e})"),
            },
            show(replaced),
            show(dns),
        ),
        held: restart.is_ok() && moved.is_some() && replaced.is_some() && dns.is_some(),
    })
}

/// Runs every attack (the main-link flood is on, the target diverted) while client 1
/// downloads through its tunnel; puts what each achieved into `results.attacks`.
pub(crate) fn run(
    lab: &Fig8,
    roles: &mut Roles,
    cfg: &ScenarioConfig,
    results: &mut Results,
    progress: &mut Progress,
) -> Result<(), LabError> {
    let _ = cfg;
    let client = fig8::client(1);
    scenario::indirect_up(lab, roles)?;
    roles.watch_tunnels(&client)?;
    let t0 = Instant::now();
    let downloads = start_downloads(lab)?;
    // Which proxy the client's tunnel goes through, from its packets.
    let start = roles.tunnel_packets(&client)?;
    let current = wait_for(t0, Duration::from_secs(10), || {
        roles
            .tunnel_packets(&client)
            .ok()
            .and_then(|now| scenario::busiest_since(&start, &now, None))
            .is_some()
    });
    let current = current
        .and_then(|_| {
            roles
                .tunnel_packets(&client)
                .ok()
                .and_then(|now| scenario::busiest_since(&start, &now, None))
        })
        .ok_or_else(|| LabError::Timeout {
            what: "the client's download to go through a proxy".into(),
            secs: 10.0,
        })?;
    if lab.proxies().len() < MIN_PROXIES {
        return Err(LabError::BadSpec(format!(
            "adversary mode needs --proxies {MIN_PROXIES} or more"
        )));
    }
    progress.step(
        "adversary",
        &format!("client 1 downloads through {current}"),
    );

    let mut attacks = Vec::new();
    let logs = roles.log_dir().to_path_buf();
    let mut record = |a: Attack, progress: &mut Progress| {
        progress.step(
            &a.name,
            &format!("{}: {}", if a.held { "held" } else { "BROKEN" }, a.achieved),
        );
        attacks.push(a);
    };
    record(scan_gateway(lab, &logs)?, progress);
    record(admission_flood(lab, roles, &current)?, progress);
    record(register_flood(lab, roles)?, progress);
    // The client's proxy is revoked: the client moves, and the proxy it moved to is the
    // one that dies with the coordinator.
    let (revocation, moved_to) = revoked_proxy(lab, roles, &current)?;
    record(revocation, progress);
    let next = moved_to.ok_or_else(|| LabError::Timeout {
        what: format!("the client's tunnel to leave the revoked {current}"),
        secs: 15.0,
    })?;
    record(
        coordinator_and_proxy_die(lab, roles, &next, &current)?,
        progress,
    );
    // A little more download after the last attack, then the verdict on all of them.
    std::thread::sleep(Duration::from_secs(2));
    attacks.insert(0, finish_downloads(downloads));
    roles.restart_proxy(&next)?;
    results.notes.push(format!(
        "adversary mode: {} of {} attacks on SCOLD itself held, over {} (see \"Attacks on \
         SCOLD itself\")",
        attacks.iter().filter(|a| a.held).count(),
        attacks.len(),
        elapsed(t0)
    ));
    results.attacks = attacks;
    scenario::route_off(roles)
}
