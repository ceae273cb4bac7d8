//! A simulated cluster: nodes running the Raft core over a simulated network and disk, driven
//! by one seeded RNG and a discrete event queue. Nothing here reads a clock or spawns a thread,
//! so a seed replays exactly.
//!
//! Time is in simulated milliseconds. Each node ticks every `tick_ms`. Handling a `Ready`
//! takes simulated disk time; until it completes the node is busy (inputs queue up), and a
//! crash in that window loses the `Ready` — everything not yet persisted, plus the messages
//! that depended on it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use flotilla_raft::{
    ConfChangeOp, ConfState, Config, Entry, EntryKind, Error, Faults, Index, Message, MessageBody,
    NodeId, RawNode, Ready, Role, Storage, Term,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kv::{fnv1a, Command, Registers, WriteOp, WriteResult};
use crate::linearizability::{KvInput, KvOutput, Operation};
use crate::store::{MemStores, SimStore, StoreFactory};

/// Knobs of one simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for everything random in the run.
    pub seed: u64,
    /// Initial voters (ids `1..=nodes`).
    pub nodes: u64,
    /// Milliseconds between ticks.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: u32,
    /// Message latency is uniform in `[1, max_latency_ms]` (so messages reorder).
    pub max_latency_ms: u64,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Persisting a `Ready` takes uniform `[1, max_disk_ms]` (0 disables disk latency).
    pub max_disk_ms: u64,
    /// Take a snapshot and compact once this many entries are applied past the last one.
    pub snapshot_every: u64,
    /// Most entries per append message (small values split catch-up into many messages).
    pub max_msg_entries: usize,
    /// Most append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers the clients use.
    pub keys: u64,
    /// A client gives up on an operation (outcome unknown) after this long.
    pub client_timeout_ms: u64,
    /// Core configuration faults (deliberate bugs), for proving the checkers work.
    pub faults: Faults,
    /// Record a human-readable trace.
    pub trace: bool,
}

impl SimConfig {
    /// Defaults for a 5-node cluster with a mildly unreliable network.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 5,
            tick_ms: 10,
            election_ticks: 10,
            max_latency_ms: 5,
            loss: 0.0,
            duplicate: 0.0,
            max_disk_ms: 2,
            snapshot_every: 64,
            max_msg_entries: 64,
            max_inflight_msgs: 16,
            clients: 0,
            keys: 3,
            client_timeout_ms: 400,
            faults: Faults::default(),
            trace: false,
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver(Message),
    Tick { node: NodeId, incarnation: u64 },
    DiskDone { node: NodeId, incarnation: u64 },
    ClientWake { client: usize },
    ClientTimeout { client: usize, seq: u64 },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A client request as it reaches a node.
#[derive(Clone, Copy, Debug)]
enum Request {
    Write(Command),
    Read { client: usize, seq: u64, key: u64 },
}

enum Input {
    Msg(Message),
    Tick,
    Request(Request),
}

/// One simulated server.
pub struct SimNode {
    /// Running core; `None` while crashed.
    raw: Option<RawNode<Box<dyn SimStore>>>,
    /// Initial membership for the first start (None for nodes added later).
    bootstrap: Option<ConfState>,
    incarnation: u64,
    sm: Registers,
    applied: Index,
    inbox: VecDeque<Input>,
    in_ready: Option<Ready>,
    /// Writes proposed here, by (client, seq): answered when applied here.
    proposed: BTreeSet<(u64, u64)>,
    /// Reads awaiting their ReadIndex answer, by request id.
    reads: BTreeMap<u64, (usize, u64, u64)>,
    /// Reads confirmed at an index not yet applied here.
    reads_waiting: Vec<(Index, usize, u64, u64)>,
    last_commit: Index,
    last_term: Term,
    snapshots_installed: u64,
}

impl SimNode {
    fn new(bootstrap: Option<ConfState>) -> Self {
        SimNode {
            raw: None,
            bootstrap,
            incarnation: 0,
            sm: Registers::default(),
            applied: 0,
            inbox: VecDeque::new(),
            in_ready: None,
            proposed: BTreeSet::new(),
            reads: BTreeMap::new(),
            reads_waiting: Vec::new(),
            last_commit: 0,
            last_term: 0,
            snapshots_installed: 0,
        }
    }

    /// True while running.
    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }
}

#[derive(Debug)]
struct ClientState {
    seq: u64,
    /// Outstanding op: (history call time, key, input, seq).
    outstanding: Option<(u64, u64, KvInput, u64)>,
    leader_hint: Option<NodeId>,
    /// Last value this client saw per key, to make CAS succeed sometimes.
    seen: BTreeMap<u64, Option<u64>>,
}

/// A cluster under simulation.
pub struct Sim {
    /// Its configuration.
    pub cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<Scheduled>>,
    /// The servers, by id (including removed and not-yet-started ones).
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// Cut links `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    clients: Vec<ClientState>,
    clients_active: bool,
    /// Completed (or abandoned) client operations.
    pub history: Vec<Operation>,
    history_clock: u64,
    next_value: u64,
    next_read_id: u64,
    /// Invariant violations found so far.
    pub violations: Vec<String>,
    committed: BTreeMap<Index, (Term, u64)>,
    sm_at: BTreeMap<Index, u64>,
    leader_of_term: BTreeMap<Term, NodeId>,
    trace_lines: Vec<String>,
    trace_hash: u64,
    /// Events processed (a rough measure of work).
    pub events_processed: u64,
    /// What happened, counted by kind (crashes, partitions, elections, ...).
    pub stats: BTreeMap<&'static str, u64>,
    stores: Box<dyn StoreFactory>,
}

impl Sim {
    /// A cluster of `cfg.nodes` voters, all started, on in-memory storage.
    pub fn new(cfg: SimConfig) -> Sim {
        Sim::with_stores(cfg, Box::new(MemStores::default()))
    }

    /// A cluster whose nodes keep their logs in `stores`.
    pub fn with_stores(cfg: SimConfig, stores: Box<dyn StoreFactory>) -> Sim {
        let conf = ConfState::with_voters(1..=cfg.nodes);
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            clients: Vec::new(),
            clients_active: false,
            history: Vec::new(),
            history_clock: 0,
            next_value: 1,
            next_read_id: 1,
            violations: Vec::new(),
            committed: BTreeMap::new(),
            sm_at: BTreeMap::new(),
            leader_of_term: BTreeMap::new(),
            trace_lines: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            events_processed: 0,
            stats: BTreeMap::new(),
            stores,
            cfg,
        };
        for id in 1..=sim.cfg.nodes {
            sim.nodes.insert(id, SimNode::new(Some(conf.clone())));
            sim.start(id);
        }
        for _ in 0..sim.cfg.clients {
            sim.clients.push(ClientState {
                seq: 0,
                outstanding: None,
                leader_hint: None,
                seen: BTreeMap::new(),
            });
        }
        sim
    }

    /// Current simulated time in milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = format!("{:>7} {}", self.now, line());
            self.trace_hash = self.trace_hash.rotate_left(5) ^ fnv1a(l.as_bytes());
            self.trace_lines.push(l);
        }
    }

    /// The recorded trace (empty unless `cfg.trace`).
    pub fn trace_lines(&self) -> &[String] {
        &self.trace_lines
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn violation(&mut self, what: String) {
        self.trace(|| format!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    // ----- node lifecycle ------------------------------------------------------------------

    fn raft_config(&mut self, id: NodeId, applied: Index) -> Config {
        Config {
            election_ticks: self.cfg.election_ticks,
            heartbeat_ticks: 1,
            applied,
            seed: self.rng.gen(),
            faults: self.cfg.faults,
            max_msg_entries: self.cfg.max_msg_entries,
            max_inflight_msgs: self.cfg.max_inflight_msgs,
            ..Config::new(id)
        }
    }

    /// Starts (or restarts) node `id` from its durable storage.
    pub fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.raw.is_some() {
            return;
        }
        let bootstrap = node.bootstrap.take();
        let store = self.stores.open(id, bootstrap.as_ref());
        let snap = store.snapshot().expect("storage readable");
        let cfg = self.raft_config(id, snap.meta.index);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.sm = Registers::decode(&snap.data);
        node.applied = snap.meta.index;
        node.raw = Some(RawNode::new(cfg, store).expect("valid config"));
        node.incarnation += 1;
        node.last_commit = 0;
        node.last_term = 0;
        let incarnation = node.incarnation;
        let phase = self.rng.gen_range(0..self.cfg.tick_ms);
        self.schedule(
            phase + 1,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
        self.trace(|| format!("n{id} start (incarnation {incarnation})"));
        if incarnation > 1 {
            self.count("restarts");
        }
    }

    /// Crashes node `id`: it loses everything not persisted.
    pub fn crash(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = node.raw.take() else { return };
        self.stores.crash(id, raw.into_store());
        let node = self.nodes.get_mut(&id).expect("known node");
        node.inbox.clear();
        node.in_ready = None;
        node.proposed.clear();
        node.reads.clear();
        node.reads_waiting.clear();
        self.trace(|| format!("n{id} crash"));
        self.count("crashes");
    }

    /// Adds a brand-new (empty) node `id`, running but not yet a member.
    pub fn add_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node ids are never reused");
        self.nodes.insert(id, SimNode::new(None));
        self.start(id);
    }

    /// Node handle.
    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[&id]
    }

    /// Raft status of a running node.
    pub fn status(&self, id: NodeId) -> Option<flotilla_raft::Status> {
        self.nodes.get(&id)?.raw.as_ref().map(|r| r.status())
    }

    /// Running nodes that currently believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raw.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .map(|(id, s)| (id, s.term))
            .collect()
    }

    /// The leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|&(_, t)| t)
            .map(|(id, _)| id)
    }

    /// The membership as the current leader sees it.
    pub fn conf_state(&self) -> Option<ConfState> {
        let l = self.leader()?;
        Some(self.nodes[&l].raw.as_ref()?.conf_state().clone())
    }

    /// Applied state-machine value of `key` at node `id`.
    pub fn value_at(&self, id: NodeId, key: u64) -> Option<u64> {
        self.nodes[&id].sm.get(key)
    }

    /// Applied index at node `id`.
    pub fn applied(&self, id: NodeId) -> Index {
        self.nodes[&id].applied
    }

    // ----- network -------------------------------------------------------------------------

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
        self.trace(|| format!("partition {a:?} | {b:?}"));
        self.count("partitions");
    }

    /// Cuts one direction only.
    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
        self.trace(|| format!("cut n{from} -> n{to}"));
        self.count("one-way cuts");
    }

    /// Cuts `id` off from everyone.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        self.partition(&[id], &others);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.trace(|| "heal".into());
    }

    /// Sets message loss and duplication probabilities.
    pub fn set_unreliable(&mut self, loss: f64, duplicate: f64) {
        self.cfg.loss = loss;
        self.cfg.duplicate = duplicate;
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.gen_bool(self.cfg.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self.rng.gen_range(1..=self.cfg.max_latency_ms.max(1));
            self.schedule(latency, Event::Deliver(m.clone()));
        }
    }

    // ----- running -------------------------------------------------------------------------

    /// Runs until simulated time `now + ms`.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until(until, |_| false);
    }

    /// Runs until `done(self)` is true (checked after every event) or `deadline` passes.
    /// Returns whether `done` became true.
    pub fn run_until(&mut self, deadline: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let Some(Reverse(next)) = self.events.peek() else {
                return false;
            };
            if next.at > deadline {
                self.now = deadline;
                return done(self);
            }
            let Reverse(ev) = self.events.pop().expect("peeked");
            self.now = ev.at;
            self.events_processed += 1;
            self.handle(ev.event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver(m) => {
                if self.cut.contains(&(m.from, m.to)) {
                    return; // a partition that formed while the message was in flight
                }
                self.trace(|| describe(&m));
                let to = m.to;
                self.feed(to, Input::Msg(m));
            }
            Event::Tick { node, incarnation } => {
                let Some(n) = self.nodes.get(&node) else {
                    return;
                };
                if n.incarnation != incarnation || !n.is_up() {
                    return;
                }
                self.schedule(self.cfg.tick_ms, Event::Tick { node, incarnation });
                self.feed(node, Input::Tick);
            }
            Event::DiskDone { node, incarnation } => {
                let n = &self.nodes[&node];
                if n.incarnation == incarnation && n.in_ready.is_some() {
                    self.finish_ready(node);
                    self.pump(node);
                }
            }
            Event::ClientWake { client } => self.client_issue(client),
            Event::ClientTimeout { client, seq } => self.client_timeout(client, seq),
        }
    }

    fn feed(&mut self, id: NodeId, input: Input) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if !node.is_up() {
            return;
        }
        node.inbox.push_back(input);
        self.pump(id);
    }

    /// Feeds queued inputs to the core and starts handling its `Ready`, until the node is
    /// waiting for its disk or has nothing to do.
    fn pump(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            if node.in_ready.is_some() || !node.is_up() {
                return;
            }
            if let Some(input) = node.inbox.pop_front() {
                let raw = node.raw.as_mut().expect("up");
                match input {
                    Input::Msg(m) => {
                        if let Err(e) = raw.step(m) {
                            panic!("n{id}: step failed: {e}");
                        }
                    }
                    Input::Tick => raw.tick(),
                    Input::Request(req) => self.serve(id, req),
                }
                continue;
            }
            let raw = node.raw.as_mut().expect("up");
            if !raw.has_ready() {
                return;
            }
            let mut rd = raw.ready();
            self.observe_ready(id, &rd);
            // What may leave before the disk write (a leader's appends and heartbeats) does,
            // as in the engine; the rest waits for the write in `finish_ready`.
            let (early, late): (Vec<_>, Vec<_>) = std::mem::take(&mut rd.messages)
                .into_iter()
                .partition(|m| m.may_send_before_persist());
            rd.messages = late;
            for m in early {
                self.send(m);
            }
            let needs_disk =
                rd.hard_state.is_some() || !rd.entries.is_empty() || rd.snapshot.is_some();
            let node = self.nodes.get_mut(&id).expect("known node");
            node.in_ready = Some(rd);
            if needs_disk && self.cfg.max_disk_ms > 0 {
                let incarnation = node.incarnation;
                let d = self.rng.gen_range(1..=self.cfg.max_disk_ms);
                self.schedule(
                    d,
                    Event::DiskDone {
                        node: id,
                        incarnation,
                    },
                );
                return;
            }
            self.finish_ready(id);
        }
    }

    /// Checks invariants visible as soon as a Ready is produced.
    fn observe_ready(&mut self, id: NodeId, rd: &Ready) {
        let node = &self.nodes[&id];
        let status = node.raw.as_ref().expect("up").status();
        let (last_term, last_commit) = (node.last_term, node.last_commit);
        if status.term < last_term {
            self.violation(format!(
                "n{id}: term went backwards {last_term} -> {}",
                status.term
            ));
        }
        if let Some(hs) = rd.hard_state {
            if hs.commit < last_commit {
                self.violation(format!(
                    "n{id}: commit index decreased {last_commit} -> {}",
                    hs.commit
                ));
            }
        }
        let node = self.nodes.get_mut(&id).expect("known");
        node.last_term = status.term;
        node.last_commit = node.last_commit.max(status.commit);
        if let Some(ss) = rd.soft_state {
            let term = status.term;
            self.trace(|| format!("n{id} {:?} term {term} leader n{}", ss.role, ss.leader));
            if ss.role == Role::Leader {
                self.count("leaders elected");
                match self.leader_of_term.get(&term) {
                    Some(&other) if other != id => {
                        self.violation(format!("two leaders in term {term}: n{other} and n{id}"))
                    }
                    _ => {
                        self.leader_of_term.insert(term, id);
                    }
                }
            }
        }
    }

    /// The disk finished: persist, send, apply, advance.
    fn finish_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let rd = node.in_ready.take().expect("a ready in progress");
        let raw = node.raw.as_mut().expect("up");
        let store = raw.store_mut();
        if let Some(s) = &rd.snapshot {
            store.apply_snapshot(s.clone());
        }
        store.append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            store.set_hard_state(hs);
        }
        let became_leader = rd.soft_state.is_some_and(|s| s.role == Role::Leader);
        for m in rd.messages {
            self.send(m);
        }
        if let Some(s) = &rd.snapshot {
            let node = self.nodes.get_mut(&id).expect("known node");
            node.sm = Registers::decode(&s.data);
            node.applied = s.meta.index;
            node.snapshots_installed += 1;
            let (index, fp) = (s.meta.index, node.sm.fingerprint());
            self.count("snapshots installed");
            self.check_sm(id, index, fp);
            self.trace(|| format!("n{id} installed snapshot at {index}"));
        }
        for e in &rd.committed_entries {
            self.apply_entry(id, e);
        }
        if became_leader {
            self.check_leader_completeness(id);
        }
        for rs in rd.read_states {
            let node = self.nodes.get_mut(&id).expect("known node");
            if let Some((client, seq, key)) = node.reads.remove(&rs.request_id) {
                match rs.index {
                    Some(index) => node.reads_waiting.push((index, client, seq, key)),
                    None => self.client_reply(client, seq, Reply::Rejected(None)),
                }
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.raw.as_mut().expect("up").advance();
        self.serve_ready_reads(id);
        self.maybe_compact(id);
    }

    fn apply_entry(&mut self, id: NodeId, e: &Entry) {
        let fp = fnv1a(&e.data) ^ (e.kind == EntryKind::ConfChange) as u64;
        match self.committed.get(&e.index) {
            Some(&(t, h)) if (t, h) != (e.term, fp) => self.violation(format!(
                "n{id} applied index {} term {} but another node applied term {t} there",
                e.index, e.term
            )),
            Some(_) => {}
            None => {
                self.committed.insert(e.index, (e.term, fp));
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if e.index != node.applied + 1 {
            let applied = node.applied;
            self.violation(format!("n{id} applied index {} after {applied}", e.index));
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.applied = e.index;
        if e.kind == EntryKind::Normal {
            if let Some(cmd) = Command::decode(&e.data) {
                let res = node.sm.apply(&cmd);
                if node.proposed.remove(&(cmd.client, cmd.seq)) {
                    self.client_reply(cmd.client as usize, cmd.seq, Reply::Write(res));
                }
            }
        } else {
            let index = e.index;
            let conf = ConfState::decode(&e.data).expect("valid conf change");
            self.trace(|| format!("n{id} applied conf at {index}: {conf:?}"));
        }
        let node = &self.nodes[&id];
        let (index, fp) = (node.applied, node.sm.fingerprint());
        self.check_sm(id, index, fp);
    }

    fn check_sm(&mut self, id: NodeId, index: Index, fp: u64) {
        match self.sm_at.get(&index) {
            Some(&other) if other != fp => self.violation(format!(
                "n{id}: state machine at index {index} differs from another node's"
            )),
            Some(_) => {}
            None => {
                self.sm_at.insert(index, fp);
            }
        }
    }

    /// Raft §5.4.1: a new leader holds every committed entry (checked against entries any
    /// node has applied, from the leader's first retained index on).
    fn check_leader_completeness(&mut self, id: NodeId) {
        let raw = self.nodes[&id].raw.as_ref().expect("up");
        let store = raw.store();
        let first = store.first_index().expect("mem");
        let last = store.last_index().expect("mem");
        let mut missing = None;
        for (&idx, &(term, _)) in self.committed.range(first..) {
            if idx > last || store.term(idx) != Ok(term) {
                missing = Some((idx, term));
                break;
            }
        }
        if let Some((idx, term)) = missing {
            self.violation(format!(
                "leader completeness: new leader n{id} lacks committed entry {idx} (term {term})"
            ));
        }
    }

    /// Log matching (Raft §5.3): if two durable logs have an entry with the same index and
    /// term, they are identical up to there. Checked over all running pairs.
    pub fn check_log_matching(&mut self) {
        let logs: Vec<(NodeId, LogDigest)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| {
                let store = n.raw.as_ref().map(|r| r.store())?;
                let (first, last) = (store.first_index().ok()?, store.last_index().ok()?);
                let ents = store.entries(first, last + 1, u64::MAX).ok()?;
                let map = ents
                    .iter()
                    .map(|e| (e.index, (e.term, fnv1a(&e.data))))
                    .collect();
                Some((id, map))
            })
            .collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let matched = la
                    .iter()
                    .rev()
                    .find(|(idx, (t, _))| lb.get(idx).is_some_and(|(tb, _)| tb == t));
                let Some((&top, _)) = matched else { continue };
                for (idx, ea) in la.range(..=top) {
                    if let Some(eb) = lb.get(idx) {
                        if ea != eb {
                            let what = format!(
                                "log matching: n{a} and n{b} agree at {top} but differ at {idx}"
                            );
                            self.violation(what);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let raw = node.raw.as_mut().expect("up");
        let first = raw.store().first_index().expect("mem");
        if node.applied >= first + self.cfg.snapshot_every {
            let conf = raw.conf_state().clone();
            let data = node.sm.encode();
            raw.store_mut().create_snapshot(node.applied, conf, data);
        }
    }

    fn serve_ready_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let applied = node.applied;
        let mut ready = Vec::new();
        node.reads_waiting.retain(|&(index, client, seq, key)| {
            if index <= applied {
                ready.push((client, seq, key));
                false
            } else {
                true
            }
        });
        for (client, seq, key) in ready {
            let v = self.nodes[&id].sm.get(key);
            self.client_reply(client, seq, Reply::Read(v));
        }
    }

    // ----- membership and leadership (used by the nemesis and tests) -----------------------

    /// Runs until node `id` is not waiting for its disk (so its core accepts calls).
    fn wait_idle(&mut self, id: NodeId) -> bool {
        let deadline = self.now + 10 * self.cfg.max_disk_ms.max(1);
        self.run_until(deadline, |s| s.nodes[&id].in_ready.is_none()) && self.nodes[&id].is_up()
    }

    /// Proposes a membership change at the current leader. Returns whether it was accepted.
    pub fn change_membership(&mut self, ops: &[ConfChangeOp]) -> bool {
        let Some(l) = self.leader() else { return false };
        if !self.wait_idle(l) {
            return false;
        }
        let node = self.nodes.get_mut(&l).expect("leader exists");
        let res = node.raw.as_mut().expect("up").propose_conf_change(ops);
        self.trace(|| format!("n{l} propose conf change {ops:?}: {res:?}"));
        if res.is_ok() {
            self.count("membership changes");
        }
        self.pump(l);
        res.is_ok()
    }

    /// Asks the current leader to transfer leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> bool {
        let Some(l) = self.leader() else { return false };
        if !self.wait_idle(l) {
            return false;
        }
        let node = self.nodes.get_mut(&l).expect("leader exists");
        let res = node.raw.as_mut().expect("up").transfer_leader(to);
        self.trace(|| format!("n{l} transfer leader to n{to}: {res:?}"));
        if res.is_ok() {
            self.count("leader transfers");
        }
        self.pump(l);
        res.is_ok()
    }

    // ----- clients -------------------------------------------------------------------------

    /// Starts (or resumes) the client workload.
    pub fn start_clients(&mut self) {
        self.clients_active = true;
        for c in 0..self.clients.len() {
            if self.clients[c].outstanding.is_none() {
                let d = self.rng.gen_range(0..10);
                self.schedule(d, Event::ClientWake { client: c });
            }
        }
    }

    /// Stops issuing new client operations (outstanding ones still finish or time out).
    pub fn stop_clients(&mut self) {
        self.clients_active = false;
    }

    /// True when no client operation is outstanding.
    pub fn clients_idle(&self) -> bool {
        self.clients.iter().all(|c| c.outstanding.is_none())
    }

    fn client_issue(&mut self, client: usize) {
        if !self.clients_active || self.clients[client].outstanding.is_some() {
            return;
        }
        let key = self.rng.gen_range(0..self.cfg.keys);
        let roll = self.rng.gen_range(0..10);
        let c = &mut self.clients[client];
        c.seq += 1;
        let seq = c.seq;
        let (input, req) = if roll < 4 {
            (KvInput::Get, Request::Read { client, seq, key })
        } else {
            let new = self.next_value;
            self.next_value += 1;
            let op = if roll < 7 {
                WriteOp::Put(new)
            } else {
                let expected = c.seen.get(&key).copied().flatten();
                WriteOp::Cas { expected, new }
            };
            let input = match op {
                WriteOp::Put(value) => KvInput::Put { value },
                WriteOp::Cas { expected, new } => KvInput::Cas { expected, new },
            };
            (
                input,
                Request::Write(Command {
                    client: client as u64,
                    seq,
                    key,
                    op,
                }),
            )
        };
        self.history_clock += 1;
        let call = self.history_clock;
        let c = &mut self.clients[client];
        c.outstanding = Some((call, key, input, seq));
        let target = match c.leader_hint {
            Some(h) if self.nodes.get(&h).is_some_and(|n| n.is_up()) => h,
            _ => {
                let up: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.is_up())
                    .map(|(&id, _)| id)
                    .collect();
                if up.is_empty() {
                    self.client_reply(client, seq, Reply::Rejected(None));
                    return;
                }
                up[self.rng.gen_range(0..up.len())]
            }
        };
        self.schedule(
            self.cfg.client_timeout_ms,
            Event::ClientTimeout { client, seq },
        );
        self.feed(target, Input::Request(req));
    }

    fn serve(&mut self, id: NodeId, req: Request) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let raw = node.raw.as_mut().expect("up");
        match req {
            Request::Write(cmd) => match raw.propose(cmd.encode()) {
                Ok(_) => {
                    node.proposed.insert((cmd.client, cmd.seq));
                }
                Err(e) => {
                    self.client_reply(cmd.client as usize, cmd.seq, Reply::Rejected(hint(&e)))
                }
            },
            Request::Read { client, seq, key } => {
                let rid = self.next_read_id;
                self.next_read_id += 1;
                match raw.read_index(rid) {
                    Ok(()) => {
                        node.reads.insert(rid, (client, seq, key));
                    }
                    Err(e) => self.client_reply(client, seq, Reply::Rejected(hint(&e))),
                }
            }
        }
    }

    fn client_reply(&mut self, client: usize, seq: u64, reply: Reply) {
        let c = &mut self.clients[client];
        let Some((call, key, input, oseq)) = c.outstanding.clone() else {
            return;
        };
        if oseq != seq {
            return; // a late answer to an abandoned operation
        }
        c.outstanding = None;
        let output = match reply {
            Reply::Rejected(h) => {
                // Definitely not applied (never entered the log, or a read): no history entry.
                c.leader_hint = h;
                None
            }
            Reply::Write(WriteResult::Put) => Some(KvOutput::Put),
            Reply::Write(WriteResult::Cas(ok)) => Some(KvOutput::Cas(ok)),
            Reply::Read(v) => {
                c.seen.insert(key, v);
                Some(KvOutput::Get(v))
            }
        };
        if let Some(output) = output {
            if let (KvInput::Put { value }, _)
            | (KvInput::Cas { new: value, .. }, KvOutput::Cas(true)) = (&input, &output)
            {
                c.seen.insert(key, Some(*value));
            }
            self.history_clock += 1;
            let ret = self.history_clock;
            self.history.push(Operation {
                client: client as u64,
                key,
                input,
                output: Some(output),
                call,
                ret,
            });
        }
        if self.clients_active {
            let d = self.rng.gen_range(0..20);
            self.schedule(d, Event::ClientWake { client });
        }
    }

    fn client_timeout(&mut self, client: usize, seq: u64) {
        let c = &mut self.clients[client];
        let Some((call, key, input, oseq)) = c.outstanding.clone() else {
            return;
        };
        if oseq != seq {
            return;
        }
        c.outstanding = None;
        c.leader_hint = None;
        if input != KvInput::Get {
            // The write may or may not take effect, at any time from now on.
            self.history.push(Operation {
                client: client as u64,
                key,
                input,
                output: None,
                call,
                ret: 0,
            });
        }
        if self.clients_active {
            self.schedule(1, Event::ClientWake { client });
        }
    }

    /// Submits `value` as a put of `key` at the current leader and runs until it is applied
    /// there, or `timeout_ms` passes. Returns the index it committed at. Used by scenarios
    /// (not recorded in the client history).
    pub fn put(&mut self, key: u64, value: u64, timeout_ms: u64) -> Option<Index> {
        let deadline = self.now + timeout_ms;
        while self.now < deadline {
            let leader = self.leader();
            if let Some(l) = leader.filter(|l| self.nodes[l].in_ready.is_none()) {
                let cmd = Command {
                    client: u64::MAX,
                    seq: value,
                    key,
                    op: WriteOp::Put(value),
                };
                let raw = self
                    .nodes
                    .get_mut(&l)
                    .expect("leader")
                    .raw
                    .as_mut()
                    .expect("up");
                if let Ok(index) = raw.propose(cmd.encode()) {
                    let term = raw.status().term;
                    self.pump(l);
                    let step_deadline = (self.now + 20 * self.cfg.tick_ms).min(deadline);
                    let committed =
                        |s: &Sim| s.committed.get(&index).is_some_and(|&(t, _)| t == term);
                    if self.run_until(step_deadline, committed) {
                        return Some(index);
                    }
                    continue;
                }
            }
            let step = self.now + self.cfg.tick_ms;
            self.run_for(step.min(deadline) - self.now);
        }
        None
    }

    /// Runs until every running member has applied at least `index`, or `timeout_ms` passes.
    pub fn wait_applied(&mut self, ids: &[NodeId], index: Index, timeout_ms: u64) -> bool {
        let deadline = self.now + timeout_ms;
        let ids = ids.to_vec();
        self.run_until(deadline, |s| {
            ids.iter().all(|id| s.nodes[id].applied >= index)
        })
    }

    /// Ids of running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_up())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The run's RNG (for nemesis decisions), so a seed determines them too.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// `true` with probability `p`, from the run's RNG.
    pub fn rng_bool(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    /// Uniform in `[lo, hi)`, from the run's RNG.
    pub fn rng_range(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.gen_range(lo..hi)
    }

    /// Hash of the trace so far (determinism checks).
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    /// Fingerprint of everything observable: applied indexes, state machines, history.
    pub fn fingerprint(&self) -> u64 {
        let mut s = String::new();
        for (id, n) in &self.nodes {
            s.push_str(&format!("{id}:{}:{:x};", n.applied, n.sm.fingerprint()));
        }
        s.push_str(&format!("{:?}", self.history));
        fnv1a(s.as_bytes()) ^ self.trace_hash
    }

    /// Committed-entry count seen by the oracle.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    /// Proposes raw bytes at node `id` directly (scenario tests).
    pub fn propose_at(&mut self, id: NodeId, data: Bytes) -> Result<Index, Error> {
        if !self.wait_idle(id) {
            return Err(Error::NotLeader { leader_hint: None });
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let res = node
            .raw
            .as_mut()
            .ok_or(Error::NotLeader { leader_hint: None })?
            .propose(data);
        self.pump(id);
        res
    }

    /// The durable entry at `index` on node `id`, if present.
    pub fn entry_at(&self, id: NodeId, index: Index) -> Option<Entry> {
        let n = &self.nodes[&id];
        let store = n.raw.as_ref().map(|r| r.store())?;
        store.entries(index, index + 1, u64::MAX).ok()?.pop()
    }

    /// How many snapshots from a leader node `id` has installed.
    pub fn snapshots_installed(&self, id: NodeId) -> u64 {
        self.nodes[&id].snapshots_installed
    }

    /// Index of node `id`'s latest snapshot (its compaction point).
    pub fn snapshot_index(&self, id: NodeId) -> Index {
        let n = &self.nodes[&id];
        let store = n.raw.as_ref().map(|r| r.store());
        store.map_or(0, |s| s.first_index().unwrap_or(1) - 1)
    }
}

/// A durable log as `index -> (term, payload fingerprint)`.
type LogDigest = BTreeMap<Index, (Term, u64)>;

enum Reply {
    Rejected(Option<NodeId>),
    Write(WriteResult),
    Read(Option<u64>),
}

fn hint(e: &Error) -> Option<NodeId> {
    match e {
        Error::NotLeader { leader_hint } => *leader_hint,
        _ => None,
    }
}

/// Used by trace formatting of messages.
pub fn describe(m: &Message) -> String {
    match &m.body {
        MessageBody::Append {
            prev_index,
            entries,
            commit,
            ..
        } => format!(
            "n{}->n{} Append t{} prev {} +{} commit {}",
            m.from,
            m.to,
            m.term,
            prev_index,
            entries.len(),
            commit
        ),
        b => format!("n{}->n{} {} t{}", m.from, m.to, b.name(), m.term),
    }
}
