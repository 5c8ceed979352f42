use std::collections::BTreeMap;

use super::*;
use crate::command::{Applied, Assignment, Command, WorkerRegistration};
use crate::model::{Bytes, Capacity, Hardware, MilliCpu, NodeId};
use crate::resources::Requirements;
use crate::task::{Outcome, TaskSpec, TaskState};

fn spec() -> TaskSpec {
    TaskSpec {
        argv: vec!["true".into()],
        requirements: Requirements {
            cpu: MilliCpu(1),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ledger_with_worker() -> Ledger {
    let mut l = Ledger::default();
    l.apply(
        1,
        &Command::RegisterWorker {
            worker: WorkerRegistration {
                id: NodeId(1),
                hardware: Hardware::default(),
                capacity: Capacity {
                    cpu: MilliCpu(1_000_000),
                    memory: Bytes(1 << 40),
                    disk: Bytes(0),
                    gpus: Vec::new(),
                },
                labels: BTreeMap::new(),
                boot_id: 1,
                version: "test".into(),
            },
            at: UnixMillis(0),
        },
    )
    .unwrap();
    l
}

/// Runs `id` to success at time `at`.
fn finish(l: &mut Ledger, id: TaskId, at: u64) {
    let assign = Command::Assign {
        assignments: vec![Assignment {
            task: id,
            attempt: 1,
            worker: NodeId(1),
            gpus: Vec::new(),
        }],
        at: UnixMillis(at),
    };
    l.apply(2, &assign).unwrap();
    let done = Command::TaskFinished {
        task: id,
        attempt: 1,
        worker: NodeId(1),
        outcome: Outcome::bare(TaskState::Succeeded),
        at: UnixMillis(at),
    };
    assert_eq!(
        l.apply(3, &done).unwrap(),
        Applied::Finished {
            state: TaskState::Succeeded
        }
    );
}

fn submit(l: &mut Ledger, rid: &str, n: usize) -> Vec<TaskId> {
    match l.apply(
        1,
        &Command::Submit {
            request_id: rid.into(),
            tasks: vec![spec(); n],
            at: UnixMillis(0),
        },
    ) {
        Ok(Applied::Submitted { tasks, .. }) => tasks,
        other => panic!("{other:?}"),
    }
}

fn run(l: &mut Ledger, rid: &str, n: usize) -> (u64, Vec<TaskId>) {
    match l.apply(
        1,
        &Command::SubmitRun {
            request_id: rid.into(),
            name: rid.into(),
            metadata: BTreeMap::new(),
            tasks: vec![spec(); n],
            at: UnixMillis(0),
        },
    ) {
        Ok(Applied::RunSubmitted { run, tasks, .. }) => (run, tasks),
        other => panic!("{other:?}"),
    }
}

fn archive(l: &mut Ledger, policy: &Policy, now: u64) -> Vec<TaskId> {
    let ids = select(l, policy, UnixMillis(now));
    l.apply(
        9,
        &Command::Archive {
            tasks: ids.clone(),
            at: UnixMillis(now),
        },
    )
    .unwrap();
    ids
}

#[test]
fn the_oldest_finished_tasks_leave_beyond_the_count_and_unfinished_ones_stay() {
    let mut l = ledger_with_worker();
    let ids = submit(&mut l, "a", 10);
    for (i, id) in ids.iter().take(8).enumerate() {
        finish(&mut l, *id, 100 + i as u64);
    }
    let policy = Policy {
        max_age_ms: None,
        keep: Some(3),
    };
    let gone = archive(&mut l, &policy, 1_000);
    assert_eq!(gone, ids[..5].to_vec());
    let retired = l.take_retired();
    assert_eq!(retired.tasks.len(), 5);
    assert!(
        retired
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Succeeded)
    );
    assert_eq!(l.task_count(), 5);
    // The two unfinished tasks stay whatever the policy says.
    assert!(l.task(ids[8]).is_some() && l.task(ids[9]).is_some());
    // Nothing more to do: a second selection is empty (the leader does not spin).
    assert!(select(&l, &policy, UnixMillis(1_000)).is_empty());
    // Some of the request's tasks are still live, so a resent submit is still recognised.
    assert!(l.request("a").is_some());
    l.check_invariants().unwrap();
}

#[test]
fn tasks_older_than_the_age_leave() {
    let mut l = ledger_with_worker();
    let ids = submit(&mut l, "a", 3);
    finish(&mut l, ids[0], 1_000);
    finish(&mut l, ids[1], 5_000);
    let policy = Policy {
        max_age_ms: Some(2_000),
        keep: None,
    };
    assert_eq!(archive(&mut l, &policy, 4_000), vec![ids[0]]);
    assert_eq!(archive(&mut l, &policy, 7_000), vec![ids[1]]);
    assert_eq!(l.task_count(), 1);
}

#[test]
fn a_request_id_is_forgotten_with_its_last_task() {
    let mut l = ledger_with_worker();
    let ids = submit(&mut l, "a", 2);
    for id in &ids {
        finish(&mut l, *id, 10);
    }
    archive(
        &mut l,
        &Policy {
            max_age_ms: None,
            keep: Some(0),
        },
        20,
    );
    assert!(l.request("a").is_none());
    assert_eq!(l.changed_since(0).count(), 0);
}

#[test]
fn a_run_stays_whole_until_it_finishes_and_the_newest_run_stays() {
    let mut l = ledger_with_worker();
    let (r1, t1) = run(&mut l, "r1", 3);
    let (r2, t2) = run(&mut l, "r2", 2);
    let keep_none = Policy {
        max_age_ms: None,
        keep: Some(0),
    };
    finish(&mut l, t1[0], 10);
    finish(&mut l, t1[1], 10);
    // r1 has an unfinished task: none of it goes.
    assert!(archive(&mut l, &keep_none, 20).is_empty());
    assert!(l.run(r1).is_some());
    finish(&mut l, t1[2], 30);
    for t in &t2 {
        finish(&mut l, *t, 30);
    }
    // r1 is done and goes whole; r2 is the newest run and stays (run ids count from it).
    assert_eq!(archive(&mut l, &keep_none, 40), t1);
    let retired = l.take_retired();
    assert_eq!(retired.runs.len(), 1);
    assert_eq!(retired.runs[0].id, r1);
    assert!(l.run(r1).is_none() && l.run(r2).is_some());
    assert!(select(&l, &keep_none, UnixMillis(50)).is_empty());
    // A new run still gets a new id.
    let (r3, _) = run(&mut l, "r3", 1);
    assert!(r3 > r2);
    l.check_invariants().unwrap();
}

#[test]
fn an_archive_of_unfinished_or_unknown_tasks_changes_nothing() {
    let mut l = ledger_with_worker();
    let ids = submit(&mut l, "a", 2);
    let before = l.clone();
    let r = l.apply(
        9,
        &Command::Archive {
            tasks: vec![ids[0], TaskId(999)],
            at: UnixMillis(0),
        },
    );
    assert_eq!(r, Ok(Applied::Archived { tasks: 0, runs: 0 }));
    assert_eq!(l, before);
}

#[test]
fn keeping_forever_selects_nothing() {
    let mut l = ledger_with_worker();
    let ids = submit(&mut l, "a", 2);
    finish(&mut l, ids[0], 1);
    assert!(select(&l, &Policy::FOREVER, UnixMillis(u64::MAX)).is_empty());
}
