//! `testmesh bench replay`: a real cluster trace through the real ledger and planner in
//! simulated time (see `planner::replay`). Reads the Alibaba GPU-cluster trace format
//! (github.com/alibaba/clusterdata, cluster-trace-gpu-v2023): pods with `cpu_milli`,
//! `memory_mib`, `num_gpu`, `gpu_milli`, `gpu_spec`, `creation_time`, `scheduled_time`,
//! `deletion_time` (seconds), and nodes with `cpu_milli`, `memory_mib`, `gpu`, `model`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use testmesh_consensus::model::{Capacity, GpuInfo};
use testmesh_consensus::resources::{GpuRequest, Requirements, WHOLE_GPU_MILLI};
use testmesh_consensus::{Bytes, MilliCpu};

use crate::core::clock::{Clock, SystemClock};
use testmesh_planner::replay::{TraceNode, TracePod, replay};
use testmesh_planner::{Options, Policy};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PolicyArg {
    /// The first node that fits, in trace order
    FirstFit,
    /// testmesh's scheduler: the best-scoring of up to 32 fitting nodes
    Fitness,
    /// The batch optimizer: largest first, multi-resource alignment (Tetris-like)
    Batch,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Pods CSV (e.g. openb_pod_list_default.csv)
    #[arg(long)]
    pub pods: PathBuf,
    /// Nodes CSV (e.g. openb_node_list_gpu_node.csv)
    #[arg(long)]
    pub nodes: PathBuf,
    /// Divide the trace's clock by X (arrivals and durations); times in the report are in the
    /// compressed clock. Placement order does not change: the replay is event-driven.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Offered load factor: arrival times are divided by X while run times stay as traced
    /// (X = 10 brings the same pods ten times as fast)
    #[arg(long, default_value_t = 1.0)]
    pub load: f64,
    #[arg(long, value_enum, default_value = "fitness")]
    pub policy: PolicyArg,
    /// Use only N of the nodes, evenly spread over the list (keeps the mix of node types): the
    /// published node list is a whole cluster, on which the sampled pods rarely queue
    #[arg(long)]
    pub node_sample: Option<usize>,
    /// Scale: start from the --node-sample nodes (default 10) and let a policy buy instances
    /// of the trace's node types (priced by a stated model) as the sim provider would
    #[arg(long, value_enum)]
    pub scale: Option<ScaleArg>,
    /// With --scale: most instances bought at once
    #[arg(long, default_value_t = 200)]
    pub max_workers: u32,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Check the queue ETAs instead: each pod that queues on arrival gets the estimate the
    /// dashboard would show (learned run times, and the traced ones for comparison), compared
    /// with when it actually started
    #[arg(long, conflicts_with = "scale")]
    pub eta: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScaleArg {
    /// The autoscaler (cost-aware packing, caps, cooldowns, idle removal)
    Autoscaler,
    /// A plain utilisation threshold: +2 of the commonest type above 80 % or while tasks wait
    Threshold,
}

type Row = HashMap<String, String>;

fn read(path: &Path, required: &[&str]) -> anyhow::Result<Vec<(usize, Row)>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let header: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    if let Some(missing) = required.iter().find(|c| !header.iter().any(|h| h == *c)) {
        bail!(
            "{} has no column {missing:?} (its columns: {}); expected the Alibaba GPU trace format",
            path.display(),
            header.join(", ")
        );
    }
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: line {}", path.display(), i + 2))?;
        rows.push((
            i + 2,
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect(),
        ));
    }
    Ok(rows)
}

fn num(path: &Path, line: usize, row: &Row, col: &str) -> anyhow::Result<u64> {
    let v = row.get(col).map(|s| s.trim()).unwrap_or("");
    if v.is_empty() {
        return Ok(0);
    }
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| x as u64)
        .with_context(|| {
            format!(
                "{} line {line}: {col} = {v:?} is not a non-negative number",
                path.display()
            )
        })
}

/// [`num`], refusing values above `max`: a trace line with a billion GPUs or a memory size
/// that overflows in bytes was taken as it stood (found by the `trace_csv` fuzz target).
fn num_at_most(path: &Path, line: usize, row: &Row, col: &str, max: u64) -> anyhow::Result<u64> {
    let v = num(path, line, row, col)?;
    if v > max {
        bail!(
            "{} line {line}: {col} = {v} is more than {max}",
            path.display()
        );
    }
    Ok(v)
}

/// Most GPUs of one node or pod in a trace.
const MAX_TRACE_GPUS: u64 = 1024;
/// Most memory of one node or pod in a trace: 1 PiB.
const MAX_TRACE_MIB: u64 = 1 << 30;

pub fn load_nodes(path: &Path) -> anyhow::Result<Vec<TraceNode>> {
    let rows = read(path, &["cpu_milli", "memory_mib", "gpu", "model"])?;
    rows.iter()
        .map(|(line, r)| {
            let gpus = num_at_most(path, *line, r, "gpu", MAX_TRACE_GPUS)? as u32;
            let model = r.get("model").cloned().unwrap_or_default();
            Ok(TraceNode {
                name: r
                    .get("sn")
                    .cloned()
                    .unwrap_or_else(|| format!("node-{line}")),
                capacity: Capacity {
                    cpu: MilliCpu(num(path, *line, r, "cpu_milli")?),
                    memory: Bytes(num_at_most(path, *line, r, "memory_mib", MAX_TRACE_MIB)? << 20),
                    disk: Bytes(0),
                    gpus: (0..gpus)
                        .map(|index| GpuInfo {
                            index,
                            uuid: String::new(),
                            model: model.clone(),
                            memory: Bytes(0),
                        })
                        .collect(),
                },
            })
        })
        .collect()
}

pub fn load_pods(path: &Path, speedup: f64, load: f64) -> anyhow::Result<Vec<TracePod>> {
    let rows = read(
        path,
        &[
            "cpu_milli",
            "memory_mib",
            "num_gpu",
            "gpu_milli",
            "creation_time",
            "scheduled_time",
            "deletion_time",
        ],
    )?;
    let ms = |secs: u64| (secs as f64 * 1000.0 / speedup).round() as u64;
    rows.iter()
        .map(|(line, r)| {
            let n = num_at_most(path, *line, r, "num_gpu", MAX_TRACE_GPUS)? as u32;
            let milli = num_at_most(path, *line, r, "gpu_milli", u32::MAX as u64)? as u32;
            let gpu = match (n, milli) {
                (0, _) => GpuRequest::None,
                (1, m) if m > 0 && m < WHOLE_GPU_MILLI => GpuRequest::Shared {
                    milli: m,
                    memory: Bytes(0),
                },
                (count, _) => GpuRequest::Whole { count },
            };
            let spec = r.get("gpu_spec").map(|s| s.trim()).unwrap_or("");
            let created = num(path, *line, r, "creation_time")?;
            let scheduled = num(path, *line, r, "scheduled_time")?;
            let deleted = num(path, *line, r, "deletion_time")?;
            // Run time as traced; a pod that never ended in the trace window runs to its end.
            let duration = deleted.saturating_sub(scheduled.max(created));
            Ok(TracePod {
                name: r
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| format!("pod-{line}")),
                requirements: Requirements {
                    // The ledger needs some cpu on every task.
                    cpu: MilliCpu(num(path, *line, r, "cpu_milli")?.max(1)),
                    memory: Bytes(num_at_most(path, *line, r, "memory_mib", MAX_TRACE_MIB)? << 20),
                    gpu,
                    // "A|B" alternatives are not expressible as one substring: no constraint.
                    gpu_model: (!spec.is_empty() && !spec.contains('|')).then(|| spec.to_string()),
                    ..Default::default()
                },
                arrival: ms((created as f64 / load).round() as u64),
                duration: ms(duration),
            })
        })
        .collect()
}

pub fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(a.speedup.is_finite() && a.speedup > 0.0) {
        bail!("--speedup {}: use a positive number, e.g. 100", a.speedup);
    }
    if !(a.load.is_finite() && a.load > 0.0) {
        bail!("--load {}: use a positive number, e.g. 10", a.load);
    }
    let all_nodes = load_nodes(&a.nodes)?;
    let mut nodes = all_nodes.clone();
    let sample = a.node_sample.or(a.scale.map(|_| 10));
    if let Some(n) = sample {
        if n == 0 {
            bail!("--node-sample must be at least 1");
        }
        let all = nodes.len();
        if n < all {
            nodes = (0..n).map(|i| nodes[i * all / n].clone()).collect();
        }
    }
    let pods = load_pods(&a.pods, a.speedup, a.load)?;
    if nodes.is_empty() || pods.is_empty() {
        bail!(
            "nothing to replay: {} node(s), {} pod(s)",
            nodes.len(),
            pods.len()
        );
    }
    let opts = Options {
        policy: match a.policy {
            PolicyArg::FirstFit => Policy::FirstFit,
            PolicyArg::Fitness => Policy::Fitness,
            PolicyArg::Batch => Policy::Batch,
        },
        ..Default::default()
    };
    if let Some(scale) = a.scale {
        if a.max_workers == 0 {
            bail!("--max-workers must be at least 1");
        }
        return super::bench_replay_scaling::run(
            scale,
            &all_nodes,
            &nodes,
            &pods,
            &opts,
            a.max_workers,
            a.json,
        );
    }
    if a.eta {
        return eta(&nodes, &pods, &opts, a.json);
    }
    let started = SystemClock.instant();
    let report = replay(&nodes, &pods, &opts);
    let wall = started.elapsed();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["policy"] = format!("{:?}", a.policy).into();
        v["replay_wall_secs"] = wall.as_secs_f64().into();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!(
            "{} pods on {} nodes, policy {:?}, replayed in {:.1} s ({} planner rounds)",
            report.pods,
            report.nodes,
            a.policy,
            wall.as_secs_f64(),
            report.planner_rounds
        );
        outln!(
            "placed {}, never fit any node {}, still waiting at the end {}",
            report.placed,
            report.never_fit,
            report.never_placed
        );
        for (what, u) in [
            ("over the makespan", &report.utilisation),
            (
                "first arrival to last placement",
                &report.utilisation_scheduling,
            ),
        ] {
            outln!(
                "utilisation {what}: cpu {:.1} %, memory {:.1} %, gpu {:.1} %",
                u.cpu * 100.0,
                u.memory * 100.0,
                u.gpu * 100.0
            );
        }
        outln!(
            "queue wait: p50 {:.0} s, p95 {:.0} s, p99 {:.0} s, mean {:.0} s; makespan {:.0} s",
            report.wait_secs_p50,
            report.wait_secs_p95,
            report.wait_secs_p99,
            report.wait_secs_mean,
            report.makespan_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--eta`: the ETA error with learned and with traced run times.
fn eta(
    nodes: &[TraceNode],
    pods: &[TracePod],
    opts: &Options,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use testmesh_planner::replay_eta::{Runtimes, replay_eta};
    let mut all = serde_json::Map::new();
    for (label, r) in [("learned", Runtimes::Learned), ("traced", Runtimes::Oracle)] {
        let started = SystemClock.instant();
        let rep = replay_eta(nodes, pods, opts, r);
        let wall = started.elapsed().as_secs_f64();
        if json {
            let mut v = serde_json::to_value(&rep)?;
            v["replay_wall_secs"] = wall.into();
            all.insert(label.into(), v);
        } else {
            outln!(
                "{label} run times: {} queued pods checked; start error p50 {:.0} s, p90 {:.0} s (their waits p50 {:.0} s, p90 {:.0} s); {:.0} % within a quarter of the wait or 60 s; {} trainings; {wall:.1} s",
                rep.checked,
                rep.error_secs_p50,
                rep.error_secs_p90,
                rep.wait_secs_p50,
                rep.wait_secs_p90,
                rep.within_quarter * 100.0,
                rep.trainings
            );
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ExitCode::SUCCESS)
}
