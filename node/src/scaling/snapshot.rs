//! Builds the autoscaler's snapshot from the replica, gossip statistics and the predictor.

use std::collections::{BTreeSet, HashMap};

use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::resources::{self, Allocated};
use testmesh_consensus::scaling::{DecisionKind, InstanceState};
use testmesh_consensus::{NodeId, UnixMillis};

use crate::stats::Point;
use testmesh_planner as planner;
use testmesh_planner::autoscaler::{Demand, InstanceView, ManagedWorker, Pool, Snapshot};
use testmesh_planner::catalogue::InstanceType;
use testmesh_planner::predictor::{PredictionPath, Predictor};

/// Pending tasks the autoscaler looks at (the head of the queue); bounds the work per tick.
pub const MAX_DEMAND: usize = 1_000;

pub struct Inputs<'a> {
    pub now: UnixMillis,
    pub ledger: &'a Ledger,
    /// Every node's latest gossiped point.
    pub latest: &'a HashMap<NodeId, Point>,
    pub predictor: Option<&'a Predictor>,
    pub catalogue: &'a [InstanceType],
    pub idle_since: &'a HashMap<NodeId, UnixMillis>,
    pub unavailable: BTreeSet<String>,
}

/// The snapshot; `policy` is borrowed from the ledger.
pub fn build<'a>(i: &Inputs<'a>) -> Snapshot<'a> {
    let l = i.ledger;
    let active: Vec<_> = l
        .workers()
        .filter(|w| w.state == WorkerState::Active)
        .collect();
    let mut unschedulable = Vec::new();
    for t in l.pending().take(MAX_DEMAND) {
        let req = &t.spec.requirements;
        let fits_now = active
            .iter()
            .any(|w| resources::fit(&w.capacity, &w.allocated, &w.labels, req).is_ok());
        if fits_now {
            continue;
        }
        let predicted_secs = i.predictor.and_then(|p| {
            let pr = p.predict(&planner::predictor::history::spec_features(&t.spec));
            (pr.path != PredictionPath::Requested).then_some(pr.value)
        });
        let never =
            planner::could_ever_fit(active.iter().map(|w| (&w.capacity, &w.labels)), req).is_err();
        unschedulable.push(Demand {
            requirements: req.clone(),
            predicted_secs,
            never_fits_locally: never,
        });
    }
    let pool = Pool {
        cpu_reserved_milli: active.iter().map(|w| w.allocated.cpu.0).sum(),
        cpu_capacity_milli: active.iter().map(|w| w.capacity.cpu.0).sum(),
    };
    // How long the pool would take to work through the backlog: its predicted core-seconds
    // spread over all cores (optimistic packing, so it leans towards waiting only when clear).
    let local_wait_secs = if unschedulable.iter().any(|d| d.never_fits_locally) {
        None
    } else {
        unschedulable
            .iter()
            .map(|d| d.predicted_secs.map(|s| s * d.requirements.cpu.0 as f64))
            .sum::<Option<f64>>()
            .map(|core_ms| core_ms / pool.cpu_capacity_milli.max(1) as f64)
    };
    let waiting: Vec<&testmesh_consensus::resources::Requirements> =
        unschedulable.iter().map(|d| &d.requirements).collect();
    let s = l.scaling();
    let instances: Vec<InstanceView> = s
        .instances()
        .filter(|x| !x.state.is_ended())
        .map(|x| InstanceView {
            intent: x.intent,
            provider: x.provider.clone(),
            instance_type: x.instance_type.clone(),
            state: x.state,
            price_micros_per_hour: x.price_micros_per_hour,
            worker: x.worker,
        })
        .collect();
    let managed = s
        .instances()
        .filter(|x| x.state == InstanceState::Joined)
        .filter_map(|x| {
            let w = l.worker(x.worker?)?;
            let active_tasks = l.active_on(w.id).count() as u32;
            Some(ManagedWorker {
                id: w.id,
                intent: x.intent,
                provider: x.provider.clone(),
                price_micros_per_hour: x.price_micros_per_hour,
                active_tasks,
                idle_since: if active_tasks == 0 {
                    Some(i.idle_since.get(&w.id).copied().unwrap_or(i.now))
                } else {
                    None
                },
                cpu_percent: i.latest.get(&w.id).map(|p| p.sample.cpu_percent as f64),
                cpu_milli: w.capacity.cpu.0,
                fits_waiting: waiting.iter().any(|r| {
                    resources::fit(&w.capacity, &Allocated::default(), &w.labels, r).is_ok()
                }),
                reliability: w.record.reliability(),
                quarantined: w.quarantine.is_some(),
            })
        })
        .collect();
    let last = |kind| s.decisions().rev().find(|d| d.kind == kind).map(|d| d.at);
    Snapshot {
        now: i.now,
        policy: s.policy(),
        catalogue: i.catalogue,
        pending_tasks: l.pending_count() as u32,
        unschedulable,
        local_wait_secs,
        instances,
        managed,
        pool,
        last_up: last(DecisionKind::Up),
        last_down: last(DecisionKind::Down),
        unavailable: i.unavailable.clone(),
    }
}

/// Keeps, per worker, since when it has had no task (for the idle timeout); forgets the rest.
pub fn track_idle(ledger: &Ledger, now: UnixMillis, idle_since: &mut HashMap<NodeId, UnixMillis>) {
    let mut seen = Vec::new();
    for w in ledger.workers() {
        seen.push(w.id);
        if ledger.active_on(w.id).next().is_some() || w.allocated != Allocated::default() {
            idle_since.remove(&w.id);
        } else {
            idle_since.entry(w.id).or_insert(now);
        }
    }
    idle_since.retain(|id, _| seen.contains(id));
}
