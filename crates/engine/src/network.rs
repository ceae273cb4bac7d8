//! The node host's view of the peer network: a non-blocking `send` per destination node.
//! Inbound batches are handed to [`crate::NodeHost::deliver`]. The TCP transport implements
//! [`PeerNetwork`]; [`LocalNetwork`] connects node hosts in one process (tests), with a
//! fault hook to cut links.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use flotilla_raft::NodeId;

use crate::codec::Envelope;
use crate::host::NodeHostInner;

/// Why a batch was not accepted for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No address is known for the node.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The peer's bounded send queue is full (slow or unreachable peer).
    #[error("send queue to peer {0} is full")]
    QueueFull(NodeId),
}

/// Sends batches of envelopes to peers.
///
/// # To ensure correctness
/// `send` never blocks and never buffers without bound; on error the node host tells Raft
/// the peer is unreachable, and Raft retransmits.
pub trait PeerNetwork: Send + Sync + 'static {
    /// Queues `envelopes` (messages of possibly many groups) for node `to`.
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError>;
}

#[derive(Default)]
struct Router {
    hosts: BTreeMap<NodeId, Weak<NodeHostInner>>,
    cut: BTreeSet<(NodeId, NodeId)>,
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
}

struct LocalEndpoint {
    id: NodeId,
    router: Arc<Mutex<Router>>,
}

impl PeerNetwork for LocalEndpoint {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError> {
        let target = {
            let r = self.router.lock().expect("router");
            if r.cut.contains(&(self.id, to)) {
                return Ok(()); // silently lost, like a partitioned network
            }
            r.hosts.get(&to).and_then(Weak::upgrade)
        };
        match target {
            Some(host) => {
                host.deliver(self.id, envelopes);
                Ok(())
            }
            None => Err(SendError::UnknownPeer(to)),
        }
    }
}
