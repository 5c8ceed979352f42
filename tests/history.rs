//! Learning from history, end to end through a real `testmesh node` process: measured outcomes
//! (GPU memory), predictions, prediction-driven scheduling, insights, and the offline tools
//! (`predict eval`, `bench replay`).

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{TaskViewExt, TestNode, show, wait_for};
use testmesh::core::dto::TaskView;
use testmesh_consensus::Bytes;
use testmesh_consensus::task::TaskState;

#[tokio::test]
async fn peak_gpu_memory_is_attributed_to_the_task() {
    // The simulated GPUs list a process that asks for TESTMESH_SIMULATED_GPU_MIB as NVML lists a
    // compute process; attribution (pid → task attempt) and the peak are the real code.
    let node = TestNode::start(&[
        "--simulate-gpus",
        "2xSim A100:40GiB",
        "--stats-interval",
        "200ms",
    ])
    .await;
    let id = node
        .submit(json!({"command": ["sleep", "1.5"], "cpu": "10m", "gpus": 2,
            "env": {"TESTMESH_SIMULATED_GPU_MIB": "700"}}))
        .await;
    let t = node.wait_state(id, TaskState::Succeeded).await;
    assert_eq!(
        t.outcome(0).peak_gpu_memory,
        Bytes((2 * 700) << 20),
        "700 MiB on each of its 2 GPUs: {}",
        show(&t)
    );
    let cpu_only = node
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    let t = node.wait_state(cpu_only, TaskState::Succeeded).await;
    assert_eq!(t.outcome(0).peak_gpu_memory, Bytes(0));
}

#[test]
fn predict_eval_reports_model_and_baseline_and_explains_bad_input() {
    // Run time = speed(model) × steps × images with noise, rows in time order.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trace.csv");
    let mut text = String::from("when,model,steps,images,secs\n");
    let mut x: u64 = 7;
    for i in 0..1500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = x >> 33;
        let (model, speed) = [("A", 0.05), ("B", 0.12), ("C", 0.3)][(r % 3) as usize];
        let steps = 10 + (r / 3) % 50;
        let images = 1 << ((r / 200) % 4);
        let noise = 0.9 + ((r / 1000) % 200) as f64 / 1000.0;
        let secs = speed * steps as f64 * images as f64 * noise;
        text += &format!("{i:06},{model},{steps},{images},{secs:.3}\n");
    }
    text += "001500,A,10,1,\n"; // no target: skipped
    std::fs::write(&csv, text).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(support::BIN)
            .args(["predict", "eval", "--train"])
            .arg(&csv)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[
        "--target",
        "secs",
        "--time-column",
        "when",
        "--key",
        "model",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["train_rows"], 1200);
    assert_eq!(r["test_rows"], 300);
    assert_eq!(r["skipped_rows"], 1);
    assert_eq!(r["features"], json!(["model", "steps", "images"]));
    let (m, b) = (&r["model"], &r["baseline"]);
    assert!(
        m["mae"].as_f64().unwrap() < b["mae"].as_f64().unwrap() * 0.5,
        "the model must beat the per-model median: {r}"
    );
    assert!(m["r2"].as_f64().unwrap() > 0.9, "{r}");
    assert_eq!(r["paths"]["model"], 300);

    let o = run(&["--target", "seconds"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"seconds\" is not a column") && err.contains("when, model"),
        "{err}"
    );
    let o = run(&["--target", "secs", "--split", "1.5"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("between 0 and 1"));
}

#[test]
fn bench_replay_runs_a_trace_through_the_planner() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.csv");
    let pods = dir.path().join("pods.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn0,4000,16384,1,T4\nn1,8000,32768,0,\n",
    )
    .unwrap();
    // Two GPU pods of 100 s arrive together on a 1-GPU cluster: one waits 100 s. A pod that
    // needs 2 GPUs never fits. A half-GPU pod shares nothing with a whole one.
    let mut text = String::from(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    );
    text += "a,1000,1024,1,1000,,LS,Running,0,100,0\n";
    text += "b,1000,1024,1,1000,,LS,Running,0,100,0\n";
    text += "c,1000,1024,2,1000,,LS,Running,0,100,0\n";
    text += "d,500,512,0,0,,BE,Running,10,20,10\n";
    std::fs::write(&pods, text).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(support::BIN)
            .args(["bench", "replay", "--pods"])
            .arg(&pods)
            .arg("--nodes")
            .arg(&nodes)
            .args(extra)
            .output()
            .unwrap()
    };
    for policy in ["first-fit", "fitness"] {
        let o = run(&["--policy", policy, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["placed"], 3, "{r}");
        assert_eq!(r["never_fit"], 1, "{r}");
        assert_eq!(r["wait_secs_p99"], 100.0, "{r}");
        assert_eq!(r["makespan_secs"], 200.0, "{r}");
        assert_eq!(
            r["utilisation"]["gpu"], 1.0,
            "the GPU is busy all along: {r}"
        );
    }
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "name,cpu\nx,1\n").unwrap();
    let o = std::process::Command::new(support::BIN)
        .args(["bench", "replay", "--pods"])
        .arg(&bad)
        .arg("--nodes")
        .arg(&nodes)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no column \"cpu_milli\""));
}

#[tokio::test]
async fn predictions_come_from_the_execution_history() {
    let node = TestNode::start(&[]).await;
    // Nothing ran yet: the request stands.
    let (code, p) = node
        .post(
            "/api/v1/predict",
            json!({"command": ["sleep", "1"], "name": "slow"}),
        )
        .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["duration_secs"]["path"], "requested");
    let mut ids = Vec::new();
    for (name, secs) in [("quick", "0.1"), ("slow", "1.5")] {
        for _ in 0..3 {
            ids.push(
                node.submit(json!({"command": ["sleep", secs], "name": name, "cpu": "10m"}))
                    .await,
            );
        }
    }
    for id in ids {
        node.wait_state(id, TaskState::Succeeded).await;
    }
    let ask = |name: &str| node.cli(&["predict", "--name", name, "--json", "--", "sleep", "1"]);
    let read = |o: std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let slow = read(ask("slow"));
    let quick = read(ask("quick"));
    assert_eq!(slow["history_samples"], 6);
    // Few samples: per-key medians answer, with the path and a confidence.
    assert_eq!(slow["duration_secs"]["path"], "key_median", "{slow}");
    assert_eq!(slow["duration_secs"]["samples"], 3);
    let (s, q) = (
        slow["duration_secs"]["value"].as_f64().unwrap(),
        quick["duration_secs"]["value"].as_f64().unwrap(),
    );
    assert!(s >= 1.4 && q < s, "slow {s} s, quick {q} s");
    let c = slow["duration_secs"]["confidence"].as_f64().unwrap();
    assert!(c > 0.0 && c < 1.0, "{c}");
    let text = node.cli(&["predict", "--name", "slow", "--", "sleep", "1"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("via key_median"));
    // Bad input is explained.
    let (code, e) = node.post("/api/v1/predict", json!({"command": []})).await;
    assert_eq!(code, 400, "{e}");
}

#[tokio::test]
async fn the_queue_runs_shortest_predicted_first_within_a_priority() {
    // One core, one task at a time: the order of the queue is the order of the runs.
    let node = TestNode::start(&["--cpus", "1"]).await;
    let run = |name: &str, secs: &str| json!({"command": ["sleep", secs], "name": name, "cpu": 1});
    // History: "long" takes a second, "short" a tenth.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(node.submit(run("long", "1")).await);
        ids.push(node.submit(run("short", "0.1")).await);
    }
    for id in ids {
        node.wait_state(id, TaskState::Succeeded).await;
    }
    // The queue orders by the models the leader has trained (it retrains when due, checking
    // every second). Wait until they have learned all six runs and tell the names apart: asking
    // for a prediction trains them when due, and these are the models the queue then reads.
    let predict = async |task: serde_json::Value| {
        let (code, p) = node.post("/api/v1/predict", task).await;
        assert_eq!(code, 200, "{p}");
        p
    };
    let mut last = serde_json::Value::Null;
    let learned = wait_for(Duration::from_secs(30), async || {
        let long = predict(run("long", "1")).await;
        let short = predict(run("short", "0.1")).await;
        let secs = |p: &serde_json::Value| p["duration_secs"]["value"].as_f64();
        let ok = long["history_samples"] == 6
            && long["duration_secs"]["path"] != "requested"
            && short["duration_secs"]["path"] != "requested"
            && secs(&short) < secs(&long);
        last = json!({"long": long, "short": short});
        ok.then_some(())
    })
    .await;
    assert!(
        learned.is_some(),
        "the models never learned the history: {last:#}"
    );
    let gate = node.dir.path().join("gate");
    let blocker = node
        .submit(json!({"command": ["sh", "-c", format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())], "cpu": 1}))
        .await;
    node.wait_state(blocker, TaskState::Running).await;
    let l1 = node.submit(run("long", "1")).await;
    let l2 = node.submit(run("long", "1")).await;
    let s = node.submit(run("short", "0.1")).await;
    std::fs::write(&gate, "").unwrap();
    let started = |t: &TaskView| t.attempt(0).started_at.expect("it started");
    let short = node.wait_state(s, TaskState::Succeeded).await;
    let long1 = node.wait_state(l1, TaskState::Succeeded).await;
    let long2 = node.wait_state(l2, TaskState::Succeeded).await;
    assert!(
        started(&short) < started(&long1) && started(&short) < started(&long2),
        "the short task, submitted last, runs first: {}\n{}",
        show(&short),
        show(&long1)
    );
}

#[tokio::test]
async fn mem_auto_reserves_the_predicted_peak_and_says_so() {
    let node = TestNode::start(&[]).await;
    let task = json!({"command": ["sleep", "0.1"], "name": "probe", "cpu": "10m", "mem": "auto"});
    // No history yet: nothing reserved, and the label says why.
    let first = node.submit(task.clone()).await;
    let t = node.wait_state(first, TaskState::Succeeded).await;
    assert_eq!(t.task.spec.requirements.memory, Bytes(0));
    assert!(
        t.task
            .spec
            .labels
            .get("testmesh.mem_auto")
            .is_some_and(|l| l.contains("no history")),
        "{}",
        show(&t)
    );
    for _ in 0..3 {
        let id = node.submit(task.clone()).await;
        node.wait_state(id, TaskState::Succeeded).await;
    }
    // With history: the measured peak RSS plus headroom is reserved.
    let o = node.cli(&[
        "submit", "--name", "probe", "--mem", "auto", "--cpu", "10m", "--", "sleep", "0.1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let t = node.wait_state(id, TaskState::Succeeded).await;
    let reserved = t.task.spec.requirements.memory.0;
    let peak = t.outcome(0).peak_rss.0;
    assert!(reserved > 0, "{}", show(&t));
    assert!(
        reserved as f64 >= peak as f64 * 0.8,
        "reserved {reserved}, peak {peak}"
    );
    let why = t.task.spec.labels["testmesh.mem_auto"].as_str();
    assert!(
        why.contains("MiB reserved") && why.contains("KeyMedian"),
        "{why}"
    );
}

#[tokio::test]
async fn insights_report_patterns_efficiency_and_worker_types() {
    let node = TestNode::start(&["--simulate-gpus", "2xSim A100:40GiB"]).await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(
            node.submit(json!({"command": ["true"], "name": "unit", "cpu": "1", "mem": "1GiB"}))
                .await,
        );
    }
    done.push(
        node.submit(
            json!({"command": ["sleep", "1.5"], "name": "gpujob", "cpu": "10m",
            "gpus": 1, "env": {"TESTMESH_SIMULATED_GPU_MIB": "900"}}),
        )
        .await,
    );
    for id in done {
        node.wait_state(id, TaskState::Succeeded).await;
    }
    // Work no worker here can hold, queued anyway: what should we buy for it?
    node.submit_body(
        json!({"tasks": [{"command": ["true"], "name": "big", "gpus": 4, "cpu": "8",
            "mem": "64GiB"}], "allow_unschedulable": true}),
    )
    .await;

    let (code, v) = node.get("/api/v1/insights?window=10m").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["window_secs"], 600);
    let p = &v["patterns"];
    assert_eq!(p["submitted"], 7, "{p}");
    assert_eq!(p["durations"]["finished"], 6);
    assert_eq!(p["mix"]["one_gpu"], 1);
    assert_eq!(p["mix"]["multi_gpu"], 1);
    let e = &v["efficiency"];
    let names: Vec<&str> = e["by_task_name"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"unit") && names.contains(&"gpujob"),
        "{names:?}"
    );
    let gpujob = e["by_task_name"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "gpujob")
        .unwrap();
    assert_eq!(gpujob["gpu_memory_peak_mib"], 900.0, "{gpujob}");
    assert!(gpujob["gpu_reserved_hours"].as_f64().unwrap() > 0.0);
    let unit = e["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["task_name"] == "unit" && s["resource"] == "memory");
    assert!(unit.is_some(), "1 GiB for `true` is right-sized: {e}");
    assert_eq!(e["now"][0]["gpus"], 2);
    // ... and the predictor learned the GPU memory of GPU tasks.
    let (code, pv) = node
        .post(
            "/api/v1/predict",
            json!({"command": ["sleep", "1.5"], "name": "gpujob", "cpu": "10m", "gpus": 1}),
        )
        .await;
    assert_eq!(code, 200, "{pv}");
    assert_eq!(pv["peak_gpu_memory_mib"]["value"], 900.0, "{pv}");
    let (_, pv) = node
        .post(
            "/api/v1/predict",
            json!({"command": ["true"], "name": "unit"}),
        )
        .await;
    assert!(pv["peak_gpu_memory_mib"].is_null(), "{pv}");
    let r = &v["recommendations"];
    assert_eq!(r["basis"], "queued");
    assert_eq!(r["tasks"], 1);
    let best = r["best"].as_str().expect("a type that holds 4 GPUs");
    let first = &r["options"][0];
    assert_eq!(first["instance_type"], best);
    assert_eq!(first["not_held"], 0);
    assert!(r["why"].as_str().unwrap().contains(best), "{r}");

    // The CLI shows the same, and bad input is explained.
    let o = node.cli(&["insights", "--window", "10m"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for section in ["Workload, last 10m", "Efficiency", "Worker types", best] {
        assert!(out.contains(section), "{section} missing:\n{out}");
    }
    let (code, v) = node.get("/api/v1/insights?window=soon").await;
    assert_eq!(code, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("window"));
    let (code, _) = node.get("/api/v1/insights?windows=1h").await;
    assert_eq!(code, 400);
}
