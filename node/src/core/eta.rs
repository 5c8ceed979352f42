//! Queue positions and estimated start and finish times for the pending tasks, from this
//! replica and the learned run times (`planner::eta` does the simulation).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use testmesh_consensus::TaskId;
use testmesh_consensus::ledger::Ledger;
use testmesh_planner::eta::{self, Busy, Queued};
use testmesh_planner::predictor::PredictionPath;
use testmesh_planner::predictor::history::spec_features;
use testmesh_planner::{self as planner, Options};

use super::models::ModelSet;

/// Pending tasks estimated at most (the head of the queue).
pub const MAX_QUEUE: usize = 2_000;
/// Run time assumed when nothing has been learned (bounded by the task's timeout).
const UNKNOWN_SECS: f64 = 60.0;

/// How the control loop places: the estimate replays the same policy.
pub fn scheduling_options() -> Options {
    Options {
        // Shortest predicted run time first within groups of 64 queue positions.
        shortest_first_group: 64,
        ..Default::default()
    }
}

/// One pending task's estimate, as the API and the CLI show it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EtaView {
    /// 1-based place in the queue.
    pub position: usize,
    pub start_ms: u64,
    pub finish_ms: u64,
    /// 0 (guesses) to 1 (well-learned run times of everything ahead).
    pub confidence: f64,
}

/// Estimates for the head of the queue, keyed by task.
pub fn etas(ledger: &Ledger, models: Option<&ModelSet>, now_ms: u64) -> HashMap<TaskId, EtaView> {
    let predict = |spec: &testmesh_consensus::task::TaskSpec| {
        let fallback = spec
            .timeout_ms
            .map_or(UNKNOWN_SECS, |t| (t as f64 / 1000.0).min(UNKNOWN_SECS));
        match models.map(|m| m.duration.predict(&spec_features(spec))) {
            Some(p) if p.path != PredictionPath::Requested => (p.value, p.confidence, true),
            _ => (fallback, 0.0, false),
        }
    };
    let running: Vec<Busy> = ledger
        .reservations()
        .filter_map(|r| {
            let t = ledger.task(r.task)?;
            let (secs, confidence, _) = predict(&t.spec);
            let started = t
                .attempts
                .last()
                .and_then(|a| a.started_at.or(Some(a.assigned_at)))
                .map_or(r.since.0, |s| s.0);
            Some(Busy {
                worker: r.worker,
                requirements: &r.requirements,
                gpus: &r.gpus,
                ends_at_ms: eta::expected_end(started, secs, now_ms),
                confidence,
            })
        })
        .collect();
    let queue: Vec<Queued> = planner::pending_of(ledger)
        .take(MAX_QUEUE)
        .filter_map(|mut v| {
            let t = ledger.task(v.id)?;
            let (secs, confidence, known) = predict(&t.spec);
            v.predicted_secs = known.then_some(secs);
            Some(Queued {
                view: v,
                secs,
                confidence,
            })
        })
        .collect();
    eta::estimate(
        planner::workers_of(ledger),
        &running,
        &queue,
        now_ms,
        &scheduling_options(),
    )
    .into_iter()
    .map(|e| {
        (
            e.task,
            EtaView {
                position: e.position,
                start_ms: e.start_ms,
                finish_ms: e.finish_ms,
                confidence: e.confidence,
            },
        )
    })
    .collect()
}
