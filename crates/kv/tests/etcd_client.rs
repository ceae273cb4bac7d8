//! The Rust `etcd-client` crate — a real etcd v3 client, unchanged — against a 3-node
//! Flotilla cluster in one process (real TCP on 127.0.0.1), including a leader crash under a
//! stream of puts with watchers that must see every revision exactly once, in order.

#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LockOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

mod common;
use common::*;

async fn connect(endpoints: &[String]) -> Client {
    Client::connect(endpoints, None).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_works_against_flotilla() {
    let c = Cluster::new(3).await;
    c.leader().await;
    let mut client = connect(&c.endpoints()).await;

    client.put("cfg/a", "1", None).await.unwrap();
    client.put("cfg/b", "2", None).await.unwrap();
    let r = client
        .get("cfg/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<_> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap()))
        .collect();
    assert_eq!(got, vec![("cfg/a", "1"), ("cfg/b", "2")]);

    let txn = Txn::new()
        .when(vec![Compare::value("cfg/a", CompareOp::Equal, "1")])
        .and_then(vec![TxnOp::put("cfg/a", "one", None)])
        .or_else(vec![TxnOp::get("cfg/a", None)]);
    assert!(client.txn(txn).await.unwrap().succeeded());

    let del = client.delete("cfg/b", None).await.unwrap();
    assert_eq!(del.deleted(), 1);

    let lease = client.lease_grant(30, None).await.unwrap();
    client
        .put(
            "cfg/leased",
            "x",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .unwrap();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = responses.message().await.unwrap().unwrap();
    assert_eq!(ka.ttl(), 30);
    let ttl = client.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    client.lease_revoke(lease.id()).await.unwrap();
    assert!(client
        .get("cfg/leased", None)
        .await
        .unwrap()
        .kvs()
        .is_empty());

    let lock_lease = client.lease_grant(30, None).await.unwrap().id();
    let lock = client
        .lock("door", Some(LockOptions::new().with_lease(lock_lease)))
        .await
        .unwrap();
    assert!(lock.key().starts_with(b"door/"));
    client.unlock(lock.key()).await.unwrap();

    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    let status = client.status().await.unwrap();
    assert!(status.leader() >= 1 && status.leader() <= 3);

    let rev = client
        .get("cfg/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(rev, None).await.unwrap();
    let err = client
        .get("cfg/a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
}

/// Watches `load/` at `endpoints[0]` from `start`; on a broken stream re-watches at the next
/// endpoint from the revision after the last one seen (what a failover-aware client does).
/// Returns every (revision, key) seen once it has passed the revision `until` announces.
async fn watch_with_failover(
    endpoints: Vec<String>,
    start: i64,
    mut until: tokio::sync::watch::Receiver<i64>,
) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    let mut next = start;
    let deadline = tokio::time::Instant::now() + 2 * DEADLINE;
    'outer: for ep in endpoints.iter().cycle() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch stuck at {next}"
        );
        let Ok(mut client) = Client::connect([ep], None).await else {
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(mut stream) = client.watch("load/", Some(options)).await else {
            continue;
        };
        loop {
            if next > *until.borrow() {
                break 'outer;
            }
            let resp = tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) if !resp.canceled() => resp,
                    _ => continue 'outer,
                },
                _ = until.changed() => continue,
                _ = tokio::time::sleep_until(deadline) => continue 'outer,
            };
            for e in resp.events() {
                assert_eq!(e.event_type(), EventType::Put);
                let kv = e.kv().unwrap();
                seen.push((kv.mod_revision(), kv.key_str().unwrap().to_string()));
                next = kv.mod_revision() + 1;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_a_leader_crash_and_watchers_see_each_revision_once() {
    const PUTS: usize = 150;
    let mut c = Cluster::new(3).await;
    let leader = c.leader().await;
    let addrs = c.client_addrs.clone();
    let addr = |id: u64| addrs[&id].to_string();
    let others: Vec<u64> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    let mut writer = connect(&c.endpoints()).await;
    let first = writer
        .put("load/start", "0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // One watcher on the leader (it will lose its stream), one on a survivor.
    let (until_tx, until) = tokio::sync::watch::channel(i64::MAX);
    let on_leader = tokio::spawn(watch_with_failover(
        vec![addr(leader), addr(others[0]), addr(others[1])],
        first,
        until.clone(),
    ));
    let on_survivor = tokio::spawn(watch_with_failover(
        vec![addr(others[0]), addr(others[1])],
        first,
        until,
    ));

    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    acked.insert("load/start".into(), first);
    for i in 0..PUTS {
        if i == PUTS / 3 {
            c.kill(leader).await;
        }
        let key = format!("load/{i:04}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match writer.put(key.as_str(), i.to_string(), None).await {
                Ok(r) => {
                    acked.insert(key.clone(), r.header().unwrap().revision());
                    break;
                }
                // Outcome unknown (connection lost, timed out): retry, as etcd clients do.
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "no progress: {e}"),
            }
        }
    }
    let last = *acked.values().max().unwrap();
    // Every acknowledged put is readable at every surviving node (linearizable reads).
    for &id in &others {
        let mut client = connect(&[addr(id)]).await;
        for key in acked.keys() {
            let r = client.get(key.as_str(), None).await.unwrap();
            assert_eq!(r.kvs().len(), 1, "node {id} lost {key}");
        }
    }
    until_tx.send_replace(last);
    for (name, handle) in [("leader", on_leader), ("survivor", on_survivor)] {
        let seen = tokio::time::timeout(2 * DEADLINE, handle)
            .await
            .unwrap_or_else(|_| panic!("{name} watcher timed out"))
            .unwrap();
        let revisions: Vec<i64> = seen.iter().map(|(r, _)| *r).collect();
        let expected: Vec<i64> = (first..=last).collect();
        assert_eq!(revisions, expected, "{name}: every revision once, in order");
        for (key, rev) in &acked {
            assert!(
                seen.contains(&(*rev, key.clone())),
                "{name} missed {key}@{rev}"
            );
        }
    }
}
