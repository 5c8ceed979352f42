//! Execution history: one record per attempt that ran to an end of its own (succeeded, failed or
//! timed out), with what prediction and insights need — the task's features, the hardware it
//! ran on and what it measured. Bounded: the oldest records go first, so the ledger (and its
//! snapshots) stay a fixed size however many tasks run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Bytes, NodeId, TaskId, UnixMillis};
use crate::resources::Requirements;
use crate::task::TaskState;

/// Records kept; older ones are dropped.
pub const HISTORY_LIMIT: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub task: TaskId,
    pub attempt: u32,
    /// The text fields repeat from record to record (the same names on the same machines), so
    /// records share them (see [`shared`]); encoded as plain strings.
    pub name: Arc<str>,
    /// The command's program, without its directory (`python`, `pytest`, `train.sh`).
    pub program: Arc<str>,
    /// The task's labels, sorted by key. A list rather than a map: a one-entry map costs a
    /// 500-byte tree node, and 50,000 records hold one each (the encoding is the same).
    pub labels: Vec<(String, String)>,
    pub requirements: Requirements,
    pub worker: NodeId,
    pub cpu_model: Arc<str>,
    pub cores: u32,
    /// Model of the GPUs granted, empty when none.
    pub gpu_model: Arc<str>,
    pub state: TaskState,
    pub started_at: UnixMillis,
    pub finished_at: UnixMillis,
    pub duration_ms: u64,
    pub peak_rss: Bytes,
    pub cpu_time_ms: u64,
    pub peak_gpu_memory: Bytes,
}

/// Hands out one copy of each recent text: a record's strings are taken from the record before
/// it when they are equal, so 50,000 records of a few task names on a few machines hold a few
/// strings, not 200,000.
pub fn shared(previous: Option<&Arc<str>>, text: &str) -> Arc<str> {
    match previous {
        Some(p) if **p == *text => p.clone(),
        _ => Arc::from(text),
    }
}

/// The program of a command line, without its directory.
pub fn program_of(argv: &[String]) -> String {
    argv.first()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .unwrap_or_default()
}
