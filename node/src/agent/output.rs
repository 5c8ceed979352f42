//! An attempt's output: each stream is a pipe that the agent copies into its log file.
//!
//! A pipe rather than a file handed to the task: an attempt that prints nothing costs no inode
//! (creating and deleting two files per attempt was the largest cost of a short task), and the
//! agent, as the only writer, cuts a file to its tail (`--max-log-size`) exactly when it
//! outgrows the cap, without losing what the task writes meanwhile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testmesh_consensus::task::{BenchMetric, MAX_METRICS, METRIC_PREFIX};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::core::logs::keep_tail;

/// Bytes read from a pipe at a time; allocated only once the task prints something.
const CHUNK: usize = 16 << 10;

/// How long the end of an attempt waits for its pipes to close once its process group is gone:
/// only a process that left the group (a daemon) can still hold them open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Copies `reader` into the file at `path` until the write end closes; returns the bytes the
/// file holds at the end (0: the task printed nothing and there is no file).
pub fn capture(
    reader: std::io::PipeReader,
    path: PathBuf,
    max: u64,
) -> std::io::Result<JoinHandle<u64>> {
    let rx = pipe::Receiver::from_owned_fd(reader.into())?;
    Ok(tokio::spawn(copy_out(rx, path, max)))
}

async fn copy_out(rx: pipe::Receiver, path: PathBuf, max: u64) -> u64 {
    let mut buf = Vec::new();
    let mut file: Option<std::fs::File> = None;
    // Set once the file cannot be written: the rest is read and dropped so the task never
    // blocks on a full pipe.
    let mut broken = false;
    let mut len = 0u64;
    loop {
        if rx.readable().await.is_err() {
            break;
        }
        if buf.is_empty() {
            buf.resize(CHUNK, 0);
        }
        let n = match rx.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("reading output for {}: {e}", path.display());
                break;
            }
        };
        if broken {
            continue;
        }
        let f = match file {
            Some(ref mut f) => f,
            None => match open_new(&path) {
                Ok(f) => file.insert(f),
                Err(e) => {
                    tracing::warn!("cannot write {}: {e}", path.display());
                    broken = true;
                    continue;
                }
            },
        };
        if let Err(e) = f.write_all(&buf[..n]) {
            tracing::warn!("cannot write {}: {e}", path.display());
            broken = true;
            continue;
        }
        len += n as u64;
        if len > max {
            // The file is opened for appending, so later writes land after the kept tail.
            if let Err(e) = keep_tail(&path, max) {
                tracing::warn!("cannot trim {}: {e}", path.display());
            }
            len = std::fs::metadata(&path).map_or(0, |m| m.len());
        }
    }
    len
}

/// Opens a new output file for appending. Attempt numbers are never reused, so it is normally
/// absent; whatever an earlier boot left under the name is cut.
fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.len() > 0 {
                f.set_len(0)?;
            }
            Ok(f)
        })
}

/// Waits for a stream's copy to finish (at most [`DRAIN_AFTER_EXIT`]); the bytes its file
/// holds, read from the file when the copy had to be abandoned.
pub async fn finished(handle: JoinHandle<u64>, path: &Path) -> u64 {
    let abort = handle.abort_handle();
    match tokio::time::timeout(DRAIN_AFTER_EXIT, handle).await {
        Ok(Ok(len)) => len,
        Ok(Err(_)) => std::fs::metadata(path).map_or(0, |m| m.len()),
        Err(_) => {
            tracing::debug!(
                "{} is still held open by a process that left the task's group",
                path.display()
            );
            abort.abort();
            std::fs::metadata(path).map_or(0, |m| m.len())
        }
    }
}

/// Longest output line read for a metric; the rest of a longer line is skipped unread.
const MAX_METRIC_LINE: usize = 4096;

/// Reads one line of at most [`MAX_METRIC_LINE`] bytes into `line`, skipping the rest of a
/// longer one; false at the end of the input.
pub(super) fn read_bounded_line(r: &mut impl std::io::BufRead, line: &mut Vec<u8>) -> bool {
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
pub(super) fn read_metrics(path: &Path) -> (Vec<BenchMetric>, Vec<String>) {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn a_silent_stream_leaves_no_file_and_a_loud_one_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = dir.path().join("quiet");
        let (r, w) = std::io::pipe().unwrap();
        let h = capture(r, quiet.clone(), 1 << 20).unwrap();
        drop(w);
        assert_eq!(finished(h, &quiet).await, 0);
        assert!(!quiet.exists(), "nothing printed, no file");

        let loud = dir.path().join("loud");
        let (r, mut w) = std::io::pipe().unwrap();
        let h = capture(r, loud.clone(), 64 << 10).unwrap();
        // Written from a thread: the pipe holds less than this and the copy runs on this one.
        let writer = std::thread::spawn(move || {
            for i in 0..100_000 {
                writeln!(w, "line {i}").unwrap();
            }
        });
        let len = finished(h, &loud).await;
        writer.join().unwrap();
        let text = std::fs::read_to_string(&loud).unwrap();
        assert_eq!(len, text.len() as u64);
        assert!(len <= 64 << 10, "{len}");
        assert!(text.starts_with("[testmesh: "), "{}", &text[..60]);
        assert!(text.ends_with("line 99999\n"));
    }
}
