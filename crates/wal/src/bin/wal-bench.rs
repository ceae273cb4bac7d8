//! `wal-bench`: the disk's physical limits and the WAL's throughput and latency, side by side,
//! in one run on this machine.
//!
//! ```text
//! cargo run --release -p flotilla-wal --bin wal-bench -- [--dir DIR] [--seconds S] [--threads T]
//! ```
//!
//! Rows: raw 4 KiB append + fdatasync; raw 1 MiB append + fdatasync; the WAL with 1, 100 and
//! 10,000 groups appending 128 B entries (T submitter threads, each call persisting one entry
//! for each of the thread's groups, as an engine persists many groups' Readies at once); the
//! WAL with 1 MiB batches from 1 thread (one batch per sync, comparable to the raw row) and
//! from 4 threads (batches share syncs). Each row runs for S seconds (default 2.5; whole run < 30 s).
//! The default directory is under the system temp dir; it is deleted afterwards.
// A benchmark measures wall-clock time and runs submitter threads by nature.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_raft::{Entry, EntryKind};
use flotilla_wal::{GroupWrite, Wal, WalConfig};

struct Args {
    dir: PathBuf,
    seconds: f64,
    threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: std::env::temp_dir().join(format!("wal-bench-{}", std::process::id())),
        seconds: 2.5,
        threads: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--seconds" => args.seconds = value.parse().expect("--seconds takes a number"),
            "--threads" => args.threads = value.parse().expect("--threads takes a number"),
            _ => panic!("unknown flag {flag}; flags: --dir DIR --seconds S --threads T"),
        }
    }
    args
}

/// One row of the report.
struct Row {
    name: String,
    ops_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    syncs_note: String,
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

/// Appends `block_bytes` at the end of a file and fdatasyncs, for `seconds`.
fn raw(dir: &Path, block_bytes: usize, seconds: f64) -> Row {
    let path = dir.join(format!("raw-{block_bytes}"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![0xA5u8; block_bytes];
    let mut lat_us = Vec::new();
    let start = Instant::now();
    let mut offset = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f.write_all_at(&block, offset).unwrap();
        f.sync_data().unwrap();
        lat_us.push(t.elapsed().as_micros() as u64);
        offset += block_bytes as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    lat_us.sort_unstable();
    let n = lat_us.len() as f64;
    Row {
        name: format!("raw {} append + fdatasync", human(block_bytes)),
        ops_per_s: n / secs,
        mb_per_s: n * block_bytes as f64 / secs / 1e6,
        p50_ms: percentile(&lat_us, 0.5),
        p99_ms: percentile(&lat_us, 0.99),
        syncs_note: format!("{} syncs", lat_us.len()),
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// `groups` groups spread over `threads` submitters; each call persists `entries_per_call`
/// entries of `entry_bytes` for each of the thread's groups.
fn wal_case(
    dir: &Path,
    name: String,
    groups: u64,
    threads: usize,
    entry_bytes: usize,
    entries_per_call: u64,
    seconds: f64,
) -> Row {
    let wal_dir = dir.join("wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    // The bench never compacts (no state machine), so rewriting "pinning" groups would copy
    // the whole benchmark history; turn it off and let the log grow for the run.
    let config = WalConfig {
        rewrite_after_segments: u64::MAX,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(&wal_dir, config).unwrap();
    let wal = Arc::new(wal);
    let threads = threads.min(groups as usize).max(1);
    let payload = Bytes::from(vec![0x5Au8; entry_bytes]);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let results: Vec<(u64, Vec<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let wal = wal.clone();
                let payload = payload.clone();
                s.spawn(move || {
                    let mine: Vec<u64> =
                        (0..groups).filter(|g| *g as usize % threads == t).collect();
                    let mut next_index = vec![1u64; mine.len()];
                    let mut lat_us = Vec::new();
                    let mut entries_done = 0u64;
                    while Instant::now() < deadline {
                        let batch: Vec<GroupWrite> = mine
                            .iter()
                            .zip(next_index.iter_mut())
                            .map(|(&group, next)| {
                                let entries = (0..entries_per_call)
                                    .map(|i| Entry {
                                        term: 1,
                                        index: *next + i,
                                        kind: EntryKind::Normal,
                                        data: payload.clone(),
                                    })
                                    .collect();
                                *next += entries_per_call;
                                GroupWrite {
                                    group,
                                    entries,
                                    hard_state: None,
                                }
                            })
                            .collect();
                        let t0 = Instant::now();
                        wal.append(&batch).unwrap();
                        lat_us.push(t0.elapsed().as_micros() as u64);
                        entries_done += mine.len() as u64 * entries_per_call;
                    }
                    (entries_done, lat_us)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let entries: u64 = results.iter().map(|r| r.0).sum();
    let mut lat_us: Vec<u64> = results.into_iter().flat_map(|r| r.1).collect();
    lat_us.sort_unstable();
    let stats = wal.stats();
    drop(wal);
    let _ = std::fs::remove_dir_all(&wal_dir);
    Row {
        name,
        ops_per_s: entries as f64 / secs,
        mb_per_s: entries as f64 * entry_bytes as f64 / secs / 1e6,
        p50_ms: percentile(&lat_us, 0.5),
        p99_ms: percentile(&lat_us, 0.99),
        syncs_note: format!(
            "{} calls, {threads} threads, {} fdatasyncs ({:.1} calls/sync)",
            lat_us.len(),
            stats.syncs,
            stats.requests as f64 / stats.syncs.max(1) as f64
        ),
    }
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).unwrap();
    println!(
        "wal-bench: dir {} | {} s per row | {} submitter threads",
        args.dir.display(),
        args.seconds,
        args.threads
    );
    let s = args.seconds;
    let t = args.threads;
    let rows = vec![
        raw(&args.dir, 4096, s),
        raw(&args.dir, 1 << 20, s),
        wal_case(
            &args.dir,
            "wal 1 group, 128 B entries".into(),
            1,
            t,
            128,
            1,
            s,
        ),
        wal_case(
            &args.dir,
            "wal 100 groups, 128 B entries".into(),
            100,
            t,
            128,
            1,
            s,
        ),
        wal_case(
            &args.dir,
            "wal 10000 groups, 128 B entries".into(),
            10_000,
            t,
            128,
            1,
            s,
        ),
        wal_case(
            &args.dir,
            "wal 1 MiB batches, 1 thread".into(),
            1,
            1,
            128 << 10,
            8,
            s,
        ),
        wal_case(
            &args.dir,
            "wal 1 MiB batches, 4 threads".into(),
            4,
            4,
            128 << 10,
            8,
            s,
        ),
    ];
    let _ = std::fs::remove_dir_all(&args.dir);
    println!(
        "{:<36} {:>14} {:>10} {:>9} {:>9}  notes",
        "case", "ops/s", "MB/s", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!(
            "{:<36} {:>14.0} {:>10.1} {:>9.3} {:>9.3}  {}",
            r.name, r.ops_per_s, r.mb_per_s, r.p50_ms, r.p99_ms, r.syncs_note
        );
    }
    println!("(ops/s: fdatasyncs for raw rows, durable entries for wal rows; latency: per call, append to durable)");
    let raw_fsync = rows[0].ops_per_s;
    let raw_mb = rows[1].mb_per_s;
    println!(
        "ratios: wal 1 MiB batches = {:.0}% (1 thread, one batch per sync) and {:.0}% (4 threads) \
         of raw sequential MB/s (target >= 80%); wal 10000 groups = {:.1}x raw fdatasync/s \
         (target >= 20x)",
        100.0 * rows[5].mb_per_s / raw_mb,
        100.0 * rows[6].mb_per_s / raw_mb,
        rows[4].ops_per_s / raw_fsync
    );
}
