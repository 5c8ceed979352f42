//! Workload patterns over the window: arrival rate and burstiness, resource mix, run-time
//! distribution and where the run time goes.

use std::collections::BTreeMap;

use serde::Serialize;
use testmesh_consensus::resources::GpuRequest;
use testmesh_consensus::task::TaskState;

use super::{Observations, quantile, round3, sorted};

/// Buckets the window is cut into for the arrival histogram.
pub const BUCKETS: usize = 12;
/// Task names listed by their share of run time.
const TOP_NAMES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Patterns {
    pub submitted: usize,
    pub arrivals_per_hour: f64,
    /// Submissions per bucket across the window, oldest first.
    pub arrivals: Vec<usize>,
    pub bucket_secs: u64,
    /// Busiest bucket over the mean bucket: 1 is even, high is bursty.
    pub peak_to_mean: f64,
    /// Coefficient of variation of the gaps between submissions: about 1 for independent
    /// (Poisson) arrivals, well above 1 for bursts, below 1 for regular (cron-like) ones.
    pub inter_arrival_cv: Option<f64>,
    pub mix: Mix,
    pub requested: Requested,
    pub durations: Durations,
    pub top_names: Vec<NameShare>,
    /// The findings in words.
    pub summary: Vec<String>,
}

/// What the submitted tasks asked for, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Mix {
    pub cpu_only: usize,
    pub gpu_share: usize,
    pub one_gpu: usize,
    pub multi_gpu: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Requested {
    pub cpu_cores_p50: f64,
    pub cpu_cores_p95: f64,
    pub memory_mib_p50: f64,
    pub memory_mib_p95: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Durations {
    pub finished: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub p50_secs: f64,
    pub p90_secs: f64,
    pub p99_secs: f64,
    pub max_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NameShare {
    pub name: String,
    pub attempts: usize,
    pub total_secs: f64,
    /// Of all run time in the window.
    pub share: f64,
    pub p50_secs: f64,
}

pub fn patterns(s: &Observations) -> Patterns {
    let window = s.window_ms.max(1);
    let start = s.now.0.saturating_sub(window);
    let bucket_ms = window.div_ceil(BUCKETS as u64).max(1);
    let mut arrivals = vec![0usize; BUCKETS];
    let mut times: Vec<u64> = Vec::with_capacity(s.submitted.len());
    let mut mix = Mix::default();
    let (mut cpus, mut mems) = (Vec::new(), Vec::new());
    for (at, req) in &s.submitted {
        let b = (at.0.saturating_sub(start) / bucket_ms) as usize;
        arrivals[b.min(BUCKETS - 1)] += 1;
        times.push(at.0);
        match req.gpu {
            GpuRequest::None => mix.cpu_only += 1,
            GpuRequest::Shared { .. } => mix.gpu_share += 1,
            GpuRequest::Whole { count: 1 } => mix.one_gpu += 1,
            GpuRequest::Whole { .. } => mix.multi_gpu += 1,
        }
        cpus.push(req.cpu.0 as f64 / 1000.0);
        mems.push(req.memory.0 as f64 / (1 << 20) as f64);
    }
    let submitted = s.submitted.len();
    let mean = submitted as f64 / BUCKETS as f64;
    let peak = arrivals.iter().copied().max().unwrap_or(0) as f64;
    let peak_to_mean = if submitted > 0 { peak / mean } else { 0.0 };
    let inter_arrival_cv = gap_cv(&mut times);
    let (cpus, mems) = (sorted(cpus), sorted(mems));
    let requested = Requested {
        cpu_cores_p50: round3(quantile(&cpus, 0.5)),
        cpu_cores_p95: round3(quantile(&cpus, 0.95)),
        memory_mib_p50: round3(quantile(&mems, 0.5)),
        memory_mib_p95: round3(quantile(&mems, 0.95)),
    };

    let mut d = Durations::default();
    let mut secs = Vec::with_capacity(s.history.len());
    let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &s.history {
        d.finished += 1;
        match r.state {
            TaskState::Succeeded => d.succeeded += 1,
            TaskState::TimedOut => d.timed_out += 1,
            _ => d.failed += 1,
        }
        let x = r.duration_ms as f64 / 1000.0;
        secs.push(x);
        by_name.entry(&*r.name).or_default().push(x);
    }
    let secs = sorted(secs);
    d.p50_secs = round3(quantile(&secs, 0.5));
    d.p90_secs = round3(quantile(&secs, 0.9));
    d.p99_secs = round3(quantile(&secs, 0.99));
    d.max_secs = round3(secs.last().copied().unwrap_or(0.0));
    let total: f64 = secs.iter().sum();
    let mut top_names: Vec<NameShare> = by_name
        .into_iter()
        .map(|(name, v)| {
            let sum: f64 = v.iter().sum();
            let v = sorted(v);
            NameShare {
                name: if name.is_empty() { "(unnamed)" } else { name }.to_string(),
                attempts: v.len(),
                total_secs: round3(sum),
                share: if total > 0.0 {
                    round3(sum / total)
                } else {
                    0.0
                },
                p50_secs: round3(quantile(&v, 0.5)),
            }
        })
        .collect();
    top_names.sort_by(|a, b| {
        b.total_secs
            .total_cmp(&a.total_secs)
            .then(a.name.cmp(&b.name))
    });
    top_names.truncate(TOP_NAMES);

    let mut p = Patterns {
        submitted,
        arrivals_per_hour: round3(submitted as f64 * 3_600_000.0 / window as f64),
        arrivals,
        bucket_secs: bucket_ms / 1000,
        peak_to_mean: round3(peak_to_mean),
        inter_arrival_cv: inter_arrival_cv.map(round3),
        mix,
        requested,
        durations: d,
        top_names,
        summary: Vec::new(),
    };
    p.summary = summary(&p);
    p
}

/// Coefficient of variation of the gaps between sorted arrival times (needs 3 arrivals).
fn gap_cv(times: &mut [u64]) -> Option<f64> {
    if times.len() < 3 {
        return None;
    }
    times.sort_unstable();
    let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    if mean <= 0.0 {
        // All in the same millisecond: no gap to measure (the histogram shows the burst).
        return None;
    }
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    Some(var.sqrt() / mean)
}

fn summary(p: &Patterns) -> Vec<String> {
    let mut out = Vec::new();
    if p.submitted == 0 {
        out.push("no tasks were submitted in the window".into());
    } else {
        let shape = match p.inter_arrival_cv {
            Some(cv) if cv > 1.5 || p.peak_to_mean > 3.0 => format!(
                "bursty (busiest {}-s slot {:.1}× the mean; gap CV {cv:.1})",
                p.bucket_secs, p.peak_to_mean
            ),
            Some(cv) if cv < 0.5 => format!("regular, like a schedule (gap CV {cv:.2})"),
            Some(cv) => format!("steady and random-like (gap CV {cv:.1})"),
            None => "too few to judge".into(),
        };
        out.push(format!(
            "{} tasks submitted ({:.1}/h); arrivals are {shape}",
            p.submitted, p.arrivals_per_hour
        ));
        let m = &p.mix;
        let gpu = m.gpu_share + m.one_gpu + m.multi_gpu;
        out.push(format!(
            "{:.0}% CPU-only, {:.0}% need GPUs ({} a share of one, {} one whole, {} several)",
            100.0 * m.cpu_only as f64 / p.submitted as f64,
            100.0 * gpu as f64 / p.submitted as f64,
            m.gpu_share,
            m.one_gpu,
            m.multi_gpu
        ));
    }
    let d = &p.durations;
    if d.finished > 0 {
        out.push(format!(
            "{} attempts finished ({} failed, {} timed out); run time p50 {:.1} s, p90 {:.1} s, p99 {:.1} s",
            d.finished, d.failed, d.timed_out, d.p50_secs, d.p90_secs, d.p99_secs
        ));
        if let Some(top) = p.top_names.first().filter(|t| t.share >= 0.3) {
            out.push(format!(
                "{:?} takes {:.0}% of all run time ({} attempts)",
                top.name,
                100.0 * top.share,
                top.attempts
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::test_support::*;

    #[test]
    fn arrival_rate_mix_and_durations() {
        let h: Vec<_> = (0..10)
            .map(|i| record(if i < 8 { "unit" } else { "train" }, 1000 + i * 1000))
            .collect();
        let reqs = [cpu_req(500), gpu_req(1), gpu_req(4), share_req()];
        let submitted: Vec<_> = (0..40)
            .map(|i| (at(i * 90_000), &reqs[(i % 4) as usize]))
            .collect();
        let s = snapshot(&h, submitted, 3_600_000);
        let p = patterns(&s);
        assert_eq!(p.submitted, 40);
        assert_eq!(p.arrivals_per_hour, 40.0);
        assert_eq!(p.arrivals.iter().sum::<usize>(), 40);
        assert!(p.peak_to_mean < 1.3, "even arrivals: {}", p.peak_to_mean);
        assert!(p.inter_arrival_cv.unwrap() < 0.01, "evenly spaced");
        assert_eq!(
            (
                p.mix.cpu_only,
                p.mix.one_gpu,
                p.mix.multi_gpu,
                p.mix.gpu_share
            ),
            (10, 10, 10, 10)
        );
        assert_eq!(p.durations.finished, 10);
        assert_eq!(p.durations.p50_secs, 5.0);
        assert_eq!(
            p.top_names[0].name, "unit",
            "8 attempts of 1..8 s beat 2 of 9..10 s"
        );
        assert!(p.summary[0].contains("regular"), "{:?}", p.summary);
    }

    #[test]
    fn bursts_are_called_bursty() {
        let req = cpu_req(100);
        // 30 submissions in one minute, then 3 spread over the rest of the hour.
        let mut submitted: Vec<_> = (0..30).map(|i| (at(i * 2000), &req)).collect();
        submitted.extend((1..4).map(|i| (at(i * 900_000), &req)));
        let s = snapshot(&[], submitted, 3_600_000);
        let p = patterns(&s);
        assert!(p.peak_to_mean > 5.0, "{}", p.peak_to_mean);
        assert!(p.summary[0].contains("bursty"), "{:?}", p.summary);
    }

    #[test]
    fn an_empty_window_says_so() {
        let s = snapshot(&[], Vec::new(), 3_600_000);
        let p = patterns(&s);
        assert_eq!(p.submitted, 0);
        assert_eq!(p.durations.p99_secs, 0.0);
        assert!(p.summary[0].contains("no tasks"));
    }
}
