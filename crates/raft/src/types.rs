//! The data the core exchanges with its host: log entries, durable state, snapshots and messages.

use std::collections::BTreeSet;

use bytes::Bytes;

/// Identifies a node (a replica) within a group. `0` means "none" and is never a valid id.
pub type NodeId = u64;
/// A log position. The first real entry has index 1; index 0 is the empty prefix.
pub type Index = u64;
/// A Raft term.
pub type Term = u64;

/// Sentinel for "no node" (no vote cast, no known leader).
pub const NO_NODE: NodeId = 0;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data, opaque to the core. An empty `Normal` entry is the no-op a new
    /// leader appends to commit entries of earlier terms (Raft §5.4.2).
    Normal,
    /// A membership change; `data` is an encoded [`ConfState`] (the configuration that takes
    /// effect when the entry is applied). See [`ConfState::encode`].
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: Index,
    /// What `data` means.
    pub kind: EntryKind,
    /// Opaque payload.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in size bounds (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// Fixed per-entry overhead used by size accounting (term, index, kind, length prefix).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// State that must be durable before messages that depend on it are sent (Raft Figure 2,
/// "persistent state on all servers"), plus the commit index so a restart re-applies less.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// Highest index known committed. Persisting it is an optimisation, not a safety need.
    pub commit: Index,
}

/// Group membership.
///
/// Outside a membership change `outgoing` is empty and `voters` is the configuration. During a
/// joint-consensus change (Raft thesis §4.3) decisions need a majority of `voters` (the incoming
/// configuration) *and* a majority of `outgoing`. Learners receive the log but never vote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Non-voting members.
    pub learners: BTreeSet<NodeId>,
}

/// Version byte at the start of an encoded [`ConfState`].
const CONF_STATE_FORMAT_V1: u8 = 1;

impl ConfState {
    /// A plain (non-joint) configuration of `voters` and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..Default::default()
        }
    }

    /// True while a joint-consensus change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// True if `id` is a member at all (voter of either half, or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, sorted and without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// Encodes as `[version][n_voters u32][ids..][n_outgoing u32][ids..][n_learners u32][ids..]`,
    /// little endian. This is what a [`EntryKind::ConfChange`] entry carries.
    pub fn encode(&self) -> Bytes {
        let n = self.voters.len() + self.outgoing.len() + self.learners.len();
        let mut out = Vec::with_capacity(1 + 12 + 8 * n);
        out.push(CONF_STATE_FORMAT_V1);
        for set in [&self.voters, &self.outgoing, &self.learners] {
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for id in set {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        Bytes::from(out)
    }

    /// Decodes what [`ConfState::encode`] produced; refuses unknown versions and short input.
    pub fn decode(mut buf: &[u8]) -> Result<ConfState, DecodeError> {
        let version = take::<1>(&mut buf)?[0];
        if version != CONF_STATE_FORMAT_V1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in sets.iter_mut() {
            let n = u32::from_le_bytes(take::<4>(&mut buf)?);
            for _ in 0..n {
                let id = u64::from_le_bytes(take::<8>(&mut buf)?);
                if id == NO_NODE {
                    return Err(DecodeError::Invalid("node id 0 in configuration"));
                }
                set.insert(id);
            }
        }
        if !buf.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes after configuration"));
        }
        let [voters, outgoing, learners] = sets;
        Ok(ConfState {
            voters,
            outgoing,
            learners,
        })
    }
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    if buf.len() < N {
        return Err(DecodeError::Truncated);
    }
    let (head, rest) = buf.split_at(N);
    *buf = rest;
    Ok(head.try_into().expect("split_at returned N bytes"))
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended early.
    #[error("input truncated")]
    Truncated,
    /// The format version byte is not one this build understands.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// The input is well-framed but violates an invariant.
    #[error("invalid input: {0}")]
    Invalid(&'static str),
}

/// Where a snapshot sits in the log and which configuration it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index covered by the snapshot.
    pub index: Index,
    /// Term of the entry at `index`.
    pub term: Term,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// A point-in-time image of the state machine, replacing the log prefix up to `meta.index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Position and configuration.
    pub meta: SnapshotMeta,
    /// Opaque state-machine image.
    pub data: Bytes,
}

impl Snapshot {
    /// True for the zero snapshot (nothing compacted yet).
    pub fn is_empty(&self) -> bool {
        self.meta.index == 0
    }
}

/// A message between two replicas of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (for `PreVote`, the term the sender would campaign in).
    pub term: Term,
    /// Payload.
    pub body: MessageBody,
}

impl Message {
    /// True if the host may send this message *before* persisting the `Ready` it came in:
    /// a leader's `Append` and `Heartbeat` acknowledge nothing, so they need not wait for
    /// the leader's own fsync (Raft thesis §10.2.1: the leader writes to its disk in parallel
    /// with replicating). The leader counts its own entries only through `advance`, after
    /// the host persisted them, and the core takes no input between `ready` and `advance`,
    /// so no acknowledgement can be counted before the leader's copy is durable. Every
    /// other message (votes, responses, snapshots, transfers) must still wait.
    pub fn may_send_before_persist(&self) -> bool {
        matches!(
            self.body,
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
        )
    }
}

/// Why a follower rejected an append, and where the leader should look next (the "fast
/// backup" optimisation of Raft §5.3: skip a whole term per round trip instead of one entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// The largest index at which the follower's log might match.
    pub index: Index,
    /// The follower's term at `index` (0 if the follower has no entry there).
    pub term: Term,
}

/// Message payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Pre-vote request (thesis §9.6): "would you vote for me?" without bumping terms.
    PreVote {
        /// Candidate's last log index.
        last_index: Index,
        /// Candidate's last log term.
        last_term: Term,
    },
    /// Answer to `PreVote`.
    PreVoteResp {
        /// True if the vote is refused.
        reject: bool,
    },
    /// Vote request (Raft §5.2).
    Vote {
        /// Candidate's last log index.
        last_index: Index,
        /// Candidate's last log term.
        last_term: Term,
        /// True when caused by leader transfer: voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to `Vote`.
    VoteResp {
        /// True if the vote is refused.
        reject: bool,
    },
    /// AppendEntries (Raft §5.3). An empty `entries` still carries `commit`.
    Append {
        /// Index of the entry before `entries`.
        prev_index: Index,
        /// Term of that entry.
        prev_term: Term,
        /// Entries to append, in order.
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: Index,
    },
    /// Answer to `Append` or `Snapshot`.
    AppendResp {
        /// On success: the follower's log matches the leader's up to here. On reject: the
        /// `prev_index` that did not match.
        index: Index,
        /// Set on rejection.
        reject: Option<RejectHint>,
    },
    /// Leader heartbeat: asserts leadership, advances commit, and confirms ReadIndex rounds.
    Heartbeat {
        /// Leader's commit index, capped at what the follower is known to have.
        commit: Index,
        /// Newest ReadIndex round the leader wants confirmed (0 for none).
        read_seq: u64,
    },
    /// Answer to `Heartbeat`.
    HeartbeatResp {
        /// Echo of `read_seq`.
        read_seq: u64,
    },
    /// InstallSnapshot: the follower is behind the leader's compacted log.
    Snapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Leader transfer: "campaign now" sent to the transferee once it is caught up.
    TimeoutNow,
    /// A follower forwards a linearizable read request to the leader.
    ReadIndex {
        /// The follower's request id, echoed in the answer.
        request_id: u64,
    },
    /// The leader's answer to a forwarded `ReadIndex`.
    ReadIndexResp {
        /// Echo of the request id.
        request_id: u64,
        /// The read may be served once the follower has applied this index. `None` if the
        /// leader refused (e.g. it stopped being leader); the follower reports it as failed.
        index: Option<Index>,
    },
}

impl MessageBody {
    /// Short name for traces and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResp { .. } => "PreVoteResp",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResp { .. } => "VoteResp",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResp { .. } => "AppendResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResp { .. } => "HeartbeatResp",
            MessageBody::Snapshot { .. } => "Snapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResp { .. } => "ReadIndexResp",
        }
    }
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; has not bumped its term.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads the group.
    Leader,
}

/// Volatile state the host may want to observe (not persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Known leader, or [`NO_NODE`].
    pub leader: NodeId,
    /// This node's role.
    pub role: Role,
}

/// Outcome of a linearizable read request made with `read_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller passed to `read_index`.
    pub request_id: u64,
    /// Serve the read once the state machine has applied this index. `None` means the read
    /// could not be confirmed (leadership lost); the caller should retry.
    pub index: Option<Index>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_state_round_trips_through_its_encoding() {
        let cs = ConfState {
            voters: [1, 2, 3].into(),
            outgoing: [1, 2, 4].into(),
            learners: [9].into(),
        };
        assert_eq!(ConfState::decode(&cs.encode()).unwrap(), cs);
    }

    #[test]
    fn conf_state_decode_refuses_unknown_version_and_truncation() {
        let mut bytes = ConfState::with_voters([1]).encode().to_vec();
        assert_eq!(
            ConfState::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        bytes[0] = 7;
        assert_eq!(
            ConfState::decode(&bytes),
            Err(DecodeError::UnknownVersion(7))
        );
    }
}
