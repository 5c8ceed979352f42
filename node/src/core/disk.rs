//! The data dir's footprint and free space: sampled every few seconds off the async threads,
//! shown in `status` and `/metrics`, and used to refuse new work before the disk is full (the
//! ledger must always have room for the reports of what already runs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testmesh_consensus::store::LedgerReader;
use tokio::sync::watch;

/// What the data dir holds and how much room is left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskView {
    /// Everything under the data dir.
    pub data_dir_bytes: u64,
    /// The ledger file (log, snapshot, archive).
    pub ledger_bytes: u64,
    /// Task output files.
    pub logs_bytes: u64,
    pub log_files: u64,
    /// Free space of the file system holding the data dir.
    pub free_bytes: u64,
    /// Below this, new work is refused (`--min-free-disk`).
    pub min_free_bytes: u64,
    /// The last snapshot's size.
    pub snapshot_bytes: u64,
    /// Tasks in this replica's archive.
    pub archived_tasks: u64,
}

impl DiskView {
    /// Too little room for new work.
    pub fn full(&self) -> bool {
        self.free_bytes < self.min_free_bytes
    }
}

/// Shared handle on the last sample.
#[derive(Clone, Default)]
pub struct Disk {
    view: Arc<Mutex<DiskView>>,
    min_free: Arc<AtomicU64>,
    /// Never sampled yet: nothing is refused on a guess.
    sampled: Arc<std::sync::atomic::AtomicBool>,
}

/// Why new work is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the data dir {dir} has {free} bytes free, below --min-free-disk {min}: no new tasks until \
     space is freed (running tasks go on and their results are kept)"
)]
pub struct DiskFull {
    pub dir: String,
    pub free: u64,
    pub min: u64,
}

impl Disk {
    pub fn set_min_free(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
    }

    pub fn view(&self) -> DiskView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses new work while the data dir's file system is short of room.
    pub fn check(&self, dir: &Path) -> Result<(), DiskFull> {
        if !self.sampled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let v = self.view();
        if v.full() {
            return Err(DiskFull {
                dir: dir.display().to_string(),
                free: v.free_bytes,
                min: v.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Measures the data dir now (blocking: walks the logs), and deletes the output files of
    /// tasks the archive has dropped.
    pub fn refresh(&self, dir: &Path, ledger: &LedgerReader) {
        let ledger_bytes = std::fs::metadata(dir.join("ledger.redb")).map_or(0, |m| m.len());
        let dropped_upto = ledger.archive().dropped_upto();
        let (mut logs_bytes, mut log_files) = (0, 0);
        if let Ok(entries) = std::fs::read_dir(dir.join("logs")) {
            for e in entries.flatten() {
                let task = task_of(&e.file_name());
                if task.is_some_and(|t| t <= dropped_upto) && std::fs::remove_file(e.path()).is_ok()
                {
                    continue;
                }
                logs_bytes += e.metadata().map_or(0, |m| m.len());
                log_files += 1;
            }
        }
        // Artifacts go with their task's output; shipped code is counted (its cache is
        // bounded by --code-cache-size).
        let mut kept_bytes = 0;
        if let Ok(entries) = std::fs::read_dir(dir.join("artifacts")) {
            for e in entries.flatten() {
                let task = task_of(&e.file_name());
                if task.is_some_and(|t| t <= dropped_upto)
                    && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    continue;
                }
                kept_bytes += tree_bytes(&e.path());
            }
        }
        kept_bytes += tree_bytes(&dir.join("code")) + tree_bytes(&dir.join("work"));
        let others: u64 = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name() != "logs" && e.file_name() != "ledger.redb")
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let archived_tasks = ledger.archive().len().map_or(0, |(t, _)| t);
        let view = DiskView {
            data_dir_bytes: ledger_bytes + logs_bytes + others + kept_bytes,
            ledger_bytes,
            logs_bytes,
            log_files,
            free_bytes: free_space(dir),
            min_free_bytes: self.min_free.load(Ordering::Relaxed),
            snapshot_bytes: ledger.snapshot_bytes(),
            archived_tasks,
        };
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
        self.sampled.store(true, Ordering::Relaxed);
    }
}

/// The task of an output file or artifact directory, named `<task>.<attempt>[.<stream>]`.
fn task_of(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()?.split('.').next()?.parse().ok()
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Free space of the file system holding `dir`, for an unprivileged user.
fn free_space(dir: &Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(_) => u64::MAX,
    }
}

/// Samples the data dir every `every` until shutdown.
pub async fn watch_disk(
    disk: Disk,
    dir: PathBuf,
    ledger: LedgerReader,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut archived = (0, 0);
    let mut trim = super::memory::TrimRule::default();
    loop {
        let (d, p, l) = (disk.clone(), dir.clone(), ledger.clone());
        let _ = tokio::task::spawn_blocking(move || d.refresh(&p, &l)).await;
        // Archiving frees the memory of many tasks at once: give it back. (Once the archive is
        // full its size stays put while the oldest are dropped: the drop mark moves instead.)
        // So does a snapshot build, a training or a burst of submits.
        let now = (disk.view().archived_tasks, ledger.archive().dropped_upto());
        if trim.due(super::memory::resident_bytes(), now != archived) {
            archived = now;
            let _ = tokio::task::spawn_blocking(super::memory::release_free_pages).await;
            trim.trimmed(super::memory::resident_bytes());
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
