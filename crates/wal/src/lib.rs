//! # flotilla-wal
//!
//! The durable log engine shared by every Raft group of a node. It owns the segmented,
//! append-only, CRC32C-checked log files; group commit (one `fdatasync` covers the batches of
//! many groups and many threads); the per-group index from entry index to file position and a
//! bounded read cache; compaction, rewrite of old live state and segment GC; snapshot files;
//! and crash recovery, which reads only what checksums prove, truncates a torn tail and
//! reports damage in the middle of the log as an error naming the file and offset.
//!
//! It must not know about Raft roles, messages or networking: it stores entries, hard states,
//! compaction points and snapshots for opaque group ids, and answers reads.
//!
//! The API is blocking; an async host wraps calls in `spawn_blocking`. Each group is driven by
//! one caller at a time (see [`Wal`]), different groups concurrently.
//!
//! # Layout
//! - [`wal`] — [`Wal`]: submission, reads, compaction, snapshots, opening.
//! - `writer` — the group-commit writer thread: one write + one `fdatasync` per batch,
//!   rotation, rewrite of groups pinning old segments, segment GC.
//! - `recovery` — replay, torn-tail truncation, corruption errors, snapshot file checks.
//! - [`group`] — [`WalGroup`], one group's handle, implementing [`flotilla_raft::Storage`].
//! - [`record`] — the on-disk frame and record format and its decoder (fuzzed in `fuzz/`).
//! - [`snapshot`](mod@snapshot) — snapshot file format; written via temp file, sync, rename, dir sync.
//! - `index` — the in-memory per-group index and read cache; the one place records take effect.
//! - [`vfs`] — the storage seam ([`Vfs`], [`VFile`]) with the real file system and an in-memory,
//!   crash- and fault-injecting disk ([`MemVfs`]) for tests.
//! - [`error`] — [`Error`].
//!
//! The on-disk format is described in `docs/wal.md`.
#![warn(missing_docs)]
// The log does I/O by nature: it spawns its writer thread and measures the group-commit wait
// with a clock. The determinism bans of clippy.toml are for the sans-IO crates, not this one.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod error;
pub mod group;
mod index;
pub mod record;
mod recovery;
pub mod snapshot;
pub mod vfs;
pub mod wal;
mod writer;

pub use error::{Error, GroupId, Result};
pub use group::WalGroup;
pub use recovery::{RecoveryReport, TornTail};
pub use vfs::{MemVfs, RealVfs, VFile, Vfs};
pub use wal::{GroupWrite, Wal, WalConfig, WalStats, SYNC_LATENCY_BUCKETS_US};
