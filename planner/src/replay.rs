//! Trace replay: the real ledger and the real planner driven in simulated time by a workload
//! trace (discrete events: arrivals and completions). Pure: the trace comes in as values, the
//! report goes out; no clock, no I/O.
//!
//! At every event time the arrivals are submitted and the completions reported, then one
//! planner round runs and its assignments are applied through `Ledger::apply` exactly as the
//! leader would commit them. A pod runs for its traced duration from the moment it is placed.

use std::collections::{BTreeMap, BTreeSet};

use testmesh_consensus::command::{Assignment, WorkerRegistration};
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::{Capacity, Hardware};
use testmesh_consensus::resources::Requirements;
use testmesh_consensus::task::{Outcome, TaskSpec, TaskState};
use testmesh_consensus::{Applied, Command, NodeId, TaskId, UnixMillis};

use super::scheduler::{self, Options};

/// One pod of the trace. Times are milliseconds from the trace's start.
#[derive(Debug, Clone)]
pub struct TracePod {
    pub name: String,
    pub requirements: Requirements,
    pub arrival: u64,
    pub duration: u64,
}

#[derive(Debug, Clone)]
pub struct TraceNode {
    pub name: String,
    pub capacity: Capacity,
}

/// Utilisation as a fraction of capacity, averaged over the makespan.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Utilisation {
    pub cpu: f64,
    pub memory: f64,
    /// GPU shares reserved (1000 milli = one GPU) over all GPUs.
    pub gpu: f64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReplayReport {
    pub pods: usize,
    pub nodes: usize,
    pub placed: usize,
    /// Pods no node could run even when empty (refused at submit, as the API would).
    pub never_fit: usize,
    /// Pods still waiting when the last placed pod finished (nothing else could free room).
    pub never_placed: usize,
    pub makespan_secs: f64,
    pub wait_secs_p50: f64,
    pub wait_secs_p95: f64,
    pub wait_secs_p99: f64,
    pub wait_secs_mean: f64,
    /// Over the whole makespan (a few very long pods can stretch it far past the load).
    pub utilisation: Utilisation,
    /// Over the scheduling window: from the first arrival to the last placement, while the
    /// planner had work to do.
    pub utilisation_scheduling: Utilisation,
    pub planner_rounds: usize,
}

/// The `q` quantile of sorted milliseconds, in seconds.
pub(super) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// The simulated cluster: a ledger and the log index of its next command.
#[derive(Default)]
pub(super) struct Sim {
    pub ledger: Ledger,
    index: u64,
}

impl Sim {
    /// A cluster of `nodes`, registered as workers `1..=n` at time 0.
    pub fn with_nodes(nodes: &[TraceNode]) -> Sim {
        let mut sim = Sim::default();
        for (i, n) in nodes.iter().enumerate() {
            let reg = WorkerRegistration {
                id: NodeId(i as u64 + 1),
                hardware: Hardware {
                    hostname: n.name.clone(),
                    ..Default::default()
                },
                capacity: n.capacity.clone(),
                labels: BTreeMap::new(),
                boot_id: 1,
                version: String::new(),
            };
            let _ = sim.apply(Command::RegisterWorker {
                worker: reg,
                at: UnixMillis(0),
            });
        }
        sim
    }

    pub fn apply(&mut self, cmd: Command) -> Result<Applied, testmesh_consensus::Rejected> {
        self.index += 1;
        self.ledger.apply(self.index, &cmd)
    }

    /// A task's attempt succeeded at `at`.
    pub fn finish(&mut self, task: TaskId, at: UnixMillis) {
        let attempt = self.ledger.task(task).map_or(1, |x| x.attempt);
        let worker = self
            .ledger
            .task(task)
            .and_then(|x| x.current_attempt())
            .map_or(NodeId(0), |a| a.worker);
        let outcome = Outcome {
            exit_code: Some(0),
            ..Outcome::bare(TaskState::Succeeded)
        };
        let _ = self.apply(Command::TaskFinished {
            task,
            attempt,
            worker,
            outcome,
            at,
        });
    }

    /// Submits pod `i` (identified by its position: names in a trace need not be unique).
    pub fn submit(&mut self, i: usize, pod: &TracePod, at: UnixMillis) -> Option<TaskId> {
        let spec = TaskSpec {
            name: pod.name.clone(),
            argv: vec![pod.name.clone()],
            requirements: pod.requirements.clone(),
            ..Default::default()
        };
        match self.apply(Command::Submit {
            request_id: format!("replay-{i}"),
            tasks: vec![spec],
            at,
        }) {
            Ok(Applied::Submitted { tasks, .. }) => tasks.first().copied(),
            _ => None,
        }
    }

    /// One planner round: the assignments it commits, each started at once.
    pub fn place(&mut self, opts: &Options, at: UnixMillis) -> Vec<(TaskId, NodeId)> {
        let assignments: Vec<Assignment> = {
            let mut workers = scheduler::workers_of(&self.ledger);
            scheduler::place(&mut workers, scheduler::pending_of(&self.ledger), opts).assignments
        };
        if assignments.is_empty() {
            return Vec::new();
        }
        let placed: Vec<(TaskId, NodeId)> =
            assignments.iter().map(|a| (a.task, a.worker)).collect();
        let ok: Vec<bool> = match self.apply(Command::Assign { assignments, at }) {
            Ok(Applied::Assigned { results }) => results.iter().map(|r| r.is_ok()).collect(),
            _ => vec![false; placed.len()],
        };
        let placed: Vec<(TaskId, NodeId)> = placed
            .into_iter()
            .zip(ok)
            .filter_map(|(p, ok)| ok.then_some(p))
            .collect();
        for (task, worker) in &placed {
            let _ = self.apply(Command::TaskStarted {
                task: *task,
                attempt: 1,
                worker: *worker,
                pid: 1,
                at,
            });
        }
        placed
    }
}

/// Totals of what is reserved in the ledger right now: (cpu milli, memory bytes, gpu milli).
fn reserved(ledger: &Ledger) -> (f64, f64, f64) {
    ledger.workers().fold((0.0, 0.0, 0.0), |(c, m, g), w| {
        (
            c + w.allocated.cpu.0 as f64,
            m + w.allocated.memory.0 as f64,
            g + w
                .allocated
                .gpus
                .values()
                .map(|u| u.milli as f64)
                .sum::<f64>(),
        )
    })
}

/// Replays `pods` on `nodes` with the planner `opts`; see the module docs.
pub fn replay(nodes: &[TraceNode], pods: &[TracePod], opts: &Options) -> ReplayReport {
    let mut sim = Sim::with_nodes(nodes);
    let capacity = nodes.iter().fold((0.0, 0.0, 0.0), |(c, m, g), n| {
        (
            c + n.capacity.cpu.0 as f64,
            m + n.capacity.memory.0 as f64,
            g + n.capacity.gpus.len() as f64 * 1000.0,
        )
    });

    let mut report = ReplayReport {
        pods: pods.len(),
        nodes: nodes.len(),
        ..Default::default()
    };
    // Arrivals in time order; completions as (time, task).
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by_key(|i| pods[*i].arrival);
    let mut next_arrival = 0;
    let mut completions: BTreeSet<(u64, TaskId)> = BTreeSet::new();
    let mut pod_of: BTreeMap<TaskId, usize> = BTreeMap::new();
    let mut waits = Vec::new();
    let start = order.first().map_or(0, |i| pods[*i].arrival);
    let mut last_t = start;
    let mut end = start;
    let mut area = (0.0, 0.0, 0.0);
    // Cumulative reserved area after each event, for the scheduling-window figure.
    let mut history: Vec<(u64, (f64, f64, f64))> = Vec::new();
    let mut last_placed = start;

    loop {
        let t_arrival = order.get(next_arrival).map(|i| pods[*i].arrival);
        let t_done = completions.first().map(|(t, _)| *t);
        let t = match (t_arrival, t_done) {
            (None, None) => break,
            (Some(a), Some(d)) => a.min(d),
            (Some(a), None) => a,
            (None, Some(d)) => d,
        };
        // What was reserved since the last event, held until now.
        let (c, m, g) = reserved(&sim.ledger);
        let dt = (t - last_t) as f64;
        area = (area.0 + c * dt, area.1 + m * dt, area.2 + g * dt);
        history.push((t, area));
        last_t = t;
        let at = UnixMillis(t);

        while let Some((done_at, task)) = completions.first().copied().filter(|(d, _)| *d == t) {
            completions.remove(&(done_at, task));
            sim.finish(task, at);
            end = end.max(t);
        }
        while let Some(&i) = order.get(next_arrival).filter(|i| pods[**i].arrival == t) {
            next_arrival += 1;
            let pod = &pods[i];
            let caps = sim.ledger.workers().map(|w| (&w.capacity, &w.labels));
            if scheduler::could_ever_fit(caps, &pod.requirements).is_err() {
                report.never_fit += 1;
                continue;
            }
            if let Some(task) = sim.submit(i, pod, at) {
                pod_of.insert(task, i);
            }
        }

        if sim.ledger.pending_count() > 0 {
            report.planner_rounds += 1;
            for (task, _) in sim.place(opts, at) {
                let pod = &pods[pod_of[&task]];
                waits.push(t - pod.arrival);
                last_placed = t;
                completions.insert((t + pod.duration.max(1), task));
                report.placed += 1;
            }
        }
    }

    report.never_placed = sim.ledger.pending_count();
    waits.sort_unstable();
    let span = (end - start) as f64;
    report.makespan_secs = span / 1000.0;
    report.wait_secs_p50 = percentile(&waits, 0.5);
    report.wait_secs_p95 = percentile(&waits, 0.95);
    report.wait_secs_p99 = percentile(&waits, 0.99);
    report.wait_secs_mean = if waits.is_empty() {
        0.0
    } else {
        waits.iter().sum::<u64>() as f64 / waits.len() as f64 / 1000.0
    };
    let util = |area: (f64, f64, f64), span: f64| {
        let frac = |a: f64, cap: f64| {
            if cap > 0.0 && span > 0.0 {
                a / (cap * span)
            } else {
                0.0
            }
        };
        Utilisation {
            cpu: frac(area.0, capacity.0),
            memory: frac(area.1, capacity.1),
            gpu: frac(area.2, capacity.2),
        }
    };
    report.utilisation = util(area, span);
    let window = history
        .iter()
        .rev()
        .find(|(t, _)| *t <= last_placed)
        .map_or((0.0, 0.0, 0.0), |(_, a)| *a);
    report.utilisation_scheduling = util(window, (last_placed - start) as f64);
    report
}

#[cfg(test)]
mod tests {
    use testmesh_consensus::{Bytes, MilliCpu};

    use super::*;

    fn node(cpu: u64) -> TraceNode {
        TraceNode {
            name: format!("n{cpu}"),
            capacity: Capacity {
                cpu: MilliCpu(cpu),
                memory: Bytes(1 << 30),
                ..Default::default()
            },
        }
    }

    fn pod(cpu: u64, arrival: u64, duration: u64) -> TracePod {
        TracePod {
            name: format!("p{arrival}-{cpu}"),
            requirements: Requirements {
                cpu: MilliCpu(cpu),
                ..Default::default()
            },
            arrival,
            duration,
        }
    }

    #[test]
    fn queues_what_does_not_fit_and_accounts_waits_and_utilisation() {
        // One 2-core node; three 1-core pods of 10 s at t=0: two run, one waits 10 s.
        // A 4-core pod can never run.
        let nodes = [node(2000)];
        let pods = [
            pod(1000, 0, 10_000),
            pod(1000, 0, 10_000),
            pod(1000, 0, 10_000),
            pod(4000, 0, 10_000),
        ];
        let r = replay(&nodes, &pods, &Options::default());
        assert_eq!((r.placed, r.never_fit, r.never_placed), (3, 1, 0));
        assert_eq!(r.makespan_secs, 20.0);
        assert_eq!(r.wait_secs_p50, 0.0);
        assert_eq!(r.wait_secs_p99, 10.0);
        // 2 cores busy for 10 s, then 1 core for 10 s, out of 2 cores × 20 s.
        assert!((r.utilisation.cpu - 0.75).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn first_fit_and_fitness_both_place_everything_that_fits() {
        let nodes = [node(4000), node(8000)];
        let pods: Vec<TracePod> = (0..40)
            .map(|i| pod(500 + (i % 4) * 500, i * 100, 3_000))
            .collect();
        for policy in [scheduler::Policy::FirstFit, scheduler::Policy::Fitness] {
            let opts = Options {
                policy,
                ..Default::default()
            };
            let r = replay(&nodes, &pods, &opts);
            assert_eq!(r.placed, 40, "{policy:?}: {r:?}");
            assert!(r.utilisation.cpu > 0.0 && r.utilisation.cpu <= 1.0);
        }
    }
}
