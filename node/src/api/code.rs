//! Shipped working trees and artifacts: `PUT/GET /api/v1/code/{hash}`, the artifact lists of a
//! task and a run, artifact downloads, and the per-test durations a timing split reads.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use testmesh_consensus::TaskId;
use testmesh_consensus::suite::check_relative;

use super::error::ApiError;
use super::{AppState, Authorized};
use crate::core::code::valid_hash;

#[derive(Debug, Serialize, Deserialize)]
pub struct CodeInfo {
    pub hash: String,
    pub size: u64,
}

/// Whether this node holds an archive (a client skips the upload when it does).
pub async fn head(
    State(st): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Json<CodeInfo>, ApiError> {
    valid_hash(&hash).map_err(ApiError::BadRequest)?;
    match st.core.code.has(&hash) {
        Some(size) => Ok(Json(CodeInfo { hash, size })),
        None => Err(ApiError::NotFound(format!(
            "this node does not hold the code {hash}; upload it with PUT /api/v1/code/{hash}"
        ))),
    }
}

/// Takes an archive; its SHA-256 must be the one in the path.
pub async fn upload(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(hash): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<CodeInfo>), ApiError> {
    valid_hash(&hash).map_err(ApiError::BadRequest)?;
    st.core
        .disk
        .check(&st.core.data_dir)
        .map_err(|e| ApiError::InsufficientStorage(e.to_string()))?;
    if let Some(size) = st.core.code.has(&hash) {
        return Ok((StatusCode::OK, Json(CodeInfo { hash, size })));
    }
    let max = st.core.code.max_upload();
    let bytes = axum::body::to_bytes(body, max as usize + 1)
        .await
        .map_err(|e| {
            // A body over the limit is the client's size; anything else is a cut upload.
            let mut cause: &dyn std::error::Error = &e;
            let mut over = false;
            loop {
                over |= cause.to_string().contains("length limit");
                match cause.source() {
                    Some(c) => cause = c,
                    None => break,
                }
            }
            if over {
                ApiError::TooLarge(format!(
                    "the archive is over this node's limit of {max} bytes (--max-code-size); leave out what the tasks do not need with .testmeshignore"
                ))
            } else {
                ApiError::BadRequest(format!("the upload was cut short: {e}"))
            }
        })?;
    let store = st.core.code.clone();
    let h = hash.clone();
    let size = tokio::task::spawn_blocking(move || store.put(&h, &mut &bytes[..], max))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|e| match e {
            crate::core::code::CodeError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            crate::core::code::CodeError::HashMismatch { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            e => ApiError::Unavailable(e.to_string()),
        })?;
    Ok((StatusCode::CREATED, Json(CodeInfo { hash, size })))
}

/// One kept artifact of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactView {
    pub task: u64,
    pub name: String,
    pub attempt: u32,
    pub worker: String,
    pub path: String,
    pub size: u64,
}

fn artifacts_of(t: &testmesh_consensus::task::Task, all_attempts: bool) -> Vec<ArtifactView> {
    let with: Vec<_> = t
        .attempts
        .iter()
        .filter(|a| {
            a.outcome
                .as_ref()
                .is_some_and(|o| !o.artifacts().is_empty())
        })
        .collect();
    let chosen: Vec<_> = if all_attempts {
        with
    } else {
        with.last().copied().into_iter().collect()
    };
    chosen
        .into_iter()
        .flat_map(|a| {
            a.outcome
                .as_ref()
                .map(|o| o.artifacts())
                .unwrap_or_default()
                .iter()
                .map(move |f| ArtifactView {
                    task: t.id.0,
                    name: t.spec.name.clone(),
                    attempt: a.number,
                    worker: a.worker.to_string(),
                    path: f.path.clone(),
                    size: f.size,
                })
        })
        .collect()
}

fn parse_id(id: &str, what: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a {what} id (a number)")))
}

fn gone(g: crate::core::archive::Gone) -> ApiError {
    ApiError::NotFound(g.to_string())
}

/// Every attempt's artifacts of a task.
pub async fn task_list(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    let id = parse_id(&id, "task")?;
    let t = crate::core::archive::task(&st.core.ledger, TaskId(id)).map_err(gone)?;
    Ok(Json(artifacts_of(&t, true)))
}

/// The artifacts of each task's last attempt that kept any.
pub async fn run_list(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    let id = parse_id(&id, "run")?;
    let (_, tasks) = crate::core::archive::run_any(&st.core.ledger, id).map_err(gone)?;
    Ok(Json(
        tasks.iter().flat_map(|t| artifacts_of(t, false)).collect(),
    ))
}

/// One artifact's bytes, from this node or the worker that keeps it.
pub async fn download(
    State(st): State<AppState>,
    Path((id, attempt, path)): Path<(String, u32, String)>,
) -> Result<Response, ApiError> {
    let id = TaskId(parse_id(&id, "task")?);
    check_relative("artifact", &path).map_err(ApiError::BadRequest)?;
    let t = crate::core::archive::task(&st.core.ledger, id).map_err(gone)?;
    let a = t
        .attempts
        .iter()
        .find(|a| a.number == attempt)
        .ok_or_else(|| ApiError::NotFound(format!("task {id} has no attempt {attempt}")))?;
    let known = a
        .outcome
        .as_ref()
        .is_some_and(|o| o.artifacts().iter().any(|f| f.path == path));
    if !known {
        return Err(ApiError::NotFound(format!(
            "attempt {attempt} of task {id} kept no artifact {path:?}; list them at /api/v1/tasks/{id}/artifacts"
        )));
    }
    let bytes = if a.worker == st.core.node {
        let dir = st.core.data_dir.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            crate::core::artifacts::read_local(&dir, id, attempt, &p, 0, u64::MAX)
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(ApiError::NotFound)?
        .0
    } else {
        st.core
            .code
            .fetch_artifact(a.worker, id, attempt, &path)
            .await
            .map_err(ApiError::Unavailable)?
    };
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .replace('"', "");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationsQuery {
    /// The run name whose earlier runs are read.
    pub name: String,
}

/// How long each test took in the newest runs of that name (newest result first), for a
/// timing split.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Durations {
    /// The runs read.
    pub runs: Vec<u64>,
    /// Test id (`classname.name`) → milliseconds.
    pub tests: BTreeMap<String, u64>,
}

/// Runs read at most.
const DURATION_RUNS: usize = 5;
/// Newest archived runs looked through for runs of the name.
const ARCHIVED_RUNS_READ: usize = 500;

pub async fn durations(
    State(st): State<AppState>,
    Query(q): Query<DurationsQuery>,
) -> Result<Json<Durations>, ApiError> {
    let mut ids: Vec<u64> = {
        let l = st.core.ledger.read();
        l.runs()
            .filter(|r| r.name == q.name)
            .map(|r| r.id)
            .collect()
    };
    // Retention moves finished runs to the archive: nightly suites are found there.
    if ids.len() < DURATION_RUNS {
        let archived = st
            .core
            .ledger
            .archive()
            .runs(ARCHIVED_RUNS_READ)
            .unwrap_or_default();
        ids.extend(
            archived
                .into_iter()
                .filter(|(r, _)| r.name == q.name)
                .map(|(r, _)| r.id),
        );
    }
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    let mut d = Durations::default();
    for id in ids {
        if d.runs.len() >= DURATION_RUNS {
            break;
        }
        let Ok((_, tasks)) = crate::core::archive::run_any(&st.core.ledger, id) else {
            continue;
        };
        let (tests, _) = testmesh_consensus::suite::merge(tasks.iter());
        if tests.is_empty() {
            continue;
        }
        d.runs.push(id);
        for t in tests {
            d.tests.entry(t.id).or_insert(t.time_ms);
        }
    }
    Ok(Json(d))
}
