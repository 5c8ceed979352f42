//! Handlers through the router, without a socket (`tower::ServiceExt::oneshot`), against a
//! real one-node core.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use super::*;
use crate::core::dto::{StatusView, SubmitResponse, TaskView};
use crate::core::testing::TestNode;

const TOKEN: &str = "test-token";

fn app(node: &TestNode) -> Router {
    router(Arc::new(Inner {
        core: node.core.clone(),
        token: TOKEN.into(),
        started: node.core.clock.instant(),
        host: watch::channel(HostSample::default()).1,
    }))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, body.to_vec())
}

fn json<T: DeserializeOwned>(body: &[u8]) -> T {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(body));
    })
}

fn post(path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn status_names_this_node_as_the_leader() {
    let node = TestNode::start().await;
    let (code, body) = call(&app(&node), get("/api/v1/status")).await;
    assert_eq!(code, StatusCode::OK);
    let s: StatusView = json(&body);
    assert_eq!(s.leader, Some(node.core.node.to_string()));
    assert_eq!(s.voters, [node.core.node.to_string()]);
    node.stop().await;
}

#[tokio::test]
async fn a_submit_needs_the_token_and_lands_in_the_ledger() {
    let node = TestNode::start().await;
    node.register(testmesh_consensus::NodeId(2), 4, 0).await;
    let app = app(&node);
    let body = r#"{"tasks":[{"command":["true"],"cpu":1}]}"#;
    let (code, _) = call(&app, post("/api/v1/tasks", None, body)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = call(&app, post("/api/v1/tasks", Some("wrong"), body)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, resp) = call(&app, post("/api/v1/tasks", Some(TOKEN), body)).await;
    assert_eq!(code, StatusCode::CREATED);
    let created: SubmitResponse = json(&resp);
    assert_eq!(created.tasks.len(), 1);
    let (code, resp) = call(&app, get(&format!("/api/v1/tasks/{}", created.tasks[0]))).await;
    assert_eq!(code, StatusCode::OK);
    let t: TaskView = json(&resp);
    assert_eq!(t.task.spec.argv, ["true"]);
    node.stop().await;
}

#[tokio::test]
async fn bad_submits_say_what_was_wrong_and_change_nothing() {
    let node = TestNode::start().await;
    node.register(testmesh_consensus::NodeId(2), 4, 0).await;
    let app = app(&node);
    let cases = [
        (
            r#"{"tasks":[{"command":["x"],"mem":"lots"}]}"#,
            StatusCode::BAD_REQUEST,
            "mem:",
        ),
        (r#"{"tasks":[]}"#, StatusCode::BAD_REQUEST, "tasks is empty"),
        (
            r#"{"tasks":[{"command":["x"],"cpu":64}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "cpu",
        ),
        (
            r#"{"tasks":[{"command":["x"]}],"request_id":""}"#,
            StatusCode::BAD_REQUEST,
            "request_id",
        ),
    ];
    for (body, want, says) in cases {
        let (code, resp) = call(&app, post("/api/v1/tasks", Some(TOKEN), body)).await;
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(code, want, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    assert_eq!(node.core.ledger.read().tasks().count(), 0);
    node.stop().await;
}

#[tokio::test]
async fn unknown_tasks_and_streams_are_named() {
    let node = TestNode::start().await;
    let app = app(&node);
    let (code, resp) = call(&app, get("/api/v1/tasks/42")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&resp).contains("task 42 does not exist"));
    let (code, resp) = call(&app, get("/api/v1/tasks/42/logs?stream=stdin")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&resp).contains("neither stdout nor stderr"));
    let (code, _) = call(&app, get("/api/v1/nothing-here")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    node.stop().await;
}
