//! The testmesh web dashboard: pages rendered on the server from a node's own replica, with no
//! external requests (no CDN, no build step). It reads through [`Source`] and knows nothing of
//! Raft or the network.
//!
//! Pages: overview, utilisation, allocation, scaling, efficiency, cost, tasks, insights; every
//! chart as SVG or PNG (`/dashboard/charts/NAME.svg|png`, see [`charts`]); the report as HTML
//! or PDF (`/dashboard/report.html|pdf?since=1h`). Pages update live over a WebSocket.

pub mod charts;
pub mod doc;
pub mod export;
mod live;
pub mod pdf;
mod runs;
pub mod sections;
mod tasks;
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

use crate::doc::{Document, Section};
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
}

/// Charts available under `/dashboard/charts/NAME.svg` (and `.png`).
pub const CHARTS: [&str; 9] = [
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

/// How far back the time charts look by default.
pub const WINDOW_MS: u64 = 3_600_000;
/// Longest window a chart or report may ask for.
const MAX_WINDOW_MS: u64 = 30 * 24 * 3_600_000;

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

/// `?since=` / `?window=` as milliseconds: `90s`, `30m`, `2h`, `7d`.
fn parse_window(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: write a number and a unit, e.g. 30m, 2h, 7d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d (e.g. 30m)")),
    };
    let total = n.saturating_mul(ms);
    if total == 0 || total > MAX_WINDOW_MS {
        return Err(format!("{s:?}: between 1s and 30d"));
    }
    Ok(total)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    /// How far back, e.g. `1h`.
    since: Option<String>,
    /// Cache-buster added by the live script; ignored.
    #[serde(rename = "t")]
    _t: Option<String>,
}

/// The window asked for, or what was wrong with the query.
fn window_of(
    q: Result<Query<WindowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<u64, String> {
    match q {
        Ok(Query(WindowQuery { since: None, .. })) => Ok(WINDOW_MS),
        Ok(Query(WindowQuery { since: Some(s), .. })) => {
            parse_window(&s).map_err(|e| format!("since: {e}"))
        }
        Err(e) => Err(format!(
            "{e}; the only parameter is since=DURATION (e.g. since=2h)"
        )),
    }
}

async fn chart(
    State(src): State<Src>,
    Path(file): Path<String>,
    q: Result<Query<WindowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
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
    let window = match window_of(q) {
        Ok(w) => w,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    let svg = match sections::chart(src.as_ref(), name, window).await {
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

/// The whole report: every chart and table over `window_ms`.
pub async fn report(src: &dyn Source, window_ms: u64) -> Result<Document, charts::ChartError> {
    let o = src.overview();
    let now = src.now();
    let a = src.analysis(window_ms).await;
    let s = src.scaling();
    let mut sections = sections::insight_sections(&a);
    // The summary first, then every chart, then the tables.
    let rest = sections.split_off(1);
    for name in CHARTS.iter().filter(|c| **c != "cost") {
        sections.push(sections::chart_section(src, name, window_ms).await?);
    }
    let cost_svg = sections::chart(src, "cost", window_ms)
        .await?
        .unwrap_or_default();
    let mut chart_cost = Section::new("chart-cost", chart_title("cost"));
    chart_cost.blocks = sections::cost_section(&s, now, window_ms, cost_svg).blocks;
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
    sections.extend(rest);
    Ok(Document {
        title: "testmesh report".into(),
        subtitle: format!(
            "node {}, leader {}, term {}, {} workers; the last {} min",
            o.node,
            o.leader.as_deref().unwrap_or("none"),
            o.term,
            o.workers.len(),
            window_ms / 60_000
        ),
        sections,
    })
}

async fn report_html(
    State(src): State<Src>,
    q: Result<Query<WindowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let window = match window_of(q) {
        Ok(w) => w,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    match report(src.as_ref(), window).await {
        Ok(d) => Html(doc::to_html(&d)).into_response(),
        Err(e) => failed(e),
    }
}

async fn report_pdf(
    State(src): State<Src>,
    q: Result<Query<WindowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let window = match window_of(q) {
        Ok(w) => w,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    let d = match report(src.as_ref(), window).await {
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
            let _ = write!(h, "<a href='{path}'>{label}</a> ");
        }
    }
    let _ = write!(
        h,
        "· report <a href='/dashboard/report.html'>HTML</a> <a href='/dashboard/report.pdf'>PDF</a> · <span id=live>connecting…</span></nav><h1>{}</h1>{body}<script>{}</script></body></html>",
        esc(title),
        live::SCRIPT
    );
    h
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// A page of charts (each in its section) followed by `extra` sections.
async fn chart_page(
    src: &dyn Source,
    title: &str,
    path: &str,
    names: &[&str],
    extra: Vec<Section>,
) -> Response {
    let mut s = Vec::new();
    for n in names {
        match sections::chart_section(src, n, WINDOW_MS).await {
            Ok(x) => s.push(x),
            Err(e) => return failed(e),
        }
    }
    s.extend(extra);
    let mut body = String::new();
    doc::sections_html(&mut body, &s);
    Html(page(title, path, &body)).into_response()
}

async fn utilisation(State(src): State<Src>) -> Response {
    let names = ["cpu", "memory", "gpu", "gpu_memory"];
    chart_page(
        src.as_ref(),
        "Utilisation",
        "/dashboard/utilisation",
        &names,
        vec![],
    )
    .await
}

async fn allocation(State(src): State<Src>) -> Response {
    let a = src.analysis(WINDOW_MS).await;
    let now = Section::new("utilisation", "Per worker now").table(a.workers_now);
    chart_page(
        src.as_ref(),
        "Allocation",
        "/dashboard/allocation",
        &["allocation"],
        vec![now],
    )
    .await
}

async fn scaling(State(src): State<Src>) -> Response {
    let table = sections::scaling_section(&src.scaling(), src.now(), "Decisions and instances");
    chart_page(
        src.as_ref(),
        "Scaling",
        "/dashboard/scaling",
        &["scaling"],
        vec![table],
    )
    .await
}

async fn efficiency(State(src): State<Src>) -> Response {
    let a = src.analysis(WINDOW_MS).await;
    let tables = Section::new(
        "efficiency",
        "Reserved against used, per task name and worker",
    )
    .table(sections::efficiency_table(&a))
    .table(a.suggestions.clone());
    let names = ["efficiency", "efficiency_by_task"];
    chart_page(
        src.as_ref(),
        "Efficiency",
        "/dashboard/efficiency",
        &names,
        vec![tables],
    )
    .await
}

async fn cost(State(src): State<Src>) -> Response {
    let s = src.scaling();
    let now = src.now();
    let svg = match sections::chart(src.as_ref(), "cost", WINDOW_MS).await {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return failed(e),
    };
    let mut body = String::new();
    doc::sections_html(
        &mut body,
        &[sections::cost_section(&s, now, WINDOW_MS, svg)],
    );
    Html(page("Cost", "/dashboard/cost", &body)).into_response()
}

async fn insights(State(src): State<Src>) -> Response {
    let a = src.analysis(WINDOW_MS).await;
    let mut body = String::new();
    doc::sections_html(&mut body, &sections::insight_sections(&a));
    Html(page(
        "Predictions and insights",
        "/dashboard/insights",
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

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222;max-width:75rem}nav{padding:.5rem 0;border-bottom:1px solid #ddd}nav a,nav b{margin-right:.6rem}figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.8rem}.tips rect:hover{fill-opacity:.12}.quarantined{color:#c00}table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}.bar{background:#eee;width:10rem;height:.8rem;display:inline-block}.bar i{background:#3a7;height:100%;display:block}code{background:#f4f4f4;padding:0 .2rem}";

/// Renders the overview page; `charts` is HTML of the chart sections shown on it.
pub fn render_overview(o: &Overview, charts: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<p>node <code>{}</code> · leader <code id=leader>{}</code> · term <span id=term>{}</span></p>",
        esc(&o.node),
        esc(o.leader.as_deref().unwrap_or("none")),
        o.term
    );
    h.push_str("<h2>Workers</h2><table id=workers><tr><th>worker</th><th>host</th><th>state</th><th>cpu reserved</th><th>memory reserved</th><th>GPUs</th><th>passed</th></tr>");
    for w in &o.workers {
        let c = &w.capacity;
        let a = &w.allocated;
        let bar = |p: f64| {
            format!("<span class=bar title='{p:.0}%'><i style='width:{p:.0}%'></i></span> {p:.0}%")
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{} of {}</td><td>{} of {}</td><td>{} ({} reserved)</td><td>{}/{}</td></tr>",
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
    page("testmesh", "/", &h)
}

async fn overview(State(src): State<Src>) -> Response {
    let mut s = Vec::new();
    for n in ["allocation", "cpu", "scaling"] {
        match sections::chart_section(src.as_ref(), n, WINDOW_MS).await {
            Ok(x) => s.push(x),
            Err(e) => return failed(e),
        }
    }
    let mut charts = String::new();
    doc::sections_html(&mut charts, &s);
    Html(render_overview(&src.overview(), &charts)).into_response()
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
        let h = render_overview(&o, "");
        assert!(h.contains("&lt;script&gt;"));
        assert_eq!(
            h.matches("<script>").count(),
            1,
            "only the page's own live script"
        );
        assert!(h.contains("<th>pending</th>"));
    }

    #[test]
    fn windows_parse_with_units_and_bad_ones_say_what_to_write() {
        assert_eq!(parse_window("90s"), Ok(90_000));
        assert_eq!(parse_window("30m"), Ok(1_800_000));
        assert_eq!(parse_window("2h"), Ok(7_200_000));
        assert!(parse_window("2").unwrap_err().contains("unit"));
        assert!(parse_window("h").unwrap_err().contains("number"));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("31d").unwrap_err().contains("30d"));
    }
}
