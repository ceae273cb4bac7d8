//! The unary and streaming gRPC services (Watch is in `watch.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use flotilla_engine::ConfChangeOp;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};

use super::convert::{self, kv_status};
use super::{now_ms, KvServer, Retry};
use crate::command::{Command, ResponseBody};
use crate::mvcc::{self, prefix_range_end};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::{
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer as KvService},
    lease_server::{Lease, LeaseServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    watch_server::WatchServer,
};
use crate::proto::forward::{
    self as fwd,
    forward_server::{Forward, ForwardServer},
};
use crate::proto::v3lockpb::{
    self as lockpb,
    lock_server::{Lock, LockServer},
};

type GrpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// All services on one router.
pub(crate) fn router(server: Arc<KvServer>) -> tonic::transport::server::Router {
    let max = server.cfg.max_request_bytes;
    let svc = Svc(server);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(KvService::new(svc.clone()).max_decoding_message_size(max))
        .add_service(WatchServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(LeaseServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(ClusterServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(
            MaintenanceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(LockServer::new(svc.clone()).max_decoding_message_size(max))
        .add_service(
            ForwardServer::new(svc)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
}

/// The services' handle on the server (cheap to clone).
#[derive(Clone)]
pub(crate) struct Svc(pub(crate) Arc<KvServer>);

impl Svc {
    /// Counts the call by method and outcome.
    fn track<T>(&self, method: &'static str, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.0.record(
            method,
            r.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
        );
        r.map(Response::new)
    }

    /// Refuses an oversized put before it costs a Raft entry (the state machine checks too).
    fn check_put(&self, p: &pb::PutRequest) -> Result<(), Status> {
        let limits = &self.0.cfg.limits;
        if p.key.len() as u64 > limits.max_key_bytes {
            return Err(kv_status(&crate::KvError::KeyTooLarge {
                len: p.key.len() as u64,
                max_key_bytes: limits.max_key_bytes,
            }));
        }
        if p.value.len() as u64 > limits.max_value_bytes {
            return Err(kv_status(&crate::KvError::ValueTooLarge {
                len: p.value.len() as u64,
                max_value_bytes: limits.max_value_bytes,
            }));
        }
        Ok(())
    }

    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let mut r = convert::range_from_pb(&req)?;
        if convert::has_revision_filters(&req) {
            // Filters apply before the limit: fetch the whole sorted range.
            r.limit = 0;
            r.count_only = false;
        }
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        let sm = self.0.replica.sm.read().expect("kv lock");
        let store = sm.store();
        let resp = store.range(&r).map_err(|e| kv_status(&e))?;
        let header = self.0.header(store.current_revision());
        Ok(convert::range_to_pb(&req, resp, header))
    }

    async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        self.check_put(&req)?;
        let (revision, body) = self
            .0
            .propose(Command::Put(convert::put_from_pb(req)))
            .await?;
        match body {
            ResponseBody::Put(p) => Ok(pb::PutResponse {
                header: Some(self.0.header(revision)),
                prev_kv: p.prev_kv.map(convert::kv_to_pb),
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        let (revision, body) = self
            .0
            .propose(Command::DeleteRange(convert::delete_from_pb(req)))
            .await?;
        match body {
            ResponseBody::DeleteRange(d) => Ok(pb::DeleteRangeResponse {
                header: Some(self.0.header(revision)),
                deleted: d.deleted,
                prev_kvs: d.prev_kvs.into_iter().map(convert::kv_to_pb).collect(),
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let txn = convert::txn_from_pb(req)?;
        let (revision, body) = self.0.propose(Command::Txn(txn)).await?;
        match body {
            ResponseBody::Txn(t) => Ok(convert::txn_to_pb(t, &self.0.header(revision))),
            other => Err(unexpected(&other)),
        }
    }

    async fn compact(&self, req: pb::CompactionRequest) -> Result<pb::CompactionResponse, Status> {
        let (revision, _) = self
            .0
            .propose(Command::Compact {
                revision: req.revision,
            })
            .await?;
        Ok(pb::CompactionResponse {
            header: Some(self.0.header(revision)),
        })
    }

    async fn lease_grant(
        &self,
        req: pb::LeaseGrantRequest,
    ) -> Result<pb::LeaseGrantResponse, Status> {
        // A client's id 0 means "pick one": random positive ids, retried on a collision.
        const MAX_ID_ATTEMPTS: usize = 8;
        for _ in 0..MAX_ID_ATTEMPTS {
            let id = if req.id != 0 {
                req.id
            } else {
                (rand::random::<u64>() >> 1).max(1) as i64
            };
            let cmd = Command::LeaseGrant {
                id,
                ttl_secs: req.ttl,
                now_ms: 0, // stamped by the proposing leader
            };
            match self.0.propose(cmd).await {
                Ok((revision, ResponseBody::LeaseGrant { id, ttl_secs })) => {
                    return Ok(pb::LeaseGrantResponse {
                        header: Some(self.0.header(revision)),
                        id,
                        ttl: ttl_secs,
                        error: String::new(),
                    })
                }
                Ok((_, other)) => return Err(unexpected(&other)),
                Err(s) if req.id == 0 && s.code() == Code::FailedPrecondition => continue,
                Err(s) => return Err(s),
            }
        }
        Err(Status::internal(
            "etcdserver: could not pick a free lease id",
        ))
    }

    async fn lease_revoke(
        &self,
        req: pb::LeaseRevokeRequest,
    ) -> Result<pb::LeaseRevokeResponse, Status> {
        let (revision, _) = self.0.propose(Command::LeaseRevoke { id: req.id }).await?;
        Ok(pb::LeaseRevokeResponse {
            header: Some(self.0.header(revision)),
        })
    }

    /// One keep-alive: renews at the leader. An unknown lease answers TTL 0, as etcd does.
    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        match self
            .0
            .propose(Command::LeaseKeepAlive { id, now_ms: 0 })
            .await
        {
            Ok((revision, ResponseBody::LeaseKeepAlive { id, ttl_secs })) => {
                Ok(pb::LeaseKeepAliveResponse {
                    header: Some(self.0.header(revision)),
                    id,
                    ttl: ttl_secs,
                })
            }
            Ok((_, other)) => Err(unexpected(&other)),
            Err(s) if s.code() == Code::NotFound => Ok(pb::LeaseKeepAliveResponse {
                header: Some(self.0.header(self.0.current_revision())),
                id,
                ttl: 0,
            }),
            Err(s) => Err(s),
        }
    }

    async fn lease_time_to_live(
        &self,
        req: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        self.0.read_barrier().await?;
        let sm = self.0.replica.sm.read().expect("kv lock");
        let store = sm.store();
        let header = Some(self.0.header(store.current_revision()));
        Ok(match store.lease_time_to_live(req.id, now_ms()) {
            Ok(t) => pb::LeaseTimeToLiveResponse {
                header,
                id: t.id,
                ttl: t.remaining_ttl_secs,
                granted_ttl: t.granted_ttl_secs,
                keys: if req.keys { t.keys } else { Vec::new() },
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            Err(_) => pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        })
    }

    async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse, Status> {
        self.0.read_barrier().await?;
        let sm = self.0.replica.sm.read().expect("kv lock");
        let store = sm.store();
        Ok(pb::LeaseLeasesResponse {
            header: Some(self.0.header(store.current_revision())),
            leases: store
                .leases()
                .leases()
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        })
    }

    async fn members(&self) -> Result<Vec<pb::Member>, Status> {
        let status = self
            .0
            .host
            .status(self.0.cfg.group)
            .await
            .map_err(|e| convert::engine_status(&e))?;
        let conf = status.conf_state;
        let mut ids: Vec<u64> = conf
            .voters
            .iter()
            .chain(conf.outgoing.iter())
            .chain(conf.learners.iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|id| {
                let info = self.0.cfg.members.iter().find(|m| m.id == id);
                pb::Member {
                    id,
                    name: info.map(|m| m.name.clone()).unwrap_or_default(),
                    peer_ur_ls: info.map(|m| m.peer_urls.clone()).unwrap_or_default(),
                    client_ur_ls: info.map(|m| m.client_urls.clone()).unwrap_or_default(),
                    is_learner: conf.learners.contains(&id),
                }
            })
            .collect())
    }

    fn header_now(&self) -> pb::ResponseHeader {
        self.0.header(self.0.current_revision())
    }

    async fn status(&self) -> Result<pb::StatusResponse, Status> {
        let st = self
            .0
            .host
            .status(self.0.cfg.group)
            .await
            .map_err(|e| convert::engine_status(&e))?;
        Ok(pb::StatusResponse {
            header: Some(self.header_now()),
            version: ETCD_API_VERSION.to_string(),
            db_size: 0,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: Vec::new(),
            db_size_in_use: 0,
            is_learner: st.conf_state.learners.contains(&st.id),
        })
    }

    async fn lock(&self, req: lockpb::LockRequest) -> Result<lockpb::LockResponse, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("etcdserver: lock name is empty"));
        }
        // etcd's recipe: the waiter's key is `<name>/<lease hex>`, created bound to its lease;
        // the lock is held once no key under the prefix has an older create_revision.
        let mut prefix = req.name.clone();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", req.lease).as_bytes());
        let txn = mvcc::TxnRequest {
            compare: vec![mvcc::Compare {
                key: key.clone(),
                range_end: Vec::new(),
                target: mvcc::CompareTarget::Create(0),
                result: mvcc::CompareResult::Equal,
            }],
            success: vec![mvcc::RequestOp::Put(mvcc::PutRequest {
                key: key.clone(),
                value: Vec::new(),
                lease: req.lease,
                ..Default::default()
            })],
            failure: vec![mvcc::RequestOp::Range(mvcc::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let (revision, _) = self.0.propose(Command::Txn(txn)).await?;
        self.0.wait_for_revision(revision).await?;
        let mut revisions = self.0.replica.revision.subscribe();
        let end = prefix_range_end(&prefix);
        loop {
            {
                let sm = self.0.replica.sm.read().expect("kv lock");
                let store = sm.store();
                let waiters = store
                    .range(&mvcc::RangeRequest {
                        key: prefix.clone(),
                        range_end: end.clone(),
                        ..Default::default()
                    })
                    .map_err(|e| kv_status(&e))?;
                let Some(mine) = waiters.kvs.iter().find(|kv| kv.key == key) else {
                    // Our key is gone: the lease expired or was revoked while waiting.
                    return Err(kv_status(&crate::KvError::LeaseNotFound { id: req.lease }));
                };
                let first = waiters
                    .kvs
                    .iter()
                    .all(|kv| kv.create_revision >= mine.create_revision);
                if first {
                    return Ok(lockpb::LockResponse {
                        header: Some(self.0.header(store.current_revision())),
                        key,
                    });
                }
            }
            if revisions.changed().await.is_err() {
                return Err(Status::unavailable("etcdserver: server stopped"));
            }
        }
    }
}

/// The etcd API level Flotilla speaks (reported by Maintenance.Status).
const ETCD_API_VERSION: &str = "3.5.0";

fn unexpected(body: &ResponseBody) -> Status {
    Status::internal(format!("etcdserver: unexpected response {body:?}"))
}

#[tonic::async_trait]
impl Kv for Svc {
    async fn range(&self, req: Request<pb::RangeRequest>) -> GrpcResult<pb::RangeResponse> {
        let r = Svc::range(self, req.into_inner()).await;
        self.track("Range", r)
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> GrpcResult<pb::PutResponse> {
        let r = Svc::put(self, req.into_inner()).await;
        self.track("Put", r)
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> GrpcResult<pb::DeleteRangeResponse> {
        let r = Svc::delete_range(self, req.into_inner()).await;
        self.track("DeleteRange", r)
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> GrpcResult<pb::TxnResponse> {
        let r = Svc::txn(self, req.into_inner()).await;
        self.track("Txn", r)
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> GrpcResult<pb::CompactionResponse> {
        let r = Svc::compact(self, req.into_inner()).await;
        self.track("Compact", r)
    }
}

#[tonic::async_trait]
impl Lease for Svc {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> GrpcResult<pb::LeaseGrantResponse> {
        let r = Svc::lease_grant(self, req.into_inner()).await;
        self.track("LeaseGrant", r)
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> GrpcResult<pb::LeaseRevokeResponse> {
        let r = Svc::lease_revoke(self, req.into_inner()).await;
        self.track("LeaseRevoke", r)
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> GrpcResult<Self::LeaseKeepAliveStream> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                let r = svc.keep_alive_once(msg.id).await;
                svc.0.record(
                    "LeaseKeepAlive",
                    r.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
                );
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> GrpcResult<pb::LeaseTimeToLiveResponse> {
        let r = Svc::lease_time_to_live(self, req.into_inner()).await;
        self.track("LeaseTimeToLive", r)
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> GrpcResult<pb::LeaseLeasesResponse> {
        let r = Svc::lease_leases(self).await;
        self.track("LeaseLeases", r)
    }
}

#[tonic::async_trait]
impl Cluster for Svc {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> GrpcResult<pb::MemberAddResponse> {
        let req = req.into_inner();
        let r = async {
            // Flotilla has no replicated address book yet: a member can be (re-)added only if
            // its peer URL is one of the configured cluster's.
            let url = req.peer_ur_ls.first().ok_or_else(|| {
                Status::invalid_argument("etcdserver: member peer URL is required")
            })?;
            let info = self
                .0
                .cfg
                .members
                .iter()
                .find(|m| m.peer_urls.iter().any(|u| u == url))
                .cloned()
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "etcdserver: peer URL {url} is not in this cluster's configured members; \
                         adding new addresses at runtime is not supported yet"
                    ))
                })?;
            let op = if req.is_learner {
                ConfChangeOp::AddLearner(info.id)
            } else {
                ConfChangeOp::AddVoter(info.id)
            };
            self.0.change_membership(op).await?;
            let members = self.members().await?;
            Ok(pb::MemberAddResponse {
                header: Some(self.header_now()),
                member: members.iter().find(|m| m.id == info.id).cloned(),
                members,
            })
        }
        .await;
        self.track("MemberAdd", r)
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> GrpcResult<pb::MemberRemoveResponse> {
        let id = req.into_inner().id;
        let r = async {
            self.0.change_membership(ConfChangeOp::Remove(id)).await?;
            Ok(pb::MemberRemoveResponse {
                header: Some(self.header_now()),
                members: self.members().await?,
            })
        }
        .await;
        self.track("MemberRemove", r)
    }

    async fn member_update(
        &self,
        _req: Request<pb::MemberUpdateRequest>,
    ) -> GrpcResult<pb::MemberUpdateResponse> {
        let r = Err(Status::unimplemented(
            "etcdserver: changing a member's peer URLs at runtime is not supported yet",
        ));
        self.track("MemberUpdate", r)
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> GrpcResult<pb::MemberListResponse> {
        let r = async {
            Ok(pb::MemberListResponse {
                header: Some(self.header_now()),
                members: self.members().await?,
            })
        }
        .await;
        self.track("MemberList", r)
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> GrpcResult<pb::MemberPromoteResponse> {
        let id = req.into_inner().id;
        let r = async {
            self.0.change_membership(ConfChangeOp::AddVoter(id)).await?;
            Ok(pb::MemberPromoteResponse {
                header: Some(self.header_now()),
                members: self.members().await?,
            })
        }
        .await;
        self.track("MemberPromote", r)
    }
}

#[tonic::async_trait]
impl Maintenance for Svc {
    async fn alarm(&self, _req: Request<pb::AlarmRequest>) -> GrpcResult<pb::AlarmResponse> {
        let r = Ok(pb::AlarmResponse {
            header: Some(self.header_now()),
            alarms: Vec::new(),
        });
        self.track("Alarm", r)
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> GrpcResult<pb::StatusResponse> {
        let r = Svc::status(self).await;
        self.track("Status", r)
    }

    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> GrpcResult<pb::DefragmentResponse> {
        // Nothing to defragment: the store lives in memory and the log is compacted by snapshots.
        let r = Ok(pb::DefragmentResponse {
            header: Some(self.header_now()),
        });
        self.track("Defragment", r)
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> GrpcResult<pb::HashResponse> {
        let (revision, hash) = {
            let sm = self.0.replica.sm.read().expect("kv lock");
            (
                sm.store().current_revision(),
                crc32c::crc32c(&sm.encode_snapshot()),
            )
        };
        let r = Ok(pb::HashResponse {
            header: Some(self.0.header(revision)),
            hash,
        });
        self.track("Hash", r)
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> GrpcResult<pb::HashKvResponse> {
        let req = req.into_inner();
        let r = (|| {
            let sm = self.0.replica.sm.read().expect("kv lock");
            let store = sm.store();
            let all = store
                .range(&mvcc::RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: req.revision,
                    ..Default::default()
                })
                .map_err(|e| kv_status(&e))?;
            let mut hash = 0u32;
            for kv in &all.kvs {
                hash = crc32c::crc32c_append(hash, &kv.key);
                hash = crc32c::crc32c_append(hash, &kv.value);
                hash = crc32c::crc32c_append(hash, &kv.mod_revision.to_le_bytes());
            }
            let hash_revision = if req.revision == 0 {
                store.current_revision()
            } else {
                req.revision
            };
            Ok(pb::HashKvResponse {
                header: Some(self.0.header(store.current_revision())),
                hash,
                compact_revision: store.compact_revision(),
                hash_revision,
            })
        })();
        self.track("HashKV", r)
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> GrpcResult<Self::SnapshotStream> {
        // A backup: the KV's snapshot image (versioned, CRC-checked), in chunks.
        const CHUNK_BYTES: usize = 64 << 10;
        let (revision, image) = {
            let sm = self.0.replica.sm.read().expect("kv lock");
            (sm.store().current_revision(), sm.encode_snapshot())
        };
        let header = self.0.header(revision);
        let total = image.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = image
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - (i * CHUNK_BYTES + c.len())) as u64,
                    blob: c.to_vec(),
                    version: ETCD_API_VERSION.to_string(),
                })
            })
            .collect();
        self.0.record("Snapshot", Code::Ok);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> GrpcResult<pb::MoveLeaderResponse> {
        let target = req.into_inner().target_id;
        let r = async {
            self.0.transfer_leader(target).await?;
            // Wait (bounded) for the transfer to complete, as etcd's MoveLeader does.
            let deadline = Instant::now() + self.0.cfg.request_timeout;
            while self.0.host.leader(self.0.cfg.group) != Some(target) {
                if Instant::now() >= deadline {
                    return Err(Status::unavailable("etcdserver: leader transfer timed out"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Ok(pb::MoveLeaderResponse {
                header: Some(self.header_now()),
            })
        }
        .await;
        self.track("MoveLeader", r)
    }
}

#[tonic::async_trait]
impl Lock for Svc {
    async fn lock(&self, req: Request<lockpb::LockRequest>) -> GrpcResult<lockpb::LockResponse> {
        let r = Svc::lock(self, req.into_inner()).await;
        self.track("Lock", r)
    }

    async fn unlock(
        &self,
        req: Request<lockpb::UnlockRequest>,
    ) -> GrpcResult<lockpb::UnlockResponse> {
        let key = req.into_inner().key;
        let r = async {
            let (revision, _) = self
                .0
                .propose(Command::DeleteRange(mvcc::DeleteRangeRequest {
                    key,
                    ..Default::default()
                }))
                .await?;
            Ok(lockpb::UnlockResponse {
                header: Some(self.0.header(revision)),
            })
        }
        .await;
        self.track("Unlock", r)
    }
}

#[tonic::async_trait]
impl Forward for Svc {
    async fn propose(&self, req: Request<fwd::ProposeRequest>) -> GrpcResult<fwd::ProposeResponse> {
        let cmd = Command::decode(&req.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))?;
        let deadline = Instant::now() + self.0.cfg.request_timeout;
        match self.0.propose_local(cmd, deadline).await {
            Ok(b) => Ok(Response::new(fwd::ProposeResponse {
                response: b.to_vec(),
            })),
            Err(Retry::Again(s) | Retry::Fail(s)) => Err(s),
        }
    }

    async fn change_membership(
        &self,
        req: Request<fwd::MembershipRequest>,
    ) -> GrpcResult<fwd::MembershipResponse> {
        use fwd::membership_request::Op;
        let req = req.into_inner();
        let op = match Op::try_from(req.op) {
            Ok(Op::AddVoter) => ConfChangeOp::AddVoter(req.node),
            Ok(Op::AddLearner) => ConfChangeOp::AddLearner(req.node),
            Ok(Op::Remove) => ConfChangeOp::Remove(req.node),
            Err(_) => return Err(Status::invalid_argument("unknown membership op")),
        };
        self.0
            .host
            .change_membership(self.0.cfg.group, vec![op])
            .await
            .map_err(|e| convert::engine_status(&e))?;
        Ok(Response::new(fwd::MembershipResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<fwd::TransferRequest>,
    ) -> GrpcResult<fwd::TransferResponse> {
        self.0
            .host
            .transfer_leader(self.0.cfg.group, req.into_inner().target)
            .await
            .map_err(|e| convert::engine_status(&e))?;
        Ok(Response::new(fwd::TransferResponse {}))
    }
}
