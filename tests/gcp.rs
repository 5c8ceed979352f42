//! The GCP provider against a FAKE of the three Compute Engine REST endpoints it uses
//! (instances insert, list, delete) — no real GCE API can be reached from here. The fake
//! keeps instances in memory, honours `requestId` and name conflicts like GCE, filters the list
//! by label, and checks the bearer token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use serde_json::{Value, json};
use testmesh_providers::gcp::{GcpConfig, GcpProvider};
use testmesh_providers::{LaunchSpec, Provider};

#[derive(Default)]
struct Fake {
    instances: HashMap<String, Value>,
    requests: Vec<String>,
    inserts: usize,
}

type S = Arc<Mutex<Fake>>;

fn authorised(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer fake-token")
}

fn unauthorised() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "Request had invalid authentication credentials."}})),
    )
}

async fn insert(
    State(s): State<S>,
    h: HeaderMap,
    Path((_p, _z)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&h) {
        return unauthorised();
    }
    let mut f = s.lock().unwrap();
    let rid = q.get("requestId").cloned().unwrap_or_default();
    if !rid.is_empty() && f.requests.contains(&rid) {
        // GCE answers a repeated request with the first operation.
        return (
            StatusCode::OK,
            Json(json!({"kind": "compute#operation", "status": "DONE"})),
        );
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if f.instances.contains_key(&name) {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": {"message": format!("The resource '{name}' already exists")}})),
        );
    }
    f.requests.push(rid);
    f.inserts += 1;
    let mut inst = body.clone();
    inst["status"] = json!("RUNNING");
    f.instances.insert(name, inst);
    (
        StatusCode::OK,
        Json(json!({"kind": "compute#operation", "status": "RUNNING"})),
    )
}

async fn list(
    State(s): State<S>,
    h: HeaderMap,
    Path((_p, _z)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&h) {
        return unauthorised();
    }
    // Only the filter form the provider uses: labels.KEY=VALUE.
    let filter = q.get("filter").cloned().unwrap_or_default();
    let (key, value) = filter
        .strip_prefix("labels.")
        .and_then(|f| f.split_once('='))
        .unwrap_or(("", ""));
    let f = s.lock().unwrap();
    let items: Vec<Value> = f
        .instances
        .values()
        .filter(|i| key.is_empty() || i["labels"][key] == value)
        .cloned()
        .collect();
    (StatusCode::OK, Json(json!({"items": items})))
}

async fn remove(
    State(s): State<S>,
    h: HeaderMap,
    Path((_p, _z, name)): Path<(String, String, String)>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&h) {
        return unauthorised();
    }
    match s.lock().unwrap().instances.remove(&name) {
        Some(_) => (StatusCode::OK, Json(json!({"kind": "compute#operation"}))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "not found"}})),
        ),
    }
}

async fn fake_gce() -> (String, S) {
    let state: S = Default::default();
    let app = axum::Router::new()
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances",
            get(list).post(insert),
        )
        .route(
            "/compute/v1/projects/{p}/zones/{z}/instances/{name}",
            delete(remove),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/compute/v1"), state)
}

fn provider(endpoint: &str, token: &str) -> GcpProvider {
    GcpProvider::new(GcpConfig {
        name: "gcp".into(),
        project: "proj".into(),
        zone: "europe-west4-a".into(),
        image: "projects/debian-cloud/global/images/family/debian-12".into(),
        network: "global/networks/default".into(),
        install_url: None,
        service_account: None,
        endpoint: Some(endpoint.into()),
        access_token: Some(token.into()),
    })
    .unwrap()
}

fn spec(intent: u64) -> LaunchSpec {
    LaunchSpec {
        cluster_id: "c0ffee".into(),
        intent,
        instance_type: "g2-standard-8".into(),
        cpu_milli: 8000,
        memory_bytes: 32 << 30,
        gpus: 1,
        gpu_model: "NVIDIA L4".into(),
        gpu_memory_bytes: 24 << 30,
        node_args: vec!["--join".into(), "/dns4/leader.internal/tcp/7071".into()],
        swarm_key: "/key/swarm/psk/1.0.0/\n/base16/\nbeef\n".into(),
    }
}

#[tokio::test]
async fn insert_list_delete_against_a_fake_of_the_compute_api() {
    let (endpoint, state) = fake_gce().await;
    let p = provider(&endpoint, "fake-token");
    let s = spec(5);
    let first = p.launch(&s).await.unwrap();
    let again = p.launch(&s).await.unwrap();
    assert_eq!(first, "testmesh-c0ffee-5");
    assert_eq!(first, again, "the same intent gives the same instance");
    assert_eq!(state.lock().unwrap().inserts, 1, "one instance created");

    let inst = state.lock().unwrap().instances[&first].clone();
    assert_eq!(
        inst["machineType"],
        "zones/europe-west4-a/machineTypes/g2-standard-8"
    );
    assert_eq!(inst["labels"]["testmesh-cluster"], "c0ffee");
    assert_eq!(inst["labels"]["testmesh-intent"], "5");
    let script = inst["metadata"]["items"][0]["value"].as_str().unwrap();
    assert_eq!(inst["metadata"]["items"][0]["key"], "startup-script");
    assert!(script.contains("/base16/\nbeef\n"), "{script}");
    assert!(script.contains("'/dns4/leader.internal/tcp/7071'"));

    p.launch(&spec(6)).await.unwrap();
    let mut other = spec(1);
    other.cluster_id = "another".into();
    p.launch(&other).await.unwrap();
    let mut listed = p.list("c0ffee").await.unwrap();
    listed.sort_by_key(|i| i.intent);
    assert_eq!(
        listed.iter().map(|i| i.intent).collect::<Vec<_>>(),
        vec![Some(5), Some(6)],
        "only this cluster's instances"
    );
    assert!(listed.iter().all(|i| i.alive));

    p.terminate(&first).await.unwrap();
    p.terminate(&first).await.unwrap(); // already gone: fine
    assert_eq!(p.list("c0ffee").await.unwrap().len(), 1);

    // Bad credentials are reported, not retried as if they might pass.
    let e = provider(&endpoint, "wrong")
        .launch(&spec(7))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(matches!(
        e,
        testmesh_providers::Error::Api { retry: false, .. }
    ));
}
