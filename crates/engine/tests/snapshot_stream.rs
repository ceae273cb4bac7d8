//! Snapshot streaming: a snapshot several times larger than a frame reaches a new learner in
//! chunks (over `LocalNetwork` and over real TCP with a small `max_frame_bytes`), resumes from
//! the acknowledged offset after its link is cut mid-stream, and is refused — without harm —
//! by a receiver whose `max_snapshot_bytes` it exceeds. Every check polls with a deadline.

// Integration tests of the I/O engine: spawning tasks is fine here.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_engine::*;
use flotilla_raft::NodeId;

mod common;
use common::Recorder;

const DEADLINE: Duration = Duration::from_secs(30);
const GROUP: GroupId = 9;
/// Each entry is this big, so the recorder's snapshot (all entries) is large.
const ENTRY_BYTES: usize = 4096;
const CHUNK_BYTES: usize = 16 << 10;

fn cfg(id: NodeId) -> NodeHostConfig {
    NodeHostConfig {
        tick_interval: Duration::from_millis(10),
        snapshot_interval_entries: 50,
        snapshot_chunk_bytes: CHUNK_BYTES,
        max_inflight_snapshot_chunks: 4,
        ..NodeHostConfig::new(id)
    }
}

/// A unique payload of ENTRY_BYTES.
fn payload(i: usize) -> Bytes {
    let mut v = format!("entry-{i}-").into_bytes();
    v.resize(ENTRY_BYTES, b'.');
    Bytes::from(v)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Local {
    net: LocalNetwork,
    hosts: BTreeMap<NodeId, NodeHost>,
    logs: BTreeMap<NodeId, Arc<Mutex<Vec<Bytes>>>>,
}

impl Local {
    async fn start(&mut self, c: NodeHostConfig, members: Option<Vec<NodeId>>) {
        let id = c.node_id;
        let host = NodeHost::start(c, Arc::new(MemBackend::new()), self.net.endpoint(id)).unwrap();
        self.net.attach(&host);
        let log = Arc::new(Mutex::new(Vec::new()));
        self.logs.insert(id, log.clone());
        host.start_group(GROUP, members, Box::new(Recorder { log }))
            .await
            .unwrap();
        self.hosts.insert(id, host);
    }

    /// Three voters with `entries` large entries applied (and snapshotted, log compacted).
    async fn with_big_snapshot(entries: usize) -> (Local, Vec<Bytes>) {
        let mut c = Local {
            net: LocalNetwork::new(),
            hosts: BTreeMap::new(),
            logs: BTreeMap::new(),
        };
        for id in 1..=3 {
            c.start(cfg(id), Some(vec![1, 2, 3])).await;
        }
        let mut acked = Vec::new();
        for i in 0..entries {
            acked.push(c.propose(payload(i)).await);
        }
        (c, acked)
    }

    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for (&id, h) in &self.hosts {
                if h.leader(GROUP) == Some(id) {
                    return id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn propose(&self, data: Bytes) -> Bytes {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let l = self.leader().await;
            match self.hosts[&l]
                .propose_timeout(GROUP, data.clone(), Duration::from_secs(2))
                .await
            {
                Ok(_) => return data,
                Err(e) if e.is_retriable() => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Every replica applied the same sequence, with each acknowledged payload once.
    async fn assert_converged(&self, acked: &[Bytes]) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let logs: Vec<Vec<Bytes>> = self
                .logs
                .values()
                .map(|l| l.lock().unwrap().clone())
                .collect();
            let same = logs.windows(2).all(|w| w[0] == w[1]);
            if same && acked.iter().all(|a| logs[0].contains(a)) {
                for a in acked {
                    assert_eq!(logs[0].iter().filter(|x| *x == a).count(), 1);
                }
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "did not converge: lengths {:?}",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_many_chunks_long_reaches_a_new_learner() {
    let (mut c, mut acked) = Local::with_big_snapshot(120).await;
    let leader = c.leader().await;
    c.start(cfg(4), None).await;
    c.hosts[&leader].add_learner(GROUP, 4).await.unwrap();
    acked.push(c.propose(Bytes::from_static(b"after")).await);
    c.assert_converged(&acked).await;

    let sent = c.hosts[&leader].snapshot_stream_stats();
    let got = c.hosts[&4].snapshot_stream_stats();
    assert!(sent.streams_completed >= 1, "{sent:?}");
    // The image (~100 entries of 4 KiB) spans many chunks of 16 KiB.
    assert!(sent.chunks_sent >= 20, "{sent:?}");
    assert_eq!(got.snapshots_received, 1, "{got:?}");
    assert_eq!(sent.restarted_from_zero, 0, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_resumes_from_the_acknowledged_offset() {
    let (mut c, mut acked) = Local::with_big_snapshot(120).await;
    let leader = c.leader().await;
    c.start(cfg(4), None).await;
    // Eight chunks get through, then the link to the learner goes down.
    c.net.cut_after_chunks(leader, 4, 8);
    c.hosts[&leader].add_learner(GROUP, 4).await.unwrap();
    let h = &c.hosts[&leader];
    until(
        "the stream retransmits from a non-zero offset while cut",
        || h.snapshot_stream_stats().resumed_from_offset >= 1,
    )
    .await;
    assert_eq!(c.hosts[&4].snapshot_stream_stats().snapshots_received, 0);
    c.net.heal();
    acked.push(c.propose(Bytes::from_static(b"after")).await);
    c.assert_converged(&acked).await;

    let sent = c.hosts[&leader].snapshot_stream_stats();
    let got = c.hosts[&4].snapshot_stream_stats();
    assert_eq!(got.snapshots_received, 1, "{got:?}");
    assert!(sent.streams_completed >= 1, "{sent:?}");
    assert_eq!(
        sent.restarted_from_zero, 0,
        "the stream resumed, it did not start over: {sent:?}"
    );
    assert_eq!(sent.streams_started, 1, "one stream, resumed: {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_restarted_mid_stream_gets_the_snapshot_from_offset_zero() {
    let (mut c, mut acked) = Local::with_big_snapshot(120).await;
    let leader = c.leader().await;
    c.start(cfg(4), None).await;
    c.net.cut_after_chunks(leader, 4, 8);
    c.hosts[&leader].add_learner(GROUP, 4).await.unwrap();
    let h = &c.hosts[&leader];
    until("the stream stalls at the cut", || {
        h.snapshot_stream_stats().resumed_from_offset >= 1
    })
    .await;
    // The learner crashes and comes back empty: its partial image is gone.
    c.hosts.remove(&4);
    c.start(cfg(4), None).await;
    c.net.heal();
    acked.push(c.propose(Bytes::from_static(b"after")).await);
    c.assert_converged(&acked).await;
    let sent = c.hosts[&leader].snapshot_stream_stats();
    assert!(
        sent.restarted_from_zero >= 1,
        "the new receiver acked 0, so the sender started over: {sent:?}"
    );
    assert_eq!(c.hosts[&4].snapshot_stream_stats().snapshots_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_max_snapshot_bytes_is_refused_harmlessly() {
    let (mut c, mut acked) = Local::with_big_snapshot(60).await;
    let leader = c.leader().await;
    let small = NodeHostConfig {
        max_snapshot_bytes: 64 << 10, // the image is ~200 KiB
        ..cfg(4)
    };
    c.start(small, None).await;
    c.hosts[&leader].add_learner(GROUP, 4).await.unwrap();
    let h4 = &c.hosts[&4];
    until("the learner refuses the stream", || {
        h4.snapshot_stream_stats().snapshots_refused >= 1
    })
    .await;
    let got = h4.snapshot_stream_stats();
    assert_eq!(got.snapshots_received, 0, "{got:?}");
    assert!(c.logs[&4].lock().unwrap().is_empty(), "nothing installed");
    // The voters carry on; the learner stays alive and empty.
    acked.push(c.propose(Bytes::from_static(b"still-writable")).await);
    for id in 1..=3 {
        let log = c.logs[&id].clone();
        until("voters apply", || log.lock().unwrap().len() == acked.len()).await;
    }
    assert!(c.hosts[&4].status(GROUP).await.is_ok());
    assert!(c.logs[&4].lock().unwrap().is_empty());
}

/// Over real TCP: frames are limited to 64 KiB, the snapshot is several times that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_a_snapshot_larger_than_a_frame_reaches_a_learner() {
    const MAX_FRAME_BYTES: usize = 64 << 10;
    let mut listeners = BTreeMap::new();
    let mut addrs: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
    for id in 1..=4 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, l.local_addr().unwrap());
        listeners.insert(id, l);
    }
    let mut hosts: BTreeMap<NodeId, (NodeHost, Transport)> = BTreeMap::new();
    let mut logs = BTreeMap::new();
    for (id, l) in listeners {
        let tcfg = TransportConfig {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_batch_bytes: 32 << 10,
            ..TransportConfig::new(id, 42)
        };
        let (transport, inbound) = Transport::start(tcfg, l).unwrap();
        for (&peer, &addr) in &addrs {
            if peer != id {
                transport.set_peer(peer, addr);
            }
        }
        // Appends must fit a frame too.
        let hcfg = NodeHostConfig {
            max_msg_bytes: 32 << 10,
            ..cfg(id)
        };
        let host = NodeHost::start(
            hcfg,
            Arc::new(MemBackend::new()),
            Arc::new(transport.clone()),
        )
        .unwrap();
        tokio::spawn(pump_inbound(host.inbound_sink(), inbound));
        let log = Arc::new(Mutex::new(Vec::new()));
        logs.insert(id, log.clone());
        if id <= 3 {
            host.start_group(GROUP, Some(vec![1, 2, 3]), Box::new(Recorder { log }))
                .await
                .unwrap();
        }
        hosts.insert(id, (host, transport));
    }
    let leader = || {
        (1..=3)
            .find(|&id| hosts[&id].0.leader(GROUP) == Some(id))
            .unwrap_or(0)
    };
    let mut acked = Vec::new();
    for i in 0..120 {
        let data = payload(i);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let l = leader();
            if l != 0 {
                let r = hosts[&l]
                    .0
                    .propose_timeout(GROUP, data.clone(), Duration::from_secs(2))
                    .await;
                if r.is_ok() {
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked.push(data);
    }
    let l = leader();
    let log4 = logs[&4].clone();
    hosts[&4]
        .0
        .start_group(GROUP, None, Box::new(Recorder { log: log4.clone() }))
        .await
        .unwrap();
    hosts[&l].0.add_learner(GROUP, 4).await.unwrap();
    let log1 = logs[&l].clone();
    until("the learner converges", || {
        let a = log1.lock().unwrap().clone();
        a.len() == acked.len() && *log4.lock().unwrap() == a
    })
    .await;
    let sent = hosts[&l].0.snapshot_stream_stats();
    assert!(sent.streams_completed >= 1, "{sent:?}");
    assert!(
        sent.chunk_bytes_sent > 3 * MAX_FRAME_BYTES as u64,
        "the image spans several frames: {sent:?}"
    );
    assert_eq!(hosts[&4].0.snapshot_stream_stats().snapshots_received, 1);
    for (_, (host, transport)) in hosts {
        host.shutdown();
        transport.shutdown().await;
    }
}
