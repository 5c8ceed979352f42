//! `POST /api/v1/predict`: run time and peak memory predicted for a task from the execution
//! history in this node's replica. Models are trained off the async runtime (`spawn_blocking`)
//! when first asked and again once enough new attempts have finished.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::error::{ApiError, ApiJson};
use super::{AppState, TaskRequest, to_spec};
use testmesh_consensus::resources::GpuRequest;

use testmesh_planner::predictor::history::{self, Target};
use testmesh_planner::predictor::{Prediction, Predictor};

/// Retrain once this many attempts have finished since the last training (fewer while the
/// history is small).
const RETRAIN_AFTER: u64 = 50;

/// One model per predicted quantity.
pub struct Models {
    pub duration: Predictor,
    pub memory: Predictor,
    pub gpu_memory: Predictor,
}

/// Trained models and the history count they saw.
pub type Cache = tokio::sync::Mutex<Option<(u64, Arc<Models>)>>;

#[derive(Debug, Serialize)]
pub struct PredictView {
    pub duration_secs: Prediction,
    pub peak_memory_mib: Prediction,
    /// For tasks that ask for GPUs; null otherwise.
    pub peak_gpu_memory_mib: Option<Prediction>,
    /// Finished attempts the models learned from.
    pub history_samples: usize,
}

pub(crate) async fn models(st: &AppState) -> Result<(Arc<Models>, usize), ApiError> {
    let mut cache = st.predictors.lock().await;
    let (total, len) = {
        let l = st.reader.read();
        (l.history_total(), l.history().count())
    };
    // While the history is small every new attempt counts (and training is cheap).
    if let Some((seen, m)) = cache.as_ref()
        && total.saturating_sub(*seen) < RETRAIN_AFTER.min(1 + *seen / 10)
    {
        return Ok((m.clone(), len));
    }
    let (durations, memory, gpu_memory) = {
        let l = st.reader.read();
        (
            history::samples(l.history(), Target::DurationSecs),
            history::samples(l.history(), Target::PeakRssMib),
            history::samples(l.history(), Target::PeakGpuMemoryMib),
        )
    };
    let trained = tokio::task::spawn_blocking(move || {
        let opts = history::options();
        Ok::<_, testmesh_planner::Error>(Models {
            duration: Predictor::train(&durations, &opts)?,
            memory: Predictor::train(&memory, &opts)?,
            gpu_memory: Predictor::train(&gpu_memory, &opts)?,
        })
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("training stopped: {e}")))?
    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let m = Arc::new(trained);
    *cache = Some((total, m.clone()));
    Ok((m, len))
}

/// Headroom over the predicted peak when `mem: "auto"` reserves it.
const AUTO_MEMORY_HEADROOM: f64 = 1.25;
/// Label on a task whose memory was reserved by prediction, saying what was predicted.
pub const MEM_AUTO_LABEL: &str = "testmesh.mem_auto";

/// `mem: "auto"`: reserves the predicted peak memory plus 25 % (nothing when there is no
/// history yet), and labels the task with what was predicted and how.
pub async fn reserve_predicted_memory(
    st: &AppState,
    spec: &mut testmesh_consensus::task::TaskSpec,
) -> Result<(), ApiError> {
    let (m, _) = models(st).await?;
    let p = m.memory.predict(&history::spec_features(spec));
    let note = if p.path == testmesh_planner::predictor::PredictionPath::Requested {
        "no history yet: nothing reserved".to_string()
    } else {
        let mib = (p.value * AUTO_MEMORY_HEADROOM).ceil().max(1.0) as u64;
        spec.requirements.memory = testmesh_consensus::Bytes(mib << 20);
        format!(
            "{mib} MiB reserved: predicted peak {:.0} MiB + 25 % ({:?}, confidence {:.2}, {} samples)",
            p.value, p.path, p.confidence, p.samples
        )
    };
    spec.labels.insert(MEM_AUTO_LABEL.to_string(), note);
    Ok(())
}

pub async fn predict(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<TaskRequest>,
) -> Result<Json<PredictView>, ApiError> {
    let spec = to_spec(&req).map_err(ApiError::BadRequest)?;
    let (m, n) = models(&st).await?;
    let f = history::spec_features(&spec);
    Ok(Json(PredictView {
        duration_secs: m.duration.predict(&f),
        peak_memory_mib: m.memory.predict(&f),
        peak_gpu_memory_mib: (spec.requirements.gpu != GpuRequest::None)
            .then(|| m.gpu_memory.predict(&f)),
        history_samples: n,
    }))
}
