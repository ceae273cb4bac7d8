//! The in-memory view of every group: where each entry lives, the latest hard state, snapshot
//! and compaction point, and which segments each group still needs.
//!
//! [`Index::apply`] is the one place a record changes a group. Recovery replays segments
//! through it and the writer applies freshly synced records through it, so what a reader sees
//! after a restart is by construction what it saw before.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use flotilla_raft::{Entry, EntryKind, HardState, Index as LogIndex, SnapshotMeta, Term};

use crate::error::GroupId;
use crate::record::{Op, Record};

/// Where a record's frame lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment sequence number.
    pub seg: u64,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Frame length.
    pub len: u32,
}

/// One entry's place in the log.
#[derive(Clone, Debug)]
pub(crate) struct EntryMeta {
    pub term: Term,
    pub kind: EntryKind,
    pub data_len: u32,
    pub loc: Loc,
    /// The payload, while it is in the read cache.
    pub data: Option<Bytes>,
}

impl EntryMeta {
    pub fn size_bytes(&self) -> u64 {
        flotilla_raft::ENTRY_OVERHEAD_BYTES + u64::from(self.data_len)
    }
}

/// A group's durable state.
///
/// Entries live in `(base, base + entries.len()]`. While running, `base == trunc_index`.
/// During recovery `base` may run ahead of `trunc_index`: the indexes in between are *holes*,
/// entries whose latest record was in a segment already collected. Replay applies records with
/// "the latest retained record covering an index wins" semantics, so holes are fine while they
/// last; a hole left at the end of recovery means a needed record is gone (an error).
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupState {
    /// Compaction point: entries up to here are gone; `trunc_term` is the term at it.
    pub trunc_index: LogIndex,
    pub trunc_term: Term,
    /// Segment of the record that set the compaction point.
    pub trunc_seg: Option<u64>,
    /// Index before `entries[0]`; `>= trunc_index`.
    pub base: LogIndex,
    pub entries: VecDeque<EntryMeta>,
    pub hard_state: HardState,
    pub hard_state_seg: Option<u64>,
    pub snapshot: SnapshotMeta,
    pub snapshot_seg: Option<u64>,
    /// An operation for this group is between validation and apply.
    pub busy: bool,
}

impl GroupState {
    pub fn first_index(&self) -> LogIndex {
        self.trunc_index + 1
    }

    pub fn last_index(&self) -> LogIndex {
        self.base + self.entries.len() as u64
    }

    /// Term at `index` if it is the compaction point or a held entry.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.trunc_index {
            return Some(self.trunc_term);
        }
        self.entry(index).map(|m| m.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&EntryMeta> {
        if index <= self.base {
            return None;
        }
        self.entries.get((index - self.base - 1) as usize)
    }

    /// Oldest segment this group still needs, or None if it needs none.
    pub fn min_segment(&self) -> Option<u64> {
        let front = self.entries.front().map(|e| e.loc.seg);
        [
            self.trunc_seg,
            self.hard_state_seg,
            self.snapshot_seg,
            front,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Bounded FIFO read cache of recent entry payloads, across all groups.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// (group, index, term) in insertion order; items whose entry is gone are skipped.
    fifo: VecDeque<(GroupId, LogIndex, Term)>,
    bytes: u64,
    max_bytes: u64,
    max_items: usize,
}

/// All groups.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub groups: BTreeMap<GroupId, GroupState>,
    pub cache: Cache,
}

impl Index {
    pub fn new(cache_max_bytes: u64) -> Index {
        let max_items = usize::try_from(cache_max_bytes / 128)
            .unwrap_or(usize::MAX)
            .max(1024);
        Index {
            groups: BTreeMap::new(),
            cache: Cache {
                max_bytes: cache_max_bytes,
                max_items,
                ..Default::default()
            },
        }
    }

    /// Applies one record found at `loc`. With `cache`, entry payloads enter the read cache.
    pub fn apply(&mut self, rec: &Record, loc: Loc, cache: bool) {
        for op in &rec.ops {
            self.apply_op(rec.group, op, loc, cache);
        }
        self.evict();
    }

    fn apply_op(&mut self, group: GroupId, op: &Op, loc: Loc, cache: bool) {
        if matches!(op, Op::Remove) {
            if let Some(g) = self.groups.remove(&group) {
                let cached = g.entries.iter().filter_map(|m| m.data.as_ref());
                self.cache.bytes -= cached
                    .map(|d| flotilla_raft::ENTRY_OVERHEAD_BYTES + d.len() as u64)
                    .sum::<u64>();
            }
            return;
        }
        let g = self.groups.entry(group).or_default();
        let mut dropped_bytes = 0u64;
        let mut drop = |m: EntryMeta| {
            if let Some(d) = m.data {
                dropped_bytes += flotilla_raft::ENTRY_OVERHEAD_BYTES + d.len() as u64;
            }
        };
        match op {
            Op::Entries(entries) => {
                let skip = entries
                    .iter()
                    .take_while(|e| e.index <= g.trunc_index)
                    .count();
                let entries = &entries[skip..];
                if let Some(first) = entries.first() {
                    if first.index > g.last_index() + 1 || first.index <= g.base {
                        // Recovery only (running appends are validated): the entries before
                        // `first` come from collected segments. They become holes.
                        g.entries.drain(..).for_each(&mut drop);
                        g.base = first.index - 1;
                    }
                    let keep = (first.index - g.base - 1) as usize;
                    g.entries.drain(keep..).for_each(&mut drop);
                    for e in entries {
                        g.entries.push_back(EntryMeta {
                            term: e.term,
                            kind: e.kind,
                            data_len: e.data.len() as u32,
                            loc,
                            data: cache.then(|| e.data.clone()),
                        });
                        if cache {
                            self.cache.fifo.push_back((group, e.index, e.term));
                            self.cache.bytes += e.size_bytes();
                        }
                    }
                }
            }
            Op::HardState(hs) => {
                g.hard_state = *hs;
                g.hard_state_seg = Some(loc.seg);
            }
            Op::Compact { index, term } => {
                if *index > g.trunc_index {
                    if *index > g.base {
                        let n = (*index - g.base).min(g.entries.len() as u64) as usize;
                        g.entries.drain(..n).for_each(&mut drop);
                        g.base = *index;
                    }
                    g.trunc_index = *index;
                    g.trunc_term = *term;
                    g.trunc_seg = Some(loc.seg);
                }
            }
            Op::Reset { index, term } => {
                g.entries.drain(..).for_each(&mut drop);
                g.trunc_index = *index;
                g.trunc_term = *term;
                g.trunc_seg = Some(loc.seg);
                g.base = *index;
            }
            Op::SnapshotMeta(meta) => {
                g.snapshot = meta.clone();
                g.snapshot_seg = Some(loc.seg);
            }
            Op::Remove => unreachable!("handled above"),
        }
        self.cache.bytes -= dropped_bytes;
    }

    fn evict(&mut self) {
        let c = &mut self.cache;
        while c.bytes > c.max_bytes || c.fifo.len() > c.max_items {
            let Some((group, index, term)) = c.fifo.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if index <= g.base {
                continue;
            }
            if let Some(m) = g.entries.get_mut((index - g.base - 1) as usize) {
                if m.term == term {
                    if let Some(d) = m.data.take() {
                        c.bytes -= flotilla_raft::ENTRY_OVERHEAD_BYTES + d.len() as u64;
                    }
                }
            }
        }
    }

    /// Builds an entry from its meta and payload.
    pub fn make_entry(index: LogIndex, m: &EntryMeta, data: Bytes) -> Entry {
        Entry {
            term: m.term,
            index,
            kind: m.kind,
            data,
        }
    }
}
