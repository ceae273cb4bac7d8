//! Damage on disk: a torn tail is cut and reported; anything else is an error naming the file
//! and offset — never a panic, never silent loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::{Entry, EntryKind, Snapshot, SnapshotMeta};
use flotilla_wal::record::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use flotilla_wal::{Error, GroupWrite, MemVfs, Vfs, Wal, WalConfig};

const DIR: &str = "/wal";

fn ent(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: Bytes::from(vec![b'x'; 100]),
    }
}

fn config() -> WalConfig {
    WalConfig {
        segment_max_bytes: 1024,
        ..WalConfig::default()
    }
}

fn open(vfs: &MemVfs) -> Result<(Wal, flotilla_wal::RecoveryReport), Error> {
    Wal::open_with(Arc::new(vfs.clone()), DIR, config())
}

/// Writes `n` one-entry appends for group 1; with 1 KiB segments this spans several segments.
fn filled(n: u64) -> MemVfs {
    let vfs = MemVfs::new();
    let (wal, _) = open(&vfs).unwrap();
    for i in 1..=n {
        wal.append(&[GroupWrite {
            group: 1,
            entries: vec![ent(i)],
            hard_state: None,
        }])
        .unwrap();
    }
    vfs
}

fn segments(vfs: &MemVfs) -> Vec<PathBuf> {
    vfs.list(Path::new(DIR)).unwrap()
}

/// Offsets of the frames in a segment image.
fn frame_offsets(image: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    while pos + 8 <= image.len() {
        out.push(pos as u64);
        let len = u32::from_le_bytes(image[pos + 4..pos + 8].try_into().unwrap()) as usize;
        pos += FRAME_HEADER_BYTES as usize + len;
    }
    out
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_an_error_naming_file_and_offset() {
    let vfs = filled(30);
    let segs = segments(&vfs);
    assert!(segs.len() >= 3, "{segs:?}");
    let sealed = &segs[1];
    let mut image = vfs.read_file(sealed).unwrap();
    let frames = frame_offsets(&image);
    let victim = frames[frames.len() / 2];
    image[victim as usize + 20] ^= 0x10; // inside the payload
    vfs.write_file(sealed, image);

    let err = open(&vfs).unwrap_err();
    match &err {
        Error::Corrupted { file, offset, .. } => {
            assert_eq!((file, *offset), (sealed, victim));
        }
        other => panic!("expected Corrupted, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&sealed.display().to_string()) && msg.contains(&victim.to_string()),
        "{msg}"
    );
}

#[test]
fn damage_before_valid_records_in_the_last_segment_is_not_mistaken_for_a_torn_tail() {
    let vfs = filled(30);
    let last = segments(&vfs).pop().unwrap();
    let mut image = vfs.read_file(&last).unwrap();
    let frames = frame_offsets(&image);
    assert!(frames.len() >= 2);
    image[frames[0] as usize + 20] ^= 1;
    vfs.write_file(&last, image);
    let err = open(&vfs).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupted { file, offset, .. } if *file == last && *offset == frames[0]),
        "{err}"
    );
}

#[test]
fn a_torn_tail_is_truncated_reported_and_the_log_carries_on() {
    let vfs = filled(30);
    let last = segments(&vfs).pop().unwrap();
    let image = vfs.read_file(&last).unwrap();
    let frames = frame_offsets(&image);
    let cut = *frames.last().unwrap() as usize + 11; // partway into the last frame
    vfs.write_file(&last, image[..cut].to_vec());

    let (wal, report) = open(&vfs).unwrap();
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(
        (torn.file, torn.offset, torn.dropped_bytes),
        (last.clone(), *frames.last().unwrap(), 11)
    );
    assert_eq!(wal.last_index(1), 29, "only the torn append is gone");
    wal.append(&[GroupWrite {
        group: 1,
        entries: vec![ent(30)],
        hard_state: None,
    }])
    .unwrap();
    drop(wal);
    let (wal, report) = open(&vfs).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(wal.entries(1, 1, 31, u64::MAX).unwrap().len(), 30);
}

#[test]
fn an_unknown_segment_format_version_is_a_clear_error() {
    let vfs = filled(3);
    let first = segments(&vfs).remove(0);
    let mut image = vfs.read_file(&first).unwrap();
    image[8] = 99;
    let crc = crc32c::crc32c(&image[0..20]);
    image[20..24].copy_from_slice(&crc.to_le_bytes());
    vfs.write_file(&first, image);
    let err = open(&vfs).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::UnknownVersion {
                version: 99,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("unknown format version 99"));
}

#[test]
fn a_missing_middle_segment_is_an_error() {
    let vfs = filled(30);
    let segs = segments(&vfs);
    vfs.remove(&segs[1]).unwrap();
    let err = open(&vfs).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupted { file, .. } if *file == segs[1]),
        "{err}"
    );
}

#[test]
fn a_damaged_or_missing_snapshot_file_is_reported() {
    let vfs = MemVfs::new();
    {
        let (wal, _) = open(&vfs).unwrap();
        wal.append(&[GroupWrite {
            group: 1,
            entries: vec![ent(1)],
            hard_state: None,
        }])
        .unwrap();
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                ..Default::default()
            },
            data: Bytes::from_static(b"image"),
        };
        wal.save_snapshot(1, &snap, true).unwrap();
    }
    let snap_file = vfs.list(&Path::new(DIR).join("snap")).unwrap().remove(0);
    let mut image = vfs.read_file(&snap_file).unwrap();
    image[45] ^= 2;
    vfs.write_file(&snap_file, image);
    let (wal, _) = open(&vfs).unwrap();
    let err = wal.load_snapshot(1).unwrap_err();
    assert!(
        matches!(&err, Error::BadSnapshot { file, .. } if *file == snap_file),
        "{err}"
    );
    drop(wal);
    vfs.remove(&snap_file).unwrap();
    let err = open(&vfs).unwrap_err();
    assert!(
        matches!(&err, Error::BadSnapshot { file, .. } if *file == snap_file),
        "{err}"
    );
}

#[test]
fn an_unknown_record_version_is_a_clear_error_naming_file_and_offset() {
    let vfs = filled(3);
    let last = segments(&vfs).pop().unwrap();
    let mut image = vfs.read_file(&last).unwrap();
    let at = frame_offsets(&image)[0] as usize;
    let len = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize;
    image[at + 8] = 7; // the record's version byte; re-seal its checksum
    let crc = crc32c::crc32c(&image[at + 4..at + 8 + len]);
    image[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    vfs.write_file(&last, image);
    let err = open(&vfs).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownVersion { file, offset, version: 7, .. } if *file == last && *offset == at as u64),
        "{err}"
    );
}

#[test]
fn a_torn_header_of_a_new_last_segment_is_rewritten() {
    let vfs = filled(3);
    let mut segs = segments(&vfs);
    let next = Path::new(DIR).join(format!("{:020}.wal", segs.len() + 1));
    let header = vfs.read_file(&segs[0]).unwrap()[..10].to_vec(); // a header cut short
    vfs.write_file(&next, header);
    segs.push(next.clone());
    let (wal, report) = open(&vfs).unwrap();
    assert_eq!(report.torn_tail.map(|t| t.file), Some(next));
    assert_eq!(wal.last_index(1), 3);
    wal.append(&[GroupWrite {
        group: 1,
        entries: vec![ent(4)],
        hard_state: None,
    }])
    .unwrap();
    drop(wal);
    let (wal, _) = open(&vfs).unwrap();
    assert_eq!(wal.last_index(1), 4);
    assert_eq!(segments(&vfs), segs);
}
