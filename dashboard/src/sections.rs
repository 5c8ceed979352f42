//! The sections of every page and of the report, built from a [`Source`]: one place decides
//! what a chart or table shows, whether it ends up in a page, an HTML file or a PDF.

use testmesh_consensus::scaling::DecisionKind;

use crate::charts::{self, ChartError, Metric};
use crate::doc::Section;
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

/// One chart by name over `window_ms`; None for an unknown name.
pub async fn chart(
    src: &dyn Source,
    name: &str,
    window_ms: u64,
) -> Result<Option<String>, ChartError> {
    if let Some(m) = Metric::ALL.into_iter().find(|m| m.name() == name) {
        let (now, series) = src.series(window_ms).await;
        return charts::heatmap(&series, m, now, window_ms).map(Some);
    }
    let now = || src.now();
    match name {
        "allocation" => charts::allocation(&src.overview().workers, &src.usage().await).map(Some),
        "scaling" => {
            let s = src.scaling();
            charts::scaling(&s.decisions, &s.instances, now(), window_ms).map(Some)
        }
        "efficiency" => {
            let (now, series) = src.series(window_ms).await;
            let reservations = src.reservations(now.saturating_sub(window_ms));
            charts::efficiency(&series, &reservations, now, window_ms).map(Some)
        }
        "efficiency_by_task" => {
            let a = src.analysis(window_ms).await;
            charts::efficiency_by_task(&a.efficiency, EFFICIENCY_NAMES).map(Some)
        }
        "cost" => charts::cost(&src.scaling(), now(), window_ms).map(Some),
        _ => Ok(None),
    }
}

/// A section holding one chart, `chart-NAME`.
pub async fn chart_section(
    src: &dyn Source,
    name: &str,
    window_ms: u64,
) -> Result<Section, ChartError> {
    let svg = chart(src, name, window_ms).await?.unwrap_or_default();
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
pub fn cost_section(s: &ScalingView, now_ms: u64, window_ms: u64, svg: String) -> Section {
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
            "Managed instances cost {} per hour now; ${spent:.2} over the last {} min; budget {}.",
            dollars(hourly),
            window_ms / 60_000,
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
