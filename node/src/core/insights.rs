//! Insights over this replica and the gossiped statistics (`planner::insights`): copies what
//! the analysis needs and runs it off the async runtime. The API and the dashboard share it.

use std::sync::Arc;

use testmesh_consensus::UnixMillis;
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::resources::Requirements;
use testmesh_planner::insights::{self, Demand, Insights, LiveUse, Observations, WorkerUse};
use testmesh_planner::predictor::PredictionPath;
use testmesh_planner::predictor::history::spec_features;
use thiserror::Error;

use super::Core;
use super::models::ModelSet;

/// Queued tasks the recommendations look at (the head of the queue); bounds the work per call.
pub const MAX_QUEUED: usize = 5_000;

/// The analysis could not finish (its blocking task stopped).
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct InsightsError(pub String);

/// The analysis of the last `window_ms`, with the trained models it used (if any could be
/// trained) and the history count they saw.
pub async fn compute(
    core: &Core,
    window_ms: u64,
) -> Result<(Insights, Option<Arc<ModelSet>>, usize), InsightsError> {
    let now = core.now();
    let start = UnixMillis(now.0.saturating_sub(window_ms));
    let models = core.models.fresh().await.ok();
    let seen = models.as_ref().map_or(0, |m| m.samples);
    let latest = core.stats.latest_all().await;

    // Copy what is needed and let go of the replica before analysing.
    let (history, submitted, queued, workers) = {
        let l = core.ledger.read();
        let history: Vec<HistoryRecord> = l
            .history()
            .filter(|r| r.finished_at >= start)
            .cloned()
            .collect();
        // Task ids grow with submission time: walk back from the newest.
        let submitted: Vec<(UnixMillis, Requirements)> = l
            .tasks()
            .rev()
            .take_while(|t| t.submitted_at >= start)
            .map(|t| (t.submitted_at, t.spec.requirements.clone()))
            .collect();
        let queued: Vec<Demand> = l
            .pending()
            .take(MAX_QUEUED)
            .map(|t| Demand {
                name: t.spec.name.clone(),
                requirements: t.spec.requirements.clone(),
                predicted_secs: models.as_ref().and_then(|m| {
                    let p = m.duration.predict(&spec_features(&t.spec));
                    (p.path != PredictionPath::Requested).then_some(p.value)
                }),
            })
            .collect();
        let workers: Vec<WorkerUse> = l
            .workers()
            .map(|w| WorkerUse {
                id: w.id,
                hostname: w.hardware.hostname.clone(),
                state: w.state,
                capacity: w.capacity.clone(),
                allocated: w.allocated.clone(),
                live: latest.get(&w.id).map(|p| LiveUse {
                    cpu_cores: p.sample.cpu_percent as f64 / 100.0
                        * (w.capacity.cpu.0 as f64 / 1000.0),
                    memory: p.sample.memory_used,
                    gpu_utilisation: p
                        .sample
                        .gpus
                        .iter()
                        .map(|g| (g.index, g.utilization_percent))
                        .collect(),
                }),
            })
            .collect();
        (history, submitted, queued, workers)
    };
    let catalogue = core.catalogue.clone();
    let out = tokio::task::spawn_blocking(move || {
        let snapshot = Observations {
            now,
            window_ms,
            history: history.iter().collect(),
            submitted: submitted.iter().map(|(at, r)| (*at, r)).collect(),
            queued,
            workers,
        };
        insights::analyse(&snapshot, &catalogue)
    })
    .await
    .map_err(|e| InsightsError(format!("analysis stopped: {e}")))?;
    Ok((out, models, seen))
}
