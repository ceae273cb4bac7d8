//! [`Wal`]: the shared log — submission, the group-commit writer, reads, compaction, GC,
//! rewrite, snapshots and recovery.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_raft::{Entry, HardState, Index as LogIndex, Snapshot, SnapshotMeta, Term};

use crate::error::{Error, GroupId, Result};
use crate::index::{Index, Loc};
use crate::record::{
    self, decode_record, encode_record, encode_segment_header, DecodeError, HeaderError, Op,
    Record, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::snapshot;
use crate::vfs::{RealVfs, VFile, Vfs};

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

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: u64,
    /// Records replayed.
    pub records: u64,
    /// Groups with any state.
    pub groups: u64,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// A partial write at the end of the log, found and truncated by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub file: PathBuf,
    /// Where the valid log ends (the file is truncated here).
    pub offset: u64,
    /// Bytes cut off.
    pub dropped_bytes: u64,
    /// Why the first dropped frame did not verify.
    pub reason: String,
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
struct Shared {
    dir: PathBuf,
    snap_dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    config: WalConfig,
    index: Mutex<IndexState>,
    queue: Mutex<Queue>,
    /// Signals the writer: work arrived or shutdown.
    work: Condvar,
    /// Signals submitters: queue space freed.
    space: Condvar,
}

#[derive(Debug)]
struct IndexState {
    index: Index,
    segments: BTreeMap<u64, Arc<dyn VFile>>,
}

#[derive(Debug, Default)]
struct Queue {
    requests: VecDeque<Request>,
    bytes: u64,
    shutdown: bool,
    poisoned: Option<String>,
}

#[derive(Debug)]
struct Request {
    buf: Vec<u8>,
    /// Records with their frame offset and length in `buf`.
    records: Vec<(Record, u64, u32)>,
    groups: Vec<GroupId>,
    done: SyncSender<Result<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything that can panic, so a
    // poisoned mutex carries no half-applied change; the panic itself is reported by its thread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn parse_segment_seq(path: &Path) -> Option<u64> {
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
        assert!(config.max_batch_bytes > 0 && config.segment_max_bytes > SEGMENT_HEADER_BYTES);
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
fn read_entries_at(dir: &Path, file: &Arc<dyn VFile>, loc: Loc) -> Result<Vec<Entry>> {
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

fn create_segment(vfs: &dyn Vfs, dir: &Path, seq: u64) -> Result<Arc<dyn VFile>> {
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

/// The one thread that writes segments.
struct Writer {
    shared: Arc<Shared>,
    active: Arc<dyn VFile>,
    active_seq: u64,
    active_len: u64,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            let groups: Vec<GroupId> = batch
                .iter()
                .flat_map(|r| r.groups.iter().copied())
                .collect();
            match self.commit(&batch) {
                Ok(()) => {
                    for r in batch {
                        let _ = r.done.send(Ok(()));
                    }
                    if let Err(e) = self.maintain() {
                        self.poison(&e);
                    }
                }
                Err(e) => {
                    self.poison(&e);
                    let mut st = lock(&self.shared.index);
                    for g in groups {
                        if let Some(g) = st.index.groups.get_mut(&g) {
                            g.busy = false;
                        }
                    }
                    drop(st);
                    for r in batch {
                        let _ = r.done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Marks the log failed and fails everything queued.
    fn poison(&self, e: &Error) {
        log::error!("write-ahead log poisoned: {e}");
        let mut q = lock(&self.shared.queue);
        q.poisoned = Some(e.to_string());
        q.bytes = 0;
        for r in q.requests.drain(..) {
            let _ = r.done.send(Err(Error::Poisoned(e.to_string())));
        }
        self.shared.space.notify_all();
    }

    /// Waits for work, then takes up to `max_batch_bytes` of it (at least one request).
    fn next_batch(&self) -> Option<Vec<Request>> {
        let cfg = &self.shared.config;
        let mut q = lock(&self.shared.queue);
        while q.requests.is_empty() {
            if q.shutdown {
                return None;
            }
            q = self.shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if cfg.max_wait_us > 0 {
            let deadline = Instant::now() + Duration::from_micros(cfg.max_wait_us);
            while q.bytes < cfg.max_batch_bytes && !q.shutdown {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = self
                    .shared
                    .work
                    .wait_timeout(q, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = q.requests.front() {
            let len = r.buf.len() as u64;
            if !batch.is_empty() && bytes + len > cfg.max_batch_bytes {
                break;
            }
            bytes += len;
            q.bytes -= len;
            batch.push(q.requests.pop_front().expect("front exists"));
        }
        self.shared.space.notify_all();
        Some(batch)
    }

    /// Writes the batch with one write and one `fdatasync`, then makes it visible.
    fn commit(&mut self, batch: &[Request]) -> Result<()> {
        self.buf.clear();
        for r in batch {
            self.buf.extend_from_slice(&r.buf);
        }
        let path = segment_path(&self.shared.dir, self.active_seq);
        self.active
            .write_all_at(&self.buf, self.active_len)
            .map_err(|e| Error::io("write", &path, e))?;
        self.active
            .sync_data()
            .map_err(|e| Error::io("sync", &path, e))?;
        let mut st = lock(&self.shared.index);
        let mut base = self.active_len;
        for r in batch {
            for (rec, off, len) in &r.records {
                st.index.apply(
                    rec,
                    Loc {
                        seg: self.active_seq,
                        offset: base + off,
                        len: *len,
                    },
                    true,
                );
            }
            for g in &r.groups {
                st.index.groups.get_mut(g).expect("busy groups exist").busy = false;
            }
            base += r.buf.len() as u64;
        }
        self.active_len = base;
        Ok(())
    }

    /// Rotation, rewrite of groups pinning old segments, and segment GC.
    fn maintain(&mut self) -> Result<()> {
        if self.active_len < self.shared.config.segment_max_bytes {
            return Ok(());
        }
        let seq = self.active_seq + 1;
        let file = create_segment(self.shared.vfs.as_ref(), &self.shared.dir, seq)?;
        lock(&self.shared.index).segments.insert(seq, file.clone());
        self.active = file;
        self.active_seq = seq;
        self.active_len = SEGMENT_HEADER_BYTES;
        self.rewrite_pinning_groups()?;
        self.collect_segments()
    }

    /// If the log holds too many segments, rewrites the full state of every group that still
    /// needs the oldest one into the active segment, so the oldest can be deleted.
    fn rewrite_pinning_groups(&mut self) -> Result<()> {
        let (oldest, pinning) = {
            let st = lock(&self.shared.index);
            if (st.segments.len() as u64) <= self.shared.config.rewrite_after_segments {
                return Ok(());
            }
            let oldest = *st
                .segments
                .keys()
                .next()
                .expect("at least the active segment");
            let pinning: Vec<GroupId> = st
                .index
                .groups
                .iter()
                .filter(|(_, g)| g.min_segment() == Some(oldest))
                .map(|(&id, _)| id)
                .collect();
            (oldest, pinning)
        };
        if pinning.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(pinning.len());
        for group in &pinning {
            records.push(self.checkpoint_record(*group)?);
        }
        let mut buf = Vec::new();
        let mut framed = Vec::with_capacity(records.len());
        for rec in records {
            let start = buf.len() as u64;
            encode_record(&rec, &mut buf);
            framed.push((rec, start, (buf.len() as u64 - start) as u32));
        }
        let path = segment_path(&self.shared.dir, self.active_seq);
        self.active
            .write_all_at(&buf, self.active_len)
            .map_err(|e| Error::io("write", &path, e))?;
        self.active
            .sync_data()
            .map_err(|e| Error::io("sync", &path, e))?;
        let mut st = lock(&self.shared.index);
        for (rec, off, len) in &framed {
            let loc = Loc {
                seg: self.active_seq,
                offset: self.active_len + off,
                len: *len,
            };
            st.index.apply(rec, loc, false);
        }
        self.active_len += buf.len() as u64;
        log::info!(
            "rewrote {} groups ({} bytes) pinning segment {oldest} into segment {}",
            pinning.len(),
            buf.len(),
            self.active_seq
        );
        Ok(())
    }

    /// One record that rebuilds the group's whole state on replay: `Reset` to its compaction
    /// point, its entries, its snapshot meta and its hard state. One record, so a crash while
    /// writing it leaves the old state (still in the old segments) or the whole new one.
    fn checkpoint_record(&self, group: GroupId) -> Result<Record> {
        let (g, files) = {
            let st = lock(&self.shared.index);
            (st.index.groups[&group].clone(), st.segments.clone())
        };
        let mut ops = vec![Op::Reset {
            index: g.trunc_index,
            term: g.trunc_term,
        }];
        let mut entries = Vec::with_capacity(g.entries.len());
        let mut last_read: Option<(Loc, Vec<Entry>)> = None;
        for (i, m) in g.entries.iter().enumerate() {
            let index = g.base + 1 + i as u64;
            if let Some(d) = &m.data {
                entries.push(Index::make_entry(index, m, d.clone()));
                continue;
            }
            if last_read.as_ref().map(|(l, _)| *l) != Some(m.loc) {
                let read = read_entries_at(&self.shared.dir, &files[&m.loc.seg], m.loc)?;
                last_read = Some((m.loc, read));
            }
            let read = &last_read.as_ref().expect("just read").1;
            let e = read.iter().find(|e| e.index == index && e.term == m.term);
            entries.push(e.cloned().ok_or_else(|| Error::Corrupted {
                file: segment_path(&self.shared.dir, m.loc.seg),
                offset: m.loc.offset,
                reason: format!("record does not hold entry {index} of group {group}"),
            })?);
        }
        if !entries.is_empty() {
            ops.push(Op::Entries(entries));
        }
        if g.snapshot_seg.is_some() {
            ops.push(Op::SnapshotMeta(g.snapshot.clone()));
        }
        if g.hard_state_seg.is_some() {
            ops.push(Op::HardState(g.hard_state));
        }
        Ok(Record { group, ops })
    }

    /// Deletes the oldest segments while no group needs them.
    fn collect_segments(&mut self) -> Result<()> {
        let doomed: Vec<u64> = {
            let mut st = lock(&self.shared.index);
            let needed = st
                .index
                .groups
                .values()
                .filter_map(|g| g.min_segment())
                .min();
            let keep_from = needed.unwrap_or(self.active_seq).min(self.active_seq);
            let doomed: Vec<u64> = st.segments.range(..keep_from).map(|(&s, _)| s).collect();
            for s in &doomed {
                st.segments.remove(s);
            }
            doomed
        };
        for seq in doomed {
            let path = segment_path(&self.shared.dir, seq);
            self.shared
                .vfs
                .remove(&path)
                .map_err(|e| Error::io("remove", &path, e))?;
            log::debug!("deleted segment {}", path.display());
        }
        Ok(())
    }
}

/// Recovery state while opening.
struct Recovery<'a> {
    vfs: &'a dyn Vfs,
    dir: &'a Path,
    index: Index,
    segments: BTreeMap<u64, Arc<dyn VFile>>,
    report: RecoveryReport,
}

impl Recovery<'_> {
    fn replay(&mut self) -> Result<()> {
        let list = self
            .vfs
            .list(self.dir)
            .map_err(|e| Error::io("list", self.dir, e))?;
        let seqs: Vec<u64> = list.iter().filter_map(|p| parse_segment_seq(p)).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            if i > 0 && seq != seqs[i - 1] + 1 {
                return Err(Error::Corrupted {
                    file: segment_path(self.dir, seqs[i - 1] + 1),
                    offset: 0,
                    reason: format!("segment missing between {} and {seq}", seqs[i - 1]),
                });
            }
            let last = i + 1 == seqs.len();
            self.replay_segment(seq, last)?;
        }
        Ok(())
    }

    fn replay_segment(&mut self, seq: u64, last: bool) -> Result<()> {
        let path = segment_path(self.dir, seq);
        let file = self
            .vfs
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.size().map_err(|e| Error::io("stat", &path, e))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        let buf = Bytes::from(buf);
        let corrupted = |offset: u64, reason: String| Error::Corrupted {
            file: path.clone(),
            offset,
            reason,
        };
        match record::decode_segment_header(&buf) {
            Ok(s) if s == seq => {}
            Ok(s) => {
                return Err(corrupted(
                    0,
                    format!("header says segment {s}, file name says {seq}"),
                ))
            }
            Err(HeaderError::UnknownVersion(version)) => {
                return Err(Error::UnknownVersion {
                    file: path,
                    offset: 8,
                    version,
                    supported: u32::from(record::FORMAT_VERSION),
                })
            }
            Err(HeaderError::Truncated) if last => {
                // Crashed while creating it: nothing was ever written after the header.
                log::info!("recreating torn segment header in {}", path.display());
                self.report.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    dropped_bytes: len,
                    reason: "torn segment header".into(),
                });
                let f = create_segment(self.vfs, self.dir, seq)?;
                self.segments.insert(seq, f);
                self.report.segments += 1;
                return Ok(());
            }
            Err(e) => return Err(corrupted(0, format!("bad segment header: {e:?}"))),
        }
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        while pos < buf.len() {
            let frame = buf.slice(pos..);
            match decode_record(&frame) {
                Ok((rec, n)) => {
                    let loc = Loc {
                        seg: seq,
                        offset: pos as u64,
                        len: n as u32,
                    };
                    self.index.apply(&rec, loc, false);
                    self.report.records += 1;
                    pos += n;
                }
                Err(DecodeError::UnknownVersion(v)) => {
                    return Err(Error::UnknownVersion {
                        file: path,
                        offset: pos as u64,
                        version: u32::from(v),
                        supported: u32::from(record::FORMAT_VERSION),
                    })
                }
                Err(e) if !last => return Err(corrupted(pos as u64, e.to_string())),
                Err(e) => {
                    if let Some(valid) = find_valid_frame(&buf, pos + 1) {
                        return Err(corrupted(
                            pos as u64,
                            format!("{e}, but a valid record follows at offset {valid}"),
                        ));
                    }
                    let dropped = (buf.len() - pos) as u64;
                    log::info!(
                        "truncating torn tail of {}: {dropped} bytes at offset {pos} ({e})",
                        path.display()
                    );
                    file.set_len(pos as u64)
                        .map_err(|e| Error::io("truncate", &path, e))?;
                    file.sync_data().map_err(|e| Error::io("sync", &path, e))?;
                    self.report.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: pos as u64,
                        dropped_bytes: dropped,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        self.segments.insert(seq, file);
        self.report.segments += 1;
        Ok(())
    }

    /// Every group's log must be complete: a hole means a record it needs is gone.
    fn check_groups(&self) -> Result<()> {
        for (id, g) in &self.index.groups {
            if g.base != g.trunc_index {
                return Err(Error::Corrupted {
                    file: self.dir.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "group {id}: entries {}..={} are in no remaining segment",
                        g.trunc_index + 1,
                        g.base
                    ),
                });
            }
        }
        Ok(())
    }

    /// Keeps each group's recorded snapshot file (verifying it exists), deletes the rest
    /// (older snapshots, and newer ones whose log record never became durable).
    fn collect_snapshots(&mut self, snap_dir: &Path) -> Result<()> {
        let files = self
            .vfs
            .list(snap_dir)
            .map_err(|e| Error::io("list", snap_dir, e))?;
        let mut present: BTreeSet<PathBuf> = BTreeSet::new();
        for f in files {
            if snapshot::parse_group(&f).is_some() {
                present.insert(f);
            } else if f.extension().is_some_and(|x| x == "tmp") {
                let _ = self.vfs.remove(&f);
            }
        }
        for (&id, g) in &self.index.groups {
            if g.snapshot.index == 0 {
                continue;
            }
            let path = snap_dir.join(snapshot::file_name(id, &g.snapshot));
            if !present.remove(&path) {
                return Err(Error::BadSnapshot {
                    file: path,
                    reason: "recorded in the log but missing".into(),
                });
            }
        }
        for stale in present {
            log::debug!("deleting unreferenced snapshot {}", stale.display());
            self.vfs
                .remove(&stale)
                .map_err(|e| Error::io("remove", &stale, e))?;
        }
        Ok(())
    }
}

/// Offset of the first position at or after `from` where a frame verifies, if any. Used to
/// tell a torn tail (nothing valid after the damage) from corruption in the middle.
fn find_valid_frame(buf: &Bytes, from: usize) -> Option<usize> {
    let hdr = FRAME_HEADER_BYTES as usize;
    (from..buf.len().saturating_sub(hdr)).find(|&p| {
        buf.get(p + hdr) == Some(&record::FORMAT_VERSION) && record::check_frame(&buf[p..]).is_ok()
    })
}
