//! The on-disk record format (documented in `docs/wal.md`) and its decoder.
//!
//! A segment is a 24-byte header followed by frames:
//!
//! ```text
//! segment header: magic "FLOTWAL\0" (8) | format version u32 | segment seq u64 | crc32c u32
//! frame:          crc32c u32 | payload length u32 | payload
//!                 crc32c covers the length field and the payload
//! payload:        version u8 | group u64 | op count u32 | ops
//! op:             kind u8 | body
//! ```
//!
//! All integers are little endian. The decoder never panics and never allocates more than the
//! input it is given (the fuzz target in `fuzz/` holds it to that).

use bytes::Bytes;
use flotilla_raft::{ConfState, Entry, EntryKind, HardState, Index, SnapshotMeta, Term};

use crate::error::GroupId;

/// Format version of segment headers and records this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLOTWAL\0";
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// Size of a frame header (checksum + length).
pub const FRAME_HEADER_BYTES: u64 = 8;
/// Smallest valid payload: version, group, op count.
const MIN_PAYLOAD_BYTES: u32 = 13;
/// Smallest encoded op (a kind byte), bounding how many ops a payload can claim.
const MIN_OP_BYTES: usize = 1;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_RESET: u8 = 4;
const KIND_SNAPSHOT_META: u8 = 5;
const KIND_REMOVE: u8 = 6;

/// One change to a group. Replay applies records in log order, and a record's ops in order;
/// later ones win.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Consecutive entries. Any stored entries at or after the first index are replaced
    /// (Raft's conflict resolution); entries at or below the compaction point are ignored.
    Entries(Vec<Entry>),
    /// The group's hard state.
    HardState(HardState),
    /// Drop entries up to and including `index`; `term` is the term at `index`.
    Compact {
        /// New compaction point.
        index: Index,
        /// Term of the entry at `index`.
        term: Term,
    },
    /// Drop *all* entries; the log restarts after `index` (a snapshot that does not match the
    /// log, or a rewrite of the group's state into a newer segment).
    Reset {
        /// New compaction point.
        index: Index,
        /// Term at `index`.
        term: Term,
    },
    /// The group's latest snapshot (the data lives in a snapshot file).
    SnapshotMeta(SnapshotMeta),
    /// The group is gone from this node: forget all of its state.
    Remove,
}

/// One record: changes to one group that take effect together or not at all (the frame's
/// checksum covers them all), e.g. a `Ready`'s entries and hard state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The Raft group.
    pub group: GroupId,
    /// What changes, in order. Never empty.
    pub ops: Vec<Op>,
}

/// Why bytes do not decode as a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside the frame (a torn tail if it is at the end of the log).
    #[error("frame truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the frame says it needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The length field is impossible.
    #[error("bad payload length {0}")]
    BadLength(u32),
    /// The checksum does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum in the frame.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// The checksum verifies but the version is unknown.
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    /// The checksum verifies but the payload is malformed (a bug, or a collision).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Appends the frame for `rec` to `out`.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES as usize]);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&rec.group.to_le_bytes());
    assert!(!rec.ops.is_empty(), "a record holds at least one op");
    out.extend_from_slice(&(rec.ops.len() as u32).to_le_bytes());
    for op in &rec.ops {
        encode_op(op, out);
    }
    let payload_len = u32::try_from(out.len() - start - FRAME_HEADER_BYTES as usize)
        .expect("records are bounded by max_batch_bytes, far below 4 GiB");
    out[start + 4..start + 8].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Entries(entries) => {
            assert!(
                !entries.is_empty(),
                "an entries op holds at least one entry"
            );
            out.push(KIND_ENTRIES);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            out.extend_from_slice(&entries[0].index.to_le_bytes());
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    entries[0].index + i as u64,
                    "entries must be consecutive"
                );
                out.extend_from_slice(&e.term.to_le_bytes());
                out.push(match e.kind {
                    EntryKind::Normal => 0,
                    EntryKind::ConfChange => 1,
                });
                out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
                out.extend_from_slice(&e.data);
            }
        }
        Op::HardState(hs) => {
            out.push(KIND_HARD_STATE);
            for v in [hs.term, hs.vote, hs.commit] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Op::Compact { index, term } | Op::Reset { index, term } => {
            out.push(if matches!(op, Op::Compact { .. }) {
                KIND_COMPACT
            } else {
                KIND_RESET
            });
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
        }
        Op::SnapshotMeta(meta) => {
            out.push(KIND_SNAPSHOT_META);
            out.extend_from_slice(&meta.index.to_le_bytes());
            out.extend_from_slice(&meta.term.to_le_bytes());
            let conf = meta.conf_state.encode();
            out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
            out.extend_from_slice(&conf);
        }
        Op::Remove => out.push(KIND_REMOVE),
    }
}

/// Checks the frame at the start of `buf` and returns the payload's range within `buf`.
/// Only framing and checksum are verified here.
pub fn check_frame(buf: &[u8]) -> Result<std::ops::Range<usize>, DecodeError> {
    let available = buf.len() as u64;
    if available < FRAME_HEADER_BYTES {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available,
        });
    }
    let stored = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len < MIN_PAYLOAD_BYTES {
        return Err(DecodeError::BadLength(len));
    }
    let needed = FRAME_HEADER_BYTES + u64::from(len);
    if available < needed {
        return Err(DecodeError::Truncated { needed, available });
    }
    let end = needed as usize;
    let computed = crc32c::crc32c(&buf[4..end]);
    if computed != stored {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok(FRAME_HEADER_BYTES as usize..end)
}

/// Decodes the frame at the start of `buf` (a `Bytes`, so entry payloads are zero-copy
/// slices of it). Returns the record and the frame's length.
pub fn decode_record(buf: &Bytes) -> Result<(Record, usize), DecodeError> {
    let range = check_frame(buf)?;
    let end = range.end;
    let rec = decode_payload(buf.slice(range))?;
    Ok((rec, end))
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(DecodeError::Malformed("payload shorter than its fields"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..self.pos))
    }
}

/// Decodes a frame's payload without any checksum (the frame layer verified it). Public so
/// the fuzzer can reach the field decoding that a checksum would otherwise shield.
pub fn decode_payload(payload: Bytes) -> Result<Record, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let group = r.u64()?;
    let n_ops = r.u32()? as usize;
    if n_ops == 0 || n_ops > (r.buf.len() - r.pos) / MIN_OP_BYTES {
        return Err(DecodeError::Malformed("op count out of range"));
    }
    // Grow as ops decode, so a lying count cannot make us allocate.
    let mut ops = Vec::with_capacity(n_ops.min(16));
    for _ in 0..n_ops {
        ops.push(decode_op(&mut r)?);
    }
    if r.pos != r.buf.len() {
        return Err(DecodeError::Malformed("trailing bytes in record"));
    }
    Ok(Record { group, ops })
}

fn decode_op(r: &mut Reader) -> Result<Op, DecodeError> {
    Ok(match r.u8()? {
        KIND_ENTRIES => {
            let count = r.u32()?;
            if count == 0 {
                return Err(DecodeError::Malformed("entries op with no entries"));
            }
            let first = r.u64()?;
            if first == 0 || first.checked_add(u64::from(count)).is_none() {
                return Err(DecodeError::Malformed("entry index out of range"));
            }
            // Each entry needs at least 13 bytes, so `count` cannot make us over-allocate.
            if (count as usize) > (r.buf.len() - r.pos) / 13 {
                return Err(DecodeError::Malformed("entry count exceeds payload"));
            }
            let mut entries = Vec::with_capacity(count as usize);
            for i in 0..u64::from(count) {
                let term = r.u64()?;
                let kind = match r.u8()? {
                    0 => EntryKind::Normal,
                    1 => EntryKind::ConfChange,
                    _ => return Err(DecodeError::Malformed("unknown entry kind")),
                };
                let len = r.u32()? as usize;
                let data = r.bytes(len)?;
                entries.push(Entry {
                    term,
                    index: first + i,
                    kind,
                    data,
                });
            }
            Op::Entries(entries)
        }
        KIND_HARD_STATE => Op::HardState(HardState {
            term: r.u64()?,
            vote: r.u64()?,
            commit: r.u64()?,
        }),
        KIND_COMPACT => Op::Compact {
            index: r.u64()?,
            term: r.u64()?,
        },
        KIND_RESET => Op::Reset {
            index: r.u64()?,
            term: r.u64()?,
        },
        KIND_SNAPSHOT_META => {
            let index = r.u64()?;
            let term = r.u64()?;
            let len = r.u32()? as usize;
            let conf_state = ConfState::decode(r.take(len)?)
                .map_err(|_| DecodeError::Malformed("bad configuration in snapshot meta"))?;
            Op::SnapshotMeta(SnapshotMeta {
                index,
                term,
                conf_state,
            })
        }
        KIND_REMOVE => Op::Remove,
        _ => return Err(DecodeError::Malformed("unknown op kind")),
    })
}

impl Record {
    /// The entries this record carries, by index (a later op wins over an earlier one).
    pub fn entries(&self) -> std::collections::BTreeMap<Index, &Entry> {
        let mut out = std::collections::BTreeMap::new();
        for op in &self.ops {
            if let Op::Entries(es) = op {
                out.extend(es.iter().map(|e| (e.index, e)));
            }
        }
        out
    }
}

/// Encodes a segment header.
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&u32::from(FORMAT_VERSION).to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header.
    Truncated,
    /// Wrong magic or checksum.
    Invalid(&'static str),
    /// Valid header of an unknown version.
    UnknownVersion(u32),
}

/// Decodes a segment header, returning the segment's sequence number.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, HeaderError> {
    if buf.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(HeaderError::Truncated);
    }
    if buf[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Invalid("bad magic"));
    }
    let crc = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[0..20]) != crc {
        return Err(HeaderError::Invalid("header checksum mismatch"));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version != u32::from(FORMAT_VERSION) {
        return Err(HeaderError::UnknownVersion(version));
    }
    Ok(u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        let recs = [
            vec![Op::Entries(vec![entry(5, 2, b"a"), entry(6, 3, b"")])],
            vec![Op::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 6,
            })],
            vec![
                Op::Compact { index: 4, term: 2 },
                Op::Reset { index: 9, term: 4 },
            ],
            vec![Op::Remove, Op::HardState(HardState::default())],
            vec![Op::SnapshotMeta(SnapshotMeta {
                index: 9,
                term: 4,
                conf_state: ConfState::with_voters([1, 2, 3]),
            })],
        ];
        for ops in recs {
            let rec = Record { group: 77, ops };
            let mut buf = Vec::new();
            encode_record(&rec, &mut buf);
            let (back, len) = decode_record(&Bytes::from(buf.clone())).unwrap();
            assert_eq!((back, len), (rec, buf.len()));
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_the_checksum_or_framing() {
        let rec = Record {
            group: 1,
            ops: vec![
                Op::Entries(vec![entry(1, 1, b"hello")]),
                Op::HardState(HardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                }),
            ],
        };
        let mut buf = Vec::new();
        encode_record(&rec, &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&Bytes::from(bad)).is_err(),
                "bit {bit} undetected"
            );
        }
    }

    #[test]
    fn unknown_record_version_is_reported_as_such() {
        let rec = Record {
            group: 1,
            ops: vec![Op::Compact { index: 1, term: 1 }],
        };
        let mut buf = Vec::new();
        encode_record(&rec, &mut buf);
        buf[8] = 9;
        let crc = crc32c::crc32c(&buf[4..]);
        buf[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_record(&Bytes::from(buf)),
            Err(DecodeError::UnknownVersion(9))
        );
    }

    #[test]
    fn zeroes_are_not_a_record() {
        assert_eq!(
            decode_record(&Bytes::from(vec![0u8; 64])),
            Err(DecodeError::BadLength(0))
        );
    }

    #[test]
    fn segment_header_round_trips_and_refuses_unknown_versions() {
        let mut h = encode_segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
        h[8] = 2;
        let crc = crc32c::crc32c(&h[0..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&h),
            Err(HeaderError::UnknownVersion(2))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&Bytes::from(data));
        }
    }
}
