//! Insights over the largest inputs the API gives them: the whole execution history (50,000
//! attempts), 5,000 queued tasks packed onto every type of the default catalogue, and 1,000
//! workers.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::model::{Capacity, WorkerState};
use testmesh_consensus::resources::{Allocated, GpuRequest, Requirements};
use testmesh_consensus::task::TaskState;
use testmesh_consensus::{Bytes, MilliCpu, NodeId, TaskId, UnixMillis};
use testmesh_planner::catalogue::default_catalogue;
use testmesh_planner::insights::{Demand, Observations, WorkerUse, analyse};

const HOUR: u64 = 3_600_000;
const NOW: u64 = 100 * HOUR;

fn requirements(rng: &mut StdRng) -> Requirements {
    Requirements {
        cpu: MilliCpu([250, 500, 1000, 2000, 4000][rng.random_range(0..5)]),
        memory: Bytes([256u64, 1024, 4096, 16384][rng.random_range(0..4)] << 20),
        gpu: match rng.random_range(0..10) {
            0..=5 => GpuRequest::None,
            6 | 7 => GpuRequest::Whole { count: 1 },
            8 => GpuRequest::Whole { count: 4 },
            _ => GpuRequest::Shared {
                milli: 500,
                memory: Bytes(8 << 30),
            },
        },
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let history: Vec<HistoryRecord> = (0..50_000u64)
        .map(|i| {
            let duration_ms = rng.random_range(1_000..600_000);
            let finished = NOW - rng.random_range(0..24 * HOUR);
            HistoryRecord {
                task: TaskId(i),
                attempt: 1,
                name: format!("suite-{}", rng.random_range(0..200)).into(),
                program: "pytest".into(),
                labels: Vec::new(),
                requirements: requirements(&mut rng),
                worker: NodeId(rng.random_range(1..=1000)),
                cpu_model: "".into(),
                cores: 16,
                gpu_model: "".into(),
                state: TaskState::Succeeded,
                started_at: UnixMillis(finished - duration_ms),
                finished_at: UnixMillis(finished),
                duration_ms,
                peak_rss: Bytes(rng.random_range(50..4000) << 20),
                cpu_time_ms: duration_ms / 2,
                peak_gpu_memory: Bytes(0),
            }
        })
        .collect();
    let submitted: Vec<(UnixMillis, Requirements)> = history
        .iter()
        .map(|r| (r.started_at, r.requirements.clone()))
        .collect();
    let queued: Vec<Demand> = (0..5_000)
        .map(|i| Demand {
            name: format!("suite-{}", i % 200),
            requirements: requirements(&mut rng),
            predicted_secs: Some(rng.random_range(1.0..600.0)),
        })
        .collect();
    let workers: Vec<WorkerUse> = (1..=1000)
        .map(|i| WorkerUse {
            id: NodeId(i),
            hostname: format!("host{i}"),
            state: WorkerState::Active,
            capacity: Capacity {
                cpu: MilliCpu(16_000),
                memory: Bytes(64 << 30),
                disk: Bytes(1 << 40),
                gpus: Vec::new(),
            },
            allocated: Allocated::default(),
            live: None,
        })
        .collect();
    let catalogue = default_catalogue();
    let snapshot = Observations {
        now: UnixMillis(NOW),
        window_ms: 24 * HOUR,
        history: history.iter().collect(),
        submitted: submitted.iter().map(|(at, r)| (*at, r)).collect(),
        queued,
        workers,
    };
    c.bench_function("insights_50k_history_5k_queued_1000_workers", |b| {
        b.iter(|| analyse(&snapshot, &catalogue))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
