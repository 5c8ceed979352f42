//! Charts over time: scaling history, efficiency (reserved against used), cloud cost.

use plotters::prelude::*;
use testmesh_consensus::scaling::{CloudInstance, DecisionKind, DecisionRecord};

use super::{ChartError, FONT, NodeSeries, Tips, e, pct};
use crate::view::Span;
use crate::views::{ReservedSpan, ScalingView};

/// Managed instances over time, with the queue length and every scale-up and scale-down.
pub fn scaling(
    decisions: &[DecisionRecord],
    instances: &[CloudInstance],
    span: &Span,
) -> Result<String, ChartError> {
    let (now_ms, window_ms) = (span.end_ms, span.len_ms);
    let start = now_ms.saturating_sub(window_ms);
    let x = |t: u64| span.x(t);
    let plot_x;
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
    let mut tips = Tips::default();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Scaling ({})", span.caption()), (FONT, 16))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(span.left()..0.0, 0.0..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_desc(span.desc())
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
        // Instances over the whole window, in slices.
        let slice = window_ms.div_ceil(30).max(1);
        for k in 0..30u64 {
            let (lo, hi) = (start + k * slice, (start + (k + 1) * slice).min(now_ms));
            if lo >= hi {
                break;
            }
            tips.add(
                chart.backend_coord(&(x(lo), 0.0)),
                chart.backend_coord(&(x(hi), top / 1.3)),
                &format!("{}: {} managed instances", span.before(lo), alive(lo)),
            );
        }
        for d in decisions.iter().filter(|d| d.at.0 >= start) {
            let (px, py) = chart.backend_coord(&(x(d.at.0), top / 1.15));
            tips.add(
                (px - 7, py - 7),
                (px + 7, py + 7),
                &format!(
                    "{}, {}: {} ({} pending, {} managed workers)",
                    span.before(d.at.0),
                    match d.kind {
                        DecisionKind::Up => "scale up",
                        DecisionKind::Down => "scale down",
                        DecisionKind::Hold => "hold",
                    },
                    d.reason,
                    d.pending_tasks,
                    d.managed_workers
                ),
            );
        }
        super::series_legend(&mut chart)?;
        plot_x = super::x_extent(&chart, span);
        root.present().map_err(e)?;
    }
    Ok(super::mark_time(tips.apply(svg), span, plot_x.0, plot_x.1))
}

/// Buckets across the window of the efficiency and cost charts.
const BUCKETS: usize = 60;

/// Milliseconds of `[a, b)` inside `[lo, hi)`.
fn overlap(a: u64, b: u64, lo: u64, hi: u64) -> u64 {
    b.min(hi).saturating_sub(a.max(lo))
}

/// Per bucket: (reserved, used) cores and (reserved, used) GPUs. Used GPUs are utilisation
/// times GPUs, so a reserved GPU doing nothing shows as a gap.
pub(super) fn efficiency_buckets(
    series: &[NodeSeries],
    reservations: &[ReservedSpan],
    span: &Span,
) -> Vec<[f64; 5]> {
    let (now_ms, window_ms) = (span.end_ms, span.len_ms);
    let buckets = super::columns(series, span, BUCKETS);
    let start = now_ms.saturating_sub(window_ms);
    let step = window_ms.div_ceil(buckets as u64).max(1);
    let mut out = vec![[0.0; 5]; buckets];
    for (b, slot) in out.iter_mut().enumerate() {
        let lo = start + b as u64 * step;
        let hi = lo + step;
        for r in reservations {
            let f = overlap(r.start_ms, r.end_ms.unwrap_or(now_ms), lo, hi) as f64 / step as f64;
            slot[0] += r.cpu_cores * f;
            slot[2] += r.gpus * f;
        }
    }
    for s in series {
        let mut sums = vec![(0.0, 0.0, 0u32); buckets];
        for p in s
            .points
            .iter()
            .filter(|p| p.at_ms >= start && p.at_ms < now_ms)
        {
            let b = (((p.at_ms - start) / step) as usize).min(buckets - 1);
            sums[b].0 += p.cpu;
            sums[b].1 += p.gpu.unwrap_or(0.0);
            sums[b].2 += 1;
        }
        for (slot, (cpu, gpu, n)) in out.iter_mut().zip(sums) {
            if n > 0 {
                slot[1] += cpu / n as f64 * s.cores;
                slot[3] += gpu / n as f64 * s.gpus as f64;
                slot[4] += 1.0;
            }
        }
    }
    out
}

/// Reserved against used over time: CPU cores above, GPUs below. Reserved GPUs that do no
/// work show as red.
pub fn efficiency(
    series: &[NodeSeries],
    reservations: &[ReservedSpan],
    span: &Span,
) -> Result<String, ChartError> {
    let buckets = efficiency_buckets(series, reservations, span);
    let width = -span.left() / buckets.len() as f64;
    let x0 = |b: usize| span.left() + b as f64 * width;
    let at =
        |b: usize| span.start_ms() + (b as f64 * span.len_ms as f64 / buckets.len() as f64) as u64;
    let mut plot_x = (0, 0);
    let mut svg = String::new();
    let mut tips = Tips::default();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(
                &format!("Reserved against used ({})", span.caption()),
                (FONT, 16),
            )
            .map_err(e)?;
        let (upper, lower) = root.split_vertically(215);
        let panels = [
            (upper, "CPU cores", 0, RGBColor(0xf0, 0xa2, 0x02)),
            (lower, "GPUs", 2, RGBColor(0xd6, 0x27, 0x28)),
        ];
        for (area, unit, k, gap) in panels {
            let top = buckets
                .iter()
                .map(|b| b[k].max(b[k + 1]))
                .fold(1.0, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(&area)
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(span.left()..0.0, 0.0..top)
                .map_err(e)?;
            chart
                .configure_mesh()
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 13))
                .x_desc(span.desc())
                .y_desc(unit)
                .draw()
                .map_err(e)?;
            let used = RGBColor(0x2a, 0x9d, 0x5c);
            chart
                .draw_series(buckets.iter().enumerate().map(|(b, v)| {
                    Rectangle::new([(x0(b), 0.0), (x0(b + 1), v[k])], gap.mix(0.35).filled())
                }))
                .map_err(e)?
                .label(format!("reserved {unit}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], gap.mix(0.35).filled())
                });
            chart
                .draw_series(buckets.iter().enumerate().map(|(b, v)| {
                    Rectangle::new(
                        [(x0(b), 0.0), (x0(b + 1), v[k + 1].min(top))],
                        used.mix(0.8).filled(),
                    )
                }))
                .map_err(e)?
                .label(format!("used {unit}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], used.mix(0.8).filled())
                });
            plot_x = super::x_extent(&chart, span);
            // Tooltips where there is something to say: samples or reservations.
            for (b, v) in buckets
                .iter()
                .enumerate()
                .filter(|(_, v)| v[4] > 0.0 || v[0] > 0.0)
            {
                tips.add(
                    chart.backend_coord(&(x0(b), 0.0)),
                    chart.backend_coord(&(x0(b + 1), top)),
                    &format!(
                        "{} to {}: {:.2} {unit} reserved, {:.2} used ({})",
                        span.before(at(b)),
                        span.before(at(b + 1)),
                        v[k],
                        v[k + 1],
                        pct((v[k] > 0.0).then(|| v[k + 1] / v[k]))
                    ),
                );
            }
            super::series_legend(&mut chart)?;
        }
        root.present().map_err(e)?;
    }
    Ok(super::mark_time(tips.apply(svg), span, plot_x.0, plot_x.1))
}

/// Instances per provider over time, and the cost accumulated over the window against what
/// the budget allows over the same time.
pub fn cost(s: &ScalingView, span: &Span) -> Result<String, ChartError> {
    let (now_ms, window_ms) = (span.end_ms, span.len_ms);
    let start = now_ms.saturating_sub(window_ms);
    let step = window_ms.div_ceil(BUCKETS as u64 * 2).max(1);
    let times: Vec<u64> = (0..=BUCKETS * 2)
        .map(|i| (start + i as u64 * step).min(now_ms))
        .collect();
    let x = |t: u64| span.x(t);
    let plot_x;
    let mut providers: Vec<&str> = s.instances.iter().map(|i| i.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    let alive = |p: &str, t: u64| {
        s.instances
            .iter()
            .filter(|i| i.provider == p)
            .filter(|i| i.requested_at.0 <= t && i.ended_at.is_none_or(|e| e.0 > t))
            .count() as f64
    };
    let dollars = |t: u64| {
        s.instances
            .iter()
            .map(|i| {
                let ms = overlap(
                    i.requested_at.0,
                    i.ended_at.map_or(now_ms, |e| e.0),
                    start,
                    t,
                );
                i.price_micros_per_hour as f64 / 1e6 * ms as f64 / 3.6e6
            })
            .sum::<f64>()
    };
    let budget = |t: u64| {
        s.budget_micros_per_hour
            .map(|b| b as f64 / 1e6 * (t - start) as f64 / 3.6e6)
    };
    let spent: Vec<f64> = times.iter().map(|t| dollars(*t)).collect();
    let top_count = providers
        .iter()
        .flat_map(|p| times.iter().map(|t| alive(p, *t)))
        .fold(1.0, f64::max)
        * 1.15;
    let top_cost = spent
        .iter()
        .copied()
        .chain(budget(now_ms))
        .fold(0.01, f64::max)
        * 1.15;
    let mut svg = String::new();
    let mut tips = Tips::default();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(
                &format!("Cloud instances and cost ({})", span.caption()),
                (FONT, 16),
            )
            .map_err(e)?;
        let (upper, lower) = root.split_vertically(215);
        let mut chart = ChartBuilder::on(&upper)
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(span.left()..0.0, 0.0..top_count)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_desc(span.desc())
            .y_desc("instances")
            .draw()
            .map_err(e)?;
        for (k, p) in providers.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let steps: Vec<(f64, f64)> = times
                .windows(2)
                .flat_map(|w| {
                    let n = alive(p, w[0]);
                    [(x(w[0]), n), (x(w[1]), n)]
                })
                .collect();
            chart
                .draw_series(LineSeries::new(steps, colour.stroke_width(2)))
                .map_err(e)?
                .label(*p)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
        }
        for w in times.windows(2).step_by(4) {
            let counts: Vec<String> = providers
                .iter()
                .map(|p| format!("{p} {}", alive(p, w[0])))
                .collect();
            tips.add(
                chart.backend_coord(&(x(w[0]), 0.0)),
                chart.backend_coord(&(x(w[1]), top_count)),
                &format!(
                    "{}: {}",
                    span.before(w[0]),
                    if counts.is_empty() {
                        "no instances".to_string()
                    } else {
                        counts.join(", ")
                    }
                ),
            );
        }
        if !providers.is_empty() {
            super::series_legend(&mut chart)?;
        }
        let mut chart = ChartBuilder::on(&lower)
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(span.left()..0.0, 0.0..top_cost)
            .map_err(e)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_desc(span.desc())
            .y_desc("US$")
            .draw()
            .map_err(e)?;
        let blue = RGBColor(0x1f, 0x77, 0xb4);
        chart
            .draw_series(LineSeries::new(
                times.iter().zip(&spent).map(|(t, c)| (x(*t), *c)),
                blue.stroke_width(2),
            ))
            .map_err(e)?
            .label("spent")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], blue.stroke_width(2)));
        if budget(now_ms).is_some() {
            let red = RGBColor(0xd6, 0x27, 0x28);
            chart
                .draw_series(LineSeries::new(
                    times.iter().filter_map(|t| budget(*t).map(|b| (x(*t), b))),
                    red,
                ))
                .map_err(e)?
                .label("budget allows")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], red));
        }
        for (w, c) in times.windows(2).zip(&spent).step_by(4) {
            tips.add(
                chart.backend_coord(&(x(w[0]), 0.0)),
                chart.backend_coord(&(x(w[1]), top_cost)),
                &format!(
                    "{}: ${c:.2} spent in the window{}",
                    span.before(w[0]),
                    budget(w[0]).map_or(String::new(), |b| format!(", budget allows ${b:.2}"))
                ),
            );
        }
        super::series_legend(&mut chart)?;
        plot_x = super::x_extent(&chart, span);
        root.present().map_err(e)?;
    }
    Ok(super::mark_time(tips.apply(svg), span, plot_x.0, plot_x.1))
}
