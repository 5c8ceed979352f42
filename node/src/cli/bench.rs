//! `testmesh bench`: submits N tasks through the API with C concurrent clients and measures
//! throughput (tasks/s from the first submit to the last finish) and submit→finish latency as
//! the client sees it.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use testmesh_consensus::TaskId;
use testmesh_consensus::task::TaskState;
use tokio::sync::{Mutex, Notify};

use super::client::{Client, ClientArgs};
use super::tasks::RequirementArgs;
use crate::core::clock::{Clock, SystemClock};
use crate::core::dto::{SubmitResponse, TaskList};
use crate::core::submit::{SubmitRequest, to_spec};

/// Without a subcommand, `testmesh bench [flags] -- CMD` is the task load generator.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Option<BenchCmd>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Number of tasks
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Concurrent submitting clients
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Tasks per submit request
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    #[command(flatten)]
    pub req: RequirementArgs,
    /// Closed loop: each client waits for its batch to finish before submitting the next
    /// (with --concurrency 1 --batch 1 this measures one task's submit→finish latency alone)
    #[arg(long)]
    pub closed_loop: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// The command every task runs (after --)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Raft commit throughput and latency on this host's disk and network stack
    Raft(super::bench_raft::RaftBenchArgs),
    /// Replay a cluster trace through the real planner in simulated time
    Replay(super::bench_replay::ReplayArgs),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tasks: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub closed_loop: bool,
    pub elapsed_secs: f64,
    pub tasks_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// The `p` quantile of sorted durations, in milliseconds.
pub(super) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    match a.which {
        Some(BenchCmd::Raft(r)) => return super::bench_raft::run(r).await,
        Some(BenchCmd::Replay(r)) => return super::bench_replay::run(r),
        None => {}
    }
    if a.tasks == 0 || a.concurrency == 0 || a.batch == 0 {
        bail!("--tasks, --concurrency and --batch must all be at least 1");
    }
    let run_id = hex::encode(rand::random::<[u8; 6]>());
    let mut req = a.req.to_request(Some("bench".into()), a.command.clone());
    // Tiny default cpu so that the worker's core count does not cap how many run at once.
    if a.req.cpu.is_none() {
        req.cpu = Some(crate::core::submit::Amount::Text("10m".into()));
    }
    req.labels.insert("testmesh-bench".into(), run_id.clone());
    to_spec(&req).map_err(anyhow::Error::msg)?;
    let client = Client::new(&a.client)?;
    let start_rev = client.get::<TaskList>("/api/v1/tasks?limit=0").await?.rev;

    let submitted: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::default();
    let finished: Arc<Mutex<HashMap<TaskId, (Instant, TaskState)>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let batches = a.tasks.div_ceil(a.batch);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = SystemClock.instant();
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (client, next, submitted, req) =
            (client.clone(), next.clone(), submitted.clone(), req.clone());
        let (finished, progress) = (finished.clone(), progress.clone());
        let (n, b, closed) = (a.tasks, a.batch, a.closed_loop);
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches {
                    return Ok::<_, anyhow::Error>(());
                }
                let count = b.min(n - i * b);
                let body = SubmitRequest {
                    request_id: None,
                    tasks: vec![req.clone(); count],
                    allow_unschedulable: false,
                };
                let sent = SystemClock.instant();
                let r: SubmitResponse = client.post("/api/v1/tasks", &body).await?;
                {
                    let mut s = submitted.lock().await;
                    for id in &r.tasks {
                        s.insert(*id, sent);
                    }
                }
                if closed {
                    loop {
                        let woken = progress.notified();
                        let f = finished.lock().await;
                        if r.tasks.iter().all(|id| f.contains_key(id)) {
                            break;
                        }
                        drop(f);
                        woken.await;
                    }
                }
            }
        });
    }

    // Watch for finished tasks of this run.
    let mut since = start_rev.to_string();
    let mut last_print = SystemClock.instant();
    let mut done = 0;
    while done < a.tasks {
        let q = format!(
            "/api/v1/tasks?label=testmesh-bench%3D{run_id}&state=succeeded,failed,timed_out,cancelled,lost&since={since}&wait=10s&limit=100000"
        );
        let l: TaskList = client.get(&q).await?;
        let now = SystemClock.instant();
        since = l.next;
        {
            let mut f = finished.lock().await;
            for v in l.tasks {
                f.entry(v.task.id).or_insert((now, v.task.state));
            }
            done = f.len();
        }
        progress.notify_waiters();
        while let Some(r) = submitters.try_join_next() {
            r??;
        }
        if now.duration_since(last_print) > Duration::from_secs(2) && !a.json {
            eprintln!("bench: {done}/{} finished", a.tasks);
            last_print = now;
        }
    }
    while let Some(r) = submitters.join_next().await {
        r??;
    }
    let submitted = submitted.lock().await;
    let finished = finished.lock().await;
    let end = finished.values().map(|(t, _)| *t).max().unwrap_or(t0);
    let mut lat: Vec<Duration> = finished
        .iter()
        .filter_map(|(id, (t, _))| submitted.get(id).map(|s| t.duration_since(*s)))
        .collect();
    lat.sort();
    let succeeded = finished
        .values()
        .filter(|(_, s)| *s == TaskState::Succeeded)
        .count();
    let elapsed = end.duration_since(t0).as_secs_f64();
    let report = Report {
        tasks: a.tasks,
        succeeded,
        failed: a.tasks - succeeded,
        concurrency: a.concurrency,
        batch: a.batch,
        closed_loop: a.closed_loop,
        elapsed_secs: elapsed,
        tasks_per_sec: a.tasks as f64 / elapsed.max(1e-9),
        latency_ms_p50: percentile(&lat, 0.50),
        latency_ms_p95: percentile(&lat, 0.95),
        latency_ms_p99: percentile(&lat, 0.99),
        latency_ms_max: percentile(&lat, 1.0),
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} tasks ({} succeeded, {} failed) in {:.2}s: {:.0} tasks/s\nsubmit→finish latency: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.tasks,
            report.succeeded,
            report.failed,
            report.elapsed_secs,
            report.tasks_per_sec,
            report.latency_ms_p50,
            report.latency_ms_p95,
            report.latency_ms_p99,
            report.latency_ms_max
        );
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
