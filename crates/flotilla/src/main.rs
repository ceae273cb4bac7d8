//! `flotilla`: one binary for the server, a local dev cluster, and the client CLI.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Raft-based KV/config store speaking the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Client(flotilla::cli::ClientCommand),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(cmd) => flotilla::cli::run(cmd).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
