//! The testmesh web dashboard: pages rendered on the server from a node's own replica, with no
//! external requests (no CDN, no build step). It reads through [`Source`] and knows nothing of
//! Raft or the network.
//!
//! Today: the overview page (cluster, workers with reserved vs total capacity, task counts,
//! recent tasks), refreshed by the browser every few seconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use testmesh_consensus::model::Worker;
use testmesh_consensus::task::{Task, TaskState};

/// What the overview shows.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub node: String,
    pub leader: Option<String>,
    pub term: u64,
    pub workers: Vec<Worker>,
    pub tasks_by_state: BTreeMap<TaskState, usize>,
    /// Newest first.
    pub recent: Vec<Task>,
}

/// Read-only access to the cluster as this node sees it.
pub trait Source: Send + Sync + 'static {
    fn overview(&self) -> Overview;
}

pub fn router(source: Arc<dyn Source>) -> Router {
    Router::new().route("/", get(overview)).with_state(source)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}.bar{background:#eee;width:10rem;height:.8rem;display:inline-block}.bar i{background:#3a7;height:100%;display:block}code{background:#f4f4f4;padding:0 .2rem}";

/// Renders the overview page.
pub fn render_overview(o: &Overview) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=5><meta name=viewport content='width=device-width,initial-scale=1'><title>testmesh</title><style>{STYLE}</style></head><body><h1>testmesh</h1><p>node <code>{}</code> · leader <code>{}</code> · term {}</p>",
        esc(&o.node),
        esc(o.leader.as_deref().unwrap_or("none")),
        o.term
    );
    h.push_str("<h2>Workers</h2><table id=workers><tr><th>worker</th><th>host</th><th>state</th><th>cpu reserved</th><th>memory reserved</th><th>GPUs</th></tr>");
    for w in &o.workers {
        let c = &w.capacity;
        let a = &w.allocated;
        let bar = |p: f64| {
            format!("<span class=bar title='{p:.0}%'><i style='width:{p:.0}%'></i></span> {p:.0}%")
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:?}</td><td>{} of {}</td><td>{} of {}</td><td>{} ({} reserved)</td></tr>",
            w.id,
            esc(&w.hardware.hostname),
            w.state,
            bar(pct(a.cpu.0, c.cpu.0)),
            c.cpu,
            bar(pct(a.memory.0, c.memory.0)),
            c.memory,
            c.gpus
                .iter()
                .map(|g| esc(&g.model))
                .collect::<Vec<_>>()
                .join(", "),
            a.gpus.len()
        );
    }
    h.push_str("</table><h2>Tasks</h2><table id=task-counts><tr>");
    for s in TaskState::ALL {
        let _ = write!(h, "<th>{s}</th>");
    }
    h.push_str("</tr><tr>");
    for s in TaskState::ALL {
        let _ = write!(
            h,
            "<td>{}</td>",
            o.tasks_by_state.get(&s).copied().unwrap_or(0)
        );
    }
    h.push_str("</tr></table><h3>Recent</h3><table id=recent><tr><th>id</th><th>name</th><th>state</th><th>attempt</th><th>command</th></tr>");
    for t in &o.recent {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            t.id,
            esc(&t.spec.name),
            t.state,
            t.attempt,
            esc(&t.spec.argv.join(" "))
        );
    }
    h.push_str("</table></body></html>");
    h
}

async fn overview(State(src): State<Arc<dyn Source>>) -> Html<String> {
    Html(render_overview(&src.overview()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_users_typed() {
        let mut o = Overview::default();
        o.recent.push(Task {
            id: testmesh_consensus::TaskId(1),
            spec: testmesh_consensus::task::TaskSpec {
                name: "<script>".into(),
                argv: vec!["echo".into(), "<b>".into()],
                ..Default::default()
            },
            request_id: String::new(),
            state: TaskState::Pending,
            attempt: 0,
            attempts: vec![],
            submitted_at: Default::default(),
            finished_at: None,
            cancel_requested: false,
            handed_back: 0,
            rev: 0,
        });
        let h = render_overview(&o);
        assert!(h.contains("&lt;script&gt;") && !h.contains("<script>"));
        assert!(h.contains("<th>pending</th>"));
    }
}
