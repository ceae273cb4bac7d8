//! One randomized run ("seed"): clients run while a nemesis injects faults; then the nemesis
//! stops, the network heals and every node restarts, and the cluster must make progress
//! within a bounded number of ticks (liveness). Finally the client history is checked for
//! linearizability.

use std::panic::{catch_unwind, AssertUnwindSafe};

use flotilla_raft::{ConfChangeOp, Faults, NodeId};
use rand::{Rng, SeedableRng};

use crate::cluster::{Sim, SimConfig};
use crate::linearizability::{check, CheckResult};
use crate::store::StoreFactory;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// Initial voters.
    pub nodes: u64,
    /// Simulated milliseconds of the faulty phase.
    pub steps_ms: u64,
    /// Deliberate core bugs.
    pub faults: Faults,
    /// Record a trace.
    pub trace: bool,
}

impl RunOptions {
    /// Defaults: 5 nodes, 20 simulated seconds of faults.
    pub fn new(seed: u64) -> Self {
        RunOptions {
            seed,
            nodes: 5,
            steps_ms: 20_000,
            faults: Faults::default(),
            trace: false,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Everything that went wrong (empty for a passing run).
    pub violations: Vec<String>,
    /// Client operations the linearizability checker examined.
    pub ops_checked: usize,
    /// Entries committed during the run.
    pub committed: usize,
    /// The trace, if requested.
    pub trace: Vec<String>,
    /// Fingerprint of the run's observable outcome (identical for identical seeds).
    pub fingerprint: u64,
    /// One-line account of what happened.
    pub summary: String,
}

/// After healing, a leader must commit a new write within this many ticks.
pub const LIVENESS_TICKS: u64 = 500;
/// ...and every member must apply it within this many more. A learner can be hundreds of
/// entries behind, and with one-entry appends and one message in flight (a per-seed knob)
/// catching up takes one round trip per entry.
pub const CATCH_UP_TICKS: u64 = 3_000;
/// Search budget of the linearizability checker per key.
const LIN_STEPS_PER_KEY: u64 = 5_000_000;

/// Runs one seed; a panic inside the core or the simulator is reported as a violation.
pub fn run_seed(opts: &RunOptions) -> RunReport {
    run_seed_with(opts, || Box::new(crate::store::MemStores::default()))
}

/// Like [`run_seed`], with node storage from `stores` (e.g. the WAL).
pub fn run_seed_with(
    opts: &RunOptions,
    stores: impl FnOnce() -> Box<dyn StoreFactory>,
) -> RunReport {
    match catch_unwind(AssertUnwindSafe(|| run_inner(opts, stores()))) {
        Ok(report) => report,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            RunReport {
                seed: opts.seed,
                violations: vec![format!("panic: {msg}")],
                ops_checked: 0,
                committed: 0,
                trace: Vec::new(),
                fingerprint: 0,
                summary: String::new(),
            }
        }
    }
}

fn run_inner(opts: &RunOptions, stores: Box<dyn StoreFactory>) -> RunReport {
    let mut cfg = SimConfig::new(opts.seed);
    cfg.nodes = opts.nodes;
    cfg.clients = 4;
    cfg.faults = opts.faults;
    cfg.trace = opts.trace;
    // Each seed picks its own message sizing: tiny appends split catch-up into many round
    // trips, which is where commit-rule bugs show.
    let mut knobs = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    cfg.max_msg_entries = [1, 3, 64][knobs.gen_range(0..3)];
    cfg.max_inflight_msgs = [1, 4, 16][knobs.gen_range(0..3)];
    cfg.snapshot_every = [16, 64, 1000][knobs.gen_range(0..3)];
    let mut sim = Sim::with_stores(cfg, stores);
    // Each seed picks its own network quality.
    let loss = [0.0, 0.01, 0.05][sim.rng().gen_range(0..3)];
    let dup = [0.0, 0.02][sim.rng().gen_range(0..2)];
    sim.cfg.max_latency_ms = sim.rng().gen_range(1..=12);
    sim.set_unreliable(loss, dup);
    let mut next_id = opts.nodes + 1;
    sim.start_clients();

    // Half the seeds get the general mix of faults; the other half "leader churn" (Raft
    // Figure 8): leaders crash soon after they start accepting writes, while up to a
    // minority of nodes is down, so logs diverge at the tail again and again.
    let churn = knobs.gen_bool(0.5);
    while sim.now() < opts.steps_ms {
        if churn {
            // Short waits catch leaders right after their election, before their no-op
            // (and what it carries) has replicated.
            let wait = if sim.rng().gen_bool(0.5) {
                sim.rng().gen_range(1..15)
            } else {
                sim.rng().gen_range(15..150)
            };
            sim.run_for(wait);
            churn_step(&mut sim, opts.nodes);
        } else {
            let wait = sim.rng().gen_range(20..300);
            sim.run_for(wait);
            nemesis_step(&mut sim, &mut next_id);
        }
        sim.check_log_matching();
    }

    // Heal everything and demand progress.
    sim.stop_clients();
    sim.heal();
    sim.set_unreliable(0.0, 0.0);
    for id in sim.nodes.keys().copied().collect::<Vec<_>>() {
        sim.start(id);
    }
    let bound_ms = LIVENESS_TICKS * sim.cfg.tick_ms;
    let healed_at = sim.now();
    let probe = sim.put(u64::MAX, u64::MAX, bound_ms);
    let recovery_ticks = (sim.now() - healed_at) / sim.cfg.tick_ms;
    match probe {
        Some(index) => {
            // Membership may still be settling (a pending removal); judge by the leader's
            // configuration as it is when the check runs.
            let members = |s: &Sim| -> Vec<NodeId> {
                s.conf_state()
                    .map(|c| c.members().into_iter().collect())
                    .unwrap_or_default()
            };
            let deadline = sim.now() + CATCH_UP_TICKS * sim.cfg.tick_ms;
            let all_applied = |s: &Sim| {
                let m = members(s);
                !m.is_empty() && m.iter().all(|id| s.applied(*id) >= index)
            };
            if !sim.run_until(deadline, all_applied) {
                let status = sim.leader().and_then(|l| sim.status(l));
                let m = members(&sim);
                sim.violations.push(format!(
                    "liveness: members {m:?} did not all apply index {index} within {CATCH_UP_TICKS} ticks of its commit; leader status: {status:?}"
                ));
            }
        }
        None => sim.violations.push(format!(
            "liveness: no write committed within {LIVENESS_TICKS} ticks of healing (leaders: {:?})",
            sim.leaders()
        )),
    }
    let deadline = sim.now() + 2 * sim.cfg.client_timeout_ms;
    sim.run_until(deadline, |s| s.clients_idle());
    sim.check_log_matching();

    match check(&sim.history, LIN_STEPS_PER_KEY) {
        CheckResult::Ok => {}
        CheckResult::Illegal { key, detail } => sim
            .violations
            .push(format!("history not linearizable on key {key}: {detail}")),
        CheckResult::Unknown { key } => sim.violations.push(format!(
            "linearizability check ran out of budget on key {key}"
        )),
    }
    let faults: Vec<String> = sim.stats.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let summary = format!(
        "{} nodes ({}), loss {loss}, dup {dup}; {}; {} entries committed; {} client ops; \
         write committed {recovery_ticks} ticks after healing",
        opts.nodes,
        if churn {
            "leader churn"
        } else {
            "mixed faults"
        },
        faults.join(", "),
        sim.committed_len(),
        sim.history.len(),
    );
    RunReport {
        summary,
        seed: opts.seed,
        violations: sim.violations.clone(),
        ops_checked: sim.history.len(),
        committed: sim.committed_len(),
        trace: sim.trace_lines().to_vec(),
        fingerprint: sim.fingerprint(),
    }
}

/// Leader churn: crash the leader, or restart someone, keeping at most a minority down.
fn churn_step(sim: &mut Sim, nodes: u64) {
    let running = sim.running();
    let down: Vec<NodeId> = sim
        .nodes
        .keys()
        .copied()
        .filter(|id| !running.contains(id))
        .collect();
    let max_down = ((nodes - 1) / 2) as usize;
    if sim.rng().gen_bool(0.6) && down.len() < max_down {
        if let Some(l) = sim.leader() {
            // Isolating also drops the leader's messages still in flight; crashing loses
            // what it had not persisted.
            if sim.rng().gen_bool(0.5) {
                sim.isolate(l);
            } else {
                sim.crash(l);
            }
            return;
        }
    }
    if sim.rng().gen_bool(0.3) {
        sim.heal();
    }
    if let Some(&id) = pick(sim, &down) {
        sim.start(id);
    }
}

/// One random fault (or repair).
fn nemesis_step(sim: &mut Sim, next_id: &mut NodeId) {
    let running = sim.running();
    let all: Vec<NodeId> = sim.nodes.keys().copied().collect();
    let roll = sim.rng().gen_range(0..100);
    match roll {
        0..=14 => {
            if let Some(&id) = pick(sim, &running) {
                sim.crash(id);
            }
        }
        15..=34 => {
            let down: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|id| !running.contains(id))
                .collect();
            if let Some(&id) = pick(sim, &down) {
                sim.start(id);
            }
        }
        35..=44 => {
            let mut shuffled = all.clone();
            for i in (1..shuffled.len()).rev() {
                let j = sim.rng().gen_range(0..=i);
                shuffled.swap(i, j);
            }
            let k = sim.rng().gen_range(1..shuffled.len().max(2));
            let (a, b) = shuffled.split_at(k.min(shuffled.len()));
            sim.partition(a, b);
        }
        45..=49 => {
            if let (Some(&a), Some(&b)) = (pick(sim, &all), pick(sim, &all)) {
                if a != b {
                    sim.cut_link(a, b);
                }
            }
        }
        50..=57 => {
            if let Some(l) = sim.leader() {
                sim.isolate(l);
            }
        }
        58..=74 => sim.heal(),
        75..=89 => change_membership(sim, next_id),
        _ => {
            let voters: Vec<NodeId> = sim
                .conf_state()
                .map(|c| c.voters.into_iter().collect())
                .unwrap_or_default();
            if let Some(&to) = pick(sim, &voters) {
                sim.transfer_leader(to);
            }
        }
    }
}

fn change_membership(sim: &mut Sim, next_id: &mut NodeId) {
    let Some(conf) = sim.conf_state() else { return };
    let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
    let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
    match sim.rng().gen_range(0..3) {
        0 if conf.members().len() < 8 => {
            let id = *next_id;
            if sim.change_membership(&[ConfChangeOp::AddLearner(id)]) {
                *next_id += 1;
                sim.add_node(id);
            }
        }
        1 => {
            if let Some(&id) = pick(sim, &learners) {
                sim.change_membership(&[ConfChangeOp::AddVoter(id)]);
            }
        }
        _ if voters.len() > 3 => {
            if let Some(&id) = pick(sim, &voters) {
                sim.change_membership(&[ConfChangeOp::Remove(id)]);
            }
        }
        _ => {}
    }
}

fn pick<'a>(sim: &mut Sim, from: &'a [NodeId]) -> Option<&'a NodeId> {
    if from.is_empty() {
        return None;
    }
    let i = sim.rng().gen_range(0..from.len());
    from.get(i)
}
