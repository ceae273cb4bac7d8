//! Wire format of the peer transport: frames that carry batches of Raft messages for many groups.
//!
//! A frame is a fixed 16-byte header followed by a payload (all integers little endian):
//!
//! ```text
//! offset size field
//!      0    4 magic        b"FLTP"
//!      4    1 version      FRAME_VERSION (1)
//!      5    1 kind         1 = Hello, 2 = Batch, 3 = SnapshotChunk, 4 = SnapshotAck
//!      6    2 reserved     must be 0
//!      8    4 payload_len  bytes after the header
//!     12    4 crc32c       CRC-32C (Castagnoli) of the payload
//!     16    - payload
//! ```
//!
//! The payload layouts are documented in `docs/transport.md` (byte tables). The
//! encoding is canonical: every value has exactly one encoding, and the decoder refuses anything
//! else (booleans other than 0/1, configuration sets not in strictly ascending order, trailing
//! bytes), so a successfully decoded frame re-encodes to the same bytes.
//!
//! The decoder never panics on any input, checks the declared length against the caller's
//! `max_frame_bytes` before waiting for (or allocating) the payload, and verifies the checksum
//! before parsing a single payload byte. Entry and snapshot data are zero-copy slices of the
//! received payload: cheap, but a retained entry keeps its whole frame's buffer alive, so a
//! consumer that holds entries for long (an in-memory log) should copy them out.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flotilla_raft::{
    ConfState, Entry, EntryKind, Message, MessageBody, NodeId, RejectHint, Snapshot, SnapshotMeta,
};

/// Identifies a Raft group hosted by the engine.
pub type GroupId = u64;

/// The first four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"FLTP";
/// The frame format version this build writes and the only one it reads.
pub const FRAME_VERSION: u8 = 1;
/// The transport protocol version announced in [`Hello`]. Bumped when the meaning of messages
/// changes even if the frame layout does not.
pub const PROTOCOL_VERSION: u32 = 1;
/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Bytes a [`Frame::Batch`] payload spends besides its envelopes (`from` and the count).
pub const BATCH_OVERHEAD_BYTES: usize = 8 + 4;

const KIND_HELLO: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_SNAPSHOT_CHUNK: u8 = 3;
const KIND_SNAPSHOT_ACK: u8 = 4;

const TAG_PRE_VOTE: u8 = 1;
const TAG_PRE_VOTE_RESP: u8 = 2;
const TAG_VOTE: u8 = 3;
const TAG_VOTE_RESP: u8 = 4;
const TAG_APPEND: u8 = 5;
const TAG_APPEND_RESP: u8 = 6;
const TAG_HEARTBEAT: u8 = 7;
const TAG_HEARTBEAT_RESP: u8 = 8;
const TAG_SNAPSHOT: u8 = 9;
const TAG_TIMEOUT_NOW: u8 = 10;
const TAG_READ_INDEX: u8 = 11;
const TAG_READ_INDEX_RESP: u8 = 12;

const ENTRY_KIND_NORMAL: u8 = 0;
const ENTRY_KIND_CONF_CHANGE: u8 = 1;

/// Fixed part of an encoded entry: term, index, kind, data length.
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;
/// Fixed part of an encoded envelope: group, from, to, term, body tag.
const ENVELOPE_FIXED_BYTES: usize = 8 + 8 + 8 + 8 + 1;

/// One Raft message addressed to one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The group the message belongs to.
    pub group: GroupId,
    /// The message itself (its `to` is a node on the receiving host).
    pub msg: Message,
}

impl Envelope {
    /// Exact number of bytes this envelope occupies in a [`Frame::Batch`] payload.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_FIXED_BYTES + body_len(&self.msg.body)
    }
}

/// One piece of a snapshot streamed from a group's leader to one replica (see
/// `docs/engine.md`, "Snapshot streaming"). The receiver reassembles `total_len` bytes in
/// offset order and then steps the whole `Snapshot` message into the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The group.
    pub group: GroupId,
    /// The receiving replica (the reassembled message's `to`).
    pub to: NodeId,
    /// The leader's term when it sent the snapshot (the reassembled message's `term`).
    pub term: u64,
    /// Position and configuration of the snapshot (identical in every chunk of a stream).
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot image.
    pub offset: u64,
    /// Length of the whole image.
    pub total_len: u64,
    /// The bytes `offset..offset + data.len()` of the image.
    pub data: Bytes,
}

/// The receiver's answer to a [`SnapshotChunk`]: how much of the stream it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAck {
    /// The group.
    pub group: GroupId,
    /// The term of the chunk being answered.
    pub term: u64,
    /// Index of the snapshot being streamed.
    pub snapshot_index: u64,
    /// Term of the snapshot being streamed.
    pub snapshot_term: u64,
    /// Bytes of the image held, contiguous from 0 (`total_len` once complete); the sender
    /// resumes from here.
    pub received_offset: u64,
}

/// A snapshot-streaming message: travels in its own frame, outside Raft batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMsg {
    /// Leader to replica.
    Chunk(SnapshotChunk),
    /// Replica to leader.
    Ack(SnapshotAck),
}

impl StreamMsg {
    /// The group the message belongs to.
    pub fn group(&self) -> GroupId {
        match self {
            StreamMsg::Chunk(c) => c.group,
            StreamMsg::Ack(a) => a.group,
        }
    }

    /// Exact size of the frame that carries this message, header included.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + 8 + stream_body_len(self)
    }
}

fn stream_body_len(msg: &StreamMsg) -> usize {
    match msg {
        StreamMsg::Chunk(c) => {
            let cs = &c.meta.conf_state;
            let ids = cs.voters.len() + cs.outgoing.len() + cs.learners.len();
            8 + 8 + 8 + (8 + 8 + 3 * 4 + 8 * ids) + 8 + 8 + 4 + c.data.len()
        }
        StreamMsg::Ack(_) => 8 * 5,
    }
}

/// The first frame on every connection: who is calling and which cluster and protocol it
/// speaks. The receiver refuses the connection if either does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Cluster the sender belongs to; nodes of different clusters never talk.
    pub cluster_id: u64,
    /// The sending node.
    pub from: NodeId,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
}

/// A unit of the wire protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Handshake; see [`Hello`].
    Hello(Hello),
    /// Messages from one node, for any number of groups, in send order.
    Batch {
        /// The sending node (must equal the connection's `Hello::from`).
        from: NodeId,
        /// The messages, in the order they were sent.
        envelopes: Vec<Envelope>,
    },
    /// One snapshot-streaming message from one node.
    Stream {
        /// The sending node (must equal the connection's `Hello::from`).
        from: NodeId,
        /// The chunk or ack.
        msg: StreamMsg,
    },
}

impl Frame {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Batch { .. } => "Batch",
            Frame::Stream {
                msg: StreamMsg::Chunk(_),
                ..
            } => "SnapshotChunk",
            Frame::Stream {
                msg: StreamMsg::Ack(_),
                ..
            } => "SnapshotAck",
        }
    }

    /// Exact size of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_BYTES + payload_len(self)
    }
}

/// Why bytes could not be decoded as a frame. Every variant is fatal for the connection that
/// produced the bytes: the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The stream does not start with [`FRAME_MAGIC`]: not a Flotilla peer, or out of sync.
    #[error("bad frame magic {found:02x?}, expected {FRAME_MAGIC:02x?} (\"FLTP\")")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The frame format version is not one this build reads.
    #[error("unknown frame version {found}; this build reads version {FRAME_VERSION} only")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header's kind byte names no known frame kind.
    #[error("unknown frame kind {found}")]
    UnknownKind {
        /// The kind byte found.
        found: u8,
    },
    /// The header's reserved field is not zero.
    #[error("reserved header field is {found}, must be 0")]
    ReservedNotZero {
        /// The value found.
        found: u16,
    },
    /// The declared frame is larger than the receiver accepts.
    #[error("frame of {frame_bytes} bytes exceeds max_frame_bytes = {max_frame_bytes}")]
    FrameTooLarge {
        /// Header plus declared payload length.
        frame_bytes: u64,
        /// The bound.
        max_frame_bytes: usize,
    },
    /// The payload does not match the checksum in the header.
    #[error(
        "frame checksum mismatch: header says {expected:#010x}, payload hashes to {actual:#010x}"
    )]
    ChecksumMismatch {
        /// CRC-32C from the header.
        expected: u32,
        /// CRC-32C of the received payload.
        actual: u32,
    },
    /// The payload ended while a field was still being read.
    #[error("frame payload truncated while reading {field}")]
    Truncated {
        /// What was being read.
        field: &'static str,
    },
    /// A message body tag names no known message type.
    #[error("unknown message tag {found}")]
    UnknownMessageTag {
        /// The tag found.
        found: u8,
    },
    /// An entry kind byte names no known entry kind.
    #[error("unknown entry kind {found}")]
    UnknownEntryKind {
        /// The byte found.
        found: u8,
    },
    /// A field holds a value outside its encoding (e.g. a boolean byte of 2).
    #[error("invalid value {found} for {field}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value found.
        found: u64,
    },
    /// Bytes remain after the last field of the payload.
    #[error("{count} trailing bytes after the frame payload")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends the encoding of `frame` to `out`.
///
/// # Panics
/// If a length does not fit the format's `u32` fields (a payload or a data blob of 4 GiB or
/// more). Callers bound frames far below that (`max_frame_bytes`) and must check
/// [`Frame::encoded_len`] against the receiver's bound before sending.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let payload_len = payload_len(frame);
    let payload_len_u32 = u32::try_from(payload_len).expect("frame payload exceeds u32::MAX bytes");
    out.reserve(FRAME_HEADER_BYTES + payload_len);
    let header_at = out.len();
    out.put_slice(&FRAME_MAGIC);
    out.put_u8(FRAME_VERSION);
    out.put_u8(match frame {
        Frame::Hello(_) => KIND_HELLO,
        Frame::Batch { .. } => KIND_BATCH,
        Frame::Stream {
            msg: StreamMsg::Chunk(_),
            ..
        } => KIND_SNAPSHOT_CHUNK,
        Frame::Stream {
            msg: StreamMsg::Ack(_),
            ..
        } => KIND_SNAPSHOT_ACK,
    });
    out.put_u16_le(0);
    out.put_u32_le(payload_len_u32);
    out.put_u32_le(0); // checksum, patched below
    let payload_at = out.len();
    match frame {
        Frame::Hello(hello) => {
            out.put_u64_le(hello.cluster_id);
            out.put_u64_le(hello.from);
            out.put_u32_le(hello.protocol_version);
        }
        Frame::Batch { from, envelopes } => {
            out.put_u64_le(*from);
            out.put_u32_le(len_u32(envelopes.len()));
            for env in envelopes {
                encode_envelope(env, out);
            }
        }
        Frame::Stream { from, msg } => {
            out.put_u64_le(*from);
            match msg {
                StreamMsg::Chunk(c) => {
                    out.put_u64_le(c.group);
                    out.put_u64_le(c.to);
                    out.put_u64_le(c.term);
                    encode_meta(&c.meta, out);
                    out.put_u64_le(c.offset);
                    out.put_u64_le(c.total_len);
                    out.put_u32_le(len_u32(c.data.len()));
                    out.put_slice(&c.data);
                }
                StreamMsg::Ack(a) => {
                    out.put_u64_le(a.group);
                    out.put_u64_le(a.term);
                    out.put_u64_le(a.snapshot_index);
                    out.put_u64_le(a.snapshot_term);
                    out.put_u64_le(a.received_offset);
                }
            }
        }
    }
    assert_eq!(
        out.len() - payload_at,
        payload_len,
        "payload_len() disagrees with the encoder"
    );
    let crc = crc32c::crc32c(&out[payload_at..]);
    out[header_at + 12..header_at + 16].copy_from_slice(&crc.to_le_bytes());
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("length exceeds u32::MAX")
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Hello(_) => 8 + 8 + 4,
        Frame::Batch { envelopes, .. } => {
            BATCH_OVERHEAD_BYTES + envelopes.iter().map(Envelope::encoded_len).sum::<usize>()
        }
        Frame::Stream { msg, .. } => 8 + stream_body_len(msg),
    }
}

fn encode_meta(meta: &SnapshotMeta, out: &mut BytesMut) {
    out.put_u64_le(meta.index);
    out.put_u64_le(meta.term);
    let cs = &meta.conf_state;
    for set in [&cs.voters, &cs.outgoing, &cs.learners] {
        out.put_u32_le(len_u32(set.len()));
        for id in set {
            out.put_u64_le(*id);
        }
    }
}

fn decode_meta(r: &mut Reader) -> Result<SnapshotMeta, CodecError> {
    let index = r.u64("snapshot.index")?;
    let term = r.u64("snapshot.term")?;
    let voters = r.id_set("snapshot.conf_state.voters")?;
    let outgoing = r.id_set("snapshot.conf_state.outgoing")?;
    let learners = r.id_set("snapshot.conf_state.learners")?;
    Ok(SnapshotMeta {
        index,
        term,
        conf_state: ConfState {
            voters,
            outgoing,
            learners,
        },
    })
}

fn body_len(body: &MessageBody) -> usize {
    match body {
        MessageBody::PreVote { .. } => 16,
        MessageBody::PreVoteResp { .. } | MessageBody::VoteResp { .. } => 1,
        MessageBody::Vote { .. } => 17,
        MessageBody::Append { entries, .. } => {
            8 + 8
                + 8
                + 4
                + entries
                    .iter()
                    .map(|e| ENTRY_FIXED_BYTES + e.data.len())
                    .sum::<usize>()
        }
        MessageBody::AppendResp { reject, .. } => 8 + 1 + if reject.is_some() { 16 } else { 0 },
        MessageBody::Heartbeat { .. } => 16,
        MessageBody::HeartbeatResp { .. } | MessageBody::ReadIndex { .. } => 8,
        MessageBody::Snapshot { snapshot } => {
            let cs = &snapshot.meta.conf_state;
            let ids = cs.voters.len() + cs.outgoing.len() + cs.learners.len();
            8 + 8 + 3 * 4 + 8 * ids + 4 + snapshot.data.len()
        }
        MessageBody::TimeoutNow => 0,
        MessageBody::ReadIndexResp { index, .. } => 8 + 1 + if index.is_some() { 8 } else { 0 },
    }
}

fn encode_envelope(env: &Envelope, out: &mut BytesMut) {
    let msg = &env.msg;
    out.put_u64_le(env.group);
    out.put_u64_le(msg.from);
    out.put_u64_le(msg.to);
    out.put_u64_le(msg.term);
    match &msg.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => {
            out.put_u8(TAG_PRE_VOTE);
            out.put_u64_le(*last_index);
            out.put_u64_le(*last_term);
        }
        MessageBody::PreVoteResp { reject } => {
            out.put_u8(TAG_PRE_VOTE_RESP);
            out.put_u8(u8::from(*reject));
        }
        MessageBody::Vote {
            last_index,
            last_term,
            transfer,
        } => {
            out.put_u8(TAG_VOTE);
            out.put_u64_le(*last_index);
            out.put_u64_le(*last_term);
            out.put_u8(u8::from(*transfer));
        }
        MessageBody::VoteResp { reject } => {
            out.put_u8(TAG_VOTE_RESP);
            out.put_u8(u8::from(*reject));
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            out.put_u8(TAG_APPEND);
            out.put_u64_le(*prev_index);
            out.put_u64_le(*prev_term);
            out.put_u64_le(*commit);
            out.put_u32_le(len_u32(entries.len()));
            for e in entries {
                out.put_u64_le(e.term);
                out.put_u64_le(e.index);
                out.put_u8(match e.kind {
                    EntryKind::Normal => ENTRY_KIND_NORMAL,
                    EntryKind::ConfChange => ENTRY_KIND_CONF_CHANGE,
                });
                out.put_u32_le(len_u32(e.data.len()));
                out.put_slice(&e.data);
            }
        }
        MessageBody::AppendResp { index, reject } => {
            out.put_u8(TAG_APPEND_RESP);
            out.put_u64_le(*index);
            match reject {
                None => out.put_u8(0),
                Some(hint) => {
                    out.put_u8(1);
                    out.put_u64_le(hint.index);
                    out.put_u64_le(hint.term);
                }
            }
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            out.put_u8(TAG_HEARTBEAT);
            out.put_u64_le(*commit);
            out.put_u64_le(*read_seq);
        }
        MessageBody::HeartbeatResp { read_seq } => {
            out.put_u8(TAG_HEARTBEAT_RESP);
            out.put_u64_le(*read_seq);
        }
        MessageBody::Snapshot { snapshot } => {
            out.put_u8(TAG_SNAPSHOT);
            encode_meta(&snapshot.meta, out);
            out.put_u32_le(len_u32(snapshot.data.len()));
            out.put_slice(&snapshot.data);
        }
        MessageBody::TimeoutNow => out.put_u8(TAG_TIMEOUT_NOW),
        MessageBody::ReadIndex { request_id } => {
            out.put_u8(TAG_READ_INDEX);
            out.put_u64_le(*request_id);
        }
        MessageBody::ReadIndexResp { request_id, index } => {
            out.put_u8(TAG_READ_INDEX_RESP);
            out.put_u64_le(*request_id);
            match index {
                None => out.put_u8(0),
                Some(i) => {
                    out.put_u8(1);
                    out.put_u64_le(*i);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more and call again);
/// `buf` is left untouched then. On `Ok(Some(frame))` the frame's bytes are consumed. On
/// `Err` the stream is unusable and the connection must be closed; what `buf` holds afterwards
/// is unspecified.
///
/// Header fields are checked as soon as they arrive, so garbage is refused early and a frame
/// declaring more than `max_frame_bytes` (header included) is refused before its payload is
/// awaited. The caller therefore never needs to buffer more than `max_frame_bytes` plus one read.
pub fn decode_frame(
    buf: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<Frame>, CodecError> {
    if buf.len() >= 4 && buf[..4] != FRAME_MAGIC {
        let found = [buf[0], buf[1], buf[2], buf[3]];
        return Err(CodecError::BadMagic { found });
    }
    if buf.len() >= 5 && buf[4] != FRAME_VERSION {
        return Err(CodecError::UnknownVersion { found: buf[4] });
    }
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buf[5];
    if !(KIND_HELLO..=KIND_SNAPSHOT_ACK).contains(&kind) {
        return Err(CodecError::UnknownKind { found: kind });
    }
    let reserved = u16::from_le_bytes([buf[6], buf[7]]);
    if reserved != 0 {
        return Err(CodecError::ReservedNotZero { found: reserved });
    }
    let payload_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let expected_crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    let frame_bytes = FRAME_HEADER_BYTES as u64 + u64::from(payload_len);
    if frame_bytes > max_frame_bytes as u64 {
        return Err(CodecError::FrameTooLarge {
            frame_bytes,
            max_frame_bytes,
        });
    }
    // Fits in usize: it is at most max_frame_bytes.
    let frame_bytes = frame_bytes as usize;
    if buf.len() < frame_bytes {
        return Ok(None);
    }
    let actual_crc = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..frame_bytes]);
    if actual_crc != expected_crc {
        return Err(CodecError::ChecksumMismatch {
            expected: expected_crc,
            actual: actual_crc,
        });
    }
    buf.advance(FRAME_HEADER_BYTES);
    let payload = buf.split_to(frame_bytes - FRAME_HEADER_BYTES).freeze();
    let mut r = Reader { buf: payload };
    let frame = match kind {
        KIND_HELLO => Frame::Hello(Hello {
            cluster_id: r.u64("hello.cluster_id")?,
            from: r.u64("hello.from")?,
            protocol_version: r.u32("hello.protocol_version")?,
        }),
        KIND_SNAPSHOT_CHUNK => {
            let from = r.u64("chunk.from")?;
            let chunk = SnapshotChunk {
                group: r.u64("chunk.group")?,
                to: r.u64("chunk.to")?,
                term: r.u64("chunk.term")?,
                meta: decode_meta(&mut r)?,
                offset: r.u64("chunk.offset")?,
                total_len: r.u64("chunk.total_len")?,
                data: r.blob("chunk.data")?,
            };
            let end = chunk.offset.checked_add(chunk.data.len() as u64);
            if !matches!(end, Some(end) if end <= chunk.total_len) {
                return Err(CodecError::InvalidValue {
                    field: "chunk.offset",
                    found: chunk.offset,
                });
            }
            Frame::Stream {
                from,
                msg: StreamMsg::Chunk(chunk),
            }
        }
        KIND_SNAPSHOT_ACK => Frame::Stream {
            from: r.u64("ack.from")?,
            msg: StreamMsg::Ack(SnapshotAck {
                group: r.u64("ack.group")?,
                term: r.u64("ack.term")?,
                snapshot_index: r.u64("ack.snapshot_index")?,
                snapshot_term: r.u64("ack.snapshot_term")?,
                received_offset: r.u64("ack.received_offset")?,
            }),
        },
        _ => {
            let from = r.u64("batch.from")?;
            let count = r.u32("batch.count")? as usize;
            // Never trust a count for allocation: each envelope needs at least
            // ENVELOPE_FIXED_BYTES, so the remaining payload bounds how many there can be.
            let mut envelopes = Vec::with_capacity(count.min(r.remaining() / ENVELOPE_FIXED_BYTES));
            for _ in 0..count {
                envelopes.push(decode_envelope(&mut r)?);
            }
            Frame::Batch { from, envelopes }
        }
    };
    if r.remaining() != 0 {
        return Err(CodecError::TrailingBytes {
            count: r.remaining(),
        });
    }
    Ok(Some(frame))
}

/// Bounds-checked cursor over a payload; every read names the field for error messages.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated { field });
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32_le())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64_le())
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(CodecError::InvalidValue {
                field,
                found: u64::from(other),
            }),
        }
    }

    /// A `u32` length followed by that many bytes, returned without copying.
    fn blob(&mut self, field: &'static str) -> Result<Bytes, CodecError> {
        let len = self.u32(field)? as usize;
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    /// A `u32` count followed by that many node ids in strictly ascending order.
    fn id_set(&mut self, field: &'static str) -> Result<BTreeSet<NodeId>, CodecError> {
        let count = self.u32(field)?;
        let mut set = BTreeSet::new();
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let id = self.u64(field)?;
            if prev.is_some_and(|p| id <= p) {
                // Not canonical: duplicates or disorder would silently re-encode differently.
                return Err(CodecError::InvalidValue { field, found: id });
            }
            prev = Some(id);
            set.insert(id);
        }
        Ok(set)
    }
}

fn decode_envelope(r: &mut Reader) -> Result<Envelope, CodecError> {
    let group = r.u64("envelope.group")?;
    let from = r.u64("message.from")?;
    let to = r.u64("message.to")?;
    let term = r.u64("message.term")?;
    let tag = r.u8("message.tag")?;
    let body = match tag {
        TAG_PRE_VOTE => MessageBody::PreVote {
            last_index: r.u64("pre_vote.last_index")?,
            last_term: r.u64("pre_vote.last_term")?,
        },
        TAG_PRE_VOTE_RESP => MessageBody::PreVoteResp {
            reject: r.bool("pre_vote_resp.reject")?,
        },
        TAG_VOTE => MessageBody::Vote {
            last_index: r.u64("vote.last_index")?,
            last_term: r.u64("vote.last_term")?,
            transfer: r.bool("vote.transfer")?,
        },
        TAG_VOTE_RESP => MessageBody::VoteResp {
            reject: r.bool("vote_resp.reject")?,
        },
        TAG_APPEND => {
            let prev_index = r.u64("append.prev_index")?;
            let prev_term = r.u64("append.prev_term")?;
            let commit = r.u64("append.commit")?;
            let count = r.u32("append.entry_count")? as usize;
            let mut entries = Vec::with_capacity(count.min(r.remaining() / ENTRY_FIXED_BYTES));
            for _ in 0..count {
                let term = r.u64("entry.term")?;
                let index = r.u64("entry.index")?;
                let kind = match r.u8("entry.kind")? {
                    ENTRY_KIND_NORMAL => EntryKind::Normal,
                    ENTRY_KIND_CONF_CHANGE => EntryKind::ConfChange,
                    found => return Err(CodecError::UnknownEntryKind { found }),
                };
                let data = r.blob("entry.data")?;
                entries.push(Entry {
                    term,
                    index,
                    kind,
                    data,
                });
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        }
        TAG_APPEND_RESP => {
            let index = r.u64("append_resp.index")?;
            let reject = match r.u8("append_resp.has_reject")? {
                0 => None,
                1 => Some(RejectHint {
                    index: r.u64("append_resp.reject.index")?,
                    term: r.u64("append_resp.reject.term")?,
                }),
                other => {
                    return Err(CodecError::InvalidValue {
                        field: "append_resp.has_reject",
                        found: u64::from(other),
                    })
                }
            };
            MessageBody::AppendResp { index, reject }
        }
        TAG_HEARTBEAT => MessageBody::Heartbeat {
            commit: r.u64("heartbeat.commit")?,
            read_seq: r.u64("heartbeat.read_seq")?,
        },
        TAG_HEARTBEAT_RESP => MessageBody::HeartbeatResp {
            read_seq: r.u64("heartbeat_resp.read_seq")?,
        },
        TAG_SNAPSHOT => {
            let meta = decode_meta(r)?;
            let data = r.blob("snapshot.data")?;
            MessageBody::Snapshot {
                snapshot: Snapshot { meta, data },
            }
        }
        TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        TAG_READ_INDEX => MessageBody::ReadIndex {
            request_id: r.u64("read_index.request_id")?,
        },
        TAG_READ_INDEX_RESP => {
            let request_id = r.u64("read_index_resp.request_id")?;
            let index = match r.u8("read_index_resp.has_index")? {
                0 => None,
                1 => Some(r.u64("read_index_resp.index")?),
                other => {
                    return Err(CodecError::InvalidValue {
                        field: "read_index_resp.has_index",
                        found: u64::from(other),
                    })
                }
            };
            MessageBody::ReadIndexResp { request_id, index }
        }
        found => return Err(CodecError::UnknownMessageTag { found }),
    };
    Ok(Envelope {
        group,
        msg: Message {
            from,
            to,
            term,
            body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn env(group: GroupId, body: MessageBody) -> Envelope {
        Envelope {
            group,
            msg: Message {
                from: 1,
                to: 2,
                term: 7,
                body,
            },
        }
    }

    fn every_variant() -> Vec<Envelope> {
        let entries = vec![
            Entry {
                term: 3,
                index: 10,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            },
            Entry {
                term: 3,
                index: 11,
                kind: EntryKind::Normal,
                data: Bytes::from_static(b"hello"),
            },
            Entry {
                term: 4,
                index: 12,
                kind: EntryKind::ConfChange,
                data: ConfState::with_voters([1, 2, 3]).encode(),
            },
        ];
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 99,
                term: 5,
                conf_state: ConfState {
                    voters: [1, 2, 3].into(),
                    outgoing: [1, 2, 4].into(),
                    learners: [9].into(),
                },
            },
            data: Bytes::from(vec![0xAB; 300]),
        };
        vec![
            env(
                1,
                MessageBody::PreVote {
                    last_index: 5,
                    last_term: 2,
                },
            ),
            env(2, MessageBody::PreVoteResp { reject: true }),
            env(
                3,
                MessageBody::Vote {
                    last_index: u64::MAX,
                    last_term: 1,
                    transfer: true,
                },
            ),
            env(4, MessageBody::VoteResp { reject: false }),
            env(
                5,
                MessageBody::Append {
                    prev_index: 9,
                    prev_term: 3,
                    entries,
                    commit: 8,
                },
            ),
            env(
                6,
                MessageBody::Append {
                    prev_index: 0,
                    prev_term: 0,
                    entries: vec![],
                    commit: 0,
                },
            ),
            env(
                7,
                MessageBody::AppendResp {
                    index: 4,
                    reject: None,
                },
            ),
            env(
                8,
                MessageBody::AppendResp {
                    index: 4,
                    reject: Some(RejectHint { index: 2, term: 1 }),
                },
            ),
            env(
                9,
                MessageBody::Heartbeat {
                    commit: 17,
                    read_seq: 3,
                },
            ),
            env(10, MessageBody::HeartbeatResp { read_seq: 3 }),
            env(11, MessageBody::Snapshot { snapshot }),
            env(
                12,
                MessageBody::Snapshot {
                    snapshot: Snapshot::default(),
                },
            ),
            env(13, MessageBody::TimeoutNow),
            env(14, MessageBody::ReadIndex { request_id: 42 }),
            env(
                15,
                MessageBody::ReadIndexResp {
                    request_id: 42,
                    index: Some(77),
                },
            ),
            env(
                16,
                MessageBody::ReadIndexResp {
                    request_id: 43,
                    index: None,
                },
            ),
        ]
    }

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(frame, &mut buf);
        buf
    }

    fn batch(envelopes: Vec<Envelope>) -> Frame {
        Frame::Batch { from: 1, envelopes }
    }

    #[test]
    fn every_message_variant_round_trips_alone_and_together() {
        for e in every_variant() {
            let frame = batch(vec![e]);
            let mut buf = encode(&frame);
            assert_eq!(buf.len(), frame.encoded_len());
            assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(frame)));
            assert!(buf.is_empty());
        }
        let frame = batch(every_variant());
        let mut buf = encode(&frame);
        assert_eq!(buf.len(), frame.encoded_len());
        assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(frame)));
    }

    fn chunk() -> StreamMsg {
        StreamMsg::Chunk(SnapshotChunk {
            group: 7,
            to: 3,
            term: 4,
            meta: SnapshotMeta {
                index: 100,
                term: 3,
                conf_state: ConfState {
                    voters: [1, 2].into(),
                    outgoing: BTreeSet::new(),
                    learners: [3].into(),
                },
            },
            offset: 10,
            total_len: 30,
            data: Bytes::from_static(b"0123456789"),
        })
    }

    fn ack() -> StreamMsg {
        StreamMsg::Ack(SnapshotAck {
            group: 7,
            term: 4,
            snapshot_index: 100,
            snapshot_term: 3,
            received_offset: 20,
        })
    }

    #[test]
    fn snapshot_chunk_and_ack_round_trip_with_their_kinds() {
        for (msg, kind) in [(chunk(), KIND_SNAPSHOT_CHUNK), (ack(), KIND_SNAPSHOT_ACK)] {
            let frame = Frame::Stream { from: 1, msg };
            let mut buf = encode(&frame);
            assert_eq!(buf[5], kind);
            assert_eq!(buf.len(), frame.encoded_len());
            let Frame::Stream { msg, .. } = &frame else {
                unreachable!()
            };
            assert_eq!(buf.len(), msg.frame_len());
            assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(frame)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn corrupted_or_truncated_stream_frames_are_refused() {
        for msg in [chunk(), ack()] {
            let frame = Frame::Stream { from: 1, msg };
            let mut buf = encode(&frame);
            let last = buf.len() - 1;
            buf[last] ^= 0x40;
            assert!(matches!(
                decode_frame(&mut buf, MAX),
                Err(CodecError::ChecksumMismatch { .. })
            ));
            let full = encode(&frame);
            for len in 0..full.len() {
                let mut buf = BytesMut::from(&full[..len]);
                assert_eq!(decode_frame(&mut buf, MAX), Ok(None), "prefix {len}");
            }
        }
        // A well-checksummed ack payload that stops early names the missing field.
        let mut buf = raw_frame(KIND_SNAPSHOT_ACK, &[0; 16]);
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::Truncated { field: "ack.term" })
        );
    }

    #[test]
    fn chunk_reaching_past_its_total_len_is_refused() {
        let StreamMsg::Chunk(mut c) = chunk() else {
            unreachable!()
        };
        c.total_len = 15; // offset 10 + 10 bytes of data > 15
        let mut buf = encode(&Frame::Stream {
            from: 1,
            msg: StreamMsg::Chunk(c),
        });
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::InvalidValue {
                field: "chunk.offset",
                found: 10
            })
        );
    }

    #[test]
    fn hello_and_empty_batch_round_trip() {
        let hello = Frame::Hello(Hello {
            cluster_id: 0xC0FFEE,
            from: 3,
            protocol_version: PROTOCOL_VERSION,
        });
        let empty = batch(vec![]);
        let mut buf = encode(&hello);
        encode_frame(&empty, &mut buf);
        assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(hello)));
        assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(empty)));
        assert_eq!(decode_frame(&mut buf, MAX), Ok(None));
    }

    #[test]
    fn header_layout_is_as_documented() {
        let buf = encode(&batch(vec![]));
        assert_eq!(&buf[0..4], b"FLTP");
        assert_eq!(buf[4], FRAME_VERSION);
        assert_eq!(buf[5], KIND_BATCH);
        assert_eq!(&buf[6..8], &[0, 0]);
        assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), 12);
        assert_eq!(
            u32::from_le_bytes(buf[12..16].try_into().unwrap()),
            crc32c::crc32c(&buf[16..])
        );
    }

    #[test]
    fn every_prefix_of_a_frame_asks_for_more_bytes() {
        let frame = batch(every_variant());
        let full = encode(&frame);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                decode_frame(&mut buf, MAX),
                Ok(None),
                "prefix of {cut} bytes"
            );
            assert_eq!(buf.len(), cut, "an incomplete frame is not consumed");
        }
    }

    #[test]
    fn bad_magic_is_refused_after_four_bytes() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::BadMagic { found: *b"GET " })
        );
        let mut buf = BytesMut::from(&b"GET "[..]);
        assert!(matches!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::BadMagic { .. })
        ));
    }

    #[test]
    fn unknown_version_is_refused_and_named() {
        let mut buf = encode(&batch(vec![]));
        buf[4] = 2;
        let err = decode_frame(&mut buf, MAX).unwrap_err();
        assert_eq!(err, CodecError::UnknownVersion { found: 2 });
        assert_eq!(
            err.to_string(),
            "unknown frame version 2; this build reads version 1 only"
        );
    }

    #[test]
    fn unknown_kind_and_nonzero_reserved_are_refused() {
        let mut buf = encode(&batch(vec![]));
        buf[5] = 9;
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::UnknownKind { found: 9 })
        );
        let mut buf = encode(&batch(vec![]));
        buf[7] = 1;
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::ReservedNotZero { found: 256 })
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        let full = encode(&batch(every_variant()));
        let mut header_only = BytesMut::from(&full[..FRAME_HEADER_BYTES]);
        let err = decode_frame(&mut header_only, 64).unwrap_err();
        assert_eq!(
            err,
            CodecError::FrameTooLarge {
                frame_bytes: full.len() as u64,
                max_frame_bytes: 64
            }
        );
        assert_eq!(
            err.to_string(),
            format!("frame of {} bytes exceeds max_frame_bytes = 64", full.len())
        );
        // A length of u32::MAX must not be awaited, let alone allocated.
        let mut huge = BytesMut::from(&full[..FRAME_HEADER_BYTES]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&mut huge, MAX),
            Err(CodecError::FrameTooLarge { .. })
        ));
        // Exactly at the bound is fine.
        let mut exact = full.clone();
        assert!(decode_frame(&mut exact, full.len()).unwrap().is_some());
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let mut buf = encode(&batch(every_variant()));
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert!(matches!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::ChecksumMismatch { .. })
        ));
    }

    /// Builds a frame around a hand-made payload with a correct checksum, to reach the
    /// payload parser's errors.
    fn raw_frame(kind: u8, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_slice(&FRAME_MAGIC);
        buf.put_u8(FRAME_VERSION);
        buf.put_u8(kind);
        buf.put_u16_le(0);
        buf.put_u32_le(payload.len() as u32);
        buf.put_u32_le(crc32c::crc32c(payload));
        buf.put_slice(payload);
        buf
    }

    fn batch_payload(envelope: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(envelope);
        p
    }

    fn envelope_head(tag: u8) -> Vec<u8> {
        let mut p = Vec::new();
        for v in [5u64, 1, 2, 7] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.push(tag);
        p
    }

    #[test]
    fn truncated_payload_names_the_field() {
        let mut buf = raw_frame(KIND_HELLO, &[0; 10]);
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::Truncated {
                field: "hello.from"
            })
        );
        // A batch that promises 1000 envelopes but carries none: refused, and the decoder
        // must not have trusted the count for allocation.
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&1000u32.to_le_bytes());
        let mut buf = raw_frame(KIND_BATCH, &p);
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::Truncated {
                field: "envelope.group"
            })
        );
        // An entry whose data length runs past the payload.
        let mut e = envelope_head(TAG_APPEND);
        for v in [0u64, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&[1; 17]);
        e.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut buf = raw_frame(KIND_BATCH, &batch_payload(&e));
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::Truncated {
                field: "entry.data"
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut p = Vec::new();
        for v in [1u64, 2] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0xEE);
        let mut buf = raw_frame(KIND_HELLO, &p);
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn unknown_tags_kinds_and_non_canonical_values_are_refused() {
        let mut buf = raw_frame(KIND_BATCH, &batch_payload(&envelope_head(200)));
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::UnknownMessageTag { found: 200 })
        );

        let mut e = envelope_head(TAG_VOTE_RESP);
        e.push(2);
        let mut buf = raw_frame(KIND_BATCH, &batch_payload(&e));
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::InvalidValue {
                field: "vote_resp.reject",
                found: 2
            })
        );

        let mut e = envelope_head(TAG_APPEND);
        for v in [0u64, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&[1; 16]);
        e.push(7);
        let mut buf = raw_frame(KIND_BATCH, &batch_payload(&e));
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::UnknownEntryKind { found: 7 })
        );

        // Voter set [3, 3]: a duplicate would collapse and re-encode differently.
        let mut e = envelope_head(TAG_SNAPSHOT);
        for v in [1u64, 1] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&2u32.to_le_bytes());
        for v in [3u64, 3] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        let mut buf = raw_frame(KIND_BATCH, &batch_payload(&e));
        assert_eq!(
            decode_frame(&mut buf, MAX),
            Err(CodecError::InvalidValue {
                field: "snapshot.conf_state.voters",
                found: 3
            })
        );
    }

    // ---- property tests

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), any::<bool>(), arb_bytes()).prop_map(
            |(term, index, cc, data)| Entry {
                term,
                index,
                kind: if cc {
                    EntryKind::ConfChange
                } else {
                    EntryKind::Normal
                },
                data,
            },
        )
    }

    fn arb_ids() -> impl Strategy<Value = BTreeSet<NodeId>> {
        prop::collection::btree_set(any::<u64>(), 0..5)
    }

    fn arb_body() -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(last_index, last_term)| MessageBody::PreVote {
                last_index,
                last_term
            }),
            any::<bool>().prop_map(|reject| MessageBody::PreVoteResp { reject }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(last_index, last_term, transfer)| {
                    MessageBody::Vote {
                        last_index,
                        last_term,
                        transfer,
                    }
                }
            ),
            any::<bool>().prop_map(|reject| MessageBody::VoteResp { reject }),
            (
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(arb_entry(), 0..4),
                any::<u64>()
            )
                .prop_map(|(prev_index, prev_term, entries, commit)| {
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    }
                }),
            (any::<u64>(), any::<Option<(u64, u64)>>()).prop_map(|(index, r)| {
                MessageBody::AppendResp {
                    index,
                    reject: r.map(|(index, term)| RejectHint { index, term }),
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
            any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResp { read_seq }),
            (
                any::<u64>(),
                any::<u64>(),
                arb_ids(),
                arb_ids(),
                arb_ids(),
                arb_bytes()
            )
                .prop_map(|(index, term, voters, outgoing, learners, data)| {
                    MessageBody::Snapshot {
                        snapshot: Snapshot {
                            meta: SnapshotMeta {
                                index,
                                term,
                                conf_state: ConfState {
                                    voters,
                                    outgoing,
                                    learners,
                                },
                            },
                            data,
                        },
                    }
                }),
            Just(MessageBody::TimeoutNow),
            any::<u64>().prop_map(|request_id| MessageBody::ReadIndex { request_id }),
            (any::<u64>(), any::<Option<u64>>())
                .prop_map(|(request_id, index)| MessageBody::ReadIndexResp { request_id, index }),
        ]
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            arb_body(),
        )
            .prop_map(|(group, from, to, term, body)| Envelope {
                group,
                msg: Message {
                    from,
                    to,
                    term,
                    body,
                },
            })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
                |(cluster_id, from, protocol_version)| {
                    Frame::Hello(Hello {
                        cluster_id,
                        from,
                        protocol_version,
                    })
                }
            ),
            (any::<u64>(), prop::collection::vec(arb_envelope(), 0..12))
                .prop_map(|(from, envelopes)| Frame::Batch { from, envelopes }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                arb_bytes(),
                0u64..64
            )
                .prop_map(|(from, group, term, index, data, extra)| {
                    let msg = if index % 2 == 0 {
                        StreamMsg::Ack(SnapshotAck {
                            group,
                            term,
                            snapshot_index: index,
                            snapshot_term: term / 2,
                            received_offset: extra,
                        })
                    } else {
                        StreamMsg::Chunk(SnapshotChunk {
                            group,
                            to: from ^ 1,
                            term,
                            meta: SnapshotMeta {
                                index,
                                term: term / 2,
                                conf_state: ConfState::with_voters([1, 2, 3]),
                            },
                            offset: extra,
                            total_len: extra + data.len() as u64 + extra,
                            data,
                        })
                    };
                    Frame::Stream { from, msg }
                }),
        ]
    }

    proptest! {
        #[test]
        fn random_frames_round_trip_exactly(frames in prop::collection::vec(arb_frame(), 1..4)) {
            let mut buf = BytesMut::new();
            for f in &frames {
                encode_frame(f, &mut buf);
            }
            prop_assert_eq!(buf.len(), frames.iter().map(Frame::encoded_len).sum::<usize>());
            for f in &frames {
                prop_assert_eq!(decode_frame(&mut buf, MAX), Ok(Some(f.clone())));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_frame(&mut buf, max);
        }

        #[test]
        fn random_bytes_behind_a_valid_header_never_panic(kind in 1u8..=4, payload in prop::collection::vec(any::<u8>(), 0..256)) {
            // A correct checksum gets random payloads past the CRC into the parser.
            let mut buf = raw_frame(kind, &payload);
            let _ = decode_frame(&mut buf, MAX);
        }

        #[test]
        fn corrupting_a_valid_frame_never_yields_a_different_frame(
            frame in arb_frame(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut buf = BytesMut::new();
            encode_frame(&frame, &mut buf);
            for (at, mask) in &flips {
                let i = at.index(buf.len());
                buf[i] ^= mask;
            }
            if truncate {
                let len = cut.index(buf.len());
                buf.truncate(len);
            }
            // Ok(None) (it now looks incomplete) and errors are both fine; a frame is only
            // acceptable if it is the original (the flips missed nothing that matters).
            if let Ok(Some(decoded)) = decode_frame(&mut buf, MAX) {
                prop_assert_eq!(decoded, frame);
            }
        }
    }
}
