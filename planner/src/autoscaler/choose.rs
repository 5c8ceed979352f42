//! Choosing what to launch: caps and budget, launches in flight, and the cheapest set of
//! instances that holds the unplaced demand.

use std::collections::BTreeMap;

use testmesh_consensus::resources::{self, Allocated, GpuRequest, Requirements};
use testmesh_consensus::scaling::{InstanceState, LaunchRequest, Micros};

use super::{Demand, InstanceView, Snapshot};
use crate::catalogue::InstanceType;
use crate::insights::recommend::pack;

/// Micro-dollars per hour of a catalogue price.
pub fn micros(price_per_hour: f64) -> Micros {
    (price_per_hour * 1e6).round().max(0.0) as Micros
}

pub fn count_by_provider(live: &[&InstanceView]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for i in live {
        *m.entry(i.provider.clone()).or_default() += 1;
    }
    m
}

/// What the policy still allows: counts overall and per provider, and the budget.
pub struct Caps {
    managed: u32,
    per_provider: BTreeMap<String, u32>,
    hourly: Micros,
    /// Instances already chosen in this decision (for `max_step`).
    chosen: u32,
}

impl Caps {
    pub fn new(_s: &Snapshot, live: &[&InstanceView], hourly: Micros) -> Caps {
        Caps {
            managed: live.len() as u32,
            per_provider: count_by_provider(live),
            hourly,
            chosen: 0,
        }
    }

    /// How many of `want` instances at `price` may be launched on `provider`, and what limited
    /// it when that is fewer.
    fn allowed(
        &self,
        s: &Snapshot,
        provider: &str,
        price: Micros,
        want: u32,
    ) -> (u32, Option<String>) {
        let p = s.policy;
        let mut n = want;
        let mut why = None;
        let mut cap = |limit: u32, what: String| {
            if limit < n {
                n = limit;
                why = Some(what);
            }
        };
        cap(
            p.max_step.saturating_sub(self.chosen),
            format!("max_step {}", p.max_step),
        );
        cap(
            p.max_workers.saturating_sub(self.managed),
            format!("max_workers {}", p.max_workers),
        );
        if let Some(l) = p.per_provider.get(provider) {
            let now = self.per_provider.get(provider).copied().unwrap_or(0);
            cap(
                l.max.saturating_sub(now),
                format!("{provider} max {}", l.max),
            );
        }
        if let Some(b) = p.budget_micros_per_hour
            && price > 0
        {
            let left = b.saturating_sub(self.hourly) / price;
            cap(
                left.min(u32::MAX as u64) as u32,
                format!("the budget of ${:.2}/h", b as f64 / 1e6),
            );
        }
        (n, why)
    }

    fn with(&self, provider: &str, count: u32, price: Micros) -> Caps {
        let mut per_provider = self.per_provider.clone();
        *per_provider.entry(provider.to_string()).or_default() += count;
        Caps {
            managed: self.managed + count,
            per_provider,
            hourly: self.hourly + count as u64 * price,
            chosen: self.chosen + count,
        }
    }
}

fn types_of<'a>(s: &Snapshot<'a>, provider: &str) -> Vec<&'a InstanceType> {
    s.catalogue
        .iter()
        .filter(|t| t.provider == provider)
        .collect()
}

fn launch(t: &InstanceType, count: u32) -> LaunchRequest {
    LaunchRequest {
        provider: t.provider.clone(),
        instance_type: t.name.clone(),
        count,
        price_micros_per_hour: micros(t.price_per_hour),
    }
}

/// A launch up to a minimum (overall, then per provider), on the cheapest type.
pub fn to_minimum(s: &Snapshot, caps: &Caps) -> Option<(LaunchRequest, String)> {
    let p = s.policy;
    let usable = |prov: &String| !s.unavailable.contains(prov);
    let cheapest = |prov: &str| {
        types_of(s, prov)
            .into_iter()
            .min_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour))
    };
    let mut wants: Vec<(String, u32, String)> = Vec::new();
    if caps.managed < p.min_workers
        && let Some(prov) = p
            .providers
            .iter()
            .find(|x| usable(x) && cheapest(x).is_some())
    {
        wants.push((
            prov.clone(),
            p.min_workers - caps.managed,
            format!("min_workers {}", p.min_workers),
        ));
    }
    for (prov, l) in &p.per_provider {
        let now = caps.per_provider.get(prov).copied().unwrap_or(0);
        if now < l.min && usable(prov) {
            wants.push((prov.clone(), l.min - now, format!("{prov} min {}", l.min)));
        }
    }
    for (prov, want, what) in wants {
        let Some(t) = cheapest(&prov) else {
            continue;
        };
        let (n, _) = caps.allowed(s, &prov, micros(t.price_per_hour), want);
        if n > 0 {
            return Some((
                launch(t, n),
                format!(
                    "{} managed worker(s), below {what}: launching {n} × {}",
                    caps.managed,
                    t.key()
                ),
            ));
        }
    }
    None
}

/// The unplaced demand that the instances already requested or booting will not hold.
pub fn not_covered_by_in_flight<'a>(s: &'a Snapshot, live: &[&InstanceView]) -> Vec<&'a Demand> {
    let mut slots: Vec<(&InstanceType, Allocated)> = live
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Requested | InstanceState::Launched))
        .filter_map(|i| {
            s.catalogue
                .iter()
                .find(|t| t.provider == i.provider && t.name == i.instance_type)
        })
        .map(|t| (t, Allocated::default()))
        .collect();
    let mut left = Vec::new();
    for d in &s.unschedulable {
        let mut held = false;
        for (t, alloc) in slots.iter_mut() {
            if let Ok(g) = resources::fit(&t.capacity(), alloc, &t.labels, &d.requirements) {
                alloc.add(&d.requirements, &g);
                held = true;
                break;
            }
        }
        if !held {
            left.push(d);
        }
    }
    left
}

/// The best single type of `provider` for `demand` within `caps`: (launch, tasks held).
fn best_type(
    s: &Snapshot,
    caps: &Caps,
    provider: &str,
    demand: &[&Requirements],
    limits: &mut Vec<String>,
) -> Option<(LaunchRequest, usize)> {
    let mut best: Option<(LaunchRequest, usize)> = None;
    for t in types_of(s, provider) {
        let p = pack(demand, t);
        if p.instances.is_empty() {
            continue;
        }
        let price = micros(t.price_per_hour);
        let (n, why) = caps.allowed(s, provider, price, p.instances.len() as u32);
        if let Some(w) = why {
            limits.push(w);
        }
        if n == 0 {
            continue;
        }
        let held = p
            .placed
            .iter()
            .filter(|x| x.is_some_and(|i| i < n as usize))
            .count();
        let cost = n as u64 * price;
        let better = match &best {
            None => true,
            Some((b, bh)) => {
                held > *bh || (held == *bh && cost < b.count as u64 * b.price_micros_per_hour)
            }
        };
        if better {
            best = Some((launch(t, n), held));
        }
    }
    best
}

/// The cheapest launches that hold the most of `uncovered`, on the first provider (in policy
/// order) that can hold any of it: one type, or one for the GPU tasks and one for the rest when
/// that is at least 5 % cheaper.
pub fn cheapest_launches(
    s: &Snapshot,
    caps: &Caps,
    uncovered: &[&Demand],
) -> Result<(Vec<LaunchRequest>, usize), String> {
    let all: Vec<&Requirements> = uncovered.iter().map(|d| &d.requirements).collect();
    let (gpu, cpu): (Vec<&Requirements>, Vec<&Requirements>) = all
        .iter()
        .copied()
        .partition(|r| !matches!(r.gpu, GpuRequest::None));
    let mut notes = Vec::new();
    for prov in &s.policy.providers {
        if s.unavailable.contains(prov) {
            notes.push(format!(
                "{prov} is unavailable (backing off or not configured here)"
            ));
            continue;
        }
        if types_of(s, prov).is_empty() {
            notes.push(format!("{prov} has no instance types in the catalogue"));
            continue;
        }
        let mut limits = Vec::new();
        let Some((single, held)) = best_type(s, caps, prov, &all, &mut limits) else {
            limits.sort();
            limits.dedup();
            notes.push(if limits.is_empty() {
                format!("no {prov} type can hold any of them")
            } else {
                format!("{prov} is held at {}", limits.join(", "))
            });
            continue;
        };
        let cost = |ls: &[LaunchRequest]| -> u64 {
            ls.iter()
                .map(|l| l.count as u64 * l.price_micros_per_hour)
                .sum()
        };
        if !gpu.is_empty() && !cpu.is_empty() {
            let mut ignore = Vec::new();
            if let Some((g, gh)) = best_type(s, caps, prov, &gpu, &mut ignore) {
                let after = caps.with(prov, g.count, g.price_micros_per_hour);
                if let Some((c, ch)) = best_type(s, &after, prov, &cpu, &mut ignore) {
                    let split = vec![g, c];
                    if gh + ch >= held
                        && cost(&split) * 100 < cost(std::slice::from_ref(&single)) * 95
                    {
                        return Ok((split, gh + ch));
                    }
                }
            }
        }
        return Ok((vec![single], held));
    }
    Err(format!(
        "{} task(s) need new capacity, but {}",
        uncovered.len(),
        if notes.is_empty() {
            "no provider is configured in the policy".to_string()
        } else {
            notes.join("; ")
        }
    ))
}
