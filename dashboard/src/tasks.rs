//! The tasks pages: the queue, what runs and what finished (`/dashboard/tasks`), and one task
//! with every attempt and the tail of its output (`/dashboard/tasks/{id}`).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use testmesh_consensus::task::Task;

use std::collections::BTreeMap;

use crate::view::View;
use crate::views::QueueEta;
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

fn rows(h: &mut String, id: &str, tasks: &[Task], etas: Option<(&BTreeMap<u64, QueueEta>, u64)>) {
    let _ = write!(
        h,
        "<table id={id}><tr><th>id</th><th>name</th><th>state</th><th>attempt</th><th>worker</th>{}<th>command</th></tr>",
        if etas.is_some() {
            "<th>position</th><th>starts</th><th>finishes</th><th>confidence</th>"
        } else {
            ""
        }
    );
    let cols = if etas.is_some() { 10 } else { 6 };
    if tasks.is_empty() {
        let _ = write!(h, "<tr><td colspan={cols}>none</td></tr>");
    }
    for t in tasks {
        let worker = t
            .attempts
            .last()
            .map(|a| a.worker.to_string())
            .unwrap_or_default();
        let eta = match etas {
            Some((etas, now)) => match etas.get(&t.id.0) {
                Some(e) => format!(
                    "<td class=position>{}</td><td class=starts data-ms={}>{}</td><td class=finishes data-ms={}>{}</td><td>{:.0}%</td>",
                    e.position,
                    e.start_ms,
                    until(now, e.start_ms),
                    e.finish_ms,
                    until(now, e.finish_ms),
                    e.confidence * 100.0
                ),
                None => "<td>–</td><td colspan=3>no estimate: fits no worker now</td>".to_string(),
            },
            None => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td><a href='/dashboard/tasks/{id}'>{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>{eta}<td><code>{}</code></td></tr>",
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

/// "in 2 min 5 s (14:03:20)" or "now".
fn until(now_ms: u64, at_ms: u64) -> String {
    let s = at_ms.saturating_sub(now_ms) / 1000;
    let clock = crate::view::clock(at_ms);
    let time = clock.split(' ').nth(1).unwrap_or(&clock).to_string();
    match s {
        0 => "now".to_string(),
        1..60 => format!("in {s} s ({time})"),
        60..3600 => format!("in {} min {} s ({time})", s / 60, s % 60),
        _ => format!("in {:.1} h ({time} UTC)", s as f64 / 3600.0),
    }
}

/// The list page: the queue (with positions and estimated start and finish), what runs,
/// what finished; `filter` keeps tasks by name and state.
pub fn render_list(
    tasks: &[Task],
    etas: &BTreeMap<u64, QueueEta>,
    now_ms: u64,
    view: Option<&View>,
) -> String {
    let keep = |t: &&Task| view.is_none_or(|v| v.filter.task(&t.spec.name, &t.state.to_string()));
    let (mut queued, mut running, mut done) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks.iter().filter(keep) {
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
    if !queued.is_empty() {
        h.push_str("<p>Estimated from the learned run times of the tasks ahead and running, and the pool's capacity as it is now.</p>");
    }
    rows(&mut h, "queued", &queued, Some((etas, now_ms)));
    let _ = write!(h, "<h2>Running ({})</h2>", running.len());
    rows(&mut h, "running", &running, None);
    h.push_str("<h2>Finished (newest first)</h2>");
    rows(&mut h, "finished", &done, None);
    let body = format!(
        "<style>pre{{background:#f6f6f6;padding:.5rem;overflow:auto;max-height:20rem}}</style>{h}"
    );
    crate::view_page("Tasks", "/dashboard/tasks", view, true, &body)
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

pub async fn list(State(src): State<Arc<dyn Source>>, q: crate::Q) -> Response {
    let view = match crate::view_of(src.as_ref(), q).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let etas = src.etas();
    Html(render_list(&src.tasks(ROWS), &etas, src.now(), Some(&view))).into_response()
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
