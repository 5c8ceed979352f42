//! The HTTP API under `/api/v1`, plus `/healthz`. Reads come from this node's replica; writes go
//! through Raft and need `Authorization: Bearer <token>`.

pub mod access;
mod error;
pub(crate) mod insights;
mod metrics;
pub(crate) mod predict;
mod run_report;
pub mod runs;
mod scaling;
pub(crate) mod tasks;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::header::AUTHORIZATION;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;

pub use error::ApiError;

use crate::core::Core;
use crate::monitor::HostSample;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

pub struct Inner {
    pub core: Core,
    pub token: String,
    pub started: Instant,
    pub host: watch::Receiver<HostSample>,
}

pub type AppState = Arc<Inner>;

/// Compares in constant time, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &str, want: &str) -> bool {
    let (a, b) = (given.as_bytes(), want.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extractor for handlers that change the ledger: checks `Authorization: Bearer <token>`.
pub struct Authorized;

impl axum::extract::FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if token_matches(t.trim(), &st.token) => Ok(Authorized),
            Some(_) => Err(ApiError::Unauthorized(
                "wrong API token: use the one in <data-dir>/api-token of the node (--token or TESTMESH_TOKEN)".into(),
            )),
            None => Err(ApiError::Unauthorized(
                "this request changes the ledger and needs 'Authorization: Bearer <token>'; the token is in <data-dir>/api-token of the node (--token or TESTMESH_TOKEN)".into(),
            )),
        }
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready: in a cluster with a known leader, and registered as a worker.
async fn readyz(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let leader = st.core.leadership.leader();
    let registered = st.core.ledger.read().worker(st.core.node).is_some();
    match (leader, registered) {
        (Some(l), true) => Ok(Json(
            serde_json::json!({ "status": "ready", "leader": l.to_string() }),
        )),
        (None, _) => Err(ApiError::Unavailable(
            "not ready: no leader known yet (forming or electing)".into(),
        )),
        (_, false) => Err(ApiError::Unavailable(
            "not ready: this node is not registered as a worker yet".into(),
        )),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see docs/api.md for the routes under /api/v1".into())
}

/// The API router; the node mounts the dashboard beside it.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/status", get(tasks::status))
        .route("/api/v1/workers", get(tasks::workers))
        .route("/api/v1/stats", get(tasks::stats))
        .route("/api/v1/workers/{id}/drain", post(tasks::drain))
        .route("/api/v1/workers/{id}/undrain", post(tasks::undrain))
        .route(
            "/api/v1/workers/{id}/unquarantine",
            post(tasks::unquarantine),
        )
        .route("/api/v1/tasks", get(tasks::list).post(tasks::submit))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{id}", get(tasks::get_one))
        .route("/api/v1/tasks/{id}/logs", get(tasks::logs))
        .route("/api/v1/runs", get(runs::list).post(runs::submit))
        .route("/api/v1/runs/{id}", get(runs::get_one))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/summary", get(runs::summary))
        .route("/api/v1/runs/{id}/junit.xml", get(runs::junit))
        .route("/api/v1/runs/{id}/badge.svg", get(runs::badge))
        .route("/api/v1/runs/{id}/report.html", get(run_report::html))
        .route("/api/v1/runs/{id}/report.pdf", get(run_report::pdf))
        .route("/api/v1/predict", post(predict::predict))
        .route("/api/v1/insights", get(insights::insights))
        .route("/api/v1/scaling", get(scaling::scaling))
        .route(
            "/api/v1/policy",
            get(scaling::get_policy).put(scaling::put_policy),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
