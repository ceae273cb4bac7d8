//! The Watch service: one task per stream reads client requests; one task per watcher
//! follows the replica's revision and sends the retained events since the last one it
//! delivered, in revision order, each exactly once.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert::event_to_pb;
use super::services::Svc;
use super::KvServer;
use crate::error::KvError;
use crate::mvcc::EventKind;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;

/// Most events in one response, and most bytes of keys and values (a revision's events may
/// be split across responses; clients merge by revision).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
const MAX_BYTES_PER_RESPONSE: usize = 1 << 20;
/// Responses queued per stream before watchers wait for the client.
const STREAM_QUEUE: usize = 64;

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for Svc {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.0.record("Watch", tonic::Code::Ok);
        tokio::spawn(run_stream(self.0.clone(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    cancel: oneshot::Sender<()>,
    /// The highest revision whose events this watcher has sent (progress reports).
    delivered: Arc<std::sync::atomic::AtomicI64>,
}

async fn run_stream(
    server: Arc<KvServer>,
    mut inbound: Streaming<pb::WatchRequest>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
) {
    let mut watchers: BTreeMap<i64, Watcher> = BTreeMap::new();
    let mut next_id: i64 = 0;
    let mut shutdown = server.shutdown_signal.subscribe();
    loop {
        let msg = tokio::select! {
            msg = inbound.next() => msg,
            _ = stopped(&mut shutdown) => None,
        };
        let Some(Ok(msg)) = msg else { break };
        // Forget watchers whose task ended (compacted, client gone).
        watchers.retain(|_, w| !w.cancel.is_closed());
        let reply = match msg.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                create(&server, &mut watchers, &mut next_id, c, &tx)
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = watchers.remove(&c.watch_id) {
                    let _ = w.cancel.send(());
                }
                Some(pb::WatchResponse {
                    header: Some(server.header(server.current_revision())),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher has delivered everything up to the smallest of their marks.
                let current = server.current_revision();
                let revision = watchers
                    .values()
                    .map(|w| w.delivered.load(std::sync::atomic::Ordering::Acquire))
                    .min()
                    .unwrap_or(current)
                    .min(current);
                Some(pb::WatchResponse {
                    header: Some(server.header(revision)),
                    watch_id: -1,
                    ..Default::default()
                })
            }
            None => None,
        };
        if let Some(reply) = reply {
            if tx.send(Ok(reply)).await.is_err() {
                break;
            }
        }
    }
    for (_, w) in watchers {
        let _ = w.cancel.send(());
    }
}

fn create(
    server: &Arc<KvServer>,
    watchers: &mut BTreeMap<i64, Watcher>,
    next_id: &mut i64,
    c: pb::WatchCreateRequest,
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
) -> Option<pb::WatchResponse> {
    let current = server.current_revision();
    let refuse = |watch_id: i64, reason: &str| pb::WatchResponse {
        header: Some(server.header(current)),
        watch_id,
        created: true,
        canceled: true,
        cancel_reason: reason.to_string(),
        ..Default::default()
    };
    if watchers.len() >= server.cfg.max_watchers_per_stream {
        return Some(refuse(
            -1,
            &format!(
                "etcdserver: too many watchers on one stream (max_watchers_per_stream = {})",
                server.cfg.max_watchers_per_stream
            ),
        ));
    }
    let id = if c.watch_id != 0 {
        if watchers.contains_key(&c.watch_id) {
            return Some(refuse(
                c.watch_id,
                "etcdserver: duplicate watch ID provided",
            ));
        }
        c.watch_id
    } else {
        while watchers.contains_key(next_id) {
            *next_id += 1;
        }
        let id = *next_id;
        *next_id += 1;
        id
    };
    let start = if c.start_revision > 0 {
        c.start_revision
    } else {
        current + 1
    };
    let (cancel, cancelled) = oneshot::channel();
    let delivered = Arc::new(std::sync::atomic::AtomicI64::new(start - 1));
    watchers.insert(
        id,
        Watcher {
            cancel,
            delivered: delivered.clone(),
        },
    );
    let spec = Spec {
        id,
        key: c.key,
        range_end: c.range_end,
        prev_kv: c.prev_kv,
        no_put: c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Noput as i32)),
        no_delete: c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
        progress_notify: c.progress_notify,
    };
    // The created response goes first; the watcher task sends after it (same queue).
    let created = pb::WatchResponse {
        header: Some(server.header(current)),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    let server = server.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        if tx.send(Ok(created)).await.is_err() {
            return;
        }
        run_watcher(server, spec, start, delivered, tx, cancelled).await;
    });
    None
}

struct Spec {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

async fn run_watcher(
    server: Arc<KvServer>,
    spec: Spec,
    start: i64,
    delivered: Arc<std::sync::atomic::AtomicI64>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    mut cancelled: oneshot::Receiver<()>,
) {
    let mut revisions = server.replica.revision.subscribe();
    let mut shutdown = server.shutdown_signal.subscribe();
    let mut next = start;
    let mut last_sent = Instant::now();
    loop {
        // Everything applied so far, from `next` on.
        let batch = {
            let sm = server.replica.sm.read().expect("kv lock");
            let store = sm.store();
            let current = store.current_revision();
            match store.events_since(next, &spec.key, &spec.range_end) {
                Ok(events) => Ok((current, events)),
                Err(KvError::Compacted {
                    compact_revision, ..
                }) => Err((current, compact_revision)),
                Err(e) => {
                    tracing::error!(error = %e, "watch read failed");
                    return;
                }
            }
        };
        let (current, events) = match batch {
            Ok(b) => b,
            Err((current, compact_revision)) => {
                let _ = tx
                    .send(Ok(pb::WatchResponse {
                        header: Some(server.header(current)),
                        watch_id: spec.id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .to_string(),
                        ..Default::default()
                    }))
                    .await;
                return;
            }
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in events {
            let skip = (e.kind == EventKind::Put && spec.no_put)
                || (e.kind == EventKind::Delete && spec.no_delete);
            if !skip {
                bytes += e.kv.key.len() + e.kv.value.len();
                out.push(event_to_pb(e, spec.prev_kv));
            }
            if out.len() >= MAX_EVENTS_PER_RESPONSE || bytes >= MAX_BYTES_PER_RESPONSE {
                let rev = out
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .map_or(current, |kv| kv.mod_revision);
                if !send_events(&server, &spec, current, std::mem::take(&mut out), &tx).await {
                    return;
                }
                bytes = 0;
                // Events of `rev` may continue in the next response; resume after it.
                next = rev + 1;
                delivered.store(rev, std::sync::atomic::Ordering::Release);
                last_sent = Instant::now();
            }
        }
        if !out.is_empty() {
            if !send_events(&server, &spec, current, out, &tx).await {
                return;
            }
            last_sent = Instant::now();
        }
        next = next.max(current + 1);
        delivered.store(current, std::sync::atomic::Ordering::Release);
        // Wait for the next applied revision, a progress deadline, or cancellation.
        let progress_at = last_sent + server.cfg.watch_progress_interval;
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(progress_at.into()), if spec.progress_notify => {
                let progress = pb::WatchResponse {
                    header: Some(server.header(current)),
                    watch_id: spec.id,
                    ..Default::default()
                };
                if tx.send(Ok(progress)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            _ = &mut cancelled => return,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

async fn send_events(
    server: &KvServer,
    spec: &Spec,
    current: i64,
    events: Vec<crate::proto::mvccpb::Event>,
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
) -> bool {
    tx.send(Ok(pb::WatchResponse {
        header: Some(server.header(current)),
        watch_id: spec.id,
        events,
        ..Default::default()
    }))
    .await
    .is_ok()
}

/// Resolves once the server shuts down.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await.map(|_| ());
}
