//! Client subcommands over the etcd v3 API.

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Prints the CLI's version.
    ClientVersion,
}

/// Runs a client subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::ClientVersion => println!("flotilla {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
