//! Three node hosts over real TCP on 127.0.0.1, each with its own WAL on a temp dir:
//! 64 groups, a node killed (no shutdown) and restarted from its data dir, a leader cut off
//! by link faults. Every acknowledged proposal must be applied exactly once, in the same
//! order, on every replica. Every check polls with a deadline.

// Integration tests of the I/O engine: spawning tasks is fine here.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_engine::transport::LinkFault;
use flotilla_engine::*;
use flotilla_raft::NodeId;

mod common;
use common::Recorder;

struct Node {
    host: NodeHost,
    transport: Transport,
}

struct Cluster {
    addrs: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    nodes: BTreeMap<NodeId, Node>,
    logs: BTreeMap<(NodeId, GroupId), Arc<Mutex<Vec<Bytes>>>>,
    groups: Vec<GroupId>,
}

const DEADLINE: Duration = Duration::from_secs(30);

impl Cluster {
    async fn new(n: u64, groups: Vec<GroupId>) -> Cluster {
        let mut c = Cluster {
            addrs: BTreeMap::new(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            groups,
        };
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            c.addrs.insert(id, l.local_addr().unwrap());
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            listeners.insert(id, l);
        }
        for (id, l) in listeners {
            c.start_with(id, l).await;
        }
        c
    }

    async fn start(&mut self, id: NodeId) {
        let l = tokio::net::TcpListener::bind(self.addrs[&id])
            .await
            .unwrap();
        self.start_with(id, l).await;
    }

    async fn start_with(&mut self, id: NodeId, listener: tokio::net::TcpListener) {
        let (transport, inbound) =
            Transport::start(TransportConfig::new(id, 42), listener).unwrap();
        for (&peer, &addr) in &self.addrs {
            if peer != id {
                transport.set_peer(peer, addr);
            }
        }
        let backend =
            Arc::new(WalBackend::open(self.dirs[&id].path(), Default::default()).unwrap());
        let cfg = NodeHostConfig {
            tick_interval: Duration::from_millis(20),
            snapshot_interval_entries: 100,
            ..NodeHostConfig::new(id)
        };
        let host = NodeHost::start(cfg, backend, Arc::new(transport.clone())).unwrap();
        tokio::spawn(pump_inbound(host.inbound_sink(), inbound));
        for &g in &self.groups {
            let log = Arc::new(Mutex::new(Vec::new()));
            self.logs.insert((id, g), log.clone());
            host.start_group(
                g,
                Some(self.addrs.keys().copied().collect()),
                Box::new(Recorder { log }),
            )
            .await
            .unwrap();
        }
        self.nodes.insert(id, Node { host, transport });
    }

    /// Crash: no graceful shutdown; the WAL keeps what was synced.
    async fn kill(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        drop(node.host);
        node.transport.shutdown().await;
    }

    fn cut(&self, id: NodeId) {
        for (&a, na) in &self.nodes {
            for &b in self.addrs.keys() {
                if a == id && b != id {
                    na.transport.set_link_fault(b, LinkFault::Drop);
                }
                if b == id && a != id {
                    na.transport.set_link_fault(b, LinkFault::Drop);
                }
            }
        }
    }

    fn heal(&self) {
        for n in self.nodes.values() {
            for &b in self.addrs.keys() {
                n.transport.set_link_fault(b, LinkFault::None);
            }
        }
    }

    async fn leader(&self, g: GroupId, excluding: Option<NodeId>) -> NodeId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for (&id, n) in &self.nodes {
                if Some(id) != excluding && n.host.leader(g) == Some(id) {
                    return id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {g}: no leader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn propose(&self, g: GroupId, data: String, excluding: Option<NodeId>) -> Bytes {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let data = Bytes::from(data);
        loop {
            let l = self.leader(g, excluding).await;
            match self.nodes[&l]
                .host
                .propose_timeout(g, data.clone(), Duration::from_secs(2))
                .await
            {
                Ok(_) => return data,
                Err(e) if e.is_retriable() => {
                    assert!(tokio::time::Instant::now() < deadline, "group {g}: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("group {g}: {e}"),
            }
        }
    }

    async fn assert_converged(&self, g: GroupId, acked: &[Bytes]) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let logs: Vec<Vec<Bytes>> = self
                .nodes
                .keys()
                .map(|&id| self.logs[&(id, g)].lock().unwrap().clone())
                .collect();
            if common::converged(&logs, acked) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {g} did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_cluster_of_64_groups_survives_a_crash_and_a_partitioned_leader() {
    let groups: Vec<GroupId> = (1..=64).collect();
    let mut c = Cluster::new(3, groups.clone()).await;
    let mut acked: BTreeMap<GroupId, Vec<Bytes>> = BTreeMap::new();
    for &g in &groups {
        acked
            .entry(g)
            .or_default()
            .push(c.propose(g, format!("a{g}"), None).await);
    }
    // Crash the leader of group 1 (dropping its host without shutdown) and keep writing.
    let victim = c.leader(1, None).await;
    c.kill(victim).await;
    for &g in &groups[..8] {
        for i in 0..20 {
            acked
                .entry(g)
                .or_default()
                .push(c.propose(g, format!("b{g}-{i}"), None).await);
        }
    }
    c.start(victim).await; // recovers from its WAL
                           // Cut off the leader of group 2; the others elect a new one and keep committing.
    let old = c.leader(2, None).await;
    c.cut(old);
    for i in 0..10 {
        acked
            .entry(2)
            .or_default()
            .push(c.propose(2, format!("c{i}"), Some(old)).await);
    }
    c.heal();
    for &g in &groups {
        acked
            .entry(g)
            .or_default()
            .push(c.propose(g, format!("d{g}"), None).await);
    }
    for &g in &groups {
        c.assert_converged(g, &acked[&g]).await;
    }
    // Messages of many groups share frames: far fewer frames than messages.
    let (mut msgs, mut frames) = (0, 0);
    for n in c.nodes.values() {
        for p in n.transport.stats().peers.values() {
            msgs += p.msgs_sent;
            frames += p.frames_sent;
        }
    }
    assert!(
        frames > 0 && msgs > 2 * frames,
        "{msgs} messages in {frames} frames"
    );
}

/// Heartbeats (and their answers) of every group a node shares with a peer travel together:
/// per tick a peer receives a handful of frames, not one per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_many_groups_share_frames() {
    let groups: Vec<GroupId> = (1..=64).collect();
    let c = Cluster::new(3, groups.clone()).await;
    for &g in &groups {
        c.leader(g, None).await;
    }
    let totals = |c: &Cluster| {
        let (mut msgs, mut frames) = (0u64, 0u64);
        for n in c.nodes.values() {
            for p in n.transport.stats().peers.values() {
                msgs += p.msgs_sent;
                frames += p.frames_sent;
            }
        }
        (msgs, frames)
    };
    let (m0, f0) = totals(&c);
    // Idle groups exchange only heartbeats now (quiescing starts after 100 ticks = 2 s):
    // wait until a few rounds of them have flowed, then compare messages with frames.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (msgs, frames) = loop {
        let (m1, f1) = totals(&c);
        if m1 - m0 >= 64 * 2 * 5 {
            break (m1 - m0, f1 - f0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "heartbeats are not flowing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        msgs >= 8 * frames,
        "{msgs} messages in {frames} frames: heartbeats not batched"
    );
}
