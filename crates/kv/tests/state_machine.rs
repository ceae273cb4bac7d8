//! `KvStateMachine` through the engine's `StateMachine` trait: apply, bad entries, leases
//! expired by the leader, snapshots and corrupted snapshots.

use bytes::Bytes;
use flotilla_engine::{AppliedEntry, StateMachine};
use flotilla_kv::state_machine::SNAPSHOT_VERSION;
use flotilla_kv::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvError, KvStateMachine,
    PutRequest, RangeRequest, RequestOp, Response, ResponseBody, TxnRequest,
};

fn entries(cmds: &[Command]) -> Vec<AppliedEntry> {
    cmds.iter()
        .enumerate()
        .map(|(i, c)| AppliedEntry {
            index: i as u64 + 1,
            term: 1,
            data: Bytes::from(c.encode()),
        })
        .collect()
}

fn put(key: &str, value: &str, lease: i64) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    })
}

fn apply(sm: &mut KvStateMachine, cmds: &[Command]) -> Vec<Response> {
    sm.apply(&entries(cmds))
        .iter()
        .map(|b| Response::decode(b).unwrap())
        .collect()
}

/// A state that exercises every part of the snapshot: histories, tombstones, compaction,
/// events, leases with and without keys.
fn busy_state() -> KvStateMachine {
    let mut sm = KvStateMachine::default();
    let txn = TxnRequest {
        compare: vec![Compare {
            key: "a".into(),
            range_end: Vec::new(),
            target: CompareTarget::Version(2),
            result: CompareResult::Equal,
        }],
        success: vec![put("t1", "x", 0).into_op(), put("t2", "y", 7).into_op()],
        failure: vec![],
    };
    let responses = apply(
        &mut sm,
        &[
            Command::LeaseGrant {
                id: 7,
                ttl_secs: 10,
                now_ms: 1_000,
            },
            Command::LeaseGrant {
                id: 8,
                ttl_secs: 5,
                now_ms: 1_000,
            },
            put("a", "1", 0),
            put("a", "2", 7),
            put("b", "1", 0),
            Command::DeleteRange(DeleteRangeRequest {
                key: "b".into(),
                ..Default::default()
            }),
            Command::Txn(txn),
            Command::Compact { revision: 3 },
            put("c", "1", 0),
        ],
    );
    for r in &responses {
        assert!(r.result.is_ok(), "{r:?}");
    }
    assert_eq!(sm.store().current_revision(), 7);
    sm
}

trait IntoOp {
    fn into_op(self) -> RequestOp;
}

impl IntoOp for Command {
    fn into_op(self) -> RequestOp {
        match self {
            Command::Put(p) => RequestOp::Put(p),
            other => panic!("not a put: {other:?}"),
        }
    }
}

#[test]
fn apply_answers_each_entry_with_its_revision() {
    let mut sm = KvStateMachine::default();
    let responses = apply(&mut sm, &[put("a", "1", 0), put("a", "2", 0)]);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].revision, 2);
    assert_eq!(responses[1].revision, 3);
    assert!(matches!(responses[1].result, Ok(ResponseBody::Put(_))));
}

#[test]
fn a_bad_entry_gets_an_error_response_and_changes_nothing() {
    let mut sm = busy_state();
    let before = sm.clone();
    let bad = [
        AppliedEntry {
            index: 1,
            term: 1,
            data: Bytes::from_static(b"\x01\x01\xff\xff"),
        },
        AppliedEntry {
            index: 2,
            term: 1,
            data: Bytes::from_static(b"\x07"),
        },
    ];
    let results = sm.apply(&bad);
    assert_eq!(results.len(), 2);
    let first = Response::decode(&results[0]).unwrap();
    assert_eq!(first.revision, 7);
    assert!(matches!(first.result, Err(KvError::Malformed { .. })));
    let second = Response::decode(&results[1]).unwrap();
    assert_eq!(
        second.result,
        Err(KvError::UnsupportedVersion {
            version: 7,
            supported: 1
        })
    );
    let refused = apply(
        &mut sm,
        &[put("t9", "x", 99), Command::Compact { revision: 2 }],
    );
    assert_eq!(refused[0].result, Err(KvError::LeaseNotFound { id: 99 }));
    assert_eq!(
        refused[1].result,
        Err(KvError::Compacted {
            revision: 2,
            compact_revision: 3
        })
    );
    assert_eq!(sm, before);
}

#[test]
fn the_leader_expires_a_lease_by_proposing_its_revoke() {
    let mut sm = busy_state();
    // Lease 8 (5 s from 1 000 ms) has expired at 6 000 ms; lease 7 was granted for 10 s.
    assert_eq!(sm.store().leases().expired(6_000, 16), vec![8]);
    let keep = apply(
        &mut sm,
        &[Command::LeaseKeepAlive {
            id: 7,
            now_ms: 9_000,
        }],
    );
    assert_eq!(
        keep[0].result,
        Ok(ResponseBody::LeaseKeepAlive {
            id: 7,
            ttl_secs: 10
        })
    );
    assert_eq!(sm.store().leases().expired(12_000, 16), vec![8]);
    let revoke: Vec<Command> = sm
        .store()
        .leases()
        .expired(19_000, 16)
        .into_iter()
        .map(|id| Command::LeaseRevoke { id })
        .collect();
    let responses = apply(&mut sm, &revoke);
    assert_eq!(
        responses[0].result,
        Ok(ResponseBody::LeaseRevoke { deleted: 0 })
    );
    assert_eq!(
        responses[1].result,
        Ok(ResponseBody::LeaseRevoke { deleted: 2 })
    );
    assert_eq!(responses[1].revision, 8);
    let left = sm
        .store()
        .range(&RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            ..Default::default()
        })
        .unwrap();
    let keys: Vec<_> = left.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, vec![b"c".to_vec(), b"t1".to_vec()]);
    assert!(sm.store().leases().is_empty());
}

#[test]
fn a_snapshot_restores_the_same_state_and_the_same_future() {
    let mut sm = busy_state();
    let snapshot = sm.snapshot();
    let mut restored = KvStateMachine::default();
    restored.restore(&snapshot);
    assert_eq!(restored, sm);
    assert_eq!(restored.store().compact_revision(), 3);
    assert_eq!(restored.store().leases().leases(), vec![7, 8]);
    assert_eq!(
        restored.store().events_since(3, b"\0", b"\0"),
        sm.store().events_since(3, b"\0", b"\0")
    );
    let next = [
        put("a", "3", 0),
        Command::LeaseRevoke { id: 7 },
        Command::Compact { revision: 2 },
        Command::Compact { revision: 8 },
    ];
    assert_eq!(apply(&mut restored, &next), apply(&mut sm, &next));
    assert_eq!(restored, sm);
}

#[test]
fn restoring_an_empty_snapshot_gives_the_initial_state() {
    let mut sm = busy_state();
    sm.restore(&Bytes::new());
    assert_eq!(sm, KvStateMachine::default());
}

#[test]
fn every_corrupted_byte_of_a_snapshot_is_detected() {
    let snapshot = busy_state().snapshot();
    for i in 0..snapshot.len() {
        let mut bad = snapshot.to_vec();
        bad[i] ^= 0x20;
        let err = KvStateMachine::decode_snapshot(&bad, Default::default()).unwrap_err();
        assert!(
            matches!(err, KvError::CorruptedSnapshot { .. }),
            "byte {i}: {err}"
        );
    }
    let truncated = &snapshot[..snapshot.len() - 1];
    assert!(KvStateMachine::decode_snapshot(truncated, Default::default()).is_err());
}

#[test]
fn an_unknown_snapshot_version_is_refused_by_name() {
    let mut data = busy_state().snapshot().to_vec();
    data[8..12].copy_from_slice(&(SNAPSHOT_VERSION + 1).to_le_bytes());
    let body_end = data.len() - 4;
    let crc = crc32c_of(&data[..body_end]);
    data[body_end..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        KvStateMachine::decode_snapshot(&data, Default::default()),
        Err(KvError::UnsupportedVersion {
            version: SNAPSHOT_VERSION + 1,
            supported: 1
        })
    );
}

#[test]
#[should_panic(expected = "refusing to restore the KV")]
fn restoring_a_corrupted_snapshot_fails_loudly() {
    let mut data = busy_state().snapshot().to_vec();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    KvStateMachine::default().restore(&Bytes::from(data));
}

/// CRC32C (Castagnoli), bitwise: an independent check of the format's checksum.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
