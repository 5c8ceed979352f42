//! Trends and anomalies over a window: the fleet's mean with a least-squares trend, and the
//! stretches where a worker departs from its own usual level, holds GPUs it does not use, or
//! runs the same task names much slower than its peers. Pure: series in, findings out.

use crate::charts::{Metric, NodeSeries};
use crate::view::Span;
use crate::views::ReservedSpan;

/// Buckets a window is cut into for these findings.
pub const BUCKETS: usize = 60;
/// A departure of at least this much utilisation (and of several spreads) is unusual.
const MIN_JUMP: f64 = 0.30;
/// Spreads (scaled MAD) a bucket must lie from the worker's median.
const SPREADS: f64 = 4.0;
/// A GPU below this mean utilisation while reserved counts as idle.
const IDLE_GPU: f64 = 0.05;
/// Slower than peers on the same task names by this factor or more.
pub const SLOW: f64 = 1.5;
/// Most findings listed.
const MOST: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Utilisation far from the worker's own median over the window.
    Departure,
    /// GPUs reserved by tasks but doing no work.
    IdleReservedGpu,
    /// Slower than its peers on the same task names.
    Slow,
}

/// One finding: which worker, when, and why, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// The worker's node id (as in [`NodeSeries::node`]).
    pub node: String,
    pub name: String,
    pub kind: Kind,
    pub metric: Option<Metric>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub text: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per bucket, the mean of `metric` (None without samples).
fn buckets(s: &NodeSeries, metric: Metric, span: &Span, n: usize) -> Vec<Option<f64>> {
    let step = span.len_ms.div_ceil(n as u64).max(1);
    let mut sums = vec![(0.0, 0u32); n];
    for p in s
        .points
        .iter()
        .filter(|p| p.at_ms >= span.start_ms() && p.at_ms <= span.end_ms)
    {
        if let Some(v) = metric.of(p) {
            let b = (((p.at_ms - span.start_ms()) / step) as usize).min(n - 1);
            sums[b].0 += v;
            sums[b].1 += 1;
        }
    }
    sums.into_iter()
        .map(|(s, k)| (k > 0).then(|| s / k as f64))
        .collect()
}

/// Consecutive flagged buckets as (first, last) runs.
fn runs(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, f) in flags.iter().chain([&false]).enumerate() {
        match (start, *f) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Everything unusual in the window about `metrics` (CPU and GPU departures, idle reserved
/// GPUs with GPU; slow workers with any), oldest first. `slow` is each worker's run time
/// against its peers' on the same task names (1.0 = as fast; from the execution history).
pub fn find(
    series: &[NodeSeries],
    reservations: &[ReservedSpan],
    slow: &[(String, f64)],
    span: &Span,
    metrics: &[Metric],
) -> Vec<Anomaly> {
    let n = crate::charts::columns(series, span, BUCKETS);
    let step = span.len_ms.div_ceil(n as u64).max(1);
    let at = |b: usize| span.start_ms() + b as u64 * step;
    let mut out = Vec::new();
    // GPU reservations by worker, once (not per worker and bucket).
    let mut gpu_spans: std::collections::HashMap<&str, Vec<&ReservedSpan>> = Default::default();
    for r in reservations.iter().filter(|r| r.gpus > 0.0) {
        gpu_spans.entry(r.worker.as_str()).or_default().push(r);
    }
    for s in series {
        for metric in [Metric::Cpu, Metric::Gpu]
            .into_iter()
            .filter(|m| metrics.contains(m))
        {
            let b = buckets(s, metric, span, n);
            let mut known: Vec<f64> = b.iter().flatten().copied().collect();
            if known.len() < 8 {
                continue; // too little to know what is usual
            }
            let med = median(&mut known);
            let mut dev: Vec<f64> = known.iter().map(|v| (v - med).abs()).collect();
            let spread = 1.4826 * median(&mut dev);
            let limit = (SPREADS * spread).max(MIN_JUMP);
            let flags: Vec<bool> = b
                .iter()
                .map(|v| v.is_some_and(|v| (v - med).abs() >= limit))
                .collect();
            for (first, last) in runs(&flags) {
                let vals: Vec<f64> = b[first..=last].iter().flatten().copied().collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                out.push(Anomaly {
                    node: s.node.clone(),
                    name: s.label().to_string(),
                    kind: Kind::Departure,
                    metric: Some(metric),
                    from_ms: at(first),
                    to_ms: at(last + 1).min(span.end_ms),
                    text: format!(
                        "{}: {} {:.0}% from {} to {}, against its usual {:.0}% in this window",
                        s.label(),
                        metric.name(),
                        mean * 100.0,
                        span.before(at(first)),
                        span.before(at(last + 1).min(span.end_ms)),
                        med * 100.0
                    ),
                });
            }
        }
        // GPUs reserved on this worker but idle.
        let mine = gpu_spans
            .get(s.node.as_str())
            .map_or(&[][..], |v| v.as_slice());
        if s.gpus > 0 && metrics.contains(&Metric::Gpu) && !mine.is_empty() {
            let gpu = buckets(s, Metric::Gpu, span, n);
            let flags: Vec<bool> = (0..n)
                .map(|k| {
                    let (lo, hi) = (at(k), at(k + 1));
                    let reserved: f64 = mine
                        .iter()
                        .filter(|r| r.start_ms < hi && r.end_ms.is_none_or(|e| e > lo))
                        .map(|r| r.gpus)
                        .sum();
                    reserved > 0.0 && gpu[k].is_some_and(|u| u < IDLE_GPU)
                })
                .collect();
            for (first, last) in runs(&flags) {
                let tasks: std::collections::BTreeSet<&str> = mine
                    .iter()
                    .filter(|r| r.start_ms < at(last + 1) && r.end_ms.is_none_or(|e| e > at(first)))
                    .map(|r| r.task_name.as_str())
                    .collect();
                out.push(Anomaly {
                    node: s.node.clone(),
                    name: s.label().to_string(),
                    kind: Kind::IdleReservedGpu,
                    metric: Some(Metric::Gpu),
                    from_ms: at(first),
                    to_ms: at(last + 1).min(span.end_ms),
                    text: format!(
                        "{}: GPUs reserved by {} but idle (under {:.0}%) from {} to {}",
                        s.label(),
                        tasks.into_iter().collect::<Vec<_>>().join(", "),
                        IDLE_GPU * 100.0,
                        span.before(at(first)),
                        span.before(at(last + 1).min(span.end_ms))
                    ),
                });
            }
        }
    }
    for (node, ratio) in slow.iter().filter(|(_, r)| *r >= SLOW) {
        let name = series
            .iter()
            .find(|s| &s.node == node)
            .map_or(node.as_str(), |s| s.label());
        out.push(Anomaly {
            node: node.clone(),
            name: name.to_string(),
            kind: Kind::Slow,
            metric: None,
            from_ms: span.start_ms(),
            to_ms: span.end_ms,
            text: format!(
                "{name}: runs the same task names {ratio:.1}× as long as its peers (recent history)"
            ),
        });
    }
    out.sort_by_key(|a| (a.from_ms, a.node.clone()));
    out.truncate(MOST);
    out
}

/// The fleet's mean of `metric` per bucket and its least-squares line (intercept, slope per
/// bucket); None without samples.
pub fn trend(
    series: &[NodeSeries],
    metric: Metric,
    span: &Span,
    n: usize,
) -> Option<(Vec<Option<f64>>, f64, f64)> {
    let per: Vec<Vec<Option<f64>>> = series.iter().map(|s| buckets(s, metric, span, n)).collect();
    let mean: Vec<Option<f64>> = (0..n)
        .map(|b| {
            let v: Vec<f64> = per.iter().filter_map(|s| s[b]).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    let pts: Vec<(f64, f64)> = mean
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let k = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / k, sy / k);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    Some((mean, my - slope * mx, slope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::StatPoint;

    const ALL: [Metric; 2] = [Metric::Cpu, Metric::Gpu];

    fn steady(node: &str, cpu: impl Fn(u64) -> f64, gpu: Option<f64>) -> NodeSeries {
        NodeSeries {
            node: node.into(),
            name: format!("w-{node}"),
            cores: 4.0,
            gpus: u32::from(gpu.is_some()),
            points: (0..600)
                .map(|i| StatPoint {
                    at_ms: i * 1000,
                    cpu: cpu(i),
                    gpu,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_leaving_its_usual_level_is_marked_and_a_steady_one_is_not() {
        let span = Span::last(600_000, 600_000);
        let jumpy = steady(
            "a",
            |i| if (300..360).contains(&i) { 0.95 } else { 0.2 },
            None,
        );
        let calm = steady("b", |i| 0.4 + 0.05 * ((i % 7) as f64 / 7.0), None);
        let found = find(&[jumpy, calm], &[], &[], &span, &ALL);
        assert_eq!(found.len(), 1, "{found:?}");
        let a = &found[0];
        assert_eq!((a.node.as_str(), &a.kind), ("a", &Kind::Departure));
        assert!(a.from_ms >= 290_000 && a.to_ms <= 370_000, "{a:?}");
        assert!(
            a.text.contains("cpu 95%") && a.text.contains("usual 20%"),
            "{}",
            a.text
        );
    }

    #[test]
    fn idle_reserved_gpus_and_slow_workers_are_named() {
        let span = Span::last(600_000, 600_000);
        let idle = steady("g", |_| 0.1, Some(0.0));
        let r = ReservedSpan {
            start_ms: 100_000,
            end_ms: Some(200_000),
            cpu_cores: 1.0,
            gpus: 1.0,
            worker: "g".into(),
            task_name: "train".into(),
        };
        let found = find(
            &[idle],
            &[r],
            &[("g".into(), 2.5), ("h".into(), 1.1)],
            &span,
            &ALL,
        );
        let kinds: Vec<&Kind> = found.iter().map(|a| &a.kind).collect();
        assert_eq!(
            kinds,
            vec![&Kind::Slow, &Kind::IdleReservedGpu],
            "{found:?}"
        );
        assert!(
            found[1].text.contains("reserved by train but idle"),
            "{}",
            found[1].text
        );
        assert!(found[0].text.contains("2.5×"));
    }

    #[test]
    fn the_trend_follows_a_rising_fleet() {
        let span = Span::last(600_000, 600_000);
        let rising = steady("a", |i| i as f64 / 600.0, None);
        let (mean, _, slope) = trend(&[rising], Metric::Cpu, &span, 60).unwrap();
        assert_eq!(mean.len(), 60);
        assert!((slope - 1.0 / 60.0).abs() < 1e-3, "{slope}");
        assert!(trend(&[], Metric::Cpu, &span, 60).is_none());
    }
}
