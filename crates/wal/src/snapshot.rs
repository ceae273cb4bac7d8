//! Snapshot files: one file per (group, snapshot), written durably and verified on load.
//!
//! ```text
//! magic "FLOTSNAP" (8) | version u32 | group u64 | index u64 | term u64
//! | conf length u32 | ConfState::encode | data length u64 | data | crc32c u32 (of all before)
//! ```
//!
//! Name: `<group:016x>-<index:016x>-<term:016x>.snap` in `<dir>/snap/`. Written to
//! `<name>.tmp`, synced, renamed, and the directory synced; only then does the log record the
//! snapshot, so a recorded snapshot always has its file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use flotilla_raft::{ConfState, Snapshot, SnapshotMeta};

use crate::error::{Error, GroupId, Result};
use crate::record::FORMAT_VERSION;
use crate::vfs::Vfs;

const SNAPSHOT_MAGIC: [u8; 8] = *b"FLOTSNAP";

/// File name of a group's snapshot.
pub(crate) fn file_name(group: GroupId, meta: &SnapshotMeta) -> String {
    format!("{group:016x}-{:016x}-{:016x}.snap", meta.index, meta.term)
}

/// The group a snapshot file belongs to, if `path` names one.
pub(crate) fn parse_group(path: &Path) -> Option<GroupId> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".snap")?;
    let mut parts = stem.split('-');
    let group = u64::from_str_radix(parts.next()?, 16).ok()?;
    let _index = u64::from_str_radix(parts.next()?, 16).ok()?;
    let _term = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some(group)
}

fn encode(group: GroupId, snap: &Snapshot) -> Vec<u8> {
    let conf = snap.meta.conf_state.encode();
    let mut out = Vec::with_capacity(64 + conf.len() + snap.data.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&u32::from(FORMAT_VERSION).to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&snap.meta.index.to_le_bytes());
    out.extend_from_slice(&snap.meta.term.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(&(snap.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&snap.data);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(buf: Bytes, file: &Path) -> Result<(GroupId, Snapshot)> {
    let bad = |reason: &str| Error::BadSnapshot {
        file: file.to_path_buf(),
        reason: reason.into(),
    };
    if buf.len() < 8 + 4 + 24 + 4 + 8 + 4 {
        return Err(bad("file too short"));
    }
    let body_len = buf.len() - 4;
    let stored = u32::from_le_bytes(buf[body_len..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[..body_len]) != stored {
        return Err(bad("checksum mismatch"));
    }
    if buf[..8] != SNAPSHOT_MAGIC {
        return Err(bad("bad magic"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != u32::from(FORMAT_VERSION) {
        return Err(Error::UnknownVersion {
            file: file.to_path_buf(),
            offset: 8,
            version,
            supported: u32::from(FORMAT_VERSION),
        });
    }
    let (group, index, term) = (u64_at(12), u64_at(20), u64_at(28));
    let conf_len = u32_at(36) as usize;
    let conf_end = 40usize.checked_add(conf_len).filter(|&e| e + 8 <= body_len);
    let conf_end = conf_end.ok_or_else(|| bad("configuration length out of range"))?;
    let conf_state = ConfState::decode(&buf[40..conf_end]).map_err(|e| bad(&e.to_string()))?;
    let data_len = u64_at(conf_end);
    if data_len != (body_len - conf_end - 8) as u64 {
        return Err(bad("data length does not match file length"));
    }
    let data = buf.slice(conf_end + 8..body_len);
    Ok((
        group,
        Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        },
    ))
}

/// Writes the snapshot durably: temp file, `fdatasync`, rename, directory sync.
pub(crate) fn write(vfs: &dyn Vfs, dir: &Path, group: GroupId, snap: &Snapshot) -> Result<PathBuf> {
    let path = dir.join(file_name(group, &snap.meta));
    let tmp = path.with_extension("snap.tmp");
    let bytes = encode(group, snap);
    let f = vfs.create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all_at(&bytes, 0)
        .map_err(|e| Error::io("write", &tmp, e))?;
    f.sync_data().map_err(|e| Error::io("sync", &tmp, e))?;
    vfs.rename(&tmp, &path)
        .map_err(|e| Error::io("rename", &tmp, e))?;
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync dir", dir, e))?;
    Ok(path)
}

/// Reads and verifies a snapshot file, checking it is the one the log recorded.
pub(crate) fn read(
    vfs: &dyn Vfs,
    path: &Path,
    group: GroupId,
    meta: &SnapshotMeta,
) -> Result<Snapshot> {
    let f = vfs.open(path).map_err(|e| Error::io("open", path, e))?;
    let len = f.size().map_err(|e| Error::io("stat", path, e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io("read", path, e))?;
    let (file_group, snap) = decode(Bytes::from(buf), path)?;
    if file_group != group || snap.meta != *meta {
        return Err(Error::BadSnapshot {
            file: path.to_path_buf(),
            reason: format!(
                "file holds group {file_group} at index {}, log expects group {group} at index {}",
                snap.meta.index, meta.index
            ),
        });
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::MemVfs;

    fn snap() -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index: 7,
                term: 3,
                conf_state: ConfState::with_voters([1, 2]),
            },
            data: Bytes::from_static(b"state machine image"),
        }
    }

    #[test]
    fn snapshot_file_round_trips_and_its_name_parses() {
        let vfs = MemVfs::new();
        let dir = Path::new("/w/snap");
        let path = write(&vfs, dir, 9, &snap()).unwrap();
        assert_eq!(parse_group(&path), Some(9));
        assert_eq!(read(&vfs, &path, 9, &snap().meta).unwrap(), snap());
    }

    #[test]
    fn a_flipped_bit_in_a_snapshot_is_caught_on_load() {
        let vfs = MemVfs::new();
        let dir = Path::new("/w/snap");
        let path = write(&vfs, dir, 9, &snap()).unwrap();
        let mut bytes = vfs.read_file(&path).unwrap();
        bytes[50] ^= 4;
        vfs.write_file(&path, bytes);
        let err = read(&vfs, &path, 9, &snap().meta).unwrap_err();
        assert!(matches!(err, Error::BadSnapshot { .. }), "{err}");
    }
}
