//! [`Wal`]: the shared log's API — submission to the group-commit writer, reads, compaction
//! and snapshots. The writer thread is in `writer`, recovery in `recovery`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use flotilla_raft::{Entry, HardState, Index as LogIndex, Snapshot, SnapshotMeta, Term};

use crate::error::{Error, GroupId, Result};
use crate::index::{Index, Loc};
use crate::record::{
    decode_record, encode_record, encode_segment_header, Op, Record, SEGMENT_HEADER_BYTES,
};
use crate::recovery::{Recovery, RecoveryReport};
use crate::snapshot;
use crate::vfs::{RealVfs, VFile, Vfs};
use crate::writer::Writer;

/// Bounds and knobs. Every queue and buffer of the log is bounded by one of these.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// Most bytes one group commit (one `fdatasync`) covers; also the largest single
    /// submission accepted (`Error::BatchTooLarge` beyond it).
    pub max_batch_bytes: u64,
    /// How long the writer waits for more submissions before syncing a batch smaller than
    /// `max_batch_bytes`. 0: sync as soon as the previous sync is done (batches still form
    /// naturally while a sync is in progress).
    pub max_wait_us: u64,
    /// Submitted but unwritten bytes beyond which submitters block (back-pressure).
    pub max_queued_bytes: u64,
    /// Bound on recent entry payloads kept in memory for reads.
    pub read_cache_max_bytes: u64,
    /// With more segments than this, the groups pinning the oldest one are rewritten into the
    /// active segment so it can be deleted. Bounds the log to roughly this many segments plus
    /// the live data of groups that never compact.
    pub rewrite_after_segments: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_max_bytes: 64 << 20,
            max_batch_bytes: 16 << 20,
            max_wait_us: 0,
            max_queued_bytes: 64 << 20,
            read_cache_max_bytes: 64 << 20,
            rewrite_after_segments: 8,
        }
    }
}

/// What one group persists in one `append`: entries (possibly overwriting a suffix) and/or a
/// new hard state — what a Raft `Ready` hands the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupWrite {
    /// The group.
    pub group: GroupId,
    /// Consecutive entries. Stored entries from `entries[0].index` on are replaced.
    pub entries: Vec<Entry>,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
}

/// The shared write-ahead log. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// # To ensure correctness
/// - Operations on one group must be issued one at a time (the Raft host does this naturally:
///   it persists a group's `Ready` before taking the next one). Overlapping calls for the same
///   group fail with [`Error::GroupBusy`]; different groups may call concurrently.
/// - When a mutating call returns `Ok`, its effect is durable (covered by an `fdatasync`) and
///   visible to reads. When it returns an error, its effect may or may not survive a crash.
/// - After an I/O error the log is poisoned: every later call fails until it is reopened.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) snap_dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) config: WalConfig,
    pub(crate) index: Mutex<IndexState>,
    pub(crate) queue: Mutex<Queue>,
    /// Signals the writer: work arrived or shutdown.
    pub(crate) work: Condvar,
    /// Signals submitters: queue space freed.
    pub(crate) space: Condvar,
    pub(crate) stats: Stats,
}

/// Counters kept by the writer (relaxed atomics: they are for metrics, not for logic).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) syncs: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) rewritten_groups: AtomicU64,
    pub(crate) rewritten_bytes: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
    /// `fdatasync` latencies: count per bucket of [`SYNC_LATENCY_BUCKETS_US`], the last one
    /// for everything slower than the largest bound.
    pub(crate) sync_latency_buckets: [AtomicU64; SYNC_LATENCY_BUCKETS_US.len() + 1],
    pub(crate) sync_latency_us_sum: AtomicU64,
}

/// Upper bounds (inclusive, microseconds) of the `fdatasync` latency buckets in [`WalStats`].
pub const SYNC_LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one `fdatasync` that took `us` microseconds.
    pub(crate) fn record_sync(&self, us: u64) {
        let bucket = SYNC_LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(SYNC_LATENCY_BUCKETS_US.len());
        Stats::add(&self.sync_latency_buckets[bucket], 1);
        Stats::add(&self.sync_latency_us_sum, us);
    }
}

/// A snapshot of the writer's counters since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Group commits (`fdatasync`s of a batch, plus rewrites).
    pub syncs: u64,
    /// Submissions committed (`append`, `compact`, `save_snapshot` calls).
    pub requests: u64,
    /// Bytes appended to segments.
    pub bytes_written: u64,
    /// Groups rewritten forward to free an old segment.
    pub rewritten_groups: u64,
    /// Bytes those rewrites appended.
    pub rewritten_bytes: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// `fdatasync` calls by latency: element `i` counts syncs that took at most
    /// `SYNC_LATENCY_BUCKETS_US[i]` µs (and more than the previous bound); the last element
    /// counts the slower ones. Not cumulative.
    pub sync_latency_buckets: [u64; SYNC_LATENCY_BUCKETS_US.len() + 1],
    /// Total time spent in those `fdatasync` calls, in microseconds.
    pub sync_latency_us_sum: u64,
}

#[derive(Debug)]
pub(crate) struct IndexState {
    pub(crate) index: Index,
    pub(crate) segments: BTreeMap<u64, Arc<dyn VFile>>,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) requests: VecDeque<Request>,
    pub(crate) bytes: u64,
    pub(crate) shutdown: bool,
    pub(crate) poisoned: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) buf: Vec<u8>,
    /// Records with their frame offset and length in `buf`.
    pub(crate) records: Vec<(Record, u64, u32)>,
    pub(crate) groups: Vec<GroupId>,
    pub(crate) done: SyncSender<Result<()>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything that can panic, so a
    // poisoned mutex carries no half-applied change; the panic itself is reported by its thread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

pub(crate) fn parse_segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".wal")?.parse().ok()
}

impl Wal {
    /// Opens (or creates) the log in `dir` on the real file system.
    pub fn open(dir: impl Into<PathBuf>, config: WalConfig) -> Result<(Wal, RecoveryReport)> {
        Wal::open_with(Arc::new(RealVfs), dir, config)
    }

    /// Opens the log on any [`Vfs`]: replays every segment, truncates a torn tail, verifies the
    /// snapshot files the log refers to and deletes the others, then starts the writer thread.
    pub fn open_with(
        vfs: Arc<dyn Vfs>,
        dir: impl Into<PathBuf>,
        config: WalConfig,
    ) -> Result<(Wal, RecoveryReport)> {
        if config.max_batch_bytes == 0 || config.max_batch_bytes > u64::from(u32::MAX) {
            return Err(Error::InvalidConfig("max_batch_bytes must be in 1..=4 GiB"));
        }
        if config.segment_max_bytes <= SEGMENT_HEADER_BYTES {
            return Err(Error::InvalidConfig(
                "segment_max_bytes must exceed the 24-byte header",
            ));
        }
        let dir = dir.into();
        let snap_dir = dir.join("snap");
        vfs.create_dir_all(&snap_dir)
            .map_err(|e| Error::io("create dir", &snap_dir, e))?;
        let mut rec = Recovery {
            vfs: vfs.as_ref(),
            dir: &dir,
            index: Index::new(config.read_cache_max_bytes),
            segments: BTreeMap::new(),
            report: RecoveryReport::default(),
        };
        rec.replay()?;
        rec.check_groups()?;
        rec.collect_snapshots(&snap_dir)?;
        let Recovery {
            mut segments,
            index,
            mut report,
            ..
        } = rec;
        report.groups = index.groups.len() as u64;
        let (active_seq, active, active_len) = match segments.last_key_value() {
            Some((&seq, file)) => {
                let len = file
                    .size()
                    .map_err(|e| Error::io("stat", segment_path(&dir, seq), e))?;
                (seq, file.clone(), len)
            }
            None => {
                let file = create_segment(vfs.as_ref(), &dir, 1)?;
                segments.insert(1, file.clone());
                (1, file, SEGMENT_HEADER_BYTES)
            }
        };
        let shared = Arc::new(Shared {
            dir,
            snap_dir,
            vfs,
            config,
            index: Mutex::new(IndexState { index, segments }),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            space: Condvar::new(),
            stats: Stats::default(),
        });
        let writer = Writer {
            shared: shared.clone(),
            active,
            active_seq,
            active_len,
            buf: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawn writer thread", &shared.dir, e))?;
        Ok((
            Wal {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            report,
        ))
    }

    /// Counters since the log was opened (requests per sync shows group commit at work).
    pub fn stats(&self) -> WalStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WalStats {
            syncs: get(&s.syncs),
            requests: get(&s.requests),
            bytes_written: get(&s.bytes_written),
            rewritten_groups: get(&s.rewritten_groups),
            rewritten_bytes: get(&s.rewritten_bytes),
            segments_deleted: get(&s.segments_deleted),
            sync_latency_buckets: std::array::from_fn(|i| get(&s.sync_latency_buckets[i])),
            sync_latency_us_sum: get(&s.sync_latency_us_sum),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Persists entries and hard states of many groups with one `fdatasync` shared with
    /// whatever else is being committed. Returns once all of it is durable.
    pub fn append(&self, batch: &[GroupWrite]) -> Result<()> {
        let mut records = Vec::new();
        let mut groups = Vec::new();
        {
            let mut st = lock(&self.shared.index);
            let mut seen = BTreeSet::new();
            for w in batch {
                if !seen.insert(w.group) {
                    return Err(Error::GroupBusy { group: w.group });
                }
                let g = st.index.groups.get(&w.group);
                if g.is_some_and(|g| g.busy) {
                    return Err(Error::GroupBusy { group: w.group });
                }
                if let Some(first) = w.entries.first() {
                    for (i, e) in w.entries.iter().enumerate() {
                        if e.index != first.index + i as u64 {
                            return Err(Error::NonConsecutiveEntries {
                                group: w.group,
                                index: e.index,
                            });
                        }
                    }
                    let last_index = g.map_or(0, |g| g.last_index());
                    if first.index == 0 || first.index > last_index + 1 {
                        return Err(Error::InvalidAppend {
                            group: w.group,
                            first_index: first.index,
                            last_index,
                        });
                    }
                }
            }
            for w in batch {
                let trunc = st.index.groups.get(&w.group).map_or(0, |g| g.trunc_index);
                // Entries at or below the compaction point are already covered by a snapshot.
                let entries: Vec<Entry> = w
                    .entries
                    .iter()
                    .filter(|e| e.index > trunc)
                    .cloned()
                    .collect();
                let mut ops = Vec::new();
                if !entries.is_empty() {
                    ops.push(Op::Entries(entries));
                }
                if let Some(hs) = w.hard_state {
                    ops.push(Op::HardState(hs));
                }
                if !ops.is_empty() {
                    st.index.groups.entry(w.group).or_default().busy = true;
                    groups.push(w.group);
                    records.push(Record {
                        group: w.group,
                        ops,
                    });
                }
            }
        }
        self.submit(groups, records)
    }

    /// Drops the group's entries up to and including `index`. `index` must be covered by the
    /// group's latest snapshot ([`Error::CompactBeyondSnapshot`] otherwise). Durable on return.
    pub fn compact(&self, group: GroupId, index: LogIndex) -> Result<()> {
        let records = {
            let mut st = lock(&self.shared.index);
            let g = st.index.groups.entry(group).or_default();
            if g.busy {
                return Err(Error::GroupBusy { group });
            }
            if index > g.snapshot.index {
                return Err(Error::CompactBeyondSnapshot {
                    group,
                    index,
                    snapshot_index: g.snapshot.index,
                });
            }
            if index <= g.trunc_index {
                return Ok(());
            }
            let Some(term) = g.term_at(index) else {
                return Err(Error::Unavailable {
                    group,
                    index,
                    last_index: g.last_index(),
                });
            };
            g.busy = true;
            vec![Record {
                group,
                ops: vec![Op::Compact { index, term }],
            }]
        };
        self.submit(vec![group], records)
    }

    /// Saves a snapshot of the group: writes its file durably, then records it in the log.
    ///
    /// If the log does not hold the snapshot's last entry with the same term (a follower
    /// installing its leader's snapshot), the group's log is reset to start after it. With
    /// `compact_log`, entries up to the snapshot are dropped as by [`Wal::compact`]. Older
    /// snapshot files of the group are deleted once the new one is recorded.
    ///
    /// A snapshot at index 0 records only the configuration (a new group's initial
    /// membership) and has no file; its `data` must be empty.
    pub fn save_snapshot(&self, group: GroupId, snap: &Snapshot, compact_log: bool) -> Result<()> {
        self.save_snapshot_inner(group, snap, compact_log, false)
    }

    pub(crate) fn save_snapshot_inner(
        &self,
        group: GroupId,
        snap: &Snapshot,
        compact_log: bool,
        raise_commit: bool,
    ) -> Result<()> {
        let meta = &snap.meta;
        let invalid = |reason| Error::InvalidSnapshot {
            group,
            index: meta.index,
            reason,
        };
        let (agrees, trunc_index, mut hard_state, old_meta) = {
            let mut st = lock(&self.shared.index);
            let g = st.index.groups.entry(group).or_default();
            if g.busy {
                return Err(Error::GroupBusy { group });
            }
            if meta.index == 0 && (!snap.data.is_empty() || meta.term != 0) {
                return Err(invalid(
                    "a snapshot at index 0 carries only a configuration",
                ));
            }
            if meta.index != 0 && meta.index <= g.snapshot.index {
                return Err(invalid("not newer than the group's latest snapshot"));
            }
            if meta.index == 0 && g.snapshot_seg.is_some() && g.snapshot.index != 0 {
                return Err(invalid("the group already has a snapshot"));
            }
            g.busy = true;
            (
                g.term_at(meta.index) == Some(meta.term),
                g.trunc_index,
                g.hard_state,
                g.snapshot.clone(),
            )
        };
        if meta.index > 0 {
            let written =
                snapshot::write(self.shared.vfs.as_ref(), &self.shared.snap_dir, group, snap);
            if let Err(e) = written {
                self.clear_busy(&[group]);
                return Err(e);
            }
        }
        // One record, so a crash keeps all of these changes or none.
        let mut ops = vec![Op::SnapshotMeta(meta.clone())];
        if !agrees {
            ops.push(Op::Reset {
                index: meta.index,
                term: meta.term,
            });
        } else if compact_log && meta.index > trunc_index {
            ops.push(Op::Compact {
                index: meta.index,
                term: meta.term,
            });
        }
        if raise_commit && hard_state.commit < meta.index {
            hard_state.commit = meta.index;
            ops.push(Op::HardState(hard_state));
        }
        self.submit(vec![group], vec![Record { group, ops }])?;
        // The new snapshot is recorded durably: the previous file is garbage now. (A reader
        // that picked up the old meta just before retries: see `load_snapshot`.)
        if old_meta.index > 0 {
            let old = self
                .shared
                .snap_dir
                .join(snapshot::file_name(group, &old_meta));
            if let Err(e) = self.shared.vfs.remove(&old) {
                log::warn!("could not delete old snapshot {}: {e}", old.display());
            }
        }
        Ok(())
    }

    /// Forgets the group: its entries, hard state and snapshot. Durable on return; the
    /// group's snapshot file is deleted afterwards. A later write starts the group afresh.
    pub fn remove_group(&self, group: GroupId) -> Result<()> {
        let old_meta = {
            let mut st = lock(&self.shared.index);
            let Some(g) = st.index.groups.get_mut(&group) else {
                return Ok(());
            };
            if g.busy {
                return Err(Error::GroupBusy { group });
            }
            g.busy = true;
            g.snapshot.clone()
        };
        self.submit(
            vec![group],
            vec![Record {
                group,
                ops: vec![Op::Remove],
            }],
        )?;
        if old_meta.index > 0 {
            let old = self
                .shared
                .snap_dir
                .join(snapshot::file_name(group, &old_meta));
            if let Err(e) = self.shared.vfs.remove(&old) {
                log::warn!(
                    "could not delete snapshot {} of removed group: {e}",
                    old.display()
                );
            }
        }
        Ok(())
    }

    /// The group's latest snapshot, read from its file and verified.
    pub fn load_snapshot(&self, group: GroupId) -> Result<Snapshot> {
        let mut meta = self.snapshot_meta(group);
        let mut attempts_left = 8u32;
        loop {
            attempts_left -= 1;
            if meta.index == 0 {
                return Ok(Snapshot {
                    meta,
                    data: Bytes::new(),
                });
            }
            let path = self.shared.snap_dir.join(snapshot::file_name(group, &meta));
            match snapshot::read(self.shared.vfs.as_ref(), &path, group, &meta) {
                Ok(snap) => return Ok(snap),
                Err(e) => {
                    // A newer snapshot may have replaced (and deleted) this one meanwhile.
                    let now = self.snapshot_meta(group);
                    if now == meta || attempts_left == 0 {
                        return Err(e);
                    }
                    meta = now;
                }
            }
        }
    }

    /// Metadata of the group's latest snapshot (index 0 if none).
    pub fn snapshot_meta(&self, group: GroupId) -> SnapshotMeta {
        let st = lock(&self.shared.index);
        st.index
            .groups
            .get(&group)
            .map(|g| g.snapshot.clone())
            .unwrap_or_default()
    }

    /// The group's durable hard state.
    pub fn hard_state(&self, group: GroupId) -> HardState {
        let st = lock(&self.shared.index);
        st.index
            .groups
            .get(&group)
            .map(|g| g.hard_state)
            .unwrap_or_default()
    }

    /// First index held (one past the compaction point).
    pub fn first_index(&self, group: GroupId) -> LogIndex {
        let st = lock(&self.shared.index);
        st.index.groups.get(&group).map_or(1, |g| g.first_index())
    }

    /// Last index held (the compaction point if no entries are held).
    pub fn last_index(&self, group: GroupId) -> LogIndex {
        let st = lock(&self.shared.index);
        st.index.groups.get(&group).map_or(0, |g| g.last_index())
    }

    /// Term of the entry at `index` (or of the compaction point).
    pub fn term(&self, group: GroupId, index: LogIndex) -> Result<Term> {
        let st = lock(&self.shared.index);
        let Some(g) = st.index.groups.get(&group) else {
            return if index == 0 {
                Ok(0)
            } else {
                Err(Error::Unavailable {
                    group,
                    index,
                    last_index: 0,
                })
            };
        };
        if index < g.trunc_index {
            return Err(Error::Compacted {
                group,
                index,
                first_index: g.first_index(),
            });
        }
        g.term_at(index).ok_or(Error::Unavailable {
            group,
            index,
            last_index: g.last_index(),
        })
    }

    /// Groups with any state, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        lock(&self.shared.index)
            .index
            .groups
            .keys()
            .copied()
            .collect()
    }

    /// Segment files currently on disk, oldest first.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        let st = lock(&self.shared.index);
        st.segments
            .keys()
            .map(|&s| segment_path(&self.shared.dir, s))
            .collect()
    }

    /// Entries in `[lo, hi)`, stopping once their total [`Entry::size_bytes`] would exceed
    /// `max_bytes` (always at least one if `lo < hi`). Served from the read cache when
    /// possible, otherwise from the segment files (checksums verified again).
    pub fn entries(
        &self,
        group: GroupId,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        // Collect under the lock; read files without it (file handles outlive deletion).
        let mut plan: Vec<(LogIndex, Term, Option<Entry>, Loc)> = Vec::new();
        let mut files: BTreeMap<u64, Arc<dyn VFile>> = BTreeMap::new();
        {
            let st = lock(&self.shared.index);
            let empty = Default::default();
            let g = st.index.groups.get(&group).unwrap_or(&empty);
            if lo <= g.trunc_index {
                return Err(Error::Compacted {
                    group,
                    index: lo,
                    first_index: g.first_index(),
                });
            }
            if hi > g.last_index() + 1 {
                return Err(Error::Unavailable {
                    group,
                    index: hi - 1,
                    last_index: g.last_index(),
                });
            }
            let mut total = 0u64;
            for index in lo..hi {
                let m = g.entry(index).expect("index checked to be held");
                total += m.size_bytes();
                if !plan.is_empty() && total > max_bytes {
                    break;
                }
                let cached = m.data.clone().map(|d| Index::make_entry(index, m, d));
                if cached.is_none() && !files.contains_key(&m.loc.seg) {
                    let f = st
                        .segments
                        .get(&m.loc.seg)
                        .expect("held entries live in held segments");
                    files.insert(m.loc.seg, f.clone());
                }
                plan.push((index, m.term, cached, m.loc));
            }
        }
        let mut out = Vec::with_capacity(plan.len());
        let mut last_read: Option<(Loc, Vec<Entry>)> = None;
        for (index, term, cached, loc) in plan {
            if let Some(e) = cached {
                out.push(e);
                continue;
            }
            if last_read.as_ref().map(|(l, _)| *l) != Some(loc) {
                let entries = self.read_entries_record(&files[&loc.seg], loc)?;
                last_read = Some((loc, entries));
            }
            let (_, entries) = last_read.as_ref().expect("just read");
            let e = entries
                .iter()
                .find(|e| e.index == index)
                .filter(|e| e.term == term);
            let e = e.ok_or_else(|| Error::Corrupted {
                file: segment_path(&self.shared.dir, loc.seg),
                offset: loc.offset,
                reason: format!("record does not hold entry {index} of group {group}"),
            })?;
            out.push(e.clone());
        }
        Ok(out)
    }

    fn read_entries_record(&self, file: &Arc<dyn VFile>, loc: Loc) -> Result<Vec<Entry>> {
        read_entries_at(&self.shared.dir, file, loc)
    }

    fn clear_busy(&self, groups: &[GroupId]) {
        let mut st = lock(&self.shared.index);
        for g in groups {
            if let Some(g) = st.index.groups.get_mut(g) {
                g.busy = false;
            }
        }
    }

    /// Hands records to the writer and waits for the sync covering them. `groups` were marked
    /// busy by the caller; they are cleared here on failure or by the writer on apply.
    fn submit(&self, groups: Vec<GroupId>, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            self.clear_busy(&groups);
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut framed = Vec::with_capacity(records.len());
        for rec in records {
            let start = buf.len() as u64;
            encode_record(&rec, &mut buf);
            framed.push((rec, start, (buf.len() as u64 - start) as u32));
        }
        let max = self.shared.config.max_batch_bytes;
        if buf.len() as u64 > max {
            self.clear_busy(&groups);
            return Err(Error::BatchTooLarge {
                bytes: buf.len() as u64,
                max_batch_bytes: max,
            });
        }
        let (tx, rx) = sync_channel(1);
        {
            let mut q = lock(&self.shared.queue);
            loop {
                if let Some(p) = &q.poisoned {
                    let e = Error::Poisoned(p.clone());
                    drop(q);
                    self.clear_busy(&groups);
                    return Err(e);
                }
                if q.shutdown {
                    drop(q);
                    self.clear_busy(&groups);
                    return Err(Error::Closed);
                }
                if q.requests.is_empty()
                    || q.bytes + buf.len() as u64 <= self.shared.config.max_queued_bytes
                {
                    break;
                }
                q = self.shared.space.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.bytes += buf.len() as u64;
            q.requests.push_back(Request {
                buf,
                records: framed,
                groups,
                done: tx,
            });
        }
        self.shared.work.notify_one();
        rx.recv().unwrap_or(Err(Error::Closed))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
    }
}

/// Rereads the record at `loc` (verifying its checksum again) and returns its entries.
pub(crate) fn read_entries_at(dir: &Path, file: &Arc<dyn VFile>, loc: Loc) -> Result<Vec<Entry>> {
    let path = segment_path(dir, loc.seg);
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset)
        .map_err(|e| Error::io("read", &path, e))?;
    match decode_record(&Bytes::from(buf)) {
        Ok((rec, _)) => Ok(rec.entries().into_values().cloned().collect()),
        Err(e) => Err(Error::Corrupted {
            file: path,
            offset: loc.offset,
            reason: e.to_string(),
        }),
    }
}

pub(crate) fn create_segment(vfs: &dyn Vfs, dir: &Path, seq: u64) -> Result<Arc<dyn VFile>> {
    let path = segment_path(dir, seq);
    let f = vfs
        .create(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    f.write_all_at(&encode_segment_header(seq), 0)
        .map_err(|e| Error::io("write", &path, e))?;
    f.sync_data().map_err(|e| Error::io("sync", &path, e))?;
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync dir", dir, e))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_latency_lands_in_the_first_bucket_whose_bound_covers_it() {
        let stats = Stats::default();
        stats.record_sync(0);
        stats.record_sync(50);
        stats.record_sync(51);
        stats.record_sync(2_000_000);
        let count = |i: usize| stats.sync_latency_buckets[i].load(Ordering::Relaxed);
        assert_eq!(count(0), 2, "0 and 50 µs: bound 50 is inclusive");
        assert_eq!(count(1), 1, "51 µs: next bucket");
        assert_eq!(
            count(SYNC_LATENCY_BUCKETS_US.len()),
            1,
            "slower than every bound"
        );
        assert_eq!(stats.sync_latency_us_sum.load(Ordering::Relaxed), 2_000_101);
    }
}
