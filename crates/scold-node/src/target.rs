//! `scold target` (being built).
#[derive(clap::Args)]
pub struct Args {}
pub async fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("scold target is not available in this build")
}
