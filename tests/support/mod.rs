//! Shared helpers for the end-to-end tests: a real `testmesh node` process on a free loopback
//! port with its own data dir, and a small HTTP client. Waits are on conditions with deadlines.

#![allow(dead_code)]
// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
        };
        n.spawn().await;
        n
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn spawn(&mut self) {
        let data = self.data_dir();
        let _ = std::fs::remove_file(data.join("http.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .unwrap();
        let child = Command::new(BIN)
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
        let addr = wait_for(Duration::from_secs(30), || {
            // Complete addresses only (host:port).
            std::fs::read_to_string(data.join("http.addr"))
                .ok()
                .map(|a| a.trim().to_string())
                .filter(|a| a.contains(':') && !a.ends_with(':'))
        })
        .await
        .unwrap_or_else(|| panic!("node did not start; log:\n{}", self.log()));
        self.url = format!("http://{addr}");
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last;
        loop {
            // A bounded wait per request: one stuck connection must not eat the whole deadline.
            let r = self
                .http
                .get(format!("{}/readyz", self.url))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => {
                    last = format!(
                        "HTTP {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = format!("request failed: {e}"),
            }
            if Instant::now() > deadline {
                panic!(
                    "node never became ready (last answer: {last}); log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This node's id, as the API shows it.
    pub fn node_id(&self) -> String {
        let p = self.data_dir().join("node.id");
        read(&p).trim().to_string()
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

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (up to `secs`) until `GET path` satisfies `f`; returns that answer.
    pub async fn wait_get(&self, path: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (code, v) = self.get(path).await;
            if code == 200 && f(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting on {path}: last answer {v}\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits one task and returns its id.
    pub async fn submit(&self, task: Value) -> u64 {
        let (code, v) = self
            .post("/api/v1/tasks", serde_json::json!({ "tasks": [task] }))
            .await;
        assert_eq!(code, 201, "{v}");
        v["tasks"][0].as_u64().unwrap()
    }

    pub async fn task(&self, id: u64) -> Value {
        let (code, v) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Waits until the task satisfies `f`, or panics with the task after `secs`.
    pub async fn wait_task(&self, id: u64, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.task(id).await;
            if f(&t) {
                return t;
            }
            if Instant::now() > deadline {
                panic!(
                    "task {id} never got there: {t:#}\nnode log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_state(&self, id: u64, state: &str) -> Value {
        self.wait_task(id, 30, |t| t["state"] == state).await
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("TESTMESH_SERVER", &self.url)
            .env("TESTMESH_TOKEN", &self.token)
            .output()
            .expect("run testmesh cli")
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

pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
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

pub async fn wait_workers(node: &TestNode, n: usize) {
    for _ in 0..600 {
        let (_, ws) = node.get("/api/v1/workers").await;
        if ws.as_array().map(|a| a.len()) == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never saw {n} workers; log:\n{}", node.url, node.log());
}

pub async fn status(node: &TestNode) -> Option<Value> {
    let r = reqwest::get(format!("{}/api/v1/status", node.url))
        .await
        .ok()?;
    r.json().await.ok()
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
