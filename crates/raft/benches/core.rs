//! The consensus core alone: proposals committed per second of CPU in a 3-node in-memory
//! cluster (no I/O: storage is `MemStorage`, messages are handed over directly).
//!
//! `cargo bench -p flotilla-raft --bench core` — reports throughput in proposals/s.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_raft::{ConfState, Config, MemStorage, Message, RawNode, Role};

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    queue: VecDeque<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let conf = ConfState::with_voters([1, 2, 3]);
        let nodes = (1..=3)
            .map(|id| {
                let cfg = Config {
                    max_uncommitted_bytes: u64::MAX,
                    ..Config::new(id)
                };
                RawNode::new(cfg, MemStorage::new_with_conf_state(conf.clone())).unwrap()
            })
            .collect();
        let mut c = Cluster {
            nodes,
            queue: VecDeque::new(),
        };
        c.nodes[0].campaign();
        c.settle();
        assert_eq!(c.nodes[0].status().role, Role::Leader);
        c
    }

    /// Handles Readies and delivers messages until quiet.
    fn settle(&mut self) {
        loop {
            for n in self.nodes.iter_mut() {
                while n.has_ready() {
                    let rd = n.ready();
                    let s = n.store_mut();
                    if let Some(snap) = rd.snapshot {
                        s.apply_snapshot(snap);
                    }
                    s.append(&rd.entries);
                    if let Some(hs) = rd.hard_state {
                        s.set_hard_state(hs);
                    }
                    self.queue.extend(rd.messages);
                    n.advance();
                }
            }
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m).unwrap();
        }
    }

    /// Proposes `total` entries of `size` bytes in batches of `batch`, settling after each
    /// batch, and compacts the leader's log so memory stays flat.
    fn run(&mut self, total: usize, batch: usize, payload: &Bytes) {
        let start = self.nodes[0].status().commit;
        for _ in 0..total / batch {
            let datas = vec![payload.clone(); batch];
            self.nodes[0].propose_batch(datas).unwrap();
            self.settle();
        }
        assert_eq!(
            self.nodes[0].status().commit,
            start + (total - total % batch) as u64
        );
        for n in self.nodes.iter_mut() {
            let applied = n.status().applied;
            let conf = n.conf_state().clone();
            n.store_mut().create_snapshot(applied, conf, Bytes::new());
        }
    }
}

fn commit_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft_core_commit");
    const TOTAL: usize = 4096;
    g.throughput(Throughput::Elements(TOTAL as u64));
    for size in [64usize, 1024] {
        for batch in [1usize, 64] {
            let payload = Bytes::from(vec![0xAB; size]);
            let id = BenchmarkId::new(format!("{size}B"), format!("batch{batch}"));
            g.bench_with_input(id, &batch, |b, &batch| {
                let mut cluster = Cluster::new();
                b.iter(|| cluster.run(TOTAL, batch, &payload));
            });
        }
    }
    g.finish();
}

criterion_group!(benches, commit_throughput);
criterion_main!(benches);
