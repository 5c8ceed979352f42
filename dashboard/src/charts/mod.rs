//! Charts drawn on the server as SVG with plotters: one code path for the live pages, the
//! static export (`/dashboard/charts/NAME.svg` and `.png`) and reports. Pure: data in, SVG
//! text out. Each chart carries tooltips: invisible shapes with a `<title>` over its marks.

mod bars;
mod heatmap;
mod time;
mod trends;

use std::fmt::Write;

use plotters::prelude::*;

pub use bars::{allocation, efficiency_by_task};
pub use heatmap::{Style, heatmap};
pub use time::{cost, efficiency, scaling};
pub use trends::trends;

/// One node's statistics over time.
#[derive(Debug, Clone, Default)]
pub struct NodeSeries {
    pub node: String,
    pub hostname: String,
    /// The worker's name as people know it (unique in the cluster); the hostname when empty.
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// GPU models, e.g. "H100"; empty without GPUs.
    pub gpu_models: Vec<String>,
    /// The worker's state (`active`, `lost`, …); empty for a node that is not a worker.
    pub state: String,
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

    pub fn of(self, p: &StatPoint) -> Option<f64> {
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

/// `s` cut to `n` characters, with an ellipsis when cut.
pub(crate) fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

impl NodeSeries {
    /// The row label: name, else hostname, else node id.
    pub fn label(&self) -> &str {
        [&self.name, &self.hostname, &self.node]
            .into_iter()
            .find(|s| !s.is_empty())
            .map_or("", |s| s.as_str())
    }
}

/// The usual gap between samples, from the data (the median gap of the densest series); the
/// charts size their columns to it so a short window shows no holes between samples.
pub(crate) fn sample_interval(series: &[NodeSeries], from_ms: u64, to_ms: u64) -> Option<u64> {
    let s = series.iter().max_by_key(|s| s.points.len())?;
    let mut gaps: Vec<u64> = s
        .points
        .windows(2)
        .filter(|w| w[0].at_ms >= from_ms && w[1].at_ms <= to_ms)
        .map(|w| w[1].at_ms.saturating_sub(w[0].at_ms))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_unstable();
    Some(gaps[gaps.len() / 2])
}

/// Columns for a window: one per sample interval, between 4 and `most`.
pub(crate) fn columns(series: &[NodeSeries], span: &crate::view::Span, most: usize) -> usize {
    sample_interval(series, span.start_ms(), span.end_ms)
        .map_or(most, |i| span.len_ms.div_ceil(i) as usize)
        .clamp(4, most)
}

/// A time chart's drawing context (x: axis units before the end, y: values).
pub(crate) type TimeChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// The series legend every time chart draws: top left, over a light background.
pub(crate) fn series_legend<'b>(chart: &mut TimeChart<'b, 'b>) -> Result<(), ChartError> {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e)
}

/// The plot's pixel extent along x, for the zoom attributes.
pub(crate) fn x_extent(chart: &TimeChart<'_, '_>, span: &crate::view::Span) -> (i32, i32) {
    let (l, _) = chart.backend_coord(&(span.left(), 0.0));
    let (r, _) = chart.backend_coord(&(0.0, 0.0));
    (l, r)
}

/// Sets the zoom attributes of a time chart's root element.
pub(crate) fn mark_time(mut svg: String, span: &crate::view::Span, x0: i32, x1: i32) -> String {
    if let Some(i) = svg.find("<svg") {
        svg.insert_str(i + 4, &span.attributes(x0, x1));
    }
    svg
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Span;

    const H: Span = Span {
        end_ms: 3_600_000,
        len_ms: 3_600_000,
        live: true,
    };

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("well-formed SVG")
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
            ..Default::default()
        }];
        let r = [ReservedSpan {
            start_ms: 0,
            end_ms: None,
            cpu_cores: 4.0,
            gpus: 2.0,
            ..Default::default()
        }];
        let b = time::efficiency_buckets(&series, &r, &Span::last(600_000, 600_000));
        assert_eq!(b.len(), 60);
        assert!((b[10][0] - 4.0).abs() < 1e-9, "reserved cores {:?}", b[10]);
        assert!((b[10][1] - 2.0).abs() < 1e-9, "used cores {:?}", b[10]);
        assert_eq!((b[10][2], b[10][3]), (2.0, 0.0), "two GPUs reserved, idle");
        let svg = efficiency(&series, &r, &Span::last(600_000, 600_000)).unwrap();
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
        let svg = cost(&s, &Span::last(3_600_000, 3_600_000)).unwrap();
        parse(&svg);
        // 58 min ago the last tooltip starts: $3.60/h for 58 min plus a quarter hour.
        assert!(
            svg.contains("2.0 min ago: $4.38 spent in the window"),
            "{svg}"
        );
        assert!(svg.contains("budget allows"));
        assert!(svg.contains("docker") && svg.contains("aws"));
    }

    #[test]
    fn allocation_and_scaling_charts_are_well_formed_even_when_empty() {
        parse(&allocation(&[], &Default::default(), &[]).unwrap());
        parse(&efficiency_by_task(&[], 10).unwrap());
        parse(&efficiency(&[], &[], &H).unwrap());
        parse(&cost(&Default::default(), &H).unwrap());
        parse(&scaling(&[], &[], &H).unwrap());
        parse(&trends(&[], &[], &H).unwrap());
        parse(&heatmap(&[], Metric::Memory, &H, Style::Compact, &[]).unwrap());
    }
}
