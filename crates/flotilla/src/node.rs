//! One Flotilla node: WAL, peer transport, node host, KV server, gRPC and admin listeners,
//! and its graceful shutdown.
//!
//! # Start
//! [`Node::start`] binds the three listeners from the config (or [`Node::start_with`] takes
//! them already bound, as `flotilla dev` and the tests do), opens the WAL in
//! `<data_dir>/wal`, starts the TCP transport with every other member of `initial_cluster` as
//! a peer, the [`NodeHost`], the inbound pump, the KV server (which starts the KV group), and
//! serves etcd gRPC and admin HTTP.
//!
//! # Graceful shutdown ([`Node::shutdown`])
//! 1. `/ready` turns 503 so load balancers stop sending clients here.
//! 2. The gRPC server stops accepting and in-flight requests get [`DRAIN_TIMEOUT`] to finish
//!    (long-lived watch streams are cut after that).
//! 3. If this node leads the KV group, it transfers leadership to the most up-to-date other
//!    voter and waits (polling, bounded by [`Node::handoff_timeout`]) until it no longer leads,
//!    so the cluster skips an election timeout.
//! 4. KV background loops, the node host (every acknowledged write is already durable), the
//!    transport and finally the admin server stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_engine::{
    pump_inbound, GroupId, NodeHost, NodeHostConfig, Transport, TransportConfig, WalBackend,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::config::{strip_scheme, Config};
use crate::kv_api::{KvServer, KvServerConfig, MemberInfo};
use crate::metrics::{Metrics, Sources};

/// The KV group's id on every node.
pub const KV_GROUP: GroupId = 1;

/// How long in-flight gRPC requests (and admin requests) get to finish on shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Proposal bytes allowed beyond `limits.max_request_bytes` (command framing).
const PROPOSAL_OVERHEAD_BYTES: u64 = 4096;

/// The three listeners of a node, bound.
pub struct Listeners {
    /// Raft peer transport.
    pub peer: TcpListener,
    /// etcd gRPC.
    pub client: TcpListener,
    /// Admin HTTP.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `peer.listen`, `client.listen` and `admin.listen`.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let bind = |field: &'static str, addr: String| async move {
            TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding {field} = {addr}"))
        };
        Ok(Listeners {
            peer: bind("peer.listen", cfg.peer.listen.clone()).await?,
            client: bind("client.listen", cfg.client.listen.clone()).await?,
            admin: bind("admin.listen", cfg.admin.listen.clone()).await?,
        })
    }
}

/// A running node. Stop it with [`Node::shutdown`].
pub struct Node {
    config: Config,
    host: Arc<NodeHost>,
    transport: Transport,
    kv: Arc<KvServer>,
    admin: Arc<AdminState>,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop_grpc: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    grpc_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    pump_task: JoinHandle<()>,
}

/// Resolves when `rx` sees `true` (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

/// `host:port` → `http://host:port` (clients and the KV's forwarding dial URLs).
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Resolves `host:port` or `http://host:port` to one socket address.
async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(strip_scheme(url))
        .await
        .with_context(|| format!("resolving {url}"))?
        .next()
        .with_context(|| format!("resolving {url}: no addresses"))
}

impl Node {
    /// Binds the configured listeners and starts the node.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let listeners = Listeners::bind(&config).await?;
        Node::start_with(config, listeners).await
    }

    /// Starts the node on listeners already bound.
    pub async fn start_with(config: Config, listeners: Listeners) -> anyhow::Result<Node> {
        config.validate()?;
        let id = config.node_id;
        let members = config.members();
        let data_dir = config.data_dir();
        let wal_dir = data_dir.join("wal");
        std::fs::create_dir_all(&wal_dir)
            .with_context(|| format!("creating data directory {}", wal_dir.display()))?;
        let backend = {
            let dir = wal_dir.clone();
            tokio::task::spawn_blocking(move || {
                WalBackend::open(dir, flotilla_wal::WalConfig::default())
            })
            .await?
            .with_context(|| format!("opening the WAL in {}", wal_dir.display()))?
        };
        let wal = backend.wal().clone();

        let peer_addr = listeners.peer.local_addr()?;
        let client_addr = listeners.client.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let (transport, inbound) = Transport::start(
            TransportConfig::new(id, config.cluster_id()),
            listeners.peer,
        )
        .context("starting the peer transport")?;
        for m in members.iter().filter(|m| m.id != id) {
            let addr = resolve(&m.peer_url)
                .await
                .with_context(|| format!("peer {} ({})", m.id, m.name()))?;
            transport.set_peer(m.id, addr);
        }

        let r = &config.raft;
        let host_cfg = NodeHostConfig {
            tick_interval: config.tick_interval(),
            election_ticks: r.election_ticks,
            heartbeat_ticks: r.heartbeat_ticks,
            pre_vote: r.pre_vote,
            check_quorum: r.check_quorum,
            snapshot_interval_entries: r.snapshot_interval_entries,
            quiesce_after_ticks: r.quiesce_after_ticks,
            max_proposal_bytes: (config.limits.max_request_bytes + PROPOSAL_OVERHEAD_BYTES)
                as usize,
            ..NodeHostConfig::new(id)
        };
        let host = Arc::new(
            NodeHost::start(host_cfg, Arc::new(backend), Arc::new(transport.clone()))
                .context("starting the node host")?,
        );
        let pump_task = tokio::spawn(pump_inbound(host.inbound_sink(), inbound));

        let l = &config.limits;
        let kv_cfg = KvServerConfig {
            group: KV_GROUP,
            cluster_id: config.cluster_id(),
            members: members
                .iter()
                .map(|m| MemberInfo {
                    id: m.id,
                    name: m.name(),
                    peer_urls: vec![with_scheme(&m.peer_url)],
                    client_urls: vec![with_scheme(&m.client_url)],
                })
                .collect(),
            limits: flotilla_kv::Limits {
                max_key_bytes: l.max_key_bytes,
                max_value_bytes: l.max_value_bytes,
                max_txn_ops: l.max_txn_ops,
                max_txn_depth: l.max_txn_depth,
                max_lease_ttl_secs: l.max_lease_ttl_secs,
            },
            request_timeout: Duration::from_millis(config.kv.request_timeout_ms),
            lease_check_interval: Duration::from_millis(config.kv.lease_check_interval_ms),
            compaction_retention_revisions: config.kv.compaction_retention_revisions,
            watch_progress_interval: Duration::from_millis(config.kv.watch_progress_interval_ms),
            max_request_bytes: l.max_request_bytes as usize,
            max_watchers_per_stream: config.kv.max_watchers_per_stream as usize,
        };
        let kv = KvServer::start(host.clone(), kv_cfg)
            .await
            .context("starting the KV server")?;

        let (stop_grpc, grpc_rx) = watch::channel(false);
        let grpc_task = {
            let kv = kv.clone();
            tokio::spawn(async move {
                if let Err(e) = kv.serve(listeners.client, stopped(grpc_rx)).await {
                    warn!(error = %e, "gRPC server failed");
                }
            })
        };

        let admin = Arc::new(AdminState {
            node_id: id,
            name: config.node_name(),
            cluster_name: config.cluster_name.clone(),
            members: members.clone(),
            host: host.clone(),
            kv_group: KV_GROUP,
            metrics: Metrics::new(Sources {
                host: host.clone(),
                transport: transport.clone(),
                wal,
                kv: kv.clone(),
            })?,
            stopping: Default::default(),
        });
        let (stop_admin, admin_rx) = watch::channel(false);
        let admin_task = {
            let admin = admin.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::serve(listeners.admin, admin, stopped(admin_rx)).await {
                    warn!(error = %e, "admin server failed");
                }
            })
        };
        info!(
            node = id,
            name = %config.node_name(),
            peer = %peer_addr,
            client = %client_addr,
            admin = %admin_addr,
            data_dir = %data_dir.display(),
            "node started"
        );
        Ok(Node {
            config,
            host,
            transport,
            kv,
            admin,
            peer_addr,
            client_addr,
            admin_addr,
            stop_grpc,
            stop_admin,
            grpc_task,
            admin_task,
            pump_task,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.node_id
    }

    /// The node host.
    pub fn host(&self) -> &Arc<NodeHost> {
        &self.host
    }

    /// The KV server.
    pub fn kv(&self) -> &Arc<KvServer> {
        &self.kv
    }

    /// Where the peer transport listens.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Where etcd gRPC listens.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Where admin HTTP listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// How long shutdown waits for a leadership transfer: two election timeouts, within
    /// 0.5–10 s.
    pub fn handoff_timeout(&self) -> Duration {
        let ms = self.config.raft.tick_ms * u64::from(self.config.raft.election_ticks) * 2;
        Duration::from_millis(ms.clamp(500, 10_000))
    }

    /// Graceful shutdown (see the module docs). Bounded in time.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let id = self.id();
        let handoff_timeout = self.handoff_timeout();
        info!(node = id, "shutting down");
        self.admin.stopping.store(true, Ordering::Release);

        self.stop_grpc.send_replace(true);
        let mut grpc_task = self.grpc_task;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut grpc_task)
            .await
            .is_err()
        {
            warn!(
                node = id,
                "in-flight gRPC requests did not finish in time; cutting them"
            );
            grpc_task.abort();
        }

        hand_off_leadership(&self.host, KV_GROUP, id, handoff_timeout).await;

        self.kv.shutdown();
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || host.shutdown()).await?;
        self.transport.shutdown().await;
        self.pump_task.abort();

        self.stop_admin.send_replace(true);
        let mut admin_task = self.admin_task;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut admin_task)
            .await
            .is_err()
        {
            admin_task.abort();
        }
        info!(node = id, "shut down");
        Ok(())
    }
}

/// If `me` leads `group`, asks the most caught-up other voter to take over and waits until
/// `me` no longer leads, at most `timeout`. Failure only costs the cluster an election.
pub async fn hand_off_leadership(host: &NodeHost, group: GroupId, me: u64, timeout: Duration) {
    if host.leader(group) != Some(me) {
        return;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let Ok(Ok(status)) = tokio::time::timeout(timeout, host.status(group)).await else {
        return;
    };
    let target = status
        .conf_state
        .voters
        .iter()
        .copied()
        .filter(|&v| v != me)
        .max_by_key(|v| {
            (
                status.progress.get(v).map_or(0, |p| p.matched),
                u64::MAX - v,
            )
        });
    let Some(target) = target else {
        return; // the only voter
    };
    info!(
        group,
        from = me,
        to = target,
        "transferring leadership before shutdown"
    );
    match tokio::time::timeout_at(deadline, host.transfer_leader(group, target)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(group, error = %e, "leadership transfer refused");
            return;
        }
        Err(_) => return,
    }
    while host.leader(group) == Some(me) {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                group,
                to = target,
                "leadership transfer did not finish in time"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    info!(group, leader = ?host.leader(group), "no longer leading");
}

/// Runs a node until `shutdown` resolves, then shuts it down gracefully.
pub async fn run_node(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    shutdown.await;
    node.shutdown().await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
}
