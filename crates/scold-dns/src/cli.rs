//! `scold dns` and `scold resolver` (being built).
#[derive(clap::Args)]
pub struct DnsArgs {}
#[derive(clap::Args)]
pub struct ResolverArgs {}
pub async fn run_dns(_a: DnsArgs) -> anyhow::Result<()> {
    anyhow::bail!("scold dns is not available in this build")
}
pub async fn run_resolver(_a: ResolverArgs) -> anyhow::Result<()> {
    anyhow::bail!("scold resolver is not available in this build")
}
