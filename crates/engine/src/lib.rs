//! # flotilla-engine
//!
//! The multi-raft node host: many Raft groups in one process ([`NodeHost`]). It drives ticks,
//! batches the persistence of every group's `Ready` into one durable write (group commit),
//! batches messages of many groups into one send per peer, applies committed entries to user
//! [`StateMachine`]s off the consensus path, and exposes propose / read / membership /
//! leader-transfer / events APIs.
//!
//! It must not know what the bytes in an entry mean: state machines do.
//!
//! # Layout
//! - [`host`]: [`NodeHost`], its consensus thread and API; `host::stream` streams big
//!   snapshots in flow-controlled, resumable chunks.
//! - `apply`: apply workers running the state machines.
//! - [`storage`]: the [`LogBackend`] seam (shared WAL, in-memory) and per-group logs.
//! - [`network`]: the [`PeerNetwork`] seam and an in-process network for tests.
//! - [`transport`]: the TCP peer transport — one outbound connection per peer with a bounded
//!   queue, batching, reconnect with backoff; inbound accept loop; fault hooks for tests.
//! - [`codec`]: the wire format — frames, the `Hello` handshake, batches of [`Envelope`]s,
//!   snapshot chunks and acks ([`StreamMsg`]).
//! - [`state_machine`]: the [`StateMachine`] contract.
#![warn(missing_docs)]
// The engine does I/O by design: it owns threads, clocks (the tick timer) and sockets, so the
// determinism bans in clippy.toml (meant for raft, sim and the state machines) do not apply.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod apply;
pub mod codec;
pub mod error;
pub mod host;
pub mod network;
pub mod state_machine;
pub mod storage;
pub mod transport;

pub use codec::{Envelope, GroupId, SnapshotAck, SnapshotChunk, StreamMsg};
pub use error::{EngineError, Result};
pub use host::{
    Event, NodeHost, NodeHostConfig, ProposalStats, SnapshotStreamStats,
    PROPOSAL_LATENCY_BUCKETS_US,
};
pub use network::{pump_inbound, InboundSink, LocalNetwork, PeerNetwork, SendError};
pub use state_machine::{AppliedEntry, StateMachine};
pub use storage::{GroupLog, GroupWriteBatch, LogBackend, MemBackend, WalBackend};
pub use transport::{Transport, TransportConfig};
// Raft types that appear in this crate's API (status, membership, events).
pub use flotilla_raft::{ConfChangeOp, ConfState, NodeId, Role, Status};
