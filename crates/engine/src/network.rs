//! The node host's view of the peer network: a non-blocking `send` per destination node.
//! Inbound batches are handed to [`crate::NodeHost::deliver`]. The TCP [`Transport`]
//! implements [`PeerNetwork`] ([`pump_inbound`] feeds its inbound batches to a host);
//! [`LocalNetwork`] connects node hosts in one process (tests), with a fault hook to cut links.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use flotilla_raft::NodeId;

use crate::codec::{Envelope, StreamMsg};
use crate::host::NodeHostInner;
use crate::transport::{Inbound, Transport};

pub use crate::transport::SendError;

/// Sends batches of envelopes to peers.
///
/// # To ensure correctness
/// `send` never blocks and never buffers without bound; on error the node host tells Raft
/// the peer is unreachable, and Raft retransmits.
pub trait PeerNetwork: Send + Sync + 'static {
    /// Queues `envelopes` (messages of possibly many groups) for node `to`.
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError>;

    /// Queues one snapshot-streaming message (a chunk or an ack) for node `to`. Same contract
    /// as `send`: never blocks, bounded, may lose the message; the streaming protocol
    /// retransmits from the receiver's acknowledged offset.
    fn send_stream(&self, to: NodeId, msg: StreamMsg) -> Result<(), SendError>;
}

#[derive(Default)]
struct Router {
    hosts: BTreeMap<NodeId, Weak<NodeHostInner>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Test hook: (from, to) -> snapshot chunks still let through before the link is cut.
    chunk_budget: BTreeMap<(NodeId, NodeId), u64>,
}

/// An in-process network between node hosts (tests). Clone to share.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    router: Arc<Mutex<Router>>,
}

impl LocalNetwork {
    /// An empty network.
    pub fn new() -> Self {
        LocalNetwork::default()
    }

    /// The endpoint node `id` sends through.
    pub fn endpoint(&self, id: NodeId) -> Arc<dyn PeerNetwork> {
        Arc::new(LocalEndpoint {
            id,
            router: self.router.clone(),
        })
    }

    pub(crate) fn register(&self, id: NodeId, host: Weak<NodeHostInner>) {
        self.router.lock().expect("router").hosts.insert(id, host);
    }

    /// Attaches a started node host so others can reach it.
    pub fn attach(&self, host: &crate::NodeHost) {
        self.register(host.node_id(), host.weak_inner());
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut r = self.router.lock().expect("router");
        r.cut.insert((a, b));
        r.cut.insert((b, a));
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        let mut r = self.router.lock().expect("router");
        let others: Vec<NodeId> = r.hosts.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            r.cut.insert((id, o));
            r.cut.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.router.lock().expect("router").cut.clear();
    }

    /// Test hook: lets `chunks` more snapshot chunks from `from` to `to` through, then cuts
    /// both directions between them (as [`LocalNetwork::cut`]) at the next chunk, so a
    /// snapshot stream breaks at a known point. [`LocalNetwork::heal`] restores the link.
    pub fn cut_after_chunks(&self, from: NodeId, to: NodeId, chunks: u64) {
        let mut r = self.router.lock().expect("router");
        r.chunk_budget.insert((from, to), chunks);
    }
}

struct LocalEndpoint {
    id: NodeId,
    router: Arc<Mutex<Router>>,
}

impl LocalEndpoint {
    /// The host to deliver to, `Ok(None)` if the link is cut (the message is lost).
    fn target(&self, to: NodeId, chunk: bool) -> Result<Option<Arc<NodeHostInner>>, SendError> {
        let mut r = self.router.lock().expect("router");
        if chunk {
            if let Some(left) = r.chunk_budget.get_mut(&(self.id, to)) {
                if *left == 0 {
                    r.chunk_budget.remove(&(self.id, to));
                    r.cut.insert((self.id, to));
                    r.cut.insert((to, self.id));
                } else {
                    *left -= 1;
                }
            }
        }
        if r.cut.contains(&(self.id, to)) {
            return Ok(None); // silently lost, like a partitioned network
        }
        match r.hosts.get(&to).and_then(Weak::upgrade) {
            Some(host) => Ok(Some(host)),
            None => Err(SendError::UnknownPeer { peer: to }),
        }
    }
}

impl PeerNetwork for LocalEndpoint {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError> {
        if let Some(host) = self.target(to, false)? {
            host.deliver(self.id, envelopes);
        }
        Ok(())
    }

    fn send_stream(&self, to: NodeId, msg: StreamMsg) -> Result<(), SendError> {
        let chunk = matches!(msg, StreamMsg::Chunk(_));
        if let Some(host) = self.target(to, chunk)? {
            host.deliver_stream(self.id, msg);
        }
        Ok(())
    }
}

impl PeerNetwork for Transport {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError> {
        Transport::send(self, to, envelopes)
    }

    fn send_stream(&self, to: NodeId, msg: StreamMsg) -> Result<(), SendError> {
        Transport::send_stream(self, to, msg)
    }
}

/// Hands every batch the transport receives to `host` until the transport stops. Spawn it
/// on the runtime that runs the transport.
pub async fn pump_inbound(host: InboundSink, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
    while let Some(batch) = inbound.recv().await {
        if !batch.envelopes.is_empty() && !host.deliver(batch.from, batch.envelopes) {
            break; // the node host is gone
        }
        for msg in batch.stream {
            if !host.deliver_stream(batch.from, msg) {
                return;
            }
        }
    }
}

/// A handle that delivers inbound batches to a node host without keeping it alive.
#[derive(Clone)]
pub struct InboundSink(pub(crate) Weak<NodeHostInner>);

impl InboundSink {
    /// Delivers a batch; false once the node host is gone.
    pub fn deliver(&self, from: NodeId, envelopes: Vec<Envelope>) -> bool {
        match self.0.upgrade() {
            Some(host) => {
                host.deliver(from, envelopes);
                true
            }
            None => false,
        }
    }

    /// Delivers a snapshot-streaming message; false once the node host is gone.
    pub fn deliver_stream(&self, from: NodeId, msg: StreamMsg) -> bool {
        match self.0.upgrade() {
            Some(host) => {
                host.deliver_stream(from, msg);
                true
            }
            None => false,
        }
    }
}
