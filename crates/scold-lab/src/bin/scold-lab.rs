//! The testbed alone: `scold-lab lab ...` takes exactly what `scold lab ...` takes and
//! runs the same code. It exists so this crate's end-to-end tests (interrupting a
//! running lab, its sub-processes) have a binary cargo builds for them; users run
//! `scold lab`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scold-lab",
    version,
    about = "The SCOLD testbed (same as `scold lab`)"
)]
struct Cli {
    /// Log filter in tracing's EnvFilter syntax; RUST_LOG overrides it.
    #[arg(long, default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the paper's testbed in network namespaces and run the SCOLD scenario.
    Lab(scold_lab::cli::LabArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Command::Lab(a) = cli.command;
    match rt.block_on(scold_lab::cli::run(a)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
