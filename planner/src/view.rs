//! What the planner sees of the cluster: workers and pending tasks borrowed from a ledger
//! snapshot, and the plan a placement returns. Shared by the scheduler and the batch optimizer,
//! which must not depend on each other.

use std::collections::{BTreeMap, HashMap};

use testmesh_consensus::command::Assignment;
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::{Capacity, WorkerState};
use testmesh_consensus::resources::{self, Allocated, Requirements};
use testmesh_consensus::task::TaskState;
use testmesh_consensus::{NodeId, TaskId};

/// A worker as the planner sees it; `allocated` is a running copy updated as tasks are placed.
#[derive(Debug, Clone)]
pub struct WorkerView<'a> {
    pub id: NodeId,
    pub capacity: &'a Capacity,
    pub labels: &'a BTreeMap<String, String>,
    pub allocated: Allocated,
    /// Share of its attempts that succeeded (smoothed; 1 for a new worker).
    pub reliability: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct PendingView<'a> {
    pub id: TaskId,
    /// The attempt an assignment would create.
    pub next_attempt: u32,
    pub requirements: &'a Requirements,
    pub priority: i32,
    /// Predicted run time in seconds, when the predictor has one.
    pub predicted_secs: Option<f64>,
    /// The worker its last attempt failed on: a retry goes elsewhere when another worker
    /// could ever hold it (so one bad host cannot burn every retry).
    pub avoid: Option<NodeId>,
}

/// A snapshot of what scheduling needs, borrowed from the ledger.
#[derive(Debug, Clone)]
pub struct ClusterView<'a> {
    pub workers: Vec<WorkerView<'a>>,
    pub pending: Vec<PendingView<'a>>,
}

/// The active workers of the ledger, as the planner sees them.
pub fn workers_of(ledger: &Ledger) -> Vec<WorkerView<'_>> {
    ledger
        .workers()
        .filter(|w| w.state == WorkerState::Active && w.quarantine.is_none())
        .map(|w| WorkerView {
            id: w.id,
            capacity: &w.capacity,
            labels: &w.labels,
            allocated: w.allocated.clone(),
            reliability: w.record.reliability(),
        })
        .collect()
}

/// Takes out of play the GPUs that live statistics show running someone else's process
/// (`busy`: worker → GPU indices). The ledger only knows testmesh's own reservations; a GPU
/// used by a process testmesh did not start is not free even if nothing is reserved on it.
pub fn occupy_busy_gpus(workers: &mut [WorkerView<'_>], busy: &HashMap<NodeId, Vec<u32>>) {
    for w in workers.iter_mut() {
        let Some(indices) = busy.get(&w.id) else {
            continue;
        };
        for g in w
            .capacity
            .gpus
            .iter()
            .filter(|g| indices.contains(&g.index))
        {
            w.allocated
                .gpus
                .entry(g.index)
                .or_insert(resources::GpuUse {
                    milli: resources::WHOLE_GPU_MILLI,
                    memory: g.memory,
                    exclusive: true,
                });
        }
    }
}

/// The pending queue of the ledger, in order, lazily.
pub fn pending_of(ledger: &Ledger) -> impl Iterator<Item = PendingView<'_>> {
    ledger.pending().map(|t| PendingView {
        id: t.id,
        next_attempt: t.attempt + 1,
        requirements: &t.spec.requirements,
        priority: t.spec.priority,
        predicted_secs: None,
        avoid: t
            .attempts
            .last()
            .filter(|a| {
                a.outcome
                    .as_ref()
                    .is_some_and(|o| matches!(o.state, TaskState::Failed | TaskState::TimedOut))
            })
            .map(|a| a.worker),
    })
}

impl<'a> ClusterView<'a> {
    /// Active workers and pending tasks of the ledger, at most `max_pending` of them.
    pub fn from_ledger(ledger: &'a Ledger, max_pending: usize) -> Self {
        ClusterView {
            workers: workers_of(ledger),
            pending: pending_of(ledger).take(max_pending).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub assignments: Vec<Assignment>,
    /// Tasks left pending, with the reason a user sees.
    pub waiting: Vec<(TaskId, String)>,
}
