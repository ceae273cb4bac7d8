//! Behaviour of the Raft core, one test per rule, over a synchronous in-memory network.
//! Section numbers refer to the Raft paper (Ongaro & Ousterhout 2014) and thesis.

mod common;

use bytes::Bytes;
use common::*;
use flotilla_raft::*;

fn elected(n: u64) -> Net {
    let mut net = Net::new(n);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    net
}

// ----- §5.2 election ---------------------------------------------------------------------

#[test]
fn single_node_elects_itself_and_commits_alone() {
    let mut net = Net::new(1);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    net.propose(1, b"x").unwrap();
    assert_eq!(net.applied_data(1), vec![Bytes::from_static(b"x")]);
}

#[test]
fn a_leader_emerges_from_randomized_timeouts_alone() {
    let mut net = Net::new(5);
    net.tick_all(40);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let term = net.status(leaders[0]).term;
    for id in 1..=5 {
        assert_eq!(net.status(id).leader, leaders[0]);
        assert_eq!(net.status(id).term, term);
    }
}

#[test]
fn randomized_timeouts_differ_between_nodes() {
    // With distinct seeds, nodes time out at different ticks, so they rarely split votes.
    let mut first_campaign = Vec::new();
    for id in 1..=5u64 {
        let mut net = Net::new(5);
        net.isolate(id);
        let mut t = 0;
        while net.status(id).role == Role::Follower {
            net.tick(id);
            t += 1;
        }
        assert!(
            (10..20).contains(&t),
            "timeout {t} outside [election, 2*election)"
        );
        first_campaign.push(t);
    }
    first_campaign.dedup();
    assert!(
        first_campaign.len() > 1,
        "all nodes drew the same timeout: {first_campaign:?}"
    );
}

#[test]
fn candidate_with_stale_log_cannot_win() {
    // §5.4.1: node 3 lacks entry 2, so the others refuse to vote for it.
    let stores = vec![
        (1, store_with_log(3, &[1, 1], 1)),
        (2, store_with_log(3, &[1, 1], 1)),
        (3, store_with_log(3, &[1], 1)),
    ];
    let mut net = Net::from_stores(stores, |c| c.pre_vote = false);
    net.campaign(3);
    assert_ne!(net.status(3).role, Role::Leader);
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
}

#[test]
fn no_leader_is_elected_without_a_quorum() {
    let mut net = Net::new(3);
    net.isolate(1);
    net.isolate(2);
    net.tick_all(100);
    assert!(net.leaders().is_empty());
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_inflating_terms() {
    let mut net = elected(3);
    let term = net.status(1).term;
    net.isolate(3);
    for _ in 0..100 {
        net.tick(3);
    }
    assert_eq!(net.status(3).term, term, "pre-vote must not bump the term");
    net.heal();
    net.tick_all(5);
    assert_eq!(
        net.leaders(),
        vec![1],
        "rejoining node does not depose the leader"
    );
    assert_eq!(net.status(1).term, term);
}

#[test]
fn without_pre_vote_a_partitioned_node_raises_its_term() {
    let mut net = Net::with(3, |c| c.pre_vote = false);
    net.campaign(1);
    let term = net.status(1).term;
    net.isolate(3);
    for _ in 0..100 {
        net.tick(3);
    }
    assert!(net.status(3).term > term, "control for the pre-vote test");
}

#[test]
fn leader_steps_down_when_quorum_is_lost() {
    let mut net = elected(3);
    net.isolate(1);
    // Acks from before the partition count for the current period; the next one finds none.
    for _ in 0..20 {
        net.tick(1);
    }
    assert_eq!(
        net.status(1).role,
        Role::Follower,
        "check-quorum demotes an isolated leader"
    );
}

#[test]
fn voters_with_a_live_leader_ignore_vote_requests() {
    // Leader lease (thesis §4.2.3): a node whose timer fired (here: forced) cannot depose a
    // leader the others still hear from, even without pre-vote.
    let mut net = Net::with(3, |c| c.pre_vote = false);
    net.campaign(1);
    let term = net.status(1).term;
    net.tick_all(1);
    net.campaign(3);
    assert_eq!(net.status(2).term, term, "node 2 ignored the vote request");
    assert_eq!(net.status(2).vote, 1);
    assert_eq!(net.status(3).role, Role::Candidate, "no votes granted");
    // (Without pre-vote, the stuck candidate's higher term still reaches the leader through
    // append responses and makes it step down; pre-vote is what prevents that.)
}

// ----- §5.3 replication ------------------------------------------------------------------

#[test]
fn entries_commit_once_a_quorum_has_them() {
    let mut net = elected(3);
    net.isolate(3);
    net.propose(1, b"a").unwrap();
    assert_eq!(net.applied_data(1), vec![Bytes::from_static(b"a")]);
    assert_eq!(net.applied_data(2), vec![Bytes::from_static(b"a")]);
    assert!(net.applied_data(3).is_empty());
    net.heal();
    net.tick_all(2);
    assert_eq!(net.applied_data(3), vec![Bytes::from_static(b"a")]);
}

#[test]
fn nothing_commits_without_a_quorum() {
    let mut net = elected(5);
    let commit = net.status(1).commit;
    for id in [2, 3, 4] {
        net.isolate(id);
    }
    net.propose(1, b"a").unwrap();
    assert_eq!(net.status(1).commit, commit);
    assert!(net.applied_data(1).is_empty());
}

#[test]
fn follower_rejects_proposals_with_a_leader_hint() {
    let mut net = elected(3);
    let err = net.propose(2, b"x").unwrap_err();
    assert_eq!(
        err,
        Error::NotLeader {
            leader_hint: Some(1)
        }
    );
    assert!(err.is_retriable());
}

#[test]
fn divergent_follower_log_is_repaired_in_few_round_trips() {
    // Node 1 leads term 2 and appends 50 entries nobody else gets; nodes 2 and 3 then elect a
    // leader that appends 50 different entries. When 1 rejoins, the conflict hints let the new
    // leader skip the whole divergent term instead of backing up one entry per round trip.
    let mut net = elected(3);
    net.isolate(1);
    for i in 0..50 {
        net.node(1)
            .propose(Bytes::from(format!("stale{i}")))
            .unwrap();
    }
    net.settle();
    net.tick_all(40);
    let leader = net
        .leaders()
        .into_iter()
        .find(|&l| l != 1)
        .expect("2 or 3 leads");
    for i in 0..50 {
        net.propose(leader, format!("new{i}").as_bytes()).unwrap();
    }
    net.sent.clear();
    net.heal();
    net.tick_all(3);
    let rejections = net
        .sent
        .iter()
        .filter(|m| {
            m.from == 1
                && matches!(
                    m.body,
                    MessageBody::AppendResp {
                        reject: Some(_),
                        ..
                    }
                )
        })
        .count();
    assert!(
        rejections <= 2,
        "{rejections} rejections: backtracking is not skipping terms"
    );
    assert_eq!(net.applied_data(1), net.applied_data(leader));
    assert_eq!(net.applied_data(1).len(), 50);
    assert!(net.applied_data(1).iter().all(|d| d.starts_with(b"new")));
}

#[test]
fn append_messages_respect_entry_and_byte_bounds() {
    let mut net = Net::with(3, |c| {
        c.max_msg_entries = 4;
        c.max_msg_bytes = 10 * (ENTRY_OVERHEAD_BYTES + 100);
    });
    net.campaign(1);
    net.isolate(3);
    for _ in 0..40 {
        net.node(1).propose(Bytes::from(vec![7u8; 100])).unwrap();
    }
    net.settle();
    net.sent.clear();
    net.heal();
    net.tick_all(10);
    let mut saw_appends = false;
    for m in net.sent.iter().filter(|m| m.to == 3) {
        if let MessageBody::Append { entries, .. } = &m.body {
            saw_appends |= !entries.is_empty();
            assert!(
                entries.len() <= 4,
                "{} entries in one append",
                entries.len()
            );
        }
    }
    assert!(saw_appends);
    assert_eq!(net.applied_data(3).len(), 40);
}

#[test]
fn proposals_are_batched_into_one_append_per_follower() {
    let mut net = elected(3);
    net.sent.clear();
    let batch = (0..64).map(|i| Bytes::from(format!("{i}"))).collect();
    net.node(1).propose_batch(batch).unwrap();
    net.settle();
    let appends_to_2: Vec<usize> = net
        .sent
        .iter()
        .filter(|m| m.to == 2)
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } if !entries.is_empty() => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(appends_to_2, vec![64]);
}

#[test]
fn pipelining_is_bounded_by_the_inflight_window() {
    let mut net = Net::with(3, |c| c.max_inflight_msgs = 3);
    net.campaign(1);
    net.tick_all(1); // node 2 and 3 are in Replicate state
                     // Swallow every acknowledgement from node 2: the window fills and sending stops.
    net.hook = Some(Box::new(|m| match m.body {
        MessageBody::AppendResp { .. } | MessageBody::HeartbeatResp { .. } if m.from == 2 => None,
        _ => Some(m),
    }));
    net.sent.clear();
    for i in 0..20 {
        net.propose(1, format!("{i}").as_bytes()).unwrap();
    }
    let appends_to_2 = net
        .sent
        .iter()
        .filter(|m| {
            m.to == 2
                && matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())
        })
        .count();
    assert_eq!(
        appends_to_2, 3,
        "exactly max_inflight_msgs appends while unacknowledged"
    );
    assert_eq!(
        net.applied_data(3).len(),
        20,
        "the healthy follower is unaffected"
    );
}

#[test]
fn uncommitted_bytes_bound_rejects_proposals() {
    let mut net = Net::with(3, |c| {
        c.max_uncommitted_bytes = 3 * (ENTRY_OVERHEAD_BYTES + 10)
    });
    net.campaign(1);
    net.isolate(2);
    net.isolate(3);
    for _ in 0..3 {
        net.propose(1, &[0; 10]).unwrap();
    }
    let err = net.propose(1, &[0; 10]).unwrap_err();
    assert!(
        matches!(err, Error::UncommittedLimitExceeded { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_uncommitted_bytes"));
    net.heal();
    net.tick_all(3);
    net.propose(1, &[0; 10])
        .expect("accepted again once entries commit");
}

// ----- §5.4.2 commitment rule (Figure 8) -------------------------------------------------

/// Five nodes after Figure 8 (c): node 1 (term-2 entry at index 2, shared with node 2) is
/// about to lead term 4; node 5 holds a term-3 entry at index 2. Appends to nodes 3 and 4 are
/// cut short so they acknowledge index 2 but never index 3, and node 2 is unreachable. A
/// majority (1, 3, 4) then holds index 2 — yet it is from term 2, so it must not commit.
fn figure8_net(faults: Faults) -> Net {
    let stores = vec![
        (1, store_with_log(5, &[1, 2], 3)),
        (2, store_with_log(5, &[1, 2], 3)),
        (3, store_with_log(5, &[1], 3)),
        (4, store_with_log(5, &[1], 3)),
        (5, store_with_log(5, &[1, 3], 3)),
    ];
    let mut net = Net::from_stores(stores, |c| c.faults = faults);
    net.isolate(2);
    net.isolate(5);
    net.hook = Some(Box::new(|mut m| {
        if let MessageBody::Append { entries, .. } = &mut m.body {
            entries.retain(|e| e.index < 3);
        }
        Some(m)
    }));
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.status(1).term, 4);
    net.tick_all(3);
    net
}

#[test]
fn leader_does_not_commit_earlier_term_entries_by_counting_replicas() {
    let net = figure8_net(Faults::default());
    assert_eq!(
        net.status(1).commit,
        0,
        "index 2 (term 2) is on a majority but must not commit"
    );
}

#[test]
fn figure8_fault_switch_commits_by_counting_replicas() {
    // Proves the switch the simulator test flips really injects the bug (debug builds).
    if !cfg!(debug_assertions) {
        return;
    }
    let net = figure8_net(Faults {
        commit_earlier_term_by_count: true,
        ..Faults::default()
    });
    assert_eq!(net.status(1).commit, 2);
}

// ----- durable state hand-off ------------------------------------------------------------

#[test]
fn votes_are_in_the_same_ready_as_the_messages_that_depend_on_them() {
    let mut net = Net::with(3, |c| c.pre_vote = false);
    net.campaign(1);
    // The candidate's own vote must be persisted before its vote requests go out.
    let cand = &net.readies[&1][0];
    assert!(cand
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Vote { .. })));
    assert_eq!(cand.hard_state.map(|h| h.vote), Some(1));
    // A voter persists its vote in the Ready that carries the grant.
    let voter = net.readies[&2]
        .iter()
        .find(|r| {
            r.messages
                .iter()
                .any(|m| m.body == MessageBody::VoteResp { reject: false })
        })
        .expect("node 2 granted");
    assert_eq!(voter.hard_state.map(|h| h.vote), Some(1));
}

#[test]
fn appended_entries_are_in_the_same_ready_as_their_acknowledgement() {
    let mut net = elected(3);
    net.readies.clear();
    net.propose(1, b"durable").unwrap();
    let ack = net.readies[&2]
        .iter()
        .find(|r| {
            r.messages
                .iter()
                .any(|m| matches!(m.body, MessageBody::AppendResp { reject: None, .. }))
        })
        .expect("node 2 acknowledged");
    assert!(ack.entries.iter().any(|e| &e.data[..] == b"durable"));
}

// ----- snapshots -------------------------------------------------------------------------

#[test]
fn lagging_follower_installs_a_snapshot_and_continues() {
    let mut net = elected(3);
    net.isolate(3);
    for i in 0..20 {
        net.propose(1, format!("{i}").as_bytes()).unwrap();
    }
    let applied = net.status(1).applied;
    let conf = net.node(1).conf_state().clone();
    net.node(1)
        .store_mut()
        .create_snapshot(applied, conf, Bytes::from_static(b"image"));
    net.heal();
    net.tick_all(3);
    let got = net.readies[&3]
        .iter()
        .find_map(|r| r.snapshot.clone())
        .expect("snapshot sent");
    assert_eq!(got.meta.index, applied);
    assert_eq!(&got.data[..], b"image");
    net.propose(1, b"after").unwrap();
    assert_eq!(net.applied_data(3), vec![Bytes::from_static(b"after")]);
    assert_eq!(net.status(3).commit, net.status(1).commit);
}

#[test]
fn a_lost_snapshot_is_sent_again() {
    let mut net = elected(3);
    net.isolate(3);
    for i in 0..5 {
        net.propose(1, format!("{i}").as_bytes()).unwrap();
    }
    let applied = net.status(1).applied;
    let conf = net.node(1).conf_state().clone();
    net.node(1)
        .store_mut()
        .create_snapshot(applied, conf, Bytes::new());
    net.heal();
    let mut dropped = 0;
    net.hook = Some(Box::new(move |m| {
        if matches!(m.body, MessageBody::Snapshot { .. }) && dropped == 0 {
            dropped += 1;
            return None;
        }
        Some(m)
    }));
    net.tick_all(30);
    assert_eq!(net.status(3).commit, net.status(1).commit);
}

// ----- membership ------------------------------------------------------------------------

fn conf_entries(net: &Net, id: NodeId) -> Vec<ConfState> {
    net.applied[&id]
        .iter()
        .filter(|e| e.kind == EntryKind::ConfChange)
        .map(|e| ConfState::decode(&e.data).unwrap())
        .collect()
}

#[test]
fn adding_a_voter_enters_then_leaves_joint_consensus() {
    let mut net = elected(3);
    net.add_node(4);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddVoter(4)])
        .unwrap();
    net.settle();
    net.tick_all(3);
    let confs = conf_entries(&net, 1);
    assert_eq!(confs.len(), 2, "{confs:?}");
    assert!(confs[0].is_joint());
    assert_eq!(confs[0].outgoing, [1, 2, 3].into());
    assert_eq!(confs[0].voters, [1, 2, 3, 4].into());
    assert!(!confs[1].is_joint());
    for id in 1..=4 {
        assert_eq!(
            net.node(id).conf_state().voters,
            [1, 2, 3, 4].into(),
            "node {id}"
        );
    }
    net.propose(1, b"x").unwrap();
    assert_eq!(net.applied_data(4), vec![Bytes::from_static(b"x")]);
}

#[test]
fn a_second_change_waits_for_the_first() {
    let mut net = elected(3);
    net.isolate(2);
    net.isolate(3);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4)])
        .unwrap();
    let err = net
        .node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(5)])
        .unwrap_err();
    assert_eq!(err, Error::ConfChangePending);
}

#[test]
fn joint_consensus_needs_a_majority_of_both_configurations() {
    // Replace 2 and 3 with 4 and 5. While joint, {1,4,5} is a majority of the new
    // configuration but not of the old one, so nothing may commit without 2 or 3.
    let mut net = elected(3);
    net.add_node(4);
    net.add_node(5);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4), ConfChangeOp::AddLearner(5)])
        .unwrap();
    net.settle();
    net.tick_all(2);
    net.isolate(2);
    net.isolate(3);
    let ops = [
        ConfChangeOp::AddVoter(4),
        ConfChangeOp::AddVoter(5),
        ConfChangeOp::Remove(2),
        ConfChangeOp::Remove(3),
    ];
    net.node(1).propose_conf_change(&ops).unwrap();
    net.settle();
    let commit = net.status(1).commit;
    net.propose(1, b"blocked").unwrap();
    assert_eq!(
        net.status(1).commit,
        commit,
        "old configuration has no majority"
    );
    net.heal();
    net.tick_all(3);
    assert_eq!(net.node(1).conf_state().voters, [1, 4, 5].into());
    assert!(!net.node(1).conf_state().is_joint());
    assert!(net
        .applied_data(5)
        .contains(&Bytes::from_static(b"blocked")));
}

#[test]
fn learners_receive_the_log_but_never_vote_or_count() {
    let mut net = elected(3);
    net.add_node(4);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4)])
        .unwrap();
    net.settle();
    net.propose(1, b"x").unwrap();
    assert_eq!(net.applied_data(4), vec![Bytes::from_static(b"x")]);
    assert_eq!(net.node(4).conf_state().learners, [4].into());
    // A learner never campaigns.
    net.isolate(4);
    for _ in 0..100 {
        net.tick(4);
    }
    assert_eq!(net.status(4).role, Role::Follower);
    // The learner does not count toward a quorum.
    net.heal();
    net.isolate(2);
    net.isolate(3);
    let commit = net.status(1).commit;
    net.propose(1, b"y").unwrap();
    assert_eq!(net.status(1).commit, commit);
}

#[test]
fn a_learner_is_promoted_to_voter() {
    let mut net = elected(3);
    net.add_node(4);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(4)])
        .unwrap();
    net.settle();
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::AddVoter(4)])
        .unwrap();
    net.settle();
    net.tick_all(3);
    let conf = net.node(4).conf_state().clone();
    assert_eq!(conf.voters, [1, 2, 3, 4].into());
    assert!(conf.learners.is_empty());
}

#[test]
fn demoting_a_voter_to_learner_is_refused_with_a_reason() {
    let mut net = elected(3);
    let err = net
        .node(1)
        .propose_conf_change(&[ConfChangeOp::AddLearner(2)])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfChange(ref why) if why.contains("demotion")),
        "{err}"
    );
}

#[test]
fn removing_the_leader_makes_it_step_down_and_the_rest_elect() {
    let mut net = elected(3);
    net.node(1)
        .propose_conf_change(&[ConfChangeOp::Remove(1)])
        .unwrap();
    net.settle();
    net.tick_all(3);
    assert_eq!(net.node(2).conf_state().voters, [2, 3].into());
    assert_ne!(net.status(1).role, Role::Leader);
    net.tick_all(40);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    net.propose(leaders[0], b"after").unwrap();
    assert!(net.applied_data(2).contains(&Bytes::from_static(b"after")));
}

// ----- leader transfer -------------------------------------------------------------------

#[test]
fn leadership_transfers_to_an_up_to_date_follower() {
    let mut net = elected(3);
    net.propose(1, b"x").unwrap();
    net.node(1).transfer_leader(2).unwrap();
    net.settle();
    assert_eq!(net.leaders(), vec![2]);
}

#[test]
fn a_lagging_transferee_catches_up_before_timeout_now() {
    let mut net = elected(3);
    net.isolate(3);
    for i in 0..10 {
        net.propose(1, format!("{i}").as_bytes()).unwrap();
    }
    net.heal();
    net.node(1).transfer_leader(3).unwrap();
    net.settle();
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.applied_data(3).len(), 10);
}

#[test]
fn proposals_are_refused_while_a_transfer_is_in_flight() {
    let mut net = elected(3);
    net.isolate(3);
    net.node(1).transfer_leader(3).unwrap();
    net.settle();
    let err = net.propose(1, b"x").unwrap_err();
    assert_eq!(err, Error::TransferInProgress { to: 3 });
    assert!(err.to_string().contains("transfer"));
    // The transfer is abandoned after an election timeout and proposals flow again.
    net.tick_all(11);
    assert_eq!(net.leaders(), vec![1]);
    net.propose(1, b"x").unwrap();
}

#[test]
fn transfer_to_a_non_voter_is_an_error() {
    let mut net = elected(3);
    assert_eq!(
        net.node(1).transfer_leader(9),
        Err(Error::InvalidTransferTarget(9))
    );
}

// ----- ReadIndex -------------------------------------------------------------------------

#[test]
fn read_index_at_the_leader_is_confirmed_by_a_heartbeat_quorum() {
    let mut net = elected(3);
    net.propose(1, b"x").unwrap();
    let commit = net.status(1).commit;
    net.sent.clear();
    net.node(1).read_index(7).unwrap();
    net.settle();
    assert!(net
        .sent
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_seq, .. } if read_seq > 0)));
    assert_eq!(
        net.read_states[&1],
        vec![ReadState {
            request_id: 7,
            index: Some(commit)
        }]
    );
}

#[test]
fn read_index_at_a_follower_is_forwarded_to_the_leader() {
    let mut net = elected(3);
    net.propose(1, b"x").unwrap();
    net.node(3).read_index(11).unwrap();
    net.settle();
    let commit = net.status(1).commit;
    assert_eq!(
        net.read_states[&3],
        vec![ReadState {
            request_id: 11,
            index: Some(commit)
        }]
    );
}

#[test]
fn read_index_is_not_confirmed_without_a_quorum_and_fails_on_step_down() {
    let mut net = elected(3);
    net.isolate(1);
    net.node(1).read_index(5).unwrap();
    net.settle();
    assert!(
        net.read_states.get(&1).is_none_or(|v| v.is_empty()),
        "must not confirm alone"
    );
    for _ in 0..20 {
        net.tick(1);
    }
    assert_eq!(
        net.read_states[&1],
        vec![ReadState {
            request_id: 5,
            index: None
        }]
    );
}

#[test]
fn read_index_at_a_new_leader_waits_for_its_first_commit() {
    let mut net = Net::new(3);
    net.isolate(2);
    net.isolate(3);
    net.node(1).campaign();
    net.settle();
    // Node 1 cannot even win; make a real leader whose no-op is held back.
    net.heal();
    net.campaign(1);
    assert_eq!(net.leaders(), vec![1]);
    net.read_states.clear();
    net.node(1).read_index(1).unwrap();
    net.settle();
    assert_eq!(net.read_states[&1].len(), 1);
    assert!(
        net.read_states[&1][0].index.unwrap() >= 1,
        "index includes the no-op"
    );
}

/// Commit is volatile: a host may persist a hard state whose commit lags the applied index
/// (the engine skips the fsync for commit-only changes). A restart from a snapshot at index
/// 5 with a stored commit of 2 must start with commit 5, not assert.
#[test]
fn restart_with_a_stale_persisted_commit_starts_from_the_snapshot_index() {
    let mut store = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    store.apply_snapshot(Snapshot {
        meta: SnapshotMeta {
            index: 5,
            term: 1,
            conf_state: ConfState::with_voters([1, 2, 3]),
        },
        data: Bytes::from_static(b"state at 5"),
    });
    store.set_hard_state(HardState {
        term: 1,
        vote: 1,
        commit: 2,
    });
    let cfg = Config {
        applied: 5,
        ..Config::new(1)
    };
    let node = RawNode::new(cfg, store).expect("restart");
    assert_eq!(node.status().commit, 5);
    assert_eq!(node.status().applied, 5);
}
