//! `flotilla server`: load the config, set up logging, run one node until SIGINT / SIGTERM.

use std::path::PathBuf;

use crate::config::{self, LogFormat, Overrides};

/// Exit code for an invalid configuration.
pub const EXIT_INVALID_CONFIG: i32 = 2;
/// Exit code for a failure while running.
pub const EXIT_FAILURE: i32 = 1;

/// Arguments of `flotilla server`. Each flag overrides the file and the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// YAML config file (also `FLOTILLA_CONFIG`).
    #[arg(long, short = 'c', value_name = "FILE", env = config::ENV_CONFIG_FILE)]
    pub config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// This node's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Peer transport listen address (ip:port).
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// Peer address advertised to others.
    #[arg(long, value_name = "URL")]
    pub peer_advertise: Option<String>,
    /// etcd gRPC listen address (ip:port).
    #[arg(long, value_name = "ADDR")]
    pub client_listen: Option<String>,
    /// etcd gRPC address advertised to clients.
    #[arg(long, value_name = "URL")]
    pub client_advertise: Option<String>,
    /// Admin HTTP listen address (ip:port).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Initial cluster: `ID[@NAME]=PEER_URL|CLIENT_URL,...`, e.g.
    /// `1=http://10.0.0.1:7100|http://10.0.0.1:7379,2=...`.
    #[arg(long, value_name = "MEMBERS")]
    pub initial_cluster: Option<String>,
    /// Log filter (`info`, `debug`, `info,flotilla_engine=debug`).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Print the effective configuration (JSON) and exit without starting.
    #[arg(long)]
    pub print_config: bool,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

impl ServerArgs {
    /// The flags as the top configuration layer.
    pub fn overrides(&self) -> Result<Overrides, config::ConfigError> {
        Ok(Overrides {
            node_id: self.node_id,
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            peer_listen: self.peer_listen.clone(),
            peer_advertise: self.peer_advertise.clone(),
            client_listen: self.client_listen.clone(),
            client_advertise: self.client_advertise.clone(),
            admin_listen: self.admin_listen.clone(),
            initial_cluster: self
                .initial_cluster
                .as_deref()
                .map(config::parse_initial_cluster)
                .transpose()?,
            log_level: self.log_level.clone(),
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
        })
    }

    /// Loads and validates the configuration from file, process environment and flags.
    pub fn load(&self) -> Result<config::Config, config::ConfigError> {
        let overrides = self.overrides()?;
        config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

/// Runs `flotilla server`; returns the process exit code.
pub async fn run_server(args: ServerArgs) -> i32 {
    let cfg = match args.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return EXIT_INVALID_CONFIG;
        }
    };
    if args.print_config {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => {
                println!("{s}");
                return 0;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILURE;
            }
        }
    }
    let _log = match crate::logging::init(&cfg.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_FAILURE;
        }
    };
    match crate::node::run_node(cfg, crate::node::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "node failed");
            eprintln!("error: {e:#}");
            EXIT_FAILURE
        }
    }
}
