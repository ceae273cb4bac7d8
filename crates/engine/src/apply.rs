//! Apply workers: run the state machines off the consensus path, so a slow `apply` delays
//! results but never elections or replication. Each group is pinned to one worker, which
//! applies its entries strictly in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use flotilla_raft::{Entry, EntryKind, Index};
use tokio::sync::oneshot;

use crate::codec::GroupId;
use crate::error::{EngineError, Result};
use crate::host::{Cmd, Event, NodeHostInner};
use crate::state_machine::{AppliedEntry, StateMachine};

/// Where a caller's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum ApplyTask {
    Add {
        group: GroupId,
        sm: Box<dyn StateMachine>,
        snapshot_index: Index,
        snapshot: Bytes,
    },
    Remove {
        group: GroupId,
    },
    Apply {
        group: GroupId,
        snapshot: Option<(Index, Bytes)>,
        entries: Vec<Entry>,
        completions: Vec<(Index, Reply<Bytes>)>,
    },
    Barrier {
        group: GroupId,
        index: Index,
        reply: Reply<()>,
    },
}

struct WorkerGroup {
    sm: Box<dyn StateMachine>,
    applied: Index,
    last_snapshot: Index,
    barriers: Vec<(Index, Reply<()>)>,
}

pub(crate) struct Worker {
    pub rx: Receiver<ApplyTask>,
    pub cmd_tx: Sender<Cmd>,
    pub inner: Arc<NodeHostInner>,
    pub snapshot_interval: u64,
}

impl Worker {
    pub fn run(self) {
        let mut groups: BTreeMap<GroupId, WorkerGroup> = BTreeMap::new();
        while let Ok(task) = self.rx.recv() {
            match task {
                ApplyTask::Add {
                    group,
                    mut sm,
                    snapshot_index,
                    snapshot,
                } => {
                    sm.restore(&snapshot);
                    let wg = WorkerGroup {
                        sm,
                        applied: snapshot_index,
                        last_snapshot: snapshot_index,
                        barriers: Vec::new(),
                    };
                    groups.insert(group, wg);
                }
                ApplyTask::Remove { group } => {
                    if let Some(wg) = groups.remove(&group) {
                        for (_, reply) in wg.barriers {
                            let _ = reply.send(Err(EngineError::GroupNotFound(group)));
                        }
                    }
                }
                ApplyTask::Apply {
                    group,
                    snapshot,
                    entries,
                    completions,
                } => {
                    let Some(wg) = groups.get_mut(&group) else {
                        continue;
                    };
                    self.apply(group, wg, snapshot, entries, completions);
                }
                ApplyTask::Barrier {
                    group,
                    index,
                    reply,
                } => match groups.get_mut(&group) {
                    Some(wg) if wg.applied >= index => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(wg) => wg.barriers.push((index, reply)),
                    None => {
                        let _ = reply.send(Err(EngineError::GroupNotFound(group)));
                    }
                },
            }
        }
    }

    fn apply(
        &self,
        group: GroupId,
        wg: &mut WorkerGroup,
        snapshot: Option<(Index, Bytes)>,
        entries: Vec<Entry>,
        completions: Vec<(Index, Reply<Bytes>)>,
    ) {
        if let Some((index, data)) = snapshot {
            wg.sm.restore(&data);
            wg.applied = index;
            wg.last_snapshot = index;
        }
        let Some(last) = entries.last().map(|e| e.index) else {
            self.finish(group, wg);
            return;
        };
        assert!(
            entries[0].index == wg.applied + 1,
            "group {group}: applying {} after {}",
            entries[0].index,
            wg.applied
        );
        let app: Vec<AppliedEntry> = entries
            .into_iter()
            .filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty())
            .map(|e| AppliedEntry {
                index: e.index,
                term: e.term,
                data: e.data,
            })
            .collect();
        let results = if app.is_empty() {
            Vec::new()
        } else {
            wg.sm.apply(&app)
        };
        assert_eq!(
            results.len(),
            app.len(),
            "state machine must return one result per entry"
        );
        let mut by_index: BTreeMap<Index, Bytes> =
            app.iter().map(|e| e.index).zip(results).collect();
        for (index, reply) in completions {
            let res = by_index.remove(&index).ok_or_else(|| {
                EngineError::Dropped(format!("entry {index} is not an application entry"))
            });
            let _ = reply.send(res);
        }
        wg.applied = last;
        self.finish(group, wg);
    }

    /// Releases read barriers, takes a snapshot when due, publishes the applied index.
    fn finish(&self, group: GroupId, wg: &mut WorkerGroup) {
        let applied = wg.applied;
        wg.barriers.retain_mut(|(index, _)| *index > applied);
        let mut i = 0;
        while i < wg.barriers.len() {
            if wg.barriers[i].0 <= applied {
                let (_, reply) = wg.barriers.swap_remove(i);
                let _ = reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
        if applied >= wg.last_snapshot + self.snapshot_interval {
            let data = wg.sm.snapshot();
            wg.last_snapshot = applied;
            let _ = self.cmd_tx.send(Cmd::SnapshotTaken {
                group,
                index: applied,
                data,
            });
        }
        self.inner.publish(Event::Applied {
            group,
            index: applied,
        });
    }
}
