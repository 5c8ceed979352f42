//! Autoscaling end to end with real workers: the `sim` provider's workers are real `testmesh
//! node` processes on loopback (offering the made-up capacity of their instance type). A
//! backlog that the pool cannot hold makes the leader launch workers that join by themselves
//! and run it; idle workers are drained and removed; a worker that never joins is terminated at
//! its deadline.

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use support::{TaskViewExt, TestNode, show, wait_for};
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::scaling::{DecisionKind, InstanceState};
use testmesh_consensus::task::TaskState;

/// Kills whatever a test's simulated workers left running (they are in their own process
/// groups, so stopping the leader does not stop them).
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(self.0.display().to_string())
            .status();
    }
}

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("node.toml");
    std::fs::write(
        &p,
        format!(
            r#"version = 1
[[instance_types]]
provider = "sim"
name = "sim-2cpu"
cpus = "2"
memory = "2GiB"
price_per_hour = 0.10
boot_secs = 5

[[providers]]
kind = "sim"
dir = "{}"
{extra}
"#,
            dir.join("sim").display()
        ),
    )
    .unwrap();
    p
}

#[tokio::test]
async fn a_backlog_scales_out_onto_joining_workers_and_idle_ones_scale_in() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(cfg_dir.path().to_path_buf());
    let cfg = config(cfg_dir.path(), "");
    let node = TestNode::start(&["--config", cfg.to_str().unwrap(), "--cpus", "1"]).await;
    let me = node.id();

    // Bad policies are refused with the reason and change nothing.
    let (code, v) = node.put("/api/v1/policy", json!({"enabled": true})).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("provider"),
        "{v}"
    );
    let (code, _) = node.put("/api/v1/policy", json!({"max_wokers": 3})).await;
    assert_eq!(code, 400);
    let (code, v) = node
        .put(
            "/api/v1/policy",
            json!({"enabled": true, "providers": ["sim"], "scale_up_cooldown": "1s",
                   "idle_timeout": "3s", "scale_down_cooldown": "2s", "max_workers": 4}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["idle_timeout"], "3s");

    // Three 2-core tasks on a 1-core pool: nothing here can ever run them.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let v = node
            .submit_body(
                json!({"tasks": [{"command": ["sleep", "1"], "cpu": 2, "name": "burst"}],
                       "allow_unschedulable": true}),
            )
            .await;
        ids.push(v.tasks[0].0);
    }
    for id in &ids {
        let t = node
            .wait_task(*id, 90, |t| t.task.state == TaskState::Succeeded)
            .await;
        assert_ne!(t.attempt(0).worker, me, "ran on a launched worker");
    }
    let v = node.scaling().await;
    assert!(
        v.cluster_id.as_deref().is_some_and(|c| !c.is_empty()),
        "{}",
        show(&v)
    );
    let up = v
        .decisions
        .iter()
        .find(|d| d.kind == DecisionKind::Up)
        .unwrap_or_else(|| panic!("an up decision: {}", show(&v)));
    assert!(up.reason.contains("cannot be placed"), "{up:?}");
    let launched: u32 = up.launches.iter().map(|l| l.count).sum();
    assert!((1..=4).contains(&launched), "{up:?}");
    for i in &v.instances {
        assert_eq!(i.provider, "sim");
        assert!(
            i.worker.is_some() || i.state != InstanceState::Joined,
            "{i:?}"
        );
        // Launched without the swarm key: it enrolled with its single-use join token.
        if let (InstanceState::Joined, Some(name)) = (i.state, &i.provider_id) {
            let log = support::read(&cfg_dir.path().join("sim").join(name).join("node.log"));
            assert!(log.contains("enrolled through"), "{log}");
        }
    }

    // Idle for 3 s: drained, terminated, gone.
    let v = node
        .wait_scaling(90, |v| {
            !v.instances.is_empty()
                && v.instances
                    .iter()
                    .all(|i| i.state == InstanceState::Terminated)
        })
        .await;
    for i in &v.instances {
        assert_eq!(i.end_reason.as_deref(), Some("scaled down: idle"), "{i:?}");
    }
    assert!(
        v.decisions.iter().any(|d| d.kind == DecisionKind::Down),
        "{}",
        show(&v)
    );
    assert_eq!(v.hourly_cost, 0.0);
    let left = std::fs::read_dir(cfg_dir.path().join("sim"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "every simulated worker removed its instance dir");
    for w in node.workers().await {
        if w.worker.id != me {
            assert_eq!(
                w.worker.state,
                WorkerState::Left,
                "removed workers left the cluster cleanly: {w:?}"
            );
        }
    }
    let o = node.cli(&["scaling"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("scaled down: idle"));
}

#[tokio::test]
async fn a_worker_that_never_joins_is_terminated_at_its_deadline() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(cfg_dir.path().to_path_buf());
    // Nothing listens where the worker is told to enrol and join: it starts but never joins.
    let cfg = config(cfg_dir.path(), "join = [\"/ip4/127.0.0.1/tcp/9\"]");
    let node = TestNode::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--cpus",
        "1",
        "--advertise-http",
        "http://127.0.0.1:9",
    ])
    .await;
    let (code, v) = node
        .put(
            "/api/v1/policy",
            json!({"enabled": true, "providers": ["sim"], "registration_deadline": "3s",
                   "max_workers": 1}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    node.submit_body(
        json!({"tasks": [{"command": ["true"], "cpu": 2}], "allow_unschedulable": true}),
    )
    .await;
    let v = node
        .wait_scaling(60, |v| {
            v.instances.iter().any(|i| i.state == InstanceState::Failed)
        })
        .await;
    let failed = v
        .instances
        .iter()
        .find(|i| i.state == InstanceState::Failed)
        .unwrap();
    assert_eq!(
        failed.end_reason.as_deref(),
        Some("did not join within 3 s"),
        "{failed:?}"
    );
    // Terminated: its process and directory are gone.
    let name = failed
        .provider_id
        .as_deref()
        .unwrap_or_else(|| panic!("it was launched: {failed:?}"));
    let dir = cfg_dir.path().join("sim").join(name);
    let gone = wait_for(std::time::Duration::from_secs(10), async || {
        (!dir.exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the instance was terminated");
    // The provider backs off after the failure.
    let p = &v.scaler["providers"][0];
    assert_eq!(p["name"], "sim");
    assert!(p["failures"].as_u64().unwrap() >= 1, "{p}");
}
