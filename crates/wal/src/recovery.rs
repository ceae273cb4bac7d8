//! Opening the log: replay every segment, truncate a torn tail, refuse corruption, check the
//! snapshot files the log refers to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::index::{Index, Loc};
use crate::record::{
    self, decode_record, DecodeError, HeaderError, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::snapshot;
use crate::vfs::{VFile, Vfs};
use crate::wal::{create_segment, parse_segment_seq, segment_path};

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: u64,
    /// Records replayed.
    pub records: u64,
    /// Groups with any state.
    pub groups: u64,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// A partial write at the end of the log, found and truncated by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub file: PathBuf,
    /// Where the valid log ends (the file is truncated here).
    pub offset: u64,
    /// Bytes cut off.
    pub dropped_bytes: u64,
    /// Why the first dropped frame did not verify.
    pub reason: String,
}

/// Recovery state while opening.
pub(crate) struct Recovery<'a> {
    pub(crate) vfs: &'a dyn Vfs,
    pub(crate) dir: &'a Path,
    pub(crate) index: Index,
    pub(crate) segments: BTreeMap<u64, Arc<dyn VFile>>,
    pub(crate) report: RecoveryReport,
}

impl Recovery<'_> {
    pub(crate) fn replay(&mut self) -> Result<()> {
        let list = self
            .vfs
            .list(self.dir)
            .map_err(|e| Error::io("list", self.dir, e))?;
        let seqs: Vec<u64> = list.iter().filter_map(|p| parse_segment_seq(p)).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            if i > 0 && seq != seqs[i - 1] + 1 {
                return Err(Error::Corrupted {
                    file: segment_path(self.dir, seqs[i - 1] + 1),
                    offset: 0,
                    reason: format!("segment missing between {} and {seq}", seqs[i - 1]),
                });
            }
            let last = i + 1 == seqs.len();
            self.replay_segment(seq, last)?;
        }
        Ok(())
    }

    fn replay_segment(&mut self, seq: u64, last: bool) -> Result<()> {
        let path = segment_path(self.dir, seq);
        let file = self
            .vfs
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.size().map_err(|e| Error::io("stat", &path, e))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        let buf = Bytes::from(buf);
        let corrupted = |offset: u64, reason: String| Error::Corrupted {
            file: path.clone(),
            offset,
            reason,
        };
        match record::decode_segment_header(&buf) {
            Ok(s) if s == seq => {}
            Ok(s) => {
                return Err(corrupted(
                    0,
                    format!("header says segment {s}, file name says {seq}"),
                ))
            }
            Err(HeaderError::UnknownVersion(version)) => {
                return Err(Error::UnknownVersion {
                    file: path,
                    offset: 8,
                    version,
                    supported: u32::from(record::FORMAT_VERSION),
                })
            }
            Err(HeaderError::Truncated) if last => {
                // Crashed while creating it: nothing was ever written after the header.
                log::info!("recreating torn segment header in {}", path.display());
                self.report.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    dropped_bytes: len,
                    reason: "torn segment header".into(),
                });
                let f = create_segment(self.vfs, self.dir, seq)?;
                self.segments.insert(seq, f);
                self.report.segments += 1;
                return Ok(());
            }
            Err(e) => return Err(corrupted(0, format!("bad segment header: {e:?}"))),
        }
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        while pos < buf.len() {
            let frame = buf.slice(pos..);
            match decode_record(&frame) {
                Ok((rec, n)) => {
                    let loc = Loc {
                        seg: seq,
                        offset: pos as u64,
                        len: n as u32,
                    };
                    self.index.apply(&rec, loc, false);
                    self.report.records += 1;
                    pos += n;
                }
                Err(DecodeError::UnknownVersion(v)) => {
                    return Err(Error::UnknownVersion {
                        file: path,
                        offset: pos as u64,
                        version: u32::from(v),
                        supported: u32::from(record::FORMAT_VERSION),
                    })
                }
                Err(e) if !last => return Err(corrupted(pos as u64, e.to_string())),
                Err(e) => {
                    if let Some(valid) = find_valid_frame(&buf, pos + 1) {
                        return Err(corrupted(
                            pos as u64,
                            format!("{e}, but a valid record follows at offset {valid}"),
                        ));
                    }
                    let dropped = (buf.len() - pos) as u64;
                    log::info!(
                        "truncating torn tail of {}: {dropped} bytes at offset {pos} ({e})",
                        path.display()
                    );
                    file.set_len(pos as u64)
                        .map_err(|e| Error::io("truncate", &path, e))?;
                    file.sync_data().map_err(|e| Error::io("sync", &path, e))?;
                    self.report.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: pos as u64,
                        dropped_bytes: dropped,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        self.segments.insert(seq, file);
        self.report.segments += 1;
        Ok(())
    }

    /// Every group's log must be complete: a hole means a record it needs is gone.
    pub(crate) fn check_groups(&self) -> Result<()> {
        for (id, g) in &self.index.groups {
            if g.base != g.trunc_index {
                return Err(Error::Corrupted {
                    file: self.dir.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "group {id}: entries {}..={} are in no remaining segment",
                        g.trunc_index + 1,
                        g.base
                    ),
                });
            }
        }
        Ok(())
    }

    /// Keeps each group's recorded snapshot file (verifying it exists), deletes the rest
    /// (older snapshots, and newer ones whose log record never became durable).
    pub(crate) fn collect_snapshots(&mut self, snap_dir: &Path) -> Result<()> {
        let files = self
            .vfs
            .list(snap_dir)
            .map_err(|e| Error::io("list", snap_dir, e))?;
        let mut present: BTreeSet<PathBuf> = BTreeSet::new();
        for f in files {
            if snapshot::parse_group(&f).is_some() {
                present.insert(f);
            } else if f.extension().is_some_and(|x| x == "tmp") {
                let _ = self.vfs.remove(&f);
            }
        }
        for (&id, g) in &self.index.groups {
            if g.snapshot.index == 0 {
                continue;
            }
            let path = snap_dir.join(snapshot::file_name(id, &g.snapshot));
            if !present.remove(&path) {
                return Err(Error::BadSnapshot {
                    file: path,
                    reason: "recorded in the log but missing".into(),
                });
            }
        }
        for stale in present {
            log::debug!("deleting unreferenced snapshot {}", stale.display());
            self.vfs
                .remove(&stale)
                .map_err(|e| Error::io("remove", &stale, e))?;
        }
        Ok(())
    }
}

/// Offset of the first position at or after `from` where a frame verifies, if any. Used to
/// tell a torn tail (nothing valid after the damage) from corruption in the middle.
fn find_valid_frame(buf: &Bytes, from: usize) -> Option<usize> {
    let hdr = FRAME_HEADER_BYTES as usize;
    (from..buf.len().saturating_sub(hdr)).find(|&p| {
        buf.get(p + hdr) == Some(&record::FORMAT_VERSION) && record::check_frame(&buf[p..]).is_ok()
    })
}
