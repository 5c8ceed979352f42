//! The fleet's utilisation over a window with least-squares trend lines, and a mark for each
//! anomaly (explained in its tooltip).

use plotters::prelude::*;

use super::{ChartError, FONT, Metric, NodeSeries, Tips, e};
use crate::anomaly::{self, Anomaly};
use crate::view::Span;

const COLOURS: [(Metric, RGBColor); 3] = [
    (Metric::Cpu, RGBColor(0x1f, 0x77, 0xb4)),
    (Metric::Memory, RGBColor(0x2a, 0x9d, 0x5c)),
    (Metric::Gpu, RGBColor(0xd6, 0x27, 0x28)),
];

/// Fleet means of CPU, memory and GPU with their trends; anomalies as triangles on top.
pub fn trends(series: &[NodeSeries], marks: &[Anomaly], span: &Span) -> Result<String, ChartError> {
    let n = super::columns(series, span, anomaly::BUCKETS);
    let step = span.len_ms.div_ceil(n as u64).max(1);
    let x_of = |b: f64| span.left() + b * step as f64 / span.unit().0;
    let mut svg = String::new();
    let mut tips = Tips::default();
    let plot_x;
    {
        let root = SVGBackend::with_string(&mut svg, (900, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Fleet utilisation and its trend ({})", span.caption()),
                (FONT, 16),
            )
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(span.left()..0.0, 0.0..115.0)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_desc(span.desc())
            .y_desc("% (mean of workers)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(e)?;
        for (metric, colour) in COLOURS {
            let Some((mean, a, slope)) = anomaly::trend(series, metric, span, n) else {
                continue;
            };
            let pts: Vec<(f64, f64)> = mean
                .iter()
                .enumerate()
                .filter_map(|(b, v)| v.map(|v| (x_of(b as f64 + 0.5), v * 100.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(e)?
                .label(metric.name())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
            let line = [0.0, n as f64 - 1.0]
                .map(|b| (x_of(b + 0.5), ((a + slope * b) * 100.0).clamp(0.0, 110.0)));
            chart
                .draw_series(DashedLineSeries::new(
                    line,
                    6,
                    4,
                    colour.mix(0.7).stroke_width(1),
                ))
                .map_err(e)?;
            let per_hour = slope * 100.0 * 3_600_000.0 / step as f64;
            let (x0, y0) = chart.backend_coord(&line[0]);
            let (x1, y1) = chart.backend_coord(&line[1]);
            tips.add(
                (x0, y0.min(y1) - 4),
                (x1, y0.max(y1) + 4),
                &format!(
                    "{} trend: {:+.1} points per hour (least squares over the window; now {:.0}%)",
                    metric.name(),
                    per_hour,
                    pts.last().map_or(0.0, |p| p.1)
                ),
            );
            for (x, y) in pts.iter().step_by(4) {
                let (px, py) = chart.backend_coord(&(*x, *y));
                tips.add(
                    (px - 4, py - 4),
                    (px + 4, py + 4),
                    &format!("{}: {y:.0}% mean", metric.name()),
                );
            }
        }
        let red = RGBColor(0xd6, 0x27, 0x28);
        for m in marks {
            let x = span.x(m.from_ms.max(span.start_ms()));
            let (px, py) = chart.backend_coord(&(x, 108.0));
            root.draw(&TriangleMarker::new((px, py), 6, red.filled()))
                .map_err(e)?;
            tips.add((px - 7, py - 7), (px + 7, py + 7), &m.text);
        }
        super::series_legend(&mut chart)?;
        plot_x = super::x_extent(&chart, span);
        root.present().map_err(e)?;
    }
    Ok(super::mark_time(tips.apply(svg), span, plot_x.0, plot_x.1))
}
