//! `testmesh demo`: a local cluster that shows every part working — a node (the leader) with
//! the dashboard, simulated workers launched by the real autoscaler through the sim provider
//! (real `testmesh node` processes offering made-up capacity, GPUs included), a bursty
//! synthetic workload through the real scheduler and predictor, and a report at the end.

/// Like `outln!`, but a closed stdout (`testmesh demo | head`) does not end the process: the
/// demo must still stop the cluster it started.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::client::{Client, ClientArgs};
use crate::core::clock::{Clock, SystemClock};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Most simulated workers the autoscaler may launch
    #[arg(long, default_value_t = 10)]
    pub workers: u32,
    /// How long the workload runs
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Address of the dashboard and API
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http: String,
    /// Where the demo keeps its data and writes its report [default: ./testmesh-demo]
    #[arg(long, default_value = "testmesh-demo")]
    pub dir: PathBuf,
    /// Stop the cluster once the workload is done and the report written (for scripts);
    /// without it the dashboard keeps serving until Ctrl-C
    #[arg(long)]
    pub exit_when_done: bool,
}

const CONFIG: &str = r#"version = 1

# Simulated instance types (made-up capacity and prices) for the sim provider.
[[instance_types]]
provider = "sim"
name = "cpu-4"
cpus = "4"
memory = "8GiB"
price_per_hour = 0.20
boot_secs = 2

[[instance_types]]
provider = "sim"
name = "gpu-2xa100"
cpus = "8"
memory = "32GiB"
gpus = 2
gpu_model = "Sim A100"
gpu_memory = "40GiB"
price_per_hour = 2.50
boot_secs = 3

[[providers]]
kind = "sim"
"#;

/// Stops the node and its simulated workers however the demo ends.
struct Cluster {
    node: Option<Child>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Workers first (separate processes; they leave through the leader), then the leader.
        let pids: Vec<String> = std::fs::read_dir(self.dir.join("data/sim"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
            .map(|p| p.trim().to_string())
            .collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        let alive = |pid: &String| Path::new(&format!("/proc/{pid}")).exists();
        for _ in 0..150 {
            if !pids.iter().any(alive) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in pids.iter().filter(|p| alive(p)) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        if let Some(mut c) = self.node.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

fn wait_file(p: &Path, secs: u64) -> anyhow::Result<String> {
    for _ in 0..secs * 20 {
        if let Ok(s) = std::fs::read_to_string(p)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the demo node did not start (no {}); see its log",
        p.display()
    )
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let data = a.dir.join("data");
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let _ = std::fs::remove_file(data.join("http.addr"));
    let _ = std::fs::remove_file(data.join("http.url"));
    let config = a.dir.join("demo.toml");
    std::fs::write(&config, CONFIG)?;
    let log = std::fs::File::create(a.dir.join("node.log"))?;
    let node = Command::new(std::env::current_exe()?)
        .arg("node")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--http",
            &a.http,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ])
        .args(["--cpus", "2", "--dashboard-interval", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the demo node")?;
    let _cluster = Cluster {
        node: Some(node),
        dir: a.dir.clone(),
    };
    let addr = wait_file(&data.join("http.addr"), 30)?;
    // https:// when --http is beyond loopback; the client then pins the data dir's fingerprint.
    let url = std::fs::read_to_string(data.join("http.url"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|_| format!("http://{addr}"));
    let client = Client::new(&ClientArgs {
        server: url.clone(),
        token: None,
        tls_fingerprint: None,
        ca_cert: None,
        data_dir: data.clone(),
    })?;
    for _ in 0..100 {
        if client
            .get::<Value>("/api/v1/scaling")
            .await
            .ok()
            .is_some_and(|v| v["cluster_id"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .put::<_, Value>(
            "/api/v1/policy",
            &json!({"enabled": true, "providers": ["sim"], "max_workers": a.workers,
                    "scale_up_cooldown": "2s", "scale_down_cooldown": "5s", "idle_timeout": "8s"}),
        )
        .await?;
    say!(
        "testmesh demo: dashboard at {url}/ (API token in {})",
        data.join("api-token").display()
    );
    say!(
        "a bursty workload runs for {}; the autoscaler launches up to {} simulated workers",
        humantime::format_duration(a.duration),
        a.workers
    );

    // Bursts of tests and a few GPU jobs, each burst bigger than the 2 local cores can take.
    let mut rng = StdRng::seed_from_u64(7);
    let started = SystemClock.instant();
    let mut submitted = 0usize;
    while SystemClock.instant().duration_since(started) < a.duration {
        let burst = rng.random_range(4..12);
        let mut tasks = Vec::new();
        for _ in 0..burst {
            let (name, secs, cpu, gpus) = match rng.random_range(0..10) {
                0..=5 => ("unit-tests", rng.random_range(1.0..3.0), "1", 0.0),
                6..=8 => ("integration", rng.random_range(3.0..6.0), "2", 0.0),
                _ => ("train-smoke", rng.random_range(4.0..8.0), "4", 1.0),
            };
            let mut t = json!({"command": ["sleep", format!("{secs:.1}")], "name": name, "cpu": cpu, "mem": "256MiB"});
            if gpus > 0.0 {
                t["gpus"] = json!(gpus);
            }
            tasks.push(t);
        }
        submitted += tasks.len();
        client
            .post::<_, Value>(
                "/api/v1/tasks",
                &json!({"tasks": tasks, "allow_unschedulable": true}),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
    }
    say!("submitted {submitted} tasks; letting the queue drain …");
    for _ in 0..120 {
        let s: Value = client.get("/api/v1/status").await?;
        let t = &s["tasks"];
        let busy = ["pending", "assigned", "running"]
            .iter()
            .map(|k| t[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = a.dir.join("report.html");
    super::report::run(super::report::ReportArgs {
        client: ClientArgs {
            server: url.clone(),
            token: None,
            tls_fingerprint: None,
            ca_cert: None,
            data_dir: data.clone(),
        },
        out: report.clone(),
        since: Duration::from_secs(3600),
        run: None,
    })
    .await?;
    if a.exit_when_done {
        say!(
            "demo done: report in {}; stopping the cluster",
            report.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // A newcomer's first look should not be a dead page: the cluster stays up.
    say!(
        "demo done: report in {}; the dashboard keeps serving at {url}/ — press Ctrl-C to stop (--exit-when-done stops here)",
        report.display()
    );
    wait_for_stop().await?;
    say!("stopping the cluster");
    Ok(ExitCode::SUCCESS)
}

/// Until Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
