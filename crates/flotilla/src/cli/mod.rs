//! Client subcommands over the etcd v3 gRPC API: they work against Flotilla and etcd alike.
//!
//! Every command talks through one [`client::Client`], which fails over between
//! `--endpoints`. gRPC errors surface as `error: <code>: <message>` (the binary prints the
//! error and exits 1); `lock` exits with its command's code instead.
//!
//! # Layout
//! - [`client`]: endpoint failover (retry policy, backoff, total deadline) and typed calls.
//! - [`output`]: text vs JSON printing, bytes as UTF-8 or base64.
//! - [`args`]: durations, hex ids, prefix ranges.
//! - [`kv`]: `kv put|get|del|watch`; [`txn`]: `kv txn` (etcdctl's txn format).
//! - [`lease`]: `lease grant|keepalive|revoke|ttl|list` and the background lease keeper.
//! - [`lock`]: `lock <name> -- <command>` (etcd's mutex recipe).
//! - [`config`]: `config set|get|history|rollback` under a key prefix.
//! - [`cluster`]: `cluster status|members|add|remove|promote|transfer-leader`.

pub mod args;
pub mod client;
pub mod cluster;
pub mod config;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod output;
pub mod txn;

use std::time::Duration;

use args::parse_duration;
use client::{Client, RetryPolicy};
use output::OutputFormat;

/// Options every client subcommand takes (before or after the subcommand's own arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// Comma-separated endpoints (host:port), tried in order; the last one that answered is
    /// tried first.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Timeout of each request to one endpoint (e.g. 500ms, 5s).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Total time to keep retrying unreachable endpoints, backoff included.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "15s")]
    pub retry_timeout: Duration,
}

impl ClientOptions {
    fn client(&self) -> anyhow::Result<Client> {
        let total = self.retry_timeout.max(self.timeout);
        Client::new(&self.endpoints, RetryPolicy::new(self.timeout, total))
    }
}

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Reads and writes keys: put, get, del, watch, txn.
    Kv {
        /// Connection and output options.
        #[command(flatten)]
        options: ClientOptions,
        /// The kv subcommand.
        #[command(subcommand)]
        command: kv::KvCommand,
    },
    /// Manages leases: grant, keepalive, revoke, ttl, list.
    Lease {
        /// Connection and output options.
        #[command(flatten)]
        options: ClientOptions,
        /// The lease subcommand.
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Runs a command while holding a distributed lock (interoperates with `etcdctl lock`).
    Lock {
        /// Connection and output options.
        #[command(flatten)]
        options: ClientOptions,
        /// The lock and the command.
        #[command(flatten)]
        args: lock::LockArgs,
    },
    /// Versioned configuration values: set, get, history, rollback.
    Config {
        /// Connection and output options.
        #[command(flatten)]
        options: ClientOptions,
        /// The config subcommand and its prefix.
        #[command(flatten)]
        args: config::ConfigArgs,
    },
    /// Cluster membership and status: status, members, add, remove, promote, transfer-leader.
    Cluster {
        /// Connection and output options.
        #[command(flatten)]
        options: ClientOptions,
        /// The cluster subcommand.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

/// Runs a client subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Kv { options, command } => {
            kv::run(&options.client()?, options.output, command).await
        }
        ClientCommand::Lease { options, command } => {
            lease::run(&options.client()?, options.output, command).await
        }
        ClientCommand::Lock { options, args } => {
            lock::run(&options.client()?, options.output, args).await
        }
        ClientCommand::Config { options, args } => {
            config::run(&options.client()?, options.output, args).await
        }
        ClientCommand::Cluster { options, command } => {
            cluster::run(&options.client()?, options.output, command).await
        }
    }
}
