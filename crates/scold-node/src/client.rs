//! `scold client` (being built).
#[derive(clap::Args)]
pub struct Args {}
pub async fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("scold client is not available in this build")
}
