//! The contract between the engine and the application state machines it replicates.

use bytes::Bytes;
use flotilla_raft::{Index, Term};

/// A committed application entry, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    /// Log index.
    pub index: Index,
    /// Term it was proposed in.
    pub term: Term,
    /// The bytes the proposer submitted (opaque to the engine).
    pub data: Bytes,
}

/// A replicated state machine of one group.
///
/// # To ensure correctness
/// - `apply` must be deterministic: the same entries from the same state give the same
///   results and state on every replica. No clocks, randomness or I/O whose outcome differs
///   between replicas inside `apply`; anything time-dependent travels in the entry.
/// - `apply` returns exactly one result per entry; the engine hands the result to the
///   proposer's future (on the replica where it was proposed).
/// - `snapshot` captures everything `apply` has done so far; `restore` replaces the whole
///   state with a snapshot's (the engine calls it on start and when a leader sends one).
pub trait StateMachine: Send + 'static {
    /// Applies committed entries in order.
    fn apply(&mut self, entries: &[AppliedEntry]) -> Vec<Bytes>;
    /// Serializes the state.
    fn snapshot(&self) -> Bytes;
    /// Replaces the state with a snapshot's (empty `data`: the initial, empty state).
    fn restore(&mut self, data: &Bytes);
}
