//! Where group logs live: the [`LogBackend`] seam. Each group's log is a [`GroupLog`] (the
//! raft core's `Storage` plus mutators); the backend persists a batch of writes from many
//! groups with one sync (group commit). The shared WAL is the default backend; tests use
//! [`MemBackend`]; the queue will plug in a per-partition segment store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_raft::{
    ConfState, Entry, HardState, Index, MemStorage, Snapshot, Storage, StorageError, Term,
};

use crate::codec::GroupId;
use crate::error::{EngineError, Result};

/// One group's share of a persisted batch: what its `Ready` said to persist.
#[derive(Clone, Debug, Default)]
pub struct GroupWriteBatch {
    /// The group.
    pub group: GroupId,
    /// Entries (the first may overwrite a stored suffix).
    pub entries: Vec<Entry>,
    /// New hard state, if changed.
    pub hard_state: Option<HardState>,
}

/// One group's durable log.
///
/// # To ensure correctness
/// Reads (the `Storage` methods) return only durable data, and reflect every write whose
/// call has returned.
pub trait GroupLog: Storage + Send {
    /// Installs a leader's snapshot durably (replacing the log up to it).
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()>;
    /// Records a snapshot taken locally at `index` and compacts the log up to it.
    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes) -> Result<()>;
}

/// A store of group logs.
///
/// # To ensure correctness
/// `persist` returns only once every write in the batch is durable (for a disk backend:
/// covered by an fdatasync). The node host sends no message that depends on a write before
/// `persist` has returned.
pub trait LogBackend: Send + Sync + 'static {
    /// Opens the log of `group`, creating it with `bootstrap` membership if it is new
    /// (`None`: a joining replica with no membership yet).
    fn open_group(
        &self,
        group: GroupId,
        bootstrap: Option<&ConfState>,
    ) -> Result<Box<dyn GroupLog>>;
    /// Durably persists writes of many groups at once.
    fn persist(&self, writes: Vec<GroupWriteBatch>) -> Result<()>;
    /// Deletes everything stored for `group`.
    fn remove_group(&self, group: GroupId) -> Result<()>;
}

type MemGroups = Arc<Mutex<BTreeMap<GroupId, MemStorage>>>;

/// In-memory backend. "Durable" means: survives a node host being dropped and started again
/// on the same `MemBackend` (clone it to share). For tests.
#[derive(Clone, Default)]
pub struct MemBackend {
    groups: MemGroups,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> Self {
        MemBackend::default()
    }
}

struct MemGroup {
    groups: MemGroups,
    group: GroupId,
}

impl MemGroup {
    fn with<T>(&self, f: impl FnOnce(&MemStorage) -> T) -> T {
        let g = self.groups.lock().expect("mem backend lock");
        f(g.get(&self.group).expect("group opened"))
    }

    fn with_mut<T>(&self, f: impl FnOnce(&mut MemStorage) -> T) -> T {
        let mut g = self.groups.lock().expect("mem backend lock");
        f(g.get_mut(&self.group).expect("group opened"))
    }
}

impl Storage for MemGroup {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        self.with(|s| s.initial_state())
    }
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.with(|s| s.entries(lo, hi, max_bytes))
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.with(|s| s.term(index))
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.with(|s| s.first_index())
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.with(|s| s.last_index())
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.with(|s| s.snapshot())
    }
}

impl GroupLog for MemGroup {
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        self.with_mut(|s| s.apply_snapshot(snapshot));
        Ok(())
    }

    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes) -> Result<()> {
        self.with_mut(|s| {
            if index > s.snapshot().expect("mem").meta.index {
                s.create_snapshot(index, conf_state, data);
            }
        });
        Ok(())
    }
}

impl LogBackend for MemBackend {
    fn open_group(
        &self,
        group: GroupId,
        bootstrap: Option<&ConfState>,
    ) -> Result<Box<dyn GroupLog>> {
        let mut g = self.groups.lock().expect("mem backend lock");
        g.entry(group).or_insert_with(|| match bootstrap {
            Some(conf) => MemStorage::new_with_conf_state(conf.clone()),
            None => MemStorage::default(),
        });
        Ok(Box::new(MemGroup {
            groups: self.groups.clone(),
            group,
        }))
    }

    fn persist(&self, writes: Vec<GroupWriteBatch>) -> Result<()> {
        let mut g = self.groups.lock().expect("mem backend lock");
        for w in writes {
            let s = g
                .get_mut(&w.group)
                .ok_or(EngineError::GroupNotFound(w.group))?;
            s.append(&w.entries);
            if let Some(hs) = w.hard_state {
                s.set_hard_state(hs);
            }
        }
        Ok(())
    }

    fn remove_group(&self, group: GroupId) -> Result<()> {
        self.groups.lock().expect("mem backend lock").remove(&group);
        Ok(())
    }
}

/// The default backend: every group in one shared write-ahead log ([`flotilla_wal::Wal`]),
/// one fdatasync per persisted batch.
pub struct WalBackend {
    wal: Arc<flotilla_wal::Wal>,
}

impl WalBackend {
    /// Opens (recovering) the log in `dir`.
    pub fn open(
        dir: impl Into<std::path::PathBuf>,
        config: flotilla_wal::WalConfig,
    ) -> Result<Self> {
        let (wal, report) = flotilla_wal::Wal::open(dir, config).map_err(wal_err)?;
        tracing::info!(?report, "write-ahead log opened");
        Ok(WalBackend { wal: Arc::new(wal) })
    }

    /// The shared log.
    pub fn wal(&self) -> &Arc<flotilla_wal::Wal> {
        &self.wal
    }
}

fn wal_err(e: flotilla_wal::Error) -> EngineError {
    EngineError::Storage(e.to_string())
}

impl GroupLog for flotilla_wal::WalGroup {
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        flotilla_wal::WalGroup::apply_snapshot(self, snapshot).map_err(wal_err)
    }

    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes) -> Result<()> {
        if index <= self.wal().snapshot_meta(self.id()).index {
            return Ok(()); // already covered by a newer snapshot
        }
        flotilla_wal::WalGroup::create_snapshot(self, index, conf_state, data).map_err(wal_err)
    }
}

impl LogBackend for WalBackend {
    fn open_group(
        &self,
        group: GroupId,
        bootstrap: Option<&ConfState>,
    ) -> Result<Box<dyn GroupLog>> {
        let handle = flotilla_wal::WalGroup::new(self.wal.clone(), group);
        let meta = self.wal.snapshot_meta(group);
        let fresh = meta.index == 0
            && meta.conf_state == ConfState::default()
            && self.wal.last_index(group) == 0
            && self.wal.hard_state(group) == HardState::default();
        if let (true, Some(conf)) = (fresh, bootstrap) {
            handle.bootstrap(conf.clone()).map_err(wal_err)?;
        }
        Ok(Box::new(handle))
    }

    fn persist(&self, writes: Vec<GroupWriteBatch>) -> Result<()> {
        let batch: Vec<flotilla_wal::GroupWrite> = writes
            .into_iter()
            .map(|w| flotilla_wal::GroupWrite {
                group: w.group,
                entries: w.entries,
                hard_state: w.hard_state,
            })
            .collect();
        self.wal.append(&batch).map_err(wal_err)
    }

    fn remove_group(&self, group: GroupId) -> Result<()> {
        self.wal.remove_group(group).map_err(wal_err)
    }
}
