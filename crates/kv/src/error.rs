//! The crate's one error type.

/// Everything the KV state machine can refuse. The cases mirror etcd's server errors so the
/// gRPC layer can map them one to one (`ErrCompacted`, `ErrFutureRev`, `ErrLeaseNotFound`, …).
///
/// None of them is retriable by the KV itself: each describes a request that can never succeed
/// against the current state (a client may retry with a different request).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The requested revision is older than the compact revision: its data is gone.
    #[error(
        "required revision {revision} has been compacted (compact revision {compact_revision})"
    )]
    Compacted {
        /// The revision asked for.
        revision: i64,
        /// The store's compact revision: the oldest readable revision.
        compact_revision: i64,
    },
    /// The requested revision has not happened yet.
    #[error(
        "required revision {revision} is a future revision (current revision {current_revision})"
    )]
    FutureRevision {
        /// The revision asked for.
        revision: i64,
        /// The store's current revision.
        current_revision: i64,
    },
    /// No lease with this id exists (never granted, revoked, or expired and revoked).
    #[error("lease {id} not found")]
    LeaseNotFound {
        /// The lease id asked for.
        id: i64,
    },
    /// A lease with this id already exists.
    #[error("lease {id} already exists")]
    LeaseExists {
        /// The lease id asked for.
        id: i64,
    },
    /// A lease TTL outside `1..=max_lease_ttl_secs`.
    #[error("lease ttl of {ttl_secs} s is outside 1..={max_lease_ttl_secs} s")]
    LeaseTtlOutOfRange {
        /// The TTL asked for.
        ttl_secs: i64,
        /// The bound.
        max_lease_ttl_secs: i64,
    },
    /// A put or compare with an empty key (etcd's `ErrEmptyKey`).
    #[error("key is not provided")]
    EmptyKey,
    /// `ignore_value` / `ignore_lease` on a key that does not exist (etcd's `ErrKeyNotFound`).
    #[error("key not found")]
    KeyNotFound,
    /// A request whose fields contradict each other (for instance a value with `ignore_value`).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A key longer than the configured bound.
    #[error("key of {len} bytes exceeds max_key_bytes = {max_key_bytes}")]
    KeyTooLarge {
        /// The key's length.
        len: u64,
        /// The bound.
        max_key_bytes: u64,
    },
    /// A value longer than the configured bound.
    #[error("value of {len} bytes exceeds max_value_bytes = {max_value_bytes}")]
    ValueTooLarge {
        /// The value's length.
        len: u64,
        /// The bound.
        max_value_bytes: u64,
    },
    /// A txn with more compares or ops in one branch than the configured bound.
    #[error("txn has {ops} operations in one list, exceeding max_txn_ops = {max_txn_ops}")]
    TooManyOps {
        /// The number of compares or ops found in one list.
        ops: u64,
        /// The bound.
        max_txn_ops: u64,
    },
    /// Txns nested deeper than the bound.
    #[error("txn nested {depth} deep exceeds max_txn_depth = {max_txn_depth}")]
    TxnTooDeep {
        /// The depth found.
        depth: u64,
        /// The bound.
        max_txn_depth: u64,
    },
    /// A txn branch writes the same key twice (etcd's "duplicate key given in txn request").
    #[error("duplicate key given in txn request: {key:?}")]
    DuplicateKey {
        /// The key written twice (or put inside a deleted range).
        key: Vec<u8>,
    },
    /// Bytes that are not a valid encoded command, response or snapshot.
    #[error("malformed encoding: {reason}")]
    Malformed {
        /// What is wrong, and where.
        reason: String,
    },
    /// A snapshot whose checksum or contents are wrong.
    #[error("corrupted KV snapshot: {reason}")]
    CorruptedSnapshot {
        /// What is wrong.
        reason: String,
    },
    /// An encoding version this build does not understand.
    #[error("unsupported encoding version {version} (this build understands {supported})")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, KvError>;
