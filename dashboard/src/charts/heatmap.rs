//! Workers × time heatmaps. Rows are labelled by worker name, one label per row at a fixed
//! height so they never overlap; beyond [`MAX_ROWS`] neighbouring workers share a row (their
//! mean). Pages get the cells as one inline PNG (a few KiB at 100 workers instead of a
//! rectangle per cell); the PNG/PDF export keeps vector cells.

use base64::Engine;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{ChartError, FONT, Metric, NodeSeries, Tips, e, pct, short};
use crate::anomaly::Anomaly;
use crate::view::Span;

/// Most columns; samples are averaged into them.
const COLUMNS: usize = 120;
/// Most rows; more workers than this are grouped.
pub const MAX_ROWS: usize = 100;
/// Pixels per row and the label font: the font is smaller than the row, so labels cannot
/// touch.
pub const ROW_PX: u32 = 14;
const LABEL_FONT: u32 = 13;
/// Tooltips per chart, shared out over the rows (at least one per row).
const TIP_BUDGET: usize = 480;
const WIDTH: u32 = 900;
const LEGEND: u32 = 60;

/// How the cells are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One rectangle per run of equal colour: for PNG and PDF export.
    Vector,
    /// One embedded PNG for all cells: for pages (the tooltips stay SVG).
    Compact,
}

/// One row: the workers it stands for and the mean level per column.
struct Row {
    label: String,
    /// Host, GPUs and labels of a one-worker row, for its tooltips.
    about: Option<String>,
    members: Vec<String>,
    /// Node ids of the members (anomaly marks find their row by them).
    nodes: Vec<String>,
    /// (sum, samples) per column.
    sums: Vec<(f64, u32)>,
}

impl Row {
    fn level(&self, c: usize) -> Option<f64> {
        let (sum, n) = self.sums[c];
        (n > 0).then(|| (sum / n as f64).clamp(0.0, 1.0))
    }
}

fn rows(series: &[&NodeSeries], metric: Metric, span: &Span, columns: usize) -> Vec<Row> {
    let group = series.len().div_ceil(MAX_ROWS).max(1);
    let step = span.len_ms.div_ceil(columns as u64).max(1);
    let start = span.start_ms();
    series
        .chunks(group)
        .map(|chunk| {
            let mut sums = vec![(0.0, 0u32); columns];
            for s in chunk {
                for p in s
                    .points
                    .iter()
                    .filter(|p| p.at_ms >= start && p.at_ms <= span.end_ms)
                {
                    if let Some(v) = metric.of(p) {
                        let c = (((p.at_ms - start) / step) as usize).min(columns - 1);
                        sums[c].0 += v;
                        sums[c].1 += 1;
                    }
                }
            }
            let members: Vec<String> = chunk.iter().map(|s| s.label().to_string()).collect();
            let about = (chunk.len() == 1).then(|| describe(chunk[0])).flatten();
            let label = if members.len() == 1 {
                short(&members[0], 22)
            } else {
                format!("{} +{}", short(&members[0], 16), members.len() - 1)
            };
            Row {
                label,
                about,
                members,
                nodes: chunk.iter().map(|s| s.node.clone()).collect(),
                sums,
            }
        })
        .collect()
}

/// "host vm · 2 GPUs Sim A100 · pool=gpu": what tells a worker apart besides its name.
fn describe(s: &NodeSeries) -> Option<String> {
    let mut parts = Vec::new();
    if !s.hostname.is_empty() && s.hostname != s.label() {
        parts.push(format!("host {}", s.hostname));
    }
    if s.gpus > 0 {
        let plural = if s.gpus == 1 { "" } else { "s" };
        let models = s.gpu_models.join("/");
        parts.push(
            format!("{} GPU{plural} {models}", s.gpus)
                .trim_end()
                .to_string(),
        );
    }
    parts.extend(s.labels.iter().map(|(k, v)| format!("{k}={v}")));
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// Workers × time, colour = `metric` (0–100 %), over `span`. Rows in the order given;
/// anomalies of this metric are outlined in red with their explanation as the tooltip.
pub fn heatmap(
    series: &[NodeSeries],
    metric: Metric,
    span: &Span,
    style: Style,
    marks: &[Anomaly],
) -> Result<String, ChartError> {
    let shown: Vec<&NodeSeries> = series
        .iter()
        .filter(|s| s.points.iter().any(|p| metric.of(p).is_some()))
        .collect();
    let columns = super::columns(series, span, COLUMNS);
    let rows = rows(&shown, metric, span, columns);
    let n = rows.len().max(1);
    let height = 90 + ROW_PX * n as u32;
    let (per, _) = span.unit();
    let step = span.len_ms.div_ceil(columns as u64).max(1);
    let x_of = |c: usize| span.left() + (c as u64 * step) as f64 / per;
    let mut svg = String::new();
    let mut tips = Tips::default();
    // Anomaly tooltips go on top of the cell tooltips.
    let mut marked = Tips::default();
    let mut image = None;
    let plot_x;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND);
        let grouped = rows.iter().any(|r| r.members.len() > 1);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!(
                    "{} ({}{})",
                    metric.title(),
                    span.caption(),
                    if grouped {
                        format!(", {} workers in {} rows", shown.len(), rows.len())
                    } else {
                        String::new()
                    }
                ),
                (FONT, 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(150)
            .build_cartesian_2d(span.left()..0.0, 0.0..n as f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .disable_mesh()
            .disable_y_axis()
            .x_desc(span.desc())
            .draw()
            .map_err(e)?;
        // Row labels, one per row, right-aligned against the plot.
        let label_style = TextStyle::from((FONT, LABEL_FONT).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, r) in rows.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(span.left(), i as f64 + 0.5));
            let (bx, by) = plot.get_base_pixel();
            plot.draw(&Text::new(
                r.label.clone(),
                (x - bx - 6, y - by),
                label_style.clone(),
            ))
            .map_err(e)?;
        }
        let (px0, py0) = chart.backend_coord(&(span.left(), n as f64));
        let (px1, py1) = chart.backend_coord(&(0.0, 0.0));
        plot_x = (px0, px1);
        match style {
            Style::Vector => {
                for (i, r) in rows.iter().enumerate() {
                    // Neighbouring columns of the same colour become one rectangle.
                    let mut cells = Vec::new();
                    let mut run: Option<(usize, usize, u8)> = None;
                    let q = |c: usize| r.level(c).map(|v| (v * 63.0).round() as u8);
                    for c in 0..=columns {
                        let l = if c < columns { q(c) } else { None };
                        match (run, l) {
                            (Some((from, _, x)), Some(v)) if v == x => run = Some((from, c, x)),
                            _ => {
                                if let Some(done) = run.take() {
                                    cells.push(done);
                                }
                                run = l.map(|v| (c, c, v));
                            }
                        }
                    }
                    chart
                        .draw_series(cells.iter().map(|&(from, to, q)| {
                            Rectangle::new(
                                [
                                    (x_of(from), i as f64 + 0.05),
                                    (x_of(to + 1), i as f64 + 0.95),
                                ],
                                ViridisRGB.get_color(q as f32 / 63.0).filled(),
                            )
                        }))
                        .map_err(e)?;
                }
            }
            Style::Compact => {
                image = Some((
                    px0,
                    py0,
                    (px1 - px0).max(1),
                    (py1 - py0).max(1),
                    raster(&rows, columns)?,
                ));
            }
        }
        let red = RGBColor(0xd6, 0x27, 0x28);
        for m in marks.iter().filter(|m| m.metric == Some(metric)) {
            let Some(i) = rows.iter().position(|r| r.nodes.contains(&m.node)) else {
                continue;
            };
            let (a, b) = (
                span.x(m.from_ms.max(span.start_ms())),
                span.x(m.to_ms.min(span.end_ms)),
            );
            chart
                .draw_series([Rectangle::new(
                    [(a, i as f64 + 0.02), (b, i as f64 + 0.98)],
                    red.stroke_width(2),
                )])
                .map_err(e)?;
            marked.add(
                chart.backend_coord(&(a, i as f64 + 0.02)),
                chart.backend_coord(&(b, i as f64 + 0.98)),
                &m.text,
            );
        }
        // Tooltips: per row, blocks of columns with the mean and peak there.
        let blocks = (TIP_BUDGET / n).clamp(1, 12).min(columns);
        let per_block = columns.div_ceil(blocks);
        for (i, r) in rows.iter().enumerate() {
            let who = if r.members.len() == 1 {
                match &r.about {
                    Some(a) => format!("{} ({a})", r.members[0]),
                    None => r.members[0].clone(),
                }
            } else {
                let listed: Vec<&str> = r.members.iter().take(8).map(|s| s.as_str()).collect();
                format!(
                    "{} workers ({}{})",
                    r.members.len(),
                    listed.join(", "),
                    if r.members.len() > 8 { ", …" } else { "" }
                )
            };
            for b in (0..columns).step_by(per_block) {
                let cols = b..(b + per_block).min(columns);
                let (sum, k) = cols
                    .clone()
                    .fold((0.0, 0), |a, c| (a.0 + r.sums[c].0, a.1 + r.sums[c].1));
                if k == 0 {
                    continue;
                }
                let peak = cols.clone().filter_map(|c| r.level(c)).fold(0.0, f64::max);
                let t = |c: usize| span.start_ms() + c as u64 * step;
                tips.add(
                    chart.backend_coord(&(x_of(cols.start), i as f64 + 0.05)),
                    chart.backend_coord(&(x_of(cols.end), i as f64 + 0.95)),
                    &format!(
                        "{who}: {} {} to {}: mean {}, peak {}",
                        metric.name(),
                        span.before(t(cols.start)),
                        span.before(t(cols.end).min(span.end_ms)),
                        pct(Some(sum / k as f64)),
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
    if let Some((x, y, w, h, png)) = image {
        // Under the tooltips and axes: right after the background.
        let tag = format!(
            "<image class='cells' x='{x}' y='{y}' width='{w}' height='{h}' preserveAspectRatio='none' style='image-rendering:pixelated' href='data:image/png;base64,{}'/>",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        let at = svg
            .find("<rect")
            .and_then(|i| svg[i..].find("/>").map(|j| i + j + 2))
            .unwrap_or(0);
        svg.insert_str(at, &tag);
    }
    let svg = super::mark_time(marked.apply(tips.apply(svg)), span, plot_x.0, plot_x.1);
    Ok(svg)
}

/// The cells as a PNG, one pixel per cell, rows top to bottom: 64 palette colours (the
/// levels the vector style draws too) and a transparent index for "no sample".
fn raster(rows: &[Row], columns: usize) -> Result<Vec<u8>, ChartError> {
    const EMPTY: u8 = 64;
    let h = rows.len().max(1);
    let mut pixels = vec![EMPTY; columns * h];
    // Plot row 0 is at the bottom of the chart (y grows upward), the image's at the top.
    for (i, r) in rows.iter().enumerate() {
        let y = h - 1 - i;
        for c in 0..columns {
            if let Some(v) = r.level(c) {
                pixels[y * columns + c] = (v * 63.0).round() as u8;
            }
        }
    }
    let mut palette = Vec::with_capacity(65 * 3);
    for q in 0..64 {
        let RGBColor(red, green, blue) = ViridisRGB.get_color(q as f32 / 63.0);
        palette.extend([red, green, blue]);
    }
    palette.extend([255, 255, 255]);
    let mut alpha = vec![255u8; 64];
    alpha.push(0);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, columns as u32, h as u32);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette);
        enc.set_trns(alpha);
        enc.set_compression(png::Compression::Default);
        let mut w = enc.write_header().map_err(e)?;
        w.write_image_data(&pixels).map_err(e)?;
    }
    Ok(out)
}

/// The row labels as drawn: (y, font size, text), for tests (they must not overlap).
#[cfg(test)]
fn label_positions(svg: &str) -> Vec<(f64, f64, String)> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
    let num = |n: &roxmltree::Node, a: &str| n.attribute(a).and_then(|v| v.parse::<f64>().ok());
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("text-anchor") == Some("end"))
        .filter(|n| num(n, "x").is_some_and(|x| x < (WIDTH - LEGEND) as f64))
        .filter_map(|n| {
            Some((
                num(&n, "y")?,
                num(&n, "font-size")?,
                n.text()?.trim().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::StatPoint;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("well-formed SVG")
    }

    fn fleet(n: u64, secs: u64) -> Vec<NodeSeries> {
        (0..n)
            .map(|n| NodeSeries {
                node: format!("{n:016x}"),
                hostname: "vm".into(),
                name: format!("host{n}"),
                cores: 4.0,
                gpus: u32::from(n == 0),
                points: (0..secs)
                    .map(|i| StatPoint {
                        at_ms: 1_000_000 + i * 1000,
                        cpu: ((i + n * 7) % 60) as f64 / 60.0,
                        memory: 0.5,
                        gpu: (n == 0).then_some(0.9),
                        gpu_memory: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_heatmap_has_a_cell_per_filled_column_and_row() {
        let series = fleet(3, 60);
        let span = Span::last(1_060_000, 60_000);
        let svg = heatmap(&series, Metric::Cpu, &span, Style::Vector, &[]).unwrap();
        let doc = parse(&svg);
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert!(rects >= 3 * 60, "{rects} rects");
        assert!(svg.contains("host2") && svg.contains("CPU utilisation"));
        assert!(
            svg.contains("seconds ago"),
            "a one-minute window reads in seconds"
        );
        // Only the node with GPUs has a GPU row.
        let gpu = heatmap(&series, Metric::Gpu, &span, Style::Vector, &[]).unwrap();
        assert!(gpu.contains("host0") && !gpu.contains("host1"));
        // Tooltips name the worker and the figures.
        let tips: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            tips.iter()
                .any(|t| t.starts_with("host2 (host vm): cpu") && t.contains("peak")),
            "{tips:?}"
        );
    }

    #[test]
    fn a_short_window_is_covered_without_holes() {
        // 25 one-second samples in a 25-second window: every column has data.
        let series = fleet(2, 25);
        let span = Span::last(1_025_000, 25_000);
        assert_eq!(crate::charts::columns(&series, &span, COLUMNS), 25);
        let svg = heatmap(&series, Metric::Cpu, &span, Style::Vector, &[]).unwrap();
        let doc = parse(&svg);
        let root = doc.root_element();
        let (x0, x1): (f64, f64) = (
            root.attribute("data-x0").unwrap().parse().unwrap(),
            root.attribute("data-x1").unwrap().parse().unwrap(),
        );
        let tips: Vec<(f64, f64)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| n.ancestors().any(|a| a.attribute("class") == Some("tips")))
            .map(|n| {
                let x: f64 = n.attribute("x").unwrap().parse().unwrap();
                let w: f64 = n.attribute("width").unwrap().parse().unwrap();
                (x, x + w)
            })
            .collect();
        let lo = tips.iter().map(|t| t.0).fold(f64::MAX, f64::min);
        let hi = tips.iter().map(|t| t.1).fold(0.0, f64::max);
        assert!((hi - lo) / (x1 - x0) > 0.9, "{lo}–{hi} of {x0}–{x1}");
    }

    #[test]
    fn a_steady_row_is_drawn_as_few_rectangles() {
        let series = vec![NodeSeries {
            node: "a".into(),
            hostname: "steady".into(),
            cores: 1.0,
            points: (0..3600)
                .map(|i| StatPoint {
                    at_ms: i * 1000,
                    cpu: 0.5,
                    ..StatPoint::default()
                })
                .collect(),
            ..Default::default()
        }];
        let svg = heatmap(
            &series,
            Metric::Cpu,
            &Span::last(3_600_000, 3_600_000),
            Style::Vector,
            &[],
        )
        .unwrap();
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
    fn labels_never_overlap_at_4_or_400_workers() {
        for n in [4, 100, 400] {
            let series = fleet(n, 120);
            let span = Span::last(1_120_000, 120_000);
            let svg = heatmap(&series, Metric::Cpu, &span, Style::Compact, &[]).unwrap();
            parse(&svg);
            let mut labels = label_positions(&svg);
            labels.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert_eq!(
                labels.len(),
                (n as usize).min(MAX_ROWS),
                "{n} workers: one label per row"
            );
            for w in labels.windows(2) {
                assert!(w[1].0 - w[0].0 >= w[0].1, "{n} workers: labels at {w:?}");
            }
            if n == 400 {
                assert!(svg.contains("400 workers in 100 rows"));
                assert!(svg.contains("4 workers (host0, host1, host2, host3)"));
            }
        }
    }

    #[test]
    fn the_compact_style_is_small_and_keeps_its_tooltips() {
        let series = fleet(100, 3600);
        let span = Span::last(1_000_000 + 3_600_000, 3_600_000);
        let vector = heatmap(&series, Metric::Cpu, &span, Style::Vector, &[]).unwrap();
        let compact = heatmap(&series, Metric::Cpu, &span, Style::Compact, &[]).unwrap();
        let doc = parse(&compact);
        let tips = doc
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .count();
        assert!(tips >= 100, "{tips} tooltips");
        assert!(compact.contains("data:image/png;base64,"));
        assert!(
            compact.len() * 4 < vector.len(),
            "compact {} B against vector {} B",
            compact.len(),
            vector.len()
        );
        assert!(compact.len() < 120 * 1024, "{} B", compact.len());
    }
}
