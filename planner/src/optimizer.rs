//! Batch placement: many pending tasks at once, packed by multi-resource alignment in the
//! spirit of Tetris (Grandl et al., SIGCOMM 2014) instead of one by one in queue order.
//!
//! Within each priority level, the window of pending tasks is taken largest first (by dominant
//! share of the cluster's total capacity) within consecutive groups of 64 queue positions (so
//! that reordering cannot starve anyone), and each goes to the fitting worker whose free
//! resources best align with its demand: the sum over cpu, memory and GPU of
//! `demand/capacity × free/capacity` on that worker, with a small best-fit tie-break toward
//! fuller workers. Priorities are never inverted: a lower priority level is only looked at after
//! every task of the higher ones has been placed or found not to fit now.

use std::collections::HashMap;

use testmesh_consensus::command::Assignment;
use testmesh_consensus::model::Capacity;
use testmesh_consensus::resources::{self, Allocated, GpuRequest, Requirements, WHOLE_GPU_MILLI};

use crate::view::{PendingView, Plan, WorkerView};

/// Queue positions within which tasks are reordered largest first.
const REORDER_GROUP: usize = 64;

/// GPU milli a request reserves in total.
fn gpu_milli(req: &Requirements) -> f64 {
    match req.gpu {
        GpuRequest::None => 0.0,
        GpuRequest::Whole { count } => (count * WHOLE_GPU_MILLI) as f64,
        GpuRequest::Shared { milli, .. } => milli as f64,
    }
}

fn free_gpu_milli(cap: &Capacity, alloc: &Allocated) -> f64 {
    let total = cap.gpus.len() as f64 * WHOLE_GPU_MILLI as f64;
    let used: f64 = alloc.gpus.values().map(|u| u.milli as f64).sum();
    (total - used).max(0.0)
}

/// Tetris alignment of a task's demand with a worker's free resources (higher is better).
fn alignment(req: &Requirements, cap: &Capacity, alloc: &Allocated) -> f64 {
    let dim = |need: f64, total: f64, used: f64| {
        if total <= 0.0 {
            0.0
        } else {
            (need / total) * ((total - used).max(0.0) / total)
        }
    };
    let gpus = cap.gpus.len() as f64 * WHOLE_GPU_MILLI as f64;
    let a = dim(req.cpu.0 as f64, cap.cpu.0 as f64, alloc.cpu.0 as f64)
        + dim(
            req.memory.0 as f64,
            cap.memory.0 as f64,
            alloc.memory.0 as f64,
        )
        + dim(gpu_milli(req), gpus, gpus - free_gpu_milli(cap, alloc));
    // Tie-break toward fuller workers (best fit) so that equal alignments do not spread.
    let fullness = alloc.cpu.0 as f64 / (cap.cpu.0 as f64).max(1.0);
    // A CPU-only task on a worker with free GPUs strands them: keep it off if it can.
    let strands = matches!(req.gpu, GpuRequest::None) && free_gpu_milli(cap, alloc) > 0.0;
    a + 0.01 * fullness - if strands { 1.0 } else { 0.0 }
}

/// Places a window of pending tasks (in queue order, i.e. by priority) as a batch.
pub fn schedule_batch(workers: &mut [WorkerView<'_>], pending: Vec<PendingView<'_>>) -> Plan {
    let mut plan = Plan::default();
    let totals = workers.iter().fold((0.0, 0.0, 0.0), |(c, m, g), w| {
        (
            c + w.capacity.cpu.0 as f64,
            m + w.capacity.memory.0 as f64,
            g + w.capacity.gpus.len() as f64 * WHOLE_GPU_MILLI as f64,
        )
    });
    let dominant = |req: &Requirements| {
        let share = |x: f64, t: f64| if t > 0.0 { x / t } else { 0.0 };
        share(req.cpu.0 as f64, totals.0)
            .max(share(req.memory.0 as f64, totals.1))
            .max(share(gpu_milli(req), totals.2))
    };
    // Queue order is priority order; split it into runs of equal priority.
    let mut levels: Vec<Vec<PendingView<'_>>> = Vec::new();
    let mut last: Option<i32> = None;
    for t in pending {
        if last != Some(t.priority) {
            levels.push(Vec::new());
            last = Some(t.priority);
        }
        levels.last_mut().expect("just pushed").push(t);
    }
    let mut failed: HashMap<&Requirements, ()> = HashMap::new();
    for mut level in levels {
        // Largest first, but only within consecutive groups of the queue: a small task never
        // moves behind more than a group's worth of later arrivals, so nobody starves.
        let mut keyed: Vec<(usize, f64, PendingView<'_>)> = level
            .drain(..)
            .enumerate()
            .map(|(pos, t)| (pos / REORDER_GROUP, dominant(t.requirements), t))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let level: Vec<PendingView<'_>> = keyed.into_iter().map(|(_, _, t)| t).collect();
        for task in level {
            let req = task.requirements;
            if failed.contains_key(req) {
                plan.waiting
                    .push((task.id, "waiting: fits no worker now".into()));
                continue;
            }
            let mut best: Option<(usize, f64, Vec<_>)> = None;
            for (i, w) in workers.iter().enumerate() {
                if let Ok(grants) = resources::fit(w.capacity, &w.allocated, w.labels, req) {
                    let s = alignment(req, w.capacity, &w.allocated);
                    if best.as_ref().is_none_or(|(_, b, _)| s > *b) {
                        best = Some((i, s, grants));
                    }
                }
            }
            match best {
                Some((i, _, gpus)) => {
                    let w = &mut workers[i];
                    w.allocated.add(req, &gpus);
                    plan.assignments.push(Assignment {
                        task: task.id,
                        attempt: task.next_attempt,
                        worker: w.id,
                        gpus,
                    });
                }
                None => {
                    failed.insert(req, ());
                    plan.waiting
                        .push((task.id, "waiting: fits no worker now".into()));
                }
            }
        }
    }
    plan
}

/// Ids in the order they were placed (for tests).
#[cfg(test)]
fn placed(plan: &Plan) -> Vec<testmesh_consensus::TaskId> {
    plan.assignments.iter().map(|a| a.task).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use testmesh_consensus::model::GpuInfo;
    use testmesh_consensus::{Bytes, MilliCpu, NodeId, TaskId};

    use super::*;

    fn cap(cpu: u64, mem_gib: u64, gpus: u32) -> Capacity {
        Capacity {
            cpu: MilliCpu(cpu),
            memory: Bytes(mem_gib << 30),
            disk: Bytes(0),
            gpus: (0..gpus)
                .map(|index| GpuInfo {
                    index,
                    uuid: String::new(),
                    model: "T4".into(),
                    memory: Bytes(0),
                })
                .collect(),
        }
    }

    fn req(cpu: u64, mem_gib: u64, gpu: GpuRequest) -> Requirements {
        Requirements {
            cpu: MilliCpu(cpu),
            memory: Bytes(mem_gib << 30),
            gpu,
            ..Default::default()
        }
    }

    #[test]
    fn largest_first_within_a_priority_and_never_across_priorities() {
        let caps = [cap(4000, 16, 0)];
        let labels = BTreeMap::new();
        let mut workers: Vec<WorkerView<'_>> = caps
            .iter()
            .map(|c| WorkerView {
                id: NodeId(1),
                capacity: c,
                labels: &labels,
                allocated: Allocated::default(),
                reliability: 1.0,
            })
            .collect();
        let small = req(1000, 1, GpuRequest::None);
        let big = req(3000, 1, GpuRequest::None);
        let pending = vec![
            PendingView {
                id: TaskId(1),
                next_attempt: 1,
                requirements: &small,
                priority: 5,
                predicted_secs: None,
                avoid: None,
            },
            PendingView {
                id: TaskId(2),
                next_attempt: 1,
                requirements: &small,
                priority: 0,
                predicted_secs: None,
                avoid: None,
            },
            PendingView {
                id: TaskId(3),
                next_attempt: 1,
                requirements: &big,
                priority: 0,
                predicted_secs: None,
                avoid: None,
            },
        ];
        let plan = schedule_batch(&mut workers, pending);
        // Priority 5 first; then at priority 0 the big one before the small one.
        assert_eq!(placed(&plan), vec![TaskId(1), TaskId(3)]);
        assert_eq!(plan.waiting.len(), 1);
    }

    #[test]
    fn cpu_tasks_keep_off_free_gpus() {
        let caps = [cap(8000, 32, 2), cap(8000, 32, 0)];
        let labels = BTreeMap::new();
        let mut workers: Vec<WorkerView<'_>> = caps
            .iter()
            .enumerate()
            .map(|(i, c)| WorkerView {
                id: NodeId(i as u64 + 1),
                capacity: c,
                labels: &labels,
                allocated: Allocated::default(),
                reliability: 1.0,
            })
            .collect();
        let cpu = req(1000, 1, GpuRequest::None);
        let gpu = req(1000, 1, GpuRequest::Whole { count: 2 });
        let plan = schedule_batch(
            &mut workers,
            vec![
                PendingView {
                    id: TaskId(1),
                    next_attempt: 1,
                    requirements: &cpu,
                    priority: 0,
                    predicted_secs: None,
                    avoid: None,
                },
                PendingView {
                    id: TaskId(2),
                    next_attempt: 1,
                    requirements: &gpu,
                    priority: 0,
                    predicted_secs: None,
                    avoid: None,
                },
            ],
        );
        let on: BTreeMap<TaskId, NodeId> = plan
            .assignments
            .iter()
            .map(|a| (a.task, a.worker))
            .collect();
        assert_eq!(on[&TaskId(1)], NodeId(2));
        assert_eq!(on[&TaskId(2)], NodeId(1));
    }
}
