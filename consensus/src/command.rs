//! What goes into the Raft log, and what applying it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Capacity, Hardware, NodeId, TaskId, UnixMillis, WorkerState};
use crate::resources::{GpuGrant, Shortfall};
use crate::task::{Outcome, TaskSpec, TaskState};

/// Most tasks one submit may carry; larger batches are split by the client.
pub const MAX_SUBMIT_BATCH: usize = 10_000;

thread_local! {
    static BATCH_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Batches inside batches this deep are refused while decoding.
const MAX_BATCH_DEPTH: u32 = 4;

/// Decodes a batch's items, refusing batches nested deeper than [`MAX_BATCH_DEPTH`]: each level
/// costs the decoder stack, so a frame of a few kilobytes of nested batches from a peer
/// overflowed the stack and crashed the node (found by the `mesh_frame` fuzz target).
fn shallow_batch<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            BATCH_DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    let depth = BATCH_DEPTH.with(|c| {
        let d = c.get() + 1;
        c.set(d);
        d
    });
    let _leave = Leave;
    if depth > MAX_BATCH_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "batches nested more than {MAX_BATCH_DEPTH} deep"
        )));
    }
    Vec::<T>::deserialize(d)
}

/// A worker announcing itself (at every start, and when its capacity changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    pub id: NodeId,
    pub hardware: Hardware,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub boot_id: u64,
    pub version: String,
}

/// A placement proposed by the planner; the ledger re-checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskId,
    /// The attempt this creates (the task's current attempt + 1).
    pub attempt: u32,
    pub worker: NodeId,
    pub gpus: Vec<GpuGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterWorker {
        worker: WorkerRegistration,
        at: UnixMillis,
    },
    Submit {
        request_id: String,
        tasks: Vec<TaskSpec>,
        at: UnixMillis,
    },
    /// Tasks submitted together as one run.
    SubmitRun {
        request_id: String,
        name: String,
        metadata: std::collections::BTreeMap<String, String>,
        tasks: Vec<TaskSpec>,
        at: UnixMillis,
    },
    Assign {
        assignments: Vec<Assignment>,
        at: UnixMillis,
    },
    TaskStarted {
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        pid: u32,
        at: UnixMillis,
    },
    TaskFinished {
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        outcome: Outcome,
        at: UnixMillis,
    },
    Cancel {
        task: TaskId,
        at: UnixMillis,
    },
    /// Operator drain (`Draining`) or undrain (`Active`).
    SetWorkerState {
        worker: NodeId,
        state: WorkerState,
        at: UnixMillis,
    },
    /// Quarantine a worker (no new placements) with the reason, or clear it (`None`), which
    /// also starts its track record afresh.
    SetQuarantine {
        worker: NodeId,
        reason: Option<String>,
        at: UnixMillis,
    },
    /// The leader has not heard from this worker for too long: its attempts are lost.
    WorkerLost {
        worker: NodeId,
        at: UnixMillis,
    },
    /// The worker is leaving the cluster: its unfinished attempts are handed back to the queue
    /// without using up a retry.
    WorkerLeft {
        worker: NodeId,
        at: UnixMillis,
    },
    /// Autoscaling: policy, launch intents, instance lifecycle, decisions.
    Scaling {
        cmd: crate::scaling::ScalingCommand,
        at: UnixMillis,
    },
    /// Several independent commands in one log entry (group commit); each is applied on its own.
    Batch(#[serde(deserialize_with = "shallow_batch")] Vec<Command>),
    /// Retention: these finished tasks (and the runs they complete) leave the live state for
    /// each replica's archive. Tasks that are not finished, or whose run is not done, stay.
    Archive {
        tasks: Vec<TaskId>,
        at: UnixMillis,
    },
    /// These attempts were assigned but their workers did not start them in time (a wedged
    /// agent): each goes back to the queue without using up a retry. An attempt started or
    /// ended meanwhile is left alone. (Added last: variants are encoded by position.)
    GiveBack {
        attempts: Vec<(TaskId, u32)>,
        at: UnixMillis,
    },
    /// Admissions, join and API tokens, the audit trail (see [`crate::security`]).
    Security {
        cmd: crate::security::SecurityCommand,
        at: UnixMillis,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Raft's own entries (blank, membership) carry no command.
    Noop,
    WorkerRegistered {
        /// Tasks whose attempt was lost because the worker restarted.
        lost: Vec<TaskId>,
    },
    Submitted {
        tasks: Vec<TaskId>,
        /// The request id was seen before: nothing new was created.
        duplicate: bool,
    },
    RunSubmitted {
        run: u64,
        tasks: Vec<TaskId>,
        duplicate: bool,
    },
    Assigned {
        results: Vec<Result<(), Rejected>>,
    },
    Started,
    Finished {
        state: TaskState,
    },
    CancelRequested {
        state: TaskState,
    },
    WorkerState {
        lost: Vec<TaskId>,
    },
    Scaling(crate::scaling::ScalingApplied),
    Batch(#[serde(deserialize_with = "shallow_batch")] Vec<Result<Applied, Rejected>>),
    Archived {
        tasks: usize,
        runs: usize,
    },
    Security(crate::security::SecurityApplied),
}

/// Why the ledger refused a command. Refusals are deterministic results, not failures: every
/// replica refuses the same command in the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejected {
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    #[error("invalid scaling command: {0}")]
    InvalidScaling(String),
    #[error("no launch intent {0}")]
    UnknownIntent(u64),
    #[error("instance of intent {intent} has already ended ({state})")]
    InstanceEnded { intent: u64, state: String },
    #[error("task {0} does not exist")]
    UnknownTask(TaskId),
    #[error("worker {0} is not registered")]
    UnknownWorker(NodeId),
    #[error("task {task} is {state}, not pending")]
    NotPending { task: TaskId, state: TaskState },
    #[error("attempt {got} of task {task} is stale (current is {current})")]
    StaleAttempt {
        task: TaskId,
        got: u32,
        current: u32,
    },
    #[error("task {task} attempt {attempt} is not on worker {worker}")]
    WrongWorker {
        task: TaskId,
        attempt: u32,
        worker: NodeId,
    },
    #[error("worker {worker} is draining or lost and takes no new tasks")]
    WorkerDraining { worker: NodeId },
    #[error("worker {worker} is quarantined and takes no new tasks until an operator clears it")]
    WorkerQuarantined { worker: NodeId },
    #[error("does not fit worker {worker}: {shortfall}")]
    DoesNotFit {
        worker: NodeId,
        shortfall: Shortfall,
    },
    #[error("task {task} already finished as {state}")]
    AlreadyFinished { task: TaskId, state: TaskState },
    #[error("invalid transition for task {task}: {detail}")]
    InvalidTransition { task: TaskId, detail: String },
    #[error("capacity of worker {worker} cannot shrink below what is reserved on it")]
    CapacityBelowReserved { worker: NodeId },
    #[error("submit carries {0} tasks; the most one request may carry is {MAX_SUBMIT_BATCH}")]
    BatchTooLarge(usize),
    #[error("a worker cannot be set to {0:?} by hand; use draining or active")]
    BadWorkerState(WorkerState),
    #[error("a nested batch is not allowed")]
    NestedBatch,
    #[error(
        "worker {worker} is {state:?}, not running in the cluster; it becomes active when it starts and registers again"
    )]
    WorkerAway { worker: NodeId, state: WorkerState },
    #[error("{0}")]
    InvalidSecurity(String),
}
