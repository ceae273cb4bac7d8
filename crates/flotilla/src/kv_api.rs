//! The KV server as this crate sees it: `flotilla_kv::server`'s API.
//!
//! TEMPORARY: until `flotilla_kv::server` lands, this is a stand-in with the same signatures.
//! It starts the KV Raft group with the real [`flotilla_kv::KvStateMachine`] (so leadership,
//! readiness, status and metrics are real) but serves no gRPC services: `serve` only holds the
//! listener until shutdown. Replace the body of this module with
//! `pub use flotilla_kv::server::{KvServer, KvServerConfig, MemberInfo, RequestCount};`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::{EngineError, GroupId, NodeHost};

/// A member of the static initial cluster.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// Node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
}

/// KV server configuration.
#[derive(Clone, Debug)]
pub struct KvServerConfig {
    /// KV group id.
    pub group: GroupId,
    /// Cluster id.
    pub cluster_id: u64,
    /// Static initial cluster, this node included.
    pub members: Vec<MemberInfo>,
    /// Request limits.
    pub limits: flotilla_kv::Limits,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Lease expiry check interval.
    pub lease_check_interval: Duration,
    /// Revisions kept; 0 = off.
    pub compaction_retention_revisions: i64,
    /// Watch progress notification interval.
    pub watch_progress_interval: Duration,
}

impl Default for KvServerConfig {
    fn default() -> Self {
        KvServerConfig {
            group: 1,
            cluster_id: 0,
            members: Vec::new(),
            limits: flotilla_kv::Limits::default(),
            request_timeout: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(500),
            compaction_retention_revisions: 100_000,
            watch_progress_interval: Duration::from_secs(600),
        }
    }
}

/// Requests answered, by gRPC method and status code.
#[derive(Clone, Debug)]
pub struct RequestCount {
    /// gRPC method.
    pub method: &'static str,
    /// tonic `Code` name.
    pub code: &'static str,
    /// Count.
    pub count: u64,
}

/// Stand-in KV server (see the module docs).
pub struct KvServer {
    group: GroupId,
    stopped: AtomicBool,
}

impl KvServer {
    /// Starts the KV Raft group.
    pub async fn start(
        host: Arc<NodeHost>,
        cfg: KvServerConfig,
    ) -> Result<Arc<KvServer>, EngineError> {
        let members = cfg.members.iter().map(|m| m.id).collect();
        host.start_group(
            cfg.group,
            Some(members),
            Box::new(flotilla_kv::KvStateMachine::new(cfg.limits)),
        )
        .await?;
        Ok(Arc::new(KvServer {
            group: cfg.group,
            stopped: AtomicBool::new(false),
        }))
    }

    /// Holds the listener until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        shutdown.await;
        drop(listener);
        Ok(())
    }

    /// Requests by method and code.
    pub fn request_stats(&self) -> Vec<RequestCount> {
        Vec::new()
    }

    /// The KV group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> i64 {
        0
    }

    /// Stops background loops.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}
