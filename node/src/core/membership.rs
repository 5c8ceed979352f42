//! Membership decisions and the liveness they rest on: which learners are caught up, who
//! takes a leaving or silent voter's seat. Pure functions over Raft's metrics, shared by the
//! cluster edge (joins, leaves, promotions) and the control loop (silent voters).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::BasicNode;
use testmesh_consensus::NodeId;

use super::SharedClock;

/// When each member last answered a Raft RPC (on the leader: heartbeats every 150 ms).
#[derive(Clone)]
pub struct Liveness {
    seen: Arc<Mutex<HashMap<NodeId, Instant>>>,
    clock: SharedClock,
}

impl Liveness {
    pub fn new(clock: SharedClock) -> Self {
        Liveness {
            seen: Arc::default(),
            clock,
        }
    }

    /// Records an answer from `node` now.
    pub fn seen(&self, node: NodeId) {
        let now = self.clock.instant();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, now);
    }

    pub fn last_seen(&self, node: NodeId) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
    }
}

/// Learners whose log is within 100 entries of the leader's.
pub fn caught_up_learners(
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    learners: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let last = m.last_log_index.unwrap_or(0);
    learners
        .iter()
        .copied()
        .filter(|l| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(l).cloned().flatten())
                .is_some_and(|matched| matched.index + 100 >= last)
        })
        .collect()
}

/// The voters once `leaving` is gone, with the first of `candidates` in its place; `None` when
/// it is the only voter and no one can take over.
pub fn voters_without(
    voters: &BTreeSet<NodeId>,
    leaving: NodeId,
    candidates: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    let mut new: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != leaving).collect();
    if let Some(c) = candidates
        .iter()
        .find(|c| **c != leaving && !voters.contains(c))
    {
        new.insert(*c);
    }
    (!new.is_empty()).then_some(new)
}

/// The caught-up learners to promote so that the voters grow towards `target` without ever
/// stopping at an even count below it: two voters tolerate no more failures than one, and a
/// leader lost while the second is being added can leave the old pair without a majority for
/// good. So one voter waits for two caught-up learners and moves straight to three.
pub fn learners_to_promote(
    voters: usize,
    caught_up: &BTreeSet<NodeId>,
    target: usize,
) -> BTreeSet<NodeId> {
    let most = target.min(voters + caught_up.len());
    let Some(total) = (voters + 1..=most)
        .rev()
        .find(|n| n % 2 == 1 || *n == target)
    else {
        return BTreeSet::new();
    };
    caught_up.iter().copied().take(total - voters).collect()
}

/// The voters once every silent voter is replaced by a live, caught-up learner (one for one,
/// while such learners last); `None` when nothing can be replaced. A silent voter without a
/// replacement stays: removing it would not make the cluster any safer.
pub fn voters_replacing_silent(
    voters: &BTreeSet<NodeId>,
    live_caught_up_learners: &BTreeSet<NodeId>,
    silent: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    let dead = voters.iter().filter(|v| silent.contains(v));
    let fresh = live_caught_up_learners
        .iter()
        .filter(|l| !silent.contains(l) && !voters.contains(l));
    let pairs: Vec<(NodeId, NodeId)> = dead.copied().zip(fresh.copied()).collect();
    if pairs.is_empty() {
        return None;
    }
    let mut new = voters.clone();
    for (out, inn) in pairs {
        new.remove(&out);
        new.insert(inn);
    }
    Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn voters_grow_by_odd_counts_or_to_the_target() {
        // One voter and one learner: wait for a second learner rather than pass through two.
        assert_eq!(learners_to_promote(1, &set(&[2]), 3), set(&[]));
        assert_eq!(learners_to_promote(1, &set(&[2, 3]), 3), set(&[2, 3]));
        assert_eq!(learners_to_promote(1, &set(&[2, 3, 4]), 3), set(&[2, 3]));
        assert_eq!(learners_to_promote(3, &set(&[4]), 5), set(&[]));
        assert_eq!(learners_to_promote(3, &set(&[4, 5, 6]), 5), set(&[4, 5]));
        assert_eq!(learners_to_promote(3, &set(&[4, 5]), 3), set(&[]));
        // An even target the operator asked for is reached.
        assert_eq!(learners_to_promote(1, &set(&[2]), 2), set(&[2]));
        assert_eq!(learners_to_promote(3, &set(&[4]), 4), set(&[4]));
        assert_eq!(learners_to_promote(5, &set(&[]), 7), set(&[]));
    }

    #[test]
    fn a_leaving_voter_is_replaced_by_a_learner_when_there_is_one() {
        assert_eq!(
            voters_without(&set(&[1, 2, 3]), NodeId(2), &set(&[4, 5])),
            Some(set(&[1, 3, 4]))
        );
        assert_eq!(
            voters_without(&set(&[1, 2, 3]), NodeId(2), &set(&[])),
            Some(set(&[1, 3]))
        );
        assert_eq!(
            voters_without(&set(&[1]), NodeId(1), &set(&[2])),
            Some(set(&[2]))
        );
        assert_eq!(voters_without(&set(&[1]), NodeId(1), &set(&[])), None);
    }

    #[test]
    fn silent_voters_are_swapped_for_live_learners_one_for_one() {
        // Two voters silent, one live learner: only one swap is possible.
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[4, 5]), &set(&[2, 3, 5])),
            Some(set(&[1, 3, 4]))
        );
        // Nobody silent, or nobody to take over: no change.
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[4]), &set(&[])),
            None
        );
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[]), &set(&[3])),
            None
        );
    }
}
