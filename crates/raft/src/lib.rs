//! # flotilla-raft
//!
//! One Raft group as a pure, deterministic state machine ("sans-IO"). It owns election
//! (pre-vote, check-quorum), replication with per-follower flow control, commitment, snapshots,
//! joint-consensus membership with learners, leader transfer and ReadIndex reads.
//!
//! It must not do I/O, read clocks, spawn tasks or use global randomness: time advances only
//! through `tick()`, and randomness comes from the seed in `Config`.
//!
//! # Layout
//! - [`types`]: entries, hard state, configuration, snapshots, messages.
//! - [`storage`]: the [`Storage`] seam for durable log state, and [`MemStorage`].
#![warn(missing_docs)]

pub mod storage;
pub mod types;

pub use storage::{MemStorage, Storage, StorageError};
pub use types::*;
