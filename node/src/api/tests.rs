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
        swarm_key: String::new(),
        enrol_allowed: true,
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

/// Puts an API token with a known secret into the ledger; returns the token string.
async fn api_token(node: &TestNode, id: &str, scope: Scope) -> String {
    let secret = format!("{:032x}", id.len() as u128 * 7 + scope as u128);
    let cmd = testmesh_consensus::security::SecurityCommand::CreateApiToken(
        testmesh_consensus::security::ApiToken {
            id: id.into(),
            name: format!("{scope} token"),
            scope,
            hash: tokens::hash(&secret),
            created_at: node.core.now(),
            expires_at: None,
        },
    );
    let at = node.core.now();
    node.core
        .writer
        .write(testmesh_consensus::Command::Security { cmd, at })
        .await
        .unwrap()
        .unwrap();
    format!("tmk_{id}_{secret}")
}

fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

/// Every route that changes something, against no token, each scope and the node's own
/// token: refused (401 without a valid token, 403 below the scope it needs) or let through.
#[tokio::test]
async fn token_scopes_are_enforced_on_every_route_that_changes_something() {
    let node = TestNode::start().await;
    let w = testmesh_consensus::NodeId(2);
    node.register(w, 4, 0).await;
    let app = app(&node);
    let read = api_token(&node, "0000000a", Scope::Read).await;
    let submit = api_token(&node, "0000000b", Scope::Submit).await;
    let admin = api_token(&node, "0000000c", Scope::Admin).await;
    let task = r#"{"tasks":[{"command":["true"]}]}"#;
    let routes: &[(&str, String, &str, Scope)] = &[
        ("POST", "/api/v1/tasks".into(), task, Scope::Submit),
        ("POST", "/api/v1/tasks/1/cancel".into(), "{}", Scope::Submit),
        ("POST", "/api/v1/runs".into(), "{}", Scope::Submit),
        ("POST", "/api/v1/runs/1/cancel".into(), "{}", Scope::Submit),
        (
            "POST",
            format!("/api/v1/workers/{w}/drain"),
            "{}",
            Scope::Admin,
        ),
        (
            "POST",
            format!("/api/v1/workers/{w}/undrain"),
            "{}",
            Scope::Admin,
        ),
        (
            "POST",
            format!("/api/v1/workers/{w}/unquarantine"),
            "{}",
            Scope::Admin,
        ),
        ("PUT", "/api/v1/policy".into(), "{}", Scope::Admin),
        ("GET", "/api/v1/tokens".into(), "", Scope::Admin),
        (
            "POST",
            "/api/v1/tokens".into(),
            r#"{"scope":"read"}"#,
            Scope::Admin,
        ),
        ("DELETE", "/api/v1/tokens/ffffffff".into(), "", Scope::Admin),
        (
            "POST",
            format!("/api/v1/nodes/{w}/approve"),
            "{}",
            Scope::Admin,
        ),
        (
            "POST",
            "/api/v1/nodes/00000000000000ff/remove".into(),
            "{}",
            Scope::Admin,
        ),
        ("GET", "/api/v1/audit".into(), "", Scope::Admin),
    ];
    let callers: [(Option<&str>, Option<Scope>); 6] = [
        (None, None),
        (Some("wrong"), None),
        (Some(""), None),
        (Some(&read), Some(Scope::Read)),
        (Some(&submit), Some(Scope::Submit)),
        (Some(&admin), Some(Scope::Admin)),
    ];
    for (method, path, body, needed) in routes {
        for (token, scope) in &callers {
            let (code, resp) = call(&app, request(method, path, *token, body)).await;
            let text = String::from_utf8_lossy(&resp);
            let want = match scope {
                None => Some(StatusCode::UNAUTHORIZED),
                Some(s) if !s.allows(*needed) => Some(StatusCode::FORBIDDEN),
                Some(_) => None,
            };
            match want {
                Some(want) => assert_eq!(code, want, "{method} {path} with {scope:?}: {text}"),
                None => assert!(
                    code != StatusCode::UNAUTHORIZED && code != StatusCode::FORBIDDEN,
                    "{method} {path} with {scope:?} was refused: {code} {text}"
                ),
            }
        }
        let (code, _) = call(&app, request(method, path, Some(TOKEN), body)).await;
        assert!(
            code != StatusCode::UNAUTHORIZED && code != StatusCode::FORBIDDEN,
            "{method} {path}: the node's own token is an admin token"
        );
    }
    // A revoked token stops working at once, on every route.
    let id = "0000000b";
    let (code, _) = call(
        &app,
        request("DELETE", &format!("/api/v1/tokens/{id}"), Some(&admin), ""),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&app, request("POST", "/api/v1/tasks", Some(&submit), task)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    node.stop().await;
}

/// Random and near-miss Authorization values never authorise anything; an empty node token
/// file accepts nothing.
#[tokio::test]
async fn fuzzed_bearer_tokens_authorise_nothing() {
    let node = TestNode::start().await;
    let good = api_token(&node, "0000abcd", Scope::Admin).await;
    let mut near: Vec<String> = vec![
        String::new(),
        " ".into(),
        "Bearer".into(),
        good.to_uppercase(),
        good[..good.len() - 1].into(),
        format!("{good}0"),
        good.replace("tmk_", "tmj_"),
        format!("tmk_0000abcd_{}", "0".repeat(32)),
        "tmk_0000abcd".into(),
        "\u{0}".into(),
        "é".repeat(40),
    ];
    for _ in 0..2_000 {
        let len = rand::random::<u8>() % 60;
        let s: String = (0..len)
            .map(|_| {
                let c = b"tmk_0123456789abcdefABCDEF \t\xc3"[rand::random::<u8>() as usize % 29];
                c as char
            })
            .collect();
        near.push(s);
    }
    for s in &near {
        assert_eq!(caller_of(&node.core, TOKEN, s), None, "{s:?}");
        assert_eq!(caller_of(&node.core, "", s), None, "{s:?}");
    }
    assert_eq!(
        caller_of(&node.core, TOKEN, &good).map(|c| c.scope),
        Some(Scope::Admin)
    );
    node.stop().await;
}
