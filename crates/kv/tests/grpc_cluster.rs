//! The etcd v3 gRPC services on a 3-node cluster in one process: real TCP on 127.0.0.1
//! between the nodes (peer transport) and from the clients (gRPC), each node with its own
//! WAL. Clients use the generated etcd clients and talk to followers on purpose. Every wait
//! polls with a deadline.

#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use flotilla_kv::proto::etcdserverpb as pb;
use flotilla_kv::proto::etcdserverpb::{
    cluster_client::ClusterClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use flotilla_kv::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use tokio_stream::StreamExt;
use tonic::Code;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_at_a_follower_are_forwarded_and_reads_are_linearizable_everywhere() {
    let c = Cluster::new(3).await;
    let f = c.follower().await;
    let mut kv = c.kv(f);
    let r = kv.put(put("greeting", "hello")).await.unwrap().into_inner();
    let rev = r.header.unwrap().revision;
    assert_eq!(rev, 2, "the store starts at revision 1");
    for &id in c.nodes.keys() {
        // Linearizable: every node must see the write at once.
        assert_eq!(
            value_at(&mut c.kv(id), "greeting", false).await.as_deref(),
            Some(&b"hello"[..]),
            "node {id}"
        );
    }
    // prev_kv on overwrite, and delete with prev_kv.
    let r = kv
        .put(pb::PutRequest {
            prev_kv: true,
            ..put("greeting", "hi")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"hello");
    let d = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "greeting".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.deleted, d.prev_kvs[0].value.as_slice()), (1, &b"hi"[..]));
    // Reading an old revision still works until compaction.
    let old = kv
        .range(pb::RangeRequest {
            revision: rev,
            ..get("greeting")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.kvs[0].value, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_prefix_range_sort_and_compaction_behave_like_etcd() {
    let c = Cluster::new(3).await;
    let mut kv = c.kv(c.follower().await);
    for (k, v) in [
        ("app/b", "2"),
        ("app/a", "1"),
        ("app/c", "3"),
        ("other", "x"),
    ] {
        kv.put(put(k, v)).await.unwrap();
    }
    let r = kv
        .range(pb::RangeRequest {
            key: "app/".into(),
            range_end: "app0".into(),
            sort_order: pb::range_request::SortOrder::Descend as i32,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"app/c".to_vec(), b"app/b".to_vec()]);
    assert!(r.more);
    assert_eq!(r.count, 3);

    // Revision filters apply before sort+limit (etcd's lock recipe relies on it: "the newest
    // key under the prefix created before mine"). Regression: they were applied after.
    let r = kv
        .range(pb::RangeRequest {
            key: "app/".into(),
            range_end: "app0".into(),
            sort_target: pb::range_request::SortTarget::Create as i32,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            limit: 1,
            max_create_revision: 3, // app/b (2) and app/a (3); app/c (4) is filtered out
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"app/a".to_vec()]);
    assert!(r.more);
    assert_eq!(r.count, 3, "count is the whole range, as in etcd");

    // Compare-and-swap: succeeds once, fails the second time.
    let cas = |expect: &str, new: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            key: "app/a".into(),
            target: pb::compare::CompareTarget::Value as i32,
            result: pb::compare::CompareResult::Equal as i32,
            target_union: Some(pb::compare::TargetUnion::Value(expect.into())),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put("app/a", new))),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(get("app/a"))),
        }],
    };
    let t = kv.txn(cas("1", "10")).await.unwrap().into_inner();
    assert!(t.succeeded);
    let t = kv.txn(cas("1", "11")).await.unwrap().into_inner();
    assert!(!t.succeeded);
    match &t.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"10"),
        other => panic!("expected a range response, got {other:?}"),
    }

    let current = t.header.unwrap().revision;
    kv.compact(pb::CompactionRequest {
        revision: current - 1,
        physical: false,
    })
    .await
    .unwrap();
    let err = kv
        .range(pb::RangeRequest {
            revision: 2,
            ..get("app/a")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("compacted"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let c = Cluster::with(3, |cfg| cfg.limits.max_value_bytes = 1024).await;
    let mut kv = c.kv(c.follower().await);
    kv.put(put("k", "v")).await.unwrap();
    let before = kv
        .range(get("k"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;

    let err = kv.put(put("k", &"x".repeat(2048))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_value_bytes = 1024"),
        "{}",
        err.message()
    );

    let err = kv
        .put(pb::PutRequest {
            lease: 12345,
            ..put("k", "w")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    let err = kv.put(put("", "v")).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: key is not provided");

    let err = kv
        .range(pb::RangeRequest {
            revision: before + 100,
            ..get("k")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    let after = kv.range(get("k")).await.unwrap().into_inner();
    assert_eq!(
        after.header.unwrap().revision,
        before,
        "refusals wrote nothing"
    );
    assert_eq!(after.kvs[0].value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_at_a_follower_sees_history_then_live_events_in_order() {
    let c = Cluster::new(3).await;
    let f = c.follower().await;
    let mut kv = c.kv(c.leader().await);
    kv.put(put("w/1", "a")).await.unwrap(); // rev 2
    kv.put(put("w/2", "b")).await.unwrap(); // rev 3

    let mut watch = WatchClient::new(c.channel(f));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: "w/".into(),
                range_end: "w0".into(),
                start_revision: 2,
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.next().await.unwrap().unwrap();
    assert!(created.created);

    kv.put(put("w/1", "c")).await.unwrap(); // rev 4
    kv.delete_range(pb::DeleteRangeRequest {
        key: "w/2".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // rev 5
    kv.put(put("unwatched", "z")).await.unwrap(); // rev 6

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let r = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("watch events arrive")
            .unwrap()
            .unwrap();
        for e in r.events {
            let kv = e.kv.unwrap();
            seen.push((
                kv.mod_revision,
                e.r#type,
                kv.key,
                e.prev_kv.map(|p| p.value),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (2, 0, b"w/1".to_vec(), None),
            (3, 0, b"w/2".to_vec(), None),
            (4, 0, b"w/1".to_vec(), Some(b"a".to_vec())),
            (5, 1, b"w/2".to_vec(), Some(b"b".to_vec())),
        ]
    );

    // A watch from a compacted revision is cancelled with the compact revision.
    kv.compact(pb::CompactionRequest {
        revision: 5,
        physical: false,
    })
    .await
    .unwrap();
    // Wait for the follower to apply the compaction.
    let mut fkv = c.kv(f);
    fkv.range(get("w/1")).await.unwrap();
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: "w/1".into(),
                start_revision: 3,
                watch_id: 99,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    loop {
        let r = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("cancel arrives")
            .unwrap()
            .unwrap();
        if r.watch_id == 99 && r.canceled {
            assert_eq!(r.compact_revision, 5);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_alive_expire_at_the_leader_and_take_their_keys() {
    let c = Cluster::new(3).await;
    let f = c.follower().await;
    let mut lease = LeaseClient::new(c.channel(f));
    let mut kv = c.kv(f);

    let long = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(long.id > 0);
    assert_eq!(long.ttl, 60);
    kv.put(pb::PutRequest {
        lease: long.id,
        ..put("held", "1")
    })
    .await
    .unwrap();
    let ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: long.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert!(ttl.ttl > 50 && ttl.ttl <= 60, "{}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"held".to_vec()]);

    // Keep-alive over the stream, at a follower.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::LeaseKeepAliveRequest { id: long.id })
        .await
        .unwrap();
    let mut ka = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = ka.next().await.unwrap().unwrap();
    assert_eq!((r.id, r.ttl), (long.id, 60));
    // An unknown lease answers TTL 0, as etcd does.
    tx.send(pb::LeaseKeepAliveRequest { id: 424242 })
        .await
        .unwrap();
    assert_eq!(ka.next().await.unwrap().unwrap().ttl, 0);

    // Revoke deletes the attached key.
    lease
        .lease_revoke(pb::LeaseRevokeRequest { id: long.id })
        .await
        .unwrap();
    assert_eq!(value_at(&mut kv, "held", false).await, None);

    // A 1 s lease with no keep-alive expires by the leader's decision and takes its key.
    let short = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 77 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(short.id, 77);
    kv.put(pb::PutRequest {
        lease: 77,
        ..put("ephemeral", "1")
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while value_at(&mut kv, "ephemeral", false).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leases = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(leases.leases.is_empty(), "{:?}", leases.leases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_serializes_holders_and_member_list_reports_the_cluster() {
    let c = Cluster::new(3).await;
    let f = c.follower().await;
    let mut lease = LeaseClient::new(c.channel(f));
    let mut locks = LockClient::new(c.channel(f));
    let l1 = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let l2 = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let first = locks
        .lock(LockRequest {
            name: "job".into(),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut other = LockClient::new(c.channel(c.leader().await));
    let waiter = tokio::spawn(async move {
        other
            .lock(LockRequest {
                name: "job".into(),
                lease: l2,
            })
            .await
            .unwrap()
            .into_inner()
    });
    // The second locker must still be waiting after the first's key was written and
    // replicated everywhere (a linearizable read at each node proves it is applied).
    for &id in c.nodes.keys() {
        c.kv(id).range(get("job/")).await.unwrap();
    }
    assert!(!waiter.is_finished());
    locks
        .unlock(UnlockRequest { key: first.key })
        .await
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(second.key.starts_with(b"job/"));

    let members = ClusterClient::new(c.channel(f))
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["node1", "node2", "node3"]);
    assert!(members
        .iter()
        .all(|m| !m.is_learner && m.client_ur_ls.len() == 1));

    let status = MaintenanceClient::new(c.channel(f))
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader, c.leader().await);
    assert!(status.raft_applied_index > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leaders_crash() {
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;
    let survivor = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let mut kv = c.kv(survivor);
    for i in 0..20 {
        kv.put(put(&format!("k{i}"), &i.to_string())).await.unwrap();
    }
    c.kill(leader).await;
    // Writes keep working through the survivor once a new leader is elected (the server
    // waits for it rather than failing).
    // A put in flight at the crash may fail with Unavailable (its outcome unknown), as with
    // etcd; clients retry. Every put that returned success must be readable everywhere.
    for i in 20..40 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match kv.put(put(&format!("k{i}"), &i.to_string())).await {
                Ok(_) => break,
                Err(s) if s.code() == Code::Unavailable => {
                    assert!(tokio::time::Instant::now() < deadline, "no progress: {s}");
                }
                Err(s) => panic!("put k{i}: {s}"),
            }
        }
    }
    for &id in c.nodes.keys() {
        let mut kv = c.kv(id);
        for i in 0..40 {
            assert_eq!(
                value_at(&mut kv, &format!("k{i}"), false).await,
                Some(i.to_string().into_bytes()),
                "node {id} key k{i}"
            );
        }
    }
    assert!(c.nodes[&survivor]
        .server
        .request_stats()
        .iter()
        .any(|r| r.method == "Put" && r.code == "Ok"));
}
