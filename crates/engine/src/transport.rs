//! TCP peer transport: carries batches of Raft messages between the nodes of a cluster.
//!
//! # Model
//! - **Outbound**: one TCP connection per remote peer, owned by one tokio task. [`Transport::send`]
//!   puts envelopes on the peer's bounded queue and wakes the task, which writes everything
//!   ready into as few frames as possible (one frame per wakeup, up to `max_batch_bytes`), so
//!   messages of many groups share a frame. [`Transport::send_stream`] queues a snapshot chunk
//!   or ack on the same queue; it is written in a frame of its own. A connection is one-way: the receiver never writes
//!   on it, so the writer reads its half only to notice that the peer closed it.
//! - **Inbound**: an accept loop, bounded by a semaphore of `max_inbound_connections`, runs one
//!   task per connection. The first frame must be a [`Hello`] naming this cluster and protocol
//!   version; then each [`Frame::Batch`] becomes one [`Inbound`] on a bounded channel. A full
//!   channel stops the reading of that connection (TCP backpressure reaches the sender's queue,
//!   whose `send` then reports `QueueFull`). A malformed frame closes that connection only.
//! - **Loss is allowed, reordering and corruption are not.** Raft retransmits, so the transport
//!   drops messages when a queue is full, when a connection breaks with a frame in flight, or when
//!   a peer is removed; every drop is counted in [`TransportStats`]. Messages to one peer
//!   arrive in send order or not at all.
//!
//! # Reconnect
//! After a failed connect or a lost connection the task waits an exponentially growing backoff
//! (`reconnect_backoff_min` doubling up to `reconnect_backoff_max`, with jitter from an RNG seeded
//! by the node pair) and tries again; [`Transport::set_peer`] with a new address reconnects at once.
//! Messages queued meanwhile wait, within the queue bounds.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use flotilla_raft::{NodeId, NO_NODE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::codec::{
    decode_frame, encode_frame, CodecError, Envelope, Frame, Hello, StreamMsg,
    BATCH_OVERHEAD_BYTES, FRAME_HEADER_BYTES, PROTOCOL_VERSION,
};

/// How much an inbound connection asks the socket for per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Configuration of a [`Transport`]. Every bound is explicit; [`TransportConfig::new`] gives
/// production defaults.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id (never [`NO_NODE`]).
    pub node_id: NodeId,
    /// Nodes only talk to nodes with the same cluster id.
    pub cluster_id: u64,
    /// Largest frame (header included) this node sends or accepts. Must be the same on every
    /// node: an envelope that cannot fit a frame is refused by `send` with `TooLarge`.
    pub max_frame_bytes: usize,
    /// Most envelopes queued for one peer.
    pub max_queue_msgs_per_peer: usize,
    /// Most encoded bytes queued for one peer.
    pub max_queue_bytes_per_peer: usize,
    /// Target size of the envelopes in one outbound frame; a single larger envelope travels
    /// alone. At most `max_frame_bytes`.
    pub max_batch_bytes: usize,
    /// First reconnect delay.
    pub reconnect_backoff_min: Duration,
    /// Reconnect delays double up to this.
    pub reconnect_backoff_max: Duration,
    /// Most inbound connections served at once; further ones wait in the listen backlog.
    pub max_inbound_connections: usize,
    /// Capacity, in batches, of the channel [`Transport::start`] returns. (Addition to the
    /// original API sketch: the channel needs a bound.)
    pub inbound_queue_batches: usize,
    /// Give up a connection attempt after this long. (Addition.)
    pub connect_timeout: Duration,
    /// Close an inbound connection that sends no `Hello` within this long. (Addition.)
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    /// Defaults for a node: 16 MiB frames, 1 MiB batches, 8192 messages / 64 MiB queued per
    /// peer, reconnect backoff 50 ms – 5 s, 256 inbound connections.
    pub fn new(node_id: NodeId, cluster_id: u64) -> Self {
        TransportConfig {
            node_id,
            cluster_id,
            max_frame_bytes: 16 << 20,
            max_queue_msgs_per_peer: 8192,
            max_queue_bytes_per_peer: 64 << 20,
            max_batch_bytes: 1 << 20,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            max_inbound_connections: 256,
            inbound_queue_batches: 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// Largest encoded envelope that fits in one frame.
    pub fn max_envelope_bytes(&self) -> usize {
        self.max_frame_bytes
            .saturating_sub(FRAME_HEADER_BYTES + BATCH_OVERHEAD_BYTES)
    }

    /// Envelope bytes the writer puts in one frame: `max_batch_bytes`, but never so much that
    /// the frame (header and batch overhead included) would exceed `max_frame_bytes`.
    fn batch_budget_bytes(&self) -> usize {
        self.max_batch_bytes.min(self.max_envelope_bytes())
    }

    fn validate(&self) -> Result<(), TransportError> {
        let invalid = |reason: String| Err(TransportError::InvalidConfig { reason });
        if self.node_id == NO_NODE {
            return invalid("node_id must not be 0".into());
        }
        if self.max_frame_bytes > u32::MAX as usize {
            // The header's payload_len is a u32; larger frames cannot be expressed.
            return invalid(format!(
                "max_frame_bytes = {} exceeds the format's limit of {} bytes",
                self.max_frame_bytes,
                u32::MAX
            ));
        }
        if self.max_envelope_bytes() == 0 {
            return invalid(format!(
                "max_frame_bytes = {} leaves no room for an envelope",
                self.max_frame_bytes
            ));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > self.max_frame_bytes {
            return invalid(format!(
                "max_batch_bytes = {} must be in 1..=max_frame_bytes = {}",
                self.max_batch_bytes, self.max_frame_bytes
            ));
        }
        if self.max_queue_msgs_per_peer == 0 || self.max_queue_bytes_per_peer == 0 {
            return invalid("per-peer queue bounds must be positive".into());
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return invalid(format!(
                "reconnect backoff must satisfy 0 < min ({:?}) <= max ({:?})",
                self.reconnect_backoff_min, self.reconnect_backoff_max
            ));
        }
        if self.max_inbound_connections == 0 || self.inbound_queue_batches == 0 {
            return invalid(
                "max_inbound_connections and inbound_queue_batches must be positive".into(),
            );
        }
        Ok(())
    }
}

/// A batch received from a peer: the envelopes of one frame, in send order.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    /// The sending node (as authenticated by nothing but its `Hello`: the transport trusts the
    /// network it runs on).
    pub from: NodeId,
    /// The messages, for any groups.
    pub envelopes: Vec<Envelope>,
    /// Snapshot-streaming messages (a [`Frame::Stream`] arrives as one `Inbound` with no
    /// envelopes and one of these).
    pub stream: Vec<StreamMsg>,
}

/// Test hook: what happens to messages this node sends to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkFault {
    /// Deliver normally.
    #[default]
    None,
    /// Drop every message at `send` (it returns `Ok`, as a lossy network would).
    Drop,
    /// Hold each message back this long after `send`. Order is preserved: later messages
    /// (delayed or not) queue behind it.
    Delay(Duration),
}

/// Why [`Transport::send`] refused messages. Nothing of a refused call was queued; Raft will
/// retransmit, and the caller should report the peer unreachable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No address is known for the peer (see [`Transport::set_peer`]).
    #[error("unknown peer {peer}: no address set")]
    UnknownPeer {
        /// The destination.
        peer: NodeId,
    },
    /// The peer's queue cannot take the messages (the peer is down or slow).
    #[error(
        "queue for peer {peer} is full: {queued_msgs} msgs / {queued_bytes} bytes queued, \
         adding {adding_msgs} msgs / {adding_bytes} bytes would exceed \
         max_queue_msgs_per_peer = {max_msgs} or max_queue_bytes_per_peer = {max_bytes}"
    )]
    QueueFull {
        /// The destination.
        peer: NodeId,
        /// Messages already queued.
        queued_msgs: usize,
        /// Bytes already queued.
        queued_bytes: usize,
        /// Messages in the refused call.
        adding_msgs: usize,
        /// Bytes in the refused call.
        adding_bytes: usize,
        /// The message bound.
        max_msgs: usize,
        /// The byte bound.
        max_bytes: usize,
    },
    /// One envelope can never fit in a frame.
    #[error("envelope of {envelope_bytes} bytes exceeds the max of {max_envelope_bytes} bytes a frame of max_frame_bytes can carry")]
    TooLarge {
        /// Encoded size of the envelope.
        envelope_bytes: usize,
        /// [`TransportConfig::max_envelope_bytes`].
        max_envelope_bytes: usize,
    },
    /// The transport has shut down.
    #[error("transport is shut down")]
    ShutDown,
}

/// Errors starting the transport, and why an inbound connection was closed (logged).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The configuration violates a bound.
    #[error("invalid transport config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// `start` was called outside a tokio runtime.
    #[error("Transport::start must be called from within a tokio runtime")]
    NoRuntime,
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection's bytes are not valid frames.
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    /// The peer belongs to another cluster.
    #[error("peer {peer} is in cluster {found}, this node is in cluster {expected}")]
    WrongCluster {
        /// The node named in the Hello.
        peer: NodeId,
        /// Its cluster id.
        found: u64,
        /// Ours.
        expected: u64,
    },
    /// The peer speaks another protocol version.
    #[error("peer {peer} speaks transport protocol version {found}, this node speaks {supported}")]
    UnsupportedProtocol {
        /// The node named in the Hello.
        peer: NodeId,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// The Hello names an impossible sender (0, or this node's own id).
    #[error("Hello from invalid node id {peer} (this node is {local})")]
    InvalidPeerId {
        /// The id claimed.
        peer: NodeId,
        /// This node's id.
        local: NodeId,
    },
    /// The first frame was not a Hello.
    #[error("first frame on a connection must be Hello, got {found}")]
    HandshakeExpected {
        /// The frame kind received.
        found: &'static str,
    },
    /// No Hello arrived in time.
    #[error("no Hello within handshake_timeout = {timeout:?}")]
    HandshakeTimeout {
        /// The bound.
        timeout: Duration,
    },
    /// A second Hello on an established connection.
    #[error("unexpected Hello after the handshake")]
    UnexpectedHello,
    /// A batch names a sender other than the connection's Hello.
    #[error("batch claims sender {claimed}, but the connection's Hello is from {hello}")]
    SenderMismatch {
        /// The batch's `from`.
        claimed: NodeId,
        /// The Hello's `from`.
        hello: NodeId,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    ClosedMidFrame {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
}

/// Counters for one outbound peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Current address.
    pub addr: SocketAddr,
    /// True while a connection (past the Hello) is up.
    pub connected: bool,
    /// Envelopes waiting in the queue.
    pub queued_msgs: usize,
    /// Encoded bytes waiting in the queue.
    pub queued_bytes: usize,
    /// Envelopes written to a socket.
    pub msgs_sent: u64,
    /// Batch frames written to a socket.
    pub frames_sent: u64,
    /// Bytes written to a socket (Hello frames included).
    pub bytes_sent: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections established after an earlier one was lost (reconnects).
    pub reconnects: u64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: u64,
    /// Envelopes refused by `send` because the queue was full.
    pub dropped_queue_full: u64,
    /// Envelopes dropped by [`LinkFault::Drop`].
    pub dropped_fault: u64,
    /// Envelopes taken from the queue but lost with a broken connection, or discarded when the
    /// peer was removed or the transport shut down.
    pub dropped_unsent: u64,
}

/// Counters for what one remote node sent us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedStats {
    /// Batch frames received.
    pub frames: u64,
    /// Envelopes received.
    pub msgs: u64,
    /// Bytes of the frames received.
    pub bytes: u64,
}

/// A snapshot of the transport's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Outbound side, per configured peer.
    pub peers: BTreeMap<NodeId, PeerStats>,
    /// Inbound side, per sending node.
    pub received: BTreeMap<NodeId, ReceivedStats>,
    /// Inbound connections currently served.
    pub inbound_connections_active: u64,
    /// Inbound connections accepted since start.
    pub inbound_connections_accepted: u64,
    /// Inbound connections closed because of a handshake refusal or a malformed frame.
    pub inbound_connections_failed: u64,
}

/// The peer transport of one node. Cheap to clone; all clones share one set of connections.
/// Dropping the last clone stops the background tasks (like [`Transport::shutdown`] without
/// waiting for them).
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.shared.cfg.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// Signals shutdown when the last [`Transport`] handle is dropped. Tasks hold only `Shared`,
/// so they do not keep the guard alive.
struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.begin_shutdown();
    }
}

struct Shared {
    cfg: TransportConfig,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    received: Mutex<BTreeMap<NodeId, ReceivedStats>>,
    inbound_active: AtomicU64,
    inbound_accepted: AtomicU64,
    inbound_failed: AtomicU64,
}

#[derive(Default)]
struct State {
    peers: BTreeMap<NodeId, Arc<Peer>>,
    faults: BTreeMap<NodeId, LinkFault>,
    shut_down: bool,
}

struct Peer {
    id: NodeId,
    addr: watch::Sender<SocketAddr>,
    stop: watch::Sender<bool>,
    queue: Mutex<PeerQueue>,
    /// Wakes the writer task: something was queued.
    wake: Notify,
    connected: AtomicBool,
    counters: PeerCounters,
}

#[derive(Default)]
struct PeerQueue {
    items: VecDeque<Queued>,
    bytes: usize,
}

/// What a peer queue holds: Raft envelopes (coalesced into batch frames) or snapshot-stream
/// messages (one frame each, in queue order with the envelopes).
enum Outgoing {
    Env(Envelope),
    Stream(StreamMsg),
}

struct Queued {
    item: Outgoing,
    bytes: usize,
    /// Set by [`LinkFault::Delay`]: not to be written before this instant.
    not_before: Option<Instant>,
}

#[derive(Default)]
struct PeerCounters {
    msgs_sent: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_fault: AtomicU64,
    dropped_unsent: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; if one ever did, the data (queues, counters)
    // is still structurally valid, so keep going rather than cascade the panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Transport {
    /// Starts accepting on `listener`; inbound batches arrive on the returned bounded receiver
    /// (capacity `inbound_queue_batches`). Must be called within a tokio runtime; the
    /// transport's tasks run on that runtime.
    pub fn start(
        cfg: TransportConfig,
        listener: TcpListener,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        cfg.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(cfg.inbound_queue_batches);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            local_addr,
            runtime,
            state: Mutex::new(State::default()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            received: Mutex::new(BTreeMap::new()),
            inbound_active: AtomicU64::new(0),
            inbound_accepted: AtomicU64::new(0),
            inbound_failed: AtomicU64::new(0),
        });
        info!(node = shared.cfg.node_id, %local_addr, "peer transport listening");
        let accept = shared
            .runtime
            .spawn(accept_loop(shared.clone(), listener, tx));
        lock(&shared.tasks).push(accept);
        let guard = Arc::new(DropGuard(shared.clone()));
        Ok((
            Transport {
                shared,
                _guard: guard,
            },
            rx,
        ))
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.cfg.node_id
    }

    /// Adds a peer, or changes its address (the current connection is closed and a new one made
    /// at once; queued messages are kept). Ignored after shutdown.
    pub fn set_peer(&self, node: NodeId, addr: SocketAddr) {
        let mut state = lock(&self.shared.state);
        if state.shut_down {
            debug!(
                node = self.shared.cfg.node_id,
                peer = node,
                "set_peer after shutdown ignored"
            );
            return;
        }
        if let Some(peer) = state.peers.get(&node) {
            peer.addr.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
            return;
        }
        let peer = Arc::new(Peer {
            id: node,
            addr: watch::channel(addr).0,
            stop: watch::channel(false).0,
            queue: Mutex::new(PeerQueue::default()),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            counters: PeerCounters::default(),
        });
        state.peers.insert(node, peer.clone());
        drop(state);
        let task = self
            .shared
            .runtime
            .spawn(run_peer(self.shared.clone(), peer));
        let mut tasks = lock(&self.shared.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Forgets a peer: its connection is closed and its queued messages are dropped.
    pub fn remove_peer(&self, node: NodeId) {
        let removed = lock(&self.shared.state).peers.remove(&node);
        if let Some(peer) = removed {
            peer.stop.send_replace(true);
        }
    }

    /// Queues `envelopes` for `to`, all or nothing, without blocking.
    ///
    /// `Ok` means queued (or dropped by a [`LinkFault::Drop`] test hook), not delivered: the
    /// transport may still lose messages (see the module docs). On `Err` nothing was queued;
    /// report the peer unreachable to Raft, which will retransmit.
    pub fn send(&self, to: NodeId, envelopes: Vec<Envelope>) -> Result<(), SendError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let max_envelope_bytes = self.shared.cfg.max_envelope_bytes();
        let sizes: Vec<usize> = envelopes.iter().map(Envelope::encoded_len).collect();
        let too_large = sizes
            .iter()
            .find(|&&n| n > max_envelope_bytes)
            .map(|&envelope_bytes| SendError::TooLarge {
                envelope_bytes,
                max_envelope_bytes,
            });
        let items = envelopes.into_iter().map(Outgoing::Env).collect();
        self.enqueue(to, items, sizes, too_large)
    }

    /// Queues one snapshot-streaming message for `to`; it travels in its own frame, behind
    /// everything queued before it. Same contract as [`Transport::send`]; `TooLarge` here
    /// compares the whole frame with `max_frame_bytes`.
    pub fn send_stream(&self, to: NodeId, msg: StreamMsg) -> Result<(), SendError> {
        let frame_bytes = msg.frame_len();
        let max_frame_bytes = self.shared.cfg.max_frame_bytes;
        let too_large = (frame_bytes > max_frame_bytes).then_some(SendError::TooLarge {
            envelope_bytes: frame_bytes,
            max_envelope_bytes: max_frame_bytes,
        });
        self.enqueue(
            to,
            vec![Outgoing::Stream(msg)],
            vec![frame_bytes],
            too_large,
        )
    }

    /// All or nothing: checks the peer, the link fault, `too_large`, then the queue bounds.
    fn enqueue(
        &self,
        to: NodeId,
        items: Vec<Outgoing>,
        sizes: Vec<usize>,
        too_large: Option<SendError>,
    ) -> Result<(), SendError> {
        debug_assert_eq!(items.len(), sizes.len());
        let (peer, fault) = {
            let state = lock(&self.shared.state);
            if state.shut_down {
                return Err(SendError::ShutDown);
            }
            let peer = state
                .peers
                .get(&to)
                .cloned()
                .ok_or(SendError::UnknownPeer { peer: to })?;
            (peer, state.faults.get(&to).copied().unwrap_or_default())
        };
        let not_before = match fault {
            LinkFault::None => None,
            LinkFault::Drop => {
                add(&peer.counters.dropped_fault, items.len());
                return Ok(());
            }
            LinkFault::Delay(delay) => {
                let now = Instant::now();
                // A delay too large to represent means "never" for any practical purpose.
                Some(
                    now.checked_add(delay)
                        .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400)),
                )
            }
        };
        if let Some(e) = too_large {
            return Err(e);
        }
        let adding_bytes: usize = sizes.iter().sum();
        let adding_msgs = items.len();
        let max_msgs = self.shared.cfg.max_queue_msgs_per_peer;
        let max_bytes = self.shared.cfg.max_queue_bytes_per_peer;
        {
            let mut queue = lock(&peer.queue);
            if queue.items.len() + adding_msgs > max_msgs || queue.bytes + adding_bytes > max_bytes
            {
                add(&peer.counters.dropped_queue_full, adding_msgs);
                return Err(SendError::QueueFull {
                    peer: to,
                    queued_msgs: queue.items.len(),
                    queued_bytes: queue.bytes,
                    adding_msgs,
                    adding_bytes,
                    max_msgs,
                    max_bytes,
                });
            }
            for (item, bytes) in items.into_iter().zip(sizes) {
                queue.items.push_back(Queued {
                    item,
                    bytes,
                    not_before,
                });
            }
            queue.bytes += adding_bytes;
            debug_assert!(queue.items.len() <= max_msgs && queue.bytes <= max_bytes);
        }
        peer.wake.notify_one();
        Ok(())
    }

    /// Test hook: applies `fault` to messages this node sends to `to` from now on (messages
    /// already queued are unaffected). May be set before the peer is known; survives
    /// `remove_peer` / `set_peer`.
    pub fn set_link_fault(&self, to: NodeId, fault: LinkFault) {
        let mut state = lock(&self.shared.state);
        if fault == LinkFault::None {
            state.faults.remove(&to);
        } else {
            state.faults.insert(to, fault);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let peers: Vec<Arc<Peer>> = lock(&self.shared.state).peers.values().cloned().collect();
        let peers = peers
            .into_iter()
            .map(|p| {
                let (queued_msgs, queued_bytes) = {
                    let q = lock(&p.queue);
                    (q.items.len(), q.bytes)
                };
                let c = &p.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let stats = PeerStats {
                    addr: *p.addr.borrow(),
                    connected: p.connected.load(Ordering::Relaxed),
                    queued_msgs,
                    queued_bytes,
                    msgs_sent: get(&c.msgs_sent),
                    frames_sent: get(&c.frames_sent),
                    bytes_sent: get(&c.bytes_sent),
                    connects: get(&c.connects),
                    reconnects: get(&c.reconnects),
                    connect_failures: get(&c.connect_failures),
                    dropped_queue_full: get(&c.dropped_queue_full),
                    dropped_fault: get(&c.dropped_fault),
                    dropped_unsent: get(&c.dropped_unsent),
                };
                (p.id, stats)
            })
            .collect();
        TransportStats {
            peers,
            received: lock(&self.shared.received).clone(),
            inbound_connections_active: self.shared.inbound_active.load(Ordering::Relaxed),
            inbound_connections_accepted: self.shared.inbound_accepted.load(Ordering::Relaxed),
            inbound_connections_failed: self.shared.inbound_failed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every connection, drops queued messages and waits for the
    /// background tasks to finish. Later `send`s return [`SendError::ShutDown`].
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        for task in tasks {
            if let Err(e) = task.await {
                warn!(node = self.shared.cfg.node_id, error = %e, "transport task failed");
            }
        }
        info!(node = self.shared.cfg.node_id, "peer transport shut down");
    }
}

impl Shared {
    fn begin_shutdown(&self) {
        let peers = {
            let mut state = lock(&self.state);
            state.shut_down = true;
            std::mem::take(&mut state.peers)
        };
        for peer in peers.values() {
            peer.stop.send_replace(true);
        }
        self.shutdown.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// Why a connection ended.
enum Ended {
    /// The peer was removed or the transport shut down.
    Stop,
    /// `set_peer` gave a new address.
    AddrChanged,
    /// The connection broke; `delivered` says whether any batch was written on it.
    Lost { delivered: bool },
}

impl Peer {
    /// Takes the ready prefix of the queue, up to `max_batch_bytes` of envelopes (at least one
    /// if any is ready). If nothing is ready, returns when the head becomes ready, if delayed.
    fn take_batch(&self, max_batch_bytes: usize, now: Instant) -> (Vec<Envelope>, Option<Instant>) {
        let mut queue = lock(&self.queue);
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        while let Some(head) = queue.items.front() {
            if let Some(at) = head.not_before.filter(|at| *at > now) {
                let wait = if batch.is_empty() { Some(at) } else { None };
                return (batch, wait);
            }
            if matches!(head.item, Outgoing::Stream(_)) {
                break; // travels in its own frame; see take_stream
            }
            if !batch.is_empty() && batch_bytes + head.bytes > max_batch_bytes {
                break;
            }
            let item = queue.items.pop_front().expect("front exists");
            queue.bytes -= item.bytes;
            batch_bytes += item.bytes;
            match item.item {
                Outgoing::Env(env) => batch.push(env),
                Outgoing::Stream(_) => unreachable!("checked above"),
            }
        }
        (batch, None)
    }

    /// Takes the head of the queue if it is a ready snapshot-stream message.
    fn take_stream(&self, now: Instant) -> Option<StreamMsg> {
        let mut queue = lock(&self.queue);
        let head = queue.items.front()?;
        if !matches!(head.item, Outgoing::Stream(_)) || head.not_before.is_some_and(|at| at > now) {
            return None;
        }
        let item = queue.items.pop_front().expect("front exists");
        queue.bytes -= item.bytes;
        match item.item {
            Outgoing::Stream(msg) => Some(msg),
            Outgoing::Env(_) => unreachable!("checked above"),
        }
    }

    /// Discards everything queued (peer removed or transport shut down).
    fn discard_queue(&self) {
        let mut queue = lock(&self.queue);
        add(&self.counters.dropped_unsent, queue.items.len());
        queue.items.clear();
        queue.bytes = 0;
    }
}

/// The writer task of one peer: connect, drain the queue into frames, reconnect on failure.
async fn run_peer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.cfg;
    let mut stop = peer.stop.subscribe();
    let mut addr_rx = peer.addr.subscribe();
    // Jitter only has to decorrelate nodes, not be unpredictable: seed from the node pair.
    let mut rng = StdRng::seed_from_u64(cfg.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ peer.id);
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    loop {
        let addr = *addr_rx.borrow_and_update();
        let attempt = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr));
        let result = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = addr_rx.changed() => { failures = 0; continue; }
            result = attempt => result,
        };
        let stream = match result {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                debug!(node = cfg.node_id, peer = peer.id, %addr, error = %e, "connect failed");
                None
            }
            Err(_) => {
                debug!(node = cfg.node_id, peer = peer.id, %addr, timeout = ?cfg.connect_timeout, "connect timed out");
                None
            }
        };
        if let Some(stream) = stream {
            peer.counters.connects.fetch_add(1, Ordering::Relaxed);
            if ever_connected {
                peer.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            ever_connected = true;
            info!(node = cfg.node_id, peer = peer.id, %addr, "connected to peer");
            let ended = drive_connection(&shared, &peer, stream, &mut stop, &mut addr_rx).await;
            peer.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Stop => break,
                Ended::AddrChanged => {
                    failures = 0;
                    continue;
                }
                Ended::Lost { delivered } => {
                    failures = if delivered {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                }
            }
        } else {
            peer.counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            failures = failures.saturating_add(1);
        }
        let delay = backoff(cfg, failures, &mut rng);
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = addr_rx.changed() => failures = 0,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    peer.discard_queue();
    debug!(node = cfg.node_id, peer = peer.id, "peer writer stopped");
}

/// The delay before reconnect attempt number `failures` (1-based): `min * 2^(failures-1)`
/// capped at `max`, then scaled by a random factor in [0.5, 1.0], and never below `min`.
fn backoff(cfg: &TransportConfig, failures: u32, rng: &mut StdRng) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = cfg
        .reconnect_backoff_min
        .saturating_mul(1 << exponent)
        .min(cfg.reconnect_backoff_max);
    base.mul_f64(rng.gen_range(0.5..=1.0))
        .clamp(cfg.reconnect_backoff_min, cfg.reconnect_backoff_max)
}

async fn drive_connection(
    shared: &Shared,
    peer: &Peer,
    stream: TcpStream,
    stop: &mut watch::Receiver<bool>,
    addr_rx: &mut watch::Receiver<SocketAddr>,
) -> Ended {
    let cfg = &shared.cfg;
    let mut delivered = false;
    if let Err(e) = stream.set_nodelay(true) {
        debug!(node = cfg.node_id, peer = peer.id, error = %e, "set_nodelay failed");
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::Hello(Hello {
            cluster_id: cfg.cluster_id,
            from: cfg.node_id,
            protocol_version: PROTOCOL_VERSION,
        }),
        &mut buf,
    );
    let mut batch_msgs = 0usize;
    let mut is_batch = false;
    let mut probe = [0u8; 64];
    loop {
        if !buf.is_empty() {
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => {
                    add(&peer.counters.dropped_unsent, batch_msgs);
                    return Ended::Stop;
                }
                // A write blocked on a peer that stopped reading must not pin the old address.
                _ = addr_rx.changed() => {
                    add(&peer.counters.dropped_unsent, batch_msgs);
                    return Ended::AddrChanged;
                }
                result = writer.write_all(&buf) => result,
            };
            if let Err(e) = result {
                add(&peer.counters.dropped_unsent, batch_msgs);
                warn!(node = cfg.node_id, peer = peer.id, error = %e, "write to peer failed; reconnecting");
                return Ended::Lost { delivered };
            }
            add(&peer.counters.bytes_sent, buf.len());
            if is_batch {
                add(&peer.counters.msgs_sent, batch_msgs);
                peer.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                delivered = true;
            } else {
                peer.connected.store(true, Ordering::Relaxed);
            }
            buf.clear();
        }
        if let Some(msg) = peer.take_stream(Instant::now()) {
            batch_msgs = 1;
            is_batch = true;
            let frame = Frame::Stream {
                from: cfg.node_id,
                msg,
            };
            // send_stream() refuses frames over max_frame_bytes.
            debug_assert!(frame.encoded_len() <= cfg.max_frame_bytes);
            encode_frame(&frame, &mut buf);
            continue;
        }
        let (batch, next_ready) = peer.take_batch(cfg.batch_budget_bytes(), Instant::now());
        if !batch.is_empty() {
            batch_msgs = batch.len();
            is_batch = true;
            let frame = Frame::Batch {
                from: cfg.node_id,
                envelopes: batch,
            };
            // send() refuses envelopes over max_envelope_bytes and the budget keeps batches
            // under it, so the receiver will not refuse the frame for its size.
            debug_assert!(frame.encoded_len() <= cfg.max_frame_bytes);
            encode_frame(&frame, &mut buf);
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return Ended::Stop,
            _ = addr_rx.changed() => return Ended::AddrChanged,
            read = reader.read(&mut probe) => {
                match read {
                    Ok(0) => info!(node = cfg.node_id, peer = peer.id, "peer closed the connection; reconnecting"),
                    Ok(_) => warn!(node = cfg.node_id, peer = peer.id, "peer wrote on an outbound connection; reconnecting"),
                    Err(e) => warn!(node = cfg.node_id, peer = peer.id, error = %e, "connection to peer failed; reconnecting"),
                }
                return Ended::Lost { delivered };
            }
            _ = peer.wake.notified() => {}
            _ = tokio::time::sleep_until(next_ready.unwrap_or_else(Instant::now)), if next_ready.is_some() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tx: mpsc::Sender<Inbound>) {
    let node = shared.cfg.node_id;
    let limit = Arc::new(Semaphore::new(shared.cfg.max_inbound_connections));
    let mut shutdown = shared.shutdown.subscribe();
    let mut connections = JoinSet::new();
    loop {
        // Take a permit before accepting, so excess connections wait in the backlog rather
        // than costing a task and a buffer each.
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(node, error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.wait_for(|down| *down) => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_inbound(
            shared.clone(),
            stream,
            remote,
            tx.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    // Connection tasks watch the same signal; wait until they have closed their sockets.
    while connections.join_next().await.is_some() {}
}

async fn serve_inbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    tx: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let node = shared.cfg.node_id;
    shared.inbound_accepted.fetch_add(1, Ordering::Relaxed);
    shared.inbound_active.fetch_add(1, Ordering::Relaxed);
    let result = tokio::select! {
        biased;
        _ = shutdown.wait_for(|down| *down) => Ok(()),
        result = inbound_session(&shared, stream, remote, &tx) => result,
    };
    if let Err(e) = result {
        shared.inbound_failed.fetch_add(1, Ordering::Relaxed);
        warn!(node, %remote, error = %e, "closing inbound peer connection");
    }
    shared.inbound_active.fetch_sub(1, Ordering::Relaxed);
}

async fn inbound_session(
    shared: &Shared,
    mut stream: TcpStream,
    remote: SocketAddr,
    tx: &mpsc::Sender<Inbound>,
) -> Result<(), TransportError> {
    let cfg = &shared.cfg;
    if let Err(e) = stream.set_nodelay(true) {
        debug!(node = cfg.node_id, %remote, error = %e, "set_nodelay failed");
    }
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout(
        cfg.handshake_timeout,
        read_frame(&mut stream, &mut buf, cfg.max_frame_bytes),
    )
    .await
    .map_err(|_| TransportError::HandshakeTimeout {
        timeout: cfg.handshake_timeout,
    })??;
    let from = match first {
        None => return Ok(()),
        Some((Frame::Hello(hello), _)) => check_hello(cfg, &hello)?,
        Some((other, _)) => {
            return Err(TransportError::HandshakeExpected {
                found: other.name(),
            })
        }
    };
    info!(node = cfg.node_id, peer = from, %remote, "accepted peer connection");
    loop {
        let Some((frame, frame_bytes)) =
            read_frame(&mut stream, &mut buf, cfg.max_frame_bytes).await?
        else {
            debug!(node = cfg.node_id, peer = from, %remote, "peer closed inbound connection");
            return Ok(());
        };
        let (envelopes, stream) = match frame {
            Frame::Hello(_) => return Err(TransportError::UnexpectedHello),
            Frame::Batch {
                from: claimed,
                envelopes,
            } => {
                if claimed != from {
                    return Err(TransportError::SenderMismatch {
                        claimed,
                        hello: from,
                    });
                }
                (envelopes, Vec::new())
            }
            Frame::Stream { from: claimed, msg } => {
                if claimed != from {
                    return Err(TransportError::SenderMismatch {
                        claimed,
                        hello: from,
                    });
                }
                (Vec::new(), vec![msg])
            }
        };
        {
            let mut received = lock(&shared.received);
            let r = received.entry(from).or_default();
            r.frames += 1;
            r.msgs += (envelopes.len() + stream.len()) as u64;
            r.bytes += frame_bytes as u64;
        }
        if envelopes.is_empty() && stream.is_empty() {
            continue;
        }
        // Waiting here is the backpressure: this connection is not read while the consumer
        // is behind.
        let batch = Inbound {
            from,
            envelopes,
            stream,
        };
        if tx.send(batch).await.is_err() {
            debug!(
                node = cfg.node_id,
                "inbound receiver dropped; closing connection"
            );
            return Ok(());
        }
    }
}

fn check_hello(cfg: &TransportConfig, hello: &Hello) -> Result<NodeId, TransportError> {
    if hello.cluster_id != cfg.cluster_id {
        return Err(TransportError::WrongCluster {
            peer: hello.from,
            found: hello.cluster_id,
            expected: cfg.cluster_id,
        });
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(TransportError::UnsupportedProtocol {
            peer: hello.from,
            found: hello.protocol_version,
            supported: PROTOCOL_VERSION,
        });
    }
    if hello.from == NO_NODE || hello.from == cfg.node_id {
        return Err(TransportError::InvalidPeerId {
            peer: hello.from,
            local: cfg.node_id,
        });
    }
    Ok(hello.from)
}

/// Reads until one whole frame is buffered and decodes it, returning it with its size.
/// `Ok(None)` on a clean end of stream between frames. The buffer holds at most one frame of
/// `max_frame_bytes` plus one read: the decoder refuses larger frames from their header.
async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<(Frame, usize)>, TransportError> {
    loop {
        let before = buf.len();
        if let Some(frame) = decode_frame(buf, max_frame_bytes)? {
            return Ok(Some((frame, before - buf.len())));
        }
        buf.reserve(READ_CHUNK_BYTES);
        if stream.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(TransportError::ClosedMidFrame {
                buffered: buf.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_within_bounds() {
        let mut cfg = TransportConfig::new(1, 1);
        cfg.reconnect_backoff_min = Duration::from_millis(100);
        cfg.reconnect_backoff_max = Duration::from_secs(2);
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 0..40 {
            let d = backoff(&cfg, failures, &mut rng);
            assert!(
                d >= cfg.reconnect_backoff_min && d <= cfg.reconnect_backoff_max,
                "{d:?}"
            );
        }
        // The 4th attempt waits between 400 ms and 800 ms.
        let d = backoff(&cfg, 4, &mut rng);
        assert!(
            d >= Duration::from_millis(400) && d <= Duration::from_millis(800),
            "{d:?}"
        );
        // Far along, it is capped: between max / 2 and max.
        let d = backoff(&cfg, 30, &mut rng);
        assert!(
            d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
            "{d:?}"
        );
    }

    fn test_peer() -> Peer {
        Peer {
            id: 2,
            addr: watch::channel(SocketAddr::from(([127, 0, 0, 1], 1))).0,
            stop: watch::channel(false).0,
            queue: Mutex::new(PeerQueue::default()),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            counters: PeerCounters::default(),
        }
    }

    fn heartbeat(seq: u64) -> Envelope {
        Envelope {
            group: seq,
            msg: flotilla_raft::Message {
                from: 1,
                to: 2,
                term: 1,
                body: flotilla_raft::MessageBody::Heartbeat {
                    commit: seq,
                    read_seq: seq,
                },
            },
        }
    }

    fn push(peer: &Peer, seq: u64, not_before: Option<Instant>) {
        let env = heartbeat(seq);
        let bytes = env.encoded_len();
        let mut q = lock(&peer.queue);
        q.items.push_back(Queued {
            item: Outgoing::Env(env),
            bytes,
            not_before,
        });
        q.bytes += bytes;
    }

    fn seqs(batch: &[Envelope]) -> Vec<u64> {
        batch.iter().map(|e| e.group).collect()
    }

    #[test]
    fn stream_messages_leave_the_queue_alone_and_in_order() {
        let peer = test_peer();
        push(&peer, 1, None);
        let ack = StreamMsg::Ack(crate::codec::SnapshotAck {
            group: 9,
            term: 1,
            snapshot_index: 5,
            snapshot_term: 1,
            received_offset: 0,
        });
        {
            let mut q = lock(&peer.queue);
            let bytes = ack.frame_len();
            q.items.push_back(Queued {
                item: Outgoing::Stream(ack.clone()),
                bytes,
                not_before: None,
            });
            q.bytes += bytes;
        }
        push(&peer, 2, None);
        let now = Instant::now();
        assert_eq!(peer.take_stream(now), None, "an envelope is ahead of it");
        let (batch, wait) = peer.take_batch(1 << 20, now);
        assert_eq!(
            (seqs(&batch), wait),
            (vec![1], None),
            "the batch stops at it"
        );
        assert_eq!(peer.take_stream(now), Some(ack));
        let (batch, _) = peer.take_batch(1 << 20, now);
        assert_eq!(seqs(&batch), vec![2]);
        assert_eq!(lock(&peer.queue).bytes, 0);
    }

    #[test]
    fn take_batch_coalesces_up_to_max_batch_bytes_but_always_takes_one() {
        let peer = test_peer();
        let one = heartbeat(0).encoded_len();
        for seq in 0..10 {
            push(&peer, seq, None);
        }
        let now = Instant::now();
        assert_eq!(seqs(&peer.take_batch(3 * one, now).0), [0, 1, 2]);
        assert_eq!(
            seqs(&peer.take_batch(1, now).0),
            [3],
            "an envelope over the target goes alone"
        );
        assert_eq!(
            seqs(&peer.take_batch(usize::MAX, now).0),
            [4, 5, 6, 7, 8, 9]
        );
        let q = lock(&peer.queue);
        assert_eq!((q.items.len(), q.bytes), (0, 0));
    }

    #[test]
    fn take_batch_holds_a_delayed_head_and_everything_behind_it() {
        let peer = test_peer();
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        push(&peer, 0, None);
        push(&peer, 1, Some(later));
        push(&peer, 2, None);
        assert_eq!(peer.take_batch(usize::MAX, now), (vec![heartbeat(0)], None));
        assert_eq!(peer.take_batch(usize::MAX, now), (vec![], Some(later)));
        assert_eq!(seqs(&peer.take_batch(usize::MAX, later).0), [1, 2]);
    }

    #[test]
    fn config_bounds_are_validated() {
        assert!(TransportConfig::new(1, 1).validate().is_ok());
        assert!(TransportConfig::new(0, 1).validate().is_err());
        let mut cfg = TransportConfig::new(1, 1);
        cfg.max_batch_bytes = cfg.max_frame_bytes + 1;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("max_batch_bytes"), "{err}");
        let mut cfg = TransportConfig::new(1, 1);
        cfg.reconnect_backoff_min = Duration::from_secs(10);
        assert!(cfg.validate().is_err());
        let mut cfg = TransportConfig::new(1, 1);
        cfg.max_frame_bytes = 16;
        cfg.max_batch_bytes = 16;
        assert!(cfg.validate().is_err(), "no room for an envelope");
    }
}
