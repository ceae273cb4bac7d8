//! Snapshot streaming: how the consensus loop ships a snapshot image larger than
//! `snapshot_chunk_bytes` to one replica, and reassembles one it receives.
//!
//! The Raft core is unaware of it: it still emits a whole `MessageBody::Snapshot` and still
//! consumes one. The leader's loop intercepts the message, streams the image in chunks (at
//! most `max_inflight_snapshot_chunks` unacknowledged), and reports the outcome with
//! `report_snapshot`. The receiver's loop accumulates chunks strictly in offset order, acks
//! each with the offset it holds, and steps the reassembled message into the group.
//!
//! Loss is repaired by the sender: a stream that heard no ack for
//! `snapshot_retransmit_ticks` re-sends from the last acknowledged offset (resume, not
//! restart); a receiver that lost its buffer answers offset 0 and the sender starts over.

use super::*;

/// An outgoing stream to one replica of one group.
pub(crate) struct OutStream {
    /// The leader's term when the core emitted the snapshot.
    term: Term,
    snapshot: Snapshot,
    /// The receiver holds `0..acked`.
    acked: u64,
    /// Next offset to send.
    next: u64,
    /// Times the chunk at offset 0 was sent.
    zero_sends: u64,
    last_progress: Instant,
    last_send: Instant,
}

/// An incoming stream being reassembled.
pub(crate) struct InStream {
    to: NodeId,
    term: Term,
    meta: SnapshotMeta,
    total_len: u64,
    data: BytesMut,
    /// When the last chunk arrived: a stream silent for `snapshot_stream_timeout` is
    /// dropped (its sender gave up or is no longer leader), freeing its buffer.
    last_chunk: Instant,
}

fn same_snapshot(a: &SnapshotMeta, index: Index, term: Term) -> bool {
    a.index == index && a.term == term
}

impl Loop {
    /// Starts streaming the snapshot in `msg` (a `MessageBody::Snapshot` too big to travel
    /// whole). Called outside `ready`/`advance`, so it may report to the core.
    pub(super) fn start_stream(&mut self, group: GroupId, msg: Message, now: Instant) {
        let to = msg.to;
        let key = (group, to);
        let MessageBody::Snapshot { snapshot } = msg.body else {
            unreachable!("only snapshot messages are streamed");
        };
        if let Some(s) = self.out_streams.get(&key) {
            if s.term == msg.term
                && same_snapshot(&s.snapshot.meta, snapshot.meta.index, snapshot.meta.term)
            {
                // The core re-sent the snapshot it is already streaming (its wait for the
                // snapshot timed out): keep the stream and its progress.
                return;
            }
            // A newer snapshot (or term) replaces the old stream.
            self.out_streams.remove(&key);
            bump(&self.stream_stats.streams_failed, 1);
        }
        if self.out_streams.len() >= self.cfg.max_snapshot_streams {
            tracing::warn!(
                group,
                peer = to,
                max_snapshot_streams = self.cfg.max_snapshot_streams,
                "too many outgoing snapshot streams; failing this one (raft retries)"
            );
            bump(&self.stream_stats.streams_failed, 1);
            self.report_snapshot(group, to, false);
            return;
        }
        tracing::info!(
            group,
            peer = to,
            index = snapshot.meta.index,
            bytes = snapshot.data.len(),
            "streaming snapshot"
        );
        bump(&self.stream_stats.streams_started, 1);
        self.out_streams.insert(
            key,
            OutStream {
                term: msg.term,
                snapshot,
                acked: 0,
                next: 0,
                zero_sends: 0,
                last_progress: now,
                last_send: now,
            },
        );
        self.pump_stream(key, now);
    }

    /// Sends chunks of the stream `key` while its window allows.
    fn pump_stream(&mut self, key: (GroupId, NodeId), now: Instant) {
        let (group, to) = key;
        let chunk_bytes = self.cfg.snapshot_chunk_bytes as u64;
        let window_bytes = chunk_bytes * self.cfg.max_inflight_snapshot_chunks as u64;
        let Some(s) = self.out_streams.get_mut(&key) else {
            return;
        };
        let total = s.snapshot.data.len() as u64;
        let mut too_large = false;
        while s.next < total && s.next < s.acked + window_bytes {
            let end = (s.next + chunk_bytes).min(total);
            let chunk = SnapshotChunk {
                group,
                to,
                term: s.term,
                meta: s.snapshot.meta.clone(),
                offset: s.next,
                total_len: total,
                data: s.snapshot.data.slice(s.next as usize..end as usize),
            };
            match self.net.send_stream(to, StreamMsg::Chunk(chunk)) {
                Ok(()) => {
                    if s.next == 0 {
                        s.zero_sends += 1;
                        if s.zero_sends > 1 {
                            bump(&self.stream_stats.restarted_from_zero, 1);
                        }
                    }
                    bump(&self.stream_stats.chunks_sent, 1);
                    bump(&self.stream_stats.chunk_bytes_sent, end - s.next);
                    s.next = end;
                    s.last_send = now;
                }
                Err(e @ crate::network::SendError::TooLarge { .. }) => {
                    tracing::error!(
                        group,
                        peer = to,
                        error = %e,
                        "snapshot chunk can never be sent: lower snapshot_chunk_bytes"
                    );
                    too_large = true;
                    break;
                }
                Err(e) => {
                    // Full queue or unknown peer: the retransmit timer tries again.
                    tracing::debug!(group, peer = to, error = %e, "snapshot chunk not sent");
                    break;
                }
            }
        }
        if too_large {
            self.finish_stream(key, false);
        }
    }

    /// Ends the stream `key` and tells the core how it went.
    fn finish_stream(&mut self, key: (GroupId, NodeId), success: bool) {
        if self.out_streams.remove(&key).is_none() {
            return;
        }
        let counter = if success {
            &self.stream_stats.streams_completed
        } else {
            &self.stream_stats.streams_failed
        };
        bump(counter, 1);
        self.report_snapshot(key.0, key.1, success);
    }

    fn report_snapshot(&mut self, group: GroupId, to: NodeId, success: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.report_snapshot(to, success);
            self.dirty.insert(group);
        }
    }

    /// A receiver reports how much of a stream it holds.
    pub(super) fn on_ack(&mut self, from: NodeId, ack: SnapshotAck, now: Instant) {
        let key = (ack.group, from);
        let Some(s) = self.out_streams.get_mut(&key) else {
            return;
        };
        if !same_snapshot(&s.snapshot.meta, ack.snapshot_index, ack.snapshot_term) {
            return; // about an older stream
        }
        let total = s.snapshot.data.len() as u64;
        if ack.received_offset >= total {
            tracing::info!(
                group = ack.group,
                peer = from,
                bytes = total,
                "snapshot streamed"
            );
            self.finish_stream(key, true);
            return;
        }
        if ack.received_offset > s.acked {
            s.acked = ack.received_offset;
            s.next = s.next.max(s.acked);
            s.last_progress = now;
        } else if ack.received_offset < s.acked {
            // Acks arrive in order and only grow while the receiver keeps its buffer: it
            // lost it (restarted). Go back to what it holds.
            tracing::info!(
                group = ack.group,
                peer = from,
                offset = ack.received_offset,
                "snapshot receiver lost its buffer; re-sending from its offset"
            );
            s.acked = ack.received_offset;
            s.next = ack.received_offset;
            s.last_progress = now;
        }
        self.pump_stream(key, now);
    }

    /// Per tick: abandons stalled streams, retransmits from the acknowledged offset.
    pub(super) fn tick_streams(&mut self, now: Instant) {
        self.expire_in_streams(now);
        let retransmit = self.cfg.tick_interval * self.cfg.snapshot_retransmit_ticks;
        let keys: Vec<(GroupId, NodeId)> = self.out_streams.keys().copied().collect();
        for key in keys {
            let leading = self
                .groups
                .get(&key.0)
                .is_some_and(|g| g.raw.role() == Role::Leader);
            if !leading {
                // Only a leader sends snapshots; the new leader (or none) decides anew.
                self.out_streams.remove(&key);
                bump(&self.stream_stats.streams_failed, 1);
                continue;
            }
            let s = self.out_streams.get_mut(&key).expect("listed");
            if now.saturating_duration_since(s.last_progress) >= self.cfg.snapshot_stream_timeout {
                tracing::warn!(
                    group = key.0,
                    peer = key.1,
                    acked = s.acked,
                    timeout_ms = self.cfg.snapshot_stream_timeout.as_millis() as u64,
                    "snapshot stream made no progress; abandoning it"
                );
                self.finish_stream(key, false);
                continue;
            }
            let last = s.last_send.max(s.last_progress);
            if now.saturating_duration_since(last) >= retransmit {
                if s.next > s.acked && s.acked > 0 {
                    bump(&self.stream_stats.resumed_from_offset, 1);
                }
                tracing::debug!(
                    group = key.0,
                    peer = key.1,
                    offset = s.acked,
                    "resending snapshot chunks"
                );
                s.next = s.acked;
                self.pump_stream(key, now);
            }
        }
    }

    /// Frees the buffers of incoming streams whose sender went quiet.
    fn expire_in_streams(&mut self, now: Instant) {
        let timeout = self.cfg.snapshot_stream_timeout;
        self.in_streams.retain(|&(group, from), s| {
            let alive = now.saturating_duration_since(s.last_chunk) < timeout;
            if !alive {
                tracing::warn!(
                    group,
                    peer = from,
                    held = s.data.len(),
                    "incoming snapshot stream went quiet; dropping its buffer"
                );
            }
            alive
        });
    }

    /// Forgets every stream of a stopped group.
    pub(super) fn drop_streams(&mut self, group: GroupId) {
        self.out_streams.retain(|k, _| k.0 != group);
        self.in_streams.retain(|k, _| k.0 != group);
        self.installed.retain(|k, _| k.0 != group);
    }

    fn send_ack(&self, to: NodeId, chunk: &SnapshotChunk, received_offset: u64) {
        let ack = SnapshotAck {
            group: chunk.group,
            term: chunk.term,
            snapshot_index: chunk.meta.index,
            snapshot_term: chunk.meta.term,
            received_offset,
        };
        if let Err(e) = self.net.send_stream(to, StreamMsg::Ack(ack)) {
            tracing::debug!(group = chunk.group, peer = to, error = %e, "snapshot ack not sent");
        }
    }

    /// A chunk of a snapshot a leader streams to this node.
    pub(super) fn on_chunk(&mut self, from: NodeId, chunk: SnapshotChunk) {
        bump(&self.stream_stats.chunks_received, 1);
        let group = chunk.group;
        let key = (group, from);
        if !self.groups.contains_key(&group) || chunk.to != self.cfg.node_id {
            return; // not ours: the leader will time the stream out
        }
        let (index, term) = (chunk.meta.index, chunk.meta.term);
        if let Some(&(i, t, len)) = self.installed.get(&key) {
            if i == index && t == term {
                // Already installed; our final ack was lost.
                self.send_ack(from, &chunk, len);
                return;
            }
        }
        if chunk.total_len > self.cfg.max_snapshot_bytes {
            self.in_streams.remove(&key);
            bump(&self.stream_stats.snapshots_refused, 1);
            if chunk.offset == 0 {
                tracing::error!(
                    group,
                    peer = from,
                    index,
                    bytes = chunk.total_len,
                    max_snapshot_bytes = self.cfg.max_snapshot_bytes,
                    "refusing snapshot stream: image exceeds max_snapshot_bytes"
                );
            }
            return;
        }
        let current = self
            .in_streams
            .get(&key)
            .is_some_and(|s| same_snapshot(&s.meta, index, term) && s.total_len == chunk.total_len);
        if !current {
            if chunk.offset != 0 {
                // Nothing of this stream here (we restarted, or it is newer): from the top.
                self.send_ack(from, &chunk, 0);
                return;
            }
            self.in_streams.remove(&key);
            if self.in_streams.len() >= self.cfg.max_snapshot_streams {
                bump(&self.stream_stats.snapshots_refused, 1);
                tracing::warn!(
                    group,
                    peer = from,
                    max_snapshot_streams = self.cfg.max_snapshot_streams,
                    "refusing snapshot stream: too many incoming streams"
                );
                return;
            }
            let stream = InStream {
                to: chunk.to,
                term: chunk.term,
                meta: chunk.meta.clone(),
                total_len: chunk.total_len,
                // Grown as chunks arrive, not reserved from a peer's claim.
                data: BytesMut::new(),
                last_chunk: Instant::now(),
            };
            self.in_streams.insert(key, stream);
        }
        let s = self.in_streams.get_mut(&key).expect("present");
        s.last_chunk = Instant::now();
        if chunk.offset == s.data.len() as u64 {
            s.data.extend_from_slice(&chunk.data);
        }
        // Otherwise a duplicate or a chunk after a gap: ignored, and the ack below tells the
        // sender where to resume.
        let held = s.data.len() as u64;
        let total_len = s.total_len;
        debug_assert!(
            held <= total_len,
            "the codec checks offset + len <= total_len"
        );
        self.send_ack(from, &chunk, held);
        if held < total_len {
            return;
        }
        let s = self.in_streams.remove(&key).expect("present");
        self.installed.insert(key, (index, term, s.total_len));
        bump(&self.stream_stats.snapshots_received, 1);
        tracing::info!(
            group,
            peer = from,
            index,
            bytes = s.total_len,
            "snapshot received"
        );
        let msg = Message {
            from,
            to: s.to,
            term: s.term,
            body: MessageBody::Snapshot {
                snapshot: Snapshot {
                    meta: s.meta,
                    data: s.data.freeze(),
                },
            },
        };
        self.wake(group, true);
        if let Some(g) = self.groups.get_mut(&group) {
            if let Err(e) = g.raw.step(msg) {
                tracing::warn!(group, error = %e, "step failed");
            }
            self.dirty.insert(group);
        }
    }
}
