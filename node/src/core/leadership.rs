//! Who leads the cluster, as this node sees it: the only reader of Raft's metrics. Everything
//! that asks "am I the leader?", "who is?", "in which term?" or "who are the members?" asks
//! here, so the answer has one source and one meaning.

use openraft::{BasicNode, RaftMetrics};
use testmesh_consensus::NodeId;
use testmesh_consensus::raft::Raft;
use tokio::sync::watch;

/// Raft's view of the cluster at one moment.
pub type Metrics = RaftMetrics<NodeId, BasicNode>;

/// A cloneable watch on leadership and membership.
#[derive(Clone)]
pub struct Leadership {
    me: NodeId,
    metrics: watch::Receiver<Metrics>,
}

/// The leader and its term, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub leader: Option<NodeId>,
    pub term: u64,
}

impl Leadership {
    pub fn new(me: NodeId, raft: &Raft) -> Self {
        Leadership {
            me,
            metrics: raft.metrics(),
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The leader this node knows of (None while electing or before a cluster formed).
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics.borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.me)
    }

    pub fn term(&self) -> Term {
        let m = self.metrics.borrow();
        Term {
            leader: m.current_leader,
            term: m.current_term,
        }
    }

    /// A copy of everything Raft reports (role, log indices, membership, replication).
    pub fn metrics(&self) -> Metrics {
        self.metrics.borrow().clone()
    }

    /// Whether `node` is in the membership (voter or learner).
    pub fn is_member(&self, node: NodeId) -> bool {
        self.metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .is_some()
    }

    /// The address `node` is reached at, from the membership.
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        let m = self.metrics.borrow();
        let addr = m
            .membership_config
            .membership()
            .get_node(&node)?
            .addr
            .clone();
        Some(addr)
    }

    /// Waits for the next change of Raft's metrics (leader, term, membership or progress).
    /// Errors once Raft has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.metrics.changed().await
    }
}
