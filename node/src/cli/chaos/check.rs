//! The checker: reads a chaos run's history, the final ledger and what the probes and watchers
//! recorded, and lists every broken promise. Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use testmesh_consensus::model::Worker;
use testmesh_consensus::task::{Task, TaskState};
use testmesh_consensus::{NodeId, TaskId};

use super::history::{Completed, Kind, Op};

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Violation {
    pub check: std::borrow::Cow<'static, str>,
    pub detail: String,
    /// The operations and ledger records that show it, oldest first.
    pub trace: Vec<String>,
}

/// What a watcher saw: every (task, revision) it was handed, in order.
pub type WatchLog = Vec<(TaskId, u64)>;

pub struct Observed<'a> {
    pub ops: &'a [Completed],
    pub tasks: &'a [Task],
    pub workers: &'a [Worker],
    /// Lines the probes wrote when they found a lock already held.
    pub probe_violations: &'a [String],
    pub watches: &'a [WatchLog],
    /// Tasks read from the archive (retention): watchers are not asked about them.
    pub archived: &'a BTreeSet<TaskId>,
}

fn v(check: &'static str, detail: String, trace: Vec<String>) -> Violation {
    Violation {
        check: check.into(),
        detail,
        trace,
    }
}

fn show(c: &Completed) -> String {
    let end = if c.completed == u64::MAX {
        "never".to_string()
    } else {
        format!("{} ms", c.completed)
    };
    format!(
        "client {} {:?} {:?} invoked {} ms, completed {end}",
        c.process, c.op, c.kind, c.invoked
    )
}

pub fn check(o: &Observed) -> Vec<Violation> {
    let mut out = Vec::new();
    submits(o, &mut out);
    reads(o, &mut out);
    cancels(o, &mut out);
    attempts(o, &mut out);
    capacity(o, &mut out);
    for p in o.probe_violations {
        out.push(v("ran twice at once", p.clone(), vec![]));
    }
    watches(o, &mut out);
    out
}

/// Every acknowledged submit is present exactly once with the ids it was answered with; an
/// unknown one is present whole or not at all; a refused one is absent; nothing else exists.
fn submits(o: &Observed, out: &mut Vec<Violation>) {
    let mut by_request: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in o.tasks {
        by_request.entry(t.request_id.as_str()).or_default().push(t);
    }
    let mut asked: BTreeMap<&str, Vec<&Completed>> = BTreeMap::new();
    for c in o.ops {
        if let Op::Submit { request_id, .. } = &c.op {
            asked.entry(request_id.as_str()).or_default().push(c);
        }
    }
    for (rid, ops) in &asked {
        let found: BTreeSet<TaskId> = by_request
            .get(rid)
            .map(|ts| ts.iter().map(|t| t.id).collect())
            .unwrap_or_default();
        let n = match &ops[0].op {
            Op::Submit { tasks, .. } => *tasks,
            _ => unreachable!(),
        };
        let trace: Vec<String> = ops.iter().map(|c| show(c)).collect();
        let acked: Vec<&Vec<TaskId>> = ops
            .iter()
            .filter(|c| c.kind == Kind::Ok)
            .filter_map(|c| match &c.op {
                Op::Submit { ids, .. } => Some(ids),
                _ => None,
            })
            .collect();
        for ids in &acked {
            let ids: BTreeSet<TaskId> = ids.iter().copied().collect();
            if ids != found {
                out.push(v(
                    "acknowledged submit",
                    format!(
                        "request {rid} was answered with tasks {ids:?}; the ledger holds {found:?}"
                    ),
                    trace.clone(),
                ));
            }
        }
        if !found.is_empty() && found.len() != n {
            out.push(v(
                "submit is all or nothing",
                format!(
                    "request {rid} of {n} task(s) left {} in the ledger",
                    found.len()
                ),
                trace.clone(),
            ));
        }
        let refused = ops.iter().all(|c| c.kind == Kind::Fail);
        if refused && !found.is_empty() {
            out.push(v(
                "refused submit",
                format!("request {rid} was refused every time, yet the ledger holds {found:?}"),
                trace,
            ));
        }
    }
    for (rid, ts) in &by_request {
        if !asked.contains_key(rid) {
            out.push(v(
                "phantom task",
                format!(
                    "tasks {:?} carry request {rid}, which no client sent",
                    ts.iter().map(|t| t.id).collect::<Vec<_>>()
                ),
                vec![],
            ));
        }
    }
}

fn terminal(s: TaskState) -> bool {
    !matches!(
        s,
        TaskState::Pending | TaskState::Assigned | TaskState::Running
    )
}

/// Consistent reads are linearizable for the set of tasks: a task whose submit was
/// acknowledged before the read began is found; a finished state never changes afterwards.
fn reads(o: &Observed, out: &mut Vec<Violation>) {
    let mut acked_at: HashMap<TaskId, &Completed> = HashMap::new();
    for c in o.ops {
        if let (Kind::Ok, Op::Submit { ids, .. }) = (c.kind, &c.op) {
            for id in ids {
                acked_at.entry(*id).or_insert(c);
            }
        }
    }
    // Per task: the earliest completion of a read that saw it finished, and in which state.
    let mut finished_seen: HashMap<TaskId, (&Completed, TaskState)> = HashMap::new();
    for c in o.ops.iter().filter(|c| c.kind == Kind::Ok) {
        if let Op::Read {
            task,
            state: Some(s),
        } = &c.op
            && terminal(*s)
        {
            let e = finished_seen.entry(*task).or_insert((c, *s));
            if c.completed < e.0.completed {
                *e = (c, *s);
            }
        }
    }
    for c in o.ops.iter().filter(|c| c.kind == Kind::Ok) {
        let Op::Read { task, state } = &c.op else {
            continue;
        };
        match state {
            None => {
                if let Some(s) = acked_at.get(task).filter(|s| s.completed < c.invoked) {
                    out.push(v(
                        "consistent read",
                        format!("task {task} was not found by a read that began after its submit was acknowledged"),
                        vec![show(s), show(c)],
                    ));
                }
            }
            Some(s) => {
                if let Some((first, fs)) = finished_seen.get(task)
                    && first.completed < c.invoked
                    && s != fs
                {
                    out.push(v(
                        "consistent read",
                        format!("task {task} was read {fs:?} and later {s:?}"),
                        vec![show(first), show(c)],
                    ));
                }
            }
        }
    }
}

/// A cancel answered "cancelled" (the task was pending) leaves the task cancelled with no
/// attempt started after it; every task is finished once the faults are healed.
fn cancels(o: &Observed, out: &mut Vec<Violation>) {
    let tasks: HashMap<TaskId, &Task> = o.tasks.iter().map(|t| (t.id, t)).collect();
    for c in o.ops.iter().filter(|c| c.kind == Kind::Ok) {
        if let Op::Cancel {
            task,
            state: Some(TaskState::Cancelled),
        } = &c.op
            && let Some(t) = tasks.get(task)
            && t.state != TaskState::Cancelled
        {
            out.push(v(
                "acknowledged cancel",
                format!(
                    "task {task} was cancelled while pending but ended {:?}",
                    t.state
                ),
                vec![show(c)],
            ));
        }
    }
    for t in o.tasks {
        if !terminal(t.state) {
            out.push(v(
                "every task ends",
                format!(
                    "task {} is still {:?} after the faults were healed",
                    t.id, t.state
                ),
                vec![],
            ));
        }
    }
}

/// When an attempt ended, for replaying reservations. The ledger stamps commands with the
/// time they were proposed, so an end proposed before the assignment was applied (a worker
/// that restarted meanwhile) can read earlier than the assignment: in log order it came after.
fn ended(a: &testmesh_consensus::task::Attempt) -> Option<u64> {
    a.finished_at.map(|f| f.0.max(a.assigned_at.0))
}

/// In the ledger, a task's attempts never overlap: the next is assigned only after the last
/// one ended.
fn attempts(o: &Observed, out: &mut Vec<Violation>) {
    for t in o.tasks {
        for w in t.attempts.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            match ended(a) {
                Some(f) if f <= b.assigned_at.0 => {}
                _ => out.push(v(
                    "one attempt at a time",
                    format!(
                        "task {}: attempt {} on {} (finished {:?}) overlaps attempt {} on {} assigned {}",
                        t.id, a.number, a.worker, a.finished_at, b.number, b.worker, b.assigned_at.0
                    ),
                    vec![],
                )),
            }
        }
    }
}

/// Replayed from the attempts: no worker ever held more CPU or memory than it offers, and no
/// exclusive GPU was granted twice at once.
fn capacity(o: &Observed, out: &mut Vec<Violation>) {
    let workers: HashMap<NodeId, &Worker> = o.workers.iter().map(|w| (w.id, w)).collect();
    // (time, +1 start / -1 end, task, attempt) per worker.
    let mut edges: HashMap<NodeId, Vec<(u64, i8, &Task, u32)>> = HashMap::new();
    for t in o.tasks {
        for a in &t.attempts {
            // One that ended as it was assigned held nothing for any time.
            if ended(a) == Some(a.assigned_at.0) {
                continue;
            }
            let e = edges.entry(a.worker).or_default();
            e.push((a.assigned_at.0, 1, t, a.number));
            e.push((ended(a).unwrap_or(u64::MAX), -1, t, a.number));
        }
    }
    for (worker, mut es) in edges {
        let Some(w) = workers.get(&worker) else {
            continue;
        };
        // Ends before starts at the same millisecond: a release and a grant in one instant.
        es.sort_by_key(|(at, d, t, n)| (*at, *d, t.id, *n));
        let (mut cpu, mut mem) = (0u64, 0u64);
        let mut gpus: HashMap<u32, (TaskId, u32)> = HashMap::new();
        for (at, d, t, n) in es {
            let r = &t.spec.requirements;
            let grants = t
                .attempts
                .iter()
                .find(|a| a.number == n)
                .map(|a| a.gpus.clone())
                .unwrap_or_default();
            if d > 0 {
                cpu += r.cpu.0;
                mem += r.memory.0;
                if cpu > w.capacity.cpu.0 || mem > w.capacity.memory.0 {
                    out.push(v(
                        "no over-commit",
                        format!(
                            "worker {worker} held {cpu}m CPU / {mem} B at {at} ms (it offers {}m / {} B) once task {} attempt {n} was assigned",
                            w.capacity.cpu.0, w.capacity.memory.0, t.id
                        ),
                        vec![],
                    ));
                }
                for g in grants.iter().filter(|g| g.exclusive) {
                    if let Some((other, on)) = gpus.insert(g.index, (t.id, n)) {
                        out.push(v(
                            "exclusive GPUs",
                            format!(
                                "worker {worker} GPU {} granted to task {} attempt {n} at {at} ms while task {other} attempt {on} held it",
                                g.index, t.id
                            ),
                            vec![],
                        ));
                    }
                }
            } else {
                cpu = cpu.saturating_sub(r.cpu.0);
                mem = mem.saturating_sub(r.memory.0);
                for g in grants.iter().filter(|g| g.exclusive) {
                    if gpus.get(&g.index) == Some(&(t.id, n)) {
                        gpus.remove(&g.index);
                    }
                }
            }
        }
    }
}

/// Every watcher saw each change once, and ended having seen each task's last change.
fn watches(o: &Observed, out: &mut Vec<Violation>) {
    let last: HashMap<TaskId, u64> = o
        .tasks
        .iter()
        .filter(|t| !o.archived.contains(&t.id))
        .map(|t| (t.id, t.rev))
        .collect();
    for (i, log) in o.watches.iter().enumerate() {
        let mut seen: BTreeSet<(TaskId, u64)> = BTreeSet::new();
        let mut newest: HashMap<TaskId, u64> = HashMap::new();
        for (t, rev) in log {
            if !seen.insert((*t, *rev)) {
                out.push(v(
                    "watch sees each change once",
                    format!("watcher {i} was handed task {t} at revision {rev} twice"),
                    vec![],
                ));
            }
            let n = newest.entry(*t).or_insert(*rev);
            if *rev < *n {
                out.push(v(
                    "watch sees each change once",
                    format!("watcher {i} saw task {t} go back from revision {n} to {rev}"),
                    vec![],
                ));
            }
            *n = (*n).max(*rev);
        }
        for (t, rev) in &last {
            if newest.get(t) != Some(rev) {
                out.push(v(
                    "watch sees every change",
                    format!(
                        "watcher {i} ended with task {t} at revision {:?}; the ledger has {rev}",
                        newest.get(t)
                    ),
                    vec![],
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use testmesh_consensus::model::{Bytes, Capacity, MilliCpu, UnixMillis, WorkerState};
    use testmesh_consensus::resources::GpuGrant;
    use testmesh_consensus::task::{Attempt, TaskSpec};

    use super::*;

    fn task(id: u64, rid: &str, state: TaskState, attempts: &[(u64, u64, Option<u64>)]) -> Task {
        let mut spec = TaskSpec::default();
        spec.requirements.cpu = MilliCpu(1000);
        Task {
            id: TaskId(id),
            spec,
            request_id: rid.into(),
            state,
            attempt: attempts.len() as u32,
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, (w, from, to))| Attempt {
                    number: i as u32 + 1,
                    worker: NodeId(*w),
                    gpus: vec![],
                    assigned_at: UnixMillis(*from),
                    started_at: Some(UnixMillis(*from)),
                    pid: None,
                    finished_at: to.map(UnixMillis),
                    outcome: None,
                    provenance: Default::default(),
                })
                .collect(),
            submitted_at: UnixMillis(0),
            finished_at: None,
            cancel_requested: false,
            handed_back: 0,
            rev: id,
            run: None,
        }
    }

    fn op(invoked: u64, completed: u64, kind: Kind, op: Op) -> Completed {
        Completed {
            process: 0,
            invoked,
            completed,
            kind,
            op,
        }
    }

    fn submit(rid: &str, n: usize, ids: &[u64]) -> Op {
        Op::Submit {
            request_id: rid.into(),
            tasks: n,
            ids: ids.iter().map(|i| TaskId(*i)).collect(),
        }
    }

    fn worker(id: u64, cpu: u64) -> Worker {
        Worker {
            id: NodeId(id),
            hardware: Default::default(),
            capacity: Capacity {
                cpu: MilliCpu(cpu),
                memory: Bytes(1 << 40),
                disk: Bytes(0),
                gpus: vec![],
            },
            labels: Default::default(),
            state: WorkerState::Active,
            boot_id: 1,
            version: String::new(),
            registered_at: UnixMillis(0),
            allocated: Default::default(),
            record: Default::default(),
            quarantine: None,
        }
    }

    fn run(
        ops: &[Completed],
        tasks: &[Task],
        workers: &[Worker],
        watches: &[WatchLog],
    ) -> Vec<&'static str> {
        check(&Observed {
            ops,
            tasks,
            workers,
            probe_violations: &[],
            watches,
            archived: &BTreeSet::new(),
        })
        .into_iter()
        .map(|v| match v.check {
            std::borrow::Cow::Borrowed(c) => c,
            std::borrow::Cow::Owned(_) => "owned",
        })
        .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = [
            op(0, 10, Kind::Ok, submit("a", 1, &[1])),
            op(5, 9, Kind::Unknown, submit("b", 2, &[])),
            op(
                20,
                30,
                Kind::Ok,
                Op::Read {
                    task: TaskId(1),
                    state: Some(TaskState::Succeeded),
                },
            ),
        ];
        let tasks = [
            task(1, "a", TaskState::Succeeded, &[(7, 11, Some(20))]),
            task(2, "b", TaskState::Succeeded, &[(7, 21, Some(40))]),
            task(
                3,
                "b",
                TaskState::Succeeded,
                &[(8, 0, Some(5)), (7, 5, Some(9))],
            ),
        ];
        let watches = vec![vec![(TaskId(1), 1), (TaskId(2), 2), (TaskId(3), 3)]];
        let v = run(&ops, &tasks, &[worker(7, 2000), worker(8, 1000)], &watches);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn each_broken_promise_is_named() {
        // Acknowledged but missing; refused but present; a phantom; half a submit.
        let ops = [
            op(0, 10, Kind::Ok, submit("a", 1, &[1])),
            op(0, 10, Kind::Fail, submit("b", 1, &[])),
            op(0, 10, Kind::Unknown, submit("c", 2, &[])),
        ];
        let tasks = [
            task(2, "b", TaskState::Succeeded, &[]),
            task(3, "zzz", TaskState::Succeeded, &[]),
            task(4, "c", TaskState::Succeeded, &[]),
        ];
        let v = run(&ops, &tasks, &[], &[]);
        for c in [
            "acknowledged submit",
            "refused submit",
            "phantom task",
            "submit is all or nothing",
        ] {
            assert!(v.contains(&c), "{c} missing from {v:?}");
        }
    }

    #[test]
    fn stale_reads_overlaps_and_over_commit_are_found() {
        let ops = [
            op(0, 10, Kind::Ok, submit("a", 2, &[1, 2])),
            // Not found after the submit was acknowledged.
            op(
                11,
                12,
                Kind::Ok,
                Op::Read {
                    task: TaskId(1),
                    state: None,
                },
            ),
            // Finished, then read as running.
            op(
                20,
                21,
                Kind::Ok,
                Op::Read {
                    task: TaskId(2),
                    state: Some(TaskState::Failed),
                },
            ),
            op(
                22,
                23,
                Kind::Ok,
                Op::Read {
                    task: TaskId(2),
                    state: Some(TaskState::Running),
                },
            ),
        ];
        // Two attempts of task 1 at once; task 2 on the same one-core worker meanwhile.
        let tasks = [
            task(1, "a", TaskState::Running, &[(7, 0, None), (8, 5, None)]),
            task(2, "a", TaskState::Failed, &[(7, 1, Some(3))]),
        ];
        let watches = vec![vec![(TaskId(1), 1), (TaskId(1), 1)]];
        let v = run(&ops, &tasks, &[worker(7, 1000), worker(8, 1000)], &watches);
        for c in [
            "consistent read",
            "one attempt at a time",
            "no over-commit",
            "every task ends",
            "watch sees each change once",
            "watch sees every change",
        ] {
            assert!(v.contains(&c), "{c} missing from {v:?}");
        }
    }

    #[test]
    fn an_end_stamped_before_its_assignment_releases_what_it_held() {
        // Attempt 1 ended (its worker restarted) with a time proposed before its assignment
        // was applied; it must not hold its CPU and GPU for ever in the replay.
        let mut t = task(
            1,
            "a",
            TaskState::Succeeded,
            &[(7, 100, Some(90)), (7, 110, Some(200))],
        );
        let g = GpuGrant {
            index: 0,
            milli: 1000,
            memory: Default::default(),
            exclusive: true,
        };
        t.attempts[0].gpus = vec![g];
        t.attempts[1].gpus = vec![g];
        let u = task(2, "a", TaskState::Succeeded, &[(7, 300, Some(400))]);
        let ops = [op(0, 1, Kind::Ok, submit("a", 2, &[1, 2]))];
        let v = run(&ops, &[t, u], &[worker(7, 1000)], &[]);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn an_exclusive_gpu_granted_twice_is_found() {
        let mut a = task(1, "a", TaskState::Succeeded, &[(7, 0, Some(10))]);
        let mut b = task(2, "a", TaskState::Succeeded, &[(7, 5, Some(15))]);
        let g = GpuGrant {
            index: 0,
            milli: 1000,
            memory: Default::default(),
            exclusive: true,
        };
        a.attempts[0].gpus = vec![g];
        b.attempts[0].gpus = vec![g];
        a.spec.requirements.cpu = MilliCpu(1);
        b.spec.requirements.cpu = MilliCpu(1);
        let ops = [op(0, 1, Kind::Ok, submit("a", 2, &[1, 2]))];
        let v = run(&ops, &[a, b], &[worker(7, 1000)], &[]);
        assert_eq!(v, vec!["exclusive GPUs"]);
    }
}
