//! # flotilla-engine
//!
//! The multi-Raft node host: it runs many Raft groups in one process and does their I/O. It owns
//! the peer transport (TCP connections between nodes, with messages for many groups batched into
//! one checksummed frame), and — as the rest of the engine lands — ticking, persistence through
//! the WAL, the apply pipeline, snapshots and membership.
//!
//! It must not know what the bytes in an entry mean (state machines do), and it must not grow
//! memory without bound: every queue, frame and connection count has a configured limit, and
//! exceeding one is an error the caller sees (see DESIGN.md, "Rules that keep data safe").
//!
//! # Layout
//! - [`codec`]: the wire format — frames, the `Hello` handshake, batches of [`codec::Envelope`]s.
//! - [`transport`]: the TCP peer transport — one outbound connection per peer with a bounded
//!   queue, batching, reconnect with backoff; inbound accept loop; fault hooks for tests.
#![warn(missing_docs)]
// The engine does I/O by design: it reads clocks for timeouts and backoff, spawns tokio tasks per
// connection and uses real sockets. The workspace clippy.toml bans those APIs for the
// deterministic crates (raft, sim, state machines); this crate opts out.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod codec;
pub mod transport;
