//! `GET /api/v1/runs/{id}/report.html|pdf` (and `testmesh report --run ID`): one run's report —
//! how it went, every task's result with its run time against the prediction, the metrics the
//! tasks reported, and where they ran. Built from the dashboard's sections, so the HTML and the
//! PDF are the same document.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use testmesh_consensus::task::Task;
use testmesh_dashboard::doc::{Document, Section};
use testmesh_dashboard::views::Table;

use super::AppState;
use super::error::ApiError;
use crate::results::{self, RunResults, iso8601};
use testmesh_planner::predictor::PredictionPath;
use testmesh_planner::predictor::history::spec_features;

fn secs(ms: Option<u64>) -> String {
    ms.map_or("–".into(), |m| format!("{:.1} s", m as f64 / 1000.0))
}

/// The report of run `r`; `predicted` holds the predicted run time (s) per task id.
pub fn document(r: &RunResults, predicted: &BTreeMap<u64, f64>) -> Document {
    let s = &r.summary;
    let counts: Vec<String> = s.by_state.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mut summary = Section::new("summary", "Summary").text(format!(
        "{} tasks: {}{}. {}",
        s.total,
        counts.join(", "),
        if s.flaky > 0 {
            format!("; {} flaky (failed, then passed on a retry)", s.flaky)
        } else {
            String::new()
        },
        if s.passed {
            "The run PASSED."
        } else if s.done {
            "The run FAILED."
        } else {
            "The run is still going."
        }
    ));
    let mut meta = Table::new("metadata", &["key", "value"]);
    meta.row(vec!["run".into(), r.run.to_string()]);
    meta.row(vec!["created".into(), iso8601(r.created_at) + " UTC"]);
    for (k, v) in &r.metadata {
        meta.row(vec![k.clone(), v.clone()]);
    }
    summary = summary.table(meta);

    let mut tasks = Table::new(
        "task-results",
        &[
            "task",
            "name",
            "state",
            "run time",
            "predicted",
            "ratio",
            "host",
            "retries",
            "flaky",
        ],
    );
    let mut slow = 0;
    for t in &r.tasks {
        let p = predicted.get(&t.task).copied();
        let ratio = match (t.duration_ms, p) {
            (Some(d), Some(p)) if p > 0.0 => {
                let x = d as f64 / 1000.0 / p;
                slow += usize::from(x > 2.0);
                format!("{x:.2}×")
            }
            _ => "–".into(),
        };
        tasks.row(vec![
            t.task.to_string(),
            t.name.clone(),
            t.state.to_string(),
            secs(t.duration_ms),
            p.map_or("–".into(), |p| format!("{p:.1} s")),
            ratio,
            t.attempts
                .last()
                .map(|a| a.provenance.hostname.clone())
                .unwrap_or_default(),
            t.retries.to_string(),
            if t.flaky {
                "flaky".into()
            } else {
                String::new()
            },
        ]);
    }
    let results = Section::new("results", "Task results")
        .text(format!(
            "Run time against what the predictor expected from history; {slow} task(s) took more than twice as long."
        ))
        .table(tasks);

    let mut metrics = Table::new("metrics", &["task", "name", "metric", "value", "unit"]);
    for t in &r.tasks {
        for m in &t.metrics {
            metrics.row(vec![
                t.task.to_string(),
                t.name.clone(),
                m.name.clone(),
                m.value.to_string(),
                m.unit.clone(),
            ]);
        }
    }
    let metrics = Section::new("metrics", "Metrics the tasks reported")
        .text("Lines TESTMESH_METRIC name=value unit on a task's output.")
        .table(metrics);

    // Where it ran: one row per distinct environment.
    let mut envs: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for t in &r.tasks {
        for a in &t.attempts {
            let p = &a.provenance;
            *envs
                .entry(vec![
                    a.worker.clone(),
                    p.hostname.clone(),
                    p.cpu_model.clone(),
                    p.gpu_models.join(", "),
                    p.gpu_driver.clone(),
                    p.cuda_version.clone(),
                    p.version.clone(),
                ])
                .or_default() += 1;
        }
    }
    let mut where_ = Table::new(
        "provenance",
        &[
            "worker", "host", "CPU", "GPUs", "driver", "CUDA", "testmesh", "attempts",
        ],
    );
    for (mut row, n) in envs {
        row.push(n.to_string());
        where_.row(row);
    }
    let provenance = Section::new("provenance", "Where the attempts ran").table(where_);
    Document {
        title: format!("testmesh run {}: {}", r.run, r.name),
        subtitle: format!("{} tasks, created {} UTC", s.total, iso8601(r.created_at)),
        sections: vec![summary, results, metrics, provenance],
    }
}

async fn build(st: &AppState, id: &str) -> Result<Document, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a run id (a number)")))?;
    let models = st.core.models.fresh().await.ok();
    let archived = if st.core.ledger.read().run(id).is_none() {
        Some(crate::core::archive::run(&st.core.ledger, id).map_err(|g| {
            ApiError::NotFound(if g.is_never() {
                format!("run {id} does not exist; see GET /api/v1/runs")
            } else {
                g.to_string()
            })
        })?)
    } else {
        None
    };
    let (r, predicted) = {
        let l = st.core.ledger.read();
        let (run, tasks): (&testmesh_consensus::runs::Run, Vec<&Task>) = match &archived {
            Some((run, tasks)) => (run, tasks.iter().collect()),
            None => {
                let run = l.run(id).ok_or_else(|| {
                    ApiError::NotFound(format!("run {id} was archived just now; ask again"))
                })?;
                (run, run.tasks.iter().filter_map(|t| l.task(*t)).collect())
            }
        };
        let mut predicted = BTreeMap::new();
        if let Some(m) = &models {
            for t in &tasks {
                let p = m.duration.predict(&spec_features(&t.spec));
                if p.path != PredictionPath::Requested {
                    predicted.insert(t.id.0, p.value);
                }
            }
        }
        (results::results(run, &tasks), predicted)
    };
    Ok(document(&r, &predicted))
}

pub async fn html(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = build(&st, &id).await?;
    Ok(Html(testmesh_dashboard::doc::to_html(&d)).into_response())
}

pub async fn pdf(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let d = build(&st, &id).await?;
    match tokio::task::spawn_blocking(move || testmesh_dashboard::pdf::to_pdf(&d)).await {
        Ok(Ok(bytes)) => Ok(([(header::CONTENT_TYPE, "application/pdf")], bytes).into_response()),
        Ok(Err(e)) => Ok((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
        Err(e) => Ok((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
}
