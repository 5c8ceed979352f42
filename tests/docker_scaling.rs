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

use serde_json::{Value, json};
use support::{TestNode, docker};

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

fn instances(v: &Value) -> Vec<Value> {
    v["instances"].as_array().cloned().unwrap_or_default()
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
    let me = node.node_id();
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
    let (code, v) = node
        .post(
            "/api/v1/tasks",
            json!({"tasks": [{"command": ["sh", "-c", "echo from $(hostname)"], "cpu": 2}],
                   "allow_unschedulable": true}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let task = v["tasks"][0].as_u64().unwrap();

    // The first provider's container never joins: terminated at the deadline, removed.
    let v = node
        .wait_get("/api/v1/scaling", 90, |v| {
            instances(v)
                .iter()
                .any(|i| i["provider"] == "docker-bad" && i["state"] == "failed")
        })
        .await;
    *env.cluster.lock().unwrap() = v["cluster_id"].as_str().map(str::to_string);
    let bad = instances(&v)
        .into_iter()
        .find(|i| i["provider"] == "docker-bad")
        .unwrap();
    assert_eq!(bad["end_reason"], "did not join within 8 s", "{bad}");
    let bad_name = format!(
        "testmesh-{}-{}",
        v["cluster_id"].as_str().unwrap(),
        bad["intent"]
    );
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !docker(&["inspect", &bad_name]).status.success()
    });
    assert!(gone, "the container that never joined was removed");

    // The next provider is used. Kill the leader while that launch is in flight.
    let v = node
        .wait_get("/api/v1/scaling", 60, |v| {
            instances(v).iter().any(|i| {
                i["provider"] == "docker" && (i["state"] == "requested" || i["state"] == "launched")
            })
        })
        .await;
    let good = instances(&v)
        .into_iter()
        .find(|i| i["provider"] == "docker")
        .unwrap();
    let _ = &good;
    let state_at_kill = good["state"].clone();
    node.kill9();
    node.spawn().await;
    let t = node
        .wait_task(task, 120, |t| t["state"] == "succeeded")
        .await;
    let ran_on = t["attempts"].as_array().unwrap().last().unwrap()["worker"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(ran_on, me, "the task ran on a container worker");
    eprintln!(
        "backlog → task done on a container in {:.1} s (leader killed while the launch was {state_at_kill})",
        submitted.elapsed().as_secs_f64()
    );
    // No duplicate: at most one container per intent, whatever the leader had done before it
    // died, and the worker that ran the task is the docker provider's.
    let now = node.get("/api/v1/scaling").await.1;
    let cluster = now["cluster_id"].as_str().unwrap().to_string();
    for i in instances(&now) {
        let o = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=testmesh.cluster={cluster}"),
            "--filter",
            &format!("label=testmesh.intent={}", i["intent"]),
        ]);
        let n = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .count();
        assert!(n <= 1, "intent {} has {n} containers: {now}", i["intent"]);
    }
    assert!(
        instances(&now)
            .iter()
            .any(|i| i["worker"] == ran_on.as_str() && i["provider"] == "docker"),
        "the task ran on the docker provider's worker: {now}"
    );

    // Idle: drained, stopped (it leaves the cluster), removed. Nothing of the cluster remains.
    let v = node
        .wait_get("/api/v1/scaling", 120, |v| {
            instances(v)
                .iter()
                .all(|i| i["state"] == "terminated" || i["state"] == "failed")
        })
        .await;
    let good = instances(&v)
        .into_iter()
        .find(|i| i["provider"] == "docker" && i["state"] == "terminated")
        .expect("the docker worker was scaled in");
    assert_eq!(good["end_reason"], "scaled down: idle");
    assert!(
        env.containers().is_empty(),
        "no container of the cluster is left: {:?}",
        env.containers()
    );
    let (_, ws) = node.get("/api/v1/workers").await;
    let w = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == ran_on.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        w["state"], "left",
        "the container's node left the cluster on its way out: {w}"
    );
}
