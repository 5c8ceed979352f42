//! `GET /api/v1/insights?window=1h`: workload patterns, efficiency and worker-type
//! recommendations from this node's replica and gossip statistics (see
//! `planner::insights`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use testmesh_consensus::UnixMillis;
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::resources::Requirements;

use super::AppState;
use super::error::{ApiError, ApiQuery};
use super::predict::Models;
use crate::clock;
use testmesh_planner::insights::{self, Demand, Insights, LiveUse, Snapshot, WorkerUse};
use testmesh_planner::predictor::PredictionPath;
use testmesh_planner::predictor::history::spec_features;

/// Queued tasks the recommendations look at (the head of the queue); bounds the work per call.
pub const MAX_QUEUED: usize = 5_000;
/// Longest window accepted.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightsQuery {
    /// How far back to look, e.g. `1h` (default), `30m`, `7d`.
    pub window: Option<String>,
}

pub async fn insights(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<InsightsQuery>,
) -> Result<Json<Insights>, ApiError> {
    let window = match &q.window {
        Some(w) => crate::units::parse_duration(w)
            .map_err(|e| ApiError::BadRequest(format!("window: {e}")))?,
        None => std::time::Duration::from_secs(3600),
    };
    if window > MAX_WINDOW {
        return Err(ApiError::BadRequest(
            "window: at most 30d (the history keeps the latest 50,000 attempts anyway)".into(),
        ));
    }
    Ok(Json(compute(&st, window.as_millis() as u64).await?.0))
}

/// The analysis of the last `window_ms`, with the trained models it used (if any could be
/// trained) and the history count they saw.
pub async fn compute(
    st: &AppState,
    window_ms: u64,
) -> Result<(Insights, Option<Arc<Models>>, usize), ApiError> {
    let now = clock::now();
    let start = UnixMillis(now.0.saturating_sub(window_ms));
    let (models, seen) = match super::predict::models(st).await {
        Ok((m, n)) => (Some(m), n),
        Err(_) => (None, 0),
    };

    // Copy what is needed and let go of the replica before analysing.
    let (history, submitted, queued, workers) = {
        let l = st.reader.read();
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
        let stats = st.stats.read().unwrap_or_else(|p| p.into_inner());
        let workers: Vec<WorkerUse> = l
            .workers()
            .map(|w| WorkerUse {
                id: w.id,
                hostname: w.hardware.hostname.clone(),
                state: w.state,
                capacity: w.capacity.clone(),
                allocated: w.allocated.clone(),
                live: stats.latest(w.id).map(|p| LiveUse {
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
    let catalogue = st.catalogue.clone();
    let out = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot {
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
    .map_err(|e| ApiError::Unavailable(format!("analysis stopped: {e}")))?;
    Ok((out, models, seen))
}
