//! Charts drawn on the server as SVG with plotters: one code path for the live pages, the
//! static export (`/dashboard/charts/NAME.svg` and `.png`) and reports. Pure: data in, SVG
//! text out. Each chart carries tooltips: invisible shapes with a `<title>` over its marks.

mod bars;
mod time;

use std::fmt::Write;

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

pub use bars::{allocation, efficiency_by_task};
pub use time::{cost, efficiency, scaling};

/// One node's statistics over time.
#[derive(Debug, Clone, Default)]
pub struct NodeSeries {
    pub node: String,
    pub hostname: String,
    /// Capacity, to turn utilisation into cores and GPUs.
    pub cores: f64,
    pub gpus: u32,
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

/// Tooltips collected while drawing, in the backend's pixel coordinates.
#[derive(Default)]
pub(crate) struct Tips(String);

impl Tips {
    pub(crate) fn add(&mut self, a: (i32, i32), b: (i32, i32), text: &str) {
        let (x0, x1) = (a.0.min(b.0), a.0.max(b.0));
        let (y0, y1) = (a.1.min(b.1), a.1.max(b.1));
        let _ = write!(
            self.0,
            "<rect x='{x0}' y='{y0}' width='{}' height='{}'><title>{}</title></rect>",
            (x1 - x0).max(1),
            (y1 - y0).max(1),
            crate::esc(text)
        );
    }

    /// The SVG with the tooltips on top: painted with zero opacity, so they catch the pointer
    /// but change nothing in a PNG or PDF.
    pub(crate) fn apply(self, mut svg: String) -> String {
        if let Some(i) = svg.rfind("</svg>") {
            svg.insert_str(
                i,
                &format!(
                    "<g class='tips' fill='#000' fill-opacity='0'>{}</g>",
                    self.0
                ),
            );
        }
        svg
    }
}

/// A row of coloured boxes and labels: a legend that never covers the data.
pub(crate) fn legend_strip<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    items: &[(RGBColor, &str)],
) -> Result<(), ChartError> {
    let mut x = 60;
    for (colour, label) in items {
        area.draw(&Rectangle::new([(x, 8), (x + 12, 20)], colour.filled()))
            .map_err(e)?;
        area.draw(&Text::new(label.to_string(), (x + 17, 8), (FONT, 13)))
            .map_err(e)?;
        x += 40 + 7 * label.chars().count() as i32;
    }
    Ok(())
}

/// Percent with no decimals, or a dash.
pub(crate) fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.0}%", v * 100.0))
}
/// Most columns of a heatmap; samples are averaged into them.
const COLUMNS: usize = 120;
/// Columns per heatmap tooltip.
const TIP_COLUMNS: usize = 10;

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
    let mut tips = Tips::default();
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
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
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
            // Neighbouring columns of the same colour become one rectangle: a steady worker
            // costs a few shapes instead of one per column.
            let mut cells = Vec::new();
            let mut run: Option<(usize, usize, u8)> = None;
            let level = |c: usize| {
                let (sum, n) = sums[c];
                (n > 0).then(|| ((sum / n as f64).clamp(0.0, 1.0) * 63.0).round() as u8)
            };
            for c in 0..=COLUMNS {
                let l = if c < COLUMNS { level(c) } else { None };
                match (run, l) {
                    (Some((from, _, q)), Some(v)) if v == q => run = Some((from, c, q)),
                    _ => {
                        if let Some((from, to, q)) = run.take() {
                            cells.push((from, to, q));
                        }
                        run = l.map(|v| (c, c, v));
                    }
                }
            }
            let x_of = |c: usize| -minutes + c as f64 * step as f64 / 60_000.0;
            chart
                .draw_series(cells.iter().map(|&(from, to, q)| {
                    Rectangle::new(
                        [
                            (x_of(from), row as f64 + 0.05),
                            (x_of(to + 1), row as f64 + 0.95),
                        ],
                        ViridisRGB.get_color(q as f32 / 63.0).filled(),
                    )
                }))
                .map_err(e)?;
            // A tooltip per block of columns: the mean and peak there.
            for b in (0..COLUMNS).step_by(TIP_COLUMNS) {
                let cols = b..(b + TIP_COLUMNS).min(COLUMNS);
                let (sum, n) = cols
                    .clone()
                    .fold((0.0, 0), |a, c| (a.0 + sums[c].0, a.1 + sums[c].1));
                if n == 0 {
                    continue;
                }
                let peak = cols
                    .clone()
                    .filter(|c| sums[*c].1 > 0)
                    .map(|c| sums[c].0 / sums[c].1 as f64)
                    .fold(0.0, f64::max);
                let ago = |c: usize| (minutes - c as f64 * step as f64 / 60_000.0).max(0.0);
                tips.add(
                    chart.backend_coord(&(x_of(cols.start), row as f64 + 0.05)),
                    chart.backend_coord(&(x_of(cols.end), row as f64 + 0.95)),
                    &format!(
                        "{}: {} {:.0}–{:.0} min ago: mean {}, peak {}",
                        names[row],
                        metric.name(),
                        ago(cols.start),
                        ago(cols.end),
                        pct(Some(sum / n as f64)),
                        pct(Some(peak))
                    ),
                );
            }
        }
        // Colour scale.
        let mut bar = ChartBuilder::on(&legend)
            .margin_top(30)
            .margin_bottom(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0.0..1.0, 0.0..100.0)
            .map_err(e)?;
        bar.configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
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
    Ok(tips.apply(svg))
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
                cores: 4.0,
                gpus: u32::from(n == 0),
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
        // Tooltips name the worker and the figures.
        let tips: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            tips.iter()
                .any(|t| t.starts_with("host2: cpu") && t.contains("peak")),
            "{tips:?}"
        );
    }

    #[test]
    fn a_steady_row_is_drawn_as_few_rectangles() {
        let series = vec![NodeSeries {
            node: "a".into(),
            hostname: "steady".into(),
            cores: 1.0,
            gpus: 0,
            points: (0..3600)
                .map(|i| StatPoint {
                    at_ms: i * 1000,
                    cpu: 0.5,
                    ..StatPoint::default()
                })
                .collect(),
        }];
        let svg = heatmap(&series, Metric::Cpu, 3_600_000, 3_600_000).unwrap();
        let doc = parse(&svg);
        let cells = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") != Some("#FFFFFF"))
            .filter(|n| n.ancestors().all(|a| a.attribute("class") != Some("tips")))
            .count();
        // One run for the row plus the 50-step colour scale and the background.
        assert!(cells < 60, "{cells} rects");
    }

    #[test]
    fn efficiency_over_time_counts_reserved_and_used() {
        use crate::views::ReservedSpan;
        let series = vec![NodeSeries {
            node: "a".into(),
            hostname: "h".into(),
            cores: 8.0,
            gpus: 2,
            points: (0..600)
                .map(|i| StatPoint {
                    at_ms: i * 1000,
                    cpu: 0.25,
                    gpu: Some(0.0),
                    ..StatPoint::default()
                })
                .collect(),
        }];
        let r = [ReservedSpan {
            start_ms: 0,
            end_ms: None,
            cpu_cores: 4.0,
            gpus: 2.0,
        }];
        let b = time::efficiency_buckets(&series, &r, 600_000, 600_000);
        assert_eq!(b.len(), 60);
        assert!((b[10][0] - 4.0).abs() < 1e-9, "reserved cores {:?}", b[10]);
        assert!((b[10][1] - 2.0).abs() < 1e-9, "used cores {:?}", b[10]);
        assert_eq!((b[10][2], b[10][3]), (2.0, 0.0), "two GPUs reserved, idle");
        let svg = efficiency(&series, &r, 600_000, 600_000).unwrap();
        assert!(
            svg.contains("2.00 GPUs reserved, 0.00 used (0%)"),
            "idle GPUs in the tooltips"
        );
        parse(&svg);
    }

    #[test]
    fn cost_accumulates_per_instance_against_the_budget() {
        use crate::views::ScalingView;
        use testmesh_consensus::UnixMillis;
        use testmesh_consensus::scaling::{CloudInstance, InstanceState};
        let inst = |provider: &str, from: u64, to: Option<u64>| CloudInstance {
            intent: from,
            provider: provider.into(),
            instance_type: "t".into(),
            price_micros_per_hour: 3_600_000,
            state: InstanceState::Joined,
            provider_id: None,
            worker: None,
            requested_at: UnixMillis(from),
            launched_at: None,
            joined_at: None,
            ended_at: to.map(UnixMillis),
            end_reason: None,
        };
        let s = ScalingView {
            enabled: true,
            decisions: vec![],
            instances: vec![
                inst("docker", 0, None),
                inst("aws", 1_800_000, Some(2_700_000)),
            ],
            budget_micros_per_hour: Some(10_000_000),
        };
        let svg = cost(&s, 3_600_000, 3_600_000).unwrap();
        parse(&svg);
        // 58 min ago the last tooltip starts: $3.60/h for 58 min plus a quarter hour.
        assert!(
            svg.contains("2 min ago: $4.38 spent in the window"),
            "{svg}"
        );
        assert!(svg.contains("budget allows"));
        assert!(svg.contains("docker") && svg.contains("aws"));
    }

    #[test]
    fn allocation_and_scaling_charts_are_well_formed_even_when_empty() {
        parse(&allocation(&[], &[]).unwrap());
        parse(&efficiency_by_task(&[], 10).unwrap());
        parse(&efficiency(&[], &[], 3_600_000, 3_600_000).unwrap());
        parse(&cost(&Default::default(), 3_600_000, 3_600_000).unwrap());
        parse(&scaling(&[], &[], 3_600_000, 3_600_000).unwrap());
        parse(&heatmap(&[], Metric::Memory, 3_600_000, 3_600_000).unwrap());
    }
}
