//! The sections of every page and of the report, built from a [`Source`]: one place decides
//! what a chart or table shows, whether it ends up in a page, an HTML file or a PDF.

use testmesh_consensus::scaling::DecisionKind;

use crate::charts::{self, ChartError, Metric, NodeSeries, Style};
use crate::doc::Section;
use crate::view::{Filter, Sort, View};
use crate::views::{Analysis, By, ScalingView, Table};
use crate::{Source, chart_title};

/// Most task names in the efficiency chart.
const EFFICIENCY_NAMES: usize = 15;
/// Most decisions listed in a table.
const DECISIONS: usize = 50;

fn ago(now_ms: u64, at_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..7200 => format!("{} min ago", s / 60),
        _ => format!("{:.1} h ago", s as f64 / 3600.0),
    }
}

fn dollars(micros: u64) -> String {
    format!("${:.2}", micros as f64 / 1e6)
}

/// The workers' series a view shows, in its order: filtered, then by name or by the mean of
/// `metric` over the window.
pub fn select(mut series: Vec<NodeSeries>, filter: &Filter, metric: Metric) -> Vec<NodeSeries> {
    series.retain(|s| {
        let gpus: Vec<&str> = s.gpu_models.iter().map(|g| g.as_str()).collect();
        filter.worker(&s.labels, &gpus, &s.state)
    });
    let mean = |s: &NodeSeries| {
        let v: Vec<f64> = s.points.iter().filter_map(|p| metric.of(p)).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    match filter.sort {
        Sort::Name => series.sort_by(|a, b| a.label().cmp(b.label())),
        Sort::Busy => series.sort_by(|a, b| mean(b).total_cmp(&mean(a))),
        Sort::Idle => series.sort_by(|a, b| mean(a).total_cmp(&mean(b))),
    }
    series
}

/// The workers a view shows (ordered by `metric` when it sorts by use) and what is unusual
/// about them in its window: about `metric` only, or everything when `all`.
pub async fn anomalies(
    src: &dyn Source,
    view: &View,
    metric: Metric,
    all: bool,
) -> (Vec<NodeSeries>, Vec<crate::anomaly::Anomaly>) {
    let (_, series) = src.series(lookback(src, view)).await;
    let series = select(series, &view.filter, metric);
    let metrics: &[Metric] = if all {
        &[Metric::Cpu, Metric::Gpu]
    } else {
        std::slice::from_ref(&metric)
    };
    if !matches!(metric, Metric::Cpu | Metric::Gpu) && !all {
        return (series, Vec::new()); // nothing is marked on the memory charts
    }
    let reservations = if metrics.contains(&Metric::Gpu) {
        src.reservations(view.span.start_ms())
    } else {
        Vec::new()
    };
    let slow = if all {
        src.speed_vs_peers()
    } else {
        Vec::new()
    };
    let found = crate::anomaly::find(&series, &reservations, &slow, &view.span, metrics);
    (series, found)
}

/// The anomalies as a table (for the insights page and the report).
pub fn anomaly_section(found: &[crate::anomaly::Anomaly], span: &crate::view::Span) -> Section {
    let mut t = Table::new("anomalies", &["from", "to", "worker", "what"]);
    for a in found {
        t.row(vec![
            span.before(a.from_ms),
            span.before(a.to_ms),
            a.name.clone(),
            a.text.clone(),
        ]);
    }
    Section::new("anomalies", "Anomalies").text(if found.is_empty() {
        "Nothing unusual in this window: every worker stayed near its own usual level, no reserved GPU sat idle, and none ran its task names much slower than its peers.".to_string()
    } else {
        format!(
            "{} finding(s): a worker far from its own usual level (at least {:.0} points and several times its usual spread), GPUs reserved but idle, or task names run {:.1}× as long as on its peers.",
            found.len(),
            30.0,
            crate::anomaly::SLOW
        )
    }).table(t)
}

/// How far back the source must look for a view: from its start to now.
fn lookback(src: &dyn Source, view: &View) -> u64 {
    src.now().saturating_sub(view.span.start_ms()).max(1)
}

/// One chart by name for a view; None for an unknown name.
pub async fn chart(
    src: &dyn Source,
    name: &str,
    view: &View,
    style: Style,
) -> Result<Option<String>, ChartError> {
    let span = &view.span;
    let f = &view.filter;
    if let Some(m) = Metric::ALL.into_iter().find(|m| m.name() == name) {
        let (series, marks) = anomalies(src, view, m, false).await;
        return charts::heatmap(&series, m, span, style, &marks).map(Some);
    }
    match name {
        "trends" => {
            let (series, marks) = anomalies(src, view, Metric::Cpu, true).await;
            charts::trends(&series, &marks, span).map(Some)
        }
        "allocation" => {
            let o = src.overview();
            let names = testmesh_consensus::model::display_names(&o.workers);
            let mut workers: Vec<_> = o
                .workers
                .into_iter()
                .filter(|w| {
                    let gpus: Vec<&str> =
                        w.capacity.gpus.iter().map(|g| g.model.as_str()).collect();
                    f.worker(&w.labels, &gpus, &format!("{:?}", w.state).to_lowercase())
                })
                .collect();
            workers.sort_by(|a, b| names[&a.id].cmp(&names[&b.id]));
            charts::allocation(&workers, &names, &src.usage().await).map(Some)
        }
        "scaling" => {
            let s = src.scaling();
            charts::scaling(&s.decisions, &s.instances, span).map(Some)
        }
        "efficiency" => {
            let (_, series) = src.series(lookback(src, view)).await;
            let series = select(series, f, Metric::Cpu);
            let shown: std::collections::BTreeSet<&str> =
                series.iter().map(|s| s.node.as_str()).collect();
            let mut reservations = src.reservations(span.start_ms());
            reservations.retain(|r| {
                (f.is_empty() || shown.contains(r.worker.as_str())) && f.named(&r.task_name)
            });
            charts::efficiency(&series, &reservations, span).map(Some)
        }
        "efficiency_by_task" => {
            let mut a = src.analysis(lookback(src, view)).await;
            a.efficiency
                .retain(|r| r.by != By::TaskName || f.named(&r.key));
            charts::efficiency_by_task(&a.efficiency, EFFICIENCY_NAMES).map(Some)
        }
        "cost" => charts::cost(&src.scaling(), span).map(Some),
        _ => Ok(None),
    }
}

/// A section holding one chart, `chart-NAME`.
pub async fn chart_section(
    src: &dyn Source,
    name: &str,
    view: &View,
    style: Style,
) -> Result<Section, ChartError> {
    let svg = chart(src, name, view, style).await?.unwrap_or_default();
    Ok(Section::new(&format!("chart-{name}"), chart_title(name)).chart(name, svg))
}

pub fn decisions_table(s: &ScalingView, now_ms: u64) -> Table {
    let mut t = Table::new(
        "decisions",
        &["when", "decision", "why", "pending", "managed", "cost/h"],
    );
    for d in s.decisions.iter().rev().take(DECISIONS) {
        t.row(vec![
            ago(now_ms, d.at.0),
            match d.kind {
                DecisionKind::Up => "up",
                DecisionKind::Down => "down",
                DecisionKind::Hold => "hold",
            }
            .to_string(),
            d.reason.clone(),
            d.pending_tasks.to_string(),
            d.managed_workers.to_string(),
            dollars(d.hourly_cost_micros),
        ]);
    }
    t
}

/// Whether autoscaling is on, its decisions with their reasons, and its instances.
pub fn scaling_section(s: &ScalingView, now_ms: u64, title: &str) -> Section {
    Section::new("scaling", title)
        .text(format!(
            "Autoscaling is {}.",
            if s.enabled { "enabled" } else { "disabled" }
        ))
        .table(decisions_table(s, now_ms))
        .table(instances_table(s, now_ms))
}

pub fn instances_table(s: &ScalingView, now_ms: u64) -> Table {
    let mut t = Table::new(
        "instances",
        &[
            "intent",
            "provider",
            "type",
            "state",
            "$/h",
            "requested",
            "ended",
        ],
    );
    for i in s.instances.iter().rev().take(DECISIONS) {
        t.row(vec![
            i.intent.to_string(),
            i.provider.clone(),
            i.instance_type.clone(),
            format!("{:?}", i.state).to_lowercase(),
            dollars(i.price_micros_per_hour),
            ago(now_ms, i.requested_at.0),
            match (&i.ended_at, &i.end_reason) {
                (Some(e), r) => format!("{} ({})", ago(now_ms, e.0), r.clone().unwrap_or_default()),
                (None, _) => String::new(),
            },
        ]);
    }
    t
}

/// Cost in words and per provider: what runs now, what the window cost, the budget.
pub fn cost_section(s: &ScalingView, span: &crate::view::Span, svg: String) -> Section {
    let (now_ms, window_ms) = (span.end_ms, span.len_ms);
    let start = now_ms.saturating_sub(window_ms);
    let mut per: std::collections::BTreeMap<&str, (u32, u64, f64)> = Default::default();
    for i in &s.instances {
        let e = per.entry(i.provider.as_str()).or_default();
        if i.ended_at.is_none() {
            e.0 += 1;
            e.1 += i.price_micros_per_hour;
        }
        let end = i.ended_at.map_or(now_ms, |e| e.0).min(now_ms);
        let ms = end.saturating_sub(i.requested_at.0.max(start));
        e.2 += i.price_micros_per_hour as f64 / 1e6 * ms as f64 / 3.6e6;
    }
    let hourly: u64 = per.values().map(|v| v.1).sum();
    let spent: f64 = per.values().map(|v| v.2).sum();
    let mut t = Table::new(
        "cost-by-provider",
        &["provider", "instances now", "$/h now", "spent in window"],
    );
    for (p, (n, h, d)) in &per {
        t.row(vec![
            p.to_string(),
            n.to_string(),
            dollars(*h),
            format!("${d:.2}"),
        ]);
    }
    Section::new("cost", "Cloud resources and cost")
        .text(format!(
            "Managed instances cost {} per hour now; ${spent:.2} over the {}; budget {}.",
            dollars(hourly),
            span.caption(),
            s.budget_micros_per_hour
                .map_or("not set".to_string(), |b| format!("{}/h", dollars(b)))
        ))
        .chart("cost", svg)
        .table(t)
}

pub fn efficiency_table(a: &Analysis) -> Table {
    let mut t = Table::new(
        "efficiency-table",
        &[
            "task name / worker",
            "attempts",
            "core-h used / reserved",
            "CPU eff.",
            "memory GiB-h peak / reserved",
            "GPU-h reserved",
        ],
    );
    for by in [By::TaskName, By::Worker] {
        for r in a.efficiency.iter().filter(|r| r.by == by) {
            t.row(vec![
                match by {
                    By::TaskName => format!("task {}", r.key),
                    By::Worker => format!("worker {}", r.key),
                },
                r.attempts.to_string(),
                format!(
                    "{:.2} / {:.2}",
                    r.cpu_used_core_hours, r.cpu_reserved_core_hours
                ),
                charts::pct(
                    (r.cpu_reserved_core_hours > 0.0)
                        .then(|| r.cpu_used_core_hours / r.cpu_reserved_core_hours),
                ),
                format!(
                    "{:.2} / {:.2}",
                    r.memory_peak_gib_hours, r.memory_reserved_gib_hours
                ),
                format!("{:.2}", r.gpu_reserved_hours),
            ]);
        }
    }
    t
}

/// The analysis as sections: findings, efficiency tables, predictions, recommendations.
pub fn insight_sections(a: &Analysis) -> Vec<Section> {
    let mut summary = Section::new("summary", "Summary");
    for line in &a.summary {
        summary = summary.text(line.clone());
    }
    summary = summary.text(a.recommendation.clone());
    let mut predictions = Section::new("predictions", "Predictions");
    for line in &a.predictor {
        predictions = predictions.text(line.clone());
    }
    vec![
        summary,
        Section::new("patterns", "Workload patterns").table(a.patterns.clone()),
        predictions.table(a.predictions.clone()),
        Section::new("recommendations", "Recommendations")
            .text(a.recommendation.clone())
            .table(a.instance_types.clone()),
    ]
}

/// Means over a span of the workers a view shows: CPU, memory, GPU utilisation (fractions),
/// and core-hours reserved and used.
fn totals(
    series: &[NodeSeries],
    reservations: &[crate::views::ReservedSpan],
    span: &crate::view::Span,
) -> [Option<f64>; 5] {
    let mean = |m: Metric| {
        let v: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.at_ms >= span.start_ms() && p.at_ms <= span.end_ms)
            .filter_map(|p| m.of(p))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let hours = |ms: f64| ms / 3_600_000.0;
    let reserved: f64 = reservations
        .iter()
        .map(|r| {
            let end = r.end_ms.unwrap_or(span.end_ms).min(span.end_ms);
            let ms = end.saturating_sub(r.start_ms.max(span.start_ms()));
            r.cpu_cores * hours(ms as f64)
        })
        .sum();
    let used: f64 = series
        .iter()
        .map(|s| {
            let pts: Vec<_> = s
                .points
                .iter()
                .filter(|p| p.at_ms >= span.start_ms() && p.at_ms <= span.end_ms)
                .collect();
            let mean = pts.iter().map(|p| p.cpu).sum::<f64>() / pts.len().max(1) as f64;
            let covered = match (pts.first(), pts.last()) {
                (Some(a), Some(b)) => b.at_ms - a.at_ms,
                _ => 0,
            };
            mean * s.cores * hours(covered as f64)
        })
        .sum();
    // `+ 0.0`: an empty float sum is -0.0, shown as "-0.00".
    [
        mean(Metric::Cpu),
        mean(Metric::Memory),
        mean(Metric::Gpu),
        Some(reserved + 0.0),
        Some(used + 0.0),
    ]
}

/// `?compare=1d|7d`: the view's figures against the same window that long before.
pub async fn compare_section(src: &dyn Source, view: &View) -> Vec<Section> {
    let Some(back) = view.compare else {
        return Vec::new();
    };
    let span = view.span;
    let earlier = crate::view::Span {
        end_ms: span.end_ms.saturating_sub(back),
        len_ms: span.len_ms,
        live: false,
    };
    let (_, series) = src
        .series(src.now().saturating_sub(earlier.start_ms()).max(1))
        .await;
    let series = select(series, &view.filter, Metric::Cpu);
    let reservations = src.reservations(earlier.start_ms());
    let now = totals(&series, &reservations, &span);
    let then = totals(&series, &reservations, &earlier);
    let mut t = Table::new(
        "comparison",
        &[
            "",
            "this window",
            &format!("{} earlier", crate::view::human(back)),
            "change",
        ],
    );
    let pct_row = |v: Option<f64>| charts::pct(v);
    let rows: [(&str, bool); 5] = [
        ("mean CPU utilisation", true),
        ("mean memory in use", true),
        ("mean GPU utilisation", true),
        ("core-hours reserved", false),
        ("core-hours used", false),
    ];
    for (i, (label, is_pct)) in rows.iter().enumerate() {
        let (a, b) = (now[i], then[i]);
        let show = |v: Option<f64>| {
            if *is_pct {
                pct_row(v)
            } else {
                v.map_or("–".into(), |v| format!("{v:.2}"))
            }
        };
        let delta = match (a, b) {
            (Some(a), Some(b)) if *is_pct => format!("{:+.0} points", (a - b) * 100.0),
            (Some(a), Some(b)) if b > 0.0 => format!("{:+.0}%", (a / b - 1.0) * 100.0),
            (Some(_), Some(_)) => "–".into(),
            _ => "no data then".into(),
        };
        t.row(vec![label.to_string(), show(a), show(b), delta]);
    }
    vec![
        Section::new("compare", "Against an earlier window")
            .text(format!(
                "{} against {} (the same workers and filters).",
                span.caption(),
                earlier.caption()
            ))
            .table(t),
    ]
}
