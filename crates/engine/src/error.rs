//! Engine errors. Retriable ones (`NotLeader`, `Timeout`, `Dropped`, `Busy`) are kept apart
//! from caller mistakes (`TooLarge`, `GroupNotFound`, `InvalidConfig`) and from fatal ones
//! (`Storage`, `ShuttingDown`).

use flotilla_raft::NodeId;

use crate::codec::GroupId;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// This replica is not the leader; retry at `leader_hint` if known.
    #[error("group {group}: not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// No such group on this node host.
    #[error("group {0} not found on this node")]
    GroupNotFound(GroupId),
    /// The group already runs here.
    #[error("group {0} already started on this node")]
    GroupExists(GroupId),
    /// The operation did not complete in time; its effect is unknown.
    #[error("timed out after {ms} ms; the outcome is unknown")]
    Timeout {
        /// How long the caller waited.
        ms: u64,
    },
    /// The proposal is larger than the configured bound.
    #[error("proposal of {bytes} bytes exceeds max_proposal_bytes = {max}")]
    TooLarge {
        /// Size of the proposal.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The proposal was lost (leadership changed before it committed); it did not apply.
    #[error("proposal dropped: {0}")]
    Dropped(String),
    /// The group refused for now (transfer in progress, uncommitted limit, change pending).
    #[error("busy: {0}")]
    Busy(String),
    /// The request is invalid (bad membership change, bad transfer target).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The node host is shutting down.
    #[error("node host is shutting down")]
    ShuttingDown,
    /// Log storage failed; the node host stops.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
}

impl EngineError {
    /// True if retrying (perhaps at another node, perhaps later) can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            EngineError::NotLeader { .. }
                | EngineError::Timeout { .. }
                | EngineError::Dropped(_)
                | EngineError::Busy(_)
        )
    }

    pub(crate) fn from_raft(group: GroupId, e: flotilla_raft::Error) -> EngineError {
        use flotilla_raft::Error as R;
        match e {
            R::NotLeader { leader_hint } => EngineError::NotLeader { group, leader_hint },
            R::TransferInProgress { .. }
            | R::UncommittedLimitExceeded { .. }
            | R::TooManyPendingReads { .. }
            | R::ConfChangePending => EngineError::Busy(e.to_string()),
            R::InvalidConfChange(_) | R::InvalidTransferTarget(_) => {
                EngineError::Invalid(e.to_string())
            }
            R::InvalidConfig(why) => EngineError::InvalidConfig(why),
            R::Storage(s) => EngineError::Storage(s.to_string()),
            other => EngineError::Invalid(other.to_string()),
        }
    }
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
