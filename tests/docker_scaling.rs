//! The Docker provider against the machine's real Docker engine: the leader (a node on this
//! host) launches container workers from the project's image (built from scratch, no
//! registry); they join the mesh by themselves and run the backlog. A provider whose
//! containers never join is cleaned up at the registration deadline and the next provider is
//! used; `kill -9` of the leader in the middle of a launch leaves neither an orphan nor a
//! duplicate; idle containers are drained and removed.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestNode, docker, show, wait_for};
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::scaling::InstanceState;
use testmesh_consensus::task::TaskState;

/// Removes the test's containers, network and image, whatever happened.
struct Cleanup {
    tag: String,
    network: String,
    cluster: std::sync::Mutex<Option<String>>,
}

impl Cleanup {
    fn containers(&self) -> Vec<String> {
        let Some(c) = self.cluster.lock().unwrap().clone() else {
            return Vec::new();
        };
        let o = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=testmesh.cluster={c}"),
        ]);
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.containers() {
            if std::thread::panicking() {
                let o = docker(&["logs", "--tail", "30", &c]);
                eprintln!(
                    "----- {c} -----\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            docker(&["rm", "-f", &c]);
        }
        docker(&["network", "rm", &self.network]);
        docker(&["rmi", "-f", &self.tag]);
    }
}

#[tokio::test]
async fn docker_workers_join_run_the_backlog_survive_a_leader_crash_and_scale_in() {
    if !support::docker_or_skip() {
        return;
    }
    let id = std::process::id();
    let env = Cleanup {
        tag: format!("testmesh:test-scale-{id}"),
        network: format!("testmesh-test-scale-{id}"),
        cluster: std::sync::Mutex::new(None),
    };
    support::build_image(&env.tag);
    assert!(
        docker(&["network", "create", &env.network])
            .status
            .success()
    );

    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("node.toml");
    // "docker-bad" starts containers that are told to join an address nobody listens on.
    std::fs::write(
        &cfg,
        format!(
            r#"version = 1
[[instance_types]]
provider = "docker-bad"
name = "c2"
cpus = "2"
memory = "1GiB"
price_per_hour = 0.01
boot_secs = 5

[[instance_types]]
provider = "docker"
name = "c2"
cpus = "2"
memory = "1GiB"
price_per_hour = 0.05
boot_secs = 5

[[providers]]
kind = "docker"
name = "docker-bad"
image = "{tag}"
network = "{net}"
join = ["/ip4/127.0.0.1/tcp/9"]

[[providers]]
kind = "docker"
image = "{tag}"
network = "{net}"
"#,
            tag = env.tag,
            net = env.network
        ),
    )
    .unwrap();
    // Listening on every interface too, so containers reach the leader through their bridge.
    let mut node = TestNode::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--cpus",
        "1",
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
    ])
    .await;
    let me = node.id();
    let (code, v) = node
        .put(
            "/api/v1/policy",
            json!({"enabled": true, "providers": ["docker-bad", "docker"], "max_workers": 2,
                   "registration_deadline": "8s", "idle_timeout": "4s",
                   "scale_down_cooldown": "2s", "scale_up_cooldown": "1s"}),
        )
        .await;
    assert_eq!(code, 200, "{v}");

    // A task no worker here can hold (2 cores on a 1-core pool).
    let submitted = Instant::now();
    let v = node
        .submit_body(
            json!({"tasks": [{"command": ["sh", "-c", "echo from $(hostname)"], "cpu": 2}],
                   "allow_unschedulable": true}),
        )
        .await;
    let task = v.tasks[0].0;

    // The first provider's container never joins: terminated at the deadline, removed.
    let v = node
        .wait_scaling(90, |v| {
            v.instances
                .iter()
                .any(|i| i.provider == "docker-bad" && i.state == InstanceState::Failed)
        })
        .await;
    *env.cluster.lock().unwrap() = v.cluster_id.clone();
    let cluster = v
        .cluster_id
        .clone()
        .unwrap_or_else(|| panic!("a cluster id once it launched: {}", show(&v)));
    let bad = v
        .instances
        .iter()
        .find(|i| i.provider == "docker-bad")
        .unwrap();
    assert_eq!(
        bad.end_reason.as_deref(),
        Some("did not join within 8 s"),
        "{bad:?}"
    );
    let bad_name = format!("testmesh-{cluster}-{}", bad.intent);
    let gone = wait_for(Duration::from_secs(10), async || {
        (!docker(&["inspect", &bad_name]).status.success()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the container that never joined was removed"
    );

    // The next provider is used. Kill the leader while that launch is in flight.
    let v = node
        .wait_scaling(60, |v| {
            v.instances.iter().any(|i| {
                i.provider == "docker"
                    && matches!(i.state, InstanceState::Requested | InstanceState::Launched)
            })
        })
        .await;
    let good = v.instances.iter().find(|i| i.provider == "docker").unwrap();
    let state_at_kill = good.state;
    node.kill9();
    node.spawn().await;
    let t = node
        .wait_task(task, 120, |t| t.task.state == TaskState::Succeeded)
        .await;
    let ran_on_id = t
        .task
        .attempts
        .last()
        .unwrap_or_else(|| panic!("a succeeded task has an attempt: {}", show(&t)))
        .worker;
    assert_ne!(ran_on_id, me, "the task ran on a container worker");
    eprintln!(
        "backlog → task done on a container in {:.1} s (leader killed while the launch was {state_at_kill})",
        submitted.elapsed().as_secs_f64()
    );
    // No duplicate: at most one container per intent, whatever the leader had done before it
    // died, and the worker that ran the task is the docker provider's.
    let now = node.scaling().await;
    assert_eq!(now.cluster_id.as_deref(), Some(cluster.as_str()));
    for i in &now.instances {
        let o = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=testmesh.cluster={cluster}"),
            "--filter",
            &format!("label=testmesh.intent={}", i.intent),
        ]);
        let n = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .count();
        assert!(
            n <= 1,
            "intent {} has {n} containers: {}",
            i.intent,
            show(&now)
        );
    }
    assert!(
        now.instances
            .iter()
            .any(|i| i.worker == Some(ran_on_id) && i.provider == "docker"),
        "the task ran on the docker provider's worker: {}",
        show(&now)
    );

    // Idle: drained, stopped (it leaves the cluster), removed. Nothing of the cluster remains.
    let v = node
        .wait_scaling(120, |v| v.instances.iter().all(|i| i.state.is_ended()))
        .await;
    let good = v
        .instances
        .iter()
        .find(|i| i.provider == "docker" && i.state == InstanceState::Terminated)
        .unwrap_or_else(|| panic!("the docker worker was scaled in: {}", show(&v)));
    assert_eq!(good.end_reason.as_deref(), Some("scaled down: idle"));
    assert!(
        env.containers().is_empty(),
        "no container of the cluster is left: {:?}",
        env.containers()
    );
    let w = node.worker(ran_on_id).await;
    assert_eq!(
        w.worker.state,
        WorkerState::Left,
        "the container's node left the cluster on its way out: {w:?}"
    );
}
