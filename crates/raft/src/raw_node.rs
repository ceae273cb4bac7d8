//! The host-facing API: drive a node with `tick`/`step`/`propose`, collect work with `ready`,
//! perform it, then `advance`.

use bytes::Bytes;

use crate::config::Config;
use crate::error::Error;
use crate::raft::{ConfChangeOp, Raft, Status};
use crate::storage::Storage;
use crate::types::*;

/// Work the host must do, in this order:
///
/// 1. Persist `snapshot` (if any), then `entries` (appending, overwriting any stored suffix
///    from `entries[0].index` on), then `hard_state` (if any) — durably (fsync). A hard
///    state that differs from the last durable one only in `commit` may be written without
///    waiting for durability: commit is volatile, and a restart begins at least at the
///    applied index.
/// 2. Only then send `messages`: they may acknowledge the persisted state (votes, appends).
///    Exception: messages for which [`Message::may_send_before_persist`] holds (a leader's
///    appends and heartbeats) may be sent before or during step 1.
/// 3. Apply `snapshot` and then `committed_entries` to the state machine, in order (they may
///    include entries from step 1, which is why persisting comes first), and serve the
///    `read_states` once applied has reached their index.
/// 4. Call [`RawNode::advance`].
#[derive(Debug, Default)]
#[must_use = "a Ready must be handled and passed back via advance"]
pub struct Ready {
    /// Changed role or leader, for observers; not persisted.
    pub soft_state: Option<SoftState>,
    /// Changed hard state to persist.
    pub hard_state: Option<HardState>,
    /// Entries to persist.
    pub entries: Vec<Entry>,
    /// A snapshot from the leader to persist and restore.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply.
    pub committed_entries: Vec<Entry>,
    /// Messages to send after persisting.
    pub messages: Vec<Message>,
    /// Outcomes of `read_index` requests.
    pub read_states: Vec<ReadState>,
}

/// What a handed-out `Ready` covered, so `advance` can mark it done.
#[derive(Debug)]
struct Handed {
    last_entry: Option<(Index, Term)>,
    snapshot_index: Option<Index>,
    applied_to: Option<Index>,
    conf_changes: Vec<ConfState>,
    applied_bytes: u64,
}

/// A Raft node driven by its host.
///
/// After [`RawNode::ready`] returns, the host must handle the `Ready` and call
/// [`RawNode::advance`] before calling any other mutating method (`step`, `tick`,
/// `propose`, ...). This is asserted.
pub struct RawNode<S> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    handed: Option<Handed>,
}

impl<S: Storage> RawNode<S> {
    /// Starts a node from `store`'s durable state.
    pub fn new(cfg: Config, store: S) -> Result<Self, Error> {
        let raft = Raft::new(cfg, store)?;
        let prev_hard = raft.hard_state();
        Ok(RawNode {
            prev_soft: raft.soft_state(),
            prev_hard,
            raft,
            handed: None,
        })
    }

    fn assert_idle(&self) {
        assert!(
            self.handed.is_none(),
            "RawNode used between ready() and advance()"
        );
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.assert_idle();
        self.raft.tick();
    }

    /// Delivers a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        self.assert_idle();
        self.raft.step(m)
    }

    /// Proposes one application entry. Only the leader accepts; followers return
    /// [`Error::NotLeader`] with a leader hint (the core never forwards proposals).
    /// Returns the index the entry will have if it commits in the current term.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, Error> {
        self.propose_batch(vec![data])
    }

    /// Proposes several entries at once; returns the index of the last one.
    pub fn propose_batch(&mut self, datas: Vec<Bytes>) -> Result<Index, Error> {
        self.assert_idle();
        self.raft.propose(datas)
    }

    /// Proposes a membership change. Changes to the voter set go through joint consensus
    /// (enter joint, then the leader automatically proposes leaving it).
    pub fn propose_conf_change(&mut self, ops: &[ConfChangeOp]) -> Result<Index, Error> {
        self.assert_idle();
        self.raft.propose_conf_change(ops)
    }

    /// Requests a linearizable read barrier; the answer comes back as a [`ReadState`] with
    /// the same `request_id`. Followers forward the request to the leader.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), Error> {
        self.assert_idle();
        self.raft.read_index(request_id)
    }

    /// Asks the leader to hand leadership to `to`. Proposals fail with
    /// [`Error::TransferInProgress`] until it completes or times out (an election timeout).
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        self.assert_idle();
        self.raft.transfer_leader(to)
    }

    /// Starts an election now, without waiting for the election timeout (tests, bootstrap
    /// of a single-node group). Uses pre-vote if configured.
    pub fn campaign(&mut self) {
        self.assert_idle();
        self.raft.campaign_now();
    }

    /// The host could not reach `id`.
    pub fn report_unreachable(&mut self, id: NodeId) {
        self.assert_idle();
        self.raft.report_unreachable(id);
    }

    /// The host finished sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        self.assert_idle();
        self.raft.report_snapshot(id, success);
    }

    /// True if `ready` would return work.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || !r.msgs.is_empty()
            || !r.read_states.is_empty()
            || !r.log.unstable_entries().is_empty()
            || r.log.unstable_snapshot().is_some()
            || r.log.has_next_committed_entries()
    }

    /// Collects outstanding work. See [`Ready`] for what the host must do with it.
    pub fn ready(&mut self) -> Ready {
        self.assert_idle();
        let r = &mut self.raft;
        let mut rd = Ready::default();
        let soft = r.soft_state();
        if soft != self.prev_soft {
            rd.soft_state = Some(soft);
            self.prev_soft = soft;
        }
        let hard = r.hard_state();
        if hard != self.prev_hard {
            rd.hard_state = Some(hard);
            self.prev_hard = hard;
        }
        rd.entries = r.log.unstable_entries().to_vec();
        rd.snapshot = r.log.unstable_snapshot().cloned();
        rd.committed_entries = r
            .log
            .next_committed_entries(r.max_committed_bytes_per_ready());
        rd.messages = std::mem::take(&mut r.msgs);
        rd.read_states = std::mem::take(&mut r.read_states);
        let conf_changes = rd
            .committed_entries
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| ConfState::decode(&e.data).expect("conf-change entry written by this code"))
            .collect();
        self.handed = Some(Handed {
            last_entry: rd.entries.last().map(|e| (e.index, e.term)),
            snapshot_index: rd.snapshot.as_ref().map(|s| s.meta.index),
            applied_to: rd.committed_entries.last().map(|e| e.index),
            conf_changes,
            applied_bytes: rd.committed_entries.iter().map(Entry::size_bytes).sum(),
        });
        rd
    }

    /// Marks the last `Ready` as handled: persisted, sent and applied.
    pub fn advance(&mut self) {
        let h = self.handed.take().expect("advance() without ready()");
        let r = &mut self.raft;
        if let Some(idx) = h.snapshot_index {
            r.log.stable_snap_to(idx);
            r.applied_to(idx, Vec::new(), 0);
        }
        if let Some((idx, term)) = h.last_entry {
            r.log.stable_to(idx, term);
        }
        if let Some(idx) = h.applied_to {
            r.applied_to(idx, h.conf_changes, h.applied_bytes);
        }
    }

    /// Observability snapshot (allocates; see `term`, `leader`, `role` for cheap reads).
    pub fn status(&self) -> Status {
        self.raft.status()
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// Known leader, or [`NO_NODE`].
    pub fn leader(&self) -> NodeId {
        self.raft.leader
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The configuration as of the applied index (what a snapshot taken now must record).
    pub fn conf_state(&self) -> &ConfState {
        &self.raft.conf
    }

    /// The durable store.
    pub fn store(&self) -> &S {
        &self.raft.log.store
    }

    /// The durable store, for persisting a `Ready` or compacting after a snapshot.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }

    /// Consumes the node, returning its store (the simulator keeps it across a crash).
    pub fn into_store(self) -> S {
        self.raft.log.store
    }
}
