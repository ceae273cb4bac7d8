//! `engine-bench`: the node host end to end — three node hosts in this process, talking over
//! real TCP on 127.0.0.1, each with its own WAL (fdatasync on) in a temp dir.
//!
//! ```text
//! cargo run --release -p flotilla-engine --bin engine-bench [-- --seconds 5 --idle-groups 10000]
//! ```
//! Prints, side by side: proposals/s and p50/p99 latency for 1, 16 and 256 groups with 64
//! concurrent proposers and 128 B / 1 KiB payloads; then the CPU used by idle groups.
//! Not a test: numbers depend on the machine; compare within one run.

// A benchmark binary: clocks, threads and tasks are the point.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::*;
use flotilla_raft::NodeId;

struct Null;

impl StateMachine for Null {
    fn apply(&mut self, entries: &[AppliedEntry]) -> Vec<Bytes> {
        vec![Bytes::new(); entries.len()]
    }
    fn snapshot(&self) -> Bytes {
        Bytes::new()
    }
    fn restore(&mut self, _: &Bytes) {}
}

struct Node {
    host: Arc<NodeHost>,
    transport: Transport,
    _dir: tempfile::TempDir,
}

async fn cluster(groups: u64, tick: Duration, quiesce_after_ticks: u32) -> Vec<Node> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let (transport, inbound) =
            Transport::start(TransportConfig::new(id, 7), l).expect("transport");
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                transport.set_peer(j as NodeId + 1, *a);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(WalBackend::open(dir.path(), Default::default()).expect("wal"));
        let cfg = NodeHostConfig {
            tick_interval: tick,
            quiesce_after_ticks,
            snapshot_interval_entries: 100_000,
            ..NodeHostConfig::new(id)
        };
        let host =
            Arc::new(NodeHost::start(cfg, backend, Arc::new(transport.clone())).expect("host"));
        tokio::spawn(pump_inbound(host.inbound_sink(), inbound));
        nodes.push(Node {
            host,
            transport,
            _dir: dir,
        });
    }
    for g in 1..=groups {
        for n in &nodes {
            n.host
                .start_group(g, Some(vec![1, 2, 3]), Box::new(Null))
                .await
                .expect("start group");
        }
    }
    // Wait for every group to have a leader.
    let deadline = Instant::now() + Duration::from_secs(120);
    for g in 1..=groups {
        while !nodes
            .iter()
            .any(|n| n.host.leader(g) == Some(n.host.node_id()))
        {
            assert!(Instant::now() < deadline, "group {g} elected no leader");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    nodes
}

fn leader_of(nodes: &[Node], g: u64) -> Option<Arc<NodeHost>> {
    nodes
        .iter()
        .find(|n| n.host.leader(g) == Some(n.host.node_id()))
        .map(|n| n.host.clone())
}

struct Outcome {
    ops: u64,
    errors: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

async fn load(nodes: &[Node], groups: u64, payload: usize, proposers: usize, secs: u64) -> Outcome {
    let leaders: Vec<Arc<NodeHost>> = (1..=groups)
        .map(|g| leader_of(nodes, g).expect("leader"))
        .collect();
    let leaders = Arc::new(leaders);
    let data = Bytes::from(vec![0x5a; payload]);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let leaders = leaders.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut i = p as u64;
            while Instant::now() < end {
                let g = i % groups;
                i += proposers as u64;
                let t = Instant::now();
                match leaders[g as usize].propose(g + 1, data.clone()).await {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut out = Outcome {
        ops: 0,
        errors: 0,
        secs: 0.0,
        lat_us: Vec::new(),
    };
    for t in tasks {
        let (lat, errors) = t.await.expect("task");
        out.ops += lat.len() as u64;
        out.errors += errors;
        out.lat_us.extend(lat);
    }
    out.secs = start.elapsed().as_secs_f64();
    out.lat_us.sort_unstable();
    out
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

async fn shutdown(nodes: Vec<Node>) {
    for n in nodes {
        n.host.shutdown();
        n.transport.shutdown().await;
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = arg("--seconds", 5);
    let idle_groups = arg("--idle-groups", 10_000);
    println!("engine-bench: 3 node hosts, TCP on 127.0.0.1, WAL with fdatasync, 64 proposers, {secs} s per row");
    println!("| groups | payload | proposals/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for groups in [1u64, 16, 256] {
        let nodes = cluster(groups, Duration::from_millis(100), 0).await;
        for payload in [128usize, 1024] {
            let o = load(&nodes, groups, payload, 64, secs).await;
            println!(
                "| {groups} | {payload} B | {:.0} | {:.2} | {:.2} | {} |",
                o.ops as f64 / o.secs,
                pct(&o.lat_us, 0.50),
                pct(&o.lat_us, 0.99),
                o.errors
            );
        }
        shutdown(nodes).await;
    }
    // Idle groups: elected, then left alone until they quiesce; CPU measured over a window.
    let tick = Duration::from_millis(100);
    let nodes = cluster(idle_groups, tick, 30).await;
    let settle = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settle
        && !(1..=idle_groups).all(|g| nodes.iter().all(|n| n.host.is_quiesced(g)))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiesced = (1..=idle_groups)
        .filter(|&g| nodes.iter().all(|n| n.host.is_quiesced(g)))
        .count();
    let (c0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs.max(5))).await;
    let cpu = (cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
    println!();
    println!(
        "idle: {idle_groups} groups x 3 nodes in one process ({quiesced} quiesced): {:.1}% of one core in total, {:.2}% per node",
        cpu * 100.0,
        cpu * 100.0 / 3.0
    );
    shutdown(nodes).await;
}
