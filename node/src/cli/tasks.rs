//! Client commands about tasks, workers and status.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use testmesh_consensus::TaskId;
use testmesh_consensus::task::TaskState;

use super::client::{Client, ClientArgs};
use super::output::{between, millis, table};
use crate::core::clock::{Clock, SystemClock};
use crate::core::dto::{StatusView, SubmitResponse, TaskList, TaskView, WorkerStatus};
use crate::core::logs::LogChunk;
use crate::core::submit::{Amount, SubmitRequest, TaskRequest, to_spec};
use crate::units;

#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Resource and placement flags shared by `submit` and `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct RequirementArgs {
    /// CPU cores (2, 0.5) or millicores (500m) [default: 1]
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory to reserve, e.g. 512MiB or 4GiB; `auto` reserves the peak predicted from
    /// earlier runs of the same task plus 25 % (nothing before there is history)
    #[arg(long)]
    pub mem: Option<String>,
    /// Whole GPUs (1, 2) or a share of one GPU (0.5)
    #[arg(long)]
    pub gpus: Option<String>,
    /// GPU memory: reserved by a share; the least each whole GPU must have
    #[arg(long)]
    pub gpu_mem: Option<String>,
    /// GPU model substring, e.g. H100
    #[arg(long)]
    pub gpu_model: Option<String>,
    /// Worker label the task requires, KEY=VALUE (repeatable)
    #[arg(long = "constraint", value_parser = units::parse_key_value)]
    pub constraints: Vec<(String, String)>,
    /// Time limit of one attempt, e.g. 30s or 2h
    #[arg(long)]
    pub timeout: Option<String>,
    /// Further attempts after a failure, timeout or lost worker
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Higher runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
}

impl RequirementArgs {
    pub fn to_request(&self, name: Option<String>, command: Vec<String>) -> TaskRequest {
        TaskRequest {
            name: name.unwrap_or_default(),
            command,
            cpu: self.cpu.clone().map(Amount::Text),
            mem: self.mem.clone().map(Amount::Text),
            gpus: self.gpus.clone().map(Amount::Text),
            gpu_mem: self.gpu_mem.clone().map(Amount::Text),
            gpu_model: self.gpu_model.clone(),
            constraints: self.constraints.iter().cloned().collect(),
            timeout: self.timeout.clone(),
            retries: self.retries,
            priority: self.priority,
            ..Default::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Task name [default: the program's file name]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub req: RequirementArgs,
    /// Label of the task itself, KEY=VALUE (repeatable)
    #[arg(long = "label", value_parser = units::parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Environment variable for the task, KEY=VALUE (repeatable)
    #[arg(long = "env", value_parser = units::parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Environment variable whose value no read, export, report or page shows: KEY=VALUE, or
    /// KEY to take the value from this environment (repeatable)
    #[arg(long = "secret-env", value_parser = units::parse_secret_env)]
    pub secret_env: Vec<(String, String)>,
    /// Working directory of the task on the worker (with --upload: a directory inside the
    /// uploaded tree)
    #[arg(long)]
    pub workdir: Option<String>,
    /// Ship this directory with the task (as `testmesh run --workdir` does): it runs in its
    /// own unpacked copy on the worker
    #[arg(long, value_name = "DIR")]
    pub upload: Option<std::path::PathBuf>,
    /// Keep files matching GLOB after each attempt (repeatable)
    #[arg(long = "artifacts", value_name = "GLOB")]
    pub artifacts: Vec<String>,
    /// Queue it even if no current worker could ever run it
    #[arg(long)]
    pub allow_unschedulable: bool,
    /// Wait for the task, show its progress, and exit with its exit code
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn submit(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut req = a.req.to_request(a.name, a.command);
    req.labels = a.labels.into_iter().collect();
    req.env = a.env.into_iter().collect();
    req.secret_env = a.secret_env.into_iter().collect();
    req.workdir = a.workdir;
    req.artifacts = a.artifacts;
    if a.upload.is_some() {
        // Checked with a placeholder hash; the real one comes from the upload.
        req.code = Some("0".repeat(64));
    }
    // Same validation as the server: bad input fails here, before anything is sent.
    to_spec(&req).map_err(anyhow::Error::msg)?;
    let client = Client::new(&a.client)?;
    if let Some(dir) = &a.upload {
        req.code = Some(super::ship::upload(&client, dir, super::ship::DEFAULT_MAX_CODE).await?);
    }
    let body = SubmitRequest {
        request_id: Some(hex::encode(rand::random::<[u8; 16]>())),
        tasks: vec![req],
        allow_unschedulable: a.allow_unschedulable,
    };
    let resp: SubmitResponse = client.post("/api/v1/tasks", &body).await?;
    let id = resp.tasks[0];
    outln!("{id}");
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_for(&client, id).await
}

/// Follows a task to its end, printing each change; returns an exit code mirroring the task's.
async fn wait_for(client: &Client, id: TaskId) -> anyhow::Result<ExitCode> {
    let mut since = 0;
    let mut last = String::new();
    loop {
        let v: TaskView = client
            .get(&format!("/api/v1/tasks/{id}?since={since}&wait=30s"))
            .await?;
        let t = &v.task;
        since = t.rev;
        let line = match t.state {
            TaskState::Pending => format!(
                "pending{}",
                v.pending_reason
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            TaskState::Assigned | TaskState::Running => format!(
                "{} on {} (attempt {})",
                t.state,
                t.current_attempt()
                    .map(|a| a.worker.to_string())
                    .unwrap_or_default(),
                t.attempt
            ),
            s => {
                let a = t.attempts.last();
                let took = a
                    .and_then(|a| {
                        Some(format!(
                            " after {}",
                            millis(a.finished_at?.saturating_sub(a.started_at?))
                        ))
                    })
                    .unwrap_or_default();
                let msg = a
                    .and_then(|a| a.outcome.as_ref()?.message.clone())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                format!("{s}{took}{msg}")
            }
        };
        if line != last {
            eprintln!("task {id}: {line}");
            last = line;
        }
        if t.state.is_final() {
            let code = t
                .attempts
                .last()
                .and_then(|a| a.outcome.as_ref()?.exit_code);
            return Ok(match (t.state, code) {
                (TaskState::Succeeded, _) => ExitCode::SUCCESS,
                (TaskState::Failed, Some(c)) if (1..=255).contains(&c) => ExitCode::from(c as u8),
                (TaskState::TimedOut, _) => ExitCode::from(124),
                (TaskState::Cancelled, _) => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            });
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only tasks in these states (comma-separated): pending, running, succeeded, failed, ...
    #[arg(long)]
    pub state: Option<String>,
    /// Only tasks with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Only tasks with this label, KEY=VALUE
    #[arg(long, value_parser = units::parse_key_value)]
    pub label: Option<(String, String)>,
    /// Most tasks to show (newest first)
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~,".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn list(a: TasksArgs) -> anyhow::Result<ExitCode> {
    if let Some(s) = &a.state {
        for part in s.split(',') {
            part.parse::<TaskState>().map_err(anyhow::Error::msg)?;
        }
    }
    let client = Client::new(&a.client)?;
    let mut q = format!("/api/v1/tasks?limit={}", a.limit);
    if let Some(s) = &a.state {
        q += &format!("&state={}", query_escape(s));
    }
    if let Some(n) = &a.name {
        q += &format!("&name={}", query_escape(n));
    }
    if let Some((k, v)) = &a.label {
        q += &format!("&label={}", query_escape(&format!("{k}={v}")));
    }
    let l: TaskList = client.get(&q).await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&l.tasks)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now();
    let rows: Vec<Vec<String>> = l
        .tasks
        .iter()
        .map(|v| {
            let t = &v.task;
            let a = t.attempts.last();
            vec![
                t.id.to_string(),
                t.spec.name.clone(),
                t.state.to_string(),
                t.attempt.to_string(),
                a.map(|a| a.worker.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.and_then(|a| a.started_at.map(|s| between(s, a.finished_at, now)))
                    .unwrap_or_else(|| "-".into()),
                a.and_then(|a| a.outcome.as_ref()?.exit_code)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                v.eta.map_or_else(
                    || "-".into(),
                    |e| {
                        format!(
                            "#{} in {}",
                            e.position,
                            millis(e.start_ms.saturating_sub(now.0))
                        )
                    },
                ),
                t.spec.argv.join(" "),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "STATE", "ATTEMPT", "WORKER", "RUNTIME", "EXIT", "STARTS", "COMMAND",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub id: u64,
    #[arg(long)]
    pub json: bool,
}

pub async fn show(a: TaskArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let v: TaskView = client.get(&format!("/api/v1/tasks/{}", a.id)).await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &v.task;
    let r = &t.spec.requirements;
    outln!(
        "task      {}\nname      {}\nstate     {}",
        t.id,
        t.spec.name,
        t.state
    );
    if let Some(reason) = &v.pending_reason {
        outln!("reason    {reason}");
    }
    if let Some(e) = &v.eta {
        let now = SystemClock.now().0;
        outln!(
            "queue     position {} · starts in about {} · finishes in about {} · confidence {:.0}% (learned run times of the tasks ahead)",
            e.position,
            millis(e.start_ms.saturating_sub(now)),
            millis(e.finish_ms.saturating_sub(now)),
            e.confidence * 100.0
        );
    }
    outln!("command   {}", t.spec.argv.join(" "));
    outln!(
        "requires  cpu {} · memory {} · gpu {:?}",
        r.cpu,
        r.memory,
        r.gpu
    );
    outln!(
        "retries   {} · priority {} · timeout {}",
        t.spec.retries,
        t.spec.priority,
        t.spec
            .timeout_ms
            .map(millis)
            .unwrap_or_else(|| "none".into())
    );
    for at in &t.attempts {
        let o = at.outcome.as_ref();
        outln!(
            "attempt {} on {}: {}{}{}",
            at.number,
            at.worker,
            o.map(|o| o.state.to_string())
                .unwrap_or_else(|| if at.started_at.is_some() {
                    "running".into()
                } else {
                    "assigned".into()
                }),
            o.and_then(|o| o.exit_code)
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default(),
            o.map(|o| format!(
                " · peak rss {} · cpu {}{}{}",
                o.peak_rss,
                millis(o.cpu_time_ms),
                if o.peak_gpu_memory.0 > 0 {
                    format!(" · peak gpu memory {}", o.peak_gpu_memory)
                } else {
                    String::new()
                },
                o.message
                    .as_ref()
                    .map(|m| format!(" · {m}"))
                    .unwrap_or_default()
            ))
            .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub id: u64,
    /// Show stderr instead of stdout
    #[arg(long)]
    pub stderr: bool,
    /// Attempt number [default: the latest]
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Keep printing new output until the task ends
    #[arg(long, short = 'f')]
    pub follow: bool,
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let client = Client::new(&a.client)?;
    let stream = if a.stderr { "stderr" } else { "stdout" };
    let mut offset = 0;
    let mut attempt = a.attempt;
    loop {
        let mut q = format!(
            "/api/v1/tasks/{}/logs?stream={stream}&offset={offset}",
            a.id
        );
        if let Some(n) = attempt {
            q += &format!("&attempt={n}");
        }
        let c: LogChunk = client.get(&q).await?;
        if c.ledger_tail {
            eprintln!(
                "(the worker that ran attempt {} cannot be reached: showing the last lines kept in the ledger)",
                c.attempt
            );
        }
        if attempt.is_none() && c.attempt > 0 {
            attempt = Some(c.attempt); // stay on one attempt's file while following
        }
        let mut out = std::io::stdout().lock();
        out.write_all(c.data.as_bytes())
            .context("writing to stdout")?;
        out.flush().ok();
        offset = c.next_offset;
        if !a.follow || c.complete {
            return Ok(ExitCode::SUCCESS);
        }
        if c.data.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub id: u64,
}

pub async fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let v: serde_json::Value = client
        .post(
            &format!("/api/v1/tasks/{}/cancel", a.id),
            &serde_json::json!({}),
        )
        .await?;
    match v["state"].as_str() {
        Some("cancelled") => outln!("task {} cancelled", a.id),
        Some(s) => outln!("task {} is {s}; its worker is stopping it", a.id),
        None => bail!("unexpected answer {v}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(a: JsonArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let ws: Vec<WorkerStatus> = client.get("/api/v1/workers").await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(ExitCode::SUCCESS);
    }
    let names = testmesh_consensus::model::display_names(ws.iter().map(|v| &v.worker));
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|v| {
            let w = &v.worker;
            let (c, al) = (&w.capacity, &w.allocated);
            let r = &w.record;
            vec![
                w.id.to_string(),
                names.get(&w.id).cloned().unwrap_or_default(),
                w.hardware.hostname.clone(),
                match &w.quarantine {
                    Some(_) => "QUARANTINED".to_string(),
                    None => format!("{:?}", w.state).to_lowercase(),
                },
                format!("{}/{}", al.cpu, c.cpu),
                format!("{}/{}", al.memory, c.memory),
                if c.gpus.is_empty() {
                    "-".into()
                } else {
                    format!("{}/{} {}", al.gpus.len(), c.gpus.len(), c.gpus[0].model)
                },
                v.active_tasks.to_string(),
                format!("{}/{}", r.succeeded, r.finished()),
                r.cpu_efficiency()
                    .map_or("-".into(), |e| format!("{:.0}%", e * 100.0)),
                v.speed_vs_peers.map_or("-".into(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "HOST", "STATE", "CPU", "MEMORY", "GPUS", "TASKS", "PASSED", "CPU EFF",
            "SPEED",
        ],
        &rows,
    );
    for v in &ws {
        if let Some(q) = &v.worker.quarantine {
            outln!(
                "worker {} quarantined: {} (clear with `testmesh unquarantine {}`)",
                v.worker.id,
                q.reason,
                v.worker.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(a: JsonArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let s: StatusView = client.get("/api/v1/status").await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("node      {} (testmesh {})", s.node_id, s.version);
    outln!(
        "role      {} · leader {} · term {} · applied {}",
        s.role,
        s.leader.as_deref().unwrap_or("none"),
        s.term,
        s.last_applied
    );
    outln!(
        "members   {} voter(s), {} learner(s)",
        s.voters.len(),
        s.learners.len()
    );
    outln!("workers   {}", s.workers);
    let counts: Vec<String> = s.tasks.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!(
        "tasks     {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(" · ")
        }
    );
    outln!(
        "host      cpu {:.0}% · memory {}/{} · load {:.2}",
        s.host.cpu_percent,
        s.host.memory_used,
        s.host.memory_total,
        s.host.load_1m
    );
    outln!("uptime    {}", millis(s.uptime_secs * 1000));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Worker id (16 hex digits, as `testmesh workers` shows)
    pub node: String,
}

pub async fn set_worker_state(a: WorkerArgs, action: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let v: serde_json::Value = client
        .post(
            &format!("/api/v1/workers/{}/{action}", a.node),
            &serde_json::json!({}),
        )
        .await?;
    outln!(
        "worker {} is {}{}",
        a.node,
        v["state"].as_str().unwrap_or("?"),
        if action == "unquarantine" {
            ", no longer quarantined"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
