pub fn run(_idle: u64) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
