use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use testmesh_consensus::resources::{GpuRequest, Requirements};
use testmesh_consensus::scaling::{InstanceState, ProviderLimits, ScalingPolicy};
use testmesh_consensus::{Bytes, MilliCpu, NodeId, UnixMillis};

use super::*;
use crate::catalogue::InstanceType;

const NOW: u64 = 10_000_000;

fn itype(provider: &str, name: &str, cpus: u64, gpus: u32, price: f64) -> InstanceType {
    InstanceType {
        provider: provider.into(),
        name: name.into(),
        cpu: MilliCpu(cpus * 1000),
        memory: Bytes(cpus * (4 << 30)),
        gpus,
        gpu_model: if gpus > 0 { "L4".into() } else { String::new() },
        gpu_memory: Bytes(24 << 30),
        price_per_hour: price,
        boot_secs: 30,
        labels: BTreeMap::new(),
    }
}

fn catalogue() -> Vec<InstanceType> {
    vec![
        itype("docker", "small", 2, 0, 0.10),
        itype("docker", "large", 8, 0, 0.35),
        itype("docker", "gpu", 4, 1, 0.80),
        itype("aws", "m", 4, 0, 0.20),
    ]
}

fn policy() -> ScalingPolicy {
    ScalingPolicy {
        enabled: true,
        providers: vec!["docker".into()],
        ..Default::default()
    }
}

fn cpu_task(cores: u64) -> Demand {
    Demand {
        requirements: Requirements {
            cpu: MilliCpu(cores * 1000),
            memory: Bytes(1 << 30),
            ..Default::default()
        },
        predicted_secs: None,
        never_fits_locally: false,
    }
}

fn gpu_task() -> Demand {
    Demand {
        requirements: Requirements {
            gpu: GpuRequest::Whole { count: 1 },
            ..cpu_task(1).requirements
        },
        ..cpu_task(1)
    }
}

fn snap<'a>(p: &'a ScalingPolicy, cat: &'a [InstanceType], demand: Vec<Demand>) -> Snapshot<'a> {
    Snapshot {
        now: UnixMillis(NOW),
        policy: p,
        catalogue: cat,
        pending_tasks: demand.len() as u32,
        unschedulable: demand,
        local_wait_secs: None,
        instances: Vec::new(),
        managed: Vec::new(),
        pool: Pool {
            cpu_reserved_milli: 0,
            cpu_capacity_milli: 4000,
        },
        last_up: None,
        last_down: None,
        unavailable: BTreeSet::new(),
    }
}

fn launches(d: &Decision) -> Vec<(String, u32)> {
    match &d.action {
        Action::Up(ls) => ls
            .iter()
            .map(|l| (format!("{}/{}", l.provider, l.instance_type), l.count))
            .collect(),
        other => panic!("expected a scale-up, got {other:?}: {}", d.reason),
    }
}

fn joined(intent: u64, worker: u64, provider: &str, price: u64) -> (InstanceView, ManagedWorker) {
    (
        InstanceView {
            intent,
            provider: provider.into(),
            instance_type: "small".into(),
            state: InstanceState::Joined,
            price_micros_per_hour: price,
            worker: Some(NodeId(worker)),
        },
        ManagedWorker {
            id: NodeId(worker),
            intent,
            provider: provider.into(),
            price_micros_per_hour: price,
            active_tasks: 0,
            idle_since: Some(UnixMillis(NOW - 600_000)),
            cpu_percent: Some(1.0),
            cpu_milli: 2000,
            fits_waiting: false,
            reliability: 1.0,
            quarantined: false,
        },
    )
}

#[test]
fn disabled_holds_and_says_how_to_enable() {
    let p = ScalingPolicy::default();
    let cat = catalogue();
    let d = decide(&snap(&p, &cat, vec![cpu_task(2)]));
    assert_eq!(d.action, Action::Hold);
    assert!(d.reason.contains("disabled"), "{}", d.reason);
}

#[test]
fn a_backlog_buys_the_cheapest_set_that_holds_it() {
    let (p, cat) = (policy(), catalogue());
    // 6 tasks of 2 cores: 6 × small ($0.60) vs 2 × large ($0.70): small wins.
    let d = decide(&snap(&p, &cat, (0..6).map(|_| cpu_task(2)).collect()));
    assert_eq!(
        launches(&d),
        vec![("docker/large".into(), 2)],
        "max_step 5 caps small at 5, which holds 5 of 6; large holds all: {}",
        d.reason
    );
    let p = ScalingPolicy {
        max_step: 10,
        ..policy()
    };
    let d = decide(&snap(&p, &cat, (0..6).map(|_| cpu_task(2)).collect()));
    assert_eq!(
        launches(&d),
        vec![("docker/small".into(), 6)],
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("6 task(s) cannot be placed"),
        "{}",
        d.reason
    );
}

#[test]
fn launches_in_flight_count_as_bought() {
    let (p, cat) = (policy(), catalogue());
    let mut s = snap(&p, &cat, vec![cpu_task(2)]);
    s.instances.push(InstanceView {
        intent: 1,
        provider: "docker".into(),
        instance_type: "small".into(),
        state: InstanceState::Launched,
        price_micros_per_hour: 100_000,
        worker: None,
    });
    let d = decide(&s);
    assert_eq!(d.action, Action::Hold);
    assert!(d.reason.contains("in flight"), "{}", d.reason);
    assert_eq!(d.in_flight, 1);
}

#[test]
fn cooldown_and_waiting_for_local_capacity_hold() {
    let (p, cat) = (policy(), catalogue());
    let mut s = snap(&p, &cat, vec![cpu_task(2)]);
    s.last_up = Some(UnixMillis(NOW - 1_000));
    let d = decide(&s);
    assert!(d.reason.contains("cooldown"), "{}", d.reason);

    s.last_up = None;
    s.local_wait_secs = Some(10.0);
    let d = decide(&s);
    assert_eq!(d.action, Action::Hold);
    assert!(
        d.reason.contains("sooner than a new instance boots"),
        "{}",
        d.reason
    );
    // ...unless the task fits no current worker at all.
    s.unschedulable[0].never_fits_locally = true;
    assert!(matches!(decide(&s).action, Action::Up(_)));
    // ...or the pool would take longer than a boot.
    s.unschedulable[0].never_fits_locally = false;
    s.local_wait_secs = Some(300.0);
    assert!(matches!(decide(&s).action, Action::Up(_)));
}

#[test]
fn caps_and_budget_limit_the_count_and_are_named_when_they_stop_it() {
    let cat = catalogue();
    let p = ScalingPolicy {
        max_workers: 3,
        max_step: 10,
        ..policy()
    };
    let d = decide(&snap(&p, &cat, (0..6).map(|_| cpu_task(2)).collect()));
    let n: u32 = launches(&d).iter().map(|x| x.1).sum();
    assert!(n <= 3, "{d:?}");
    let p = ScalingPolicy {
        budget_micros_per_hour: Some(250_000),
        max_step: 10,
        ..policy()
    };
    let d = decide(&snap(&p, &cat, (0..6).map(|_| cpu_task(2)).collect()));
    assert_eq!(
        launches(&d),
        vec![("docker/small".into(), 2)],
        "$0.25/h buys 2 × $0.10"
    );
    let p = ScalingPolicy {
        budget_micros_per_hour: Some(50_000),
        ..policy()
    };
    let d = decide(&snap(&p, &cat, vec![cpu_task(2)]));
    assert_eq!(d.action, Action::Hold);
    assert!(d.reason.contains("budget"), "{}", d.reason);
}

#[test]
fn a_failing_provider_falls_back_to_the_next() {
    let cat = catalogue();
    let p = ScalingPolicy {
        providers: vec!["docker".into(), "aws".into()],
        ..policy()
    };
    let mut s = snap(&p, &cat, vec![cpu_task(3)]);
    s.unavailable.insert("docker".into());
    let d = decide(&s);
    assert_eq!(launches(&d), vec![("aws/m".into(), 1)], "{}", d.reason);
    s.unavailable.insert("aws".into());
    let d = decide(&s);
    assert!(d.reason.contains("docker is unavailable"), "{}", d.reason);
}

#[test]
fn mixed_demand_splits_gpu_and_cpu_types_when_cheaper() {
    let (p, cat) = (policy(), catalogue());
    let mut demand: Vec<Demand> = (0..4).map(|_| cpu_task(2)).collect();
    demand.push(gpu_task());
    let d = decide(&snap(&p, &cat, demand));
    let l = launches(&d);
    assert!(l.contains(&("docker/gpu".into(), 1)), "{l:?}");
    assert!(
        l.iter().any(|(t, _)| t != "docker/gpu"),
        "{l:?} {}",
        d.reason
    );
}

#[test]
fn minimum_workers_are_launched_without_demand() {
    let cat = catalogue();
    let p = ScalingPolicy {
        min_workers: 2,
        ..policy()
    };
    let d = decide(&snap(&p, &cat, Vec::new()));
    assert_eq!(launches(&d), vec![("docker/small".into(), 2)]);
    assert!(d.reason.contains("min_workers 2"), "{}", d.reason);
}

#[test]
fn idle_workers_are_removed_most_expensive_first_within_the_rules() {
    let (p, cat) = (policy(), catalogue());
    let mut s = snap(&p, &cat, Vec::new());
    for (i, price) in [(1, 100_000), (2, 300_000)] {
        let (inst, w) = joined(i, 10 + i, "docker", price);
        s.instances.push(inst);
        s.managed.push(w);
    }
    s.pool.cpu_capacity_milli = 8000;
    let d = decide(&s);
    assert_eq!(
        d.action,
        Action::Down(vec![NodeId(12), NodeId(11)]),
        "{}",
        d.reason
    );

    // Busy, recently busy, or CPU-busy workers stay.
    s.managed[1].active_tasks = 1;
    s.managed[0].idle_since = Some(UnixMillis(NOW - 1_000));
    assert_eq!(decide(&s).action, Action::Hold);
    s.managed[0].idle_since = Some(UnixMillis(NOW - 600_000));
    s.managed[0].cpu_percent = Some(80.0);
    assert_eq!(decide(&s).action, Action::Hold);
    s.managed[0].cpu_percent = Some(1.0);
    s.managed[1].active_tasks = 0;

    // Never under the minimum, nor over the target utilisation, nor right after a change.
    let p2 = ScalingPolicy {
        min_workers: 2,
        ..policy()
    };
    s.policy = &p2;
    assert_eq!(decide(&s).action, Action::Hold);
    s.policy = &p;
    s.pool.cpu_reserved_milli = 5000;
    let d = decide(&s);
    assert_eq!(
        d.action,
        Action::Hold,
        "5 of the 6 cores left would be reserved: {}",
        d.reason
    );
    assert!(d.reason.contains("target utilisation"), "{}", d.reason);
    s.pool.cpu_reserved_milli = 0;
    s.last_up = Some(UnixMillis(NOW - 10_000));
    assert!(decide(&s).reason.contains("cooldown"));
}

#[test]
fn at_the_cap_idle_workers_that_fit_nothing_waiting_make_room() {
    let cat = catalogue();
    let p = ScalingPolicy {
        max_workers: 2,
        ..policy()
    };
    let mut s = snap(&p, &cat, vec![gpu_task()]);
    for i in 1..=2 {
        let (inst, w) = joined(i, 10 + i, "docker", 100_000);
        s.instances.push(inst);
        s.managed.push(w);
    }
    s.pool.cpu_capacity_milli = 4000;
    // Two CPU workers, idle, at max_workers; a GPU task waits: they go, a GPU type can come.
    let d = decide(&s);
    assert!(
        matches!(&d.action, Action::Down(n) if n.len() == 2),
        "{d:?}"
    );
    assert!(
        d.reason.contains("max_workers 2") && d.reason.contains("fits them"),
        "{}",
        d.reason
    );
    // Workers that could run the waiting task stay.
    for w in &mut s.managed {
        w.fits_waiting = true;
    }
    assert_eq!(decide(&s).action, Action::Hold);
}

fn arb_policy() -> impl Strategy<Value = ScalingPolicy> {
    (
        0u32..4,
        0u32..12,
        1u32..6,
        prop::option::of(0u64..2_000_000),
        0u32..6,
        any::<bool>(),
    )
        .prop_map(
            |(min, extra, step, budget, docker_max, two)| ScalingPolicy {
                enabled: true,
                min_workers: min,
                max_workers: min + extra,
                max_step: step,
                budget_micros_per_hour: budget,
                per_provider: BTreeMap::from([(
                    "docker".to_string(),
                    ProviderLimits {
                        min: 0,
                        max: docker_max,
                    },
                )]),
                providers: if two {
                    vec!["docker".into(), "aws".into()]
                } else {
                    vec!["docker".into()]
                },
                scale_up_cooldown_ms: 0,
                scale_down_cooldown_ms: 0,
                ..Default::default()
            },
        )
}

proptest! {
    #[test]
    fn caps_budget_and_busy_workers_are_never_violated(
        p in arb_policy(),
        demand in prop::collection::vec((1u64..10, any::<bool>()), 0..30),
        existing in prop::collection::vec((any::<bool>(), 0u32..3, 0u64..400_000), 0..8),
    ) {
        let cat = catalogue();
        let demand: Vec<Demand> = demand.into_iter().map(|(c, g)| if g { gpu_task() } else { cpu_task(c) }).collect();
        let mut s = snap(&p, &cat, demand);
        for (i, (docker, tasks, price)) in existing.iter().enumerate() {
            let (inst, mut w) = joined(i as u64 + 1, 100 + i as u64, if *docker { "docker" } else { "aws" }, *price);
            w.active_tasks = *tasks;
            s.instances.push(inst);
            s.managed.push(w);
        }
        s.pool.cpu_capacity_milli = 2000 * existing.len() as u64 + 4000;
        let d = decide(&s);
        let managed = s.instances.len() as u32;
        let hourly: u64 = s.instances.iter().map(|i| i.price_micros_per_hour).sum();
        match &d.action {
            Action::Up(ls) => {
                let n: u32 = ls.iter().map(|l| l.count).sum();
                let added: u64 = ls.iter().map(|l| l.count as u64 * l.price_micros_per_hour).sum();
                prop_assert!(n >= 1 && n <= p.max_step, "{d:?}");
                prop_assert!(managed + n <= p.max_workers.max(managed), "{d:?}");
                let docker_now = s.instances.iter().filter(|i| i.provider == "docker").count() as u32;
                let docker_new: u32 = ls.iter().filter(|l| l.provider == "docker").map(|l| l.count).sum();
                prop_assert!(docker_new == 0 || docker_now + docker_new <= p.per_provider["docker"].max, "{d:?}");
                if let Some(b) = p.budget_micros_per_hour {
                    prop_assert!(added == 0 || hourly + added <= b.max(hourly), "{d:?}");
                }
            }
            Action::Down(nodes) => {
                prop_assert!(nodes.len() as u32 <= p.max_step);
                prop_assert!(managed - nodes.len() as u32 >= p.min_workers.min(managed));
                for n in nodes {
                    let w = s.managed.iter().find(|w| w.id == *n).unwrap();
                    prop_assert_eq!(w.active_tasks, 0, "a busy worker was picked");
                    prop_assert!(
                        s.unschedulable.is_empty() || !w.fits_waiting,
                        "a worker that could run a waiting task was removed"
                    );
                }
            }
            Action::Hold => {}
        }
    }
}

/// Square-wave load for an hour: every 2 minutes, 20 two-core tasks arrive and run for a
/// minute. Instances boot in 30 s; idle timeout is 5 min. The autoscaler must buy for the
/// first wave and then reuse what it has, not buy and sell every wave.
#[test]
fn square_wave_load_buys_once_and_does_not_flap() {
    let cat = vec![itype("docker", "small", 2, 0, 0.10)];
    let p = ScalingPolicy {
        max_workers: 30,
        max_step: 10,
        scale_up_cooldown_ms: 5_000,
        scale_down_cooldown_ms: 60_000,
        idle_timeout_ms: 300_000,
        ..policy()
    };
    // (intent, joined at, busy until, idle since)
    let mut fleet: Vec<(u64, u64, u64, u64)> = Vec::new();
    let (mut launched, mut removed) = (0u32, 0u32);
    let (mut last_up, mut last_down) = (None, None);
    let mut waiting = 0;
    for sec in 0..3600u64 {
        let now = sec * 1000;
        if sec % 120 == 0 {
            waiting += 20;
        }
        // Joined, free workers take waiting tasks (each holds one 2-core task).
        for w in fleet.iter_mut() {
            if waiting > 0 && w.1 <= now && w.2 <= now {
                w.2 = now + 60_000;
                w.3 = now + 60_000;
                waiting -= 1;
            }
        }
        let mut s = snap(&p, &cat, (0..waiting).map(|_| cpu_task(2)).collect());
        s.now = UnixMillis(now);
        s.last_up = last_up;
        s.last_down = last_down;
        s.pool = Pool {
            cpu_reserved_milli: fleet.iter().filter(|w| w.2 > now).count() as u64 * 2000,
            cpu_capacity_milli: fleet.len() as u64 * 2000,
        };
        for (intent, joined_at, busy_until, idle_since) in &fleet {
            let joined = *joined_at <= now;
            s.instances.push(InstanceView {
                intent: *intent,
                provider: "docker".into(),
                instance_type: "small".into(),
                state: if joined {
                    InstanceState::Joined
                } else {
                    InstanceState::Launched
                },
                price_micros_per_hour: 100_000,
                worker: joined.then_some(NodeId(*intent)),
            });
            if joined {
                s.managed.push(ManagedWorker {
                    id: NodeId(*intent),
                    intent: *intent,
                    provider: "docker".into(),
                    price_micros_per_hour: 100_000,
                    active_tasks: u32::from(*busy_until > now),
                    idle_since: (*busy_until <= now).then_some(UnixMillis((*idle_since).min(now))),
                    cpu_percent: Some(0.0),
                    cpu_milli: 2000,
                    fits_waiting: true,
                    reliability: 1.0,
                    quarantined: false,
                });
            }
        }
        match decide(&s).action {
            Action::Up(ls) => {
                for l in ls {
                    for _ in 0..l.count {
                        launched += 1;
                        fleet.push((launched as u64, now + 30_000, 0, now + 30_000));
                    }
                }
                last_up = Some(UnixMillis(now));
            }
            Action::Down(nodes) => {
                removed += nodes.len() as u32;
                fleet.retain(|w| !nodes.contains(&NodeId(w.0)));
                last_down = Some(UnixMillis(now));
            }
            Action::Hold => {}
        }
    }
    assert!(
        launched >= 10,
        "it bought capacity for the waves: {launched}"
    );
    assert!(
        launched <= 20,
        "bought once for the peak, no more: {launched}"
    );
    assert_eq!(
        removed, 0,
        "idle gaps (1 min) are shorter than the idle timeout: no flapping"
    );
}
