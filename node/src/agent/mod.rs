//! Runs the tasks the ledger assigns to this node as real processes.
//!
//! Each attempt runs in its own process group with `CUDA_VISIBLE_DEVICES` set to the UUIDs of
//! its reserved GPUs, stdout and stderr copied from pipes into
//! `<data-dir>/logs/<task>.<attempt>.{stdout,stderr}` (see [`output`]). A
//! timeout or a cancel sends SIGTERM to the whole group, then SIGKILL after a grace period; when
//! the main process exits, whatever it left in its group is killed too. Exits, peak RSS and CPU
//! time come from `wait4` (see [`sys`]). Reports go through the core's group-commit writer.
//!
//! Processes are reached through the [`Processes`] trait: [`SystemProcesses`] in a node, a
//! scripted fake in the unit tests (the real-process behaviour is tested end to end).

pub mod env;
mod lease;
mod output;
mod sys;
#[cfg(test)]
mod tests;
pub mod watchdog;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testmesh_consensus::task::{Outcome, TAIL_BYTES, TaskSpec, TaskState, tail_of};
use testmesh_consensus::{Bytes, Command, TaskId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use lease::{LeaseView, WATCHDOG_LEASE, keep_lease};
pub use sys::{Exit, kill_orphans, task_of};
pub use watchdog::Watchdog;

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
    /// Write ends of the output pipes.
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// Why an attempt could not be started (its outcome's message says so).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create an output pipe: {0}")]
    Pipe(std::io::Error),
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

impl SystemProcesses {
    /// Tells `w` of every process group started and reaped, so that it can kill them should
    /// this process stop renewing its lease.
    pub fn with_watchdog(w: watchdog::Watchdog) -> Self {
        SystemProcesses {
            children: sys::Children::with_watchdog(w),
        }
    }
}

impl Processes for SystemProcesses {
    fn exits(&mut self) -> tokio::sync::mpsc::Receiver<Exit> {
        sys::start(self.children.clone())
    }

    fn spawn(&mut self, l: Launch<'_>) -> Result<u32, SpawnError> {
        // The program is looked up in the task's own PATH here: given a bare name and a PATH
        // of its own, std would fall back from posix_spawn to fork+exec of this whole process,
        // which halved task throughput.
        let path = l
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let mut cmd = match env::find_program(&l.argv[0], path) {
            Some(full) => {
                let mut c = std::process::Command::new(full);
                c.arg0(&l.argv[0]);
                c
            }
            None => std::process::Command::new(&l.argv[0]),
        };
        cmd.args(&l.argv[1..])
            .env_clear()
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
    /// Killed because this worker lost its standing with the leader (see [`lease`]).
    Fenced,
}

struct Running {
    attempt: u32,
    pid: u32,
    deadline: Option<Instant>,
    kill_at: Option<Instant>,
    ending: Option<Ending>,
    /// The copies of stdout and stderr into their files.
    output: [JoinHandle<u64>; 2],
    /// Artifacts to keep and the attempt's own directory to remove once it has ended.
    after: After,
}

/// What happens in an attempt's directory after it ends.
#[derive(Debug, Clone, Default)]
struct After {
    /// Where the task ran (artifact globs are relative to it).
    dir: Option<std::path::PathBuf>,
    globs: Vec<String>,
    junit_from: Option<String>,
    /// The attempt's own copy of the shipped code (or scratch directory), removed at the end.
    remove: Option<std::path::PathBuf>,
}

/// An attempt whose code was fetched and unpacked (or could not be).
struct Prepared {
    task: TaskId,
    attempt: u32,
    result: Result<std::path::PathBuf, String>,
}

/// What the agent needs to start one attempt, copied out of the ledger.
struct Start {
    task: TaskId,
    attempt: u32,
    spec: TaskSpec,
    /// NVML indices of the granted GPUs, and what CUDA is to see of them.
    gpus: Vec<u32>,
    visible: Vec<String>,
    /// The attempt's own directory (unpacked code, input files), once prepared.
    dir: Option<std::path::PathBuf>,
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
    /// The node's variables every task gets (see [`env`]).
    base_env: Vec<(String, String)>,
    /// Whether this node is in good standing with the leader (fencing), and the bound.
    standing: Option<(watch::Receiver<bool>, Duration)>,
    /// When the standing was last confirmed, and the watchdog's lease.
    lease: Option<(LeaseView, Duration)>,
    /// This boot's registration: nothing starts before the ledger shows it.
    boot_id: Option<u64>,
    /// Attempts whose code is being fetched and unpacked, and where they report back.
    preparing: HashMap<TaskId, (Start, JoinHandle<()>)>,
    prepared: (
        tokio::sync::mpsc::Sender<Prepared>,
        tokio::sync::mpsc::Receiver<Prepared>,
    ),
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
            base_env: Vec::new(),
            standing: None,
            lease: None,
            boot_id: None,
            preparing: HashMap::new(),
            prepared: tokio::sync::mpsc::channel(256),
        }
    }

    /// Stops every attempt when `good` turns false and starts nothing until it is true again.
    pub fn with_fencing(mut self, good: watch::Receiver<bool>, fence_after: Duration) -> Self {
        self.standing = Some((good, fence_after));
        self
    }

    /// Starts nothing until the ledger shows this boot's registration (after a restart, the
    /// local copy may still assign attempts that were moved away meanwhile).
    pub fn with_boot_id(mut self, boot_id: u64) -> Self {
        self.boot_id = Some(boot_id);
        self
    }

    /// With a fencing watchdog whose lease is `lease` long: an attempt SIGKILLed once that
    /// lease may have run out is reported as fenced (lost), not failed.
    pub fn with_lease(mut self, view: LeaseView, lease: Duration) -> Self {
        self.lease = Some((view, lease));
        self
    }

    fn in_good_standing(&self) -> bool {
        self.standing.as_ref().is_none_or(|(rx, _)| *rx.borrow())
    }

    /// Kills every running attempt at once: this node can no longer be sure they are its own.
    fn fence(&mut self) {
        let mut pids = Vec::new();
        for r in self.running.values_mut() {
            if r.ending == Some(Ending::Fenced) {
                continue;
            }
            // A timeout or a cancel under way keeps its meaning; it is only cut short.
            if r.ending.is_none() {
                r.ending = Some(Ending::Fenced);
            }
            r.kill_at = None;
            pids.push(r.pid);
        }
        for pid in pids {
            self.processes.signal(pid, Signal::Kill);
        }
    }

    /// The node's own variables that tasks get (`env::for_tasks`).
    pub fn with_base_env(mut self, env: Vec<(String, String)>) -> Self {
        self.base_env = env;
        self
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
        // No attempt outlives its agent: the directories of a previous boot's are garbage.
        let _ = std::fs::remove_dir_all(self.core.data_dir.join("work"));
        let mut exits = self.processes.exits();
        let mut applied = self.core.ledger.watch();
        let mut standing = self.standing.as_ref().map(|(rx, _)| rx.clone());
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
                Some(p) = self.prepared.1.recv() => self.on_prepared(p).await,
                r = async {
                    match standing.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_err() { break; }
                    if !self.in_good_standing() {
                        self.fence();
                    }
                    self.sync().await;
                }
                _ = sleep => self.on_deadlines(),
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
        let mut prep_cancels = Vec::new();
        let mut active: HashMap<TaskId, u32> = HashMap::new();
        {
            let ledger = self.core.ledger.read();
            let registered = self.boot_id.is_none_or(|boot| {
                ledger.worker(self.core.node).is_some_and(|w| {
                    w.boot_id == boot && w.state != testmesh_consensus::model::WorkerState::Lost
                })
            });
            let may_start = registered && self.in_good_standing();
            let inventory = ledger
                .worker(self.core.node)
                .map(|w| w.capacity.gpus.as_slice())
                .unwrap_or_default();
            for t in ledger.active_on(self.core.node) {
                active.insert(t.id, t.attempt);
                if self.reported.get(&t.id) == Some(&t.attempt) {
                    continue;
                }
                if self
                    .preparing
                    .get(&t.id)
                    .is_some_and(|(p, _)| p.attempt == t.attempt)
                {
                    if t.cancel_requested {
                        prep_cancels.push((t.id, t.attempt));
                    }
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
                    None if t.state == TaskState::Assigned && may_start => {
                        let gpus: Vec<u32> = t
                            .current_attempt()
                            .map(|a| a.gpus.iter().map(|g| g.index).collect())
                            .unwrap_or_default();
                        starts.push(Start {
                            task: t.id,
                            attempt: t.attempt,
                            spec: t.spec.clone(),
                            visible: visible_devices(inventory, &gpus),
                            gpus,
                            dir: None,
                        })
                    }
                    // Running in the ledger but not here: a previous boot ran it. The worker
                    // re-registration marks it lost; nothing to do.
                    None => {}
                }
            }
        }
        self.reported.retain(|id, att| active.get(id) == Some(att));
        // Preparations the ledger no longer gives us, or that were cancelled: stopped (a long
        // fetch must not outlive its attempt).
        let dropped: Vec<TaskId> = self
            .preparing
            .iter()
            .filter(|(id, (s, _))| active.get(id) != Some(&s.attempt))
            .map(|(id, _)| *id)
            .collect();
        for id in dropped {
            if let Some((s, h)) = self.preparing.remove(&id) {
                h.abort();
                self.remove_work_dir(s.task, s.attempt);
            }
        }
        for (task, attempt) in prep_cancels {
            if let Some((s, h)) = self.preparing.remove(&task) {
                h.abort();
                self.remove_work_dir(s.task, s.attempt);
            }
            unstarted_cancels.push((task, attempt));
        }
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
            let outcome = Outcome {
                message: Some("cancelled before it started".into()),
                ..Outcome::bare(TaskState::Cancelled)
            };
            self.reporter()
                .end(task, attempt, outcome, None, After::default())
                .await;
        }
        for s in starts {
            if s.spec.suite().code.is_some() || !s.spec.suite().files.is_empty() {
                self.prepare(s);
            } else {
                self.start(s).await;
            }
        }
    }

    fn work_dir(&self, task: TaskId, attempt: u32) -> std::path::PathBuf {
        self.core
            .data_dir
            .join("work")
            .join(format!("{}.{attempt}", task.0))
    }

    /// Removes an attempt's directory off the loop.
    fn remove_work_dir(&self, task: TaskId, attempt: u32) {
        let d = self.work_dir(task, attempt);
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(d);
        });
    }

    /// Fetches and unpacks the attempt's code and writes its input files, off the loop; the
    /// attempt starts when that is done (see [`Agent::on_prepared`]).
    fn prepare(&mut self, s: Start) {
        let (task, attempt) = (s.task, s.attempt);
        let dir = self.work_dir(task, attempt);
        let code = s.spec.suite().code.clone();
        let files = s.spec.suite().files.clone();
        let store = self.core.code.clone();
        let tx = self.prepared.0.clone();
        let handle = tokio::spawn(async move {
            let result = async {
                let archive = match &code {
                    Some(c) => Some(store.ensure(c).await.map_err(|e| e.to_string())?),
                    None => None,
                };
                let d = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(&d);
                    match archive {
                        Some(a) => crate::core::code::unpack(&a, &d).map_err(|e| e.to_string())?,
                        None => std::fs::create_dir_all(&d).map_err(|e| e.to_string())?,
                    }
                    let written = write_inputs(&d, &files);
                    if written.is_err() {
                        let _ = std::fs::remove_dir_all(&d);
                    }
                    written.map(|()| d)
                })
                .await
                .map_err(|e| e.to_string())?
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let _ = tx
                .send(Prepared {
                    task,
                    attempt,
                    result,
                })
                .await;
        });
        self.preparing.insert(task, (s, handle));
    }

    /// Starts a prepared attempt if it is still this worker's to run; a failed preparation
    /// (the code could not be fetched) is the infrastructure's failure: reported lost, so it
    /// runs again without using a retry.
    async fn on_prepared(&mut self, p: Prepared) {
        // Only the preparation of the attempt being prepared counts (an older one of the same
        // task may report after its successor started preparing).
        let current = self
            .preparing
            .get(&p.task)
            .is_some_and(|(s, _)| s.attempt == p.attempt);
        if !current {
            if p.result.is_ok() {
                self.remove_work_dir(p.task, p.attempt);
            }
            return;
        }
        let Some((mut s, _)) = self.preparing.remove(&p.task) else {
            return;
        };
        let (still_ours, cancelled) = {
            let l = self.core.ledger.read();
            l.task(p.task).map_or((false, false), |t| {
                (
                    t.attempt == p.attempt
                        && t.state == TaskState::Assigned
                        && t.current_attempt()
                            .is_some_and(|a| a.worker == self.core.node),
                    t.cancel_requested,
                )
            })
        };
        let dir = match p.result {
            Ok(d) => d,
            Err(why) => {
                if still_ours {
                    self.reported.insert(p.task, p.attempt);
                    let outcome =
                        Outcome::lost(format!("could not prepare the task's directory: {why}"));
                    tracing::warn!("task {} attempt {}: {why}", p.task, p.attempt);
                    self.reporter()
                        .end(p.task, p.attempt, outcome, None, After::default())
                        .await;
                }
                return;
            }
        };
        if !still_ours || cancelled || !self.in_good_standing() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            if still_ours && cancelled {
                self.reported.insert(p.task, p.attempt);
                let outcome = Outcome {
                    message: Some("cancelled before it started".into()),
                    ..Outcome::bare(TaskState::Cancelled)
                };
                self.reporter()
                    .end(p.task, p.attempt, outcome, None, After::default())
                    .await;
            }
            return;
        }
        s.dir = Some(dir);
        self.start(s).await;
    }

    async fn start(&mut self, s: Start) {
        match self.spawn(&s) {
            Ok((pid, output)) => {
                let now = self.core.clock.instant();
                self.running.insert(
                    s.task,
                    Running {
                        attempt: s.attempt,
                        pid,
                        deadline: s.spec.timeout_ms.map(|ms| now + Duration::from_millis(ms)),
                        kill_at: None,
                        ending: None,
                        output,
                        after: after_of(&s),
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
                let outcome = Outcome {
                    message: Some(message),
                    ..Outcome::bare(TaskState::Failed)
                };
                let after = After {
                    globs: Vec::new(),
                    junit_from: None,
                    ..after_of(&s)
                };
                self.reporter()
                    .end(s.task, s.attempt, outcome, None, after)
                    .await;
            }
        }
    }

    fn reporter(&self) -> Reporter {
        Reporter {
            core: self.core.clone(),
        }
    }

    /// Starts one attempt with its output pipes; its pid and the copies of its output.
    fn spawn(&mut self, s: &Start) -> Result<(u32, [JoinHandle<u64>; 2]), SpawnError> {
        let (out_r, out_w) = std::io::pipe().map_err(SpawnError::Pipe)?;
        let (err_r, err_w) = std::io::pipe().map_err(SpawnError::Pipe)?;
        let path = |stream| self.core.logs.path(s.task, s.attempt, stream);
        let stdout = output::capture(out_r, path(Stream::Stdout), self.max_log_size)
            .map_err(SpawnError::Pipe)?;
        // (Should the second capture or the spawn fail, the write ends are dropped with the
        // launch and the copies end by themselves.)
        let stderr = output::capture(err_r, path(Stream::Stderr), self.max_log_size)
            .map_err(SpawnError::Pipe)?;
        let indices: Vec<String> = s.gpus.iter().map(u32::to_string).collect();
        // The node's own environment only as far as `--pass-env` allows (cloud credentials in
        // it must not reach every task), then the task's variables, its secrets, and ours.
        let mut env: Vec<(String, String)> = self.base_env.clone();
        env.extend(s.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(
            s.spec
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        env.extend([
            ("TESTMESH_TASK_ID".to_string(), s.task.to_string()),
            ("TESTMESH_ATTEMPT".to_string(), s.attempt.to_string()),
            ("TESTMESH_NODE_ID".to_string(), self.core.node.to_string()),
            // Without reserved GPUs the task must see none, not all of them. UUIDs, not
            // indices: CUDA numbers devices fastest-first unless told otherwise, NVML by PCI
            // bus, so on a host with mixed models an index could open a GPU not granted.
            ("CUDA_VISIBLE_DEVICES".to_string(), s.visible.join(",")),
            // Ordinals inside the task (cuda:0, cuda:1) follow the bus order, as NVML's do.
            ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
            ("TESTMESH_GPU_INDICES".to_string(), indices.join(",")),
        ]);
        let cwd = cwd_of(s);
        if let Some(d) = &s.dir {
            env.push(("TESTMESH_TASK_DIR".to_string(), d.display().to_string()));
        }
        let pid = self.processes.spawn(Launch {
            argv: &s.spec.argv,
            env,
            workdir: cwd.as_deref().and_then(|p| p.to_str()),
            stdout: out_w.into(),
            stderr: err_w.into(),
        })?;
        Ok((pid, [stdout, stderr]))
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(task) = self.by_pid.remove(&exit.pid) else {
            return;
        };
        let Some(run) = self.running.remove(&task) else {
            return;
        };
        // (The reaper has already killed whatever the task left behind in its group.)
        // An attempt that exited by itself before the fence's kill reached it keeps its result.
        let ending = run
            .ending
            .filter(|e| *e != Ending::Fenced || exit.code.is_none());
        // Killed by no one here while the lease was out: the watchdog fenced it.
        let now = self.core.clock.instant();
        let ending = ending.or_else(|| {
            let watchdog = self.lease.as_ref().is_some_and(|(v, l)| v.lapsed(now, *l));
            (watchdog && exit.signal == Some(sys::SIGKILL)).then_some(Ending::Fenced)
        });
        let (state, message) = match (ending, exit.code) {
            (Some(Ending::TimedOut), _) => (TaskState::TimedOut, Some("timed out".to_string())),
            (Some(Ending::Cancelled), _) => (TaskState::Cancelled, Some("cancelled".to_string())),
            (Some(Ending::Fenced), _) => (
                TaskState::Lost,
                Some(format!(
                    "fenced: this worker had no confirmation from the leader for {:?}; stopped so that the task cannot run twice",
                    self.standing.as_ref().map_or(Duration::ZERO, |(_, d)| *d)
                )),
            ),
            (None, Some(0)) => (TaskState::Succeeded, None),
            (None, Some(c)) => (TaskState::Failed, Some(format!("exited with code {c}"))),
            (None, None) => (
                TaskState::Failed,
                Some(format!("killed by signal {}", exit.signal.unwrap_or(0))),
            ),
        };
        self.reported.insert(task, run.attempt);
        let outcome = Outcome {
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
            kept: None,
        };
        // The report waits for the output pipes to drain: off the agent's loop, so a process
        // that left the group holding a pipe delays only this report.
        let reporter = self.reporter();
        let [stdout, stderr] = run.output;
        let attempt = run.attempt;
        let after = run.after;
        tokio::spawn(async move {
            let paths = reporter.paths(task, attempt);
            // Both at once: the drain bound holds for the pair, not for each in turn.
            let (out, err) = tokio::join!(
                output::finished(stdout, &paths[0]),
                output::finished(stderr, &paths[1])
            );
            let lens = [out, err];
            reporter
                .end(task, attempt, outcome, Some(lens), after)
                .await;
        });
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
}

/// Writes a task's input files into its directory, refusing any path that would leave it (a
/// symbolic link in the shipped tree could point elsewhere). Blocking.
fn write_inputs(
    dir: &std::path::Path,
    files: &[testmesh_consensus::suite::InputFile],
) -> Result<(), String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for f in files {
        testmesh_consensus::suite::check_relative("input file", &f.path)?;
        let p = dir.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            let real = parent.canonicalize().map_err(|e| e.to_string())?;
            if !real.starts_with(&root) {
                return Err(format!(
                    "input file {:?} would be written outside the task's directory (through a symbolic link)",
                    f.path
                ));
            }
        }
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "input file {:?} is a symbolic link in the shipped tree; refusing to write through it",
                f.path
            ));
        }
        std::fs::write(&p, &f.content).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Where an attempt runs: its own directory (joined with the spec's relative `workdir` when
/// the code was shipped), else the spec's `workdir`, else the node's.
fn cwd_of(s: &Start) -> Option<std::path::PathBuf> {
    match (&s.dir, &s.spec.workdir) {
        (Some(d), Some(w)) if s.spec.suite().code.is_some() => Some(d.join(w)),
        (Some(d), _) => Some(d.clone()),
        (None, w) => w.as_ref().map(std::path::PathBuf::from),
    }
}

fn after_of(s: &Start) -> After {
    After {
        dir: cwd_of(s),
        globs: s.spec.suite().artifacts.clone(),
        junit_from: s.spec.suite().junit_from.clone(),
        remove: s.dir.clone(),
    }
}

/// What `CUDA_VISIBLE_DEVICES` lists for the granted GPUs: each one's UUID from the worker's
/// inventory (the index when the inventory has no UUID for it).
fn visible_devices(inventory: &[testmesh_consensus::model::GpuInfo], gpus: &[u32]) -> Vec<String> {
    gpus.iter()
        .map(|i| {
            inventory
                .iter()
                .find(|g| g.index == *i && !g.uuid.is_empty())
                .map_or_else(|| i.to_string(), |g| g.uuid.clone())
        })
        .collect()
}

/// Reports how attempts ended; cheap to clone into a task of its own.
struct Reporter {
    core: Core,
}

impl Reporter {
    /// Keeps the attempt's artifacts and test results, then removes its own directory.
    async fn keep_artifacts(
        &self,
        task: TaskId,
        attempt: u32,
        outcome: &mut Outcome,
        after: After,
    ) {
        if after.globs.is_empty() && after.junit_from.is_none() && after.remove.is_none() {
            return;
        }
        let dest = crate::core::artifacts::dir_of(&self.core.data_dir, task, attempt);
        let collected = tokio::task::spawn_blocking(move || {
            let c = match &after.dir {
                // Only from a directory of the attempt's own: a shared one holds other runs' files.
                Some(d)
                    if after.remove.is_some()
                        && (!after.globs.is_empty() || after.junit_from.is_some()) =>
                {
                    crate::core::artifacts::collect(
                        d,
                        &after.globs,
                        after.junit_from.as_deref(),
                        &dest,
                    )
                }
                _ => Default::default(),
            };
            if let Some(r) = &after.remove {
                let _ = std::fs::remove_dir_all(r);
            }
            c
        })
        .await
        .unwrap_or_default();
        if !collected.files.is_empty() || !collected.tests.is_empty() {
            outcome.kept = Some(Box::new(testmesh_consensus::task::Kept {
                artifacts: collected.files,
                tests: collected.tests,
            }));
        }
        if !collected.notes.is_empty() {
            let note = collected.notes.join("; ");
            outcome.message = Some(match outcome.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
    }

    fn paths(&self, task: TaskId, attempt: u32) -> [std::path::PathBuf; 2] {
        [Stream::Stdout, Stream::Stderr].map(|s| self.core.logs.path(task, attempt, s))
    }

    /// Reports how an attempt ended, with the tails of its output for the ledger. `lens`: the
    /// bytes in each output file when known (0: no file), else they are looked up.
    async fn end(
        &self,
        task: TaskId,
        attempt: u32,
        mut outcome: Outcome,
        lens: Option<[u64; 2]>,
        after: After,
    ) {
        let paths = self.paths(task, attempt);
        self.keep_artifacts(task, attempt, &mut outcome, after)
            .await;
        let lens = lens.unwrap_or_else(|| {
            paths
                .clone()
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        });
        // Most tasks print little or nothing: an attempt that printed nothing has no files and
        // costs no further file operations.
        let (metrics, bad) = if lens[0] > 0 {
            let stdout = paths[0].clone();
            tokio::task::spawn_blocking(move || output::read_metrics(&stdout))
                .await
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let tail = |i: usize| {
            if lens[i] == 0 {
                return String::new();
            }
            let want = (TAIL_BYTES + 256) as u64;
            read_log(&paths[i], lens[i].saturating_sub(want), want)
                .map(|(bytes, _)| tail_of(&bytes))
                .unwrap_or_default()
        };
        outcome.stdout_tail = tail(0);
        outcome.stderr_tail = tail(1);
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
