//! # flotilla-kv
//!
//! The replicated KV state machine behind Flotilla's etcd-compatible store: an MVCC store with
//! one global revision (put, range, delete, txn, compaction), the watch events every write
//! records, and leases — plus the replicated command format and the
//! [`flotilla_engine::StateMachine`] that applies it.
//!
//! It must not read clocks, use randomness, spawn threads or iterate in a hash order (apply
//! runs on every replica and must give the same answer everywhere: time arrives in commands,
//! set by the leader), and must not reach into `raft` (only through `engine`). Only
//! [`server`] — the etcd v3 gRPC services, which do I/O by nature — opts out of the
//! determinism bans; nothing the state machine runs depends on it.
//!
//! # Layout
//! - [`mvcc`]: [`MvccStore`] — key histories, revisions, range/put/delete/txn, compaction,
//!   watch events ([`MvccStore::events_since`]), lease revoke.
//! - [`lease`]: [`LeaseTable`] — grant, keep-alive, expiry listing for the leader, TTL queries.
//! - [`command`]: the replicated [`Command`] and [`Response`] and their versioned, bounded
//!   binary encoding.
//! - [`state_machine`]: [`KvStateMachine`], the engine's `StateMachine`, with a versioned,
//!   CRC32C-checked snapshot format.
//! - [`error`]: [`KvError`], the crate's one error type.
//! - [`proto`]: etcd's v3 API protobuf types and tonic services, generated at build time
//!   (vendored protoc) from `proto/` (etcd's package names and field numbers).
//! - [`server`]: [`server::KvServer`] — KV, Watch, Lease, Cluster, Maintenance and Lock
//!   services over the engine, write forwarding to the leader, the leader's lease-expiry and
//!   auto-compaction loop.
#![warn(missing_docs)]

pub mod command;
pub mod error;
pub mod lease;
pub mod mvcc;
pub mod proto;
pub mod server;
pub mod state_machine;

pub use command::{Command, Response, ResponseBody};
pub use error::{KvError, Result};
pub use lease::{Lease, LeaseTable, LeaseTimeToLive};
pub use mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyValue, Limits, MvccStore, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
pub use state_machine::KvStateMachine;
