//! Observability of a real node: `/metrics` in Prometheus' exposition format, checked by
//! Prometheus' own `promtool check metrics`.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::TestNode;

fn promtool_available() -> bool {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("skipped the promtool check: promtool is not installed");
    }
    ok
}

#[tokio::test]
async fn metrics_describe_the_cluster_and_pass_promtool() {
    let node = TestNode::start(&["--simulate-gpus", "1xSim A100:40GiB"]).await;
    let id = node
        .submit(json!({"command": ["true"], "name": "probe", "cpu": "10m"}))
        .await;
    node.wait_state(id, "succeeded").await;
    let me = node.node_id();
    // Gossip of this node's own sample arrives within a stats interval.
    let text = loop {
        let r = reqwest::Client::new()
            .get(format!("{}/metrics", node.url))
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let t = r.text().await.unwrap();
        if t.contains("testmesh_node_cpu_usage_ratio{") {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for want in [
        "testmesh_raft_is_leader 1".to_string(),
        "testmesh_raft_voters 1".to_string(),
        "testmesh_tasks{state=\"succeeded\"} 1".to_string(),
        "testmesh_tasks_submitted_total 1".to_string(),
        "testmesh_attempts_finished_total 1".to_string(),
        "testmesh_queue_pending_tasks 0".to_string(),
        format!("testmesh_node_memory_total_bytes{{node=\"{me}\"}}"),
        format!("testmesh_gpu_memory_total_bytes{{node=\"{me}\",gpu=\"0\",model=\"Sim A100\"}}"),
        "testmesh_worker_cpu_cores{".to_string(),
        "# HELP testmesh_raft_term Current Raft term.\n".to_string(),
        "# EOF".to_string(),
    ] {
        assert!(text.contains(&want), "{want} missing from:\n{text}");
    }
    // Without asking for OpenMetrics: the classic text format, which promtool lints.
    let r = reqwest::get(format!("{}/metrics", node.url)).await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE testmesh_tasks_submitted_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    if !promtool_available() {
        return;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
