//! The WAL's group handle answers the raft core's `Storage` trait exactly like `MemStorage`
//! after the same operations — before and after a reopen, with and without the read cache.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{observe, op_strategy, Op, GROUPS};
use flotilla_raft::{ConfState, MemStorage};
use flotilla_wal::{MemVfs, Wal, WalConfig, WalGroup};
use proptest::prelude::*;

fn config(cache: bool) -> WalConfig {
    WalConfig {
        segment_max_bytes: 512,
        rewrite_after_segments: 2,
        read_cache_max_bytes: if cache { 1 << 20 } else { 0 },
        ..WalConfig::default()
    }
}

fn check_all(wal: &Arc<Wal>, models: &BTreeMap<u64, MemStorage>) -> Result<(), TestCaseError> {
    for g in 0..GROUPS {
        let model = models.get(&g).cloned().unwrap_or_default();
        prop_assert_eq!(
            observe(&WalGroup::new(wal.clone(), g)),
            observe(&model),
            "group {}",
            g
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn wal_group_answers_storage_queries_like_mem_storage(
        ops in proptest::collection::vec(op_strategy(), 1..30),
        cache in any::<bool>(),
    ) {
        let vfs = MemVfs::new();
        let open = || Arc::new(Wal::open_with(Arc::new(vfs.clone()), "/wal", config(cache)).unwrap().0);
        let wal = open();
        let mut models = BTreeMap::new();
        // A new group's initial membership, as MemStorage::new_with_conf_state records it.
        let conf = ConfState::with_voters([1, 2, 3]);
        WalGroup::new(wal.clone(), 2).bootstrap(conf.clone()).unwrap();
        models.insert(2, MemStorage::new_with_conf_state(conf));
        check_all(&wal, &models)?;
        for (seq, op) in ops.iter().enumerate() {
            let Some(c) = op.resolve(&models, seq as u64) else { continue };
            c.apply_wal(&wal).unwrap();
            c.apply_model(&mut models);
            if matches!(op, Op::Append(_)) && seq % 3 != 0 {
                continue; // observing is quadratic; sample appends, check every snapshot
            }
            check_all(&wal, &models)?;
        }
        check_all(&wal, &models)?;
        drop(wal);
        check_all(&open(), &models)?;
    }
}
