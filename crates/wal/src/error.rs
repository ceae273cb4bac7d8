//! The crate's one error type.
//!
//! Retriable or caller mistakes (`Compacted`, `Unavailable`, `BatchTooLarge`, `GroupBusy`,
//! `InvalidAppend`) are kept apart from fatal ones (`Corrupted`, `Io`, `Poisoned`): after a fatal
//! error the log must be reopened (recovery decides what is durable), never retried in place.

use std::path::PathBuf;
use std::sync::Arc;

use flotilla_raft::{Index, StorageError};

/// Identifies a Raft group in the shared log.
pub type GroupId = u64;

/// Everything that can go wrong in the log engine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed. After a failed write or sync the log is poisoned (see `Poisoned`):
    /// retrying `fdatasync` after a failure can report success for data the kernel dropped.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// What we were doing (`"write"`, `"sync"`, `"open"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A checksum or framing failure that is not a torn tail: data in the middle of the log (a
    /// sealed segment, or before records that do verify) is damaged. Never skipped silently.
    #[error("corrupted log: {file} at offset {offset}: {reason}")]
    Corrupted {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first record (or header) that fails to verify.
        offset: u64,
        /// What failed (checksum, length, decoding).
        reason: String,
    },
    /// A file carries a format version this build does not understand.
    #[error("{file} at offset {offset}: unknown format version {version} (this build reads version {supported})")]
    UnknownVersion {
        /// The file.
        file: PathBuf,
        /// Offset of the header or record carrying the version.
        offset: u64,
        /// Version found.
        version: u32,
        /// Version this build writes and reads.
        supported: u32,
    },
    /// A snapshot file is missing, damaged or does not match the log's record of it.
    #[error("snapshot {file}: {reason}")]
    BadSnapshot {
        /// The snapshot file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A batch is larger than the configured bound.
    #[error("batch of {bytes} bytes exceeds max_batch_bytes = {max_batch_bytes}")]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: u64,
        /// The bound.
        max_batch_bytes: u64,
    },
    /// Another operation for the same group is still in flight. Operations of one group must
    /// be issued one at a time (different groups may call concurrently).
    #[error("group {group} already has an operation in flight (or appears twice in one batch)")]
    GroupBusy {
        /// The group.
        group: GroupId,
    },
    /// An append would leave a hole in the group's log.
    #[error("group {group}: append at index {first_index} would leave a gap after last index {last_index}")]
    InvalidAppend {
        /// The group.
        group: GroupId,
        /// First index of the appended entries.
        first_index: Index,
        /// Group's last index.
        last_index: Index,
    },
    /// Entries passed to `append` are not consecutive.
    #[error("group {group}: entries are not consecutive at index {index}")]
    NonConsecutiveEntries {
        /// The group.
        group: GroupId,
        /// The first index that breaks the sequence.
        index: Index,
    },
    /// A compaction beyond what a snapshot covers would lose data.
    #[error(
        "group {group}: cannot compact to {index}: snapshot only covers up to {snapshot_index}"
    )]
    CompactBeyondSnapshot {
        /// The group.
        group: GroupId,
        /// Requested compaction index.
        index: Index,
        /// Index of the group's latest snapshot.
        snapshot_index: Index,
    },
    /// A snapshot that is not newer than the one the group already has, or is malformed.
    #[error("group {group}: invalid snapshot at index {index}: {reason}")]
    InvalidSnapshot {
        /// The group.
        group: GroupId,
        /// Snapshot index.
        index: Index,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The index is at or below the compaction point.
    #[error("group {group}: index {index} is compacted (first index is {first_index})")]
    Compacted {
        /// The group.
        group: GroupId,
        /// What was asked for.
        index: Index,
        /// First index still held.
        first_index: Index,
    },
    /// The index is beyond the last stored entry.
    #[error("group {group}: index {index} is unavailable (last index is {last_index})")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// What was asked for.
        index: Index,
        /// Last index held.
        last_index: Index,
    },
    /// An earlier write or sync failed; the log refuses further work until reopened.
    #[error("the log is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The log is shutting down.
    #[error("the log is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(e),
        }
    }
}

impl From<Error> for StorageError {
    fn from(e: Error) -> StorageError {
        match e {
            Error::Compacted {
                index, first_index, ..
            } => StorageError::Compacted { index, first_index },
            Error::Unavailable {
                index, last_index, ..
            } => StorageError::Unavailable { index, last_index },
            other => StorageError::Failed(other.to_string()),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
