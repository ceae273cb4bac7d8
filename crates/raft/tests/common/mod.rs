//! A synchronous in-memory network of `RawNode`s for behaviour tests: every message is
//! delivered at once unless a link is cut or a test-supplied hook drops or rewrites it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use flotilla_raft::*;

/// A message hook: return `None` to drop the message, or a (possibly rewritten) message.
pub type Hook = Box<dyn FnMut(Message) -> Option<Message>>;

pub struct Net {
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub readies: BTreeMap<NodeId, Vec<ReadySummary>>,
    pub sent: Vec<Message>,
    pub hook: Option<Hook>,
    queue: VecDeque<Message>,
}

/// What one handled `Ready` contained (for tests of the persistence contract).
#[derive(Clone, Debug)]
pub struct ReadySummary {
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub snapshot: Option<Snapshot>,
    pub messages: Vec<Message>,
}

pub fn config(id: NodeId) -> Config {
    Config {
        election_ticks: 10,
        heartbeat_ticks: 1,
        seed: id * 7919,
        ..Config::new(id)
    }
}

impl Net {
    /// `n` voters with ids 1..=n and default test configs.
    pub fn new(n: u64) -> Net {
        Net::with(n, |_| {})
    }

    /// Like `new`, letting the test adjust each node's config.
    pub fn with(n: u64, adjust: impl Fn(&mut Config)) -> Net {
        let conf = ConfState::with_voters(1..=n);
        let stores = (1..=n)
            .map(|id| (id, MemStorage::new_with_conf_state(conf.clone())))
            .collect();
        Net::from_stores(stores, adjust)
    }

    pub fn from_stores(stores: Vec<(NodeId, MemStorage)>, adjust: impl Fn(&mut Config)) -> Net {
        let mut nodes = BTreeMap::new();
        for (id, store) in stores {
            let mut cfg = config(id);
            adjust(&mut cfg);
            nodes.insert(id, RawNode::new(cfg, store).expect("valid config"));
        }
        Net {
            nodes,
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            readies: BTreeMap::new(),
            sent: Vec::new(),
            hook: None,
            queue: VecDeque::new(),
        }
    }

    /// Adds a node that starts with an empty configuration (it learns it from the leader).
    pub fn add_node(&mut self, id: NodeId) {
        let node = RawNode::new(config(id), MemStorage::default()).unwrap();
        self.nodes.insert(id, node);
    }

    pub fn node(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    pub fn status(&self, id: NodeId) -> Status {
        self.nodes[&id].status()
    }

    /// Handles every pending Ready of node `id` the way a correct host does.
    fn handle_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while node.has_ready() {
            let rd = node.ready();
            let store = node.store_mut();
            if let Some(s) = &rd.snapshot {
                store.apply_snapshot(s.clone());
            }
            store.append(&rd.entries);
            if let Some(hs) = rd.hard_state {
                store.set_hard_state(hs);
            }
            self.readies.entry(id).or_default().push(ReadySummary {
                hard_state: rd.hard_state,
                entries: rd.entries.clone(),
                snapshot: rd.snapshot.clone(),
                messages: rd.messages.clone(),
            });
            self.applied
                .entry(id)
                .or_default()
                .extend(rd.committed_entries.iter().cloned());
            self.read_states
                .entry(id)
                .or_default()
                .extend(rd.read_states.iter().cloned());
            self.queue.extend(rd.messages);
            node.advance();
        }
    }

    /// Delivers messages until the network is quiet.
    pub fn settle(&mut self) {
        for round in 0.. {
            assert!(round < 100_000, "network did not settle");
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle_ready(id);
            }
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            self.sent.push(m.clone());
            if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            let m = match self.hook.as_mut() {
                Some(h) => match h(m) {
                    Some(m) => m,
                    None => continue,
                },
                None => m,
            };
            let to = m.to;
            self.node(to).step(m).expect("step");
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        self.node(id).tick();
        self.settle();
    }

    /// Ticks every node `n` times, settling after each round.
    pub fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    pub fn campaign(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.settle();
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<Index, Error> {
        let r = self.node(id).propose(Bytes::copy_from_slice(data));
        self.settle();
        r
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.status().role == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Application payloads (non-empty normal entries) applied at `id`.
    pub fn applied_data(&self, id: NodeId) -> Vec<Bytes> {
        self.applied
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty())
                    .map(|e| e.data.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Builds a store holding `terms[i]` at index `i + 1`, with hard-state term `term`.
pub fn store_with_log(voters: u64, terms: &[Term], term: Term) -> MemStorage {
    let mut s = MemStorage::new_with_conf_state(ConfState::with_voters(1..=voters));
    let ents: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: t,
            index: i as u64 + 1,
            kind: EntryKind::Normal,
            data: Bytes::from(format!("e{}t{}", i + 1, t)),
        })
        .collect();
    s.append(&ents);
    s.set_hard_state(HardState {
        term,
        vote: NO_NODE,
        commit: 0,
    });
    s
}
