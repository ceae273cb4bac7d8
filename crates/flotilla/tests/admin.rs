//! The admin HTTP endpoints of a one-node server started in-process on 127.0.0.1 with
//! port-0 listeners: `/health`, `/ready` (polled with a deadline), `/status`, `/metrics`
//! (parsed with a Prometheus text-format parser), then a graceful shutdown.

use std::time::Duration;

use flotilla::config::{AdminEndpoint, Config, Endpoint, MemberConfig};
use flotilla::node::{Listeners, Node};
use flotilla_kv::proto::etcdserverpb::kv_client::KvClient;
use flotilla_kv::proto::etcdserverpb::PutRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);

/// A minimal HTTP/1.0 GET (no chunked bodies with 1.0): (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

async fn start_one_node(dir: &std::path::Path) -> Node {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let listeners = Listeners {
        peer: bind().await.unwrap(),
        client: bind().await.unwrap(),
        admin: bind().await.unwrap(),
    };
    let peer = listeners.peer.local_addr().unwrap().to_string();
    let client = listeners.client.local_addr().unwrap().to_string();
    let admin = listeners.admin.local_addr().unwrap().to_string();
    let mut config = Config {
        node_id: 1,
        name: Some("solo".into()),
        data_dir: Some(dir.to_path_buf()),
        peer: Endpoint {
            listen: peer.clone(),
            advertise: None,
        },
        client: Endpoint {
            listen: client.clone(),
            advertise: None,
        },
        admin: AdminEndpoint { listen: admin },
        initial_cluster: vec![MemberConfig {
            id: 1,
            name: Some("solo".into()),
            peer_url: format!("http://{peer}"),
            client_url: format!("http://{client}"),
        }],
        ..Config::default()
    };
    config.raft.tick_ms = 10;
    Node::start_with(config, listeners).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_one_node(dir.path()).await;
    let admin = node.admin_addr();

    assert_eq!(get(admin, "/health").await, (200, "ok\n".to_string()));

    // Ready once the single voter has elected itself and applied what it committed.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (code, body) = get(admin, "/ready").await;
        if code == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert_eq!(code, 503);
        assert!(body.starts_with("not ready: "), "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One write through the etcd API, so the gRPC request counter has a series.
    let mut kv = KvClient::connect(format!("http://{}", node.client_addr()))
        .await
        .unwrap();
    kv.put(PutRequest {
        key: b"hello".to_vec(),
        value: b"world".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    let (code, body) = get(admin, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["name"], "solo");
    assert_eq!(status["members"][0]["id"], 1);
    let group = &status["groups"][0];
    assert_eq!(group["group"], 1);
    assert_eq!(group["leader"], 1);
    assert_eq!(group["role"], "leader");
    assert!(group["term"].as_u64().unwrap() >= 1);
    assert!(group["applied"].as_u64().unwrap() >= 2, "{group}");
    assert_eq!(group["voters"], serde_json::json!([1]));

    let (code, body) = get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    for family in [
        "flotilla_raft_term",
        "flotilla_raft_role",
        "flotilla_raft_leader_id",
        "flotilla_raft_commit_index",
        "flotilla_raft_applied_index",
        "flotilla_raft_inbound_dropped_total",
        "flotilla_wal_bytes_written_total",
        "flotilla_wal_syncs_total",
        "flotilla_wal_fsync_duration_seconds",
        "flotilla_snapshot_streams_total",
        "flotilla_snapshots_received_total",
        "flotilla_snapshots_refused_total",
        "flotilla_grpc_requests_total",
        "flotilla_kv_revision",
        "flotilla_raft_proposals_total",
        "flotilla_raft_proposal_calls_total",
        "flotilla_raft_proposal_duration_seconds",
    ] {
        assert!(
            scrape.docs.contains_key(family),
            "no {family} in /metrics:\n{body}"
        );
    }
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .value
            .clone()
    };
    assert_eq!(
        sample("flotilla_raft_role", &[("group", "1"), ("role", "leader")]),
        prometheus_parse::Value::Gauge(1.0)
    );
    assert_eq!(
        sample("flotilla_raft_leader_id", &[("group", "1")]),
        prometheus_parse::Value::Gauge(1.0)
    );
    assert_eq!(
        sample(
            "flotilla_grpc_requests_total",
            &[("method", "Put"), ("code", "Ok")]
        ),
        prometheus_parse::Value::Counter(1.0)
    );
    match sample("flotilla_wal_fsync_duration_seconds", &[]) {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.last().unwrap().count >= 1.0, "fsyncs were counted")
        }
        other => panic!("fsync latency is not a histogram: {other:?}"),
    }
    match sample("flotilla_wal_bytes_written_total", &[]) {
        prometheus_parse::Value::Counter(n) => assert!(n > 0.0),
        other => panic!("{other:?}"),
    }

    // Graceful shutdown finishes (bounded) and the admin port stops answering.
    tokio::time::timeout(DEADLINE, node.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    assert!(TcpStream::connect(admin).await.is_err(), "admin still up");
}
