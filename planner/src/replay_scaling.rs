//! Trace replay with autoscaling: a base pool plus instances a scaling policy buys from a
//! catalogue, in simulated time — the sim provider of the benchmarks. The real ledger, planner
//! and autoscaler run as in [`super::replay`]; an instance becomes a worker `boot_secs` after
//! its launch and costs its price from launch to termination. Pure: no clock, no I/O.
//!
//! Two policies are compared: the autoscaler (cost-aware bin packing of the unplaced demand,
//! caps, cooldowns, idle removal) and a plain utilisation threshold (add `step` instances of
//! one type while reserved CPU is above `up_pct` or tasks wait; remove an idle one while it is
//! below `down_pct`), like a cloud auto-scaling group's target tracking.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use testmesh_consensus::command::WorkerRegistration;
use testmesh_consensus::model::{Hardware, WorkerState};
use testmesh_consensus::resources;
use testmesh_consensus::scaling::{
    DecisionKind, DecisionRecord, INTENT_LABEL, InstanceState, LaunchRequest, ScalingApplied,
    ScalingCommand, ScalingPolicy,
};
use testmesh_consensus::{Applied, Command, NodeId, TaskId, UnixMillis};

use super::autoscaler::{self, Action, Demand, InstanceView, ManagedWorker, Pool, Snapshot};
use super::catalogue::InstanceType;
use super::replay::{Sim, TraceNode, TracePod, percentile};
use super::scheduler::{self, Options};

#[derive(Debug, Clone)]
pub enum ScalePolicy {
    Autoscaler(ScalingPolicy),
    Threshold {
        /// The one type it buys.
        instance_type: InstanceType,
        up_pct: f64,
        down_pct: f64,
        step: u32,
        max_workers: u32,
        cooldown_ms: u64,
        idle_ms: u64,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalingReport {
    pub pods: usize,
    pub placed: usize,
    pub never_fit: usize,
    pub never_placed: usize,
    pub makespan_secs: f64,
    pub wait_secs_p50: f64,
    pub wait_secs_p95: f64,
    pub wait_secs_p99: f64,
    pub wait_secs_mean: f64,
    /// Dollars paid for launched instances (the base pool is not counted).
    pub cost: f64,
    pub instance_hours: f64,
    pub launches: usize,
    pub removals: usize,
    pub peak_instances: usize,
}

/// Simulated seconds between scaling decisions.
pub const TICK_MS: u64 = 30_000;

fn register(
    sim: &mut Sim,
    id: u64,
    name: &str,
    capacity: testmesh_consensus::model::Capacity,
    intent: Option<u64>,
    at: u64,
) {
    let labels = intent
        .map(|i| BTreeMap::from([(INTENT_LABEL.to_string(), i.to_string())]))
        .unwrap_or_default();
    let _ = sim.apply(Command::RegisterWorker {
        worker: WorkerRegistration {
            id: NodeId(id),
            hardware: Hardware {
                hostname: name.to_string(),
                ..Default::default()
            },
            capacity,
            labels,
            boot_id: 1,
            version: String::new(),
        },
        at: UnixMillis(at),
    });
}

pub fn replay_scaling(
    base: &[TraceNode],
    catalogue: &[InstanceType],
    pods: &[TracePod],
    opts: &Options,
    policy: &ScalePolicy,
) -> ScalingReport {
    let mut sim = Sim::default();
    for (i, n) in base.iter().enumerate() {
        register(&mut sim, i as u64 + 1, &n.name, n.capacity.clone(), None, 0);
    }
    if let ScalePolicy::Autoscaler(p) = policy {
        let _ = sim.apply(Command::Scaling {
            cmd: ScalingCommand::SetPolicy { policy: p.clone() },
            at: UnixMillis(0),
        });
    }
    let mut report = ScalingReport {
        pods: pods.len(),
        ..Default::default()
    };
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by_key(|i| pods[*i].arrival);
    let mut next_arrival = 0;
    let mut completions: BTreeSet<(u64, TaskId)> = BTreeSet::new();
    let mut ready: BTreeSet<(u64, u64)> = BTreeSet::new(); // (time, intent)
    let mut pod_of: HashMap<TaskId, usize> = HashMap::new();
    let mut waits = Vec::new();
    let start = order.first().map_or(0, |i| pods[*i].arrival);
    let mut next_tick = start;
    let mut end = start;
    let mut idle_since: HashMap<NodeId, u64> = HashMap::new();
    let mut last_up: Option<u64> = None;
    let mut last_down: Option<u64> = None;
    let mut next_worker = base.len() as u64 + 1;
    // Threshold policy's own instances: intent → (worker, type) via the ledger as well.
    let types_fit = |req: &resources::Requirements| {
        catalogue
            .iter()
            .any(|t| resources::fit(&t.capacity(), &Default::default(), &t.labels, req).is_ok())
    };

    loop {
        let busy = sim.ledger.pending_count() > 0
            || completions.first().is_some()
            || !ready.is_empty()
            || sim
                .ledger
                .scaling()
                .instances()
                .any(|i| !i.state.is_ended());
        let t_arrival = order.get(next_arrival).map(|i| pods[*i].arrival);
        if t_arrival.is_none() && !busy {
            break;
        }
        // Nothing to scale while the cluster is empty and idle: jump to the next arrival.
        if !busy && let Some(a) = t_arrival {
            next_tick = next_tick.max(a);
        }
        let candidates = [
            t_arrival,
            completions.first().map(|(t, _)| *t),
            ready.first().map(|(t, _)| *t),
            Some(next_tick),
        ];
        let t = candidates.iter().flatten().copied().min().expect("a tick");
        let at = UnixMillis(t);

        while let Some((done, task)) = completions.first().copied().filter(|(d, _)| *d == t) {
            completions.remove(&(done, task));
            sim.finish(task, at);
            end = end.max(t);
        }
        while let Some((rt, intent)) = ready.first().copied().filter(|(r, _)| *r == t) {
            ready.remove(&(rt, intent));
            let Some(inst) = sim.ledger.scaling().instance(intent).cloned() else {
                continue;
            };
            if inst.state.is_ended() {
                continue;
            }
            let Some(ty) = catalogue
                .iter()
                .find(|c| c.provider == inst.provider && c.name == inst.instance_type)
                .or(match policy {
                    ScalePolicy::Threshold { instance_type, .. } => Some(instance_type),
                    _ => None,
                })
            else {
                continue;
            };
            register(
                &mut sim,
                next_worker,
                &ty.name,
                ty.capacity(),
                Some(intent),
                t,
            );
            next_worker += 1;
        }
        while let Some(&i) = order.get(next_arrival).filter(|i| pods[**i].arrival == t) {
            next_arrival += 1;
            let pod = &pods[i];
            let caps = sim.ledger.workers().map(|w| (&w.capacity, &w.labels));
            if scheduler::could_ever_fit(caps, &pod.requirements).is_err()
                && !types_fit(&pod.requirements)
            {
                report.never_fit += 1;
                continue;
            }
            if let Some(task) = sim.submit(i, pod, at) {
                pod_of.insert(task, i);
            }
        }
        if sim.ledger.pending_count() > 0 {
            for (task, _) in sim.place(opts, at) {
                let pod = &pods[pod_of[&task]];
                waits.push(t - pod.arrival);
                completions.insert((t + pod.duration.max(1), task));
                report.placed += 1;
            }
        }
        // Idle bookkeeping, and drained workers with nothing left go away.
        let workers: Vec<(NodeId, WorkerState, bool)> = sim
            .ledger
            .workers()
            .map(|w| (w.id, w.state, sim.ledger.active_on(w.id).next().is_some()))
            .collect();
        for (id, state, active) in &workers {
            if *active {
                idle_since.remove(id);
            } else {
                idle_since.entry(*id).or_insert(t);
            }
            if *state == WorkerState::Draining && !*active {
                let intent = sim.ledger.scaling().instance_of(*id).map(|i| i.intent);
                let _ = sim.apply(Command::WorkerLeft { worker: *id, at });
                if let Some(intent) = intent {
                    let _ = sim.apply(Command::Scaling {
                        cmd: ScalingCommand::Terminated {
                            intent,
                            reason: "scaled down".into(),
                        },
                        at,
                    });
                    report.removals += 1;
                }
            }
        }
        if t == next_tick {
            next_tick = t + TICK_MS;
            let launches = match policy {
                ScalePolicy::Autoscaler(_) => {
                    autoscale(&mut sim, t, catalogue, &idle_since, last_up, last_down)
                }
                ScalePolicy::Threshold { .. } => {
                    threshold(&mut sim, t, policy, &idle_since, last_up, last_down)
                }
            };
            match launches {
                Step::Up(ids, boot_ms) => {
                    last_up = Some(t);
                    report.launches += ids.len();
                    for id in ids {
                        ready.insert((t + boot_ms, id));
                    }
                }
                Step::Down => last_down = Some(t),
                Step::Hold => {}
            }
            let live = sim
                .ledger
                .scaling()
                .instances()
                .filter(|i| !i.state.is_ended())
                .count();
            report.peak_instances = report.peak_instances.max(live);
        }
    }

    report.never_placed = sim.ledger.pending_count();
    for i in sim.ledger.scaling().instances() {
        let until = i.ended_at.map_or(end, |e| e.0);
        let hours = until.saturating_sub(i.requested_at.0) as f64 / 3_600_000.0;
        report.instance_hours += hours;
        report.cost += hours * i.price_micros_per_hour as f64 / 1e6;
    }
    waits.sort_unstable();
    report.makespan_secs = (end - start) as f64 / 1000.0;
    report.wait_secs_p50 = percentile(&waits, 0.5);
    report.wait_secs_p95 = percentile(&waits, 0.95);
    report.wait_secs_p99 = percentile(&waits, 0.99);
    report.wait_secs_mean = if waits.is_empty() {
        0.0
    } else {
        waits.iter().sum::<u64>() as f64 / waits.len() as f64 / 1000.0
    };
    report
}

enum Step {
    Up(Vec<u64>, u64),
    Down,
    Hold,
}

/// Records a decision (creating intents for launches) and marks them launched.
fn record(
    sim: &mut Sim,
    t: u64,
    kind: DecisionKind,
    launches: Vec<LaunchRequest>,
    reason: String,
) -> Vec<u64> {
    // Decided from this very ledger: the live instances it shows (the ledger refuses a launch
    // decided from a view that has fewer than there are).
    let live = sim
        .ledger
        .scaling()
        .instances()
        .filter(|i| !i.state.is_ended())
        .count() as u32;
    let rec = DecisionRecord {
        at: UnixMillis(t),
        kind,
        launches,
        remove: Vec::new(),
        reason,
        pending_tasks: 0,
        unschedulable_tasks: 0,
        managed_workers: live,
        in_flight: 0,
        hourly_cost_micros: 0,
    };
    let ids = match sim.apply(Command::Scaling {
        cmd: ScalingCommand::Decide { record: rec },
        at: UnixMillis(t),
    }) {
        Ok(Applied::Scaling(ScalingApplied::Intents(ids))) => ids,
        _ => Vec::new(),
    };
    for id in &ids {
        let _ = sim.apply(Command::Scaling {
            cmd: ScalingCommand::Launched {
                intent: *id,
                provider_id: format!("sim-{id}"),
            },
            at: UnixMillis(t),
        });
    }
    ids
}

fn drain(sim: &mut Sim, t: u64, nodes: &[NodeId]) {
    for n in nodes {
        let _ = sim.apply(Command::SetWorkerState {
            worker: *n,
            state: WorkerState::Draining,
            at: UnixMillis(t),
        });
        if let Some(intent) = sim.ledger.scaling().instance_of(*n).map(|i| i.intent) {
            let _ = sim.apply(Command::Scaling {
                cmd: ScalingCommand::Draining { intent },
                at: UnixMillis(t),
            });
        }
    }
}

fn autoscale(
    sim: &mut Sim,
    t: u64,
    catalogue: &[InstanceType],
    idle_since: &HashMap<NodeId, u64>,
    last_up: Option<u64>,
    last_down: Option<u64>,
) -> Step {
    let l = &sim.ledger;
    let active: Vec<_> = l
        .workers()
        .filter(|w| w.state == WorkerState::Active)
        .collect();
    let unschedulable: Vec<Demand> = l
        .pending()
        .take(1000)
        .filter(|p| {
            !active.iter().any(|w| {
                resources::fit(&w.capacity, &w.allocated, &w.labels, &p.spec.requirements).is_ok()
            })
        })
        .map(|p| Demand {
            requirements: p.spec.requirements.clone(),
            predicted_secs: None,
            never_fits_locally: scheduler::could_ever_fit(
                active.iter().map(|w| (&w.capacity, &w.labels)),
                &p.spec.requirements,
            )
            .is_err(),
        })
        .collect();
    let s = l.scaling();
    let instances: Vec<InstanceView> = s
        .instances()
        .filter(|i| !i.state.is_ended())
        .map(|i| InstanceView {
            intent: i.intent,
            provider: i.provider.clone(),
            instance_type: i.instance_type.clone(),
            state: i.state,
            price_micros_per_hour: i.price_micros_per_hour,
            worker: i.worker,
        })
        .collect();
    let managed: Vec<ManagedWorker> = s
        .instances()
        .filter(|i| i.state == InstanceState::Joined)
        .filter_map(|i| {
            let w = l.worker(i.worker?)?;
            let active_tasks = l.active_on(w.id).count() as u32;
            Some(ManagedWorker {
                id: w.id,
                intent: i.intent,
                provider: i.provider.clone(),
                price_micros_per_hour: i.price_micros_per_hour,
                active_tasks,
                idle_since: (active_tasks == 0)
                    .then(|| UnixMillis(idle_since.get(&w.id).copied().unwrap_or(t))),
                cpu_percent: None,
                cpu_milli: w.capacity.cpu.0,
                fits_waiting: unschedulable.iter().any(|d| {
                    resources::fit(&w.capacity, &Default::default(), &w.labels, &d.requirements)
                        .is_ok()
                }),
                reliability: w.record.reliability(),
                quarantined: w.quarantine.is_some(),
            })
        })
        .collect();
    let snap = Snapshot {
        now: UnixMillis(t),
        policy: s.policy(),
        catalogue,
        pending_tasks: l.pending_count() as u32,
        unschedulable,
        local_wait_secs: None,
        instances,
        managed,
        pool: Pool {
            cpu_reserved_milli: active.iter().map(|w| w.allocated.cpu.0).sum(),
            cpu_capacity_milli: active.iter().map(|w| w.capacity.cpu.0).sum(),
        },
        last_up: last_up.map(UnixMillis),
        last_down: last_down.map(UnixMillis),
        unavailable: BTreeSet::new(),
    };
    let d = autoscaler::decide(&snap);
    match d.action {
        Action::Up(launches) => {
            let boot = launches
                .iter()
                .filter_map(|x| {
                    catalogue
                        .iter()
                        .find(|c| c.provider == x.provider && c.name == x.instance_type)
                })
                .map(|c| c.boot_secs as u64 * 1000)
                .max()
                .unwrap_or(0);
            let ids = record(sim, t, DecisionKind::Up, launches, d.reason);
            Step::Up(ids, boot)
        }
        Action::Down(nodes) => {
            drain(sim, t, &nodes);
            Step::Down
        }
        Action::Hold => Step::Hold,
    }
}

fn threshold(
    sim: &mut Sim,
    t: u64,
    policy: &ScalePolicy,
    idle_since: &HashMap<NodeId, u64>,
    last_up: Option<u64>,
    last_down: Option<u64>,
) -> Step {
    let ScalePolicy::Threshold {
        instance_type,
        up_pct,
        down_pct,
        step,
        max_workers,
        cooldown_ms,
        idle_ms,
    } = policy
    else {
        return Step::Hold;
    };
    let l = &sim.ledger;
    let active: Vec<_> = l
        .workers()
        .filter(|w| w.state == WorkerState::Active)
        .collect();
    let reserved: u64 = active.iter().map(|w| w.allocated.cpu.0).sum();
    let capacity: u64 = active.iter().map(|w| w.capacity.cpu.0).sum::<u64>().max(1);
    let util = 100.0 * reserved as f64 / capacity as f64;
    let live = l
        .scaling()
        .instances()
        .filter(|i| !i.state.is_ended())
        .count() as u32;
    let cooled = |last: Option<u64>| last.is_none_or(|x| t.saturating_sub(x) >= *cooldown_ms);
    if (util > *up_pct || l.pending_count() > 0) && live < *max_workers && cooled(last_up) {
        let n = (*step).min(max_workers - live);
        let launch = LaunchRequest {
            provider: instance_type.provider.clone(),
            instance_type: instance_type.name.clone(),
            count: n,
            price_micros_per_hour: autoscaler::micros(instance_type.price_per_hour),
        };
        let ids = record(
            sim,
            t,
            DecisionKind::Up,
            vec![launch],
            format!("utilisation {util:.0}%"),
        );
        return Step::Up(ids, instance_type.boot_secs as u64 * 1000);
    }
    if util < *down_pct && l.pending_count() == 0 && cooled(last_down) {
        let idle = l
            .scaling()
            .instances()
            .filter(|i| i.state == InstanceState::Joined)
            .filter_map(|i| i.worker)
            .find(|w| {
                l.active_on(*w).next().is_none()
                    && idle_since
                        .get(w)
                        .is_some_and(|s| t.saturating_sub(*s) >= *idle_ms)
            });
        if let Some(w) = idle {
            drain(sim, t, &[w]);
            return Step::Down;
        }
    }
    Step::Hold
}

#[cfg(test)]
mod tests {
    use super::*;
    use testmesh_consensus::model::Capacity;
    use testmesh_consensus::resources::Requirements;
    use testmesh_consensus::{Bytes, MilliCpu};

    fn node(cores: u64) -> TraceNode {
        TraceNode {
            name: format!("n{cores}"),
            capacity: Capacity {
                cpu: MilliCpu(cores * 1000),
                memory: Bytes(cores << 32),
                disk: Bytes(0),
                gpus: Vec::new(),
            },
        }
    }

    fn itype(name: &str, cores: u64, price: f64) -> InstanceType {
        InstanceType {
            provider: "sim".into(),
            name: name.into(),
            cpu: MilliCpu(cores * 1000),
            memory: Bytes(cores << 32),
            gpus: 0,
            gpu_model: String::new(),
            gpu_memory: Bytes(0),
            price_per_hour: price,
            boot_secs: 60,
            labels: BTreeMap::new(),
        }
    }

    /// A burst of 40 one-core pods of 10 minutes on a 2-core base pool.
    fn burst() -> Vec<TracePod> {
        (0..40)
            .map(|i| TracePod {
                name: format!("p{i}"),
                requirements: Requirements {
                    cpu: MilliCpu(1000),
                    memory: Bytes(1 << 30),
                    ..Default::default()
                },
                arrival: i * 1000,
                duration: 600_000,
            })
            .collect()
    }

    #[test]
    fn both_policies_buy_for_a_burst_and_give_everything_back() {
        let catalogue = vec![itype("small", 2, 0.10), itype("big", 16, 0.70)];
        let auto = ScalePolicy::Autoscaler(ScalingPolicy {
            enabled: true,
            providers: vec!["sim".into()],
            max_workers: 20,
            max_step: 20,
            idle_timeout_ms: 120_000,
            ..Default::default()
        });
        let thr = ScalePolicy::Threshold {
            instance_type: catalogue[0].clone(),
            up_pct: 80.0,
            down_pct: 30.0,
            step: 2,
            max_workers: 20,
            cooldown_ms: 60_000,
            idle_ms: 120_000,
        };
        let pods = burst();
        let opts = Options::default();
        let a = replay_scaling(&[node(2)], &catalogue, &pods, &opts, &auto);
        let t = replay_scaling(&[node(2)], &catalogue, &pods, &opts, &thr);
        for r in [&a, &t] {
            assert_eq!(r.placed, 40, "{r:?}");
            assert_eq!(r.never_placed, 0);
            assert!(r.launches > 0, "{r:?}");
            assert_eq!(
                r.launches, r.removals,
                "every instance was given back: {r:?}"
            );
            assert!(r.cost > 0.0);
        }
        // The autoscaler packs the burst onto big instances at once; the threshold policy
        // adds two small ones a minute, so its pods wait longer.
        assert!(a.wait_secs_mean < t.wait_secs_mean, "{a:?} vs {t:?}");
    }
}
