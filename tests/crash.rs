//! Crash safety with a real `kill -9`: every committed task and result survives, running tasks
//! are marked lost and retried where retries allow, no reservation leaks, orphans are killed.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestNode, alive, wait_for};

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
    node.wait_state(done, "succeeded").await;
    let pid_retry = node.wait_state(retry, "running").await["attempts"][0]["pid"]
        .as_u64()
        .unwrap();
    let pid_once = node.wait_state(once, "running").await["attempts"][0]["pid"]
        .as_u64()
        .unwrap();
    // Plenty of committed history, so that restart replays a real log.
    let (c, v) = node
        .post(
            "/api/v1/tasks",
            json!({"tasks": vec![json!({"command": ["true"], "cpu": "10m"}); 200]}),
        )
        .await;
    assert_eq!(c, 201, "{v}");
    let last = v["tasks"][199].as_u64().unwrap();
    node.wait_state(last, "succeeded").await;

    node.kill9();
    assert!(
        alive(pid_retry) && alive(pid_once),
        "children outlive a kill -9 of their node"
    );

    node.spawn().await;
    // Orphans of the old boot are killed before anything new starts.
    assert!(
        wait_for(Duration::from_secs(10), || (!alive(pid_retry)
            && !alive(pid_once))
        .then_some(()))
        .await
        .is_some()
    );
    let t = node
        .wait_task(retry, 30, |t| t["state"] == "running" && t["attempt"] == 2)
        .await;
    assert_eq!(t["attempts"][0]["outcome"]["state"], "lost");
    assert_eq!(t["attempts"][0]["outcome"]["message"], "worker restarted");
    let t = node.wait_state(once, "lost").await;
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1);
    // Finished work and its logs are still there.
    assert_eq!(node.task(done).await["state"], "succeeded");
    let (_, logs) = node.get(&format!("/api/v1/tasks/{done}/logs")).await;
    assert_eq!(logs["data"], "finished before the crash\n");
    let (_, l) = node.get("/api/v1/tasks?state=succeeded&limit=1000").await;
    assert_eq!(l["tasks"].as_array().unwrap().len(), 201);
    // Exactly the retried task holds a reservation: 1 cpu.
    let (_, ws) = node.get("/api/v1/workers").await;
    assert_eq!(
        ws.as_array().unwrap().len(),
        1,
        "the restarted node is the same worker"
    );
    assert_eq!(ws[0]["allocated"]["cpu"], 1000, "{ws}");
    node.post(&format!("/api/v1/tasks/{retry}/cancel"), json!({}))
        .await;
    node.wait_state(retry, "cancelled").await;
    let (_, ws) = node.get("/api/v1/workers").await;
    assert_eq!(ws[0]["allocated"]["cpu"], 0, "no reservation leaks: {ws}");
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
        node.wait_state(*id, "succeeded").await;
    }
    node.kill9();
    node.spawn().await;
    for (i, id) in ids.iter().enumerate() {
        let t = node.task(*id).await;
        assert_eq!(t["state"], "succeeded");
        let (_, logs) = node.get(&format!("/api/v1/tasks/{id}/logs")).await;
        assert_eq!(logs["data"], format!("{i}\n"));
    }
    // And it keeps working after the restart.
    let id = node.submit(json!({"command": ["true"]})).await;
    node.wait_state(id, "succeeded").await;
}
