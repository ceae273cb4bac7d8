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
    /// Runs one node (config: defaults < YAML file < FLOTILLA_… env < flags).
    Server(flotilla::server::ServerArgs),
    /// Runs a local N-node cluster in this process on 127.0.0.1.
    Dev(flotilla::dev::DevArgs),
    #[command(flatten)]
    Client(flotilla::cli::ClientCommand),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => std::process::exit(flotilla::server::run_server(args).await),
        Command::Dev(args) => flotilla::dev::run_dev(args).await,
        Command::Client(cmd) => flotilla::cli::run(cmd).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
