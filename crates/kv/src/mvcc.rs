//! The MVCC store: every key's history under one global revision, as in etcd v3.
//!
//! The store starts at revision 1. Each write request that changes something (a put, a delete
//! that deletes at least one key, a txn with such writes, a lease revoke with attached keys)
//! takes the next revision; all its changes carry that revision, and events are recorded in the
//! order the changes were made. A key's `version` counts puts since its creation and restarts
//! at 1 after a delete; `create_revision` is the revision that created the current generation.
//!
//! Reads at a past revision see exactly the store as it was after that revision, until
//! [`MvccStore::compact`] drops history older than the compact revision.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::command::{get_kv, get_opt_kv, put_kv, put_opt_kv, Reader, Writer};
use crate::error::{KvError, Result};
use crate::lease::{Lease, LeaseTable, LeaseTimeToLive};

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Puts since creation (1 for a fresh key).
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// Attached lease, 0 for none.
    pub lease: i64,
}

/// The kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was put.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` (the deleting
    /// revision) are set, as in etcd.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// The bounds the store enforces. Every one is checked before anything changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted.
    pub max_key_bytes: u64,
    /// Longest value accepted.
    pub max_value_bytes: u64,
    /// Most compares, or ops in one branch, of one txn (etcd's `--max-txn-ops`, default 128).
    pub max_txn_ops: u64,
    /// Deepest txn nesting accepted (bounds recursion in apply and in the decoder).
    pub max_txn_depth: u64,
    /// Longest lease TTL accepted (etcd's `MaxLeaseTTL`).
    pub max_lease_ttl_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 8 * 1024,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
            max_txn_depth: 8,
            max_lease_ttl_secs: 9_000_000_000,
        }
    }
}

/// What to sort range results by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key (the natural order).
    #[default]
    Key,
    /// `version`.
    Version,
    /// `create_revision`.
    Create,
    /// `mod_revision`.
    Mod,
    /// The value bytes.
    Value,
}

/// Sort direction of range results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order; for a target other than `Key`, ascending (as etcd does).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// A range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range: empty = just `key`; `"\0"` = every key >= `key`; else `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Revision to read at; 0 = current.
    pub revision: i64,
    /// Most keys returned; 0 = no limit.
    pub limit: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Sort order.
    pub sort_order: SortOrder,
}

/// The answer to a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The keys found (at most `limit`), sorted as asked.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys than returned are in the range.
    pub more: bool,
    /// How many keys are in the range (ignoring `limit`).
    pub count: i64,
}

/// A put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key (non-empty).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none (detaches a previous lease).
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, `lease` must be 0).
    pub ignore_lease: bool,
}

/// The answer to a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The previous version, if asked for and existing.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of one key or a range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, with [`RangeRequest::range_end`]'s conventions.
    pub range_end: Vec<u8>,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

/// The answer to a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted versions, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// `version` (0 for a missing key).
    Version(i64),
    /// `create_revision` (0 for a missing key).
    Create(i64),
    /// `mod_revision` (0 for a missing key).
    Mod(i64),
    /// The value (a compare on a missing key's value is false).
    Value(Vec<u8>),
    /// The lease (0 for none or a missing key).
    Lease(i64),
}

/// A compare's relation: `key's field <result> operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// One txn guard; with a `range_end` every key in the range must satisfy it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// End of the range (empty: just `key`).
    pub range_end: Vec<u8>,
    /// Field and operand.
    pub target: CompareTarget,
    /// Relation.
    pub result: CompareResult,
}

/// One operation of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read (at revision 0 it sees the txn's earlier writes).
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// One answer of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// A read's answer.
    Range(RangeResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A nested txn's answer.
    Txn(TxnResponse),
}

/// A transaction: if all compares hold, run `success`, else `failure`; all its writes share one
/// revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// Guards.
    pub compare: Vec<Compare>,
    /// Ops when every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a txn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (so `success` ran).
    pub succeeded: bool,
    /// One answer per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// One entry of a key's history: the key as of `revision`, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    revision: i64,
    /// `None`: deleted at `revision`.
    kv: Option<KeyValue>,
}

/// The MVCC store plus the lease table (revoking a lease deletes keys, so they share revisions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccStore {
    limits: Limits,
    current_revision: i64,
    compact_revision: i64,
    /// Per key, its versions in ascending revision order, at most one per revision.
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Every change at or after `compact_revision`, in order.
    events: Vec<Event>,
    leases: LeaseTable,
}

/// Start and end bounds of a key range, as `BTreeMap::range` takes them.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Bounds of a key range, with etcd's `range_end` conventions; `None` for an empty range.
pub fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// Whether `k` is in the range `key`..`range_end` (etcd's conventions).
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match key_bounds(key, range_end) {
        None => false,
        Some((_, Bound::Included(_))) => k == key,
        Some((_, Bound::Unbounded)) => k >= key,
        Some((_, Bound::Excluded(end))) => k >= key && k < end,
    }
}

/// The `range_end` that selects every key starting with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and what follows dropped; `"\0"` (all
/// keys) when the prefix is empty or all 0xff.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Default for MvccStore {
    fn default() -> Self {
        MvccStore::new(Limits::default())
    }
}

impl MvccStore {
    /// An empty store at revision 1, as a fresh etcd.
    pub fn new(limits: Limits) -> Self {
        MvccStore {
            limits,
            current_revision: 1,
            compact_revision: 0,
            keys: BTreeMap::new(),
            events: Vec::new(),
            leases: LeaseTable::default(),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The revision of the last change (1 for a fresh store).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The oldest readable revision (0 before any compaction).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Resolves a read revision (0 = current) or refuses it.
    fn read_revision(&self, revision: i64) -> Result<i64> {
        if revision <= 0 {
            return Ok(self.current_revision);
        }
        if revision > self.current_revision {
            return Err(KvError::FutureRevision {
                revision,
                current_revision: self.current_revision,
            });
        }
        if revision < self.compact_revision {
            return Err(KvError::Compacted {
                revision,
                compact_revision: self.compact_revision,
            });
        }
        Ok(revision)
    }

    /// Reads a key or range at a revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let revision = self.read_revision(req.revision)?;
        Ok(self.range_at(req, revision))
    }

    /// The live versions in `key..range_end` as of `revision`, in key order.
    fn visible<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        revision: i64,
    ) -> Vec<&'a KeyValue> {
        let Some(bounds) = key_bounds(key, range_end) else {
            return Vec::new();
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter_map(|(_, history)| version_at(history, revision))
            .collect()
    }

    fn range_at(&self, req: &RangeRequest, revision: i64) -> RangeResponse {
        let mut kvs = self.visible(&req.key, &req.range_end, revision);
        let count = kvs.len() as i64;
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        if order != SortOrder::None {
            // Stable sorts over key order: ties stay in key order, as in etcd.
            match req.sort_target {
                SortTarget::Key => {}
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as u64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.count_only {
            return RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            };
        }
        let kvs = kvs
            .into_iter()
            .map(|kv| {
                let mut kv = kv.clone();
                if req.keys_only {
                    kv.value = Vec::new();
                }
                kv
            })
            .collect();
        RangeResponse { kvs, more, count }
    }

    /// The newest version of `key`, including writes of a txn in progress.
    fn latest(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .and_then(|v| v.kv.as_ref())
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() as u64 > self.limits.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                len: key.len() as u64,
                max_key_bytes: self.limits.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        self.check_key(&req.key)?;
        if req.value.len() as u64 > self.limits.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: req.value.len() as u64,
                max_value_bytes: self.limits.max_value_bytes,
            });
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(KvError::InvalidArgument {
                reason: "value is provided with ignore_value".into(),
            });
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(KvError::InvalidArgument {
                reason: "lease is provided with ignore_lease".into(),
            });
        }
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(KvError::LeaseNotFound { id: req.lease });
        }
        if (req.ignore_value || req.ignore_lease) && self.latest(&req.key).is_none() {
            return Err(KvError::KeyNotFound);
        }
        Ok(())
    }

    /// Puts a key; the change takes the next revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        self.check_put(req)?;
        let revision = self.current_revision + 1;
        let resp = self.apply_put(req, revision);
        self.current_revision = revision;
        Ok(resp)
    }

    /// Deletes a key or range; takes the next revision if anything was deleted.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let revision = self.current_revision + 1;
        let resp = self.apply_delete(req, revision);
        if resp.deleted > 0 {
            self.current_revision = revision;
        }
        Ok(resp)
    }

    /// Appends a version at `revision`, keeping the one-version-per-revision invariant.
    fn push_version(&mut self, key: &[u8], version: Version) {
        let history = self.keys.entry(key.to_vec()).or_default();
        if let Some(last) = history.last() {
            assert!(
                last.revision < version.revision,
                "key {key:?} changed twice in revision {} (txn checks must prevent this)",
                version.revision
            );
        }
        history.push(version);
    }

    /// Performs a checked put at `revision` (infallible: `check_put` passed).
    fn apply_put(&mut self, req: &PutRequest, revision: i64) -> PutResponse {
        let prev = self.latest(&req.key).cloned();
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.leases.detach(p.lease, &req.key);
            }
        }
        if lease != 0 {
            self.leases.attach(lease, &req.key);
        }
        self.push_version(
            &req.key,
            Version {
                revision,
                kv: Some(kv.clone()),
            },
        );
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    /// Deletes every live key in the range at `revision`.
    fn apply_delete(&mut self, req: &DeleteRangeRequest, revision: i64) -> DeleteRangeResponse {
        let live: Vec<KeyValue> = match key_bounds(&req.key, &req.range_end) {
            None => Vec::new(),
            Some(bounds) => self
                .keys
                .range::<[u8], _>(bounds)
                .filter_map(|(_, h)| h.last().and_then(|v| v.kv.clone()))
                .collect(),
        };
        for prev in &live {
            self.delete_key(prev, revision);
        }
        DeleteRangeResponse {
            deleted: live.len() as i64,
            prev_kvs: if req.prev_kv { live } else { Vec::new() },
        }
    }

    fn delete_key(&mut self, prev: &KeyValue, revision: i64) {
        if prev.lease != 0 {
            self.leases.detach(prev.lease, &prev.key);
        }
        self.push_version(&prev.key, Version { revision, kv: None });
        let kv = KeyValue {
            key: prev.key.clone(),
            mod_revision: revision,
            ..KeyValue::default()
        };
        self.events.push(Event {
            kind: EventKind::Delete,
            kv,
            prev_kv: Some(prev.clone()),
        });
    }

    /// Runs a transaction. Compares see the store before the txn; reads at revision 0 inside it
    /// see its earlier writes; all writes share the next revision (taken only if something
    /// changed). Everything is checked before the first write, so a refused txn changes nothing.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        self.check_txn_shape(req, 1)?;
        self.check_txn_path(req)?;
        let revision = self.current_revision + 1;
        let events_before = self.events.len();
        let resp = self.apply_txn(req, revision);
        if self.events.len() > events_before {
            self.current_revision = revision;
        }
        Ok(resp)
    }

    /// Bounds and duplicate writes, independent of the store's contents.
    fn check_txn_shape(&self, req: &TxnRequest, depth: u64) -> Result<()> {
        if depth > self.limits.max_txn_depth {
            return Err(KvError::TxnTooDeep {
                depth,
                max_txn_depth: self.limits.max_txn_depth,
            });
        }
        let max = self.limits.max_txn_ops;
        for len in [req.compare.len(), req.success.len(), req.failure.len()] {
            if len as u64 > max {
                return Err(KvError::TooManyOps {
                    ops: len as u64,
                    max_txn_ops: max,
                });
            }
        }
        for c in &req.compare {
            // An empty compare key is fine (with range_end "\0" it means every key).
            if c.key.len() as u64 > self.limits.max_key_bytes {
                return Err(KvError::KeyTooLarge {
                    len: c.key.len() as u64,
                    max_key_bytes: self.limits.max_key_bytes,
                });
            }
        }
        for branch in [&req.success, &req.failure] {
            for op in branch.iter() {
                if let RequestOp::Txn(t) = op {
                    self.check_txn_shape(t, depth + 1)?;
                }
            }
            let mut puts = BTreeSet::new();
            let mut deletes = Vec::new();
            branch_writes(branch, &mut puts, &mut deletes)?;
        }
        Ok(())
    }

    /// Checks every op on the path the compares choose (evaluated before any write, exactly as
    /// `apply_txn` will evaluate them).
    fn check_txn_path(&self, req: &TxnRequest) -> Result<()> {
        let branch = if self.compares_hold(&req.compare) {
            &req.success
        } else {
            &req.failure
        };
        for op in branch {
            match op {
                RequestOp::Range(r) => {
                    self.read_revision(r.revision)?;
                }
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => self.check_txn_path(t)?,
            }
        }
        Ok(())
    }

    fn compares_hold(&self, compares: &[Compare]) -> bool {
        compares.iter().all(|c| self.compare_holds(c))
    }

    /// Evaluates a compare against the last committed revision (never the txn's own writes).
    fn compare_holds(&self, c: &Compare) -> bool {
        let kvs = self.visible(&c.key, &c.range_end, self.current_revision);
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, kv))
    }

    fn apply_txn(&mut self, req: &TxnRequest, revision: i64) -> TxnResponse {
        let succeeded = self.compares_hold(&req.compare);
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let resp = match op {
                RequestOp::Range(r) => {
                    // Revision 0 reads the txn's own writes so far.
                    let at = if r.revision <= 0 {
                        revision
                    } else {
                        r.revision
                    };
                    ResponseOp::Range(self.range_at(r, at))
                }
                RequestOp::Put(p) => ResponseOp::Put(self.apply_put(p, revision)),
                RequestOp::DeleteRange(d) => {
                    ResponseOp::DeleteRange(self.apply_delete(d, revision))
                }
                RequestOp::Txn(t) => ResponseOp::Txn(self.apply_txn(t, revision)),
            };
            responses.push(resp);
        }
        TxnResponse {
            succeeded,
            responses,
        }
    }

    /// Drops history older than `revision`: reads below it fail with `Compacted` afterwards.
    pub fn compact(&mut self, revision: i64) -> Result<()> {
        if revision <= self.compact_revision {
            return Err(KvError::Compacted {
                revision,
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.current_revision {
            return Err(KvError::FutureRevision {
                revision,
                current_revision: self.current_revision,
            });
        }
        self.keys.retain(|_, history| {
            // Keep the version visible at `revision` (unless it is a tombstone) and all newer.
            let visible = history.partition_point(|v| v.revision <= revision);
            let mut keep_from = visible.saturating_sub(1);
            if visible > 0 && history[keep_from].kv.is_none() {
                keep_from += 1;
            }
            history.drain(..keep_from);
            !history.is_empty()
        });
        let first_kept = self.events.partition_point(|e| e.revision() < revision);
        self.events.drain(..first_kept);
        self.compact_revision = revision;
        Ok(())
    }

    /// Events with revision >= `start_revision` on keys in `key..range_end`, in order: what a
    /// watcher that has seen everything before `start_revision` has missed.
    pub fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<Event>> {
        if start_revision < self.compact_revision {
            return Err(KvError::Compacted {
                revision: start_revision,
                compact_revision: self.compact_revision,
            });
        }
        let first = self
            .events
            .partition_point(|e| e.revision() < start_revision);
        Ok(self.events[first..]
            .iter()
            .filter(|e| in_range(&e.kv.key, key, range_end))
            .cloned()
            .collect())
    }

    /// Grants a lease (no revision: leases are not keys).
    pub fn lease_grant(&mut self, id: i64, ttl_secs: i64, now_ms: i64) -> Result<()> {
        self.leases
            .grant(id, ttl_secs, now_ms, self.limits.max_lease_ttl_secs)
    }

    /// Renews a lease from `now_ms`; returns its TTL.
    pub fn lease_keep_alive(&mut self, id: i64, now_ms: i64) -> Result<i64> {
        self.leases.keep_alive(id, now_ms)
    }

    /// Revokes a lease and deletes its keys, all in one revision (none if it had no keys).
    /// Returns the number of keys deleted.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64> {
        let lease = self.leases.remove(id)?;
        let revision = self.current_revision + 1;
        for key in &lease.keys {
            let prev = self.latest(key).cloned();
            let prev =
                prev.unwrap_or_else(|| panic!("lease {id} holds key {key:?} that is deleted"));
            assert_eq!(
                prev.lease, id,
                "lease {id} holds key {key:?} attached elsewhere"
            );
            self.delete_key(&prev, revision);
        }
        if !lease.keys.is_empty() {
            self.current_revision = revision;
        }
        Ok(lease.keys.len() as i64)
    }

    /// A lease's time to live at `now_ms`.
    pub fn lease_time_to_live(&self, id: i64, now_ms: i64) -> Result<LeaseTimeToLive> {
        self.leases.time_to_live(id, now_ms)
    }
}

/// Snapshot body encoding (the framing, version and checksum are `state_machine`'s).
impl MvccStore {
    pub(crate) fn encode_body(&self, w: &mut Writer) {
        w.i64(self.current_revision);
        w.i64(self.compact_revision);
        w.len(self.keys.len());
        for (key, history) in &self.keys {
            w.bytes(key);
            w.len(history.len());
            for v in history {
                w.i64(v.revision);
                put_opt_kv(w, &v.kv);
            }
        }
        w.len(self.events.len());
        for e in &self.events {
            w.bool(e.kind == EventKind::Delete);
            put_kv(w, &e.kv);
            put_opt_kv(w, &e.prev_kv);
        }
        w.len(self.leases.len());
        for lease in self.leases.iter() {
            w.i64(lease.id);
            w.i64(lease.ttl_secs);
            w.i64(lease.expiry_ms);
            w.len(lease.keys.len());
            for key in &lease.keys {
                w.bytes(key);
            }
        }
    }

    /// Decodes a snapshot body and checks the invariants apply relies on, so a bad snapshot
    /// is refused here rather than tripping an assertion later.
    pub(crate) fn decode_body(r: &mut Reader<'_>, limits: Limits) -> Result<MvccStore> {
        let bad = |reason: String| KvError::CorruptedSnapshot { reason };
        let mut store = MvccStore::new(limits);
        store.current_revision = r.i64("current revision")?;
        store.compact_revision = r.i64("compact revision")?;
        // Revisions near i64::MAX would overflow on the next write: no honest store gets there.
        let revisions_ok = (1..i64::MAX / 2).contains(&store.current_revision)
            && store.compact_revision <= store.current_revision;
        if !revisions_ok {
            return Err(bad(format!(
                "current revision {} / compact revision {}",
                store.current_revision, store.compact_revision
            )));
        }
        let nkeys = r.count("keys")?;
        for _ in 0..nkeys {
            let key = r.bytes("key")?;
            let nversions = r.count("versions")?;
            let mut history: Vec<Version> = Vec::new();
            for _ in 0..nversions {
                let revision = r.i64("version revision")?;
                let kv = get_opt_kv(r)?;
                let last = history.last().map_or(0, |v| v.revision);
                let consistent = match &kv {
                    Some(kv) => kv.key == key && kv.mod_revision == revision,
                    None => true,
                };
                if revision <= last || revision > store.current_revision || !consistent {
                    return Err(bad(format!(
                        "history of key {key:?} at revision {revision}"
                    )));
                }
                history.push(Version { revision, kv });
            }
            if history.is_empty() {
                return Err(bad(format!("key {key:?} has no history")));
            }
            if store.keys.insert(key.clone(), history).is_some() {
                return Err(bad(format!("key {key:?} repeated")));
            }
        }
        let nevents = r.count("events")?;
        for _ in 0..nevents {
            let kind = if r.bool("event kind")? {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            let event = Event {
                kind,
                kv: get_kv(r)?,
                prev_kv: get_opt_kv(r)?,
            };
            let last = store.events.last().map_or(0, Event::revision);
            if event.revision() < last || event.revision() > store.current_revision {
                return Err(bad(format!(
                    "event out of order at revision {}",
                    event.revision()
                )));
            }
            store.events.push(event);
        }
        let nleases = r.count("leases")?;
        for _ in 0..nleases {
            let id = r.i64("lease id")?;
            let ttl_secs = r.i64("lease ttl")?;
            let expiry_ms = r.i64("lease expiry")?;
            let nkeys = r.count("lease keys")?;
            let mut keys = BTreeSet::new();
            for _ in 0..nkeys {
                let key = r.bytes("lease key")?;
                if !matches!(store.latest(&key), Some(kv) if kv.lease == id) {
                    return Err(bad(format!(
                        "lease {id} holds key {key:?} not attached to it"
                    )));
                }
                keys.insert(key);
            }
            store
                .leases
                .insert_restored(Lease {
                    id,
                    ttl_secs,
                    expiry_ms,
                    keys,
                })
                .map_err(bad)?;
        }
        for (key, history) in &store.keys {
            if let Some(kv) = history.last().and_then(|v| v.kv.as_ref()) {
                let held = kv.lease == 0
                    || store
                        .leases
                        .get(kv.lease)
                        .is_some_and(|l| l.keys.contains(key));
                if !held {
                    return Err(bad(format!(
                        "key {key:?} attached to lease {} that lacks it",
                        kv.lease
                    )));
                }
            }
        }
        Ok(store)
    }
}

/// Collects a branch's puts and deletes (a nested txn's two branches both count) and refuses a
/// key put twice or put inside a deleted range, as etcd does.
fn branch_writes(
    ops: &[RequestOp],
    puts: &mut BTreeSet<Vec<u8>>,
    deletes: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    for op in ops {
        match op {
            RequestOp::Put(p) => {
                let deleted = deletes.iter().any(|(k, end)| in_range(&p.key, k, end));
                if deleted || !puts.insert(p.key.clone()) {
                    return Err(KvError::DuplicateKey { key: p.key.clone() });
                }
            }
            RequestOp::DeleteRange(d) => {
                if let Some(key) = puts.iter().find(|k| in_range(k, &d.key, &d.range_end)) {
                    return Err(KvError::DuplicateKey { key: key.clone() });
                }
                deletes.push((d.key.clone(), d.range_end.clone()));
            }
            RequestOp::Range(_) => {}
            RequestOp::Txn(t) => {
                // Only one nested branch runs, so each is checked against the outer writes
                // separately (not against the other branch), then both join the outer sets.
                let outer_deletes = deletes.len();
                let mut nested_puts = BTreeSet::new();
                let mut nested_deletes = Vec::new();
                for nested in [&t.success, &t.failure] {
                    let mut p = puts.clone();
                    let mut d = deletes.clone();
                    branch_writes(nested, &mut p, &mut d)?;
                    nested_puts.extend(p);
                    nested_deletes.extend(d.into_iter().skip(outer_deletes));
                }
                puts.extend(nested_puts);
                deletes.extend(nested_deletes);
            }
        }
    }
    Ok(())
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::Greater => ord == Ordering::Greater,
    }
}

/// The live version of a key as of `revision`.
fn version_at(history: &[Version], revision: i64) -> Option<&KeyValue> {
    let n = history.partition_point(|v| v.revision <= revision);
    if n == 0 {
        return None;
    }
    history[n - 1].kv.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut MvccStore, key: &str, value: &str) -> PutResponse {
        s.put(&PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    }

    fn get_at(s: &MvccStore, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let r = s.range(&RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        })?;
        Ok(r.kvs.into_iter().next())
    }

    fn range(s: &MvccStore, key: &[u8], range_end: &[u8]) -> Vec<Vec<u8>> {
        let req = RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        };
        s.range(&req)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    fn del(s: &mut MvccStore, key: &str) -> DeleteRangeResponse {
        s.delete_range(&DeleteRangeRequest {
            key: key.into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    }

    fn keys(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_fresh_store_is_at_revision_one_and_each_put_takes_the_next() {
        let mut s = MvccStore::default();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(put(&mut s, "a", "1").prev_kv, None);
        assert_eq!(s.current_revision(), 2);
        let prev = put(&mut s, "a", "2").prev_kv.unwrap();
        assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"1"[..], 2));
        let kv = get_at(&s, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    }

    #[test]
    fn version_and_create_revision_restart_after_a_delete() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1");
        put(&mut s, "a", "2");
        let d = del(&mut s, "a");
        assert_eq!(d.deleted, 1);
        assert_eq!(d.prev_kvs[0].version, 2);
        assert_eq!(s.current_revision(), 4);
        assert_eq!(get_at(&s, "a", 0).unwrap(), None);
        put(&mut s, "a", "3");
        let kv = get_at(&s, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn deleting_nothing_takes_no_revision() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1");
        assert_eq!(del(&mut s, "zzz").deleted, 0);
        assert_eq!(s.current_revision(), 2);
    }

    #[test]
    fn a_range_at_an_old_revision_sees_the_store_as_it_was() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1"); // 2
        put(&mut s, "b", "1"); // 3
        put(&mut s, "a", "2"); // 4
        del(&mut s, "b"); // 5
        assert_eq!(get_at(&s, "a", 2).unwrap().unwrap().value, b"1");
        assert_eq!(get_at(&s, "a", 4).unwrap().unwrap().value, b"2");
        assert_eq!(get_at(&s, "b", 1).unwrap(), None);
        assert!(get_at(&s, "b", 4).unwrap().is_some());
        assert_eq!(get_at(&s, "b", 5).unwrap(), None);
        assert_eq!(
            get_at(&s, "a", 6),
            Err(KvError::FutureRevision {
                revision: 6,
                current_revision: 5
            })
        );
    }

    #[test]
    fn compaction_makes_older_revisions_unreadable_and_keeps_the_compact_revision() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1"); // 2
        put(&mut s, "a", "2"); // 3
        put(&mut s, "b", "1"); // 4
        del(&mut s, "b"); // 5
        put(&mut s, "a", "3"); // 6
        s.compact(4).unwrap();
        assert_eq!(
            get_at(&s, "a", 3),
            Err(KvError::Compacted {
                revision: 3,
                compact_revision: 4
            })
        );
        assert_eq!(get_at(&s, "a", 4).unwrap().unwrap().value, b"2");
        assert!(get_at(&s, "b", 4).unwrap().is_some());
        assert_eq!(get_at(&s, "a", 6).unwrap().unwrap().value, b"3");
        assert_eq!(
            s.compact(4),
            Err(KvError::Compacted {
                revision: 4,
                compact_revision: 4
            })
        );
        assert_eq!(
            s.compact(7),
            Err(KvError::FutureRevision {
                revision: 7,
                current_revision: 6
            })
        );
        s.compact(6).unwrap();
        // The tombstone of "b" and everything of it are gone; "a" keeps only its live version.
        assert!(!s.keys.contains_key(&b"b"[..]));
        assert_eq!(s.keys[&b"a"[..]].len(), 1);
        assert_eq!(get_at(&s, "a", 0).unwrap().unwrap().version, 3);
    }

    #[test]
    fn range_end_follows_etcd_conventions() {
        let mut s = MvccStore::default();
        for k in ["a", "ab", "abc", "b", "c"] {
            put(&mut s, k, "v");
        }
        assert_eq!(range(&s, b"ab", b""), keys(&["ab"]));
        assert_eq!(range(&s, b"ab", b"\0"), keys(&["ab", "abc", "b", "c"]));
        assert_eq!(range(&s, b"\0", b"\0"), keys(&["a", "ab", "abc", "b", "c"]));
        assert_eq!(
            range(&s, b"a", &prefix_range_end(b"a")),
            keys(&["a", "ab", "abc"])
        );
        assert_eq!(range(&s, b"ab", b"b"), keys(&["ab", "abc"]));
        assert_eq!(range(&s, b"b", b"a"), Vec::<Vec<u8>>::new());
        assert_eq!(range(&s, b"b", b"b"), Vec::<Vec<u8>>::new());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn limit_sets_more_and_count_counts_the_whole_range() {
        let mut s = MvccStore::default();
        for k in ["a", "b", "c", "d"] {
            put(&mut s, k, "v");
        }
        let req = RangeRequest {
            key: "a".into(),
            range_end: "\0".into(),
            limit: 2,
            ..Default::default()
        };
        let r = s.range(&req).unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 4));
        let r = s
            .range(&RangeRequest {
                limit: 4,
                ..req.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
        let r = s
            .range(&RangeRequest {
                count_only: true,
                ..req.clone()
            })
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 4));
        let r = s
            .range(&RangeRequest {
                keys_only: true,
                ..req
            })
            .unwrap();
        assert!(r
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1));
    }

    #[test]
    fn sort_orders_by_the_target_then_limits() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "3"); // 2
        put(&mut s, "b", "1"); // 3
        put(&mut s, "c", "2"); // 4
        put(&mut s, "a", "4"); // 5
        let all = RangeRequest {
            key: "a".into(),
            range_end: "\0".into(),
            ..Default::default()
        };
        let sorted = |t, o, limit| {
            let req = RangeRequest {
                sort_target: t,
                sort_order: o,
                limit,
                ..all.clone()
            };
            let r = s.range(&req).unwrap();
            (
                r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>(),
                r.more,
            )
        };
        assert_eq!(
            sorted(SortTarget::Mod, SortOrder::Descend, 0).0,
            keys(&["a", "c", "b"])
        );
        assert_eq!(
            sorted(SortTarget::Mod, SortOrder::None, 0).0,
            keys(&["b", "c", "a"])
        );
        assert_eq!(
            sorted(SortTarget::Value, SortOrder::Ascend, 2),
            (keys(&["b", "c"]), true)
        );
        assert_eq!(
            sorted(SortTarget::Key, SortOrder::Descend, 1),
            (keys(&["c"]), true)
        );
        assert_eq!(
            sorted(SortTarget::Create, SortOrder::Ascend, 0).0,
            keys(&["a", "b", "c"])
        );
        assert_eq!(
            sorted(SortTarget::Version, SortOrder::Descend, 1).0,
            keys(&["a"])
        );
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
        Compare {
            key: key.into(),
            range_end: Vec::new(),
            target,
            result,
        }
    }

    fn put_op(key: &str, value: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    #[test]
    fn create_revision_zero_means_the_key_is_missing() {
        let mut s = MvccStore::default();
        let create_if_absent = TxnRequest {
            compare: vec![cmp("lock", CompareTarget::Create(0), CompareResult::Equal)],
            success: vec![put_op("lock", "me")],
            failure: vec![RequestOp::Range(RangeRequest {
                key: "lock".into(),
                ..Default::default()
            })],
        };
        let r = s.txn(&create_if_absent).unwrap();
        assert!(r.succeeded);
        assert_eq!(s.current_revision(), 2);
        let r = s.txn(&create_if_absent).unwrap();
        assert!(!r.succeeded);
        let ResponseOp::Range(got) = &r.responses[0] else {
            panic!("expected a range")
        };
        assert_eq!(got.kvs[0].value, b"me");
        assert_eq!(
            s.current_revision(),
            2,
            "a txn without writes takes no revision"
        );
    }

    #[test]
    fn compares_cover_every_target_and_relation() {
        let mut s = MvccStore::default();
        put(&mut s, "k", "m"); // 2
        put(&mut s, "k", "m"); // 3: version 2
        let holds = |s: &mut MvccStore, c: Compare| {
            s.txn(&TxnRequest {
                compare: vec![c],
                ..Default::default()
            })
            .unwrap()
            .succeeded
        };
        use CompareResult::*;
        use CompareTarget::*;
        assert!(holds(&mut s, cmp("k", Version(2), Equal)));
        assert!(holds(&mut s, cmp("k", Version(1), Greater)));
        assert!(holds(&mut s, cmp("k", Create(3), Less)));
        assert!(holds(&mut s, cmp("k", Mod(3), Equal)));
        assert!(holds(&mut s, cmp("k", Value(b"a".to_vec()), Greater)));
        assert!(holds(&mut s, cmp("k", Value(b"m".to_vec()), Equal)));
        assert!(holds(&mut s, cmp("k", Lease(0), Equal)));
        assert!(!holds(&mut s, cmp("k", Mod(3), NotEqual)));
        assert!(!holds(&mut s, cmp("missing", Value(Vec::new()), Equal)));
        assert!(!holds(&mut s, cmp("missing", Value(Vec::new()), NotEqual)));
        assert!(holds(&mut s, cmp("missing", Version(0), Equal)));
        // A range compare holds only if every key in the range satisfies it.
        put(&mut s, "k2", "m"); // version 1
        let mut c = cmp("k", Version(0), Greater);
        c.range_end = prefix_range_end(b"k");
        assert!(holds(&mut s, c.clone()));
        c.target = Version(1);
        assert!(!holds(&mut s, c));
    }

    #[test]
    fn a_txn_is_one_revision_and_reads_its_own_writes() {
        let mut s = MvccStore::default();
        put(&mut s, "old", "x"); // 2
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                put_op("a", "1"),
                put_op("b", "2"),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: "old".into(),
                    ..Default::default()
                }),
                RequestOp::Range(RangeRequest {
                    key: "a".into(),
                    range_end: "\0".into(),
                    ..Default::default()
                }),
                RequestOp::Txn(TxnRequest {
                    success: vec![put_op("c", "3")],
                    ..Default::default()
                }),
            ],
            failure: vec![],
        };
        let r = s.txn(&t).unwrap();
        assert_eq!(s.current_revision(), 3);
        let ResponseOp::Range(got) = &r.responses[3] else {
            panic!("expected a range")
        };
        assert_eq!(
            got.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            keys(&["a", "b"])
        );
        for k in ["a", "b", "c"] {
            assert_eq!(get_at(&s, k, 0).unwrap().unwrap().mod_revision, 3);
        }
        assert_eq!(get_at(&s, "old", 0).unwrap(), None);
        let events = s.events_since(3, b"\0", b"\0").unwrap();
        let order: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.clone())).collect();
        assert_eq!(
            order,
            vec![
                (EventKind::Put, b"a".to_vec()),
                (EventKind::Put, b"b".to_vec()),
                (EventKind::Delete, b"old".to_vec()),
                (EventKind::Put, b"c".to_vec()),
            ]
        );
    }

    #[test]
    fn a_refused_txn_changes_nothing() {
        let mut s = MvccStore::new(Limits {
            max_txn_ops: 2,
            ..Limits::default()
        });
        put(&mut s, "a", "1");
        let before = s.clone();
        let dup = TxnRequest {
            success: vec![put_op("x", "1"), put_op("x", "2")],
            ..Default::default()
        };
        assert_eq!(
            s.txn(&dup),
            Err(KvError::DuplicateKey { key: b"x".to_vec() })
        );
        let put_in_deleted = TxnRequest {
            success: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    range_end: "z".into(),
                    ..Default::default()
                }),
                RequestOp::Txn(TxnRequest {
                    failure: vec![put_op("m", "1")],
                    ..Default::default()
                }),
            ],
            ..Default::default()
        };
        assert_eq!(
            s.txn(&put_in_deleted),
            Err(KvError::DuplicateKey { key: b"m".to_vec() })
        );
        let too_many = TxnRequest {
            failure: vec![put_op("x", "1"), put_op("y", "1"), put_op("z", "1")],
            ..Default::default()
        };
        assert_eq!(
            s.txn(&too_many),
            Err(KvError::TooManyOps {
                ops: 3,
                max_txn_ops: 2
            })
        );
        let bad_lease = TxnRequest {
            success: vec![
                put_op("x", "1"),
                RequestOp::Put(PutRequest {
                    key: "y".into(),
                    lease: 9,
                    ..Default::default()
                }),
            ],
            ..Default::default()
        };
        assert_eq!(s.txn(&bad_lease), Err(KvError::LeaseNotFound { id: 9 }));
        assert_eq!(s, before);
    }

    #[test]
    fn a_nested_txn_may_write_the_same_key_in_its_two_branches() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1"); // 2
        let delete_a = RequestOp::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        });
        let nested = TxnRequest {
            compare: vec![cmp("a", CompareTarget::Version(1), CompareResult::Equal)],
            success: vec![delete_a],
            failure: vec![put_op("a", "2")],
        };
        let outer = TxnRequest {
            success: vec![put_op("b", "1"), RequestOp::Txn(nested)],
            ..Default::default()
        };
        let r = s.txn(&outer).unwrap();
        let ResponseOp::Txn(inner) = &r.responses[1] else {
            panic!("expected a txn")
        };
        assert!(inner.succeeded);
        assert_eq!(get_at(&s, "a", 0).unwrap(), None);
        assert_eq!(get_at(&s, "b", 0).unwrap().unwrap().mod_revision, 3);
        assert_eq!(s.current_revision(), 3);
    }

    #[test]
    fn bounds_are_enforced_and_named() {
        let mut s = MvccStore::new(Limits {
            max_key_bytes: 3,
            max_value_bytes: 4,
            ..Limits::default()
        });
        let too_long_key = PutRequest {
            key: "abcd".into(),
            ..Default::default()
        };
        assert_eq!(
            s.put(&too_long_key),
            Err(KvError::KeyTooLarge {
                len: 4,
                max_key_bytes: 3
            })
        );
        let too_long_value = PutRequest {
            key: "a".into(),
            value: "12345".into(),
            ..Default::default()
        };
        let err = s.put(&too_long_value).unwrap_err();
        assert_eq!(
            err,
            KvError::ValueTooLarge {
                len: 5,
                max_value_bytes: 4
            }
        );
        assert!(err.to_string().contains("max_value_bytes = 4"));
        assert_eq!(s.put(&PutRequest::default()), Err(KvError::EmptyKey));
        assert_eq!(s.current_revision(), 1);
    }

    #[test]
    fn ignore_value_and_ignore_lease_keep_the_current_ones() {
        let mut s = MvccStore::default();
        let keep = PutRequest {
            key: "a".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(s.put(&keep), Err(KvError::KeyNotFound));
        s.lease_grant(7, 10, 0).unwrap();
        s.put(&PutRequest {
            key: "a".into(),
            value: "v".into(),
            lease: 7,
            ..Default::default()
        })
        .unwrap();
        s.put(&PutRequest {
            ignore_lease: true,
            ..keep.clone()
        })
        .unwrap();
        let kv = get_at(&s, "a", 0).unwrap().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"v"[..], 7, 2)
        );
        let bad = PutRequest {
            value: "x".into(),
            ..keep
        };
        assert!(matches!(s.put(&bad), Err(KvError::InvalidArgument { .. })));
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_in_one_revision() {
        let mut s = MvccStore::default();
        s.lease_grant(7, 10, 0).unwrap();
        for k in ["a", "b", "c"] {
            s.put(&PutRequest {
                key: k.into(),
                value: "v".into(),
                lease: 7,
                ..Default::default()
            })
            .unwrap();
        }
        // Re-putting "c" without the lease detaches it.
        put(&mut s, "c", "w"); // 5
        assert_eq!(s.lease_time_to_live(7, 0).unwrap().keys, keys(&["a", "b"]));
        assert_eq!(
            s.put(&PutRequest {
                key: "d".into(),
                lease: 8,
                ..Default::default()
            }),
            Err(KvError::LeaseNotFound { id: 8 })
        );
        assert_eq!(s.lease_revoke(7).unwrap(), 2);
        assert_eq!(s.current_revision(), 6);
        assert_eq!(range(&s, b"\0", b"\0"), keys(&["c"]));
        let events = s.events_since(6, b"\0", b"\0").unwrap();
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.revision() == 6));
        assert_eq!(s.lease_revoke(7), Err(KvError::LeaseNotFound { id: 7 }));
        s.lease_grant(8, 10, 0).unwrap();
        assert_eq!(s.lease_revoke(8).unwrap(), 0);
        assert_eq!(
            s.current_revision(),
            6,
            "revoking a lease without keys takes no revision"
        );
    }

    #[test]
    fn events_since_replays_changes_in_a_range_with_prev_kv() {
        let mut s = MvccStore::default();
        put(&mut s, "a", "1"); // 2
        put(&mut s, "b", "1"); // 3
        put(&mut s, "a", "2"); // 4
        del(&mut s, "a"); // 5
        let events = s.events_since(3, b"a", b"").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::Put);
        assert_eq!(events[0].kv.value, b"2");
        assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"1");
        assert_eq!(events[1].kind, EventKind::Delete);
        assert_eq!((events[1].kv.mod_revision, events[1].kv.version), (5, 0));
        assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"2");
        assert_eq!(s.events_since(0, b"\0", b"\0").unwrap().len(), 4);
        assert_eq!(s.events_since(6, b"\0", b"\0").unwrap(), Vec::new());
        s.compact(4).unwrap();
        assert_eq!(
            s.events_since(3, b"a", b""),
            Err(KvError::Compacted {
                revision: 3,
                compact_revision: 4
            })
        );
        assert_eq!(s.events_since(4, b"a", b"").unwrap().len(), 2);
    }
}
