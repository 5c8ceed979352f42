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
    /// For a pending task: its place in the queue and when it should start and finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<crate::core::eta::EtaView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    /// The ledger revision this list reflects.
    pub rev: u64,
    /// Where a watch goes on from: pass it as the next `since`. `REV` when the list holds every
    /// change up to REV; `REV.TASK` when `limit` cut it inside the changes of one revision.
    pub next: String,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, Serialize)]
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
    /// The data dir: its size, what is in it and the room left.
    #[serde(default)]
    pub disk: crate::core::disk::DiskView,
    /// Connected peers that belong to another cluster (node id → that cluster's id): clusters
    /// that formed separately, which do not merge.
    #[serde(default)]
    pub foreign_clusters: BTreeMap<String, String>,
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

/// By hand: serde's `flatten` buffers the worker and then cannot read the integer keys of its
/// GPU allocations back (`"0"` is not a u32 there), so `testmesh workers` failed whenever a GPU
/// was reserved. serde_json's own map keys parse numbers, so go through a JSON value.
impl<'de> Deserialize<'de> for WorkerStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let map = v
            .as_object_mut()
            .ok_or_else(|| D::Error::custom("a worker must be a JSON object"))?;
        let active_tasks = map
            .remove("active_tasks")
            .map(serde_json::from_value)
            .transpose()
            .map_err(D::Error::custom)?
            .ok_or_else(|| D::Error::missing_field("active_tasks"))?;
        let speed_vs_peers = map
            .remove("speed_vs_peers")
            .map(serde_json::from_value)
            .transpose()
            .map_err(D::Error::custom)?
            .flatten();
        let worker = serde_json::from_value(v).map_err(D::Error::custom)?;
        Ok(WorkerStatus {
            worker,
            active_tasks,
            speed_vs_peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use testmesh_consensus::resources::GpuUse;
    use testmesh_consensus::{Bytes, NodeId};

    use super::*;

    #[test]
    fn a_worker_with_a_reserved_gpu_reads_back() {
        let mut worker = Worker {
            id: NodeId(3),
            hardware: Default::default(),
            capacity: Default::default(),
            labels: BTreeMap::new(),
            state: testmesh_consensus::model::WorkerState::Active,
            boot_id: 1,
            version: "test".into(),
            registered_at: testmesh_consensus::UnixMillis(0),
            allocated: Default::default(),
            record: Default::default(),
            quarantine: None,
        };
        worker.allocated.gpus = BTreeMap::from([(
            0,
            GpuUse {
                milli: 1000,
                memory: Bytes(1 << 30),
                exclusive: true,
            },
        )]);
        let w = WorkerStatus {
            worker,
            active_tasks: 1,
            speed_vs_peers: Some(1.5),
        };
        let back: WorkerStatus = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back.worker, w.worker);
        assert_eq!((back.active_tasks, back.speed_vs_peers), (1, Some(1.5)));
    }
}
