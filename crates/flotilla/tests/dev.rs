//! `flotilla dev`'s cluster in-process on free 127.0.0.1 ports: three nodes elect a leader;
//! shutting the leader down gracefully hands leadership to another node; the rest stop.

use std::time::Duration;

use flotilla::dev::{DevArgs, DevCluster};
use flotilla::node::KV_GROUP;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hands_off_leadership_when_it_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let args = DevArgs {
        nodes: 3,
        data_dir: Some(dir.path().to_path_buf()),
        peer_base_port: 0,
        client_base_port: 0,
        admin_base_port: 0,
        log_level: "warn".into(),
    };
    let mut cluster = DevCluster::start(&args).await.unwrap();
    assert_eq!(cluster.endpoints().split(',').count(), 3);
    let leader = cluster.wait_for_leader(DEADLINE).await.unwrap();

    let i = cluster.nodes.iter().position(|n| n.id() == leader).unwrap();
    let old = cluster.nodes.remove(i);
    tokio::time::timeout(DEADLINE, old.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();

    // The two left agree on a new leader (the hand-off target, or an election winner).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let leaders: Vec<_> = cluster
            .nodes
            .iter()
            .map(|n| n.host().leader(KV_GROUP))
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if *l != leader && leaders.iter().all(|x| *x == Some(*l)) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(DEADLINE, cluster.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
}
