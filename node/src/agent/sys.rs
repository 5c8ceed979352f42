//! Process-level system calls of the agent. `wait4(2)` (unlike `waitpid`) returns the child's
//! resource usage: peak RSS and CPU time; no safe crate wraps it, so this is the one module of the
//! workspace with `unsafe` code, together with `killpg(2)` for whole process groups.
//!

#![allow(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use testmesh_consensus::TaskId;
use tokio::sync::mpsc;

/// How a child ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub max_rss_bytes: u64,
    pub cpu_time: Duration,
}

/// The pids the agent spawned and has not seen exit. The reaper reaps only these: a child that
/// std's `Command::spawn` reaps itself (an `exec` that failed) must be left to it.
/// The fencing watchdog, when there is one, hears of every group started and ended.
#[derive(Clone, Default)]
pub struct Children(
    Arc<(Mutex<HashSet<u32>>, Condvar)>,
    Option<super::watchdog::Watchdog>,
);

impl Children {
    pub fn with_watchdog(w: super::watchdog::Watchdog) -> Children {
        Children(Arc::default(), Some(w))
    }

    pub fn spawned(&self, pid: u32) {
        if let Some(w) = &self.1 {
            w.started(pid);
        }
        let (m, c) = &*self.0;
        m.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
        c.notify_one();
    }

    fn contains(&self, pid: u32) -> bool {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&pid)
    }

    fn remove(&self, pid: u32) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    fn snapshot(&self) -> Vec<u32> {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn wait_until_any(&self) {
        let (m, c) = &*self.0;
        let mut set = m.lock().unwrap_or_else(|p| p.into_inner());
        while set.is_empty() {
            set = c.wait(set).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Blocks until some child has exited and returns its pid, without reaping it.
fn peek_exited() -> std::io::Result<u32> {
    // SAFETY: all-zero is a valid `siginfo_t`; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live, writable siginfo_t.
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded with WEXITED, so the pid field is set.
    Ok(unsafe { info.si_pid() } as u32)
}

/// Whether our child `pid` has exited, without blocking or reaping it.
fn has_exited(pid: u32) -> bool {
    // SAFETY: as in `peek_exited`.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live, writable siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: on success the pid field is set (0 when the child has not exited).
    r == 0 && unsafe { info.si_pid() } as u32 == pid
}

/// Reaps `pid` (known to have exited) and returns its exit status and resource usage.
fn reap(pid: u32) -> std::io::Result<Exit> {
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, writable locals of the right types for the call.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Exit {
        pid,
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
        cpu_time: tv(usage.ru_utime) + tv(usage.ru_stime),
    })
}

/// Starts the reaper thread; exits of registered children are delivered on the channel.
///
/// It peeks at exited children (`WNOWAIT`); for one of ours it first kills whatever the task
/// left in its process group (the leader is still a zombie, so its pid, which is the group id,
/// cannot have been reused), then reaps it with `wait4` for its resource usage.
pub fn start(children: Children) -> mpsc::Receiver<Exit> {
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("testmesh-reaper".into())
        .spawn(move || {
            loop {
                children.wait_until_any();
                let pid = match peek_exited() {
                    Ok(pid) => pid,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        if e.raw_os_error() != Some(libc::ECHILD) {
                            tracing::error!("waitid failed: {e}");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let pid = if children.contains(pid) {
                    pid
                } else {
                    // Not ours (yet): a failed spawn that its spawner reaps, or a pid about to
                    // be registered. It may hide our exited children behind it: check those.
                    match children.snapshot().into_iter().find(|p| has_exited(*p)) {
                        Some(p) => p,
                        None => {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    }
                };
                signal_group(pid, SIGKILL);
                // Before the reap: until then the zombie keeps the group id from being reused.
                if let Some(w) = &children.1 {
                    w.ended(pid);
                }
                let exit = reap(pid);
                children.remove(pid);
                match exit {
                    Ok(exit) => {
                        if tx.blocking_send(exit).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("wait4({pid}) failed: {e}"),
                }
            }
        })
        .expect("spawn the reaper thread");
    rx
}

/// Sends `signal` to every process of group `pgid`. A group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: i32) {
    if pgid <= 1 {
        return; // never signal init's or our own "all processes" group by mistake
    }
    // SAFETY: killpg takes plain integers and has no memory effects.
    let r = unsafe { libc::killpg(pgid as libc::pid_t, signal) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("cannot signal process group {pgid}: {e}");
        }
    }
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;

/// The task attempt that process `pid` belongs to, when testmesh node `node_id` started it (a
/// task or a task's child: they all carry its `TESTMESH_NODE_ID`, `TESTMESH_TASK_ID` and
/// `TESTMESH_ATTEMPT`). A process we cannot inspect is not ours.
pub fn task_of(pid: u32, node_id: &str) -> Option<(TaskId, u32)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut ours, mut task, mut attempt) = (false, None, None);
    for v in env.split(|b| *b == 0) {
        let Ok(v) = std::str::from_utf8(v) else {
            continue;
        };
        if let Some(n) = v.strip_prefix("TESTMESH_NODE_ID=") {
            ours = n == node_id;
        } else if let Some(t) = v.strip_prefix("TESTMESH_TASK_ID=") {
            task = t.parse().ok().map(TaskId);
        } else if let Some(a) = v.strip_prefix("TESTMESH_ATTEMPT=") {
            attempt = a.parse().ok();
        }
    }
    if !ours {
        return None;
    }
    Some((task?, attempt?))
}

/// Kills the process groups of tasks left behind by an earlier run of this node (after a crash
/// or `kill -9` its children keep running). They are recognised by the `TESTMESH_NODE_ID`
/// variable the agent gives every task; returns how many groups were killed. Call it before the
/// agent starts anything.
pub fn kill_orphans(node_id: &str) -> usize {
    let me = std::process::id();
    let needle = format!("TESTMESH_NODE_ID={node_id}");
    let mut groups = std::collections::BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        // Field 5 of /proc/PID/stat is the process group; the command name (field 2) may hold
        // spaces, so split after its closing parenthesis.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let pgid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(pgid) = pgid.filter(|g| *g != me && *g > 1) {
            groups.insert(pgid);
        }
    }
    for g in &groups {
        signal_group(*g, SIGKILL);
    }
    groups.len()
}
