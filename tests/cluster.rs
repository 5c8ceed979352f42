//! Multi-process clusters on loopback: real nodes, a real libp2p mesh over TCP with the swarm
//! key, Raft over it. `--join` instead of mDNS (mDNS does not run on loopback).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::{TestNode, cluster, cluster_with, signal, status};

#[tokio::test]
async fn three_nodes_form_one_cluster_and_run_tasks_everywhere() {
    let nodes = cluster(3).await;
    // One cluster: everyone agrees on the leader, and the leader has 3 voters' worth of workers.
    let mut leaders = BTreeSet::new();
    for n in &nodes {
        leaders.insert(
            status(n).await.unwrap()["leader"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    // Every node receives every node's gossiped statistics (not through Raft).
    for n in &nodes {
        let mut seen = 0;
        for _ in 0..100 {
            let (_, s) = n.get("/api/v1/stats").await;
            let m = s["nodes"].as_object().cloned().unwrap_or_default();
            seen = m
                .values()
                .filter(|v| v["latest"]["sample"]["memory_total"].as_u64() > Some(0))
                .count();
            if seen == 3 {
                assert_eq!(s["malformed_dropped"], 0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, 3, "{} has stats of {seen} node(s)", n.url);
    }

    // Writes on a follower land; with 2 cpus per worker, six 1-cpu tasks need all three.
    let gate = nodes[0].dir.path().join("gate");
    let script = format!(
        "echo ran on $TESTMESH_NODE_ID; while [ ! -e {} ]; do sleep 0.05; done",
        gate.display()
    );
    let follower = nodes
        .iter()
        .find(|n| !leaders.contains(&n.node_id()))
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            follower
                .submit(json!({"command": ["sh", "-c", script], "cpu": 1}))
                .await,
        );
    }
    // A linearizable read on any other node sees a write the moment it was acknowledged.
    let others: Vec<&TestNode> = nodes.iter().filter(|n| n.url != follower.url).collect();
    for n in &others {
        let (code, t) = n
            .get(&format!("/api/v1/tasks/{}?consistent=true", ids[5]))
            .await;
        assert_eq!(code, 200, "{t}");
    }
    let mut workers = BTreeSet::new();
    for id in &ids {
        let t = follower.wait_state(*id, "running").await;
        workers.insert(t["attempts"][0]["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(workers.len(), 3, "tasks ran on {workers:?}");
    std::fs::write(&gate, "").unwrap();
    for id in &ids {
        follower.wait_state(*id, "succeeded").await;
    }
    // Logs come from the worker that ran the task, whichever node is asked.
    for n in &nodes {
        for id in &ids {
            let (code, l) = n.get(&format!("/api/v1/tasks/{id}/logs")).await;
            assert_eq!(code, 200, "{l}");
            let worker = n.task(*id).await["attempts"][0]["worker"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(l["data"], format!("ran on {worker}\n"));
        }
    }
}

#[tokio::test]
async fn killing_the_leader_elects_another_and_keeps_every_committed_task() {
    let mut nodes = cluster(3).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            nodes[1]
                .submit(json!({"command": ["sh", "-c", format!("echo {i}")], "cpu": "10m"}))
                .await,
        );
    }
    for id in &ids {
        nodes[1].wait_state(*id, "succeeded").await;
    }
    // Three voters (learners are promoted once registered), so two survivors are a majority.
    let mut leader = String::new();
    for _ in 0..300 {
        let s = status(&nodes[0]).await.unwrap();
        // Not mid-change either: killing the leader during joint consensus can leave the old
        // voter set without a majority.
        if s["voters"].as_array().map(Vec::len) == Some(3) && s["membership_changing"] == false {
            leader = s["leader"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!leader.is_empty(), "the cluster never had 3 voters");
    let li = nodes.iter().position(|n| n.node_id() == leader).unwrap();
    nodes[li].kill9();
    let survivors: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, n)| n)
        .collect();
    // A new leader among the survivors (a deadline, not a timing target: on a loaded 2-core
    // machine an election can take several rounds).
    let mut elected = None;
    for _ in 0..600 {
        let s = status(survivors[0]).await.unwrap();
        if let Some(l) = s["leader"].as_str().filter(|l| *l != leader) {
            elected = Some(l.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elected = elected.expect("no new leader was elected");
    assert_ne!(elected, leader);
    // Every committed task is still there, on every survivor, and new writes land.
    for n in &survivors {
        for id in &ids {
            assert_eq!(n.task(*id).await["state"], "succeeded");
        }
    }
    let id = survivors[1]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    let t = survivors[1]
        .wait_task(id, 30, |t| {
            t["state"] == "succeeded" || t["attempts"][0]["worker"] == leader.as_str()
        })
        .await;
    // Until dead workers are detected, the dead leader's worker may still be chosen.
    assert!(
        t["state"] == "succeeded" || t["attempts"][0]["worker"] == leader,
        "{t}"
    );
}

#[tokio::test]
async fn a_node_without_the_swarm_key_is_refused() {
    let a = TestNode::start(&[]).await;
    // Its own, different key: the pnet handshake fails on both sides.
    let stranger = TestNode::start_with(&["--join", &a.mesh_addr()], false).await;
    // Both sides log the refusal; under load the first dial may take a while.
    support::wait_for(Duration::from_secs(20), || {
        (stranger.log().contains("cannot connect") && a.log().contains("refused a connection"))
            .then_some(())
    })
    .await;
    let (_, ws) = a.get("/api/v1/workers").await;
    assert_eq!(
        ws.as_array().unwrap().len(),
        1,
        "the stranger must not join: {ws}"
    );
    let (_, s) = stranger.get("/api/v1/status").await;
    assert_ne!(
        s["leader"],
        status(&a).await.unwrap()["leader"],
        "the stranger is not in a's cluster"
    );
    assert!(
        stranger.log().contains("cannot connect"),
        "the refused side says why:\n{}",
        stranger.log()
    );
    assert!(
        a.log().contains("refused a connection"),
        "the refusing side says why:\n{}",
        a.log()
    );
}

#[tokio::test]
async fn a_silent_worker_is_lost_after_dead_after_and_its_task_moves_exactly_once() {
    let nodes = cluster_with(3, &["--dead-after", "3s"]).await;
    let leader = status(&nodes[0]).await.unwrap()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let leader_node = nodes.iter().find(|n| n.node_id() == leader).unwrap();
    // Drain the leader's worker (through the CLI), so the task lands on a follower.
    let o = leader_node.cli(&["drain", &leader]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gate = nodes[0].dir.path().join("gate");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let id = leader_node
        .submit(json!({"command": ["sh", "-c", script], "cpu": 1, "retries": 1}))
        .await;
    let t = leader_node.wait_state(id, "running").await;
    let w = t["attempts"][0]["worker"].as_str().unwrap().to_string();
    assert_ne!(w, leader, "a drained worker takes no new task");
    let worker = nodes.iter().find(|n| n.node_id() == w).unwrap();

    // Silent for less than --dead-after: nothing moves.
    signal(worker, "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(worker, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = leader_node.task(id).await;
    assert_eq!(
        (t["attempt"].as_u64(), t["state"].as_str()),
        (Some(1), Some("running")),
        "{t}"
    );

    // Silent for longer: the attempt is lost and the task runs again elsewhere, once.
    let old_pid = t["attempts"][0]["pid"].as_u64().unwrap();
    signal(worker, "-STOP");
    let t = leader_node
        .wait_task(id, 30, |t| t["attempt"] == 2 && t["state"] == "running")
        .await;
    assert_eq!(t["attempts"][0]["outcome"]["state"], "lost");
    assert_ne!(t["attempts"][1]["worker"].as_str().unwrap(), w);
    let (_, ws) = leader_node.get("/api/v1/workers").await;
    let lost = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == w.as_str())
        .unwrap();
    assert_eq!(lost["state"], "lost");
    // Back again: it rejoins as a worker and stops the attempt it no longer owns.
    signal(worker, "-CONT");
    for _ in 0..200 {
        let (_, ws) = leader_node.get("/api/v1/workers").await;
        if ws
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == w.as_str() && x["state"] == "active")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        support::wait_for(Duration::from_secs(10), || (!support::alive(old_pid))
            .then_some(()))
        .await
        .is_some(),
        "the returning worker kills the attempt that was moved away"
    );
    std::fs::write(&gate, "").unwrap();
    let t = leader_node.wait_state(id, "succeeded").await;
    assert_eq!(
        t["attempts"].as_array().unwrap().len(),
        2,
        "exactly one re-run: {t}"
    );
}

#[test]
fn quic_addresses_are_refused_because_the_swarm_key_cannot_protect_them() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--listen", "--join"] {
        let o = std::process::Command::new(support::BIN)
            .args([
                "node",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--http",
                "127.0.0.1:0",
            ])
            .args([flag, "/ip4/127.0.0.1/udp/7071/quic-v1"])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{flag} with QUIC must not start a node"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("QUIC is not supported") && err.contains("swarm key"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn five_nodes_form_one_cluster_with_five_voters() {
    let nodes = cluster_with(5, &["--voters", "5"]).await;
    let mut leaders = BTreeSet::new();
    // Each replica applies the membership change in its own time.
    for n in &nodes {
        let mut s = status(n).await.unwrap();
        for _ in 0..200 {
            if s["voters"].as_array().map(|v| v.len()) == Some(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s = status(n).await.unwrap();
        }
        assert_eq!(s["voters"].as_array().unwrap().len(), 5, "{s}");
        leaders.insert(s["leader"].as_str().unwrap().to_string());
    }
    assert_eq!(leaders.len(), 1, "one cluster, one leader: {leaders:?}");
    let id = nodes[4]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    nodes[0].wait_state(id, "succeeded").await;
}
