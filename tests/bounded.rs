//! Months of operation: huge task output, retention into the archive, joining by snapshot
//! after compaction, and a full disk — each on real nodes with real processes and files.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TaskViewExt, TestNode, cluster_with, status, wait_for, wait_status};
use testmesh::core::dto::RunCreated;
use testmesh_consensus::task::TaskState;

/// A shell command for the tasks below (busybox or dash; both have head and tr).
fn sh(script: &str) -> serde_json::Value {
    json!(["sh", "-c", script])
}

#[tokio::test]
async fn huge_output_is_bounded_and_the_cluster_goes_on() {
    let nodes = cluster_with(3, &["--max-log-size", "32MiB"]).await;
    let n0 = &nodes[0];
    let twenty_mb = "head -c 20000000 /dev/zero | tr '\\0' a";
    let ids = [
        // One 20 MB line.
        n0.submit(json!({"command": sh(&format!("{twenty_mb}; echo")), "cpu": "10m"}))
            .await,
        // One 20 MB malformed metric line.
        n0.submit(json!({
            "command": sh(&format!("printf 'TESTMESH_METRIC '; {twenty_mb}; echo")),
            "cpu": "10m"
        }))
        .await,
        // 100 MB without a newline.
        n0.submit(json!({
            "command": sh("head -c 100000000 /dev/zero | tr '\\0' b"),
            "cpu": "10m"
        }))
        .await,
    ];
    for id in ids {
        let t = n0.wait_state(id, TaskState::Succeeded).await;
        let o = t.outcome(0);
        assert!(
            o.stdout_tail.len() <= 2048,
            "tail of {id}: {}",
            o.stdout_tail.len()
        );
        assert!(
            o.message.as_ref().is_none_or(|m| m.len() < 4096),
            "{id}: {:?}",
            o.message
        );
        // The worker's file was cut to its tail.
        let worker = nodes
            .iter()
            .find(|n| n.id() == t.attempt(0).worker)
            .expect("the worker is one of ours");
        let file = worker.data_dir().join(format!("logs/{id}.1.stdout"));
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        assert!(len <= 32 << 20, "{} is {len} bytes", file.display());
    }
    let malformed = n0.task(ids[1]).await;
    let m = malformed.outcome(0).message.clone().unwrap_or_default();
    assert!(m.contains("malformed metric"), "{m}");
    assert!(
        m.len() < 1024,
        "the bad line is quoted short: {} bytes",
        m.len()
    );
    // The log entry of each report stayed small: every replica keeps applying, and later tasks
    // finish on every worker.
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(status(n).await.expect("status").last_applied);
        }
        v
    };
    let later: Vec<u64> = futures_ids(n0, 12).await;
    let mut workers = std::collections::BTreeSet::new();
    for id in later {
        let t = n0.wait_state(id, TaskState::Succeeded).await;
        workers.insert(t.attempt(0).worker);
    }
    assert!(workers.len() >= 2, "later tasks ran on {workers:?}");
    for (n, b) in nodes.iter().zip(before) {
        wait_status(n, 30, |s| s.last_applied > b).await;
        let ledger = std::fs::metadata(n.data_dir().join("ledger.redb"))
            .unwrap()
            .len();
        assert!(
            ledger < 32 << 20,
            "ledger file of {} is {ledger} bytes",
            n.url
        );
        let rss = n.rss();
        assert!(rss < 200 << 20, "node {} holds {rss} bytes", n.url);
    }
}

/// Submits `n` quick tasks that prefer to spread (1 cpu each).
async fn futures_ids(node: &TestNode, n: usize) -> Vec<u64> {
    let body = json!({
        "tasks": (0..n).map(|_| json!({"command": ["sleep", "0.2"], "cpu": "1"})).collect::<Vec<_>>()
    });
    node.submit_body(body)
        .await
        .tasks
        .into_iter()
        .map(|t| t.0)
        .collect()
}

#[tokio::test]
async fn finished_work_moves_to_the_archive_and_stays_readable() {
    let node = TestNode::start(&["--retention", "count=5,age=forever"]).await;
    // A run whose one task is still running must stay whole.
    let (code, run1): (u16, RunCreated) = node
        .post_as(
            "/api/v1/runs",
            json!({"name": "slow", "tasks": [
                {"command": ["sh", "-c", "echo first"], "cpu": "10m"},
                {"command": ["sleep", "4"], "cpu": "10m"}
            ]}),
        )
        .await;
    assert_eq!(code, 201);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            node.submit(json!({"command": ["sh", "-c", format!("echo out {i}")], "cpu": "10m"}))
                .await,
        );
    }
    for id in &ids {
        node.wait_state(*id, TaskState::Succeeded).await;
    }
    // Only the newest five finished tasks stay live, plus the unfinished run.
    // (The archive's count in the status is sampled every few seconds.)
    wait_status(&node, 30, |s| {
        s.tasks.values().sum::<usize>() <= 7 && s.disk.archived_tasks >= 15
    })
    .await;
    let first = run1.tasks[0].0;
    assert!(
        node.tasks("?limit=1000")
            .await
            .tasks
            .iter()
            .any(|t| t.task.id.0 == first),
        "the finished task of an unfinished run stays live"
    );
    // Archived tasks and their output are still there.
    let t = node.task(ids[0]).await;
    assert_eq!(t.task.state, TaskState::Succeeded);
    assert_eq!(node.logs(ids[0], "").await.data, "out 0\n");
    // A newer run, so that the first is not the newest any more; once it is done it leaves
    // whole and its results still read.
    let (_, run2): (u16, RunCreated) = node
        .post_as(
            "/api/v1/runs",
            json!({"name": "next", "tasks": [{"command": ["true"], "cpu": "10m"}]}),
        )
        .await;
    node.wait_state(run2.tasks[0].0, TaskState::Succeeded).await;
    node.wait_state(run1.tasks[1].0, TaskState::Succeeded).await;
    wait_for(Duration::from_secs(30), async || {
        let live = node.tasks("?limit=1000").await.tasks;
        (!live.iter().any(|t| t.task.id.0 == first)).then_some(())
    })
    .await
    .expect("the finished run leaves the live ledger whole");
    let (code, body) = node
        .get(&format!("/api/v1/runs/{}/summary", run1.run))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["summary"]["total"], 2, "{body}");
    // Listed with the live runs, its summary kept with it.
    let (code, list) = node.get("/api/v1/runs").await;
    assert_eq!(code, 200, "{list}");
    let listed = list
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["run"] == run1.run))
        .unwrap_or_else(|| panic!("run {} is not listed: {list}", run1.run));
    assert_eq!(listed["summary"]["total"], 2, "{listed}");
    assert_eq!(listed["summary"]["passed"], true, "{listed}");
    let (code, xml) = node
        .get_text(&format!("/api/v1/runs/{}/junit.xml", run1.run))
        .await;
    assert_eq!(code, 200);
    assert!(xml.contains("tests=\"2\""), "{xml}");
    // Something that never existed still says so.
    let (code, body) = node.get("/api/v1/tasks/99999").await;
    assert_eq!(code, 404);
    assert!(body.to_string().contains("does not exist"), "{body}");
}

#[tokio::test]
async fn a_node_joining_after_compaction_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "version = 1\nsnapshot_every = 20\nsnapshot_keep_logs = 10\nretention = \"count=10,age=forever\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let first = TestNode::start(&["--config", cfg]).await;
    let body = json!({"tasks": (0..200).map(|i| json!({"command": ["sh", "-c", format!("echo {i}")], "cpu": "10m"})).collect::<Vec<_>>()});
    let ids = first.submit_body(body).await.tasks;
    for id in &ids {
        first.wait_state(id.0, TaskState::Succeeded).await;
    }
    let s = wait_status(&first, 30, |s| s.tasks.values().sum::<usize>() <= 10).await;
    let key = first.data_dir().join("swarm.key");
    let join = first.mesh_addr();
    let second = TestNode::start(&[
        "--config",
        cfg,
        "--swarm-key",
        key.to_str().unwrap(),
        "--join",
        &join,
    ])
    .await;
    // The first node purged its log up to ten entries after its last snapshot, so the tasks
    // can only have reached the new node inside a snapshot.
    wait_status(&second, 30, |t| {
        t.last_applied >= s.last_applied && t.disk.snapshot_bytes > 0
    })
    .await;
    // The newest tasks are live on the new node too, and new work runs.
    let last = ids.last().unwrap().0;
    assert_eq!(second.task(last).await.task.state, TaskState::Succeeded);
    let id = second
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    second.wait_state(id, TaskState::Succeeded).await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_new_work_keeps_the_ledger_and_recovers() {
    let mut node = TestNode::unstarted(&["--min-free-disk", "24MiB"]);
    let Some(_mount) = Tmpfs::mount(&node.data_dir(), "64m") else {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "cannot mount a tmpfs (needs root); TESTMESH_STRICT forbids skipping"
        );
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    node.spawn().await;
    let before = node
        .submit(json!({"command": ["sh", "-c", "echo kept"], "cpu": "10m"}))
        .await;
    node.wait_state(before, TaskState::Succeeded).await;
    // Fill the file system to well under the threshold.
    let filler = node.data_dir().join("filler");
    let free = wait_status(&node, 30, |s| s.disk.free_bytes > 0)
        .await
        .disk
        .free_bytes;
    let fill = free.saturating_sub(8 << 20);
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let s = wait_status(&node, 30, |s| s.disk.free_bytes < s.disk.min_free_bytes).await;
    assert!(s.disk.data_dir_bytes >= fill, "{:?}", s.disk);
    let (code, body) = node
        .post("/api/v1/tasks", json!({"tasks": [{"command": ["true"]}]}))
        .await;
    assert_eq!(code, 507, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("--min-free-disk"), "{msg}");
    // What was committed is intact and readable.
    assert_eq!(node.logs(before, "").await.data, "kept\n");
    // Space returns: work is taken again.
    std::fs::remove_file(&filler).unwrap();
    wait_status(&node, 30, |s| s.disk.free_bytes >= s.disk.min_free_bytes).await;
    let after = node
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    node.wait_state(after, TaskState::Succeeded).await;
    node.stop();
}
