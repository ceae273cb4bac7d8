//! `MvccStore::range` at every past revision, after random puts, deletes, txns and
//! compactions, against the simplest possible model: the full map after each revision.

use std::collections::BTreeMap;

use flotilla_kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, KvError, MvccStore,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

/// `snapshots[r]` is the store after revision `r` (index 0 unused, revision 1 is empty).
struct Model {
    snapshots: Vec<Snapshot>,
    compact_revision: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.snapshots.len() as i64 - 1
    }

    fn put(next: &mut Snapshot, key: &[u8], value: &[u8], revision: i64) {
        let prev = next.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease: 0,
        };
        next.insert(key.to_vec(), kv);
    }
}

fn in_model_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    /// if version(key) == v then put(a) and delete(b) else put(c)
    Txn {
        key: u8,
        version: i64,
        a: u8,
        b: u8,
        c: u8,
    },
    Compact(u8),
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k % 6]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(k, e)| Op::Delete(k, e)),
        2 => (any::<u8>(), 0..3i64, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(key, version, a, b, c)| Op::Txn { key, version, a, b, c }),
        1 => any::<u8>().prop_map(Op::Compact),
    ]
}

fn range_ends(k: &[u8]) -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![0],
        flotilla_kv::mvcc::prefix_range_end(k),
        b"d".to_vec(),
        b"a".to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn range_at_any_revision_matches_the_snapshot_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut store = MvccStore::default();
        let mut model = Model { snapshots: vec![Snapshot::new(), Snapshot::new()], compact_revision: 0 };
        for op in &ops {
            let revision = model.current() + 1;
            let mut next = model.snapshots.last().unwrap().clone();
            match *op {
                Op::Put(k, v) => {
                    store.put(&PutRequest { key: key(k), value: vec![v], ..Default::default() }).unwrap();
                    Model::put(&mut next, &key(k), &[v], revision);
                }
                Op::Delete(k, end) => {
                    let range_end = end.map(key).unwrap_or_default();
                    let req = DeleteRangeRequest { key: key(k), range_end: range_end.clone(), prev_kv: false };
                    let deleted = store.delete_range(&req).unwrap().deleted;
                    let before = next.len();
                    next.retain(|kk, _| !in_model_range(kk, &key(k), &range_end));
                    prop_assert_eq!(deleted as usize, before - next.len());
                }
                Op::Txn { key: k, version, a, b, c } => {
                    let (a, b) = if key(a) == key(b) { (a, b.wrapping_add(1)) } else { (a, b) };
                    let txn = TxnRequest {
                        compare: vec![Compare {
                            key: key(k),
                            range_end: Vec::new(),
                            target: CompareTarget::Version(version),
                            result: CompareResult::Equal,
                        }],
                        success: vec![
                            RequestOp::Put(PutRequest { key: key(a), value: vec![a], ..Default::default() }),
                            RequestOp::DeleteRange(DeleteRangeRequest { key: key(b), ..Default::default() }),
                        ],
                        failure: vec![RequestOp::Put(PutRequest { key: key(c), value: vec![c], ..Default::default() })],
                    };
                    let succeeded = store.txn(&txn).unwrap().succeeded;
                    let model_version = next.get(&key(k)).map_or(0, |kv| kv.version);
                    prop_assert_eq!(succeeded, model_version == version);
                    if succeeded {
                        Model::put(&mut next, &key(a), &[a], revision);
                        next.remove(&key(b));
                    } else {
                        Model::put(&mut next, &key(c), &[c], revision);
                    }
                }
                Op::Compact(r) => {
                    let target = 1 + (r as i64) % model.current();
                    let result = store.compact(target);
                    if target <= model.compact_revision {
                        prop_assert_eq!(result, Err(KvError::Compacted { revision: target, compact_revision: model.compact_revision }));
                    } else {
                        prop_assert_eq!(result, Ok(()));
                        model.compact_revision = target;
                    }
                    continue;
                }
            }
            if &next != model.snapshots.last().unwrap() {
                model.snapshots.push(next);
            }
            prop_assert_eq!(store.current_revision(), model.current());
        }
        let current = model.current();
        for revision in 0..=current + 1 {
            for k in 0..6u8 {
                for range_end in range_ends(&key(k)) {
                    let req = RangeRequest { key: key(k), range_end: range_end.clone(), revision, ..Default::default() };
                    let got = store.range(&req);
                    if revision > current {
                        prop_assert_eq!(got, Err(KvError::FutureRevision { revision, current_revision: current }));
                    } else if revision > 0 && revision < model.compact_revision {
                        prop_assert_eq!(got, Err(KvError::Compacted { revision, compact_revision: model.compact_revision }));
                    } else {
                        let at = if revision == 0 { current } else { revision };
                        let want: Vec<KeyValue> = model.snapshots[at as usize]
                            .values()
                            .filter(|kv| in_model_range(&kv.key, &key(k), &range_end))
                            .cloned()
                            .collect();
                        let got = got.unwrap();
                        prop_assert_eq!(got.count as usize, want.len());
                        prop_assert_eq!(got.kvs, want, "revision {} range {:?}..{:?}", revision, key(k), range_end);
                    }
                }
            }
        }
    }
}
