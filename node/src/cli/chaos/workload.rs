//! The clients: submits with request ids (an unknown one is retried with the same id),
//! cancels and consistent reads against random nodes, and one watcher per node following the
//! documented `since` loop. Every operation goes into the history.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use testmesh_consensus::TaskId;
use testmesh_consensus::task::TaskState;

use super::check::WatchLog;
use super::history::{Kind, Op, Recorder};
use crate::core::dto::{SubmitResponse, TaskList, TaskView};

/// Where a client can reach each node.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub token: String,
}

/// The task every submit runs: it holds a lock on its task (and its GPU) while it sleeps and
/// records a violation when the lock is already held.
pub const PROBE: &str = r#"#!/bin/sh
# testmesh chaos probe: holds a lock on its task, and on its exclusive GPU, while it runs. A lock
# already held means another attempt of the same task (or another task on the same GPU) is
# running at this moment: that is written down as a violation for the checker.
d=$(dirname "$0")
exec 8>"$d/locks/task-$TESTMESH_TASK_ID"
if ! flock -n 8; then
  echo "task $TESTMESH_TASK_ID attempt $TESTMESH_ATTEMPT on node $TESTMESH_NODE_ID started while another attempt of it was running" \
    > "$d/violations/task-$TESTMESH_TASK_ID-$TESTMESH_ATTEMPT"
  exit 97
fi
if [ -n "$CHAOS_GPU" ]; then
  exec 9>"$d/locks/gpu-$TESTMESH_NODE_ID-$TESTMESH_GPU_INDICES"
  if ! flock -n 9; then
    echo "task $TESTMESH_TASK_ID attempt $TESTMESH_ATTEMPT was given GPU $TESTMESH_GPU_INDICES on node $TESTMESH_NODE_ID while another task held it" \
      > "$d/violations/gpu-$TESTMESH_TASK_ID-$TESTMESH_ATTEMPT"
    exit 98
  fi
fi
sleep "$1"
"#;

pub struct Shared {
    pub rec: Recorder,
    pub nodes: Vec<Endpoint>,
    pub http: reqwest::Client,
    pub stop: AtomicBool,
    /// Ids acknowledged to any client, for reads and cancels.
    pub known: Mutex<Vec<TaskId>>,
    pub probe: String,
    pub dir: String,
    /// Set when the run is over: watchers stop once they have followed up to it.
    pub final_rev: AtomicU64,
}

enum Answer {
    Ok(Value),
    NotFound,
    /// Definitely not done: refused (4xx).
    Fail(String),
    /// Definitely not done: no connection, nothing was sent.
    NotSent(String),
    /// May or may not have happened.
    Unknown(String),
}

async fn call(s: &Shared, node: usize, req: reqwest::RequestBuilder) -> Answer {
    let r = req
        .bearer_auth(&s.nodes[node].token)
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    match r {
        Err(e) if e.is_connect() => Answer::NotSent(format!("node {node}: {e}")),
        Err(e) => Answer::Unknown(format!("node {node}: {e}")),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status.is_success() {
                serde_json::from_str(&body)
                    .map(Answer::Ok)
                    .unwrap_or_else(|e| Answer::Unknown(format!("node {node}: {e}: {body}")))
            } else if status == 404 {
                Answer::NotFound
            } else if status.is_client_error() {
                Answer::Fail(format!("node {node}: {status} {body}"))
            } else {
                Answer::Unknown(format!("node {node}: {status} {body}"))
            }
        }
    }
}

fn task_request(s: &Shared, rng: &mut StdRng) -> Value {
    let gpu = rng.random_bool(0.2);
    let cpu = ["250m", "500m", "1"][rng.random_range(0..3)];
    let mem = ["64MiB", "256MiB"][rng.random_range(0..2)];
    // Some outlive --dead-after, so that a stale attempt can meet its successor.
    let secs = if rng.random_bool(0.15) {
        rng.random_range(6.0..20.0)
    } else {
        rng.random_range(0.2..2.5)
    };
    let mut t = json!({
        "command": ["sh", &s.probe, format!("{secs:.1}")],
        "name": if gpu { "chaos-gpu" } else { "chaos" },
        "cpu": cpu,
        "mem": mem,
        "retries": rng.random_range(0..=2),
        "timeout": "60s",
        "env": {"CHAOS_DIR": &s.dir},
    });
    if gpu {
        t["gpus"] = json!(1);
        t["env"]["CHAOS_GPU"] = json!("1");
    }
    t
}

/// One client until `stop`: an operation every 0.2–1.2 s on a random node.
pub async fn client(s: Arc<Shared>, process: u32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    // Submits whose outcome is unknown, retried later with the same request id.
    let mut unsure: Vec<(String, Value)> = Vec::new();
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        let node = rng.random_range(0..s.nodes.len());
        let url = &s.nodes[node].url;
        let pick = rng.random_range(0..100);
        let known = {
            let k = s.known.lock().unwrap_or_else(|p| p.into_inner());
            (!k.is_empty()).then(|| k[rng.random_range(0..k.len())])
        };
        if pick < 50 || known.is_none() {
            let (rid, body) = if !unsure.is_empty() && rng.random_bool(0.5) {
                unsure.swap_remove(0)
            } else {
                n += 1;
                let rid = format!("c{process}-{n}");
                let tasks: Vec<Value> = (0..rng.random_range(1..=3))
                    .map(|_| task_request(&s, &mut rng))
                    .collect();
                (rid.clone(), json!({"request_id": rid, "tasks": tasks}))
            };
            let count = body["tasks"].as_array().map_or(0, |a| a.len());
            let op = |ids: Vec<TaskId>| Op::Submit {
                request_id: rid.clone(),
                tasks: count,
                ids,
            };
            let id = s.rec.invoke(process, op(vec![]), url);
            let a = call(
                &s,
                node,
                s.http.post(format!("{url}/api/v1/tasks")).json(&body),
            )
            .await;
            match a {
                Answer::Ok(v) => match serde_json::from_value::<SubmitResponse>(v) {
                    Ok(r) => {
                        s.known
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(&r.tasks);
                        s.rec
                            .complete(process, id, Kind::Ok, op(r.tasks), String::new());
                    }
                    Err(e) => {
                        s.rec
                            .complete(process, id, Kind::Unknown, op(vec![]), e.to_string());
                        unsure.push((rid.clone(), body));
                    }
                },
                Answer::NotSent(e) => {
                    // As good as never asked; asked again with the same id later.
                    s.rec.complete(process, id, Kind::Fail, op(vec![]), e);
                    unsure.push((rid.clone(), body));
                }
                Answer::Fail(e) => s.rec.complete(process, id, Kind::Fail, op(vec![]), e),
                Answer::NotFound => {
                    s.rec
                        .complete(process, id, Kind::Fail, op(vec![]), "404".into())
                }
                Answer::Unknown(e) => {
                    s.rec.complete(process, id, Kind::Unknown, op(vec![]), e);
                    unsure.push((rid.clone(), body));
                }
            }
        } else if pick < 80 {
            let task = known.unwrap_or(TaskId(1));
            let op = |state| Op::Read { task, state };
            let id = s.rec.invoke(process, op(None), url);
            let get = s
                .http
                .get(format!("{url}/api/v1/tasks/{task}?consistent=true"));
            match call(&s, node, get).await {
                Answer::Ok(v) => match serde_json::from_value::<TaskView>(v) {
                    Ok(t) => {
                        s.rec
                            .complete(process, id, Kind::Ok, op(Some(t.task.state)), String::new())
                    }
                    Err(e) => s
                        .rec
                        .complete(process, id, Kind::Fail, op(None), e.to_string()),
                },
                Answer::NotFound => s
                    .rec
                    .complete(process, id, Kind::Ok, op(None), String::new()),
                // A read changes nothing: one without an answer asserts nothing.
                Answer::Fail(e) | Answer::NotSent(e) | Answer::Unknown(e) => {
                    s.rec.complete(process, id, Kind::Fail, op(None), e)
                }
            }
        } else {
            let task = known.unwrap_or(TaskId(1));
            let op = |state| Op::Cancel { task, state };
            let id = s.rec.invoke(process, op(None), url);
            let post = s.http.post(format!("{url}/api/v1/tasks/{task}/cancel"));
            match call(&s, node, post).await {
                Answer::Ok(v) => {
                    let state = serde_json::from_value::<TaskState>(v["state"].clone()).ok();
                    s.rec
                        .complete(process, id, Kind::Ok, op(state), String::new())
                }
                Answer::Fail(e) | Answer::NotSent(e) => {
                    s.rec.complete(process, id, Kind::Fail, op(None), e)
                }
                Answer::NotFound => s
                    .rec
                    .complete(process, id, Kind::Fail, op(None), "404".into()),
                Answer::Unknown(e) => s.rec.complete(process, id, Kind::Unknown, op(None), e),
            }
        }
    }
}

fn cursor_rev(c: &str) -> Option<u64> {
    if c.contains('.') {
        None
    } else {
        c.parse().ok()
    }
}

/// Follows `since` from `start` (moving to the next node when one does not answer) until the
/// run is over and the cursor has reached the final revision; returns every change it saw.
pub async fn watcher(s: Arc<Shared>, start: usize, log: Arc<Mutex<WatchLog>>) {
    let mut node = start;
    let mut cursor: Option<String> = None;
    loop {
        let f = s.final_rev.load(Ordering::Relaxed);
        if f > 0
            && cursor
                .as_deref()
                .and_then(cursor_rev)
                .is_some_and(|r| r >= f)
        {
            return;
        }
        let url = &s.nodes[node].url;
        let path = match &cursor {
            None => format!("{url}/api/v1/tasks?limit=0"),
            Some(c) => format!("{url}/api/v1/tasks?since={c}&wait=2s&limit=50"),
        };
        let got = s
            .http
            .get(path)
            .bearer_auth(&s.nodes[node].token)
            .timeout(Duration::from_secs(6))
            .send()
            .await;
        let page = match got {
            Ok(r) if r.status().is_success() => r.json::<TaskList>().await.ok(),
            _ => None,
        };
        match page {
            Some(p) => {
                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                if cursor.is_some() {
                    l.extend(p.tasks.iter().map(|t| (t.task.id, t.task.rev)));
                }
                cursor = Some(p.next);
            }
            None => {
                node = (node + 1) % s.nodes.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
