//! `scold gateway` (being built).
#[derive(clap::Args)]
pub struct Args {}
pub async fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("scold gateway is not available in this build")
}
