//! Crash consistency: random Raft-like histories over several groups, cut by power failures
//! (unsynced writes dropped or torn at a random byte, optionally right after an injected
//! `fdatasync` failure). After every reopen, each group must be exactly as acknowledged — or,
//! for a group touched by the one operation that failed, as acknowledged plus that operation.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{observe, op_strategy, Concrete, Op, GROUPS};
use flotilla_raft::MemStorage;
use flotilla_wal::{MemVfs, Wal, WalConfig, WalGroup};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    /// Power cut. With `fail_sync`, the next operation runs first with a fault armed: after
    /// that many successful `fdatasync`s, syncs fail (so the failure may hit the operation's
    /// own commit, its snapshot file, or a rotation or rewrite that follows it).
    /// `keep_permille` of the unsynced bytes survive the cut.
    Crash {
        fail_sync: Option<u64>,
        keep_permille: u64,
    },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => op_strategy().prop_map(Step::Op),
        1 => (proptest::option::of(0..3u64), 0..=1000u64)
            .prop_map(|(fail_sync, keep_permille)| Step::Crash { fail_sync, keep_permille }),
    ]
}

fn config(segment_max_bytes: u64) -> WalConfig {
    WalConfig {
        segment_max_bytes,
        rewrite_after_segments: 2,
        // Small, so rewrites of pinning groups are split across rotations too.
        max_batch_bytes: 1024,
        read_cache_max_bytes: 300,
        ..WalConfig::default()
    }
}

struct Run {
    vfs: MemVfs,
    wal: Arc<Wal>,
    config: WalConfig,
    /// What has been acknowledged, per group.
    models: BTreeMap<u64, MemStorage>,
}

impl Run {
    fn open(vfs: MemVfs, config: &WalConfig) -> Arc<Wal> {
        Arc::new(
            Wal::open_with(Arc::new(vfs), "/wal", config.clone())
                .expect("recovery")
                .0,
        )
    }

    fn crash_and_check(
        &mut self,
        keep_permille: u64,
        pending: Option<Concrete>,
    ) -> Result<(), TestCaseError> {
        let crashed = self.vfs.crash(|_, n| n * keep_permille / 1000);
        self.vfs = crashed;
        self.wal = Run::open(self.vfs.clone(), &self.config);
        let mut with_pending = self.models.clone();
        let touched = pending.as_ref().map(|p| p.groups()).unwrap_or_default();
        if let Some(p) = &pending {
            p.apply_model(&mut with_pending);
        }
        for g in 0..GROUPS {
            let got = observe(&WalGroup::new(self.wal.clone(), g));
            let acked = self.models.get(&g).cloned().unwrap_or_default();
            if got == observe(&acked) {
                continue;
            }
            let maybe = with_pending.get(&g).cloned().unwrap_or_default();
            prop_assert!(
                touched.contains(&g),
                "group {} lost or gained data: {:?} vs acked {:?}",
                g,
                got,
                observe(&acked)
            );
            prop_assert_eq!(
                &got,
                &observe(&maybe),
                "group {} matches neither acked nor acked+pending",
                g
            );
            self.models.insert(g, maybe);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn after_a_crash_everything_acknowledged_is_there_and_nothing_else(
        steps in proptest::collection::vec(step_strategy(), 1..50),
        final_keep_permille in 0..=1000u64,
        segment_max_bytes in 300..2000u64,
    ) {
        let config = config(segment_max_bytes);
        let vfs = MemVfs::new();
        let mut run = Run { wal: Run::open(vfs.clone(), &config), vfs, config, models: BTreeMap::new() };
        let mut i = 0;
        while i < steps.len() {
            match &steps[i] {
                Step::Op(op) => {
                    if let Some(c) = op.resolve(&run.models, i as u64) {
                        c.apply_wal(&run.wal).expect("no fault injected");
                        c.apply_model(&mut run.models);
                    }
                }
                Step::Crash { fail_sync, keep_permille } => {
                    let mut pending = None;
                    if let (Some(after), Some(Step::Op(op))) = (fail_sync, steps.get(i + 1)) {
                        i += 1;
                        if let Some(c) = op.resolve(&run.models, i as u64) {
                            run.vfs.fail_syncs_after(*after);
                            match c.apply_wal(&run.wal) {
                                Ok(()) => c.apply_model(&mut run.models),
                                Err(_) => pending = Some(c),
                            }
                        }
                    }
                    run.crash_and_check(*keep_permille, pending)?;
                }
            }
            i += 1;
        }
        run.crash_and_check(final_keep_permille, None)?;
    }
}
