//! The Raft log as the core sees it: durable entries in [`Storage`] followed by entries that
//! are not yet durable (the "unstable" tail, handed to the host in the next `Ready`).

use crate::storage::{limit_size, Storage, StorageError};
use crate::types::{Entry, Index, Snapshot, Term};

/// Entries and a snapshot that the host has not yet persisted.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot received from the leader, to be persisted and applied.
    snapshot: Option<Snapshot>,
    /// Entries not yet durable; `entries[0].index == offset`.
    entries: Vec<Entry>,
    offset: Index,
}

impl Unstable {
    fn first_index(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|s| s.meta.index + 1)
    }

    fn last_index(&self) -> Option<Index> {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => Some(e.index),
            (None, Some(s)) => Some(s.meta.index),
            (None, None) => None,
        }
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.meta.index == index)
                .map(|s| s.meta.term);
        }
        self.entries
            .get((index - self.offset) as usize)
            .map(|e| e.term)
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        if after == self.offset + self.entries.len() as u64 {
            // Directly after what we hold.
        } else if after <= self.offset {
            // Replaces everything unstable (and, once persisted, a suffix of storage).
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        self.entries.extend_from_slice(ents);
    }
}

/// Durable log plus unstable tail, with commit and apply positions.
pub struct RaftLog<S> {
    /// Durable part.
    pub store: S,
    unstable: Unstable,
    /// Highest index known committed.
    pub committed: Index,
    /// Highest index the host has applied (advanced past).
    pub applied: Index,
}

impl<S: Storage> RaftLog<S> {
    /// Wraps `store`; the unstable tail starts after its last index.
    pub fn new(store: S, committed: Index, applied: Index) -> Result<Self, StorageError> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        let applied = applied.max(first - 1);
        // Commit is volatile state (Raft §5.3, Figure 2): a host may persist a hard state
        // whose commit lags (hosts skip the fsync for commit-only changes). Everything up to
        // the snapshot / applied index was committed before it was applied, so restart from
        // at least there.
        let committed = committed.max(applied);
        assert!(
            committed <= last,
            "commit {committed} beyond stored log end {last}"
        );
        assert!(
            applied <= committed,
            "applied {applied} beyond commit {committed}"
        );
        Ok(RaftLog {
            store,
            unstable: Unstable {
                offset: last + 1,
                ..Default::default()
            },
            committed,
            applied,
        })
    }

    /// First index still held (durably or not).
    pub fn first_index(&self) -> Index {
        self.unstable
            .first_index()
            .unwrap_or_else(|| self.store.first_index().expect("storage"))
    }

    /// Last index held.
    pub fn last_index(&self) -> Index {
        self.unstable
            .last_index()
            .unwrap_or_else(|| self.store.last_index().expect("storage"))
    }

    /// Term at `index`; the entry before `first_index()` (the snapshot) has a known term.
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(StorageError::Compacted {
                index,
                first_index: dummy + 1,
            });
        }
        let last_index = self.last_index();
        if index > last_index {
            return Err(StorageError::Unavailable { index, last_index });
        }
        match self.unstable.term(index) {
            Some(t) => Ok(t),
            None => self.store.term(index),
        }
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.term(self.last_index())
            .expect("last index always has a term")
    }

    /// True if the entry at `index` has term `term`.
    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Ok(term)
    }

    /// Raft §5.4.1: is a log ending at (`last_index`, `last_term`) at least as up to date?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Index of the first entry in `ents` that is new or conflicts with ours, or 0 if all match.
    fn find_conflict(&self, ents: &[Entry]) -> Index {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, with its term (0 if unknown).
    /// A leader and follower use it to skip a whole term of mismatches per round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => {}
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
            if i == 0 {
                return (0, 0);
            }
            i -= 1;
        }
    }

    /// Follower side of AppendEntries: if our log matches at `prev`, append `ents` (dropping a
    /// conflicting suffix) and advance commit. Returns the index of the last new entry.
    pub fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        committed: Index,
        ents: &[Entry],
    ) -> Option<Index> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + ents.len() as u64;
        let conflict = self.find_conflict(ents);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (commit {})",
                self.committed
            );
            let start = (conflict - prev_index - 1) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    /// Appends entries (the first may overwrite a suffix). Returns the new last index.
    pub fn append(&mut self, ents: &[Entry]) -> Index {
        if let Some(first) = ents.first() {
            assert!(
                first.index > self.committed,
                "appending at {} would overwrite committed {}",
                first.index,
                self.committed
            );
            self.unstable.truncate_and_append(ents);
        }
        self.last_index()
    }

    /// Entries in `[lo, hi)` bounded by `max_bytes` (at least one if any).
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted {
                index: lo,
                first_index: first,
            });
        }
        let last_index = self.last_index();
        if hi > last_index + 1 {
            return Err(StorageError::Unavailable {
                index: hi - 1,
                last_index,
            });
        }
        let mut out = Vec::new();
        let off = self.unstable.offset;
        if lo < off {
            out = self.store.entries(lo, hi.min(off), max_bytes)?;
            if (out.len() as u64) < hi.min(off) - lo {
                return Ok(out); // size-limited
            }
        }
        if hi > off {
            let from = (lo.max(off) - off) as usize;
            let to = (hi - off) as usize;
            out.extend_from_slice(&self.unstable.entries[from..to]);
        }
        limit_size(&mut out, max_bytes);
        Ok(out)
    }

    /// Advances commit (never backwards).
    pub fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Leader side: commit `index` if it is newer and from `term` (Raft §5.4.2).
    pub fn maybe_commit(&mut self, index: Index, term: Term) -> bool {
        if index > self.committed && self.term(index) == Ok(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.meta.index;
        self.unstable.offset = snapshot.meta.index + 1;
        self.unstable.entries.clear();
        self.unstable.snapshot = Some(snapshot);
    }

    /// The snapshot to send a lagging follower: a pending received one, or the stored one.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.store.snapshot(),
        }
    }

    /// The unstable snapshot, if any.
    pub fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable.snapshot.as_ref()
    }

    /// Entries not yet durable.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// The host persisted entries up to (`index`, `term`).
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if self.unstable.term(index) == Some(term) && index >= self.unstable.offset {
            let n = (index + 1 - self.unstable.offset) as usize;
            self.unstable.entries.drain(..n);
            self.unstable.offset = index + 1;
        }
    }

    /// The host persisted the snapshot at `index`.
    pub fn stable_snap_to(&mut self, index: Index) {
        if self
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.meta.index == index)
        {
            self.unstable.snapshot = None;
        }
    }

    /// Committed entries not yet handed to the host, bounded by `max_bytes`.
    pub fn next_committed_entries(&self, max_bytes: u64) -> Vec<Entry> {
        let lo = (self.applied + 1).max(self.first_index());
        if self.committed < lo {
            return Vec::new();
        }
        self.slice(lo, self.committed + 1, max_bytes)
            .expect("committed entries are in the log")
    }

    /// True if there are committed entries to hand to the host.
    pub fn has_next_committed_entries(&self) -> bool {
        self.committed > self.applied.max(self.first_index() - 1)
    }
}
