//! The testmesh web dashboard: pages rendered on the server from a node's own replica, with no
//! external requests (no CDN, no build step). It reads through [`Source`] and knows nothing of
//! Raft or the network.
//!
//! Today: the overview page (cluster, workers with reserved vs total capacity, task counts,
//! recent tasks, charts), refreshed by the browser every few seconds, and the charts as SVG
//! (`/dashboard/charts/NAME.svg`, see [`charts`]).

pub mod charts;
mod live;
mod tasks;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use testmesh_consensus::model::Worker;
use testmesh_consensus::scaling::{CloudInstance, DecisionRecord};
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
    /// Every node's statistics since `now - window_ms`, and `now` (Unix milliseconds).
    fn series(&self, window_ms: u64) -> (u64, Vec<charts::NodeSeries>);
    /// Cores in use per worker id, from the latest samples.
    fn used_cores(&self) -> Vec<(String, f64)>;
    /// Recorded scaling decisions (oldest first) and the instances.
    fn scaling(&self) -> (Vec<DecisionRecord>, Vec<CloudInstance>);
    /// The pending queue in order, then the newest other tasks, at most `limit` of each.
    fn tasks(&self, limit: usize) -> Vec<Task>;
    fn task(&self, id: u64) -> Option<Task>;
}

/// Charts available under `/dashboard/charts/NAME.svg`.
pub const CHARTS: [&str; 6] = [
    "cpu",
    "memory",
    "gpu",
    "gpu_memory",
    "allocation",
    "scaling",
];
/// How far back the time charts look.
const WINDOW_MS: u64 = 3_600_000;

/// The dashboard's routes; live pages get an update every `interval`.
pub fn router(source: Arc<dyn Source>, interval: std::time::Duration) -> Router {
    let live = Router::new()
        .route("/dashboard/live", get(live::upgrade))
        .with_state(live::Live {
            source: source.clone(),
            interval,
        });
    Router::new()
        .route("/", get(overview))
        .route("/dashboard/charts/{file}", get(chart))
        .route("/dashboard/tasks", get(tasks::list))
        .route("/dashboard/tasks/{id}", get(tasks::one))
        .with_state(source)
        .merge(live)
}

/// One chart as SVG.
pub fn render_chart(src: &dyn Source, name: &str) -> Result<Option<String>, charts::ChartError> {
    let metric = charts::Metric::ALL.into_iter().find(|m| m.name() == name);
    if let Some(m) = metric {
        let (now, series) = src.series(WINDOW_MS);
        return charts::heatmap(&series, m, now, WINDOW_MS).map(Some);
    }
    match name {
        "allocation" => charts::allocation(&src.overview().workers, &src.used_cores()).map(Some),
        "scaling" => {
            let (decisions, instances) = src.scaling();
            let (now, _) = src.series(0);
            charts::scaling(&decisions, &instances, now, WINDOW_MS).map(Some)
        }
        _ => Ok(None),
    }
}

async fn chart(State(src): State<Arc<dyn Source>>, Path(file): Path<String>) -> Response {
    let not_found = |m: String| (StatusCode::NOT_FOUND, m).into_response();
    let Some(name) = file.strip_suffix(".svg") else {
        return not_found(format!(
            "{file}: charts are served as NAME.svg (PNG export is not available yet); names: {}",
            CHARTS.join(", ")
        ));
    };
    match render_chart(src.as_ref(), name) {
        Ok(Some(svg)) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(None) => not_found(format!("no chart {name:?}; charts: {}", CHARTS.join(", "))),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub(crate) fn esc(s: &str) -> String {
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

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}.bar{background:#eee;width:10rem;height:.8rem;display:inline-block}.bar i{background:#3a7;height:100%;display:block}code{background:#f4f4f4;padding:0 .2rem}";

/// Renders the overview page.
pub fn render_overview(o: &Overview) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'><title>testmesh</title><style>{STYLE}</style></head><body><h1>testmesh</h1><p>node <code>{}</code> · leader <code id=leader>{}</code> · term <span id=term>{}</span> · <span id=live>connecting…</span></p>",
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
            "<td id=count-{s}>{}</td>",
            o.tasks_by_state.get(&s).copied().unwrap_or(0)
        );
    }
    h.push_str("</tr></table><h3>Recent</h3><table id=recent><tr><th>id</th><th>name</th><th>state</th><th>attempt</th><th>command</th></tr>");
    for t in &o.recent {
        let _ = write!(
            h,
            "<tr><td><a href='/dashboard/tasks/{id}'>{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&t.spec.name),
            t.state,
            t.attempt,
            esc(&t.spec.argv.join(" ")),
            id = t.id
        );
    }
    h.push_str(
        "</table><p><a href='/dashboard/tasks'>all tasks</a></p><h2>Charts</h2><div id=charts>",
    );
    for c in CHARTS {
        let _ = write!(
            h,
            "<figure><img src='/dashboard/charts/{c}.svg' alt='{c} chart' style='max-width:100%'><figcaption><a href='/dashboard/charts/{c}.svg'>{c}.svg</a></figcaption></figure>"
        );
    }
    h.push_str("</div><script>");
    h.push_str(live::SCRIPT);
    h.push_str("</script></body></html>");
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
        assert!(h.contains("&lt;script&gt;"));
        assert_eq!(
            h.matches("<script>").count(),
            1,
            "only the page's own live script"
        );
        assert!(h.contains("<th>pending</th>"));
    }
}
