//! Runs: `POST /api/v1/runs` (tasks submitted together under one id), `GET /api/v1/runs`,
//! `GET /api/v1/runs/{id}` (results with provenance), `POST /api/v1/runs/{id}/cancel`, and the
//! exports `GET /api/v1/runs/{id}/junit.xml` and `/badge.svg`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use testmesh_consensus::runs::{Run, summarise};
use testmesh_consensus::task::Task;
use testmesh_consensus::{Applied, Command, TaskId};

use super::error::{ApiError, ApiJson};
use super::{AppState, Authorized};
use crate::core::dto::{RunCreated, RunView};
use crate::core::submit::{RunRequest, request_id_of};
use crate::results;

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
    let specs = st.core.prepare(&req.tasks, req.allow_unschedulable).await?;
    let request_id = request_id_of(req.request_id)?;
    match st
        .core
        .writer
        .write(Command::SubmitRun {
            request_id,
            name: req.name,
            metadata: req.metadata,
            tasks: specs,
            at: st.core.now(),
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
    let mut out: Vec<RunView> = {
        let l = st.core.ledger.read();
        l.runs()
            .rev()
            .take(1000)
            .map(|r| {
                let tasks: Vec<&Task> = r.tasks.iter().filter_map(|t| l.task(*t)).collect();
                view(r, &tasks)
            })
            .collect()
    };
    let room = 1000usize
        .saturating_sub(out.len())
        .min(ARCHIVED_RUNS_LISTED);
    let archive = st.core.ledger.archive();
    for (r, summary) in archive.runs(room).unwrap_or_default() {
        out.push(RunView {
            run: r.id,
            name: r.name,
            metadata: r.metadata,
            created_at: r.created_at.0,
            summary,
        });
    }
    Json(out)
}

fn with_run<T>(
    st: &AppState,
    id: &str,
    f: impl FnOnce(&Run, &[&Task]) -> T,
) -> Result<T, ApiError> {
    let id = parse_run(id)?;
    {
        let l = st.core.ledger.read();
        if let Some(run) = l.run(id) {
            let tasks: Vec<&Task> = run.tasks.iter().filter_map(|t| l.task(*t)).collect();
            return Ok(f(run, &tasks));
        }
    }
    let (run, tasks) = archived_run(st, id)?;
    let tasks: Vec<&Task> = tasks.iter().collect();
    Ok(f(&run, &tasks))
}

/// A run retention moved to the archive, or a clear 404.
fn archived_run(st: &AppState, id: u64) -> Result<(Run, Vec<Task>), ApiError> {
    crate::core::archive::run(&st.core.ledger, id).map_err(|g| {
        ApiError::NotFound(if g.is_never() {
            format!("run {id} does not exist; see GET /api/v1/runs")
        } else {
            g.to_string()
        })
    })
}

/// Archived runs listed after the live ones, at most.
const ARCHIVED_RUNS_LISTED: usize = 200;

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
    let at = st.core.now();
    for chunk in open.chunks(1000) {
        st.core
            .writer
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
