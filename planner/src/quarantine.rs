//! Which workers to quarantine: those whose attempts fail far more often than other workers'
//! attempts of the same tasks. Pure: workers and recent history in, verdicts out.
//!
//! A task that fails everywhere says nothing about a worker; one that passes elsewhere and
//! fails here does. So each worker is compared with its peers on the task names it ran.

use std::collections::BTreeMap;

use testmesh_consensus::NodeId;
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::model::{Worker, WorkerState};
use testmesh_consensus::task::TaskState;

/// Label of the shards of a timing split (`testmesh run --split-by timings`): not judged.
pub const SPLIT_LABEL: &str = "testmesh.split";

/// Failures a worker must have before it can be judged.
pub const MIN_FAILURES: usize = 3;
/// Its failure rate must be at least this…
pub const MIN_RATE: f64 = 0.5;
/// …and this far above its peers' on the same task names.
pub const MARGIN: f64 = 0.4;
/// Peers' attempts of those names needed for a comparison.
pub const MIN_PEER_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub worker: NodeId,
    pub reason: String,
}

fn failed(r: &HistoryRecord) -> bool {
    matches!(r.state, TaskState::Failed | TaskState::TimedOut)
}

/// Workers to quarantine now. Only attempts finished since a worker's record started count for
/// it (an operator's clearing starts it afresh); at most half the active workers are ever
/// quarantined, so a cluster-wide fault cannot empty the pool.
pub fn decide(workers: &[&Worker], history: &[&HistoryRecord]) -> Vec<Verdict> {
    let active: Vec<&&Worker> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Active)
        .collect();
    let already = active.iter().filter(|w| w.quarantine.is_some()).count();
    let mut budget = (active.len() / 2).saturating_sub(already);
    // Per name: (attempts, failures) per worker; and each worker's records, oldest first.
    let mut by_name: BTreeMap<&str, BTreeMap<NodeId, (usize, usize)>> = BTreeMap::new();
    let mut by_worker: BTreeMap<NodeId, Vec<&HistoryRecord>> = BTreeMap::new();
    for r in history {
        // Shards of a timing split hold different tests from run to run under the same name:
        // comparing them across workers would blame a worker for a failing test.
        if r.labels.iter().any(|(k, _)| k == SPLIT_LABEL) {
            continue;
        }
        by_worker.entry(r.worker).or_default().push(r);
        let e = by_name
            .entry(&*r.name)
            .or_default()
            .entry(r.worker)
            .or_default();
        e.0 += 1;
        e.1 += usize::from(failed(r));
    }
    let mut out = Vec::new();
    // The worst first, so the budget goes where it matters.
    let mut candidates: Vec<(f64, Verdict)> = Vec::new();
    for w in active.iter().filter(|w| w.quarantine.is_none()) {
        // Its own attempts since its record started: the last `finished()` of them.
        let mine = by_worker.get(&w.id).map_or(&[][..], Vec::as_slice);
        let own = &mine[mine.len().saturating_sub(w.record.finished() as usize)..];
        let fails = own.iter().filter(|r| failed(r)).count();
        if fails < MIN_FAILURES {
            continue;
        }
        let rate = fails as f64 / own.len() as f64;
        if rate < MIN_RATE {
            continue;
        }
        let (mut peer_n, mut peer_f) = (0usize, 0usize);
        let names: std::collections::BTreeSet<&str> = own.iter().map(|r| &*r.name).collect();
        for name in &names {
            for (other, (n, f)) in &by_name[name] {
                if *other != w.id {
                    peer_n += n;
                    peer_f += f;
                }
            }
        }
        if peer_n < MIN_PEER_ATTEMPTS {
            continue;
        }
        let peer_rate = peer_f as f64 / peer_n as f64;
        if rate < peer_rate + MARGIN {
            continue;
        }
        candidates.push((
            rate - peer_rate,
            Verdict {
                worker: w.id,
                reason: format!(
                    "{fails} of its last {} attempts failed ({:.0}%) where other workers failed {peer_f} of {peer_n} ({:.0}%) of the same tasks",
                    own.len(),
                    rate * 100.0,
                    peer_rate * 100.0
                ),
            },
        ));
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, v) in candidates {
        if budget == 0 {
            break;
        }
        budget -= 1;
        out.push(v);
    }
    out
}

/// Per worker: its run time over the typical run time of the same task (the median of that
/// task name's successful attempts on every worker), averaged over its successful attempts.
/// 1.0 is typical, 2.0 twice as slow. Workers without comparable attempts are absent.
pub fn speed_vs_peers(history: &[&HistoryRecord]) -> BTreeMap<NodeId, f64> {
    let mut durations: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in history.iter().filter(|r| r.state == TaskState::Succeeded) {
        durations.entry(&*r.name).or_default().push(r.duration_ms);
    }
    let median: BTreeMap<&str, u64> = durations
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            (k, v[v.len() / 2])
        })
        .collect();
    let mut sums: BTreeMap<NodeId, (f64, usize)> = BTreeMap::new();
    for r in history.iter().filter(|r| r.state == TaskState::Succeeded) {
        if let Some(m) = median.get(&*r.name).filter(|m| **m > 0) {
            let e = sums.entry(r.worker).or_default();
            e.0 += r.duration_ms as f64 / *m as f64;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(w, (sum, n))| (w, sum / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use testmesh_consensus::model::{UnixMillis, WorkerRecord};

    fn worker(id: u64, record: WorkerRecord) -> Worker {
        Worker {
            id: NodeId(id),
            hardware: Default::default(),
            capacity: Default::default(),
            labels: Default::default(),
            state: WorkerState::Active,
            boot_id: 1,
            version: String::new(),
            registered_at: UnixMillis(0),
            allocated: Default::default(),
            record,
            quarantine: None,
        }
    }

    fn rec(worker: u64, name: &str, state: TaskState) -> HistoryRecord {
        HistoryRecord {
            task: testmesh_consensus::TaskId(1),
            attempt: 1,
            name: name.into(),
            program: name.into(),
            labels: Default::default(),
            requirements: Default::default(),
            worker: NodeId(worker),
            cpu_model: "".into(),
            cores: 1,
            gpu_model: "".into(),
            state,
            started_at: UnixMillis(0),
            finished_at: UnixMillis(1),
            duration_ms: 1,
            peak_rss: Default::default(),
            cpu_time_ms: 0,
            peak_gpu_memory: Default::default(),
        }
    }

    fn record_of(h: &[HistoryRecord], id: u64) -> WorkerRecord {
        let mine: Vec<_> = h.iter().filter(|r| r.worker == NodeId(id)).collect();
        WorkerRecord {
            succeeded: mine
                .iter()
                .filter(|r| r.state == TaskState::Succeeded)
                .count() as u64,
            failed: mine.iter().filter(|r| r.state == TaskState::Failed).count() as u64,
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_failing_what_passes_elsewhere_is_quarantined() {
        let mut h = Vec::new();
        for _ in 0..5 {
            h.push(rec(1, "unit", TaskState::Failed));
            h.push(rec(2, "unit", TaskState::Succeeded));
            h.push(rec(3, "unit", TaskState::Succeeded));
        }
        let ws: Vec<Worker> = (1..=3).map(|i| worker(i, record_of(&h, i))).collect();
        let v = decide(
            &ws.iter().collect::<Vec<_>>(),
            &h.iter().collect::<Vec<_>>(),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].worker, NodeId(1));
        assert!(v[0].reason.contains("5 of its last 5"), "{}", v[0].reason);
    }

    #[test]
    fn shards_of_a_timing_split_judge_nobody() {
        // The failing test moved to whichever shard ran on worker 1: not the worker's fault.
        let mut h = Vec::new();
        for _ in 0..5 {
            h.push(rec(1, "unit shard 1/3", TaskState::Failed));
            h.push(rec(2, "unit shard 1/3", TaskState::Succeeded));
            h.push(rec(3, "unit shard 1/3", TaskState::Succeeded));
        }
        for r in &mut h {
            r.labels = vec![(SPLIT_LABEL.to_string(), "timings".to_string())];
        }
        let ws: Vec<Worker> = (1..=3).map(|i| worker(i, record_of(&h, i))).collect();
        assert!(
            decide(
                &ws.iter().collect::<Vec<_>>(),
                &h.iter().collect::<Vec<_>>()
            )
            .is_empty()
        );
    }

    #[test]
    fn a_task_failing_everywhere_quarantines_nobody() {
        let mut h = Vec::new();
        for _ in 0..5 {
            for w in 1..=3 {
                h.push(rec(w, "broken", TaskState::Failed));
            }
        }
        let ws: Vec<Worker> = (1..=3).map(|i| worker(i, record_of(&h, i))).collect();
        assert!(
            decide(
                &ws.iter().collect::<Vec<_>>(),
                &h.iter().collect::<Vec<_>>()
            )
            .is_empty()
        );
    }

    #[test]
    fn few_failures_or_a_cleared_record_are_not_enough() {
        let mut h = Vec::new();
        for _ in 0..2 {
            h.push(rec(1, "unit", TaskState::Failed));
        }
        for _ in 0..5 {
            h.push(rec(2, "unit", TaskState::Succeeded));
        }
        let ws: Vec<Worker> = (1..=2).map(|i| worker(i, record_of(&h, i))).collect();
        let hs: Vec<_> = h.iter().collect();
        assert!(
            decide(&ws.iter().collect::<Vec<_>>(), &hs).is_empty(),
            "2 failures"
        );
        // Five old failures, but the record was cleared since: nothing counts yet.
        let mut h2 = h.clone();
        for _ in 0..5 {
            h2.insert(0, rec(1, "unit", TaskState::Failed));
        }
        let ws = [
            worker(1, WorkerRecord::default()),
            worker(2, record_of(&h2, 2)),
        ];
        assert!(
            decide(
                &ws.iter().collect::<Vec<_>>(),
                &h2.iter().collect::<Vec<_>>()
            )
            .is_empty()
        );
    }

    #[test]
    fn speed_is_run_time_over_the_typical_one_for_the_same_task() {
        let mut h = Vec::new();
        for (w, ms) in [(1, 100), (2, 100), (3, 300)] {
            let mut r = rec(w, "unit", TaskState::Succeeded);
            r.duration_ms = ms;
            h.push(r);
        }
        let s = speed_vs_peers(&h.iter().collect::<Vec<_>>());
        assert_eq!(s[&NodeId(1)], 1.0);
        assert_eq!(s[&NodeId(3)], 3.0);
    }

    #[test]
    fn at_most_half_the_pool_is_quarantined() {
        let mut h = Vec::new();
        for _ in 0..5 {
            h.push(rec(1, "unit", TaskState::Failed));
            h.push(rec(2, "unit", TaskState::Failed));
            h.push(rec(3, "unit", TaskState::Succeeded));
            h.push(rec(3, "unit", TaskState::Succeeded));
            h.push(rec(3, "unit", TaskState::Succeeded));
        }
        let ws: Vec<Worker> = (1..=3).map(|i| worker(i, record_of(&h, i))).collect();
        let v = decide(
            &ws.iter().collect::<Vec<_>>(),
            &h.iter().collect::<Vec<_>>(),
        );
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
