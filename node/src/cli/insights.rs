//! `testmesh insights`: workload patterns, efficiency and worker-type recommendations.

use std::process::ExitCode;

use serde_json::Value;

use super::client::{Client, ClientArgs};
use super::output::table;

#[derive(Debug, clap::Args)]
pub struct InsightsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How far back to look, e.g. 30m, 1h, 7d
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub window: std::time::Duration,
    /// Print JSON instead of tables
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: InsightsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let window = humantime::format_duration(a.window)
        .to_string()
        .replace(' ', "");
    let v: Value = client
        .get(&format!("/api/v1/insights?window={window}"))
        .await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let p = &v["patterns"];
    outln!("Workload, last {window}");
    lines(&p["summary"]);
    if p["submitted"].as_u64().unwrap_or(0) > 0 {
        outln!(
            "  arrivals per {}-s slot: {}",
            p["bucket_secs"],
            sparkline(&p["arrivals"])
        );
    }
    let rows: Vec<Vec<String>> = arr(&p["top_names"])
        .map(|n| {
            vec![
                s(&n["name"]),
                n["attempts"].to_string(),
                format!("{:.1}s", f(&n["total_secs"])),
                format!("{:.0}%", 100.0 * f(&n["share"])),
                format!("{:.1}s", f(&n["p50_secs"])),
            ]
        })
        .collect();
    if !rows.is_empty() {
        outln!();
        table(
            &["TASK NAME", "ATTEMPTS", "RUN TIME", "SHARE", "P50"],
            &rows,
        );
    }

    let e = &v["efficiency"];
    outln!("\nEfficiency (reserved vs used)");
    lines(&e["summary"]);
    let pct = |x: &Value| {
        x.as_f64()
            .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x))
    };
    let rows: Vec<Vec<String>> = arr(&e["by_task_name"])
        .chain(arr(&e["by_worker"]))
        .map(|r| {
            vec![
                s(&r["key"]),
                r["attempts"].to_string(),
                format!(
                    "{:.4}/{:.4}",
                    f(&r["cpu_used_core_hours"]),
                    f(&r["cpu_reserved_core_hours"])
                ),
                pct(&r["cpu_efficiency"]),
                pct(&r["memory_efficiency"]),
                format!("{:.4}", f(&r["gpu_reserved_hours"])),
                match f(&r["gpu_memory_peak_mib"]) {
                    0.0 => "-".into(),
                    m => format!("{m:.0}MiB"),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &[
                "TASK NAME / WORKER",
                "ATTEMPTS",
                "CORE-H USED/RESERVED",
                "CPU",
                "MEMORY",
                "GPU-H",
                "GPU MEM PEAK",
            ],
            &rows,
        );
    }
    let rows: Vec<Vec<String>> = arr(&e["now"])
        .map(|w| {
            let used = |x: &Value| x.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
            vec![
                s(&w["hostname"]),
                s(&w["state"]),
                format!(
                    "{}/{:.1}/{:.1}",
                    used(&w["cpu_used_cores"]),
                    f(&w["cpu_reserved_cores"]),
                    f(&w["cpu_capacity_cores"])
                ),
                format!(
                    "{}/{:.0}/{:.0}",
                    used(&w["memory_used_mib"]),
                    f(&w["memory_reserved_mib"]),
                    f(&w["memory_capacity_mib"])
                ),
                format!("{}/{}", arr(&w["gpus_reserved"]).count(), w["gpus"]),
                w["idle_reserved_gpus"].to_string(),
            ]
        })
        .collect();
    outln!();
    table(
        &[
            "WORKER NOW",
            "STATE",
            "CORES USED/RESERVED/ALL",
            "MIB USED/RESERVED/ALL",
            "GPUS",
            "IDLE RESERVED GPUS",
        ],
        &rows,
    );
    for sg in arr(&e["suggestions"]) {
        outln!(
            "  suggest {} {}: {} → {} ({})",
            s(&sg["task_name"]),
            s(&sg["resource"]),
            s(&sg["requested"]),
            s(&sg["suggested"]),
            s(&sg["reason"])
        );
    }

    let r = &v["recommendations"];
    outln!("\nWorker types (for the {} workload)", s(&r["basis"]));
    outln!("  {}", s(&r["why"]));
    let rows: Vec<Vec<String>> = arr(&r["options"])
        .take(6)
        .map(|c| {
            vec![
                s(&c["instance_type"]),
                c["count"].to_string(),
                format!("${:.2}", f(&c["hourly_cost"])),
                c["estimated_cost"]
                    .as_f64()
                    .map_or("-".into(), |x| format!("${x:.2}")),
                c["not_held"].to_string(),
                format!(
                    "{:.0}/{:.0}/{:.0}%",
                    100.0 * f(&c["cpu_fill"]),
                    100.0 * f(&c["memory_fill"]),
                    100.0 * f(&c["gpu_fill"])
                ),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &[
                "INSTANCE TYPE",
                "COUNT",
                "PER HOUR",
                "TO FINISH",
                "NOT HELD",
                "FILL CPU/MEM/GPU",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn arr(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn lines(v: &Value) {
    for l in arr(v) {
        outln!("  {}", s(l));
    }
}

/// Counts as a one-line bar chart.
fn sparkline(v: &Value) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let xs: Vec<u64> = arr(v).filter_map(Value::as_u64).collect();
    let max = xs.iter().copied().max().unwrap_or(0).max(1);
    let bars: String = xs
        .iter()
        .map(|&x| BARS[((x * 7).div_ceil(max)) as usize])
        .collect();
    format!("{bars} (max {max})")
}
