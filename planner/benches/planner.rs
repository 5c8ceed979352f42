//! Planner benchmarks: one placement decision among 1,000 heterogeneous workers, and placing
//! 10,000 pending tasks on 1,000 workers. Besides criterion's means, the single-decision bench
//! prints the latency distribution (p50/p99) of 20,000 individually timed decisions.

#![allow(clippy::disallowed_methods)] // a benchmark measures time itself

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testmesh_consensus::command::{Command, WorkerRegistration};
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::{Capacity, GpuInfo, Hardware};
use testmesh_consensus::resources::{GpuRequest, Requirements};
use testmesh_consensus::task::TaskSpec;
use testmesh_consensus::{Bytes, MilliCpu, NodeId, UnixMillis};
use testmesh_planner::{ClusterView, Options, place, schedule};

const GIB: u64 = 1 << 30;

/// 1,000 workers: CPU boxes of several sizes and GPU boxes with 1-8 GPUs of three models.
fn workers(rng: &mut StdRng, n: u64) -> Vec<Command> {
    (0..n)
        .map(|i| {
            let gpu_host = rng.random_bool(0.4);
            let gpus = if gpu_host {
                [1, 2, 4, 8][rng.random_range(0..4)]
            } else {
                0
            };
            let (model, mem) = [
                ("NVIDIA A10", 24),
                ("NVIDIA L4", 24),
                ("NVIDIA H100 80GB HBM3", 80),
            ][rng.random_range(0..3)];
            Command::RegisterWorker {
                worker: WorkerRegistration {
                    id: NodeId(i + 1),
                    hardware: Hardware::default(),
                    capacity: Capacity {
                        cpu: MilliCpu([8, 16, 32, 64][rng.random_range(0..4)] * 1000),
                        memory: Bytes([32, 64, 256, 512][rng.random_range(0..4)] * GIB),
                        disk: Bytes(0),
                        gpus: (0..gpus)
                            .map(|g| GpuInfo {
                                index: g,
                                uuid: String::new(),
                                model: model.into(),
                                memory: Bytes(mem * GIB),
                            })
                            .collect(),
                    },
                    labels: Default::default(),
                    boot_id: 1,
                    version: String::new(),
                },
                at: UnixMillis(0),
            }
        })
        .collect()
}

fn task(rng: &mut StdRng) -> TaskSpec {
    let gpu = match rng.random_range(0..10) {
        0..=5 => GpuRequest::None,
        6 | 7 => GpuRequest::Whole {
            count: [1, 1, 2, 4][rng.random_range(0..4)],
        },
        _ => GpuRequest::Shared {
            milli: [250, 500][rng.random_range(0..2)],
            memory: Bytes(8 * GIB),
        },
    };
    TaskSpec {
        argv: vec!["true".into()],
        requirements: Requirements {
            cpu: MilliCpu([500, 1000, 2000, 4000][rng.random_range(0..4)]),
            memory: Bytes([1, 2, 4, 8, 16][rng.random_range(0..5)] * GIB),
            gpu,
            ..Default::default()
        },
        priority: rng.random_range(0..3),
        ..Default::default()
    }
}

fn ledger(n_workers: u64, n_tasks: usize, seed: u64) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut l = Ledger::default();
    for w in workers(&mut rng, n_workers) {
        l.apply(1, &w).unwrap();
    }
    for chunk in (0..n_tasks).collect::<Vec<_>>().chunks(5000) {
        let tasks = chunk.iter().map(|_| task(&mut rng)).collect();
        l.apply(
            2,
            &Command::Submit {
                request_id: format!("r{}", chunk[0]),
                tasks,
                at: UnixMillis(0),
            },
        )
        .unwrap();
    }
    l
}

/// A cluster already half full, so decisions see a realistic mix of free capacity.
fn half_full(n_workers: u64) -> Ledger {
    let mut l = ledger(n_workers, 6000, 7);
    let plan = schedule(
        &mut ClusterView::from_ledger(&l, usize::MAX),
        &Options::default(),
    );
    l.apply(
        3,
        &Command::Assign {
            assignments: plan.assignments,
            at: UnixMillis(1),
        },
    )
    .unwrap();
    l
}

fn bench(c: &mut Criterion) {
    // One decision: one pending task, 1,000 workers.
    let base = half_full(1000);
    let mut rng = StdRng::seed_from_u64(11);
    let probes: Vec<TaskSpec> = (0..256).map(|_| task(&mut rng)).collect();
    let mut with_one: Vec<Ledger> = probes
        .iter()
        .map(|t| {
            let mut l = base.clone();
            // Drop the queue left over from filling, keep one probe task.
            let pending: Vec<_> = l.pending().map(|t| t.id).collect();
            for id in pending {
                l.apply(
                    4,
                    &Command::Cancel {
                        task: id,
                        at: UnixMillis(2),
                    },
                )
                .unwrap();
            }
            l.apply(
                5,
                &Command::Submit {
                    request_id: "probe".into(),
                    tasks: vec![t.clone()],
                    at: UnixMillis(3),
                },
            )
            .unwrap();
            l
        })
        .collect();
    let opts = Options::default();
    let views: Vec<ClusterView<'_>> = with_one
        .iter_mut()
        .map(|l| ClusterView::from_ledger(l, usize::MAX))
        .collect();
    let mut i = 0;
    c.bench_function("decide_one_task_among_1000_workers", |b| {
        b.iter_batched_ref(
            || {
                i = (i + 1) % views.len();
                views[i].clone()
            },
            |v| schedule(v, &opts),
            BatchSize::SmallInput,
        )
    });
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|k| {
            let mut v = views[k % views.len()].clone();
            let t = Instant::now();
            std::hint::black_box(schedule(&mut v, &opts));
            t.elapsed()
        })
        .collect();
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "decide_one_task_among_1000_workers latency: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        p(0.5),
        p(0.99),
        p(1.0)
    );

    // A batch: 10,000 pending tasks on 1,000 empty workers.
    let big = ledger(1000, 10_000, 3);
    let view = ClusterView::from_ledger(&big, usize::MAX);
    let placed = schedule(&mut view.clone(), &opts).assignments.len();
    println!("place_10000_tasks_on_1000_workers places {placed} of 10000");
    c.bench_function("place_10000_tasks_on_1000_workers", |b| {
        b.iter_batched_ref(
            || view.clone(),
            |v| schedule(v, &opts),
            BatchSize::LargeInput,
        )
    });
    // The same with run-time predictions on: shortest predicted first within groups of 64.
    let with_predictions = Options {
        shortest_first_group: 64,
        ..Default::default()
    };
    let predicted: Vec<_> = view
        .pending
        .iter()
        .map(|p| {
            let mut p = *p;
            // Spread of predicted run times, from 1 s to ~17 min.
            p.predicted_secs = Some(1.0 + (p.id.0 * 7919 % 1000) as f64);
            p
        })
        .collect();
    c.bench_function("place_10000_tasks_on_1000_workers_with_predictions", |b| {
        b.iter_batched_ref(
            || (view.workers.clone(), predicted.clone()),
            |(w, q)| place(w, q.clone(), &with_predictions),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("build_view_10000_pending_1000_workers", |b| {
        b.iter(|| ClusterView::from_ledger(&big, usize::MAX))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
