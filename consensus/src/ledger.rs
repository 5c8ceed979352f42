//! The ledger: replicated state and the deterministic [`Ledger::apply`].
//!
//! Invariants (checked by [`Ledger::check_invariants`] in tests and property tests):
//! 1. no worker is over-committed on cpu, memory, disk, GPU share or GPU memory;
//! 2. an exclusive GPU carries exactly one grant;
//! 3. every Assigned/Running task holds exactly one reservation, for its current attempt, and
//!    nothing else holds one;
//! 4. the derived indices (pending queue, per-worker tasks, allocation sums) match the tasks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{
    Applied, Assignment, Command, MAX_SUBMIT_BATCH, Rejected, WorkerRegistration,
};
use crate::history::{HISTORY_LIMIT, HistoryRecord, program_of, shared};
use crate::model::{NodeId, TaskId, UnixMillis, Worker, WorkerState};
use crate::resources::{self, GpuGrant, GpuRequest, Requirements, WHOLE_GPU_MILLI};
use crate::runs::Run;
use crate::scaling::Scaling;
use crate::security::Security;
use crate::task::{Attempt, Outcome, Provenance, Task, TaskSpec, TaskState};

/// Re-queues of a running attempt lost with its worker that do not use up a retry.
pub const FREE_LOSSES: u32 = 3;

/// Resources held by one attempt of one task on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub task: TaskId,
    pub attempt: u32,
    pub worker: NodeId,
    pub requirements: Requirements,
    pub gpus: Vec<GpuGrant>,
    pub since: UnixMillis,
}

/// Key of the pending queue: highest priority first, then submission order.
type PendingKey = (i64, TaskId);

fn pending_key(task: &Task) -> PendingKey {
    (-(task.spec.priority as i64), task.id)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    workers: BTreeMap<NodeId, Worker>,
    tasks: BTreeMap<TaskId, Task>,
    reservations: BTreeMap<TaskId, Reservation>,
    pending: BTreeSet<PendingKey>,
    worker_tasks: BTreeMap<NodeId, BTreeSet<TaskId>>,
    requests: BTreeMap<String, Vec<TaskId>>,
    /// Tasks by the log index of their last change, so that watchers cost O(changes).
    by_rev: BTreeSet<(u64, TaskId)>,
    next_task: u64,
    /// Finished attempts, oldest first, at most [`HISTORY_LIMIT`].
    history: VecDeque<HistoryRecord>,
    /// Records ever added (also those dropped), for "retrain after N new samples".
    history_total: u64,
    scaling: Scaling,
    runs: BTreeMap<u64, Run>,
    /// Run ids by the request that created them (run submits are idempotent).
    run_requests: BTreeMap<String, u64>,
    security: Security,
    /// What the last applies archived, for the store to write to disk (not replicated: every
    /// replica fills it by applying the same commands).
    #[serde(skip)]
    retired: Retired,
    /// The provenance last given to an attempt on each worker, shared by the next ones while
    /// it is the same (not replicated: a cache).
    #[serde(skip)]
    provenances: Provenances,
}

/// See [`Ledger::provenances`].
#[derive(Debug, Clone, Default)]
struct Provenances(BTreeMap<NodeId, Arc<Provenance>>);

// A cache: two ledgers are equal when their replicated state is.
impl PartialEq for Provenances {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Provenances {}

impl Provenances {
    /// `p`, or the equal one this worker's attempts already share.
    fn share(&mut self, worker: NodeId, p: Provenance) -> Arc<Provenance> {
        match self.0.get(&worker) {
            Some(known) if **known == p => known.clone(),
            _ => {
                let p = Arc::new(p);
                self.0.insert(worker, p.clone());
                p
            }
        }
    }
}

/// Tasks and runs that left the live state, waiting to be written to the archive.
#[derive(Debug, Clone, Default)]
pub struct Retired {
    pub tasks: Vec<Task>,
    pub runs: Vec<Run>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.runs.is_empty()
    }
}

// The outbox is transient: two ledgers are equal when their replicated state is.
impl PartialEq for Retired {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Retired {}

/// The history record of a task's last attempt, if it ran to an end of its own.
/// `previous`: the newest record so far, whose strings the new one shares where equal.
fn history_record(
    t: &Task,
    worker: Option<&Worker>,
    previous: Option<&HistoryRecord>,
) -> Option<HistoryRecord> {
    let a = t.attempts.last()?;
    let outcome = a.outcome.as_ref()?;
    if !matches!(
        outcome.state,
        TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut
    ) {
        return None;
    }
    let (started, finished) = (a.started_at?, a.finished_at?);
    let gpu_model = worker
        .and_then(|w| {
            let first = a.gpus.first()?;
            w.capacity.gpus.iter().find(|g| g.index == first.index)
        })
        .map_or("", |g| g.model.as_str());
    let cpu_model = worker.map_or("", |w| w.hardware.cpu_model.as_str());
    Some(HistoryRecord {
        task: t.id,
        attempt: a.number,
        name: shared(previous.map(|p| &p.name), &t.spec.name),
        program: shared(previous.map(|p| &p.program), &program_of(&t.spec.argv)),
        labels: t
            .spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        requirements: t.spec.requirements.clone(),
        worker: a.worker,
        cpu_model: shared(previous.map(|p| &p.cpu_model), cpu_model),
        cores: worker.map_or(0, |w| w.hardware.cores),
        gpu_model: shared(previous.map(|p| &p.gpu_model), gpu_model),
        state: outcome.state,
        started_at: started,
        finished_at: finished,
        duration_ms: finished.0.saturating_sub(started.0),
        peak_rss: outcome.peak_rss,
        cpu_time_ms: outcome.cpu_time_ms,
        peak_gpu_memory: outcome.peak_gpu_memory,
    })
}

/// Moves a task to revision `index` in the change index.
fn stamp(by_rev: &mut BTreeSet<(u64, TaskId)>, t: &mut Task, index: u64) {
    by_rev.remove(&(t.rev, t.id));
    t.rev = index;
    by_rev.insert((index, t.id));
}

/// Checks what the ledger can check of a spec on its own (the API checks more, with nicer words).
pub fn validate_spec(spec: &TaskSpec) -> Result<(), Rejected> {
    let bad = |m: &str| Err(Rejected::InvalidSpec(m.to_string()));
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return bad("the command is empty");
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return bad("the command contains a NUL byte");
    }
    if spec.requirements.cpu.0 == 0 {
        // Every task holds some cpu, so a worker with none free is full (the planner relies on it).
        return bad("cpu must be at least 1m");
    }
    if spec.name.len() > 256 {
        return bad("the name is longer than 256 bytes");
    }
    match spec.requirements.gpu {
        GpuRequest::Whole { count } if count == 0 || count > 1024 => {
            return bad("whole GPU count must be 1..=1024");
        }
        GpuRequest::Shared { milli, .. } if milli == 0 || milli >= WHOLE_GPU_MILLI => {
            return bad("a GPU share must be between 0.001 and 0.999");
        }
        _ => {}
    }
    if spec.timeout_ms == Some(0) {
        return bad("the timeout must be positive");
    }
    crate::limits::check_spec(spec).map_err(Rejected::InvalidSpec)
}

impl Ledger {
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, id: NodeId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    /// All tasks, oldest first.
    pub fn tasks(&self) -> impl DoubleEndedIterator<Item = &Task> {
        self.tasks.values()
    }

    /// Id of the newest task ever submitted (live or not).
    pub fn last_task_id(&self) -> u64 {
        self.next_task
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Pending tasks in the order they should be considered.
    pub fn pending(&self) -> impl Iterator<Item = &Task> {
        self.pending.iter().filter_map(|(_, id)| self.tasks.get(id))
    }

    /// Tasks changed after revision `rev`, oldest change first.
    pub fn changed_since(&self, rev: u64) -> impl Iterator<Item = &Task> {
        self.changed_after(rev.saturating_add(1), TaskId(0))
    }

    /// Tasks whose last change comes at or after (`rev`, `id`) in the order of changes
    /// (revision, then task id): where a watch cut short inside one revision goes on.
    pub fn changed_after(&self, rev: u64, id: TaskId) -> impl Iterator<Item = &Task> {
        self.by_rev
            .range((rev, id)..)
            .filter_map(|(_, id)| self.tasks.get(id))
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Finished attempts, oldest first (bounded; see [`crate::history`]).
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &HistoryRecord> {
        self.history.iter()
    }

    /// History records ever added, including those since dropped.
    pub fn history_total(&self) -> u64 {
        self.history_total
    }

    /// Autoscaling state: policy, instances, decisions.
    pub fn scaling(&self) -> &Scaling {
        &self.scaling
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Tasks assigned to or running on a worker.
    pub fn active_on(&self, worker: NodeId) -> impl Iterator<Item = &Task> {
        self.worker_tasks
            .get(&worker)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    pub fn request(&self, request_id: &str) -> Option<&[TaskId]> {
        self.requests.get(request_id).map(Vec::as_slice)
    }

    /// Applies one command. `index` is the command's Raft log index; it stamps the tasks it
    /// changes (their `rev`) and is the only "time" apply knows besides the command's own.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<Applied, Rejected> {
        match cmd {
            Command::Batch(cmds) => Ok(Applied::Batch(
                cmds.iter()
                    .map(|c| match c {
                        Command::Batch(_) => Err(Rejected::NestedBatch),
                        c => self.apply(index, c),
                    })
                    .collect(),
            )),
            Command::RegisterWorker { worker, at } => self.register(index, worker, *at),
            Command::Archive { tasks, .. } => Ok(self.archive(tasks)),
            Command::GiveBack { attempts, at } => Ok(self.give_back(index, attempts, *at)),
            Command::Scaling { cmd, at } => self.scaling.apply(cmd, *at).map(Applied::Scaling),
            Command::Security { cmd, at } => self.security.apply(cmd, *at).map(Applied::Security),
            Command::Submit {
                request_id,
                tasks,
                at,
            } => self.submit(index, request_id, tasks, *at, None),
            Command::SubmitRun {
                request_id,
                name,
                metadata,
                tasks,
                at,
            } => self.submit_run(index, request_id, name, metadata, tasks, *at),
            Command::Assign { assignments, at } => Ok(Applied::Assigned {
                results: assignments
                    .iter()
                    .map(|a| self.assign(index, a, *at))
                    .collect(),
            }),
            Command::TaskStarted {
                task,
                attempt,
                worker,
                pid,
                at,
            } => {
                let t = self.current(*task, *attempt, *worker)?;
                if t.state != TaskState::Assigned {
                    return Err(Rejected::InvalidTransition {
                        task: *task,
                        detail: format!("started while {}", t.state),
                    });
                }
                let t = self.tasks.get_mut(task).expect("checked above");
                t.state = TaskState::Running;
                stamp(&mut self.by_rev, t, index);
                let a = t.attempts.last_mut().expect("active task has an attempt");
                a.started_at = Some(*at);
                a.pid = Some(*pid);
                Ok(Applied::Started)
            }
            Command::TaskFinished {
                task,
                attempt,
                worker,
                outcome,
                at,
            } => {
                self.current(*task, *attempt, *worker)?;
                if !outcome.state.is_final() {
                    return Err(Rejected::InvalidTransition {
                        task: *task,
                        detail: format!("an attempt cannot end as {}", outcome.state),
                    });
                }
                let t = &self.tasks[task];
                let started = t.attempts.last().and_then(|a| a.started_at);
                let reserved_milli = t.spec.requirements.cpu.0;
                if let Some(w) = self.workers.get_mut(worker)
                    && matches!(
                        outcome.state,
                        TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut
                    )
                {
                    let r = &mut w.record;
                    match outcome.state {
                        TaskState::Succeeded => r.succeeded += 1,
                        TaskState::Failed => r.failed += 1,
                        _ => r.timed_out += 1,
                    }
                    let ran = started.map_or(0, |s| at.0.saturating_sub(s.0));
                    r.run_ms += ran;
                    r.cpu_used_ms += outcome.cpu_time_ms;
                    r.cpu_reserved_ms += reserved_milli.saturating_mul(ran) / 1000;
                }
                // A worker reports `lost` only when it stopped the attempt for its own sake (it
                // fenced itself, cut off from the leader): not the task's failure, like a lost
                // worker (FREE_LOSSES times).
                if outcome.state == TaskState::Lost {
                    let t = self.tasks.get_mut(task).expect("checked by current()");
                    if t.handed_back < FREE_LOSSES {
                        t.handed_back += 1;
                    }
                }
                // Whatever a worker sends, the ledger keeps no more than the caps allow.
                let mut outcome = outcome.clone();
                outcome.clamp();
                let state = self.end_attempt(index, *task, outcome, *at);
                Ok(Applied::Finished { state })
            }
            Command::SetWorkerState { worker, state, .. } => {
                if matches!(state, WorkerState::Lost | WorkerState::Left) {
                    return Err(Rejected::BadWorkerState(*state));
                }
                let w = self
                    .workers
                    .get_mut(worker)
                    .ok_or(Rejected::UnknownWorker(*worker))?;
                if matches!(w.state, WorkerState::Lost | WorkerState::Left) {
                    return Err(Rejected::WorkerAway {
                        worker: *worker,
                        state: w.state,
                    });
                }
                w.state = *state;
                Ok(Applied::WorkerState { lost: Vec::new() })
            }
            Command::SetQuarantine { worker, reason, at } => {
                let w = self
                    .workers
                    .get_mut(worker)
                    .ok_or(Rejected::UnknownWorker(*worker))?;
                match reason {
                    Some(r) => {
                        if w.quarantine.is_none() {
                            w.quarantine = Some(crate::model::Quarantine {
                                reason: r.clone(),
                                since: *at,
                            });
                        }
                    }
                    None => {
                        // Cleared by an operator: its record starts afresh.
                        w.quarantine = None;
                        w.record = Default::default();
                    }
                }
                Ok(Applied::WorkerState { lost: Vec::new() })
            }
            Command::WorkerLost { worker, at } => {
                if !self.workers.contains_key(worker) {
                    return Err(Rejected::UnknownWorker(*worker));
                }
                let lost = self.lose_attempts_on(index, *worker, "worker stopped responding", *at);
                self.workers.get_mut(worker).expect("checked").state = WorkerState::Lost;
                Ok(Applied::WorkerState { lost })
            }
            Command::WorkerLeft { worker, at } => {
                if !self.workers.contains_key(worker) {
                    return Err(Rejected::UnknownWorker(*worker));
                }
                let lost: Vec<TaskId> = self.active_on(*worker).map(|t| t.id).collect();
                for id in &lost {
                    let t = self.tasks.get_mut(id).expect("active task exists");
                    t.handed_back += 1;
                    self.end_attempt(
                        index,
                        *id,
                        Outcome::lost("handed back: the worker left the cluster"),
                        *at,
                    );
                }
                self.workers.get_mut(worker).expect("checked").state = WorkerState::Left;
                Ok(Applied::WorkerState { lost })
            }
            Command::Cancel { task, at } => {
                let t = self
                    .tasks
                    .get_mut(task)
                    .ok_or(Rejected::UnknownTask(*task))?;
                match t.state {
                    TaskState::Pending => {
                        self.pending.remove(&pending_key(t));
                        t.state = TaskState::Cancelled;
                        t.cancel_requested = true;
                        t.finished_at = Some(*at);
                        stamp(&mut self.by_rev, t, index);
                        Ok(Applied::CancelRequested {
                            state: TaskState::Cancelled,
                        })
                    }
                    s if s.is_active() => {
                        // The worker kills the process and reports; the reservation is held until then.
                        t.cancel_requested = true;
                        stamp(&mut self.by_rev, t, index);
                        Ok(Applied::CancelRequested { state: s })
                    }
                    s => Err(Rejected::AlreadyFinished {
                        task: *task,
                        state: s,
                    }),
                }
            }
        }
    }

    /// The task's current attempt, checked against a report from `worker` about `attempt`.
    fn current(&self, task: TaskId, attempt: u32, worker: NodeId) -> Result<&Task, Rejected> {
        let t = self.tasks.get(&task).ok_or(Rejected::UnknownTask(task))?;
        if attempt != t.attempt {
            return Err(Rejected::StaleAttempt {
                task,
                got: attempt,
                current: t.attempt,
            });
        }
        if t.state.is_final() {
            return Err(Rejected::AlreadyFinished {
                task,
                state: t.state,
            });
        }
        if !t.state.is_active() {
            return Err(Rejected::InvalidTransition {
                task,
                detail: format!("a report about a {} task", t.state),
            });
        }
        match self.reservations.get(&task) {
            Some(r) if r.worker == worker && r.attempt == attempt => Ok(t),
            _ => Err(Rejected::WrongWorker {
                task,
                attempt,
                worker,
            }),
        }
    }

    fn register(
        &mut self,
        index: u64,
        reg: &WorkerRegistration,
        at: UnixMillis,
    ) -> Result<Applied, Rejected> {
        let mut lost = Vec::new();
        if let Some(w) = self.workers.get(&reg.id) {
            if w.boot_id == reg.boot_id {
                let a = &w.allocated;
                let c = &reg.capacity;
                let gpus_ok = a.gpus.iter().all(|(i, used)| {
                    c.gpus
                        .iter()
                        .any(|g| g.index == *i && g.memory >= used.memory)
                });
                if a.cpu > c.cpu || a.memory > c.memory || a.disk > c.disk || !gpus_ok {
                    return Err(Rejected::CapacityBelowReserved { worker: reg.id });
                }
            } else {
                // A new boot: the processes of every attempt it held are gone, and so is
                // everything reserved for them.
                lost = self.lose_attempts_on(index, reg.id, "worker restarted", at);
            }
        }
        let prev = self.workers.get(&reg.id);
        let worker = Worker {
            id: reg.id,
            hardware: reg.hardware.clone(),
            capacity: reg.capacity.clone(),
            labels: reg.labels.clone(),
            // A lost worker that registers again is back; a drained one stays drained.
            state: match prev.map(|w| w.state) {
                Some(WorkerState::Draining) => WorkerState::Draining,
                _ => WorkerState::Active,
            },
            boot_id: reg.boot_id,
            version: reg.version.clone(),
            registered_at: prev.map_or(at, |w| w.registered_at),
            allocated: prev.map(|w| w.allocated.clone()).unwrap_or_default(),
            // A restart keeps its track record and its quarantine.
            record: prev.map(|w| w.record).unwrap_or_default(),
            quarantine: prev.and_then(|w| w.quarantine.clone()),
        };
        self.workers.insert(reg.id, worker);
        self.scaling.worker_registered(reg.id, &reg.labels, at);
        Ok(Applied::WorkerRegistered { lost })
    }

    fn submit(
        &mut self,
        index: u64,
        request_id: &str,
        specs: &[TaskSpec],
        at: UnixMillis,
        run: Option<u64>,
    ) -> Result<Applied, Rejected> {
        if let Some(ids) = self.requests.get(request_id) {
            return Ok(Applied::Submitted {
                tasks: ids.clone(),
                duplicate: true,
            });
        }
        if specs.is_empty() {
            return Err(Rejected::InvalidSpec("no task to submit".into()));
        }
        if request_id.len() > crate::limits::MAX_REQUEST_ID {
            return Err(Rejected::InvalidSpec(format!(
                "the request id is longer than {} bytes",
                crate::limits::MAX_REQUEST_ID
            )));
        }
        if specs.len() > MAX_SUBMIT_BATCH {
            return Err(Rejected::BatchTooLarge(specs.len()));
        }
        for (i, s) in specs.iter().enumerate() {
            validate_spec(s).map_err(|e| match e {
                Rejected::InvalidSpec(m) if specs.len() > 1 => {
                    Rejected::InvalidSpec(format!("task #{i}: {m}"))
                }
                e => e,
            })?;
        }
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            self.next_task += 1;
            let id = TaskId(self.next_task);
            let task = Task {
                id,
                spec: spec.clone(),
                request_id: request_id.to_string(),
                state: TaskState::Pending,
                attempt: 0,
                attempts: Vec::new(),
                submitted_at: at,
                finished_at: None,
                cancel_requested: false,
                handed_back: 0,
                rev: index,
                run,
            };
            self.pending.insert(pending_key(&task));
            self.by_rev.insert((index, id));
            self.tasks.insert(id, task);
            ids.push(id);
        }
        if !request_id.is_empty() {
            self.requests.insert(request_id.to_string(), ids.clone());
        }
        Ok(Applied::Submitted {
            tasks: ids,
            duplicate: false,
        })
    }

    fn submit_run(
        &mut self,
        index: u64,
        request_id: &str,
        name: &str,
        metadata: &BTreeMap<String, String>,
        specs: &[TaskSpec],
        at: UnixMillis,
    ) -> Result<Applied, Rejected> {
        if let Some(id) = self.run_requests.get(request_id) {
            return Ok(Applied::RunSubmitted {
                run: *id,
                tasks: self.runs[id].tasks.clone(),
                duplicate: true,
            });
        }
        if request_id.is_empty() {
            return Err(Rejected::InvalidSpec(
                "a run needs a request id (submits of runs are idempotent)".into(),
            ));
        }
        crate::runs::validate(name, metadata).map_err(Rejected::InvalidSpec)?;
        let id = self.runs.last_key_value().map_or(1, |(k, _)| k + 1);
        let Applied::Submitted { tasks, .. } =
            self.submit(index, request_id, specs, at, Some(id))?
        else {
            unreachable!("submit answers Submitted");
        };
        self.runs.insert(
            id,
            Run {
                id,
                name: name.to_string(),
                metadata: metadata.clone(),
                request_id: request_id.to_string(),
                created_at: at,
                tasks: tasks.clone(),
            },
        );
        self.run_requests.insert(request_id.to_string(), id);
        Ok(Applied::RunSubmitted {
            run: id,
            tasks,
            duplicate: false,
        })
    }

    /// Moves finished tasks (and the runs they complete) out of the live state into
    /// [`Ledger::take_retired`]'s outbox. Skips what must stay (see `Command::Archive`).
    fn archive(&mut self, ids: &[TaskId]) -> Applied {
        use std::collections::HashMap;
        let mut run_done: HashMap<u64, bool> = HashMap::new();
        let mut touched_requests = BTreeSet::new();
        let mut touched_runs = BTreeSet::new();
        let mut count = 0;
        for id in ids {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if !t.state.is_final() {
                continue;
            }
            if let Some(r) = t.run {
                let done = *run_done.entry(r).or_insert_with(|| {
                    // The newest run stays: the next run's id is counted from it.
                    self.newest_run() != Some(r)
                        && self.runs.get(&r).is_none_or(|run| {
                            run.tasks
                                .iter()
                                .all(|t| self.tasks.get(t).is_none_or(|t| t.state.is_final()))
                        })
                });
                if !done {
                    continue;
                }
                touched_runs.insert(r);
            }
            let t = self.tasks.remove(id).expect("checked above");
            self.by_rev.remove(&(t.rev, t.id));
            if !t.request_id.is_empty() {
                touched_requests.insert(t.request_id.clone());
            }
            self.retired.tasks.push(t);
            count += 1;
        }
        // A request id is forgotten with the last of its tasks: the window in which a resent
        // submit is recognised is the retention of what it created.
        for r in touched_requests {
            if let Some(ids) = self.requests.get(&r)
                && ids.iter().all(|t| !self.tasks.contains_key(t))
            {
                self.requests.remove(&r);
            }
        }
        let mut runs = 0;
        for r in touched_runs {
            if let Some(run) = self.runs.get(&r)
                && run.tasks.iter().all(|t| !self.tasks.contains_key(t))
            {
                let run = self.runs.remove(&r).expect("checked above");
                self.run_requests.remove(&run.request_id);
                self.retired.runs.push(run);
                runs += 1;
            }
        }
        Applied::Archived { tasks: count, runs }
    }

    /// Id of the newest run (it is never archived: the next id follows it).
    pub fn newest_run(&self) -> Option<u64> {
        self.runs.last_key_value().map(|(k, _)| *k)
    }

    /// What applies archived since the last call, to be written to the archive.
    pub fn take_retired(&mut self) -> Retired {
        std::mem::take(&mut self.retired)
    }

    pub fn run(&self, id: u64) -> Option<&Run> {
        self.runs.get(&id)
    }

    /// Runs, oldest first.
    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.values()
    }

    fn assign(&mut self, index: u64, a: &Assignment, at: UnixMillis) -> Result<(), Rejected> {
        let t = self
            .tasks
            .get(&a.task)
            .ok_or(Rejected::UnknownTask(a.task))?;
        if t.state != TaskState::Pending {
            return Err(Rejected::NotPending {
                task: a.task,
                state: t.state,
            });
        }
        if a.attempt != t.attempt + 1 {
            return Err(Rejected::StaleAttempt {
                task: a.task,
                got: a.attempt,
                current: t.attempt,
            });
        }
        let w = self
            .workers
            .get(&a.worker)
            .ok_or(Rejected::UnknownWorker(a.worker))?;
        if w.state != WorkerState::Active {
            return Err(Rejected::WorkerDraining { worker: a.worker });
        }
        if w.quarantine.is_some() {
            return Err(Rejected::WorkerQuarantined { worker: a.worker });
        }
        let req = &t.spec.requirements;
        resources::verify(&w.capacity, &w.allocated, &w.labels, req, &a.gpus).map_err(
            |shortfall| Rejected::DoesNotFit {
                worker: a.worker,
                shortfall,
            },
        )?;
        let reservation = Reservation {
            task: a.task,
            attempt: a.attempt,
            worker: a.worker,
            requirements: req.clone(),
            gpus: a.gpus.clone(),
            since: at,
        };
        let key = pending_key(t);
        let provenance = Provenance {
            hostname: w.hardware.hostname.clone(),
            cpu_model: w.hardware.cpu_model.clone(),
            gpu_models: a
                .gpus
                .iter()
                .filter_map(|g| w.capacity.gpus.iter().find(|x| x.index == g.index))
                .map(|g| g.model.clone())
                .collect(),
            gpu_driver: w.hardware.gpu_driver.clone(),
            cuda_version: w.hardware.cuda_version.clone(),
            version: w.version.clone(),
        };
        let provenance = self.provenances.share(a.worker, provenance);
        self.workers
            .get_mut(&a.worker)
            .expect("checked above")
            .allocated
            .add(req, &a.gpus);
        self.pending.remove(&key);
        self.worker_tasks
            .entry(a.worker)
            .or_default()
            .insert(a.task);
        self.reservations.insert(a.task, reservation);
        let t = self.tasks.get_mut(&a.task).expect("checked above");
        t.state = TaskState::Assigned;
        t.attempt = a.attempt;
        stamp(&mut self.by_rev, t, index);
        // Most tasks have one attempt: a first push would reserve room for four (1.1 KiB).
        t.attempts.reserve_exact(1);
        t.attempts.push(Attempt {
            number: a.attempt,
            worker: a.worker,
            gpus: a.gpus.clone(),
            assigned_at: at,
            started_at: None,
            pid: None,
            finished_at: None,
            outcome: None,
            provenance,
        });
        Ok(())
    }

    /// Ends every attempt held by `worker` as lost and re-queues them. Losing a worker is not
    /// the task's failure: an attempt that never started is re-queued without using a retry,
    /// and so is one that was running, [`FREE_LOSSES`] times (a task whose attempts keep
    /// taking their workers down then falls back on its own retries).
    fn lose_attempts_on(
        &mut self,
        index: u64,
        worker: NodeId,
        why: &str,
        at: UnixMillis,
    ) -> Vec<TaskId> {
        let lost: Vec<TaskId> = self.active_on(worker).map(|t| t.id).collect();
        for id in &lost {
            let t = self.tasks.get_mut(id).expect("active task exists");
            let started = t.current_attempt().is_some_and(|a| a.started_at.is_some());
            if !started || t.handed_back < FREE_LOSSES {
                t.handed_back += 1;
            }
            let why = if started {
                why.to_string()
            } else {
                format!("{why} before it started the task")
            };
            self.end_attempt(index, *id, Outcome::lost(&why), at);
        }
        lost
    }

    /// Re-queues assigned attempts that were never started (see `Command::GiveBack`); returns
    /// the tasks given back.
    fn give_back(&mut self, index: u64, attempts: &[(TaskId, u32)], at: UnixMillis) -> Applied {
        let mut given = Vec::new();
        for (id, attempt) in attempts {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            let unstarted = t.current_attempt().is_some_and(|a| a.started_at.is_none());
            if t.state != TaskState::Assigned || t.attempt != *attempt || !unstarted {
                continue;
            }
            t.handed_back += 1;
            self.end_attempt(
                index,
                *id,
                Outcome::lost("given back: its worker did not start it in time"),
                at,
            );
            given.push(*id);
        }
        Applied::WorkerState { lost: given }
    }

    /// Ends the current attempt of an active task: releases its reservation, records the outcome
    /// and either re-queues the task (retries left) or finishes it. Returns the new task state.
    fn end_attempt(
        &mut self,
        index: u64,
        id: TaskId,
        outcome: Outcome,
        at: UnixMillis,
    ) -> TaskState {
        if let Some(r) = self.reservations.remove(&id) {
            if let Some(w) = self.workers.get_mut(&r.worker) {
                w.allocated.remove(&r.requirements, &r.gpus);
            }
            if let Some(set) = self.worker_tasks.get_mut(&r.worker) {
                set.remove(&id);
                if set.is_empty() {
                    self.worker_tasks.remove(&r.worker);
                }
            }
        }
        let t = self.tasks.get_mut(&id).expect("caller checked the task");
        let ended = outcome.state;
        if let Some(a) = t.attempts.last_mut() {
            a.finished_at = Some(at);
            a.outcome = Some(outcome);
        }
        if let Some(record) = history_record(
            t,
            self.workers
                .get(&t.attempts.last().map_or(NodeId(0), |a| a.worker)),
            self.history.back(),
        ) {
            while self.history.len() >= HISTORY_LIMIT {
                self.history.pop_front();
            }
            // Grown by hand: doubling would reserve room for 65,536 records (or 100,000 after
            // a snapshot decoded exactly 50,000) where 50,000 are ever kept.
            if self.history.len() == self.history.capacity() {
                let more = self
                    .history
                    .len()
                    .max(64)
                    .min(HISTORY_LIMIT - self.history.len());
                self.history.reserve_exact(more);
            }
            self.history.push_back(record);
            self.history_total += 1;
        }
        stamp(&mut self.by_rev, t, index);
        // A handed-back attempt was not the task's fault: it does not use up a retry.
        let retry = matches!(
            ended,
            TaskState::Failed | TaskState::TimedOut | TaskState::Lost
        ) && !t.cancel_requested
            && t.attempt.saturating_sub(t.handed_back) <= t.spec.retries;
        if retry {
            t.state = TaskState::Pending;
            let key = pending_key(t);
            self.pending.insert(key);
        } else {
            t.state = if t.cancel_requested {
                TaskState::Cancelled
            } else {
                ended
            };
            t.finished_at = Some(at);
        }
        t.state
    }
}

mod invariants;

#[cfg(test)]
mod tests;
