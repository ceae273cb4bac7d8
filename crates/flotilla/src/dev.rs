//! `flotilla dev`: a local cluster of N nodes in one process on 127.0.0.1.
//!
//! Node `i` (1-based) listens on `peer_base_port + i - 1`, `client_base_port + i - 1` and
//! `admin_base_port + i - 1` (a base port of 0 picks free ports). Data lives in a temporary
//! directory removed on exit, or in `<data-dir>/<i>` when `--data-dir` is given (and kept).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, LogConfig, MemberConfig};
use crate::node::{Listeners, Node, KV_GROUP};

/// Arguments of `flotilla dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes (1–9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Keep data in DIR/<node-id> (default: a temporary directory removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Peer port of node 1; node i uses this + i - 1. 0: free ports.
    #[arg(long, default_value_t = crate::config::DEFAULT_PEER_PORT)]
    pub peer_base_port: u16,
    /// etcd gRPC port of node 1; node i uses this + i - 1. 0: free ports.
    #[arg(long, default_value_t = crate::config::DEFAULT_CLIENT_PORT)]
    pub client_base_port: u16,
    /// Admin HTTP port of node 1; node i uses this + i - 1. 0: free ports.
    #[arg(long, default_value_t = crate::config::DEFAULT_ADMIN_PORT)]
    pub admin_base_port: u16,
    /// Log filter (e.g. `info`, `warn,flotilla_engine=debug`).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
}

/// How long `dev` waits for the KV group to elect a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);

fn port(base: u16, i: u64) -> u16 {
    if base == 0 {
        0
    } else {
        base + (i - 1) as u16
    }
}

async fn bind(p: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", p))
        .await
        .with_context(|| format!("binding 127.0.0.1:{p}"))
}

/// A running dev cluster.
pub struct DevCluster {
    /// The nodes, by id order.
    pub nodes: Vec<Node>,
    _tmp: Option<tempfile::TempDir>,
}

impl DevCluster {
    /// Binds every listener, then starts every node.
    pub async fn start(args: &DevArgs) -> anyhow::Result<DevCluster> {
        let last = args.nodes;
        for (flag, base) in [
            ("--peer-base-port", args.peer_base_port),
            ("--client-base-port", args.client_base_port),
            ("--admin-base-port", args.admin_base_port),
        ] {
            if base != 0 && u64::from(base) + last - 1 > u64::from(u16::MAX) {
                anyhow::bail!("{flag} {base}: node {last} would need a port above 65535");
            }
        }
        let (root, tmp) = match &args.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("flotilla-dev-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut listeners = Vec::new();
        for i in 1..=args.nodes {
            listeners.push(Listeners {
                peer: bind(port(args.peer_base_port, i)).await?,
                client: bind(port(args.client_base_port, i)).await?,
                admin: bind(port(args.admin_base_port, i)).await?,
            });
        }
        let mut members = Vec::new();
        for (i, l) in (1..).zip(&listeners) {
            members.push(MemberConfig {
                id: i,
                name: Some(format!("dev-{i}")),
                peer_url: format!("http://{}", l.peer.local_addr()?),
                client_url: format!("http://{}", l.client.local_addr()?),
            });
        }
        let mut nodes = Vec::new();
        for (i, l) in (1..).zip(listeners) {
            let config = Config {
                node_id: i,
                name: Some(format!("dev-{i}")),
                cluster_name: "flotilla-dev".into(),
                data_dir: Some(root.join(i.to_string())),
                initial_cluster: members.clone(),
                peer: crate::config::Endpoint {
                    listen: l.peer.local_addr()?.to_string(),
                    advertise: None,
                },
                client: crate::config::Endpoint {
                    listen: l.client.local_addr()?.to_string(),
                    advertise: None,
                },
                admin: crate::config::AdminEndpoint {
                    listen: l.admin.local_addr()?.to_string(),
                },
                log: LogConfig {
                    level: args.log_level.clone(),
                    ..LogConfig::default()
                },
                ..Config::default()
            };
            nodes.push(Node::start_with(config, l).await?);
        }
        Ok(DevCluster { nodes, _tmp: tmp })
    }

    /// Waits until some node leads the KV group and every node knows it; returns the leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .iter()
                .map(|n| n.host().leader(KV_GROUP))
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) {
                    return Ok(*l);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("no leader for the KV group after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The etcd endpoints, `host:port` comma-separated.
    pub fn endpoints(&self) -> String {
        let e: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.client_addr().to_string())
            .collect();
        e.join(",")
    }

    /// Shuts every node down, concurrently, each gracefully.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let mut set = tokio::task::JoinSet::new();
        for n in self.nodes {
            set.spawn(n.shutdown());
        }
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Runs `flotilla dev` until Ctrl-C / SIGTERM.
pub async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let _log = crate::logging::init(&LogConfig {
        level: args.log_level.clone(),
        ..LogConfig::default()
    })?;
    let cluster = DevCluster::start(&args).await?;
    for n in &cluster.nodes {
        println!(
            "node {}: peer {}  etcd {}  admin http://{}",
            n.id(),
            n.peer_addr(),
            n.client_addr(),
            n.admin_addr()
        );
    }
    let leader = cluster.wait_for_leader(LEADER_DEADLINE).await?;
    println!("leader: node {leader}");
    println!(
        "try:   etcdctl --endpoints={} put hello world",
        cluster.endpoints()
    );
    println!("ready (Ctrl-C to stop)");
    crate::node::shutdown_signal().await;
    cluster.shutdown().await
}
