//! Worker-type recommendations: which instance type of the catalogue would hold the queued
//! work best. Each type gets the queue bin-packed onto as many instances as it takes
//! (first-fit decreasing by dominant share, with the same fit rules as the scheduler); types
//! are ranked by whether they hold every task, then by what it costs to run the queue (from
//! predicted run times) or, without predictions, per hour. With an empty queue the recent
//! window's average concurrent demand stands in for it.

use serde::Serialize;
use testmesh_consensus::resources::{self, Allocated, GpuRequest, Requirements, WHOLE_GPU_MILLI};

use super::{Observations, round3};
use crate::catalogue::InstanceType;

/// Most instances one type is packed onto; tasks beyond that are counted as not held.
pub const MAX_INSTANCES: usize = 1000;
/// First fit looks at the most recently opened instances only: older ones are nearly full
/// after a decreasing order, and scanning all of them made packing quadratic.
const LOOKBACK: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct Recommendations {
    /// `queued` (the pending queue, packed), `recent` (average concurrent demand of the
    /// window) or `none`.
    pub basis: String,
    pub tasks: usize,
    /// Every type, best first.
    pub options: Vec<Choice>,
    /// Cheaper than any single type: one type for the GPU tasks, another for the rest.
    pub split: Option<Vec<Choice>>,
    pub best: Option<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub instance_type: String,
    pub count: usize,
    pub hourly_cost: f64,
    /// Hours until the last task ends and dollars to get there, when run times are predicted.
    pub estimated_hours: Option<f64>,
    pub estimated_cost: Option<f64>,
    /// Tasks no instance of this type can hold.
    pub not_held: usize,
    /// Share of the bought capacity the demand fills, per resource.
    pub cpu_fill: f64,
    pub memory_fill: f64,
    pub gpu_fill: f64,
}

/// Result of packing demand onto instances of one type.
#[derive(Debug, Clone)]
pub struct Packing {
    pub instances: Vec<Allocated>,
    /// For each task, the instance it went to (`None`: it fits no instance of this type).
    pub placed: Vec<Option<usize>>,
}

/// Packs `demand` onto as few instances of `t` as first-fit decreasing (with a bounded look
/// back) finds.
pub fn pack(demand: &[&Requirements], t: &InstanceType) -> Packing {
    let cap = t.capacity();
    let share = |r: &Requirements| -> f64 {
        let cpu = r.cpu.0 as f64 / cap.cpu.0.max(1) as f64;
        let mem = r.memory.0 as f64 / cap.memory.0.max(1) as f64;
        let gpu = gpu_units(&r.gpu) / (t.gpus.max(1) as f64);
        cpu.max(mem).max(gpu)
    };
    let mut order: Vec<usize> = (0..demand.len()).collect();
    order.sort_by(|&a, &b| {
        share(demand[b])
            .total_cmp(&share(demand[a]))
            .then(a.cmp(&b))
    });
    let mut instances: Vec<Allocated> = Vec::new();
    let mut placed = vec![None; demand.len()];
    let empty = Allocated::default();
    for i in order {
        let req = demand[i];
        if resources::fit(&cap, &empty, &t.labels, req).is_err() {
            continue;
        }
        let from = instances.len().saturating_sub(LOOKBACK);
        let slot = (from..instances.len())
            .find(|&s| resources::fit(&cap, &instances[s], &t.labels, req).is_ok());
        let slot = match slot {
            Some(s) => s,
            None if instances.len() < MAX_INSTANCES => {
                instances.push(Allocated::default());
                instances.len() - 1
            }
            None => continue,
        };
        if let Ok(grants) = resources::fit(&cap, &instances[slot], &t.labels, req) {
            instances[slot].add(req, &grants);
            placed[i] = Some(slot);
        }
    }
    Packing { instances, placed }
}

fn gpu_units(g: &GpuRequest) -> f64 {
    match *g {
        GpuRequest::None => 0.0,
        GpuRequest::Whole { count } => count as f64,
        GpuRequest::Shared { milli, .. } => milli as f64 / WHOLE_GPU_MILLI as f64,
    }
}

pub fn recommend(s: &Observations, catalogue: &[InstanceType]) -> Recommendations {
    let (basis, tasks, mut options) = if !s.queued.is_empty() {
        let demand: Vec<&Requirements> = s.queued.iter().map(|d| &d.requirements).collect();
        let secs: Vec<Option<f64>> = s.queued.iter().map(|d| d.predicted_secs).collect();
        let options = catalogue
            .iter()
            .map(|t| packed(&demand, &secs, t))
            .collect();
        ("queued", demand.len(), options)
    } else if !s.history.is_empty() {
        let options = catalogue.iter().map(|t| fluid(s, t)).collect();
        ("recent", s.history.len(), options)
    } else {
        ("none", 0, Vec::new())
    };
    rank(&mut options);
    let split = if basis == "queued" {
        split(s, catalogue, options.first())
    } else {
        None
    };
    let best = options.first().filter(|c| c.not_held < tasks).cloned();
    let why = explain(basis, tasks, &options, split.as_deref());
    Recommendations {
        basis: basis.into(),
        tasks,
        best: best.map(|c| c.instance_type),
        options,
        split,
        why,
    }
}

fn packed(demand: &[&Requirements], secs: &[Option<f64>], t: &InstanceType) -> Choice {
    let p = pack(demand, t);
    let n = p.instances.len();
    // An instance runs until its longest task ends; every held task needs a prediction.
    let mut longest = vec![0.0f64; n];
    let mut predicted = true;
    for (i, slot) in p.placed.iter().enumerate() {
        if let Some(slot) = slot {
            match secs[i] {
                Some(x) => longest[*slot] = longest[*slot].max(x),
                None => predicted = false,
            }
        }
    }
    let held: Vec<&Requirements> = p
        .placed
        .iter()
        .zip(demand)
        .filter_map(|(s, r)| s.map(|_| *r))
        .collect();
    let (cpu, mem, gpu) = fill(&held, t, n as f64);
    let hours = predicted.then(|| longest.iter().copied().fold(0.0, f64::max) / 3600.0);
    let cost = predicted.then(|| longest.iter().sum::<f64>() / 3600.0 * t.price_per_hour);
    Choice {
        instance_type: t.key(),
        count: n,
        hourly_cost: round3(n as f64 * t.price_per_hour),
        estimated_hours: hours.filter(|_| n > 0).map(round3),
        estimated_cost: cost.filter(|_| n > 0).map(round3),
        not_held: p.placed.iter().filter(|x| x.is_none()).count(),
        cpu_fill: round3(cpu),
        memory_fill: round3(mem),
        gpu_fill: round3(gpu),
    }
}

/// Average concurrent demand of the window (reservation × run time / window), in instances.
fn fluid(s: &Observations, t: &InstanceType) -> Choice {
    let cap = t.capacity();
    let empty = Allocated::default();
    let window_h = s.window_ms.max(1) as f64 / 3_600_000.0;
    let (mut cpu, mut mem, mut gpu, mut not_held) = (0.0, 0.0, 0.0, 0);
    for r in &s.history {
        if resources::fit(&cap, &empty, &t.labels, &r.requirements).is_err() {
            not_held += 1;
            continue;
        }
        let h = r.duration_ms as f64 / 3_600_000.0;
        cpu += r.requirements.cpu.0 as f64 / 1000.0 * h / window_h;
        mem += r.requirements.memory.0 as f64 * h / window_h;
        gpu += gpu_units(&r.requirements.gpu) * h / window_h;
    }
    let need = [
        cpu / (t.cpu.0 as f64 / 1000.0),
        mem / t.memory.0 as f64,
        if t.gpus > 0 { gpu / t.gpus as f64 } else { 0.0 },
    ];
    let n = need.iter().copied().fold(0.0, f64::max).ceil() as usize;
    let n = n.max(usize::from(not_held < s.history.len()));
    let denom = |c: f64| {
        if n > 0 && c > 0.0 {
            c * n as f64
        } else {
            f64::INFINITY
        }
    };
    Choice {
        instance_type: t.key(),
        count: n,
        hourly_cost: round3(n as f64 * t.price_per_hour),
        estimated_hours: None,
        estimated_cost: None,
        not_held,
        cpu_fill: round3(cpu / denom(t.cpu.0 as f64 / 1000.0)),
        memory_fill: round3(mem / denom(t.memory.0 as f64)),
        gpu_fill: round3(gpu / denom(t.gpus as f64)),
    }
}

fn fill(held: &[&Requirements], t: &InstanceType, n: f64) -> (f64, f64, f64) {
    if n == 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let cpu: f64 = held.iter().map(|r| r.cpu.0 as f64).sum::<f64>() / (t.cpu.0 as f64 * n);
    let mem: f64 = held.iter().map(|r| r.memory.0 as f64).sum::<f64>() / (t.memory.0 as f64 * n);
    let gpu = if t.gpus > 0 {
        held.iter().map(|r| gpu_units(&r.gpu)).sum::<f64>() / (t.gpus as f64 * n)
    } else {
        0.0
    };
    (cpu, mem, gpu)
}

/// Holds everything first; then cheapest to run the queue (predicted) or per hour; then the
/// fuller packing.
fn rank(options: &mut [Choice]) {
    let all_predicted = options.iter().all(|c| c.estimated_cost.is_some());
    let cost = |c: &Choice| match (all_predicted, c.estimated_cost) {
        (true, Some(x)) => x,
        _ => c.hourly_cost,
    };
    options.sort_by(|a, b| {
        a.not_held
            .cmp(&b.not_held)
            .then(cost(a).total_cmp(&cost(b)))
            .then((b.cpu_fill + b.memory_fill).total_cmp(&(a.cpu_fill + a.memory_fill)))
            .then(a.instance_type.cmp(&b.instance_type))
    });
}

/// GPU tasks on the best GPU type and the rest on the best CPU type, when that is cheaper per
/// hour than the best single type holding everything.
fn split(
    s: &Observations,
    catalogue: &[InstanceType],
    single: Option<&Choice>,
) -> Option<Vec<Choice>> {
    let single = single.filter(|c| c.not_held == 0)?;
    let (gpu, cpu): (Vec<_>, Vec<_>) = s
        .queued
        .iter()
        .partition(|d| !matches!(d.requirements.gpu, GpuRequest::None));
    if gpu.is_empty() || cpu.is_empty() {
        return None;
    }
    let best_for = |group: &[&super::Demand]| -> Option<Choice> {
        let demand: Vec<&Requirements> = group.iter().map(|d| &d.requirements).collect();
        let secs: Vec<Option<f64>> = group.iter().map(|d| d.predicted_secs).collect();
        let mut o: Vec<Choice> = catalogue
            .iter()
            .map(|t| packed(&demand, &secs, t))
            .collect();
        rank(&mut o);
        o.into_iter().next().filter(|c| c.not_held == 0)
    };
    let parts = vec![best_for(&gpu)?, best_for(&cpu)?];
    let hourly: f64 = parts.iter().map(|c| c.hourly_cost).sum();
    (hourly < single.hourly_cost * 0.95).then_some(parts)
}

fn explain(basis: &str, tasks: usize, options: &[Choice], split: Option<&[Choice]>) -> String {
    let Some(best) = options.first() else {
        return "nothing queued and no history in the window: nothing to size".into();
    };
    if best.not_held == tasks {
        return format!("no instance type in the catalogue can hold any of the {tasks} tasks");
    }
    let what = match basis {
        "queued" => format!("the {tasks} queued tasks"),
        _ => format!("the average concurrent demand of the {tasks} recent attempts"),
    };
    let cost = match best.estimated_cost {
        Some(c) => format!(
            "${:.2}/h, about ${c:.2} to run them all (predicted {})",
            best.hourly_cost,
            span(best.estimated_hours.unwrap_or(0.0))
        ),
        None => format!("${:.2}/h", best.hourly_cost),
    };
    let mut why = format!(
        "{} × {} hold{} {what}{} for {cost}; filled cpu {:.0}%, memory {:.0}%{}",
        best.count,
        best.instance_type,
        if best.count == 1 { "s" } else { "" },
        if best.not_held > 0 {
            format!(" except {}", best.not_held)
        } else {
            String::new()
        },
        100.0 * best.cpu_fill,
        100.0 * best.memory_fill,
        if best.gpu_fill > 0.0 {
            format!(", GPU {:.0}%", 100.0 * best.gpu_fill)
        } else {
            String::new()
        }
    );
    if let Some(next) = options.get(1) {
        why.push_str(&format!(
            "; next best {} × {} at ${:.2}/h{}",
            next.count,
            next.instance_type,
            next.hourly_cost,
            if next.not_held > 0 {
                format!(" cannot hold {} of them", next.not_held)
            } else {
                String::new()
            }
        ));
    }
    if let Some(parts) = split {
        let hourly: f64 = parts.iter().map(|c| c.hourly_cost).sum();
        why.push_str(&format!(
            ". Cheaper still: {} × {} for the GPU tasks and {} × {} for the rest, ${hourly:.2}/h",
            parts[0].count, parts[0].instance_type, parts[1].count, parts[1].instance_type
        ));
    }
    why
}

/// Hours in the unit that reads best.
fn span(hours: f64) -> String {
    let secs = hours * 3600.0;
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{hours:.1} h")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::default_catalogue;
    use crate::insights::Demand;
    use crate::insights::test_support::*;

    fn queued(reqs: &[Requirements], secs: Option<f64>) -> Vec<Demand> {
        reqs.iter()
            .map(|r| Demand {
                name: "t".into(),
                requirements: r.clone(),
                predicted_secs: secs,
            })
            .collect()
    }

    #[test]
    fn packing_respects_capacity_and_counts_what_fits_nowhere() {
        let cat = default_catalogue();
        let large = cat.iter().find(|t| t.name == "m7i.large").unwrap();
        let reqs = [cpu_req(1500), cpu_req(1500), cpu_req(500), gpu_req(1)];
        let demand: Vec<&Requirements> = reqs.iter().collect();
        let p = pack(&demand, large);
        assert_eq!(
            p.instances.len(),
            2,
            "1.5 + 0.5 cores, then 1.5 on a second"
        );
        assert_eq!(p.placed[3], None, "no GPU on m7i.large");
        for a in &p.instances {
            assert!(a.cpu.0 <= 2000);
        }
    }

    #[test]
    fn the_cheapest_type_that_holds_everything_wins() {
        let cat = default_catalogue();
        // 16 one-core tasks: fits one c7i.4xlarge ($0.714) vs 2 m7i.2xlarge ($0.81) ...
        let reqs = vec![cpu_req(1000); 16];
        let mut s = snapshot(&[], Vec::new(), 3_600_000);
        s.queued = queued(&reqs, None);
        let r = recommend(&s, &cat);
        assert_eq!(r.basis, "queued");
        assert_eq!(r.best.as_deref(), Some("aws/c7i.4xlarge"), "{}", r.why);
        assert!(r.why.contains("hold"), "{}", r.why);
        assert!(r.options.iter().all(|c| c.not_held == 0));

        // A 4-GPU task rules out the one-GPU types.
        let reqs = vec![gpu_req(4)];
        s.queued = queued(&reqs, Some(600.0));
        let r = recommend(&s, &cat);
        assert_eq!(r.best.as_deref(), Some("aws/g5.12xlarge"), "{}", r.why);
        assert_eq!(r.options[0].estimated_hours, Some(round3(600.0 / 3600.0)));
    }

    #[test]
    fn mixed_queues_get_a_cheaper_split() {
        let cat = default_catalogue();
        let mut reqs = vec![cpu_req(4000); 8];
        reqs.push(gpu_req(1));
        let mut s = snapshot(&[], Vec::new(), 3_600_000);
        s.queued = queued(&reqs, None);
        let r = recommend(&s, &cat);
        let split = r
            .split
            .expect("GPU type for one task, CPU type for the rest");
        assert!(split[0].instance_type.contains('g'), "{split:?}");
        assert!(r.why.contains("Cheaper still"), "{}", r.why);
    }

    #[test]
    fn an_empty_queue_sizes_the_recent_demand() {
        // 10 one-hour attempts of one core in a 1 h window: 10 cores of average demand.
        let h: Vec<_> = (0..10).map(|_| record("x", 3_600_000)).collect();
        let s = snapshot(&h, Vec::new(), 3_600_000);
        let r = recommend(&s, &default_catalogue());
        assert_eq!(r.basis, "recent");
        let c16 = r
            .options
            .iter()
            .find(|c| c.instance_type == "aws/c7i.4xlarge")
            .unwrap();
        assert_eq!(c16.count, 1);
        assert_eq!(c16.cpu_fill, round3(10.0 / 16.0));
        let none = recommend(&snapshot(&[], Vec::new(), 1000), &default_catalogue());
        assert_eq!(none.basis, "none");
        assert!(none.best.is_none());
    }
}
