//! Crash safety with a real `kill -9`: every committed task and result survives, running tasks
//! are marked lost and retried where retries allow, no reservation leaks, orphans are killed.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{TaskViewExt, TestNode, alive, show, wait_for};
use testmesh_consensus::MilliCpu;
use testmesh_consensus::task::TaskState;

/// The pid of a running task's first attempt.
fn pid(t: &testmesh::core::dto::TaskView) -> u64 {
    u64::from(
        t.attempt(0)
            .pid
            .unwrap_or_else(|| panic!("a running attempt has a pid: {}", show(t))),
    )
}

#[tokio::test]
async fn kill_9_loses_nothing_committed() {
    let mut node = TestNode::start(&["--cpus", "4"]).await;
    let retry = node
        .submit(json!({"command": ["sleep", "300"], "retries": 1, "name": "retry"}))
        .await;
    let once = node
        .submit(json!({"command": ["sleep", "300"], "name": "once"}))
        .await;
    let done = node
        .submit(json!({"command": ["echo", "finished before the crash"]}))
        .await;
    node.wait_state(done, TaskState::Succeeded).await;
    let pid_retry = pid(&node.wait_state(retry, TaskState::Running).await);
    let pid_once = pid(&node.wait_state(once, TaskState::Running).await);
    // Plenty of committed history, so that restart replays a real log.
    let v = node
        .submit_body(json!({"tasks": vec![json!({"command": ["true"], "cpu": "10m"}); 200]}))
        .await;
    assert_eq!(v.tasks.len(), 200, "{v:?}");
    let last = v.tasks[199].0;
    node.wait_state(last, TaskState::Succeeded).await;

    // The node's fencing watchdog kills its task groups as soon as the node dies (its pipe
    // closes); whatever it has not killed yet, the restarted node kills as orphans of the old
    // boot before anything new starts. Either way none is left.
    node.kill9();

    node.spawn().await;
    assert!(
        wait_for(Duration::from_secs(10), async || (!alive(pid_retry)
            && !alive(pid_once))
        .then_some(()))
        .await
        .is_some()
    );
    let t = node
        .wait_task(retry, 30, |t| {
            t.task.state == TaskState::Running && t.task.attempt == 2
        })
        .await;
    assert_eq!(t.outcome(0).state, TaskState::Lost);
    assert_eq!(t.outcome(0).message.as_deref(), Some("worker restarted"));
    // The node's crash was not the task's failure: the one without retries runs again too.
    let t = node
        .wait_task(once, 30, |t| {
            t.task.state == TaskState::Running && t.task.attempt == 2
        })
        .await;
    assert_eq!(t.outcome(0).message.as_deref(), Some("worker restarted"));
    // Finished work and its logs are still there.
    assert_eq!(node.task(done).await.task.state, TaskState::Succeeded);
    let logs = node.logs(done, "").await;
    assert_eq!(logs.data, "finished before the crash\n");
    let l = node.tasks("?state=succeeded&limit=1000").await;
    assert_eq!(l.tasks.len(), 201);
    // Exactly the two running again hold reservations: 1 cpu each.
    let ws = node.workers().await;
    assert_eq!(ws.len(), 1, "the restarted node is the same worker");
    assert_eq!(ws[0].worker.allocated.cpu, MilliCpu(2000), "{ws:?}");
    for id in [retry, once] {
        node.post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
            .await;
        node.wait_state(id, TaskState::Cancelled).await;
    }
    let ws = node.workers().await;
    assert_eq!(
        ws[0].worker.allocated.cpu,
        MilliCpu(0),
        "no reservation leaks: {ws:?}"
    );
}

#[tokio::test]
async fn snapshots_and_log_purges_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "version = 1\nsnapshot_every = 20\n").unwrap();
    let mut node = TestNode::start(&["--config", cfg.to_str().unwrap()]).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            node.submit(json!({"command": ["sh", "-c", format!("echo {i}")], "cpu": "10m"}))
                .await,
        );
    }
    for id in &ids {
        node.wait_state(*id, TaskState::Succeeded).await;
    }
    node.kill9();
    node.spawn().await;
    for (i, id) in ids.iter().enumerate() {
        let t = node.task(*id).await;
        assert_eq!(t.task.state, TaskState::Succeeded);
        let logs = node.logs(*id, "").await;
        assert_eq!(logs.data, format!("{i}\n"));
    }
    // And it keeps working after the restart.
    let id = node.submit(json!({"command": ["true"]})).await;
    node.wait_state(id, TaskState::Succeeded).await;
}
