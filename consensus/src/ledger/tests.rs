use proptest::prelude::*;

use super::*;
use crate::model::{Bytes, Capacity, GpuInfo, Hardware, MilliCpu, WorkerState};

fn reg(id: u64, boot: u64, cpu: u64, gpus: u32) -> Command {
    Command::RegisterWorker {
        worker: WorkerRegistration {
            id: NodeId(id),
            hardware: Hardware::default(),
            capacity: Capacity {
                cpu: MilliCpu(cpu),
                memory: Bytes(8 << 30),
                disk: Bytes(0),
                gpus: (0..gpus)
                    .map(|i| GpuInfo {
                        index: i,
                        uuid: format!("GPU-{i}"),
                        model: "NVIDIA L4".into(),
                        memory: Bytes(24 << 30),
                    })
                    .collect(),
            },
            labels: BTreeMap::new(),
            boot_id: boot,
            version: "test".into(),
        },
        at: UnixMillis(1),
    }
}

fn spec(cpu: u64, gpu: GpuRequest, retries: u32) -> TaskSpec {
    TaskSpec {
        argv: vec!["true".into()],
        requirements: Requirements {
            cpu: MilliCpu(cpu),
            gpu,
            ..Default::default()
        },
        retries,
        ..Default::default()
    }
}

fn submit(l: &mut Ledger, rid: &str, specs: Vec<TaskSpec>) -> Vec<TaskId> {
    match l.apply(
        1,
        &Command::Submit {
            request_id: rid.into(),
            tasks: specs,
            at: UnixMillis(2),
        },
    ) {
        Ok(Applied::Submitted { tasks, .. }) => tasks,
        other => panic!("submit failed: {other:?}"),
    }
}

fn assign(
    l: &mut Ledger,
    task: TaskId,
    attempt: u32,
    worker: u64,
    gpus: Vec<GpuGrant>,
) -> Result<(), Rejected> {
    match l.apply(
        3,
        &Command::Assign {
            assignments: vec![Assignment {
                task,
                attempt,
                worker: NodeId(worker),
                gpus,
            }],
            at: UnixMillis(3),
        },
    ) {
        Ok(Applied::Assigned { mut results }) => results.remove(0),
        other => panic!("assign: {other:?}"),
    }
}

fn finish(
    l: &mut Ledger,
    task: TaskId,
    attempt: u32,
    worker: u64,
    state: TaskState,
) -> Result<Applied, Rejected> {
    l.apply(
        4,
        &Command::TaskFinished {
            task,
            attempt,
            worker: NodeId(worker),
            outcome: Outcome {
                exit_code: Some(if state == TaskState::Succeeded { 0 } else { 1 }),
                ..Outcome::bare(state)
            },
            at: UnixMillis(4),
        },
    )
}

#[test]
fn submits_are_idempotent_per_request_id() {
    let mut l = Ledger::default();
    let a = submit(&mut l, "req-1", vec![spec(100, GpuRequest::None, 0)]);
    let b = submit(&mut l, "req-1", vec![spec(100, GpuRequest::None, 0)]);
    assert_eq!(a, b);
    assert_eq!(l.task_count(), 1);
}

#[test]
fn over_commit_is_refused_whatever_the_planner_sends() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 1000, 0)).unwrap();
    let ids = submit(
        &mut l,
        "r",
        vec![
            spec(600, GpuRequest::None, 0),
            spec(600, GpuRequest::None, 0),
        ],
    );
    assign(&mut l, ids[0], 1, 1, vec![]).unwrap();
    let err = assign(&mut l, ids[1], 1, 1, vec![]).unwrap_err();
    assert!(matches!(err, Rejected::DoesNotFit { .. }), "{err}");
    l.check_invariants().unwrap();
}

#[test]
fn exclusive_gpus_are_never_shared() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 8000, 1)).unwrap();
    let ids = submit(
        &mut l,
        "r",
        vec![
            spec(100, GpuRequest::Whole { count: 1 }, 0),
            spec(
                100,
                GpuRequest::Shared {
                    milli: 500,
                    memory: Bytes(1 << 30),
                },
                0,
            ),
        ],
    );
    let whole = GpuGrant {
        index: 0,
        milli: 1000,
        memory: Bytes(24 << 30),
        exclusive: true,
    };
    assign(&mut l, ids[0], 1, 1, vec![whole]).unwrap();
    let share = GpuGrant {
        index: 0,
        milli: 500,
        memory: Bytes(1 << 30),
        exclusive: false,
    };
    assert!(assign(&mut l, ids[1], 1, 1, vec![share]).is_err());
    l.check_invariants().unwrap();
}

#[test]
fn stale_attempt_reports_are_ignored_and_retries_requeue() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 1000, 0)).unwrap();
    let id = submit(&mut l, "r", vec![spec(100, GpuRequest::None, 1)])[0];
    assign(&mut l, id, 1, 1, vec![]).unwrap();
    assert_eq!(
        finish(&mut l, id, 1, 1, TaskState::Failed).unwrap(),
        Applied::Finished {
            state: TaskState::Pending
        }
    );
    assign(&mut l, id, 2, 1, vec![]).unwrap();
    // A late report about attempt 1 changes nothing.
    assert!(matches!(
        finish(&mut l, id, 1, 1, TaskState::Succeeded),
        Err(Rejected::StaleAttempt { .. })
    ));
    assert_eq!(l.task(id).unwrap().state, TaskState::Assigned);
    finish(&mut l, id, 2, 1, TaskState::Failed).unwrap();
    assert_eq!(l.task(id).unwrap().state, TaskState::Failed);
    assert!(l.worker(NodeId(1)).unwrap().allocated.is_empty());
    l.check_invariants().unwrap();
}

fn started(l: &mut Ledger, task: TaskId, attempt: u32, worker: u64) {
    l.apply(
        3,
        &Command::TaskStarted {
            task,
            attempt,
            worker: NodeId(worker),
            pid: 1,
            at: UnixMillis(3),
        },
    )
    .unwrap();
}

/// Worker 1 (2 cpus) running two 1-cpu tasks: the first with one retry, the second with none.
fn two_running_tasks() -> (Ledger, Vec<TaskId>) {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 2000, 0)).unwrap();
    let ids = submit(
        &mut l,
        "r",
        vec![
            spec(1000, GpuRequest::None, 1),
            spec(1000, GpuRequest::None, 0),
        ],
    );
    assign(&mut l, ids[0], 1, 1, vec![]).unwrap();
    assign(&mut l, ids[1], 1, 1, vec![]).unwrap();
    started(&mut l, ids[0], 1, 1);
    started(&mut l, ids[1], 1, 1);
    (l, ids)
}

#[test]
fn a_restarted_worker_loses_its_attempts_and_releases_everything() {
    let (mut l, ids) = two_running_tasks();
    let r = l.apply(5, &reg(1, 2, 2000, 0)).unwrap();
    assert_eq!(r, Applied::WorkerRegistered { lost: ids.clone() });
    // Losing the worker is not the tasks' failure: both go back to the queue, retries or not.
    assert_eq!(l.task(ids[0]).unwrap().state, TaskState::Pending);
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Pending);
    assert!(l.worker(NodeId(1)).unwrap().allocated.is_empty());
    l.check_invariants().unwrap();
}

#[test]
fn cancel_pending_is_final_and_running_waits_for_the_worker() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 2000, 0)).unwrap();
    let ids = submit(
        &mut l,
        "r",
        vec![
            spec(100, GpuRequest::None, 3),
            spec(100, GpuRequest::None, 3),
        ],
    );
    l.apply(
        2,
        &Command::Cancel {
            task: ids[0],
            at: UnixMillis(5),
        },
    )
    .unwrap();
    assert_eq!(l.task(ids[0]).unwrap().state, TaskState::Cancelled);
    assign(&mut l, ids[1], 1, 1, vec![]).unwrap();
    l.apply(
        2,
        &Command::Cancel {
            task: ids[1],
            at: UnixMillis(5),
        },
    )
    .unwrap();
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Assigned);
    // Killed by the cancel: reported as failed, but no retry happens.
    finish(&mut l, ids[1], 1, 1, TaskState::Failed).unwrap();
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Cancelled);
    l.check_invariants().unwrap();
}

#[test]
fn empty_commands_are_rejected_and_change_nothing() {
    let mut l = Ledger::default();
    let before = l.clone();
    let r = l.apply(
        1,
        &Command::Submit {
            request_id: "x".into(),
            tasks: vec![spec(1, GpuRequest::None, 0), TaskSpec::default()],
            at: UnixMillis(0),
        },
    );
    assert!(matches!(r, Err(Rejected::InvalidSpec(_))));
    assert_eq!(l, before);
}

#[test]
fn a_lost_worker_releases_everything_and_comes_back_when_it_registers() {
    let (mut l, ids) = two_running_tasks();
    let r = l
        .apply(
            5,
            &Command::WorkerLost {
                worker: NodeId(1),
                at: UnixMillis(9),
            },
        )
        .unwrap();
    assert_eq!(r, Applied::WorkerState { lost: ids.clone() });
    assert_eq!(l.task(ids[0]).unwrap().state, TaskState::Pending);
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Pending);
    assert_eq!(l.worker(NodeId(1)).unwrap().state, WorkerState::Lost);
    // A late report from the lost attempt is ignored.
    assert!(finish(&mut l, ids[0], 1, 1, TaskState::Succeeded).is_err());
    // Nothing is placed on a lost worker; registering again (same boot) brings it back.
    assert!(matches!(
        assign(&mut l, ids[0], 2, 1, vec![]),
        Err(Rejected::WorkerDraining { .. })
    ));
    l.apply(6, &reg(1, 1, 2000, 0)).unwrap();
    assert_eq!(l.worker(NodeId(1)).unwrap().state, WorkerState::Active);
    assign(&mut l, ids[0], 2, 1, vec![]).unwrap();
    l.check_invariants().unwrap();
}

#[test]
fn a_leaving_worker_hands_back_its_attempts_without_using_a_retry() {
    let (mut l, ids) = two_running_tasks();
    let r = l
        .apply(
            5,
            &Command::WorkerLeft {
                worker: NodeId(1),
                at: UnixMillis(9),
            },
        )
        .unwrap();
    assert_eq!(r, Applied::WorkerState { lost: ids.clone() });
    // Both are queued again, even the one with no retries, and neither used one up.
    for id in &ids {
        let t = l.task(*id).unwrap();
        assert_eq!(t.state, TaskState::Pending);
        assert_eq!(t.handed_back, 1);
    }
    assert_eq!(l.worker(NodeId(1)).unwrap().state, WorkerState::Left);
    assert!(l.worker(NodeId(1)).unwrap().allocated.is_empty());
    // Nothing is placed on a worker that left, and an operator cannot undrain it; it is back
    // when it registers.
    assert!(assign(&mut l, ids[0], 2, 1, vec![]).is_err());
    let undrain = Command::SetWorkerState {
        worker: NodeId(1),
        state: WorkerState::Active,
        at: UnixMillis(10),
    };
    assert!(matches!(
        l.apply(6, &undrain),
        Err(Rejected::WorkerAway { .. })
    ));
    l.apply(6, &reg(1, 2, 2000, 0)).unwrap();
    assert_eq!(l.worker(NodeId(1)).unwrap().state, WorkerState::Active);
    // The task without retries still gets its one real try: failing it now ends it.
    assign(&mut l, ids[1], 2, 1, vec![]).unwrap();
    finish(&mut l, ids[1], 2, 1, TaskState::Failed).unwrap();
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Failed);
    l.check_invariants().unwrap();
}

#[test]
fn attempts_that_ran_to_an_end_go_into_the_history() {
    let (mut l, ids) = two_running_tasks();
    finish(&mut l, ids[0], 1, 1, TaskState::Succeeded).unwrap();
    // Lost attempts say nothing about the task's run time: no record.
    l.apply(
        5,
        &Command::WorkerLost {
            worker: NodeId(1),
            at: UnixMillis(9),
        },
    )
    .unwrap();
    let h: Vec<_> = l.history().collect();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].task, h[0].duration_ms), (ids[0], 1));
    assert_eq!(h[0].state, TaskState::Succeeded);
    assert_eq!(l.history_total(), 1);
}

// ---- property test: random command sequences never break an invariant ----

fn arb_gpu() -> impl Strategy<Value = GpuRequest> {
    prop_oneof![
        3 => Just(GpuRequest::None),
        1 => (1u32..3).prop_map(|count| GpuRequest::Whole { count }),
        1 => (1u32..1000, 0u64..30).prop_map(|(milli, g)| GpuRequest::Shared { milli, memory: Bytes(g << 30) }),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    let task = (1u64..12).prop_map(TaskId);
    let worker = 1u64..4;
    prop_oneof![
        1 => (worker.clone(), 0u64..3, 0u64..5000, 0u32..3).prop_map(|(w, b, c, g)| reg(w, b, c, g)),
        3 => (proptest::collection::vec((0u64..3000, arb_gpu(), 0u32..2), 0..4), 0u8..4).prop_map(|(v, rid)| Command::Submit {
            request_id: format!("r{rid}-{}", v.len()),
            tasks: v.into_iter().map(|(c, g, r)| spec(c, g, r)).collect(),
            at: UnixMillis(0),
        }),
        5 => (task.clone(), 0u32..4, worker.clone(), proptest::collection::vec((0u32..3, 1u32..1001, 0u64..30, any::<bool>()), 0..3)).prop_map(|(task, attempt, w, g)| Command::Assign {
            assignments: vec![Assignment {
                task, attempt, worker: NodeId(w),
                gpus: g.into_iter().map(|(index, milli, mem, exclusive)| GpuGrant { index, milli, memory: Bytes(mem << 30), exclusive }).collect(),
            }],
            at: UnixMillis(0),
        }),
        3 => (task.clone(), 0u32..4, worker.clone(), prop_oneof![Just(TaskState::Succeeded), Just(TaskState::Failed), Just(TaskState::Lost), Just(TaskState::Running)]).prop_map(|(task, attempt, w, state)| Command::TaskFinished {
            task, attempt, worker: NodeId(w),
            outcome: Outcome::bare(state),
            at: UnixMillis(0),
        }),
        2 => (task.clone(), 0u32..4, worker).prop_map(|(task, attempt, w)| Command::TaskStarted { task, attempt, worker: NodeId(w), pid: 1, at: UnixMillis(0) }),
        1 => task.clone().prop_map(|task| Command::Cancel { task, at: UnixMillis(0) }),
        1 => proptest::collection::vec(task.clone(), 0..6).prop_map(|tasks| Command::Archive { tasks, at: UnixMillis(0) }),
        1 => proptest::collection::vec((task, 0u32..4), 0..4).prop_map(|attempts| Command::GiveBack { attempts, at: UnixMillis(0) }),
        1 => (1u64..4).prop_map(|w| Command::WorkerLost { worker: NodeId(w), at: UnixMillis(0) }),
        1 => (1u64..4).prop_map(|w| Command::WorkerLeft { worker: NodeId(w), at: UnixMillis(0) }),
        1 => (1u64..4, any::<bool>()).prop_map(|(w, d)| Command::SetWorkerState {
            worker: NodeId(w),
            state: if d { WorkerState::Draining } else { WorkerState::Active },
            at: UnixMillis(0),
        }),
    ]
}

/// Assignments that the planner would really propose, so that the sequences reach deep states.
fn plausible_assign(l: &Ledger) -> Option<Command> {
    let t = l.pending().next()?;
    let w = l
        .workers()
        .filter(|w| w.state == WorkerState::Active)
        .find_map(|w| {
            resources::fit(&w.capacity, &w.allocated, &w.labels, &t.spec.requirements)
                .ok()
                .map(|g| (w.id, g))
        })?;
    Some(Command::Assign {
        assignments: vec![Assignment {
            task: t.id,
            attempt: t.attempt + 1,
            worker: w.0,
            gpus: w.1,
        }],
        at: UnixMillis(0),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_commands_never_break_an_invariant(cmds in proptest::collection::vec(arb_command(), 1..60)) {
        let mut l = Ledger::default();
        for (i, c) in cmds.iter().enumerate() {
            let before = l.clone();
            let r = l.apply(i as u64, c);
            if r.is_err() {
                prop_assert_eq!(&l, &before, "a rejected command changed the ledger: {:?}", c);
            }
            prop_assert!(l.check_invariants().is_ok(), "after {:?}: {:?}", c, l.check_invariants());
            if let Some(a) = plausible_assign(&l) {
                let r = l.apply(i as u64, &a);
                prop_assert!(matches!(r, Ok(Applied::Assigned { ref results }) if results[0].is_ok()), "fit() and verify() disagree: {:?}", r);
                prop_assert!(l.check_invariants().is_ok());
            }
        }
    }

    #[test]
    fn apply_is_deterministic(cmds in proptest::collection::vec(arb_command(), 1..40)) {
        let mut a = Ledger::default();
        let mut b = Ledger::default();
        for (i, c) in cmds.iter().enumerate() {
            prop_assert_eq!(a.apply(i as u64, c), b.apply(i as u64, c));
        }
        prop_assert_eq!(a, b);
    }
}

/// Regression: a task placed on a worker that had just died ended `lost` with the default of
/// no retries, although it never ran. Losing a worker does not use up a retry: always when the
/// attempt had not started, and FREE_LOSSES times when it was running.
#[test]
fn attempts_lost_with_their_worker_do_not_use_up_retries() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 2000, 0)).unwrap();
    let id = submit(&mut l, "r", vec![spec(1000, GpuRequest::None, 0)])[0];
    let lose = |l: &mut Ledger, index| {
        l.apply(
            index,
            &Command::WorkerLost {
                worker: NodeId(1),
                at: UnixMillis(9),
            },
        )
        .unwrap();
        l.apply(index + 1, &reg(1, 1, 2000, 0)).unwrap();
    };
    // Never started, many times: always back to the queue, and the message says so.
    for attempt in 1..=5 {
        assign(&mut l, id, attempt, 1, vec![]).unwrap();
        lose(&mut l, 10 + u64::from(attempt) * 2);
        let t = l.task(id).unwrap();
        assert_eq!(t.state, TaskState::Pending, "attempt {attempt}");
        let why = t.attempts.last().unwrap().outcome.as_ref().unwrap();
        assert!(
            why.message
                .as_deref()
                .unwrap()
                .contains("before it started"),
            "{why:?}"
        );
    }
    // Running when lost: FREE_LOSSES times free, then the task's own retries (none) decide.
    let mut l2 = Ledger::default();
    l2.apply(1, &reg(1, 1, 2000, 0)).unwrap();
    let id = submit(&mut l2, "r", vec![spec(1000, GpuRequest::None, 0)])[0];
    for attempt in 1..=FREE_LOSSES + 1 {
        assign(&mut l2, id, attempt, 1, vec![]).unwrap();
        started(&mut l2, id, attempt, 1);
        lose(&mut l2, 10 + u64::from(attempt) * 2);
        let want = if attempt <= FREE_LOSSES {
            TaskState::Pending
        } else {
            TaskState::Lost
        };
        assert_eq!(l2.task(id).unwrap().state, want, "attempt {attempt}");
    }
    l.check_invariants().unwrap();
    l2.check_invariants().unwrap();
}

/// Regression: a worker that answers Raft but whose agent is wedged kept its reservations for
/// ever. An attempt not started in time is given back without using up a retry; one that
/// started (or a stale attempt number) is left alone.
#[test]
fn unstarted_attempts_are_given_back_and_started_ones_are_not() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 2000, 0)).unwrap();
    let ids = submit(
        &mut l,
        "r",
        vec![
            spec(1000, GpuRequest::None, 0),
            spec(1000, GpuRequest::None, 0),
        ],
    );
    assign(&mut l, ids[0], 1, 1, vec![]).unwrap();
    assign(&mut l, ids[1], 1, 1, vec![]).unwrap();
    started(&mut l, ids[1], 1, 1);
    let r = l
        .apply(
            9,
            &Command::GiveBack {
                attempts: vec![(ids[0], 1), (ids[1], 1), (ids[0], 7)],
                at: UnixMillis(9),
            },
        )
        .unwrap();
    assert_eq!(r, Applied::WorkerState { lost: vec![ids[0]] });
    let t = l.task(ids[0]).unwrap();
    assert_eq!(t.state, TaskState::Pending, "no retries, yet queued again");
    assert_eq!(t.handed_back, 1);
    assert_eq!(l.task(ids[1]).unwrap().state, TaskState::Running);
    assert_eq!(
        l.worker(NodeId(1)).unwrap().allocated.cpu,
        MilliCpu(1000),
        "only the started one still holds its cpu"
    );
    // The late start of the given-back attempt is refused as stale.
    assert!(
        l.apply(
            10,
            &Command::TaskStarted {
                task: ids[0],
                attempt: 1,
                worker: NodeId(1),
                pid: 9,
                at: UnixMillis(10),
            },
        )
        .is_err()
    );
    l.check_invariants().unwrap();
}

#[test]
fn a_full_history_never_holds_room_for_more_than_it_keeps_and_records_share_their_strings() {
    let mut l = Ledger::default();
    l.apply(1, &reg(1, 1, 1000, 0)).unwrap();
    // As a decoded snapshot leaves it: exactly full, no spare room.
    let ids = submit(&mut l, "r", vec![spec(1000, GpuRequest::None, 0); 2]);
    assign(&mut l, ids[0], 1, 1, vec![]).unwrap();
    started(&mut l, ids[0], 1, 1);
    finish(&mut l, ids[0], 1, 1, TaskState::Succeeded).unwrap();
    let record = l.history.back().unwrap().clone();
    l.history = std::iter::repeat_n(record, HISTORY_LIMIT).collect();
    l.history.shrink_to_fit();
    assign(&mut l, ids[1], 1, 1, vec![]).unwrap();
    started(&mut l, ids[1], 1, 1);
    finish(&mut l, ids[1], 1, 1, TaskState::Succeeded).unwrap();
    assert_eq!(l.history.len(), HISTORY_LIMIT);
    assert!(
        l.history.capacity() <= HISTORY_LIMIT,
        "{}",
        l.history.capacity()
    );
    let (a, b) = (&l.history[HISTORY_LIMIT - 2], &l.history[HISTORY_LIMIT - 1]);
    assert!(Arc::ptr_eq(&a.program, &b.program) && Arc::ptr_eq(&a.cpu_model, &b.cpu_model));
    // Attempts on one worker share their provenance.
    let p = |id| l.task(id).unwrap().attempts[0].provenance.clone();
    assert!(Arc::ptr_eq(&p(ids[0]), &p(ids[1])));
}
