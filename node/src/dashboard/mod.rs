//! The dashboard's source: this node's replica, leadership, gossip statistics and the
//! analysis, turned into the dashboard crate's plain types. Reads only the core.

mod analysis;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use testmesh_dashboard::views::{BUSY_GPU_PCT, ReservedSpan, ScalingView, WorkerUsage};

use crate::core::Core;

/// What the dashboard reads: this node's core.
pub struct DashboardSource(pub Core);

impl testmesh_dashboard::Source for DashboardSource {
    fn now(&self) -> u64 {
        self.0.now().0
    }

    fn overview(&self) -> testmesh_dashboard::Overview {
        let core = &self.0;
        let term = core.leadership.term();
        let l = core.ledger.read();
        let mut by_state = BTreeMap::new();
        for t in l.tasks() {
            *by_state.entry(t.state).or_insert(0usize) += 1;
        }
        testmesh_dashboard::Overview {
            node: core.node.to_string(),
            leader: term.leader.map(|n| n.to_string()),
            term: term.term,
            workers: l.workers().cloned().collect(),
            tasks_by_state: by_state,
            recent: l.tasks().rev().take(20).cloned().collect(),
        }
    }

    fn series(
        &self,
        window_ms: u64,
    ) -> BoxFuture<'_, (u64, Vec<testmesh_dashboard::charts::NodeSeries>)> {
        Box::pin(self.series_of(window_ms))
    }

    fn usage(&self) -> BoxFuture<'_, Vec<WorkerUsage>> {
        Box::pin(async move {
            let latest = self.0.stats.latest_all().await;
            let l = self.0.ledger.read();
            l.workers()
                .filter_map(|w| {
                    let p = latest.get(&w.id)?;
                    Some(WorkerUsage {
                        id: w.id.to_string(),
                        cpu_cores: p.sample.cpu_percent as f64 / 100.0 * w.capacity.cpu.0 as f64
                            / 1000.0,
                        memory_bytes: p.sample.memory_used.0,
                        busy_gpus: p
                            .sample
                            .gpus
                            .iter()
                            .filter(|g| g.utilization_percent >= BUSY_GPU_PCT)
                            .map(|g| g.index)
                            .collect(),
                    })
                })
                .collect()
        })
    }

    fn scaling(&self) -> ScalingView {
        let l = self.0.ledger.read();
        let s = l.scaling();
        ScalingView {
            enabled: s.policy().enabled,
            decisions: s.decisions().cloned().collect(),
            instances: s.instances().cloned().collect(),
            budget_micros_per_hour: s.policy().budget_micros_per_hour,
        }
    }

    fn reservations(&self, since_ms: u64) -> Vec<ReservedSpan> {
        let l = self.0.ledger.read();
        let mut out = Vec::new();
        for t in l.tasks() {
            for a in &t.attempts {
                let Some(start) = a.started_at.or(Some(a.assigned_at)) else {
                    continue;
                };
                let end = a.finished_at.map(|e| e.0);
                if end.is_some_and(|e| e < since_ms) {
                    continue;
                }
                out.push(ReservedSpan {
                    start_ms: start.0,
                    end_ms: end,
                    cpu_cores: t.spec.requirements.cpu.0 as f64 / 1000.0,
                    gpus: a.gpus.iter().map(|g| g.milli as f64 / 1000.0).sum(),
                    worker: a.worker.to_string(),
                    task_name: t.spec.name.clone(),
                });
            }
        }
        out
    }

    fn tasks(&self, limit: usize) -> Vec<testmesh_consensus::task::Task> {
        let l = self.0.ledger.read();
        let mut out: Vec<_> = l.pending().take(limit).cloned().collect();
        out.extend(
            l.tasks()
                .rev()
                .filter(|t| t.state != testmesh_consensus::task::TaskState::Pending)
                .take(limit)
                .cloned(),
        );
        out
    }

    fn task(&self, id: u64) -> Option<testmesh_consensus::task::Task> {
        // Live or archived (retention moves finished tasks out of the live ledger).
        crate::core::archive::task(&self.0.ledger, testmesh_consensus::TaskId(id)).ok()
    }

    fn analysis(
        &self,
        window_ms: u64,
    ) -> futures::future::BoxFuture<'_, testmesh_dashboard::views::Analysis> {
        Box::pin(analysis::analysis(&self.0, window_ms))
    }

    fn runs(
        &self,
        limit: usize,
    ) -> Vec<(
        testmesh_consensus::runs::Run,
        Vec<testmesh_consensus::task::Task>,
    )> {
        let l = self.0.ledger.read();
        l.runs()
            .rev()
            .take(limit)
            .map(|r| {
                let tasks = r.tasks.iter().filter_map(|t| l.task(*t).cloned()).collect();
                (r.clone(), tasks)
            })
            .collect()
    }

    fn speed_vs_peers(&self) -> Vec<(String, f64)> {
        let l = self.0.ledger.read();
        let recent: Vec<_> = l.history().rev().take(5_000).collect();
        testmesh_planner::quarantine::speed_vs_peers(&recent)
            .into_iter()
            .map(|(id, r)| (id.to_string(), r))
            .collect()
    }

    fn etas(&self) -> BTreeMap<u64, testmesh_dashboard::views::QueueEta> {
        let models = self.0.models.current();
        let l = self.0.ledger.read();
        crate::core::eta::etas(&l, models.as_deref(), self.0.now().0)
            .into_iter()
            .map(|(id, e)| {
                (
                    id.0,
                    testmesh_dashboard::views::QueueEta {
                        position: e.position,
                        start_ms: e.start_ms,
                        finish_ms: e.finish_ms,
                        confidence: e.confidence,
                    },
                )
            })
            .collect()
    }

    fn first_data_ms(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            self.0
                .stats
                .read(|s| s.first_at())
                .await
                .flatten()
                .map(|t| t.0)
        })
    }

    fn run(
        &self,
        id: u64,
    ) -> Option<(
        testmesh_consensus::runs::Run,
        Vec<testmesh_consensus::task::Task>,
    )> {
        crate::core::archive::run_any(&self.0.ledger, id).ok()
    }
}

impl DashboardSource {
    async fn series_of(
        &self,
        window_ms: u64,
    ) -> (u64, Vec<testmesh_dashboard::charts::NodeSeries>) {
        use testmesh_dashboard::charts::{NodeSeries, StatPoint};
        let now = self.0.now().0;
        let hosts: BTreeMap<testmesh_consensus::NodeId, NodeSeries> = {
            let l = self.0.ledger.read();
            let names = testmesh_consensus::model::display_names(l.workers());
            l.workers()
                .map(|w| {
                    let mut models: Vec<String> =
                        w.capacity.gpus.iter().map(|g| g.model.clone()).collect();
                    models.dedup();
                    let s = NodeSeries {
                        node: w.id.to_string(),
                        hostname: w.hardware.hostname.clone(),
                        name: names.get(&w.id).cloned().unwrap_or_default(),
                        labels: w.labels.clone(),
                        gpu_models: models,
                        state: format!("{:?}", w.state).to_lowercase(),
                        cores: w.capacity.cpu.0 as f64 / 1000.0,
                        gpus: w.capacity.gpus.len() as u32,
                        points: Vec::new(),
                    };
                    (w.id, s)
                })
                .collect()
        };
        let since = testmesh_consensus::UnixMillis(now.saturating_sub(window_ms));
        let view = self
            .0
            .stats
            .read(move |s| s.view(None, since))
            .await
            .unwrap_or_default();
        let point = |p: &crate::stats::Point| {
            let s = &p.sample;
            let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let n = s.gpus.len() as f64;
            StatPoint {
                at_ms: p.at.0,
                cpu: s.cpu_percent as f64 / 100.0,
                memory: frac(s.memory_used.0, s.memory_total.0),
                gpu: (n > 0.0).then(|| {
                    s.gpus
                        .iter()
                        .map(|g| g.utilization_percent as f64)
                        .sum::<f64>()
                        / n
                        / 100.0
                }),
                gpu_memory: (n > 0.0).then(|| {
                    s.gpus
                        .iter()
                        .map(|g| frac(g.memory_used.0, g.memory_total.0))
                        .sum::<f64>()
                        / n
                }),
            }
        };
        let series = view
            .into_iter()
            .map(|(id, v)| {
                // The downsampled history first, then the recent samples at full resolution.
                let first_fine = v.samples.first().map_or(u64::MAX, |p| p.at.0);
                let mut points: Vec<StatPoint> = v
                    .history
                    .iter()
                    .filter(|p| p.at.0 >= since.0 && p.at.0 < first_fine)
                    .map(point)
                    .collect();
                points.extend(v.samples.iter().map(point));
                let mut s = hosts.get(&id).cloned().unwrap_or_else(|| NodeSeries {
                    node: id.to_string(),
                    ..Default::default()
                });
                s.points = points;
                s
            })
            .collect();
        (now, series)
    }
}
