use proptest::prelude::*;
use testmesh_consensus::command::{Applied, Command, WorkerRegistration};
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::{GpuInfo, Hardware};
use testmesh_consensus::task::TaskSpec;
use testmesh_consensus::{Bytes, MilliCpu, UnixMillis};

use super::*;

fn worker(id: u64, cpu: u64, mem_gib: u64, gpus: u32) -> Command {
    Command::RegisterWorker {
        worker: WorkerRegistration {
            id: NodeId(id),
            hardware: Hardware::default(),
            capacity: Capacity {
                cpu: MilliCpu(cpu),
                memory: Bytes(mem_gib << 30),
                disk: Bytes(0),
                gpus: (0..gpus)
                    .map(|i| GpuInfo {
                        index: i,
                        uuid: String::new(),
                        model: "L4".into(),
                        memory: Bytes(24 << 30),
                    })
                    .collect(),
            },
            labels: BTreeMap::new(),
            boot_id: 1,
            version: String::new(),
        },
        at: UnixMillis(0),
    }
}

fn task(cpu: u64, mem_gib: u64, gpu: GpuRequest, priority: i32) -> TaskSpec {
    TaskSpec {
        argv: vec!["true".into()],
        requirements: Requirements {
            cpu: MilliCpu(cpu),
            memory: Bytes(mem_gib << 30),
            gpu,
            ..Default::default()
        },
        priority,
        ..Default::default()
    }
}

fn ledger(workers: Vec<Command>, tasks: Vec<TaskSpec>) -> Ledger {
    let mut l = Ledger::default();
    for w in workers {
        l.apply(1, &w).unwrap();
    }
    if !tasks.is_empty() {
        let submit = Command::Submit {
            request_id: "r".into(),
            tasks,
            at: UnixMillis(0),
        };
        l.apply(2, &submit).unwrap();
    }
    l
}

fn plan(l: &Ledger) -> Plan {
    schedule(
        &mut ClusterView::from_ledger(l, usize::MAX),
        &Options::default(),
    )
}

#[test]
fn a_retry_avoids_the_worker_it_failed_on_when_another_could_hold_it() {
    let mut spec = task(1000, 1, GpuRequest::None, 0);
    spec.retries = 2;
    let mut l = ledger(
        vec![worker(1, 2000, 4, 0), worker(2, 2000, 4, 0)],
        vec![spec],
    );
    let first = plan(&l).assignments[0].clone();
    l.apply(
        3,
        &Command::Assign {
            assignments: vec![first.clone()],
            at: UnixMillis(1),
        },
    )
    .unwrap();
    let failed =
        testmesh_consensus::task::Outcome::bare(testmesh_consensus::task::TaskState::Failed);
    l.apply(
        4,
        &Command::TaskFinished {
            task: first.task,
            attempt: 1,
            worker: first.worker,
            outcome: failed,
            at: UnixMillis(2),
        },
    )
    .unwrap();
    // The other worker takes the retry, even though the first one is as free.
    let retry = &plan(&l).assignments[0];
    assert_ne!(retry.worker, first.worker);
    // With the other one full, the retry waits for it rather than return to the failing one…
    let other = retry.worker;
    let mut busy = ClusterView::from_ledger(&l, 10);
    busy.workers
        .iter_mut()
        .filter(|w| w.id == other)
        .for_each(|w| w.allocated.cpu = MilliCpu(2000));
    assert!(
        schedule(&mut busy, &Options::default())
            .assignments
            .is_empty()
    );
    // …unless no other worker could ever hold it.
    let mut alone = ClusterView::from_ledger(&l, 10);
    alone.workers.retain(|w| w.id == first.worker);
    assert_eq!(
        schedule(&mut alone, &Options::default()).assignments[0].worker,
        first.worker
    );
}

#[test]
fn higher_priority_first_and_small_tasks_backfill() {
    let l = ledger(
        vec![worker(1, 2000, 8, 0)],
        vec![
            task(1000, 1, GpuRequest::None, 0),
            task(4000, 1, GpuRequest::None, 5),
            task(1500, 1, GpuRequest::None, 9),
        ],
    );
    let p = plan(&l);
    // Task 3 (priority 9) goes first; task 2 (4 cpu) never fits; task 1 does not fit after 3.
    assert_eq!(
        p.assignments.iter().map(|a| a.task.0).collect::<Vec<_>>(),
        vec![3]
    );
    let waiting: Vec<u64> = p.waiting.iter().map(|(t, _)| t.0).collect();
    assert_eq!(waiting, vec![2, 1]);
    assert!(p.waiting[0].1.contains("needs 4 cpu"), "{}", p.waiting[0].1);
}

#[test]
fn cpu_tasks_keep_off_gpu_hosts_and_gpu_tasks_get_them() {
    let l = ledger(
        vec![worker(1, 8000, 32, 2), worker(2, 8000, 32, 0)],
        vec![
            task(1000, 1, GpuRequest::None, 0),
            task(1000, 1, GpuRequest::Whole { count: 2 }, 0),
        ],
    );
    let p = plan(&l);
    assert_eq!(p.assignments[0].worker, NodeId(2));
    assert_eq!(p.assignments[1].worker, NodeId(1));
    assert_eq!(p.assignments[1].gpus.len(), 2);
}

#[test]
fn gpus_busy_with_someone_elses_process_are_not_placed_on() {
    let l = ledger(
        vec![worker(1, 8000, 32, 2), worker(2, 8000, 32, 1)],
        vec![
            task(1000, 1, GpuRequest::Whole { count: 1 }, 0),
            task(1000, 1, GpuRequest::Whole { count: 1 }, 0),
            task(1000, 1, GpuRequest::Whole { count: 1 }, 0),
        ],
    );
    let mut view = ClusterView::from_ledger(&l, usize::MAX);
    // GPU 0 of worker 1 and the only GPU of worker 2 run foreign processes.
    let busy = HashMap::from([(NodeId(1), vec![0]), (NodeId(2), vec![0, 7])]);
    occupy_busy_gpus(&mut view.workers, &busy);
    let p = schedule(&mut view, &Options::default());
    assert_eq!(p.assignments.len(), 1, "{p:?}");
    assert_eq!(p.assignments[0].worker, NodeId(1));
    assert_eq!(p.assignments[0].gpus[0].index, 1);
    assert_eq!(p.waiting.len(), 2);
    // Without the live view all three would have been placed.
    assert_eq!(plan(&l).assignments.len(), 3);
}

#[test]
fn shortest_predicted_first_within_bounded_groups_of_one_priority() {
    let l = ledger(
        vec![worker(1, 64000, 64, 0)],
        vec![
            task(1000, 1, GpuRequest::None, 1),
            task(1000, 1, GpuRequest::None, 0),
            task(1000, 1, GpuRequest::None, 0),
            task(1000, 1, GpuRequest::None, 0),
            task(1000, 1, GpuRequest::None, 0),
        ],
    );
    let predicted = [None, Some(50.0), None, Some(5.0), Some(1.0)];
    let queue: Vec<PendingView<'_>> = pending_of(&l)
        .map(|mut p| {
            p.predicted_secs = predicted[(p.id.0 - 1) as usize];
            p
        })
        .collect();
    let order = |group| -> Vec<u64> {
        shortest_first(queue.clone().into_iter(), group)
            .map(|p| p.id.0)
            .collect()
    };
    // Priority 1 stays first; then groups of 2 among the priority-0 tasks 2,3 | 4,5.
    assert_eq!(order(2), vec![1, 2, 3, 5, 4]);
    // One group for all of priority 0: shortest first, unpredicted last.
    assert_eq!(order(64), vec![1, 5, 4, 2, 3]);
    // The planner places in that order.
    let opts = Options {
        shortest_first_group: 64,
        ..Default::default()
    };
    let mut workers = workers_of(&l);
    let plan = place(&mut workers, queue.clone(), &opts);
    let placed: Vec<u64> = plan.assignments.iter().map(|a| a.task.0).collect();
    assert_eq!(placed, vec![1, 5, 4, 2, 3]);
}

#[test]
fn best_fit_packs_onto_the_fuller_worker() {
    let mut l = ledger(
        vec![worker(1, 4000, 8, 0), worker(2, 4000, 8, 0)],
        vec![task(3000, 0, GpuRequest::None, 0)],
    );
    let p = plan(&l);
    l.apply(
        3,
        &Command::Assign {
            assignments: p.assignments.clone(),
            at: UnixMillis(1),
        },
    )
    .unwrap();
    let first = p.assignments[0].worker;
    l.apply(
        4,
        &Command::Submit {
            request_id: "s".into(),
            tasks: vec![task(1000, 0, GpuRequest::None, 0)],
            at: UnixMillis(0),
        },
    )
    .unwrap();
    assert_eq!(
        plan(&l).assignments[0].worker,
        first,
        "the 1-cpu task fills the hole beside the 3-cpu one"
    );
}

#[test]
fn no_worker_and_never_fit_reasons() {
    let l = ledger(vec![], vec![task(1, 0, GpuRequest::None, 0)]);
    assert!(plan(&l).assignments.is_empty());
    let view = ClusterView::from_ledger(&l, 1);
    assert!(why_pending(&view, view.pending[0].requirements).contains("no active worker"));
    let l = ledger(vec![worker(1, 1000, 1, 0)], vec![]);
    let ws = l.workers().map(|w| (&w.capacity, &w.labels));
    let e = could_ever_fit(
        ws,
        &task(1, 0, GpuRequest::Whole { count: 64 }, 0).requirements,
    )
    .unwrap_err();
    assert!(e.contains("needs 64 whole GPU(s)"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Every proposal is accepted by the ledger, and scheduling again proposes nothing new for
    /// the tasks that were placed (the plan is complete for the state it saw).
    #[test]
    fn plans_are_always_accepted_and_complete(
        workers in proptest::collection::vec((500u64..8000, 1u64..64, 0u32..4), 1..6),
        tasks in proptest::collection::vec((1u64..4000, 0u64..16, 0u32..3, 0u32..1000, -2i32..3), 1..40),
    ) {
        let ws = workers.iter().enumerate().map(|(i, (c, m, g))| worker(i as u64 + 1, *c, *m, *g)).collect();
        let ts = tasks.iter().map(|(c, m, kind, milli, p)| {
            let gpu = match kind { 0 => GpuRequest::None, 1 => GpuRequest::Whole { count: 1 + milli % 2 }, _ => GpuRequest::Shared { milli: 1 + milli % 999, memory: Bytes(1 << 30) } };
            task(*c, *m, gpu, *p)
        }).collect();
        let mut l = ledger(ws, ts);
        let p = plan(&l);
        let r = l.apply(9, &Command::Assign { assignments: p.assignments.clone(), at: UnixMillis(1) }).unwrap();
        let Applied::Assigned { results } = r else { panic!() };
        prop_assert!(results.iter().all(|r| r.is_ok()), "{:?}", results);
        prop_assert!(l.check_invariants().is_ok());
        prop_assert!(plan(&l).assignments.is_empty());
        prop_assert!(p.assignments.len() + p.waiting.len() <= tasks.len());
    }
}
