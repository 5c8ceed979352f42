//! What the API returns (the CLI reads the same types).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use testmesh_consensus::TaskId;
use testmesh_consensus::model::Worker;
use testmesh_consensus::runs::RunSummary;
use testmesh_consensus::task::Task;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub tasks: Vec<testmesh_consensus::TaskId>,
    pub duplicate: bool,
}

/// A task with what the user wants to know beside the ledger record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    /// The ledger revision this list reflects; pass it as `since` to wait for changes.
    pub rev: u64,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    #[serde(flatten)]
    pub worker: Worker,
    pub active_tasks: usize,
    /// Its run time over the typical run time of the same tasks (1.0 typical), from recent
    /// history; absent without comparable attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_vs_peers: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub node_id: String,
    pub version: String,
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: u64,
    /// Raft voters and learners, as this node's replica has them.
    #[serde(default)]
    pub voters: Vec<String>,
    #[serde(default)]
    pub learners: Vec<String>,
    /// A membership change is half done (joint consensus): both the old and the new voter
    /// sets need a majority until it completes.
    #[serde(default)]
    pub membership_changing: bool,
    pub workers: usize,
    pub tasks: BTreeMap<String, usize>,
    pub uptime_secs: u64,
    pub host: crate::monitor::HostSample,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunCreated {
    pub run: u64,
    pub tasks: Vec<TaskId>,
    pub duplicate: bool,
}

/// A run in a list: what it is and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    pub run: u64,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: u64,
    pub summary: RunSummary,
}
