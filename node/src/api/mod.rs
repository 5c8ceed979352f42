//! The HTTP API under `/api/v1`, plus `/healthz`. Reads come from this node's replica; writes go
//! through Raft and need `Authorization: Bearer <token>`.

pub mod access;
pub mod code;
mod error;
pub(crate) mod insights;
mod metrics;
pub(crate) mod predict;
mod run_report;
pub mod runs;
mod scaling;
pub mod security;
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

use crate::core::{Core, tokens};
use crate::monitor::HostSample;
use testmesh_consensus::security::Scope;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

pub struct Inner {
    pub core: Core,
    pub token: String,
    /// The swarm key file's text, for enrolment.
    pub swarm_key: String,
    /// Whether enrolment is served (HTTPS or loopback: its answer is the swarm key).
    pub enrol_allowed: bool,
    pub started: Instant,
    pub host: watch::Receiver<HostSample>,
}

pub type AppState = Arc<Inner>;

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// "node-local" for the node's own `api-token` file, else the API token's id and name.
    pub actor: String,
    pub scope: Scope,
}

/// The caller a bearer token names: the node's own token (admin on this node), or a
/// cluster-wide API token from the ledger that has not expired. `None` for anything else,
/// including an empty token (an empty `api-token` file accepts nothing).
pub fn caller_of(core: &Core, local: &str, given: &str) -> Option<Caller> {
    let given = given.trim();
    if given.is_empty() {
        return None;
    }
    if !local.is_empty() && tokens::same(given, local) {
        return Some(Caller {
            actor: "node-local".into(),
            scope: Scope::Admin,
        });
    }
    let p = tokens::parse(given).filter(|p| p.kind == tokens::Kind::Api)?;
    let now = core.now();
    let ledger = core.ledger.read();
    let t = ledger.security().api_token(&p.id)?;
    if !tokens::matches(&p.secret, &t.hash) || t.expires_at.is_some_and(|e| e <= now) {
        return None;
    }
    Some(Caller {
        actor: format!("{} ({})", t.id, t.name),
        scope: t.scope,
    })
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks that the request's bearer token allows `needed`. Writes are authorised by the header
/// only: a dashboard cookie or `?token=` never changes anything.
fn require(
    parts: &axum::http::request::Parts,
    st: &AppState,
    needed: Scope,
) -> Result<Caller, ApiError> {
    let hint = format!(
        "create one with `testmesh token create --scope {needed}` (or use the node's own token \
         in <data-dir>/api-token), and pass it as 'Authorization: Bearer <token>' (--token or \
         TESTMESH_TOKEN)"
    );
    match bearer(&parts.headers) {
        None => Err(ApiError::Unauthorized(format!(
            "this request needs a token with the {needed} scope; {hint}"
        ))),
        Some(t) => match caller_of(&st.core, &st.token, t) {
            None => Err(ApiError::Unauthorized(format!(
                "the API token is unknown, revoked or expired; {hint}"
            ))),
            Some(c) if !c.scope.allows(needed) => Err(ApiError::Forbidden(format!(
                "token {} has the {} scope; this request needs {needed}",
                c.actor, c.scope
            ))),
            Some(c) => Ok(c),
        },
    }
}

/// Extractor for handlers that submit or cancel work: a token with the submit scope.
pub struct Authorized(#[allow(dead_code)] pub Caller);

impl axum::extract::FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        require(parts, st, Scope::Submit).map(Authorized)
    }
}

/// Extractor for operators' handlers (workers, policy, tokens, nodes, audit): the admin scope.
pub struct Admin(pub Caller);

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        require(parts, st, Scope::Admin).map(Admin)
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
        .route("/api/v1/reports", get(insights::reports))
        .route("/api/v1/scaling", get(scaling::scaling))
        .route(
            "/api/v1/policy",
            get(scaling::get_policy).put(scaling::put_policy),
        )
        .route("/api/v1/tokens", get(security::list).post(security::create))
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(security::revoke),
        )
        .route("/api/v1/nodes", get(security::nodes))
        .route("/api/v1/nodes/{id}/approve", post(security::approve))
        .route("/api/v1/nodes/{id}/remove", post(security::remove))
        .route("/api/v1/audit", get(security::audit))
        .route("/api/v1/enrol", post(security::enrol))
        .route("/api/v1/code/{hash}", get(code::head).put(code::upload))
        .route("/api/v1/tasks/{id}/artifacts", get(code::task_list))
        .route(
            "/api/v1/tasks/{id}/artifacts/{attempt}/{*path}",
            get(code::download),
        )
        .route("/api/v1/runs/{id}/artifacts", get(code::run_list))
        .route("/api/v1/tests/durations", get(code::durations))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
