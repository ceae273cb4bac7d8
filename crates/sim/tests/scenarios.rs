//! The classic Raft-lab scenarios, scripted over the simulator. Every scenario ends with
//! the simulator's invariant checks (one leader per term, log matching, leader completeness,
//! identical applied entries and state machines, commit never decreasing) and, where clients
//! ran, a linearizability check of their history.

use flotilla_raft::{ConfChangeOp, Faults, NodeId, Role};
use flotilla_sim::linearizability::{check, CheckResult};
use flotilla_sim::{run_seed, RunOptions, Sim, SimConfig};

/// 100 ticks of 10 ms: generous bound for an election plus replication.
const SECOND: u64 = 1_000;

fn sim(nodes: u64, seed: u64) -> Sim {
    Sim::new(SimConfig {
        nodes,
        ..SimConfig::new(seed)
    })
}

fn wait_leader(s: &mut Sim, within_ms: u64) -> NodeId {
    let deadline = s.now() + within_ms;
    assert!(
        s.run_until(deadline, |s| s.leader().is_some()),
        "no leader within {within_ms} ms"
    );
    s.leader().unwrap()
}

fn wait_leader_among(s: &mut Sim, ids: &[NodeId], within_ms: u64) -> NodeId {
    let deadline = s.now() + within_ms;
    let is = |s: &Sim| s.leaders().iter().any(|(l, _)| ids.contains(l));
    assert!(
        s.run_until(deadline, is),
        "no leader among {ids:?} within {within_ms} ms"
    );
    s.leaders()
        .into_iter()
        .find(|(l, _)| ids.contains(l))
        .unwrap()
        .0
}

/// Invariants held throughout, logs match, and the client history is linearizable.
fn assert_safe(s: &mut Sim) {
    s.check_log_matching();
    assert!(s.violations.is_empty(), "violations: {:#?}", s.violations);
    match check(&s.history, 5_000_000) {
        CheckResult::Ok => {}
        other => panic!("history of {} ops: {other:?}", s.history.len()),
    }
}

fn all(s: &Sim) -> Vec<NodeId> {
    s.nodes.keys().copied().collect()
}

#[test]
fn initial_election_picks_one_stable_leader() {
    let mut s = sim(3, 1);
    let leader = wait_leader(&mut s, SECOND);
    let term = s.status(leader).unwrap().term;
    s.run_for(2 * SECOND);
    assert_eq!(
        s.leaders(),
        vec![(leader, term)],
        "no elections without failures"
    );
    for id in all(&s) {
        assert_eq!(s.status(id).unwrap().leader, leader);
    }
    assert_safe(&mut s);
}

#[test]
fn a_new_leader_is_elected_after_leader_loss_and_the_old_one_rejoins_quietly() {
    let mut s = sim(3, 2);
    let old = wait_leader(&mut s, SECOND);
    s.crash(old);
    let others: Vec<NodeId> = all(&s).into_iter().filter(|&id| id != old).collect();
    let new = wait_leader_among(&mut s, &others, SECOND);
    let term = s.status(new).unwrap().term;
    s.start(old);
    s.run_for(SECOND);
    assert_eq!(s.leaders(), vec![(new, term)]);
    assert_eq!(s.status(old).unwrap().role, Role::Follower);
    assert_safe(&mut s);
}

#[test]
fn no_leader_without_a_quorum() {
    let mut s = sim(5, 3);
    let leader = wait_leader(&mut s, SECOND);
    let others: Vec<NodeId> = all(&s).into_iter().filter(|&id| id != leader).collect();
    for &id in &others[..3] {
        s.crash(id);
    }
    s.run_for(2 * SECOND);
    assert!(
        s.leaders().is_empty(),
        "leaders without quorum: {:?}",
        s.leaders()
    );
    assert_safe(&mut s);
}

#[test]
fn basic_agreement_every_node_applies_the_same_entries() {
    let mut s = sim(3, 4);
    wait_leader(&mut s, SECOND);
    let mut last = 0;
    for v in 1..=3 {
        last = s.put(1, v, SECOND).expect("committed");
    }
    assert!(s.wait_applied(&all(&s), last, SECOND));
    for id in all(&s) {
        assert_eq!(s.value_at(id, 1), Some(3));
    }
    assert_safe(&mut s);
}

#[test]
fn agreement_despite_a_disconnected_follower() {
    let mut s = sim(3, 5);
    let leader = wait_leader(&mut s, SECOND);
    let follower = all(&s).into_iter().find(|&id| id != leader).unwrap();
    s.isolate(follower);
    let idx = s.put(1, 10, SECOND).expect("a majority is connected");
    s.put(1, 11, SECOND).expect("committed");
    assert!(s.applied(follower) < idx);
    s.heal();
    let last = s.put(1, 12, 2 * SECOND).expect("committed");
    assert!(s.wait_applied(&all(&s), last, SECOND));
    assert_eq!(s.value_at(follower, 1), Some(12));
    assert_safe(&mut s);
}

#[test]
fn no_agreement_without_a_quorum_until_it_returns() {
    let mut s = sim(5, 6);
    let leader = wait_leader(&mut s, SECOND);
    let others: Vec<NodeId> = all(&s).into_iter().filter(|&id| id != leader).collect();
    for &id in &others[..3] {
        s.isolate(id);
    }
    assert_eq!(
        s.put(1, 1, SECOND),
        None,
        "nothing commits without a quorum"
    );
    s.heal();
    let idx = s
        .put(1, 2, 3 * SECOND)
        .expect("commits once the quorum is back");
    assert!(s.wait_applied(&all(&s), idx, SECOND));
    assert_safe(&mut s);
}

#[test]
fn concurrent_proposals_are_linearizable() {
    let mut s = Sim::new(SimConfig {
        nodes: 3,
        clients: 8,
        ..SimConfig::new(7)
    });
    wait_leader(&mut s, SECOND);
    s.start_clients();
    s.run_for(3 * SECOND);
    s.stop_clients();
    s.run_for(SECOND);
    assert!(
        s.history.len() > 200,
        "only {} ops completed",
        s.history.len()
    );
    assert!(
        s.history.iter().all(|op| op.output.is_some()),
        "no timeouts on a healthy cluster"
    );
    assert_safe(&mut s);
}

#[test]
fn a_partitioned_leader_rejoins_and_its_uncommitted_entries_are_discarded() {
    let mut s = sim(3, 8);
    let old = wait_leader(&mut s, SECOND);
    s.isolate(old);
    for v in 0..5 {
        s.propose_at(
            old,
            flotilla_sim::kv::Command {
                client: 99,
                seq: v,
                key: 2,
                op: flotilla_sim::kv::WriteOp::Put(1000 + v),
            }
            .encode(),
        )
        .expect("the isolated leader still accepts");
    }
    let others: Vec<NodeId> = all(&s).into_iter().filter(|&id| id != old).collect();
    wait_leader_among(&mut s, &others, 2 * SECOND);
    s.put(2, 7, SECOND).expect("the majority side commits");
    s.heal();
    let idx = s.put(2, 8, 2 * SECOND).expect("committed");
    assert!(s.wait_applied(&all(&s), idx, SECOND));
    for id in all(&s) {
        assert_eq!(s.value_at(id, 2), Some(8), "node {id}");
    }
    assert_safe(&mut s);
}

#[test]
fn fast_backup_repairs_long_divergent_logs_quickly() {
    // Lab 2B "backup": a leader and one follower gather 50 uncommitted entries while the
    // other three commit 50 different ones; then the sides swap. Catch-up must not take one
    // round trip per entry.
    let mut s = sim(5, 9);
    let leader = wait_leader(&mut s, SECOND);
    let ids = all(&s);
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let rest: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&id| id != leader && id != follower)
        .collect();
    s.partition(&[leader, follower], &rest);
    for v in 0..50 {
        let cmd = flotilla_sim::kv::Command {
            client: 98,
            seq: v,
            key: 3,
            op: flotilla_sim::kv::WriteOp::Put(v),
        };
        s.propose_at(leader, cmd.encode()).unwrap();
    }
    s.run_for(100);
    wait_leader_among(&mut s, &rest, 2 * SECOND);
    for v in 0..50 {
        s.put(3, 500 + v, SECOND).expect("majority side commits");
    }
    s.heal();
    let start = s.now();
    let idx = s.put(3, 999, 2 * SECOND).expect("committed after heal");
    assert!(s.wait_applied(&ids, idx, 2 * SECOND));
    let ticks = (s.now() - start) / s.cfg.tick_ms;
    assert!(ticks < 100, "catch-up took {ticks} ticks");
    for id in ids {
        assert_eq!(s.value_at(id, 3), Some(999));
    }
    assert_safe(&mut s);
}

#[test]
fn committed_entries_survive_a_crash_of_every_node() {
    let mut s = sim(3, 10);
    wait_leader(&mut s, SECOND);
    let idx = s.put(4, 42, SECOND).unwrap();
    assert!(s.wait_applied(&all(&s), idx, SECOND));
    for id in all(&s) {
        s.crash(id);
    }
    for id in all(&s) {
        s.start(id);
    }
    wait_leader(&mut s, 2 * SECOND);
    let idx = s.put(5, 1, 2 * SECOND).expect("cluster recovers");
    assert!(s.wait_applied(&all(&s), idx, SECOND));
    for id in all(&s) {
        assert_eq!(
            s.value_at(id, 4),
            Some(42),
            "node {id} lost a committed write"
        );
    }
    assert_safe(&mut s);
}

/// Lab 2C "Figure 8": leaders keep crashing soon after they start, with up to a minority
/// down at a time; then everything recovers and must agree.
fn figure8(seed: u64, unreliable: bool) {
    let mut s = Sim::new(SimConfig {
        nodes: 5,
        clients: 3,
        ..SimConfig::new(seed)
    });
    if unreliable {
        s.set_unreliable(0.1, 0.05);
        s.cfg.max_latency_ms = 20;
    }
    s.start_clients();
    for _ in 0..60 {
        let wait = if s.rng_bool(0.5) {
            s.rng_range(1, 15)
        } else {
            s.rng_range(15, 300)
        };
        s.run_for(wait);
        let down = all(&s).len() - s.running().len();
        if let Some(l) = s.leader() {
            if down < 2 {
                s.crash(l);
            }
        }
        if down >= 2 || s.rng_bool(0.3) {
            let crashed: Vec<NodeId> = all(&s)
                .into_iter()
                .filter(|id| !s.running().contains(id))
                .collect();
            if let Some(&id) = crashed.first() {
                s.start(id);
            }
        }
    }
    s.stop_clients();
    s.set_unreliable(0.0, 0.0);
    for id in all(&s) {
        s.start(id);
    }
    let idx = s.put(6, 6, 5 * SECOND).expect("recovers after churn");
    assert!(s.wait_applied(&all(&s), idx, 2 * SECOND));
    s.run_for(SECOND);
    assert_safe(&mut s);
}

#[test]
fn figure8_leader_churn_on_a_reliable_network() {
    for seed in 11..14 {
        figure8(seed, false);
    }
}

#[test]
fn figure8_leader_churn_on_an_unreliable_network() {
    for seed in 21..24 {
        figure8(seed, true);
    }
}

#[test]
fn unreliable_churn_with_clients_stays_linearizable() {
    let mut s = Sim::new(SimConfig {
        nodes: 5,
        clients: 5,
        ..SimConfig::new(31)
    });
    s.set_unreliable(0.05, 0.05);
    s.cfg.max_latency_ms = 15;
    s.start_clients();
    for _ in 0..40 {
        let wait = s.rng_range(20, 200);
        s.run_for(wait);
        let ids = all(&s);
        let id = ids[s.rng_range(0, ids.len() as u64) as usize];
        if s.running().contains(&id) && s.running().len() > 3 {
            s.crash(id);
        } else {
            s.start(id);
        }
    }
    s.stop_clients();
    s.set_unreliable(0.0, 0.0);
    for id in all(&s) {
        s.start(id);
    }
    s.put(7, 7, 5 * SECOND).expect("recovers");
    s.run_for(SECOND);
    assert!(s.history.len() > 100);
    assert_safe(&mut s);
}

#[test]
fn a_lagging_restarted_node_catches_up_by_snapshot() {
    let mut s = Sim::new(SimConfig {
        nodes: 3,
        snapshot_every: 10,
        ..SimConfig::new(41)
    });
    let leader = wait_leader(&mut s, SECOND);
    let lagger = all(&s).into_iter().find(|&id| id != leader).unwrap();
    s.crash(lagger);
    let mut idx = 0;
    for v in 0..40 {
        idx = s.put(8, v, SECOND).unwrap();
    }
    let leader_snapshot = s.snapshot_index(s.leader().unwrap());
    assert!(
        leader_snapshot > 10,
        "leader compacted its log (snapshot at {leader_snapshot})"
    );
    s.start(lagger);
    assert!(s.wait_applied(&[lagger], idx, 2 * SECOND));
    assert_eq!(
        s.snapshots_installed(lagger),
        1,
        "caught up from the leader's snapshot"
    );
    assert_eq!(s.value_at(lagger, 8), Some(39));
    assert_safe(&mut s);
}

#[test]
fn membership_changes_under_a_partition_converge() {
    let mut s = Sim::new(SimConfig {
        nodes: 5,
        clients: 3,
        ..SimConfig::new(51)
    });
    let leader = wait_leader(&mut s, SECOND);
    s.start_clients();
    let minority: Vec<NodeId> = all(&s)
        .into_iter()
        .filter(|&id| id != leader)
        .take(2)
        .collect();
    let majority: Vec<NodeId> = all(&s)
        .into_iter()
        .filter(|id| !minority.contains(id))
        .collect();
    s.partition(&minority, &majority);
    // Add node 6 as a learner, promote it, then remove one of the cut-off voters.
    assert!(s.change_membership(&[ConfChangeOp::AddLearner(6)]));
    s.add_node(6);
    s.run_for(500);
    assert!(s.change_membership(&[ConfChangeOp::AddVoter(6)]));
    s.run_for(500);
    assert!(s.change_membership(&[ConfChangeOp::Remove(minority[0])]));
    s.run_for(500);
    s.heal();
    s.stop_clients();
    let idx = s.put(9, 9, 3 * SECOND).expect("commits after heal");
    let conf = s.conf_state().unwrap();
    assert!(!conf.is_joint());
    assert!(conf.voters.contains(&6));
    assert!(!conf.voters.contains(&minority[0]));
    let members: Vec<NodeId> = conf.members().into_iter().collect();
    assert!(s.wait_applied(&members, idx, 2 * SECOND));
    assert_safe(&mut s);
}

#[test]
fn leadership_transfer_under_load_keeps_the_history_linearizable() {
    let mut s = Sim::new(SimConfig {
        nodes: 3,
        clients: 4,
        ..SimConfig::new(61)
    });
    let leader = wait_leader(&mut s, SECOND);
    s.start_clients();
    s.run_for(300);
    let to = all(&s).into_iter().find(|&id| id != leader).unwrap();
    assert!(s.transfer_leader(to));
    s.run_for(500);
    assert_eq!(s.leader(), Some(to));
    s.stop_clients();
    s.run_for(SECOND);
    assert_safe(&mut s);
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let run = || {
        let mut o = RunOptions::new(77);
        o.trace = true;
        o.steps_ms = 2_000;
        run_seed(&o)
    };
    let (a, b) = (run(), run());
    assert!(a.trace.len() > 1000);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.fingerprint, b.fingerprint);
    let mut o = RunOptions::new(78);
    o.steps_ms = 2_000;
    assert_ne!(
        run_seed(&o).fingerprint,
        a.fingerprint,
        "different seeds differ"
    );
}

#[test]
fn random_seeds_find_no_violations() {
    // CI runs 200 seeds through the CLI; this keeps the library path covered.
    for seed in 1..=10 {
        let r = run_seed(&RunOptions::new(seed));
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert!(r.ops_checked > 0);
    }
}

// ----- the checkers can fail --------------------------------------------------------------

/// Raft Figure 8, scripted on 3 nodes with one-entry appends. Node A appends X (term a)
/// alone; node B leads a later term and appends its no-op Y at the same index alone; A leads
/// again and replicates X to C — a majority holds X, but it is from an old term — and is cut
/// off before its own no-op arrives. Then B, whose last term is higher than X's, wins with
/// C's vote and overwrites X. Committing X by counting replicas makes that a lost write.
fn figure8_scripted(faults: Faults) -> Vec<String> {
    let mut s = Sim::new(SimConfig {
        nodes: 3,
        max_msg_entries: 1,
        max_inflight_msgs: 1,
        faults,
        ..SimConfig::new(101)
    });
    let a = wait_leader(&mut s, SECOND);
    s.put(1, 1, SECOND).unwrap();
    s.run_for(200);
    let others: Vec<NodeId> = all(&s).into_iter().filter(|&id| id != a).collect();
    s.isolate(a);
    let x = flotilla_sim::kv::Command {
        client: 7,
        seq: 1,
        key: 1,
        op: flotilla_sim::kv::WriteOp::Put(100),
    };
    let i = s.propose_at(a, x.encode()).expect("A still leads");
    // B: elected by the others; cut off the moment it leads, so its no-op stays local.
    let b = wait_leader_among(&mut s, &others, 3 * SECOND);
    s.isolate(b);
    let c = *others.iter().find(|&&id| id != b).unwrap();
    s.run_for(20); // B's disk finishes; its messages die at the cut
    let x_term = s.entry_at(a, i).expect("A persisted X").term;
    assert!(
        s.entry_at(b, i).is_some_and(|e| e.term > x_term),
        "B holds a newer entry at {i}"
    );
    assert!(s.entry_at(c, i).is_none(), "C holds nothing at {i}");
    // A and C reconnect; A (longer log) wins.
    s.heal();
    s.partition(&[b], &[a, c]);
    wait_leader_among(&mut s, &[a], 3 * SECOND);
    // Cut A off as soon as it commits index i (faulty) or after a short while (correct).
    let deadline = s.now() + 300;
    s.run_until(deadline, |s| s.status(a).is_some_and(|st| st.commit >= i));
    s.heal();
    s.partition(&[a], &[b, c]);
    wait_leader_among(&mut s, &[b, c], 5 * SECOND);
    s.heal();
    s.put(1, 2, 3 * SECOND);
    s.run_for(SECOND);
    s.check_log_matching();
    s.violations.clone()
}

#[test]
fn figure8_scenario_is_safe_with_the_correct_commit_rule() {
    let v = figure8_scripted(Faults::default());
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn figure8_commit_bug_is_caught_by_the_simulator() {
    if !cfg!(debug_assertions) {
        return; // the fault switch only exists in debug builds
    }
    let v = figure8_scripted(Faults {
        commit_earlier_term_by_count: true,
        ..Faults::default()
    });
    assert!(!v.is_empty(), "the injected Figure 8 bug went unnoticed");
}

#[test]
fn election_restriction_bug_is_caught_by_random_seeds() {
    if !cfg!(debug_assertions) {
        return;
    }
    let faults = Faults {
        vote_without_log_check: true,
        ..Faults::default()
    };
    let caught = (1..=20).any(|seed| {
        let o = RunOptions {
            faults,
            ..RunOptions::new(seed)
        };
        !run_seed(&o).violations.is_empty()
    });
    assert!(
        caught,
        "dropping the election restriction went unnoticed in 20 seeds"
    );
}

// ----- regressions: seeds that once failed, kept by name ----------------------------------

fn assert_seed_passes(seed: u64, steps_ms: u64) {
    let r = run_seed(&RunOptions {
        steps_ms,
        ..RunOptions::new(seed)
    });
    assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
}

/// A learner hundreds of entries behind, with one-entry appends, needed more than the
/// commit bound to apply the post-heal write: the check now gives catch-up its own bound.
#[test]
fn regression_seed_559_learner_catch_up_with_one_entry_appends() {
    assert_seed_passes(559, 20_000);
}

#[test]
fn regression_seed_839_learner_catch_up_after_membership_churn() {
    assert_seed_passes(839, 20_000);
}

#[test]
fn regression_seed_5_eight_members_catch_up_after_heal() {
    assert_seed_passes(5, 20_000);
}
