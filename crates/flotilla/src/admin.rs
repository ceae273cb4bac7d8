//! The admin HTTP server: `/health`, `/ready`, `/metrics`, `/status`.
//!
//! - `/health`: 200 `ok` while the process serves HTTP at all (a liveness probe).
//! - `/ready`: 200 `ready` when this node knows a leader for its KV group and has applied
//!   everything it knows committed; otherwise 503 with the reason (a readiness probe: send
//!   clients elsewhere). 503 `shutting down` once graceful shutdown began.
//! - `/metrics`: Prometheus text format (see [`crate::metrics`]).
//! - `/status`: JSON — node id, name, cluster, members, and per group leader, term, role,
//!   commit, applied, last index and membership.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_engine::{GroupId, NodeHost};
use serde::Serialize;

use crate::config::MemberConfig;
use crate::metrics::{group_statuses, role_name, Metrics};

/// What the admin handlers read.
pub struct AdminState {
    /// This node's id.
    pub node_id: u64,
    /// This node's name.
    pub name: String,
    /// The cluster name.
    pub cluster_name: String,
    /// The initial cluster.
    pub members: Vec<MemberConfig>,
    /// The node host.
    pub host: Arc<NodeHost>,
    /// The KV group, whose leader and progress decide readiness.
    pub kv_group: GroupId,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Set when graceful shutdown begins: `/ready` turns 503.
    pub stopping: AtomicBool,
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Why the node is not ready, or `None` when it is.
pub async fn not_ready_reason(state: &AdminState) -> Option<String> {
    if state.stopping.load(Ordering::Acquire) {
        return Some("shutting down".into());
    }
    let g = state.kv_group;
    if state.host.leader(g).is_none() {
        return Some(format!("no leader known for group {g}"));
    }
    match state.host.status(g).await {
        Err(e) => Some(format!("group {g}: {e}")),
        Ok(s) if s.applied < s.commit => Some(format!(
            "group {g}: applied index {} behind commit index {}",
            s.applied, s.commit
        )),
        Ok(_) => None,
    }
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    match not_ready_reason(&state).await {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics.render().await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("gathering metrics: {e:#}\n"),
        )
            .into_response(),
    }
}

/// `/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// This node's id.
    pub node_id: u64,
    /// This node's name.
    pub name: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Initial cluster members.
    pub members: Vec<MemberStatus>,
    /// Groups on this node.
    pub groups: Vec<GroupStatus>,
}

/// One member in `/status`.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Peer URL.
    pub peer_url: String,
    /// Client URL.
    pub client_url: String,
}

/// One group in `/status`.
#[derive(Debug, Serialize)]
pub struct GroupStatus {
    /// Group id.
    pub group: GroupId,
    /// Known leader (null: none).
    pub leader: Option<u64>,
    /// Term.
    pub term: u64,
    /// Role of this replica.
    pub role: &'static str,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
}

/// Builds the `/status` body.
pub async fn status_body(state: &AdminState) -> StatusBody {
    let groups = group_statuses(&state.host)
        .await
        .into_iter()
        .map(|(group, s)| GroupStatus {
            group,
            leader: (s.leader != flotilla_raft::NO_NODE).then_some(s.leader),
            term: s.term,
            role: role_name(s.role),
            commit: s.commit,
            applied: s.applied,
            last_index: s.last_index,
            voters: s.conf_state.voters.iter().copied().collect(),
            learners: s.conf_state.learners.iter().copied().collect(),
        })
        .collect();
    StatusBody {
        node_id: state.node_id,
        name: state.name.clone(),
        cluster_name: state.cluster_name.clone(),
        members: state
            .members
            .iter()
            .map(|m| MemberStatus {
                id: m.id,
                name: m.name(),
                peer_url: m.peer_url.clone(),
                client_url: m.client_url.clone(),
            })
            .collect(),
        groups,
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Json<StatusBody> {
    Json(status_body(&state).await)
}
