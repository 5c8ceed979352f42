//! Queue positions and estimated start and finish times: the scheduler itself run forward in
//! time over the queue. Running tasks end at their predicted ends, each end frees what the
//! task held, and every pending task starts at the first such moment at which the real
//! placement (same policy, same order, same fit rules) would place it. Pure: the caller gives
//! the clock and the predictions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use testmesh_consensus::resources::{GpuGrant, Requirements};
use testmesh_consensus::{NodeId, TaskId};

use crate::scheduler::{Options, PendingView, WorkerView, place};

/// Events (task ends) simulated at most; beyond, the remaining tasks get no estimate.
pub const MAX_EVENTS: usize = 20_000;

/// A task running now, as far as the estimate cares.
#[derive(Debug, Clone)]
pub struct Busy<'a> {
    pub worker: NodeId,
    pub requirements: &'a Requirements,
    pub gpus: &'a [GpuGrant],
    /// Predicted end (the caller takes now for one already past its prediction).
    pub ends_at_ms: u64,
    /// The predictor's confidence in that end (0 when it is a guess).
    pub confidence: f64,
}

/// A pending task with its predicted run time.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    pub view: PendingView<'a>,
    /// Predicted run time; the caller's fallback when nothing is known.
    pub secs: f64,
    pub confidence: f64,
}

/// When a pending task is expected to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eta {
    pub task: TaskId,
    /// 1-based place in the queue as given.
    pub position: usize,
    pub start_ms: u64,
    pub finish_ms: u64,
    /// Mean confidence of the predictions the estimate rests on: this task's and those of
    /// every task that runs before it starts.
    pub confidence: f64,
}

struct Release<'a> {
    worker: NodeId,
    requirements: &'a Requirements,
    gpus: Vec<GpuGrant>,
}

/// Estimates for the queue (in queue order); a task that never fits the workers (or lies
/// beyond [`MAX_EVENTS`]) gets none.
pub fn estimate<'a>(
    mut workers: Vec<WorkerView<'a>>,
    running: &[Busy<'a>],
    queue: &[Queued<'a>],
    now_ms: u64,
    opts: &Options,
) -> Vec<Eta> {
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut releases: Vec<Release<'a>> = Vec::new();
    let (mut conf_sum, mut conf_n) = (0.0, 0usize);
    for r in running {
        ends.push(Reverse((r.ends_at_ms.max(now_ms), releases.len())));
        releases.push(Release {
            worker: r.worker,
            requirements: r.requirements,
            gpus: r.gpus.to_vec(),
        });
        conf_sum += r.confidence;
        conf_n += 1;
    }
    let index: HashMap<TaskId, usize> = queue
        .iter()
        .enumerate()
        .map(|(i, q)| (q.view.id, i))
        .collect();
    let mut left: Vec<usize> = (0..queue.len()).collect();
    let mut out: Vec<Option<Eta>> = vec![None; queue.len()];
    let mut t = now_ms;
    let mut events = 0;
    // No reordering by predicted length here: `opts` decides, as in the real rounds.
    while !left.is_empty() {
        let plan = place(&mut workers, left.iter().map(|&i| queue[i].view), opts);
        let mut placed = Vec::new();
        for a in plan.assignments {
            let Some(&i) = index.get(&a.task) else {
                continue;
            };
            let q = &queue[i];
            let finish = t + (q.secs.max(0.0) * 1000.0) as u64;
            out[i] = Some(Eta {
                task: q.view.id,
                position: i + 1,
                start_ms: t,
                finish_ms: finish,
                confidence: (conf_sum + q.confidence) / (conf_n + 1) as f64,
            });
            placed.push(i);
            ends.push(Reverse((finish, releases.len())));
            releases.push(Release {
                worker: a.worker,
                requirements: q.view.requirements,
                gpus: a.gpus,
            });
        }
        // Confidences count from the round after: tasks starting together do not wait on
        // each other.
        for &i in &placed {
            conf_sum += queue[i].confidence;
            conf_n += 1;
        }
        left.retain(|i| out[*i].is_none());
        if left.is_empty() {
            break;
        }
        // Jump to the next end, and free everything that ends then.
        let Some(Reverse((at, k))) = ends.pop() else {
            break; // nothing runs and nothing fits: the rest never start
        };
        events += 1;
        if events > MAX_EVENTS {
            break;
        }
        t = t.max(at);
        free(&mut workers, &releases[k]);
        while let Some(Reverse((next, k))) = ends.peek().copied() {
            if next > t {
                break;
            }
            ends.pop();
            free(&mut workers, &releases[k]);
        }
    }
    out.into_iter().flatten().collect()
}

fn free(workers: &mut [WorkerView<'_>], r: &Release<'_>) {
    if let Some(w) = workers.iter_mut().find(|w| w.id == r.worker) {
        w.allocated.remove(r.requirements, &r.gpus);
    }
}

/// When a task that started at `started_ms` should end, given its predicted run time. One
/// already past its prediction is expected to run about as long again as it has so far (run
/// times are heavy-tailed: the longer a task has run, the longer it tends to go on), not to
/// end this instant.
pub fn expected_end(started_ms: u64, predicted_secs: f64, now_ms: u64) -> u64 {
    let end = started_ms + (predicted_secs.max(0.0) * 1000.0) as u64;
    if end > now_ms {
        end
    } else {
        now_ms + now_ms.saturating_sub(started_ms).max(1000)
    }
}

/// Median and 90th percentile of |predicted − actual| start times, in seconds.
pub fn error_percentiles(errors_secs: &mut [f64]) -> Option<(f64, f64)> {
    if errors_secs.is_empty() {
        return None;
    }
    errors_secs.sort_by(f64::total_cmp);
    let at = |q: f64| errors_secs[((errors_secs.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use testmesh_consensus::model::Capacity;
    use testmesh_consensus::resources::Allocated;
    use testmesh_consensus::{Bytes, MilliCpu};

    fn req(cpu: u64) -> Requirements {
        Requirements {
            cpu: MilliCpu(cpu),
            memory: Bytes(1 << 20),
            ..Default::default()
        }
    }

    fn pending(id: u64, r: &Requirements) -> PendingView<'_> {
        PendingView {
            id: TaskId(id),
            next_attempt: 1,
            requirements: r,
            priority: 0,
            predicted_secs: None,
            avoid: None,
        }
    }

    #[test]
    fn each_task_starts_when_the_one_ahead_frees_its_place() {
        let cap = Capacity {
            cpu: MilliCpu(2000),
            memory: Bytes(1 << 30),
            ..Default::default()
        };
        let labels = BTreeMap::new();
        let one = req(1000);
        let mut alloc = Allocated::default();
        alloc.add(&one, &[]);
        alloc.add(&one, &[]);
        let workers = vec![WorkerView {
            id: NodeId(1),
            capacity: &cap,
            labels: &labels,
            allocated: alloc,
            reliability: 1.0,
        }];
        // Two running tasks end at +10 s and +20 s; three queued tasks of 30 s each.
        let running = [
            Busy {
                worker: NodeId(1),
                requirements: &one,
                gpus: &[],
                ends_at_ms: 10_000,
                confidence: 1.0,
            },
            Busy {
                worker: NodeId(1),
                requirements: &one,
                gpus: &[],
                ends_at_ms: 20_000,
                confidence: 1.0,
            },
        ];
        let queue: Vec<Queued> = (1..=3)
            .map(|i| Queued {
                view: pending(i, &one),
                secs: 30.0,
                confidence: 0.5,
            })
            .collect();
        let e = estimate(workers, &running, &queue, 0, &Options::default());
        let starts: Vec<(usize, u64, u64)> = e
            .iter()
            .map(|e| (e.position, e.start_ms, e.finish_ms))
            .collect();
        assert_eq!(
            starts,
            vec![
                (1, 10_000, 40_000),
                (2, 20_000, 50_000),
                (3, 40_000, 70_000)
            ]
        );
        // Later estimates rest on more guesses.
        assert!(e[0].confidence > e[2].confidence, "{e:?}");
        // Every pending start is at or after the running tasks' predicted ends' earliest.
        assert!(e.iter().all(|e| e.start_ms >= 10_000));
    }

    #[test]
    fn a_task_that_never_fits_gets_no_estimate_and_does_not_block_the_rest() {
        let cap = Capacity {
            cpu: MilliCpu(1000),
            memory: Bytes(1 << 30),
            ..Default::default()
        };
        let labels = BTreeMap::new();
        let (small, huge) = (req(500), req(64_000));
        let workers = vec![WorkerView {
            id: NodeId(1),
            capacity: &cap,
            labels: &labels,
            allocated: Allocated::default(),
            reliability: 1.0,
        }];
        let queue = [
            Queued {
                view: pending(1, &huge),
                secs: 5.0,
                confidence: 1.0,
            },
            Queued {
                view: pending(2, &small),
                secs: 5.0,
                confidence: 1.0,
            },
        ];
        let e = estimate(workers, &[], &queue, 1_000, &Options::default());
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].task, e[0].position, e[0].start_ms),
            (TaskId(2), 2, 1_000)
        );
    }

    #[test]
    fn a_task_past_its_prediction_is_expected_to_run_as_long_again() {
        assert_eq!(expected_end(1_000, 5.0, 2_000), 6_000);
        assert_eq!(expected_end(0, 5.0, 20_000), 40_000);
        assert_eq!(expected_end(0, 0.0, 0), 1_000);
    }

    #[test]
    fn percentiles_of_errors() {
        assert_eq!(error_percentiles(&mut []), None);
        let mut v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(error_percentiles(&mut v), Some((6.0, 9.0)));
    }
}
