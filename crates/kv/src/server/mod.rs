//! The etcd v3 gRPC services over the replicated KV: KV, Watch, Lease, Cluster, Maintenance
//! and Lock, plus Flotilla's internal forwarding service.
//!
//! # How a request flows
//! - **Writes** (put, delete, txn, compact, lease grant/revoke/keep-alive) become a
//!   [`Command`], proposed to the KV group through the engine. At a follower the engine says
//!   `NotLeader`; the write is forwarded to the leader's client endpoint (the internal
//!   `Forward` service), which stamps lease times with its own clock and proposes it. While
//!   no leader is known, the server waits (bounded by `request_timeout`) instead of failing,
//!   so clients ride through elections.
//! - **Reads** are linearizable by default: a ReadIndex barrier (followers ask the leader),
//!   then the local replica answers. `serializable` reads skip the barrier.
//! - **Watches** are served by whichever node the client connected to, from its own replica:
//!   every apply publishes the new revision, and each watcher reads the retained events since
//!   the revision it has delivered.
//! - **Leases** expire by the leader's decision: a loop on the leader lists expired leases and
//!   proposes a revoke for each (apply stays deterministic).
//!
//! This module does I/O (clocks, tasks); the determinism bans do not apply to it, only to the
//! state machine above it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod convert;
mod services;
mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_engine::{
    AppliedEntry, ConfChangeOp, EngineError, Event, GroupId, NodeHost, NodeId, StateMachine,
};
use tokio::sync::watch as tokio_watch;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::command::{Command, Response, ResponseBody};
use crate::mvcc::Limits;
use crate::proto::etcdserverpb as pb;
use crate::proto::forward::forward_client::ForwardClient;
use crate::proto::forward::{membership_request, MembershipRequest, ProposeRequest};
use crate::state_machine::KvStateMachine;

pub use convert::{engine_status, kv_status};

/// One member of the cluster as clients see it (etcd's `Member`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id (the engine's node id).
    pub id: u64,
    /// Human name.
    pub name: String,
    /// Peer transport URLs.
    pub peer_urls: Vec<String>,
    /// Client (etcd gRPC) URLs, e.g. `http://127.0.0.1:7379`.
    pub client_urls: Vec<String>,
}

/// Configuration of the KV server on one node. Every bound is explicit.
#[derive(Clone, Debug)]
pub struct KvServerConfig {
    /// The KV's Raft group.
    pub group: GroupId,
    /// Reported in every response header.
    pub cluster_id: u64,
    /// The static cluster (this node included): the initial voters, and the client URLs
    /// writes are forwarded to.
    pub members: Vec<MemberInfo>,
    /// State machine bounds (key, value, txn sizes, lease TTL).
    pub limits: Limits,
    /// How long one request may wait for a leader, a commit or a read barrier.
    pub request_timeout: Duration,
    /// How often the leader looks for expired leases (and for compaction work).
    pub lease_check_interval: Duration,
    /// The leader compacts history older than this many revisions (0: never). History is
    /// held in memory, so this bounds memory.
    pub compaction_retention_revisions: i64,
    /// How often a watch with `progress_notify` gets a progress response when idle.
    pub watch_progress_interval: Duration,
    /// Largest gRPC request accepted (bytes).
    pub max_request_bytes: usize,
    /// Most watchers on one watch stream.
    pub max_watchers_per_stream: usize,
}

impl Default for KvServerConfig {
    fn default() -> Self {
        KvServerConfig {
            group: 1,
            cluster_id: 0,
            members: Vec::new(),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(500),
            compaction_retention_revisions: 100_000,
            watch_progress_interval: Duration::from_secs(600),
            max_request_bytes: (1 << 20) + (512 << 10),
            max_watchers_per_stream: 1024,
        }
    }
}

/// Requests served, by method and gRPC code (for metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCount {
    /// The gRPC method, e.g. `Range`.
    pub method: &'static str,
    /// The gRPC code name, e.g. `Ok`, `Unavailable`.
    pub code: &'static str,
    /// How many.
    pub count: u64,
}

/// The replica's state shared between the apply worker (writer) and the services (readers).
pub(crate) struct Replica {
    pub(crate) sm: RwLock<KvStateMachine>,
    /// The revision the replica has applied up to; watchers wait on it.
    pub(crate) revision: tokio_watch::Sender<i64>,
}

/// The engine's view of the replica: applies entries and publishes the new revision.
struct ReplicaStateMachine(Arc<Replica>);

impl StateMachine for ReplicaStateMachine {
    fn apply(&mut self, entries: &[AppliedEntry]) -> Vec<Bytes> {
        let (out, revision) = {
            let mut sm = self.0.sm.write().expect("kv lock");
            let out = sm.apply(entries);
            (out, sm.store().current_revision())
        };
        self.0.revision.send_replace(revision);
        out
    }

    fn snapshot(&self) -> Bytes {
        self.0.sm.read().expect("kv lock").snapshot()
    }

    fn restore(&mut self, data: &Bytes) {
        let revision = {
            let mut sm = self.0.sm.write().expect("kv lock");
            sm.restore(data);
            sm.store().current_revision()
        };
        self.0.revision.send_replace(revision);
    }
}

/// The etcd-compatible KV server of one node.
pub struct KvServer {
    pub(crate) host: Arc<NodeHost>,
    pub(crate) cfg: KvServerConfig,
    pub(crate) replica: Arc<Replica>,
    pub(crate) term: AtomicU64,
    stats: Mutex<BTreeMap<(&'static str, i32), u64>>,
    forward_clients: Mutex<BTreeMap<NodeId, ForwardClient<Channel>>>,
    stopped: AtomicBool,
    /// Flips to true on shutdown: long-lived streams (watches) end so clients move on.
    pub(crate) shutdown_signal: tokio_watch::Sender<bool>,
    /// When this node last became the KV group's leader (lease expiry grace).
    leader_since: Mutex<Option<Instant>>,
}

/// Milliseconds since the Unix epoch: lease times are stamped with the leader's wall clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl KvServer {
    /// Starts this node's replica of the KV group (a new group with `cfg.members` as voters,
    /// or the existing one from disk) and the leader's lease/compaction loop.
    pub async fn start(
        host: Arc<NodeHost>,
        cfg: KvServerConfig,
    ) -> Result<Arc<KvServer>, EngineError> {
        let (revision, _) = tokio_watch::channel(1);
        let replica = Arc::new(Replica {
            sm: RwLock::new(KvStateMachine::new(cfg.limits.clone())),
            revision,
        });
        let members: Vec<NodeId> = cfg.members.iter().map(|m| m.id).collect();
        let events = host.subscribe();
        host.start_group(
            cfg.group,
            Some(members),
            Box::new(ReplicaStateMachine(replica.clone())),
        )
        .await?;
        let server = Arc::new(KvServer {
            host,
            cfg,
            replica,
            term: AtomicU64::new(0),
            stats: Mutex::new(BTreeMap::new()),
            forward_clients: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
            shutdown_signal: tokio_watch::channel(false).0,
            leader_since: Mutex::new(None),
        });
        tokio::spawn(track_leadership(Arc::downgrade(&server), events));
        tokio::spawn(leader_loop(Arc::downgrade(&server)));
        Ok(server)
    }

    /// Serves the etcd gRPC services (and the internal forwarding service) on `listener`
    /// until `shutdown` resolves; in-flight requests finish first.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        use tokio_stream::StreamExt;
        // With a caller-supplied listener tonic does not apply its own TCP_NODELAY: set it on
        // each accepted connection (without it, small responses wait ~40 ms on delayed ACKs).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        });
        services::router(self)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    /// The KV group.
    pub fn group(&self) -> GroupId {
        self.cfg.group
    }

    /// The revision this replica has applied.
    pub fn current_revision(&self) -> i64 {
        *self.replica.revision.borrow()
    }

    /// The node host under this server.
    pub fn host(&self) -> &Arc<NodeHost> {
        &self.host
    }

    /// Requests served so far, by method and code.
    pub fn request_stats(&self) -> Vec<RequestCount> {
        let stats = self.stats.lock().expect("stats lock");
        stats
            .iter()
            .map(|(&(method, code), &count)| RequestCount {
                method,
                code: code_name(Code::from(code)),
                count,
            })
            .collect()
    }

    /// Stops the background loops (the node host is the caller's to shut down).
    /// Open watch streams end (clients reconnect elsewhere).
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.shutdown_signal.send_replace(true);
    }

    pub(crate) fn record(&self, method: &'static str, code: Code) {
        *self
            .stats
            .lock()
            .expect("stats lock")
            .entry((method, code as i32))
            .or_insert(0) += 1;
    }

    /// The header of a response reflecting `revision`.
    pub(crate) fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cfg.cluster_id,
            member_id: self.host.node_id(),
            revision,
            raft_term: self.term.load(Ordering::Relaxed),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    /// Waits (bounded by `deadline`) until some leader is known; returns it.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId, Status> {
        loop {
            if let Some(l) = self.host.leader(self.cfg.group) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable("etcdserver: no leader"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Linearizable read barrier: once it returns, the local replica reflects every write
    /// committed before the call.
    pub(crate) async fn read_barrier(&self) -> Result<(), Status> {
        let deadline = self.deadline();
        loop {
            self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.host.read_index(self.cfg.group)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if e.is_retriable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(e)) => return Err(engine_status(&e)),
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
            }
        }
    }

    /// Proposes `cmd` (here if this node leads, else at the leader) and decodes the result.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<(i64, ResponseBody), Status> {
        let encoded = self.propose_anywhere(cmd).await?;
        let resp = Response::decode(&encoded)
            .map_err(|e| Status::internal(format!("etcdserver: bad response: {e}")))?;
        match resp.result {
            Ok(body) => Ok((resp.revision, body)),
            Err(e) => Err(kv_status(&e)),
        }
    }

    async fn propose_anywhere(&self, cmd: Command) -> Result<Bytes, Status> {
        let deadline = self.deadline();
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let result = if leader == self.host.node_id() {
                self.propose_local(cmd.clone(), deadline).await
            } else {
                self.forward_propose(leader, &cmd, deadline).await
            };
            match result {
                Ok(b) => return Ok(b),
                // Not the leader any more, or the entry was dropped by a leader change
                // before it committed (so it did not apply): try again at the new leader.
                Err(Retry::Again(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(Retry::Again(s)) | Err(Retry::Fail(s)) => return Err(s),
            }
        }
    }

    /// Proposes at this node, stamping lease times with this node's clock.
    pub(crate) async fn propose_local(
        &self,
        mut cmd: Command,
        deadline: Instant,
    ) -> Result<Bytes, Retry> {
        match &mut cmd {
            Command::LeaseGrant { now_ms: t, .. } | Command::LeaseKeepAlive { now_ms: t, .. } => {
                *t = now_ms()
            }
            _ => {}
        }
        let data = Bytes::from(cmd.encode());
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.host.propose(self.cfg.group, data)).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e @ (EngineError::NotLeader { .. } | EngineError::Dropped(_)))) => {
                Err(Retry::Again(engine_status(&e)))
            }
            Ok(Err(e)) => Err(Retry::Fail(engine_status(&e))),
            Err(_) => Err(Retry::Fail(Status::unavailable(
                "etcdserver: request timed out",
            ))),
        }
    }

    pub(crate) fn forward_client(&self, to: NodeId) -> Result<ForwardClient<Channel>, Status> {
        let mut clients = self.forward_clients.lock().expect("forward lock");
        if let Some(c) = clients.get(&to) {
            return Ok(c.clone());
        }
        let member = self
            .cfg
            .members
            .iter()
            .find(|m| m.id == to)
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "etcdserver: leader {to:#x} has no known client URL"
                ))
            })?;
        let url = member.client_urls.first().ok_or_else(|| {
            Status::unavailable(format!("etcdserver: leader {to:#x} has no client URL"))
        })?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| Status::internal(format!("bad client URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let client = ForwardClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        clients.insert(to, client.clone());
        Ok(client)
    }

    async fn forward_propose(
        &self,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Bytes, Retry> {
        let mut client = self.forward_client(leader).map_err(Retry::Fail)?;
        let mut req = tonic::Request::new(ProposeRequest {
            command: cmd.encode(),
        });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match client.propose(req).await {
            Ok(r) => Ok(Bytes::from(r.into_inner().response)),
            Err(s) => Err(classify_forward_error(s)),
        }
    }

    /// Runs a membership change at the leader.
    pub(crate) async fn change_membership(&self, op: ConfChangeOp) -> Result<(), Status> {
        let deadline = self.deadline();
        let leader = self.wait_for_leader(deadline).await?;
        if leader == self.host.node_id() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            return match tokio::time::timeout(
                remaining,
                self.host.change_membership(self.cfg.group, vec![op]),
            )
            .await
            {
                Ok(r) => r.map_err(|e| engine_status(&e)),
                Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
            };
        }
        let (op, node) = match op {
            ConfChangeOp::AddVoter(n) => (membership_request::Op::AddVoter, n),
            ConfChangeOp::AddLearner(n) => (membership_request::Op::AddLearner, n),
            ConfChangeOp::Remove(n) => (membership_request::Op::Remove, n),
        };
        let mut client = self.forward_client(leader)?;
        let mut req = tonic::Request::new(MembershipRequest {
            op: op as i32,
            node,
        });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        client.change_membership(req).await.map(|_| ())
    }

    /// Starts a leadership transfer at the leader.
    pub(crate) async fn transfer_leader(&self, to: NodeId) -> Result<(), Status> {
        let deadline = self.deadline();
        let leader = self.wait_for_leader(deadline).await?;
        if leader == self.host.node_id() {
            return self
                .host
                .transfer_leader(self.cfg.group, to)
                .await
                .map_err(|e| engine_status(&e));
        }
        let mut client = self.forward_client(leader)?;
        client
            .transfer_leader(crate::proto::forward::TransferRequest { target: to })
            .await
            .map(|_| ())
    }

    /// Waits (bounded by the request timeout) until the local replica has applied
    /// `revision` — after a write forwarded to the leader, so that this node's own reads
    /// (watches, lock waits) see it.
    pub(crate) async fn wait_for_revision(&self, revision: i64) -> Result<(), Status> {
        let mut applied = self.replica.revision.subscribe();
        let result = tokio::time::timeout(
            self.cfg.request_timeout,
            applied.wait_for(|&r| r >= revision),
        )
        .await
        .map(|r| r.map(|_| ()));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable("etcdserver: server stopped")),
            Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }

    fn is_leader(&self) -> bool {
        self.host.leader(self.cfg.group) == Some(self.host.node_id())
    }
}

/// Whether a failed attempt may be retried (the write certainly did not apply).
pub(crate) enum Retry {
    Again(Status),
    Fail(Status),
}

/// A forwarded write failed: `Unavailable` before the request reached the leader's state
/// machine (connection refused, not leader, leader changed) may be retried; anything else —
/// a timeout in particular, whose outcome is unknown — may not.
fn classify_forward_error(s: Status) -> Retry {
    let msg = s.message();
    let retriable = s.code() == Code::Unavailable
        && (msg.contains("not leader")
            || msg.contains("no leader")
            || msg.contains("leader changed")
            || msg.contains("error trying to connect")
            || msg.contains("tcp connect"));
    if retriable {
        Retry::Again(s)
    } else {
        Retry::Fail(s)
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Follows the KV group's term and leadership (for response headers and the lease grace).
async fn track_leadership(
    server: std::sync::Weak<KvServer>,
    mut events: tokio::sync::broadcast::Receiver<Event>,
) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let Some(server) = server.upgrade() else {
            return;
        };
        if server.stopped.load(Ordering::Acquire) {
            return;
        }
        if let Event::LeaderChanged {
            group,
            leader,
            term,
        } = ev
        {
            if group != server.cfg.group {
                continue;
            }
            server.term.store(term, Ordering::Relaxed);
            let mut since = server.leader_since.lock().expect("leader lock");
            *since = (leader == Some(server.host.node_id())).then(Instant::now);
        }
    }
}

/// On the leader: revokes expired leases and compacts old history.
async fn leader_loop(server: std::sync::Weak<KvServer>) {
    let interval = match server.upgrade() {
        Some(s) => s.cfg.lease_check_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        if server.stopped.load(Ordering::Acquire) {
            return;
        }
        if !server.is_leader() {
            continue;
        }
        server.revoke_expired_leases().await;
        server.compact_old_history().await;
    }
}

impl KvServer {
    /// Proposes a revoke for each lease past its expiry. A lease is given at least one full
    /// TTL from the moment this node became leader: the previous leader's keep-alives may
    /// not have reached us, and etcd's leader likewise renews every lease on promotion.
    async fn revoke_expired_leases(&self) {
        const MAX_REVOKES_PER_ROUND: usize = 256;
        let since = *self.leader_since.lock().expect("leader lock");
        let Some(since) = since else { return };
        let now = now_ms();
        let leader_for_ms = since.elapsed().as_millis() as i64;
        let expired: Vec<i64> = {
            let sm = self.replica.sm.read().expect("kv lock");
            let leases = sm.store().leases();
            leases
                .expired(now, MAX_REVOKES_PER_ROUND)
                .into_iter()
                .filter(|id| {
                    leases
                        .get(*id)
                        .is_some_and(|l| leader_for_ms >= l.ttl_secs.saturating_mul(1000))
                })
                .collect()
        };
        for id in expired {
            let deadline = self.deadline();
            match self
                .propose_local(Command::LeaseRevoke { id }, deadline)
                .await
            {
                Ok(_) => tracing::debug!(lease = id, "revoked expired lease"),
                Err(Retry::Again(s)) | Err(Retry::Fail(s)) => {
                    tracing::debug!(lease = id, error = %s, "lease revoke failed; will retry");
                    return;
                }
            }
        }
    }

    /// Keeps the in-memory history bounded: compacts to `current - retention` once it is
    /// 10% past the bound (so compaction runs in steps, not on every write).
    async fn compact_old_history(&self) {
        let retention = self.cfg.compaction_retention_revisions;
        if retention <= 0 {
            return;
        }
        let (current, compacted) = {
            let sm = self.replica.sm.read().expect("kv lock");
            (sm.store().current_revision(), sm.store().compact_revision())
        };
        if current - compacted <= retention + retention / 10 {
            return;
        }
        let revision = current - retention;
        let deadline = self.deadline();
        if let Err(Retry::Again(s) | Retry::Fail(s)) = self
            .propose_local(Command::Compact { revision }, deadline)
            .await
        {
            tracing::debug!(revision, error = %s, "auto-compaction failed; will retry");
        }
    }
}
