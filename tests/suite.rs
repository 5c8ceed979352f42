//! A real pytest suite run from a checkout that no worker can see: three nodes, each started
//! in a mount namespace where the checkout's directory is an empty tmpfs, so the only way the
//! tests reach them is the shipped archive. Per-test results against a local run, a second run
//! that ships nothing, artifacts, a timing split, and a lost worker that uses no retry.
//! The larger suite is more-itertools' own (its sdist, from PyPI; `.ci/run` fetches it).

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use support::{TestNode, text};
use testmesh::results::RunResults;
use testmesh_consensus::suite::TestResult;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/pysuite");
const XSD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/junit-10.xsd"
);
/// The more-itertools release whose sdist is the larger suite (765 tests).
const SDIST: &str = "more_itertools-11.2.1";

/// A Python with pytest: `TESTMESH_PYTHON`, else the venv `.ci/run` prepares.
fn python() -> Option<String> {
    let candidates = [
        std::env::var("TESTMESH_PYTHON").ok(),
        std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.cache/testmesh-venv/bin/python")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import pytest"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but no Python with pytest: set TESTMESH_PYTHON or run .ci/run"
        );
        eprintln!("skipped: no Python with pytest (set TESTMESH_PYTHON, or run .ci/run)");
    }
    found
}

fn sh(cmd: &str, dir: &Path) -> std::process::Output {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Per-test results of a local pytest run of `tests` in `dir`.
fn local_run(py: &str, dir: &Path, tests: &str) -> (BTreeMap<String, TestResult>, f64) {
    let started = Instant::now();
    let o = sh(
        &format!("{py} -m pytest -q -p no:cacheprovider --junitxml=local-junit.xml {tests}"),
        dir,
    );
    let secs = started.elapsed().as_secs_f64();
    let xml = std::fs::read_to_string(dir.join("local-junit.xml"))
        .unwrap_or_else(|_| panic!("no local JUnit:\n{}", text(&o)));
    std::fs::remove_file(dir.join("local-junit.xml")).unwrap();
    let cases = testmesh::core::artifacts::parse_junit(&xml).unwrap();
    (
        cases.into_iter().map(|c| (c.id(), c.result)).collect(),
        secs,
    )
}

/// Three nodes that cannot see `hidden` (an empty tmpfs is mounted over it in their mount
/// namespace). `extra`: more node flags.
async fn blind_cluster(hidden: &Path, extra: &[&str]) -> Vec<TestNode> {
    let wrap = |n: &mut TestNode| {
        n.wrap = vec![
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "mount -t tmpfs testmesh-hidden {} && exec \"$0\" \"$@\"",
                hidden.display()
            ),
        ];
    };
    let mut first = TestNode::unstarted(extra);
    wrap(&mut first);
    first.spawn().await;
    let key = first.data_dir().join("swarm.key");
    let join = first.mesh_addr();
    let mut nodes = vec![first];
    for _ in 1..3 {
        let mut args = vec!["--swarm-key", key.to_str().unwrap(), "--join", &join];
        args.extend_from_slice(extra);
        let mut n = TestNode::unstarted(&args);
        wrap(&mut n);
        n.spawn().await;
        nodes.push(n);
    }
    for n in &nodes {
        support::wait_workers(n, 3).await;
    }
    nodes
}

fn copy_tree(from: &Path, to: &Path) {
    let o = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Bytes of shipped code a node fetched from others (its /metrics).
async fn fetched(n: &TestNode) -> u64 {
    let (_, m) = n.get_text("/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix("testmesh_code_fetched_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no testmesh_code_fetched_bytes in /metrics:\n{m}")) as u64
}

/// Bytes of shipped code all of `nodes` fetched.
async fn fetched_by_all(nodes: &[TestNode]) -> u64 {
    let mut n = 0;
    for node in nodes {
        n += fetched(node).await;
    }
    n
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn results(path: &Path) -> RunResults {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn by_test(r: &RunResults) -> BTreeMap<String, TestResult> {
    r.tests.iter().map(|t| (t.id.clone(), t.result)).collect()
}

/// `testmesh run` of the pytest suite in `checkout` split by timings into 3 shards.
fn run_suite(
    n: &TestNode,
    py: &str,
    checkout: &Path,
    name: &str,
    json: &Path,
    extra: &[&str],
) -> (std::process::Output, f64) {
    let at = CliAt {
        url: n.url.clone(),
        token: n.token.clone(),
    };
    at.run(py, checkout, name, json, extra)
}

/// The CLI against a node, usable from a thread while the test drives the nodes.
struct CliAt {
    url: String,
    token: String,
}

impl CliAt {
    /// The suite split by timings into 3 shards, each shard's pytest output kept as an
    /// artifact; the output and the wall time.
    fn run(
        &self,
        py: &str,
        checkout: &Path,
        name: &str,
        json: &Path,
        extra: &[&str],
    ) -> (std::process::Output, f64) {
        let collect = format!("{py} -m pytest --collect-only -q -p no:cacheprovider tests");
        let cmd = format!(
            "mkdir -p reports && {py} -m pytest -q -p no:cacheprovider --junitxml=junit-{{shard}}.xml $(cat {{tests_file}}) > reports/pytest-{{shard}}.txt 2>&1; s=$?; tail -3 reports/pytest-{{shard}}.txt; exit $s"
        );
        let mut args = vec![
            "run",
            "--workdir",
            checkout.to_str().unwrap(),
            "--shards",
            "3",
            "--cpu",
            "2",
            "--split-by",
            "timings",
            "--tests-from",
            &collect,
            "--junit-from",
            "junit-*.xml",
            "--artifacts",
            "reports/*.txt",
            "--name",
            name,
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend(["--", "sh", "-c", &cmd]);
        let started = Instant::now();
        let o = std::process::Command::new(support::BIN)
            .args(&args)
            .env("TESTMESH_SERVER", &self.url)
            .env("TESTMESH_TOKEN", &self.token)
            .output()
            .unwrap();
        (o, started.elapsed().as_secs_f64())
    }
}

#[tokio::test]
async fn a_checkout_no_worker_sees_runs_split_by_timings_with_per_test_results() {
    let Some(py) = python() else { return };
    let checkout_parent = tempfile::tempdir().unwrap();
    let checkout = checkout_parent.path().join("repo");
    std::fs::create_dir(&checkout).unwrap();
    copy_tree(Path::new(FIXTURE), &checkout);
    let (local, _) = local_run(&py, &checkout, "tests");
    assert_eq!(local.len(), 29, "{local:?}");

    let nodes = blind_cluster(checkout_parent.path(), &["--dead-after", "3s"]).await;
    // The workers really cannot see the checkout.
    let probe = nodes[0]
        .submit(serde_json::json!({"command": ["test", "-e", checkout.join("tests").to_str().unwrap()]}))
        .await;
    let t = nodes[0]
        .wait_task(probe, 30, |t| t.task.state.is_final())
        .await;
    assert_eq!(
        t.task.state,
        testmesh_consensus::task::TaskState::Failed,
        "a worker saw the checkout"
    );

    let out = tempfile::tempdir().unwrap();
    // First run: nothing known yet, the split is by count (and says so).
    let j1 = out.path().join("r1.json");
    let junit = out.path().join("r1.xml");
    let (o, secs1) = run_suite(
        &nodes[0],
        &py,
        &checkout,
        "pysuite",
        &j1,
        &[
            "--env",
            "PYSUITE_FLAKY=1",
            "--retries",
            "1",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let out1 = text(&o);
    eprintln!("run 1 ({secs1:.1} s):\n{out1}");
    assert_eq!(o.status.code(), Some(1), "a failing test fails the run");
    assert!(out1.contains("uploaded"), "{out1}");
    assert!(
        out1.contains("29 of 29 tests had no recorded duration"),
        "{out1}"
    );
    let r1 = results(&j1);
    assert_eq!(by_test(&r1), local, "the shards together are the local run");
    assert_eq!(r1.test_counts.total, 29);
    assert_eq!(r1.test_counts.failed, 1);
    let flaky: Vec<&str> = r1
        .tests
        .iter()
        .filter(|t| t.flaky)
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(
        flaky,
        ["tests.test_flaky.test_fails_on_first_attempt_only"],
        "flaky at test level"
    );
    // The merged JUnit: one testcase per test, valid against the JUnit schema.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 29, "{xml}");
    assert!(
        xml.contains("<flakyFailure") && xml.contains("test_always_fails"),
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
    let workers: std::collections::BTreeSet<_> = r1.tests.iter().map(|t| t.worker).collect();
    assert_eq!(workers.len(), 3, "every worker ran a shard");
    let shipped = fetched_by_all(&nodes).await;
    assert!(shipped > 0, "the workers fetched the code");

    // The dashboard's runs pages: the run listed, its tests with the failure first.
    let (code, list) = nodes[2].get_text("/dashboard/runs").await;
    assert_eq!(code, 200, "{list}");
    assert!(
        list.contains("pysuite") && list.contains(&format!("/dashboard/runs/{}", r1.run)),
        "{list}"
    );
    let (code, page) = nodes[2]
        .get_text(&format!("/dashboard/runs/{}", r1.run))
        .await;
    assert_eq!(code, 200, "{page}");
    let first_row = page
        .find("<tr class=")
        .and_then(|_| page.find("id=tests"))
        .map(|i| &page[i..])
        .unwrap_or("");
    let failed_at = first_row.find("test_always_fails").unwrap_or(usize::MAX);
    let passed_at = first_row.find("<tr class=passed>").unwrap_or(usize::MAX);
    assert!(
        failed_at < passed_at && passed_at < usize::MAX,
        "failures first:\n{page}"
    );

    // Artifacts come back.
    let art = out.path().join("art");
    let id = r1.run.to_string();
    let o = nodes[1].cli(&["runs", "artifacts", &id, "--out", art.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let files: Vec<String> = walk(&art);
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".xml")).count(),
        3,
        "{files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.contains("reports/pytest-"))
            .count(),
        3,
        "{files:?}"
    );
    let some = files
        .iter()
        .find(|f| f.contains("reports/pytest-"))
        .unwrap();
    assert!(
        std::fs::read_to_string(art.join(some))
            .unwrap()
            .contains("passed"),
        "the artifact is the shard's pytest output"
    );

    // Second run of the same tree: nothing uploaded, nothing fetched, split by timings.
    let j2 = out.path().join("r2.json");
    let (o, secs2) = run_suite(&nodes[0], &py, &checkout, "pysuite", &j2, &[]);
    let out2 = text(&o);
    eprintln!("run 2 ({secs2:.1} s):\n{out2}");
    assert!(out2.contains("nothing to upload"), "{out2}");
    assert!(out2.contains("durations of run(s)"), "{out2}");
    let again = fetched_by_all(&nodes).await;
    assert_eq!(
        again, shipped,
        "a second run of the same tree fetches nothing"
    );
    let r2 = results(&j2);
    assert_eq!(by_test(&r2), local);
    let balance = r2.shard_balance.unwrap();
    eprintln!(
        "shard balance (slowest / mean): run 1 {:.2} (by count), run 2 {balance:.2} (by timings, predicted {})",
        r1.shard_balance.unwrap(),
        r2.metadata["split.predicted_balance"]
    );
    assert!(
        balance <= 1.15,
        "timing-split shards within 15 % of the mean: {balance:.2}"
    );

    // An infrastructure failure: a worker dies mid-run. Its shard runs again elsewhere without
    // using a retry (there are none) and nothing is flaky.
    let j3 = out.path().join("r3.json");
    let mut victim = nodes.into_iter();
    let n0 = victim.next().unwrap();
    let n1 = victim.next().unwrap();
    let mut n2 = victim.next().unwrap();
    let py2 = py.clone();
    let checkout2 = checkout.clone();
    let j3c = j3.clone();
    let url = n0.url.clone();
    let token = n0.token.clone();
    let runner = std::thread::spawn(move || {
        let n = CliAt { url, token };
        n.run(&py2, &checkout2, "pysuite", &j3c, &[]).0
    });
    // Kill the third node once its shard is under way (its attempt's directory exists).
    let work = n2.data_dir().join("work");
    support::wait_for(std::time::Duration::from_secs(60), async || {
        std::fs::read_dir(&work)
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| ())
    })
    .await
    .expect("a shard ran on the third node");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    n2.kill9();
    let o = runner.join().unwrap();
    let out3 = text(&o);
    eprintln!("run 3 (a worker killed):\n{out3}");
    let r3 = results(&j3);
    assert_eq!(by_test(&r3), local, "nothing lost with the worker");
    assert_eq!(r3.summary.flaky, 0, "{out3}");
    assert_eq!(r3.test_counts.flaky, 0, "{out3}");
    let moved: Vec<_> = r3.tasks.iter().filter(|t| t.attempts.len() > 1).collect();
    assert_eq!(
        moved.len(),
        1,
        "the killed worker's shard ran again: {out3}"
    );
    assert_eq!(moved[0].attempts[0].kind, "infrastructure");
    assert_ne!(moved[0].attempts[1].kind, "infrastructure");
    drop((n0, n1));
}

/// Files under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The larger suite: more-itertools' own tests from its sdist (765 tests), locally and on
/// three nodes split by count then by timings. Prints the wall times (docs/benchmarks.md).
#[tokio::test]
async fn a_pypi_sdist_suite_gives_the_local_results_on_three_nodes() {
    let Some(py) = python() else { return };
    let sdist = std::env::var("TESTMESH_PYSUITE_SDIST").ok().or_else(|| {
        std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.cache/testmesh-pysuite/{SDIST}.tar.gz"))
    });
    let sdist = sdist.filter(|p| Path::new(p).exists());
    let Some(sdist) = sdist else {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but the {SDIST} sdist is missing (run .ci/run)"
        );
        eprintln!(
            "skipped: the {SDIST} sdist is missing (set TESTMESH_PYSUITE_SDIST or run .ci/run)"
        );
        return;
    };
    let parent = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("tar")
        .args(["xzf", &sdist, "-C"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let checkout = parent.path().join(SDIST);
    let (local, local_secs) = local_run(&py, &checkout, "tests");
    assert!(local.len() >= 700, "{} tests", local.len());

    let nodes = blind_cluster(parent.path(), &[]).await;
    let out = tempfile::tempdir().unwrap();
    let mut secs = Vec::new();
    let mut balances = Vec::new();
    let (mut first_start, mut shipped) = (Vec::new(), Vec::new());
    for i in 0..2 {
        let j = out.path().join(format!("r{i}.json"));
        let before = unix_ms();
        let (o, s) = run_suite(&nodes[0], &py, &checkout, "more-itertools", &j, &[]);
        let r = results(&j);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            by_test(&r),
            local,
            "run {i}: the shards together are the local run"
        );
        secs.push(s);
        balances.push(r.shard_balance.unwrap());
        // From `testmesh run` to the first shard's process (packing, upload, split, fetch).
        let first = r
            .tasks
            .iter()
            .flat_map(|t| t.attempts.iter().filter_map(|a| a.started_at))
            .min()
            .unwrap();
        first_start.push(first.saturating_sub(before) as f64 / 1000.0);
        shipped.push(fetched_by_all(&nodes).await);
    }
    assert_eq!(shipped[0], shipped[1], "the second run fetched nothing");
    let bytes = shipped[0];
    eprintln!(
        "more-itertools ({} tests): local {local_secs:.1} s; 3 nodes split by count {:.1} s (slowest/mean {:.2}); by timings {:.1} s (slowest/mean {:.2}); code fetched by the workers {bytes} bytes in all (none on the second run); first shard started {:.2} s after `testmesh run` with no cache, {:.2} s with one",
        local.len(),
        secs[0],
        balances[0],
        secs[1],
        balances[1],
        first_start[0],
        first_start[1]
    );
}
