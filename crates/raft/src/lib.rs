//! # flotilla-raft
//!
//! One Raft group as a pure, deterministic state machine ("sans-IO"). It owns election
//! (pre-vote, check-quorum), replication with per-follower flow control, commitment, snapshots,
//! joint-consensus membership with learners, leader transfer and ReadIndex reads.
//!
//! It must not do I/O, read clocks, spawn tasks or use global randomness: time advances only
//! through [`RawNode::tick`], and randomness comes from [`Config::seed`].
//!
//! # Using it
//! The host calls [`RawNode::tick`] on a timer, [`RawNode::step`] for each message from a peer
//! and [`RawNode::propose`] for client writes; whenever [`RawNode::has_ready`] is true it takes
//! a [`Ready`], persists / sends / applies it in the order documented there, and calls
//! [`RawNode::advance`]. Proposals at a follower are **rejected** with
//! [`Error::NotLeader`] carrying a leader hint; forwarding is the host's choice.
//!
//! # Layout
//! - [`types`]: entries, hard state, configuration, snapshots, messages.
//! - [`storage`]: the [`Storage`] seam for durable log state, and [`MemStorage`].
//! - `log`: durable log + unstable tail, commit and apply positions.
//! - [`progress`]: the leader's per-follower flow control (probe / replicate / snapshot).
//! - `quorum`: majority arithmetic for plain and joint configurations.
//! - `raft`: the protocol itself; [`raw_node`]: the `Ready`/`advance` hand-off.
#![warn(missing_docs)]

mod config;
mod error;
mod log;
pub mod progress;
mod quorum;
mod raft;
pub mod raw_node;
pub mod storage;
pub mod types;

pub use config::{Config, Faults};
pub use error::Error;
pub use progress::ProgressState;
pub use raft::{ConfChangeOp, PeerStatus, Status};
pub use raw_node::{RawNode, Ready};
pub use storage::{MemStorage, Storage, StorageError};
pub use types::*;
