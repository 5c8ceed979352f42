//! The testmesh web dashboard: pages rendered on the server from a node's own replica, with no
//! external requests (no CDN, no build step). It reads through [`Source`] and knows nothing of
//! Raft or the network.
//!
//! Pages: overview, utilisation, allocation, scaling, efficiency, cost, tasks, insights; every
//! chart as SVG or PNG (`/dashboard/charts/NAME.svg|png`, see [`charts`]); the report as HTML
//! or PDF (`/dashboard/report.html|pdf?since=1h`). Pages update live over a WebSocket.

pub mod anomaly;
pub mod charts;
pub mod doc;
pub mod export;
mod live;
pub mod pdf;
mod picker;
mod runs;
pub mod sections;
mod tasks;
pub mod view;
pub mod views;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use testmesh_consensus::model::Worker;
use testmesh_consensus::task::{Task, TaskState};

use crate::charts::Style;
use crate::doc::{Document, Section};
use crate::view::{View, ViewQuery};
use crate::views::{Analysis, ReservedSpan, ScalingView, WorkerUsage};

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
    /// This node's clock, Unix milliseconds.
    fn now(&self) -> u64;
    fn overview(&self) -> Overview;
    /// Every node's statistics since `now - window_ms`, and `now` (Unix milliseconds).
    fn series(&self, window_ms: u64) -> BoxFuture<'_, (u64, Vec<charts::NodeSeries>)>;
    /// Each worker's use now, from its latest sample.
    fn usage(&self) -> BoxFuture<'_, Vec<WorkerUsage>>;
    /// The scaling policy's budget, decisions (oldest first) and instances.
    fn scaling(&self) -> ScalingView;
    /// Reservations of attempts that ran at any time since `since_ms`.
    fn reservations(&self, since_ms: u64) -> Vec<ReservedSpan>;
    /// The pending queue in order, then the newest other tasks, at most `limit` of each.
    fn tasks(&self, limit: usize) -> Vec<Task>;
    fn task(&self, id: u64) -> Option<Task>;
    /// The planner's analysis of the last `window_ms`.
    fn analysis(&self, window_ms: u64) -> BoxFuture<'_, Analysis>;
    /// The newest runs (at most `limit`), each with its tasks.
    fn runs(&self, _limit: usize) -> Vec<(testmesh_consensus::runs::Run, Vec<Task>)> {
        Vec::new()
    }
    /// One run with its tasks, live or archived.
    fn run(&self, _id: u64) -> Option<(testmesh_consensus::runs::Run, Vec<Task>)> {
        None
    }
    /// Each worker's run time against its peers' on the same task names (1.0 = as fast), by
    /// node id, from the recent execution history.
    fn speed_vs_peers(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Queue positions and estimated starts of the pending tasks, by task id.
    fn etas(&self) -> BTreeMap<u64, views::QueueEta> {
        BTreeMap::new()
    }
    /// When the oldest statistics this node holds were taken (the default window fits them).
    fn first_data_ms(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { None })
    }
}

/// Charts available under `/dashboard/charts/NAME.svg` (and `.png`).
pub const CHARTS: [&str; 10] = [
    "trends",
    "cpu",
    "memory",
    "gpu",
    "gpu_memory",
    "allocation",
    "scaling",
    "efficiency",
    "efficiency_by_task",
    "cost",
];

pub fn chart_title(name: &str) -> &'static str {
    match name {
        "trends" => "Fleet utilisation, trends and anomalies",
        "cpu" => "CPU utilisation per worker",
        "memory" => "Memory per worker",
        "gpu" => "GPU utilisation per worker",
        "gpu_memory" => "GPU memory per worker",
        "allocation" => "Resource allocation: used, reserved, free",
        "scaling" => "Scaling history",
        "efficiency" => "Efficiency: reserved against used over time",
        "efficiency_by_task" => "Efficiency per task name",
        "cost" => "Cloud instances and cost",
        _ => "Chart",
    }
}

pub use view::WINDOW_MS;

/// The pages, in the order of the navigation bar: path, label.
const PAGES: [(&str, &str); 9] = [
    ("/", "overview"),
    ("/dashboard/utilisation", "utilisation"),
    ("/dashboard/allocation", "allocation"),
    ("/dashboard/scaling", "scaling"),
    ("/dashboard/efficiency", "efficiency"),
    ("/dashboard/cost", "cost"),
    ("/dashboard/tasks", "tasks"),
    ("/dashboard/runs", "runs"),
    ("/dashboard/insights", "insights"),
];

type Src = Arc<dyn Source>;

/// The dashboard's routes; live pages get an update every `interval`.
pub fn router(source: Src, interval: std::time::Duration) -> Router {
    let live = Router::new()
        .route("/dashboard/live", get(live::upgrade))
        .with_state(live::Live {
            source: source.clone(),
            interval,
        });
    Router::new()
        .route("/", get(overview))
        .route("/dashboard/utilisation", get(utilisation))
        .route("/dashboard/allocation", get(allocation))
        .route("/dashboard/scaling", get(scaling))
        .route("/dashboard/efficiency", get(efficiency))
        .route("/dashboard/cost", get(cost))
        .route("/dashboard/insights", get(insights))
        .route("/dashboard/charts/{file}", get(chart))
        .route("/dashboard/report.html", get(report_html))
        .route("/dashboard/report.pdf", get(report_pdf))
        .route("/dashboard/tasks", get(tasks::list))
        .route("/dashboard/tasks/{id}", get(tasks::one))
        .route("/dashboard/runs", get(runs::list))
        .route("/dashboard/runs/{id}", get(runs::one))
        .with_state(source)
        .merge(live)
}

pub(crate) type Q = Result<Query<ViewQuery>, axum::extract::rejection::QueryRejection>;

/// The view a query asks for, or a 400 saying what was wrong.
pub(crate) async fn view_of(src: &dyn Source, q: Q) -> Result<View, Response> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let q = q.map_err(|e| {
        bad(format!(
            "{e}; parameters: window (e.g. 1h), from, to, label (key=value), gpu, state, name, sort, compare (1d or 7d)"
        ))
    })?;
    let first = src.first_data_ms().await;
    view::resolve(&q.0, src.now(), first).map_err(bad)
}

async fn chart(State(src): State<Src>, Path(file): Path<String>, q: Q) -> Response {
    let not_found = |m: String| (StatusCode::NOT_FOUND, m).into_response();
    let (name, png) = match file.rsplit_once('.') {
        Some((n, "svg")) => (n, false),
        Some((n, "png")) => (n, true),
        _ => {
            return not_found(format!(
                "{file}: charts are served as NAME.svg or NAME.png; names: {}",
                CHARTS.join(", ")
            ));
        }
    };
    let view = match view_of(src.as_ref(), q).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Pages swap in the compact SVG; the PNG is drawn from vectors.
    let style = if png { Style::Vector } else { Style::Compact };
    let svg = match sections::chart(src.as_ref(), name, &view, style).await {
        Ok(Some(svg)) => svg,
        Ok(None) => return not_found(format!("no chart {name:?}; charts: {}", CHARTS.join(", "))),
        Err(e) => return failed(e),
    };
    if !png {
        return ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response();
    }
    match tokio::task::spawn_blocking(move || export::png(&svg, 2.0)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// The whole report: every chart and table of a view.
pub async fn report(src: &dyn Source, view: &View) -> Result<Document, charts::ChartError> {
    let o = src.overview();
    let now = src.now();
    let window_ms = now.saturating_sub(view.span.start_ms()).max(1);
    let a = src.analysis(window_ms).await;
    let s = src.scaling();
    let mut sections = sections::insight_sections(&a);
    // The summary first, then every chart, then the tables.
    let rest = sections.split_off(1);
    for name in CHARTS.iter().filter(|c| **c != "cost") {
        sections.push(sections::chart_section(src, name, view, Style::Vector).await?);
    }
    let cost_svg = sections::chart(src, "cost", view, Style::Vector)
        .await?
        .unwrap_or_default();
    let mut chart_cost = Section::new("chart-cost", chart_title("cost"));
    chart_cost.blocks = sections::cost_section(&s, &view.span, cost_svg).blocks;
    sections.push(chart_cost);
    let mut outcomes = views::Table::new("task-outcomes", &["state", "tasks"]);
    for (state, n) in &o.tasks_by_state {
        outcomes.row(vec![state.to_string(), n.to_string()]);
    }
    sections.push(Section::new("tasks", "Task outcomes").table(outcomes));
    sections.push(Section::new("utilisation", "Utilisation now").table(a.workers_now.clone()));
    sections.push(
        Section::new("efficiency", "Efficiency: reserved against used")
            .table(sections::efficiency_table(&a))
            .table(a.suggestions.clone()),
    );
    sections.push(sections::scaling_section(&s, now, "Scaling decisions"));
    let (_, found) = sections::anomalies(src, view, charts::Metric::Cpu, true).await;
    sections.push(sections::anomaly_section(&found, &view.span));
    sections.extend(rest);
    Ok(Document {
        title: "testmesh report".into(),
        subtitle: format!(
            "node {}, leader {}, term {}, {} workers; {}",
            o.node,
            o.leader.as_deref().unwrap_or("none"),
            o.term,
            o.workers.len(),
            view.span.caption()
        ),
        sections,
    })
}

async fn report_html(State(src): State<Src>, q: Q) -> Response {
    let view = match view_of(src.as_ref(), q).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match report(src.as_ref(), &view).await {
        Ok(d) => Html(doc::to_html(&d)).into_response(),
        Err(e) => failed(e),
    }
}

async fn report_pdf(State(src): State<Src>, q: Q) -> Response {
    let view = match view_of(src.as_ref(), q).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let d = match report(src.as_ref(), &view).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    match tokio::task::spawn_blocking(move || pdf::to_pdf(&d)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/pdf")], bytes).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// A dashboard page: the navigation bar, `body`, and the live script.
pub fn page(title: &str, current: &str, body: &str) -> String {
    view_page(title, current, None, false, body)
}

/// A page with the range picker (and the filters when `filters`) above `body`; the
/// navigation links keep the view.
pub fn view_page(
    title: &str,
    current: &str,
    view: Option<&View>,
    filters: bool,
    body: &str,
) -> String {
    let query = view.map(|v| v.query()).filter(|q| !q.is_empty());
    let suffix = query
        .as_deref()
        .map_or(String::new(), |q| format!("?{}", esc(q)));
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'><title>{t} · testmesh</title><style>{STYLE}</style></head><body><nav>",
        t = esc(title)
    );
    for (path, label) in PAGES {
        if path == current {
            let _ = write!(h, "<b>{label}</b> ");
        } else {
            let _ = write!(h, "<a href='{path}{suffix}'>{label}</a> ");
        }
    }
    let _ = write!(
        h,
        "· report <a href='/dashboard/report.html{suffix}'>HTML</a> <a href='/dashboard/report.pdf{suffix}'>PDF</a> · <span id=live>connecting…</span></nav><h1>{}</h1>{}{body}<script>{}{}</script></body></html>",
        esc(title),
        view.map(|v| v.picker(filters)).unwrap_or_default(),
        live::SCRIPT,
        picker::SCRIPT
    );
    h
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// A page of charts (each in its section) followed by `extra` sections.
async fn chart_page(
    src: &dyn Source,
    (title, path): (&str, &str),
    view: &View,
    filters: bool,
    names: &[&str],
    extra: Vec<Section>,
) -> Response {
    let mut s = Vec::new();
    for n in names {
        match sections::chart_section(src, n, view, Style::Compact).await {
            Ok(x) => s.push(x),
            Err(e) => return failed(e),
        }
    }
    s.extend(extra);
    let mut body = String::new();
    doc::sections_html(&mut body, &s);
    Html(view_page(title, path, Some(view), filters, &body)).into_response()
}

/// The view of a page's query, or the page's 400.
macro_rules! view_or_400 {
    ($src:expr, $q:expr) => {
        match view_of($src.as_ref(), $q).await {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

async fn utilisation(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let names = ["trends", "cpu", "memory", "gpu", "gpu_memory"];
    let extra = sections::compare_section(src.as_ref(), &view).await;
    chart_page(
        src.as_ref(),
        ("Utilisation", "/dashboard/utilisation"),
        &view,
        true,
        &names,
        extra,
    )
    .await
}

async fn allocation(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let a = src.analysis(WINDOW_MS).await;
    let now = Section::new("utilisation", "Per worker now").table(a.workers_now);
    chart_page(
        src.as_ref(),
        ("Allocation", "/dashboard/allocation"),
        &view,
        true,
        &["allocation"],
        vec![now],
    )
    .await
}

async fn scaling(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let table = sections::scaling_section(&src.scaling(), src.now(), "Decisions and instances");
    chart_page(
        src.as_ref(),
        ("Scaling", "/dashboard/scaling"),
        &view,
        false,
        &["scaling"],
        vec![table],
    )
    .await
}

async fn efficiency(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let window = src.now().saturating_sub(view.span.start_ms()).max(1);
    let mut a = src.analysis(window).await;
    a.efficiency
        .retain(|r| r.by != views::By::TaskName || view.filter.named(&r.key));
    let tables = Section::new(
        "efficiency",
        "Reserved against used, per task name and worker",
    )
    .table(sections::efficiency_table(&a))
    .table(a.suggestions.clone());
    let mut extra = sections::compare_section(src.as_ref(), &view).await;
    extra.push(tables);
    let names = ["efficiency", "trends", "efficiency_by_task"];
    chart_page(
        src.as_ref(),
        ("Efficiency", "/dashboard/efficiency"),
        &view,
        true,
        &names,
        extra,
    )
    .await
}

async fn cost(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let s = src.scaling();
    let svg = match sections::chart(src.as_ref(), "cost", &view, Style::Compact).await {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return failed(e),
    };
    let mut body = String::new();
    doc::sections_html(&mut body, &[sections::cost_section(&s, &view.span, svg)]);
    Html(view_page(
        "Cost",
        "/dashboard/cost",
        Some(&view),
        false,
        &body,
    ))
    .into_response()
}

async fn insights(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let window = src.now().saturating_sub(view.span.start_ms()).max(1);
    let a = src.analysis(window).await;
    let (_, found) = sections::anomalies(src.as_ref(), &view, charts::Metric::Cpu, true).await;
    let mut s = sections::insight_sections(&a);
    s.insert(1, sections::anomaly_section(&found, &view.span));
    let mut body = String::new();
    doc::sections_html(&mut body, &s);
    Html(view_page(
        "Predictions and insights",
        "/dashboard/insights",
        Some(&view),
        false,
        &body,
    ))
    .into_response()
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

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222;max-width:120rem}nav{padding:.5rem 0;border-bottom:1px solid #ddd}nav a,nav b{margin-right:.6rem}figure{margin:1rem 0}figure svg{width:100%;max-width:1800px;height:auto}figcaption{font-size:.8rem}.tips rect:hover{fill-opacity:.12}.quarantined{color:#c00}table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}.bar{background:#eee;width:10rem;height:.8rem;display:inline-block}.bar i{background:#3a7;height:100%;display:block}code{background:#f4f4f4;padding:0 .2rem}";

/// Renders the overview page; `charts` is HTML of the chart sections shown on it.
pub fn render_overview(o: &Overview, charts: &str, view: Option<&View>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<p>node <code>{}</code> · leader <code id=leader>{}</code> · term <span id=term>{}</span></p>",
        esc(&o.node),
        esc(o.leader.as_deref().unwrap_or("none")),
        o.term
    );
    h.push_str("<h2>Workers</h2><table id=workers><tr><th>worker</th><th>host</th><th>state</th><th>cpu reserved</th><th>memory reserved</th><th>GPUs</th><th>passed</th></tr>");
    let names = testmesh_consensus::model::display_names(&o.workers);
    for w in &o.workers {
        let c = &w.capacity;
        let a = &w.allocated;
        let bar = |p: f64| {
            format!("<span class=bar title='{p:.0}%'><i style='width:{p:.0}%'></i></span> {p:.0}%")
        };
        let _ = write!(
            h,
            "<tr><td>{} <code>{}</code></td><td>{}</td><td>{}</td><td>{} of {}</td><td>{} of {}</td><td>{} ({} reserved)</td><td>{}/{}</td></tr>",
            esc(names.get(&w.id).map_or("", |n| n.as_str())),
            w.id,
            esc(&w.hardware.hostname),
            match &w.quarantine {
                Some(q) => format!(
                    "<b class=quarantined title=\"{}\">quarantined</b>",
                    esc(&q.reason)
                ),
                None => format!("{:?}", w.state).to_lowercase(),
            },
            bar(pct(a.cpu.0, c.cpu.0)),
            c.cpu,
            bar(pct(a.memory.0, c.memory.0)),
            c.memory,
            c.gpus
                .iter()
                .map(|g| esc(&g.model))
                .collect::<Vec<_>>()
                .join(", "),
            a.gpus.len(),
            w.record.succeeded,
            w.record.finished()
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
    h.push_str("</table><p><a href='/dashboard/tasks'>all tasks</a></p>");
    h.push_str(charts);
    let _ = write!(
        h,
        "<p>Every chart: {}</p>",
        CHARTS
            .iter()
            .map(|c| format!("<a href='/dashboard/charts/{c}.svg'>{c}</a>"))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    view_page("testmesh", "/", view, false, &h)
}

async fn overview(State(src): State<Src>, q: Q) -> Response {
    let view = view_or_400!(src, q);
    let mut s = Vec::new();
    for n in ["allocation", "cpu", "scaling"] {
        match sections::chart_section(src.as_ref(), n, &view, Style::Compact).await {
            Ok(x) => s.push(x),
            Err(e) => return failed(e),
        }
    }
    let mut charts = String::new();
    doc::sections_html(&mut charts, &s);
    Html(render_overview(&src.overview(), &charts, Some(&view))).into_response()
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
            run: None,
        });
        let h = render_overview(&o, "", None);
        assert!(h.contains("&lt;script&gt;"));
        assert_eq!(
            h.matches("<script>").count(),
            1,
            "only the page's own live script"
        );
        assert!(h.contains("<th>pending</th>"));
    }
}
