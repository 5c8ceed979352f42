//! Membership changes on a loopback cluster: a node leaving on SIGTERM (hand-back of its
//! tasks, its voter seat given to a learner, the leader handing over) and a silent voter
//! replaced by a learner.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestNode, cluster_with, signal, status, wait_workers};

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `node`'s status satisfies `f`; panics with the last status after `secs`.
async fn wait_status(node: &TestNode, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..secs * 10 {
        if let Some(s) = status(node).await {
            if f(&s) {
                return s;
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never got there: {last:#}\nlog:\n{}", node.log());
}

async fn worker_state(node: &TestNode, id: &str) -> String {
    let (_, ws) = node.get("/api/v1/workers").await;
    ws.as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .map(|w| w["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Starts one more node that joins `first`'s cluster.
async fn join(first: &TestNode, extra: &[&str]) -> TestNode {
    let key = first.data_dir().join("swarm.key");
    let addr = first.mesh_addr();
    let mut args = vec!["--swarm-key", key.to_str().unwrap(), "--join", &addr];
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

#[tokio::test]
async fn a_node_leaving_on_sigterm_hands_back_its_task_and_gives_up_its_seat() {
    let extra = ["--drain-timeout", "1s"];
    let mut nodes = cluster_with(3, &extra).await;
    nodes.push(join(&nodes[0], &extra).await);
    for n in &nodes {
        wait_workers(n, 4).await;
    }
    let s = wait_status(&nodes[0], 30, |s| {
        ids(&s["voters"]).len() == 3 && ids(&s["learners"]).len() == 1
    })
    .await;
    let leader = s["leader"].as_str().unwrap().to_string();
    let learner = ids(&s["learners"])[0].clone();
    let leaving = ids(&s["voters"])
        .into_iter()
        .find(|v| *v != leader)
        .unwrap();
    let by_id = |id: &str| nodes.iter().position(|n| n.node_id() == id).unwrap();
    let (li, fi, di) = (by_id(&leader), by_id(&leaving), by_id(&learner));

    // Only the leaving node takes work, so the task runs there.
    for n in &nodes {
        let id = n.node_id();
        if id != leaving {
            let o = nodes[li].cli(&["drain", &id]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let task = nodes[li]
        .submit(json!({"command": ["sleep", "60"], "cpu": "10m", "retries": 0}))
        .await;
    let t = nodes[li].wait_state(task, "running").await;
    assert_eq!(t["attempts"][0]["worker"], leaving.as_str());

    // SIGTERM: it drains for 1 s, hands the task back and leaves; the exit is clean.
    nodes[fi].stop();
    let t = nodes[li].wait_state(task, "pending").await;
    assert_eq!(t["handed_back"], 1, "{t}");
    let why = t["attempts"][0]["outcome"]["message"].as_str().unwrap();
    assert!(why.contains("handed back"), "{why}");
    assert_eq!(worker_state(&nodes[li], &leaving).await, "left");
    let s = wait_status(&nodes[li], 20, |s| {
        ids(&s["voters"]).contains(&learner)
            && !ids(&s["voters"]).contains(&leaving)
            && !ids(&s["learners"]).contains(&leaving)
    })
    .await;
    assert_eq!(ids(&s["voters"]).len(), 3, "the learner took the seat: {s}");

    // The handed-back task did not use up its only try: it runs again elsewhere.
    let o = nodes[li].cli(&["undrain", &learner]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = nodes[li]
        .wait_task(task, 30, |t| t["attempt"] == 2 && t["state"] == "running")
        .await;
    assert_eq!(t["attempts"][1]["worker"], learner.as_str());
    let (code, _) = nodes[li]
        .post(&format!("/api/v1/tasks/{task}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200);

    // Restarted, the node that left joins again (with a fresh replica) and works.
    nodes[fi].spawn().await;
    for _ in 0..200 {
        if worker_state(&nodes[li], &leaving).await == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker_state(&nodes[li], &leaving).await, "active");
    wait_status(&nodes[li], 20, |s| ids(&s["learners"]).contains(&leaving)).await;

    // The leader leaves: it hands over, a survivor leads, and writes go on.
    nodes[li].stop();
    let s = wait_status(&nodes[di], 30, |s| {
        s["leader"].as_str().is_some_and(|l| l != leader) && !ids(&s["voters"]).contains(&leader)
    })
    .await;
    assert_eq!(ids(&s["voters"]).len(), 3, "{s}");
    let id = nodes[di]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    nodes[di].wait_state(id, "succeeded").await;
}

#[tokio::test]
async fn a_silent_voter_is_replaced_by_a_live_learner() {
    let extra = ["--dead-after", "2s"];
    let mut nodes = cluster_with(3, &extra).await;
    nodes.push(join(&nodes[0], &extra).await);
    let s = wait_status(&nodes[0], 30, |s| {
        ids(&s["voters"]).len() == 3 && ids(&s["learners"]).len() == 1
    })
    .await;
    let leader = s["leader"].as_str().unwrap().to_string();
    let learner = ids(&s["learners"])[0].clone();
    let silent = ids(&s["voters"])
        .into_iter()
        .find(|v| *v != leader)
        .unwrap();
    let li = nodes.iter().position(|n| n.node_id() == leader).unwrap();
    let si = nodes.iter().position(|n| n.node_id() == silent).unwrap();

    signal(&nodes[si], "-STOP");
    let s = wait_status(&nodes[li], 30, |s| {
        ids(&s["voters"]).contains(&learner) && !ids(&s["voters"]).contains(&silent)
    })
    .await;
    assert!(
        ids(&s["learners"]).contains(&silent),
        "the silent voter stays on as a learner: {s}"
    );
    // When it answers again it catches up as a learner; the voters stay as they are.
    signal(&nodes[si], "-CONT");
    let s = wait_status(&nodes[si], 30, |s| {
        ids(&s["learners"]).contains(&silent) && s["leader"].is_string()
    })
    .await;
    assert_eq!(ids(&s["voters"]).len(), 3, "{s}");
}
