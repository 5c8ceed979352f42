//! Handlers of `/api/v1`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::task::{Task, TaskState};
use testmesh_consensus::{Applied, Command, NodeId, TaskId};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{Admin, AppState, Authorized};
use crate::core::dto::*;
use crate::core::logs::{LogChunk, LogRead};
use crate::core::submit::{SubmitRequest, request_id_of};
use crate::units;
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
    let ledger = &st.core.ledger;
    let clock = &st.core.clock;
    let mut changes = ledger.watch();
    let deadline = wait.map(|w| clock.instant() + w);
    loop {
        changes.mark_unchanged();
        // The revision of the very state read: an index read before taking the lock may be
        // behind it, and a watch told to go on from there would see the newer changes twice.
        let found = {
            let guard = ledger.read();
            f(&guard, guard.applied_index())
        };
        if let Some(v) = found {
            return Some(v);
        }
        let left = deadline?.saturating_duration_since(clock.instant());
        match tokio::time::timeout(left, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

fn view(
    ledger: &Ledger,
    t: &Task,
    reasons: bool,
    etas: &std::collections::HashMap<TaskId, crate::core::eta::EtaView>,
) -> TaskView {
    let pending_reason = (reasons && t.state == TaskState::Pending).then(|| {
        let v = ClusterView::from_ledger(ledger, 0);
        planner::why_pending(&v, &t.spec.requirements)
    });
    TaskView {
        task: t.clone(),
        pending_reason,
        eta: etas.get(&t.id).copied(),
    }
}

/// Estimates for the queue when `tasks` holds a pending one (the simulation is not free).
fn etas_for<'a>(
    st: &AppState,
    ledger: &Ledger,
    mut tasks: impl Iterator<Item = &'a Task>,
) -> std::collections::HashMap<TaskId, crate::core::eta::EtaView> {
    if !tasks.any(|t| t.state == TaskState::Pending) {
        return Default::default();
    }
    let models = st.core.models.current();
    crate::core::eta::etas(ledger, models.as_deref(), st.core.now().0)
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse::<u64>()
        .map(TaskId)
        .map_err(|_| ApiError::BadRequest(format!("task id {id:?} is not a number")))
}

pub async fn status(State(st): State<AppState>) -> Json<StatusView> {
    let m = st.core.leadership.metrics();
    let ledger = st.core.ledger.read();
    let mut counts: BTreeMap<TaskState, usize> = BTreeMap::new();
    for t in ledger.tasks() {
        *counts.entry(t.state).or_insert(0) += 1;
    }
    let tasks = counts
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    Json(StatusView {
        node_id: st.core.node.to_string(),
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
        uptime_secs: st.core.clock.instant().duration_since(st.started).as_secs(),
        host: st.host.borrow().clone(),
        disk: st.core.disk.view(),
        foreign_clusters: st
            .core
            .foreign_clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect(),
    })
}

pub async fn workers(State(st): State<AppState>) -> Json<Vec<WorkerStatus>> {
    let ledger = st.core.ledger.read();
    let recent: Vec<_> = ledger.history().rev().take(RECENT_HISTORY).collect();
    let speed = planner::quarantine::speed_vs_peers(&recent);
    Json(
        ledger
            .workers()
            .map(|w| WorkerStatus {
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
    /// Only tasks changed after this cursor (a list's `next`: `REV` or `REV.TASK`), oldest
    /// change first; with `wait`, blocks until there are some.
    since: Option<Cursor>,
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
        st.core.writer.linearize().await?;
    }
    let limit = q.limit.unwrap_or(100).min(100_000);
    let wait = parse_wait(&q.wait)?;
    let matches = |t: &Task| {
        states.as_ref().is_none_or(|s| s.contains(&t.state))
            && q.name.as_ref().is_none_or(|n| &t.spec.name == n)
            && label
                .as_ref()
                .is_none_or(|(k, v)| t.spec.labels.get(k) == Some(v))
            && q.since.is_none_or(|c| c.before(t))
    };
    let collect = |ledger: &Ledger, rev: u64| {
        let found: Vec<&Task> = match &ids {
            Some(ids) => {
                let mut found: Vec<&Task> = ids
                    .iter()
                    .filter_map(|id| ledger.task(*id))
                    .filter(|t| matches(t))
                    .collect();
                // Watching these ids: in the order of changes, so that a cursor after the last
                // one returned skips none of the rest.
                if q.since.is_some() {
                    found.sort_by_key(|t| (t.rev, t.id));
                }
                found.truncate(limit);
                found
            }
            None if q.since.is_some() => {
                let (rev, id) = q.since.map_or((0, TaskId(0)), |c| c.from);
                ledger
                    .changed_after(rev, id)
                    .filter(|t| matches(t))
                    .take(limit)
                    .collect()
            }
            None => ledger
                .tasks()
                .rev()
                .filter(|t| matches(t))
                .take(limit)
                .collect(),
        };
        // A watch cut short by `limit` goes on right after the last change returned: one entry
        // may change more tasks than a page holds, so the cursor names the task too.
        let (rev, next) = match (q.since, found.last()) {
            (Some(_), Some(last)) if found.len() == limit => (
                last.rev.saturating_sub(1),
                format!("{}.{}", last.rev, last.id.0),
            ),
            _ => (rev, rev.to_string()),
        };
        let reasons = found.len() <= MAX_REASONS;
        let etas = etas_for(&st, ledger, found.iter().copied());
        let tasks: Vec<TaskView> = found
            .into_iter()
            .map(|t| view(ledger, t, reasons, &etas))
            .collect();
        (wait.is_none() || !tasks.is_empty()).then_some(TaskList { rev, next, tasks })
    };
    if let Some(found) = poll(&st, wait, &collect).await {
        return Ok(Json(found));
    }
    // Waited in vain. Asked once more under the lock, so that the revision handed back is the
    // one of the state found empty: one read earlier and a change right after it was skipped.
    let guard = st.core.ledger.read();
    let rev = guard.applied_index();
    if let Some(found) = collect(&guard, rev) {
        return Ok(Json(found));
    }
    // Nothing changed: the watch goes on from where it was (a cursor inside a revision stays
    // valid), never from a point that would skip what it has not seen.
    Ok(Json(TaskList {
        rev,
        next: q.since.map_or_else(|| rev.to_string(), |c| c.to_string()),
        tasks: Vec::new(),
    }))
}

/// A watch position: every change before `from` (revision, task id) has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    from: (u64, TaskId),
}

impl Cursor {
    fn before(&self, t: &Task) -> bool {
        (t.rev, t.id) >= self.from
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a revision (REV) or a list's `next` (REV.TASK)");
        let num = |p: &str| p.parse::<u64>().map_err(|_| bad());
        Ok(match s.split_once('.') {
            None => Cursor {
                from: (num(s)?.saturating_add(1), TaskId(0)),
            },
            Some((rev, task)) => Cursor {
                from: (num(rev)?, TaskId(num(task)?.saturating_add(1))),
            },
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.from {
            (rev, TaskId(0)) => write!(f, "{}", rev.saturating_sub(1)),
            (rev, TaskId(t)) => write!(f, "{rev}.{}", t - 1),
        }
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
        st.core.writer.linearize().await?;
    }
    let found = poll(&st, wait, |l, _| match l.task(id) {
        None => Some(None),
        Some(t) if t.rev > since || wait.is_none() => Some(Some(view(
            l,
            t,
            true,
            &etas_for(&st, l, std::iter::once(t)),
        ))),
        Some(_) => None,
    })
    .await;
    match found {
        Some(Some(v)) => Ok(Json(v)),
        Some(None) => match crate::core::archive::task(&st.core.ledger, id) {
            Ok(t) => {
                let l = st.core.ledger.read();
                Ok(Json(view(&l, &t, true, &Default::default())))
            }
            Err(g) if g.is_never() => Err(ApiError::NotFound(format!(
                "task {id} does not exist; list tasks with GET /api/v1/tasks"
            ))),
            Err(g) => Err(ApiError::NotFound(g.to_string())),
        },
        // Waited without a change: answer with the task as it is.
        None => {
            let l = st.core.ledger.read();
            l.task(id)
                .map(|t| Json(view(&l, t, true, &etas_for(&st, &l, std::iter::once(t)))))
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
    let read = LogRead {
        task: parse_id(&id)?,
        attempt: q.attempt,
        stream: q.stream.as_deref().unwrap_or("stdout").parse()?,
        offset: q.offset.unwrap_or(0),
        limit: q.limit.unwrap_or(1 << 20).min(8 << 20),
    };
    Ok(Json(st.core.logs.read(read).await?))
}

pub async fn submit(
    State(st): State<AppState>,
    _auth: Authorized,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let specs = st.core.prepare(&req.tasks, req.allow_unschedulable).await?;
    let request_id = request_id_of(req.request_id)?;
    let r = st
        .core
        .writer
        .write(Command::Submit {
            request_id,
            tasks: specs,
            at: st.core.now(),
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
        .core
        .writer
        .write(Command::Cancel {
            task: id,
            at: st.core.now(),
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
        at: st.core.now(),
    };
    match st.core.writer.write(cmd).await?? {
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
    _auth: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_worker_state(&st, &id, WorkerState::Draining).await
}

/// `POST /api/v1/workers/{id}/unquarantine`: an operator clears a quarantined worker; its
/// track record starts afresh.
pub async fn unquarantine(
    State(st): State<AppState>,
    _auth: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let worker: NodeId = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "worker id {id:?} is not 16 hex digits; see GET /api/v1/workers"
        ))
    })?;
    let w = st.core.ledger.read().worker(worker).cloned();
    match w {
        None => Err(ApiError::NotFound(format!(
            "worker {worker} is not registered"
        ))),
        Some(w) if w.quarantine.is_none() => Err(ApiError::Conflict(format!(
            "worker {worker} is not quarantined"
        ))),
        Some(w) => {
            st.core
                .writer
                .write(Command::SetQuarantine {
                    worker,
                    reason: None,
                    at: st.core.now(),
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
    _auth: Admin,
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
    let since = testmesh_consensus::UnixMillis(q.since.unwrap_or(0));
    let (nodes, malformed) = st
        .core
        .stats
        .read(move |s| (s.view(node, since), s.malformed))
        .await
        .ok_or_else(|| ApiError::Unavailable("the node is shutting down".into()))?;
    Ok(Json(
        serde_json::json!({ "nodes": nodes, "malformed_dropped": malformed }),
    ))
}
