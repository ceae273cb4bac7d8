//! Majority arithmetic for plain and joint configurations.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{ConfState, Index, NodeId};

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
    /// Still waiting for answers.
    Pending,
}

/// The highest index that a majority of `voters` has matched. An empty set places no
/// constraint (returns `Index::MAX`) so that a non-joint configuration's empty outgoing half
/// drops out of `min`.
pub fn majority_index(voters: &BTreeSet<NodeId>, matched: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    let mut idx: Vec<Index> = voters.iter().map(|&id| matched(id)).collect();
    idx.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, the (n/2 + 1)-th largest value is held by a majority.
    idx[voters.len() / 2]
}

/// The index committed under `conf`: a majority of each half must have it.
pub fn committed_index(conf: &ConfState, matched: impl Fn(NodeId) -> Index + Copy) -> Index {
    majority_index(&conf.voters, matched).min(majority_index(&conf.outgoing, matched))
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts `votes` under `conf`; joint configurations need both halves to win.
pub fn vote_result(conf: &ConfState, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    match (
        majority_vote(&conf.voters, votes),
        majority_vote(&conf.outgoing, votes),
    ) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_index_is_the_median_held_by_a_quorum() {
        let voters: BTreeSet<_> = [1, 2, 3].into();
        let m = |id| [0, 5, 3, 9][id as usize];
        assert_eq!(majority_index(&voters, m), 5);
        let voters: BTreeSet<_> = [1, 2, 3, 4].into();
        let m = |id| [0, 5, 3, 9, 1][id as usize];
        assert_eq!(majority_index(&voters, m), 3);
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let conf = ConfState {
            voters: [1, 2, 3].into(),
            outgoing: [3, 4, 5].into(),
            ..Default::default()
        };
        let m = |id| [0, 9, 9, 9, 1, 1][id as usize];
        assert_eq!(committed_index(&conf, m), 1);
    }

    #[test]
    fn joint_vote_is_lost_when_either_half_loses() {
        let conf = ConfState {
            voters: [1, 2, 3].into(),
            outgoing: [1, 4, 5].into(),
            ..Default::default()
        };
        let votes: BTreeMap<_, _> = [(1, true), (2, true), (4, false), (5, false)].into();
        assert_eq!(vote_result(&conf, &votes), VoteResult::Lost);
        let votes: BTreeMap<_, _> = [(1, true), (2, true), (4, true)].into();
        assert_eq!(vote_result(&conf, &votes), VoteResult::Won);
        let votes: BTreeMap<_, _> = [(1, true), (2, true)].into();
        assert_eq!(vote_result(&conf, &votes), VoteResult::Pending);
    }
}
