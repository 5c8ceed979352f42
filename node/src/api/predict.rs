//! `POST /api/v1/predict`: run time and peak memory predicted for a task from the execution
//! history in this node's replica (the core's models, retrained when due).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use testmesh_consensus::resources::GpuRequest;
use testmesh_planner::predictor::Prediction;
use testmesh_planner::predictor::history;

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::core::submit::{TaskRequest, to_spec};

#[derive(Debug, Serialize)]
pub struct PredictView {
    pub duration_secs: Prediction,
    pub peak_memory_mib: Prediction,
    /// For tasks that ask for GPUs; null otherwise.
    pub peak_gpu_memory_mib: Option<Prediction>,
    /// Finished attempts the models learned from.
    pub history_samples: usize,
}

pub async fn predict(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<TaskRequest>,
) -> Result<Json<PredictView>, ApiError> {
    let spec = to_spec(&req)?;
    let m = st.core.models.fresh().await?;
    let n = m.samples;
    let f = history::spec_features(&spec);
    Ok(Json(PredictView {
        duration_secs: m.duration.predict(&f),
        peak_memory_mib: m.memory.predict(&f),
        peak_gpu_memory_mib: (spec.requirements.gpu != GpuRequest::None)
            .then(|| m.gpu_memory.predict(&f)),
        history_samples: n,
    }))
}
