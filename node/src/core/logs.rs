//! Task logs in one place: where an attempt's output lives on the worker that ran it, reading
//! it here, fetching it from another worker over the mesh, and falling back to the tail the
//! ledger keeps once the file cannot be had. The agent writes the files; the API and the mesh
//! (answering other nodes) read them through this module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testmesh_consensus::store::LedgerReader;
use testmesh_consensus::{NodeId, TaskId};
use thiserror::Error;

use super::writer::Writer;
use crate::mesh::MeshClient;
use crate::mesh::rpc::{Request, Response};

/// Which output of an attempt (the mesh carries it as it is).
pub use crate::mesh::rpc::LogStream as Stream;

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stream {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, LogError> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(LogError::BadStream(other.to_string())),
        }
    }
}

/// Path of one attempt's log file.
pub fn log_path(data_dir: &Path, task: TaskId, attempt: u32, stream: Stream) -> PathBuf {
    data_dir
        .join("logs")
        .join(format!("{}.{attempt}.{stream}", task.0))
}

/// Cuts a log file that outgrew `max` bytes down to its last `max / 2` bytes behind a marker
/// line, so that a task printing without end costs bounded disk. The task writes with
/// O_APPEND, so its next writes land after the kept tail. Returns the bytes dropped.
pub fn keep_tail(path: &Path, max: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom, Write};
    // One stat in the common case (under the cap), without opening the file: this runs every
    // second for every running attempt.
    match std::fs::metadata(path) {
        Ok(m) if m.len() <= max => return Ok(0),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(0);
    }
    let keep = max / 2;
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    (&mut f).take(keep).read_to_end(&mut tail)?;
    // Whatever the task wrote between the read and the cut is lost with the head.
    f.set_len(0)?;
    let dropped = len - tail.len() as u64;
    let mut out = std::fs::OpenOptions::new().append(true).open(path)?;
    let marker = format!("[testmesh: {dropped} earlier bytes dropped (--max-log-size {max})]\n");
    out.write_all(marker.as_bytes())?;
    out.write_all(&tail)?;
    Ok(dropped)
}

/// Reads up to `limit` bytes from `offset`; returns the bytes and the file's length (0 and
/// nothing when the file does not exist).
pub fn read_log(path: &Path, offset: u64, limit: u64) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(len)))?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok((buf, len))
}

/// Part of an attempt's output, as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    pub task: TaskId,
    pub attempt: u32,
    pub stream: Stream,
    pub offset: u64,
    pub next_offset: u64,
    pub data: String,
    /// The attempt has ended and everything up to `next_offset` is all there is.
    pub complete: bool,
    /// The worker's log file could not be read (the worker is gone or unreachable): `data` is
    /// the tail of the output kept in the ledger instead, at most 2 KiB.
    #[serde(default)]
    pub ledger_tail: bool,
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("stream {0:?} is neither stdout nor stderr")]
    BadStream(String),
    #[error("task {0} does not exist")]
    NoTask(TaskId),
    #[error("task {task} has no attempt {attempt} (it has {attempts})")]
    NoAttempt {
        task: TaskId,
        attempt: u32,
        attempts: usize,
    },
    /// The log cannot be read now and the attempt has not ended (no tail in the ledger yet).
    #[error("{0}")]
    Unavailable(String),
}

/// Reads logs wherever they are.
#[derive(Clone)]
pub struct Logs {
    node: NodeId,
    data_dir: PathBuf,
    ledger: LedgerReader,
    writer: Writer,
    mesh: Option<MeshClient>,
}

/// What a log read asks for.
#[derive(Debug, Clone, Copy)]
pub struct LogRead {
    pub task: TaskId,
    /// None: the latest attempt.
    pub attempt: Option<u32>,
    pub stream: Stream,
    pub offset: u64,
    pub limit: u64,
}

/// Longest a fetch from another worker may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl Logs {
    pub fn new(
        node: NodeId,
        data_dir: PathBuf,
        ledger: LedgerReader,
        writer: Writer,
        mesh: Option<MeshClient>,
    ) -> Self {
        Logs {
            node,
            data_dir,
            ledger,
            writer,
            mesh,
        }
    }

    /// Where this node keeps the output of its own attempts.
    pub fn path(&self, task: TaskId, attempt: u32, stream: Stream) -> PathBuf {
        log_path(&self.data_dir, task, attempt, stream)
    }

    /// Reads this node's own file (what another node asks for over the mesh).
    pub fn read_local(
        &self,
        task: TaskId,
        attempt: u32,
        stream: Stream,
        offset: u64,
        limit: u64,
    ) -> std::io::Result<(Vec<u8>, u64)> {
        read_log(&self.path(task, attempt, stream), offset, limit)
    }

    /// Reads part of an attempt's output: from this node's file, from the worker that ran it,
    /// or — once it has ended and the file cannot be had — from the tail kept in the ledger.
    pub async fn read(&self, q: LogRead) -> Result<LogChunk, LogError> {
        let id = q.task;
        let t = super::archive::task(&self.ledger, id).map_err(|g| match g {
            g if g.is_never() => LogError::NoTask(id),
            g => LogError::Unavailable(g.to_string()),
        })?;
        let (attempt, tail, worker) = {
            let n = q.attempt.unwrap_or(t.attempt);
            if n == 0 {
                // Never ran yet: nothing to show, more may come.
                return Ok(LogChunk {
                    task: id,
                    attempt: 0,
                    stream: q.stream,
                    offset: 0,
                    next_offset: 0,
                    data: String::new(),
                    complete: t.state.is_final(),
                    ledger_tail: false,
                });
            }
            let a = t
                .attempts
                .iter()
                .find(|a| a.number == n)
                .ok_or(LogError::NoAttempt {
                    task: id,
                    attempt: n,
                    attempts: t.attempts.len(),
                })?;
            let tail = a.outcome.as_ref().map(|o| match q.stream {
                Stream::Stdout => o.stdout_tail.clone(),
                Stream::Stderr => o.stderr_tail.clone(),
            });
            (n, tail, a.worker)
        };
        let ended = tail.is_some();
        // Once the attempt has ended its tail is in the ledger: serve that when the file is not.
        let from_tail = |why: String| match &tail {
            Some(t) => Ok(LogChunk {
                task: id,
                attempt,
                stream: q.stream,
                offset: 0,
                next_offset: t.len() as u64,
                data: t.clone(),
                complete: true,
                ledger_tail: true,
            }),
            None => Err(LogError::Unavailable(why)),
        };
        let (offset, limit) = (q.offset, q.limit);
        let (data, len) = if worker == self.node {
            match self.read_local(id, attempt, q.stream, offset, limit) {
                Ok(r) => r,
                Err(e) => {
                    let path = self.path(id, attempt, q.stream);
                    return from_tail(format!("cannot read {}: {e}", path.display()));
                }
            }
        } else {
            match self
                .fetch(worker, id, attempt, q.stream, offset, limit)
                .await
            {
                Ok(r) => r,
                Err(why) => return from_tail(why),
            }
        };
        if len == 0 && tail.as_ref().is_some_and(|t| !t.is_empty()) {
            // The file is gone (cleaned up, or another data dir) but the ledger kept its end.
            return from_tail(String::new());
        }
        let next_offset = offset.min(len) + data.len() as u64;
        Ok(LogChunk {
            task: id,
            attempt,
            stream: q.stream,
            offset,
            next_offset,
            data: String::from_utf8_lossy(&data).into_owned(),
            complete: ended && next_offset >= len,
            ledger_tail: false,
        })
    }

    /// Fetches part of a log from the worker that ran the attempt.
    async fn fetch(
        &self,
        worker: NodeId,
        task: TaskId,
        attempt: u32,
        stream: Stream,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<u8>, u64), String> {
        let (Some(mesh), Some(peer)) = (&self.mesh, self.writer.peer_of(worker)) else {
            return Err(format!(
                "worker {worker} that ran this attempt is not in the cluster any more; its logs are gone with it"
            ));
        };
        let req = Request::Logs {
            task: task.0,
            attempt,
            stream,
            offset,
            limit,
        };
        match mesh.request(peer, req, FETCH_TIMEOUT).await {
            Ok(Response::Logs(Ok(r))) => Ok(r),
            Ok(Response::Logs(Err(e))) => Err(format!("worker {worker}: {e}")),
            Ok(_) => Err(format!("worker {worker} gave an unexpected answer")),
            Err(e) => Err(format!("cannot fetch the log from worker {worker}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overgrown_log_keeps_its_tail_behind_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.1.stdout");
        let body: Vec<u8> = (0..100_000u32)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        std::fs::write(&path, &body).unwrap();
        assert_eq!(
            keep_tail(&path, 1 << 20).unwrap(),
            0,
            "under the cap: untouched"
        );
        let dropped = keep_tail(&path, 8192).unwrap();
        let now = std::fs::read(&path).unwrap();
        assert_eq!(dropped as usize, body.len() - 4096);
        assert!(now.len() < 8192);
        let text = String::from_utf8(now).unwrap();
        assert!(text.starts_with("[testmesh: "), "{}", &text[..80]);
        assert!(text.ends_with("99999\n"));
        // A missing file is nothing to trim.
        assert_eq!(keep_tail(&dir.path().join("none"), 10).unwrap(), 0);
    }
}
