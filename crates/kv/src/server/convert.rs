//! Conversions between the etcd protobuf messages and the state machine's types, and the
//! mapping of errors to gRPC statuses with etcd's messages (etcd clients match on them).

use tonic::{Code, Status};

use crate::error::KvError;
use crate::mvcc::{self, CompareResult, CompareTarget, SortOrder, SortTarget};
use crate::proto::{etcdserverpb as pb, mvccpb};
use flotilla_engine::EngineError;

pub(crate) fn kv_to_pb(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn event_to_pb(e: mvcc::Event, with_prev: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            mvcc::EventKind::Put => mvccpb::event::EventType::Put as i32,
            mvcc::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: if with_prev {
            e.prev_kv.map(kv_to_pb)
        } else {
            None
        },
    }
}

pub(crate) fn range_from_pb(r: &pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    if r.limit < 0 {
        return Err(Status::invalid_argument(
            "etcdserver: limit must not be negative",
        ));
    }
    Ok(mvcc::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        revision: r.revision,
        limit: r.limit as u64,
        keys_only: r.keys_only,
        count_only: r.count_only,
        sort_target: match pb::range_request::SortTarget::try_from(r.sort_target) {
            Ok(pb::range_request::SortTarget::Key) => SortTarget::Key,
            Ok(pb::range_request::SortTarget::Version) => SortTarget::Version,
            Ok(pb::range_request::SortTarget::Create) => SortTarget::Create,
            Ok(pb::range_request::SortTarget::Mod) => SortTarget::Mod,
            Ok(pb::range_request::SortTarget::Value) => SortTarget::Value,
            Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort target")),
        },
        sort_order: match pb::range_request::SortOrder::try_from(r.sort_order) {
            Ok(pb::range_request::SortOrder::None) => SortOrder::None,
            Ok(pb::range_request::SortOrder::Ascend) => SortOrder::Ascend,
            Ok(pb::range_request::SortOrder::Descend) => SortOrder::Descend,
            Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort order")),
        },
    })
}

/// True if the request filters on mod/create revision.
pub(crate) fn has_revision_filters(r: &pb::RangeRequest) -> bool {
    r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
}

/// Builds the range response. With min/max mod/create revision filters, `resp` must be the
/// whole sorted range (no limit): as in etcd, the filters apply before the limit (so "the
/// newest key created before revision R" is one sorted, filtered, limit-1 range), and `count`
/// stays the number of keys in the range.
pub(crate) fn range_to_pb(
    req: &pb::RangeRequest,
    mut resp: mvcc::RangeResponse,
    header: pb::ResponseHeader,
) -> pb::RangeResponse {
    if has_revision_filters(req) {
        let keep = |kv: &mvcc::KeyValue| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        };
        resp.kvs.retain(keep);
        resp.more = false;
        if req.limit > 0 && resp.kvs.len() > req.limit as usize {
            resp.kvs.truncate(req.limit as usize);
            resp.more = true;
        }
        if req.count_only {
            resp.kvs.clear();
        }
    }
    pb::RangeResponse {
        header: Some(header),
        kvs: resp.kvs.into_iter().map(kv_to_pb).collect(),
        more: resp.more,
        count: resp.count,
    }
}

pub(crate) fn put_from_pb(p: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub(crate) fn delete_from_pb(d: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

fn compare_from_pb(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let target = T::try_from(c.target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid compare target"))?;
    let union = c.target_union;
    let int = |want: fn(&U) -> Option<i64>| union.as_ref().and_then(want).unwrap_or(0);
    let target = match target {
        T::Version => CompareTarget::Version(int(|u| match u {
            U::Version(v) => Some(*v),
            _ => None,
        })),
        T::Create => CompareTarget::Create(int(|u| match u {
            U::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        T::Mod => CompareTarget::Mod(int(|u| match u {
            U::ModRevision(v) => Some(*v),
            _ => None,
        })),
        T::Lease => CompareTarget::Lease(int(|u| match u {
            U::Lease(v) => Some(*v),
            _ => None,
        })),
        T::Value => CompareTarget::Value(match &union {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    let result = match R::try_from(c.result)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid compare result"))?
    {
        R::Equal => CompareResult::Equal,
        R::NotEqual => CompareResult::NotEqual,
        R::Less => CompareResult::Less,
        R::Greater => CompareResult::Greater,
    };
    Ok(mvcc::Compare {
        key: c.key,
        range_end: c.range_end,
        target,
        result,
    })
}

fn op_from_pb(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(mvcc::RequestOp::Range(range_from_pb(&r)?)),
        Some(Request::RequestPut(p)) => Ok(mvcc::RequestOp::Put(put_from_pb(p))),
        Some(Request::RequestDeleteRange(d)) => Ok(mvcc::RequestOp::DeleteRange(delete_from_pb(d))),
        Some(Request::RequestTxn(t)) => Ok(mvcc::RequestOp::Txn(txn_from_pb(t)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: empty request op in txn",
        )),
    }
}

pub(crate) fn txn_from_pb(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn txn_to_pb(t: mvcc::TxnResponse, header: &pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = t
        .responses
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                mvcc::ResponseOp::Range(r) => Response::ResponseRange(pb::RangeResponse {
                    header: Some(*header),
                    kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
                    more: r.more,
                    count: r.count,
                }),
                mvcc::ResponseOp::Put(p) => Response::ResponsePut(pb::PutResponse {
                    header: Some(*header),
                    prev_kv: p.prev_kv.map(kv_to_pb),
                }),
                mvcc::ResponseOp::DeleteRange(d) => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(*header),
                        deleted: d.deleted,
                        prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
                    })
                }
                mvcc::ResponseOp::Txn(t) => Response::ResponseTxn(txn_to_pb(t, header)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(*header),
        succeeded: t.succeeded,
        responses,
    }
}

/// The gRPC status etcd returns for this refusal. Messages match etcd's where clients match
/// on them; bound violations also name the bound.
pub fn kv_status(e: &KvError) -> Status {
    match e {
        KvError::Compacted { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        KvError::FutureRevision { .. } => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        KvError::LeaseNotFound { .. } => {
            Status::new(Code::NotFound, "etcdserver: requested lease not found")
        }
        KvError::LeaseExists { .. } => {
            Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
        }
        KvError::LeaseTtlOutOfRange { .. } => {
            Status::new(Code::OutOfRange, format!("etcdserver: {e}"))
        }
        KvError::EmptyKey => Status::new(Code::InvalidArgument, "etcdserver: key is not provided"),
        KvError::KeyNotFound => Status::new(Code::InvalidArgument, "etcdserver: key not found"),
        KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => Status::new(
            Code::InvalidArgument,
            format!("etcdserver: request is too large: {e}"),
        ),
        KvError::TooManyOps { .. } => Status::new(
            Code::InvalidArgument,
            format!("etcdserver: too many operations in txn request: {e}"),
        ),
        KvError::DuplicateKey { .. } => Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        KvError::InvalidArgument { .. } | KvError::TxnTooDeep { .. } => {
            Status::new(Code::InvalidArgument, format!("etcdserver: {e}"))
        }
        _ => Status::new(Code::Internal, format!("etcdserver: {e}")),
    }
}

/// The gRPC status for an engine failure that retrying inside the server did not fix.
pub fn engine_status(e: &EngineError) -> Status {
    match e {
        EngineError::NotLeader {
            leader_hint: None, ..
        } => Status::unavailable("etcdserver: no leader"),
        EngineError::NotLeader { .. } => Status::unavailable("etcdserver: not leader"),
        EngineError::Timeout { .. } => Status::unavailable("etcdserver: request timed out"),
        EngineError::TooLarge { .. } => {
            Status::invalid_argument(format!("etcdserver: request is too large: {e}"))
        }
        EngineError::Dropped(_) => Status::unavailable("etcdserver: leader changed"),
        EngineError::Busy(_) => Status::unavailable(format!("etcdserver: too many requests: {e}")),
        EngineError::ShuttingDown => Status::unavailable("etcdserver: server stopped"),
        EngineError::Invalid(_) => Status::failed_precondition(format!("etcdserver: {e}")),
        _ => Status::internal(format!("etcdserver: {e}")),
    }
}
