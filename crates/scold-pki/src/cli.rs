//! `scold ca` (being built).
#[derive(clap::Args)]
pub struct CaArgs {}
pub async fn run(_a: CaArgs) -> anyhow::Result<()> {
    anyhow::bail!("scold ca is not available in this build")
}
