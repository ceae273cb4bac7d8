//! The peer transport over real TCP on 127.0.0.1.
//!
//! Correctness never depends on sleeping: tests wait for an expected event with a generous
//! deadline (`DEADLINE`) and fail if it does not come. The only timed waits are short polls
//! used to pace retries.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use flotilla_engine::codec::{encode_frame, Envelope, Frame, GroupId, Hello, PROTOCOL_VERSION};
use flotilla_engine::transport::{
    Inbound, LinkFault, SendError, Transport, TransportConfig, TransportStats,
};
use flotilla_raft::{Entry, EntryKind, Message, MessageBody, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, Instant};

const CLUSTER: u64 = 0xF107;
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn config(node: NodeId) -> TransportConfig {
    let mut cfg = TransportConfig::new(node, CLUSTER);
    cfg.max_frame_bytes = 1 << 20;
    cfg.max_batch_bytes = 64 << 10;
    cfg.reconnect_backoff_min = Duration::from_millis(10);
    cfg.reconnect_backoff_max = Duration::from_millis(100);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg
}

async fn start_with(cfg: TransportConfig) -> (Transport, Receiver<Inbound>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Transport::start(cfg, listener).unwrap()
}

async fn start(node: NodeId) -> (Transport, Receiver<Inbound>) {
    start_with(config(node)).await
}

/// A message from `from` to `to` in `group` whose `seq` identifies it.
fn msg(group: GroupId, from: NodeId, to: NodeId, seq: u64) -> Envelope {
    let body = if seq % 3 == 0 {
        MessageBody::Append {
            prev_index: seq,
            prev_term: 1,
            entries: vec![Entry {
                term: 2,
                index: seq + 1,
                kind: EntryKind::Normal,
                data: Bytes::from(format!("group {group} entry {seq}")),
            }],
            commit: seq,
        }
    } else {
        MessageBody::Heartbeat {
            commit: seq,
            read_seq: seq,
        }
    };
    Envelope {
        group,
        msg: Message {
            from,
            to,
            term: 2,
            body,
        },
    }
}

/// Receives batches until `n` envelopes have arrived (or the deadline passes), flattening them
/// into `(sender, envelope)` in arrival order.
async fn recv_n(rx: &mut Receiver<Inbound>, n: usize) -> Vec<(NodeId, Envelope)> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} envelopes arrived in time", got.len()))
            .expect("transport closed the inbound channel");
        got.extend(batch.envelopes.into_iter().map(|e| (batch.from, e)));
    }
    assert_eq!(got.len(), n, "more envelopes than sent arrived");
    got
}

/// Waits until `check` holds for the transport's stats.
async fn wait_for_stats(t: &Transport, what: &str, check: impl Fn(&TransportStats) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = t.stats();
        if check(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An address nothing listens on (a port we bound and released).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Asserts the server closes `stream` (EOF or reset) within the deadline.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match timeout(DEADLINE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("server wrote {n} bytes instead of closing"),
        Err(_) => panic!("server did not close the connection"),
    }
}

#[tokio::test]
async fn two_nodes_exchange_batches_for_many_groups_in_order_and_intact() {
    init_tracing();
    let (a, mut a_rx) = start(1).await;
    let (b, mut b_rx) = start(2).await;
    a.set_peer(2, b.local_addr());
    b.set_peer(1, a.local_addr());

    // 64 groups x 20 messages each way, sent in calls of varying size.
    let mut a_to_b = Vec::new();
    let mut b_to_a = Vec::new();
    for seq in 0..20 {
        for group in 0..64 {
            a_to_b.push(msg(group, 1, 2, seq));
            b_to_a.push(msg(group, 2, 1, seq));
        }
    }
    for (i, chunk) in a_to_b.chunks(37).enumerate() {
        a.send(2, chunk.to_vec()).unwrap();
        b.send(1, b_to_a[i * 37..(i * 37 + chunk.len())].to_vec())
            .unwrap();
    }

    let at_b = recv_n(&mut b_rx, a_to_b.len()).await;
    let at_a = recv_n(&mut a_rx, b_to_a.len()).await;
    assert!(at_b.iter().all(|(from, _)| *from == 1));
    assert!(at_a.iter().all(|(from, _)| *from == 2));
    assert_eq!(at_b.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), a_to_b);
    assert_eq!(at_a.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), b_to_a);

    // Everything was queued before the writer ran, so it travelled in few frames.
    let sent = &a.stats().peers[&2];
    assert_eq!(sent.msgs_sent, a_to_b.len() as u64);
    assert!(sent.frames_sent < sent.msgs_sent / 10, "{sent:?}");
    assert_eq!((sent.queued_msgs, sent.queued_bytes), (0, 0));
    wait_for_stats(&b, "receive counters", |s| {
        s.received.get(&1).map(|r| r.msgs) == Some(a_to_b.len() as u64)
    })
    .await;

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn three_nodes_in_a_full_mesh_deliver_in_order_per_sender() {
    init_tracing();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(t, _)| t.local_addr()).collect();
    for (i, (t, _)) in nodes.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i != j {
                t.set_peer(j as NodeId + 1, *addr);
            }
        }
    }
    const PER_PEER: u64 = 300;
    for seq in 0..PER_PEER {
        for (i, (t, _)) in nodes.iter().enumerate() {
            let from = i as NodeId + 1;
            for to in (1..=3).filter(|to| *to != from) {
                t.send(to, vec![msg(seq % 16, from, to, seq)]).unwrap();
            }
        }
        if seq % 50 == 0 {
            tokio::task::yield_now().await; // let writers run mid-stream too
        }
    }
    for (i, (_, rx)) in nodes.iter_mut().enumerate() {
        let me = i as NodeId + 1;
        let got = recv_n(rx, 2 * PER_PEER as usize).await;
        for from in (1..=3).filter(|from| *from != me) {
            let from_peer: Vec<Envelope> = got
                .iter()
                .filter(|(f, _)| *f == from)
                .map(|(_, e)| e.clone())
                .collect();
            let expected: Vec<Envelope> = (0..PER_PEER)
                .map(|seq| msg(seq % 16, from, me, seq))
                .collect();
            assert_eq!(from_peer, expected, "node {me} from {from}");
        }
    }
    for (t, _) in &nodes {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn delivery_resumes_after_the_peer_restarts() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let (b, mut b_rx) = start(2).await;
    let b_addr = b.local_addr();
    a.set_peer(2, b_addr);
    a.send(2, vec![msg(7, 1, 2, 0)]).unwrap();
    assert_eq!(recv_n(&mut b_rx, 1).await[0].1, msg(7, 1, 2, 0));

    b.shutdown().await;
    drop(b_rx);
    wait_for_stats(&a, "a to notice the lost connection", |s| {
        !s.peers[&2].connected
    })
    .await;

    // Restart on the same port if the OS lets us; otherwise tell `a` the new address.
    let (b2, mut b2_rx) = match TcpListener::bind(b_addr).await {
        Ok(listener) => Transport::start(config(2), listener).unwrap(),
        Err(_) => {
            let restarted = start(2).await;
            a.set_peer(2, restarted.0.local_addr());
            restarted
        }
    };

    // Messages sent while the connection was down or breaking may be lost (Raft retransmits);
    // keep sending until one gets through, then everything after it arrives in order.
    let deadline = Instant::now() + DEADLINE;
    let mut seq = 1;
    let mut got: Vec<Envelope> = loop {
        assert!(
            Instant::now() < deadline,
            "delivery did not resume: {:#?}",
            a.stats()
        );
        a.send(2, vec![msg(7, 1, 2, seq)]).unwrap();
        seq += 1;
        if let Ok(Some(batch)) = timeout(POLL, b2_rx.recv()).await {
            break batch.envelopes;
        }
    };
    for later in seq..seq + 50 {
        a.send(2, vec![msg(7, 1, 2, later)]).unwrap();
    }
    let (MessageBody::Heartbeat {
        commit: first_seq, ..
    }
    | MessageBody::Append {
        commit: first_seq, ..
    }) = got[0].msg.body
    else {
        panic!("unexpected body {:?}", got[0]);
    };
    let remaining = (seq + 50 - first_seq) as usize - got.len();
    got.extend(
        recv_n(&mut b2_rx, remaining)
            .await
            .into_iter()
            .map(|(_, e)| e),
    );
    let expected: Vec<Envelope> = (first_seq..seq + 50).map(|s| msg(7, 1, 2, s)).collect();
    assert_eq!(
        got, expected,
        "from the first delivered message on, nothing is lost or reordered"
    );
    let stats = &a.stats().peers[&2];
    assert!(stats.reconnects >= 1, "{stats:?}");

    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn queue_for_a_down_peer_fills_up_and_then_refuses() {
    init_tracing();
    let mut cfg = config(1);
    cfg.max_queue_msgs_per_peer = 100;
    cfg.max_queue_bytes_per_peer = 1 << 30;
    let (a, _rx) = start_with(cfg).await;
    a.set_peer(2, dead_addr().await);

    // The message-count bound.
    for seq in 0..100 {
        a.send(2, vec![msg(1, 1, 2, seq)]).unwrap();
    }
    let err = a.send(2, vec![msg(1, 1, 2, 100)]).unwrap_err();
    assert!(
        matches!(
            err,
            SendError::QueueFull {
                peer: 2,
                queued_msgs: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("max_queue_msgs_per_peer = 100"),
        "{err}"
    );
    let stats = &a.stats().peers[&2];
    assert_eq!((stats.queued_msgs, stats.dropped_queue_full), (100, 1));
    wait_for_stats(&a, "connect failures", |s| {
        s.peers[&2].connect_failures >= 2
    })
    .await;
    assert_eq!(
        a.stats().peers[&2].queued_msgs,
        100,
        "kept while disconnected"
    );
    a.shutdown().await;

    // The byte bound, with big messages.
    let mut cfg = config(1);
    cfg.max_queue_msgs_per_peer = 1_000_000;
    cfg.max_queue_bytes_per_peer = 256 << 10;
    let (a, _rx) = start_with(cfg).await;
    a.set_peer(2, dead_addr().await);
    let big = |seq| {
        let mut e = msg(1, 1, 2, 0);
        if let MessageBody::Append { entries, .. } = &mut e.msg.body {
            entries[0].data = Bytes::from(vec![seq as u8; 10_000]);
        }
        e
    };
    let mut accepted = 0;
    let err = loop {
        match a.send(2, vec![big(accepted)]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "queue never filled");
    };
    assert!(matches!(err, SendError::QueueFull { .. }), "{err}");
    let stats = &a.stats().peers[&2];
    assert!(stats.queued_bytes <= 256 << 10, "{stats:?}");
    assert_eq!(stats.queued_msgs, accepted);
    assert!(accepted >= 20, "{accepted}");
    a.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_fills_the_queue_instead_of_memory() {
    init_tracing();
    let mut cfg = config(1);
    cfg.max_queue_msgs_per_peer = 1_000_000;
    cfg.max_queue_bytes_per_peer = 1 << 20;
    let (a, _rx) = start_with(cfg).await;
    // Accepts the connection, then never reads from it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    a.set_peer(2, silent.local_addr().unwrap());
    let (_held, _) = timeout(DEADLINE, silent.accept()).await.unwrap().unwrap();
    let payload = Bytes::from(vec![0u8; 60_000]);
    let deadline = Instant::now() + DEADLINE;
    let mut sent = 0u64;
    loop {
        let mut e = msg(1, 1, 2, 0);
        if let MessageBody::Append { entries, .. } = &mut e.msg.body {
            entries[0].data = payload.clone();
        }
        match a.send(2, vec![e]) {
            Ok(()) => sent += 1,
            Err(SendError::QueueFull { queued_bytes, .. }) => {
                assert!(queued_bytes <= 1 << 20);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "queue never filled after {sent} sends"
        );
        tokio::task::yield_now().await;
        if sent % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // let the writer hit the socket
        }
    }
    a.shutdown().await;
}

#[tokio::test]
async fn link_fault_drop_drops_and_delay_delays_in_order() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let (b, mut b_rx) = start(2).await;
    a.set_peer(2, b.local_addr());

    a.set_link_fault(2, LinkFault::Drop);
    for seq in 0..10 {
        a.send(2, vec![msg(seq % 3, 1, 2, seq)]).unwrap();
    }
    assert_eq!(a.stats().peers[&2].dropped_fault, 10);
    a.set_link_fault(2, LinkFault::None);
    for seq in 10..20 {
        a.send(2, vec![msg(seq % 3, 1, 2, seq)]).unwrap();
    }
    a.set_link_fault(2, LinkFault::Delay(Duration::from_millis(150)));
    for seq in 20..30 {
        a.send(2, vec![msg(seq % 3, 1, 2, seq)]).unwrap();
    }
    // Undelayed messages sent after delayed ones still queue behind them.
    a.set_link_fault(2, LinkFault::None);
    for seq in 30..40 {
        a.send(2, vec![msg(seq % 3, 1, 2, seq)]).unwrap();
    }
    let got = recv_n(&mut b_rx, 30).await;
    let expected: Vec<Envelope> = (10..40).map(|seq| msg(seq % 3, 1, 2, seq)).collect();
    assert_eq!(
        got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        expected
    );
    assert!(
        timeout(POLL, b_rx.recv()).await.is_err(),
        "dropped messages must not arrive"
    );

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn hello_with_the_wrong_cluster_id_is_refused() {
    init_tracing();
    let (b, mut b_rx) = start(2).await;

    // By hand: a well-formed Hello for another cluster gets the connection closed.
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::Hello(Hello {
            cluster_id: CLUSTER + 1,
            from: 9,
            protocol_version: PROTOCOL_VERSION,
        }),
        &mut buf,
    );
    raw.write_all(&buf).await.unwrap();
    assert_closed_by_server(&mut raw).await;

    // A wrong protocol version likewise.
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    buf.clear();
    encode_frame(
        &Frame::Hello(Hello {
            cluster_id: CLUSTER,
            from: 9,
            protocol_version: PROTOCOL_VERSION + 1,
        }),
        &mut buf,
    );
    raw.write_all(&buf).await.unwrap();
    assert_closed_by_server(&mut raw).await;

    // And a real transport configured for another cluster never gets a message through.
    let (c, _c_rx) = start_with(TransportConfig::new(3, CLUSTER + 1)).await;
    c.set_peer(2, b.local_addr());
    c.send(2, vec![msg(1, 3, 2, 0)]).unwrap();
    wait_for_stats(&b, "three refused connections", |s| {
        s.inbound_connections_failed >= 3
    })
    .await;
    assert!(b.stats().received.is_empty());
    assert!(timeout(POLL, b_rx.recv()).await.is_err());

    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn garbage_on_one_connection_closes_it_without_affecting_others() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let (b, mut b_rx) = start(2).await;
    a.set_peer(2, b.local_addr());
    a.send(2, vec![msg(1, 1, 2, 0)]).unwrap();
    recv_n(&mut b_rx, 1).await;

    // Not a frame at all.
    let mut http = TcpStream::connect(b.local_addr()).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed_by_server(&mut http).await;

    // A valid Hello, then a frame whose payload fails its checksum.
    let mut corrupt = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::Hello(Hello {
            cluster_id: CLUSTER,
            from: 5,
            protocol_version: PROTOCOL_VERSION,
        }),
        &mut buf,
    );
    let hello_len = buf.len();
    encode_frame(
        &Frame::Batch {
            from: 5,
            envelopes: vec![msg(1, 5, 2, 0)],
        },
        &mut buf,
    );
    let last = buf.len() - 1;
    buf[last] ^= 0xFF;
    assert!(buf.len() > hello_len);
    corrupt.write_all(&buf).await.unwrap();
    assert_closed_by_server(&mut corrupt).await;

    // A header declaring a frame beyond max_frame_bytes is refused without waiting for it.
    let mut huge = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut header = BytesMut::new();
    header.put_slice(b"FLTP");
    header.put_u8(1);
    header.put_u8(1);
    header.put_u16_le(0);
    header.put_u32_le(u32::MAX);
    header.put_u32_le(0);
    huge.write_all(&header).await.unwrap();
    assert_closed_by_server(&mut huge).await;

    // The healthy connection is unaffected.
    for seq in 1..=20 {
        a.send(2, vec![msg(seq, 1, 2, seq)]).unwrap();
    }
    let got = recv_n(&mut b_rx, 20).await;
    let expected: Vec<Envelope> = (1..=20).map(|seq| msg(seq, 1, 2, seq)).collect();
    assert_eq!(
        got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        expected
    );
    let stats = b.stats();
    assert_eq!(stats.inbound_connections_failed, 3, "{stats:#?}");
    assert_eq!(
        a.stats().peers[&2].connects,
        1,
        "a's connection was never disturbed"
    );

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn send_reports_unknown_peers_oversized_envelopes_and_shutdown() {
    init_tracing();
    let (a, _rx) = start(1).await;
    assert_eq!(
        a.send(9, vec![msg(1, 1, 9, 0)]),
        Err(SendError::UnknownPeer { peer: 9 })
    );
    a.set_peer(2, dead_addr().await);
    let mut e = msg(1, 1, 2, 0);
    if let MessageBody::Append { entries, .. } = &mut e.msg.body {
        entries[0].data = Bytes::from(vec![0u8; 1 << 20]);
    }
    assert!(matches!(
        a.send(2, vec![e]),
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(a.stats().peers[&2].queued_msgs, 0);
    a.remove_peer(2);
    assert_eq!(
        a.send(2, vec![msg(1, 1, 2, 0)]),
        Err(SendError::UnknownPeer { peer: 2 })
    );
    a.shutdown().await;
    assert_eq!(a.send(2, vec![msg(1, 1, 2, 0)]), Err(SendError::ShutDown));
}

#[tokio::test]
async fn a_consumer_behind_a_one_batch_channel_slows_the_sender_but_loses_nothing() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let mut cfg = config(2);
    cfg.inbound_queue_batches = 1;
    let (b, mut b_rx) = start_with(cfg).await;
    a.set_peer(2, b.local_addr());
    // b's consumer is not reading; everything a sends still arrives, in order, once it does.
    const N: u64 = 2000;
    for seq in 0..N {
        a.send(2, vec![msg(seq % 8, 1, 2, seq)]).unwrap();
        if seq % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let got = recv_n(&mut b_rx, N as usize).await;
    let expected: Vec<Envelope> = (0..N).map(|seq| msg(seq % 8, 1, 2, seq)).collect();
    assert_eq!(
        got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        expected
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn inbound_connections_beyond_the_limit_wait_until_a_slot_frees() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let mut cfg = config(2);
    cfg.max_inbound_connections = 1;
    let (b, mut b_rx) = start_with(cfg).await;

    // A hand-made peer takes the only slot and idles after its Hello.
    let mut squatter = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    encode_frame(
        &Frame::Hello(Hello {
            cluster_id: CLUSTER,
            from: 5,
            protocol_version: PROTOCOL_VERSION,
        }),
        &mut buf,
    );
    squatter.write_all(&buf).await.unwrap();
    wait_for_stats(&b, "the squatter to be served", |s| {
        s.inbound_connections_active == 1
    })
    .await;

    a.set_peer(2, b.local_addr());
    a.send(2, vec![msg(1, 1, 2, 0)]).unwrap();
    // a's connection sits in the listen backlog: connected at TCP level, but not served.
    wait_for_stats(&a, "a to connect", |s| s.peers[&2].connected).await;
    assert!(
        timeout(POLL * 5, b_rx.recv()).await.is_err(),
        "served beyond the limit"
    );
    assert_eq!(b.stats().inbound_connections_accepted, 1);

    drop(squatter);
    let got = recv_n(&mut b_rx, 1).await;
    assert_eq!(got[0], (1, msg(1, 1, 2, 0)));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn set_peer_with_a_new_address_moves_the_connection_and_keeps_the_queue() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let (old, mut old_rx) = start(2).await;
    a.set_peer(2, old.local_addr());
    a.send(2, vec![msg(1, 1, 2, 0)]).unwrap();
    recv_n(&mut old_rx, 1).await;

    let (new, mut new_rx) = start(2).await;
    a.set_peer(2, new.local_addr());
    for seq in 1..=30 {
        a.send(2, vec![msg(seq, 1, 2, seq)]).unwrap();
    }
    let got = recv_n(&mut new_rx, 30).await;
    let expected: Vec<Envelope> = (1..=30).map(|seq| msg(seq, 1, 2, seq)).collect();
    assert_eq!(
        got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        expected
    );
    assert!(
        timeout(POLL, old_rx.recv()).await.is_err(),
        "nothing more goes to the old address"
    );
    assert_eq!(a.stats().peers[&2].addr, new.local_addr());

    a.shutdown().await;
    old.shutdown().await;
    new.shutdown().await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_transport() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    let (b, mut b_rx) = start(2).await;
    let b2 = b.clone();
    a.set_peer(2, b.local_addr());
    a.send(2, vec![msg(1, 1, 2, 0)]).unwrap();
    recv_n(&mut b_rx, 1).await;

    drop(b);
    assert!(
        b2.stats().inbound_connections_active == 1,
        "a clone keeps it running"
    );
    drop(b2); // like a crashed node: no shutdown call
              // Its tasks end, so the inbound channel closes and a sees its connection go.
    let closed = timeout(DEADLINE, b_rx.recv())
        .await
        .expect("inbound channel did not close");
    assert!(closed.is_none());
    wait_for_stats(&a, "a to notice", |s| !s.peers[&2].connected).await;
    a.shutdown().await;
}

#[tokio::test]
async fn batches_stay_within_max_frame_bytes_even_when_max_batch_bytes_equals_it() {
    init_tracing();
    let small = |node| {
        let mut cfg = config(node);
        cfg.max_frame_bytes = 4096;
        cfg.max_batch_bytes = 4096;
        cfg
    };
    let (a, _a_rx) = start_with(small(1)).await;
    let (b, mut b_rx) = start_with(small(2)).await;
    a.set_peer(2, b.local_addr());
    let sent: Vec<Envelope> = (0..1000).map(|seq| msg(seq % 50, 1, 2, seq)).collect();
    for chunk in sent.chunks(100) {
        a.send(2, chunk.to_vec()).unwrap();
    }
    let got = recv_n(&mut b_rx, sent.len()).await;
    assert_eq!(got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), sent);
    let stats = b.stats();
    assert_eq!(stats.inbound_connections_failed, 0, "{stats:#?}");
    let received = &stats.received[&1];
    assert!(
        received.frames > 1 && received.bytes <= received.frames * 4096,
        "{received:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn messages_queued_while_the_peer_is_unreachable_are_delivered_once_it_is() {
    init_tracing();
    let (a, _a_rx) = start(1).await;
    a.set_peer(2, dead_addr().await);
    let queued: Vec<Envelope> = (0..50).map(|seq| msg(seq % 5, 1, 2, seq)).collect();
    for e in &queued {
        a.send(2, vec![e.clone()]).unwrap();
    }
    wait_for_stats(&a, "a few failed connects", |s| {
        s.peers[&2].connect_failures >= 3
    })
    .await;
    assert_eq!(a.stats().peers[&2].queued_msgs, 50);

    let (b, mut b_rx) = start(2).await;
    a.set_peer(2, b.local_addr());
    let got = recv_n(&mut b_rx, 50).await;
    assert_eq!(got.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), queued);
    let stats = &a.stats().peers[&2];
    assert_eq!(
        (stats.dropped_queue_full, stats.dropped_unsent),
        (0, 0),
        "{stats:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
