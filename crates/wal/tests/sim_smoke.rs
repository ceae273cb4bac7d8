//! The cluster simulator running on the WAL instead of `MemStorage`: every simulated node
//! keeps its log in its own `Wal` over an in-memory file system; a crash drops the `Wal`,
//! power-cuts the file system (unsynced bytes are lost) and the restart recovers from it.
//! A smoke test of the integration, for a few seeds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{
    ConfState, Entry, HardState, Index, NodeId, Snapshot, Storage, StorageError, Term,
};
use flotilla_sim::{run_seed_with, RunOptions, SimStore, StoreFactory};
use flotilla_wal::{MemVfs, Wal, WalConfig, WalGroup};

const GROUP: u64 = 1;

struct WalStore(WalGroup);

impl Storage for WalStore {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        self.0.initial_state()
    }
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.0.entries(lo, hi, max_bytes)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.0.term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.0.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.0.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.0.snapshot()
    }
}

impl SimStore for WalStore {
    fn append(&mut self, entries: &[Entry]) {
        self.0.append(entries).expect("wal append");
    }
    fn set_hard_state(&mut self, hs: HardState) {
        self.0.set_hard_state(hs).expect("wal hard state");
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.0.apply_snapshot(snapshot).expect("wal snapshot");
    }
    fn create_snapshot(&mut self, index: Index, conf_state: ConfState, data: Bytes) {
        self.0
            .create_snapshot(index, conf_state, data)
            .expect("wal snapshot");
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

#[derive(Default)]
struct WalStores {
    disks: BTreeMap<NodeId, MemVfs>,
    recoveries: Arc<std::sync::atomic::AtomicU64>,
}

fn config() -> WalConfig {
    // Small segments so rotation, GC and rewrite all happen within a run.
    WalConfig {
        segment_max_bytes: 16 << 10,
        rewrite_after_segments: 4,
        ..WalConfig::default()
    }
}

impl StoreFactory for WalStores {
    fn open(&mut self, id: NodeId, bootstrap: Option<&ConfState>) -> Box<dyn SimStore> {
        let fresh = !self.disks.contains_key(&id);
        let vfs = self.disks.entry(id).or_default().clone();
        let (wal, _report) =
            Wal::open_with(Arc::new(vfs), Path::new("/wal"), config()).expect("recovery");
        if !fresh {
            self.recoveries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let group = WalGroup::new(Arc::new(wal), GROUP);
        if let (true, Some(conf)) = (fresh, bootstrap) {
            group.bootstrap(conf.clone()).expect("bootstrap");
        }
        Box::new(WalStore(group))
    }

    fn crash(&mut self, id: NodeId, store: Box<dyn SimStore>) {
        drop(store); // the Wal (and its writer thread) goes away with its last handle
        let disk = self.disks.remove(&id).expect("opened before");
        // Power cut: whatever was not fdatasync'ed is lost.
        self.disks.insert(id, disk.crash(|_, _| 0));
    }
}

#[test]
fn the_simulator_runs_on_the_wal_with_crashes_and_recovery() {
    let recoveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for seed in 1..=4 {
        let opts = RunOptions {
            steps_ms: 5_000,
            ..RunOptions::new(seed)
        };
        let r = recoveries.clone();
        let report = run_seed_with(&opts, move || {
            Box::new(WalStores {
                recoveries: r,
                ..Default::default()
            })
        });
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}",
            report.violations
        );
        assert!(report.ops_checked > 0);
    }
    let n = recoveries.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n > 0, "no node was ever recovered from its WAL");
}
