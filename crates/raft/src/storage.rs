//! The log-storage seam: where durable entries live.
//!
//! The core keeps entries that are not yet durable in memory (its "unstable" log) and reads
//! everything else through [`Storage`]. The host persists what a `Ready` hands it, into its
//! storage, before calling `advance`. Any backend — [`MemStorage`] for tests and the simulator,
//! the shared WAL, a per-partition segment store — plugs in here.

use crate::types::{ConfState, Entry, HardState, Index, Snapshot, Term};

/// Errors from a log-storage backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is at or below the compaction point (use the snapshot instead).
    #[error("index {index} is compacted (first available index is {first_index})")]
    Compacted {
        /// What was asked for.
        index: Index,
        /// First index still in the log.
        first_index: Index,
    },
    /// The requested index is beyond the last stored entry.
    #[error("index {index} is unavailable (last index is {last_index})")]
    Unavailable {
        /// What was asked for.
        index: Index,
        /// Last stored index.
        last_index: Index,
    },
    /// The snapshot is being produced; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The backend failed (I/O, corruption). The group cannot continue safely.
    #[error("storage failure: {0}")]
    Failed(String),
}

/// Read access to durable Raft state.
///
/// # To ensure correctness
/// - Everything returned must be durable: the core sends acknowledgements based on it.
/// - `first_index()` is `snapshot().meta.index + 1`; `term(first_index() - 1)` returns the
///   snapshot's term; smaller indexes return [`StorageError::Compacted`].
/// - `initial_state()` returns the configuration as of the `applied` index the host passes in
///   `Config::applied` (for [`MemStorage`]: as of its snapshot).
pub trait Storage {
    /// Durable hard state and configuration, read once when the node starts.
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError>;
    /// Entries in `[lo, hi)`, stopping early once their total [`Entry::size_bytes`] would exceed
    /// `max_bytes` (but always at least one entry if `lo < hi`).
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// First index still held (one past the snapshot).
    fn first_index(&self) -> Result<Index, StorageError>;
    /// Last index held (the snapshot index when the log is empty).
    fn last_index(&self) -> Result<Index, StorageError>;
    /// The latest snapshot, sent to followers that are too far behind.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// A boxed storage (e.g. `Box<dyn SomeStorageTrait>`) is a storage, so hosts can choose the
/// backend per group at run time.
impl<S: Storage + ?Sized> Storage for Box<S> {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        (**self).initial_state()
    }
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(lo, hi, max_bytes)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        (**self).term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        (**self).first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        (**self).last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        (**self).snapshot()
    }
}

/// Takes entries from `iter` while their cumulative size stays within `max_bytes`, always
/// taking the first. Shared by storage backends so they bound reads the same way.
pub fn limit_size(entries: &mut Vec<Entry>, max_bytes: u64) {
    let mut total = 0u64;
    let mut keep = 0;
    for e in entries.iter() {
        total += e.size_bytes();
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    entries.truncate(keep);
}

/// An in-memory [`Storage`] that the host mutates as it persists `Ready`s. "Durable" here means
/// "survives a simulated crash": the simulator keeps it across restarts of the node.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.meta.index + 1` when non-empty.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// Storage for a brand-new member of a group whose initial configuration is `conf_state`.
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        let mut s = MemStorage::default();
        s.snapshot.meta.conf_state = conf_state;
        s
    }

    /// Persists the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Appends `entries`, first discarding any stored suffix they overwrite (Raft's conflict
    /// resolution). Entries at or below the snapshot are ignored.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let snap_index = self.snapshot.meta.index;
        let skip = snap_index.saturating_sub(first.index - 1) as usize;
        let entries = &entries[skip.min(entries.len())..];
        let Some(first) = entries.first() else { return };
        assert!(
            first.index <= self.last_index_inner() + 1,
            "append at {} would leave a gap after last index {}",
            first.index,
            self.last_index_inner()
        );
        let keep = (first.index - snap_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Replaces the whole log with `snapshot` (a follower installing its leader's snapshot).
    /// Entries after the snapshot that agree with it are kept.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let idx = snapshot.meta.index;
        if idx <= self.snapshot.meta.index {
            return;
        }
        let agrees = self.term_inner(idx) == Ok(snapshot.meta.term);
        if agrees {
            let drop = (idx - self.snapshot.meta.index) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.hard_state.commit = self.hard_state.commit.max(idx);
        self.snapshot = snapshot;
    }

    /// Records a snapshot the host produced at `index` (already applied) and drops the log
    /// prefix up to it.
    pub fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: bytes::Bytes) {
        assert!(
            index > self.snapshot.meta.index,
            "snapshot at {index} is not newer"
        );
        assert!(
            index <= self.last_index_inner(),
            "snapshot at {index} is beyond the log"
        );
        let term = self
            .term_inner(index)
            .expect("index checked to be in the log");
        let drop = (index - self.snapshot.meta.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = Snapshot {
            meta: crate::SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
    }

    fn last_index_inner(&self) -> Index {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn term_inner(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.meta;
        if index < snap.index {
            return Err(StorageError::Compacted {
                index,
                first_index: snap.index + 1,
            });
        }
        if index == snap.index {
            return Ok(snap.term);
        }
        let last_index = self.last_index_inner();
        if index > last_index {
            return Err(StorageError::Unavailable { index, last_index });
        }
        Ok(self.entries[(index - snap.index - 1) as usize].term)
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        Ok((self.hard_state, self.snapshot.meta.conf_state.clone()))
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let snap_index = self.snapshot.meta.index;
        if lo <= snap_index {
            return Err(StorageError::Compacted {
                index: lo,
                first_index: snap_index + 1,
            });
        }
        let last_index = self.last_index_inner();
        if hi > last_index + 1 {
            return Err(StorageError::Unavailable {
                index: hi - 1,
                last_index,
            });
        }
        let from = (lo - snap_index - 1) as usize;
        let to = (hi - snap_index - 1) as usize;
        let mut out = self.entries[from..to].to_vec();
        limit_size(&mut out, max_bytes);
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.term_inner(index)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.snapshot.meta.index + 1)
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;

    fn ent(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: bytes::Bytes::new(),
        }
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.append(&[ent(2, 2)]);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
    }

    #[test]
    fn compacted_and_unavailable_indexes_are_errors() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]);
        s.create_snapshot(2, ConfState::with_voters([1]), bytes::Bytes::new());
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(matches!(s.term(1), Err(StorageError::Compacted { .. })));
        assert!(matches!(s.term(4), Err(StorageError::Unavailable { .. })));
        assert!(matches!(
            s.entries(2, 4, u64::MAX),
            Err(StorageError::Compacted { .. })
        ));
        assert_eq!(s.entries(3, 4, u64::MAX).unwrap(), vec![ent(3, 2)]);
    }

    #[test]
    fn entries_are_limited_by_size_but_never_empty() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 2 * ENTRY_OVERHEAD_BYTES).unwrap().len(), 2);
    }

    use crate::types::ENTRY_OVERHEAD_BYTES;
}
