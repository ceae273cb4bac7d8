//! # flotilla (the binary's library half)
//!
//! Everything the `flotilla` binary does, as a library so integration tests can drive it:
//! config loading, running a node (`flotilla server`), a local dev cluster (`flotilla dev`),
//! the admin HTTP endpoints, logging, and the client CLI subcommands. No business logic lives
//! here: consensus is in `flotilla-engine`, the KV and its etcd API in `flotilla-kv`.
//!
//! # Layout
//! - [`cli`]: client subcommands (`kv`, `lease`, `lock`, `config`, `cluster`) over the etcd v3
//!   API with endpoint failover.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod cli;
