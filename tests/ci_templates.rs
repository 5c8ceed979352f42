//! The CI templates in deploy/ci: each parses, and the shell it runs is run for real against a
//! node — a passing run file leaves JUnit results and exit 0, a failing one fails the step.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use support::{TestNode, show, wait_for};
use yaml_rust2::{Yaml, YamlLoader};

const CI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ci");

fn yaml(file: &str) -> Yaml {
    let src = std::fs::read_to_string(format!("{CI}/{file}")).unwrap();
    YamlLoader::load_from_str(&src)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .remove(0)
}

/// Runs `script` with bash in `dir`, with the testmesh binary on PATH and `env` set.
fn sh(script: &str, dir: &Path, node: &TestNode, env: &[(&str, &str)]) -> std::process::Output {
    let bin_dir = Path::new(support::BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut c = std::process::Command::new("bash");
    c.arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("TESTMESH_SERVER", &node.url)
        .env("TESTMESH_TOKEN", &node.token)
        .env("TESTMESH_RUN_FILE", "testmesh/run.toml");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A checkout with a run file whose one task runs `cmd`.
fn checkout(cmd: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("testmesh")).unwrap();
    std::fs::write(
        d.path().join("testmesh/run.toml"),
        format!("name = \"ci\"\n[task]\ncpu = \"10m\"\ncommand = [\"sh\", \"-c\", \"{cmd}\"]\n"),
    )
    .unwrap();
    d
}

fn check(script: &str, node: &TestNode, env: &[(&str, &str)]) {
    let syntax = std::process::Command::new("bash")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{script}: {:?}", syntax);
    let ok = checkout("echo fine");
    let o = sh(script, ok.path(), node, env);
    assert!(
        o.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let xml = std::fs::read_to_string(ok.path().join("testmesh-results.xml")).unwrap();
    assert!(
        xml.contains("<testcase ") && xml.contains("failures=\"0\""),
        "{xml}"
    );
    let json = std::fs::read_to_string(ok.path().join("testmesh-results.json")).unwrap();
    assert!(
        json.contains("abc123"),
        "the commit is in the run's metadata: {json}"
    );
    let bad = checkout("exit 3");
    let o = sh(script, bad.path(), node, env);
    assert!(!o.status.success(), "a failed task fails the step");
    assert!(
        bad.path().join("testmesh-results.xml").exists(),
        "results even so"
    );
}

#[tokio::test]
async fn the_ci_templates_parse_and_their_shell_runs_a_suite() {
    let node = TestNode::start(&[]).await;

    let gh = yaml("github-actions.yml");
    let steps = gh["jobs"]["suite"]["steps"]
        .as_vec()
        .expect("jobs.suite.steps");
    let run = steps
        .iter()
        .find(|s| s["name"].as_str() == Some("Run the suite on the mesh"))
        .and_then(|s| s["run"].as_str())
        .expect("the run step");
    for s in steps.iter().filter(|s| s["uses"].as_str().is_some()) {
        let uses = s["uses"].as_str().unwrap();
        assert!(uses.contains('@'), "{uses}: pin a version");
    }
    assert!(
        steps
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("Publish")))
            .all(|s| s["if"].as_str() == Some("always()")),
        "results are published when the suite fails too"
    );
    check(
        run,
        &node,
        &[
            ("GITHUB_SHA", "abc123"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "o/r"),
            ("GITHUB_RUN_ID", "1"),
        ],
    );

    let gl = yaml("gitlab-ci.yml");
    let job = &gl["testmesh"];
    assert_eq!(
        job["artifacts"]["reports"]["junit"].as_str(),
        Some("testmesh-results.xml")
    );
    assert_eq!(job["artifacts"]["when"].as_str(), Some("always"));
    let script: Vec<&str> = job["script"]
        .as_vec()
        .expect("testmesh.script")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    check(
        &script.join("\n"),
        &node,
        &[
            ("CI_COMMIT_SHA", "abc123"),
            ("CI_COMMIT_REF_NAME", "main"),
            ("CI_PIPELINE_URL", "https://gitlab.example.com/p/1"),
        ],
    );

    // Jenkinsfile is Groovy: check its shape, then run its shell step.
    let jf = std::fs::read_to_string(format!("{CI}/Jenkinsfile")).unwrap();
    assert_eq!(
        jf.matches('{').count(),
        jf.matches('}').count(),
        "balanced braces"
    );
    assert!(jf.contains("junit ") && jf.contains("always {"));
    let at = jf.find("sh '''").expect("a shell step") + 6;
    let block = &jf[at..at + jf[at..].find("'''").unwrap()];
    check(
        block,
        &node,
        &[
            ("GIT_COMMIT", "abc123"),
            ("BRANCH_NAME", "main"),
            ("BUILD_URL", "https://jenkins.example.com/job/1/"),
        ],
    );
}

#[tokio::test]
async fn the_grafana_dashboard_only_asks_for_metrics_the_nodes_serve() {
    let node = TestNode::start(&[
        "--simulate-gpus",
        "1xSim A100:40GiB",
        "--stats-interval",
        "200ms",
    ])
    .await;
    // Host and GPU series come from the node's latest statistics sample: wait for the first.
    let me = node.node_id();
    let sampled = wait_for(std::time::Duration::from_secs(10), async || {
        let st = node.stats().await;
        st.nodes
            .get(&me)
            .and_then(|n| n.latest.as_ref())
            .is_some_and(|p| !p.sample.gpus.is_empty())
            .then_some(())
    })
    .await;
    assert!(
        sampled.is_some(),
        "no statistics sample of this node with its GPU: {}",
        show(&node.stats().await)
    );
    let metrics = reqwest::get(format!("{}/metrics", node.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/testmesh.json"
    ))
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&src).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut names = std::collections::BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("testmesh_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    // These have series only once autoscaling has providers and instances: check that the
    // node defines them.
    let conditional = [
        "testmesh_provider_errors_total",
        "testmesh_scaling_instances",
    ];
    let source = include_str!("../node/src/api/metrics.rs");
    for n in &names {
        if conditional.contains(&n.as_str()) {
            let base = n.strip_suffix("_total").unwrap_or(n);
            assert!(
                source.contains(&format!("\"{base}\"")),
                "{n} is not defined"
            );
            continue;
        }
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{n} ")) || l.starts_with(&format!("{n}{{"))),
            "{n} is not served at /metrics:\n{metrics}"
        );
    }
    eprintln!("the dashboard uses {} metrics, all served", names.len());
}
