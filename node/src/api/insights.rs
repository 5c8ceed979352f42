//! `GET /api/v1/insights?window=1h`: workload patterns, efficiency and worker-type
//! recommendations from this node's replica and gossip statistics (see
//! `planner::insights`).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiQuery};
use testmesh_planner::insights::Insights;

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
    let (insights, _, _) = st.core.insights(window.as_millis() as u64).await?;
    Ok(Json(insights))
}

/// Scheduled reports (`[[reports]]`) and how their deliveries went.
pub async fn reports(State(st): State<AppState>) -> Json<Vec<crate::core::reports::ReportStatus>> {
    Json(st.core.reports.get())
}
