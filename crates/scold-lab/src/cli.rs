//! `scold lab`: the command line of the testbed.
//!
//! With no subcommand it runs the scenario and prints the tables. The subcommands
//! `serve`, `flood`, `fetch` and `ping` are the tools the scenario starts inside the
//! lab's namespaces (hidden from the main help, usable by hand inside one);
//! `cleanup` removes what a killed run left behind, `up` builds the testbed and waits.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::fig8::{self, Duplex, Fig8, Fig8Options};
use crate::flood::{FloodKind, FloodSpec};
use crate::net::Ipv4Net;
use crate::report::{Proto, PAPER_SIZES};
use crate::roles::{Encap, Scheme};
use crate::scenario::{self, FailoverAttack, ScenarioConfig};
use crate::serve::{self, ServeConfig};
use crate::topology::{self, Tbf};
use clap::builder::TypedValueParser as _;

/// Build the paper's Figure 8 testbed in network namespaces, run the scenario, and
/// print Tables 1-4 with our figures beside the paper's. Needs root.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<LabCommand>,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
}

/// Options of the scenario (`scold lab` with no subcommand).
#[derive(Args, Debug, Clone)]
pub struct ScenarioArgs {
    /// Repetitions of each download per condition (the tables show the median).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub reps: u32,
    /// ICMP echoes per condition for Table 1.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub pings: u32,
    /// Download sizes, comma-separated; `k` is 1000 bytes as in the paper, `m` a million.
    #[arg(long, value_delimiter = ',', default_value = "100k,250k,500k,1000k,2000k", value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Proxies in the testbed.
    #[arg(long, default_value_t = 2)]
    pub proxies: usize,
    /// Clients in the testbed (measurements run from the first).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Attackers; the flood rate is split among them.
    #[arg(long, default_value_t = 2)]
    pub attackers: usize,
    /// Flood type.
    #[arg(long, value_enum, default_value_t = FloodKind::Udp)]
    pub flood: FloodKind,
    /// Total flood rate over all attackers, packets per second.
    #[arg(long, default_value_t = 6000)]
    pub flood_rate: u64,
    /// Payload bytes of each UDP or ICMP flood packet.
    #[arg(long, default_value_t = 1000)]
    pub flood_size: usize,
    /// Rate of the main link's bottleneck (token-bucket filter), e.g. `10mbit`.
    #[arg(long, default_value = "10mbit", value_parser = parse_rate)]
    pub bottleneck_rate: u64,
    /// Bucket size of the bottleneck in bytes (at least one full frame).
    #[arg(long, default_value_t = 16 * 1024)]
    pub bottleneck_burst: u32,
    /// Longest queueing delay at the bottleneck, milliseconds (sets its queue length).
    #[arg(long, default_value_t = 50)]
    pub bottleneck_latency_ms: u32,
    /// `half`: both directions of the main link share the bottleneck (a hub or
    /// half-duplex link, so the flood also starves the target's replies); `full`: each
    /// direction has the full rate.
    #[arg(long, value_enum, default_value_t = Duplex::Half)]
    pub duplex: Duplex,
    /// Longest a download may take without an attack, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Longest a download over the attacked direct route may take, seconds; slower ones
    /// are cut and shown as "> N s".
    #[arg(long, default_value_t = 8.0)]
    pub attack_timeout: f64,
    /// Repetitions of each download over the attacked direct route.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub attack_reps: u32,
    /// Run the attacked direct route's downloads one after another (slower: up to
    /// sizes x 2 x attack-reps x attack-timeout) instead of all at once.
    #[arg(long)]
    pub attack_sequential: bool,
    /// Encapsulation of the indirect route (client -> proxy -> gateway): udp, ipip or
    /// wireguard.
    #[arg(long, default_value_t = Encap::Wireguard, value_parser = clap::builder::PossibleValuesParser::new(["udp", "ipip", "wireguard"]).map(|s| s.parse::<Encap>().expect("listed")))]
    pub encap: Encap,
    /// The indirect-route scheme (4.1: client agents learn proxies from ALT records and
    /// are admitted by one; 4.2: client agents registered with the coordinator take the
    /// route its proxies push; 4.3: the coordinator replaces the target's A records with
    /// proxies that relay the target's ports as a NAT, and unmodified clients connect to
    /// them). In each the coordinator's divert, reset and restore lay the route out.
    #[arg(long, default_value_t = Scheme::Resolver, value_parser = clap::builder::PossibleValuesParser::new(["4.1", "4.2", "4.3"]).map(|s| s.parse::<Scheme>().expect("listed")))]
    pub scheme: Scheme,
    /// Lay the indirect route out with static configs (client tunnels in 4.1 and 4.2,
    /// NAT services in 4.3) instead of the coordinator's divert; the coordinator is left
    /// out of the run, so no divert, failover or restore is measured.
    #[arg(long)]
    pub static_route: bool,
    /// Repetitions of the proxy failover (4.4) under attack (0: not measured).
    #[arg(long, default_value_t = 3)]
    pub failover_reps: u32,
    /// How the failover measurement takes the client's proxy out: `flood` its address
    /// until its self-defence reports the attack and the coordinator resets it (needs
    /// the data path linked to the coordinator; otherwise `kill`), or `kill` its process.
    #[arg(long = "failover", value_enum, default_value_t = FailoverAttack::Flood)]
    pub failover_attack: FailoverAttack,
    /// Scheme 4.1 with client agents: do not give the gateway, proxies and target
    /// `[control]` tables; the lab publishes the ALT records itself and the coordinator
    /// is left out of the run (the failover kills the proxy).
    #[arg(long)]
    pub no_control: bool,
    /// Exit 0 even when the coordinator's divert, the failover or the restore was not
    /// reached or a sample failed (for exploring; the report says what is missing).
    /// Without it such a run exits non-zero with the reason on its last line.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// With the data path linked: raise the alarm with `scold ctl divert` instead of
    /// letting the target's detector (`[detect]` on its main link) raise it.
    #[arg(long)]
    pub operator_alarm: bool,
    /// Under attack, the attackers also go for SCOLD itself while the client downloads
    /// through the indirect route: a scan for the hidden gateway, a connection flood at
    /// the admission port of the client's proxy, a `register` flood at the coordinator
    /// from a member's certificate, a proxy revoked while connected, and the coordinator
    /// killed as the client's proxy dies. The report lists what each achieved; the run
    /// exits non-zero if any got through. Needs scheme 4.1 with client agents linked to
    /// the coordinator, and at least 3 proxies (2 are raised to 3).
    #[arg(long)]
    pub adversary: bool,
    /// Coordinator replicas. 1: one coordinator with its own state file. More (3 is the
    /// run to make): an etcd cluster of 3 members and that many `scold coordinator`
    /// replicas, each in a namespace of its own, sharing their state in it; every node
    /// and `scold ctl` lists every replica. Under attack, after the divert and before
    /// the proxy failover, the leading replica is killed (SIGKILL) and the takeover by
    /// a standby is measured; the failover and the restore then run under the new
    /// leader. TargetDNS becomes a hidden primary with a Knot secondary (Debian `knot`)
    /// off the bottleneck that ClientDNS asks. Needs the coordinator in the run (no
    /// --static-route or --no-control) and Debian `etcd-server`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=crate::fig8::MAX_COORDINATORS as i64).map(usize::from))]
    pub coordinators: usize,
    /// Longest wait, seconds, from the alarm for the target's ALT records at ClientDNS.
    #[arg(long, default_value_t = 20.0)]
    pub divert_wait: f64,
    /// Rate of the alternate link (each direction); default: the bottleneck's rate.
    #[arg(long, value_parser = parse_rate)]
    pub alt_rate: Option<u64>,
    /// Directory for results.json, report.txt, report.html and downloads.svg.
    #[arg(long, default_value = "scold-lab-results")]
    pub out: PathBuf,
    /// On failure keep the namespaces for inspection (`scold lab cleanup --all` removes them).
    #[arg(long)]
    pub keep_on_failure: bool,
    /// No progress lines on standard error.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Time the indirect route's set-up (operator's alarm -> first client packet over
    /// the indirect route) and the proxy failover repeatedly; prints median and worst
    /// beside the goals (set-up under 100 ms, failover under 1 s).
    Bench {
        /// Set-ups to time (each: divert, first packet, restore; about 15 s apiece).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
        runs: u32,
        /// Proxy failovers to time (the client's proxy is killed; 0: none).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
        failover_runs: u32,
        /// Encapsulation of the indirect route: udp, ipip or wireguard.
        #[arg(long, default_value_t = Encap::Wireguard, value_parser = clap::builder::PossibleValuesParser::new(["udp", "ipip", "wireguard"]).map(|s| s.parse::<Encap>().expect("listed")))]
        encap: Encap,
        /// The scheme to time: 4.1 (first packet once the agent's lookup meets ALT
        /// records), 4.2 (first packet through the route a proxy pushed), 4.3 (first
        /// HTTP answer from the proxy address ClientDNS gives; failover: reset -> first
        /// new connection through another proxy).
        #[arg(long, default_value_t = Scheme::Resolver, value_parser = clap::builder::PossibleValuesParser::new(["4.1", "4.2", "4.3"]).map(|s| s.parse::<Scheme>().expect("listed")))]
        scheme: Scheme,
        /// Proxies in the testbed. The target's ALT set holds 2; a third lets the
        /// coordinator replace a dead proxy, so every failover finds a second proxy in
        /// the set the client holds (with 2, after the first failure the set has one).
        #[arg(long, default_value_t = 3)]
        proxies: usize,
        /// Directory for bench.json, bench.txt and the role logs.
        #[arg(long, default_value = "scold-lab-bench")]
        out: PathBuf,
        /// On failure keep the namespaces for inspection.
        #[arg(long)]
        keep_on_failure: bool,
        /// No progress lines on standard error.
        #[arg(long)]
        quiet: bool,
    },
    /// Remove namespaces and processes left by lab runs that were killed.
    Cleanup {
        /// Also remove namespaces of runs whose process still exists.
        #[arg(long)]
        all: bool,
    },
    /// Build the Figure 8 testbed, print its nodes and addresses, and wait for Ctrl-C.
    Up {
        #[arg(long, default_value_t = 2)]
        proxies: usize,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 1)]
        attackers: usize,
        #[arg(long, default_value = "10mbit", value_parser = parse_rate)]
        bottleneck_rate: u64,
        #[arg(long, value_enum, default_value_t = Duplex::Half)]
        duplex: Duplex,
    },
    /// Serve HTTP files and bulk TCP downloads (the target's services).
    #[command(hide = true)]
    Serve {
        #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
        bind: Ipv4Addr,
        #[arg(long, default_value_t = serve::DEFAULT_HTTP_PORT)]
        http_port: u16,
        #[arg(long, default_value_t = serve::DEFAULT_BULK_PORT)]
        bulk_port: u16,
    },
    /// Flood a testbed address; runs only inside a lab namespace. Prints a JSON report.
    #[command(hide = true)]
    Flood {
        #[arg(long, value_enum, default_value_t = FloodKind::Udp)]
        kind: FloodKind,
        #[arg(long)]
        target: Ipv4Addr,
        /// Destination port (UDP and SYN); 0 picks a random port per packet.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Packets per second.
        #[arg(long)]
        rate: u64,
        /// Payload bytes (UDP and ICMP).
        #[arg(long, default_value_t = 1000)]
        payload: usize,
        /// Seconds.
        #[arg(long)]
        duration: f64,
        /// Stop after this many packets (default: rate x duration).
        #[arg(long)]
        max_packets: Option<u64>,
        /// Testbed prefixes the target must lie in (repeatable); always within 198.18.0.0/15.
        #[arg(long)]
        allow: Vec<Ipv4Net>,
    },
    /// Time one download from the current namespace. Prints a JSON line.
    #[command(hide = true)]
    Fetch {
        #[arg(long, value_enum)]
        proto: ProtoArg,
        /// Server as host or address; the port defaults to the service's.
        #[arg(long)]
        server: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Send ICMP echoes from the current namespace. Prints a JSON line.
    #[command(hide = true)]
    Ping {
        /// Host name or address.
        dest: String,
        #[arg(long, default_value_t = 5)]
        count: u32,
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProtoArg {
    Bulk,
    Http,
}

/// `100k`, `2m`, `1500`: bytes (k = 1000, m = 1,000,000, as the paper's sizes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 100k, 2m or 1500"))?;
    let v = n
        .checked_mul(mult)
        .filter(|&v| v <= serve::MAX_SIZE)
        .ok_or_else(|| format!("`{s}` is above the largest download, 1 GiB"))?;
    Ok(v)
}

/// `10mbit`, `500kbit`, `1gbit`, `2000000`: bits per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n, 1_000_000_000)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1_000_000)
    } else if let Some(n) = t.strip_suffix("kbit") {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix("bit") {
        (n, 1)
    } else {
        (t.as_str(), 1)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate like 10mbit, 500kbit or 2000000"))?;
    let v = n * mult as f64;
    if !(8_000.0..=100e9).contains(&v) {
        return Err(format!("`{s}`: the rate must be between 8kbit and 100gbit"));
    }
    Ok(v as u64)
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        anyhow::bail!("{what} must be a positive number of seconds (at most a day), not {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Runs `f` on a blocking thread; SIGINT or SIGTERM instead tears down every live
/// testbed of this process and exits non-zero.
async fn with_signals<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let signalled = scold_daemon::wait_for_signal();
    let task = tokio::task::spawn_blocking(f);
    let sig = tokio::select! {
        r = task => return r.context("the lab's worker thread panicked")?,
        s = signalled => s.context("cannot watch SIGINT/SIGTERM")?,
    };
    eprintln!("scold lab: {sig} received, removing the testbed");
    let errors = tokio::task::spawn_blocking(topology::teardown_all_live)
        .await
        .unwrap_or_default();
    for e in &errors {
        eprintln!("scold lab: clean-up: {e}");
    }
    // The worker thread may be mid-measurement against namespaces that are gone;
    // leave without waiting for it.
    std::process::exit(if sig == "SIGINT" { 130 } else { 143 });
}

/// A stop flag set by SIGINT or SIGTERM, for the long-running tools.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut flag = scold_daemon::shutdown_signal();
    let s = stop.clone();
    tokio::spawn(async move {
        scold_daemon::until_set(&mut flag).await;
        s.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}

fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn resolve(server: &str, default_port: u16) -> anyhow::Result<(SocketAddr, f64)> {
    let start = Instant::now();
    let with_port = if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving `{server}`"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("`{server}` has no IPv4 address"))?;
    Ok((addr, start.elapsed().as_secs_f64()))
}

pub async fn run(a: LabArgs) -> anyhow::Result<()> {
    match a.command {
        None => run_scenario(a.scenario).await,
        Some(LabCommand::Bench {
            runs,
            failover_runs,
            encap,
            scheme,
            proxies,
            out,
            keep_on_failure,
            quiet,
        }) => {
            topology::require_root()?;
            crate::preflight::check(false, false)?;
            if failover_runs > 0 && proxies < 2 {
                anyhow::bail!("--failover-runs needs --proxies 2 or more: the client must have a proxy to move to");
            }
            let mut cfg = scenario_config(&ScenarioArgs {
                proxies,
                encap,
                scheme,
                out,
                keep_on_failure,
                quiet,
                ..ScenarioArgs::defaults()
            })?;
            cfg.testbed.attackers = 0;
            let out = with_signals(move || {
                crate::bench::run(&cfg, runs, failover_runs).context("the lab bench failed")
            })
            .await?;
            print!("{}", out.text);
            println!();
            println!("every sample: {}", out.json.display());
            println!("report:       {}", out.report.display());
            Ok(())
        }
        Some(LabCommand::Cleanup { all }) => {
            let r = tokio::task::spawn_blocking(move || topology::cleanup_leftovers(all)).await??;
            for n in &r.removed {
                println!("removed {n}");
            }
            for n in &r.skipped_live {
                println!("kept {n} (its lab run is still going; --all removes it)");
            }
            println!(
                "{} namespaces removed, {} of live runs kept",
                r.removed.len(),
                r.skipped_live.len()
            );
            Ok(())
        }
        Some(LabCommand::Up {
            proxies,
            clients,
            attackers,
            bottleneck_rate,
            duplex,
        }) => {
            topology::require_root()?;
            crate::preflight::check(false, false)?;
            let opts = Fig8Options {
                proxies,
                clients,
                attackers,
                bottleneck: Tbf {
                    rate_bit: bottleneck_rate,
                    ..Tbf::default()
                },
                duplex,
                alt_link: Some(Tbf {
                    rate_bit: bottleneck_rate,
                    ..Tbf::default()
                }),
                coordinators: 1,
            };
            with_signals(move || {
                let lab = Fig8::build(opts).context("building the Figure 8 testbed")?;
                println!("testbed {} is up; Ctrl-C removes it", lab.id());
                for n in &lab.spec().nodes {
                    let addrs: Vec<String> = lab
                        .spec()
                        .endpoints(&n.name)
                        .map(|e| format!("{}={}", e.ifname, e.addr))
                        .collect();
                    println!(
                        "  {:<12} ip netns exec {:<32} {}",
                        n.name,
                        lab.netns(&n.name)?,
                        addrs.join(" ")
                    );
                }
                println!("  target's public address: {}", fig8::TARGET_ADDR);
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            })
            .await
        }
        Some(LabCommand::Serve {
            bind,
            http_port,
            bulk_port,
        }) => {
            let cfg = ServeConfig {
                bind,
                http_port,
                bulk_port,
            };
            let stop = stop_on_signal()?;
            let server = serve::Server::bind(&cfg)?;
            let (h, b) = server.local_addrs();
            tracing::debug!(http = %h, bulk = %b, "serving");
            tokio::task::spawn_blocking(move || server.run_until(stop)).await?;
            Ok(())
        }
        Some(LabCommand::Flood {
            kind,
            target,
            port,
            rate,
            payload,
            duration,
            max_packets,
            allow,
        }) => {
            let duration = seconds(duration, "--duration")?;
            let spec = FloodSpec {
                kind,
                target,
                port,
                rate_pps: rate,
                payload,
                duration,
                max_packets: max_packets.unwrap_or_else(|| {
                    ((rate as f64 * duration.as_secs_f64()).ceil() as u64)
                        .clamp(1, crate::flood::HARD_MAX_PACKETS)
                }),
            };
            spec.validate(&allow)?;
            let stop = stop_on_signal()?;
            let report =
                tokio::task::spawn_blocking(move || crate::flood::run(&spec, &allow, Some(&stop)))
                    .await??;
            print_json(&report)
        }
        Some(LabCommand::Fetch {
            proto,
            server,
            size,
            timeout,
        }) => {
            let timeout = seconds(timeout, "--timeout")?;
            #[derive(Serialize)]
            struct Fetched {
                proto: Proto,
                server: SocketAddr,
                resolve_seconds: f64,
                #[serde(flatten)]
                transfer: crate::measure::Transfer,
            }
            let out = tokio::task::spawn_blocking(move || -> anyhow::Result<Fetched> {
                let (proto, port) = match proto {
                    ProtoArg::Bulk => (Proto::Bulk, serve::DEFAULT_BULK_PORT),
                    ProtoArg::Http => (Proto::Http, serve::DEFAULT_HTTP_PORT),
                };
                let (addr, resolve_seconds) = resolve(&server, port)?;
                let host = server.split(':').next().unwrap_or(&server).to_string();
                let transfer = match proto {
                    Proto::Bulk => crate::measure::fetch_bulk(addr, size, timeout)?,
                    Proto::Http => {
                        crate::measure::fetch_http(addr, &host, &serve::http_path(size), timeout)?
                    }
                };
                Ok(Fetched {
                    proto,
                    server: addr,
                    resolve_seconds,
                    transfer,
                })
            })
            .await??;
            print_json(&out)
        }
        Some(LabCommand::Ping {
            dest,
            count,
            timeout,
        }) => {
            let timeout = seconds(timeout, "--timeout")?;
            #[derive(Serialize)]
            struct Pinged {
                dest: Ipv4Addr,
                resolve_seconds: f64,
                /// Round-trip times in seconds; null for a lost echo.
                rtt_seconds: Vec<Option<f64>>,
            }
            let out = tokio::task::spawn_blocking(move || -> anyhow::Result<Pinged> {
                let (addr, resolve_seconds) = resolve(&dest, 0)?;
                let SocketAddr::V4(v4) = addr else {
                    anyhow::bail!("`{dest}` is not IPv4");
                };
                let echoes = crate::measure::ping_samples(
                    *v4.ip(),
                    count,
                    Duration::from_millis(200),
                    timeout,
                )?;
                Ok(Pinged {
                    dest: *v4.ip(),
                    resolve_seconds,
                    rtt_seconds: echoes.iter().map(|e| e.map(|d| d.as_secs_f64())).collect(),
                })
            })
            .await??;
            print_json(&out)
        }
    }
}

impl ScenarioArgs {
    /// The options as `scold lab` with none given.
    pub fn defaults() -> ScenarioArgs {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: ScenarioArgs,
        }
        <Wrap as clap::Parser>::parse_from(["scold-lab"]).a
    }
}

/// The scenario's configuration from its command-line options.
pub(crate) fn scenario_config(a: &ScenarioArgs) -> anyhow::Result<ScenarioConfig> {
    Ok(ScenarioConfig {
        testbed: Fig8Options {
            proxies: if a.adversary {
                a.proxies.max(crate::adversary::MIN_PROXIES)
            } else {
                a.proxies
            },
            clients: a.clients,
            attackers: a.attackers,
            bottleneck: Tbf {
                rate_bit: a.bottleneck_rate,
                burst_bytes: a.bottleneck_burst,
                latency_ms: a.bottleneck_latency_ms,
            },
            duplex: a.duplex,
            alt_link: Some(Tbf {
                rate_bit: a.alt_rate.unwrap_or(a.bottleneck_rate),
                burst_bytes: a.bottleneck_burst,
                latency_ms: a.bottleneck_latency_ms,
            }),
            coordinators: a.coordinators,
        },
        reps: a.reps,
        pings: a.pings,
        sizes: if a.sizes.is_empty() {
            PAPER_SIZES.to_vec()
        } else {
            a.sizes.clone()
        },
        flood_kind: a.flood,
        flood_rate_pps: a.flood_rate,
        flood_payload: a.flood_size,
        timeout: seconds(a.timeout, "--timeout")?,
        attack_timeout: seconds(a.attack_timeout, "--attack-timeout")?,
        attack_reps: a.attack_reps,
        attack_sequential: a.attack_sequential,
        attack_warmup: Duration::from_millis(500),
        divert_wait: seconds(a.divert_wait, "--divert-wait")?,
        encap: a.encap,
        scheme: a.scheme,
        static_route: a.static_route,
        failover_reps: a.failover_reps,
        failover_attack: a.failover_attack,
        no_control: a.no_control,
        operator_alarm: a.operator_alarm,
        adversary: a.adversary,
        out_dir: a.out.clone(),
        keep_on_failure: a.keep_on_failure,
        scold_bin: std::env::current_exe().context("finding the scold binary")?,
        quiet: a.quiet,
    })
}

async fn run_scenario(a: ScenarioArgs) -> anyhow::Result<()> {
    topology::require_root()?;
    crate::preflight::check(a.adversary, a.coordinators > 1)?;
    let cfg = scenario_config(&a)?;
    if cfg.flood_rate_pps == 0 || cfg.flood_rate_pps > crate::flood::HARD_MAX_RATE {
        anyhow::bail!(
            "--flood-rate must be 1 to {} packets/s",
            crate::flood::HARD_MAX_RATE
        );
    }
    if cfg.flood_payload > crate::flood::MAX_PAYLOAD {
        anyhow::bail!(
            "--flood-size must be at most {} bytes",
            crate::flood::MAX_PAYLOAD
        );
    }
    if cfg.testbed.attackers == 0 {
        anyhow::bail!("--attackers must be at least 1: the scenario measures under attack");
    }
    if cfg.no_control && cfg.scheme != Scheme::Resolver {
        anyhow::bail!(
            "--no-control is for scheme 4.1 (client agents, ALT records published by the \
             lab); scheme {} needs the coordinator: drop --no-control, or use --static-route \
             for static configs",
            cfg.scheme.as_str()
        );
    }
    if cfg.adversary && !(cfg.control_mode() && cfg.scheme == Scheme::Resolver) {
        anyhow::bail!(
            "--adversary needs scheme 4.1 with client agents linked to the coordinator: \
             drop --static-route and --no-control"
        );
    }
    if cfg.testbed.replicated() && cfg.adversary {
        anyhow::bail!(
            "--adversary restarts the one coordinator it kills; run it without --coordinators"
        );
    }
    if cfg.testbed.replicated() && !cfg.control_mode() {
        anyhow::bail!(
            "--coordinators {} needs the coordinator in the run: drop --static-route and \
             --no-control",
            cfg.testbed.coordinators
        );
    }
    let check = cfg.clone();
    let out = with_signals(move || scenario::run(&cfg).context("the lab scenario failed")).await?;
    let cfg = check;
    println!("{}", out.tables);
    for n in &out.results.notes {
        println!("note: {n}");
    }
    println!();
    println!("every sample: {}", out.json.display());
    println!("tables:       {}", out.text.display());
    println!("chart:        {}", out.svg.display());
    println!(
        "as a page:    {}",
        out.text.with_file_name("report.html").display()
    );
    println!("role logs:    {}", out.logs.display());
    let broken: Vec<&str> = out
        .results
        .attacks
        .iter()
        .filter(|a| !a.held)
        .map(|a| a.name.as_str())
        .collect();
    let incomplete = cfg.incomplete(&out.results);
    if !broken.is_empty() {
        anyhow::bail!(
            "adversary mode: {} of {} attacks on SCOLD got through: {}",
            broken.len(),
            out.results.attacks.len(),
            broken.join("; ")
        );
    }
    if let Some(why) = incomplete {
        if a.allow_incomplete {
            eprintln!("scold lab: incomplete run (--allow-incomplete): {why}");
        } else {
            anyhow::bail!("incomplete run: {why} (--allow-incomplete exits 0 for exploring)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("2m"), Ok(2_000_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        for bad in ["", "k", "1.5k", "-1k", "10g", "99999999999m"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("2000000"), Ok(2_000_000));
        for bad in ["", "fast", "10", "1kbit", "-5mbit", "1000gbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn help_parses() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Top {
            #[command(flatten)]
            lab: LabArgs,
        }
        Top::command().debug_assert();
        let t = Top::try_parse_from(["lab", "--reps", "5", "--sizes", "100k,1m"]).unwrap();
        assert_eq!(t.lab.scenario.reps, 5);
        assert_eq!(t.lab.scenario.sizes, vec![100_000, 1_000_000]);
        let t = Top::try_parse_from(["lab", "cleanup", "--all"]).unwrap();
        assert!(matches!(
            t.lab.command,
            Some(LabCommand::Cleanup { all: true })
        ));
        assert!(Top::try_parse_from(["lab", "--reps", "0"]).is_err());
    }
}
