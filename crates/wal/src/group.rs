//! [`WalGroup`]: one group's view of the shared log, implementing the raft core's
//! [`Storage`] seam, plus the mutators a host needs (mirroring `MemStorage`'s).

use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{
    ConfState, Entry, HardState, Index, Snapshot, SnapshotMeta, Storage, StorageError, Term,
};

use crate::error::{GroupId, Result};
use crate::wal::{GroupWrite, Wal};

/// A handle on one group in a shared [`Wal`]. Cheap to clone.
///
/// Reads implement [`Storage`]: everything they return is durable. Mutators are durable on
/// return. Issue one group's mutations one at a time (see [`Wal`]).
#[derive(Clone, Debug)]
pub struct WalGroup {
    wal: Arc<Wal>,
    group: GroupId,
}

impl WalGroup {
    /// The handle for `group` in `wal`.
    pub fn new(wal: Arc<Wal>, group: GroupId) -> WalGroup {
        WalGroup { wal, group }
    }

    /// The group id.
    pub fn id(&self) -> GroupId {
        self.group
    }

    /// The shared log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// Records a new group's initial membership (a snapshot at index 0 with no data), as
    /// `MemStorage::new_with_conf_state` does.
    pub fn bootstrap(&self, conf_state: ConfState) -> Result<()> {
        let meta = SnapshotMeta {
            index: 0,
            term: 0,
            conf_state,
        };
        self.wal.save_snapshot(
            self.group,
            &Snapshot {
                meta,
                data: Bytes::new(),
            },
            false,
        )
    }

    /// Persists entries (overwriting a conflicting suffix) and/or a hard state.
    pub fn persist(&self, entries: Vec<Entry>, hard_state: Option<HardState>) -> Result<()> {
        self.wal.append(&[GroupWrite {
            group: self.group,
            entries,
            hard_state,
        }])
    }

    /// Appends entries, as `MemStorage::append`.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        self.persist(entries.to_vec(), None)
    }

    /// Persists the hard state, as `MemStorage::set_hard_state`.
    pub fn set_hard_state(&self, hs: HardState) -> Result<()> {
        self.persist(Vec::new(), Some(hs))
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.wal.hard_state(self.group)
    }

    /// Installs a leader's snapshot, as `MemStorage::apply_snapshot`: ignored unless newer;
    /// entries after it are kept if the log agrees at its index; commit is raised to it.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        if snapshot.meta.index <= self.wal.snapshot_meta(self.group).index {
            return Ok(());
        }
        self.wal
            .save_snapshot_inner(self.group, &snapshot, true, true)
    }

    /// Records a snapshot the host produced at `index` and drops the log up to it, as
    /// `MemStorage::create_snapshot`.
    pub fn create_snapshot(&self, index: Index, conf_state: ConfState, data: Bytes) -> Result<()> {
        let term = self.wal.term(self.group, index)?;
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        self.wal.save_snapshot(self.group, &snapshot, true)
    }

    /// Drops entries up to `index` (which a snapshot must cover).
    pub fn compact(&self, index: Index) -> Result<()> {
        self.wal.compact(self.group, index)
    }
}

impl Storage for WalGroup {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        Ok((
            self.wal.hard_state(self.group),
            self.wal.snapshot_meta(self.group).conf_state,
        ))
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        Ok(self.wal.entries(self.group, lo, hi, max_bytes)?)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        Ok(self.wal.term(self.group, index)?)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.wal.first_index(self.group))
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.wal.last_index(self.group))
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.wal.load_snapshot(self.group)?)
    }
}
