//! The planner's analysis (`planner::insights`) and the predictor, turned into what the
//! dashboard shows: findings in words, efficiency rows and tables.

use testmesh_dashboard::views::{Analysis, By, EfficiencyRow, Table};

use crate::core::Core;
use testmesh_planner::predictor::PredictionPath;
use testmesh_planner::predictor::history::spec_features;

/// Queued tasks listed with their predictions.
const PREDICTED: usize = 30;

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}{unit}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.0}%", v * 100.0))
}

/// The analysis of the last `window_ms`; a failure shows as a finding rather than an error
/// page.
pub async fn analysis(core: &Core, window_ms: u64) -> Analysis {
    let (ins, models, seen) = match core.insights(window_ms).await {
        Ok(x) => x,
        Err(e) => {
            return Analysis {
                window_ms,
                summary: vec![format!("The analysis is not available: {e:?}")],
                ..Analysis::default()
            };
        }
    };
    let mut a = Analysis {
        window_ms,
        ..Analysis::default()
    };
    a.summary.extend(ins.patterns.summary.iter().cloned());
    a.summary.extend(ins.efficiency.summary.iter().cloned());

    for (by, rows) in [
        (By::TaskName, &ins.efficiency.by_task_name),
        (By::Worker, &ins.efficiency.by_worker),
    ] {
        a.efficiency.extend(rows.iter().map(|r| EfficiencyRow {
            by,
            key: r.key.clone(),
            attempts: r.attempts,
            cpu_reserved_core_hours: r.cpu_reserved_core_hours,
            cpu_used_core_hours: r.cpu_used_core_hours,
            memory_reserved_gib_hours: r.memory_reserved_gib_hours,
            memory_peak_gib_hours: r.memory_peak_gib_hours,
            gpu_reserved_hours: r.gpu_reserved_hours,
        }));
    }

    a.suggestions = Table::new(
        "suggestions",
        &["task name", "resource", "request", "suggested", "why"],
    );
    for s in &ins.efficiency.suggestions {
        a.suggestions.row(vec![
            s.task_name.clone(),
            s.resource.clone(),
            s.requested.clone(),
            s.suggested.clone(),
            s.reason.clone(),
        ]);
    }

    a.workers_now = Table::new(
        "utilisation-now",
        &[
            "worker",
            "state",
            "cores used / reserved / all",
            "MiB used / reserved / all",
            "GPUs reserved",
            "reserved but idle GPUs",
        ],
    );
    for w in &ins.efficiency.now {
        a.workers_now.row(vec![
            w.hostname.clone(),
            format!("{:?}", w.state).to_lowercase(),
            format!(
                "{} / {:.1} / {:.1}",
                opt(w.cpu_used_cores, ""),
                w.cpu_reserved_cores,
                w.cpu_capacity_cores
            ),
            format!(
                "{} / {:.0} / {:.0}",
                opt(w.memory_used_mib, ""),
                w.memory_reserved_mib,
                w.memory_capacity_mib
            ),
            format!("{} of {}", w.gpus_reserved.len(), w.gpus),
            if w.idle_reserved_gpus.is_empty() {
                "none".to_string()
            } else {
                format!("IDLE: {:?}", w.idle_reserved_gpus)
            },
        ]);
    }

    let p = &ins.patterns;
    a.patterns = Table::new("patterns-table", &["measure", "value"]);
    let d = &p.durations;
    for (k, v) in [
        ("tasks submitted", p.submitted.to_string()),
        ("arrivals per hour", format!("{:.1}", p.arrivals_per_hour)),
        (
            "busiest bucket over the mean",
            format!("{:.2}", p.peak_to_mean),
        ),
        ("inter-arrival CV", opt(p.inter_arrival_cv, "")),
        (
            "CPU only / GPU share / one GPU / several GPUs",
            format!(
                "{} / {} / {} / {}",
                p.mix.cpu_only, p.mix.gpu_share, p.mix.one_gpu, p.mix.multi_gpu
            ),
        ),
        (
            "finished (succeeded, failed, timed out)",
            format!(
                "{} ({}, {}, {})",
                d.finished, d.succeeded, d.failed, d.timed_out
            ),
        ),
        (
            "run time p50 / p90 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} s",
                d.p50_secs, d.p90_secs, d.p99_secs, d.max_secs
            ),
        ),
    ] {
        a.patterns.row(vec![k.to_string(), v]);
    }
    for n in &p.top_names {
        a.patterns.row(vec![
            format!("run time of {}", n.name),
            format!(
                "{} attempts, {:.0} s in all ({}), p50 {:.1} s",
                n.attempts,
                n.total_secs,
                pct(Some(n.share)),
                n.p50_secs
            ),
        ]);
    }

    a.predictor.push(match &models {
        Some(_) => format!(
            "The predictors learned from {seen} finished attempts: run time, peak memory and peak GPU memory per task, falling back to medians by name and then to what was requested."
        ),
        None => "No predictor is trained yet: tasks run on what they request.".to_string(),
    });
    a.predictions = Table::new(
        "predictions-table",
        &[
            "task",
            "name",
            "predicted run time",
            "how",
            "predicted peak memory",
            "requested memory",
        ],
    );
    if let Some(m) = &models {
        let l = core.ledger.read();
        for t in l.pending().take(PREDICTED) {
            let f = spec_features(&t.spec);
            let secs = m.duration.predict(&f);
            let mem = m.memory.predict(&f);
            let how = match secs.path {
                PredictionPath::Requested => "nothing learned yet".to_string(),
                other => format!(
                    "{other:?} from {} samples, confidence {:.0}%",
                    secs.samples,
                    secs.confidence * 100.0
                )
                .to_lowercase(),
            };
            a.predictions.row(vec![
                t.id.to_string(),
                t.spec.name.clone(),
                if secs.path == PredictionPath::Requested {
                    "–".into()
                } else {
                    format!("{:.1} s", secs.value)
                },
                how,
                if mem.path == PredictionPath::Requested {
                    "–".into()
                } else {
                    format!("{:.0} MiB", mem.value)
                },
                t.spec.requirements.memory.to_string(),
            ]);
        }
    }

    let r = &ins.recommendations;
    a.recommendation = r.why.clone();
    a.instance_types = Table::new(
        "instance-types",
        &[
            "instance type",
            "count",
            "per hour",
            "estimated cost",
            "not held",
        ],
    );
    for c in r.options.iter().take(8) {
        a.instance_types.row(vec![
            c.instance_type.clone(),
            c.count.to_string(),
            format!("${:.2}", c.hourly_cost),
            c.estimated_cost
                .map_or_else(String::new, |d| format!("${d:.2}")),
            c.not_held.to_string(),
        ]);
    }
    a
}
