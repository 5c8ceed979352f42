//! Execution history: one record per attempt that ran to an end of its own (succeeded, failed or
//! timed out), with what prediction and insights need — the task's features, the hardware it
//! ran on and what it measured. Bounded: the oldest records go first, so the ledger (and its
//! snapshots) stay a fixed size however many tasks run.

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
    pub name: String,
    /// The command's program, without its directory (`python`, `pytest`, `train.sh`).
    pub program: String,
    /// The task's labels, sorted by key. A list rather than a map: a one-entry map costs a
    /// 500-byte tree node, and 50,000 records hold one each (the encoding is the same).
    pub labels: Vec<(String, String)>,
    pub requirements: Requirements,
    pub worker: NodeId,
    pub cpu_model: String,
    pub cores: u32,
    /// Model of the GPUs granted, empty when none.
    pub gpu_model: String,
    pub state: TaskState,
    pub started_at: UnixMillis,
    pub finished_at: UnixMillis,
    pub duration_ms: u64,
    pub peak_rss: Bytes,
    pub cpu_time_ms: u64,
    pub peak_gpu_memory: Bytes,
}

/// The program of a command line, without its directory.
pub fn program_of(argv: &[String]) -> String {
    argv.first()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .unwrap_or_default()
}
