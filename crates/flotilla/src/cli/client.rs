//! The failover client: every call goes through [`Client::call`], which tries the endpoints in
//! order starting at the last one that answered, moves on at once when an endpoint is
//! unreachable, and backs off (capped, exponential) only after a full pass has failed — until
//! the total retry deadline. Errors the server meant (InvalidArgument, NotFound, …) come back
//! at once: retrying them elsewhere would give the same answer.
//!
//! Retrying `Unavailable`/`DeadlineExceeded` is only safe because every write the CLI sends is
//! either idempotent in effect (put of a fixed value, delete, revoke) or guarded by a compare
//! (the lock's `create_revision == 0` txn); a retried put may add one extra revision.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_kv::proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
    WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Upper bound on attempts of one call, whatever the deadline: keeps the retry loop bounded
/// even with a huge `--retry-timeout` and endpoints that fail instantly.
const MAX_ATTEMPTS: usize = 1_000;

/// How many causes of a transport error are appended to its message.
const ERROR_SOURCES_MAX: usize = 4;

/// Requests buffered towards a watch stream; the CLI sends one create and nothing else.
const WATCH_REQUESTS_MAX: usize = 4;

/// An open watch: see [`Client::watch`].
pub struct WatchStream {
    /// Keeps the request side open; dropping it may end the watch.
    pub requests: mpsc::Sender<WatchRequest>,
    /// The server's `created` response (its header revision is "now").
    pub created: WatchResponse,
    /// The events.
    pub responses: Streaming<WatchResponse>,
}

/// A gRPC error as the CLI prints it: `<code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The gRPC status code.
    pub code: Code,
    /// The server's (or transport's) message.
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// True when the key or revision asked for has been compacted away.
    pub fn is_compacted(&self) -> bool {
        self.code == Code::OutOfRange && self.message.contains("compacted")
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

impl From<Status> for RpcError {
    fn from(status: Status) -> Self {
        // Transport errors keep the cause ("connection refused") in the source chain only.
        let mut message = status.message().to_string();
        let mut source = std::error::Error::source(&status);
        for _ in 0..ERROR_SOURCES_MAX {
            let Some(cause) = source else { break };
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        RpcError::new(status.code(), message)
    }
}

/// True for errors that say "this endpoint cannot answer now", not "the answer is no".
pub fn is_retriable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Timeouts and backoff of [`Client::call`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Deadline of one attempt against one endpoint.
    pub request_timeout: Duration,
    /// Deadline of the whole call, all attempts and backoff included.
    pub total_timeout: Duration,
    /// Sleep after the first full pass over the endpoints failed; doubles per pass.
    pub backoff_initial: Duration,
    /// Cap of the doubling sleep.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The policy for a per-request timeout and a total deadline, with 50 ms → 1 s backoff.
    pub fn new(request_timeout: Duration, total_timeout: Duration) -> Self {
        RetryPolicy {
            request_timeout,
            total_timeout,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// A cheap-to-clone handle over a list of endpoints, remembering the last one that answered.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    /// One lazily connected channel per endpoint, same order as `endpoints`.
    channels: Vec<Channel>,
    /// Index of the endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    policy: RetryPolicy,
}

/// Turns `host:port` into a URI tonic can dial; full `http(s)://` URLs pass through.
pub fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// A client over `endpoints` (non-empty). Channels connect on first use.
    pub fn new(endpoints: &[String], policy: RetryPolicy) -> anyhow::Result<Self> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
        let channels = endpoints
            .iter()
            .map(|e| {
                let endpoint = Endpoint::from_shared(endpoint_uri(e))
                    .map_err(|err| anyhow::anyhow!("bad endpoint {e:?}: {err}"))?
                    .connect_timeout(policy.request_timeout)
                    .tcp_nodelay(true);
                Ok(endpoint.connect_lazy())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                channels,
                preferred: AtomicUsize::new(0),
                policy,
            }),
        })
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The per-attempt timeout.
    pub fn request_timeout(&self) -> Duration {
        self.inner.policy.request_timeout
    }

    /// Runs `attempt` against one endpoint (by index) once, with the per-request timeout and
    /// no failover: for commands that address each member on purpose (status, move-leader).
    pub async fn call_at<T, F, Fut>(&self, index: usize, attempt: F) -> Result<T, RpcError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        assert!(
            index < self.inner.channels.len(),
            "endpoint index out of range"
        );
        let timeout = self.inner.policy.request_timeout;
        match tokio::time::timeout(timeout, attempt(self.inner.channels[index].clone())).await {
            Ok(result) => result.map_err(RpcError::from),
            Err(_) => Err(RpcError::new(
                Code::DeadlineExceeded,
                format!("no answer within {timeout:?}"),
            )),
        }
    }

    /// Runs `attempt` with failover (see the module docs). `attempt` is called once per try
    /// with that endpoint's channel, so it must rebuild its request each time.
    pub async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, RpcError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_indexed(|_, channel| attempt(channel)).await
    }

    /// [`Client::call`], telling `attempt` which endpoint (by index) it is talking to.
    async fn call_indexed<T, F, Fut>(&self, mut attempt: F) -> Result<T, RpcError>
    where
        F: FnMut(usize, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let policy = self.inner.policy;
        let count = self.inner.channels.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % count;
        let deadline = Instant::now() + policy.total_timeout;
        let mut backoff = policy.backoff_initial;
        let mut failures: Vec<String> = Vec::new();
        for n in 0..MAX_ATTEMPTS {
            if n > 0 && n % count == 0 {
                // A full pass failed: wait before the next one, but never past the deadline.
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(policy.backoff_max);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let index = (start + n) % count;
            let timeout = policy.request_timeout.min(remaining);
            let channel = self.inner.channels[index].clone();
            let error = match tokio::time::timeout(timeout, attempt(index, channel)).await {
                Ok(Ok(value)) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(status)) => RpcError::from(status),
                Err(_) => RpcError::new(
                    Code::DeadlineExceeded,
                    format!("no answer within {timeout:?}"),
                ),
            };
            if !is_retriable(error.code) {
                return Err(error);
            }
            let failure = format!("{}: {error}", self.inner.endpoints[index]);
            // Keep one line per endpoint: the latest failure of each says enough.
            if failures.len() < count {
                failures.push(failure);
            } else {
                failures[n % count] = failure;
            }
        }
        Err(RpcError::new(
            Code::Unavailable,
            format!(
                "no endpoint answered within {:?} ({})",
                policy.total_timeout,
                failures.join("; ")
            ),
        ))
    }

    // --- KV -------------------------------------------------------------------------------

    /// KV.Range with failover.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, RpcError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(KvClient::new(ch).range(req).await?.into_inner()) }
        })
        .await
    }

    /// KV.Put with failover.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, RpcError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(KvClient::new(ch).put(req).await?.into_inner()) }
        })
        .await
    }

    /// KV.DeleteRange with failover.
    pub async fn delete(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, RpcError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(KvClient::new(ch).delete_range(req).await?.into_inner()) }
        })
        .await
    }

    /// KV.Txn with failover.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, RpcError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(KvClient::new(ch).txn(req).await?.into_inner()) }
        })
        .await
    }

    /// KV.Compact with failover.
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, RpcError> {
        self.call(|ch| async move { Ok(KvClient::new(ch).compact(req).await?.into_inner()) })
            .await
    }

    // --- Watch ----------------------------------------------------------------------------

    /// Opens a watch stream with failover: sends `create` and waits for the server's
    /// `created` answer before returning it with the stream. The sender must be kept alive as
    /// long as the stream is read.
    pub async fn watch(&self, create: WatchRequest) -> Result<WatchStream, RpcError> {
        self.call(|ch| {
            let create = create.clone();
            async move {
                let (tx, rx) = mpsc::channel(WATCH_REQUESTS_MAX);
                tx.send(create)
                    .await
                    .map_err(|_| Status::internal("watch request channel closed"))?;
                let mut stream = WatchClient::new(ch)
                    .watch(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                match stream.message().await? {
                    Some(resp) if resp.created => {
                        if resp.canceled {
                            return Err(watch_cancel_status(&resp));
                        }
                        Ok(WatchStream {
                            requests: tx,
                            created: resp,
                            responses: stream,
                        })
                    }
                    Some(_) => Err(Status::internal("watch answered before it was created")),
                    None => Err(Status::unavailable("watch stream closed before created")),
                }
            }
        })
        .await
    }

    // --- Lease ----------------------------------------------------------------------------

    /// Lease.LeaseGrant with failover.
    pub async fn lease_grant(&self, ttl_s: i64, id: i64) -> Result<LeaseGrantResponse, RpcError> {
        let resp = self
            .call(|ch| async move {
                let req = LeaseGrantRequest { ttl: ttl_s, id };
                Ok(LeaseClient::new(ch).lease_grant(req).await?.into_inner())
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(RpcError::new(Code::Unknown, resp.error));
        }
        Ok(resp)
    }

    /// Lease.LeaseRevoke with failover.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, RpcError> {
        self.call(|ch| async move {
            let req = LeaseRevokeRequest { id };
            Ok(LeaseClient::new(ch).lease_revoke(req).await?.into_inner())
        })
        .await
    }

    /// Lease.LeaseTimeToLive with failover.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, RpcError> {
        self.call(|ch| async move {
            let req = LeaseTimeToLiveRequest { id, keys };
            Ok(LeaseClient::new(ch)
                .lease_time_to_live(req)
                .await?
                .into_inner())
        })
        .await
    }

    /// Lease.LeaseLeases with failover.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, RpcError> {
        self.call(|ch| async move {
            Ok(LeaseClient::new(ch)
                .lease_leases(LeaseLeasesRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// One keep-alive round trip (a short-lived LeaseKeepAlive stream), with failover.
    /// A response TTL of 0 or less means the lease has expired or was revoked.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, RpcError> {
        self.call(|ch| async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| Status::internal("keep-alive request channel closed"))?;
            let mut stream = LeaseClient::new(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            let resp = stream
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("keep-alive stream closed without answer"))?;
            drop(tx);
            Ok(resp)
        })
        .await
    }

    // --- Cluster and maintenance ----------------------------------------------------------

    /// Cluster.MemberList with failover.
    pub async fn member_list(&self) -> Result<MemberListResponse, RpcError> {
        self.call(|ch| async move {
            let req = MemberListRequest {
                linearizable: false,
            };
            Ok(ClusterClient::new(ch).member_list(req).await?.into_inner())
        })
        .await
    }

    /// Cluster.MemberAdd with failover.
    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse, RpcError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(ClusterClient::new(ch).member_add(req).await?.into_inner()) }
        })
        .await
    }

    /// Cluster.MemberRemove with failover.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse, RpcError> {
        self.call(|ch| async move {
            let req = MemberRemoveRequest { id };
            Ok(ClusterClient::new(ch)
                .member_remove(req)
                .await?
                .into_inner())
        })
        .await
    }

    /// Cluster.MemberPromote with failover.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, RpcError> {
        self.call(|ch| async move {
            let req = MemberPromoteRequest { id };
            Ok(ClusterClient::new(ch)
                .member_promote(req)
                .await?
                .into_inner())
        })
        .await
    }

    /// Maintenance.Status of the endpoint at `index`, no failover.
    pub async fn status_at(&self, index: usize) -> Result<StatusResponse, RpcError> {
        self.call_at(index, |ch| async move {
            Ok(MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Maintenance.MoveLeader sent to the endpoint at `index` (must be the leader), no failover.
    pub async fn move_leader_at(
        &self,
        index: usize,
        target_id: u64,
    ) -> Result<MoveLeaderResponse, RpcError> {
        self.call_at(index, |ch| async move {
            let req = MoveLeaderRequest { target_id };
            Ok(MaintenanceClient::new(ch)
                .move_leader(req)
                .await?
                .into_inner())
        })
        .await
    }
}

/// The status a canceled watch response stands for (compaction or a server-side reason).
pub fn watch_cancel_status(resp: &WatchResponse) -> Status {
    if resp.compact_revision > 0 {
        Status::out_of_range(format!(
            "watch canceled: required revision has been compacted (compact revision {})",
            resp.compact_revision
        ))
    } else if resp.cancel_reason.is_empty() {
        Status::cancelled("watch canceled by the server")
    } else {
        Status::cancelled(format!("watch canceled: {}", resp.cancel_reason))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn client(endpoint_count: usize, policy: RetryPolicy) -> Client {
        let endpoints: Vec<String> = (1..=endpoint_count)
            .map(|i| format!("127.0.0.1:{i}"))
            .collect();
        Client::new(&endpoints, policy).expect("client")
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Runs one call where endpoint `i` answers `answer(i)`; returns the result and the
    /// endpoints tried, in order.
    async fn call_with(
        client: &Client,
        answer: impl Fn(usize) -> Result<usize, Status>,
    ) -> (Result<usize, RpcError>, Vec<usize>) {
        let tried = Mutex::new(Vec::new());
        let result = client
            .call_indexed(|index, _| {
                tried.lock().unwrap().push(index);
                let result = answer(index);
                async move { result }
            })
            .await;
        (result, tried.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_endpoint_is_skipped_and_the_answering_one_is_remembered() {
        let client = client(3, policy());
        let answer = |i| match i {
            0 => Err(Status::unavailable("connection refused")),
            i => Ok(i),
        };
        let (result, tried) = call_with(&client, answer).await;
        assert_eq!(result, Ok(1));
        assert_eq!(tried, [0, 1]);
        // The next call starts where the last one succeeded.
        let (result, tried) = call_with(&client, answer).await;
        assert_eq!(result, Ok(1));
        assert_eq!(tried, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_are_returned_without_trying_other_endpoints() {
        let client = client(3, policy());
        let (result, tried) =
            call_with(&client, |_| Err(Status::invalid_argument("bad key"))).await;
        let error = result.unwrap_err();
        assert_eq!(error.code, Code::InvalidArgument);
        assert_eq!(error.to_string(), "InvalidArgument: bad key");
        assert_eq!(tried, [0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_endpoint_times_out_and_the_next_one_is_tried() {
        let client = client(2, policy());
        let started = Instant::now();
        let result = client
            .call_indexed(|index, _| async move {
                if index == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok(index)
            })
            .await;
        assert_eq!(result, Ok(1));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn all_unavailable_backs_off_and_gives_up_at_the_total_deadline() {
        let client = client(2, policy());
        let started = Instant::now();
        let (result, tried) =
            call_with(&client, |_| Err(Status::unavailable("connection refused"))).await;
        let error = result.unwrap_err();
        assert_eq!(error.code, Code::Unavailable);
        assert!(error
            .message
            .contains("127.0.0.1:1: Unavailable: connection refused"));
        assert!(error
            .message
            .contains("127.0.0.1:2: Unavailable: connection refused"));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Passes of 2 attempts separated by 50, 100, 200, 400, 800 ms, then 1 s sleeps:
        // 50+100+200+400+800+1000+1000+1000 = 4550 ms, then 450 ms of the ninth sleep.
        assert_eq!(tried.len(), 18);
        assert!(tried.chunks(2).all(|pass| pass == [0, 1]));
    }
}
