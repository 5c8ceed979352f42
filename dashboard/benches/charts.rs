//! The dashboard at the size the issue sets: 100 workers × 1 hour of 1-second samples. Each
//! chart on its own, then every page and the reports through the router, as a browser would
//! ask for them (no network: the handler's own time).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use testmesh_consensus::model::{Capacity, GpuInfo, Hardware, Worker, WorkerState};
use testmesh_consensus::scaling::{CloudInstance, DecisionKind, DecisionRecord, InstanceState};
use testmesh_consensus::task::Task;
use testmesh_consensus::{Bytes, MilliCpu, NodeId, UnixMillis};
use testmesh_dashboard::charts::{self, Metric, NodeSeries, StatPoint, Style};
use testmesh_dashboard::view::Span;
use testmesh_dashboard::views::{
    Analysis, By, EfficiencyRow, ReservedSpan, ScalingView, Table, WorkerUsage,
};
use testmesh_dashboard::{Overview, Source};
use tower::ServiceExt;

const NOW: u64 = 10 * 3_600_000;
const HOUR: u64 = 3_600_000;

fn series() -> Vec<NodeSeries> {
    (0..100u64)
        .map(|n| NodeSeries {
            node: format!("{n:016x}"),
            hostname: format!("gpu-host-{n}"),
            cores: 64.0,
            gpus: 8,
            points: (0..3600u64)
                .map(|i| StatPoint {
                    at_ms: NOW - HOUR + i * 1000,
                    cpu: ((n * 7 + i) % 100) as f64 / 100.0,
                    memory: 0.4,
                    gpu: Some(((n + i) % 97) as f64 / 97.0),
                    gpu_memory: Some(0.6),
                })
                .collect(),
            ..Default::default()
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
                gpus: (0..8)
                    .map(|i| GpuInfo {
                        index: i,
                        uuid: String::new(),
                        model: "H100".into(),
                        memory: Bytes(80 << 30),
                    })
                    .collect(),
            },
            labels: Default::default(),
            state: WorkerState::Active,
            boot_id: 1,
            version: String::new(),
            registered_at: UnixMillis(0),
            allocated: Default::default(),
            record: Default::default(),
            quarantine: None,
        })
        .collect()
}

struct Fake {
    workers: Vec<Worker>,
    series: Vec<NodeSeries>,
}

impl Source for Fake {
    fn now(&self) -> u64 {
        NOW
    }
    fn overview(&self) -> Overview {
        Overview {
            node: "1".into(),
            leader: Some("1".into()),
            term: 3,
            workers: self.workers.clone(),
            ..Default::default()
        }
    }
    fn series(&self, _window_ms: u64) -> BoxFuture<'_, (u64, Vec<NodeSeries>)> {
        Box::pin(async move { (NOW, self.series.clone()) })
    }
    fn usage(&self) -> BoxFuture<'_, Vec<WorkerUsage>> {
        let usage: Vec<WorkerUsage> = {
            self.workers
                .iter()
                .map(|w| WorkerUsage {
                    id: w.id.to_string(),
                    cpu_cores: 12.0,
                    memory_bytes: 100 << 30,
                    busy_gpus: vec![0, 1],
                })
                .collect()
        };
        Box::pin(async move { usage })
    }
    fn scaling(&self) -> ScalingView {
        ScalingView {
            enabled: true,
            decisions: (0..200)
                .map(|i| DecisionRecord {
                    at: UnixMillis(NOW - HOUR + i * 18_000),
                    kind: if i % 2 == 0 {
                        DecisionKind::Up
                    } else {
                        DecisionKind::Down
                    },
                    launches: vec![],
                    remove: vec![],
                    reason: "12 tasks wait for GPUs nobody has free".into(),
                    pending_tasks: 12,
                    unschedulable_tasks: 0,
                    managed_workers: 20,
                    in_flight: 0,
                    hourly_cost_micros: 40_000_000,
                })
                .collect(),
            instances: (0..100)
                .map(|i| CloudInstance {
                    intent: i,
                    provider: ["aws", "gcp", "docker"][i as usize % 3].into(),
                    instance_type: "g6.xlarge".into(),
                    price_micros_per_hour: 800_000,
                    state: InstanceState::Joined,
                    provider_id: None,
                    worker: None,
                    requested_at: UnixMillis(NOW - HOUR + i * 30_000),
                    launched_at: None,
                    joined_at: None,
                    ended_at: (i % 2 == 0).then_some(UnixMillis(NOW - 600_000)),
                    end_reason: None,
                })
                .collect(),
            budget_micros_per_hour: Some(50_000_000),
        }
    }
    fn reservations(&self, _since_ms: u64) -> Vec<ReservedSpan> {
        (0..5000)
            .map(|i| ReservedSpan {
                start_ms: NOW - HOUR + i * 700,
                end_ms: Some(NOW - HOUR + i * 700 + 60_000),
                cpu_cores: 4.0,
                gpus: 1.0,
                ..Default::default()
            })
            .collect()
    }
    fn tasks(&self, _limit: usize) -> Vec<Task> {
        Vec::new()
    }
    fn task(&self, _id: u64) -> Option<Task> {
        None
    }
    fn analysis(&self, window_ms: u64) -> BoxFuture<'_, Analysis> {
        let mut t = Table::new("t", &["a", "b", "c"]);
        for i in 0..100 {
            t.row(vec![i.to_string(), "x".repeat(20), "y".into()]);
        }
        Box::pin(async move {
            Analysis {
                window_ms,
                summary: vec!["a finding".into(); 6],
                efficiency: (0..200)
                    .map(|i| EfficiencyRow {
                        by: if i % 2 == 0 { By::TaskName } else { By::Worker },
                        key: format!("name-{i}"),
                        attempts: 40,
                        cpu_reserved_core_hours: 10.0 + i as f64,
                        cpu_used_core_hours: 4.0,
                        memory_reserved_gib_hours: 20.0,
                        memory_peak_gib_hours: 5.0,
                        gpu_reserved_hours: 1.0,
                    })
                    .collect(),
                suggestions: t.clone(),
                workers_now: t.clone(),
                patterns: t.clone(),
                predictions: t.clone(),
                predictor: vec!["trained".into()],
                recommendation: "buy".into(),
                instance_types: t,
            }
        })
    }
}

fn bench(c: &mut Criterion) {
    let s = series();
    let w = workers();
    let used = futures::executor::block_on(
        Fake {
            workers: w.clone(),
            series: Vec::new(),
        }
        .usage(),
    );
    let span = Span::last(NOW, HOUR);
    for (label, style) in [("vector", Style::Vector), ("compact", Style::Compact)] {
        c.bench_function(
            &format!("heatmap_100_workers_1h_of_1s_samples_{label}"),
            |b| b.iter(|| charts::heatmap(&s, Metric::Cpu, &span, style, &[]).unwrap()),
        );
        let svg = charts::heatmap(&s, Metric::Cpu, &span, style, &[]).unwrap();
        println!("heatmap SVG size ({label}): {} KiB", svg.len() / 1024);
    }
    let names = testmesh_consensus::model::display_names(&w);
    c.bench_function("allocation_100_workers", |b| {
        b.iter(|| charts::allocation(&w, &names, &used).unwrap())
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = testmesh_dashboard::router(
        Arc::new(Fake {
            workers: w,
            series: s,
        }),
        Duration::from_secs(2),
    );
    let get = |path: &str| {
        let app = app.clone();
        let path = path.to_string();
        async move {
            let r = app
                .oneshot(Request::get(path.as_str()).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap()
                .len()
        }
    };
    for name in testmesh_dashboard::CHARTS {
        let path = format!("/dashboard/charts/{name}.svg");
        c.bench_function(&format!("chart_{name}"), |b| {
            b.iter(|| rt.block_on(get(&path)))
        });
    }
    for path in [
        "/",
        "/dashboard/utilisation",
        "/dashboard/allocation",
        "/dashboard/scaling",
        "/dashboard/efficiency",
        "/dashboard/cost",
        "/dashboard/insights",
    ] {
        println!("{path}: {} KiB", rt.block_on(get(path)) / 1024);
        c.bench_function(&format!("page_{path}"), |b| {
            b.iter(|| rt.block_on(get(path)))
        });
    }
    c.bench_function("png_cpu_heatmap", |b| {
        b.iter(|| rt.block_on(get("/dashboard/charts/cpu.png")))
    });
    c.bench_function("report_html", |b| {
        b.iter(|| rt.block_on(get("/dashboard/report.html")))
    });
    println!(
        "report PDF: {} KiB",
        rt.block_on(get("/dashboard/report.pdf")) / 1024
    );
    c.bench_function("report_pdf", |b| {
        b.iter(|| rt.block_on(get("/dashboard/report.pdf")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
