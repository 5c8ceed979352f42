//! The fencing watchdog: a small process of its own, started by the node, that kills the
//! node's task process groups when the node stops renewing its lease.
//!
//! The node fences itself (see [`super::lease`]), but only while it runs: a node process that
//! is paused (SIGSTOP, a debugger, a wedged runtime) or killed leaves its tasks running after
//! the leader has marked it lost and started their next attempts elsewhere. The watchdog does
//! not share that fate. The node tells it, one line at a time on a pipe, which process groups
//! it started (`+PGID`), which ended (`-PGID`), and for how long its standing was just
//! confirmed (`L MILLIS`). When the lease runs out, or the pipe closes because the node died,
//! the watchdog kills every group it knows.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::clock::{Clock, SystemClock};

/// The node's end of the pipe. Cloning shares it.
#[derive(Clone)]
pub struct Watchdog {
    pipe: Arc<Mutex<Option<ChildStdin>>>,
}

impl Watchdog {
    /// Starts `testmesh __watchdog` in a process group of its own (a Ctrl-C meant for the node
    /// must not take the watchdog with it).
    pub fn spawn() -> std::io::Result<Watchdog> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("__watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        // Reaped by its own thread: the agent's reaper leaves children it did not start alone.
        std::thread::Builder::new()
            .name("testmesh-watchdog-wait".into())
            .spawn(move || {
                if let Ok(s) = child.wait() {
                    tracing::warn!("the fencing watchdog exited ({s})");
                }
            })?;
        Ok(Watchdog {
            pipe: Arc::new(Mutex::new(pipe)),
        })
    }

    fn send(&self, line: String) {
        let mut g = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = g.as_mut()
            && p.write_all(line.as_bytes()).is_err()
        {
            tracing::warn!("the fencing watchdog is gone; fencing relies on this process alone");
            *g = None;
        }
    }

    /// The node's standing was confirmed: its attempts may run for `valid_for` more.
    pub fn lease(&self, valid_for: Duration) {
        self.send(format!("L {}\n", valid_for.as_millis()));
    }

    pub fn started(&self, pgid: u32) {
        self.send(format!("+{pgid}\n"));
    }

    pub fn ended(&self, pgid: u32) {
        self.send(format!("-{pgid}\n"));
    }
}

/// What the watchdog knows: live groups and when the lease runs out.
#[derive(Debug, Default)]
pub struct State {
    pub groups: BTreeSet<u32>,
    pub until: Option<Instant>,
}

impl State {
    /// Applies one line from the node; a line it cannot read is ignored.
    pub fn apply(&mut self, line: &str, now: Instant) {
        let line = line.trim();
        if let Some(ms) = line.strip_prefix("L ") {
            if let Ok(ms) = ms.trim().parse::<u64>() {
                self.until = Some(now + Duration::from_millis(ms));
            }
        } else if let Some(p) = line.strip_prefix('+') {
            self.groups.extend(p.parse::<u32>().ok().filter(|p| *p > 1));
        } else if let Some(p) = line.strip_prefix('-')
            && let Ok(p) = p.parse::<u32>()
        {
            self.groups.remove(&p);
        }
    }

    /// The groups to kill now: all of them once the lease has run out (or there never was
    /// one), and they are forgotten.
    pub fn expired(&mut self, now: Instant) -> Vec<u32> {
        if self.groups.is_empty() || self.until.is_some_and(|u| now < u) {
            return Vec::new();
        }
        std::mem::take(&mut self.groups).into_iter().collect()
    }
}

fn kill_all(groups: &[u32], why: &str) {
    if groups.is_empty() {
        return;
    }
    eprintln!(
        "testmesh watchdog: {why}; killing {} task process group(s) so that none runs twice",
        groups.len()
    );
    for g in groups {
        super::sys::signal_group(*g, super::sys::SIGKILL);
    }
}

/// The watchdog's main loop (`testmesh __watchdog`): reads the node's lines until the pipe
/// closes.
pub fn serve() {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut state = State::default();
    loop {
        let now = SystemClock.instant();
        let wait = state
            .until
            .filter(|_| !state.groups.is_empty())
            .map_or(Duration::from_secs(3600), |u| {
                u.saturating_duration_since(now)
            });
        match rx.recv_timeout(wait) {
            Ok(line) => {
                // Everything already sent first: a renewal queued behind other lines must not
                // find the lease run out.
                state.apply(&line, SystemClock.instant());
                while let Ok(line) = rx.try_recv() {
                    state.apply(&line, SystemClock.instant());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let all: Vec<u32> = std::mem::take(&mut state.groups).into_iter().collect();
                kill_all(&all, "the node has exited");
                return;
            }
        }
        let dead = state.expired(SystemClock.instant());
        kill_all(
            &dead,
            "the node's lease ran out (paused, wedged or cut off)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_die_when_the_lease_runs_out_and_not_before() {
        let t0 = SystemClock.instant();
        let mut s = State::default();
        s.apply("L 1000", t0);
        s.apply("+42", t0);
        s.apply("+43", t0);
        s.apply("-43", t0);
        s.apply("+1", t0); // never init's group
        s.apply("garbage", t0);
        assert!(s.expired(t0 + Duration::from_millis(999)).is_empty());
        // Renewed: still alive past the first deadline.
        s.apply("L 1000", t0 + Duration::from_millis(900));
        assert!(s.expired(t0 + Duration::from_millis(1500)).is_empty());
        assert_eq!(s.expired(t0 + Duration::from_millis(1900)), vec![42]);
        // Forgotten once killed.
        assert!(s.expired(t0 + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn a_group_started_without_a_lease_is_killed() {
        let t0 = SystemClock.instant();
        let mut s = State::default();
        s.apply("+7", t0);
        assert_eq!(s.expired(t0), vec![7]);
    }
}
