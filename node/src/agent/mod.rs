//! Runs the tasks the ledger assigns to this node as real processes.
//!
//! Each attempt runs in its own process group with `CUDA_VISIBLE_DEVICES` set to its reserved
//! GPU indices, stdout and stderr in `<data-dir>/logs/<task>.<attempt>.{stdout,stderr}`. A
//! timeout or a cancel sends SIGTERM to the whole group, then SIGKILL after a grace period; when
//! the main process exits, whatever it left in its group is killed too. Exits, peak RSS and CPU
//! time come from `wait4` (see [`sys`]). Reports go through the core's group-commit writer.
//!
//! Processes are reached through the [`Processes`] trait: [`SystemProcesses`] in a node, a
//! scripted fake in the unit tests (the real-process behaviour is tested end to end).

mod sys;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testmesh_consensus::task::{
    BenchMetric, MAX_METRICS, METRIC_PREFIX, Outcome, TAIL_BYTES, TaskSpec, TaskState, tail_of,
};
use testmesh_consensus::{Bytes, Command, TaskId};
use tokio::sync::watch;

pub use sys::{Exit, kill_orphans, task_of};

use crate::core::Core;
use crate::core::logs::{Stream, read_log};
use crate::monitor::GpuMemoryPeaks;

/// A signal to an attempt's whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Asks it to stop (a timeout or a cancel); the grace period follows.
    Term,
    Kill,
}

/// What one attempt is started with.
pub struct Launch<'a> {
    pub argv: &'a [String],
    /// The task's environment and testmesh's own variables.
    pub env: Vec<(String, String)>,
    pub workdir: Option<&'a str>,
    pub stdout: File,
    pub stderr: File,
}

/// Why an attempt could not be started (its outcome's message says so).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create log file {path}: {source}")]
    LogFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program:?}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
}

/// What the agent asks of the operating system.
pub trait Processes: Send + 'static {
    /// Starts watching for exits; the exits of started processes arrive on the channel.
    fn exits(&mut self) -> tokio::sync::mpsc::Receiver<Exit>;
    /// Starts one attempt in a process group of its own; returns its pid (= the group's id).
    fn spawn(&mut self, launch: Launch<'_>) -> Result<u32, SpawnError>;
    /// Signals an attempt's whole process group.
    fn signal(&mut self, pid: u32, signal: Signal);
}

/// Real processes: `fork`/`exec` through std, exits and resource use from the reaper thread.
#[derive(Default)]
pub struct SystemProcesses {
    children: sys::Children,
}

impl Processes for SystemProcesses {
    fn exits(&mut self) -> tokio::sync::mpsc::Receiver<Exit> {
        sys::start(self.children.clone())
    }

    fn spawn(&mut self, l: Launch<'_>) -> Result<u32, SpawnError> {
        let mut cmd = std::process::Command::new(&l.argv[0]);
        cmd.args(&l.argv[1..])
            .envs(l.env)
            .stdin(Stdio::null())
            .stdout(l.stdout)
            .stderr(l.stderr)
            .process_group(0);
        if let Some(dir) = l.workdir {
            cmd.current_dir(dir);
        }
        // The Child handle is dropped without waiting: the reaper thread collects the exit.
        let pid = cmd
            .spawn()
            .map(|c| c.id())
            .map_err(|source| SpawnError::Start {
                program: l.argv[0].clone(),
                source,
            })?;
        self.children.spawned(pid);
        Ok(pid)
    }

    fn signal(&mut self, pid: u32, signal: Signal) {
        let sig = match signal {
            Signal::Term => sys::SIGTERM,
            Signal::Kill => sys::SIGKILL,
        };
        sys::signal_group(pid, sig);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    TimedOut,
    Cancelled,
}

struct Running {
    attempt: u32,
    pid: u32,
    deadline: Option<Instant>,
    kill_at: Option<Instant>,
    ending: Option<Ending>,
}

/// What the agent needs to start one attempt, copied out of the ledger.
struct Start {
    task: TaskId,
    attempt: u32,
    spec: TaskSpec,
    gpus: Vec<u32>,
}

pub struct Agent<P: Processes> {
    core: Core,
    kill_grace: Duration,
    processes: P,
    running: HashMap<TaskId, Running>,
    by_pid: HashMap<u32, TaskId>,
    /// Attempts reported finished whose report may not be applied yet.
    reported: HashMap<TaskId, u32>,
    gpu_memory: GpuMemoryPeaks,
    /// Most bytes kept of each output stream of an attempt.
    max_log_size: u64,
}

impl<P: Processes> Agent<P> {
    pub fn new(core: Core, processes: P) -> Self {
        Agent {
            core,
            kill_grace: Duration::from_secs(3),
            processes,
            running: HashMap::new(),
            by_pid: HashMap::new(),
            reported: HashMap::new(),
            gpu_memory: GpuMemoryPeaks::default(),
            max_log_size: 64 << 20,
        }
    }

    /// Caps each output stream of an attempt (the tail is kept).
    pub fn with_max_log_size(mut self, bytes: u64) -> Self {
        self.max_log_size = bytes;
        self
    }

    /// Where the monitor keeps each attempt's peak GPU memory.
    pub fn with_gpu_memory(mut self, peaks: GpuMemoryPeaks) -> Self {
        self.gpu_memory = peaks;
        self
    }

    /// Runs until `shutdown` flips to true; then kills every running task group.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let logs = self.core.data_dir.join("logs");
        if let Err(e) = std::fs::create_dir_all(&logs) {
            tracing::error!("cannot create {}: {e}", logs.display());
        }
        let mut exits = self.processes.exits();
        let mut applied = self.core.ledger.watch();
        // Output is written by the tasks straight to their files; their size is checked this
        // often, so a file may briefly exceed --max-log-size.
        let mut trim = tokio::time::interval(Duration::from_secs(1));
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sync().await;
        loop {
            let next = self
                .running
                .values()
                .filter_map(|r| match (r.kill_at, r.ending) {
                    (Some(k), _) => Some(k),
                    (None, None) => r.deadline,
                    _ => None,
                })
                .min();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                r = applied.changed() => {
                    if r.is_err() { break; }
                    self.sync().await;
                }
                Some(exit) = exits.recv() => self.on_exit(exit).await,
                _ = sleep => self.on_deadlines(),
                _ = trim.tick(), if !self.running.is_empty() => self.trim_logs(),
            }
        }
        let pids: Vec<u32> = self.running.values().map(|r| r.pid).collect();
        for pid in pids {
            self.processes.signal(pid, Signal::Kill);
        }
        tracing::info!(
            "agent stopped; killed {} running task(s)",
            self.running.len()
        );
    }

    /// Starts what is newly assigned here, kills what was cancelled or taken away.
    async fn sync(&mut self) {
        let mut starts = Vec::new();
        let mut cancels = Vec::new();
        let mut unstarted_cancels = Vec::new();
        let mut active: HashMap<TaskId, u32> = HashMap::new();
        {
            let ledger = self.core.ledger.read();
            for t in ledger.active_on(self.core.node) {
                active.insert(t.id, t.attempt);
                if self.reported.get(&t.id) == Some(&t.attempt) {
                    continue;
                }
                match self.running.get(&t.id) {
                    Some(r)
                        if r.attempt == t.attempt && t.cancel_requested && r.ending.is_none() =>
                    {
                        cancels.push(t.id)
                    }
                    Some(_) => {}
                    None if t.state == TaskState::Assigned && t.cancel_requested => {
                        unstarted_cancels.push((t.id, t.attempt));
                    }
                    None if t.state == TaskState::Assigned => starts.push(Start {
                        task: t.id,
                        attempt: t.attempt,
                        spec: t.spec.clone(),
                        gpus: t
                            .current_attempt()
                            .map(|a| a.gpus.iter().map(|g| g.index).collect())
                            .unwrap_or_default(),
                    }),
                    // Running in the ledger but not here: a previous boot ran it. The worker
                    // re-registration marks it lost; nothing to do.
                    None => {}
                }
            }
        }
        self.reported.retain(|id, att| active.get(id) == Some(att));
        // Runs the ledger no longer gives us (lost, re-queued elsewhere): kill them.
        let gone: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(id, r)| active.get(id) != Some(&r.attempt))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(pid) = self.running.get(&id).map(|r| r.pid) {
                self.processes.signal(pid, Signal::Kill);
            }
        }
        let now = self.core.clock.instant();
        for id in cancels {
            if let Some(r) = self.running.get_mut(&id) {
                r.ending = Some(Ending::Cancelled);
                r.kill_at = Some(now + self.kill_grace);
                let pid = r.pid;
                self.processes.signal(pid, Signal::Term);
            }
        }
        for (task, attempt) in unstarted_cancels {
            self.reported.insert(task, attempt);
            self.report_end(
                task,
                attempt,
                Outcome {
                    message: Some("cancelled before it started".into()),
                    ..Outcome::bare(TaskState::Cancelled)
                },
            )
            .await;
        }
        for s in starts {
            self.start(s).await;
        }
    }

    async fn start(&mut self, s: Start) {
        match self.spawn(&s) {
            Ok(pid) => {
                let now = self.core.clock.instant();
                self.running.insert(
                    s.task,
                    Running {
                        attempt: s.attempt,
                        pid,
                        deadline: s.spec.timeout_ms.map(|ms| now + Duration::from_millis(ms)),
                        kill_at: None,
                        ending: None,
                    },
                );
                self.by_pid.insert(pid, s.task);
                self.core
                    .writer
                    .send(Command::TaskStarted {
                        task: s.task,
                        attempt: s.attempt,
                        worker: self.core.node,
                        pid,
                        at: self.core.now(),
                    })
                    .await;
            }
            Err(e) => {
                let message = e.to_string();
                tracing::debug!("task {} attempt {}: {message}", s.task, s.attempt);
                let err_log = self.core.logs.path(s.task, s.attempt, Stream::Stderr);
                let _ = std::fs::write(err_log, format!("testmesh: {message}\n"));
                self.reported.insert(s.task, s.attempt);
                self.report_end(
                    s.task,
                    s.attempt,
                    Outcome {
                        message: Some(message),
                        ..Outcome::bare(TaskState::Failed)
                    },
                )
                .await;
            }
        }
    }

    /// Cuts every running attempt's output files that outgrew the cap down to their tail.
    fn trim_logs(&self) {
        for (task, r) in &self.running {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let path = self.core.logs.path(*task, r.attempt, stream);
                if let Err(e) = crate::core::logs::keep_tail(&path, self.max_log_size) {
                    tracing::debug!("cannot trim {}: {e}", path.display());
                }
            }
        }
    }

    fn spawn(&mut self, s: &Start) -> Result<u32, SpawnError> {
        let open = |stream| {
            let path = self.core.logs.path(s.task, s.attempt, stream);
            // Appending, so that the file can be cut to its tail while the task writes on.
            // Attempt numbers are never reused, so the file is new; truncating only when it is
            // not saves a syscall per stream on the hot path.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|f| {
                    if f.metadata()?.len() > 0 {
                        f.set_len(0)?;
                    }
                    Ok(f)
                })
                .map_err(|source| SpawnError::LogFile { path, source })
        };
        let stdout = open(Stream::Stdout)?;
        let stderr = open(Stream::Stderr)?;
        let gpus: Vec<String> = s.gpus.iter().map(u32::to_string).collect();
        let mut env: Vec<(String, String)> = s
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            ("TESTMESH_TASK_ID".to_string(), s.task.to_string()),
            ("TESTMESH_ATTEMPT".to_string(), s.attempt.to_string()),
            ("TESTMESH_NODE_ID".to_string(), self.core.node.to_string()),
            // Without reserved GPUs the task must see none, not all of them.
            ("CUDA_VISIBLE_DEVICES".to_string(), gpus.join(",")),
        ]);
        self.processes.spawn(Launch {
            argv: &s.spec.argv,
            env,
            workdir: s.spec.workdir.as_deref(),
            stdout,
            stderr,
        })
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(task) = self.by_pid.remove(&exit.pid) else {
            return;
        };
        let Some(run) = self.running.remove(&task) else {
            return;
        };
        // (The reaper has already killed whatever the task left behind in its group.)
        let (state, message) = match (run.ending, exit.code) {
            (Some(Ending::TimedOut), _) => (TaskState::TimedOut, Some("timed out".to_string())),
            (Some(Ending::Cancelled), _) => (TaskState::Cancelled, Some("cancelled".to_string())),
            (None, Some(0)) => (TaskState::Succeeded, None),
            (None, Some(c)) => (TaskState::Failed, Some(format!("exited with code {c}"))),
            (None, None) => (
                TaskState::Failed,
                Some(format!("killed by signal {}", exit.signal.unwrap_or(0))),
            ),
        };
        self.reported.insert(task, run.attempt);
        self.report_end(
            task,
            run.attempt,
            Outcome {
                state,
                exit_code: exit.code,
                signal: exit.signal,
                peak_rss: Bytes(exit.max_rss_bytes),
                cpu_time_ms: exit.cpu_time.as_millis() as u64,
                peak_gpu_memory: self.gpu_memory.take(task, run.attempt),
                message,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
                metrics: Vec::new(),
            },
        )
        .await;
    }

    fn on_deadlines(&mut self) {
        let now = self.core.clock.instant();
        let mut signals = Vec::new();
        for (id, r) in self.running.iter_mut() {
            if r.kill_at.is_some_and(|k| k <= now) {
                tracing::debug!("task {id}: grace period over, SIGKILL");
                signals.push((r.pid, Signal::Kill));
                r.kill_at = None;
            } else if r.ending.is_none() && r.deadline.is_some_and(|d| d <= now) {
                tracing::debug!("task {id}: timed out, SIGTERM");
                r.ending = Some(Ending::TimedOut);
                r.kill_at = Some(now + self.kill_grace);
                signals.push((r.pid, Signal::Term));
            }
        }
        for (pid, signal) in signals {
            self.processes.signal(pid, signal);
        }
    }

    /// Reports how an attempt ended, with the tails of its output for the ledger.
    async fn report_end(&self, task: TaskId, attempt: u32, mut outcome: Outcome) {
        // One stat per stream decides the rest: most tasks print little or nothing, and an
        // attempt that printed nothing costs no further file operations (and leaves no file).
        let path = |stream| self.core.logs.path(task, attempt, stream);
        let len = |stream| std::fs::metadata(path(stream)).map_or(0, |m| m.len());
        let (out_len, err_len) = (len(Stream::Stdout), len(Stream::Stderr));
        // Metrics are read before the trim below can cut the start of the output.
        let (metrics, bad) = if out_len > 0 {
            let stdout = path(Stream::Stdout);
            tokio::task::spawn_blocking(move || read_metrics(&stdout))
                .await
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let tail = |stream, len: u64| {
            if len == 0 {
                let _ = std::fs::remove_file(path(stream));
                return String::new();
            }
            // A fast writer may have outrun the periodic trim: cut what it left to the cap.
            let len = if len > self.max_log_size {
                let _ = crate::core::logs::keep_tail(&path(stream), self.max_log_size);
                std::fs::metadata(path(stream)).map_or(0, |m| m.len())
            } else {
                len
            };
            let want = (TAIL_BYTES + 256) as u64;
            read_log(&path(stream), len.saturating_sub(want), want)
                .map(|(bytes, _)| tail_of(&bytes))
                .unwrap_or_default()
        };
        outcome.stdout_tail = tail(Stream::Stdout, out_len);
        outcome.stderr_tail = tail(Stream::Stderr, err_len);
        outcome.metrics = metrics;
        if let Some(first) = bad.first() {
            let first = testmesh_consensus::limits::cut(first, 300);
            tracing::warn!(
                "task {task}: {} malformed metric line(s): {first}",
                bad.len()
            );
            let note = format!(
                "ignored {} malformed metric line(s), first: {first}",
                bad.len()
            );
            outcome.message = Some(match outcome.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        outcome.clamp();
        self.core
            .writer
            .send(Command::TaskFinished {
                task,
                attempt,
                worker: self.core.node,
                outcome,
                at: self.core.now(),
            })
            .await;
    }
}

/// Longest output line read for a metric; the rest of a longer line is skipped unread.
const MAX_METRIC_LINE: usize = 4096;

/// Reads one line of at most [`MAX_METRIC_LINE`] bytes into `line`, skipping the rest of a
/// longer one; false at the end of the input.
fn read_bounded_line(r: &mut impl std::io::BufRead, line: &mut Vec<u8>) -> bool {
    line.clear();
    let mut over = false;
    loop {
        let buf = match r.fill_buf() {
            Ok([]) | Err(_) => return !line.is_empty() || over,
            Ok(b) => b,
        };
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = MAX_METRIC_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        over |= chunk.len() > room;
        let n = chunk.len();
        r.consume(n);
        if done {
            return true;
        }
    }
}

/// Output read for metric lines at most (a task printing more keeps its first metrics only).
const METRIC_SCAN_BYTES: u64 = 256 << 20;

/// The `TESTMESH_METRIC name=value unit` lines of a task's standard output (at most
/// [`MAX_METRICS`]), and what was wrong with the malformed ones.
fn read_metrics(path: &std::path::Path) -> (Vec<BenchMetric>, Vec<String>) {
    use std::io::Read;
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let Ok(f) = std::fs::File::open(path) else {
        return (ok, bad);
    };
    let mut r = std::io::BufReader::new(f.take(METRIC_SCAN_BYTES));
    let mut line = Vec::new();
    while ok.len() < MAX_METRICS && bad.len() < MAX_METRICS {
        if !read_bounded_line(&mut r, &mut line) {
            break;
        }
        if !line.starts_with(METRIC_PREFIX.as_bytes()) {
            continue;
        }
        match BenchMetric::parse_line(&String::from_utf8_lossy(&line)) {
            Some(Ok(m)) => ok.push(m),
            Some(Err(e)) => bad.push(e),
            None => {}
        }
    }
    (ok, bad)
}
