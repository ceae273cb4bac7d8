//! The command and response encodings: every value round-trips, and no byte string —
//! random, truncated or bit-flipped — makes a decoder panic.

use flotilla_kv::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    KeyValue, KvError, KvStateMachine, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, Response, ResponseBody, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use proptest::prelude::*;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..6)
}

/// Few distinct keys, so random txns collide on keys and ranges (and hit the `"\0"` and empty
/// `range_end` conventions).
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![0],
        b"a".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
    ])
}

fn put() -> impl Strategy<Value = PutRequest> {
    (key(), bytes(), any::<i64>(), any::<[bool; 3]>()).prop_map(|(key, value, lease, f)| {
        PutRequest {
            key,
            value,
            lease,
            prev_kv: f[0],
            ignore_value: f[1],
            ignore_lease: f[2],
        }
    })
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (bytes(), bytes(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range() -> impl Strategy<Value = RangeRequest> {
    let targets = prop_oneof![
        Just(SortTarget::Key),
        Just(SortTarget::Version),
        Just(SortTarget::Create),
        Just(SortTarget::Mod),
        Just(SortTarget::Value)
    ];
    let orders = prop_oneof![
        Just(SortOrder::None),
        Just(SortOrder::Ascend),
        Just(SortOrder::Descend)
    ];
    (
        bytes(),
        bytes(),
        any::<i64>(),
        any::<u64>(),
        any::<[bool; 2]>(),
        targets,
        orders,
    )
        .prop_map(
            |(key, range_end, revision, limit, f, sort_target, sort_order)| RangeRequest {
                key,
                range_end,
                revision,
                limit,
                keys_only: f[0],
                count_only: f[1],
                sort_target,
                sort_order,
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        any::<i64>().prop_map(CompareTarget::Version),
        any::<i64>().prop_map(CompareTarget::Create),
        any::<i64>().prop_map(CompareTarget::Mod),
        bytes().prop_map(CompareTarget::Value),
        any::<i64>().prop_map(CompareTarget::Lease),
    ];
    let result = prop_oneof![
        Just(CompareResult::Equal),
        Just(CompareResult::NotEqual),
        Just(CompareResult::Less),
        Just(CompareResult::Greater)
    ];
    (bytes(), bytes(), target, result).prop_map(|(key, range_end, target, result)| Compare {
        key,
        range_end,
        target,
        result,
    })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range().prop_map(RequestOp::Range),
        put().prop_map(RequestOp::Put),
        delete().prop_map(RequestOp::DeleteRange),
    ];
    let op = leaf.prop_recursive(3, 24, 4, |inner| {
        (
            proptest::collection::vec(compare(), 0..3),
            proptest::collection::vec(inner.clone(), 0..4),
            proptest::collection::vec(inner, 0..4),
        )
            .prop_map(|(compare, success, failure)| {
                RequestOp::Txn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    });
    (
        proptest::collection::vec(compare(), 0..3),
        proptest::collection::vec(op.clone(), 0..4),
        proptest::collection::vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        put().prop_map(Command::Put),
        delete().prop_map(Command::DeleteRange),
        txn().prop_map(Command::Txn),
        any::<i64>().prop_map(|revision| Command::Compact { revision }),
        any::<[i64; 3]>().prop_map(|[id, ttl_secs, now_ms]| Command::LeaseGrant {
            id,
            ttl_secs,
            now_ms
        }),
        any::<i64>().prop_map(|id| Command::LeaseRevoke { id }),
        any::<[i64; 2]>().prop_map(|[id, now_ms]| Command::LeaseKeepAlive { id, now_ms }),
    ]
}

fn kv() -> impl Strategy<Value = KeyValue> {
    (bytes(), any::<[i64; 4]>(), bytes()).prop_map(|(key, n, value)| KeyValue {
        key,
        create_revision: n[0],
        mod_revision: n[1],
        version: n[2],
        value,
        lease: n[3],
    })
}

fn response_op() -> impl Strategy<Value = ResponseOp> {
    let leaf = prop_oneof![
        (
            proptest::collection::vec(kv(), 0..3),
            any::<bool>(),
            any::<i64>()
        )
            .prop_map(|(kvs, more, count)| ResponseOp::Range(RangeResponse {
                kvs,
                more,
                count
            })),
        proptest::option::of(kv()).prop_map(|prev_kv| ResponseOp::Put(PutResponse { prev_kv })),
        (any::<i64>(), proptest::collection::vec(kv(), 0..3)).prop_map(|(deleted, prev_kvs)| {
            ResponseOp::DeleteRange(DeleteRangeResponse { deleted, prev_kvs })
        }),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        (any::<bool>(), proptest::collection::vec(inner, 0..4)).prop_map(
            |(succeeded, responses)| {
                ResponseOp::Txn(TxnResponse {
                    succeeded,
                    responses,
                })
            },
        )
    })
}

fn error() -> impl Strategy<Value = KvError> {
    prop_oneof![
        any::<[i64; 2]>().prop_map(|[revision, compact_revision]| KvError::Compacted {
            revision,
            compact_revision
        }),
        any::<[i64; 2]>().prop_map(|[revision, current_revision]| KvError::FutureRevision {
            revision,
            current_revision
        }),
        any::<i64>().prop_map(|id| KvError::LeaseNotFound { id }),
        any::<[u64; 2]>().prop_map(|[len, max_value_bytes]| KvError::ValueTooLarge {
            len,
            max_value_bytes
        }),
        any::<[u64; 2]>().prop_map(|[ops, max_txn_ops]| KvError::TooManyOps { ops, max_txn_ops }),
        bytes().prop_map(|key| KvError::DuplicateKey { key }),
        ".{0,8}".prop_map(|reason| KvError::InvalidArgument { reason }),
        Just(KvError::EmptyKey),
        Just(KvError::KeyNotFound),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let body = prop_oneof![
        proptest::option::of(kv()).prop_map(|prev_kv| ResponseBody::Put(PutResponse { prev_kv })),
        (
            any::<bool>(),
            proptest::collection::vec(response_op(), 0..4)
        )
            .prop_map(|(succeeded, responses)| ResponseBody::Txn(TxnResponse {
                succeeded,
                responses
            })),
        Just(ResponseBody::Compact),
        any::<[i64; 2]>().prop_map(|[id, ttl_secs]| ResponseBody::LeaseGrant { id, ttl_secs }),
        any::<i64>().prop_map(|deleted| ResponseBody::LeaseRevoke { deleted }),
    ];
    let result = prop_oneof![body.prop_map(Ok), error().prop_map(Err)];
    (any::<i64>(), result).prop_map(|(revision, result)| Response { revision, result })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn commands_round_trip(cmd in command()) {
        prop_assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        prop_assert_eq!(Response::decode(&resp.encode()), Ok(resp));
    }

    #[test]
    fn random_bytes_never_panic_a_decoder(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Command::decode(&data);
        let _ = Response::decode(&data);
        let _ = KvStateMachine::decode_snapshot(&data, Default::default());
        // Likely-valid prefixes reach deeper into the decoders.
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&data);
        let _ = Command::decode(&versioned);
        let _ = Response::decode(&versioned);
    }

    #[test]
    fn truncated_or_flipped_commands_are_errors_or_other_commands(
        cmd in command(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = cmd.encode();
        let cut = cut.index(bytes.len());
        prop_assert!(Command::decode(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 1 << bit;
        let _ = Command::decode(&flipped);
        let mut sm = KvStateMachine::default();
        let resp = Response::decode(&sm.apply_bytes(&flipped));
        prop_assert!(resp.is_ok(), "apply must answer with a decodable response");
    }
}

/// A store with history, a compaction and a lease holding keys.
fn populated() -> KvStateMachine {
    let mut sm = KvStateMachine::default();
    let put = |key: &str, lease| {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    };
    for cmd in [
        Command::LeaseGrant {
            id: 1,
            ttl_secs: 10,
            now_ms: 0,
        },
        put("a", 0),
        put("b", 1),
        put("a", 1),
        Command::Compact { revision: 3 },
        put("c", 0),
    ] {
        assert!(sm.apply_command(&cmd).result.is_ok());
    }
    sm
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Apply never panics (no txn slips past the checks into an assertion), a refusal changes
    /// nothing, and two replicas applying the same command agree.
    #[test]
    fn any_command_applies_or_is_refused_without_change(cmds in proptest::collection::vec(command(), 1..4)) {
        let mut sm = populated();
        for cmd in &cmds {
            let before = sm.clone();
            let mut replica = sm.clone();
            let resp = sm.apply_command(cmd);
            prop_assert_eq!(&replica.apply_command(cmd), &resp);
            prop_assert_eq!(&replica, &sm);
            if resp.result.is_err() {
                prop_assert_eq!(&sm, &before);
            }
            prop_assert_eq!(Response::decode(&resp.encode()), Ok(resp));
        }
    }
}

#[test]
fn a_huge_claimed_length_is_refused_without_allocating() {
    // Put, key length u32::MAX, and nothing behind it.
    let data = [1u8, 1, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Command::decode(&data),
        Err(KvError::Malformed { .. })
    ));
    // Txn claiming 4 billion compares.
    let data = [1u8, 3, 0xff, 0xff, 0xff, 0xff, 0];
    assert!(matches!(
        Command::decode(&data),
        Err(KvError::Malformed { .. })
    ));
}

#[test]
fn deep_txn_nesting_is_refused_by_the_decoder() {
    let mut t = TxnRequest::default();
    for _ in 0..40 {
        t = TxnRequest {
            success: vec![RequestOp::Txn(t)],
            ..Default::default()
        };
    }
    let bytes = Command::Txn(t).encode();
    assert!(matches!(
        Command::decode(&bytes),
        Err(KvError::Malformed { .. })
    ));
}

#[test]
fn an_unknown_version_is_refused_by_name() {
    let mut bytes = Command::Compact { revision: 3 }.encode();
    bytes[0] = 9;
    assert_eq!(
        Command::decode(&bytes),
        Err(KvError::UnsupportedVersion {
            version: 9,
            supported: 1
        })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = Command::LeaseRevoke { id: 3 }.encode();
    bytes.push(0);
    assert!(matches!(
        Command::decode(&bytes),
        Err(KvError::Malformed { .. })
    ));
}
