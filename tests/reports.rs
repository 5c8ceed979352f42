//! Scheduled reports on a real node: a PDF lands in its directory on schedule, and a webhook
//! that fails the first time gets the same report again on the retry.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use support::{TestNode, wait_for};

/// What the webhook received: (report name, file name, answered status).
type Seen = Arc<Mutex<Vec<(String, String, u16)>>>;

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut s = seen.lock().unwrap();
    // The first delivery fails; later ones are taken.
    let status = if s.is_empty() { 500 } else { 200 };
    assert!(body.starts_with(b"%PDF"), "a PDF is posted");
    s.push((h("x-testmesh-report"), h("content-disposition"), status));
    StatusCode::from_u16(status).unwrap()
}

#[tokio::test]
async fn scheduled_reports_land_in_their_directory_and_failed_webhooks_are_retried() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/reports", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/reports", axum::routing::post(hook))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n\
             [[reports]]\nname = \"every-3s\"\nschedule = \"*/3 * * * * *\"\nwindow = \"10m\"\ndirectory = {out:?}\n\
             [[reports]]\nname = \"hooked\"\nschedule = \"*/4 * * * * *\"\nwebhook = {hook_url:?}\nretry = \"1s\"\n"
        ),
    )
    .unwrap();
    let node = TestNode::start(&["--config", config.to_str().unwrap()]).await;

    // A PDF lands, whole (written beside and renamed).
    let landed = wait_for(Duration::from_secs(30), async || {
        let files: Vec<_> = std::fs::read_dir(&out)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == "pdf"))
            .cloned()
    })
    .await
    .expect("a report in its directory");
    let pdf = std::fs::read(&landed).unwrap();
    assert!(
        pdf.starts_with(b"%PDF") && pdf.len() > 10_000,
        "{} bytes",
        pdf.len()
    );
    let name = landed.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("testmesh-every-3s-"), "{name}");

    // The webhook's first delivery failed; the retry brought the same report.
    let retried = wait_for(Duration::from_secs(30), async || {
        let s = seen.lock().unwrap().clone();
        (s.len() >= 2).then_some(s)
    })
    .await
    .expect("a retried delivery");
    assert_eq!(retried[0].2, 500);
    assert_eq!(retried[1].2, 200);
    assert_eq!(retried[0].0, "hooked");
    assert_eq!(
        retried[0].1, retried[1].1,
        "the same report, tried again: {retried:?}"
    );

    // Both are visible in the API, with what went wrong.
    let ok = wait_for(Duration::from_secs(20), async || {
        let (_, v) = node.get("/api/v1/reports").await;
        let r = v.as_array()?.clone();
        (r.len() == 2 && r.iter().all(|x| x["delivered"].as_u64() >= Some(1))).then_some(r)
    })
    .await
    .expect("both reports delivered");
    assert_eq!(ok[0]["name"], "every-3s");
    assert!(
        ok[0]["last_file"].as_str().unwrap().ends_with(".pdf"),
        "{ok:?}"
    );
    assert!(ok[1]["next_ms"].as_u64().is_some(), "{ok:?}");
}
