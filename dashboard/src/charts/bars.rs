//! Bar charts: allocation per worker and resource, efficiency per task name.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use testmesh_consensus::NodeId;
use testmesh_consensus::model::Worker;

use super::{ChartError, FONT, Tips, e, legend_strip, short};
use crate::views::{By, EfficiencyRow, WorkerUsage};

const GREEN: RGBColor = RGBColor(0x2a, 0x9d, 0x5c);
const AMBER: RGBColor = RGBColor(0xf0, 0xa2, 0x02);
const GREY: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// One row's bar in one panel: three segments from zero.
struct Bar {
    segments: [f64; 3],
    tip: String,
}

/// One worker's figures: per panel (CPU cores, memory GiB, GPUs) the three segments, and the
/// GPUs reserved but idle.
struct Figures {
    name: String,
    panels: [[f64; 3]; 3],
    capacity: [f64; 3],
    idle_gpus: Vec<u32>,
}

/// The tooltip of a row standing for `who` with these summed figures.
fn tip(k: usize, who: &str, f: &[f64; 3], cap: f64, idle: &[u32]) -> String {
    match k {
        0 => format!(
            "{who}: CPU {:.1} used, {:.1} reserved of {cap:.1} cores",
            f[0],
            f[0] + f[1]
        ),
        1 => format!(
            "{who}: memory {:.1} GiB in use, {:.1} reserved of {cap:.1} GiB",
            f[0],
            f[0] + f[1]
        ),
        _ => {
            let reserved = f[0] + f[1];
            if f[1] == 0.0 {
                format!("{who}: {reserved} of {cap} GPUs reserved, all working")
            } else if idle.is_empty() {
                format!(
                    "{who}: {reserved} of {cap} GPUs reserved; {} idle while reserved",
                    f[1]
                )
            } else {
                format!("{who}: {reserved} of {cap} GPUs reserved; idle while reserved: {idle:?}")
            }
        }
    }
}

/// Per worker and resource (CPU cores, memory GiB, GPUs): used, reserved but unused, free.
/// Reserved GPUs that do no work are drawn red: allocated-but-idle stands out. Workers are
/// labelled by `names`; beyond [`super::heatmap::MAX_ROWS`] neighbours share a row (sums).
pub fn allocation(
    workers: &[Worker],
    names: &BTreeMap<NodeId, String>,
    usage: &[WorkerUsage],
) -> Result<String, ChartError> {
    let use_of = |w: &Worker| usage.iter().find(|u| u.id == w.id.to_string());
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let figures: Vec<Figures> = workers
        .iter()
        .map(|w| {
            let u = use_of(w);
            let cap = w.capacity.cpu.0 as f64 / 1000.0;
            let reserved = (w.allocated.cpu.0 as f64 / 1000.0).min(cap);
            let used = u.map_or(0.0, |u| u.cpu_cores).min(cap);
            let cpu = [used, (reserved - used).max(0.0), cap - reserved.max(used)];
            let mcap = gib(w.capacity.memory.0);
            let mres = gib(w.allocated.memory.0).min(mcap);
            let mused = u.map_or(0.0, |u| gib(u.memory_bytes)).min(mcap);
            let mem = [mused, (mres - mused).max(0.0), mcap - mres.max(mused)];
            let total = w.capacity.gpus.len() as f64;
            let busy: Vec<u32> = u.map(|u| u.busy_gpus.clone()).unwrap_or_default();
            let greserved = w.allocated.gpus.len() as f64;
            let idle: Vec<u32> = w
                .allocated
                .gpus
                .keys()
                .filter(|i| !busy.contains(i))
                .copied()
                .collect();
            let gpu = [
                greserved - idle.len() as f64,
                idle.len() as f64,
                (total - greserved).max(0.0),
            ];
            Figures {
                name: names
                    .get(&w.id)
                    .cloned()
                    .unwrap_or_else(|| w.hardware.hostname.clone()),
                panels: [cpu, mem, gpu],
                capacity: [cap, mcap, total],
                idle_gpus: idle,
            }
        })
        .collect();
    let group = figures.len().div_ceil(super::heatmap::MAX_ROWS).max(1);
    let chunks: Vec<&[Figures]> = figures.chunks(group).collect();
    let labels: Vec<String> = chunks
        .iter()
        .map(|c| {
            if c.len() == 1 {
                short(&c[0].name, 22)
            } else {
                format!("{} +{}", short(&c[0].name, 16), c.len() - 1)
            }
        })
        .collect();
    // Title, the colour of the middle segment (reserved but not used), bars.
    let mut panels: Vec<(&str, RGBColor, Vec<Bar>)> = Vec::new();
    for (k, (title, middle)) in [
        ("CPU (cores)", AMBER),
        ("Memory (GiB)", AMBER),
        ("GPUs", RED),
    ]
    .into_iter()
    .enumerate()
    {
        let bars = chunks
            .iter()
            .map(|c| {
                let mut sum = [0.0; 3];
                for f in c.iter() {
                    for (s, v) in sum.iter_mut().zip(f.panels[k]) {
                        *s += v;
                    }
                }
                let cap: f64 = c.iter().map(|f| f.capacity[k]).sum();
                let who = if c.len() == 1 {
                    c[0].name.clone()
                } else {
                    let listed: Vec<&str> = c.iter().take(8).map(|f| f.name.as_str()).collect();
                    format!(
                        "{} workers ({}{})",
                        c.len(),
                        listed.join(", "),
                        if c.len() > 8 { ", …" } else { "" }
                    )
                };
                let idle = if c.len() == 1 {
                    c[0].idle_gpus.clone()
                } else {
                    Vec::new()
                };
                Bar {
                    segments: sum,
                    tip: tip(k, &who, &sum, cap, &idle),
                }
            })
            .collect();
        panels.push((title, middle, bars));
    }
    let rows = chunks.len().max(1);
    let height = 150 + super::heatmap::ROW_PX * rows as u32;

    let mut svg = String::new();
    let mut tips = Tips::default();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled("Allocation per worker: used, reserved, free", (FONT, 16))
            .map_err(e)?;
        let (root, strip) = root.split_vertically(height as i32 - 48);
        let (first, rest) = root.split_horizontally(420);
        let (second, third) = rest.split_horizontally(290);
        for (k, (area, (title, middle, bars))) in
            [first, second, third].iter().zip(&panels).enumerate()
        {
            let max = bars
                .iter()
                .map(|b| b.segments.iter().sum::<f64>())
                .fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(*title, (FONT, 13))
                .margin(6)
                .x_label_area_size(40)
                .y_label_area_size(if k == 0 { 150 } else { 4 })
                .build_cartesian_2d(0.0..max, 0.0..bars.len().max(1) as f64)
                .map_err(e)?;
            chart
                .configure_mesh()
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 13))
                .disable_y_mesh()
                .x_labels(4)
                .disable_y_axis()
                .draw()
                .map_err(e)?;
            if k == 0 {
                // One label per row, smaller than the row: they cannot overlap.
                let style = TextStyle::from((FONT, 11).into_font())
                    .pos(Pos::new(HPos::Right, VPos::Center));
                for (row, l) in labels.iter().enumerate() {
                    let (x, y) = chart.backend_coord(&(0.0, row as f64 + 0.5));
                    let (bx, by) = area.get_base_pixel();
                    area.draw(&Text::new(l.clone(), (x - bx - 6, y - by), style.clone()))
                        .map_err(e)?;
                }
            }
            for (s, colour) in [GREEN, *middle, GREY].into_iter().enumerate() {
                let rects: Vec<Rectangle<(f64, f64)>> = bars
                    .iter()
                    .enumerate()
                    .map(|(row, b)| {
                        let from: f64 = b.segments[..s].iter().sum();
                        Rectangle::new(
                            [
                                (from, row as f64 + 0.15),
                                (from + b.segments[s], row as f64 + 0.85),
                            ],
                            colour.filled(),
                        )
                    })
                    .collect();
                chart.draw_series(rects).map_err(e)?;
            }
            for (row, b) in bars.iter().enumerate() {
                tips.add(
                    chart.backend_coord(&(0.0, row as f64 + 0.1)),
                    chart.backend_coord(&(max, row as f64 + 0.9)),
                    &b.tip,
                );
            }
        }
        legend_strip(
            &strip,
            &[
                (GREEN, "used / working"),
                (AMBER, "reserved, unused"),
                (RED, "GPU reserved but IDLE"),
                (GREY, "free"),
            ],
        )?;
        root.present().map_err(e)?;
    }
    Ok(tips.apply(svg))
}

/// Reserved against used core-hours per task name (the largest `limit` reservations).
pub fn efficiency_by_task(rows: &[EfficiencyRow], limit: usize) -> Result<String, ChartError> {
    let mut rows: Vec<&EfficiencyRow> = rows.iter().filter(|r| r.by == By::TaskName).collect();
    rows.sort_by(|a, b| {
        b.cpu_reserved_core_hours
            .total_cmp(&a.cpu_reserved_core_hours)
    });
    rows.truncate(limit);
    let height = (130 + 24 * rows.len().max(1)) as u32;
    let max = rows
        .iter()
        .map(|r| r.cpu_reserved_core_hours.max(r.cpu_used_core_hours))
        .fold(0.001, f64::max);
    let names: Vec<String> = rows.iter().map(|r| short(&r.key, 20)).collect();
    let mut svg = String::new();
    let mut tips = Tips::default();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (root, strip) = root.split_vertically(height as i32 - 30);
        let mut chart = ChartBuilder::on(&root)
            .caption("Core-hours per task name: reserved and used", (FONT, 16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max * 1.05, 0.0..rows.len().max(1) as f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .disable_y_mesh()
            .x_desc("core-hours")
            .y_labels(rows.len().clamp(1, 60))
            .y_label_formatter(&|y| names.get(y.floor() as usize).cloned().unwrap_or_default())
            .draw()
            .map_err(e)?;
        let reserved = RGBColor(0xc6, 0xdb, 0xef);
        let used = RGBColor(0x1f, 0x77, 0xb4);
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [
                        (0.0, i as f64 + 0.1),
                        (r.cpu_reserved_core_hours, i as f64 + 0.9),
                    ],
                    reserved.filled(),
                )
            }))
            .map_err(e)?
            .label("reserved")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], reserved.filled()));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [
                        (0.0, i as f64 + 0.3),
                        (r.cpu_used_core_hours, i as f64 + 0.7),
                    ],
                    used.filled(),
                )
            }))
            .map_err(e)?
            .label("used")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], used.filled()));
        for (i, r) in rows.iter().enumerate() {
            let eff = (r.cpu_reserved_core_hours > 0.0)
                .then(|| r.cpu_used_core_hours / r.cpu_reserved_core_hours);
            tips.add(
                chart.backend_coord(&(0.0, i as f64 + 0.1)),
                chart.backend_coord(&(max, i as f64 + 0.9)),
                &format!(
                    "{}: {} attempts, {:.2} of {:.2} core-h used ({}), memory peak {:.2} of {:.2} GiB-h, {:.2} GPU-h",
                    r.key,
                    r.attempts,
                    r.cpu_used_core_hours,
                    r.cpu_reserved_core_hours,
                    super::pct(eff),
                    r.memory_peak_gib_hours,
                    r.memory_reserved_gib_hours,
                    r.gpu_reserved_hours
                ),
            );
        }
        legend_strip(&strip, &[(reserved, "reserved"), (used, "used")])?;
        root.present().map_err(e)?;
    }
    Ok(tips.apply(svg))
}
