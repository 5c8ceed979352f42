//! Handlers of `/api/v1`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use testmesh_consensus::command::MAX_SUBMIT_BATCH;
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::task::{Task, TaskState};
use testmesh_consensus::{Applied, Command, NodeId, TaskId};

use super::dto::*;
use super::error::{ApiError, ApiJson, ApiQuery};
use super::{AppState, Authorized};
use crate::mesh::rpc::{Request, Response};
use crate::{agent, clock, cluster, units};
use testmesh_planner::{self as planner, ClusterView};

/// Longest a request may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Pending reasons are worked out per task; skip them for very long lists.
const MAX_REASONS: usize = 500;

fn parse_wait(w: &Option<String>) -> Result<Option<Duration>, ApiError> {
    w.as_deref()
        .map(|w| units::parse_duration(w).map(|d| d.min(MAX_WAIT)))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("wait: {e}")))
}

/// Re-evaluates `f` on every ledger change until it returns `Some` or `wait` passes; then
/// returns its last value (computed once more at the deadline).
async fn poll<T>(
    st: &AppState,
    wait: Option<Duration>,
    f: impl Fn(&Ledger, u64) -> Option<T>,
) -> Option<T> {
    let mut changes = st.reader.watch();
    let deadline = wait.map(|w| clock::tokio_instant() + w);
    loop {
        changes.mark_unchanged();
        let rev = st.reader.applied_index();
        if let Some(v) = f(&st.reader.read(), rev) {
            return Some(v);
        }
        let deadline = deadline?;
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

fn view(ledger: &Ledger, t: &Task, reasons: bool) -> TaskView {
    let pending_reason = (reasons && t.state == TaskState::Pending).then(|| {
        let v = ClusterView::from_ledger(ledger, 0);
        planner::why_pending(&v, &t.spec.requirements)
    });
    TaskView {
        task: t.clone(),
        pending_reason,
    }
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse::<u64>()
        .map(TaskId)
        .map_err(|_| ApiError::BadRequest(format!("task id {id:?} is not a number")))
}

pub async fn status(State(st): State<AppState>) -> Json<StatusView> {
    let m = st.writer.raft().metrics().borrow().clone();
    let ledger = st.reader.read();
    let mut counts: BTreeMap<TaskState, usize> = BTreeMap::new();
    for t in ledger.tasks() {
        *counts.entry(t.state).or_insert(0) += 1;
    }
    let tasks = counts
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    Json(StatusView {
        node_id: st.node.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        role: format!("{:?}", m.state).to_lowercase(),
        leader: m.current_leader.map(|l| l.to_string()),
        term: m.current_term,
        last_applied: m.last_applied.map_or(0, |l| l.index),
        voters: m
            .membership_config
            .membership()
            .voter_ids()
            .map(|v| v.to_string())
            .collect(),
        learners: m
            .membership_config
            .membership()
            .learner_ids()
            .map(|v| v.to_string())
            .collect(),
        membership_changing: m.membership_config.membership().get_joint_config().len() > 1,
        workers: ledger.workers().count(),
        tasks,
        uptime_secs: crate::clock::instant().duration_since(st.started).as_secs(),
        host: st.host.borrow().clone(),
    })
}

pub async fn workers(State(st): State<AppState>) -> Json<Vec<WorkerView>> {
    let ledger = st.reader.read();
    let recent: Vec<_> = ledger.history().rev().take(RECENT_HISTORY).collect();
    let speed = planner::quarantine::speed_vs_peers(&recent);
    Json(
        ledger
            .workers()
            .map(|w| WorkerView {
                worker: w.clone(),
                active_tasks: ledger.active_on(w.id).count(),
                speed_vs_peers: speed.get(&w.id).copied(),
            })
            .collect(),
    )
}

/// Finished attempts the workers' speed is judged on.
const RECENT_HISTORY: usize = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Comma-separated states.
    state: Option<String>,
    name: Option<String>,
    /// KEY=VALUE
    label: Option<String>,
    /// Comma-separated task ids.
    ids: Option<String>,
    /// Only tasks changed after this revision (ascending); with `wait`, blocks until there are some.
    since: Option<u64>,
    wait: Option<String>,
    limit: Option<usize>,
    /// Linearizable: reflect every write committed before this request, on any node.
    #[serde(default)]
    consistent: bool,
}

pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let states: Option<Vec<TaskState>> = q
        .state
        .as_deref()
        .map(|s| s.split(',').map(str::parse).collect::<Result<_, _>>())
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let label = q
        .label
        .as_deref()
        .map(units::parse_key_value)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("label: {e}")))?;
    let ids: Option<Vec<TaskId>> = q
        .ids
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(|i| parse_id(i.trim()))
                .collect::<Result<_, _>>()
        })
        .transpose()?;
    if q.consistent {
        st.writer.linearize().await?;
    }
    let limit = q.limit.unwrap_or(100).min(100_000);
    let wait = parse_wait(&q.wait)?;
    let matches = |t: &Task| {
        states.as_ref().is_none_or(|s| s.contains(&t.state))
            && q.name.as_ref().is_none_or(|n| &t.spec.name == n)
            && label
                .as_ref()
                .is_none_or(|(k, v)| t.spec.labels.get(k) == Some(v))
            && q.since.is_none_or(|s| t.rev > s)
    };
    let collect = |ledger: &Ledger, rev: u64| {
        let found: Vec<&Task> = match &ids {
            Some(ids) => ids
                .iter()
                .filter_map(|id| ledger.task(*id))
                .filter(|t| matches(t))
                .take(limit)
                .collect(),
            None if q.since.is_some() => ledger
                .changed_since(q.since.unwrap_or(0))
                .filter(|t| matches(t))
                .take(limit)
                .collect(),
            None => ledger
                .tasks()
                .rev()
                .filter(|t| matches(t))
                .take(limit)
                .collect(),
        };
        // A list cut short by `limit` must not skip what it left out: point the cursor just
        // before the last change returned (one entry may change many tasks; repeats are fine).
        let rev = match (q.since, found.last()) {
            (Some(_), Some(last)) if found.len() == limit => last.rev.saturating_sub(1),
            _ => rev,
        };
        let reasons = found.len() <= MAX_REASONS;
        let tasks: Vec<TaskView> = found
            .into_iter()
            .map(|t| view(ledger, t, reasons))
            .collect();
        (wait.is_none() || !tasks.is_empty()).then_some(TaskList { rev, tasks })
    };
    let result = poll(&st, wait, &collect).await;
    Ok(Json(result.unwrap_or_else(|| TaskList {
        rev: st.reader.applied_index(),
        tasks: Vec::new(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Wait until the task changes after this revision.
    since: Option<u64>,
    wait: Option<String>,
    /// Linearizable: reflect every write committed before this request, on any node.
    #[serde(default)]
    consistent: bool,
}

pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let wait = parse_wait(&q.wait)?;
    let since = q.since.unwrap_or(0);
    if q.consistent {
        st.writer.linearize().await?;
    }
    let found = poll(&st, wait, |l, _| match l.task(id) {
        None => Some(None),
        Some(t) if t.rev > since || wait.is_none() => Some(Some(view(l, t, true))),
        Some(_) => None,
    })
    .await;
    match found {
        Some(Some(v)) => Ok(Json(v)),
        Some(None) => Err(ApiError::NotFound(format!(
            "task {id} does not exist; list tasks with GET /api/v1/tasks"
        ))),
        // Waited without a change: answer with the task as it is.
        None => {
            let l = st.reader.read();
            l.task(id)
                .map(|t| Json(view(&l, t, true)))
                .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    stream: Option<String>,
    attempt: Option<u32>,
    offset: Option<u64>,
    limit: Option<u64>,
}

pub async fn logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogChunk>, ApiError> {
    let id = parse_id(&id)?;
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::BadRequest(format!(
            "stream {stream:?} is neither stdout nor stderr"
        )));
    }
    let (attempt, tail, worker) = {
        let l = st.reader.read();
        let t = l
            .task(id)
            .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))?;
        let n = q.attempt.unwrap_or(t.attempt);
        if n == 0 {
            // Never ran yet: nothing to show, more may come.
            return Ok(Json(LogChunk {
                task: id,
                attempt: 0,
                stream,
                offset: 0,
                next_offset: 0,
                data: String::new(),
                complete: t.state.is_final(),
                ledger_tail: false,
            }));
        }
        let a = t.attempts.iter().find(|a| a.number == n).ok_or_else(|| {
            ApiError::NotFound(format!(
                "task {id} has no attempt {n} (it has {})",
                t.attempts.len()
            ))
        })?;
        let tail = a.outcome.as_ref().map(|o| {
            if stream == "stdout" {
                o.stdout_tail.clone()
            } else {
                o.stderr_tail.clone()
            }
        });
        (n, tail, a.worker)
    };
    let ended = tail.is_some();
    // Once the attempt has ended its tail is in the ledger: serve that when the file is not.
    let from_tail = |why: String| match &tail {
        Some(t) => Ok(Json(LogChunk {
            task: id,
            attempt,
            stream: stream.clone(),
            offset: 0,
            next_offset: t.len() as u64,
            data: t.clone(),
            complete: true,
            ledger_tail: true,
        })),
        None => Err(ApiError::Unavailable(why)),
    };
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(1 << 20).min(8 << 20);
    let (data, len) = if worker == st.node {
        let path = agent::log_path(&st.data_dir, id, attempt, &stream);
        match cluster::read_log(&path, offset, limit) {
            Ok(r) => r,
            Err(e) => return from_tail(format!("cannot read {}: {e}", path.display())),
        }
    } else {
        // The log lives on the worker that ran the attempt: fetch it over the mesh.
        let Some(peer) = st.writer.peer_of(worker) else {
            return from_tail(format!(
                "worker {worker} that ran this attempt is not in the cluster any more; its logs are gone with it"
            ));
        };
        let req = Request::Logs {
            task: id.0,
            attempt,
            stream: stream.clone(),
            offset,
            limit,
        };
        match st.mesh.request(peer, req, Duration::from_secs(10)).await {
            Ok(Response::Logs(Ok(r))) => r,
            Ok(Response::Logs(Err(e))) => return from_tail(format!("worker {worker}: {e}")),
            Ok(_) => return from_tail(format!("worker {worker} gave an unexpected answer")),
            Err(e) => {
                return from_tail(format!("cannot fetch the log from worker {worker}: {e}"));
            }
        }
    };
    if len == 0 && tail.as_ref().is_some_and(|t| !t.is_empty()) {
        // The file is gone (cleaned up, or another data dir) but the ledger kept its end.
        return from_tail(String::new());
    }
    let next_offset = offset.min(len) + data.len() as u64;
    Ok(Json(LogChunk {
        task: id,
        attempt,
        stream,
        offset,
        next_offset,
        data: String::from_utf8_lossy(&data).into_owned(),
        complete: ended && next_offset >= len,
        ledger_tail: false,
    }))
}

/// Turns requests into specs the ledger will take: each checked, `mem: auto` predicted, and
/// (unless allowed) each able to run on some worker.
pub async fn prepare_specs(
    st: &AppState,
    tasks: &[super::dto::TaskRequest],
    allow_unschedulable: bool,
) -> Result<Vec<testmesh_consensus::task::TaskSpec>, ApiError> {
    if tasks.is_empty() {
        return Err(ApiError::BadRequest(
            "tasks is empty: submit at least one task".into(),
        ));
    }
    if tasks.len() > MAX_SUBMIT_BATCH {
        return Err(ApiError::TooLarge(format!(
            "{} tasks in one request; split them into requests of at most {MAX_SUBMIT_BATCH}",
            tasks.len()
        )));
    }
    let many = tasks.len() > 1;
    let mut specs = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let mut spec = to_spec(t)
            .map_err(|e| ApiError::BadRequest(if many { format!("task #{i}: {e}") } else { e }))?;
        if mem_is_auto(t) {
            // Reserve what history predicts for it.
            super::predict::reserve_predicted_memory(st, &mut spec).await?;
        }
        specs.push(spec);
    }
    if !allow_unschedulable {
        let ledger = st.reader.read();
        // Specs repeat in big batches: check each distinct requirement once.
        let mut checked = std::collections::HashSet::new();
        for (i, s) in specs.iter().enumerate() {
            if checked.insert(&s.requirements) {
                planner::could_ever_fit(
                    ledger.workers().map(|w| (&w.capacity, &w.labels)),
                    &s.requirements,
                )
                .map_err(|e| {
                    ApiError::Unprocessable(if many { format!("task #{i}: {e}") } else { e })
                })?;
            }
        }
    }
    Ok(specs)
}

/// The client's request id, checked, or a fresh one.
pub fn request_id_of(r: Option<String>) -> Result<String, ApiError> {
    match r {
        Some(r) if r.is_empty() || r.len() > 128 => Err(ApiError::BadRequest(
            "request_id must be 1-128 characters".into(),
        )),
        Some(r) => Ok(r),
        None => Ok(hex::encode(rand::random::<[u8; 16]>())),
    }
}

pub async fn submit(
    State(st): State<AppState>,
    _auth: Authorized,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let specs = prepare_specs(&st, &req.tasks, req.allow_unschedulable).await?;
    let request_id = request_id_of(req.request_id)?;
    let r = st
        .writer
        .write(Command::Submit {
            request_id,
            tasks: specs,
            at: clock::now(),
        })
        .await??;
    match r {
        Applied::Submitted { tasks, duplicate } => {
            let code = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((code, Json(SubmitResponse { tasks, duplicate })))
        }
        other => Err(ApiError::Unavailable(format!(
            "unexpected ledger answer {other:?}"
        ))),
    }
}

pub async fn cancel(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    match st
        .writer
        .write(Command::Cancel {
            task: id,
            at: clock::now(),
        })
        .await??
    {
        Applied::CancelRequested { state } => {
            Ok(Json(serde_json::json!({ "task": id, "state": state })))
        }
        other => Err(ApiError::Unavailable(format!(
            "unexpected ledger answer {other:?}"
        ))),
    }
}

async fn set_worker_state(
    st: &AppState,
    id: &str,
    state: WorkerState,
) -> Result<Json<serde_json::Value>, ApiError> {
    let worker: NodeId = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "worker id {id:?} is not 16 hex digits; see GET /api/v1/workers"
        ))
    })?;
    let cmd = Command::SetWorkerState {
        worker,
        state,
        at: clock::now(),
    };
    match st.writer.write(cmd).await?? {
        Applied::WorkerState { .. } => Ok(Json(
            serde_json::json!({ "worker": worker, "state": state }),
        )),
        other => Err(ApiError::Unavailable(format!(
            "unexpected ledger answer {other:?}"
        ))),
    }
}

/// `POST /api/v1/workers/{id}/drain`: no new placements; running tasks finish.
pub async fn drain(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_worker_state(&st, &id, WorkerState::Draining).await
}

/// `POST /api/v1/workers/{id}/unquarantine`: an operator clears a quarantined worker; its
/// track record starts afresh.
pub async fn unquarantine(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let worker: NodeId = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "worker id {id:?} is not 16 hex digits; see GET /api/v1/workers"
        ))
    })?;
    let w = st.reader.read().worker(worker).cloned();
    match w {
        None => Err(ApiError::NotFound(format!(
            "worker {worker} is not registered"
        ))),
        Some(w) if w.quarantine.is_none() => Err(ApiError::Conflict(format!(
            "worker {worker} is not quarantined"
        ))),
        Some(w) => {
            st.writer
                .write(Command::SetQuarantine {
                    worker,
                    reason: None,
                    at: clock::now(),
                })
                .await??;
            Ok(Json(serde_json::json!({
                "worker": worker,
                "state": format!("{:?}", w.state).to_lowercase(),
                "cleared": w.quarantine.map(|q| q.reason),
            })))
        }
    }
}

/// `POST /api/v1/workers/{id}/undrain`.
pub async fn undrain(
    State(st): State<AppState>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_worker_state(&st, &id, WorkerState::Active).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Only this node (16 hex digits).
    node: Option<String>,
    /// Only samples after this time (Unix milliseconds).
    since: Option<u64>,
}

/// `GET /api/v1/stats`: every node's gossiped statistics as this node has received them.
pub async fn stats(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = q
        .node
        .as_deref()
        .map(|n| {
            n.parse::<NodeId>()
                .map_err(|_| ApiError::BadRequest(format!("node {n:?} is not 16 hex digits")))
        })
        .transpose()?;
    let store = st.stats.read().unwrap_or_else(|p| p.into_inner());
    let nodes = store.view(node, testmesh_consensus::UnixMillis(q.since.unwrap_or(0)));
    Ok(Json(
        serde_json::json!({ "nodes": nodes, "malformed_dropped": store.malformed }),
    ))
}
