//! `scold lab` (being built).
#[derive(clap::Args)]
pub struct LabArgs {}
pub async fn run(_a: LabArgs) -> anyhow::Result<()> {
    anyhow::bail!("scold lab is not available in this build")
}
