//! [`NodeHost`]: many Raft groups in one process.
//!
//! One consensus thread owns every group's `RawNode`. It waits for input (API commands,
//! inbound message batches, the tick timer), feeds all of it to the groups, then handles the
//! resulting `Ready`s of all groups together: one durable `persist` for the whole batch
//! (group commit), then one network send per destination node carrying messages of many
//! groups, then committed entries go to the apply workers. Async API calls talk to the
//! thread over channels and await a oneshot answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use flotilla_raft::{
    ConfChangeOp, ConfState, Config, EntryKind, HardState, Index, Message, MessageBody, NodeId,
    RawNode, Role, Snapshot, SnapshotMeta, Status, Storage, Term, NO_NODE,
};
use tokio::sync::{broadcast, oneshot, Semaphore};

use crate::apply::{ApplyTask, Reply, Worker};
use crate::codec::{Envelope, GroupId, SnapshotAck, SnapshotChunk, StreamMsg};
use crate::error::{EngineError, Result};
use crate::network::PeerNetwork;
use crate::state_machine::StateMachine;
use crate::storage::{GroupLog, GroupWriteBatch, LogBackend};

mod stream;

/// Node host configuration. Every bound is explicit.
#[derive(Clone, Debug)]
pub struct NodeHostConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub node_id: NodeId,
    /// Wall-clock length of one Raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Campaign with a pre-vote round.
    pub pre_vote: bool,
    /// Leaders step down without a quorum; voters honour leader leases.
    pub check_quorum: bool,
    /// Take a state-machine snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Largest accepted proposal.
    pub max_proposal_bytes: usize,
    /// Most API requests in flight at once (callers wait for a slot).
    pub max_pending_requests: usize,
    /// Most inbound message batches queued for the consensus thread (excess is dropped and
    /// counted; Raft retransmits).
    pub max_inbound_batches: usize,
    /// Most bytes in one append message.
    pub max_msg_bytes: u64,
    /// Most append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Most uncommitted bytes per group at its leader.
    pub max_uncommitted_bytes: u64,
    /// Apply worker threads.
    pub apply_workers: usize,
    /// A group with no activity (proposals, entries, votes, membership changes) for this many
    /// ticks stops ticking — its leader sends no heartbeats, its followers start no elections —
    /// until any message or request for it arrives. 0 disables quiescing. The price: a
    /// quiesced group notices a dead leader only once something wakes it.
    pub quiesce_after_ticks: u32,
    /// A snapshot whose image is larger than this is streamed in chunks of at most this many
    /// bytes (each in its own frame: keep it below the transport's frame limit); smaller
    /// ones travel whole in one message.
    pub snapshot_chunk_bytes: usize,
    /// Most unacknowledged chunks in flight per outgoing snapshot stream.
    pub max_inflight_snapshot_chunks: usize,
    /// An outgoing stream with no acknowledged progress for this long is abandoned (Raft is
    /// told the snapshot failed and will try again).
    pub snapshot_stream_timeout: Duration,
    /// An outgoing stream that sent chunks and heard no ack for this many ticks re-sends from
    /// the receiver's last acknowledged offset.
    pub snapshot_retransmit_ticks: u32,
    /// Most concurrent outgoing snapshot streams, and separately most incoming ones being
    /// reassembled. Excess outgoing snapshots fail at once (Raft retries later); excess
    /// incoming streams are refused.
    pub max_snapshot_streams: usize,
    /// Largest snapshot image this node accepts from a stream; larger ones are refused
    /// with an error log (reassembly buffers at most this much per incoming stream).
    pub max_snapshot_bytes: u64,
}

impl NodeHostConfig {
    /// Defaults for a node with id `node_id`: 100 ms ticks, elections after 1–2 s.
    pub fn new(node_id: NodeId) -> Self {
        NodeHostConfig {
            node_id,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            snapshot_interval_entries: 10_000,
            max_proposal_bytes: 1 << 20,
            max_pending_requests: 65_536,
            max_inbound_batches: 4_096,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            apply_workers: 2,
            quiesce_after_ticks: 100,
            snapshot_chunk_bytes: 256 << 10,
            max_inflight_snapshot_chunks: 4,
            snapshot_stream_timeout: Duration::from_secs(10),
            snapshot_retransmit_ticks: 3,
            max_snapshot_streams: 8,
            max_snapshot_bytes: 1 << 30,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(EngineError::InvalidConfig(why.to_string()));
        if self.node_id == NO_NODE {
            return bad("node_id must be non-zero");
        }
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be positive");
        }
        if self.apply_workers == 0
            || self.max_pending_requests == 0
            || self.max_inbound_batches == 0
        {
            return bad("apply_workers, max_pending_requests, max_inbound_batches must be >= 1");
        }
        if self.snapshot_interval_entries == 0 {
            return bad("snapshot_interval_entries must be >= 1");
        }
        if self.snapshot_chunk_bytes == 0
            || self.max_inflight_snapshot_chunks == 0
            || self.snapshot_retransmit_ticks == 0
            || self.max_snapshot_streams == 0
        {
            return bad(
                "snapshot_chunk_bytes, max_inflight_snapshot_chunks, snapshot_retransmit_ticks, \
                 max_snapshot_streams must be >= 1",
            );
        }
        if self.snapshot_stream_timeout.is_zero() {
            return bad("snapshot_stream_timeout must be positive");
        }
        Ok(())
    }
}

/// Something that happened to a group on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The known leader changed (`None`: no leader known).
    LeaderChanged {
        /// The group.
        group: GroupId,
        /// New leader.
        leader: Option<NodeId>,
        /// Term.
        term: Term,
    },
    /// This replica's role changed.
    RoleChanged {
        /// The group.
        group: GroupId,
        /// New role.
        role: Role,
    },
    /// A membership change was applied.
    MembershipChanged {
        /// The group.
        group: GroupId,
        /// The configuration now in force.
        conf: ConfState,
    },
    /// The state machine applied up to `index`.
    Applied {
        /// The group.
        group: GroupId,
        /// Applied index.
        index: Index,
    },
}

/// Counters of snapshot streaming on one node (see [`NodeHost::snapshot_stream_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStreamStats {
    /// Outgoing streams started.
    pub streams_started: u64,
    /// Outgoing streams the receiver acknowledged completely.
    pub streams_completed: u64,
    /// Outgoing streams abandoned (timeout, too many streams, chunk too large) or dropped
    /// (replaced by a newer snapshot, leadership lost).
    pub streams_failed: u64,
    /// Chunks handed to the network (retransmissions included).
    pub chunks_sent: u64,
    /// Bytes of snapshot data in those chunks.
    pub chunk_bytes_sent: u64,
    /// Retransmissions that resumed from a non-zero acknowledged offset.
    pub resumed_from_offset: u64,
    /// Times a stream re-sent its first chunk (a start over from offset 0).
    pub restarted_from_zero: u64,
    /// Chunks received (in order or not).
    pub chunks_received: u64,
    /// Snapshots reassembled and stepped into their group.
    pub snapshots_received: u64,
    /// Incoming streams refused (over `max_snapshot_bytes`, or too many at once).
    pub snapshots_refused: u64,
}

/// Upper bounds (inclusive, microseconds) of the proposal latency buckets in
/// [`ProposalStats`].
pub const PROPOSAL_LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// Counters of [`NodeHost::propose`] / [`NodeHost::propose_batch`] calls on one node (see
/// [`NodeHost::proposal_stats`]). A call is measured from admission to its last result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProposalStats {
    /// Entries proposed (a batch counts each entry).
    pub entries: u64,
    /// Calls whose every entry was committed and applied.
    pub succeeded: u64,
    /// Calls that failed (not leader, shutting down, too large, …).
    pub failed: u64,
    /// Calls by latency: element `i` counts calls that took at most
    /// `PROPOSAL_LATENCY_BUCKETS_US[i]` µs (and more than the previous bound); the last
    /// element counts slower ones. Not cumulative. Calls dropped before finishing (a caller's
    /// timeout) are not counted here.
    pub latency_buckets: [u64; PROPOSAL_LATENCY_BUCKETS_US.len() + 1],
    /// Total latency of the measured calls, in microseconds.
    pub latency_us_sum: u64,
}

#[derive(Default)]
struct ProposalCounters {
    entries: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    latency_buckets: [AtomicU64; PROPOSAL_LATENCY_BUCKETS_US.len() + 1],
    latency_us_sum: AtomicU64,
}

impl ProposalCounters {
    fn record(&self, ok: bool, started: Instant) {
        let us = started.elapsed().as_micros() as u64;
        bump(if ok { &self.succeeded } else { &self.failed }, 1);
        let bucket = PROPOSAL_LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(PROPOSAL_LATENCY_BUCKETS_US.len());
        bump(&self.latency_buckets[bucket], 1);
        bump(&self.latency_us_sum, us);
    }

    fn get(&self) -> ProposalStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProposalStats {
            entries: g(&self.entries),
            succeeded: g(&self.succeeded),
            failed: g(&self.failed),
            latency_buckets: std::array::from_fn(|i| g(&self.latency_buckets[i])),
            latency_us_sum: g(&self.latency_us_sum),
        }
    }
}

#[derive(Default)]
struct StreamCounters {
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_failed: AtomicU64,
    chunks_sent: AtomicU64,
    chunk_bytes_sent: AtomicU64,
    resumed_from_offset: AtomicU64,
    restarted_from_zero: AtomicU64,
    chunks_received: AtomicU64,
    snapshots_received: AtomicU64,
    snapshots_refused: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl StreamCounters {
    fn get(&self) -> SnapshotStreamStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotStreamStats {
            streams_started: g(&self.streams_started),
            streams_completed: g(&self.streams_completed),
            streams_failed: g(&self.streams_failed),
            chunks_sent: g(&self.chunks_sent),
            chunk_bytes_sent: g(&self.chunk_bytes_sent),
            resumed_from_offset: g(&self.resumed_from_offset),
            restarted_from_zero: g(&self.restarted_from_zero),
            chunks_received: g(&self.chunks_received),
            snapshots_received: g(&self.snapshots_received),
            snapshots_refused: g(&self.snapshots_refused),
        }
    }
}

/// What peers send the consensus thread.
pub(crate) enum InMsg {
    Batch(Vec<Envelope>),
    Stream(StreamMsg),
}

/// Cheap, lock-protected facts readable without a round trip to the consensus thread.
#[derive(Clone, Copy, Debug, Default)]
struct GroupInfo {
    leader: NodeId,
    term: Term,
    quiesced: bool,
}

pub(crate) enum Cmd {
    StartGroup {
        group: GroupId,
        members: Option<Vec<NodeId>>,
        sm: Box<dyn StateMachine>,
        reply: Reply<()>,
    },
    StopGroup {
        group: GroupId,
        reply: Reply<()>,
    },
    RemoveGroupData {
        group: GroupId,
        reply: Reply<()>,
    },
    Propose {
        group: GroupId,
        datas: Vec<Bytes>,
        replies: Vec<Reply<Bytes>>,
    },
    ReadIndex {
        group: GroupId,
        reply: Reply<()>,
    },
    ConfChange {
        group: GroupId,
        ops: Vec<ConfChangeOp>,
        reply: Reply<()>,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: Reply<()>,
    },
    Status {
        group: GroupId,
        reply: Reply<Status>,
    },
    SnapshotTaken {
        group: GroupId,
        index: Index,
        data: Bytes,
    },
    Shutdown,
}

pub(crate) struct NodeHostInner {
    node_id: NodeId,
    cmd_tx: Sender<Cmd>,
    inbound_tx: Sender<(NodeId, InMsg)>,
    stream_stats: Arc<StreamCounters>,
    proposal_stats: ProposalCounters,
    info: RwLock<BTreeMap<GroupId, GroupInfo>>,
    events: broadcast::Sender<Event>,
    permits: Semaphore,
    dropped_inbound: AtomicU64,
    stopped: AtomicBool,
}

impl NodeHostInner {
    /// Hands an inbound batch to the consensus thread; drops it if the queue is full.
    pub(crate) fn deliver(&self, from: NodeId, envelopes: Vec<Envelope>) {
        if self
            .inbound_tx
            .try_send((from, InMsg::Batch(envelopes)))
            .is_err()
        {
            self.dropped_inbound.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a snapshot-stream message to the consensus thread; drops it if the queue is
    /// full (the stream retransmits).
    pub(crate) fn deliver_stream(&self, from: NodeId, msg: StreamMsg) {
        if self
            .inbound_tx
            .try_send((from, InMsg::Stream(msg)))
            .is_err()
        {
            self.dropped_inbound.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send(event); // no subscribers is fine
    }
}

/// Many Raft groups in one process. See the module docs for how work flows.
pub struct NodeHost {
    inner: Arc<NodeHostInner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl NodeHost {
    /// Starts the consensus thread and apply workers. Groups are started separately.
    pub fn start(
        cfg: NodeHostConfig,
        backend: Arc<dyn LogBackend>,
        net: Arc<dyn PeerNetwork>,
    ) -> Result<NodeHost> {
        cfg.validate()?;
        let (cmd_tx, cmd_rx) = unbounded();
        let (inbound_tx, inbound_rx) = bounded(cfg.max_inbound_batches);
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(NodeHostInner {
            node_id: cfg.node_id,
            cmd_tx: cmd_tx.clone(),
            inbound_tx,
            stream_stats: Arc::new(StreamCounters::default()),
            proposal_stats: ProposalCounters::default(),
            info: RwLock::new(BTreeMap::new()),
            events,
            permits: Semaphore::new(cfg.max_pending_requests),
            dropped_inbound: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let mut workers = Vec::new();
        for i in 0..cfg.apply_workers {
            let (tx, rx) = unbounded();
            workers.push(tx);
            let w = Worker {
                rx,
                cmd_tx: cmd_tx.clone(),
                inner: inner.clone(),
                snapshot_interval: cfg.snapshot_interval_entries,
            };
            let name = format!("flotilla-apply-{}-{i}", cfg.node_id);
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || w.run())
                    .expect("spawn"),
            );
        }
        let lp = Loop {
            cfg: cfg.clone(),
            backend,
            net,
            inner: Arc::downgrade(&inner),
            groups: BTreeMap::new(),
            dirty: BTreeSet::new(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            conf_waiters: BTreeMap::new(),
            leave_waiters: BTreeMap::new(),
            next_read_id: 1,
            workers,
            info: BTreeMap::new(),
            stream_stats: inner.stream_stats.clone(),
            out_streams: BTreeMap::new(),
            in_streams: BTreeMap::new(),
            installed: BTreeMap::new(),
        };
        let name = format!("flotilla-raft-{}", cfg.node_id);
        let t = std::thread::Builder::new()
            .name(name)
            .spawn(move || lp.run(cmd_rx, inbound_rx))
            .expect("spawn");
        threads.push(t);
        Ok(NodeHost {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub(crate) fn weak_inner(&self) -> Weak<NodeHostInner> {
        Arc::downgrade(&self.inner)
    }

    /// Hands a batch received from peer `from` to the groups (called by the transport).
    pub fn deliver(&self, from: NodeId, envelopes: Vec<Envelope>) {
        self.inner.deliver(from, envelopes);
    }

    /// A handle for the transport to deliver inbound batches (see `network::pump_inbound`).
    pub fn inbound_sink(&self) -> crate::network::InboundSink {
        crate::network::InboundSink(Arc::downgrade(&self.inner))
    }

    /// Hands a snapshot-stream message received from peer `from` to the groups.
    pub fn deliver_stream(&self, from: NodeId, msg: StreamMsg) {
        self.inner.deliver_stream(from, msg);
    }

    /// Snapshot streaming counters of this node.
    pub fn snapshot_stream_stats(&self) -> SnapshotStreamStats {
        self.inner.stream_stats.get()
    }

    /// Proposal counters and latencies of this node.
    pub fn proposal_stats(&self) -> ProposalStats {
        self.inner.proposal_stats.get()
    }

    /// Inbound batches dropped because the queue was full.
    pub fn dropped_inbound(&self) -> u64 {
        self.inner.dropped_inbound.load(Ordering::Relaxed)
    }

    /// Admits one API request: refused once stopping, otherwise waits for a slot under
    /// `max_pending_requests`. The slot is held until the request completes.
    async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        self.inner
            .permits
            .acquire()
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let _permit = self.admit().await?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(make(tx))
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Starts replica of `group` here. `members`: the initial voters of a new group
    /// (ignored if this node already has data for it); `None` joins an existing group (the
    /// leader adds this node and sends it the log or a snapshot).
    pub async fn start_group(
        &self,
        group: GroupId,
        members: Option<Vec<NodeId>>,
        sm: Box<dyn StateMachine>,
    ) -> Result<()> {
        self.call(|reply| Cmd::StartGroup {
            group,
            members,
            sm,
            reply,
        })
        .await
    }

    /// Stops the replica (its data stays).
    pub async fn stop_group(&self, group: GroupId) -> Result<()> {
        self.call(|reply| Cmd::StopGroup { group, reply }).await
    }

    /// Deletes a stopped replica's data.
    pub async fn remove_group_data(&self, group: GroupId) -> Result<()> {
        self.call(|reply| Cmd::RemoveGroupData { group, reply })
            .await
    }

    /// Proposes `data`; resolves once it is committed and applied here, with the state
    /// machine's result. Only the leader accepts ([`EngineError::NotLeader`] otherwise).
    pub async fn propose(&self, group: GroupId, data: Bytes) -> Result<Bytes> {
        let mut out = self.propose_batch(group, vec![data]).await?;
        Ok(out.pop().expect("one result per proposal"))
    }

    /// Proposes several entries at once (one append); results in order.
    pub async fn propose_batch(&self, group: GroupId, datas: Vec<Bytes>) -> Result<Vec<Bytes>> {
        let started = Instant::now();
        let stats = &self.inner.proposal_stats;
        bump(&stats.entries, datas.len() as u64);
        let result = self.propose_batch_inner(group, datas).await;
        stats.record(result.is_ok(), started);
        result
    }

    async fn propose_batch_inner(&self, group: GroupId, datas: Vec<Bytes>) -> Result<Vec<Bytes>> {
        let _permit = self.admit().await?;
        let (replies, rxs): (Vec<_>, Vec<_>) = datas.iter().map(|_| oneshot::channel()).unzip();
        let cmd = Cmd::Propose {
            group,
            datas,
            replies,
        };
        self.inner
            .cmd_tx
            .send(cmd)
            .map_err(|_| EngineError::ShuttingDown)?;
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            out.push(rx.await.map_err(|_| EngineError::ShuttingDown)??);
        }
        Ok(out)
    }

    /// Like [`NodeHost::propose`] with a deadline; on expiry the outcome is unknown.
    pub async fn propose_timeout(
        &self,
        group: GroupId,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        match tokio::time::timeout(timeout, self.propose(group, data)).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Linearizable read barrier: resolves once this replica's state machine reflects every
    /// write committed before the call (ReadIndex; followers ask the leader).
    pub async fn read_index(&self, group: GroupId) -> Result<()> {
        self.call(|reply| Cmd::ReadIndex { group, reply }).await
    }

    /// The leader this node knows of.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        let info = self.inner.info.read().expect("info lock");
        info.get(&group).map(|i| i.leader).filter(|&l| l != NO_NODE)
    }

    /// True while the group is quiesced here (idle: not ticking).
    pub fn is_quiesced(&self, group: GroupId) -> bool {
        let info = self.inner.info.read().expect("info lock");
        info.get(&group).is_some_and(|i| i.quiesced)
    }

    /// Groups running here.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner
            .info
            .read()
            .expect("info lock")
            .keys()
            .copied()
            .collect()
    }

    /// Raft status of the replica.
    pub async fn status(&self, group: GroupId) -> Result<Status> {
        self.call(|reply| Cmd::Status { group, reply }).await
    }

    /// Membership change; resolves once the new configuration is in force (joint consensus
    /// entered and left).
    pub async fn change_membership(&self, group: GroupId, ops: Vec<ConfChangeOp>) -> Result<()> {
        self.call(|reply| Cmd::ConfChange { group, ops, reply })
            .await
    }

    /// Adds a voter (or promotes a learner).
    pub async fn add_voter(&self, group: GroupId, node: NodeId) -> Result<()> {
        self.change_membership(group, vec![ConfChangeOp::AddVoter(node)])
            .await
    }

    /// Adds a learner.
    pub async fn add_learner(&self, group: GroupId, node: NodeId) -> Result<()> {
        self.change_membership(group, vec![ConfChangeOp::AddLearner(node)])
            .await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, group: GroupId, node: NodeId) -> Result<()> {
        self.add_voter(group, node).await
    }

    /// Removes a member (possibly the leader itself).
    pub async fn remove(&self, group: GroupId, node: NodeId) -> Result<()> {
        self.change_membership(group, vec![ConfChangeOp::Remove(node)])
            .await
    }

    /// Starts a leadership transfer; poll [`NodeHost::leader`] for completion.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<()> {
        self.call(|reply| Cmd::TransferLeader { group, to, reply })
            .await
    }

    /// Leader, role, membership and applied-index events (a lagging subscriber misses some).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Stops every group and thread. Every write acknowledged so far is already durable.
    pub fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.inner.cmd_tx.send(Cmd::Shutdown);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for NodeHost {
    /// Dropping without `shutdown` stops processing at once (tests use it as a crash).
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Group {
    raw: RawNode<Box<dyn GroupLog>>,
    worker: usize,
    /// Configurations by the index they took effect at (to record with snapshots).
    confs: Vec<(Index, ConfState)>,
    /// Ticks since the last real activity (heartbeats do not count).
    idle_ticks: u32,
    quiesced: bool,
    /// The hard state last handed to the log backend (durable once that persist returned).
    durable_hs: HardState,
    /// A newer hard state that differs from `durable_hs` only in `commit`: written with the
    /// group's next persist, never waited for on its own (see `process_readies`).
    lazy_hs: Option<HardState>,
}

struct Loop {
    cfg: NodeHostConfig,
    backend: Arc<dyn LogBackend>,
    net: Arc<dyn PeerNetwork>,
    inner: Weak<NodeHostInner>,
    groups: BTreeMap<GroupId, Group>,
    dirty: BTreeSet<GroupId>,
    /// Proposals awaiting apply: (group, index) -> (term proposed in, reply slot, batch).
    proposals: BTreeMap<(GroupId, Index), (Term, Reply<Bytes>)>,
    reads: BTreeMap<u64, (GroupId, Reply<()>)>,
    conf_waiters: BTreeMap<(GroupId, Index), (Term, Reply<()>)>,
    leave_waiters: BTreeMap<GroupId, Vec<Reply<()>>>,
    next_read_id: u64,
    workers: Vec<Sender<ApplyTask>>,
    info: BTreeMap<GroupId, GroupInfo>,
    stream_stats: Arc<StreamCounters>,
    /// Snapshots being streamed to replicas, by (group, receiving node).
    out_streams: BTreeMap<(GroupId, NodeId), stream::OutStream>,
    /// Snapshots being reassembled, by (group, sending node).
    in_streams: BTreeMap<(GroupId, NodeId), stream::InStream>,
    /// The last snapshot each (group, sending node) streamed here completely: (index, term,
    /// length), so a retransmitted chunk of it is answered "complete" instead of "offset 0".
    installed: BTreeMap<(GroupId, NodeId), (Index, Term, u64)>,
}

impl Loop {
    fn run(mut self, cmd_rx: Receiver<Cmd>, inbound_rx: Receiver<(NodeId, InMsg)>) {
        let tick = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + tick;
        'outer: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(cmd_rx) -> cmd => match cmd {
                    Ok(Cmd::Shutdown) | Err(_) => break 'outer,
                    Ok(cmd) => self.handle(cmd),
                },
                recv(inbound_rx) -> batch => if let Ok((from, msg)) = batch {
                    self.inbound(from, msg);
                },
                default(wait) => {}
            }
            // Drain whatever else is queued so it shares this round's sync and sends.
            for _ in 0..4096 {
                match cmd_rx.try_recv() {
                    Ok(Cmd::Shutdown) => break 'outer,
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            while let Ok((from, msg)) = inbound_rx.try_recv() {
                self.inbound(from, msg);
            }
            if Instant::now() >= next_tick {
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick; // we fell behind; don't burst
                }
                self.tick_all();
                self.tick_streams(Instant::now());
            }
            for _ in 0..8 {
                if self.dirty.is_empty() {
                    break;
                }
                if let Err(e) = self.process_readies() {
                    tracing::error!(error = %e, "node host stopping: storage failed");
                    break 'outer;
                }
            }
        }
        self.fail_all();
        if let Some(inner) = self.inner.upgrade() {
            inner.stopped.store(true, Ordering::Release);
        }
    }

    fn fail_all(&mut self) {
        for (_, (_, r)) in std::mem::take(&mut self.proposals) {
            let _ = r.send(Err(EngineError::ShuttingDown));
        }
        for (_, (_, r)) in std::mem::take(&mut self.reads) {
            let _ = r.send(Err(EngineError::ShuttingDown));
        }
        for (_, (_, r)) in std::mem::take(&mut self.conf_waiters) {
            let _ = r.send(Err(EngineError::ShuttingDown));
        }
        for (_, rs) in std::mem::take(&mut self.leave_waiters) {
            for r in rs {
                let _ = r.send(Err(EngineError::ShuttingDown));
            }
        }
        self.workers.clear(); // workers exit when their channel closes
    }

    fn tick_all(&mut self) {
        let limit = self.cfg.quiesce_after_ticks;
        let mut quiesce_changed = false;
        for (&g, group) in self.groups.iter_mut() {
            if group.quiesced {
                continue;
            }
            group.raw.tick();
            self.dirty.insert(g);
            group.idle_ticks = group.idle_ticks.saturating_add(1);
            if limit > 0 && group.idle_ticks >= limit && group.raw.leader() != NO_NODE {
                // A leader quiesces only once every follower has everything.
                let caught_up = group.raw.role() != Role::Leader || {
                    let st = group.raw.status();
                    st.progress.values().all(|p| p.matched == st.last_index)
                };
                if caught_up {
                    group.quiesced = true;
                    quiesce_changed = true;
                    self.info.entry(g).or_default().quiesced = true;
                }
            }
        }
        if quiesce_changed {
            self.publish_info();
        }
    }

    /// Wakes `group` if it is quiesced; `active` also restarts its idle clock (a woken group
    /// that stays idle quiesces again once the clock reaches the threshold).
    fn wake(&mut self, group: GroupId, active: bool) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if active {
            g.idle_ticks = 0;
        }
        if g.quiesced {
            g.quiesced = false;
            if let Some(info) = self.info.get_mut(&group) {
                info.quiesced = false;
            }
            self.publish_info();
        }
    }

    fn inbound(&mut self, from: NodeId, msg: InMsg) {
        let envs = match msg {
            InMsg::Batch(envs) => envs,
            InMsg::Stream(StreamMsg::Chunk(chunk)) => return self.on_chunk(from, chunk),
            InMsg::Stream(StreamMsg::Ack(ack)) => return self.on_ack(from, ack, Instant::now()),
        };
        for env in envs {
            let heartbeat = matches!(
                env.msg.body,
                flotilla_raft::MessageBody::Heartbeat { .. }
                    | flotilla_raft::MessageBody::HeartbeatResp { .. }
            );
            // Heartbeats are stepped (and answered) even while quiesced, but do not wake the
            // group: otherwise a leader's heartbeat and its answer would wake the two sides
            // alternately forever.
            if !heartbeat {
                self.wake(env.group, true);
            }
            let Some(group) = self.groups.get_mut(&env.group) else {
                continue;
            };
            if let Err(e) = group.raw.step(env.msg) {
                tracing::warn!(group = env.group, error = %e, "step failed");
            }
            self.dirty.insert(env.group);
        }
    }

    fn raft_config(&self, group: GroupId, applied: Index) -> Config {
        Config {
            election_ticks: self.cfg.election_ticks,
            heartbeat_ticks: self.cfg.heartbeat_ticks,
            applied,
            pre_vote: self.cfg.pre_vote,
            check_quorum: self.cfg.check_quorum,
            max_msg_bytes: self.cfg.max_msg_bytes,
            max_inflight_msgs: self.cfg.max_inflight_msgs,
            max_uncommitted_bytes: self.cfg.max_uncommitted_bytes,
            // Distinct per node and group, so replicas time out at different ticks.
            seed: self.cfg.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group,
            ..Config::new(self.cfg.node_id)
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match &cmd {
            Cmd::Propose { group, .. }
            | Cmd::ReadIndex { group, .. }
            | Cmd::ConfChange { group, .. }
            | Cmd::TransferLeader { group, .. } => self.wake(*group, true),
            _ => {}
        }
        match cmd {
            Cmd::StartGroup {
                group,
                members,
                sm,
                reply,
            } => {
                let _ = reply.send(self.start_group(group, members, sm));
            }
            Cmd::StopGroup { group, reply } => {
                let res = match self.groups.remove(&group) {
                    Some(g) => {
                        self.drop_streams(group);
                        let _ = self.workers[g.worker].send(ApplyTask::Remove { group });
                        self.info.remove(&group);
                        self.publish_info();
                        self.fail_group(group);
                        Ok(())
                    }
                    None => Err(EngineError::GroupNotFound(group)),
                };
                let _ = reply.send(res);
            }
            Cmd::RemoveGroupData { group, reply } => {
                let res = if self.groups.contains_key(&group) {
                    Err(EngineError::Invalid(format!(
                        "group {group} is running; stop it first"
                    )))
                } else {
                    self.backend.remove_group(group)
                };
                let _ = reply.send(res);
            }
            Cmd::Propose {
                group,
                datas,
                replies,
            } => self.propose(group, datas, replies),
            Cmd::ReadIndex { group, reply } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    let _ = reply.send(Err(EngineError::GroupNotFound(group)));
                    return;
                };
                let id = self.next_read_id;
                self.next_read_id += 1;
                match g.raw.read_index(id) {
                    Ok(()) => {
                        self.reads.insert(id, (group, reply));
                        self.dirty.insert(group);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::from_raft(group, e)));
                    }
                }
            }
            Cmd::ConfChange { group, ops, reply } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    let _ = reply.send(Err(EngineError::GroupNotFound(group)));
                    return;
                };
                match g.raw.propose_conf_change(&ops) {
                    Ok(index) => {
                        self.conf_waiters
                            .insert((group, index), (g.raw.term(), reply));
                        self.dirty.insert(group);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::from_raft(group, e)));
                    }
                }
            }
            Cmd::TransferLeader { group, to, reply } => {
                let res = match self.groups.get_mut(&group) {
                    Some(g) => g
                        .raw
                        .transfer_leader(to)
                        .map_err(|e| EngineError::from_raft(group, e)),
                    None => Err(EngineError::GroupNotFound(group)),
                };
                self.dirty.insert(group);
                let _ = reply.send(res);
            }
            Cmd::Status { group, reply } => {
                let res = self
                    .groups
                    .get(&group)
                    .map(|g| g.raw.status())
                    .ok_or(EngineError::GroupNotFound(group));
                let _ = reply.send(res);
            }
            Cmd::SnapshotTaken { group, index, data } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                let conf = conf_at(&g.confs, index);
                if let Err(e) = g.raw.store_mut().create_snapshot(index, conf, data) {
                    tracing::warn!(group, index, error = %e, "snapshot not saved");
                }
                // Keep only the configuration history the next snapshot can need.
                if let Some(pos) = g.confs.iter().rposition(|(i, _)| *i <= index) {
                    g.confs.drain(..pos);
                }
            }
            Cmd::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn start_group(
        &mut self,
        group: GroupId,
        members: Option<Vec<NodeId>>,
        sm: Box<dyn StateMachine>,
    ) -> Result<()> {
        if self.groups.contains_key(&group) {
            return Err(EngineError::GroupExists(group));
        }
        let bootstrap = members.map(ConfState::with_voters);
        let store = self.backend.open_group(group, bootstrap.as_ref())?;
        let snap = store
            .snapshot()
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        let (durable_hs, _) = store
            .initial_state()
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        let raw = RawNode::new(self.raft_config(group, snap.meta.index), store)
            .map_err(|e| EngineError::from_raft(group, e))?;
        let worker = (group % self.workers.len() as u64) as usize;
        let task = ApplyTask::Add {
            group,
            sm,
            snapshot_index: snap.meta.index,
            snapshot: snap.data.clone(),
        };
        self.workers[worker]
            .send(task)
            .map_err(|_| EngineError::ShuttingDown)?;
        let confs = vec![(snap.meta.index, snap.meta.conf_state)];
        let group_state = Group {
            raw,
            worker,
            confs,
            idle_ticks: 0,
            quiesced: false,
            durable_hs,
            lazy_hs: None,
        };
        self.groups.insert(group, group_state);
        self.info.insert(group, GroupInfo::default());
        self.publish_info();
        self.dirty.insert(group);
        Ok(())
    }

    fn propose(&mut self, group: GroupId, datas: Vec<Bytes>, replies: Vec<Reply<Bytes>>) {
        let fail = |replies: Vec<Reply<Bytes>>, e: EngineError| {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        };
        let Some(g) = self.groups.get_mut(&group) else {
            return fail(replies, EngineError::GroupNotFound(group));
        };
        if let Some(big) = datas.iter().find(|d| d.len() > self.cfg.max_proposal_bytes) {
            let err = EngineError::TooLarge {
                bytes: big.len(),
                max: self.cfg.max_proposal_bytes,
            };
            return fail(replies, err);
        }
        if datas.is_empty() || datas.iter().any(|d| d.is_empty()) {
            return fail(replies, EngineError::Invalid("empty proposal".into()));
        }
        let n = datas.len() as u64;
        match g.raw.propose_batch(datas) {
            Ok(last) => {
                let term = g.raw.term();
                for (i, reply) in replies.into_iter().enumerate() {
                    self.proposals
                        .insert((group, last + 1 - n + i as u64), (term, reply));
                }
                self.dirty.insert(group);
            }
            Err(e) => fail(replies, EngineError::from_raft(group, e)),
        }
    }

    /// Handles the Readies of every dirty group: one persist, one send per peer, then apply.
    fn process_readies(&mut self) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut writes = Vec::new();
        let mut readies = Vec::new();
        for g in dirty {
            let Some(group) = self.groups.get_mut(&g) else {
                continue;
            };
            if !group.raw.has_ready() {
                continue;
            }
            let mut rd = group.raw.ready();
            if let Some(snap) = &rd.snapshot {
                group.raw.store_mut().apply_snapshot(snap.clone())?;
            }
            let active = !rd.entries.is_empty() || !rd.committed_entries.is_empty();
            if active || rd.soft_state.is_some() {
                group.idle_ticks = 0;
            }
            // A hard state whose term and vote are unchanged only moved `commit`, which Raft
            // treats as volatile: nothing sent this round depends on it being durable, and a
            // restart re-learns it (at least up to the snapshot; see `RaftLog::new`). So it
            // does not cost an fsync of its own — like etcd, which syncs only for entries,
            // term or vote. It rides along with the group's next write.
            let mut hard_state = None;
            if let Some(hs) = rd.hard_state {
                if hs.term != group.durable_hs.term || hs.vote != group.durable_hs.vote {
                    hard_state = Some(hs);
                } else {
                    group.lazy_hs = Some(hs);
                }
            }
            if !rd.entries.is_empty() || hard_state.is_some() {
                let hard_state = hard_state.or(group.lazy_hs);
                group.lazy_hs = None;
                if let Some(hs) = hard_state {
                    group.durable_hs = hs;
                }
                let entries = std::mem::take(&mut rd.entries);
                writes.push(GroupWriteBatch {
                    group: g,
                    entries,
                    hard_state,
                });
            }
            readies.push((g, rd));
        }
        // A leader's appends and heartbeats leave before the fsync (Raft thesis §10.2.1:
        // the leader's write overlaps the followers'); everything else waits for it.
        let mut unreachable = Vec::new();
        let (early, _) = self.outbox(&mut readies, true); // snapshots are never early
        self.send_outbox(early, &mut unreachable);
        if !writes.is_empty() {
            self.backend.persist(writes)?;
        }
        // Everything the remaining messages depend on is durable now.
        let (late, big_snapshots) = self.outbox(&mut readies, false);
        self.send_outbox(late, &mut unreachable);
        let mut info_changed = false;
        for (g, rd) in readies {
            info_changed |= self.after_ready(g, rd);
        }
        // Only after `advance`: the core takes no input between `ready` and `advance`.
        for (g, to) in unreachable {
            if let Some(group) = self.groups.get_mut(&g) {
                group.raw.report_unreachable(to);
                self.dirty.insert(g);
            }
        }
        let now = Instant::now();
        for (g, msg) in big_snapshots {
            self.start_stream(g, msg, now);
        }
        if info_changed {
            self.publish_info();
        }
        Ok(())
    }

    /// Takes the readies' messages that may (`early`) or may not be sent before the persist,
    /// grouped by peer; snapshots too big for one message are set aside for streaming.
    #[allow(clippy::type_complexity)]
    fn outbox(
        &mut self,
        readies: &mut [(GroupId, flotilla_raft::Ready)],
        early: bool,
    ) -> (BTreeMap<NodeId, Vec<Envelope>>, Vec<(GroupId, Message)>) {
        let mut outbox: BTreeMap<NodeId, Vec<Envelope>> = BTreeMap::new();
        let mut big_snapshots = Vec::new();
        for (g, rd) in readies.iter_mut() {
            let (take, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut rd.messages)
                .into_iter()
                .partition(|m| m.may_send_before_persist() == early);
            rd.messages = keep;
            for msg in take {
                if let MessageBody::Snapshot { snapshot } = &msg.body {
                    if snapshot.data.len() > self.cfg.snapshot_chunk_bytes {
                        big_snapshots.push((*g, msg));
                        continue;
                    }
                    // A small snapshot travels whole and supersedes any stream to that node.
                    self.out_streams.remove(&(*g, msg.to));
                }
                outbox
                    .entry(msg.to)
                    .or_default()
                    .push(Envelope { group: *g, msg });
            }
        }
        (outbox, big_snapshots)
    }

    /// Sends one envelope batch per peer; refused sends are noted for `report_unreachable`.
    fn send_outbox(
        &mut self,
        outbox: BTreeMap<NodeId, Vec<Envelope>>,
        unreachable: &mut Vec<(GroupId, NodeId)>,
    ) {
        for (to, envs) in outbox {
            let groups: BTreeSet<GroupId> = envs.iter().map(|e| e.group).collect();
            if let Err(e) = self.net.send(to, envs) {
                // A message that can never fit a frame (a snapshot over the transport's limit)
                // would be retried forever: say so loudly. Full queues are routine.
                if matches!(e, crate::network::SendError::TooLarge { .. }) {
                    tracing::error!(peer = to, error = %e, "message can never be sent");
                } else {
                    tracing::debug!(peer = to, error = %e, "send refused");
                }
                unreachable.extend(groups.into_iter().map(|g| (g, to)));
            }
        }
    }

    /// Hands committed entries and reads to the apply worker, resolves waiters, advances.
    fn after_ready(&mut self, g: GroupId, rd: flotilla_raft::Ready) -> bool {
        let group = self.groups.get_mut(&g).expect("group with a ready");
        let inner = self.inner.upgrade();
        let mut info_changed = false;
        if let Some(ss) = rd.soft_state {
            let term = group.raw.term();
            let info = self.info.entry(g).or_default();
            if info.leader != ss.leader || info.term != term {
                info.leader = ss.leader;
                info.term = term;
                info_changed = true;
                let leader = (ss.leader != NO_NODE).then_some(ss.leader);
                if let Some(i) = &inner {
                    i.publish(Event::LeaderChanged {
                        group: g,
                        leader,
                        term,
                    });
                }
                // Reads forwarded to the old leader will never be answered: fail them now
                // (retriable) instead of leaving callers waiting.
                let stale: Vec<u64> = self
                    .reads
                    .iter()
                    .filter(|(_, (rg, _))| *rg == g)
                    .map(|(&id, _)| id)
                    .collect();
                for id in stale {
                    if let Some((_, reply)) = self.reads.remove(&id) {
                        let err = EngineError::NotLeader {
                            group: g,
                            leader_hint: leader,
                        };
                        let _ = reply.send(Err(err));
                    }
                }
            }
            if let Some(i) = &inner {
                i.publish(Event::RoleChanged {
                    group: g,
                    role: ss.role,
                });
            }
        }
        let snapshot = rd.snapshot.map(|s| {
            group.confs = vec![(s.meta.index, s.meta.conf_state.clone())];
            (s.meta.index, s.data)
        });
        let mut completions = Vec::new();
        for e in &rd.committed_entries {
            if let Some((term, reply)) = self.proposals.remove(&(g, e.index)) {
                if term == e.term {
                    completions.push((e.index, reply));
                } else {
                    let why = format!("entry {} was replaced by term {}", e.index, e.term);
                    let _ = reply.send(Err(EngineError::Dropped(why)));
                }
            }
            if e.kind == EntryKind::ConfChange {
                let conf = ConfState::decode(&e.data).expect("conf entries are ours");
                group.confs.push((e.index, conf.clone()));
                if let Some((term, reply)) = self.conf_waiters.remove(&(g, e.index)) {
                    if term != e.term {
                        let _ = reply.send(Err(EngineError::Dropped("conf change lost".into())));
                    } else if conf.is_joint() {
                        self.leave_waiters.entry(g).or_default().push(reply);
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
                if !conf.is_joint() {
                    for reply in self.leave_waiters.remove(&g).unwrap_or_default() {
                        let _ = reply.send(Ok(()));
                    }
                }
                if let Some(i) = &inner {
                    i.publish(Event::MembershipChanged { group: g, conf });
                }
            }
        }
        let worker = &self.workers[group.worker];
        if snapshot.is_some() || !rd.committed_entries.is_empty() {
            let task = ApplyTask::Apply {
                group: g,
                snapshot,
                entries: rd.committed_entries,
                completions,
            };
            let _ = worker.send(task);
        }
        for rs in rd.read_states {
            let Some((_, reply)) = self.reads.remove(&rs.request_id) else {
                continue;
            };
            match rs.index {
                Some(index) => {
                    let _ = worker.send(ApplyTask::Barrier {
                        group: g,
                        index,
                        reply,
                    });
                }
                None => {
                    let leader_hint = (group.raw.leader() != NO_NODE).then_some(group.raw.leader());
                    let _ = reply.send(Err(EngineError::NotLeader {
                        group: g,
                        leader_hint,
                    }));
                }
            }
        }
        group.raw.advance();
        if group.raw.has_ready() {
            self.dirty.insert(g);
        }
        info_changed
    }

    fn publish_info(&self) {
        if let Some(inner) = self.inner.upgrade() {
            *inner.info.write().expect("info lock") = self.info.clone();
        }
    }

    fn fail_group(&mut self, group: GroupId) {
        let keys: Vec<_> = self
            .proposals
            .range((group, 0)..=(group, Index::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some((_, r)) = self.proposals.remove(&k) {
                let _ = r.send(Err(EngineError::GroupNotFound(group)));
            }
        }
        let reads: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (g, _))| *g == group)
            .map(|(&k, _)| k)
            .collect();
        for k in reads {
            if let Some((_, r)) = self.reads.remove(&k) {
                let _ = r.send(Err(EngineError::GroupNotFound(group)));
            }
        }
    }
}

/// The configuration in force at `index`, from a history sorted by index.
fn conf_at(confs: &[(Index, ConfState)], index: Index) -> ConfState {
    confs
        .iter()
        .rev()
        .find(|(i, _)| *i <= index)
        .or(confs.first())
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}
