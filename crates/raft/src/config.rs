//! Tunables of one Raft node. Every bound is explicit (DESIGN.md, rule 4).

use crate::error::Error;
use crate::types::{Index, NodeId, NO_NODE};

/// Configuration of one node of one group.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Followers campaign after a random number of ticks in
    /// `[election_ticks, 2 * election_ticks)` without hearing from a leader.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    /// Index the host has already applied (restart without re-applying).
    pub applied: Index,
    /// Campaign with a pre-vote round first (thesis §9.6), so a partitioned node that rejoins
    /// does not disrupt the group with a higher term.
    pub pre_vote: bool,
    /// Leader steps down when it has not heard from a quorum for an election timeout; voters
    /// then also ignore vote requests while they have a live leader.
    pub check_quorum: bool,
    /// Most bytes of entries in one append message (at least one entry is always sent).
    pub max_msg_bytes: u64,
    /// Most entries in one append message.
    pub max_msg_entries: usize,
    /// Most append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Most entry bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Most bytes of proposed-but-uncommitted entries at the leader; past it, proposals fail
    /// with [`Error::UncommittedLimitExceeded`].
    pub max_uncommitted_bytes: u64,
    /// Most bytes of committed entries handed out in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// Most ReadIndex requests waiting at the leader.
    pub max_pending_reads: usize,
    /// Seed for the election-timeout randomness.
    pub seed: u64,
    /// Deliberate bugs, for proving tests and the simulator can catch them. Only honoured in
    /// builds with debug assertions; never set outside tests.
    #[doc(hidden)]
    pub faults: Faults,
}

/// Deliberately injectable bugs (debug builds only).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Commit an entry as soon as a quorum holds it, even if it is from an earlier term —
    /// the mistake Raft's Figure 8 warns about.
    pub commit_earlier_term_by_count: bool,
    /// Grant votes without checking that the candidate's log is at least as up to date
    /// (dropping the election restriction of Raft §5.4.1).
    pub vote_without_log_check: bool,
}

impl Config {
    /// Defaults suitable for a ~100 ms tick.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            pre_vote: true,
            check_quorum: true,
            max_msg_bytes: 1 << 20,
            max_msg_entries: 512,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 64 << 20,
            max_pending_reads: 4096,
            seed: id,
            faults: Faults::default(),
        }
    }

    /// Checks the bounds make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        if self.id == NO_NODE {
            return bad("id must be non-zero".into());
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "election_ticks = {} must exceed heartbeat_ticks = {}",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.max_inflight_msgs == 0 || self.max_msg_entries == 0 || self.max_pending_reads == 0 {
            return bad(
                "max_inflight_msgs, max_msg_entries, max_pending_reads must be >= 1".into(),
            );
        }
        if self.max_inflight_bytes == 0 || self.max_msg_bytes == 0 {
            return bad("max_inflight_bytes and max_msg_bytes must be >= 1".into());
        }
        Ok(())
    }
}
