//! End to end through a real `testmesh node` process: real HTTP, real Raft log on disk, real
//! child processes.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TaskViewExt, TestNode, alive, show, wait_for};
use testmesh::core::dto::{StatusView, SubmitResponse, WorkerStatus};
use testmesh::core::logs::Stream;
use testmesh_consensus::task::TaskState;
use testmesh_consensus::{Bytes, MilliCpu};

#[tokio::test]
async fn runs_tasks_keeps_logs_and_records_results() {
    let node = TestNode::start(&[]).await;
    let ok = node
        .submit(json!({"command": ["sh", "-c", "echo out; echo err >&2; echo \"gpus=[$CUDA_VISIBLE_DEVICES] id=$TESTMESH_TASK_ID\""]}))
        .await;
    let bad = node
        .submit(json!({"command": ["sh", "-c", "exit 7"], "name": "seven"}))
        .await;
    let t = node.wait_state(ok, TaskState::Succeeded).await;
    assert_eq!(t.outcome(0).exit_code, Some(0));
    let t = node.wait_state(bad, TaskState::Failed).await;
    assert_eq!(t.outcome(0).exit_code, Some(7));
    assert_eq!(t.task.spec.name, "seven");

    let out = node.logs(ok, "").await;
    assert_eq!(
        out.data,
        format!("out\ngpus=[] id={ok}\n"),
        "no GPUs reserved: CUDA_VISIBLE_DEVICES is empty"
    );
    assert_eq!(out.stream, Stream::Stdout);
    assert!(out.complete, "{out:?}");
    let err = node.logs(ok, "?stream=stderr").await;
    assert_eq!(err.stream, Stream::Stderr);
    assert_eq!(err.data, "err\n");

    // The CLI: --wait mirrors the exit code; tasks/logs/workers/status work.
    let o = node.cli(&["submit", "--wait", "--", "sh", "-c", "echo via-cli; exit 3"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = node.cli(&["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "via-cli\n");
    let o = node.cli(&["tasks", "--state", "failed"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("seven") && !table.contains("succeeded"),
        "{table}"
    );
    let o = node.cli(&["workers", "--json"]);
    let ws: Vec<WorkerStatus> = support::parse_output(&o);
    assert_eq!(ws.len(), 1);
    assert!(ws[0].worker.capacity.cpu >= MilliCpu(1000), "{ws:?}");
    let o = node.cli(&["status", "--json"]);
    let s: StatusView = support::parse_output(&o);
    assert_eq!(s.role, "leader");
    assert_eq!(s.tasks.get("failed"), Some(&2), "{s:?}");
}

#[tokio::test]
async fn measures_cpu_time_and_peak_memory() {
    let node = TestNode::start(&[]).await;
    // Busy for a moment and touch ~64 MiB.
    let id = node
        .submit(json!({"command": ["sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; head -c 67108864 /dev/zero | tail -c 1 >/dev/null"]}))
        .await;
    let t = node
        .wait_task(id, 60, |t| t.task.state == TaskState::Succeeded)
        .await;
    let o = t.outcome(0);
    assert!(o.cpu_time_ms > 10, "{o:?}");
    assert!(o.peak_rss > Bytes(1 << 20), "{o:?}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let node = TestNode::start(&[]).await;
    let pidfile = node.dir.path().join("bg.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let id = node
        .submit(json!({"command": ["sh", "-c", script], "timeout": "1s"}))
        .await;
    let bg: u64 = wait_for(Duration::from_secs(20), async || {
        support::read(&pidfile).trim().parse().ok()
    })
    .await
    .unwrap();
    let t = node.wait_state(id, TaskState::TimedOut).await;
    assert_eq!(t.outcome(0).message.as_deref(), Some("timed out"));
    assert!(
        wait_for(Duration::from_secs(10), async || (!alive(bg)).then_some(()))
            .await
            .is_some(),
        "the background child survived the timeout"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_task_and_a_pending_one() {
    let node = TestNode::start(&["--cpus", "1"]).await;
    let running = node
        .submit(json!({"command": ["sleep", "300"], "cpu": 1}))
        .await;
    let queued = node.submit(json!({"command": ["true"], "cpu": 1})).await;
    let t = node.wait_state(running, TaskState::Running).await;
    let pid = u64::from(t.attempt(0).pid.expect("a running attempt has a pid"));
    // The second task waits, and says why.
    let q = node.task(queued).await;
    assert_eq!(q.task.state, TaskState::Pending);
    assert!(
        q.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("needs 1 cpu, 0 free")),
        "{}",
        show(&q)
    );

    let (code, v) = node
        .post(&format!("/api/v1/tasks/{queued}/cancel"), json!({}))
        .await;
    assert_eq!((code, v["state"].as_str()), (200, Some("cancelled")));
    let (code, _) = node
        .post(&format!("/api/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200);
    node.wait_state(running, TaskState::Cancelled).await;
    assert!(!alive(pid));
    let (code, v) = node
        .post(&format!("/api/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(code, 409, "{v}");
    let ws = node.workers().await;
    assert_eq!(
        ws[0].worker.allocated.cpu,
        MilliCpu(0),
        "cancelled tasks release their reservation"
    );
}

#[tokio::test]
async fn retries_then_fails_and_priorities_order_the_queue() {
    let node = TestNode::start(&["--cpus", "1"]).await;
    let flaky = node
        .submit(json!({"command": ["sh", "-c", "exit 1"], "retries": 2}))
        .await;
    let t = node.wait_state(flaky, TaskState::Failed).await;
    assert_eq!(t.task.attempts.len(), 3);
    assert_eq!(t.task.attempt, 3);

    // One slot: a blocker, then low and high priority; high must start first.
    let gate = node.dir.path().join("gate");
    let blocker = node.submit(json!({"command": ["sh", "-c", format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())], "cpu": 1})).await;
    node.wait_state(blocker, TaskState::Running).await;
    let low = node
        .submit(json!({"command": ["true"], "cpu": 1, "priority": 1}))
        .await;
    let high = node
        .submit(json!({"command": ["true"], "cpu": 1, "priority": 10}))
        .await;
    std::fs::write(&gate, "").unwrap();
    let l = node.wait_state(low, TaskState::Succeeded).await;
    let h = node.wait_state(high, TaskState::Succeeded).await;
    assert!(h.attempt(0).assigned_at <= l.attempt(0).assigned_at);
    assert!(h.task.rev < l.task.rev, "high priority finished first");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let node = TestNode::start(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/tasks", node.url);
    let body = json!({"tasks": [{"command": ["true"]}]});
    // Missing and wrong tokens.
    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api-token")
    );
    let r = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Malformed JSON, unknown fields, empty command, bad sizes, impossible requirements.
    let cases = [
        (json!("not an object"), 400, "invalid JSON"),
        (
            json!({"tasks": [{"command": ["true"], "cpus": 1}]}),
            400,
            "unknown field `cpus`",
        ),
        (json!({"tasks": [{"command": []}]}), 400, "command is empty"),
        (json!({"tasks": []}), 400, "at least one task"),
        (
            json!({"tasks": [{"command": ["x"], "mem": "12 parsecs"}]}),
            400,
            "mem: invalid size",
        ),
        (
            json!({"tasks": [{"command": ["x"], "timeout": "-1s"}]}),
            400,
            "timeout:",
        ),
        (
            json!({"tasks": [{"command": ["x"], "gpus": 64}]}),
            422,
            "needs 64 whole GPU(s)",
        ),
        (
            json!({"tasks": [{"command": ["x"]}, {"command": ["x"], "cpu": "many"}]}),
            400,
            "task #1: cpu",
        ),
    ];
    for (body, code, text) in cases {
        let (c, v) = node.post("/api/v1/tasks", body.clone()).await;
        assert_eq!(c, code, "{body} -> {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{body} -> {v}"
        );
    }
    // Oversized body.
    let big = "x".repeat(20 << 20);
    let r = http
        .post(&url)
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // CLI: unknown flag, malformed size and duration, empty command.
    for args in [
        &["submit", "--cpux", "1", "--", "true"][..],
        &["submit", "--mem", "4XB", "--", "true"],
        &["submit", "--timeout", "soon", "--", "true"],
        &["submit", "--"],
    ] {
        let o = node.cli(args);
        assert!(!o.status.success(), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?} printed no error");
    }
    // Nothing was created by any of that.
    let l = node.tasks("").await;
    assert_eq!(l.tasks.len(), 0, "{l:?}");
    // ...but an impossible task can be queued on purpose, with its reason.
    let v = node
        .submit_body(
            json!({"tasks": [{"command": ["x"], "gpus": 64}], "allow_unschedulable": true}),
        )
        .await;
    let t = node.task(v.tasks[0].0).await;
    assert!(
        t.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("64 whole GPU")),
        "{}",
        show(&t)
    );
}

#[tokio::test]
async fn submits_are_idempotent_per_request_id() {
    let node = TestNode::start(&[]).await;
    let body = json!({"request_id": "ci-build-42", "tasks": [{"command": ["true"]}, {"command": ["true"]}]});
    let (c1, a) = node
        .post_as::<SubmitResponse>("/api/v1/tasks", body.clone())
        .await;
    let (c2, b) = node.post_as::<SubmitResponse>("/api/v1/tasks", body).await;
    assert_eq!((c1, c2), (201, 200));
    assert_eq!(a.tasks, b.tasks);
    assert!(!a.duplicate && b.duplicate, "{a:?} {b:?}");
    let l = node.tasks("").await;
    assert_eq!(l.tasks.len(), 2);
}

#[tokio::test]
async fn graceful_stop_drains_hands_back_the_rest_and_restart_runs_them() {
    let mut node = TestNode::start(&["--drain-timeout", "2s"]).await;
    let long = node
        .submit(json!({"command": ["sleep", "300"], "retries": 0, "cpu": "10m"}))
        .await;
    let short = node
        .submit(json!({"command": ["sh", "-c", "sleep 1; echo done"], "retries": 0, "cpu": "10m"}))
        .await;
    let t = node.wait_state(long, TaskState::Running).await;
    node.wait_state(short, TaskState::Running).await;
    let pid = u64::from(t.attempt(0).pid.expect("a running attempt has a pid"));
    node.stop();
    assert!(
        !alive(pid),
        "SIGTERM on the node stops what is still running"
    );
    node.spawn().await;
    // The short task finished while the node drained; the long one was handed back and runs
    // again although it has no retries: a hand-back is not the task's failure.
    let s = node.wait_state(short, TaskState::Succeeded).await;
    assert_eq!(s.task.attempts.len(), 1, "{}", show(&s));
    let t = node
        .wait_task(long, 30, |t| {
            t.task.attempt == 2 && t.task.state == TaskState::Running
        })
        .await;
    assert_eq!(t.task.handed_back, 1);
    assert_eq!(t.outcome(0).state, TaskState::Lost);
}

#[tokio::test]
async fn a_gpu_busy_with_someone_elses_process_is_not_free() {
    // Simulated GPUs (a named fake): GPU 0 runs a process testmesh did not start.
    let node = TestNode::start(&[
        "--simulate-gpus",
        "2xSim L4:24GiB",
        "--simulate-gpu-busy",
        "0",
    ])
    .await;
    let me = node.node_id();
    // The live view has seen the foreign process.
    let seen = wait_for(Duration::from_secs(10), async || {
        let st = node.stats().await;
        st.nodes
            .get(&me)
            .and_then(|n| n.latest.as_ref())
            .is_some_and(|p| {
                p.sample
                    .gpus
                    .first()
                    .is_some_and(|g| g.foreign_processes == 1)
            })
            .then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "no stats sample shows GPU 0's foreign process: {}",
        show(&node.stats().await)
    );
    let gate = node.dir.path().join("gate");
    let hold = json!({"command": ["sh", "-c", format!("echo \"[$CUDA_VISIBLE_DEVICES]\"; while [ ! -e {} ]; do sleep 0.05; done", gate.display())], "cpu": "10m", "gpus": 1});
    let a = node.submit(hold.clone()).await;
    let b = node.submit(hold).await;
    node.wait_state(a, TaskState::Running).await;
    let out = wait_for(Duration::from_secs(10), async || {
        let s = support::read(&node.data_dir().join(format!("logs/{a}.1.stdout")));
        (!s.is_empty()).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(
        out.trim(),
        "[GPU-simulated-1]",
        "the free GPU, not the busy one"
    );
    // The ledger has GPU 0 unreserved, but the live view says it is taken: b waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(node.task(b).await.task.state, TaskState::Pending);
    std::fs::write(&gate, "").unwrap();
    node.wait_state(a, TaskState::Succeeded).await;
    let t = node.wait_state(b, TaskState::Succeeded).await;
    assert_eq!(t.attempt(0).gpus[0].index, 1, "{}", show(&t));
}

#[tokio::test]
async fn the_output_tail_outlives_the_log_file() {
    let node = TestNode::start(&[]).await;
    let script = "i=0; while [ $i -lt 500 ]; do echo \"line $i of the output\"; i=$((i+1)); done; echo oops >&2; exit 3";
    let id = node
        .submit(json!({"command": ["sh", "-c", script], "cpu": "10m"}))
        .await;
    let t = node.wait_state(id, TaskState::Failed).await;
    let tail = t.outcome(0).stdout_tail.as_str();
    assert!(tail.len() <= 2048 && tail.len() > 1500, "{}", tail.len());
    assert!(tail.starts_with("line "), "cut at a line start: {tail:.40}");
    assert!(tail.ends_with("line 499 of the output\n"));
    assert_eq!(t.outcome(0).stderr_tail, "oops\n");
    // With the file gone (cleaned up, or its worker gone), the API serves the ledger's tail.
    std::fs::remove_file(node.data_dir().join(format!("logs/{id}.1.stdout"))).unwrap();
    let c = node.logs(id, "").await;
    assert!(c.ledger_tail, "{c:?}");
    assert_eq!(c.data, tail);
    let o = node.cli(&["logs", &id.to_string()]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), tail);
    assert!(String::from_utf8_lossy(&o.stderr).contains("kept in the ledger"));
}

#[tokio::test]
async fn gpu_reservations_set_cuda_visible_devices() {
    // Simulated GPUs (no NVIDIA hardware here): the placement and environment path is the real one.
    let node = TestNode::start(&["--simulate-gpus", "2xSim A100:40GiB"]).await;
    let gate = node.dir.path().join("gate");
    let hold = |extra: serde_json::Value| {
        let mut t = json!({"command": ["sh", "-c", format!("echo \"[$CUDA_VISIBLE_DEVICES] $TESTMESH_GPU_INDICES $CUDA_DEVICE_ORDER\"; while [ ! -e {} ]; do sleep 0.05; done", gate.display())], "cpu": "10m"});
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t
    };
    let a = node.submit(hold(json!({"gpus": 1}))).await;
    let b = node
        .submit(hold(
            json!({"gpus": 1, "gpu_model": "a100", "gpu_mem": "40GiB"}),
        ))
        .await;
    let c = node.submit(hold(json!({"gpus": 1}))).await;
    node.wait_state(a, TaskState::Running).await;
    node.wait_state(b, TaskState::Running).await;
    // Both GPUs are exclusively held: the third waits and says so.
    let t = node.task(c).await;
    assert_eq!(t.task.state, TaskState::Pending);
    assert!(
        t.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("1 whole GPU(s), 0 matching free")),
        "{}",
        show(&t)
    );
    // Regression: workers with a reserved GPU did not read back (`testmesh workers` failed).
    let ws: Vec<WorkerStatus> = node.get_ok("/api/v1/workers").await;
    assert_eq!(ws[0].worker.capacity.gpus[1].model, "Sim A100");
    assert_eq!(
        ws[0].worker.allocated.gpus.len(),
        2,
        "both GPUs reserved: {ws:?}"
    );
    let o = node.cli(&["workers"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut seen = Vec::new();
    for id in [a, b] {
        let out = wait_for(Duration::from_secs(10), async || {
            let p = node.data_dir().join(format!("logs/{id}.1.stdout"));
            let s = support::read(&p);
            (!s.is_empty()).then_some(s)
        })
        .await
        .unwrap();
        seen.push(out.trim().to_string());
    }
    seen.sort();
    // By UUID (CUDA's own numbering can differ from NVML's on mixed hosts), in bus order.
    assert_eq!(
        seen,
        vec![
            "[GPU-simulated-0] 0 PCI_BUS_ID",
            "[GPU-simulated-1] 1 PCI_BUS_ID"
        ],
        "each task sees exactly its own GPU"
    );
    // A share does not fit on an exclusive GPU either; a model nobody has is refused at submit.
    let (code, v) = node
        .post(
            "/api/v1/tasks",
            json!({"tasks": [{"command": ["true"], "gpus": 1, "gpu_model": "H100"}]}),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    std::fs::write(&gate, "").unwrap();
    node.wait_state(c, TaskState::Succeeded).await;
}

#[tokio::test]
async fn logs_follow_streams_until_the_task_ends() {
    let node = TestNode::start(&[]).await;
    let id = node.submit(json!({"command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done"]})).await;
    node.wait_state(id, TaskState::Running).await;
    let o = node.cli(&["logs", &id.to_string(), "--follow"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "line 1\nline 2\nline 3\nline 4\nline 5\n"
    );
}

#[tokio::test]
async fn a_failed_spawn_does_not_disturb_a_running_task() {
    // Regression: the reaper once reaped any child, including the short-lived child of a failed
    // exec, and lost track of the tasks that were running.
    let node = TestNode::start(&[]).await;
    let running = node
        .submit(json!({"command": ["sleep", "1"], "cpu": "10m"}))
        .await;
    node.wait_state(running, TaskState::Running).await;
    for _ in 0..5 {
        let bad = node
            .submit(json!({"command": ["no-such-program-here"], "cpu": "10m"}))
            .await;
        node.wait_state(bad, TaskState::Failed).await;
    }
    node.wait_state(running, TaskState::Succeeded).await;
}

#[test]
fn bench_raft_commits_on_three_durable_voters() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(support::BIN)
        .args([
            "bench",
            "raft",
            "--writes",
            "300",
            "--single",
            "30",
            "--concurrency",
            "8",
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["voters"], 3);
    assert_eq!(r["writes"], 300);
    assert_eq!(r["single_writes"], 30);
    assert!(r["commits_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    // Bad input is refused before anything starts.
    let o = std::process::Command::new(support::BIN)
        .args(["bench", "raft", "--voters", "2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("use 1, 3 or 5"));
}

/// Regression: one entry changed more tasks than a page holds, and following `since` returned
/// the same page and the same `rev` forever. The watch must see every change exactly once.
#[tokio::test]
async fn watching_sees_every_change_once_whatever_the_batch_size() {
    let node = TestNode::start(&[]).await;
    let start = node.tasks("?limit=0").await.next;
    // 150 tasks in one request (one log entry), none placeable: they stay as submitted.
    let tasks: Vec<Value> = (0..150)
        .map(|_| json!({"command": ["true"], "constraints": {"rack": "none"}}))
        .collect();
    let submitted = node
        .submit_body(json!({"tasks": tasks, "allow_unschedulable": true}))
        .await
        .tasks;
    assert_eq!(submitted.len(), 150);
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    let mut since = start;
    for _ in 0..10 {
        let l = node
            .tasks(&format!("?since={since}&limit=40&wait=1s"))
            .await;
        if l.tasks.is_empty() {
            assert_eq!(l.next, since, "an empty page keeps the cursor");
            break;
        }
        for t in &l.tasks {
            *seen.entry(t.task.id.0).or_default() += 1;
        }
        assert_ne!(l.next, since, "the watch moves on");
        since = l.next;
    }
    let ids: Vec<u64> = submitted.iter().map(|t| t.0).collect();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids);
    assert!(seen.values().all(|n| *n == 1), "each change once: {seen:?}");
    // A later change to one of them is seen, once, from the cursor the watch ended with.
    let (code, _) = node
        .post(&format!("/api/v1/tasks/{}/cancel", ids[7]), json!({}))
        .await;
    assert_eq!(code, 200);
    let l = node.tasks(&format!("?since={since}&wait=5s")).await;
    assert_eq!(
        l.tasks.iter().map(|t| t.task.id.0).collect::<Vec<_>>(),
        [ids[7]]
    );
    // A cursor that is not one is refused with what a cursor looks like.
    let (code, body) = node.get_text("/api/v1/tasks?since=12.x").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("REV.TASK"), "{body}");
}

/// Regression: a fresh node answered /healthz at once but refused writes for seconds ("not the
/// leader") though it was about to lead, so `testmesh node & testmesh submit …` failed. The
/// CLI waits for the node to listen and the node waits for a leader, within bounds.
#[tokio::test]
async fn a_script_can_submit_right_after_starting_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let mut node = std::process::Command::new(support::BIN)
        .args(["node", "--data-dir"])
        .arg(&data)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // No wait of any kind: the CLI runs while the node is still starting.
    let out = std::process::Command::new(support::BIN)
        .args(["submit", "--server", &server, "--data-dir"])
        .arg(&data)
        .args(["--cpu", "10m", "--wait", "--", "true"])
        .output()
        .unwrap();
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
