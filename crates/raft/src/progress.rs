//! The leader's view of each follower: how far it matches, what to send next, and how much
//! may be in flight (flow control).

use std::collections::VecDeque;

use crate::types::Index;

/// Replication mode for one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: send one append per heartbeat interval
    /// and wait for the answer before sending more.
    Probe,
    /// The follower is known to match up to `matched`: stream appends optimistically, up to
    /// the in-flight window.
    Replicate,
    /// The follower needs a snapshot; appends pause until it has been installed.
    Snapshot,
}

/// Bounded window of append messages sent but not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// `(last index in the message, bytes in the message)`, oldest first.
    sent: VecDeque<(Index, u64)>,
    bytes: u64,
    max_msgs: usize,
    max_bytes: u64,
}

impl Inflights {
    /// An empty window bounded by `max_msgs` messages and `max_bytes` bytes.
    pub fn new(max_msgs: usize, max_bytes: u64) -> Self {
        assert!(max_msgs > 0, "inflight window must allow one message");
        Inflights {
            sent: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    /// Records a message whose last entry is `last`.
    pub fn add(&mut self, last: Index, bytes: u64) {
        debug_assert!(!self.full(), "sending past a full inflight window");
        debug_assert!(
            self.sent.back().is_none_or(|&(l, _)| l < last),
            "inflights not increasing"
        );
        self.sent.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last entry is at or below `index` (acknowledged).
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.sent.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message (a heartbeat answer proves the follower is alive, so one slot
    /// opens to keep a stalled window moving).
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.sent.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// True when no more messages may be sent.
    pub fn full(&self) -> bool {
        self.sent.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Drops everything.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }
}

/// Replication progress of one member, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Replication mode.
    pub state: ProgressState,
    /// In `Probe`: an append is outstanding; wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In `Snapshot`: the index of the snapshot sent.
    pub pending_snapshot: Index,
    /// In `Snapshot`: ticks since the snapshot was sent (to retry a lost one).
    pub snapshot_ticks: u32,
    /// Heard from within the current check-quorum period.
    pub recent_active: bool,
    /// Append messages in flight.
    pub inflights: Inflights,
}

impl Progress {
    /// Progress for a member the leader knows nothing about yet.
    pub fn new(next: Index, max_inflight_msgs: usize, max_inflight_bytes: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_ticks: 0,
            recent_active: false,
            inflights: Inflights::new(max_inflight_msgs, max_inflight_bytes),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_ticks = 0;
        self.state = state;
        self.inflights.reset();
    }

    /// Switches to probing. Coming from `Snapshot`, resume after the snapshot sent.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    /// Switches to streaming.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    /// Switches to waiting for a snapshot at `index` to be installed.
    pub fn become_snapshot(&mut self, index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Records that the follower matches up to `n`. Returns false if that is old news.
    pub fn maybe_update(&mut self, n: Index) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// Handles a rejection of the append whose `prev_index` was `rejected`; `hint_next` is
    /// where the follower's hint says to resume. Returns false for a stale rejection.
    pub fn maybe_decr_to(&mut self, rejected: Index, hint_next: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(hint_next).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// True if no append should be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_is_bounded_by_messages_and_bytes() {
        let mut w = Inflights::new(2, 100);
        w.add(1, 10);
        assert!(!w.full());
        w.add(2, 10);
        assert!(w.full());
        w.free_to(1);
        assert!(!w.full());
        w.add(3, 95);
        assert!(w.full(), "byte bound reached");
        w.free_to(3);
        assert!(w.is_empty());
    }

    #[test]
    fn probe_rejection_moves_next_back_to_the_hint() {
        let mut p = Progress::new(10, 4, 1 << 20);
        assert!(p.maybe_decr_to(9, 4));
        assert_eq!(p.next, 4);
        assert!(
            !p.maybe_decr_to(9, 2),
            "a second answer to the same probe is stale"
        );
    }

    #[test]
    fn replicate_rejection_below_match_is_stale() {
        let mut p = Progress::new(1, 4, 1 << 20);
        p.maybe_update(5);
        p.become_replicate();
        assert!(!p.maybe_decr_to(5, 1));
        assert!(p.maybe_decr_to(7, 1));
        assert_eq!(p.next, 6);
    }
}
