//! How good the queue ETAs are on a real trace: the trace replayed through the real ledger
//! and planner in simulated time (as `replay`), and at each arrival that has to queue, the
//! estimate the dashboard would show for it (`eta::estimate`, over the run times learned so
//! far) is compared with when it actually started. Pure: values in, report out.

use std::collections::{BTreeSet, HashMap};

use testmesh_consensus::{TaskId, UnixMillis};

use crate::eta::{self, Busy, Queued};
use crate::predictor::history::{self, Target, spec_features};
use crate::predictor::{PredictionPath, Predictor};
use crate::replay::{Sim, TraceNode, TracePod, percentile};
use crate::scheduler::{self, Options};

/// Finished pods between two trainings of the run-time model.
const RETRAIN_EVERY: usize = 250;
/// Run time assumed before anything is learned, in seconds.
const UNKNOWN_SECS: f64 = 60.0;

/// Where run times come from for the estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtimes {
    /// The predictor, trained on the pods finished so far (what the product does).
    Learned,
    /// The traced durations themselves: what is left is the error of the simulation.
    Oracle,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EtaReport {
    /// Queued arrivals whose estimate was checked.
    pub checked: usize,
    /// |predicted start − actual start|, seconds of the (compressed) trace clock.
    pub error_secs_p50: f64,
    pub error_secs_p90: f64,
    /// How long those pods actually waited, for scale.
    pub wait_secs_p50: f64,
    pub wait_secs_p90: f64,
    /// Share of estimates within a quarter of the actual wait (or 60 s, the larger).
    pub within_quarter: f64,
    pub trainings: usize,
}

/// Replays `pods` on `nodes`; the estimate of every pod that queues on arrival is checked.
pub fn replay_eta(
    nodes: &[TraceNode],
    pods: &[TracePod],
    opts: &Options,
    runtimes: Runtimes,
) -> EtaReport {
    let mut sim = Sim::with_nodes(nodes);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by_key(|i| pods[*i].arrival);
    let mut next_arrival = 0;
    let mut completions: BTreeSet<(u64, TaskId)> = BTreeSet::new();
    let mut pod_of: HashMap<TaskId, usize> = HashMap::new();
    let mut predicted: HashMap<TaskId, u64> = HashMap::new();
    let mut errors = Vec::new();
    let mut waits = Vec::new();
    let mut within = 0usize;
    let mut model: Option<Predictor> = None;
    let mut trained_at = 0usize;
    let mut finished = 0usize;
    let mut report = EtaReport::default();
    loop {
        let t = match (
            order.get(next_arrival).map(|i| pods[*i].arrival),
            completions.first().map(|(t, _)| *t),
        ) {
            (None, None) => break,
            (Some(a), Some(d)) => a.min(d),
            (Some(a), None) => a,
            (None, Some(d)) => d,
        };
        let at = UnixMillis(t);
        while let Some((d, task)) = completions.first().copied().filter(|(d, _)| *d == t) {
            completions.remove(&(d, task));
            sim.finish(task, at);
            finished += 1;
        }
        if runtimes == Runtimes::Learned && finished >= trained_at + RETRAIN_EVERY {
            let samples = history::samples(sim.ledger.history(), Target::DurationSecs);
            model = Predictor::train(&samples, &history::options()).ok();
            trained_at = finished;
            report.trainings += 1;
        }
        let mut arrived = Vec::new();
        while let Some(&i) = order.get(next_arrival).filter(|i| pods[**i].arrival == t) {
            next_arrival += 1;
            let caps = sim.ledger.workers().map(|w| (&w.capacity, &w.labels));
            if scheduler::could_ever_fit(caps, &pods[i].requirements).is_err() {
                continue;
            }
            if let Some(task) = sim.submit(i, &pods[i], at) {
                pod_of.insert(task, i);
                arrived.push(task);
            }
        }
        if sim.ledger.pending_count() == 0 {
            continue;
        }
        // What the planner round at `t` will not place must wait: estimate those arrivals.
        let placed = {
            let mut w = scheduler::workers_of(&sim.ledger);
            scheduler::place(&mut w, scheduler::pending_of(&sim.ledger), opts)
                .assignments
                .into_iter()
                .map(|a| a.task)
                .collect::<BTreeSet<_>>()
        };
        let queued: Vec<TaskId> = arrived
            .iter()
            .filter(|t| !placed.contains(t))
            .copied()
            .collect();
        if !queued.is_empty() {
            let secs_of = |task: TaskId| -> (f64, f64) {
                let pod = &pods[pod_of[&task]];
                match runtimes {
                    Runtimes::Oracle => (pod.duration as f64 / 1000.0, 1.0),
                    Runtimes::Learned => {
                        let spec = &sim
                            .ledger
                            .task(task)
                            .map(|x| x.spec.clone())
                            .unwrap_or_default();
                        match model.as_ref().map(|m| m.predict(&spec_features(spec))) {
                            Some(p) if p.path != PredictionPath::Requested => {
                                (p.value, p.confidence)
                            }
                            _ => (UNKNOWN_SECS, 0.0),
                        }
                    }
                }
            };
            let running: Vec<Busy> = sim
                .ledger
                .reservations()
                .map(|r| {
                    let started = sim
                        .ledger
                        .task(r.task)
                        .and_then(|x| x.attempts.last())
                        .and_then(|a| a.started_at)
                        .map_or(r.since.0, |s| s.0);
                    let (secs, confidence) = secs_of(r.task);
                    Busy {
                        worker: r.worker,
                        requirements: &r.requirements,
                        gpus: &r.gpus,
                        ends_at_ms: match runtimes {
                            Runtimes::Oracle => (started + (secs * 1000.0) as u64).max(t),
                            Runtimes::Learned => eta::expected_end(started, secs, t),
                        },
                        confidence,
                    }
                })
                .collect();
            let queue: Vec<Queued> = scheduler::pending_of(&sim.ledger)
                .take(crate::eta::MAX_EVENTS / 10)
                .map(|mut v| {
                    let (secs, confidence) = secs_of(v.id);
                    v.predicted_secs = Some(secs);
                    Queued {
                        view: v,
                        secs,
                        confidence,
                    }
                })
                .collect();
            let est = eta::estimate(
                scheduler::workers_of(&sim.ledger),
                &running,
                &queue,
                t,
                opts,
            );
            for e in est.iter().filter(|e| queued.contains(&e.task)) {
                predicted.insert(e.task, e.start_ms);
            }
        }
        for (task, _) in sim.place(opts, at) {
            let pod = &pods[pod_of[&task]];
            completions.insert((t + pod.duration.max(1), task));
            if let Some(p) = predicted.remove(&task) {
                let wait = t - pod.arrival;
                let err = p.abs_diff(t);
                if (err as f64) <= (wait as f64 / 4.0).max(60_000.0) {
                    within += 1;
                }
                errors.push(err);
                waits.push(wait);
            }
        }
    }
    errors.sort_unstable();
    waits.sort_unstable();
    report.checked = errors.len();
    report.error_secs_p50 = percentile(&errors, 0.5);
    report.error_secs_p90 = percentile(&errors, 0.9);
    report.wait_secs_p50 = percentile(&waits, 0.5);
    report.wait_secs_p90 = percentile(&waits, 0.9);
    report.within_quarter = if errors.is_empty() {
        0.0
    } else {
        within as f64 / errors.len() as f64
    };
    report
}

#[cfg(test)]
mod tests {
    use testmesh_consensus::model::Capacity;
    use testmesh_consensus::resources::Requirements;
    use testmesh_consensus::{Bytes, MilliCpu};

    use super::*;

    #[test]
    fn with_true_run_times_a_one_worker_queue_is_estimated_exactly() {
        let nodes = [TraceNode {
            name: "n".into(),
            capacity: Capacity {
                cpu: MilliCpu(1000),
                memory: Bytes(1 << 30),
                ..Default::default()
            },
        }];
        let pods: Vec<TracePod> = (0..20)
            .map(|i| TracePod {
                name: format!("p{i}"),
                requirements: Requirements {
                    cpu: MilliCpu(1000),
                    ..Default::default()
                },
                arrival: i * 1000,
                duration: 5_000 + (i % 3) * 1000,
            })
            .collect();
        let r = replay_eta(&nodes, &pods, &Options::default(), Runtimes::Oracle);
        assert!(r.checked >= 15, "{r:?}");
        assert_eq!((r.error_secs_p50, r.error_secs_p90), (0.0, 0.0), "{r:?}");
        let learned = replay_eta(&nodes, &pods, &Options::default(), Runtimes::Learned);
        assert_eq!(learned.checked, r.checked);
    }
}
