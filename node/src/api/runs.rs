//! Runs: `POST /api/v1/runs` (tasks submitted together under one id), `GET /api/v1/runs`,
//! `GET /api/v1/runs/{id}` (results with provenance), `POST /api/v1/runs/{id}/cancel`, and the
//! exports `GET /api/v1/runs/{id}/junit.xml` and `/badge.svg`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use testmesh_consensus::runs::{Run, RunSummary, summarise};
use testmesh_consensus::task::Task;
use testmesh_consensus::{Applied, Command, TaskId};

use super::dto::TaskRequest;
use super::error::{ApiError, ApiJson};
use super::tasks::{prepare_specs, request_id_of};
use super::{AppState, Authorized};
use crate::clock;
use crate::results;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub name: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Makes the submit idempotent; generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    pub tasks: Vec<TaskRequest>,
    #[serde(default)]
    pub allow_unschedulable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunCreated {
    pub run: u64,
    pub tasks: Vec<TaskId>,
    pub duplicate: bool,
}

/// A run in a list: what it is and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    pub run: u64,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: u64,
    pub summary: RunSummary,
}

fn view(run: &Run, tasks: &[&Task]) -> RunView {
    RunView {
        run: run.id,
        name: run.name.clone(),
        metadata: run.metadata.clone(),
        created_at: run.created_at.0,
        summary: summarise(tasks.iter().copied()),
    }
}

pub async fn submit(
    State(st): State<AppState>,
    _auth: Authorized,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<(StatusCode, Json<RunCreated>), ApiError> {
    testmesh_consensus::runs::validate(&req.name, &req.metadata).map_err(ApiError::BadRequest)?;
    let specs = prepare_specs(&st, &req.tasks, req.allow_unschedulable).await?;
    let request_id = request_id_of(req.request_id)?;
    match st
        .writer
        .write(Command::SubmitRun {
            request_id,
            name: req.name,
            metadata: req.metadata,
            tasks: specs,
            at: clock::now(),
        })
        .await??
    {
        Applied::RunSubmitted {
            run,
            tasks,
            duplicate,
        } => Ok((
            if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            Json(RunCreated {
                run,
                tasks,
                duplicate,
            }),
        )),
        other => Err(ApiError::Unavailable(format!(
            "unexpected ledger answer {other:?}"
        ))),
    }
}

fn parse_run(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a run id (a number)")))
}

/// Newest first.
pub async fn list(State(st): State<AppState>) -> Json<Vec<RunView>> {
    let l = st.reader.read();
    Json(
        l.runs()
            .rev()
            .take(1000)
            .map(|r| {
                let tasks: Vec<&Task> = r.tasks.iter().filter_map(|t| l.task(*t)).collect();
                view(r, &tasks)
            })
            .collect(),
    )
}

fn with_run<T>(
    st: &AppState,
    id: &str,
    f: impl FnOnce(&Run, &[&Task]) -> T,
) -> Result<T, ApiError> {
    let id = parse_run(id)?;
    let l = st.reader.read();
    let run = l.run(id).ok_or_else(|| {
        ApiError::NotFound(format!("run {id} does not exist; see GET /api/v1/runs"))
    })?;
    let tasks: Vec<&Task> = run.tasks.iter().filter_map(|t| l.task(*t)).collect();
    Ok(f(run, &tasks))
}

pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<results::RunResults>, ApiError> {
    with_run(&st, &id, results::results).map(Json)
}

pub async fn summary(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    with_run(&st, &id, view).map(Json)
}

pub async fn junit(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let xml = with_run(&st, &id, |r, t| results::junit(&results::results(r, t)))?;
    Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response())
}

pub async fn badge(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let svg = with_run(&st, &id, |_, t| {
        results::badge(&summarise(t.iter().copied()))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        svg,
    )
        .into_response())
}

/// Cancels every task of the run that has not finished.
pub async fn cancel(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let open: Vec<TaskId> = with_run(&st, &id, |_, t| {
        t.iter()
            .filter(|t| !t.state.is_final())
            .map(|t| t.id)
            .collect()
    })?;
    let at = clock::now();
    for chunk in open.chunks(1000) {
        st.writer
            .write(Command::Batch(
                chunk
                    .iter()
                    .map(|t| Command::Cancel { task: *t, at })
                    .collect(),
            ))
            .await??;
    }
    Ok(Json(serde_json::json!({"cancelled": open.len()})))
}
