//! Exporting a 10,000-task run: the results document, JUnit XML and JSON.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use testmesh::results;
use testmesh_consensus::model::{NodeId, TaskId, UnixMillis};
use testmesh_consensus::runs::Run;
use testmesh_consensus::task::{
    Attempt, BenchMetric, Outcome, Provenance, Task, TaskSpec, TaskState,
};

fn task(i: u64) -> Task {
    let failed = i.is_multiple_of(50);
    let attempt = |n: u32, state: TaskState| Attempt {
        number: n,
        worker: NodeId(1 + i % 20),
        gpus: vec![],
        assigned_at: UnixMillis(1_000),
        started_at: Some(UnixMillis(1_100)),
        pid: Some(100),
        finished_at: Some(UnixMillis(2_300)),
        outcome: Some(Outcome {
            exit_code: Some(if state == TaskState::Succeeded { 0 } else { 1 }),
            stdout_tail: "PASS test_something\n".repeat(40),
            stderr_tail: if state == TaskState::Succeeded {
                String::new()
            } else {
                "assertion failed: left == right\n".repeat(10)
            },
            metrics: vec![BenchMetric {
                name: "throughput".into(),
                value: 1532.5,
                unit: "samples/s".into(),
            }],
            ..Outcome::bare(state)
        }),
        provenance: std::sync::Arc::new(Provenance {
            hostname: format!("gpu-host-{}", i % 20),
            cpu_model: "AMD EPYC 9654".into(),
            gpu_models: vec!["NVIDIA H100 80GB HBM3".into()],
            gpu_driver: "580.159.04".into(),
            cuda_version: "13.0".into(),
            version: "0.1.0".into(),
        }),
    };
    let mut attempts = vec![];
    if i.is_multiple_of(7) {
        attempts.push(attempt(1, TaskState::Failed));
    }
    attempts.push(attempt(
        attempts.len() as u32 + 1,
        if failed {
            TaskState::Failed
        } else {
            TaskState::Succeeded
        },
    ));
    Task {
        id: TaskId(i),
        spec: TaskSpec {
            name: format!("tests/test_module_{i}.py"),
            argv: vec!["pytest".into(), format!("tests/test_module_{i}.py")],
            ..Default::default()
        },
        request_id: String::new(),
        state: if failed {
            TaskState::Failed
        } else {
            TaskState::Succeeded
        },
        attempt: attempts.len() as u32,
        attempts,
        submitted_at: UnixMillis(900),
        finished_at: Some(UnixMillis(2_300)),
        cancel_requested: false,
        handed_back: 0,
        rev: 0,
        run: Some(1),
    }
}

fn bench(c: &mut Criterion) {
    let tasks: Vec<Task> = (1..=10_000).map(task).collect();
    let refs: Vec<&Task> = tasks.iter().collect();
    let run = Run {
        id: 1,
        name: "suite".into(),
        metadata: [("commit".to_string(), "abc123".to_string())].into(),
        request_id: "r".into(),
        created_at: UnixMillis(900),
        tasks: tasks.iter().map(|t| t.id).collect(),
    };
    let r = results::results(&run, &refs);
    println!(
        "10,000-task run: JUnit {} KiB, JSON {} KiB",
        results::junit(&r).len() / 1024,
        serde_json::to_vec(&r).unwrap().len() / 1024
    );
    c.bench_function("results_10000_tasks", |b| {
        b.iter(|| results::results(&run, &refs))
    });
    c.bench_function("junit_10000_tasks", |b| b.iter(|| results::junit(&r)));
    c.bench_function("json_10000_tasks", |b| {
        b.iter(|| serde_json::to_vec(&r).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
