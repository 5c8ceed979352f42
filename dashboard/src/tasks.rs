//! The tasks pages: the queue, what runs and what finished (`/dashboard/tasks`), and one task
//! with every attempt and the tail of its output (`/dashboard/tasks/{id}`).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use testmesh_consensus::task::Task;

use crate::{Source, esc};

/// Rows per table on the list page.
const ROWS: usize = 200;

/// A tasks page, with the output blocks styled.
fn page_of(title: &str, body: &str) -> String {
    let body = format!(
        "<style>pre{{background:#f6f6f6;padding:.5rem;overflow:auto;max-height:20rem}}</style>{body}"
    );
    crate::page(title, "/dashboard/tasks", &body)
}

fn rows(h: &mut String, id: &str, tasks: &[Task]) {
    let _ = write!(
        h,
        "<table id={id}><tr><th>id</th><th>name</th><th>state</th><th>attempt</th><th>worker</th><th>command</th></tr>"
    );
    if tasks.is_empty() {
        h.push_str("<tr><td colspan=6>none</td></tr>");
    }
    for t in tasks {
        let worker = t
            .attempts
            .last()
            .map(|a| a.worker.to_string())
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td><a href='/dashboard/tasks/{id}'>{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(&t.spec.name),
            t.state,
            t.attempt,
            worker,
            esc(&t.spec.argv.join(" ")),
            id = t.id
        );
    }
    h.push_str("</table>");
}

/// The list page.
pub fn render_list(tasks: &[Task]) -> String {
    let (mut queued, mut running, mut done) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        if t.state.is_final() {
            done.push(t.clone());
        } else if t.state.is_active() {
            running.push(t.clone());
        } else {
            queued.push(t.clone());
        }
    }
    let mut h = String::new();
    let _ = write!(h, "<h2>Queue ({})</h2>", queued.len());
    rows(&mut h, "queued", &queued);
    let _ = write!(h, "<h2>Running ({})</h2>", running.len());
    rows(&mut h, "running", &running);
    h.push_str("<h2>Finished (newest first)</h2>");
    rows(&mut h, "finished", &done);
    page_of("Tasks", &h)
}

/// One task.
pub fn render_task(t: &Task) -> String {
    let mut h = String::new();
    let r = &t.spec.requirements;
    let _ = write!(
        h,
        "<p>state <b id=state>{}</b> · attempt {} · submitted {} · command <code>{}</code></p><p>requires cpu {} · memory {} · gpu {:?}</p>",
        t.state,
        t.attempt,
        t.submitted_at.0,
        esc(&t.spec.argv.join(" ")),
        r.cpu,
        r.memory,
        r.gpu
    );
    for a in t.attempts.iter().rev() {
        let _ = write!(
            h,
            "<h2>Attempt {} on <code>{}</code></h2>",
            a.number, a.worker
        );
        match &a.outcome {
            Some(o) => {
                let _ = write!(
                    h,
                    "<p>{} · exit {} · peak RSS {} · CPU {} ms · peak GPU memory {}{}</p><h3>stdout (tail)</h3><pre class=stdout>{}</pre><h3>stderr (tail)</h3><pre class=stderr>{}</pre>",
                    o.state,
                    o.exit_code.map_or("-".to_string(), |c| c.to_string()),
                    o.peak_rss,
                    o.cpu_time_ms,
                    o.peak_gpu_memory,
                    o.message
                        .as_deref()
                        .map(|m| format!(" · {}", esc(m)))
                        .unwrap_or_default(),
                    esc(&o.stdout_tail),
                    esc(&o.stderr_tail)
                );
            }
            None => h.push_str(
                "<p>running: follow its output with <code>testmesh logs ID -f</code></p>",
            ),
        }
    }
    page_of(&format!("Task {} · {}", t.id, t.spec.name), &h)
}

pub async fn list(State(src): State<Arc<dyn Source>>) -> Html<String> {
    Html(render_list(&src.tasks(ROWS)))
}

pub async fn one(State(src): State<Arc<dyn Source>>, Path(id): Path<String>) -> Response {
    let Ok(n) = id.parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("task id {id:?} is not a number"),
        )
            .into_response();
    };
    match src.task(n) {
        Some(t) => Html(render_task(&t)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no task {n}")).into_response(),
    }
}
