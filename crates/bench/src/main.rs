//! `flotilla-bench`: an etcd v3 gRPC load generator that targets any etcd-API endpoint list
//! (a Flotilla cluster or an etcd cluster, the same client code for both), and a probe of the
//! disk's physical limits. See docs/benchmarks.md.
//!
//! ```text
//! flotilla-bench kv --endpoints 127.0.0.1:7379 --workload put --clients 64 --conns 8 --duration 10s
//! flotilla-bench disk --dir /var/tmp
//! ```
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use flotilla_kv::proto::etcdserverpb as pb;
use flotilla_kv::proto::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-bench",
    about = "etcd v3 API load generator and disk probe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs one workload against an etcd v3 API endpoint list.
    Kv(KvArgs),
    /// Measures the filesystem's 4 KiB append+fdatasync rate and sequential write MB/s.
    Disk(DiskArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    /// Puts from many clients over several connections.
    Put,
    /// Puts from one client, one at a time.
    SeqPut,
    /// Linearizable gets of prefilled keys.
    Get,
    /// Serializable gets of prefilled keys.
    GetSerializable,
    /// 90% linearizable gets, 10% puts (see --read-percent).
    Mixed,
    /// One writer, K watchers: latency from put to delivery at each watcher.
    Watch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct KvArgs {
    /// Comma-separated host:port list; connections are spread over it round-robin.
    #[arg(long, default_value = "127.0.0.1:7379", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Concurrent clients (each has one request in flight). seq-put always uses 1.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// How long to run, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many operations (0: no limit).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys written/read.
    #[arg(long, default_value_t = 10_000)]
    keyspace: u64,
    /// Read share of the mixed workload, in percent.
    #[arg(long, default_value_t = 90)]
    read_percent: u64,
    /// Watchers of the watch workload.
    #[arg(long, default_value_t = 16)]
    watchers: usize,
    /// A name for this run in the output (e.g. the system measured).
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, clap::Args)]
struct DiskArgs {
    /// Directory on the filesystem to measure (a temp file is created and removed).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One workload's result.
#[derive(Debug, Serialize)]
struct Report {
    label: String,
    workload: Workload,
    clients: usize,
    conns: usize,
    ops: u64,
    errors: u64,
    seconds: f64,
    ops_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    first_error: Option<String>,
}

/// What each client task counts.
struct Tally {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 µs .. 60 s, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
        }
    }

    fn ok(&mut self, started: Instant) {
        let us = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        self.hist.saturating_record(us);
    }

    fn err(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("same bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("bench/{i:0width$}", width = size.saturating_sub(6).max(1)).into_bytes();
    k.truncate(size.max(7));
    k
}

async fn connect(endpoints: &[String], conns: usize) -> anyhow::Result<Vec<Channel>> {
    if endpoints.is_empty() {
        bail!("no endpoints");
    }
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let url = if ep.contains("://") {
            ep.clone()
        } else {
            format!("http://{ep}")
        };
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// Shared stop condition: a deadline and an optional total.
struct Budget {
    deadline: Instant,
    max_ops: u64,
    issued: AtomicU64,
    done: AtomicU64,
}

impl Budget {
    /// The budget of a run starting now.
    fn start(args: &KvArgs) -> Arc<Budget> {
        Arc::new(Budget {
            deadline: Instant::now() + args.duration,
            max_ops: args.requests,
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }

    /// Claims the next operation; false once the budget is spent.
    fn next(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        (self.max_ops == 0 || n < self.max_ops).then_some(n)
    }
}

fn progress(args: &KvArgs, budget: Arc<Budget>) -> Option<tokio::task::JoinHandle<()>> {
    if args.no_progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let total_ms = args.duration.as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total_ms);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {wide_bar} {elapsed}/{duration} {msg}")
            .expect("template"),
    );
    let started = Instant::now();
    Some(tokio::spawn(async move {
        loop {
            let elapsed = started.elapsed();
            bar.set_position((elapsed.as_millis() as u64).min(total_ms));
            let done = budget.done.load(Ordering::Relaxed);
            bar.set_message(format!(
                "{done} ops, {:.0}/s",
                done as f64 / elapsed.as_secs_f64().max(1e-3)
            ));
            if Instant::now() >= budget.deadline {
                bar.finish_and_clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

async fn prefill(channels: &[Channel], args: &KvArgs, value: &[u8]) -> anyhow::Result<()> {
    let n = args.keyspace.min(100_000);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..64usize {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let value = value.to_vec();
        let key_size = args.key_size;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), tonic::Status>(());
                }
                kv.put(pb::PutRequest {
                    key: key(i, key_size),
                    value: value.clone(),
                    ..Default::default()
                })
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await?.context("prefill put")?;
    }
    Ok(())
}

async fn run_kv(args: KvArgs) -> anyhow::Result<Report> {
    let clients = if args.workload == Workload::SeqPut {
        1
    } else {
        args.clients.max(1)
    };
    let conns = if args.workload == Workload::SeqPut {
        1
    } else {
        args.conns.max(1)
    };
    let channels = connect(&args.endpoints, conns).await?;
    let value = vec![b'v'; args.value_size];
    if matches!(
        args.workload,
        Workload::Get | Workload::GetSerializable | Workload::Mixed
    ) {
        prefill(&channels, &args, &value).await?;
    }
    if args.workload == Workload::Watch {
        return run_watch(args, channels).await;
    }
    let budget = Budget::start(&args);
    let bar = progress(&args, budget.clone());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    let keyspace = match args.workload {
        Workload::Put | Workload::SeqPut => args.keyspace.max(1),
        _ => args.keyspace.clamp(1, 100_000),
    };
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let budget = budget.clone();
        let value = value.clone();
        let (workload, key_size, read_percent) = (args.workload, args.key_size, args.read_percent);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            // A per-client LCG spreads keys without a shared RNG.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            while let Some(n) = budget.next() {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let k = key((x >> 17) % keyspace, key_size);
                let read = match workload {
                    Workload::Get | Workload::GetSerializable => true,
                    Workload::Mixed => n % 100 < read_percent,
                    _ => false,
                };
                let t = Instant::now();
                let result = if read {
                    kv.range(pb::RangeRequest {
                        key: k,
                        serializable: workload == Workload::GetSerializable,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                } else {
                    kv.put(pb::PutRequest {
                        key: k,
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                };
                match result {
                    Ok(()) => tally.ok(t),
                    Err(e) => tally.err(format!("{:?}: {}", e.code(), e.message())),
                }
                budget.done.fetch_add(1, Ordering::Relaxed);
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.abort();
    }
    Ok(report(&args, clients, conns, total, seconds))
}

fn report(args: &KvArgs, clients: usize, conns: usize, t: Tally, seconds: f64) -> Report {
    let ms = |q: f64| t.hist.value_at_quantile(q) as f64 / 1000.0;
    let ops = t.hist.len();
    Report {
        label: args.label.clone(),
        workload: args.workload,
        clients,
        conns,
        ops,
        errors: t.errors,
        seconds,
        ops_per_sec: ops as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        first_error: t.first_error,
    }
}

/// One writer puts keys whose value starts with the send time; K watchers measure
/// put-to-delivery latency. ops = events delivered (summed over watchers).
async fn run_watch(args: KvArgs, channels: Vec<Channel>) -> anyhow::Result<Report> {
    let watchers = args.watchers.max(1);
    let epoch = Instant::now();
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    for w in 0..watchers {
        let mut client = WatchClient::new(channels[w % channels.len()].clone());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b"bench/w/".to_vec(),
                    range_end: b"bench/w0".to_vec(),
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The created response: the watch is in place before the writer starts.
        let created = stream.next().await.context("watch stream closed")??;
        if !created.created {
            bail!("watch not created: {created:?}");
        }
        ready.push(tx);
        let mut stop = stop.clone();
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = stop.wait_for(|&s| s) => break,
                };
                let Some(Ok(resp)) = msg else { break };
                let now_us = epoch.elapsed().as_micros() as u64;
                for e in resp.events {
                    let sent =
                        e.kv.as_ref()
                            .and_then(|kv| kv.value.get(..8))
                            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                    match sent {
                        Some(sent_us) => tally
                            .hist
                            .saturating_record(now_us.saturating_sub(sent_us).max(1)),
                        None => tally.err("event without a timestamp"),
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally
        }));
    }
    let budget = Budget::start(&args);
    let bar = progress(&args, budget.clone());
    let started = Instant::now();
    let mut kv = KvClient::new(channels[0].clone());
    let mut writer = Tally::new();
    let mut value = vec![b'v'; args.value_size.max(8)];
    while let Some(n) = budget.next() {
        value[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
        let mut k = b"bench/w/".to_vec();
        k.extend_from_slice(format!("{}", n % args.keyspace.max(1)).as_bytes());
        if let Err(e) = kv
            .put(pb::PutRequest {
                key: k,
                value: value.clone(),
                ..Default::default()
            })
            .await
        {
            writer.err(format!("{:?}: {}", e.code(), e.message()));
        }
        budget.done.fetch_add(1, Ordering::Relaxed);
    }
    let puts = budget.done.load(Ordering::Relaxed) - writer.errors;
    // Let the watchers drain what was written (bounded: 5 s), then stop them.
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    let expected = puts * watchers as u64;
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = expected.saturating_sub(delivered.load(Ordering::Relaxed));
    stop_tx.send_replace(true);
    drop(ready);
    let seconds = started.elapsed().as_secs_f64();
    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await?);
    }
    total.errors += writer.errors + missing;
    if missing > 0 && total.first_error.is_none() {
        total.first_error = Some(format!("{missing} events not delivered within 5 s"));
    }
    if total.first_error.is_none() {
        total.first_error = writer.first_error;
    }
    if let Some(bar) = bar {
        bar.abort();
    }
    Ok(report(&args, watchers, args.conns, total, seconds))
}

fn print_reports(reports: &[Report], output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            for r in reports {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        Output::Text => {
            writeln!(
                out,
                "{:<10} {:<17} {:>7} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7}",
                "label",
                "workload",
                "clients",
                "ops",
                "ops/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9",
                "errors"
            )?;
            for r in reports {
                writeln!(
                    out,
                    "{:<10} {:<17} {:>7} {:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
                    r.label,
                    r.workload
                        .to_possible_value()
                        .map(|v| v.get_name().to_string())
                        .unwrap_or_default(),
                    r.clients,
                    r.ops,
                    r.ops_per_sec,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.p999_ms,
                    r.errors
                )?;
                if let Some(e) = &r.first_error {
                    writeln!(out, "  first error: {e}")?;
                }
            }
        }
    }
    Ok(())
}

/// The disk's physical limits: 4 KiB append + fdatasync per op, and 1 MiB sequential
/// writes with one fdatasync per 64 MiB.
fn run_disk(args: DiskArgs) -> anyhow::Result<()> {
    let path = args
        .dir
        .join(format!(".flotilla-bench-disk-{}", std::process::id()));
    let result = (|| -> anyhow::Result<(f64, f64, f64)> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0xA5u8; 4096];
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < args.duration {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
            n += 1;
        }
        let fsyncs = n as f64 / start.elapsed().as_secs_f64();
        let p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
        f.set_len(0)?;
        let mb = vec![0x5Au8; 1 << 20];
        let start = Instant::now();
        let mut written = 0u64;
        while start.elapsed() < args.duration {
            for _ in 0..64 {
                f.write_all(&mb)?;
            }
            f.sync_data()?;
            written += 64 << 20;
        }
        let mbps = written as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
        Ok((fsyncs, p50_ms, mbps))
    })();
    let _ = std::fs::remove_file(&path);
    let (fsyncs, p50_ms, mbps) = result?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"fdatasync_4k_per_sec": fsyncs, "fdatasync_4k_p50_ms": p50_ms, "seq_write_mb_per_sec": mbps})
        ),
        Output::Text => println!(
            "disk {}: 4 KiB append+fdatasync {fsyncs:.0}/s (p50 {p50_ms:.2} ms), sequential write {mbps:.0} MB/s",
            args.dir.display()
        ),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Disk(args) => run_disk(args),
        Command::Kv(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let output = args.output;
            let report = rt.block_on(run_kv(args))?;
            print_reports(&[report], output)
        }
    }
}
