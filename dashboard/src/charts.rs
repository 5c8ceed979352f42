//! Charts drawn on the server as SVG with plotters: one code path for the live pages, the
//! static export (`/dashboard/charts/NAME.svg`) and reports. Pure: data in, SVG text out.

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use testmesh_consensus::model::Worker;
use testmesh_consensus::scaling::{CloudInstance, DecisionKind, DecisionRecord};

/// One node's statistics over time.
#[derive(Debug, Clone, Default)]
pub struct NodeSeries {
    pub node: String,
    pub hostname: String,
    pub points: Vec<StatPoint>,
}

/// One sample, utilisations as fractions 0–1.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatPoint {
    pub at_ms: u64,
    pub cpu: f64,
    pub memory: f64,
    /// Mean over the node's GPUs; None without GPUs.
    pub gpu: Option<f64>,
    pub gpu_memory: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Cpu,
    Memory,
    Gpu,
    GpuMemory,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Cpu, Metric::Memory, Metric::Gpu, Metric::GpuMemory];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::Gpu => "gpu",
            Metric::GpuMemory => "gpu_memory",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::Cpu => "CPU utilisation",
            Metric::Memory => "Memory in use",
            Metric::Gpu => "GPU utilisation",
            Metric::GpuMemory => "GPU memory in use",
        }
    }

    fn of(self, p: &StatPoint) -> Option<f64> {
        match self {
            Metric::Cpu => Some(p.cpu),
            Metric::Memory => Some(p.memory),
            Metric::Gpu => p.gpu,
            Metric::GpuMemory => p.gpu_memory,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("drawing the chart failed: {0}")]
pub struct ChartError(String);

fn e<E: std::fmt::Debug>(x: E) -> ChartError {
    ChartError(format!("{x:?}"))
}

const FONT: &str = "sans-serif";
/// Most columns of a heatmap; samples are averaged into them.
const COLUMNS: usize = 120;

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// Workers × time, colour = `metric` (0–100 %), over the last `window_ms` before `now_ms`.
pub fn heatmap(
    series: &[NodeSeries],
    metric: Metric,
    now_ms: u64,
    window_ms: u64,
) -> Result<String, ChartError> {
    let rows: Vec<&NodeSeries> = series
        .iter()
        .filter(|s| s.points.iter().any(|p| metric.of(p).is_some()))
        .collect();
    let height = (80 + 18 * rows.len().max(1)).min(2000) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (plot, legend) = root.split_horizontally(840);
        let minutes = window_ms as f64 / 60_000.0;
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("{} (last {minutes:.0} min)", metric.title()),
                (FONT, 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(130)
            .build_cartesian_2d(-minutes..0.0, 0.0..rows.len().max(1) as f64)
            .map_err(e)?;
        let names: Vec<String> = rows
            .iter()
            .map(|s| {
                short(
                    if s.hostname.is_empty() {
                        &s.node
                    } else {
                        &s.hostname
                    },
                    18,
                )
            })
            .collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("minutes ago")
            .y_labels(rows.len().clamp(1, 40))
            .y_label_formatter(&|y| names.get(y.floor() as usize).cloned().unwrap_or_default())
            .draw()
            .map_err(e)?;
        let step = window_ms.div_ceil(COLUMNS as u64).max(1);
        let start = now_ms.saturating_sub(window_ms);
        for (row, s) in rows.iter().enumerate() {
            let mut sums = vec![(0.0, 0u32); COLUMNS];
            for p in s
                .points
                .iter()
                .filter(|p| p.at_ms >= start && p.at_ms <= now_ms)
            {
                if let Some(v) = metric.of(p) {
                    let c = (((p.at_ms - start) / step) as usize).min(COLUMNS - 1);
                    sums[c].0 += v;
                    sums[c].1 += 1;
                }
            }
            let cells =
                sums.iter()
                    .enumerate()
                    .filter(|(_, (_, n))| *n > 0)
                    .map(|(c, (sum, n))| {
                        let v = (sum / *n as f64).clamp(0.0, 1.0);
                        let x0 = -minutes + c as f64 * step as f64 / 60_000.0;
                        let x1 = x0 + step as f64 / 60_000.0;
                        Rectangle::new(
                            [(x0, row as f64 + 0.05), (x1, row as f64 + 0.95)],
                            ViridisRGB.get_color(v as f32).filled(),
                        )
                    });
            chart.draw_series(cells).map_err(e)?;
        }
        // Colour scale.
        let mut bar = ChartBuilder::on(&legend)
            .margin_top(30)
            .margin_bottom(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0.0..1.0, 0.0..100.0)
            .map_err(e)?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&|v| format!("{v:.0}%"))
            .draw()
            .map_err(e)?;
        bar.draw_series((0..50).map(|i| {
            let v = i as f64 * 2.0;
            Rectangle::new(
                [(0.0, v), (1.0, v + 2.0)],
                ViridisRGB.get_color((v / 100.0) as f32).filled(),
            )
        }))
        .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Per worker, CPU cores: used (from its latest sample), reserved but unused, and free.
pub fn allocation(workers: &[Worker], used_cores: &[(String, f64)]) -> Result<String, ChartError> {
    let height = (90 + 22 * workers.len().max(1)).min(2000) as u32;
    let max = workers
        .iter()
        .map(|w| w.capacity.cpu.0 as f64 / 1000.0)
        .fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("CPU per worker: used, reserved, free (cores)", (FONT, 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(130)
            .build_cartesian_2d(0.0..max, 0.0..workers.len().max(1) as f64)
            .map_err(e)?;
        let names: Vec<String> = workers
            .iter()
            .map(|w| short(&w.hardware.hostname, 12) + " " + &short(&w.id.to_string(), 6))
            .collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("cores")
            .y_labels(workers.len().clamp(1, 40))
            .y_label_formatter(&|y| names.get(y.floor() as usize).cloned().unwrap_or_default())
            .draw()
            .map_err(e)?;
        let colours = [
            RGBColor(0x2a, 0x9d, 0x5c),
            RGBColor(0xf0, 0xa2, 0x02),
            RGBColor(0xdd, 0xdd, 0xdd),
        ];
        let labels = ["used", "reserved, unused", "free"];
        for (k, (colour, label)) in colours.into_iter().zip(labels).enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = workers
                .iter()
                .enumerate()
                .map(|(row, w)| {
                    let cap = w.capacity.cpu.0 as f64 / 1000.0;
                    let reserved = (w.allocated.cpu.0 as f64 / 1000.0).min(cap);
                    let used = used_cores
                        .iter()
                        .find(|(id, _)| *id == w.id.to_string())
                        .map_or(0.0, |(_, u)| *u)
                        .min(reserved.max(0.0));
                    let (a, b) = match k {
                        0 => (0.0, used),
                        1 => (used, reserved),
                        _ => (reserved, cap),
                    };
                    Rectangle::new(
                        [(a, row as f64 + 0.15), (b, row as f64 + 0.85)],
                        colour.filled(),
                    )
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Managed instances over time, with the queue length and every scale-up and scale-down.
pub fn scaling(
    decisions: &[DecisionRecord],
    instances: &[CloudInstance],
    now_ms: u64,
    window_ms: u64,
) -> Result<String, ChartError> {
    let start = now_ms.saturating_sub(window_ms);
    let minutes = window_ms as f64 / 60_000.0;
    let x = |t: u64| -((now_ms.saturating_sub(t)) as f64) / 60_000.0;
    // Instances alive at each change point.
    let mut times: Vec<u64> = vec![start, now_ms];
    for i in instances {
        times.push(i.requested_at.0.max(start));
        if let Some(e) = i.ended_at {
            times.push(e.0.max(start));
        }
    }
    times.retain(|t| *t >= start && *t <= now_ms);
    times.sort_unstable();
    times.dedup();
    let alive = |t: u64| {
        instances
            .iter()
            .filter(|i| i.requested_at.0 <= t && i.ended_at.is_none_or(|e| e.0 > t))
            .count() as f64
    };
    let queue: Vec<(f64, f64)> = decisions
        .iter()
        .filter(|d| d.at.0 >= start)
        .map(|d| (x(d.at.0), d.pending_tasks as f64))
        .collect();
    let top = times
        .iter()
        .map(|t| alive(*t))
        .chain(queue.iter().map(|q| q.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Scaling (last {minutes:.0} min)"), (FONT, 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(50)
            .build_cartesian_2d(-minutes..0.0, 0.0..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("minutes ago")
            .y_desc("count")
            .draw()
            .map_err(e)?;
        let mut steps = Vec::new();
        for w in times.windows(2) {
            let n = alive(w[0]);
            steps.push((x(w[0]), n));
            steps.push((x(w[1]), n));
        }
        let blue = RGBColor(0x1f, 0x77, 0xb4);
        chart
            .draw_series(LineSeries::new(steps, blue.stroke_width(2)))
            .map_err(e)?
            .label("instances")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], blue.stroke_width(2)));
        let grey = RGBColor(0x88, 0x88, 0x88);
        chart
            .draw_series(LineSeries::new(queue, grey))
            .map_err(e)?
            .label("pending tasks")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], grey));
        for (kind, colour, label) in [
            (DecisionKind::Up, RGBColor(0x2a, 0x9d, 0x5c), "scale up"),
            (DecisionKind::Down, RGBColor(0xd6, 0x27, 0x28), "scale down"),
        ] {
            let marks: Vec<TriangleMarker<(f64, f64), i32>> = decisions
                .iter()
                .filter(|d| d.kind == kind && d.at.0 >= start)
                .map(|d| TriangleMarker::new((x(d.at.0), top / 1.15), 6, colour.filled()))
                .collect();
            chart
                .draw_series(marks)
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| TriangleMarker::new((x + 6, y), 5, colour.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("well-formed SVG")
    }

    #[test]
    fn a_heatmap_has_a_cell_per_filled_column_and_row() {
        let series: Vec<NodeSeries> = (0..3)
            .map(|n| NodeSeries {
                node: format!("{n:016x}"),
                hostname: format!("host{n}"),
                points: (0..60)
                    .map(|i| StatPoint {
                        at_ms: 1_000_000 + i * 1000,
                        cpu: i as f64 / 60.0,
                        memory: 0.5,
                        gpu: (n == 0).then_some(0.9),
                        gpu_memory: None,
                    })
                    .collect(),
            })
            .collect();
        let svg = heatmap(&series, Metric::Cpu, 1_060_000, 60_000).unwrap();
        let doc = parse(&svg);
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert!(rects >= 3 * 60, "{rects} rects");
        assert!(svg.contains("host2") && svg.contains("CPU utilisation"));
        // Only the node with GPUs has a GPU row.
        let gpu = heatmap(&series, Metric::Gpu, 1_060_000, 60_000).unwrap();
        assert!(gpu.contains("host0") && !gpu.contains("host1"));
    }

    #[test]
    fn allocation_and_scaling_charts_are_well_formed_even_when_empty() {
        parse(&allocation(&[], &[]).unwrap());
        parse(&scaling(&[], &[], 3_600_000, 3_600_000).unwrap());
        parse(&heatmap(&[], Metric::Memory, 3_600_000, 3_600_000).unwrap());
    }
}
