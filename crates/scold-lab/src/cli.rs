//! `scold lab` command line.
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<LabCommand>,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Remove namespaces and processes left by earlier lab runs that were killed.
    Cleanup {
        /// Also remove namespaces of runs whose process still exists.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(a: LabArgs) -> anyhow::Result<()> {
    match a.command {
        Some(LabCommand::Cleanup { all }) => {
            let r = crate::topology::cleanup_leftovers(all)?;
            println!(
                "removed {} namespaces, left {} of live runs",
                r.removed.len(),
                r.skipped_live.len()
            );
            Ok(())
        }
        None => anyhow::bail!("not yet"),
    }
}
