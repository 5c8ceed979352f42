//! Shared helpers for the end-to-end tests: a real `testmesh node` process on a free loopback
//! port with its own data dir, and a small HTTP client. Waits are on conditions with deadlines
//! (one helper, [`wait_for`]).
//!
//! Answers are read into the types the API itself returns (`TaskView`, `StatusView`,
//! `WorkerStatus`, `LogChunk`, ...): a renamed or retyped field fails the test at compile time,
//! or at the first answer with the body that did not parse, never as a timeout. The raw
//! `get`/`post`/`put` (JSON values) are for error bodies and endpoints without such a type.

#![allow(dead_code)]
// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use testmesh::core::dto::{StatusView, SubmitResponse, TaskList, TaskView, WorkerStatus};
use testmesh::core::logs::LogChunk;
use testmesh_consensus::NodeId;
use testmesh_consensus::scaling::{CloudInstance, DecisionRecord};
use testmesh_consensus::task::{Attempt, Outcome, TaskState};

pub const BIN: &str = env!("CARGO_BIN_EXE_testmesh");

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
    extra: Vec<String>,
    http: reqwest::Client,
    /// Wait for `/readyz` after each start (off for nodes expected to stay out of a cluster).
    pub wait_ready: bool,
    /// Extra environment of the node process.
    pub env: Vec<(String, String)>,
    /// A command the node is started through (e.g. `unshare` into a mount namespace), the
    /// node's own command line following it.
    pub wrap: Vec<String>,
}

impl TestNode {
    pub async fn start(extra: &[&str]) -> TestNode {
        Self::start_with(extra, true).await
    }

    /// A node with extra environment variables (e.g. cloud credentials for an emulator).
    pub async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut n = TestNode {
            wait_ready: true,
            dir,
            child: None,
            url: String::new(),
            token: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrap: Vec::new(),
        };
        n.spawn().await;
        n
    }

    pub async fn start_with(extra: &[&str], wait_ready: bool) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut n = TestNode {
            wait_ready,
            dir,
            child: None,
            url: String::new(),
            token: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::new(),
            env: Vec::new(),
            wrap: Vec::new(),
        };
        n.spawn().await;
        n
    }

    /// A node not started yet (its data dir can be prepared first); start it with `spawn`.
    pub fn unstarted(extra: &[&str]) -> TestNode {
        TestNode {
            wait_ready: true,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            url: String::new(),
            token: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::new(),
            env: Vec::new(),
            wrap: Vec::new(),
        }
    }

    /// Resident memory of the node process, in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn spawn(&mut self) {
        let data = self.data_dir();
        let _ = std::fs::remove_file(data.join("http.addr"));
        let _ = std::fs::remove_file(data.join("http.url"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("node")
            .arg("--data-dir")
            .arg(&data)
            .args(if self.extra.iter().any(|a| a == "--http") {
                &[][..]
            } else {
                &["--http", "127.0.0.1:0"][..]
            })
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(&self.extra)
            .env("TESTMESH_LOG", "info,openraft=error")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start testmesh node");
        self.child = Some(child);
        let addr = wait_for(Duration::from_secs(30), async || {
            // Complete addresses only (host:port).
            std::fs::read_to_string(data.join("http.addr"))
                .ok()
                .map(|a| a.trim().to_string())
                .filter(|a| a.contains(':') && !a.ends_with(':'))
        })
        .await
        .unwrap_or_else(|| panic!("node did not start; log:\n{}", self.log()));
        self.url = std::fs::read_to_string(data.join("http.url"))
            .map(|u| u.trim().to_string())
            .unwrap_or_else(|_| format!("http://{addr}"));
        if let Some(fp) = self.tls_fingerprint() {
            let tls = testmesh::tls::client_config(Some(&fp), None).unwrap();
            self.http = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap();
        }
        self.token = std::fs::read_to_string(data.join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        if self.wait_ready {
            self.ready().await;
        }
    }

    /// Waits until `/readyz` answers 200 (in a cluster, registered as a worker).
    pub async fn ready(&self) {
        let mut last = String::new();
        let ready = wait_for(Duration::from_secs(30), async || {
            // A bounded wait per request: one stuck connection must not eat the whole deadline.
            let r = self
                .http
                .get(format!("{}/readyz", self.url))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => return Some(()),
                Ok(r) => {
                    last = format!(
                        "HTTP {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = format!("request failed: {e}"),
            }
            None
        })
        .await;
        if ready.is_none() {
            panic!(
                "node never became ready (last answer: {last}); log:\n{}",
                self.log()
            );
        }
    }

    /// The fingerprint of the node's HTTPS certificate, when it serves HTTPS.
    pub fn tls_fingerprint(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("tls.fingerprint"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// This node's id, as the API shows it.
    pub fn node_id(&self) -> String {
        let p = self.data_dir().join("node.id");
        read(&p).trim().to_string()
    }

    /// This node's id, as the ledger types carry it (workers, attempts).
    pub fn id(&self) -> NodeId {
        let s = self.node_id();
        s.parse()
            .unwrap_or_else(|_| panic!("node.id holds {s:?}, not a node id"))
    }

    /// The first mesh address this node listens on, with its peer id.
    pub fn mesh_addr(&self) -> String {
        read(&self.data_dir().join("mesh.addr"))
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// `kill -9`: no chance to clean anything up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_free_sigterm(c.id());
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "node exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// `GET path`: the status and the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    }

    /// `GET path` as raw JSON (Null when the body is not JSON): for error bodies and endpoints
    /// that have no type of their own. Use [`TestNode::get_as`] for the others.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.get_text(path).await;
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// `GET path` read into `T`; panics with the body when it is not a `T` (whatever the status:
    /// use it where an answer of that type is expected).
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> (u16, T) {
        let (code, body) = self.get_text(path).await;
        (code, parse(&format!("GET {path}"), code, &body))
    }

    /// `GET path` that must answer 200 with a `T`.
    pub async fn get_ok<T: DeserializeOwned>(&self, path: &str) -> T {
        let (code, body) = self.get_text(path).await;
        assert_eq!(code, 200, "GET {path}: {body}");
        parse(&format!("GET {path}"), code, &body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (code, text) = self.send(reqwest::Method::POST, path, body).await;
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST path` read into `T`; panics with the body when it is not a `T`.
    pub async fn post_as<T: DeserializeOwned>(&self, path: &str, body: Value) -> (u16, T) {
        let (code, text) = self.send(reqwest::Method::POST, path, body).await;
        (code, parse(&format!("POST {path}"), code, &text))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let (code, text) = self.send(reqwest::Method::PUT, path, body).await;
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, String) {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    }

    /// Waits (up to `secs`) until `GET path` answers 200 with a `T` that satisfies `f`; returns
    /// that answer. A 200 that is not a `T` fails at once, with the body.
    pub async fn wait_get_as<T: DeserializeOwned>(
        &self,
        path: &str,
        secs: u64,
        f: impl Fn(&T) -> bool,
    ) -> T {
        let mut last = String::new();
        wait_for(Duration::from_secs(secs), async || {
            let (code, body) = self.get_text(path).await;
            let found = if code == 200 {
                let v: T = parse(&format!("GET {path}"), code, &body);
                f(&v).then_some(v)
            } else {
                None
            };
            last = format!("HTTP {code}: {body}");
            found
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting on {path}: last answer {last}\nlog:\n{}",
                self.log()
            )
        })
    }

    /// [`TestNode::wait_get_as`] for endpoints without a type of their own.
    pub async fn wait_get(&self, path: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        self.wait_get_as(path, secs, f).await
    }

    /// Submits one task and returns its id.
    pub async fn submit(&self, task: Value) -> u64 {
        let r = self
            .submit_body(serde_json::json!({ "tasks": [task] }))
            .await;
        assert_eq!(r.tasks.len(), 1, "{r:?}");
        r.tasks[0].0
    }

    /// Posts a whole submit request (several tasks, `allow_unschedulable`, ...) that must be
    /// accepted as new (201).
    pub async fn submit_body(&self, body: Value) -> SubmitResponse {
        let (code, text) = self
            .send(reqwest::Method::POST, "/api/v1/tasks", body)
            .await;
        assert_eq!(code, 201, "{text}");
        parse("POST /api/v1/tasks", code, &text)
    }

    pub async fn task(&self, id: u64) -> TaskView {
        self.get_ok(&format!("/api/v1/tasks/{id}")).await
    }

    /// `GET /api/v1/tasks` with `query` (e.g. `"?state=failed"`, or `""`).
    pub async fn tasks(&self, query: &str) -> TaskList {
        self.get_ok(&format!("/api/v1/tasks{query}")).await
    }

    pub async fn workers(&self) -> Vec<WorkerStatus> {
        self.get_ok("/api/v1/workers").await
    }

    /// One worker by id (panics with the list when it is not there).
    pub async fn worker(&self, id: NodeId) -> WorkerStatus {
        let ws = self.workers().await;
        ws.iter()
            .find(|w| w.worker.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no worker {id} in {ws:#?}"))
    }

    /// A task's output: `GET /api/v1/tasks/{id}/logs{query}` (e.g. `"?stream=stderr"`).
    pub async fn logs(&self, id: u64, query: &str) -> LogChunk {
        self.get_ok(&format!("/api/v1/tasks/{id}/logs{query}"))
            .await
    }

    /// `GET /api/v1/stats` (gossiped host statistics of every node).
    pub async fn stats(&self) -> Stats {
        self.get_ok("/api/v1/stats").await
    }

    /// `GET /api/v1/scaling`.
    pub async fn scaling(&self) -> Scaling {
        self.get_ok("/api/v1/scaling").await
    }

    /// Waits until the autoscaler's state satisfies `f`, or panics with it after `secs`.
    pub async fn wait_scaling(&self, secs: u64, f: impl Fn(&Scaling) -> bool) -> Scaling {
        self.wait_get_as("/api/v1/scaling", secs, f).await
    }

    /// Waits until the task satisfies `f`, or panics with the task after `secs`.
    pub async fn wait_task(&self, id: u64, secs: u64, f: impl Fn(&TaskView) -> bool) -> TaskView {
        let mut last = None;
        wait_for(Duration::from_secs(secs), async || {
            let t = self.task(id).await;
            if f(&t) {
                return Some(t);
            }
            last = Some(t);
            None
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "task {id} never got there: {}\nnode log:\n{}",
                last.as_ref().map(show).unwrap_or_default(),
                self.log()
            )
        })
    }

    pub async fn wait_state(&self, id: u64, state: TaskState) -> TaskView {
        self.wait_task(id, 30, |t| t.task.state == state).await
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("TESTMESH_SERVER", &self.url)
            .env("TESTMESH_TOKEN", &self.token);
        if let Some(fp) = self.tls_fingerprint() {
            c.env("TESTMESH_TLS_FINGERPRINT", fp);
        }
        c.output().expect("run testmesh cli")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Every node's log, not only the one the failing assertion looked at.
            eprintln!(
                "----- log of node {} ({}) -----\n{}",
                self.node_id(),
                self.url,
                self.log()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_free_sigterm(pid: u32) {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// Polls `f` until it gives a value or `limit` has passed (then None). The one wait of these
/// tests: every other wait is this with a condition.
pub async fn wait_for<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(25);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// `body` read into `T`, or a panic that shows it (`what`: the request, for the message).
pub fn parse<T: DeserializeOwned>(what: &str, code: u16, body: &str) -> T {
    serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "{what} answered {code} with a body that is not a {}: {e}\n{body}",
            std::any::type_name::<T>()
        )
    })
}

/// CLI `--json` output read into `T`; panics with the output when it is not a `T`.
pub fn parse_output<T: DeserializeOwned>(o: &std::process::Output) -> T {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "the CLI's output is not a {}: {e}\nstdout:\n{}\nstderr:\n{}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A value as pretty JSON, for assertion messages.
pub fn show<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(unprintable: {e})"))
}

/// What `GET /api/v1/stats` answers (the endpoint builds it in place; these are its parts).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Stats {
    /// By node id (16 hex digits).
    pub nodes: std::collections::BTreeMap<String, testmesh::stats::NodeStats>,
    pub malformed_dropped: u64,
}

/// What `GET /api/v1/scaling` answers. The node's `ScalingState` is only serialised, so this
/// mirrors it; instances and decisions are the ledger's own types, the policy and the scaler's
/// view (serialise-only types too) stay JSON.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Scaling {
    pub cluster_id: Option<String>,
    pub policy: Value,
    pub hourly_cost: f64,
    pub instances: Vec<CloudInstance>,
    pub decisions: Vec<DecisionRecord>,
    pub scaler: Value,
}

/// Short ways into a task's attempts that say what was there when they fail.
pub trait TaskViewExt {
    /// The attempt at `i` (0: the first).
    fn attempt(&self, i: usize) -> &Attempt;
    /// How the attempt at `i` ended (it must have ended).
    fn outcome(&self, i: usize) -> &Outcome;
}

impl TaskViewExt for TaskView {
    fn attempt(&self, i: usize) -> &Attempt {
        self.task
            .attempts
            .get(i)
            .unwrap_or_else(|| panic!("task has no attempt #{i}: {}", show(self)))
    }

    fn outcome(&self, i: usize) -> &Outcome {
        self.attempt(i)
            .outcome
            .as_ref()
            .unwrap_or_else(|| panic!("attempt #{i} has not ended: {}", show(self)))
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A command's stdout and stderr together, for assertions and their messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

// ---- clusters of nodes on loopback ----

/// Starts `n` nodes; the first creates the swarm key, the others join it.
pub async fn cluster(n: usize) -> Vec<TestNode> {
    cluster_with(n, &[]).await
}

pub async fn cluster_with(n: usize, extra: &[&str]) -> Vec<TestNode> {
    let first = TestNode::start(extra).await;
    let key = first.data_dir().join("swarm.key");
    let join = first.mesh_addr();
    let mut nodes = vec![first];
    for _ in 1..n {
        let mut args = vec!["--swarm-key", key.to_str().unwrap(), "--join", &join];
        args.extend_from_slice(extra);
        nodes.push(TestNode::start(&args).await);
    }
    for node in &nodes {
        wait_workers(node, n).await;
    }
    nodes
}

/// Waits until `node` lists `n` workers.
pub async fn wait_workers(node: &TestNode, n: usize) {
    node.wait_get_as::<Vec<WorkerStatus>>("/api/v1/workers", 30, |ws| ws.len() == n)
        .await;
}

/// The node's status; None while it does not answer (stopped, starting, unreachable). An
/// answer that is not a `StatusView` fails the test with the body.
pub async fn status(node: &TestNode) -> Option<StatusView> {
    let r = node
        .http
        .get(format!("{}/api/v1/status", node.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    let body = r.text().await.ok()?;
    (code == 200).then(|| parse("GET /api/v1/status", code, &body))
}

/// Waits until `node`'s status satisfies `f`; panics with the last status after `secs`.
pub async fn wait_status(
    node: &TestNode,
    secs: u64,
    f: impl Fn(&StatusView) -> bool,
) -> StatusView {
    let mut last = None;
    wait_for(Duration::from_secs(secs), async || {
        let s = status(node).await?;
        if f(&s) {
            return Some(s);
        }
        last = Some(s);
        None
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the status of {} never got there: {}\nlog:\n{}",
            node.url,
            last.as_ref().map(show).unwrap_or_default(),
            node.log()
        )
    })
}

pub fn signal(node: &TestNode, sig: &str) {
    let pid = node.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

/// Whether a Docker engine answers; without one a test skips with the reason, except under
/// TESTMESH_STRICT=1 (CI), where that is a failure.
pub fn docker_or_skip() -> bool {
    let up = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but no Docker engine is reachable"
        );
        eprintln!("skipped: no Docker engine is reachable (docker info failed)");
    }
    up
}

/// Whether `tool` is on PATH; without it a test skips with the reason (and how to install it),
/// except under TESTMESH_STRICT=1 (CI), where that is a failure.
pub fn tool_or_skip(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but {tool} is missing (apt-get install {package})"
        );
        eprintln!("skipped: {tool} is missing (apt-get install {package})");
    }
    found
}

/// Runs the docker CLI.
pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Builds the project's container image from this test binary with deploy/docker/build-image.sh
/// (no registry, no base image).
pub fn build_image(tag: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let o = Command::new("bash")
        .arg(format!("{root}/deploy/docker/build-image.sh"))
        .args(["--binary", BIN, "--tag", tag])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
