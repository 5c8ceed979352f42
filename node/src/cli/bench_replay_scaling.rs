//! `testmesh bench replay --scale autoscaler|threshold`: the trace on a small base pool plus
//! what a scaling policy buys from a catalogue made of the trace's node types (see
//! `planner::replay_scaling`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use testmesh_consensus::scaling::ScalingPolicy;

use super::bench_replay::ScaleArg;
use crate::core::clock::{Clock, SystemClock};
use testmesh_planner::catalogue::InstanceType;
use testmesh_planner::replay::{TraceNode, TracePod};
use testmesh_planner::replay_scaling::{ScalePolicy, replay_scaling};
use testmesh_planner::scheduler::Options;

/// Assumed on-demand prices for the simulated instance types: per vCPU-hour, per GiB-hour,
/// and per GPU-hour by model (roughly cloud list prices of comparable GPUs).
const CPU_HOUR: f64 = 0.04;
const GIB_HOUR: f64 = 0.005;
const BOOT_SECS: u32 = 60;

fn gpu_hour(model: &str) -> f64 {
    let m = model.to_ascii_uppercase();
    if m.contains("A100") {
        3.0
    } else if m.contains("V100") {
        2.5
    } else if m.contains("P100") {
        1.5
    } else if m.contains("T4") {
        0.5
    } else {
        1.0
    }
}

/// One instance type per distinct node shape of the trace, priced by the model above; and the
/// most common shape (the one a single-type policy buys).
pub fn catalogue_of(nodes: &[TraceNode]) -> (Vec<InstanceType>, InstanceType) {
    let mut shapes: BTreeMap<String, (InstanceType, usize)> = BTreeMap::new();
    for n in nodes {
        let c = &n.capacity;
        let model = c.gpus.first().map(|g| g.model.clone()).unwrap_or_default();
        let cores = c.cpu.0 / 1000;
        let gib = c.memory.0 >> 30;
        let name = format!(
            "c{cores}-m{gib}-g{}{}",
            c.gpus.len(),
            if model.is_empty() {
                String::new()
            } else {
                format!("-{model}")
            }
        );
        let price = cores as f64 * CPU_HOUR
            + gib as f64 * GIB_HOUR
            + c.gpus.len() as f64 * gpu_hour(&model);
        let e = shapes.entry(name.clone()).or_insert_with(|| {
            (
                InstanceType {
                    provider: "sim".into(),
                    name,
                    cpu: c.cpu,
                    memory: c.memory,
                    gpus: c.gpus.len() as u32,
                    gpu_model: model.clone(),
                    gpu_memory: testmesh_consensus::Bytes(0),
                    price_per_hour: (price * 1000.0).round() / 1000.0,
                    boot_secs: BOOT_SECS,
                    labels: BTreeMap::new(),
                },
                0,
            )
        });
        e.1 += 1;
    }
    let common = shapes
        .values()
        .max_by_key(|(t, n)| (*n, t.name.clone()))
        .map(|(t, _)| t.clone())
        .expect("at least one node");
    (shapes.into_values().map(|(t, _)| t).collect(), common)
}

pub fn run(
    scale: ScaleArg,
    all_nodes: &[TraceNode],
    base: &[TraceNode],
    pods: &[TracePod],
    opts: &Options,
    max_workers: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (catalogue, common) = catalogue_of(all_nodes);
    let policy = match scale {
        ScaleArg::Autoscaler => ScalePolicy::Autoscaler(ScalingPolicy {
            enabled: true,
            providers: vec!["sim".into()],
            max_workers,
            max_step: 20,
            scale_up_cooldown_ms: 30_000,
            scale_down_cooldown_ms: 120_000,
            idle_timeout_ms: 600_000,
            ..Default::default()
        }),
        ScaleArg::Threshold => ScalePolicy::Threshold {
            instance_type: common.clone(),
            up_pct: 80.0,
            down_pct: 30.0,
            step: 2,
            max_workers,
            cooldown_ms: 60_000,
            idle_ms: 600_000,
        },
    };
    let started = SystemClock.instant();
    let r = replay_scaling(base, &catalogue, pods, opts, &policy);
    let wall = started.elapsed();
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["scale"] = format!("{scale:?}").to_lowercase().into();
        v["base_nodes"] = base.len().into();
        v["instance_types"] = catalogue.len().into();
        v["replay_wall_secs"] = wall.as_secs_f64().into();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} pods on {} base nodes + {scale:?} scaling over {} simulated instance types, replayed in {:.1} s",
        r.pods,
        base.len(),
        catalogue.len(),
        wall.as_secs_f64()
    );
    outln!(
        "cost ${:.2} for {:.1} instance-hours ({} launches, {} removals, at most {} at once)",
        r.cost,
        r.instance_hours,
        r.launches,
        r.removals,
        r.peak_instances
    );
    outln!(
        "placed {}, never fit {}, still waiting at the end {}",
        r.placed,
        r.never_fit,
        r.never_placed
    );
    outln!(
        "queue wait: p50 {:.0} s, p95 {:.0} s, p99 {:.0} s, mean {:.0} s; makespan {:.0} s",
        r.wait_secs_p50,
        r.wait_secs_p95,
        r.wait_secs_p99,
        r.wait_secs_mean,
        r.makespan_secs
    );
    Ok(ExitCode::SUCCESS)
}
