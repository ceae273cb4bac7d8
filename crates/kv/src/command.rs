//! The replicated command, its response, and their binary encoding.
//!
//! # Encoding (version 1)
//! Every encoded command starts with the version byte, then a tag byte naming the variant,
//! then the variant's fields in declaration order. Integers are fixed-width little-endian
//! (`i64`/`u64` 8 bytes, `u32` 4 bytes); `bool` is one byte that must be 0 or 1; byte strings
//! and lists are a `u32` length/count followed by the items; an `Option` is a `bool` then the
//! value if present. A response is the version byte, the revision (`i64`), then tag 0 and the
//! body or tag 1 and the error.
//!
//! Decoding never trusts a length: a byte string longer than what is left is refused before
//! anything is allocated, lists grow item by item (each item is at least one byte, so a list
//! cannot claim more items than bytes left), txns nest at most [`MAX_DECODE_TXN_DEPTH`] deep,
//! and trailing bytes are an error. The semantic bounds (key, value, txn ops) are the store's,
//! which refuses with an error naming the bound.

use crate::error::{KvError, Result};
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};

/// The encoding version this build writes and reads.
pub const ENCODING_VERSION: u8 = 1;

/// Deepest txn nesting the decoder accepts (bounds its recursion on hostile input).
pub const MAX_DECODE_TXN_DEPTH: u32 = 32;

/// A write to the KV, as replicated through Raft. Reads are not commands: they are served
/// locally after a ReadIndex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Put one key.
    Put(PutRequest),
    /// Delete a key or range.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Drop history older than `revision`.
    Compact {
        /// The new compact revision.
        revision: i64,
    },
    /// Grant a lease; `now_ms` is the leader's clock at propose time.
    LeaseGrant {
        /// Positive id (the proposer picks one when the client asked for 0).
        id: i64,
        /// TTL in seconds.
        ttl_secs: i64,
        /// Leader's time, milliseconds.
        now_ms: i64,
    },
    /// Revoke a lease and delete its keys (also how the leader expires leases).
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// Renew a lease from `now_ms`.
    LeaseKeepAlive {
        /// The lease.
        id: i64,
        /// Leader's time, milliseconds.
        now_ms: i64,
    },
}

/// What a successful command returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Answer to [`Command::Put`].
    Put(PutResponse),
    /// Answer to [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Answer to [`Command::Txn`].
    Txn(TxnResponse),
    /// Answer to [`Command::Compact`].
    Compact,
    /// Answer to [`Command::LeaseGrant`].
    LeaseGrant {
        /// The lease id.
        id: i64,
        /// Its TTL in seconds.
        ttl_secs: i64,
    },
    /// Answer to [`Command::LeaseRevoke`].
    LeaseRevoke {
        /// Keys deleted with the lease.
        deleted: i64,
    },
    /// Answer to [`Command::LeaseKeepAlive`].
    LeaseKeepAlive {
        /// The lease id.
        id: i64,
        /// Its TTL in seconds.
        ttl_secs: i64,
    },
}

/// The result of applying one entry: the store's revision after it, and the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Current revision after the entry (etcd's response header revision).
    pub revision: i64,
    /// The answer or the refusal.
    pub result: Result<ResponseBody>,
}

// ---- primitives ----

/// Appends primitives to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn len(&mut self, n: usize) {
        let n = u32::try_from(n).expect("a field longer than 4 GiB cannot be encoded");
        self.u32(n);
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.buf.extend_from_slice(v);
    }
}

/// Reads primitives from a buffer, refusing anything that does not fit.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) fn malformed(reason: impl Into<String>) -> KvError {
    KvError::Malformed {
        reason: reason.into(),
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(malformed(format!(
                "{what}: needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn bool(&mut self, what: &str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(format!("{what}: bool byte {b}"))),
        }
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    /// A list count; items are at least one byte, so more items than bytes left is a lie.
    pub(crate) fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n > self.remaining() {
            return Err(malformed(format!(
                "{what}: {n} items but {} bytes left",
                self.remaining()
            )));
        }
        Ok(n)
    }
    pub(crate) fn finish(&self, what: &str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(malformed(format!(
                "{what}: {} trailing bytes",
                self.remaining()
            )));
        }
        Ok(())
    }
}

fn version(r: &mut Reader<'_>) -> Result<()> {
    let v = r.u8("version")?;
    if v != ENCODING_VERSION {
        return Err(KvError::UnsupportedVersion {
            version: v as u32,
            supported: ENCODING_VERSION as u32,
        });
    }
    Ok(())
}

// ---- commands ----

impl Command {
    /// Encodes the command.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ENCODING_VERSION);
        match self {
            Command::Put(p) => {
                w.u8(1);
                put_put(&mut w, p);
            }
            Command::DeleteRange(d) => {
                w.u8(2);
                put_delete(&mut w, d);
            }
            Command::Txn(t) => {
                w.u8(3);
                put_txn(&mut w, t);
            }
            Command::Compact { revision } => {
                w.u8(4);
                w.i64(*revision);
            }
            Command::LeaseGrant {
                id,
                ttl_secs,
                now_ms,
            } => {
                w.u8(5);
                w.i64(*id);
                w.i64(*ttl_secs);
                w.i64(*now_ms);
            }
            Command::LeaseRevoke { id } => {
                w.u8(6);
                w.i64(*id);
            }
            Command::LeaseKeepAlive { id, now_ms } => {
                w.u8(7);
                w.i64(*id);
                w.i64(*now_ms);
            }
        }
        w.buf
    }

    /// Decodes a command; any malformed input is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Command> {
        let mut r = Reader::new(data);
        version(&mut r)?;
        let cmd = match r.u8("command tag")? {
            1 => Command::Put(get_put(&mut r)?),
            2 => Command::DeleteRange(get_delete(&mut r)?),
            3 => Command::Txn(get_txn(&mut r, 1)?),
            4 => Command::Compact {
                revision: r.i64("compact revision")?,
            },
            5 => Command::LeaseGrant {
                id: r.i64("lease id")?,
                ttl_secs: r.i64("lease ttl")?,
                now_ms: r.i64("now_ms")?,
            },
            6 => Command::LeaseRevoke {
                id: r.i64("lease id")?,
            },
            7 => Command::LeaseKeepAlive {
                id: r.i64("lease id")?,
                now_ms: r.i64("now_ms")?,
            },
            t => return Err(malformed(format!("unknown command tag {t}"))),
        };
        r.finish("command")?;
        Ok(cmd)
    }
}

fn put_put(w: &mut Writer, p: &PutRequest) {
    w.bytes(&p.key);
    w.bytes(&p.value);
    w.i64(p.lease);
    w.bool(p.prev_kv);
    w.bool(p.ignore_value);
    w.bool(p.ignore_lease);
}

fn get_put(r: &mut Reader<'_>) -> Result<PutRequest> {
    Ok(PutRequest {
        key: r.bytes("put key")?,
        value: r.bytes("put value")?,
        lease: r.i64("put lease")?,
        prev_kv: r.bool("put prev_kv")?,
        ignore_value: r.bool("put ignore_value")?,
        ignore_lease: r.bool("put ignore_lease")?,
    })
}

fn put_delete(w: &mut Writer, d: &DeleteRangeRequest) {
    w.bytes(&d.key);
    w.bytes(&d.range_end);
    w.bool(d.prev_kv);
}

fn get_delete(r: &mut Reader<'_>) -> Result<DeleteRangeRequest> {
    Ok(DeleteRangeRequest {
        key: r.bytes("delete key")?,
        range_end: r.bytes("delete range_end")?,
        prev_kv: r.bool("delete prev_kv")?,
    })
}

fn put_range(w: &mut Writer, q: &RangeRequest) {
    w.bytes(&q.key);
    w.bytes(&q.range_end);
    w.i64(q.revision);
    w.u64(q.limit);
    w.bool(q.keys_only);
    w.bool(q.count_only);
    w.u8(match q.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    w.u8(match q.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
}

fn get_range(r: &mut Reader<'_>) -> Result<RangeRequest> {
    Ok(RangeRequest {
        key: r.bytes("range key")?,
        range_end: r.bytes("range range_end")?,
        revision: r.i64("range revision")?,
        limit: r.u64("range limit")?,
        keys_only: r.bool("range keys_only")?,
        count_only: r.bool("range count_only")?,
        sort_target: match r.u8("sort target")? {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            t => return Err(malformed(format!("unknown sort target {t}"))),
        },
        sort_order: match r.u8("sort order")? {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            o => return Err(malformed(format!("unknown sort order {o}"))),
        },
    })
}

fn put_compare(w: &mut Writer, c: &Compare) {
    w.bytes(&c.key);
    w.bytes(&c.range_end);
    match &c.target {
        CompareTarget::Version(v) => {
            w.u8(0);
            w.i64(*v);
        }
        CompareTarget::Create(v) => {
            w.u8(1);
            w.i64(*v);
        }
        CompareTarget::Mod(v) => {
            w.u8(2);
            w.i64(*v);
        }
        CompareTarget::Value(v) => {
            w.u8(3);
            w.bytes(v);
        }
        CompareTarget::Lease(v) => {
            w.u8(4);
            w.i64(*v);
        }
    }
    w.u8(match c.result {
        CompareResult::Equal => 0,
        CompareResult::NotEqual => 1,
        CompareResult::Less => 2,
        CompareResult::Greater => 3,
    });
}

fn get_compare(r: &mut Reader<'_>) -> Result<Compare> {
    let key = r.bytes("compare key")?;
    let range_end = r.bytes("compare range_end")?;
    let target = match r.u8("compare target")? {
        0 => CompareTarget::Version(r.i64("compare operand")?),
        1 => CompareTarget::Create(r.i64("compare operand")?),
        2 => CompareTarget::Mod(r.i64("compare operand")?),
        3 => CompareTarget::Value(r.bytes("compare operand")?),
        4 => CompareTarget::Lease(r.i64("compare operand")?),
        t => return Err(malformed(format!("unknown compare target {t}"))),
    };
    let result = match r.u8("compare result")? {
        0 => CompareResult::Equal,
        1 => CompareResult::NotEqual,
        2 => CompareResult::Less,
        3 => CompareResult::Greater,
        x => return Err(malformed(format!("unknown compare result {x}"))),
    };
    Ok(Compare {
        key,
        range_end,
        target,
        result,
    })
}

fn put_ops(w: &mut Writer, ops: &[RequestOp]) {
    w.len(ops.len());
    for op in ops {
        match op {
            RequestOp::Range(q) => {
                w.u8(0);
                put_range(w, q);
            }
            RequestOp::Put(p) => {
                w.u8(1);
                put_put(w, p);
            }
            RequestOp::DeleteRange(d) => {
                w.u8(2);
                put_delete(w, d);
            }
            RequestOp::Txn(t) => {
                w.u8(3);
                put_txn(w, t);
            }
        }
    }
}

fn get_ops(r: &mut Reader<'_>, depth: u32) -> Result<Vec<RequestOp>> {
    let n = r.count("txn ops")?;
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(match r.u8("op tag")? {
            0 => RequestOp::Range(get_range(r)?),
            1 => RequestOp::Put(get_put(r)?),
            2 => RequestOp::DeleteRange(get_delete(r)?),
            3 => RequestOp::Txn(get_txn(r, depth + 1)?),
            t => return Err(malformed(format!("unknown op tag {t}"))),
        });
    }
    Ok(ops)
}

fn put_txn(w: &mut Writer, t: &TxnRequest) {
    w.len(t.compare.len());
    for c in &t.compare {
        put_compare(w, c);
    }
    put_ops(w, &t.success);
    put_ops(w, &t.failure);
}

fn get_txn(r: &mut Reader<'_>, depth: u32) -> Result<TxnRequest> {
    if depth > MAX_DECODE_TXN_DEPTH {
        return Err(malformed(format!(
            "txn nested deeper than {MAX_DECODE_TXN_DEPTH}"
        )));
    }
    let n = r.count("txn compares")?;
    let mut compare = Vec::new();
    for _ in 0..n {
        compare.push(get_compare(r)?);
    }
    let success = get_ops(r, depth)?;
    let failure = get_ops(r, depth)?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

// ---- responses ----

pub(crate) fn put_kv(w: &mut Writer, kv: &KeyValue) {
    w.bytes(&kv.key);
    w.i64(kv.create_revision);
    w.i64(kv.mod_revision);
    w.i64(kv.version);
    w.bytes(&kv.value);
    w.i64(kv.lease);
}

pub(crate) fn get_kv(r: &mut Reader<'_>) -> Result<KeyValue> {
    Ok(KeyValue {
        key: r.bytes("kv key")?,
        create_revision: r.i64("kv create_revision")?,
        mod_revision: r.i64("kv mod_revision")?,
        version: r.i64("kv version")?,
        value: r.bytes("kv value")?,
        lease: r.i64("kv lease")?,
    })
}

pub(crate) fn put_opt_kv(w: &mut Writer, kv: &Option<KeyValue>) {
    w.bool(kv.is_some());
    if let Some(kv) = kv {
        put_kv(w, kv);
    }
}

pub(crate) fn get_opt_kv(r: &mut Reader<'_>) -> Result<Option<KeyValue>> {
    Ok(if r.bool("kv present")? {
        Some(get_kv(r)?)
    } else {
        None
    })
}

fn put_kvs(w: &mut Writer, kvs: &[KeyValue]) {
    w.len(kvs.len());
    for kv in kvs {
        put_kv(w, kv);
    }
}

fn get_kvs(r: &mut Reader<'_>) -> Result<Vec<KeyValue>> {
    let n = r.count("kvs")?;
    let mut kvs = Vec::new();
    for _ in 0..n {
        kvs.push(get_kv(r)?);
    }
    Ok(kvs)
}

fn put_txn_resp(w: &mut Writer, t: &TxnResponse) {
    w.bool(t.succeeded);
    w.len(t.responses.len());
    for op in &t.responses {
        match op {
            ResponseOp::Range(q) => {
                w.u8(0);
                put_kvs(w, &q.kvs);
                w.bool(q.more);
                w.i64(q.count);
            }
            ResponseOp::Put(p) => {
                w.u8(1);
                put_opt_kv(w, &p.prev_kv);
            }
            ResponseOp::DeleteRange(d) => {
                w.u8(2);
                w.i64(d.deleted);
                put_kvs(w, &d.prev_kvs);
            }
            ResponseOp::Txn(t) => {
                w.u8(3);
                put_txn_resp(w, t);
            }
        }
    }
}

fn get_txn_resp(r: &mut Reader<'_>, depth: u32) -> Result<TxnResponse> {
    if depth > MAX_DECODE_TXN_DEPTH {
        return Err(malformed(format!(
            "txn response nested deeper than {MAX_DECODE_TXN_DEPTH}"
        )));
    }
    let succeeded = r.bool("txn succeeded")?;
    let n = r.count("txn responses")?;
    let mut responses = Vec::new();
    for _ in 0..n {
        responses.push(match r.u8("response op tag")? {
            0 => ResponseOp::Range(RangeResponse {
                kvs: get_kvs(r)?,
                more: r.bool("range more")?,
                count: r.i64("range count")?,
            }),
            1 => ResponseOp::Put(PutResponse {
                prev_kv: get_opt_kv(r)?,
            }),
            2 => ResponseOp::DeleteRange(DeleteRangeResponse {
                deleted: r.i64("deleted")?,
                prev_kvs: get_kvs(r)?,
            }),
            3 => ResponseOp::Txn(get_txn_resp(r, depth + 1)?),
            t => return Err(malformed(format!("unknown response op tag {t}"))),
        });
    }
    Ok(TxnResponse {
        succeeded,
        responses,
    })
}

fn put_error(w: &mut Writer, e: &KvError) {
    match e {
        KvError::Compacted {
            revision,
            compact_revision,
        } => {
            w.u8(1);
            w.i64(*revision);
            w.i64(*compact_revision);
        }
        KvError::FutureRevision {
            revision,
            current_revision,
        } => {
            w.u8(2);
            w.i64(*revision);
            w.i64(*current_revision);
        }
        KvError::LeaseNotFound { id } => {
            w.u8(3);
            w.i64(*id);
        }
        KvError::LeaseExists { id } => {
            w.u8(4);
            w.i64(*id);
        }
        KvError::LeaseTtlOutOfRange {
            ttl_secs,
            max_lease_ttl_secs,
        } => {
            w.u8(5);
            w.i64(*ttl_secs);
            w.i64(*max_lease_ttl_secs);
        }
        KvError::EmptyKey => w.u8(6),
        KvError::KeyNotFound => w.u8(7),
        KvError::InvalidArgument { reason } => {
            w.u8(8);
            w.bytes(reason.as_bytes());
        }
        KvError::KeyTooLarge { len, max_key_bytes } => {
            w.u8(9);
            w.u64(*len);
            w.u64(*max_key_bytes);
        }
        KvError::ValueTooLarge {
            len,
            max_value_bytes,
        } => {
            w.u8(10);
            w.u64(*len);
            w.u64(*max_value_bytes);
        }
        KvError::TooManyOps { ops, max_txn_ops } => {
            w.u8(11);
            w.u64(*ops);
            w.u64(*max_txn_ops);
        }
        KvError::TxnTooDeep {
            depth,
            max_txn_depth,
        } => {
            w.u8(12);
            w.u64(*depth);
            w.u64(*max_txn_depth);
        }
        KvError::DuplicateKey { key } => {
            w.u8(13);
            w.bytes(key);
        }
        KvError::Malformed { reason } => {
            w.u8(14);
            w.bytes(reason.as_bytes());
        }
        KvError::CorruptedSnapshot { reason } => {
            w.u8(16);
            w.bytes(reason.as_bytes());
        }
        KvError::UnsupportedVersion { version, supported } => {
            w.u8(15);
            w.u32(*version);
            w.u32(*supported);
        }
    }
}

fn get_string(r: &mut Reader<'_>, what: &str) -> Result<String> {
    String::from_utf8(r.bytes(what)?).map_err(|_| malformed(format!("{what}: not UTF-8")))
}

fn get_error(r: &mut Reader<'_>) -> Result<KvError> {
    Ok(match r.u8("error tag")? {
        1 => KvError::Compacted {
            revision: r.i64("revision")?,
            compact_revision: r.i64("rev")?,
        },
        2 => KvError::FutureRevision {
            revision: r.i64("revision")?,
            current_revision: r.i64("revision")?,
        },
        3 => KvError::LeaseNotFound {
            id: r.i64("lease id")?,
        },
        4 => KvError::LeaseExists {
            id: r.i64("lease id")?,
        },
        5 => KvError::LeaseTtlOutOfRange {
            ttl_secs: r.i64("ttl")?,
            max_lease_ttl_secs: r.i64("ttl")?,
        },
        6 => KvError::EmptyKey,
        7 => KvError::KeyNotFound,
        8 => KvError::InvalidArgument {
            reason: get_string(r, "reason")?,
        },
        9 => KvError::KeyTooLarge {
            len: r.u64("len")?,
            max_key_bytes: r.u64("bound")?,
        },
        10 => KvError::ValueTooLarge {
            len: r.u64("len")?,
            max_value_bytes: r.u64("bound")?,
        },
        11 => KvError::TooManyOps {
            ops: r.u64("ops")?,
            max_txn_ops: r.u64("bound")?,
        },
        12 => KvError::TxnTooDeep {
            depth: r.u64("depth")?,
            max_txn_depth: r.u64("bound")?,
        },
        13 => KvError::DuplicateKey {
            key: r.bytes("key")?,
        },
        14 => KvError::Malformed {
            reason: get_string(r, "reason")?,
        },
        15 => KvError::UnsupportedVersion {
            version: r.u32("version")?,
            supported: r.u32("version")?,
        },
        16 => KvError::CorruptedSnapshot {
            reason: get_string(r, "reason")?,
        },
        t => return Err(malformed(format!("unknown error tag {t}"))),
    })
}

impl Response {
    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ENCODING_VERSION);
        w.i64(self.revision);
        match &self.result {
            Err(e) => {
                w.u8(0);
                put_error(&mut w, e);
            }
            Ok(body) => match body {
                ResponseBody::Put(p) => {
                    w.u8(1);
                    put_opt_kv(&mut w, &p.prev_kv);
                }
                ResponseBody::DeleteRange(d) => {
                    w.u8(2);
                    w.i64(d.deleted);
                    put_kvs(&mut w, &d.prev_kvs);
                }
                ResponseBody::Txn(t) => {
                    w.u8(3);
                    put_txn_resp(&mut w, t);
                }
                ResponseBody::Compact => w.u8(4),
                ResponseBody::LeaseGrant { id, ttl_secs } => {
                    w.u8(5);
                    w.i64(*id);
                    w.i64(*ttl_secs);
                }
                ResponseBody::LeaseRevoke { deleted } => {
                    w.u8(6);
                    w.i64(*deleted);
                }
                ResponseBody::LeaseKeepAlive { id, ttl_secs } => {
                    w.u8(7);
                    w.i64(*id);
                    w.i64(*ttl_secs);
                }
            },
        }
        w.buf
    }

    /// Decodes a response; any malformed input is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Response> {
        let mut r = Reader::new(data);
        version(&mut r)?;
        let revision = r.i64("response revision")?;
        let result = match r.u8("response tag")? {
            0 => Err(get_error(&mut r)?),
            1 => Ok(ResponseBody::Put(PutResponse {
                prev_kv: get_opt_kv(&mut r)?,
            })),
            2 => Ok(ResponseBody::DeleteRange(DeleteRangeResponse {
                deleted: r.i64("deleted")?,
                prev_kvs: get_kvs(&mut r)?,
            })),
            3 => Ok(ResponseBody::Txn(get_txn_resp(&mut r, 1)?)),
            4 => Ok(ResponseBody::Compact),
            5 => Ok(ResponseBody::LeaseGrant {
                id: r.i64("id")?,
                ttl_secs: r.i64("ttl")?,
            }),
            6 => Ok(ResponseBody::LeaseRevoke {
                deleted: r.i64("deleted")?,
            }),
            7 => Ok(ResponseBody::LeaseKeepAlive {
                id: r.i64("id")?,
                ttl_secs: r.i64("ttl")?,
            }),
            t => return Err(malformed(format!("unknown response tag {t}"))),
        };
        r.finish("response")?;
        Ok(Response { revision, result })
    }
}
