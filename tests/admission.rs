//! Membership is earned: a peer holding the swarm key but neither a join token nor an
//! operator's approval can ask to join and nothing else; join tokens, approval and removal
//! from the CLI; cluster-wide API tokens with scopes, honoured by every node.

mod support;

use std::time::Duration;

use libp2p::PeerId;
use openraft::{LogId, StoredMembership, Vote};
use support::{TestNode, parse_output, wait_for, wait_workers};
use testmesh::api::security::{CreatedToken, NodesView};
use testmesh::mesh::rpc::{Request, Response, Standing, WriteFailure};
use testmesh::mesh::{self, MeshConfig, key};
use testmesh_consensus::{Command, NodeId, UnixMillis};

/// A peer that holds the cluster's swarm key and speaks the mesh protocol, but was never
/// admitted: what an attacker with a stolen key has.
struct Intruder {
    mesh: mesh::MeshClient,
    seed: PeerId,
    me: NodeId,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Intruder {
    async fn connect(target: &TestNode) -> Intruder {
        let swarm_key = key::read_swarm_key(&target.data_dir().join("swarm.key")).unwrap();
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let seed_addr = target.mesh_addr();
        let (mesh, _inbound, event_loop) = mesh::start(MeshConfig {
            keypair,
            swarm_key,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            join: vec![seed_addr.parse().unwrap()],
            mdns: false,
            stats: Box::new(|_, _| {}),
        })
        .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(event_loop.run(rx));
        let seed: PeerId = seed_addr.rsplit("/p2p/").next().unwrap().parse().unwrap();
        let m = mesh.clone();
        wait_for(Duration::from_secs(20), async || {
            m.peers().await.contains(&seed).then_some(())
        })
        .await
        .expect("the intruder connects: it holds the swarm key");
        let me = key::node_id_of(&mesh.local_peer());
        Intruder {
            mesh,
            seed,
            me,
            _stop: stop,
        }
    }

    async fn ask(&self, req: Request) -> Response {
        self.mesh
            .request(self.seed, req, Duration::from_secs(10))
            .await
            .expect("an answer, not a dropped connection")
    }
}

fn refused<T: std::fmt::Debug>(r: &Result<T, String>) -> bool {
    matches!(r, Err(e) if e.contains("refused"))
}

#[tokio::test]
async fn a_key_holder_that_was_not_admitted_can_only_ask_to_join() {
    let node = TestNode::start(&["--founding-window", "0s"]).await;
    // The founders are recorded once the first leader is in place.
    node.wait_get_as::<NodesView>("/api/v1/nodes", 10, |v| {
        v.members.iter().all(|m| m.admitted.is_some())
    })
    .await;
    let before = support::status(&node).await.expect("status");
    let x = Intruder::connect(&node).await;
    let term = 1_000;

    // Vote: a candidate it does not know.
    let vote = openraft::raft::VoteRequest::new(Vote::new(term, x.me), None);
    let Response::Vote(r) = x.ask(Request::Vote(vote)).await else {
        panic!("not a vote answer")
    };
    assert!(refused(&r), "vote: {r:?}");
    // Vote in someone else's name (the leader's own id): the identity does not match.
    let forged = openraft::raft::VoteRequest::new(Vote::new(term, node.id()), None);
    let Response::Vote(r) = x.ask(Request::Vote(forged)).await else {
        panic!("not a vote answer")
    };
    assert!(refused(&r), "forged vote: {r:?}");
    // Append: posing as a leader of a higher term.
    let append = openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(term, x.me),
        prev_log_id: None,
        entries: vec![],
        leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(term, x.me), 1)),
    };
    let Response::AppendEntries(r) = x.ask(Request::AppendEntries(append)).await else {
        panic!("not an append answer")
    };
    assert!(refused(&r), "append: {r:?}");
    // Snapshot: replacing the ledger.
    let snapshot = openraft::raft::InstallSnapshotRequest {
        vote: Vote::new_committed(term, x.me),
        meta: openraft::SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "forged".into(),
        },
        offset: 0,
        data: vec![0; 16],
        done: true,
    };
    let Response::InstallSnapshot(r) = x.ask(Request::InstallSnapshot(snapshot)).await else {
        panic!("not a snapshot answer")
    };
    assert!(refused(&r), "snapshot: {r:?}");
    // Write: a submit (code execution on every worker) and its own registration (to be given
    // tasks).
    let submit = Command::Submit {
        request_id: "intruder".into(),
        tasks: vec![testmesh_consensus::task::TaskSpec {
            argv: vec!["touch".into(), "/tmp/pwned".into()],
            requirements: testmesh_consensus::resources::Requirements {
                cpu: testmesh_consensus::MilliCpu(1),
                ..Default::default()
            },
            ..Default::default()
        }],
        at: UnixMillis(0),
    };
    let Response::Write(r) = x.ask(Request::Write(submit)).await else {
        panic!("not a write answer")
    };
    assert!(
        matches!(&r, Err(WriteFailure::Unavailable(m)) if m.contains("refused")),
        "write: {r:?}"
    );
    // Reads meant for members.
    let Response::ReadIndex(r) = x.ask(Request::ReadIndex).await else {
        panic!("not a read index answer")
    };
    assert!(r.is_err(), "read index: {r:?}");
    let Response::Standing(s) = x.ask(Request::Standing).await else {
        panic!("not a standing answer")
    };
    assert!(matches!(s, Standing::Unsure(_)), "standing: {s:?}");
    let logs = Request::Logs {
        task: 1,
        attempt: 1,
        stream: testmesh::mesh::rpc::LogStream::Stdout,
        offset: 0,
        limit: u64::MAX,
    };
    let Response::Logs(r) = x.ask(logs).await else {
        panic!("not a logs answer")
    };
    assert!(refused(&r), "logs: {r:?}");
    // Asking to join is allowed, and leaves it waiting for an operator.
    let join = Request::Join {
        node: x.me,
        addr: x.mesh.member_addr().await,
        token: None,
    };
    let Response::Join(r) = x.ask(join).await else {
        panic!("not a join answer")
    };
    assert!(
        matches!(&r, Err(WriteFailure::Unavailable(m)) if m.contains("pending")),
        "join: {r:?}"
    );
    let nodes: NodesView = node.get_ok("/api/v1/nodes").await;
    assert!(
        nodes.pending.iter().any(|p| p.id == x.me.to_string()),
        "{nodes:?}"
    );
    // A wrong join token is refused outright.
    let join = Request::Join {
        node: x.me,
        addr: x.mesh.member_addr().await,
        token: Some("tmj_00000000_00000000000000000000000000000000".into()),
    };
    let Response::Join(r) = x.ask(join).await else {
        panic!("not a join answer")
    };
    assert!(
        matches!(&r, Err(WriteFailure::Unavailable(m)) if m.contains("unknown")),
        "join with a made-up token: {r:?}"
    );

    // Nothing changed: same leader and term, one worker, no task.
    let after = support::status(&node).await.expect("status");
    assert_eq!(after.leader, before.leader);
    assert_eq!(after.term, before.term, "no election was forced");
    assert_eq!(node.workers().await.len(), 1);
    assert!(node.tasks("").await.tasks.is_empty());
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[tokio::test]
async fn joining_needs_a_token_or_approval_and_removal_revokes() {
    let seed = TestNode::start(&["--founding-window", "0s"]).await;
    let key = seed.data_dir().join("swarm.key");
    let key = key.to_str().unwrap();
    let addr = seed.mesh_addr();

    // Only the key: it waits, listed as pending, and is given nothing.
    let waiting = TestNode::start_with(&["--swarm-key", key, "--join", &addr], false).await;
    let id = waiting.node_id();
    let v = seed
        .wait_get_as::<NodesView>("/api/v1/nodes", 30, |v| {
            v.pending.iter().any(|p| p.id == id)
        })
        .await;
    assert!(v.members.iter().all(|m| m.id != id));
    assert_eq!(seed.workers().await.len(), 1);
    assert!(
        waiting.log().contains("not admitted yet"),
        "{}",
        waiting.log()
    );

    // An operator approves it from the CLI: it joins.
    let out = seed.cli(&["nodes", "approve", &id]);
    assert!(out.status.success(), "{out:?}");
    wait_workers(&seed, 2).await;

    // A join token admits a node without an operator; used once, it admits no other.
    let out = seed.cli(&["token", "create", "--join", "--ttl", "15m", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let token: CreatedToken = parse_output(&out);
    let token_args = [
        "--swarm-key",
        key,
        "--join",
        &addr,
        "--join-token",
        &token.token,
    ];
    let with_token = TestNode::start(&token_args).await;
    wait_workers(&seed, 3).await;
    let late = TestNode::start_with(&token_args, false).await;
    let l = &late;
    wait_for(Duration::from_secs(30), async || {
        l.log().contains("used up").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the second use is refused: {}", late.log()));
    assert_eq!(seed.workers().await.len(), 3);

    // A cluster-wide API token made on one node works on another.
    let out = seed.cli(&[
        "token", "create", "--scope", "submit", "--name", "ci", "--json",
    ]);
    let api: CreatedToken = parse_output(&out);
    let out = std::process::Command::new(support::BIN)
        .args(["submit", "--", "true"])
        .env("TESTMESH_SERVER", &with_token.url)
        .env("TESTMESH_TOKEN", &api.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // ... and is attributed in the audit trail.
    let audit: Vec<testmesh_consensus::security::AuditRecord> = {
        let s = &seed;
        wait_for(Duration::from_secs(10), async || {
            let out = s.cli(&["audit", "--json", "--limit", "100"]);
            let a: Vec<testmesh_consensus::security::AuditRecord> = parse_output(&out);
            a.iter().any(|r| r.actor.contains("ci")).then_some(a)
        })
        .await
        .expect("the submit is in the audit trail")
    };
    assert!(
        audit
            .iter()
            .any(|r| r.actor.contains(&api.view.id) && r.action == "POST /api/v1/tasks"),
        "{audit:?}"
    );

    // Removal: out of the membership and the workers that take tasks, and it cannot come back
    // with the key alone.
    let removed = with_token.node_id();
    let out = seed.cli(&["nodes", "remove", &removed]);
    assert!(out.status.success(), "{out:?}");
    seed.wait_get_as::<NodesView>("/api/v1/nodes", 30, |v| {
        v.members.iter().all(|m| m.id != removed) && v.removed.contains(&removed)
    })
    .await;
    let w = seed.worker(with_token.id()).await;
    assert_ne!(
        w.worker.state,
        testmesh_consensus::model::WorkerState::Active,
        "a removed node takes no tasks"
    );
    drop(late);
    drop(waiting);
}

/// An instance launched with only a join token enrols: it gets the swarm key from a member's API
/// and joins. The same launch payload used again (stolen from the instance's metadata after it
/// registered) gets nothing.
#[tokio::test]
async fn a_node_enrols_with_a_join_token_and_a_stolen_payload_is_useless_afterwards() {
    let seed = TestNode::start(&["--founding-window", "0s"]).await;
    let out = seed.cli(&["token", "create", "--join", "--ttl", "5m", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let token: CreatedToken = parse_output(&out);
    // No --swarm-key and no --join: the enrolment answer brings both.
    let payload = [
        "--enrol",
        seed.url.as_str(),
        "--join-token",
        token.token.as_str(),
    ];
    let enrolled = TestNode::start(&payload).await;
    wait_workers(&seed, 2).await;
    assert_eq!(
        std::fs::read(enrolled.data_dir().join("swarm.key")).unwrap(),
        std::fs::read(seed.data_dir().join("swarm.key")).unwrap(),
        "the enrolled node holds the cluster's key"
    );

    // Replayed through the API by someone else: refused, and no key in the answer.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/enrol", seed.url))
        .json(&serde_json::json!({"token": token.token, "node": "00000000000000aa"}))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("used up") && !body.contains("base16"),
        "{body}"
    );
    // Replayed by starting a node with the same launch arguments: it never gets the key.
    let thief = TestNode::unstarted(&payload);
    let o = std::process::Command::new(support::BIN)
        .arg("node")
        .arg("--data-dir")
        .arg(thief.data_dir())
        .args([
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ])
        .args(payload)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("enrolment") && err.contains("used up"),
        "{err}"
    );
    assert!(!thief.data_dir().join("swarm.key").exists());

    // A node serving plain HTTP beyond loopback does not hand the key out.
    let plain = TestNode::start(&["--http", "0.0.0.0:0", "--insecure-http"]).await;
    let r = http
        .post(format!("{}/api/v1/enrol", plain.url))
        .json(&serde_json::json!({"token": token.token, "node": "00000000000000aa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
