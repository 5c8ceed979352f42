//! The statistics store at the dashboard's size: 100 nodes, each with 8 GPUs, one sample a
//! second for an hour. Prints the memory it holds (resident set growth of this process) and
//! times the read the dashboard does for a chart.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use testmesh::monitor::{GpuSample, HostSample};
use testmesh::stats::{STATS_VERSION, StatsMessage, StatsStore};
use testmesh_consensus::{Bytes, NodeId, UnixMillis};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn message(node: u64, i: u64) -> StatsMessage {
    StatsMessage {
        version: STATS_VERSION,
        node: NodeId(node),
        at: UnixMillis(1_000_000 + i * 1000),
        sample: HostSample {
            cpu_percent: (i % 100) as f32,
            memory_used: Bytes(100 << 30),
            memory_total: Bytes(512 << 30),
            load_1m: 3.0,
            gpus: (0..8)
                .map(|g| GpuSample {
                    index: g,
                    utilization_percent: ((i + g as u64) % 100) as u32,
                    memory_used: Bytes(10 << 30),
                    memory_total: Bytes(80 << 30),
                    temperature_c: 50,
                    power_mw: 300_000,
                    processes: 1,
                    foreign_processes: 0,
                    procs: Vec::new(),
                })
                .collect(),
        },
        running_tasks: 3,
    }
}

fn fill() -> StatsStore {
    let mut s = StatsStore::new(Duration::from_secs(1), Duration::from_secs(3600));
    for i in 0..3600 {
        for n in 1..=100 {
            s.insert(message(n, i));
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let before = rss_kib();
    let store = fill();
    let after = rss_kib();
    let points: usize = store
        .view(None, UnixMillis(0))
        .values()
        .map(|v| v.samples.len() + v.history.len())
        .sum();
    println!(
        "stats store, 100 nodes × 8 GPUs × 1 h of 1-s samples: {points} points kept, resident set grew by {:.1} MiB",
        (after.saturating_sub(before)) as f64 / 1024.0
    );
    c.bench_function("stats_view_100_nodes_1h", |b| {
        b.iter(|| store.view(None, UnixMillis(1_000_000)))
    });
    let mut s = fill();
    let mut i = 3600;
    c.bench_function("stats_insert", |b| {
        b.iter(|| {
            i += 1;
            s.insert(message(1 + i % 100, i / 100 + 3600));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
