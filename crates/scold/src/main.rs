//! `scold`: one binary, one subcommand per role of the Secure Collective Defense system.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;

#[derive(Parser)]
#[command(
    name = "scold",
    version,
    about = "Secure Collective Defense: keeps a site reachable through consortium proxies while a DDoS attack fills its main link",
    long_about = None
)]
struct Cli {
    /// Log format on standard error: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SCOLD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax (for example `info,scold_node=debug`).
    /// Overridden by the RUST_LOG environment variable when that is set.
    #[arg(long, default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator: registry of targets, proxies and gateways; drives divert and restore.
    Coordinator(scold_control::coordinator::Args),
    /// Run the authoritative DNS server of a target site (TargetDNS) with RFC 2136 + TSIG updates.
    Dns(scold_dns::cli::DnsArgs),
    /// Run the caching resolver of a client site (ClientDNS) that carries ALT records.
    Resolver(scold_dns::cli::ResolverArgs),
    /// Run a proxy: admits clients, filters attack traffic, relays to the hidden gateway.
    Proxy(scold_node::proxy::Args),
    /// Run a hidden alternate gateway of a target site.
    Gateway(scold_node::gateway::Args),
    /// Run the target-side agent: attack detection on the main link and the return path.
    Target(scold_node::target::Args),
    /// Run the client agent: a SCOLD-aware stub resolver that sets up the indirect route.
    Client(scold_node::client::Args),
    /// Build the paper's testbed in network namespaces and run the SCOLD scenario.
    Lab(scold_lab::cli::LabArgs),
    /// Manage the consortium certificate authority: init, issue, revoke, show.
    Ca(scold_pki::cli::CaArgs),
    /// Operator commands against a running coordinator: status, divert, restore, proxies, events.
    Ctl(scold_control::ctl::Args),
}

fn init_tracing(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: journald, files and pipes get plain text
    // (NO_COLOR, https://no-color.org, turns them off at a terminal too). Under systemd
    // (JOURNAL_STREAM set) the journal stamps every line itself, so ours is left out.
    let tty = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(tty)
        .with_writer(std::io::stderr);
    match (format, journal) {
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Json, _) => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Coordinator(a) => scold_control::coordinator::run(a).await,
            Command::Dns(a) => scold_dns::cli::run_dns(a).await,
            Command::Resolver(a) => scold_dns::cli::run_resolver(a).await,
            Command::Proxy(a) => scold_node::proxy::run(a).await,
            Command::Gateway(a) => scold_node::gateway::run(a).await,
            Command::Target(a) => scold_node::target::run(a).await,
            Command::Client(a) => scold_node::client::run(a).await,
            Command::Lab(a) => scold_lab::cli::run(a).await,
            Command::Ca(a) => scold_pki::cli::run(a).await,
            Command::Ctl(a) => scold_control::ctl::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
