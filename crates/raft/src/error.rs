//! Errors returned to the host. Retriable conditions (`NotLeader`, `TransferInProgress`,
//! `UncommittedLimitExceeded`, `ConfChangePending`) are kept apart from caller mistakes and
//! from fatal storage failures.

use crate::storage::StorageError;
use crate::types::NodeId;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Only the leader accepts proposals; the host should retry at `leader_hint` (if known).
    /// Proposals at followers are *rejected* with this error, never forwarded by the core.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals are refused until it ends.
    #[error("leadership transfer to node {to} in progress")]
    TransferInProgress {
        /// The transferee.
        to: NodeId,
    },
    /// Accepting the proposal would exceed the uncommitted-bytes bound.
    #[error("{bytes} uncommitted bytes would exceed max_uncommitted_bytes = {max}")]
    UncommittedLimitExceeded {
        /// Uncommitted bytes including the proposal.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// Too many ReadIndex requests are waiting.
    #[error("{pending} reads pending exceed max_pending_reads = {max}")]
    TooManyPendingReads {
        /// Reads already pending.
        pending: usize,
        /// The bound.
        max: usize,
    },
    /// A membership change is still in progress (one at a time).
    #[error("a membership change is already in progress")]
    ConfChangePending,
    /// The requested membership change is not allowed.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The leader-transfer target is not a voter.
    #[error("node {0} is not a voter and cannot become leader")]
    InvalidTransferTarget(NodeId),
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Log storage failed; the node cannot continue.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// True if retrying (perhaps at another node, perhaps later) can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::TransferInProgress { .. }
                | Error::UncommittedLimitExceeded { .. }
                | Error::TooManyPendingReads { .. }
                | Error::ConfChangePending
        )
    }
}
