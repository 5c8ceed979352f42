//! Multi-process clusters on loopback: real nodes, a real libp2p mesh over TCP with the swarm
//! key, Raft over it. `--join` instead of mDNS (mDNS does not run on loopback).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::{
    TaskViewExt, TestNode, cluster, cluster_with, show, signal, status, wait_for, wait_status,
};
use testmesh::core::dto::TaskView;
use testmesh_consensus::NodeId;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::task::TaskState;

/// The leader `node` knows of (it must answer and know one).
async fn leader_of(node: &TestNode) -> String {
    let s = status(node)
        .await
        .unwrap_or_else(|| panic!("{} does not answer its status", node.url));
    s.leader
        .clone()
        .unwrap_or_else(|| panic!("{} knows no leader: {}", node.url, show(&s)))
}

#[tokio::test]
async fn three_nodes_form_one_cluster_and_run_tasks_everywhere() {
    let nodes = cluster(3).await;
    // One cluster: everyone agrees on the leader, and the leader has 3 voters' worth of workers.
    let mut leaders = BTreeSet::new();
    for n in &nodes {
        leaders.insert(leader_of(n).await);
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    // Every node receives every node's gossiped statistics (not through Raft).
    for n in &nodes {
        let with_samples = |s: &support::Stats| {
            s.nodes
                .values()
                .filter(|v| {
                    v.latest
                        .as_ref()
                        .is_some_and(|p| p.sample.memory_total.0 > 0)
                })
                .count()
        };
        let mut last = None;
        let s = wait_for(Duration::from_secs(10), async || {
            let s = n.stats().await;
            if with_samples(&s) == 3 {
                return Some(s);
            }
            last = Some(s);
            None
        })
        .await
        .unwrap_or_else(|| {
            let seen = last.as_ref().map_or(0, with_samples);
            panic!("{} has stats of {seen} node(s): {}", n.url, show(&last))
        });
        assert_eq!(s.malformed_dropped, 0);
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
        let t: TaskView = n
            .get_ok(&format!("/api/v1/tasks/{}?consistent=true", ids[5]))
            .await;
        assert_eq!(t.task.id.0, ids[5]);
    }
    let mut workers = BTreeSet::new();
    for id in &ids {
        let t = follower.wait_state(*id, TaskState::Running).await;
        workers.insert(t.attempt(0).worker);
    }
    assert_eq!(workers.len(), 3, "tasks ran on {workers:?}");
    std::fs::write(&gate, "").unwrap();
    for id in &ids {
        follower.wait_state(*id, TaskState::Succeeded).await;
    }
    // Logs come from the worker that ran the task, whichever node is asked.
    for n in &nodes {
        for id in &ids {
            let l = n.logs(*id, "").await;
            let worker = n.task(*id).await.attempt(0).worker;
            assert_eq!(l.data, format!("ran on {worker}\n"));
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
        nodes[1].wait_state(*id, TaskState::Succeeded).await;
    }
    // Three voters on every node, so two survivors are a majority. Asked of every node, not
    // only the leader: the leader sees the final configuration as soon as it appends it, and a
    // follower still in the joint one cannot be elected without the old voters' majority.
    let mut leaders = BTreeSet::new();
    for n in &nodes {
        let s = wait_status(n, 30, |s| {
            s.voters.len() == 3 && !s.membership_changing && s.leader.is_some()
        })
        .await;
        leaders.insert(s.leader.unwrap());
    }
    assert_eq!(
        leaders.len(),
        1,
        "the nodes disagree on the leader: {leaders:?}"
    );
    let leader = leaders.pop_first().unwrap();
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
    let s = wait_status(survivors[0], 60, |s| {
        s.leader.as_deref().is_some_and(|l| l != leader)
    })
    .await;
    let elected = s.leader.expect("no new leader was elected");
    assert_ne!(elected, leader);
    // Every committed task is still there, on every survivor, and new writes land.
    for n in &survivors {
        for id in &ids {
            assert_eq!(n.task(*id).await.task.state, TaskState::Succeeded);
        }
    }
    let id = survivors[1]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    let dead: NodeId = leader.parse().unwrap();
    let done_or_on_the_dead = |t: &TaskView| {
        t.task.state == TaskState::Succeeded
            || t.task.attempts.first().is_some_and(|a| a.worker == dead)
    };
    let t = survivors[1].wait_task(id, 30, done_or_on_the_dead).await;
    // Until dead workers are detected, the dead leader's worker may still be chosen.
    assert!(done_or_on_the_dead(&t), "{}", show(&t));
}

/// Established TCP connections (this host, IPv4) whose remote end is `port`.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            f[3] == "01" && remote_port == Some(port)
        })
        .count()
}

#[tokio::test]
async fn a_join_address_without_a_peer_id_is_dialled_once_not_every_tick() {
    // The soak found a follower with 50 connections to its seed after 100 s: the seed was
    // redialled every 2 s because a bare address names no peer.
    let seed = TestNode::start(&[]).await;
    let key = seed.data_dir().join("swarm.key");
    let addr = seed.mesh_addr();
    let port: u16 = addr
        .split('/')
        .nth(4)
        .and_then(|p| p.parse().ok())
        .expect("a /ip4/A/tcp/PORT mesh address");
    let bare = format!("/ip4/127.0.0.1/tcp/{port}");
    let joiner = TestNode::start(&["--swarm-key", key.to_str().unwrap(), "--join", &bare]).await;
    support::wait_workers(&joiner, 2).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let n = connections_to(port);
    // One from the follower, and perhaps one more from a dial that crossed it.
    assert!(
        (1..=2).contains(&n),
        "{n} connections to the seed's mesh port"
    );
}

#[tokio::test]
async fn a_node_without_the_swarm_key_is_refused() {
    let a = TestNode::start(&[]).await;
    // Its own, different key: the pnet handshake fails on both sides.
    let stranger = TestNode::start_with(&["--join", &a.mesh_addr()], false).await;
    // Both sides log the refusal; under load the first dial may take a while.
    wait_for(Duration::from_secs(20), async || {
        (stranger.log().contains("cannot connect") && a.log().contains("refused a connection"))
            .then_some(())
    })
    .await;
    let ws = a.workers().await;
    assert_eq!(ws.len(), 1, "the stranger must not join: {ws:?}");
    assert_ne!(
        status(&stranger).await.and_then(|s| s.leader),
        status(&a).await.and_then(|s| s.leader),
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
    let leader = leader_of(&nodes[0]).await;
    let leader_node = nodes.iter().find(|n| n.node_id() == leader).unwrap();
    // Drain the leader's worker (through the CLI), so the task lands on a follower.
    let o = leader_node.cli(&["drain", &leader]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gate = nodes[0].dir.path().join("gate");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let id = leader_node
        .submit(json!({"command": ["sh", "-c", script], "cpu": 1, "retries": 1}))
        .await;
    let t = leader_node.wait_state(id, TaskState::Running).await;
    let w = t.attempt(0).worker;
    assert_ne!(w.to_string(), leader, "a drained worker takes no new task");
    let worker = nodes.iter().find(|n| n.id() == w).unwrap();

    // Silent for well under the fencing bound (half of --dead-after, 1.5 s here): nothing
    // moves. (A pause near that bound fences the attempt by design; on a busy machine the
    // standing check after it can take long enough to do so.)
    signal(worker, "-STOP");
    tokio::time::sleep(Duration::from_millis(600)).await;
    signal(worker, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = leader_node.task(id).await;
    assert_eq!(
        (t.task.attempt, t.task.state),
        (1, TaskState::Running),
        "{}",
        show(&t)
    );

    // Silent for longer: the attempt is lost and the task runs again elsewhere, once.
    let old_pid = u64::from(t.attempt(0).pid.expect("a running attempt has a pid"));
    signal(worker, "-STOP");
    let t = leader_node
        .wait_task(id, 30, |t| {
            t.task.attempt == 2 && t.task.state == TaskState::Running
        })
        .await;
    assert_eq!(t.outcome(0).state, TaskState::Lost);
    assert_ne!(t.attempt(1).worker, w);
    assert_eq!(leader_node.worker(w).await.worker.state, WorkerState::Lost);
    // Back again: it rejoins as a worker and stops the attempt it no longer owns.
    signal(worker, "-CONT");
    leader_node
        .wait_get_as::<Vec<testmesh::core::dto::WorkerStatus>>("/api/v1/workers", 30, |ws| {
            ws.iter()
                .any(|x| x.worker.id == w && x.worker.state == WorkerState::Active)
        })
        .await;
    assert!(
        wait_for(Duration::from_secs(10), async || (!support::alive(old_pid))
            .then_some(()))
        .await
        .is_some(),
        "the returning worker kills the attempt that was moved away"
    );
    std::fs::write(&gate, "").unwrap();
    let t = leader_node.wait_state(id, TaskState::Succeeded).await;
    assert_eq!(t.task.attempts.len(), 2, "exactly one re-run: {}", show(&t));
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
        let s = wait_status(n, 20, |s| s.voters.len() == 5 && s.leader.is_some()).await;
        leaders.insert(s.leader.unwrap());
    }
    assert_eq!(leaders.len(), 1, "one cluster, one leader: {leaders:?}");
    let id = nodes[4]
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    nodes[0].wait_state(id, TaskState::Succeeded).await;
}

/// Regression: a node whose only `--join` seed was down initialised a one-node cluster of its
/// own after 2 s and never merged back. It must wait for the seed and then join it.
#[tokio::test]
async fn a_node_whose_seed_is_down_waits_and_joins_when_it_is_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut seed = TestNode::start(&["--listen", &listen]).await;
    let peer = seed.mesh_addr();
    let peer = peer.rsplit_once("/p2p/").expect("a /p2p/ address").1;
    let seed_addr = format!("{listen}/p2p/{peer}");
    let key = seed.data_dir().join("swarm.key");
    seed.kill9();
    let late = TestNode::start_with(
        &["--swarm-key", key.to_str().unwrap(), "--join", &seed_addr],
        false,
    )
    .await;
    // Well past the 2 s after which it used to start a cluster of its own.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = status(&late).await.expect("it answers");
    assert!(s.leader.is_none(), "no cluster of its own: {}", show(&s));
    let log = late.log();
    assert!(!log.contains("initialising a cluster"), "{log}");
    assert!(
        log.contains("waiting to join a cluster"),
        "it says why: {log}"
    );
    // The seed comes back (same data dir and address): one cluster of two.
    seed.spawn().await;
    support::wait_workers(&seed, 2).await;
    late.ready().await;
    assert_eq!(leader_of(&seed).await, leader_of(&late).await);
}

/// Regression: nodes started at once, each with `--join` to the first, split into several
/// clusters (every node with a lower id than the seed's, seeing only the seed, started its own).
#[tokio::test]
async fn a_fleet_started_at_once_forms_one_cluster() {
    // The seed is not ready yet when the others start: formation is still open.
    let seed = TestNode::start_with(&[], false).await;
    let key = seed.data_dir().join("swarm.key");
    let join = seed.mesh_addr();
    let args = ["--swarm-key", key.to_str().unwrap(), "--join", &join];
    let mut fleet: Vec<TestNode> = (0..7).map(|_| TestNode::unstarted(&args)).collect();
    futures::future::join_all(fleet.iter_mut().map(|n| n.spawn())).await;
    seed.ready().await;
    support::wait_workers(&seed, 8).await;
    let leader = leader_of(&seed).await;
    for n in &fleet {
        assert_eq!(leader_of(n).await, leader, "one cluster");
        assert!(
            !n.log().contains("initialising a cluster"),
            "only the seed starts the cluster: {}",
            n.log()
        );
    }
}

/// Regression: a worker cut off from the leader and the rest of the cluster kept running its
/// attempt while the others could run it again. It must fence itself: with no confirmation
/// from a leader for half of --dead-after, it stops its attempts.
#[tokio::test]
async fn a_worker_cut_off_from_the_quorum_stops_its_attempts_before_dead_after() {
    let nodes = cluster_with(3, &["--dead-after", "4s"]).await;
    let leader = leader_of(&nodes[0]).await;
    let leader_node = nodes.iter().find(|n| n.node_id() == leader).unwrap();
    let o = leader_node.cli(&["drain", &leader]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gate = nodes[0].dir.path().join("gate");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let id = leader_node
        .submit(json!({"command": ["sh", "-c", script], "cpu": 1}))
        .await;
    let t = leader_node.wait_state(id, TaskState::Running).await;
    let w = t.attempt(0).worker;
    let pid = u64::from(t.attempt(0).pid.expect("a running attempt has a pid"));
    let others: Vec<&TestNode> = nodes.iter().filter(|n| n.id() != w).collect();
    // The worker alone: no leader, no quorum.
    for n in &others {
        signal(n, "-STOP");
    }
    let stopped = wait_for(Duration::from_secs(8), async || {
        (!support::alive(pid)).then_some(())
    })
    .await;
    for n in &others {
        signal(n, "-CONT");
    }
    assert!(
        stopped.is_some(),
        "the cut-off worker stops its attempt by itself, before --dead-after"
    );
    // Once the cluster is whole again the task runs again, without having used up a retry.
    let t = leader_node
        .wait_task(id, 30, |t| {
            t.task.attempt == 2 && t.task.state == TaskState::Running
        })
        .await;
    assert_eq!(t.outcome(0).state, TaskState::Lost, "{}", show(&t));
    std::fs::write(&gate, "").unwrap();
    leader_node.wait_state(id, TaskState::Succeeded).await;
}

/// Two clusters that formed separately (same swarm key, no --join between them) meet on the
/// mesh through a node that joins one of them: they do not merge, and it says so loudly and
/// lists the other in its status.
#[tokio::test]
async fn a_cluster_that_formed_separately_is_detected_and_reported() {
    let a = TestNode::start(&[]).await;
    let key = a.data_dir().join("swarm.key");
    let key = key.to_str().unwrap();
    let b = TestNode::start(&["--swarm-key", key]).await;
    assert_ne!(leader_of(&a).await, leader_of(&b).await, "two clusters");
    let (ja, jb) = (a.mesh_addr(), b.mesh_addr());
    let c = TestNode::start(&["--swarm-key", key, "--join", &ja, "--join", &jb]).await;
    let s = wait_status(&c, 30, |s| !s.foreign_clusters.is_empty()).await;
    assert_eq!(s.foreign_clusters.len(), 1, "{}", show(&s));
    let mine = leader_of(&c).await;
    let other = if mine == leader_of(&a).await { &b } else { &a };
    assert!(
        s.foreign_clusters.contains_key(&other.node_id()),
        "{}",
        show(&s)
    );
    assert!(
        c.log().contains("belongs to another cluster"),
        "{}",
        c.log()
    );
}
