//! `testmesh report --out FILE.html`: one self-contained HTML file (charts inline as SVG, no
//! external requests) with the cluster's status, every chart, utilisation and efficiency
//! tables, scaling decisions and cost, task outcomes and the optimizer's recommendations —
//! fetched from a node's API, so any node can write it.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use super::client::{Client, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// File to write: .html (a PDF needs a browser's print; see docs/operations.md)
    #[arg(long)]
    pub out: PathBuf,
    /// How far back the insights look, e.g. 1h, 24h
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub since: std::time::Duration,
}

/// Charts in the report, in order, with their headings.
const CHARTS: [(&str, &str); 6] = [
    ("cpu", "CPU utilisation per worker"),
    ("memory", "Memory per worker"),
    ("gpu", "GPU utilisation per worker"),
    ("gpu_memory", "GPU memory per worker"),
    ("allocation", "Resource allocation: used, reserved, free"),
    ("scaling", "Scaling history"),
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn table(h: &mut String, id: &str, header: &[&str], rows: Vec<Vec<String>>) {
    let _ = write!(h, "<table id={id}><tr>");
    for c in header {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    if rows.is_empty() {
        let _ = write!(h, "<tr><td colspan={}>none</td></tr>", header.len());
    }
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{}</td>", esc(&c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

pub async fn run(a: ReportArgs) -> anyhow::Result<ExitCode> {
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("html") | Some("htm") => {}
        Some("pdf") => bail!(
            "{}: PDF output is not available yet; write .html and print it to PDF from a browser",
            a.out.display()
        ),
        _ => bail!("{}: use a .html file name", a.out.display()),
    }
    let client = Client::new(&a.client)?;
    let window = humantime::format_duration(a.since)
        .to_string()
        .replace(' ', "");
    let status: Value = client.get("/api/v1/status").await?;
    let workers: Value = client.get("/api/v1/workers").await?;
    let insights: Value = client
        .get(&format!("/api/v1/insights?window={window}"))
        .await?;
    let scaling: Value = client.get("/api/v1/scaling?limit=100").await?;
    let mut charts = Vec::new();
    for (name, title) in CHARTS {
        charts.push((
            name,
            title,
            client
                .get_text(&format!("/dashboard/charts/{name}.svg"))
                .await?,
        ));
    }

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>testmesh report</title><style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:70rem}}table{{border-collapse:collapse;margin:1rem 0}}td,th{{padding:.25rem .7rem;border-bottom:1px solid #ddd;text-align:left;font-size:.9rem}}section{{page-break-inside:avoid}}svg{{max-width:100%;height:auto}}</style></head><body><h1>testmesh report</h1><p>node <code>{}</code>, leader <code>{}</code>, term {}, {} workers; insights over the last {}</p>",
        esc(&s(&status["node_id"])),
        esc(&s(&status["leader"])),
        s(&status["term"]),
        workers.as_array().map_or(0, Vec::len),
        esc(&window)
    );

    h.push_str("<section id=summary><h2>Summary</h2><ul>");
    for part in ["patterns", "efficiency"] {
        for line in insights[part]["summary"].as_array().into_iter().flatten() {
            let _ = write!(h, "<li>{}</li>", esc(&s(line)));
        }
    }
    let _ = write!(
        h,
        "<li>{}</li></ul></section>",
        esc(&s(&insights["recommendations"]["why"]))
    );

    for (name, title, svg) in &charts {
        let _ = write!(
            h,
            "<section id=chart-{name}><h2>{}</h2>{svg}</section>",
            esc(title)
        );
    }

    h.push_str("<section id=tasks><h2>Task outcomes</h2>");
    let counts: Vec<Vec<String>> = status["tasks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![k.clone(), s(v)])
        .collect();
    table(&mut h, "task-outcomes", &["state", "tasks"], counts);
    h.push_str("</section>");

    h.push_str("<section id=utilisation><h2>Utilisation now</h2>");
    let rows = insights["efficiency"]["now"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                s(&w["hostname"]),
                s(&w["state"]),
                format!(
                    "{} / {} / {}",
                    s(&w["cpu_used_cores"]),
                    s(&w["cpu_reserved_cores"]),
                    s(&w["cpu_capacity_cores"])
                ),
                format!(
                    "{} / {} / {}",
                    s(&w["memory_used_mib"]),
                    s(&w["memory_reserved_mib"]),
                    s(&w["memory_capacity_mib"])
                ),
                format!(
                    "{} reserved of {}; idle: {}",
                    w["gpus_reserved"].as_array().map_or(0, Vec::len),
                    s(&w["gpus"]),
                    s(&w["idle_reserved_gpus"])
                ),
            ]
        })
        .collect();
    table(
        &mut h,
        "utilisation-now",
        &[
            "worker",
            "state",
            "cores used / reserved / all",
            "MiB used / reserved / all",
            "GPUs",
        ],
        rows,
    );
    h.push_str("</section>");

    h.push_str("<section id=efficiency><h2>Efficiency: reserved against used</h2>");
    let rows = insights["efficiency"]["by_task_name"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            insights["efficiency"]["by_worker"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .map(|r| {
            vec![
                s(&r["key"]),
                s(&r["attempts"]),
                format!(
                    "{} / {}",
                    s(&r["cpu_used_core_hours"]),
                    s(&r["cpu_reserved_core_hours"])
                ),
                s(&r["cpu_efficiency"]),
                s(&r["memory_efficiency"]),
                s(&r["gpu_reserved_hours"]),
            ]
        })
        .collect();
    table(
        &mut h,
        "efficiency-table",
        &[
            "task name / worker",
            "attempts",
            "core-h used / reserved",
            "CPU eff.",
            "memory eff.",
            "GPU-h",
        ],
        rows,
    );
    let rows = insights["efficiency"]["suggestions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            vec![
                s(&x["task_name"]),
                s(&x["resource"]),
                format!("{} → {}", s(&x["requested"]), s(&x["suggested"])),
                s(&x["reason"]),
            ]
        })
        .collect();
    table(
        &mut h,
        "suggestions",
        &["task name", "resource", "request", "why"],
        rows,
    );
    h.push_str("</section>");

    h.push_str("<section id=scaling><h2>Scaling decisions and cost</h2>");
    let _ = write!(
        h,
        "<p>policy: {}; instances now cost ${:.2}/h</p>",
        if scaling["policy"]["enabled"] == true {
            "enabled"
        } else {
            "disabled"
        },
        scaling["hourly_cost"].as_f64().unwrap_or(0.0)
    );
    let rows = scaling["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| vec![s(&d["at"]), s(&d["kind"]), s(&d["reason"])])
        .collect();
    table(
        &mut h,
        "decisions",
        &["at (Unix ms)", "decision", "why"],
        rows,
    );
    h.push_str("</section>");

    h.push_str("<section id=recommendations><h2>Recommendations</h2>");
    let _ = write!(h, "<p>{}</p>", esc(&s(&insights["recommendations"]["why"])));
    let rows = insights["recommendations"]["options"]
        .as_array()
        .into_iter()
        .flatten()
        .take(8)
        .map(|c| {
            vec![
                s(&c["instance_type"]),
                s(&c["count"]),
                format!("${}", s(&c["hourly_cost"])),
                s(&c["not_held"]),
            ]
        })
        .collect();
    table(
        &mut h,
        "instance-types",
        &["instance type", "count", "per hour", "not held"],
        rows,
    );
    h.push_str("</section></body></html>\n");

    std::fs::write(&a.out, h).with_context(|| format!("cannot write {}", a.out.display()))?;
    outln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
