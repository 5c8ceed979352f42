//! Observability of a real node: `/metrics` in Prometheus' exposition format, checked by
//! Prometheus' own `promtool check metrics`.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::{TestNode, wait_for};
use testmesh::core::dto::StatusView;
use testmesh_consensus::task::TaskState;

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
    node.wait_state(id, TaskState::Succeeded).await;
    let me = node.node_id();
    // Gossip of this node's own sample arrives within a stats interval.
    let mut last = String::new();
    let text = wait_for(std::time::Duration::from_secs(30), async || {
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
            return Some(t);
        }
        last = t;
        None
    })
    .await
    .unwrap_or_else(|| panic!("no sample of this node in the metrics:\n{last}"));
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

#[tokio::test]
async fn loopback_refuses_foreign_hosts_and_cross_site_writes() {
    let node = TestNode::start(&[]).await;
    let http = reqwest::Client::new();
    // DNS rebinding: a name that resolves here but is not ours.
    let r = http
        .get(format!("{}/api/v1/status", node.url))
        .header("host", "evil.example:7070")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("loopback only"));
    // A page elsewhere posting with the token (say, stolen into a form): refused.
    let task = json!({"tasks": [{"command": ["true"], "cpu": "10m"}]});
    let r = http
        .post(format!("{}/api/v1/tasks", node.url))
        .bearer_auth(&node.token)
        .header("origin", "https://evil.example")
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The node's own pages (same origin) and the CLI (no Origin) may.
    let r = http
        .post(format!("{}/api/v1/tasks", node.url))
        .bearer_auth(&node.token)
        .header("origin", node.url.clone())
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (code, s) = node.get_as::<StatusView>("/api/v1/status").await;
    assert_eq!(code, 200, "reads on loopback need no token");
    assert_eq!(s.node_id, node.node_id());
}

#[tokio::test]
async fn beyond_loopback_reads_need_the_token_unless_public() {
    let node = TestNode::start(&["--http", "0.0.0.0:0", "--insecure-http"]).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(format!("{}{path}", node.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    let r = get("/api/v1/status", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("--public-dashboard"));
    assert_eq!(
        get("/api/v1/status", Some(&node.token))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get("/", None).await.unwrap().status(), 401);
    // A browser passes the token once; the cookie carries it afterwards.
    let r = get(&format!("/?token={}", node.token), None).await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(&node.token),
        "the cookie is a read-only session, not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = http
        .get(format!("{}/", node.url))
        .header("cookie", pair.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/api/v1/tasks", node.url))
        .header("cookie", pair)
        .json(&json!({"tasks": [{"command": ["true"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a session cookie cannot change anything");
    // The CLI sends the token on reads too.
    let o = node.cli(&["status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let public = TestNode::start(&[
        "--http",
        "0.0.0.0:0",
        "--insecure-http",
        "--public-dashboard",
    ])
    .await;
    let r = reqwest::get(format!("{}/api/v1/status", public.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "public reads");
    let r = http
        .post(format!("{}/api/v1/tasks", public.url))
        .json(&json!({"tasks": [{"command": ["true"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "writes still need the token");
    // DNS rebinding: a page on another site whose name resolves here sends its own Host.
    let r = http
        .get(format!("{}/api/v1/status", public.url))
        .header("host", "evil.example:7070")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a public dashboard answers to its own names only"
    );
}
