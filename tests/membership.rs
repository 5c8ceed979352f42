//! Membership changes on a loopback cluster: a node leaving on SIGTERM (hand-back of its
//! tasks, its voter seat given to a learner, the leader handing over) and a silent voter
//! replaced by a learner.

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use support::{TaskViewExt, TestNode, cluster_with, show, signal, wait_status, wait_workers};
use testmesh_consensus::NodeId;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::task::TaskState;

/// The state of worker `id` as `node` lists it (None: not listed).
async fn worker_state(node: &TestNode, id: &str) -> Option<WorkerState> {
    let id: NodeId = id.parse().unwrap();
    node.workers()
        .await
        .into_iter()
        .find(|w| w.worker.id == id)
        .map(|w| w.worker.state)
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
        s.voters.len() == 3 && s.learners.len() == 1 && s.leader.is_some()
    })
    .await;
    let leader = s.leader.clone().unwrap();
    let learner = s.learners[0].clone();
    let leaving = s.voters.iter().find(|v| **v != leader).unwrap().clone();
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
    let t = nodes[li].wait_state(task, TaskState::Running).await;
    assert_eq!(t.attempt(0).worker.to_string(), leaving);

    // SIGTERM: it drains for 1 s, hands the task back and leaves; the exit is clean.
    nodes[fi].stop();
    let t = nodes[li].wait_state(task, TaskState::Pending).await;
    assert_eq!(t.task.handed_back, 1, "{}", show(&t));
    let why = t.outcome(0).message.as_deref().unwrap_or_default();
    assert!(why.contains("handed back"), "{why}");
    assert_eq!(
        worker_state(&nodes[li], &leaving).await,
        Some(WorkerState::Left)
    );
    let s = wait_status(&nodes[li], 20, |s| {
        s.voters.contains(&learner)
            && !s.voters.contains(&leaving)
            && !s.learners.contains(&leaving)
    })
    .await;
    assert_eq!(s.voters.len(), 3, "the learner took the seat: {}", show(&s));

    // The handed-back task did not use up its only try: it runs again elsewhere.
    let o = nodes[li].cli(&["undrain", &learner]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = nodes[li]
        .wait_task(task, 30, |t| {
            t.task.attempt == 2 && t.task.state == TaskState::Running
        })
        .await;
    assert_eq!(t.attempt(1).worker.to_string(), learner);
    let (code, _) = nodes[li]
        .post(&format!("/api/v1/tasks/{task}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200);

    // Restarted, the node that left joins again (with a fresh replica) and works.
    nodes[fi].spawn().await;
    let leaving_id: NodeId = leaving.parse().unwrap();
    nodes[li]
        .wait_get_as::<Vec<testmesh::core::dto::WorkerStatus>>("/api/v1/workers", 20, |ws| {
            ws.iter()
                .any(|w| w.worker.id == leaving_id && w.worker.state == WorkerState::Active)
        })
        .await;
    wait_status(&nodes[li], 20, |s| s.learners.contains(&leaving)).await;

    // The leader leaves: it hands over, a survivor leads, and writes go on.
    nodes[li].stop();
    let s = wait_status(&nodes[di], 30, |s| {
        s.leader.as_deref().is_some_and(|l| l != leader) && !s.voters.contains(&leader)
    })
    .await;
    assert_eq!(s.voters.len(), 3, "{}", show(&s));
    let id = nodes[di]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    nodes[di].wait_state(id, TaskState::Succeeded).await;
}

#[tokio::test]
async fn a_silent_voter_is_replaced_by_a_live_learner() {
    let extra = ["--dead-after", "2s"];
    let mut nodes = cluster_with(3, &extra).await;
    nodes.push(join(&nodes[0], &extra).await);
    let s = wait_status(&nodes[0], 30, |s| {
        s.voters.len() == 3 && s.learners.len() == 1 && s.leader.is_some()
    })
    .await;
    let leader = s.leader.clone().unwrap();
    let learner = s.learners[0].clone();
    let silent = s.voters.iter().find(|v| **v != leader).unwrap().clone();
    let li = nodes.iter().position(|n| n.node_id() == leader).unwrap();
    let si = nodes.iter().position(|n| n.node_id() == silent).unwrap();

    signal(&nodes[si], "-STOP");
    let s = wait_status(&nodes[li], 30, |s| {
        s.voters.contains(&learner) && !s.voters.contains(&silent)
    })
    .await;
    assert!(
        s.learners.contains(&silent),
        "the silent voter stays on as a learner: {}",
        show(&s)
    );
    // When it answers again it catches up as a learner; the voters stay as they are. (Its
    // replica passes through the intermediate memberships of the swap on the way: wait for the
    // end of it, not for the first view that shows it as a learner.)
    signal(&nodes[si], "-CONT");
    let s = wait_status(&nodes[si], 30, |s| {
        s.learners.contains(&silent) && s.leader.is_some() && s.voters.len() == 3
    })
    .await;
    assert!(!s.voters.contains(&silent), "{}", show(&s));
    assert!(s.voters.contains(&learner), "{}", show(&s));
}
