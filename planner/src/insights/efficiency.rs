//! Efficiency: what was reserved against what was used, per task name and per worker over the
//! window (from the execution history), and per worker now (from gossip), with right-sizing
//! suggestions in the spirit of Kubernetes' vertical pod autoscaler (a high percentile of
//! measured use plus headroom).

use std::collections::BTreeMap;

use serde::Serialize;
use testmesh_consensus::NodeId;
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::resources::GpuRequest;

use super::{Observations, quantile, round3, round6, sorted};

/// A reserved GPU below this utilisation in the latest sample counts as idle.
pub const IDLE_GPU_PERCENT: u32 = 5;
/// Attempts of a task name needed before suggesting a different request.
pub const MIN_ATTEMPTS_TO_SUGGEST: usize = 5;
/// Headroom over the 95th percentile of measured use in a suggestion.
const HEADROOM: f64 = 1.2;
/// A smaller request is suggested only when it saves at least this share of the current one.
const WORTH_SAVING: f64 = 0.3;
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Serialize)]
pub struct Efficiency {
    pub total: Row,
    /// Most wasted core-hours first.
    pub by_task_name: Vec<Row>,
    pub by_worker: Vec<Row>,
    pub now: Vec<WorkerNow>,
    pub suggestions: Vec<Suggestion>,
    pub summary: Vec<String>,
}

/// Reserved against used for a group of finished attempts. Memory use is the attempt's peak
/// held for its whole run (an upper bound of what it used over time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub key: String,
    pub attempts: usize,
    pub cpu_reserved_core_hours: f64,
    pub cpu_used_core_hours: f64,
    /// Used over reserved; null when nothing was reserved.
    pub cpu_efficiency: Option<f64>,
    pub memory_reserved_gib_hours: f64,
    pub memory_peak_gib_hours: f64,
    pub memory_efficiency: Option<f64>,
    /// Whole GPUs count 1 each, shares their fraction.
    pub gpu_reserved_hours: f64,
    /// Highest GPU memory one attempt held (where NVML attributed it).
    pub gpu_memory_peak_mib: f64,
}

/// One worker at the latest gossip sample.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerNow {
    pub worker: NodeId,
    pub hostname: String,
    pub state: WorkerState,
    pub cpu_capacity_cores: f64,
    pub cpu_reserved_cores: f64,
    /// The whole host's use (tasks and everything else); null without a recent sample.
    pub cpu_used_cores: Option<f64>,
    pub memory_capacity_mib: f64,
    pub memory_reserved_mib: f64,
    pub memory_used_mib: Option<f64>,
    pub gpus: u32,
    pub gpus_reserved: Vec<u32>,
    /// Reserved GPUs doing (almost) nothing: allocated but idle.
    pub idle_reserved_gpus: Vec<u32>,
}

/// A different request for a task name, from how its attempts really behaved.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    pub task_name: String,
    pub resource: String,
    pub requested: String,
    pub suggested: String,
    pub reason: String,
}

pub fn efficiency(s: &Observations) -> Efficiency {
    let hostnames: BTreeMap<NodeId, &str> = s
        .workers
        .iter()
        .map(|w| (w.id, w.hostname.as_str()))
        .collect();
    let mut total = Row {
        key: "all".into(),
        ..Row::default()
    };
    let mut names: BTreeMap<&str, (Row, Vec<&HistoryRecord>)> = BTreeMap::new();
    let mut workers: BTreeMap<NodeId, Row> = BTreeMap::new();
    for r in &s.history {
        add(&mut total, r);
        let e = names.entry(&*r.name).or_default();
        add(&mut e.0, r);
        e.1.push(r);
        add(workers.entry(r.worker).or_default(), r);
    }
    let mut suggestions = Vec::new();
    let mut by_task_name: Vec<Row> = names
        .into_iter()
        .map(|(name, (mut row, recs))| {
            row.key = if name.is_empty() { "(unnamed)" } else { name }.to_string();
            suggestions.extend(suggest(&row.key, &recs));
            finish(row)
        })
        .collect();
    by_task_name.sort_by(|a, b| wasted(b).total_cmp(&wasted(a)).then(a.key.cmp(&b.key)));
    let by_worker: Vec<Row> = workers
        .into_iter()
        .map(|(id, mut row)| {
            row.key = match hostnames.get(&id) {
                Some(h) => format!("{id} ({h})"),
                None => id.to_string(),
            };
            finish(row)
        })
        .collect();
    let now: Vec<WorkerNow> = s.workers.iter().map(worker_now).collect();
    let total = finish(total);
    let summary = summary(&total, &now, &suggestions);
    Efficiency {
        total,
        by_task_name,
        by_worker,
        now,
        suggestions,
        summary,
    }
}

fn add(row: &mut Row, r: &HistoryRecord) {
    let hours = r.duration_ms as f64 / 3_600_000.0;
    row.attempts += 1;
    row.cpu_reserved_core_hours += r.requirements.cpu.0 as f64 / 1000.0 * hours;
    row.cpu_used_core_hours += r.cpu_time_ms as f64 / 3_600_000.0;
    row.memory_reserved_gib_hours += r.requirements.memory.0 as f64 / GIB * hours;
    row.memory_peak_gib_hours += r.peak_rss.0 as f64 / GIB * hours;
    row.gpu_reserved_hours += gpus_of(&r.requirements.gpu) * hours;
    row.gpu_memory_peak_mib = row
        .gpu_memory_peak_mib
        .max(r.peak_gpu_memory.0 as f64 / MIB);
}

fn gpus_of(g: &GpuRequest) -> f64 {
    match *g {
        GpuRequest::None => 0.0,
        GpuRequest::Whole { count } => count as f64,
        GpuRequest::Shared { milli, .. } => milli as f64 / 1000.0,
    }
}

fn ratio(used: f64, reserved: f64) -> Option<f64> {
    (reserved > 0.0).then(|| round3(used / reserved))
}

fn finish(mut r: Row) -> Row {
    r.cpu_efficiency = ratio(r.cpu_used_core_hours, r.cpu_reserved_core_hours);
    r.memory_efficiency = ratio(r.memory_peak_gib_hours, r.memory_reserved_gib_hours);
    for x in [
        &mut r.cpu_reserved_core_hours,
        &mut r.cpu_used_core_hours,
        &mut r.memory_reserved_gib_hours,
        &mut r.memory_peak_gib_hours,
        &mut r.gpu_reserved_hours,
    ] {
        *x = round6(*x);
    }
    r.gpu_memory_peak_mib = round3(r.gpu_memory_peak_mib);
    r
}

fn wasted(r: &Row) -> f64 {
    r.cpu_reserved_core_hours - r.cpu_used_core_hours
}

/// Right-sizing for one task name: a request well above (or below) the 95th percentile of
/// measured use.
fn suggest(name: &str, recs: &[&HistoryRecord]) -> Vec<Suggestion> {
    if recs.len() < MIN_ATTEMPTS_TO_SUGGEST {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Requests differ between attempts of a name at times; compare with the most common one.
    let requested_mem = mode(recs.iter().map(|r| r.requirements.memory.0));
    let peak = sorted(recs.iter().map(|r| r.peak_rss.0 as f64).collect());
    let p95 = quantile(&peak, 0.95);
    let want = round_up(p95 * HEADROOM, 64.0 * MIB);
    let mem = |b: f64| format!("{:.0}MiB", b / MIB);
    if requested_mem > 0 && p95 > requested_mem as f64 {
        out.push(Suggestion {
            task_name: name.into(),
            resource: "memory".into(),
            requested: mem(requested_mem as f64),
            suggested: mem(want),
            reason: format!(
                "p95 peak RSS {} is above the request: on a full worker these tasks risk the OOM killer",
                mem(p95)
            ),
        });
    } else if requested_mem > 0 && want <= (1.0 - WORTH_SAVING) * requested_mem as f64 {
        out.push(Suggestion {
            task_name: name.into(),
            resource: "memory".into(),
            requested: mem(requested_mem as f64),
            suggested: mem(want),
            reason: format!(
                "p95 peak RSS over {} attempts is {}; the request holds {:.0}% more than needed",
                recs.len(),
                mem(p95),
                100.0 * (requested_mem as f64 / want - 1.0)
            ),
        });
    }
    let requested_cpu = mode(recs.iter().map(|r| r.requirements.cpu.0));
    let cores = sorted(
        recs.iter()
            .filter(|r| r.duration_ms > 0)
            .map(|r| r.cpu_time_ms as f64 / r.duration_ms as f64)
            .collect(),
    );
    let p95 = quantile(&cores, 0.95);
    let want_milli = round_up(p95 * HEADROOM * 1000.0, 100.0);
    if requested_cpu >= 200
        && !cores.is_empty()
        && want_milli <= (1.0 - WORTH_SAVING) * requested_cpu as f64
    {
        out.push(Suggestion {
            task_name: name.into(),
            resource: "cpu".into(),
            requested: format!("{requested_cpu}m"),
            suggested: format!("{want_milli:.0}m"),
            reason: format!(
                "p95 CPU use over {} attempts is {:.2} cores of the {:.2} reserved",
                recs.len(),
                p95,
                requested_cpu as f64 / 1000.0
            ),
        });
    }
    out
}

fn mode(values: impl Iterator<Item = u64>) -> u64 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(v, n)| (n, v))
        .map_or(0, |(v, _)| v)
}

fn round_up(x: f64, step: f64) -> f64 {
    ((x / step).ceil() * step).max(step)
}

fn worker_now(w: &super::WorkerUse) -> WorkerNow {
    let reserved: Vec<u32> = w.allocated.gpus.keys().copied().collect();
    let idle = match &w.live {
        Some(l) => reserved
            .iter()
            .copied()
            .filter(|i| {
                l.gpu_utilisation
                    .get(i)
                    .is_some_and(|u| *u < IDLE_GPU_PERCENT)
            })
            .collect(),
        None => Vec::new(),
    };
    WorkerNow {
        worker: w.id,
        hostname: w.hostname.clone(),
        state: w.state,
        cpu_capacity_cores: round3(w.capacity.cpu.0 as f64 / 1000.0),
        cpu_reserved_cores: round3(w.allocated.cpu.0 as f64 / 1000.0),
        cpu_used_cores: w.live.as_ref().map(|l| round3(l.cpu_cores)),
        memory_capacity_mib: round3(w.capacity.memory.0 as f64 / MIB),
        memory_reserved_mib: round3(w.allocated.memory.0 as f64 / MIB),
        memory_used_mib: w.live.as_ref().map(|l| round3(l.memory.0 as f64 / MIB)),
        gpus: w.capacity.gpus.len() as u32,
        gpus_reserved: reserved,
        idle_reserved_gpus: idle,
    }
}

fn summary(total: &Row, now: &[WorkerNow], suggestions: &[Suggestion]) -> Vec<String> {
    let mut out = Vec::new();
    if total.attempts > 0 {
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.0}%", 100.0 * x));
        out.push(format!(
            "finished attempts used {} of the CPU and at most {} of the memory they reserved",
            pct(total.cpu_efficiency),
            pct(total.memory_efficiency)
        ));
    }
    let idle: Vec<String> = now
        .iter()
        .filter(|w| !w.idle_reserved_gpus.is_empty())
        .map(|w| format!("{} GPU {:?}", w.hostname, w.idle_reserved_gpus))
        .collect();
    if !idle.is_empty() {
        out.push(format!("reserved but idle GPUs: {}", idle.join(", ")));
    }
    if !suggestions.is_empty() {
        out.push(format!(
            "{} request(s) could be right-sized (see suggestions)",
            suggestions.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::LiveUse;
    use crate::insights::test_support::*;
    use testmesh_consensus::model::GpuInfo;
    use testmesh_consensus::resources::GpuUse;
    use testmesh_consensus::{Bytes, NodeId};

    #[test]
    fn reserved_against_used_per_name_and_worker() {
        // 10 attempts of 1 h: 1 core reserved, half used; 1 GiB reserved, 200 MiB peak.
        let h: Vec<_> = (0..10)
            .map(|i| {
                let mut r = record(if i < 6 { "fat" } else { "lean" }, 3_600_000);
                r.worker = NodeId(1 + i % 2);
                r
            })
            .collect();
        let mut s = snapshot(&h, Vec::new(), 7_200_000);
        s.workers = vec![worker(1, 4, 16)];
        let e = efficiency(&s);
        assert_eq!(e.total.attempts, 10);
        assert_eq!(e.total.cpu_reserved_core_hours, 10.0);
        assert_eq!(e.total.cpu_used_core_hours, 5.0);
        assert_eq!(e.total.cpu_efficiency, Some(0.5));
        assert_eq!(e.total.memory_efficiency, Some(round3(200.0 / 1024.0)));
        assert_eq!(e.by_task_name[0].key, "fat", "most wasted first");
        assert_eq!(e.by_worker.len(), 2);
        assert!(
            e.by_worker[0].key.ends_with("(host1)"),
            "{}",
            e.by_worker[0].key
        );
        // 200 MiB × 1.2 → 256 MiB (a 64 MiB step) against 1024 MiB requested.
        let fat: Vec<_> = e
            .suggestions
            .iter()
            .filter(|s| s.task_name == "fat")
            .collect();
        assert_eq!(fat.len(), 2, "{fat:?}");
        assert_eq!(fat[0].resource, "memory");
        assert_eq!(fat[0].suggested, "256MiB");
        assert_eq!(fat[1].suggested, "600m", "0.5 cores × 1.2");
        // "lean" has 4 attempts: too few to judge.
        assert!(e.suggestions.iter().all(|s| s.task_name != "lean"));
    }

    #[test]
    fn memory_above_the_request_is_flagged() {
        let h: Vec<_> = (0..5)
            .map(|_| {
                let mut r = record("hog", 1000);
                r.peak_rss = Bytes(3 << 30);
                r.cpu_time_ms = 1000;
                r
            })
            .collect();
        let e = efficiency(&snapshot(&h, Vec::new(), 3_600_000));
        assert_eq!(e.suggestions.len(), 1, "{:?}", e.suggestions);
        assert!(e.suggestions[0].reason.contains("above the request"));
        assert_eq!(e.suggestions[0].suggested, "3712MiB");
    }

    #[test]
    fn reserved_idle_gpus_stand_out() {
        let mut w = worker(3, 8, 32);
        w.capacity.gpus = (0..2)
            .map(|index| GpuInfo {
                index,
                uuid: String::new(),
                model: "A100".into(),
                memory: Bytes(40 << 30),
            })
            .collect();
        w.allocated.gpus.insert(0, GpuUse::default());
        w.allocated.gpus.insert(1, GpuUse::default());
        w.live = Some(LiveUse {
            cpu_cores: 1.0,
            memory: Bytes(1 << 30),
            gpu_utilisation: [(0, 0), (1, 90)].into(),
        });
        let mut s = snapshot(&[], Vec::new(), 3_600_000);
        s.workers = vec![w];
        let e = efficiency(&s);
        assert_eq!(e.now[0].gpus_reserved, vec![0, 1]);
        assert_eq!(e.now[0].idle_reserved_gpus, vec![0]);
        assert!(e.summary.iter().any(|l| l.contains("host3 GPU [0]")));
    }
}
