//! Heap held by the live ledger per task, counted by a global allocator: the figures behind a
//! node's memory at steady state (docs/benchmarks.md, "Where the memory goes"), kept from
//! growing back. Bytes asked of the allocator, not RSS: deterministic, so a bound can be tested.

// A counting allocator is the one way to see the heap from inside; it only forwards to the
// system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use testmesh_consensus::model::{Capacity, Hardware};
use testmesh_consensus::resources::Requirements;
use testmesh_consensus::task::{Outcome, TaskSpec, TaskState};
use testmesh_consensus::{
    Applied, Assignment, Bytes, Command, Ledger, MilliCpu, NodeId, TaskId, UnixMillis,
};

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);
/// Each allocation also costs the allocator's header and rounding (glibc: 8 bytes and a
/// multiple of 16, at least 32): counted too, since that is what a node pays.
fn cost(size: usize) -> isize {
    ((size + 8).max(32).div_ceil(16) * 16) as isize
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(cost(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(cost(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(cost(new_size) - cost(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

const WORKER: NodeId = NodeId(1);

fn ledger_with_a_worker() -> Ledger {
    let mut l = Ledger::default();
    l.apply(
        1,
        &Command::RegisterWorker {
            worker: testmesh_consensus::command::WorkerRegistration {
                id: WORKER,
                hardware: Hardware {
                    hostname: "gpu-runner-17.lab.example.org".into(),
                    cpu_model: "AMD EPYC 7R13 Processor".into(),
                    cores: 64,
                    gpu_driver: String::new(),
                    cuda_version: String::new(),
                    name: "gpu-runner-17".into(),
                },
                capacity: Capacity {
                    cpu: MilliCpu(64_000),
                    memory: Bytes(256 << 30),
                    disk: Bytes(0),
                    gpus: Vec::new(),
                },
                labels: BTreeMap::new(),
                boot_id: 1,
                version: "0.1.0".into(),
            },
            at: UnixMillis(1),
        },
    )
    .expect("registered");
    l
}

/// A `testmesh submit -- true` as the API makes it.
fn true_task() -> TaskSpec {
    TaskSpec {
        name: "true".into(),
        argv: vec!["true".into()],
        requirements: Requirements {
            cpu: MilliCpu(1000),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Submits `n` tasks in batches of 1,000 (as `testmesh bench` does), returns their ids.
fn submit(l: &mut Ledger, n: usize, index: &mut u64) -> Vec<TaskId> {
    let mut ids = Vec::with_capacity(n);
    for b in 0..n.div_ceil(1000) {
        *index += 1;
        let tasks = vec![true_task(); 1000.min(n - b * 1000)];
        match l.apply(
            *index,
            &Command::Submit {
                request_id: format!("bench-{index}-0123456789abcdef"),
                tasks,
                at: UnixMillis(*index),
            },
        ) {
            Ok(Applied::Submitted { tasks, .. }) => ids.extend(tasks),
            other => panic!("submit: {other:?}"),
        }
    }
    ids
}

/// Runs each task through assign, start and finish (one at a time: 64 cores hold 64).
fn run_all(l: &mut Ledger, ids: &[TaskId], index: &mut u64) {
    for chunk in ids.chunks(64) {
        *index += 1;
        let assignments = chunk
            .iter()
            .map(|&task| Assignment {
                task,
                attempt: 1,
                worker: WORKER,
                gpus: Vec::new(),
            })
            .collect();
        l.apply(
            *index,
            &Command::Assign {
                assignments,
                at: UnixMillis(*index),
            },
        )
        .expect("assigned");
        for &task in chunk {
            *index += 1;
            let at = UnixMillis(*index);
            l.apply(
                *index,
                &Command::TaskStarted {
                    task,
                    attempt: 1,
                    worker: WORKER,
                    pid: 4242,
                    at,
                },
            )
            .expect("started");
            *index += 1;
            l.apply(
                *index,
                &Command::TaskFinished {
                    task,
                    attempt: 1,
                    worker: WORKER,
                    outcome: Outcome {
                        exit_code: Some(0),
                        cpu_time_ms: 1,
                        peak_rss: Bytes(2 << 20),
                        ..Outcome::bare(TaskState::Succeeded)
                    },
                    at: UnixMillis(*index),
                },
            )
            .expect("finished");
        }
    }
}

#[test]
fn a_live_task_and_its_history_cost_a_bounded_heap() {
    const N: usize = 10_000;
    let mut index = 1;
    let mut l = ledger_with_a_worker();
    let start = held();
    let ids = submit(&mut l, N, &mut index);
    let pending = (held() - start) / N as isize;
    let before_run = held();
    run_all(&mut l, &ids, &mut index);
    // What running adds: the attempt, its provenance and one history record.
    let ran = (held() - before_run) / N as isize;
    let finished = (held() - start) / N as isize;
    println!("heap per task: pending {pending} B, finished {finished} B (running added {ran} B)");
    // A node holds 10,000 finished tasks (the default retention) and 50,000 history records,
    // pending ones only while they wait. Bounds a little above today's figures (pending 903 B,
    // finished 1,552 B; finished was 3,077 B before attempts stopped reserving room for four
    // and before provenance and history strings were shared).
    assert!(pending <= 1_000, "a pending task holds {pending} B");
    assert!(finished <= 1_700, "a finished task holds {finished} B");
}
