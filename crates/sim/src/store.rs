//! The simulated nodes' durable storage, behind a seam so a real log engine (the WAL, over
//! its in-memory file system) can stand in for `MemStorage`.

use std::any::Any;
use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_raft::{ConfState, Entry, HardState, Index, MemStorage, NodeId, Snapshot, Storage};

/// Durable storage of one simulated node: the raft `Storage` plus the writes a host makes.
///
/// # To ensure correctness
/// A write is durable when its call returns: a crash right after keeps it.
pub trait SimStore: Storage + Send {
    /// Appends entries, overwriting a conflicting suffix.
    fn append(&mut self, entries: &[Entry]);
    /// Persists the hard state.
    fn set_hard_state(&mut self, hs: HardState);
    /// Installs a leader's snapshot.
    fn apply_snapshot(&mut self, snapshot: Snapshot);
    /// Records a local snapshot at `index` and compacts.
    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes);
    /// For factories to recover their concrete type when a node crashes.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// Opens a node's storage when it starts and takes it back when it crashes.
pub trait StoreFactory {
    /// Storage for node `id` as it survived its last crash (`bootstrap`: initial membership
    /// of a node that has never run).
    fn open(&mut self, id: NodeId, bootstrap: Option<&ConfState>) -> Box<dyn SimStore>;
    /// Node `id` crashed holding `store`.
    fn crash(&mut self, id: NodeId, store: Box<dyn SimStore>);
}

impl SimStore for MemStorage {
    fn append(&mut self, entries: &[Entry]) {
        MemStorage::append(self, entries)
    }
    fn set_hard_state(&mut self, hs: HardState) {
        MemStorage::set_hard_state(self, hs)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        MemStorage::apply_snapshot(self, snapshot)
    }
    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes) {
        MemStorage::create_snapshot(self, index, conf_state, data)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// `MemStorage` per node; a crash keeps it whole (everything written was "synced").
#[derive(Default)]
pub struct MemStores {
    parked: BTreeMap<NodeId, MemStorage>,
}

impl StoreFactory for MemStores {
    fn open(&mut self, id: NodeId, bootstrap: Option<&ConfState>) -> Box<dyn SimStore> {
        let store = self.parked.remove(&id).unwrap_or_else(|| match bootstrap {
            Some(conf) => MemStorage::new_with_conf_state(conf.clone()),
            None => MemStorage::default(),
        });
        Box::new(store)
    }

    fn crash(&mut self, id: NodeId, store: Box<dyn SimStore>) {
        let mem = store
            .into_any()
            .downcast::<MemStorage>()
            .expect("MemStores opens MemStorage");
        self.parked.insert(id, *mem);
    }
}
