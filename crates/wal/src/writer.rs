//! The one thread that writes segments: group commit, rotation, rewrite of groups pinning
//! old segments, and segment GC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_raft::Entry;

use crate::error::{Error, GroupId, Result};
use crate::index::{Index, Loc};
use crate::record::{encode_record, Op, Record, SEGMENT_HEADER_BYTES};
use crate::vfs::VFile;
use crate::wal::{create_segment, lock, read_entries_at, segment_path, Request, Shared, Stats};

/// The one thread that writes segments.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Arc<dyn VFile>,
    pub(crate) active_seq: u64,
    pub(crate) active_len: u64,
    pub(crate) buf: Vec<u8>,
}

/// Poisons the log if the writer thread dies by panicking, so submitters get an error instead
/// of waiting forever for a sync that will never come.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = lock(&self.0.queue);
            q.poisoned = Some("the writer thread panicked".into());
            for r in q.requests.drain(..) {
                let _ = r
                    .done
                    .send(Err(Error::Poisoned("the writer thread panicked".into())));
            }
            q.bytes = 0;
            self.0.space.notify_all();
        }
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let _guard = PanicGuard(self.shared.clone());
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
        let sync_started = Instant::now();
        self.active
            .sync_data()
            .map_err(|e| Error::io("sync", &path, e))?;
        self.shared
            .stats
            .record_sync(sync_started.elapsed().as_micros() as u64);
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
                // A removed group has no state left to unmark.
                if let Some(g) = st.index.groups.get_mut(g) {
                    g.busy = false;
                }
            }
            base += r.buf.len() as u64;
        }
        let stats = &self.shared.stats;
        Stats::add(&stats.syncs, 1);
        Stats::add(&stats.requests, batch.len() as u64);
        Stats::add(&stats.bytes_written, self.buf.len() as u64);
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
        // At most about one batch of rewrite per rotation (at least one group), so a rewrite
        // delays appends no longer than a large group commit; the rest waits for the next one.
        let mut buf = Vec::new();
        let mut framed = Vec::new();
        for group in &pinning {
            if !framed.is_empty() && buf.len() as u64 >= self.shared.config.max_batch_bytes {
                break;
            }
            let rec = self.checkpoint_record(*group)?;
            let start = buf.len() as u64;
            encode_record(&rec, &mut buf);
            framed.push((rec, start, (buf.len() as u64 - start) as u32));
        }
        let path = segment_path(&self.shared.dir, self.active_seq);
        self.active
            .write_all_at(&buf, self.active_len)
            .map_err(|e| Error::io("write", &path, e))?;
        let sync_started = Instant::now();
        self.active
            .sync_data()
            .map_err(|e| Error::io("sync", &path, e))?;
        self.shared
            .stats
            .record_sync(sync_started.elapsed().as_micros() as u64);
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
        let stats = &self.shared.stats;
        Stats::add(&stats.syncs, 1);
        Stats::add(&stats.bytes_written, buf.len() as u64);
        Stats::add(&stats.rewritten_bytes, buf.len() as u64);
        Stats::add(&stats.rewritten_groups, framed.len() as u64);
        log::info!(
            "rewrote {} of {} groups ({} bytes) pinning segment {oldest} into segment {}",
            framed.len(),
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
            Stats::add(&self.shared.stats.segments_deleted, 1);
        }
        Ok(())
    }
}
