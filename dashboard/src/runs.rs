//! The runs pages: runs newest first with their per-test counts (`/dashboard/runs`), and one
//! run with its tasks and every test, failures first (`/dashboard/runs/{id}`).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use testmesh_consensus::runs::{Run, summarise};
use testmesh_consensus::suite::{TestResult, merge};
use testmesh_consensus::task::Task;

use crate::{Source, esc};

/// Runs on the list page.
const RUNS: usize = 100;
/// Test rows on a run's page (failures come first, so none is cut before a pass).
const TEST_ROWS: usize = 2000;

fn page_of(title: &str, body: &str) -> String {
    crate::page(title, "/dashboard/runs", body)
}

fn status(tasks: &[Task]) -> &'static str {
    let s = summarise(tasks);
    if s.passed {
        "passed"
    } else if s.done {
        "failed"
    } else {
        "running"
    }
}

pub fn render_list(runs: &[(Run, Vec<Task>)]) -> String {
    let mut h = String::from(
        "<table id=runs><tr><th>run</th><th>name</th><th>status</th><th>tasks</th><th>failed</th><th>flaky</th><th>tests</th><th>failed tests</th><th>flaky tests</th></tr>",
    );
    if runs.is_empty() {
        h.push_str(
            "<tr><td colspan=9>no runs yet: <code>testmesh run</code> submits one</td></tr>",
        );
    }
    for (r, tasks) in runs {
        let s = summarise(tasks);
        let (_, n) = merge(tasks);
        let _ = write!(
            h,
            "<tr class={st}><td><a href='/dashboard/runs/{id}'>{id}</a></td><td>{name}</td><td>{st}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.total,
            s.failed,
            s.flaky,
            n.total,
            n.failed + n.errors,
            n.flaky,
            st = status(tasks),
            id = r.id,
            name = esc(&r.name)
        );
    }
    h.push_str("</table>");
    page_of("Runs", &h)
}

pub fn render_run(run: &Run, tasks: &[Task]) -> String {
    let s = summarise(tasks);
    let (tests, n) = merge(tasks);
    let mut h = String::new();
    let _ = write!(
        h,
        "<p>status <b id=status>{}</b> · {} tasks, {} failed, {} flaky · tests: {} total, {} passed, {} failed, {} errors, {} skipped, {} flaky</p>",
        status(tasks),
        s.total,
        s.failed,
        s.flaky,
        n.total,
        n.passed,
        n.failed,
        n.errors,
        n.skipped,
        n.flaky
    );
    if !run.metadata.is_empty() {
        h.push_str("<p>");
        for (k, v) in &run.metadata {
            let _ = write!(h, "<code>{}={}</code> ", esc(k), esc(v));
        }
        h.push_str("</p>");
    }
    h.push_str("<h2>Tasks</h2><table id=tasks><tr><th>task</th><th>name</th><th>state</th><th>attempts</th><th>worker</th></tr>");
    for t in tasks {
        let worker = t
            .attempts
            .last()
            .map(|a| a.provenance.hostname.clone())
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td><a href='/dashboard/tasks/{id}'>{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.spec.name),
            t.state,
            t.attempts.len(),
            esc(&worker),
            id = t.id
        );
    }
    h.push_str("</table>");
    if !tests.is_empty() {
        h.push_str("<h2>Tests</h2><table id=tests><tr><th>result</th><th>test</th><th>shard</th><th>worker</th><th>time</th><th>message</th></tr>");
        for t in tests.iter().take(TEST_ROWS) {
            let result = if t.flaky {
                "flaky"
            } else {
                match t.result {
                    TestResult::Passed => "passed",
                    TestResult::Failed => "failed",
                    TestResult::Error => "error",
                    TestResult::Skipped => "skipped",
                }
            };
            let _ = write!(
                h,
                "<tr class={result}><td>{result}</td><td><code>{}</code></td><td><a href='/dashboard/tasks/{}'>{}</a></td><td>{}</td><td>{:.3} s</td><td>{}</td></tr>",
                esc(&t.id),
                t.task,
                esc(&t.shard),
                esc(&t.hostname),
                t.time_ms as f64 / 1000.0,
                esc(t.message.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
        if tests.len() > TEST_ROWS {
            let _ = write!(
                h,
                "<p>{} more passing tests: <code>testmesh runs show {} --json</code> lists them all</p>",
                tests.len() - TEST_ROWS,
                run.id
            );
        }
    }
    page_of(&format!("Run {} · {}", run.id, run.name), &h)
}

pub async fn list(State(src): State<Arc<dyn Source>>) -> Html<String> {
    Html(render_list(&src.runs(RUNS)))
}

pub async fn one(State(src): State<Arc<dyn Source>>, Path(id): Path<String>) -> Response {
    let Ok(n) = id.parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("run id {id:?} is not a number"),
        )
            .into_response();
    };
    match src.run(n) {
        Some((r, tasks)) => Html(render_run(&r, &tasks)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no run {n}")).into_response(),
    }
}
