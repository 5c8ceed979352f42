//! The autoscaler: one pure decision — scale up (which provider, type, how many), scale down
//! (which workers), or hold — from a snapshot of demand, capacity, instances and policy, with
//! the reason in words. No I/O, no clock: the leader's control loop builds the snapshot, writes
//! the decision to the ledger and carries it out.
//!
//! Safety rules, from how real autoscalers go wrong: never above the caps or the budget; no
//! flapping (cooldowns, idle timeout, and removal only while the rest stays under the target
//! utilisation); never remove a worker with tasks (the edge drains it first); launches in
//! flight count as capacity already bought.

mod choose;
pub use choose::micros;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use testmesh_consensus::resources::Requirements;
use testmesh_consensus::scaling::{InstanceState, LaunchRequest, Micros, ScalingPolicy};
use testmesh_consensus::{NodeId, UnixMillis};

use super::catalogue::InstanceType;

/// A pending task the planner could not place.
#[derive(Debug, Clone)]
pub struct Demand {
    pub requirements: Requirements,
    /// Predicted run time, when known.
    pub predicted_secs: Option<f64>,
    /// No current worker could hold it even when idle: waiting does not help.
    pub never_fits_locally: bool,
}

/// An instance the cluster asked for and that has not ended.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub intent: u64,
    pub provider: String,
    pub instance_type: String,
    pub state: InstanceState,
    pub price_micros_per_hour: Micros,
    pub worker: Option<NodeId>,
}

/// A worker started by the autoscaler that has joined.
#[derive(Debug, Clone)]
pub struct ManagedWorker {
    pub id: NodeId,
    pub intent: u64,
    pub provider: String,
    pub price_micros_per_hour: Micros,
    pub active_tasks: u32,
    /// Since when it has had no task (None: it has one).
    pub idle_since: Option<UnixMillis>,
    /// Mean CPU use over the recent window, in percent (None: no samples).
    pub cpu_percent: Option<f64>,
    /// Its capacity, for the hysteresis check.
    pub cpu_milli: u64,
    /// Some waiting task would fit it when empty: worth keeping while tasks wait.
    pub fits_waiting: bool,
    /// Share of its attempts that succeeded (smoothed); quarantined ones go first.
    pub reliability: f64,
    pub quarantined: bool,
}

/// Reserved and total CPU of the active workers (static and managed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pool {
    pub cpu_reserved_milli: u64,
    pub cpu_capacity_milli: u64,
}

pub struct Snapshot<'a> {
    pub now: UnixMillis,
    pub policy: &'a ScalingPolicy,
    pub catalogue: &'a [InstanceType],
    pub pending_tasks: u32,
    /// Pending tasks left unplaced by the last planning round.
    pub unschedulable: Vec<Demand>,
    /// Predicted seconds until the current pool would have worked through the backlog (from
    /// running tasks' predicted remaining time and the backlog's predicted run time); None when
    /// something is not predicted.
    pub local_wait_secs: Option<f64>,
    pub instances: Vec<InstanceView>,
    pub managed: Vec<ManagedWorker>,
    pub pool: Pool,
    pub last_up: Option<UnixMillis>,
    pub last_down: Option<UnixMillis>,
    /// Providers backing off after failures, or not configured on this node.
    pub unavailable: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Up(Vec<LaunchRequest>),
    Down(Vec<NodeId>),
    Hold,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    /// What the non-ended instances cost per hour now.
    pub hourly_cost_micros: Micros,
    pub in_flight: u32,
    pub managed_workers: u32,
}

pub fn decide(s: &Snapshot) -> Decision {
    let live: Vec<&InstanceView> = s.instances.iter().filter(|i| !i.state.is_ended()).collect();
    let hourly: Micros = live.iter().map(|i| i.price_micros_per_hour).sum();
    let in_flight = live
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Requested | InstanceState::Launched))
        .count() as u32;
    let decision = |action, reason: String| Decision {
        action,
        reason,
        hourly_cost_micros: hourly,
        in_flight,
        managed_workers: live.len() as u32,
    };
    let p = s.policy;
    if !p.enabled {
        return decision(
            Action::Hold,
            "scaling is disabled (testmesh policy set --enabled true)".into(),
        );
    }
    let caps = choose::Caps::new(s, &live, hourly);

    // Below a minimum: launch up to it first, whatever the demand.
    if let Some((launch, why)) = choose::to_minimum(s, &caps) {
        return decision(Action::Up(vec![launch]), why);
    }

    let uncovered = choose::not_covered_by_in_flight(s, &live);
    if !uncovered.is_empty() {
        return match scale_up(s, &caps, &uncovered) {
            Ok((launches, why)) => decision(Action::Up(launches), why),
            // Held at a cap or the budget: idle workers that cannot run any of the waiting
            // tasks only block the slots (and the money) a fitting type needs.
            Err(Blocked::Capped(why)) => match scale_down(s, &live, true) {
                Ok((nodes, down)) => decision(Action::Down(nodes), format!("{why}; {down}")),
                Err(_) => decision(Action::Hold, why),
            },
            Err(Blocked::Wait(why)) => decision(Action::Hold, why),
        };
    }
    if !s.unschedulable.is_empty() {
        return decision(
            Action::Hold,
            format!(
                "{} launch(es) in flight will hold the {} unplaced task(s)",
                in_flight,
                s.unschedulable.len()
            ),
        );
    }
    match scale_down(s, &live, false) {
        Ok((nodes, why)) => decision(Action::Down(nodes), why),
        Err(why) => decision(Action::Hold, why),
    }
}

/// Why a scale-up did not happen.
enum Blocked {
    /// Cooldown, or waiting is as fast: nothing to do now.
    Wait(String),
    /// Caps, budget or providers allow no instance that holds the demand.
    Capped(String),
}

fn since(now: UnixMillis, t: Option<UnixMillis>) -> u64 {
    t.map_or(u64::MAX, |t| now.0.saturating_sub(t.0))
}

fn scale_up(
    s: &Snapshot,
    caps: &choose::Caps,
    uncovered: &[&Demand],
) -> Result<(Vec<LaunchRequest>, String), Blocked> {
    let p = s.policy;
    let since_up = since(s.now, s.last_up);
    if since_up < p.scale_up_cooldown_ms {
        return Err(Blocked::Wait(format!(
            "{} task(s) need new capacity; scale-up cooldown for {:.1} s more",
            uncovered.len(),
            (p.scale_up_cooldown_ms - since_up) as f64 / 1000.0
        )));
    }
    let (launches, held) =
        choose::cheapest_launches(s, caps, uncovered).map_err(Blocked::Capped)?;
    // Wait or buy: when every task could run here and the pool is predicted to get through
    // them before a new instance would even have booted, waiting is cheaper and as fast.
    let boot = launches
        .iter()
        .filter_map(|l| {
            s.catalogue
                .iter()
                .find(|t| t.provider == l.provider && t.name == l.instance_type)
        })
        .map(|t| t.boot_secs as f64)
        .fold(0.0, f64::max);
    if uncovered.iter().all(|d| !d.never_fits_locally)
        && let Some(wait) = s.local_wait_secs
        && wait <= boot
    {
        return Err(Blocked::Wait(format!(
            "{} task(s) wait, but the pool should get through them in ~{wait:.0} s, sooner than a new instance boots (~{boot:.0} s)",
            uncovered.len()
        )));
    }
    let what: Vec<String> = launches
        .iter()
        .map(|l| format!("{} × {}/{}", l.count, l.provider, l.instance_type))
        .collect();
    let cost: Micros = launches
        .iter()
        .map(|l| l.count as u64 * l.price_micros_per_hour)
        .sum();
    let wait = match s.local_wait_secs {
        Some(w) => format!("the pool would need ~{w:.0} s"),
        None if uncovered.iter().any(|d| d.never_fits_locally) => {
            "some fit no current worker".into()
        }
        None => "their run time is not predicted".into(),
    };
    Ok((
        launches,
        format!(
            "{} task(s) cannot be placed ({wait}): launching {} (+${:.2}/h) holds {held} of them",
            uncovered.len(),
            what.join(" and "),
            cost as f64 / 1e6
        ),
    ))
}

/// Idle managed workers to remove. `swap`: tasks wait that none of them can run; remove those
/// that fit none of the waiting tasks, whatever the utilisation target (they are replaced, not
/// given up).
fn scale_down(
    s: &Snapshot,
    live: &[&InstanceView],
    swap: bool,
) -> Result<(Vec<NodeId>, String), String> {
    let p = s.policy;
    if s.managed.is_empty() {
        return Err("no managed workers and nothing waiting".into());
    }
    let since_down = since(s.now, s.last_down).min(since(s.now, s.last_up));
    let idle: Vec<&ManagedWorker> = s
        .managed
        .iter()
        .filter(|w| w.active_tasks == 0)
        .filter(|w| {
            w.idle_since
                .is_some_and(|t| s.now.0.saturating_sub(t.0) >= p.idle_timeout_ms)
        })
        .filter(|w| w.cpu_percent.is_none_or(|c| c < p.idle_cpu_pct as f64))
        .filter(|w| !swap || !w.fits_waiting)
        .filter(|w| {
            live.iter()
                .any(|i| i.intent == w.intent && i.state == InstanceState::Joined)
        })
        .collect();
    if idle.is_empty() {
        return Err(format!(
            "{} managed worker(s), none idle for {} s",
            s.managed.len(),
            p.idle_timeout_ms / 1000
        ));
    }
    if since_down < p.scale_down_cooldown_ms {
        return Err(format!(
            "{} idle worker(s); scale-down cooldown for {:.1} s more",
            idle.len(),
            (p.scale_down_cooldown_ms - since_down) as f64 / 1000.0
        ));
    }
    let mut order = idle;
    // Quarantined first, then the least reliable (by tenths), then the most expensive.
    let tenths = |w: &ManagedWorker| (w.reliability * 10.0).floor() as i64;
    order.sort_by(|a, b| {
        b.quarantined
            .cmp(&a.quarantined)
            .then(tenths(a).cmp(&tenths(b)))
            .then(b.price_micros_per_hour.cmp(&a.price_micros_per_hour))
            .then(a.idle_since.cmp(&b.idle_since))
            .then(a.id.cmp(&b.id))
    });
    let mut managed = live.len() as u32;
    let mut per_provider = choose::count_by_provider(live);
    let (reserved, mut capacity) = (s.pool.cpu_reserved_milli, s.pool.cpu_capacity_milli);
    let mut remove = Vec::new();
    let mut held_back = None;
    for w in order {
        if remove.len() as u32 >= p.max_step {
            break;
        }
        let prov_min = p.per_provider.get(&w.provider).map_or(0, |l| l.min);
        let prov_now = per_provider.get(&w.provider).copied().unwrap_or(0);
        if managed <= p.min_workers || prov_now <= prov_min {
            held_back.get_or_insert("the minimum");
            continue;
        }
        let rest = capacity.saturating_sub(w.cpu_milli);
        if !swap && (rest == 0 || reserved * 100 > rest * p.target_utilisation_pct as u64) {
            held_back.get_or_insert("the target utilisation");
            continue;
        }
        capacity = rest;
        managed -= 1;
        *per_provider.entry(w.provider.clone()).or_default() -= 1;
        remove.push(w.id);
    }
    if remove.is_empty() {
        return Err(format!(
            "idle workers kept to respect {}",
            held_back.unwrap_or("the policy")
        ));
    }
    let why = if swap {
        "none of the waiting tasks fits them"
    } else {
        "nothing waiting"
    };
    Ok((
        remove.clone(),
        format!(
            "{} worker(s) idle for over {} s, {why}: draining and removing them",
            remove.len(),
            p.idle_timeout_ms / 1000
        ),
    ))
}
