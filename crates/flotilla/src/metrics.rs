//! Prometheus metrics of one node, gathered at scrape time.
//!
//! Nothing here sits on a hot path: the engine, WAL, transport and KV server keep their own
//! counters, and a scrape reads them. Raft gauges come from [`NodeHost::status`] (async, so
//! [`Metrics::render`] refreshes them before gathering); everything else is read by
//! [`StatsCollector`] during `gather`.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `flotilla_raft_term` | gauge | `group` |
//! | `flotilla_raft_role` | gauge (1 for the current role) | `group`, `role` |
//! | `flotilla_raft_leader_id` | gauge (0: none known) | `group` |
//! | `flotilla_raft_commit_index` | gauge | `group` |
//! | `flotilla_raft_applied_index` | gauge | `group` |
//! | `flotilla_raft_inbound_dropped_total` | counter | |
//! | `flotilla_wal_bytes_written_total` | counter | |
//! | `flotilla_wal_syncs_total` | counter | |
//! | `flotilla_wal_fsync_duration_seconds` | histogram | |
//! | `flotilla_peer_connected` | gauge | `peer` |
//! | `flotilla_peer_send_queue_messages` | gauge | `peer` |
//! | `flotilla_peer_send_queue_bytes` | gauge | `peer` |
//! | `flotilla_peer_sent_messages_total` | counter | `peer` |
//! | `flotilla_peer_sent_bytes_total` | counter | `peer` |
//! | `flotilla_peer_dropped_messages_total` | counter | `peer`, `reason` |
//! | `flotilla_snapshot_streams_total` | counter | `outcome` (started, completed, failed) |
//! | `flotilla_snapshots_received_total` | counter | |
//! | `flotilla_snapshots_refused_total` | counter | |
//! | `flotilla_grpc_requests_total` | counter | `method`, `code` |
//! | `flotilla_kv_revision` | gauge | |
//! | `flotilla_raft_proposals_total` | counter | |
//! | `flotilla_raft_proposal_calls_total` | counter | `result` (ok, error) |
//! | `flotilla_raft_proposal_duration_seconds` | histogram | |

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_engine::{GroupId, NodeHost, Transport};
use flotilla_raft::{Role, Status};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{IntGaugeVec, Opts, Registry, TextEncoder};

use crate::kv_api::KvServer;

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    /// The node host.
    pub host: Arc<NodeHost>,
    /// The peer transport.
    pub transport: Transport,
    /// The shared write-ahead log.
    pub wal: Arc<flotilla_wal::Wal>,
    /// The KV server.
    pub kv: Arc<KvServer>,
}

/// The node's registry and the gauges refreshed at scrape time.
pub struct Metrics {
    registry: Registry,
    sources: Sources,
    term: IntGaugeVec,
    role: IntGaugeVec,
    leader: IntGaugeVec,
    commit: IntGaugeVec,
    applied: IntGaugeVec,
}

/// Every group's Raft status; groups that stop between listing and asking are skipped.
pub async fn group_statuses(host: &NodeHost) -> Vec<(GroupId, Status)> {
    let mut out = Vec::new();
    for g in host.groups() {
        if let Ok(s) = host.status(g).await {
            out.push((g, s));
        }
    }
    out
}

/// The lowercase name of a role, as used in labels and `/status`.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

const ROLES: [Role; 4] = [
    Role::Follower,
    Role::PreCandidate,
    Role::Candidate,
    Role::Leader,
];

impl Metrics {
    /// A registry with every family above.
    pub fn new(sources: Sources) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let term = gauge("flotilla_raft_term", "Current Raft term.", &["group"])?;
        let role = gauge(
            "flotilla_raft_role",
            "1 for the replica's current Raft role, 0 for the others.",
            &["group", "role"],
        )?;
        let leader = gauge(
            "flotilla_raft_leader_id",
            "Leader this replica knows of (0: none).",
            &["group"],
        )?;
        let commit = gauge(
            "flotilla_raft_commit_index",
            "Highest log index known committed.",
            &["group"],
        )?;
        let applied = gauge(
            "flotilla_raft_applied_index",
            "Highest log index applied to the state machine.",
            &["group"],
        )?;
        registry.register(Box::new(StatsCollector::new(sources.clone())))?;
        Ok(Metrics {
            registry,
            sources,
            term,
            role,
            leader,
            commit,
            applied,
        })
    }

    /// Refreshes the Raft gauges and renders every family in the Prometheus text format.
    pub async fn render(&self) -> anyhow::Result<String> {
        let statuses = group_statuses(&self.sources.host).await;
        for v in [
            &self.term,
            &self.role,
            &self.leader,
            &self.commit,
            &self.applied,
        ] {
            v.reset(); // a stopped group's series disappear
        }
        for (g, s) in statuses {
            let g = g.to_string();
            self.term.with_label_values(&[&g]).set(s.term as i64);
            self.leader.with_label_values(&[&g]).set(s.leader as i64);
            self.commit.with_label_values(&[&g]).set(s.commit as i64);
            self.applied.with_label_values(&[&g]).set(s.applied as i64);
            for r in ROLES {
                self.role
                    .with_label_values(&[g.as_str(), role_name(r)])
                    .set(i64::from(r == s.role));
            }
        }
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

/// Reads the transport, WAL, snapshot and KV counters during `gather`.
struct StatsCollector {
    sources: Sources,
    descs: Vec<Desc>,
}

/// (name, help, type) of every family [`StatsCollector`] emits.
const STATS_FAMILIES: &[(&str, &str, MetricType)] = &[
    (
        "flotilla_raft_inbound_dropped_total",
        "Inbound message batches dropped because the consensus queue was full.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_wal_bytes_written_total",
        "Bytes appended to WAL segments.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_wal_syncs_total",
        "WAL group commits (fdatasync calls).",
        MetricType::COUNTER,
    ),
    (
        "flotilla_wal_fsync_duration_seconds",
        "Latency of WAL fdatasync calls.",
        MetricType::HISTOGRAM,
    ),
    (
        "flotilla_peer_connected",
        "1 while the outbound connection to the peer is up.",
        MetricType::GAUGE,
    ),
    (
        "flotilla_peer_send_queue_messages",
        "Messages queued for the peer.",
        MetricType::GAUGE,
    ),
    (
        "flotilla_peer_send_queue_bytes",
        "Encoded bytes queued for the peer.",
        MetricType::GAUGE,
    ),
    (
        "flotilla_peer_sent_messages_total",
        "Messages sent to the peer.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_peer_sent_bytes_total",
        "Bytes sent to the peer.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_peer_dropped_messages_total",
        "Messages to the peer dropped, by reason.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_snapshot_streams_total",
        "Outgoing snapshot streams, by outcome.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_snapshots_received_total",
        "Snapshots received and handed to Raft.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_snapshots_refused_total",
        "Incoming snapshots refused (too big or too many streams).",
        MetricType::COUNTER,
    ),
    (
        "flotilla_grpc_requests_total",
        "etcd gRPC requests answered, by method and status code.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_kv_revision",
        "Current revision of the KV store on this replica.",
        MetricType::GAUGE,
    ),
    (
        "flotilla_raft_proposals_total",
        "Entries proposed through this node (all groups).",
        MetricType::COUNTER,
    ),
    (
        "flotilla_raft_proposal_calls_total",
        "Proposal calls on this node, by result.",
        MetricType::COUNTER,
    ),
    (
        "flotilla_raft_proposal_duration_seconds",
        "Latency of proposal calls, from admission to applied result.",
        MetricType::HISTOGRAM,
    ),
];

impl StatsCollector {
    fn new(sources: Sources) -> StatsCollector {
        let descs = STATS_FAMILIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
                    .expect("valid metric name")
            })
            .collect();
        StatsCollector { sources, descs }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A histogram from per-bucket (not cumulative) counts over `bounds_us`, the last count for
/// values above every bound.
fn histogram(bounds_us: &[u64], counts: &[u64], sum_us: u64) -> Metric {
    debug_assert_eq!(counts.len(), bounds_us.len() + 1);
    let mut cumulative = 0;
    let buckets = bounds_us
        .iter()
        .zip(counts)
        .map(|(&bound_us, &n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound_us as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum_us as f64 / 1e6);
    let mut m = Metric::default();
    m.set_histogram(h);
    m
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.sources;
        let wal = s.wal.stats();
        let net = s.transport.stats();
        let snap = s.host.snapshot_stream_stats();
        let mut metrics: Vec<Vec<Metric>> = vec![Vec::new(); STATS_FAMILIES.len()];
        metrics[0].push(counter(&[], s.host.dropped_inbound()));
        metrics[1].push(counter(&[], wal.bytes_written));
        metrics[2].push(counter(&[], wal.syncs));
        metrics[3].push(histogram(
            &flotilla_wal::SYNC_LATENCY_BUCKETS_US,
            &wal.sync_latency_buckets,
            wal.sync_latency_us_sum,
        ));
        for (peer, p) in &net.peers {
            let peer = peer.to_string();
            let l = [("peer", peer.as_str())];
            metrics[4].push(gauge(&l, f64::from(u8::from(p.connected))));
            metrics[5].push(gauge(&l, p.queued_msgs as f64));
            metrics[6].push(gauge(&l, p.queued_bytes as f64));
            metrics[7].push(counter(&l, p.msgs_sent));
            metrics[8].push(counter(&l, p.bytes_sent));
            for (reason, n) in [
                ("queue_full", p.dropped_queue_full),
                ("fault", p.dropped_fault),
                ("unsent", p.dropped_unsent),
            ] {
                metrics[9].push(counter(&[("peer", peer.as_str()), ("reason", reason)], n));
            }
        }
        for (outcome, n) in [
            ("started", snap.streams_started),
            ("completed", snap.streams_completed),
            ("failed", snap.streams_failed),
        ] {
            metrics[10].push(counter(&[("outcome", outcome)], n));
        }
        metrics[11].push(counter(&[], snap.snapshots_received));
        metrics[12].push(counter(&[], snap.snapshots_refused));
        for r in s.kv.request_stats() {
            metrics[13].push(counter(&[("method", r.method), ("code", r.code)], r.count));
        }
        metrics[14].push(gauge(&[], s.kv.current_revision() as f64));
        let p = s.host.proposal_stats();
        metrics[15].push(counter(&[], p.entries));
        metrics[16].push(counter(&[("result", "ok")], p.succeeded));
        metrics[16].push(counter(&[("result", "error")], p.failed));
        metrics[17].push(histogram(
            &flotilla_engine::PROPOSAL_LATENCY_BUCKETS_US,
            &p.latency_buckets,
            p.latency_us_sum,
        ));
        STATS_FAMILIES
            .iter()
            .zip(metrics)
            .filter(|(_, m)| !m.is_empty())
            .map(|((name, help, kind), m)| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                f.set_metric(m);
                f
            })
            .collect()
    }
}
