//! Secret task environment: the task gets the value; no read path shows it (API, CLI, JUnit and
//! JSON exports, reports, dashboard pages, the node's log). The node's own environment stays out
//! of tasks except what `--pass-env` names.

mod support;

use std::process::Command;

use support::{BIN, TestNode, text};

const SECRET: &str = "hunter2-0a9f3c-do-not-print";
const NODE_CREDENTIAL: &str = "node-cloud-credential-77e1";

#[tokio::test]
async fn secret_values_reach_the_task_and_no_read_path() {
    let node = TestNode::start_env(
        &["--pass-env", "NCCL_*"],
        &[
            ("AWS_SECRET_ACCESS_KEY", NODE_CREDENTIAL),
            ("NCCL_DEBUG", "INFO"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let script = format!("env > {}", out.display());
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("results.json");
    // A run with a secret taken from the CLI's environment (the way CI hands out secrets) and a
    // plain variable; exported as JUnit and JSON.
    let run = Command::new(BIN)
        .args(["run", "--name", "secrets", "--secret-env", "API_KEY"])
        .args(["--env", "PLAIN=visible", "--junit"])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .args(["--", "sh", "-c", &script])
        .env("TESTMESH_SERVER", &node.url)
        .env("TESTMESH_TOKEN", &node.token)
        .env("API_KEY", SECRET)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    assert!(!text(&run).contains(SECRET), "{}", text(&run));

    // The task saw the secret and the plain variable, the variable --pass-env let through, and
    // not the node's credential.
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(env.contains(&format!("API_KEY={SECRET}")), "{env}");
    assert!(env.contains("PLAIN=visible"), "{env}");
    assert!(env.contains("NCCL_DEBUG=INFO"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains(NODE_CREDENTIAL), "{env}");

    // A single task with a secret given on the command line.
    let submit = node.cli(&[
        "submit",
        "--wait",
        "--secret-env",
        &format!("OTHER={SECRET}"),
        "--",
        "true",
    ]);
    assert!(submit.status.success(), "{}", text(&submit));

    // Every read path: the API, the CLI, the exports, the reports, the dashboard, the log.
    let tasks = node.tasks("").await;
    assert_eq!(tasks.tasks.len(), 2);
    let mut seen = Vec::new();
    for t in &tasks.tasks {
        let id = t.task.id.0;
        for path in [
            format!("/api/v1/tasks/{id}"),
            format!("/dashboard/tasks/{id}"),
            format!("/api/v1/tasks/{id}/logs"),
        ] {
            seen.push((path.clone(), node.get_text(&path).await.1));
        }
        let cli = node.cli(&["task", &id.to_string()]);
        seen.push((format!("testmesh task {id}"), text(&cli)));
        let cli = node.cli(&["task", &id.to_string(), "--json"]);
        seen.push((format!("testmesh task {id} --json"), text(&cli)));
    }
    let view = node.get_text("/api/v1/tasks/1").await.1;
    assert!(
        view.contains("<redacted>"),
        "the key is listed, its value is not: {view}"
    );
    for path in [
        "/api/v1/tasks",
        "/api/v1/runs",
        "/api/v1/runs/1",
        "/api/v1/runs/1/summary",
        "/api/v1/runs/1/junit.xml",
        "/api/v1/runs/1/report.html",
        "/dashboard/tasks",
        "/",
        "/dashboard/report.html",
    ] {
        seen.push((path.to_string(), node.get_text(path).await.1));
    }
    for args in [
        &["tasks", "--json"][..],
        &["runs", "show", "1", "--json"][..],
        &["status"][..],
    ] {
        seen.push((format!("testmesh {args:?}"), text(&node.cli(args))));
    }
    seen.push(("junit".into(), std::fs::read_to_string(&junit).unwrap()));
    seen.push(("json".into(), std::fs::read_to_string(&json).unwrap()));
    seen.push(("node log".into(), node.log()));
    for (what, body) in &seen {
        assert!(!body.is_empty() || what.contains("logs"), "{what} is empty");
        assert!(!body.contains(SECRET), "{what} shows the secret:\n{body}");
        assert!(
            !body.contains(NODE_CREDENTIAL),
            "{what} shows the node's credential"
        );
    }

    // Bad input: the same name in env and secret_env, and a secret named but not set.
    let both = node.cli(&[
        "submit",
        "--env",
        "K=a",
        "--secret-env",
        "K=b",
        "--",
        "true",
    ]);
    assert!(!both.status.success());
    assert!(
        text(&both).contains("both env and secret_env"),
        "{}",
        text(&both)
    );
    let unset = Command::new(BIN)
        .args([
            "submit",
            "--secret-env",
            "TESTMESH_SURELY_UNSET_VAR",
            "--",
            "true",
        ])
        .env("TESTMESH_SERVER", &node.url)
        .env("TESTMESH_TOKEN", &node.token)
        .output()
        .unwrap();
    assert!(!unset.status.success());
    assert!(
        text(&unset).contains("not set in this environment"),
        "{}",
        text(&unset)
    );
}
