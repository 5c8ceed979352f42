//! Chart rendering at the size the issue sets: 100 workers × 1 hour of 1-second samples.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use testmesh_consensus::model::{Capacity, Hardware, Worker, WorkerState};
use testmesh_consensus::{Bytes, MilliCpu, NodeId, UnixMillis};
use testmesh_dashboard::charts::{self, Metric, NodeSeries, StatPoint};

const NOW: u64 = 10 * 3_600_000;

fn series() -> Vec<NodeSeries> {
    (0..100u64)
        .map(|n| NodeSeries {
            node: format!("{n:016x}"),
            hostname: format!("gpu-host-{n}"),
            points: (0..3600u64)
                .map(|i| StatPoint {
                    at_ms: NOW - 3_600_000 + i * 1000,
                    cpu: ((n * 7 + i) % 100) as f64 / 100.0,
                    memory: 0.4,
                    gpu: Some(((n + i) % 97) as f64 / 97.0),
                    gpu_memory: Some(0.6),
                })
                .collect(),
        })
        .collect()
}

fn workers() -> Vec<Worker> {
    (0..100u64)
        .map(|n| Worker {
            id: NodeId(n + 1),
            hardware: Hardware {
                hostname: format!("gpu-host-{n}"),
                ..Default::default()
            },
            capacity: Capacity {
                cpu: MilliCpu(64_000),
                memory: Bytes(512 << 30),
                disk: Bytes(0),
                gpus: Vec::new(),
            },
            labels: Default::default(),
            state: WorkerState::Active,
            boot_id: 1,
            version: String::new(),
            registered_at: UnixMillis(0),
            allocated: Default::default(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let s = series();
    let w = workers();
    let used: Vec<(String, f64)> = w.iter().map(|w| (w.id.to_string(), 12.0)).collect();
    c.bench_function("heatmap_100_workers_1h_of_1s_samples", |b| {
        b.iter(|| charts::heatmap(&s, Metric::Cpu, NOW, 3_600_000).unwrap())
    });
    c.bench_function("allocation_100_workers", |b| {
        b.iter(|| charts::allocation(&w, &used).unwrap())
    });
    let svg = charts::heatmap(&s, Metric::Cpu, NOW, 3_600_000).unwrap();
    println!("heatmap SVG size: {} KiB", svg.len() / 1024);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
