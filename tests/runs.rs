//! Runs end to end: a real test suite sharded across a three-node loopback mesh, results with
//! provenance, JUnit checked against the JUnit XML schema, flaky tasks, metrics, and bad input
//! refused before anything is submitted.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use support::{TaskViewExt, TestNode, show, text};
use testmesh::core::dto::RunView;
use testmesh::results::{RunResults, TaskResult};
use testmesh_consensus::NodeId;
use testmesh_consensus::task::TaskState;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/suite.py");
const XSD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/junit-10.xsd"
);

/// PASS/FAIL lines of the suite's output.
fn cases(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_suite_sharded_across_three_nodes_gives_the_results_of_a_local_run() {
    if !support::tool_or_skip("python3", "python3") {
        return;
    }
    let local = std::process::Command::new("python3")
        .arg(SUITE)
        .output()
        .unwrap();
    assert!(!local.status.success(), "the suite has failing cases");
    let expected = cases(&String::from_utf8_lossy(&local.stdout));
    assert_eq!(expected.len(), 24);

    let nodes = support::cluster(3).await;
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("results.json");
    let started = Instant::now();
    // Two cores each: one shard per worker.
    let o = nodes[0].cli(&[
        "run",
        "--shards",
        "3",
        "--cpu",
        "2",
        "--name",
        "suite",
        "--meta",
        "commit=abc123",
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--",
        "python3",
        SUITE,
        "--shard-id={shard}",
        "--num-shards={shards}",
    ]);
    eprintln!(
        "sharded suite on 3 nodes: {:.2} s wall (CLI start to exit)",
        started.elapsed().as_secs_f64()
    );
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "failing cases fail the run:\n{out}"
    );
    assert!(
        out.contains("FAILED") && out.contains("python3 shard 3/3"),
        "{out}"
    );

    let body = std::fs::read_to_string(&json).unwrap();
    let r: RunResults = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("the results file is not a RunResults: {e}\n{body}"));
    assert_eq!(r.metadata.get("commit").map(String::as_str), Some("abc123"));
    let tasks = &r.tasks;
    assert_eq!(tasks.len(), 3);
    let mut union = BTreeSet::new();
    let mut workers = BTreeSet::new();
    for t in tasks {
        union.extend(cases(&t.stdout_tail));
        let a = &t.attempts[0];
        workers.insert(a.worker.clone());
        // Provenance of every attempt.
        assert!(!a.provenance.hostname.is_empty(), "{a:?}");
        assert!(a.provenance.version.starts_with("0."), "{a:?}");
        assert!(a.started_at.is_some() && a.finished_at.is_some(), "{a:?}");
        assert!(a.exit_code.is_some(), "{a:?}");
        assert_eq!(
            t.metrics.first().map(|m| m.name.as_str()),
            Some("failed_cases"),
            "{t:?}"
        );
    }
    assert_eq!(
        union, expected,
        "the shards together ran the suite exactly once"
    );
    assert_eq!(workers.len(), 3, "one shard per worker");
    let failed: Vec<&TaskResult> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Failed)
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "cases 05 and 16 sit in two different shards"
    );

    // JUnit: valid against the schema Jenkins uses, one testcase per task.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 3);
    assert!(
        xml.contains("failures=\"2\"") && xml.contains("commit"),
        "{xml}"
    );
    if support::tool_or_skip("xmllint", "libxml2-utils") {
        let v = std::process::Command::new("xmllint")
            .args(["--noout", "--schema", XSD])
            .arg(&junit)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}\n{xml}", text(&v));
    }

    // The list, the badge.
    let runs: Vec<RunView> = nodes[1].get_ok("/api/v1/runs").await;
    assert_eq!(runs[0].name, "suite");
    assert_eq!(runs[0].summary.failed, 2, "{runs:?}");
    let id = runs[0].run;
    let badge = reqwest::get(format!("{}/api/v1/runs/{id}/badge.svg", nodes[2].url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(badge.contains("failed 2/3"), "{badge}");
}

#[tokio::test]
async fn a_flaky_task_is_reported_as_flaky_and_metrics_are_collected() {
    let node = TestNode::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("tried");
    let run_file = dir.path().join("run.toml");
    std::fs::write(
        &run_file,
        format!(
            r#"
name = "flaky-and-bench"
[metadata]
branch = "main"
[matrix]
kind = ["flaky", "bench"]
[task]
name = "{{kind}}"
cpu = "10m"
retries = 1
command = ["sh", "-c", "if [ {{kind}} = flaky ] && [ ! -f {m} ]; then touch {m}; exit 1; fi; echo 'TESTMESH_METRIC throughput=1532.5 samples/s'; echo 'TESTMESH_METRIC latency_p99=12 ms'"]
"#,
            m = marker.display()
        ),
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let o = node.cli(&[
        "run",
        "--file",
        run_file.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "a flaky task still passes:\n{out}");
    assert!(out.contains("flaky") && out.contains("PASSED"), "{out}");
    let id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let r: RunResults = node.get_ok(&format!("/api/v1/runs/{id}")).await;
    let task = |name: &str| {
        r.tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name} in {r:?}"))
    };
    let flaky = task("flaky");
    assert!(flaky.flaky, "{flaky:?}");
    assert_eq!(flaky.retries, 1);
    assert_eq!(flaky.attempts[0].state, Some(TaskState::Failed));
    let bench = task("bench");
    assert!(!bench.flaky, "{bench:?}");
    assert_eq!(bench.metrics[0].name, "throughput");
    assert_eq!(bench.metrics[0].value, 1532.5);
    assert_eq!(bench.metrics[0].unit, "samples/s");
    assert_eq!(bench.metrics[1].name, "latency_p99");
    assert_eq!(r.summary.flaky, 1);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<flakyFailure"), "{xml}");
    if support::tool_or_skip("xmllint", "libxml2-utils") {
        let v = std::process::Command::new("xmllint")
            .args(["--noout", "--schema", XSD])
            .arg(&junit)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}\n{xml}", text(&v));
    }
    let badge = reqwest::get(format!("{}/api/v1/runs/{id}/badge.svg", node.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(badge.contains("passed, 1 flaky"), "{badge}");

    // The run's report: HTML and PDF, with the results, the metrics and where they ran.
    let html = dir.path().join("run.html");
    let o = node.cli(&["report", "--run", &id, "--out", html.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(&html).unwrap();
    for part in [
        "<table id=task-results>",
        "<table id=metrics>",
        "<table id=provenance>",
        "throughput",
        "1532.5",
        "branch",
        "flaky",
    ] {
        assert!(html.contains(part), "{part}: {html}");
    }
    let pdf = dir.path().join("run.pdf");
    let o = node.cli(&["report", "--run", &id, "--out", pdf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    if support::tool_or_skip("pdftotext", "poppler-utils") {
        let t = std::process::Command::new("pdftotext")
            .arg(&pdf)
            .arg("-")
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&t.stdout);
        assert!(
            t.contains("Task results") && t.contains("throughput"),
            "{t}"
        );
    }
    // The same file again, then the two runs' metrics side by side.
    let o = node.cli(&["run", "--file", run_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let second = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let o = node.cli(&["runs", "compare", &id, &second]);
    let cmp = text(&o);
    assert!(o.status.success(), "{cmp}");
    assert!(
        cmp.contains("throughput") && cmp.contains("+0.0%") && cmp.contains("run time"),
        "{cmp}"
    );
    let o = node.cli(&["report", "--run", "999", "--out", "/tmp/r.html"]);
    assert!(text(&o).contains("run 999 does not exist"), "{}", text(&o));
}

#[tokio::test]
async fn bad_runs_are_explained_before_anything_is_submitted() {
    let node = TestNode::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = |body: &str| {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, body).unwrap();
        let o = node.cli(&["run", "--file", f.to_str().unwrap()]);
        assert!(!o.status.success());
        text(&o)
    };
    let e = bad("name = \"x\"\n[task]\ncommand = [\"echo\", \"{nope}\"]\n");
    assert!(
        e.contains("line 3") && e.contains("unknown placeholder {nope}"),
        "{e}"
    );
    let e = bad("name = \"x\"\n[task]\ncommand = [\"true\"]\ncpu = \"many\"\n");
    assert!(e.contains("cpu"), "{e}");
    let e = bad(
        "name = \"x\"\n[matrix]\na = [1,2,3,4,5,6,7,8,9,10,11]\nb = [1,2,3,4,5,6,7,8,9,10]\nc = [1,2,3,4,5,6,7,8,9,10]\n[task]\ncommand = [\"true\"]\n",
    );
    assert!(e.contains("1100 tasks") && e.contains("cap is 1000"), "{e}");
    let e = bad("name = \"x\"\n[task]\ncommand = [\"true\"]\ngpus = 8\n");
    assert!(
        e.contains("nothing was submitted") && e.contains("GPU"),
        "{e}"
    );
    let o = node.cli(&["run", "--shards", "0", "--", "true"]);
    assert!(text(&o).contains("at least 1"), "{}", text(&o));
    let o = node.cli(&["run", "--shards", "2", "--", "echo", "{shardid}"]);
    assert!(
        text(&o).contains("unknown placeholder {shardid}"),
        "{}",
        text(&o)
    );
    let runs: Vec<RunView> = node.get_ok("/api/v1/runs").await;
    assert!(runs.is_empty(), "nothing was submitted: {runs:?}");
    let tasks = node.tasks("").await;
    assert!(tasks.tasks.is_empty(), "{tasks:?}");
    let (code, v) = node.get("/api/v1/runs/77").await;
    assert_eq!(code, 404, "{v}");
}

#[tokio::test]
async fn a_worker_failing_every_task_is_quarantined_and_the_run_completes_on_the_others() {
    let first = TestNode::start(&[]).await;
    let key = first.data_dir().join("swarm.key");
    let join = first.mesh_addr();
    let args = ["--swarm-key", key.to_str().unwrap(), "--join", &join];
    let second = TestNode::start(&args).await;
    // Every task this node runs fails: its environment (passed on to tasks) breaks them. Each
    // task takes a whole worker (two cores), so every worker gets some.
    let mut broken_args = args.to_vec();
    broken_args.extend(["--pass-env", "TESTMESH_TEST_BROKEN"]);
    let broken = TestNode::start_env(&broken_args, &[("TESTMESH_TEST_BROKEN", "1")]).await;
    let nodes = [first, second, broken];
    for n in &nodes {
        support::wait_workers(n, 3).await;
    }
    let bad = nodes[2].node_id();
    let bad_id: NodeId = nodes[2].id();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("run.toml");
    std::fs::write(
        &f,
        r#"
name = "with-a-bad-worker"
[matrix]
case = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
[task]
name = "check"
cpu = "2"
retries = 4
command = ["sh", "-c", "test -z \"$TESTMESH_TEST_BROKEN\" && sleep 0.2"]
"#,
    )
    .unwrap();
    let o = nodes[0].cli(&["run", "--file", f.to_str().unwrap()]);
    let out = text(&o);
    assert!(
        o.status.success(),
        "the run completes on the others:\n{out}"
    );
    let ws = nodes[0].workers().await;
    let w = nodes[0].worker(bad_id).await.worker;
    assert!(
        w.quarantine
            .as_ref()
            .is_some_and(|q| q.reason.contains("other workers")),
        "{w:?}\n{out}"
    );
    assert_eq!(w.record.succeeded, 0, "{w:?}");
    for healthy in ws.iter().filter(|w| w.worker.id != bad_id) {
        assert!(healthy.worker.quarantine.is_none(), "{healthy:?}");
    }
    let listed = text(&nodes[1].cli(&["workers"]));
    assert!(
        listed.contains("QUARANTINED") && listed.contains(&bad),
        "{listed}"
    );
    let (_, page) = (
        0,
        reqwest::get(&nodes[1].url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(page.contains("class=quarantined"), "on the dashboard");

    // Nothing new lands there while it is quarantined.
    let id = nodes[0]
        .submit(serde_json::json!({"command": ["true"], "cpu": "10m"}))
        .await;
    let done = nodes[0].wait_state(id, TaskState::Succeeded).await;
    assert_ne!(done.attempt(0).worker, bad_id, "{}", show(&done));

    // An operator clears it; its record starts afresh.
    let o = nodes[0].cli(&["unquarantine", &bad]);
    assert!(o.status.success(), "{}", text(&o));
    let w = nodes[0].worker(bad_id).await.worker;
    assert!(w.quarantine.is_none() && w.record.failed == 0, "{w:?}");
    let o = nodes[0].cli(&["unquarantine", &bad]);
    assert!(text(&o).contains("not quarantined"), "{}", text(&o));
}
