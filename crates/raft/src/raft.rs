//! The consensus state machine of one node. [`crate::RawNode`] wraps it with the
//! `Ready`/`advance` hand-off; everything here only changes memory and queues messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::error::Error;
use crate::log::RaftLog;
use crate::progress::{Progress, ProgressState};
use crate::quorum::{committed_index, vote_result, VoteResult};
use crate::storage::Storage;
use crate::types::*;

/// One membership operation inside a [`crate::RawNode::propose_conf_change`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeOp {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner. Demoting a voter to learner is refused (remove it, then add it back).
    AddLearner(NodeId),
    /// Remove a voter or learner (the leader may remove itself; it steps down once the change
    /// is complete).
    Remove(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignKind {
    PreElection,
    Election,
    Transfer,
}

/// A ReadIndex request the leader is confirming with a heartbeat round.
#[derive(Debug)]
struct PendingRead {
    seq: u64,
    index: Index,
    from: NodeId,
    request_id: u64,
    acks: BTreeSet<NodeId>,
}

/// Progress of one peer, as reported by `status()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Highest index known to match.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Replication mode.
    pub state: ProgressState,
}

/// A snapshot of a node's state for observability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: NodeId,
    /// Role.
    pub role: Role,
    /// Known leader or [`NO_NODE`].
    pub leader: NodeId,
    /// Commit index.
    pub commit: Index,
    /// Applied index.
    pub applied: Index,
    /// Last log index.
    pub last_index: Index,
    /// Membership.
    pub conf_state: ConfState,
    /// Per-peer progress (leader only).
    pub progress: BTreeMap<NodeId, PeerStatus>,
}

/// The consensus core of one node.
pub struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) log: RaftLog<S>,
    pub(crate) role: Role,
    pub(crate) leader: NodeId,
    pub(crate) conf: ConfState,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    lead_transferee: Option<NodeId>,
    /// Index of the newest conf-change entry this leader appended (or its last index when it
    /// took over): another change may not start until it is applied.
    pending_conf_index: Index,
    uncommitted_bytes: u64,
    read_seq: u64,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term.
    reads_awaiting_commit: Vec<(NodeId, u64)>,
    cfg: Config,
    rng: ChaCha8Rng,
}

impl<S: Storage> Raft<S> {
    /// Builds a node from its durable state.
    pub fn new(cfg: Config, store: S) -> Result<Self, Error> {
        cfg.validate()?;
        let (hs, conf) = store.initial_state()?;
        let log = RaftLog::new(store, hs.commit, cfg.applied)?;
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            log,
            role: Role::Follower,
            leader: NO_NODE,
            conf: ConfState::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            read_states: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_ticks,
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
        };
        r.set_conf(conf);
        r.become_follower(hs.term, NO_NODE);
        Ok(r)
    }

    // ----- roles ---------------------------------------------------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let lo = self.cfg.election_ticks;
        self.randomized_election_timeout = self.rng.gen_range(lo..2 * lo);
        self.lead_transferee = None;
        self.votes.clear();
        let last = self.log.last_index();
        for (&id, pr) in self.progress.iter_mut() {
            *pr = Progress::new(
                last + 1,
                self.cfg.max_inflight_msgs,
                self.cfg.max_inflight_bytes,
            );
            if id == self.id {
                pr.matched = last;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.fail_pending_reads();
    }

    fn fail_pending_reads(&mut self) {
        let waiting = std::mem::take(&mut self.reads_awaiting_commit);
        let pending = std::mem::take(&mut self.pending_reads);
        let failed = waiting
            .into_iter()
            .chain(pending.into_iter().map(|p| (p.from, p.request_id)));
        for (from, request_id) in failed {
            self.answer_read(from, request_id, None);
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.leader = leader;
        self.role = Role::Follower;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "leader cannot become pre-candidate"
        );
        // Pre-vote changes neither term nor vote: a node that cannot win leaves no trace.
        self.votes.clear();
        self.leader = NO_NODE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "leader cannot become candidate");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert_ne!(
            self.role,
            Role::Follower,
            "follower cannot become leader directly"
        );
        self.reset(self.term);
        self.leader = self.id;
        self.role = Role::Leader;
        let last = self.log.last_index();
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.become_replicate();
        }
        // Conservatively treat any unapplied entry as a possible conf change.
        self.pending_conf_index = last;
        // A no-op of the new term lets earlier entries commit (Raft §5.4.2, Figure 8).
        let noop = Entry {
            term: self.term,
            index: last + 1,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        self.append_entries(vec![noop]);
        self.bcast_append();
    }

    fn promotable(&self) -> bool {
        self.conf.is_voter(self.id)
    }

    fn has_unapplied_conf_change(&self) -> bool {
        let lo = self.log.applied + 1;
        let hi = self.log.committed + 1;
        if lo >= hi {
            return false;
        }
        match self.log.slice(lo, hi, u64::MAX) {
            Ok(ents) => ents.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => true,
        }
    }

    fn campaign(&mut self, kind: CampaignKind) {
        if !self.promotable() {
            return;
        }
        // A node that has not applied a committed conf change might campaign under an
        // outdated configuration.
        if self.has_unapplied_conf_change() {
            return;
        }
        let vote_term = if kind == CampaignKind::PreElection {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        if self.poll(self.id, true) == VoteResult::Won {
            // Single-voter group.
            if kind == CampaignKind::PreElection {
                self.campaign(CampaignKind::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .conf
            .voters
            .union(&self.conf.outgoing)
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        for to in voters {
            let body = if kind == CampaignKind::PreElection {
                MessageBody::PreVote {
                    last_index,
                    last_term,
                }
            } else {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer: kind == CampaignKind::Transfer,
                }
            };
            self.send(to, vote_term, body);
        }
    }

    pub(crate) fn campaign_now(&mut self) {
        if self.role != Role::Leader {
            let kind = if self.cfg.pre_vote {
                CampaignKind::PreElection
            } else {
                CampaignKind::Election
            };
            self.campaign(kind);
        }
    }

    pub(crate) fn max_committed_bytes_per_ready(&self) -> u64 {
        self.cfg.max_committed_bytes_per_ready
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> VoteResult {
        self.votes.entry(from).or_insert(granted);
        vote_result(&self.conf, &self.votes)
    }

    // ----- time ----------------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                self.election_elapsed = 0;
                let kind = if self.cfg.pre_vote {
                    CampaignKind::PreElection
                } else {
                    CampaignKind::Election
                };
                self.campaign(kind);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                self.become_follower(self.term, NO_NODE);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        // Retry snapshots that were probably lost.
        let limit = self.cfg.election_ticks;
        for pr in self.progress.values_mut() {
            if pr.state == ProgressState::Snapshot {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks > limit {
                    pr.become_probe();
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
        self.maybe_auto_leave_joint();
    }

    /// Check-quorum: did a quorum talk to us during the last period? Resets the marks.
    fn quorum_active(&mut self) -> bool {
        let me = self.id;
        let votes: BTreeMap<NodeId, bool> = self
            .progress
            .iter()
            .map(|(&id, pr)| (id, id == me || pr.recent_active))
            .collect();
        for (&id, pr) in self.progress.iter_mut() {
            pr.recent_active = id == me;
        }
        vote_result(&self.conf, &votes) == VoteResult::Won
    }

    // ----- messages ------------------------------------------------------------------------

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.id, "sending {} to self", body.name());
        self.msgs.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.to != self.id || m.from == NO_NODE {
            return Ok(());
        }
        if m.term > self.term {
            let (is_vote, transfer) = match m.body {
                MessageBody::PreVote { .. } => (true, false),
                MessageBody::Vote { transfer, .. } => (true, transfer),
                _ => (false, false),
            };
            if is_vote && !transfer {
                // Leader lease (thesis §4.2.3): while we hear from a live leader, ignore
                // vote requests so a partitioned node cannot depose it.
                let in_lease = self.cfg.check_quorum
                    && self.leader != NO_NODE
                    && self.election_elapsed < self.cfg.election_ticks;
                if in_lease {
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                // A granted pre-vote carries the term we would campaign in; no term change.
                MessageBody::PreVoteResp { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term so it steps down; otherwise it
                    // would never learn, as pre-vote keeps our term from reaching it.
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::AppendResp {
                            index: 0,
                            reject: None,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, self.term, MessageBody::PreVoteResp { reject: true });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            }
            | MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => {
                let pre = matches!(m.body, MessageBody::PreVote { .. });
                self.handle_vote_request(m.from, m.term, pre, last_index, last_term);
                Ok(())
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => {
                    self.step_candidate(m);
                    Ok(())
                }
                Role::Follower => {
                    self.step_follower(m);
                    Ok(())
                }
            },
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let can_vote = self.vote == from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre && term > self.term);
        let up_to_date = self.log.is_up_to_date(last_index, last_term)
            || (cfg!(debug_assertions) && self.cfg.faults.vote_without_log_check);
        if can_vote && up_to_date {
            if pre {
                self.send(from, term, MessageBody::PreVoteResp { reject: false });
            } else {
                self.election_elapsed = 0;
                self.vote = from;
                self.send(from, self.term, MessageBody::VoteResp { reject: false });
            }
        } else if pre {
            self.send(from, self.term, MessageBody::PreVoteResp { reject: true });
        } else {
            self.send(from, self.term, MessageBody::VoteResp { reject: true });
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::PreVoteResp { reject } if self.role == Role::PreCandidate => {
                match self.poll(m.from, !reject) {
                    VoteResult::Won => self.campaign(CampaignKind::Election),
                    VoteResult::Lost => self.become_follower(self.term, NO_NODE),
                    VoteResult::Pending => {}
                }
            }
            MessageBody::VoteResp { reject } if self.role == Role::Candidate => {
                match self.poll(m.from, !reject) {
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, NO_NODE),
                    VoteResult::Pending => {}
                }
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                // A leader of our term exists.
                self.become_follower(m.term, m.from);
                self.step_follower(m);
            }
            MessageBody::ReadIndex { request_id } => self.refuse_read(m.from, request_id),
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                // The leader caps `commit` at what it knows we match, so this is safe.
                self.log.commit_to(commit);
                self.send(m.from, self.term, MessageBody::HeartbeatResp { read_seq });
            }
            MessageBody::Snapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m.from, snapshot);
            }
            // Leader transfer: campaign at once, skipping pre-vote and the lease check.
            // (`campaign` itself refuses if this node is not a voter.)
            MessageBody::TimeoutNow => self.campaign(CampaignKind::Transfer),
            MessageBody::ReadIndexResp { request_id, index } => {
                self.read_states.push(ReadState { request_id, index });
            }
            MessageBody::ReadIndex { request_id } => self.refuse_read(m.from, request_id),
            _ => {}
        }
    }

    /// A follower forwarded a read: confirm it, or refuse it if the queue is full (the
    /// follower's caller sees a failed read and retries).
    fn forwarded_read(&mut self, from: NodeId, request_id: u64) {
        if self.read_index_as_leader(from, request_id).is_err() {
            self.refuse_read(from, request_id);
        }
    }

    /// Tells a follower its forwarded read cannot be served here (it retries).
    fn refuse_read(&mut self, to: NodeId, request_id: u64) {
        let body = MessageBody::ReadIndexResp {
            request_id,
            index: None,
        };
        self.send(to, self.term, body);
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
        commit: Index,
    ) {
        if prev_index < self.log.committed {
            self.ack_committed(from);
            return;
        }
        match self
            .log
            .maybe_append(prev_index, prev_term, commit, entries)
        {
            Some(last_new) => {
                self.send(
                    from,
                    self.term,
                    MessageBody::AppendResp {
                        index: last_new,
                        reject: None,
                    },
                );
            }
            None => {
                let probe = prev_index.min(self.log.last_index());
                let (index, term) = self.log.find_conflict_by_term(probe, prev_term);
                let reject = Some(RejectHint { index, term });
                self.send(
                    from,
                    self.term,
                    MessageBody::AppendResp {
                        index: prev_index,
                        reject,
                    },
                );
            }
        }
    }

    /// Answers a stale append or snapshot (at or below our commit) with our commit index, so
    /// the leader moves its view of us forward instead of retrying.
    fn ack_committed(&mut self, from: NodeId) {
        let index = self.log.committed;
        self.send(
            from,
            self.term,
            MessageBody::AppendResp {
                index,
                reject: None,
            },
        );
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed {
            self.ack_committed(from);
            return;
        }
        if self.log.match_term(index, term) {
            // We already have the entries: just fast-forward commit.
            self.log.commit_to(index);
        } else {
            let conf = snapshot.meta.conf_state.clone();
            self.log.restore(snapshot);
            self.set_conf(conf);
        }
        let index = self.log.last_index();
        self.send(
            from,
            self.term,
            MessageBody::AppendResp {
                index,
                reject: None,
            },
        );
    }

    fn step_leader(&mut self, m: Message) -> Result<(), Error> {
        match m.body {
            MessageBody::AppendResp { index, reject } => {
                self.handle_append_resp(m.from, index, reject)
            }
            MessageBody::HeartbeatResp { read_seq } => self.handle_heartbeat_resp(m.from, read_seq),
            MessageBody::ReadIndex { request_id } => self.forwarded_read(m.from, request_id),
            _ => {}
        }
        Ok(())
    }

    fn handle_append_resp(&mut self, from: NodeId, index: Index, reject: Option<RejectHint>) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if let Some(hint) = reject {
            let next_probe = if hint.term > 0 {
                self.log.find_conflict_by_term(hint.index, hint.term).0 + 1
            } else {
                hint.index + 1
            };
            let pr = self.progress.get_mut(&from).expect("checked above");
            if pr.maybe_decr_to(index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if was_paused {
            self.send_append(from, true);
        }
        // Pipelining: keep the window full.
        while self.send_append(from, false) {}
        let matched = self.progress.get(&from).map_or(0, |p| p.matched);
        if self.lead_transferee == Some(from) && matched == self.log.last_index() {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
    }

    fn handle_heartbeat_resp(&mut self, from: NodeId, read_seq: u64) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first();
        }
        if pr.matched < last {
            self.send_append(from, true);
        }
        if read_seq > 0 {
            self.ack_reads(from, read_seq);
        }
    }

    // ----- replication ---------------------------------------------------------------------

    /// Sends the next append (or a snapshot) to `to` if flow control allows. Returns true if
    /// a message was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if to == self.id || pr.is_paused() {
            return false;
        }
        let next = pr.next.min(self.log.last_index() + 1);
        let prev_term = self.log.term(next - 1);
        let ents = self
            .log
            .slice(next, self.log.last_index() + 1, self.cfg.max_msg_bytes);
        let (prev_term, mut entries) = match (prev_term, ents) {
            (Ok(t), Ok(e)) => (t, e),
            _ => return self.send_snapshot(to),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        entries.truncate(self.cfg.max_msg_entries);
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last = entries.last().map(|e| e.index);
        let pr = self.progress.get_mut(&to).expect("checked above");
        match (pr.state, last) {
            (ProgressState::Replicate, Some(last)) => {
                pr.next = last + 1;
                pr.inflights.add(last, bytes);
            }
            (ProgressState::Probe, _) => pr.probe_sent = true,
            _ => {}
        }
        let commit = self.log.committed;
        let body = MessageBody::Append {
            prev_index: next - 1,
            prev_term,
            entries,
            commit,
        };
        self.send(to, self.term, body);
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let pr = &self.progress[&to];
        if !pr.recent_active {
            // Don't ship a snapshot to a node we have not heard from.
            return false;
        }
        let Ok(snapshot) = self.log.snapshot() else {
            return false;
        };
        assert!(
            !snapshot.is_empty(),
            "log compacted but no snapshot to send"
        );
        self.progress
            .get_mut(&to)
            .expect("checked")
            .become_snapshot(snapshot.meta.index);
        self.send(to, self.term, MessageBody::Snapshot { snapshot });
        true
    }

    fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&p| p != self.id)
            .collect();
        for to in peers {
            self.send_append(to, true);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let read_seq = self.pending_reads.back().map_or(0, |r| r.seq);
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&p, _)| p != self.id)
            .map(|(&p, pr)| (p, pr.matched.min(self.log.committed)))
            .collect();
        for (to, commit) in peers {
            self.send(to, self.term, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    fn append_entries(&mut self, mut ents: Vec<Entry>) {
        let mut last = self.log.last_index();
        for e in ents.iter_mut() {
            last += 1;
            e.term = self.term;
            e.index = last;
        }
        let last = self.log.append(&ents);
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.maybe_update(last);
        }
        self.maybe_commit();
    }

    /// Recomputes the quorum commit index; returns true if commit advanced.
    fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let quorum = committed_index(&self.conf, |id| progress.get(&id).map_or(0, |p| p.matched));
        if quorum == Index::MAX {
            return false; // no voters: nothing can commit
        }
        let committed_before = self.log.committed;
        let advanced = if cfg!(debug_assertions)
            && self.cfg.faults.commit_earlier_term_by_count
            && quorum > committed_before
        {
            self.log.commit_to(quorum);
            true
        } else {
            self.log.maybe_commit(quorum, self.term)
        };
        if advanced && self.log.term(committed_before) != Ok(self.term) {
            // First commit of this term: reads that waited for it can start now.
            let waiting = std::mem::take(&mut self.reads_awaiting_commit);
            for (from, request_id) in waiting {
                let _ = self.read_index_as_leader(from, request_id);
            }
        }
        advanced
    }

    // ----- proposals -----------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            let leader_hint = (self.leader != NO_NODE).then_some(self.leader);
            return Err(Error::NotLeader { leader_hint });
        }
        if let Some(to) = self.lead_transferee {
            return Err(Error::TransferInProgress { to });
        }
        Ok(())
    }

    /// Appends application entries at the leader. Returns the index of the last one.
    pub fn propose(&mut self, datas: Vec<Bytes>) -> Result<Index, Error> {
        self.check_can_propose()?;
        let entries: Vec<Entry> = datas
            .into_iter()
            .map(|data| Entry {
                term: 0,
                index: 0,
                kind: EntryKind::Normal,
                data,
            })
            .collect();
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let total = self.uncommitted_bytes + bytes;
        // An empty pipeline always accepts one batch so a large entry is not refused forever.
        if self.uncommitted_bytes > 0 && total > self.cfg.max_uncommitted_bytes {
            return Err(Error::UncommittedLimitExceeded {
                bytes: total,
                max: self.cfg.max_uncommitted_bytes,
            });
        }
        self.uncommitted_bytes = total;
        self.append_entries(entries);
        self.bcast_append();
        Ok(self.log.last_index())
    }

    /// Starts a membership change (see [`ConfChangeOp`]).
    pub fn propose_conf_change(&mut self, ops: &[ConfChangeOp]) -> Result<Index, Error> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied || self.conf.is_joint() {
            return Err(Error::ConfChangePending);
        }
        let mut voters = self.conf.voters.clone();
        let mut learners = self.conf.learners.clone();
        for op in ops {
            match *op {
                ConfChangeOp::AddVoter(id) => {
                    if id == NO_NODE {
                        return Err(Error::InvalidConfChange("node id 0".into()));
                    }
                    learners.remove(&id);
                    voters.insert(id);
                }
                ConfChangeOp::AddLearner(id) => {
                    if id == NO_NODE {
                        return Err(Error::InvalidConfChange("node id 0".into()));
                    }
                    if voters.contains(&id) {
                        return Err(Error::InvalidConfChange(format!(
                            "node {id} is a voter; demotion to learner is not supported"
                        )));
                    }
                    learners.insert(id);
                }
                ConfChangeOp::Remove(id) => {
                    voters.remove(&id);
                    learners.remove(&id);
                }
            }
        }
        if voters.is_empty() {
            return Err(Error::InvalidConfChange(
                "the change would remove every voter".into(),
            ));
        }
        // Voter changes go through joint consensus; learner-only changes apply directly.
        let outgoing = if voters == self.conf.voters {
            BTreeSet::new()
        } else {
            self.conf.voters.clone()
        };
        let target = ConfState {
            voters,
            outgoing,
            learners,
        };
        Ok(self.append_conf_entry(target))
    }

    fn append_conf_entry(&mut self, target: ConfState) -> Index {
        let e = Entry {
            term: 0,
            index: 0,
            kind: EntryKind::ConfChange,
            data: target.encode(),
        };
        self.append_entries(vec![e]);
        self.pending_conf_index = self.log.last_index();
        self.bcast_append();
        self.pending_conf_index
    }

    /// After the joint configuration is applied, the leader proposes leaving it.
    fn maybe_auto_leave_joint(&mut self) {
        if self.role == Role::Leader
            && self.conf.is_joint()
            && self.pending_conf_index <= self.log.applied
            && self.lead_transferee.is_none()
        {
            let target = ConfState {
                voters: self.conf.voters.clone(),
                outgoing: BTreeSet::new(),
                learners: self.conf.learners.clone(),
            };
            self.append_conf_entry(target);
        }
    }

    /// Installs `conf` as the configuration (on apply of a conf-change entry or a snapshot).
    pub(crate) fn set_conf(&mut self, conf: ConfState) {
        let last = self.log.last_index();
        let members = conf.members();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(
                    last + 1,
                    self.cfg.max_inflight_msgs,
                    self.cfg.max_inflight_bytes,
                );
                if id == self.id {
                    pr.matched = last;
                }
                pr
            });
        }
        self.conf = conf;
        if let Some(t) = self.lead_transferee {
            if !self.conf.is_voter(t) {
                self.lead_transferee = None;
            }
        }
        if self.role == Role::Leader {
            if !self.conf.is_voter(self.id) {
                // The leader removed itself; the rest elect a new leader.
                self.become_follower(self.term, NO_NODE);
                return;
            }
            if self.maybe_commit() {
                self.bcast_append();
            }
            self.maybe_auto_leave_joint();
        }
    }

    /// Called by `RawNode::advance` once the host has applied entries up to `index`.
    pub(crate) fn applied_to(&mut self, index: Index, conf_changes: Vec<ConfState>, bytes: u64) {
        self.log.applied = self.log.applied.max(index);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
        for conf in conf_changes {
            self.set_conf(conf);
        }
        self.maybe_auto_leave_joint();
    }

    // ----- leader transfer -----------------------------------------------------------------

    /// Starts moving leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            let leader_hint = (self.leader != NO_NODE).then_some(self.leader);
            return Err(Error::NotLeader { leader_hint });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) || !self.progress.contains_key(&to) {
            return Err(Error::InvalidTransferTarget(to));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        self.election_elapsed = 0;
        if self.progress[&to].matched == self.log.last_index() {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    // ----- reads ---------------------------------------------------------------------------

    /// Requests a linearizable read barrier; the answer arrives as a [`ReadState`].
    pub fn read_index(&mut self, request_id: u64) -> Result<(), Error> {
        match self.role {
            Role::Leader => self.read_index_as_leader(self.id, request_id),
            _ if self.leader != NO_NODE => {
                // Followers forward to the leader.
                self.send(
                    self.leader,
                    self.term,
                    MessageBody::ReadIndex { request_id },
                );
                Ok(())
            }
            _ => Err(Error::NotLeader { leader_hint: None }),
        }
    }

    fn read_index_as_leader(&mut self, from: NodeId, request_id: u64) -> Result<(), Error> {
        let pending = self.pending_reads.len() + self.reads_awaiting_commit.len();
        if pending >= self.cfg.max_pending_reads {
            return Err(Error::TooManyPendingReads {
                pending,
                max: self.cfg.max_pending_reads,
            });
        }
        if self.log.term(self.log.committed) != Ok(self.term) {
            // Our commit index may lag the true one until we commit in our own term.
            self.reads_awaiting_commit.push((from, request_id));
            return Ok(());
        }
        self.read_seq += 1;
        let read = PendingRead {
            seq: self.read_seq,
            index: self.log.committed,
            from,
            request_id,
            acks: BTreeSet::from([self.id]),
        };
        self.pending_reads.push_back(read);
        // A single-voter group confirms at once; otherwise start a heartbeat round.
        self.ack_reads(self.id, self.read_seq);
        if !self.pending_reads.is_empty() {
            self.bcast_heartbeat();
        }
        Ok(())
    }

    fn ack_reads(&mut self, from: NodeId, read_seq: u64) {
        let mut confirmed = None;
        for r in self.pending_reads.iter_mut().filter(|r| r.seq <= read_seq) {
            r.acks.insert(from);
            let votes: BTreeMap<NodeId, bool> = r.acks.iter().map(|&id| (id, true)).collect();
            if vote_result(&self.conf, &votes) == VoteResult::Won {
                confirmed = Some(r.seq);
            }
        }
        let Some(upto) = confirmed else { return };
        while self.pending_reads.front().is_some_and(|r| r.seq <= upto) {
            let r = self.pending_reads.pop_front().expect("checked non-empty");
            self.answer_read(r.from, r.request_id, Some(r.index));
        }
    }

    fn answer_read(&mut self, from: NodeId, request_id: u64, index: Option<Index>) {
        if from == self.id {
            self.read_states.push(ReadState { request_id, index });
        } else {
            self.send(
                from,
                self.term,
                MessageBody::ReadIndexResp { request_id, index },
            );
        }
    }

    // ----- host reports --------------------------------------------------------------------

    /// The host could not deliver to `id`; slow down to probing.
    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The host finished (or failed) sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&id) {
            if pr.state == ProgressState::Snapshot {
                if !success {
                    pr.pending_snapshot = 0;
                }
                pr.become_probe();
                // Wait for a heartbeat answer before probing again.
                pr.probe_sent = true;
            }
        }
    }

    /// Observability snapshot.
    pub fn status(&self) -> Status {
        let progress = if self.role == Role::Leader {
            self.progress
                .iter()
                .map(|(&id, p)| {
                    (
                        id,
                        PeerStatus {
                            matched: p.matched,
                            next: p.next,
                            state: p.state,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: self.id,
            term: self.term,
            vote: self.vote,
            role: self.role,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            conf_state: self.conf.clone(),
            progress,
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }
}
