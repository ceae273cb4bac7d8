//! The log's everyday contract: appends, overwrites, reads, group commit, compaction, GC,
//! rewrite of pinning groups, snapshots — and that all of it survives a reopen.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta, Storage};
use flotilla_wal::{Error, GroupWrite, MemVfs, Vfs, Wal, WalConfig, WalGroup};

const DIR: &str = "/wal";

fn ent(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn open(vfs: &MemVfs, config: WalConfig) -> Arc<Wal> {
    Arc::new(
        Wal::open_with(Arc::new(vfs.clone()), DIR, config)
            .unwrap()
            .0,
    )
}

fn small_segments() -> WalConfig {
    WalConfig {
        segment_max_bytes: 1024,
        rewrite_after_segments: 3,
        read_cache_max_bytes: 256,
        ..WalConfig::default()
    }
}

fn all_entries(wal: &Wal, group: u64) -> Vec<Entry> {
    let (lo, hi) = (wal.first_index(group), wal.last_index(group) + 1);
    wal.entries(group, lo, hi, u64::MAX).unwrap()
}

#[test]
fn appended_entries_and_hard_state_survive_reopen_and_later_writes_win() {
    let vfs = MemVfs::new();
    let wal = open(&vfs, WalConfig::default());
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 1,
    };
    wal.append(&[
        GroupWrite {
            group: 1,
            entries: vec![ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")],
            hard_state: None,
        },
        GroupWrite {
            group: 2,
            entries: vec![ent(1, 5, "x")],
            hard_state: Some(hs),
        },
    ])
    .unwrap();
    // Raft conflict resolution: a new leader's entry at 2 replaces 2 and 3.
    wal.append(&[GroupWrite {
        group: 1,
        entries: vec![ent(2, 2, "B")],
        hard_state: Some(hs),
    }])
    .unwrap();
    assert_eq!(all_entries(&wal, 1), vec![ent(1, 1, "a"), ent(2, 2, "B")]);
    drop(wal);

    let (wal, report) = Wal::open_with(Arc::new(vfs.clone()), DIR, WalConfig::default()).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(all_entries(&wal, 1), vec![ent(1, 1, "a"), ent(2, 2, "B")]);
    assert_eq!(all_entries(&wal, 2), vec![ent(1, 5, "x")]);
    assert_eq!(wal.hard_state(1), hs);
    assert_eq!(wal.term(1, 2).unwrap(), 2);
    assert!(matches!(
        wal.term(1, 3),
        Err(Error::Unavailable { last_index: 2, .. })
    ));
}

#[test]
fn appends_that_leave_a_gap_or_repeat_a_group_are_refused() {
    let wal = open(&MemVfs::new(), WalConfig::default());
    let err = wal.append(&[GroupWrite {
        group: 1,
        entries: vec![ent(2, 1, "a")],
        hard_state: None,
    }]);
    assert!(matches!(
        err,
        Err(Error::InvalidAppend {
            group: 1,
            first_index: 2,
            last_index: 0
        })
    ));
    let w = GroupWrite {
        group: 1,
        entries: vec![ent(1, 1, "a")],
        hard_state: None,
    };
    let err = wal.append(&[w.clone(), w]);
    assert!(matches!(err, Err(Error::GroupBusy { group: 1 })));
    // A refused call leaves nothing behind: the group is usable.
    wal.append(&[GroupWrite {
        group: 1,
        entries: vec![ent(1, 1, "a")],
        hard_state: None,
    }])
    .unwrap();
}

#[test]
fn a_batch_over_max_batch_bytes_is_refused_naming_the_bound() {
    let wal = open(
        &MemVfs::new(),
        WalConfig {
            max_batch_bytes: 100,
            ..WalConfig::default()
        },
    );
    let big = ent(1, 1, &"x".repeat(200));
    let err = wal
        .append(&[GroupWrite {
            group: 1,
            entries: vec![big],
            hard_state: None,
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BatchTooLarge {
                max_batch_bytes: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_batch_bytes = 100"));
}

#[test]
fn many_submitters_share_one_fdatasync() {
    // The writer waits (up to a minute) until a full batch is queued, so all eight submissions
    // must land in one group commit. No sleeps: the wait ends as soon as the batch is full.
    let vfs = MemVfs::new();
    let one = {
        let mut buf = Vec::new();
        let rec = flotilla_wal::record::Record {
            group: 0,
            ops: vec![flotilla_wal::record::Op::Entries(vec![ent(
                1,
                1,
                "0123456789",
            )])],
        };
        flotilla_wal::record::encode_record(&rec, &mut buf);
        buf.len() as u64
    };
    let config = WalConfig {
        max_batch_bytes: 8 * one,
        max_wait_us: 60_000_000,
        ..WalConfig::default()
    };
    let wal = open(&vfs, config);
    let before = vfs.sync_count();
    std::thread::scope(|s| {
        for g in 0..8u64 {
            let wal = wal.clone();
            s.spawn(move || {
                let w = GroupWrite {
                    group: g,
                    entries: vec![ent(1, 1, "0123456789")],
                    hard_state: None,
                };
                wal.append(&[w]).unwrap();
            });
        }
    });
    assert_eq!(
        vfs.sync_count() - before,
        1,
        "eight submissions, one fdatasync"
    );
    let stats = wal.stats();
    assert_eq!((stats.syncs, stats.requests), (1, 8));
    assert_eq!(
        stats.sync_latency_buckets.iter().sum::<u64>(),
        stats.syncs,
        "every fdatasync lands in exactly one latency bucket"
    );
    for g in 0..8 {
        assert_eq!(wal.last_index(g), 1);
    }
}

#[test]
fn entries_are_read_back_from_disk_once_evicted_from_the_cache() {
    let vfs = MemVfs::new();
    let wal = open(
        &vfs,
        WalConfig {
            read_cache_max_bytes: 0,
            ..WalConfig::default()
        },
    );
    let entries: Vec<Entry> = (1..=20).map(|i| ent(i, 1, &format!("entry {i}"))).collect();
    wal.append(&[GroupWrite {
        group: 3,
        entries: entries[..10].to_vec(),
        hard_state: None,
    }])
    .unwrap();
    wal.append(&[GroupWrite {
        group: 3,
        entries: entries[10..].to_vec(),
        hard_state: None,
    }])
    .unwrap();
    assert_eq!(wal.entries(3, 1, 21, u64::MAX).unwrap(), entries);
    let limited = wal.entries(3, 5, 21, 2 * entries[4].size_bytes()).unwrap();
    assert_eq!(limited, entries[4..6].to_vec());
}

#[test]
fn compaction_is_durable_and_refused_beyond_the_snapshot() {
    let vfs = MemVfs::new();
    let wal = open(&vfs, WalConfig::default());
    let g = WalGroup::new(wal.clone(), 1);
    g.append(&(1..=5).map(|i| ent(i, 1, "e")).collect::<Vec<_>>())
        .unwrap();
    let err = wal.compact(1, 2).unwrap_err();
    assert!(matches!(
        err,
        Error::CompactBeyondSnapshot {
            index: 2,
            snapshot_index: 0,
            ..
        }
    ));
    let snap = Snapshot {
        meta: SnapshotMeta {
            index: 3,
            term: 1,
            conf_state: ConfState::with_voters([1]),
        },
        data: Bytes::from_static(b"image"),
    };
    wal.save_snapshot(1, &snap, false).unwrap();
    assert_eq!(
        wal.first_index(1),
        1,
        "saving a snapshot alone does not compact"
    );
    wal.compact(1, 2).unwrap();
    drop(g);
    drop(wal);
    let wal = open(&vfs, WalConfig::default());
    let g = WalGroup::new(wal.clone(), 1);
    assert_eq!(g.first_index().unwrap(), 3);
    assert_eq!(g.term(2).unwrap(), 1);
    assert_eq!(g.snapshot().unwrap(), snap);
    assert_eq!(g.initial_state().unwrap().1, ConfState::with_voters([1]));
}

#[test]
fn segments_are_deleted_once_no_group_needs_them() {
    let vfs = MemVfs::new();
    let wal = open(&vfs, small_segments());
    let g = WalGroup::new(wal.clone(), 1);
    for i in 1..=200u64 {
        g.append(&[ent(i, 1, "some payload bytes")]).unwrap();
        if i % 20 == 0 {
            g.create_snapshot(
                i,
                ConfState::with_voters([1]),
                Bytes::from(format!("at {i}")),
            )
            .unwrap();
        }
    }
    let segments = wal.segment_files();
    assert!(
        segments.len() <= 3,
        "compacted group keeps few segments: {segments:?}"
    );
    let on_disk: Vec<_> = vfs.list(Path::new(DIR)).unwrap();
    assert_eq!(on_disk, segments);
    let snaps = vfs.list(&Path::new(DIR).join("snap")).unwrap();
    assert_eq!(snaps.len(), 1, "older snapshots are deleted: {snaps:?}");
    drop(g);
    drop(wal);
    let wal = open(&vfs, small_segments());
    assert_eq!(wal.first_index(1), 201);
    assert_eq!(wal.load_snapshot(1).unwrap().data, Bytes::from("at 200"));
}

#[test]
fn an_idle_group_pinning_an_old_segment_is_rewritten_forward() {
    let vfs = MemVfs::new();
    let wal = open(&vfs, small_segments());
    let idle = HardState {
        term: 7,
        vote: 2,
        commit: 2,
    };
    wal.append(&[GroupWrite {
        group: 9,
        entries: vec![ent(1, 7, "old"), ent(2, 7, "older")],
        hard_state: Some(idle),
    }])
    .unwrap();
    let busy = WalGroup::new(wal.clone(), 1);
    for i in 1..=300u64 {
        busy.append(&[ent(i, 1, "some payload bytes")]).unwrap();
        if i % 10 == 0 {
            busy.create_snapshot(i, ConfState::default(), Bytes::new())
                .unwrap();
        }
    }
    let segments = wal.segment_files();
    assert!(
        segments.len() <= 4,
        "idle group must not pin the log: {segments:?}"
    );
    assert!(!segments.contains(&Path::new(DIR).join(format!("{:020}.wal", 1))));
    let stats = wal.stats();
    assert!(
        stats.rewritten_groups > 0 && stats.segments_deleted > 0,
        "{stats:?}"
    );
    drop(busy);
    drop(wal);
    let wal = open(&vfs, small_segments());
    assert_eq!(
        all_entries(&wal, 9),
        vec![ent(1, 7, "old"), ent(2, 7, "older")]
    );
    assert_eq!(wal.hard_state(9), idle);
    assert_eq!(wal.last_index(1), 300);
}

#[test]
fn a_failed_fdatasync_poisons_the_log_until_reopened() {
    let vfs = MemVfs::new();
    let wal = open(&vfs, WalConfig::default());
    let w = |i| GroupWrite {
        group: 1,
        entries: vec![ent(i, 1, "x")],
        hard_state: None,
    };
    wal.append(&[w(1)]).unwrap();
    vfs.fail_syncs_after(0);
    let err = wal.append(&[w(2)]).unwrap_err();
    assert!(matches!(err, Error::Io { op: "sync", .. }), "{err}");
    vfs.clear_faults();
    // Retrying fsync after a failure can falsely succeed: the log refuses instead.
    assert!(matches!(wal.append(&[w(2)]), Err(Error::Poisoned(_))));
    assert_eq!(wal.last_index(1), 1, "the failed append is not visible");
    drop(wal);
    let wal = open(&vfs, WalConfig::default());
    wal.append(&[w(wal.last_index(1) + 1)]).unwrap();
}

#[test]
fn many_threads_driving_their_own_groups_all_land_intact() {
    // Real concurrency through the writer, rotation, rewrite and GC; the outcome is
    // deterministic because each group is driven by one thread.
    let vfs = MemVfs::new();
    let wal = open(&vfs, small_segments());
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let wal = wal.clone();
            s.spawn(move || {
                let groups: Vec<WalGroup> = (0..4)
                    .map(|g| WalGroup::new(wal.clone(), t * 10 + g))
                    .collect();
                for i in 1..=60u64 {
                    for g in &groups {
                        let hs = HardState {
                            term: 1,
                            vote: 1,
                            commit: i - 1,
                        };
                        g.persist(vec![ent(i, 1, &format!("{}:{i}", g.id()))], Some(hs))
                            .unwrap();
                        if i % 25 == 0 {
                            g.create_snapshot(i - 5, ConfState::with_voters([1]), Bytes::new())
                                .unwrap();
                        }
                    }
                }
            });
        }
    });
    drop(wal);
    let wal = open(&vfs, small_segments());
    for t in 0..6u64 {
        for g in 0..4 {
            let id = t * 10 + g;
            assert_eq!(
                (wal.first_index(id), wal.last_index(id)),
                (46, 60),
                "group {id}"
            );
            let expected: Vec<Entry> = (46..=60).map(|i| ent(i, 1, &format!("{id}:{i}"))).collect();
            assert_eq!(all_entries(&wal, id), expected);
            assert_eq!(wal.hard_state(id).commit, 59);
        }
    }
}

#[test]
fn works_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        wal.append(&[GroupWrite {
            group: 4,
            entries: vec![ent(1, 1, "durable")],
            hard_state: None,
        }])
        .unwrap();
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                ..Default::default()
            },
            data: Bytes::from("s"),
        };
        wal.save_snapshot(4, &snap, false).unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(report.groups, 1);
    assert_eq!(all_entries(&wal, 4), vec![ent(1, 1, "durable")]);
    assert_eq!(wal.load_snapshot(4).unwrap().data, Bytes::from("s"));
}
