//! Shared by the conformance and crash tests: random Raft-like operations, applied both to
//! `MemStorage` (the model) and to the WAL, and a full observation of a `Storage`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_raft::{
    ConfState, Entry, EntryKind, HardState, MemStorage, Snapshot, SnapshotMeta, Storage,
    StorageError, Term,
};
use flotilla_wal::{GroupWrite, Wal, WalGroup};
use proptest::prelude::*;

pub const GROUPS: u64 = 3;

/// One operation, as raw choices; [`Op::resolve`] turns it into something valid for the
/// model's current state.
#[derive(Clone, Debug)]
pub enum Op {
    /// Appends `n` entries at a position chosen by `at` in `[first, last + 1]` (so it may
    /// overwrite a suffix), optionally with a new hard state, for each listed group, as one
    /// multi-group `Wal::append`.
    Append(Vec<(u64, u8, u8, bool, Option<u8>)>),
    /// A new hard state.
    HardState { group: u64, vote: u8, commit: u8 },
    /// The host snapshots at a position chosen by `at` and compacts the log to it.
    CreateSnapshot { group: u64, at: u8 },
    /// A leader's snapshot `ahead` entries past the current one; `conflict` gives it a
    /// term the log does not have at that index.
    ApplySnapshot {
        group: u64,
        ahead: u8,
        conflict: bool,
    },
    /// The group leaves the node: everything about it is forgotten.
    Remove { group: u64 },
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    let write = (
        0..GROUPS,
        any::<u8>(),
        1..4u8,
        any::<bool>(),
        proptest::option::of(any::<u8>()),
    );
    prop_oneof![
        5 => proptest::collection::vec(write, 1..4).prop_map(|mut ws| {
            ws.sort_by_key(|w| w.0);
            ws.dedup_by_key(|w| w.0);
            Op::Append(ws)
        }),
        2 => (0..GROUPS, any::<u8>(), any::<u8>())
            .prop_map(|(group, vote, commit)| Op::HardState { group, vote, commit }),
        1 => (0..GROUPS, any::<u8>()).prop_map(|(group, at)| Op::CreateSnapshot { group, at }),
        1 => (0..GROUPS, any::<u8>(), any::<bool>())
            .prop_map(|(group, ahead, conflict)| Op::ApplySnapshot { group, ahead, conflict }),
        1 => (0..GROUPS).prop_map(|group| Op::Remove { group }),
    ]
}

/// A concrete, valid operation.
#[derive(Clone, Debug)]
pub enum Concrete {
    Append(Vec<GroupWrite>),
    CreateSnapshot {
        group: u64,
        index: u64,
        conf: ConfState,
        data: Bytes,
    },
    ApplySnapshot {
        group: u64,
        snapshot: Snapshot,
    },
    Remove {
        group: u64,
    },
}

fn last_term(m: &MemStorage) -> Term {
    m.term(m.last_index().unwrap()).unwrap()
}

impl Op {
    /// Turns raw choices into a valid operation for `models`; `seq` makes payloads unique.
    pub fn resolve(&self, models: &BTreeMap<u64, MemStorage>, seq: u64) -> Option<Concrete> {
        let model = |g: u64| models.get(&g).cloned().unwrap_or_default();
        match self {
            Op::Append(ws) => {
                let mut out = Vec::new();
                for &(group, at, n, bump, hs) in ws {
                    let m = model(group);
                    let (first, last) = (m.first_index().unwrap(), m.last_index().unwrap());
                    let start = first + u64::from(at) % (last + 2 - first);
                    let prev_term = m.term(start - 1).unwrap();
                    let term = last_term(&m).max(prev_term) + u64::from(bump);
                    let entries = (start..start + u64::from(n))
                        .map(|index| Entry {
                            index,
                            term,
                            kind: if index % 5 == 0 {
                                EntryKind::ConfChange
                            } else {
                                EntryKind::Normal
                            },
                            data: Bytes::from(format!("g{group} i{index} t{term} s{seq}")),
                        })
                        .collect();
                    let hard_state = hs.map(|c| HardState {
                        term,
                        vote: u64::from(c % 3) + 1,
                        commit: u64::from(c) % (start + u64::from(n)),
                    });
                    out.push(GroupWrite {
                        group,
                        entries,
                        hard_state,
                    });
                }
                Some(Concrete::Append(out))
            }
            Op::HardState {
                group,
                vote,
                commit,
            } => {
                let m = model(*group);
                let hs = HardState {
                    term: m.hard_state().term.max(last_term(&m)) + 1,
                    vote: u64::from(*vote % 3),
                    commit: u64::from(*commit) % (m.last_index().unwrap() + 1),
                };
                Some(Concrete::Append(vec![GroupWrite {
                    group: *group,
                    entries: vec![],
                    hard_state: Some(hs),
                }]))
            }
            Op::CreateSnapshot { group, at } => {
                let m = model(*group);
                let snap = m.snapshot().unwrap().meta.index;
                let last = m.last_index().unwrap();
                if last <= snap {
                    return None;
                }
                let index = snap + 1 + u64::from(*at) % (last - snap);
                let conf = ConfState::with_voters(1..=(index % 3 + 1));
                let data = Bytes::from(format!("snapshot g{group} i{index} s{seq}"));
                Some(Concrete::CreateSnapshot {
                    group: *group,
                    index,
                    conf,
                    data,
                })
            }
            Op::Remove { group } => Some(Concrete::Remove { group: *group }),
            Op::ApplySnapshot {
                group,
                ahead,
                conflict,
            } => {
                let m = model(*group);
                let snap = m.snapshot().unwrap().meta.index;
                let index = snap + 1 + u64::from(*ahead % 8);
                let term = match m.term(index) {
                    Ok(t) if !conflict => t,
                    _ => last_term(&m) + 1,
                };
                let meta = SnapshotMeta {
                    index,
                    term,
                    conf_state: ConfState::with_voters([1, 2]),
                };
                let data = Bytes::from(format!("leader snapshot g{group} i{index} s{seq}"));
                Some(Concrete::ApplySnapshot {
                    group: *group,
                    snapshot: Snapshot { meta, data },
                })
            }
        }
    }
}

impl Concrete {
    /// Groups this operation touches.
    pub fn groups(&self) -> Vec<u64> {
        match self {
            Concrete::Append(ws) => ws.iter().map(|w| w.group).collect(),
            Concrete::CreateSnapshot { group, .. }
            | Concrete::ApplySnapshot { group, .. }
            | Concrete::Remove { group } => vec![*group],
        }
    }

    /// Applies to the model.
    pub fn apply_model(&self, models: &mut BTreeMap<u64, MemStorage>) {
        match self {
            Concrete::Append(ws) => {
                for w in ws {
                    let m = models.entry(w.group).or_default();
                    m.append(&w.entries);
                    if let Some(hs) = w.hard_state {
                        m.set_hard_state(hs);
                    }
                }
            }
            Concrete::CreateSnapshot {
                group,
                index,
                conf,
                data,
            } => models.entry(*group).or_default().create_snapshot(
                *index,
                conf.clone(),
                data.clone(),
            ),
            Concrete::ApplySnapshot { group, snapshot } => models
                .entry(*group)
                .or_default()
                .apply_snapshot(snapshot.clone()),
            Concrete::Remove { group } => {
                models.remove(group);
            }
        }
    }

    /// Applies to the WAL.
    pub fn apply_wal(&self, wal: &std::sync::Arc<Wal>) -> flotilla_wal::Result<()> {
        match self {
            Concrete::Append(ws) => wal.append(ws),
            Concrete::CreateSnapshot {
                group,
                index,
                conf,
                data,
            } => WalGroup::new(wal.clone(), *group).create_snapshot(
                *index,
                conf.clone(),
                data.clone(),
            ),
            Concrete::ApplySnapshot { group, snapshot } => {
                WalGroup::new(wal.clone(), *group).apply_snapshot(snapshot.clone())
            }
            Concrete::Remove { group } => wal.remove_group(*group),
        }
    }
}

/// Everything a `Storage` answers: state, every term and entry, errors on both sides of the
/// held range, size-limited reads, and the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    pub initial_state: Result<(HardState, ConfState), StorageError>,
    pub first_index: Result<u64, StorageError>,
    pub last_index: Result<u64, StorageError>,
    pub terms: Vec<Result<Term, StorageError>>,
    pub reads: Vec<Result<Vec<Entry>, StorageError>>,
    pub snapshot: Result<Snapshot, StorageError>,
}

pub fn observe(s: &impl Storage) -> Observed {
    let first = s.first_index().unwrap_or(1);
    let last = s.last_index().unwrap_or(0);
    let terms = (first.saturating_sub(2)..=last + 1)
        .map(|i| s.term(i))
        .collect();
    let mut reads = Vec::new();
    for lo in first.saturating_sub(1).max(1)..=last + 1 {
        reads.push(s.entries(lo, last + 1, u64::MAX));
        reads.push(s.entries(lo, last + 2, u64::MAX));
        reads.push(s.entries(lo, (lo + 2).min(last + 1).max(lo), 70));
    }
    Observed {
        initial_state: s.initial_state(),
        first_index: s.first_index(),
        last_index: s.last_index(),
        terms,
        reads,
        snapshot: s.snapshot(),
    }
}
