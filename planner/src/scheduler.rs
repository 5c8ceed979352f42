//! Priority-ordered best-fit placement with backfill; see README.md.

use std::collections::{BTreeMap, HashMap};

use testmesh_consensus::NodeId;
use testmesh_consensus::command::Assignment;
use testmesh_consensus::model::Capacity;
use testmesh_consensus::resources::{self, Allocated, GpuRequest, Requirements, Shortfall};

pub use crate::view::{
    ClusterView, PendingView, Plan, WorkerView, occupy_busy_gpus, pending_of, workers_of,
};

#[derive(Debug, Clone)]
pub struct Options {
    /// Stop scanning after this many feasible workers and take the best of them.
    pub feasible_to_score: usize,
    pub policy: Policy,
    /// Within each group of this many consecutive queue positions (same priority), place the
    /// tasks predicted shortest first; 0 keeps queue order. Bounded so that nobody starves: a
    /// task is never passed by more than a group's worth of later arrivals.
    pub shortest_first_group: usize,
}

/// Reorders a queue shortest-predicted-first within consecutive groups of `group` tasks of
/// equal priority, lazily (one group at a time). Tasks without a prediction keep their place
/// relative to each other and go after the predicted ones of their group.
pub fn shortest_first<'a>(
    queue: impl Iterator<Item = PendingView<'a>>,
    group: usize,
) -> impl Iterator<Item = PendingView<'a>> {
    let mut queue = queue.peekable();
    let group = group.max(1);
    std::iter::from_fn(move || {
        let first = queue.next()?;
        let mut chunk = vec![first];
        while chunk.len() < group {
            match queue.next_if(|t| t.priority == first.priority) {
                Some(t) => chunk.push(t),
                None => break,
            }
        }
        // Stable: equal (or missing) predictions keep queue order.
        chunk.sort_by(|a, b| {
            a.predicted_secs
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.predicted_secs.unwrap_or(f64::INFINITY))
        });
        Some(chunk)
    })
    .flatten()
}

/// How a worker is chosen among those that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The best-scoring of up to `feasible_to_score` fitting workers, scanning from where the
    /// last placement left off (the default).
    #[default]
    Fitness,
    /// The first fitting worker in registration order (the classic baseline).
    FirstFit,
    /// A window of the queue at once, largest first within each priority, each task to the
    /// worker its demand aligns with best (`planner::optimizer`).
    Batch,
}

/// Most pending tasks the batch policy looks at in one round.
pub const BATCH_WINDOW: usize = 2_000;

/// One planning round under `opts.policy`.
pub fn place<'a>(
    workers: &mut [WorkerView<'_>],
    pending: impl IntoIterator<Item = PendingView<'a>>,
    opts: &Options,
) -> Plan {
    match (opts.policy, opts.shortest_first_group) {
        (Policy::Batch, _) => super::optimizer::schedule_batch(
            workers,
            pending.into_iter().take(BATCH_WINDOW).collect(),
        ),
        (_, 0) => schedule_from(workers, pending, opts),
        (_, g) => schedule_from(workers, shortest_first(pending.into_iter(), g), opts),
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            feasible_to_score: 32,
            policy: Policy::Fitness,
            shortest_first_group: 0,
        }
    }
}

/// Score lost per unit of unreliability: a worker failing half its attempts loses about as
/// much as one whose GPUs a CPU task would leave idle.
const RELIABILITY_WEIGHT: f64 = 2.0;

/// Higher is better: how snugly the task fills what is free, minus a penalty for taking a host
/// whose GPUs it leaves idle.
fn score(req: &Requirements, cap: &Capacity, alloc: &Allocated) -> f64 {
    let frac = |need: u64, total: u64, used: u64| {
        let free = total.saturating_sub(used);
        if need == 0 || free == 0 {
            0.0
        } else {
            need as f64 / free as f64
        }
    };
    let mut s =
        frac(req.cpu.0, cap.cpu.0, alloc.cpu.0) + frac(req.memory.0, cap.memory.0, alloc.memory.0);
    let free_gpus = cap.gpus.len().saturating_sub(alloc.gpus.len());
    match req.gpu {
        GpuRequest::None if free_gpus > 0 => s -= 1.0 + free_gpus as f64 / 8.0,
        GpuRequest::Whole { count } if free_gpus > 0 => s += count as f64 / free_gpus as f64,
        _ => {}
    }
    s
}

fn describe(shortfalls: &[(NodeId, Shortfall)], workers: usize) -> String {
    if workers == 0 {
        return "no active worker: start a node or undrain one".to_string();
    }
    let mut kinds: Vec<String> = Vec::new();
    for (w, s) in shortfalls {
        let k = format!("{s} on {w}");
        if kinds.len() < 2
            && !kinds
                .iter()
                .any(|x| x.split(" on ").next() == k.split(" on ").next())
        {
            kinds.push(k);
        }
    }
    format!(
        "waiting: fits none of {workers} active worker(s) now ({})",
        kinds.join("; ")
    )
}

/// Places pending tasks in priority order; see the module README for the properties.
pub fn schedule(view: &mut ClusterView<'_>, opts: &Options) -> Plan {
    let pending = std::mem::take(&mut view.pending);
    let plan = schedule_from(&mut view.workers, pending.iter().copied(), opts);
    view.pending = pending;
    plan
}

/// [`schedule`] over a lazy queue: it stops reading the queue once no worker has cpu left
/// (every task holds some cpu), so a long queue in front of a full cluster costs nothing.
/// `Plan::waiting` lists the tasks it examined and could not place.
pub fn schedule_from<'a>(
    workers: &mut [WorkerView<'_>],
    pending: impl IntoIterator<Item = PendingView<'a>>,
    opts: &Options,
) -> Plan {
    let mut plan = Plan::default();
    let mut failed: HashMap<&Requirements, String> = HashMap::new();
    let n = workers.len();
    let has_cpu = |w: &WorkerView<'_>| w.allocated.cpu < w.capacity.cpu;
    let mut open = workers.iter().filter(|w| has_cpu(w)).count();
    let mut cursor = 0usize;
    let first_fit = opts.policy == Policy::FirstFit;
    let enough = if first_fit { 1 } else { opts.feasible_to_score };
    for task in pending {
        if open == 0 {
            break;
        }
        let req = task.requirements;
        if let Some(reason) = failed.get(req) {
            plan.waiting.push((task.id, reason.clone()));
            continue;
        }
        let mut best: Option<(usize, f64, Vec<_>)> = None;
        let mut feasible = 0;
        let mut shortfalls = Vec::new();
        let start = if first_fit { 0 } else { cursor };
        // Skip the worker the last attempt failed on if some other one could ever hold it.
        let avoid = task.avoid.filter(|bad| {
            workers.iter().any(|w| {
                w.id != *bad
                    && resources::fit(w.capacity, &Allocated::default(), w.labels, req).is_ok()
            })
        });
        for k in 0..n {
            let i = (start + k) % n;
            let w = &workers[i];
            if Some(w.id) == avoid {
                continue;
            }
            match resources::fit(w.capacity, &w.allocated, w.labels, req) {
                Ok(grants) => {
                    // A worker that fails what it runs is less fit, whatever the packing.
                    let s = score(req, w.capacity, &w.allocated)
                        - RELIABILITY_WEIGHT * (1.0 - w.reliability);
                    if best.as_ref().is_none_or(|(_, b, _)| s > *b) {
                        best = Some((i, s, grants));
                    }
                    feasible += 1;
                    if feasible >= enough {
                        break;
                    }
                }
                Err(s) => {
                    if shortfalls.len() < 8 {
                        shortfalls.push((w.id, s));
                    }
                }
            }
        }
        match best {
            Some((i, _, gpus)) => {
                let w = &mut workers[i];
                w.allocated.add(req, &gpus);
                if !has_cpu(w) {
                    open -= 1;
                }
                plan.assignments.push(Assignment {
                    task: task.id,
                    attempt: task.next_attempt,
                    worker: w.id,
                    gpus,
                });
                cursor = (i + 1) % n;
            }
            None => {
                let reason = describe(&shortfalls, n);
                plan.waiting.push((task.id, reason.clone()));
                failed.insert(req, reason);
            }
        }
    }
    plan
}

/// Why a pending task with `req` is still pending, given the workers as they are now.
pub fn why_pending(view: &ClusterView<'_>, req: &Requirements) -> String {
    let mut fits = 0;
    let mut shortfalls = Vec::new();
    for w in &view.workers {
        match resources::fit(w.capacity, &w.allocated, w.labels, req) {
            Ok(_) => fits += 1,
            Err(s) => shortfalls.push((w.id, s)),
        }
    }
    if fits > 0 {
        format!(
            "queued: fits {fits} worker(s) now; waits for the next round or for higher-priority tasks"
        )
    } else {
        describe(&shortfalls, view.workers.len())
    }
}

/// Whether `req` could run on some worker if it were empty; `Err` says why not, in words.
pub fn could_ever_fit<'a>(
    workers: impl Iterator<Item = (&'a Capacity, &'a BTreeMap<String, String>)>,
    req: &Requirements,
) -> Result<(), String> {
    let mut seen = 0;
    let mut why = None;
    for (cap, labels) in workers {
        seen += 1;
        match resources::fit(cap, &Allocated::default(), labels, req) {
            Ok(_) => return Ok(()),
            Err(s) => {
                why.get_or_insert(s);
            }
        }
    }
    match why {
        None if seen == 0 => Ok(()), // nobody registered yet: wait for workers
        Some(s) => Err(format!(
            "no worker can ever run this task ({s} even when idle, checked {seen} worker(s)); lower the request, add a worker that has it, or queue it anyway with --allow-unschedulable (API: allow_unschedulable)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
