//! Process-level system calls of the agent. `wait4(2)` (unlike `waitpid`) returns the child's
//! resource usage: peak RSS and CPU time; no safe crate wraps it, so this is the one module of the
//! workspace with `unsafe` code, together with `killpg(2)` for whole process groups.
//!
//! One thread blocks in `wait4(-1)` for any child; the node starts no children other than tasks
//! (it uses no `tokio::process`), so every pid it reaps belongs to the agent.

#![allow(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// Tells the reaper thread how many children are outstanding, so it sleeps instead of spinning
/// on `ECHILD` when there are none.
#[derive(Clone, Default)]
pub struct Children(Arc<(Mutex<u64>, Condvar)>);

impl Children {
    pub fn spawned(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        c.notify_one();
    }
}

fn wait_any() -> std::io::Result<Exit> {
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, writable locals of the right types for the call.
    let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Exit {
        pid: pid as u32,
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
        cpu_time: tv(usage.ru_utime) + tv(usage.ru_stime),
    })
}

/// Starts the reaper thread; exits are delivered on the returned channel.
pub fn start(children: Children) -> mpsc::Receiver<Exit> {
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("testmesh-reaper".into())
        .spawn(move || {
            loop {
                {
                    let (m, c) = &*children.0;
                    let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
                    while *n == 0 {
                        n = c.wait(n).unwrap_or_else(|p| p.into_inner());
                    }
                }
                match wait_any() {
                    Ok(exit) => {
                        let (m, _) = &*children.0;
                        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
                        *n = n.saturating_sub(1);
                        drop(n);
                        if tx.blocking_send(exit).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                        // Counted a child that is not there (spawn raced with nothing to reap):
                        // forget one and look again shortly.
                        let (m, _) = &*children.0;
                        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
                        *n = n.saturating_sub(1);
                        drop(n);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::error!("wait4 failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
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
