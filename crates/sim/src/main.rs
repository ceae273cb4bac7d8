//! `flotilla-sim`: runs many seeded cluster simulations and reports violations.
//!
//! ```text
//! cargo run --release -p flotilla-sim -- --seeds 1000 [--steps MS] [--nodes 5]
//! cargo run --release -p flotilla-sim -- --seed 42 --trace
//! ```
//! The last line is always `sim: <S> seeds, <V> violations, <O> ops checked`; the exit code
//! is non-zero if V > 0, and each failing seed is printed with what went wrong.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use flotilla_raft::Faults;
use flotilla_sim::{run_seed, RunOptions, RunReport};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of Flotilla Raft clusters")]
struct Args {
    /// Number of seeds to run (seeds `start..start+seeds`).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Run exactly this one seed (overrides --seeds/--start).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated milliseconds of the faulty phase of each run.
    #[arg(long, default_value_t = 20_000)]
    steps: u64,
    /// Initial voters.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Print the full event trace (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Print a one-line account of every seed (always on for a single --seed).
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Worker threads (each seed runs single-threaded and deterministically on one of them).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Inject a deliberate core bug to show the checkers catch it (debug builds only):
    /// `figure8` commits earlier-term entries by counting replicas; `vote` grants votes
    /// without the election restriction.
    #[arg(long)]
    fault: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut faults = Faults::default();
    match args.fault.as_deref() {
        None => {}
        Some("figure8") => faults.commit_earlier_term_by_count = true,
        Some("vote") => faults.vote_without_log_check = true,
        Some(other) => {
            eprintln!("unknown --fault {other:?} (known: figure8, vote)");
            return ExitCode::from(2);
        }
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    };
    let opts = |seed| RunOptions {
        seed,
        nodes: args.nodes,
        steps_ms: args.steps,
        faults,
        trace: args.trace,
    };
    // Quiet the default panic printout: a panicking seed is reported as a violation.
    std::panic::set_hook(Box::new(|_| {}));
    let reports = run_all(&seeds, args.threads.max(1), &opts);
    let mut violations = 0;
    let mut ops = 0;
    for r in &reports {
        for line in &r.trace {
            println!("{line}");
        }
        ops += r.ops_checked;
        violations += r.violations.len();
        if !r.violations.is_empty() {
            println!(
                "seed {} FAILED (replay: --seed {} --trace):",
                r.seed, r.seed
            );
            for v in &r.violations {
                println!("  {v}");
            }
        }
    }
    for r in reports.iter().filter(|_| seeds.len() == 1 || args.verbose) {
        let verdict = if r.violations.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        println!(
            "seed {}: {} [{verdict}, fingerprint {:016x}]",
            r.seed, r.summary, r.fingerprint
        );
    }
    println!(
        "sim: {} seeds, {} violations, {} ops checked",
        seeds.len(),
        violations,
        ops
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs seeds on `threads` workers; results come back in seed order.
fn run_all(
    seeds: &[u64],
    threads: usize,
    opts: &(dyn Fn(u64) -> RunOptions + Sync),
) -> Vec<RunReport> {
    let next = AtomicU64::new(0);
    let mut results: Vec<(usize, RunReport)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&seed) = seeds.get(i) else { break };
                        mine.push((i, run_seed(&opts(seed))));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}
