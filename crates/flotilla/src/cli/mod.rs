//! Client subcommands over the etcd v3 API.

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {}

/// Runs a client subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {}
}
